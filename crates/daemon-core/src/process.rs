//! The VMM process: its files, its command line, spawning it in its own process group, the
//! runtime record that lets a restarted daemon find it again, its exit file, and signals.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use ironvirt_api_types::{ExitInfo, VmDefinition, VmState};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// Every file of one VM outside its definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    /// VMM control socket (`run/<name>.api`).
    pub api: PathBuf,
    /// VMM serial console socket (`run/<name>.console`).
    pub console: PathBuf,
    /// Exit file the VMM writes when it ends (`run/<name>.exit`).
    pub exit: PathBuf,
    /// Runtime record while a VMM runs (`run/<name>.json`).
    pub record: PathBuf,
    /// How the last run ended, kept across daemon restarts (`run/<name>.last.json`).
    pub last: PathBuf,
    /// VMM stderr (`<log-dir>/<name>.log`).
    pub log: PathBuf,
    /// Console output (`<log-dir>/<name>.console.log`).
    pub console_log: PathBuf,
    /// Host side of the VM's virtio-vsock (`<run>/<name>.vsock`; guest connections to host
    /// port P go to `<run>/<name>.vsock_P`).
    pub vsock: PathBuf,
}

impl VmPaths {
    /// The paths of VM `name`.
    pub fn new(run_dir: &Path, log_dir: &Path, name: &str) -> Self {
        Self {
            api: run_dir.join(format!("{name}.api")),
            console: run_dir.join(format!("{name}.console")),
            exit: run_dir.join(format!("{name}.exit")),
            record: run_dir.join(format!("{name}.json")),
            last: run_dir.join(format!("{name}.last.json")),
            log: log_dir.join(format!("{name}.log")),
            console_log: log_dir.join(format!("{name}.console.log")),
            vsock: run_dir.join(format!("{name}.vsock")),
        }
    }
}

/// What the daemon records about a running VMM (`run/<name>.json`), written atomically after
/// the spawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeRecord {
    /// VMM process id.
    pub pid: u32,
    /// When it was started, RFC 3339.
    pub started_at: String,
    /// The VMM binary.
    pub vmm: PathBuf,
    /// Control socket.
    pub api_socket: PathBuf,
    /// Console socket.
    pub console_socket: PathBuf,
    /// Exit file.
    pub exit_file: PathBuf,
}

/// What the VMM writes to `--exit-file` (docs/API.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitFile {
    /// Exit code.
    pub code: i32,
    /// Why.
    pub reason: String,
}

/// What `run/<name>.last.json` keeps: the state a run left and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    /// `shut-off` or `crashed`.
    pub state: VmState,
    /// How it ended.
    pub exit: ExitInfo,
}

/// Reads a JSON file, `None` when missing or unreadable.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring malformed file");
            None
        }
    }
}

/// Writes `value` as JSON to `path` atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    crate::store::atomic_write(path, &bytes)
}

/// Removes a file, ignoring "not found".
pub fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove");
        }
    }
}

/// The `ironvirt-vmm` command line for `def` (without the program).
pub fn vmm_args(def: &VmDefinition, memory_bytes: u64, paths: &VmPaths) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |k: &str, v: OsString| {
        args.push(k.into());
        args.push(v);
    };
    push("--kernel", def.boot.kernel.clone().into());
    if let Some(i) = &def.boot.initramfs {
        push("--initramfs", i.into());
    }
    if let Some(c) = &def.boot.cmdline {
        push("--cmdline", c.into());
    }
    push("--cpus", def.cpus.to_string().into());
    push("--memory", format!("{}K", memory_bytes >> 10).into());
    push("--cpu-template", def.cpu_template.clone().unwrap_or_else(|| "host".into()).into());
    let mut serial = OsString::from("socket=");
    serial.push(&paths.console);
    push("--serial", serial);
    push("--api-socket", paths.api.clone().into());
    push("--exit-file", paths.exit.clone().into());
    for d in &def.disks {
        let mut s = format!("path={}", d.path);
        if let Some(f) = &d.format {
            s.push_str(&format!(",format={f}"));
        }
        if d.readonly {
            s.push_str(",readonly=on");
        }
        push("--disk", s.into());
    }
    for n in &def.nics {
        let mut s = format!("tap={}", n.tap);
        if let Some(m) = &n.mac {
            s.push_str(&format!(",mac={m}"));
        }
        push("--net", s.into());
    }
    if let Some(v) = &def.vsock {
        push("--vsock", format!("cid={},socket={}", v.cid, paths.vsock.display()).into());
    }
    args
}

