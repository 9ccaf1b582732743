//! Bring-up and event loop of the image (QEMU platform).
//!
//! Ports: 0 = the virtio-net uplink, 1..=N = one guest per ivshmem-doorbell device (PCI order),
//! the domain's own smoltcp stack (10.0.2.15, ARP/ICMP/TCP echo) on the switch's stack port.
//! One executor task does everything on every wake-up: doorbells, channel handshakes, uplink
//! receive, the stack, the scheduled pull from guests, delivery into guests, doorbells back,
//! markers. It sleeps until an interrupt (virtio RX, any doorbell vector) or the earliest
//! deadline (smoltcp timers, the scheduler's next token, a handshake tick while a channel has
//! no guest, the 1 s statistics tick).

use alloc::format;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

use crate::device::{QUEUE_SIZE, VirtioNetDevice};
use hal::ecam::Ecam;
use hal::ivshmem::{self, Doorbells, Registers, SharedRegion};
use hal::mmio::Mmio;
use hal::platform;
use hal::virtio_net::pci as vnet;
use net_dd::Error;
use net_dd::chanport::{self, ChannelPort, ChannelSwitch, PortEvent};
use net_dd::config::NetConfig;
use net_dd::echo::EchoService;
use net_dd::stackdev::QueueDevice;
use net_dd::switch::{self, PortCounters, STACK, UPLINK, Wire};
use netswitch::{Mac, PortId};
use rt::exec::Step;
use smoltcp::iface::SocketSet;
use smoltcp::wire::EthernetAddress;

/// Echo sockets (connections that may be open or closing at once).
const ECHO_SOCKETS: usize = 8;
/// Send/receive buffer per echo socket.
const ECHO_BUF: usize = 8192;
/// Longest sleep with working interrupts (smoltcp timers are honoured anyway).
const IDLE_WITH_IRQ: Duration = Duration::from_secs(1);
/// While a channel has no guest attached, its control page is polled this often (the guest
/// cannot ring us before it knows our doorbell id)...
const HANDSHAKE_TICK: Duration = Duration::from_millis(2);
/// ... and, once nothing happened on such channels for `HANDSHAKE_BACKOFF_AFTER`, this often.
const HANDSHAKE_SLOW_TICK: Duration = Duration::from_millis(50);
/// See `HANDSHAKE_SLOW_TICK`.
const HANDSHAKE_BACKOFF_AFTER: Duration = Duration::from_secs(2);
/// Attached guests are looked at this often even without a doorbell (a doorbell rung before
/// the peer's QEMU knew our eventfd is lost), their heartbeats checked, ours bumped.
const SWEEP_TICK: Duration = Duration::from_millis(chanport::OWN_HEARTBEAT_MS);
/// `ICONNECT-PORTSTAT` period.
const STATS_TICK: Duration = Duration::from_secs(1);
/// Uplink frames taken per wake-up before the other ports get their turn.
const UPLINK_BUDGET: usize = 64;
/// Doorbell vectors per channel (ring 0 = TX, ring 1 = RX).
const CHANNEL_VECTORS: u16 = 2;
/// Poll period without interrupts.
const IDLE_POLLING: Duration = Duration::from_micros(200);
/// Where unassigned BARs are placed (32-bit MMIO hole above q35's ECAM, below the IOAPIC).
const BAR_WINDOW: (u64, u64) = (0xc000_0000, 0xfe00_0000);

static RX_IRQS: AtomicU64 = AtomicU64::new(0);
/// When the last uplink receive interrupt arrived (ns, rt clock; 0 = consumed).
static RX_IRQ_AT: AtomicU64 = AtomicU64::new(0);

fn on_rx_irq() {
    RX_IRQS.fetch_add(1, Ordering::Relaxed);
    RX_IRQ_AT.store(rt::time::now().as_nanos().max(1), Ordering::Relaxed);
}

/// Where the event loop's time goes (TSC-based; under TCG the absolute ns are scaled by the
/// calibration error, the proportions hold). Printed with the 10 s statistics as `perf:`.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
struct Perf {
    /// Task polls (wake-ups plus busy re-polls).
    polls: u64,
    /// Polls that returned `Busy`.
    busy: u64,
    /// Uplink interrupts seen by a poll, and the summed interrupt -> poll latency.
    irq_seen: u64,
    irq_lat_ns: u64,
    /// ns per phase: channels, pump, uplink rx, stack, flush, doorbells, rest.
    phase_ns: [u64; 7],
    /// Doorbells received / rung (TX vector, RX vector).
    bells_in: u64,
    bells_tx: u64,
    bells_rx: u64,
    /// Frames received from the uplink.
    uplink_frames: u64,
}

const PHASES: [&str; 7] = ["chan", "pump", "uplink", "stack", "flush", "bells", "rest"];

