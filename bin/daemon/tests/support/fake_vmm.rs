//! `ironvirt-fake-vmm`: a stand-in for `ironvirt-vmm` in the daemon's tests. It takes the same
//! command line, serves the control API (docs/API.md) on `--api-socket` with the real framing
//! from `ironvirt-vmm-protocol`, and offers a console on `--serial socket=PATH` that prints a
//! banner and a heartbeat and echoes input back. The power button powers off (exit file, exit
//! 0); typing `panic` exits 4 like a pvpanic guest. Knobs ride in `--cmdline` words:
//! `ignore-power-button`, `boot-delay-ms=N`, `heartbeat-ms=N`. SIGTERM kills it (default
//! action), as a signal.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use ironvirt_api_types::{SerialCounters, VcpuCounters, VmCounters, VmmRunState, VmmStatus};
use ironvirt_vmm_protocol::{read_request, write_response, Pong, Request, Response};

#[derive(Parser, Debug)]
#[command(name = "ironvirt-vmm")]
struct Cli {
    #[arg(long)]
    kernel: PathBuf,
    #[arg(long)]
    initramfs: Option<PathBuf>,
    #[arg(long, default_value = "")]
    cmdline: String,
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    #[arg(long, default_value = "512M")]
    memory: String,
    #[arg(long, default_value = "host")]
    cpu_template: String,
    #[arg(long, default_value = "auto")]
    boot_protocol: String,
    #[arg(long, default_value = "stdio")]
    serial: String,
    #[arg(long)]
    api_socket: Option<PathBuf>,
    #[arg(long)]
    exit_file: Option<PathBuf>,
    #[arg(long)]
    disk: Vec<String>,
    #[arg(long)]
    net: Vec<String>,
    #[arg(long)]
    vsock: Option<String>,
    #[arg(long)]
    no_reboot: bool,
    #[arg(long, default_value = "warn")]
    log_level: String,
}

struct Vmm {
    cli: Cli,
    started: Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    paused: bool,
    reboots: u64,
    clients: Vec<UnixStream>,
    backlog: Vec<u8>,
    tx_bytes: u64,
    rx_bytes: u64,
}

impl Vmm {
    fn knob(&self, name: &str) -> Option<&str> {
        self.cli.cmdline.split_whitespace().find_map(|w| {
            if w == name {
                Some("")
            } else {
                w.strip_prefix(name)?.strip_prefix('=')
            }
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Guest output: to every console client, or the backlog while none is connected.
    fn output(&self, bytes: &[u8]) {
        let mut s = self.lock();
        s.tx_bytes += bytes.len() as u64;
        if s.clients.is_empty() {
            s.backlog.extend_from_slice(bytes);
            let excess = s.backlog.len().saturating_sub(64 * 1024);
            s.backlog.drain(..excess);
            return;
        }
        s.clients.retain_mut(|c| c.write_all(bytes).is_ok());
    }

    fn exit(&self, code: i32, reason: &str) -> ! {
        if let Some(path) = &self.cli.exit_file {
            let tmp = path.with_extension("tmp");
            let body = format!("{{\"code\": {code}, \"reason\": \"{reason}\"}}");
            if std::fs::write(&tmp, body).is_ok() {
                let _ = std::fs::rename(&tmp, path);
            }
        }
        if let Some(p) = &self.cli.api_socket {
            let _ = std::fs::remove_file(p);
        }
        if let Some(p) = console_path(&self.cli.serial) {
            let _ = std::fs::remove_file(p);
        }
        std::process::exit(code)
    }

    fn handle(self: &Arc<Self>, req: Request) -> Response {
        match req {
            Request::Ping => {
                Response::json(&Pong { pid: std::process::id(), version: "fake".into() })
            }
            Request::Status => Response::json(&VmmStatus {
                state: if self.lock().paused { VmmRunState::Paused } else { VmmRunState::Running },
                cpus: self.cli.cpus,
                memory_bytes: 0,
                pid: std::process::id(),
                version: "fake".into(),
            }),
            Request::Pause | Request::Resume => {
                let want = req == Request::Pause;
                let mut s = self.lock();
                if s.paused == want {
                    return Response::error(409, "conflict", "Already in that state");
                }
                s.paused = want;
                Response::no_content()
            }
            Request::PowerButton => {
                if self.knob("ignore-power-button").is_none() {
                    let me = self.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(50));
                        me.output(b"fake guest: power button, powering off\r\n");
                        me.exit(0, "guest powered off");
                    });
                }
                Response::no_content()
            }
            Request::Reset => {
                self.lock().reboots += 1;
                if self.cli.no_reboot {
                    let me = self.clone();
                    std::thread::spawn(move || me.exit(3, "guest reset"));
                }
                self.output(b"fake guest: rebooting\r\n");
                Response::no_content()
            }
            Request::Counters => {
                let s = self.lock();
                Response::json(&VmCounters {
                    vcpus: (0..self.cli.cpus)
                        .map(|id| VcpuCounters { id, exits: 1, cpu_time_ns: 1 })
                        .collect(),
                    serial: SerialCounters { tx_bytes: s.tx_bytes, rx_bytes: s.rx_bytes },
                    disks: vec![],
                    nics: vec![],
                    reboots: s.reboots,
                    uptime_ms: self.started.elapsed().as_millis() as u64,
                })
            }
            Request::SetBalloon { .. } => {
                Response::error(409, "conflict", "The fake VMM has no balloon device")
            }
        }
    }
}

