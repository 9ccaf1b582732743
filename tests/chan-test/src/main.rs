//! `chan-test`: two VMs talk over one ivshmem-doorbell channel (QEMU device + our
//! `ivshmem-server`). Booted twice by `cargo xtask test`, once with `role=a`, once with `role=b`.
//!
//! Both publish their peer id in the region, then wait for the other's. `a` then runs `rounds`
//! ping-pongs: it writes a 64-byte payload (with the sequence number) and rings `b` on vector 0;
//! `b` answers with every byte plus one and rings back; `a` checks the answer and records the
//! round-trip time. Then `bulk_mib` MiB go from `a` to `b` in chunks through the region; `b`
//! answers each with a checksum `a` compares (bandwidth). Finally `a` rings vector 1 with a
//! "done" command and `b` answers on vector 1, so both MSI-X vectors are exercised both ways.
//! A lost doorbell is retransmitted after 200 ms (counted, and only a few are tolerated: the
//! test must run on interrupts, not on timeouts).
//!
//! Command line: `role=a|b rounds=1000 bulk_mib=16 timeout_s=120 chan=0` (`chan`: which of
//! the VM's ivshmem devices, in PCI order, carries the test; all of them are opened). Prints
//! `CHAN-RESULT ok role=a rounds=N rtt_us_median=M ...` (or `CHAN-RESULT FAIL <why>`).
//! The server must be fresh for each pair of runs (a reused region holds the old ids).
//!
//! `proto=channel` (default `proto=raw`, the above) runs the real iConnect channel instead
//! (see `proto.rs`): `b` is the frontend, `a` the backend; both take `rounds` and `bulk_mib`,
//! plus `chunk_kib=64 depth=8 bad_refs=0` (requests with hostile data references b
//! sends; each must be answered with an error while the channel keeps working). Prints `CHAN-RESULT ok proto=channel role=... qos=granted ...`.
#![no_std]
#![no_main]

extern crate alloc;

mod proto;

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use core::time::Duration;

use hal::ivshmem::{self, Ivshmem};
use hal::platform;
use rt::time::{self, Instant};
use xen_abi::shmem::SharedMem;

rt::entry!(main);

/// Where unassigned BARs go (the 32-bit MMIO hole above q35's ECAM, below the IOAPIC).
const BAR_WINDOW: (u64, u64) = (0xc000_0000, 0xfe00_0000);

/// Byte offsets in the shared region.
mod off {
    /// `a`'s peer id | `ID_VALID`.
    pub const A_ID: usize = 0x00;
    /// `b`'s peer id | `ID_VALID`.
    pub const B_ID: usize = 0x04;
    /// Sequence number of `a`'s current request (published last, with release).
    pub const A_SEQ: usize = 0x40;
    /// Command of the request.
    pub const A_CMD: usize = 0x44;
    /// Bulk chunk length.
    pub const A_LEN: usize = 0x48;
    /// Bumped by `a` each time it re-rings (so `b` re-rings too only then).
    pub const A_RESEND: usize = 0x4c;
    /// Sequence number `b` answered (published last, with release).
    pub const B_SEQ: usize = 0x80;
    /// Checksum of the bulk chunk as `b` read it.
    pub const B_SUM: usize = 0x88;
    /// Ping payload from `a`.
    pub const A_DATA: usize = 0x1000;
    /// Answer payload from `b`.
    pub const B_DATA: usize = 0x2000;
    /// Bulk data area.
    pub const BULK: usize = 0x1_0000;
}

const ID_VALID: u32 = 0x8000_0000;
const CMD_PING: u32 = 1;
const CMD_BULK: u32 = 2;
const CMD_DONE: u32 = 3;
const PING_LEN: usize = 64;
/// Doorbell vector for requests and answers.
const V_DATA: u16 = 0;
/// Doorbell vector for the final command and its answer.
const V_DONE: u16 = 1;
/// Re-ring after this long without an answer (a doorbell to a peer whose QEMU has not yet
/// learnt our eventfds is dropped by the device).
const RESEND: Duration = Duration::from_millis(200);
const MAX_CHUNK: usize = 1 << 20;