impl Perf {
    fn since(&self, o: &Perf) -> Perf {
        let mut phase_ns = self.phase_ns;
        for (a, b) in phase_ns.iter_mut().zip(o.phase_ns) {
            *a -= b;
        }
        Perf {
            polls: self.polls - o.polls,
            busy: self.busy - o.busy,
            irq_seen: self.irq_seen - o.irq_seen,
            irq_lat_ns: self.irq_lat_ns - o.irq_lat_ns,
            phase_ns,
            bells_in: self.bells_in - o.bells_in,
            bells_tx: self.bells_tx - o.bells_tx,
            bells_rx: self.bells_rx - o.bells_rx,
            uplink_frames: self.uplink_frames - o.uplink_frames,
        }
    }

    fn line(&self) -> alloc::string::String {
        let mut s = format!(
            "perf: uplink frames {} (uplink+flush {} ns/frame); polls {} busy {} irqs {} irq->poll avg {} ns; bells in {} out tx {} rx {};",
            self.uplink_frames,
            (self.phase_ns[2] + self.phase_ns[4]) / self.uplink_frames.max(1),
            self.polls,
            self.busy,
            self.irq_seen,
            self.irq_lat_ns / self.irq_seen.max(1),
            self.bells_in,
            self.bells_tx,
            self.bells_rx
        );
        for (n, t) in PHASES.iter().zip(self.phase_ns) {
            s.push_str(&format!(" {n} {} ns/poll", t / self.polls.max(1)));
        }
        s
    }
}

/// Phase stopwatch.
struct Lap(u64);

impl Lap {
    fn next(&mut self, acc: &mut u64) {
        let t = rt::time::now().as_nanos();
        *acc += t.saturating_sub(self.0);
        self.0 = t;
    }
}

fn smol_now() -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(rt::time::now().as_micros() as i64)
}

/// The image's entry point.
pub fn main(boot: &'static rt::BootInfo) -> rt::ExitCode {
    if rt::xen().is_some() {
        // A Xen driver domain (PVH): vifs instead of PCI devices.
        return crate::xen::main(boot);
    }
    match run(boot) {
        Ok(never) => match never {},
        Err(e) => {
            log::error!("net-dd: {e}");
            rt::ExitCode::Failure
        }
    }
}

/// One guest channel: its port and its device's registers and doorbell counters.
struct Chan {
    port: ChannelPort<&'static SharedRegion>,
    regs: &'static mut Registers<Mmio>,
    bells: &'static Doorbells,
    /// Counters at the last `ICONNECT-PORTSTAT` line.
    last: PortCounters,
}

/// Opens every ivshmem-doorbell device (PCI order = guest ports 1..=N) as a channel port.
fn open_channels(ecam: &mut Ecam) -> Vec<Chan> {
    let mut chans = Vec::new();
    for ch in ivshmem::open_all(ecam, CHANNEL_VECTORS, BAR_WINDOW, switch::MAX_GUESTS) {
        let Some(port) = switch::guest_port(ch.port - 1) else { continue };
        match ChannelPort::new(port, ch.parts.region, ch.own_id) {
            Ok(cp) => {
                log::info!(
                    "port {port}: ivshmem {} id {}, {} KiB, {} doorbell vectors",
                    ch.bdf,
                    ch.own_id,
                    ch.shmem_len / 1024,
                    ch.vectors
                );
                chans.push(Chan {
                    port: cp,
                    regs: ch.parts.regs,
                    bells: ch.parts.doorbells,
                    last: PortCounters::default(),
                });
            }
            Err(e) => log::error!("ICONNECT-PORT {port} down reason=channel:{e}"),
        }
    }
    chans
}

/// The uplink and the stack as the switch's wire.
struct ImageWire<'a> {
    nic: &'a mut VirtioNetDevice,
    stack: &'a mut QueueDevice,
}

impl Wire for ImageWire<'_> {
    fn uplink_ready(&mut self) -> bool {
        self.nic.can_send()
    }
    fn uplink_send(&mut self, frame: &[u8]) -> bool {
        self.nic.send(frame)
    }
    fn stack_deliver(&mut self, frame: &[u8]) {
        self.stack.deliver(frame);
    }
}

fn ns(t: rt::time::Instant) -> u64 {
    t.as_nanos()
}

