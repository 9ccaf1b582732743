//! `work=hostile`: requests a correct frontend never sends, pushed straight into the ring
//! (bypassing `blkfront`'s checks). Each must come back as an error response; the backend must
//! keep serving the channel.

use alloc::collections::BTreeMap;
use alloc::string::String;

use xen_abi::blkif::{self, MAX_INDIRECT_PAGES_PER_REQUEST, MAX_SEGMENTS_PER_REQUEST, Request, Response, RwOp, Segment, Status};
use xen_abi::shmem::SharedMem;

use crate::FrontDev;

/// The hostile requests: id and what is wrong with it.
pub const CASES: [(u64, &str); 4] = [
    (0xbad0_0001, "sector-past-end"),
    (0xbad0_0002, "bad-page-ref"),
    (0xbad0_0003, "200-direct-segments"),
    (0xbad0_0004, "4000-indirect-segments"),
];

/// A page reference no channel has.
pub const BAD_REF: u32 = 0xffff_ff00;

/// Pushes the [`CASES`] into the ring (needs one free data page).
pub fn send<R: SharedMem, M: SharedMem>(dev: &mut FrontDev<R, M>) -> Result<(), String> {
    let page = dev.pages.allocator().alloc().ok_or("no free page")?;
    let end_sector = dev.front.info().size() / blkif::SECTOR_SIZE as u64;
    let rw = |id: u64, sector: u64, gref: u32, nr: u8| {
        let mut segments = [Segment::default(); MAX_SEGMENTS_PER_REQUEST];
        for s in segments.iter_mut() {
            *s = Segment { gref, first_sect: 0, last_sect: 7 };
        }
        Request::Rw { op: RwOp::Read, handle: 0, id, sector, nr_segments: nr, segments }.to_bytes()
    };
    let reqs = [
        rw(CASES[0].0, end_sector, page, 1),
        rw(CASES[1].0, 0, BAD_REF, 1),
        rw(CASES[2].0, 0, page, 200),
        Request::Indirect {
            op: RwOp::Read,
            handle: 0,
            id: CASES[3].0,
            sector: 0,
            nr_segments: 4000,
            indirect_grefs: [page; MAX_INDIRECT_PAGES_PER_REQUEST],
        }
        .to_bytes(),
    ];
    let ring = dev.front.raw_ring();
    for r in &reqs {
        ring.push_request(r).map_err(|e| alloc::format!("push: {e}"))?;
    }
    dev.notify |= ring.publish_requests_and_check_notify();
    Ok(())
}

/// Publishes a request producer index 2^30 beyond the real one (`work=hostile:ring`); returns
/// what it wrote.
pub fn wild_producer<R: SharedMem, M: SharedMem>(dev: &mut FrontDev<R, M>) -> u32 {
    let ring = dev.front.raw_ring();
    let wild = ring.req_prod_pvt().wrapping_add(0x4000_0000);
    ring.mem().store_u32(xen_abi::ring::REQ_PROD_OFF, wild, core::sync::atomic::Ordering::Release);
    dev.notify = true;
    wild
}

/// Collects the answers to [`send`] (status by id) from the ring.
pub fn collect<R: SharedMem, M: SharedMem>(dev: &mut FrontDev<R, M>, seen: &mut BTreeMap<u64, Status>) -> Result<(), String> {
    let ring = dev.front.raw_ring();
    while let Some(raw) = ring.pop_response().map_err(|e| alloc::format!("ring: {e}"))? {
        let r = Response::from_bytes(&raw).map_err(|e| alloc::format!("response: {e}"))?;
        seen.insert(r.id, r.status);
    }
    Ok(())
}
