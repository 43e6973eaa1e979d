//! The daemon-level error: every failure a request can meet, with the stable API code and HTTP
//! status it maps to.

use std::io;
use std::path::PathBuf;

use crate::state::StateError;
use crate::store::StoreError;
use crate::validate::{ConflictError, ValidationError};
use crate::vmm_client::VmmClientError;

/// Errors of daemon operations.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// No VM with that name.
    #[error("No VM named '{0}'")]
    NotFound(String),
    /// The VM is in a state that does not allow the request.
    #[error(transparent)]
    State(#[from] StateError),
    /// A name, UUID, disk, MAC or CID is taken.
    #[error(transparent)]
    Conflict(#[from] ConflictError),
    /// A definition field is invalid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// Reading or writing the state directory failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Setting up per-VM files (logs, run directory) failed.
    #[error("Cannot prepare {} for VM '{vm}'", .path.display())]
    Prepare {
        /// VM name.
        vm: String,
        /// File or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        cause: io::Error,
    },
    /// The VMM process could not be started.
    #[error("Cannot start {} for VM '{vm}'", .vmm.display())]
    Spawn {
        /// VM name.
        vm: String,
        /// VMM binary.
        vmm: PathBuf,
        /// Cause.
        #[source]
        cause: io::Error,
    },
    /// The VMM ended or stayed silent while starting.
    #[error("VM '{vm}' failed to start: {reason} (see {})", .log.display())]
    StartFailed {
        /// VM name.
        vm: String,
        /// What happened.
        reason: String,
        /// The VMM log to read.
        log: PathBuf,
    },
    /// A control request to the VMM failed.
    #[error("Control request to the VMM of VM '{vm}' failed")]
    Vmm {
        /// VM name.
        vm: String,
        /// Cause.
        #[source]
        cause: VmmClientError,
    },
    /// Sending a signal to the VMM failed.
    #[error("Cannot signal the VMM of VM '{vm}' (pid {pid})")]
    Signal {
        /// VM name.
        vm: String,
        /// Process id.
        pid: u32,
        /// Cause.
        #[source]
        cause: nix::Error,
    },
    /// The VMM did not exit after SIGKILL.
    #[error("The VMM of VM '{vm}' (pid {pid}) did not exit after SIGKILL")]
    Unkillable {
        /// VM name.
        vm: String,
        /// Process id.
        pid: u32,
    },
}

impl DaemonError {
    /// The stable machine-readable code of the API error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not-found",
            Self::State(_) | Self::Conflict(_) => "conflict",
            Self::Vmm { cause: VmmClientError::Status { status: 409, .. }, .. } => "conflict",
            Self::Invalid(_) => "invalid-definition",
            _ => "internal",
        }
    }

    /// The HTTP status of the API answer.
    pub fn http_status(&self) -> u16 {
        match self.code() {
            "not-found" => 404,
            "conflict" => 409,
            "invalid-definition" => 422,
            _ => 500,
        }
    }

    /// The message with its whole cause chain, for API bodies and logs.
    pub fn chain(&self) -> String {
        let mut line = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            line.push_str(": ");
            line.push_str(&cause.to_string());
            source = cause.source();
        }
        line
    }
}
