//! Measurements on synthetic signals. Every threshold is a property a broken implementation
//! misses (sample dropping/repeating gives ~30-40 dB SNR, linear interpolation ~50 dB with
//! strong images, a missing anti-alias filter lets out-of-band tones through at full level).
//! Run with `--nocapture` to see the measured figures.

use media_dsp::channels::map_channels;
use media_dsp::format::{SampleFormat, decode_f32, encode_f32};
use media_dsp::measure::{channel, fit_sine, goertzel_amplitude, rms, sine};
use media_dsp::{
    DuckConfig, FanOut, Mixer, MixerConfig, Resampler, StreamParams, db_to_gain, gain_to_db,
};

/// Resamples `secs` of a sine `f` (amplitude `amp`) from `a` to `b` in blocks of `block`
/// frames; returns the output with the filter's warm-up cut off.
fn resample_sine(a: u32, b: u32, f: f64, amp: f64, secs: f64, block: usize) -> Vec<f32> {
    let mut r = Resampler::new(a, b, 1).unwrap();
    let n = (a as f64 * secs) as usize;
    let mut x = vec![0f32; n];
    sine(a, f, amp, 0, &mut x);
    let mut out = Vec::new();
    let mut buf = vec![0f32; block * 8 + 64];
    for chunk in x.chunks(block) {
        let mut off = 0;
        while off < chunk.len() {
            let (ci, co) = r.process_f32(&chunk[off..], &mut buf);
            out.extend_from_slice(&buf[..co]);
            off += ci;
        }
    }
    let skip = (r.delay() * b as f64 / a as f64) as usize + r.taps() * 2;
    out.split_off(skip.min(out.len()))
}

#[test]
fn resampled_sines_are_clean_and_on_frequency() {
    let cases = [
        (44100, 48000, 440.0),
        (44100, 48000, 1000.0),
        (44100, 48000, 15000.0),
        (48000, 44100, 997.0),
        (48000, 44100, 18000.0),
        (8000, 48000, 440.0),
        (8000, 48000, 3000.0),
        (16000, 48000, 660.0),
        (16000, 48000, 6000.0),
        (48000, 8000, 1000.0),
        (48000, 16000, 5000.0),
        (22050, 48000, 8000.0),
    ];
    for (a, b, f) in cases {
        let y = resample_sine(a, b, f, 0.5, 0.5, 480);
        let fit = fit_sine(&y, b, f, 2.0);
        println!(
            "{a} -> {b}: {f} Hz -> {:.4} Hz (err {:.2e} Hz), amplitude {:.5} ({:+.4} dB), SNR {:.1} dB",
            fit.freq,
            fit.freq - f,
            fit.amplitude,
            gain_to_db((fit.amplitude / 0.5) as f32),
            fit.snr_db
        );
        assert!(
            fit.snr_db >= 80.0,
            "{a}->{b} {f} Hz: SNR {:.1} dB",
            fit.snr_db
        );
        assert!(
            (fit.freq - f).abs() < 0.01,
            "{a}->{b} {f} Hz: got {}",
            fit.freq
        );
        assert!(
            (fit.amplitude / 0.5 - 1.0).abs() < 0.003,
            "{a}->{b} {f} Hz: pass-band gain {}",
            fit.amplitude / 0.5
        );
    }
}

#[test]
fn pass_band_is_flat() {
    // Up to 0.425 of the lower rate: within +-0.02 dB.
    for (a, b) in [
        (44100u32, 48000u32),
        (48000, 44100),
        (8000, 48000),
        (48000, 16000),
    ] {
        let lo = a.min(b) as f64;
        let mut worst: f64 = 0.0;
        for k in 1..=8 {
            let f = lo * 0.425 * k as f64 / 8.0;
            let y = resample_sine(a, b, f, 0.5, 0.25, 1000);
            let fit = fit_sine(&y, b, f, 1.0);
            worst = worst.max((20.0 * (fit.amplitude / 0.5).log10()).abs());
        }
        println!("{a} -> {b}: pass-band ripple {worst:.4} dB");
        assert!(worst < 0.02, "{a}->{b}: ripple {worst} dB");
    }
}

