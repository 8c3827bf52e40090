/*
 * tiny.S - the parvm test guest kernel ("tiny").
 *
 * A few KiB of x86-64 code that a VMM can boot three ways (see
 * docs/guests.md and docs/boot-protocol.md):
 *
 *   offset 0x000 (0x100000)  pvh_entry  32-bit PVH entry, ebx = hvm_start_info
 *                            (named by the PVH ELF note in tiny.elf)
 *   offset 0x200 (0x100200)  entry64    64-bit Linux boot protocol entry,
 *                            rsi = boot_params (e_entry of the ELF files, and
 *                            "startup_64" of tiny.bzImage)
 *
 * Both entries record where the boot information is, switch to the guest's
 * OWN page tables/GDT/IDT/TSS (all built at assembly/link time, so CPL0 does
 * almost no work: on PVM every CPL0 instruction is emulated at ~1M/s), print
 * "parvm-guest: ready" and drop to CPL3 with IOPL=3 (plus an all-ports TSS
 * I/O bitmap, which is what PVM honours). Everything else - boot
 * info parsing, ACPI, SMP bring-up, the initrd hash - runs at CPL3, which
 * runs natively under PVM. Every page is mapped present|rw|user, so CPL3 can
 * touch RAM, the local APIC and any MMIO window directly.
 *
 * Output (COM1, one line each, in this order):
 *   parvm-guest: ready
 *   parvm-guest: boot=pvh | boot=linux64
 *   parvm-guest: mem=<N>MiB
 *   parvm-guest: cmdline=<text>
 *   parvm-guest: cpus=<N> | cpus=1 (no acpi) | cpus=1 (no madt)
 *   parvm-guest: smp online=<M>/<N>
 *   parvm-guest: cpl=3
 *   parvm-guest: initrd bytes=<dec> fnv1a64=<16 hex> | initrd none
 *   then one of:
 *   parvm-guest: triple fault now      (cmdline token parvm.test=triplefault)
 *   parvm-guest: hanging               (cmdline token parvm.test=hang)
 *   parvm-guest: exception 6 rip=...   (cmdline token parvm.test=exception:
 *                                       ud2 at CPL3, then as any exception)
 *   parvm-guest: blk ... / blkbench ... (cmdline tokens parvm.test=blk and
 *                                       parvm.test=blkbench: the virtio-blk
 *                                       driver in blk.S, then poweroff)
 *   parvm-guest: blkswap ...           (parvm.test=blkswap: blk with RAM
 *                                       sweeps in between, blk.S/mem.S)
 *   parvm-guest: memtest ...           (parvm.test=memtest: mem.S)
 *   parvm-guest: poweroff              (default: i8042 reset, then triple fault)
 * and on any CPU exception:
 *   parvm-guest: exception <vector, decimal> rip=0x<16 hex digits>
 * followed by an i8042 reset and, failing that, a triple fault.
 *
 * Register conventions for the helper routines below: arguments in the
 * registers named in each header comment; rax, rcx, rdx, rsi, rdi, r8-r11 may
 * be clobbered; rbx, rbp, r12-r15 are preserved. No SSE/AVX anywhere (PVM's
 * CPL0 emulator lacks many instructions; CPL3 code stays simple too).
 *
 * Everything (code and data) lives in one section, .kernel, so that the
 * assembler can compute link-time addresses as (label - _start + LOAD_ADDR)
 * and build the IDT and TSS descriptor statically. The linker scripts assert
 * that _start really is at LOAD_ADDR. Stacks live in .kernel.bss (not in the
 * file; nothing relies on their contents being zero).
 */

        .set LOAD_ADDR,     0x100000    /* where the image is linked/loaded */
        .set COM1,          0x3f8
        .set LAPIC,         0xfee00000  /* xAPIC MMIO base */
        .set LAPIC_ID,      0x020
        .set LAPIC_EOI,     0x0b0
        .set LAPIC_SVR,     0x0f0
        .set LAPIC_ICR_LO,  0x300
        .set LAPIC_ICR_HI,  0x310
        .set TRAMP_ADDR,    0x8000      /* AP trampoline (SIPI vector 0x08) */
        .set MAX_CPUS,      256         /* xAPIC ids are 8 bits */
        .set AP_STACK_SIZE, 512

        .set BOOT_PVH,      1
        .set BOOT_LINUX64,  2

        /* GDT selectors (see gdt below) */
        .set KCODE64,       0x08
        .set KDATA,         0x10
        .set KCODE32,       0x18
        .set UDATA,         0x20
        .set UCODE64,       0x28
        .set TSS_SEL,       0x30

        .set VEC_TRIPLE,    0x81        /* DPL3 gate: "triple-fault me" (works
                                           natively/TCG; PVM turns int n at CPL3
                                           into #UD, see triple_requested) */
        .set CR4_CLEAR,     0x00f00004  /* TSD|SMEP|SMAP|PKE|CET: CPL0 runs on user pages */

        /* hvm_start_info (PVH) offsets */
        .set HSI_MAGIC,     0
        .set HSI_VERSION,   4
        .set HSI_NR_MODULES, 12
        .set HSI_MODLIST,   16
        .set HSI_CMDLINE,   24
        .set HSI_RSDP,      32
        .set HSI_MEMMAP,    40
        .set HSI_MEMMAP_N,  48
        .set HVM_START_MAGIC, 0x336ec578

        /* boot_params (Linux zero page) offsets */
        .set BP_ACPI_RSDP,  0x070
        .set BP_EXT_RD_IMG, 0x0c0
        .set BP_EXT_RD_SIZE, 0x0c4
        .set BP_EXT_CMDLINE, 0x0c8
        .set BP_E820_N,     0x1e8
        .set BP_RD_IMG,     0x218
        .set BP_RD_SIZE,    0x21c
        .set BP_CMDLINE,    0x228
        .set BP_E820,       0x2d0

        .set CMDLINE_MAX,   4096

        .section .note.GNU-stack, "", @progbits

        .section .kernel, "awx", @progbits
        .globl _start, pvh_entry, entry64       /* used by the linker scripts */
        .globl isr_stubs, isr_stubs_end, tramp_start, tramp_end, _kernel_image_end
        .globl _kernel_bss_end

