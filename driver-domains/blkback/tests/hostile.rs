//! Hostile frontends: every malformed request as a unit case (answered with the right status,
//! nothing reaches the volume, no grant access outside a segment), ring violations (fatal for
//! the interface only), and a property test mixing random slot bytes with valid requests
//! against a model.

mod common;

use blkback::volume::{Geometry, MemVolume, Order};
use blkback::{Config, Error};
use common::{Rng, Shadow, SimFront, geometry, rw_slot, seg};
use proptest::prelude::*;
use xen_abi::blkif::{self, Request, RwOp, Status, op};
use xen_abi::ring::REQ_PROD_OFF;
use xen_abi::shmem::SharedMem;

/// One frontend and one engine; cases run one after another on the same ring.
struct Case {
    f: SimFront,
    be: blkback::Blkback<xen_abi::shmem::HostMem>,
    vol: MemVolume,
}

impl Case {
    fn new(g: Geometry, cfg: Config) -> Self {
        let f = SimFront::new(1);
        let be = f.backend(g, cfg);
        Self { f, be, vol: MemVolume::new(g, 8) }
    }

    /// Sends one raw slot, expecting `status` with operation `echo`; returns how many
    /// operations reached the volume.
    fn expect(&mut self, raw: [u8; blkif::REQUEST_SIZE], echo: u8, status: Status) -> u64 {
        let before = self.vol.submitted();
        let id = u64::from_le_bytes(raw[8..16].try_into().unwrap());
        self.f.push_raw(id, &raw, Shadow { op: echo, segs: vec![], pages: vec![] });
        self.f.publish();
        self.be.poll(0, &mut self.f.grants, &mut self.vol, 8).unwrap();
        let done = self.f.responses();
        assert_eq!(done.len(), 1, "exactly one response");
        assert_eq!((done[0].id, done[0].rsp.status), (id, status), "status for op {echo}");
        assert_eq!(self.f.grants.range_violations(), 0);
        assert_eq!(self.vol.range_violations(), 0);
        assert!(self.be.broken().is_none(), "a bad request is not fatal");
        self.vol.submitted() - before
    }
}

