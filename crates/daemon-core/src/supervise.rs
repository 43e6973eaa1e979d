//! Lifecycle operations that drive the VMM process: start, suspend/resume/reboot through its
//! control API, shutdown with a destroy fallback, destroy, statistics, the console, the
//! watchers that notice a VMM's end, and re-adoption after a daemon restart.

use std::sync::Arc;
use std::time::Duration;

use ironvirt_api_types::{EventKind, ExitInfo, VmCounters, VmInfo, VmState, VmmRunState};
use nix::sys::signal::Signal;
use tokio::sync::watch;

use crate::console::{Attachment, ConsoleHub};
use crate::daemon::{Daemon, Running, Vm};
use crate::error::DaemonError;
use crate::logs::{self, RotatingLog};
use crate::process::{self, ExitFile, LastRun, RuntimeRecord};
use crate::state::{exit_state, Action, ExitKind};
use crate::timefmt::now_rfc3339;
use crate::validate;
use crate::vmm_client::VmmClient;

/// Grace period between SIGTERM and SIGKILL on destroy.
pub const DESTROY_GRACE: Duration = Duration::from_secs(2);
/// How often a re-adopted VMM's pid is checked.
const ADOPTED_POLL: Duration = Duration::from_millis(250);

/// How a watcher learns that a VMM ended.
enum Watch {
    Child(tokio::process::Child),
    Adopted { pid: u32, api: std::path::PathBuf },
}

impl Daemon {
    fn client(&self, vm: &Vm) -> VmmClient {
        VmmClient::new(&vm.paths.api)
    }

