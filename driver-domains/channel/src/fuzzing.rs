//! Fuzzing entry points.
//!
//! Each `fuzz_*` function takes arbitrary bytes and drives one part of the channel with them,
//! checking invariants with assertions: a panic is a finding. They are plain functions so a
//! cargo-fuzz target (`fuzz_target!(|d: &[u8]| iconnect_channel::fuzzing::fuzz_backend(d))`)
//! can call them unchanged; `tests/fuzz_smoke.rs` runs every one of them over seeded inputs in
//! `cargo test`.
//!
//! The session entry points run an endpoint against a peer that writes arbitrary bytes
//! anywhere in the region, through [`Audit`], which panics if the endpoint under test writes
//! into a part of the control page that belongs to the peer (and, through `HostMem`, if
//! anything touches memory outside the region).

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use xen_abi::PAGE_SIZE;
use xen_abi::ring::RawProtocol;
use xen_abi::shmem::{HostMem, SharedMem};
use xen_abi::xenbus::FrontendStyle;

use crate::endpoint::{Backend, BackendEvent, Frontend, FrontendConfig};
use crate::keys::KeyMap;
use crate::layout::{Layout, MAX_RINGS, RingSpec, Side, off};

/// A fuzz entry point.
pub type Entry = fn(&[u8]);

/// Every entry point, by name.
pub const TARGETS: &[(&str, Entry)] = &[
    ("keys", fuzz_keys),
    ("layout", fuzz_layout),
    ("data_refs", fuzz_data_refs),
    ("backend", fuzz_backend),
    ("frontend", fuzz_frontend),
];

/// Key area bytes: whatever parses re-encodes to the same length and re-parses equal.
pub fn fuzz_keys(data: &[u8]) {
    if let Ok(m) = KeyMap::parse(data) {
        let enc = m.encode();
        assert_eq!(enc.len(), data.len());
        assert_eq!(enc.len(), m.encoded_len());
        assert_eq!(KeyMap::parse(&enc).as_ref(), Ok(&m));
        let mut again = KeyMap::new();
        for (k, v) in m.iter() {
            again.insert(k, v).unwrap();
        }
        assert_eq!(again, m);
    }
}

/// A header, a descriptor table and a region size: whatever validates lies inside the region,
/// rings ascending and disjoint after the control page, the data area after the rings.
pub fn fuzz_layout(data: &[u8]) {
    if data.len() < 1 + off::FRONT_END + MAX_RINGS * off::RING_DESC {
        return;
    }
    let pages = 2 + data[0] as usize;
    let region = pages * PAGE_SIZE;
    let mut header = [0u8; off::FRONT_END];
    header.copy_from_slice(&data[1..1 + off::FRONT_END]);
    // Mostly valid magic/version/size, so the interesting checks are reached.
    if data[0] & 1 == 0 {
        header[..4].copy_from_slice(&crate::layout::MAGIC.to_le_bytes());
        header[4..8].copy_from_slice(&crate::layout::VERSION.to_le_bytes());
        header[8..16].copy_from_slice(&(region as u64).to_le_bytes());
    }
    let mut descs = [0u8; MAX_RINGS * off::RING_DESC];
    descs.copy_from_slice(&data[1 + off::FRONT_END..][..MAX_RINGS * off::RING_DESC]);
    if data[0] & 2 == 0 {
        // Plausible small values, so rings and the data area often validate or nearly do.
        let small = |b: &mut [u8], m: u32| {
            let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) % m;
            b[..4].copy_from_slice(&v.to_le_bytes());
        };
        small(&mut header[off::RING_COUNT..], MAX_RINGS as u32 + 2);
        small(&mut header[off::DATA_FIRST..], pages as u32 + 2);
        small(&mut header[off::DATA_PAGES..], pages as u32 + 2);
        for d in descs.chunks_exact_mut(off::RING_DESC) {
            small(&mut d[0..], pages as u32 + 1);
            small(&mut d[4..], 6);
            let slot = (u32::from_le_bytes([d[8], d[9], d[10], d[11]]) % 40) * 4;
            d[8..12].copy_from_slice(&slot.to_le_bytes());
            small(&mut d[12..], 70);
        }
    }
    if let Ok(l) = Layout::parse(&header, &descs, region) {
        let mut next = 1u64;
        for r in &l.rings {
            assert!(r.first_page as u64 >= next);
            next = r.first_page as u64 + r.pages() as u64;
            assert!(r.entries() >= 1);
        }
        assert!(l.data_first_page as u64 >= next);
        assert!(
            (l.data_first_page as u64 + l.data_pages as u64) * PAGE_SIZE as u64 <= region as u64
        );
        let m = HostMem::new(region);
        for r in &l.rings {
            crate::Window::new(&m, r.offset(), r.bytes()).unwrap();
        }
        crate::DataArea::new(&m, l.data_offset(), l.data_pages).unwrap();
        l.write(&m);
        assert_eq!(Layout::read(&m), Ok(l));
    }
}

