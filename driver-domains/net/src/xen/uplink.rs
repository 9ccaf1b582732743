//! The uplink on Xen: a netfront of net-dd's own (its `vif` in the xl config, backed by dom0's
//! netback on a bridge), driven by the platform-independent `netfront` engine. Rings and
//! buffers are pages of our RAM granted to the backend domain; the xenbus handshake is
//! xen-abi's `FrontendFsm` (net style).
//!
//! The backend is untrusted like a guest: its state values are parsed strictly, its ring
//! indices and responses are checked by the engine (a fatal error tears the uplink down).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use netfront::{Buffers, Config, Netfront};
use xen_abi::GrantRef;
use xen_abi::netif::{RxRing, TxRing};
use xen_abi::ring::FrontRing;
use xen_abi::shmem::SharedMem;
use xen_abi::xenbus::{FrontendFsm, FrontendInput, FrontendOutput, FrontendStyle, XenbusState};
use xen_domain::{DomainError, Events, Port, Store, Xen};
use xen_domain::{ForeignMem, GrantTableV1};

/// Watch token of the backend's directory.
pub const TOKEN: &str = "uplink";
/// Buffer pages for each direction.
const BUFFERS: u32 = 64;
/// First grant reference the uplink uses (0-7 are reserved).
const FIRST_REF: GrantRef = 8;

/// Buffer pages granted to the backend (allocated on first use, never freed).
pub struct XenBuffers {
    table: &'static GrantTableV1,
    backend: u16,
    pages: Vec<ForeignMem>,
    free: Vec<GrantRef>,
    next_ref: GrantRef,
}

impl XenBuffers {
    fn page(&self, r: GrantRef) -> Option<&ForeignMem> {
        self.pages.get(r.checked_sub(self.first_ref())? as usize)
    }

    fn first_ref(&self) -> GrantRef {
        FIRST_REF + 2
    }
}

impl Buffers for XenBuffers {
    fn alloc(&mut self) -> Option<GrantRef> {
        if let Some(r) = self.free.pop() {
            return Some(r);
        }
        if self.next_ref >= self.table.entries() {
            return None;
        }
        let (gfn, mem) = rt::xen::alloc_shared_pages(1)?;
        let r = self.next_ref;
        self.table.grant(r, self.backend, gfn as u32, false);
        self.next_ref += 1;
        self.pages.push(mem);
        Some(r)
    }

    fn free(&mut self, page: GrantRef) {
        self.free.push(page);
    }

    fn write(&mut self, page: GrantRef, offset: usize, src: &[u8]) -> Result<(), netfront::Error> {
        let m = self.page(page).ok_or(netfront::Error::FrameSize)?;
        if offset + src.len() > m.len() {
            return Err(netfront::Error::FrameSize);
        }
        m.write_bytes(offset, src);
        Ok(())
    }

    fn read(&mut self, page: GrantRef, offset: usize, dst: &mut [u8]) -> Result<(), netfront::Error> {
        let m = self.page(page).ok_or(netfront::Error::FrameSize)?;
        if offset + dst.len() > m.len() {
            return Err(netfront::Error::FrameSize);
        }
        m.read_bytes(offset, dst);
        Ok(())
    }
}

/// net-dd's own vif towards dom0.
pub struct Uplink {
    xen: Xen,
    events: Events,
    fe: String,
    be: String,
    be_id: u16,
    fsm: FrontendFsm,
    nf: Option<Netfront<ForeignMem, XenBuffers>>,
    port: Option<Port>,
    buffers: Option<XenBuffers>,
    /// The MAC xl gave this vif.
    pub mac: Option<netswitch::Mac>,
    connected: bool,
    notifies: u64,
    /// Events from the backend taken.
    fired: u64,
}

impl Uplink {
    /// The uplink of device `vif/0` of this domain, if the xl config gave it one.
    pub fn find(xen: Xen, events: Events, store: &mut Store, domid: u16) -> Result<Option<Uplink>, DomainError> {
        let fe = format!("/local/domain/{domid}/device/vif/0");
        let (Some(be), Some(be_id)) = (store.read_opt(&format!("{fe}/backend"))?, store.read_opt(&format!("{fe}/backend-id"))?)
        else {
            return Ok(None);
        };
        let Ok(be_id) = be_id.parse::<u16>() else { return Ok(None) };
        let mac = store.read_opt(&format!("{fe}/mac"))?.as_deref().and_then(netswitch::Mac::parse);
        store.watch(&format!("{be}/state"), TOKEN)?;
        Ok(Some(Uplink {
            xen,
            events,
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

    /// The backend's state may have changed.
    pub fn on_watch(&mut self, store: &mut Store) {
        let state = match store.read_opt(&format!("{}/state", self.be)) {
            Ok(None) => XenbusState::Unknown,
            Ok(Some(s)) => match XenbusState::parse(&s) {
                Ok(s) => s,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let out = self.fsm.on_input(FrontendInput::BackendState(state));
        self.apply(store, out);
    }

    fn apply(&mut self, store: &mut Store, out: FrontendOutput) {
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
        if out.ready && !self.connected {
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

    fn setup(&mut self, store: &mut Store) -> Result<(), String> {
        let table = rt::xen::grant_table(self.xen).map_err(|e| format!("grant table: {e:?}"))?;
        let (tx_gfn, tx_mem) = rt::xen::alloc_shared_pages(1).ok_or("no memory")?;
        let (rx_gfn, rx_mem) = rt::xen::alloc_shared_pages(1).ok_or("no memory")?;
        let tx = FrontRing::<_, TxRing>::init(tx_mem).map_err(|e| format!("tx ring: {e}"))?;
        let rx = FrontRing::<_, RxRing>::init(rx_mem).map_err(|e| format!("rx ring: {e}"))?;
        table.grant(FIRST_REF, self.be_id, tx_gfn as u32, false);
        table.grant(FIRST_REF + 1, self.be_id, rx_gfn as u32, false);
        let port = self.events.alloc_unbound(self.be_id).map_err(|e| format!("event channel: {e:?}"))?;
        let bufs = self.buffers.take().unwrap_or(XenBuffers {
            table,
            backend: self.be_id,
            pages: Vec::new(),
            free: Vec::new(),
            next_ref: FIRST_REF + 2,
        });
        let nf = Netfront::new(tx, rx, bufs, Config { sg: false, tx_buffers: BUFFERS, rx_buffers: BUFFERS });
        let fe = self.fe.clone();
        let keys: [(&str, String); 7] = [
            ("tx-ring-ref", format!("{FIRST_REF}")),
            ("rx-ring-ref", format!("{}", FIRST_REF + 1)),
            ("event-channel", format!("{}", port.0)),
            ("request-rx-copy", "1".into()),
            ("feature-rx-notify", "1".into()),
            ("feature-sg", "0".into()),
            // Checksums complete in both directions: the switch hands frames on as they are.
            ("feature-no-csum-offload", "1".into()),
        ];
        for (k, v) in keys {
            store.write(&format!("{fe}/{k}"), &v).map_err(|e| format!("writing {k}: {e:?}"))?;
        }
        self.nf = Some(nf);
        self.port = Some(port);
        Ok(())
    }

    fn teardown(&mut self, reason: &str) {
        if let Some(p) = self.port.take() {
            let _ = self.events.close(p);
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
        if self.events.take(port) {
            self.fired += 1;
        }
        let mut more = false;
        let mut broken = None;
        match nf.poll() {
            Ok(_) => {}
            Err(e) => broken = Some(e),
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
            let _ = self.events.notify(port);
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
            let _ = self.events.notify(port);
        }
    }
}
