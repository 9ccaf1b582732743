//! Bring-up and event loop: the channel, the stream, the markers.

use alloc::format;
use alloc::string::String;
use core::time::Duration;

use hal::ivshmem::{self, Ivshmem};
use hal::platform;
use iconnect::Decision;
use iconnect_channel::{Frontend, FrontendEvent};
use media_dd::channel::{ERROR_KEY, PEER_KEY, VECTOR_RING, frontend_config};
use rt::time;
use snd_guest::{CaptureReport, Config, Player, Recorder, Report};

/// Where unassigned BARs go (the 32-bit MMIO hole above q35's ECAM, below the IOAPIC).
const BAR_WINDOW: (u64, u64) = (0xc000_0000, 0xfe00_0000);
/// Polling period (doorbells wake the loop earlier).
const TICK: Duration = Duration::from_millis(2);
/// The channel heartbeat's period (the guest promises `heartbeat_ms`, 500 by default).
const BEAT_EVERY: Duration = Duration::from_millis(100);
/// A capture stream that delivers nothing for this long fails (e.g. a device without input).
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Give up if the domain does not answer within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How a run ended.
enum Outcome {
    /// The stream played to its end.
    Played(Report),
    /// `capture=`: the stream recorded `secs` seconds.
    Captured(CaptureReport),
    /// `hostile=ring`: the domain closed the channel this long after the wild index.
    Closed { after_ms: u64 },
}

/// The image's entry point.
pub fn main(boot: &'static rt::BootInfo) -> rt::ExitCode {
    let cfg = match Config::from_cmdline(boot.cmdline) {
        Ok(c) => c,
        Err(e) => {
            log::error!("ICONNECT-RESULT FAIL name=? play=? why={}", e.replace(' ', "_"));
            return rt::ExitCode::Failure;
        }
    };
    match run(boot, &cfg) {
        Ok((Outcome::Closed { after_ms }, _)) => {
            log::info!("ICONNECT-RESULT ok name={} hostile=ring outcome=channel-closed after_ms={after_ms}", cfg.name);
            rt::ExitCode::Success
        }
        Ok((Outcome::Played(r), t)) => {
            log::info!(
                "ICONNECT-RESULT ok name={} play={} class={:?} frames={} events={} requests={} secs={}.{:03}",
                cfg.name,
                cfg.play_text,
                cfg.request.role(),
                r.frames,
                r.events,
                r.requests,
                t.as_secs(),
                t.subsec_millis()
            );
            rt::ExitCode::Success
        }
        Ok((Outcome::Captured(r), t)) => {
            let last = r.last.unwrap_or(snd_guest::Second { index: 0, peak_hz: 0.0, rms_dbfs: -150.0 });
            log::info!(
                "ICONNECT-RESULT ok name={} capture={} frames={} events={} requests={} peak_hz={:.1} rms_dbfs={:.1} secs={}.{:03}",
                cfg.name,
                cfg.play_text,
                r.stream.frames,
                r.stream.events,
                r.stream.requests,
                last.peak_hz,
                last.rms_dbfs,
                t.as_secs(),
                t.subsec_millis()
            );
            rt::ExitCode::Success
        }
        Err(why) => {
            let what = if cfg.capture_text.is_some() { "capture" } else { "play" };
            log::error!("ICONNECT-RESULT FAIL name={} {what}={} why={}", cfg.name, cfg.play_text, why.replace(' ', "_"));
            rt::ExitCode::Failure
        }
    }
}

