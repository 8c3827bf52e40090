/*
 * blk.S - the tiny guest's virtio-blk driver (included by tiny.S, in its
 * .kernel section; see docs/guests.md for the output lines).
 *
 *   parvm.test=blk       find the first virtio_mmio.device=<size>@<base>:<irq>
 *                        on the command line, initialise the device, print
 *                        capacity/ro/serial, write a pattern to sectors
 *                        0..63, flush, read them back, compare, print the
 *                        statuses and the FNV-1a 64 of what was read.
 *   parvm.test=blkswap   parvm.test=blk, with a sweep over the RAM from
 *                        8 MiB up (mem_sweep, mem.S) after filling the
 *                        write buffer and after zeroing the read buffer, so
 *                        a host pager has evicted them when the device
 *                        uses them; result lines say "blkswap".
 *   parvm.test=blkbench  the same initialisation, then 4 KiB random reads at
 *                        queue depth 32 and 1 MiB sequential reads and
 *                        writes, each phase framed by start/done lines that
 *                        the host times (tests/src/bin/bench-blk.rs).
 *
 * Everything runs at CPL3 (native speed under PVM): the MMIO window and the
 * rings are reachable through the user-accessible identity map. The driver
 * polls the used ring (bounded by the TSC) and asks the device for no
 * interrupts (VRING_AVAIL_F_NO_INTERRUPT); it notifies (QueueNotify) only
 * when the device is not already draining the queue (VRING_USED_F_NO_NOTIFY
 * clear). EVENT_IDX is not negotiated.
 *
 * Requests use "slots": slot k owns descriptors 3k..3k+2 of the ring (header,
 * data, status) and header/status k; its chain head is 3k, so a used-ring id
 * maps back to its slot by dividing by 3. A slot with an indirect table
 * (sequential benchmark) puts a single VRING_DESC_F_INDIRECT descriptor at
 * 3k and builds header, 4 KiB data segments and status in blk_ind[k].
 *
 * Conventions as in tiny.S: rax, rcx, rdx, rsi, rdi, r8-r11 clobbered;
 * rbx, rbp, r12-r15 preserved. No SSE.
 */

        /* virtio-mmio registers (version 2) */
        .set VIRTIO_MAGIC,          0x74726976  /* "virt" */
        .set VM_MAGIC,              0x000
        .set VM_VERSION,            0x004
        .set VM_DEVICE_ID,          0x008
        .set VM_DEV_FEATURES,       0x010
        .set VM_DEV_FEATURES_SEL,   0x014
        .set VM_DRV_FEATURES,       0x020
        .set VM_DRV_FEATURES_SEL,   0x024
        .set VM_QUEUE_SEL,          0x030
        .set VM_QUEUE_NUM_MAX,      0x034
        .set VM_QUEUE_NUM,          0x038
        .set VM_QUEUE_READY,        0x044
        .set VM_QUEUE_NOTIFY,       0x050
        .set VM_STATUS,             0x070
        .set VM_QUEUE_DESC_LO,      0x080
        .set VM_QUEUE_DESC_HI,      0x084
        .set VM_QUEUE_DRIVER_LO,    0x090
        .set VM_QUEUE_DRIVER_HI,    0x094
        .set VM_QUEUE_DEVICE_LO,    0x0a0
        .set VM_QUEUE_DEVICE_HI,    0x0a4
        .set VM_CONFIG_GEN,         0x0fc
        .set VM_CONFIG,             0x100
        .set VM_WINDOW,             0x200       /* registers + our config reads */

        /* device status bits */
        .set ST_ACK,                1
        .set ST_DRIVER,             2
        .set ST_DRIVER_OK,          4
        .set ST_FEATURES_OK,        8
        .set ST_NEEDS_RESET,        0x40

        /* feature bits (word 0); VIRTIO_F_VERSION_1 is bit 0 of word 1 */
        .set F_SEG_MAX,             (1 << 2)
        .set F_RO,                  (1 << 5)
        .set F_FLUSH,               (1 << 9)
        .set F_INDIRECT,            (1 << 28)
        .set BLK_FEATURES,          (F_SEG_MAX | F_RO | F_FLUSH | F_INDIRECT)

        /* virtio-blk request types */
        .set BLK_T_IN,              0
        .set BLK_T_OUT,             1
        .set BLK_T_FLUSH,           4
        .set BLK_T_GET_ID,          8

        /* descriptor and ring flags */
        .set DESC_NEXT,             1
        .set DESC_WRITE,            2
        .set DESC_INDIRECT,         4
        .set AVAIL_NO_INTERRUPT,    1
        .set USED_NO_NOTIFY,        1

        .set BLK_MAX_QSIZE,         256
        .set BLK_MAX_SLOTS,         (BLK_MAX_QSIZE / 3)
        .set BLK_RAND_DEPTH,        32          /* random reads in flight */
        .set BLK_SEQ_DEPTH,         4           /* sequential requests in flight */
        .set BLK_SEQ_SEGS,          128         /* 4 KiB segments per request */
        .set BLK_TIMEOUT_SHIFT,     34          /* give up after 2^34 TSC cycles (~6 s) */

        .set BLK_DATA,              0x200000    /* 1 MiB data buffer (RAM) */
        .set BLK_DATA_SIZE,         0x100000
        .set BLK_PATTERN_SECTORS,   64          /* parvm.test=blk: sectors 0..63 */
        .set BLK_PATTERN_BYTES,     (BLK_PATTERN_SECTORS * 512)
        .set BLK_READ,              (BLK_DATA + BLK_PATTERN_BYTES)  /* the read buffer */
        .set BLKSWAP_SWEEP,         0x800000    /* parvm.test=blkswap sweeps from 8 MiB */
        .set BLKSWAP_MIN_END,       0x1000000   /* ... and needs RAM up to 16 MiB */
        .set BLK_BENCH_READS,       65536       /* default parvm.bench= */
        .set BLK_BENCH_MIB,         512         /* default parvm.benchmib= */

/* ----------------------------------------------------------------------
 * Command-line parsing.
 * ---------------------------------------------------------------------- */

/* find_word_prefix: rdi = NUL-terminated string, rsi = NUL-terminated
 * prefix. rax = the address right after the prefix in the first
 * whitespace-separated word that starts with it, or 0. */
