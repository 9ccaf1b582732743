//! Event channels (`event_channel.h`), 2-level ABI: operations and the shared-info bitmaps.

use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use crate::{Xen, XenError, check, nr};

/// An event-channel port of this domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(pub u32);

/// Ports the 2-level ABI can name: 64 words of 64 bits.
pub const MAX_PORTS: u32 = 4096;

const BIND_INTERDOMAIN: u64 = 0;
const CLOSE: u64 = 3;
const SEND: u64 = 4;
const ALLOC_UNBOUND: u64 = 6;
const UNMASK: u64 = 9;

#[repr(C)]
struct BindInterdomain {
    remote_dom: u16,
    _pad: u16,
    remote_port: u32,
    local_port: u32,
}

#[repr(C)]
struct AllocUnbound {
    dom: u16,
    remote_dom: u16,
    port: u32,
}

const _: () = assert!(core::mem::size_of::<BindInterdomain>() == 12);
const _: () = assert!(core::mem::size_of::<AllocUnbound>() == 8);

impl Xen {
    fn evtchn_port_op(&self, cmd: u64, port: Port) -> Result<(), XenError> {
        let arg = port.0;
        // SAFETY: evtchn_close/send/unmask are one `evtchn_port_t`; `arg` lives across the call.
        let ret = unsafe { self.call(nr::EVENT_CHANNEL_OP, cmd, &arg as *const u32 as u64, 0, 0, 0) };
        check(ret).map(|_| ())
    }

    /// `EVTCHNOP_alloc_unbound`: a port that domain `remote` may bind to.
    pub fn evtchn_alloc_unbound(&self, remote: u16) -> Result<Port, XenError> {
        let mut arg = AllocUnbound { dom: crate::hvm::DOMID_SELF, remote_dom: remote, port: 0 };
        // SAFETY: `evtchn_alloc_unbound` is exactly `AllocUnbound`; it lives across the call.
        let ret = unsafe {
            self.call(nr::EVENT_CHANNEL_OP, ALLOC_UNBOUND, &mut arg as *mut AllocUnbound as u64, 0, 0, 0)
        };
        check(ret).map(|_| Port(arg.port))
    }

    /// `EVTCHNOP_bind_interdomain`: connects to `remote_port` of domain `remote`.
    pub fn evtchn_bind_interdomain(&self, remote: u16, remote_port: u32) -> Result<Port, XenError> {
        let mut arg = BindInterdomain { remote_dom: remote, _pad: 0, remote_port, local_port: 0 };
        // SAFETY: `evtchn_bind_interdomain` is exactly `BindInterdomain`; it lives across the call.
        let ret = unsafe {
            self.call(nr::EVENT_CHANNEL_OP, BIND_INTERDOMAIN, &mut arg as *mut BindInterdomain as u64, 0, 0, 0)
        };
        check(ret).map(|_| Port(arg.local_port))
    }

    /// `EVTCHNOP_send`: notifies the other end of `port`.
    pub fn evtchn_send(&self, port: Port) -> Result<(), XenError> {
        self.evtchn_port_op(SEND, port)
    }

    /// `EVTCHNOP_unmask`.
    pub fn evtchn_unmask(&self, port: Port) -> Result<(), XenError> {
        self.evtchn_port_op(UNMASK, port)
    }

    /// `EVTCHNOP_close`.
    pub fn evtchn_close(&self, port: Port) -> Result<(), XenError> {
        self.evtchn_port_op(CLOSE, port)
    }
}

/// The shared-info page (`xen.h` `struct shared_info`, x86): 32 `vcpu_info`s of 64 bytes, then the
/// `evtchn_pending` and `evtchn_mask` bitmaps (64 words each). Xen writes it concurrently, so every
/// access is atomic through a raw pointer; no reference into it is ever created.
pub struct SharedInfo {
    base: *mut u8,
}

// SAFETY: all accesses are atomic operations on memory that stays mapped for the domain's life.
unsafe impl Send for SharedInfo {}
// SAFETY: as above.
unsafe impl Sync for SharedInfo {}

const VCPU_INFO_SIZE: usize = 64;
const PENDING: usize = 2048;
const MASK: usize = 2560;

impl SharedInfo {
    /// Wraps the page at `base`.
    ///
    /// # Safety
    /// `base` must be the 4 KiB-aligned shared-info page Xen mapped for this domain
    /// (`XENMAPSPACE_shared_info`), mapped for the rest of the program.
    pub unsafe fn from_ptr(base: *mut u8) -> SharedInfo {
        SharedInfo { base }
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8) && offset < 4096);
        // SAFETY: `offset` is an 8-aligned offset inside the page (callers compute it from a port
        // below MAX_PORTS or a vCPU below 32); the page outlives `self` (constructor contract), and
        // AtomicU64 allows concurrent modification by Xen.
        unsafe { AtomicU64::from_ptr(self.base.add(offset).cast()) }
    }

    fn byte(&self, offset: usize) -> &AtomicU8 {
        // SAFETY: as for `word`, for a byte inside the page.
        unsafe { AtomicU8::from_ptr(self.base.add(offset)) }
    }

    /// Clears `evtchn_upcall_pending` of vCPU `vcpu` (< 32).
    pub fn clear_upcall_pending(&self, vcpu: usize) {
        self.byte((vcpu % 32) * VCPU_INFO_SIZE).store(0, Ordering::SeqCst);
    }

    /// Takes (and zeroes) `evtchn_pending_sel` of vCPU `vcpu`.
    pub fn take_pending_sel(&self, vcpu: usize) -> u64 {
        self.word((vcpu % 32) * VCPU_INFO_SIZE + 8).swap(0, Ordering::SeqCst)
    }

    /// Pending-and-unmasked ports of word `w` (< 64), clearing their pending bits.
    pub fn take_pending_word(&self, w: usize) -> u64 {
        let w = w % 64;
        let ready = self.word(PENDING + 8 * w).load(Ordering::SeqCst) & !self.word(MASK + 8 * w).load(Ordering::SeqCst);
        if ready != 0 {
            self.word(PENDING + 8 * w).fetch_and(!ready, Ordering::SeqCst);
        }
        ready
    }

    /// Sets or clears `port`'s mask bit (unmasking through Xen is [`Xen::evtchn_unmask`]).
    pub fn set_masked(&self, port: Port, masked: bool) {
        let (w, bit) = ((port.0 % MAX_PORTS) as usize / 64, 1u64 << (port.0 % 64));
        if masked {
            self.word(MASK + 8 * w).fetch_or(bit, Ordering::SeqCst);
        } else {
            self.word(MASK + 8 * w).fetch_and(!bit, Ordering::SeqCst);
        }
    }
}
