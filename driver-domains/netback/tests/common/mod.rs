//! A simulated netfront written from the `netif.h` contract (not from the engine): it owns the
//! shared rings (it initialises them, as a frontend must), grants its pages in a
//! [`FakeGrants`] table, splits frames into slots the way `xen-netfront` does (first slot holds
//! the total size, following slots hold at most a page each, never crossing a page), posts RX
//! buffers, and reassembles received frames from rx responses.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};

use netback::engine::RxQueueLimits;
use netback::grant::FakeGrants;
use netback::negotiate::FrontendFeatures;
use netback::Netback;
use xen_abi::netif::{self, Extra, ExtraInfo, RxRequest, RxResponse, RxRing, Status, TxRequest, TxResponse, TxRing, rxf, txf};
use xen_abi::ring::FrontRing;
use xen_abi::shmem::HostMem;
use xen_abi::PAGE_SIZE;

/// Deterministic xorshift64* generator.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn range(&mut self, lo: usize, hi_incl: usize) -> usize {
        lo + self.below((hi_incl - lo + 1) as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One slot as the sim built it (for building hostile variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Data(TxRequest),
    Extra(ExtraInfo),
}

impl Slot {
    pub fn bytes(&self) -> [u8; netif::TX_REQUEST_SIZE] {
        match self {
            Slot::Data(r) => r.to_bytes(),
            Slot::Extra(e) => {
                let mut b = [0u8; netif::TX_REQUEST_SIZE];
                b[..8].copy_from_slice(&e.to_bytes());
                b
            }
        }
    }
}

pub struct SimFront {
    pub tx: FrontRing<HostMem, TxRing>,
    pub rx: FrontRing<HostMem, RxRing>,
    pub tx_mem: HostMem,
    pub rx_mem: HostMem,
    pub grants: FakeGrants,
    next_gref: u32,
    next_id: u16,
    /// TX slots awaiting a response, in ring order: (id, is extra).
    pub tx_pending: VecDeque<(u16, bool)>,
    /// Posted RX buffers by id.
    rx_posted: HashMap<u16, u32>,
    next_rx_id: u16,
    /// Frame being reassembled from rx responses.
    partial: Vec<u8>,
    partial_flags: u16,
    partial_ok: bool,
    in_frame: bool,
    pub rx_errors: usize,
    /// If set, TX fragments start at random offsets in their pages.
    pub frag_rng: Option<Rng>,
}

/// A received frame with its first slot's flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub data: Vec<u8>,
    pub flags: u16,
    pub ok: bool,
}

impl SimFront {
    pub fn new() -> Self {
        let tx_mem = HostMem::pages(1);
        let rx_mem = HostMem::pages(1);
        Self {
            tx: FrontRing::init(tx_mem.clone()).unwrap(),
            rx: FrontRing::init(rx_mem.clone()).unwrap(),
            tx_mem,
            rx_mem,
            grants: FakeGrants::new(),
            next_gref: 8,
            next_id: 0,
            tx_pending: VecDeque::new(),
            rx_posted: HashMap::new(),
            next_rx_id: 0,
            partial: Vec::new(),
            partial_flags: 0,
            partial_ok: true,
            in_frame: false,
            rx_errors: 0,
            frag_rng: None,
        }
    }

    /// The backend engine attached to this frontend's rings.
    pub fn backend(&self, features: FrontendFeatures, limits: RxQueueLimits) -> Netback<HostMem> {
        Netback::new(self.tx_mem.clone(), self.rx_mem.clone(), features, limits).unwrap()
    }

    fn alloc_page(&mut self, readonly: bool) -> u32 {
        let g = self.next_gref;
        self.next_gref += 1;
        self.grants.grant(g, readonly);
        g
    }

    fn id(&mut self) -> u16 {
        let i = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        i
    }

    /// Builds the slots of `frame` like netfront: the first chunk starts at `first_offset` and
    /// fills the rest of its page; each following chunk is at most a page, at offset 0. The
    /// data is written into freshly granted read-only pages. `extras` go after the first slot.
    pub fn build_tx(&mut self, frame: &[u8], first_offset: usize, flags: u16, extras: &[Extra]) -> Vec<Slot> {
        assert!(first_offset < PAGE_SIZE);
        let first_len = frame.len().min(PAGE_SIZE - first_offset);
        let mut slots = Vec::new();
        let g = self.alloc_page(true);
        self.grants.page_mut(g).unwrap()[first_offset..first_offset + first_len].copy_from_slice(&frame[..first_len]);
        let more = first_len < frame.len();
        let first = TxRequest {
            gref: g,
            offset: first_offset as u16,
            flags: flags
                | if more { txf::MORE_DATA } else { 0 }
                | if extras.is_empty() { 0 } else { txf::EXTRA_INFO },
            id: self.id(),
            size: frame.len() as u16,
        };
        slots.push(Slot::Data(first));
        for (i, e) in extras.iter().enumerate() {
            slots.push(Slot::Extra(ExtraInfo {
                more: i + 1 < extras.len(),
                extra: *e,
            }));
        }
        let mut pos = first_len;
        let mut used = 1;
        while pos < frame.len() {
            let remaining = frame.len() - pos;
            // Fragments of skb pages may start anywhere in their page (netfront never lets one
            // cross a page); keep within netfront's 18 slots.
            let mut off = self.frag_rng.as_mut().map_or(0, |r| r.below(PAGE_SIZE as u64) as usize);
            let fits = |off: usize| {
                let n = remaining.min(PAGE_SIZE - off);
                used + 1 + (remaining - n).div_ceil(PAGE_SIZE) <= netif::NR_SLOTS_MIN
            };
            if !fits(off) {
                off = 0;
            }
            let n = remaining.min(PAGE_SIZE - off);
            let g = self.alloc_page(true);
            self.grants.page_mut(g).unwrap()[off..off + n].copy_from_slice(&frame[pos..pos + n]);
            pos += n;
            used += 1;
            let id = self.id();
            slots.push(Slot::Data(TxRequest {
                gref: g,
                offset: off as u16,
                flags: if pos < frame.len() { txf::MORE_DATA } else { 0 },
                id,
                size: n as u16,
            }));
        }
        slots
    }

