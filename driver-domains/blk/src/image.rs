//! Bring-up and event loop of the image (QEMU platform).
//!
//! Devices: the virtio-blk disk (local volumes), the virtio-net NIC (remote volumes; opened only
//! when the map has one), and one guest per ivshmem-doorbell device (ports 1..=N, PCI order).
//! Command line: `vol=` tokens (`blkback::volumes`), `ip=<a.b.c.d/len>` (default
//! 10.0.2.15/24) and `gw=<a.b.c.d>` (default 10.0.2.2) for the NIC.
//!
//! One executor task: doorbells, the stack and the NBD connections, the ports' handshakes, each
//! attached guest's engine against its volume, the NBD connections again (to send what the
//! engines queued), doorbells back, markers. It sleeps until an interrupt (doorbell, NIC
//! receive) or the earliest deadline (handshake tick while a channel has no guest, smoltcp
//! timers, NBD retry/timeouts, a 100 ms sweep against lost doorbells).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::str::FromStr;
use core::time::Duration;

use blk_dd::{BlkPort, PortEvent, Registry};
use blkback::volume::Volume;
use blkback::volumes::DiskMux;
use blkback::{Backing, VolumeMap};
use hal::ivshmem::{self, Doorbells, Registers, SharedRegion};
use hal::mmio::Mmio;
use hal::platform;
use hal::virtio_net::pci as vnet;
use rt::exec::Step;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};

use blk_dd::disk::{self, Disk};
use crate::nic::{Nic, QUEUE_SIZE};
use crate::remote::Remote;

/// Where unassigned BARs are placed (32-bit MMIO hole above q35's ECAM, below the IOAPIC).
const BAR_WINDOW: (u64, u64) = (0xc000_0000, 0xfe00_0000);
/// Doorbell vectors per channel (the topology's servers give 2; ring 0 uses vector 0).
const CHANNEL_VECTORS: u16 = 2;
/// While a channel has no guest, its control page is polled this often...
const HANDSHAKE_TICK: Duration = Duration::from_millis(2);
/// ... and this often once nothing happened for `HANDSHAKE_BACKOFF_AFTER`.
const HANDSHAKE_SLOW_TICK: Duration = Duration::from_millis(50);
const HANDSHAKE_BACKOFF_AFTER: Duration = Duration::from_secs(2);
/// Attached guests' rings are looked at this often without a doorbell.
const SWEEP_TICK: Duration = Duration::from_millis(100);
/// Bounded busy-poll (`poll_us=`, 0 = off): after the last progress (a request taken or a
/// request completed) the loop keeps polling the guests' rings and the disk this long instead
/// of sleeping until an interrupt. Meanwhile the rings' request events stay un-armed, so the
/// guests send no doorbells; the disk's completions are seen without waiting for a wake-up.
/// Off by default: under TCG on a 2-core host shared with other VMs a spinning vCPU takes the
/// core the disk's I/O threads and the guest need (measured QD1 reads: 3.7k IOPS with 50 µs,
/// 7.8k without; `disk_poll=1`, spinning while the disk works, 1.6–5.7k vs 3.3–9.3k).
const DEFAULT_POLL: Duration = Duration::from_micros(0);
/// Longest accepted `poll_us=`.
const MAX_POLL_US: u64 = 10_000;
/// `ICONNECT-DDSTAT` period (printed only when requests were served).
const STAT_EVERY: Duration = Duration::from_secs(1);

/// Where the loop's time goes (the `ICONNECT-DDSTAT` line).
#[derive(Default)]
struct Perf {
    /// Time spent in the task (polling, spinning included), ns.
    busy_ns: u64,
    /// Task runs; those after a sleep; those that only spun (no progress).
    polls: u64,
    wakeups: u64,
    spins: u64,
    /// Doorbells from guests / to guests.
    bells_in: u64,
    bells_out: u64,
    /// Requests taken off the guests' rings.
    requests: u64,
    /// Sum over polls of the requests at the disk when the poll started (÷ polls = mean).
    disk_in_flight: u64,
}

/// Where a volume's operations go.
#[derive(Clone, Copy)]
enum Target {
    /// Guest index in the disk mux.
    Local(usize),
    /// Index in the remote list.
    Remote(usize),
}

struct Chan {
    port: BlkPort<&'static SharedRegion>,
    regs: &'static mut Registers<Mmio>,
    bells: &'static Doorbells,
    /// A doorbell arrived in this wake-up.
    rung: bool,
    /// The last serve asked to be called again.
    again: bool,
    /// Requests taken since the guest connected; wake-ups that found requests on a local
    /// volume's ring with no doorbell and no pending call-again: an upper bound of lost
    /// doorbells (requests published while blk-dd was already awake count too).
    requests: u64,
    unrung: u64,
}

