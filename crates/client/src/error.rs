//! Errors of the client, keeping the daemon's `ApiError` and HTTP status intact.

use std::io;

use ironvirt_api_types::ApiError;

/// What kind of failure an error is, for callers that branch on it (the CLI's exit codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The daemon could not be reached, or the connection broke before it answered.
    Unreachable,
    /// 404: no such VM.
    NotFound,
    /// 409: wrong state, or name/disk/MAC already taken.
    Conflict,
    /// 422: the definition was rejected.
    InvalidDefinition,
    /// 401: missing or wrong bearer token.
    Unauthorized,
    /// 400: the request itself was malformed.
    BadRequest,
    /// Anything else: a 5xx, an unexpected status, an answer that does not parse.
    Other,
}

/// Errors returned by [`crate::Client`] and the streams it opens.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address given is neither `unix:PATH` nor `tcp://HOST:PORT`.
    #[error("Invalid daemon address {address:?}: expected unix:/path or tcp://host:port")]
    InvalidEndpoint {
        /// The address as given.
        address: String,
    },
    /// Connecting to the daemon failed.
    #[error("Cannot connect to the daemon at {endpoint}")]
    Connect {
        /// Where we tried to connect.
        endpoint: String,
        /// Why it failed.
        #[source]
        cause: io::Error,
    },
    /// The HTTP exchange failed after connecting (connection reset, daemon died).
    #[error("{method} {path} on the daemon at {endpoint} failed")]
    Transport {
        /// Where the daemon is.
        endpoint: String,
        /// Request method.
        method: String,
        /// Request path.
        path: String,
        /// The HTTP error.
        #[source]
        cause: hyper::Error,
    },
    /// The daemon answered with an error status; `error` is its body (or one made from the
    /// status when the body was not an `ApiError`).
    #[error("{}", .error.message)]
    Api {
        /// HTTP status code.
        status: u16,
        /// The daemon's error body.
        error: ApiError,
    },
    /// A success answer whose body is not what the API documents.
    #[error("Unexpected answer to {method} {path}")]
    Decode {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
        /// The JSON error.
        #[source]
        cause: serde_json::Error,
    },
    /// The console WebSocket failed (handshake or while attached).
    #[error("Console connection to VM {vm} failed")]
    Console {
        /// VM name.
        vm: String,
        /// The WebSocket error.
        #[source]
        cause: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// The event stream could not be read any further.
    #[error("Event stream from the daemon broke")]
    Events {
        /// The HTTP error.
        #[source]
        cause: hyper::Error,
    },
    /// The event stream carried something that is not an `Event`.
    #[error("Event stream carried an invalid event {data:?}")]
    BadEvent {
        /// The `data:` payload.
        data: String,
        /// The JSON error.
        #[source]
        cause: serde_json::Error,
    },
    /// The token cannot go into an `Authorization` header (control characters).
    #[error("The bearer token contains characters not allowed in an HTTP header")]
    BadToken,
}

impl ClientError {
    /// Classifies the error; API errors by HTTP status first, then by the body's `code`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Connect { .. } | ClientError::Transport { .. } => ErrorKind::Unreachable,
            ClientError::Api { status, error } => kind_of_status(*status, &error.code),
            ClientError::Console { cause, .. } => match cause.as_ref() {
                tokio_tungstenite::tungstenite::Error::Io(_) => ErrorKind::Unreachable,
                _ => ErrorKind::Other,
            },
            _ => ErrorKind::Other,
        }
    }

    /// The HTTP status of an error answer from the daemon.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The daemon's error body, when it answered with one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Builds the error for a non-success answer: the body as an `ApiError` when it is one,
    /// otherwise a code derived from the status and the body text (or the status reason).
    pub(crate) fn from_answer(status: http::StatusCode, body: &[u8]) -> Self {
        let error = serde_json::from_slice::<ApiError>(body).unwrap_or_else(|_| {
            let text = String::from_utf8_lossy(body).trim().to_owned();
            ApiError {
                code: code_of_status(status.as_u16()).to_owned(),
                message: if text.is_empty() {
                    format!(
                        "Daemon answered {} {}",
                        status.as_u16(),
                        status.canonical_reason().unwrap_or("")
                    )
                    .trim_end()
                    .to_owned()
                } else {
                    text
                },
            }
        });
        ClientError::Api { status: status.as_u16(), error }
    }
}

fn kind_of_status(status: u16, code: &str) -> ErrorKind {
    match status {
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        422 => ErrorKind::InvalidDefinition,
        401 => ErrorKind::Unauthorized,
        400 => ErrorKind::BadRequest,
        _ => match code {
            "not-found" => ErrorKind::NotFound,
            "conflict" => ErrorKind::Conflict,
            "invalid-definition" => ErrorKind::InvalidDefinition,
            "unauthorized" => ErrorKind::Unauthorized,
            "bad-request" => ErrorKind::BadRequest,
            _ => ErrorKind::Other,
        },
    }
}

fn code_of_status(status: u16) -> &'static str {
    match status {
        404 => "not-found",
        409 => "conflict",
        422 => "invalid-definition",
        401 => "unauthorized",
        400 => "bad-request",
        _ => "internal",
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    fn answer(status: u16, body: &str) -> ClientError {
        ClientError::from_answer(StatusCode::from_u16(status).unwrap(), body.as_bytes())
    }

    #[test]
    fn api_error_body_is_preserved_with_status() {
        let err = answer(404, r#"{"code":"not-found","message":"No VM named web9"}"#);
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(err.status(), Some(404));
        assert_eq!(
            err.api_error(),
            Some(&ApiError { code: "not-found".into(), message: "No VM named web9".into() })
        );
        assert_eq!(err.to_string(), "No VM named web9");
    }

    #[test]
    fn statuses_map_to_kinds() {
        let body = r#"{"code":"x","message":"m"}"#;
        assert_eq!(answer(409, body).kind(), ErrorKind::Conflict);
        assert_eq!(answer(422, body).kind(), ErrorKind::InvalidDefinition);
        assert_eq!(answer(401, body).kind(), ErrorKind::Unauthorized);
        assert_eq!(answer(400, body).kind(), ErrorKind::BadRequest);
        assert_eq!(answer(500, body).kind(), ErrorKind::Other);
    }

    #[test]
    fn code_is_used_when_status_is_unusual() {
        let err = answer(418, r#"{"code":"conflict","message":"busy"}"#);
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert_eq!(err.status(), Some(418));
    }

    #[test]
    fn non_json_body_becomes_message_with_code_from_status() {
        let err = answer(422, "bad memory size\n");
        let api = err.api_error().unwrap();
        assert_eq!(api.code, "invalid-definition");
        assert_eq!(api.message, "bad memory size");
        assert_eq!(err.kind(), ErrorKind::InvalidDefinition);
    }

    #[test]
    fn empty_body_names_the_status() {
        let err = answer(503, "");
        assert_eq!(err.api_error().unwrap().code, "internal");
        assert_eq!(err.to_string(), "Daemon answered 503 Service Unavailable");
    }

    #[test]
    fn connection_failures_are_unreachable() {
        let err = ClientError::Connect {
            endpoint: "unix:/nowhere".into(),
            cause: io::Error::from(io::ErrorKind::NotFound),
        };
        assert_eq!(err.kind(), ErrorKind::Unreachable);
        assert_eq!(err.status(), None);
        assert!(err.to_string().contains("unix:/nowhere"));
    }
}
