//! Bearer-token check for the TCP listener.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiFailure;

/// The secret a TCP client must present.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token from its text (surrounding whitespace, e.g. a file's newline, is dropped).
    pub fn new(text: &str) -> Option<Self> {
        let t = text.trim();
        (!t.is_empty()).then(|| Self(t.as_bytes().into()))
    }

    /// Compares in time independent of where the inputs differ (only of their lengths).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = &self.0[..];
        let mut diff = expected.len() ^ presented.len();
        for (i, e) in expected.iter().enumerate() {
            let p = presented.get(i).copied().unwrap_or(0);
            diff |= usize::from(e ^ p);
        }
        diff == 0
    }
}

/// Middleware: 401 `unauthorized` unless `Authorization: Bearer <token>` matches.
pub(crate) async fn require_token(
    State(token): State<Token>,
    req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or(b"");
    if token.matches(presented) {
        next.run(req).await
    } else {
        let mut resp = ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Missing or wrong bearer token (Authorization: Bearer <token>)",
        )
        .into_response();
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_matches() {
        let t = Token::new("s3cret\n").unwrap();
        assert!(t.matches(b"s3cret"));
        assert!(!t.matches(b"s3cre"));
        assert!(!t.matches(b"s3cret2"));
        assert!(!t.matches(b"S3cret"));
        assert!(!t.matches(b""));
        assert!(Token::new(" \n").is_none());
    }
}
