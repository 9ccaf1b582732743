//! The blkback engine serves a block frontend over an iConnect channel (the QEMU platform's
//! transport), exactly as blk-dd will: block-style handshake, the guest names its volume with
//! `iconnect-storage-volume` (never a location), the backend finds it in the platform's volume
//! map, answers with the blkif keys (`sectors`, `sector-size`, ...) and the storage decision,
//! and serves ring 0 (blkif requests, 112-byte slots) with "grant references" that are data
//! page numbers checked by the channel's `DataArea`. A bad reference costs only its request.

mod common;

use blkback::volume::MemVolume;
use blkback::volumes::DiskMux;
use blkback::{Blkback, Config, VolumeMap, negotiate};
use iconnect::storage::{StorageGrant, StorageRequest, VolumeName};
use iconnect::Decision;
use iconnect_channel::{Backend, BackendEvent, Frontend, FrontendConfig, FrontendEvent, KeyMap, RingSpec};
use common::{rw_slot, seg};
use xen_abi::blkif::{self, BlkRing, Response, RwOp, Status};
use xen_abi::shmem::HostMem;
use xen_abi::xenbus::FrontendStyle;

#[test]
fn blkback_serves_a_block_channel_by_volume_name() {
    // The platform: one 1 MiB disk, two volumes; this guest asks for "g1" (4 KiB sectors).
    let map = VolumeMap::from_cmdline("vol=g0:local:0:512K vol=g1:local:512K:512K:ss=4096").unwrap();
    map.check_disk(1 << 20, 512).unwrap();
    let disk = MemVolume::new(
        blkback::Geometry {
            size: 1 << 20,
            sector_size: 512,
            read_only: false,
            flush: true,
            discard: true,
        },
        32,
    );
    let mut mux = DiskMux::new(disk);
    let mut guests = std::collections::BTreeMap::new();
    for v in map.volumes() {
        let blkback::Backing::Local(s) = v.backing else { unreachable!() };
        guests.insert(v.name.clone(), mux.add(s, v.sector_size, v.read_only).unwrap());
    }

    let m = HostMem::pages(64);
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
    let mut keys = KeyMap::new();
    StorageRequest {
        volume: VolumeName::parse("v", "g1").unwrap(),
        durable_flush: true,
    }
    .write(&mut keys)
    .unwrap();
    let mut fe = Frontend::new(m.clone(), config, keys).unwrap();

    let (mut engine, mut fio, mut ready) = (None, None, false);
    for _ in 0..8 {
        while let Some(ev) = be.poll() {
            if ev == BackendEvent::Connect {
                let req = StorageRequest::from_keys(be.frontend_keys()).unwrap().expect("storage keys");
                let guest = guests[req.volume.as_str()];
                let g = mux.geometry(guest).unwrap();
                negotiate::advertise(&g, &Config::default(), 0, be.keys_mut()).unwrap();
                iconnect::storage::write_decision(
                    &Decision::Granted(StorageGrant {
                        durable_flush: g.flush,
                    }),
                    be.keys_mut(),
                )
                .unwrap();
                be.publish_keys();
                let e = Blkback::new(be.ring_window::<BlkRing>(0).unwrap(), g, Config::default()).unwrap();
                engine = Some((e, be.data_area().unwrap(), guest));
                be.accept();
            }
        }
        while let Some(ev) = fe.poll() {
            match ev {
                FrontendEvent::SetUp => {
                    fio = Some((fe.front_ring::<BlkRing>(0).unwrap(), fe.data_area().unwrap(), fe.page_allocator()));
                }
                FrontendEvent::Ready => ready = true,
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(ready, "block-style handshake completed");
    let (mut engine, mut grants, guest) = engine.expect("backend connected");
    let (mut ring, data, mut pages) = fio.expect("frontend set up");
    // What the guest learns: 512 KiB in 4 KiB sectors, flush durable.
    let k = fe.backend_keys();
    assert_eq!(k.get(negotiate::SECTORS), Some("128"));
    assert_eq!(k.get(negotiate::SECTOR_SIZE), Some("4096"));
    assert_eq!(k.get(negotiate::FEATURE_FLUSH_CACHE), Some("1"));
    assert_eq!(k.get(iconnect::storage::GRANTED_DURABLE_FLUSH), Some("1"));

    // Write two pages at volume sector 8 (512-byte units), a bad reference, a flush; read back.
    let (p0, p1) = (pages.alloc().unwrap(), pages.alloc().unwrap());
    data.copy_to_page(p0, 0, &[0x11; 4096]).unwrap();
    data.copy_to_page(p1, 0, &[0x22; 4096]).unwrap();
    ring.push_request(&rw_slot(RwOp::Write, 1, 8, &[seg(p0, 0, 7), seg(p1, 0, 7)])).unwrap();
    ring.push_request(&rw_slot(RwOp::Write, 2, 0, &[seg(pages.pages() + 5, 0, 7)])).unwrap();
    ring.push_request(&rw_slot(RwOp::FlushDiskcache, 3, 0, &[])).unwrap();
    let r0 = pages.alloc().unwrap();
    ring.push_request(&rw_slot(RwOp::Read, 4, 16, &[seg(r0, 0, 7)])).unwrap();
    // 512-byte sector 12 is not on a 4 KiB sector of this volume.
    ring.push_request(&rw_slot(RwOp::Read, 5, 12, &[seg(r0, 0, 7)])).unwrap();
    assert!(ring.publish_requests_and_check_notify());
    let mut rsps = Vec::new();
    while rsps.len() < 5 {
        engine.poll(0, &mut grants, &mut mux.volume(guest).unwrap(), 32).unwrap();
        while let Some(r) = ring.pop_response().unwrap() {
            rsps.push(Response::from_bytes(&r).unwrap());
        }
    }
    let st = |id| rsps.iter().find(|r| r.id == id).unwrap().status;
    assert_eq!(
        (st(1), st(2), st(3), st(4), st(5)),
        (Status::Okay, Status::Error, Status::Okay, Status::Okay, Status::Error),
        "a bad reference or a misaligned sector costs only its request"
    );
    let mut back = vec![0u8; 4096];
    data.copy_from_page(r0, 0, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0x22));
    // On the disk: g1 starts at 512 KiB; durable after the flush.
    let at = (512 << 10) + 8 * 512;
    assert!(mux.disk().durable()[at..at + 4096].iter().all(|&b| b == 0x11));
    assert!(mux.disk().durable()[at + 4096..at + 8192].iter().all(|&b| b == 0x22));
    assert!(mux.disk().view()[..512 << 10].iter().all(|&b| b == 0), "g0's slice untouched");
    assert!(engine.broken().is_none());
}
