/*
 * pvh-note.S - the PVH ELF note, linked into tiny.elf only.
 *
 * XEN_ELFNOTE_PHYS32_ENTRY (type 18), name "Xen": the 32-bit physical
 * address of the PVH entry point. A VMM that finds it (linux-loader's Elf
 * loader, QEMU, Cloud Hypervisor, parvm's vmm) enters there in 32-bit
 * protected mode with paging off and ebx = hvm_start_info. The note is
 * 4-byte aligned, so readers that look at p_align (QEMU) read a 32-bit
 * descriptor.
 */
        .section .note.GNU-stack, "", @progbits

        .section .note.Xen, "a", @note
        .balign 4
        .long   4                       /* n_namesz: "Xen\0" */
        .long   4                       /* n_descsz: 32-bit address */
        .long   18                      /* n_type: XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz  "Xen"
        .balign 4
        .long   pvh_entry               /* defined in tiny.S (0x100000) */
