//! The mock's routes: the `/v1` API of docs/API.md over in-memory state.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use ironvirt_api_types::{
    ApiError, AutostartRequest, Event, EventKind, IoCounters, SerialCounters, VcpuCounters,
    VmCounters, VmDefinition, VmState,
};
use serde::Deserialize;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::{lock, MockVm, Recorded, Shared};

type AppState = Arc<Shared>;

/// Binds, reports the endpoint through `ready`, and serves until `stop` fires.
pub(crate) async fn serve(
    shared: AppState,
    tcp: bool,
    socket: PathBuf,
    ready: std::sync::mpsc::Sender<String>,
    stop: oneshot::Receiver<()>,
) {
    let app = router(shared);
    if tcp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1 for the mock daemon");
        let addr = listener.local_addr().expect("bound address");
        let _ = ready.send(format!("tcp://{addr}"));
        tokio::select! {
            r = axum::serve(listener, app) => r.expect("mock daemon server"),
            _ = stop => {}
        }
    } else {
        let listener =
            tokio::net::UnixListener::bind(&socket).expect("bind the mock daemon socket");
        let _ = ready.send(format!("unix:{}", socket.display()));
        tokio::select! {
            r = axum::serve(listener, app) => r.expect("mock daemon server"),
            _ = stop => {}
        }
    }
}

fn router(shared: AppState) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/vms", get(list).post(define))
        .route("/v1/vms/{name}", get(info).delete(undefine))
        .route("/v1/vms/{name}/definition", get(definition).put(redefine))
        .route("/v1/vms/{name}/{action}", post(action))
        .route("/v1/vms/{name}/autostart", put(autostart))
        .route("/v1/vms/{name}/stats", get(stats))
        .route("/v1/vms/{name}/console", get(console))
        .route("/v1/events", get(events))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not-found", "No such route") })
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), record_and_authorize))
        .with_state(shared)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(ApiError { code: code.to_owned(), message: message.into() })).into_response()
}

fn not_found(name: &str) -> Response {
    error(StatusCode::NOT_FOUND, "not-found", format!("No VM named {name}"))
}

fn conflict(message: impl Into<String>) -> Response {
    error(StatusCode::CONFLICT, "conflict", message)
}

fn invalid(message: impl Into<String>) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, "invalid-definition", message)
}

/// Records the request (with its body) and enforces the bearer token on TCP.
async fn record_and_authorize(
    State(shared): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let authorization =
        parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    lock(&shared.requests).push(Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default(),
        body: String::from_utf8_lossy(&bytes).into_owned(),
        authorization: authorization.clone(),
    });
    if let Some(token) = &shared.token {
        if authorization.as_deref() != Some(format!("Bearer {token}").as_str()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Missing or wrong bearer token",
            );
        }
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

async fn openapi() -> Response {
    Json(serde_json::json!({
        "openapi": "3.1.0",
        "info": { "title": "ironvirtd (mock)", "version": "0" },
        "paths": {}
    }))
    .into_response()
}

async fn list(State(shared): State<AppState>) -> Response {
    let infos: Vec<_> = lock(&shared.vms).values().map(MockVm::info).collect();
    Json(infos).into_response()
}

async fn define(State(shared): State<AppState>, body: Bytes) -> Response {
    let mut definition: VmDefinition = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad-request", e.to_string()),
    };
    if let Err(message) = validate(&definition) {
        return invalid(message);
    }
    let mut vms = lock(&shared.vms);
    if vms.contains_key(&definition.name) {
        return conflict(format!("A VM named {} already exists", definition.name));
    }
    if let Err(message) = check_disks(&vms, &definition) {
        return conflict(message);
    }
    definition.uuid.get_or_insert_with(Uuid::new_v4);
    let vm = MockVm { definition, state: VmState::ShutOff };
    let info = vm.info();
    vms.insert(info.name.clone(), vm);
    drop(vms);
    push_event(&shared, &info.name, EventKind::Defined, VmState::ShutOff, None);
    (StatusCode::CREATED, Json(info)).into_response()
}

async fn info(State(shared): State<AppState>, Path(name): Path<String>) -> Response {
    match lock(&shared.vms).get(&name) {
        Some(vm) => Json(vm.info()).into_response(),
        None => not_found(&name),
    }
}

async fn definition(State(shared): State<AppState>, Path(name): Path<String>) -> Response {
    match lock(&shared.vms).get(&name) {
        Some(vm) => Json(vm.definition.clone()).into_response(),
        None => not_found(&name),
    }
}

