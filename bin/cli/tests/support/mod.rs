//! Running the real `ironvirt` binary against a mock daemon.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ironvirt_mock_daemon::MockDaemon;

/// `ironvirt` with a clean environment (no inherited address, token or editor).
pub fn command(daemon: &MockDaemon) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ironvirt"));
    cmd.env_remove("IRONVIRT_CONNECT")
        .env_remove("IRONVIRT_TOKEN")
        .env_remove("VISUAL")
        .env_remove("EDITOR")
        .arg("--connect")
        .arg(daemon.endpoint());
    cmd
}

/// Runs `ironvirt ARGS` to completion with empty stdin.
pub fn run(daemon: &MockDaemon, args: &[&str]) -> Output {
    command(daemon).args(args).stdin(Stdio::null()).output().expect("run ironvirt")
}

/// Exit code, failing loudly on a signal.
pub fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or_else(|| panic!("ironvirt died by a signal: {output:?}"))
}

/// Stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8")
}

/// Stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("stderr is UTF-8")
}

/// Asserts success and returns stdout.
pub fn ok(daemon: &MockDaemon, args: &[&str]) -> String {
    let output = run(daemon, args);
    assert_eq!(code(&output), 0, "ironvirt {args:?} failed: {}", stderr(&output));
    assert!(output.stderr.is_empty(), "unexpected stderr: {}", stderr(&output));
    stdout(&output)
}

/// Asserts the exit code and the one-line error format; returns the message.
pub fn fails(daemon: &MockDaemon, args: &[&str], expected: i32) -> String {
    let output = run(daemon, args);
    assert_eq!(
        code(&output),
        expected,
        "ironvirt {args:?}: stdout {:?} stderr {:?}",
        stdout(&output),
        stderr(&output)
    );
    let err = stderr(&output);
    assert!(err.starts_with("ironvirt: error: "), "{err:?}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err:?}");
    err.trim_end().trim_start_matches("ironvirt: error: ").to_owned()
}

/// Collects a child's stdout on a thread so a test can wait for some text to appear.
pub struct OutputWatch {
    rx: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl OutputWatch {
    /// Starts reading `child`'s piped stdout.
    pub fn new(child: &mut Child) -> Self {
        let mut pipe = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        OutputWatch { rx, seen: Vec::new() }
    }

    /// Waits (up to 10 s) until the output so far contains `needle`.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = String::from_utf8_lossy(&self.seen).into_owned();
            if text.contains(needle) {
                return text;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(_) => panic!("{needle:?} never appeared; output so far: {text:?}"),
            }
        }
    }

    /// Everything until EOF.
    pub fn rest(mut self) -> String {
        while let Ok(chunk) = self.rx.recv_timeout(Duration::from_secs(10)) {
            self.seen.extend_from_slice(&chunk);
        }
        String::from_utf8_lossy(&self.seen).into_owned()
    }
}

/// Waits up to 10 s for the child to exit; kills it and panics otherwise.
pub fn wait_exit(child: &mut Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            return status.code().expect("exited normally");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ironvirt did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines of a child's stderr (after it exited).
pub fn child_stderr(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    text
}
