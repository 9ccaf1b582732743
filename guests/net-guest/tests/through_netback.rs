//! The guest's link, device and workloads against a peer stack, through the real backend
//! endpoint and netback engine over a channel in a `HostMem` region, with simulated time.
//!
//! Backend here = what net-dd does per channel (minimal: no switch): it admits the QoS request
//! with `iconnect::qos::LinkAdmission`, publishes its peer id and features, runs netback, hands
//! TX frames to a peer smoltcp stack (10.0.2.2, running the `serve` workload or a client
//! workload) and queues the peer's frames for RX; a fatal netback error closes the channel
//! (`Backend::fail`).

use std::collections::VecDeque;

use iconnect::qos::{self, LinkAdmission, NetQosRequest};
use iconnect_channel::{Backend, BackendEvent, DataArea, KeyMap, Window};
use net_guest::config::GuestConfig;
use net_guest::device::Metered;
use net_guest::link::{Link, LinkEvent, QosAnswer};
use net_guest::work::{Report, Step, Workload};
use netback::engine::RxQueueLimits;
use netback::negotiate::FrontendFeatures;
use netback::{Netback, RxMeta};
use smoltcp::iface::{Interface, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;
use xen_abi::netif::{RxRing, TxRing};
use xen_abi::shmem::HostMem;

/// A smoltcp device made of two frame queues.
#[derive(Default)]
struct Queues {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

struct QRx(Vec<u8>);
struct QTx<'a>(&'a mut VecDeque<Vec<u8>>);

impl Device for Queues {
    type RxToken<'a> = QRx;
    type TxToken<'a> = QTx<'a>;
    fn receive(&mut self, _t: Instant) -> Option<(QRx, QTx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((QRx(f), QTx(&mut self.tx)))
    }
    fn transmit(&mut self, _t: Instant) -> Option<QTx<'_>> {
        Some(QTx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

impl RxToken for QRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for QTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}

struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    work: Workload,
    report: Option<Report>,
}

impl Stack {
    fn new<D: Device>(cfg: &GuestConfig, dev: &mut D, now: Instant) -> Self {
        let mut sockets = SocketSet::new(vec![]);
        let iface = net_guest::build_interface(cfg, dev, now, 7);
        let work = Workload::new(cfg, &mut sockets, now, 1234).expect("a workload");
        Self {
            iface,
            sockets,
            work,
            report: None,
        }
    }

    fn poll<D: Device>(&mut self, dev: &mut D, now: Instant) {
        self.iface.poll(now, dev, &mut self.sockets);
        if self.report.is_none()
            && let Step::Done(r) = self.work.poll(&mut self.iface, &mut self.sockets, now)
        {
            self.report = Some(r);
        }
        self.iface.poll(now, dev, &mut self.sockets);
    }
}

/// The backend of the channel (one port of a net-dd).
struct Back {
    be: Backend<HostMem>,
    engine: Option<(Netback<Window<HostMem>>, DataArea<HostMem>)>,
    admission: LinkAdmission,
    closed_on_fatal: bool,
    tx_errors: u64,
}

impl Back {
    fn new(region: HostMem, link_bps: u64) -> Self {
        let mut keys = KeyMap::new();
        keys.insert("ivshmem-peer", "0").unwrap();
        keys.insert("feature-sg", "1").unwrap();
        Self {
            be: Backend::new(region, keys).unwrap(),
            engine: None,
            admission: LinkAdmission::new(link_bps),
            closed_on_fatal: false,
            tx_errors: 0,
        }
    }

    /// Runs the endpoint and the engine; frames from the guest go to `to_peer`, `from_peer`
    /// go to the guest.
    fn poll(&mut self, now_us: u64, to_peer: &mut VecDeque<Vec<u8>>, from_peer: &mut VecDeque<Vec<u8>>) {
        while let Some(ev) = self.be.poll() {
            match ev {
                BackendEvent::Connect => {
                    let fk = self.be.frontend_keys().clone();
                    assert_eq!(fk.get("request-rx-copy"), Some("1"));
                    let mac = fk.get("mac").expect("mac key");
                    assert!(
                        mac.len() == 17 && mac.split(':').all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok()),
                        "mac as xx:xx:xx:xx:xx:xx: {mac}"
                    );
                    assert!(fk.get("ivshmem-peer").is_some_and(|p| p.parse::<u16>().is_ok()));
                    let decision = match NetQosRequest::from_keys(&fk).unwrap() {
                        Some(req) => Some(self.admission.admit(&req)),
                        None => None,
                    };
                    if let Some(d) = &decision {
                        qos::write_decision(d, self.be.keys_mut()).unwrap();
                        self.be.publish_keys();
                    }
                    if let Some(iconnect::Decision::Refused { .. }) = decision {
                        self.be.refuse();
                        continue;
                    }
                    let features = FrontendFeatures {
                        sg: fk.get("feature-sg") == Some("1"),
                        ip_csum_offload: fk.get("feature-no-csum-offload") != Some("1"),
                        ipv6_csum_offload: false,
                        rx_notify: true,
                    };
                    let nb = Netback::new(
                        self.be.ring_window::<TxRing>(0).unwrap(),
                        self.be.ring_window::<RxRing>(1).unwrap(),
                        features,
                        RxQueueLimits::default(),
                    )
                    .unwrap();
                    self.engine = Some((nb, self.be.data_area().unwrap()));
                    self.be.accept();
                }
                BackendEvent::Disconnect | BackendEvent::Removed | BackendEvent::Failed(_) => {
                    self.engine = None;
                }
            }
        }
        let Some((nb, grants)) = self.engine.as_mut() else { return };
        let r = nb.poll_tx(now_us, grants, 64, |f| to_peer.push_back(f.data.to_vec()));
        while let Some(f) = from_peer.pop_front() {
            let _ = nb.queue_rx(&f, RxMeta::default());
        }
        let r2 = nb.poll_rx(grants, 64);
        self.tx_errors = nb.stats().tx_copy_errors + nb.stats().tx_malformed;
        if r.is_err() || r2.is_err() {
            self.closed_on_fatal = true;
            self.engine = None;
            self.be.fail();
        }
    }
}

