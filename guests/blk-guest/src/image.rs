//! Bring-up and event loop: the channel (or `disk=virtio`), the workload, the markers.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use core::time::Duration;

use blk_guest::{Dev, Disk, FrontDev, GuestConfig, Report, VolumeDev, Work, Workload, hostile};
use blkfront::channel::{ChannelPages, RING, VECTOR, frontend_config};
use blkfront::{BackendInfo, Blkfront};
use hal::ivshmem::{self, Ivshmem};
use hal::platform;
use iconnect::storage::{StorageRequest, VolumeName};
use iconnect_channel::{Frontend, FrontendEvent, KeyMap};
use rt::time::{self, Instant};
use xen_abi::blkif::{BlkRing, Status};

/// Where unassigned BARs go (the 32-bit MMIO hole above q35's ECAM, below the IOAPIC).
const BAR_WINDOW: (u64, u64) = (0xc000_0000, 0xfe00_0000);
/// Key carrying each end's ivshmem peer id.
const PEER_KEY: &str = "ivshmem-peer";
/// Polling period while the backend is not connected.
const HANDSHAKE_TICK: Duration = Duration::from_millis(1);
/// With requests in flight, never sleep longer (a guard against a late doorbell).
const ACTIVE_TICK: Duration = Duration::from_millis(1);
/// How often the guest beats (it promises `heartbeat_ms=`, default 500).
const BEAT_EVERY: Duration = Duration::from_millis(100);
/// How long `hostile` waits for its answers.
const HOSTILE_WAIT: Duration = Duration::from_secs(10);
/// Bounded busy-poll for responses (`poll_us=`, 0 = sleep at once): with requests in flight,
/// the guest polls its ring until this long has passed since its last progress (a completion
/// or a submission), then arms the ring's response event and sleeps until the doorbell. The
/// backend sends no doorbell while the event is not armed, and a doorbell wake-up costs more
/// than a request's own work (tens of µs under TCG). This is the channel counterpart of
/// `disk=virtio`, which polls its used ring while requests are in flight (the same guest
/// waits the same way on both paths); the bound makes a stalled backend (an NBD reconnect)
/// cost a sleeping guest, not a spinning one. Measured on an idle host (TCG): QD1 reads 6.5k →
/// 13–15k IOPS, QD32 44–50k → 67k. On a host whose cores are taken by other VMs a spinning
/// guest competes with blk-dd and the disk's I/O threads: `poll_us=0` is then faster.
const DEFAULT_POLL_US: u64 = 1000;
const MAX_POLL_US: u64 = 100_000;
/// Largest indirect request the guest uses (pages).
const MAX_INDIRECT: u16 = 64;

/// The image's entry point.
pub fn main(boot: &'static rt::BootInfo) -> rt::ExitCode {
    let cfg = match GuestConfig::from_cmdline(boot.cmdline) {
        Ok(c) => c,
        Err(e) => {
            log::error!("ICONNECT-RESULT FAIL name=? work=? why={}", e.replace(' ', "_"));
            return rt::ExitCode::Failure;
        }
    };
    let r = match cfg.disk {
        Disk::Virtio => run_virtio(boot, &cfg),
        Disk::Channel(chan) => run_channel(boot, &cfg, chan),
    };
    match r {
        Ok(r) if r.ok => {
            log::info!("ICONNECT-RESULT ok name={} work={} {}", cfg.name, cfg.work_text, r.fields);
            rt::ExitCode::Success
        }
        Ok(r) => {
            log::error!("ICONNECT-RESULT FAIL name={} work={} {}", cfg.name, cfg.work_text, r.fields);
            rt::ExitCode::Failure
        }
        Err(why) => {
            log::error!("ICONNECT-RESULT FAIL name={} work={} why={}", cfg.name, cfg.work_text, why.replace(' ', "_"));
            rt::ExitCode::Failure
        }
    }
}

fn us(t: Instant) -> u64 {
    t.as_micros()
}

fn on_disk_irq() {}

