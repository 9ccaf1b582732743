//! A guest port on the QEMU platform: one iConnect channel (one ivshmem-doorbell device), its
//! handshake, and the attachment of its netback engine to the [`Switch`].
//!
//! Contract (see the team brief, "netif over an iConnect channel"): ring 0 = netif TX ring
//! (doorbell vector 0), ring 1 = netif RX ring (vector 1), buffers are data pages of the
//! channel's data area. At `Connect` the frontend's keys are read: `mac` (required,
//! `xx:xx:xx:xx:xx:xx`, unicast), `request-rx-copy = 1` (required), `feature-sg`,
//! `feature-no-csum-offload`, `feature-ipv6-csum-offload`, `feature-rx-notify`, its QoS request
//! (`iconnect-qos-*`) and its doorbell address `ivshmem-peer`. The backend publishes
//! `ivshmem-peer` (its own id) and netback's feature keys at start, and at connect the QoS
//! decision (`iconnect::qos::write_decision`); a connection it cannot serve is refused with
//! `iconnect-net-error = <reason>` (`bad-mac`, `mac-in-use`, `no-rx-copy`, `bad-key:<key>`,
//! `no-peer-id`, `bad-layout`). A refused QoS request does not refuse the connection: the port
//! comes up best effort and the refusal (with its reason) is in the QoS keys.
//!
//! Liveness (optional, [`HEARTBEAT_KEY`]): a guest that publishes `heartbeat-ms = <n>` and then
//! leaves its heartbeat counter unchanged for [`HEARTBEAT_MISSES`] × n ms is taken down with
//! `heartbeat-timeout` (a VM that died without closing). net-dd publishes `heartbeat-ms = 100`
//! and beats that often.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use iconnect::qos::{self, NetQosRequest};
use iconnect_channel::{Backend, BackendEvent, DataArea, KeyMap, Liveness, Window};
use netback::Netback;
use netback::engine::RxQueueLimits;
use netback::negotiate::{self as neg, BackendFeatures, FrontendFeatures};
use netswitch::{Mac, PortId};
use xen_abi::netif::{RxRing, TxRing};
use xen_abi::shmem::SharedMem;

use crate::switch::{QosDecision, Switch};

/// Key carrying each end's ivshmem peer id (its doorbell address).
pub const PEER_KEY: &str = "ivshmem-peer";
/// Backend key naming why a connection was refused.
pub const ERROR_KEY: &str = "iconnect-net-error";
/// The frontend's MAC.
pub const MAC_KEY: &str = "mac";
/// Optional liveness key (both ends) and the missed periods after which a guest that promised
/// a heartbeat is taken down (`heartbeat-timeout`): see `iconnect_channel::liveness`. net-dd
/// itself promises [`OWN_HEARTBEAT_MS`].
pub use iconnect_channel::liveness::{HEARTBEAT_KEY, HEARTBEAT_MISSES};
/// net-dd's own heartbeat period (the owner calls [`ChannelPort::beat`] at least this often).
pub const OWN_HEARTBEAT_MS: u64 = 100;

/// Doorbell vector of the TX ring (ring 0).
pub const TX_VECTOR: u16 = 0;
/// Doorbell vector of the RX ring (ring 1).
pub const RX_VECTOR: u16 = 1;

/// Each guest's RX queue (frames switched to it, waiting for its buffers).
pub const RX_LIMITS: RxQueueLimits = RxQueueLimits {
    frames: 64,
    bytes: 128 * 1024,
};

/// The switch type for channel ports.
pub type ChannelSwitch<M> = Switch<Window<M>, DataArea<M>>;

/// A port state change, for the console markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortEvent {
    /// The guest is connected and attached.
    Up {
        /// Port number.
        port: PortId,
        /// Its MAC.
        mac: Mac,
        /// Its QoS outcome.
        qos: QosDecision,
    },
    /// The guest is gone (or was refused).
    Down {
        /// Port number.
        port: PortId,
        /// Why.
        reason: String,
    },
}

impl PortEvent {
    /// The `ICONNECT-PORT` marker line.
    pub fn marker(&self) -> String {
        match self {
            PortEvent::Up { port, mac, qos } => {
                let mut s = format!(
                    "ICONNECT-PORT {port} up mac={mac} qos={}",
                    crate::switch::qos_word(qos)
                );
                match qos {
                    Some(iconnect::Decision::Granted(g)) => s.push_str(&format!(
                        " guaranteed_bps={} ceiling_bps={} burst_bytes={} class={}",
                        g.guaranteed_bps,
                        g.ceiling_bps,
                        g.burst_bytes,
                        g.class.as_str()
                    )),
                    Some(iconnect::Decision::Refused { reason, error_key }) => {
                        s.push_str(&format!(" reason={}", reason.as_str()));
                        if let Some(k) = error_key {
                            s.push_str(&format!(" error_key={k}"));
                        }
                    }
                    None => {}
                }
                s
            }
            PortEvent::Down { port, reason } => {
                format!("ICONNECT-PORT {port} down reason={reason}")
            }
        }
    }
}

