//! # media-dd: the multimedia driver domain (host-tested logic)
//!
//! The image (`src/main.rs`, target only) owns QEMU's `virtio-sound-pci` device (through
//! `hal::virtio_sound`), opens its output once at the native shape ([`DEVICE`]: 48 kHz, s16,
//! stereo), prepares its input at the same shape and captures while at least one guest's
//! capture stream runs (one device stream fanned out to every capture guest in its own
//! format, rate and channels), and serves one guest per ivshmem-doorbell device. This library
//! is everything in it that does not touch hardware, with no `unsafe`:
//!
//! * [`MediaPort`] — one guest channel: the sound-style iConnect handshake (the guest states
//!   its stream with `iconnect::media` keys, answered with `sndback::negotiate::decide`), one
//!   `sndback::Sndback` over ring 0 with the channel's data area as grant table, and
//!   `ICONNECT-PORT` events.
//! * [`channel`] — the layout and keys both ends use (the guest image `snd-guest` too).
//!
//! Contract (team brief, "sndif over an iConnect channel"): style Block; ring 0 = the sndif
//! request ring of the channel's one stream (64-byte slots, one page, doorbell vector 0);
//! the stream's sndif event page is a data page the frontend names with `evt-ring-ref`;
//! OPEN's page directory and buffer pages are data pages (page numbers as grant
//! references, checked by `DataArea`). The domain rings vector 0 for responses, vector 1 for
//! `CUR_POS` events. A connection it cannot serve is refused with
//! `iconnect-snd-error = <reason>` (`no-peer-id`, `no-media-key`, `bad-key:<key>`,
//! `no-event-page`, `refused:<reason>`, `bad-layout`); a hostile ring breaks only its own
//! port (`down reason=sndback:<error>`). Liveness as on net and block channels
//! (`heartbeat-ms`, [`channel::HEARTBEAT_KEY`]): a guest that promised a heartbeat and falls
//! silent is taken down (`heartbeat-timeout`).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use iconnect::Decision;
use iconnect::media::{MediaGrant, MediaRequest};
use iconnect_channel::{Backend, BackendEvent, DataArea, KeyMap, Liveness, Window};
use media_dsp::{DuckConfig, SampleFormat};
use sndback::{Caps, DeviceConfig, Hub, Sndback};
use xen_abi::PAGE_SIZE;
use xen_abi::shmem::SharedMem;
use xen_abi::sndif::SndRing;

/// The channel layout and keys of the sound contract (shared with the guest image).
pub mod channel {
    use alloc::vec;

    use iconnect_channel::{FrontendConfig, RingSpec};
    use xen_abi::sndif::MSG_SIZE;
    use xen_abi::xenbus::FrontendStyle;

    /// Key carrying each end's ivshmem peer id (its doorbell address).
    pub const PEER_KEY: &str = "ivshmem-peer";
    /// Frontend key: data page number of the stream's sndif event page.
    pub const EVENT_PAGE_KEY: &str = "evt-ring-ref";
    /// Backend key naming why a connection was refused.
    pub const ERROR_KEY: &str = "iconnect-snd-error";
    /// Ring index of the request ring.
    pub const RING: usize = 0;
    /// Doorbell vector: requests (guest to domain) and responses (domain to guest).
    pub const VECTOR_RING: u16 = 0;
    /// Doorbell vector: events (domain to guest).
    pub const VECTOR_EVENTS: u16 = 1;
    /// Liveness, as on net and block channels: `heartbeat-ms = <1..=60000>` promises a channel
    /// heartbeat at least that often; media-dd publishes its own and takes a guest that promised
    /// one and stays silent for [`HEARTBEAT_MISSES`] periods down (`heartbeat-timeout`), so a VM
    /// killed without closing frees its port and leaves the mix.
    pub use iconnect_channel::liveness::{HEARTBEAT_KEY, HEARTBEAT_MISSES};
    /// media-dd's own heartbeat period.
    pub const OWN_HEARTBEAT_MS: u64 = 100;