type Result<T> = core::result::Result<T, alloc::string::String>;

fn main(boot: &'static rt::BootInfo) -> rt::ExitCode {
    match run(boot) {
        Ok(()) => rt::ExitCode::Success,
        Err(why) => {
            log::error!("CHAN-RESULT FAIL {why}");
            rt::ExitCode::Failure
        }
    }
}

fn arg<T: core::str::FromStr>(boot: &rt::BootInfo, key: &str, default: T) -> Result<T> {
    match rt::cmdline::get(boot.cmdline, key) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| alloc::format!("bad value for {key}: {v:?}")),
    }
}

/// The channel as one side sees it.
struct Chan {
    dev: Ivshmem,
    peer: u16,
    irqs: [u32; 2],
    deadline: Instant,
}

impl Chan {
    fn collect(&mut self) {
        for v in [V_DATA, V_DONE] {
            self.irqs[usize::from(v)] += self.dev.take(v);
        }
    }

    /// Sleeps until an interrupt, `RESEND` from now, or the run's deadline; fails past it.
    fn nap(&self, what: &str) -> Result<()> {
        let now = time::now();
        if now >= self.deadline {
            return Err(alloc::format!("timed out waiting for {what}"));
        }
        rt::event::wait_until(Some((now + RESEND).min(self.deadline)));
        Ok(())
    }

    /// `a`: publishes request `seq` (payload already written), rings `vector`, waits for the
    /// answer. Returns the number of retransmissions.
    fn request(&mut self, seq: u32, cmd: u32, vector: u16) -> Result<u32> {
        let r = self.dev.region();
        r.store_u32(off::A_CMD, cmd, Ordering::Relaxed);
        r.store_u32(off::A_SEQ, seq, Ordering::Release);
        self.dev.ring(self.peer, vector);
        let mut resend_at = time::now() + RESEND;
        let mut resent = 0;
        loop {
            self.collect();
            if self.dev.region().load_u32(off::B_SEQ, Ordering::Acquire) == seq {
                return Ok(resent);
            }
            if time::now() >= resend_at {
                let r = self.dev.region();
                let n = r.load_u32(off::A_RESEND, Ordering::Relaxed);
                r.store_u32(off::A_RESEND, n.wrapping_add(1), Ordering::Release);
                self.dev.ring(self.peer, vector);
                resent += 1;
                resend_at = time::now() + RESEND;
            }
            self.nap("b's answer")?;
        }
    }
}

