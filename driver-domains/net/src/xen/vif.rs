//! The vifs of this driver domain: xenbus control plane and per-vif data path.
//!
//! Everything read from xenstore is untrusted: paths and ids are parsed strictly, the
//! frontend's keys by `netback::FrontendConfig::from_keys` and `iconnect`, grant references and
//! event-channel ports are checked by Xen (a failure refuses the connection, never panics).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use iconnect::qos::{self, NetQosRequest, XenRate};
use iconnect::{Decision, KeySink, KeySource};
use net_dd::switch::{self, PortCounters, QosDecision, Switch, Wire};
use netback::engine::RxQueueLimits;
use netback::negotiate::EventChannels;
use netback::{BackendFeatures, FrontendConfig, Netback};
use netswitch::{Mac, PortId};
use xen_abi::xenbus::{BackendFsm, BackendInput, BackendOutput, XenbusState};
use xen_domain::{DomainError, Events, MappedGrant, Port, Store, Xen};

use super::grants::XenGrants;

/// A vif: (frontend domid, device id).
pub type VifId = (u16, u32);

/// Watch token of the backend directory.
const BACKEND_TOKEN: &str = "be";

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

/// A connected vif: its switch port and event channels (the engine lives in the switch).
struct Conn {
    port: PortId,
    tx_port: Port,
    /// The RX port when the frontend split its event channels.
    rx_port: Option<Port>,
}

/// One vif.
struct Vif {
    be: String,
    fe: String,
    fsm: BackendFsm,
    /// The MAC xl gave the guest (backend `mac`): the only source it may send from.
    mac: Option<Mac>,
    conn: Option<Conn>,
    /// `rate=` of the xl config (backend `rate`), an administrative ceiling.
    rate: Option<XenRate>,
    /// Counters at the last stats line.
    reported: PortCounters,
}

/// All vifs of this driver domain, attached as guest ports of net-dd's switch.
pub struct Backend {
    xen: Xen,
    events: Events,
    base: String,
    features: BackendFeatures,
    /// The switch: guest ports (netback engines over mapped rings), the domain's stack.
    pub sw: Switch<MappedGrant, XenGrants>,
    vifs: BTreeMap<VifId, Vif>,
    /// Vifs removed by their state machine whose backend directory still exists: not re-created
    /// until the toolstack removes the directory.
    retired: BTreeSet<VifId>,
}

fn ns(t: rt::time::Instant) -> u64 {
    t.as_nanos()
}

