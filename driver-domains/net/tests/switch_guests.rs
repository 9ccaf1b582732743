//! Several simulated guests through the real switch: each guest is the real `netfront` engine
//! behind a real iConnect channel `Frontend` over `HostMem`; net-dd's side is the real
//! `ChannelPort` (handshake, keys, QoS admission) and `Switch` (bridge, scheduler, `netback`
//! engines). Only the uplink NIC and the stack are fakes (frame lists). Time is simulated.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use iconnect::Decision;
use iconnect::qos::{self, NetQosRequest};
use iconnect_channel::{Frontend, FrontendConfig, FrontendEvent, KeyMap, RingSpec, Window};
use net_dd::chanport::{self, ChannelPort, ChannelSwitch, PortEvent};
use net_dd::switch::{self, STACK, UPLINK, Wire};
use netfront::channel::ChannelBuffers;
use netfront::{Config, Netfront};
use netswitch::Mac;
use xen_abi::netif::{RX_RESPONSE_SIZE, RxRing, TX_REQUEST_SIZE, TxRing};
use xen_abi::shmem::{HostMem, SharedMem};
use xen_abi::xenbus::FrontendStyle;

type Front = Netfront<Window<HostMem>, ChannelBuffers<HostMem>>;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
const HOST: Mac = Mac([0x02, 0, 0, 0, 0, 2]);
const STACK_MAC: Mac = Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
/// net-dd's doorbell id on every channel.
const DD_ID: u16 = 0;

fn guest_mac(i: usize) -> Mac {
    Mac([0x52, 0x54, 0, 0x12, 0x34, 0x20 + i as u8])
}

fn frame(dst: Mac, src: Mac, len: usize, tag: u32) -> Vec<u8> {
    let mut f = dst.0.to_vec();
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(&tag.to_le_bytes());
    f.resize(len, 0xa5);
    f
}

fn tag_of(f: &[u8]) -> u32 {
    u32::from_le_bytes(f[14..18].try_into().unwrap())
}

#[derive(Default)]
struct FakeWire {
    uplink: Vec<Vec<u8>>,
    stack: Vec<Vec<u8>>,
    busy: bool,
}

impl Wire for FakeWire {
    fn uplink_ready(&mut self) -> bool {
        !self.busy
    }
    fn uplink_send(&mut self, frame: &[u8]) -> bool {
        self.uplink.push(frame.to_vec());
        true
    }
    fn stack_deliver(&mut self, frame: &[u8]) {
        self.stack.push(frame.to_vec());
    }
}

struct Guest {
    region: HostMem,
    fe: Frontend<HostMem>,
    nf: Option<Front>,
    keys: KeyMap,
    ready: bool,
    rx: Vec<Vec<u8>>,
    /// A guest that has stopped running its driver (never polls, never reposts buffers).
    frozen: bool,
}

fn guest_keys(i: usize, mac: Mac, qos: Option<NetQosRequest>) -> KeyMap {
    let mut k = KeyMap::new();
    k.insert("mac", &mac.to_string()).unwrap();
    k.insert("request-rx-copy", "1").unwrap();
    k.insert("feature-sg", "1").unwrap();
    k.insert("feature-rx-notify", "1").unwrap();
    k.insert("feature-no-csum-offload", "1").unwrap();
    k.insert(chanport::PEER_KEY, &(i + 1).to_string()).unwrap();
    if let Some(q) = qos {
        q.write(&mut k).unwrap();
    }
    k
}

fn front_config() -> FrontendConfig {
    FrontendConfig {
        style: FrontendStyle::Net,
        rings: vec![
            RingSpec {
                page_order: 0,
                slot_bytes: TX_REQUEST_SIZE as u32,
                vector: chanport::TX_VECTOR.into(),
            },
            RingSpec {
                page_order: 0,
                slot_bytes: RX_RESPONSE_SIZE as u32,
                vector: chanport::RX_VECTOR.into(),
            },
        ],
        data_pages: None,
    }
}

impl Guest {
    fn new(region: HostMem, keys: KeyMap) -> Self {
        let fe = Frontend::new(region.clone(), front_config(), keys.clone()).unwrap();
        Self {
            region,
            fe,
            nf: None,
            keys,
            ready: false,
            rx: Vec::new(),
            frozen: false,
        }
    }