/* ======================================================================
 * 32-bit PVH entry (offset 0): protected mode, paging off, flat segments,
 * ebx = hvm_start_info. No stack is guaranteed, so none is used here.
 * ====================================================================== */
        .code32
_start:
pvh_entry:
        cli
        movl    %ebx, boot_info                 /* hvm_start_info (< 4 GiB) */
        movl    $0, boot_info + 4
        movl    $BOOT_PVH, boot_kind

        movl    %cr4, %eax                      /* PAE on, risky bits off */
        andl    $~CR4_CLEAR, %eax
        orl     $0x20, %eax
        movl    %eax, %cr4
        movl    $pml4, %eax                     /* our identity map */
        movl    %eax, %cr3
        movl    $0xc0000080, %ecx               /* EFER.LME */
        rdmsr
        orl     $0x100, %eax
        wrmsr
        lgdt    gdt_ptr                         /* our GDT (32-bit base) */
        movl    %cr0, %eax                      /* paging on -> long mode */
        orl     $0x80000001, %eax
        movl    %eax, %cr0
        ljmp    $KCODE64, $common64

/* ======================================================================
 * 64-bit Linux boot protocol entry (offset 0x200, like Linux's
 * startup_64): long mode, the VMM's page tables, rsi = boot_params.
 * ====================================================================== */
        .org    0x200
        .code64
entry64:
        cli
        movq    %rsi, boot_info(%rip)
        movl    $BOOT_LINUX64, boot_kind(%rip)
        leaq    kstack_top(%rip), %rsp          /* the VMM gives no stack */
        movq    %cr4, %rax
        andq    $~CR4_CLEAR, %rax
        movq    %rax, %cr4
        leaq    pml4(%rip), %rax                /* same identity map, ours */
        movq    %rax, %cr3
        lgdt    gdt_ptr(%rip)
        pushq   $KCODE64                        /* reload CS from our GDT */
        leaq    common64(%rip), %rax
        pushq   %rax
        lretq

/* ======================================================================
 * Common 64-bit CPL0 code. Kept as short as possible: set segments and
 * stack, print "ready", mask the PICs, load IDT/TSS, iretq to CPL3.
 * ====================================================================== */
common64:
        movl    $KDATA, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        xorl    %eax, %eax
        movl    %eax, %fs
        movl    %eax, %gs
        leaq    kstack_top(%rip), %rsp

        /* 8250 at COM1, minimally: no UART interrupts, 8N1, DLAB off.
         * (Emulated UARTs - QEMU, vm-superio - need no baud setup and always
         * accept THR writes, so putc does not poll LSR: half the exits.) */
        xorl    %eax, %eax
        movw    $COM1 + 1, %dx                  /* IER = 0 */
        outb    %al, %dx
        movb    $0x03, %al
        movw    $COM1 + 3, %dx                  /* LCR = 8N1 */
        outb    %al, %dx

        leaq    msg_ready(%rip), %rsi
        call    puts

        /* Mask both 8259s: KVM points the BSP's LINT0 at ExtINT, and an
         * unprogrammed PIC would deliver stray vectors (e.g. 8 = "#DF"). */
        movb    $0xff, %al
        outb    %al, $0x21
        outb    %al, $0xa1

        lidt    idt_ptr(%rip)
        movw    $TSS_SEL, %ax                   /* TSS.RSP0 = kstack_top: */
        ltr     %ax                             /* needed for CPL3 -> CPL0 */

        /* Drop to CPL3: IOPL=3 (port I/O allowed), IF=1. */
        pushq   $(UDATA | 3)                    /* SS */
        leaq    ustack_top(%rip), %rax
        pushq   %rax                            /* RSP */
        pushq   $0x3202                         /* RFLAGS: IOPL=3, IF, bit 1 */
        pushq   $(UCODE64 | 3)                  /* CS */
        leaq    user_main(%rip), %rax
        pushq   %rax                            /* RIP */
        iretq

/* ======================================================================
 * Interrupt/exception entry. 256 stubs of exactly 16 bytes each (the
 * linker script asserts it) so the IDT can be generated statically. Each
 * stub pushes a dummy error code (unless the CPU pushed one) and its vector.
 * ====================================================================== */
        .balign 16
isr_stubs:
        .set    vec, 0
        .rept   256
        .balign 16
        .if !((vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30))
        pushq   $0
        .endif
        pushq   $vec
        jmp     isr_common
        .set    vec, vec + 1
        .endr
        .balign 16
isr_stubs_end:

/* Stack on entry: vector, error code, RIP, CS, RFLAGS, RSP, SS. */
isr_common:
        cmpb    $0, triple_requested(%rip)
        jne     triple_fault_now
        cmpb    $0, halt_requested(%rip)        /* grant.S: wait at CPL0 */
        jne     grant_halt
        cmpq    $32, (%rsp)
        jb      exception
        cmpq    $VEC_TRIPLE, (%rsp)
        je      triple_fault_now
        /* Any other vector: an interrupt (spurious 0xff, timer, ...). Count
         * it, EOI the local APIC (harmless when nothing is in service) and
         * return to whatever was interrupted. */
        pushq   %rax
        incq    irq_count(%rip)
        movl    $(LAPIC + LAPIC_EOI), %eax
        movl    $0, (%rax)
        popq    %rax
        addq    $16, %rsp                       /* vector + error code */
        iretq

exception:
        leaq    msg_exception(%rip), %rsi
        call    puts
        movq    (%rsp), %rax                    /* vector */
        call    put_dec
        leaq    msg_rip(%rip), %rsi
        call    puts
        movq    16(%rsp), %rax                  /* faulting RIP */
        call    put_hex16
        movb    $'\n', %al
        call    putc
        jmp     reset_machine

