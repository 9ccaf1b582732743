//! Messages per second through one ring between two threads: the Xen-compatible shared ring
//! (over the host shared-memory implementation) side by side with `rtrb` and crossbeam's
//! `ArrayQueue`, same message size, same capacity (512 messages), in the same run.
//!
//! Shape of each run: the bench thread produces `iters` messages of N bytes, a consumer thread
//! busy-polls, reads every message and folds one byte of it into a checksum. For the Xen ring,
//! the consumer is a [`BackRing`] that also writes an 8-byte response per request (the ring
//! protocol frees slots only through responses), and the producer is a [`FrontRing`] that reads
//! those responses back. Index publication is batched as the protocol allows (one `req_prod`
//! store per batch of pushes, one `rsp_prod` store per batch of responses). Nobody sleeps or
//! sends notifications (polling mode on both sides, as for the SPSC queues).
//!
//! Quick mode for CI smoke runs: `ICONNECT_BENCH_QUICK=1` (few samples, short measurement).
//! At the end the bench prints the median messages/s of each implementation and the ratio of
//! the Xen ring to the best of the others.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use xen_abi::ring::{BackRing, FrontRing, RawProtocol, RingProtocol, ring_bytes_for_order, ring_entries};
use xen_abi::shmem::HostMem;

const CAPACITY: usize = 512;

