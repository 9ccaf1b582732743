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
//! * [`HostMem`] (feature `alloc`, on by default): a cache-line-aligned heap region of atomic
//!   words (`AtomicU32` for the first 64 bytes, where ring indices live, `AtomicU64` after),
//!   shareable between threads by cloning. No `unsafe`. Used by tests, fuzzing and benchmarks.
//! * `hal` (later): granted pages and ivshmem regions accessed through raw pointers with
//!   `core::ptr::read_volatile`/atomic-from-pointer operations. The trait is shaped so that such an
//!   implementation is a thin, bounds-checked wrapper around a base pointer and a length.
//!
//! Consumers are generic over `M: SharedMem` (static dispatch), so the hot path has no dynamic
//! calls and the copy loops inline into the ring code.
//!
//! Optional fast path: [`SharedMem::words`] may hand out a [`Words`] window (relaxed atomic
//! loads/stores of whole 64-bit words, each checked against the window, no reference to the
//! bytes). The ring checks the region's bounds once per run of slots with it, after which
//! field accesses at constant offsets need no check. `HostMem` provides it past the header; the
//! default is `None` and every access takes the checked per-access path.
//!
//! ## Notes for the pointer-backed implementation (`hal`)
//! Hold a base pointer and a length for a mapping that stays valid for the implementor's
//! lifetime. Check `off + size <= len` (and alignment) on every call, then: `u32` accesses via
//! `AtomicU32::from_ptr(base.add(off).cast())` with the given ordering (the peer runs on another
//! CPU; plain volatile accesses plus fences would also do on x86, atomics are portable);
//! `u16`/`u64` via `read_volatile`/`write_volatile`; byte copies as a loop of aligned `u64`
//! volatile accesses with ragged ends (never `copy_nonoverlapping`, which may be elided or
//! re-read, and never a slice over the mapping). `full_fence` can stay the default.
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

use core::sync::atomic::{AtomicU64, Ordering, fence};

/// A window of whole 64-bit words of a shared region, handed out by [`SharedMem::words`].
///
/// It is an accessor, not a view of the bytes: the only operations are relaxed loads and stores
/// of single words (and copies built from them), each checked against the window, so nothing
/// outside it is reachable and no `&`/`&mut` to the bytes ever exists. Its point is speed: the
/// region's bounds are checked once for a whole run of ring slots, after which an access at a
/// constant offset inside a slot needs no check at run time.
#[derive(Debug, Clone, Copy)]
pub struct Words<'a>(pub(crate) &'a [AtomicU64]);

impl<'a> Words<'a> {
    /// A window over `words` (for implementors of [`SharedMem::words`] whose region is held as
    /// atomic words, e.g. created with `AtomicU64::from_ptr` over a mapping).
    #[inline(always)]
    pub fn new(words: &'a [AtomicU64]) -> Self {
        Self(words)
    }

    /// Number of words in the window.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the window holds no word.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Relaxed load of word `i` (its bytes in little-endian order); panics if `i` is outside
    /// the window.
    #[inline(always)]
    pub fn load(&self, i: usize) -> u64 {
        self.0[i].load(Ordering::Relaxed)
    }

    /// Relaxed store of word `i`; panics if `i` is outside the window.
    #[inline(always)]
    pub fn store(&self, i: usize, v: u64) {
        self.0[i].store(v, Ordering::Relaxed)
    }

    /// Words `start..start + n` as a window of their own; panics if outside this one.
    #[inline(always)]
    pub fn sub(&self, start: usize, n: usize) -> Words<'a> {
        Words(&self.0[start..start + n])
    }
}

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

    /// Optional fast path: a [`Words`] window over bytes `off..off + len` if the implementation
    /// holds them as whole 64-bit words (`off` and `len` multiples of 8), else `None` (the
    /// default), in which case callers use the other accessors. A range outside the region is
    /// a caller bug and panics, like any other access. Word accesses through the window are
    /// relaxed and interoperate with every other accessor of the same bytes.
    #[inline(always)]
    fn words(&self, off: usize, len: usize) -> Option<Words<'_>> {
        let _ = (off, len);
        None
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
    #[inline(always)]
    fn words(&self, off: usize, len: usize) -> Option<Words<'_>> {
        (**self).words(off, len)
    }
}

