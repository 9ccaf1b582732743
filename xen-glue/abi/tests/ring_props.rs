//! Property tests for the shared ring: arbitrary interleavings of a frontend and a backend, and
//! hostile frontends.

use core::sync::atomic::Ordering;

use proptest::prelude::*;
use xen_abi::Error;
use xen_abi::fuzzing::{BoundsChecked, ring_backend};
use xen_abi::ring::{
    BackRing, FrontRing, REQ_PROD_OFF, RING_HEADER_SIZE, RawProtocol, RingProtocol, SlotReader,
    ring_entries,
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
    FrontProduceInPlace(u8),
    BackVisitInPlace(u8),
    BackServeInPlace(u8),
    FrontVisitInPlace(u8),
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
        any::<u8>().prop_map(Op::FrontProduceInPlace),
        any::<u8>().prop_map(Op::BackVisitInPlace),
        any::<u8>().prop_map(Op::BackServeInPlace),
        any::<u8>().prop_map(Op::FrontVisitInPlace),
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

/// Reads a whole 16-byte request in place, each field once, through the typed loads.
fn read_req_in_place<M: SharedMem>(r: SlotReader<'_, M>) -> [u8; 16] {
    assert_eq!(r.len(), 16);
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&r.load_u64(0).to_le_bytes());
    b[8..12].copy_from_slice(&r.load_u32(8).to_le_bytes());
    b[12..14].copy_from_slice(&r.load_u16(12).to_le_bytes());
    b[14] = r.load_u8(14);
    let mut last = [0u8; 1];
    r.read_bytes(15, &mut last);
    b[15] = last[0];
    b
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
            Op::FrontProduceInPlace(n) => {
                let free = self.front.free_requests();
                let base = self.pushed;
                let k = self.front.produce_requests(u32::from(n % 40), |i, w| {
                    let r = req(base + u64::from(i));
                    // Mixed field stores; together they cover the whole entry.
                    w.store_u64(0, u64::from_le_bytes(r[..8].try_into().unwrap()));
                    w.store_u32(8, u32::from_le_bytes(r[8..12].try_into().unwrap()));
                    w.store_u16(12, u16::from_le_bytes(r[12..14].try_into().unwrap()));
                    w.store_u8(14, r[14]);
                    w.write_bytes(15, &r[15..]);
                });
                assert_eq!(k, u32::from(n % 40).min(free));
                self.pushed += u64::from(k);
            }
            Op::BackVisitInPlace(n) => {
                let max = u32::from(n % 40);
                let mut seen = Vec::new();
                let got = self
                    .back
                    .consume_requests(max, |r| seen.push(read_req_in_place(r)))
                    .unwrap();
                assert_eq!(got as usize, seen.len(), "each request visited once");
                for r in seen {
                    assert_eq!(r, req(self.received), "visited in place, once, in order");
                    self.received += 1;
                }
                if got < max {
                    assert_eq!(
                        self.received, self.published,
                        "a short visit means nothing is left"
                    );
                }
                self.backend_asleep = false;
            }
            Op::BackServeInPlace(n) => {
                let max = u32::from(n % 40);
                let (mut received, mut answered) = (self.received, self.answered);
                let got = self
                    .back
                    .serve_requests(max, |r, w| {
                        assert_eq!(read_req_in_place(r), req(received), "served in order");
                        received += 1;
                        assert_eq!(w.len(), 8);
                        w.put(&rsp(answered));
                        answered += 1;
                    })
                    .unwrap();
                assert_eq!(u64::from(got), received - self.received);
                self.received = received;
                self.answered = answered;
                if got < max {
                    assert_eq!(self.received, self.published);
                }
                self.backend_asleep = false;
            }
            Op::FrontVisitInPlace(n) => {
                let max = u32::from(n % 40);
                let mut completed = self.completed;
                let got = self
                    .front
                    .consume_responses(max, |r| {
                        let mut b = [0u8; 8];
                        r.read_bytes(0, &mut b);
                        assert_eq!(b, rsp(completed), "responses visited once, in order");
                        assert_eq!(r.copy::<[u8; 8]>(), b);
                        completed += 1;
                    })
                    .unwrap();
                assert_eq!(u64::from(got), completed - self.completed);
                self.completed = completed;
                if got < max {
                    assert_eq!(self.completed, self.resp_published);
                }
                self.frontend_asleep = false;
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

    /// The in-place consumers under a hostile frontend (random `req_prod`, random slot bytes
    /// rewritten between visits): never a panic, never an access outside the ring (bounds-checked
    /// region), never more visits than the validated `req_prod` allows; every visited slot
    /// shows exactly the bytes in shared memory; a bad index breaks only this ring.
    #[test]
    fn hostile_writes_never_escape_in_place_visits(
        rounds in proptest::collection::vec((any::<u32>(), any::<u8>(), any::<bool>(), proptest::collection::vec(any::<u8>(), 16)), 1..40),
        start in any::<u32>(),
    ) {
        let mem = HostMem::pages(1);
        let limit = RING_HEADER_SIZE + 128 * 16;
        let _front = FrontRing::<_, P>::init_at(mem.clone(), start).unwrap();
        let mut back = BackRing::<_, P>::attach_at(BoundsChecked { inner: mem.clone(), limit }, start).unwrap();
        for (delta, max, serve, junk) in rounds {
            let prod = start.wrapping_add(delta % 300);
            mem.store_u32(REQ_PROD_OFF, prod, Ordering::Release);
            // Hostile bytes into every slot.
            for slot in 0..128 {
                mem.write_bytes(RING_HEADER_SIZE + slot * 16, &junk);
            }
            let cons = back.req_cons();
            let rsp_prod = back.rsp_prod_pvt();
            // Outside one ring of the responses, or behind the consumer: never accepted.
            let hopeless = prod.wrapping_sub(rsp_prod) > back.size()
                || prod.wrapping_sub(rsp_prod) < cons.wrapping_sub(rsp_prod);
            let mut visits = 0u32;
            let res = if serve {
                back.serve_requests(u32::from(max), |r, w| {
                    assert_eq!(read_req_in_place(r)[..], junk[..]);
                    w.store_u64(0, 7);
                    visits += 1;
                })
            } else {
                back.consume_requests(u32::from(max), |r| {
                    assert_eq!(read_req_in_place(r)[..], junk[..]);
                    visits += 1;
                })
            };
            match res {
                Ok(n) => {
                    prop_assert_eq!(n, visits);
                    prop_assert!(n <= u32::from(max));
                    prop_assert_eq!(back.req_cons(), cons.wrapping_add(n));
                    // Never more outstanding than the ring holds, whatever the peer wrote.
                    prop_assert!(back.req_cons().wrapping_sub(rsp_prod) <= back.size());
                    if n > 0 && n < u32::from(max) {
                        // A short visit validated this req_prod and took everything it offered.
                        prop_assert!(!hopeless);
                        prop_assert_eq!(back.req_cons(), prod);
                    }
                    while back.push_response(&[0; 8]).is_ok() {}
                    back.publish_responses();
                }
                Err(e) => {
                    prop_assert_eq!(e, Error::RingOverflow);
                    prop_assert_eq!(visits, 0);
                    prop_assert_eq!(back.consume_requests(1, |_| ()), Err(Error::RingBroken));
                    break;
                }
            }
        }
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