/// Data references against a small data area: accepted ones lie inside it (and inside their
/// page for page references); the copies then touch only those bytes.
pub fn fuzz_data_refs(data: &[u8]) {
    let m = HostMem::pages(4);
    let area = crate::DataArea::new(m.clone(), PAGE_SIZE, 2).unwrap();
    for c in data.chunks_exact(12) {
        let r = crate::DataRef::from_bytes(&c[..8]).unwrap();
        let at = u16::from_le_bytes([c[8], c[9]]) as usize;
        let n = (c[10] as usize) << 4 | (c[11] as usize & 0xf);
        let mut buf = vec![0u8; n];
        if area.read_ref(r, at, &mut buf).is_ok() {
            assert!(r.offset as usize + at + n <= area.len());
            area.write_ref(r, at, &buf).unwrap();
        }
        let gref = r.offset;
        if area.copy_from_page(gref, at, &mut buf).is_ok() {
            assert!(gref < 2 && at + n <= PAGE_SIZE);
        }
    }
    let mut guard = [0u8; PAGE_SIZE];
    m.read_bytes(3 * PAGE_SIZE, &mut guard);
    assert!(
        guard.iter().all(|&b| b == 0),
        "nothing outside the data area was written"
    );
}

/// A [`SharedMem`] wrapper that panics when the endpoint it is given to writes into bytes of
/// the control page owned by the other end (its end block, its key area, the header and ring
/// descriptors for a backend). Clones share the wrapped region.
#[derive(Debug, Clone)]
pub struct Audit<M: SharedMem> {
    mem: M,
    side: Side,
    writes: Arc<AtomicU64>,
}

impl<M: SharedMem> Audit<M> {
    /// Audits the writes of the `side` end.
    pub fn new(mem: M, side: Side) -> Self {
        Self {
            mem,
            side,
            writes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Writes seen so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn check(&self, off: usize, len: usize) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        if off >= PAGE_SIZE || len == 0 {
            return;
        }
        let end = off + len;
        let inside = |a: usize, n: usize| off >= a && end <= a + n;
        let ok = inside(self.side.block(), 64) || inside(self.side.key_area(), off::KEY_AREA);
        let ok = ok
            || (self.side == Side::Frontend
                && (inside(0, off::FRONT_END) || inside(off::RINGS, MAX_RINGS * off::RING_DESC)));
        assert!(
            ok,
            "{:?} wrote {len} bytes at {off:#x} of the control page",
            self.side
        );
    }
}

impl<M: SharedMem> SharedMem for Audit<M> {
    fn len(&self) -> usize {
        self.mem.len()
    }
    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        self.mem.load_u32(off, order)
    }
    fn store_u32(&self, off: usize, val: u32, order: Ordering) {
        self.check(off, 4);
        self.mem.store_u32(off, val, order)
    }
    fn load_u16(&self, off: usize) -> u16 {
        self.mem.load_u16(off)
    }
    fn store_u16(&self, off: usize, val: u16) {
        self.check(off, 2);
        self.mem.store_u16(off, val)
    }
    fn load_u64(&self, off: usize) -> u64 {
        self.mem.load_u64(off)
    }
    fn store_u64(&self, off: usize, val: u64) {
        self.check(off, 8);
        self.mem.store_u64(off, val)
    }
    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        self.mem.read_bytes(off, dst)
    }
    fn write_bytes(&self, off: usize, src: &[u8]) {
        self.check(off, src.len());
        self.mem.write_bytes(off, src)
    }
    fn full_fence(&self) {
        self.mem.full_fence()
    }
}

