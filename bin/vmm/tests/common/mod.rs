//! Linux guest device scenarios shared by `linux.rs` (the patched test kernel, on any KVM) and
//! `hardware.rs` (the stock Debian cloud kernel, on hardware KVM only). Each scenario boots its
//! own VM with its own temporary directory (and network namespace), checks what the guest did
//! from the host side, and panics with the VMM's output when something differs.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ironvirt_test_support::{linux_guest, linux_tool, require_kvm, LinuxGuest, RunOutcome, VmmRun};

pub const VMM: &str = env!("CARGO_BIN_EXE_ironvirt-vmm");

/// Which Linux guest a scenario boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// The patched minimal kernel (`guests/linux/build.sh`): boots on software-nested KVM.
    #[allow(dead_code)] // hardware.rs boots only the stock kernel
    Test,
    /// The unmodified Debian cloud kernel (`guests/linux/build.sh --stock`): hardware KVM only.
    Stock,
}

impl Kernel {
    pub fn guest(self) -> LinuxGuest {
        linux_guest(self == Kernel::Stock)
    }

    /// Boot-to-poweroff limit: the test kernel takes ~50 s to reach /init on software-nested
    /// KVM, the stock one a few seconds on hardware.
    pub fn timeout(self) -> Duration {
        match self {
            Kernel::Test => Duration::from_secs(300),
            Kernel::Stock => Duration::from_secs(120),
        }
    }

    /// VMM arguments booting this guest with `initramfs` and `cpus` vCPUs.
    pub fn args(self, initramfs: &Path, cpus: &str) -> Vec<String> {
        match self {
            Kernel::Test => {
                let mut args = self.guest().vmm_args(initramfs, cpus, "256M");
                args.extend(["--cpu-template".to_string(), "portable".to_string()]);
                args
            }
            Kernel::Stock => self.guest().vmm_args(initramfs, cpus, "512M"),
        }
    }

