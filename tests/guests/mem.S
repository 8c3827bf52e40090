/*
 * mem.S - memory exercisers of the tiny guest (included by tiny.S, in its
 * .kernel section; docs/guests.md lists the output lines).
 *
 *   parvm.test=memtest   write a per-address, per-seed pattern over the RAM
 *                        from 4 MiB to ram_end, optionally idle a while
 *                        (parvm.memtest_hold=<seconds>), then verify every
 *                        qword parvm.passes=<n> times (default 2).
 *   mem_sweep            one write per 4 KiB page of a range (the sweeps of
 *                        parvm.test=blkswap, blk.S).
 *
 * Built for Active Memory Sharing tests: the host pages guest RAM out and
 * back in while the guest touches all of it. Everything runs at CPL3 (native
 * speed under PVM) with plain 64-bit integer moves, no SSE. ram_end (tiny.S,
 * note_ram_entry) is the end of the memory map's RAM entry that contains
 * 2 MiB, at most 4 GiB (the identity map): with parvm's vmm, min(RAM, 3 GiB).
 *
 * The pattern: the qword at guest-physical address a (a multiple of 8) is
 *     a * MEMTEST_MUL_ADDR  ^  seed * MEMTEST_MUL_SEED     (mod 2^64)
 * (parvm_tests::guests::memtest_qword computes the same on the host).
 *
 * Conventions as in tiny.S: rax, rcx, rdx, rsi, rdi, r8-r11 clobbered;
 * rbx, rbp, r12-r15 preserved (memtest itself never returns).
 */

        .set MEMTEST_START,     0x400000        /* 4 MiB: above kernel, bss, blk's buffers */
        .set MEMTEST_MUL_ADDR,  0x9e3779b97f4a7c15
        .set MEMTEST_MUL_SEED,  0xd1b54a32d192ed03
        .set MEMTEST_SEED,      1               /* default parvm.seed= */
        .set MEMTEST_PASSES,    2               /* default parvm.passes= */
        .set PIT_TICKS_10MS,    11932           /* 1193182 Hz * 10 ms */
        .set TSC_ASSUMED_10MS,  30000000        /* no PIT: assume 3 GHz */

/* ----------------------------------------------------------------------
 * parvm.test=memtest [parvm.seed=<n>] [parvm.passes=<n>]
 *                    [parvm.memtest_hold=<seconds>]
 * ---------------------------------------------------------------------- */
memtest:
        leaq    tok_seed(%rip), %rsi
        movl    $MEMTEST_SEED, %eax
        call    cmdline_num
        movq    %rax, %r12                      /* r12 = seed */
        leaq    tok_passes(%rip), %rsi
        movl    $MEMTEST_PASSES, %eax
        call    cmdline_num
        movq    %rax, %r13                      /* r13 = passes */
        leaq    tok_hold(%rip), %rsi
        xorl    %eax, %eax
        call    cmdline_num
        movq    %rax, %r14                      /* r14 = hold, seconds */
        movq    ram_end(%rip), %rbx
        andq    $-4096, %rbx                    /* rbx = end (whole pages) */
        cmpq    $MEMTEST_START, %rbx
        jbe     8f

        leaq    msg_memtest_start(%rip), %rsi   /* start=0x... end=0x... seed=n */
        call    puts
        movl    $MEMTEST_START, %eax
        call    put_hex16
        leaq    msg_memtest_end(%rip), %rsi
        call    puts
        movq    %rbx, %rax
        call    put_hex16
        leaq    msg_memtest_seed(%rip), %rsi
        movq    %r12, %rax
        call    print_line_dec

        movabsq $MEMTEST_MUL_SEED, %rbp         /* rbp = seed * MUL_SEED */
        imulq   %r12, %rbp
        call    memtest_write
        leaq    msg_memtest_written(%rip), %rsi
        call    puts

        testq   %r14, %r14                      /* parvm.memtest_hold= */
        jz      2f
        call    tsc_per_10ms
        movq    %rax, %r15                      /* r15 = TSC cycles per 10 ms */
        leaq    msg_memtest_hold(%rip), %rsi
        movq    %r14, %rax
        call    puts_dec_then
        leaq    msg_memtest_tsc(%rip), %rsi
        testq   %r15, %r15
        jnz     1f
        movl    $TSC_ASSUMED_10MS, %r15d
        leaq    msg_memtest_nopit(%rip), %rsi
        call    puts
        jmp     3f
