//! The per-VM control API and the socket console, driven against the kit's idle guest (a
//! guest that keeps running, prints a heartbeat each second, echoes serial input and powers
//! off when the ACPI power button is pressed).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ironvirt_api_types::{VmCounters, VmmRunState, VmmStatus};
use ironvirt_test_support::{kit_guest, require_kvm, VmmRun};
use ironvirt_vmm_protocol::Client;

const VMM: &str = env!("CARGO_BIN_EXE_ironvirt-vmm");

struct Idle {
    run: VmmRun,
    api: PathBuf,
    dir: PathBuf,
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ironvirt-api-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn start_idle(tag: &str, extra: &[&str]) -> Idle {
    require_kvm();
    let dir = temp_dir(tag);
    let api = dir.join("api.sock");
    let kernel = kit_guest("idle.elf");
    let exit = dir.join("exit.json");
    let mut args = vec![
        "--kernel",
        kernel.to_str().unwrap(),
        "--cpus",
        "2",
        "--memory",
        "128M",
        "--cmdline",
        "heartbeat_ms=200",
        "--api-socket",
        api.to_str().unwrap(),
        "--exit-file",
        exit.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut run = VmmRun::spawn(Path::new(VMM), &args);
    if !extra.iter().any(|a| a.starts_with("socket=")) {
        assert!(
            run.wait_for("idle: ready", 1, Duration::from_secs(30)),
            "idle guest did not start: {}",
            run.output()
        );
    }
    Idle { run, api, dir }
}

fn client(idle: &Idle) -> Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !idle.api.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    Client::new(&idle.api)
}

fn status(c: &Client) -> VmmStatus {
    serde_json::from_str(&c.call("GET", "/v1/vm").unwrap()).unwrap()
}

fn heartbeats(text: &str) -> usize {
    text.matches("heartbeat: ").count()
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it() {
    let mut idle = start_idle("pause", &[]);
    let c = client(&idle);
    assert!(idle.run.wait_for("heartbeat: 2", 1, Duration::from_secs(10)));
    assert_eq!(status(&c).state, VmmRunState::Running);
    c.call("PUT", "/v1/vm/pause").unwrap();
    assert_eq!(status(&c).state, VmmRunState::Paused);
    let err = c.call("PUT", "/v1/vm/pause").unwrap_err().to_string();
    assert!(err.contains("409") && err.contains("already paused"), "{err}");
    std::thread::sleep(Duration::from_millis(100));
    let before = heartbeats(&idle.run.output());
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(heartbeats(&idle.run.output()), before, "no heartbeat while paused");
    c.call("PUT", "/v1/vm/resume").unwrap();
    assert!(
        idle.run.wait_for("heartbeat: ", before + 2, Duration::from_secs(10)),
        "heartbeats resume"
    );
    let err = c.call("PUT", "/v1/vm/resume").unwrap_err().to_string();
    assert!(err.contains("409"), "{err}");
    c.call("PUT", "/v1/vm/power-button").unwrap();
    let out = idle.run.wait(Duration::from_secs(20));
    assert_eq!(out.code, Some(0), "{out}");
}

#[test]
fn power_button_powers_the_guest_off_the_acpi_way_and_writes_the_exit_file() {
    let idle = start_idle("button", &[]);
    let c = client(&idle);
    let pong = c.call("GET", "/v1/ping").unwrap();
    assert!(pong.contains("\"pid\":"), "{pong}");
    c.call("PUT", "/v1/vm/power-button").unwrap();
    let out = idle.run.wait(Duration::from_secs(20));
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("power-button: pressed"), "{out}");
    let exit = std::fs::read_to_string(idle.dir.join("exit.json")).unwrap();
    assert_eq!(exit, r#"{"code":0,"reason":"guest powered off"}"#);
    assert!(!idle.api.exists(), "the control socket is removed on exit");
}

#[test]
fn reset_reboots_and_counters_count() {
    let mut idle = start_idle("reset", &[]);
    let c = client(&idle);
    let counters: VmCounters =
        serde_json::from_str(&c.call("GET", "/v1/counters").unwrap()).unwrap();
    assert_eq!(counters.vcpus.len(), 2);
    assert!(counters.vcpus[0].exits > 0 && counters.vcpus[0].cpu_time_ns > 0, "{counters:?}");
    assert!(counters.serial.tx_bytes > 20, "{counters:?}");
    assert_eq!(counters.reboots, 0);
    c.call("PUT", "/v1/vm/reset").unwrap();
    assert!(idle.run.wait_for("idle: ready", 2, Duration::from_secs(30)), "{}", idle.run.output());
    let counters: VmCounters =
        serde_json::from_str(&c.call("GET", "/v1/counters").unwrap()).unwrap();
    assert_eq!(counters.reboots, 1);
    c.call("PUT", "/v1/vm/power-button").unwrap();
    assert_eq!(idle.run.wait(Duration::from_secs(20)).code, Some(0));
}

#[test]
fn counters_report_each_disks_reads_and_writes() {
    require_kvm();
    let dir = temp_dir("disk-counters");
    let (api, image) = (dir.join("api.sock"), dir.join("disk.raw"));
    std::fs::File::create(&image).unwrap().set_len(1 << 20).unwrap();
    let kernel = kit_guest("vblk.elf");
    let disk = format!("path={}", image.display());
    let args = [
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "write_sector=1,2,3 hold=1",
        "--disk",
        &disk,
        "--api-socket",
        api.to_str().unwrap(),
    ];
    let mut run = VmmRun::spawn(Path::new(VMM), &args);
    assert!(run.wait_for("vblk holding", 1, Duration::from_secs(30)), "{}", run.output());
    let c = Client::new(&api);
    let counters: VmCounters =
        serde_json::from_str(&c.call("GET", "/v1/counters").unwrap()).unwrap();
    run.signal(15);
    let out = run.wait(Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(counters.disks.len(), 1, "{counters:?}");
    let vda = &counters.disks[0];
    assert_eq!(vda.name, "vda");
    // Three one-sector writes, each read back (plus whatever the guest reads first).
    assert_eq!((vda.write_ops, vda.write_bytes), (3, 3 * 512), "{counters:?}\n{out}");
    assert!(vda.read_ops >= 3 && vda.read_bytes >= 3 * 512, "{counters:?}\n{out}");
    assert!(counters.nics.is_empty());
}

#[test]
fn bad_requests_get_json_errors_and_the_vmm_keeps_serving() {
    let idle = start_idle("bad", &[]);
    let c = client(&idle);
    let err = c.call("DELETE", "/v1/vm").unwrap_err().to_string();
    assert!(err.contains("404") && err.contains("not-found"), "{err}");
    for garbage in [
        &b"\x00\xff\xfe garbage\r\n\r\n"[..],
        &[b'A'; 20000][..],
        b"GET /v1/ping HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n",
    ] {
        let mut s = UnixStream::connect(&idle.api).unwrap();
        let _ = s.write_all(garbage);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    assert_eq!(status(&c).state, VmmRunState::Running);
    c.call("PUT", "/v1/vm/power-button").unwrap();
    assert_eq!(idle.run.wait(Duration::from_secs(20)).code, Some(0));
}

fn read_until(s: &mut UnixStream, needle: &str, timeout: Duration) -> String {
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !String::from_utf8_lossy(&got).contains(needle) {
        if let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn socket_console_keeps_a_backlog_and_serves_several_clients_both_ways() {
    let dir = temp_dir("console");
    let console = dir.join("console.sock");
    let arg = format!("socket={}", console.display());
    let idle = start_idle("console-vm", &["--serial", &arg]);
    let c = client(&idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !console.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Let the guest print before anyone connects: the first client gets the backlog.
    std::thread::sleep(Duration::from_millis(800));
    let mut first = UnixStream::connect(&console).unwrap();
    let backlog = read_until(&mut first, "heartbeat: 2", Duration::from_secs(10));
    assert!(backlog.contains("IRONVIRT-KIT idle start"), "backlog replayed: {backlog}");
    let mut second = UnixStream::connect(&console).unwrap();
    let later = read_until(&mut second, "heartbeat: ", Duration::from_secs(10));
    assert!(later.contains("heartbeat: "), "second client gets live output: {later}");
    second.write_all(b"Z").unwrap();
    let echoed = read_until(&mut first, "input: 0x5a", Duration::from_secs(10));
    assert!(
        echoed.contains("input: 0x5a"),
        "input from one client reaches the guest, output reaches all: {echoed}"
    );
    c.call("PUT", "/v1/vm/power-button").unwrap();
    let out = idle.run.wait(Duration::from_secs(20));
    assert_eq!(out.code, Some(0), "{out}");
    assert!(!console.exists(), "the console socket is removed on exit");
}