#[test]
fn every_bad_request_gets_an_error_and_reaches_nothing() {
    let g = geometry(1 << 20, 512);
    let c = Config::default();
    let last = (1u64 << 20) / 512;
    let cases: Vec<(&str, [u8; 112], u8, Status)> = {
        let mut case = Case::new(g, c);
        let f = &mut case.f;
        let w = f.page(true);
        let r = f.page(false);
        let mut v = vec![
            ("read without segments", rw_slot(RwOp::Read, 1, 0, &[]), op::READ, Status::Error),
            ("first > last", rw_slot(RwOp::Read, 2, 0, &[seg(r, 5, 4)]), op::READ, Status::Error),
            ("last beyond page", rw_slot(RwOp::Write, 3, 0, &[seg(w, 0, 8)]), op::WRITE, Status::Error),
            ("past the end", rw_slot(RwOp::Read, 4, last, &[seg(r, 0, 0)]), op::READ, Status::Error),
            ("crossing the end", rw_slot(RwOp::Write, 5, last - 4, &[seg(w, 0, 7)]), op::WRITE, Status::Error),
            ("sector overflow", rw_slot(RwOp::Read, 6, u64::MAX - 1, &[seg(r, 0, 7)]), op::READ, Status::Error),
            ("sector*512 overflow", rw_slot(RwOp::Read, 7, 1 << 55, &[seg(r, 0, 0)]), op::READ, Status::Error),
            ("barrier", rw_slot(RwOp::WriteBarrier, 8, 0, &[]), op::WRITE_BARRIER, Status::EOpNotSupp),
            ("flush with data", rw_slot(RwOp::FlushDiskcache, 9, 0, &[seg(w, 0, 7)]), op::FLUSH_DISKCACHE, Status::Error),
            ("unknown grant (write)", rw_slot(RwOp::Write, 10, 0, &[seg(9999, 0, 7)]), op::WRITE, Status::Error),
        ];
        let mut raw = rw_slot(RwOp::Read, 11, 0, &[seg(r, 0, 0)]);
        raw[1] = 12;
        v.push(("12 segments", raw, op::READ, Status::Error));
        let mut raw = rw_slot(RwOp::Read, 12, 0, &[]);
        raw[0] = op::RESERVED_1;
        v.push(("reserved op", raw, op::RESERVED_1, Status::EOpNotSupp));
        raw[0] = 0xc8;
        raw[8] = 13;
        v.push(("unknown op", raw, 0xc8, Status::EOpNotSupp));
        let d = |id, secure, sector, n| Request::Discard { secure, handle: 0, id, sector, nr_sectors: n }.to_bytes();
        v.push(("secure discard", d(14, true, 0, 8), op::DISCARD, Status::EOpNotSupp));
        v.push(("discard past end", d(15, false, last - 1, 2), op::DISCARD, Status::Error));
        v.push(("discard overflow", d(16, false, u64::MAX, 1), op::DISCARD, Status::Error));
        v.push(("discard nr*512 overflow", d(17, false, 0, 1 << 60), op::DISCARD, Status::Error));
        let mut bad_flag = d(18, false, 0, 8);
        bad_flag[1] = 2;
        v.push(("discard unknown flag", bad_flag, op::DISCARD, Status::Error));
        v.push(("discard of nothing", d(19, false, 0, 0), op::DISCARD, Status::Error));
        let ind = |id, o: RwOp, n: u16, g0: u32| {
            let mut grefs = [0u32; 8];
            grefs[0] = g0;
            Request::Indirect { op: o, handle: 0, id, sector: 0, nr_segments: n, indirect_grefs: grefs }.to_bytes()
        };
        v.push(("indirect above the advertised max", ind(20, RwOp::Read, 65, w), op::READ, Status::Error));
        v.push(("indirect zero segments", ind(21, RwOp::Read, 0, w), op::READ, Status::Error));
        v.push(("indirect page not granted", ind(22, RwOp::Read, 4, 7777), op::READ, Status::Error));
        let mut bad_sub = ind(23, RwOp::Read, 4, w);
        bad_sub[1] = op::FLUSH_DISKCACHE;
        v.push(("indirect flush", bad_sub, op::FLUSH_DISKCACHE, Status::Error));
        // An indirect page whose second descriptor is invalid (first_sect 6 > last_sect 2).
        let p = f.page(true);
        seg(r, 0, 7).emit(&mut f.grants.page_mut(p).unwrap()[0..8]);
        seg(r, 6, 2).emit(&mut f.grants.page_mut(p).unwrap()[8..16]);
        v.push(("indirect bad descriptor", ind(24, RwOp::Read, 2, p), op::READ, Status::Error));
        for (name, raw, echo, status) in v.drain(..) {
            let submitted = case.expect(raw, echo, status);
            assert_eq!(submitted, 0, "{name}: nothing reaches the volume");
        }
        // A read into a read-only page: the read is done, the copy out fails: Error.
        let submitted = case.expect(rw_slot(RwOp::Read, 30, 0, &[seg(w, 0, 7)]), op::READ, Status::Error);
        assert_eq!(submitted, 1);
        assert!(case.f.grants.ref_faults() > 0);
        let st = case.be.stats();
        assert_eq!((st.bad_requests, st.copy_errors, st.unsupported), (18, 3, 4));
        vec![]
    };
    assert!(cases.is_empty());
}

#[test]
fn read_only_and_feature_less_volumes() {
    let g = Geometry {
        size: 1 << 20,
        sector_size: 512,
        read_only: true,
        flush: false,
        discard: false,
    };
    let c = Config { max_indirect_segments: 0, max_in_flight: 4, ..Config::default() };
    let mut case = Case::new(g, c);
    let w = case.f.page(true);
    let d = Request::Discard { secure: false, handle: 0, id: 3, sector: 0, nr_sectors: 8 }.to_bytes();
    for (raw, echo, status) in [
        (rw_slot(RwOp::Write, 1, 0, &[seg(w, 0, 7)]), op::WRITE, Status::Error),
        (rw_slot(RwOp::FlushDiskcache, 2, 0, &[]), op::FLUSH_DISKCACHE, Status::EOpNotSupp),
        (d, op::DISCARD, Status::EOpNotSupp),
    ] {
        assert_eq!(case.expect(raw, echo, status), 0);
    }
    let mut grefs = [0u32; 8];
    grefs[0] = w;
    let ind = Request::Indirect { op: RwOp::Read, handle: 0, id: 4, sector: 0, nr_segments: 1, indirect_grefs: grefs }.to_bytes();
    assert_eq!(case.expect(ind, op::READ, Status::EOpNotSupp), 0, "indirect not offered");
}