/// (implementation, message size, ns per message) for every sample.
static SAMPLES: Mutex<Vec<(&'static str, usize, f64)>> = Mutex::new(Vec::new());

fn record(name: &'static str, size: usize, iters: u64, d: Duration) {
    if iters > 0 {
        SAMPLES.lock().unwrap().push((name, size, d.as_nanos() as f64 / iters as f64));
    }
}

fn message<const N: usize>(i: u64) -> [u8; N] {
    let mut m = [0u8; N];
    m[..8].copy_from_slice(&i.to_le_bytes());
    m
}

/// The smallest ring-page-order whose ring holds `CAPACITY` slots of this protocol.
fn region_for<P: RingProtocol>() -> HostMem {
    for order in 0..=4 {
        let bytes = ring_bytes_for_order(order).unwrap();
        if ring_entries(bytes, P::SLOT) as usize >= CAPACITY {
            assert_eq!(ring_entries(bytes, P::SLOT) as usize, CAPACITY, "same capacity for all");
            return HostMem::new(bytes);
        }
    }
    panic!("no ring-page-order fits");
}

fn xen_ring<const N: usize>(iters: u64) -> Duration {
    let mem = region_for::<RawProtocol<N, 8>>();
    let mut front = FrontRing::<_, RawProtocol<N, 8>>::init(mem.clone()).unwrap();
    let consumer = thread::spawn(move || {
        let mut back = BackRing::<_, RawProtocol<N, 8>>::attach(mem).unwrap();
        let (mut seen, mut sum) = (0u64, 0u64);
        while seen < iters {
            // One snapshot of req_prod per batch; answer the batch, publish once.
            let n = back.unconsumed_requests().unwrap();
            if n == 0 {
                std::hint::spin_loop();
                continue;
            }
            for _ in 0..n {
                let req = back.pop_request().unwrap().unwrap();
                sum = sum.wrapping_add(req[0] as u64);
                back.push_response(&[req[0]; 8]).unwrap();
            }
            back.publish_responses();
            seen += n as u64;
        }
        black_box(sum)
    });
    let start = Instant::now();
    let (mut sent, mut done, mut sum) = (0u64, 0u64, 0u64);
    while done < iters {
        let mut pushed = false;
        while sent < iters && front.push_request(&message::<N>(sent)).is_ok() {
            sent += 1;
            pushed = true;
        }
        if pushed {
            front.publish_requests();
        }
        let mut got = false;
        while let Some(rsp) = front.pop_response().unwrap() {
            sum = sum.wrapping_add(rsp[0] as u64);
            done += 1;
            got = true;
        }
        if !got && !pushed {
            std::hint::spin_loop();
        }
    }
    consumer.join().unwrap();
    let d = start.elapsed();
    black_box(sum);
    d
}

fn rtrb_queue<const N: usize>(iters: u64) -> Duration {
    let (mut p, mut c) = rtrb::RingBuffer::<[u8; N]>::new(CAPACITY);
    let consumer = thread::spawn(move || {
        let (mut seen, mut sum) = (0u64, 0u64);
        while seen < iters {
            match c.pop() {
                Ok(m) => {
                    sum = sum.wrapping_add(m[0] as u64);
                    seen += 1;
                }
                Err(_) => std::hint::spin_loop(),
            }
        }
        black_box(sum)
    });
    let start = Instant::now();
    let mut i = 0u64;
    while i < iters {
        if p.push(message::<N>(i)).is_ok() {
            i += 1;
        } else {
            std::hint::spin_loop();
        }
    }
    consumer.join().unwrap();
    start.elapsed()
}

fn crossbeam_queue<const N: usize>(iters: u64) -> Duration {
    let q = Arc::new(ArrayQueue::<[u8; N]>::new(CAPACITY));
    let qc = q.clone();
    let consumer = thread::spawn(move || {
        let (mut seen, mut sum) = (0u64, 0u64);
        while seen < iters {
            match qc.pop() {
                Some(m) => {
                    sum = sum.wrapping_add(m[0] as u64);
                    seen += 1;
                }
                None => std::hint::spin_loop(),
            }
        }
        black_box(sum)
    });
    let start = Instant::now();
    let mut i = 0u64;
    while i < iters {
        if q.push(message::<N>(i)).is_ok() {
            i += 1;
        } else {
            std::hint::spin_loop();
        }
    }
    consumer.join().unwrap();
    start.elapsed()
}

fn group<const N: usize>(c: &mut Criterion) {
    let mut g = c.benchmark_group(format!("ring-{N}B"));
    g.throughput(Throughput::Elements(1));
    if std::env::var_os("ICONNECT_BENCH_QUICK").is_some() {
        g.sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_secs(1));
    } else {
        g.sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    }
    g.bench_function(BenchmarkId::new("xen-ring", N), |b| {
        b.iter_custom(|iters| {
            let d = xen_ring::<N>(iters);
            record("xen-ring", N, iters, d);
            d
        })
    });
    g.bench_function(BenchmarkId::new("rtrb", N), |b| {
        b.iter_custom(|iters| {
            let d = rtrb_queue::<N>(iters);
            record("rtrb", N, iters, d);
            d
        })
    });
    g.bench_function(BenchmarkId::new("crossbeam-arrayqueue", N), |b| {
        b.iter_custom(|iters| {
            let d = crossbeam_queue::<N>(iters);
            record("crossbeam-arrayqueue", N, iters, d);
            d
        })
    });
    g.finish();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn summary() {
    let samples = SAMPLES.lock().unwrap().clone();
    for size in [16usize, 64] {
        let rate = |name: &str| {
            let v: Vec<f64> = samples.iter().filter(|s| s.0 == name && s.1 == size).map(|s| s.2).collect();
            (!v.is_empty()).then(|| 1e9 / median(v))
        };
        let (Some(x), Some(r), Some(q)) = (rate("xen-ring"), rate("rtrb"), rate("crossbeam-arrayqueue")) else {
            continue;
        };
        println!(
            "RING-SUMMARY {size}B: xen-ring {:.1} Mmsg/s, rtrb {:.1} Mmsg/s, crossbeam-arrayqueue {:.1} Mmsg/s, ratio xen/best = {:.2}",
            x / 1e6,
            r / 1e6,
            q / 1e6,
            x / r.max(q)
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    group::<16>(&mut c);
    group::<64>(&mut c);
    c.final_summary();
    summary();
}
