//! API error answers: an [`ApiError`] body with a stable code and the right status.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ironvirt_api_types::ApiError;
use ironvirt_daemon_core::DaemonError;

/// An error answer.
#[derive(Debug)]
pub struct ApiFailure {
    /// HTTP status.
    pub status: StatusCode,
    /// Body.
    pub body: ApiError,
}

impl ApiFailure {
    /// An answer with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, body: ApiError { code: code.into(), message: message.into() } }
    }
}

impl From<DaemonError> for ApiFailure {
    fn from(e: DaemonError) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = e.chain(), "request failed");
        }
        Self::new(status, e.code(), e.chain())
    }
}

impl From<JsonRejection> for ApiFailure {
    fn from(e: JsonRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("Bad JSON body: {}", e.body_text()),
        )
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}
