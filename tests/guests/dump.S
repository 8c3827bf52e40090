/*
 * dump.S - firmware-assisted dump tests of the tiny guest (included by
 * tiny.S, in its .kernel section; docs/guests.md and docs/dump.md).
 *
 *   parvm.test=dumpfault  write the dump pattern, load the dump registers,
 *                         triple-fault
 *   parvm.test=dumppanic  the same, then report a panic through pvpanic
 *                         (outb 1 to port 0x505) and spin
 *   parvm.test=dumpfill   fill RAM from DUMP_FILL (16 MiB) to ram_end with
 *                         DUMP_Q2, then dumpfault (a dump with little zero)
 *   parvm.test=dumpcount  count forever at CPL3: r15 = the count, stored at
 *                         DUMP_COUNT_A and then DUMP_COUNT_B after every
 *                         increment; a line every 2^27 counts
 *
 * The pattern: four qwords at DUMP_PATTERN (4 MiB), DUMP_Q0..DUMP_Q3; the
 * registers: r14 = DUMP_R14, r15 = DUMP_R15 (parvm_tests::guests has the
 * same constants). A consistent dump of dumpcount has, at any instant,
 * A - B in {0, 1} and r15 - A in {0, 1}.
 */

        .set DUMP_PATTERN,      0x400000
        .set DUMP_Q0,           0x0123456789abcdef
        .set DUMP_Q1,           0xfedcba9876543210
        .set DUMP_Q2,           0x5041525644554d50      /* "PMUDVRAP" */
        .set DUMP_Q3,           0xdeadbeefcafef00d
        .set DUMP_R14,          0x1122334455667788
        .set DUMP_R15,          0x7061727664756d70
        .set DUMP_COUNT_A,      0x400000
        .set DUMP_COUNT_B,      0x1000000               /* 16 MiB */
        .set PVPANIC_PORT,      0x505
        .set DUMP_FILL,         0x1000000               /* 16 MiB */

/* Writes the pattern and prints where. Clobbers rax, rcx, rdx, rsi, r8. */
dump_pattern:
        movl    $DUMP_PATTERN, %ecx
        movabsq $DUMP_Q0, %rax
        movq    %rax, (%rcx)
        movabsq $DUMP_Q1, %rax
        movq    %rax, 8(%rcx)
        movabsq $DUMP_Q2, %rax
        movq    %rax, 16(%rcx)
        movabsq $DUMP_Q3, %rax
        movq    %rax, 24(%rcx)
        leaq    msg_dump_pattern(%rip), %rsi
        call    puts
        movl    $DUMP_PATTERN, %eax
        call    put_hex16
        movb    $'\n', %al
        jmp     putc

dump_fault:
        call    dump_pattern
        leaq    msg_triplefault(%rip), %rsi
        call    puts
        movabsq $DUMP_R14, %r14
        movabsq $DUMP_R15, %r15
        movb    $1, triple_requested(%rip)      /* tiny.S: ud2 -> triple fault */
        ud2

dump_fill:
        movq    ram_end(%rip), %rcx
        andq    $-4096, %rcx
        subq    $DUMP_FILL, %rcx
        jbe     dump_fault                      /* no RAM above 16 MiB */
        shrq    $3, %rcx
        movl    $DUMP_FILL, %edi
        movabsq $DUMP_Q2, %rax
        cld
        rep stosq                               /* CPL3: native speed */
        leaq    msg_dump_filled(%rip), %rsi
        call    puts
        jmp     dump_fault

dump_panic:
        call    dump_pattern
        leaq    msg_dump_panic(%rip), %rsi
        call    puts
        movabsq $DUMP_R14, %r14
        movabsq $DUMP_R15, %r15
        movw    $PVPANIC_PORT, %dx
        inb     %dx, %al                        /* the events the device offers */
        movb    $1, %al                         /* PVPANIC_PANICKED */
        outb    %al, %dx
1:      pause
        jmp     1b

dump_count:
        leaq    msg_dump_count(%rip), %rsi
        call    puts
        xorl    %r15d, %r15d
        movl    $DUMP_COUNT_A, %ebx
        movl    $DUMP_COUNT_B, %ebp
1:      incq    %r15
        movq    %r15, (%rbx)
        movq    %r15, (%rbp)
        testl   $0x7ffffff, %r15d
        jnz     1b
        leaq    msg_dump_tick(%rip), %rsi
        call    puts
        jmp     1b

msg_dump_pattern: .asciz "parvm-guest: dump pattern at 0x"
msg_dump_panic:   .asciz "parvm-guest: panic through pvpanic now\n"
msg_dump_count:   .asciz "parvm-guest: dumpcount counting\n"
msg_dump_tick:    .asciz "parvm-guest: dumpcount tick\n"
tok_dumpfault:    .asciz "parvm.test=dumpfault"
tok_dumppanic:    .asciz "parvm.test=dumppanic"
msg_dump_filled:  .asciz "parvm-guest: dump filled RAM\n"
tok_dumpfill:     .asciz "parvm.test=dumpfill"
tok_dumpcount:    .asciz "parvm.test=dumpcount"
