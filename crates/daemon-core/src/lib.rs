//! The core of `ironvirtd`: the VM registry, definitions persisted one TOML file per VM, the
//! lifecycle state machine, supervision of one `ironvirt-vmm` process per running VM (start,
//! death detection, re-adoption after a daemon restart), the serial console fan-out and the
//! event stream.
//!
//! Depends only on the wire types (`ironvirt-api-types`) and the VMM control protocol
//! (`ironvirt-vmm-protocol`); never on the VMM library. HTTP lives in `ironvirt-daemon-http`.
//!
//! Everything runs on the tokio runtime of the daemon binary: requests on one VM are serialised
//! by a per-VM async mutex, different VMs proceed in parallel, and one watcher task per running
//! VMM notices its exit. Small shared state sits behind short-lived `std` mutexes that are never
//! held across an `.await`.
#![forbid(unsafe_code)]

pub mod console;
mod daemon;
pub mod error;
pub mod logs;
pub mod process;
pub mod size;
pub mod state;
pub mod store;
mod supervise;
pub mod timefmt;
pub mod validate;
pub mod vmm_client;

pub use daemon::{Config, Daemon};
pub use error::DaemonError;
pub use supervise::DESTROY_GRACE;
