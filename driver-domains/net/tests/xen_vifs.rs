//! net-dd's Xen vif control plane (`net_dd::vifctl`) on the host, against the real pieces
//! wherever they can run: the xenstore client and the in-memory daemon (`xenstore::sim`, each
//! domain on its own ring page) laid out as libxl and Linux xen-netfront lay it out, the real
//! `Switch` and `netback` engines, and the real `netfront` engine as each Linux guest. Only the
//! hypervisor is a fake ([`Hv`]): granted pages are `HostMem` pages (a ring page the backend
//! "maps" is the very page the guest's `FrontRing` writes), event channels are a port table.
//! Time is simulated. The last section runs net-dd's own uplink netfront (`net_dd::xenuplink`)
//! against a vif backend in dom0.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use iconnect::qos::{self, NetQosRequest};
use iconnect::{Decision, KeySource, RefuseReason};
use net_dd::switch::{self, STACK, UPLINK, Wire};
use net_dd::vifctl::{self, Backend, StoreAccess, StoreError, VifPlatform};
use net_dd::xenuplink::{self, FrontPlatform, Uplink};
use netback::GrantAccess;
use netfront::{Buffers, Config, Netfront};
use netswitch::Mac;
use proptest::prelude::*;
use xen_abi::GrantRef;
use xen_abi::netif::{RxRing, TxRing};
use xen_abi::ring::FrontRing;
use xen_abi::shmem::{HostMem, SharedMem};
use xenstore::client::reply;
use xenstore::sim::{Connection, Server};
use xenstore::{Client, Request, Side, TxId, WatchEvent, XsError, XsRing};

const MS: u64 = 1_000_000;
/// net-dd's domain id.
const DD: u16 = 1;
const DOM0: u16 = 0;
const STACK_MAC: Mac = Mac([0x02, 0x16, 0x3e, 0xdd, 0, 1]);
const BASE: &str = "/local/domain/1/backend/vif";
/// Grant refs of a guest's ring pages; its buffers start at `FIRST_BUF`.
const TX_REF: GrantRef = 8;
const RX_REF: GrantRef = 9;
const FIRST_BUF: GrantRef = 16;

// ---------------------------------------------------------------- log capture (markers)

thread_local! {
    static LINES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        LINES.with(|l| l.borrow_mut().push(format!("{}", r.args())));
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

/// Log lines of this test (thread) so far that contain `text`.
fn logged(text: &str) -> Vec<String> {
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Info);
    LINES.with(|l| l.borrow().iter().filter(|s| s.contains(text)).cloned().collect())
}

// ---------------------------------------------------------------- xenstore (real client + sim)

struct Dom {
    client: Client,
    ring: XsRing<HostMem>,
}

/// The in-memory daemon with one real client connection per domain.
struct Xs {
    server: Server<HostMem>,
    doms: BTreeMap<u16, Dom>,
    /// Paths under which net-dd's reads are refused with `EACCES` (a frontend directory the
    /// toolstack already took away).
    denied: Vec<String>,
}

impl Xs {
    fn new() -> Self {
        Self { server: Server::new(), doms: BTreeMap::new(), denied: Vec::new() }
    }

    fn connect(&mut self, domid: u16) {
        let page = HostMem::new(4096);
        self.server.connections.push(Connection::new(domid, XsRing::new(page.clone(), Side::Server).unwrap()));
        self.doms.insert(domid, Dom { client: Client::new(), ring: XsRing::new(page, Side::Client).unwrap() });
    }

    fn call(&mut self, domid: u16, tx: TxId, req: Request<'_>) -> Result<Vec<u8>, XsError> {
        let Xs { server, doms, .. } = self;
        let d = doms.get_mut(&domid).expect("connected domain");
        let id = d.client.send(tx, req)?;
        for _ in 0..10_000 {
            d.client.pump(&mut d.ring)?;
            server.run();
            d.client.pump(&mut d.ring)?;
            if let Some(r) = d.client.take_reply(id) {
                return r;
            }
        }
        panic!("no reply from the daemon");
    }

    /// Watch events queued for `domid`.
    fn events(&mut self, domid: u16) -> Vec<WatchEvent> {
        let Xs { server, doms, .. } = self;
        let d = doms.get_mut(&domid).expect("connected domain");
        let mut out = Vec::new();
        loop {
            let p = d.client.pump(&mut d.ring).expect("client");
            server.run();
            let q = d.client.pump(&mut d.ring).expect("client");
            let before = out.len();
            while let Some(ev) = d.client.take_watch_event() {
                out.push(ev);
            }
            if !p.any() && !q.any() && out.len() == before {
                return out;
            }
        }
    }

    fn get(&self, path: &str) -> Option<String> {
        self.server.store.get(path).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Domain `domid` writes `pairs` in one transaction (as libxl and xen-netfront do).
    fn write_tx(&mut self, domid: u16, pairs: &[(String, String)]) {
        loop {
            let tx = reply::tx_id(&self.call(domid, TxId::NONE, Request::TransactionStart).unwrap()).unwrap();
            for (k, v) in pairs {
                self.call(domid, tx, Request::Write(k, v.as_bytes())).unwrap();
            }
            match self.call(domid, tx, Request::TransactionEnd(true)) {
                Ok(_) => return,
                Err(XsError::Again) => continue,
                Err(e) => panic!("commit: {e:?}"),
            }
        }
    }

    fn write(&mut self, domid: u16, path: &str, value: &str) {
        self.call(domid, TxId::NONE, Request::Write(path, value.as_bytes())).unwrap();
    }

    fn rm(&mut self, domid: u16, path: &str) {
        let _ = self.call(domid, TxId::NONE, Request::Rm(path));
    }
}

#[derive(Debug)]
struct SimError(XsError);

impl StoreError for SimError {
    fn is_denied(&self) -> bool {
        self.0 == XsError::Denied
    }
}

/// A domain's session with the daemon (net-dd's, or dom0's backend's).
struct DomStore<'a>(&'a mut Xs, u16);

impl DomStore<'_> {
    fn check(&self, path: &str) -> Result<(), SimError> {
        if self.0.denied.iter().any(|d| path.starts_with(d.as_str())) { Err(SimError(XsError::Denied)) } else { Ok(()) }
    }

    fn ok(&mut self, req: Request<'_>) -> Result<Vec<u8>, SimError> {
        self.0.call(self.1, TxId::NONE, req).map_err(SimError)
    }
}