find_word_prefix:
1:      movb    (%rdi), %al                     /* skip whitespace */
        testb   %al, %al
        jz      8f
        cmpb    $' ', %al
        ja      2f
        incq    %rdi
        jmp     1b
2:      movq    %rdi, %r8
        movq    %rsi, %r9
3:      movb    (%r9), %dl
        testb   %dl, %dl
        jz      9f                              /* whole prefix matched */
        cmpb    %dl, (%r8)
        jne     5f
        incq    %r8
        incq    %r9
        jmp     3b
5:      movb    (%rdi), %al                     /* skip the rest of the word */
        cmpb    $' ', %al
        jbe     1b
        incq    %rdi
        jmp     5b
8:      xorl    %eax, %eax
        ret
9:      movq    %r8, %rax
        ret

/* parse_num: rsi = text. Parses a number like Linux's memparse: decimal or
 * 0x-prefixed hex, optionally followed by K, M or G (either case). rax =
 * value, rsi = first byte after it, edx = number of digits (0: none). */
parse_num:
        xorl    %eax, %eax
        xorl    %edx, %edx
        cmpb    $'0', (%rsi)
        jne     3f
        movb    1(%rsi), %cl
        orb     $0x20, %cl
        cmpb    $'x', %cl
        jne     3f
        addq    $2, %rsi                        /* hex */
1:      movzbl  (%rsi), %ecx
        leal    -48(%rcx), %r8d                 /* '0'..'9' */
        cmpl    $10, %r8d
        jb      2f
        orl     $0x20, %ecx
        leal    -97(%rcx), %r8d                 /* 'a'..'f' */
        cmpl    $6, %r8d
        jae     5f
        addl    $10, %r8d
2:      shlq    $4, %rax
        addq    %r8, %rax
        incl    %edx
        incq    %rsi
        jmp     1b
3:      movzbl  (%rsi), %ecx                    /* decimal */
        subl    $48, %ecx
        cmpl    $10, %ecx
        jae     5f
        imulq   $10, %rax, %rax
        addq    %rcx, %rax
        incl    %edx
        incq    %rsi
        jmp     3b
5:      testl   %edx, %edx
        jz      8f
        movzbl  (%rsi), %ecx                    /* suffix */
        orl     $0x20, %ecx
        cmpl    $'k', %ecx
        jne     6f
        shlq    $10, %rax
        jmp     7f
6:      cmpl    $'m', %ecx
        jne     61f
        shlq    $20, %rax
        jmp     7f
61:     cmpl    $'g', %ecx
        jne     8f
        shlq    $30, %rax
7:      incq    %rsi
8:      ret

/* cmdline_num: rsi = prefix ("parvm.bench="), rax = default. rax = the
 * number following the prefix on the command line, or the default when the
 * prefix is absent or not followed by a number. */
cmdline_num:
        pushq   %rax
        leaq    cmdline_buf(%rip), %rdi
        call    find_word_prefix
        testq   %rax, %rax
        jz      9f
        movq    %rax, %rsi
        call    parse_num
        testl   %edx, %edx
        jz      9f
        addq    $8, %rsp
        ret
9:      popq    %rax
        ret

/* ----------------------------------------------------------------------
 * Device discovery and initialisation.
 * ---------------------------------------------------------------------- */

/* blk_find: blk_base = <base> of the first virtio_mmio.device=<size>@<base>
 * on the command line. eax = 1, or 0 after printing why not. */
blk_find:
        leaq    cmdline_buf(%rip), %rdi
        leaq    tok_virtio_mmio(%rip), %rsi
        call    find_word_prefix
        testq   %rax, %rax
        jz      8f
        movq    %rax, %rsi
        call    parse_num                       /* <size> */
        testl   %edx, %edx
        jz      7f
        cmpb    $'@', (%rsi)
        jne     7f
        incq    %rsi
        call    parse_num                       /* <base> */
        testl   %edx, %edx
        jz      7f
        testq   $3, %rax                        /* 4-byte registers */
        jnz     7f
        leaq    VM_WINDOW(%rax), %rcx           /* must lie below 4 GiB (mapped) */
        movq    $0x100000000, %rdx
        cmpq    %rdx, %rcx
        ja      7f
        cmpq    %rax, %rcx
        jb      7f
        movq    %rax, blk_base(%rip)
        movl    $1, %eax
        ret
7:      leaq    msg_blk_badarg(%rip), %rsi
        call    puts
        xorl    %eax, %eax
        ret
8:      leaq    msg_blk_nodev(%rip), %rsi
        call    puts
        xorl    %eax, %eax
        ret

/* blk_room: the data buffer [BLK_DATA, BLK_DATA + 1 MiB) must be RAM (the
 * guest has at least 3 MiB: RAM below 640 KiB plus RAM from 1 MiB up) and
 * must not hold the initrd. eax = 1, or 0 after printing why not. */
blk_room:
        movq    mem_bytes(%rip), %rax
        cmpq    $(BLK_DATA + BLK_DATA_SIZE), %rax
        jb      8f
        movq    initrd_addr(%rip), %rax
        movq    initrd_size(%rip), %rcx
        testq   %rcx, %rcx
        jz      1f
        cmpq    $(BLK_DATA + BLK_DATA_SIZE), %rax
        jae     1f
        addq    %rcx, %rax
        cmpq    $BLK_DATA, %rax
        ja      8f
1:      movl    $1, %eax
        ret
8:      leaq    msg_blk_noroom(%rip), %rsi
        call    puts
        xorl    %eax, %eax
        ret

/* blk_init: the virtio 1.x initialisation sequence on blk_base (reset,
 * ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queue 0, DRIVER_OK), then
 * the configuration space (capacity, seg_max). eax = 1, or 0 after
 * printing what failed. */
blk_init:
        pushq   %rbx
        pushq   %r12
        movq    blk_base(%rip), %rbx
        movl    VM_MAGIC(%rbx), %eax
        cmpl    $VIRTIO_MAGIC, %eax
        jne     blk_init_notblk
        movl    VM_VERSION(%rbx), %eax
        cmpl    $2, %eax
        jne     blk_init_notblk
        movl    VM_DEVICE_ID(%rbx), %eax
        cmpl    $2, %eax
        jne     blk_init_notblk

        xorl    %eax, %eax                      /* reset, and wait (bounded) */
        movl    %eax, VM_STATUS(%rbx)           /* until status reads 0 */
        movl    $1000, %ecx
