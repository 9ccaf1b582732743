//! The xenbus backend control plane of net-dd's vifs on Xen, without Xen: it runs against any
//! xenstore ([`StoreAccess`]) and any way of reaching a frontend's pages and event channels
//! ([`VifPlatform`]), so the same code is driven by the image on Xen (`src/xen/vif.rs`: the
//! xenstore ring, grant mapping, event-channel hypercalls) and by host tests (an in-memory
//! xenstore daemon, rings in host memory, the real `netfront` engine as the Linux guest).
//!
//! What it does, per vif under `backend/vif/<fe>/<dev>` of this domain:
//! * finds it through one watch on the backend directory (the toolstack writes it in one
//!   transaction: a vif is ours once `frontend-id` and `frontend` exist and match its path);
//! * runs xen-abi's [`BackendFsm`], advertises netback's features, writes
//!   `hotplug-status = connected` itself (no hotplug scripts in a unikernel) and watches the
//!   frontend directory;
//! * on the frontend's Connected: parses its keys ([`FrontendConfig::from_keys`]), maps its two
//!   ring pages, binds its event channel(s), attaches a [`Netback`] engine as a port of the
//!   [`Switch`] with its QoS request (`iconnect-qos-*` keys of the frontend, xl's `rate=` of the
//!   backend directory as an administrative ceiling) and answers the request in the backend
//!   directory; a QoS key changed later is decided again;
//! * on Closing/Closed, a vanished frontend (`xl destroy`), `online = 0` or a protocol error:
//!   detaches the port (rings unmapped by dropping them, event channels closed) and, once the
//!   state machine says so, removes its own backend directory (libxl waits for that).
//!
//! Everything read from xenstore is untrusted: ids and watch tokens are parsed strictly, the
//! frontend's keys by `netback` and `iconnect`, its directory is bounded
//! ([`MAX_FRONTEND_KEYS`]), grant references and event-channel ports are checked by the
//! platform (Xen): any failure refuses the connection (`ICONNECT-VIF <fe>/<dev> refused
//! reason=...`, backend state Closing), never panics. Time is passed in (`now_ns`).
//!
//! Markers (the Xen tier of xtask matches them): `ICONNECT-VIF <fe>/<dev> up port=<n> mac=<mac>
//! qos=<granted|refused|none> ceiling_bps=<n|none> ...`, `ICONNECT-VIF <fe>/<dev> qos=<...>
//! ceiling_bps=<...>` (a QoS request changed), `ICONNECT-VIF <fe>/<dev> down port=<n>
//! reason=<why> ...`, `ICONNECT-VIF <fe>/<dev> refused reason=<why>`, and
//! `ICONNECT-VIFSTAT <fe>/<dev> port=<n> tx_bps=.. rx_bps=.. tx_frames=.. rx_frames=.. drops=..`.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Debug;

use iconnect::qos::{self, NetQosRequest, XenRate};
use iconnect::{Decision, KeySink, KeySource};
use netback::engine::RxQueueLimits;
use netback::negotiate::EventChannels;
use netback::{BackendFeatures, FrontendConfig, GrantAccess, Netback};
use netswitch::{Mac, PortId};
use xen_abi::GrantRef;
use xen_abi::shmem::SharedMem;
use xen_abi::xenbus::{BackendFsm, BackendInput, BackendOutput, XenbusState};

use crate::switch::{self, PortCounters, QosDecision, Switch};

/// A vif: (frontend domid, device id).
pub type VifId = (u16, u32);

/// Watch token of the backend directory.
pub const BACKEND_TOKEN: &str = "be";

/// Most keys read from a frontend directory (Linux netfront writes about 15): a bigger
/// directory refuses the connection instead of costing one xenstore round trip per key.
pub const MAX_FRONTEND_KEYS: usize = 128;

/// An error of a [`StoreAccess`].
pub trait StoreError: Debug {
    /// Whether xenstore answered `EACCES` (e.g. a node of a domain being destroyed).
    fn is_denied(&self) -> bool;
}

/// The xenstore operations the control plane needs (no transactions). Paths are absolute.
pub trait StoreAccess {
    /// What a request can fail with.
    type Error: StoreError;
    /// A node's value; `None` when it does not exist.
    fn read(&mut self, path: &str) -> Result<Option<String>, Self::Error>;
    /// A node's children; `None` when it does not exist.
    fn directory(&mut self, path: &str) -> Result<Option<Vec<String>>, Self::Error>;
    /// Writes a node (creating its parents).
    fn write(&mut self, path: &str, value: &str) -> Result<(), Self::Error>;
    /// Removes a node and its children.
    fn rm(&mut self, path: &str) -> Result<(), Self::Error>;
    /// Registers a watch (xenstored fires it once at once).
    fn watch(&mut self, path: &str, token: &str) -> Result<(), Self::Error>;
    /// Removes a watch.
    fn unwatch(&mut self, path: &str, token: &str) -> Result<(), Self::Error>;
}

