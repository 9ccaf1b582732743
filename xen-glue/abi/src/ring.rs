//! Shared request/response rings, byte-compatible with Xen's `public/io/ring.h`.
//!
//! ## Layout of the shared region (one page, or `2^ring-page-order` contiguous pages)
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0      | 4    | `req_prod`  — written by the frontend |
//! | 4      | 4    | `req_event` — written by the backend  |
//! | 8      | 4    | `rsp_prod`  — written by the backend  |
//! | 12     | 4    | `rsp_event` — written by the frontend |
//! | 16     | 4    | private area (`pvt`, e.g. netif `smartpoll_active`) |
//! | 20     | 44   | padding |
//! | 64     | ...  | `nr_ents` slots of `slot` bytes each (a slot is the C union of request and response) |
//!
//! `nr_ents` is the largest power of two such that `64 + nr_ents * slot <= region size`
//! ([`ring_entries`]). Indices are free-running `u32` counters; the slot of index `i` is
//! `i & (nr_ents - 1)`. Requests and responses share the slots: the backend writes the response to
//! request `i` into slot `i` (after it has copied the request out), so the frontend never has more
//! than `nr_ents` requests outstanding.
//!
//! ## Roles
//! * [`FrontRing`]: initialises the shared header ([`FrontRing::init`], `SHARED_RING_INIT` +
//!   `FRONT_RING_INIT`), pushes requests, consumes responses. The backend never initialises it.
//! * [`BackRing`]: attaches without writing anything, consumes requests, pushes responses.
//!
//! ## Memory ordering
//! A producer copies entries into their slots, then publishes the producer index with a `Release`
//! store (Xen: `wmb()` then store). A consumer loads the peer's producer index with `Acquire`
//! (Xen: load then `rmb()`) and only then copies entries out. The notification checks need a full
//! barrier between "store my producer/event index" and "load the peer's event/producer index"
//! (Xen: `mb()`), provided by [`SharedMem::full_fence`].
//!
//! ## Notification (event-index) rule
//! After publishing from `old` to `new`, the peer needs an event-channel kick iff
//! `new - event < new - old` (unsigned 32-bit), where `event` is the peer's `*_event` field
//! ([`needs_notify`]). Before going idle a consumer calls the "final check"
//! ([`BackRing::final_check_for_requests`], [`FrontRing::final_check_for_responses`]): it sets its
//! event index to `cons + 1` and re-checks, so a message published concurrently is never missed.
//!
//! ## Hostile peers
//! Every index the peer writes is untrusted. The backend accepts `req_prod` only if
//! `req_cons - rsp_prod_pvt <= req_prod - rsp_prod_pvt <= nr_ents` (it neither runs more than a
//! ring ahead of the responses nor moves backwards); anything else is [`Error::RingOverflow`] and the
//! ring is marked broken: every later call returns [`Error::RingBroken`], so the owner can tear that
//! one channel down. Slot offsets are always computed from masked indices, so no peer value can
//! cause an access outside the ring. The `pop_*` methods copy entries out of shared memory
//! exactly once (`RING_COPY_REQUEST`) before anyone looks at them; the in-place methods
//! ([`BackRing::consume_requests`], [`BackRing::serve_requests`], [`FrontRing::consume_responses`],
//! [`FrontRing::produce_requests`]) instead hand a closure a [`SlotReader`]/[`SlotWriter`] that
//! loads or stores single fields (never a reference); a parser that uses them must load each
//! field exactly once (the TOCTOU rule on [`SlotReader`]). The frontend applies the mirror-image check to
//! `rsp_prod`.
//!
//! ## Cost per slot
//! When the memory hands out [`Words`] windows ([`SharedMem::words`]) and entries are whole
//! 64-bit words, the in-place methods check the region's bounds once per contiguous run of
//! slots and give each slot a window over its entry: loads and stores at constant offsets then
//! compile to plain word accesses with no check left at run time. Otherwise every access goes
//! through the checked [`SharedMem`] accessors.

use core::marker::PhantomData;
use core::sync::atomic::Ordering;

use crate::shmem::{SharedMem, Words};
use crate::{Error, PAGE_SIZE};

/// Byte offset of `req_prod` in the shared ring header.
pub const REQ_PROD_OFF: usize = 0;
/// Byte offset of `req_event`.
pub const REQ_EVENT_OFF: usize = 4;
/// Byte offset of `rsp_prod`.
pub const RSP_PROD_OFF: usize = 8;
/// Byte offset of `rsp_event`.
pub const RSP_EVENT_OFF: usize = 12;
/// Byte offset of the 4-byte private area (`pvt`).
pub const PVT_OFF: usize = 16;
/// Size of the header: entries start here.
pub const RING_HEADER_SIZE: usize = 64;
/// Largest `ring-page-order` we accept (Linux: `XENBUS_MAX_RING_GRANT_ORDER`, 16 pages).
pub const MAX_RING_PAGE_ORDER: u32 = 4;

/// Number of entries of a ring of `region_bytes` bytes with `slot_bytes`-byte slots: the largest
/// power of two that fits after the 64-byte header (`__CONST_RING_SIZE`); 0 if none fits.
pub const fn ring_entries(region_bytes: usize, slot_bytes: usize) -> u32 {
    if slot_bytes == 0 || region_bytes < RING_HEADER_SIZE {
        return 0;
    }
    let n = (region_bytes - RING_HEADER_SIZE) / slot_bytes;
    if n == 0 {
        return 0;
    }
    let n = if n > u32::MAX as usize {
        u32::MAX
    } else {
        n as u32
    };
    1u32 << (31 - n.leading_zeros())
}

/// Size in bytes of a ring made of `2^order` pages (`ring-page-order`), checked against
/// [`MAX_RING_PAGE_ORDER`].
pub const fn ring_bytes_for_order(order: u32) -> Result<usize, Error> {
    if order > MAX_RING_PAGE_ORDER {
        return Err(Error::BadPageOrder);
    }
    Ok(PAGE_SIZE << order)
}

/// The event-index notification rule: after moving a producer index from `old` to `new`, notify
/// the peer iff `new - event < new - old` (all modulo 2^32).
#[inline]
pub const fn needs_notify(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// A fixed-size entry that travels through a ring as bytes.
///
/// Encoding is infallible; decoding is a plain copy into a private value (validation of the
/// contents belongs to the wire-format parsers, which work on the private copy).
pub trait RingEntry: Sized {
    /// The wire representation, e.g. `[u8; 12]`.
    type Bytes: Copy + AsRef<[u8]> + AsMut<[u8]>;
    /// An all-zero `Bytes`.
    const ZEROED: Self::Bytes;
    /// Serialises `self`.
    fn encode(&self) -> Self::Bytes;
    /// Deserialises from a private copy.
    fn decode(bytes: &Self::Bytes) -> Self;
}

impl<const N: usize> RingEntry for [u8; N] {
    type Bytes = [u8; N];
    const ZEROED: [u8; N] = [0; N];
    #[inline(always)]
    fn encode(&self) -> [u8; N] {
        *self
    }
    #[inline(always)]
    fn decode(bytes: &[u8; N]) -> Self {
        *bytes
    }
}

/// Describes one ring protocol: its request and response entries and the slot size (the size of
/// the C union of the two, which the Xen headers define).
pub trait RingProtocol {
    /// Frontend-to-backend entry.
    type Req: RingEntry;
    /// Backend-to-frontend entry.
    type Rsp: RingEntry;
    /// Bytes per slot; at least the size of each entry.
    const SLOT: usize;
}

/// A ring of raw byte entries whose slot is the larger of the two (correct whenever both structs
/// have the same alignment, as in every Xen ring of this crate; the protocol modules define
/// their own markers and assert the sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawProtocol<const REQ: usize, const RSP: usize>;

impl<const REQ: usize, const RSP: usize> RingProtocol for RawProtocol<REQ, RSP> {
    type Req = [u8; REQ];
    type Rsp = [u8; RSP];
    const SLOT: usize = if REQ > RSP { REQ } else { RSP };
}

/// Slot geometry shared by both halves.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    mask: u32,
    nr_ents: u32,
}