#[test]
fn aliases_and_images_are_rejected() {
    // Down-sampling: a tone above the output's Nyquist must not fold back.
    for (a, b, f, alias) in [
        (48000u32, 8000u32, 6000.0, 2000.0),
        (48000, 16000, 11000.0, 5000.0),
        // Above the stop-band edge (0.525 * 44.1 kHz = 23.15 kHz).
        (48000, 44100, 23500.0, 20600.0),
    ] {
        let y = resample_sine(a, b, f, 0.9, 0.5, 333);
        let lvl = goertzel_amplitude(&y, b, alias) / 0.9;
        let total = rms(&y) * 2f64.sqrt() / 0.9;
        println!(
            "{a} -> {b}: {f} Hz in, alias at {alias} Hz {:.1} dB, total {:.1} dB",
            20.0 * lvl.log10(),
            20.0 * total.log10()
        );
        assert!(
            20.0 * total.log10() < -75.0,
            "{a}->{b}: {f} Hz leaks {total}"
        );
    }
    // Up-sampling: the images of a tone (k * in_rate +- f) must be gone.
    for (a, b, f) in [
        (8000u32, 48000u32, 3000.0),
        (16000, 48000, 7000.0),
        (44100, 48000, 20000.0),
    ] {
        let y = resample_sine(a, b, f, 0.9, 0.5, 500);
        let image = a as f64 - f;
        let img = goertzel_amplitude(&y, b, image) / 0.9;
        let tone = goertzel_amplitude(&y, b, f) / 0.9;
        println!(
            "{a} -> {b}: tone {f} Hz {:.2} dB, image {image} Hz {:.1} dB",
            20.0 * tone.log10(),
            20.0 * img.log10()
        );
        assert!(20.0 * img.log10() < -75.0, "{a}->{b}: image {img}");
    }
}

#[test]
fn output_is_independent_of_block_sizes() {
    let mut x = vec![0f32; 2 * 20000];
    for (i, v) in x.iter_mut().enumerate() {
        // Stereo noise-like content.
        *v = (((i as u64).wrapping_mul(2654435761) % 2001) as f32 / 1000.0 - 1.0) * 0.7;
    }
    for (a, b) in [
        (44100, 48000),
        (48000, 8000),
        (16000, 48000),
        (48000, 48000),
    ] {
        let run = |blocks: &[usize], outs: &[usize]| {
            let mut r = Resampler::new(a, b, 2).unwrap();
            let mut out = Vec::new();
            let (mut i, mut k) = (0, 0);
            while i < x.len() / 2 {
                let n = blocks[k % blocks.len()].min(x.len() / 2 - i);
                let mut off = 0;
                loop {
                    // Until this block is consumed and no output is pending.
                    let mut buf = vec![0f32; 2 * outs[k % outs.len()]];
                    let (ci, co) = r.process_f32(&x[2 * (i + off)..2 * (i + n)], &mut buf);
                    out.extend_from_slice(&buf[..2 * co]);
                    off += ci;
                    k += 1;
                    if ci == 0 && co == 0 {
                        break;
                    }
                }
                i += n;
            }
            out
        };
        let whole = run(&[20000], &[1 << 16]);
        for (blocks, outs) in [
            (&[1usize][..], &[1usize][..]),
            (&[7, 480, 3], &[5, 1000]),
            (&[4096], &[13]),
        ] {
            let other = run(blocks, outs);
            assert_eq!(other.len(), whole.len(), "{a}->{b} {blocks:?}/{outs:?}");
            assert!(
                other == whole,
                "{a}->{b}: chunking {blocks:?}/{outs:?} changed the output"
            );
        }
    }
}

fn mixer() -> Mixer {
    Mixer::new(MixerConfig::new(48000, 2)).unwrap()
}

fn params(rate: u32, channels: usize, priority: u8) -> StreamParams {
    StreamParams {
        rate,
        channels,
        priority,
        capacity_frames: rate as usize * 4,
    }
}

