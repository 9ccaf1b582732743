//! The data area: grant-like references, `netback::GrantAccess` over the channel, and the
//! frontend's page allocator.
//!
//! On Xen a frontend grants pages and puts grant references (`u32`) into ring requests; the
//! backend copies from/to `(gref, offset, len)` with `GNTTABOP_copy`, and Xen refuses a copy
//! that leaves the granted page. On an iConnect channel the frontend allocates pages of the
//! channel's data area instead, and the reference it puts into a request is the *data page
//! number* (page 0 = first page of the data area). [`DataArea`] checks every reference and
//! every `offset + len` against the data area and the page, exactly where Xen would, and
//! implements [`netback::GrantAccess`] (the grant-copy seam the netback engine is written
//! against, which Xen implements with grant copies), so the same backend engine and the same
//! wire formats (`netif`, `blkif`) run unchanged on both platforms.
//!
//! For protocols of the channel's own, [`DataRef`] names any byte range `(offset, len)` of the
//! data area (possibly several pages); [`DataArea::read_ref`]/[`DataArea::write_ref`] validate
//! it against the data area bounds.

use alloc::vec;
use alloc::vec::Vec;

use xen_abi::shmem::SharedMem;
use xen_abi::{GrantRef, PAGE_SIZE};

use crate::Error;

/// Checks `offset + len <= PAGE_SIZE` without overflow.
#[inline]
pub fn check_in_page(offset: usize, len: usize) -> Result<(), Error> {
    match offset.checked_add(len) {
        Some(end) if end <= PAGE_SIZE => Ok(()),
        _ => Err(Error::BadOffset),
    }
}

/// A byte range of the data area, `(offset, len)` relative to its first byte: the channel's
/// general "grant". Only the backend's checks ([`DataArea::check`]) make it meaningful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataRef {
    /// Byte offset from the start of the data area.
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
}

impl DataRef {
    /// Encoded size.
    pub const SIZE: usize = 8;

    /// The whole data page `page` (what a `u32` grant reference names).
    pub const fn page(page: u32) -> Self {
        Self {
            offset: page.wrapping_mul(PAGE_SIZE as u32),
            len: PAGE_SIZE as u32,
        }
    }

    /// Little-endian wire form: offset, then length.
    pub fn to_bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.offset.to_le_bytes());
        b[4..].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Parses the wire form (any 8 bytes parse; validity is [`DataArea::check`]'s business).
    pub fn from_bytes(b: &[u8]) -> Result<Self, Error> {
        if b.len() < Self::SIZE {
            return Err(Error::Truncated);
        }
        Ok(Self {
            offset: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            len: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        })
    }
}

/// The data area of a channel as one end sees it: `pages` pages starting at byte `base` of the
/// region. Every access is validated here before it reaches the region.
#[derive(Debug, Clone)]
pub struct DataArea<M: SharedMem> {
    mem: M,
    base: usize,
    pages: u32,
}

impl<M: SharedMem> DataArea<M> {
    /// The data area `[base, base + pages * PAGE_SIZE)` of `mem`; [`Error::BadDataArea`] if it
    /// does not lie inside the region.
    pub fn new(mem: M, base: usize, pages: u32) -> Result<Self, Error> {
        let len = (pages as usize)
            .checked_mul(PAGE_SIZE)
            .ok_or(Error::BadDataArea)?;
        match base.checked_add(len) {
            Some(end) if end <= mem.len() => Ok(Self { mem, base, pages }),
            _ => Err(Error::BadDataArea),
        }
    }

    /// Number of pages.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.pages as usize * PAGE_SIZE
    }

    /// No pages at all.
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// Validates `r` against the data area: [`Error::BadRef`] unless `offset + len` lies inside.
    pub fn check(&self, r: DataRef) -> Result<(), Error> {
        match (r.offset as usize).checked_add(r.len as usize) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(Error::BadRef),
        }
    }

    /// Region offset of `at..at + n` inside `r`, after validating both.
    fn locate(&self, r: DataRef, at: usize, n: usize) -> Result<usize, Error> {
        self.check(r)?;
        match at.checked_add(n) {
            Some(end) if end <= r.len as usize => Ok(self.base + r.offset as usize + at),
            _ => Err(Error::BadOffset),
        }
    }

    /// Copies `dst.len()` bytes from `r` at `at` (both validated).
    pub fn read_ref(&self, r: DataRef, at: usize, dst: &mut [u8]) -> Result<(), Error> {
        let off = self.locate(r, at, dst.len())?;
        self.mem.read_bytes(off, dst);
        Ok(())
    }

    /// Copies `src` into `r` at `at` (both validated).
    pub fn write_ref(&self, r: DataRef, at: usize, src: &[u8]) -> Result<(), Error> {
        let off = self.locate(r, at, src.len())?;
        self.mem.write_bytes(off, src);
        Ok(())
    }

    /// Region offset of `(gref, offset, len)` with Xen's grant rules.
    fn locate_page(&self, gref: GrantRef, offset: usize, len: usize) -> Result<usize, Error> {
        if gref >= self.pages {
            return Err(Error::BadRef);
        }
        check_in_page(offset, len)?;
        Ok(self.base + gref as usize * PAGE_SIZE + offset)
    }
}

