//! The whole sound path on the host: `snd_guest::Player`s (the guest image's frontend) and
//! `media_dd::MediaPort`s (the domain's channel ports) over in-memory channel regions, one
//! `sndback::Hub` as the device, rendered period by period like media-dd does with its
//! virtio-sound device. The device output is checked like the QEMU test checks QEMU's WAV.

use iconnect_channel::{Frontend, FrontendEvent};
use media_dd::{MediaPort, PortEvent};
use media_dsp::format::decode_f32;
use media_dsp::measure::{channel, goertzel_amplitude};
use media_dsp::SampleFormat;
use snd_guest::{Config, Player, Report};
use sndback::Hub;
use xen_abi::shmem::HostMem;

const PERIOD: usize = 480;

struct Guest {
    cfg: Config,
    fe: Frontend<HostMem>,
    port: MediaPort<HostMem>,
    player: Option<Player<HostMem>>,
    report: Option<Report>,
    start_tick: usize,
}

fn guest(n: usize, cmdline: &str, start_tick: usize) -> Guest {
    let cfg = Config::from_cmdline(cmdline).unwrap();
    let m = HostMem::pages(64);
    let port = MediaPort::new(n, m.clone(), 1, false).unwrap();
    let fe = Frontend::new(m, media_dd::channel::frontend_config(), cfg.keys(10 + n as u16).unwrap()).unwrap();
    Guest { cfg, fe, port, player: None, report: None, start_tick }
}

fn step(g: &mut Guest, hub: &mut Hub, events: &mut Vec<PortEvent>, tick: usize) {
    if tick < g.start_tick {
        return;
    }
    for _ in 0..3 {
        g.port.poll(hub, events, tick as u64 * 10_000_000);
        g.port.serve(hub);
        while let Some(ev) = g.fe.poll() {
            if ev == FrontendEvent::Ready {
                let d = iconnect::media::read_decision(g.fe.backend_keys()).unwrap().unwrap();
                let iconnect::Decision::Granted(grant) = d else { panic!("{d:?}") };
                g.player = Some(Player::start(&g.fe, &g.cfg, &grant).unwrap());
            }
        }
        if let Some(p) = g.player.as_mut()
            && g.report.is_none()
        {
            g.report = p.poll().unwrap();
        }
    }
}

/// Runs `ticks` device periods; returns the left channel of the device output.
fn run(guests: &mut [Guest], ticks: usize) -> (Vec<f32>, Vec<PortEvent>) {
    run_with(guests, ticks, &media_dd::Policy::default())
}

/// [`run`] with the platform's controls.
fn run_with(guests: &mut [Guest], ticks: usize, policy: &media_dd::Policy) -> (Vec<f32>, Vec<PortEvent>) {
    let mut hub = Hub::new(media_dd::DEVICE, media_dd::duck(), 16).unwrap();
    for g in guests.iter_mut() {
        g.port.set_policy(&mut hub, policy);
    }
    let mut events = Vec::new();
    let mut out = Vec::new();
    let mut block = vec![0u8; PERIOD * 4];
    for tick in 0..ticks {
        for g in guests.iter_mut() {
            step(g, &mut hub, &mut events, tick);
        }
        hub.render(&mut block).unwrap();
        let mut f = vec![0f32; PERIOD * 2];
        decode_f32(SampleFormat::S16Le, &block, &mut f).unwrap();
        out.extend(channel(&f, 2, 0));
    }
    (out, events)
}

fn level(x: &[f32], f: f64) -> f64 {
    goertzel_amplitude(x, 48000, f)
}