1:      movq    %r15, %rax                      /* MHz = per 10 ms / 10^4 */
        xorl    %edx, %edx
        movl    $10000, %ecx
        divq    %rcx
        call    puts_dec_then
        leaq    msg_memtest_mhz(%rip), %rsi
        call    puts
3:      imulq   $100, %r14, %rdi                /* seconds * 100 * per 10 ms */
        imulq   %r15, %rdi
        call    tsc_spin

2:      movl    $1, %r15d                       /* r15 = pass number */
4:      cmpq    %r13, %r15
        ja      poweroff
        call    memtest_verify
        testq   %rax, %rax
        jnz     5f
        leaq    msg_memtest_pass(%rip), %rsi
        movq    %r15, %rax
        call    puts_dec_then
        leaq    msg_memtest_ok(%rip), %rsi
        call    puts
        incq    %r15
        jmp     4b

5:      movq    %rax, %r12                      /* mismatch: r12 = address */
        movq    %rdx, %r14                      /* r14 = got */
        movq    %rcx, %rbx                      /* rbx = want */
        leaq    msg_memtest_pass(%rip), %rsi
        movq    %r15, %rax
        call    puts_dec_then
        leaq    msg_memtest_fail(%rip), %rsi
        call    puts
        movq    %r12, %rax
        call    put_hex16
        leaq    msg_memtest_got(%rip), %rsi
        call    puts
        movq    %r14, %rax
        call    put_hex16
        leaq    msg_memtest_want(%rip), %rsi
        call    puts
        movq    %rbx, %rax
        call    put_hex16
        movb    $'\n', %al
        call    putc
        jmp     poweroff                        /* no further passes */

8:      leaq    msg_memtest_noram(%rip), %rsi
        call    puts
        jmp     poweroff

/* memtest_write: the pattern over [MEMTEST_START, rbx); rbp = seed term.
 * a * MUL_ADDR advances by 8 * MUL_ADDR per qword: no multiply in the loop. */
memtest_write:
        movl    $MEMTEST_START, %edi
        movabsq $MEMTEST_MUL_ADDR, %r8
        movq    %r8, %r9
        shlq    $3, %r9                         /* r9 = 8 * MUL_ADDR */
        imulq   %rdi, %r8                       /* r8 = a * MUL_ADDR */
1:      movq    %r8, %rax
        xorq    %rbp, %rax
        movq    %rax, (%rdi)
        addq    %r9, %r8
        addq    $8, %rdi
        cmpq    %rbx, %rdi
        jb      1b
        ret

/* memtest_verify: checks [MEMTEST_START, rbx) against the pattern (rbp =
 * seed term). rax = 0 if all of it matches, else rax = the first address
 * that does not, rdx = what it held, rcx = what it should. */
memtest_verify:
        movl    $MEMTEST_START, %edi
        movabsq $MEMTEST_MUL_ADDR, %r8
        movq    %r8, %r9
        shlq    $3, %r9
        imulq   %rdi, %r8
1:      movq    %r8, %rcx
        xorq    %rbp, %rcx                      /* want */
        movq    (%rdi), %rdx                    /* got (read once) */
        cmpq    %rcx, %rdx
        jne     2f
        addq    %r9, %r8
        addq    $8, %rdi
        cmpq    %rbx, %rdi
        jb      1b
        xorl    %eax, %eax
        ret
2:      movq    %rdi, %rax
        ret

/* mem_sweep: rdi = start, rsi = end (both page aligned; end rounded down).
 * Writes each 4 KiB page's own address into its first qword. */
mem_sweep:
        andq    $-4096, %rsi
1:      cmpq    %rsi, %rdi
        jae     9f
        movq    %rdi, (%rdi)
        addq    $4096, %rdi
        jmp     1b
9:      ret