    /// The layout a sound frontend asks for: style Block, ring 0 of 64-byte sndif slots (one
    /// page, vector 0), the rest of the region as data pages.
    pub fn frontend_config() -> FrontendConfig {
        FrontendConfig {
            style: FrontendStyle::Block,
            rings: vec![RingSpec {
                page_order: 0,
                slot_bytes: MSG_SIZE as u32,
                vector: u32::from(VECTOR_RING),
            }],
            data_pages: None,
        }
    }
}

use channel::{ERROR_KEY, EVENT_PAGE_KEY, HEARTBEAT_KEY, OWN_HEARTBEAT_MS, PEER_KEY};

/// The device's native shape (media-dd opens the device once with it).
pub const DEVICE: DeviceConfig = DeviceConfig {
    format: SampleFormat::S16Le,
    rate: 48000,
    channels: 2,
};

/// Ducking of lower-priority streams while a higher one plays: 12 dB, 20 ms attack, 300 ms
/// release, 150 ms hold.
pub fn duck() -> DuckConfig {
    DuckConfig::default()
}

/// The platform's controls over guests' playback (media-dd's command line): `caps=<port>:<dB>,...`
/// caps a port's stream gain at that many dB (<= 0; the guest's own volume cannot exceed it),
/// `mute=<port>,...` mutes ports whatever the guest asks, `duck_db=<0..=60>` sets how far a
/// higher-priority stream lowers the others (default [`duck`]'s 12 dB).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    caps: Vec<(usize, f32)>,
    muted: Vec<usize>,
    duck_db: Option<f32>,
}

impl Policy {
    /// Parses `caps=` and `mute=` from a command line (absent: no controls).
    pub fn from_cmdline(cmdline: &str) -> Result<Self, String> {
        let get = |k: &str| cmdline.split_ascii_whitespace().find_map(|t| t.strip_prefix(k).and_then(|r| r.strip_prefix('=')));
        let port = |v: &str| v.parse::<usize>().ok().filter(|p| (1..=64).contains(p));
        let mut p = Policy::default();
        for item in get("caps").unwrap_or("").split(',').filter(|i| !i.is_empty()) {
            let cap = item
                .split_once(':')
                .and_then(|(a, b)| Some((port(a)?, b.parse::<i32>().ok().filter(|d| (-120..=0).contains(d))?)))
                .ok_or_else(|| format!("caps={item}: want <port 1..64>:<dB -120..0>"))?;
            p.caps.push((cap.0, cap.1 as f32));
        }
        for item in get("mute").unwrap_or("").split(',').filter(|i| !i.is_empty()) {
            p.muted.push(port(item).ok_or_else(|| format!("mute={item}: want a port 1..64"))?);
        }
        if let Some(v) = get("duck_db") {
            let d = v.parse::<u8>().ok().filter(|d| *d <= 60).ok_or_else(|| format!("duck_db={v}: want 0..60"))?;
            p.duck_db = Some(f32::from(d));
        }
        Ok(p)
    }

    /// The ducking of the hub.
    pub fn duck(&self) -> DuckConfig {
        DuckConfig { depth_db: self.duck_db.unwrap_or(duck().depth_db), ..duck() }
    }

    /// The cap of `port`, dB.
    pub fn cap_db(&self, port: usize) -> Option<f32> {
        self.caps.iter().rev().find(|c| c.0 == port).map(|c| c.1)
    }

    /// Whether the platform mutes `port`.
    pub fn muted(&self, port: usize) -> bool {
        self.muted.contains(&port)
    }
}