/// What needs the hypervisor: a frontend's ring pages, its event channels, copies into its
/// granted buffers.
pub trait VifPlatform {
    /// A mapped ring page of a frontend (unmapped when dropped).
    type Ring: SharedMem;
    /// Copies to and from a frontend's granted buffers.
    type Grants: GrantAccess;
    /// A local event-channel port.
    type Port: Copy + Debug;
    /// What mapping or binding can fail with (logged).
    type Error: Debug;
    /// Maps domain `domid`'s grant `gref` (read-write) as a ring page.
    fn map_ring(&mut self, domid: u16, gref: GrantRef) -> Result<Self::Ring, Self::Error>;
    /// Grant copies against domain `domid`.
    fn grants(&mut self, domid: u16) -> Self::Grants;
    /// Binds domain `domid`'s unbound port `remote_port`.
    fn bind(&mut self, domid: u16, remote_port: u32) -> Result<Self::Port, Self::Error>;
    /// Closes a bound port.
    fn close(&mut self, port: Self::Port);
    /// Notifies the remote end of `port`.
    fn notify(&mut self, port: Self::Port);
    /// Whether `port` fired since the last call (and clears it).
    fn take_event(&mut self, port: Self::Port) -> bool;
    /// Ring pages mapped now (for the `down` marker).
    fn mapped_rings(&self) -> usize;
}

/// A snapshot of a xenstore directory's keys (values of its direct children).
struct Keys(Vec<(String, String)>);

impl KeySource for Keys {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Why a frontend directory could not be read.
enum KeysError<E> {
    Gone,
    TooMany(usize),
    Store(E),
}

impl<E: Debug> KeysError<E> {
    fn describe(&self) -> String {
        match self {
            KeysError::Gone => "frontend directory gone".into(),
            KeysError::TooMany(n) => format!("frontend directory has {n} keys (at most {MAX_FRONTEND_KEYS})"),
            KeysError::Store(e) => format!("reading frontend keys: {e:?}"),
        }
    }
}

impl Keys {
    fn read<S: StoreAccess>(store: &mut S, dir: &str) -> Result<Keys, KeysError<S::Error>> {
        let names = store.directory(dir).map_err(KeysError::Store)?.ok_or(KeysError::Gone)?;
        if names.len() > MAX_FRONTEND_KEYS {
            return Err(KeysError::TooMany(names.len()));
        }
        let mut v = Vec::with_capacity(names.len());
        for name in names {
            if let Some(val) = store.read(&format!("{dir}/{name}")).map_err(KeysError::Store)? {
                v.push((name, val));
            }
        }
        Ok(Keys(v))
    }
}

/// Writes keys into a xenstore directory.
struct StoreSink<'a, S> {
    store: &'a mut S,
    dir: &'a str,
}

impl<S: StoreAccess> KeySink for StoreSink<'_, S> {
    fn set(&mut self, key: &str, value: &str) -> Result<(), iconnect::Error> {
        self.store.write(&format!("{}/{key}", self.dir), value).map_err(|_| iconnect::Error::Sink)
    }
}

/// A plain decimal without sign or leading zeros (what the toolstack writes for ids).
pub fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A frontend domain id.
fn parse_domid(s: &str) -> Option<u16> {
    parse_id(s).and_then(|f| u16::try_from(f).ok())
}

/// `fe:<fe>:<dev>`: the watch token of a vif's frontend directory.
pub fn frontend_token(id: VifId) -> String {
    format!("fe:{}:{}", id.0, id.1)
}

/// The vif named by a frontend watch token (`fe:<fe>:<dev>`).
pub fn parse_token(s: &str) -> Option<VifId> {
    let (fe, dev) = s.strip_prefix("fe:")?.split_once(':')?;
    Some((parse_domid(fe)?, parse_id(dev)?))
}

/// A connected vif: its switch port and event channels (the engine lives in the switch).
struct Conn<P> {
    port: PortId,
    tx_port: P,
    /// The RX port when the frontend split its event channels.
    rx_port: Option<P>,
}

