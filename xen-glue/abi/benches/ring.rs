//! Messages per second through one ring between two threads: the Xen-compatible shared ring
//! (over the host shared-memory implementation) side by side with `rtrb` and crossbeam's
//! `ArrayQueue`, same message size, same capacity (512 messages), in the same run.
//!
//! Shape of each run: the bench thread produces `iters` messages of N bytes, a consumer thread
//! busy-polls, reads every message completely and folds it into a checksum. For the Xen ring,
//! the consumer is a [`BackRing`] that also writes an 8-byte response per request (the ring
//! protocol frees slots only through responses), and the producer is a [`FrontRing`] that reads
//! those responses back ("xen-ring", request+response). A second variant, "xen-ring-oneway",
//! moves data one way only, like the SPSC queues: the backend returns slots with body-less
//! responses (`push_null_responses`) and the frontend skips them (`skip_responses`). Index
//! publication is batched as the protocol allows (one `req_prod`/`rsp_prod` store per
//! [`batch()`] entries). Nobody sleeps or sends notifications (polling mode on both sides, as
//! for the SPSC queues).
//!
//! The producer runs on CPU 0 and the consumer on CPU 1 (pinned), so every message crosses
//! between two CPUs. Waiting is the same for all: spin briefly, then yield.
//!
//! Variants: "xen-ring-oneway" uses the per-message API (`push_request`/`pop_request`),
//! "xen-ring-oneway-batch" the batch API (`push_requests`/`pop_requests`: one bulk copy per run
//! of slots); "rtrb" uses rtrb's per-element `push`/`pop`, "rtrb-chunked" its chunk API
//! (`write_chunk_uninit`/`read_chunk`, the consumer reads messages in place). Every consumer
//! reads each message completely ([`fold`]). The Xen ring never hands out references into the
//! shared region, so its consumer always copies a message out before reading it (and the
//! producer copies it in): twice the memory operations of an in-place SPSC queue, which is what
//! limits it when the data stays in cache.
//!
//! "xen-ring-oneway-inplace" and "xen-ring-inplace" use the in-place APIs
//! (`produce_requests`, `consume_requests`/`serve_requests`, `consume_responses`): the closures
//! get a `SlotWriter`/`SlotReader` that stores/loads fields straight in the slot (loads, never a
//! reference; each word read exactly once, the TOCTOU rule), so neither side copies through a
//! private buffer. Their like-for-like competitor is "rtrb-chunked" (also in place); the copying
//! variants stay in the table. Over `HostMem` the ring checks the region's bounds once per run
//! of slots (`SharedMem::words`), so each field access at a constant offset is a plain relaxed
//! word load or store: the consumer's loop per 16-byte message is two loads and the fold, as
//! for rtrb's slices.
//!
//! For the request+response mode the like-for-like baseline is a *pair* of SPSC queues
//! (requests one way, 8-byte responses back, at most 512 outstanding): "rtrb-pair" and
//! "crossbeam-pair" (per element) and "rtrb-pair-chunked" (in place, batched). `io/ring.h` puts
//! each response into its request's slot, so a slot's cache line goes producer -> consumer
//! (read), is upgraded by the consumer (response write), goes back (response read) and is
//! upgraded again (next request); a queue pair moves a separate response line instead. Which
//! costs more depends on the machine; measured, not assumed.
//!
//! Knobs: `RING_BATCH` (entries per index publication, default 64), `RING_SPIN` (spins before a
//! yield, default 64; larger values help on an idle machine and hurt badly when other processes
//! share the two CPUs). For the interleaved comparison: `RING_SIZES` (e.g. `16`, default
//! `16,64`), `RING_ROUNDS` (default 21), `RING_MSGS` (messages per run, default 2,000,000).
//!
//! Quick mode for CI smoke runs: `ICONNECT_BENCH_QUICK=1` (few samples, short measurement).
//! After criterion's per-implementation reports, an interleaved comparison (every
//! implementation runs the same message count in each round, every other round in reverse
//! order, rounds repeated) prints one `RING-SUMMARY` line per size and mode with the median
//! messages/s and the ratio of the Xen ring to the best of the others, and one `RING-RATIO`
//! line with the same ratios taken within each round (the runs of one round share the
//! machine's load of the moment): median and quartiles over the rounds. On a machine shared
//! with other work, read the quartiles. `cargo bench -p xen-abi --bench ring -- zzz` runs only
//! the comparison (the criterion filter matches nothing).

