//! The whole stack on real KVM: a real `ironvirtd` on a temporary state directory, driven
//! through the real `ironvirt` CLI, starting real `ironvirt-vmm` processes that boot the kit's
//! idle guest (heartbeat on the serial console, ACPI power button, input echo).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ironvirt_api_types::{VmCounters, VmInfo, VmState};
use ironvirt_test_support::{kit_guest, require_kvm};

/// `target/<profile>/NAME`, built by `cargo build --workspace --bins`.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}

struct Stack {
    dir: PathBuf,
    socket: PathBuf,
    daemon: Option<Child>,
}

impl Stack {
    fn new(tag: &str) -> Self {
        require_kvm();
        let dir = std::env::temp_dir().join(format!("ironvirt-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("ironvirtd.sock");
        let mut stack = Self { dir, socket, daemon: None };
        stack.start_daemon();
        stack
    }

    fn start_daemon(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::File::create(self.dir.join("daemon.log")).unwrap();
        let child = Command::new(binary("ironvirtd"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--vmm")
            .arg(binary("ironvirt-vmm"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("ironvirtd starts");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.socket.exists() && self.cli(&["list", "--all"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ironvirtd did not come up: {}", self.daemon_log());
    }

    fn kill9_daemon(&mut self) {
        let mut child = self.daemon.take().expect("daemon running");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn cli_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = Command::new(binary("ironvirt"))
            .arg("--connect")
            .arg(format!("unix:{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ironvirt runs");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_input(args, b"")
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "ironvirt {args:?} failed: {}\n{}",
            show(&out),
            self.daemon_log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn info(&self, name: &str) -> VmInfo {
        serde_json::from_str(&self.ok(&["--json", "info", name])).expect("VmInfo JSON")
    }

    fn wait_state(&self, name: &str, state: VmState, timeout: Duration) -> VmInfo {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.info(name);
            if info.state == state || Instant::now() > deadline {
                assert_eq!(info.state, state, "{name}: {info:?}\n{}", self.daemon_log());
                return info;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn create_idle(&self, name: &str) {
        let kernel = kit_guest("idle.elf");
        self.ok(&[
            "create",
            name,
            "--cpus",
            "2",
            "--memory",
            "128M",
            "--kernel",
            kernel.to_str().unwrap(),
            "--cmdline",
            "heartbeat_ms=200",
        ]);
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Stop every VMM this test started, then the daemon.
        if let Ok(text) = std::fs::read_dir(self.dir.join("state/run")) {
            for entry in text.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(vm) = name.strip_suffix(".json").filter(|n| !n.ends_with(".last")) {
                    let _ = self.cli(&["destroy", vm]);
                }
            }
        }
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn full_lifecycle_through_the_cli_on_real_vms() {
    let stack = Stack::new("lifecycle");
    stack.create_idle("web1");
    let list = stack.ok(&["list", "--all"]);
    assert!(list.contains("web1") && list.contains("shut off"), "{list}");

    stack.ok(&["start", "web1"]);
    stack.wait_state("web1", VmState::Running, Duration::from_secs(20));

    // Console: output arrives (with scrollback), input reaches the guest.
    let out = stack.cli_with_input(&["console", "web1", "--timeout", "3"], b"x");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("IRONVIRT-KIT idle start"), "scrollback replayed: {}", show(&out));
    assert!(text.contains("input: 0x78"), "input reached the guest: {}", show(&out));

    stack.ok(&["suspend", "web1"]);
    assert_eq!(stack.info("web1").state, VmState::Paused);
    stack.ok(&["resume", "web1"]);
    assert_eq!(stack.info("web1").state, VmState::Running);

    let stats: VmCounters = serde_json::from_str(&stack.ok(&["--json", "stats", "web1"])).unwrap();
    assert_eq!(stats.vcpus.len(), 2);
    assert!(stats.serial.tx_bytes > 0, "{stats:?}");

    stack.ok(&["reboot", "web1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats: VmCounters =
            serde_json::from_str(&stack.ok(&["--json", "stats", "web1"])).unwrap();
        if stats.reboots == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "reboot not seen: {stats:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // ACPI shutdown: the guest powers off by itself, exit code 0.
    stack.ok(&["shutdown", "web1", "--timeout", "30"]);
    let info = stack.wait_state("web1", VmState::ShutOff, Duration::from_secs(30));
    assert_eq!(info.last_exit.as_ref().and_then(|e| e.code), Some(0), "{info:?}");

    stack.ok(&["start", "web1"]);
    stack.wait_state("web1", VmState::Running, Duration::from_secs(20));
    stack.ok(&["destroy", "web1"]);
    stack.wait_state("web1", VmState::ShutOff, Duration::from_secs(20));

    // dump / define round trip, autostart, undefine.
    let dumped = stack.ok(&["dump", "web1"]);
    let file = stack.dir.join("web1.toml");
    std::fs::write(&file, &dumped).unwrap();
    stack.ok(&["undefine", "web1"]);
    assert_eq!(stack.cli(&["info", "web1"]).status.code(), Some(4));
    stack.ok(&["define", file.to_str().unwrap()]);
    assert_eq!(stack.ok(&["dump", "web1"]), dumped, "define of a dump gives the same bytes");
    stack.ok(&["autostart", "web1", "on"]);
    assert!(stack.info("web1").autostart);
}

#[test]
fn documented_errors_and_exit_codes() {
    let stack = Stack::new("errors");
    let unknown = stack.cli(&["info", "nosuch"]);
    assert_eq!(unknown.status.code(), Some(4), "{}", show(&unknown));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("nosuch"), "{}", show(&unknown));

    let kernel = kit_guest("idle.elf");
    let invalid = stack.cli(&[
        "create",
        "bad name!",
        "--cpus",
        "1",
        "--memory",
        "64M",
        "--kernel",
        kernel.to_str().unwrap(),
    ]);
    assert_eq!(invalid.status.code(), Some(6), "{}", show(&invalid));
    let missing = stack.cli(&[
        "create",
        "nokernel",
        "--cpus",
        "1",
        "--memory",
        "64M",
        "--kernel",
        "/nonexistent/k",
    ]);
    assert_eq!(missing.status.code(), Some(6), "{}", show(&missing));

    stack.create_idle("vm1");
    let dup = stack.cli(&[
        "create",
        "vm1",
        "--cpus",
        "1",
        "--memory",
        "64M",
        "--kernel",
        kernel.to_str().unwrap(),
    ]);
    assert_eq!(dup.status.code(), Some(5), "{}", show(&dup));
    stack.ok(&["start", "vm1"]);
    stack.wait_state("vm1", VmState::Running, Duration::from_secs(20));
    let again = stack.cli(&["start", "vm1"]);
    assert_eq!(again.status.code(), Some(5), "starting a running VM: {}", show(&again));
    let undefine_running = stack.cli(&["undefine", "vm1"]);
    assert_eq!(undefine_running.status.code(), Some(5), "{}", show(&undefine_running));
}

#[test]
fn eight_vms_start_concurrently_and_survive_a_daemon_kill9() {
    let mut stack = Stack::new("eight");
    let names: Vec<String> = (0..8).map(|i| format!("vm{i}")).collect();
    for n in &names {
        stack.create_idle(n);
    }
    let started = Instant::now();
    std::thread::scope(|s| {
        for n in &names {
            let stack = &stack;
            s.spawn(move || stack.ok(&["start", n]));
        }
    });
    for n in &names {
        stack.wait_state(n, VmState::Running, Duration::from_secs(30));
    }
    let all_running = started.elapsed();
    let pids: Vec<Option<u32>> = names.iter().map(|n| stack.info(n).pid).collect();
    let definition = std::fs::read(stack.dir.join("state/vms/vm0.toml")).unwrap();

    stack.kill9_daemon();
    stack.start_daemon();

    for (n, pid) in names.iter().zip(&pids) {
        let info = stack.info(n);
        assert_eq!(info.state, VmState::Running, "{n} re-adopted: {info:?}");
        assert_eq!(&info.pid, pid, "{n} kept its VMM process");
    }
    let stats: VmCounters = serde_json::from_str(&stack.ok(&["--json", "stats", "vm3"])).unwrap();
    assert!(stats.uptime_ms > 0);
    let out = stack.cli_with_input(&["console", "vm5", "--timeout", "2"], b"q");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("input: 0x71"),
        "console after re-adoption: {}",
        show(&out)
    );
    assert_eq!(
        std::fs::read(stack.dir.join("state/vms/vm0.toml")).unwrap(),
        definition,
        "definition kept byte for byte"
    );
    eprintln!("8 VMs reached running {all_running:?} after the concurrent starts");
}