#[test]
fn sector_size_4096_rules() {
    let g = geometry(1 << 20, 4096);
    let mut case = Case::new(g, Config::default());
    let w = case.f.page(true);
    let w2 = case.f.page(true);
    for (raw, status) in [
        (rw_slot(RwOp::Write, 1, 4, &[seg(w, 0, 7)]), Status::Error),            // start not on a 4K sector
        (rw_slot(RwOp::Write, 2, 8, &[seg(w, 0, 3)]), Status::Error),            // half a sector
        (rw_slot(RwOp::Write, 3, 8, &[seg(w, 0, 3), seg(w2, 4, 7)]), Status::Error), // halves add up, still refused
        (rw_slot(RwOp::Write, 4, 8, &[seg(w, 0, 7), seg(w2, 0, 7)]), Status::Okay),
    ] {
        let want = u64::from(status == Status::Okay);
        assert_eq!(case.expect(raw, op::WRITE, status), want);
    }
    let d = |id, sector, n| Request::Discard { secure: false, handle: 0, id, sector, nr_sectors: n }.to_bytes();
    assert_eq!(case.expect(d(5, 8, 4), op::DISCARD, Status::Error), 0);
    assert_eq!(case.expect(d(6, 4, 8), op::DISCARD, Status::Error), 0);
    assert_eq!(case.expect(d(7, 8, 16), op::DISCARD, Status::Okay), 1);
}

#[test]
fn ring_violation_breaks_only_this_interface() {
    let g = geometry(1 << 20, 512);
    let mut f = SimFront::new(1);
    let mut be = f.backend(g, Config::default());
    let mut vol = MemVolume::new(g, 8);
    // req_prod jumps more than a ring ahead.
    f.mem.store_u32(REQ_PROD_OFF, 1000, core::sync::atomic::Ordering::Release);
    assert_eq!(be.poll(0, &mut f.grants, &mut vol, 8), Err(Error::Ring(xen_abi::Error::RingOverflow)));
    assert_eq!(be.poll(0, &mut f.grants, &mut vol, 8), Err(Error::Broken));
    assert_eq!(be.broken(), Some(Error::Ring(xen_abi::Error::RingOverflow)));
    assert_eq!(vol.submitted(), 0);
    // Another guest's interface is unaffected.
    let mut f2 = SimFront::new(1);
    let mut be2 = f2.backend(g, Config::default());
    f2.flush();
    f2.publish();
    be2.poll(0, &mut f2.grants, &mut vol, 8).unwrap();
    assert_eq!(f2.responses()[0].rsp.status, Status::Okay);
}

#[test]
fn back_pressure_keeps_requests_in_the_ring() {
    let g = geometry(1 << 20, 512);
    let mut f = SimFront::new(1);
    let mut be = f.backend(g, Config { max_indirect_segments: 8, max_in_flight: 3, ..Config::default() });
    let mut vol = MemVolume::new(g, 100);
    let mut rng = Rng(1);
    for i in 0..10 {
        let segs = f.segments(&mut rng, 8, false, false);
        f.rw(RwOp::Read, i * 8, segs, false);
    }
    f.publish();
    // The volume completes only when polled: each poll answers what was submitted before.
    let p = be.poll(0, &mut f.grants, &mut vol, 32).unwrap();
    assert_eq!((p.requests, p.in_flight), (3, 0), "completions collected at the end of the poll");
    assert!(p.more, "requests left in the ring");
    let mut total = p.requests;
    while total < 10 {
        total += be.poll(0, &mut f.grants, &mut vol, 32).unwrap().requests;
    }
    assert_eq!(f.responses().len(), 10);

    // The byte budget: 4 KiB reads, 8 KiB in flight: two per poll.
    let mut f = SimFront::new(1);
    let mut be = f.backend(g, Config { max_in_flight_bytes: 8192, ..Config::default() });
    for i in 0..6 {
        let segs = f.segments(&mut rng, 8, false, false);
        f.rw(RwOp::Read, i * 8, segs, false);
    }
    f.publish();
    let p = be.poll(0, &mut f.grants, &mut vol, 32).unwrap();
    assert_eq!((p.requests, p.more), (2, true));
    assert_eq!(f.responses().len(), 2);
}

type Expected = std::collections::BTreeMap<u64, Option<Vec<u8>>>;

