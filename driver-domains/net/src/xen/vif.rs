//! The vifs of this driver domain: xenbus control plane and per-vif data path.
//!
//! Everything read from xenstore is untrusted: paths and ids are parsed strictly, the
//! frontend's keys by `netback::FrontendConfig::from_keys` and `iconnect`, grant references and
//! event-channel ports are checked by Xen (a failure refuses the connection, never panics).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::time::Duration;

use iconnect::qos::{self, LinkAdmission, NetQosGrant, NetQosRequest, XenRate};
use iconnect::{Decision, KeySink, KeySource};
use netback::engine::RxQueueLimits;
use netback::negotiate::EventChannels;
use netback::{BackendFeatures, FrontendConfig, Netback, RxMeta, Stats};
use rt::time::Instant;
use xen_abi::xenbus::{BackendFsm, BackendInput, BackendOutput, XenbusState};
use xen_domain::{DomainError, Events, MappedGrant, Port, Store, Xen};

use super::bridge::{Bridge, Forward, VifId};
use super::grants::XenGrants;

/// Packets per poll of one ring before the other vifs get their turn.
const BUDGET: usize = 64;
/// Window of the credit scheduler that enforces a QoS ceiling (10 ms, like a typical `rate=`).
const RATE_WINDOW_US: u32 = 10_000;
/// Watch token of the backend directory.
const BACKEND_TOKEN: &str = "be";

/// When the data path wants to run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Work is pending: poll again at once.
    Now,
    /// At this time (a rate window opens).
    At(Instant),
    /// Only when an event arrives.
    Idle,
}

/// A snapshot of a xenstore directory's keys (values of its direct children).
struct Keys(Vec<(String, String)>);

impl KeySource for Keys {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

impl Keys {
    fn read(store: &mut Store, dir: &str) -> Result<Keys, DomainError> {
        let mut v = Vec::new();
        for name in store.directory(dir)? {
            if let Some(val) = store.read_opt(&format!("{dir}/{name}"))? {
                v.push((name, val));
            }
        }
        Ok(Keys(v))
    }
}

/// Writes keys into a xenstore directory.
struct StoreSink<'a> {
    store: &'a mut Store,
    dir: &'a str,
}

impl KeySink for StoreSink<'_> {
    fn set(&mut self, key: &str, value: &str) -> Result<(), iconnect::Error> {
        self.store.write(&format!("{}/{key}", self.dir), value).map_err(|_| iconnect::Error::Sink)
    }
}

