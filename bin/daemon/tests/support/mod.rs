//! Test harness: a real `ironvirtd` on a temporary state directory and socket, driving
//! `ironvirt-fake-vmm` (reached through a symlink named `ironvirt-vmm`, as re-adoption checks
//! the program name), plus small HTTP, SSE and WebSocket clients over the Unix socket.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use ironvirt_api_types::{Event, VmInfo, VmState};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub daemon: Option<Child>,
    pub kernel: String,
    extra_args: Vec<String>,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_args(&[])
    }

    pub fn with_args(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_ironvirt-fake-vmm"),
            dir.path().join("ironvirt-vmm"),
        )
        .unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"not really a kernel").unwrap();
        let mut h = Self {
            socket: dir.path().join("ironvirtd.sock"),
            kernel: kernel.to_string_lossy().into(),
            dir,
            daemon: None,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        h.start_daemon();
        h
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().unwrap().id()
    }

    pub fn start_daemon(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("ironvirtd.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ironvirtd"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--socket")
            .arg(&self.socket)
            .arg("--vmm")
            .arg(self.dir.path().join("ironvirt-vmm"))
            .args(&self.extra_args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(Instant::now() < deadline, "daemon did not come up: {}", self.daemon_log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ironvirtd.log")).unwrap_or_default()
    }

    /// SIGKILL (or SIGTERM) the daemon and reap it.
    pub fn stop_daemon(&mut self, sig: nix::sys::signal::Signal) {
        let mut child = self.daemon.take().expect("daemon running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        child.wait().unwrap();
    }

    pub fn restart_daemon(&mut self, sig: nix::sys::signal::Signal) {
        self.stop_daemon(sig);
        self.start_daemon();
    }

    pub fn definition(&self, name: &str, extra: Value) -> Value {
        let mut def = json!({
            "name": name, "cpus": 1, "memory": "64M",
            "boot": {"kernel": self.kernel, "cmdline": "heartbeat-ms=100"}
        });
        if let (Some(d), Some(e)) = (def.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                d.insert(k.clone(), v.clone());
            }
        }
        def
    }

    pub async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> Reply {
        let raw = body.map(|b| b.to_string());
        self.call_raw(method, uri, raw).await
    }

    pub async fn call_raw(&self, method: &str, uri: &str, body: Option<String>) -> Reply {
        let resp = self.send(method, uri, body).await;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        Reply { status, body }
    }

    pub async fn send(
        &self,
        method: &str,
        uri: &str,
        body: Option<String>,
    ) -> hyper::Response<Incoming> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        sender.send_request(req).await.unwrap()
    }

    /// `call` that must answer 2xx; returns the body.
    pub async fn ok(&self, method: &str, uri: &str, body: Option<Value>) -> Value {
        let r = self.call(method, uri, body).await;
        assert!(
            (200..300).contains(&r.status),
            "{method} {uri}: {} {}\n{}",
            r.status,
            r.body,
            self.daemon_log()
        );
        r.body
    }

    pub async fn define(&self, name: &str, extra: Value) -> VmInfo {
        let body = self.ok("POST", "/v1/vms", Some(self.definition(name, extra))).await;
        serde_json::from_value(body).unwrap()
    }

    pub async fn info(&self, name: &str) -> VmInfo {
        serde_json::from_value(self.ok("GET", &format!("/v1/vms/{name}"), None).await).unwrap()
    }

    pub async fn action(&self, name: &str, verb: &str) -> VmInfo {
        serde_json::from_value(self.ok("POST", &format!("/v1/vms/{name}/{verb}"), None).await)
            .unwrap()
    }

    pub async fn wait_state(&self, name: &str, state: VmState, within: Duration) -> VmInfo {
        let deadline = Instant::now() + within;
        loop {
            let info = self.info(name).await;
            if info.state == state {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "{name} stuck in {:?}, wanted {state:?}",
                info.state
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn events(&self) -> EventStream {
        let resp = self.send("GET", "/v1/events", None).await;
        assert_eq!(resp.status(), 200);
        EventStream { body: resp.into_body(), pending: String::new() }
    }

    pub async fn console(&self, name: &str) -> Console {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.unwrap();
        let url = format!("ws://localhost/v1/vms/{name}/console");
        let (ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        Console { ws, seen: Vec::new() }
    }

    /// Pids of every VMM the state directory records as running.
    pub fn recorded_pids(&self) -> Vec<u32> {
        let Ok(rd) = std::fs::read_dir(self.state_dir().join("run")) else { return vec![] };
        rd.flatten()
            .filter(|e| {
                e.file_name().to_string_lossy().ends_with(".json")
                    && !e.file_name().to_string_lossy().ends_with(".last.json")
            })
            .filter_map(|e| {
                let v: Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                v["pid"].as_u64().map(|p| p as u32)
            })
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        for pid in self.recorded_pids() {
            if pid_alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Whether `pid` is a live (non-zombie) process.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|s| s.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub struct EventStream {
    body: Incoming,
    pending: String,
}

impl EventStream {
    pub async fn next(&mut self) -> Event {
        loop {
            if let Some(pos) = self.pending.find('\n') {
                let line: String = self.pending.drain(..=pos).collect();
                if let Some(data) = line.trim_end().strip_prefix("data:") {
                    return serde_json::from_str(data.trim()).unwrap();
                }
                continue;
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("an event within 10 s")
                .expect("stream open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.pending.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }
}

pub struct Console {
    ws: tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>,
    pub seen: Vec<u8>,
}

impl Console {
    /// Reads until the output seen so far contains `needle`.
    pub async fn expect(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !String::from_utf8_lossy(&self.seen).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {needle:?} on the console; got {:?}",
                        String::from_utf8_lossy(&self.seen)
                    )
                })
                .expect("console open")
                .unwrap();
            match msg {
                Message::Binary(b) => self.seen.extend_from_slice(&b),
                Message::Close(_) => panic!("console closed before {needle:?}"),
                _ => {}
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.ws.send(Message::Binary(bytes.to_vec().into())).await.unwrap();
    }

    /// Waits for the server to end the session.
    pub async fn expect_closed(&mut self) {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("closed within 10 s")
            {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    }
}
