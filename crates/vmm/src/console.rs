//! Serial console backends: where COM1 output goes and where its input comes from.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ironvirt_devices::{RxDrainedCallback, Serial};

use crate::config::SerialConfig;

/// Output kept for socket clients while none is connected.
pub(crate) const SOCKET_BACKLOG_BYTES: usize = 64 * 1024;

/// The host side of the serial console; lives as long as the process, across guest reboots.
pub(crate) struct Console {
    out: ConsoleOut,
    /// Set when the backend listens on a socket file we must remove at exit.
    socket_path: Option<PathBuf>,
    pub(crate) raw_tty: bool,
}

#[derive(Clone)]
enum ConsoleOut {
    Stdout,
    File(Arc<Mutex<File>>),
    Socket(Arc<SocketHub>),
    Null,
}

impl Console {
    /// Opens the backend (creating the file or listening socket).
    pub(crate) fn open(cfg: &SerialConfig) -> io::Result<Self> {
        let (out, socket_path) = match cfg {
            SerialConfig::Stdio => (ConsoleOut::Stdout, None),
            SerialConfig::None => (ConsoleOut::Null, None),
            SerialConfig::File(path) => {
                let f = OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
                })?;
                (ConsoleOut::File(Arc::new(Mutex::new(f))), None)
            }
            SerialConfig::Socket(path) => {
                (ConsoleOut::Socket(Arc::new(SocketHub::listen(path)?)), Some(path.clone()))
            }
        };
        Ok(Self { out, socket_path, raw_tty: false })
    }

    /// The sink the UART writes guest output to.
    pub(crate) fn writer(&self) -> Box<dyn Write + Send> {
        Box::new(self.out.clone())
    }

    /// Starts the threads that feed host input into `serial`.
    pub(crate) fn start_input(&mut self, pump: Arc<InputPump>) -> io::Result<()> {
        match &self.out {
            ConsoleOut::Stdout => {
                self.raw_tty = ironvirt_sys_util::terminal::stdin_raw_mode()?;
                spawn("serial-stdin", move || pump.forward(io::stdin().lock()))?;
            }
            ConsoleOut::Socket(hub) => {
                let hub = hub.clone();
                spawn("serial-accept", move || hub.accept_loop(pump))?;
            }
            ConsoleOut::File(_) | ConsoleOut::Null => {}
        }
        Ok(())
    }

    /// Flushes output and undoes what the backend did to the host (terminal mode, socket file).
    pub(crate) fn close(&self) {
        let _ = self.out.clone().flush();
        if self.raw_tty {
            ironvirt_sys_util::terminal::restore_terminal();
        }
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new().name(name.into()).spawn(f).map(|_| ())
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(buf)?;
                out.flush()?;
            }
            Self::File(f) => f.lock().unwrap_or_else(|p| p.into_inner()).write_all(buf)?,
            Self::Socket(hub) => hub.broadcast(buf),
            Self::Null => {}
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stdout => io::stdout().flush(),
            Self::File(f) => f.lock().unwrap_or_else(|p| p.into_inner()).flush(),
            Self::Socket(_) | Self::Null => Ok(()),
        }
    }
}

/// Moves host input into the UART's receive FIFO, waiting for the guest to drain it.
pub(crate) struct InputPump {
    serial: Mutex<Option<Arc<Mutex<Serial>>>>,
    drained: Arc<(Mutex<bool>, Condvar)>,
}

impl InputPump {
    /// A pump and the callback the UART must call when its receive FIFO empties.
    pub(crate) fn new() -> (Arc<Self>, RxDrainedCallback) {
        let drained = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = drained.clone();
        let callback: RxDrainedCallback = Box::new(move || {
            let (flag, cv) = &*signal;
            *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cv.notify_all();
        });
        (Arc::new(Self { serial: Mutex::new(None), drained }), callback)
    }

    /// Connects the pump to the UART.
    pub(crate) fn attach(&self, serial: Arc<Mutex<Serial>>) {
        *self.serial.lock().unwrap_or_else(|p| p.into_inner()) = Some(serial);
    }

    /// Delivers `bytes` to the guest, blocking while its FIFO is full.
    pub(crate) fn push(&self, mut bytes: &[u8]) {
        let Some(serial) = self.serial.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return;
        };
        while !bytes.is_empty() {
            let (flag, cv) = &*self.drained;
            let mut drained = flag.lock().unwrap_or_else(|p| p.into_inner());
            *drained = false;
            let n = serial.lock().unwrap_or_else(|p| p.into_inner()).enqueue_input(bytes);
            bytes = &bytes[n..];
            if !bytes.is_empty() && !*drained {
                // The timeout covers a guest that polls LSR without ever reading an empty FIFO.
                let _ = cv.wait_timeout(drained, Duration::from_millis(20));
            }
        }
    }

    /// Copies a reader (stdin, a socket client) into the guest until EOF or error.
    pub(crate) fn forward(&self, mut input: impl Read) {
        let mut buf = [0u8; 256];
        loop {
            match input.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => self.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

/// A listening Unix socket that fans console output out to every connected client and keeps
/// a bounded backlog while none is connected.
pub(crate) struct SocketHub {
    listener: UnixListener,
    state: Mutex<HubState>,
}

struct HubState {
    clients: Vec<UnixStream>,
    backlog: VecDeque<u8>,
}

impl SocketHub {
    fn listen(path: &Path) -> io::Result<Self> {
        let listener = ironvirt_sys_util::socket::bind_unix_listener(path, 0o600)?;
        Ok(Self {
            listener,
            state: Mutex::new(HubState { clients: Vec::new(), backlog: VecDeque::new() }),
        })
    }

    fn broadcast(&self, buf: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.clients.is_empty() {
            state.backlog.extend(buf);
            let excess = state.backlog.len().saturating_sub(SOCKET_BACKLOG_BYTES);
            state.backlog.drain(..excess);
            return;
        }
        // Writes time out quickly (see accept_loop); a client that is gone is dropped.
        state.clients.retain_mut(|c| match c.write(buf) {
            Ok(_) => true,
            Err(e) => matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
        });
    }

    fn accept_loop(self: Arc<Self>, pump: Arc<InputPump>) {
        for stream in self.listener.incoming() {
            let Ok(stream) = stream else { continue };
            let Ok(reader) = stream.try_clone() else { continue };
            {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let backlog: Vec<u8> = state.backlog.drain(..).collect();
                let mut s = &stream;
                let _ = s.write_all(&backlog);
                // A client that does not keep up loses output instead of stalling the vCPU for
                // long; reads (its input) stay blocking.
                if stream.set_write_timeout(Some(Duration::from_millis(2))).is_err() {
                    continue;
                }
                state.clients.push(stream);
            }
            let pump = pump.clone();
            let _ = spawn("serial-client", move || pump.forward(reader));
        }
    }
}