fn run(boot: &'static rt::BootInfo) -> Result<()> {
    let role = rt::cmdline::get(boot.cmdline, "role").unwrap_or("");
    if role != "a" && role != "b" {
        return Err(alloc::format!("role must be a or b, got {role:?}"));
    }
    let rounds: u32 = arg(boot, "rounds", 1000)?;
    let bulk_mib: usize = arg(boot, "bulk_mib", 16)?;
    let timeout_s: u64 = arg(boot, "timeout_s", 120)?;
    let chan: usize = arg(boot, "chan", 0)?;
    let mode = rt::cmdline::get(boot.cmdline, "proto").unwrap_or("raw");
    if mode != "raw" && mode != "channel" {
        return Err(alloc::format!("proto must be raw or channel, got {mode:?}"));
    }

    let mcfg = platform::find_ecam(boot);
    let mut ecam = platform::map_ecam(&mcfg).map_err(|e| alloc::format!("ECAM: {e}"))?;
    let funcs = ivshmem::find_all(&ecam, mcfg.start_bus, mcfg.end_bus);
    if funcs.is_empty() {
        return Err("no ivshmem device (1af4:1110) on PCI".into());
    }
    // Every channel device is opened (as a driver domain serving several guests would), the
    // test runs on device number `chan`.
    let mut devs = Vec::new();
    for func in &funcs {
        let dev = Ivshmem::open(&mut ecam, func, 2, BAR_WINDOW)
            .map_err(|e| alloc::format!("{}: cannot open ivshmem: {e}", func.bdf))?;
        devs.push(dev);
    }
    if devs.len() > 1 {
        for (i, d) in devs.iter().enumerate() {
            log::info!(
                "ivshmem #{i} {}: peer id {}, {} KiB at {:#x}, {} vectors",
                d.bdf(),
                d.id(),
                d.layout().shmem_len() / 1024,
                d.layout().shmem.address,
                d.vectors()
            );
        }
    }
    if chan >= devs.len() {
        return Err(alloc::format!(
            "chan={chan} but only {} ivshmem devices",
            devs.len()
        ));
    }
    let dev = devs.swap_remove(chan);
    // The other channels stay open (their interrupts keep counting) until the test ends.
    let _others = devs;
    let l = dev.layout();
    log::info!(
        "chan-test role={role}: ivshmem {} peer id {} region {} KiB at {:#x} (BAR2 {:?}), {} MSI-X vectors",
        dev.bdf(),
        dev.id(),
        l.shmem_len() / 1024,
        l.shmem.address,
        l.shmem.kind,
        dev.vectors()
    );
    if dev.vectors() < 2 {
        return Err(alloc::format!(
            "only {} MSI-X vectors (need 2: vectors=2 on the device)",
            dev.vectors()
        ));
    }
    if dev.region().len() < off::BULK + 4096 {
        return Err(alloc::format!(
            "region too small: {} bytes",
            dev.region().len()
        ));
    }
    rt::ready("chan-test");
    let deadline = time::now() + Duration::from_secs(timeout_s);
    if mode == "channel" {
        let params = proto::Params {
            role,
            rounds,
            bulk_mib,
            chunk_kib: arg(boot, "chunk_kib", 64)?,
            depth: arg(boot, "depth", 8)?,
            bad_refs: arg(boot, "bad_refs", 0)?,
            deadline,
        };
        return proto::run(dev, &params);
    }

    // Publish our id, learn the peer's.
    let (mine, theirs) = if role == "a" {
        (off::A_ID, off::B_ID)
    } else {
        (off::B_ID, off::A_ID)
    };
    dev.region()
        .store_u32(mine, ID_VALID | u32::from(dev.id()), Ordering::Release);
    let t_wait = time::now();
    let peer = loop {
        let v = dev.region().load_u32(theirs, Ordering::Acquire);
        if v & ID_VALID != 0 {
            break u16::try_from(v & !ID_VALID)
                .map_err(|_| alloc::format!("bad peer id {v:#x}"))?;
        }
        if time::now() >= deadline {
            return Err("the peer never published its id".into());
        }
        rt::event::wait_until(Some(time::now() + Duration::from_millis(1)));
    };
    if peer == dev.id() {
        return Err(alloc::format!("peer has our own id {peer}"));
    }
    log::info!(
        "peer {peer} found after {} ms",
        (time::now() - t_wait).as_millis()
    );
    let mut chan = Chan {
        dev,
        peer,
        irqs: [0; 2],
        deadline,
    };
    if role == "a" {
        run_a(&mut chan, rounds, bulk_mib)
    } else {
        run_b(&mut chan)
    }
}

fn ping_payload(seq: u32) -> [u8; PING_LEN] {
    let mut p = [0u8; PING_LEN];
    p[..4].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in p.iter_mut().enumerate().skip(4) {
        *b = (seq.wrapping_mul(7) as u8).wrapping_add((i as u8).wrapping_mul(13));
    }
    p
}

