//! Fixed guest-physical addresses of the x86_64 platform (see docs/PLATFORM.md).

/// Boot GDT (Linux 64-bit and PVH entry).
pub const BOOT_GDT: u64 = 0x500;
/// Boot IDT (empty; the guest installs its own before enabling interrupts).
pub const BOOT_IDT: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_START_INFO: u64 = 0x6000;
/// PVH memory map, right after the start info.
pub const PVH_MEMMAP: u64 = 0x6040;
/// PVH module list (the initramfs).
pub const PVH_MODLIST: u64 = 0x6f00;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU (grows down below the page tables).
pub const BOOT_STACK: u64 = 0x8ff0;
/// Boot page tables: PML4.
pub const PML4: u64 = 0x9000;
/// Boot page tables: PDPT.
pub const PDPT: u64 = 0xa000;
/// Boot page tables: first of four page directories (4 GiB with 2 MiB pages).
pub const PD: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE: u64 = 0x20000;
/// Longest command line accepted (NUL excluded).
pub const CMDLINE_MAX: usize = 0xffff;
/// Start of the EBDA (reserved up to 640 KiB).
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional memory.
pub const LOW_RAM_END: u64 = 0xa0000;
/// Start of the reserved area holding the ACPI tables.
pub const ACPI_START: u64 = 0xe0000;
/// Kernels without an address of their own load here.
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// Where RAM below 4 GiB stops; `[3 GiB, 4 GiB)` is the MMIO hole.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// PCI ECAM (bus 0 only, 1 MiB), described by the MCFG table; reserved in the e820 map so
/// Linux trusts the MCFG.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// Size of the ECAM window.
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
/// First IOAPIC input wired to PCI INTx lines (the ISA IRQs take 0..16).
pub const PCI_INTX_GSI_BASE: u32 = 16;
/// IOAPIC inputs 16..24 carry the INTx lines of bus 0, shared round-robin.
pub const PCI_INTX_GSIS: u32 = 8;

/// The GSI that INTx pin `pin` (0 = INTA# .. 3 = INTD#) of the device in `slot` raises on bus
/// 0: the usual swizzle `(slot + pin) mod 8` over GSIs 16..24. The DSDT's `_PRT` and the VMM
/// both use this, so what the guest reads from ACPI is what the device drives.
pub fn pci_intx_gsi(slot: u8, pin: u8) -> u32 {
    PCI_INTX_GSI_BASE + (u32::from(slot) + u32::from(pin)) % PCI_INTX_GSIS
}
/// Where RAM resumes above the hole.
pub const RAM_ABOVE_4G: u64 = 0x1_0000_0000;
/// KVM's identity-map page (one page) on Intel hosts.
pub const KVM_IDENTITY_MAP: u64 = 0xfffb_c000;
/// KVM's TSS (three pages) on Intel hosts.
pub const KVM_TSS: u64 = 0xfffb_d000;
/// IOAPIC MMIO base.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
