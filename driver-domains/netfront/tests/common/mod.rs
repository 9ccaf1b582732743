//! A netfront and the real netback engine joined by a real iConnect channel over `HostMem`
//! (the two endpoints run the handshake; the engines get the channel's ring windows and data
//! area exactly as net-guest and net-dd do).
#![allow(dead_code)]

use iconnect_channel::{Backend, BackendEvent, DataArea, Frontend, FrontendEvent, KeyMap, Window};
use netback::engine::RxQueueLimits;
use netback::negotiate::FrontendFeatures;
use netback::{Netback, RxMeta};
use netfront::channel::ChannelBuffers;
use netfront::{Config, Netfront};
use xen_abi::netif::{RxRing, TxRing};
use xen_abi::shmem::HostMem;

pub type Front = Netfront<Window<HostMem>, ChannelBuffers<HostMem>>;
pub type Back = Netback<Window<HostMem>>;

pub struct Pair {
    pub front: Front,
    pub back: Back,
    pub grants: DataArea<HostMem>,
    pub region: HostMem,
    pub be: Backend<HostMem>,
    pub fe: Frontend<HostMem>,
}

/// Region pages: control page, two ring pages, the rest data pages.
pub const REGION_PAGES: usize = 1024;

/// Sets up the channel (handshake through both endpoints) and both engines.
pub fn pair(config: Config, features: FrontendFeatures, limits: RxQueueLimits) -> Pair {
    let region = HostMem::pages(REGION_PAGES);
    let mut be = Backend::new(region.clone(), KeyMap::new()).unwrap();
    let fconfig = netfront::channel::frontend_config();
    let mut keys = KeyMap::new();
    keys.insert("request-rx-copy", "1").unwrap();
    keys.insert("feature-sg", if config.sg { "1" } else { "0" }).unwrap();
    let mut fe = Frontend::new(region.clone(), fconfig, keys).unwrap();
    let (mut back, mut front) = (None, None);
    for _ in 0..6 {
        while let Some(ev) = be.poll() {
            if ev == BackendEvent::Connect {
                let engine = Netback::new(
                    be.ring_window::<TxRing>(0).unwrap(),
                    be.ring_window::<RxRing>(1).unwrap(),
                    features,
                    limits,
                )
                .unwrap();
                back = Some((engine, be.data_area().unwrap()));
                be.accept();
            }
        }
        while let Some(ev) = fe.poll() {
            if ev == FrontendEvent::SetUp {
                let bufs = ChannelBuffers::new(fe.data_area().unwrap(), fe.page_allocator());
                front = Some(Netfront::new(
                    fe.front_ring::<TxRing>(0).unwrap(),
                    fe.front_ring::<RxRing>(1).unwrap(),
                    bufs,
                    config,
                ));
            }
        }
    }
    let (back, grants) = back.expect("backend connected");
    Pair {
        front: front.expect("frontend set up"),
        back,
        grants,
        region,
        be,
        fe,
    }
}

pub fn sg_features() -> FrontendFeatures {
    FrontendFeatures {
        sg: true,
        ip_csum_offload: false,
        ipv6_csum_offload: false,
        rx_notify: true,
    }
}

pub fn plain_features() -> FrontendFeatures {
    FrontendFeatures {
        sg: false,
        ip_csum_offload: false,
        ipv6_csum_offload: false,
        rx_notify: true,
    }
}

/// A frame of `len` bytes whose content depends on `seed` and the position, with an ethertype
/// nobody checksums.
pub fn frame(len: usize, seed: u32) -> Vec<u8> {
    let mut x = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut f: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    if len >= 14 {
        f[12] = 0x88;
        f[13] = 0xb5;
    }
    f
}

impl Pair {
    /// Backend: every TX packet out (one poll with a large budget).
    pub fn back_tx(&mut self) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        self.back
            .poll_tx(0, &mut self.grants, 4096, |f| got.push(f.data.to_vec()))
            .unwrap();
        got
    }

    /// Backend: queue a frame for the frontend.
    pub fn back_queue(&mut self, f: &[u8]) -> Result<(), netback::Error> {
        self.back.queue_rx(f, RxMeta::default())
    }

    /// Backend: deliver queued frames.
    pub fn back_rx(&mut self) -> netback::RxPoll {
        self.back.poll_rx(&mut self.grants, 4096).unwrap()
    }

    /// Frontend: every complete frame.
    pub fn front_rx(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(f) = self.front.recv().unwrap() {
            out.push(f.data.clone());
            self.front.recycle(f.data);
        }
        out
    }
}
