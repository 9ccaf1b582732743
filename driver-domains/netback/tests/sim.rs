//! The engine driven by a simulated netfront (tests/common) over HostMem rings and the fake
//! grant table, in both directions, with many packets of random sizes.

mod common;

use std::collections::VecDeque;

use common::{Rng, SimFront, Slot, frame, sg_features};
use netback::engine::RxQueueLimits;
use netback::negotiate::FrontendFeatures;
use netback::{Error, RxMeta, RxPush, csum};
use xen_abi::netif::{Extra, Status, rxf, txf};

fn random_len(rng: &mut Rng, max: usize) -> usize {
    let len = match rng.below(4) {
        0 => rng.range(14, 128),
        1 => rng.range(60, 1514),
        2 => rng.range(1515, 9000),
        _ => rng.range(9001, 65535),
    };
    len.min(max)
}

#[test]
fn tx_many_random_packets_byte_exact() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut sim = SimFront::new();
    sim.frag_rng = Some(Rng(99));
    let mut nb = sim.backend(sg_features(), RxQueueLimits::default());
    let total = 2000;
    let mut sent: VecDeque<(Vec<u8>, u16)> = VecDeque::new();
    let mut slots_of: VecDeque<Vec<Slot>> = VecDeque::new();
    let (mut built, mut got, mut multi, mut with_extra, mut bytes) = (0, 0, 0, 0, 0u64);
    while got < total {
        for _ in 0..rng.range(1, 24) {
            if built == total || sim.tx.free_requests() < 20 {
                break;
            }
            let len = random_len(&mut rng, 65535);
            let f = frame(&mut rng, len, built as u32);
            let off = match rng.below(3) {
                0 => 0,
                1 => rng.range(0, 4095),
                _ => rng.range(0, 4095) & !63,
            };
            let flags = [0, txf::CSUM_BLANK, txf::DATA_VALIDATED, txf::CSUM_BLANK | txf::DATA_VALIDATED]
                [rng.below(4) as usize];
            let extras = if rng.below(5) == 0 {
                with_extra += 1;
                vec![Extra::Hash {
                    htype: 1,
                    algorithm: 1,
                    value: rng.next() as u32,
                }]
            } else {
                vec![]
            };
            let slots = sim.build_tx(&f, off, flags, &extras);
            if slots.iter().filter(|s| matches!(s, Slot::Data(_))).count() > 1 {
                multi += 1;
            }
            assert!(sim.push_slots(&slots));
            slots_of.push_back(slots);
            sent.push_back((f, flags));
            built += 1;
        }
        sim.publish_tx();
        let budget = rng.range(1, 64);
        let poll = nb
            .poll_tx(0, &mut sim.grants, budget, |fr| {
                let (want, flags) = sent.pop_front().expect("frame that was sent");
                assert_eq!(fr.data.len(), want.len());
                assert!(fr.data == &want[..], "frame {got} differs");
                assert_eq!(fr.csum_blank, flags & txf::CSUM_BLANK != 0);
                assert_eq!(fr.data_validated, flags & txf::DATA_VALIDATED != 0);
                bytes += want.len() as u64;
                got += 1;
            })
            .unwrap();
        assert!(poll.packets <= budget);
        for r in sim.tx_responses() {
            assert!(matches!(r.status, Status::Okay | Status::Null), "{r:?}");
        }
        while slots_of.len() > sent.len() {
            let s = slots_of.pop_front().unwrap();
            sim.revoke_tx_pages(&s);
        }
    }
    assert!(sim.tx_pending.is_empty(), "every slot answered");
    assert!(multi > 500 && with_extra > 200, "multi={multi} extra={with_extra}");
    let st = nb.stats();
    assert_eq!((st.tx_packets, st.tx_bytes), (total as u64, bytes));
    assert_eq!(st.tx_malformed + st.tx_copy_errors + st.tx_unsupported, 0);
    assert_eq!(sim.grants.range_violations() + sim.grants.ref_faults(), 0);
    assert_eq!(sim.grants.batches(), total as u64, "one copy batch per packet");
}

