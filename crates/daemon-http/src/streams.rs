//! Long-lived answers: the console WebSocket and the SSE event stream.

use std::convert::Infallible;

use axum::extract::ws::{Message, WebSocket};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use ironvirt_api_types::Event;
use ironvirt_daemon_core::console::Attachment;
use tokio::sync::broadcast::{self, error::RecvError};

/// Runs one console viewer: scrollback, then output and input until either side ends.
pub(crate) async fn console_session(vm: String, mut socket: WebSocket, mut att: Attachment) {
    if !att.scrollback.is_empty()
        && socket.send(Message::Binary(std::mem::take(&mut att.scrollback).into())).await.is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            out = att.output.recv() => match out {
                Ok(chunk) => {
                    if socket.send(Message::Binary(chunk.to_vec().into())).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(n)) => tracing::debug!(vm, n, "console viewer lagged"),
                Err(RecvError::Closed) => {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if att.input.send(b.to_vec()).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    if att.input.send(t.as_str().as_bytes().to_vec()).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
            },
        }
    }
}

/// The SSE answer over an event subscription.
pub(crate) fn sse(
    rx: broadcast::Receiver<Event>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    let data = serde_json::to_string(&ev).unwrap_or_default();
                    return Some((Ok(SseEvent::default().data(data)), rx));
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(n, "event subscriber lagged; events dropped")
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
