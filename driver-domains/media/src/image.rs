//! Bring-up and event loop of the image (QEMU platform).
//!
//! Devices: the virtio-sound device (output opened once at `media_dd::DEVICE`, input at the
//! same shape started while a guest captures: see `sound`) and one guest
//! per ivshmem-doorbell device (ports 1..=N, PCI order). One executor task: doorbells, the
//! ports' handshakes and requests, the mix (one period per period the device returned),
//! doorbells back, markers, and once a second an `ICONNECT-LEVEL` line per playing port and
//! an `ICONNECT-CAPTURE-PORT` line per capturing port.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use hal::ivshmem::{self, Doorbells, Registers, SharedRegion};
use hal::mmio::Mmio;
use hal::platform;
use media_dd::channel::{VECTOR_EVENTS, VECTOR_RING};
use media_dd::{MediaPort, PortEvent};
use rt::exec::Step;
use sndback::Hub;

use crate::sound::{self, PERIOD_FRAMES, Sound};

/// Where unassigned BARs are placed (32-bit MMIO hole above q35's ECAM, below the IOAPIC).
const BAR_WINDOW: (u64, u64) = (0xc000_0000, 0xfe00_0000);
/// Doorbell vectors per channel.
const CHANNEL_VECTORS: u16 = 2;
/// The loop looks at the device and the channels this often (a period is 10 ms).
const TICK: Duration = Duration::from_millis(2);
/// Level and statistics lines this often.
const LEVEL_EVERY: Duration = Duration::from_secs(1);
/// Streams in the hub each way.
const MAX_STREAMS: usize = 16;

struct Chan {
    port: MediaPort<&'static SharedRegion>,
    regs: &'static mut Registers<Mmio>,
    bells: &'static Doorbells,
}

/// The image's entry point.
pub fn main(boot: &'static rt::BootInfo) -> rt::ExitCode {
    match run(boot) {
        Ok(never) => match never {},
        Err(e) => {
            log::error!("media-dd: {e}");
            rt::ExitCode::Failure
        }
    }
}

fn open_channels(ecam: &mut hal::ecam::Ecam, can_capture: bool) -> Vec<Chan> {
    let mut chans = Vec::new();
    for ch in ivshmem::open_all(ecam, CHANNEL_VECTORS, BAR_WINDOW, usize::MAX) {
        let port = ch.port;
        match MediaPort::new(ch.port, ch.parts.region, ch.own_id, can_capture) {
            Ok(p) => {
                log::info!("port {port}: ivshmem {} id {}, {} KiB", ch.bdf, ch.own_id, ch.shmem_len / 1024);
                chans.push(Chan { port: p, regs: ch.parts.regs, bells: ch.parts.doorbells });
            }
            Err(e) => log::error!("ICONNECT-PORT {port} down reason=channel:{e}"),
        }
    }
    chans
}