    /// Pushes slots (without publishing). `false` if the ring is full (nothing pushed).
    pub fn push_slots(&mut self, slots: &[Slot]) -> bool {
        if (self.tx.free_requests() as usize) < slots.len() {
            return false;
        }
        for s in slots {
            self.tx.push_request(&s.bytes()).unwrap();
            let pending = match s {
                Slot::Data(r) => (r.id, false),
                Slot::Extra(_) => (0, true),
            };
            self.tx_pending.push_back(pending);
        }
        true
    }

    /// Publishes TX requests; whether the backend must be notified.
    pub fn publish_tx(&mut self) -> bool {
        self.tx.publish_requests_and_check_notify()
    }

    /// Consumes TX responses, checks they answer the pending slots in order, returns them.
    pub fn tx_responses(&mut self) -> Vec<TxResponse> {
        let mut out = Vec::new();
        while let Some(b) = self.tx.pop_response().unwrap() {
            let r = TxResponse::from_bytes(&b).unwrap();
            let (id, extra) = self.tx_pending.pop_front().expect("response without request");
            if extra {
                assert_eq!(r.status, Status::Null, "extra slot answered with NULL");
            } else {
                assert_eq!(r.id, id, "responses answer slots in ring order");
                assert_ne!(r.status, Status::Null);
            }
            out.push(r);
        }
        out
    }

    /// Posts up to `n` writable RX buffers; returns whether the backend must be notified.
    pub fn post_rx(&mut self, n: usize) -> bool {
        for _ in 0..n {
            if self.rx.is_full() {
                break;
            }
            // Ids are ring-slot sized like netfront's (index into its buffer array).
            let id = self.next_rx_id;
            self.next_rx_id = self.next_rx_id.wrapping_add(1) % 256;
            assert!(!self.rx_posted.contains_key(&id), "sim: id reuse");
            let g = self.alloc_page(false);
            // Poison: a short copy would show.
            self.grants.page_mut(g).unwrap().fill(0xEE);
            self.rx_posted.insert(id, g);
            self.rx.push_request(&RxRequest { id, gref: g }.to_bytes()).unwrap();
        }
        self.rx.publish_requests_and_check_notify()
    }

    /// Consumes rx responses and returns the completed frames.
    pub fn rx_frames(&mut self) -> Vec<Received> {
        let mut out = Vec::new();
        while let Some(b) = self.rx.pop_response().unwrap() {
            let r = RxResponse::from_bytes(&b).expect("valid rx response");
            let g = self.rx_posted.remove(&r.id).expect("response for a posted buffer");
            if !self.in_frame {
                self.in_frame = true;
                self.partial_flags = r.flags & !rxf::MORE_DATA;
                self.partial_ok = true;
            } else {
                assert_eq!(r.flags & !rxf::MORE_DATA, 0, "flags only on the first slot");
            }
            if r.status < 0 {
                self.partial_ok = false;
                self.rx_errors += 1;
            } else {
                assert!(r.status > 0, "empty rx slot");
                let page = self.grants.page(g).unwrap();
                self.partial
                    .extend_from_slice(&page[r.offset as usize..r.offset as usize + r.status as usize]);
            }
            self.grants.revoke(g);
            if r.flags & rxf::MORE_DATA == 0 {
                out.push(Received {
                    data: std::mem::take(&mut self.partial),
                    flags: self.partial_flags,
                    ok: self.partial_ok,
                });
                self.in_frame = false;
            }
        }
        out
    }

    /// Buffers posted and not yet answered.
    pub fn rx_outstanding(&self) -> usize {
        self.rx_posted.len()
    }

    /// Revokes every TX page (after its packet was answered).
    pub fn revoke_tx_pages(&mut self, slots: &[Slot]) {
        for s in slots {
            if let Slot::Data(r) = s {
                self.grants.revoke(r.gref);
            }
        }
    }
}

pub fn sg_features() -> FrontendFeatures {
    FrontendFeatures {
        sg: true,
        ip_csum_offload: true,
        ipv6_csum_offload: true,
        rx_notify: true,
    }
}

/// A random Ethernet-sized frame with a recognisable header.
pub fn frame(rng: &mut Rng, len: usize, tag: u32) -> Vec<u8> {
    let mut f = rng.bytes(len);
    let t = tag.to_le_bytes();
    let n = 4.min(len);
    f[..n].copy_from_slice(&t[..n]);
    f
}
