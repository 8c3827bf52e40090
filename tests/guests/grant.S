/*
 * grant.S - the tiny guest's side of grant cookies (included by tiny.S, in
 * its .kernel section; docs/guests.md lists the output lines).
 *
 * Every role works on the grant window at GW = 0xe0000000 (docs/hcall.md),
 * at CPL3 through the user-accessible identity map. An address with nothing
 * mapped exits to the VMM, which answers 0xff bytes: that is how a role
 * waits for a mapping to appear, and how it sees one go after a revoke.
 *
 *   parvm.grant=owner        wait for the own segment at GW, write a pattern
 *                            (8192 qwords i*K at GW+4096) and then the magic
 *                            "PVGA" at GW, wait for "PVGB" at GW+8, spin.
 *   parvm.grant=peer         wait for "PVGA" at GW, check the pattern, write
 *                            "PVGB" at GW+8, then watch GW until it is gone.
 *   parvm.grant=reader       like peer, but instead of replying, try to
 *                            write GW+16 (a read-only grant: refused) and
 *                            report whether the write landed; then watch.
 *   parvm.grant=hcall-owner  owner, then grant segment 0 to partition "peer"
 *                            (rw) through the hcall page, print the cookie,
 *                            wait for the reply, revoke through the hcall
 *                            page and print the status and count; then
 *                            create segment "made" (8 KiB at GW+1MiB)
 *                            through the hcall page and use it; spin.
 *   parvm.grant=hcall-peer   read a cookie (pvg1-<32 hex>) from COM1, try a
 *                            forged copy of it, accept it (the VMM chooses
 *                            the address), check the pattern there, accept
 *                            it again (refused), regrant it read-only to
 *                            "third", copy 16 bytes within the segment
 *                            through the manager (COPY) and see them land,
 *                            reply, watch until gone.
 *   parvm.grant=hcall-smp    two vCPUs: the BSP issues one hcall (GRANT of
 *                            segment 0 to "peer", rw) while the first AP,
 *                            at CPL3 (ap_user_entry), reads the hcall
 *                            page's MAGIC and prints a tick about every
 *                            50 ms; once the call returns the BSP stops the
 *                            AP, prints the status, RESULT0 and the ticks
 *                            the AP made meanwhile, and powers off. Shows
 *                            that a slow call holds only its own vCPU.
 *   parvm.grant=bench        the bulk-copy benchmark: copy 1 MiB from GW to
 *                            GW+1 MiB (rep movsq) 256 times and print the
 *                            TSC cycles it took; then the same within RAM.
 *   parvm.grant=ping         doorbells: program IO-APIC pin 22 (vector 0x40),
 *                            ring doorbell 0 until the peer answers (warm-up),
 *                            then 1000 timed round trips (ring, wait for
 *                            the interrupt); print the TSC cycles.
 *   parvm.grant=pingbench    the same with 10000 round trips.
 *   parvm.grant=pong         program pin 22; ring doorbell 0 for every
 *                            interrupt taken, forever.
 *   (ping and pong wait for interrupts halted at CPL0: gr_wait_irq.)
 *
 * Conventions as in tiny.S: rax, rcx, rdx, rsi, rdi, r8-r11 clobbered;
 * rbx, rbp, r12-r15 preserved. No SSE.
 */

        .set GW,            0xe0000000  /* grant window (vmm/src/grants/mod.rs) */
        .set HC,            0xf0000000  /* hcall page */
        .set HC_OP,         0x08
        .set HC_STATUS,     0x0c
        .set HC_ARG0,       0x10
        .set HC_ARG1,       0x18
        .set HC_RESULT0,    0x30
        .set HC_RESULT1,    0x38
        .set HC_COOKIE,     0x40
        .set HC_NAME,       0x60
        .set OP_GRANT,      1
        .set OP_ACCEPT,     2
        .set OP_REGRANT,    3
        .set OP_REVOKE,     4
        .set OP_COPY,       5
        .set HC_ARG2,       0x20
        .set HC_COOKIE2,    0x50
        .set OP_SEGMENT_CREATE, 6
        .set RIGHTS_RW,     2
        .set MAGIC_A,       0x41475650  /* "PVGA" */
        .set MAGIC_B,       0x42475650  /* "PVGB" */
        .set PATTERN_QWORDS, 8192       /* 64 KiB after the first page */
        .set POLL_CYCLES,   0x100000    /* ~0.3-1 ms between polls */
        .set IOAPIC,        0xfec00000
        .set DB,            0xf0001000  /* doorbell 0 */
        .set DB_GSI,        22
        .set DB_VECTOR,     0x40
        .set PING_ROUNDS,   1000
        .set PING_ROUNDS_BENCH, 10000
        .set WARMUP_CYCLES, 0x2000000   /* ~10 ms */
        .set TICK_CYCLES,   0x8000000   /* ~50 ms */
        .set MAGIC_PVHC,    0x43485650  /* the hcall page's MAGIC */