/// Starts the VMM with stdout and stderr appended to `log` and stdin closed, in a process
/// group of its own: a terminal's Ctrl-C (sent to the foreground group) and the daemon's end
/// (crash, `kill -9`, SIGTERM) leave it running. `process_group(0)` is used instead of a
/// `setsid()` in `pre_exec` because the latter needs `unsafe`, which this crate forbids; the
/// VMM never reads the terminal, so sharing the session is harmless.
pub fn spawn(vmm: &Path, args: &[OsString], log: &Path) -> io::Result<tokio::process::Child> {
    let out = OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    tokio::process::Command::new(vmm)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
}

/// Whether `pid` is a live `ironvirt-vmm` serving `api_socket`: `/proc/<pid>/cmdline` names the
/// program and the socket (a zombie has an empty command line, a reused pid another one).
pub fn pid_is_vmm(pid: u32, api_socket: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let program_ok = args.first().is_some_and(|a| contains(a, b"ironvirt-vmm"));
    let socket = api_socket.as_os_str().as_encoded_bytes();
    program_ok && args.contains(&socket)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Sends `sig` to `pid`.
pub fn send_signal(pid: u32, sig: Signal) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| nix::Error::EINVAL)?;
    signal::kill(Pid::from_raw(pid), sig)
}

/// The last `max` bytes of a file (empty when unreadable).
pub fn tail_bytes(path: &Path, max: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = fs::File::open(path) else { return Vec::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max as u64)));
    let mut out = Vec::new();
    let _ = f.take(max as u64).read_to_end(&mut out);
    out
}

/// The last `max` bytes of a file as text (for error messages quoting the VMM log).
pub fn tail(path: &Path, max: usize) -> String {
    String::from_utf8_lossy(&tail_bytes(path, max)).trim().to_string()
}

#[cfg(test)]
mod tests {
    use ironvirt_api_types::{BootSpec, DiskSpec, NicSpec};

    use super::*;

    #[test]
    fn command_line_carries_every_setting_and_file() {
        let paths = VmPaths::new(Path::new("/s/run"), Path::new("/s/logs"), "web1");
        let def = VmDefinition {
            name: "web1".into(),
            uuid: None,
            cpus: 2,
            memory: "1G".into(),
            boot: BootSpec {
                kernel: "/k".into(),
                initramfs: Some("/i".into()),
                cmdline: Some("a b".into()),
            },
            disks: vec![DiskSpec { path: "/d".into(), format: Some("raw".into()), readonly: true }],
            nics: vec![NicSpec { tap: "tap0".into(), mac: Some("52:54:00:00:00:01".into()) }],
            vsock: None,
            cpu_template: Some("portable".into()),
            autostart: false,
        };
        let args: Vec<String> =
            vmm_args(&def, 1 << 30, &paths).into_iter().map(|a| a.into_string().unwrap()).collect();
        let joined = args.join(" ");
        assert_eq!(
            joined,
            "--kernel /k --initramfs /i --cmdline a b --cpus 2 --memory 1048576K \
             --cpu-template portable --serial socket=/s/run/web1.console \
             --api-socket /s/run/web1.api --exit-file /s/run/web1.exit \
             --disk path=/d,format=raw,readonly=on --net tap=tap0,mac=52:54:00:00:00:01"
        );
        assert!(!args.iter().any(|a| a == "--no-reboot"));
        assert_eq!(paths.log, Path::new("/s/logs/web1.log"));
    }

    #[test]
    fn own_process_is_not_a_vmm_and_dead_pids_are_not_either() {
        assert!(!pid_is_vmm(std::process::id(), Path::new("/x.api")));
        assert!(!pid_is_vmm(u32::MAX - 1, Path::new("/x.api")));
    }
}