    /// The guest reboots: a new frontend (new generation) on the same region.
    fn reboot(&mut self) {
        self.fe = Frontend::new(self.region.clone(), front_config(), self.keys.clone()).unwrap();
        self.nf = None;
        self.ready = false;
    }

    fn poll(&mut self) {
        if self.frozen {
            return;
        }
        self.fe.beat();
        while let Some(ev) = self.fe.poll() {
            match ev {
                FrontendEvent::SetUp => {
                    let bufs =
                        ChannelBuffers::new(self.fe.data_area().unwrap(), self.fe.page_allocator());
                    self.nf = Some(Netfront::new(
                        self.fe.front_ring::<TxRing>(0).unwrap(),
                        self.fe.front_ring::<RxRing>(1).unwrap(),
                        bufs,
                        Config {
                            sg: true,
                            tx_buffers: 128,
                            rx_buffers: 64,
                        },
                    ));
                }
                FrontendEvent::Ready => self.ready = true,
                FrontendEvent::Disconnect | FrontendEvent::Closed | FrontendEvent::Failed(_) => {
                    self.ready = false;
                    self.nf = None;
                }
            }
        }
        if let Some(nf) = self.nf.as_mut()
            && nf.broken().is_none()
        {
            nf.poll().unwrap();
            while let Some(f) = nf.recv().unwrap() {
                self.rx.push(f.data.clone());
                nf.recycle(f.data);
            }
        }
    }

    fn send(&mut self, f: &[u8]) -> bool {
        self.nf.as_mut().is_some_and(|nf| nf.send(f).is_ok())
    }

    fn take_rx(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.rx)
    }
}

struct Net {
    sw: ChannelSwitch<HostMem>,
    ports: Vec<ChannelPort<HostMem>>,
    guests: Vec<Guest>,
    wire: FakeWire,
    events: Vec<PortEvent>,
    now: u64,
}

impl Net {
    fn new(link_bps: u64, asks: &[(Mac, Option<NetQosRequest>)]) -> Self {
        let mut ports = Vec::new();
        let mut guests = Vec::new();
        for (i, (mac, q)) in asks.iter().enumerate() {
            let region = HostMem::pages(256);
            let port = switch::guest_port(i).unwrap();
            ports.push(ChannelPort::new(port, region.clone(), DD_ID).unwrap());
            guests.push(Guest::new(region, guest_keys(i, *mac, *q)));
        }
        let mut n = Self {
            sw: ChannelSwitch::new(link_bps, STACK_MAC, 0),
            ports,
            guests,
            wire: FakeWire::default(),
            events: Vec::new(),
            now: 0,
        };
        n.settle();
        n
    }

    /// One round of everybody's work (doorbells are implied: every port is looked at).
    fn round(&mut self) -> Option<u64> {
        for g in &mut self.guests {
            g.poll();
        }
        for p in &mut self.ports {
            p.check_liveness(self.now);
            p.poll(&mut self.sw, self.now, &mut self.events);
            if p.attached() {
                self.sw.doorbell(p.port());
            }
        }
        for (p, e) in self.sw.take_failed() {
            let cp = self.ports.iter_mut().find(|c| c.port() == p).unwrap();
            cp.fail(format!("netback:{e}"));
            cp.poll(&mut self.sw, self.now, &mut self.events);
        }
        let wake = self.sw.pump(self.now, &mut self.wire);
        self.sw.flush();
        for g in &mut self.guests {
            g.poll();
        }
        wake
    }

    fn settle(&mut self) {
        for _ in 0..8 {
            self.round();
        }
    }

    fn take_events(&mut self) -> Vec<String> {
        self.events.drain(..).map(|e| e.marker()).collect()
    }
}

