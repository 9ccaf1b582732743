//! blk-dd's ports against the real guest-side engines: two guests (iConnect frontend +
//! `blkfront::Blkfront` over `ChannelPages`) on two channels, each naming its volume; the
//! domain's registry hands out slices of one shared disk (`DiskMux` over an in-memory disk).
//! Checks: both connect with the right geometry, data lands in the right slice and is durable
//! after the flush, a guest's out-of-range request fails without touching the neighbour, a
//! second guest asking for a volume in use or an unknown volume is refused with the reason in
//! the backend keys, a remote volume not ready yet makes the guest wait, a guest that closes
//! frees its volume, a guest that breaks its ring loses only its own port.

use blk_dd::{BlkPort, ERROR_KEY, PEER_KEY, PortEvent, Registry};
use blkback::volume::{MemVolume, Volume};
use blkback::volumes::DiskMux;
use blkback::{Backing, Geometry, VolumeMap};
use blkfront::channel::{ChannelPages, frontend_config};
use blkfront::{BackendInfo, Blkfront};
use iconnect::storage::{StorageRequest, VolumeName};
use iconnect_channel::{Frontend, FrontendEvent, KeyMap, Window};
use xen_abi::blkif::{BlkRing, Status};
use xen_abi::shmem::{HostMem, SharedMem};

struct Guest {
    fe: Frontend<HostMem>,
    dev: Option<(Blkfront<Window<HostMem>>, ChannelPages<HostMem>)>,
    down: bool,
}

impl Guest {
    fn new(mem: HostMem, volume: &str, id: u16) -> Self {
        let mut keys = KeyMap::new();
        keys.insert(PEER_KEY, &id.to_string()).unwrap();
        StorageRequest { volume: VolumeName::parse("v", volume).unwrap(), durable_flush: true }
            .write(&mut keys)
            .unwrap();
        Guest { fe: Frontend::new(mem, frontend_config(), keys).unwrap(), dev: None, down: false }
    }

    fn poll(&mut self) {
        while let Some(ev) = self.fe.poll() {
            match ev {
                FrontendEvent::SetUp => {}
                FrontendEvent::Ready => {
                    let info = BackendInfo::from_keys(self.fe.backend_keys()).unwrap();
                    let ring = self.fe.front_ring::<BlkRing>(0).unwrap();
                    let pages = ChannelPages::new(self.fe.data_area().unwrap(), self.fe.page_allocator());
                    self.dev = Some((Blkfront::new(ring, info, 32), pages));
                }
                _ => self.down = true,
            }
        }
    }
}

struct Domain {
    reg: Registry,
    mux: DiskMux<MemVolume>,
    /// Registry id -> mux guest index.
    local: Vec<Option<usize>>,
    events: Vec<PortEvent>,
    now_ns: u64,
}

impl Domain {
    fn new(cmdline: &str) -> Self {
        let map = VolumeMap::from_cmdline(cmdline).unwrap();
        map.check_disk(4 << 20, 512).unwrap();
        let g = Geometry { size: 4 << 20, sector_size: 512, read_only: false, flush: true, discard: false };
        let mut mux = DiskMux::new(MemVolume::new(g, 32));
        let mut reg = Registry::new(&map);
        let mut local = Vec::new();
        for (id, v) in map.volumes().iter().enumerate() {
            match &v.backing {
                Backing::Local(s) => {
                    let i = mux.add(*s, v.sector_size, v.read_only).unwrap();
                    reg.set_geometry(id, mux.geometry(i).unwrap());
                    local.push(Some(i));
                }
                Backing::Nbd { .. } => local.push(None),
            }
        }
        Domain { reg, mux, local, events: Vec::new(), now_ns: 0 }
    }

    fn poll(&mut self, ports: &mut [BlkPort<HostMem>]) {
        for p in ports.iter_mut() {
            p.check_liveness(self.now_ns);
            p.poll(&mut self.reg, &mut self.events, self.now_ns);
            if let Some(id) = p.volume() {
                let i = self.local[id].expect("local volume");
                p.serve(0, &mut self.mux.volume(i).unwrap());
            }
        }
    }
}

fn run(d: &mut Domain, ports: &mut [BlkPort<HostMem>], guests: &mut [&mut Guest], rounds: usize) {
    for _ in 0..rounds {
        d.poll(ports);
        for g in guests.iter_mut() {
            g.poll();
        }
    }
}

