/* ironvirt guest test kit: entry points.
 *
 * One image, linked at 1 MiB, entered in any of three ways:
 *   pvh_start32  PVH (32-bit protected mode, paging off, ebx = hvm_start_info), found through
 *                the XEN_ELFNOTE_PHYS32_ENTRY note below (xen/include/public/elfnote.h,
 *                docs "x86/HVM direct boot ABI").
 *   startup_32   Linux 32-bit boot protocol (esi = boot_params), image offset 0 = code32_start;
 *                only reached through our own bzImage real-mode setup (rt/setup.S).
 *   startup_64   Linux 64-bit boot protocol (rsi = boot_params, long mode, first 4 GiB mapped),
 *                image offset 0x200 (Documentation/arch/x86/boot.rst, "64-bit BOOT PROTOCOL");
 *                it is also the ELF e_entry.
 * All of them zero .bss, switch to the kit's own static page tables (identity map of 64 GiB
 * with 2 MiB pages, so memory above 4 GiB is reachable), load the kit's GDT and call
 * rt_main(proto, info).
 */

#define BOOT_PVH   1
#define BOOT_LINUX 2

#define CR0_PE    0x00000001      /* SDM vol. 3A 2.5 */
#define CR0_PG    0x80000000
#define CR4_PAE   0x00000020
#define MSR_EFER  0xc0000080      /* SDM vol. 3A 2.2.1 */
#define EFER_LME  0x00000100
#define PTE_P     0x001
#define PTE_RW    0x002
#define PTE_PS    0x080           /* 2 MiB page in a PD entry (SDM vol. 3A table 4-17) */

#define KERNEL_CS 0x08
#define KERNEL_DS 0x10

#define NR_PDS    64              /* 64 page directories x 1 GiB = 64 GiB identity map */

/* ---------------------------------------------------------------------------------------- */
        .section .head, "ax"
        .code32
        .globl startup_32
startup_32:                       /* image offset 0: code32_start of the bzImage */
        cli
        movl    $BOOT_LINUX, %edi
        jmp     common32

        .globl pvh_start32
pvh_start32:
        cli
        movl    $BOOT_PVH, %edi
        movl    %ebx, %esi
        jmp     common32

        .org    0x200             /* boot.rst: 64-bit entry = protected-mode load address + 0x200 */
        .code64
        .globl startup_64
startup_64:
        cli
        cld
        movq    %rsi, %r12                    /* boot_params; rep stosq leaves r12 alone */
        leaq    _bss_start(%rip), %rdi
        leaq    _bss_end(%rip), %rcx
        subq    %rdi, %rcx
        shrq    $3, %rcx                      /* .bss is 8-byte aligned and sized (link.ld) */
        xorl    %eax, %eax
        rep stosq                             /* 8x fewer emulated iterations than stosb */
        movl    $BOOT_LINUX, boot_proto(%rip)
        movq    %r12, boot_raw(%rip)
        leaq    boot_stack_top(%rip), %rsp

        /* The page tables are static data (below): nothing to build. */
        leaq    pml4(%rip), %rax
        movq    %rax, %cr3
        lgdt    gdt_desc(%rip)
        pushq   $KERNEL_CS                    /* reload CS from our GDT */
        leaq    long_common(%rip), %rax
        pushq   %rax
        lretq

/* ---------------------------------------------------------------------------------------- */
        .text
        .code32
common32:                                     /* edi = protocol, esi = boot structure */
        cld
        movl    %edi, %ebp
        movl    $_bss_start, %edi
        movl    $_bss_end, %ecx
        subl    %edi, %ecx
        shrl    $2, %ecx
        xorl    %eax, %eax
        rep stosl
        movl    %ebp, boot_proto
        movl    %esi, boot_raw                /* upper half already zero (.bss) */
        movl    $boot_stack_top, %esp

        /* Enter long mode: SDM vol. 3A 10.8.5 "Initializing IA-32e Mode". */
        movl    %cr4, %eax
        orl     $CR4_PAE, %eax
        movl    %eax, %cr4
        movl    $pml4, %eax
        movl    %eax, %cr3
        movl    $MSR_EFER, %ecx
        rdmsr
        orl     $EFER_LME, %eax
        wrmsr
        lgdt    gdt_desc
        movl    %cr0, %eax
        orl     $(CR0_PG | CR0_PE), %eax
        movl    %eax, %cr0
        /* Far return instead of ljmp: the same effect, and its bytes disassemble cleanly as
         * 64-bit code too, which tools/check-insns.sh relies on. */
        pushl   $KERNEL_CS
        pushl   $long_common
        lret

        .code64
