//! The frontend engine against the backend engine: Blkfront (guest) <-> Blkback (driver
//! domain) over a HostMem ring with FakeGrants as the guest's pages, random workload byte-exact
//! against a model (direct and indirect requests, 512/4096 sectors, flush, discard); the same
//! over an iConnect channel's data area; hostile responses; backend keys round trip.

mod common;

use blkfront::channel::ChannelPages;
use blkfront::{BackendInfo, Blkfront, Error, FrontPages};
use blkback::volume::{MemVolume, Order};
use blkback::{Config, negotiate};
use common::{Rng, geometry};
use iconnect_channel::{Backend, BackendEvent, Frontend, FrontendConfig, FrontendEvent, KeyMap, RingSpec};
use netback::grant::FakeGrants;
use xen_abi::blkif::{self, BlkRing, Response, Status};
use xen_abi::ring::{BackRing, FrontRing};
use xen_abi::shmem::HostMem;
use xen_abi::xenbus::FrontendStyle;
use xen_abi::{GrantRef, PAGE_SIZE};

/// The guest's pages as FakeGrants entries (the backend copies through the same table).
struct GrantPages {
    g: FakeGrants,
    next: GrantRef,
    live: usize,
}

impl FrontPages for GrantPages {
    fn alloc(&mut self, writable: bool) -> Option<GrantRef> {
        if self.live >= 512 {
            return None;
        }
        self.next += 1;
        self.live += 1;
        self.g.grant(self.next, !writable);
        Some(self.next)
    }
    fn free(&mut self, page: GrantRef) {
        assert!(self.g.is_granted(page), "double free");
        self.live -= 1;
        self.g.revoke(page);
    }
    fn write(&mut self, page: GrantRef, offset: usize, src: &[u8]) -> bool {
        match self.g.page_mut(page) {
            Some(p) => {
                p[offset..offset + src.len()].copy_from_slice(src);
                true
            }
            None => false,
        }
    }
    fn read(&mut self, page: GrantRef, offset: usize, dst: &mut [u8]) -> bool {
        match self.g.page(page) {
            Some(p) => {
                dst.copy_from_slice(&p[offset..offset + dst.len()]);
                true
            }
            None => false,
        }
    }
}

fn info_of(g: &blkback::Geometry, cfg: &Config) -> BackendInfo {
    let mut keys = KeyMap::new();
    negotiate::advertise(g, cfg, 0, &mut keys).unwrap();
    BackendInfo::from_keys(&keys).unwrap()
}

