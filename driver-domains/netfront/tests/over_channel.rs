//! netfront against the real netback engine over a real iConnect channel (HostMem region).

mod common;

use common::*;
use netback::engine::RxQueueLimits;
use netfront::{Config, Error};
use xen_abi::PAGE_SIZE;

fn cfg(sg: bool) -> Config {
    Config {
        sg,
        ..Config::default()
    }
}

#[test]
fn frames_both_ways_byte_exact() {
    let mut p = pair(cfg(false), plain_features(), RxQueueLimits::default());
    assert_eq!(p.front.rx_posted(), 256, "rx ring filled at start");
    let mut sent = Vec::new();
    for (i, len) in [14usize, 60, 61, 1514, 2000, 4095, 4096].into_iter().enumerate() {
        let f = frame(len, i as u32);
        p.front.send(&f).unwrap();
        sent.push(f);
    }
    assert_eq!(p.back_tx(), sent);
    let poll = p.front.poll().unwrap();
    assert_eq!(poll.tx_completed, sent.len());
    assert_eq!(p.front.tx_in_flight(), 0);

    let mut queued = Vec::new();
    for (i, len) in [14usize, 100, 1514, 4096].into_iter().enumerate() {
        let f = frame(len, 100 + i as u32);
        p.back_queue(&f).unwrap();
        queued.push(f);
    }
    assert_eq!(p.back_rx().delivered, queued.len());
    assert_eq!(p.front_rx(), queued);
    assert_eq!(p.front.rx_posted(), 256, "buffers reposted");
    let s = *p.front.stats();
    assert_eq!((s.tx_packets, s.rx_packets), (7, 4));
    assert_eq!((s.tx_errors, s.rx_errors, s.bad_responses), (0, 0, 0));
    assert_eq!(
        s.tx_bytes,
        sent.iter().map(|f| f.len() as u64).sum::<u64>()
    );
    // Without feature-sg a frame is one page at most, both ways.
    assert_eq!(p.front.send(&frame(4097, 0)), Err(Error::FrameSize));
    assert_eq!(p.front.send(&[]), Err(Error::FrameSize));
}

#[test]
fn multi_slot_frames_with_sg() {
    let mut p = pair(cfg(true), sg_features(), RxQueueLimits::default());
    for (i, len) in [4097usize, 9000, 16384, 65535].into_iter().enumerate() {
        let f = frame(len, i as u32);
        p.front.send(&f).unwrap();
        assert_eq!(p.front.tx_in_flight(), len.div_ceil(PAGE_SIZE));
        assert_eq!(p.back_tx(), vec![f.clone()]);
        p.front.poll().unwrap();
        assert_eq!(p.front.tx_in_flight(), 0);
        p.back_queue(&f).unwrap();
        assert_eq!(p.back_rx().delivered, 1);
        assert_eq!(p.front_rx(), vec![f]);
    }
    assert_eq!(p.back.stats().tx_malformed, 0);
    assert_eq!(p.front.send(&frame(65536, 0)), Err(Error::FrameSize));
}

#[test]
fn tx_ring_full_and_buffer_backpressure() {
    // Ring: 256 slots; buffers: 300 pages allowed -> the ring is the limit.
    let mut p = pair(
        Config {
            tx_buffers: 300,
            ..cfg(false)
        },
        plain_features(),
        RxQueueLimits::default(),
    );
    let mut n = 0;
    while p.front.can_send(100) {
        p.front.send(&frame(100, n)).unwrap();
        n += 1;
    }
    assert_eq!(n, 256, "one slot per frame, the ring holds 256");
    assert_eq!(p.front.send(&frame(100, 0)), Err(Error::Full));
    assert_eq!(p.front.stats().tx_full, 1);
    // Responses return the slots.
    assert_eq!(p.back_tx().len(), 256);
    assert_eq!(p.front.poll().unwrap().tx_completed, 256);
    p.front.send(&frame(100, 0)).unwrap();

    // Buffers as the limit: 4 pages, a 3-page frame needs 3 of them.
    let mut p = pair(
        Config {
            tx_buffers: 4,
            ..cfg(true)
        },
        sg_features(),
        RxQueueLimits::default(),
    );
    p.front.send(&frame(3 * PAGE_SIZE, 1)).unwrap();
    assert!(!p.front.can_send(2 * PAGE_SIZE));
    assert_eq!(p.front.send(&frame(2 * PAGE_SIZE, 2)), Err(Error::Full));
    p.front.send(&frame(PAGE_SIZE, 3)).unwrap();
    assert_eq!(p.front.send(&[]), Err(Error::FrameSize));
    assert_eq!(p.front.send(&frame(14, 4)), Err(Error::Full));
    assert_eq!(p.back_tx().len(), 2);
    p.front.poll().unwrap();
    p.front.send(&frame(2 * PAGE_SIZE, 2)).unwrap();
    assert_eq!(p.back_tx(), vec![frame(2 * PAGE_SIZE, 2)]);
    assert_eq!(p.front.stats().tx_full, 2);
}

