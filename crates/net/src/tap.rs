//! TAP devices: `/dev/net/tun` opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte
//! virtio-net header (`struct virtio_net_hdr_v1`, virtio 1.2 §5.1.6) on every frame, a
//! non-blocking file descriptor, and the link brought up.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Length of the virtio-net header the TAP prepends to every frame it hands us and expects in
/// front of every frame we write (`struct virtio_net_hdr_v1`, with `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;

/// Offload bits for [`Tap::set_offload`] (`TUN_F_*` of `linux/if_tun.h`): what the kernel may
/// hand us (partial checksums, GSO frames) because the guest accepted it.
pub mod offload {
    /// Frames may carry a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
    pub const CSUM: u32 = libc::TUN_F_CSUM;
    /// TCP over IPv4 segmentation offload (needs [`CSUM`]).
    pub const TSO4: u32 = libc::TUN_F_TSO4;
    /// TCP over IPv6 segmentation offload (needs [`CSUM`]).
    pub const TSO6: u32 = libc::TUN_F_TSO6;
    /// TSO frames may carry ECN (needs TSO4 or TSO6).
    pub const TSO_ECN: u32 = libc::TUN_F_TSO_ECN;
    /// UDP fragmentation offload (accepted by the kernel, which no longer produces it).
    pub const UFO: u32 = libc::TUN_F_UFO;
}

/// Errors opening or configuring a TAP device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot be a Linux interface name.
    #[error("Invalid TAP device name {name:?} (1 to 15 characters, no '/', ':' or whitespace)")]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// `/dev/net/tun` could not be opened.
    #[error("Cannot open /dev/net/tun for TAP device {name}")]
    OpenTun {
        /// The TAP device.
        name: String,
        /// What the kernel said.
        #[source]
        cause: io::Error,
    },
    /// The process may neither attach to the TAP nor create it.
    #[error(
        "No permission to use TAP device {name}: attaching needs ownership of an existing TAP \
         (ip tuntap add {name} mode tap user <uid>), creating it needs CAP_NET_ADMIN"
    )]
    PermissionDenied {
        /// The TAP device.
        name: String,
    },
    /// Another process is attached to the TAP.
    #[error("TAP device {name} is already in use by another process")]
    Busy {
        /// The TAP device.
        name: String,
    },
    /// The interface exists but is not a single-queue TAP device (a TUN device, a multiqueue
    /// TAP, or another kind of interface).
    #[error("Interface {name} exists but is not a single-queue TAP device")]
    NotATap {
        /// The interface.
        name: String,
    },
    /// TUNSETIFF failed for another reason.
    #[error("Cannot attach to TAP device {name}")]
    Attach {
        /// The TAP device.
        name: String,
        /// What the kernel said.
        #[source]
        cause: io::Error,
    },
    /// TUNSETVNETHDRSZ failed.
    #[error("Cannot set the virtio-net header size of TAP device {name}")]
    VnetHdr {
        /// The TAP device.
        name: String,
        /// What the kernel said.
        #[source]
        cause: io::Error,
    },
    /// TUNSETOFFLOAD failed.
    #[error("Cannot set offloads {flags:#x} on TAP device {name}")]
    Offload {
        /// The TAP device.
        name: String,
        /// The `TUN_F_*` bits requested.
        flags: u32,
        /// What the kernel said.
        #[source]
        cause: io::Error,
    },
    /// Reading or changing the interface flags (link up) failed.
    #[error("Cannot bring TAP device {name} up")]
    LinkUp {
        /// The TAP device.
        name: String,
        /// What the kernel said.
        #[source]
        cause: io::Error,
    },
}

/// An open TAP device. Reads and writes carry one frame each, prefixed by the
/// [`VNET_HDR_LEN`]-byte virtio-net header; the descriptor is non-blocking. A TAP this process
/// created (rather than attached to) disappears when the `Tap` is dropped.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// Whether `name` is a valid Linux interface name (`dev_valid_name` in net/core/dev.c).
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

/// An `ifreq` naming `name` (already validated), all other fields zero.
fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a name array and a union of integers, sockaddrs and a
    // pointer), for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

