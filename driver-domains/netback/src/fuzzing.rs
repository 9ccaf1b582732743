//! Fuzzing entry points.
//!
//! Each function takes arbitrary bytes, drives part of the engine with them, and checks
//! invariants with assertions: a panic is a finding. `cargo test` runs them on seeded
//! pseudo-random inputs (`tests/fuzz_smoke.rs`); a cargo-fuzz target only needs to call them
//! (as `xen-glue/abi/fuzz/` does for xen-abi).

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use xen_abi::netif::{self, RxRing, TxRing};
use xen_abi::ring::{FrontRing, REQ_PROD_OFF, RING_HEADER_SIZE, RSP_PROD_OFF};
use xen_abi::shmem::{HostMem, SharedMem};
use xen_abi::PAGE_SIZE;

use crate::engine::{Netback, RxMeta, RxQueueLimits};
use crate::grant::FakeGrants;
use crate::negotiate::{BackendFeatures, FrontendConfig, FrontendFeatures};

/// A fuzz entry point.
pub type Entry = fn(&[u8]);

/// Every entry point, by name.
pub const TARGETS: &[(&str, Entry)] = &[
    ("tx_ring", fuzz_tx_ring),
    ("rx_ring", fuzz_rx_ring),
    ("frontend_keys", fuzz_frontend_keys),
    ("csum", fuzz_csum),
];

fn grants() -> FakeGrants {
    let mut g = FakeGrants::new();
    for r in 8..16 {
        g.grant(r, r % 2 == 0);
        if let Some(p) = g.page_mut(r) {
            for (i, b) in p.iter_mut().enumerate() {
                *b = (i as u32 ^ r) as u8;
            }
        }
    }
    g
}

/// A hostile frontend's TX ring: byte 0 = how many slots it publishes (any value, also
/// impossible ones), byte 1 = budget, then raw 12-byte slots written in ring order. Checks: no
/// panic, no grant access outside a page, every consumed slot answered with a valid status, a
/// delivered frame is at least an Ethernet header and at most 64 KiB, and a fatal error sticks.
pub fn fuzz_tx_ring(data: &[u8]) {
    let _ = run_tx_ring(data);
}

/// What one [`fuzz_tx_ring`] input did (lets the smoke test check its inputs reach the deep
/// paths).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxRunOutcome {
    /// Frames delivered.
    pub frames: usize,
    /// Packets answered with errors (non-fatal).
    pub errors: u64,
    /// Whether the interface was broken by a fatal error.
    pub fatal: bool,
}

/// [`fuzz_tx_ring`] returning what happened.
pub fn run_tx_ring(data: &[u8]) -> TxRunOutcome {
    let mut out = TxRunOutcome::default();
    let [n, budget, rest @ ..] = data else { return out };
    let tx = HostMem::pages(1);
    let rx = HostMem::pages(1);
    let _ = FrontRing::<_, RxRing>::init(rx.clone());
    let _ = FrontRing::<_, TxRing>::init(tx.clone());
    for (i, slot) in rest.chunks(netif::TX_REQUEST_SIZE).take(256).enumerate() {
        tx.write_bytes(RING_HEADER_SIZE + i * netif::TX_REQUEST_SIZE, slot);
    }
    let prod = if *n == 255 { u32::MAX } else { *n as u32 * 2 };
    tx.store_u32(REQ_PROD_OFF, prod, Ordering::Release);
    let mut g = grants();
    let Ok(mut nb) = Netback::new(&tx, &rx, FrontendFeatures::default(), RxQueueLimits::default()) else {
        return out;
    };
    let mut frames = 0usize;
    for _ in 0..3 {
        let r = nb.poll_tx(0, &mut g, (*budget as usize).max(1), |f| {
            assert!(f.data.len() >= netif::MIN_PACKET_SIZE as usize);
            assert!(f.data.len() <= netif::MAX_TX_SIZE);
            frames += 1;
        });
        match r {
            Ok(_) => {
                let rsp_prod = tx.load_u32(RSP_PROD_OFF, Ordering::Acquire);
                for i in 0..rsp_prod.min(256) {
                    let mut b = [0u8; netif::TX_RESPONSE_SIZE];
                    let off = RING_HEADER_SIZE + (i as usize % 256) * netif::TX_REQUEST_SIZE;
                    tx.read_bytes(off, &mut b);
                    assert!(netif::TxResponse::from_bytes(&b).is_ok());
                }
            }
            Err(e) => {
                assert!(e.is_fatal());
                assert!(nb.broken().is_some());
                out.fatal = true;
                assert_eq!(
                    nb.poll_tx(0, &mut g, 1, |_| {}).err(),
                    Some(crate::Error::Broken)
                );
                break;
            }
        }
    }
    assert_eq!(g.range_violations(), 0);
    let st = nb.stats();
    assert_eq!(st.tx_packets as usize, frames);
    out.frames = frames;
    out.errors = st.tx_malformed + st.tx_copy_errors + st.tx_unsupported;
    out
}

