//! The uplink on Xen without Xen: net-dd's own netfront (its `vif` in the xl config, served by
//! a netback on a dom0 bridge), driven by the platform-independent `netfront` engine. The
//! xenbus handshake is xen-abi's [`FrontendFsm`] (net style); xenstore is any [`StoreAccess`];
//! what needs the hypervisor (granting our ring and buffer pages to the backend, event
//! channels) is a [`FrontPlatform`]. The image implements it with grant-table entries and
//! hypercalls (`src/xen/uplink.rs`); host tests run it against net-dd's own vif backend
//! ([`crate::vifctl`]) over an in-memory xenstore.
//!
//! The backend is untrusted like a guest: its state values are parsed strictly, its ring
//! indices and responses are checked by the engine (a fatal error tears the uplink down until
//! the backend starts over).
//!
//! Markers: `ICONNECT-UPLINK up backend=<path> mac=<mac>`, `ICONNECT-UPLINK down reason=<why>`.

use alloc::format;
use alloc::string::{String, ToString};
use core::fmt::Debug;

use netfront::{Buffers, Config, Netfront};
use xen_abi::GrantRef;
use xen_abi::netif::{RxRing, TxRing};
use xen_abi::ring::FrontRing;
use xen_abi::shmem::SharedMem;
use xen_abi::xenbus::{FrontendFsm, FrontendInput, FrontendOutput, FrontendStyle, XenbusState};

use crate::vifctl::StoreAccess;

/// Watch token of the backend's state node.
pub const TOKEN: &str = "uplink";
/// Buffer pages for each direction.
pub const BUFFERS: u32 = 64;
/// Grant reference of the TX ring page; the RX ring's is the next one, buffers follow
/// (0-7 are reserved by convention).
pub const FIRST_REF: GrantRef = 8;

/// What the uplink needs from the hypervisor.
pub trait FrontPlatform {
    /// One of our pages, granted to the backend.
    type Page: SharedMem;
    /// Buffer pages granted to the backend (the engine's [`Buffers`]).
    type Buffers: Buffers;
    /// A local event-channel port.
    type Port: Copy + Debug;
    /// What granting or allocating can fail with (logged).
    type Error: Debug;
    /// A zeroed page of ours granted read-write to domain `backend` as `gref`.
    fn grant_page(&mut self, backend: u16, gref: GrantRef) -> Result<Self::Page, Self::Error>;
    /// Buffer pages granted to `backend`, with references from `first_ref` up.
    fn buffers(&mut self, backend: u16, first_ref: GrantRef) -> Result<Self::Buffers, Self::Error>;
    /// An unbound port domain `backend` may bind; returns it and its number for xenstore.
    fn alloc_unbound(&mut self, backend: u16) -> Result<(Self::Port, u32), Self::Error>;
    /// Closes a port.
    fn close(&mut self, port: Self::Port);
    /// Notifies the backend.
    fn notify(&mut self, port: Self::Port);
    /// Whether `port` fired since the last call (and clears it).
    fn take_event(&mut self, port: Self::Port) -> bool;
}

/// net-dd's own vif towards dom0.
pub struct Uplink<P: FrontPlatform> {
    /// Pages and event channels.
    pub platform: P,
    fe: String,
    be: String,
    be_id: u16,
    fsm: FrontendFsm,
    nf: Option<Netfront<P::Page, P::Buffers>>,
    port: Option<P::Port>,
    /// Buffer pages of an earlier connection (they stay granted: reused, never freed).
    buffers: Option<P::Buffers>,
    /// The MAC xl gave this vif.
    pub mac: Option<netswitch::Mac>,
    connected: bool,
    notifies: u64,
    /// Events from the backend taken.
    fired: u64,
}

/// A strictly parsed domain id (plain decimal, no sign, no leading zero).
fn parse_domid(s: &str) -> Option<u16> {
    crate::vifctl::parse_id(s).and_then(|v| u16::try_from(v).ok())
}