fn console_path(serial: &str) -> Option<PathBuf> {
    serial.strip_prefix("socket=").map(PathBuf::from)
}

fn console_client(vmm: Arc<Vmm>, mut stream: UnixStream) {
    let mut buf = [0u8; 1024];
    let mut line = Vec::new();
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        vmm.lock().rx_bytes += n as u64;
        vmm.output(&buf[..n]); // echo, like a shell with echo on
        line.extend_from_slice(&buf[..n]);
        if line.windows(5).any(|w| w == b"panic") {
            vmm.output(b"fake guest: Kernel panic\r\n");
            vmm.exit(4, "guest panic");
        }
        let keep = line.len().saturating_sub(8);
        line.drain(..keep);
    }
}

fn serve_console(vmm: Arc<Vmm>, path: &Path) {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).expect("fake vmm: bind console socket");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let Ok(reader) = stream.try_clone() else { continue };
            {
                let mut s = vmm.lock();
                let mut w = stream;
                let backlog = std::mem::take(&mut s.backlog);
                if w.write_all(&backlog).is_err() {
                    continue;
                }
                s.clients.push(w);
            }
            let v = vmm.clone();
            std::thread::spawn(move || console_client(v, reader));
        }
    });
}

fn main() {
    let cli = Cli::parse();
    let vmm = Arc::new(Vmm { cli, started: Instant::now(), state: Mutex::default() });
    if let Some(ms) = vmm.knob("boot-delay-ms").and_then(|v| v.parse().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    if let Some(path) = console_path(&vmm.cli.serial) {
        serve_console(vmm.clone(), &path);
    }
    vmm.output(format!("fake guest booting {}\r\n", vmm.cli.kernel.display()).as_bytes());
    let heartbeat = vmm.knob("heartbeat-ms").and_then(|v| v.parse().ok()).unwrap_or(200);
    let hb = vmm.clone();
    std::thread::spawn(move || {
        for n in 0u64.. {
            std::thread::sleep(Duration::from_millis(heartbeat));
            if !hb.lock().paused {
                hb.output(format!("heartbeat {n}\r\n").as_bytes());
            }
        }
    });
    let api = vmm.cli.api_socket.clone().expect("fake vmm: --api-socket is required");
    let _ = std::fs::remove_file(&api);
    let listener = UnixListener::bind(&api).expect("fake vmm: bind api socket");
    for stream in listener.incoming().flatten() {
        let v = vmm.clone();
        std::thread::spawn(move || {
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let resp = match read_request(&mut stream) {
                Ok(req) => v.handle(req),
                Err(e) => e.response(),
            };
            let _ = write_response(&mut stream, &resp);
        });
    }
}
