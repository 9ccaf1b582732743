//! The PVH entry point.
//!
//! QEMU's and Xen's PVH loaders jump to the address in the `XEN_ELFNOTE_PHYS32_ENTRY` note in
//! 32-bit protected mode with paging off and `ebx` pointing at `hvm_start_info`. The stub below
//! reads the TSC first (the boot-time origin), clears `.bss`, identity-maps the first 4 GiB with
//! 2 MiB pages (the 3..4 GiB MMIO hole uncached), enters long mode and calls `rt_start` with the
//! start-info address and the entry TSC. Control registers are written with computed constants,
//! never read-modify-written: nested Xen under QEMU TCG returns stale values for some CR reads.

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                 /* namesz: "Xen\0" */
    .long 4                 /* descsz */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .long pvh_start32
    .balign 4

    .section .bss.rt_boot, "aw", @nobits
    .balign 4096
    .global rt_pml4
rt_pml4:
    .skip 4096
    .global rt_pdpt
rt_pdpt:
    .skip 4096
    .global rt_pd
rt_pd:
    .skip 4096 * 4
    .balign 4096
    .global rt_stack_guard
rt_stack_guard:                 /* unmapped once paging is refined: catches stack overflow */
    .skip 4096
rt_boot_stack:
    .skip 262144
rt_boot_stack_top:

    .section .rodata.rt_boot, "a", @progbits
    .balign 16
rt_boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff  /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff  /* 0x10: flat data */
rt_boot_gdt_ptr:
    .word rt_boot_gdt_ptr - rt_boot_gdt - 1
    .long rt_boot_gdt

    .section .text.boot, "ax", @progbits
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    rdtsc                       /* the first instruction that counts: boot-time origin */
    mov %eax, %ebp
    mov %edx, %esi

    /* Clear .bss: loaders zero it too, but the page tables below must start empty. */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    /* 2048 x 2 MiB pages: identity map of [0, 4 GiB); 3..4 GiB (MMIO) with PCD|PWT. */
    mov $rt_pd, %edi
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax              /* present | writable | 2 MiB page */
    cmp $1536, %ecx
    jb 2f
    or $0x18, %eax              /* PWT | PCD */
2:  mov %eax, (%edi, %ecx, 8)
    movl $0, 4(%edi, %ecx, 8)
    inc %ecx
    cmp $2048, %ecx
    jb 1b

    mov $rt_pd + 3, %eax
    mov %eax, (rt_pdpt)
    add $4096, %eax
    mov %eax, (rt_pdpt + 8)
    add $4096, %eax
    mov %eax, (rt_pdpt + 16)
    add $4096, %eax
    mov %eax, (rt_pdpt + 24)
    mov $rt_pdpt + 3, %eax
    mov %eax, (rt_pml4)

    mov $0x20, %eax             /* CR4 = PAE */
    mov %eax, %cr4
    mov $rt_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx       /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov $0x80010031, %eax       /* CR0 = PG | WP | NE | ET | PE */
    mov %eax, %cr0

    lgdt (rt_boot_gdt_ptr)
    ljmp $0x08, $rt_long_mode

    .code64
rt_long_mode:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov $rt_boot_stack_top, %rsp
    movl %ebx, %edi             /* arg 0: hvm_start_info physical address */
    movl %ebp, %ebp
    movl %esi, %esi
    shl $32, %rsi
    or %rbp, %rsi               /* arg 1: TSC at entry */
    xor %ebp, %ebp
    call rt_start
    ud2

    .text
"#,
    options(att_syntax)
);