/// A plain decimal without sign or leading zeros (what the toolstack writes for ids).
fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `xx:xx:xx:xx:xx:xx`.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn fmt_mac(m: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

/// A connected vif's data path.
struct Conn {
    nb: Netback<MappedGrant>,
    grants: XenGrants,
    tx_port: Port,
    /// The RX port when the frontend split its event channels.
    rx_port: Option<Port>,
    more_tx: bool,
    throttled_until: Option<u64>,
    rx_kick: bool,
}

impl Conn {
    fn rx_port(&self) -> Port {
        self.rx_port.unwrap_or(self.tx_port)
    }
}

/// One vif.
struct Vif {
    be: String,
    fe: String,
    fsm: BackendFsm,
    mac: Option<[u8; 6]>,
    conn: Option<Conn>,
    /// What admission control granted this vif (reserved while connected).
    qos: Option<NetQosGrant>,
    /// Counters at the last stats line.
    reported: Stats,
}

/// All vifs of this driver domain.
pub struct Backend {
    xen: Xen,
    events: Events,
    base: String,
    features: BackendFeatures,
    admission: LinkAdmission,
    vifs: BTreeMap<VifId, Vif>,
    /// Vifs removed by their state machine whose backend directory still exists: not re-created
    /// until the toolstack removes the directory.
    retired: BTreeSet<VifId>,
    bridge: Bridge,
    frames: Vec<(VifId, Vec<u8>, RxMeta)>,
}

impl Backend {
    /// Serves the vifs under `base` (`/local/domain/<self>/backend/vif`).
    pub fn new(xen: Xen, events: Events, base: String, link_bps: u64) -> Self {
        Self {
            xen,
            events,
            base,
            features: BackendFeatures::default(),
            admission: LinkAdmission::new(link_bps),
            vifs: BTreeMap::new(),
            retired: BTreeSet::new(),
            bridge: Bridge::default(),
            frames: Vec::new(),
        }
    }

    /// The backend directory served.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Registers the watch on the backend directory (it fires once at once: the first scan).
    pub fn watch(&self, store: &mut Store) -> Result<(), DomainError> {
        store.watch(&self.base, BACKEND_TOKEN)
    }

    /// Handles one watch event.
    pub fn on_watch(&mut self, store: &mut Store, path: &str, token: &str) {
        let r = if token == BACKEND_TOKEN {
            self.on_backend_event(store, path)
        } else if let Some(id) = token.strip_prefix("fe:").and_then(parse_token) {
            self.on_frontend_event(store, id, path)
        } else {
            Ok(())
        };
        if let Err(e) = r {
            log::warn!("xenstore event {path}: {e:?}");
        }
    }

    fn on_backend_event(&mut self, store: &mut Store, path: &str) -> Result<(), DomainError> {
        let Some(rel) = path.strip_prefix(self.base.as_str()) else { return Ok(()) };
        let mut parts = rel.split('/').skip(1);
        match (parts.next(), parts.next()) {
            (None, _) => self.scan(store),
            (Some(fe), None) => match parse_id(fe).and_then(|f| u16::try_from(f).ok()) {
                Some(fe) => self.scan_frontend(store, fe),
                None => Ok(()),
            },
            (Some(fe), Some(dev)) => {
                let (Some(fe), Some(dev)) = (parse_id(fe).and_then(|f| u16::try_from(f).ok()), parse_id(dev)) else {
                    return Ok(());
                };
                self.on_backend_node(store, (fe, dev), parts.next())
            }
        }
    }

    /// Everything under the backend directory.
    fn scan(&mut self, store: &mut Store) -> Result<(), DomainError> {
        let fes = match store.directory(&self.base) {
            Ok(v) => v,
            Err(e) if e.is_no_entry() => Vec::new(),
            Err(e) => return Err(e),
        };
        let known: BTreeSet<u16> = self.vifs.keys().map(|k| k.0).chain(self.retired.iter().map(|k| k.0)).collect();
        let listed: BTreeSet<u16> =
            fes.iter().filter_map(|f| parse_id(f).and_then(|f| u16::try_from(f).ok())).collect();
        for fe in known.union(&listed) {
            self.scan_frontend(store, *fe)?;
        }
        Ok(())
    }

    /// The vifs of frontend domain `fe`.
    fn scan_frontend(&mut self, store: &mut Store, fe: u16) -> Result<(), DomainError> {
        let devs = match store.directory(&format!("{}/{fe}", self.base)) {
            Ok(v) => v,
            Err(e) if e.is_no_entry() => Vec::new(),
            Err(e) => return Err(e),
        };
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
            self.on_backend_node(store, (fe, dev), None)?;
        }
        Ok(())
    }

    /// A node of vif `id`'s backend directory changed (`key` = None: the directory itself).
    fn on_backend_node(&mut self, store: &mut Store, id: VifId, key: Option<&str>) -> Result<(), DomainError> {
        if !self.vifs.contains_key(&id) {
            if self.retired.contains(&id) {
                if store.read_opt(&format!("{}/{}/{}/frontend-id", self.base, id.0, id.1))?.is_none() {
                    self.retired.remove(&id);
                }
                return Ok(());
            }
            return self.try_create(store, id);
        }
        if !matches!(key, None | Some("online")) {
            return Ok(());
        }
        let be = self.vifs[&id].be.clone();
        match store.read_opt(&format!("{be}/online"))?.as_deref() {
            None => {
                if store.read_opt(&format!("{be}/frontend-id"))?.is_none() {
                    self.remove(store, id, "backend directory removed");
                }
            }
            Some("0") => self.input(store, id, BackendInput::Online(false)),
            Some("1") => self.input(store, id, BackendInput::Online(true)),
            Some(other) => log::warn!("vif {}/{}: ignoring online = {other:?}", id.0, id.1),
        }
        Ok(())
    }

    /// A new vif whose backend directory the toolstack wrote.
    fn try_create(&mut self, store: &mut Store, id: VifId) -> Result<(), DomainError> {
        let be = format!("{}/{}/{}", self.base, id.0, id.1);
        // The toolstack writes the directory in one transaction; until both keys exist it is
        // not ours to serve yet.
        let Some(fe_id) = store.read_opt(&format!("{be}/frontend-id"))? else { return Ok(()) };
        let Some(fe) = store.read_opt(&format!("{be}/frontend"))? else { return Ok(()) };
        let expected = format!("/local/domain/{}/device/vif/{}", id.0, id.1);
        if parse_id(&fe_id) != Some(u32::from(id.0)) || fe != expected {
            log::warn!("vif {}/{}: frontend-id {fe_id:?} / frontend {fe:?} do not match the directory; ignored", id.0, id.1);
            self.retired.insert(id);
            return Ok(());
        }
        let mac = store.read_opt(&format!("{be}/mac"))?.as_deref().and_then(parse_mac);
        log::info!("vif {}/{}: new, frontend {fe}, mac {}", id.0, id.1, mac.as_ref().map_or("?".to_string(), fmt_mac));
        self.vifs.insert(
            id,
            Vif {
                be: be.clone(),
                fe: fe.clone(),
                fsm: BackendFsm::new(),
                mac,
                conn: None,
                qos: None,
                reported: Stats::default(),
            },
        );
        let advertised = self.features.advertise(&mut StoreSink { store, dir: &be });
        if let Err(e) = advertised {
            log::warn!("vif {}/{}: advertising features: {e}", id.0, id.1);
        }
        self.input(store, id, BackendInput::Probed);
        // No hotplug script runs in a unikernel: the vif is plugged once we wait for the frontend.
        store.write(&format!("{be}/hotplug-status"), "connected")?;
        store.watch(&fe, &format!("fe:{}:{}", id.0, id.1))?;
        Ok(())
    }

    fn on_frontend_event(&mut self, store: &mut Store, id: VifId, path: &str) -> Result<(), DomainError> {
        let Some(v) = self.vifs.get(&id) else { return Ok(()) };
        let Some(key) = path.strip_prefix(v.fe.as_str()) else { return Ok(()) };
        let fe = v.fe.clone();
        match key {
            "" | "/state" => {
                // A frontend whose directory is gone reads as Unknown; so does one whose
                // directory the toolstack already took away from us (EACCES while the domain
                // is being destroyed).
                let state = match store.read_opt(&format!("{fe}/state")) {
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
                self.input(store, id, BackendInput::FrontendState(state));
            }
            k if k.starts_with("/iconnect-qos-") && self.vifs.get(&id).is_some_and(|v| v.conn.is_some()) => {
                let keys = Keys::read(store, &fe)?;
                self.apply_qos(store, id, &keys);
            }
            _ => {}
        }
        Ok(())
    }

    /// Feeds the vif's state machine and carries out what it says.
    fn input(&mut self, store: &mut Store, id: VifId, input: BackendInput) {
        let Some(v) = self.vifs.get_mut(&id) else { return };
        let out = v.fsm.on_input(input);
        self.apply(store, id, out);
    }

    fn apply(&mut self, store: &mut Store, id: VifId, out: BackendOutput) {
        if out.disconnect {
            self.disconnect(id, "frontend closed or unplugged");
        }
        let mut next = None;
        if out.connect {
            let ok = match self.connect(store, id) {
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
            match store.read_opt(&format!("{be}/frontend-id")) {
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
            self.remove(store, id, "removed");
            self.retired.insert(id);
        }
        if let Some(n) = next {
            self.apply(store, id, n);
        }
    }

    /// Reads the frontend's keys, maps its rings, binds its event channels, answers QoS.
    fn connect(&mut self, store: &mut Store, id: VifId) -> Result<(), String> {
        let Some(v) = self.vifs.get(&id) else { return Err("unknown vif".into()) };
        let fe = v.fe.clone();
        let keys = Keys::read(store, &fe).map_err(|e| format!("reading frontend keys: {e:?}"))?;
        let cfg = FrontendConfig::from_keys(&keys, &self.features).map_err(|e| format!("frontend keys: {e}"))?;
        let tx = rt::xen::map_grant(self.xen, id.0, cfg.tx_ring_ref).map_err(|e| format!("mapping tx-ring-ref: {e:?}"))?;
        let rx = rt::xen::map_grant(self.xen, id.0, cfg.rx_ring_ref).map_err(|e| format!("mapping rx-ring-ref: {e:?}"))?;
        let nb = Netback::new(tx, rx, cfg.features, RxQueueLimits::default()).map_err(|e| format!("rings: {e}"))?;
        let (tx_port, rx_port) = match cfg.events {
            EventChannels::Shared(p) => (self.bind(id.0, p)?, None),
            EventChannels::Split { tx, rx } => {
                let t = self.bind(id.0, tx)?;
                match self.bind(id.0, rx) {
                    Ok(r) => (t, Some(r)),
                    Err(e) => {
                        let _ = self.events.close(t);
                        return Err(e);
                    }
                }
            }
        };
        let conn = Conn {
            nb,
            grants: XenGrants::new(self.xen, id.0),
            tx_port,
            rx_port,
            more_tx: true,
            throttled_until: None,
            rx_kick: true,
        };
        let Some(v) = self.vifs.get_mut(&id) else { return Err("unknown vif".into()) };
        v.conn = Some(conn);
        v.reported = Stats::default();
        let mac = v.mac.as_ref().map_or("?".to_string(), fmt_mac);
        let (qos, ceiling) = self.apply_qos(store, id, &keys);
        log::info!(
            "ICONNECT-VIF {}/{} up mac={mac} qos={qos} ceiling_bps={} sg={} split_events={} rx_notify={}",
            id.0,
            id.1,
            ceiling.map_or("none".to_string(), |c| c.to_string()),
            cfg.features.sg,
            rx_port.is_some(),
            cfg.features.rx_notify
        );
        Ok(())
    }

    fn bind(&self, remote: u16, port: u32) -> Result<Port, String> {
        self.events.bind_interdomain(remote, port).map_err(|e| format!("binding event channel {port}: {e:?}"))
    }

    /// Evaluates the vif's QoS request (frontend keys) against the link and `rate=` (backend
    /// key), writes the decision into the backend directory and sets the engine's ceiling.
    /// Returns (`granted|refused|none`, the ceiling now enforced).
    fn apply_qos(&mut self, store: &mut Store, id: VifId, fe_keys: &Keys) -> (&'static str, Option<u64>) {
        let Some(v) = self.vifs.get_mut(&id) else { return ("none", None) };
        if let Some(g) = v.qos.take() {
            self.admission.release(&g);
        }
        let be = v.be.clone();
        let rate = match store.read_opt(&format!("{be}/{}", qos::XEN_RATE)) {
            Ok(Some(r)) => match XenRate::parse(&r) {
                Ok(r) => Some(r),
                Err(_) => {
                    log::warn!("vif {}/{}: rate {r:?} invalid; ignored", id.0, id.1);
                    None
                }
            },
            _ => None,
        };
        let decision = match NetQosRequest::from_keys(fe_keys).and_then(|r| r.map(|r| r.with_admin_ceiling(rate)).transpose()) {
            Ok(None) => None,
            Ok(Some(req)) => Some(self.admission.admit(&req)),
            Err(e) => Some(Decision::invalid(e)),
        };
        let admin = rate.map(|r| r.bits_per_second());
        let (label, ceiling) = match &decision {
            None => ("none", admin),
            Some(Decision::Granted(g)) => ("granted", Some(g.ceiling_bps)),
            Some(Decision::Refused { .. }) => ("refused", admin),
        };
        if let Some(d) = &decision {
            for k in [
                qos::ANSWER.status,
                qos::ANSWER.reason,
                qos::ANSWER.error_key,
                qos::GRANTED_GUARANTEED,
                qos::GRANTED_CEILING,
                qos::GRANTED_BURST,
                qos::GRANTED_CLASS,
            ] {
                let _ = store.rm(&format!("{be}/{k}"));
            }
            if let Err(e) = qos::write_decision(d, &mut StoreSink { store, dir: &be }) {
                log::warn!("vif {}/{}: writing the QoS decision: {e:?}", id.0, id.1);
            }
        }
        let Some(v) = self.vifs.get_mut(&id) else { return (label, ceiling) };
        if let Some(Decision::Granted(g)) = decision {
            v.qos = Some(g);
        }
        if let Some(c) = &mut v.conn {
            let now_us = rt::time::now().as_micros();
            let limit = ceiling.map(|bps| XenRate {
                bytes: (bps / 8 / (1_000_000 / u64::from(RATE_WINDOW_US))).max(1),
                usecs: RATE_WINDOW_US,
            });
            c.nb.set_tx_rate(limit, now_us);
            c.more_tx = true;
        }
        if decision.is_some() {
            log::info!(
                "ICONNECT-VIF {}/{} qos={label} ceiling_bps={}",
                id.0,
                id.1,
                ceiling.map_or("none".to_string(), |c| c.to_string())
            );
        }
        (label, ceiling)
    }

    /// Stops serving the vif's rings: ports closed, rings unmapped, QoS reservation returned.
    fn disconnect(&mut self, id: VifId, reason: &str) {
        let Some(v) = self.vifs.get_mut(&id) else { return };
        let Some(c) = v.conn.take() else { return };
        let _ = self.events.close(c.tx_port);
        if let Some(p) = c.rx_port {
            let _ = self.events.close(p);
        }
        let s = *c.nb.stats();
        drop(c); // unmaps both ring pages
        if let Some(g) = v.qos.take() {
            self.admission.release(&g);
        }
        self.bridge.remove(id);
        log::info!(
            "ICONNECT-VIF {}/{} down reason={reason} tx_packets={} rx_packets={} mapped_grants={}",
            id.0,
            id.1,
            s.tx_packets,
            s.rx_packets,
            rt::xen::mapped_grants()
        );
    }

    fn remove(&mut self, store: &mut Store, id: VifId, reason: &str) {
        self.disconnect(id, reason);
        if let Some(v) = self.vifs.remove(&id) {
            let _ = store.unwatch(&v.fe, &format!("fe:{}:{}", id.0, id.1));
            log::info!("vif {}/{}: removed ({reason})", id.0, id.1);
        }
    }

    /// Moves frames: every vif's TX ring into the bridge, the bridge's output into RX rings.
    pub fn poll_data(&mut self, store: &mut Store, now: Instant) -> Next {
        let now_us = now.as_micros();
        let mut broken = Vec::new();
        let frames = &mut self.frames;
        for (id, v) in self.vifs.iter_mut() {
            let Some(c) = &mut v.conn else { continue };
            let fired_tx = self.events.take(c.tx_port);
            let fired_rx = match c.rx_port {
                Some(p) => self.events.take(p),
                None => fired_tx,
            };
            c.rx_kick |= fired_rx;
            let due = c.throttled_until.is_some_and(|t| t <= now_us);
            if fired_tx || c.more_tx || due {
                let id = *id;
                match c.nb.poll_tx(now_us, &mut c.grants, BUDGET, |f| {
                    frames.push((id, f.data.to_vec(), RxMeta::from_tx(&f)));
                }) {
                    Ok(p) => {
                        if p.notify {
                            let _ = self.events.notify(c.tx_port);
                        }
                        c.more_tx = p.more;
                        c.throttled_until = p.throttled_until;
                    }
                    Err(e) => broken.push((id, e)),
                }
            }
        }
        for (src, data, meta) in core::mem::take(&mut self.frames) {
            let pinned = self.vifs.get(&src).and_then(|v| v.mac);
            match self.bridge.forward(src, pinned, &data) {
                Forward::Drop => {}
                Forward::One(dst) => {
                    if let Some(c) = self.vifs.get_mut(&dst).and_then(|v| v.conn.as_mut()) {
                        let _ = c.nb.queue_rx(&data, meta);
                    }
                }
                Forward::Flood => {
                    for (id, v) in self.vifs.iter_mut() {
                        if *id != src
                            && let Some(c) = &mut v.conn
                        {
                            let _ = c.nb.queue_rx(&data, meta);
                        }
                    }
                }
            }
        }
        let mut next = Next::Idle;
        for (id, v) in self.vifs.iter_mut() {
            let Some(c) = &mut v.conn else { continue };
            if c.rx_kick || c.nb.rx_queued() > 0 {
                c.rx_kick = false;
                match c.nb.poll_rx(&mut c.grants, BUDGET) {
                    Ok(p) => {
                        if p.notify {
                            let _ = self.events.notify(c.rx_port());
                        }
                        if p.queued > 0 && !p.waiting_for_buffers {
                            next = Next::Now;
                        }
                    }
                    Err(e) => broken.push((*id, e)),
                }
            }
            if c.more_tx {
                next = Next::Now;
            } else if let Some(t) = c.throttled_until
                && next != Next::Now
            {
                let at = now + Duration::from_micros(t.saturating_sub(now_us));
                next = match next {
                    Next::At(a) if a <= at => Next::At(a),
                    _ => Next::At(at),
                };
            }
        }
        for (id, e) in broken {
            // Linux netback disables a vif that broke the protocol; so do we (its xenbus state
            // stays, the frontend's next Closing/Closed cleans up).
            log::warn!("vif {}/{}: frontend broke the protocol: {e}", id.0, id.1);
            self.disconnect(id, "protocol-error");
        }
        let _ = store;
        next
    }

    /// Prints `ICONNECT-VIFSTAT` for every connected vif whose counters moved.
    pub fn report_stats(&mut self) {
        for (id, v) in self.vifs.iter_mut() {
            let Some(c) = &v.conn else { continue };
            let s = *c.nb.stats();
            if s == v.reported {
                continue;
            }
            v.reported = s;
            let drops = s.rx_queue_full + s.rx_bad_size + s.rx_csum_errors + s.rx_copy_errors;
            let errors = s.tx_malformed + s.tx_unsupported + s.tx_copy_errors;
            log::info!(
                "ICONNECT-VIFSTAT {}/{} tx_packets={} tx_bytes={} rx_packets={} rx_bytes={} drops={drops} tx_errors={errors}",
                id.0,
                id.1,
                s.tx_packets,
                s.tx_bytes,
                s.rx_packets,
                s.rx_bytes
            );
        }
    }
}

/// `<fe>:<dev>` of a frontend watch token.
fn parse_token(s: &str) -> Option<VifId> {
    let (fe, dev) = s.split_once(':')?;
    Some((u16::try_from(parse_id(fe)?).ok()?, parse_id(dev)?))
}