#[test]
fn two_guests_play_their_tones_through_one_device() {
    let mut gs = [
        guest(1, "play=sine:440:44100:s16:2 class=media secs=1 amp_db=-6", 0),
        guest(2, "play=sine:660:48000:s16_le:1 class=media secs=1 amp_db=-12", 0),
    ];
    let (out, events) = run(&mut gs, 130);
    for g in &gs {
        let r = g.report.as_ref().expect("guest finished");
        assert_eq!(r.frames, g.cfg.request.rate_hz as u64, "{r:?}");
        assert!(r.events >= 95, "{r:?}");
    }
    let ups: Vec<String> = events.iter().map(PortEvent::marker).collect();
    assert!(ups[0].starts_with("ICONNECT-PORT 1 up stream=playback format=s16_le rate=44100 channels=2"), "{ups:?}");
    assert!(ups.iter().any(|l| l.starts_with("ICONNECT-PORT 2 up")), "{ups:?}");
    let mid = &out[48000 * 3 / 10..48000 * 8 / 10];
    let (a440, a660) = (level(mid, 440.0), level(mid, 660.0));
    assert!((a440 - 0.501).abs() < 0.02, "440 Hz at {a440}");
    assert!((a660 - 0.251).abs() < 0.01, "660 Hz at {a660}");
    assert!(level(mid, 550.0) < 0.01 && level(mid, 880.0) < 0.01);
    // Both closed: their streams left the mix.
    assert!(events.iter().filter(|e| matches!(e, PortEvent::Down { .. })).count() == 0);
    let tail = &out[out.len() - 4800..];
    assert!(level(tail, 440.0) < 0.001 && level(tail, 660.0) < 0.001);
}

#[test]
fn an_alert_guest_ducks_the_media_guest() {
    let mut gs = [
        guest(1, "play=sine:440:44100:s16:2 class=media secs=2 amp_db=-6", 0),
        guest(2, "play=sine:880:48000:s16:1 class=alert secs=1 amp_db=-6", 50),
    ];
    let (out, _) = run(&mut gs, 200);
    let before = level(&out[48000 / 10..48000 * 4 / 10], 440.0);
    let during = level(&out[48000 * 7 / 10..48000 * 13 / 10], 440.0);
    let alert = level(&out[48000 * 7 / 10..48000 * 13 / 10], 880.0);
    let drop_db = 20.0 * (before / during).log10();
    assert!((drop_db - 12.0).abs() < 1.0, "ducked by {drop_db:.2} dB");
    assert!((alert - 0.501).abs() < 0.02, "alert at {alert}");
    let after = level(&out[48000 * 17 / 10..48000 * 195 / 100], 440.0);
    assert!((after - before).abs() < 0.02, "released to {after} (before {before})");
}

#[test]
fn the_platform_caps_and_mutes_guests() {
    let mut gs = [
        guest(1, "play=sine:440:44100:s16:2 class=media secs=1 amp_db=-6", 0),
        guest(2, "play=sine:660:48000:s16:1 class=media secs=1 amp_db=-12", 0),
        guest(3, "play=sine:880:22050:s16:1 class=alert secs=1 amp_db=-6", 0),
    ];
    let policy = media_dd::Policy::from_cmdline("caps=1:-10 mute=3").unwrap();
    let (out, events) = run_with(&mut gs, 120, &policy);
    let ups: Vec<String> = events.iter().map(PortEvent::marker).collect();
    assert!(ups.iter().any(|l| l.starts_with("ICONNECT-PORT 1 up") && l.ends_with("cap_db=-10 muted=0")), "{ups:?}");
    assert!(ups.iter().any(|l| l.starts_with("ICONNECT-PORT 3 up") && l.ends_with("cap_db=none muted=1")), "{ups:?}");
    let mid = &out[48000 * 3 / 10..48000 * 8 / 10];
    // g1 capped by 10 dB; g3 muted (its alert still ducks g1 and g2: a muted alert is
    // still an alert, the platform only silenced it).
    let (a440, a660, a880) = (level(mid, 440.0), level(mid, 660.0), level(mid, 880.0));
    assert!(a880 < 0.001, "muted 880 Hz at {a880}");
    let ratio_db = 20.0 * (a440 / a660).log10();
    assert!((ratio_db - (6.0 - 10.0)).abs() < 0.5, "440/660 at {ratio_db:.2} dB");
}