/// Runs frames through RX with random buffer posting (`queue_rx`, or `push_rx` when `push`);
/// returns what the frontend received, the counters, the frames accepted and, of those, the
/// frames `push_rx` delivered straight into posted buffers.
fn rx_run(
    rng: &mut Rng,
    features: FrontendFeatures,
    frames: &[(Vec<u8>, RxMeta)],
    push: bool,
    post_max: usize,
) -> (Vec<common::Received>, netback::Stats, usize, usize) {
    let mut sim = SimFront::new();
    let mut nb = sim.backend(
        features,
        RxQueueLimits {
            frames: 64,
            bytes: 4 << 20,
        },
    );
    let mut out = Vec::new();
    let mut next = 0;
    let mut queued_ok = 0;
    let mut direct = 0;
    let mut round = 0;
    while next < frames.len() || nb.rx_queued() > 0 {
        for _ in 0..rng.range(0, 8) {
            if next == frames.len() || nb.rx_queued() >= 48 {
                break;
            }
            let (f, m) = &frames[next];
            let r = if push {
                let before = sim.rx.unconsumed_responses().unwrap();
                let r = nb.push_rx(&mut sim.grants, f, *m);
                // Pushed responses stay invisible until poll_rx publishes them.
                assert_eq!(sim.rx.unconsumed_responses().unwrap(), before);
                if r == Ok(RxPush::Delivered) {
                    direct += 1;
                }
                r.map(|_| ())
            } else {
                nb.queue_rx(f, *m)
            };
            match r {
                Ok(()) => queued_ok += 1,
                Err(Error::FrameSize) => {}
                Err(e) => panic!("queue_rx/push_rx: {e}"),
            }
            next += 1;
        }
        // push_rx: scarcer buffers, so that frames also wait in the queue.
        // push_rx: droughts of a few rounds without new buffers, so frames also queue.
        round += 1;
        if !push {
            sim.post_rx(rng.range(0, post_max));
        } else if (round / 5) % 2 == 0 {
            // At most `post_max` outstanding: buffers do not pile up between droughts.
            let room = post_max.saturating_sub(sim.rx_outstanding());
            sim.post_rx(rng.range(0, room));
        }
        let poll = nb.poll_rx(&mut sim.grants, rng.range(1, 16)).unwrap();
        assert_eq!(poll.queued, nb.rx_queued());
        out.extend(sim.rx_frames());
    }
    assert_eq!(sim.grants.range_violations(), 0);
    assert_eq!(sim.rx_errors, 0);
    assert_eq!(sim.grants.batches(), nb.stats().rx_packets, "one copy batch per frame");
    (out, *nb.stats(), queued_ok, direct)
}

#[test]
fn rx_many_random_frames_byte_exact_with_sg() {
    let mut rng = Rng(0xfeed_beef_0000_0001);
    let frames: Vec<_> = (0..1500)
        .map(|i| {
            let len = random_len(&mut rng, 65535).max(1);
            (frame(&mut rng, len, i), RxMeta::default())
        })
        .collect();
    let (got, st, queued, _) = rx_run(&mut rng, sg_features(), &frames, false, 40);
    assert_eq!(queued, frames.len());
    assert_eq!(got.len(), frames.len());
    let mut multi = 0;
    for (g, (want, _)) in got.iter().zip(&frames) {
        assert!(g.ok);
        assert!(g.data == *want);
        assert_eq!(g.flags, 0);
        if want.len() > 4096 {
            multi += 1;
        }
    }
    assert!(multi > 500, "{multi}");
    assert_eq!(st.rx_packets, frames.len() as u64);
    assert_eq!(st.rx_bytes, frames.iter().map(|f| f.0.len() as u64).sum::<u64>());
}

#[test]
fn rx_without_sg_delivers_single_slots_and_drops_larger_frames() {
    let mut rng = Rng(77);
    let frames: Vec<_> = (0..600)
        .map(|i| {
            let len = rng.range(1, 9000);
            (frame(&mut rng, len, i), RxMeta::default())
        })
        .collect();
    let features = FrontendFeatures::default();
    let (got, st, queued, _) = rx_run(&mut rng, features, &frames, false, 40);
    let fitting: Vec<_> = frames.iter().filter(|f| f.0.len() <= 4096).collect();
    assert_eq!(queued, fitting.len());
    assert_eq!(st.rx_bad_size as usize, frames.len() - fitting.len());
    assert_eq!(got.len(), fitting.len());
    for (g, want) in got.iter().zip(fitting) {
        assert!(g.data == want.0);
    }
}

