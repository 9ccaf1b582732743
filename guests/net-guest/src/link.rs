//! The guest's end of an iConnect net channel, independent of the platform: the channel's
//! frontend endpoint (style Net; ring 0 = netif TX on doorbell vector 0, ring 1 = netif RX on
//! vector 1; buffers are data pages), the keys the guest publishes (`mac`, `request-rx-copy`,
//! features, its ivshmem peer id, its QoS request), the backend's answer, and the
//! [`NetfrontDevice`] once the backend connected; liveness (`heartbeat-ms` and [`Link::beat`])
//! and reconnection: a backend that restarts (new generation) is followed automatically
//! (`Down`, then `Up` with a fresh device); one that closed the channel is rejoined with
//! [`Link::restart`] (a new frontend generation). The image feeds it an ivshmem region and
//! rings the doorbells it asks for; the host tests feed it a `HostMem` region with the real
//! backend endpoint and netback engine on the other side.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::Ordering;

use iconnect::Decision;
use iconnect::qos::{self, NetQosGrant};
use iconnect_channel::{Frontend, FrontendEvent, KeyMap, Window};
use netfront::channel::ChannelBuffers;
use netfront::{Config, Netfront};
use xen_abi::netif::{RxRing, Status, TxRequest, TxResponse, TxRing};
use xen_abi::ring::REQ_PROD_OFF;
use xen_abi::shmem::SharedMem;
use xen_abi::xenbus::XenbusState;

use crate::config::{GuestConfig, Hostile};
use crate::device::NetfrontDevice;

pub use netfront::channel::PEER_KEY;

/// Liveness key (both ends of a net channel): `heartbeat-ms = <period>`.
pub const HEARTBEAT_KEY: &str = "heartbeat-ms";
pub use netfront::channel::{RX_VECTOR, TX_VECTOR};

/// The device type over a channel on `M`.
pub type ChannelDevice<M> = NetfrontDevice<Window<M>, ChannelBuffers<M>>;

/// The backend's answer to our QoS request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosAnswer {
    /// Granted with these values.
    Granted(NetQosGrant),
    /// Refused, with the reason's key value.
    Refused(&'static str),
    /// No decision in the backend's keys (best effort).
    None,
}

impl QosAnswer {
    /// `granted`, `refused` or `none` (the `qos=` of `ICONNECT-LINK`).
    pub fn status(&self) -> &'static str {
        match self {
            QosAnswer::Granted(_) => "granted",
            QosAnswer::Refused(_) => "refused",
            QosAnswer::None => "none",
        }
    }

    /// Granted guaranteed rate (0 unless granted).
    pub fn granted_bps(&self) -> u64 {
        match self {
            QosAnswer::Granted(g) => g.guaranteed_bps,
            _ => 0,
        }
    }

    /// The `ICONNECT-LINK` fields after `up`/`down`.
    pub fn fields(&self) -> String {
        match self {
            QosAnswer::Granted(g) => format!(
                "qos=granted granted_bps={} ceiling_bps={} burst_bytes={} class={}",
                g.guaranteed_bps,
                g.ceiling_bps,
                g.burst_bytes,
                g.class.as_str()
            ),
            QosAnswer::Refused(r) => format!("qos=refused granted_bps=0 qos_reason={r}"),
            QosAnswer::None => "qos=none granted_bps=0".into(),
        }
    }
}

/// Reads the backend's QoS decision.
fn answer(keys: &KeyMap) -> QosAnswer {
    match qos::read_decision(keys) {
        Ok(Some(Decision::Granted(g))) => QosAnswer::Granted(g),
        Ok(Some(Decision::Refused { reason, .. })) => QosAnswer::Refused(reason.as_str()),
        Ok(None) => QosAnswer::None,
        Err(_) => QosAnswer::Refused("malformed-answer"),
    }
}

/// What the owner must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The backend connected: the device is there; its QoS answer.
    Up(QosAnswer),
    /// The channel went down (closed, failed or refused); why, and the QoS answer if any.
    Down(String),
}

/// The guest's end of the channel.
pub struct Link<M: SharedMem + Clone> {
    fe: Frontend<M>,
    device: Option<ChannelDevice<M>>,
    peer: Option<u16>,
    up: bool,
    /// `Down` was reported for the current attempt (a `Closed` after a `Disconnect` is not
    /// reported again).
    down_reported: bool,
    ring: [bool; 2],
}