use std::hint::black_box;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use xen_abi::ring::{
    BackRing, FrontRing, RawProtocol, RingProtocol, SlotReader, SlotWriter, ring_bytes_for_order,
    ring_entries,
};
use xen_abi::shmem::{HostMem, SharedMem};

const CAPACITY: usize = 512;

fn quick() -> bool {
    std::env::var_os("ICONNECT_BENCH_QUICK").is_some()
}

/// Pins the calling thread to CPU `i` (producer on one CPU, consumer on another), if the
/// machine has at least two. The CPU list is read once, before any thread is pinned (a pinned
/// thread, and every thread it spawns, would only see its own CPU).
fn pin(i: usize) {
    static CORES: std::sync::OnceLock<Vec<core_affinity::CoreId>> = std::sync::OnceLock::new();
    let cores = CORES.get_or_init(|| core_affinity::get_core_ids().unwrap_or_default());
    if cores.len() >= 2 {
        assert!(
            core_affinity::set_for_current(cores[i % cores.len()]),
            "cannot pin to CPU {i}"
        );
    }
}

/// Waiting strategy shared by all implementations: spin a little, then yield the CPU (on a
/// loaded 2-CPU machine a pure spin can wait out a whole time slice of its own peer).
#[derive(Default)]
struct Backoff(u32);

/// Spins before a yield (`RING_SPIN` overrides).
fn spin_limit() -> u32 {
    static S: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *S.get_or_init(|| {
        std::env::var("RING_SPIN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64)
    })
}

impl Backoff {
    #[inline]
    fn wait(&mut self) {
        self.0 += 1;
        if self.0 < spin_limit() {
            std::hint::spin_loop();
        } else {
            self.0 = 0;
            thread::yield_now();
        }
    }
    #[inline]
    fn reset(&mut self) {
        self.0 = 0;
    }
}

/// What every consumer does with a message: read all of it (a checksum over its 8-byte words),
/// so that every implementation moves the whole message to the consumer.
#[inline(always)]
fn fold<const N: usize>(m: &[u8; N]) -> u64 {
    let mut a = 0u64;
    for c in m.chunks_exact(8) {
        a = a.rotate_left(5) ^ u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
    }
    a
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
            assert_eq!(
                ring_entries(bytes, P::SLOT) as usize,
                CAPACITY,
                "same capacity for all"
            );
            return HostMem::new(bytes);
        }
    }
    panic!("no ring-page-order fits");
}

/// How many entries each side writes before publishing its producer index (`RING_BATCH`
/// overrides; default 64). Publishing in the middle of a long run lets the peer start on the
/// first entries while the rest are written, instead of the two sides taking turns.
fn batch() -> u32 {
    static B: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *B.get_or_init(|| {
        std::env::var("RING_BATCH")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&b| b > 0)
            .unwrap_or(64)
    })
}

fn xen_ring<const N: usize>(iters: u64) -> Duration {
    let mem = region_for::<RawProtocol<N, 8>>();
    let mut front = FrontRing::<_, RawProtocol<N, 8>>::init(mem.clone()).unwrap();
    let consumer = thread::spawn(move || {
        pin(1);
        let mut back = BackRing::<_, RawProtocol<N, 8>>::attach(mem).unwrap();
        let (mut seen, mut sum, mut backoff) = (0u64, 0u64, Backoff::default());
        while seen < iters {
            // One snapshot of req_prod per batch; answer the batch, publish once.
            let n = back.unconsumed_requests().unwrap();
            if n == 0 {
                backoff.wait();
                continue;
            }
            backoff.reset();
            for i in 1..=n {
                let req = back.pop_request().unwrap().unwrap();
                sum = sum.wrapping_add(fold(&req));
                back.push_response(&[req[0]; 8]).unwrap();
                if i.is_multiple_of(batch()) {
                    back.publish_responses();
                }
            }
            back.publish_responses();
            seen += n as u64;
        }
        black_box(sum)
    });
    let start = Instant::now();
    let (mut sent, mut done, mut sum, mut backoff) = (0u64, 0u64, 0u64, Backoff::default());
    while done < iters {
        let mut pushed = 0u32;
        while sent < iters && front.push_request(&message::<N>(sent)).is_ok() {
            sent += 1;
            pushed += 1;
            if pushed.is_multiple_of(batch()) {
                front.publish_requests();
            }
        }
        let pushed = pushed > 0;
        if pushed {
            front.publish_requests();
        }
        let mut got = false;
        while let Some(rsp) = front.pop_response().unwrap() {
            sum = sum.wrapping_add(fold(&rsp));
            done += 1;
            got = true;
        }
        if !got && !pushed {
            backoff.wait();
        } else {
            backoff.reset();
        }
    }
    consumer.join().unwrap();
    let d = start.elapsed();
    black_box(sum);
    d
}