struct World {
    region: HostMem,
    now_us: u64,
    step_us: u64,
    link: Link<HostMem>,
    back: Back,
    guest_cfg: GuestConfig,
    guest: Option<Stack>,
    peer_dev: Metered<Queues>,
    peer: Stack,
    events: Vec<LinkEvent>,
}

const PEER: &str = "ip=10.0.2.2/24 gw=10.0.2.1 mac=52:54:00:00:00:02 name=peer";

impl World {
    fn new(guest: &str, peer: &str, link_bps: u64) -> Self {
        let region = HostMem::pages(256);
        let guest_cfg = GuestConfig::from_cmdline(guest).unwrap();
        let link = Link::new(region.clone(), 1, &guest_cfg).unwrap();
        let back = Back::new(region.clone(), link_bps);
        let mut peer_dev = Metered::new(Queues::default());
        let peer_cfg = GuestConfig::from_cmdline(&format!("{PEER} {peer}")).unwrap();
        let peer = Stack::new(&peer_cfg, &mut peer_dev, Instant::ZERO);
        Self {
            region,
            now_us: 0,
            step_us: 50,
            link,
            back,
            guest_cfg,
            guest: None,
            peer_dev,
            peer,
            events: Vec::new(),
        }
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.now_us as i64)
    }

    /// One round of everybody, `step_us` of simulated time.
    fn step(&mut self) {
        let now = self.now();
        if let Some(ev) = self.link.poll().unwrap() {
            if matches!(ev, LinkEvent::Up(_)) && self.guest.is_none() {
                let dev = self.link.device().unwrap();
                self.guest = Some(Stack::new(&self.guest_cfg, dev, now));
            }
            self.events.push(ev);
        }
        if let (Some(g), Some(dev)) = (self.guest.as_mut(), self.link.device()) {
            dev.netfront().poll().unwrap();
            g.poll(dev, now);
        }
        let _ = self.link.take_doorbells();
        let q = self.peer_dev.inner();
        self.back.poll(self.now_us, &mut q.rx, &mut q.tx);
        self.peer.poll(&mut self.peer_dev, now);
        let q = self.peer_dev.inner();
        self.back.poll(self.now_us, &mut q.rx, &mut q.tx);
        self.now_us += self.step_us;
    }

    fn run_until(&mut self, max_secs: u64, mut done: impl FnMut(&World) -> bool) {
        while !done(self) {
            assert!(self.now_us < max_secs * 1_000_000, "timed out; events {:?}", self.events);
            self.step();
        }
    }

    fn guest_report(&mut self, max_secs: u64) -> Report {
        self.run_until(max_secs, |w| w.guest.as_ref().is_some_and(|g| g.report.is_some()));
        self.guest.as_ref().unwrap().report.clone().unwrap()
    }
}