/* Triple fault from CPL0: a stack pointer into unmapped memory and a
 * zero-limit IDT, then ud2: delivering #UD faults, so does the #DF, and the
 * CPU shuts down. Reached directly at CPL0, or from CPL3 via
 * int $VEC_TRIPLE. Not int3: PVM's CPL0 emulator fails on int3/int n (a
 * KVM internal error instead of a triple fault). The unmapped stack is
 * needed because under PVM a `lidt` inside a handler entered from CPL3
 * does not stop delivery through the old IDT (docs/pvm.md). */
triple_fault_now:
        cli
        lidt    null_idt_ptr(%rip)
        movabsq $0x0000700000000000, %rsp       /* not mapped (above 4 GiB) */
        ud2
1:      hlt
        jmp     1b

/* ======================================================================
 * Serial output helpers (work at CPL0 and at CPL3: IOPL=3 / TSS bitmap).
 * ====================================================================== */

/* putc: al = character. Clobbers dx. */
putc:
        movw    $COM1, %dx
        outb    %al, %dx
        ret

/* puts: rsi = NUL-terminated string. Clobbers rax, rdx, rsi. */
puts:
1:      movb    (%rsi), %al
        testb   %al, %al
        jz      2f
        call    putc
        incq    %rsi
        jmp     1b
2:      ret

/* put_dec: rax = unsigned value, printed in decimal. Clobbers rax, rcx,
 * rdx, rsi, rdi. Uses 32 bytes of stack as the digit buffer. */
put_dec:
        subq    $32, %rsp
        leaq    31(%rsp), %rdi
        movb    $0, (%rdi)
        movl    $10, %ecx
1:      xorl    %edx, %edx
        divq    %rcx
        addb    $'0', %dl
        decq    %rdi
        movb    %dl, (%rdi)
        testq   %rax, %rax
        jnz     1b
        movq    %rdi, %rsi
        call    puts
        addq    $32, %rsp
        ret

/* put_hex16: rax = value, printed as exactly 16 lowercase hex digits.
 * Clobbers rax, rcx, rdx, r8. */
put_hex16:
        movq    %rax, %r8
        movl    $16, %ecx
1:      rolq    $4, %r8
        movl    %r8d, %eax
        andl    $15, %eax
        cmpb    $10, %al
        jb      2f
        addb    $('a' - '0' - 10), %al
2:      addb    $'0', %al
        call    putc
        decl    %ecx
        jnz     1b
        ret

/* print_line_dec: rsi = prefix, rax = number; prints prefix, number, \n.
 * Clobbers rax, rcx, rdx, rsi, rdi. */
print_line_dec:
        pushq   %rax
        call    puts
        popq    %rax
        call    put_dec
        movb    $'\n', %al
        jmp     putc

/* reset_machine: i8042 reset (out 0x64, 0xfe; VMMs and QEMU's PC machines
 * stop or reset here), then, if still running (e.g. QEMU microvm has no
 * i8042), triple-fault so that "qemu -no-reboot" exits as well.
 * Works at CPL0 and at CPL3 (IOPL=3). Never returns. */
reset_machine:
        movb    $0xfe, %al
        outb    %al, $0x64
        movq    %cs, %rax
        testb   $3, %al
        jz      triple_fault_now
        /* CPL3: ask CPL0 to do it. Not `int $VEC_TRIPLE`: under PVM an
         * `int n` at CPL3 arrives as #UD (docs/pvm.md). So: set the flag
         * and raise #UD; the #UD path sees the flag. */
        movb    $1, triple_requested(%rip)
        ud2
1:      jmp     1b

/* ======================================================================
 * Application processors. ap_entry64 is reached from the real-mode
 * trampoline (copied to TRAMP_ADDR) in long mode on our GDT and CR3.
 * ====================================================================== */
ap_entry64:
        movl    $KDATA, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        movl    $1, %eax                        /* ticket -> private stack */
        lock xaddl %eax, ap_ticket(%rip)
        incl    %eax
        movl    %eax, %r8d                      /* r8d = ticket (1 = first AP) */
        shll    $9, %eax                        /* * AP_STACK_SIZE */
        leaq    ap_stacks(%rip), %rsp
        addq    %rax, %rsp
        lidt    idt_ptr(%rip)
        lock incl ap_online(%rip)               /* "I am up" */
        movq    ap_user_entry(%rip), %rax       /* work for the first AP? */
        testq   %rax, %rax
        jz      1f
        cmpl    $1, %r8d
        jne     1f
        /* Drop to CPL3 at ap_user_entry. The I/O bitmap (what lets CPL3 use
         * COM1 under PVM) is in the BSP's TSS: load that one here too,
         * clearing the busy bit the BSP's ltr set. The two CPUs then share
         * RSP0, which is fine as long as this AP takes no interrupt or
         * exception (nothing targets it: its local APIC stays disabled). */
        andb    $0xfd, gdt + TSS_SEL + 5(%rip)
        movw    $TSS_SEL, %dx
        ltr     %dx
        pushq   $(UDATA | 3)                    /* SS */
        leaq    ap_ustack_top(%rip), %rdx
        pushq   %rdx                            /* RSP */
        pushq   $0x3202                         /* RFLAGS: IOPL=3, IF, bit 1 */
        pushq   $(UCODE64 | 3)                  /* CS */
        pushq   %rax                            /* RIP */
        iretq
1:      cli
        hlt
        jmp     1b

/* The trampoline: 16-bit code run by an AP after SIPI at CS=0x0800, IP=0,
 * copied to TRAMP_ADDR. All addresses in it are (label - tramp_start +
 * TRAMP_ADDR). Real mode -> protected mode (KCODE32) -> long mode (KCODE64,
 * CR3 = pml4) -> jump to ap_entry64 at its link address. */
        .balign 16
        .code16
