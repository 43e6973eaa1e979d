//! The VM registry: definitions, per-VM state and serialisation, events. Lifecycle operations
//! that touch the VMM process are in `supervise`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use ironvirt_api_types::{Event, EventKind, ExitInfo, VmDefinition, VmInfo, VmState};
use tokio::sync::{broadcast, watch};

use crate::console::{ConsoleHub, DEFAULT_SCROLLBACK};
use crate::error::DaemonError;
use crate::logs::DEFAULT_LOG_LIMIT;
use crate::process::{self, LastRun, VmPaths};
use crate::state::Action;
use crate::store::DefinitionStore;
use crate::timefmt::now_rfc3339;
use crate::validate::{self, ValidationError};

/// Daemon settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// State directory: `vms/` (definitions) and `run/` (runtime records, sockets).
    pub state_dir: PathBuf,
    /// Per-VM logs.
    pub log_dir: PathBuf,
    /// The `ironvirt-vmm` binary.
    pub vmm: PathBuf,
    /// How long a started VMM may take to answer its first ping.
    pub start_timeout: Duration,
    /// Size above which logs rotate.
    pub log_limit: u64,
    /// Console scrollback per VM in bytes.
    pub scrollback: usize,
}

impl Config {
    /// Defaults for everything but the directories and the VMM path.
    pub fn new(state_dir: &Path, log_dir: Option<&Path>, vmm: &Path) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
            log_dir: log_dir.map_or_else(|| state_dir.join("logs"), Path::to_path_buf),
            vmm: vmm.to_path_buf(),
            start_timeout: Duration::from_secs(10),
            log_limit: DEFAULT_LOG_LIMIT,
            scrollback: DEFAULT_SCROLLBACK,
        }
    }
}

/// A running (or starting) VMM as the registry knows it.
pub(crate) struct Running {
    pub(crate) pid: u32,
    pub(crate) console: Arc<ConsoleHub>,
    /// Set by destroy, so the exit counts as requested.
    pub(crate) destroying: bool,
    /// Turns true once the watcher has recorded the exit.
    pub(crate) exited: watch::Receiver<bool>,
}

pub(crate) struct VmInner {
    pub(crate) def: VmDefinition,
    pub(crate) memory_bytes: u64,
    pub(crate) state: VmState,
    pub(crate) last_exit: Option<ExitInfo>,
    pub(crate) run: Option<Running>,
    /// Incremented per VMM process, so a stale watcher or timer cannot touch a newer run.
    pub(crate) generation: u64,
}

/// One VM: its serialisation lock and its state.
pub(crate) struct Vm {
    pub(crate) name: String,
    pub(crate) paths: VmPaths,
    /// Held for the whole of each request on this VM.
    pub(crate) op: tokio::sync::Mutex<()>,
    inner: Mutex<VmInner>,
}

impl Vm {
    pub(crate) fn lock(&self) -> MutexGuard<'_, VmInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn info(&self) -> VmInfo {
        let i = self.lock();
        VmInfo {
            name: self.name.clone(),
            uuid: i.def.uuid.unwrap_or_default(),
            state: i.state,
            pid: i.run.as_ref().map(|r| r.pid),
            cpus: i.def.cpus,
            memory_bytes: i.memory_bytes,
            autostart: i.def.autostart,
            last_exit: i.last_exit.clone(),
        }
    }
}

