//! The HTTP face of `ironvirtd` (docs/API.md): the REST API under `/v1`, the console as a
//! WebSocket, events as Server-Sent Events, and the OpenAPI document generated from the
//! handler annotations. Serves a Unix socket (mode 0660, optional group; no token) and an
//! optional TCP listener that requires `Authorization: Bearer <token>`.
//!
//! Depends on `ironvirt-daemon-core` for everything stateful; holds no state of its own beyond
//! the router. Runs on the daemon's tokio runtime.
#![forbid(unsafe_code)]

mod auth;
mod error;
mod routes;
mod serve;
mod streams;

pub use auth::Token;
pub use error::ApiFailure;
pub use routes::{openapi, openapi_json, router};
pub use serve::{bind_unix, serve_tcp, serve_unix, ServeError};
