//! The whole backend path on one core: 4 guests each WRITE one 10 ms period per device period
//! (ring request, grant copies out of their pages, decode, queue), the hub mixes them into a
//! 48 kHz s16 stereo device period (resampling where needed), each engine answers and sends
//! its position event. Criterion's "elem/s" = device frames per second; 48000 elem/s is one
//! device in real time, so `48000 / thrpt` is the CPU share of media-dd's backend work for
//! these 4 guests (the frontends' own work is in the measurement too, but small: requests and
//! responses only, the sample pages are written once).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iconnect::media::Direction;
use media_dsp::{DuckConfig, SampleFormat};
use netback::grant::FakeGrants;
use sndback::sim::SimFront;
use sndback::{Caps, DeviceConfig, Hub, Sndback};
use std::hint::black_box;
use xen_abi::shmem::HostMem;
use xen_abi::sndif::{BufferOp, Trigger};

const TICK: usize = 480;

/// Rate, format, channels of a guest.
type Shape = (u32, SampleFormat, u8);

struct Guest {
    g: FakeGrants,
    f: SimFront,
    be: Sndback<HostMem>,
    period: u32,
    at: u32,
}

fn guest(hub: &mut Hub, rate: u32, fmt: SampleFormat, ch: u8) -> Guest {
    let frame = (fmt.bytes() * ch as usize) as u32;
    let period = rate / 100 * frame;
    let mut g = FakeGrants::new();
    let mut f = SimFront::new();
    f.grant_buffer(&mut g, 100, 4 * period);
    for (i, r) in f.buffer.clone().into_iter().enumerate() {
        for (k, b) in g.page_mut(r).unwrap().iter_mut().enumerate() {
            *b = ((i * 4096 + k) as u32)
                .wrapping_mul(2654435761)
                .to_le_bytes()[2]
                >> 2;
        }
    }
    let mut be = Sndback::new(Caps::default(), 1);
    be.add_stream(Direction::Playback, f.ring_mem.clone(), f.evt.clone())
        .unwrap();
    f.open(rate, fmt, ch, period);
    f.buffer_op(BufferOp::Write, 0, 2 * period);
    f.trigger(Trigger::Start);
    be.poll(&mut g, hub).unwrap();
    assert!(f.responses().iter().all(|r| r.status == 0));
    Guest {
        g,
        f,
        be,
        period,
        at: 2 * period,
    }
}

fn engine(c: &mut Criterion) {
    let mut grp = c.benchmark_group("sndback");
    let shapes: [(&str, [Shape; 4]); 2] = [
        ("4 guests 48k s16/2", [(48000, SampleFormat::S16Le, 2); 4]),
        (
            "4 guests 44.1k s16/2, 48k f32/2, 16k s16/1, 22.05k s32/2",
            [
                (44100, SampleFormat::S16Le, 2),
                (48000, SampleFormat::F32Le, 2),
                (16000, SampleFormat::S16Le, 1),
                (22050, SampleFormat::S32Le, 2),
            ],
        ),
    ];
    for (name, shape) in shapes {
        let dev = DeviceConfig {
            format: SampleFormat::S16Le,
            rate: 48000,
            channels: 2,
        };
        let mut hub = Hub::new(dev, DuckConfig::default(), 8).unwrap();
        let mut guests: Vec<Guest> = shape
            .iter()
            .map(|&(r, f, c)| guest(&mut hub, r, f, c))
            .collect();
        let mut out = vec![0u8; TICK * dev.frame_bytes()];
        let mut refused = 0usize;
        grp.throughput(Throughput::Elements(TICK as u64));
        grp.bench_function(format!("{name} -> 48k s16/2 (device frames)"), |b| {
            b.iter(|| {
                hub.render(black_box(&mut out)).unwrap();
                for g in guests.iter_mut() {
                    // One period per device period (a guest at a rate that does not divide
                    // 100 Hz evenly still averages out; overruns are answered ENOSPC).
                    g.f.buffer_op(BufferOp::Write, g.at, g.period);
                    g.at = (g.at + g.period) % (4 * g.period);
                    g.be.poll(&mut g.g, &mut hub).unwrap();
                    refused += g.f.responses().iter().filter(|r| r.status != 0).count();
                    g.f.events();
                }
            })
        });
        println!("{name}: {refused} writes refused (ENOSPC when a guest runs ahead)");
    }
    grp.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = engine
}
criterion_main!(benches);
