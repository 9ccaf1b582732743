//! The engine driven by the simulated blkfront (tests/common) over a HostMem ring, FakeGrants
//! and an in-memory volume completing out of order: random reads, writes (direct and
//! indirect), discards and flushes, byte-exact against a model; flush durability; 512- and
//! 4096-byte sectors; two guests on slices of one disk never reaching each other.

mod common;

use std::collections::BTreeMap;

use blkback::volume::{Geometry, IoCompletion, IoRequest, MemVolume, Order, Volume};
use blkback::volumes::DiskMux;
use blkback::{Config, Slice};
use common::{Rng, SimFront, geometry, sectors_bytes};
use xen_abi::blkif::{RwOp, Status};

#[derive(Debug, Clone, Copy)]
enum Op {
    Read,
    Write,
    Discard,
    Flush,
}

/// A request in flight: op, sector, sectors, written data, flush snapshot (sector, version).
type InFlight = (Op, u64, u64, Vec<u8>, Vec<(usize, u64)>);

/// Random workload; returns (reads, writes, discards, flushes, indirect) done.
fn run(seed: u64, sector_size: u32, n_ops: usize, ring_pages: usize) -> (u64, u64, u64, u64, u64) {
    let mut rng = Rng(seed | 1);
    let size: u64 = 2 << 20;
    let g = geometry(size, sector_size);
    let mut front = SimFront::new(ring_pages);
    let cfg = Config {
        max_indirect_segments: 1024,
        max_in_flight: 24,
        max_in_flight_bytes: 1 << 20,
    };
    let mut be = front.backend(g, cfg);
    let mut vol = MemVolume::new(g, 16);
    vol.set_order(Order::Shuffled(seed | 3));
    let align8 = sector_size == 4096;
    let step = u64::from(sector_size / 512);
    let total_sectors = size / 512;
    let mut model = vec![0u8; size as usize];
    // Per 512-byte sector: version of the last acknowledged write/discard.
    let mut version = vec![0u64; total_sectors as usize];
    let mut ver = 0u64;
    // In flight: id -> (op, sector, nsect, data, flush snapshot).
    let mut inflight: BTreeMap<u64, InFlight> = BTreeMap::new();
    let (mut issued, mut reads, mut writes, mut discards, mut flushes, mut indirect) = (0, 0, 0, 0, 0, 0);
    while issued < n_ops || !inflight.is_empty() {
        for _ in 0..rng.below(8) {
            if issued == n_ops || front.ring.free_requests() == 0 {
                break;
            }
            let op = [Op::Read, Op::Write, Op::Write, Op::Discard, Op::Flush][rng.below(5) as usize];
            let max_sect = if rng.below(4) == 0 { 1024 } else { 88 };
            // (at most 1024 segments of at least one sector each)
            let nsect = (rng.range(1, max_sect) / step).max(1) * step;
            let sector = rng.below((total_sectors - nsect) / step + 1) * step;
            let overlaps = inflight.values().any(|(o, s, n, _, _)| {
                !matches!(o, Op::Flush) && !matches!(op, Op::Flush) && *s < sector + nsect && sector < s + n
            });
            if overlaps {
                continue;
            }
            let (id, data, snap) = match op {
                Op::Read | Op::Write => {
                    let write = matches!(op, Op::Write);
                    let segs = front.segments(&mut rng, nsect, write, align8);
                    let data = if write { rng.bytes(sectors_bytes(nsect)) } else { Vec::new() };
                    if write {
                        front.fill(&segs, &data);
                    }
                    let ind = segs.len() > 11 || rng.below(4) == 0;
                    if ind {
                        indirect += 1;
                    }
                    let rw = if write { RwOp::Write } else { RwOp::Read };
                    (front.rw(rw, sector, segs, ind), data, Vec::new())
                }
                Op::Discard => (front.discard(sector, nsect), Vec::new(), Vec::new()),
                Op::Flush => {
                    // Everything acknowledged so far must be durable when this flush is.
                    let snap: Vec<(usize, u64)> =
                        version.iter().enumerate().filter(|(_, v)| **v > 0).map(|(i, v)| (i, *v)).collect();
                    (front.flush(), Vec::new(), snap)
                }
            };
            inflight.insert(id, (op, sector, nsect, data, snap));
            issued += 1;
        }
        front.publish();
        let budget = rng.range(1, 16) as usize;
        let p = be.poll(0, &mut front.grants, &mut vol, budget).unwrap();
        assert!(p.requests <= budget);
        for d in front.responses() {
            let (op, sector, nsect, data, snap) = inflight.remove(&d.id).unwrap();
            assert_eq!(d.rsp.status, Status::Okay, "{op:?} at {sector}+{nsect}");
            let r = sectors_bytes(sector)..sectors_bytes(sector + nsect);
            match op {
                Op::Read => {
                    assert!(d.data == model[r], "read at sector {sector} differs");
                    reads += 1;
                }
                Op::Write | Op::Discard => {
                    if matches!(op, Op::Write) {
                        model[r].copy_from_slice(&data);
                        writes += 1;
                    } else {
                        model[r].fill(0);
                        discards += 1;
                    }
                    ver += 1;
                    for v in &mut version[sector as usize..(sector + nsect) as usize] {
                        *v = ver;
                    }
                }
                Op::Flush => {
                    flushes += 1;
                    // Sectors under a write/discard still in flight may already hold newer
                    // data in the durable image (a later flush ran before we got here).
                    let busy = |s: u64| {
                        inflight.values().any(|(o, st, n, _, _)| matches!(o, Op::Write | Op::Discard) && *st <= s && s < st + n)
                    };
                    for (s, v) in snap {
                        // Not rewritten since the flush was issued: must be durable as acked.
                        if version[s] == v && !busy(s as u64) {
                            let b = sectors_bytes(s as u64)..sectors_bytes(s as u64 + 1);
                            assert!(vol.durable()[b.clone()] == model[b], "sector {s} not durable after flush");
                        }
                    }
                }
            }
        }
    }
    assert!(front.shadow.is_empty());
    assert!(vol.view() == &model[..], "volume differs from model");
    assert_eq!(vol.range_violations(), 0);
    assert_eq!(front.grants.range_violations() + front.grants.ref_faults(), 0);
    let st = be.stats();
    assert_eq!(st.bad_requests + st.copy_errors + st.io_errors + st.unsupported, 0);
    assert_eq!(be.in_flight(), 0);
    (reads, writes, discards, flushes, indirect)
}

