//! Memory shared with other domains or mapped by Xen (xenstore and console rings, granted pages),
//! seen through the `xen_abi::shmem::SharedMem` seam: every access is a volatile or atomic
//! operation through a raw pointer, bounds-checked against the region; no reference into the
//! region is ever handed out.

use core::sync::atomic::{AtomicU32, Ordering};

use xen_abi::shmem::SharedMem;

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
