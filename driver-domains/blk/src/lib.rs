//! # blk-dd: the storage driver domain (host-tested logic)
//!
//! The image (`src/main.rs`, target only) owns a virtio-blk disk and a virtio-net NIC and serves
//! one guest per ivshmem-doorbell device. This library is everything in it that does not touch
//! hardware, with no `unsafe`:
//!
//! * [`Registry`] — the platform's volumes (from `vol=` tokens, `blkback::volumes`), which are
//!   ready (a remote volume only after its first NBD handshake told its size) and which guest
//!   port uses each (a volume serves one guest at a time).
//! * [`BlkPort`] — one guest channel: the block-style iConnect handshake (the guest names its
//!   volume with `iconnect-storage-volume`, never a location), the backend keys
//!   (`blkback::negotiate::advertise` + the storage decision), its `blkback::Blkback` engine
//!   over ring 0 with the channel's data area as grant table, and `ICONNECT-PORT` events.
//! * `disk` (target only) — the virtio-blk disk as a `blkback::Volume`.
//!
//! Contract (team brief, "blkif over an iConnect channel"): style Block, ring 0 = blkif ring
//! (112-byte slots, doorbell vector 0), data page numbers as grant references; each end
//! publishes its ivshmem peer id as `ivshmem-peer`. A connection the domain cannot serve is
//! refused with `iconnect-blk-error = <reason>` (`no-peer-id`, `no-volume-key`,
//! `bad-key:<key>`, `unknown-volume`, `volume-in-use`, `bad-layout`); a hostile ring breaks
//! only its own port (`down reason=blkback:<error>`). Liveness as on net channels: a guest that
//! publishes `heartbeat-ms` and then falls silent for 5 periods is taken down
//! (`heartbeat-timeout`) and its volume freed.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

/// The virtio-blk disk as a `blkback::Volume` (target only; also used by `blk-guest`'s
/// `disk=virtio` mode, so that the comparison measures the path, not the driver).
#[cfg(target_os = "none")]
pub mod disk;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use blkback::negotiate;
use blkback::volume::Volume;
use blkback::{Backing, Blkback, Config, Geometry, VolumeMap};
use iconnect::Decision;
use iconnect::storage::{StorageGrant, StorageRequest};
use iconnect_channel::{Backend, BackendEvent, DataArea, KeyMap, Liveness, Window};
use xen_abi::blkif::BlkRing;
use xen_abi::shmem::SharedMem;

/// Key carrying each end's ivshmem peer id (its doorbell address).
pub const PEER_KEY: &str = "ivshmem-peer";
/// Backend key naming why a connection was refused.
pub const ERROR_KEY: &str = "iconnect-blk-error";
/// Doorbell vector of ring 0 (requests and responses).
pub const VECTOR: u16 = 0;
/// Optional liveness key (both ends), as on net channels, and the missed periods after which a
/// guest that promised a heartbeat is taken down (`heartbeat-timeout`: a VM killed without
/// closing frees its volume); see `iconnect_channel::liveness`. blk-dd promises
/// [`OWN_HEARTBEAT_MS`].
pub use iconnect_channel::liveness::{HEARTBEAT_KEY, HEARTBEAT_MISSES};
/// blk-dd's own heartbeat period (the owner calls [`BlkPort::beat`] at least this often).
pub const OWN_HEARTBEAT_MS: u64 = 100;

/// Engine limits per guest: 64 indirect segments (256 KiB requests), 32 requests and 512 KiB
/// in flight (blk-dd runs in 16 MiB with several guests).
pub const ENGINE: Config = Config {
    max_indirect_segments: 64,
    max_in_flight: 32,
    max_in_flight_bytes: 512 << 10,
};

/// One volume of the platform.
#[derive(Debug, Clone)]
pub struct Slot {
    /// Where it lives (name, backing, sector size, read-only).
    pub spec: blkback::VolumeSpec,
    /// What guests see; `None` until known (a remote volume before its first handshake).
    pub geometry: Option<Geometry>,
    /// The port using it.
    pub user: Option<usize>,
}

/// Why a volume cannot be handed to a guest now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimError {
    /// No volume of that name.
    Unknown,
    /// Another port uses it.
    InUse,
    /// Its geometry is not known yet (remote, not connected): try again later.
    NotReady,
}

/// The platform's volumes and who uses them.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    slots: Vec<Slot>,
}

impl Registry {
    /// Every volume of `map`, none ready, none in use.
    pub fn new(map: &VolumeMap) -> Self {
        Self {
            slots: map
                .volumes()
                .iter()
                .map(|v| Slot {
                    spec: v.clone(),
                    geometry: None,
                    user: None,
                })
                .collect(),
        }
    }

