//! Bring-up and event loop of the image: the channel on an ivshmem device, the smoltcp stack,
//! the workload, the markers.

use alloc::format;
use alloc::string::String;
use core::time::Duration;

use core::sync::atomic::{AtomicU64, Ordering};

use hal::ivshmem::{self, Ivshmem};
use hal::platform;
use net_guest::config::{GuestConfig, Hostile, Nic, Work};
use net_guest::device::Metered;
use net_guest::link::{HOSTILE_BAD_REFS, Link, LinkEvent};
use net_guest::stats::RateMeter;
use net_guest::work::{Report, Step, Workload};
use rt::time::{self, Instant};
use smoltcp::iface::{Interface, SocketSet};
use smoltcp::phy::Device;

use crate::nic::VirtioDevice;

/// Where unassigned BARs go (the 32-bit MMIO hole above q35's ECAM, below the IOAPIC).
const BAR_WINDOW: (u64, u64) = (0xc000_0000, 0xfe00_0000);
/// While the backend is not connected (or its peer id unknown), poll this often.
const HANDSHAKE_TICK: Duration = Duration::from_millis(1);
/// Without any doorbell for this long, ring the backend again (a doorbell rung before the
/// peer's QEMU learnt our eventfds is lost).
const KICK_AFTER: Duration = Duration::from_millis(200);
/// While traffic moves (or frames are in flight) and interrupts have shown to be late, never
/// sleep longer than this: a guard against interrupts that arrive late (seen under kvm_pvm,
/// where an MSI can wait for the vCPU's next timer exit). Under TCG the doorbells are on time
/// and the guard stays off: a guest woken every millisecond burns CPU the other VMs need.
const ACTIVE_TICK: Duration = Duration::from_millis(1);
/// A wake-up without an interrupt that finds work an interrupt should have announced is *late*
/// (the interrupt may just be in flight: under TCG a doorbell takes 100s of µs to arrive). When
/// over one [`LATE_WINDOW`] at least [`LATE_MIN`] wake-ups, and a quarter of all, were late,
/// interrupts are unreliable: the guard goes on for [`GUARD_FOR`] (renewed while it holds).
const LATE_WINDOW: Duration = Duration::from_secs(1);
/// See [`LATE_WINDOW`].
const LATE_MIN: u64 = 3;
/// See [`LATE_WINDOW`].
const GUARD_FOR: Duration = Duration::from_secs(5);
/// Traffic counts as moving for this long after the counters last changed.
const ACTIVE_FOR: Duration = Duration::from_millis(20);
/// Rate lines.
const RATE_PERIOD: Duration = Duration::from_secs(1);
/// After the backend closed the channel, rejoin (as a new frontend generation) this much later.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// How long `hostile:` waits for the backend's reaction.
const HOSTILE_WAIT: Duration = Duration::from_secs(10);

/// Polling period of a NIC without a receive interrupt.
const NIC_POLL: Duration = Duration::from_micros(200);

static NIC_IRQS: AtomicU64 = AtomicU64::new(0);

fn on_nic_irq() {
    NIC_IRQS.fetch_add(1, Ordering::Relaxed);
}

/// Whether traffic is moving (the device's counters changed recently), and whether interrupts
/// have been late (then the loop polls every [`ACTIVE_TICK`] while traffic moves).
struct Activity {
    last: (u64, u64),
    at: Instant,
    guard_until: Instant,
    slept: bool,
    /// Wake-ups (sleeps that ended), and those that found late work.
    wakeups: u64,
    late: u64,
    /// The current window: its start, wake-ups and late ones at its start.
    window: (Instant, u64, u64),
}

impl Activity {
    fn new(now: Instant) -> Self {
        Self {
            last: (0, 0),
            at: now,
            guard_until: now,
            slept: false,
            wakeups: 0,
            late: 0,
            window: (now, 0, 0),
        }
    }