#[cfg(feature = "alloc")]
pub use host::HostMem;

#[cfg(feature = "alloc")]
mod host {
    use super::{SharedMem, Words};
    use alloc::sync::Arc;
    use alloc::vec::Vec;
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    /// Bytes at the start of the region held as 32-bit words (one cache line).
    const HEAD: usize = 64;

    /// Heap-backed shared region for host tests, fuzzing and benchmarks.
    ///
    /// Clones share the same storage, so one clone can be handed to a frontend thread and another
    /// to a backend thread, like a page mapped by two domains. The first 64 bytes (one cache line:
    /// a ring header, whose `u32` indices are written by different sides) are held as `AtomicU32`
    /// words, so an index store is a plain atomic store, as on real shared memory. The rest is held
    /// as `AtomicU64` words, so bulk copies move whole 8-byte words with relaxed atomics (never
    /// per-byte atomics). Stores that cover only part of a word (a `u32` or `u16` inside a 64-bit
    /// word, the ragged ends of a copy) are merged with a compare-and-swap, so a concurrent writer
    /// of the other bytes of that word is never clobbered; `u32` loads/stores honour the requested
    /// ordering.
    #[derive(Clone, Debug)]
    pub struct HostMem {
        /// Backing 32-bit words of bytes `0..64`: `head[hbase..hbase + 16]` (a constant split
        /// point, so that the offset arithmetic of slot accesses folds away).
        head: Arc<[AtomicU32]>,
        /// First word of the head, chosen so that it starts on a 64-byte boundary.
        hbase: usize,
        /// Region length in bytes (a multiple of 8; may be below 64).
        len: usize,
        /// Backing 64-bit words of bytes `64..len`: `words[base..base + (len - 64) / 8]`.
        words: Arc<[AtomicU64]>,
        /// First word: chosen so that byte 64 of the region starts on a 64-byte boundary, like a
        /// real page, so that 64-byte slots each occupy exactly one cache line.
        base: usize,
    }

    /// CAS ordering pair for a store with ordering `order`.
    #[inline(always)]
    fn cas_orders(order: Ordering) -> (Ordering, Ordering) {
        match order {
            Ordering::SeqCst => (Ordering::SeqCst, Ordering::Relaxed),
            Ordering::Release | Ordering::AcqRel => (Ordering::Release, Ordering::Relaxed),
            _ => (Ordering::Relaxed, Ordering::Relaxed),
        }
    }

    /// Number of leading elements to skip so that the rest starts on a 64-byte boundary
    /// (address arithmetic only, no dereference; the Arc's heap block never moves).
    fn align_skip<T>(slice: &[T]) -> usize {
        let addr = slice.as_ptr() as usize;
        (64 - addr % 64) % 64 / core::mem::size_of::<T>()
    }

    impl HostMem {
        /// A zero-filled region of `len` bytes (rounded up to a multiple of 8), starting on a
        /// 64-byte boundary.
        pub fn new(len: usize) -> Self {
            let len = len.div_ceil(8) * 8;
            let head: Vec<AtomicU32> = (0..HEAD / 4 + 15).map(|_| AtomicU32::new(0)).collect();
            let head: Arc<[AtomicU32]> = head.into();
            let hbase = align_skip(&head);
            let nwords = len.saturating_sub(HEAD) / 8;
            let words: Vec<AtomicU64> = (0..nwords + 7).map(|_| AtomicU64::new(0)).collect();
            let words: Arc<[AtomicU64]> = words.into();
            let base = align_skip(&words);
            Self {
                head,
                hbase,
                len,
                words,
                base,
            }
        }

        /// A zero-filled region of `pages` 4 KiB pages.
        pub fn pages(pages: usize) -> Self {
            Self::new(pages * crate::PAGE_SIZE)
        }