/// Reads the netif features a channel frontend asked for.
pub fn frontend_features(keys: &KeyMap) -> Result<FrontendFeatures, String> {
    match keys.get(neg::REQUEST_RX_COPY) {
        Some("1") => {}
        None | Some("0") => return Err("no-rx-copy".into()),
        Some(_) => return Err(format!("bad-key:{}", neg::REQUEST_RX_COPY)),
    }
    let flag = |k: &'static str| match keys.get(k) {
        None => Ok(false),
        Some(v) => iconnect::keys::parse_bool(k, v).map_err(|_| format!("bad-key:{k}")),
    };
    let offers = BackendFeatures::default();
    Ok(FrontendFeatures {
        sg: flag(neg::FEATURE_SG)? && offers.sg,
        ip_csum_offload: !flag(neg::FEATURE_NO_CSUM_OFFLOAD)?,
        ipv6_csum_offload: flag(neg::FEATURE_IPV6_CSUM_OFFLOAD)? && offers.ipv6_csum_offload,
        rx_notify: flag(neg::FEATURE_RX_NOTIFY)?,
    })
}

/// One channel port.
pub struct ChannelPort<M: SharedMem + Clone> {
    port: PortId,
    own_id: u16,
    be: Backend<M>,
    peer: Option<u16>,
    attached: bool,
    /// Why the channel is going down (set when we fail it or it fails).
    down_reason: Option<String>,
    kick: bool,
    /// The guest's promised heartbeat period (ns), the last value seen and when it changed.
    heartbeat: Option<Liveness>,
}

impl<M: SharedMem + Clone> ChannelPort<M> {
    /// Starts serving the channel in `mem` as `port`; `own_id` is this domain's doorbell
    /// address on it.
    pub fn new(port: PortId, mem: M, own_id: u16) -> Result<Self, iconnect_channel::Error> {
        let mut keys = KeyMap::new();
        keys.insert(PEER_KEY, &own_id.to_string())?;
        keys.insert(HEARTBEAT_KEY, &OWN_HEARTBEAT_MS.to_string())?;
        BackendFeatures::default()
            .advertise(&mut keys)
            .map_err(|_| iconnect_channel::Error::KeyRejected)?;
        let be = Backend::new(mem, keys)?;
        Ok(Self {
            port,
            own_id,
            be,
            peer: None,
            attached: false,
            down_reason: None,
            kick: true,
            heartbeat: None,
        })
    }

    /// The port number.
    pub fn port(&self) -> PortId {
        self.port
    }

    /// The guest's doorbell address (known once it connected).
    pub fn peer(&self) -> Option<u16> {
        self.peer
    }

    /// Whether the guest is attached to the switch.
    pub fn attached(&self) -> bool {
        self.attached
    }

    /// The channel endpoint.
    pub fn backend(&self) -> &Backend<M> {
        &self.be
    }

    /// Whether the guest must be rung because the channel's state or keys changed (ring it on
    /// any vector). Clears the flag.
    pub fn take_kick(&mut self) -> bool {
        core::mem::take(&mut self.kick)
    }

    /// Runs the handshake: reads the guest's end block and acts on what changed (attach at
    /// connect, detach at disconnect), pushing marker events.
    pub fn poll(&mut self, sw: &mut ChannelSwitch<M>, now_ns: u64, events: &mut Vec<PortEvent>) {
        while let Some(ev) = self.be.poll() {
            match ev {
                BackendEvent::Connect => self.connect(sw, now_ns, events),
                BackendEvent::Failed(e) => {
                    let why = format!("channel-error:{e}");
                    if !self.attached {
                        events.push(PortEvent::Down {
                            port: self.port,
                            reason: why.clone(),
                        });
                    }
                    self.down_reason.get_or_insert(why);
                }
                BackendEvent::Disconnect | BackendEvent::Removed => self.detach(sw, events),
            }
        }
        if self.be.take_notify() {
            self.kick = true;
        }
    }