#[test]
fn a_guest_breaking_its_ring_loses_only_its_own_port() {
    let mut gs = [guest(1, "play=sine:440:44100:s16:2 class=media secs=1 amp_db=-6", 0), guest(2, "hostile=ring", 0)];
    let mut hub = Hub::new(media_dd::DEVICE, media_dd::duck(), 16).unwrap();
    let mut events = Vec::new();
    let mut out = Vec::new();
    let mut block = vec![0u8; PERIOD * 4];
    let mut closed = false;
    for tick in 0..120 {
        step(&mut gs[0], &mut hub, &mut events, tick);
        let g = &mut gs[1];
        for _ in 0..2 {
            g.port.poll(&mut hub, &mut events, tick as u64 * 10_000_000);
            g.port.serve(&mut hub);
            while let Some(ev) = g.fe.poll() {
                match ev {
                    FrontendEvent::Ready => {
                        snd_guest::wild_producer(&g.fe).unwrap();
                    }
                    FrontendEvent::Disconnect | FrontendEvent::Closed | FrontendEvent::Failed(_) => closed = true,
                    FrontendEvent::SetUp => {}
                }
            }
        }
        hub.render(&mut block).unwrap();
        let mut f = vec![0f32; PERIOD * 2];
        decode_f32(SampleFormat::S16Le, &block, &mut f).unwrap();
        out.extend(channel(&f, 2, 0));
    }
    assert!(closed, "the hostile guest's channel stayed open");
    let downs: Vec<String> = events.iter().filter(|e| matches!(e, PortEvent::Down { .. })).map(PortEvent::marker).collect();
    assert_eq!(downs.len(), 1, "{downs:?}");
    assert!(downs[0].starts_with("ICONNECT-PORT 2 down reason=sndback:ring"), "{downs:?}");
    assert!(gs[0].report.is_some(), "the other guest did not finish");
    let mid = &out[48000 * 3 / 10..48000 * 8 / 10];
    assert!((level(mid, 440.0) - 0.501).abs() < 0.02);
}

#[test]
fn capture_is_refused_without_a_device_capture_path() {
    let m = HostMem::pages(64);
    let mut port = MediaPort::new(1, m.clone(), 1, false).unwrap();
    let mut keys = iconnect_channel::KeyMap::new();
    keys.insert(media_dd::channel::PEER_KEY, "7").unwrap();
    keys.insert(media_dd::channel::EVENT_PAGE_KEY, "0").unwrap();
    iconnect::media::MediaRequest {
        direction: iconnect::media::Direction::Capture,
        format: iconnect::media::Format(2),
        rate_hz: 16000,
        channels: 1,
        class: iconnect::Class::Interactive,
    }
    .write(&mut keys)
    .unwrap();
    let mut fe = Frontend::new(m, media_dd::channel::frontend_config(), keys).unwrap();
    let mut hub = Hub::new(media_dd::DEVICE, media_dd::duck(), 16).unwrap();
    let mut events = Vec::new();
    let mut failed = false;
    for _ in 0..8 {
        port.poll(&mut hub, &mut events, 0);
        while let Some(ev) = fe.poll() {
            failed |= matches!(ev, FrontendEvent::Closed | FrontendEvent::Failed(_) | FrontendEvent::Disconnect);
            assert_ne!(ev, FrontendEvent::Ready);
        }
    }
    let k = fe.read_backend_keys().unwrap();
    assert_eq!(k.get(media_dd::channel::ERROR_KEY), Some("refused:Unsupported"));
    assert_eq!(k.get("iconnect-media-status"), Some("refused"));
    assert!(failed);
    assert_eq!(events.iter().map(PortEvent::marker).collect::<Vec<_>>(), ["ICONNECT-PORT 1 down reason=refused:Unsupported"]);
}