/// Issues one request and waits for its status (and data).
fn one(d: &mut Domain, ports: &mut [BlkPort<HostMem>], g: &mut Guest, op: impl FnOnce(&mut Blkfront<Window<HostMem>>, &mut ChannelPages<HostMem>) -> u64) -> (Status, Vec<u8>) {
    let (front, pages) = g.dev.as_mut().unwrap();
    let id = op(front, pages);
    front.publish();
    for _ in 0..100 {
        d.poll(ports);
        let (front, pages) = g.dev.as_mut().unwrap();
        if let Some(c) = front.poll(pages).unwrap() {
            assert_eq!(c.id, id);
            return (c.status, c.data);
        }
    }
    panic!("no response");
}

#[test]
fn two_guests_on_slices_of_one_disk() {
    let mut d = Domain::new("vol=a:local:0:1M vol=b:local:1M:1M:ss=4096 vol=r:nbd://10.0.2.2:10809/x");
    let mems: Vec<HostMem> = (0..4).map(|_| HostMem::pages(64)).collect();
    let mut ports: Vec<BlkPort<HostMem>> = mems.iter().enumerate().map(|(i, m)| BlkPort::new(i + 1, m.clone(), 0).unwrap()).collect();
    let mut ga = Guest::new(mems[0].clone(), "a", 1);
    let mut gb = Guest::new(mems[1].clone(), "b", 2);
    run(&mut d, &mut ports, &mut [&mut ga, &mut gb], 10);
    let ups: Vec<String> = d.events.iter().map(|e| e.marker("local")).collect();
    assert_eq!(
        ups,
        [
            "ICONNECT-PORT 1 up volume=a backing=local sectors=2048 sector_size=512 durable_flush=1 ro=0",
            "ICONNECT-PORT 2 up volume=b backing=local sectors=256 sector_size=4096 durable_flush=1 ro=0"
        ]
    );
    assert_eq!(ga.dev.as_ref().unwrap().0.info().size(), 1 << 20);

    // Writes, flush, read back; the data sits in the right slice and is durable.
    let pat: Vec<u8> = (0..8192u32).map(|i| (i * 13 + 7) as u8).collect();
    let p = pat.clone();
    assert_eq!(one(&mut d, &mut ports, &mut gb, |f, pg| f.write(pg, 4096, &p).unwrap()).0, Status::Okay);
    assert_eq!(one(&mut d, &mut ports, &mut gb, |f, _| f.flush().unwrap()).0, Status::Okay);
    let (st, data) = one(&mut d, &mut ports, &mut gb, |f, pg| f.read(pg, 4096, 8192).unwrap());
    assert_eq!(st, Status::Okay);
    assert!(data == pat);
    let at = (1 << 20) + 4096;
    assert!(d.mux.disk().durable()[at..at + 8192] == pat[..]);
    assert!(d.mux.disk().view()[..1 << 20].iter().all(|&b| b == 0), "a's slice untouched");

    // Guest a asks past its end through the raw ring: an error, nothing read from b's slice.
    let (front, _) = ga.dev.as_mut().unwrap();
    let ring = front.raw_ring();
    let req = xen_abi::blkif::Request::Rw {
        op: xen_abi::blkif::RwOp::Read,
        handle: 0,
        id: 99,
        sector: 2048,
        nr_segments: 1,
        segments: {
            let mut s = [xen_abi::blkif::Segment::default(); 11];
            s[0] = xen_abi::blkif::Segment { gref: 0, first_sect: 0, last_sect: 7 };
            s
        },
    };
    ring.push_request(&req.to_bytes()).unwrap();
    ring.publish_requests();
    run(&mut d, &mut ports, &mut [], 3);
    let raw = ga.dev.as_mut().unwrap().0.raw_ring().pop_response().unwrap().expect("answered");
    let rsp = xen_abi::blkif::Response::from_bytes(&raw).unwrap();
    assert_eq!((rsp.id, rsp.status), (99, Status::Error));

    // A third guest wants a's volume: refused; a fourth an unknown one: refused.
    let mut gc = Guest::new(mems[2].clone(), "a", 3);
    let mut gd = Guest::new(mems[3].clone(), "zz", 4);
    d.events.clear();
    run(&mut d, &mut ports, &mut [&mut gc, &mut gd], 10);
    assert!(gc.down && gd.down && gc.dev.is_none());
    assert_eq!(gc.fe.read_backend_keys().unwrap().get(ERROR_KEY), Some("volume-in-use"));
    assert_eq!(gd.fe.read_backend_keys().unwrap().get(ERROR_KEY), Some("unknown-volume"));
    let downs: Vec<String> = d.events.iter().map(|e| e.marker("-")).collect();
    assert_eq!(downs, ["ICONNECT-PORT 3 down reason=volume-in-use", "ICONNECT-PORT 4 down reason=unknown-volume"]);

    // a closes: its volume is free again and port 1 reports it.
    d.events.clear();
    ga.fe.close();
    run(&mut d, &mut ports, &mut [&mut ga], 10);
    assert_eq!(d.events, [PortEvent::Down { port: 1, reason: "disconnected".into() }]);
    assert!(d.reg.slots()[0].user.is_none());

    // b publishes a wild producer index: its port goes down at once (b need not close), its
    // volume is free, and b sees its channel fail.
    d.events.clear();
    let ring = gb.dev.as_mut().unwrap().0.raw_ring();
    let wild = ring.req_prod_pvt().wrapping_add(1 << 30);
    ring.mem().store_u32(xen_abi::ring::REQ_PROD_OFF, wild, std::sync::atomic::Ordering::Release);
    run(&mut d, &mut ports, &mut [&mut gb], 10);
    assert_eq!(d.events.len(), 1, "{:?}", d.events);
    assert!(d.events[0].marker("").starts_with("ICONNECT-PORT 2 down reason=blkback:ring"), "{:?}", d.events);
    assert!(d.reg.slots()[1].user.is_none());
    assert!(gb.down, "the guest sees its channel fail");
}