/// RX with a hostile frontend: the bytes script frames to queue (sizes), rx requests it posts
/// (ids and grefs, also ungranted or read-only ones) and raw `req_prod` jumps. Checks: no
/// panic, no grant access outside a page, the queue bound holds, every response the engine
/// wrote is a valid rx response whose size fits its page.
pub fn fuzz_rx_ring(data: &[u8]) {
    let tx = HostMem::pages(1);
    let rx = HostMem::pages(1);
    let _ = FrontRing::<_, TxRing>::init(tx.clone());
    let Ok(mut front) = FrontRing::<_, RxRing>::init(rx.clone()) else { return };
    let features = FrontendFeatures {
        sg: data.first().is_some_and(|b| b & 1 == 1),
        ..FrontendFeatures::default()
    };
    let limits = RxQueueLimits {
        frames: 8,
        bytes: 64 * 1024,
    };
    let Ok(mut nb) = Netback::new(&tx, &rx, features, limits) else { return };
    let mut g = grants();
    let mut it = data.iter().copied().skip(1);
    let mut frame = Vec::new();
    while let Some(op) = it.next() {
        let arg = it.next().unwrap_or(0);
        match op % 4 {
            0 => {
                let len = (arg as usize) * 97 % (3 * PAGE_SIZE + 1);
                frame.clear();
                frame.extend((0..len).map(|i| i as u8));
                let _ = nb.queue_rx(&frame, RxMeta::default());
                assert!(nb.rx_queued() <= limits.frames);
            }
            1 => {
                for k in 0..(arg % 8) {
                    let req = netif::RxRequest {
                        id: k as u16,
                        gref: 6 + (arg as u32 + k as u32) % 12,
                    };
                    if front.push_request(&req.to_bytes()).is_err() {
                        break;
                    }
                }
                front.publish_requests();
            }
            2 => {
                let v = u32::from_le_bytes([arg, it.next().unwrap_or(0), 0, 0]);
                rx.store_u32(REQ_PROD_OFF, v, Ordering::Release);
            }
            _ => match nb.poll_rx(&mut g, (arg as usize % 4) + 1) {
                Ok(_) => {
                    while let Ok(Some(r)) = front.pop_response() {
                        let r = netif::RxResponse::from_bytes(&r).expect("engine wrote a bad rx response");
                        assert!(r.status != 0);
                    }
                }
                Err(e) => {
                    assert!(e.is_fatal());
                    break;
                }
            },
        }
    }
    assert_eq!(g.range_violations(), 0);
}

/// Frontend directory text (`key=value` lines): parsing never panics, and what it accepts is
/// consistent (non-zero ports, rx-copy requested).
pub fn fuzz_frontend_keys(data: &[u8]) {
    let Ok(text) = core::str::from_utf8(data) else { return };
    let src = iconnect::keys::LineSource::<32>::new(text);
    for backend in [
        BackendFeatures::default(),
        BackendFeatures {
            sg: false,
            ipv6_csum_offload: false,
            split_event_channels: false,
        },
    ] {
        if let Ok(c) = FrontendConfig::from_keys(&src, &backend) {
            use iconnect::KeySource;
            assert_eq!(src.get("request-rx-copy"), Some("1"));
            match c.events {
                crate::negotiate::EventChannels::Shared(p) => assert!(p != 0),
                crate::negotiate::EventChannels::Split { tx, rx } => {
                    assert!(tx != 0 && rx != 0 && backend.split_event_channels)
                }
            }
            assert!(!c.features.sg || backend.sg);
        }
    }
}

/// Checksum completion on arbitrary frames: never panics, and a completed frame verifies.
pub fn fuzz_csum(data: &[u8]) {
    let mut f = Vec::from(data);
    if crate::csum::fill_l4_checksum(&mut f).is_ok() {
        assert_eq!(f.len(), data.len());
        assert_eq!(crate::csum::l4_checksum_ok(&f), Ok(true));
    }
}
