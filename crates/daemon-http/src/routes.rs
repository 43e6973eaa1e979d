//! The `/v1` routes, their OpenAPI annotations and the generated document.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use ironvirt_api_types::{
    ApiError, AutostartRequest, BootSpec, DiskSpec, Event, EventKind, ExitInfo, IoCounters,
    NicSpec, SerialCounters, VcpuCounters, VmCounters, VmDefinition, VmInfo, VmState, VsockSpec,
};
use ironvirt_daemon_core::Daemon;
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi};

use crate::error::ApiFailure;
use crate::streams;

type Shared = State<Arc<Daemon>>;
type ApiResult<T> = Result<T, ApiFailure>;

/// Default `timeout_s` of shutdown.
const DEFAULT_SHUTDOWN_TIMEOUT_S: u64 = 60;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ironvirtd",
        description = "Management API of ironvirt: VMs by name, lifecycle, console, events."
    ),
    paths(
        get_openapi,
        list_vms,
        define_vm,
        get_vm,
        undefine_vm,
        get_definition,
        put_definition,
        start_vm,
        shutdown_vm,
        destroy_vm,
        suspend_vm,
        resume_vm,
        reboot_vm,
        set_autostart,
        get_stats,
        console,
        events
    ),
    components(schemas(
        VmDefinition,
        BootSpec,
        DiskSpec,
        NicSpec,
        VsockSpec,
        VmInfo,
        VmState,
        ExitInfo,
        VmCounters,
        VcpuCounters,
        SerialCounters,
        IoCounters,
        Event,
        EventKind,
        ApiError,
        AutostartRequest
    ))
)]
struct ApiDoc;

/// The OpenAPI document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // Stable across releases so the committed document only changes with the API.
    doc.info.version = "v1".into();
    doc.info.license = None;
    doc.info.contact = None;
    doc
}

/// The OpenAPI document as pretty JSON with a trailing newline (the committed
/// `docs/openapi.json`).
pub fn openapi_json() -> String {
    let mut s = openapi().to_pretty_json().expect("the OpenAPI document always serialises");
    s.push('\n');
    s
}

/// The `/v1` router over `daemon`.
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(get_openapi))
        .route("/v1/vms", get(list_vms).post(define_vm))
        .route("/v1/vms/{name}", get(get_vm).delete(undefine_vm))
        .route("/v1/vms/{name}/definition", get(get_definition).put(put_definition))
        .route("/v1/vms/{name}/start", post(start_vm))
        .route("/v1/vms/{name}/shutdown", post(shutdown_vm))
        .route("/v1/vms/{name}/destroy", post(destroy_vm))
        .route("/v1/vms/{name}/suspend", post(suspend_vm))
        .route("/v1/vms/{name}/resume", post(resume_vm))
        .route("/v1/vms/{name}/reboot", post(reboot_vm))
        .route("/v1/vms/{name}/autostart", put(set_autostart))
        .route("/v1/vms/{name}/stats", get(get_stats))
        .route("/v1/vms/{name}/console", get(console))
        .route("/v1/events", get(events))
        .fallback(|| async {
            ApiFailure::new(StatusCode::NOT_FOUND, "not-found", "No such endpoint")
        })
        .with_state(daemon)
}

/// The OpenAPI 3 document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI document", content_type = "application/json")))]
async fn get_openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

/// List every VM.
#[utoipa::path(get, path = "/v1/vms", tag = "vms", responses((status = 200, body = [VmInfo])))]
async fn list_vms(State(d): Shared) -> Json<Vec<VmInfo>> {
    Json(d.list())
}

/// Define a VM.
#[utoipa::path(post, path = "/v1/vms", tag = "vms", request_body = VmDefinition, responses(
    (status = 201, body = VmInfo, description = "Defined"),
    (status = 400, body = ApiError, description = "Body is not a definition"),
    (status = 409, body = ApiError, description = "Name, UUID, disk, MAC or vsock CID taken"),
    (status = 422, body = ApiError, description = "Invalid field"),
))]
async fn define_vm(
    State(d): Shared,
    body: Result<Json<VmDefinition>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<VmInfo>)> {
    let Json(def) = body?;
    Ok((StatusCode::CREATED, Json(d.define(def).await?)))
}

/// One VM.
#[utoipa::path(get, path = "/v1/vms/{name}", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = VmInfo), (status = 404, body = ApiError)))]
async fn get_vm(State(d): Shared, Path(name): Path<String>) -> ApiResult<Json<VmInfo>> {
    Ok(Json(d.info(&name)?))
}

/// Undefine a shut-off or crashed VM.
#[utoipa::path(delete, path = "/v1/vms/{name}", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 204, description = "Removed"), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn undefine_vm(State(d): Shared, Path(name): Path<String>) -> ApiResult<StatusCode> {
    d.undefine(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The stored definition.
#[utoipa::path(get, path = "/v1/vms/{name}/definition", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = VmDefinition), (status = 404, body = ApiError)))]
async fn get_definition(
    State(d): Shared,
    Path(name): Path<String>,
) -> ApiResult<Json<VmDefinition>> {
    Ok(Json(d.definition(&name)?))
}

/// Replace the definition; applies at the next start.
#[utoipa::path(put, path = "/v1/vms/{name}/definition", tag = "vms", request_body = VmDefinition,
    params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = VmInfo), (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError), (status = 422, body = ApiError)))]