impl StoreAccess for DomStore<'_> {
    type Error = SimError;

    fn read(&mut self, path: &str) -> Result<Option<String>, SimError> {
        self.check(path)?;
        match self.ok(Request::Read(path)) {
            Ok(v) => Ok(Some(reply::text(&v).map_err(SimError)?)),
            Err(SimError(XsError::NoEntry)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn directory(&mut self, path: &str) -> Result<Option<Vec<String>>, SimError> {
        self.check(path)?;
        match self.ok(Request::Directory(path)) {
            Ok(v) => Ok(Some(reply::list(&v).map_err(SimError)?)),
            Err(SimError(XsError::NoEntry)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write(&mut self, path: &str, value: &str) -> Result<(), SimError> {
        self.ok(Request::Write(path, value.as_bytes())).map(drop)
    }

    fn rm(&mut self, path: &str) -> Result<(), SimError> {
        self.ok(Request::Rm(path)).map(drop)
    }

    fn watch(&mut self, path: &str, token: &str) -> Result<(), SimError> {
        self.ok(Request::Watch(path, token)).map(drop)
    }

    fn unwatch(&mut self, path: &str, token: &str) -> Result<(), SimError> {
        self.ok(Request::Unwatch(path, token)).map(drop)
    }
}

// ---------------------------------------------------------------- the fake hypervisor

/// Grant tables, mappings and event channels of every domain.
#[derive(Default)]
struct Hv {
    /// Granted pages: (granting domain, ref) -> page.
    pages: BTreeMap<(u16, GrantRef), HostMem>,
    /// Grants the fake refuses to map (as Xen refuses a ref it does not like).
    unmappable: BTreeSet<(u16, GrantRef)>,
    /// Ring pages net-dd has mapped now.
    mapped: usize,
    /// Unbound ports a frontend allocated for net-dd: (frontend, port).
    unbound: BTreeSet<(u16, u32)>,
    /// net-dd's bound ports: local -> (frontend, its port).
    bound: BTreeMap<u32, (u16, u32)>,
    next_local: u32,
    /// net-dd's local ports that fired.
    dd_pending: BTreeSet<u32>,
    /// Notifications net-dd sent: (frontend, its port).
    fe_notified: Vec<(u16, u32)>,
    /// Frontend ports that fired (not taken yet).
    fe_pending: BTreeSet<(u16, u32)>,
    /// Ports allocated by frontends that run [`FakeFront`], per domain.
    fe_next_port: BTreeMap<u16, u32>,
    /// Make the next `alloc_unbound` of a [`FakeFront`] fail.
    refuse_ports: bool,
}

type HvRef = Rc<RefCell<Hv>>;

/// A ring page mapped by net-dd (counted; "unmapped" when dropped).
struct Mapped {
    mem: HostMem,
    hv: HvRef,
}

impl Drop for Mapped {
    fn drop(&mut self) {
        self.hv.borrow_mut().mapped -= 1;
    }
}

impl SharedMem for Mapped {
    fn len(&self) -> usize {
        self.mem.len()
    }
    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        self.mem.load_u32(off, order)
    }
    fn store_u32(&self, off: usize, val: u32, order: Ordering) {
        self.mem.store_u32(off, val, order)
    }
    fn load_u16(&self, off: usize) -> u16 {
        self.mem.load_u16(off)
    }
    fn store_u16(&self, off: usize, val: u16) {
        self.mem.store_u16(off, val)
    }
    fn load_u64(&self, off: usize) -> u64 {
        self.mem.load_u64(off)
    }
    fn store_u64(&self, off: usize, val: u64) {
        self.mem.store_u64(off, val)
    }
    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        self.mem.read_bytes(off, dst)
    }
    fn write_bytes(&self, off: usize, src: &[u8]) {
        self.mem.write_bytes(off, src)
    }
}

/// Grant copies against one frontend (checked like `GNTTABOP_copy`: ref and range).
struct Copies {
    hv: HvRef,
    dom: u16,
}

impl Copies {
    fn page(&self, gref: GrantRef, offset: u16, len: usize) -> Result<HostMem, netback::Error> {
        if usize::from(offset) + len > 4096 {
            return Err(netback::Error::GrantCopy);
        }
        self.hv.borrow().pages.get(&(self.dom, gref)).cloned().ok_or(netback::Error::GrantCopy)
    }
}

impl GrantAccess for Copies {
    fn copy_from(&mut self, gref: GrantRef, offset: u16, dst: &mut [u8]) -> Result<(), netback::Error> {
        self.page(gref, offset, dst.len())?.read_bytes(usize::from(offset), dst);
        Ok(())
    }
    fn copy_to(&mut self, gref: GrantRef, offset: u16, src: &[u8]) -> Result<(), netback::Error> {
        self.page(gref, offset, src.len())?.write_bytes(usize::from(offset), src);
        Ok(())
    }
}

#[derive(Debug)]
#[allow(dead_code)] // read through Debug in the refusal markers
enum HvError {
    BadGrant(u16, GrantRef),
    BadPort(u16, u32),
}

struct FakeXen {
    hv: HvRef,
}

impl VifPlatform for FakeXen {
    type Ring = Mapped;
    type Grants = Copies;
    type Port = u32;
    type Error = HvError;

    fn map_ring(&mut self, domid: u16, gref: GrantRef) -> Result<Mapped, HvError> {
        let mut hv = self.hv.borrow_mut();
        if hv.unmappable.contains(&(domid, gref)) {
            return Err(HvError::BadGrant(domid, gref));
        }
        let mem = hv.pages.get(&(domid, gref)).cloned().ok_or(HvError::BadGrant(domid, gref))?;
        hv.mapped += 1;
        Ok(Mapped { mem, hv: self.hv.clone() })
    }

    fn grants(&mut self, domid: u16) -> Copies {
        Copies { hv: self.hv.clone(), dom: domid }
    }

    fn bind(&mut self, domid: u16, remote_port: u32) -> Result<u32, HvError> {
        let mut hv = self.hv.borrow_mut();
        if !hv.unbound.remove(&(domid, remote_port)) {
            return Err(HvError::BadPort(domid, remote_port));
        }
        hv.next_local += 1;
        let local = hv.next_local;
        hv.bound.insert(local, (domid, remote_port));
        Ok(local)
    }

    fn close(&mut self, port: u32) {
        let mut hv = self.hv.borrow_mut();
        // As on Xen: the remote end becomes unbound again.
        if let Some(end) = hv.bound.remove(&port) {
            hv.unbound.insert(end);
        }
        hv.dd_pending.remove(&port);
    }

    fn notify(&mut self, port: u32) {
        let mut hv = self.hv.borrow_mut();
        let end = *hv.bound.get(&port).expect("notify on a bound port");
        hv.fe_notified.push(end);
        hv.fe_pending.insert(end);
    }

    fn take_event(&mut self, port: u32) -> bool {
        self.hv.borrow_mut().dd_pending.remove(&port)
    }

    fn mapped_rings(&self) -> usize {
        self.hv.borrow().mapped
    }
}

/// A guest's buffer pages, granted to net-dd.
struct GuestPages {
    hv: HvRef,
    dom: u16,
    next: GrantRef,
    free: Vec<GrantRef>,
}

impl GuestPages {
    fn page(&self, r: GrantRef) -> Result<HostMem, netfront::Error> {
        self.hv.borrow().pages.get(&(self.dom, r)).cloned().ok_or(netfront::Error::Buffer)
    }
}

impl Buffers for GuestPages {
    fn alloc(&mut self) -> Option<GrantRef> {
        if let Some(r) = self.free.pop() {
            return Some(r);
        }
        let r = self.next;
        self.next += 1;
        self.hv.borrow_mut().pages.insert((self.dom, r), HostMem::new(4096));
        Some(r)
    }
    fn free(&mut self, page: GrantRef) {
        self.free.push(page);
    }
    fn write(&mut self, page: GrantRef, offset: usize, src: &[u8]) -> Result<(), netfront::Error> {
        self.page(page)?.write_bytes(offset, src);
        Ok(())
    }
    fn read(&mut self, page: GrantRef, offset: usize, dst: &mut [u8]) -> Result<(), netfront::Error> {
        self.page(page)?.read_bytes(offset, dst);
        Ok(())
    }
}

// ---------------------------------------------------------------- guests and the world

/// A Linux guest's netfront: its rings, event channels and the real engine.
struct Guest {
    dom: u16,
    dev: u32,
    mac: Mac,
    nf: Option<Netfront<HostMem, GuestPages>>,
    /// Its event channel(s): (tx, rx) — equal when not split.
    ports: (u32, u32),
    rx: Vec<Vec<u8>>,
}

impl Guest {
    fn fe(&self) -> String {
        format!("/local/domain/{}/device/vif/{}", self.dom, self.dev)
    }
    fn be(&self) -> String {
        format!("{BASE}/{}/{}", self.dom, self.dev)
    }
}

#[derive(Default)]
struct FakeWire {
    uplink: Vec<Vec<u8>>,
    stack: Vec<Vec<u8>>,
}

impl Wire for FakeWire {
    fn uplink_ready(&mut self) -> bool {
        true
    }
    fn uplink_send(&mut self, frame: &[u8]) -> bool {
        self.uplink.push(frame.to_vec());
        true
    }
    fn stack_deliver(&mut self, frame: &[u8]) {
        self.stack.push(frame.to_vec());
    }
}

/// What a guest's xen-netfront writes into its directory before switching to Connected.
#[derive(Clone, Copy)]
struct Netfront0 {
    split: bool,
}

struct World {
    xs: Xs,
    hv: HvRef,
    be: Backend<FakeXen>,
    wire: FakeWire,
    guests: Vec<Guest>,
    now: u64,
}

fn mac_of(dom: u16) -> Mac {
    vif_mac(dom, 0)
}

/// The MAC xl gives device `dev` of domain `dom` here.
fn vif_mac(dom: u16, dev: u32) -> Mac {
    Mac([0x00, 0x16, 0x3e, 0x77, dev as u8, dom as u8])
}

fn frame(dst: Mac, src: Mac, len: usize, tag: u32) -> Vec<u8> {
    let mut f = dst.0.to_vec();
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(&tag.to_le_bytes());
    f.resize(len, (tag % 251) as u8);
    f
}

fn kv(k: impl Into<String>, v: impl Into<String>) -> (String, String) {
    (k.into(), v.into())
}

impl World {
    fn new(link_bps: u64) -> Self {
        let _ = logged("");
        let mut xs = Xs::new();
        xs.connect(DOM0);
        xs.connect(DD);
        let hv: HvRef = Rc::default();
        let sw = switch::Switch::new(link_bps, STACK_MAC, 0);
        let be = Backend::new(FakeXen { hv: hv.clone() }, BASE.to_string(), sw);
        let mut w = World { xs, hv, be, wire: FakeWire::default(), guests: Vec::new(), now: 0 };
        w.be.watch(&mut DomStore(&mut w.xs, DD)).unwrap();
        w.settle();
        w
    }

    /// The toolstack creates guest `dom`'s vif `dev` with `backend=net-dd` (libxl's layout,
    /// no hotplug script), `rate` if given; returns the guest's index.
    fn create_vif(&mut self, dom: u16, dev: u32, rate: Option<&str>) -> usize {
        self.create_vif_with_mac(dom, dev, &vif_mac(dom, dev).to_string(), rate)
    }

    /// [`create_vif`](Self::create_vif) with the `mac` the toolstack writes.
    fn create_vif_with_mac(&mut self, dom: u16, dev: u32, mac: &str, rate: Option<&str>) -> usize {
        if !self.xs.doms.contains_key(&dom) {
            self.xs.connect(dom);
        }
        let g = Guest { dom, dev, mac: Mac::parse(mac).unwrap_or(vif_mac(dom, dev)), nf: None, ports: (0, 0), rx: Vec::new() };
        let (fe, be) = (g.fe(), g.be());
        let mac = mac.to_string();
        let mut pairs = vec![
            kv(format!("{be}/frontend"), fe.clone()),
            kv(format!("{be}/frontend-id"), dom.to_string()),
            kv(format!("{be}/online"), "1"),
            kv(format!("{be}/state"), "1"),
            kv(format!("{be}/mac"), mac.clone()),
            kv(format!("{be}/handle"), dev.to_string()),
            kv(format!("{be}/type"), "vif"),
            kv(format!("{fe}/backend"), be.clone()),
            kv(format!("{fe}/backend-id"), DD.to_string()),
            kv(format!("{fe}/state"), "1"),
            kv(format!("{fe}/handle"), dev.to_string()),
            kv(format!("{fe}/mac"), mac),
        ];
        if let Some(r) = rate {
            pairs.push(kv(format!("{be}/rate"), r));
        }
        self.xs.write_tx(DOM0, &pairs);
        self.guests.push(g);
        self.guests.len() - 1
    }

    /// The keys Linux xen-netfront writes (`talk_to_netback`), for guest `i`, after granting
    /// its ring pages and allocating its event channel(s).
    fn linux_keys(&mut self, i: usize, how: Netfront0) -> Vec<(String, String)> {
        let g = &self.guests[i];
        let (tx_port, rx_port) = if how.split { (3, 4) } else { (3, 3) };
        let mut hv = self.hv.borrow_mut();
        hv.unbound.insert((g.dom, tx_port));
        hv.unbound.insert((g.dom, rx_port));
        drop(hv);
        self.guests[i].ports = (tx_port, rx_port);
        let mut keys = vec![
            kv("tx-ring-ref", TX_REF.to_string()),
            kv("rx-ring-ref", RX_REF.to_string()),
            kv("request-rx-copy", "1"),
            kv("feature-rx-notify", "1"),
            kv("feature-sg", "1"),
            kv("feature-gso-tcpv4", "1"),
            kv("feature-gso-tcpv6", "1"),
            kv("feature-ipv6-csum-offload", "1"),
        ];
        if how.split {
            keys.push(kv("event-channel-tx", tx_port.to_string()));
            keys.push(kv("event-channel-rx", rx_port.to_string()));
        } else {
            keys.push(kv("event-channel", tx_port.to_string()));
        }
        keys
    }

    /// Guest `i` sets up its rings (zeroed pages, initialised front rings, RX buffers posted),
    /// writes `keys` in one transaction and switches to Connected.
    fn frontend_connect(&mut self, i: usize, keys: &[(String, String)]) {
        let (dom, fe) = (self.guests[i].dom, self.guests[i].fe());
        let (tx, rx) = (HostMem::new(4096), HostMem::new(4096));
        {
            let mut hv = self.hv.borrow_mut();
            hv.pages.insert((dom, TX_REF), tx.clone());
            hv.pages.insert((dom, RX_REF), rx.clone());
        }
        let bufs = GuestPages { hv: self.hv.clone(), dom, next: FIRST_BUF, free: Vec::new() };
        let nf = Netfront::new(
            FrontRing::<_, TxRing>::init(tx).unwrap(),
            FrontRing::<_, RxRing>::init(rx).unwrap(),
            bufs,
            Config { sg: true, tx_buffers: 64, rx_buffers: 64 },
        );
        self.guests[i].nf = Some(nf);
        let pairs: Vec<_> = keys.iter().map(|(k, v)| kv(format!("{fe}/{k}"), v.clone())).collect();
        self.xs.write_tx(dom, &pairs);
        self.xs.write(dom, &format!("{fe}/state"), "4");
    }

    /// The usual guest: created, connected like Linux, settled.
    fn guest(&mut self, dom: u16, how: Netfront0, rate: Option<&str>) -> usize {
        let i = self.create_vif(dom, 0, rate);
        self.settle();
        let keys = self.linux_keys(i, how);
        self.frontend_connect(i, &keys);
        self.settle();
        i
    }

    /// One round of net-dd's loop (watch events, doorbells, switch) and of every guest.
    fn step(&mut self) {
        for ev in self.xs.events(DD) {
            self.be.on_watch(&mut DomStore(&mut self.xs, DD), &ev.path, &ev.token, self.now);
        }
        self.be.tick(&mut DomStore(&mut self.xs, DD), self.now);
        for g in &mut self.guests {
            let Some(nf) = g.nf.as_mut() else { continue };
            if nf.broken().is_none() && nf.poll().is_ok() {
                while let Ok(Some(f)) = nf.recv() {
                    g.rx.push(f.data.clone());
                    nf.recycle(f.data);
                }
            }
            let n = nf.take_notify();
            let mut hv = self.hv.borrow_mut();
            for (fire, remote) in [(n.tx, g.ports.0), (n.rx, g.ports.1)] {
                let local = hv.bound.iter().find(|(_, e)| **e == (g.dom, remote)).map(|(l, _)| *l);
                if let (true, Some(l)) = (fire, local) {
                    hv.dd_pending.insert(l);
                }
            }
        }
        self.be.doorbells(false);
        self.be.sw.pump(self.now, &mut self.wire);
        self.be.sw.flush();
        self.be.after_switch();
        self.now += MS;
    }

    fn settle(&mut self) {
        for _ in 0..30 {
            self.step();
        }
        // A QoS change held back by net-dd's re-read interval is answered once it is due.
        for _ in 0..(2 * net_dd::vifctl::QOS_REREAD_NS / MS) {
            if self.be.tick(&mut DomStore(&mut self.xs, DD), self.now).is_none() {
                break;
            }
            self.step();
        }
    }

    fn send(&mut self, i: usize, f: &[u8]) {
        self.guests[i].nf.as_mut().expect("guest connected").send(f).expect("room in the ring");
    }

    fn be_key(&self, i: usize, key: &str) -> Option<String> {
        self.xs.get(&format!("{}/{key}", self.guests[i].be()))
    }

    fn state(&self, i: usize) -> Option<String> {
        self.be_key(i, "state")
    }

    /// The QoS answer in guest `i`'s backend directory.
    fn decision(&self, i: usize) -> Option<Decision<qos::NetQosGrant>> {
        struct Dir<'a>(&'a World, usize);
        impl KeySource for Dir<'_> {
            fn get(&self, key: &str) -> Option<&str> {
                let path = format!("{}/{key}", self.0.guests[self.1].be());
                self.0.xs.server.store.get(&path).and_then(|v| std::str::from_utf8(v).ok())
            }
        }
        qos::read_decision(&Dir(self, i)).unwrap()
    }

    /// Every resource net-dd holds matches the vifs it reports connected.
    fn assert_consistent(&self) {
        let hv = self.hv.borrow();
        let connected: Vec<_> = self.be.vifs().filter(|(_, s)| s.port.is_some()).collect();
        let channels: usize = connected.iter().map(|(_, s)| 1 + usize::from(s.split_events)).sum();
        assert_eq!(hv.mapped, 2 * connected.len(), "two ring pages mapped per connected vif");
        assert_eq!(hv.bound.len(), channels, "event channels bound per connected vif");
        let ports: BTreeSet<_> = connected.iter().map(|(_, s)| s.port).collect();
        assert_eq!(ports.len(), connected.len(), "one switch port per connected vif");
        for (_, s) in &connected {
            assert!(self.be.sw.is_attached(s.port.unwrap()));
        }
    }
}

const LINUX: Netfront0 = Netfront0 { split: true };
const SHARED: Netfront0 = Netfront0 { split: false };

// ---------------------------------------------------------------- handshake and data path

#[test]
fn vif_connects_like_a_linux_netfront() {
    let mut w = World::new(1_000_000_000);
    let i = w.create_vif(5, 0, None);
    w.settle();
    // Probed: features advertised, plugged without a hotplug script, waiting for the frontend.
    assert_eq!(w.state(i).as_deref(), Some("2"), "InitWait");
    assert_eq!(w.be_key(i, "hotplug-status").as_deref(), Some("connected"));
    for (k, v) in [
        ("feature-rx-copy", "1"),
        ("feature-rx-flip", "0"),
        ("feature-sg", "1"),
        ("feature-split-event-channels", "1"),
    ] {
        assert_eq!(w.be_key(i, k).as_deref(), Some(v), "{k}");
    }
    assert_eq!(w.be.vif((5, 0)).unwrap().port, None);
    let keys = w.linux_keys(i, LINUX);
    w.frontend_connect(i, &keys);
    w.settle();
    assert_eq!(w.state(i).as_deref(), Some("4"), "Connected");
    let s = w.be.vif((5, 0)).unwrap();
    assert_eq!(s.port, switch::guest_port(0));
    assert!(s.split_events);
    assert_eq!(w.hv.borrow().mapped, 2);
    w.assert_consistent();
    let up = logged("ICONNECT-VIF 5/0 up ");
    assert_eq!(up.len(), 1, "{up:?}");
    assert!(
        up[0].starts_with("ICONNECT-VIF 5/0 up port=1 mac=00:16:3e:77:00:05 qos=none ceiling_bps=none sg=true split_events=true"),
        "{}",
        up[0]
    );
    // No QoS request: no answer written.
    assert_eq!(w.be_key(i, qos::ANSWER.status), None);
}

#[test]
fn frames_go_guest_to_guest_stack_and_uplink_both_ways() {
    let mut w = World::new(1_000_000_000);
    let a = w.guest(5, LINUX, None);
    let b = w.guest(6, SHARED, None);
    w.assert_consistent();
    assert!(!w.be.vif((6, 0)).unwrap().split_events);
    let (ma, mb) = (w.guests[a].mac, w.guests[b].mac);
    // a -> b, single and multi-slot frames.
    let f1 = frame(mb, ma, 60, 1);
    let f2 = frame(mb, ma, 1514, 2);
    w.send(a, &f1);
    w.send(a, &f2);
    w.settle();
    assert_eq!(w.guests[b].rx, vec![f1, f2]);
    // b -> a (b's one shared event channel carries both directions).
    let f3 = frame(ma, mb, 200, 3);
    w.send(b, &f3);
    w.settle();
    assert_eq!(w.guests[a].rx, vec![f3]);
    // To the domain's stack and out of the uplink.
    let f4 = frame(STACK_MAC, ma, 98, 4);
    let host = Mac([0x02, 0, 0, 0, 0, 2]);
    let f5 = frame(host, mb, 1000, 5);
    w.send(a, &f4);
    w.send(b, &f5);
    w.settle();
    assert!(w.wire.stack.contains(&f4));
    assert!(w.wire.uplink.contains(&f5), "{:?}", w.wire.uplink.len());
    // From the uplink and the stack into a guest.
    let f6 = frame(ma, host, 1400, 6);
    let f7 = frame(mb, STACK_MAC, 60, 7);
    let now = w.now;
    w.be.sw.input(UPLINK, &f6, now, &mut w.wire);
    w.be.sw.input(STACK, &f7, now, &mut w.wire);
    w.settle();
    assert_eq!(w.guests[a].rx.last(), Some(&f6));
    assert_eq!(w.guests[b].rx.last(), Some(&f7));
    // A guest may only send from the MAC xl gave it.
    let spoofed = frame(mb, Mac([0x00, 0x16, 0x3e, 0x66, 0, 1]), 60, 8);
    let before = w.guests[b].rx.len();
    w.send(a, &spoofed);
    w.settle();
    assert_eq!(w.guests[b].rx.len(), before, "spoofed frame dropped");
    assert!(w.be.sw.port_counters(switch::guest_port(0).unwrap()).unwrap().spoofed >= 1);
    // Net-dd notified the guests through their event channels, and counted the traffic.
    assert!(w.hv.borrow().fe_notified.contains(&(5, 4)), "rx channel of the split guest");
    assert!(w.hv.borrow().fe_notified.contains(&(6, 3)));
    assert!(w.be.report_stats(1.0));
    let stat = logged("ICONNECT-VIFSTAT 5/0 port=1 tx_bps=");
    assert_eq!(stat.len(), 1, "{stat:?}");
    // Four frames taken from the ring (three forwarded, the spoofed one dropped), three delivered.
    assert!(stat[0].contains(" tx_frames=4 rx_frames=3 drops=1 spoofed=1"), "{}", stat[0]);
    assert!(!w.be.report_stats(1.0), "nothing moved since");
}

// ---------------------------------------------------------------- QoS

fn qos_keys(r: &NetQosRequest) -> Vec<(String, String)> {
    let mut k = iconnect::keys::ArraySink::<8, 48>::default();
    r.write(&mut k).unwrap();
    k.pairs().map(|(a, b)| kv(a, b)).collect()
}

#[test]
fn a_guest_writing_qos_keys_in_a_loop_is_answered_at_a_bounded_rate() {
    let mut w = World::new(20_000_000);
    let a = w.guest(5, LINUX, None);
    let fe = w.guests[a].fe();
    let answers = || logged("ICONNECT-VIF 5/0 qos=").len();
    let before = answers();
    // 500 writes, one per millisecond of net-dd's clock (a guest running xenstore-write in a loop).
    for i in 0..500u64 {
        w.xs.write(5, &format!("{fe}/{}", qos::GUARANTEED), &(1_000_000 + i).to_string());
        w.step();
    }
    w.settle();
    let reads = answers() - before;
    let bound = (500 * MS / net_dd::vifctl::QOS_REREAD_NS + 2) as usize;
    assert!((1..=bound).contains(&reads), "{reads} answers to 500 writes in 500 ms (at most {bound})");
    // The last value wins.
    match w.decision(a) {
        Some(Decision::Granted(g)) => assert_eq!(g.guaranteed_bps, 1_000_499),
        other => panic!("{other:?}"),
    }
    // The guest withdraws its request (xenstore-rm): the answer keys go, the guarantee is free.
    w.xs.rm(5, &format!("{fe}/{}", qos::GUARANTEED));
    w.settle();
    assert_eq!(w.decision(a), None, "a withdrawn request leaves no answer behind");
    assert_eq!(w.be.sw.reserved_bps(), 0);
}

#[test]
fn qos_request_answered_in_backend_dir_and_rate_caps_the_ceiling() {
    let mut w = World::new(20_000_000);
    // Guest 5 asks for a guarantee at connect time.
    let a = w.create_vif(5, 0, None);
    w.settle();
    let mut keys = w.linux_keys(a, LINUX);
    let ask = NetQosRequest { guaranteed_bps: 5_000_000, ceiling_bps: Some(10_000_000), ..Default::default() };
    keys.extend(qos_keys(&ask));
    w.frontend_connect(a, &keys);
    w.settle();
    match w.decision(a) {
        Some(Decision::Granted(g)) => {
            assert_eq!((g.guaranteed_bps, g.ceiling_bps), (5_000_000, 10_000_000));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.be.sw.reserved_bps(), 5_000_000);
    // Later the guest asks for more than the link (xenstore-write from inside the guest).
    let fe = w.guests[a].fe();
    w.xs.write(5, &format!("{fe}/{}", qos::GUARANTEED), "30000000");
    w.xs.write(5, &format!("{fe}/{}", qos::CEILING), "40000000");
    w.settle();
    match w.decision(a) {
        Some(Decision::Refused { reason, .. }) => assert_eq!(reason, RefuseReason::OverCapacity),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.be_key(a, qos::GRANTED_GUARANTEED), None, "the earlier grant's keys are gone");
    assert_eq!(w.be.sw.reserved_bps(), 0, "the guarantee was returned");
    assert!(!logged("ICONNECT-VIF 5/0 qos=refused").is_empty());
    // A malformed value: refused as an invalid request naming the key; still connected.
    w.xs.write(5, &format!("{fe}/{}", qos::GUARANTEED), "lots");
    w.settle();
    match w.decision(a) {
        Some(Decision::Refused { reason, error_key }) => {
            assert_eq!(reason, RefuseReason::InvalidRequest);
            assert_eq!(error_key, Some(qos::GUARANTEED));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.state(a).as_deref(), Some("4"));

    // Guest 6 has xl's rate=1 MB/s (8 Mbit/s) and asks for a 50 Mbit/s ceiling: capped.
    let b = w.create_vif(6, 0, Some("1000000,1000000"));
    w.settle();
    let mut keys = w.linux_keys(b, LINUX);
    keys.extend(qos_keys(&NetQosRequest { guaranteed_bps: 1_000_000, ceiling_bps: Some(50_000_000), ..Default::default() }));
    w.frontend_connect(b, &keys);
    w.settle();
    match w.decision(b) {
        Some(Decision::Granted(g)) => assert_eq!((g.guaranteed_bps, g.ceiling_bps), (1_000_000, 8_000_000)),
        other => panic!("{other:?}"),
    }
    assert!(!logged("ICONNECT-VIF 6/0 up port=2 mac=00:16:3e:77:00:06 qos=granted ceiling_bps=8000000").is_empty());

    // Guest 7 has rate= and asks nothing: rate= alone is granted as its ceiling (the marker
    // says so), nothing is answered in its keys.
    let c = w.guest(7, LINUX, Some("125000,1000000"));
    assert_eq!(w.decision(c), None);
    assert!(!logged("ICONNECT-VIF 7/0 up port=3 mac=00:16:3e:77:00:07 qos=granted ceiling_bps=1000000").is_empty());
    // A guarantee above rate= is inconsistent: refused, still connected.
    let fe = w.guests[c].fe();
    w.xs.write(7, &format!("{fe}/{}", qos::GUARANTEED), "2000000");
    w.settle();
    assert!(matches!(w.decision(c), Some(Decision::Refused { reason: RefuseReason::InvalidRequest, .. })));
    w.assert_consistent();
}

#[test]
fn rate_caps_what_a_guest_without_a_request_sends() {
    // 125000 bytes per second = 1 Mbit/s: over 1 simulated second a flood gets through only
    // about that much (plus one burst), although the link is 1 Gbit/s.
    let mut w = World::new(1_000_000_000);
    let a = w.guest(5, LINUX, Some("125000,1000000"));
    let host = Mac([0x02, 0, 0, 0, 0, 2]);
    let ma = w.guests[a].mac;
    let start = w.wire.uplink.len();
    for step in 0..1000u32 {
        while w.guests[a].nf.as_ref().unwrap().can_send(1000) {
            let f = frame(host, ma, 1000, step);
            w.send(a, &f);
        }
        w.step();
    }
    let bytes: usize = w.wire.uplink[start..].iter().map(Vec::len).sum();
    // 125 kB plus one burst (the scheduler's bucket); unshaped it would be megabytes.
    assert!((100_000..150_000).contains(&bytes), "{bytes} bytes in 1 s through a 1 Mbit/s ceiling");
}

// ---------------------------------------------------------------- hostile inputs

/// A fresh world with a well-behaved guest 6 beside guest 5, whose frontend keys `edit`
/// changes; returns the world after guest 5 tried to connect.
fn hostile(edit: impl FnOnce(&mut World, &mut Vec<(String, String)>)) -> World {
    let mut w = World::new(1_000_000_000);
    let good = w.guest(6, LINUX, None);
    assert_eq!(w.state(good).as_deref(), Some("4"));
    let i = w.create_vif(5, 0, None);
    w.settle();
    let mut keys = w.linux_keys(i, LINUX);
    edit(&mut w, &mut keys);
    w.frontend_connect(i, &keys);
    w.settle();
    w
}

/// Guest 5 was refused: backend Closing, nothing held for it; guest 6 still works.
fn assert_refused(w: &mut World, why: &str) {
    let refused = logged("ICONNECT-VIF 5/0 refused reason=");
    assert!(refused.iter().any(|l| l.contains(why)), "expected a refusal for {why:?}: {refused:?}");
    assert_eq!(w.state(1).as_deref(), Some("5"), "Closing");
    assert_eq!(w.be.vif((5, 0)).unwrap().port, None);
    w.assert_consistent();
    assert_good_guest_works(w);
}

fn assert_good_guest_works(w: &mut World) {
    let g = w.guests.iter().position(|g| g.dom == 6).unwrap();
    let f = frame(STACK_MAC, w.guests[g].mac, 100, 0xabc);
    w.send(g, &f);
    w.settle();
    assert_eq!(w.wire.stack.last(), Some(&f), "guest 6 still reaches the stack");
}

#[test]
fn hostile_ring_refs_are_refused() {
    let set = |k: &'static str, v: &'static str| {
        move |_: &mut World, keys: &mut Vec<(String, String)>| {
            keys.retain(|(a, _)| a != k);
            keys.push(kv(k, v));
        }
    };
    for (v, why) in [("abc", "frontend keys"), ("-1", "frontend keys"), ("", "frontend keys"), ("99999999999", "frontend keys")] {
        let mut w = hostile(set("tx-ring-ref", v));
        assert_refused(&mut w, why);
    }
    // A ref that is a number but granted nothing: Xen refuses the map.
    let mut w = hostile(set("rx-ring-ref", "1234"));
    assert_refused(&mut w, "mapping rx-ring-ref");
    // Missing.
    let mut w = hostile(|_, keys| keys.retain(|(k, _)| k != "tx-ring-ref"));
    assert_refused(&mut w, "frontend keys");
    // Granted, but the hypervisor refuses to map it (the TX page was mapped first: unmapped again).
    let mut w = hostile(|w, _| {
        w.hv.borrow_mut().unmappable.insert((5, RX_REF));
    });
    assert_refused(&mut w, "mapping rx-ring-ref");
}

#[test]
fn hostile_event_channels_are_refused() {
    // Not a port the guest allocated.
    let mut w = hostile(|_, keys| {
        keys.retain(|(k, _)| k != "event-channel-tx");
        keys.push(kv("event-channel-tx", "77"));
    });
    assert_refused(&mut w, "binding event channel 77");
    // The TX port binds, the RX port does not: the TX port is closed again.
    let mut w = hostile(|_, keys| {
        keys.retain(|(k, _)| k != "event-channel-rx");
        keys.push(kv("event-channel-rx", "78"));
    });
    assert_refused(&mut w, "binding event channel 78");
    assert!(w.hv.borrow().unbound.contains(&(5, 3)), "guest 5's TX port is unbound again");
    // Garbage, and no channel at all.
    let mut w = hostile(|_, keys| {
        keys.retain(|(k, _)| k != "event-channel-rx");
        keys.push(kv("event-channel-rx", "0x4"));
    });
    assert_refused(&mut w, "frontend keys");
    let mut w = hostile(|_, keys| keys.retain(|(k, _)| !k.starts_with("event-channel")));
    assert_refused(&mut w, "frontend keys");
}

#[test]
fn frontends_without_rx_copy_or_with_oversize_keys_are_refused() {
    for v in ["0", "2", "yes"] {
        let mut w = hostile(|_, keys| {
            keys.retain(|(k, _)| k != "request-rx-copy");
            keys.push(kv("request-rx-copy", v));
        });
        assert_refused(&mut w, "frontend keys");
    }
    let mut w = hostile(|_, keys| keys.retain(|(k, _)| k != "request-rx-copy"));
    assert_refused(&mut w, "frontend keys");
    // A 4 KiB value where a number belongs.
    let mut w = hostile(|_, keys| {
        keys.retain(|(k, _)| k != "tx-ring-ref");
        keys.push(kv("tx-ring-ref", "7".repeat(4000)));
    });
    assert_refused(&mut w, "frontend keys");
    // More keys than any netfront writes.
    let mut w = hostile(|_, keys| {
        for n in 0..vifctl::MAX_FRONTEND_KEYS {
            keys.push(kv(format!("junk-{n}"), "x"));
        }
    });
    assert_refused(&mut w, "at most");
    // Oversize QoS values are an invalid request, not a refused connection.
    let mut w = hostile(|_, keys| keys.push(kv(qos::CEILING, "9".repeat(3000))));
    assert_eq!(w.state(1).as_deref(), Some("4"));
    assert!(matches!(w.decision(1), Some(Decision::Refused { reason: RefuseReason::InvalidRequest, .. })));
    w.assert_consistent();
    assert_good_guest_works(&mut w);
}

#[test]
fn garbage_in_the_backend_directory_is_ignored() {
    let mut w = World::new(1_000_000_000);
    let good = w.guest(6, LINUX, None);
    // Unparsable ids, an id beyond u16, a frontend path that does not match, a bad mac.
    for (path, v) in [
        (format!("{BASE}/abc/0/frontend-id"), "5"),
        (format!("{BASE}/5/x/frontend-id"), "5"),
        (format!("{BASE}/05/0/frontend-id"), "5"),
        (format!("{BASE}/70000/0/frontend-id"), "70000"),
        (format!("{BASE}/5/-1/frontend-id"), "5"),
        (format!("{BASE}/8/0/frontend-id"), "9"),
        (format!("{BASE}/8/0/frontend"), "/local/domain/9/device/vif/0"),
        (format!("{BASE}-other/5/0/frontend-id"), "5"),
    ] {
        w.xs.write(DOM0, &path, v);
    }
    w.settle();
    assert_eq!(w.be.vifs().count(), 1, "{:?}", w.be.vifs().collect::<Vec<_>>());
    assert!(!logged("vif 8/0: frontend-id").is_empty(), "mismatch logged");
    // Watch events with bogus tokens and paths.
    for (path, token) in [
        ("/local/domain/6/device/vif/0/state", "fe:6"),
        ("/local/domain/6/device/vif/0/state", "fe:6:0:0"),
        ("/local/domain/6/device/vif/0/state", "fe:99:0"),
        ("/", "be"),
        ("/local/domain/1/backend/vifx", "be"),
        ("", ""),
    ] {
        let now = w.now;
        w.be.on_watch(&mut DomStore(&mut w.xs, DD), path, token, now);
    }
    // Invalid `online` and frontend `state` values are ignored.
    let v = w.create_vif(9, 0, None);
    w.settle();
    w.xs.write(DOM0, &format!("{}/online", w.guests[v].be()), "maybe");
    w.settle();
    assert_eq!(w.state(v).as_deref(), Some("2"));
    let keys = w.linux_keys(v, LINUX);
    w.frontend_connect(v, &keys);
    w.settle();
    w.xs.write(9, &format!("{}/state", w.guests[v].fe()), "banana");
    w.settle();
    w.xs.write(9, &format!("{}/state", w.guests[v].fe()), "99");
    w.settle();
    assert!(!logged("vif 9/0: frontend state \"99\" invalid").is_empty());
    assert_eq!(w.state(v).as_deref(), Some("4"));
    assert_eq!(w.state(good).as_deref(), Some("4"));
    assert!(!logged("vif 9/0: frontend state \"banana\" invalid").is_empty());
    w.assert_consistent();
    assert_good_guest_works(&mut w);
}

#[test]
fn a_vif_with_an_invalid_or_taken_mac_is_refused() {
    let mut w = World::new(1_000_000_000);
    let good = w.guest(6, LINUX, None);
    for (dom, mac, why) in [(5, "not-a-mac", "no valid mac"), (7, "ff:ff:ff:ff:ff:ff", "bad-mac"), (8, "00:16:3e:77:00:06", "mac-in-use")] {
        let i = w.create_vif_with_mac(dom, 0, mac, None);
        w.settle();
        let keys = w.linux_keys(i, LINUX);
        w.frontend_connect(i, &keys);
        w.settle();
        let refused = logged(&format!("ICONNECT-VIF {dom}/0 refused reason="));
        assert!(refused.iter().any(|l| l.contains(why)), "{mac}: {refused:?}");
        assert_eq!(w.state(i).as_deref(), Some("5"), "{mac}");
        w.assert_consistent();
    }
    assert_eq!(w.state(good).as_deref(), Some("4"));
    assert_good_guest_works(&mut w);
}

#[test]
fn a_frontend_directory_that_vanishes_mid_handshake() {
    let mut w = World::new(1_000_000_000);
    let good = w.guest(6, LINUX, None);
    let i = w.create_vif(5, 0, None);
    w.settle();
    let keys = w.linux_keys(i, LINUX);
    w.frontend_connect(i, &keys);
    // Before net-dd sees Connected, the domain is destroyed: its whole home goes.
    w.xs.rm(DOM0, "/local/domain/5");
    w.settle();
    assert_eq!(w.be.vif((5, 0)), None, "vif removed");
    assert_eq!(w.xs.get(&format!("{BASE}/5/0")), None, "backend directory removed by net-dd");
    assert_eq!(w.xs.get(&format!("{BASE}/5")), None, "and its empty parent");
    w.assert_consistent();
    assert_eq!(w.state(good).as_deref(), Some("4"));
    assert_good_guest_works(&mut w);
}

#[test]
fn a_frontend_directory_taken_away_reads_as_gone() {
    // While a domain is destroyed the toolstack may revoke net-dd's access first (EACCES).
    let mut w = World::new(1_000_000_000);
    let a = w.guest(5, LINUX, None);
    let _b = w.guest(6, LINUX, None);
    assert_eq!(w.be.vif((5, 0)).unwrap().port, switch::guest_port(0));
    w.xs.denied.push(w.guests[a].fe());
    w.xs.write(5, &format!("{}/state", w.guests[a].fe()), "4");
    w.settle();
    assert_eq!(w.be.vif((5, 0)), None);
    assert!(!logged("ICONNECT-VIF 5/0 down port=1 reason=").is_empty());
    assert_eq!(w.xs.get(&format!("{BASE}/5/0")), None);
    w.assert_consistent();
    assert_good_guest_works(&mut w);
}

#[test]
fn a_broken_ring_takes_down_only_its_vif() {
    let mut w = World::new(1_000_000_000);
    let a = w.guest(5, LINUX, None);
    let _b = w.guest(6, LINUX, None);
    // Guest 5 publishes a wild TX producer index.
    w.hv.borrow().pages[&(5, TX_REF)].store_u32(0, 0x4000_0000, Ordering::SeqCst);
    let local = *w.hv.borrow().bound.iter().find(|(_, e)| **e == (5, 3)).unwrap().0;
    w.hv.borrow_mut().dd_pending.insert(local);
    w.settle();
    let down = logged("ICONNECT-VIF 5/0 down port=1 reason=protocol-error");
    assert_eq!(down.len(), 1, "{:?}", logged("ICONNECT-VIF"));
    assert!(down[0].contains("mapped_grants=2"), "guest 6's two pages stay mapped: {}", down[0]);
    assert_eq!(w.be.vif((5, 0)).unwrap().port, None);
    w.assert_consistent();
    assert_good_guest_works(&mut w);
    // Its frontend closes and reconnects on fresh rings: served again.
    let fe = w.guests[a].fe();
    w.xs.write(5, &format!("{fe}/state"), "5");
    w.settle();
    w.xs.write(5, &format!("{fe}/state"), "6");
    w.settle();
    assert_eq!(w.state(a).as_deref(), Some("6"));
    w.xs.write(5, &format!("{fe}/state"), "1");
    w.settle();
    assert_eq!(w.state(a).as_deref(), Some("2"), "InitWait again");
    let keys = w.linux_keys(a, LINUX);
    w.frontend_connect(a, &keys);
    w.settle();
    assert_eq!(w.state(a).as_deref(), Some("4"));
    w.assert_consistent();
}

// ---------------------------------------------------------------- teardown

#[test]
fn closing_and_unplug_tear_down_and_remove_the_backend_dir() {
    let mut w = World::new(1_000_000_000);
    let a = w.guest(5, LINUX, None);
    let b = w.guest(6, SHARED, None);
    let port_a = w.be.vif((5, 0)).unwrap().port.unwrap();
    let fe = w.guests[a].fe();
    // The guest closes (shutdown / network-detach).
    w.xs.write(5, &format!("{fe}/state"), "5");
    w.settle();
    assert_eq!(w.state(a).as_deref(), Some("5"));
    assert!(!w.be.sw.is_attached(port_a), "switch port freed");
    assert!(!logged("ICONNECT-VIF 5/0 down port=1 reason=frontend closed or unplugged").is_empty());
    w.assert_consistent();
    w.xs.write(5, &format!("{fe}/state"), "6");
    w.settle();
    assert_eq!(w.state(a).as_deref(), Some("6"));
    assert!(w.xs.get(&w.guests[a].be()).is_some(), "kept until the toolstack unplugs it");
    // The toolstack unplugs the device: net-dd removes its directory (libxl waits for that).
    w.xs.write(DOM0, &format!("{}/online", w.guests[a].be()), "0");
    w.settle();
    assert_eq!(w.xs.get(&w.guests[a].be()), None);
    assert_eq!(w.be.vif((5, 0)), None);
    // Guest 6 kept working throughout; a new guest gets the freed port.
    assert_good_guest_works(&mut w);
    let c = w.guest(7, LINUX, None);
    assert_eq!(w.be.vif((7, 0)).unwrap().port, Some(port_a));
    let (mb, mc) = (w.guests[b].mac, w.guests[c].mac);
    let f = frame(mc, mb, 300, 42);
    w.send(b, &f);
    w.settle();
    assert_eq!(w.guests[c].rx, vec![f]);
    w.assert_consistent();
}

#[test]
fn xl_destroy_mid_transfer_frees_the_vif_and_the_other_keeps_going() {
    let mut w = World::new(1_000_000_000);
    let a = w.guest(5, LINUX, None);
    let b = w.guest(6, LINUX, None);
    let (ma, mb) = (w.guests[a].mac, w.guests[b].mac);
    for n in 0..20 {
        let f = frame(mb, ma, 1500, n);
        w.send(a, &f);
        let f = frame(ma, mb, 1500, 100 + n);
        w.send(b, &f);
    }
    w.step();
    // xl destroy: the toolstack removes the frontend's directory (and later the backend's
    // online key); the domain's pages stay granted until net-dd lets go of them.
    w.xs.rm(DOM0, &w.guests[a].fe());
    w.guests[a].nf = None;
    w.settle();
    assert_eq!(w.be.vif((5, 0)), None);
    assert_eq!(w.xs.get(&w.guests[a].be()), None, "backend directory removed");
    assert!(!logged("ICONNECT-VIF 5/0 down port=1").is_empty());
    w.assert_consistent();
    assert_eq!(w.hv.borrow().mapped, 2, "only guest 6's rings stay mapped");
    // The toolstack's own cleanup after us is harmless.
    w.xs.write(DOM0, &format!("{BASE}/5/0/online"), "0");
    w.xs.rm(DOM0, &format!("{BASE}/5"));
    w.settle();
    assert_eq!(w.be.vifs().count(), 1);
    // Guest 6 keeps going.
    w.guests[b].rx.clear();
    assert_good_guest_works(&mut w);
    let f = frame(STACK_MAC, mb, 1500, 999);
    w.send(b, &f);
    w.settle();
    assert_eq!(w.wire.stack.last(), Some(&f));
}

#[test]
fn xl_network_detach_unplugs_through_online_zero() {
    let mut w = World::new(1_000_000_000);
    let a = w.guest(5, LINUX, None);
    let _b = w.guest(6, LINUX, None);
    let (fe, be) = (w.guests[a].fe(), w.guests[a].be());
    // libxl: backend online=0 and state=Closing in one transaction, then it waits for Closed.
    w.xs.write_tx(DOM0, &[kv(format!("{be}/online"), "0"), kv(format!("{be}/state"), "5")]);
    w.settle();
    assert_eq!(w.be.vif((5, 0)).unwrap().port, None, "disconnected at once");
    assert!(!logged("ICONNECT-VIF 5/0 down port=1").is_empty());
    w.assert_consistent();
    // Linux netfront follows the backend to Closing and Closed.
    w.xs.write(5, &format!("{fe}/state"), "5");
    w.settle();
    w.xs.write(5, &format!("{fe}/state"), "6");
    w.settle();
    assert_eq!(w.be.vif((5, 0)), None, "removed");
    assert_eq!(w.xs.get(&be), None, "backend directory removed: libxl's wait ends");
    assert_good_guest_works(&mut w);
}

#[test]
fn a_guest_that_restarts_its_frontend_without_closing_is_served_again() {
    // kexec or a crashed driver: the frontend goes back to Initialising while Connected.
    let mut w = World::new(1_000_000_000);
    let a = w.guest(5, LINUX, None);
    let b = w.guest(6, SHARED, None);
    let fe = w.guests[a].fe();
    w.xs.write(5, &format!("{fe}/state"), "1");
    w.settle();
    assert_eq!(w.state(a).as_deref(), Some("2"), "InitWait again");
    assert_eq!(w.be.vif((5, 0)).unwrap().port, None);
    w.assert_consistent();
    // New rings (new pages under the same refs), split channels this time shared.
    let keys = w.linux_keys(a, SHARED);
    w.frontend_connect(a, &keys);
    w.settle();
    assert_eq!(w.state(a).as_deref(), Some("4"));
    w.assert_consistent();
    let (ma, mb) = (w.guests[a].mac, w.guests[b].mac);
    let f = frame(ma, mb, 1200, 5);
    w.send(b, &f);
    w.settle();
    assert_eq!(w.guests[a].rx, vec![f], "delivered on the new rings");
}

#[test]
fn two_vifs_of_one_guest_are_served_and_removed_separately() {
    let mut w = World::new(1_000_000_000);
    let v0 = w.create_vif(5, 0, None);
    let v1 = w.create_vif(5, 1, None);
    w.settle();
    let keys0 = w.linux_keys(v0, LINUX);
    w.frontend_connect(v0, &keys0);
    w.settle();
    assert_eq!(w.state(v0).as_deref(), Some("4"));
    // Device 1 of the same domain, on refs 40/41 and ports 30/31 (after device 0's were used).
    let (dom, fe1) = (w.guests[v1].dom, w.guests[v1].fe());
    let (tx, rx) = (HostMem::new(4096), HostMem::new(4096));
    {
        let mut hv = w.hv.borrow_mut();
        hv.pages.insert((dom, 40), tx.clone());
        hv.pages.insert((dom, 41), rx.clone());
        hv.unbound.insert((dom, 30));
        hv.unbound.insert((dom, 31));
    }
    w.guests[v1].ports = (30, 31);
    w.guests[v1].nf = Some(Netfront::new(
        FrontRing::<_, TxRing>::init(tx).unwrap(),
        FrontRing::<_, RxRing>::init(rx).unwrap(),
        GuestPages { hv: w.hv.clone(), dom, next: 1000, free: Vec::new() },
        Config { sg: true, tx_buffers: 16, rx_buffers: 16 },
    ));
    let mut keys1 = keys0.clone();
    for (k, v) in &mut keys1 {
        match k.as_str() {
            "tx-ring-ref" => *v = "40".into(),
            "rx-ring-ref" => *v = "41".into(),
            "event-channel-tx" => *v = "30".into(),
            "event-channel-rx" => *v = "31".into(),
            _ => {}
        }
    }
    let pairs: Vec<_> = keys1.iter().map(|(k, v)| kv(format!("{fe1}/{k}"), v.clone())).collect();
    w.xs.write_tx(dom, &pairs);
    w.xs.write(dom, &format!("{fe1}/state"), "4");
    w.settle();
    assert_eq!(w.state(v1).as_deref(), Some("4"));
    w.assert_consistent();
    assert_ne!(w.be.vif((5, 0)).unwrap().port, w.be.vif((5, 1)).unwrap().port);
    // Device 1 reaches device 0 through the switch.
    let f = frame(w.guests[v0].mac, w.guests[v1].mac, 500, 1);
    w.send(v1, &f);
    w.settle();
    assert_eq!(w.guests[v0].rx, vec![f]);
    // The toolstack removes device 0 only.
    w.xs.rm(DOM0, &w.guests[v0].be());
    w.settle();
    assert_eq!(w.be.vif((5, 0)), None);
    assert!(w.be.vif((5, 1)).unwrap().port.is_some());
    assert!(w.xs.get(&format!("{BASE}/5")).is_some(), "device 1's parent directory stays");
    w.assert_consistent();
}

#[test]
fn the_toolstack_removing_the_backend_dir_disconnects() {
    let mut w = World::new(1_000_000_000);
    let a = w.guest(5, LINUX, None);
    let _b = w.guest(6, LINUX, None);
    w.xs.rm(DOM0, &w.guests[a].be());
    w.settle();
    assert_eq!(w.be.vif((5, 0)), None);
    assert!(!logged("ICONNECT-VIF 5/0 down port=1 reason=backend directory removed").is_empty());
    w.assert_consistent();
    assert_good_guest_works(&mut w);
    // A vif re-created later with the same id is served afresh.
    let i = w.create_vif(5, 0, None);
    w.settle();
    let keys = w.linux_keys(i, LINUX);
    w.frontend_connect(i, &keys);
    w.settle();
    assert_eq!(w.state(i).as_deref(), Some("4"));
    w.assert_consistent();
}

// ---------------------------------------------------------------- random sequences

#[derive(Debug, Clone)]
enum Op {
    /// Toolstack creates vif of domain 5+n.
    Create(u8),
    /// The guest writes its Linux keys and Connected.
    Connect(u8, bool),
    /// A domain writes one key of a vif's frontend or backend directory.
    Write { dom: u8, backend: bool, key: u8, value: u8 },
    /// Removes a vif's frontend or backend directory (or a domain's home).
    Rm { dom: u8, what: u8 },
    /// The guest sends a frame to another guest or the stack.
    Send(u8, u8, u16),
    /// A watch event with an arbitrary path and token.
    Event(u8, u8),
    /// A ring page gets a wild index.
    Scribble(u8, u32),
    Steps(u8),
}

const KEYS: [&str; 14] = [
    "state",
    "online",
    "tx-ring-ref",
    "rx-ring-ref",
    "event-channel",
    "event-channel-tx",
    "request-rx-copy",
    "feature-sg",
    "mac",
    "frontend-id",
    "frontend",
    "rate",
    qos::GUARANTEED,
    qos::CEILING,
];

const VALUES: [&str; 16] = [
    "0", "1", "2", "3", "4", "5", "6", "8", "9", "-1", "", "abc", "4294967296", "00:16:3e:77:00:05", "125000,1000", "/local/domain/5/device/vif/0",
];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3).prop_map(Op::Create),
        ((0u8..3), any::<bool>()).prop_map(|(d, s)| Op::Connect(d, s)),
        ((0u8..3), any::<bool>(), (0u8..KEYS.len() as u8), (0u8..VALUES.len() as u8))
            .prop_map(|(dom, backend, key, value)| Op::Write { dom, backend, key, value }),
        ((0u8..3), (0u8..3)).prop_map(|(dom, what)| Op::Rm { dom, what }),
        ((0u8..3), (0u8..4), (14u16..3000)).prop_map(|(a, b, l)| Op::Send(a, b, l)),
        (any::<u8>(), any::<u8>()).prop_map(|(p, t)| Op::Event(p, t)),
        ((0u8..3), any::<u32>()).prop_map(|(d, v)| Op::Scribble(d, v)),
        (1u8..20).prop_map(Op::Steps),
    ]
}