impl Backend {
    /// Serves the vifs under `base` (`/local/domain/<self>/backend/vif`) through `sw`.
    pub fn new(xen: Xen, events: Events, base: String, sw: Switch<MappedGrant, XenGrants>) -> Self {
        Self { xen, events, base, features: BackendFeatures::default(), sw, vifs: BTreeMap::new(), retired: BTreeSet::new() }
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
        let mac = store.read_opt(&format!("{be}/mac"))?.as_deref().and_then(Mac::parse);
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
                self.requalify(store, id, &keys);
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
            let be = self.vifs.get(&id).map(|v| v.be.clone());
            self.remove(store, id, "removed");
            if let Some(be) = be {
                // In a driver domain the backend removes its own directory (Linux: `xl devd`);
                // libxl waits for that before it finishes destroying the frontend's domain.
                let _ = store.rm(&be);
                let parent = format!("{}/{}", self.base, id.0);
                if store.directory(&parent).is_ok_and(|d| d.is_empty()) {
                    let _ = store.rm(&parent);
                }
            } else {
                self.retired.insert(id);
            }
        }
        if let Some(n) = next {
            self.apply(store, id, n);
        }
    }

    /// Reads the frontend's keys, maps its rings, binds its event channels, attaches it to the
    /// switch with its QoS request and writes the decision.
    fn connect(&mut self, store: &mut Store, id: VifId) -> Result<(), String> {
        let Some(v) = self.vifs.get(&id) else { return Err("unknown vif".into()) };
        let (fe, be) = (v.fe.clone(), v.be.clone());
        let mac = v.mac.ok_or("no valid mac in the backend directory")?;
        let keys = Keys::read(store, &fe).map_err(|e| format!("reading frontend keys: {e:?}"))?;
        let cfg = FrontendConfig::from_keys(&keys, &self.features).map_err(|e| format!("frontend keys: {e}"))?;
        let rate = read_rate(store, &be, id);
        let port = (0..switch::MAX_GUESTS)
            .filter_map(switch::guest_port)
            .find(|p| !self.sw.is_attached(*p))
            .ok_or("no free switch port")?;
        let tx = rt::xen::map_grant(self.xen, id.0, cfg.tx_ring_ref).map_err(|e| format!("mapping tx-ring-ref: {e:?}"))?;
        let rx = rt::xen::map_grant(self.xen, id.0, cfg.rx_ring_ref).map_err(|e| format!("mapping rx-ring-ref: {e:?}"))?;
        let nb = Netback::new(tx, rx, cfg.features, RxQueueLimits::default()).map_err(|e| format!("rings: {e}"))?;
        let now = rt::time::now();
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
        let request = qos_request(&keys, rate);
        let asked = !matches!(request, Ok(None));
        let decision = match self.sw.attach(port, nb, XenGrants::new(self.xen, id.0), mac, admin_only(request, rate), ns(now)) {
            Ok(d) => d,
            Err(e) => {
                let _ = self.events.close(tx_port);
                if let Some(p) = rx_port {
                    let _ = self.events.close(p);
                }
                return Err(e.reason().into());
            }
        };
        if asked {
            write_decision(store, &be, id, &decision);
        }
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

    fn bind(&self, remote: u16, port: u32) -> Result<Port, String> {
        self.events.bind_interdomain(remote, port).map_err(|e| format!("binding event channel {port}: {e:?}"))
    }

    /// The connected guest changed its QoS keys: decide again, write the answer.
    fn requalify(&mut self, store: &mut Store, id: VifId, fe_keys: &Keys) {
        let Some(v) = self.vifs.get(&id) else { return };
        let Some(port) = v.conn.as_ref().map(|c| c.port) else { return };
        let (be, rate) = (v.be.clone(), v.rate);
        let now = ns(rt::time::now());
        let request = qos_request(fe_keys, rate);
        let asked = !matches!(request, Ok(None));
        let Some(decision) = self.sw.requalify(port, admin_only(request, rate), now) else { return };
        if asked {
            write_decision(store, &be, id, &decision);
        }
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
        let _ = self.events.close(c.tx_port);
        if let Some(p) = c.rx_port {
            let _ = self.events.close(p);
        }
        log::info!(
            "ICONNECT-VIF {}/{} down port={} reason={reason} tx_frames={} rx_frames={} drops={} mapped_grants={}",
            id.0,
            id.1,
            c.port,
            counters.tx_frames,
            counters.rx_frames,
            counters.drops,
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

    /// Event channels that fired become doorbells of their switch ports; `sweep` rings every
    /// port (a safety net: the engines arm their event indices, so nothing should be missed).
    pub fn doorbells(&mut self, sweep: bool) {
        for v in self.vifs.values() {
            let Some(c) = &v.conn else { continue };
            let tx = self.events.take(c.tx_port);
            let rx = c.rx_port.is_some_and(|p| self.events.take(p));
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
                        let _ = self.events.notify(c.tx_port);
                    }
                    if rx {
                        let _ = self.events.notify(rxp);
                    }
                }
                None => {
                    if tx || rx {
                        let _ = self.events.notify(c.tx_port);
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
fn read_rate(store: &mut Store, be: &str, id: VifId) -> Option<XenRate> {
    let r = store.read_opt(&format!("{be}/{}", qos::XEN_RATE)).ok()??;
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
fn write_decision(store: &mut Store, be: &str, id: VifId, d: &QosDecision) {
    let Some(d) = d else { return };
    let mut keys = iconnect::keys::ArraySink::<8, 48>::default();
    if let Err(e) = qos::write_decision(d, &mut keys) {
        log::warn!("vif {}/{}: QoS decision: {e:?}", id.0, id.1);
        return;
    }
    for (k, v) in keys.pairs() {
        if store.read_opt(&format!("{be}/{k}")).ok().flatten().as_deref() != Some(v)
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

/// The switch's non-guest ends on Xen: the uplink (net-dd's own netfront, if it has a vif;
/// else frames for it are dropped and counted) and the domain's own stack.
pub struct XenWire<'a> {
    /// The stack's device.
    pub stack: &'a mut net_dd::stackdev::QueueDevice,
    /// The uplink.
    pub uplink: Option<&'a mut super::uplink::Uplink>,
}

impl Wire for XenWire<'_> {
    fn uplink_ready(&mut self) -> bool {
        // Without an uplink, frames for it are dropped (never a stall).
        self.uplink.as_ref().is_none_or(|u| u.ready(net_dd::stackdev::MAX_FRAME))
    }
    fn uplink_send(&mut self, frame: &[u8]) -> bool {
        self.uplink.as_mut().is_some_and(|u| u.send(frame))
    }
    fn stack_deliver(&mut self, frame: &[u8]) {
        self.stack.deliver(frame);
    }
}

/// `<fe>:<dev>` of a frontend watch token.
fn parse_token(s: &str) -> Option<VifId> {
    let (fe, dev) = s.split_once(':')?;
    Some((u16::try_from(parse_id(fe)?).ok()?, parse_id(dev)?))
}