tramp_start:
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        lgdtl   tramp_gdtr - tramp_start + TRAMP_ADDR
        movl    %cr0, %eax
        orl     $1, %eax                        /* PE */
        movl    %eax, %cr0
        ljmpl   $KCODE32, $(tramp32 - tramp_start + TRAMP_ADDR)
        .code32
tramp32:
        movl    $KDATA, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        movl    %cr4, %eax
        orl     $0x20, %eax                     /* PAE */
        movl    %eax, %cr4
        movl    $pml4, %eax
        movl    %eax, %cr3
        movl    $0xc0000080, %ecx               /* EFER.LME */
        rdmsr
        orl     $0x100, %eax
        wrmsr
        movl    %cr0, %eax
        orl     $0x80000000, %eax               /* PG -> long mode */
        movl    %eax, %cr0
        ljmp    $KCODE64, $(tramp64 - tramp_start + TRAMP_ADDR)
        .code64
tramp64:
        movl    $ap_entry64, %eax
        jmp     *%rax
        .balign 8
tramp_gdtr:
        .short  gdt_end - gdt - 1
        .long   gdt
tramp_end:

/* ======================================================================
 * CPL3 main program. From here on everything runs in user mode.
 * ====================================================================== */
user_main:
        /* boot=... */
        leaq    msg_boot_pvh(%rip), %rsi
        cmpl    $BOOT_PVH, boot_kind(%rip)
        je      1f
        leaq    msg_boot_linux64(%rip), %rsi