    /// The volumes, in command-line order (their index is the volume id).
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Sets what volume `id` looks like (once known).
    pub fn set_geometry(&mut self, id: usize, g: Geometry) {
        if let Some(s) = self.slots.get_mut(id) {
            s.geometry = Some(g);
        }
    }

    /// Hands volume `name` to `port`: its id and geometry.
    pub fn claim(&mut self, name: &str, port: usize) -> Result<(usize, Geometry), ClaimError> {
        let (id, s) = self
            .slots
            .iter_mut()
            .enumerate()
            .find(|(_, s)| s.spec.name == name)
            .ok_or(ClaimError::Unknown)?;
        if s.user.is_some_and(|u| u != port) {
            return Err(ClaimError::InUse);
        }
        let g = s.geometry.ok_or(ClaimError::NotReady)?;
        s.user = Some(port);
        Ok((id, g))
    }

    /// Gives back whatever `port` used.
    pub fn release(&mut self, port: usize) {
        for s in &mut self.slots {
            if s.user == Some(port) {
                s.user = None;
            }
        }
    }

    /// The `ICONNECT-VOLUME` marker line of volume `id`.
    pub fn marker(&self, id: usize) -> String {
        let Some(s) = self.slots.get(id) else {
            return String::new();
        };
        let mut line = format!("ICONNECT-VOLUME {} ", s.spec.name);
        match &s.spec.backing {
            Backing::Local(sl) => line.push_str(&format!("local offset={} len={}", sl.offset, sl.len)),
            Backing::Nbd { addr, port, export } => line.push_str(&format!(
                "nbd server={}.{}.{}.{}:{port} export={export}",
                addr[0], addr[1], addr[2], addr[3]
            )),
        }
        line.push_str(&format!(" sector_size={} ro={}", s.spec.sector_size, u8::from(s.spec.read_only)));
        match s.geometry {
            Some(g) => line.push_str(&format!(" size={} flush={} discard={}", g.size, u8::from(g.flush), u8::from(g.discard))),
            None => line.push_str(" state=connecting"),
        }
        line
    }
}

/// A port state change, for the console markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortEvent {
    /// A guest is connected to volume `volume` (id `id`).
    Up {
        /// Port number (1..=N, PCI order of the ivshmem devices).
        port: usize,
        /// Volume name.
        volume: String,
        /// Volume id in the [`Registry`].
        id: usize,
        /// What the guest sees.
        geometry: Geometry,
    },
    /// The guest is gone (or was refused).
    Down {
        /// Port number.
        port: usize,
        /// Why.
        reason: String,
    },
}

impl PortEvent {
    /// The `ICONNECT-PORT` marker line; `backing` says where the volume lives (`local`/`nbd`).
    pub fn marker(&self, backing: &str) -> String {
        match self {
            PortEvent::Up { port, volume, geometry: g, .. } => format!(
                "ICONNECT-PORT {port} up volume={volume} backing={backing} sectors={} sector_size={} durable_flush={} ro={}",
                g.sectors(),
                g.sector_size,
                u8::from(g.flush),
                u8::from(g.read_only)
            ),
            PortEvent::Down { port, reason } => format!("ICONNECT-PORT {port} down reason={reason}"),
        }
    }
}

struct Attached<M: SharedMem + Clone> {
    engine: Blkback<Window<M>>,
    data: DataArea<M>,
    volume: usize,
}

/// Requests taken off a guest's ring per [`BlkPort::serve`].
pub const SERVE_BUDGET: usize = 32;

/// One guest channel (see the [crate documentation](crate)).
pub struct BlkPort<M: SharedMem + Clone> {
    port: usize,
    own_id: u16,
    be: Backend<M>,
    peer: Option<u16>,
    /// A connection waits for its (remote) volume to become ready.
    waiting: bool,
    attached: Option<Attached<M>>,
    down_reason: Option<String>,
    /// The engine broke: detach at the next poll (not only at the guest's `Disconnect`: a
    /// hostile guest need not close its end).
    broken: bool,
    /// The guest's promised heartbeat period (ns), the last value seen and when it changed.
    heartbeat: Option<Liveness>,
    kick: bool,
}

