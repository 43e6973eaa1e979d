//! Typed async client for the ironvirtd REST API (`docs/API.md`): one method per endpoint,
//! over the daemon's Unix socket or over TCP with a bearer token; the serial console as a
//! WebSocket byte stream ([`Console`]) and lifecycle events as a Server-Sent Events stream
//! ([`EventStream`]).
//!
//! Depends only on `ironvirt-api-types` of the workspace (never on the daemon or the VMM).
//! Runs on the caller's tokio runtime: each request opens its own connection and spawns a
//! task driving it; nothing here blocks a thread. Errors ([`ClientError`]) keep the daemon's
//! `ApiError { code, message }` and the HTTP status, and classify into an [`ErrorKind`].
#![forbid(unsafe_code)]

mod console;
mod endpoint;
mod error;
mod events;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub use console::{Console, ConsoleReader, ConsoleWriter};
pub use endpoint::{Endpoint, DEFAULT_SOCKET};
pub use error::{ClientError, ErrorKind};
pub use events::{EventStream, SseDecoder};
pub use ironvirt_api_types as types;
use ironvirt_api_types::{AutostartRequest, VmCounters, VmDefinition, VmInfo};

/// A lifecycle action on a VM (`POST /v1/vms/{name}/{action}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start the VMM.
    Start,
    /// Press the ACPI power button; the daemon destroys the VM after `timeout_s` (default 60).
    Shutdown {
        /// Seconds before the daemon falls back to destroy; `None` for its default.
        timeout_s: Option<u64>,
    },
    /// Kill the VMM.
    Destroy,
    /// Pause all vCPUs.
    Suspend,
    /// Resume paused vCPUs.
    Resume,
    /// Reset the guest.
    Reboot,
}

impl Action {
    /// The last path segment, as in the API.
    pub fn verb(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Shutdown { .. } => "shutdown",
            Action::Destroy => "destroy",
            Action::Suspend => "suspend",
            Action::Resume => "resume",
            Action::Reboot => "reboot",
        }
    }
}