#[test]
fn rx_waits_for_buffers_and_the_refill_notifies() {
    let mut p = pair(
        Config {
            rx_buffers: 8,
            ..cfg(false)
        },
        plain_features(),
        RxQueueLimits::default(),
    );
    p.front.take_notify();
    for i in 0..20 {
        p.back_queue(&frame(200, i)).unwrap();
    }
    let poll = p.back_rx();
    assert_eq!(poll.delivered, 8);
    assert!(poll.waiting_for_buffers);
    let got = p.front_rx();
    assert_eq!(got.len(), 8);
    assert_eq!(p.front.rx_posted(), 8);
    // The backend armed req_event while waiting: our refill must ring it.
    assert!(p.front.take_notify().rx, "refill after a starved backend notifies");
    let poll = p.back_rx();
    assert_eq!(poll.delivered, 8);
    let got2 = p.front_rx();
    assert!(p.front.take_notify().rx);
    assert_eq!(p.back_rx().delivered, 4);
    let got3 = p.front_rx();
    let all: Vec<_> = got.into_iter().chain(got2).chain(got3).collect();
    assert_eq!(all, (0..20).map(|i| frame(200, i)).collect::<Vec<_>>());
    // Nothing pending: idle, and the backend's next response will be notified.
    assert!(p.front.idle().unwrap());
    p.back_queue(&frame(60, 99)).unwrap();
    assert!(p.back_rx().notify, "armed by idle()");
    assert!(!p.front.idle().unwrap());
}

#[test]
fn tx_notifications_follow_the_event_index() {
    let mut p = pair(cfg(false), plain_features(), RxQueueLimits::default());
    p.front.take_notify();
    p.front.send(&frame(60, 1)).unwrap();
    assert!(p.front.take_notify().tx, "a fresh ring asks for the first request");
    p.front.send(&frame(60, 2)).unwrap();
    assert!(!p.front.take_notify().tx, "the backend has not looked yet");
    assert_eq!(p.back_tx().len(), 2);
    // After poll_tx's final check the backend wants to hear about the next one.
    p.front.send(&frame(60, 3)).unwrap();
    assert!(p.front.take_notify().tx);
    assert_eq!(p.back_tx().len(), 1);
}

#[test]
fn backend_error_responses_are_counted_and_buffers_return() {
    let mut p = pair(cfg(false), plain_features(), RxQueueLimits::default());
    // A runt frame: netback answers ERROR (non-fatal).
    p.front.send(&frame(10, 1)).unwrap();
    p.front.send(&frame(100, 2)).unwrap();
    assert_eq!(p.back_tx(), vec![frame(100, 2)]);
    p.front.poll().unwrap();
    assert_eq!(p.front.stats().tx_errors, 1);
    assert_eq!(p.front.tx_in_flight(), 0);
    assert!(p.front.broken().is_none());
}