1:      movl    VM_STATUS(%rbx), %eax
        testl   %eax, %eax
        jz      2f
        pause
        decl    %ecx
        jnz     1b
        leaq    msg_blkf_reset(%rip), %rsi
        jmp     blk_init_fail
2:      movl    $ST_ACK, %eax
        movl    %eax, VM_STATUS(%rbx)
        movl    $(ST_ACK | ST_DRIVER), %eax
        movl    %eax, VM_STATUS(%rbx)

        xorl    %eax, %eax                      /* device features */
        movl    %eax, VM_DEV_FEATURES_SEL(%rbx)
        movl    VM_DEV_FEATURES(%rbx), %r12d
        movl    $1, %eax
        movl    %eax, VM_DEV_FEATURES_SEL(%rbx)
        movl    VM_DEV_FEATURES(%rbx), %eax
        leaq    msg_blkf_version(%rip), %rsi
        testl   $1, %eax                        /* VIRTIO_F_VERSION_1 */
        jz      blk_init_fail
        andl    $BLK_FEATURES, %r12d            /* what we accept */
        movl    %r12d, blk_features(%rip)
        xorl    %eax, %eax                      /* driver features */
        movl    %eax, VM_DRV_FEATURES_SEL(%rbx)
        movl    %r12d, VM_DRV_FEATURES(%rbx)
        movl    $1, %eax
        movl    %eax, VM_DRV_FEATURES_SEL(%rbx)
        movl    %eax, VM_DRV_FEATURES(%rbx)     /* VERSION_1 */
        movl    $(ST_ACK | ST_DRIVER | ST_FEATURES_OK), %eax
        movl    %eax, VM_STATUS(%rbx)
        movl    VM_STATUS(%rbx), %eax
        leaq    msg_blkf_features(%rip), %rsi
        testl   $ST_FEATURES_OK, %eax
        jz      blk_init_fail

        xorl    %eax, %eax                      /* queue 0 */
        movl    %eax, VM_QUEUE_SEL(%rbx)
        movl    VM_QUEUE_READY(%rbx), %eax
        leaq    msg_blkf_queue(%rip), %rsi
        testl   %eax, %eax
        jnz     blk_init_fail
        movl    VM_QUEUE_NUM_MAX(%rbx), %eax
        cmpl    $BLK_MAX_QSIZE, %eax
        jbe     1f
        movl    $BLK_MAX_QSIZE, %eax
1:      cmpl    $4, %eax                        /* 3 descriptors per request */
        jb      blk_init_fail
        bsrl    %eax, %ecx                      /* largest power of two <= */
        movl    $1, %eax
        shll    %cl, %eax
        movl    %eax, blk_qsize(%rip)
        movl    %eax, VM_QUEUE_NUM(%rbx)

        leaq    vq_desc(%rip), %rdi             /* zero the three ring pages */
        movl    $(3 * 4096 / 8), %ecx
        xorl    %eax, %eax
        cld
        rep stosq
        movw    $AVAIL_NO_INTERRUPT, vq_avail(%rip)   /* we poll */
        movl    $0, blk_avail_idx(%rip)
        movl    $0, blk_used_last(%rip)

        xorl    %edx, %edx                      /* everything is below 4 GiB */
        leaq    vq_desc(%rip), %rax
        movl    %eax, VM_QUEUE_DESC_LO(%rbx)
        movl    %edx, VM_QUEUE_DESC_HI(%rbx)
        leaq    vq_avail(%rip), %rax
        movl    %eax, VM_QUEUE_DRIVER_LO(%rbx)
        movl    %edx, VM_QUEUE_DRIVER_HI(%rbx)
        leaq    vq_used(%rip), %rax
        movl    %eax, VM_QUEUE_DEVICE_LO(%rbx)
        movl    %edx, VM_QUEUE_DEVICE_HI(%rbx)
        movl    $1, %eax
        movl    %eax, VM_QUEUE_READY(%rbx)

        /* configuration space, consistent by ConfigGeneration */
2:      movl    VM_CONFIG_GEN(%rbx), %r12d
        movl    VM_CONFIG + 0(%rbx), %eax       /* capacity (u64, two reads) */
        movl    VM_CONFIG + 4(%rbx), %edx
        shlq    $32, %rdx
        orq     %rdx, %rax
        movq    %rax, blk_capacity(%rip)
        movl    $1, %eax                        /* seg_max, 1 if not offered */
        testl   $F_SEG_MAX, blk_features(%rip)
        jz      3f
        movl    VM_CONFIG + 12(%rbx), %eax
        testl   %eax, %eax
        jnz     3f
        movl    $1, %eax
3:      movl    %eax, blk_segmax(%rip)
        movl    VM_CONFIG_GEN(%rbx), %eax
        cmpl    %eax, %r12d
        jne     2b

        movl    $(ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK), %eax
        movl    %eax, VM_STATUS(%rbx)
        movl    VM_STATUS(%rbx), %eax
        leaq    msg_blkf_driver_ok(%rip), %rsi
        testl   $ST_NEEDS_RESET, %eax
        jnz     blk_init_fail
        testl   $ST_DRIVER_OK, %eax
        jz      blk_init_fail
        movl    $1, %eax
        jmp     9f

blk_init_notblk:
        leaq    msg_blk_notblk(%rip), %rsi
        call    puts
        movq    %rbx, %rax
        call    put_hex16
        leaq    msg_blk_magic(%rip), %rsi
        call    puts
        movl    VM_MAGIC(%rbx), %eax
        call    put_hex16
        leaq    msg_blk_version(%rip), %rsi
        movl    VM_VERSION(%rbx), %eax
        call    puts_dec_then
        leaq    msg_blk_devid(%rip), %rsi
        movl    VM_DEVICE_ID(%rbx), %eax
        call    print_line_dec
        xorl    %eax, %eax
        jmp     9f
blk_init_fail:                                  /* rsi = reason */
        pushq   %rsi
        leaq    msg_blk_initfail(%rip), %rsi
        call    puts
        popq    %rsi
        call    puts
        leaq    msg_blk_status(%rip), %rsi
        call    puts
        movl    VM_STATUS(%rbx), %eax
        call    put_hex16
        movb    $'\n', %al
        call    putc
        xorl    %eax, %eax
