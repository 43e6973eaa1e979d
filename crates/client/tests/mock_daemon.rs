//! The client against the mock daemon: every endpoint, error mapping, console and events.

use std::time::Duration;

use ironvirt_api_types::{DiskSpec, EventKind, VmState};
use ironvirt_client::{Client, ClientError, Endpoint, ErrorKind};
use ironvirt_mock_daemon::{sample_definition, MockDaemon};

fn client(daemon: &MockDaemon) -> Client {
    Client::new(daemon.endpoint().parse().expect("mock endpoint parses"))
}

#[tokio::test]
async fn define_then_list_info_and_definition_agree() {
    let daemon = MockDaemon::start();
    let c = client(&daemon);
    let def = sample_definition("web1");

    let info = c.define(&def).await.unwrap();
    assert_eq!(info.name, "web1");
    assert_eq!(info.state, VmState::ShutOff);
    assert_eq!(info.memory_bytes, 1 << 30);

    let listed = c.list().await.unwrap();
    assert_eq!(listed, vec![info.clone()]);
    assert_eq!(c.info("web1").await.unwrap(), info);
    let stored = c.definition("web1").await.unwrap();
    assert_eq!(stored.uuid, Some(info.uuid));
    assert_eq!(stored.boot, def.boot);

    let post = &daemon.requests()[0];
    assert_eq!((post.method.as_str(), post.path.as_str()), ("POST", "/v1/vms"));
    let sent: ironvirt_api_types::VmDefinition = serde_json::from_str(&post.body).unwrap();
    assert_eq!(sent, def);
}

#[tokio::test]
async fn daemon_errors_keep_status_code_and_message() {
    let daemon = MockDaemon::start();
    let c = client(&daemon);
    c.define(&sample_definition("a")).await.unwrap();

    let taken = c.define(&sample_definition("a")).await.unwrap_err();
    assert_eq!(taken.kind(), ErrorKind::Conflict);
    assert_eq!(taken.status(), Some(409));
    assert_eq!(taken.api_error().unwrap().code, "conflict");
    assert_eq!(taken.to_string(), "A VM named a already exists");

    let mut bad = sample_definition("b");
    bad.memory = "lots".into();
    let invalid = c.define(&bad).await.unwrap_err();
    assert_eq!(invalid.kind(), ErrorKind::InvalidDefinition);
    assert_eq!(invalid.status(), Some(422));
    assert!(invalid.to_string().contains("lots"), "{invalid}");

    let missing = c.info("nope").await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    assert_eq!(missing.api_error().unwrap().message, "No VM named nope");

    let not_running = c.stats("a").await.unwrap_err();
    assert_eq!(not_running.kind(), ErrorKind::Conflict);
}

#[tokio::test]
async fn lifecycle_actions_accept_answers_with_and_without_body() {
    let daemon = MockDaemon::start();
    daemon.add_vm(sample_definition("vm"), VmState::ShutOff);
    let c = client(&daemon);

    let started = c.start("vm").await.unwrap().expect("start answers the VM");
    assert_eq!(started.state, VmState::Running);
    assert_eq!(started.pid, Some(4242));
    assert!(c.reboot("vm").await.unwrap().is_none(), "mock reboot answers 204");
    let paused = c.suspend("vm").await.unwrap().unwrap();
    assert_eq!(paused.state, VmState::Paused);
    let again = c.suspend("vm").await.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::Conflict);
    assert_eq!(c.resume("vm").await.unwrap().unwrap().state, VmState::Running);
    assert!(c.destroy("vm").await.unwrap().is_none());
    assert_eq!(daemon.state_of("vm"), Some(VmState::ShutOff));

    c.start("vm").await.unwrap();
    c.shutdown("vm", Some(5)).await.unwrap();
    c.start("vm").await.unwrap();
    c.shutdown("vm", None).await.unwrap();
    let paths: Vec<_> = daemon
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("shutdown"))
        .map(|r| r.path)
        .collect();
    assert_eq!(paths, ["/v1/vms/vm/shutdown?timeout_s=5", "/v1/vms/vm/shutdown"]);
}