/* grant_dispatch: runs the role named on the command line (never returns);
 * returns if there is none. */
grant_dispatch:
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_grant_owner(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jnz     grant_owner
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_grant_peer(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jnz     grant_peer
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_grant_reader(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jnz     grant_reader
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_grant_hcowner(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jnz     grant_hcall_owner
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_grant_hcpeer(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jnz     grant_hcall_peer
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_grant_hcsmp(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jnz     grant_hcall_smp
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_grant_bench(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jnz     grant_bench
        movl    $PING_ROUNDS, %r14d
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_grant_ping(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jnz     grant_ping
        movl    $PING_ROUNDS_BENCH, %r14d
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_grant_pingbench(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jnz     grant_ping
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_grant_pong(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jnz     grant_pong
        ret

/* ---- roles ------------------------------------------------------------ */

grant_owner:
        call    gr_owner_setup
        call    gr_wait_reply
1:      pause
        jmp     1b

grant_peer:
        movl    $GW, %ebx
        call    gr_wait_pattern
        movl    $MAGIC_B, 8(%rbx)
        leaq    msg_gr_replied(%rip), %rsi
        call    puts
        jmp     gr_watch

grant_reader:
        movl    $GW, %ebx
        call    gr_wait_pattern
        movl    $0x12345678, 16(%rbx)           /* read-only: refused */
        leaq    msg_gr_write_refused(%rip), %rsi
        cmpl    $0x12345678, 16(%rbx)
        jne     1f
        leaq    msg_gr_write_landed(%rip), %rsi
1:      call    puts
        jmp     gr_watch

grant_hcall_owner:
        call    gr_owner_setup
        movl    $HC, %ebx
        movl    $0x72656570, HC_NAME(%rbx)      /* "peer" */
        movb    $0, HC_NAME+4(%rbx)
        movq    $0, HC_ARG0(%rbx)               /* my segment 0 */
        movq    $RIGHTS_RW, HC_ARG1(%rbx)
        movl    $OP_GRANT, HC_OP(%rbx)
        leaq    msg_gr_grant_status(%rip), %rsi
        movl    HC_STATUS(%rbx), %eax
        call    print_line_dec
        leaq    msg_gr_cookie(%rip), %rsi        /* cookie=pvg1-<hex> */
        call    puts
        xorl    %r12d, %r12d
1:      movzbl  HC_COOKIE(%rbx, %r12), %eax
        call    put_hex8
        incl    %r12d
        cmpl    $16, %r12d
        jb      1b
        movb    $'\n', %al
        call    putc
        call    gr_wait_reply
        movl    $HC, %ebx
        movl    $OP_REVOKE, HC_OP(%rbx)         /* cookie still in place */
        leaq    msg_gr_revoke_status(%rip), %rsi
        movl    HC_STATUS(%rbx), %eax
        call    puts_dec_then
        leaq    msg_gr_count(%rip), %rsi
        movq    HC_RESULT0(%rbx), %rax
        call    print_line_dec
        /* A segment of its own, made from inside: "made", 8 KiB, mapped at
         * GW + 1 MiB; then written and read back through the mapping. */
        movl    $0x6564616d, HC_NAME(%rbx)      /* "made" */
        movb    $0, HC_NAME+4(%rbx)
        movq    $8192, HC_ARG0(%rbx)
        movl    $GW + 0x100000, %eax
        movq    %rax, HC_ARG1(%rbx)
        movl    $OP_SEGMENT_CREATE, HC_OP(%rbx)
        leaq    msg_gr_seg_status(%rip), %rsi
        movl    HC_STATUS(%rbx), %eax
        call    puts_dec_then
        leaq    msg_gr_number(%rip), %rsi
        movq    HC_RESULT0(%rbx), %rax
        call    puts_dec_then
        leaq    msg_gr_gpa(%rip), %rsi
        call    puts
        movq    HC_RESULT1(%rbx), %rax
        call    put_hex16
        movb    $'\n', %al
        call    putc
        movl    $GW + 0x100000, %edx
        movl    $0x5eed, 8(%rdx)
        leaq    msg_gr_seg_bad(%rip), %rsi
        cmpl    $0x5eed, 8(%rdx)
        jne     2f
        leaq    msg_gr_seg_ok(%rip), %rsi
2:      call    puts
1:      pause
        jmp     1b

grant_hcall_peer:
        call    gr_read_cookie                  /* -> cookie_buf */
        movl    $HC, %ebx
        movq    cookie_buf(%rip), %rax          /* forged: one bit flipped */
        xorq    $1, %rax
        movq    %rax, HC_COOKIE(%rbx)
        movq    cookie_buf+8(%rip), %rax
        movq    %rax, HC_COOKIE+8(%rbx)
        movq    $0, HC_ARG0(%rbx)
        movl    $OP_ACCEPT, HC_OP(%rbx)
        leaq    msg_gr_forged(%rip), %rsi
        movl    HC_STATUS(%rbx), %eax
        call    print_line_dec
        movq    cookie_buf(%rip), %rax          /* the real one */
        movq    %rax, HC_COOKIE(%rbx)
        movl    $OP_ACCEPT, HC_OP(%rbx)
        leaq    msg_gr_accept_status(%rip), %rsi
        movl    HC_STATUS(%rbx), %eax
        call    puts_dec_then
        leaq    msg_gr_gpa(%rip), %rsi
        call    puts
        movq    HC_RESULT0(%rbx), %rax
        movq    %rax, %r12                      /* where it is mapped */
        call    put_hex16
        movb    $'\n', %al
        call    putc
        movl    $OP_ACCEPT, HC_OP(%rbx)         /* a cookie works once */
        leaq    msg_gr_reaccept(%rip), %rsi
        movl    HC_STATUS(%rbx), %eax
        call    print_line_dec
        movq    %r12, %rbx
        testq   %rbx, %rbx
        jz      1f
        call    gr_wait_pattern
        /* Regrant read-only to "third", then the data mover: 16 bytes from
         * offset 0 to 0x10000 of the same segment, seen through the map;
         * then the reply (the owner revokes once it sees it). */
        movl    $HC, %r13d
        movl    $0x72696874, HC_NAME(%r13)      /* "thir" */
        movw    $0x0064, HC_NAME+4(%r13)        /* "d\0" */
        movq    $1, HC_ARG1(%r13)
        movl    $OP_REGRANT, HC_OP(%r13)
        leaq    msg_gr_regrant_status(%rip), %rsi
        movl    HC_STATUS(%r13), %eax
        call    print_line_dec
        movq    cookie_buf(%rip), %rax          /* COOKIE now holds the new */
        movq    %rax, HC_COOKIE(%r13)           /* one: back to ours */
        movq    %rax, HC_COOKIE2(%r13)
        movq    cookie_buf+8(%rip), %rax
        movq    %rax, HC_COOKIE+8(%r13)
        movq    %rax, HC_COOKIE2+8(%r13)
        movq    $0, HC_ARG0(%r13)
        movq    $0x10000, HC_ARG1(%r13)
        movq    $16, HC_ARG2(%r13)
        movl    $OP_COPY, HC_OP(%r13)
        leaq    msg_gr_copy_status(%rip), %rsi
        movl    HC_STATUS(%r13), %eax
        call    puts_dec_then
        leaq    msg_gr_bytes(%rip), %rsi
        movq    HC_RESULT0(%r13), %rax
        call    print_line_dec
        cmpl    $MAGIC_A, 0x10000(%rbx)
        jne     2f
        leaq    msg_gr_copy_landed(%rip), %rsi
        call    puts
2:      movl    $MAGIC_B, 8(%rbx)
        leaq    msg_gr_replied(%rip), %rsi
        call    puts
        jmp     gr_watch
1:      pause
        jmp     1b

/* grant_smp_prepare: called before the AP bring-up; for hcall-smp, has the
 * first AP run gr_smp_ap at CPL3 instead of halting. */
grant_smp_prepare:
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_grant_hcsmp(%rip), %rsi
        call    has_token
        testl   %eax, %eax
        jz      1f
        leaq    gr_smp_ap(%rip), %rax
        movq    %rax, ap_user_entry(%rip)
1:      ret

/* hcall-smp, the BSP's side: see the header. */
grant_hcall_smp:
        cmpl    $0, ap_online(%rip)
        jne     1f
        leaq    msg_gr_smp_alone(%rip), %rsi
        call    puts
        jmp     poweroff
1:      movl    $HC, %ebx
        movl    $0x72656570, HC_NAME(%rbx)      /* "peer" */
        movb    $0, HC_NAME+4(%rbx)
        movq    $0, HC_ARG0(%rbx)               /* my segment 0 */
        movq    $RIGHTS_RW, HC_ARG1(%rbx)
        leaq    msg_gr_smp_calling(%rip), %rsi
        call    puts
        movl    $1, smp_go(%rip)                /* the AP starts ticking */
        movl    $OP_GRANT, HC_OP(%rbx)          /* returns once answered */
        movl    smp_ticks(%rip), %r12d          /* ticks during the call */
        movl    $1, smp_stop(%rip)
2:      cmpl    $0, smp_stopped(%rip)           /* the AP is quiet: the */
        jne     3f                              /* lines do not interleave */
        pause
        jmp     2b
3:      leaq    msg_gr_smp_status(%rip), %rsi
        movl    HC_STATUS(%rbx), %eax
        call    puts_dec_then
        leaq    msg_gr_smp_result0(%rip), %rsi
        movq    HC_RESULT0(%rbx), %rax
        call    puts_dec_then
        leaq    msg_gr_smp_ticks(%rip), %rsi
        movl    %r12d, %eax
        call    print_line_dec
        jmp     poweroff

/* hcall-smp, the first AP's side (CPL3, entered from ap_entry64): wait for
 * the go, then until told to stop: read MAGIC (an MMIO exit to the hcall
 * device), count, print "tick N magic=ok|bad", wait ~50 ms. */
gr_smp_ap:
1:      cmpl    $0, smp_go(%rip)
        jne     2f
        pause
        jmp     1b
2:      movl    $HC, %ebx
3:      cmpl    $0, smp_stop(%rip)
        jne     9f
        movl    (%rbx), %r12d                   /* MAGIC */
        incl    smp_ticks(%rip)
        leaq    msg_gr_smp_tick(%rip), %rsi
        movl    smp_ticks(%rip), %eax
        call    puts_dec_then
        leaq    msg_gr_smp_magic_ok(%rip), %rsi
        cmpl    $MAGIC_PVHC, %r12d
        je      4f
        leaq    msg_gr_smp_magic_bad(%rip), %rsi
4:      call    puts
        movl    $TICK_CYCLES, %edi
        call    tsc_delay
        jmp     3b
9:      movl    $1, smp_stopped(%rip)
10:     pause
        jmp     10b

/* bench: 256 copies of 1 MiB from GW to GW+1MiB (a shared segment of at
 * least 2 MiB), then 256 copies of 1 MiB within RAM (8 MiB -> 9 MiB); each
 * phase prints its TSC cycles. */
grant_bench:
        movl    $GW, %ebx
        call    gr_poll_mapped
        movl    $GW, %esi                       /* touch every page once */
        movl    $GW + 0x100000, %edi
        call    gr_copy1
        call    gr_rdtsc
        movq    %rax, %r12
        movl    $GW, %esi
        movl    $GW + 0x100000, %edi
        call    gr_copy256
        call    gr_rdtsc
        subq    %r12, %rax
        leaq    msg_gr_bench_shared(%rip), %rsi
        call    print_line_dec
        movl    $0x800000, %esi
        movl    $0x900000, %edi
        call    gr_copy1
        call    gr_rdtsc
        movq    %rax, %r12
        movl    $0x800000, %esi
        movl    $0x900000, %edi
        call    gr_copy256
        call    gr_rdtsc
        subq    %r12, %rax
        leaq    msg_gr_bench_ram(%rip), %rsi
        call    print_line_dec
        jmp     poweroff

/* ping: see the header; r14d = rounds. */
grant_ping:
        movl    %r14d, ping_rounds(%rip)
        call    gr_ioapic_setup
        movl    $DB, %r15d                      /* doorbell 0 */
        /* Warm-up: ring until an answer comes (the peer may start later). */
1:      movq    irq_count(%rip), %r12
        movl    $1, (%r15)
        call    gr_rdtsc
        movq    %rax, %r13
2:      cmpq    %r12, irq_count(%rip)
        jne     3f
        call    gr_rdtsc
        subq    %r13, %rax
        cmpq    $WARMUP_CYCLES, %rax
        jb      2b
        jmp     1b
3:      movl    $WARMUP_CYCLES, %edi            /* let stray answers land */
        call    tsc_delay
        leaq    msg_gr_ping_start(%rip), %rsi
        call    puts
        call    gr_rdtsc
        movq    %rax, %r13
        movl    ping_rounds(%rip), %r14d
4:      movq    irq_count(%rip), %r12
        movl    $1, (%r15)
5:      call    gr_wait_irq
        cmpq    %r12, irq_count(%rip)
        je      5b
        decl    %r14d
        jnz     4b
        call    gr_rdtsc
        subq    %r13, %rax
        pushq   %rax
        leaq    msg_gr_ping_done(%rip), %rsi
        movl    ping_rounds(%rip), %eax
        call    puts_dec_then
        leaq    msg_gr_cycles(%rip), %rsi
        popq    %rax
        call    print_line_dec
1:      pause
        jmp     1b

/* pong: answer every interrupt with a ring. */
grant_pong:
        call    gr_ioapic_setup
        movl    $DB, %r15d                      /* doorbell 0 */
        leaq    msg_gr_pong(%rip), %rsi
        call    puts
        movq    irq_count(%rip), %r12
1:      call    gr_wait_irq
        cmpq    %r12, irq_count(%rip)
        je      1b
        movq    irq_count(%rip), %r12
        movl    $1, (%r15)
        jmp     1b

/* ---- helpers ---------------------------------------------------------- */

/* gr_wait_irq: r12 = the interrupt count seen; returns once it moved.
 * Sleeps in `hlt` at CPL0 (ud2 with halt_requested set; see grant_halt)
 * instead of spinning, so a waiting vCPU leaves its host core to others. */
gr_wait_irq:
        cmpq    %r12, irq_count(%rip)
        jne     1f
        movb    $1, halt_requested(%rip)
        ud2                                     /* -> grant_halt, returns here+2 */
        jmp     gr_wait_irq
1:      ret

/* grant_halt: entered from isr_common (CPL0, interrupts off) for the ud2
 * of gr_wait_irq. Halts with interrupts on unless the count already moved
 * (r12 = the count the caller saw: no wake-up is lost between its check
 * and the ud2), then resumes after the ud2. The interrupt that ends the
 * hlt is taken here, nested, and counted by isr_common. */
grant_halt:
        movb    $0, halt_requested(%rip)
        cmpq    %r12, irq_count(%rip)
        jne     1f
        sti
        hlt
        cli
1:      addq    $2, 16(%rsp)                    /* past the ud2 */
        addq    $16, %rsp                       /* vector + error code */
        iretq

/* gr_rdtsc: rax = TSC. Clobbers rdx. */
gr_rdtsc:
        rdtsc
        shlq    $32, %rdx
        orq     %rdx, %rax
        ret

/* gr_ioapic_setup: local APIC on; IO-APIC pin DB_GSI -> DB_VECTOR on APIC
 * 0, edge, high, unmasked (written from CPL3 through the identity map). */
gr_ioapic_setup:
        movl    $LAPIC, %eax                    /* software-enable the local */
        movl    LAPIC_SVR(%rax), %edx           /* APIC (tiny.S only does so */
        andl    $~0xff, %edx                    /* with more than one CPU) */
        orl     $0x1ff, %edx
        movl    %edx, LAPIC_SVR(%rax)
        movl    $IOAPIC, %eax
        movl    $(0x10 + 2 * DB_GSI), (%rax)
        movl    $DB_VECTOR, 0x10(%rax)
        movl    $(0x11 + 2 * DB_GSI), (%rax)
        movl    $0, 0x10(%rax)
        ret

/* gr_copy1 / gr_copy256: esi = source, edi = destination: 1 or 256 x
 * 1 MiB rep movsq. */
gr_copy1:
        movl    $1, %r8d
        jmp     gr_copy
gr_copy256:
        movl    $256, %r8d
gr_copy:
        movq    %rsi, %r9
        movq    %rdi, %r10
1:      movq    %r9, %rsi
        movq    %r10, %rdi
        movl    $0x20000, %ecx                  /* 1 MiB in qwords */
        rep movsq
        decl    %r8d
        jnz     1b
        ret

/* gr_owner_setup: wait for the own segment at GW, write the pattern and
 * then the magic. */
gr_owner_setup:
        movl    $GW, %ebx
        call    gr_poll_mapped
        xorl    %ecx, %ecx
        movabsq $0x9e3779b97f4a7c15, %r8
1:      movq    %rcx, %rax
        imulq   %r8, %rax
        movq    %rax, 4096(%rbx, %rcx, 8)
        incl    %ecx
        cmpl    $PATTERN_QWORDS, %ecx
        jb      1b
        movl    $MAGIC_A, (%rbx)
        leaq    msg_gr_wrote(%rip), %rsi
        jmp     puts

/* gr_wait_reply: wait for "PVGB" at GW+8. */
gr_wait_reply:
        movl    $GW, %ebx
1:      cmpl    $MAGIC_B, 8(%rbx)
        je      2f
        movl    $POLL_CYCLES, %edi
        call    tsc_delay
        jmp     1b
2:      leaq    msg_gr_saw_reply(%rip), %rsi
        jmp     puts

/* gr_poll_mapped: rbx = address; returns once it reads other than ~0. */
gr_poll_mapped:
1:      cmpl    $0xffffffff, (%rbx)
        jne     2f
        movl    $POLL_CYCLES, %edi
        call    tsc_delay
        jmp     1b
2:      ret

/* gr_wait_pattern: rbx = base; waits for "PVGA", checks the pattern and
 * prints the result. */
gr_wait_pattern:
1:      cmpl    $MAGIC_A, (%rbx)
        je      2f
        movl    $POLL_CYCLES, %edi
        call    tsc_delay
        jmp     1b
2:      xorl    %ecx, %ecx
        movabsq $0x9e3779b97f4a7c15, %r8
3:      movq    %rcx, %rax
        imulq   %r8, %rax
        cmpq    %rax, 4096(%rbx, %rcx, 8)
        jne     4f
        incl    %ecx
        cmpl    $PATTERN_QWORDS, %ecx
        jb      3b
        leaq    msg_gr_pattern_ok(%rip), %rsi
        jmp     puts
4:      leaq    msg_gr_pattern_bad(%rip), %rsi
        jmp     puts

/* gr_watch: rbx = base; reads it every poll interval until it no longer
 * holds "PVGA" (revoked: the VMM answers 0xff), prints, spins. */
gr_watch:
1:      movl    (%rbx), %eax
        cmpl    $MAGIC_A, %eax
        jne     2f
        movl    $POLL_CYCLES, %edi
        call    tsc_delay
        jmp     1b
2:      pushq   %rax
        leaq    msg_gr_gone(%rip), %rsi
        call    puts
        popq    %rax
        call    put_hex16
        movb    $'\n', %al
        call    putc
        movl    (%rbx), %eax                    /* once more: reported too */
3:      pause
        jmp     3b

/* put_hex8: al = byte, printed as two lowercase hex digits. */
put_hex8:
        pushq   %rax
        shrb    $4, %al
        call    1f
        popq    %rax
        andb    $15, %al
1:      andb    $15, %al
        cmpb    $10, %al
        jb      2f
        addb    $('a' - '0' - 10), %al
2:      addb    $'0', %al
        jmp     putc

/* gr_getc: al = next byte from COM1 (polls the line status register). */
gr_getc:
        movw    $COM1 + 5, %dx
1:      inb     %dx, %al
        testb   $1, %al
        jnz     2f
        pause
        jmp     1b
2:      movw    $COM1, %dx
        inb     %dx, %al
        ret

/* gr_hexval: al = hex digit -> al = 0-15 (garbage for non-digits). */
gr_hexval:
        cmpb    $'a', %al
        jb      1f
        subb    $('a' - 10), %al
        ret
1:      subb    $'0', %al
        ret

/* gr_read_cookie: skips input up to 'p', then "vg1-", then 32 hex digits
 * into cookie_buf (16 bytes). */
gr_read_cookie:
        pushq   %rbx
1:      call    gr_getc
        cmpb    $'p', %al
        jne     1b
        movl    $4, %ebx                        /* "vg1-" */
2:      call    gr_getc
        decl    %ebx
        jnz     2b
        xorl    %ebx, %ebx
3:      call    gr_getc
        call    gr_hexval
        movb    %al, %cl
        shlb    $4, %cl
        pushq   %rcx
        call    gr_getc
        call    gr_hexval
        popq    %rcx
        orb     %al, %cl
        leaq    cookie_buf(%rip), %rdx
        movb    %cl, (%rdx, %rbx)
        incl    %ebx
        cmpl    $16, %ebx
        jb      3b
        popq    %rbx
        ret

        .balign 8
cookie_buf:             .quad 0, 0
ping_rounds:            .long 0
smp_go:                 .long 0         /* hcall-smp: BSP -> AP */
smp_stop:               .long 0
smp_stopped:            .long 0         /* AP -> BSP */
smp_ticks:              .long 0
halt_requested:         .byte 0         /* gr_wait_irq's ud2 means: halt */

tok_grant_owner:        .asciz "parvm.grant=owner"
tok_grant_peer:         .asciz "parvm.grant=peer"
tok_grant_reader:       .asciz "parvm.grant=reader"
tok_grant_hcowner:      .asciz "parvm.grant=hcall-owner"
tok_grant_hcpeer:       .asciz "parvm.grant=hcall-peer"
tok_grant_hcsmp:        .asciz "parvm.grant=hcall-smp"
tok_grant_bench:        .asciz "parvm.grant=bench"
tok_grant_ping:         .asciz "parvm.grant=ping"
tok_grant_pingbench:    .asciz "parvm.grant=pingbench"
tok_grant_pong:         .asciz "parvm.grant=pong"
msg_gr_wrote:           .asciz "parvm-guest: grant owner wrote pattern\n"
msg_gr_saw_reply:       .asciz "parvm-guest: grant owner saw reply\n"
msg_gr_pattern_ok:      .asciz "parvm-guest: grant pattern ok\n"
msg_gr_pattern_bad:     .asciz "parvm-guest: grant pattern bad\n"
msg_gr_replied:         .asciz "parvm-guest: grant peer wrote reply\n"
msg_gr_write_refused:   .asciz "parvm-guest: grant write refused\n"
msg_gr_write_landed:    .asciz "parvm-guest: grant write landed\n"
msg_gr_gone:            .asciz "parvm-guest: grant window gone value=0x"
msg_gr_grant_status:    .asciz "parvm-guest: grant hcall grant status="
msg_gr_cookie:          .asciz "parvm-guest: grant cookie=pvg1-"
msg_gr_revoke_status:   .asciz "parvm-guest: grant hcall revoke status="
msg_gr_count:           .asciz " count="
msg_gr_regrant_status:  .asciz "parvm-guest: grant hcall regrant status="
msg_gr_copy_status:     .asciz "parvm-guest: grant hcall copy status="
msg_gr_bytes:           .asciz " bytes="
msg_gr_copy_landed:     .asciz "parvm-guest: grant copy landed\n"
msg_gr_seg_status:      .asciz "parvm-guest: grant hcall segment status="
msg_gr_number:          .asciz " number="
msg_gr_seg_ok:          .asciz "parvm-guest: grant own segment works\n"
msg_gr_seg_bad:         .asciz "parvm-guest: grant own segment broken\n"
msg_gr_forged:          .asciz "parvm-guest: grant hcall forged accept status="
msg_gr_accept_status:   .asciz "parvm-guest: grant hcall accept status="
msg_gr_gpa:             .asciz " gpa=0x"
msg_gr_reaccept:        .asciz "parvm-guest: grant hcall second accept status="
msg_gr_bench_shared:    .asciz "parvm-guest: grant bench shared 256MiB cycles="
msg_gr_bench_ram:       .asciz "parvm-guest: grant bench ram 256MiB cycles="
msg_gr_ping_start:      .asciz "parvm-guest: doorbell ping start\n"
msg_gr_ping_done:       .asciz "parvm-guest: doorbell ping rounds="
msg_gr_cycles:          .asciz " cycles="
msg_gr_pong:            .asciz "parvm-guest: doorbell pong ready\n"
msg_gr_smp_alone:       .asciz "parvm-guest: grant hcall smp needs a second vCPU\n"
msg_gr_smp_calling:     .asciz "parvm-guest: grant hcall smp calling\n"
msg_gr_smp_tick:        .asciz "parvm-guest: grant hcall smp tick "
msg_gr_smp_magic_ok:    .asciz " magic=ok\n"
msg_gr_smp_magic_bad:   .asciz " magic=bad\n"
msg_gr_smp_status:      .asciz "parvm-guest: grant hcall smp status="
msg_gr_smp_result0:     .asciz " result0="
msg_gr_smp_ticks:       .asciz " ticks="