#[test]
fn guests_reach_each_other_the_uplink_and_the_stack() {
    let macs: Vec<_> = (0..3).map(|i| (guest_mac(i), None)).collect();
    let mut net = Net::new(1_000_000_000, &macs);
    let ev = net.take_events();
    assert_eq!(
        ev,
        [
            "ICONNECT-PORT 1 up mac=52:54:00:12:34:20 qos=none",
            "ICONNECT-PORT 2 up mac=52:54:00:12:34:21 qos=none",
            "ICONNECT-PORT 3 up mac=52:54:00:12:34:22 qos=none",
        ]
    );
    assert!(net.guests.iter().all(|g| g.ready));

    // Guest 1 to guest 2 (pinned MACs are known at once): nobody else sees it.
    assert!(net.guests[0].send(&frame(guest_mac(1), guest_mac(0), 1000, 1)));
    net.settle();
    let got = net.guests[1].take_rx();
    assert_eq!(got, [frame(guest_mac(1), guest_mac(0), 1000, 1)]);
    assert!(net.guests[2].take_rx().is_empty() && net.guests[0].take_rx().is_empty());
    assert!(net.wire.uplink.is_empty() && net.wire.stack.is_empty());

    // A broadcast from guest 3 reaches everyone but guest 3; a multi-page frame (sg) too.
    let b = frame(Mac::BROADCAST, guest_mac(2), 6000, 2);
    assert!(net.guests[2].send(&b));
    net.settle();
    assert_eq!(net.guests[0].take_rx(), std::slice::from_ref(&b));
    assert_eq!(net.guests[1].take_rx(), std::slice::from_ref(&b));
    assert!(net.guests[2].take_rx().is_empty());
    assert_eq!(net.wire.uplink, std::slice::from_ref(&b));
    assert_eq!(net.wire.stack, [b]);
    net.wire.uplink.clear();
    net.wire.stack.clear();

    // The host answers guest 3 through the uplink; the stack answers guest 1.
    let from_host = frame(guest_mac(2), HOST, 300, 3);
    net.sw.input(UPLINK, &from_host, net.now, &mut net.wire);
    let from_stack = frame(guest_mac(0), STACK_MAC, 200, 4);
    net.sw.input(STACK, &from_stack, net.now, &mut net.wire);
    net.settle();
    assert_eq!(net.guests[2].take_rx(), [from_host]);
    assert_eq!(net.guests[0].take_rx(), [from_stack]);
    assert!(net.guests[1].take_rx().is_empty());
    // Now the host's MAC is learnt: guest 2's unicast to it leaves by the uplink only.
    assert!(net.guests[1].send(&frame(HOST, guest_mac(1), 500, 5)));
    net.settle();
    assert_eq!(net.wire.uplink.len(), 1);
    assert_eq!(tag_of(&net.wire.uplink[0]), 5);
    assert!(net.wire.stack.is_empty());
    assert!(net.guests.iter_mut().all(|g| g.take_rx().is_empty()));
    let c = net.sw.port_counters(2).unwrap();
    assert_eq!((c.tx_frames, c.rx_frames, c.drops), (1, 2, 0));
}

#[test]
fn a_spoofing_guest_is_dropped_and_counted() {
    let macs: Vec<_> = (0..2).map(|i| (guest_mac(i), None)).collect();
    let mut net = Net::new(1_000_000_000, &macs);
    // Guest 1 pretends to be guest 2, then the stack; then behaves.
    assert!(net.guests[0].send(&frame(Mac::BROADCAST, guest_mac(1), 100, 1)));
    assert!(net.guests[0].send(&frame(HOST, STACK_MAC, 100, 2)));
    assert!(net.guests[0].send(&frame(HOST, guest_mac(0), 100, 3)));
    net.settle();
    assert!(net.guests[1].take_rx().is_empty() || net.guests[1].take_rx().is_empty());
    let tags: Vec<_> = net.wire.uplink.iter().map(|f| tag_of(f)).collect();
    assert_eq!(tags, [3]);
    let c = net.sw.port_counters(1).unwrap();
    assert_eq!((c.spoofed, c.drops, c.tx_frames), (2, 2, 3));
    // Traffic for guest 2's MAC still goes to guest 2 (learning did not move it).
    net.sw
        .input(UPLINK, &frame(guest_mac(1), HOST, 100, 4), 0, &mut net.wire);
    net.settle();
    assert_eq!(net.guests[1].take_rx().len(), 1);
    assert!(net.guests[0].take_rx().is_empty());
}