    /// The guest's initramfs plus `script` as /test.sh and `files` (guest path, host file).
    pub fn initramfs(self, script: &str, files: &[(&str, &Path)], tag: &str) -> PathBuf {
        let tag = format!("{tag}-{self:?}");
        self.guest().initramfs_with_files(script, files, &tag)
    }
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Boots `kernel` with one vCPU, `script` as /test.sh and extra VMM arguments, and waits for
/// it to power off.
pub fn boot_with(kernel: Kernel, script: &str, tag: &str, extra: &[String]) -> RunOutcome {
    require_kvm();
    let initramfs = kernel.initramfs(script, &[], tag);
    let mut a = kernel.args(&initramfs, "1");
    a.extend_from_slice(extra);
    let out = VmmRun::run(Path::new(VMM), &strs(&a), kernel.timeout());
    let _ = std::fs::remove_file(&initramfs);
    assert!(!out.timed_out, "{out}");
    out
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ironvirt-linux-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The rest of the guest's first serial line starting with `IRONVIRT-TEST <prefix>`.
pub fn guest_line(out: &RunOutcome, prefix: &str) -> String {
    let prefix = format!("IRONVIRT-TEST {prefix}");
    out.stdout
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no '{prefix}' line from the guest: {out}"))
        .to_string()
}

fn debugfs_cat(image: &Path, file: &str) -> String {
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(image)
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The guest reads 16 bytes from /dev/hwrng (virtio-rng): all there, not all zero. With
/// `pci=nomsi` Linux cannot use MSI-X: it finds the device's INTA# routing in the DSDT's `_PRT`
/// (slot 1, GSI 17) and takes the interrupts from the IOAPIC, level-triggered; it also takes
/// both BAR windows from the root bridge's `_CRS`. (The disk, network and vsock scenarios
/// cover MSI-X.)
pub fn virtio_rng_over_intx_feeds_dev_hwrng(kernel: Kernel) {
    require_kvm();
    let script = "echo \"IRONVIRT-TEST hwrng=$(head -c 16 /dev/hwrng | od -An -tx1)\"\n\
while read -r l; do case $l in *virtio*) echo \"IRONVIRT-TEST irq=$l\";; esac; done </proc/interrupts\n\
while read -r l; do case $l in *'PCI Bus'*) echo \"IRONVIRT-TEST iomem=$l\";; esac; done </proc/iomem\n";
    let initramfs = kernel.initramfs(script, &[], "hwrng");
    let mut a = kernel.args(&initramfs, "1");
    let cmdline = a.iter().position(|x| x == "--cmdline").unwrap() + 1;
    a[cmdline].push_str(" pci=nomsi");
    a.push("--rng".into());
    let out = VmmRun::run(Path::new(VMM), &strs(&a), kernel.timeout());
    let _ = std::fs::remove_file(&initramfs);
    assert!(!out.timed_out, "{out}");
    // "17:  73  IO-APIC  17-fasteoi  virtio0"
    let irq = guest_line(&out, "irq=");
    let fields: Vec<&str> = irq.split_whitespace().collect();
    assert!(
        fields.len() == 5
            && fields[0] == "17:"
            && fields.ends_with(&["IO-APIC", "17-fasteoi", "virtio0"]),
        "virtio-rng on IOAPIC pin 17, level-triggered (fasteoi): {out}"
    );
    let count: u64 = fields[1].parse().unwrap_or(0);
    assert!(count > 0, "interrupts were taken: {out}");
    for window in ["c0000000-dfffffff", "100000000-10ffffffff"] {
        let line = format!("IRONVIRT-TEST iomem={window} : PCI Bus 0000:00");
        assert!(out.stdout.contains(&line), "{line}: {out}");
    }
    let line = guest_line(&out, "hwrng=");
    let bytes: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(bytes.len(), 16, "16 bytes from /dev/hwrng: {out}");
    assert!(bytes.iter().any(|b| *b != "00"), "random, not zeros: {out}");
    assert_eq!(out.code, Some(0), "{out}");
}

/// The guest makes an ext4 filesystem on a raw virtio disk and writes a file; the host reads
/// the file back from the image with debugfs.
pub fn mkfs_on_a_virtio_disk(kernel: Kernel) {
    let dir = temp_dir(&format!("mkfs-{kernel:?}"));
    let image = dir.join("disk.raw");
    std::fs::File::create(&image).unwrap().set_len(32 << 20).unwrap();
    let script = "mke2fs -q /dev/vda\nmount -t ext4 /dev/vda /root\n\
echo 'written by the guest through virtio-blk' > /root/hello.txt\numount /root\necho IRONVIRT-TEST mkfs-done\n";
    let disk = format!("path={},format=raw", image.display());
    let out = boot_with(kernel, script, "mkfs", &["--disk".into(), disk]);
    assert!(out.stdout.contains("IRONVIRT-TEST mkfs-done"), "{out}");
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(debugfs_cat(&image, "/hello.txt"), "written by the guest through virtio-blk\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The guest mounts a qcow2 overlay over a raw ext4 backing file, reads a file of the backing
/// file and writes a new one: the backing file stays byte-identical, the overlay holds the new
/// file (read back with `qemu-img convert` + debugfs).
pub fn qcow2_root_over_an_unchanged_backing_file(kernel: Kernel) {
    let dir = temp_dir(&format!("qcow2-{kernel:?}"));
    let content = dir.join("content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("marker"), "from the backing file\n").unwrap();
    let base = dir.join("base.raw");
    let mkfs = std::process::Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-d"])
        .arg(&content)
        .arg(&base)
        .arg("32M")
        .status()
        .unwrap();
    assert!(mkfs.success());
    let base_before = std::fs::read(&base).unwrap();
    let overlay = dir.join("root.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&overlay)
        .status()
        .unwrap();
    assert!(made.success());
    let script =
        "mount -t ext4 /dev/vda /root\nread m < /root/marker\necho \"IRONVIRT-TEST marker=$m\"\n\
echo 'added in the overlay' > /root/new.txt\numount /root\n";
    let disk = format!("path={},format=qcow2,backing=on", overlay.display());
    let out = boot_with(kernel, script, "qcow2", &["--disk".into(), disk]);
    assert!(out.stdout.contains("IRONVIRT-TEST marker=from the backing file"), "{out}");
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(std::fs::read(&base).unwrap(), base_before, "the backing file is byte-identical");
    let flat = dir.join("flat.raw");
    let conv = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&overlay)
        .arg(&flat)
        .status()
        .unwrap();
    assert!(conv.success());
    assert_eq!(debugfs_cat(&flat, "/new.txt"), "added in the overlay\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- vsock ----

const VSOCK_GUEST_PORT: u32 = 1234;
const VSOCK_HOST_PORT: u32 = 5000;
/// Bytes the host sends through each connection (echoed back), and the guest sends to the host.
const VSOCK_BYTES: usize = 32 << 10;
const VSOCK_IO_TIMEOUT: Duration = Duration::from_secs(60);

/// The host's data: a different pattern from the guest's `i % 251`.
fn host_pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 253) as u8 ^ 0xa5).collect()
}

/// Writes `data` (from a second thread, so neither side's buffers can fill up), closes the
/// write side and reads everything the peer sends back until end-of-file.
fn exchange(stream: &mut UnixStream, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut writer = stream.try_clone().map_err(|e| format!("clone: {e}"))?;
    std::thread::scope(|s| {
        let sent = s.spawn(move || {
            writer.write_all(data)?;
            writer.shutdown(std::net::Shutdown::Write)
        });
        let mut back = Vec::new();
        let read = stream.read_to_end(&mut back);
        sent.join().expect("writer thread").map_err(|e| format!("write: {e}"))?;
        read.map_err(|e| format!("read after {} bytes: {e}", back.len()))?;
        Ok(back)
    })
}

/// Host to guest: connect to the VMM's socket, `CONNECT <port>`, expect `OK <hostport>`.
fn connect_to_guest(socket: &Path, port: u32) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(VSOCK_IO_TIMEOUT)).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).map_err(|e| format!("CONNECT: {e}"))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        s.read_exact(&mut b).map_err(|e| format!("reading the OK line: {e}"))?;
        line.push(b[0]);
    }
    if !line.starts_with(b"OK ") {
        return Err(format!("handshake answered {:?}", String::from_utf8_lossy(&line)));
    }
    Ok(s)
}

fn accept_within(listener: &UnixListener, timeout: Duration) -> Result<UnixStream, String> {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(VSOCK_IO_TIMEOUT)).unwrap();
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("the guest did not connect to the host port: {e}")),
        }
    }
}