        #[inline(always)]
        fn h32(&self, off: usize) -> &AtomicU32 {
            assert!(off < self.len, "access outside the shared region");
            &self.head[self.hbase + off / 4]
        }

        #[inline(always)]
        fn w64(&self, off: usize) -> &AtomicU64 {
            // `len` is a multiple of 8, so the word holding byte `off` lies wholly inside the
            // region when `off` does (the backing array has spare words for alignment: they
            // must stay unreachable).
            assert!(off < self.len, "access outside the shared region");
            &self.words[self.base + (off - HEAD) / 8]
        }

        /// Replaces bytes `lo..lo + bytes.len()` of the 64-bit word holding byte `off`,
        /// atomically with respect to concurrent writers of its other bytes.
        #[inline]
        fn merge64(&self, off: usize, lo: usize, bytes: &[u8], order: Ordering) {
            let w = self.w64(off);
            let (ok, fail) = cas_orders(order);
            let mut cur = w.load(Ordering::Relaxed);
            loop {
                let mut b = cur.to_le_bytes();
                b[lo..lo + bytes.len()].copy_from_slice(bytes);
                let new = u64::from_le_bytes(b);
                match w.compare_exchange_weak(cur, new, ok, fail) {
                    Ok(_) => return,
                    Err(actual) => cur = actual,
                }
            }
        }

        /// Like [`merge64`](Self::merge64) for a 32-bit word of the head.
        #[inline]
        fn merge32(&self, off: usize, lo: usize, bytes: &[u8]) {
            let w = self.h32(off);
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

        #[inline(always)]
        fn bytes64(&self, off: usize, order: Ordering) -> [u8; 8] {
            self.w64(off).load(order).to_le_bytes()
        }

        #[inline(always)]
        fn check(&self, off: usize, len: usize) {
            let end = off.checked_add(len).expect("offset overflow");
            assert!(end <= self.len(), "access outside the shared region");
        }

        /// Copies bytes `off..off + dst.len()`, all inside the head, out (relaxed).
        fn read_head(&self, off: usize, dst: &mut [u8]) {
            let mut pos = off;
            let mut rest = dst;
            while !rest.is_empty() {
                let lo = pos % 4;
                let n = (4 - lo).min(rest.len());
                let b = self.h32(pos).load(Ordering::Relaxed).to_le_bytes();
                rest[..n].copy_from_slice(&b[lo..lo + n]);
                pos += n;
                rest = &mut rest[n..];
            }
        }

        /// Copies `src` into bytes `off..off + src.len()`, all inside the head (relaxed).
        fn write_head(&self, off: usize, src: &[u8]) {
            let mut pos = off;
            let mut rest = src;
            while !rest.is_empty() {
                let lo = pos % 4;
                let n = (4 - lo).min(rest.len());
                if n == 4 {
                    let mut a = [0u8; 4];
                    a.copy_from_slice(&rest[..4]);
                    self.h32(pos)
                        .store(u32::from_le_bytes(a), Ordering::Relaxed);
                } else {
                    self.merge32(pos, lo, &rest[..n]);
                }
                pos += n;
                rest = &rest[n..];
            }
        }
    }

    impl HostMem {
        /// Any byte copy out of the region (header words, ragged ends).
        fn read_bytes_general(&self, off: usize, dst: &mut [u8]) {
            self.check(off, dst.len());
            let mut pos = off;
            let mut rest = &mut dst[..];
            if pos < HEAD {
                let n = (HEAD - pos).min(rest.len());
                self.read_head(pos, &mut rest[..n]);
                pos += n;
                rest = &mut rest[n..];
            }
            if rest.is_empty() {
                return;
            }
            // Ragged head (e.g. a 12-byte netif slot starting at 4 mod 8).
            if !pos.is_multiple_of(8) {
                let lo = pos % 8;
                let n = (8 - lo).min(rest.len());
                let b = self.bytes64(pos, Ordering::Relaxed);
                rest[..n].copy_from_slice(&b[lo..lo + n]);
                pos += n;
                rest = &mut rest[n..];
            }
            // Whole words.
            let full = rest.len() / 8;
            let first = self.base + (pos - HEAD) / 8;
            let words = &self.words[first..first + full];
            let (body, tail) = rest.split_at_mut(full * 8);
            for (c, w) in body.chunks_exact_mut(8).zip(words) {
                c.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
            }
            // Ragged tail.
            if !tail.is_empty() {
                let b = self.bytes64(pos + full * 8, Ordering::Relaxed);
                let n = tail.len();
                tail.copy_from_slice(&b[..n]);
            }
        }