#[test]
fn qos_requests_are_granted_refused_or_absent() {
    let ask = |g: u64| {
        Some(NetQosRequest {
            guaranteed_bps: g,
            class: iconnect::Class::Realtime,
            ..Default::default()
        })
    };
    let mut bad = KeyMap::new();
    bad.insert(qos::GUARANTEED, "lots").unwrap();
    let mut net = Net::new(
        100_000_000,
        &[
            (guest_mac(0), ask(60_000_000)),
            (guest_mac(1), ask(60_000_000)),
            (guest_mac(2), None),
        ],
    );
    let ev = net.take_events();
    assert_eq!(
        ev,
        [
            "ICONNECT-PORT 1 up mac=52:54:00:12:34:20 qos=granted guaranteed_bps=60000000 ceiling_bps=100000000 burst_bytes=125000 class=realtime",
            "ICONNECT-PORT 2 up mac=52:54:00:12:34:21 qos=refused reason=over-capacity",
            "ICONNECT-PORT 3 up mac=52:54:00:12:34:22 qos=none",
        ]
    );
    let answer = |g: &Guest| qos::read_decision(g.fe.backend_keys()).unwrap();
    assert!(
        matches!(answer(&net.guests[0]), Some(Decision::Granted(g)) if g.guaranteed_bps == 60_000_000)
    );
    assert!(matches!(
        answer(&net.guests[1]),
        Some(Decision::Refused {
            reason: iconnect::RefuseReason::OverCapacity,
            ..
        })
    ));
    assert_eq!(answer(&net.guests[2]), None);
    assert!(
        net.guests.iter().all(|g| g.ready),
        "a refused request still connects"
    );
    assert_eq!(net.sw.reserved_bps(), 60_000_000);

    // Guest 1 leaves: its reservation is returned; guest 2 reboots with the same request and
    // is granted now. A malformed request is refused as invalid, naming the key.
    net.guests[0].fe.close();
    net.settle();
    assert_eq!(
        net.take_events(),
        ["ICONNECT-PORT 1 down reason=disconnected"]
    );
    assert_eq!(net.sw.reserved_bps(), 0);
    net.guests[1].reboot();
    net.guests[2].keys.insert(qos::GUARANTEED, "lots").unwrap();
    net.guests[2].reboot();
    net.settle();
    let ev = net.take_events();
    assert_eq!(ev.len(), 4, "{ev:?}");
    assert!(ev.contains(&"ICONNECT-PORT 2 down reason=disconnected".to_string()));
    assert!(
        ev.iter()
            .any(|e| e.starts_with("ICONNECT-PORT 2 up mac=52:54:00:12:34:21 qos=granted"))
    );
    assert!(ev.contains(&"ICONNECT-PORT 3 up mac=52:54:00:12:34:22 qos=refused reason=invalid-request error_key=iconnect-qos-guaranteed-bps".to_string()));
    assert_eq!(net.sw.reserved_bps(), 60_000_000);
}

#[test]
fn bad_announcements_are_refused_with_a_reason() {
    let mut keys_no_copy = guest_keys(1, guest_mac(1), None);
    keys_no_copy.insert("request-rx-copy", "0").unwrap();
    let mut net = Net::new(
        1_000_000_000,
        &[
            (guest_mac(0), None),
            (guest_mac(0), None),
            (guest_mac(2), None),
        ],
    );
    net.guests[2].keys = keys_no_copy;
    net.guests[2].reboot();
    net.settle();
    let ev = net.take_events();
    assert!(
        ev.contains(&"ICONNECT-PORT 1 up mac=52:54:00:12:34:20 qos=none".to_string()),
        "{ev:?}"
    );
    assert!(
        ev.contains(&"ICONNECT-PORT 2 down reason=mac-in-use".to_string()),
        "{ev:?}"
    );
    assert!(
        ev.contains(&"ICONNECT-PORT 3 down reason=no-rx-copy".to_string()),
        "{ev:?}"
    );
    // The refused guest finds the reason in the backend's keys.
    let keys = net.guests[1].fe.read_backend_keys().unwrap();
    assert_eq!(keys.get(chanport::ERROR_KEY), Some("mac-in-use"));
    assert!(!net.guests[1].ready && !net.guests[2].ready);
}

