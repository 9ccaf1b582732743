//! A simulated blkfront written from the `blkif.h` contract (not from the engine): it owns the
//! shared ring (initialises it, as a frontend must), grants its data pages in a [`FakeGrants`]
//! table, builds direct requests (up to 11 segments at arbitrary sector ranges of their pages)
//! and indirect requests (descriptor pages granted read-only), and gathers read data from its
//! pages when responses arrive.
#![allow(dead_code)]

use std::collections::HashMap;

use blkback::volume::{Geometry, MemVolume};
use blkback::{Blkback, Config};
use netback::grant::FakeGrants;
use xen_abi::blkif::{self, BlkRing, Request, Response, RwOp, Segment, Status};
use xen_abi::ring::FrontRing;
use xen_abi::shmem::HostMem;
use xen_abi::{GrantRef, PAGE_SIZE};

/// Deterministic xorshift64* generator.
#[derive(Clone)]
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn range(&mut self, lo: u64, hi_incl: u64) -> u64 {
        lo + self.below(hi_incl - lo + 1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// What the frontend remembers about a request in flight.
#[derive(Debug, Clone)]
pub struct Shadow {
    pub op: u8,
    pub segs: Vec<Segment>,
    pub pages: Vec<GrantRef>,
}

pub struct SimFront {
    pub ring: FrontRing<HostMem, BlkRing>,
    pub mem: HostMem,
    pub grants: FakeGrants,
    next_gref: GrantRef,
    next_id: u64,
    pub shadow: HashMap<u64, Shadow>,
}

/// A completed request as the frontend sees it.
#[derive(Debug, Clone)]
pub struct Done {
    pub id: u64,
    pub rsp: Response,
    /// Read data gathered from the segments (reads only, status Okay).
    pub data: Vec<u8>,
}

pub fn geometry(size: u64, sector_size: u32) -> Geometry {
    Geometry {
        size,
        sector_size,
        read_only: false,
        flush: true,
        discard: true,
    }
}

impl SimFront {
    pub fn new(pages: usize) -> Self {
        let mem = HostMem::pages(pages);
        Self {
            ring: FrontRing::init(mem.clone()).unwrap(),
            mem,
            grants: FakeGrants::new(),
            next_gref: 100,
            next_id: 0x1000,
            shadow: HashMap::new(),
        }
    }

    pub fn backend(&self, g: Geometry, config: Config) -> Blkback<HostMem> {
        Blkback::new(self.mem.clone(), g, config).unwrap()
    }

    pub fn page(&mut self, readonly: bool) -> GrantRef {
        let g = self.next_gref;
        self.next_gref += 1;
        self.grants.grant(g, readonly);
        g
    }

    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Splits `sectors` 512-byte sectors into segments at random in-page positions (each
    /// segment on its own page); with `align8` every segment is a whole 4 KiB page. At most
    /// the engine's default `max_indirect_segments` (what it advertises as
    /// `feature-max-indirect-segments`, which a real frontend respects): once the rest only fits
    /// in whole pages, whole pages it is.
    pub fn segments(&mut self, rng: &mut Rng, mut sectors: u64, readonly: bool, align8: bool) -> Vec<Segment> {
        let max = usize::from(Config::default().max_indirect_segments);
        let mut v = Vec::new();
        while sectors > 0 {
            let must_pack = sectors.div_ceil(8) as usize >= max.saturating_sub(v.len());
            let (first, n) = if align8 {
                (0, 8)
            } else if must_pack {
                (0, sectors.min(8))
            } else {
                let first = rng.below(8) as u8;
                let n = rng.range(1, (8 - first as u64).min(sectors));
                (first, n)
            };
            let gref = self.page(readonly);
            v.push(Segment {
                gref,
                first_sect: first,
                last_sect: first + n as u8 - 1,
            });
            sectors -= n;
        }
        v
    }

    /// Copies `data` into the segments' pages (the frontend fills its own buffers).
    pub fn fill(&mut self, segs: &[Segment], data: &[u8]) {
        let mut at = 0;
        for s in segs {
            let p = self.grants.page_mut(s.gref).unwrap();
            let len = s.byte_len();
            p[s.byte_offset()..s.byte_offset() + len].copy_from_slice(&data[at..at + len]);
            at += len;
        }
    }

    pub fn gather(&self, segs: &[Segment]) -> Vec<u8> {
        let mut out = Vec::new();
        for s in segs {
            let p = self.grants.page(s.gref).unwrap();
            out.extend_from_slice(&p[s.byte_offset()..s.byte_offset() + s.byte_len()]);
        }
        out
    }

    /// Queues a request (raw slot), remembering its shadow.
    pub fn push_raw(&mut self, id: u64, raw: &[u8; blkif::REQUEST_SIZE], shadow: Shadow) {
        self.ring.push_request(raw).unwrap();
        self.shadow.insert(id, shadow);
    }

    /// A read or write of `segs` at `sector`: direct when up to 11 segments (and `indirect` is
    /// false), else indirect with descriptor pages.
    pub fn rw(&mut self, op: RwOp, sector: u64, segs: Vec<Segment>, indirect: bool) -> u64 {
        let id = self.id();
        let mut pages = Vec::new();
        let raw = if segs.len() <= blkif::MAX_SEGMENTS_PER_REQUEST && !indirect {
            rw_slot(op, id, sector, &segs)
        } else {
            let mut grefs = [0; blkif::MAX_INDIRECT_PAGES_PER_REQUEST];
            for (i, chunk) in segs.chunks(blkif::SEGMENTS_PER_INDIRECT_PAGE).enumerate() {
                let g = self.page(true);
                let p = self.grants.page_mut(g).unwrap();
                for (j, s) in chunk.iter().enumerate() {
                    s.emit(&mut p[j * 8..j * 8 + 8]);
                }
                grefs[i] = g;
                pages.push(g);
            }
            Request::Indirect {
                op,
                handle: 0,
                id,
                sector,
                nr_segments: segs.len() as u16,
                indirect_grefs: grefs,
            }
            .to_bytes()
        };
        let op_code = op.code();
        self.push_raw(id, &raw, Shadow { op: op_code, segs, pages });
        id
    }

    pub fn flush(&mut self) -> u64 {
        let id = self.id();
        let raw = rw_slot(RwOp::FlushDiskcache, id, 0, &[]);
        self.push_raw(id, &raw, Shadow { op: blkif::op::FLUSH_DISKCACHE, segs: vec![], pages: vec![] });
        id
    }

    pub fn discard(&mut self, sector: u64, nr_sectors: u64) -> u64 {
        let id = self.id();
        let req = Request::Discard {
            secure: false,
            handle: 0,
            id,
            sector,
            nr_sectors,
        };
        self.push_raw(id, &req.to_bytes(), Shadow { op: blkif::op::DISCARD, segs: vec![], pages: vec![] });
        id
    }

    pub fn publish(&mut self) {
        self.ring.publish_requests();
    }

    /// Collects responses; each must answer a request in flight with its operation; revokes
    /// the request's pages.
    pub fn responses(&mut self) -> Vec<Done> {
        let mut out = Vec::new();
        while let Some(raw) = self.ring.pop_response().unwrap() {
            // Parsed by hand: a response echoes even an unknown operation code (as Linux
            // blkback does), which xen-abi's strict parser refuses.
            let status = match i16::from_le_bytes([raw[10], raw[11]]) {
                0 => Status::Okay,
                -1 => Status::Error,
                -2 => Status::EOpNotSupp,
                s => panic!("bad status {s}"),
            };
            let rsp = Response {
                id: u64::from_le_bytes(raw[..8].try_into().unwrap()),
                operation: raw[8],
                status,
            };
            let sh = self.shadow.remove(&rsp.id).unwrap_or_else(|| panic!("response for unknown id {}", rsp.id));
            assert_eq!(rsp.operation, sh.op, "operation echoed");
            let data = if sh.op == blkif::op::READ && rsp.status == Status::Okay {
                self.gather(&sh.segs)
            } else {
                Vec::new()
            };
            for s in &sh.segs {
                self.grants.revoke(s.gref);
            }
            for p in &sh.pages {
                self.grants.revoke(*p);
            }
            out.push(Done { id: rsp.id, rsp, data });
        }
        out
    }
}

/// The 112 bytes of a direct request (up to 11 segments).
pub fn rw_slot(op: RwOp, id: u64, sector: u64, segs: &[Segment]) -> [u8; blkif::REQUEST_SIZE] {
    let mut a = [Segment::default(); blkif::MAX_SEGMENTS_PER_REQUEST];
    a[..segs.len()].copy_from_slice(segs);
    Request::Rw {
        op,
        handle: 0,
        id,
        sector,
        nr_segments: segs.len() as u8,
        segments: a,
    }
    .to_bytes()
}

/// A segment.
pub fn seg(gref: GrantRef, first_sect: u8, last_sect: u8) -> Segment {
    Segment {
        gref,
        first_sect,
        last_sect,
    }
}

/// Bytes of `n` 512-byte sectors.
pub fn sectors_bytes(n: u64) -> usize {
    n as usize * blkif::SECTOR_SIZE
}

/// A zeroed volume.
pub fn volume(g: Geometry, capacity: usize) -> MemVolume {
    MemVolume::new(g, capacity)
}

pub const PAGE: usize = PAGE_SIZE;