#[test]
fn two_streams_mix_at_their_levels_and_frequencies() {
    let mut m = mixer();
    let a = m.add_stream(params(44100, 2, 1)).unwrap();
    let b = m.add_stream(params(48000, 1, 1)).unwrap();
    let mut x = vec![0f32; 44100];
    sine(44100, 440.0, 0.4, 0, &mut x);
    let stereo: Vec<f32> = x.iter().flat_map(|&v| [v, v]).collect();
    // Through the wire format, as a guest sends it.
    let mut bytes = vec![0u8; stereo.len() * 2];
    encode_f32(SampleFormat::S16Le, &stereo, &mut bytes).unwrap();
    assert_eq!(m.push_bytes(a, SampleFormat::S16Le, &bytes).unwrap(), 44100);
    let mut y = vec![0f32; 48000];
    sine(48000, 660.0, 0.3, 0, &mut y);
    assert_eq!(m.push(b, &y).unwrap(), 48000);
    m.set_volume_db(b, 0, -6.0).unwrap();
    for id in [a, b] {
        m.set_running(id, true).unwrap();
    }
    let mut out = vec![0f32; 2 * 48000];
    for blk in out.chunks_mut(2 * 480) {
        m.mix(blk).unwrap();
    }
    let left = channel(&out[2 * 4800..2 * 43200], 2, 0);
    let right = channel(&out[2 * 4800..2 * 43200], 2, 1);
    let a440 = goertzel_amplitude(&left, 48000, 440.0);
    let a660 = goertzel_amplitude(&right, 48000, 660.0);
    println!(
        "mix: 440 Hz {:.3} dBFS (want {:.3}), 660 Hz {:.3} dBFS (want {:.3})",
        20.0 * a440.log10(),
        20.0 * 0.4f64.log10(),
        20.0 * a660.log10(),
        20.0 * (0.3 * db_to_gain(-6.0) as f64).log10()
    );
    assert!((a440 / 0.4 - 1.0).abs() < 0.01, "{a440}");
    assert!(
        (a660 / (0.3 * db_to_gain(-6.0) as f64) - 1.0).abs() < 0.01,
        "{a660}"
    );
    assert!(
        goertzel_amplitude(&left, 48000, 550.0) < 1e-3,
        "nothing in between"
    );
    let st = m.stream_stats(a).unwrap();
    assert!(
        st.consumed > 44000 && st.consumed <= 44100,
        "{}",
        st.consumed
    );
    assert_eq!(m.stats().clipped, 0);
}

/// Mixes `n` frames one block at a time, returns the left channel.
fn run(m: &mut Mixer, frames: usize, block: usize) -> Vec<f32> {
    let mut out = Vec::new();
    let mut buf = vec![0f32; 2 * block];
    let mut done = 0;
    while done < frames {
        m.mix(&mut buf).unwrap();
        out.extend(channel(&buf, 2, 0));
        done += block;
    }
    out
}