fn field(r: &Report, key: &str) -> u64 {
    r.fields
        .split(' ')
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key} in {}", r.fields))
        .parse::<f64>()
        .unwrap() as u64
}

#[test]
fn ping_through_netback_with_qos_granted() {
    let mut w = World::new(
        "ip=10.0.2.20/24 mac=52:54:00:12:34:20 qos_guaranteed_bps=100000000 qos_class=latency work=ping:10.0.2.2:20",
        "work=serve",
        1_000_000_000,
    );
    let r = w.guest_report(30);
    assert!(r.ok, "{}", r.fields);
    assert_eq!((field(&r, "sent"), field(&r, "received"), field(&r, "lost")), (20, 20, 0));
    assert!(field(&r, "rtt_us_p50") >= 50, "a round trip takes simulated time: {}", r.fields);
    match &w.events[0] {
        LinkEvent::Up(QosAnswer::Granted(g)) => {
            assert_eq!(g.guaranteed_bps, 100_000_000);
            assert_eq!(g.class, iconnect::Class::Realtime);
        }
        e => panic!("first event {e:?}"),
    }
}

#[test]
fn tcp_rtt_and_echo_through_netback() {
    let mut w = World::new("work=tcp-rtt:10.0.2.2:7:50", "work=serve", 1_000_000_000);
    let r = w.guest_report(30);
    assert!(r.ok, "{}", r.fields);
    assert_eq!(field(&r, "count"), 50);
    assert!(field(&r, "rtt_us_p99") >= field(&r, "rtt_us_p50"));
    assert_eq!(w.events[0], LinkEvent::Up(QosAnswer::None), "no QoS asked");
    assert_eq!(w.peer.work.payload(), (50 * 64, 50 * 64), "the peer echoed every byte");
}

#[test]
fn tcp_send_to_a_sink_through_netback() {
    let mut w = World::new("work=tcp-send:10.0.2.2:9:1", "work=serve", 1_000_000_000);
    // Coarse steps: a simulated second of bulk data stays quick in a debug build.
    w.step_us = 1000;
    let r = w.guest_report(30);
    assert!(r.ok, "{}", r.fields);
    let bytes = field(&r, "bytes");
    assert!(bytes > 100_000, "{}", r.fields);
    assert!(w.peer.work.payload().1 >= bytes, "the sink received what was acknowledged");
    // Let the last frames land, then every frame one side sent reached the other.
    for _ in 0..200 {
        w.step();
    }
    let nf = *w.link.device().unwrap().netfront().stats();
    assert!(nf.tx_bytes > bytes && nf.tx_errors == 0 && nf.rx_errors == 0, "{nf:?}");
    let m = w.peer_dev.meter();
    assert_eq!((m.rx_frames, m.rx_bytes), (nf.tx_packets, nf.tx_bytes), "guest -> peer");
    assert_eq!((m.tx_frames, m.tx_bytes), (nf.rx_packets, nf.rx_bytes), "peer -> guest");
}

#[test]
fn guest_serves_a_peer() {
    let mut w = World::new("work=serve secs=3", "work=tcp-rtt:10.0.2.20:7:20", 1_000_000_000);
    w.run_until(30, |w| w.peer.report.is_some());
    let r = w.peer.report.clone().unwrap();
    assert!(r.ok, "{}", r.fields);
    let g = w.guest_report(30);
    assert!(g.ok, "{}", g.fields);
    assert_eq!(field(&g, "echo_bytes"), 20 * 64);
    assert_eq!(field(&g, "connections"), 1);
}

#[test]
fn qos_over_capacity_is_refused_and_reported() {
    let mut w = World::new("qos_guaranteed_bps=2000000000 work=serve", "work=serve", 1_000_000_000);
    w.run_until(5, |w| !w.events.is_empty());
    match &w.events[0] {
        LinkEvent::Down(why) => {
            assert!(why.contains("reason=backend-refused"), "{why}");
            assert!(why.contains("qos=refused granted_bps=0 qos_reason=over-capacity"), "{why}");
        }
        e => panic!("{e:?}"),
    }
    assert!(!w.link.is_up());
}