impl<M: SharedMem + Clone> Link<M> {
    /// Starts the frontend on `region`; `own_id` is our ivshmem peer id (published so the
    /// backend can ring us).
    pub fn new(region: M, own_id: u16, cfg: &GuestConfig) -> Result<Self, String> {
        let mut keys = netfront::channel::frontend_keys(cfg.mac.0, own_id)
            .map_err(|e| format!("frontend keys: {e}"))?;
        if let Some(q) = &cfg.qos {
            q.write(&mut keys).map_err(|e| format!("QoS request keys: {e}"))?;
        }
        if cfg.heartbeat_ms > 0 {
            keys.insert(HEARTBEAT_KEY, &format!("{}", cfg.heartbeat_ms))
                .map_err(|e| format!("{HEARTBEAT_KEY} key: {e}"))?;
        }
        let config = netfront::channel::frontend_config();
        let fe = Frontend::new(region, config, keys).map_err(|e| format!("channel: {e}"))?;
        Ok(Self {
            fe,
            device: None,
            peer: None,
            up: false,
            down_reported: false,
            ring: [true, false],
        })
    }

    /// The backend's ivshmem peer id, once known.
    pub fn peer(&self) -> Option<u16> {
        self.peer
    }

    /// Whether the backend is connected.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// The device (while up).
    pub fn device(&mut self) -> Option<&mut ChannelDevice<M>> {
        self.device.as_mut()
    }

    /// Runs the endpoint: handles the backend's state changes, learns its peer id, builds the
    /// device when it connects. Call on every doorbell and timer tick.
    pub fn poll(&mut self) -> Result<Option<LinkEvent>, String> {
        let mut event = None;
        while let Some(ev) = self.fe.poll() {
            match ev {
                FrontendEvent::SetUp => self.down_reported = false,
                FrontendEvent::Ready => {
                    let keys = self.fe.backend_keys().clone();
                    self.learn_peer(keys.get(PEER_KEY))?;
                    let sg = keys.get("feature-sg") == Some("1");
                    let tx = self.fe.front_ring::<TxRing>(netfront::channel::TX_RING).map_err(|e| format!("ring 0: {e}"))?;
                    let rx = self.fe.front_ring::<RxRing>(netfront::channel::RX_RING).map_err(|e| format!("ring 1: {e}"))?;
                    let data = self.fe.data_area().map_err(|e| format!("data area: {e}"))?;
                    let pages = data.pages();
                    let bufs = ChannelBuffers::new(data, self.fe.page_allocator());
                    // A small data area is shared so that neither direction starves the other.
                    let d = Config::default();
                    let config = Config {
                        sg,
                        tx_buffers: d.tx_buffers.min(pages / 3).max(1),
                        rx_buffers: d.rx_buffers.min(pages / 2).max(1),
                    };
                    self.device = Some(NetfrontDevice::new(Netfront::new(tx, rx, bufs, config)));
                    self.up = true;
                    event = Some(LinkEvent::Up(answer(&keys)));
                }
                FrontendEvent::Disconnect | FrontendEvent::Closed | FrontendEvent::Failed(_) => {
                    if self.down_reported {
                        continue;
                    }
                    self.down_reported = true;
                    let was_up = core::mem::replace(&mut self.up, false);
                    self.device = None;
                    // A restarted backend may have a new doorbell id: learn it again.
                    self.peer = None;
                    let qos = self
                        .fe
                        .read_backend_keys()
                        .map(answer)
                        .unwrap_or(QosAnswer::None);
                    let why = match ev {
                        FrontendEvent::Failed(e) => format!("backend-protocol-error ({e})"),
                        _ if was_up => "backend-closed".into(),
                        _ => "backend-refused".into(),
                    };
                    event = Some(LinkEvent::Down(format!("reason={} {}", why.replace(' ', "_"), qos.fields())));
                    break;
                }
            }
        }
        if self.peer.is_none() {
            // The backend may be rewriting its keys right now: a busy area is read next time.
            if let Ok(k) = self.fe.read_backend_keys() {
                let v = k.get(PEER_KEY).map(String::from);
                self.learn_peer(v.as_deref())?;
            }
        }
        if self.fe.take_notify() {
            self.ring[usize::from(TX_VECTOR)] = true;
        }
        Ok(event)
    }

    fn learn_peer(&mut self, v: Option<&str>) -> Result<(), String> {
        if self.peer.is_none()
            && let Some(v) = v
        {
            self.peer = Some(
                v.parse()
                    .map_err(|_| format!("backend published a bad {PEER_KEY} {v:?}"))?,
            );
        }
        Ok(())
    }

