//! The shared-memory seam.
//!
//! Memory shared with another domain (a granted page, an ivshmem BAR, a QEMU control page) can
//! change under our feet at any moment. Rust references (`&T`/`&mut T`) promise the opposite, so
//! this crate never creates one into shared memory. Instead every access goes through
//! [`SharedMem`]: single loads and stores of naturally aligned `u16`/`u32`/`u64` values (with an
//! explicit memory ordering where the ring protocol needs one) and bulk copies into or out of
//! private buffers.
//!
//! Implementations:
//! * [`HostMem`] (feature `alloc`, on by default): a heap region of `AtomicU32` words, shareable
//!   between threads by cloning. No `unsafe`. Used by tests, fuzzing and benchmarks.
//! * `hal` (later): granted pages and ivshmem regions accessed through raw pointers with
//!   `core::ptr::read_volatile`/atomic-from-pointer operations. The trait is shaped so that such an
//!   implementation is a thin, bounds-checked wrapper around a base pointer and a length.
//!
//! Consumers are generic over `M: SharedMem` (static dispatch), so the hot path has no dynamic
//! calls and the copy loops inline into the ring code.
//!
//! ## Contract for implementors
//! * Offsets are byte offsets from the start of the region. A `u16`/`u32`/`u64` access must be at
//!   an offset that is a multiple of its size and lie inside the region, a byte copy must lie
//!   inside the region. Violations are caller bugs (the ring computes every offset from masked
//!   indices); implementations must detect them and panic rather than touch memory outside the
//!   region.
//! * `u32` loads and stores are single-copy atomic and honour the requested [`Ordering`] (an
//!   implementation may give a stronger one). `u16`/`u64`/byte accesses are relaxed; `u64` accesses
//!   need not be single-copy atomic (the ring protocol never relies on it).
//! * The byte layout is little-endian (the only byte order Xen uses on x86 and Arm).

use core::sync::atomic::{Ordering, fence};

/// A region of memory shared with a peer that may write it concurrently.
///
/// See the [module documentation](self) for the contract.
pub trait SharedMem {
    /// Size of the region in bytes.
    fn len(&self) -> usize;

    /// Whether the region is empty (zero bytes).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads a `u32` at `off` (4-byte aligned) with the given ordering (`Relaxed`, `Acquire` or
    /// `SeqCst`).
    fn load_u32(&self, off: usize, order: Ordering) -> u32;

    /// Stores a `u32` at `off` (4-byte aligned) with the given ordering (`Relaxed`, `Release` or
    /// `SeqCst`).
    fn store_u32(&self, off: usize, val: u32, order: Ordering);

    /// Relaxed load of a `u16` at `off` (2-byte aligned).
    fn load_u16(&self, off: usize) -> u16;

    /// Relaxed store of a `u16` at `off` (2-byte aligned).
    fn store_u16(&self, off: usize, val: u16);

    /// Relaxed load of a `u64` at `off` (8-byte aligned); not necessarily single-copy atomic.
    fn load_u64(&self, off: usize) -> u64;

    /// Relaxed store of a `u64` at `off` (8-byte aligned); not necessarily single-copy atomic.
    fn store_u64(&self, off: usize, val: u64);

    /// Copies `dst.len()` bytes starting at `off` out of the region (relaxed).
    fn read_bytes(&self, off: usize, dst: &mut [u8]);

    /// Copies `src` into the region starting at `off` (relaxed).
    fn write_bytes(&self, off: usize, src: &[u8]);

    /// A full memory barrier (`mb()` in Xen terms) between this side's earlier stores and later
    /// loads. The default is a sequentially consistent fence.
    fn full_fence(&self) {
        fence(Ordering::SeqCst);
    }
}