#[test]
fn a_guest_waits_for_its_remote_volume() {
    let mut d = Domain::new("vol=r:nbd://10.0.2.2:10809/x");
    let m = HostMem::pages(64);
    let mut ports = vec![BlkPort::new(1, m.clone(), 0).unwrap()];
    let mut g = Guest::new(m, "r", 1);
    run(&mut d, &mut ports, &mut [&mut g], 10);
    assert!(d.events.is_empty() && g.dev.is_none() && !g.down, "waits, not refused");
    assert!(d.reg.marker(0).ends_with("state=connecting"), "{}", d.reg.marker(0));
    // The NBD handshake told the size: the guest connects (served here from an in-memory volume).
    let geo = Geometry { size: 1 << 20, sector_size: 512, read_only: false, flush: true, discard: true };
    d.reg.set_geometry(0, geo);
    let mut vol = MemVolume::new(geo, 8);
    for _ in 0..10 {
        ports[0].poll(&mut d.reg, &mut d.events, 0);
        g.poll();
        ports[0].serve(0, &mut vol);
    }
    assert!(g.dev.is_some());
    assert!(matches!(&d.events[..], [PortEvent::Up { port: 1, id: 0, .. }]));
    assert_eq!(vol.geometry(), geo);
}

#[test]
fn a_silent_guest_frees_its_volume() {
    let mut d = Domain::new("vol=a:local:0:1M");
    let m = HostMem::pages(64);
    let mut ports = vec![BlkPort::new(1, m.clone(), 0).unwrap()];
    let mut g = Guest::new(m.clone(), "a", 1);
    g.fe.keys_mut().insert(blk_dd::HEARTBEAT_KEY, "100").unwrap();
    g.fe.publish_keys();
    run(&mut d, &mut ports, &mut [&mut g], 10);
    assert!(g.dev.is_some());
    // Beating every 100 ms for 2 s: stays up.
    for _ in 0..20 {
        d.now_ns += 100_000_000;
        g.fe.beat();
        run(&mut d, &mut ports, &mut [&mut g], 1);
    }
    assert!(matches!(&d.events[..], [PortEvent::Up { .. }]), "{:?}", d.events);
    // Silent (the VM was killed): down after 5 periods, volume free.
    for _ in 0..6 {
        d.now_ns += 100_000_000;
        d.poll(&mut ports);
    }
    assert_eq!(d.events.last(), Some(&PortEvent::Down { port: 1, reason: "heartbeat-timeout".into() }));
    assert!(d.reg.slots()[0].user.is_none());
    // A bad promise is refused.
    let m2 = HostMem::pages(64);
    let mut ports2 = vec![BlkPort::new(1, m2.clone(), 0).unwrap()];
    let mut g2 = Guest::new(m2, "a", 1);
    g2.fe.keys_mut().insert(blk_dd::HEARTBEAT_KEY, "0").unwrap();
    g2.fe.publish_keys();
    d.events.clear();
    run(&mut d, &mut ports2, &mut [&mut g2], 10);
    assert_eq!(d.events, [PortEvent::Down { port: 1, reason: "bad-key:heartbeat-ms".into() }]);
}