impl Geometry {
    fn new<P: RingProtocol>(len: usize) -> Result<Self, Error> {
        let req = core::mem::size_of::<<P::Req as RingEntry>::Bytes>();
        let rsp = core::mem::size_of::<<P::Rsp as RingEntry>::Bytes>();
        if P::SLOT < req || P::SLOT < rsp || !P::SLOT.is_multiple_of(4) {
            return Err(Error::BadValue);
        }
        let nr_ents = ring_entries(len, P::SLOT);
        if nr_ents == 0 {
            return Err(Error::RegionTooSmall);
        }
        Ok(Self {
            mask: nr_ents - 1,
            nr_ents,
        })
    }

    #[inline(always)]
    fn slot_off<P: RingProtocol>(&self, idx: u32) -> usize {
        RING_HEADER_SIZE + (idx & self.mask) as usize * P::SLOT
    }
}

/// Whether entries of `entry` bytes in `P`'s slots occupy whole 64-bit words of the region
/// (slots and entries multiples of 8), so slot accesses may go through [`Words`] windows.
#[inline(always)]
const fn word_slots<P: RingProtocol>(entry: usize) -> bool {
    P::SLOT.is_multiple_of(8) && entry.is_multiple_of(8) && entry > 0
}

/// Calls `f(k, off, words)` for the `n` slots of indices `first..first + n` (`off` = the slot's
/// byte offset), in order. When the memory hands out [`Words`] windows and entries are whole
/// words, the region's bounds are checked once per contiguous run of slots (at most two runs:
/// before and after the wrap) and `words` is the window over the slot's first `entry` bytes, so
/// the closure's accesses at constant offsets need no check; otherwise `words` is `None`.
/// `f` is called from two places only (with and without windows), so the compiler inlines it
/// and the loop over windows stays a tight (unrolled) loop.
#[inline(always)]
fn visit_slots<'m, M: SharedMem, P: RingProtocol>(
    mem: &'m M,
    geo: Geometry,
    first: u32,
    n: u32,
    entry: usize,
    mut f: impl FnMut(u32, usize, Option<Words<'m>>),
) {
    let start = first & geo.mask;
    let run = n.min(geo.nr_ents - start);
    let mut k = 0u32;
    for (s, cnt) in [(start, run), (0, n - run)] {
        let off = RING_HEADER_SIZE + s as usize * P::SLOT;
        let run_words = if word_slots::<P>(entry) && cnt > 0 {
            mem.words(off, cnt as usize * P::SLOT)
        } else {
            None
        };
        if let Some(w) = run_words {
            let mut slot_off = off;
            for slot in w.0.chunks_exact(P::SLOT / 8) {
                f(k, slot_off, Some(Words(&slot[..entry / 8])));
                k += 1;
                slot_off += P::SLOT;
            }
        } else {
            for j in 0..cnt as usize {
                f(k, off + j * P::SLOT, None);
                k += 1;
            }
        }
    }
}

/// A window over one slot's entry (`len` bytes at `off`), if its words can be reached directly.
#[inline(always)]
fn slot_words<M: SharedMem, P: RingProtocol>(mem: &M, off: usize, len: usize) -> Option<Words<'_>> {
    if word_slots::<P>(len) {
        mem.words(off, len)
    } else {
        None
    }
}

#[inline(always)]
fn read_entry<M: SharedMem, E: RingEntry>(mem: &M, off: usize) -> E {
    let mut b = E::ZEROED;
    mem.read_bytes(off, b.as_mut());
    E::decode(&b)
}

#[inline(always)]
fn write_entry<M: SharedMem, E: RingEntry>(mem: &M, off: usize, e: &E) {
    let b = e.encode();
    mem.write_bytes(off, b.as_ref());
}

/// Read access to one slot of the shared region, in place: loads only, never a reference.
///
/// Handed to the closures of [`BackRing::consume_requests`], [`BackRing::serve_requests`] and
/// [`FrontRing::consume_responses`], so a consumer that parses a message reads shared memory
/// once, instead of copying the whole entry out and then reading the copy.
///
/// **TOCTOU rule**: the peer may rewrite the slot at any moment, so two loads of the same bytes
/// may return different values. Load each field exactly once into a local, then validate and use
/// only that local (never re-load a field after checking it). A consumer that needs a stable view
/// of the whole entry uses [`copy`](Self::copy) (or the copying `pop_*` methods).
///
/// Offsets are relative to the start of the entry. An access past the end of the entry is a
/// caller bug and panics (it can never reach outside the slot, whatever the peer wrote).
#[derive(Debug, Clone, Copy)]
pub struct SlotReader<'a, M: SharedMem> {
    mem: &'a M,
    off: usize,
    len: usize,
    /// The entry's words, when the memory hands them out (then `words.len() * 8 == len`).
    words: Option<Words<'a>>,
}

impl<M: SharedMem> SlotReader<'_, M> {
    /// Size of the entry in bytes.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the entry is empty (zero bytes).
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline(always)]
    fn at(&self, at: usize, size: usize) -> usize {
        assert!(
            at <= self.len && size <= self.len - at,
            "slot access outside the entry"
        );
        self.off + at
    }

    /// The `size` bytes at `at` (checked by `at`) from one word of the window, if they lie in
    /// one word: the word's bytes shifted down.
    #[inline(always)]
    fn in_word(&self, at: usize, size: usize) -> Option<u64> {
        match self.words {
            Some(w) if at % 8 + size <= 8 => Some(w.load(at / 8) >> (8 * (at % 8))),
            _ => None,
        }
    }

    /// Copies `dst.len()` bytes starting at `at` out of the slot.
    #[inline(always)]
    pub fn read_bytes(&self, at: usize, dst: &mut [u8]) {
        let off = self.at(at, dst.len());
        if let Some(w) = self.words
            && at.is_multiple_of(8)
            && dst.len().is_multiple_of(8)
        {
            let w = w.sub(at / 8, dst.len() / 8);
            for (c, x) in dst.chunks_exact_mut(8).zip(w.0) {
                c.copy_from_slice(&x.load(Ordering::Relaxed).to_le_bytes());
            }
            return;
        }
        self.mem.read_bytes(off, dst);
    }

    /// Loads the byte at `at`.
    #[inline(always)]
    pub fn load_u8(&self, at: usize) -> u8 {
        self.at(at, 1);
        if let Some(v) = self.in_word(at, 1) {
            return v as u8;
        }
        let mut b = [0u8; 1];
        self.read_bytes(at, &mut b);
        b[0]
    }

    /// Loads the little-endian `u16` at `at` (any alignment; one load if 2-byte aligned in the
    /// region).
    #[inline(always)]
    pub fn load_u16(&self, at: usize) -> u16 {
        let off = self.at(at, 2);
        if let Some(v) = self.in_word(at, 2) {
            return v as u16;
        }
        if off.is_multiple_of(2) {
            self.mem.load_u16(off)
        } else {
            let mut b = [0u8; 2];
            self.mem.read_bytes(off, &mut b);
            u16::from_le_bytes(b)
        }
    }

    /// Loads the little-endian `u32` at `at` (relaxed; any alignment, one load if 4-byte aligned
    /// in the region).
    #[inline(always)]
    pub fn load_u32(&self, at: usize) -> u32 {
        let off = self.at(at, 4);
        if let Some(v) = self.in_word(at, 4) {
            return v as u32;
        }
        if off.is_multiple_of(4) {
            self.mem.load_u32(off, Ordering::Relaxed)
        } else {
            let mut b = [0u8; 4];
            self.mem.read_bytes(off, &mut b);
            u32::from_le_bytes(b)
        }
    }

    /// Loads the little-endian `u64` at `at` (any alignment; one load if 8-byte aligned in the
    /// region). Not necessarily single-copy atomic.
    #[inline(always)]
    pub fn load_u64(&self, at: usize) -> u64 {
        let off = self.at(at, 8);
        if let Some(v) = self.in_word(at, 8) {
            return v;
        }
        if off.is_multiple_of(8) {
            self.mem.load_u64(off)
        } else {
            let mut b = [0u8; 8];
            self.mem.read_bytes(off, &mut b);
            u64::from_le_bytes(b)
        }
    }

    /// Copies the whole entry out into a private value (what the `pop_*` methods return).
    #[inline(always)]
    pub fn copy<E: RingEntry>(&self) -> E {
        let mut b = E::ZEROED;
        self.read_bytes(0, b.as_mut());
        E::decode(&b)
    }
}

