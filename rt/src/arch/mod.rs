//! x86-64 specifics: port I/O, CPUID, MSRs, TSC, and the boot, CPU-table and APIC modules.
//!
//! Everything here is compiled only for the bare-metal target.

pub mod apic;
pub mod boot;
pub mod cpu_tables;
pub mod pit;

use core::arch::asm;

/// Writes a byte to an I/O port.
///
/// # Safety
/// The port must be one whose write has no memory-safety consequence for this program
/// (serial, PIT, PIC, debug ports).
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: port I/O touches no memory; the caller vouches for the device side effect.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

/// Writes a 32-bit value to an I/O port (same contract as [`outb`]).
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) }
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// The port must be one whose read has no memory-safety consequence for this program.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port I/O touches no memory; the caller vouches for the device side effect.
    unsafe { asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags)) };
    value
}

pub use xen_hypercall::cpuid;

/// Reads the time-stamp counter, ordered after earlier loads (LFENCE; RDTSC). RDTSCP is avoided on
/// purpose: nested Xen under QEMU TCG mis-emulates it.
#[inline]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: LFENCE and RDTSC only read the counter into registers.
    unsafe { asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Reads a model-specific register.
///
/// # Safety
/// The MSR must exist on this CPU (else #GP).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists; RDMSR writes only registers.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Disables interrupts.
#[inline]
pub fn cli() {
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

/// Enables interrupts.
#[inline]
pub fn sti() {
    // SAFETY: the IDT is installed before the first `sti` (see `crate::start`).
    unsafe { asm!("sti", options(nomem, nostack)) }
}

/// Enables interrupts and halts until the next one, atomically (STI's one-instruction shadow
/// guarantees no interrupt slips in between).
#[inline]
pub fn sti_hlt() {
    // SAFETY: as for `sti`; HLT only waits.
    unsafe { asm!("sti; hlt", options(nomem, nostack)) }
}

/// Which hypervisor, if any, CPUID reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypervisor {
    /// No hypervisor bit.
    None,
    /// Xen (details from `xen_hypercall::Xen::detect`).
    Xen,
    /// KVM.
    Kvm,
    /// QEMU's TCG.
    Tcg,
    /// Some other hypervisor.
    Other,
}

/// Detects the hypervisor from CPUID.
pub fn hypervisor() -> Hypervisor {
    if cpuid(1, 0)[2] & (1 << 31) == 0 {
        return Hypervisor::None;
    }
    let mut first = None;
    for base in (0x4000_0000u32..0x4001_0000).step_by(0x100) {
        let [max, b, c, d] = cpuid(base, 0);
        let mut sig = [0u8; 12];
        sig[0..4].copy_from_slice(&b.to_le_bytes());
        sig[4..8].copy_from_slice(&c.to_le_bytes());
        sig[8..12].copy_from_slice(&d.to_le_bytes());
        let found = match &sig {
            b"XenVMMXenVMM" if max >= base + 2 => Hypervisor::Xen,
            b"KVMKVMKVM\0\0\0" => Hypervisor::Kvm,
            b"TCGTCGTCGTCG" => Hypervisor::Tcg,
            _ => continue,
        };
        if found == Hypervisor::Xen {
            return found;
        }
        first.get_or_insert(found);
    }
    first.unwrap_or(Hypervisor::Other)
}
