//! The per-VM control API of `ironvirt-vmm` (docs/API.md): HTTP/1.1 with JSON bodies on a Unix
//! socket, one request per connection. This crate maps request lines to [`Request`] values,
//! writes responses, and offers a small blocking [`Client`] (used by tests and tools; the
//! daemon has its own async client). It does no I/O of its own beyond the streams it is given
//! and never panics on malformed input: requests come from a local socket, but are parsed as
//! untrusted bytes anyway.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8192;
/// Largest request body accepted (the API takes no bodies today).
pub const MAX_BODY: usize = 64 * 1024;

/// A control request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /v1/ping`.
    Ping,
    /// `GET /v1/vm`.
    Status,
    /// `PUT /v1/vm/pause`.
    Pause,
    /// `PUT /v1/vm/resume`.
    Resume,
    /// `PUT /v1/vm/power-button`.
    PowerButton,
    /// `PUT /v1/vm/reset`.
    Reset,
    /// `GET /v1/counters`.
    Counters,
    /// `PUT /v1/vm/balloon` with body `{"target_mib": N}`: how much memory the balloon should
    /// take from the guest.
    SetBalloon {
        /// Balloon size in MiB.
        target_mib: u64,
    },
}

/// Body of `PUT /v1/vm/balloon`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonTarget {
    /// Balloon size in MiB.
    pub target_mib: u64,
}

/// `GET /v1/ping` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// VMM process id.
    pub pid: u32,
    /// VMM version.
    pub version: String,
}

/// The VMM's answer to a request, before framing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// JSON body, if any.
    pub body: Option<String>,
}

impl Response {
    /// 200 with a JSON body.
    pub fn json<T: Serialize>(value: &T) -> Self {
        match serde_json::to_string(value) {
            Ok(body) => Self { status: 200, body: Some(body) },
            Err(e) => Self::error(500, "internal", &format!("Cannot encode the response: {e}")),
        }
    }

    /// 204 without a body.
    pub fn no_content() -> Self {
        Self { status: 204, body: None }
    }

    /// An `ApiError` body with `status`.
    pub fn error(status: u16, code: &str, message: &str) -> Self {
        let err = ironvirt_api_types::ApiError { code: code.into(), message: message.into() };
        Self { status, body: serde_json::to_string(&err).ok() }
    }
}

/// Why a request could not be understood; each maps to an error response.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The connection failed or closed early.
    #[error("Cannot read the request")]
    Io(#[from] io::Error),
    /// Not HTTP/1.x, or the head is too large.
    #[error("Malformed HTTP request: {0}")]
    Malformed(String),
    /// No such route.
    #[error("No route for {method} {path}")]
    NotFound {
        /// Method.
        method: String,
        /// Path.
        path: String,
    },
}

impl RequestError {
    /// The error response to send back.
    pub fn response(&self) -> Response {
        match self {
            Self::NotFound { .. } => Response::error(404, "not-found", &self.to_string()),
            _ => Response::error(400, "bad-request", &self.to_string()),
        }
    }
}

fn route(method: &str, path: &str, body: &[u8]) -> Result<Request, RequestError> {
    if (method, path) == ("PUT", "/v1/vm/balloon") {
        let target: BalloonTarget = serde_json::from_slice(body)
            .map_err(|e| RequestError::Malformed(format!("balloon body: {e}")))?;
        return Ok(Request::SetBalloon { target_mib: target.target_mib });
    }
    Ok(match (method, path) {
        ("GET", "/v1/ping") => Request::Ping,
        ("GET", "/v1/vm") => Request::Status,
        ("PUT", "/v1/vm/pause") => Request::Pause,
        ("PUT", "/v1/vm/resume") => Request::Resume,
        ("PUT", "/v1/vm/power-button") => Request::PowerButton,
        ("PUT", "/v1/vm/reset") => Request::Reset,
        ("GET", "/v1/counters") => Request::Counters,
        _ => {
            return Err(RequestError::NotFound { method: method.into(), path: path.into() });
        }
    })
}