fn on_nic_irq() {}
fn on_disk_irq() {}

/// The image's entry point.
pub fn main(boot: &'static rt::BootInfo) -> rt::ExitCode {
    match run(boot) {
        Ok(never) => match never {},
        Err(e) => {
            log::error!("blk-dd: {e}");
            rt::ExitCode::Failure
        }
    }
}

fn open_channels(ecam: &mut hal::ecam::Ecam) -> Vec<Chan> {
    let mut chans = Vec::new();
    for ch in ivshmem::open_all(ecam, CHANNEL_VECTORS, BAR_WINDOW, usize::MAX) {
        let port = ch.port;
        match BlkPort::new(ch.port, ch.parts.region, ch.own_id) {
            Ok(p) => {
                log::info!("port {port}: ivshmem {} id {}, {} KiB", ch.bdf, ch.own_id, ch.shmem_len / 1024);
                chans.push(Chan { port: p, regs: ch.parts.regs, bells: ch.parts.doorbells, rung: false, again: false, requests: 0, unrung: 0 });
            }
            Err(e) => log::error!("ICONNECT-PORT {port} down reason=channel:{e}"),
        }
    }
    chans
}

struct Net {
    nic: Nic,
    iface: Interface,
    sockets: SocketSet<'static>,
}

fn smol(t: rt::time::Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(t.as_micros() as i64)
}

fn open_net(boot: &'static rt::BootInfo, ecam: &mut hal::ecam::Ecam) -> Result<Net, String> {
    let arg = |k: &str, d: &'static str| rt::cmdline::get(boot.cmdline, k).unwrap_or(d);
    let cidr = IpCidr::from_str(arg("ip", "10.0.2.15/24")).map_err(|_| "bad ip=")?;
    let gw = Ipv4Address::from_str(arg("gw", "10.0.2.2")).map_err(|_| "bad gw=")?;
    let func = vnet::find(ecam).ok_or("remote volumes need a virtio-net NIC (1af4:1041/1000)")?;
    let opened = vnet::open::<QUEUE_SIZE>(ecam, func, BAR_WINDOW, Some(on_nic_irq)).map_err(|e| format!("virtio-net: {e}"))?;
    let mac = EthernetAddress(opened.net.mac_address());
    let mut nic = Nic::new(opened.net);
    let mut cfg = Config::new(HardwareAddress::Ethernet(mac));
    cfg.random_seed = rt::time::now().as_nanos() ^ boot.tsc_at_entry;
    let mut iface = Interface::new(cfg, &mut nic, smol(rt::time::now()));
    iface.update_ip_addrs(|a| {
        let _ = a.push(cidr);
    });
    let _ = iface.routes_mut().add_default_ipv4_route(gw);
    log::info!(
        "virtio-net {} MAC {mac} IP {cidr} gw {gw}; {}",
        func.bdf,
        if opened.rx_vector.is_some() { "rx interrupts" } else { "polling" }
    );
    Ok(Net { nic, iface, sockets: SocketSet::new(alloc::vec![]) })
}

