//! A stream's shared buffer: the pages named by the OPEN request's page directory, and copies
//! between byte ranges of the buffer and private slices, through [`GrantAccess`].
//!
//! The directory (`struct xensnd_page_directory`): `gref_dir_next_page` u32 @0, then
//! `gref[i]` u32 @4+4i up to the end of the page (1023 per page); the number of buffer pages is
//! `ceil(buffer_sz / 4096)`, a further directory page is followed only while references are
//! still missing (so a guest cannot make the backend walk a loop), and only the bytes needed are
//! copied.

use alloc::vec::Vec;

use netback::GrantAccess;
use xen_abi::{GrantRef, PAGE_SIZE};

/// Grant references per directory page.
pub const REFS_PER_DIR_PAGE: usize = (PAGE_SIZE - 4) / 4;

/// The failure of a buffer operation (answered as `EIO` or `EINVAL` by the engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferFault {
    /// A grant copy failed.
    Grant,
    /// The directory ended (next page 0) before every page was named.
    ShortDirectory,
}

/// The pages of one stream's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedBuffer {
    pages: Vec<GrantRef>,
    len: u32,
}

impl SharedBuffer {
    /// Reads the directory starting at `first` for a buffer of `len` octets.
    pub fn from_directory<G: GrantAccess + ?Sized>(
        g: &mut G,
        first: GrantRef,
        len: u32,
    ) -> Result<Self, BufferFault> {
        let n = (len as usize).div_ceil(PAGE_SIZE);
        let mut pages = Vec::with_capacity(n);
        let mut dir = first;
        let mut raw = [0u8; 4 + 4 * 64];
        while pages.len() < n {
            let take = (n - pages.len()).min(REFS_PER_DIR_PAGE);
            let mut next = [0u8; 4];
            g.copy_from(dir, 0, &mut next)
                .map_err(|_| BufferFault::Grant)?;
            let mut done = 0;
            while done < take {
                let k = (take - done).min(64);
                let dst = &mut raw[..4 * k];
                g.copy_from(dir, (4 + 4 * done) as u16, dst)
                    .map_err(|_| BufferFault::Grant)?;
                pages.extend(
                    dst.chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
                done += k;
            }
            if pages.len() < n {
                dir = u32::from_le_bytes(next);
                if dir == 0 {
                    return Err(BufferFault::ShortDirectory);
                }
            }
        }
        Ok(Self { pages, len })
    }

    /// Buffer size, octets.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the buffer is empty (never, for an opened stream).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer's grant references.
    pub fn pages(&self) -> &[GrantRef] {
        &self.pages
    }

    fn split(
        &self,
        offset: u32,
        len: usize,
    ) -> Option<impl Iterator<Item = (GrantRef, u16, usize)> + '_> {
        if offset as u64 + len as u64 > self.len as u64 {
            return None;
        }
        let mut off = offset as usize;
        let end = off + len;
        Some(core::iter::from_fn(move || {
            if off >= end {
                return None;
            }
            let in_page = off % PAGE_SIZE;
            let n = (PAGE_SIZE - in_page).min(end - off);
            let r = (self.pages[off / PAGE_SIZE], in_page as u16, n);
            off += n;
            Some(r)
        }))
    }

    /// Copies `dst.len()` octets from `offset` of the buffer.
    pub fn read<G: GrantAccess + ?Sized>(
        &self,
        g: &mut G,
        offset: u32,
        dst: &mut [u8],
    ) -> Result<(), BufferFault> {
        let mut at = 0;
        for (gref, off, n) in self.split(offset, dst.len()).ok_or(BufferFault::Grant)? {
            g.copy_from(gref, off, &mut dst[at..at + n])
                .map_err(|_| BufferFault::Grant)?;
            at += n;
        }
        Ok(())
    }

    /// Copies `src` to `offset` of the buffer.
    pub fn write<G: GrantAccess + ?Sized>(
        &self,
        g: &mut G,
        offset: u32,
        src: &[u8],
    ) -> Result<(), BufferFault> {
        let mut at = 0;
        for (gref, off, n) in self.split(offset, src.len()).ok_or(BufferFault::Grant)? {
            g.copy_to(gref, off, &src[at..at + n])
                .map_err(|_| BufferFault::Grant)?;
            at += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use netback::grant::FakeGrants;

    #[test]
    fn directory_and_copies_across_pages() {
        let mut g = FakeGrants::new();
        g.grant(10, true);
        let refs = [20u32, 21, 22];
        for (i, r) in refs.iter().enumerate() {
            g.grant(*r, false);
            g.page_mut(10).unwrap()[4 + 4 * i..8 + 4 * i].copy_from_slice(&r.to_le_bytes());
        }
        let b = SharedBuffer::from_directory(&mut g, 10, 3 * 4096 - 100).unwrap();
        assert_eq!(b.pages(), &refs);
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        b.write(&mut g, 4000, &data).unwrap();
        assert_eq!(g.page(20).unwrap()[4000..], data[..96]);
        assert_eq!(g.page(21).unwrap()[..], data[96..4192]);
        let mut back = vec![0u8; 5000];
        b.read(&mut g, 4000, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(
            b.read(&mut g, 8000, &mut back),
            Err(BufferFault::Grant),
            "past the end"
        );
        // References are checked when used: a fourth page named 0 (not granted) fails its copy.
        let b4 = SharedBuffer::from_directory(&mut g, 10, 4 * 4096).unwrap();
        assert_eq!(b4.pages()[3], 0);
        assert_eq!(
            b4.read(&mut g, 3 * 4096, &mut back[..10]),
            Err(BufferFault::Grant)
        );
        assert_eq!(
            SharedBuffer::from_directory(&mut g, 99, 4096),
            Err(BufferFault::Grant)
        );
        assert_eq!(g.range_violations(), 0);
    }

    #[test]
    fn multi_page_directory() {
        let mut g = FakeGrants::new();
        let n = REFS_PER_DIR_PAGE + 5;
        g.grant(1, true);
        g.grant(2, true);
        g.page_mut(1).unwrap()[..4].copy_from_slice(&2u32.to_le_bytes());
        for i in 0..n {
            let page = if i < REFS_PER_DIR_PAGE { 1 } else { 2 };
            let slot = i % REFS_PER_DIR_PAGE;
            g.page_mut(page).unwrap()[4 + 4 * slot..8 + 4 * slot]
                .copy_from_slice(&(1000 + i as u32).to_le_bytes());
        }
        let b = SharedBuffer::from_directory(&mut g, 1, (n * 4096) as u32).unwrap();
        assert_eq!(b.pages().len(), n);
        assert_eq!(b.pages()[n - 1], 1000 + n as u32 - 1);
        // The same directory without its second page.
        g.page_mut(1).unwrap()[..4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            SharedBuffer::from_directory(&mut g, 1, (n * 4096) as u32),
            Err(BufferFault::ShortDirectory)
        );
    }
}