/// A port state change, for the console markers.
#[derive(Debug, Clone, PartialEq)]
pub enum PortEvent {
    /// A guest's stream is connected.
    Up {
        /// Port number (1..=N, PCI order of the ivshmem devices).
        port: usize,
        /// What it asked for.
        request: MediaRequest,
        /// What it was granted.
        grant: MediaGrant,
        /// Mixing priority.
        priority: u8,
        /// Platform cap, dB.
        cap_db: Option<f32>,
        /// Platform mute.
        muted: bool,
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
    /// The `ICONNECT-PORT` marker line.
    pub fn marker(&self) -> String {
        match self {
            PortEvent::Up { port, request: r, grant: g, priority, cap_db, muted } => format!(
                "ICONNECT-PORT {port} up stream={} format={} rate={} channels={} role={:?} priority={priority} granted_format={} granted_rate={} granted_channels={} cap_db={} muted={}",
                r.direction.as_str(),
                r.format.as_str(),
                r.rate_hz,
                r.channels,
                r.role(),
                g.format.as_str(),
                g.rate_hz,
                g.channels,
                cap_db.map_or("none".into(), |c| format!("{c:.0}")),
                u8::from(*muted)
            ),
            PortEvent::Down { port, reason } => format!("ICONNECT-PORT {port} down reason={reason}"),
        }
    }
}

struct Attached<M: SharedMem + Clone> {
    engine: Sndback<Window<M>>,
    data: DataArea<M>,
}

/// Which doorbells the guest must get.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kick {
    /// Responses or a state/key change (vector 0).
    pub ring: bool,
    /// Events (vector 1).
    pub events: bool,
}

/// One guest channel (see the [crate documentation](crate)).
pub struct MediaPort<M: SharedMem + Clone> {
    port: usize,
    own_id: u16,
    be: Backend<M>,
    peer: Option<u16>,
    attached: Option<Attached<M>>,
    down_reason: Option<String>,
    broken: bool,
    kick: Kick,
    can_capture: bool,
    cap_db: Option<f32>,
    muted: bool,
    /// The guest's promised heartbeat: (period ns, last counter seen, when it changed).
    liveness: Option<Liveness>,
}

impl<M: SharedMem + Clone> MediaPort<M> {
    /// Starts serving the channel in `mem` as `port`; `own_id` is this domain's doorbell
    /// address on it; `can_capture`: whether the device has a capture path.
    pub fn new(port: usize, mem: M, own_id: u16, can_capture: bool) -> Result<Self, iconnect_channel::Error> {
        let mut keys = KeyMap::new();
        keys.insert(PEER_KEY, &own_id.to_string())?;
        keys.insert(HEARTBEAT_KEY, &OWN_HEARTBEAT_MS.to_string())?;
        let be = Backend::new(mem, keys)?;
        Ok(Self {
            port,
            own_id,
            be,
            peer: None,
            attached: None,
            down_reason: None,
            broken: false,
            kick: Kick { ring: true, events: false },
            can_capture,
            cap_db: None,
            muted: false,
            liveness: None,
        })
    }

    /// Bumps this domain's heartbeat (call at least every [`OWN_HEARTBEAT_MS`]) and takes an
    /// attached guest down if it promised a heartbeat and missed [`channel::HEARTBEAT_MISSES`] periods
    /// (the `Down` event follows at the next [`poll`](Self::poll)).
    pub fn heartbeat(&mut self, now_ns: u64) {
        self.be.beat();
        let seen = self.be.peer_heartbeat();
        let Some(live) = self.liveness.as_mut().filter(|_| self.attached.is_some()) else {
            return;
        };
        if !live.observe(seen, now_ns) {
            self.liveness = None;
            self.down_reason = Some("heartbeat-timeout".into());
            self.be.fail();
            self.broken = true;
            self.kick.ring = true;
        }
    }

    /// Applies the platform's controls to this port (now and to every later connection).
    pub fn set_policy(&mut self, hub: &mut Hub, policy: &Policy) {
        self.cap_db = policy.cap_db(self.port);
        self.muted = policy.muted(self.port);
        if let Some(a) = self.attached.as_mut() {
            // The cap was validated by the policy's parser: always finite.
            let _ = a.engine.set_cap_db(hub, self.cap_db);
            a.engine.set_platform_mute(hub, self.muted);
        }
    }

    /// The port number.
    pub fn port(&self) -> usize {
        self.port
    }

    /// The guest's doorbell address (known once it connected).
    pub fn peer(&self) -> Option<u16> {
        self.peer
    }

    /// Whether a guest is attached.
    pub fn is_attached(&self) -> bool {
        self.attached.is_some()
    }

