//! Simulated guests against one simulated device: the device clock is the number of frames the
//! test renders/captures (10 ms per tick), the guests are `common::Guest`s (sndif frontends
//! from `sndif.h`, refilling their buffers on `CUR_POS` events like ALSA). The "device output"
//! is checked like the WAV file of the QEMU test will be: tones at their frequencies and levels.

mod common;

use common::{Guest, Sine};
use iconnect::Class;
use iconnect::media::Role;
use media_dsp::format::{decode_f32, encode_f32};
use media_dsp::measure::{channel, fit_sine, goertzel_amplitude};
use media_dsp::{DuckConfig, SampleFormat, db_to_gain};
use sndback::{DeviceConfig, Hub, RunState};

const TICK: usize = 480; // 10 ms at 48 kHz

fn hub() -> Hub {
    Hub::new(
        DeviceConfig {
            format: SampleFormat::S16Le,
            rate: 48000,
            channels: 2,
        },
        DuckConfig {
            depth_db: 12.0,
            attack_ms: 20.0,
            release_ms: 200.0,
            hold_ms: 50.0,
        },
        16,
    )
    .unwrap()
}

/// Renders `ticks` device periods, servicing every guest after each; returns the device output
/// (interleaved stereo f32 decoded from the s16 the device got).
fn run(hub: &mut Hub, guests: &mut [&mut Guest], ticks: usize) -> Vec<f32> {
    let mut out = Vec::new();
    let mut block = vec![0u8; TICK * hub.device().frame_bytes()];
    for _ in 0..ticks {
        hub.render(&mut block).unwrap();
        let mut f = vec![0f32; TICK * 2];
        decode_f32(SampleFormat::S16Le, &block, &mut f).unwrap();
        out.extend(f);
        for g in guests.iter_mut() {
            g.service(hub);
        }
    }
    out
}

fn level(x: &[f32], f: f64) -> f64 {
    goertzel_amplitude(x, 48000, f)
}

#[test]
fn two_guests_play_into_one_device() {
    let mut hub = hub();
    let media = Role::from_class(Class::Bulk).priority();
    // Guest 1: 440 Hz, 44.1 kHz s16 stereo, amplitude 0.4. Guest 2: 660 Hz, 48 kHz f32 mono, 0.3.
    let mut g1 = Guest::player(&mut hub, media, 44100, SampleFormat::S16Le, 2, 440.0, 0.4);
    let mut g2 = Guest::player(&mut hub, media, 48000, SampleFormat::F32Le, 1, 660.0, 0.3);
    assert!(
        g1.errors.is_empty() && g2.errors.is_empty(),
        "{:?} {:?}",
        g1.errors,
        g2.errors
    );
    let out = run(&mut hub, &mut [&mut g1, &mut g2], 200);
    let steady = &out[2 * 4800..];
    for c in 0..2 {
        let ch = channel(steady, 2, c);
        let (a440, a660) = (level(&ch, 440.0), level(&ch, 660.0));
        println!("device channel {c}: 440 Hz {a440:.4}, 660 Hz {a660:.4}");
        assert!((a440 - 0.4).abs() < 0.004, "440 Hz level {a440}");
        assert!((a660 - 0.3).abs() < 0.003, "660 Hz level {a660}");
        assert!(level(&ch, 550.0) < 0.002, "nothing between the tones");
    }
    // Each tone alone: subtract the other's fit and measure frequency and cleanliness.
    let left = channel(steady, 2, 0);
    let f440 = fit_sine(&left, 48000, 440.0, 1.0);
    assert!((f440.freq - 440.0).abs() < 0.01, "{}", f440.freq);
    // No underruns after the start, errors none, positions advanced by the data played.
    assert!(
        g1.errors.is_empty() && g2.errors.is_empty(),
        "{:?} {:?}",
        g1.errors,
        g2.errors
    );
    for g in [&g1, &g2] {
        let id = g.be.mixer_stream(0).unwrap();
        let st = hub.mixer().stream_stats(id).unwrap();
        assert!(st.underrun < 480, "underrun {} frames", st.underrun);
        let info = g.be.stream_info(0, &hub).unwrap();
        assert_eq!(info.state, RunState::Running);
        assert!(g.hw > 0 && g.hw <= info.position && info.position <= g.appl);
    }
    let p1 = g1.be.stream_info(0, &hub).unwrap().position;
    // 2 s at 44.1 kHz s16 stereo = 352800 octets (minus the resampler's look-ahead).
    assert!((352_000..=353_200).contains(&p1), "g1 position {p1}");
    assert!(g1.be.stats().events > 150, "{:?}", g1.be.stats());
    assert_eq!(g1.grants.range_violations(), 0);
}

