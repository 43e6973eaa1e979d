//! Test helpers (feature `test-util`): run a closure in a private network namespace, and see
//! a TAP from the host side through an AF_PACKET socket. Everything a test creates lives in
//! that namespace and disappears with it; no traffic reaches the host's own interfaces.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// `sll_pkttype` of a frame this host sent (seen by other packet sockets on the interface).
pub const PACKET_OUTGOING: u8 = 4;
/// SIOCETHTOOL command: read the TX checksum offload state.
pub const ETHTOOL_GTXCSUM: u32 = 0x16;
/// SIOCETHTOOL command: read the TCP segmentation offload state.
pub const ETHTOOL_GTSO: u32 = 0x1e;

/// A name unique in this process: `prefix`, the pid and a counter (at most 15 bytes for a
/// prefix of at most 3).
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{:x}", std::process::id() & 0xff_ffff, n & 0xfff)
}

/// Runs `f` on a fresh thread that first moves into a new, empty network namespace (only that
/// thread: network namespaces are per task); the namespace disappears once the thread and the
/// descriptors it made are gone. IPv6 is disabled for interfaces created there so the kernel
/// sends no router or neighbour solicitations of its own. Panics (failing the test with what
/// is needed) when the process lacks CAP_SYS_ADMIN; a panic in `f` propagates.
pub fn in_new_netns<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare(2) with a constant flag and no pointers; CLONE_NEWNET only changes
        // this thread's network namespace, which is allowed in a multi-threaded process.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!(
                "cannot create a network namespace ({}): TAP tests need root \
                 (CAP_SYS_ADMIN and CAP_NET_ADMIN); run them as root",
                io::Error::last_os_error()
            );
        }
        // /proc/sys/net resolves against the opening thread's namespace. Without IPv6 built
        // in or enabled the file is missing, which is just as quiet.
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
        f()
    });
    match thread.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Whether an interface named `name` exists in this thread's network namespace.
pub fn interface_exists(name: &str) -> bool {
    let Ok(cname) = std::ffi::CString::new(name) else { return false };
    // SAFETY: `cname` is a NUL-terminated string that outlives the call, which only reads it.
    unsafe { libc::if_nametoindex(cname.as_ptr()) != 0 }
}

/// Reads an ethtool value (`ETHTOOL_G*` commands that return a `struct ethtool_value`).
pub fn ethtool_get(name: &str, cmd: u32) -> io::Result<u32> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue { cmd, data: 0 };
    // SAFETY: ifreq is plain old data; all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().take(libc::IFNAMSIZ - 1).zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: plain socket(2) call with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCETHTOOL reads the ifreq and reads/writes the `ethtool_value` its data
    // pointer names; both live on this stack frame for the whole call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}

/// An AF_PACKET socket bound to one interface: the host's end of a TAP. Frames the device
/// writes to the TAP arrive here; frames sent here go out of the TAP to the device.
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Binds to interface `name` for all protocols.
    pub fn bind(name: &str) -> io::Result<Self> {
        let cname = std::ffi::CString::new(name)?;
        // SAFETY: `cname` is NUL-terminated and outlives the call, which only reads it.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call, no pointers.
        let fd = unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto))
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain old data; all-zero bytes are a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: bind(2) reads `size_of::<sockaddr_ll>()` bytes from `addr`, which lives on
        // this stack frame for the call.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Transmits one Ethernet frame on the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: send(2) reads `frame.len()` bytes from `frame`, valid for the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Receives the next frame seen on the interface that this host did not send itself and
    /// for which `want` is true, waiting at most `timeout`; `None` when none came.
    pub fn recv_matching(
        &self,
        buf: &mut [u8],
        timeout: Duration,
        want: impl Fn(&[u8]) -> bool,
    ) -> io::Result<Option<usize>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd =
                libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
            // SAFETY: poll(2) on one pollfd that lives on this stack frame.
            if unsafe { libc::poll(&mut pfd, 1, ms) } < 0 {
                return Err(io::Error::last_os_error());
            }
            if pfd.revents & libc::POLLIN == 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is plain old data; all-zero bytes are a valid value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: recvfrom(2) writes at most `buf.len()` bytes into `buf` and at most
            // `from_len` bytes into `from`; both are valid for the call.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if from.sll_pkttype != PACKET_OUTGOING && want(&buf[..n]) {
                return Ok(Some(n));
            }
        }
    }
}