#[test]
fn a_hostile_guest_loses_only_its_channel_and_can_come_back() {
    let macs: Vec<_> = (0..2).map(|i| (guest_mac(i), None)).collect();
    let mut net = Net::new(1_000_000_000, &macs);
    net.take_events();
    // Guest 1 writes an impossible producer index into its TX ring.
    let tx = net.guests[0].fe.layout().rings[0];
    let off = tx.offset();
    net.guests[0].region.store_u32(off, 5000, Ordering::Release);
    assert!(net.guests[1].send(&frame(HOST, guest_mac(1), 700, 1)));
    net.settle();
    let ev = net.take_events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(
        ev[0].starts_with("ICONNECT-PORT 1 down reason=netback:"),
        "{ev:?}"
    );
    assert!(!net.sw.is_attached(1));
    // Guest 2 is untouched and keeps working both ways.
    assert_eq!(net.wire.uplink.len(), 1);
    net.sw
        .input(UPLINK, &frame(guest_mac(1), HOST, 100, 2), 0, &mut net.wire);
    assert!(net.guests[1].send(&frame(HOST, guest_mac(1), 700, 3)));
    net.settle();
    assert_eq!(net.guests[1].take_rx().len(), 1);
    assert_eq!(net.wire.uplink.len(), 2);
    // Frames for the dead guest are flooded (unknown now) but go nowhere near its region.
    // The guest reboots (new generation) and is served again.
    net.guests[0].reboot();
    net.settle();
    assert_eq!(
        net.take_events(),
        ["ICONNECT-PORT 1 up mac=52:54:00:12:34:20 qos=none"]
    );
    assert!(net.guests[0].send(&frame(guest_mac(1), guest_mac(0), 64, 4)));
    net.settle();
    assert_eq!(net.guests[1].take_rx().len(), 1);
}

/// Saturating guests through the real engines: every round each fills its TX ring with frames
/// for the host, the switch pumps with simulated time. Returns uplink bytes per source MAC.
fn saturate(net: &mut Net, senders: &[usize], secs: u64, len: usize) -> HashMap<Mac, u64> {
    let end = net.now + secs * SEC;
    let mut bytes = HashMap::new();
    let mut tag = 0;
    while net.now < end {
        for &i in senders {
            let src = guest_mac(i);
            while net.guests[i].nf.as_ref().is_some_and(|nf| nf.can_send(len)) {
                tag += 1;
                assert!(net.guests[i].send(&frame(HOST, src, len, tag)));
            }
        }
        let wake = net.round();
        for f in net.wire.uplink.drain(..) {
            *bytes.entry(Mac::src_of(&f).unwrap()).or_insert(0) += f.len() as u64;
        }
        net.now = match wake {
            Some(t) if t > net.now => t,
            Some(_) => net.now,
            None => net.now + MS,
        };
    }
    bytes
}

#[test]
fn qos_holds_through_the_real_engines() {
    let link = 10_000_000;
    let ask = |g: u64| {
        Some(NetQosRequest {
            guaranteed_bps: g,
            ..Default::default()
        })
    };
    let mut net = Net::new(
        link,
        &[
            (guest_mac(0), ask(2_000_000)),
            (guest_mac(1), ask(4_000_000)),
            (guest_mac(2), None),
        ],
    );
    // Warm-up, then measure: guests 1 and 2 (2x guarantee) and a flooding best-effort guest 3.
    saturate(&mut net, &[0, 1, 2], 1, 1514);
    let b = saturate(&mut net, &[0, 1, 2], 4, 1514);
    let rate = |m: Mac| b.get(&m).copied().unwrap_or(0) as f64 * 8.0 / 4.0;
    let (r1, r2, r3) = (rate(guest_mac(0)), rate(guest_mac(1)), rate(guest_mac(2)));
    assert!(r1 >= 0.95 * 2_000_000.0, "guest 1 {r1}");
    assert!(r2 >= 0.95 * 4_000_000.0, "guest 2 {r2}");
    let ratio = r2 / r1;
    assert!(
        (ratio - 2.0).abs() < 0.1,
        "ratio {ratio} ({r1} / {r2} / {r3})"
    );
    let total = r1 + r2 + r3;
    assert!(
        total <= 1.01 * link as f64 && total >= 0.95 * link as f64,
        "total {total}"
    );
    // Nothing was dropped: guests were held back in their rings.
    for p in 1..=3 {
        assert_eq!(net.sw.port_counters(p).unwrap().drops, 0);
    }
}