fn run(boot: &'static rt::BootInfo) -> Result<core::convert::Infallible, Error> {
    let t0 = rt::time::now();
    let cfg = NetConfig::from_cmdline(boot.cmdline)?;
    let mcfg = platform::find_ecam(boot);
    let mut ecam = platform::map_ecam(&mcfg).map_err(|e| {
        log::error!("cannot map ECAM: {e}");
        Error::NoDevice
    })?;
    let Some(func) = vnet::find(&ecam) else {
        log::error!("no virtio-net (1af4:1041/1000) on PCI");
        return Err(Error::NoDevice);
    };
    let t_pci = rt::time::now();
    let opened = vnet::open::<QUEUE_SIZE>(&mut ecam, func, BAR_WINDOW, Some(on_rx_irq))
        .map_err(|_| Error::DeviceInit)?;
    let (net, irq) = (opened.net, opened.rx_vector);
    let mac = EthernetAddress(net.mac_address());
    let mut nic = VirtioNetDevice::new(net);
    let t_dev = rt::time::now();
    let mut chans = open_channels(&mut ecam);

    let seed = rt::time::now().as_nanos() ^ boot.tsc_at_entry.rotate_left(17);
    let mut stack = QueueDevice::new();
    let mut iface = net_dd::build_interface(&cfg, mac, &mut stack, smol_now(), seed);
    let mut sockets = SocketSet::new(alloc::vec![]);
    let mut echo = EchoService::new(&mut sockets, cfg.echo_port, ECHO_SOCKETS, ECHO_BUF);
    let mut sw: ChannelSwitch<&'static SharedRegion> =
        ChannelSwitch::new(cfg.link_bps, Mac(mac.0), ns(rt::time::now()));
    rt::ready("net-dd");
    // Reported after the marker: console output is not part of the initialisation.
    let h = func.header;
    log::info!(
        "virtio-net {} ({:04x}:{:04x}) MAC {mac} IP {} gw {} echo port {}; {}; {} guest channel(s), link_bps={}; init: pci {} us, virtio {} us",
        func.bdf,
        h.vendor_id,
        h.device_id,
        cfg.cidr,
        cfg.gateway,
        cfg.echo_port,
        match irq {
            Some(v) => alloc::format!("rx interrupts on MSI-X vector {v}"),
            None => alloc::format!("polling every {} us", IDLE_POLLING.as_micros()),
        },
        chans.len(),
        cfg.link_bps,
        (t_pci - t0).as_micros(),
        (t_dev - t_pci).as_micros(),
    );

    let idle = if irq.is_some() {
        IDLE_WITH_IRQ
    } else {
        IDLE_POLLING
    };
    let mut events: Vec<PortEvent> = Vec::new();
    let mut last_stats = rt::time::now();
    let mut last_sweep = rt::time::now();
    let mut last_log = rt::time::now();
    let mut logged = (echo.stats(), 0, nic.stats());
    // Last doorbell or port event (for the handshake tick's back-off).
    let mut last_activity = rt::time::now();
    let mut perf = Perf::default();
    let mut logged_perf = perf;
    let mut task = |now: rt::time::Instant| -> Step {
        let now_ns = ns(now);
        perf.polls += 1;
        let irq_at = RX_IRQ_AT.swap(0, Ordering::Relaxed);
        if irq_at != 0 {
            perf.irq_seen += 1;
            perf.irq_lat_ns += now_ns.saturating_sub(irq_at);
        }
        let mut lap = Lap(now_ns);
        // Doorbells, and a periodic look at every attached guest.
        let sweep = now - last_sweep >= SWEEP_TICK;
        if sweep {
            last_sweep = now;
        }
        for c in chans.iter_mut() {
            let rung = c.bells.take(chanport::TX_VECTOR) + c.bells.take(chanport::RX_VECTOR);
            if rung > 0 {
                last_activity = now;
                perf.bells_in += u64::from(rung);
            }
            if rung > 0 || sweep {
                sw.doorbell(c.port.port());
            }
            if sweep {
                // Our promised heartbeat (chanport::OWN_HEARTBEAT_MS = the sweep period).
                c.port.beat();
            }
            c.port.check_liveness(now_ns);
            c.port.poll(&mut sw, now_ns, &mut events);
        }
        let mut wire = ImageWire {
            nic: &mut nic,
            stack: &mut stack,
        };
        lap.next(&mut perf.phase_ns[0]);
        // Guests first (a guest's frame waits for nothing else): the scheduled pull.
        let wake = sw.pump(now_ns, &mut wire);
        lap.next(&mut perf.phase_ns[1]);
        // Uplink receive.
        let mut busy = false;
        for n in 0.. {
            if n == UPLINK_BUDGET {
                busy = true;
                break;
            }
            // The frame owns its buffer: forwarded in place, then returned to the device.
            let Some(frame) = wire.nic.receive() else {
                break;
            };
            perf.uplink_frames += 1;
            sw.input(UPLINK, frame.packet(), now_ns, &mut wire);
            wire.nic.recycle(frame);
        }
        lap.next(&mut perf.phase_ns[2]);
        // The domain's stack.
        let snow = smol_now();
        iface.poll(snow, wire.stack, &mut sockets);
        if echo.poll(&mut sockets) {
            busy = true;
        }
        while let Some(f) = wire.stack.pop_sent() {
            sw.input(STACK, &f, now_ns, &mut wire);
            wire.stack.recycle(f);
        }
        lap.next(&mut perf.phase_ns[3]);
        // Delivery into the guests' buffers (frames from the uplink, the stack, other guests).
        if sw.flush() {
            busy = true;
        }
        lap.next(&mut perf.phase_ns[4]);
        if wire.stack.pending() > 0 {
            busy = true;
        }
        for (p, e) in sw.take_failed() {
            if let Some(c) = chans.iter_mut().find(|c| c.port.port() == p) {
                c.port.fail(format!("netback:{e}"));
                c.port.poll(&mut sw, now_ns, &mut events);
            }
        }
        if !events.is_empty() {
            last_activity = now;
        }
        for ev in events.drain(..) {
            log::info!("{}", ev.marker());
        }
        // Doorbells back.
        let mut handshaking = false;
        for c in chans.iter_mut() {
            let p = c.port.port();
            let (tx, rx) = sw.take_notify(p);
            let kick = c.port.take_kick();
            handshaking |= !c.port.attached();
            if let Some(peer) = c.port.peer() {
                if tx || kick {
                    c.regs.ring(peer, chanport::TX_VECTOR);
                    perf.bells_tx += 1;
                }
                if rx {
                    c.regs.ring(peer, chanport::RX_VECTOR);
                    perf.bells_rx += 1;
                }
            }
        }
        lap.next(&mut perf.phase_ns[5]);
        // Statistics.
        if now - last_stats >= STATS_TICK {
            let secs = (now - last_stats).as_secs_f64();
            last_stats = now;
            for c in chans.iter_mut() {
                let p = c.port.port();
                let Some(cur) = sw.port_counters(p) else {
                    c.last = PortCounters::default();
                    continue;
                };
                if cur != c.last {
                    port_stat(p, &c.last, &cur, secs);
                    c.last = cur;
                }
            }
        }
        if now - last_log >= Duration::from_secs(5) {
            let cur = (
                echo.stats(),
                RX_IRQS.load(Ordering::Relaxed),
                wire.nic.stats(),
            );
            last_log = now;
            if perf.bells_in != logged_perf.bells_in || perf.irq_seen != logged_perf.irq_seen {
                log::info!("{}", perf.since(&logged_perf).line());
                logged_perf = perf;
            }
            if cur != logged {
                logged = cur;
                let (e, irqs, n) = cur;
                let c = sw.counters();
                log::info!(
                    "stats: {} echo connections, {} bytes echoed, {} rx interrupts; frames rx {} tx {}, rx errors {}, tx dropped {}; uplink tx {} drops {}, stack rx {}, bridge drops {}",
                    e.connections,
                    e.bytes,
                    irqs,
                    n.rx_frames,
                    n.tx_frames,
                    n.rx_errors,
                    n.tx_dropped,
                    c.uplink_tx,
                    c.uplink_drops,
                    c.stack_rx,
                    c.bridge_drops
                );
            }
        }
        lap.next(&mut perf.phase_ns[6]);
        if busy || wake.is_some_and(|t| t <= now_ns) {
            perf.busy += 1;
            return Step::Busy;
        }
        let mut next = idle;
        if let Some(d) = iface.poll_delay(snow, &sockets) {
            next = next.min(Duration::from_micros(d.total_micros()));
        }
        if let Some(t) = wake {
            next = next.min(Duration::from_nanos(t - now_ns));
        }
        if handshaking {
            next = next.min(if now - last_activity < HANDSHAKE_BACKOFF_AFTER {
                HANDSHAKE_TICK
            } else {
                HANDSHAKE_SLOW_TICK
            });
        }
        if !chans.is_empty() {
            next = next.min(SWEEP_TICK).min(STATS_TICK);
        }
        if next.is_zero() {
            Step::Busy
        } else {
            Step::At(now + next)
        }
    };
    let code = rt::exec::run(&mut [&mut task]);
    log::error!("net-dd: executor stopped ({code:?})");
    Err(Error::DeviceInit)
}

/// Prints `ICONNECT-PORTSTAT <n> tx_bps=.. rx_bps=.. drops=..` (rates since `last`; TX = sent by
/// the guest, RX = delivered to it; drops = total so far).
fn port_stat(port: PortId, last: &PortCounters, cur: &PortCounters, secs: f64) {
    let bps = |a: u64, b: u64| (a.saturating_sub(b) as f64 * 8.0 / secs.max(1e-6)) as u64;
    log::info!(
        "ICONNECT-PORTSTAT {port} tx_bps={} rx_bps={} drops={} tx_frames={} rx_frames={} spoofed={}",
        bps(cur.tx_bytes, last.tx_bytes),
        bps(cur.rx_bytes, last.rx_bytes),
        cur.drops,
        cur.tx_frames,
        cur.rx_frames,
        cur.spoofed
    );
}