#[tokio::test]
async fn redefine_autostart_stats_and_undefine() {
    let daemon = MockDaemon::start();
    let c = client(&daemon);
    c.define(&sample_definition("db")).await.unwrap();

    let mut def = c.definition("db").await.unwrap();
    def.cpus = 4;
    def.disks.push(DiskSpec {
        path: "/var/lib/db.qcow2".into(),
        format: Some("qcow2".into()),
        readonly: false,
    });
    assert_eq!(c.redefine("db", &def).await.unwrap().cpus, 4);
    assert_eq!(daemon.definition("db").unwrap(), def);

    let info = c.set_autostart("db", true).await.unwrap().unwrap();
    assert!(info.autostart);
    let last = daemon.requests().pop().unwrap();
    assert_eq!(last.method, "PUT");
    assert_eq!(last.path, "/v1/vms/db/autostart");
    assert_eq!(last.body, r#"{"autostart":true}"#);

    c.start("db").await.unwrap();
    let stats = c.stats("db").await.unwrap();
    assert_eq!(stats.vcpus.len(), 4);
    assert_eq!(stats.disks[0].name, "vda");

    assert_eq!(c.undefine("db").await.unwrap_err().kind(), ErrorKind::Conflict);
    c.destroy("db").await.unwrap();
    c.undefine("db").await.unwrap();
    assert_eq!(c.info("db").await.unwrap_err().kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn console_replays_scrollback_and_carries_bytes_both_ways() {
    let daemon = MockDaemon::start();
    daemon.add_vm(sample_definition("con"), VmState::Running);
    let (mut writer, mut reader) = client(&daemon).console("con").await.unwrap().split();

    let first = reader.read().await.unwrap().unwrap();
    assert!(first.starts_with(b"[scrollback] con booted"), "{first:?}");
    writer.write(b"root\n").await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), reader.read())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&echo[..], b"root\n");
    assert_eq!(daemon.console_input(), b"root\n");

    writer.write(b"poweroff\n").await.unwrap();
    let mut rest = Vec::new();
    while let Some(chunk) = reader.read().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert!(String::from_utf8_lossy(&rest).contains("Power down"));
    assert_eq!(daemon.state_of("con"), Some(VmState::ShutOff));
}

#[tokio::test]
async fn console_refusals_become_api_errors() {
    let daemon = MockDaemon::start();
    daemon.add_vm(sample_definition("off"), VmState::ShutOff);
    let c = client(&daemon);
    let missing = c.console("ghost").await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound, "{missing:?}");
    assert_eq!(missing.to_string(), "No VM named ghost");
    let off = c.console("off").await.unwrap_err();
    assert_eq!(off.kind(), ErrorKind::Conflict, "{off:?}");
}

#[tokio::test]
async fn events_stream_decodes_every_event_then_ends() {
    let daemon = MockDaemon::start();
    daemon.push_event("a", EventKind::Started, VmState::Running);
    daemon.push_event("b", EventKind::Crashed, VmState::Crashed);
    let mut events = client(&daemon).events().await.unwrap();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!((first.vm.as_str(), first.kind), ("a", EventKind::Started));
    let second = events.next().await.unwrap().unwrap();
    assert_eq!((second.kind, second.state), (EventKind::Crashed, VmState::Crashed));
    assert!(events.next().await.unwrap().is_none());
}

#[tokio::test]
async fn tcp_requests_carry_the_bearer_token() {
    let daemon = MockDaemon::start_tcp("t0ken");
    let endpoint: Endpoint = daemon.endpoint().parse().unwrap();
    assert!(matches!(endpoint, Endpoint::Tcp(_)));

    let anonymous = Client::new(endpoint.clone()).list().await.unwrap_err();
    assert_eq!(anonymous.kind(), ErrorKind::Unauthorized);
    assert_eq!(anonymous.status(), Some(401));

    let c = Client::new(endpoint).with_token("t0ken").unwrap();
    assert!(c.list().await.unwrap().is_empty());
    assert_eq!(daemon.requests().last().unwrap().authorization.as_deref(), Some("Bearer t0ken"));

    daemon.add_vm(sample_definition("tv"), VmState::Running);
    let (_w, mut r) = c.console("tv").await.unwrap().split();
    assert!(r.read().await.unwrap().is_some());
}

#[tokio::test]
async fn missing_socket_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = Endpoint::Unix(dir.path().join("absent.sock"));
    let err = Client::new(endpoint).list().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable);
    assert!(matches!(err, ClientError::Connect { .. }));
    assert!(err.to_string().contains("absent.sock"), "{err}");
}