#[test]
fn random_workload_512_byte_sectors() {
    let (r, w, d, f, i) = run(11, 512, 3000, 1);
    println!("reads={r} writes={w} discards={d} flushes={f} indirect={i}");
    assert!(r > 300 && w > 600 && d > 300 && f > 300 && i > 300);
}

#[test]
fn random_workload_4096_byte_sectors_multi_page_ring() {
    let (r, w, d, f, i) = run(12, 4096, 2000, 4);
    assert!(r > 200 && w > 400 && d > 200 && f > 200 && i > 200);
}

/// A volume that completes nothing while `hold` is set.
struct Stall {
    inner: MemVolume,
    hold: bool,
}
impl Volume for Stall {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn can_submit(&self) -> bool {
        self.inner.can_submit()
    }
    fn submit(&mut self, req: IoRequest) {
        self.inner.submit(req)
    }
    fn poll(&mut self, now_us: u64) -> Option<IoCompletion> {
        if self.hold { None } else { self.inner.poll(now_us) }
    }
}

#[test]
fn flush_waits_for_earlier_writes_and_answers_only_when_durable() {
    let g = geometry(1 << 20, 512);
    let mut front = SimFront::new(1);
    let mut be = front.backend(g, Config::default());
    let mut vol = Stall {
        inner: MemVolume::new(g, 8),
        hold: true,
    };
    let mut rng = Rng(7);
    let segs = front.segments(&mut rng, 8, true, false);
    front.fill(&segs, &[0x5a; 4096]);
    let w = front.rw(RwOp::Write, 64, segs, false);
    let f = front.flush();
    front.publish();
    let p = be.poll(0, &mut front.grants, &mut vol, 32).unwrap();
    assert_eq!((p.requests, p.responses, p.in_flight), (2, 0, 2));
    assert_eq!(vol.inner.submitted(), 1, "the flush is held until the earlier write completes");
    assert!(front.responses().is_empty());
    vol.hold = false;
    let p = be.poll(0, &mut front.grants, &mut vol, 32).unwrap();
    assert_eq!(p.responses, 2);
    assert!(p.notify);
    let done = front.responses();
    assert_eq!(done.iter().map(|d| d.id).collect::<Vec<_>>(), vec![w, f]);
    assert!(done.iter().all(|d| d.rsp.status == Status::Okay));
    assert_eq!(vol.inner.flushes(), 1);
    assert!(vol.inner.durable()[64 * 512..72 * 512].iter().all(|&b| b == 0x5a));
    // A volume whose flush fails: the guest gets an error, never a false "durable".
    let w2 = {
        let segs = front.segments(&mut rng, 1, true, false);
        front.rw(RwOp::Write, 0, segs, false)
    };
    let f2 = front.flush();
    front.publish();
    // Tags are assigned in order: the write is tag 3, the flush tag 4.
    vol.inner.fail_tag(4);
    be.poll(0, &mut front.grants, &mut vol, 32).unwrap();
    let done = front.responses();
    let st = |id| done.iter().find(|d| d.id == id).unwrap().rsp.status;
    assert_eq!((st(w2), st(f2)), (Status::Okay, Status::Error));
    assert_eq!(be.stats().io_errors, 1);
}