/// `push_rx` (one copy when buffers are posted, queued otherwise) delivers the same frames in
/// the same order as `queue_rx`, byte-exact, with and without SG; both paths are exercised.
#[test]
fn rx_push_delivers_in_order_byte_exact_direct_or_queued() {
    for (seed, features, max, post_max) in [(5u64, sg_features(), 65535, 120), (6, FrontendFeatures::default(), 9000, 12)] {
        let mut rng = Rng(seed);
        let frames: Vec<_> = (0..1500)
            .map(|i| {
                let len = random_len(&mut rng, max).max(1);
                (frame(&mut rng, len, i), RxMeta::default())
            })
            .collect();
        let (got, st, accepted, direct) = rx_run(&mut rng, features, &frames, true, post_max);
        let fitting: Vec<_> = frames.iter().filter(|f| f.0.len() <= nb_max(&features)).collect();
        assert_eq!(accepted, fitting.len());
        assert_eq!(got.len(), fitting.len());
        for (g, want) in got.iter().zip(&fitting) {
            assert!(g.ok);
            assert!(g.data == want.0);
        }
        assert_eq!(st.rx_packets, fitting.len() as u64);
        assert_eq!(st.rx_bad_size as usize, frames.len() - fitting.len());
        assert!(direct > 100 && direct + 100 < accepted, "direct {direct} of {accepted}: both paths taken");
    }
}

fn nb_max(f: &FrontendFeatures) -> usize {
    if f.sg { 65535 } else { 4096 }
}

/// A frame never overtakes a queued one: with buffers posted, `push_rx` queues behind a frame
/// still waiting, and delivers directly again once the queue is empty. The direct path makes
/// no copy batch of its own beyond the frame's (one per frame) and notifies like `poll_rx`.
#[test]
fn rx_push_never_overtakes_and_publishes_at_poll() {
    let mut sim = SimFront::new();
    let mut g = std::mem::take(&mut sim.grants);
    let mut nb = sim.backend(sg_features(), RxQueueLimits::default());
    let big: Vec<u8> = (0..2 * 4096 + 1).map(|i| (i * 3) as u8).collect();
    // No buffers yet: queued.
    assert_eq!(nb.push_rx(&mut g, &big, RxMeta::default()), Ok(RxPush::Queued));
    sim.grants = g;
    sim.post_rx(2); // not enough for the 3-page frame
    // Two buffers are posted, but the big frame waits ahead: the small one queues behind it.
    assert_eq!(nb.push_rx(&mut sim.grants, &[1; 60], RxMeta::default()), Ok(RxPush::Queued));
    let p = nb.poll_rx(&mut sim.grants, 8).unwrap();
    assert!(p.waiting_for_buffers && p.delivered == 0 && p.queued == 2);
    sim.post_rx(8);
    let p = nb.poll_rx(&mut sim.grants, 8).unwrap();
    assert_eq!((p.delivered, p.queued), (2, 0));
    assert!(p.notify);
    let got = sim.rx_frames();
    assert_eq!(got.len(), 2);
    assert!(got[0].data == big);
    assert_eq!(got[1].data, vec![1; 60]);
    // Queue empty, buffers posted: straight in, visible only after poll_rx publishes.
    assert!(!sim.rx.final_check_for_responses().unwrap());
    assert_eq!(nb.push_rx(&mut sim.grants, &[2; 70], RxMeta::default()), Ok(RxPush::Delivered));
    assert_eq!(nb.push_rx(&mut sim.grants, &[3; 80], RxMeta::default()), Ok(RxPush::Delivered));
    assert!(sim.rx_frames().is_empty(), "not published before poll_rx");
    let p = nb.poll_rx(&mut sim.grants, 8).unwrap();
    assert_eq!((p.delivered, p.queued), (0, 0));
    assert!(p.notify, "one notification for the burst (rsp_event was armed)");
    let got = sim.rx_frames();
    assert_eq!(got.iter().map(|r| r.data.clone()).collect::<Vec<_>>(), vec![vec![2; 70], vec![3; 80]]);
    assert_eq!(nb.stats().rx_packets, 4);
    assert_eq!(sim.grants.batches(), 4, "one copy batch per frame");
}