/// The host side of one boot running `vsock-echo`: echo through a host-initiated connection,
/// then the guest's own data and an echo through a guest-initiated one.
fn vsock_host_side(
    vm: &mut VmmRun,
    kernel: Kernel,
    socket: &Path,
    g2h: &UnixListener,
) -> Result<(), String> {
    if !vm.wait_for("IRONVIRT-TEST vsock-listening", 1, kernel.timeout()) {
        return Err("the guest never listened".into());
    }
    let data = host_pattern(VSOCK_BYTES);
    let mut h2g = connect_to_guest(socket, VSOCK_GUEST_PORT)?;
    same_echo("host->guest", &exchange(&mut h2g, &data)?, &data)?;
    let mut s = accept_within(g2h, VSOCK_IO_TIMEOUT)?;
    let mut from_guest = vec![0u8; VSOCK_BYTES];
    s.read_exact(&mut from_guest).map_err(|e| format!("reading the guest's data: {e}"))?;
    if let Some(i) = (0..VSOCK_BYTES).find(|&i| from_guest[i] != (i % 251) as u8) {
        return Err(format!("guest data differs from its pattern at byte {i}"));
    }
    same_echo("guest->host", &exchange(&mut s, &data)?, &data)
}

fn same_echo(connection: &str, echoed: &[u8], sent: &[u8]) -> Result<(), String> {
    if echoed == sent {
        return Ok(());
    }
    let (back, len) = (echoed.len(), sent.len());
    Err(format!("{connection} echo differs: {back} bytes back of {len}"))
}