/// Reads one request from `stream` (head bounded by [`MAX_HEAD`], body by [`MAX_BODY`] and
/// discarded) and maps it to a [`Request`].
pub fn read_request(stream: &mut impl Read) -> Result<Request, RequestError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let (method, path, head_len, body_len) = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(RequestError::Malformed(
                "connection closed before the request ended".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let body_len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                let method = req.method.unwrap_or("").to_string();
                let path = req.path.unwrap_or("").split('?').next().unwrap_or("").to_string();
                break (method, path, head_len, body_len);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(RequestError::Malformed(format!("request head over {MAX_HEAD} bytes")))
            }
            Err(e) => return Err(RequestError::Malformed(e.to_string())),
        }
    };
    if body_len > MAX_BODY {
        return Err(RequestError::Malformed(format!("body of {body_len} bytes is too large")));
    }
    let mut body = buf.split_off(head_len.min(buf.len()));
    while body.len() < body_len {
        let n = stream.read(&mut chunk[..(body_len - body.len()).min(1024)])?;
        if n == 0 {
            return Err(RequestError::Malformed("connection closed inside the body".into()));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(body_len);
    route(&method, &path, &body)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes `response` as an HTTP/1.1 response that closes the connection.
pub fn write_response(stream: &mut impl Write, response: &Response) -> io::Result<()> {
    let body = response.body.as_deref().unwrap_or("");
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nConnection: close\r\n",
        response.status,
        reason(response.status)
    );
    if response.body.is_some() {
        out.push_str("Content-Type: application/json\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

/// Errors of the blocking client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached or the exchange broke.
    #[error("Cannot talk to the VMM control socket")]
    Io(#[from] io::Error),
    /// The answer was not HTTP.
    #[error("Malformed answer from the VMM: {0}")]
    Malformed(String),
    /// The VMM answered with an error.
    #[error("The VMM answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Body.
        body: String,
    },
}

/// A blocking client for one VMM's control socket.
pub struct Client {
    path: std::path::PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client for the socket at `path`.
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), timeout: Duration::from_secs(10) }
    }

    /// Sends `method path` and returns the body of a 2xx answer.
    pub fn call(&self, method: &str, path: &str) -> Result<String, ClientError> {
        self.call_with_body(method, path, "")
    }

    /// Like [`Client::call`] with a JSON request body.
    pub fn call_with_body(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<String, ClientError> {
        let mut stream = UnixStream::connect(&self.path)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: vmm\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(&raw) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                return Err(ClientError::Malformed("truncated".into()))
            }
            Err(e) => return Err(ClientError::Malformed(e.to_string())),
        };
        let status = resp.code.unwrap_or(0);
        let body = String::from_utf8_lossy(&raw[head..]).into_owned();
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(ClientError::Status { status, body })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Request, RequestError> {
        read_request(&mut &raw[..])
    }

    #[test]
    fn routes_map_to_requests() {
        assert_eq!(parse(b"GET /v1/ping HTTP/1.1\r\n\r\n").unwrap(), Request::Ping);
        assert_eq!(parse(b"PUT /v1/vm/pause HTTP/1.1\r\nHost: x\r\n\r\n").unwrap(), Request::Pause);
        assert_eq!(
            parse(b"PUT /v1/vm/power-button HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}").unwrap(),
            Request::PowerButton
        );
        assert_eq!(parse(b"GET /v1/counters?x=1 HTTP/1.0\r\n\r\n").unwrap(), Request::Counters);
    }

    #[test]
    fn balloon_target_comes_from_the_body() {
        let req = b"PUT /v1/vm/balloon HTTP/1.1\r\nContent-Length: 18\r\n\r\n{\"target_mib\":256}";
        assert_eq!(parse(req).unwrap(), Request::SetBalloon { target_mib: 256 });
        let bad = b"PUT /v1/vm/balloon HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse(bad).unwrap_err().response().status, 400);
        let short = b"PUT /v1/vm/balloon HTTP/1.1\r\nContent-Length: 50\r\n\r\n{}";
        assert_eq!(parse(short).unwrap_err().response().status, 400);
    }

    #[test]
    fn unknown_routes_and_methods_are_not_found() {
        let err = parse(b"DELETE /v1/vm HTTP/1.1\r\n\r\n").unwrap_err();
        assert_eq!(err.response().status, 404);
        assert_eq!(parse(b"GET /v1/vm/pause HTTP/1.1\r\n\r\n").unwrap_err().response().status, 404);
    }

    #[test]
    fn garbage_oversize_and_truncated_requests_are_bad_requests() {
        assert_eq!(parse(b"\x00\x01\x02 garbage\r\n\r\n").unwrap_err().response().status, 400);
        assert_eq!(parse(b"GET /v1/ping HTTP/1.1\r\nHost").unwrap_err().response().status, 400);
        let mut big = b"GET /v1/ping HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD * 2));
        assert_eq!(parse(&big).unwrap_err().response().status, 400);
        let huge_body = b"PUT /v1/vm/reset HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n";
        assert_eq!(parse(huge_body).unwrap_err().response().status, 400);
    }

    #[test]
    fn responses_are_framed_with_length() {
        let mut out = Vec::new();
        write_response(&mut out, &Response::error(409, "conflict", "Already paused")).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 409 Conflict\r\n"));
        assert!(text.contains("\"code\":\"conflict\""));
        let body_len = text.split("\r\n\r\n").nth(1).unwrap().len();
        assert!(text.contains(&format!("Content-Length: {body_len}\r\n")));
    }
}