/// One-way stream over the Xen ring: the backend consumes requests and returns their slots with
/// body-less responses (`push_null_responses`), the frontend skips them (`skip_responses`). Same
/// shape as the SPSC queues: data flows one way, only indices flow back.
fn xen_ring_oneway<const N: usize>(iters: u64) -> Duration {
    let mem = region_for::<RawProtocol<N, 8>>();
    let mut front = FrontRing::<_, RawProtocol<N, 8>>::init(mem.clone()).unwrap();
    let consumer = thread::spawn(move || {
        pin(1);
        let mut back = BackRing::<_, RawProtocol<N, 8>>::attach(mem).unwrap();
        let (mut seen, mut sum, mut backoff) = (0u64, 0u64, Backoff::default());
        while seen < iters {
            let n = back.unconsumed_requests().unwrap();
            if n == 0 {
                backoff.wait();
                continue;
            }
            backoff.reset();
            let mut done = 0;
            while done < n {
                let k = (n - done).min(batch());
                for _ in 0..k {
                    let req = back.pop_request().unwrap().unwrap();
                    sum = sum.wrapping_add(fold(&req));
                }
                back.push_null_responses(k).unwrap();
                back.publish_responses();
                done += k;
            }
            seen += n as u64;
        }
        black_box(sum)
    });
    let start = Instant::now();
    let (mut sent, mut backoff) = (0u64, Backoff::default());
    while sent < iters {
        let mut pushed = 0u32;
        while sent < iters && front.push_request(&message::<N>(sent)).is_ok() {
            sent += 1;
            pushed += 1;
            if pushed.is_multiple_of(batch()) {
                front.publish_requests();
            }
        }
        if pushed > 0 {
            front.publish_requests();
            backoff.reset();
        } else if front.skip_responses().unwrap() == 0 {
            backoff.wait();
        }
    }
    consumer.join().unwrap();
    start.elapsed()
}

/// One-way stream over the Xen ring with the batch APIs: the frontend writes up to [`batch()`]
/// requests per `push_requests` (one bulk copy per contiguous run of slots) and publishes, the
/// backend copies out everything available with `pop_requests` and returns the slots with
/// body-less responses.
fn xen_ring_oneway_batch<const N: usize>(iters: u64) -> Duration {
    let mem = region_for::<RawProtocol<N, 8>>();
    let mut front = FrontRing::<_, RawProtocol<N, 8>>::init(mem.clone()).unwrap();
    let consumer = thread::spawn(move || {
        pin(1);
        let mut back = BackRing::<_, RawProtocol<N, 8>>::attach(mem).unwrap();
        let mut buf = vec![[0u8; N]; CAPACITY];
        let (mut seen, mut sum, mut backoff) = (0u64, 0u64, Backoff::default());
        while seen < iters {
            let n = back.pop_requests(&mut buf).unwrap();
            if n == 0 {
                backoff.wait();
                continue;
            }
            backoff.reset();
            for m in &buf[..n] {
                sum = sum.wrapping_add(fold(m));
            }
            back.push_null_responses(n as u32).unwrap();
            back.publish_responses();
            seen += n as u64;
        }
        black_box(sum)
    });
    let start = Instant::now();
    let mut local = vec![[0u8; N]; batch().min(CAPACITY as u32) as usize];
    let (mut sent, mut backoff) = (0u64, Backoff::default());
    while sent < iters {
        let k = local.len().min((iters - sent) as usize);
        for (j, m) in local[..k].iter_mut().enumerate() {
            *m = message::<N>(sent + j as u64);
        }
        let n = front.push_requests(&local[..k]);
        if n > 0 {
            front.publish_requests();
            sent += n as u64;
            backoff.reset();
        } else if front.skip_responses().unwrap() == 0 {
            backoff.wait();
        }
    }
    consumer.join().unwrap();
    start.elapsed()
}

/// [`fold`] over a message read in place from its slot: each 8-byte word loaded exactly once
/// (the TOCTOU rule). Also returns the first byte (what the request+response consumer echoes).
#[inline(always)]
fn fold_slot<const N: usize, M: SharedMem>(r: SlotReader<'_, M>) -> (u64, u8) {
    let w0 = r.load_u64(0);
    let mut a = w0;
    let mut k = 8;
    while k + 8 <= N {
        a = a.rotate_left(5) ^ r.load_u64(k);
        k += 8;
    }
    (a, w0 as u8)
}