#[test]
fn a_silent_guest_is_taken_down_by_its_heartbeat_promise() {
    let mut gs = [
        guest(1, "play=sine:440:44100:s16:2 secs=2 heartbeat_ms=50", 0),
        guest(2, "play=sine:660:48000:s16:2 secs=2 heartbeat_ms=50", 0),
    ];
    let mut hub = Hub::new(media_dd::DEVICE, media_dd::duck(), 16).unwrap();
    let mut events = Vec::new();
    let mut block = vec![0u8; PERIOD * 4];
    let mut down_at = None;
    for tick in 0..100 {
        let now_ns = tick as u64 * 10_000_000;
        // g1 beats every tick; g2 stops beating after 200 ms (its VM was killed).
        gs[0].fe.beat();
        if tick < 20 {
            gs[1].fe.beat();
        }
        for g in gs.iter_mut() {
            g.port.heartbeat(now_ns);
            step(g, &mut hub, &mut events, tick);
        }
        if down_at.is_none() && events.iter().any(|e| matches!(e, PortEvent::Down { port: 2, .. })) {
            down_at = Some(tick);
        }
        hub.render(&mut block).unwrap();
    }
    let downs: Vec<String> = events.iter().filter(|e| matches!(e, PortEvent::Down { .. })).map(PortEvent::marker).collect();
    assert_eq!(downs, ["ICONNECT-PORT 2 down reason=heartbeat-timeout"]);
    // Silent from tick 20: declared dead after 5 periods of 50 ms (+ a tick).
    let at = down_at.unwrap();
    assert!((45..=47).contains(&at), "down at tick {at}");
    assert!(gs[0].port.is_attached() && !gs[1].port.is_attached());
}

type Capturer = (Config, Frontend<HostMem>, MediaPort<HostMem>, Option<snd_guest::Recorder<HostMem>>);

/// Runs capture guests (`cmds`) on one device capturing 1 kHz at -6 dBFS (48 kHz stereo s16),
/// fed period by period only while a capture stream runs, as media-dd does; each guest looks
/// at its channel only every `guest_every` periods (a slow or descheduled VM). Returns the
/// events, each guest's report and measured seconds, and the device periods captured, the hub,
/// and each port's last capture counters (fan-out, read underrun frames) while open.
#[allow(clippy::type_complexity)]
fn capture_run(
    cmds: &[&str],
    guest_every: usize,
) -> (
    Vec<PortEvent>,
    Vec<Option<snd_guest::CaptureReport>>,
    Vec<Vec<snd_guest::Second>>,
    u64,
    Hub,
    Vec<Option<(media_dsp::ConsumerStats, u64)>>,
) {
    let mut gs: Vec<Capturer> = cmds
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let cfg = Config::from_cmdline(c).unwrap();
            let m = HostMem::pages(64);
            let port = MediaPort::new(i + 1, m.clone(), 1, true).unwrap();
            let fe = Frontend::new(m, media_dd::channel::frontend_config(), cfg.keys(10 + i as u16).unwrap()).unwrap();
            (cfg, fe, port, None)
        })
        .collect();
    let mut hub = Hub::new(media_dd::DEVICE, media_dd::duck(), 16).unwrap();
    let mut events = Vec::new();
    let mut reports = vec![None; cmds.len()];
    let mut seconds = vec![Vec::new(); cmds.len()];
    let mut counters = vec![None; cmds.len()];
    let mut x = vec![0f32; PERIOD * 2];
    let mut period = vec![0u8; PERIOD * 4];
    let (mut captured_periods, mut t) = (0u64, 0u64);
    for tick in 0..400 {
        if hub.fanout().running() > 0 {
            let mut mono = vec![0f32; PERIOD];
            media_dsp::measure::sine(48000, 1000.0, 0.5012, t, &mut mono);
            t += PERIOD as u64;
            for (f, v) in x.chunks_exact_mut(2).zip(&mono) {
                f.fill(*v);
            }
            media_dsp::format::encode_f32(SampleFormat::S16Le, &x, &mut period).unwrap();
            hub.capture(&period).unwrap();
            captured_periods += 1;
        }
        for (i, (cfg, fe, port, rec)) in gs.iter_mut().enumerate() {
            for _ in 0..3 {
                port.poll(&mut hub, &mut events, tick as u64 * 10_000_000);
                port.serve(&mut hub);
                if tick % guest_every != 0 {
                    continue;
                }
                while let Some(ev) = fe.poll() {
                    if ev == FrontendEvent::Ready {
                        let d = iconnect::media::read_decision(fe.backend_keys()).unwrap().unwrap();
                        let iconnect::Decision::Granted(grant) = d else { panic!("{d:?}") };
                        *rec = Some(snd_guest::Recorder::start(fe, cfg, &grant).unwrap());
                    }
                }
                if let Some(r) = rec.as_mut()
                    && reports[i].is_none()
                {
                    reports[i] = r.poll().unwrap();
                    seconds[i].extend(r.take_seconds());
                }
            }
            if let Some(c) = port.capture_stats(&hub) {
                counters[i] = Some(c);
            }
        }
    }
    (events, reports, seconds, captured_periods, hub, counters)
}