/// One vif.
struct Vif<P> {
    be: String,
    fe: String,
    fsm: BackendFsm,
    /// The MAC xl gave the guest (backend `mac`): the only source it may send from.
    mac: Option<Mac>,
    conn: Option<Conn<P>>,
    /// `rate=` of the xl config (backend `rate`), an administrative ceiling.
    rate: Option<XenRate>,
    /// Counters at the last stats line.
    reported: PortCounters,
    /// A QoS key changed since the frontend's keys were last read for it.
    qos_dirty: bool,
    /// When the frontend's keys were last read for a QoS change (ns).
    qos_read_ns: Option<u64>,
}

/// A guest's QoS keys are re-read at most this often (ns): every write to one fires a watch, and
/// answering means reading the whole frontend directory, so a guest writing in a loop would
/// otherwise keep net-dd busy for everyone. A burst is answered once, with its last values.
pub const QOS_REREAD_NS: u64 = 100_000_000;

/// What a vif looks like from outside (tests, diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VifStatus {
    /// The backend state last written.
    pub state: XenbusState,
    /// Its switch port while connected.
    pub port: Option<PortId>,
    /// Whether its frontend split its event channels (while connected).
    pub split_events: bool,
}

/// All vifs of this driver domain, attached as guest ports of net-dd's switch.
pub struct Backend<P: VifPlatform> {
    /// Ring mapping, grant copies, event channels.
    pub platform: P,
    base: String,
    features: BackendFeatures,
    /// The switch: guest ports (netback engines over mapped rings), the domain's stack.
    pub sw: Switch<P::Ring, P::Grants>,
    vifs: BTreeMap<VifId, Vif<P::Port>>,
    /// Vifs removed by their state machine whose backend directory still exists: not re-created
    /// until the toolstack removes the directory.
    retired: BTreeSet<VifId>,
}

impl<P: VifPlatform> Backend<P> {
    /// Serves the vifs under `base` (`/local/domain/<self>/backend/vif`) through `sw`.
    pub fn new(platform: P, base: String, sw: Switch<P::Ring, P::Grants>) -> Self {
        Self { platform, base, features: BackendFeatures::default(), sw, vifs: BTreeMap::new(), retired: BTreeSet::new() }
    }