#[test]
fn steady_state_reuses_pages() {
    let mut p = pair(cfg(false), plain_features(), RxQueueLimits::default());
    let free0 = p.front.buffers().allocator().free_pages();
    for i in 0..2000u32 {
        let f = frame(64 + (i as usize * 7) % 1450, i);
        p.front.send(&f).unwrap();
        if i % 16 == 15 {
            assert_eq!(p.back_tx().len(), 16);
            p.front.poll().unwrap();
        }
        p.back_queue(&f).unwrap();
        if i % 8 == 7 {
            p.back_rx();
            assert_eq!(p.front_rx().len(), 8);
        }
    }
    let used = free0 - p.front.buffers().allocator().free_pages();
    assert!(used <= 16, "tx pages are recycled, not leaked ({used} more taken)");
    assert_eq!(p.front.stats().rx_packets, 2000);
    let posted = p.front.rx_posted();
    assert_eq!(posted, 256);
    let bufs = p.front.into_buffers();
    assert_eq!(
        bufs.allocator().free_pages(),
        bufs.allocator().pages() - posted,
        "every page but the posted rx buffers given back"
    );
}

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Send(usize),
        BackTx,
        FrontPoll,
        Queue(usize),
        BackRx,
        FrontRecv,
    }

    fn op(max: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1..=max).prop_map(Op::Send),
            1 => Just(Op::BackTx),
            1 => Just(Op::FrontPoll),
            4 => (1..=max).prop_map(Op::Queue),
            1 => Just(Op::BackRx),
            1 => Just(Op::FrontRecv),
        ]
    }

    fn run(sg: bool, tx_buffers: u32, rx_buffers: u32, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let features = if sg { sg_features() } else { plain_features() };
        let config = Config { sg, tx_buffers, rx_buffers };
        let mut p = pair(config, features, RxQueueLimits { frames: 64, bytes: 1 << 20 });
        let (mut sent, mut got_tx) = (Vec::new(), Vec::new());
        let (mut queued, mut got_rx) = (Vec::new(), Vec::new());
        let mut seed = 0u32;
        let mut step = |p: &mut Pair, op: &Op, sent: &mut Vec<Vec<u8>>, got_tx: &mut Vec<Vec<u8>>,
                        queued: &mut Vec<Vec<u8>>, got_rx: &mut Vec<Vec<u8>>| -> Result<(), TestCaseError> {
            seed += 1;
            match *op {
                Op::Send(len) => {
                    let f = frame(len, seed);
                    let could = p.front.can_send(len);
                    match p.front.send(&f) {
                        Ok(()) => { prop_assert!(could); sent.push(f) }
                        Err(Error::Full) => prop_assert!(!could),
                        Err(e) => return Err(TestCaseError::fail(format!("send: {e}"))),
                    }
                }
                Op::BackTx => got_tx.extend(p.back_tx()),
                Op::FrontPoll => { p.front.poll().unwrap(); }
                Op::Queue(len) => {
                    let f = frame(len, seed);
                    if p.back_queue(&f).is_ok() {
                        queued.push(f);
                    }
                }
                Op::BackRx => { p.back_rx(); }
                Op::FrontRecv => got_rx.extend(p.front_rx()),
            }
            Ok(())
        };
        for o in &ops {
            step(&mut p, o, &mut sent, &mut got_tx, &mut queued, &mut got_rx)?;
        }
        // Drain: everything accepted arrives, in order, byte-exact.
        for _ in 0..64 {
            for o in [Op::BackTx, Op::FrontPoll, Op::BackRx, Op::FrontRecv] {
                step(&mut p, &o, &mut sent, &mut got_tx, &mut queued, &mut got_rx)?;
            }
        }
        prop_assert_eq!(&got_tx, &sent);
        prop_assert_eq!(&got_rx, &queued);
        prop_assert_eq!(p.front.tx_in_flight(), 0);
        let s = *p.front.stats();
        prop_assert_eq!((s.tx_errors, s.rx_errors, s.rx_oversize, s.bad_responses), (0, 0, 0, 0));
        prop_assert!(p.front.broken().is_none());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn random_traffic_single_slot(
            tx_buffers in 1u32..300, rx_buffers in 1u32..300,
            ops in proptest::collection::vec(op(PAGE_SIZE), 1..200),
        ) {
            // Runt frames are refused by netback with an error: keep frames >= 14 bytes.
            let ops = ops.into_iter().map(|o| match o {
                Op::Send(l) => Op::Send(l.max(14)),
                o => o,
            }).collect();
            run(false, tx_buffers, rx_buffers, ops)?;
        }

        #[test]
        fn random_traffic_multi_slot(
            tx_buffers in 16u32..64, rx_buffers in 16u32..64,
            ops in proptest::collection::vec(op(20_000), 1..120),
        ) {
            let ops = ops.into_iter().map(|o| match o {
                Op::Send(l) => Op::Send(l.max(14)),
                o => o,
            }).collect();
            run(true, tx_buffers, rx_buffers, ops)?;
        }
    }
}

/// TX completions are batched by the event index: with few frames in flight the backend does
/// not ring for their completions (reaped at the next wake-up); with a quarter of the TX
/// buffers in flight `idle()` asks to be rung when half of them are answered, not before.
#[test]
fn tx_completions_notify_only_when_buffers_run_short() {
    let mut p = pair(
        Config {
            tx_buffers: 16,
            ..cfg(false)
        },
        plain_features(),
        RxQueueLimits::default(),
    );
    let back_poll = |p: &mut Pair, budget: usize| p.back.poll_tx(0, &mut p.grants, budget, |_| {}).unwrap();
    // A fresh ring's rsp_event asks for the first response.
    p.front.send(&frame(60, 0)).unwrap();
    assert!(back_poll(&mut p, 64).notify);
    assert_eq!(p.front.poll().unwrap().tx_completed, 1);
    // Two in flight (< 16/4) after idle(): nobody is woken for their completions ...
    for i in 1..3 {
        p.front.send(&frame(60, i)).unwrap();
    }
    assert!(p.front.idle().unwrap());
    let r = back_poll(&mut p, 64);
    assert_eq!(r.packets, 2);
    assert!(!r.notify, "completions of a lightly sending guest wake nobody");
    // ... they are reaped at the next wake-up anyway.
    assert!(!p.front.idle().unwrap(), "responses wait");
    assert_eq!(p.front.poll().unwrap().tx_completed, 2);
    assert!(p.front.idle().unwrap());
    // Eight in flight (>= 16/4): rung once half of them (plus one) are answered.
    for i in 3..11 {
        p.front.send(&frame(60, i)).unwrap();
    }
    assert!(p.front.idle().unwrap());
    let r = back_poll(&mut p, 4);
    assert_eq!(r.packets, 4);
    assert!(!r.notify, "4 of 8 answered: not yet");
    let r = back_poll(&mut p, 1);
    assert!(r.notify, "the 5th response crosses rsp_event");
    back_poll(&mut p, 64);
    assert_eq!(p.front.poll().unwrap().tx_completed, 8);
    assert_eq!(p.front.tx_in_flight(), 0);
}
