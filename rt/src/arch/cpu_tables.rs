//! GDT, TSS (with an IST stack for double faults and NMIs), IDT and the interrupt entry stubs.
//!
//! Every vector 0..128 and 255 has a stub that pushes a uniform frame ([`TrapFrame`]) and calls
//! `rt_trap`, which hands exceptions to `crate::trap::exception` and interrupts to
//! `crate::trap::interrupt`.

use core::cell::UnsafeCell;
use core::mem::size_of;

/// Number of vectors with a stub, besides 255.
pub const STUB_VECTORS: usize = 128;

/// The registers saved on entry, in stack order.
#[repr(C)]
#[derive(Debug)]
#[allow(missing_docs)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

core::arch::global_asm!(include_str!("isr.s"), options(att_syntax));

unsafe extern "C" {
    static rt_isr_table: [u64; STUB_VECTORS + 1];
}

#[unsafe(no_mangle)]
extern "C" fn rt_trap(frame: &mut TrapFrame) {
    if frame.vector < 32 {
        crate::trap::exception(frame);
    } else {
        crate::trap::interrupt(frame.vector as u8);
    }
}

#[repr(C, packed(4))]
struct Tss {
    _reserved0: u32,
    rsp: [u64; 3],
    _reserved1: u64,
    ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    iomap_base: u16,
}

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct IdtEntry {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    _zero: u32,
}

#[repr(C, align(16))]
struct Stack([u8; 16384]);

#[repr(C)] // gdt at 0, tss at 40, idt at 144: every table 8-byte aligned (the watchdog reads words)
struct Tables {
    gdt: UnsafeCell<[u64; 5]>,
    tss: UnsafeCell<Tss>,
    idt: UnsafeCell<[IdtEntry; 256]>,
}

/// The stack double faults, NMIs and machine checks run on (all zero: lives in `.bss`).
struct IstStack(UnsafeCell<Stack>);

// SAFETY: only the CPU uses this memory, as a stack, when it delivers an IST exception.
unsafe impl Sync for IstStack {}

static IST_STACK: IstStack = IstStack(UnsafeCell::new(Stack([0; 16384])));

// SAFETY: the tables are written once, by `init`, on the boot CPU before interrupts are enabled;
// afterwards only the CPU reads them (and sets the TSS busy bit).
unsafe impl Sync for Tables {}

static TABLES: Tables = Tables {
    gdt: UnsafeCell::new([0; 5]),
    tss: UnsafeCell::new(Tss {
        _reserved0: 0,
        rsp: [0; 3],
        _reserved1: 0,
        ist: [0; 7],
        _reserved2: 0,
        _reserved3: 0,
        iomap_base: size_of::<Tss>() as u16,
    }),
    idt: UnsafeCell::new(
        [IdtEntry { offset_low: 0, selector: 0, ist: 0, type_attr: 0, offset_mid: 0, offset_high: 0, _zero: 0 };
            256],
    ),
};

#[repr(C, packed(2))]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

const KERNEL_CS: u16 = 0x08;
const KERNEL_DS: u16 = 0x10;
const TSS_SEL: u16 = 0x18;

/// Builds and loads the GDT (with TSS) and the IDT.
///
/// # Safety
/// Call once, on the boot CPU, with interrupts disabled.
pub unsafe fn init() {
    let tss_addr = TABLES.tss.get() as u64;
    let ist_top = IST_STACK.0.get() as u64 + size_of::<Stack>() as u64;
    // SAFETY: single-threaded early boot (the caller's contract): nothing else references the
    // tables yet, so these exclusive writes cannot race.
    unsafe {
        (*TABLES.tss.get()).ist[0] = ist_top;
        let limit = size_of::<Tss>() as u64 - 1;
        let low = (limit & 0xffff)
            | ((tss_addr & 0xff_ffff) << 16)
            | (0x89 << 40) // present, 64-bit TSS (available)
            | (((limit >> 16) & 0xf) << 48)
            | (((tss_addr >> 24) & 0xff) << 56);
        *TABLES.gdt.get() = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff, low, tss_addr >> 32];

        let idt = &mut *TABLES.idt.get();
        for (i, &handler) in rt_isr_table.iter().enumerate() {
            let vector = if i == STUB_VECTORS { 255 } else { i };
            // Double fault (8), NMI (2) and machine check (18) run on the IST stack.
            let ist = u8::from(matches!(vector, 2 | 8 | 18));
            idt[vector] = IdtEntry {
                offset_low: handler as u16,
                selector: KERNEL_CS,
                ist,
                type_attr: 0x8e, // present, DPL 0, 64-bit interrupt gate
                offset_mid: (handler >> 16) as u16,
                offset_high: (handler >> 32) as u32,
                _zero: 0,
            };
        }

        let gdt_ptr = DescriptorPointer { limit: (5 * 8 - 1) as u16, base: TABLES.gdt.get() as u64 };
        let idt_ptr = DescriptorPointer { limit: (256 * 16 - 1) as u16, base: TABLES.idt.get() as u64 };
        core::arch::asm!(
            "lgdt [{gdt}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ss, {ds:x}",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "ltr {tss:x}",
            "lidt [{idt}]",
            gdt = in(reg) &gdt_ptr,
            idt = in(reg) &idt_ptr,
            cs = const KERNEL_CS as u64,
            ds = in(reg) u64::from(KERNEL_DS),
            tss = in(reg) u64::from(TSS_SEL),
            tmp = out(reg) _,
        );
    }
}

const _: () = assert!(core::mem::offset_of!(Tables, tss).is_multiple_of(8) && size_of::<Tss>().is_multiple_of(8));

/// The GDT, TSS and IDT as (name, first word, length in words), for the integrity watchdog.
/// Final once [`init`] ran (the TSS descriptor's busy bit is set by its `ltr`).
pub fn regions() -> [(&'static str, *const u64, usize); 3] {
    [
        ("gdt", TABLES.gdt.get().cast::<u64>().cast_const(), 5),
        ("tss", TABLES.tss.get().cast::<u64>().cast_const(), size_of::<Tss>() / 8),
        ("idt", TABLES.idt.get().cast::<u64>().cast_const(), 256 * 2),
    ]
}
