//! Device interrupts delivered as MSI/MSI-X messages to this CPU's local APIC.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::arch::cpu_tables::STUB_VECTORS;

/// First vector handed out to devices (below: exceptions, the remapped PICs and the APIC timer).
pub const FIRST_DEVICE_VECTOR: usize = 49;

static HANDLERS: [AtomicUsize; STUB_VECTORS] = [const { AtomicUsize::new(0) }; STUB_VECTORS];
/// Vectors injected without the local APIC's in-service bit (Xen's event-channel callback), which
/// must not be acknowledged with an EOI.
static NO_EOI: [AtomicBool; STUB_VECTORS] = [const { AtomicBool::new(false) }; STUB_VECTORS];

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
    let vector = allocate(handler)?;
    let apic_id = u64::from(crate::arch::apic::id());
    Some(MsiMessage { address: 0xfee0_0000 | (apic_id << 12), data: vector as u32 })
}

fn allocate(handler: fn()) -> Option<usize> {
    (FIRST_DEVICE_VECTOR..STUB_VECTORS).find(|&v| {
        HANDLERS[v].compare_exchange(0, handler as usize, Ordering::AcqRel, Ordering::Acquire).is_ok()
    })
}

/// Allocates a vector for an interrupt that is injected directly rather than through the local
/// APIC (Xen's `HVM_PARAM_CALLBACK_IRQ` vector): same handler rules as [`register_msi`], but no
/// EOI is sent. Returns the vector.
pub fn register_injected_vector(handler: fn()) -> Option<u8> {
    let v = allocate(handler)?;
    NO_EOI[v].store(true, Ordering::Release);
    Some(v as u8)
}

/// Whether `vector` must be acknowledged with an EOI.
pub(crate) fn needs_eoi(vector: usize) -> bool {
    !NO_EOI.get(vector).is_some_and(|f| f.load(Ordering::Acquire))
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