fn run_ops(ops: &[Op]) {
    let mut w = World::new(100_000_000);
    let index = |w: &World, d: u8| w.guests.iter().position(|g| g.dom == 5 + u16::from(d));
    for op in ops {
        match *op {
            Op::Create(d) => {
                if index(&w, d).is_none() {
                    w.create_vif(5 + u16::from(d), 0, None);
                } else {
                    let g = &w.guests[index(&w, d).unwrap()];
                    let (dom, fe, be) = (g.dom, g.fe(), g.be());
                    w.xs.write_tx(
                        DOM0,
                        &[
                            kv(format!("{be}/frontend"), fe.clone()),
                            kv(format!("{be}/frontend-id"), dom.to_string()),
                            kv(format!("{be}/online"), "1"),
                            kv(format!("{be}/mac"), mac_of(dom).to_string()),
                            kv(format!("{fe}/backend"), be.clone()),
                            kv(format!("{fe}/state"), "1"),
                        ],
                    );
                }
            }
            Op::Connect(d, split) => {
                if let Some(i) = index(&w, d) {
                    let keys = w.linux_keys(i, Netfront0 { split });
                    w.frontend_connect(i, &keys);
                }
            }
            Op::Write { dom, backend, key, value } => {
                if let Some(i) = index(&w, dom) {
                    let g = &w.guests[i];
                    let dir = if backend { g.be() } else { g.fe() };
                    let writer = if backend { DOM0 } else { g.dom };
                    w.xs.write(writer, &format!("{dir}/{}", KEYS[usize::from(key)]), VALUES[usize::from(value)]);
                }
            }
            Op::Rm { dom, what } => {
                if let Some(i) = index(&w, dom) {
                    let g = &w.guests[i];
                    let path = match what {
                        0 => g.fe(),
                        1 => g.be(),
                        _ => format!("/local/domain/{}", g.dom),
                    };
                    w.xs.rm(DOM0, &path);
                }
            }
            Op::Send(a, b, len) => {
                if let Some(i) = index(&w, a) {
                    let dst = index(&w, b).map_or(STACK_MAC, |j| w.guests[j].mac);
                    let f = frame(dst, w.guests[i].mac, usize::from(len), u32::from(len));
                    if let Some(nf) = w.guests[i].nf.as_mut() {
                        let _ = nf.send(&f);
                    }
                }
            }
            Op::Event(p, t) => {
                let paths = [BASE.to_string(), format!("{BASE}/5"), format!("{BASE}/5/0/online"), "/local/domain/5/device/vif/0".into(), "/local/domain/5".into(), format!("{BASE}/6/0")];
                let tokens = ["be", "fe:5:0", "fe:6:0", "fe:5", "uplink", "fe:7:0"];
                let now = w.now;
                let (p, t) = (&paths[usize::from(p) % paths.len()], tokens[usize::from(t) % tokens.len()]);
                w.be.on_watch(&mut DomStore(&mut w.xs, DD), p, t, now);
            }
            Op::Scribble(d, v) => {
                let dom = 5 + u16::from(d);
                if let Some(m) = w.hv.borrow().pages.get(&(dom, if v % 2 == 0 { TX_REF } else { RX_REF })) {
                    m.store_u32(if v % 3 == 0 { 0 } else { 4 }, v, Ordering::SeqCst);
                }
            }
            Op::Steps(n) => {
                for _ in 0..n {
                    w.step();
                }
            }
        }
        w.step();
        w.assert_consistent();
    }
    w.settle();
    w.assert_consistent();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any sequence of toolstack, guest and daemon events: never a panic, and every mapped
    /// page, bound channel and switch port belongs to a vif that is connected.
    #[test]
    fn random_xenstore_sequences_never_panic_and_leak_nothing(ops in prop::collection::vec(op(), 1..40)) {
        run_ops(&ops);
    }
}

