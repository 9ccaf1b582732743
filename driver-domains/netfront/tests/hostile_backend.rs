//! A backend that writes garbage: netfront never panics, counts what it can survive, breaks
//! the interface on what it cannot (ids it never posted, a wild producer index), and keeps
//! working after non-fatal faults. The backend here is a real `BackRing` on the channel's ring
//! windows whose responses carry hostile contents.

mod common;

use core::sync::atomic::Ordering;

use common::*;
use iconnect_channel::Window;
use netback::engine::RxQueueLimits;
use netfront::{Config, Error};
use proptest::prelude::*;
use xen_abi::netif::{RxRequest, RxResponse, RxRing, TxRequest, TxRing, rxf};
use xen_abi::ring::{BackRing, RSP_PROD_OFF};
use xen_abi::shmem::{HostMem, SharedMem};

struct Hostile {
    tx: BackRing<Window<HostMem>, TxRing>,
    rx: BackRing<Window<HostMem>, RxRing>,
    tx_win: Window<HostMem>,
}

/// A pair whose backend is replaced by raw ring halves (the netback engine is never polled).
fn hostile(config: Config) -> (Pair, Hostile) {
    let p = pair(config, plain_features(), RxQueueLimits::default());
    let h = Hostile {
        tx: BackRing::attach(p.be.ring_window::<TxRing>(0).unwrap()).unwrap(),
        rx: BackRing::attach(p.be.ring_window::<RxRing>(1).unwrap()).unwrap(),
        tx_win: p.be.ring_window::<TxRing>(0).unwrap(),
    };
    (p, h)
}

fn tx_rsp(id: u16, status: i16) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&id.to_le_bytes());
    b[2..].copy_from_slice(&status.to_le_bytes());
    b
}

fn rx_rsp(id: u16, offset: u16, flags: u16, status: i16) -> [u8; 8] {
    RxResponse {
        id,
        offset,
        flags,
        status,
    }
    .to_bytes()
}

impl Hostile {
    fn next_rx(&mut self) -> RxRequest {
        RxRequest::from_bytes(&self.rx.pop_request().unwrap().unwrap()).unwrap()
    }
}

#[test]
fn tx_response_for_an_id_never_sent_breaks_the_interface() {
    let (mut p, mut h) = hostile(Config::default());
    p.front.send(&frame(100, 1)).unwrap();
    let req = TxRequest::from_bytes(&h.tx.pop_request().unwrap().unwrap()).unwrap();
    h.tx.push_response(&tx_rsp(req.id.wrapping_add(77), 0)).unwrap();
    h.tx.publish_responses();
    assert_eq!(p.front.poll(), Err(Error::BadResponseId));
    assert_eq!(p.front.broken(), Some(Error::BadResponseId));
    assert_eq!(p.front.send(&frame(100, 2)), Err(Error::Broken));
    assert_eq!(p.front.recv(), Err(Error::Broken));
    assert!(Error::BadResponseId.is_fatal() && !Error::Full.is_fatal());
}

#[test]
fn tx_response_answering_twice_breaks_the_interface() {
    let (mut p, mut h) = hostile(Config::default());
    p.front.send(&frame(100, 1)).unwrap();
    p.front.send(&frame(100, 2)).unwrap();
    let a = TxRequest::from_bytes(&h.tx.pop_request().unwrap().unwrap()).unwrap();
    h.tx.pop_request().unwrap().unwrap();
    h.tx.push_response(&tx_rsp(a.id, 0)).unwrap();
    h.tx.push_response(&tx_rsp(a.id, 0)).unwrap();
    h.tx.publish_responses();
    assert_eq!(p.front.poll(), Err(Error::BadResponseId));
}

#[test]
fn unknown_tx_status_is_counted_and_the_buffer_returns() {
    let (mut p, mut h) = hostile(Config::default());
    for i in 0..3 {
        p.front.send(&frame(100, i)).unwrap();
    }
    for status in [7i16, 1, -1] {
        let r = TxRequest::from_bytes(&h.tx.pop_request().unwrap().unwrap()).unwrap();
        h.tx.push_response(&tx_rsp(r.id, status)).unwrap();
    }
    h.tx.publish_responses();
    assert_eq!(p.front.poll().unwrap().tx_completed, 3);
    let s = *p.front.stats();
    assert_eq!((s.bad_responses, s.tx_errors), (2, 1), "7 and NULL are bad, -1 an error");
    assert_eq!(p.front.tx_in_flight(), 0);
    assert!(p.front.broken().is_none());
}

#[test]
fn wild_response_producer_breaks_the_interface() {
    let (mut p, h) = hostile(Config::default());
    p.front.send(&frame(100, 1)).unwrap();
    h.tx_win.store_u32(RSP_PROD_OFF, 0x8000_0000, Ordering::Release);
    assert_eq!(
        p.front.poll(),
        Err(Error::Ring(xen_abi::Error::RingOverflow))
    );
    assert_eq!(p.front.idle(), Err(Error::Broken));
}