    fn detach(&mut self, sw: &mut ChannelSwitch<M>, events: &mut Vec<PortEvent>) {
        let reason = self
            .down_reason
            .take()
            .unwrap_or_else(|| "disconnected".into());
        self.heartbeat = None;
        if self.attached {
            sw.detach(self.port);
            self.attached = false;
            events.push(PortEvent::Down {
                port: self.port,
                reason,
            });
        }
    }

    fn refuse(&mut self, reason: String, events: &mut Vec<PortEvent>) {
        let _ = self.be.keys_mut().insert(ERROR_KEY, &reason);
        self.be.publish_keys();
        self.be.refuse();
        self.kick = true;
        events.push(PortEvent::Down {
            port: self.port,
            reason,
        });
    }

    fn connect(&mut self, sw: &mut ChannelSwitch<M>, now_ns: u64, events: &mut Vec<PortEvent>) {
        // A fresh answer for this connection.
        let keys = self.be.keys_mut();
        keys.remove(ERROR_KEY);
        for k in crate::switch::QOS_ANSWER_KEYS {
            keys.remove(k);
        }
        self.down_reason = None;
        if self.attached {
            // Cannot happen (Disconnect comes first), but never attach twice.
            sw.detach(self.port);
            self.attached = false;
        }
        let fk = self.be.frontend_keys();
        if log::log_enabled!(log::Level::Debug) {
            for (k, v) in fk.iter() {
                log::debug!("port {}: frontend key {k}={v}", self.port);
            }
        }
        let peer = match fk.get(PEER_KEY).map(str::parse::<u16>) {
            Some(Ok(p)) if p != self.own_id => p,
            _ => return self.refuse("no-peer-id".into(), events),
        };
        self.peer = Some(peer);
        let Some(mac) = fk.get(MAC_KEY).and_then(Mac::parse) else {
            log::warn!("port {}: unusable mac {:?}", self.port, fk.get(MAC_KEY));
            return self.refuse("bad-mac".into(), events);
        };
        let features = match frontend_features(fk) {
            Ok(f) => f,
            Err(why) => return self.refuse(why, events),
        };
        let heartbeat = match Liveness::from_keys(fk, self.be.peer_heartbeat(), now_ns) {
            Ok(h) => h,
            Err(_) => return self.refuse(format!("bad-key:{HEARTBEAT_KEY}"), events),
        };
        let request = NetQosRequest::from_keys(fk);
        let rings = (
            self.be.ring_window::<TxRing>(0),
            self.be.ring_window::<RxRing>(1),
            self.be.data_area(),
        );
        let (Ok(tx), Ok(rx), Ok(data)) = rings else {
            return self.refuse("bad-layout".into(), events);
        };
        let Ok(nb) = Netback::new(tx, rx, features, RX_LIMITS) else {
            return self.refuse("bad-layout".into(), events);
        };
        match sw.attach(self.port, nb, data, mac, request, now_ns) {
            Ok(decision) => {
                if let Some(d) = &decision
                    && qos::write_decision(d, self.be.keys_mut()).is_err()
                {
                    log::warn!("port {}: QoS decision does not fit the keys", self.port);
                }
                self.be.publish_keys();
                self.be.accept();
                self.attached = true;
                self.heartbeat = heartbeat;
                self.kick = true;
                events.push(PortEvent::Up {
                    port: self.port,
                    mac,
                    qos: decision,
                });
            }
            Err(e) => self.refuse(e.reason().into(), events),
        }
    }

    /// Bumps our heartbeat (call at least every [`OWN_HEARTBEAT_MS`]).
    pub fn beat(&mut self) {
        self.be.beat();
    }

    /// Checks an attached guest's heartbeat (if it promised one): a guest silent for
    /// [`HEARTBEAT_MISSES`] periods is failed with `heartbeat-timeout` (the `Down` event follows
    /// at the next [`poll`](Self::poll)). Returns `false` if it was declared dead now.
    pub fn check_liveness(&mut self, now_ns: u64) -> bool {
        let hb = self.be.peer_heartbeat();
        let Some(live) = self.heartbeat.as_mut().filter(|_| self.attached) else {
            return true;
        };
        if !live.observe(hb, now_ns) {
            self.heartbeat = None;
            self.fail("heartbeat-timeout".into());
            return false;
        }
        true
    }

    /// Closes the channel because of a protocol error found outside the handshake (the
    /// netback engine broke): the guest is detached at the following `Disconnect`.
    pub fn fail(&mut self, reason: String) {
        self.down_reason = Some(reason);
        self.be.fail();
        self.kick = true;
    }
}
