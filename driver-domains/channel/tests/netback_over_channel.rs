//! The netback engine (written for Xen: netif rings, grant copies through `GrantAccess`) runs
//! unchanged over an iConnect channel: its two rings are channel rings, its "grant references"
//! are data page numbers checked by the channel's `DataArea`. A netfront-like frontend sends a
//! frame (TX) and receives one (RX); a bad reference costs only that packet.

use iconnect_channel::{
    Backend, BackendEvent, Frontend, FrontendConfig, FrontendEvent, KeyMap, RingSpec,
};
use netback::engine::RxQueueLimits;
use netback::negotiate::FrontendFeatures;
use netback::{Netback, RxMeta};
use xen_abi::netif::{
    RX_RESPONSE_SIZE, RxRequest, RxResponse, RxRing, Status, TX_REQUEST_SIZE, TxRequest,
    TxResponse, TxRing,
};
use xen_abi::shmem::HostMem;
use xen_abi::xenbus::FrontendStyle;

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    f[12] = 0x88; // an ethertype nobody checksums
    f[13] = 0xb5;
    f
}

#[test]
fn netback_engine_serves_a_channel() {
    let m = HostMem::pages(32);
    let mut be = Backend::new(m.clone(), KeyMap::new()).unwrap();
    let config = FrontendConfig {
        style: FrontendStyle::Net,
        rings: vec![
            RingSpec {
                page_order: 0,
                slot_bytes: TX_REQUEST_SIZE as u32,
                vector: 0,
            },
            RingSpec {
                page_order: 0,
                slot_bytes: RX_RESPONSE_SIZE as u32,
                vector: 1,
            },
        ],
        data_pages: None,
    };
    let mut keys = KeyMap::new();
    keys.insert("request-rx-copy", "1").unwrap();
    let mut fe = Frontend::new(m.clone(), config, keys).unwrap();
    let (mut nb, mut fio) = (None, None);
    for _ in 0..4 {
        while let Some(ev) = be.poll() {
            if ev == BackendEvent::Connect {
                assert_eq!(be.frontend_keys().get("request-rx-copy"), Some("1"));
                let engine = Netback::new(
                    be.ring_window::<TxRing>(0).unwrap(),
                    be.ring_window::<RxRing>(1).unwrap(),
                    FrontendFeatures::default(),
                    RxQueueLimits::default(),
                )
                .unwrap();
                nb = Some((engine, be.data_area().unwrap()));
                be.accept();
            }
        }
        while let Some(ev) = fe.poll() {
            if ev == FrontendEvent::SetUp {
                fio = Some((
                    fe.front_ring::<TxRing>(0).unwrap(),
                    fe.front_ring::<RxRing>(1).unwrap(),
                    fe.data_area().unwrap(),
                    fe.page_allocator(),
                ));
            }
        }
    }
    let (mut engine, mut grants) = nb.expect("backend connected");
    let (mut tx, mut rx, data, mut pages) = fio.expect("frontend set up");

    // TX: a good frame at offset 100 of a data page, and one naming a page outside the area.
    let sent = frame(600, 1);
    let page = pages.alloc().unwrap();
    data.copy_to_page(page, 100, &sent).unwrap();
    let good = TxRequest {
        gref: page,
        offset: 100,
        flags: 0,
        id: 1,
        size: sent.len() as u16,
    };
    let bad = TxRequest {
        gref: pages.pages() + 3,
        offset: 0,
        flags: 0,
        id: 2,
        size: 64,
    };
    tx.push_request(&good.to_bytes()).unwrap();
    tx.push_request(&bad.to_bytes()).unwrap();
    assert!(tx.publish_requests_and_check_notify());
    let mut got = Vec::new();
    let poll = engine
        .poll_tx(0, &mut grants, 16, |f| got.push(f.data.to_vec()))
        .unwrap();
    assert_eq!(poll.packets, 2);
    assert_eq!(got, [sent]);
    let r1 = TxResponse::from_bytes(&tx.pop_response().unwrap().unwrap()).unwrap();
    let r2 = TxResponse::from_bytes(&tx.pop_response().unwrap().unwrap()).unwrap();
    assert_eq!((r1.id, r1.status), (1, Status::Okay));
    assert_eq!(
        (r2.id, r2.status),
        (2, Status::Error),
        "a bad reference costs only that packet"
    );
    assert!(engine.broken().is_none());

    // RX: the frontend posts a page; the engine copies a frame into it.
    let rx_page = pages.alloc().unwrap();
    rx.push_request(
        &RxRequest {
            id: 7,
            gref: rx_page,
        }
        .to_bytes(),
    )
    .unwrap();
    rx.publish_requests();
    let incoming = frame(1000, 9);
    engine.queue_rx(&incoming, RxMeta::default()).unwrap();
    let poll = engine.poll_rx(&mut grants, 16).unwrap();
    assert_eq!(poll.delivered, 1);
    let rsp = RxResponse::from_bytes(&rx.pop_response().unwrap().unwrap()).unwrap();
    assert_eq!((rsp.id, rsp.status), (7, incoming.len() as i16));
    let mut back = vec![0u8; incoming.len()];
    data.copy_from_page(rx_page, rsp.offset as usize, &mut back)
        .unwrap();
    assert_eq!(back, incoming);
}