fn run(boot: &'static rt::BootInfo) -> Result<core::convert::Infallible, String> {
    let mcfg = platform::find_ecam(boot);
    let mut ecam = platform::map_ecam(&mcfg).map_err(|e| format!("ECAM: {e}"))?;
    let func = sound::find(&ecam).ok_or("no virtio-sound device (1af4:1059)")?;
    let mut snd = Sound::open(&mut ecam, func, BAR_WINDOW).map_err(|e| format!("{}: {e}", func.bdf))?;
    let dev = media_dd::DEVICE;
    log::info!(
        "virtio-sound {}: output {} Hz {:?} {} ch, {} ms periods; capture: {}",
        func.bdf,
        dev.rate,
        dev.format,
        dev.channels,
        PERIOD_FRAMES * 1000 / dev.rate as usize,
        snd.input().map_or("none".into(), |i| format!("input stream {i}, same shape, started while a guest captures"))
    );
    let policy = media_dd::Policy::from_cmdline(boot.cmdline)?;
    let mut hub = Hub::new(dev, policy.duck(), MAX_STREAMS).map_err(|e| format!("hub: {e}"))?;
    let mut chans = open_channels(&mut ecam, snd.can_capture());
    for c in chans.iter_mut() {
        c.port.set_policy(&mut hub, &policy);
    }
    rt::ready("media-dd");
    log::info!("media-dd: {} guest channel(s), ducking {} dB", chans.len(), policy.duck().depth_db);

    let mut events: Vec<PortEvent> = Vec::new();
    let mut period = vec![0u8; PERIOD_FRAMES * dev.frame_bytes()];
    let mut last_stat = rt::time::now();
    let mut last_beat = last_stat;
    // Time spent in this task since the last statistics line: the domain's CPU share.
    let mut busy_time = Duration::ZERO;
    let mut task = |now: rt::time::Instant| -> Step {
        for c in chans.iter_mut() {
            let _ = c.bells.take(0) + c.bells.take(1);
        }
        let mut busy = false;
        let beat = now - last_beat >= Duration::from_millis(media_dd::channel::OWN_HEARTBEAT_MS);
        if beat {
            last_beat = now;
        }
        for c in chans.iter_mut() {
            if beat {
                c.port.heartbeat(now.as_nanos());
            }
            c.port.poll(&mut hub, &mut events, now.as_nanos());
            busy |= c.port.serve(&mut hub);
        }
        // The mix: one period per period the device gave back, then the guests again (their
        // positions moved: CUR_POS events, refills).
        // Capture: what the device recorded went to every capture guest's fan-out queue.
        let (room, captured) = snd.poll(&mut hub);
        for _ in 0..room {
            if hub.render(&mut period).is_err() {
                period.fill(0);
            }
            snd.send(&period);
        }
        snd.kick();
        if room > 0 || captured > 0 {
            for c in chans.iter_mut() {
                busy |= c.port.serve(&mut hub);
            }
        }
        for ev in events.drain(..) {
            log::info!("{}", ev.marker());
        }
        for c in chans.iter_mut() {
            let k = c.port.take_kick();
            if let Some(peer) = c.port.peer() {
                if k.ring {
                    c.regs.ring(peer, VECTOR_RING);
                }
                if k.events {
                    c.regs.ring(peer, VECTOR_EVENTS);
                }
            }
        }
        busy_time += rt::time::now() - now;
        if now - last_stat >= LEVEL_EVERY {
            let wall = now - last_stat;
            last_stat = now;
            let mut playing = 0;
            for c in chans.iter() {
                if let Some(l) = c.port.level(&hub) {
                    playing += 1;
                    let s = c.port.stats().unwrap_or_default();
                    log::info!(
                        "ICONNECT-LEVEL {} rms_dbfs={:.1} requests={} errors={} underrun_frames={}",
                        c.port.port(),
                        media_dd::dbfs(l),
                        s.requests,
                        s.errors,
                        c.port.underrun_frames(&hub)
                    );
                }
            }
            for c in chans.iter() {
                if let Some((s, underrun)) = c.port.capture_stats(&hub) {
                    log::info!(
                        "ICONNECT-CAPTURE-PORT {} produced={} read={} overrun={} underrun={underrun}",
                        c.port.port(),
                        s.produced,
                        s.read,
                        s.overrun
                    );
                }
            }
            let busy_us = core::mem::take(&mut busy_time).as_micros() as u64;
            log::info!(
                "ICONNECT-DDSTAT streams={playing} busy_permille={} device_periods={} device_errors={} device_xruns={} clipped={} capture_starts={} capture={:?} capture_periods={} capture_guests={} capture_stale={}",
                busy_us * 1000 / (wall.as_micros() as u64).max(1),
                snd.n.done,
                snd.n.errors,
                snd.n.xruns,
                hub.mixer().stats().clipped,
                snd.n.capture_starts,
                snd.capture_state(),
                snd.n.captured,
                hub.fanout().running(),
                snd.n.stale
            );
        }
        if busy {
            return Step::Busy;
        }
        Step::At(now + TICK)
    };
    let code = rt::exec::run(&mut [&mut task]);
    Err(format!("executor stopped ({code:?})"))
}