/// [`message`] written in place: every word of the entry stored once.
#[inline(always)]
fn write_message<const N: usize, M: SharedMem>(w: SlotWriter<'_, M>, i: u64) {
    w.store_u64(0, i);
    let mut k = 8;
    while k + 8 <= N {
        w.store_u64(k, 0);
        k += 8;
    }
}

/// One-way stream over the Xen ring with the in-place APIs: the frontend writes each request's
/// words straight into its slot (`produce_requests`), the backend reads each word of each
/// request once from its slot (`consume_requests`, no private copy) and returns the slots with
/// body-less responses. The like-for-like competitor is "rtrb-chunked" (also in place).
fn xen_ring_oneway_inplace<const N: usize>(iters: u64) -> Duration {
    let mem = region_for::<RawProtocol<N, 8>>();
    let mut front = FrontRing::<_, RawProtocol<N, 8>>::init(mem.clone()).unwrap();
    let consumer = thread::spawn(move || {
        pin(1);
        let mut back = BackRing::<_, RawProtocol<N, 8>>::attach(mem).unwrap();
        let (mut seen, mut sum, mut backoff) = (0u64, 0u64, Backoff::default());
        while seen < iters {
            let n = back
                .consume_requests(u32::MAX, |r| {
                    sum = sum.wrapping_add(fold_slot::<N, _>(r).0);
                })
                .unwrap();
            if n == 0 {
                backoff.wait();
                continue;
            }
            backoff.reset();
            back.push_null_responses(n).unwrap();
            back.publish_responses();
            seen += n as u64;
        }
        black_box(sum)
    });
    let start = Instant::now();
    let (mut sent, mut backoff) = (0u64, Backoff::default());
    while sent < iters {
        let k = batch().min((iters - sent).min(u32::MAX as u64) as u32);
        let first = sent;
        let n = front.produce_requests(k, |i, w| write_message::<N, _>(w, first + i as u64));
        if n > 0 {
            front.publish_requests();
            sent += n as u64;
            backoff.reset();
        } else if front.skip_responses().unwrap() == 0 {
            backoff.wait();
        }
    }
    consumer.join().unwrap();
    start.elapsed()
}

/// Request+response over the Xen ring with the in-place APIs: `produce_requests` on the
/// frontend, `serve_requests` on the backend (reads each request word once, then writes the
/// 8-byte response over it), `consume_responses` back on the frontend.
fn xen_ring_inplace<const N: usize>(iters: u64) -> Duration {
    let mem = region_for::<RawProtocol<N, 8>>();
    let mut front = FrontRing::<_, RawProtocol<N, 8>>::init(mem.clone()).unwrap();
    let consumer = thread::spawn(move || {
        pin(1);
        let mut back = BackRing::<_, RawProtocol<N, 8>>::attach(mem).unwrap();
        let (mut seen, mut sum, mut backoff) = (0u64, 0u64, Backoff::default());
        while seen < iters {
            let mut n = 0;
            loop {
                let k = back
                    .serve_requests(batch(), |req, rsp| {
                        let (a, b0) = fold_slot::<N, _>(req);
                        sum = sum.wrapping_add(a);
                        rsp.store_u64(0, u64::from_le_bytes([b0; 8]));
                    })
                    .unwrap();
                if k == 0 {
                    break;
                }
                back.publish_responses();
                n += k;
            }
            if n == 0 {
                backoff.wait();
                continue;
            }
            backoff.reset();
            seen += n as u64;
        }
        black_box(sum)
    });
    let start = Instant::now();
    let (mut sent, mut done, mut sum, mut backoff) = (0u64, 0u64, 0u64, Backoff::default());
    while done < iters {
        let mut pushed = 0;
        loop {
            let k = batch().min((iters - sent).min(u32::MAX as u64) as u32);
            let first = sent;
            let n = front.produce_requests(k, |i, w| write_message::<N, _>(w, first + i as u64));
            if n == 0 {
                break;
            }
            front.publish_requests();
            sent += n as u64;
            pushed += n;
        }
        let got = front
            .consume_responses(u32::MAX, |r| {
                sum = sum.wrapping_add(fold_slot::<8, _>(r).0);
            })
            .unwrap();
        done += got as u64;
        if got == 0 && pushed == 0 {
            backoff.wait();
        } else {
            backoff.reset();
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
        pin(1);
        let (mut seen, mut sum, mut backoff) = (0u64, 0u64, Backoff::default());
        while seen < iters {
            match c.pop() {
                Ok(m) => {
                    sum = sum.wrapping_add(fold(&m));
                    seen += 1;
                    backoff.reset();
                }
                Err(_) => backoff.wait(),
            }
        }
        black_box(sum)
    });
    let start = Instant::now();
    let (mut i, mut backoff) = (0u64, Backoff::default());
    while i < iters {
        if p.push(message::<N>(i)).is_ok() {
            i += 1;
            backoff.reset();
        } else {
            backoff.wait();
        }
    }
    consumer.join().unwrap();
    start.elapsed()
}