/// The daemon: every VM, its definition store and the event stream.
pub struct Daemon {
    pub(crate) cfg: Config,
    store: DefinitionStore,
    pub(crate) run_dir: PathBuf,
    vms: RwLock<BTreeMap<String, Arc<Vm>>>,
    /// Serialises definition changes, so uniqueness checks see a stable set.
    define_lock: tokio::sync::Mutex<()>,
    events: broadcast::Sender<Event>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

fn prepare_dir(path: &Path) -> Result<(), DaemonError> {
    std::fs::create_dir_all(path).map_err(|cause| DaemonError::Prepare {
        vm: String::new(),
        path: path.to_path_buf(),
        cause,
    })
}

impl Daemon {
    /// Opens the state directory, loads every definition and re-adopts the VMMs that still
    /// run (see `supervise`). Starts nothing; call [`Daemon::start_background`] next.
    pub async fn open(cfg: Config) -> Result<Arc<Self>, DaemonError> {
        let run_dir = cfg.state_dir.join("run");
        prepare_dir(&run_dir)?;
        prepare_dir(&cfg.log_dir)?;
        let store = DefinitionStore::open(&cfg.state_dir.join("vms"))?;
        let (events, _) = broadcast::channel(1024);
        let daemon = Arc::new(Self {
            cfg,
            store,
            run_dir,
            vms: RwLock::new(BTreeMap::new()),
            define_lock: tokio::sync::Mutex::new(()),
            events,
        });
        for def in daemon.store.load_all()? {
            let memory_bytes = crate::size::parse_memory(&def.memory).unwrap_or(0);
            let vm = daemon.new_vm(def, memory_bytes);
            if let Some(last) = process::read_json::<LastRun>(&vm.paths.last) {
                let mut i = vm.lock();
                i.state = last.state;
                i.last_exit = Some(last.exit);
            }
            daemon.insert(vm.clone());
            daemon.recover(&vm).await;
        }
        Ok(daemon)
    }

    fn new_vm(&self, def: VmDefinition, memory_bytes: u64) -> Arc<Vm> {
        Arc::new(Vm {
            name: def.name.clone(),
            paths: VmPaths::new(&self.run_dir, &self.cfg.log_dir, &def.name),
            op: tokio::sync::Mutex::new(()),
            inner: Mutex::new(VmInner {
                def,
                memory_bytes,
                state: VmState::ShutOff,
                last_exit: None,
                run: None,
                generation: 0,
            }),
        })
    }

    fn insert(&self, vm: Arc<Vm>) {
        self.vms.write().unwrap_or_else(|p| p.into_inner()).insert(vm.name.clone(), vm);
    }