impl<M: SharedMem + ?Sized> SharedMem for &M {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        (**self).load_u32(off, order)
    }
    fn store_u32(&self, off: usize, val: u32, order: Ordering) {
        (**self).store_u32(off, val, order)
    }
    fn load_u16(&self, off: usize) -> u16 {
        (**self).load_u16(off)
    }
    fn store_u16(&self, off: usize, val: u16) {
        (**self).store_u16(off, val)
    }
    fn load_u64(&self, off: usize) -> u64 {
        (**self).load_u64(off)
    }
    fn store_u64(&self, off: usize, val: u64) {
        (**self).store_u64(off, val)
    }
    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        (**self).read_bytes(off, dst)
    }
    fn write_bytes(&self, off: usize, src: &[u8]) {
        (**self).write_bytes(off, src)
    }
    fn full_fence(&self) {
        (**self).full_fence()
    }
}

#[cfg(feature = "alloc")]
pub use host::HostMem;

#[cfg(feature = "alloc")]
mod host {
    use super::SharedMem;
    use alloc::sync::Arc;
    use alloc::vec::Vec;
    use core::sync::atomic::{AtomicU32, Ordering};

    /// Heap-backed shared region for host tests, fuzzing and benchmarks.
    ///
    /// The region is an array of `AtomicU32` words; clones share the same words, so one clone can
    /// be handed to a frontend thread and another to a backend thread, like a page mapped by two
    /// domains. Bulk copies move whole words with relaxed atomics (never per-byte atomics);
    /// bytes that only partly cover a word are merged with a compare-and-swap so that a
    /// concurrent writer of the other bytes of that word is never clobbered.
    #[derive(Clone, Debug)]
    pub struct HostMem {
        words: Arc<[AtomicU32]>,
    }

    impl HostMem {
        /// A zero-filled region of `len` bytes (rounded up to a multiple of 4).
        pub fn new(len: usize) -> Self {
            let n = len.div_ceil(4);
            let words: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            Self { words: words.into() }
        }

        /// A zero-filled region of `pages` 4 KiB pages.
        pub fn pages(pages: usize) -> Self {
            Self::new(pages * crate::PAGE_SIZE)
        }

        #[inline(always)]
        fn word(&self, off: usize) -> &AtomicU32 {
            &self.words[off / 4]
        }

