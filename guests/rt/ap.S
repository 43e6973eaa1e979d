/* ironvirt guest test kit: application processor start-up.
 *
 * The trampoline is copied by ap_trampoline_install() (rt/ap.c) to a free page below 1 MiB;
 * a STARTUP IPI with vector = page number starts each AP there in real mode at CS = page << 8,
 * IP = 0 (SDM vol. 3A 9.4.4 "MP Initialization Example"). It is position independent: data
 * is addressed relative to CS in real mode and relative to %ebx (the trampoline's linear base)
 * in protected mode. It goes real mode -> 32-bit protected mode -> long mode on the BSP's page
 * tables and jumps to ap_entry64 in the image. Kept short: every instruction here is emulated.
 */
#define MAX_CPUS      64
#define AP_STACK_SHIFT 13         /* 8 KiB per AP stack; matches rt/link.ld */

        .section .rodata.tramp, "a"   /* data, not code, for this image: it runs elsewhere */
        .code16
        .globl ap_tramp_start, ap_tramp_pm32, ap_tramp_data, ap_tramp_end
ap_tramp_start:
        cli
        cld
        movw    %cs, %ax
        movw    %ax, %ds
        xorl    %ebx, %ebx
        movw    %ax, %bx
        shll    $4, %ebx                      /* linear base of this page */
        lgdtl   (tramp_gdtr - ap_tramp_start)
        movl    %cr4, %eax
        orl     $0x20, %eax                   /* CR4.PAE */
        movl    %eax, %cr4
        movl    (tramp_cr3 - ap_tramp_start), %eax
        movl    %eax, %cr3
        movl    $0xc0000080, %ecx             /* IA32_EFER */
        rdmsr
        orl     $0x100, %eax                  /* EFER.LME */
        wrmsr
        movl    %cr0, %eax
        orl     $1, %eax                      /* CR0.PE */
        movl    %eax, %cr0
        ljmpl   *(tramp_far32 - ap_tramp_start)

        .code32
ap_tramp_pm32:
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movl    %cr0, %eax
        orl     $0x80000000, %eax             /* CR0.PG: activates IA-32e mode (LME set) */
        movl    %eax, %cr0
        ljmp    *(tramp_far64 - ap_tramp_start)(%ebx)

        .p2align 2
ap_tramp_data:                                /* filled in by ap_trampoline_install() */
tramp_gdtr:  .word 0                          /* limit */
             .long 0                          /* base (the image's GDT) */
tramp_far32: .long 0                          /* linear address of ap_tramp_pm32 */
             .word 0x18                       /* 32-bit code selector */
tramp_cr3:   .long 0
tramp_far64: .long 0                          /* ap_entry64 */
             .word 0x08                       /* 64-bit code selector */
ap_tramp_end:

        .text
        .code64
        .globl ap_entry64
ap_entry64:
        movl    $0x10, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        movl    %eax, %fs
        movl    %eax, %gs
        movl    $1, %eax
        lock xaddl %eax, ap_stack_next(%rip)  /* unique stack slot per AP */
        cmpl    $MAX_CPUS, %eax
        jae     halt_forever
        incl    %eax
        shlq    $AP_STACK_SHIFT, %rax
        leaq    ap_stacks(%rip), %rsp
        addq    %rax, %rsp                    /* top of slot */
        call    rt_ap_entry
        jmp     halt_forever

        .bss
        .p2align 2
ap_stack_next: .long 0

        .section .stacks, "aw", @nobits
        .p2align 12
        .globl ap_stacks
ap_stacks:
        .skip   MAX_CPUS << AP_STACK_SHIFT

        .section .note.GNU-stack, "", @progbits