    /// A console hub for `vm`; `resume_history` seeds the scrollback from the console log
    /// (re-adoption after a daemon restart), otherwise it starts empty.
    fn console_hub(&self, vm: &Vm, resume_history: bool) -> Arc<ConsoleHub> {
        let history = if resume_history {
            process::tail_bytes(&vm.paths.console_log, self.cfg.scrollback)
        } else {
            Vec::new()
        };
        let log = match RotatingLog::open(&vm.paths.console_log, self.cfg.log_limit) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(vm = vm.name, error = %e, "cannot open the console log");
                None
            }
        };
        Arc::new(ConsoleHub::start(
            vm.name.clone(),
            vm.paths.console.clone(),
            log,
            self.cfg.scrollback,
            history,
        ))
    }

    /// Starts a shut-off or crashed VM and waits until its VMM answers (`POST .../start`).
    pub async fn start(self: &Arc<Self>, name: &str) -> Result<VmInfo, DaemonError> {
        let vm = self.get(name)?;
        let _op = vm.op.lock().await;
        let (def, memory, generation) = {
            let mut i = vm.lock();
            Action::Start.apply(name, i.state)?;
            // Files may have gone since define.
            let memory = validate::validate(&i.def)?;
            i.generation += 1;
            i.state = VmState::Starting;
            (i.def.clone(), memory, i.generation)
        };
        let prepare = |path: &std::path::Path, cause| DaemonError::Prepare {
            vm: name.to_string(),
            path: path.to_path_buf(),
            cause,
        };
        for stale in [&vm.paths.exit, &vm.paths.api, &vm.paths.console, &vm.paths.record] {
            process::remove_quietly(stale);
        }
        if let Err(e) = logs::rotate_if_over(&vm.paths.log, self.cfg.log_limit) {
            tracing::warn!(vm = name, error = %e, "cannot rotate the VMM log");
        }
        let args = process::vmm_args(&def, memory, &vm.paths);
        let child = match process::spawn(&self.cfg.vmm, &args, &vm.paths.log) {
            Ok(c) => c,
            Err(cause) => {
                vm.lock().state = VmState::ShutOff;
                return Err(DaemonError::Spawn {
                    vm: name.into(),
                    vmm: self.cfg.vmm.clone(),
                    cause,
                });
            }
        };
        let pid = child.id().unwrap_or(0);
        let record = RuntimeRecord {
            pid,
            started_at: now_rfc3339(),
            vmm: self.cfg.vmm.clone(),
            api_socket: vm.paths.api.clone(),
            console_socket: vm.paths.console.clone(),
            exit_file: vm.paths.exit.clone(),
        };
        let record_result = process::write_json(&vm.paths.record, &record);
        let (exited_tx, exited) = watch::channel(false);
        vm.lock().run =
            Some(Running { pid, console: self.console_hub(&vm, false), destroying: false, exited });
        tokio::spawn(self.clone().watch(vm.clone(), generation, Watch::Child(child), exited_tx));
        if let Err(cause) = record_result {
            self.kill_and_wait(&vm).await.ok();
            return Err(prepare(&vm.paths.record, cause));
        }
        self.wait_until_up(&vm, generation).await?;
        let info = vm.info();
        self.emit(name, EventKind::Started, info.state, Some(format!("pid {pid}")));
        Ok(info)
    }

    /// Polls the VMM's ping until it answers, it dies, or the start timeout passes.
    async fn wait_until_up(&self, vm: &Arc<Vm>, generation: u64) -> Result<(), DaemonError> {
        let client = self.client(vm).with_timeout(Duration::from_secs(1));
        let deadline = tokio::time::Instant::now() + self.cfg.start_timeout;
        let mut delay = Duration::from_millis(2);
        let fail = |reason: String| DaemonError::StartFailed {
            vm: vm.name.clone(),
            reason,
            log: vm.paths.log.clone(),
        };
        loop {
            let gone_why = {
                let i = vm.lock();
                (i.generation != generation || i.run.is_none()).then(|| {
                    i.last_exit.as_ref().map_or("the VMM exited".to_string(), |e| e.reason.clone())
                })
            };
            if let Some(why) = gone_why {
                let tail = process::tail(&vm.paths.log, 300);
                return Err(fail(if tail.is_empty() { why } else { format!("{why}: {tail}") }));
            }
            if vm.paths.api.exists() && client.ping().await.is_ok() {
                let mut i = vm.lock();
                if i.generation == generation && i.state == VmState::Starting {
                    i.state = Action::BootComplete.apply(&vm.name, i.state)?;
                }
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                self.kill_and_wait(vm).await.ok();
                return Err(fail(format!(
                    "no answer on {} within {} ms",
                    vm.paths.api.display(),
                    self.cfg.start_timeout.as_millis()
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    /// Waits for a VMM to end and records how.
    async fn watch(
        self: Arc<Self>,
        vm: Arc<Vm>,
        generation: u64,
        how: Watch,
        done: watch::Sender<bool>,
    ) {
        let kind = match how {
            Watch::Child(mut child) => match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    match (status.code(), status.signal()) {
                        (Some(c), _) => ExitKind::Code(c),
                        (None, Some(s)) => ExitKind::Signal(s),
                        _ => ExitKind::Unknown,
                    }
                }
                Err(e) => {
                    tracing::error!(vm = vm.name, error = %e, "cannot wait for the VMM");
                    ExitKind::Unknown
                }
            },
            Watch::Adopted { pid, api } => {
                while process::pid_is_vmm(pid, &api) {
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
                ExitKind::Unknown
            }
        };
        self.record_exit(&vm, generation, kind);
        let _ = done.send(true);
    }

    /// Records the end of run `generation`: state, `last_exit`, files, event.
    fn record_exit(&self, vm: &Vm, generation: u64, kind: ExitKind) {
        let file = process::read_json::<ExitFile>(&vm.paths.exit);
        let kind = match (kind, &file) {
            (ExitKind::Unknown, Some(f)) => ExitKind::Code(f.code),
            (k, _) => k,
        };
        let mut i = vm.lock();
        if i.generation != generation {
            return;
        }
        let destroying = i.run.as_ref().is_some_and(|r| r.destroying);
        let (state, mapped) = exit_state(kind, destroying);
        let reason = match (&file, destroying) {
            (Some(f), false) if !f.reason.is_empty() => f.reason.clone(),
            _ => mapped.to_string(),
        };
        let (code, signal) = match kind {
            ExitKind::Code(c) => (Some(c), None),
            ExitKind::Signal(s) => (None, Some(s)),
            ExitKind::Unknown => (None, None),
        };
        let exit = ExitInfo { code, signal, reason: reason.clone(), at: now_rfc3339() };
        i.state = state;
        i.last_exit = Some(exit.clone());
        if let Some(run) = i.run.take() {
            run.console.stop();
        }
        drop(i);
        process::remove_quietly(&vm.paths.record);
        if let Err(e) = process::write_json(&vm.paths.last, &LastRun { state, exit }) {
            tracing::warn!(vm = vm.name, error = %e, "cannot record the last exit");
        }
        let event = match (state, destroying) {
            (VmState::Crashed, _) => EventKind::Crashed,
            (_, true) => EventKind::Destroyed,
            _ => EventKind::Stopped,
        };
        self.emit(&vm.name, event, state, Some(reason));
    }

    /// SIGTERM, SIGKILL after [`DESTROY_GRACE`], and waits for the watcher to record the end.
    async fn kill_and_wait(&self, vm: &Vm) -> Result<(), DaemonError> {
        let (pid, mut exited) = {
            let mut i = vm.lock();
            let Some(run) = i.run.as_mut() else { return Ok(()) };
            run.destroying = true;
            (run.pid, run.exited.clone())
        };
        let signal = |sig| match process::send_signal(pid, sig) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(cause) => Err(DaemonError::Signal { vm: vm.name.clone(), pid, cause }),
        };
        signal(Signal::SIGTERM)?;
        let gone = |rx: &mut watch::Receiver<bool>, t| {
            let mut rx = rx.clone();
            async move { tokio::time::timeout(t, rx.wait_for(|d| *d)).await.is_ok() }
        };
        if gone(&mut exited, DESTROY_GRACE).await {
            return Ok(());
        }
        tracing::warn!(vm = vm.name, pid, "VMM ignored SIGTERM; sending SIGKILL");
        signal(Signal::SIGKILL)?;
        if gone(&mut exited, Duration::from_secs(5)).await {
            Ok(())
        } else {
            Err(DaemonError::Unkillable { vm: vm.name.clone(), pid })
        }
    }

    /// Kills the VMM of a VM (`POST .../destroy`).
    pub async fn destroy(&self, name: &str) -> Result<VmInfo, DaemonError> {
        let vm = self.get(name)?;
        let _op = vm.op.lock().await;
        Action::Destroy.apply(name, vm.lock().state)?;
        self.kill_and_wait(&vm).await?;
        Ok(vm.info())
    }

    /// Presses the power button and destroys the VM if it has not powered off after
    /// `timeout` (`POST .../shutdown`). Returns at once, in state shutting-down.
    pub async fn shutdown(
        self: &Arc<Self>,
        name: &str,
        timeout: Duration,
    ) -> Result<VmInfo, DaemonError> {
        let vm = self.get(name)?;
        let _op = vm.op.lock().await;
        let (next, generation) = {
            let i = vm.lock();
            (Action::Shutdown.apply(name, i.state)?, i.generation)
        };
        self.client(&vm)
            .put("power-button")
            .await
            .map_err(|cause| DaemonError::Vmm { vm: name.into(), cause })?;
        self.set_state_if(&vm, generation, next);
        self.emit(
            name,
            EventKind::ShutdownRequested,
            next,
            Some(format!("timeout {} s", timeout.as_secs())),
        );
        let d = self.clone();
        let vm2 = vm.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let _op = vm2.op.lock().await;
            let still = {
                let i = vm2.lock();
                i.generation == generation && i.state == VmState::ShuttingDown
            };
            if still {
                tracing::warn!(vm = vm2.name, "guest did not power off in time; destroying");
                if let Err(e) = d.kill_and_wait(&vm2).await {
                    tracing::error!(
                        vm = vm2.name,
                        error = e.chain(),
                        "destroy after shutdown timeout failed"
                    );
                }
            }
        });
        Ok(vm.info())
    }

    fn set_state_if(&self, vm: &Vm, generation: u64, state: VmState) {
        let mut i = vm.lock();
        if i.generation == generation && i.run.is_some() {
            i.state = state;
        }
    }

    /// Suspend, resume or reboot through the VMM API.
    async fn vmm_action(&self, name: &str, action: Action) -> Result<VmInfo, DaemonError> {
        let vm = self.get(name)?;
        let _op = vm.op.lock().await;
        let (next, generation) = {
            let i = vm.lock();
            (action.apply(name, i.state)?, i.generation)
        };
        let (verb, kind) = match action {
            Action::Suspend => ("pause", EventKind::Suspended),
            Action::Resume => ("resume", EventKind::Resumed),
            _ => ("reset", EventKind::Rebooted),
        };
        self.client(&vm)
            .put(verb)
            .await
            .map_err(|cause| DaemonError::Vmm { vm: name.into(), cause })?;
        self.set_state_if(&vm, generation, next);
        self.emit(name, kind, next, None);
        Ok(vm.info())
    }

    /// Pauses all vCPUs (`POST .../suspend`).
    pub async fn suspend(&self, name: &str) -> Result<VmInfo, DaemonError> {
        self.vmm_action(name, Action::Suspend).await
    }

    /// Resumes paused vCPUs (`POST .../resume`).
    pub async fn resume(&self, name: &str) -> Result<VmInfo, DaemonError> {
        self.vmm_action(name, Action::Resume).await
    }

    /// Hard-resets the guest (`POST .../reboot`).
    pub async fn reboot(&self, name: &str) -> Result<VmInfo, DaemonError> {
        self.vmm_action(name, Action::Reboot).await
    }

    /// The VMM's counters (`GET .../stats`). Not serialised with other requests: reading
    /// counters must not wait behind a shutdown.
    pub async fn stats(&self, name: &str) -> Result<VmCounters, DaemonError> {
        let vm = self.get(name)?;
        Action::Stats.apply(name, vm.lock().state)?;
        self.client(&vm)
            .counters()
            .await
            .map_err(|cause| DaemonError::Vmm { vm: name.into(), cause })
    }

    /// Attaches a console viewer.
    pub fn attach_console(&self, name: &str) -> Result<Attachment, DaemonError> {
        let vm = self.get(name)?;
        let i = vm.lock();
        Action::Console.apply(name, i.state)?;
        match &i.run {
            Some(run) => Ok(run.console.attach()),
            None => Err(Action::Console
                .apply(name, VmState::ShutOff)
                .expect_err("console is never allowed while shut off")
                .into()),
        }
    }

    /// Checks whether the console of `name` can be attached, without attaching.
    pub fn check_console(&self, name: &str) -> Result<(), DaemonError> {
        let vm = self.get(name)?;
        Action::Console.apply(name, vm.lock().state)?;
        Ok(())
    }

    /// On daemon start: re-adopts the VMM named by the runtime record of `vm` if it still runs
    /// and answers, or records how it ended and cleans up. Never kills anything.
    pub(crate) async fn recover(self: &Arc<Self>, vm: &Arc<Vm>) {
        let Some(record) = process::read_json::<RuntimeRecord>(&vm.paths.record) else { return };
        let generation = {
            let mut i = vm.lock();
            i.generation += 1;
            i.generation
        };
        if !process::pid_is_vmm(record.pid, &record.api_socket) {
            tracing::info!(vm = vm.name, pid = record.pid, "VMM ended while the daemon was away");
            let (exited, _) = watch::channel(false);
            vm.lock().run = Some(Running {
                pid: record.pid,
                console: self.console_hub(vm, false),
                destroying: false,
                exited: exited.subscribe(),
            });
            self.record_exit(vm, generation, ExitKind::Unknown);
            return;
        }
        let client = self.client(vm).with_timeout(Duration::from_secs(2));
        let state = match client.status().await {
            Ok(s) if s.state == VmmRunState::Paused => VmState::Paused,
            Ok(_) => VmState::Running,
            Err(e) => {
                // Alive but not answering: still never killed; shown running, watched by pid.
                tracing::warn!(vm = vm.name, pid = record.pid, error = %e, "re-adopted VMM does not answer");
                VmState::Running
            }
        };
        let (exited_tx, exited) = watch::channel(false);
        {
            let mut i = vm.lock();
            i.state = state;
            i.run = Some(Running {
                pid: record.pid,
                console: self.console_hub(vm, true),
                destroying: false,
                exited,
            });
        }
        let how = Watch::Adopted { pid: record.pid, api: record.api_socket.clone() };
        tokio::spawn(self.clone().watch(vm.clone(), generation, how, exited_tx));
        self.emit(&vm.name, EventKind::Adopted, state, Some(format!("pid {}", record.pid)));
    }
}