/// Write access to one slot of the shared region, in place: stores only, never a reference.
///
/// Handed to the closures of [`FrontRing::produce_requests`] and [`BackRing::serve_requests`], so
/// a producer writes each field straight into its slot instead of building the entry in a private
/// buffer and copying it. Bytes the closure does not store keep whatever the slot held before
/// (an older entry, or the request being answered): store every field the protocol defines.
/// Offsets are relative to the start of the entry; an access past its end panics (a caller bug).
#[derive(Debug, Clone, Copy)]
pub struct SlotWriter<'a, M: SharedMem> {
    mem: &'a M,
    off: usize,
    len: usize,
    /// The entry's words, when the memory hands them out (then `words.len() * 8 == len`).
    words: Option<Words<'a>>,
}

impl<M: SharedMem> SlotWriter<'_, M> {
    /// Size of the entry in bytes.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the entry is empty (zero bytes).
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline(always)]
    fn at(&self, at: usize, size: usize) -> usize {
        assert!(
            at <= self.len && size <= self.len - at,
            "slot access outside the entry"
        );
        self.off + at
    }

    /// Copies `src` into the slot starting at `at`.
    #[inline(always)]
    pub fn write_bytes(&self, at: usize, src: &[u8]) {
        let off = self.at(at, src.len());
        if let Some(w) = self.words
            && at.is_multiple_of(8)
            && src.len().is_multiple_of(8)
        {
            let w = w.sub(at / 8, src.len() / 8);
            for (x, c) in w.0.iter().zip(src.chunks_exact(8)) {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                x.store(u64::from_le_bytes(a), Ordering::Relaxed);
            }
            return;
        }
        self.mem.write_bytes(off, src);
    }

    /// Stores the byte `v` at `at`.
    #[inline(always)]
    pub fn store_u8(&self, at: usize, v: u8) {
        self.write_bytes(at, &[v]);
    }

    /// Stores the little-endian `u16` `v` at `at` (any alignment).
    #[inline(always)]
    pub fn store_u16(&self, at: usize, v: u16) {
        let off = self.at(at, 2);
        if off.is_multiple_of(2) {
            self.mem.store_u16(off, v)
        } else {
            self.mem.write_bytes(off, &v.to_le_bytes())
        }
    }

    /// Stores the little-endian `u32` `v` at `at` (relaxed; any alignment).
    #[inline(always)]
    pub fn store_u32(&self, at: usize, v: u32) {
        let off = self.at(at, 4);
        if off.is_multiple_of(4) {
            self.mem.store_u32(off, v, Ordering::Relaxed)
        } else {
            self.mem.write_bytes(off, &v.to_le_bytes())
        }
    }

    /// Stores the little-endian `u64` `v` at `at` (any alignment).
    #[inline(always)]
    pub fn store_u64(&self, at: usize, v: u64) {
        let off = self.at(at, 8);
        if let Some(w) = self.words
            && at.is_multiple_of(8)
        {
            return w.store(at / 8, v);
        }
        if off.is_multiple_of(8) {
            self.mem.store_u64(off, v)
        } else {
            self.mem.write_bytes(off, &v.to_le_bytes())
        }
    }

    /// Writes a whole entry (what the `push_*` methods do).
    #[inline(always)]
    pub fn put<E: RingEntry>(&self, e: &E) {
        self.write_bytes(0, e.encode().as_ref());
    }
}

#[inline(always)]
const fn entry_len<E: RingEntry>() -> usize {
    core::mem::size_of::<E::Bytes>()
}

/// The frontend half: pushes requests, consumes responses (`*_front_ring` in Xen).
#[derive(Debug)]
pub struct FrontRing<M: SharedMem, P: RingProtocol> {
    mem: M,
    geo: Geometry,
    req_prod_pvt: u32,
    req_prod_pub: u32,
    rsp_cons: u32,
    rsp_prod_seen: u32,
    broken: bool,
    _p: PhantomData<fn() -> P>,
}

impl<M: SharedMem, P: RingProtocol> FrontRing<M, P> {
    /// Initialises the shared header (`SHARED_RING_INIT`: producers 0, event indices 1, private
    /// area and padding zeroed) and returns the frontend half (`FRONT_RING_INIT`).
    pub fn init(mem: M) -> Result<Self, Error> {
        Self::init_at(mem, 0)
    }

    /// Like [`init`](Self::init) but with every index starting at `start` instead of 0 (event
    /// indices at `start + 1`). Xen frontends start at 0; this exists to exercise index
    /// wrap-around. The backend must attach with [`BackRing::attach_at`] and the same `start`.
    pub fn init_at(mem: M, start: u32) -> Result<Self, Error> {
        let geo = Geometry::new::<P>(mem.len())?;
        mem.write_bytes(PVT_OFF, &[0u8; RING_HEADER_SIZE - PVT_OFF]);
        mem.store_u32(REQ_EVENT_OFF, start.wrapping_add(1), Ordering::Relaxed);
        mem.store_u32(RSP_EVENT_OFF, start.wrapping_add(1), Ordering::Relaxed);
        mem.store_u32(RSP_PROD_OFF, start, Ordering::Relaxed);
        mem.store_u32(REQ_PROD_OFF, start, Ordering::Release);
        Ok(Self::attach(mem, geo, start))
    }

    /// Attaches to an already initialised ring whose indices all equal `idx`
    /// (`FRONT_RING_ATTACH`, e.g. after a resume). Writes nothing.
    pub fn attach_at(mem: M, idx: u32) -> Result<Self, Error> {
        let geo = Geometry::new::<P>(mem.len())?;
        Ok(Self::attach(mem, geo, idx))
    }

    fn attach(mem: M, geo: Geometry, idx: u32) -> Self {
        Self {
            mem,
            geo,
            req_prod_pvt: idx,
            req_prod_pub: idx,
            rsp_cons: idx,
            rsp_prod_seen: idx,
            broken: false,
            _p: PhantomData,
        }
    }

    /// Number of slots (`RING_SIZE`).
    pub fn size(&self) -> u32 {
        self.geo.nr_ents
    }

