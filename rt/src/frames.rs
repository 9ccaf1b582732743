//! Physical frame allocator: one bit per 4 KiB frame (1 = free), contiguous runs with alignment.
//!
//! The bitmap is generic over its storage so the kernel can keep it in `.bss` while host tests use
//! a small array.

use crate::memmap::PAGE;

/// Why an allocation or a free was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// No free run of the requested length and alignment.
    OutOfFrames,
    /// The range is outside what the allocator manages, unaligned, or not allocated.
    BadRange,
}

/// A bitmap allocator over frames `[0, 64 * N)` of physical memory.
pub struct FrameAllocator<const N: usize> {
    bits: [u64; N],
    free: usize,
    hint: usize,
}

impl<const N: usize> Default for FrameAllocator<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameAllocator<N> {
    /// Number of frames the bitmap can describe.
    pub const CAPACITY: usize = N * 64;

    /// An allocator with no free frames.
    pub const fn new() -> Self {
        FrameAllocator { bits: [0; N], free: 0, hint: 0 }
    }

    /// Free frames left.
    pub fn free_frames(&self) -> usize {
        self.free
    }

    /// Marks the frames of `[start, end)` (page-aligned addresses) free. Frames beyond the bitmap
    /// are ignored; frames already free stay free.
    pub fn add_range(&mut self, start: u64, end: u64) {
        let first = start.div_ceil(PAGE);
        let last = (end / PAGE).min(Self::CAPACITY as u64);
        for frame in first..last {
            self.set(frame as usize, true);
        }
    }

    /// Allocates `count` contiguous frames whose first frame number is a multiple of `align`
    /// frames (a power of two). Returns the physical address of the first frame.
    pub fn alloc(&mut self, count: usize, align: usize) -> Result<u64, FrameError> {
        if count == 0 || !align.is_power_of_two() || count > self.free {
            return Err(FrameError::OutOfFrames);
        }
        let found = self.find_run(self.hint, Self::CAPACITY, count, align)
            .or_else(|| self.find_run(0, Self::CAPACITY, count, align))
            .ok_or(FrameError::OutOfFrames)?;
        for frame in found..found + count {
            self.set(frame, false);
        }
        self.hint = found + count;
        Ok(found as u64 * PAGE)
    }

    /// Returns `count` frames starting at `addr`, which must all be allocated.
    pub fn free(&mut self, addr: u64, count: usize) -> Result<(), FrameError> {
        if !addr.is_multiple_of(PAGE) {
            return Err(FrameError::BadRange);
        }
        let first = (addr / PAGE) as usize;
        let end = first.checked_add(count).ok_or(FrameError::BadRange)?;
        if end > Self::CAPACITY || (first..end).any(|f| self.is_free(f)) {
            return Err(FrameError::BadRange);
        }
        for frame in first..end {
            self.set(frame, true);
        }
        self.hint = self.hint.min(first);
        Ok(())
    }

    fn find_run(&self, from: usize, to: usize, count: usize, align: usize) -> Option<usize> {
        let mut start = from.next_multiple_of(align);
        while start + count <= to {
            // Skip whole used words quickly.
            if start.is_multiple_of(64) && self.bits[start / 64] == 0 {
                start = (start + 64).next_multiple_of(align);
                continue;
            }
            match (start..start + count).find(|&f| !self.is_free(f)) {
                None => return Some(start),
                Some(used) => start = (used + 1).next_multiple_of(align),
            }
        }
        None
    }

    fn is_free(&self, frame: usize) -> bool {
        self.bits[frame / 64] & (1 << (frame % 64)) != 0
    }

    fn set(&mut self, frame: usize, free: bool) {
        let (word, bit) = (frame / 64, 1u64 << (frame % 64));
        let was = self.bits[word] & bit != 0;
        if free && !was {
            self.bits[word] |= bit;
            self.free += 1;
        } else if !free && was {
            self.bits[word] &= !bit;
            self.free -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_empty_and_counts_ranges() {
        let mut a = FrameAllocator::<4>::new();
        assert_eq!(a.alloc(1, 1), Err(FrameError::OutOfFrames));
        a.add_range(0x1000, 0x5800); // frames 1..5 (partial last frame excluded)
        assert_eq!(a.free_frames(), 4);
        a.add_range(0x1000, 0x3000); // already free: no double count
        assert_eq!(a.free_frames(), 4);
        a.add_range(0, u64::MAX); // clipped to capacity
        assert_eq!(a.free_frames(), 256);
    }

    #[test]
    fn contiguous_aligned_and_exhaustion() {
        let mut a = FrameAllocator::<2>::new();
        a.add_range(0x3000, 0x80000); // frames 3..128
        let p = a.alloc(4, 4).unwrap();
        assert_eq!(p, 0x4000);
        let q = a.alloc(1, 1).unwrap();
        assert_eq!(q, 0x8000);
        let r = a.alloc(16, 16).unwrap();
        assert_eq!(r % (16 * PAGE), 0);
        assert!(r >= 0x9000);
        // Everything must come back exactly once.
        let mut got = 4 + 1 + 16;
        while a.alloc(1, 1).is_ok() {
            got += 1;
        }
        assert_eq!(got, 128 - 3);
        assert_eq!(a.free_frames(), 0);
    }

    #[test]
    fn free_validates_and_allows_reuse() {
        let mut a = FrameAllocator::<1>::new();
        a.add_range(0, 64 * PAGE);
        let p = a.alloc(8, 1).unwrap();
        assert_eq!(a.free(p + 1, 1), Err(FrameError::BadRange));
        assert_eq!(a.free(p, 100), Err(FrameError::BadRange));
        assert_eq!(a.free(p, usize::MAX), Err(FrameError::BadRange));
        a.free(p, 8).unwrap();
        assert_eq!(a.free(p, 8), Err(FrameError::BadRange), "double free is refused");
        assert_eq!(a.alloc(64, 1), Ok(0));
    }

    #[test]
    fn fragmentation_finds_the_gap() {
        let mut a = FrameAllocator::<1>::new();
        a.add_range(0, 64 * PAGE);
        let all: [u64; 8] = core::array::from_fn(|_| a.alloc(8, 1).unwrap());
        a.free(all[3], 8).unwrap();
        assert_eq!(a.alloc(9, 1), Err(FrameError::OutOfFrames));
        assert_eq!(a.alloc(8, 8), Ok(all[3]));
    }
}