// ---------------------------------------------------------------- net-dd's uplink

/// net-dd's side of the hypervisor as a frontend: pages it grants, ports it allocates.
struct FakeFront {
    hv: HvRef,
    dom: u16,
}

impl FrontPlatform for FakeFront {
    type Page = HostMem;
    type Buffers = GuestPages;
    type Port = u32;
    type Error = HvError;

    fn grant_page(&mut self, _backend: u16, gref: GrantRef) -> Result<HostMem, HvError> {
        let page = HostMem::new(4096);
        self.hv.borrow_mut().pages.insert((self.dom, gref), page.clone());
        Ok(page)
    }

    fn buffers(&mut self, _backend: u16, first_ref: GrantRef) -> Result<GuestPages, HvError> {
        Ok(GuestPages { hv: self.hv.clone(), dom: self.dom, next: first_ref, free: Vec::new() })
    }

    fn alloc_unbound(&mut self, _backend: u16) -> Result<(u32, u32), HvError> {
        let mut hv = self.hv.borrow_mut();
        if std::mem::take(&mut hv.refuse_ports) {
            return Err(HvError::BadPort(self.dom, 0));
        }
        let n = hv.fe_next_port.entry(self.dom).or_insert(10);
        *n += 1;
        let port = *n;
        hv.unbound.insert((self.dom, port));
        Ok((port, port))
    }

