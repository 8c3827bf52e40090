/*
 * bzsetup.S - boot sector, setup header and real-mode setup code of
 * tiny.bzImage (Linux/x86 boot protocol, Documentation/arch/x86/boot.rst).
 *
 * tiny.bzImage = this 2 KiB setup (SETUP_SECTS + 1 sectors) followed by the
 * flat tiny kernel linked at 0x100000 (see bzimage.ld). The kernel's offset
 * 0x200 is its 64-bit entry, like Linux's startup_64.
 *
 * Two ways in:
 *
 *  1. A 64-bit loader (linux-loader's BzImage + parvm's vmm, Cloud
 *     Hypervisor, Firecracker) reads the header below, loads the kernel part
 *     at code32_start (1 MiB) and enters it at +0x200 in long mode with rsi =
 *     boot_params. This file's code never runs.
 *
 *  2. A 16-bit loader (QEMU -kernel with SeaBIOS/qboot, GRUB's "linux16")
 *     loads this setup below 1 MiB, fills in cmd_line_ptr/ramdisk_* in the
 *     header, and jumps to setup offset 0x200 in real mode with CS = setup
 *     segment + 0x20. The code below then does what a 64-bit loader would:
 *     builds a zero page at ZP (header copied in, e820 from BIOS int 0x15),
 *     builds a temporary identity map of the first 1 GiB, switches straight
 *     from real mode to long mode and jumps to code32_start + 0x200 with
 *     rsi = ZP. This is how the bzImage (and the guest's linux64 path) is
 *     tested under QEMU; the RSDP is then found by the guest's BIOS-area scan.
 *
 * All addresses in .setup are offsets from the start of the image (the
 * section is linked at 0); at run time the code runs with CS = DS = the
 * setup segment, so 16-bit offsets work unchanged. Linear addresses needed
 * in protected/long mode are computed at run time from DS.
 */
        .set SETUP_SECTS, 3             /* setup = (3 + 1) * 512 = 2 KiB */
        .set ZP,  0x1000                /* zero page built here (4 KiB) */
        .set PT,  0x2000                /* PML4 0x2000, PDPT 0x3000, PD 0x4000 */
        .set HDR_START, 0x1f1
        .set HDR_END,   0x268           /* end of the 2.12 setup header */

        .section .note.GNU-stack, "", @progbits

        .section .setup, "awx", @progbits
        .code16
bootsect:
        /* Not a boot sector: if a BIOS boots this image directly, stop. */
        cli
1:      hlt
        jmp     1b

        /* ---- setup header (offsets are the boot protocol's) ---- */
        .org    0x1f1
setup_sects:    .byte   SETUP_SECTS
root_flags:     .short  0
syssize:        .long   _syssize        /* kernel part in 16-byte units (bzimage.ld) */
ram_size:       .short  0
vid_mode:       .short  0xffff          /* NORMAL_VGA */
root_dev:       .short  0
boot_flag:      .short  0xaa55
        .org    0x200
jump:           .byte   0xeb, start_of_setup - 1f   /* jmp short start_of_setup */
1:
header:         .ascii  "HdrS"          /* 0x202 magic */
version:        .short  0x020c          /* 0x206 boot protocol 2.12 */
realmode_swtch: .long   0               /* 0x208 */
start_sys_seg:  .short  0x1000          /* 0x20c (obsolete) */
kernel_version: .short  version_str - 0x200  /* 0x20e */
type_of_loader: .byte   0               /* 0x210 */
loadflags:      .byte   0x01            /* 0x211 LOADED_HIGH: kernel at 1 MiB */
setup_move_size: .short 0x8000          /* 0x212 */
code32_start:   .long   0x100000        /* 0x214 load address of the kernel */
ramdisk_image:  .long   0               /* 0x218 filled by the loader */
ramdisk_size:   .long   0               /* 0x21c filled by the loader */
bootsect_kludge: .long  0               /* 0x220 */
heap_end_ptr:   .short  0               /* 0x224 */
ext_loader_ver: .byte   0               /* 0x226 */
ext_loader_type: .byte  0               /* 0x227 */
cmd_line_ptr:   .long   0               /* 0x228 filled by the loader */
initrd_addr_max: .long  0x7fffffff      /* 0x22c */
kernel_alignment: .long 0x100000        /* 0x230 */
relocatable_kernel: .byte 0             /* 0x234 no: must run at 1 MiB */
min_alignment:  .byte   12              /* 0x235 */
xloadflags:     .short  0x0001          /* 0x236 XLF_KERNEL_64: entry at +0x200 */
cmdline_size:   .long   4095            /* 0x238 */
hardware_subarch: .long 0               /* 0x23c */
hardware_subarch_data: .quad 0          /* 0x240 */
payload_offset: .long   0               /* 0x248 */
payload_length: .long   0               /* 0x24c */
setup_data:     .quad   0               /* 0x250 */
pref_address:   .quad   0x100000        /* 0x258 */
init_size:      .long   _init_size      /* 0x260 memory needed at 1 MiB (bzimage.ld) */
handover_offset: .long  0               /* 0x264 no EFI handover */
        .org    HDR_END