impl<M: SharedMem> DataArea<M> {
    /// Copies `dst.len()` bytes from data page `gref` at `offset` (grant rules: the page must
    /// exist, the range must stay inside it).
    pub fn copy_from_page(
        &self,
        gref: GrantRef,
        offset: usize,
        dst: &mut [u8],
    ) -> Result<(), Error> {
        let off = self.locate_page(gref, offset, dst.len())?;
        self.mem.read_bytes(off, dst);
        Ok(())
    }

    /// Copies `src` into data page `gref` at `offset` (grant rules).
    pub fn copy_to_page(&self, gref: GrantRef, offset: usize, src: &[u8]) -> Result<(), Error> {
        let off = self.locate_page(gref, offset, src.len())?;
        self.mem.write_bytes(off, src);
        Ok(())
    }
}

/// The netback engine's grant seam over the channel: a failed check is `GrantCopy` (the engine
/// answers that packet with an error) and nothing is copied.
impl<M: SharedMem> netback::GrantAccess for DataArea<M> {
    fn copy_from(
        &mut self,
        gref: GrantRef,
        offset: u16,
        dst: &mut [u8],
    ) -> Result<(), netback::Error> {
        self.copy_from_page(gref, offset.into(), dst)
            .map_err(|_| netback::Error::GrantCopy)
    }

    fn copy_to(&mut self, gref: GrantRef, offset: u16, src: &[u8]) -> Result<(), netback::Error> {
        self.copy_to_page(gref, offset.into(), src)
            .map_err(|_| netback::Error::GrantCopy)
    }
}

/// The frontend's allocator of data pages (a bitmap; the frontend owns the data area, the
/// backend only ever touches pages named in requests).
#[derive(Debug, Clone)]
pub struct PageAllocator {
    used: Vec<u64>,
    pages: u32,
    free: u32,
    hint: u32,
}

impl PageAllocator {
    /// All `pages` pages free.
    pub fn new(pages: u32) -> Self {
        Self {
            used: vec![0; (pages as usize).div_ceil(64)],
            pages,
            free: pages,
            hint: 0,
        }
    }

    /// Total pages.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Free pages.
    pub fn free_pages(&self) -> u32 {
        self.free
    }

    fn is_used(&self, p: u32) -> bool {
        self.used[p as usize / 64] & (1 << (p % 64)) != 0
    }

    fn set(&mut self, p: u32, on: bool) {
        let w = &mut self.used[p as usize / 64];
        if on {
            *w |= 1 << (p % 64);
        } else {
            *w &= !(1 << (p % 64));
        }
    }

    /// One free page (its number is the reference to put into requests).
    pub fn alloc(&mut self) -> Option<u32> {
        self.alloc_range(1)
    }

    /// `n` contiguous free pages (first fit from the last allocation); returns the first.
    pub fn alloc_range(&mut self, n: u32) -> Option<u32> {
        if n == 0 || n > self.free {
            return None;
        }
        for pass in 0..2 {
            let (mut p, end) = if pass == 0 {
                (self.hint, self.pages)
            } else {
                (0, self.hint.saturating_add(n).min(self.pages))
            };
            let mut run = 0u32;
            while p < end {
                if self.is_used(p) {
                    run = 0;
                } else {
                    run += 1;
                    if run == n {
                        let first = p + 1 - n;
                        for q in first..=p {
                            self.set(q, true);
                        }
                        self.free -= n;
                        self.hint = if p + 1 == self.pages { 0 } else { p + 1 };
                        return Some(first);
                    }
                }
                p += 1;
            }
        }
        None
    }

    /// Frees `n` pages from `first`; [`Error::BadRef`] if any of them is out of range or not
    /// allocated (nothing is freed then).
    pub fn free_range(&mut self, first: u32, n: u32) -> Result<(), Error> {
        let end = first.checked_add(n).ok_or(Error::BadRef)?;
        if end > self.pages || (first..end).any(|p| !self.is_used(p)) {
            return Err(Error::BadRef);
        }
        for p in first..end {
            self.set(p, false);
        }
        self.free += n;
        Ok(())
    }