/// A blank checksum the frontend cannot take is completed on a queued copy (the direct path
/// never writes into the caller's frame); with offload it goes straight through, flagged.
#[test]
fn rx_push_completes_blank_checksums_through_the_queue() {
    let f = udp4_frame(b"checksum me");
    let mut sim = SimFront::new();
    let features = no_offload();
    let mut nb = sim.backend(features, RxQueueLimits::default());
    sim.post_rx(2);
    assert_eq!(nb.push_rx(&mut sim.grants, &f, BLANK), Ok(RxPush::Queued));
    nb.poll_rx(&mut sim.grants, 8).unwrap();
    let got = sim.rx_frames();
    assert_eq!(got[0].flags, rxf::DATA_VALIDATED);
    assert!(csum::l4_checksum_ok(&got[0].data).unwrap());
    let mut sim = SimFront::new();
    let mut nb = sim.backend(sg_features(), RxQueueLimits::default());
    sim.post_rx(2);
    assert_eq!(nb.push_rx(&mut sim.grants, &f, BLANK), Ok(RxPush::Delivered));
    nb.poll_rx(&mut sim.grants, 8).unwrap();
    let got = sim.rx_frames();
    assert_eq!(got[0].flags, rxf::CSUM_BLANK | rxf::DATA_VALIDATED);
    assert!(got[0].data == f);
}

#[test]
fn rx_queue_is_bounded_and_never_blocks() {
    let sim = SimFront::new();
    let mut nb = sim.backend(sg_features(), RxQueueLimits { frames: 4, bytes: 10_000 });
    for i in 0..4 {
        nb.queue_rx(&[i; 100], RxMeta::default()).unwrap();
    }
    assert_eq!(nb.queue_rx(&[9; 100], RxMeta::default()), Err(Error::QueueFull));
    let mut nb = sim.backend(sg_features(), RxQueueLimits { frames: 100, bytes: 10_000 });
    nb.queue_rx(&[1; 6000], RxMeta::default()).unwrap();
    nb.queue_rx(&[1; 4000], RxMeta::default()).unwrap();
    assert_eq!(nb.queue_rx(&[1; 1], RxMeta::default()), Err(Error::QueueFull));
    assert_eq!(nb.queue_rx(&[], RxMeta::default()), Err(Error::FrameSize));
    assert_eq!(nb.queue_rx(&[0; 65536], RxMeta::default()), Err(Error::FrameSize));
    assert_eq!(nb.stats().rx_queue_full, 1);
    assert_eq!(nb.stats().rx_bad_size, 2);
}

#[test]
fn rx_waits_for_enough_buffers_and_arms_the_event() {
    let mut sim = SimFront::new();
    let mut g = std::mem::take(&mut sim.grants);
    let mut nb = sim.backend(sg_features(), RxQueueLimits::default());
    let f: Vec<u8> = (0..3 * 4096 - 5).map(|i| (i * 7) as u8).collect();
    nb.queue_rx(&f, RxMeta::default()).unwrap();
    let p = nb.poll_rx(&mut g, 8).unwrap();
    assert!(p.waiting_for_buffers && p.delivered == 0 && p.queued == 1 && !p.notify);
    sim.grants = g;
    assert!(sim.post_rx(2), "backend armed req_event: the first buffers notify");
    let mut g = std::mem::take(&mut sim.grants);
    let p = nb.poll_rx(&mut g, 8).unwrap();
    assert!(p.waiting_for_buffers, "a 3-page frame needs 3 buffers");
    sim.grants = g;
    assert!(sim.post_rx(1), "re-armed at the next request");
    let p = nb.poll_rx(&mut sim.grants, 8).unwrap();
    assert_eq!((p.delivered, p.queued, p.waiting_for_buffers), (1, 0, false));
    assert!(p.notify, "rsp_event is 1 after init");
    let got = sim.rx_frames();
    assert_eq!(got.len(), 1);
    assert!(got[0].data == f);
    // The frontend did not re-arm rsp_event: the next delivery needs no kick ...
    sim.post_rx(1);
    nb.queue_rx(&[1; 60], RxMeta::default()).unwrap();
    assert!(!nb.poll_rx(&mut sim.grants, 8).unwrap().notify);
    sim.rx_frames();
    // ... until it goes idle with the final check.
    assert!(!sim.rx.final_check_for_responses().unwrap());
    sim.post_rx(1);
    nb.queue_rx(&[2; 60], RxMeta::default()).unwrap();
    assert!(nb.poll_rx(&mut sim.grants, 8).unwrap().notify);
}