/// One boot, both directions over virtio-vsock with the guest's `vsock-echo`: the host connects
/// to guest port 1234 and gets 32 KiB echoed; the guest connects to host port 5000 (Unix socket
/// `<socket>_5000`), sends 32 KiB of its pattern and echoes 32 KiB of the host's. The host
/// checks every byte; the guest reports its counts.
pub fn vsock_echo_both_ways(kernel: Kernel) {
    require_kvm();
    let dir = temp_dir(&format!("vsock-{kernel:?}"));
    let socket = dir.join("v.sock");
    let g2h = UnixListener::bind(format!("{}_{VSOCK_HOST_PORT}", socket.display())).unwrap();
    let tool = linux_tool("vsock-echo");
    let script = format!("/vsock-echo {VSOCK_GUEST_PORT} {VSOCK_HOST_PORT} {VSOCK_BYTES}\n");
    let initramfs = kernel.initramfs(&script, &[("vsock-echo", &tool)], "vsock");
    let mut a = kernel.args(&initramfs, "1");
    a.extend(["--vsock".to_string(), format!("cid=3,socket={}", socket.display())]);
    let mut vm = VmmRun::spawn(Path::new(VMM), &strs(&a));
    let host = vsock_host_side(&mut vm, kernel, &socket, &g2h);
    let out = vm.wait(kernel.timeout());
    let _ = std::fs::remove_file(&initramfs);
    if let Err(e) = host {
        panic!("{e}: {out}");
    }
    let n = VSOCK_BYTES;
    assert_eq!(guest_line(&out, "vsock-h2g-echoed="), n.to_string(), "{out}");
    assert_eq!(guest_line(&out, "vsock-g2h-sent="), format!("{n} echoed={n}"), "{out}");
    assert_eq!(out.code, Some(0), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- network ----

/// A network namespace with TAP `ivtap0` at 10.0.2.2/24, MTU [`NET_MTU`]; removed on drop.
struct NetNs(String);

impl NetNs {
    fn new(tag: &str) -> Self {
        let name = format!("ivl-{tag}-{}", std::process::id());
        let run = |args: &[&str]| {
            let out = std::process::Command::new(args[0]).args(&args[1..]).output().unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let _ = std::process::Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        let ns = ["ip", "netns", "exec", name.as_str(), "ip"];
        let mtu = NET_MTU.to_string();
        for cmd in [
            &["tuntap", "add", "dev", "ivtap0", "mode", "tap"][..],
            &["addr", "add", "10.0.2.2/24", "dev", "ivtap0"],
            &["link", "set", "ivtap0", "mtu", &mtu, "up"],
        ] {
            run(&[&ns[..], cmd].concat());
        }
        Self(name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Bytes moved each way by `tcp-xfer`, and host to guest by busybox nc.
const NET_BYTES: usize = 10 << 20;
const NC_BYTES: usize = 1 << 20;
/// The largest MTU the device's 65550-byte frame buffer holds (with the Ethernet and virtio-net
/// headers). Under software-nested KVM the guest kernel's transmit path costs ~35 ms of
/// emulated work per segment, whatever its size: at MTU 1500 TCP autosizing makes 2-segment
/// (2896-byte) GSO packets and the guest sends ~80 KiB/s, at 65520 64 KiB segments and
/// ~550 KiB/s.
const NET_MTU: u32 = 65520;

/// The host side of the TCP transfers, in the namespace; each port takes one connection.
/// 5001: checks that the bytes are the pattern `i % 251`, prints `sink BYTES PATTERN_OK SECS`;
/// 5002: sends BYTES bytes of that pattern, prints `source SECS` once the guest closes;
/// 5003: sends NC_BYTES bytes of another pattern, prints `nc-source MD5`.
const TCP_PEER: &str = r#"
import hashlib, socket, sys, threading, time
N, NC = int(sys.argv[1]), int(sys.argv[2])
def pattern(n, period):
    return (period * (n // len(period) + 1))[:n]
def accept(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.0.2.2", port)); s.listen(1); s.settimeout(280)
    c, _ = s.accept(); c.settimeout(200); return c
def sink():
    c = accept(5001); t = time.time(); n = 0; ok = True
    period = pattern(251 * 4200, bytes(range(251)))
    while True:
        d = c.recv(1 << 20)
        if not d: break
        ok = ok and d == period[n % 251:n % 251 + len(d)]
        n += len(d)
    print("sink", n, int(ok), round(time.time() - t, 2), flush=True); c.close()
def send(port, data):
    c = accept(port); t = time.time()
    c.sendall(data); c.shutdown(socket.SHUT_WR)
    while c.recv(1 << 16): pass
    c.close(); return round(time.time() - t, 2)
def source():
    print("source", send(5002, pattern(N, bytes(range(251)))), flush=True)
def nc_source():
    data = pattern(NC, bytes(range(253))[::-1])
    send(5003, data); print("nc-source", hashlib.md5(data).hexdigest(), flush=True)
ts = [threading.Thread(target=f) for f in (sink, source, nc_source)]
for t in ts: t.start()
for t in ts: t.join()
"#;

/// The host peer's line starting with `key`, split into words after it.
fn peer_line<'a>(peer: &'a str, key: &str) -> Vec<&'a str> {
    let line = peer.lines().find(|l| l.starts_with(&format!("{key} "))).unwrap_or("");
    line.split_whitespace().skip(1).collect()
}

/// The guest configures eth0 (MTU 65520) and pings the host through the TAP; then, with
/// `tcp-xfer`, sends 10 MiB (the host checks every byte against the pattern) and receives
/// 10 MiB (the guest checks every byte), and with busybox `nc` receives 1 MiB into a file whose
/// md5sum must match the host's. nc stays at 1 MiB: it copies 1 KiB per system call, and under
/// software-nested KVM that holds it to ~60 KiB/s into a file (~15 KiB/s guest to host from a
/// pipe), so 10 MiB would take minutes.
pub fn ping_and_10_mib_each_way_over_a_tap(kernel: Kernel) {
    require_kvm();
    let ns = NetNs::new(&format!("{kernel:?}"));
    let peer = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3", "-c", TCP_PEER])
        .args([NET_BYTES.to_string(), NC_BYTES.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let script = format!(
        "ip addr add 10.0.2.15/24 dev eth0\nip link set eth0 mtu {NET_MTU} up\n\
ping -c 3 -W 5 10.0.2.2 && echo IRONVIRT-TEST ping-ok\n\
/tcp-xfer send 10.0.2.2 5001 {NET_BYTES}\n/tcp-xfer recv 10.0.2.2 5002\n\
nc 10.0.2.2 5003 </dev/null >/received\n\
echo \"IRONVIRT-TEST nc-md5=$(md5sum /received)\"\n"
    );
    let tool = linux_tool("tcp-xfer");
    let initramfs = kernel.initramfs(&script, &[("tcp-xfer", &tool)], "net");
    let mut a = vec!["netns".to_string(), "exec".into(), ns.0.clone(), VMM.into()];
    a.extend(kernel.args(&initramfs, "1"));
    a.extend(["--net".to_string(), "tap=ivtap0,mac=52:54:00:12:34:56".into()]);
    let out = VmmRun::run(Path::new("ip"), &strs(&a), kernel.timeout());
    let _ = std::fs::remove_file(&initramfs);
    let peer = peer.wait_with_output().unwrap();
    let peer = String::from_utf8_lossy(&peer.stdout);
    let ctx = format!("{out}\n--- host peer ---\n{peer}");
    assert!(out.stdout.contains("IRONVIRT-TEST ping-ok"), "{ctx}");
    let n = NET_BYTES.to_string();
    let sink = peer_line(&peer, "sink");
    assert_eq!(sink.get(..2), Some(&[n.as_str(), "1"][..]), "guest->host: {ctx}");
    assert_eq!(guest_line(&out, "tcp-sent="), n, "{ctx}");
    assert_eq!(guest_line(&out, "tcp-received="), format!("{n} pattern-ok=1"), "{ctx}");
    let nc_md5 = peer_line(&peer, "nc-source");
    let guest_md5 = guest_line(&out, "nc-md5=");
    assert_eq!(guest_md5.split_whitespace().next(), nc_md5.first().copied(), "nc: {ctx}");
    assert_eq!(out.code, Some(0), "{ctx}");
    let rate = |secs: &str| {
        let secs: f64 = secs.parse().unwrap_or(f64::NAN);
        format!("{secs} s, {:.0} KiB/s", NET_BYTES as f64 / 1024.0 / secs)
    };
    let h2g = peer_line(&peer, "source");
    eprintln!(
        "10 MiB over TCP through the TAP, MTU {NET_MTU}: guest->host {}, host->guest {}",
        rate(sink[2]),
        rate(h2g.first().copied().unwrap_or(""))
    );
}