fn run(seed: u64, sector_size: u32, n_ops: usize) {
    let mut rng = Rng(seed | 1);
    let size = 4u64 << 20;
    let g = geometry(size, sector_size);
    let cfg = Config {
        max_indirect_segments: 64,
        ..Config::default()
    };
    let mem = HostMem::pages(1);
    let mut front = Blkfront::new(FrontRing::init(mem.clone()).unwrap(), info_of(&g, &cfg), 64);
    assert_eq!(front.max_request_bytes(), 64 * PAGE_SIZE);
    let mut back = blkback::Blkback::new(mem, g, cfg).unwrap();
    let mut vol = MemVolume::new(g, 16);
    vol.set_order(Order::Shuffled(seed | 7));
    let mut pages = GrantPages {
        g: FakeGrants::new(),
        next: 0,
        live: 0,
    };
    let ss = u64::from(sector_size);
    let mut model = vec![0u8; size as usize];
    let mut inflight = std::collections::BTreeMap::new();
    let (mut issued, mut indirect) = (0, 0);
    while issued < n_ops || !inflight.is_empty() {
        for _ in 0..rng.below(5) {
            if issued == n_ops || !front.can_queue() {
                break;
            }
            let kind = rng.below(10);
            let len = if rng.below(3) == 0 { rng.range(12, 64) as usize * PAGE_SIZE } else { (rng.range(1, 24) * ss) as usize };
            let off = rng.below((size - len as u64) / ss + 1) * ss;
            let busy = inflight.values().any(|&(k, o, l, _): &(u64, u64, usize, Vec<u8>)| k < 8 && kind < 8 && o < off + len as u64 && off < o + l as u64);
            if busy {
                continue;
            }
            let r = match kind {
                0..=3 => {
                    let data = rng.bytes(len);
                    let r = front.write(&mut pages, off, &data);
                    r.map(|id| (id, data))
                }
                4..=6 => front.read(&mut pages, off, len).map(|id| (id, Vec::new())),
                7 => front.discard(off, len as u64).map(|id| (id, Vec::new())),
                _ => front.flush().map(|id| (id, Vec::new())),
            };
            match r {
                Ok((id, data)) => {
                    if len > 11 * PAGE_SIZE && kind < 7 {
                        indirect += 1;
                    }
                    inflight.insert(id, (kind, off, len, data));
                    issued += 1;
                }
                Err(Error::Busy) => break,
                Err(e) => panic!("{e}"),
            }
        }
        front.publish();
        back.poll(0, &mut pages.g, &mut vol, 16).unwrap();
        while let Some(c) = front.poll(&mut pages).unwrap() {
            let (kind, off, len, data) = inflight.remove(&c.id).expect("known id");
            assert_eq!(c.status, Status::Okay, "kind {kind} at {off}+{len}");
            let r = off as usize..off as usize + len;
            match kind {
                0..=3 => model[r].copy_from_slice(&data),
                4..=6 => assert!(c.data == model[r], "read at {off} differs"),
                7 => model[r].fill(0),
                _ => {}
            }
        }
    }
    assert_eq!(pages.live, 0, "every page given back");
    assert!(vol.view() == &model[..]);
    assert!(indirect > 20, "indirect={indirect}");
    assert_eq!(pages.g.range_violations(), 0);
}

#[test]
fn frontend_and_backend_engines_512() {
    run(1, 512, 1500);
}

#[test]
fn frontend_and_backend_engines_4096() {
    run(2, 4096, 1000);
}

#[test]
fn local_checks_and_busy() {
    let g = blkback::Geometry {
        read_only: true,
        flush: false,
        discard: false,
        ..geometry(1 << 20, 4096)
    };
    let cfg = Config {
        max_indirect_segments: 0,
        ..Config::default()
    };
    let mem = HostMem::pages(1);
    let mut front = Blkfront::new(FrontRing::init(mem).unwrap(), info_of(&g, &cfg), 64);
    let mut pages = GrantPages { g: FakeGrants::new(), next: 0, live: 0 };
    assert_eq!(front.max_request_bytes(), 11 * PAGE_SIZE, "no indirect offered");
    assert_eq!(front.read(&mut pages, 512, 4096), Err(Error::Misaligned));
    assert_eq!(front.read(&mut pages, 0, 512), Err(Error::Misaligned));
    assert_eq!(front.read(&mut pages, 1 << 20, 4096), Err(Error::OutOfRange));
    assert_eq!(front.read(&mut pages, 0, 12 * PAGE_SIZE), Err(Error::TooLarge));
    assert_eq!(front.write(&mut pages, 0, &[0; 4096]), Err(Error::ReadOnly));
    assert_eq!(front.flush(), Err(Error::Unsupported));
    assert_eq!(front.discard(0, 4096), Err(Error::Unsupported));
    for _ in 0..32 {
        front.read(&mut pages, 0, 4096).unwrap();
    }
    assert_eq!(front.read(&mut pages, 0, 4096), Err(Error::Busy), "ring full");
    assert_eq!(pages.live, 32);
}

