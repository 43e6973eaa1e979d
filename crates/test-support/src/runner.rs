//! Runs `ironvirt-vmm` as a child process with a deadline, capturing serial output (stdout)
//! and diagnostics (stderr).

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running VMM whose output is being collected.
pub struct VmmRun {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// Exit code, or `None` if killed by a signal.
    pub code: Option<i32>,
    /// Serial console output.
    pub stdout: String,
    /// VMM diagnostics.
    pub stderr: String,
    /// Whether the deadline passed and the VMM was killed.
    pub timed_out: bool,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl RunOutcome {
    /// Lines of serial output starting with `key: `, values trimmed.
    pub fn values(&self, key: &str) -> Vec<String> {
        let prefix = format!("{key}: ");
        self.stdout
            .lines()
            .filter_map(|l| {
                l.trim_end_matches('\r').strip_prefix(&prefix).map(|v| v.trim().to_string())
            })
            .collect()
    }

    /// The single value of `key`, panicking with the whole output if it is not there once.
    pub fn value(&self, key: &str) -> String {
        let v = self.values(key);
        assert_eq!(v.len(), 1, "expected one '{key}:' line in the guest output:\n{self}");
        v[0].clone()
    }
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}{} after {:?}\n--- serial ---\n{}\n--- stderr ---\n{}",
            self.code,
            if self.timed_out { " (TIMED OUT, killed)" } else { "" },
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }
}

fn collect(mut r: impl Read + Send + 'static, buf: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    })
}

impl VmmRun {
    /// Spawns `vmm` with `args`; stdin is `/dev/null`.
    pub fn spawn(vmm: &Path, args: &[&str]) -> Self {
        let started = Instant::now();
        let mut child = Command::new(vmm)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", vmm.display()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("piped"), stdout.clone()),
            collect(child.stderr.take().expect("piped"), stderr.clone()),
        ];
        Self { child, stdout, stderr, readers, started }
    }

    /// Runs to completion (or `timeout`, then kills it).
    pub fn run(vmm: &Path, args: &[&str], timeout: Duration) -> RunOutcome {
        Self::spawn(vmm, args).wait(timeout)
    }

    /// Process id of the VMM (or of the wrapper that runs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Serial output so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Waits until the serial output contains `needle` `count` times; false on timeout or exit.
    pub fn wait_for(&mut self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.output().matches(needle).count() >= count {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.output().matches(needle).count() >= count;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends `signal` to the VMM.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.id() as i32;
        let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
    }

    /// Waits for exit (killing it at `timeout`) and returns the outcome.
    pub fn wait(mut self, timeout: Duration) -> RunOutcome {
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                timed_out = true;
                let _ = self.child.kill();
                break self.child.wait().expect("child was spawned");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let elapsed = self.started.elapsed();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        RunOutcome {
            code: status.code(),
            stdout: String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned(),
            stderr: String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned(),
            timed_out,
            elapsed,
        }
    }
}