impl<M: SharedMem + Clone> BlkPort<M> {
    /// Starts serving the channel in `mem` as `port`; `own_id` is this domain's doorbell
    /// address on it.
    pub fn new(port: usize, mem: M, own_id: u16) -> Result<Self, iconnect_channel::Error> {
        let mut keys = KeyMap::new();
        keys.insert(PEER_KEY, &own_id.to_string())?;
        keys.insert(HEARTBEAT_KEY, &OWN_HEARTBEAT_MS.to_string())?;
        let be = Backend::new(mem, keys)?;
        Ok(Self {
            port,
            own_id,
            be,
            peer: None,
            waiting: false,
            attached: None,
            down_reason: None,
            broken: false,
            heartbeat: None,
            kick: true,
        })
    }

    /// The port number.
    pub fn port(&self) -> usize {
        self.port
    }

    /// The guest's doorbell address (known once it connected).
    pub fn peer(&self) -> Option<u16> {
        self.peer
    }

    /// The volume id this port serves, while attached.
    pub fn volume(&self) -> Option<usize> {
        self.attached.as_ref().map(|a| a.volume)
    }

    /// Whether a guest is attached, or one waits for its volume (handshake polling needed
    /// otherwise).
    pub fn busy_handshake(&self) -> bool {
        self.attached.is_none()
    }

    /// Whether the guest must be rung (state or keys changed, or responses published).
    /// Clears the flag.
    pub fn take_kick(&mut self) -> bool {
        core::mem::take(&mut self.kick)
    }

    /// Bumps our heartbeat (call at least every [`OWN_HEARTBEAT_MS`]).
    pub fn beat(&mut self) {
        self.be.beat();
    }

    /// Checks an attached guest's heartbeat (if it promised one): a guest silent for
    /// [`HEARTBEAT_MISSES`] periods is failed with `heartbeat-timeout` (the `Down` event
    /// follows at the next [`poll`](Self::poll)).
    pub fn check_liveness(&mut self, now_ns: u64) {
        let hb = self.be.peer_heartbeat();
        let Some(live) = self.heartbeat.as_mut().filter(|_| self.attached.is_some()) else {
            return;
        };
        if !live.observe(hb, now_ns) {
            self.heartbeat = None;
            self.down_reason = Some("heartbeat-timeout".into());
            self.be.fail();
            self.broken = true;
            self.kick = true;
        }
    }

    /// Runs the handshake (attach at connect, detach at disconnect), pushing events; `now_ns`
    /// starts a promised heartbeat's clock.
    pub fn poll(&mut self, reg: &mut Registry, events: &mut Vec<PortEvent>, now_ns: u64) {
        while let Some(ev) = self.be.poll() {
            match ev {
                BackendEvent::Connect => {
                    self.waiting = true;
                }
                BackendEvent::Failed(e) => {
                    self.down_reason.get_or_insert(format!("channel-error:{e}"));
                    if self.attached.is_none() {
                        self.waiting = false;
                        let reason = self.down_reason.take().unwrap_or_default();
                        events.push(PortEvent::Down { port: self.port, reason });
                    }
                }
                BackendEvent::Disconnect | BackendEvent::Removed => self.detach(reg, events),
            }
        }
        if core::mem::take(&mut self.broken) {
            self.detach(reg, events);
        }
        if self.waiting {
            self.connect(reg, events, now_ns);
        }
        if self.be.take_notify() {
            self.kick = true;
        }
    }

    fn detach(&mut self, reg: &mut Registry, events: &mut Vec<PortEvent>) {
        self.waiting = false;
        self.heartbeat = None;
        let reason = self.down_reason.take().unwrap_or_else(|| "disconnected".into());
        if self.attached.take().is_some() {
            reg.release(self.port);
            events.push(PortEvent::Down { port: self.port, reason });
        }
    }

    fn refuse(&mut self, reason: String, events: &mut Vec<PortEvent>) {
        self.waiting = false;
        let _ = self.be.keys_mut().insert(ERROR_KEY, &reason);
        self.be.publish_keys();
        self.be.refuse();
        self.kick = true;
        events.push(PortEvent::Down { port: self.port, reason });
    }

