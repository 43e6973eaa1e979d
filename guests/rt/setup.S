/* ironvirt guest test kit: real-mode setup code of the bzImage (tools/mkbzimage.py puts it at
 * offset 0x280 of the setup sectors; the header's jump at 0x200 lands here).
 *
 * ironvirt-vmm (linux-loader) never runs this: it loads the protected-mode part and enters at
 * load address + 0x200 in 64-bit mode. Loaders that follow the 16-bit protocol (QEMU's
 * linuxboot option ROM on -M q35/pc, qboot on microvm) jump here in real mode with
 * CS = setup segment + 0x20 (Documentation/arch/x86/boot.rst, "Running the Kernel"). We do
 * what Linux's setup does, minimally: build a zero page (copy of the setup header + BIOS E820
 * map), switch to 32-bit protected mode and enter code32_start with esi = zero page
 * (boot.rst, "32-bit BOOT PROTOCOL": CS = 0x10, DS = ES = SS = 0x18, flat).
 */
#define BP 0x1000                 /* zero page at setup base + 4 KiB, just after the setup sectors */
#define HDR_START 0x1f1           /* setup header: 0x1f1 .. 0x26c (protocol 2.15) */
#define HDR_END 0x26c
#define E820_MAGIC 0x534d4150     /* "SMAP" (ACPI 6.5 section 15.1, INT 15h E820h) */

        .code16
        .text
        .globl _start
_start:
        cli
        cld
        movw    %cs, %ax
        subw    $0x20, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $0xf000, %sp              /* inside our 64 KiB segment, below QEMU's cmdline */

        movw    $BP, %di                  /* zero the zero page */
        movw    $4096, %cx
        xorb    %al, %al
        rep stosb
        movw    $HDR_START, %si           /* boot_params.hdr = our setup header as the loader left it */
        movw    $(BP + HDR_START), %di
        movw    $(HDR_END - HDR_START), %cx
        rep movsb

        xorl    %ebx, %ebx                /* E820 continuation value */
        movw    $(BP + 0x2d0), %di        /* boot_params.e820_table */
1:      movl    $0xe820, %eax
        movl    $E820_MAGIC, %edx
        movl    $20, %ecx
        int     $0x15
        jc      2f
        cmpl    $E820_MAGIC, %eax
        jne     2f
        incb    (BP + 0x1e8)              /* boot_params.e820_entries */
        addw    $20, %di
        testl   %ebx, %ebx
        jz      2f
        cmpb    $128, (BP + 0x1e8)
        jb      1b
2:
        inb     $0x92, %al                /* fast A20 gate; never set bit 0 (reset) */
        orb     $0x02, %al
        andb    $0xfe, %al
        outb    %al, $0x92

        xorl    %ebx, %ebx
        movw    %ds, %bx
        shll    $4, %ebx                  /* linear address of the setup base */
        movl    %ebx, %eax
        addl    $gdt, %eax
        movl    %eax, (gdt_desc + 2)
        movl    %ebx, %eax
        addl    $pm32, %eax
        movl    %eax, (far32)
        lgdtl   (gdt_desc)
        movl    %cr0, %eax
        orl     $1, %eax                  /* CR0.PE */
        movl    %eax, %cr0
        ljmpl   *(far32)

        .code32
pm32:
        movl    $0x18, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        movl    %eax, %fs
        movl    %eax, %gs
        leal    BP(%ebx), %esi
        movl    0x214(%ebx), %eax         /* hdr.code32_start */
        xorl    %ebx, %ebx
        xorl    %ebp, %ebp
        xorl    %edi, %edi
        jmp     *%eax

        .p2align 3
gdt:    .quad   0, 0
        .quad   0x00cf9b000000ffff        /* 0x10: __BOOT_CS, flat 32-bit code */
        .quad   0x00cf93000000ffff        /* 0x18: __BOOT_DS, flat data */
gdt_end:
gdt_desc:
        .word   gdt_end - gdt - 1
        .long   0
far32:  .long   0
        .word   0x10

        .section .note.GNU-stack, "", @progbits