        /// Replace bytes `lo..lo+bytes.len()` (all inside one word) of the word at `idx`.
        #[inline]
        fn merge_word(&self, idx: usize, lo: usize, bytes: &[u8]) {
            let w = &self.words[idx];
            let mut cur = w.load(Ordering::Relaxed);
            loop {
                let mut b = cur.to_le_bytes();
                b[lo..lo + bytes.len()].copy_from_slice(bytes);
                let new = u32::from_le_bytes(b);
                match w.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => return,
                    Err(actual) => cur = actual,
                }
            }
        }
    }

    impl SharedMem for HostMem {
        #[inline]
        fn len(&self) -> usize {
            self.words.len() * 4
        }

        #[inline]
        fn load_u32(&self, off: usize, order: Ordering) -> u32 {
            assert!(off.is_multiple_of(4), "misaligned u32 access");
            self.word(off).load(order)
        }

        #[inline]
        fn store_u32(&self, off: usize, val: u32, order: Ordering) {
            assert!(off.is_multiple_of(4), "misaligned u32 access");
            self.word(off).store(val, order)
        }

        #[inline]
        fn load_u16(&self, off: usize) -> u16 {
            assert!(off.is_multiple_of(2), "misaligned u16 access");
            let w = self.word(off).load(Ordering::Relaxed);
            (w >> ((off % 4) * 8)) as u16
        }

        #[inline]
        fn store_u16(&self, off: usize, val: u16) {
            assert!(off.is_multiple_of(2), "misaligned u16 access");
            self.merge_word(off / 4, off % 4, &val.to_le_bytes());
        }

        #[inline]
        fn load_u64(&self, off: usize) -> u64 {
            assert!(off.is_multiple_of(8), "misaligned u64 access");
            let lo = self.word(off).load(Ordering::Relaxed) as u64;
            let hi = self.word(off + 4).load(Ordering::Relaxed) as u64;
            lo | (hi << 32)
        }

        #[inline]
        fn store_u64(&self, off: usize, val: u64) {
            assert!(off.is_multiple_of(8), "misaligned u64 access");
            self.word(off).store(val as u32, Ordering::Relaxed);
            self.word(off + 4).store((val >> 32) as u32, Ordering::Relaxed);
        }

        #[inline]
        fn read_bytes(&self, off: usize, dst: &mut [u8]) {
            let end = off.checked_add(dst.len()).expect("offset overflow");
            assert!(end <= self.len(), "read outside the shared region");
            if off.is_multiple_of(4) {
                // Fast path: word-aligned start (every Xen ring slot is).
                let words = &self.words[off / 4..end.div_ceil(4)];
                let mut chunks = dst.chunks_exact_mut(4);
                for (c, w) in (&mut chunks).zip(words) {
                    c.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
                }
                let rem = chunks.into_remainder();
                if !rem.is_empty() {
                    let w = words[words.len() - 1].load(Ordering::Relaxed).to_le_bytes();
                    rem.copy_from_slice(&w[..rem.len()]);
                }
                return;
            }
            for (i, b) in dst.iter_mut().enumerate() {
                let o = off + i;
                *b = self.word(o).load(Ordering::Relaxed).to_le_bytes()[o % 4];
            }
        }

        #[inline]
        fn write_bytes(&self, off: usize, src: &[u8]) {
            let end = off.checked_add(src.len()).expect("offset overflow");
            assert!(end <= self.len(), "write outside the shared region");
            let mut pos = off;
            let mut rest = src;
            // Leading partial word.
            if !pos.is_multiple_of(4) && !rest.is_empty() {
                let lo = pos % 4;
                let n = (4 - lo).min(rest.len());
                self.merge_word(pos / 4, lo, &rest[..n]);
                pos += n;
                rest = &rest[n..];
            }
            // Whole words.
            let full = rest.len() / 4;
            let words = &self.words[pos / 4..pos / 4 + full];
            for (w, c) in words.iter().zip(rest.chunks_exact(4)) {
                w.store(u32::from_le_bytes([c[0], c[1], c[2], c[3]]), Ordering::Relaxed);
            }
            pos += full * 4;
            rest = &rest[full * 4..];
            // Trailing partial word.
            if !rest.is_empty() {
                self.merge_word(pos / 4, 0, rest);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn byte_and_word_views_agree() {
            let m = HostMem::new(64);
            m.write_bytes(1, &[1, 2, 3, 4, 5, 6, 7]);
            let mut b = [0u8; 10];
            m.read_bytes(0, &mut b);
            assert_eq!(b, [0, 1, 2, 3, 4, 5, 6, 7, 0, 0]);
            assert_eq!(m.load_u32(4, Ordering::Relaxed), u32::from_le_bytes([4, 5, 6, 7]));
            assert_eq!(m.load_u16(2), u16::from_le_bytes([2, 3]));
            m.store_u16(2, 0xbeef);
            assert_eq!(m.load_u16(2), 0xbeef);
            assert_eq!(m.load_u16(0), u16::from_le_bytes([0, 1]));
            m.store_u64(8, 0x0102_0304_0506_0708);
            assert_eq!(m.load_u64(8), 0x0102_0304_0506_0708);
            let mut c = [0u8; 3];
            m.read_bytes(9, &mut c);
            assert_eq!(c, [7, 6, 5]);
        }

        #[test]
        #[should_panic]
        fn out_of_bounds_read_panics_instead_of_escaping() {
            let m = HostMem::new(16);
            let mut b = [0u8; 4];
            m.read_bytes(14, &mut b);
        }

        #[test]
        fn clones_share_storage() {
            let a = HostMem::new(8);
            let b = a.clone();
            a.store_u32(4, 7, Ordering::Release);
            assert_eq!(b.load_u32(4, Ordering::Acquire), 7);
        }
    }
}
