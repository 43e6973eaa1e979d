//! Human output: aligned tables, key: value blocks, sizes and durations.

use ironvirt_api_types::{Event, EventKind, VmCounters, VmInfo, VmState};

/// The word a user sees for a state (virsh style).
pub fn state_word(state: VmState) -> &'static str {
    match state {
        VmState::ShutOff => "shut off",
        VmState::Starting => "starting",
        VmState::Running => "running",
        VmState::Paused => "paused",
        VmState::ShuttingDown => "shutting down",
        VmState::Crashed => "crashed",
    }
}

fn kind_word(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Defined => "defined",
        EventKind::Updated => "updated",
        EventKind::Undefined => "undefined",
        EventKind::Started => "started",
        EventKind::Suspended => "suspended",
        EventKind::Resumed => "resumed",
        EventKind::Rebooted => "rebooted",
        EventKind::ShutdownRequested => "shutdown-requested",
        EventKind::Stopped => "stopped",
        EventKind::Destroyed => "destroyed",
        EventKind::Crashed => "crashed",
        EventKind::Adopted => "adopted",
    }
}

/// `1 GiB`, `512 MiB`, `1.5 GiB`, `100 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut value = n as f64;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `1h 2m 3s`, `4.2s`.
pub fn duration_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h {m}m {s}s")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{}.{}s", s, ms % 1000 / 100)
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Left-aligned columns separated by two spaces; no trailing spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(&format!("{cell:<w$}"));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `key: value` lines with the values aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    pairs.iter().map(|(k, v)| format!("{:<width$} {v}\n", format!("{k}:"))).collect()
}

/// The `list` table.
pub fn vm_table(vms: &[VmInfo]) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|vm| {
            vec![
                vm.name.clone(),
                state_word(vm.state).to_owned(),
                vm.cpus.to_string(),
                bytes(vm.memory_bytes),
                yes_no(vm.autostart).to_owned(),
            ]
        })
        .collect();
    table(&["Name", "State", "CPUs", "Memory", "Autostart"], &rows)
}

/// The `info` block.
pub fn vm_info(vm: &VmInfo) -> String {
    let mut pairs = vec![
        ("Name", vm.name.clone()),
        ("UUID", vm.uuid.to_string()),
        ("State", state_word(vm.state).to_owned()),
    ];
    if let Some(pid) = vm.pid {
        pairs.push(("PID", pid.to_string()));
    }
    pairs.push(("CPUs", vm.cpus.to_string()));
    pairs.push(("Memory", bytes(vm.memory_bytes)));
    pairs.push(("Autostart", yes_no(vm.autostart).to_owned()));
    if let Some(exit) = &vm.last_exit {
        let mut how = exit.reason.clone();
        if let Some(code) = exit.code {
            how.push_str(&format!(" (exit code {code})"));
        }
        if let Some(signal) = exit.signal {
            how.push_str(&format!(" (signal {signal})"));
        }
        how.push_str(&format!(" at {}", exit.at));
        pairs.push(("Last exit", how));
    }
    key_values(&pairs)
}

/// The `stats` report: a summary block, then vCPU and device tables.
pub fn vm_stats(c: &VmCounters) -> String {
    let mut out = key_values(&[
        ("Uptime", duration_ms(c.uptime_ms)),
        ("Reboots", c.reboots.to_string()),
        ("Serial", format!("{} out, {} in", bytes(c.serial.tx_bytes), bytes(c.serial.rx_bytes))),
    ]);
    let vcpus: Vec<Vec<String>> = c
        .vcpus
        .iter()
        .map(|v| {
            vec![
                v.id.to_string(),
                v.exits.to_string(),
                format!("{:.2}s", v.cpu_time_ns as f64 / 1e9),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(&["vCPU", "Exits", "CPU time"], &vcpus));
    let devices: Vec<Vec<String>> = c
        .disks
        .iter()
        .chain(&c.nics)
        .map(|d| {
            vec![
                d.name.clone(),
                d.read_ops.to_string(),
                bytes(d.read_bytes),
                d.write_ops.to_string(),
                bytes(d.write_bytes),
            ]
        })
        .collect();
    if !devices.is_empty() {
        out.push('\n');
        out.push_str(&table(&["Device", "Read ops", "Read", "Write ops", "Written"], &devices));
    }
    out
}

/// One `events` line: `AT VM KIND STATE [DETAIL]`.
pub fn event_line(e: &Event) -> String {
    let mut line = format!("{} {} {} ({})", e.at, e.vm, kind_word(e.kind), state_word(e.state));
    if let Some(detail) = &e.detail {
        line.push_str(": ");
        line.push_str(detail);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(512 << 20), "512 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(bytes(2 << 40), "2 TiB");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(duration_ms(4_250), "4.2s");
        assert_eq!(duration_ms(61_000), "1m 1s");
        assert_eq!(duration_ms(3_723_000), "1h 2m 3s");
    }

    #[test]
    fn tables_align_columns_without_trailing_space() {
        let t = table(
            &["Name", "State"],
            &[vec!["a".into(), "running".into()], vec!["longer".into(), "x".into()]],
        );
        assert_eq!(t, "Name    State\na       running\nlonger  x\n");
    }

    #[test]
    fn key_values_align() {
        assert_eq!(key_values(&[("A", "1".into()), ("Long", "2".into())]), "A:    1\nLong: 2\n");
    }
}