/// Order-dependent checksum over 8-byte words (and a ragged tail).
fn checksum(data: &[u8]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64 ^ data.len() as u64;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        h = (h.rotate_left(5) ^ v).wrapping_mul(0x0100_0000_01b3);
    }
    for &b in words.remainder() {
        h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Fills `buf` with a pseudo-random pattern seeded by `seed`.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for w in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        w.copy_from_slice(&bytes[..w.len()]);
    }
}

fn run_a(chan: &mut Chan, rounds: u32, bulk_mib: usize) -> Result<()> {
    let mut seq = 0u32;
    let mut resent = 0u32;
    let mut rtts: Vec<u64> = Vec::with_capacity(rounds as usize);
    let t_pings = time::now();
    for _ in 0..rounds {
        seq += 1;
        let payload = ping_payload(seq);
        chan.dev.region().write_bytes(off::A_DATA, &payload);
        let t0 = time::now();
        resent += chan.request(seq, CMD_PING, V_DATA)?;
        rtts.push((time::now() - t0).as_nanos() as u64);
        let mut answer = [0u8; PING_LEN];
        chan.dev.region().read_bytes(off::B_DATA, &mut answer);
        let expect = payload.map(|b| b.wrapping_add(1));
        if answer != expect {
            return Err(alloc::format!("round {seq}: wrong answer from b"));
        }
    }
    let pings_ms = (time::now() - t_pings).as_millis();

    // Bulk: chunks of at most 1 MiB (or what the region holds) through the data area.
    let room = chan.dev.region().len() - off::BULK;
    let chunk = MAX_CHUNK.min(1 << room.ilog2());
    let total = bulk_mib << 20;
    let mut buf = vec![0u8; chunk];
    let (mut sent, mut busy_ns, mut write_ns) = (0usize, 0u64, 0u64);
    while sent < total {
        let n = chunk.min(total - sent);
        seq += 1;
        fill(&mut buf[..n], u64::from(seq) << 32 | n as u64);
        let sum = checksum(&buf[..n]);
        let t0 = time::now();
        chan.dev.region().write_bytes(off::BULK, &buf[..n]);
        let t1 = time::now();
        chan.dev
            .region()
            .store_u32(off::A_LEN, n as u32, Ordering::Relaxed);
        resent += chan.request(seq, CMD_BULK, V_DATA)?;
        let t2 = time::now();
        write_ns += (t1 - t0).as_nanos() as u64;
        busy_ns += (t2 - t0).as_nanos() as u64;
        let got = chan.dev.region().load_u64(off::B_SUM);
        if got != sum {
            return Err(alloc::format!(
                "bulk chunk {seq}: b read checksum {got:#x}, wrote {sum:#x}"
            ));
        }
        sent += n;
    }

    // Done, on vector 1 both ways.
    seq += 1;
    let done_irqs = chan.irqs[usize::from(V_DONE)];
    resent += chan.request(seq, CMD_DONE, V_DONE)?;
    let t_done = time::now();
    while chan.irqs[usize::from(V_DONE)] == done_irqs {
        chan.collect();
        if time::now() - t_done > Duration::from_secs(2) {
            return Err("b's answer on vector 1 raised no interrupt".into());
        }
        rt::event::wait_until(Some(time::now() + Duration::from_millis(10)));
    }
    chan.collect();
    let data_irqs = chan.irqs[usize::from(V_DATA)];
    let requests = rounds + (total.div_ceil(chunk) as u32);
    if resent > requests / 20 + 2 {
        return Err(alloc::format!(
            "{resent} doorbells had to be resent for {requests} requests: interrupts unreliable"
        ));
    }
    // Interrupts coalesce (two eventfd writes before QEMU reads it raise one MSI) and an
    // answer may be seen in memory before its interrupt arrives, so fewer interrupts than
    // answers is normal; far fewer means the loop ran on timeouts.
    if data_irqs < requests / 4 {
        return Err(alloc::format!(
            "only {data_irqs} doorbell interrupts for {requests} answers"
        ));
    }
    rtts.sort_unstable();
    let pct = |p: usize| rtts.get((rtts.len() * p / 100).min(rtts.len().saturating_sub(1)));
    let us = |ns: Option<&u64>| ns.map_or(0, |n| n.div_ceil(1000));
    let mib_s = |bytes: usize, ns: u64| (bytes as u64 * 1_000_000_000 / ns.max(1)) >> 20;
    log::info!(
        "CHAN-RESULT ok role=a rounds={rounds} rtt_us_median={} rtt_us_min={} rtt_us_p99={} \
         pings_ms={pings_ms} bulk_mib={bulk_mib} chunk_kib={} bw_mib_s={} write_mib_s={} \
         irqs={data_irqs}+{} resent={resent}",
        us(pct(50)),
        us(rtts.first()),
        us(pct(99)),
        chunk >> 10,
        mib_s(total, busy_ns),
        mib_s(total, write_ns),
        chan.irqs[usize::from(V_DONE)],
    );
    Ok(())
}