    fn close(&mut self, port: u32) {
        self.hv.borrow_mut().unbound.remove(&(self.dom, port));
    }

    fn notify(&mut self, port: u32) {
        let mut hv = self.hv.borrow_mut();
        let local = hv.bound.iter().find(|(_, e)| **e == (self.dom, port)).map(|(l, _)| *l);
        if let Some(l) = local {
            hv.dd_pending.insert(l);
        }
    }

    fn take_event(&mut self, port: u32) -> bool {
        self.hv.borrow_mut().fe_pending.remove(&(self.dom, port))
    }
}

const DOM0_STACK: Mac = Mac([0x02, 0, 0, 0, 0, 0x10]);
const UPLINK_MAC: Mac = Mac([0x00, 0x16, 0x3e, 0x77, 0x01, 0x01]);

/// net-dd (domain 1) with a vif of its own whose backend is a vif backend in dom0 (the same
/// control plane and netback engine, standing in for Linux netback on a bridge).
struct UplinkWorld {
    xs: Xs,
    hv: HvRef,
    dom0: Backend<FakeXen>,
    bridge: FakeWire,
    up: Uplink<FakeFront>,
    got: Vec<Vec<u8>>,
    now: u64,
}

const DOM0_BASE: &str = "/local/domain/0/backend/vif";