/// `disk=virtio`: the workload on a virtio-blk disk of the guest's own (blk-dd's driver).
fn run_virtio(boot: &'static rt::BootInfo, cfg: &GuestConfig) -> Result<Report, String> {
    let mcfg = platform::find_ecam(boot);
    let mut ecam = platform::map_ecam(&mcfg).map_err(|e| format!("ECAM: {e}"))?;
    let func = blk_dd::disk::find(&ecam).ok_or("no virtio-blk device (1af4:1042/1001)")?;
    // By default the loop below polls the used ring (the lowest-latency baseline); with
    // disk_irq=1 it sleeps until the disk's completion interrupt, as an OS driver would.
    let irq = rt::cmdline::get(boot.cmdline, "disk_irq") == Some("1");
    let on_irq: Option<fn()> = if irq { Some(on_disk_irq) } else { None };
    let disk = blk_dd::disk::Disk::open(&mut ecam, func, BAR_WINDOW, on_irq).map_err(|e| format!("{}: {e}", func.bdf))?;
    let sleep = irq && disk.interrupts;
    rt::ready("blk-guest");
    let mut dev = VolumeDev::new(disk);
    log::info!(
        "ICONNECT-LINK up disk=virtio bdf={} sectors={} sector_size=512 name={}",
        func.bdf,
        dev.size() / 512,
        cfg.name
    );
    if matches!(cfg.work, Work::Hostile | Work::HostileRing) {
        return Err("work=hostile needs the channel".into());
    }
    let t0 = time::now();
    let mut w = Workload::new(cfg, dev.size(), us(t0));
    let mut idle = Duration::ZERO;
    loop {
        // Up to the workload's queue depth in flight at the disk.
        if let Some(r) = w.poll(&mut dev, us(time::now()))? {
            return Ok(with_busy(r, t0, idle));
        }
        // What the workload just submitted reaches the device now (a poll would kick it too).
        dev.vol.kick();
        if sleep && !dev.vol.has_completion() {
            // The interrupt of a completion after this check ends the wait at once.
            let t = time::now();
            rt::event::wait_until(Some(t + ACTIVE_TICK));
            idle += time::now() - t;
        }
    }
}

