//! Bring-up and event loop of the image: the channel on an ivshmem device, the smoltcp stack,
//! the workload, the markers.

use alloc::format;
use alloc::string::String;
use core::time::Duration;

use hal::ivshmem::{self, Ivshmem};
use hal::platform;
use net_guest::config::{GuestConfig, Hostile, Nic, Work};
use net_guest::link::{HOSTILE_BAD_REFS, Link, LinkEvent};
use net_guest::stats::RateMeter;
use net_guest::work::{Report, Step, Workload};
use rt::time::{self, Instant};
use smoltcp::iface::{Interface, SocketSet};

/// Where unassigned BARs go (the 32-bit MMIO hole above q35's ECAM, below the IOAPIC).
const BAR_WINDOW: (u64, u64) = (0xc000_0000, 0xfe00_0000);
/// While the backend is not connected (or its peer id unknown), poll this often.
const HANDSHAKE_TICK: Duration = Duration::from_millis(1);
/// Without any doorbell for this long, ring the backend again (a doorbell rung before the
/// peer's QEMU learnt our eventfds is lost).
const KICK_AFTER: Duration = Duration::from_millis(200);
/// Rate lines.
const RATE_PERIOD: Duration = Duration::from_secs(1);
/// How long `hostile:` waits for the backend's reaction.
const HOSTILE_WAIT: Duration = Duration::from_secs(10);

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

fn run(boot: &'static rt::BootInfo, cfg: &GuestConfig) -> Result<Report, String> {
    let Nic::Channel(chan) = cfg.nic else {
        return Err("nic=virtio is not built into this image yet".into());
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
        net_guest::config::mac_str(&cfg.mac),
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
    let connect_deadline = t0 + Duration::from_secs(u64::from(cfg.timeout_s));
    let mut stack: Option<(Interface, SocketSet<'static>, Workload)> = None;
    let mut hostile: Option<(Hostile, String, Instant)> = None;
    let (mut answered, mut errors) = (0u16, 0u16);
    let mut rate = RateMeter::default();
    let mut next_rate = t0;
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
                    let mut iface = net_guest::build_interface(cfg, d, smol(now), seed);
                    let mut sockets = SocketSet::new(alloc::vec![]);
                    let work = Workload::new(cfg, &mut sockets, smol(now), seed)
                        .ok_or("workload could not start")?;
                    iface.poll(smol(now), d, &mut sockets);
                    let nf = d.netfront().stats();
                    rate = RateMeter::new(now.as_micros(), (nf.tx_bytes, nf.rx_bytes));
                    next_rate = now + RATE_PERIOD;
                    stack = Some((iface, sockets, work));
                }
            }
            Some(LinkEvent::Down(why)) => {
                log::info!("ICONNECT-LINK down {why}");
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
        if let (Some((iface, sockets, work)), Some(d)) = (stack.as_mut(), link.device()) {
            let sn = smol(now);
            d.netfront().poll().map_err(|e| format!("netfront: {e}"))?;
            iface.poll(sn, d, sockets);
            let step = work.poll(iface, sockets, sn);
            iface.poll(sn, d, sockets);
            if let Some(e) = d.fatal() {
                return Err(format!("netfront: {e}"));
            }
            if now >= next_rate {
                let nf = d.netfront().stats();
                let (tx_bps, rx_bps) = rate.sample(now.as_micros(), (nf.tx_bytes, nf.rx_bytes));
                if !work.is_serve() || tx_bps > 0 || rx_bps > 0 {
                    log::info!("ICONNECT-RATE name={} tx_bps={tx_bps} rx_bps={rx_bps}", cfg.name);
                }
                next_rate = now + RATE_PERIOD;
            }
            deadline = deadline.min(next_rate);
            match step {
                Step::Done(r) => {
                    let s = *d.netfront().stats();
                    log::info!(
                        "netfront: tx {} frames {} bytes ({} full, {} errors), rx {} frames {} bytes ({} errors), \
                         {} bad responses, {} doorbells received, smoltcp drops {}",
                        s.tx_packets,
                        s.tx_bytes,
                        s.tx_full,
                        s.tx_errors,
                        s.rx_packets,
                        s.rx_bytes,
                        s.rx_errors + s.rx_oversize,
                        s.bad_responses,
                        irqs,
                        d.tx_dropped()
                    );
                    link.close();
                    ring(parts.regs, link.peer(), link.take_doorbells());
                    return Ok(r);
                }
                Step::Continue(Some(t)) => deadline = deadline.min(from_smol(now, sn, t)),
                Step::Continue(None) => {}
            }
            if let Some(delay) = iface.poll_delay(sn, sockets) {
                deadline = deadline.min(now + Duration::from_micros(delay.total_micros()));
            }
            busy = !d.netfront().idle().map_err(|e| format!("netfront: {e}"))?;
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
            rt::event::wait_until(Some(deadline));
        }
    }
}
