//! What happens on a CPU exception or an interrupt.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::apic;
use crate::arch::cpu_tables::TrapFrame;
use crate::console::emergency;

static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);

/// Breakpoint (`int3`) traps seen so far; they are reported and resumed.
pub fn breakpoints() -> u64 {
    BREAKPOINTS.load(Ordering::Relaxed)
}

const NAMES: [&str; 32] = [
    "divide-error", "debug", "nmi", "breakpoint", "overflow", "bound-range", "invalid-opcode",
    "device-not-available", "double-fault", "coprocessor-overrun", "invalid-tss",
    "segment-not-present", "stack-fault", "general-protection", "page-fault", "reserved-15",
    "x87-fp", "alignment-check", "machine-check", "simd-fp", "virtualization", "control-protection",
    "reserved-22", "reserved-23", "reserved-24", "reserved-25", "reserved-26", "reserved-27",
    "hypervisor-injection", "vmm-communication", "security", "reserved-31",
];

pub(crate) fn exception(frame: &mut TrapFrame) {
    let vector = frame.vector as usize;
    let name = NAMES[vector % 32];
    if vector == 3 {
        BREAKPOINTS.fetch_add(1, Ordering::Relaxed);
        emergency(format_args!("ICONNECT-TRAP breakpoint rip={:#x} (resumed)\n", frame.rip));
        return;
    }
    if vector == 14 || vector == 8 {
        let cr2: u64;
        // SAFETY: reading CR2 has no side effect. Under nested Xen on QEMU TCG the value may be
        // stale (a known QEMU SVM-emulation bug); it is only reported.
        unsafe { core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
        emergency(format_args!(
            "\nICONNECT-FAULT {name} vector={vector} addr={cr2:#x} error={:#x} ({}{}{}) rip={:#x}{}\n",
            frame.error,
            if frame.error & 1 != 0 { "protection" } else { "not-present" },
            if frame.error & 2 != 0 { ", write" } else { ", read" },
            if frame.error & 16 != 0 { ", fetch" } else { "" },
            frame.rip,
            if vector == 8 { " (double fault: addr is the last page-fault address; a stack overflow hits the guard page)" } else { "" }
        ));
    } else {
        emergency(format_args!(
            "\nICONNECT-FAULT {name} vector={vector} error={:#x} rip={:#x}\n",
            frame.error, frame.rip
        ));
    }
    let f = &*frame;
    emergency(format_args!(
        "  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n  rsi={:#018x} rdi={:#018x} rbp={:#018x} rsp={:#018x}\n  r8 ={:#018x} r9 ={:#018x} r10={:#018x} r11={:#018x}\n  r12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}\n  cs={:#x} ss={:#x} rflags={:#x}\n",
        f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp, f.rsp, f.r8, f.r9, f.r10, f.r11, f.r12,
        f.r13, f.r14, f.r15, f.cs, f.ss, f.rflags
    ));
    crate::exit_raw(crate::EXIT_EXCEPTION);
}

pub(crate) fn interrupt(vector: u8) {
    match vector {
        32..=47 => {} // masked legacy PIC lines: only spurious ones can arrive; no EOI
        apic::TIMER_VECTOR => apic::eoi(),
        apic::SPURIOUS_VECTOR => {} // no EOI for spurious interrupts
        v => {
            if crate::irq::dispatch(usize::from(v)) {
                crate::event::signal();
            }
            if crate::irq::needs_eoi(usize::from(v)) {
                apic::eoi();
            }
        }
    }
}