/// Two capture guests at 16 kHz mono s16 and 44.1 kHz stereo s32: each receives its `secs` of audio
/// in its own shape, measures 1 kHz at -9 dBFS RMS every second, and the device was captured
/// once per period whatever the number of guests.
#[test]
fn two_guests_capture_the_device_tone_at_their_rates() {
    let cmds = ["capture=16000:s16:1 class=voice secs=2 name=a", "capture=44100:s32:2 class=media secs=2 name=b"];
    let (events, reports, seconds, captured_periods, hub, counters) = capture_run(&cmds, 1);
    let ups: Vec<String> = events.iter().map(PortEvent::marker).collect();
    assert!(ups[0].starts_with("ICONNECT-PORT 1 up stream=capture format=s16_le rate=16000 channels=1"), "{ups:?}");
    assert!(ups[1].starts_with("ICONNECT-PORT 2 up stream=capture format=s32_le rate=44100 channels=2"), "{ups:?}");
    for (i, rate) in [(0, 16000u64), (1, 44100)] {
        let r = reports[i].as_ref().expect("capture finished");
        assert_eq!(r.stream.frames, 2 * rate, "{r:?}");
        assert_eq!(seconds[i].len(), 2, "{:?}", seconds[i]);
        // The first second starts with the resampler's delay line: judge the second one.
        let s = seconds[i][1];
        assert!((s.peak_hz - 1000.0).abs() < 5.0, "guest {i}: {s:?}");
        assert!((s.rms_dbfs + 9.0).abs() < 0.5, "guest {i}: {s:?}");
        // Nothing lost to a full queue, nothing read before it was captured.
        let (c, underrun) = counters[i].unwrap();
        assert_eq!((c.overrun, underrun), (0, 0), "guest {i}: {c:?}");
        assert!(c.produced >= c.read && c.read >= 2 * rate - rate / 50, "guest {i}: {c:?}");
    }
    // Both closed: nothing runs, the device is no longer fed; it was captured once per
    // period (about 2 s of periods plus the time to close), not once per guest.
    assert_eq!(hub.fanout().running(), 0);
    assert!((200..260).contains(&captured_periods), "{captured_periods} device periods captured");
}

/// A guest that looks at its channel only every 250 ms (more than its 160 ms buffer, less than
/// the two buffers the backend queues) still receives every frame, contiguous in time.
#[test]
fn a_slow_capture_guest_catches_up_from_the_backend_queue() {
    let (_, reports, seconds, _, _, counters) = capture_run(&["capture=16000:s16:1 secs=2"], 25);
    let r = reports[0].as_ref().expect("capture finished");
    assert_eq!(r.stream.frames, 32000, "{r:?}");
    let (c, underrun) = counters[0].unwrap();
    assert_eq!((c.overrun, underrun), (0, 0), "{c:?}");
    let s = seconds[0][1];
    assert!((s.peak_hz - 1000.0).abs() < 5.0 && (s.rms_dbfs + 9.0).abs() < 0.5, "{s:?}");
}
