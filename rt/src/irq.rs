//! Device interrupts delivered as MSI/MSI-X messages to this CPU's local APIC.

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::arch::cpu_tables::STUB_VECTORS;

/// First vector handed out to devices (below: exceptions, the remapped PICs and the APIC timer).
pub const FIRST_DEVICE_VECTOR: usize = 49;

static HANDLERS: [AtomicUsize; STUB_VECTORS] = [const { AtomicUsize::new(0) }; STUB_VECTORS];

/// What a device writes to raise an interrupt: program it into an MSI capability or an MSI-X table
/// entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (LAPIC of the target CPU, physical destination mode).
    pub address: u64,
    /// Message data (fixed delivery, edge, the vector).
    pub data: u32,
}

impl MsiMessage {
    /// The vector this message raises.
    pub fn vector(&self) -> u8 {
        self.data as u8
    }
}

/// Allocates a vector whose interrupts run `handler` (in interrupt context: it must not allocate,
/// block or take locks the interrupted code may hold) and then signal the event loop. Returns the
/// message to program into the device, or `None` when all vectors are taken.
pub fn register_msi(handler: fn()) -> Option<MsiMessage> {
    let vector = (FIRST_DEVICE_VECTOR..STUB_VECTORS).find(|&v| {
        HANDLERS[v].compare_exchange(0, handler as usize, Ordering::AcqRel, Ordering::Acquire).is_ok()
    })?;
    let apic_id = u64::from(crate::arch::apic::id());
    Some(MsiMessage { address: 0xfee0_0000 | (apic_id << 12), data: vector as u32 })
}

/// Raises `message`'s vector on this CPU by a self-IPI, as the device would (for tests).
pub fn raise(message: MsiMessage) {
    crate::arch::apic::self_ipi(message.vector());
}

pub(crate) fn dispatch(vector: usize) -> bool {
    let Some(slot) = HANDLERS.get(vector) else { return false };
    let raw = slot.load(Ordering::Acquire);
    if raw == 0 {
        return false;
    }
    // SAFETY: only `register_msi` stores into HANDLERS, and it stores a valid `fn()`.
    let handler: fn() = unsafe { core::mem::transmute::<usize, fn()>(raw) };
    handler();
    true
}