#[test]
fn hostile_bad_refs_are_answered_with_errors() {
    let mut w = World::new("work=serve", "work=serve", 1_000_000_000);
    w.run_until(5, |w| w.link.is_up());
    let what = w.link.hostile(net_guest::config::Hostile::BadRef).unwrap();
    assert!(what.contains("8 requests"), "{what}");
    let (mut answered, mut errors) = (0, 0);
    for _ in 0..100 {
        let q = w.peer_dev.inner();
        w.back.poll(w.now_us, &mut q.rx, &mut q.tx);
        w.link.hostile_responses(&mut answered, &mut errors).unwrap();
    }
    assert_eq!((answered, errors), (8, 8));
    assert!(w.link.is_up() && !w.back.closed_on_fatal);
    assert_eq!(w.back.tx_errors, 8);
}

#[test]
fn hostile_wild_producer_and_oversize_close_the_channel() {
    for mode in [net_guest::config::Hostile::ReqProd, net_guest::config::Hostile::Oversize] {
        let mut w = World::new("work=serve", "work=serve", 1_000_000_000);
        w.run_until(5, |w| w.link.is_up());
        w.link.hostile(mode).unwrap();
        w.run_until(5, |w| w.events.len() > 1);
        assert!(w.back.closed_on_fatal, "{mode:?}");
        match &w.events[1] {
            LinkEvent::Down(why) => assert!(why.contains("reason=backend-closed"), "{why}"),
            e => panic!("{e:?}"),
        }
        assert!(w.link.device().is_none());
    }
}

/// The peer runs `work` against the guest from now on (a fresh stack on the same device).
fn peer_runs(w: &mut World, work: &str) -> Report {
    let cfg = GuestConfig::from_cmdline(&format!("{PEER} {work}")).unwrap();
    let now = w.now();
    w.peer = Stack::new(&cfg, &mut w.peer_dev, now);
    let until = w.now_us / 1_000_000 + 30;
    w.run_until(until, |w| w.peer.report.is_some());
    w.peer.report.clone().unwrap()
}

/// A serving guest promises a heartbeat, follows a backend that restarts (new generation: a
/// new device, traffic flows again without any action of the guest) and rejoins, as a new
/// frontend generation, a backend that closed the channel.
#[test]
fn serve_survives_backend_restart_and_close() {
    let mut w = World::new("work=serve", "work=serve", 1_000_000_000);
    w.run_until(5, |w| w.link.is_up());
    assert_eq!(w.back.be.frontend_keys().get("heartbeat-ms"), Some("1000"));
    let hb = w.back.be.peer_heartbeat();
    w.link.beat();
    assert_ne!(w.back.be.peer_heartbeat(), hb, "beat() moves the counter the backend watches");
    let r = peer_runs(&mut w, "work=ping:10.0.2.20:5");
    assert!(r.ok, "{}", r.fields);

    // net-dd restarts: a new backend generation on the same region.
    w.back = Back::new(w.region.clone(), 1_000_000_000);
    w.run_until(w.now_us / 1_000_000 + 5, |w| w.events.len() >= 3);
    assert!(matches!(&w.events[1], LinkEvent::Down(_)), "{:?}", w.events);
    assert_eq!(w.events[2], LinkEvent::Up(QosAnswer::None));
    assert!(!w.link.is_closed());
    let r = peer_runs(&mut w, "work=ping:10.0.2.20:5");
    assert!(r.ok, "after the backend restarted: {}", r.fields);

    // The backend closes the channel: the guest's end is closed until it restarts.
    w.back.be.fail();
    w.run_until(w.now_us / 1_000_000 + 5, |w| w.events.len() >= 4);
    match &w.events[3] {
        LinkEvent::Down(why) => assert!(why.contains("reason=backend-closed"), "{why}"),
        e => panic!("{e:?}"),
    }
    for _ in 0..200 {
        w.step();
    }
    assert_eq!(w.events.len(), 4, "one Down per closed connection: {:?}", w.events);
    assert!(w.link.is_closed() && w.link.device().is_none());
    w.link.restart();
    w.run_until(w.now_us / 1_000_000 + 5, |w| w.events.len() >= 5);
    assert_eq!(w.events[4], LinkEvent::Up(QosAnswer::None));
    let r = peer_runs(&mut w, "work=ping:10.0.2.20:5");
    assert!(r.ok, "after rejoining: {}", r.fields);
}

/// `heartbeat_ms=0`: no promise in the keys (the backend then never times the guest out).
#[test]
fn no_heartbeat_promise_when_disabled() {
    let mut w = World::new("work=serve heartbeat_ms=0", "work=serve", 1_000_000_000);
    w.run_until(5, |w| w.link.is_up());
    assert_eq!(w.back.be.frontend_keys().get("heartbeat-ms"), None);
}