/* ---- real-mode setup (only for 16-bit loaders, see above) ---- */
start_of_setup:
        cli
        cld
        movw    %cs, %ax                /* CS = setup segment + 0x20 */
        subw    $0x20, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $0x8000, %sp            /* well above this 2 KiB setup */
        pushw   %ax                     /* normalise CS to the setup segment */
        pushw   $2f
        lretw
2:
        inb     $0x92, %al              /* fast A20 gate on (no reset) */
        orb     $0x02, %al
        andb    $0xfe, %al
        outb    %al, $0x92

        /* Zero page at ZP: cleared, then the setup header (as filled in by
         * the loader) copied to its boot_params offset 0x1f1. */
        movw    $(ZP >> 4), %ax
        movw    %ax, %es
        xorw    %di, %di
        xorw    %ax, %ax
        movw    $2048, %cx
        rep stosw
        movw    $HDR_START, %si
        movw    %si, %di
        movw    $(HDR_END - HDR_START), %cx
        rep movsb

        /* e820 table from the BIOS: int 0x15, eax=0xe820, 20-byte entries
         * at boot_params+0x2d0, count at +0x1e8 (at most 128). The buffer is
         * ES:DI, but DS is set to the same segment too: qboot (QEMU microvm's
         * firmware) writes the entry through DS:DI, which otherwise lands on
         * this very code. (qboot's e820 still fails the "SMAP" check in QEMU
         * 7.2, so microvm + bzImage reports mem=0MiB; PVH is microvm's way.) */
        pushw   %ds
        movw    %es, %ax
        movw    %ax, %ds
        xorl    %ebx, %ebx
        movw    $0x2d0, %di
        xorw    %bp, %bp
3:      movl    $0xe820, %eax
        movl    $20, %ecx
        movl    $0x534d4150, %edx       /* "SMAP" */
        int     $0x15
        jc      4f
        cmpl    $0x534d4150, %eax
        jne     4f
        incw    %bp
        addw    $20, %di
        testl   %ebx, %ebx
        jz      4f
        cmpw    $128, %bp
        jb      3b
4:      movw    %bp, %ax
        movb    %al, %es:0x1e8
        popw    %ds

        /* Temporary page tables: identity map of the first 1 GiB with
         * 2 MiB pages (the kernel switches to its own right away). */
        movw    $(PT >> 4), %ax
        movw    %ax, %es
        xorw    %di, %di
        xorw    %ax, %ax
        movw    $(3 * 4096 / 2), %cx
        rep stosw
        movl    $(PT + 0x1000 + 0x7), %es:0        /* PML4[0] -> PDPT */
        movl    $(PT + 0x2000 + 0x7), %es:0x1000   /* PDPT[0] -> PD */
        movw    $0x2000, %di
        movl    $0x87, %eax                        /* present|rw|user|2M */
        movw    $512, %cx
5:      movl    %eax, %es:(%di)
        addl    $0x200000, %eax
        addw    $8, %di
        loop    5b

        /* Linear addresses of our GDT and of stub64: setup base + offset. */
        xorl    %eax, %eax
        movw    %ds, %ax
        shll    $4, %eax
        movl    %eax, %edx
        addl    $gdt, %eax
        movl    %eax, gdtr + 2
        addl    $stub64, %edx
        movl    %edx, farptr

        /* Real mode -> long mode in one step: PAE, CR3, EFER.LME, then
         * CR0.PE|PG together, then a far jump into a 64-bit segment. */
        lgdtl   gdtr
        movl    $0x20, %eax             /* CR4.PAE */
        movl    %eax, %cr4
        movl    $PT, %eax
        movl    %eax, %cr3
        movl    $0xc0000080, %ecx       /* EFER.LME */
        rdmsr
        orl     $0x100, %eax
        wrmsr
        movl    %cr0, %eax
        orl     $0x80000001, %eax       /* PG | PE */
        movl    %eax, %cr0
        ljmpl   *farptr

        .code64
stub64:
        /* Position-independent: runs at setup base + stub64. */
        movl    $0x10, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        movl    $ZP, %esi                       /* rsi = boot_params */
        movl    ZP + 0x214, %eax                /* code32_start (as loaded) */
        addl    $0x200, %eax                    /* + 0x200 = startup_64 */
        jmp     *%rax

        .balign 8
gdt:    .quad   0
        .quad   0x00af9a000000ffff              /* 0x08 64-bit code */
        .quad   0x00cf92000000ffff              /* 0x10 data */
gdt_end:
gdtr:   .short  gdt_end - gdt - 1
        .long   0                               /* patched: linear gdt */
farptr: .long   0                               /* patched: linear stub64 */
        .short  0x08

version_str:
        .asciz  "parvm-tiny-guest (parvm tests/guests)"

        .org    (SETUP_SECTS + 1) * 512         /* pad; errors if too big */
