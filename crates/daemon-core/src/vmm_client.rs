//! Async client for the per-VM control API of `ironvirt-vmm` (docs/API.md): one HTTP/1.1
//! request per connection on a Unix socket, bounded by a timeout.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ironvirt_api_types::{VmCounters, VmmStatus};
use ironvirt_vmm_protocol::Pong;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Largest answer accepted from a VMM.
const MAX_ANSWER: usize = 1 << 20;

/// Errors talking to one VMM.
#[derive(Debug, thiserror::Error)]
pub enum VmmClientError {
    /// Connecting, writing or reading failed.
    #[error("Cannot reach the VMM control socket {}", .path.display())]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        cause: io::Error,
    },
    /// No answer in time.
    #[error("The VMM did not answer {request} within {timeout_ms} ms")]
    Timeout {
        /// Request line.
        request: String,
        /// Limit.
        timeout_ms: u128,
    },
    /// Not an HTTP answer, or a body that does not decode.
    #[error("Malformed answer from the VMM to {request}: {detail}")]
    Malformed {
        /// Request line.
        request: String,
        /// What was wrong.
        detail: String,
    },
    /// The VMM refused the request.
    #[error("The VMM answered {status} to {request}: {body}")]
    Status {
        /// Request line.
        request: String,
        /// HTTP status.
        status: u16,
        /// Body (an `ApiError` as JSON).
        body: String,
    },
}

/// A client for the control socket at one path.
#[derive(Debug, Clone)]
pub struct VmmClient {
    path: PathBuf,
    timeout: Duration,
}

impl VmmClient {
    /// A client for `path` with the default 10 s timeout.
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), timeout: Duration::from_secs(10) }
    }

    /// The same client with another timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends one request; returns the body of a 2xx answer.
    pub async fn call(&self, method: &str, uri: &str) -> Result<Vec<u8>, VmmClientError> {
        let request = format!("{method} {uri}");
        match tokio::time::timeout(self.timeout, self.exchange(method, uri)).await {
            Err(_) => {
                Err(VmmClientError::Timeout { request, timeout_ms: self.timeout.as_millis() })
            }
            Ok(Err(cause)) => Err(VmmClientError::Io { path: self.path.clone(), cause }),
            Ok(Ok(raw)) => parse_answer(&request, &raw),
        }
    }

    async fn exchange(&self, method: &str, uri: &str) -> io::Result<Vec<u8>> {
        let mut stream = UnixStream::connect(&self.path).await?;
        let head = format!("{method} {uri} HTTP/1.1\r\nHost: vmm\r\nContent-Length: 0\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        (&mut stream).take(MAX_ANSWER as u64).read_to_end(&mut raw).await?;
        Ok(raw)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        uri: &str,
    ) -> Result<T, VmmClientError> {
        let body = self.call("GET", uri).await?;
        serde_json::from_slice(&body).map_err(|e| VmmClientError::Malformed {
            request: format!("GET {uri}"),
            detail: e.to_string(),
        })
    }

    /// `GET /v1/ping`.
    pub async fn ping(&self) -> Result<Pong, VmmClientError> {
        self.get_json("/v1/ping").await
    }

    /// `GET /v1/vm`.
    pub async fn status(&self) -> Result<VmmStatus, VmmClientError> {
        self.get_json("/v1/vm").await
    }

    /// `GET /v1/counters`.
    pub async fn counters(&self) -> Result<VmCounters, VmmClientError> {
        self.get_json("/v1/counters").await
    }

    /// `PUT /v1/vm/<verb>` (pause, resume, power-button, reset).
    pub async fn put(&self, verb: &str) -> Result<(), VmmClientError> {
        self.call("PUT", &format!("/v1/vm/{verb}")).await.map(drop)
    }
}

fn parse_answer(request: &str, raw: &[u8]) -> Result<Vec<u8>, VmmClientError> {
    let malformed = |detail: String| VmmClientError::Malformed { request: request.into(), detail };
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(malformed("truncated answer".into())),
        Err(e) => return Err(malformed(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    let body = raw[head..].to_vec();
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(VmmClientError::Status {
            request: request.into(),
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_split_into_status_and_body() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_answer("GET /", ok).unwrap(), b"{}");
        let conflict = b"HTTP/1.1 409 Conflict\r\n\r\n{\"code\":\"conflict\"}";
        assert!(matches!(
            parse_answer("PUT /v1/vm/pause", conflict),
            Err(VmmClientError::Status { status: 409, .. })
        ));
        assert!(matches!(
            parse_answer("GET /", b"HTTP/1.1 2"),
            Err(VmmClientError::Malformed { .. })
        ));
        assert!(matches!(
            parse_answer("GET /", b"\x00junk"),
            Err(VmmClientError::Malformed { .. })
        ));
    }

    #[tokio::test]
    async fn a_missing_socket_is_an_io_error_naming_it() {
        let c = VmmClient::new(Path::new("/nonexistent/vm.api"));
        let err = c.ping().await.unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vm.api"), "{err}");
    }
}
