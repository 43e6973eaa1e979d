//! An in-process mock of ironvirtd for client and CLI tests: an axum server on a temporary
//! Unix socket (or on 127.0.0.1 with a bearer token) implementing the routes of
//! `docs/API.md` with canned but checked behaviour. It keeps VMs in memory with the daemon's
//! state machine, validates definitions like the daemon documents it (422), enforces unique
//! names and writable disks (409), records every request, serves a console WebSocket that
//! replays scrollback and echoes input, and an SSE event stream.
//!
//! It runs on a thread of its own with its own tokio runtime, so synchronous tests (those
//! running the `ironvirt` binary as a child process) can use it as well as async ones.
//! Depends on `ironvirt-api-types` only; never on the client it tests.
#![forbid(unsafe_code)]

mod routes;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use ironvirt_api_types::{Event, EventKind, VmDefinition, VmInfo, VmState};
use tokio::sync::oneshot;
use uuid::Uuid;

/// One request as the mock received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Path with the query string, if any.
    pub path: String,
    /// Body as text (lossy UTF-8).
    pub body: String,
    /// The `Authorization` header, if sent.
    pub authorization: Option<String>,
}

/// A VM held by the mock.
#[derive(Clone, Debug)]
pub(crate) struct MockVm {
    pub definition: VmDefinition,
    pub state: VmState,
}

impl MockVm {
    pub(crate) fn info(&self) -> VmInfo {
        VmInfo {
            name: self.definition.name.clone(),
            uuid: self.definition.uuid.unwrap_or_else(Uuid::nil),
            state: self.state,
            pid: matches!(self.state, VmState::Running | VmState::Paused | VmState::ShuttingDown)
                .then_some(4242),
            cpus: self.definition.cpus,
            memory_bytes: routes::parse_size(&self.definition.memory).unwrap_or(0),
            autostart: self.definition.autostart,
            last_exit: None,
        }
    }
}

/// State shared between the server and the test.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub vms: Mutex<BTreeMap<String, MockVm>>,
    pub requests: Mutex<Vec<Recorded>>,
    pub console_input: Mutex<Vec<u8>>,
    pub events: Mutex<Vec<Event>>,
    pub events_hold_open: Mutex<bool>,
    pub token: Option<String>,
}

/// Locks a mutex, ignoring poisoning: a panicking handler must not hide the test's real failure.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running mock daemon; stops and removes its socket when dropped.
pub struct MockDaemon {
    endpoint: String,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for MockDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockDaemon").field("endpoint", &self.endpoint).finish()
    }
}

impl MockDaemon {
    /// Starts a mock listening on a fresh Unix socket, without authentication.
    pub fn start() -> Self {
        Self::spawn(None)
    }

    /// Starts a mock on 127.0.0.1 (ephemeral port) that requires `Bearer <token>`.
    pub fn start_tcp(token: &str) -> Self {
        Self::spawn(Some(token.to_owned()))
    }

    fn spawn(token: Option<String>) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory for the mock socket");
        let socket = dir.path().join("ironvirtd.sock");
        let tcp = token.is_some();
        let shared = Arc::new(Shared { token, ..Shared::default() });
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server_shared = Arc::clone(&shared);
        let server_socket = socket.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime for the mock daemon");
            runtime.block_on(routes::serve(server_shared, tcp, server_socket, ready_tx, stop_rx));
        });
        let endpoint = ready_rx.recv().expect("mock daemon thread reports its address");
        MockDaemon { endpoint, shared, stop: Some(stop_tx), thread: Some(thread), dir }
    }

    /// The `--connect` address: `unix:/tmp/.../ironvirtd.sock` or `tcp://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A scratch directory that lives as long as the mock (for files a test writes).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path in [`Self::dir`].
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Adds a VM directly, as if defined earlier; fills in the UUID when absent.
    pub fn add_vm(&self, mut definition: VmDefinition, state: VmState) {
        definition.uuid.get_or_insert_with(Uuid::new_v4);
        let name = definition.name.clone();
        lock(&self.shared.vms).insert(name, MockVm { definition, state });
    }

    /// The state of a VM, `None` if it is not defined.
    pub fn state_of(&self, name: &str) -> Option<VmState> {
        lock(&self.shared.vms).get(name).map(|vm| vm.state)
    }

    /// The stored definition of a VM.
    pub fn definition(&self, name: &str) -> Option<VmDefinition> {
        lock(&self.shared.vms).get(name).map(|vm| vm.definition.clone())
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// Everything written to any console so far.
    pub fn console_input(&self) -> Vec<u8> {
        lock(&self.shared.console_input).clone()
    }

    /// Queues an event for the next `GET /v1/events` (state changes queue their own).
    pub fn push_event(&self, vm: &str, kind: EventKind, state: VmState) {
        routes::push_event(&self.shared, vm, kind, state, None);
    }

    /// Forgets queued events.
    pub fn clear_events(&self) {
        lock(&self.shared.events).clear();
    }

    /// Whether `GET /v1/events` stays open after the queued events (as the real daemon
    /// does) or ends the stream (the default).
    pub fn set_events_hold_open(&self, hold: bool) {
        *lock(&self.shared.events_hold_open) = hold;
    }
}

impl Drop for MockDaemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A small valid definition for tests.
pub fn sample_definition(name: &str) -> VmDefinition {
    VmDefinition {
        name: name.to_owned(),
        uuid: None,
        cpus: 2,
        memory: "1G".to_owned(),
        boot: ironvirt_api_types::BootSpec {
            kernel: "/boot/vmlinuz".to_owned(),
            initramfs: None,
            cmdline: Some("console=ttyS0".to_owned()),
        },
        disks: Vec::new(),
        nics: Vec::new(),
        vsock: None,
        cpu_template: None,
        autostart: false,
    }
}