impl Tap {
    /// Attaches to the TAP device `name`, or creates it when it does not exist and the process
    /// has CAP_NET_ADMIN; sets the 12-byte vnet header, no offloads, and brings the link up.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if !valid_ifname(name) {
            return Err(TapError::InvalidName { name: name.into() });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|cause| TapError::OpenTun { name: name.into(), cause })?;
        let mut req = ifreq_for(name);
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: `file` is an open /dev/net/tun descriptor; TUNSETIFF reads and writes one
        // `struct ifreq`, and `req` is a properly initialised ifreq that lives on this stack
        // frame for the whole call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            let cause = io::Error::last_os_error();
            let name = name.to_string();
            return Err(match cause.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::PermissionDenied { name },
                Some(libc::EBUSY) => TapError::Busy { name },
                Some(libc::EINVAL) => TapError::NotATap { name },
                _ => TapError::Attach { name, cause },
            });
        }
        let tap = Self { file, name: name.into() };
        tap.set_vnet_hdr_len()?;
        tap.set_offload(0)?;
        tap.bring_up()?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn set_vnet_hdr_len(&self) -> Result<(), TapError> {
        let len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer; `len` lives on this stack
        // frame for the whole call and the descriptor is our TAP.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len) };
        if rc < 0 {
            return Err(TapError::VnetHdr {
                name: self.name.clone(),
                cause: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Tells the kernel which offloads it may use in frames it hands us ([`offload`] bits):
    /// those the guest driver accepted (virtio 1.2 §5.1.6.4). TSO and UFO bits need
    /// [`offload::CSUM`]; the kernel rejects them alone.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long), no pointer is
        // involved; the descriptor is our TAP.
        let rc = unsafe {
            libc::ioctl(self.file.as_raw_fd(), libc::TUNSETOFFLOAD, libc::c_ulong::from(flags))
        };
        if rc < 0 {
            return Err(TapError::Offload {
                name: self.name.clone(),
                flags,
                cause: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Sets IFF_UP on the interface unless it is already up. Without CAP_NET_ADMIN this fails
    /// for a TAP someone else left down; that is only logged, as the owner may bring it up.
    fn bring_up(&self) -> Result<(), TapError> {
        let link_err = |cause| TapError::LinkUp { name: self.name.clone(), cause };
        let sock = control_socket().map_err(link_err)?;
        let mut req = ifreq_for(&self.name);
        // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into one `struct
        // ifreq`; `req` is initialised and lives on this stack frame for the whole call; `sock`
        // is an open socket.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(link_err(io::Error::last_os_error()));
        }
        // SAFETY: the kernel just filled the flags member of the union (SIOCGIFFLAGS).
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        if flags & libc::IFF_UP as i16 != 0 {
            return Ok(());
        }
        req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as i16;
        // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) } < 0 {
            let cause = io::Error::last_os_error();
            if cause.raw_os_error() == Some(libc::EPERM) {
                log::warn!("TAP device {} is down and we may not bring it up", self.name);
                return Ok(());
            }
            return Err(link_err(cause));
        }
        Ok(())
    }

    /// Whether the interface is up (IFF_UP).
    pub fn is_up(&self) -> io::Result<bool> {
        let sock = control_socket()?;
        let mut req = ifreq_for(&self.name);
        // SAFETY: see `bring_up`: one initialised ifreq on this stack frame, an open socket.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just filled the flags member of the union.
        Ok(unsafe { req.ifr_ifru.ifru_flags } & libc::IFF_UP as i16 != 0)
    }

    /// Reads one frame (vnet header first) into `buf`; `WouldBlock` when none is queued. A
    /// frame longer than `buf` is truncated by the kernel.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (vnet header first) in a single write.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }
}

/// A datagram socket for interface ioctls (SIOC[GS]IFFLAGS), in this thread's namespace.
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call with constant arguments; no pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2), is valid and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ethtool_get, in_new_netns, interface_exists, unique_name, ETHTOOL_GTSO};

    #[test]
    fn invalid_names_are_rejected_before_any_syscall() {
        for bad in ["", "a/b", "a b", "x:1", ".", "..", "sixteen-chars-xx"] {
            assert!(matches!(Tap::open(bad), Err(TapError::InvalidName { .. })), "{bad:?}");
        }
        assert!(valid_ifname("ivtap0"));
        assert!(valid_ifname("fifteen-chars-x"));
    }

    #[test]
    fn creates_a_tap_that_is_up_and_accepts_offloads_then_disappears() {
        in_new_netns(|| {
            let name = unique_name("ivt");
            let tap = Tap::open(&name).unwrap();
            assert_eq!(tap.name(), name);
            assert!(tap.is_up().unwrap());
            tap.set_offload(offload::CSUM | offload::TSO4 | offload::TSO6 | offload::TSO_ECN)
                .unwrap();
            assert_eq!(ethtool_get(&name, ETHTOOL_GTSO).unwrap(), 1);
            tap.set_offload(offload::CSUM | offload::UFO).unwrap();
            assert_eq!(ethtool_get(&name, ETHTOOL_GTSO).unwrap(), 0);
            assert!(matches!(tap.set_offload(offload::TSO4), Err(TapError::Offload { .. })));
            let mut buf = [0u8; 64];
            let err = tap.read_frame(&mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "non-blocking, nothing queued");
            drop(tap);
            assert!(!interface_exists(&name), "a TAP we created goes away with its descriptor");
        });
    }

    #[test]
    fn a_second_open_of_an_attached_tap_is_refused_as_busy() {
        in_new_netns(|| {
            let name = unique_name("ivt");
            let _tap = Tap::open(&name).unwrap();
            let err = Tap::open(&name).unwrap_err();
            assert!(matches!(err, TapError::Busy { .. }), "{err:?}");
            assert!(err.to_string().contains(&name));
        });
    }
}