    /// The shared region.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Slots free for new requests (`RING_FREE_REQUESTS`).
    #[inline]
    pub fn free_requests(&self) -> u32 {
        self.geo.nr_ents - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// No slot free (`RING_FULL`).
    #[inline]
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Private producer index (next request goes here).
    pub fn req_prod_pvt(&self) -> u32 {
        self.req_prod_pvt
    }

    /// Next response index to consume.
    pub fn rsp_cons(&self) -> u32 {
        self.rsp_cons
    }

    /// Writes `req` into the next free slot; it becomes visible with
    /// [`publish_requests`](Self::publish_requests). [`Error::RingFull`] if no slot is free.
    #[inline]
    pub fn push_request(&mut self, req: &P::Req) -> Result<(), Error> {
        if self.is_full() {
            return Err(Error::RingFull);
        }
        let off = self.geo.slot_off::<P>(self.req_prod_pvt);
        write_entry(&self.mem, off, req);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Writes as many of `reqs` as there are free slots (like repeated
    /// [`push_request`](Self::push_request), with one bulk copy per contiguous run of slots when
    /// requests fill their slots) and returns how many; they become visible with
    /// [`publish_requests`](Self::publish_requests).
    pub fn push_requests<const N: usize>(&mut self, reqs: &[[u8; N]]) -> usize
    where
        P: RingProtocol<Req = [u8; N]>,
    {
        let n = reqs.len().min(self.free_requests() as usize);
        if N == P::SLOT {
            let start = (self.req_prod_pvt & self.geo.mask) as usize;
            let first = n.min(self.geo.nr_ents as usize - start);
            let off = self.geo.slot_off::<P>(self.req_prod_pvt);
            self.mem.write_bytes(off, reqs[..first].as_flattened());
            if n > first {
                self.mem
                    .write_bytes(RING_HEADER_SIZE, reqs[first..n].as_flattened());
            }
        } else {
            for (i, r) in reqs[..n].iter().enumerate() {
                let off = self
                    .geo
                    .slot_off::<P>(self.req_prod_pvt.wrapping_add(i as u32));
                self.mem.write_bytes(off, r);
            }
        }
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(n as u32);
        n
    }

    /// Writes up to `max` requests in place (as many as there are free slots): calls
    /// `f(i, slot)` for `i` in `0..n`, where `slot` is the `i`-th next free request slot, and
    /// returns `n`. The requests become visible with [`publish_requests`](Self::publish_requests).
    /// `f` must store every field of the request (see [`SlotWriter`]).
    #[inline]
    pub fn produce_requests<F>(&mut self, max: u32, mut f: F) -> u32
    where
        F: FnMut(u32, SlotWriter<'_, M>),
    {
        let n = max.min(self.free_requests());
        let len = entry_len::<P::Req>();
        let mem = &self.mem;
        visit_slots::<M, P>(mem, self.geo, self.req_prod_pvt, n, len, |i, off, words| {
            f(
                i,
                SlotWriter {
                    mem,
                    off,
                    len,
                    words,
                },
            )
        });
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(n);
        n
    }

    /// Publishes pushed requests (`RING_PUSH_REQUESTS`).
    #[inline]
    pub fn publish_requests(&mut self) {
        if self.req_prod_pub != self.req_prod_pvt {
            self.mem
                .store_u32(REQ_PROD_OFF, self.req_prod_pvt, Ordering::Release);
            self.req_prod_pub = self.req_prod_pvt;
        }
    }

    /// Publishes pushed requests and tells whether the backend must be notified
    /// (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`).
    #[inline]
    pub fn publish_requests_and_check_notify(&mut self) -> bool {
        let old = self.req_prod_pub;
        let new = self.req_prod_pvt;
        if old == new {
            return false;
        }
        self.mem.store_u32(REQ_PROD_OFF, new, Ordering::Release);
        self.req_prod_pub = new;
        self.mem.full_fence();
        let event = self.mem.load_u32(REQ_EVENT_OFF, Ordering::Relaxed);
        needs_notify(old, new, event)
    }

    /// Number of responses ready to consume (`RING_HAS_UNCONSUMED_RESPONSES`), after validating
    /// the backend's `rsp_prod`: it may not run ahead of the published requests.
    #[inline]
    pub fn unconsumed_responses(&mut self) -> Result<u32, Error> {
        if self.broken {
            return Err(Error::RingBroken);
        }
        let prod = self.mem.load_u32(RSP_PROD_OFF, Ordering::Acquire);
        let avail = prod.wrapping_sub(self.rsp_cons);
        let seen = self.rsp_prod_seen.wrapping_sub(self.rsp_cons);
        if avail > self.req_prod_pub.wrapping_sub(self.rsp_cons) || avail < seen {
            self.broken = true;
            return Err(Error::RingOverflow);
        }
        self.rsp_prod_seen = prod;
        Ok(avail)
    }

    /// Copies out the next response, if any.
    #[inline]
    pub fn pop_response(&mut self) -> Result<Option<P::Rsp>, Error> {
        if self.rsp_cons == self.rsp_prod_seen && self.unconsumed_responses()? == 0 {
            return Ok(None);
        }
        let off = self.geo.slot_off::<P>(self.rsp_cons);
        let rsp = read_entry(&self.mem, off);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// Visits up to `max` available responses in place, oldest first: calls `f(slot)` for each
    /// (loads only; read each field once, see [`SlotReader`]), consumes them and returns how
    /// many. The backend's `rsp_prod` is validated as in
    /// [`unconsumed_responses`](Self::unconsumed_responses).
    #[inline]
    pub fn consume_responses<F>(&mut self, max: u32, mut f: F) -> Result<u32, Error>
    where
        F: FnMut(SlotReader<'_, M>),
    {
        if self.broken {
            return Err(Error::RingBroken);
        }
        let mut avail = self.rsp_prod_seen.wrapping_sub(self.rsp_cons);
        if avail < max {
            avail = self.unconsumed_responses()?;
        }
        let n = avail.min(max);
        let len = entry_len::<P::Rsp>();
        let mem = &self.mem;
        visit_slots::<M, P>(mem, self.geo, self.rsp_cons, n, len, |_, off, words| {
            f(SlotReader {
                mem,
                off,
                len,
                words,
            })
        });
        self.rsp_cons = self.rsp_cons.wrapping_add(n);
        Ok(n)
    }

    /// Consumes every available response without copying it out, returning how many. For
    /// streams whose responses carry no information (the backend used
    /// [`BackRing::push_null_responses`]): the responses then only return slots.
    #[inline]
    pub fn skip_responses(&mut self) -> Result<u32, Error> {
        let n = self.unconsumed_responses()?;
        self.rsp_cons = self.rsp_cons.wrapping_add(n);
        Ok(n)
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: `true` if responses are pending; otherwise arms
    /// `rsp_event` so the next response is notified, and re-checks.
    pub fn final_check_for_responses(&mut self) -> Result<bool, Error> {
        if self.unconsumed_responses()? > 0 {
            return Ok(true);
        }
        self.mem.store_u32(
            RSP_EVENT_OFF,
            self.rsp_cons.wrapping_add(1),
            Ordering::Relaxed,
        );
        self.mem.full_fence();
        Ok(self.unconsumed_responses()? > 0)
    }

    /// Whether a protocol violation by the backend was detected.
    pub fn is_broken(&self) -> bool {
        self.broken
    }
}

/// The backend half: consumes requests, pushes responses (`*_back_ring` in Xen).
#[derive(Debug)]
pub struct BackRing<M: SharedMem, P: RingProtocol> {
    mem: M,
    geo: Geometry,
    rsp_prod_pvt: u32,
    rsp_prod_pub: u32,
    req_cons: u32,
    req_prod_seen: u32,
    broken: bool,
    _p: PhantomData<fn() -> P>,
}

impl<M: SharedMem, P: RingProtocol> BackRing<M, P> {
    /// Attaches to a ring the frontend has initialised (`BACK_RING_INIT`). Writes nothing.
    pub fn attach(mem: M) -> Result<Self, Error> {
        Self::attach_at(mem, 0)
    }

    /// Attaches with every index at `idx` (`BACK_RING_ATTACH`). Writes nothing.
    pub fn attach_at(mem: M, idx: u32) -> Result<Self, Error> {
        let geo = Geometry::new::<P>(mem.len())?;
        Ok(Self {
            mem,
            geo,
            rsp_prod_pvt: idx,
            rsp_prod_pub: idx,
            req_cons: idx,
            req_prod_seen: idx,
            broken: false,
            _p: PhantomData,
        })
    }

    /// Number of slots (`RING_SIZE`).
    pub fn size(&self) -> u32 {
        self.geo.nr_ents
    }

    /// The shared region.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Next request index to consume.
    pub fn req_cons(&self) -> u32 {
        self.req_cons
    }

    /// Private response producer index.
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    /// Requests consumed but not yet answered.
    pub fn pending_responses(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Whether the frontend violated the protocol; the channel should be torn down.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Number of requests ready to consume (`RING_HAS_UNCONSUMED_REQUESTS`), after validating the
    /// frontend's `req_prod`. A `req_prod` more than a ring ahead of the responses, or one that
    /// moved backwards, is [`Error::RingOverflow`] and breaks the ring.
    #[inline]
    pub fn unconsumed_requests(&mut self) -> Result<u32, Error> {
        if self.broken {
            return Err(Error::RingBroken);
        }
        let prod = self.mem.load_u32(REQ_PROD_OFF, Ordering::Acquire);
        let ahead = prod.wrapping_sub(self.rsp_prod_pvt);
        let consumed = self.req_cons.wrapping_sub(self.rsp_prod_pvt);
        let seen = self.req_prod_seen.wrapping_sub(self.rsp_prod_pvt);
        if ahead > self.geo.nr_ents || ahead < consumed || ahead < seen {
            self.broken = true;
            return Err(Error::RingOverflow);
        }
        self.req_prod_seen = prod;
        Ok(ahead - consumed)
    }

    /// Copies out the next request, if any (`RING_COPY_REQUEST`). The copy is private: the
    /// frontend can no longer change it.
    #[inline]
    pub fn pop_request(&mut self) -> Result<Option<P::Req>, Error> {
        if self.broken {
            return Err(Error::RingBroken);
        }
        if self.req_cons == self.req_prod_seen && self.unconsumed_requests()? == 0 {
            return Ok(None);
        }
        let off = self.geo.slot_off::<P>(self.req_cons);
        let req = read_entry(&self.mem, off);
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Copies out up to `out.len()` requests, as many as are available now (like repeated
    /// [`pop_request`](Self::pop_request), with one bulk copy per contiguous run of slots when
    /// requests fill their slots) and returns how many.
    pub fn pop_requests<const N: usize>(&mut self, out: &mut [[u8; N]]) -> Result<usize, Error>
    where
        P: RingProtocol<Req = [u8; N]>,
    {
        if self.broken {
            return Err(Error::RingBroken);
        }
        let mut avail = self.req_prod_seen.wrapping_sub(self.req_cons);
        if (avail as usize) < out.len() {
            avail = self.unconsumed_requests()?;
        }
        let n = out.len().min(avail as usize);
        if N == P::SLOT {
            let start = (self.req_cons & self.geo.mask) as usize;
            let first = n.min(self.geo.nr_ents as usize - start);
            let off = self.geo.slot_off::<P>(self.req_cons);
            self.mem.read_bytes(off, out[..first].as_flattened_mut());
            if n > first {
                self.mem
                    .read_bytes(RING_HEADER_SIZE, out[first..n].as_flattened_mut());
            }
        } else {
            for (i, r) in out[..n].iter_mut().enumerate() {
                let off = self.geo.slot_off::<P>(self.req_cons.wrapping_add(i as u32));
                self.mem.read_bytes(off, r);
            }
        }
        self.req_cons = self.req_cons.wrapping_add(n as u32);
        Ok(n)
    }

    /// Visits up to `max` available requests in place, oldest first: calls `f(slot)` for each
    /// (loads only; read each field once, see [`SlotReader`]), consumes them and returns how
    /// many. The frontend's `req_prod` is validated as in
    /// [`unconsumed_requests`](Self::unconsumed_requests). Nothing is copied out: a consumer
    /// that parses a request reads shared memory once.
    #[inline]
    pub fn consume_requests<F>(&mut self, max: u32, mut f: F) -> Result<u32, Error>
    where
        F: FnMut(SlotReader<'_, M>),
    {
        if self.broken {
            return Err(Error::RingBroken);
        }
        let mut avail = self.req_prod_seen.wrapping_sub(self.req_cons);
        if avail < max {
            avail = self.unconsumed_requests()?;
        }
        let n = avail.min(max);
        let len = entry_len::<P::Req>();
        let mem = &self.mem;
        visit_slots::<M, P>(mem, self.geo, self.req_cons, n, len, |_, off, words| {
            f(SlotReader {
                mem,
                off,
                len,
                words,
            })
        });
        self.req_cons = self.req_cons.wrapping_add(n);
        Ok(n)
    }

    /// Consumes and answers up to `max` available requests in place, oldest first: for each,
    /// calls `f(request, response)`, where `request` reads the request's slot and `response`
    /// writes the slot of its response (visible after
    /// [`publish_responses`](Self::publish_responses)); returns how many. When no earlier
    /// request is unanswered, both are the **same slot** (`io/ring.h` puts each response over
    /// its request): load every request field you need before the first store. `f` must store
    /// every response field. Responses take the next response slots in order, as with
    /// [`push_response`](Self::push_response) (Xen responses name their request by id).
    #[inline]
    pub fn serve_requests<F>(&mut self, max: u32, mut f: F) -> Result<u32, Error>
    where
        F: FnMut(SlotReader<'_, M>, SlotWriter<'_, M>),
    {
        if self.broken {
            return Err(Error::RingBroken);
        }
        let mut avail = self.req_prod_seen.wrapping_sub(self.req_cons);
        if avail < max {
            avail = self.unconsumed_requests()?;
        }
        let n = avail.min(max);
        let (req_len, rsp_len) = (entry_len::<P::Req>(), entry_len::<P::Rsp>());
        // Response k goes to slot `rsp_prod_pvt + k`: an already consumed request's slot, never
        // the slot of a request still to be visited (at most `nr_ents` requests are ahead of
        // `rsp_prod_pvt`, checked by `unconsumed_requests`).
        // With nothing unanswered, each response goes over its own request, so the request's
        // window serves both.
        let mem = &self.mem;
        let geo = self.geo;
        let (same, rsp_first) = (self.rsp_prod_pvt == self.req_cons, self.rsp_prod_pvt);
        visit_slots::<M, P>(mem, geo, self.req_cons, n, P::SLOT, |i, req_off, slot| {
            let (rsp_off, rsp_words) = if same {
                let w = if word_slots::<P>(rsp_len) {
                    slot.map(|w| w.sub(0, rsp_len / 8))
                } else {
                    None
                };
                (req_off, w)
            } else {
                let off = geo.slot_off::<P>(rsp_first.wrapping_add(i));
                (off, slot_words::<M, P>(mem, off, rsp_len))
            };
            let req_words = if word_slots::<P>(req_len) {
                slot.map(|w| w.sub(0, req_len / 8))
            } else {
                None
            };
            f(
                SlotReader {
                    mem,
                    off: req_off,
                    len: req_len,
                    words: req_words,
                },
                SlotWriter {
                    mem,
                    off: rsp_off,
                    len: rsp_len,
                    words: rsp_words,
                },
            )
        });
        self.req_cons = self.req_cons.wrapping_add(n);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(n);
        Ok(n)
    }

    /// Writes the response to the oldest unanswered request into its slot; visible after
    /// [`publish_responses`](Self::publish_responses). [`Error::NoRequestPending`] if every
    /// consumed request was already answered.
    #[inline]
    pub fn push_response(&mut self, rsp: &P::Rsp) -> Result<(), Error> {
        if self.broken {
            return Err(Error::RingBroken);
        }
        if self.rsp_prod_pvt == self.req_cons {
            return Err(Error::NoRequestPending);
        }
        let off = self.geo.slot_off::<P>(self.rsp_prod_pvt);
        write_entry(&self.mem, off, rsp);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Answers the `n` oldest unanswered requests without writing response bodies (their slots
    /// keep the request bytes), for streams whose responses carry no information and only
    /// return slots to the frontend (which uses [`FrontRing::skip_responses`]).
    /// [`Error::NoRequestPending`] if fewer than `n` requests are unanswered.
    #[inline]
    pub fn push_null_responses(&mut self, n: u32) -> Result<(), Error> {
        if self.broken {
            return Err(Error::RingBroken);
        }
        if n > self.pending_responses() {
            return Err(Error::NoRequestPending);
        }
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(n);
        Ok(())
    }

    /// Publishes pushed responses (`RING_PUSH_RESPONSES`).
    #[inline]
    pub fn publish_responses(&mut self) {
        if self.rsp_prod_pub != self.rsp_prod_pvt {
            self.mem
                .store_u32(RSP_PROD_OFF, self.rsp_prod_pvt, Ordering::Release);
            self.rsp_prod_pub = self.rsp_prod_pvt;
        }
    }

    /// Publishes pushed responses and tells whether the frontend must be notified
    /// (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`). The old value is our own last published index,
    /// never re-read from shared memory.
    #[inline]
    pub fn publish_responses_and_check_notify(&mut self) -> bool {
        let old = self.rsp_prod_pub;
        let new = self.rsp_prod_pvt;
        if old == new {
            return false;
        }
        self.mem.store_u32(RSP_PROD_OFF, new, Ordering::Release);
        self.rsp_prod_pub = new;
        self.mem.full_fence();
        let event = self.mem.load_u32(RSP_EVENT_OFF, Ordering::Relaxed);
        needs_notify(old, new, event)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: `true` if requests are pending; otherwise arms
    /// `req_event` so the next request is notified, and re-checks.
    pub fn final_check_for_requests(&mut self) -> Result<bool, Error> {
        if self.unconsumed_requests()? > 0 {
            return Ok(true);
        }
        self.mem.store_u32(
            REQ_EVENT_OFF,
            self.req_cons.wrapping_add(1),
            Ordering::Relaxed,
        );
        self.mem.full_fence();
        Ok(self.unconsumed_requests()? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shmem::HostMem;

    type P16 = RawProtocol<16, 8>;

    #[test]
    fn entry_counts_match_xen() {
        assert_eq!(ring_entries(4096, 12), 256); // netif tx
        assert_eq!(ring_entries(4096, 8), 256); // netif rx
        assert_eq!(ring_entries(4096, 112), 32); // blkif
        assert_eq!(ring_entries(4096, 64), 32); // sndif
        assert_eq!(ring_entries(4096 << 4, 112), 512); // blkif, ring-page-order 4
        assert_eq!(ring_entries(64, 8), 0);
        assert_eq!(ring_entries(0, 8), 0);
        assert_eq!(ring_bytes_for_order(2), Ok(16384));
        assert_eq!(ring_bytes_for_order(5), Err(Error::BadPageOrder));
    }

    #[test]
    fn notify_rule() {
        assert!(needs_notify(0, 1, 1));
        assert!(!needs_notify(1, 2, 1));
        assert!(needs_notify(0, 5, 3));
        assert!(!needs_notify(5, 9, 11));
        assert!(needs_notify(u32::MAX - 1, 2, 0)); // wraps
    }

    #[test]
    fn init_writes_xen_header() {
        let m = HostMem::pages(1);
        m.write_bytes(0, &[0xAA; 64]);
        let f = FrontRing::<_, P16>::init(m.clone()).unwrap();
        assert_eq!(f.size(), 128);
        let mut h = [0u8; 64];
        m.read_bytes(0, &mut h);
        let mut want = [0u8; 64];
        want[4] = 1;
        want[12] = 1;
        assert_eq!(h, want);
    }

    #[test]
    fn backend_attach_writes_nothing() {
        let m = HostMem::pages(1);
        m.write_bytes(0, &[0x5A; 4096]);
        let _b = BackRing::<_, P16>::attach(m.clone()).unwrap();
        let mut all = [0u8; 4096];
        m.read_bytes(0, &mut all);
        assert!(all.iter().all(|&b| b == 0x5A));
    }

    #[test]
    fn round_trip_and_notifications() {
        let m = HostMem::pages(1);
        let mut f = FrontRing::<_, P16>::init(m.clone()).unwrap();
        let mut b = BackRing::<_, P16>::attach(m.clone()).unwrap();
        // Backend idles: arms req_event = 1.
        assert!(!b.final_check_for_requests().unwrap());
        f.push_request(&[1; 16]).unwrap();
        f.push_request(&[2; 16]).unwrap();
        assert!(
            f.publish_requests_and_check_notify(),
            "first request after idle notifies"
        );
        f.push_request(&[3; 16]).unwrap();
        assert!(
            !f.publish_requests_and_check_notify(),
            "backend not idle yet: no kick"
        );
        assert_eq!(b.unconsumed_requests().unwrap(), 3);
        for i in 1..=3u8 {
            assert_eq!(b.pop_request().unwrap(), Some([i; 16]));
            b.push_response(&[i + 10; 8]).unwrap();
        }
        assert_eq!(b.pop_request().unwrap(), None);
        assert_eq!(b.push_response(&[0; 8]), Err(Error::NoRequestPending));
        assert!(!f.final_check_for_responses().unwrap());
        assert!(b.publish_responses_and_check_notify());
        for i in 1..=3u8 {
            assert_eq!(f.pop_response().unwrap(), Some([i + 10; 8]));
        }
        assert_eq!(f.pop_response().unwrap(), None);
        assert_eq!(f.free_requests(), 128);
    }

    #[test]
    fn null_responses_return_slots() {
        let m = HostMem::pages(1);
        let mut f = FrontRing::<_, P16>::init(m.clone()).unwrap();
        let mut b = BackRing::<_, P16>::attach(m).unwrap();
        for i in 0..128u8 {
            f.push_request(&[i; 16]).unwrap();
        }
        f.publish_requests();
        assert!(f.is_full());
        for i in 0..100u8 {
            assert_eq!(b.pop_request().unwrap(), Some([i; 16]));
        }
        assert_eq!(b.push_null_responses(101), Err(Error::NoRequestPending));
        b.push_null_responses(100).unwrap();
        b.publish_responses();
        assert_eq!(f.skip_responses(), Ok(100));
        assert_eq!(f.free_requests(), 100);
        assert_eq!(f.skip_responses(), Ok(0));
    }

    #[test]
    fn batch_push_and_pop_wrap_around() {
        for (start, batch) in [(0u32, 7usize), (120, 50), (u32::MAX - 3, 128)] {
            let m = HostMem::pages(1);
            let mut f = FrontRing::<_, P16>::init_at(m.clone(), start).unwrap();
            let mut b = BackRing::<_, P16>::attach_at(m.clone(), start).unwrap();
            let mut next = 0u8;
            let mut want = 0u8;
            for _ in 0..20 {
                let reqs: Vec<[u8; 16]> = (0..batch)
                    .map(|i| [next.wrapping_add(i as u8); 16])
                    .collect();
                let n = f.push_requests(&reqs);
                next = next.wrapping_add(n as u8);
                f.publish_requests();
                let mut out = vec![[0u8; 16]; 200];
                let got = b.pop_requests(&mut out).unwrap();
                assert_eq!(got, n);
                for o in &out[..got] {
                    assert_eq!(*o, [want; 16]);
                    want = want.wrapping_add(1);
                }
                b.push_null_responses(got as u32).unwrap();
                b.publish_responses();
                f.skip_responses().unwrap();
            }
        }
        // Entries smaller than their slot take the per-entry path.
        let m = HostMem::pages(1);
        let mut f = FrontRing::<_, RawProtocol<8, 16>>::init(m.clone()).unwrap();
        let mut b = BackRing::<_, RawProtocol<8, 16>>::attach(m).unwrap();
        assert_eq!(f.push_requests(&[[1; 8], [2; 8]]), 2);
        f.publish_requests();
        let mut out = [[0u8; 8]; 4];
        assert_eq!(b.pop_requests(&mut out), Ok(2));
        assert_eq!(out[..2], [[1; 8], [2; 8]]);
        assert_eq!(b.pop_requests(&mut out), Ok(0));
    }

    #[test]
    fn ring_full_is_an_error_not_an_overwrite() {
        let m = HostMem::pages(1);
        let mut f = FrontRing::<_, RawProtocol<64, 64>>::init(m).unwrap();
        for i in 0..32u8 {
            f.push_request(&[i; 64]).unwrap();
        }
        assert!(f.is_full());
        assert_eq!(f.push_request(&[0; 64]), Err(Error::RingFull));
    }

    #[test]
    fn hostile_req_prod_breaks_only_the_ring() {
        let m = HostMem::pages(1);
        let _f = FrontRing::<_, P16>::init(m.clone()).unwrap();
        let mut b = BackRing::<_, P16>::attach(m.clone()).unwrap();
        m.store_u32(REQ_PROD_OFF, 129, Ordering::Release);
        assert_eq!(b.unconsumed_requests(), Err(Error::RingOverflow));
        assert!(b.is_broken());
        m.store_u32(REQ_PROD_OFF, 1, Ordering::Release);
        assert_eq!(b.pop_request(), Err(Error::RingBroken));
    }

    #[test]
    fn req_prod_moving_backwards_is_detected() {
        let m = HostMem::pages(1);
        let _f = FrontRing::<_, P16>::init(m.clone()).unwrap();
        let mut b = BackRing::<_, P16>::attach(m.clone()).unwrap();
        m.store_u32(REQ_PROD_OFF, 5, Ordering::Release);
        for _ in 0..3 {
            b.pop_request().unwrap().unwrap();
        }
        m.store_u32(REQ_PROD_OFF, 2, Ordering::Release);
        assert_eq!(b.unconsumed_requests(), Err(Error::RingOverflow));
    }

    #[test]
    fn exactly_full_ring_is_accepted() {
        let m = HostMem::pages(1);
        let _f = FrontRing::<_, P16>::init(m.clone()).unwrap();
        let mut b = BackRing::<_, P16>::attach(m.clone()).unwrap();
        m.store_u32(REQ_PROD_OFF, 128, Ordering::Release);
        assert_eq!(b.unconsumed_requests(), Ok(128));
    }

    #[test]
    fn hostile_rsp_prod_detected_by_frontend() {
        let m = HostMem::pages(1);
        let mut f = FrontRing::<_, P16>::init(m.clone()).unwrap();
        f.push_request(&[0; 16]).unwrap();
        f.publish_requests();
        m.store_u32(RSP_PROD_OFF, 2, Ordering::Release);
        assert_eq!(f.pop_response(), Err(Error::RingOverflow));
    }

    #[test]
    fn multi_page_ring() {
        let m = HostMem::new(ring_bytes_for_order(2).unwrap());
        let mut f = FrontRing::<_, RawProtocol<112, 16>>::init(m.clone()).unwrap();
        let mut b = BackRing::<_, RawProtocol<112, 16>>::attach(m).unwrap();
        assert_eq!(f.size(), 128);
        for round in 0..3u32 {
            for i in 0..128u32 {
                let mut r = [0u8; 112];
                r[..4].copy_from_slice(&(round * 1000 + i).to_le_bytes());
                f.push_request(&r).unwrap();
            }
            f.publish_requests();
            for i in 0..128u32 {
                let r = b.pop_request().unwrap().unwrap();
                assert_eq!(r[..4], (round * 1000 + i).to_le_bytes());
                b.push_response(&[0; 16]).unwrap();
            }
            b.publish_responses();
            while f.pop_response().unwrap().is_some() {}
        }
    }

    #[test]
    fn in_place_access_on_unaligned_slots() {
        // 12-byte slots (netif tx): every other slot starts at 4 mod 8.
        let m = HostMem::pages(1);
        let mut f = FrontRing::<_, RawProtocol<12, 12>>::init(m.clone()).unwrap();
        let mut b = BackRing::<_, RawProtocol<12, 12>>::attach(m).unwrap();
        let n = f.produce_requests(5, |i, w| {
            w.store_u32(0, 0x1111_1111 * (i + 1));
            w.store_u64(4, 0x0102_0304_0506_0708 + u64::from(i));
        });
        assert_eq!(n, 5);
        f.publish_requests();
        let mut got = Vec::new();
        assert_eq!(
            b.consume_requests(3, |r| {
                got.push((r.load_u32(0), r.load_u64(4), r.load_u16(2), r.load_u8(4)));
                assert_eq!(r.copy::<[u8; 12]>()[4], 0x08 + got.len() as u8 - 1);
            }),
            Ok(3)
        );
        for (i, g) in got.iter().enumerate() {
            let i = i as u32;
            assert_eq!(
                *g,
                (
                    0x1111_1111 * (i + 1),
                    0x0102_0304_0506_0708 + u64::from(i),
                    ((0x1111_1111 * (i + 1)) >> 16) as u16,
                    0x08 + i as u8
                )
            );
        }
        // Answer request 0 the copying way, then serve 3 and 4 in place while 1 and 2 are
        // still unanswered: responses take the next response slots in order (1, 2), never the
        // slot of a request still to be read.
        b.push_response(&[0xAA; 12]).unwrap();
        let mut seen = Vec::new();
        assert_eq!(
            b.serve_requests(10, |r, w| {
                seen.push(r.load_u32(0));
                w.store_u32(0, 0xBB);
                w.write_bytes(4, &[0xCC; 8]);
            }),
            Ok(2)
        );
        assert_eq!(seen, [0x4444_4444, 0x5555_5555]);
        assert_eq!(b.pending_responses(), 2);
        b.push_response(&[0xDD; 12]).unwrap();
        b.push_response(&[0xEE; 12]).unwrap();
        b.publish_responses();
        let mut rsps = Vec::new();
        assert_eq!(
            f.consume_responses(u32::MAX, |r| rsps.push(r.copy::<[u8; 12]>())),
            Ok(5)
        );
        let mut served = [0xCC; 12];
        served[..4].copy_from_slice(&0xBBu32.to_le_bytes());
        assert_eq!(rsps, [[0xAA; 12], served, served, [0xDD; 12], [0xEE; 12]]);
        assert_eq!(f.free_requests(), 256);
    }

    /// Forwards everything but [`SharedMem::words`], so the ring takes its per-access path.
    struct NoWords(HostMem);

    impl SharedMem for NoWords {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn load_u32(&self, off: usize, order: Ordering) -> u32 {
            self.0.load_u32(off, order)
        }
        fn store_u32(&self, off: usize, val: u32, order: Ordering) {
            self.0.store_u32(off, val, order)
        }
        fn load_u16(&self, off: usize) -> u16 {
            self.0.load_u16(off)
        }
        fn store_u16(&self, off: usize, val: u16) {
            self.0.store_u16(off, val)
        }
        fn load_u64(&self, off: usize) -> u64 {
            self.0.load_u64(off)
        }
        fn store_u64(&self, off: usize, val: u64) {
            self.0.store_u64(off, val)
        }
        fn read_bytes(&self, off: usize, dst: &mut [u8]) {
            self.0.read_bytes(off, dst)
        }
        fn write_bytes(&self, off: usize, src: &[u8]) {
            self.0.write_bytes(off, src)
        }
    }

    /// Fields of every size at every offset of a 24-byte entry (inside one word, across two).
    fn write_fields<M: SharedMem>(i: u32, w: SlotWriter<'_, M>) {
        let b = i as u8;
        w.write_bytes(0, &[b; 24]);
        w.store_u8(1, b ^ 0x11);
        w.store_u16(2, 0x2200 | u16::from(b));
        w.store_u32(4, 0x4400_0000 | i);
        w.store_u64(8, 0x8800_0000_0000_0000 | u64::from(i));
        w.store_u16(17, 0x1700 | u16::from(b)); // odd
        w.store_u32(19, 0x1900_0000 | i); // crosses a word boundary
        w.write_bytes(23, &[b ^ 0x23]);
    }

    fn read_fields<M: SharedMem>(r: SlotReader<'_, M>) -> Vec<u64> {
        let mut v = vec![
            u64::from(r.load_u8(1)),
            u64::from(r.load_u16(2)),
            u64::from(r.load_u32(4)),
            r.load_u64(8),
            u64::from(r.load_u16(17)),
            u64::from(r.load_u32(19)),
            u64::from(r.load_u8(23)),
            r.load_u64(3),
            r.load_u64(16),
            u64::from(r.load_u32(12)),
            u64::from(r.load_u16(6)),
            u64::from(r.load_u16(7)),
        ];
        let mut b = [0u8; 13];
        r.read_bytes(5, &mut b);
        v.extend(b.iter().map(|&x| u64::from(x)));
        let all: [u8; 24] = r.copy();
        v.extend(all.iter().map(|&x| u64::from(x)));
        v
    }

    #[test]
    fn word_windows_and_per_access_path_agree() {
        // Same traffic over a memory that hands out word windows and one that does not,
        // starting near the index wrap so that runs of slots wrap around the ring.
        type P24 = RawProtocol<24, 24>;
        let a = HostMem::pages(1);
        let b = NoWords(HostMem::pages(1));
        let start = 160 - 5;
        let mut fa = FrontRing::<_, P24>::init_at(&a, start).unwrap();
        let mut fb = FrontRing::<_, P24>::init_at(&b, start).unwrap();
        let mut ba = BackRing::<_, P24>::attach_at(&a, start).unwrap();
        let mut bb = BackRing::<_, P24>::attach_at(&b, start).unwrap();
        assert_eq!(fa.size(), 128);
        for round in 0..4u32 {
            let base = round * 1000;
            assert_eq!(
                fa.produce_requests(100, |i, w| write_fields(base + i, w)),
                100
            );
            assert_eq!(
                fb.produce_requests(100, |i, w| write_fields(base + i, w)),
                100
            );
            fa.publish_requests();
            fb.publish_requests();
            let (mut ga, mut gb) = (Vec::new(), Vec::new());
            // Served with nothing unanswered (each response over its own request), consumed,
            // then served with requests unanswered (responses over older slots).
            for (max, want) in [(20, 20), (u32::MAX, 20)] {
                if max == u32::MAX {
                    assert_eq!(ba.consume_requests(60, |r| ga.push(read_fields(r))), Ok(60));
                    assert_eq!(bb.consume_requests(60, |r| gb.push(read_fields(r))), Ok(60));
                }
                assert_eq!(
                    ba.serve_requests(max, |r, w| {
                        ga.push(read_fields(r));
                        write_fields(r.load_u32(4) ^ 0x5a, w);
                    }),
                    Ok(want)
                );
                assert_eq!(
                    bb.serve_requests(max, |r, w| {
                        gb.push(read_fields(r));
                        write_fields(r.load_u32(4) ^ 0x5a, w);
                    }),
                    Ok(want)
                );
            }
            assert_eq!(ga, gb);
            for (k, g) in ga.iter().enumerate() {
                let i = base + k as u32;
                assert_eq!(
                    g[2],
                    u64::from(0x4400_0000 | i),
                    "request {k} of round {round}"
                );
                assert_eq!(g[5], u64::from(0x1900_0000 | i));
            }
            ba.push_null_responses(60).unwrap();
            bb.push_null_responses(60).unwrap();
            ba.publish_responses();
            bb.publish_responses();
            let (mut ra, mut rb) = (Vec::new(), Vec::new());
            assert_eq!(
                fa.consume_responses(u32::MAX, |r| ra.push(read_fields(r))),
                Ok(100)
            );
            assert_eq!(
                fb.consume_responses(u32::MAX, |r| rb.push(read_fields(r))),
                Ok(100)
            );
            assert_eq!(ra, rb);
            let mut whole_a = vec![0u8; 4096];
            let mut whole_b = vec![0u8; 4096];
            a.read_bytes(0, &mut whole_a);
            b.read_bytes(0, &mut whole_b);
            assert_eq!(whole_a, whole_b);
        }
    }

    #[test]
    #[should_panic(expected = "slot access outside the entry")]
    fn in_place_read_past_the_entry_panics() {
        let m = HostMem::pages(1);
        let mut f = FrontRing::<_, RawProtocol<12, 12>>::init(m.clone()).unwrap();
        let mut b = BackRing::<_, RawProtocol<12, 12>>::attach(m).unwrap();
        f.push_request(&[1; 12]).unwrap();
        f.publish_requests();
        let _ = b.consume_requests(1, |r| {
            let _ = r.load_u64(8);
        });
    }

    #[test]
    #[should_panic(expected = "slot access outside the entry")]
    fn in_place_write_past_the_entry_panics() {
        let m = HostMem::pages(1);
        let mut f = FrontRing::<_, RawProtocol<8, 16>>::init(m).unwrap();
        f.produce_requests(1, |_, w| w.store_u16(7, 1));
    }

    #[test]
    fn too_small_region() {
        let m = HostMem::new(64);
        assert_eq!(
            FrontRing::<_, P16>::init(m.clone()).err(),
            Some(Error::RegionTooSmall)
        );
        assert_eq!(
            BackRing::<_, P16>::attach(m).err(),
            Some(Error::RegionTooSmall)
        );
    }
}