#[test]
fn ducking_lowers_by_the_configured_depth_without_clicks() {
    let cfg = MixerConfig {
        duck: DuckConfig {
            depth_db: 12.0,
            attack_ms: 20.0,
            release_ms: 200.0,
            hold_ms: 50.0,
        },
        ..MixerConfig::new(48000, 2)
    };
    let mut m = Mixer::new(cfg).unwrap();
    let media = m.add_stream(params(48000, 1, 1)).unwrap();
    let alert = m.add_stream(params(48000, 1, 3)).unwrap();
    // Media: DC 0.5 (its gain is visible sample by sample); alert: silence that is "playing".
    m.push(media, &vec![0.5; 48000 * 3]).unwrap();
    m.set_running(media, true).unwrap();
    m.set_running(alert, true).unwrap();
    let before = run(&mut m, 4800, 48);
    // The start fades in over 5 ms (240 samples), then the level holds.
    assert!(before[..240].windows(2).all(|w| w[1] >= w[0]));
    assert!(before[240..].iter().all(|&v| (v - 0.5).abs() < 1e-6));
    m.push(alert, &vec![0.0; 48000 / 2]).unwrap();
    let during = run(&mut m, 24000, 48);
    let floor = 0.5 * db_to_gain(-12.0);
    let settled = &during[2400..24000];
    assert!(
        settled.iter().all(|&v| (v - floor).abs() < 1e-5),
        "ducked to -12 dB"
    );
    // Attack: monotonic, bounded steps, takes ~20 ms.
    let max_step = (0.5 - floor) / 960.0 * 1.001;
    let mut prev = 0.5f32;
    let mut reached = None;
    for (i, &v) in during.iter().enumerate() {
        assert!(
            v <= prev + 1e-7 && prev - v <= max_step,
            "click at {i}: {prev} -> {v}"
        );
        if reached.is_none() && (v - floor).abs() < 1e-6 {
            reached = Some(i);
        }
        prev = v;
    }
    let reached = reached.unwrap();
    assert!(
        (950..=1010).contains(&reached),
        "attack took {reached} samples"
    );
    // The alert ends: after the hold, release over ~200 ms back to 0 dB, smoothly.
    let after = run(&mut m, 24000, 48);
    let hold_end = after.iter().position(|&v| v > floor + 1e-6).unwrap();
    assert!((2400..=2400 + 96).contains(&hold_end), "hold {hold_end}");
    let max_up = (0.5 - floor) / 9600.0 * 1.001;
    for w in after.windows(2) {
        assert!(
            w[1] >= w[0] - 1e-7 && w[1] - w[0] <= max_up,
            "release step {w:?}"
        );
    }
    let back = after.iter().position(|&v| (v - 0.5).abs() < 1e-6).unwrap();
    assert!(
        (hold_end + 9500..=hold_end + 9700).contains(&back),
        "release took {}",
        back - hold_end
    );
    // Equal or lower priority never ducks.
    assert_eq!(m.stream_stats(alert).unwrap().duck_gain, 1.0);
}

#[test]
fn volume_mute_and_cap_ramp_and_apply() {
    let mut m = mixer();
    let s = m.add_stream(params(48000, 2, 0)).unwrap();
    m.push(s, &vec![0.8; 2 * 48000]).unwrap();
    m.set_running(s, true).unwrap();
    run(&mut m, 480, 480);
    m.set_volume_db(s, 0, -20.0).unwrap();
    let l = run(&mut m, 4800, 480);
    assert!((l[4799] - 0.08).abs() < 1e-5, "{}", l[4799]);
    for w in l.windows(2) {
        assert!(
            (w[0] - w[1]).abs() <= 0.8 / 240.0 + 1e-6,
            "volume step {w:?}"
        );
    }
    // The platform caps the guest at -30 dB whatever it asks.
    m.set_volume_db(s, 0, 6.0).unwrap();
    m.set_cap_db(s, Some(-30.0)).unwrap();
    let l = run(&mut m, 4800, 480);
    assert!((l[4799] - 0.8 * db_to_gain(-30.0)).abs() < 1e-5);
    m.set_mute(s, 0, true).unwrap();
    let l = run(&mut m, 4800, 480);
    assert_eq!(l[4799], 0.0);
    m.set_cap_db(s, None).unwrap();
    m.set_mute(s, 0, false).unwrap();
    m.set_platform_mute(s, true).unwrap();
    assert_eq!(run(&mut m, 4800, 480)[4799], 0.0);
    assert!(m.set_volume_db(s, 2, 0.0).is_err());
    assert!(m.set_cap_db(s, Some(f32::NAN)).is_err());
}

