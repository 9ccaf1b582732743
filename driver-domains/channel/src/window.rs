//! A page-aligned sub-range of a shared region, itself a [`SharedMem`] (so `xen-abi`'s rings run
//! on one ring's pages of the channel region).

use core::sync::atomic::Ordering;

use xen_abi::shmem::SharedMem;

use crate::Error;

/// `[base, base + len)` of `M`. Accesses are checked against the window (a violation is a
/// caller bug and panics, per the seam's contract) and forwarded with `base` added. `base` is a
/// multiple of 8, so alignment is preserved.
#[derive(Debug, Clone)]
pub struct Window<M: SharedMem> {
    mem: M,
    base: usize,
    len: usize,
}

impl<M: SharedMem> Window<M> {
    /// The window `[base, base + len)`; [`Error::BadRing`] if it leaves the region or `base` is
    /// not 8-byte aligned.
    pub fn new(mem: M, base: usize, len: usize) -> Result<Self, Error> {
        match base.checked_add(len) {
            Some(end) if end <= mem.len() && base.is_multiple_of(8) => Ok(Self { mem, base, len }),
            _ => Err(Error::BadRing),
        }
    }

    /// Offset of the window in the region.
    pub fn base(&self) -> usize {
        self.base
    }

    #[inline(always)]
    fn at(&self, off: usize, size: usize) -> usize {
        assert!(
            off.checked_add(size).is_some_and(|e| e <= self.len),
            "access outside the window"
        );
        self.base + off
    }
}

impl<M: SharedMem> SharedMem for Window<M> {
    #[inline]
    fn len(&self) -> usize {
        self.len
    }
    #[inline]
    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        self.mem.load_u32(self.at(off, 4), order)
    }
    #[inline]
    fn store_u32(&self, off: usize, val: u32, order: Ordering) {
        self.mem.store_u32(self.at(off, 4), val, order)
    }
    #[inline]
    fn load_u16(&self, off: usize) -> u16 {
        self.mem.load_u16(self.at(off, 2))
    }
    #[inline]
    fn store_u16(&self, off: usize, val: u16) {
        self.mem.store_u16(self.at(off, 2), val)
    }
    #[inline]
    fn load_u64(&self, off: usize) -> u64 {
        self.mem.load_u64(self.at(off, 8))
    }
    #[inline]
    fn store_u64(&self, off: usize, val: u64) {
        self.mem.store_u64(self.at(off, 8), val)
    }
    #[inline]
    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        self.mem.read_bytes(self.at(off, dst.len()), dst)
    }
    #[inline]
    fn write_bytes(&self, off: usize, src: &[u8]) {
        self.mem.write_bytes(self.at(off, src.len()), src)
    }
    #[inline]
    fn full_fence(&self) {
        self.mem.full_fence()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_abi::shmem::HostMem;

    #[test]
    fn forwards_with_offset() {
        let m = HostMem::pages(2);
        let w = Window::new(m.clone(), 4096, 4096).unwrap();
        w.store_u32(8, 0xabcd, Ordering::Release);
        assert_eq!(m.load_u32(4096 + 8, Ordering::Acquire), 0xabcd);
        w.write_bytes(4090, &[1; 6]);
        let mut b = [0u8; 6];
        m.read_bytes(8186, &mut b);
        assert_eq!(b, [1; 6]);
        assert!(Window::new(m.clone(), 4096, 4097).is_err());
        assert!(Window::new(m.clone(), 4, 8).is_err());
        assert!(Window::new(m, usize::MAX, 2).is_err());
    }

    #[test]
    #[should_panic(expected = "outside the window")]
    fn access_past_the_window_panics() {
        let m = HostMem::pages(2);
        let w = Window::new(m, 0, 4096).unwrap();
        w.load_u32(4096, Ordering::Relaxed);
    }
}
