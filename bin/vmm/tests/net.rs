//! virtio-net on a TAP, with the kit's vnet guest, inside a network namespace each test creates
//! (the TAP and every address live only there): ARP and ICMP echo from the host, and 10 MiB of
//! UDP each way with the bytes checked.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use ironvirt_test_support::{kit_guest, require_kvm, VmmRun};

const VMM: &str = env!("CARGO_BIN_EXE_ironvirt-vmm");
const GUEST_IP: &str = "10.0.2.15";
const HOST_IP: &str = "10.0.2.2";
const TEN_MIB: usize = 10 << 20;

/// A network namespace with a TAP `ivtap0` holding the host address; removed on drop.
struct NetNs {
    name: String,
}

fn run(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

impl NetNs {
    fn new(tag: &str) -> Self {
        require_kvm();
        let name = format!("ivt-{tag}-{}", std::process::id());
        let _ = run(&["ip", "netns", "del", &name]);
        for cmd in [
            vec!["ip", "netns", "add", &name],
            vec![
                "ip", "netns", "exec", &name, "ip", "tuntap", "add", "dev", "ivtap0", "mode", "tap",
            ],
            vec!["ip", "netns", "exec", &name, "ip", "addr", "add", "10.0.2.2/24", "dev", "ivtap0"],
            vec!["ip", "netns", "exec", &name, "ip", "link", "set", "ivtap0", "up"],
            vec!["ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up"],
        ] {
            let out = run(&cmd);
            assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Self { name }
    }

    fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    fn vmm(&self, cmdline: &str) -> VmmRun {
        let kernel = kit_guest("vnet.elf");
        VmmRun::spawn(
            Path::new("ip"),
            &[
                "netns",
                "exec",
                &self.name,
                VMM,
                "--kernel",
                kernel.to_str().unwrap(),
                "--memory",
                "128M",
                "--net",
                "tap=ivtap0,mac=52:54:00:12:34:56",
                "--cmdline",
                cmdline,
            ],
        )
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

#[test]
fn guest_answers_arp_and_icmp_echo_from_the_host() {
    let ns = NetNs::new("ping");
    let mut vm = ns.vmm(&format!("ip={GUEST_IP} peer={HOST_IP} exit_after_s=20"));
    assert!(vm.wait_for("net-ready", 1, Duration::from_secs(30)), "{}", vm.output());
    let ping = ns.exec(&["ping", "-c", "3", "-W", "2", GUEST_IP]);
    let text = String::from_utf8_lossy(&ping.stdout).into_owned();
    ns.exec(&["python3", "-c", &format!(
        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'quit', ('{GUEST_IP}', 9))"
    )]);
    let out = vm.wait(Duration::from_secs(30));
    assert!(text.contains("3 received"), "ping: {text}\n{out}");
    assert_eq!(out.code, Some(0), "{out}");
    let replies: u32 = out.value("icmp-replies").parse().unwrap();
    assert!(replies >= 3, "{out}");
    assert!(out.value("arp-replies") != "0", "{out}");
}

/// Host → guest: 1 MiB rounds of paced 1400-byte datagrams with the kit's pattern, each
/// closed by END; the guest answers with the bytes it received intact in that round, and a
/// round that lost datagrams (UDP has no flow control; the guest's receive path is ring-0 code
/// that software-nested KVM emulates) is sent again. Prints the total confirmed.
const SEND: &str = r#"
import socket, sys, time
guest, total = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(20)
pat = bytes(k & 0xff for k in range(4096))
confirmed, retries = 0, 0
while confirmed < total:
    want = min(1 << 20, total - confirmed)
    sent = 0
    while sent < want:
        n = min(1400, want - sent)
        off = (confirmed + sent) % 256
        s.sendto(pat[off: off + n], (guest, 5000))
        sent += n
        if (sent // 1400) % 16 == 0:
            time.sleep(0.025)
    time.sleep(0.3)
    s.sendto(b"END", (guest, 5000))
    got = int(s.recvfrom(64)[0].decode())
    if got == want:
        confirmed += want
    else:
        retries += 1
        if retries > 20:
            break
print(confirmed)
print("retries", retries, file=sys.stderr)
"#;

#[test]
fn ten_mib_of_udp_reach_the_guest_intact() {
    let ns = NetNs::new("rx");
    let mut vm = ns.vmm(&format!("ip={GUEST_IP} peer={HOST_IP} udp_sink=5000 exit_after_s=120"));
    assert!(vm.wait_for("net-ready", 1, Duration::from_secs(30)), "{}", vm.output());
    let sent = ns.exec(&["python3", "-c", SEND, GUEST_IP, &TEN_MIB.to_string()]);
    ns.exec(&["python3", "-c", &format!(
        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'quit', ('{GUEST_IP}', 9))"
    )]);
    let out = vm.wait(Duration::from_secs(60));
    let reported = String::from_utf8_lossy(&sent.stdout).trim().to_string();
    assert_eq!(
        reported,
        TEN_MIB.to_string(),
        "guest count; sender stderr: {}\n{out}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let rounds = out.values("udp-sink");
    assert!(
        !rounds.is_empty() && rounds.iter().all(|r| r.ends_with("bad 0")),
        "every datagram had the pattern: {out}"
    );
}

/// Guest → host: the guest blasts 10 MiB; a receiver in the namespace checks every byte.
const RECEIVE: &str = r#"
import socket, sys
total = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
s.bind(("10.0.2.2", 5001))
s.settimeout(30)
got, bad = 0, 0
print("listening", flush=True)
while got < total:
    d = s.recv(65536)
    start = d[0]
    if any(d[i] != (start + i) & 0xff for i in range(0, len(d), 97)):
        bad += 1
    got += len(d)
print(got, bad)
"#;

#[test]
fn ten_mib_of_udp_from_the_guest_reach_the_host_intact() {
    let ns = NetNs::new("tx");
    let receiver = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", RECEIVE, &TEN_MIB.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let vm = ns.vmm(&format!(
        "ip={GUEST_IP} peer={HOST_IP} udp_blast={TEN_MIB} udp_port=5001 exit_after_s=120"
    ));
    let result = receiver.wait_with_output().unwrap();
    let out = vm.wait(Duration::from_secs(120));
    let text = String::from_utf8_lossy(&result.stdout).into_owned();
    assert!(
        text.contains(&format!("{TEN_MIB} 0")),
        "host received all bytes, none corrupt: {text}\n{out}"
    );
    assert_eq!(out.value("udp-sent"), TEN_MIB.to_string(), "{out}");
}