fn run(boot: &'static rt::BootInfo) -> Result<core::convert::Infallible, String> {
    let map = VolumeMap::from_cmdline(boot.cmdline).map_err(|e| format!("volume map: {e}"))?;
    let mcfg = platform::find_ecam(boot);
    let mut ecam = platform::map_ecam(&mcfg).map_err(|e| format!("ECAM: {e}"))?;
    let has_local = map.volumes().iter().any(|v| matches!(v.backing, Backing::Local(_)));
    let has_remote = map.volumes().iter().any(|v| matches!(v.backing, Backing::Nbd { .. }));
    let mut mux = match disk::find(&ecam) {
        Some(f) => {
            let d = Disk::open(&mut ecam, f, BAR_WINDOW, Some(on_disk_irq)).map_err(|e| format!("{}: {e}", f.bdf))?;
            let g = d.geometry();
            log::info!(
                "virtio-blk {}: {} MiB, {}, {}",
                f.bdf,
                g.size >> 20,
                if g.read_only { "read-only" } else { "read-write" },
                if d.interrupts { "completion interrupts" } else { "polling" }
            );
            map.check_disk(g.size, g.sector_size).map_err(|e| format!("volume map vs disk of {} bytes: {e}", g.size))?;
            Some(DiskMux::new(d))
        }
        None if has_local => return Err("local volumes but no virtio-blk disk (1af4:1042/1001)".into()),
        None => None,
    };
    let mut net = if has_remote { Some(open_net(boot, &mut ecam)?) } else { None };
    let mut reg = Registry::new(&map);
    let mut targets = Vec::new();
    let mut remotes: Vec<Remote> = Vec::new();
    for (id, v) in map.volumes().iter().enumerate() {
        match (&v.backing, mux.as_mut(), net.as_mut()) {
            (Backing::Local(s), Some(m), _) => {
                let i = m.add(*s, v.sector_size, v.read_only).map_err(|e| format!("volume {}: {e}", v.name))?;
                if let Some(g) = m.geometry(i) {
                    reg.set_geometry(id, g);
                }
                targets.push(Target::Local(i));
            }
            (Backing::Nbd { addr, port, export }, _, Some(n)) => {
                targets.push(Target::Remote(remotes.len()));
                remotes.push(Remote::new(id, *addr, *port, export, v.sector_size, &mut n.sockets));
            }
            _ => return Err(format!("volume {}: no device for it", v.name)),
        }
    }
    // disk_poll=1: spin on the disk's used ring while local requests are in flight instead of
    // sleeping until its completion interrupt.
    let disk_poll = rt::cmdline::get(boot.cmdline, "disk_poll") == Some("1");
    let poll_window = match rt::cmdline::get(boot.cmdline, "poll_us") {
        None => DEFAULT_POLL,
        Some(v) => match v.parse::<u64>() {
            Ok(us) if us <= MAX_POLL_US => Duration::from_micros(us),
            _ => return Err(format!("poll_us={v}: expected 0..={MAX_POLL_US}")),
        },
    };
    // early=1: notify the disk at each submission and answer completions (ringing the guest)
    // before taking new requests, for more overlap between the domains. Measured under TCG
    // on a loaded 2-core host it costs more than it overlaps (more notifications and
    // wake-ups: QD32 reads 26k vs 39k IOPS, median of 3), so by default the disk is notified
    // once per poll and completions are answered with the poll's new requests.
    let early = rt::cmdline::get(boot.cmdline, "early") == Some("1");
    let early_answers = early;
    if let Some(m) = mux.as_mut() {
        m.disk_mut().kick_early = early;
    }
    log::info!("busy-poll window {} us after the last progress; early kicks/answers {}", poll_window.as_micros(), if early { "on" } else { "off" });
    let mut chans = open_channels(&mut ecam);
    rt::ready("blk-dd");
    for id in 0..reg.slots().len() {
        log::info!("{}", reg.marker(id));
    }
    log::info!("blk-dd: {} volume(s), {} guest channel(s)", reg.slots().len(), chans.len());

    let mut events: Vec<PortEvent> = Vec::new();
    let mut last_sweep = rt::time::now();
    let mut last_activity = rt::time::now();
    let mut last_progress = rt::time::now();
    let mut perf = Perf::default();
    let mut last_stat = (rt::time::now(), 0u64);
    let mut slept = true;
    let mut task = |now: rt::time::Instant| -> Step {
        let now_us = now.as_micros();
        perf.polls += 1;
        if let Some(m) = mux.as_ref() {
            perf.disk_in_flight += m.disk().in_flight() as u64;
        }
        if core::mem::take(&mut slept) {
            perf.wakeups += 1;
        }
        // Inside the busy-poll window the rings' request events stay un-armed (no doorbells).
        let spinning = now - last_progress < poll_window;
        let sweep = now - last_sweep >= SWEEP_TICK;
        if sweep {
            last_sweep = now;
        }
        let mut rung = false;
        for c in chans.iter_mut() {
            let n = c.bells.take(0) + c.bells.take(1);
            perf.bells_in += u64::from(n);
            c.rung = n > 0;
            rung |= c.rung;
        }
        if rung {
            last_activity = now;
        }
        let mut busy = false;
        if let Some(n) = net.as_mut() {
            n.iface.poll(smol(now), &mut n.nic, &mut n.sockets);
            for r in remotes.iter_mut() {
                busy |= r.pump(&mut n.iface, &mut n.sockets, now_us);
                if !r.announced && r.vol.is_ready() {
                    r.announced = true;
                    reg.set_geometry(r.id, r.vol.geometry());
                    log::info!("{}", reg.marker(r.id));
                }
            }
        }
        for c in chans.iter_mut() {
            if sweep {
                // Our promised heartbeat (blk_dd::OWN_HEARTBEAT_MS = the sweep period).
                c.port.beat();
            }
            c.port.check_liveness(now.as_nanos());
            c.port.poll(&mut reg, &mut events, now.as_nanos());
            let Some(id) = c.port.volume() else { continue };
            c.port.set_rearm(!spinning);
            let before = c.port.in_flight();
            let (taken, more) = match targets[id] {
                Target::Local(i) => match mux.as_mut() {
                    // The disk's completion interrupt wakes the loop; without one, poll while
                    // this guest has requests at the disk.
                    Some(m) => {
                        let polling = disk_poll || !m.disk().interrupts;
                        match m.volume(i) {
                            Some(mut v) => {
                                // Completions first, and the guest rung for them at once: it
                                // works on them while the requests below are taken.
                                if early_answers
                                    && c.port.answer(now_us, &mut v)
                                    && c.port.take_kick()
                                    && let Some(peer) = c.port.peer()
                                {
                                    c.regs.ring(peer, blk_dd::VECTOR);
                                    perf.bells_out += 1;
                                }
                                let (n, more) = c.port.serve(now_us, &mut v);
                                (n, more || (polling && c.port.in_flight() > 0))
                            }
                            None => (0, false),
                        }
                    }
                    None => (0, false),
                },
                Target::Remote(j) => c.port.serve(now_us, &mut remotes[j].vol),
            };
            c.requests += taken as u64;
            perf.requests += taken as u64;
            if taken > 0 || c.port.in_flight() != before {
                last_progress = now;
            }
            if taken > 0 && !c.rung && !c.again && !spinning && matches!(targets[id], Target::Local(_)) {
                // Requests nobody rang for, found by the sweep: a lost doorbell (while busy-
                // polling the guest is told not to ring).
                c.unrung += 1;
            }
            c.again = more;
            busy |= more;
        }
        // Remote volumes nobody uses: keep their sessions (handshake, replay) moving.
        for r in remotes.iter_mut() {
            if reg.slots()[r.id].user.is_none() {
                while r.vol.poll(now_us).is_some() {}
            }
        }
        if let Some(n) = net.as_mut() {
            for r in remotes.iter_mut() {
                busy |= r.pump(&mut n.iface, &mut n.sockets, now_us);
            }
            n.iface.poll(smol(now), &mut n.nic, &mut n.sockets);
        }
        if !events.is_empty() {
            last_activity = now;
        }
        for ev in events.drain(..) {
            if let PortEvent::Down { port, .. } = ev
                && let Some(c) = chans.iter_mut().find(|c| c.port.port() == port)
                && c.requests > 0
            {
                log::info!("ICONNECT-PORTSTAT {port} requests={} found_unrung={}", c.requests, c.unrung);
                c.requests = 0;
                c.unrung = 0;
            }
            let backing = match ev {
                PortEvent::Up { id, .. } => match targets[id] {
                    Target::Local(_) => "local",
                    Target::Remote(_) => "nbd",
                },
                PortEvent::Down { .. } => "",
            };
            log::info!("{}", ev.marker(backing));
        }
        let mut handshaking = false;
        for c in chans.iter_mut() {
            handshaking |= c.port.busy_handshake();
            if c.port.take_kick()
                && let Some(peer) = c.port.peer()
            {
                c.regs.ring(peer, blk_dd::VECTOR);
                perf.bells_out += 1;
            }
        }
        let end = rt::time::now();
        perf.busy_ns += (end - now).as_nanos() as u64;
        if end - last_stat.0 >= STAT_EVERY {
            if perf.requests != last_stat.1 {
                let span = (end - last_stat.0).as_nanos() as u64;
                log::info!(
                    "ICONNECT-DDSTAT requests={} busy_permille={} polls={} disk_queue={}.{} wakeups={} spins={} bells_in={} bells_out={}",
                    perf.requests - last_stat.1,
                    perf.busy_ns.saturating_mul(1000) / span.max(1),
                    perf.polls,
                    perf.disk_in_flight / perf.polls.max(1),
                    perf.disk_in_flight * 10 / perf.polls.max(1) % 10,
                    perf.wakeups,
                    perf.spins,
                    perf.bells_in,
                    perf.bells_out
                );
            }
            let requests = perf.requests;
            perf = Perf { requests, ..Perf::default() };
            last_stat = (end, requests);
        }
        if busy {
            return Step::Busy;
        }
        if end - last_progress < poll_window {
            perf.spins += 1;
            return Step::Busy;
        }
        slept = true;
        let mut next = SWEEP_TICK;
        if handshaking {
            next = next.min(if now - last_activity < HANDSHAKE_BACKOFF_AFTER { HANDSHAKE_TICK } else { HANDSHAKE_SLOW_TICK });
        }
        if let Some(n) = net.as_mut() {
            if let Some(d) = n.iface.poll_delay(smol(now), &n.sockets) {
                next = next.min(Duration::from_micros(d.total_micros()));
            }
            for r in remotes.iter() {
                if let Some(t) = r.poll_at() {
                    next = next.min(Duration::from_micros(t.saturating_sub(now_us).max(1)));
                }
            }
        }
        Step::At(now + next)
    };
    let code = rt::exec::run(&mut [&mut task]);
    Err(format!("executor stopped ({code:?})"))
}