async fn put_definition(
    State(d): Shared,
    Path(name): Path<String>,
    body: Result<Json<VmDefinition>, JsonRejection>,
) -> ApiResult<Json<VmInfo>> {
    let Json(def) = body?;
    Ok(Json(d.update(&name, def).await?))
}

macro_rules! lifecycle_handler {
    ($fn:ident, $method:ident, $path:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "lifecycle", params(("name" = String, Path, description = "VM name")),
            responses((status = 200, body = VmInfo), (status = 404, body = ApiError), (status = 409, body = ApiError),
                (status = 500, body = ApiError)))]
        async fn $fn(State(d): Shared, Path(name): Path<String>) -> ApiResult<Json<VmInfo>> {
            Ok(Json(d.$method(&name).await?))
        }
    };
}

lifecycle_handler!(
    start_vm,
    start,
    "/v1/vms/{name}/start",
    "Start the VM; answers once its VMM runs."
);
lifecycle_handler!(
    destroy_vm,
    destroy,
    "/v1/vms/{name}/destroy",
    "Kill the VMM: SIGTERM, SIGKILL after 2 s."
);
lifecycle_handler!(suspend_vm, suspend, "/v1/vms/{name}/suspend", "Pause all vCPUs.");
lifecycle_handler!(resume_vm, resume, "/v1/vms/{name}/resume", "Resume paused vCPUs.");
lifecycle_handler!(reboot_vm, reboot, "/v1/vms/{name}/reboot", "Hard-reset the guest.");

/// Query of `shutdown`.
#[derive(Debug, Deserialize, IntoParams)]
struct ShutdownQuery {
    /// Seconds to wait for the guest to power off before destroying it (default 60).
    timeout_s: Option<u64>,
}

/// Press the power button; destroy the VM if it has not powered off after `timeout_s`.
/// Answers at once with state `shutting-down`.
#[utoipa::path(post, path = "/v1/vms/{name}/shutdown", tag = "lifecycle",
    params(("name" = String, Path, description = "VM name"), ShutdownQuery),
    responses((status = 200, body = VmInfo), (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
async fn shutdown_vm(
    State(d): Shared,
    Path(name): Path<String>,
    query: Result<Query<ShutdownQuery>, QueryRejection>,
) -> ApiResult<Json<VmInfo>> {
    let Query(q) = query
        .map_err(|e| ApiFailure::new(StatusCode::BAD_REQUEST, "bad-request", e.body_text()))?;
    let timeout = Duration::from_secs(q.timeout_s.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_S));
    Ok(Json(d.shutdown(&name, timeout).await?))
}

/// Set the autostart flag.
#[utoipa::path(put, path = "/v1/vms/{name}/autostart", tag = "vms", request_body = AutostartRequest,
    params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = VmInfo), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn set_autostart(
    State(d): Shared,
    Path(name): Path<String>,
    body: Result<Json<AutostartRequest>, JsonRejection>,
) -> ApiResult<Json<VmInfo>> {
    let Json(req) = body?;
    Ok(Json(d.set_autostart(&name, req.autostart).await?))
}

/// Counters of a running VM.
#[utoipa::path(get, path = "/v1/vms/{name}/stats", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = VmCounters), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn get_stats(State(d): Shared, Path(name): Path<String>) -> ApiResult<Json<VmCounters>> {
    Ok(Json(d.stats(&name).await?))
}

/// Serial console as a WebSocket: binary frames both ways (text frames from the client are
/// accepted as input too); recent output is replayed first.
#[utoipa::path(get, path = "/v1/vms/{name}/console", tag = "console", params(("name" = String, Path, description = "VM name")),
    responses((status = 101, description = "WebSocket upgrade"), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn console(
    State(d): Shared,
    Path(name): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    // VM and state first: a plain GET on a stopped VM answers 409, not "not a WebSocket".
    d.check_console(&name)?;
    let ws =
        ws.map_err(|e| ApiFailure::new(StatusCode::BAD_REQUEST, "bad-request", e.body_text()))?;
    let attachment = d.attach_console(&name)?;
    Ok(ws.on_upgrade(move |socket| streams::console_session(name, socket, attachment)))
}

/// Lifecycle events as Server-Sent Events: one `Event` JSON per `data:` line.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    responses((status = 200, description = "text/event-stream of Event", content_type = "text/event-stream", body = Event)))]
async fn events(State(d): Shared) -> Response {
    streams::sse(d.subscribe()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/openapi.json` must be what the code generates.
    #[test]
    fn committed_openapi_document_is_up_to_date() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == openapi_json(),
            "docs/openapi.json is stale or missing; regenerate it with\n  \
             cargo run -p ironvirt-daemon-bin -- --print-openapi > docs/openapi.json"
        );
    }

    #[test]
    fn document_lists_every_route() {
        let doc = openapi();
        for p in ["/v1/vms", "/v1/vms/{name}/console", "/v1/events", "/v1/vms/{name}/shutdown"] {
            assert!(doc.paths.paths.contains_key(p), "{p}");
        }
    }
}
