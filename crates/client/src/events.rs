//! The `GET /v1/events` Server-Sent Events stream, decoded into [`Event`]s.

use std::collections::VecDeque;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use ironvirt_api_types::Event;

use crate::error::ClientError;

/// Incremental decoder of the SSE wire format (WHATWG HTML, "server-sent events"): lines end
/// with LF or CRLF, `data:` lines accumulate, a blank line dispatches, `:` lines are comments.
/// Fields other than `data` (`event`, `id`, `retry`) carry nothing the API uses.
#[derive(Debug, Default)]
pub struct SseDecoder {
    line: Vec<u8>,
    data: Option<String>,
    ready: VecDeque<String>,
}

impl SseDecoder {
    /// Feeds bytes as they arrive; chunk boundaries may fall anywhere.
    pub fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.line_done(&line);
            } else {
                self.line.push(b);
            }
        }
    }

    /// The payload of the next complete event, if one has been dispatched.
    pub fn next_data(&mut self) -> Option<String> {
        self.ready.pop_front()
    }

    fn line_done(&mut self, line: &[u8]) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                self.ready.push_back(data);
            }
            return;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text.as_ref(), ""),
        };
        if field == "data" {
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            }
        }
    }
}

/// A live stream of lifecycle events; ends when the daemon closes it.
#[derive(Debug)]
pub struct EventStream {
    body: Incoming,
    decoder: SseDecoder,
}

impl EventStream {
    pub(crate) fn new(body: Incoming) -> Self {
        EventStream { body, decoder: SseDecoder::default() }
    }

    /// Waits for the next event; `Ok(None)` once the daemon has ended the stream.
    pub async fn next(&mut self) -> Result<Option<Event>, ClientError> {
        loop {
            if let Some(data) = self.decoder.next_data() {
                return serde_json::from_str(&data)
                    .map(Some)
                    .map_err(|cause| ClientError::BadEvent { data, cause });
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(cause)) => return Err(ClientError::Events { cause }),
                Some(Ok(frame)) => {
                    if let Some(bytes) = frame.data_ref() {
                        self.decoder.push(bytes);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(decoder: &mut SseDecoder) -> Vec<String> {
        std::iter::from_fn(|| decoder.next_data()).collect()
    }

    #[test]
    fn events_dispatch_on_blank_lines_across_chunk_boundaries() {
        let mut d = SseDecoder::default();
        d.push(b"data: {\"a\":");
        assert!(d.next_data().is_none());
        d.push(b"1}\n");
        assert!(d.next_data().is_none(), "no blank line yet");
        d.push(b"\ndata:two\r\n\r\n");
        assert_eq!(all(&mut d), ["{\"a\":1}", "two"]);
    }

    #[test]
    fn comments_and_other_fields_are_ignored() {
        let mut d = SseDecoder::default();
        d.push(b": keep-alive\n\nevent: vm\nid: 7\nretry: 100\ndata: x\n\n");
        assert_eq!(all(&mut d), ["x"]);
    }

    #[test]
    fn multiple_data_lines_join_with_newline() {
        let mut d = SseDecoder::default();
        d.push(b"data: a\ndata: b\ndata\n\n");
        assert_eq!(all(&mut d), ["a\nb\n"]);
    }

    #[test]
    fn blank_line_without_data_dispatches_nothing() {
        let mut d = SseDecoder::default();
        d.push(b"\n\n\n");
        assert!(d.next_data().is_none());
    }
}