fn run(boot: &'static rt::BootInfo, cfg: &Config) -> Result<(Outcome, Duration), String> {
    let mcfg = platform::find_ecam(boot);
    let mut ecam = platform::map_ecam(&mcfg).map_err(|e| format!("ECAM: {e}"))?;
    let funcs = ivshmem::find_all(&ecam, mcfg.start_bus, mcfg.end_bus);
    let func = funcs.get(cfg.chan).ok_or_else(|| format!("chan={} but {} ivshmem devices", cfg.chan, funcs.len()))?;
    let mut dev = Ivshmem::open(&mut ecam, func, 2, BAR_WINDOW).map_err(|e| format!("{}: ivshmem: {e}", func.bdf))?;
    let own_id = dev.id();
    rt::ready("snd-guest");
    log::info!("snd-guest {}: play={} via ivshmem {} (peer id {own_id})", cfg.name, cfg.play_text, func.bdf);
    let parts = dev.parts();
    let mut fe = Frontend::new(parts.region, frontend_config(), cfg.keys(own_id)?).map_err(|e| format!("channel: {e}"))?;
    let t0 = time::now();
    let mut peer: Option<u16> = None;
    let mut player: Option<Player<_>> = None;
    let mut recorder: Option<Recorder<_>> = None;
    // (frames received, when that count last changed): a capture that stops delivering fails.
    let mut stall = (0u64, t0);
    let mut play_at: Option<time::Instant> = None;
    let mut grant = None;
    let mut wild_at: Option<time::Instant> = None;
    let mut last_beat = t0;
    loop {
        let now = time::now();
        if now - last_beat >= BEAT_EVERY {
            fe.beat();
            last_beat = now;
        }
        let _ = parts.doorbells.take(0) + parts.doorbells.take(1);
        while let Some(ev) = fe.poll() {
            match ev {
                FrontendEvent::SetUp => {}
                FrontendEvent::Ready => {
                    let k = fe.backend_keys();
                    peer = k.get(PEER_KEY).and_then(|v| v.parse().ok());
                    let g = match iconnect::media::read_decision(k) {
                        Ok(Some(Decision::Granted(g))) => g,
                        other => return Err(format!("media decision: {other:?}")),
                    };
                    log::info!(
                        "ICONNECT-LINK up stream={} granted_format={} granted_rate={} granted_channels={} after_ms={}",
                        cfg.request.direction.as_str(),
                        g.format.as_str(),
                        g.rate_hz,
                        g.channels,
                        (now - t0).as_millis()
                    );
                    grant = Some(g);
                    play_at = Some(now + Duration::from_millis(u64::from(cfg.delay_ms)));
                    if cfg.hostile_ring {
                        let wild = snd_guest::wild_producer(&fe)?;
                        log::info!("hostile: wrote req_prod={wild:#x}");
                        if let Some(peer) = peer {
                            parts.regs.ring(peer, VECTOR_RING);
                        }
                        wild_at = Some(now);
                        play_at = None;
                    }
                }
                FrontendEvent::Disconnect | FrontendEvent::Closed | FrontendEvent::Failed(_) if wild_at.is_some() => {
                    let after = wild_at.map(|t| (now - t).as_millis() as u64).unwrap_or(0);
                    return Ok((Outcome::Closed { after_ms: after }, now - t0));
                }
                FrontendEvent::Disconnect | FrontendEvent::Closed | FrontendEvent::Failed(_) => {
                    let why = fe
                        .read_backend_keys()
                        .ok()
                        .and_then(|k| k.get(ERROR_KEY).map(String::from))
                        .unwrap_or_else(|| format!("{ev:?}"));
                    return Err(format!("channel down: {why}"));
                }
            }
        }
        if player.is_none()
            && recorder.is_none()
            && let (Some(at), Some(g)) = (play_at, grant.as_ref())
            && now >= at
        {
            if cfg.capture_text.is_some() {
                recorder = Some(Recorder::start(&fe, cfg, g)?);
                stall = (0, now);
            } else {
                player = Some(Player::start(&fe, cfg, g)?);
            }
        }
        if let Some(r) = recorder.as_mut() {
            let done = r.poll()?;
            if r.frames() != stall.0 {
                stall = (r.frames(), now);
            } else if now - stall.1 > STALL_TIMEOUT {
                return Err(format!("capture stalled: no audio for {} s after {} frames", STALL_TIMEOUT.as_secs(), stall.0));
            }
            for s in r.take_seconds() {
                log::info!("ICONNECT-CAPTURE name={} sec={} peak_hz={:.1} rms_dbfs={:.1}", cfg.name, s.index, s.peak_hz, s.rms_dbfs);
            }
            if r.take_notify()
                && let Some(peer) = peer
            {
                parts.regs.ring(peer, VECTOR_RING);
            }
            if let Some(report) = done {
                fe.close();
                if let Some(peer) = peer {
                    parts.regs.ring(peer, VECTOR_RING);
                }
                return Ok((Outcome::Captured(report), now - t0));
            }
        }
        if let Some(p) = player.as_mut()
            && let Some(r) = p.poll()?
        {
            fe.close();
            if let Some(peer) = peer {
                parts.regs.ring(peer, VECTOR_RING);
            }
            return Ok((Outcome::Played(r), now - t0));
        }
        if let Some(p) = player.as_mut()
            && p.take_notify()
            && let Some(peer) = peer
        {
            parts.regs.ring(peer, VECTOR_RING);
        }
        if wild_at.is_some_and(|t| now - t > CONNECT_TIMEOUT) {
            return Err("hostile=ring: the domain did not close the channel".into());
        }
        if grant.is_none() && now - t0 > CONNECT_TIMEOUT {
            return Err(format!("no backend connected within {} s", CONNECT_TIMEOUT.as_secs()));
        }
        rt::event::wait_until(Some(now + TICK));
    }
}
