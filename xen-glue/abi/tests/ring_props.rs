//! Property tests for the shared ring: arbitrary interleavings of a frontend and a backend, and
//! hostile frontends.

use core::sync::atomic::Ordering;

use proptest::prelude::*;
use xen_abi::Error;
use xen_abi::fuzzing::{BoundsChecked, ring_backend};
use xen_abi::ring::{
    BackRing, FrontRing, REQ_PROD_OFF, RING_HEADER_SIZE, RawProtocol, RingProtocol, ring_entries,
};
use xen_abi::shmem::{HostMem, SharedMem};

type P = RawProtocol<16, 8>;

#[derive(Debug, Clone, Copy)]
enum Op {
    FrontPush(u8),
    FrontPushBatch(u8),
    FrontPublish,
    BackPop(u8),
    BackPopBatch(u8),
    BackRespond(u8),
    BackPublish,
    FrontPop(u8),
    BackFinalCheck,
    FrontFinalCheck,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<u8>().prop_map(Op::FrontPush),
        any::<u8>().prop_map(Op::FrontPushBatch),
        Just(Op::FrontPublish),
        any::<u8>().prop_map(Op::BackPop),
        any::<u8>().prop_map(Op::BackPopBatch),
        any::<u8>().prop_map(Op::BackRespond),
        Just(Op::BackPublish),
        any::<u8>().prop_map(Op::FrontPop),
        Just(Op::BackFinalCheck),
        Just(Op::FrontFinalCheck),
    ]
}

