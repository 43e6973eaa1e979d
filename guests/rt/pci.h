/* ironvirt guest test kit: PCI configuration access and bus 0 enumeration (rt/pci.c).
 *
 * References: PCI Local Bus Specification 3.0 (configuration mechanism #1 in 3.2.2.3.2, type 0
 * header in 6.1/6.2, BARs in 6.2.5.1, capability list in 6.7, MSI-X in 6.8.2), PCI Express Base
 * Specification (ECAM, 7.2.2), PCI Firmware Specification 3.2 4.1.2 (the ACPI MCFG table).
 */
#ifndef IRONVIRT_KIT_PCI_H
#define IRONVIRT_KIT_PCI_H

#include "rt.h"

/* Type 0 configuration header offsets (PCI 3.0 figure 6-1). */
#define PCI_VENDOR_ID 0x00
#define PCI_DEVICE_ID 0x02
#define PCI_COMMAND 0x04
#define PCI_STATUS 0x06
#define PCI_CLASS_REV 0x08 /* revision in bits 7:0, class code in bits 31:8 */
#define PCI_HEADER_TYPE 0x0e
#define PCI_BAR0 0x10
#define PCI_CAP_PTR 0x34
#define PCI_INTERRUPT_LINE 0x3c
#define PCI_INTERRUPT_PIN 0x3d

#define PCI_COMMAND_IO 0x1     /* 6.2.2: I/O space enable */
#define PCI_COMMAND_MEMORY 0x2 /* memory space enable */
#define PCI_COMMAND_MASTER 0x4 /* bus master enable */
#define PCI_COMMAND_INTX_DISABLE 0x400
#define PCI_STATUS_CAP_LIST 0x10 /* 6.2.3: capabilities list present */
#define PCI_HEADER_MULTIFUNCTION 0x80

/* BAR low bits (6.2.5.1). */
#define PCI_BAR_IO 0x1
#define PCI_BAR_MEM_TYPE_MASK 0x6
#define PCI_BAR_MEM_TYPE_64 0x4
#define PCI_BAR_PREFETCH 0x8

/* Capability ids (PCI Code and ID Assignment Specification, chapter 2). */
#define PCI_CAP_MSI 0x05
#define PCI_CAP_VENDOR 0x09
#define PCI_CAP_EXP 0x10
#define PCI_CAP_MSIX 0x11

/* MSI-X capability (PCI 3.0 6.8.2): message control at +2, table offset/BIR at +4, PBA at +8. */
#define MSIX_CTRL 2
#define MSIX_CTRL_TABLE_SIZE 0x7ff /* N - 1 */
#define MSIX_CTRL_FUNC_MASK 0x4000
#define MSIX_CTRL_ENABLE 0x8000
#define MSIX_TABLE 4
#define MSIX_PBA 8
#define MSIX_BIR_MASK 0x7
/* MSI-X table entry (6.8.2.6-6.8.2.9): 16 bytes. */
#define MSIX_ENTRY_ADDR_LO 0
#define MSIX_ENTRY_ADDR_HI 4
#define MSIX_ENTRY_DATA 8
#define MSIX_ENTRY_CTRL 12
#define MSIX_ENTRY_MASKED 0x1

#define PCI_MAX_DEVS 64

struct pci_bar {
    u64 addr;  /* bus address (0 when unimplemented or unassigned I/O) */
    u64 size;  /* 0 when unimplemented */
    u8 io;     /* I/O space BAR */
    u8 is64;   /* 64-bit memory BAR: occupies this slot and the next */
    u8 prefetch;
    u8 assigned; /* 1 when the kit assigned it (firmware had left it zero) */
};

struct pci_dev {
    u8 bus, dev, fn;
    u8 header_type;
    u16 vendor, device;
    u32 class_code; /* 24 bits: base class, subclass, programming interface */
    struct pci_bar bar[6]; /* filled by pci_enable() */
};

/* Chooses the access method: ECAM when the ACPI MCFG table has an entry for segment 0 bus 0,
 * else ports 0xCF8/0xCFC. Command line: `pci_ecam=0xADDR` gives an ECAM base where there is no
 * MCFG (QEMU 7.2 microvm,pcie=on: 0xe0000000), `pci=cf8` forces the ports, `pci_mmio=0xADDR`
 * moves the BAR allocator (rt/pci.c). Prints `pci-access: ecam 0x<base>` or `pci-access: cf8`.
 * Call after acpi_init (rt_main does). */
void pci_init(void);
extern u64 pci_ecam_base; /* 0 when using 0xCF8/0xCFC */

u32 pci_read32(const struct pci_dev *d, u16 off);
u16 pci_read16(const struct pci_dev *d, u16 off);
u8 pci_read8(const struct pci_dev *d, u16 off);
void pci_write32(const struct pci_dev *d, u16 off, u32 v);
void pci_write16(const struct pci_dev *d, u16 off, u16 v);
void pci_write8(const struct pci_dev *d, u16 off, u8 v);

/* Scans bus 0, slots 0..31, function 0 and (for multi-function devices) functions 1..7; prints
 * `pci: bb:dd.f vvvv:dddd class 0xcccccc` for each. Returns the number found (at most
 * PCI_MAX_DEVS, kept in pci_devs). */
int pci_scan(void);
extern struct pci_dev pci_devs[PCI_MAX_DEVS];
extern int pci_ndevs;
/* First scanned function with that vendor and one of the device ids (0xffff ends the list). */
struct pci_dev *pci_find(u16 vendor, const u16 *devices);

/* Sizes every BAR (decoding off meanwhile; write all ones, read back, restore), assigns memory
 * BARs that firmware left at zero from the kit's bump allocator (see pci.c), then enables memory
 * space and bus mastering. Prints one `pci-bar:` line per implemented BAR and one `pci-caps:`
 * line with the capability list. */
void pci_enable(struct pci_dev *d);
/* Offset of the first capability with id `id` after `after` (0: from the start), 0 if none. */
u8 pci_find_cap(const struct pci_dev *d, u8 id, u8 after);

#endif