fn toolstack_creates_uplink_vif(xs: &mut Xs) {
    let (fe, be) = ("/local/domain/1/device/vif/0".to_string(), format!("{DOM0_BASE}/1/0"));
    xs.write_tx(
        DOM0,
        &[
            kv(format!("{be}/frontend"), fe.clone()),
            kv(format!("{be}/frontend-id"), "1"),
            kv(format!("{be}/online"), "1"),
            kv(format!("{be}/state"), "1"),
            kv(format!("{be}/mac"), UPLINK_MAC.to_string()),
            kv(format!("{be}/handle"), "0"),
            kv(format!("{fe}/backend"), be.clone()),
            kv(format!("{fe}/backend-id"), "0"),
            kv(format!("{fe}/state"), "1"),
            kv(format!("{fe}/handle"), "0"),
            kv(format!("{fe}/mac"), UPLINK_MAC.to_string()),
        ],
    );
}

impl UplinkWorld {
    fn new() -> Self {
        let _ = logged("");
        let mut xs = Xs::new();
        xs.connect(DOM0);
        xs.connect(DD);
        let hv: HvRef = Rc::default();
        let dom0 = Backend::new(FakeXen { hv: hv.clone() }, DOM0_BASE.to_string(), switch::Switch::new(1_000_000_000, DOM0_STACK, 0));
        dom0.watch(&mut DomStore(&mut xs, DOM0)).unwrap();
        toolstack_creates_uplink_vif(&mut xs);
        let up = Uplink::find(FakeFront { hv: hv.clone(), dom: DD }, &mut DomStore(&mut xs, DD), DD).unwrap().expect("a vif of its own");
        let mut w = UplinkWorld { xs, hv, dom0, bridge: FakeWire::default(), up, got: Vec::new(), now: 0 };
        w.settle();
        w
    }