#[test]
fn an_alert_ducks_media_and_platform_controls_apply() {
    let mut hub = hub();
    let media = Role::Media.priority();
    let alert = Role::from_class(Class::Realtime).priority();
    let mut g1 = Guest::player(&mut hub, media, 44100, SampleFormat::S16Le, 2, 440.0, 0.4);
    let before = run(&mut hub, &mut [&mut g1], 50);
    let mut g3 = Guest::player(&mut hub, alert, 16000, SampleFormat::S16Le, 1, 1000.0, 0.25);
    let during = run(&mut hub, &mut [&mut g1, &mut g3], 60);
    // The alert stops (STOP, then CLOSE).
    g3.front.trigger(xen_abi::sndif::Trigger::Stop);
    g3.front.send(xen_abi::sndif::Request::Close { id: 0 });
    g3.source = None;
    g3.service(&mut hub);
    assert!(g3.errors.is_empty(), "{:?}", g3.errors);
    let after = run(&mut hub, &mut [&mut g1], 60);
    let l = |x: &[f32], f| level(&channel(x, 2, 0), f);
    let (b, d, a) = (
        l(&before[2 * 2400..], 440.0),
        l(&during[2 * 9600..], 440.0),
        l(&after[2 * 19200..], 440.0),
    );
    let duck_db = 20.0 * (d / b).log10();
    println!(
        "440 Hz: before {b:.4}, during alert {d:.4} ({duck_db:.2} dB), after {a:.4}; alert 1 kHz {:.4}",
        l(&during[2 * 9600..], 1000.0)
    );
    assert!((duck_db + 12.0).abs() < 0.2, "ducked by {duck_db} dB");
    assert!((a / b - 1.0).abs() < 0.01, "released");
    assert!(
        (l(&during[2 * 9600..], 1000.0) - 0.25).abs() < 0.003,
        "the alert itself is not ducked"
    );
    // Platform: cap guest 1 at -20 dB, then mute it.
    g1.be.set_cap_db(&mut hub, Some(-20.0)).unwrap();
    let capped = run(&mut hub, &mut [&mut g1], 30);
    let c = l(&capped[2 * 4800..], 440.0);
    assert!(
        (c / b - db_to_gain(-20.0) as f64).abs() < 0.002,
        "capped {c}"
    );
    g1.be.set_platform_mute(&mut hub, true);
    let muted = run(&mut hub, &mut [&mut g1], 10);
    assert!(l(&muted[2 * 2400..], 440.0) < 1e-4);
    // The guest keeps playing (positions advance) while muted.
    let p = g1.be.stream_info(0, &hub).unwrap().position;
    run(&mut hub, &mut [&mut g1], 10);
    assert!(g1.be.stream_info(0, &hub).unwrap().position > p);
}

