//! Memory shared with other domains or mapped by Xen (xenstore and console rings, granted pages),
//! seen through the `xen_abi::shmem::SharedMem` seam: every access is a volatile or atomic
//! operation through a raw pointer, bounds-checked against the region; no reference into the
//! region is ever handed out.

use core::sync::atomic::{AtomicU32, Ordering};

use xen_abi::shmem::SharedMem;

use crate::Xen;

/// A region of memory another domain may write concurrently.
#[derive(Clone, Copy, Debug)]
pub struct ForeignMem {
    base: *mut u8,
    len: usize,
}

// SAFETY: every access is volatile or atomic; the region stays mapped (constructor contract).
unsafe impl Send for ForeignMem {}
// SAFETY: as above.
unsafe impl Sync for ForeignMem {}

impl ForeignMem {
    /// Wraps `[base, base + len)`.
    ///
    /// # Safety
    /// The range must be mapped, readable and writable for as long as this value or a copy of it
    /// lives, 4-byte aligned, and not accessed through Rust references by anyone.
    pub unsafe fn new(base: *mut u8, len: usize) -> ForeignMem {
        ForeignMem { base, len }
    }

    fn check(&self, off: usize, size: usize) {
        assert!(off.checked_add(size).is_some_and(|end| end <= self.len), "shared access out of bounds");
    }
}

impl SharedMem for ForeignMem {
    fn len(&self) -> usize {
        self.len
    }

    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        self.check(off, 4);
        assert!(off.is_multiple_of(4), "misaligned u32");
        // SAFETY: in bounds and aligned (checked); the region is valid (constructor contract).
        unsafe { AtomicU32::from_ptr(self.base.add(off).cast()) }.load(order)
    }

    fn store_u32(&self, off: usize, val: u32, order: Ordering) {
        self.check(off, 4);
        assert!(off.is_multiple_of(4), "misaligned u32");
        // SAFETY: as for `load_u32`.
        unsafe { AtomicU32::from_ptr(self.base.add(off).cast()) }.store(val, order)
    }

    fn load_u16(&self, off: usize) -> u16 {
        self.check(off, 2);
        // SAFETY: in bounds (checked); volatile because the peer writes concurrently.
        unsafe { self.base.add(off).cast::<u16>().read_volatile() }
    }

    fn store_u16(&self, off: usize, val: u16) {
        self.check(off, 2);
        // SAFETY: as for `load_u16`.
        unsafe { self.base.add(off).cast::<u16>().write_volatile(val) }
    }

    fn load_u64(&self, off: usize) -> u64 {
        self.check(off, 8);
        // SAFETY: as for `load_u16`.
        unsafe { self.base.add(off).cast::<u64>().read_volatile() }
    }

    fn store_u64(&self, off: usize, val: u64) {
        self.check(off, 8);
        // SAFETY: as for `load_u16`.
        unsafe { self.base.add(off).cast::<u64>().write_volatile(val) }
    }

    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        self.check(off, dst.len());
        for (i, b) in dst.iter_mut().enumerate() {
            // SAFETY: in bounds (checked above for the whole range).
            *b = unsafe { self.base.add(off + i).read_volatile() };
        }
    }

    fn write_bytes(&self, off: usize, src: &[u8]) {
        self.check(off, src.len());
        for (i, &b) in src.iter().enumerate() {
            // SAFETY: in bounds (checked above for the whole range).
            unsafe { self.base.add(off + i).write_volatile(b) };
        }
    }
}

/// A foreign domain's granted page mapped into this domain (`GNTTABOP_map_grant_ref` with
/// `GNTMAP_host_map`), reached only through [`SharedMem`]. It owns the mapping: dropping it
/// unmaps the page (`GNTTABOP_unmap_grant_ref`) and hands the guest-physical frame back through
/// the release function given at construction. The value is not `Clone`, so no accessor can
/// outlive the mapping.
pub struct MappedGrant {
    xen: Xen,
    mem: ForeignMem,
    gpa: u64,
    handle: u32,
    release: fn(gpa: u64, unmapped: bool),
}

impl core::fmt::Debug for MappedGrant {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MappedGrant").field("gpa", &self.gpa).field("handle", &self.handle).finish()
    }
}

impl MappedGrant {
    /// Maps `domid`'s grant `gref` read-write at guest-physical address `gpa`, reached by the
    /// CPU at `va`.
    ///
    /// On failure `release(gpa, true)` has already been called (nothing is mapped there).
    ///
    /// # Safety
    /// `gpa` must be a page-aligned guest-physical frame of this domain that holds no RAM and no
    /// other mapping (a hole in the physical address space), reserved for this mapping until
    /// `release` is called with it; `va` must be where the CPU reaches `gpa`, a 4 KiB-aligned
    /// writable mapping that stays in place for as long as the hole is reserved.
    pub unsafe fn map(
        xen: Xen,
        gpa: u64,
        va: *mut u8,
        domid: u16,
        gref: crate::GrantRef,
        release: fn(gpa: u64, unmapped: bool),
    ) -> Result<MappedGrant, crate::XenError> {
        let mut op = [crate::grant::MapGrantRef {
            host_addr: gpa,
            flags: crate::grant::GNTMAP_HOST_MAP,
            gref,
            dom: domid,
            ..Default::default()
        }];
        // SAFETY: `gpa` is a reserved hole frame (contract); nothing references it.
        let res = unsafe { xen.grant_map(&mut op) };
        match res {
            Ok(()) if op[0].status == 0 => {}
            Ok(()) => {
                release(gpa, true);
                return Err(crate::XenError(i64::from(op[0].status)));
            }
            Err(e) => {
                release(gpa, true);
                return Err(e);
            }
        }
        // SAFETY: the granted page is now mapped at `gpa`, reached at `va` (contract), 4 KiB
        // long and aligned; it stays mapped until `drop` unmaps it, and only this value (not
        // `Clone`) reaches it, through volatile/atomic accessors.
        let mem = unsafe { ForeignMem::new(va, 4096) };
        Ok(MappedGrant { xen, mem, gpa, handle: op[0].handle, release })
    }

    /// The guest-physical address of the mapping.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }
}

impl Drop for MappedGrant {
    fn drop(&mut self) {
        let mut op = [crate::grant::UnmapGrantRef::new(self.gpa, self.handle)];
        // SAFETY: the mapping is ours (made by `map`); after this nothing reaches it (self is
        // being dropped and its ForeignMem was never handed out).
        let ok = matches!(unsafe { self.xen.grant_unmap(&mut op) }, Ok(())) && op[0].status == 0;
        // A frame that failed to unmap still holds the foreign page: the release function must
        // not reuse it.
        (self.release)(self.gpa, ok);
    }
}

impl SharedMem for MappedGrant {
    fn len(&self) -> usize {
        self.mem.len()
    }
    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        self.mem.load_u32(off, order)
    }
    fn store_u32(&self, off: usize, val: u32, order: Ordering) {
        self.mem.store_u32(off, val, order)
    }
    fn load_u16(&self, off: usize) -> u16 {
        self.mem.load_u16(off)
    }
    fn store_u16(&self, off: usize, val: u16) {
        self.mem.store_u16(off, val)
    }
    fn load_u64(&self, off: usize) -> u64 {
        self.mem.load_u64(off)
    }
    fn store_u64(&self, off: usize, val: u64) {
        self.mem.store_u64(off, val)
    }
    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        self.mem.read_bytes(off, dst)
    }
    fn write_bytes(&self, off: usize, src: &[u8]) {
        self.mem.write_bytes(off, src)
    }
}