impl<P: FrontPlatform> Uplink<P> {
    /// The uplink of device `vif/0` of domain `domid`, if the xl config gave it one; watches
    /// the backend's state (the watch fires once at once and starts the handshake).
    pub fn find<S: StoreAccess>(platform: P, store: &mut S, domid: u16) -> Result<Option<Self>, S::Error> {
        let fe = format!("/local/domain/{domid}/device/vif/0");
        let (Some(be), Some(be_id)) = (store.read(&format!("{fe}/backend"))?, store.read(&format!("{fe}/backend-id"))?)
        else {
            return Ok(None);
        };
        let Some(be_id) = parse_domid(&be_id) else { return Ok(None) };
        if !be.starts_with('/') || be.contains("//") {
            return Ok(None);
        }
        let mac = store.read(&format!("{fe}/mac"))?.as_deref().and_then(netswitch::Mac::parse);
        store.watch(&format!("{be}/state"), TOKEN)?;
        Ok(Some(Uplink {
            platform,
            fe,
            be,
            be_id,
            fsm: FrontendFsm::new(FrontendStyle::Net),
            nf: None,
            port: None,
            buffers: None,
            mac,
            connected: false,
            notifies: 0,
            fired: 0,
        }))
    }

    /// Whether the backend connected and frames flow.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The backend directory.
    pub fn backend(&self) -> &str {
        &self.be
    }

    /// The backend's state may have changed (a watch with [`TOKEN`] fired).
    pub fn on_watch<S: StoreAccess>(&mut self, store: &mut S) {
        let state = match store.read(&format!("{}/state", self.be)) {
            Ok(None) => XenbusState::Unknown,
            Ok(Some(s)) => match XenbusState::parse(&s) {
                Ok(s) => s,
                Err(_) => {
                    log::warn!("uplink: backend state {s:?} invalid; ignored");
                    return;
                }
            },
            Err(_) => return,
        };
        let out = self.fsm.on_input(FrontendInput::BackendState(state));
        self.apply(store, out);
    }

    fn apply<S: StoreAccess>(&mut self, store: &mut S, out: FrontendOutput) {
        if out.teardown {
            self.teardown("backend closed");
        }
        let mut next = None;
        if out.setup {
            let ok = match self.setup(store) {
                Ok(()) => true,
                Err(e) => {
                    log::warn!("ICONNECT-UPLINK down reason=setup: {e}");
                    false
                }
            };
            next = Some(self.fsm.on_input(FrontendInput::SetupDone { ok }));
        }
        if let Some(s) = out.write_state {
            let _ = store.write(&format!("{}/state", self.fe), s.as_str());
        }
        if out.ready && !self.connected && self.nf.is_some() {
            self.connected = true;
            log::info!(
                "ICONNECT-UPLINK up backend={} mac={}",
                self.be,
                self.mac.map_or(String::from("?"), |m| m.to_string())
            );
        }
        if let Some(n) = next {
            self.apply(store, n);
        }
    }

    /// Grants fresh ring pages (the old ones may still be mapped by the backend), allocates the
    /// event channel, starts the engine and writes the keys Linux netfront writes.
    fn setup<S: StoreAccess>(&mut self, store: &mut S) -> Result<(), String> {
        let tx_mem = self.platform.grant_page(self.be_id, FIRST_REF).map_err(|e| format!("tx ring page: {e:?}"))?;
        let rx_mem = self.platform.grant_page(self.be_id, FIRST_REF + 1).map_err(|e| format!("rx ring page: {e:?}"))?;
        let tx = FrontRing::<_, TxRing>::init(tx_mem).map_err(|e| format!("tx ring: {e}"))?;
        let rx = FrontRing::<_, RxRing>::init(rx_mem).map_err(|e| format!("rx ring: {e}"))?;
        let bufs = match self.buffers.take() {
            Some(b) => b,
            None => self.platform.buffers(self.be_id, FIRST_REF + 2).map_err(|e| format!("buffers: {e:?}"))?,
        };
        let (port, number) = match self.platform.alloc_unbound(self.be_id) {
            Ok(p) => p,
            Err(e) => {
                self.buffers = Some(bufs);
                return Err(format!("event channel: {e:?}"));
            }
        };
        let nf = Netfront::new(tx, rx, bufs, Config { sg: false, tx_buffers: BUFFERS, rx_buffers: BUFFERS });
        // Kept before the keys are written, so a failure below tears them down.
        self.nf = Some(nf);
        self.port = Some(port);
        let fe = self.fe.clone();
        let keys: [(&str, String); 7] = [
            ("tx-ring-ref", format!("{FIRST_REF}")),
            ("rx-ring-ref", format!("{}", FIRST_REF + 1)),
            ("event-channel", format!("{number}")),
            ("request-rx-copy", "1".into()),
            ("feature-rx-notify", "1".into()),
            ("feature-sg", "0".into()),
            // Checksums complete in both directions: the switch hands frames on as they are.
            ("feature-no-csum-offload", "1".into()),
        ];
        for (k, v) in keys {
            store.write(&format!("{fe}/{k}"), &v).map_err(|e| format!("writing {k}: {e:?}"))?;
        }
        Ok(())
    }