/// `rtrb` with its batch API: the producer writes chunks of up to [`batch()`] messages (one
/// index publication per chunk), the consumer reads everything available as one chunk.
fn rtrb_chunked<const N: usize>(iters: u64) -> Duration {
    let (mut p, mut c) = rtrb::RingBuffer::<[u8; N]>::new(CAPACITY);
    let consumer = thread::spawn(move || {
        pin(1);
        let (mut seen, mut sum, mut backoff) = (0u64, 0u64, Backoff::default());
        while seen < iters {
            let n = c.slots();
            if n == 0 {
                backoff.wait();
                continue;
            }
            backoff.reset();
            let chunk = c.read_chunk(n).unwrap();
            let (a, b) = chunk.as_slices();
            for m in a.iter().chain(b) {
                sum = sum.wrapping_add(fold(m));
            }
            chunk.commit_all();
            seen += n as u64;
        }
        black_box(sum)
    });
    let start = Instant::now();
    let (mut i, mut backoff) = (0u64, Backoff::default());
    while i < iters {
        let n = p.slots().min(batch() as usize).min((iters - i) as usize);
        if n == 0 {
            backoff.wait();
            continue;
        }
        backoff.reset();
        let chunk = p.write_chunk_uninit(n).unwrap();
        let first = i;
        i += chunk.fill_from_iter((first..first + n as u64).map(message::<N>)) as u64;
    }
    consumer.join().unwrap();
    start.elapsed()
}

fn crossbeam_queue<const N: usize>(iters: u64) -> Duration {
    let q = Arc::new(ArrayQueue::<[u8; N]>::new(CAPACITY));
    let qc = q.clone();
    let consumer = thread::spawn(move || {
        pin(1);
        let (mut seen, mut sum, mut backoff) = (0u64, 0u64, Backoff::default());
        while seen < iters {
            match qc.pop() {
                Some(m) => {
                    sum = sum.wrapping_add(fold(&m));
                    seen += 1;
                    backoff.reset();
                }
                None => backoff.wait(),
            }
        }
        black_box(sum)
    });
    let start = Instant::now();
    let (mut i, mut backoff) = (0u64, Backoff::default());
    while i < iters {
        if q.push(message::<N>(i)).is_ok() {
            i += 1;
            backoff.reset();
        } else {
            backoff.wait();
        }
    }
    consumer.join().unwrap();
    start.elapsed()
}

/// Request/response over two `rtrb` queues (requests one way, 8-byte responses back), at most
/// `CAPACITY` requests outstanding: the like-for-like comparison for the Xen ring's
/// request+response mode.
fn rtrb_pair<const N: usize>(iters: u64) -> Duration {
    let (mut req_p, mut req_c) = rtrb::RingBuffer::<[u8; N]>::new(CAPACITY);
    let (mut rsp_p, mut rsp_c) = rtrb::RingBuffer::<[u8; 8]>::new(CAPACITY);
    let consumer = thread::spawn(move || {
        pin(1);
        let (mut seen, mut sum, mut backoff) = (0u64, 0u64, Backoff::default());
        while seen < iters {
            match req_c.pop() {
                Ok(m) => {
                    sum = sum.wrapping_add(fold(&m));
                    while rsp_p.push([m[0]; 8]).is_err() {
                        backoff.wait();
                    }
                    seen += 1;
                    backoff.reset();
                }
                Err(_) => backoff.wait(),
            }
        }
        black_box(sum)
    });
    let start = Instant::now();
    let (mut sent, mut done, mut sum, mut backoff) = (0u64, 0u64, 0u64, Backoff::default());
    while done < iters {
        let mut progress = false;
        while sent < iters
            && sent - done < CAPACITY as u64
            && req_p.push(message::<N>(sent)).is_ok()
        {
            sent += 1;
            progress = true;
        }
        while let Ok(r) = rsp_c.pop() {
            sum = sum.wrapping_add(fold(&r));
            done += 1;
            progress = true;
        }
        if progress {
            backoff.reset();
        } else {
            backoff.wait();
        }
    }
    consumer.join().unwrap();
    black_box(sum);
    start.elapsed()
}

