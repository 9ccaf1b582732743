//! A hostile frontend: every fault Linux netback handles, as a unit case, then a property test
//! mixing valid and hostile packets against a model.

mod common;

use std::sync::atomic::Ordering;

use common::{SimFront, Slot, sg_features};
use netback::engine::RxQueueLimits;
use netback::{Error, RxMeta};
use proptest::prelude::*;
use xen_abi::netif::{Extra, ExtraInfo, GsoType, RxRequest, Status, TxRequest, txf};
use xen_abi::ring::REQ_PROD_OFF;
use xen_abi::shmem::SharedMem;

fn req(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> Slot {
    Slot::Data(TxRequest {
        gref,
        offset,
        flags,
        id,
        size,
    })
}

/// Pushes raw slots, publishes, polls once; returns the result, the responses and the frames.
fn run(sim: &mut SimFront, nb: &mut netback::Netback<xen_abi::shmem::HostMem>, slots: &[Slot]) -> (Result<netback::TxPoll, Error>, Vec<Status>, Vec<Vec<u8>>) {
    assert!(sim.push_slots(slots));
    sim.publish_tx();
    let mut frames = Vec::new();
    let r = nb.poll_tx(0, &mut sim.grants, 64, |f| frames.push(f.data.to_vec()));
    let st = sim.tx_responses().into_iter().map(|r| r.status).collect();
    assert_eq!(sim.grants.range_violations(), 0, "engine asked for a range outside a page");
    (r, st, frames)
}

fn setup() -> (SimFront, netback::Netback<xen_abi::shmem::HostMem>, u32) {
    let mut sim = SimFront::new();
    sim.frag_rng = Some(common::Rng(1));
    let nb = sim.backend(sg_features(), RxQueueLimits::default());
    sim.grants.grant(100, true);
    sim.grants.page_mut(100).unwrap().fill(0xAB);
    (sim, nb, 100)
}

fn assert_alive(sim: &mut SimFront, nb: &mut netback::Netback<xen_abi::shmem::HostMem>) {
    let s = sim.build_tx(&[0x42; 300], 10, 0, &[]);
    let (r, st, frames) = run(sim, nb, &s);
    r.expect("interface still works");
    assert_eq!(st, vec![Status::Okay]);
    assert_eq!(frames, vec![vec![0x42; 300]]);
}

#[test]
fn non_fatal_faults_get_error_responses() {
    let (mut sim, mut nb, g) = setup();
    let cases: Vec<(&str, Vec<Slot>, Vec<Status>)> = vec![
        ("runt", vec![req(g, 0, 0, 1, 13)], vec![Status::Error]),
        (
            "runt with a fragment",
            vec![req(g, 0, txf::MORE_DATA, 1, 10), req(g, 0, 0, 2, 5)],
            vec![Status::Error, Status::Error],
        ),
        (
            "fragment larger than announced",
            vec![req(g, 0, txf::MORE_DATA, 1, 100), req(g, 0, 0, 2, 200)],
            vec![Status::Error, Status::Error],
        ),
        (
            "empty fragment",
            vec![req(g, 0, txf::MORE_DATA, 1, 100), req(g, 0, 0, 2, 0)],
            vec![Status::Error, Status::Error],
        ),
        ("ungranted ref", vec![req(999, 0, 0, 1, 60)], vec![Status::Error]),
        (
            "ungranted fragment ref",
            vec![req(g, 0, txf::MORE_DATA, 1, 160), req(998, 0, 0, 2, 100)],
            vec![Status::Error, Status::Error],
        ),
        (
            "GSO not negotiated",
            vec![
                req(g, 0, txf::EXTRA_INFO, 1, 60),
                Slot::Extra(ExtraInfo {
                    more: false,
                    extra: Extra::Gso {
                        size: 1448,
                        kind: GsoType::TcpV4,
                    },
                }),
            ],
            vec![Status::Error, Status::Null],
        ),
    ];
    for (name, slots, want) in cases {
        let (r, st, frames) = run(&mut sim, &mut nb, &slots);
        assert!(r.is_ok(), "{name}: {r:?}");
        assert_eq!(st, want, "{name}");
        assert!(frames.is_empty(), "{name}");
        assert_alive(&mut sim, &mut nb);
    }
    let s = nb.stats();
    assert_eq!((s.tx_malformed, s.tx_copy_errors, s.tx_unsupported), (4, 2, 1));
}

#[test]
fn exactly_18_slots_is_fine() {
    let (mut sim, mut nb, g) = setup();
    let mut slots = vec![req(g, 0, txf::MORE_DATA, 0, 18 * 100)];
    for i in 1..18 {
        slots.push(req(g, 0, if i < 17 { txf::MORE_DATA } else { 0 }, i, 100));
    }
    let (r, st, frames) = run(&mut sim, &mut nb, &slots);
    r.unwrap();
    assert_eq!(st, vec![Status::Okay; 18]);
    assert_eq!(frames, vec![vec![0xAB; 1800]]);
}

/// (name, slots, which error is expected).
type FatalCase = (&'static str, Vec<Slot>, fn(&Error) -> bool);

#[test]
fn fatal_faults_break_the_interface() {
    let g = 100;
    let gso0 = {
        let mut b = [0u8; 12];
        b[0] = 1; // GSO with size 0
        b[4] = 1;
        b
    };
    let mut too_many = vec![req(g, 0, txf::MORE_DATA, 0, 19 * 100)];
    for i in 1..19 {
        too_many.push(req(g, 0, if i < 18 { txf::MORE_DATA } else { 0 }, i, 100));
    }
    let cases: Vec<FatalCase> = vec![
        ("first slot crosses its page", vec![req(g, 4000, 0, 1, 200)], |e| matches!(e, Error::BadTxPacket(_))),
        ("offset outside the page", vec![req(g, 4096, txf::MORE_DATA, 1, 200), req(g, 0, 0, 2, 100)], |e| {
            matches!(e, Error::BadTxPacket(_))
        }),
        (
            "fragment crosses its page",
            vec![req(g, 0, txf::MORE_DATA, 1, 5000), req(g, 4000, 0, 2, 904)],
            |e| matches!(e, Error::BadTxPacket(_)),
        ),
        (
            "first slot's own part crosses its page",
            vec![req(g, 100, txf::MORE_DATA, 1, 5000), req(g, 0, 0, 2, 100)],
            |e| matches!(e, Error::BadTxPacket(_)),
        ),
        ("19 data slots", too_many, |e| *e == Error::TooManySlots),
        ("packet cut off at req_prod", vec![req(g, 0, txf::MORE_DATA, 1, 200)], |e| *e == Error::IncompletePacket),
        ("extra-info cut off", vec![req(g, 0, txf::EXTRA_INFO, 1, 60)], |e| *e == Error::IncompletePacket),
        ("unknown flag", vec![req(g, 0, 0x40, 1, 60)], |e| matches!(e, Error::BadTxPacket(_))),
        (
            "fragment with extra_info",
            vec![req(g, 0, txf::MORE_DATA, 1, 200), req(g, 0, txf::EXTRA_INFO, 2, 100)],
            |e| matches!(e, Error::BadTxPacket(_)),
        ),
    ];
    for (name, slots, is) in cases {
        let (mut sim, mut nb, _) = setup();
        let (r, _, frames) = run(&mut sim, &mut nb, &slots);
        let e = r.expect_err(name);
        assert!(is(&e) && e.is_fatal(), "{name}: {e:?}");
        assert!(frames.is_empty());
        assert_eq!(nb.broken(), Some(e));
        assert_eq!(nb.poll_tx(0, &mut sim.grants, 1, |_| {}).err(), Some(Error::Broken));
        assert_eq!(nb.queue_rx(&[0; 60], RxMeta::default()), Err(Error::Broken));
        assert_eq!(nb.poll_rx(&mut sim.grants, 1).err(), Some(Error::Broken));
    }
    // Invalid extra-info contents.
    for raw in [[0u8; 12], { let mut b = [0u8; 12]; b[0] = 9; b }, gso0] {
        let (mut sim, mut nb, _) = setup();
        sim.tx.push_request(&req(g, 0, txf::EXTRA_INFO, 1, 60).bytes()).unwrap();
        sim.tx.push_request(&raw).unwrap();
        sim.tx.publish_requests();
        let e = nb.poll_tx(0, &mut sim.grants, 8, |_| {}).unwrap_err();
        assert!(matches!(e, Error::BadTxPacket(_)), "{raw:?}: {e:?}");
    }
}

#[test]
fn producer_index_jumps_are_fatal() {
    for jump in [257u32, u32::MAX, 1000] {
        let (mut sim, mut nb, _) = setup();
        sim.tx_mem.store_u32(REQ_PROD_OFF, jump, Ordering::Release);
        let e = nb.poll_tx(0, &mut sim.grants, 8, |_| {}).unwrap_err();
        assert!(matches!(e, Error::Ring(_)) && e.is_fatal());
        let (sim2, mut nb2, _) = setup();
        nb2.queue_rx(&[1; 100], RxMeta::default()).unwrap();
        sim2.rx_mem.store_u32(REQ_PROD_OFF, jump, Ordering::Release);
        let mut g = sim2.grants.clone();
        assert!(matches!(nb2.poll_rx(&mut g, 8), Err(Error::Ring(_))));
        assert_eq!(nb2.poll_rx(&mut g, 8).err(), Some(Error::Broken));
    }
}

#[test]
fn rx_bad_buffers_get_error_status() {
    let (mut sim, mut nb, _) = setup();
    // A read-only grant and an ungranted ref as rx buffers, then a good one.
    sim.rx.push_request(&RxRequest { id: 7, gref: 100 }.to_bytes()).unwrap();
    sim.rx.push_request(&RxRequest { id: 8, gref: 555 }.to_bytes()).unwrap();
    sim.rx.publish_requests();
    nb.queue_rx(&[1; 100], RxMeta::default()).unwrap();
    nb.queue_rx(&[2; 100], RxMeta::default()).unwrap();
    nb.poll_rx(&mut sim.grants, 8).unwrap();
    for want_id in [7u16, 8] {
        let b = sim.rx.pop_response().unwrap().unwrap();
        let r = xen_abi::netif::RxResponse::from_bytes(&b).unwrap();
        assert_eq!((r.id, r.status), (want_id, Status::Error as i16));
    }
    assert_eq!(nb.stats().rx_copy_errors, 2);
    assert_eq!(nb.stats().rx_packets, 0);
    sim.post_rx(1);
    nb.queue_rx(&[3; 100], RxMeta::default()).unwrap();
    nb.poll_rx(&mut sim.grants, 8).unwrap();
    let got = sim.rx_frames();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, vec![3; 100]);
}

// ---------------------------------------------------------------------------------------------
// Property: valid and hostile packets mixed.

#[derive(Debug, Clone, Copy)]
enum Kind {
    Valid { len: usize, off: usize },
    Runt,
    Oversize,
    BadRef,
    ZeroFrag,
    Gso,
    CrossPage,
    TooMany,
    BadExtra,
    UnknownFlag,
}

impl Kind {
    fn fatal(&self) -> bool {
        matches!(self, Kind::CrossPage | Kind::TooMany | Kind::BadExtra | Kind::UnknownFlag)
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        6 => (14usize..20000, 0usize..4096).prop_map(|(len, off)| Kind::Valid { len, off }),
        1 => Just(Kind::Runt),
        1 => Just(Kind::Oversize),
        1 => Just(Kind::BadRef),
        1 => Just(Kind::ZeroFrag),
        1 => Just(Kind::Gso),
        1 => Just(Kind::CrossPage),
        1 => Just(Kind::TooMany),
        1 => Just(Kind::BadExtra),
        1 => Just(Kind::UnknownFlag),
    ]
}

fn hostile_slots(k: Kind, id: u16) -> Vec<Slot> {
    let g = 100;
    match k {
        Kind::Valid { .. } => unreachable!(),
        Kind::Runt => vec![req(g, 0, 0, id, 5)],
        Kind::Oversize => vec![req(g, 0, txf::MORE_DATA, id, 50), req(g, 0, 0, id, 60)],
        Kind::BadRef => vec![req(12345, 0, 0, id, 64)],
        Kind::ZeroFrag => vec![req(g, 0, txf::MORE_DATA, id, 64), req(g, 0, 0, id, 0)],
        Kind::Gso => vec![
                req(g, 0, txf::EXTRA_INFO, id, 64),
                Slot::Extra(ExtraInfo {
                    more: false,
                    extra: Extra::Gso {
                        size: 1000,
                        kind: GsoType::TcpV6,
                    },
                }),
            ],
        Kind::CrossPage => vec![req(g, 4090, 0, id, 64)],
        Kind::TooMany => {
            let mut v = vec![req(g, 0, txf::MORE_DATA, id, 30 * 10)];
            for i in 1..30 {
                v.push(req(g, 0, if i < 29 { txf::MORE_DATA } else { 0 }, id, 10));
            }
            v
        }
        // An all-zero slot where an extra-info is due: extra type 0 is invalid.
        Kind::BadExtra => vec![req(g, 0, txf::EXTRA_INFO, id, 64), req(0, 0, 0, 0, 0)],
        Kind::UnknownFlag => vec![req(g, 0, 0x100, id, 64)],
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mixed_valid_and_hostile_packets(kinds in prop::collection::vec(kind(), 1..8), budget in 1usize..8) {
        let (mut sim, mut nb, _) = setup();
        let mut expected = Vec::new();
        let mut first_fatal = None;
        let mut nonfatal_errors = 0;
        for (i, k) in kinds.iter().enumerate() {
            let slots = match *k {
                Kind::Valid { len, off } => {
                    let f: Vec<u8> = (0..len).map(|b| (b * 31 + i) as u8).collect();
                    if first_fatal.is_none() { expected.push(f.clone()); }
                    sim.build_tx(&f, off, 0, &[])
                }
                k => {
                    if k.fatal() { first_fatal.get_or_insert(i); } else if first_fatal.is_none() { nonfatal_errors += 1; }
                    hostile_slots(k, i as u16)
                }
            };
            prop_assert!(sim.push_slots(&slots));
        }
        sim.publish_tx();
        let mut frames = Vec::new();
        let mut result = Ok(());
        for _ in 0..64 {
            match nb.poll_tx(0, &mut sim.grants, budget, |f| frames.push(f.data.to_vec())) {
                Ok(p) => if p.packets == 0 && !p.more { break },
                Err(e) => { result = Err(e); break }
            }
        }
        prop_assert_eq!(sim.grants.range_violations(), 0);
        prop_assert!(frames == expected, "delivered frames differ");
        match first_fatal {
            Some(_) => {
                let e = result.expect_err("fatal packet must break the interface");
                prop_assert!(e.is_fatal());
                prop_assert_eq!(nb.broken(), Some(e));
            }
            None => {
                prop_assert!(result.is_ok());
                let rs = sim.tx_responses();
                prop_assert!(sim.tx_pending.is_empty());
                let errors = rs.iter().filter(|r| r.status == Status::Error).count();
                prop_assert!(errors >= nonfatal_errors);
                let s = nb.stats();
                prop_assert_eq!((s.tx_malformed + s.tx_copy_errors + s.tx_unsupported) as usize, nonfatal_errors);
                prop_assert_eq!(s.tx_packets as usize, expected.len());
            }
        }
    }
}

#[test]
fn rx_bad_buffer_inside_a_multi_slot_frame() {
    let (mut sim, mut nb, _) = setup();
    // Buffers: good, ungranted, good; a 3-page frame spans all three.
    sim.post_rx(1);
    sim.rx.push_request(&RxRequest { id: 200, gref: 4242 }.to_bytes()).unwrap();
    sim.rx.publish_requests();
    sim.post_rx(1);
    let f: Vec<u8> = (0..3 * 4096 - 1).map(|i| i as u8).collect();
    nb.queue_rx(&f, RxMeta::default()).unwrap();
    let p = nb.poll_rx(&mut sim.grants, 4).unwrap();
    assert_eq!(p.delivered, 1);
    // The sim does not know id 200; read the three responses directly.
    let mut rs = Vec::new();
    while let Some(b) = sim.rx.pop_response().unwrap() {
        rs.push(xen_abi::netif::RxResponse::from_bytes(&b).unwrap());
    }
    assert_eq!(rs.len(), 3);
    assert_eq!(rs[0].status, 4096);
    assert_eq!((rs[1].id, rs[1].status), (200, Status::Error as i16));
    assert_eq!(rs[2].status, 4095);
    assert_eq!(rs[2].flags & xen_abi::netif::rxf::MORE_DATA, 0, "chain ends with the frame");
    assert!(rs[..2].iter().all(|r| r.flags & xen_abi::netif::rxf::MORE_DATA != 0));
    assert_eq!((nb.stats().rx_copy_errors, nb.stats().rx_packets), (1, 0));
    assert_eq!(sim.grants.range_violations(), 0);
}