/* pit_read: latches and reads PIT channel 0's count. eax = count (16 bits). */
pit_read:
        xorl    %eax, %eax                      /* latch command, channel 0 */
        outb    %al, $0x43
        inb     $0x40, %al                      /* low byte */
        movb    %al, %ah
        inb     $0x40, %al                      /* high byte */
        xchgb   %al, %ah
        movzwl  %ax, %eax
        ret

/* tsc_per_10ms: rax = TSC cycles per 10 ms, the median of 5 measurements
 * (tsc_measure_10ms; single ones were seen off by up to 4x on a busy
 * nested host), or 0 without a PIT. */
tsc_per_10ms:
        subq    $40, %rsp
        xorl    %esi, %esi                      /* rsi = measurements taken */
1:      pushq   %rsi
        call    tsc_measure_10ms
        popq    %rsi
        testq   %rax, %rax
        jz      9f                              /* no PIT */
        movl    %esi, %edi                      /* insertion sort, ascending */
2:      testl   %edi, %edi
        jz      3f
        movq    -8(%rsp, %rdi, 8), %rcx
        cmpq    %rax, %rcx
        jbe     3f
        movq    %rcx, (%rsp, %rdi, 8)
        decl    %edi
        jmp     2b
3:      movq    %rax, (%rsp, %rdi, 8)
        incl    %esi
        cmpl    $5, %esi
        jb      1b
        movq    16(%rsp), %rax                  /* the median */
9:      addq    $40, %rsp
        ret

/* tsc_measure_10ms: calibrates the TSC against the PIT (1.193182 MHz):
 * channel 0 in mode 0 (one shot, its interrupt is masked at the PICs and
 * the IO-APIC) from 0xffff, TSC cycles until it has counted 11932 ticks.
 * rax = cycles per 10 ms, or 0 when the count does not move within 2^32
 * cycles (no PIT, e.g. QEMU microvm,pit=off). Clobbers rax, rcx, rdx,
 * r10, r11. */
tsc_measure_10ms:
        movb    $0x30, %al                      /* channel 0, lo/hi, mode 0 */
        outb    %al, $0x43
        movb    $0xff, %al
        outb    %al, $0x40
        outb    %al, $0x40
        call    pit_read
        movl    %eax, %r10d                     /* r10d = first count */
        rdtsc
        shlq    $32, %rdx
        orq     %rax, %rdx
        movq    %rdx, %r11                      /* r11 = first TSC */
1:      call    pit_read
        movl    %r10d, %ecx
        subl    %eax, %ecx                      /* ticks so far (counts down) */
        andl    $0xffff, %ecx
        rdtsc
        shlq    $32, %rdx
        orq     %rax, %rdx
        subq    %r11, %rdx
        cmpl    $PIT_TICKS_10MS, %ecx
        jae     2f
        movq    %rdx, %rax
        shrq    $32, %rax
        jz      1b
        xorl    %eax, %eax                      /* the PIT does not count */
        ret
2:      movq    %rdx, %rax
        ret

/* tsc_spin: rdi = TSC cycles to spin (a pause loop at CPL3). */
tsc_spin:
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

tok_seed:               .asciz "parvm.seed="
tok_passes:             .asciz "parvm.passes="
tok_hold:               .asciz "parvm.memtest_hold="
msg_memtest_start:      .asciz "parvm-guest: memtest start=0x"
msg_memtest_end:        .asciz " end=0x"
msg_memtest_seed:       .asciz " seed="
msg_memtest_written:    .asciz "parvm-guest: memtest written\n"
msg_memtest_hold:       .asciz "parvm-guest: memtest hold="
msg_memtest_tsc:        .asciz "s tsc="
msg_memtest_mhz:        .asciz "MHz\n"
msg_memtest_nopit:      .asciz "s tsc=3000MHz (assumed: no PIT)\n"
msg_memtest_pass:       .asciz "parvm-guest: memtest pass "
msg_memtest_ok:         .asciz " ok\n"
msg_memtest_fail:       .asciz " FAIL at 0x"
msg_memtest_got:        .asciz " got=0x"
msg_memtest_want:       .asciz " want=0x"
msg_memtest_noram:      .asciz "parvm-guest: memtest no RAM above 4 MiB\n"
