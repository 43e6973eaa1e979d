//! `ironvirt console`: raw terminal, stdin to the guest, guest output to stdout, Ctrl-] to
//! detach. With a non-terminal stdin (scripts), input is forwarded until EOF and output is
//! printed until detach, the VM stopping, or `--timeout`.

use std::io::{IsTerminal, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use ironvirt_client::Client;
use nix::sys::termios::{self, OutputFlags, SetArg, Termios};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// The byte Ctrl-] sends (ASCII GS).
pub const DETACH: u8 = 0x1d;

/// Why a console session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The user pressed Ctrl-] (or the byte came through a pipe).
    Detached,
    /// The daemon closed the console: the VM stopped.
    Closed,
    /// `--timeout` elapsed.
    TimedOut,
    /// SIGTERM, SIGHUP or SIGINT.
    Signalled,
}

/// Raw mode on stdin while alive; the saved settings come back on drop and on panic (the
/// release profile aborts on panic, so the panic hook is what runs then).
struct RawMode {
    saved: Arc<Mutex<Option<Termios>>>,
}

impl RawMode {
    /// Enters raw mode if stdin is a terminal.
    fn enter() -> Result<Option<RawMode>> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let saved_settings = termios::tcgetattr(&stdin).context("Cannot read terminal settings")?;
        let mut raw = saved_settings.clone();
        termios::cfmakeraw(&mut raw);
        // Keep output post-processing so our own messages start at column 0.
        raw.output_flags |= OutputFlags::OPOST | OutputFlags::ONLCR;
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw)
            .context("Cannot put the terminal in raw mode")?;
        let saved = Arc::new(Mutex::new(Some(saved_settings)));
        let hook_saved = Arc::clone(&saved);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore(&hook_saved);
            previous(info);
        }));
        Ok(Some(RawMode { saved }))
    }
}

fn restore(saved: &Mutex<Option<Termios>>) {
    let taken = saved.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(settings) = taken {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &settings);
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore(&self.saved);
    }
}

/// Reads stdin on a plain thread (a blocked read must not hold up runtime shutdown) and
/// forwards chunks; the channel closes at EOF or on a read error.
fn spawn_stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    });
    rx
}

/// Runs a console session on `name` until it ends; the terminal is restored on every path.
pub async fn run(client: &Client, name: &str, timeout: Option<Duration>) -> Result<Ending> {
    // Attach before touching the terminal: a refusal (404/409) prints a normal error.
    let (mut writer, mut reader) = client.console(name).await?.split();
    let raw = RawMode::enter()?;
    let interactive = raw.is_some() && std::io::stderr().is_terminal();
    if interactive {
        eprint!("Connected to {name}. Escape character is ^]\r\n");
    }
    let mut stdin = Some(spawn_stdin_reader());
    let mut term = signal(SignalKind::terminate()).context("Cannot watch SIGTERM")?;
    let mut hangup = signal(SignalKind::hangup()).context("Cannot watch SIGHUP")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("Cannot watch SIGINT")?;
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut stdout = std::io::stdout();
    let ending = loop {
        tokio::select! {
            input = async { stdin.as_mut().expect("guarded by the branch condition").recv().await }, if stdin.is_some() => {
                match input {
                    None => stdin = None,
                    Some(bytes) => match bytes.iter().position(|&b| b == DETACH) {
                        Some(at) => {
                            if at > 0 {
                                writer.write(&bytes[..at]).await?;
                            }
                            break Ending::Detached;
                        }
                        None => writer.write(&bytes).await?,
                    },
                }
            }
            output = reader.read() => match output? {
                Some(bytes) => {
                    stdout.write_all(&bytes).context("Cannot write console output")?;
                    stdout.flush().context("Cannot write console output")?;
                }
                None => break Ending::Closed,
            },
            _ = &mut deadline => break Ending::TimedOut,
            _ = term.recv() => break Ending::Signalled,
            _ = hangup.recv() => break Ending::Signalled,
            _ = interrupt.recv() => break Ending::Signalled,
        }
    };
    if ending != Ending::Closed {
        // Detach politely; the VM keeps running whatever happens here.
        let _ = tokio::time::timeout(Duration::from_secs(2), writer.close()).await;
    }
    drop(raw);
    if interactive {
        match ending {
            Ending::Closed => eprintln!("\nConsole closed by the daemon (the VM stopped)."),
            _ => eprintln!("\nDetached from {name}."),
        }
    }
    Ok(ending)
}