#[test]
fn guest_volume_and_mute_requests() {
    use xen_abi::sndif::BufferOp;
    let mut hub = hub();
    let mut g1 = Guest::player(&mut hub, 1, 48000, SampleFormat::S16Le, 2, 1000.0, 0.5);
    run(&mut hub, &mut [&mut g1], 20);
    // SET_VOLUME through the last 8 bytes of the buffer: left -6 dB, right -12 dB. (A real
    // frontend reserves part of its buffer for this; here the playback data overwrites it
    // later, which the backend does not care about.)
    let off = g1.front.buffer_sz - 8;
    let mut v = Vec::new();
    v.extend_from_slice(&(-6000i32).to_le_bytes());
    v.extend_from_slice(&(-12000i32).to_le_bytes());
    g1.front.write_buf(&mut g1.grants, off, &v);
    g1.front.buffer_op(BufferOp::SetVolume, off, 8);
    g1.poll(&mut hub);
    g1.front.buffer_op(BufferOp::GetVolume, off - 8, 8);
    g1.poll(&mut hub);
    let got = g1.front.read_buf(&g1.grants, off - 8, 8);
    assert_eq!(got, v, "GET_VOLUME reports what was set");
    let out = run(&mut hub, &mut [&mut g1], 30);
    let s = &out[2 * 4800..];
    let (l, r) = (
        level(&channel(s, 2, 0), 1000.0),
        level(&channel(s, 2, 1), 1000.0),
    );
    println!("volume: left {l:.4} right {r:.4}");
    assert!((l / 0.5 - db_to_gain(-6.0) as f64).abs() < 0.003);
    assert!((r / 0.5 - db_to_gain(-12.0) as f64).abs() < 0.003);
    // MUTE the right channel only.
    g1.front.write_buf(&mut g1.grants, off, &[0, 1]);
    g1.front.buffer_op(BufferOp::Mute, off, 2);
    g1.poll(&mut hub);
    let out = run(&mut hub, &mut [&mut g1], 20);
    let s = &out[2 * 2400..];
    assert!(level(&channel(s, 2, 1), 1000.0) < 1e-4);
    assert!(level(&channel(s, 2, 0), 1000.0) > 0.2);
    assert_eq!(g1.be.stream_info(0, &hub).unwrap().muted, 0b10);
    for r in &g1.front.log {
        assert_eq!(r.status, 0, "{r:?}");
    }
}

#[test]
fn two_guests_capture_one_device_at_their_rates() {
    let mut hub = hub();
    let mut c1 = Guest::recorder(&mut hub, 16000, SampleFormat::S16Le, 1);
    let mut c2 = Guest::recorder(&mut hub, 44100, SampleFormat::S32Le, 2);
    // The device records a 1 kHz tone (the QEMU test will feed it from a pipe source).
    let mut src = Sine {
        rate: 48000,
        freq: 1000.0,
        amp: 0.5,
        channels: 2,
        n: 0,
    };
    for _ in 0..150 {
        let x = src.next(TICK);
        let mut b = vec![0u8; x.len() * 2];
        encode_f32(SampleFormat::S16Le, &x, &mut b).unwrap();
        hub.capture(&b).unwrap();
        c1.service(&mut hub);
        c2.service(&mut hub);
    }
    assert_eq!(
        hub.fanout().device_frames(),
        150 * 480,
        "the device was captured once"
    );
    for (g, rate, ch) in [(&c1, 16000u32, 1usize), (&c2, 44100, 2)] {
        assert!(g.errors.is_empty(), "{:?}", g.errors);
        let x = g.captured_f32();
        let frames = x.len() / ch;
        assert!(
            frames as f64 > rate as f64 * 1.45,
            "{rate}: got {frames} frames"
        );
        let left = channel(&x, ch, 0);
        let fit = fit_sine(&left[rate as usize / 10..], rate, 1000.0, 3.0);
        println!(
            "capture at {rate} Hz: {:.4} Hz, amplitude {:.4}, SNR {:.1} dB",
            fit.freq, fit.amplitude, fit.snr_db
        );
        assert!((fit.freq - 1000.0).abs() < 0.01);
        assert!((fit.amplitude - 0.5).abs() < 0.003);
        assert!(fit.snr_db > 70.0);
        assert_eq!(g.be.stats().read_underrun_frames, 0);
    }
}