#[test]
fn a_guest_that_stops_receiving_costs_only_itself() {
    let macs: Vec<_> = (0..2).map(|i| (guest_mac(i), None)).collect();
    let mut net = Net::new(1_000_000_000, &macs);
    net.guests[0].frozen = true;
    // Broadcasts from the host, 16 per round: guest 2 gets every one; guest 1's posted buffers
    // and its bounded queue fill up, the rest is dropped and counted against guest 1 only.
    for batch in 0..40u32 {
        for k in 0..16 {
            let f = frame(Mac::BROADCAST, HOST, 1000, batch * 16 + k);
            net.sw.input(UPLINK, &f, net.now, &mut net.wire);
        }
        net.round();
    }
    net.settle();
    let got = net.guests[1].take_rx();
    assert_eq!(got.len(), 640);
    assert!(got.iter().enumerate().all(|(i, f)| tag_of(f) == i as u32));
    let c1 = net.sw.port_counters(1).unwrap();
    let c2 = net.sw.port_counters(2).unwrap();
    assert_eq!(c2.drops, 0);
    // At most its posted buffers (64) were filled and its queue (64 frames) holds the rest.
    assert!(c1.rx_frames <= 64, "{c1:?}");
    assert_eq!(c1.rx_frames + c1.drops + 64, 640, "{c1:?}");
    // The guest wakes up: it gets the queued frames (in order), then new ones again.
    net.guests[0].frozen = false;
    net.settle();
    net.settle();
    let late = net.guests[0].take_rx();
    assert_eq!(late.len() as u64, c1.rx_frames + 64);
    net.sw.input(
        UPLINK,
        &frame(guest_mac(0), HOST, 100, 9999),
        net.now,
        &mut net.wire,
    );
    net.settle();
    assert_eq!(
        net.guests[0]
            .take_rx()
            .iter()
            .map(|f| tag_of(f))
            .collect::<Vec<_>>(),
        [9999]
    );
}

/// Where a frame goes, by the bridge rules, for the model.
#[derive(Debug, Clone, Copy)]
enum Dst {
    Guest(usize),
    Broadcast,
    Host(u8),
    Stack,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// Guest `from` sends to `dst`; with `spoof`, from another source MAC.
    GuestSend { from: usize, dst: Dst, spoof: bool },
    /// Host `h` (behind the uplink) sends to `dst`.
    HostSend { h: u8, dst: Dst },
}

fn host_mac(h: u8) -> Mac {
    Mac([0x02, 0, 0, 0, 1, h])
}

fn dst_strategy(guests: usize) -> impl proptest::strategy::Strategy<Value = Dst> {
    use proptest::prelude::*;
    prop_oneof![
        (0..guests).prop_map(Dst::Guest),
        Just(Dst::Broadcast),
        (0u8..3).prop_map(Dst::Host),
        Just(Dst::Stack),
    ]
}

