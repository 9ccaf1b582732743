//! Frontend and backend on two threads, each sleeping until the other's "event channel" fires,
//! which it raises only when the notification rule says so: a lost wakeup hangs one side
//! (caught by a deadline), a wrong byte fails the comparison. Exercises the engine's final
//! checks and `notify` results under real concurrency, in both directions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use netback::engine::RxQueueLimits;
use netback::grant::FakeGrants;
use netback::negotiate::FrontendFeatures;
use netback::{Error, GrantAccess, Netback, RxMeta};
use xen_abi::netif::{RxRequest, RxResponse, RxRing, Status, TxRequest, TxResponse, TxRing, rxf, txf};
use xen_abi::ring::FrontRing;
use xen_abi::shmem::HostMem;
use xen_abi::{GrantRef, PAGE_SIZE};

/// The grant table shared by both "domains".
#[derive(Clone)]
struct Shared(Arc<Mutex<FakeGrants>>);

impl GrantAccess for Shared {
    fn copy_from(&mut self, gref: GrantRef, offset: u16, dst: &mut [u8]) -> Result<(), Error> {
        self.0.lock().unwrap().copy_from(gref, offset, dst)
    }
    fn copy_to(&mut self, gref: GrantRef, offset: u16, src: &[u8]) -> Result<(), Error> {
        self.0.lock().unwrap().copy_to(gref, offset, src)
    }
}

fn wait(ev: &AtomicBool, what: &str) {
    let t0 = Instant::now();
    while !ev.swap(false, Ordering::AcqRel) {
        assert!(t0.elapsed() < Duration::from_secs(20), "lost wakeup: {what}");
        thread::yield_now();
    }
}

fn content(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 7 + j * 13) as u8).collect()
}

fn len_of(i: usize) -> usize {
    14 + (i * 7919) % 12000
}

const N: usize = 3000;