9:      popq    %r12
        popq    %rbx
        ret

/* ----------------------------------------------------------------------
 * Requests.
 * ---------------------------------------------------------------------- */

/* blk_submit: edi = slot, esi = request type, rdx = sector, rcx = buffer,
 * r8 = data bytes (0: no data descriptor), r9 = segment size for an
 * indirect table (0: one direct data descriptor; else r8 must be a
 * multiple of r9). Builds the chain (head 3*slot), sets the slot's status
 * byte to 0xff and publishes the head in the available ring. Does not
 * notify. */
blk_submit:
        movl    %edi, %edi
        movq    %rdi, %r10                      /* r10 = header of the slot */
        shlq    $4, %r10
        leaq    blk_hdrs(%rip), %rax
        addq    %rax, %r10
        movl    %esi, 0(%r10)
        movl    $0, 4(%r10)
        movq    %rdx, 8(%r10)
        leaq    blk_status(%rip), %r11          /* r11 = status byte */
        addq    %rdi, %r11
        movb    $0xff, (%r11)
        xorl    %eax, %eax                      /* data direction */
        cmpl    $BLK_T_OUT, %esi
        je      1f
        movl    $DESC_WRITE, %eax
1:      movl    %eax, %esi                      /* esi = data flags */
        leal    (%rdi, %rdi, 2), %edx           /* edx = head = 3 * slot */
        testq   %r9, %r9
        jz      2f
        testq   %r8, %r8
        jnz     blk_submit_indirect

2:      movl    %edx, %eax                      /* direct chain in the ring */
        shlq    $4, %rax
        leaq    vq_desc(%rip), %rdi
        addq    %rax, %rdi
        movq    %r10, 0(%rdi)                   /* header */
        movl    $16, 8(%rdi)
        movw    $DESC_NEXT, 12(%rdi)
        leal    1(%rdx), %eax
        movw    %ax, 14(%rdi)
        testq   %r8, %r8
        jz      3f
        addq    $16, %rdi                       /* data */
        movq    %rcx, 0(%rdi)
        movl    %r8d, 8(%rdi)
        leal    DESC_NEXT(%rsi), %eax
        movw    %ax, 12(%rdi)
        leal    2(%rdx), %eax
        movw    %ax, 14(%rdi)
3:      addq    $16, %rdi                       /* status */
        movq    %r11, 0(%rdi)
        movl    $1, 8(%rdi)
        movw    $DESC_WRITE, 12(%rdi)
        movw    $0, 14(%rdi)
        jmp     blk_publish

blk_submit_indirect:
        movq    %rdi, %rax                      /* table = blk_ind + slot * 4 KiB */
        shlq    $12, %rax
        leaq    blk_ind(%rip), %rdi
        addq    %rax, %rdi
        pushq   %rdx                            /* head */
        pushq   %rdi                            /* table */
        movq    %r10, 0(%rdi)                   /* [0] header */
        movl    $16, 8(%rdi)
        movw    $DESC_NEXT, 12(%rdi)
        movw    $1, 14(%rdi)
        movl    $1, %edx                        /* edx = next entry's index */
4:      addq    $16, %rdi                       /* [1..n] data segments */
        incl    %edx
        movq    %rcx, 0(%rdi)
        movl    %r9d, 8(%rdi)
        leal    DESC_NEXT(%rsi), %eax
        movw    %ax, 12(%rdi)
        movw    %dx, 14(%rdi)
        addq    %r9, %rcx
        subq    %r9, %r8
        ja      4b
        addq    $16, %rdi                       /* [n+1] status */
        movq    %r11, 0(%rdi)
        movl    $1, 8(%rdi)
        movw    $DESC_WRITE, 12(%rdi)
        movw    $0, 14(%rdi)
        incl    %edx                            /* entries = n + 2 */
        shll    $4, %edx
        popq    %rdi                            /* table */
        popq    %rax                            /* head */
        movl    %eax, %ecx
        shlq    $4, %rcx
        leaq    vq_desc(%rip), %rsi
        addq    %rcx, %rsi
        movq    %rdi, 0(%rsi)
        movl    %edx, 8(%rsi)
        movw    $DESC_INDIRECT, 12(%rsi)
        movw    $0, 14(%rsi)
        movl    %eax, %edx

blk_publish:                                    /* edx = head */
        movl    blk_avail_idx(%rip), %eax
        movl    blk_qsize(%rip), %ecx
        decl    %ecx
        andl    %eax, %ecx
        leaq    vq_avail(%rip), %rsi
        movw    %dx, 4(%rsi, %rcx, 2)           /* ring[idx % size] = head */
        incl    %eax
        movl    %eax, blk_avail_idx(%rip)
        movw    %ax, 2(%rsi)                    /* then idx (x86 keeps store order) */
        ret

/* blk_kick: notify the device, unless it is still draining the queue (it
 * then sees the new entries before it sleeps: it re-checks the available
 * index after clearing VRING_USED_F_NO_NOTIFY). */
blk_kick:
        mfence                                  /* avail idx store before the flags load */
        testw   $USED_NO_NOTIFY, vq_used(%rip)
        jnz     1f
        movq    blk_base(%rip), %rcx
        xorl    %eax, %eax                      /* queue 0 */
        movl    %eax, VM_QUEUE_NOTIFY(%rcx)
        incq    blk_kicks(%rip)
1:      ret

/* blk_wait: waits (at most 2^BLK_TIMEOUT_SHIFT TSC cycles) for the next
 * used-ring entry and consumes it. eax = its slot, or -1 on a timeout or an
 * id that is not a head we use. */
blk_wait:
        movl    blk_used_last(%rip), %ecx
        movzwl  vq_used + 2(%rip), %eax
        cmpw    %ax, %cx
        jne     3f
        rdtsc
        shlq    $32, %rdx
        orq     %rax, %rdx
        movq    %rdx, %r8
1:      pause
        movzwl  vq_used + 2(%rip), %eax
        cmpw    %ax, %cx
        jne     3f
        rdtsc
        shlq    $32, %rdx
        orq     %rax, %rdx
        subq    %r8, %rdx
        shrq    $BLK_TIMEOUT_SHIFT, %rdx
        jz      1b
        movl    $-1, %eax
        ret
