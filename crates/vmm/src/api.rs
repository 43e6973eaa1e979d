//! The per-VM control API server (docs/API.md): one thread accepting connections on a Unix
//! socket; each request is forwarded to the control loop, which owns the VM, and the answer is
//! written back.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

use ironvirt_vmm_protocol::{read_request, write_response, Request, Response};

use crate::ControlEvent;

/// How long a request may wait for the control loop (a boot in progress delays it).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A listening control socket; the socket file is removed on drop.
pub(crate) struct ApiServer {
    path: PathBuf,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the control socket (mode 0600; a stale socket from an earlier run is replaced) and
/// starts the accepting thread, which sends requests tagged with `tag` on `tx`.
pub(crate) fn start(
    path: &Path,
    tx: Sender<(u64, ControlEvent)>,
    tag: u64,
) -> io::Result<ApiServer> {
    let listener = ironvirt_sys_util::socket::bind_unix_listener(path, 0o600)?;
    std::thread::Builder::new().name("api".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
            let response = match read_request(&mut stream) {
                Ok(request) => ask(&tx, tag, request),
                Err(e) => e.response(),
            };
            let _ = write_response(&mut stream, &response);
        }
    })?;
    Ok(ApiServer { path: path.to_path_buf() })
}

fn ask(tx: &Sender<(u64, ControlEvent)>, tag: u64, request: Request) -> Response {
    let (reply_tx, reply_rx) = mpsc::channel();
    if tx.send((tag, ControlEvent::Api(request, reply_tx))).is_err() {
        return Response::error(503, "unavailable", "The VMM is shutting down");
    }
    reply_rx.recv_timeout(ANSWER_TIMEOUT).unwrap_or_else(|_| {
        Response::error(503, "unavailable", "The VMM did not answer in time (booting or stopping)")
    })
}