    /// After a wake-up: `irq` = an interrupt was counted, `work` = the device had completions
    /// or frames waiting. Work without an interrupt after a sleep means the interrupt is late.
    fn woke(&mut self, now: Instant, irq: bool, work: bool) {
        if core::mem::take(&mut self.slept) {
            self.wakeups += 1;
            if work && !irq {
                self.late += 1;
            }
        }
        let (start, w0, l0) = self.window;
        if now >= start + LATE_WINDOW {
            let (w, l) = (self.wakeups - w0, self.late - l0);
            if l >= LATE_MIN && l * 4 >= w {
                if now >= self.guard_until {
                    log::info!("interrupts late ({l} of {w} wake-ups found work first): polling every {} ms while traffic moves", ACTIVE_TICK.as_millis());
                }
                self.guard_until = now + GUARD_FOR;
            }
            self.window = (now, self.wakeups, self.late);
        }
    }

    /// Before sleeping.
    fn sleep(&mut self) {
        self.slept = true;
    }

    /// Lowers `deadline` to [`ACTIVE_TICK`] from now while traffic moves (`busy`: frames in
    /// flight count as moving) and the late-interrupt guard is on.
    fn cap(&mut self, now: Instant, counters: (u64, u64), busy: bool, deadline: &mut Instant) {
        if counters != self.last || busy {
            self.last = counters;
            self.at = now;
        }
        if now < self.at + ACTIVE_FOR && now < self.guard_until {
            *deadline = (*deadline).min(now + ACTIVE_TICK);
        }
    }
}

fn smol(t: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(t.as_micros() as i64)
}

fn from_smol(base: Instant, base_smol: smoltcp::time::Instant, t: smoltcp::time::Instant) -> Instant {
    let d = (t - base_smol.min(t)).total_micros();
    base + Duration::from_micros(d)
}

/// The image's entry point.
pub fn main(boot: &'static rt::BootInfo) -> rt::ExitCode {
    let cfg = match GuestConfig::from_cmdline(boot.cmdline) {
        Ok(c) => c,
        Err(e) => {
            let name = rt::cmdline::get(boot.cmdline, "name").unwrap_or("g0");
            log::error!("ICONNECT-RESULT FAIL name={name} work=none why={e}");
            return rt::ExitCode::Failure;
        }
    };
    match run(boot, &cfg) {
        Ok(r) if r.ok => {
            log::info!("ICONNECT-RESULT ok name={} work={} {}", cfg.name, cfg.work_text, r.fields);
            rt::ExitCode::Success
        }
        Ok(r) => {
            log::error!("ICONNECT-RESULT FAIL name={} work={} {}", cfg.name, cfg.work_text, r.fields);
            rt::ExitCode::Failure
        }
        Err(why) => {
            log::error!(
                "ICONNECT-RESULT FAIL name={} work={} why={}",
                cfg.name,
                cfg.work_text,
                why.replace(' ', "_")
            );
            rt::ExitCode::Failure
        }
    }
}


/// The smoltcp stack and the workload on a device, with the once-a-second rate lines.
struct Session {
    iface: Interface,
    sockets: SocketSet<'static>,
    work: Workload,
    rate: RateMeter,
    payload_rate: RateMeter,
    next_rate: Instant,
}

impl Session {
    /// `counters` = the device's (tx, rx) byte counters now.
    fn new<D: Device>(cfg: &GuestConfig, dev: &mut D, now: Instant, seed: u64, counters: (u64, u64)) -> Result<Self, String> {
        let mut iface = net_guest::build_interface(cfg, dev, smol(now), seed);
        let mut sockets = SocketSet::new(alloc::vec![]);
        let work = Workload::new(cfg, &mut sockets, smol(now), seed).ok_or("workload could not start")?;
        iface.poll(smol(now), dev, &mut sockets);
        Ok(Self {
            iface,
            sockets,
            work,
            rate: RateMeter::new(now.as_micros(), counters),
            payload_rate: RateMeter::new(now.as_micros(), (0, 0)),
            next_rate: now + RATE_PERIOD,
        })
    }

