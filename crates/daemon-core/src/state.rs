//! The VM lifecycle state machine: which request is allowed in which state, and where it
//! leads. Every state change in the daemon goes through [`Action::apply`] or
//! [`exit_state`], so the allowed transitions live in one table.

use ironvirt_api_types::VmState;

/// Something that changes (or needs) a VM's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Spawn the VMM.
    Start,
    /// The VMM answered its first ping.
    BootComplete,
    /// Pause all vCPUs.
    Suspend,
    /// Resume paused vCPUs.
    Resume,
    /// Hard reset the guest.
    Reboot,
    /// Press the power button.
    Shutdown,
    /// Kill the VMM.
    Destroy,
    /// Remove the definition.
    Undefine,
    /// Read counters.
    Stats,
    /// Attach to the serial console.
    Console,
}

/// A request made in a state that does not allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Cannot {action} VM '{vm}' while it is {state}")]
pub struct StateError {
    /// VM name.
    pub vm: String,
    /// What was asked, in words.
    pub action: &'static str,
    /// The state it was in, as on the wire.
    pub state: &'static str,
}

/// The wire name of a state ("shut-off").
pub fn state_name(s: VmState) -> &'static str {
    match s {
        VmState::ShutOff => "shut-off",
        VmState::Starting => "starting",
        VmState::Running => "running",
        VmState::Paused => "paused",
        VmState::ShuttingDown => "shutting-down",
        VmState::Crashed => "crashed",
    }
}

/// Whether a VMM process exists (or may exist) in this state.
pub fn is_active(s: VmState) -> bool {
    !matches!(s, VmState::ShutOff | VmState::Crashed)
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::BootComplete => "finish booting",
            Self::Suspend => "suspend",
            Self::Resume => "resume",
            Self::Reboot => "reboot",
            Self::Shutdown => "shut down",
            Self::Destroy => "destroy",
            Self::Undefine => "undefine",
            Self::Stats => "read statistics of",
            Self::Console => "attach to the console of",
        }
    }

    /// The state after the action from `from`, or `None` when the action is not allowed
    /// there. Actions that only read return `from` unchanged.
    pub fn next(self, from: VmState) -> Option<VmState> {
        use VmState::*;
        Some(match (self, from) {
            (Self::Start, ShutOff | Crashed) => Starting,
            (Self::BootComplete, Starting) => Running,
            (Self::Suspend, Running) => Paused,
            (Self::Resume, Paused) => Running,
            (Self::Reboot, Running) => Running,
            (Self::Shutdown, Running | Paused) => ShuttingDown,
            (Self::Destroy, Starting | Running | Paused | ShuttingDown) => ShutOff,
            (Self::Undefine, ShutOff | Crashed) => from,
            (Self::Stats, Running | Paused | ShuttingDown) => from,
            (Self::Console, Starting | Running | Paused | ShuttingDown) => from,
            _ => return None,
        })
    }

    /// Like [`Action::next`], with an error naming the VM when not allowed.
    pub fn apply(self, vm: &str, from: VmState) -> Result<VmState, StateError> {
        self.next(from).ok_or_else(|| StateError {
            vm: vm.to_string(),
            action: self.verb(),
            state: state_name(from),
        })
    }
}

/// How a VMM process ended, as far as the state machine cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// Exit code (docs/PLATFORM.md).
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
    /// Gone without a known status (re-adopted VMM with no exit file).
    Unknown,
}