#[test]
fn bad_rx_responses_cost_their_frame_only() {
    let (mut p, mut h) = hostile(Config::default());
    // 1. offset + status beyond the page.
    let r = h.next_rx();
    h.rx.push_response(&rx_rsp(r.id, 100, 0, 4000)).unwrap();
    // 2. an error status.
    let r = h.next_rx();
    h.rx.push_response(&rx_rsp(r.id, 0, 0, -1)).unwrap();
    // 3. undefined flag bits.
    let r = h.next_rx();
    h.rx.push_response(&rx_rsp(r.id, 0, 0x100, 60)).unwrap();
    // 4. a chain growing beyond one page without feature-sg.
    let r = h.next_rx();
    h.rx.push_response(&rx_rsp(r.id, 0, rxf::MORE_DATA, 4000)).unwrap();
    let r = h.next_rx();
    h.rx.push_response(&rx_rsp(r.id, 0, 0, 200)).unwrap();
    // 5. GSO extra-info never negotiated.
    let r = h.next_rx();
    h.rx.push_response(&rx_rsp(r.id, 0, rxf::EXTRA_INFO, 60)).unwrap();
    // 6. a zero-length frame.
    let r = h.next_rx();
    h.rx.push_response(&rx_rsp(r.id, 0, 0, 0)).unwrap();
    // 7. a good frame at an offset.
    let r = h.next_rx();
    let good = frame(300, 5);
    p.grants.copy_to_page(r.gref, 1000, &good).unwrap();
    h.rx.push_response(&rx_rsp(r.id, 1000, rxf::DATA_VALIDATED, 300)).unwrap();
    h.rx.publish_responses();

    let f = p.front.recv().unwrap().expect("the good frame survives");
    assert_eq!(f.data, good);
    assert!(f.data_validated && !f.csum_blank);
    assert_eq!(p.front.recv().unwrap(), None);
    let s = *p.front.stats();
    assert_eq!(s.rx_packets, 1);
    assert_eq!(s.rx_oversize, 1);
    assert_eq!(s.rx_errors, 5, "offset, error, flags, extra-info, empty");
    assert_eq!(s.bad_responses, 3, "offset, flags, extra-info");
    assert_eq!(p.front.rx_posted(), 256, "every buffer reposted");
    assert!(p.front.broken().is_none());
}

#[test]
fn rx_response_for_a_buffer_never_posted_breaks_the_interface() {
    let (mut p, mut h) = hostile(Config {
        rx_buffers: 4,
        ..Config::default()
    });
    h.next_rx();
    h.rx.push_response(&rx_rsp(200, 0, 0, 60)).unwrap();
    h.rx.publish_responses();
    assert_eq!(p.front.recv(), Err(Error::BadResponseId));
    assert_eq!(p.front.poll(), Err(Error::Broken));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any bytes in any response slot: no panic; the interface either survives with consistent
    /// bookkeeping or reports a fatal error.
    #[test]
    fn garbage_responses_never_panic(
        tx_garbage in proptest::collection::vec(any::<[u8; 4]>(), 0..40),
        rx_garbage in proptest::collection::vec(any::<[u8; 8]>(), 0..40),
        frames in 0usize..40,
    ) {
        let (mut p, mut h) = hostile(Config { sg: true, ..Config::default() });
        for i in 0..frames {
            let _ = p.front.send(&frame(60 + i * 97, i as u32));
        }
        for g in &tx_garbage {
            if h.tx.pop_request().unwrap().is_none() {
                break;
            }
            h.tx.push_response(g).unwrap();
        }
        h.tx.publish_responses();
        for g in &rx_garbage {
            if h.rx.pop_request().unwrap().is_none() {
                break;
            }
            h.rx.push_response(g).unwrap();
        }
        h.rx.publish_responses();
        let mut fatal = None;
        match p.front.poll() {
            Ok(_) => {}
            Err(e) => { prop_assert!(e.is_fatal()); fatal = Some(e); }
        }
        loop {
            match p.front.recv() {
                Ok(Some(f)) => {
                    prop_assert!(!f.data.is_empty() && f.data.len() <= p.front.max_frame());
                }
                Ok(None) => break,
                Err(e) => { prop_assert!(e.is_fatal()); fatal.get_or_insert(e); break; }
            }
        }
        if fatal.is_none() {
            prop_assert!(p.front.tx_in_flight() <= 256);
            prop_assert!(p.front.rx_posted() <= 256);
            let used = p.front.buffers().allocator().pages() - p.front.buffers().allocator().free_pages();
            prop_assert!(used <= 128 + 256, "{used} pages taken");
        } else {
            prop_assert_eq!(p.front.send(&frame(60, 0)), Err(Error::Broken));
        }
    }
}