/// A handle on one daemon. Cheap to clone; holds no connection between calls.
#[derive(Clone)]
pub struct Client {
    endpoint: Endpoint,
    token: Option<HeaderValue>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Client {
    /// A client for the daemon at `endpoint`, without a token.
    pub fn new(endpoint: Endpoint) -> Self {
        Client { endpoint, token: None }
    }

    /// Sends `Authorization: Bearer <token>` with every request (needed over TCP).
    pub fn with_token(mut self, token: &str) -> Result<Self, ClientError> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| ClientError::BadToken)?;
        value.set_sensitive(true);
        self.token = Some(value);
        Ok(self)
    }

    /// Where this client connects.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `GET /v1/openapi.json`: the daemon's OpenAPI document.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.get_json("/v1/openapi.json").await
    }

    /// `GET /v1/vms`: every defined VM.
    pub async fn list(&self) -> Result<Vec<VmInfo>, ClientError> {
        self.get_json("/v1/vms").await
    }

    /// `POST /v1/vms`: defines a new VM.
    pub async fn define(&self, definition: &VmDefinition) -> Result<VmInfo, ClientError> {
        let body = self.call(Method::POST, "/v1/vms", Some(json_body(definition))).await?;
        decode(&Method::POST, "/v1/vms", &body)
    }

    /// `GET /v1/vms/{name}`: one VM's state.
    pub async fn info(&self, name: &str) -> Result<VmInfo, ClientError> {
        self.get_json(&vm_path(name, "")).await
    }

    /// `GET /v1/vms/{name}/definition`: the stored definition.
    pub async fn definition(&self, name: &str) -> Result<VmDefinition, ClientError> {
        self.get_json(&vm_path(name, "/definition")).await
    }

    /// `PUT /v1/vms/{name}/definition`: replaces the definition; applies at the next start.
    pub async fn redefine(
        &self,
        name: &str,
        definition: &VmDefinition,
    ) -> Result<VmInfo, ClientError> {
        let path = vm_path(name, "/definition");
        let body = self.call(Method::PUT, &path, Some(json_body(definition))).await?;
        decode(&Method::PUT, &path, &body)
    }

    /// `DELETE /v1/vms/{name}`: undefines a shut-off or crashed VM.
    pub async fn undefine(&self, name: &str) -> Result<(), ClientError> {
        self.call(Method::DELETE, &vm_path(name, ""), None).await?;
        Ok(())
    }

    /// `POST /v1/vms/{name}/{action}`. Returns the VM as the daemon reports it after the
    /// action, when the answer has a body (the API documents one for `start` and leaves the
    /// others open).
    pub async fn action(&self, name: &str, action: Action) -> Result<Option<VmInfo>, ClientError> {
        let mut path = vm_path(name, &format!("/{}", action.verb()));
        if let Action::Shutdown { timeout_s: Some(timeout_s) } = action {
            path.push_str(&format!("?timeout_s={timeout_s}"));
        }
        let body = self.call(Method::POST, &path, None).await?;
        decode_optional(&Method::POST, &path, &body)
    }

    /// `POST /v1/vms/{name}/start`.
    pub async fn start(&self, name: &str) -> Result<Option<VmInfo>, ClientError> {
        self.action(name, Action::Start).await
    }

    /// `POST /v1/vms/{name}/shutdown?timeout_s=N`.
    pub async fn shutdown(
        &self,
        name: &str,
        timeout_s: Option<u64>,
    ) -> Result<Option<VmInfo>, ClientError> {
        self.action(name, Action::Shutdown { timeout_s }).await
    }

    /// `POST /v1/vms/{name}/destroy`.
    pub async fn destroy(&self, name: &str) -> Result<Option<VmInfo>, ClientError> {
        self.action(name, Action::Destroy).await
    }

    /// `POST /v1/vms/{name}/suspend`.
    pub async fn suspend(&self, name: &str) -> Result<Option<VmInfo>, ClientError> {
        self.action(name, Action::Suspend).await
    }

    /// `POST /v1/vms/{name}/resume`.
    pub async fn resume(&self, name: &str) -> Result<Option<VmInfo>, ClientError> {
        self.action(name, Action::Resume).await
    }

    /// `POST /v1/vms/{name}/reboot`.
    pub async fn reboot(&self, name: &str) -> Result<Option<VmInfo>, ClientError> {
        self.action(name, Action::Reboot).await
    }

    /// `PUT /v1/vms/{name}/autostart` with `{"autostart": on}`. Returns the VM when the
    /// answer has a body.
    pub async fn set_autostart(&self, name: &str, on: bool) -> Result<Option<VmInfo>, ClientError> {
        let path = vm_path(name, "/autostart");
        let body = AutostartRequest { autostart: on };
        let answer = self.call(Method::PUT, &path, Some(json_body(&body))).await?;
        decode_optional(&Method::PUT, &path, &answer)
    }

    /// `GET /v1/vms/{name}/stats`: counters of a running VM.
    pub async fn stats(&self, name: &str) -> Result<VmCounters, ClientError> {
        self.get_json(&vm_path(name, "/stats")).await
    }

    /// `GET /v1/vms/{name}/console`: attaches to the serial console (WebSocket).
    pub async fn console(&self, name: &str) -> Result<Console, ClientError> {
        let path = vm_path(name, "/console");
        let url = format!("ws://{}{}", self.endpoint.host(), path);
        let mut request = url.into_client_request().map_err(|e| console::console_error(name, e))?;
        if let Some(token) = &self.token {
            request.headers_mut().insert(AUTHORIZATION, token.clone());
        }
        let io = self.endpoint.connect().await?;
        match tokio_tungstenite::client_async(request, io).await {
            Ok((ws, _response)) => Ok(Console::new(ws, name.to_owned())),
            Err(tungstenite::Error::Http(response)) => {
                let body = response.body().as_deref().unwrap_or_default();
                Err(ClientError::from_answer(response.status(), body))
            }
            Err(e) => Err(console::console_error(name, e)),
        }
    }

    /// `GET /v1/events`: the live event stream.
    pub async fn events(&self) -> Result<EventStream, ClientError> {
        let response = self.exchange(Method::GET, "/v1/events", None).await?;
        if !response.status().is_success() {
            let status = response.status();
            let body = self.collect(&Method::GET, "/v1/events", response).await?;
            return Err(ClientError::from_answer(status, &body));
        }
        Ok(EventStream::new(response.into_body()))
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.call(Method::GET, path, None).await?;
        decode(&Method::GET, path, &body)
    }

    /// One request; the body of a success answer, or the error built from a failure answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Bytes, ClientError> {
        let response = self.exchange(method.clone(), path, body).await?;
        let status = response.status();
        let body = self.collect(&method, path, response).await?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(ClientError::from_answer(status, &body))
        }
    }

    async fn collect(
        &self,
        method: &Method,
        path: &str,
        response: Response<Incoming>,
    ) -> Result<Bytes, ClientError> {
        response
            .into_body()
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .map_err(|cause| self.transport(method, path, cause))
    }

    /// Connects, sends one request and returns the answer head with a streaming body.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Response<Incoming>, ClientError> {
        let io = self.endpoint.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|cause| self.transport(&method, path, cause))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                log::debug!("Connection to the daemon ended: {e}");
            }
        });
        let mut request =
            Request::builder().method(method.clone()).uri(path).header(HOST, self.endpoint.host());
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, token.clone());
        }
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .expect("method, path and headers were validated when built");
        log::debug!("{method} {path} on {}", self.endpoint);
        sender.send_request(request).await.map_err(|cause| self.transport(&method, path, cause))
    }

    fn transport(&self, method: &Method, path: &str, cause: hyper::Error) -> ClientError {
        ClientError::Transport {
            endpoint: self.endpoint.to_string(),
            method: method.to_string(),
            path: path.to_owned(),
            cause,
        }
    }
}