long_common:
        movl    $KERNEL_DS, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        movl    %eax, %fs
        movl    %eax, %gs
        leaq    boot_stack_top(%rip), %rsp
        movl    boot_proto(%rip), %edi
        movq    boot_raw(%rip), %rsi
        call    rt_main
        jmp     halt_forever

        .globl halt_forever
halt_forever:
        cli
1:      hlt
        jmp     1b

/* Exception stubs: print what happened instead of triple-faulting (SDM vol. 3A table 6-1
 * lists the vectors that push an error code: 8, 10-14, 17, 21, 29, 30). */
        .macro EXC vec
exc_\vec:
        .if !((\vec == 8) || ((\vec >= 10) && (\vec <= 14)) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30))
        pushq   $0
        .endif
        pushq   $\vec
        jmp     exc_common
        .endm
        .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        EXC \v
        .endr

exc_common:
        movq    (%rsp), %rdi                  /* vector */
        movq    8(%rsp), %rsi                 /* error code */
        movq    16(%rsp), %rdx                /* faulting rip */
        movq    %cr2, %rcx
        andq    $-16, %rsp
        call    rt_exception
        jmp     halt_forever

        .section .rodata
        .p2align 3
        .globl exc_stubs
exc_stubs:
        .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .quad exc_\v
        .endr

/* ---------------------------------------------------------------------------------------- */
        .data
        .p2align 3
        .globl gdt, gdt_desc
gdt:    /* accessed bits preset so the CPU never writes the GDT (SDM vol. 3A 3.4.5) */
        .quad   0
        .quad   0x00af9b000000ffff            /* 0x08: 64-bit code (L=1) */
        .quad   0x00cf93000000ffff            /* 0x10: flat data */
        .quad   0x00cf9b000000ffff            /* 0x18: flat 32-bit code (AP trampoline) */
gdt_end:
        .p2align 3
gdt_desc:
        .word   gdt_end - gdt - 1
        .quad   gdt                           /* lgdt in 32-bit mode reads the low 4 bytes */

        .bss
        .p2align 3
        .globl boot_proto, boot_raw
boot_proto: .long 0
        .long 0
boot_raw:   .quad 0

/* Page tables: static data, laid out by the assembler and loaded with the image, so no guest
 * instruction builds them (ring-0 code runs in KVM's instruction emulator on software-nested
 * hosts: building 32768 entries at boot cost ~130 ms there). The image runs at its link
 * address, so absolute addresses are physical ones. */
        .section .pagetables, "aw"
        .p2align 12
        .globl pml4
pml4:   .quad pdpt + PTE_P + PTE_RW
        .fill 511, 8, 0
pdpt:
        .set pd_addr, pds
        .rept NR_PDS
        .quad pd_addr + PTE_P + PTE_RW
        .set pd_addr, pd_addr + 4096
        .endr
        .fill 512 - NR_PDS, 8, 0
pds:
        .set page, 0
        .rept NR_PDS * 512
        .quad page + PTE_P + PTE_RW + PTE_PS
        .set page, page + 0x200000
        .endr

        .section .stacks, "aw", @nobits
        .p2align 12
        .skip 16384
        .globl boot_stack_top
boot_stack_top:

/* PVH entry note: XEN_ELFNOTE_PHYS32_ENTRY = 18, name "Xen", 32-bit physical entry address. */
        .section .note.Xen, "a", @note
        .p2align 2
        .long   4                             /* namesz, "Xen\0" */
        .long   4                             /* descsz */
        .long   18                            /* type: XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz  "Xen"
        .p2align 2
        .long   pvh_start32

        .section .note.GNU-stack, "", @progbits
