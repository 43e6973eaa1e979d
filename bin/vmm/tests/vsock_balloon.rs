//! virtio-vsock (host side on a Unix socket) and virtio-balloon, on the guest test kit.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ironvirt_test_support::{kit_guest, require_kvm, VmmRun};
use ironvirt_vmm_protocol::Client;

const VMM: &str = env!("CARGO_BIN_EXE_ironvirt-vmm");
const TIMEOUT: Duration = Duration::from_secs(60);

fn temp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ironvirt-vs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn vsock_guest(socket: &Path, cmdline: &str) -> VmmRun {
    require_kvm();
    let kernel = kit_guest("vsock.elf");
    VmmRun::spawn(
        Path::new(VMM),
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--vsock",
            &format!("cid=3,socket={}", socket.display()),
            "--cmdline",
            cmdline,
        ],
    )
}

#[test]
fn host_connects_to_a_guest_port_and_gets_its_bytes_echoed() {
    let dir = temp("h2g");
    let socket = dir.join("v.sock");
    let mut vm = vsock_guest(&socket, "vsock_listen=1234 exit_after_s=30");
    assert!(vm.wait_for("vsock-listening", 1, TIMEOUT), "{}", vm.output());
    let mut s = UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"CONNECT 1234\n").unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        s.read_exact(&mut b).unwrap();
        line.push(b[0]);
    }
    assert!(line.starts_with(b"OK "), "{}", String::from_utf8_lossy(&line));
    let msg = b"hello over vsock, both ways\n";
    s.write_all(msg).unwrap();
    let mut echo = vec![0u8; msg.len()];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, msg);
    drop(s);
    let out = vm.wait(TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(out.value("vsock-echoed"), msg.len().to_string(), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn guest_connects_to_the_host_port_socket() {
    let dir = temp("g2h");
    let socket = dir.join("v.sock");
    let listener = UnixListener::bind(format!("{}_5000", socket.display())).unwrap();
    let vm = vsock_guest(&socket, "vsock_connect=5000 exit_after_s=30");
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = vec![0u8; b"hello from guest\n".len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello from guest\n");
    s.write_all(b"hello from host\n").unwrap();
    drop(s);
    let out = vm.wait(TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("hello from host"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn inflating_the_balloon_by_256_mib_lowers_the_vmm_rss() {
    require_kvm();
    let dir = temp("balloon");
    let api = dir.join("api.sock");
    let kernel = kit_guest("balloon.elf");
    let mut vm = VmmRun::spawn(
        Path::new(VMM),
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "512M",
            "--balloon",
            "--api-socket",
            api.to_str().unwrap(),
            "--cmdline",
            "balloon_touch_mib=300 exit_after_s=60",
        ],
    );
    assert!(vm.wait_for("balloon-ready", 1, TIMEOUT), "{}", vm.output());
    let before = rss_kib(vm.pid());
    assert!(before > 300 * 1024, "the guest touched 300 MiB: RSS {before} KiB");
    Client::new(&api).call_with_body("PUT", "/v1/vm/balloon", r#"{"target_mib":256}"#).unwrap();
    assert!(vm.wait_for("balloon-inflated: 65536", 1, TIMEOUT), "{}", vm.output());
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(vm.pid());
    Client::new(&api).call("PUT", "/v1/vm/power-button").ok();
    vm.signal(15);
    let _ = vm.wait(Duration::from_secs(10));
    assert!(
        before - after >= 200 * 1024,
        "RSS fell by {} MiB (from {} to {} MiB)",
        (before - after) / 1024,
        before / 1024,
        after / 1024
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn balloon_requests_need_a_balloon_device() {
    require_kvm();
    let dir = temp("noballoon");
    let api = dir.join("api.sock");
    let kernel = kit_guest("idle.elf");
    let mut vm = VmmRun::spawn(
        Path::new(VMM),
        &["--kernel", kernel.to_str().unwrap(), "--api-socket", api.to_str().unwrap()],
    );
    assert!(vm.wait_for("idle: ready", 1, TIMEOUT), "{}", vm.output());
    let err = Client::new(&api)
        .call_with_body("PUT", "/v1/vm/balloon", r#"{"target_mib":1}"#)
        .unwrap_err();
    assert!(err.to_string().contains("409") && err.to_string().contains("--balloon"), "{err}");
    Client::new(&api).call("PUT", "/v1/vm/power-button").unwrap();
    assert_eq!(vm.wait(TIMEOUT).code, Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}