/// One action of a hostile peer or of the endpoint under test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The peer writes `bytes` at `offset` (taken modulo the region size, clipped to it).
    Write {
        /// Where.
        offset: usize,
        /// What.
        bytes: Vec<u8>,
    },
    /// The peer stores a `u32` into a field of its own end block (`field` modulo 6, times 4).
    Field {
        /// Which field.
        field: u8,
        /// Value.
        value: u32,
    },
    /// The endpoint under test polls until it has nothing to report.
    Poll,
    /// The endpoint serves its rings: pops requests, follows references, responds.
    Serve,
    /// The (otherwise honest) frontend pushes and publishes a request `[gref, offset, len]`
    /// on ring 0 (no effect in frontend sessions).
    Request {
        /// Data page reference.
        gref: u32,
        /// Offset in the page.
        offset: u16,
        /// Length.
        len: u16,
    },
    /// The endpoint re-reads the peer's keys, beats, or fails/closes/restarts (by `what`).
    Misc {
        /// Which.
        what: u8,
    },
}

fn take<'a>(d: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (a, b) = d.split_at(n.min(d.len()));
    *d = b;
    a
}

impl Op {
    /// Decodes a script from bytes (for the byte-driven fuzz targets).
    pub fn decode(mut data: &[u8]) -> Vec<Op> {
        let mut ops = Vec::new();
        while let [op, rest @ ..] = data {
            data = rest;
            ops.push(match op % 9 {
                0 | 1 => {
                    let h = take(&mut data, 3);
                    let (o, n) = match h {
                        [a, b, c] => (u16::from_le_bytes([*a, *b]) as usize * 4, *c as usize),
                        _ => (0, 0),
                    };
                    Op::Write {
                        offset: o,
                        bytes: take(&mut data, n).to_vec(),
                    }
                }
                2 => {
                    let h = take(&mut data, 5);
                    let (f, v) = match h {
                        [f, a, b, c, d] => (*f, u32::from_le_bytes([*a, *b, *c, *d])),
                        _ => (0, 0),
                    };
                    Op::Field { field: f, value: v }
                }
                3 | 4 => Op::Poll,
                5 | 6 => Op::Serve,
                7 => {
                    let h = take(&mut data, 4);
                    let (g, o, n) = match h {
                        [g, a, b, c] => (
                            *g as u32 % 8,
                            u16::from_le_bytes([*a, *b]),
                            (*c as u16) << 5,
                        ),
                        _ => (0, 0, 0),
                    };
                    Op::Request {
                        gref: g,
                        offset: o % 4200,
                        len: n,
                    }
                }
                _ => Op::Misc {
                    what: take(&mut data, 1).first().copied().unwrap_or(0),
                },
            });
        }
        ops
    }
}

fn peer_write<M: SharedMem>(m: &M, peer: Side, op: &Op) {
    match op {
        Op::Write { offset, bytes } => {
            let off = offset % m.len();
            let n = bytes.len().min(m.len() - off);
            m.write_bytes(off, &bytes[..n]);
        }
        Op::Field { field, value } => {
            m.store_u32(
                peer.block() + (*field as usize % 6) * 4,
                *value,
                Ordering::Release,
            );
        }
        _ => {}
    }
}