fn run_b(chan: &mut Chan) -> Result<()> {
    let mut answered = 0u32;
    let mut resends_seen = 0u32;
    let (mut pings, mut chunks, mut bytes, mut reanswers) = (0u32, 0u32, 0usize, 0u32);
    let mut buf = Vec::new();
    loop {
        chan.collect();
        let r = chan.dev.region();
        let seq = r.load_u32(off::A_SEQ, Ordering::Acquire);
        let resends = r.load_u32(off::A_RESEND, Ordering::Acquire);
        if seq == answered {
            if resends != resends_seen && answered != 0 {
                // a re-rang for what we answered: our doorbell was lost; ring again.
                resends_seen = resends;
                reanswers += 1;
                chan.dev.ring(chan.peer, V_DATA);
            }
            chan.nap("a's next request")?;
            continue;
        }
        if seq != answered.wrapping_add(1) {
            return Err(alloc::format!("a jumped from request {answered} to {seq}"));
        }
        let mut vector = V_DATA;
        let mut done = false;
        match r.load_u32(off::A_CMD, Ordering::Relaxed) {
            CMD_PING => {
                let mut p = [0u8; PING_LEN];
                r.read_bytes(off::A_DATA, &mut p);
                r.write_bytes(off::B_DATA, &p.map(|b| b.wrapping_add(1)));
                pings += 1;
            }
            CMD_BULK => {
                // Untrusted length: must fit the data area.
                let n = r.load_u32(off::A_LEN, Ordering::Relaxed) as usize;
                if n > r.len() - off::BULK {
                    return Err(alloc::format!("bulk length {n} beyond the region"));
                }
                buf.resize(n, 0);
                r.read_bytes(off::BULK, &mut buf);
                r.store_u64(off::B_SUM, checksum(&buf));
                chunks += 1;
                bytes += n;
            }
            CMD_DONE => {
                // The done command came on vector 1: its interrupt must have been seen (or
                // arrive shortly).
                let t = time::now();
                while chan.irqs[usize::from(V_DONE)] == 0 {
                    if time::now() - t > Duration::from_secs(2) {
                        return Err("a's done doorbell on vector 1 raised no interrupt".into());
                    }
                    rt::event::wait_until(Some(time::now() + Duration::from_millis(10)));
                    chan.collect();
                }
                vector = V_DONE;
                done = true;
            }
            c => return Err(alloc::format!("unknown command {c} in request {seq}")),
        }
        chan.dev
            .region()
            .store_u32(off::B_SEQ, seq, Ordering::Release);
        chan.dev.ring(chan.peer, vector);
        answered = seq;
        if done {
            log::info!(
                "CHAN-RESULT ok role=b rounds={pings} bulk_chunks={chunks} bulk_mib={} irqs={}+{} reanswered={reanswers}",
                bytes >> 20,
                chan.irqs[0],
                chan.irqs[1]
            );
            return Ok(());
        }
    }
}
