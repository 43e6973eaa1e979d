//! Loading a kernel, its initramfs and command line, and writing the boot structures of the
//! Linux 64-bit boot protocol (zero page) or of PVH (`hvm_start_info`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::*;
use crate::memory::{e820_map, E820Entry};
use crate::regs::EntryMode;

/// Which boot protocol to use for an ELF kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH when the ELF has a PVH entry note, else the Linux 64-bit protocol.
    #[default]
    Auto,
    /// The Linux 64-bit boot protocol, even if a PVH note is present.
    Linux,
    /// PVH; the kernel must carry the note.
    Pvh,
}

impl std::str::FromStr for BootProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "linux" => Ok(Self::Linux),
            "pvh" => Ok(Self::Pvh),
            other => Err(format!("unknown boot protocol '{other}' (expected auto, linux or pvh)")),
        }
    }
}

/// Errors from loading what the guest boots.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Reading the kernel file failed.
    #[error("Cannot read the kernel image")]
    ReadKernel(#[source] std::io::Error),
    /// The file is neither ELF nor bzImage.
    #[error("The kernel image is neither an ELF file nor a Linux bzImage")]
    NotAKernel,
    /// linux-loader rejected the ELF.
    #[error("Cannot load the ELF kernel")]
    Elf(#[source] linux_loader::loader::Error),
    /// linux-loader rejected the bzImage.
    #[error("Cannot load the bzImage kernel")]
    BzImage(#[source] linux_loader::loader::Error),
    /// PVH requested for a kernel without a PVH entry.
    #[error(
        "The kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); use --boot-protocol linux"
    )]
    NoPvhEntry,
    /// bzImages cannot be booted through PVH.
    #[error("A bzImage cannot be booted with PVH; use --boot-protocol linux or auto")]
    PvhBzImage,
    /// The command line is too long.
    #[error("Kernel command line is {len} bytes; the kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("Kernel command line contains a NUL byte")]
    CmdlineNul,
    /// Reading the initramfs failed.
    #[error("Cannot read the initramfs")]
    ReadInitramfs(#[source] std::io::Error),
    /// The initramfs does not fit between the kernel and the top of low memory.
    #[error("Initramfs of {size} bytes does not fit in guest memory: {available} bytes are free between the kernel's end ({kernel_end:#x}) and {limit:#x}; give the VM more memory")]
    InitramfsTooBig {
        /// Its size.
        size: u64,
        /// Room there is.
        available: u64,
        /// End of the kernel.
        kernel_end: u64,
        /// Highest address it may reach.
        limit: u64,
    },
    /// Writing boot data into guest memory failed.
    #[error("Cannot write the {what} into guest memory")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
        /// Why.
        #[source]
        cause: vm_memory::GuestMemoryError,
    },
}

/// What the guest boots.
pub struct BootSource<'a> {
    /// The kernel image (ELF or bzImage).
    pub kernel: &'a mut File,
    /// An optional initramfs.
    pub initramfs: Option<&'a mut File>,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The protocol for ELF kernels.
    pub protocol: BootProtocol,
}

enum Format {
    Elf,
    BzImage,
}

fn detect_format(kernel: &mut File) -> Result<Format, BootError> {
    let mut head = [0u8; 0x206];
    kernel.seek(SeekFrom::Start(0)).map_err(BootError::ReadKernel)?;
    let n = read_up_to(kernel, &mut head).map_err(BootError::ReadKernel)?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        Ok(Format::Elf)
    } else if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        Ok(Format::BzImage)
    } else {
        Err(BootError::NotAKernel)
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn write_bytes(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), BootError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|cause| BootError::GuestMemory { what, cause })
}

/// Loads kernel, initramfs and command line for a guest of `mem_size` bytes whose ACPI RSDP
/// is at `rsdp`, and writes the boot structures; returns how the boot vCPU enters the kernel.
pub fn load_boot(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    rsdp: u64,
    src: BootSource<'_>,
) -> Result<EntryMode, BootError> {
    let format = detect_format(src.kernel)?;
    let highmem = Some(GuestAddress(HIGH_RAM_START));
    let (loaded, mode) = match format {
        Format::Elf => {
            let r = Elf::load(mem, None, src.kernel, highmem).map_err(BootError::Elf)?;
            let pvh = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(entry) => Some(entry.0),
                _ => None,
            };
            let mode = match (src.protocol, pvh) {
                (BootProtocol::Auto | BootProtocol::Pvh, Some(entry)) => EntryMode::Pvh { entry },
                (BootProtocol::Pvh, None) => return Err(BootError::NoPvhEntry),
                _ => EntryMode::Linux64 { entry: r.kernel_load.0 },
            };
            (r, mode)
        }
        Format::BzImage => {
            if src.protocol == BootProtocol::Pvh {
                return Err(BootError::PvhBzImage);
            }
            let r = BzImage::load(mem, None, src.kernel, highmem).map_err(BootError::BzImage)?;
            // Linux boot protocol §"64-bit boot": the 64-bit entry is 0x200 past the start
            // of the protected-mode kernel.
            let mode = EntryMode::Linux64 { entry: r.kernel_load.0 + 0x200 };
            (r, mode)
        }
    };

    let max_cmdline = match loaded.setup_header {
        Some(h) if h.cmdline_size > 0 => (h.cmdline_size as usize).min(CMDLINE_MAX),
        _ => CMDLINE_MAX,
    };
    if src.cmdline.len() > max_cmdline {
        return Err(BootError::CmdlineTooLong { len: src.cmdline.len(), max: max_cmdline });
    }
    if src.cmdline.contains('\0') {
        return Err(BootError::CmdlineNul);
    }
    let mut cmdline = src.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    write_bytes(mem, "command line", CMDLINE, &cmdline)?;

    let initramfs = match src.initramfs {
        Some(file) => Some(load_initramfs(mem, mem_size, &loaded, file)?),
        None => None,
    };
    let e820 = e820_map(mem_size);
    match mode {
        EntryMode::Linux64 { .. } => {
            write_zero_page(mem, &loaded, src.cmdline.len(), initramfs, &e820, rsdp)?
        }
        EntryMode::Pvh { .. } => write_pvh_start_info(mem, initramfs, &e820, rsdp)?,
    }
    Ok(mode)
}

