//! `ironvirtd`: the ironvirt management daemon. Parses arguments, installs logging, opens the
//! daemon core (re-adopting running VMs) and serves the API until SIGTERM or SIGINT, which stop
//! the daemon and leave every VM running.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ironvirt_daemon_core::{Config, Daemon};
use ironvirt_daemon_http::Token;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// The ironvirt management daemon: VMs by name over a REST API.
#[derive(Parser, Debug)]
#[command(name = "ironvirtd", version, about)]
struct Args {
    /// State directory: definitions (vms/), runtime records and sockets (run/).
    #[arg(long, default_value = "/var/lib/ironvirt", value_name = "DIR")]
    state_dir: PathBuf,
    /// Per-VM VMM and console logs [default: <state-dir>/logs].
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// API Unix socket (mode 0660).
    #[arg(long, default_value = "/run/ironvirt/ironvirtd.sock", value_name = "PATH")]
    socket: PathBuf,
    /// Group owning the API socket.
    #[arg(long, value_name = "NAME")]
    socket_group: Option<String>,
    /// Also listen on TCP at ADDR (host:port); requires --token-file.
    #[arg(long, value_name = "ADDR", requires = "token_file")]
    tcp: Option<String>,
    /// File holding the bearer token TCP clients must send.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// The ironvirt-vmm binary [default: next to ironvirtd, else from PATH].
    #[arg(long, value_name = "PATH")]
    vmm: Option<PathBuf>,
    /// Seconds a started VMM may take to answer its control socket.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    start_timeout: u64,
    /// Print the OpenAPI document and exit.
    #[arg(long)]
    print_openapi: bool,
}

fn default_vmm() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("ironvirt-vmm")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("ironvirt-vmm"))
}

fn read_token(path: &Path) -> anyhow::Result<Token> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Cannot read the token file {}", path.display()))?;
    Token::new(&text).with_context(|| format!("The token file {} is empty", path.display()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_openapi {
        print!("{}", ironvirt_daemon_http::openapi_json());
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // Two workers are plenty for a control plane and keep the idle footprint small.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("Cannot start the async runtime")?;
    let result = runtime.block_on(run(args));
    // Do not wait for lingering console or SSE tasks; VMMs are separate processes.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn run(args: Args) -> anyhow::Result<()> {
    let token = args.token_file.as_deref().map(read_token).transpose()?;
    let vmm = args.vmm.clone().unwrap_or_else(default_vmm);
    let mut cfg = Config::new(&args.state_dir, args.log_dir.as_deref(), &vmm);
    cfg.start_timeout = Duration::from_secs(args.start_timeout.max(1));
    let listener =
        ironvirt_daemon_http::bind_unix(&args.socket, args.socket_group.as_deref()).await?;
    let daemon: Arc<Daemon> = Daemon::open(cfg).await.context("Cannot open the state directory")?;
    daemon.start_background();
    tracing::info!(socket = %args.socket.display(), vmm = %vmm.display(), "ironvirtd ready");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let router = ironvirt_daemon_http::router(daemon.clone());
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(ironvirt_daemon_http::serve_unix(
        listener,
        router.clone(),
        stopped(stop_rx.clone()),
    ));
    if let (Some(addr), Some(token)) = (args.tcp.clone(), token) {
        tracing::info!(addr, "listening on TCP (bearer token required)");
        servers.spawn(async move {
            ironvirt_daemon_http::serve_tcp(&addr, token, router, stopped(stop_rx)).await
        });
    }

    let mut term = signal(SignalKind::terminate()).context("Cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("Cannot handle SIGINT")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping; VMs keep running"),
        _ = int.recv() => tracing::info!("SIGINT: stopping; VMs keep running"),
        Some(res) = servers.join_next() => {
            res.context("Server task panicked")??;
        }
    }
    let _ = stop_tx.send(true);
    // Streams (console, events) never end on their own; give plain requests a moment.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}