        /// Any byte copy into the region (header words, ragged ends).
        fn write_bytes_general(&self, off: usize, src: &[u8]) {
            self.check(off, src.len());
            let mut pos = off;
            let mut rest = src;
            if pos < HEAD {
                let n = (HEAD - pos).min(rest.len());
                self.write_head(pos, &rest[..n]);
                pos += n;
                rest = &rest[n..];
            }
            if rest.is_empty() {
                return;
            }
            if !pos.is_multiple_of(8) {
                let lo = pos % 8;
                let n = (8 - lo).min(rest.len());
                self.merge64(pos, lo, &rest[..n], Ordering::Relaxed);
                pos += n;
                rest = &rest[n..];
            }
            let full = rest.len() / 8;
            let first = self.base + (pos - HEAD) / 8;
            let words = &self.words[first..first + full];
            let (body, tail) = rest.split_at(full * 8);
            for (w, c) in words.iter().zip(body.chunks_exact(8)) {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                w.store(u64::from_le_bytes(a), Ordering::Relaxed);
            }
            if !tail.is_empty() {
                self.merge64(pos + full * 8, 0, tail, Ordering::Relaxed);
            }
        }
    }

    impl SharedMem for HostMem {
        #[inline]
        fn len(&self) -> usize {
            self.len
        }

        #[inline]
        fn load_u32(&self, off: usize, order: Ordering) -> u32 {
            assert!(off.is_multiple_of(4), "misaligned u32 access");
            if off < HEAD {
                return self.h32(off).load(order);
            }
            let b = self.bytes64(off, order);
            let lo = off % 8;
            u32::from_le_bytes([b[lo], b[lo + 1], b[lo + 2], b[lo + 3]])
        }

        #[inline]
        fn store_u32(&self, off: usize, val: u32, order: Ordering) {
            assert!(off.is_multiple_of(4), "misaligned u32 access");
            if off < HEAD {
                return self.h32(off).store(val, order);
            }
            self.merge64(off, off % 8, &val.to_le_bytes(), order);
        }

        #[inline]
        fn load_u16(&self, off: usize) -> u16 {
            assert!(off.is_multiple_of(2), "misaligned u16 access");
            if off < HEAD {
                return (self.h32(off).load(Ordering::Relaxed) >> (8 * (off % 4))) as u16;
            }
            let b = self.bytes64(off, Ordering::Relaxed);
            let lo = off % 8;
            u16::from_le_bytes([b[lo], b[lo + 1]])
        }

        #[inline]
        fn store_u16(&self, off: usize, val: u16) {
            assert!(off.is_multiple_of(2), "misaligned u16 access");
            if off < HEAD {
                return self.merge32(off, off % 4, &val.to_le_bytes());
            }
            self.merge64(off, off % 8, &val.to_le_bytes(), Ordering::Relaxed);
        }

        #[inline]
        fn load_u64(&self, off: usize) -> u64 {
            assert!(off.is_multiple_of(8), "misaligned u64 access");
            if off < HEAD {
                let lo = self.h32(off).load(Ordering::Relaxed);
                let hi = self.h32(off + 4).load(Ordering::Relaxed);
                return u64::from(lo) | (u64::from(hi) << 32);
            }
            self.w64(off).load(Ordering::Relaxed)
        }

        #[inline]
        fn store_u64(&self, off: usize, val: u64) {
            assert!(off.is_multiple_of(8), "misaligned u64 access");
            if off < HEAD {
                self.h32(off).store(val as u32, Ordering::Relaxed);
                self.h32(off + 4)
                    .store((val >> 32) as u32, Ordering::Relaxed);
                return;
            }
            self.w64(off).store(val, Ordering::Relaxed)
        }

