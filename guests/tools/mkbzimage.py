#!/usr/bin/env python3
"""Wraps a kit guest in a Linux bzImage (Documentation/arch/x86/boot.rst, protocol 2.15).

Layout: setup sectors (boot sector + setup header + rt/setup.S real-mode code at 0x280),
then the protected-mode kernel: the guest's flat image, which must run when loaded at
0x100000 with its 64-bit entry at offset 0x200 (startup_64, rt/entry.S).

usage: mkbzimage.py SETUP_BIN FLAT_BIN ELF OUT
  ELF is the same guest linked as ELF; its PT_LOAD p_memsz gives init_size (.bss, page
  tables and stacks are not in the flat image).
"""
import struct
import sys

LOAD_ADDR = 0x100000
SETUP_SECTS = 7            # setup = 7 sectors after the boot sector: 4 KiB in all
SETUP_CODE_OFF = 0x280     # where rt/setup.S is linked
LOADED_HIGH = 0x01         # loadflags bit 0: protected-mode code at 0x100000
XLF_KERNEL_64 = 0x01       # xloadflags bit 0: has the 64-bit entry at +0x200
CMDLINE_SIZE = 4095        # rt/rt.h CMDLINE_MAX - 1


def elf_footprint(path):
    """Highest p_paddr + p_memsz of PT_LOAD segments, and e_entry."""
    data = open(path, "rb").read()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        sys.exit(f"{path}: not an ELF64 file")
    e_entry, e_phoff = struct.unpack_from("<QQ", data, 0x18)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 0x36)
    end = 0
    for i in range(e_phnum):
        p_type, _flags, _off, _vaddr, paddr, _filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == 1:
            end = max(end, paddr + memsz)
    return e_entry, end


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    setup_code = open(sys.argv[1], "rb").read()
    kernel = open(sys.argv[2], "rb").read()
    entry, end = elf_footprint(sys.argv[3])
    if entry != LOAD_ADDR + 0x200:
        sys.exit(f"64-bit entry is {entry:#x}, expected {LOAD_ADDR + 0x200:#x}")
    setup_size = (SETUP_SECTS + 1) * 512
    if SETUP_CODE_OFF + len(setup_code) > setup_size:
        sys.exit("real-mode setup code does not fit in the setup sectors")
    init_size = (end - LOAD_ADDR + 0xfff) & ~0xfff

    setup = bytearray(setup_size)
    setup[SETUP_CODE_OFF:SETUP_CODE_OFF + len(setup_code)] = setup_code
    fields = [  # (offset, struct format, value), boot.rst "THE REAL-MODE KERNEL HEADER"
        (0x1f1, "B", SETUP_SECTS),          # setup_sects
        (0x1f2, "H", 0),                    # root_flags
        (0x1f4, "I", (len(kernel) + 15) // 16),  # syssize, 16-byte paragraphs
        (0x1fa, "H", 0xffff),               # vid_mode: "normal"
        (0x1fc, "H", 0),                    # root_dev
        (0x1fe, "H", 0xAA55),               # boot_flag
        (0x200, "B", 0xEB),                 # jump: short jmp ...
        (0x201, "B", SETUP_CODE_OFF - 0x202),  # ... to the setup code
        (0x202, "4s", b"HdrS"),             # header magic
        (0x206, "H", 0x020F),               # version 2.15
        (0x208, "I", 0),                    # realmode_swtch
        (0x20C, "H", 0x1000),               # start_sys_seg (obsolete)
        (0x20E, "H", 0),                    # kernel_version: none
        (0x210, "B", 0),                    # type_of_loader: set by the loader
        (0x211, "B", LOADED_HIGH),          # loadflags
        (0x212, "H", 0x8000),               # setup_move_size
        (0x214, "I", LOAD_ADDR),            # code32_start
        (0x218, "I", 0),                    # ramdisk_image
        (0x21C, "I", 0),                    # ramdisk_size
        (0x220, "I", 0),                    # bootsect_kludge
        (0x224, "H", 0),                    # heap_end_ptr
        (0x228, "I", 0),                    # cmd_line_ptr: set by the loader
        (0x22C, "I", 0x7FFFFFFF),           # initrd_addr_max
        (0x230, "I", 0x100000),             # kernel_alignment
        (0x234, "B", 0),                    # relocatable_kernel: no
        (0x235, "B", 20),                   # min_alignment: 1 MiB (log2)
        (0x236, "H", XLF_KERNEL_64),        # xloadflags
        (0x238, "I", CMDLINE_SIZE),         # cmdline_size
        (0x23C, "I", 0),                    # hardware_subarch: default PC
        (0x240, "Q", 0),                    # hardware_subarch_data
        (0x248, "I", 0),                    # payload_offset
        (0x24C, "I", 0),                    # payload_length
        (0x250, "Q", 0),                    # setup_data
        (0x258, "Q", LOAD_ADDR),            # pref_address
        (0x260, "I", init_size),            # init_size
        (0x264, "I", 0),                    # handover_offset: no EFI handover
        (0x268, "I", 0),                    # kernel_info_offset: none
    ]
    for off, fmt, val in fields:
        struct.pack_into("<" + fmt, setup, off, val)
    with open(sys.argv[4], "wb") as f:
        f.write(setup)
        f.write(kernel)


if __name__ == "__main__":
    main()