    fn teardown(&mut self, reason: &str) {
        if let Some(p) = self.port.take() {
            self.platform.close(p);
        }
        if let Some(nf) = self.nf.take() {
            // The buffer pages stay granted: the backend may still copy into them.
            self.buffers = Some(nf.into_buffers());
        }
        if self.connected {
            self.connected = false;
            log::info!("ICONNECT-UPLINK down reason={reason}");
        }
    }

    /// Whether a frame of `len` bytes can be taken now (while not connected, frames are taken
    /// and dropped: a missing uplink never holds up the guests' traffic).
    pub fn ready(&self, len: usize) -> bool {
        !self.connected || self.nf.as_ref().is_none_or(|n| n.can_send(len))
    }

    /// Sends a frame; `false` if it was dropped.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        if !self.connected {
            return false;
        }
        self.nf.as_mut().is_some_and(|n| n.send(frame).is_ok())
    }

    /// Takes the backend's responses and received frames (each handed to `deliver`), rings
    /// the backend when the engine says so. Returns whether more work waits.
    pub fn poll(&mut self, mut deliver: impl FnMut(&[u8])) -> bool {
        let (Some(nf), Some(port)) = (self.nf.as_mut(), self.port) else { return false };
        if self.platform.take_event(port) {
            self.fired += 1;
        }
        let mut more = false;
        let mut broken = None;
        if let Err(e) = nf.poll() {
            broken = Some(e);
        }
        for _ in 0..64 {
            match nf.recv() {
                Ok(Some(f)) => {
                    deliver(&f.data);
                    nf.recycle(f.data);
                }
                Ok(None) => break,
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            }
        }
        if broken.is_none() {
            match nf.idle() {
                Ok(idle) => more = !idle,
                Err(e) => broken = Some(e),
            }
        }
        if nf.take_notify().any() {
            self.notifies += 1;
            self.platform.notify(port);
        }
        if let Some(e) = broken {
            log::warn!("uplink: backend broke the protocol: {e:?}");
            self.teardown("protocol-error");
        }
        more
    }

    /// Counters for the loop's statistics line.
    pub fn stats(&self) -> String {
        match &self.nf {
            Some(n) => {
                let s = n.stats();
                format!(
                    "; uplink connected={} tx={} rx={} notifies={} events={} tx_posted={} rx_posted={}",
                    self.connected,
                    s.tx_packets,
                    s.rx_packets,
                    self.notifies,
                    self.fired,
                    n.tx_in_flight(),
                    n.rx_posted()
                )
            }
            None => format!("; uplink connected={} (no rings)", self.connected),
        }
    }

    /// Rings the backend if sends since the last poll asked for it.
    pub fn kick(&mut self) {
        if let (Some(nf), Some(port)) = (self.nf.as_mut(), self.port)
            && nf.take_notify().any()
        {
            self.notifies += 1;
            self.platform.notify(port);
        }
    }
}
