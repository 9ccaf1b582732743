//! The local APIC (xAPIC, memory-mapped at the address in `IA32_APIC_BASE`): enable, EOI,
//! one-shot timer, self-IPI.

use core::sync::atomic::{AtomicU64, Ordering};

const IA32_APIC_BASE: u32 = 0x1b;
const REG_ID: usize = 0x20;
const REG_TPR: usize = 0x80;
const REG_EOI: usize = 0xb0;
const REG_SVR: usize = 0xf0;
const REG_ICR_LOW: usize = 0x300;
const REG_ICR_HIGH: usize = 0x310;
const REG_LVT_TIMER: usize = 0x320;
const REG_TIMER_INIT: usize = 0x380;
const REG_TIMER_CURRENT: usize = 0x390;
const REG_TIMER_DIVIDE: usize = 0x3e0;

/// Vector of the APIC timer.
pub const TIMER_VECTOR: u8 = 48;
/// Spurious-interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 255;

static BASE: AtomicU64 = AtomicU64::new(0xfee0_0000);

fn reg(offset: usize) -> *mut u32 {
    (BASE.load(Ordering::Relaxed) as usize + offset) as *mut u32
}

fn read(offset: usize) -> u32 {
    // SAFETY: `BASE` is the APIC's MMIO page, identity-mapped uncached by the boot page tables
    // (it lies in the 3..4 GiB hole); APIC registers are 32-bit and 16-byte aligned.
    unsafe { reg(offset).read_volatile() }
}

fn write(offset: usize, value: u32) {
    // SAFETY: as for `read`.
    unsafe { reg(offset).write_volatile(value) }
}

/// Enables the local APIC with all LVTs masked but the timer (masked until armed).
pub fn init() {
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU with an APIC (all of them).
    let base = unsafe { super::rdmsr(IA32_APIC_BASE) } & 0xf_ffff_f000;
    if base != 0 && base < (1 << 32) {
        BASE.store(base, Ordering::Relaxed);
    }
    write(REG_TPR, 0);
    write(REG_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
    write(REG_TIMER_DIVIDE, 0b1011); // divide by 1
    write(REG_LVT_TIMER, (1 << 16) | u32::from(TIMER_VECTOR)); // masked, one-shot
}

/// The APIC ID of this CPU (xAPIC: bits 31..24).
pub fn id() -> u32 {
    read(REG_ID) >> 24
}

/// Signals the end of the current interrupt.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// Starts the one-shot timer for `count` APIC ticks (0 stops it).
pub fn arm_timer(count: u32) {
    write(REG_LVT_TIMER, u32::from(TIMER_VECTOR));
    write(REG_TIMER_INIT, count);
}

/// Starts a free-running masked count from the maximum, for calibration.
pub fn start_calibration() {
    write(REG_LVT_TIMER, (1 << 16) | u32::from(TIMER_VECTOR));
    write(REG_TIMER_INIT, u32::MAX);
}

/// Ticks elapsed since [`start_calibration`].
pub fn calibration_elapsed() -> u32 {
    let elapsed = u32::MAX - read(REG_TIMER_CURRENT);
    write(REG_TIMER_INIT, 0);
    elapsed
}

/// Sends `vector` to this CPU (fixed delivery, "self" shorthand).
pub fn self_ipi(vector: u8) {
    write(REG_ICR_HIGH, 0);
    write(REG_ICR_LOW, (0b01 << 18) | (1 << 14) | u32::from(vector));
}