    /// Which doorbell vectors to ring now (`[tx, rx]`); cleared. Empty until the backend's
    /// peer id is known (the requests stay pending until then).
    pub fn take_doorbells(&mut self) -> [bool; 2] {
        if let Some(d) = self.device.as_mut() {
            let n = d.netfront().take_notify();
            self.ring[0] |= n.tx;
            self.ring[1] |= n.rx;
        }
        if self.peer.is_none() {
            return [false; 2];
        }
        core::mem::take(&mut self.ring)
    }

    /// Bumps our heartbeat counter (the promise made with `heartbeat-ms`).
    pub fn beat(&mut self) {
        self.fe.beat();
    }

    /// Whether our end is closed (the backend closed or refused the channel): only
    /// [`restart`](Self::restart) rejoins. (A backend that restarts needs no restart of ours.)
    pub fn is_closed(&self) -> bool {
        self.fe.state() == XenbusState::Closed
    }

    /// Starts over as a new frontend generation (after the backend closed the channel): the
    /// backend sees a new guest and runs the handshake again; `Up` follows with a new device.
    pub fn restart(&mut self) {
        // Events still queued belong to the old connection (e.g. `Closed` after `Disconnect`).
        while self.fe.poll().is_some() {}
        self.device = None;
        self.up = false;
        self.peer = None;
        self.down_reported = false;
        self.fe.restart();
        self.ring[usize::from(TX_VECTOR)] |= self.fe.take_notify();
    }

    /// Closes our end (the backend sees `Closing`).
    pub fn close(&mut self) {
        self.fe.close();
        self.ring[0] |= self.fe.take_notify();
    }

    /// Writes garbage into our own TX ring (see [`Hostile`]). Must run while no frame of ours
    /// is in flight (the backend's answers to the garbage are read with
    /// [`hostile_responses`](Self::hostile_responses), not by netfront). Returns what it did.
    pub fn hostile(&mut self, mode: Hostile) -> Result<String, String> {
        let dev = self.device.as_mut().ok_or("link not up")?;
        let nf = dev.netfront();
        if nf.tx_in_flight() != 0 {
            return Err("frames in flight".into());
        }
        let ring = nf.raw_tx_ring();
        let what = match mode {
            Hostile::ReqProd => {
                let wild = ring.req_prod_pvt().wrapping_add(0x4000_0000);
                ring.mem().store_u32(REQ_PROD_OFF, wild, Ordering::Release);
                format!("req_prod={wild:#x} (ring of {})", ring.size())
            }
            Hostile::BadRef => {
                for i in 0..HOSTILE_BAD_REFS {
                    let r = TxRequest {
                        gref: 0xffff_ff00 + u32::from(i),
                        offset: 0,
                        flags: 0,
                        id: HOSTILE_ID + i,
                        size: 60,
                    };
                    ring.push_request(&r.to_bytes()).map_err(|e| format!("push: {e}"))?;
                }
                ring.publish_requests();
                format!("{HOSTILE_BAD_REFS} requests with refs 0xffffff00..")
            }
            Hostile::Oversize => {
                let r = TxRequest {
                    gref: 0,
                    offset: 0,
                    flags: 0,
                    id: HOSTILE_ID,
                    size: 9000,
                };
                ring.push_request(&r.to_bytes()).map_err(|e| format!("push: {e}"))?;
                ring.publish_requests();
                "one single-slot request of 9000 bytes".into()
            }
        };
        self.ring[usize::from(TX_VECTOR)] = true;
        Ok(what)
    }

    /// Reads the backend's answers to [`Hostile::BadRef`]: `(answered, errors)` so far.
    pub fn hostile_responses(&mut self, answered: &mut u16, errors: &mut u16) -> Result<(), String> {
        let dev = self.device.as_mut().ok_or("link down")?;
        let ring = dev.netfront().raw_tx_ring();
        while let Some(raw) = ring.pop_response().map_err(|e| format!("tx ring: {e}"))? {
            *answered += 1;
            match TxResponse::from_bytes(&raw) {
                Ok(r) if r.status == Status::Error && (HOSTILE_ID..HOSTILE_ID + HOSTILE_BAD_REFS).contains(&r.id) => {
                    *errors += 1
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Requests `hostile:bad-ref` sends.
pub const HOSTILE_BAD_REFS: u16 = 8;
/// Ids of the hostile requests (far from netfront's, which are below the ring size).
const HOSTILE_ID: u16 = 0xf000;
