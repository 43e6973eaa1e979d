//! `ironvirt console` and `ironvirt events` (the streaming verbs) against the mock daemon,
//! with piped stdin and stdout as a script would use them.

mod support;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ironvirt_api_types::{Event, EventKind, VmState};
use ironvirt_mock_daemon::{sample_definition, MockDaemon};
use support::{child_stderr, command, fails, wait_exit, OutputWatch};

fn running(name: &str) -> MockDaemon {
    let daemon = MockDaemon::start();
    daemon.add_vm(sample_definition(name), VmState::Running);
    daemon
}

fn spawn(daemon: &MockDaemon, args: &[&str]) -> std::process::Child {
    command(daemon)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ironvirt")
}

#[test]
fn console_forwards_piped_input_prints_output_and_detaches_on_ctrl_close_bracket() {
    let daemon = running("con");
    let mut child = spawn(&daemon, &["console", "con"]);
    let mut watch = OutputWatch::new(&mut child);
    let mut stdin = child.stdin.take().unwrap();

    watch.wait_for("[scrollback] con booted");
    stdin.write_all(b"uname -a\n").unwrap();
    stdin.flush().unwrap();
    watch.wait_for("login: uname -a\n");
    // Bytes before the escape in the same chunk still go out; nothing after it does.
    stdin.write_all(b"ls\x1dnever-sent").unwrap();
    stdin.flush().unwrap();

    assert_eq!(wait_exit(&mut child), 0, "{}", child_stderr(&mut child));
    drop(stdin);
    assert_eq!(daemon.console_input(), b"uname -a\nls");
    assert_eq!(daemon.state_of("con"), Some(VmState::Running), "detaching keeps the VM");
    assert_eq!(child_stderr(&mut child), "", "no banner without a terminal");
}

#[test]
fn console_keeps_printing_after_stdin_eof_until_the_vm_stops() {
    let daemon = running("halt");
    let mut child = spawn(&daemon, &["console", "halt"]);
    let watch = OutputWatch::new(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"poweroff\n").unwrap();
    drop(stdin); // EOF right away: the session must go on until the VM stops

    assert_eq!(wait_exit(&mut child), 0, "{}", child_stderr(&mut child));
    let text = watch.rest();
    assert!(text.starts_with("[scrollback] halt booted"), "{text:?}");
    assert!(text.contains("poweroff\n") && text.ends_with("reboot: Power down\r\n"), "{text:?}");
    assert_eq!(daemon.state_of("halt"), Some(VmState::ShutOff));
}

#[test]
fn console_timeout_detaches_with_success() {
    let daemon = running("slow");
    let started = Instant::now();
    let mut child = command(&daemon)
        .args(["console", "slow", "--timeout", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let watch = OutputWatch::new(&mut child);
    assert_eq!(wait_exit(&mut child), 0, "{}", child_stderr(&mut child));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "left after {waited:?}");
    assert!(watch.rest().contains("[scrollback] slow booted"));
    assert_eq!(daemon.state_of("slow"), Some(VmState::Running));
}

#[test]
fn console_refusals_exit_with_not_found_and_conflict() {
    let daemon = MockDaemon::start();
    daemon.add_vm(sample_definition("off"), VmState::ShutOff);
    assert_eq!(fails(&daemon, &["console", "nope"], 4), "No VM named nope");
    assert_eq!(fails(&daemon, &["console", "off"], 5), "VM off is not running");
}

#[test]
fn events_prints_each_event_as_it_arrives() {
    let daemon = MockDaemon::start();
    daemon.push_event("web1", EventKind::Started, VmState::Running);
    daemon.push_event("web1", EventKind::ShutdownRequested, VmState::ShuttingDown);
    daemon.set_events_hold_open(true);
    let mut child = spawn(&daemon, &["events"]);
    let mut watch = OutputWatch::new(&mut child);
    // The stream stays open: the lines must be flushed as they come, not at exit.
    let text = watch.wait_for("shutdown-requested");
    assert_eq!(
        text,
        "2026-01-01T00:00:00Z web1 started (running)\n\
         2026-01-01T00:00:01Z web1 shutdown-requested (shutting down)\n"
    );
    assert!(child.try_wait().unwrap().is_none(), "still following the stream");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn events_json_prints_one_api_event_per_line_and_ends_with_the_stream() {
    let daemon = MockDaemon::start();
    daemon.push_event("a", EventKind::Defined, VmState::ShutOff);
    daemon.push_event("b", EventKind::Crashed, VmState::Crashed);
    let output = command(&daemon).args(["--json", "events"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let events: Vec<Event> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!((events[1].vm.as_str(), events[1].kind), ("b", EventKind::Crashed));
}

/// Under a real pseudo-terminal (util-linux `script`): raw mode while attached (Ctrl-C goes to
/// the guest instead of killing us), and the terminal settings restored after Ctrl-].
#[test]
fn console_on_a_terminal_uses_raw_mode_and_restores_it_on_detach() {
    let daemon = running("tty");
    let ironvirt = env!("CARGO_BIN_EXE_ironvirt");
    let inner = format!(
        "stty -a | tr -d '\\n'; echo; {ironvirt} --connect {} console tty; echo \"rc=$?\"; stty -a | tr -d '\\n'; echo",
        daemon.endpoint()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qfec", &inner, "/dev/null"])
        .env_remove("IRONVIRT_CONNECT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux `script` is needed for this test (apt-get install bsdutils)");
    let mut watch = OutputWatch::new(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    watch.wait_for("Escape character is ^]");
    watch.wait_for("[scrollback] tty booted");
    stdin.write_all(b"\x03x").unwrap();
    stdin.flush().unwrap();
    watch.wait_for("login: \u{3}x");
    stdin.write_all(b"\x1d").unwrap();
    stdin.flush().unwrap();
    watch.wait_for("rc=0");
    let text = watch.rest();
    assert_eq!(wait_exit(&mut child), 0);

    assert_eq!(daemon.console_input(), b"\x03x", "Ctrl-C reached the guest");
    assert_eq!(daemon.state_of("tty"), Some(VmState::Running));
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("speed")).collect();
    assert_eq!(lines.len(), 2, "two stty reports expected in {text:?}");
    let settings = |line: &str| -> Vec<String> {
        line.split([';', ' ']).map(str::trim).filter(|w| !w.is_empty()).map(str::to_owned).collect()
    };
    assert_eq!(settings(lines[0]), settings(lines[1]), "terminal settings restored");
    assert!(settings(lines[1]).contains(&"icanon".to_owned()), "{}", lines[1]);
    assert!(text.contains("Detached from tty."), "{text:?}");
}
