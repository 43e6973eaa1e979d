//! `ironvirt`: the command line of ironvirtd (the virsh role). Parses arguments, talks to the
//! daemon through `ironvirt-client`, prints tables or JSON, and maps failures to the exit
//! codes documented in `--help` and docs/CLI.md. Links no VMM code; single-threaded tokio
//! runtime plus one thread reading stdin while a console is attached.
#![forbid(unsafe_code)]

mod args;
mod console;
mod definition;
mod output;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};
use ironvirt_api_types::{BootSpec, VmDefinition, VmInfo, VmState};
use ironvirt_client::{Action, Client, ClientError, Endpoint, ErrorKind};
use serde::Serialize;

use crate::args::{Cli, Command, CreateArgs, OnOff};
use crate::definition::InvalidDefinitionFile;

/// Exit codes scripts can rely on (also in `--help` and docs/CLI.md).
mod exit {
    pub const OTHER: u8 = 1;
    pub const UNREACHABLE: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const CONFLICT: u8 = 5;
    pub const INVALID: u8 = 6;
}

fn main() -> ExitCode {
    // clap exits with 2 on usage errors and 0 for --help/--version.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ironvirt: error: Cannot start the async runtime: {e}");
            return ExitCode::from(exit::OTHER);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ironvirt: error: {}", one_line(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The error chain on one line: `outer: cause: root cause`.
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(abandoned) = cause.downcast_ref::<definition::Abandoned>() {
            return abandoned.exit_code;
        }
        if let Some(client) = cause.downcast_ref::<ClientError>() {
            return match client.kind() {
                ErrorKind::Unreachable => exit::UNREACHABLE,
                ErrorKind::NotFound => exit::NOT_FOUND,
                ErrorKind::Conflict => exit::CONFLICT,
                ErrorKind::InvalidDefinition => exit::INVALID,
                ErrorKind::Unauthorized | ErrorKind::BadRequest | ErrorKind::Other => exit::OTHER,
            };
        }
        if cause.is::<InvalidDefinitionFile>() {
            return exit::INVALID;
        }
    }
    exit::OTHER
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes to stdout, failing (instead of panicking like `print!`) on a closed pipe.
fn out(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("Cannot write to stdout")
}

fn out_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("Cannot encode JSON")?;
    text.push('\n');
    out(&text)
}

fn client_for(cli: &Cli) -> Result<Client> {
    let endpoint: Endpoint = cli.connect.parse()?;
    let token = match &cli.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("Cannot read the token file {}", path.display()))?,
        ),
        None => std::env::var("IRONVIRT_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    let client = Client::new(endpoint);
    Ok(match token {
        Some(token) => client.with_token(&token)?,
        None => client,
    })
}