3:      movl    blk_qsize(%rip), %edx           /* entry used_last % size */
        decl    %edx
        andl    %ecx, %edx
        leaq    vq_used(%rip), %rsi
        movl    4(%rsi, %rdx, 8), %eax          /* id (head) */
        incl    %ecx
        movl    %ecx, blk_used_last(%rip)
        cmpl    $(3 * BLK_MAX_SLOTS), %eax
        jae     4f
        xorl    %edx, %edx
        movl    $3, %ecx
        divl    %ecx
        testl   %edx, %edx
        jnz     4f
        ret
4:      movl    $-1, %eax
        ret

/* blk_sync: one request in slot 0 (direct chain), waited for. esi = type,
 * rdx = sector, rcx = buffer, r8 = bytes. eax = its status byte (0xff if
 * the device wrote none). Does not return if the device never answers. */
blk_sync:
        xorl    %edi, %edi
        xorl    %r9d, %r9d
        call    blk_submit
        call    blk_kick
        call    blk_wait
        testl   %eax, %eax
        jnz     blk_timeout
        movzbl  blk_status(%rip), %eax
        ret

/* blk_timeout: the device did not answer (or answered nonsense): say so
 * and power off. */
blk_timeout:
        leaq    msg_blk_timeout(%rip), %rsi
        call    puts
        movl    blk_used_last(%rip), %eax
        call    put_dec
        leaq    msg_blk_timeout2(%rip), %rsi
        movl    blk_avail_idx(%rip), %eax
        call    puts_dec_then
        movb    $'\n', %al
        call    putc
        jmp     poweroff

/* blk_hello: GET_ID, then "parvm-guest: blk capacity=<sectors> ro=<0|1>
 * serial=<id>" ("serial=(status N)" if GET_ID failed). */
blk_hello:
        pushq   %rbx
        leaq    blk_idbuf(%rip), %rdi
        xorl    %eax, %eax
        movl    $4, %ecx
        rep stosq
        movl    $BLK_T_GET_ID, %esi
        xorl    %edx, %edx
        leaq    blk_idbuf(%rip), %rcx
        movl    $20, %r8d
        call    blk_sync
        movl    %eax, %ebx
        call    blk_put_label                   /* "parvm-guest: blk" */
        leaq    msg_blk_capacity(%rip), %rsi
        movq    blk_capacity(%rip), %rax
        call    puts_dec_then
        leaq    msg_blk_ro(%rip), %rsi
        movl    blk_features(%rip), %eax
        shrl    $5, %eax                        /* F_RO */
        andl    $1, %eax
        call    puts_dec_then
        leaq    msg_blk_serial(%rip), %rsi
        call    puts
        testl   %ebx, %ebx
        jnz     5f
        leaq    blk_idbuf(%rip), %rbx
        movl    $20, %ecx
1:      movb    (%rbx), %al
        testb   %al, %al
        jz      6f
        cmpb    $0x20, %al                      /* printable ASCII only */
        jbe     2f
        cmpb    $0x7e, %al
        jbe     3f
2:      movb    $'?', %al
3:      pushq   %rcx
        call    putc
        popq    %rcx
        incq    %rbx
        decl    %ecx
        jnz     1b
        jmp     6f
5:      leaq    msg_blk_idstatus(%rip), %rsi
        movl    %ebx, %eax
        call    puts_dec_then
        movb    $')', %al
        call    putc
6:      movb    $'\n', %al
        call    putc
        popq    %rbx
        ret

/* fnv1a64_buf: rsi = buffer, rcx = bytes (> 0). rax = FNV-1a 64. */
fnv1a64_buf:
        movabsq $0xcbf29ce484222325, %rax
        movabsq $0x100000001b3, %r9
1:      movzbl  (%rsi), %edx
        xorq    %rdx, %rax
        imulq   %r9, %rax
        incq    %rsi
        decq    %rcx
        jnz     1b
        ret

/* ----------------------------------------------------------------------
 * parvm.test=blk: write pattern, flush, read back, compare.
 * Byte i (0..511) of sector s (0..63) is (s * 31 + i * 7) & 0xff.
 * ---------------------------------------------------------------------- */
blk_test:
        call    blk_find
        testl   %eax, %eax
        jz      poweroff
        call    blk_room
        testl   %eax, %eax
        jz      poweroff
        call    blk_init
        testl   %eax, %eax
        jz      poweroff
        call    blk_hello
        call    blk_fill_pattern
        call    blk_zero_readbuf
        call    blk_write_flush
        call    blk_read_back
        jmp     blk_finish

/* ----------------------------------------------------------------------
 * parvm.test=blkswap: parvm.test=blk with a sweep over the RAM from 8 MiB
 * to ram_end (one write per 4 KiB page, mem_sweep in mem.S) after filling
 * the write buffer and after zeroing the read buffer, so that under a small
 * resident target the host has paged both buffers out by the time the
 * device reads / writes them. Order: fill, sweep, write, flush, zero,
 * sweep, read, compare. The buffers (2 MiB + 0 / + 32 KiB) lie below the
 * swept range.
 * ---------------------------------------------------------------------- */
blk_swap:
        cmpq    $BLKSWAP_MIN_END, ram_end(%rip) /* RAM from 2 MiB to >= 16 MiB */
        jb      8f
        leaq    msg_blkswap_label(%rip), %rax
        movq    %rax, blk_label(%rip)
        call    blk_find
        testl   %eax, %eax
        jz      poweroff
        call    blk_room
        testl   %eax, %eax
        jz      poweroff
        call    blk_init
        testl   %eax, %eax
        jz      poweroff
        call    blk_hello
        call    blk_fill_pattern
        call    blk_swap_sweep
        call    blk_write_flush
        call    blk_zero_readbuf
        call    blk_swap_sweep
        call    blk_read_back
        jmp     blk_finish
8:      leaq    msg_blkswap_small(%rip), %rsi
        call    puts
        jmp     poweroff

/* blk_swap_sweep: one write per page of [BLKSWAP_SWEEP, ram_end), then
 * "parvm-guest: blkswap swept=<MiB>MiB". */