#[test]
fn hostile_responses_are_refused() {
    let g = geometry(1 << 20, 512);
    let cfg = Config::default();
    for (id_delta, op, status, want) in [
        (7, blkif::op::READ, 0i16, Err(Error::BadResponse)),  // unknown id
        (0, blkif::op::WRITE, 0, Err(Error::BadResponse)),    // wrong operation
        (0, blkif::op::READ, 5, Err(Error::BadResponse)),     // unknown status
        (0, blkif::op::READ, -1, Ok(Status::Error)),
    ] {
        let mem = HostMem::pages(1);
        let mut front = Blkfront::new(FrontRing::init(mem.clone()).unwrap(), info_of(&g, &cfg), 0);
        let mut pages = GrantPages { g: FakeGrants::new(), next: 0, live: 0 };
        let id = front.read(&mut pages, 0, 4096).unwrap();
        front.publish();
        let mut back: BackRing<HostMem, BlkRing> = BackRing::attach(mem).unwrap();
        back.pop_request().unwrap().unwrap();
        let mut raw = Response { id: id + id_delta, operation: op, status: Status::Okay }.to_bytes();
        raw[10..12].copy_from_slice(&status.to_le_bytes());
        back.push_response(&raw).unwrap();
        back.publish_responses();
        let got = front.poll(&mut pages).map(|c| c.unwrap().status);
        assert_eq!(got, want);
    }
}

#[test]
fn backend_keys_strict() {
    let ok = [(negotiate::SECTORS, "2048"), (negotiate::SECTOR_SIZE, "4096"), (negotiate::INFO, "4")];
    let i = BackendInfo::from_keys(&iconnect::keys::PairSource(&ok)).unwrap();
    assert_eq!((i.size(), i.read_only, i.flush, i.max_indirect_segments), (8 << 20, true, false, 0));
    for bad in [
        [(negotiate::SECTORS, "2048"), (negotiate::SECTOR_SIZE, "1024"), (negotiate::INFO, "0")],
        [(negotiate::SECTORS, "-1"), (negotiate::SECTOR_SIZE, "512"), (negotiate::INFO, "0")],
        [(negotiate::SECTORS, "2048"), (negotiate::FEATURE_FLUSH_CACHE, "2"), (negotiate::INFO, "0")],
        [(negotiate::SECTORS, "2048"), (negotiate::FEATURE_MAX_INDIRECT_SEGMENTS, "5000"), (negotiate::INFO, "0")],
    ] {
        assert!(BackendInfo::from_keys(&iconnect::keys::PairSource(&bad)).is_err(), "{bad:?}");
    }
    assert_eq!(
        BackendInfo::from_keys(&iconnect::keys::PairSource(&[])),
        Err(Error::MissingKey(negotiate::SECTORS))
    );
}