/// Request/response over two `rtrb` queues with their chunk APIs (the in-place, batched
/// competitor of "xen-ring-inplace"): the producer writes request chunks of up to [`batch()`]
/// and reads all available responses as one chunk; the consumer reads request chunks of up to
/// [`batch()`] in place and answers each chunk with one response chunk.
fn rtrb_pair_chunked<const N: usize>(iters: u64) -> Duration {
    let (mut req_p, mut req_c) = rtrb::RingBuffer::<[u8; N]>::new(CAPACITY);
    let (mut rsp_p, mut rsp_c) = rtrb::RingBuffer::<[u8; 8]>::new(CAPACITY);
    let consumer = thread::spawn(move || {
        pin(1);
        let (mut seen, mut sum, mut backoff) = (0u64, 0u64, Backoff::default());
        while seen < iters {
            let n = req_c.slots().min(batch() as usize);
            if n == 0 {
                backoff.wait();
                continue;
            }
            backoff.reset();
            // At most CAPACITY requests are outstanding, so the response queue has room.
            let chunk = req_c.read_chunk(n).unwrap();
            let (a, b) = chunk.as_slices();
            let w = rsp_p.write_chunk_uninit(n).unwrap();
            w.fill_from_iter(a.iter().chain(b).map(|m| {
                sum = sum.wrapping_add(fold(m));
                [m[0]; 8]
            }));
            chunk.commit_all();
            seen += n as u64;
        }
        black_box(sum)
    });
    let start = Instant::now();
    let (mut sent, mut done, mut sum, mut backoff) = (0u64, 0u64, 0u64, Backoff::default());
    while done < iters {
        let mut progress = false;
        loop {
            let n = req_p
                .slots()
                .min(batch() as usize)
                .min((iters - sent) as usize)
                .min(CAPACITY - (sent - done) as usize);
            if n == 0 {
                break;
            }
            let chunk = req_p.write_chunk_uninit(n).unwrap();
            let first = sent;
            sent += chunk.fill_from_iter((first..first + n as u64).map(message::<N>)) as u64;
            progress = true;
        }
        let k = rsp_c.slots();
        if k > 0 {
            let chunk = rsp_c.read_chunk(k).unwrap();
            let (a, b) = chunk.as_slices();
            for r in a.iter().chain(b) {
                sum = sum.wrapping_add(fold(r));
            }
            chunk.commit_all();
            done += k as u64;
            progress = true;
        }
        if progress {
            backoff.reset();
        } else {
            backoff.wait();
        }
    }
    consumer.join().unwrap();
    black_box(sum);
    start.elapsed()
}

/// Request/response over two crossbeam `ArrayQueue`s, like [`rtrb_pair`].
fn crossbeam_pair<const N: usize>(iters: u64) -> Duration {
    let req = Arc::new(ArrayQueue::<[u8; N]>::new(CAPACITY));
    let rsp = Arc::new(ArrayQueue::<[u8; 8]>::new(CAPACITY));
    let (req_c, rsp_p) = (req.clone(), rsp.clone());
    let consumer = thread::spawn(move || {
        pin(1);
        let (mut seen, mut sum, mut backoff) = (0u64, 0u64, Backoff::default());
        while seen < iters {
            match req_c.pop() {
                Some(m) => {
                    sum = sum.wrapping_add(fold(&m));
                    while rsp_p.push([m[0]; 8]).is_err() {
                        backoff.wait();
                    }
                    seen += 1;
                    backoff.reset();
                }
                None => backoff.wait(),
            }
        }
        black_box(sum)
    });
    let start = Instant::now();
    let (mut sent, mut done, mut sum, mut backoff) = (0u64, 0u64, 0u64, Backoff::default());
    while done < iters {
        let mut progress = false;
        while sent < iters && sent - done < CAPACITY as u64 && req.push(message::<N>(sent)).is_ok()
        {
            sent += 1;
            progress = true;
        }
        while let Some(r) = rsp.pop() {
            sum = sum.wrapping_add(fold(&r));
            done += 1;
            progress = true;
        }
        if progress {
            backoff.reset();
        } else {
            backoff.wait();
        }
    }
    consumer.join().unwrap();
    black_box(sum);
    start.elapsed()
}