        #[inline(always)]
        fn read_bytes(&self, off: usize, dst: &mut [u8]) {
            // Fast path, inlined: whole aligned words past the header (ring slots whose size is
            // a multiple of 8). One relaxed 8-byte load per word, no ragged ends.
            if off >= HEAD && off.is_multiple_of(8) && dst.len().is_multiple_of(8) {
                self.check(off, dst.len());
                let first = self.base + (off - HEAD) / 8;
                let words = &self.words[first..first + dst.len() / 8];
                for (c, w) in dst.chunks_exact_mut(8).zip(words) {
                    c.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
                }
            } else {
                self.read_bytes_general(off, dst);
            }
        }

        #[inline(always)]
        fn write_bytes(&self, off: usize, src: &[u8]) {
            // Fast path, inlined: whole aligned words past the header.
            if off >= HEAD && off.is_multiple_of(8) && src.len().is_multiple_of(8) {
                self.check(off, src.len());
                let first = self.base + (off - HEAD) / 8;
                let words = &self.words[first..first + src.len() / 8];
                for (w, c) in words.iter().zip(src.chunks_exact(8)) {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    w.store(u64::from_le_bytes(a), Ordering::Relaxed);
                }
            } else {
                self.write_bytes_general(off, src);
            }
        }

        /// Every whole-word range past the header: one check for the whole range.
        #[inline(always)]
        fn words(&self, off: usize, len: usize) -> Option<Words<'_>> {
            if off < HEAD || !off.is_multiple_of(8) || !len.is_multiple_of(8) {
                return None;
            }
            self.check(off, len);
            let first = self.base + (off - HEAD) / 8;
            Some(Words(&self.words[first..first + len / 8]))
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
            assert_eq!(
                m.load_u32(4, Ordering::Relaxed),
                u32::from_le_bytes([4, 5, 6, 7])
            );
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
            assert_eq!(m.len(), 16);
            let mut b = [0u8; 4];
            m.read_bytes(14, &mut b);
        }

        #[test]
        fn word_accesses_past_the_end_panic_even_with_spare_backing_words() {
            // 128 bytes: bytes 64..128 are words, and the backing array holds spare words past
            // them (alignment slack) that must stay out of reach.
            let m = HostMem::new(128);
            m.store_u64(120, 7);
            assert_eq!(m.load_u64(120), 7);
            for off in [128usize, 136, 184] {
                let load = std::panic::catch_unwind(|| m.load_u64(off));
                assert!(load.is_err(), "load_u64({off}) did not panic");
                let store = std::panic::catch_unwind(|| m.store_u64(off, 1));
                assert!(store.is_err(), "store_u64({off}) did not panic");
                let word = std::panic::catch_unwind(|| m.load_u32(off, Ordering::Relaxed));
                assert!(word.is_err(), "load_u32({off}) did not panic");
            }
        }

        #[test]
        fn ragged_copies() {
            let m = HostMem::new(64);
            let src: [u8; 23] = core::array::from_fn(|i| i as u8 + 1);
            for off in 0..(64 - 23) {
                m.write_bytes(0, &[0u8; 64]);
                m.write_bytes(off, &src);
                let mut all = [0u8; 64];
                m.read_bytes(0, &mut all);
                assert!(all[..off].iter().all(|&b| b == 0));
                assert_eq!(&all[off..off + 23], &src);
                assert!(all[off + 23..].iter().all(|&b| b == 0));
                let mut back = [0u8; 23];
                m.read_bytes(off, &mut back);
                assert_eq!(back, src);
            }
        }

        #[test]
        fn concurrent_writers_of_one_word_do_not_clobber_each_other() {
            let m = HostMem::new(8);
            let m2 = m.clone();
            let t = std::thread::spawn(move || {
                for i in 0..100_000u32 {
                    m2.store_u32(0, i, Ordering::Release);
                }
            });
            for i in 0..100_000u32 {
                m.write_bytes(4, &i.to_le_bytes());
            }
            t.join().unwrap();
            assert_eq!(m.load_u32(0, Ordering::Acquire), 99_999);
            assert_eq!(m.load_u32(4, Ordering::Acquire), 99_999);
        }