#[test]
fn guests_on_slices_never_reach_each_other() {
    let slice_len = 256 * 1024u64;
    let disk_g = geometry(2 * slice_len, 512);
    let mut disk = MemVolume::new(disk_g, 64);
    disk.set_order(Order::Shuffled(5));
    disk.view_mut()[slice_len as usize..].fill(0xbb);
    let mut mux = DiskMux::new(disk);
    let ga = mux.add(Slice { offset: 0, len: slice_len }, 512, false).unwrap();
    let gb = mux.add(Slice { offset: slice_len, len: slice_len }, 4096, false).unwrap();
    assert_eq!(mux.add(Slice { offset: slice_len - 4096, len: 8192 }, 512, false), Err(blkback::Error::Overlap));
    assert_eq!(mux.add(Slice { offset: 2 * slice_len, len: 4096 }, 512, false), Err(blkback::Error::OutsideDisk));
    let g = mux.volume(ga).unwrap().geometry();
    assert_eq!((g.size, g.sector_size), (slice_len, 512));
    assert_eq!(mux.volume(gb).unwrap().geometry().sector_size, 4096);
    let mut a = SimFront::new(1);
    let mut be = a.backend(g, Config::default());
    let mut rng = Rng(99);
    // A writes everywhere it may and tries just past its end, at u64 overflow, with discards.
    let mut ok = 0;
    let mut refused = 0;
    for i in 0..400u64 {
        let sector = match i % 4 {
            0 => rng.below(slice_len / 512 - 8),
            1 => slice_len / 512 - rng.below(8),
            2 => slice_len / 512 + rng.below(1 << 20),
            _ => u64::MAX - rng.below(16),
        };
        if i % 5 == 0 {
            a.discard(sector, rng.range(1, 64));
        } else {
            let segs = a.segments(&mut rng, 8, true, false);
            a.fill(&segs, &[0xaa; 4096]);
            a.rw(RwOp::Write, sector, segs, i % 3 == 0);
        }
        a.publish();
        // Poll once per request, then drain at the end.
        while {
            be.poll(0, &mut a.grants, &mut mux.volume(ga).unwrap(), 32).unwrap();
            for d in a.responses() {
                if d.rsp.status == Status::Okay {
                    ok += 1;
                } else {
                    refused += 1;
                }
            }
            i == 399 && be.in_flight() > 0
        } {}
    }
    println!("ok={ok} refused={refused}");
    assert!(ok > 50 && refused > 150);
    let d = mux.disk();
    assert!(d.view()[slice_len as usize..].iter().all(|&b| b == 0xbb), "B's slice was touched");
    assert!(d.view()[..slice_len as usize].contains(&0xaa));
    assert_eq!(d.range_violations(), 0);
    assert!(mux.volume(gb).unwrap().poll(0).is_none(), "nothing was routed to B");
    // B, through its own engine (4 KiB sectors), reads its slice back and writes its end.
    let mut b = SimFront::new(1);
    let gbg = mux.volume(gb).unwrap().geometry();
    let mut be_b = b.backend(gbg, Config::default());
    let segs = b.segments(&mut rng, 16, false, true);
    let rid = b.rw(RwOp::Read, 0, segs, false);
    let segs = b.segments(&mut rng, 8, true, true);
    b.fill(&segs, &[0xcc; 4096]);
    let wid = b.rw(RwOp::Write, slice_len / 512 - 8, segs, false);
    b.publish();
    let mut got = Vec::new();
    while got.len() < 2 {
        be_b.poll(0, &mut b.grants, &mut mux.volume(gb).unwrap(), 32).unwrap();
        got.extend(b.responses());
    }
    let r = got.iter().find(|d| d.id == rid).unwrap();
    assert!(r.rsp.status == Status::Okay && r.data.iter().all(|&x| x == 0xbb));
    assert_eq!(got.iter().find(|d| d.id == wid).unwrap().rsp.status, Status::Okay);
    let end = 2 * slice_len as usize;
    assert!(mux.disk().view()[end - 4096..end].iter().all(|&x| x == 0xcc));
    assert_eq!(mux.stray(), 0);
}
