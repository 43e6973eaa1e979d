//! Every non-streaming verb of the real `ironvirt` binary against the mock daemon: human
//! output, `--json` output, exit codes, the dump/define round trip and `edit`.

mod support;

use std::io::Write;
use std::process::Stdio;

use ironvirt_api_types::{VmCounters, VmDefinition, VmInfo, VmState};
use ironvirt_mock_daemon::{sample_definition, MockDaemon};
use support::{code, command, fails, ok, run, stderr, stdout};

fn daemon_with_two_vms() -> MockDaemon {
    let daemon = MockDaemon::start();
    let mut web = sample_definition("web1");
    web.autostart = true;
    daemon.add_vm(web, VmState::Running);
    let mut db = sample_definition("database");
    db.cpus = 4;
    db.memory = "512M".into();
    daemon.add_vm(db, VmState::ShutOff);
    daemon
}

#[test]
fn list_shows_running_vms_and_all_with_flag_as_aligned_table() {
    let daemon = daemon_with_two_vms();
    assert_eq!(
        ok(&daemon, &["list"]),
        "Name  State    CPUs  Memory  Autostart\nweb1  running  2     1 GiB   yes\n"
    );
    assert_eq!(
        ok(&daemon, &["list", "--all"]),
        "Name      State     CPUs  Memory   Autostart\n\
         database  shut off  4     512 MiB  no\n\
         web1      running   2     1 GiB    yes\n"
    );
}

#[test]
fn list_json_parses_as_api_types() {
    let daemon = daemon_with_two_vms();
    let vms: Vec<VmInfo> =
        serde_json::from_str(&ok(&daemon, &["--json", "list", "--all"])).unwrap();
    let names: Vec<_> = vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["database", "web1"]);
    assert_eq!(vms[0].memory_bytes, 512 << 20);
    let running: Vec<VmInfo> = serde_json::from_str(&ok(&daemon, &["list", "--json"])).unwrap();
    assert_eq!(running.len(), 1);
}

#[test]
fn create_sends_every_flag_and_makes_local_paths_absolute() {
    let daemon = MockDaemon::start();
    let out = ok(
        &daemon,
        &[
            "create",
            "web1",
            "--cpus",
            "2",
            "--memory",
            "1G",
            "--kernel",
            "vmlinuz",
            "--initramfs",
            "/boot/initrd.img",
            "--cmdline",
            "console=ttyS0 quiet",
            "--disk",
            "path=/img/a.qcow2,format=qcow2",
            "--disk",
            "path=/img/b.raw,readonly=on",
            "--net",
            "tap=tap0,mac=52:54:00:12:34:56",
            "--net",
            "tap=tap1",
            "--vsock",
            "cid=7",
            "--cpu-template",
            "portable",
            "--autostart",
        ],
    );
    assert!(out.starts_with("Defined web1 ("), "{out}");
    let def = daemon.definition("web1").unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(def.boot.kernel, cwd.join("vmlinuz").to_str().unwrap());
    assert_eq!(def.boot.initramfs.as_deref(), Some("/boot/initrd.img"));
    assert_eq!(def.boot.cmdline.as_deref(), Some("console=ttyS0 quiet"));
    assert_eq!((def.cpus, def.memory.as_str(), def.autostart), (2, "1G", true));
    assert_eq!(def.disks.len(), 2);
    assert_eq!(def.disks[0].format.as_deref(), Some("qcow2"));
    assert!(!def.disks[0].readonly && def.disks[1].readonly);
    assert_eq!(def.nics[0].mac.as_deref(), Some("52:54:00:12:34:56"));
    assert_eq!(def.nics[1].tap, "tap1");
    assert_eq!(def.vsock.map(|v| v.cid), Some(7));
    assert_eq!(def.cpu_template.as_deref(), Some("portable"));

    let info: VmInfo = serde_json::from_str(&ok(
        &daemon,
        &["--json", "create", "w2", "--cpus", "1", "--memory", "64M", "--kernel", "/k"],
    ))
    .unwrap();
    assert_eq!((info.name.as_str(), info.state), ("w2", VmState::ShutOff));
}