    /// Doorbells owed to the guest; clears them.
    pub fn take_kick(&mut self) -> Kick {
        core::mem::take(&mut self.kick)
    }

    /// Runs the handshake (attach at connect, detach at disconnect), pushing events; `now_ns`
    /// starts a promised heartbeat's clock.
    pub fn poll(&mut self, hub: &mut Hub, events: &mut Vec<PortEvent>, now_ns: u64) {
        while let Some(ev) = self.be.poll() {
            match ev {
                BackendEvent::Connect => self.connect(hub, events, now_ns),
                BackendEvent::Failed(e) => {
                    self.down_reason.get_or_insert(format!("channel-error:{e}").replace(' ', "_"));
                    if self.attached.is_none() {
                        let reason = self.down_reason.take().unwrap_or_default();
                        events.push(PortEvent::Down { port: self.port, reason });
                    }
                }
                BackendEvent::Disconnect | BackendEvent::Removed => self.detach(hub, events),
            }
        }
        if core::mem::take(&mut self.broken) {
            self.detach(hub, events);
        }
        if self.be.take_notify() {
            self.kick.ring = true;
        }
    }

    fn detach(&mut self, hub: &mut Hub, events: &mut Vec<PortEvent>) {
        self.liveness = None;
        let reason = self.down_reason.take().unwrap_or_else(|| "disconnected".into());
        if let Some(mut a) = self.attached.take() {
            a.engine.shutdown(hub);
            events.push(PortEvent::Down { port: self.port, reason });
        }
    }

    fn refuse(&mut self, reason: String, events: &mut Vec<PortEvent>) {
        let _ = self.be.keys_mut().insert(ERROR_KEY, &reason);
        self.be.publish_keys();
        self.be.refuse();
        self.kick.ring = true;
        events.push(PortEvent::Down { port: self.port, reason });
    }

    fn connect(&mut self, hub: &mut Hub, events: &mut Vec<PortEvent>, now_ns: u64) {
        if let Some(mut a) = self.attached.take() {
            a.engine.shutdown(hub);
        }
        let fk = self.be.frontend_keys();
        let peer = match fk.get(PEER_KEY).map(str::parse::<u16>) {
            Some(Ok(p)) if p != self.own_id => p,
            _ => return self.refuse("no-peer-id".into(), events),
        };
        let req = match MediaRequest::from_keys(fk) {
            Ok(Some(r)) => r,
            Ok(None) => return self.refuse("no-media-key".into(), events),
            Err(e) => return self.refuse(format!("bad-key:{e}").replace(' ', "_"), events),
        };
        let evt_page = fk.get(EVENT_PAGE_KEY).map(str::parse::<u32>);
        let heartbeat = match Liveness::from_keys(fk, self.be.peer_heartbeat(), now_ns) {
            Ok(h) => h,
            Err(_) => return self.refuse(format!("bad-key:{HEARTBEAT_KEY}"), events),
        };
        let caps = Caps::default();
        let decision = sndback::negotiate::decide(&req, &caps, self.can_capture);
        let grant = match decision {
            Decision::Granted(g) => g,
            Decision::Refused { reason, .. } => {
                let _ = iconnect::media::write_decision(&decision, self.be.keys_mut());
                return self.refuse(format!("refused:{reason:?}"), events);
            }
        };
        let Some(layout) = self.be.layout().cloned() else {
            return self.refuse("bad-layout".into(), events);
        };
        let evt = match evt_page {
            Some(Ok(p)) if p < layout.data_pages => {
                Window::new(self.be.mem().clone(), layout.data_offset() + p as usize * PAGE_SIZE, PAGE_SIZE)
            }
            _ => return self.refuse("no-event-page".into(), events),
        };
        let (Ok(ring), Ok(data), Ok(evt)) = (self.be.ring_window::<SndRing>(channel::RING), self.be.data_area(), evt) else {
            return self.refuse("bad-layout".into(), events);
        };
        let priority = sndback::negotiate::priority(&req);
        let mut engine = Sndback::new(caps, priority);
        if engine.add_stream(req.direction, ring, evt).is_err() {
            return self.refuse("bad-layout".into(), events);
        }
        let _ = engine.set_cap_db(hub, self.cap_db);
        engine.set_platform_mute(hub, self.muted);
        let keys = self.be.keys_mut();
        keys.remove(ERROR_KEY);
        if iconnect::media::write_decision(&decision, keys).is_err() {
            return self.refuse("keys-overflow".into(), events);
        }
        self.be.publish_keys();
        self.be.accept();
        self.peer = Some(peer);
        self.kick.ring = true;
        self.attached = Some(Attached { engine, data });
        self.liveness = heartbeat;
        events.push(PortEvent::Up { port: self.port, request: req, grant, priority, cap_db: self.cap_db, muted: self.muted });
    }

