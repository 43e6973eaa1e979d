//! Raw mode for an interactive serial console on stdin, restored on exit.

use std::io;
use std::mem::MaybeUninit;
use std::sync::Mutex;

/// The terminal settings saved before switching to raw mode.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Tells whether file descriptor `fd` is a terminal.
pub fn is_terminal(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor number; an invalid one yields 0.
    unsafe { libc::isatty(fd) == 1 }
}

fn get_termios(fd: i32) -> io::Result<libc::termios> {
    let mut t = MaybeUninit::<libc::termios>::uninit();
    // SAFETY: `t` is a writable termios-sized buffer on this frame; tcgetattr fills it
    // completely on success, which we check before assuming it initialised.
    let rc = unsafe { libc::tcgetattr(fd, t.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: tcgetattr succeeded, so every field was written.
    Ok(unsafe { t.assume_init() })
}

fn set_termios(fd: i32, t: &libc::termios) -> io::Result<()> {
    // SAFETY: `t` points to a valid termios for the duration of the call; the kernel only reads it.
    let rc = unsafe { libc::tcsetattr(fd, libc::TCSANOW, t) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts stdin in raw mode (no echo, no line editing, no signal keys: Ctrl-C goes to the
/// guest) if it is a terminal, remembering the old settings for [`restore_terminal`].
/// Returns whether raw mode was entered.
pub fn stdin_raw_mode() -> io::Result<bool> {
    if !is_terminal(0) {
        return Ok(false);
    }
    let old = get_termios(0)?;
    let mut raw = old;
    // SAFETY: cfmakeraw only rewrites the flag fields of the termios we own.
    unsafe { libc::cfmakeraw(&mut raw) };
    // Keep output post-processing so host-side messages still start at column 0.
    raw.c_oflag |= libc::OPOST | libc::ONLCR;
    let mut saved = SAVED.lock().unwrap_or_else(|p| p.into_inner());
    if saved.is_none() {
        *saved = Some(old);
    }
    set_termios(0, &raw)?;
    Ok(true)
}

/// Restores the terminal settings saved by [`stdin_raw_mode`]; safe to call any number of
/// times and from any exit path (including a panic hook).
pub fn restore_terminal() {
    let saved = match SAVED.try_lock() {
        Ok(mut guard) => guard.take(),
        Err(_) => None,
    };
    if let Some(t) = saved {
        let _ = set_termios(0, &t);
    }
}