blk_swap_sweep:
        movl    $BLKSWAP_SWEEP, %edi
        movq    ram_end(%rip), %rsi
        call    mem_sweep
        leaq    msg_blkswap_swept(%rip), %rsi
        movq    ram_end(%rip), %rax
        subq    $BLKSWAP_SWEEP, %rax
        shrq    $20, %rax
        call    puts_dec_then
        leaq    msg_mib_nl(%rip), %rsi
        jmp     puts

/* blk_put_label: prints "parvm-guest: " and the name of the running test
 * (blk_label: "blk", or "blkswap"). */
blk_put_label:
        leaq    msg_guest_prefix(%rip), %rsi
        call    puts
        movq    blk_label(%rip), %rsi
        jmp     puts

/* blk_fill_pattern: byte i (0..511) of sector s (0..63) of the write
 * buffer [BLK_DATA, BLK_DATA + 32 KiB) = (s * 31 + i * 7) & 0xff. */
blk_fill_pattern:
        movl    $BLK_DATA, %edi
        xorl    %ecx, %ecx
1:      movl    %ecx, %eax                      /* s = offset >> 9 */
        shrl    $9, %eax
        imull   $31, %eax, %eax
        movl    %ecx, %edx                      /* i = offset & 511 */
        andl    $511, %edx
        imull   $7, %edx, %edx
        addl    %edx, %eax
        movb    %al, (%rdi, %rcx)
        incl    %ecx
        cmpl    $BLK_PATTERN_BYTES, %ecx
        jb      1b
        ret

/* blk_zero_readbuf: zeroes the read buffer [BLK_READ, BLK_READ + 32 KiB). */
blk_zero_readbuf:
        movl    $BLK_READ, %edi
        movl    $(BLK_PATTERN_BYTES / 8), %ecx
        xorl    %eax, %eax
        cld
        rep stosq
        ret

/* blk_write_flush: writes the write buffer to sectors 0..63, then FLUSH if
 * negotiated. Sets blk_st_write and blk_st_flush (-1: FLUSH not offered). */
blk_write_flush:
        movl    $BLK_T_OUT, %esi                /* write sectors 0..63 */
        xorl    %edx, %edx
        movl    $BLK_DATA, %ecx
        movl    $BLK_PATTERN_BYTES, %r8d
        call    blk_sync
        movl    %eax, blk_st_write(%rip)
        movl    $-1, blk_st_flush(%rip)         /* flush, if negotiated */
        testl   $F_FLUSH, blk_features(%rip)
        jz      1f
        movl    $BLK_T_FLUSH, %esi
        xorl    %edx, %edx
        xorl    %ecx, %ecx
        xorl    %r8d, %r8d
        call    blk_sync
        movl    %eax, blk_st_flush(%rip)
1:      ret

/* blk_read_back: reads sectors 0..63 into the read buffer; sets
 * blk_st_read. */
blk_read_back:
        movl    $BLK_T_IN, %esi
        xorl    %edx, %edx
        movl    $BLK_READ, %ecx
        movl    $BLK_PATTERN_BYTES, %r8d
        call    blk_sync
        movl    %eax, blk_st_read(%rip)
        ret

/* blk_finish: compares the two buffers, prints "parvm-guest: <label>
 * write=<n> flush=<n|none> read=<n> match=<yes|no> fnv1a64=<hash of the
 * read buffer>" and powers off. */
blk_finish:
        movl    $BLK_DATA, %esi                 /* compare */
        movl    $BLK_READ, %edi
        movl    $BLK_PATTERN_BYTES, %ecx
        cld
        repe cmpsb
        setz    %r15b
        movzbl  %r15b, %r15d

        call    blk_put_label
        leaq    msg_blk_write(%rip), %rsi
        movl    blk_st_write(%rip), %eax
        call    puts_dec_then
        leaq    msg_blk_flush(%rip), %rsi
        call    puts
        cmpl    $-1, blk_st_flush(%rip)
        jne     4f
        leaq    msg_blk_none(%rip), %rsi        /* FLUSH not offered */
        call    puts
        jmp     5f
4:      movl    blk_st_flush(%rip), %eax
        call    put_dec
5:
        leaq    msg_blk_read(%rip), %rsi
        movl    blk_st_read(%rip), %eax
        call    puts_dec_then
        leaq    msg_blk_match_yes(%rip), %rsi
        testl   %r15d, %r15d
        jnz     2f
        leaq    msg_blk_match_no(%rip), %rsi
2:      call    puts
        leaq    msg_fnv(%rip), %rsi
        call    puts
        movl    $BLK_READ, %esi
        movl    $BLK_PATTERN_BYTES, %ecx
        call    fnv1a64_buf
        call    put_hex16
        movb    $'\n', %al
        call    putc
        jmp     poweroff

/* ----------------------------------------------------------------------
 * parvm.test=blkbench [parvm.bench=<reads>] [parvm.benchmib=<MiB>]
 * ---------------------------------------------------------------------- */
blk_bench:
        call    blk_find
        testl   %eax, %eax
        jz      poweroff
        call    blk_room
        testl   %eax, %eax
        jz      poweroff
        call    blk_init
        testl   %eax, %eax
        jz      poweroff
        call    blk_hello

        leaq    tok_bench(%rip), %rsi
        movl    $BLK_BENCH_READS, %eax
        call    cmdline_num
        movq    %rax, %r12                      /* r12 = random reads */
        leaq    tok_benchmib(%rip), %rsi
        movl    $BLK_BENCH_MIB, %eax
        call    cmdline_num
        movq    %rax, %r13                      /* r13 = MiB per sequential phase */
        movabsq $0x2545f4914f6cdd1d, %rax       /* LCG seed */
        movq    %rax, blk_lcg(%rip)

        /* random 4 KiB reads over the whole disk (4 KiB blocks) */
        movq    blk_capacity(%rip), %rax
        shrq    $3, %rax
        testq   %rax, %rax
        jz      8f
        movq    %rax, bp_span(%rip)
        movl    $0, bp_mode(%rip)
        movl    $BLK_T_IN, bp_type(%rip)
        movq    %r12, bp_total(%rip)
        movl    blk_qsize(%rip), %eax
        xorl    %edx, %edx
        movl    $3, %ecx
        divl    %ecx
        cmpl    $BLK_RAND_DEPTH, %eax
        jbe     1f
        movl    $BLK_RAND_DEPTH, %eax