fn group<const N: usize>(c: &mut Criterion) {
    let mut g = c.benchmark_group(format!("ring-{N}B"));
    g.throughput(Throughput::Elements(1));
    if quick() {
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_secs(1));
    } else {
        g.sample_size(30)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4));
    }
    g.bench_function(BenchmarkId::new("xen-ring", N), |b| {
        b.iter_custom(xen_ring::<N>)
    });
    g.bench_function(BenchmarkId::new("xen-ring-oneway", N), |b| {
        b.iter_custom(xen_ring_oneway::<N>)
    });
    g.bench_function(BenchmarkId::new("xen-ring-oneway-batch", N), |b| {
        b.iter_custom(xen_ring_oneway_batch::<N>)
    });
    g.bench_function(BenchmarkId::new("xen-ring-inplace", N), |b| {
        b.iter_custom(xen_ring_inplace::<N>)
    });
    g.bench_function(BenchmarkId::new("xen-ring-oneway-inplace", N), |b| {
        b.iter_custom(xen_ring_oneway_inplace::<N>)
    });
    g.bench_function(BenchmarkId::new("rtrb", N), |b| {
        b.iter_custom(rtrb_queue::<N>)
    });
    g.bench_function(BenchmarkId::new("rtrb-chunked", N), |b| {
        b.iter_custom(rtrb_chunked::<N>)
    });
    g.bench_function(BenchmarkId::new("crossbeam-arrayqueue", N), |b| {
        b.iter_custom(crossbeam_queue::<N>)
    });
    g.bench_function(BenchmarkId::new("rtrb-pair", N), |b| {
        b.iter_custom(rtrb_pair::<N>)
    });
    g.bench_function(BenchmarkId::new("rtrb-pair-chunked", N), |b| {
        b.iter_custom(rtrb_pair_chunked::<N>)
    });
    g.bench_function(BenchmarkId::new("crossbeam-pair", N), |b| {
        b.iter_custom(crossbeam_pair::<N>)
    });
    g.finish();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The comparison that produces the ratio: rounds in which every implementation and size runs