/// Places the initramfs at the top of low RAM, page aligned, above the kernel.
fn load_initramfs(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &KernelLoaderResult,
    file: &mut File,
) -> Result<(u64, u64), BootError> {
    let size = file.seek(SeekFrom::End(0)).map_err(BootError::ReadInitramfs)?;
    file.seek(SeekFrom::Start(0)).map_err(BootError::ReadInitramfs)?;
    let mut limit = mem_size.min(MMIO_HOLE_START);
    // A bzImage tells the highest address its initrd may end at, and how much room the kernel
    // needs in place while it decompresses (init_size).
    let mut kernel_end = kernel.kernel_end;
    if let Some(h) = kernel.setup_header {
        if h.initrd_addr_max != 0 {
            limit = limit.min(u64::from(h.initrd_addr_max) + 1);
        }
        kernel_end = kernel_end.max(kernel.kernel_load.0 + u64::from(h.init_size));
    }
    let kernel_end = kernel_end.max(HIGH_RAM_START);
    let available = limit.saturating_sub(kernel_end) & !0xfff;
    if size > available {
        return Err(BootError::InitramfsTooBig { size, available, kernel_end, limit });
    }
    let addr = (limit - size) & !0xfff;
    let count = usize::try_from(size).expect("64-bit host");
    mem.read_exact_volatile_from(GuestAddress(addr), file, count).map_err(|cause| match cause {
        vm_memory::GuestMemoryError::IOError(e) => BootError::ReadInitramfs(e),
        cause => BootError::GuestMemory { what: "initramfs", cause },
    })?;
    Ok((addr, size))
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    loaded: &KernelLoaderResult,
    cmdline_len: usize,
    initramfs: Option<(u64, u64)>,
    e820: &[E820Entry],
    rsdp: u64,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(h) = loaded.setup_header {
        params.hdr = h;
    } else {
        // An ELF vmlinux has no setup header: provide the fields the kernel reads.
        params.hdr.boot_flag = 0xaa55;
        params.hdr.header = 0x5372_6448; // "HdrS"
        params.hdr.version = 0x020f;
        params.hdr.kernel_alignment = 0x20_0000;
    }
    params.hdr.type_of_loader = 0xff; // "undefined" boot loader id
    params.hdr.loadflags |= 0x01; // LOADED_HIGH
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = cmdline_len as u32 + 1;
    if let Some((addr, size)) = initramfs {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    params.acpi_rsdp_addr = rsdp;
    params.e820_entries = e820.len() as u8;
    for (dst, e) in params.e820_table.iter_mut().zip(e820) {
        *dst = boot_e820_entry { addr: e.addr, size: e.size, r#type: e.kind as u32 };
    }
    mem.write_obj(params, GuestAddress(ZERO_PAGE))
        .map_err(|cause| BootError::GuestMemory { what: "zero page", cause })
}

/// `hvm_start_info` magic (xen/include/public/arch-x86/hvm/start_info.h).
const PVH_MAGIC: u32 = 0x336e_c578;

fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    initramfs: Option<(u64, u64)>,
    e820: &[E820Entry],
    rsdp: u64,
) -> Result<(), BootError> {
    let mut info = Vec::with_capacity(56);
    info.extend_from_slice(&PVH_MAGIC.to_le_bytes());
    info.extend_from_slice(&1u32.to_le_bytes()); // version 1: has the memory map
    info.extend_from_slice(&0u32.to_le_bytes()); // flags
    info.extend_from_slice(&u32::from(initramfs.is_some()).to_le_bytes()); // nr_modules
    info.extend_from_slice(&PVH_MODLIST.to_le_bytes());
    info.extend_from_slice(&CMDLINE.to_le_bytes());
    info.extend_from_slice(&rsdp.to_le_bytes());
    info.extend_from_slice(&PVH_MEMMAP.to_le_bytes());
    info.extend_from_slice(&(e820.len() as u32).to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes());
    write_bytes(mem, "PVH start info", PVH_START_INFO, &info)?;

    let memmap: Vec<u8> = e820
        .iter()
        .flat_map(|e| {
            let mut b = Vec::with_capacity(24);
            b.extend_from_slice(&e.addr.to_le_bytes());
            b.extend_from_slice(&e.size.to_le_bytes());
            b.extend_from_slice(&(e.kind as u32).to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b
        })
        .collect();
    write_bytes(mem, "PVH memory map", PVH_MEMMAP, &memmap)?;
    if let Some((addr, size)) = initramfs {
        let mut module = Vec::with_capacity(32);
        for v in [addr, size, 0, 0] {
            module.extend_from_slice(&v.to_le_bytes());
        }
        write_bytes(mem, "PVH module list", PVH_MODLIST, &module)?;
    }
    Ok(())
}
