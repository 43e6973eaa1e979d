/* ironvirt guest test kit: stubs for interrupt vectors 32..255.
 *
 * Stub n sits at irq_stubs + 16 * (n - 32): it pushes its vector and jumps to irq_common,
 * which saves the registers the SysV ABI lets C clobber, calls rt_irq(vector) and returns with
 * iretq. In 64-bit mode the CPU aligns RSP to 16 bytes before pushing SS, RSP, RFLAGS, CS and
 * RIP (SDM vol. 3A 6.14.2), so after those 5, the vector and 9 registers RSP is 8 bytes off a
 * 16-byte boundary: one more slot aligns the call. Interrupt gates clear IF (SDM vol. 3A
 * 6.12.1.3), so handlers never nest.
 */
        .text
        .p2align 4
        .globl irq_stubs
irq_stubs:
        .set vec, 32
        .rept 224
        .p2align 4
        pushq   $vec
        jmp     irq_common
        .set vec, vec + 1
        .endr

irq_common:
        pushq   %rax
        pushq   %rcx
        pushq   %rdx
        pushq   %rsi
        pushq   %rdi
        pushq   %r8
        pushq   %r9
        pushq   %r10
        pushq   %r11
        movl    72(%rsp), %edi                /* the vector pushed by the stub */
        subq    $8, %rsp
        call    rt_irq
        addq    $8, %rsp
        popq    %r11
        popq    %r10
        popq    %r9
        popq    %r8
        popq    %rdi
        popq    %rsi
        popq    %rdx
        popq    %rcx
        popq    %rax
        addq    $8, %rsp                      /* the vector */
        iretq

        .section .note.GNU-stack, "", @progbits