fn run_channel(boot: &'static rt::BootInfo, cfg: &GuestConfig, chan: usize) -> Result<Report, String> {
    let mcfg = platform::find_ecam(boot);
    let mut ecam = platform::map_ecam(&mcfg).map_err(|e| format!("ECAM: {e}"))?;
    let funcs = ivshmem::find_all(&ecam, mcfg.start_bus, mcfg.end_bus);
    let func = funcs.get(chan).ok_or_else(|| format!("chan={chan} but {} ivshmem devices", funcs.len()))?;
    let mut ivdev = Ivshmem::open(&mut ecam, func, 2, BAR_WINDOW).map_err(|e| format!("{}: ivshmem: {e}", func.bdf))?;
    let own_id = ivdev.id();
    rt::ready("blk-guest");
    log::info!("blk-guest {}: volume {} via ivshmem {} (peer id {own_id}); work={}", cfg.name, cfg.volume, func.bdf, cfg.work_text);
    let parts = ivdev.parts();
    let mut keys = KeyMap::new();
    keys.insert(PEER_KEY, &own_id.to_string()).map_err(|e| format!("keys: {e}"))?;
    // Liveness: if this VM dies without closing, blk-dd frees its volume after 5 periods.
    if cfg.heartbeat_ms > 0 {
        keys.insert(blk_dd::HEARTBEAT_KEY, &cfg.heartbeat_ms.to_string()).map_err(|e| format!("keys: {e}"))?;
    }
    let volume = VolumeName::parse(iconnect::storage::VOLUME, &cfg.volume).map_err(|e| format!("vol={}: {e}", cfg.volume))?;
    StorageRequest { volume, durable_flush: true }.write(&mut keys).map_err(|e| format!("keys: {e}"))?;
    let mut fe = Frontend::new(parts.region, frontend_config(), keys).map_err(|e| format!("channel: {e}"))?;

    let t0 = time::now();
    let connect_deadline = t0 + Duration::from_secs(u64::from(cfg.timeout_s));
    let mut peer: Option<u16> = None;
    let mut dev: Option<FrontDev<_, _>> = None;
    let mut work: Option<Workload> = None;
    let mut hostile_at: Option<Instant> = None;
    let mut wild_at: Option<Instant> = None;
    let mut seen = BTreeMap::new();
    let mut probe: Option<(u64, u64)> = None;
    let mut last_beat = t0;
    // spin=1: while requests are in flight, poll the ring instead of sleeping until a doorbell.
    let spin = rt::cmdline::get(boot.cmdline, "spin") == Some("1");
    let (mut work_t0, mut idle) = (t0, Duration::ZERO);
    let poll_us = match rt::cmdline::get(boot.cmdline, "poll_us") {
        None => DEFAULT_POLL_US,
        Some(v) => v.parse().ok().filter(|&us| us <= MAX_POLL_US).ok_or_else(|| format!("poll_us={v}: expected 0..={MAX_POLL_US}"))?,
    };
    let poll_window = Duration::from_micros(poll_us);
    let mut progress = (t0, 0u64);
    loop {
        let now = time::now();
        let _ = parts.doorbells.take(0) + parts.doorbells.take(1);
        if now >= last_beat + BEAT_EVERY {
            fe.beat();
            last_beat = now;
        }
        let mut ring_peer = false;
        while let Some(ev) = fe.poll() {
            match ev {
                FrontendEvent::SetUp => {}
                FrontendEvent::Ready => {
                    let k = fe.backend_keys();
                    peer = k.get(PEER_KEY).and_then(|v| v.parse().ok());
                    let info = BackendInfo::from_keys(k).map_err(|e| format!("backend keys: {e}"))?;
                    let durable = k.get(iconnect::storage::GRANTED_DURABLE_FLUSH).unwrap_or("0").to_string();
                    let ring = fe.front_ring::<BlkRing>(RING).map_err(|e| format!("ring: {e}"))?;
                    let data = fe.data_area().map_err(|e| format!("data area: {e}"))?;
                    let pages = ChannelPages::new(data, fe.page_allocator());
                    log::info!(
                        "ICONNECT-LINK up volume={} sectors={} sector_size={} durable_flush={durable} after_ms={}",
                        cfg.volume,
                        info.sectors,
                        info.sector_size,
                        (now - t0).as_millis()
                    );
                    let mut d = FrontDev { front: Blkfront::new(ring, info, MAX_INDIRECT), pages, notify: false };
                    if cfg.work == Work::Hostile {
                        hostile::send(&mut d)?;
                        hostile_at = Some(now);
                    } else if cfg.work == Work::HostileRing {
                        let wild = hostile::wild_producer(&mut d);
                        log::info!("hostile: wrote req_prod={wild:#x}");
                        wild_at = Some(now);
                    } else {
                        work = Some(Workload::new(cfg, d.size(), us(now)));
                        (work_t0, idle) = (now, Duration::ZERO);
                    }
                    dev = Some(d);
                }
                FrontendEvent::Disconnect | FrontendEvent::Closed | FrontendEvent::Failed(_) if wild_at.is_some() => {
                    let after = wild_at.map(|t| (now - t).as_millis()).unwrap_or(0);
                    return Ok(Report { ok: true, fields: format!("outcome=channel-closed after_ms={after}") });
                }
                FrontendEvent::Disconnect | FrontendEvent::Closed | FrontendEvent::Failed(_) => {
                    let why = fe
                        .read_backend_keys()
                        .ok()
                        .and_then(|k| k.get(blk_dd_error_key()).map(String::from))
                        .unwrap_or_else(|| format!("{ev:?}"));
                    return Err(format!("channel down: {why}"));
                }
            }
        }
        if peer.is_none()
            && let Ok(k) = fe.read_backend_keys()
        {
            peer = k.get(PEER_KEY).and_then(|v| v.parse().ok());
        }
        let mut deadline = last_beat + BEAT_EVERY;
        match dev.as_mut() {
            None => {
                if now >= connect_deadline {
                    return Err(format!("no backend connected within {} s", cfg.timeout_s));
                }
                deadline = now + HANDSHAKE_TICK;
            }
            Some(d) => {
                if let Some(w) = work.as_mut() {
                    if let Some(r) = w.poll(d, us(now))? {
                        fe.close();
                        if let Some(p) = peer {
                            parts.regs.ring(p, VECTOR);
                        }
                        return Ok(with_busy(r, work_t0, idle));
                    }
                    // Progress: a completion or a submission (the count of both changes).
                    let mark = w.completed() * 2 + w.in_flight() as u64;
                    if mark != progress.1 {
                        progress = (now, mark);
                    }
                    if w.in_flight() > 0 {
                        deadline = deadline.min(now + ACTIVE_TICK);
                        let polling = now - progress.0 < poll_window;
                        if spin || polling || d.front.final_check().map_err(|e| format!("ring: {e}"))? {
                            deadline = now;
                        }
                    }
                    if let Some(end) = w.end_us() {
                        deadline = deadline.min(Instant::from_micros(end.max(us(now))));
                    }
                }
                if let Some(at) = wild_at {
                    if now >= at + HOSTILE_WAIT {
                        return Err(format!("backend kept the channel open {} s after a wild req_prod", HOSTILE_WAIT.as_secs()));
                    }
                    deadline = deadline.min(now + HANDSHAKE_TICK);
                }
                if let Some(at) = hostile_at {
                    if probe.is_none() {
                        hostile::collect(d, &mut seen)?;
                    }
                    let all = hostile::CASES.iter().all(|(id, _)| seen.contains_key(id));
                    if all && probe.is_none() {
                        // The channel must still work: a normal write then read of one page.
                        let mut page = [0u8; 4096];
                        blk_guest::fill_pattern(cfg.seed, 0, &mut page);
                        let w = d.write(0, &page)?;
                        let r = d.read(0, 4096)?;
                        d.kick();
                        probe = Some((w, r));
                    }
                    if let Some((w, r)) = probe {
                        let mut got = BTreeMap::new();
                        while let Some(c) = d.next()? {
                            got.insert(c.id, c);
                        }
                        if let (Some(cw), Some(cr)) = (got.get(&w), got.get(&r)) {
                            let mut page = [0u8; 4096];
                            blk_guest::fill_pattern(cfg.seed, 0, &mut page);
                            let refused = hostile::CASES.iter().filter(|(id, _)| seen.get(id) == Some(&Status::Error)).count();
                            let detail: String = hostile::CASES
                                .iter()
                                .map(|(id, what)| format!(" {what}={:?}", seen.get(id)))
                                .collect();
                            let ok = refused == hostile::CASES.len() && cw.ok && cr.ok && cr.data[..] == page[..];
                            fe.close();
                            if let Some(p) = peer {
                                parts.regs.ring(p, VECTOR);
                            }
                            return Ok(Report {
                                ok,
                                fields: format!(
                                    "refused={refused}/{} after={}{detail}",
                                    hostile::CASES.len(),
                                    if cw.ok && cr.ok && cr.data[..] == page[..] { "io-ok" } else { "io-broken" }
                                ),
                            });
                        }
                    }
                    if now >= at + HOSTILE_WAIT {
                        return Err(format!("hostile: answered {} of {} within {} s", seen.len(), hostile::CASES.len(), HOSTILE_WAIT.as_secs()));
                    }
                    deadline = deadline.min(now + ACTIVE_TICK);
                }
                ring_peer |= core::mem::take(&mut d.notify);
            }
        }
        ring_peer |= fe.take_notify();
        if ring_peer && let Some(p) = peer {
            parts.regs.ring(p, VECTOR);
        }
        if deadline > now {
            let t = time::now();
            rt::event::wait_until(Some(deadline));
            idle += time::now() - t;
        }
    }
}

/// `r` with the guest's own busy share since `t0` (time not spent waiting for an interrupt or
/// deadline), per mille: where a workload's time goes.
fn with_busy(mut r: Report, t0: Instant, idle: Duration) -> Report {
    let total = (time::now() - t0).as_nanos().max(1);
    r.fields.push_str(&format!(" busy_permille={}", (total.saturating_sub(idle.as_nanos())) * 1000 / total));
    r
}

/// The backend's refusal key (blk-dd's `ERROR_KEY`).
fn blk_dd_error_key() -> &'static str {
    blk_dd::ERROR_KEY
}