#[test]
fn create_maps_conflict_and_invalid_answers_to_exit_codes() {
    let daemon = daemon_with_two_vms();
    let with = |name: &'static str, extra: &[&'static str]| {
        let mut args = vec!["create", name, "--cpus", "1", "--kernel", "/k"];
        if !extra.contains(&"--memory") {
            args.extend_from_slice(&["--memory", "1G"]);
        }
        args.extend_from_slice(extra);
        args
    };
    assert_eq!(fails(&daemon, &with("web1", &[]), 5), "A VM named web1 already exists");
    let msg = fails(&daemon, &with("new", &["--memory", "huge"]), 6);
    assert!(msg.contains("huge"), "{msg}");
    fails(&daemon, &with(".hidden", &[]), 6);
    fails(&daemon, &with("v", &["--cpu-template", "fast"]), 6);
    // Local syntax errors are usage errors (clap), not daemon round trips.
    let requests = daemon.requests().len();
    let out = run(&daemon, &with("v", &["--disk", "path=a,format=vmdk"]));
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_eq!(daemon.requests().len(), requests);
}

#[test]
fn common_failures_have_documented_exit_codes() {
    let daemon = daemon_with_two_vms();
    for verb in ["info", "start", "dump", "stats", "destroy", "undefine", "console"] {
        assert_eq!(fails(&daemon, &[verb, "ghost"], 4), "No VM named ghost", "{verb}");
    }
    let msg = fails(&daemon, &["start", "web1"], 5);
    assert!(msg.contains("running"), "{msg}");
    fails(&daemon, &["undefine", "web1"], 5);
    fails(&daemon, &["stats", "database"], 5);

    let gone = daemon.path("gone.sock");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ironvirt"))
        .args(["--connect", &format!("unix:{}", gone.display()), "list"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 3);
    assert!(stderr(&out).contains("Cannot connect to the daemon"), "{}", stderr(&out));

    assert_eq!(code(&run(&daemon, &["frobnicate"])), 2);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ironvirt"))
        .args(["--connect", "ftp://x", "list"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("Invalid daemon address"));
}

#[test]
fn help_documents_exit_codes() {
    let daemon = MockDaemon::start();
    let help = ok(&daemon, &["--help"]);
    for line in ["3  daemon unreachable", "4  not found", "5  conflict", "6  invalid definition"] {
        assert!(help.contains(line), "{line} missing from --help");
    }
}

#[test]
fn lifecycle_verbs_change_state_and_print_what_happened() {
    let daemon = daemon_with_two_vms();
    let steps: [(&[&str], &str, VmState); 5] = [
        (&["start", "database"], "Started database.\n", VmState::Running),
        (&["suspend", "database"], "Suspended database.\n", VmState::Paused),
        (&["resume", "database"], "Resumed database.\n", VmState::Running),
        (&["reboot", "database"], "Rebooted database.\n", VmState::Running),
        (
            &["shutdown", "database", "--timeout", "7"],
            "Shutdown requested for database.\n",
            VmState::ShutOff,
        ),
    ];
    for (args, said, state) in steps {
        assert_eq!(ok(&daemon, args), said);
        assert_eq!(daemon.state_of("database"), Some(state), "after {args:?}");
    }
    assert!(daemon.requests().iter().any(|r| r.path == "/v1/vms/database/shutdown?timeout_s=7"));
    assert_eq!(ok(&daemon, &["destroy", "web1"]), "Destroyed web1.\n");
    assert_eq!(daemon.state_of("web1"), Some(VmState::ShutOff));
    assert_eq!(ok(&daemon, &["undefine", "database"]), "Undefined database.\n");
    assert_eq!(daemon.state_of("database"), None);
}

#[test]
fn lifecycle_verbs_print_the_vm_as_json_even_when_the_answer_is_empty() {
    let daemon = daemon_with_two_vms();
    let info: VmInfo =
        serde_json::from_str(&ok(&daemon, &["--json", "start", "database"])).unwrap();
    assert_eq!(info.state, VmState::Running);
    // The mock answers 204 to reboot and destroy: the CLI fetches the VM instead.
    let info: VmInfo =
        serde_json::from_str(&ok(&daemon, &["--json", "reboot", "database"])).unwrap();
    assert_eq!(info.state, VmState::Running);
    let info: VmInfo =
        serde_json::from_str(&ok(&daemon, &["--json", "destroy", "database"])).unwrap();
    assert_eq!(info.state, VmState::ShutOff);
    let gone: serde_json::Value =
        serde_json::from_str(&ok(&daemon, &["--json", "undefine", "database"])).unwrap();
    assert_eq!(gone, serde_json::json!({"name": "database", "undefined": true}));
}

#[test]
fn info_prints_key_value_lines_or_json() {
    let daemon = daemon_with_two_vms();
    let uuid = daemon.definition("web1").unwrap().uuid.unwrap();
    assert_eq!(
        ok(&daemon, &["info", "web1"]),
        format!(
            "Name:      web1\nUUID:      {uuid}\nState:     running\nPID:       4242\n\
             CPUs:      2\nMemory:    1 GiB\nAutostart: yes\n"
        )
    );
    let info: VmInfo = serde_json::from_str(&ok(&daemon, &["info", "web1", "--json"])).unwrap();
    assert_eq!(info.uuid, uuid);
}

#[test]
fn stats_prints_tables_or_json() {
    let daemon = MockDaemon::start();
    let mut def = sample_definition("s");
    def.disks.push(ironvirt_mock_daemon_disk());
    daemon.add_vm(def, VmState::Running);
    let text = ok(&daemon, &["stats", "s"]);
    assert!(
        text.starts_with("Uptime:  1m 1s\nReboots: 1\nSerial:  4 KiB out, 12 B in\n"),
        "{text}"
    );
    assert!(
        text.contains("vCPU  Exits  CPU time\n0     1000   2.50s\n1     1001   2.50s\n"),
        "{text}"
    );
    assert!(text.contains("vda     10        40 KiB  2          8 KiB"), "{text}");
    let counters: VmCounters =
        serde_json::from_str(&ok(&daemon, &["--json", "stats", "s"])).unwrap();
    assert_eq!(counters.vcpus.len(), 2);
    assert_eq!(counters.uptime_ms, 61_000);
}

fn ironvirt_mock_daemon_disk() -> ironvirt_api_types::DiskSpec {
    ironvirt_api_types::DiskSpec { path: "/img/s.raw".into(), format: None, readonly: false }
}

#[test]
fn autostart_on_and_off() {
    let daemon = daemon_with_two_vms();
    assert_eq!(ok(&daemon, &["autostart", "database", "on"]), "Autostart of database is on.\n");
    assert!(daemon.definition("database").unwrap().autostart);
    let info: VmInfo =
        serde_json::from_str(&ok(&daemon, &["--json", "autostart", "database", "off"])).unwrap();
    assert!(!info.autostart);
    assert_eq!(code(&run(&daemon, &["autostart", "database", "maybe"])), 2);
    fails(&daemon, &["autostart", "ghost", "on"], 4);
}

#[test]
fn dump_then_define_round_trips_byte_for_byte() {
    let daemon = MockDaemon::start();
    ok(
        &daemon,
        &[
            "create",
            "rt",
            "--cpus",
            "2",
            "--memory",
            "2G",
            "--kernel",
            "/boot/k",
            "--cmdline",
            "console=ttyS0 \"quoted\"",
            "--disk",
            "path=/img/rt.qcow2,format=qcow2",
            "--net",
            "tap=tap9",
            "--vsock",
            "cid=9",
        ],
    );
    let dumped = ok(&daemon, &["dump", "rt"]);
    assert!(dumped.contains("name = \"rt\"") && dumped.contains("[boot]"), "{dumped}");
    let file = daemon.path("rt.toml");
    std::fs::write(&file, &dumped).unwrap();
    ok(&daemon, &["undefine", "rt"]);
    let out = ok(&daemon, &["define", file.to_str().unwrap()]);
    assert!(out.starts_with("Defined rt ("), "{out}");
    assert_eq!(ok(&daemon, &["dump", "rt"]), dumped);
    let def: VmDefinition = serde_json::from_str(&ok(&daemon, &["--json", "dump", "rt"])).unwrap();
    assert_eq!(def.vsock.unwrap().cid, 9);

    // Defining it again conflicts, unless --replace.
    fails(&daemon, &["define", file.to_str().unwrap()], 5);
    std::fs::write(&file, dumped.replace("cpus = 2", "cpus = 3")).unwrap();
    ok(&daemon, &["define", "--replace", file.to_str().unwrap()]);
    assert_eq!(daemon.definition("rt").unwrap().cpus, 3);
}

#[test]
fn define_rejects_bad_files_with_exit_6_and_a_position() {
    let daemon = MockDaemon::start();
    let file = daemon.path("bad.toml");
    std::fs::write(
        &file,
        "name = \"x\"\ncpus = 1\nmemory = \"1G\"\ncolour = \"red\"\n[boot]\nkernel = \"/k\"\n",
    )
    .unwrap();
    let msg = fails(&daemon, &["define", file.to_str().unwrap()], 6);
    assert!(msg.contains("bad.toml:") && msg.contains("colour"), "{msg}");
    assert!(daemon.requests().is_empty(), "nothing sent for an unparsable file");

    std::fs::write(&file, "name = \"x\"\ncpus = 0\nmemory = \"1G\"\n[boot]\nkernel = \"/k\"\n")
        .unwrap();
    let msg = fails(&daemon, &["define", file.to_str().unwrap()], 6);
    assert!(msg.contains("cpus"), "{msg}");
    fails(&daemon, &["define", daemon.path("absent.toml").to_str().unwrap()], 1);
}

/// Writes an executable editor script and returns its path.
fn editor(daemon: &MockDaemon, body: &str) -> String {
    let path = daemon.path("editor.sh");
    std::fs::write(&path, format!("#!/bin/sh\nset -e\n{body}\n")).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).unwrap();
    path.to_str().unwrap().to_owned()
}

fn edit(daemon: &MockDaemon, editor: &str, answers: &str) -> std::process::Output {
    let mut child = command(daemon)
        .args(["edit", "web1"])
        .env("EDITOR", editor)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(answers.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn edit_applies_the_edited_definition_with_put() {
    let daemon = daemon_with_two_vms();
    let script = editor(&daemon, "sed -i 's/^cpus = 2$/cpus = 6/' \"$1\"");
    let out = edit(&daemon, &script, "");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "Updated web1; applies at the next start.\n");
    assert_eq!(daemon.definition("web1").unwrap().cpus, 6);
    assert!(daemon
        .requests()
        .iter()
        .any(|r| r.method == "PUT" && r.path == "/v1/vms/web1/definition"));
}

#[test]
fn edit_without_changes_sends_nothing() {
    let daemon = daemon_with_two_vms();
    let out = edit(&daemon, "true", "");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "No changes to web1.\n");
    assert!(!daemon.requests().iter().any(|r| r.method == "PUT"));
}

#[test]
fn edit_offers_to_re_edit_after_a_validation_error() {
    let daemon = daemon_with_two_vms();
    // First round: an invalid memory size (422); second round: fix it and change cpus.
    let count = daemon.path("rounds");
    let script = editor(
        &daemon,
        &format!(
            "echo x >> {c}\nif [ $(wc -l < {c}) -eq 1 ]; then sed -i 's/^memory = .*/memory = \"lots\"/' \"$1\"; \
             else sed -i -e 's/^memory = .*/memory = \"2G\"/' -e 's/^cpus = 2$/cpus = 3/' \"$1\"; fi",
            c = count.display()
        ),
    );
    let out = edit(&daemon, &script, "y\n");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("ironvirt: error: Invalid memory size \"lots\""), "{err}");
    assert!(err.contains("Edit again? [Y/n]"), "{err}");
    let def = daemon.definition("web1").unwrap();
    assert_eq!((def.cpus, def.memory.as_str()), (3, "2G"));
}