fn op_strategy(guests: usize) -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        (
            0..guests,
            dst_strategy(guests),
            proptest::bool::weighted(0.2)
        )
            .prop_map(|(from, dst, spoof)| Op::GuestSend { from, dst, spoof }),
        (0u8..3, dst_strategy(guests)).prop_map(|(h, dst)| Op::HostSend { h, dst }),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]

    /// Random traffic among three guests, hosts behind the uplink and the stack: every frame
    /// reaches exactly the ports a learning bridge with pinned guest MACs sends it to (never its
    /// sender, never anything for a spoofed source), byte-exact.
    #[test]
    fn every_frame_reaches_exactly_the_right_ports(ops in proptest::collection::vec(op_strategy(3), 1..40)) {
        const G: usize = 3;
        let macs: Vec<_> = (0..G).map(|i| (guest_mac(i), None)).collect();
        let mut net = Net::new(1_000_000_000, &macs);
        let mut learnt_hosts = std::collections::HashSet::new();
        for (tag, op) in ops.into_iter().enumerate() {
            let tag = tag as u32;
            let dst_mac = |d: Dst| match d {
                Dst::Guest(j) => guest_mac(j),
                Dst::Broadcast => Mac::BROADCAST,
                Dst::Host(h) => host_mac(h),
                Dst::Stack => STACK_MAC,
            };
            // (guests that must get it, uplink?, stack?)
            let (mut want_g, mut want_up, mut want_stack) = ([false; G], false, false);
            match op {
                Op::GuestSend { from, dst, spoof } => {
                    let src = if spoof { guest_mac((from + 1) % G) } else { guest_mac(from) };
                    let f = frame(dst_mac(dst), src, 60 + tag as usize, tag);
                    proptest::prop_assert!(net.guests[from].send(&f));
                    if !spoof {
                        match dst {
                            Dst::Guest(j) => want_g[j] = j != from,
                            Dst::Stack => want_stack = true,
                            Dst::Host(h) if learnt_hosts.contains(&h) => want_up = true,
                            Dst::Broadcast | Dst::Host(_) => {
                                want_g = [true; G];
                                want_g[from] = false;
                                want_up = true;
                                want_stack = true;
                            }
                        }
                    }
                }
                Op::HostSend { h, dst } => {
                    learnt_hosts.insert(h);
                    let f = frame(dst_mac(dst), host_mac(h), 60 + tag as usize, tag);
                    net.sw.input(UPLINK, &f, net.now, &mut net.wire);
                    match dst {
                        Dst::Guest(j) => want_g[j] = true,
                        Dst::Stack => want_stack = true,
                        // Learnt on the uplink: never sent back there; unknown: flooded.
                        Dst::Host(h2) if learnt_hosts.contains(&h2) => {}
                        Dst::Host(_) | Dst::Broadcast => {
                            want_g = [true; G];
                            want_stack = true;
                        }
                    }
                }
            }
            net.settle();
            for (j, want) in want_g.iter().enumerate() {
                let got: Vec<u32> = net.guests[j].take_rx().iter().map(|f| tag_of(f)).collect();
                proptest::prop_assert_eq!(got, if *want { vec![tag] } else { vec![] }, "guest {} after {:?}", j, op);
            }
            let up: Vec<u32> = net.wire.uplink.drain(..).map(|f| tag_of(&f)).collect();
            proptest::prop_assert_eq!(up, if want_up { vec![tag] } else { vec![] }, "uplink after {:?}", op);
            let st: Vec<u32> = net.wire.stack.drain(..).map(|f| tag_of(&f)).collect();
            proptest::prop_assert_eq!(st, if want_stack { vec![tag] } else { vec![] }, "stack after {:?}", op);
        }
    }
}

#[test]
fn a_guest_that_promised_a_heartbeat_and_died_is_taken_down() {
    let macs: Vec<_> = (0..2).map(|i| (guest_mac(i), None)).collect();
    let mut net = Net::new(1_000_000_000, &macs);
    // Guest 1 promises a 10 ms heartbeat (reconnects with the key); guest 2 promises nothing.
    net.guests[0]
        .keys
        .insert(chanport::HEARTBEAT_KEY, "10")
        .unwrap();
    net.guests[0].reboot();
    net.settle();
    net.take_events();
    assert_eq!(
        net.guests[0].fe.backend_keys().get(chanport::HEARTBEAT_KEY),
        Some("100")
    );
    // Alive (beating on every poll) for a simulated second, 10 ms per round.
    for _ in 0..100 {
        net.now += 10 * MS;
        net.round();
    }
    assert!(net.take_events().is_empty());
    // Both stop running; only the one that promised a heartbeat is declared dead, after
    // 5 periods.
    net.guests[0].frozen = true;
    net.guests[1].frozen = true;
    for _ in 0..4 {
        net.now += 10 * MS;
        net.round();
    }
    assert!(net.take_events().is_empty(), "not before 5 periods");
    for _ in 0..3 {
        net.now += 10 * MS;
        net.round();
    }
    assert_eq!(
        net.take_events(),
        ["ICONNECT-PORT 1 down reason=heartbeat-timeout"]
    );
    assert!(!net.sw.is_attached(1) && net.sw.is_attached(2));
    // The VM comes back (a new generation) and is served again.
    net.guests[0].frozen = false;
    net.guests[0].reboot();
    net.settle();
    assert_eq!(
        net.take_events(),
        ["ICONNECT-PORT 1 up mac=52:54:00:12:34:20 qos=none"]
    );
    // A malformed promise is refused.
    net.guests[1].frozen = false;
    net.guests[1]
        .keys
        .insert(chanport::HEARTBEAT_KEY, "0")
        .unwrap();
    net.guests[1].reboot();
    net.settle();
    let ev = net.take_events();
    assert!(
        ev.contains(&"ICONNECT-PORT 2 down reason=bad-key:heartbeat-ms".to_string()),
        "{ev:?}"
    );
}
