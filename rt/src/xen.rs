//! Living on Xen: the unsafe part of the bring-up, done once at boot when Xen is detected.
//!
//! * The shared-info page is mapped over a frame of our RAM (`XENMAPSPACE_shared_info`).
//! * Event channels are delivered through a callback vector (`HVM_PARAM_CALLBACK_IRQ`, type 2),
//!   injected without the local APIC (so no EOI). The handler moves pending, unmasked ports into
//!   a private bitmap and signals the event loop; [`take_event`] consumes them.
//! * The xenstore and console ring pages (HVM params) are handed out as
//!   `xen_hypercall::ForeignMem`, the seam through which safe crates (`xen-domain`) reach them.
//! * The grant table (v1) is mapped over frames of our RAM; grant copies to and from foreign
//!   frames take ordinary slices, split at page boundaries.
//! * Foreign grants are mapped ([`map_grant`]) into a reserved guest-physical hole: frames
//!   above RAM (and at least 1 GiB up) that the boot page tables already map write-back and
//!   that hold nothing until Xen puts a granted page there. A mapping is a
//!   `xen_hypercall::MappedGrant` (reached through `SharedMem` only); dropping it unmaps the
//!   page and frees its frame of the hole.

use alloc::vec::Vec;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicU64, Ordering};

use xen_hypercall::{
    CopyPtr, ForeignMem, GntCopy, GrantRef, GrantTableV1, MappedGrant, Port, SharedInfo, Xen, XenError, hvm, memory,
};

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

static GRANTS: spin::Once<Result<GrantTableV1, XenError>> = spin::Once::new();

/// This domain's grant table (v1), set up on first use: up to 4 frames (2048 entries), mapped
/// over frames of our RAM.
pub fn grant_table(xen: Xen) -> Result<&'static GrantTableV1, XenError> {
    GRANTS
        .call_once(|| {
            let (_, max) = xen.grant_query_size()?;
            let frames = max.clamp(1, 4);
            let (base, _) = crate::mem::alloc_dma(frames as usize).ok_or(XenError(-12))?;
            for i in 0..frames {
                // SAFETY: the frames were just allocated to us and are never used as RAM again:
                // they become grant-table frames.
                unsafe { xen.add_to_physmap(memory::SPACE_GRANT_TABLE, u64::from(i), (base >> 12) + u64::from(i))? };
            }
            // SAFETY: Xen mapped grant frames 0..frames at `base` (identity-mapped) for good.
            Ok(unsafe { GrantTableV1::from_ptr(crate::mem::phys_to_virt(base), frames) })
        })
        .as_ref()
        .map_err(|e| *e)
}

const PAGE: usize = 4096;

/// A batch of grant copies submitted as one `GNTTABOP_copy`. Each entry copies between a local
/// slice (split at page boundaries) and a range of one foreign grant. The slices stay borrowed
/// for the batch's lifetime `'a`, so Xen writes only into memory the batch holds exclusively.
pub struct CopyBatch<'a> {
    ops: Vec<GntCopy>,
    owners: Vec<usize>,
    entries: usize,
    _borrows: PhantomData<&'a mut [u8]>,
}

impl Default for CopyBatch<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> CopyBatch<'a> {
    /// An empty batch.
    pub fn new() -> Self {
        CopyBatch { ops: Vec::new(), owners: Vec::new(), entries: 0, _borrows: PhantomData }
    }

    fn add(&mut self, local: *const u8, len: usize, domid: u16, gref: GrantRef, goff: u16, into_local: bool) -> Result<usize, XenError> {
        if usize::from(goff) + len > PAGE {
            return Err(XenError(-22));
        }
        let entry = self.entries;
        let mut done = 0;
        while done < len {
            let addr = crate::mem::virt_to_phys(local.wrapping_add(done));
            let chunk = (PAGE - (addr as usize % PAGE)).min(len - done);
            let mine = CopyPtr::local(addr >> 12, (addr % PAGE as u64) as u16);
            let theirs = CopyPtr::grant(domid, gref, goff + done as u16);
            self.ops.push(if into_local {
                GntCopy::new(theirs, mine, chunk as u16, xen_hypercall::grant::COPY_SOURCE_GREF)
            } else {
                GntCopy::new(mine, theirs, chunk as u16, xen_hypercall::grant::COPY_DEST_GREF)
            });
            self.owners.push(entry);
            done += chunk;
        }
        self.entries += 1;
        Ok(entry)
    }

    /// Adds a copy from offset `goff` of domain `domid`'s grant `gref` into `dst` (the foreign
    /// range must stay within one page). Returns the entry's index in [`CopyBatch::submit`]'s result.
    pub fn copy_in(&mut self, domid: u16, gref: GrantRef, goff: u16, dst: &'a mut [u8]) -> Result<usize, XenError> {
        self.add(dst.as_mut_ptr(), dst.len(), domid, gref, goff, true)
    }

    /// Adds a copy of `src` to offset `goff` of domain `domid`'s grant `gref` (within one page).
    pub fn copy_out(&mut self, src: &'a [u8], domid: u16, gref: GrantRef, goff: u16) -> Result<usize, XenError> {
        self.add(src.as_ptr(), src.len(), domid, gref, goff, false)
    }

    /// Submits every copy in one hypercall; returns each entry's result, in the order added.
    /// `Err` only when the hypercall itself failed.
    pub fn submit(mut self, xen: Xen) -> Result<Vec<Result<(), XenError>>, XenError> {
        if !self.ops.is_empty() {
            // SAFETY: every local side is a piece of a slice this batch borrows for `'a`, inside
            // identity-mapped RAM: destinations are held as `&mut [u8]` (nothing aliases them),
            // sources as `&[u8]` (Xen only reads them).
            unsafe { xen.grant_copy(&mut self.ops)? };
        }
        let mut results = alloc::vec![Ok(()); self.entries];
        for (op, &entry) in self.ops.iter().zip(&self.owners) {
            if op.status != 0 && results[entry].is_ok() {
                results[entry] = Err(XenError(i64::from(op.status)));
            }
        }
        Ok(results)
    }
}