#[test]
fn frontend_and_backend_over_an_iconnect_channel() {
    let g = geometry(1 << 20, 512);
    let cfg = Config::default();
    let m = HostMem::pages(128);
    let mut be = Backend::new(m.clone(), KeyMap::new()).unwrap();
    let config = FrontendConfig {
        style: FrontendStyle::Block,
        rings: vec![RingSpec {
            page_order: 0,
            slot_bytes: blkif::REQUEST_SIZE as u32,
            vector: 0,
        }],
        data_pages: None,
    };
    let mut fe = Frontend::new(m.clone(), config, KeyMap::new()).unwrap();
    let (mut engine, mut ring, mut ready) = (None, None, false);
    for _ in 0..8 {
        while let Some(ev) = be.poll() {
            if ev == BackendEvent::Connect {
                negotiate::advertise(&g, &cfg, 0, be.keys_mut()).unwrap();
                be.publish_keys();
                engine = Some((
                    blkback::Blkback::new(be.ring_window::<BlkRing>(0).unwrap(), g, cfg).unwrap(),
                    be.data_area().unwrap(),
                ));
                be.accept();
            }
        }
        while let Some(ev) = fe.poll() {
            match ev {
                FrontendEvent::SetUp => {
                    ring = Some((fe.front_ring::<BlkRing>(0).unwrap(), fe.data_area().unwrap(), fe.page_allocator()));
                }
                FrontendEvent::Ready => ready = true,
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(ready);
    let (mut back, mut grants) = engine.unwrap();
    let (ring, data, alloc) = ring.unwrap();
    let info = BackendInfo::from_keys(fe.backend_keys()).unwrap();
    let mut front = Blkfront::new(ring, info, 32);
    let mut pages = ChannelPages::new(data, alloc);
    let free0 = pages.free_pages();
    let mut vol = MemVolume::new(g, 8);
    let pattern: Vec<u8> = (0..20 * PAGE_SIZE).map(|i| (i * 7 + i / 4096) as u8).collect();
    let w = front.write(&mut pages, 8192, &pattern).unwrap(); // 20 pages: indirect
    let f = front.flush().unwrap();
    assert!(front.publish());
    let mut done = Vec::new();
    let mut serve = |front: &mut Blkfront<_>, pages: &mut ChannelPages<HostMem>, done: &mut Vec<_>, n| {
        while done.len() < n {
            back.poll(0, &mut grants, &mut vol, 8).unwrap();
            while let Some(c) = front.poll(pages).unwrap() {
                done.push(c);
            }
        }
    };
    serve(&mut front, &mut pages, &mut done, 2);
    assert_eq!(done.iter().map(|c| (c.id, c.status)).collect::<Vec<_>>(), vec![(w, Status::Okay), (f, Status::Okay)]);
    let r = front.read(&mut pages, 8192, pattern.len()).unwrap();
    front.publish();
    serve(&mut front, &mut pages, &mut done, 3);
    assert_eq!((done[2].id, done[2].status), (r, Status::Okay));
    assert!(done[2].data == pattern);
    assert!(vol.durable()[8192..8192 + pattern.len()] == pattern[..]);
    assert_eq!(pages.free_pages(), free0, "pages given back");
}

/// `set_rearm(false)` (a backend busy-polling): the frontend's requests need no doorbell
/// while the backend polls anyway; the poll with re-arming before the backend sleeps makes
/// the next request notify again, and a request published meanwhile is never missed.
#[test]
fn busy_polling_backend_suppresses_doorbells() {
    let g = geometry(1 << 20, 512);
    let cfg = Config::default();
    let mem = HostMem::pages(1);
    let mut front = Blkfront::new(FrontRing::init(mem.clone()).unwrap(), info_of(&g, &cfg), 0);
    let mut back = blkback::Blkback::new(mem, g, cfg).unwrap();
    let mut vol = MemVolume::new(g, 16);
    let mut pages = GrantPages { g: FakeGrants::new(), next: 0, live: 0 };
    // Fresh ring: req_event = 1, the first request notifies.
    front.read(&mut pages, 0, 4096).unwrap();
    assert!(front.publish(), "first request notifies");
    back.set_rearm(false);
    let p = back.poll(0, &mut pages.g, &mut vol, 16).unwrap();
    assert_eq!(p.requests, 1);
    while front.poll(&mut pages).unwrap().is_some() {}
    // The backend keeps polling without re-arming: no doorbell for the next requests...
    for i in 0..5u64 {
        front.read(&mut pages, i * 4096, 4096).unwrap();
        assert!(!front.publish(), "request {i}: no doorbell while the backend polls");
        let p = back.poll(0, &mut pages.g, &mut vol, 16).unwrap();
        assert_eq!(p.requests, 1, "request {i} taken by polling");
        while front.poll(&mut pages).unwrap().is_some() {}
    }
    // ... the last poll before sleeping re-arms (and finds nothing)...
    back.set_rearm(true);
    assert_eq!(back.poll(0, &mut pages.g, &mut vol, 16).unwrap().requests, 0);
    // ... so the next request rings again.
    front.read(&mut pages, 0, 4096).unwrap();
    assert!(front.publish(), "after re-arming the frontend notifies");
    // A request published between an un-armed poll and the re-arming poll is taken by the
    // latter (it re-checks the ring after arming).
    back.set_rearm(false);
    assert_eq!(back.poll(0, &mut pages.g, &mut vol, 16).unwrap().requests, 1);
    front.read(&mut pages, 8192, 4096).unwrap();
    assert!(!front.publish());
    back.set_rearm(true);
    assert_eq!(back.poll(0, &mut pages.g, &mut vol, 16).unwrap().requests, 1, "not missed");
    assert_eq!(back.poll(0, &mut pages.g, &mut vol, 16).unwrap().requests, 0);
    while front.poll(&mut pages).unwrap().is_some() {}
    assert_eq!(back.stats().reads, 8);
}