/// Region size of the session targets (control page, three ring pages, four data pages).
pub const SESSION_PAGES: usize = 8;

fn session_config() -> FrontendConfig {
    FrontendConfig {
        style: FrontendStyle::Net,
        rings: vec![
            RingSpec {
                page_order: 0,
                slot_bytes: 16,
                vector: 0,
            },
            RingSpec {
                page_order: 1,
                slot_bytes: 8,
                vector: 1,
            },
        ],
        data_pages: None,
    }
}

/// What a hostile-frontend session reached (so tests can check they are not vacuous).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// `Connect` events.
    pub connects: u32,
    /// Requests whose reference was valid (copied and answered `0`).
    pub refs_ok: u32,
    /// Requests refused for a bad reference or range (answered `1`).
    pub refs_bad: u32,
    /// Ring violations that made the backend fail the channel.
    pub ring_errors: u32,
    /// `Failed` events (protocol errors in states, header, keys).
    pub failures: u32,
}

type SessionRings = (
    xen_abi::ring::BackRing<crate::Window<Audit<HostMem>>, RawProtocol<16, 16>>,
    crate::DataArea<Audit<HostMem>>,
);

/// Polls the backend until it settles, accepting connections and taking ring 0 and the data
/// area, checking what a `Connect` promises.
fn backend_poll(
    be: &mut Backend<Audit<HostMem>>,
    rings: &mut Option<SessionRings>,
    st: &mut SessionStats,
) {
    let mut n = 0;
    while let Some(e) = be.poll() {
        n += 1;
        assert!(n < 64, "poll must settle");
        match e {
            BackendEvent::Connect => {
                st.connects += 1;
                let l = be.layout().expect("connect has a layout").clone();
                assert_eq!(l.validate(be.mem().len()), Ok(()));
                let _ = iconnect::qos::NetQosRequest::from_keys(be.frontend_keys());
                *rings = match (be.back_ring(0), be.data_area()) {
                    (Ok(r), Ok(d)) => Some((r, d)),
                    _ => None,
                };
                be.accept();
            }
            BackendEvent::Disconnect | BackendEvent::Removed => *rings = None,
            BackendEvent::Failed(_) => st.failures += 1,
        }
    }
}