    fn connect(&mut self, reg: &mut Registry, events: &mut Vec<PortEvent>, now_ns: u64) {
        if self.attached.is_some() {
            self.waiting = false;
            return;
        }
        let fk = self.be.frontend_keys();
        let peer = match fk.get(PEER_KEY).map(str::parse::<u16>) {
            Some(Ok(p)) if p != self.own_id => p,
            _ => return self.refuse("no-peer-id".into(), events),
        };
        let heartbeat = match Liveness::from_keys(fk, self.be.peer_heartbeat(), now_ns) {
            Ok(h) => h,
            Err(_) => return self.refuse(format!("bad-key:{HEARTBEAT_KEY}"), events),
        };
        let req = match StorageRequest::from_keys(fk) {
            Ok(Some(r)) => r,
            Ok(None) => return self.refuse("no-volume-key".into(), events),
            Err(e) => return self.refuse(format!("bad-key:{e}").replace(' ', "_"), events),
        };
        let (id, g) = match reg.claim(req.volume.as_str(), self.port) {
            Ok(v) => v,
            Err(ClaimError::NotReady) => return, // asked again at the next poll
            Err(ClaimError::Unknown) => return self.refuse("unknown-volume".into(), events),
            Err(ClaimError::InUse) => return self.refuse("volume-in-use".into(), events),
        };
        self.peer = Some(peer);
        let layout = (self.be.ring_window::<BlkRing>(0), self.be.data_area());
        let (Ok(ring), Ok(data)) = layout else {
            reg.release(self.port);
            return self.refuse("bad-layout".into(), events);
        };
        let Ok(engine) = Blkback::new(ring, g, ENGINE) else {
            reg.release(self.port);
            return self.refuse("bad-layout".into(), events);
        };
        let keys = self.be.keys_mut();
        keys.remove(ERROR_KEY);
        let answered = negotiate::advertise(&g, &ENGINE, 0, keys).is_ok()
            && iconnect::storage::write_decision(&Decision::Granted(StorageGrant { durable_flush: g.flush }), keys).is_ok();
        if !answered {
            reg.release(self.port);
            return self.refuse("keys-overflow".into(), events);
        }
        self.be.publish_keys();
        self.be.accept();
        self.waiting = false;
        self.kick = true;
        self.attached = Some(Attached { engine, data, volume: id });
        self.heartbeat = heartbeat;
        events.push(PortEvent::Up {
            port: self.port,
            volume: req.volume.as_str().into(),
            id,
            geometry: g,
        });
    }

    /// Answers what `volume` completed (no new requests taken) and publishes the responses:
    /// called before [`serve`](Self::serve), so the guest can be rung and start on them
    /// while this domain takes its next requests. Whether the guest must be notified now (the
    /// flag is left for [`take_kick`](Self::take_kick)).
    pub fn answer(&mut self, now_us: u64, volume: &mut dyn Volume) -> bool {
        let Some(a) = self.attached.as_mut().filter(|_| self.down_reason.is_none()) else {
            return false;
        };
        match a.engine.poll(now_us, &mut a.data, volume, 0) {
            Ok(p) => {
                self.kick |= p.notify;
                p.notify
            }
            Err(e) => {
                self.engine_failed(e);
                false
            }
        }
    }

    /// Serves the guest's ring against `volume` (the volume this port was given): answers
    /// completions, takes new requests. A broken ring fails the channel (`blkback:<error>`).
    /// Returns `(requests taken, call again now)`: requests left on the ring, or the engine
    /// stopped at its budget before re-arming the ring's request event.
    pub fn serve(&mut self, now_us: u64, volume: &mut dyn Volume) -> (usize, bool) {
        let Some(a) = self.attached.as_mut().filter(|_| self.down_reason.is_none()) else {
            return (0, false);
        };
        match a.engine.poll(now_us, &mut a.data, volume, SERVE_BUDGET) {
            Ok(p) => {
                if p.notify {
                    self.kick = true;
                }
                // The engine re-arms the ring's request event only when it finds the ring
                // empty: after stopping at a limit, it must be polled again (else a guest
                // refilling the ring would not ring the doorbell).
                (p.requests, p.more || p.requests >= SERVE_BUDGET)
            }
            Err(e) => {
                self.engine_failed(e);
                (0, false)
            }
        }
    }

    /// The engine broke (a hostile ring): fail the channel, detach at the next poll.
    fn engine_failed(&mut self, e: blkback::Error) {
        self.down_reason = Some(format!("blkback:{e}").replace(' ', "_"));
        self.be.fail();
        self.broken = true;
        self.kick = true;
    }

    /// Whether serving re-arms the ring's request event when it finds the ring empty
    /// (`blkback::Blkback::set_rearm`): off while the owner busy-polls, so the guest rings no
    /// doorbell meanwhile; on for the poll before sleeping.
    pub fn set_rearm(&mut self, rearm: bool) {
        if let Some(a) = self.attached.as_mut() {
            a.engine.set_rearm(rearm);
        }
    }

    /// Requests being served (taken off the ring, not answered).
    pub fn in_flight(&self) -> usize {
        self.attached.as_ref().map_or(0, |a| a.engine.in_flight())
    }

    /// The engine's counters, while attached.
    pub fn stats(&self) -> Option<blkback::Stats> {
        self.attached.as_ref().map(|a| *a.engine.stats())
    }
}
