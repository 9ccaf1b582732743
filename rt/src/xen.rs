//! Living on Xen: the unsafe part of the bring-up, done once at boot when Xen is detected.
//!
//! * The shared-info page is mapped over a frame of our RAM (`XENMAPSPACE_shared_info`).
//! * Event channels are delivered through a callback vector (`HVM_PARAM_CALLBACK_IRQ`, type 2),
//!   injected without the local APIC (so no EOI). The handler moves pending, unmasked ports into
//!   a private bitmap and signals the event loop; [`take_event`] consumes them.
//! * The xenstore and console ring pages (HVM params) are handed out as
//!   `xen_hypercall::ForeignMem`, the seam through which safe crates (`xen-domain`) reach them.

use core::sync::atomic::{AtomicU64, Ordering};

use xen_hypercall::{ForeignMem, Port, SharedInfo, Xen, XenError, hvm, memory};

static SHARED_INFO: spin::Once<SharedInfo> = spin::Once::new();
static FIRED: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];

/// Callback type "vector" in bits 63:56 of `HVM_PARAM_CALLBACK_IRQ`.
const CALLBACK_TYPE_VECTOR: u64 = 2 << 56;

fn upcall() {
    let Some(si) = SHARED_INFO.get() else { return };
    loop {
        si.clear_upcall_pending(0);
        let mut sel = si.take_pending_sel(0);
        if sel == 0 {
            return;
        }
        while sel != 0 {
            let w = sel.trailing_zeros() as usize;
            sel &= sel - 1;
            let ready = si.take_pending_word(w);
            if ready != 0 {
                FIRED[w].fetch_or(ready, Ordering::AcqRel);
            }
        }
    }
}

/// Maps shared info and installs the event-channel callback.
pub(crate) fn init(xen: Xen) -> Result<(), XenError> {
    let (frame, _) = crate::mem::alloc_dma(1).ok_or(XenError(-12))?;
    // SAFETY: the frame was just allocated to us and is never used as RAM again: from now on it is
    // the shared-info page.
    unsafe { xen.add_to_physmap(memory::SPACE_SHARED_INFO, 0, frame >> 12)? };
    // SAFETY: Xen mapped shared info at `frame` (identity-mapped) for the rest of our life.
    SHARED_INFO.call_once(|| unsafe { SharedInfo::from_ptr(crate::mem::phys_to_virt(frame)) });
    let vector = crate::irq::register_injected_vector(upcall).ok_or(XenError(-28))?;
    xen.hvm_set_param(hvm::PARAM_CALLBACK_IRQ, CALLBACK_TYPE_VECTOR | u64::from(vector))?;
    log::debug!(target: "rt", "xen: shared info at {frame:#x}, event callback vector {vector}");
    Ok(())
}

/// Whether `port` fired since the last call (and forget that it did).
pub fn take_event(port: Port) -> bool {
    let (w, bit) = ((port.0 % xen_hypercall::evtchn::MAX_PORTS) as usize / 64, 1u64 << (port.0 % 64));
    FIRED[w].fetch_and(!bit, Ordering::AcqRel) & bit != 0
}

/// Whether the event-channel callback is installed.
pub fn events_ready() -> bool {
    SHARED_INFO.get().is_some()
}

fn param_page(xen: Xen, pfn_param: u32, evtchn_param: u32) -> Result<(ForeignMem, Port), XenError> {
    let pfn = xen.hvm_get_param(pfn_param)?;
    let port = xen.hvm_get_param(evtchn_param)?;
    if pfn == 0 || pfn >= (1 << 20) {
        return Err(XenError(-2));
    }
    let addr = pfn << 12;
    // SAFETY: Xen reserves this frame (below 4 GiB, identity-mapped) for the ring page shared with
    // xenstored/xenconsoled; it is never handed out as RAM (it is not RAM in the memory map) and
    // only ever accessed through ForeignMem's volatile/atomic accessors.
    let mem = unsafe { ForeignMem::new(crate::mem::phys_to_virt(addr), 4096) };
    Ok((mem, Port(port as u32)))
}

/// The xenstore ring page and its event channel.
pub fn store_page(xen: Xen) -> Result<(ForeignMem, Port), XenError> {
    param_page(xen, hvm::PARAM_STORE_PFN, hvm::PARAM_STORE_EVTCHN)
}

/// The PV console ring page and its event channel.
pub fn console_page(xen: Xen) -> Result<(ForeignMem, Port), XenError> {
    param_page(xen, hvm::PARAM_CONSOLE_PFN, hvm::PARAM_CONSOLE_EVTCHN)
}