/// A backend against a frontend that first (optionally, if `honest_start`) sets the channel up
/// properly and then runs `ops`: arbitrary writes anywhere in the region interleaved with the
/// backend's polls and ring service. The backend must not panic, must only write its own parts
/// of the control page, and every reference it follows must be inside the data area.
pub fn hostile_frontend_session(honest_start: bool, ops: &[Op]) -> SessionStats {
    let mut st = SessionStats::default();
    let mut front = None;
    let m = HostMem::pages(SESSION_PAGES);
    let audit = Audit::new(m.clone(), Side::Backend);
    let mut be = Backend::new(audit.clone(), KeyMap::new()).expect("region is large enough");
    let mut rings: Option<SessionRings> = None;
    if honest_start {
        let mut keys = KeyMap::new();
        keys.insert("iconnect-qos-guaranteed-bps", "1000").unwrap();
        let mut fe = Frontend::new(m.clone(), session_config(), keys).unwrap();
        for _ in 0..4 {
            backend_poll(&mut be, &mut rings, &mut st);
            while fe.poll().is_some() {}
            if fe.is_set_up() && front.is_none() {
                front = fe.front_ring::<RawProtocol<16, 16>>(0).ok();
            }
        }
        assert_eq!(st.connects, 1, "the honest start connects");
    }
    for op in ops {
        match op {
            Op::Write { .. } | Op::Field { .. } => peer_write(&m, Side::Frontend, op),
            Op::Request { gref, offset, len } => {
                if let Some(f) = front.as_mut() {
                    let mut r = [0u8; 16];
                    r[..4].copy_from_slice(&gref.to_le_bytes());
                    r[4..6].copy_from_slice(&offset.to_le_bytes());
                    r[6..8].copy_from_slice(&len.to_le_bytes());
                    if f.push_request(&r).is_ok() {
                        f.publish_requests();
                    }
                    while let Ok(Some(_)) = f.pop_response() {}
                }
            }
            Op::Poll => backend_poll(&mut be, &mut rings, &mut st),
            Op::Serve => {
                if let Some((ring, data)) = rings.as_mut() {
                    for _ in 0..8 {
                        match ring.pop_request() {
                            Ok(Some(req)) => {
                                let gref = u32::from_le_bytes([req[0], req[1], req[2], req[3]]);
                                let at = u16::from_le_bytes([req[4], req[5]]) as usize;
                                let n = u16::from_le_bytes([req[6], req[7]]) as usize;
                                let mut buf = vec![0u8; n.min(2 * PAGE_SIZE)];
                                let status = match data.copy_from_page(gref, at, &mut buf) {
                                    Ok(()) => {
                                        assert!(gref < data.pages() && at + buf.len() <= PAGE_SIZE);
                                        data.copy_to_page(gref, at, &buf).unwrap();
                                        st.refs_ok += 1;
                                        0u8
                                    }
                                    Err(_) => {
                                        st.refs_bad += 1;
                                        1
                                    }
                                };
                                ring.push_response(&[status; 16]).unwrap();
                            }
                            Ok(None) => break,
                            Err(_) => {
                                st.ring_errors += 1;
                                be.fail();
                                break;
                            }
                        }
                    }
                    let _ = ring.publish_responses_and_check_notify();
                    let _ = ring.final_check_for_requests();
                }
            }
            Op::Misc { what } => match what % 4 {
                0 => {
                    let _ = be.refresh_frontend_keys();
                }
                1 => be.beat(),
                2 => be.fail(),
                _ => {
                    let _ = be.take_notify();
                    let _ = be.peer_heartbeat();
                }
            },
        }
    }
    assert!(audit.writes() > 0);
    st
}

/// A frontend against a backend that writes arbitrary bytes anywhere: the frontend must not
/// panic and must only write its own parts of the control page.
pub fn hostile_backend_session(ops: &[Op]) {
    let m = HostMem::pages(SESSION_PAGES);
    let audit = Audit::new(m.clone(), Side::Frontend);
    let mut fe = Frontend::new(audit, session_config(), KeyMap::new()).expect("config fits");
    for op in ops {
        match op {
            Op::Write { .. } | Op::Field { .. } => peer_write(&m, Side::Backend, op),
            Op::Request { .. } => {}
            Op::Poll | Op::Serve => {
                let mut n = 0;
                while fe.poll().is_some() {
                    n += 1;
                    assert!(n < 64, "poll must settle");
                }
                if let Ok(mut r) = fe.front_ring::<RawProtocol<16, 16>>(0) {
                    let _ = r.push_request(&[0; 16]);
                    let _ = r.publish_requests_and_check_notify();
                    while let Ok(Some(_)) = r.pop_response() {}
                }
            }
            Op::Misc { what } => match what % 4 {
                0 => {
                    let _ = fe.read_backend_keys();
                }
                1 => fe.close(),
                2 => fe.restart(),
                _ => fe.beat(),
            },
        }
    }
}

/// [`hostile_frontend_session`] with a script decoded from bytes (first byte: honest start).
pub fn fuzz_backend(data: &[u8]) {
    let honest = data.first().is_some_and(|b| b & 1 == 1);
    let _ = hostile_frontend_session(honest, &Op::decode(data.get(1..).unwrap_or(&[])));
}

/// [`hostile_backend_session`] with a script decoded from bytes.
pub fn fuzz_frontend(data: &[u8]) {
    hostile_backend_session(&Op::decode(data));
}
