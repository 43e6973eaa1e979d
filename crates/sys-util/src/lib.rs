//! Small safe wrappers over the syscalls the VMM needs beyond what `vmm-sys-util` offers:
//! the controlling terminal's raw mode (restored on every exit path), process-wide signal
//! handling through a dedicated waiting thread, the no-op signal used to kick vCPU threads out
//! of `KVM_RUN`, giving guest pages back to the host (balloon), and reading a file descriptor
//! straight into guest memory (virtio-net receive). Any thread may call these;
//! state is process-global by nature.

pub mod mem;
pub mod scatter;
pub mod signals;
pub mod socket;
pub mod terminal;