1:      movl    %eax, bp_depth(%rip)
        movq    $4096, bp_reqbytes(%rip)
        movq    $0, bp_segsize(%rip)
        leaq    msg_phase_randread(%rip), %rbx
        movq    %r12, %r14                      /* ops */
        call    blk_phase

        /* sequential 1 MiB reads, then writes, wrapping over the disk */
        movq    blk_capacity(%rip), %rax
        shrq    $11, %rax                       /* whole MiB */
        testq   %rax, %rax
        jz      9f
        shlq    $20, %rax
        movq    %rax, bp_span(%rip)
        movl    $1, bp_mode(%rip)
        /* request size: 128 segments of 4 KiB (fewer if seg_max is
         * smaller: a power of two, so that 1 MiB is whole requests) in an
         * indirect table; one 512 KiB descriptor without indirect support */
        movq    $(BLK_SEQ_SEGS * 4096), %rax
        movq    $0, bp_segsize(%rip)
        testl   $F_INDIRECT, blk_features(%rip)
        jz      3f
        movq    $4096, bp_segsize(%rip)
        movl    blk_segmax(%rip), %ecx
        cmpl    $BLK_SEQ_SEGS, %ecx
        jae     3f
        bsrl    %ecx, %ecx
        movl    $4096, %eax
        shlq    %cl, %rax
3:      movq    %rax, bp_reqbytes(%rip)
        movq    %r13, %rax                      /* requests = MiB * (1 MiB / size) */
        shlq    $20, %rax
        xorl    %edx, %edx
        divq    bp_reqbytes(%rip)
        movq    %rax, bp_total(%rip)
        movl    blk_qsize(%rip), %eax
        xorl    %edx, %edx
        movl    $3, %ecx
        divl    %ecx
        cmpl    $BLK_SEQ_DEPTH, %eax
        jbe     4f
        movl    $BLK_SEQ_DEPTH, %eax
4:      movl    %eax, bp_depth(%rip)
        movq    %r13, %r14                      /* ops = MiB */
        movl    $BLK_T_IN, bp_type(%rip)
        leaq    msg_phase_seqread(%rip), %rbx
        call    blk_phase
        movl    $BLK_T_OUT, bp_type(%rip)
        leaq    msg_phase_seqwrite(%rip), %rbx
        call    blk_phase
        jmp     poweroff

8:      leaq    msg_blkbench_small(%rip), %rsi
        call    puts
        jmp     poweroff
9:      leaq    msg_blkbench_noseq(%rip), %rsi
        call    puts
        jmp     poweroff

/* blk_phase: rbx = phase name, r14 = ops to report; the bp_* variables
 * describe the requests. Prints "blkbench start <name>", runs the
 * pipeline, prints "blkbench done <name> ops=<n> bytes=<n> errors=<n>
 * kicks=<n>". Preserves rbx, r12-r15. */
blk_phase:
        leaq    msg_blkbench_start(%rip), %rsi
        call    puts
        movq    %rbx, %rsi
        call    puts
        movb    $'\n', %al
        call    putc
        call    blk_pipeline
        leaq    msg_blkbench_done(%rip), %rsi
        call    puts
        movq    %rbx, %rsi
        call    puts
        leaq    msg_ops(%rip), %rsi
        movq    %r14, %rax
        call    puts_dec_then
        leaq    msg_bytes(%rip), %rsi
        movq    bp_total(%rip), %rax
        mulq    bp_reqbytes(%rip)
        call    puts_dec_then
        leaq    msg_errors(%rip), %rsi
        movq    bp_errors(%rip), %rax
        call    puts_dec_then
        leaq    msg_kicks(%rip), %rsi
        movq    blk_kicks(%rip), %rax
        call    print_line_dec
        ret

/* blk_pipeline: bp_total requests, at most bp_depth in flight: fill every
 * slot, notify once, then for each completion refill its slot, notifying
 * only when no further completion is already waiting. Counts failed
 * requests (status != 0) in bp_errors and notifications in blk_kicks. */
blk_pipeline:
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        pushq   %r14
        xorl    %r12d, %r12d                    /* r12 = issued */
        xorl    %r13d, %r13d                    /* r13 = completed */
        xorl    %r14d, %r14d                    /* r14 = notification owed */
        movq    $0, bp_errors(%rip)
        movq    $0, blk_kicks(%rip)
        xorl    %ebx, %ebx
1:      cmpl    bp_depth(%rip), %ebx            /* fill the slots */
        jae     2f
        cmpq    bp_total(%rip), %r12
        jae     2f
        movl    %ebx, %edi
        movq    %r12, %rsi
        call    blk_issue
        incq    %r12
        incl    %ebx
        jmp     1b
2:      call    blk_kick
3:      cmpq    bp_total(%rip), %r13
        jae     9f
        call    blk_wait
        cmpl    bp_depth(%rip), %eax            /* -1 or a slot we do not use */
        jae     blk_timeout
        movl    %eax, %ebx
        leaq    blk_status(%rip), %rcx
        cmpb    $0, (%rcx, %rbx)
        je      4f
        incq    bp_errors(%rip)
4:      incq    %r13
        cmpq    bp_total(%rip), %r12
        jae     5f
        movl    %ebx, %edi
        movq    %r12, %rsi
        call    blk_issue
        incq    %r12
        movl    $1, %r14d
5:      movl    blk_used_last(%rip), %eax       /* more completions waiting? */
        cmpw    vq_used + 2(%rip), %ax
        jne     3b
        testl   %r14d, %r14d
        jz      3b
        call    blk_kick
        xorl    %r14d, %r14d
        jmp     3b
9:      popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbx
        ret

/* blk_issue: edi = slot, rsi = request number. Submits request number rsi
 * of the phase in that slot: random mode (bp_mode 0): a 4 KiB block chosen
 * by the LCG among bp_span blocks, into BLK_DATA + slot * 4 KiB; sequential
 * mode: bytes [n * size, (n + 1) * size) modulo bp_span, buffer BLK_DATA +
 * (n * size) % 1 MiB. */