#[test]
fn summing_saturates_instead_of_wrapping() {
    let mut m = mixer();
    let ids: Vec<_> = (0..4)
        .map(|_| m.add_stream(params(48000, 2, 0)).unwrap())
        .collect();
    let mut x = vec![0f32; 2 * 4800];
    sine(48000, 100.0, 0.9, 0, &mut x);
    for &id in &ids {
        m.push(id, &x).unwrap();
        m.set_running(id, true).unwrap();
    }
    let mut out = vec![0u8; 2 * 4800 * 2];
    m.mix_bytes(SampleFormat::S16Le, &mut out).unwrap();
    let s: Vec<i16> = out
        .chunks(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    let mut ref_f = vec![0f32; s.len()];
    for (r, v) in ref_f.iter_mut().zip(&x) {
        *r = (v * 4.0).clamp(-1.0, 1.0);
    }
    // After the 5 ms fade-in (240 frames).
    for (i, (&got, want)) in s.iter().zip(&ref_f).enumerate().skip(2 * 240) {
        assert!(
            (got as f32 / 32768.0 - want).abs() < 2.0 / 32768.0,
            "sample {i}: {got} vs {want}"
        );
    }
    assert!(m.stats().clipped > 1000);
}

#[test]
fn capture_fans_out_to_each_consumer_rate() {
    let mut f = FanOut::new(48000, 2, 8).unwrap();
    let c16 = f.add_consumer(16000, 1, 16000).unwrap();
    let c44 = f.add_consumer(44100, 2, 44100).unwrap();
    let c48 = f.add_consumer(48000, 2, 48000).unwrap();
    for c in [c16, c44, c48] {
        f.set_running(c, true).unwrap();
    }
    let mut dev = vec![0f32; 2 * 48000];
    let mut mono = vec![0f32; 48000];
    sine(48000, 1000.0, 0.5, 0, &mut mono);
    for (i, v) in mono.iter().enumerate() {
        dev[2 * i] = *v;
        dev[2 * i + 1] = *v;
    }
    let mut bytes = vec![0u8; dev.len() * 4];
    encode_f32(SampleFormat::S32Le, &dev, &mut bytes).unwrap();
    for blk in bytes.chunks(2 * 4 * 441) {
        f.push_bytes(SampleFormat::S32Le, blk).unwrap();
    }
    assert_eq!(f.device_frames(), 48000);
    for (c, rate, ch) in [(c16, 16000u32, 1usize), (c44, 44100, 2), (c48, 48000, 2)] {
        let n = f.available(c).unwrap();
        assert!(n as f64 > rate as f64 * 0.99, "{rate}: {n}");
        let mut raw = vec![0u8; n * ch * 2];
        assert_eq!(f.read_bytes(c, SampleFormat::S16Le, &mut raw).unwrap(), n);
        let mut x = vec![0f32; n * ch];
        decode_f32(SampleFormat::S16Le, &raw, &mut x).unwrap();
        let left = channel(&x, ch, 0);
        let fit = fit_sine(&left[rate as usize / 10..], rate, 1000.0, 2.0);
        println!(
            "capture -> {rate} Hz x{ch}: {:.4} Hz, amplitude {:.4}, SNR {:.1} dB (s16)",
            fit.freq, fit.amplitude, fit.snr_db
        );
        assert!((fit.freq - 1000.0).abs() < 0.01);
        assert!((fit.amplitude - 0.5).abs() < 0.002);
        assert!(fit.snr_db > 80.0, "{}", fit.snr_db);
    }
    // A stopped consumer receives nothing; a full one counts overruns.
    f.set_running(c16, false).unwrap();
    f.push(&dev[..2 * 4800]).unwrap();
    assert_eq!(f.available(c16).unwrap(), 0);
    f.push(&dev).unwrap();
    assert!(f.stats(c48).unwrap().overrun > 0);
}

#[test]
fn downmix_keeps_levels() {
    // Stereo (0.6, -0.2) to mono: the mean, through the mixer's integer path.
    let mut m = Mixer::new(MixerConfig::new(48000, 1)).unwrap();
    let s = m.add_stream(params(48000, 2, 0)).unwrap();
    m.push(s, &[0.6, -0.2].repeat(1000)).unwrap();
    m.set_running(s, true).unwrap();
    let mut out = vec![0f32; 1000];
    m.mix(&mut out).unwrap();
    assert!(
        out[240..].iter().all(|&v| (v - 0.2).abs() < 1e-6),
        "{:?}",
        &out[240..244]
    );
    // Full scale stays full scale (64-bit sums, no wrap).
    let mut q = [0i32; 2];
    map_channels(&[i32::MAX, i32::MAX, i32::MIN, i32::MIN], 2, &mut q, 1).unwrap();
    assert_eq!(q, [i32::MAX, i32::MIN]);
}

#[test]
fn mixing_is_independent_of_device_block_sizes() {
    // Equal priorities (no ducking decisions) and ramped volume changes at the same frames:
    // the mix must not depend on how the device cuts its periods.
    let render = |blocks: &[usize]| {
        let mut m = mixer();
        let a = m.add_stream(params(44100, 2, 1)).unwrap();
        let b = m.add_stream(params(16000, 1, 1)).unwrap();
        let mut x = vec![0f32; 2 * 44100];
        sine(44100, 440.0, 0.4, 0, &mut x);
        m.push(a, &x).unwrap();
        let mut y = vec![0f32; 16000];
        sine(16000, 1234.0, 0.3, 0, &mut y);
        m.push(b, &y).unwrap();
        m.set_running(a, true).unwrap();
        m.set_running(b, true).unwrap();
        let mut out = Vec::new();
        let (mut done, mut k) = (0, 0);
        while done < 24000 {
            let n = blocks[k % blocks.len()].min(24000 - done);
            if done == 12000 {
                m.set_volume_db(a, 1, -10.0).unwrap();
            }
            let mut buf = vec![0f32; 2 * n];
            m.mix(&mut buf).unwrap();
            out.extend(buf);
            done += n;
            k += 1;
        }
        out
    };
    let whole = render(&[12000]);
    for blocks in [&[1usize][..], &[480], &[7, 333, 1000, 4660]] {
        assert!(render(blocks) == whole, "blocks {blocks:?} changed the mix");
    }
}

#[test]
fn pause_and_stop_fade_out_and_stop_drops_what_was_queued() {
    let mut m = mixer();
    let s = m.add_stream(params(48000, 1, 0)).unwrap();
    m.push(s, &vec![0.5; 4800]).unwrap();
    m.set_running(s, true).unwrap();
    let start = run(&mut m, 480, 480);
    let step = 0.5 / 240.0 * 1.01;
    assert!(
        start[0] > 0.0 && start[0] < 0.003,
        "fade-in starts near 0: {}",
        start[0]
    );
    assert!(
        start
            .windows(2)
            .all(|w| w[1] >= w[0] && w[1] - w[0] <= step)
    );
    // Pause: the output ramps down (no cut), then silence; the data is kept.
    m.set_running(s, false).unwrap();
    let paused = run(&mut m, 480, 480);
    assert!(
        paused
            .windows(2)
            .all(|w| w[1] <= w[0] && w[0] - w[1] <= step),
        "fade-out"
    );
    assert!(paused[240..].iter().all(|&v| v == 0.0));
    let consumed = m.stream_stats(s).unwrap().consumed;
    assert_eq!(consumed, 480 + 240, "consumed while fading");
    // Resume fades in again from the data that was left.
    m.set_running(s, true).unwrap();
    let resumed = run(&mut m, 480, 480);
    assert!((resumed[479] - 0.5).abs() < 1e-6 && resumed[0] < 0.01);
    // Stop = pause + flush: fades out, then what was queued is gone.
    m.set_running(s, false).unwrap();
    m.flush(s).unwrap();
    m.push(s, &vec![0.25; 480]).unwrap(); // written after the stop: kept
    let stopped = run(&mut m, 480, 480);
    assert!(stopped.windows(2).all(|w| w[0] - w[1] <= step));
    assert_eq!(m.queued_frames(s).unwrap(), 480);
    m.set_running(s, true).unwrap();
    let again = run(&mut m, 480, 480);
    assert!((again[479] - 0.25).abs() < 1e-6, "{}", again[479]);
}