/// the same number of messages back to back, so that load from other processes hits all of them
/// alike; the median rate of each over the rounds is reported.
fn interleaved_summary() {
    let (rounds, msgs) = if quick() {
        (5, 300_000u64)
    } else {
        (21, 2_000_000u64)
    };
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let rounds = env("RING_ROUNDS").map_or(rounds, |r| r.max(1) as usize);
    let msgs = env("RING_MSGS").map_or(msgs, |m| m.max(1));
    let sizes: Vec<usize> = std::env::var("RING_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![16, 64]);
    type Run = fn(u64) -> Duration;
    let runs: [(&str, usize, Run); 22] = [
        ("xen-ring", 16, xen_ring::<16>),
        ("xen-ring-inplace", 16, xen_ring_inplace::<16>),
        ("xen-ring-oneway", 16, xen_ring_oneway::<16>),
        ("xen-ring-oneway-batch", 16, xen_ring_oneway_batch::<16>),
        ("xen-ring-oneway-inplace", 16, xen_ring_oneway_inplace::<16>),
        ("rtrb", 16, rtrb_queue::<16>),
        ("rtrb-chunked", 16, rtrb_chunked::<16>),
        ("crossbeam-arrayqueue", 16, crossbeam_queue::<16>),
        ("rtrb-pair", 16, rtrb_pair::<16>),
        ("rtrb-pair-chunked", 16, rtrb_pair_chunked::<16>),
        ("crossbeam-pair", 16, crossbeam_pair::<16>),
        ("xen-ring", 64, xen_ring::<64>),
        ("xen-ring-inplace", 64, xen_ring_inplace::<64>),
        ("xen-ring-oneway", 64, xen_ring_oneway::<64>),
        ("xen-ring-oneway-batch", 64, xen_ring_oneway_batch::<64>),
        ("xen-ring-oneway-inplace", 64, xen_ring_oneway_inplace::<64>),
        ("rtrb", 64, rtrb_queue::<64>),
        ("rtrb-chunked", 64, rtrb_chunked::<64>),
        ("crossbeam-arrayqueue", 64, crossbeam_queue::<64>),
        ("rtrb-pair", 64, rtrb_pair::<64>),
        ("rtrb-pair-chunked", 64, rtrb_pair_chunked::<64>),
        ("crossbeam-pair", 64, crossbeam_pair::<64>),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    for round in 0..rounds {
        // Every other round runs in reverse order, so that no implementation always follows
        // the same neighbour (load from other processes drifts within a round).
        let order: Vec<usize> = if round % 2 == 0 {
            (0..runs.len()).collect()
        } else {
            (0..runs.len()).rev().collect()
        };
        for i in order {
            let (_, size, run) = runs[i];
            if !sizes.contains(&size) {
                continue;
            }
            let d = run(msgs);
            rates[i].push(msgs as f64 / d.as_secs_f64());
        }
    }
    for &size in &sizes {
        let per_round = |name: &str| {
            let i = runs
                .iter()
                .position(|r| r.0 == name && r.1 == size)
                .unwrap();
            rates[i].clone()
        };
        let rate = |name: &str| median(per_round(name));
        // The ratio of `xen` to the best of `others` within each round (both ran seconds
        // apart under the same load): median and quartiles over the rounds.
        let round_ratio = |xen: &str, others: &[&str]| {
            let x = per_round(xen);
            let o: Vec<Vec<f64>> = others.iter().map(|n| per_round(n)).collect();
            let mut r: Vec<f64> = (0..x.len())
                .map(|k| x[k] / o.iter().map(|v| v[k]).fold(0.0, f64::max))
                .collect();
            r.sort_by(|a, b| a.total_cmp(b));
            let q = |p: usize| r[(r.len() - 1) * p / 4];
            format!("{:.2} [{:.2}-{:.2}]", q(2), q(1), q(3))
        };
        let queues = ["rtrb", "rtrb-chunked", "crossbeam-arrayqueue"];
        let pairs = ["rtrb-pair", "rtrb-pair-chunked", "crossbeam-pair"];
        let (x, xi) = (rate("xen-ring"), rate("xen-ring-inplace"));
        let (o, ob, oi) = (
            rate("xen-ring-oneway"),
            rate("xen-ring-oneway-batch"),
            rate("xen-ring-oneway-inplace"),
        );
        let (r, rc, q) = (
            rate("rtrb"),
            rate("rtrb-chunked"),
            rate("crossbeam-arrayqueue"),
        );
        let (rp, rpc, qp) = (
            rate("rtrb-pair"),
            rate("rtrb-pair-chunked"),
            rate("crossbeam-pair"),
        );
        let best_pair = rp.max(rpc).max(qp);
        let best = r.max(rc).max(q);
        println!(
            "RING-SUMMARY {size}B one-way ({rounds} interleaved rounds x {msgs} msgs, median Mmsg/s): xen-ring-oneway {:.1} (per-message API, copies) / {:.1} (batch API, copies) / {:.1} (in-place API), rtrb {:.1}, rtrb-chunked {:.1} (in place), crossbeam-arrayqueue {:.1}; ratio xen/best: copying {:.2}, in-place {:.2}",
            o / 1e6,
            ob / 1e6,
            oi / 1e6,
            r / 1e6,
            rc / 1e6,
            q / 1e6,
            o.max(ob) / best,
            oi / best
        );
        println!(
            "RING-RATIO {size}B one-way, per round (median [quartiles] of xen/best-of-rtrb,rtrb-chunked,crossbeam): in-place {}, per-message copies {}, batch copies {}; per-message copies vs per-element rtrb,crossbeam {}",
            round_ratio("xen-ring-oneway-inplace", &queues),
            round_ratio("xen-ring-oneway", &queues),
            round_ratio("xen-ring-oneway-batch", &queues),
            round_ratio("xen-ring-oneway", &["rtrb", "crossbeam-arrayqueue"]),
        );
        println!(
            "RING-SUMMARY {size}B request+response (median Mmsg/s): xen-ring {:.1} (copies) / {:.1} (in-place API), rtrb-pair {:.1}, rtrb-pair-chunked {:.1} (in place), crossbeam-pair {:.1}; ratio xen/best: copying {:.2}, in-place {:.2}",
            x / 1e6,
            xi / 1e6,
            rp / 1e6,
            rpc / 1e6,
            qp / 1e6,
            x / best_pair,
            xi / best_pair
        );
        println!(
            "RING-RATIO {size}B request+response, per round (median [quartiles] of xen/best-of-pairs): in-place {}, copies {}; copies vs per-element rtrb-pair,crossbeam-pair {}",
            round_ratio("xen-ring-inplace", &pairs),
            round_ratio("xen-ring", &pairs),
            round_ratio("xen-ring", &["rtrb-pair", "crossbeam-pair"]),
        );
    }
}

fn main() {
    pin(0);
    let mut c = Criterion::default().configure_from_args();
    group::<16>(&mut c);
    group::<64>(&mut c);
    c.final_summary();
    interleaved_summary();
}