blk_issue:
        cmpl    $0, bp_mode(%rip)
        jne     1f
        movq    blk_lcg(%rip), %rax             /* Knuth's MMIX LCG */
        movabsq $6364136223846793005, %rcx
        imulq   %rcx, %rax
        movabsq $1442695040888963407, %rcx
        addq    %rcx, %rax
        movq    %rax, blk_lcg(%rip)
        shrq    $16, %rax                       /* the high bits are the good ones */
        xorl    %edx, %edx
        divq    bp_span(%rip)
        shlq    $3, %rdx                        /* block -> sector */
        movl    %edi, %ecx
        shll    $12, %ecx
        movl    $BLK_DATA, %eax
        addq    %rax, %rcx
        movl    $4096, %r8d
        xorl    %r9d, %r9d
        movl    bp_type(%rip), %esi
        jmp     blk_submit
1:      movq    %rsi, %rax
        mulq    bp_reqbytes(%rip)
        movq    %rax, %r8
        xorl    %edx, %edx
        divq    bp_span(%rip)
        shrq    $9, %rdx                        /* sector */
        movl    %r8d, %ecx
        andl    $0xfffff, %ecx
        movl    $BLK_DATA, %eax
        addq    %rax, %rcx
        movq    bp_reqbytes(%rip), %r8
        movq    bp_segsize(%rip), %r9
        movl    bp_type(%rip), %esi
        jmp     blk_submit

/* ----------------------------------------------------------------------
 * Driver data.
 * ---------------------------------------------------------------------- */
        .balign 8
blk_base:       .quad 0         /* MMIO base of the device */
blk_capacity:   .quad 0         /* sectors */
blk_kicks:      .quad 0         /* QueueNotify writes in this phase */
blk_lcg:        .quad 0
blk_label:      .quad msg_blk_label     /* test name in the result lines */
blk_st_write:   .long 0                 /* parvm.test=blk statuses */
blk_st_flush:   .long 0
blk_st_read:    .long 0
blk_features:   .long 0         /* accepted feature bits 0-31 */
blk_segmax:     .long 0
blk_qsize:      .long 0         /* queue size in use (power of two) */
blk_avail_idx:  .long 0         /* next available index (low 16 bits used) */
blk_used_last:  .long 0         /* used entries consumed */
bp_mode:        .long 0         /* 0 random 4 KiB, 1 sequential */
bp_type:        .long 0
bp_depth:       .long 0
bp_total:       .quad 0         /* requests */
bp_reqbytes:    .quad 0
bp_segsize:     .quad 0         /* 0 direct, else indirect segment size */
bp_span:        .quad 0         /* random: 4 KiB blocks; sequential: bytes */
bp_errors:      .quad 0

tok_virtio_mmio:   .asciz "virtio_mmio.device="
msg_guest_prefix:  .asciz "parvm-guest: "
msg_blk_label:     .asciz "blk"
msg_blkswap_label: .asciz "blkswap"
msg_blkswap_swept: .asciz "parvm-guest: blkswap swept="
msg_blkswap_small: .asciz "parvm-guest: blkswap needs at least 16 MiB of RAM\n"
tok_bench:         .asciz "parvm.bench="
tok_benchmib:      .asciz "parvm.benchmib="
msg_blk_nodev:     .asciz "parvm-guest: blk no virtio_mmio.device= on the command line\n"
msg_blk_noroom:    .asciz "parvm-guest: blk no room for the data buffer at 2 MiB (too little RAM, or the initrd is there)\n"
msg_blk_badarg:    .asciz "parvm-guest: blk bad virtio_mmio.device= on the command line\n"
msg_blk_notblk:    .asciz "parvm-guest: blk no virtio-mmio v2 block device at 0x"
msg_blk_magic:     .asciz " magic=0x"
msg_blk_version:   .asciz " version="
msg_blk_devid:     .asciz " device="
msg_blk_initfail:  .asciz "parvm-guest: blk init failed: "
msg_blk_status:    .asciz " status=0x"
msg_blkf_reset:    .asciz "reset not acknowledged"
msg_blkf_version:  .asciz "no VIRTIO_F_VERSION_1"
msg_blkf_features: .asciz "FEATURES_OK refused"
msg_blkf_queue:    .asciz "queue 0 unusable"
msg_blkf_driver_ok: .asciz "DRIVER_OK refused"
msg_blk_timeout:   .asciz "parvm-guest: blk timeout: no answer from the device (used="
msg_blk_timeout2:  .asciz " avail="
msg_blk_capacity:  .asciz " capacity="
msg_blk_ro:        .asciz " ro="
msg_blk_serial:    .asciz " serial="
msg_blk_idstatus:  .asciz "(status "
msg_blk_write:     .asciz " write="
msg_blk_flush:     .asciz " flush="
msg_blk_none:      .asciz "none"
msg_blk_read:      .asciz " read="
msg_blk_match_yes: .asciz " match=yes"
msg_blk_match_no:  .asciz " match=no"
msg_blkbench_start: .asciz "parvm-guest: blkbench start "
msg_blkbench_done: .asciz "parvm-guest: blkbench done "
msg_blkbench_small: .asciz "parvm-guest: blkbench disk too small\n"
msg_blkbench_noseq: .asciz "parvm-guest: blkbench no sequential phases (disk < 1 MiB)\n"
msg_phase_randread: .asciz "randread"
msg_phase_seqread: .asciz "seqread"
msg_phase_seqwrite: .asciz "seqwrite"
msg_ops:           .asciz " ops="
msg_bytes:         .asciz " bytes="
msg_errors:        .asciz " errors="
msg_kicks:         .asciz " kicks="

/* Driver memory, not in the image file: the split virtqueue (descriptor
 * table, available ring, used ring: one page each, up to 256 entries), one
 * header and status byte per slot, the indirect tables of the sequential
 * benchmark and the GET_ID buffer. The 1 MiB data buffer is not part of the
 * kernel image: it is the RAM at BLK_DATA (2 MiB), checked by blk_room, so
 * that the kernel still fits a 2 MiB guest. */
        .pushsection .kernel.bss, "aw", @nobits
        .balign 4096
vq_desc:        .skip 4096
vq_avail:       .skip 4096
vq_used:        .skip 4096
blk_ind:        .skip BLK_SEQ_DEPTH * 4096
blk_hdrs:       .skip BLK_MAX_SLOTS * 16
blk_status:     .skip BLK_MAX_SLOTS
blk_idbuf:      .skip 32
        .popsection