async fn run(cli: Cli) -> Result<()> {
    if let Command::Completions { shell } = &cli.command {
        let mut buf = Vec::new();
        clap_complete::generate(*shell, &mut Cli::command(), "ironvirt", &mut buf);
        return out(&String::from_utf8_lossy(&buf));
    }
    let client = client_for(&cli)?;
    let json = cli.json;
    match cli.command {
        Command::List { all } => {
            let mut vms = client.list().await?;
            if !all {
                vms.retain(|vm| !matches!(vm.state, VmState::ShutOff | VmState::Crashed));
            }
            vms.sort_by(|a, b| a.name.cmp(&b.name));
            if json {
                out_json(&vms)
            } else {
                out(&output::vm_table(&vms))
            }
        }
        Command::Create(create) => {
            let definition = definition_from_flags(*create, client.endpoint())?;
            defined(json, client.define(&definition).await?)
        }
        Command::Define { file, replace } => {
            let definition = definition::read_file(&file)?;
            let info = match client.define(&definition).await {
                Err(e) if replace && e.kind() == ErrorKind::Conflict => {
                    match client.info(&definition.name).await {
                        Ok(_) => client.redefine(&definition.name, &definition).await?,
                        Err(_) => return Err(e.into()),
                    }
                }
                other => other?,
            };
            defined(json, info)
        }
        Command::Dump { name } => {
            let definition = client.definition(&name).await?;
            if json {
                out_json(&definition)
            } else {
                out(&definition::to_toml(&definition))
            }
        }
        Command::Edit { name } => match definition::edit(&client, &name).await? {
            definition::EditOutcome::Unchanged => {
                let info = client.info(&name).await?;
                if json {
                    out_json(&info)
                } else {
                    out(&format!("No changes to {name}.\n"))
                }
            }
            definition::EditOutcome::Updated(info) => {
                if json {
                    out_json(&info)
                } else {
                    out(&format!("Updated {name}; applies at the next start.\n"))
                }
            }
        },
        Command::Undefine { name } => {
            client.undefine(&name).await?;
            if json {
                out_json(&serde_json::json!({ "name": name, "undefined": true }))
            } else {
                out(&format!("Undefined {name}.\n"))
            }
        }
        Command::Start { name } => act(&client, json, &name, Action::Start).await,
        Command::Shutdown { name, timeout } => {
            act(&client, json, &name, Action::Shutdown { timeout_s: timeout }).await
        }
        Command::Destroy { name } => act(&client, json, &name, Action::Destroy).await,
        Command::Suspend { name } => act(&client, json, &name, Action::Suspend).await,
        Command::Resume { name } => act(&client, json, &name, Action::Resume).await,
        Command::Reboot { name } => act(&client, json, &name, Action::Reboot).await,
        Command::Info { name } => {
            let info = client.info(&name).await?;
            if json {
                out_json(&info)
            } else {
                out(&output::vm_info(&info))
            }
        }
        Command::Stats { name } => {
            let stats = client.stats(&name).await?;
            if json {
                out_json(&stats)
            } else {
                out(&output::vm_stats(&stats))
            }
        }
        Command::Autostart { name, value } => {
            let on = value == OnOff::On;
            let info = match client.set_autostart(&name, on).await? {
                Some(info) => info,
                None => client.info(&name).await?,
            };
            if json {
                out_json(&info)
            } else {
                let word = if on { "on" } else { "off" };
                out(&format!("Autostart of {name} is {word}.\n"))
            }
        }
        Command::Console { name, timeout } => {
            console::run(&client, &name, timeout.map(Duration::from_secs)).await?;
            Ok(())
        }
        Command::Events => events(&client, json).await,
        Command::Completions { .. } => unreachable!("handled before connecting"),
    }
}

fn defined(json: bool, info: VmInfo) -> Result<()> {
    if json {
        out_json(&info)
    } else {
        out(&format!("Defined {} ({}).\n", info.name, info.uuid))
    }
}

/// Runs a lifecycle action; `--json` prints the VM afterwards (fetched when the answer has
/// no body).
async fn act(client: &Client, json: bool, name: &str, action: Action) -> Result<()> {
    let answer = client.action(name, action).await?;
    if json {
        let info = match answer {
            Some(info) => info,
            None => client.info(name).await?,
        };
        return out_json(&info);
    }
    let done = match action {
        Action::Start => "Started",
        Action::Shutdown { .. } => "Shutdown requested for",
        Action::Destroy => "Destroyed",
        Action::Suspend => "Suspended",
        Action::Resume => "Resumed",
        Action::Reboot => "Rebooted",
    };
    out(&format!("{done} {name}.\n"))
}

async fn events(client: &Client, json: bool) -> Result<()> {
    let mut stream = client.events().await?;
    while let Some(event) = stream.next().await? {
        let line = if json {
            serde_json::to_string(&event).context("Cannot encode JSON")?
        } else {
            output::event_line(&event)
        };
        out(&format!("{line}\n"))?;
    }
    Ok(())
}

/// Host paths given on a local daemon's command line are made absolute against our working
/// directory (the daemon's differs); over TCP they name files on the daemon's host, as is.
fn host_path(path: &Path, endpoint: &Endpoint) -> Result<String> {
    let path = match endpoint {
        Endpoint::Unix(_) => std::path::absolute(path)
            .with_context(|| format!("Cannot make {} absolute", path.display()))?,
        Endpoint::Tcp(_) => path.to_owned(),
    };
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("Path {} is not UTF-8", path.display()))
}

fn definition_from_flags(args: CreateArgs, endpoint: &Endpoint) -> Result<VmDefinition> {
    let mut disks = args.disk;
    for disk in &mut disks {
        disk.path = host_path(Path::new(&disk.path), endpoint)?;
    }
    Ok(VmDefinition {
        name: args.name,
        uuid: None,
        cpus: args.cpus,
        memory: args.memory,
        boot: BootSpec {
            kernel: host_path(&args.kernel, endpoint)?,
            initramfs: args.initramfs.map(|p| host_path(&p, endpoint)).transpose()?,
            cmdline: args.cmdline,
        },
        disks,
        nics: args.net,
        vsock: args.vsock,
        cpu_template: args.cpu_template,
        autostart: args.autostart,
    })
}
