//! The serial console of a VM over the daemon's WebSocket endpoint: binary frames both ways,
//! recent output replayed first by the daemon.

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::endpoint::Io;
use crate::error::ClientError;

type Ws = WebSocketStream<Box<dyn Io>>;

/// An attached console; [`Console::split`] it to read and write concurrently.
pub struct Console {
    ws: Ws,
    vm: String,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("vm", &self.vm).finish()
    }
}

impl Console {
    pub(crate) fn new(ws: Ws, vm: String) -> Self {
        Console { ws, vm }
    }

    /// Splits into a writer (keystrokes to the guest) and a reader (guest output).
    pub fn split(self) -> (ConsoleWriter, ConsoleReader) {
        let (sink, stream) = self.ws.split();
        (ConsoleWriter { sink, vm: self.vm.clone() }, ConsoleReader { stream, vm: self.vm })
    }
}

/// Sends input to the guest's serial port.
pub struct ConsoleWriter {
    sink: SplitSink<Ws, Message>,
    vm: String,
}

impl std::fmt::Debug for ConsoleWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleWriter").field("vm", &self.vm).finish()
    }
}

impl ConsoleWriter {
    /// Sends `bytes` as one binary frame.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.sink
            .send(Message::Binary(Bytes::copy_from_slice(bytes)))
            .await
            .map_err(|e| console_error(&self.vm, e))
    }

    /// Detaches: sends a close frame. The VM keeps running.
    pub async fn close(&mut self) -> Result<(), ClientError> {
        match self.sink.send(Message::Close(None)).await {
            Ok(()) => {}
            Err(e) if is_closed(&e) => return Ok(()),
            Err(e) => return Err(console_error(&self.vm, e)),
        }
        match self.sink.close().await {
            Err(e) if !is_closed(&e) => Err(console_error(&self.vm, e)),
            _ => Ok(()),
        }
    }
}

/// Receives the guest's serial output.
pub struct ConsoleReader {
    stream: SplitStream<Ws>,
    vm: String,
}

impl std::fmt::Debug for ConsoleReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleReader").field("vm", &self.vm).finish()
    }
}

impl ConsoleReader {
    /// The next chunk of output; `Ok(None)` once the daemon closed the console (the VM
    /// stopped, or the daemon went away after a clean close).
    pub async fn read(&mut self) -> Result<Option<Bytes>, ClientError> {
        while let Some(message) = self.stream.next().await {
            match message {
                Ok(Message::Binary(bytes)) => return Ok(Some(bytes)),
                Ok(Message::Text(text)) => return Ok(Some(Bytes::from(text.as_str().to_owned()))),
                Ok(Message::Close(_)) => return Ok(None),
                // Pings are answered by tungstenite itself.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Err(e) if is_closed(&e) => return Ok(None),
                Err(e) => return Err(console_error(&self.vm, e)),
            }
        }
        Ok(None)
    }
}

fn is_closed(e: &tungstenite::Error) -> bool {
    matches!(
        e,
        tungstenite::Error::ConnectionClosed
            | tungstenite::Error::AlreadyClosed
            | tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake
            )
    )
}

pub(crate) fn console_error(vm: &str, cause: tungstenite::Error) -> ClientError {
    ClientError::Console { vm: vm.to_owned(), cause: Box::new(cause) }
}