fn req(seq: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    b[8..].copy_from_slice(&(!seq).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    b
}

fn rsp(seq: u64) -> [u8; 8] {
    (seq ^ 0xa5a5_a5a5_a5a5_a5a5).to_le_bytes()
}

struct Model {
    front: FrontRing<HostMem, P>,
    back: BackRing<BoundsChecked<HostMem>, P>,
    pushed: u64,
    published: u64,
    received: u64,
    answered: u64,
    resp_published: u64,
    completed: u64,
    backend_asleep: bool,
    frontend_asleep: bool,
}

impl Model {
    fn new(region: usize, start: u32) -> Self {
        let mem = HostMem::new(region);
        let limit = RING_HEADER_SIZE + ring_entries(region, P::SLOT) as usize * P::SLOT;
        let front = FrontRing::init_at(mem.clone(), start).unwrap();
        let back = BackRing::attach_at(BoundsChecked { inner: mem, limit }, start).unwrap();
        Self {
            front,
            back,
            pushed: 0,
            published: 0,
            received: 0,
            answered: 0,
            resp_published: 0,
            completed: 0,
            backend_asleep: false,
            frontend_asleep: false,
        }
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::FrontPush(n) => {
                for _ in 0..n % 40 {
                    match self.front.push_request(&req(self.pushed)) {
                        Ok(()) => self.pushed += 1,
                        Err(e) => {
                            assert_eq!(e, Error::RingFull);
                            assert_eq!(self.pushed - self.completed, self.front.size() as u64);
                            break;
                        }
                    }
                }
            }
            Op::FrontPushBatch(n) => {
                let reqs: Vec<[u8; 16]> =
                    (0..n as u64 % 40).map(|i| req(self.pushed + i)).collect();
                let free = self.front.free_requests() as usize;
                let pushed = self.front.push_requests(&reqs);
                assert_eq!(pushed, reqs.len().min(free));
                self.pushed += pushed as u64;
            }
            Op::FrontPublish => {
                let notify = self.front.publish_requests_and_check_notify();
                let new = self.pushed > self.published;
                self.published = self.pushed;
                if self.backend_asleep && new {
                    assert!(
                        notify,
                        "lost wakeup: backend asleep, new requests, no notification"
                    );
                    self.backend_asleep = false;
                }
            }
            Op::BackPop(n) => {
                for _ in 0..n % 40 {
                    match self.back.pop_request().unwrap() {
                        Some(r) => {
                            assert_eq!(r, req(self.received), "requests arrive once, in order");
                            self.received += 1;
                        }
                        None => {
                            assert_eq!(
                                self.received, self.published,
                                "every published request is seen"
                            );
                            break;
                        }
                    }
                }
                self.backend_asleep = false;
            }
            Op::BackPopBatch(n) => {
                let mut out = vec![[0u8; 16]; n as usize % 40];
                let got = self.back.pop_requests(&mut out).unwrap();
                for r in &out[..got] {
                    assert_eq!(
                        *r,
                        req(self.received),
                        "batched requests arrive once, in order"
                    );
                    self.received += 1;
                }
                if got < out.len() {
                    assert_eq!(
                        self.received, self.published,
                        "a short batch means nothing is left"
                    );
                }
                self.backend_asleep = false;
            }
            Op::BackRespond(n) => {
                for _ in 0..n % 40 {
                    match self.back.push_response(&rsp(self.answered)) {
                        Ok(()) => self.answered += 1,
                        Err(e) => {
                            assert_eq!(e, Error::NoRequestPending);
                            assert_eq!(self.answered, self.received);
                            break;
                        }
                    }
                }
            }
            Op::BackPublish => {
                let notify = self.back.publish_responses_and_check_notify();
                let new = self.answered > self.resp_published;
                self.resp_published = self.answered;
                if self.frontend_asleep && new {
                    assert!(
                        notify,
                        "lost wakeup: frontend asleep, new responses, no notification"
                    );
                    self.frontend_asleep = false;
                }
            }
            Op::FrontPop(n) => {
                for _ in 0..n % 40 {
                    match self.front.pop_response().unwrap() {
                        Some(r) => {
                            assert_eq!(r, rsp(self.completed), "responses arrive once, in order");
                            self.completed += 1;
                        }
                        None => {
                            assert_eq!(self.completed, self.resp_published);
                            break;
                        }
                    }
                }
                self.frontend_asleep = false;
            }
            Op::BackFinalCheck => {
                let more = self.back.final_check_for_requests().unwrap();
                assert_eq!(more, self.published > self.received);
                if !more {
                    self.backend_asleep = true;
                }
            }
            Op::FrontFinalCheck => {
                let more = self.front.final_check_for_responses().unwrap();
                assert_eq!(more, self.resp_published > self.completed);
                if !more {
                    self.frontend_asleep = true;
                }
            }
        }
        assert!(self.pushed - self.completed <= self.front.size() as u64);
    }

    fn drain(&mut self) {
        for _ in 0..4 {
            self.step(Op::FrontPublish);
            loop {
                self.step(Op::BackPop(39));
                self.step(Op::BackRespond(39));
                self.step(Op::BackPublish);
                self.step(Op::FrontPop(39));
                if self.completed == self.pushed {
                    break;
                }
            }
        }
        assert_eq!(
            self.received, self.pushed,
            "every request moved exactly once"
        );
        assert_eq!(
            self.completed, self.pushed,
            "every response moved exactly once"
        );
        assert!(!self.back.is_broken() && !self.front.is_broken());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any interleaving moves every request and response exactly once, in order, never loses a
    /// wakeup, for small (4-slot) and page-sized (128-slot) rings, with indices near 2^32.
    #[test]
    fn interleavings_deliver_everything_once(
        ops in proptest::collection::vec(op(), 0..300),
        small in any::<bool>(),
        start in prop_oneof![Just(0u32), Just(u32::MAX - 20), any::<u32>()],
    ) {
        let region = if small { RING_HEADER_SIZE + 4 * 16 } else { 4096 };
        let mut m = Model::new(region, start);
        for op in ops {
            m.step(op);
        }
        m.drain();
    }

    /// A hostile frontend writing random values anywhere (indices, slots) never makes the
    /// backend panic or touch memory outside its ring (see `fuzzing::ring_backend`).
    #[test]
    fn hostile_script_never_escapes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        ring_backend(&data);
    }

    /// Random `req_prod` values: accepted iff within one ring of the responses and not behind the
    /// consumer; an accepted value never yields more than `nr_ents` outstanding requests, a
    /// rejected one breaks only this ring.
    #[test]
    fn random_req_prod(writes in proptest::collection::vec((any::<u32>(), 0u8..40), 1..50), start in any::<u32>()) {
        let mem = HostMem::pages(1);
        let limit = RING_HEADER_SIZE + 128 * 16;
        let _front = FrontRing::<_, P>::init_at(mem.clone(), start).unwrap();
        let mut back = BackRing::<_, P>::attach_at(BoundsChecked { inner: mem.clone(), limit }, start).unwrap();
        for (delta, pops) in writes {
            let prod = start.wrapping_add(delta % 300);
            mem.store_u32(REQ_PROD_OFF, prod, Ordering::Release);
            let before_cons = back.req_cons();
            match back.unconsumed_requests() {
                Ok(n) => {
                    prop_assert!(prod.wrapping_sub(back.rsp_prod_pvt()) <= back.size());
                    prop_assert_eq!(n, prod.wrapping_sub(before_cons));
                    for _ in 0..pops {
                        if back.pop_request().unwrap().is_none() { break; }
                    }
                    while back.push_response(&[0; 8]).is_ok() {}
                    back.publish_responses();
                }
                Err(e) => {
                    prop_assert_eq!(e, Error::RingOverflow);
                    prop_assert!(back.is_broken());
                    prop_assert_eq!(back.pop_request(), Err(Error::RingBroken));
                    break;
                }
            }
        }
    }
}