#[test]
fn edit_keeps_the_file_when_the_user_gives_up() {
    let daemon = daemon_with_two_vms();
    let script = editor(&daemon, "printf 'cpus = \"many\"\\n' >> \"$1\"");
    let out = edit(&daemon, &script, "n\n");
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    let err = stderr(&out);
    let last = err.lines().last().unwrap();
    let kept = last
        .strip_prefix("ironvirt: error: Edit abandoned; your edits are kept in ")
        .unwrap_or_else(|| panic!("no kept path in {err}"));
    assert_eq!(err.lines().count(), 3, "error, prompt, abandon notice: {err}");
    assert!(err.starts_with("ironvirt: error: /") && err.contains(".toml:"), "{err}");
    let text = std::fs::read_to_string(kept).unwrap();
    std::fs::remove_file(kept).unwrap();
    assert!(text.ends_with("cpus = \"many\"\n"), "{text}");
    assert_eq!(daemon.definition("web1").unwrap().cpus, 2, "nothing applied");
}

#[test]
fn completions_print_a_script() {
    let daemon = MockDaemon::start();
    let bash = ok(&daemon, &["completions", "bash"]);
    assert!(bash.contains("_ironvirt()") && bash.contains("complete -F"), "{bash}");
    assert!(bash.contains("console") && bash.contains("--connect"));
    let zsh = ok(&daemon, &["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef ironvirt"));
    assert!(daemon.requests().is_empty(), "completions need no daemon");
}

#[test]
fn tcp_uses_the_token_from_file_or_environment() {
    let daemon = MockDaemon::start_tcp("sesame");
    daemon.add_vm(sample_definition("t"), VmState::Running);
    let token = daemon.path("token");
    std::fs::write(&token, "sesame\n").unwrap();
    let out = ok(&daemon, &["--token-file", token.to_str().unwrap(), "list"]);
    assert!(out.contains("t     running"), "{out}");
    let out =
        command(&daemon).args(["info", "t"]).env("IRONVIRT_TOKEN", "sesame").output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let msg = fails(&daemon, &["list"], 1);
    assert_eq!(msg, "Missing or wrong bearer token");
    assert_eq!(daemon.requests()[0].authorization.as_deref(), Some("Bearer sesame"));
}