    /// Frees one page.
    pub fn free(&mut self, page: u32) -> Result<(), Error> {
        self.free_range(page, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_abi::shmem::HostMem;

    #[test]
    fn grant_rules_match_xen() {
        let m = HostMem::pages(4);
        let d = DataArea::new(m.clone(), PAGE_SIZE, 3).unwrap();
        d.copy_to_page(2, 4000, &[7; 96]).unwrap();
        let mut b = [0u8; 96];
        d.copy_from_page(2, 4000, &mut b).unwrap();
        assert_eq!(b, [7; 96]);
        let mut raw = [0u8; 96];
        m.read_bytes(3 * PAGE_SIZE + 4000, &mut raw);
        assert_eq!(raw, [7; 96], "page 2 of the area is page 3 of the region");
        assert_eq!(d.copy_from_page(3, 0, &mut b), Err(Error::BadRef));
        assert_eq!(d.copy_from_page(u32::MAX, 0, &mut b), Err(Error::BadRef));
        assert_eq!(
            d.copy_to_page(0, 4001, &[0; 96]),
            Err(Error::BadOffset),
            "crosses the page"
        );
        assert_eq!(
            d.copy_from_page(0, usize::MAX, &mut b),
            Err(Error::BadOffset)
        );
        d.copy_from_page(0, PAGE_SIZE, &mut []).unwrap();
        assert!(DataArea::new(m.clone(), PAGE_SIZE, 4).is_err());
        assert!(DataArea::new(m, usize::MAX, 1).is_err());
    }

    #[test]
    fn implements_netbacks_grant_seam() {
        use netback::GrantAccess;
        let m = HostMem::pages(3);
        let mut d = DataArea::new(m.clone(), 2 * PAGE_SIZE, 1).unwrap();
        d.copy_to(0, 10, b"frame").unwrap();
        let mut b = [0u8; 5];
        d.copy_from(0, 10, &mut b).unwrap();
        assert_eq!(&b, b"frame");
        assert_eq!(d.copy_from(1, 0, &mut b), Err(netback::Error::GrantCopy));
        assert_eq!(d.copy_to(0, 4092, &b), Err(netback::Error::GrantCopy));
        let mut whole = [0u8; 3 * PAGE_SIZE];
        m.read_bytes(0, &mut whole);
        assert_eq!(
            whole.iter().filter(|&&x| x != 0).count(),
            5,
            "only the page was written"
        );
    }

    #[test]
    fn byte_range_refs() {
        let m = HostMem::pages(4);
        let d = DataArea::new(m, PAGE_SIZE, 3).unwrap();
        let r = DataRef {
            offset: 4000,
            len: 200,
        };
        d.write_ref(r, 0, &[1; 200]).unwrap();
        let mut b = [0u8; 100];
        d.read_ref(r, 100, &mut b).unwrap();
        assert_eq!(b, [1; 100]);
        assert_eq!(d.read_ref(r, 101, &mut b), Err(Error::BadOffset));
        assert_eq!(
            d.check(DataRef {
                offset: 3 * 4096 - 1,
                len: 2
            }),
            Err(Error::BadRef)
        );
        assert_eq!(
            d.check(DataRef {
                offset: u32::MAX,
                len: u32::MAX
            }),
            Err(Error::BadRef)
        );
        assert_eq!(d.check(DataRef::page(2)), Ok(()));
        assert_eq!(d.check(DataRef::page(3)), Err(Error::BadRef));
        assert_eq!(DataRef::from_bytes(&r.to_bytes()), Ok(r));
        assert_eq!(DataRef::from_bytes(&[0; 7]), Err(Error::Truncated));
    }

    #[test]
    fn allocator() {
        let mut a = PageAllocator::new(130);
        let p: Vec<u32> = (0..130).map(|_| a.alloc().unwrap()).collect();
        assert_eq!(p, (0..130).collect::<Vec<_>>());
        assert_eq!(a.alloc(), None);
        a.free(5).unwrap();
        assert_eq!(a.free(5), Err(Error::BadRef), "double free");
        assert_eq!(a.free(130), Err(Error::BadRef));
        assert_eq!(a.alloc(), Some(5));
        a.free_range(64, 10).unwrap();
        assert_eq!(a.alloc_range(11), None);
        assert_eq!(a.alloc_range(10), Some(64));
        assert_eq!(a.free_range(u32::MAX, 2), Err(Error::BadRef));
        assert_eq!(a.free_pages(), 0);
    }
}
