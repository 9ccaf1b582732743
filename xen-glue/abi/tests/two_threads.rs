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

fn request<const N: usize>(seq: u64) -> [u8; N] {
    let mut b = [0u8; N];
    for (i, c) in b.iter_mut().enumerate() {
        *c = (seq
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(i as u32 * 7)
            >> 13) as u8;
    }
    b
}

fn response<const N: usize>(seq: u64) -> [u8; N] {
    let mut b = [0u8; N];
    for (i, c) in b.iter_mut().enumerate() {
        *c = (seq >> (8 * (i % 8))) as u8 ^ (i as u8);
    }
    b
}

fn run<const REQ: usize, const RSP: usize>(total: u64, order: u32) {
    type P<const A: usize, const B: usize> = RawProtocol<A, B>;
    let mem = HostMem::new(ring_bytes_for_order(order).unwrap());
    let to_back = Arc::new(EvtChn::default());
    let to_front = Arc::new(EvtChn::default());
    // The frontend initialises the ring before the backend attaches (as with xenstore keys).
    let mut front = FrontRing::<_, P<REQ, RSP>>::init(mem.clone()).unwrap();

    let backend = {
        let (to_back, to_front, mem) = (to_back.clone(), to_front.clone(), mem.clone());
        thread::spawn(move || {
            let mut back = BackRing::<_, P<REQ, RSP>>::attach(mem).unwrap();
            let (mut seen, mut lost, mut kicks) = (0u64, 0u32, 0u64);
            while seen < total {
                while let Some(r) = back.pop_request().unwrap() {
                    assert_eq!(
                        r,
                        request::<REQ>(seen),
                        "request {seen} corrupted or out of order"
                    );
                    back.push_response(&response::<RSP>(seen)).unwrap();
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
        while sent < total && front.push_request(&request::<REQ>(sent)).is_ok() {
            sent += 1;
        }
        if front.publish_requests_and_check_notify() {
            to_back.notify();
        }
        while let Some(r) = front.pop_response().unwrap() {
            assert_eq!(
                r,
                response::<RSP>(done),
                "response {done} corrupted or out of order"
            );
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
    run::<64, 16>(300_000, 0);
}

#[test]
fn two_threads_multi_page_ring() {
    run::<112, 16>(300_000, 3);
}

/// netif TX geometry: 12-byte slots straddle 8-byte words, so neighbouring slots written by the
/// two threads share words.
#[test]
fn two_threads_ragged_12_byte_slots() {
    run::<12, 4>(300_000, 0);
}
