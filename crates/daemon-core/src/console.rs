//! The serial console of one running VM: one connection to the VMM's console socket, a
//! scrollback ring replayed to new viewers, a bounded console log, and fan-out of output to
//! any number of viewers whose input goes back to the VMM.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::logs::RotatingLog;

/// Default scrollback kept per VM.
pub const DEFAULT_SCROLLBACK: usize = 64 * 1024;

/// A chunk of console output.
pub type Chunk = Arc<Vec<u8>>;

/// What a viewer gets when it attaches.
#[derive(Debug)]
pub struct Attachment {
    /// Recent output, to show first.
    pub scrollback: Vec<u8>,
    /// Output from now on; closed when the VM stops. A slow viewer may miss chunks (`Lagged`).
    pub output: broadcast::Receiver<Chunk>,
    /// Input for the guest.
    pub input: mpsc::Sender<Vec<u8>>,
}

struct Ring {
    buf: VecDeque<u8>,
    limit: usize,
    /// `None` once the hub stopped: viewers see their output stream end.
    tx: Option<broadcast::Sender<Chunk>>,
}

/// The console of one VM.
pub struct ConsoleHub {
    ring: Arc<Mutex<Ring>>,
    input: mpsc::Sender<Vec<u8>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for ConsoleHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleHub").finish_non_exhaustive()
    }
}

impl ConsoleHub {
    /// Starts the connection task: it connects to `socket` (retrying while the VMM sets it up),
    /// copies output to the ring, the log and the viewers, and input to the VMM.
    /// `history` seeds the scrollback (the console log's tail when re-adopting a VM).
    pub fn start(
        vm: String,
        socket: PathBuf,
        log: Option<RotatingLog>,
        scrollback: usize,
        history: Vec<u8>,
    ) -> Self {
        let (tx, _) = broadcast::channel(256);
        let start = history.len().saturating_sub(scrollback);
        let ring = Arc::new(Mutex::new(Ring {
            buf: VecDeque::from(history[start..].to_vec()),
            limit: scrollback,
            tx: Some(tx),
        }));
        let (input, input_rx) = mpsc::channel(64);
        let task = tokio::spawn(pump(vm, socket, log, ring.clone(), input_rx));
        Self { ring, input, task }
    }

    /// Attaches a viewer: the scrollback and a subscription taken atomically, so no output is
    /// lost or doubled in between.
    pub fn attach(&self) -> Attachment {
        let ring = lock(&self.ring);
        let output = match &ring.tx {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1, // already stopped: a closed stream
        };
        let (a, b) = ring.buf.as_slices();
        Attachment { scrollback: [a, b].concat(), output, input: self.input.clone() }
    }

    /// Stops the connection; viewers' output streams end.
    pub fn stop(&self) {
        self.task.abort();
        lock(&self.ring).tx = None;
    }
}

impl Drop for ConsoleHub {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(ring: &Mutex<Ring>) -> std::sync::MutexGuard<'_, Ring> {
    ring.lock().unwrap_or_else(|p| p.into_inner())
}

fn record(ring: &Mutex<Ring>, log: &mut Option<RotatingLog>, vm: &str, data: &[u8]) {
    if let Some(l) = log {
        if let Err(e) = l.append(data) {
            tracing::warn!(vm, error = %e, "cannot write the console log; console logging stops");
            *log = None;
        }
    }
    let mut r = lock(ring);
    let keep = r.limit;
    if data.len() >= keep {
        r.buf.clear();
        r.buf.extend(&data[data.len() - keep..]);
    } else {
        let excess = (r.buf.len() + data.len()).saturating_sub(keep);
        r.buf.drain(..excess);
        r.buf.extend(data);
    }
    if let Some(tx) = &r.tx {
        let _ = tx.send(Arc::new(data.to_vec()));
    }
}

async fn pump(
    vm: String,
    socket: PathBuf,
    mut log: Option<RotatingLog>,
    ring: Arc<Mutex<Ring>>,
    mut input: mpsc::Receiver<Vec<u8>>,
) {
    // The VMM creates its console socket within a millisecond or two of starting; poll
    // closely at first so the first guest output reaches the log and viewers promptly.
    const FIRST_RETRY: Duration = Duration::from_millis(1);
    let mut retry = FIRST_RETRY;
    loop {
        let mut stream = match UnixStream::connect(&socket).await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(retry).await;
                retry = (retry * 3 / 2).min(Duration::from_millis(500));
                continue;
            }
        };
        tracing::debug!(vm, "console connected");
        retry = FIRST_RETRY;
        let mut buf = vec![0u8; 4096];
        loop {
            tokio::select! {
                n = stream.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => record(&ring, &mut log, &vm, &buf[..n]),
                },
                Some(data) = input.recv() => {
                    if stream.write_all(&data).await.is_err() {
                        break;
                    }
                }
            }
        }
        tracing::debug!(vm, "console connection closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixListener;

    use super::*;

    #[tokio::test]
    async fn viewers_get_scrollback_then_live_output_and_input_reaches_the_vmm() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("c.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let log_path = dir.path().join("c.log");
        let log = Some(RotatingLog::open(&log_path, 1 << 20).unwrap());
        let hub = ConsoleHub::start("t".into(), sock, log, 8, b"old".to_vec());
        let (mut vmm, _) = listener.accept().await.unwrap();
        vmm.write_all(b"0123456789").await.unwrap();
        // Wait until the ring has it.
        let mut att = hub.attach();
        assert_eq!(att.scrollback, b"old");
        for _ in 0..200 {
            if att.scrollback != b"old" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            att = hub.attach();
        }
        assert_eq!(att.scrollback, b"23456789", "only the last 8 bytes are kept");
        vmm.write_all(b"live").await.unwrap();
        let chunk = att.output.recv().await.unwrap();
        assert_eq!(&chunk[..], b"live");
        att.input.send(b"typed".to_vec()).await.unwrap();
        let mut got = [0u8; 5];
        vmm.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"typed");
        assert_eq!(std::fs::read(&log_path).unwrap(), b"0123456789live");
        hub.stop();
        assert!(matches!(att.output.recv().await, Err(broadcast::error::RecvError::Closed)));
    }
}