/// The state a VM lands in when its VMM ends, and the reason in words. `requested` is true
/// when the daemon itself destroyed the VMM.
pub fn exit_state(kind: ExitKind, requested: bool) -> (VmState, &'static str) {
    match kind {
        ExitKind::Code(0) => (VmState::ShutOff, "guest powered off"),
        ExitKind::Code(3) => (VmState::ShutOff, "guest reset with --no-reboot"),
        ExitKind::Code(4) => (VmState::Crashed, "guest panic"),
        ExitKind::Code(5) => (VmState::Crashed, "vCPU failure"),
        ExitKind::Code(1) if !requested => (VmState::Crashed, "VMM error"),
        ExitKind::Code(2) => (VmState::Crashed, "VMM rejected its command line"),
        _ if requested => (VmState::ShutOff, "destroyed"),
        ExitKind::Code(130 | 143) => (VmState::Crashed, "VMM stopped by a signal"),
        ExitKind::Code(_) => (VmState::Crashed, "VMM exited with an unexpected code"),
        ExitKind::Signal(_) => (VmState::Crashed, "VMM killed by a signal"),
        ExitKind::Unknown => (VmState::Crashed, "VMM disappeared without an exit status"),
    }
}

#[cfg(test)]
mod tests {
    use VmState::*;

    use super::*;

    const ALL: [VmState; 6] = [ShutOff, Starting, Running, Paused, ShuttingDown, Crashed];

    #[test]
    fn allowed_transitions_lead_where_expected() {
        assert_eq!(Action::Start.next(ShutOff), Some(Starting));
        assert_eq!(Action::Start.next(Crashed), Some(Starting));
        assert_eq!(Action::BootComplete.next(Starting), Some(Running));
        assert_eq!(Action::Suspend.next(Running), Some(Paused));
        assert_eq!(Action::Resume.next(Paused), Some(Running));
        assert_eq!(Action::Shutdown.next(Paused), Some(ShuttingDown));
        assert_eq!(Action::Destroy.next(ShuttingDown), Some(ShutOff));
    }

    #[test]
    fn start_is_refused_in_every_active_state() {
        for s in ALL.into_iter().filter(|s| is_active(*s)) {
            let err = Action::Start.apply("web1", s).unwrap_err();
            assert_eq!(err.state, state_name(s));
            assert!(err.to_string().starts_with("Cannot start VM 'web1' while it is"), "{err}");
        }
    }

    #[test]
    fn inactive_vms_accept_only_start_and_undefine() {
        let actions = [
            Action::Start,
            Action::BootComplete,
            Action::Suspend,
            Action::Resume,
            Action::Reboot,
            Action::Shutdown,
            Action::Destroy,
            Action::Undefine,
            Action::Stats,
            Action::Console,
        ];
        for s in [ShutOff, Crashed] {
            let ok: Vec<_> = actions.into_iter().filter(|a| a.next(s).is_some()).collect();
            assert_eq!(ok, vec![Action::Start, Action::Undefine], "from {s:?}");
        }
        for s in ALL.into_iter().filter(|s| is_active(*s)) {
            assert!(Action::Undefine.next(s).is_none(), "undefine from {s:?}");
        }
    }

    #[test]
    fn suspend_resume_need_the_matching_state() {
        assert!(Action::Suspend.next(Paused).is_none());
        assert!(Action::Resume.next(Running).is_none());
        assert!(Action::Reboot.next(Paused).is_none());
    }

    #[test]
    fn exit_codes_map_per_platform_doc() {
        assert_eq!(exit_state(ExitKind::Code(0), false).0, ShutOff);
        assert_eq!(exit_state(ExitKind::Code(3), false).0, ShutOff);
        assert_eq!(exit_state(ExitKind::Code(4), false), (Crashed, "guest panic"));
        assert_eq!(exit_state(ExitKind::Code(5), false), (Crashed, "vCPU failure"));
        assert_eq!(exit_state(ExitKind::Signal(9), false).0, Crashed);
        assert_eq!(exit_state(ExitKind::Signal(9), true), (ShutOff, "destroyed"));
        assert_eq!(exit_state(ExitKind::Code(143), true).0, ShutOff);
        assert_eq!(exit_state(ExitKind::Code(143), false).0, Crashed);
        assert_eq!(exit_state(ExitKind::Unknown, false).0, Crashed);
        assert_eq!(exit_state(ExitKind::Code(4), true).0, Crashed, "a panic stays a panic");
    }
}