fn json_body<T: Serialize + ?Sized>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("API types always serialise to JSON"))
}

fn decode<T: DeserializeOwned>(method: &Method, path: &str, body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|cause| ClientError::Decode {
        method: method.to_string(),
        path: path.to_owned(),
        cause,
    })
}

fn decode_optional<T: DeserializeOwned>(
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<Option<T>, ClientError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(None)
    } else {
        decode(method, path, body).map(Some)
    }
}

/// `/v1/vms/{name}{suffix}` with the name percent-encoded, so that no name can reach
/// another route (valid names need no encoding; the daemon rejects the rest).
fn vm_path(name: &str, suffix: &str) -> String {
    let mut path = String::from("/v1/vms/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            path.push(char::from(b));
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    path.push_str(suffix);
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names_are_percent_encoded_in_paths() {
        assert_eq!(vm_path("web1", "/start"), "/v1/vms/web1/start");
        assert_eq!(vm_path("a.b_c-d", ""), "/v1/vms/a.b_c-d");
        assert_eq!(vm_path("../x y", "/stats"), "/v1/vms/..%2Fx%20y/stats");
    }

    #[test]
    fn empty_answers_decode_to_none() {
        let none: Option<VmInfo> = decode_optional(&Method::POST, "/p", b"").unwrap();
        assert!(none.is_none());
        let err = decode_optional::<VmInfo>(&Method::POST, "/p", b"{").unwrap_err();
        assert!(matches!(err, ClientError::Decode { .. }), "{err:?}");
    }

    #[test]
    fn tokens_with_newlines_are_rejected_and_never_printed() {
        let client = Client::new(Endpoint::default());
        assert!(matches!(client.clone().with_token("a\nb"), Err(ClientError::BadToken)));
        let client = client.with_token("s3cret\n").expect("trailing newline is trimmed");
        assert!(!format!("{client:?}").contains("s3cret"));
    }

    #[test]
    fn shutdown_verb_is_stable() {
        assert_eq!(Action::Shutdown { timeout_s: None }.verb(), "shutdown");
        assert_eq!(Action::Reboot.verb(), "reboot");
    }
}