#[test]
fn tx_and_rx_across_threads_without_lost_wakeups() {
    let tx_mem = HostMem::pages(1);
    let rx_mem = HostMem::pages(1);
    let mut tx = FrontRing::<_, TxRing>::init(tx_mem.clone()).unwrap();
    let mut rx = FrontRing::<_, RxRing>::init(rx_mem.clone()).unwrap();
    let grants = Shared(Arc::new(Mutex::new(FakeGrants::new())));
    let kick_back = Arc::new(AtomicBool::new(false));
    let kick_front = Arc::new(AtomicBool::new(false));
    let features = FrontendFeatures {
        sg: true,
        ..FrontendFeatures::default()
    };

    // Backend: echoes every TX frame back on RX (like a reflector), sleeping between events.
    let backend = {
        let (mut g, kb, kf) = (grants.clone(), kick_back.clone(), kick_front.clone());
        let (tm, rm) = (tx_mem.clone(), rx_mem.clone());
        thread::spawn(move || {
            let limits = RxQueueLimits { frames: 4096, bytes: 64 << 20 };
            let mut nb = Netback::new(tm, rm, features, limits).unwrap();
            let mut got = 0usize;
            let mut echoed = 0usize;
            let mut more = true;
            while echoed < N {
                if !more {
                    wait(&kb, "backend waiting for requests/buffers");
                }
                let mut frames = Vec::new();
                let p = nb.poll_tx(0, &mut g, 32, |f| frames.push(f.data.to_vec())).unwrap();
                for f in frames {
                    assert!(f == content(got, len_of(got)), "tx frame {got}");
                    nb.queue_rx(&f, RxMeta { csum_blank: false, data_validated: true }).unwrap();
                    got += 1;
                }
                let r = nb.poll_rx(&mut g, 32).unwrap();
                echoed += r.delivered;
                if p.notify || r.notify {
                    kf.store(true, Ordering::Release);
                }
                // Work remains if TX said so, or frames are queued and buffers were available
                // (if they were not, req_event is armed and the frontend will kick us).
                more = p.more || (r.queued > 0 && !r.waiting_for_buffers);
            }
            (got, *nb.stats())
        })
    };

    // Frontend: sends N frames, keeps RX buffers posted, checks every echoed frame.
    let mut next_gref: GrantRef = 8;
    let mut sent = 0usize;
    let mut tx_outstanding = 0usize;
    let mut posted: std::collections::HashMap<u16, GrantRef> = Default::default();
    let mut next_rx_id = 0u16;
    let mut received = 0usize;
    let mut partial: Vec<u8> = Vec::new();
    let mut first_flags = None;
    while received < N {
        let mut progress = false;
        while let Some(b) = tx.pop_response().unwrap() {
            assert_eq!(TxResponse::from_bytes(&b).unwrap().status, Status::Okay);
            tx_outstanding -= 1;
            progress = true;
        }
        while let Some(b) = rx.pop_response().unwrap() {
            let r = RxResponse::from_bytes(&b).unwrap();
            let gref = posted.remove(&r.id).expect("posted buffer");
            assert!(r.status > 0);
            first_flags.get_or_insert(r.flags & !rxf::MORE_DATA);
            {
                let mut gt = grants.0.lock().unwrap();
                let page = gt.page(gref).unwrap();
                partial.extend_from_slice(&page[r.offset as usize..][..r.status as usize]);
                gt.revoke(gref);
            }
            if r.flags & rxf::MORE_DATA == 0 {
                assert!(partial == content(received, len_of(received)), "rx frame {received}");
                assert_eq!(first_flags.take(), Some(rxf::DATA_VALIDATED));
                partial.clear();
                received += 1;
            }
            progress = true;
        }
        // Keep up to 64 buffers posted.
        let mut kick = false;
        while posted.len() < 64 && !rx.is_full() {
            let g = next_gref;
            next_gref += 1;
            grants.0.lock().unwrap().grant(g, false);
            let id = next_rx_id;
            next_rx_id = (next_rx_id + 1) % 256;
            posted.insert(id, g);
            rx.push_request(&RxRequest { id, gref: g }.to_bytes()).unwrap();
            progress = true;
        }
        kick |= rx.publish_requests_and_check_notify();
        // Send while the TX ring has room for a whole packet (at most 4 slots here).
        while sent < N && tx.free_requests() >= 4 {
            let f = content(sent, len_of(sent));
            let mut gt = grants.0.lock().unwrap();
            let mut pos = 0;
            while pos < f.len() {
                let n = (f.len() - pos).min(PAGE_SIZE);
                let g = next_gref;
                next_gref += 1;
                gt.grant(g, true);
                gt.page_mut(g).unwrap()[..n].copy_from_slice(&f[pos..pos + n]);
                let more = pos + n < f.len();
                let r = TxRequest {
                    gref: g,
                    offset: 0,
                    flags: if more { txf::MORE_DATA } else { 0 },
                    id: (tx_outstanding % 256) as u16,
                    size: if pos == 0 { f.len() as u16 } else { n as u16 },
                };
                tx.push_request(&r.to_bytes()).unwrap();
                tx_outstanding += 1;
                pos += n;
            }
            sent += 1;
            progress = true;
        }
        kick |= tx.publish_requests_and_check_notify();
        if kick {
            kick_back.store(true, Ordering::Release);
        }
        if !progress {
            // Idle: re-arm both response events, then sleep unless something arrived meanwhile.
            let tx_more = tx_outstanding > 0 && tx.final_check_for_responses().unwrap();
            let rx_more = rx.final_check_for_responses().unwrap();
            if !tx_more && !rx_more {
                wait(&kick_front, "frontend waiting for responses");
            }
        }
    }
    let (got, st) = backend.join().unwrap();
    assert_eq!(got, N);
    assert_eq!((st.tx_packets, st.rx_packets), (N as u64, N as u64));
    assert_eq!(grants.0.lock().unwrap().range_violations(), 0);
}
