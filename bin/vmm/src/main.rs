//! `ironvirt-vmm`: runs one VM in this process. Parses the command line, installs the logger
//! and signal mask, and hands over to the `ironvirt-vmm` library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ironvirt_arch::{BootProtocol, CpuTemplate};
use ironvirt_vmm::{
    parse_size, DiskConfig, ExitReason, NetConfig, SerialConfig, VmConfig, VsockConfig,
};

/// Exit code for a bad command line (clap's convention).
const EXIT_USAGE: u8 = 2;
/// Exit code for a VMM error.
const EXIT_ERROR: u8 = 1;

const EXIT_CODES: &str = "Exit codes: 0 guest powered off, 1 VMM error, 2 bad command line, \
3 guest reset with --no-reboot, 4 guest panic (pvpanic), 5 vCPU failure (e.g. an instruction \
KVM cannot emulate), 128+N killed by signal N.";

/// Boot a kernel in a KVM virtual machine.
#[derive(Parser, Debug)]
#[command(name = "ironvirt-vmm", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// Kernel image: ELF vmlinux (PVH or 64-bit entry) or bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Initramfs (cpio archive, optionally compressed as the kernel supports).
    #[arg(long, value_name = "PATH")]
    initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0", value_name = "STRING")]
    cmdline: String,
    /// Number of vCPUs (1-64).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    cpus: u32,
    /// Guest memory: a number with K, M, G or T (binary units); a bare number is MiB.
    #[arg(long, default_value = "512M", value_name = "SIZE", value_parser = parse_memory)]
    memory: u64,
    /// CPU features shown to the guest: `host` (all KVM supports) or `portable` (hides
    /// cx16, popcnt, XSAVE/AVX, SMAP and friends; needed on software-virtualized KVM).
    #[arg(long, default_value = "host", value_name = "NAME")]
    cpu_template: CpuTemplate,
    /// Boot protocol for ELF kernels: auto (PVH if the kernel has the note), linux or pvh.
    #[arg(long, default_value = "auto", value_name = "NAME")]
    boot_protocol: BootProtocol,
    /// Serial console: stdio, none, file=PATH or socket=PATH.
    #[arg(long, default_value = "stdio", value_name = "BACKEND")]
    serial: SerialConfig,
    /// Exit with code 3 when the guest resets, instead of rebooting it.
    #[arg(long)]
    no_reboot: bool,
    /// Attach a virtio-rng entropy device (virtio-pci).
    #[arg(long)]
    rng: bool,
    /// A virtio-blk disk: path=P[,format=raw|qcow2][,readonly=on][,direct=on][,serial=S][,backing=on]
    /// (the format is never probed; a qcow2 backing file is opened only with backing=on).
    #[arg(long, value_name = "OPTIONS")]
    disk: Vec<DiskConfig>,
    /// A virtio-net NIC on a TAP device: tap=NAME[,mac=52:54:00:12:34:56].
    #[arg(long, value_name = "OPTIONS")]
    net: Vec<NetConfig>,
    /// virtio-vsock: cid=N,socket=PATH (host connects to PATH and writes "CONNECT <port>\n";
    /// guest connections to host port P go to PATH_P).
    #[arg(long, value_name = "OPTIONS")]
    vsock: Option<VsockConfig>,
    /// Attach a virtio-balloon (target set through the control API).
    #[arg(long)]
    balloon: bool,
    /// Serve the per-VM control API (HTTP/JSON, docs/API.md) on this Unix socket.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// On exit, write {"code": N, "reason": "..."} to this file (for supervisors).
    #[arg(long, value_name = "PATH")]
    exit_file: Option<PathBuf>,
    /// Log level for VMM messages on stderr: error, warn, info, debug, trace.
    #[arg(long, default_value = "warn", value_name = "LEVEL", value_parser = parse_level)]
    log_level: log::LevelFilter,
}

fn parse_memory(s: &str) -> Result<u64, String> {
    let bytes = parse_size(s)?;
    if bytes < ironvirt_arch::memory::MIN_MEMORY {
        return Err("guest memory must be at least 16 MiB".into());
    }
    if bytes > ironvirt_arch::memory::MAX_MEMORY {
        return Err("guest memory must be at most 1 TiB".into());
    }
    if !bytes.is_multiple_of(4096) {
        return Err("guest memory must be a whole number of 4 KiB pages".into());
    }
    Ok(bytes)
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse().map_err(|_| format!("unknown log level '{s}' (error, warn, info, debug, trace)"))
}

/// Writes log records to stderr, one line each (with `\r` so they stay readable while the
/// terminal is in raw mode).
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // virtio-queue logs guest mistakes as errors, without rate limiting; a hostile guest
        // could flood stderr with them. Our devices report those cases (rate-limited) anyway.
        let level = if metadata.target().starts_with("virtio_queue") {
            log::Level::Debug.max(metadata.level())
        } else {
            metadata.level()
        };
        level <= log::max_level()
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let _ = write!(
                std::io::stderr().lock(),
                "ironvirt-vmm: {}: {}\r\n",
                record.level().as_str().to_lowercase(),
                record.args()
            );
        }
    }
    fn flush(&self) {}
}

/// Prints an error and its causes on one line.
fn report(err: &dyn std::error::Error) {
    eprint!("ironvirt-vmm: error: {}\r\n", ironvirt_vmm::error_chain(err));
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line naming the problem; clap's own text starts with "error: ".
            // clap continues some messages on indented lines (e.g. the missing arguments);
            // join everything before the first blank line.
            let text = e.to_string();
            let message: Vec<&str> =
                text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            let message = message.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            eprintln!("ironvirt-vmm: error: {message} (see --help)");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let _ = log::set_logger(&StderrLogger);
    log::set_max_level(cli.log_level);
    std::panic::set_hook(Box::new(|info| {
        ironvirt_sys_util::terminal::restore_terminal();
        eprint!("ironvirt-vmm: internal error (a bug): {info}\r\n");
    }));
    if let Err(e) = ironvirt_sys_util::signals::block_termination_signals() {
        report(&e);
        return ExitCode::from(EXIT_ERROR);
    }

    let cfg = VmConfig {
        kernel: cli.kernel,
        initramfs: cli.initramfs,
        cmdline: cli.cmdline,
        cpus: cli.cpus,
        memory: cli.memory,
        cpu_template: cli.cpu_template,
        boot_protocol: cli.boot_protocol,
        serial: cli.serial,
        no_reboot: cli.no_reboot,
        rng: cli.rng,
        disks: cli.disk,
        nets: cli.net,
        vsock: cli.vsock,
        balloon: cli.balloon,
        api_socket: cli.api_socket,
        exit_file: cli.exit_file,
    };
    match ironvirt_vmm::run(&cfg) {
        Ok(reason) => {
            match &reason {
                ExitReason::PowerOff => log::info!("guest powered off"),
                ExitReason::Reset => log::info!("guest reset (--no-reboot)"),
                ExitReason::GuestPanic => eprint!("ironvirt-vmm: guest panicked\r\n"),
                ExitReason::VcpuFailed(why) => eprint!("ironvirt-vmm: error: {why}\r\n"),
                ExitReason::Signal(sig) => log::info!("stopped by signal {sig}"),
            }
            ExitCode::from(reason.code() as u8)
        }
        Err(e) => {
            report(&e);
            ExitCode::from(EXIT_ERROR)
        }
    }
}