    /// Serves the guest's requests and sends its position events. A broken ring fails the
    /// channel (`sndback:<error>`). Returns whether to call again at once.
    pub fn serve(&mut self, hub: &mut Hub) -> bool {
        let Some(a) = self.attached.as_mut().filter(|_| self.down_reason.is_none()) else {
            return false;
        };
        match a.engine.poll(&mut a.data, hub) {
            Ok(p) => {
                self.kick.ring |= p.notify != 0;
                self.kick.events |= p.notify_events != 0;
                p.more
            }
            Err(e) => {
                self.down_reason = Some(format!("sndback:{e}").replace(' ', "_"));
                self.be.fail();
                self.broken = true;
                self.kick.ring = true;
                false
            }
        }
    }

    /// RMS level (full scale = 1.0) of this guest's playback in the last mixed block, after
    /// gains and ducking; `None` without an open playback stream.
    pub fn level(&self, hub: &Hub) -> Option<f32> {
        let id = self.attached.as_ref()?.engine.mixer_stream(0)?;
        hub.mixer().stream_stats(id).ok().map(|s| s.level_rms)
    }

    /// Device frames this guest's playback had no data for while running (underruns).
    pub fn underrun_frames(&self, hub: &Hub) -> u64 {
        self.attached
            .as_ref()
            .and_then(|a| a.engine.mixer_stream(0))
            .and_then(|id| hub.mixer().stream_stats(id).ok())
            .map_or(0, |s| s.underrun)
    }

    /// This guest's capture stream, while open: the fan-out's counters (frames produced at
    /// the guest's rate, read, lost to a full queue) and the frames it read before they were
    /// captured (given silence).
    pub fn capture_stats(&self, hub: &Hub) -> Option<(media_dsp::ConsumerStats, u64)> {
        let a = self.attached.as_ref()?;
        let id = a.engine.capture_consumer(0)?;
        let s = hub.fanout().stats(id).ok()?;
        Some((s, a.engine.stats().read_underrun_frames))
    }

    /// The engine's counters, while attached.
    pub fn stats(&self) -> Option<sndback::Stats> {
        self.attached.as_ref().map(|a| a.engine.stats())
    }
}

/// dBFS of an RMS level (full-scale sine = -3.01 dBFS), floored at -150.
pub fn dbfs(rms: f32) -> f32 {
    if rms <= 1e-8 { -150.0 } else { 20.0 * libm::log10f(rms) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_from_the_command_line() {
        let p = Policy::from_cmdline("x=1 caps=2:-6,3:-20 mute=4,1").unwrap();
        assert_eq!((p.cap_db(2), p.cap_db(3), p.cap_db(1)), (Some(-6.0), Some(-20.0), None));
        assert!(p.muted(4) && p.muted(1) && !p.muted(2));
        assert_eq!(Policy::from_cmdline("").unwrap(), Policy::default());
        assert_eq!(Policy::from_cmdline("").unwrap().duck(), duck());
        assert_eq!(Policy::from_cmdline("duck_db=20").unwrap().duck().depth_db, 20.0);
        for bad in ["caps=2:+6", "caps=0:-6", "caps=2", "caps=2:x", "mute=65", "mute=a", "duck_db=61", "duck_db=-3"] {
            assert!(Policy::from_cmdline(bad).is_err(), "{bad}");
        }
    }
}