    /// Settings in use.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub(crate) fn get(&self, name: &str) -> Result<Arc<Vm>, DaemonError> {
        self.vms
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| DaemonError::NotFound(name.to_string()))
    }

    pub(crate) fn all(&self) -> Vec<Arc<Vm>> {
        self.vms.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Subscribes to lifecycle events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub(crate) fn emit(&self, vm: &str, kind: EventKind, state: VmState, detail: Option<String>) {
        tracing::info!(vm, ?kind, ?state, detail = detail.as_deref().unwrap_or(""), "event");
        let _ =
            self.events.send(Event { at: now_rfc3339(), vm: vm.to_string(), kind, state, detail });
    }

    /// Every VM, sorted by name.
    pub fn list(&self) -> Vec<VmInfo> {
        self.all().iter().map(|vm| vm.info()).collect()
    }

    /// One VM.
    pub fn info(&self, name: &str) -> Result<VmInfo, DaemonError> {
        Ok(self.get(name)?.info())
    }

    /// The stored definition of a VM.
    pub fn definition(&self, name: &str) -> Result<VmDefinition, DaemonError> {
        Ok(self.get(name)?.lock().def.clone())
    }

    /// The file the definition of `name` is stored in.
    pub fn definition_path(&self, name: &str) -> PathBuf {
        self.store.path(name)
    }

    /// Validates and completes a definition (UUID, MACs) against every VM but `except`.
    fn prepare(
        &self,
        mut def: VmDefinition,
        except: Option<&str>,
    ) -> Result<(VmDefinition, u64), DaemonError> {
        let memory = validate::validate(&def)?;
        if def.uuid.is_none() {
            def.uuid = Some(uuid::Uuid::new_v4());
        }
        for nic in &mut def.nics {
            if nic.mac.is_none() {
                let b = *uuid::Uuid::new_v4().as_bytes();
                nic.mac = Some(format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2]));
            }
        }
        let others: Vec<VmDefinition> = self
            .all()
            .iter()
            .filter(|vm| Some(vm.name.as_str()) != except)
            .map(|vm| vm.lock().def.clone())
            .collect();
        validate::check_conflicts(&def, &others)?;
        Ok((def, memory))
    }

    /// Defines a new VM (`POST /v1/vms`).
    pub async fn define(&self, def: VmDefinition) -> Result<VmInfo, DaemonError> {
        let _g = self.define_lock.lock().await;
        let (def, memory) = self.prepare(def, None)?;
        self.store.save(&def)?;
        let vm = self.new_vm(def, memory);
        self.insert(vm.clone());
        self.emit(&vm.name, EventKind::Defined, VmState::ShutOff, None);
        Ok(vm.info())
    }

    /// Replaces the definition of `name` (`PUT /v1/vms/{name}/definition`); a running VM keeps
    /// its current settings until its next start. A missing UUID keeps the old one.
    pub async fn update(&self, name: &str, mut def: VmDefinition) -> Result<VmInfo, DaemonError> {
        let _g = self.define_lock.lock().await;
        let vm = self.get(name)?;
        if def.name != name {
            return Err(ValidationError {
                field: "name".into(),
                problem: format!(
                    "'{}' differs from the VM being edited ('{name}'); renaming is not supported",
                    def.name
                ),
            }
            .into());
        }
        if def.uuid.is_none() {
            def.uuid = vm.lock().def.uuid;
        }
        let (def, memory) = self.prepare(def, Some(name))?;
        self.store.save(&def)?;
        let state = {
            let mut i = vm.lock();
            i.def = def;
            i.memory_bytes = memory;
            i.state
        };
        self.emit(name, EventKind::Updated, state, None);
        Ok(vm.info())
    }

    /// Sets the autostart flag (`PUT /v1/vms/{name}/autostart`).
    pub async fn set_autostart(&self, name: &str, on: bool) -> Result<VmInfo, DaemonError> {
        let _g = self.define_lock.lock().await;
        let vm = self.get(name)?;
        let mut def = vm.lock().def.clone();
        def.autostart = on;
        self.store.save(&def)?;
        let state = {
            let mut i = vm.lock();
            i.def = def;
            i.state
        };
        self.emit(
            name,
            EventKind::Updated,
            state,
            Some(format!("autostart {}", if on { "on" } else { "off" })),
        );
        Ok(vm.info())
    }

    /// Removes a shut-off or crashed VM (`DELETE /v1/vms/{name}`).
    pub async fn undefine(&self, name: &str) -> Result<(), DaemonError> {
        let _g = self.define_lock.lock().await;
        let vm = self.get(name)?;
        let _op = vm.op.lock().await;
        let state = vm.lock().state;
        Action::Undefine.apply(name, state)?;
        self.store.remove(name)?;
        self.vms.write().unwrap_or_else(|p| p.into_inner()).remove(name);
        process::remove_quietly(&vm.paths.last);
        process::remove_quietly(&vm.paths.exit);
        self.emit(name, EventKind::Undefined, state, None);
        Ok(())
    }

    /// Starts background work: autostart of shut-off or crashed autostart VMs, and periodic
    /// rotation of VMM logs.
    pub fn start_background(self: &Arc<Self>) {
        for vm in self.all() {
            let (autostart, state) = {
                let i = vm.lock();
                (i.def.autostart, i.state)
            };
            if autostart && Action::Start.next(state).is_some() {
                let d = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = d.start(&vm.name).await {
                        tracing::error!(vm = vm.name, error = e.chain(), "autostart failed");
                    }
                });
            }
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let Some(d) = weak.upgrade() else { return };
                d.rotate_logs();
            }
        });
    }

    /// Rotates every VMM log over the limit.
    pub fn rotate_logs(&self) {
        for vm in self.all() {
            if let Err(e) = crate::logs::rotate_if_over(&vm.paths.log, self.cfg.log_limit) {
                tracing::warn!(vm = vm.name, error = %e, "cannot rotate the VMM log");
            }
        }
    }
}