        #[test]
        fn region_is_cache_line_aligned() {
            for len in [8, 64, 4096, 12345] {
                let m = HostMem::new(len);
                let head = m.head[m.hbase..].as_ptr() as usize;
                assert_eq!(head % 64, 0);
                let start = m.words[m.base..].as_ptr() as usize;
                assert_eq!(start % 64, 0);
                assert!(m.len() >= len);
                assert!(m.base + m.len().saturating_sub(HEAD) / 8 <= m.words.len());
                assert!(m.hbase + HEAD / 4 <= m.head.len());
            }
        }

        #[test]
        fn copies_across_the_head_boundary_and_concurrent_index_writers() {
            let m = HostMem::new(320);
            let src: Vec<u8> = (0..200u32).map(|i| (i * 7 + 1) as u8).collect();
            for off in [0, 1, 3, 30, 57, 60, 63, 64, 65] {
                m.write_bytes(0, &[0u8; 320]);
                m.write_bytes(off, &src);
                let mut all = [0u8; 320];
                m.read_bytes(0, &mut all);
                assert!(all[..off].iter().all(|&b| b == 0));
                assert_eq!(&all[off..off + 200], &src[..]);
                assert!(all[off + 200..].iter().all(|&b| b == 0));
                let mut back = vec![0u8; 200];
                m.read_bytes(off, &mut back);
                assert_eq!(back, src);
            }
            m.store_u64(56, 0x1122_3344_5566_7788);
            assert_eq!(m.load_u64(56), 0x1122_3344_5566_7788);
            assert_eq!(m.load_u32(60, Ordering::Relaxed), 0x1122_3344);
            assert_eq!(m.load_u16(58), 0x5566);
            m.store_u16(62, 0xabcd);
            assert_eq!(m.load_u32(60, Ordering::Relaxed), 0xabcd_3344);
            // Two writers of the two halves of one 64-bit head word, and of a byte next to them.
            let m2 = m.clone();
            let t = std::thread::spawn(move || {
                for i in 0..50_000u32 {
                    m2.store_u32(8, i, Ordering::Release);
                }
            });
            for i in 0..50_000u32 {
                m.store_u32(12, i, Ordering::Release);
                m.write_bytes(16, &[i as u8]);
            }
            t.join().unwrap();
            assert_eq!(m.load_u32(8, Ordering::Acquire), 49_999);
            assert_eq!(m.load_u32(12, Ordering::Acquire), 49_999);
            assert_eq!(m.load_u16(16) as u8, 49_999u32 as u8);
        }

        #[test]
        fn word_windows_see_the_same_bytes_and_stay_inside() {
            let m = HostMem::new(256);
            assert!(
                m.words(0, 64).is_none(),
                "the header is not held as 64-bit words"
            );
            assert!(m.words(68, 8).is_none());
            assert!(m.words(64, 12).is_none());
            let w = m.words(72, 16).unwrap();
            assert_eq!(w.len(), 2);
            w.store(1, 0x0807_0605_0403_0201);
            assert_eq!(m.load_u32(80, Ordering::Relaxed), 0x0403_0201);
            m.store_u16(86, 0xbeef);
            assert_eq!(w.load(1), 0xbeef_0605_0403_0201);
            assert_eq!(w.sub(1, 1).load(0), 0xbeef_0605_0403_0201);
            assert!(std::panic::catch_unwind(|| w.load(2)).is_err());
            assert!(std::panic::catch_unwind(|| w.sub(1, 2)).is_err());
            assert_eq!(m.words(64, 192).unwrap().len(), 24);
            for (off, len) in [
                (64usize, 200usize),
                (256, 8),
                (248, 16),
                (usize::MAX - 7, 16),
            ] {
                let r = std::panic::catch_unwind(|| m.words(off, len).map(|w| w.len()));
                assert!(r.is_err(), "words({off}, {len}) did not panic");
            }
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