/// Polls until every request is answered; a valid request (`Some`) must be `Okay`, and a read
/// must return the expected bytes.
fn drain(
    f: &mut SimFront,
    be: &mut blkback::Blkback<xen_abi::shmem::HostMem>,
    vol: &mut MemVolume,
    expected: &mut Expected,
) -> Result<(), TestCaseError> {
    f.publish();
    let mut guard = 0;
    while !f.shadow.is_empty() {
        be.poll(0, &mut f.grants, vol, 4).unwrap();
        for d in f.responses() {
            let e = expected.remove(&d.id).expect("one response per request");
            if let Some(want) = e {
                prop_assert_eq!(d.rsp.status, Status::Okay);
                if !want.is_empty() {
                    prop_assert!(d.data == want, "read back differs");
                }
            }
        }
        guard += 1;
        prop_assert!(guard < 1000, "requests never answered");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random slot bytes (with valid ids and random-but-granted refs) interleaved with valid
    /// writes and reads: every request answered exactly once, valid ones byte-exact, nothing
    /// outside the volume or a granted page touched, the interface never broken.
    #[test]
    fn random_slots_mixed_with_valid(seed in any::<u64>(), garbage in proptest::collection::vec(any::<[u8; 32]>(), 1..40)) {
        let mut rng = Rng(seed | 1);
        let g = geometry(256 * 1024, if seed & 1 == 0 { 512 } else { 4096 });
        let mut f = SimFront::new(1);
        let mut be = f.backend(g, Config { max_indirect_segments: 32, max_in_flight: 8, ..Config::default() });
        let mut vol = MemVolume::new(g, 6);
        vol.set_order(Order::Shuffled(seed | 5));
        let pages: Vec<u32> = (0..6).map(|i| f.page(i % 2 == 0)).collect();
        let mut expected = std::collections::BTreeMap::new();
        let step = u64::from(g.sector_size / 512);
        let mut slot_no = 0;
        for junk in &garbage {
            // One hostile slot: random bytes in the first 32 (operation, counts, sector,
            // segments), a fresh id, grefs mapped onto granted pages or junk.
            let mut raw = [0u8; blkif::REQUEST_SIZE];
            raw[..32].copy_from_slice(junk);
            raw[24..32].copy_from_slice(&junk[..8]);
            for k in 0..11 {
                let gi = junk[k % 32] as usize;
                let gref = if gi < 200 { pages[gi % pages.len()] } else { u32::from(junk[(k + 3) % 32]) << 8 };
                raw[24 + k * 8..28 + k * 8].copy_from_slice(&gref.to_le_bytes());
                raw[28 + k * 8] = junk[(k * 7) % 32] % 9;
                raw[29 + k * 8] = junk[(k * 5 + 1) % 32] % 9;
            }
            // For indirect requests the descriptor-page grefs start at 28: point the first at
            // a granted page half of the time.
            if junk[2] & 1 == 0 {
                raw[28..32].copy_from_slice(&pages[1].to_le_bytes());
            }
            slot_no += 1;
            let id: u64 = 1_000_000 + slot_no;
            raw[8..16].copy_from_slice(&id.to_le_bytes());
            let echo = if raw[0] == op::INDIRECT { raw[1] } else { raw[0] };
            f.push_raw(id, &raw, Shadow { op: echo, segs: vec![], pages: vec![] });
            expected.insert(id, None);
            drain(&mut f, &mut be, &mut vol, &mut expected)?;
            // Then a valid write (fresh pages), then a read of the same place: byte-exact.
            let n = step * rng.range(1, 4);
            let sector = rng.below((256 * 1024 / 512 - n) / step + 1) * step;
            let segs = f.segments(&mut rng, n, true, step == 8);
            let data = rng.bytes(n as usize * 512);
            f.fill(&segs, &data);
            let wid = f.rw(RwOp::Write, sector, segs, rng.below(2) == 0);
            expected.insert(wid, Some(Vec::new()));
            drain(&mut f, &mut be, &mut vol, &mut expected)?;
            let segs = f.segments(&mut rng, n, false, step == 8);
            let rid = f.rw(RwOp::Read, sector, segs, rng.below(2) == 0);
            expected.insert(rid, Some(data));
            drain(&mut f, &mut be, &mut vol, &mut expected)?;
        }
        prop_assert!(expected.is_empty());
        prop_assert_eq!(vol.range_violations(), 0);
        prop_assert_eq!(f.grants.range_violations(), 0);
        prop_assert!(be.broken().is_none());
    }
}