    fn step(&mut self) {
        for ev in self.xs.events(DOM0) {
            self.dom0.on_watch(&mut DomStore(&mut self.xs, DOM0), &ev.path, &ev.token, self.now);
        }
        for ev in self.xs.events(DD) {
            if ev.token == xenuplink::TOKEN {
                self.up.on_watch(&mut DomStore(&mut self.xs, DD));
            }
        }
        let got = &mut self.got;
        self.up.poll(|f| got.push(f.to_vec()));
        self.up.kick();
        self.dom0.doorbells(false);
        self.dom0.sw.pump(self.now, &mut self.bridge);
        self.dom0.sw.flush();
        self.dom0.after_switch();
        self.now += MS;
    }

    fn settle(&mut self) {
        for _ in 0..30 {
            self.step();
        }
    }

    fn be_state(&self) -> Option<String> {
        self.xs.get(&format!("{DOM0_BASE}/1/0/state"))
    }

    fn fe_state(&self) -> Option<String> {
        self.xs.get("/local/domain/1/device/vif/0/state")
    }
}

#[test]
fn uplink_connects_to_its_backend_and_carries_frames() {
    let mut w = UplinkWorld::new();
    assert!(w.up.is_connected());
    assert_eq!((w.fe_state().as_deref(), w.be_state().as_deref()), (Some("4"), Some("4")));
    assert_eq!(w.up.mac, Some(UPLINK_MAC));
    for (k, v) in [("tx-ring-ref", "8"), ("rx-ring-ref", "9"), ("request-rx-copy", "1"), ("feature-sg", "0"), ("feature-no-csum-offload", "1")] {
        assert_eq!(w.xs.get(&format!("/local/domain/1/device/vif/0/{k}")).as_deref(), Some(v), "{k}");
    }
    assert_eq!(logged("ICONNECT-UPLINK up backend=/local/domain/0/backend/vif/1/0 mac=00:16:3e:77:01:01").len(), 1);
    // net-dd -> dom0's bridge, and back.
    let out: Vec<_> = (0..10).map(|n| frame(DOM0_STACK, UPLINK_MAC, 60 + 140 * n, n as u32)).collect();
    for f in &out {
        assert!(w.up.ready(f.len()));
        assert!(w.up.send(f));
    }
    w.settle();
    assert_eq!(w.bridge.stack, out);
    let back: Vec<_> = (0..10).map(|n| frame(UPLINK_MAC, DOM0_STACK, 1514 - 100 * n, 100 + n as u32)).collect();
    for f in &back {
        let now = w.now;
        w.dom0.sw.input(STACK, f, now, &mut w.bridge);
    }
    w.settle();
    assert_eq!(w.got, back);
    assert!(w.up.stats().contains("connected=true tx=10 rx=10"), "{}", w.up.stats());
}