async fn redefine(
    State(shared): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let mut vms = lock(&shared.vms);
    let Some(old) = vms.get(&name).cloned() else {
        return not_found(&name);
    };
    let mut definition: VmDefinition = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad-request", e.to_string()),
    };
    if let Err(message) = validate(&definition) {
        return invalid(message);
    }
    if definition.name != name {
        return invalid(format!(
            "The definition names {} but replaces {name}; renaming is not supported",
            definition.name
        ));
    }
    if definition.uuid.is_some() && definition.uuid != old.definition.uuid {
        return invalid("The UUID of a VM cannot change");
    }
    definition.uuid = old.definition.uuid;
    let others =
        vms.iter().filter(|(n, _)| **n != name).map(|(n, vm)| (n.clone(), vm.clone())).collect();
    if let Err(message) = check_disks(&others, &definition) {
        return conflict(message);
    }
    let vm = MockVm { definition, state: old.state };
    let info = vm.info();
    vms.insert(name.clone(), vm);
    drop(vms);
    push_event(&shared, &name, EventKind::Updated, info.state, None);
    Json(info).into_response()
}

async fn undefine(State(shared): State<AppState>, Path(name): Path<String>) -> Response {
    let mut vms = lock(&shared.vms);
    let Some(vm) = vms.get(&name) else {
        return not_found(&name);
    };
    if !matches!(vm.state, VmState::ShutOff | VmState::Crashed) {
        return conflict(format!("VM {name} is {:?}; destroy it first", vm.state));
    }
    vms.remove(&name);
    drop(vms);
    push_event(&shared, &name, EventKind::Undefined, VmState::ShutOff, None);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct ShutdownQuery {
    timeout_s: Option<u64>,
}

/// Lifecycle transitions. `destroy` and `reboot` answer 204 without a body, the others the
/// VM, so clients must handle both shapes.
async fn action(
    State(shared): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    Query(query): Query<ShutdownQuery>,
) -> Response {
    use VmState::*;
    let (allowed, after, kind, body): (&[VmState], VmState, EventKind, bool) = match action.as_str()
    {
        "start" => (&[ShutOff, Crashed], Running, EventKind::Started, true),
        "shutdown" => (&[Running, Paused], ShutOff, EventKind::Stopped, true),
        "destroy" => {
            (&[Starting, Running, Paused, ShuttingDown], ShutOff, EventKind::Destroyed, false)
        }
        "suspend" => (&[Running], Paused, EventKind::Suspended, true),
        "resume" => (&[Paused], Running, EventKind::Resumed, true),
        "reboot" => (&[Running], Running, EventKind::Rebooted, false),
        _ => return error(StatusCode::NOT_FOUND, "not-found", "No such route"),
    };
    if action == "shutdown" && query.timeout_s == Some(0) {
        return error(StatusCode::BAD_REQUEST, "bad-request", "timeout_s must be positive");
    }
    let mut vms = lock(&shared.vms);
    let Some(vm) = vms.get_mut(&name) else {
        return not_found(&name);
    };
    if !allowed.contains(&vm.state) {
        return conflict(format!("Cannot {action} VM {name}: it is {}", state_word(vm.state)));
    }
    vm.state = after;
    let info = vm.info();
    drop(vms);
    push_event(&shared, &name, kind, after, None);
    if body {
        Json(info).into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

async fn autostart(
    State(shared): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let body: AutostartRequest = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad-request", e.to_string()),
    };
    let mut vms = lock(&shared.vms);
    let Some(vm) = vms.get_mut(&name) else {
        return not_found(&name);
    };
    vm.definition.autostart = body.autostart;
    Json(vm.info()).into_response()
}

async fn stats(State(shared): State<AppState>, Path(name): Path<String>) -> Response {
    let vms = lock(&shared.vms);
    let Some(vm) = vms.get(&name) else {
        return not_found(&name);
    };
    if !matches!(vm.state, VmState::Running | VmState::Paused) {
        return conflict(format!("VM {name} is not running"));
    }
    let counters = VmCounters {
        vcpus: (0..vm.definition.cpus)
            .map(|id| VcpuCounters { id, exits: 1000 + u64::from(id), cpu_time_ns: 2_500_000_000 })
            .collect(),
        serial: SerialCounters { tx_bytes: 4096, rx_bytes: 12 },
        disks: (0..vm.definition.disks.len())
            .map(|i| IoCounters {
                name: format!("vd{}", char::from(b'a' + (i % 26) as u8)),
                read_ops: 10,
                read_bytes: 40960,
                write_ops: 2,
                write_bytes: 8192,
            })
            .collect(),
        nics: Vec::new(),
        reboots: 1,
        uptime_ms: 61_000,
    };
    Json(counters).into_response()
}

async fn console(
    State(shared): State<AppState>,
    Path(name): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    {
        let vms = lock(&shared.vms);
        let Some(vm) = vms.get(&name) else {
            return not_found(&name);
        };
        if !matches!(vm.state, VmState::Running | VmState::Paused) {
            return conflict(format!("VM {name} is not running"));
        }
    }
    ws.on_upgrade(move |socket| console_session(shared, name, socket))
}

/// Replays scrollback, then echoes every input frame; input containing `poweroff` makes the
/// "guest" power off: the VM goes to shut-off and the socket closes.
async fn console_session(shared: AppState, name: String, mut socket: WebSocket) {
    let scrollback = format!("[scrollback] {name} booted\r\nlogin: ");
    if socket.send(Message::Binary(Bytes::from(scrollback))).await.is_err() {
        return;
    }
    while let Some(Ok(message)) = socket.recv().await {
        let data = match message {
            Message::Binary(b) => b,
            Message::Text(t) => Bytes::from(t.as_str().to_owned()),
            Message::Close(_) => return,
            _ => continue,
        };
        lock(&shared.console_input).extend_from_slice(&data);
        if socket.send(Message::Binary(data)).await.is_err() {
            return;
        }
        let all = lock(&shared.console_input).clone();
        if all.windows(8).any(|w| w == b"poweroff") {
            if let Some(vm) = lock(&shared.vms).get_mut(&name) {
                vm.state = VmState::ShutOff;
            }
            let _ = socket
                .send(Message::Binary(Bytes::from_static(b"\r\nreboot: Power down\r\n")))
                .await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    }
}

async fn events(State(shared): State<AppState>) -> Response {
    let queued: Vec<Bytes> = std::iter::once(Bytes::from_static(b": mock ironvirtd\n\n"))
        .chain(lock(&shared.events).iter().map(|event| {
            let json = serde_json::to_string(event).expect("events serialise");
            Bytes::from(format!("event: vm\ndata: {json}\n\n"))
        }))
        .collect();
    let hold = *lock(&shared.events_hold_open);
    let head = stream::iter(queued).map(Ok::<_, std::io::Error>);
    let body = if hold {
        Body::from_stream(head.chain(stream::pending()))
    } else {
        Body::from_stream(head)
    };
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

pub(crate) fn push_event(
    shared: &Shared,
    vm: &str,
    kind: EventKind,
    state: VmState,
    detail: Option<String>,
) {
    let mut events = lock(&shared.events);
    let at = format!("2026-01-01T00:00:{:02}Z", events.len() % 60);
    events.push(Event { at, vm: vm.to_owned(), kind, state, detail });
}

fn state_word(state: VmState) -> &'static str {
    match state {
        VmState::ShutOff => "shut off",
        VmState::Starting => "starting",
        VmState::Running => "running",
        VmState::Paused => "paused",
        VmState::ShuttingDown => "shutting down",
        VmState::Crashed => "crashed",
    }
}

/// "512M", "2G", "1048576": bytes; binary units.
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    digits.parse::<u64>().ok().filter(|n| *n > 0)?.checked_mul(1 << shift)
}

/// The checks docs/API.md and the api-types field docs promise, short of touching files.
fn validate(d: &VmDefinition) -> Result<(), String> {
    let name_ok = !d.name.is_empty()
        && d.name.len() <= 64
        && !d.name.starts_with(['.', '-'])
        && d.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !name_ok {
        return Err(format!("Invalid VM name {:?}", d.name));
    }
    if !(1..=64).contains(&d.cpus) {
        return Err(format!("cpus must be 1-64, not {}", d.cpus));
    }
    if parse_size(&d.memory).is_none() {
        return Err(format!("Invalid memory size {:?}", d.memory));
    }
    if d.boot.kernel.is_empty() {
        return Err("boot.kernel must not be empty".to_owned());
    }
    for disk in &d.disks {
        if let Some(format) = &disk.format {
            if format != "raw" && format != "qcow2" {
                return Err(format!("Unknown disk format {format:?}"));
            }
        }
    }
    if let Some(vsock) = &d.vsock {
        if vsock.cid < 3 {
            return Err(format!("vsock cid must be >= 3, not {}", vsock.cid));
        }
    }
    if let Some(t) = &d.cpu_template {
        if t != "host" && t != "portable" {
            return Err(format!("Unknown CPU template {t:?}"));
        }
    }
    Ok(())
}

fn check_disks(
    vms: &std::collections::BTreeMap<String, MockVm>,
    d: &VmDefinition,
) -> Result<(), String> {
    let taken: HashSet<&str> = vms
        .values()
        .flat_map(|vm| vm.definition.disks.iter())
        .filter(|disk| !disk.readonly)
        .map(|disk| disk.path.as_str())
        .collect();
    match d.disks.iter().find(|disk| !disk.readonly && taken.contains(disk.path.as_str())) {
        Some(disk) => Err(format!("Disk {} is already used by another VM", disk.path)),
        None => Ok(()),
    }
}
