//! Throughput on one core: resampler (frames of output per second), mixer (device frames
//! per second, with every stream converted from its own rate) and capture fan-out (device
//! frames per second delivered to every consumer in its own rate and channels, read out as
//! s16 like a READ would). Criterion prints
//! "thrpt: ... elem/s" = frames/s; divide by 48000 for "times real time" at 48 kHz.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use media_dsp::format::f32_to_q31;
use media_dsp::measure::sine;
use media_dsp::{FanOut, Mixer, MixerConfig, Resampler, SampleFormat, StreamParams};
use std::hint::black_box;

const BLOCK: usize = 480; // 10 ms at 48 kHz

fn resampler(c: &mut Criterion) {
    let mut g = c.benchmark_group("resample");
    for (a, b, ch) in [
        (44100u32, 48000u32, 2usize),
        (8000, 48000, 1),
        (16000, 48000, 1),
        (48000, 16000, 1),
        (48000, 44100, 2),
    ] {
        let mut r = Resampler::new(a, b, ch).unwrap();
        let in_frames = 4800usize;
        let mut xf = vec![0f32; in_frames * ch];
        sine(a, 440.0, 0.5, 0, &mut xf);
        let x: Vec<i32> = xf.iter().map(|&v| f32_to_q31(v)).collect();
        let out_frames = r.output_for(in_frames) + 2;
        let mut out = vec![0i32; out_frames * ch];
        let produced = (in_frames as u64 * b as u64 / a as u64).max(1);
        g.throughput(Throughput::Elements(produced));
        g.bench_function(format!("{a}->{b} x{ch} (output frames)"), |bn| {
            bn.iter(|| {
                let (_, co) = r.process(black_box(&x), &mut out);
                black_box(co)
            })
        });
    }
    g.finish();
}

fn mixer(c: &mut Criterion) {
    let mut g = c.benchmark_group("mixer");
    let shapes: [(&str, &[(u32, usize)]); 2] = [
        (
            "4 guests 44.1k/2 48k/2 16k/1 8k/1",
            &[(44100, 2), (48000, 2), (16000, 1), (8000, 1)],
        ),
        ("4 guests 48k/2", &[(48000, 2); 4]),
    ];
    for (name, streams) in shapes {
        let mut m = Mixer::new(MixerConfig::new(48000, 2)).unwrap();
        let ids: Vec<_> = streams
            .iter()
            .enumerate()
            .map(|(i, &(rate, channels))| {
                let id = m
                    .add_stream(StreamParams {
                        rate,
                        channels,
                        priority: i as u8 % 2,
                        capacity_frames: rate as usize,
                    })
                    .unwrap();
                m.set_running(id, true).unwrap();
                (id, rate, channels)
            })
            .collect();
        let mut out = vec![0u8; BLOCK * 2 * 2];
        g.throughput(Throughput::Elements(BLOCK as u64));
        g.bench_function(
            format!("{name} -> 48k/2 s16 (device frames, incl. s16 decode)"),
            |bn| {
                bn.iter(|| {
                    // Refill each guest with one block of s16 (as a WRITE would), then mix.
                    for &(id, rate, ch) in &ids {
                        let frames = BLOCK * rate as usize / 48000 + 1;
                        if m.queued_frames(id).unwrap() < frames * 2 {
                            let bytes = vec![0x11u8; frames * ch * 2];
                            m.push_bytes(id, SampleFormat::S16Le, &bytes).unwrap();
                        }
                    }
                    m.mix_bytes(SampleFormat::S16Le, black_box(&mut out))
                        .unwrap();
                })
            },
        );
    }
    g.finish();
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    let shapes: [(&str, &[(u32, usize)]); 2] = [
        ("2 guests 16k/1 44.1k/2", &[(16000, 1), (44100, 2)]),
        ("4 guests 16k/1 44.1k/2 48k/2 8k/1", &[(16000, 1), (44100, 2), (48000, 2), (8000, 1)]),
    ];
    for (name, consumers) in shapes {
        let mut f = FanOut::new(48000, 2, 16).unwrap();
        let ids: Vec<_> = consumers
            .iter()
            .map(|&(rate, ch)| {
                let id = f.add_consumer(rate, ch, rate as usize).unwrap();
                f.set_running(id, true).unwrap();
                (id, rate as usize * ch * 2 / 100 + 64)
            })
            .collect();
        let mut xf = vec![0f32; BLOCK * 2];
        sine(48000, 1000.0, 0.5, 0, &mut xf);
        let mut period = vec![0u8; BLOCK * 4];
        media_dsp::format::encode_f32(SampleFormat::S16Le, &xf, &mut period).unwrap();
        let mut out = vec![0u8; 48000 * 4 / 100 + 64];
        g.throughput(Throughput::Elements(BLOCK as u64));
        g.bench_function(format!("48k/2 s16 -> {name} (device frames, incl. s16 decode and encode)"), |bn| {
            bn.iter(|| {
                f.push_bytes(SampleFormat::S16Le, black_box(&period)).unwrap();
                for &(id, bytes) in &ids {
                    black_box(f.read_bytes(id, SampleFormat::S16Le, &mut out[..bytes]).unwrap());
                }
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = resampler, mixer, fanout
}
criterion_main!(benches);