    /// The backend directory served.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The vifs served now.
    pub fn vifs(&self) -> impl Iterator<Item = (VifId, VifStatus)> + '_ {
        self.vifs.iter().map(|(id, v)| {
            (
                *id,
                VifStatus {
                    state: v.fsm.state(),
                    port: v.conn.as_ref().map(|c| c.port),
                    split_events: v.conn.as_ref().is_some_and(|c| c.rx_port.is_some()),
                },
            )
        })
    }

    /// Vif `id`, if served.
    pub fn vif(&self, id: VifId) -> Option<VifStatus> {
        self.vifs().find(|(i, _)| *i == id).map(|(_, s)| s)
    }

    /// Registers the watch on the backend directory (it fires once at once: the first scan).
    pub fn watch<S: StoreAccess>(&self, store: &mut S) -> Result<(), S::Error> {
        store.watch(&self.base, BACKEND_TOKEN)
    }

    /// Handles one watch event at time `now_ns`.
    pub fn on_watch<S: StoreAccess>(&mut self, store: &mut S, path: &str, token: &str, now_ns: u64) {
        let r = if token == BACKEND_TOKEN {
            self.on_backend_event(store, path, now_ns)
        } else if let Some(id) = parse_token(token) {
            self.on_frontend_event(store, id, path, now_ns)
        } else {
            Ok(())
        };
        if let Err(e) = r {
            log::warn!("xenstore event {path}: {e:?}");
        }
    }

    fn on_backend_event<S: StoreAccess>(&mut self, store: &mut S, path: &str, now: u64) -> Result<(), S::Error> {
        let Some(rel) = path.strip_prefix(self.base.as_str()) else { return Ok(()) };
        if !(rel.is_empty() || rel.starts_with('/')) {
            return Ok(());
        }
        let mut parts = rel.split('/').skip(1);
        match (parts.next(), parts.next()) {
            (None, _) => self.scan(store, now),
            (Some(fe), None) => match parse_domid(fe) {
                Some(fe) => self.scan_frontend(store, fe, now),
                None => Ok(()),
            },
            (Some(fe), Some(dev)) => {
                let (Some(fe), Some(dev)) = (parse_domid(fe), parse_id(dev)) else {
                    return Ok(());
                };
                self.on_backend_node(store, (fe, dev), parts.next(), now)
            }
        }
    }

    /// Everything under the backend directory.
    fn scan<S: StoreAccess>(&mut self, store: &mut S, now: u64) -> Result<(), S::Error> {
        let fes = store.directory(&self.base)?.unwrap_or_default();
        let known: BTreeSet<u16> = self.vifs.keys().map(|k| k.0).chain(self.retired.iter().map(|k| k.0)).collect();
        let listed: BTreeSet<u16> = fes.iter().filter_map(|f| parse_domid(f)).collect();
        for fe in known.union(&listed) {
            self.scan_frontend(store, *fe, now)?;
        }
        Ok(())
    }

    /// The vifs of frontend domain `fe`.
    fn scan_frontend<S: StoreAccess>(&mut self, store: &mut S, fe: u16, now: u64) -> Result<(), S::Error> {
        let devs = store.directory(&format!("{}/{fe}", self.base))?.unwrap_or_default();
        let listed: BTreeSet<u32> = devs.iter().filter_map(|d| parse_id(d)).collect();
        let gone: Vec<VifId> = self
            .vifs
            .keys()
            .chain(self.retired.iter())
            .filter(|k| k.0 == fe && !listed.contains(&k.1))
            .copied()
            .collect();
        for id in gone {
            self.retired.remove(&id);
            self.remove(store, id, "backend directory removed");
        }
        for dev in listed {
            self.on_backend_node(store, (fe, dev), None, now)?;
        }
        Ok(())
    }

    /// A node of vif `id`'s backend directory changed (`key` = None: the directory itself).
    fn on_backend_node<S: StoreAccess>(
        &mut self,
        store: &mut S,
        id: VifId,
        key: Option<&str>,
        now: u64,
    ) -> Result<(), S::Error> {
        if !self.vifs.contains_key(&id) {
            if self.retired.contains(&id) {
                if store.read(&format!("{}/{}/{}/frontend-id", self.base, id.0, id.1))?.is_none() {
                    self.retired.remove(&id);
                }
                return Ok(());
            }
            return self.try_create(store, id, now);
        }
        if !matches!(key, None | Some("online")) {
            return Ok(());
        }
        let be = self.vifs[&id].be.clone();
        match store.read(&format!("{be}/online"))?.as_deref() {
            None => {
                if store.read(&format!("{be}/frontend-id"))?.is_none() {
                    self.remove(store, id, "backend directory removed");
                }
            }
            Some("0") => self.input(store, id, BackendInput::Online(false), now),
            Some("1") => self.input(store, id, BackendInput::Online(true), now),
            Some(other) => log::warn!("vif {}/{}: ignoring online = {other:?}", id.0, id.1),
        }
        Ok(())
    }

    /// A new vif whose backend directory the toolstack wrote.
    fn try_create<S: StoreAccess>(&mut self, store: &mut S, id: VifId, now: u64) -> Result<(), S::Error> {
        let be = format!("{}/{}/{}", self.base, id.0, id.1);
        // The toolstack writes the directory in one transaction; until both keys exist it is
        // not ours to serve yet.
        let Some(fe_id) = store.read(&format!("{be}/frontend-id"))? else { return Ok(()) };
        let Some(fe) = store.read(&format!("{be}/frontend"))? else { return Ok(()) };
        let expected = format!("/local/domain/{}/device/vif/{}", id.0, id.1);
        if parse_id(&fe_id) != Some(u32::from(id.0)) || fe != expected {
            log::warn!("vif {}/{}: frontend-id {fe_id:?} / frontend {fe:?} do not match the directory; ignored", id.0, id.1);
            self.retired.insert(id);
            return Ok(());
        }
        let mac = store.read(&format!("{be}/mac"))?.as_deref().and_then(Mac::parse);
        log::info!("vif {}/{}: new, frontend {fe}, mac {}", id.0, id.1, mac.map_or("?".to_string(), |m| m.to_string()));
        self.vifs.insert(
            id,
            Vif {
                be: be.clone(),
                fe: fe.clone(),
                fsm: BackendFsm::new(),
                mac,
                conn: None,
                rate: None,
                reported: PortCounters::default(),
                qos_dirty: false,
                qos_read_ns: None,
            },
        );
        let advertised = self.features.advertise(&mut StoreSink { store, dir: &be });
        if let Err(e) = advertised {
            log::warn!("vif {}/{}: advertising features: {e}", id.0, id.1);
        }
        self.input(store, id, BackendInput::Probed, now);
        // No hotplug script runs in a unikernel: the vif is plugged once we wait for the frontend.
        store.write(&format!("{be}/hotplug-status"), "connected")?;
        store.watch(&fe, &frontend_token(id))?;
        Ok(())
    }

    fn on_frontend_event<S: StoreAccess>(&mut self, store: &mut S, id: VifId, path: &str, now: u64) -> Result<(), S::Error> {
        let Some(v) = self.vifs.get(&id) else { return Ok(()) };
        let key = match path.strip_prefix(v.fe.as_str()) {
            Some(k) => k,
            // An ancestor of the frontend directory was removed (xenstored names the watched
            // path then, but a daemon naming the removed node means the same): read the state.
            None if v.fe.starts_with(path) && v.fe.as_bytes().get(path.len()) == Some(&b'/') => "",
            None => return Ok(()),
        };
        let fe = v.fe.clone();
        match key {
            "" | "/state" => {
                // A frontend whose directory is gone reads as Unknown; so does one whose
                // directory the toolstack already took away from us (EACCES while the domain
                // is being destroyed).
                let state = match store.read(&format!("{fe}/state")) {
                    Ok(None) => XenbusState::Unknown,
                    Err(e) if e.is_denied() => XenbusState::Unknown,
                    Err(e) => return Err(e),
                    Ok(Some(s)) => match XenbusState::parse(&s) {
                        Ok(s) => s,
                        Err(_) => {
                            log::warn!("vif {}/{}: frontend state {s:?} invalid; ignored", id.0, id.1);
                            return Ok(());
                        }
                    },
                };
                self.input(store, id, BackendInput::FrontendState(state), now);
            }
            k if k.starts_with("/iconnect-qos-") && self.vifs.get(&id).is_some_and(|v| v.conn.is_some()) => {
                if let Some(v) = self.vifs.get_mut(&id) {
                    v.qos_dirty = true;
                }
                self.requalify_if_due(store, id, now)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Feeds the vif's state machine and carries out what it says.
    fn input<S: StoreAccess>(&mut self, store: &mut S, id: VifId, input: BackendInput, now: u64) {
        let Some(v) = self.vifs.get_mut(&id) else { return };
        let out = v.fsm.on_input(input);
        self.apply(store, id, out, now);
    }

    fn apply<S: StoreAccess>(&mut self, store: &mut S, id: VifId, out: BackendOutput, now: u64) {
        if out.disconnect {
            self.disconnect(id, "frontend closed or unplugged");
        }
        let mut next = None;
        if out.connect {
            let ok = match self.connect(store, id, now) {
                Ok(()) => true,
                Err(why) => {
                    log::warn!("ICONNECT-VIF {}/{} refused reason={why}", id.0, id.1);
                    false
                }
            };
            next = self.vifs.get_mut(&id).map(|v| v.fsm.on_input(BackendInput::ConnectDone { ok }));
        }
        if let Some(s) = out.write_state
            && let Some(v) = self.vifs.get(&id)
        {
            // Never re-create a directory the toolstack already removed (a write creates parents).
            let be = v.be.clone();
            match store.read(&format!("{be}/frontend-id")) {
                Ok(Some(_)) => {
                    if let Err(e) = store.write(&format!("{be}/state"), s.as_str()) {
                        log::warn!("vif {}/{}: writing state {}: {e:?}", id.0, id.1, s.name());
                    }
                }
                Ok(None) => {}
                Err(e) => log::warn!("vif {}/{}: {e:?}", id.0, id.1),
            }
        }
        if out.remove {
            let be = self.vifs.get(&id).map(|v| v.be.clone());
            self.remove(store, id, "removed");
            if let Some(be) = be {
                // In a driver domain the backend removes its own directory (Linux: `xl devd`);
                // libxl waits for that before it finishes destroying the frontend's domain.
                let _ = store.rm(&be);
                let parent = format!("{}/{}", self.base, id.0);
                if store.directory(&parent).is_ok_and(|d| d.is_some_and(|d| d.is_empty())) {
                    let _ = store.rm(&parent);
                }
            } else {
                self.retired.insert(id);
            }
        }
        if let Some(n) = next {
            self.apply(store, id, n, now);
        }
    }

    /// Reads the frontend's keys, maps its rings, binds its event channels, attaches it to the
    /// switch with its QoS request and writes the decision.
    fn connect<S: StoreAccess>(&mut self, store: &mut S, id: VifId, now: u64) -> Result<(), String> {
        let Some(v) = self.vifs.get(&id) else { return Err("unknown vif".into()) };
        let (fe, be) = (v.fe.clone(), v.be.clone());
        let mac = v.mac.ok_or("no valid mac in the backend directory")?;
        let keys = Keys::read(store, &fe).map_err(|e| e.describe())?;
        let cfg = FrontendConfig::from_keys(&keys, &self.features).map_err(|e| format!("frontend keys: {e}"))?;
        let rate = read_rate(store, &be, id);
        let port = (0..switch::MAX_GUESTS)
            .filter_map(switch::guest_port)
            .find(|p| !self.sw.is_attached(*p))
            .ok_or("no free switch port")?;
        let tx = self.platform.map_ring(id.0, cfg.tx_ring_ref).map_err(|e| format!("mapping tx-ring-ref: {e:?}"))?;
        let rx = self.platform.map_ring(id.0, cfg.rx_ring_ref).map_err(|e| format!("mapping rx-ring-ref: {e:?}"))?;
        let nb = Netback::new(tx, rx, cfg.features, RxQueueLimits::default()).map_err(|e| format!("rings: {e}"))?;
        let (tx_port, rx_port) = match cfg.events {
            EventChannels::Shared(p) => (self.bind(id.0, p)?, None),
            EventChannels::Split { tx, rx } => {
                let t = self.bind(id.0, tx)?;
                match self.bind(id.0, rx) {
                    Ok(r) => (t, Some(r)),
                    Err(e) => {
                        self.platform.close(t);
                        return Err(e);
                    }
                }
            }
        };
        let request = qos_request(&keys, rate);
        let asked = !matches!(request, Ok(None));
        let grants = self.platform.grants(id.0);
        let decision = match self.sw.attach(port, nb, grants, mac, admin_only(request, rate), now) {
            Ok(d) => d,
            Err(e) => {
                self.platform.close(tx_port);
                if let Some(p) = rx_port {
                    self.platform.close(p);
                }
                return Err(e.reason().into());
            }
        };
        write_decision(store, &be, id, asked, &decision);
        let Some(v) = self.vifs.get_mut(&id) else { return Err("unknown vif".into()) };
        v.conn = Some(Conn { port, tx_port, rx_port });
        v.rate = rate;
        v.reported = PortCounters::default();
        log::info!(
            "ICONNECT-VIF {}/{} up port={port} mac={mac} qos={} ceiling_bps={} sg={} split_events={} rx_notify={}",
            id.0,
            id.1,
            switch::qos_word(&decision),
            ceiling(&decision, rate),
            cfg.features.sg,
            rx_port.is_some(),
            cfg.features.rx_notify
        );
        Ok(())
    }

    fn bind(&mut self, remote: u16, port: u32) -> Result<P::Port, String> {
        self.platform.bind(remote, port).map_err(|e| format!("binding event channel {port}: {e:?}"))
    }

    /// The connected guest changed its QoS keys: decide again, write the answer.
    /// Answers a changed QoS request of a connected vif unless its keys were read less than
    /// [`QOS_REREAD_NS`] ago (then [`Backend::tick`] answers it later).
    fn requalify_if_due<S: StoreAccess>(&mut self, store: &mut S, id: VifId, now: u64) -> Result<(), S::Error> {
        let Some(v) = self.vifs.get_mut(&id) else { return Ok(()) };
        if !v.qos_dirty || v.conn.is_none() || v.qos_read_ns.is_some_and(|t| now.saturating_sub(t) < QOS_REREAD_NS) {
            return Ok(());
        }
        v.qos_dirty = false;
        v.qos_read_ns = Some(now);
        let fe = v.fe.clone();
        match Keys::read(store, &fe) {
            Ok(keys) => self.requalify(store, id, &keys, now),
            Err(KeysError::Store(e)) => return Err(e),
            Err(e) => log::warn!("vif {}/{}: QoS keys: {}", id.0, id.1, e.describe()),
        }
        Ok(())
    }

    /// Periodic work: answers QoS changes held back by [`QOS_REREAD_NS`]. Returns when it next
    /// has something to do (ns), if anything is pending.
    pub fn tick<S: StoreAccess>(&mut self, store: &mut S, now: u64) -> Option<u64> {
        let pending: Vec<VifId> = self.vifs.iter().filter(|(_, v)| v.qos_dirty).map(|(id, _)| *id).collect();
        for id in pending {
            if let Err(e) = self.requalify_if_due(store, id, now) {
                log::warn!("vif {}/{}: xenstore: {e:?}", id.0, id.1);
            }
        }
        self.vifs
            .values()
            .filter(|v| v.qos_dirty && v.conn.is_some())
            .map(|v| v.qos_read_ns.map_or(now, |t| t.saturating_add(QOS_REREAD_NS)))
            .min()
    }

    fn requalify<S: StoreAccess>(&mut self, store: &mut S, id: VifId, fe_keys: &Keys, now: u64) {
        let Some(v) = self.vifs.get(&id) else { return };
        let Some(port) = v.conn.as_ref().map(|c| c.port) else { return };
        let (be, rate) = (v.be.clone(), v.rate);
        let request = qos_request(fe_keys, rate);
        let asked = !matches!(request, Ok(None));
        let Some(decision) = self.sw.requalify(port, admin_only(request, rate), now) else { return };
        write_decision(store, &be, id, asked, &decision);
        log::info!(
            "ICONNECT-VIF {}/{} qos={} ceiling_bps={}",
            id.0,
            id.1,
            switch::qos_word(&decision),
            ceiling(&decision, rate)
        );
    }

    /// Stops serving the vif's rings: detached from the switch (rings unmapped, QoS reservation
    /// returned), event channels closed.
    fn disconnect(&mut self, id: VifId, reason: &str) {
        let Some(v) = self.vifs.get_mut(&id) else { return };
        let Some(c) = v.conn.take() else { return };
        let counters = self.sw.detach(c.port).unwrap_or_default();
        self.platform.close(c.tx_port);
        if let Some(p) = c.rx_port {
            self.platform.close(p);
        }
        log::info!(
            "ICONNECT-VIF {}/{} down port={} reason={reason} tx_frames={} rx_frames={} drops={} mapped_grants={}",
            id.0,
            id.1,
            c.port,
            counters.tx_frames,
            counters.rx_frames,
            counters.drops,
            self.platform.mapped_rings()
        );
    }

    fn remove<S: StoreAccess>(&mut self, store: &mut S, id: VifId, reason: &str) {
        self.disconnect(id, reason);
        if let Some(v) = self.vifs.remove(&id) {
            let _ = store.unwatch(&v.fe, &frontend_token(id));
            log::info!("vif {}/{}: removed ({reason})", id.0, id.1);
        }
    }

    /// Event channels that fired become doorbells of their switch ports; `sweep` rings every
    /// port (a safety net: the engines arm their event indices, so nothing should be missed).
    pub fn doorbells(&mut self, sweep: bool) {
        for v in self.vifs.values() {
            let Some(c) = &v.conn else { continue };
            let tx = self.platform.take_event(c.tx_port);
            let rx = c.rx_port.is_some_and(|p| self.platform.take_event(p));
            if tx || rx || sweep {
                self.sw.doorbell(c.port);
            }
        }
    }

    /// After the switch ran: notifies the frontends it answered, tears down vifs whose
    /// frontend broke the protocol.
    pub fn after_switch(&mut self) {
        for v in self.vifs.values() {
            let Some(c) = &v.conn else { continue };
            let (tx, rx) = self.sw.take_notify(c.port);
            match c.rx_port {
                Some(rxp) => {
                    if tx {
                        self.platform.notify(c.tx_port);
                    }
                    if rx {
                        self.platform.notify(rxp);
                    }
                }
                None => {
                    if tx || rx {
                        self.platform.notify(c.tx_port);
                    }
                }
            }
        }
        for (port, e) in self.sw.take_failed() {
            let Some(id) = self.vifs.iter().find(|(_, v)| v.conn.as_ref().is_some_and(|c| c.port == port)).map(|(id, _)| *id)
            else {
                continue;
            };
            // Linux netback disables a vif that broke the protocol; so do we (its xenbus state
            // stays: the frontend's next Closing/Closed or the toolstack cleans up).
            log::warn!("vif {}/{}: frontend broke the protocol: {e}", id.0, id.1);
            self.disconnect(id, "protocol-error");
        }
    }

    /// Prints `ICONNECT-VIFSTAT` for every connected vif whose counters moved (rates since the
    /// last line, `secs` ago); returns whether any did.
    pub fn report_stats(&mut self, secs: f64) -> bool {
        let mut moved = false;
        for (id, v) in self.vifs.iter_mut() {
            let Some(c) = &v.conn else { continue };
            let Some(cur) = self.sw.port_counters(c.port) else { continue };
            if cur == v.reported {
                continue;
            }
            let bps = |a: u64, b: u64| (a.saturating_sub(b) as f64 * 8.0 / secs.max(1e-6)) as u64;
            log::info!(
                "ICONNECT-VIFSTAT {}/{} port={} tx_bps={} rx_bps={} tx_frames={} rx_frames={} drops={} spoofed={}",
                id.0,
                id.1,
                c.port,
                bps(cur.tx_bytes, v.reported.tx_bytes),
                bps(cur.rx_bytes, v.reported.rx_bytes),
                cur.tx_frames,
                cur.rx_frames,
                cur.drops,
                cur.spoofed
            );
            v.reported = cur;
            moved = true;
        }
        moved
    }
}

/// `rate` of the backend directory (xl's vif `rate=`); an invalid value is ignored (logged).
fn read_rate<S: StoreAccess>(store: &mut S, be: &str, id: VifId) -> Option<XenRate> {
    let r = store.read(&format!("{be}/{}", qos::XEN_RATE)).ok()??;
    match XenRate::parse(&r) {
        Ok(r) => Some(r),
        Err(_) => {
            log::warn!("vif {}/{}: rate {r:?} invalid; ignored", id.0, id.1);
            None
        }
    }
}

/// The guest's QoS request from its frontend keys, with `rate=` as an administrative ceiling.
fn qos_request(fe_keys: &Keys, rate: Option<XenRate>) -> Result<Option<NetQosRequest>, iconnect::Error> {
    NetQosRequest::from_keys(fe_keys)?.map(|r| r.with_admin_ceiling(rate)).transpose()
}

/// What the switch enforces: the guest's request, or, when it asked for nothing, `rate=` alone
/// as a best-effort ceiling (the decision on that is not written into the guest's keys).
fn admin_only(
    request: Result<Option<NetQosRequest>, iconnect::Error>,
    rate: Option<XenRate>,
) -> Result<Option<NetQosRequest>, iconnect::Error> {
    match request {
        Ok(None) => rate.map(|_| NetQosRequest::default().with_admin_ceiling(rate)).transpose(),
        other => other,
    }
}

/// The ceiling in force, for markers: the granted one, else `rate=`.
fn ceiling(d: &QosDecision, rate: Option<XenRate>) -> String {
    match (d, rate) {
        (Some(Decision::Granted(g)), _) => g.ceiling_bps.to_string(),
        (_, Some(r)) => r.bits_per_second().to_string(),
        _ => "none".into(),
    }
}

/// Replaces the QoS answer in the backend directory (nothing for no request): the new keys are
/// written first, then the keys of an earlier answer that this one lacks are removed, so a
/// frontend polling `iconnect-qos-status` never sees it vanish.
/// Answers a guest's QoS request in its backend directory. A guest that asks nothing (or
/// withdrew its request by removing its keys) finds no answer left from an earlier one.
fn write_decision<S: StoreAccess>(store: &mut S, be: &str, id: VifId, asked: bool, d: &QosDecision) {
    let mut keys = iconnect::keys::ArraySink::<8, 48>::default();
    if asked {
        let Some(d) = d else { return };
        if let Err(e) = qos::write_decision(d, &mut keys) {
            log::warn!("vif {}/{}: QoS decision: {e:?}", id.0, id.1);
            return;
        }
    }
    for (k, v) in keys.pairs() {
        if store.read(&format!("{be}/{k}")).ok().flatten().as_deref() != Some(v)
            && let Err(e) = store.write(&format!("{be}/{k}"), v)
        {
            log::warn!("vif {}/{}: writing {k}: {e:?}", id.0, id.1);
        }
    }
    for k in switch::QOS_ANSWER_KEYS {
        if keys.get(k).is_none() {
            let _ = store.rm(&format!("{be}/{k}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_decimals() {
        assert_eq!(parse_id("0"), Some(0));
        assert_eq!(parse_id("17"), Some(17));
        assert_eq!(parse_id("999999999"), Some(999_999_999));
        for bad in ["", "01", "-1", "+1", "1x", " 1", "1 ", "1234567890", "0x10", "１"] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tokens_round_trip_and_refuse_garbage() {
        assert_eq!(parse_token(&frontend_token((5, 0))), Some((5, 0)));
        assert_eq!(parse_token(&frontend_token((65535, 7))), Some((65535, 7)));
        for bad in ["fe:65536:0", "fe:1", "fe::0", "fe:1:", "fe:1:0:2", "be", "xe:1:0", "fe:01:0", "uplink"] {
            assert_eq!(parse_token(bad), None, "{bad:?}");
        }
    }
}