    /// Runs the stack and the workload; prints the rate line when due. Returns the report when
    /// the workload is over, else lowers `deadline` to when it wants to run again.
    fn poll<D: Device>(
        &mut self,
        cfg: &GuestConfig,
        dev: &mut D,
        now: Instant,
        counters: impl Fn(&mut D) -> (u64, u64),
        deadline: &mut Instant,
    ) -> Option<Report> {
        let sn = smol(now);
        self.iface.poll(sn, dev, &mut self.sockets);
        let step = self.work.poll(&mut self.iface, &mut self.sockets, sn);
        self.iface.poll(sn, dev, &mut self.sockets);
        if now >= self.next_rate {
            let (tx_bps, rx_bps) = self.rate.sample(now.as_micros(), counters(dev));
            let (ptx, prx) = self.payload_rate.sample(now.as_micros(), self.work.payload());
            if !self.work.is_serve() || tx_bps > 0 || rx_bps > 0 {
                log::info!(
                    "ICONNECT-RATE name={} tx_bps={tx_bps} rx_bps={rx_bps} payload_tx_bps={ptx} payload_rx_bps={prx}",
                    cfg.name
                );
            }
            self.next_rate = now + RATE_PERIOD;
        }
        *deadline = (*deadline).min(self.next_rate);
        match step {
            Step::Done(r) => return Some(r),
            Step::Continue(Some(t)) => *deadline = (*deadline).min(from_smol(now, sn, t)),
            Step::Continue(None) => {}
        }
        if let Some(delay) = self.iface.poll_delay(sn, &self.sockets) {
            *deadline = (*deadline).min(now + Duration::from_micros(delay.total_micros()));
        }
        None
    }
}

/// `nic=virtio`: the same stack and workloads on a virtio-net NIC of the guest's own.
fn run_virtio(boot: &'static rt::BootInfo, cfg: &GuestConfig) -> Result<Report, String> {
    let mcfg = platform::find_ecam(boot);
    let mut ecam = platform::map_ecam(&mcfg).map_err(|e| format!("ECAM: {e}"))?;
    let func = hal::virtio_net::pci::find(&ecam).ok_or("no virtio-net device (1af4:1041/1000) on PCI")?;
    let opened = hal::virtio_net::pci::open::<{ crate::nic::QUEUE_SIZE }>(&mut ecam, func, BAR_WINDOW, Some(on_nic_irq))
        .map_err(|e| format!("{}: virtio-net: {e}", func.bdf))?;
    let irq = opened.rx_vector;
    let mut dev = Metered::new(VirtioDevice::new(opened.net));
    rt::ready("net-guest");
    let now = time::now();
    log::info!(
        "net-guest {}: {} mac {} on virtio-net {} ({}); work={}",
        cfg.name,
        cfg.cidr,
        netfront::channel::mac_key(cfg.mac.0),
        func.bdf,
        match irq {
            Some(v) => format!("rx interrupts on vector {v}"),
            None => format!("polling every {} us", NIC_POLL.as_micros()),
        },
        cfg.work_text
    );
    log::info!("ICONNECT-LINK up qos=none granted_bps=0 nic=virtio");
    let seed = now.as_nanos() ^ boot.tsc_at_entry.rotate_left(17);
    let counters = |d: &mut Metered<VirtioDevice>| {
        let m = d.meter();
        (m.tx_bytes, m.rx_bytes)
    };
    let c0 = counters(&mut dev);
    let mut session = Session::new(cfg, &mut dev, now, seed, c0)?;
    let mut activity = Activity::new(now);
    let mut irqs_seen = 0;
    loop {
        let now = time::now();
        let idle = if irq.is_some() { KICK_AFTER } else { NIC_POLL };
        let mut deadline = now + idle;
        let before = dev.meter().rx_frames;
        let done = session.poll(cfg, &mut dev, now, counters, &mut deadline);
        let irqs = NIC_IRQS.load(Ordering::Relaxed);
        activity.woke(now, core::mem::replace(&mut irqs_seen, irqs) != irqs, dev.meter().rx_frames != before);
        activity.cap(now, counters(&mut dev), false, &mut deadline);
        if let Some(r) = done {
            let m = dev.meter();
            log::info!(
                "virtio-net: tx {} frames {} bytes, rx {} frames {} bytes, {} rx interrupts, {} dropped; {} wake-ups, {} found late work",
                m.tx_frames,
                m.tx_bytes,
                m.rx_frames,
                m.rx_bytes,
                NIC_IRQS.load(Ordering::Relaxed),
                dev.inner().tx_dropped(),
                activity.wakeups,
                activity.late
            );
            return Ok(r);
        }
        activity.sleep();
        rt::event::wait_until(Some(deadline));
    }
}

