//! Register, MSR, FPU and LAPIC state for vCPUs at power-on.

use ironvirt_hypervisor::kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, Msrs};
use ironvirt_hypervisor::{HypervisorError, Vcpu};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::*;

/// Errors from setting up vCPU state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM call failed.
    #[error("Cannot set up vCPU {vcpu}")]
    Kvm {
        /// The vCPU.
        vcpu: u32,
        /// The KVM error.
        #[source]
        cause: HypervisorError,
    },
    /// Writing boot structures (GDT, page tables) into guest memory failed.
    #[error("Cannot write {what} into guest memory")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
        /// Why.
        #[source]
        cause: vm_memory::GuestMemoryError,
    },
}

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// Linux 64-bit boot protocol: long mode, paging on, `rsi` = zero page.
    Linux64 {
        /// 64-bit entry point.
        entry: u64,
    },
    /// PVH: 32-bit protected mode, paging off, `ebx` = `hvm_start_info`.
    Pvh {
        /// 32-bit entry point from the ELF note.
        entry: u64,
    },
}

// Intel SDM Vol. 3A §3.4.5 segment descriptors, as (flags, base, limit) packed into 64 bits.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | (((limit as u64 & 0x000f_0000) >> 16) << 48)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// GDT for both entry modes. Selector 0x08: 32-bit code (PVH), 0x10: 64-bit code (Linux's
/// `__BOOT_CS`), 0x18: data (`__BOOT_DS`), 0x20: TSS.
const GDT: [u64; 5] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),
];

fn segment(selector_index: u16, entry: u64) -> kvm_segment {
    let flag = |shift: u32, mask: u64| ((entry >> shift) & mask) as u8;
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = flag(55, 1);
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: selector_index * 8,
        type_: flag(40, 0xf),
        present: flag(47, 1),
        dpl: flag(45, 3),
        db: flag(54, 1),
        s: flag(44, 1),
        l: flag(53, 1),
        g,
        avl: flag(52, 1),
        unusable: u8::from(flag(47, 1) == 0),
        padding: 0,
    }
}

fn write(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), RegsError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|cause| RegsError::GuestMemory { what, cause })
}

/// Writes the boot GDT, an empty IDT and the identity map of the first 4 GiB.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let gdt: Vec<u8> = GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    write(mem, "boot GDT", BOOT_GDT, &gdt)?;
    write(mem, "boot IDT", BOOT_IDT, &[0; 8])?;
    // Page tables (SDM Vol. 3A §4.5): PML4[0] -> PDPT, PDPT[0..4] -> four PDs of 2 MiB pages.
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    write(mem, "boot PML4", PML4, &(PDPT | PRESENT_RW).to_le_bytes())?;
    let pdpt: Vec<u8> =
        (0..4u64).flat_map(|i| ((PD + i * 0x1000) | PRESENT_RW).to_le_bytes()).collect();
    write(mem, "boot PDPT", PDPT, &pdpt)?;
    let pds: Vec<u8> =
        (0..2048u64).flat_map(|i| ((i << 21) | PRESENT_RW | PAGE_SIZE_2M).to_le_bytes()).collect();
    write(mem, "boot page directories", PD, &pds)
}