#[test]
fn uplink_survives_a_hostile_backend_and_reconnects() {
    let mut w = UplinkWorld::new();
    // Garbage states are ignored.
    w.xs.write(DOM0, &format!("{DOM0_BASE}/1/0/state"), "connected");
    w.settle();
    assert!(w.up.is_connected());
    assert!(!logged("uplink: backend state \"connected\" invalid").is_empty());
    // The backend publishes a wild response index on the TX ring: the uplink goes down, and
    // frames are dropped rather than held (a missing uplink never stalls the guests).
    w.hv.borrow().pages[&(DD, xenuplink::FIRST_REF)].store_u32(8, 0x7000_0000, Ordering::SeqCst);
    w.hv.borrow_mut().fe_pending.insert((DD, 11));
    w.settle();
    assert!(!w.up.is_connected());
    assert_eq!(logged("ICONNECT-UPLINK down reason=protocol-error").len(), 1);
    assert!(w.up.ready(1514));
    assert!(!w.up.send(&frame(DOM0_STACK, UPLINK_MAC, 100, 1)));
    // The toolstack replaces the backend device: the uplink starts over on fresh rings.
    w.xs.rm(DOM0, &format!("{DOM0_BASE}/1/0"));
    w.settle();
    assert_eq!(w.fe_state().as_deref(), Some("6"), "Closed once the backend went away");
    toolstack_creates_uplink_vif(&mut w.xs);
    w.settle();
    assert!(w.up.is_connected(), "{:?}", logged("UPLINK"));
    assert_eq!((w.fe_state().as_deref(), w.be_state().as_deref()), (Some("4"), Some("4")));
    let f = frame(DOM0_STACK, UPLINK_MAC, 700, 7);
    assert!(w.up.send(&f));
    w.settle();
    assert_eq!(w.bridge.stack.last(), Some(&f));
    assert_eq!(w.hv.borrow().mapped, 2, "dom0 maps only the new rings");
}

#[test]
fn uplink_setup_failure_is_reported_and_retried_by_a_new_backend() {
    let _ = logged("");
    let mut xs = Xs::new();
    xs.connect(DOM0);
    xs.connect(DD);
    let hv: HvRef = Rc::default();
    hv.borrow_mut().refuse_ports = true;
    let dom0 = Backend::new(FakeXen { hv: hv.clone() }, DOM0_BASE.to_string(), switch::Switch::new(1_000_000_000, DOM0_STACK, 0));
    dom0.watch(&mut DomStore(&mut xs, DOM0)).unwrap();
    toolstack_creates_uplink_vif(&mut xs);
    let up = Uplink::find(FakeFront { hv: hv.clone(), dom: DD }, &mut DomStore(&mut xs, DD), DD).unwrap().unwrap();
    let mut w = UplinkWorld { xs, hv, dom0, bridge: FakeWire::default(), up, got: Vec::new(), now: 0 };
    w.settle();
    assert!(!w.up.is_connected());
    assert!(!logged("ICONNECT-UPLINK down reason=setup: event channel").is_empty());
    // Closing after the failed setup, then Closed with the backend.
    assert_eq!((w.fe_state().as_deref(), w.be_state().as_deref()), (Some("6"), Some("6")));
    assert!(w.up.ready(100), "frames for the uplink are dropped, not held");
    assert!(w.hv.borrow().unbound.is_empty() && w.hv.borrow().bound.is_empty());
    // A new backend device: set up again, connected.
    w.xs.rm(DOM0, &format!("{DOM0_BASE}/1/0"));
    w.settle();
    toolstack_creates_uplink_vif(&mut w.xs);
    w.settle();
    assert!(w.up.is_connected());
    let f = frame(DOM0_STACK, UPLINK_MAC, 300, 3);
    assert!(w.up.send(&f));
    w.settle();
    assert_eq!(w.bridge.stack, vec![f]);
    // No vif of its own, or a garbage one: no uplink.
    let mut xs = Xs::new();
    xs.connect(DD);
    let none = Uplink::find(FakeFront { hv: Rc::default(), dom: DD }, &mut DomStore(&mut xs, DD), DD).unwrap();
    assert!(none.is_none());
    for (id, be) in [("0x0", "/local/domain/0/backend/vif/1/0"), ("0", "relative/path"), ("70000", "/x"), ("0", "/a//b")] {
        xs.write(DD, "/local/domain/1/device/vif/0/backend-id", id);
        xs.write(DD, "/local/domain/1/device/vif/0/backend", be);
        let found = Uplink::find(FakeFront { hv: Rc::default(), dom: DD }, &mut DomStore(&mut xs, DD), DD).unwrap();
        assert!(found.is_none(), "{id} {be}");
    }
}

// ---------------------------------------------------------------- random frontend keys

fn key_value() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..20).prop_map(|n| n.to_string()),
        Just("8".to_string()),
        Just("9".to_string()),
        Just("3".to_string()),
        Just("4".to_string()),
        "[0-9]{1,12}",
        "[ -~]{0,40}",
        "\\PC{0,8}",
        // Up to what one xenstore write can carry (4096 bytes of payload, path included).
        (1usize..3900).prop_map(|n| "1".repeat(n)),
    ]
}

const FRONTEND_KEYS: [&str; 12] = [
    "tx-ring-ref",
    "rx-ring-ref",
    "event-channel",
    "event-channel-tx",
    "event-channel-rx",
    "request-rx-copy",
    "feature-sg",
    "feature-rx-notify",
    "feature-no-csum-offload",
    qos::GUARANTEED,
    qos::CEILING,
    qos::CLASS,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Whatever a frontend writes into its keys at connect time: net-dd either serves it
    /// (Connected, its rings mapped, its channels bound, a port attached) or refuses it
    /// (Closing, nothing held); the other guest keeps working either way.
    #[test]
    fn random_frontend_keys_connect_or_refuse_cleanly(
        edits in prop::collection::vec(((0usize..FRONTEND_KEYS.len()), prop::option::of(key_value())), 0..6),
        split in any::<bool>(),
    ) {
        let mut w = World::new(100_000_000);
        let _good = w.guest(6, LINUX, None);
        let i = w.create_vif(5, 0, None);
        w.settle();
        let mut keys = w.linux_keys(i, Netfront0 { split });
        for (k, v) in &edits {
            let k = FRONTEND_KEYS[*k];
            keys.retain(|(a, _)| a != k);
            if let Some(v) = v {
                keys.push(kv(k, v.clone()));
            }
        }
        w.frontend_connect(i, &keys);
        w.settle();
        let state = w.state(i);
        let port = w.be.vif((5, 0)).unwrap().port;
        prop_assert!(matches!((state.as_deref(), port), (Some("4"), Some(_)) | (Some("5"), None)), "{state:?} {port:?}");
        w.assert_consistent();
        assert_good_guest_works(&mut w);
    }
}
