//! Process signals: termination signals are blocked in every thread and consumed by one
//! waiting thread; a real-time signal with an empty handler kicks vCPU threads out of KVM_RUN.

use std::io;
use std::mem::MaybeUninit;
use std::os::unix::thread::JoinHandleExt;
use std::thread::JoinHandle;

/// The signals that ask the VMM to stop.
pub const TERMINATION_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn sigset(signals: &[i32]) -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the whole set we own; sigaddset then only sets bits in
    // it (invalid signal numbers are rejected by the call without touching memory).
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for &s in signals {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
        set.assume_init()
    }
}

/// Blocks the termination signals in the calling thread; threads spawned afterwards inherit
/// the mask, so call this first thing in `main`.
pub fn block_termination_signals() -> io::Result<()> {
    let set = sigset(&TERMINATION_SIGNALS);
    // SAFETY: `set` is an initialised sigset on this frame; the old mask is not requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits (blocking) until one of the termination signals arrives and returns its number.
/// The signals must be blocked (see [`block_termination_signals`]).
pub fn wait_termination_signal() -> io::Result<i32> {
    let set = sigset(&TERMINATION_SIGNALS);
    let mut sig = 0;
    // SAFETY: `set` and `sig` live on this frame for the whole call; sigwait writes `sig` only.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(sig)
}

/// The signal used to kick vCPU threads.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN() + 1
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the empty handler for [`kick_signal`] (once per process): its only effect is that
/// a blocking `KVM_RUN` in the signalled thread returns `EINTR`.
pub fn install_kick_handler() -> io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))
}

/// Sends [`kick_signal`] to the thread behind `handle`.
pub fn kick_thread<T>(handle: &JoinHandle<T>) -> io::Result<()> {
    if handle.is_finished() {
        return Ok(());
    }
    let thread = handle.as_pthread_t();
    // SAFETY: the JoinHandle has not been joined, so the pthread_t still names a live or
    // finished-but-unjoined thread, for which pthread_kill is defined.
    let rc = unsafe { libc::pthread_kill(thread, kick_signal()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}
