//! ironvirtd end to end against the fake VMM: the whole lifecycle over the HTTP API, the
//! console WebSocket, the event stream, concurrency, supervision, re-adoption after `kill -9`,
//! persistence, errors, TCP auth and the idle footprint.

mod support;

use std::time::{Duration, Instant};

use ironvirt_api_types::{EventKind, VmCounters, VmState};
use nix::sys::signal::Signal;
use serde_json::json;
use support::{pid_alive, rss_kib, Harness};

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_over_the_api_with_console_and_events_in_order() {
    let h = Harness::new();
    let mut events = h.events().await;

    let info = h.define("web1", json!({})).await;
    assert_eq!(info.state, VmState::ShutOff);
    assert_eq!(info.memory_bytes, 64 << 20);
    let list = h.ok("GET", "/v1/vms", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    let info = h.action("web1", "start").await;
    assert_eq!(info.state, VmState::Running);
    let pid = info.pid.expect("pid while running");
    assert!(pid_alive(pid));

    // Two viewers: both get the scrollback (banner) and see each other's echoed input.
    let mut a = h.console("web1").await;
    a.expect("fake guest booting").await;
    let mut b = h.console("web1").await;
    b.expect("fake guest booting").await;
    a.send(b"hello-from-a").await;
    a.expect("hello-from-a").await;
    b.expect("hello-from-a").await;
    b.expect("heartbeat").await;

    assert_eq!(h.action("web1", "suspend").await.state, VmState::Paused);
    assert_eq!(h.action("web1", "resume").await.state, VmState::Running);
    assert_eq!(h.action("web1", "reboot").await.state, VmState::Running);
    a.expect("rebooting").await;
    let stats: VmCounters =
        serde_json::from_value(h.ok("GET", "/v1/vms/web1/stats", None).await).unwrap();
    assert_eq!(stats.reboots, 1);
    assert_eq!(stats.vcpus.len(), 1);
    assert!(stats.serial.rx_bytes >= 12, "{stats:?}");

    let info = h.action("web1", "shutdown").await;
    assert_eq!(info.state, VmState::ShuttingDown);
    let info = h.wait_state("web1", VmState::ShutOff, T).await;
    let exit = info.last_exit.expect("last exit recorded");
    assert_eq!((exit.code, exit.reason.as_str()), (Some(0), "guest powered off"));
    a.expect_closed().await;
    b.expect_closed().await;
    assert!(!pid_alive(pid));

    let pid = h.action("web1", "start").await.pid.unwrap();
    let info = h.action("web1", "destroy").await;
    assert_eq!(info.state, VmState::ShutOff);
    assert_eq!(info.last_exit.unwrap().reason, "destroyed");
    assert!(!pid_alive(pid));

    let info = h.ok("PUT", "/v1/vms/web1/autostart", Some(json!({"autostart": true}))).await;
    assert_eq!(info["autostart"], true);
    assert_eq!(h.call("DELETE", "/v1/vms/web1", None).await.status, 204);
    assert_eq!(h.call("GET", "/v1/vms/web1", None).await.status, 404);

    use EventKind::*;
    let expected = [
        (Defined, VmState::ShutOff),
        (Started, VmState::Running),
        (Suspended, VmState::Paused),
        (Resumed, VmState::Running),
        (Rebooted, VmState::Running),
        (ShutdownRequested, VmState::ShuttingDown),
        (Stopped, VmState::ShutOff),
        (Started, VmState::Running),
        (Destroyed, VmState::ShutOff),
        (Updated, VmState::ShutOff),
        (Undefined, VmState::ShutOff),
    ];
    let mut last_at = String::new();
    for (kind, state) in expected {
        let ev = events.next().await;
        assert_eq!((ev.vm.as_str(), ev.kind, ev.state), ("web1", kind, state), "{ev:?}");
        assert!(ev.at.ends_with('Z') && ev.at.len() == 24 && ev.at >= last_at, "{}", ev.at);
        last_at = ev.at;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_the_documented_codes_and_statuses() {
    let h = Harness::new();
    h.define("a", json!({})).await;

    let r = h.call("POST", "/v1/vms", Some(h.definition("b", json!({"cpus": 99})))).await;
    assert_eq!((r.status, r.body["code"].as_str()), (422, Some("invalid-definition")));
    assert!(r.body["message"].as_str().unwrap().contains("cpus"), "{}", r.body);
    let r = h
        .call("POST", "/v1/vms", Some(h.definition("b", json!({"boot": {"kernel": "/nope"}}))))
        .await;
    assert_eq!(r.status, 422);
    assert!(r.body["message"].as_str().unwrap().contains("boot.kernel"), "{}", r.body);
    let r = h.call("POST", "/v1/vms", Some(h.definition("bad name", json!({})))).await;
    assert_eq!(r.status, 422);
    assert!(r.body["message"].as_str().unwrap().contains("name"));

    let r = h.call("POST", "/v1/vms", Some(h.definition("a", json!({})))).await;
    assert_eq!((r.status, r.body["code"].as_str()), (409, Some("conflict")));

    let r = h.call_raw("POST", "/v1/vms", Some("{\"name\": ".into())).await;
    assert_eq!((r.status, r.body["code"].as_str()), (400, Some("bad-request")));
    assert!(r.body["message"].as_str().unwrap().contains("EOF"), "{}", r.body);
    let r = h.call_raw("POST", "/v1/vms", Some("{\"name\":\"x\",\"colour\":1}".into())).await;
    assert_eq!(r.status, 400);

    for (m, uri) in [
        ("GET", "/v1/vms/ghost"),
        ("POST", "/v1/vms/ghost/start"),
        ("DELETE", "/v1/vms/ghost"),
        ("GET", "/v1/vms/ghost/stats"),
        ("GET", "/v1/vms/ghost/definition"),
    ] {
        let r = h.call(m, uri, None).await;
        assert_eq!((r.status, r.body["code"].as_str()), (404, Some("not-found")), "{m} {uri}");
    }

    for verb in ["suspend", "resume", "reboot", "shutdown", "destroy"] {
        let r = h.call("POST", &format!("/v1/vms/a/{verb}"), None).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (409, Some("conflict")),
            "{verb} while shut off"
        );
    }
    assert_eq!(h.call("GET", "/v1/vms/a/stats", None).await.status, 409);
    assert_eq!(h.send("GET", "/v1/vms/a/console", None).await.status(), 409);

    h.action("a", "start").await;
    let r = h.call("POST", "/v1/vms/a/start", None).await;
    assert_eq!((r.status, r.body["code"].as_str()), (409, Some("conflict")));
    assert!(r.body["message"].as_str().unwrap().contains("running"), "{}", r.body);
    assert_eq!(h.call("POST", "/v1/vms/a/resume", None).await.status, 409);
    assert_eq!(h.call("DELETE", "/v1/vms/a", None).await.status, 409);
    let r = h.call("PUT", "/v1/vms/a/definition", Some(h.definition("other", json!({})))).await;
    assert_eq!(r.status, 422, "renaming through edit is refused");
    h.action("a", "destroy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_vms_started_concurrently_all_reach_running() {
    let h = Harness::new();
    for i in 0..8 {
        h.define(&format!("vm{i}"), json!({})).await;
    }
    let starts = (0..8).map(|i| {
        let h = &h;
        async move { h.action(&format!("vm{i}"), "start").await }
    });
    let infos = futures_util::future::join_all(starts).await;
    assert!(infos.iter().all(|i| i.state == VmState::Running));
    for i in 0..8 {
        assert_eq!(h.info(&format!("vm{i}")).await.state, VmState::Running);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_vms_start_concurrently_within_two_seconds() {
    let h = Harness::new();
    for i in 0..20 {
        h.define(&format!("vm{i}"), json!({})).await;
    }
    let t0 = Instant::now();
    let starts = (0..20).map(|i| {
        let h = &h;
        async move { h.action(&format!("vm{i}"), "start").await }
    });
    let infos = futures_util::future::join_all(starts).await;
    let took = t0.elapsed();
    eprintln!("20 fake VMs reached running in {} ms", took.as_millis());
    assert!(infos.iter().all(|i| i.state == VmState::Running));
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_daemon_kills_no_vm_and_a_restart_readopts_them_all() {
    let mut h = Harness::new();
    let mut pids = Vec::new();
    for name in ["r1", "r2", "p1", "off", "dead"] {
        h.define(name, json!({})).await;
        pids.push(h.action(name, "start").await.pid.unwrap());
    }
    h.action("p1", "suspend").await;
    let mut c = h.console("r1").await;
    c.send(b"before-kill").await;
    c.expect("before-kill").await;

    h.stop_daemon(Signal::SIGKILL);
    c.expect_closed().await;
    assert!(pids.iter().all(|p| pid_alive(*p)), "a VMM died with the daemon");
    // While the daemon is away: one guest powers off, one VMM is killed.
    let api = h.state_dir().join("run/off.api");
    ironvirt_vmm_protocol::Client::new(&api).call("PUT", "/v1/vm/power-button").unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[4] as i32), Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + T;
    while pid_alive(pids[3]) || pid_alive(pids[4]) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    h.start_daemon();

    for (name, pid, state) in [
        ("r1", pids[0], VmState::Running),
        ("r2", pids[1], VmState::Running),
        ("p1", pids[2], VmState::Paused),
    ] {
        let info = h.info(name).await;
        assert_eq!((info.state, info.pid), (state, Some(pid)), "{name}");
        let stats: VmCounters =
            serde_json::from_value(h.ok("GET", &format!("/v1/vms/{name}/stats"), None).await)
                .unwrap();
        assert!(stats.uptime_ms > 0);
    }
    let off = h.info("off").await;
    assert_eq!(off.state, VmState::ShutOff);
    assert_eq!(off.last_exit.unwrap().reason, "guest powered off");
    let dead = h.info("dead").await;
    assert_eq!(dead.state, VmState::Crashed);
    assert!(dead.last_exit.unwrap().code.is_none());

    // The console is reconnected: old output is replayed and new input echoes.
    let mut c = h.console("r1").await;
    c.expect("before-kill").await;
    c.send(b"after-restart").await;
    c.expect("after-restart").await;
    // Supervision of re-adopted VMMs: power off is noticed by polling the pid.
    h.action("r2", "shutdown").await;
    let info = h.wait_state("r2", VmState::ShutOff, T).await;
    assert_eq!(info.last_exit.unwrap().code, Some(0));
    assert_eq!(h.action("p1", "resume").await.state, VmState::Running);
    // Destroy of a re-adopted VMM (not our child) works too.
    assert_eq!(h.action("p1", "destroy").await.state, VmState::ShutOff);
    assert!(!pid_alive(pids[2]));
    assert_eq!(h.action("r1", "destroy").await.state, VmState::ShutOff);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_survive_a_restart_byte_for_byte_and_sigterm_leaves_vms_running() {
    let mut h = Harness::new();
    let disk = h.dir.path().join("disk.raw");
    std::fs::write(&disk, b"").unwrap();
    let extra = json!({
        "disks": [{"path": disk, "format": "raw"}],
        "nics": [{"tap": "tap-web"}],
        "vsock": {"cid": 42},
        "cpu_template": "portable"
    });
    h.define("keep", extra).await;
    let file = h.state_dir().join("vms/keep.toml");
    let bytes = std::fs::read(&file).unwrap();
    let def = h.ok("GET", "/v1/vms/keep/definition", None).await;
    assert!(def["nics"][0]["mac"].as_str().unwrap().starts_with("52:54:00:"), "MAC generated");
    assert!(def["uuid"].is_string(), "UUID generated");
    // The stored file is the TOML of the definition: `dump` output, byte for byte.
    let as_toml = toml::to_string(
        &serde_json::from_value::<ironvirt_api_types::VmDefinition>(def.clone()).unwrap(),
    )
    .unwrap();
    assert_eq!(as_toml.as_bytes(), &bytes[..]);
    let pid = h.action("keep", "start").await.pid.unwrap();

    h.restart_daemon(Signal::SIGTERM);
    assert!(pid_alive(pid), "SIGTERM of the daemon must leave VMs running");
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    assert_eq!(h.ok("GET", "/v1/vms/keep/definition", None).await, def);
    assert_eq!(h.info("keep").await.state, VmState::Running);
    // Edit: re-defining the dumped definition leaves the file unchanged.
    h.ok("PUT", "/v1/vms/keep/definition", Some(def)).await;
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    h.action("keep", "destroy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autostart_vms_start_with_the_daemon() {
    let mut h = Harness::new();
    h.define("auto", json!({"autostart": true})).await;
    h.define("manual", json!({})).await;
    h.restart_daemon(Signal::SIGTERM);
    h.wait_state("auto", VmState::Running, T).await;
    assert_eq!(h.info("manual").await.state, VmState::ShutOff);
    h.action("auto", "destroy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_panic_is_recorded_as_a_crash() {
    let h = Harness::new();
    h.define("p", json!({})).await;
    h.action("p", "start").await;
    let mut events = h.events().await;
    let mut c = h.console("p").await;
    c.send(b"panic\n").await;
    let info = h.wait_state("p", VmState::Crashed, T).await;
    let exit = info.last_exit.unwrap();
    assert_eq!((exit.code, exit.reason.as_str()), (Some(4), "guest panic"));
    let ev = events.next().await;
    assert_eq!((ev.kind, ev.state), (EventKind::Crashed, VmState::Crashed));
    // A crashed VM can be started again.
    assert_eq!(h.action("p", "start").await.state, VmState::Running);
    h.action("p", "destroy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_destroys_a_guest_that_ignores_the_power_button() {
    let h = Harness::new();
    h.define("stubborn", json!({"boot": {"kernel": h.kernel, "cmdline": "ignore-power-button"}}))
        .await;
    h.action("stubborn", "start").await;
    let t0 = Instant::now();
    h.ok("POST", "/v1/vms/stubborn/shutdown?timeout_s=1", None).await;
    assert_eq!(h.info("stubborn").await.state, VmState::ShuttingDown);
    let info = h.wait_state("stubborn", VmState::ShutOff, T).await;
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_eq!(info.last_exit.unwrap().reason, "destroyed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_that_never_answers_fails_the_start_and_is_killed() {
    let h = Harness::with_args(&["--start-timeout", "1"]);
    h.define("slow", json!({"boot": {"kernel": h.kernel, "cmdline": "boot-delay-ms=30000"}})).await;
    let r = h.call("POST", "/v1/vms/slow/start", None).await;
    assert_eq!((r.status, r.body["code"].as_str()), (500, Some("internal")));
    assert!(r.body["message"].as_str().unwrap().contains("no answer"), "{}", r.body);
    assert_eq!(h.info("slow").await.state, VmState::ShutOff);
    assert!(h.recorded_pids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_daemon_with_100_definitions_stays_under_20_mib() {
    let h = Harness::new();
    for i in 0..100 {
        h.define(&format!("idle{i:03}"), json!({})).await;
    }
    assert_eq!(h.ok("GET", "/v1/vms", None).await.as_array().unwrap().len(), 100);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss = rss_kib(h.daemon_pid());
    eprintln!("ironvirtd RSS with 100 definitions: {rss} KiB");
    assert!(rss < 20 * 1024, "RSS {rss} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_is_0660_and_serves_the_committed_openapi_document() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::new();
    let mode = std::fs::metadata(&h.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let resp = h.send("GET", "/v1/openapi.json", None).await;
    use http_body_util::BodyExt;
    let served = resp.into_body().collect().await.unwrap().to_bytes();
    let committed =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json")).unwrap();
    assert_eq!(&served[..], &committed[..]);
}

#[test]
fn tcp_listener_requires_the_bearer_token() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t0ken\n").unwrap();
    let addr = format!("127.0.0.1:{port}");
    let _h = Harness::with_args(&["--tcp", &addr, "--token-file", token_file.to_str().unwrap()]);
    let get = |auth: Option<&str>| {
        use std::io::{Read, Write};
        let deadline = Instant::now() + T;
        let mut s = loop {
            match std::net::TcpStream::connect(&addr) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("{e}"),
            }
        };
        let auth = auth.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(s, "GET /v1/vms HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let no = get(None);
    assert!(no.starts_with("HTTP/1.1 401"), "{no}");
    assert!(no.contains("\"unauthorized\""));
    assert!(get(Some("wrong")).starts_with("HTTP/1.1 401"));
    assert!(get(Some("t0ken")).starts_with("HTTP/1.1 200"));
}