fn run(boot: &'static rt::BootInfo, cfg: &GuestConfig) -> Result<Report, String> {
    let Nic::Channel(chan) = cfg.nic else {
        return run_virtio(boot, cfg);
    };
    let mcfg = platform::find_ecam(boot);
    let mut ecam = platform::map_ecam(&mcfg).map_err(|e| format!("ECAM: {e}"))?;
    let funcs = ivshmem::find_all(&ecam, mcfg.start_bus, mcfg.end_bus);
    let func = funcs
        .get(chan)
        .ok_or_else(|| format!("chan={chan} but {} ivshmem devices (1af4:1110)", funcs.len()))?;
    let mut dev = Ivshmem::open(&mut ecam, func, 2, BAR_WINDOW)
        .map_err(|e| format!("{}: cannot open ivshmem: {e}", func.bdf))?;
    let (bdf, own_id, vectors) = (dev.bdf(), dev.id(), dev.vectors());
    let region_kib = dev.layout().shmem_len() / 1024;
    rt::ready("net-guest");
    log::info!(
        "net-guest {}: {} mac {} via ivshmem {bdf} (peer id {own_id}, {region_kib} KiB, {vectors} vectors); \
         work={}; waiting for the backend",
        cfg.name,
        cfg.cidr,
        netfront::channel::mac_key(cfg.mac.0),
        cfg.work_text
    );
    let parts = dev.parts();
    let mut link = Link::new(parts.region, own_id, cfg)?;
    let ring = |regs: &mut hal::ivshmem::Registers<hal::mmio::Mmio>, peer: Option<u16>, bells: [bool; 2]| {
        if let Some(p) = peer {
            for (v, on) in bells.into_iter().enumerate() {
                if on {
                    regs.ring(p, v as u16);
                }
            }
        }
    };

    let t0 = time::now();
    let mut connect_deadline = t0 + Duration::from_secs(u64::from(cfg.timeout_s));
    // `serve` outlives its backend: when the channel goes down it waits for the backend to come
    // back (a restarted net-dd, or its own rejoin after a close). Measuring workloads fail.
    let reconnects = cfg.work == Work::Serve;
    let mut down_at: Option<Instant> = None;
    let beat_every = Duration::from_millis(u64::from(cfg.heartbeat_ms) / 4);
    let mut next_beat = t0;
    let mut session: Option<Session> = None;
    let mut activity = Activity::new(t0);
    let mut hostile: Option<(Hostile, String, Instant)> = None;
    let (mut answered, mut errors) = (0u16, 0u16);
    let mut last_bell = t0;
    let mut irqs = 0u64;
    loop {
        let now = time::now();
        let rung = u64::from(parts.doorbells.take(0)) + u64::from(parts.doorbells.take(1));
        if rung > 0 {
            irqs += rung;
            last_bell = now;
        }
        match link.poll()? {
            Some(LinkEvent::Up(qos)) => {
                log::info!(
                    "ICONNECT-LINK up {} after_ms={}",
                    qos.fields(),
                    (now - t0).as_millis()
                );
                last_bell = now;
                if let Work::Hostile(mode) = cfg.work {
                    let what = link.hostile(mode)?;
                    log::info!("hostile: wrote {what}");
                    hostile = Some((mode, what, now));
                } else if let Some(d) = link.device() {
                    let seed = now.as_nanos() ^ boot.tsc_at_entry.rotate_left(17) ^ u64::from(own_id);
                    let nf = d.netfront().stats();
                    let c0 = (nf.tx_bytes, nf.rx_bytes);
                    session = Some(Session::new(cfg, d, now, seed, c0)?);
                }
            }
            Some(LinkEvent::Down(why)) => {
                log::info!("ICONNECT-LINK down {why}");
                if reconnects {
                    session = None;
                    down_at = Some(now);
                    connect_deadline = now + Duration::from_secs(u64::from(cfg.timeout_s));
                    log::info!("waiting for the backend to come back (work={})", cfg.work_text);
                    continue;
                }
                if let Some((mode, what, at)) = &hostile
                    && matches!(mode, Hostile::ReqProd | Hostile::Oversize)
                {
                    return Ok(Report {
                        ok: true,
                        fields: format!(
                            "wrote={} outcome=channel-closed after_ms={}",
                            what.replace(' ', "_"),
                            (now - *at).as_millis()
                        ),
                    });
                }
                return Err(format!("channel down: {why}"));
            }
            None => {}
        }

        let mut deadline = now + KICK_AFTER;
        if cfg.heartbeat_ms > 0 {
            if now >= next_beat {
                link.beat();
                next_beat = now + beat_every;
            }
            deadline = deadline.min(next_beat);
        }
        if let Some(t) = down_at
            && link.is_closed()
        {
            if now >= t + RECONNECT_AFTER {
                log::info!("rejoining the channel as a new frontend generation");
                link.restart();
                down_at = None;
            } else {
                deadline = deadline.min(t + RECONNECT_AFTER);
            }
        }
        if !link.is_up() || link.peer().is_none() {
            if now >= connect_deadline {
                return Err(format!(
                    "no backend connected within {} s (peer id known: {})",
                    cfg.timeout_s,
                    link.peer().is_some()
                ));
            }
            deadline = deadline.min(now + HANDSHAKE_TICK);
        }

        if let Some((mode, what, at)) = &hostile {
            if *mode == Hostile::BadRef {
                link.hostile_responses(&mut answered, &mut errors)?;
                if answered >= HOSTILE_BAD_REFS {
                    return Ok(Report {
                        ok: errors == HOSTILE_BAD_REFS,
                        fields: format!(
                            "wrote={} answered={answered} errors={errors} outcome=link-up{}",
                            what.replace(' ', "_"),
                            if errors == HOSTILE_BAD_REFS { "" } else { " why=not_every_request_refused" }
                        ),
                    });
                }
            }
            if now >= *at + HOSTILE_WAIT {
                return Err(format!(
                    "backend did not react to hostile:{} within {} s (answered {answered})",
                    mode.as_str(),
                    HOSTILE_WAIT.as_secs()
                ));
            }
            deadline = deadline.min(now + HANDSHAKE_TICK);
        }

        let mut busy = false;
        if let (Some(sess), Some(d)) = (session.as_mut(), link.device()) {
            let p = d.netfront().poll().map_err(|e| format!("netfront: {e}"))?;
            activity.woke(now, rung > 0, p.tx_completed > 0 || p.rx_ready);
            let counters = |d: &mut net_guest::link::ChannelDevice<_>| {
                let s = d.netfront().stats();
                (s.tx_bytes, s.rx_bytes)
            };
            let done = sess.poll(cfg, d, now, counters, &mut deadline);
            if let Some(e) = d.fatal() {
                return Err(format!("netfront: {e}"));
            }
            if let Some(r) = done {
                let s = *d.netfront().stats();
                log::info!(
                    "netfront: tx {} frames {} bytes ({} full, {} errors), rx {} frames {} bytes ({} errors), \
                     {} bad responses, {} doorbells received, smoltcp drops {}; {} wake-ups, {} found late work",
                    s.tx_packets,
                    s.tx_bytes,
                    s.tx_full,
                    s.tx_errors,
                    s.rx_packets,
                    s.rx_bytes,
                    s.rx_errors + s.rx_oversize,
                    s.bad_responses,
                    irqs,
                    d.tx_dropped(),
                    activity.wakeups,
                    activity.late
                );
                link.close();
                ring(parts.regs, link.peer(), link.take_doorbells());
                return Ok(r);
            }
            busy = !d.netfront().idle().map_err(|e| format!("netfront: {e}"))?;
            let nf = d.netfront();
            let in_flight = nf.tx_in_flight() > 0;
            let s = nf.stats();
            activity.cap(now, (s.tx_packets, s.rx_packets), in_flight, &mut deadline);
        }

        let bells = link.take_doorbells();
        if bells.iter().any(|&b| b) {
            ring(parts.regs, link.peer(), bells);
        } else if link.is_up() && now >= last_bell + KICK_AFTER {
            // Nothing heard for a while: ring again in case a doorbell was lost.
            ring(parts.regs, link.peer(), [true, true]);
            last_bell = now;
        }
        if !busy {
            activity.sleep();
            rt::event::wait_until(Some(deadline));
        }
    }
}