1:      call    puts

        /* Copy everything we need out of the boot information first: the
         * AP trampoline overwrites 0x8000 later, and a loader may have put
         * hvm_start_info, its module list or the command line anywhere. */
        call    collect_boot_info

        /* mem=<N>MiB */
        leaq    msg_mem(%rip), %rsi
        movq    mem_bytes(%rip), %rax
        shrq    $20, %rax
        call    puts_dec_then
        leaq    msg_mib_nl(%rip), %rsi
        call    puts

        /* cmdline=<text> */
        leaq    msg_cmdline(%rip), %rsi
        call    puts
        leaq    cmdline_buf(%rip), %rsi
        call    puts
        movb    $'\n', %al
        call    putc

        /* cpus=<N> from the ACPI MADT */
        call    acpi_count_cpus

        /* SMP bring-up (grant.S may give the first AP work at CPL3) */
        call    grant_smp_prepare
        call    smp_start_aps

        /* cpl=<CS & 3> */
        leaq    msg_cpl(%rip), %rsi
        movq    %cs, %rax
        andl    $3, %eax
        call    print_line_dec

        /* initrd */
        call    initrd_report

        /* test switches on the command line */
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_triplefault(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jz      1f
        leaq    msg_triplefault(%rip), %rsi
        call    puts
        movb    $1, triple_requested(%rip)      /* see reset_machine */
        ud2                                     /* never returns */
1:
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_hang(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jz      2f
        leaq    msg_hanging(%rip), %rsi
        call    puts
1:      pause                                   /* spin forever at CPL3 */
        jmp     1b
2:
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_exception(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jz      3f
        ud2                                     /* -> "exception 6 rip=..." */
3:
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_blk(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jnz     blk_test                        /* ends in poweroff */
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_blkbench(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jnz     blk_bench                       /* ends in poweroff */
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_blkswap(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jnz     blk_swap                        /* ends in poweroff */
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_memtest(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jnz     memtest                         /* ends in poweroff */
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_dumpfault(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jnz     dump_fault                      /* triple fault */
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_dumpfill(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jnz     dump_fill                       /* fill, triple fault */
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_dumppanic(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jnz     dump_panic                      /* pvpanic, then spins */
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_dumpcount(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jnz     dump_count                      /* never returns */
        call    grant_dispatch                  /* parvm.grant=...: no return */
poweroff:
        leaq    msg_poweroff(%rip), %rsi
        call    puts
        jmp     reset_machine

/* puts_dec_then: rsi = prefix, rax = number: prints prefix and number (no
 * newline). Clobbers rax, rcx, rdx, rsi, rdi. */
puts_dec_then:
        pushq   %rax
        call    puts
        popq    %rax
        jmp     put_dec

/* ----------------------------------------------------------------------
 * collect_boot_info: fill mem_bytes, cmdline_buf, rsdp_addr, initrd_addr,
 * initrd_size from hvm_start_info (PVH) or boot_params (Linux). A null
 * boot_info pointer (or a bad PVH magic) leaves them all zero/empty.
 * ---------------------------------------------------------------------- */
collect_boot_info:
        pushq   %rbx
        movb    $0, cmdline_buf(%rip)
        movq    boot_info(%rip), %rbx
        testq   %rbx, %rbx
        jz      9f
        cmpl    $BOOT_PVH, boot_kind(%rip)
        jne     5f

        /* --- PVH: struct hvm_start_info --- */
        cmpl    $HVM_START_MAGIC, HSI_MAGIC(%rbx)
        jne     9f
        /* memory map (version >= 1): {u64 addr, u64 size, u32 type, u32 rsvd} */
        xorl    %eax, %eax
        cmpl    $1, HSI_VERSION(%rbx)
        jb      2f
        movq    HSI_MEMMAP(%rbx), %rdx
        movl    HSI_MEMMAP_N(%rbx), %ecx
        testq   %rdx, %rdx
        jz      2f
        cmpl    $1024, %ecx                     /* sanity bound */
        jbe     1f
        movl    $1024, %ecx
1:      testl   %ecx, %ecx
        jz      2f
        cmpl    $1, 16(%rdx)                    /* type 1 = RAM */
        jne     3f
        addq    8(%rdx), %rax
        call    note_ram_entry
3:      addq    $24, %rdx
        decl    %ecx
        jmp     1b
2:      movq    %rax, mem_bytes(%rip)
        movq    HSI_CMDLINE(%rbx), %rsi
        call    copy_cmdline
        movq    HSI_RSDP(%rbx), %rax
        movq    %rax, rsdp_addr(%rip)
        cmpl    $0, HSI_NR_MODULES(%rbx)        /* module 0 = initrd: */
        je      9f                              /* {u64 paddr, u64 size, ...} */
        movq    HSI_MODLIST(%rbx), %rdx
        testq   %rdx, %rdx
        jz      9f
        movq    0(%rdx), %rax
        movq    %rax, initrd_addr(%rip)
        movq    8(%rdx), %rax
        movq    %rax, initrd_size(%rip)
        jmp     9f

        /* --- Linux: struct boot_params --- */
5:      xorl    %eax, %eax
        movzbl  BP_E820_N(%rbx), %ecx           /* e820: packed 20-byte entries */
        cmpl    $128, %ecx
        jbe     6f
        movl    $128, %ecx
6:      leaq    BP_E820(%rbx), %rdx
7:      testl   %ecx, %ecx
        jz      8f
        cmpl    $1, 16(%rdx)
        jne     3f
        addq    8(%rdx), %rax
        call    note_ram_entry
3:      addq    $20, %rdx
        decl    %ecx
        jmp     7b
8:      movq    %rax, mem_bytes(%rip)
        movl    BP_CMDLINE(%rbx), %esi          /* cmd_line_ptr | ext << 32 */
        movl    BP_EXT_CMDLINE(%rbx), %eax
        shlq    $32, %rax
        orq     %rax, %rsi
        call    copy_cmdline
        movq    BP_ACPI_RSDP(%rbx), %rax
        movq    %rax, rsdp_addr(%rip)
        movl    BP_RD_IMG(%rbx), %eax           /* ramdisk_image | ext << 32 */
        movl    BP_EXT_RD_IMG(%rbx), %edx
        shlq    $32, %rdx
        orq     %rdx, %rax
        movq    %rax, initrd_addr(%rip)
        movl    BP_RD_SIZE(%rbx), %eax          /* ramdisk_size | ext << 32 */
        movl    BP_EXT_RD_SIZE(%rbx), %edx
        shlq    $32, %rdx
        orq     %rdx, %rax
        movq    %rax, initrd_size(%rip)
9:      popq    %rbx
        ret

/* note_ram_entry: rdx = a RAM entry of the memory map (u64 address at +0,
 * u64 size at +8, in both formats). If it contains the address 2 MiB,
 * ram_end = its end, clipped to 4 GiB (the end of the identity map): the
 * RAM from 2 MiB up that mem.S and blk.S may use. Preserves rax, rcx, rdx. */
note_ram_entry:
        movq    0(%rdx), %r8                    /* start <= 2 MiB */
        cmpq    $0x200000, %r8
        ja      9f
        addq    8(%rdx), %r8                    /* end > 2 MiB */
        jc      1f                              /* (wrapped: beyond 4 GiB) */
        cmpq    $0x200000, %r8
        jbe     9f
        movq    $0x100000000, %r9
        cmpq    %r9, %r8
        jbe     2f
1:      movq    $0x100000000, %r8
2:      movq    %r8, ram_end(%rip)
9:      ret

/* copy_cmdline: rsi = guest-physical address of the command line (0 = none).
 * Copies at most CMDLINE_MAX-1 bytes to cmdline_buf, NUL-terminated. */
copy_cmdline:
        leaq    cmdline_buf(%rip), %rdi
        testq   %rsi, %rsi
        jz      2f
        movq    $0xffffffff, %rax               /* only 0-4 GiB is mapped */
        cmpq    %rax, %rsi
        ja      2f
        movl    $CMDLINE_MAX - 1, %ecx
1:      movb    (%rsi), %al
        testb   %al, %al
        jz      2f
        movb    %al, (%rdi)
        incq    %rsi
        incq    %rdi
        decl    %ecx
        jnz     1b
2:      movb    $0, (%rdi)
        ret

/* has_token: rdi = NUL-terminated string, rsi = NUL-terminated token.
 * eax = 1 if the token appears as a whole whitespace-separated word. */
has_token:
1:      call    find_word_prefix                /* blk.S: first word with it */
        testq   %rax, %rax
        jz      8f
        movq    %rax, %rdi
        cmpb    $' ', (%rdi)                    /* token ended: word too? */
        jbe     9f                              /* NUL or whitespace: yes */
2:      incq    %rdi                            /* longer word: skip its rest */
        cmpb    $' ', (%rdi)
        ja      2b
        jmp     1b
8:      xorl    %eax, %eax
        ret
9:      movl    $1, %eax
        ret

/* ----------------------------------------------------------------------
 * ACPI: RSDP -> XSDT/RSDT -> MADT; collect enabled local APIC ids into
 * apic_ids[] / ncpus and print the cpus= line. Only 0-4 GiB is mapped, so
 * tables above that are ignored.
 * ---------------------------------------------------------------------- */
acpi_count_cpus:
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        pushq   %r14
        movl    $0, ncpus(%rip)

        movq    rsdp_addr(%rip), %rdi           /* given by the loader? */
        testq   %rdi, %rdi
        jz      1f
        movq    $0xffffffff, %rax
        cmpq    %rax, %rdi
        ja      1f
        call    rsdp_valid
        testl   %eax, %eax
        jnz     3f
1:      movl    $0xe0000, %edi                  /* else scan the BIOS area */
2:      call    rsdp_valid
        testl   %eax, %eax
        jnz     3f
        addl    $16, %edi
        cmpl    $0x100000, %edi
        jb      2b
        leaq    msg_cpus_noacpi(%rip), %rsi
        call    puts
        jmp     9f

3:      movq    %rdi, %rbx                      /* rbx = RSDP */
        /* r12 = SDT, r13d = entry size */
        movl    16(%rbx), %r12d                 /* RsdtAddress */
        movl    $4, %r13d
        cmpb    $2, 15(%rbx)                    /* revision >= 2: XSDT */
        jb      4f
        movq    24(%rbx), %rax
        testq   %rax, %rax
        jz      4f
        movq    $0xffffffff, %rdx
        cmpq    %rdx, %rax
        ja      4f
        movq    %rax, %r12
        movl    $8, %r13d
4:      testq   %r12, %r12
        jz      8f
        movl    4(%r12), %ecx                   /* length */
        subl    $36, %ecx
        jbe     8f
        leaq    36(%r12), %r14                  /* r14 = entry cursor */
        addq    %r12, %rcx
        addq    $36, %rcx                       /* rcx = end of table */
5:      leaq    (%r14, %r13), %rax
        cmpq    %rcx, %rax
        ja      8f
        movl    (%r14), %eax                    /* entry (low 32 bits) */
        cmpl    $8, %r13d
        jne     6f
        cmpl    $0, 4(%r14)                     /* XSDT entry above 4 GiB */
        jne     7f
6:      testl   %eax, %eax
        jz      7f
        cmpl    $0x43495041, (%rax)             /* "APIC" = the MADT */
        jne     7f
        movq    %rax, %rdi
        pushq   %rcx
        call    madt_parse
        popq    %rcx
        jmp     10f
7:      addq    %r13, %r14
        jmp     5b

8:      leaq    msg_cpus_nomadt(%rip), %rsi     /* RSDP but no MADT */
        call    puts
        jmp     9f
10:     cmpl    $0, ncpus(%rip)
        je      8b
        leaq    msg_cpus(%rip), %rsi
        movl    ncpus(%rip), %eax
        call    print_line_dec
9:      popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbx
        ret

/* rsdp_valid: rdi = candidate. eax = 1 if "RSD PTR " and the ACPI 1.0
 * checksum (first 20 bytes) is zero. Preserves rdi. */
rsdp_valid:
        movabsq $0x2052545020445352, %rax       /* "RSD PTR " */
        cmpq    %rax, (%rdi)
        jne     2f
        xorl    %eax, %eax
        xorl    %ecx, %ecx
1:      addb    (%rdi, %rcx), %al
        incl    %ecx
        cmpl    $20, %ecx
        jb      1b
        testb   %al, %al
        jnz     2f
        movl    $1, %eax
        ret
2:      xorl    %eax, %eax
        ret

/* madt_parse: rdi = MADT. Records each enabled Processor Local APIC entry
 * (type 0, flags bit 0) in apic_ids[ncpus++]. */
madt_parse:
        movl    4(%rdi), %ecx
        leaq    (%rdi, %rcx), %rdx              /* rdx = end */
        leaq    44(%rdi), %rsi                  /* entries after header+lapic+flags */
1:      leaq    2(%rsi), %rax
        cmpq    %rdx, %rax
        ja      9f
        movzbl  1(%rsi), %ecx                   /* entry length */
        cmpl    $2, %ecx
        jb      9f
        cmpb    $0, (%rsi)                      /* type 0: local APIC */
        jne     2f
        cmpl    $8, %ecx
        jb      2f
        testb   $1, 4(%rsi)                     /* flags.enabled */
        jz      2f
        movl    ncpus(%rip), %eax
        cmpl    $MAX_CPUS, %eax
        jae     3f
        movb    3(%rsi), %r8b                   /* APIC id */
        leaq    apic_ids(%rip), %r9
        movb    %r8b, (%r9, %rax)
3:      incl    ncpus(%rip)
2:      addq    %rcx, %rsi
        jmp     1b
9:      ret

/* ----------------------------------------------------------------------
 * SMP: INIT-SIPI-SIPI to every MADT APIC id except our own, through the
 * xAPIC MMIO page (user-accessible, so this runs at CPL3). Waits for the
 * APs' counter with a bounded, TSC-timed poll, then prints the smp line.
 * ---------------------------------------------------------------------- */
smp_start_aps:
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        movl    ncpus(%rip), %r12d              /* r12 = N */
        xorl    %r14d, %r14d                    /* r14 = APs started */
        cmpl    $1, %r12d
        jbe     8f                              /* no MADT or 1 CPU */

        movl    $LAPIC, %ebx
        movl    LAPIC_SVR(%rbx), %eax           /* software-enable the APIC, */
        andl    $~0xff, %eax                    /* spurious vector 0xff */
        orl     $0x1ff, %eax
        movl    %eax, LAPIC_SVR(%rbx)
        movl    LAPIC_ID(%rbx), %eax
        shrl    $24, %eax
        movl    %eax, bsp_id(%rip)

        leaq    tramp_start(%rip), %rsi         /* trampoline -> 0x8000 */
        movl    $TRAMP_ADDR, %edi
        movl    $(tramp_end - tramp_start), %ecx
        cld
        rep movsb
        mfence

        xorl    %r13d, %r13d                    /* r13 = index in apic_ids */
1:      cmpl    %r12d, %r13d
        jae     5f
        cmpl    $MAX_CPUS, %r13d
        jae     5f
        leaq    apic_ids(%rip), %rax
        movzbl  (%rax, %r13), %r15d             /* r15 = target APIC id */
        incl    %r13d
        cmpl    bsp_id(%rip), %r15d
        je      1b
        incl    %r14d
        movl    %r15d, %edi
        movl    $0x00004500, %esi               /* INIT, level assert */
        call    send_ipi
        movl    $200000, %edi
        call    tsc_delay
        movl    %r15d, %edi
        movl    $(0x00004600 | (TRAMP_ADDR >> 12)), %esi  /* SIPI */
        call    send_ipi
        movl    $200000, %edi
        call    tsc_delay
        movl    %r15d, %edi
        movl    $(0x00004600 | (TRAMP_ADDR >> 12)), %esi  /* SIPI again */
        call    send_ipi
        jmp     1b

5:      rdtsc                                   /* bounded wait: ~2^31 cycles */
        shlq    $32, %rdx
        orq     %rax, %rdx
        movq    %rdx, %r13
6:      cmpl    %r14d, ap_online(%rip)
        jae     8f
        pause
        rdtsc
        shlq    $32, %rdx
        orq     %rax, %rdx
        subq    %r13, %rdx
        shrq    $31, %rdx                       /* < 2^31 cycles: keep waiting */
        jz      6b

8:      leaq    msg_smp(%rip), %rsi
        movl    ap_online(%rip), %eax
        incl    %eax                            /* + the BSP */
        call    puts_dec_then
        movb    $'/', %al
        call    putc
        movl    %r12d, %eax
        testl   %eax, %eax
        jnz     9f
        movl    $1, %eax
9:      call    put_dec
        movb    $'\n', %al
        call    putc
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbx
        ret

/* send_ipi: edi = destination APIC id, esi = ICR low. rbx = LAPIC base.
 * Waits (bounded) for the previous IPI's delivery status to clear. */
send_ipi:
        movl    $100000, %ecx
1:      testl   $0x1000, LAPIC_ICR_LO(%rbx)
        jz      2f
        pause
        decl    %ecx
        jnz     1b
2:      shll    $24, %edi
        movl    %edi, LAPIC_ICR_HI(%rbx)
        movl    %esi, LAPIC_ICR_LO(%rbx)
        ret

/* tsc_delay: edi = TSC cycles to spin (CPL3, native speed under PVM). */
tsc_delay:
        rdtsc
        shlq    $32, %rdx
        orq     %rax, %rdx
        movq    %rdx, %r8
1:      pause
        rdtsc
        shlq    $32, %rdx
        orq     %rax, %rdx
        subq    %r8, %rdx
        cmpq    %rdi, %rdx
        jb      1b
        ret

/* ----------------------------------------------------------------------
 * initrd: FNV-1a 64 over its bytes, or "initrd none".
 * ---------------------------------------------------------------------- */
initrd_report:
        movq    initrd_addr(%rip), %rsi
        movq    initrd_size(%rip), %rcx
        testq   %rcx, %rcx
        jz      8f
        testq   %rsi, %rsi
        jz      8f
        leaq    (%rsi, %rcx), %rax              /* must end within 4 GiB */
        movq    $0x100000000, %rdx
        cmpq    %rdx, %rax
        ja      7f
        movabsq $0xcbf29ce484222325, %rax       /* offset basis */
        movabsq $0x100000001b3, %r9             /* prime */
1:      movzbl  (%rsi), %edx
        xorq    %rdx, %rax
        imulq   %r9, %rax
        incq    %rsi
        decq    %rcx
        jnz     1b
        pushq   %rax
        leaq    msg_initrd(%rip), %rsi
        movq    initrd_size(%rip), %rax
        call    puts_dec_then
        leaq    msg_fnv(%rip), %rsi
        call    puts
        popq    %rax
        call    put_hex16
        movb    $'\n', %al
        jmp     putc
7:      leaq    msg_initrd(%rip), %rsi          /* outside the identity map */
        movq    initrd_size(%rip), %rax
        call    puts_dec_then
        leaq    msg_unmapped(%rip), %rsi
        jmp     puts
8:      leaq    msg_initrd_none(%rip), %rsi
        jmp     puts

/* The virtio-blk driver (parvm.test=blk and parvm.test=blkbench). */
        .include "blk.S"

/* Grant cookies: shared segments and the hcall page (parvm.grant=...). */
        .include "grant.S"

/* Memory exercisers (parvm.test=memtest; the sweeps of parvm.test=blkswap). */
        .include "mem.S"

/* Firmware-assisted dump tests (parvm.test=dumpfault, dumppanic, dumpcount). */
        .include "dump.S"

/* ======================================================================
 * Data. Initialised explicitly (nothing relies on zeroed memory).
 * ====================================================================== */
        .balign 8
boot_info:      .quad 0         /* hvm_start_info or boot_params address */
boot_kind:      .long 0         /* BOOT_PVH or BOOT_LINUX64 */
ap_online:      .long 0         /* APs that reached long mode */
ap_ticket:      .long 0         /* AP stack allocator */
ncpus:          .long 0         /* enabled local APICs in the MADT */
bsp_id:         .long 0
                .long 0
irq_count:      .quad 0         /* interrupts (vectors >= 32) taken */
ap_user_entry:  .quad 0         /* if set, the first AP runs it at CPL3 */
triple_requested: .byte 0       /* CPL3 asked for a triple fault */
mem_bytes:      .quad 0
ram_end:        .quad 0         /* end of the RAM entry holding 2 MiB (<= 4 GiB) */
rsdp_addr:      .quad 0
initrd_addr:    .quad 0
initrd_size:    .quad 0

msg_ready:        .asciz "parvm-guest: ready\n"
msg_boot_pvh:     .asciz "parvm-guest: boot=pvh\n"
msg_boot_linux64: .asciz "parvm-guest: boot=linux64\n"
msg_mem:          .asciz "parvm-guest: mem="
msg_mib_nl:       .asciz "MiB\n"
msg_cmdline:      .asciz "parvm-guest: cmdline="
msg_cpus:         .asciz "parvm-guest: cpus="
msg_cpus_noacpi:  .asciz "parvm-guest: cpus=1 (no acpi)\n"
msg_cpus_nomadt:  .asciz "parvm-guest: cpus=1 (no madt)\n"
msg_smp:          .asciz "parvm-guest: smp online="
msg_cpl:          .asciz "parvm-guest: cpl="
msg_initrd:       .asciz "parvm-guest: initrd bytes="
msg_fnv:          .asciz " fnv1a64="
msg_unmapped:     .asciz " unmapped (above 4GiB)\n"
msg_initrd_none:  .asciz "parvm-guest: initrd none\n"
msg_triplefault:  .asciz "parvm-guest: triple fault now\n"
msg_hanging:      .asciz "parvm-guest: hanging\n"
msg_poweroff:     .asciz "parvm-guest: poweroff\n"
msg_exception:    .asciz "parvm-guest: exception "
msg_rip:          .asciz " rip=0x"
tok_triplefault:  .asciz "parvm.test=triplefault"
tok_hang:         .asciz "parvm.test=hang"
tok_exception:    .asciz "parvm.test=exception"
tok_blk:          .asciz "parvm.test=blk"
tok_blkbench:     .asciz "parvm.test=blkbench"
tok_blkswap:      .asciz "parvm.test=blkswap"
tok_memtest:      .asciz "parvm.test=memtest"

/* GDT. 64-bit code/data for CPL0 and CPL3, a 32-bit code segment for the AP
 * trampoline, and the 64-bit TSS (descriptor built from the TSS's link
 * address). */
        .balign 16
gdt:
        .quad   0                               /* 0x00 null */
        .quad   0x00af9a000000ffff              /* 0x08 KCODE64: L=1, DPL0 */
        .quad   0x00cf92000000ffff              /* 0x10 KDATA */
        .quad   0x00cf9a000000ffff              /* 0x18 KCODE32 (trampoline) */
        .quad   0x00cff2000000ffff              /* 0x20 UDATA: DPL3 */
        .quad   0x00affa000000ffff              /* 0x28 UCODE64: L=1, DPL3 */
        .set    TSS_LIN, (tss - _start + LOAD_ADDR)
        .short  tss_end - tss - 1               /* 0x30 TSS: limit 15:0 */
        .short  TSS_LIN & 0xffff                /* base 15:0 */
        .byte   (TSS_LIN >> 16) & 0xff          /* base 23:16 */
        .byte   0x89                            /* P=1, type 9: 64-bit TSS */
        .byte   0                               /* limit 19:16, flags */
        .byte   (TSS_LIN >> 24) & 0xff          /* base 31:24 */
        .long   0                               /* base 63:32 */
        .long   0
gdt_end:
        .balign 8
        .short  0                               /* (aligns the base) */
gdt_ptr:
        .short  gdt_end - gdt - 1
        .quad   gdt

/* TSS: RSP0 (the stack for CPL3 -> CPL0 events) and an all-zero I/O
 * permission bitmap granting CPL3 every port. IOPL=3 alone is NOT enough
 * under PVM: it strips IOPL at CPL3 (docs/pvm.md), so the bitmap is what
 * lets the CPL3 code use COM1 and the i8042. */
        .balign 16
tss:
        .long   0
        .quad   kstack_top                      /* RSP0 */
        .quad   0, 0                            /* RSP1, RSP2 */
        .quad   0                               /* reserved */
        .quad   0, 0, 0, 0, 0, 0, 0             /* IST1-7 */
        .quad   0                               /* reserved */
        .short  0
        .short  tss_iomap - tss                 /* I/O map base */
tss_iomap:
        .fill   8192, 1, 0                      /* ports 0-0xffff allowed */
        .byte   0xff                            /* terminator */
tss_end:

/* IDT: 256 interrupt gates to the 16-byte stubs, CPL0 code segment, DPL0,
 * except VEC_TRIPLE (DPL3, so CPL3 may raise it with int $0x81; not used
 * under PVM, where int n at CPL3 arrives as #UD). */
        .balign 16
idt:
        .set    vec, 0
        .rept   256
        .set    STUB_LIN, (isr_stubs - _start + LOAD_ADDR + 16 * vec)
        .short  STUB_LIN & 0xffff               /* offset 15:0 */
        .short  KCODE64
        .if     vec == VEC_TRIPLE
        .short  0xee00                          /* P, DPL3, interrupt gate */
        .else
        .short  0x8e00                          /* P, DPL0, interrupt gate */
        .endif
        .short  (STUB_LIN >> 16) & 0xffff       /* offset 31:16 */
        .long   0                               /* offset 63:32 */
        .long   0
        .set    vec, vec + 1
        .endr
idt_end:
        .balign 8
        .short  0, 0, 0
idt_ptr:
        .short  idt_end - idt - 1
        .quad   idt
        .short  0, 0, 0
null_idt_ptr:
        .short  0
        .quad   0

/* Page tables: identity map of 0-4 GiB with 2 MiB pages; every level is
 * present|rw|user (0x7; leaf 0x87 adds PS) so CPL3 can reach everything.
 * Built statically: CPL0 never loops over them. */
        .balign 4096
pml4:
        .quad   pdpt + 0x7
        .fill   511, 8, 0
pdpt:
        .quad   pd0 + 0x7
        .quad   pd1 + 0x7
        .quad   pd2 + 0x7
        .quad   pd3 + 0x7
        .fill   508, 8, 0
pd0:
        .set    addr, 0
        .rept   2048                            /* pd0..pd3, contiguous */
        .quad   addr | 0x87
        .set    addr, addr + 0x200000
        .endr
        .set    pd1, pd0 + 4096
        .set    pd2, pd0 + 8192
        .set    pd3, pd0 + 12288
_kernel_image_end:

/* ======================================================================
 * Uninitialised memory (not in the image file).
 * ====================================================================== */
        .section .kernel.bss, "aw", @nobits
        .balign 4096
kstack:         .skip 16384
kstack_top:
ustack:         .skip 65536
ustack_top:
ap_stacks:      .skip (MAX_CPUS + 1) * AP_STACK_SIZE
ap_ustack:      .skip 4096      /* the first AP's CPL3 stack (ap_user_entry) */
ap_ustack_top:
apic_ids:       .skip MAX_CPUS
cmdline_buf:    .skip CMDLINE_MAX
_kernel_bss_end:                /* asserts.ld: below 2 MiB (blk.S's BLK_DATA) */