/// Puts the boot vCPU at the kernel's entry point.
pub fn setup_boot_vcpu(vcpu: &Vcpu, mode: EntryMode) -> Result<(), RegsError> {
    let id = vcpu.id();
    let kvm = |cause| RegsError::Kvm { vcpu: id, cause };
    let mut sregs = vcpu.sregs().map_err(kvm)?;
    sregs.gdt.base = BOOT_GDT;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT;
    sregs.idt.limit = 7;
    sregs.tr = segment(4, GDT[4]);
    let data = segment(3, GDT[3]);
    let (code, regs) = match mode {
        EntryMode::Linux64 { entry } => {
            const CR0_PE: u64 = 1;
            const CR0_ET: u64 = 1 << 4;
            const CR0_PG: u64 = 1 << 31;
            const CR4_PAE: u64 = 1 << 5;
            const EFER_LME: u64 = 1 << 8;
            const EFER_LMA: u64 = 1 << 10;
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = PML4;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
            let regs = kvm_regs {
                rflags: 0x2,
                rip: entry,
                rsp: BOOT_STACK,
                rbp: BOOT_STACK,
                rsi: ZERO_PAGE,
                ..Default::default()
            };
            (segment(2, GDT[2]), regs)
        }
        EntryMode::Pvh { entry } => {
            // PVH (xenbits docs/misc/pvh.pandoc): CR0.PE only, CR4 0, EFER 0.
            sregs.cr0 = 0x1 | (1 << 4);
            sregs.cr4 = 0;
            sregs.efer = 0;
            let regs =
                kvm_regs { rflags: 0x2, rip: entry, rbx: PVH_START_INFO, ..Default::default() };
            (segment(1, GDT[1]), regs)
        }
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    vcpu.set_sregs(&sregs).map_err(kvm)?;
    vcpu.set_regs(&regs).map_err(kvm)
}

/// MSRs every vCPU starts with: SYSENTER/SYSCALL targets cleared, fast strings on, and
/// write-back as the default memory type (MTRRs enabled).
pub fn setup_msrs(vcpu: &Vcpu) -> Result<(), RegsError> {
    const MSRS: [(u32, u64); 11] = [
        (0x174, 0),             // IA32_SYSENTER_CS
        (0x175, 0),             // IA32_SYSENTER_ESP
        (0x176, 0),             // IA32_SYSENTER_EIP
        (0xc000_0081, 0),       // STAR
        (0xc000_0082, 0),       // LSTAR
        (0xc000_0083, 0),       // CSTAR
        (0xc000_0084, 0),       // SYSCALL_MASK
        (0xc000_0102, 0),       // KERNEL_GS_BASE
        (0x10, 0),              // IA32_TSC
        (0x1a0, 1),             // IA32_MISC_ENABLE: fast string operations
        (0x2ff, (1 << 11) | 6), // IA32_MTRR_DEF_TYPE: enabled, write-back
    ];
    let entries: Vec<kvm_msr_entry> = MSRS
        .iter()
        .map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() })
        .collect();
    let msrs = Msrs::from_entries(&entries).expect("11 entries fit the FAM wrapper");
    vcpu.set_msrs(&msrs).map_err(|cause| RegsError::Kvm { vcpu: vcpu.id(), cause })
}

/// x87 control word and MXCSR at their power-on values.
pub fn setup_fpu(vcpu: &Vcpu) -> Result<(), RegsError> {
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(|cause| RegsError::Kvm { vcpu: vcpu.id(), cause })
}

/// Wires LINT0 as ExtINT (the PIC) and LINT1 as NMI, as firmware does (SDM Vol. 3A §10.5.1).
pub fn setup_lapic(vcpu: &Vcpu) -> Result<(), RegsError> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const DELIVERY_EXTINT: u32 = 0x7 << 8;
    const DELIVERY_NMI: u32 = 0x4 << 8;
    let kvm = |cause| RegsError::Kvm { vcpu: vcpu.id(), cause };
    let mut lapic = vcpu.lapic().map_err(kvm)?;
    for (offset, mode) in [(LVT_LINT0, DELIVERY_EXTINT), (LVT_LINT1, DELIVERY_NMI)] {
        let reg = &mut lapic.regs[offset..offset + 4];
        let bytes: [u8; 4] = std::array::from_fn(|i| reg[i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | mode;
        for (dst, src) in reg.iter_mut().zip(value.to_le_bytes()) {
            *dst = src as std::ffi::c_char;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_the_intended_segments() {
        let code64 = segment(2, GDT[2]);
        assert_eq!((code64.l, code64.db, code64.type_, code64.present), (1, 0, 0xb, 1));
        assert_eq!((code64.selector, code64.limit), (0x10, 0xffff_ffff));
        let code32 = segment(1, GDT[1]);
        assert_eq!((code32.l, code32.db, code32.selector), (0, 1, 0x08));
        let data = segment(3, GDT[3]);
        assert_eq!((data.type_, data.s, data.base), (0x3, 1, 0));
        let tss = segment(4, GDT[4]);
        assert_eq!((tss.type_, tss.s, tss.limit), (0xb, 0, 0x67));
    }

    #[test]
    fn boot_page_tables_identity_map_4g() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPT);
        let pde_last: u64 = mem.read_obj(GuestAddress(PD + 2047 * 8)).unwrap();
        assert_eq!(pde_last & !0xfff, (4 << 30) - (2 << 20));
    }
}