fn single(batch: CopyBatch<'_>, xen: Xen) -> Result<(), XenError> {
    batch.submit(xen)?.pop().unwrap_or(Err(XenError(-22)))
}

/// Copies `dst.len()` bytes from offset `goff` of domain `domid`'s grant `gref` into `dst`.
/// The foreign range must stay within one page.
pub fn copy_from_grant(xen: Xen, domid: u16, gref: GrantRef, goff: u16, dst: &mut [u8]) -> Result<(), XenError> {
    let mut batch = CopyBatch::new();
    batch.copy_in(domid, gref, goff, dst)?;
    single(batch, xen)
}

/// Copies `src` to offset `goff` of domain `domid`'s grant `gref` (within one page).
pub fn copy_to_grant(xen: Xen, src: &[u8], domid: u16, gref: GrantRef, goff: u16) -> Result<(), XenError> {
    let mut batch = CopyBatch::new();
    batch.copy_out(src, domid, gref, goff)?;
    single(batch, xen)
}

/// Frames of the grant-mapping hole (1 MiB: room for 128 vifs' two ring pages).
const HOLE_PAGES: usize = 256;
/// The hole never starts below this (well above any RAM a driver domain is given).
const HOLE_MIN: u64 = 1 << 30;
/// ... and must end below the uncached MMIO window (3..4 GiB) of the boot page tables.
const HOLE_LIMIT: u64 = 3 << 30;

struct Hole {
    base: u64,
    /// Bit set: frame in use (mapped, or lost to a failed unmap).
    used: [u64; HOLE_PAGES / 64],
}

static HOLE: spin::Mutex<Option<Hole>> = spin::Mutex::new(None);

fn hole_alloc() -> Result<u64, XenError> {
    let mut hole = HOLE.lock();
    if hole.is_none() {
        let base = crate::mem::ram_end().max(HOLE_MIN).next_multiple_of(2 << 20);
        if base + (HOLE_PAGES as u64) * PAGE as u64 > HOLE_LIMIT {
            return Err(XenError(-12));
        }
        *hole = Some(Hole { base, used: [0; HOLE_PAGES / 64] });
    }
    let Some(h) = hole.as_mut() else { return Err(XenError(-12)) };
    for (w, word) in h.used.iter_mut().enumerate() {
        if *word != u64::MAX {
            let bit = (!*word).trailing_zeros() as usize;
            *word |= 1 << bit;
            return Ok(h.base + ((w * 64 + bit) * PAGE) as u64);
        }
    }
    Err(XenError(-28))
}

fn hole_release(gpa: u64, unmapped: bool) {
    if !unmapped {
        log::error!(target: "rt", "grant unmap at {gpa:#x} failed; frame left out of the hole");
        return;
    }
    let mut hole = HOLE.lock();
    if let Some(h) = hole.as_mut() {
        let i = ((gpa - h.base) / PAGE as u64) as usize;
        if i < HOLE_PAGES {
            h.used[i / 64] &= !(1 << (i % 64));
        }
    }
}

/// Frames of the grant-mapping hole in use.
pub fn mapped_grants() -> usize {
    HOLE.lock().as_ref().map_or(0, |h| h.used.iter().map(|w| w.count_ones() as usize).sum())
}

/// Maps domain `domid`'s grant `gref` (read-write) into a free frame of the hole. The page is
/// reached only through the returned value's `SharedMem` accessors; dropping it unmaps the page.
pub fn map_grant(xen: Xen, domid: u16, gref: GrantRef) -> Result<MappedGrant, XenError> {
    let gpa = hole_alloc()?;
    // SAFETY: `gpa` is a frame of the hole: above every RAM range of the memory map and below
    // the MMIO window, so no RAM or device is there, and `hole_alloc` reserved it for this
    // mapping until `hole_release`. The boot page tables identity-map it write-back (all of
    // [0, 3 GiB) is mapped with 2 MiB pages that are never changed for addresses above RAM), so
    // the CPU reaches it at the same virtual address.
    unsafe { MappedGrant::map(xen, gpa, crate::mem::phys_to_virt(gpa), domid, gref, hole_release) }
}

/// `pages` zeroed, contiguous pages of our RAM to share with another domain (grant them with
/// [`grant_table`]), reached only through the returned `ForeignMem`'s volatile accessors.
/// They are never freed: the peer may keep accessing them until it is gone, and the accessor
/// is `Copy`. Returns the first page's guest frame number.
pub fn alloc_shared_pages(pages: usize) -> Option<(u64, ForeignMem)> {
    let (paddr, ptr) = crate::mem::alloc_dma(pages)?;
    // SAFETY: fresh, identity-mapped RAM of that length that is never freed (so it stays valid
    // for every copy of the accessor) and that nothing else references.
    let mem = unsafe { ForeignMem::new(ptr.as_ptr(), pages * PAGE) };
    Some((paddr >> 12, mem))
}