#[test]
fn tx_notification_and_final_check() {
    let mut sim = SimFront::new();
    let mut nb = sim.backend(sg_features(), RxQueueLimits::default());
    let p = nb.poll_tx(0, &mut sim.grants, 64, |_| panic!("no frame")).unwrap();
    assert_eq!((p.packets, p.notify, p.more), (0, false, false));
    let s = sim.build_tx(&[5; 100], 0, 0, &[]);
    sim.push_slots(&s);
    assert!(sim.publish_tx(), "backend idle with req_event armed: kick");
    let s = sim.build_tx(&[6; 100], 0, 0, &[]);
    sim.push_slots(&s);
    assert!(!sim.publish_tx(), "no new kick before the backend looked");
    // Budget 1: the second packet remains, reported as `more`.
    let p = nb.poll_tx(0, &mut sim.grants, 1, |f| assert_eq!(f.data, &[5; 100][..])).unwrap();
    assert_eq!((p.packets, p.notify, p.more), (1, true, true));
    let p = nb.poll_tx(0, &mut sim.grants, 1, |f| assert_eq!(f.data, &[6; 100][..])).unwrap();
    assert_eq!(p.packets, 1);
    assert!(!p.notify, "frontend has not re-armed rsp_event");
    assert!(!p.more);
    assert_eq!(sim.tx_responses().len(), 2);
    let s = sim.build_tx(&[7; 100], 0, 0, &[]);
    sim.push_slots(&s);
    assert!(sim.publish_tx(), "the final check re-armed req_event");
}

/// `swap_tx_buffer` hands out the frame of a budget-1 poll without a copy, and the engine keeps
/// assembling byte-exact frames in the buffers it gets back (of any old length or content).
#[test]
fn tx_swap_buffer_takes_frames_without_copy() {
    let mut rng = Rng(31);
    let mut sim = SimFront::new();
    sim.frag_rng = Some(Rng(4));
    let mut nb = sim.backend(sg_features(), RxQueueLimits::default());
    let mut buf: Vec<u8> = vec![0xAB; 3000];
    for i in 0..300 {
        let len = random_len(&mut rng, 65535).max(60);
        let f = frame(&mut rng, len, i);
        let s = sim.build_tx(&f, rng.range(0, 4095), 0, &[]);
        assert!(sim.push_slots(&s));
        sim.publish_tx();
        let mut n = 0;
        let p = nb.poll_tx(0, &mut sim.grants, 1, |_| n += 1).unwrap();
        assert_eq!((p.packets, n), (1, 1));
        let before = buf.as_ptr();
        nb.swap_tx_buffer(&mut buf);
        assert!(buf == f, "frame {i} of {len} bytes");
        assert_ne!(buf.as_ptr(), before, "exchanged, not copied");
        sim.tx_responses();
        sim.revoke_tx_pages(&s);
    }
}

/// A frame sent with a blank checksum (`NETTXF_csum_blank`).
const BLANK: RxMeta = RxMeta {
    csum_blank: true,
    data_validated: false,
};

/// SG features without IPv4 checksum offload (`feature-no-csum-offload`).
fn no_offload() -> FrontendFeatures {
    FrontendFeatures {
        ip_csum_offload: false,
        ..sg_features()
    }
}

fn udp4_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![
        0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x52, 0x54, 0, 0xab, 0xcd, 0xef, 0x08, 0x00, 0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10,
        0, 2, 15, 10, 0, 2, 2, 0x9c, 0x40, 0, 7, 0, 0, 0x11, 0x22,
    ];
    let ip_len = (20 + 8 + payload.len()) as u16;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[38..40].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn rx_checksum_flags_follow_negotiation() {
    let f = udp4_frame(b"checksum me");
    assert!(!csum::l4_checksum_ok(&f).unwrap());
    // Offload negotiated: passed through with csum_blank | data_validated.
    let mut sim = SimFront::new();
    let mut nb = sim.backend(sg_features(), RxQueueLimits::default());
    sim.post_rx(4);
    nb.queue_rx(&f, BLANK).unwrap();
    nb.queue_rx(&f, RxMeta { csum_blank: false, data_validated: true }).unwrap();
    nb.queue_rx(&f, RxMeta::default()).unwrap();
    nb.poll_rx(&mut sim.grants, 8).unwrap();
    let got = sim.rx_frames();
    assert_eq!(got[0].flags, rxf::CSUM_BLANK | rxf::DATA_VALIDATED);
    assert!(got[0].data == f);
    assert_eq!(got[1].flags, rxf::DATA_VALIDATED);
    assert_eq!(got[2].flags, 0);
    // Frontend with feature-no-csum-offload: the backend completes the checksum.
    let mut sim = SimFront::new();
    let features = no_offload();
    let mut nb = sim.backend(features, RxQueueLimits::default());
    sim.post_rx(2);
    nb.queue_rx(&f, BLANK).unwrap();
    assert_eq!(nb.queue_rx(&[0u8; 60], BLANK), Err(Error::Checksum), "not IP: cannot complete");
    nb.poll_rx(&mut sim.grants, 8).unwrap();
    let got = sim.rx_frames();
    assert_eq!(got[0].flags, rxf::DATA_VALIDATED);
    assert!(csum::l4_checksum_ok(&got[0].data).unwrap());
    assert_eq!(got[0].data[..40], f[..40]);
    assert_eq!(got[0].data[42..], f[42..]);
    assert_eq!(nb.stats().rx_csum_errors, 1);
}

