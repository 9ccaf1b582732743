//! A real frontend and a real backend on two threads over one shared host region, with
//! event-channel-like notifications driven by the ring's notify rule and final checks.

use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use xen_abi::ring::{BackRing, FrontRing, RawProtocol, ring_bytes_for_order};
use xen_abi::shmem::HostMem;

/// An event channel: a pending bit and a way to sleep until it is set.
#[derive(Default)]
struct EvtChn {
    pending: Mutex<bool>,
    cv: Condvar,
}

impl EvtChn {
    fn notify(&self) {
        *self.pending.lock().unwrap() = true;
        self.cv.notify_one();
    }
    /// Sleeps until notified; returns false if nothing arrived for a long time (a lost wakeup:
    /// with a correct ring protocol this never happens).
    fn wait(&self) -> bool {
        let mut p = self.pending.lock().unwrap();
        while !*p {
            let (g, t) = self.cv.wait_timeout(p, Duration::from_secs(10)).unwrap();
            p = g;
            if t.timed_out() && !*p {
                return false;
            }
        }
        *p = false;
        true
    }
}

fn request(seq: u64) -> [u8; 64] {
    let mut b = [0u8; 64];
    for (i, c) in b.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&seq.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(i as u32).to_le_bytes());
    }
    b
}

fn run(total: u64, order: u32) {
    type P = RawProtocol<64, 16>;
    let mem = HostMem::new(ring_bytes_for_order(order).unwrap());
    let to_back = Arc::new(EvtChn::default());
    let to_front = Arc::new(EvtChn::default());
    // The frontend initialises the ring before the backend attaches (as with xenstore keys).
    let mut front = FrontRing::<_, P>::init(mem.clone()).unwrap();

    let backend = {
        let (to_back, to_front, mem) = (to_back.clone(), to_front.clone(), mem.clone());
        thread::spawn(move || {
            let mut back = BackRing::<_, P>::attach(mem).unwrap();
            let (mut seen, mut lost, mut kicks) = (0u64, 0u32, 0u64);
            while seen < total {
                while let Some(r) = back.pop_request().unwrap() {
                    assert_eq!(r, request(seen), "request {seen} corrupted or out of order");
                    let mut rsp = [0u8; 16];
                    rsp[..8].copy_from_slice(&seen.to_le_bytes());
                    rsp[8..].copy_from_slice(&(!seen).to_le_bytes());
                    back.push_response(&rsp).unwrap();
                    seen += 1;
                }
                if back.publish_responses_and_check_notify() {
                    kicks += 1;
                    to_front.notify();
                }
                if seen < total && !back.final_check_for_requests().unwrap() && !to_back.wait() {
                    lost += 1;
                }
            }
            (seen, lost, kicks)
        })
    };

    let (mut sent, mut done, mut lost) = (0u64, 0u64, 0u32);
    while done < total {
        while sent < total && front.push_request(&request(sent)).is_ok() {
            sent += 1;
        }
        if front.publish_requests_and_check_notify() {
            to_back.notify();
        }
        while let Some(r) = front.pop_response().unwrap() {
            assert_eq!(r[..8], done.to_le_bytes(), "response {done} out of order");
            assert_eq!(r[8..], (!done).to_le_bytes());
            done += 1;
        }
        if done < total && !front.is_full() && sent < total {
            continue;
        }
        if done < total && !front.final_check_for_responses().unwrap() && !to_front.wait() {
            lost += 1;
        }
    }
    let (seen, back_lost, kicks) = backend.join().unwrap();
    assert_eq!(seen, total);
    assert_eq!(done, total);
    assert_eq!((lost, back_lost), (0, 0), "lost wakeups");
    assert!(kicks > 0);
}

#[test]
fn two_threads_one_page() {
    run(300_000, 0);
}

#[test]
fn two_threads_multi_page_ring() {
    run(300_000, 3);
}