/// Two guests joined by the engine: A's TX frames are queued to B's RX, as net-dd's switch will.
#[test]
fn guest_to_guest_through_two_engines() {
    let mut rng = Rng(0xabcdef);
    let mut a = SimFront::new();
    a.frag_rng = Some(Rng(5));
    let mut b = SimFront::new();
    let mut nba = a.backend(sg_features(), RxQueueLimits::default());
    let mut nbb = b.backend(sg_features(), RxQueueLimits { frames: 1024, bytes: 64 << 20 });
    let mut sent = Vec::new();
    let mut received = Vec::new();
    for round in 0..60 {
        for i in 0..rng.range(1, 12) {
            let len = random_len(&mut rng, 30000);
            let f = frame(&mut rng, len, round * 100 + i as u32);
            let s = a.build_tx(&f, rng.range(0, 4095), txf::DATA_VALIDATED, &[]);
            assert!(a.push_slots(&s));
            sent.push(f);
        }
        a.publish_tx();
        nba.poll_tx(0, &mut a.grants, 64, |fr| {
            nbb.queue_rx(fr.data, RxMeta::from_tx(&fr)).unwrap();
        })
        .unwrap();
        a.tx_responses();
        b.post_rx(rng.range(0, 100));
        nbb.poll_rx(&mut b.grants, 64).unwrap();
        received.extend(b.rx_frames());
    }
    while nbb.rx_queued() > 0 {
        b.post_rx(64);
        nbb.poll_rx(&mut b.grants, 64).unwrap();
        received.extend(b.rx_frames());
    }
    assert_eq!(received.len(), sent.len());
    for (r, s) in received.iter().zip(&sent) {
        assert!(r.data == *s);
        assert_eq!(r.flags, rxf::DATA_VALIDATED);
    }
}

/// Xen's vif `rate` as a TX ceiling: credit per window, burst cap, time passed in.
#[test]
fn tx_rate_limit_follows_the_credit_windows() {
    let mut sim = SimFront::new();
    let mut nb = sim.backend(sg_features(), RxQueueLimits::default());
    // 10 000 bytes per 1 ms.
    let rate = netback::negotiate::xen_rate(&iconnect::keys::PairSource(&[("rate", "10000,1000")]))
        .unwrap()
        .unwrap();
    nb.set_tx_rate(Some(rate), 0);
    for _ in 0..200 {
        let s = sim.build_tx(&[1; 1000], 0, 0, &[]);
        assert!(sim.push_slots(&s));
    }
    sim.publish_tx();
    let mut delivered = 0;
    fn poll(nb: &mut netback::Netback<xen_abi::shmem::HostMem>, now: u64, sim: &mut SimFront, delivered: &mut usize) -> netback::TxPoll {
        let p = nb.poll_tx(now, &mut sim.grants, 256, |_| *delivered += 1).unwrap();
        sim.tx_responses();
        p
    }
    let p = poll(&mut nb, 0, &mut sim, &mut delivered);
    assert_eq!((delivered, p.throttled_until), (10, Some(1000)), "one window of credit at the start");
    let p = poll(&mut nb, 999, &mut sim, &mut delivered);
    assert_eq!((delivered, p.throttled_until), (10, Some(1000)));
    poll(&mut nb, 1000, &mut sim, &mut delivered);
    assert_eq!(delivered, 20);
    // 4 windows later: 4 windows of credit.
    poll(&mut nb, 5000, &mut sim, &mut delivered);
    assert_eq!(delivered, 60);
    // 100 windows idle: capped at the 128 KiB burst (131 packets of 1000 bytes; 140 left).
    let p = poll(&mut nb, 105_000, &mut sim, &mut delivered);
    assert_eq!(delivered, 60 + 132, "burst cap 131072 bytes: 131 packets + one started on the last credit");
    assert!(p.throttled_until.is_some());
    nb.set_tx_rate(None, 105_000);
    let p = poll(&mut nb, 105_000, &mut sim, &mut delivered);
    assert_eq!((delivered, p.throttled_until, p.more), (200, None, false));
}
