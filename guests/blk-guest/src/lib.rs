//! # blk-guest: a guest's storage workloads (host-tested logic)
//!
//! The image (`src/main.rs`) gives the workload a block device: the iConnect channel to
//! blk-dd through `blkfront` ([`FrontDev`]), or its own virtio-blk disk (`disk=virtio`). This
//! library parses the command line ([`GuestConfig`]) and runs the workloads over any [`Dev`]:
//!
//! * `work=verify[:<KiB>[:<passes>]]` — per pass: writes a pattern over the first KiB of the
//!   volume (64 KiB requests, 8 in flight), flushes (prints `ICONNECT-FLUSHED name= pass=
//!   bytes= seed=` once the flush response came), reads everything back and compares it byte
//!   by byte. The pattern is [`pattern_byte`]`(seed + pass, offset)`, so the host can check
//!   the disk file or NBD export independently.
//! * `work=iops:<read|write>:<qd>:<secs>` — 4 KiB random requests at queue depth qd over the
//!   first 64 MiB (prints `ICONNECT-IOPS-START` when it starts, so the host can time it).
//! * `work=hostile[:requests]` (channel only, [`hostile`]) — requests outside the volume, with a
//!   bad page reference, with 200 direct segments and with 4000 indirect segments: every one
//!   must be answered with an error, and the channel must still serve a normal write/read
//!   afterwards.
//! * `work=hostile:ring` (channel only) — a wild request producer index: the backend must
//!   close the channel (and only this one).
//!
//! Results: `ICONNECT-RESULT ok|FAIL name=<g> work=<w> key=value...`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod hostile;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use blkfront::channel::ChannelPages;
use blkfront::{Blkfront, Error as FrontError};
use xen_abi::blkif::Status;
use xen_abi::shmem::SharedMem;

/// Bytes per `verify` request.
pub const VERIFY_CHUNK: usize = 64 << 10;
/// Requests in flight during `verify`.
pub const VERIFY_QD: usize = 8;
/// `iops` requests are 4 KiB...
pub const IOPS_BLOCK: usize = 4096;
/// ... at random offsets in the first 64 MiB (or the whole volume if smaller).
pub const IOPS_SPAN: u64 = 64 << 20;

/// The byte at `offset` of the pattern `seed`: the host recomputes it (xtask's `blk.rs` has
/// its own copy on purpose: the host's check does not run guest code; both pin the same
/// known answers in their tests).
pub fn pattern_byte(seed: u64, offset: u64) -> u8 {
    let word = offset / 8;
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ word.wrapping_add(0x632b_e59b_d9b4_e019);
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> ((offset % 8) * 8)) as u8
}

/// Fills `buf` with the pattern `seed` as it sits at `offset`.
pub fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(seed, offset + i as u64);
    }
}

/// What the guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Write, flush, read back, compare.
    Verify {
        /// Bytes per pass.
        bytes: u64,
        /// Passes (pass p uses seed + p).
        passes: u32,
    },
    /// 4 KiB random I/O.
    Iops {
        /// Writes (else reads).
        write: bool,
        /// Queue depth.
        qd: usize,
        /// Duration.
        secs: u32,
    },
    /// Invalid requests (channel only): each must be refused, the channel must keep working.
    Hostile,
    /// A wild request producer index (channel only): the backend must close this channel.
    HostileRing,
}

/// Which block device the guest uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disk {
    /// The iConnect channel (ivshmem device `chan`, default 0).
    Channel(usize),
    /// Its own virtio-blk disk.
    Virtio,
}

/// The guest's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    /// `name=` (default `g1`).
    pub name: String,
    /// `vol=` the volume name asked for (default = name).
    pub volume: String,
    /// `work=`.
    pub work: Work,
    /// The `work=` text as given.
    pub work_text: String,
    /// `disk=virtio` or the channel (`chan=<n>`).
    pub disk: Disk,
    /// `seed=` pattern seed (default 1).
    pub seed: u64,
    /// `timeout=` seconds to wait for the backend (default 60).
    pub timeout_s: u32,
    /// `heartbeat_ms=` the liveness period promised to the backend (default 500; 0: none).
    pub heartbeat_ms: u64,
}

fn get<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_ascii_whitespace().find_map(|t| match t.split_once('=') {
        Some((k, v)) if k == key => Some(v),
        None if t == key => Some(""),
        _ => None,
    })
}

impl GuestConfig {
    /// Parses `name= vol= work= disk= chan= seed= timeout= heartbeat_ms=`.
    pub fn from_cmdline(cmdline: &str) -> Result<Self, String> {
        let name = get(cmdline, "name").unwrap_or("g1").to_string();
        let volume = get(cmdline, "vol").unwrap_or(&name).to_string();
        let num = |k: &str, d: u64| -> Result<u64, String> {
            get(cmdline, k).map_or(Ok(d), |v| v.parse().map_err(|_| format!("bad {k}={v}")))
        };
        let work_text = get(cmdline, "work").unwrap_or("verify").to_string();
        let mut it = work_text.split(':');
        let bad = || format!("bad work={work_text}");
        let work = match it.next() {
            Some("verify") => {
                let kib: u64 = it.next().map_or(Ok(1024), str::parse).map_err(|_| bad())?;
                let passes: u32 = it.next().map_or(Ok(1), str::parse).map_err(|_| bad())?;
                if kib == 0 || passes == 0 {
                    return Err(bad());
                }
                Work::Verify { bytes: kib * 1024, passes }
            }
            Some("iops") => {
                let write = match it.next() {
                    Some("read") => false,
                    Some("write") => true,
                    _ => return Err(bad()),
                };
                let qd: usize = it.next().and_then(|v| v.parse().ok()).filter(|&q| (1..=64).contains(&q)).ok_or_else(bad)?;
                let secs: u32 = it.next().and_then(|v| v.parse().ok()).filter(|&s| s > 0).ok_or_else(bad)?;
                Work::Iops { write, qd, secs }
            }
            Some("hostile") => match it.next() {
                None | Some("requests") => Work::Hostile,
                Some("ring") => Work::HostileRing,
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        };
        let disk = match get(cmdline, "disk") {
            Some("virtio") => Disk::Virtio,
            None | Some("channel") => Disk::Channel(num("chan", 0)? as usize),
            Some(v) => return Err(format!("bad disk={v}")),
        };
        Ok(Self {
            name,
            volume,
            work,
            work_text,
            disk,
            seed: num("seed", 1)?,
            timeout_s: num("timeout", 60)? as u32,
            heartbeat_ms: num("heartbeat_ms", 500)?,
        })
    }
}

/// A finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// The id the device returned at submission.
    pub id: u64,
    /// Succeeded.
    pub ok: bool,
    /// Data of a read.
    pub data: Vec<u8>,
}

/// A block device as the workloads see it (queue, then collect completions).
pub trait Dev {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Whether another request can be queued now.
    fn can_queue(&self) -> bool;
    /// Queues a read.
    fn read(&mut self, offset: u64, len: usize) -> Result<u64, String>;
    /// Queues a write.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<u64, String>;
    /// Queues a flush.
    fn flush(&mut self) -> Result<u64, String>;
    /// Whether the device offers discard.
    fn offers_discard(&self) -> bool;
    /// Queues a discard.
    fn discard(&mut self, offset: u64, len: u64) -> Result<u64, String>;
    /// Makes queued requests visible to the device.
    fn kick(&mut self);
    /// The next completion.
    fn next(&mut self) -> Result<Option<Done>, String>;
}

/// [`Dev`] over `blkfront` on an iConnect channel.
pub struct FrontDev<R: SharedMem, M: SharedMem> {
    /// The engine (ring in `R`).
    pub front: Blkfront<R>,
    /// Its pages.
    pub pages: ChannelPages<M>,
    /// The backend must be notified.
    pub notify: bool,
}

fn front_err(e: FrontError) -> String {
    format!("blkfront: {e}").replace(' ', "_")
}

impl<R: SharedMem, M: SharedMem> Dev for FrontDev<R, M> {
    fn size(&self) -> u64 {
        self.front.info().size()
    }
    fn can_queue(&self) -> bool {
        self.front.can_queue()
    }
    fn read(&mut self, offset: u64, len: usize) -> Result<u64, String> {
        self.front.read(&mut self.pages, offset, len).map_err(front_err)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<u64, String> {
        self.front.write(&mut self.pages, offset, data).map_err(front_err)
    }
    fn flush(&mut self) -> Result<u64, String> {
        self.front.flush().map_err(front_err)
    }
    fn offers_discard(&self) -> bool {
        self.front.info().discard && !self.front.info().read_only
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<u64, String> {
        self.front.discard(offset, len).map_err(front_err)
    }
    fn kick(&mut self) {
        self.notify |= self.front.publish();
    }
    fn next(&mut self) -> Result<Option<Done>, String> {
        Ok(self.front.poll(&mut self.pages).map_err(front_err)?.map(|c| Done {
            id: c.id,
            ok: c.status == Status::Okay,
            data: c.data,
        }))
    }
}

/// [`Dev`] over a `blkback::Volume` (`disk=virtio`: blk-dd's virtio-blk driver; tests: an
/// in-memory volume).
pub struct VolumeDev<V: blkback::Volume> {
    /// The volume.
    pub vol: V,
    next_id: u64,
}

impl<V: blkback::Volume> VolumeDev<V> {
    /// Wraps `vol`.
    pub fn new(vol: V) -> Self {
        Self { vol, next_id: 1 }
    }

    fn submit(&mut self, kind: blkback::IoKind, offset: u64, len: u64, data: Vec<u8>) -> u64 {
        let tag = self.next_id;
        self.next_id += 1;
        self.vol.submit(blkback::IoRequest { tag, kind, offset, len, data });
        tag
    }
}

impl<V: blkback::Volume> Dev for VolumeDev<V> {
    fn size(&self) -> u64 {
        self.vol.geometry().size
    }
    fn can_queue(&self) -> bool {
        self.vol.can_submit()
    }
    fn read(&mut self, offset: u64, len: usize) -> Result<u64, String> {
        Ok(self.submit(blkback::IoKind::Read, offset, len as u64, Vec::new()))
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<u64, String> {
        Ok(self.submit(blkback::IoKind::Write, offset, data.len() as u64, data.to_vec()))
    }
    fn flush(&mut self) -> Result<u64, String> {
        Ok(self.submit(blkback::IoKind::Flush, 0, 0, Vec::new()))
    }
    fn offers_discard(&self) -> bool {
        let g = self.vol.geometry();
        g.discard && !g.read_only
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<u64, String> {
        Ok(self.submit(blkback::IoKind::Discard, offset, len, Vec::new()))
    }
    fn kick(&mut self) {}
    fn next(&mut self) -> Result<Option<Done>, String> {
        Ok(self.vol.poll(0).map(|c| Done { id: c.tag, ok: c.result.is_ok(), data: c.data }))
    }
}

/// The end of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Passed.
    pub ok: bool,
    /// `key=value ...` for the result line.
    pub fields: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Write,
    Flush,
    Read,
    Discard,
}

/// Latencies in µs as a log-linear histogram of fixed size (a run at tens of thousands of
/// IOPS would otherwise keep megabytes of samples in a 16 MiB guest): exact below 2048 µs,
/// within 1/128 above.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    counts: Vec<u32>,
    total: u64,
}

const EXACT: u32 = 2048;
const SUB_BITS: u32 = 7;

impl LatencyHistogram {
    /// Empty.
    pub fn new() -> Self {
        let buckets = EXACT as usize + (32 - EXACT.trailing_zeros() as usize) * (1 << SUB_BITS);
        Self { counts: vec![0; buckets], total: 0 }
    }

    fn bucket(v: u32) -> usize {
        if v < EXACT {
            return v as usize;
        }
        let e = 31 - v.leading_zeros();
        let sub = (v >> (e - SUB_BITS)) & ((1 << SUB_BITS) - 1);
        EXACT as usize + ((e - EXACT.trailing_zeros()) << SUB_BITS) as usize + sub as usize
    }

    fn value(b: usize) -> u32 {
        if b < EXACT as usize {
            return b as u32;
        }
        let i = (b - EXACT as usize) as u32;
        let e = (i >> SUB_BITS) + EXACT.trailing_zeros();
        (1 << e) | ((i & ((1 << SUB_BITS) - 1)) << (e - SUB_BITS))
    }

    /// Adds a sample.
    pub fn record(&mut self, us: u32) {
        self.counts[Self::bucket(us)] += 1;
        self.total += 1;
    }

    /// The `q`th percentile (the sample at rank `total * q / 100` in sorted order, as its
    /// bucket's lower bound); 0 without samples.
    pub fn percentile(&self, q: u64) -> u32 {
        if self.total == 0 {
            return 0;
        }
        let rank = (self.total * q / 100).min(self.total - 1);
        let mut seen = 0u64;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen > rank {
                return Self::value(b);
            }
        }
        0
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

/// A running workload (`verify` or `iops`).
pub struct Workload {
    work: Work,
    name: String,
    seed: u64,
    region: u64,
    pass: u32,
    phase: Phase,
    next_off: u64,
    /// id -> (offset, len, started µs).
    inflight: BTreeMap<u64, (u64, usize, u64)>,
    started_us: u64,
    end_us: u64,
    ops: u64,
    errors: u64,
    lat: LatencyHistogram,
    rng: u64,
    bytes: u64,
    flush_lat_us: u64,
    size: u64,
    /// `ok` (discard past the region answered Okay) or `unsupported` (not offered).
    discard: &'static str,
}

impl Workload {
    /// Starts `cfg.work` on a device of `size` bytes at `now_us`.
    pub fn new(cfg: &GuestConfig, size: u64, now_us: u64) -> Self {
        let region = match cfg.work {
            Work::Verify { bytes, .. } => bytes.min(size) / VERIFY_CHUNK as u64 * VERIFY_CHUNK as u64,
            _ => IOPS_SPAN.min(size) / IOPS_BLOCK as u64 * IOPS_BLOCK as u64,
        };
        let end_us = match cfg.work {
            Work::Iops { secs, .. } => now_us + u64::from(secs) * 1_000_000,
            _ => u64::MAX,
        };
        if let Work::Iops { .. } = cfg.work {
            log::info!("ICONNECT-IOPS-START name={} work={}", cfg.name, cfg.work_text);
        }
        Self {
            work: cfg.work,
            name: cfg.name.clone(),
            seed: cfg.seed,
            region,
            pass: 0,
            phase: Phase::Write,
            next_off: 0,
            inflight: BTreeMap::new(),
            started_us: now_us,
            end_us,
            ops: 0,
            errors: 0,
            lat: LatencyHistogram::new(),
            rng: cfg.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1,
            bytes: 0,
            flush_lat_us: 0,
            size,
            discard: "unsupported",
        }
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Queues what it can, collects completions; `Some(report)` when finished. Requests in
    /// flight when it returns `None` complete on the device's own time (wait for an interrupt).
    pub fn poll<D: Dev + ?Sized>(&mut self, dev: &mut D, now_us: u64) -> Result<Option<Report>, String> {
        if self.region == 0 {
            return Ok(Some(Report { ok: false, fields: "why=volume_too_small".into() }));
        }
        while let Some(d) = dev.next()? {
            let Some((off, len, t0)) = self.inflight.remove(&d.id) else {
                return Err(format!("completion for unknown id {}", d.id));
            };
            self.ops += 1;
            if !d.ok {
                self.errors += 1;
            }
            match self.work {
                Work::Verify { .. } => {
                    if !d.ok {
                        return Ok(Some(self.fail(format!("why=io_error phase={:?} offset={off}", self.phase))));
                    }
                    match self.phase {
                        Phase::Flush => {
                            self.flush_lat_us = now_us - t0;
                            log::info!(
                                "ICONNECT-FLUSHED name={} pass={} bytes={} seed={}",
                                self.name,
                                self.pass,
                                self.region,
                                self.seed + u64::from(self.pass)
                            );
                            self.phase = Phase::Read;
                            self.next_off = 0;
                        }
                        Phase::Read => {
                            let seed = self.seed + u64::from(self.pass);
                            if let Some(i) = (0..len).find(|&i| d.data.get(i).copied() != Some(pattern_byte(seed, off + i as u64))) {
                                return Ok(Some(self.fail(format!(
                                    "why=mismatch offset={} got={:#04x} want={:#04x}",
                                    off + i as u64,
                                    d.data.get(i).copied().unwrap_or(0),
                                    pattern_byte(seed, off + i as u64)
                                ))));
                            }
                            self.bytes += len as u64;
                        }
                        Phase::Write => self.bytes += len as u64,
                        Phase::Discard => {
                            self.discard = "ok";
                            return Ok(Some(self.verify_report(now_us)));
                        }
                    }
                }
                _ => {
                    self.lat.record((now_us - t0).min(u64::from(u32::MAX)) as u32);
                }
            }
        }
        match self.work {
            Work::Verify { passes, .. } => {
                if self.inflight.is_empty() && self.next_off >= self.region {
                    match self.phase {
                        Phase::Write => {
                            let id = dev.flush()?;
                            self.inflight.insert(id, (0, 0, now_us));
                            self.phase = Phase::Flush;
                        }
                        Phase::Read if self.pass + 1 < passes => {
                            self.pass += 1;
                            self.phase = Phase::Write;
                            self.next_off = 0;
                        }
                        // After the last pass: a discard just past the verified region, if the
                        // volume offers it (the host's check of the region stays exact).
                        Phase::Read if dev.offers_discard() && self.region + VERIFY_CHUNK as u64 <= self.size => {
                            let id = dev.discard(self.region, VERIFY_CHUNK as u64)?;
                            self.inflight.insert(id, (self.region, VERIFY_CHUNK, now_us));
                            self.phase = Phase::Discard;
                        }
                        Phase::Read => return Ok(Some(self.verify_report(now_us))),
                        Phase::Flush | Phase::Discard => {}
                    }
                }
                while matches!(self.phase, Phase::Write | Phase::Read) && self.next_off < self.region && self.inflight.len() < VERIFY_QD && dev.can_queue() {
                    let off = self.next_off;
                    let id = if self.phase == Phase::Write {
                        let mut buf = alloc::vec![0u8; VERIFY_CHUNK];
                        fill_pattern(self.seed + u64::from(self.pass), off, &mut buf);
                        dev.write(off, &buf)?
                    } else {
                        dev.read(off, VERIFY_CHUNK)?
                    };
                    self.inflight.insert(id, (off, VERIFY_CHUNK, now_us));
                    self.next_off += VERIFY_CHUNK as u64;
                }
            }
            Work::Iops { write, qd, .. } => {
                if now_us >= self.end_us {
                    if self.inflight.is_empty() {
                        return Ok(Some(self.iops_report(now_us)));
                    }
                } else {
                    let blocks = self.region / IOPS_BLOCK as u64;
                    while self.inflight.len() < qd && dev.can_queue() {
                        let off = self.rand() % blocks * IOPS_BLOCK as u64;
                        let id = if write {
                            let mut buf = [0u8; IOPS_BLOCK];
                            fill_pattern(self.seed, off, &mut buf);
                            dev.write(off, &buf)?
                        } else {
                            dev.read(off, IOPS_BLOCK)?
                        };
                        self.inflight.insert(id, (off, IOPS_BLOCK, now_us));
                    }
                }
            }
            Work::Hostile | Work::HostileRing => return Err("hostile is not a queued workload".into()),
        }
        dev.kick();
        Ok(None)
    }

    /// Requests completed so far.
    pub fn completed(&self) -> u64 {
        self.ops
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// When an `iops` run stops queueing (µs).
    pub fn end_us(&self) -> Option<u64> {
        (self.end_us != u64::MAX).then_some(self.end_us)
    }

    fn fail(&self, why: String) -> Report {
        Report { ok: false, fields: format!("{why} pass={} ops={}", self.pass, self.ops) }
    }

    fn verify_report(&self, now_us: u64) -> Report {
        let us = (now_us - self.started_us).max(1);
        Report {
            ok: true,
            fields: format!(
                "bytes={} passes={} ops={} secs={}.{:03} kbps={} flush_us={} seed={} discard={}",
                self.region,
                self.pass + 1,
                self.ops,
                us / 1_000_000,
                us / 1000 % 1000,
                self.bytes * 8 * 1000 / us,
                self.flush_lat_us,
                self.seed + u64::from(self.pass),
                self.discard
            ),
        }
    }

    fn iops_report(&mut self, now_us: u64) -> Report {
        let us = (now_us - self.started_us).max(1);
        let p = |q: u64| self.lat.percentile(q);
        Report {
            ok: self.errors == 0 && self.ops > 0,
            fields: format!(
                "ops={} errors={} secs={}.{:03} iops={} lat_us_p50={} lat_us_p99={}",
                self.ops,
                self.errors,
                us / 1_000_000,
                us / 1000 % 1000,
                self.ops * 1_000_000 / us,
                p(50),
                p(99)
            ),
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn latency_histogram_matches_sorted_samples() {
        let mut samples: Vec<u32> = (0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) % 50_000 + i % 7).collect();
        samples.extend([0, 1, 2047, 2048, 2049, u32::MAX, 1 << 31]);
        let mut h = LatencyHistogram::new();
        for &v in &samples {
            h.record(v);
        }
        samples.sort_unstable();
        for q in [0, 1, 50, 90, 99, 100] {
            let exact = samples[(samples.len() * q / 100).min(samples.len() - 1)];
            let got = h.percentile(q as u64);
            assert!(got <= exact && u64::from(exact - got) * 128 <= u64::from(exact), "q={q}: {got} vs {exact}");
            if exact < 2048 {
                assert_eq!(got, exact);
            }
        }
        assert_eq!(LatencyHistogram::new().percentile(50), 0);
    }

    use super::*;
    use blkback::volume::{MemVolume, Order};

    fn vol(size: u64) -> MemVolume {
        let g = blkback::Geometry { size, sector_size: 512, read_only: false, flush: true, discard: true };
        let mut v = MemVolume::new(g, 16);
        v.set_order(Order::Shuffled(5));
        v
    }

    fn run(cmd: &str, dev: &mut VolumeDev<MemVolume>) -> Report {
        let cfg = GuestConfig::from_cmdline(cmd).unwrap();
        let mut w = Workload::new(&cfg, dev.size(), 0);
        for t in 0..1_000_000u64 {
            if let Some(r) = w.poll(dev, t * 200).unwrap() {
                return r;
            }
        }
        panic!("workload did not finish");
    }

    #[test]
    fn verify_writes_the_pattern_durably_and_reads_it_back() {
        let mut dev = VolumeDev::new(vol(4 << 20));
        let r = run("name=g1 work=verify:1024:2 seed=7", &mut dev);
        assert!(r.ok, "{}", r.fields);
        assert!(r.fields.contains("bytes=1048576 passes=2"), "{}", r.fields);
        assert!(r.fields.contains("discard=ok"), "{}", r.fields);
        // What the host checks: the last pass's pattern, durable.
        let d = dev.vol.durable();
        assert!((0..1 << 20).all(|o| d[o] == pattern_byte(8, o as u64)));
        assert!(d[1 << 20..].iter().all(|&b| b == 0));
        assert_eq!(dev.vol.flushes(), 2);
    }

    #[test]
    fn verify_detects_a_lying_disk() {
        let mut dev = VolumeDev::new(vol(1 << 20));
        // The disk fails one write: reported as an I/O error.
        dev.vol.fail_tag(3);
        let r = run("work=verify:512", &mut dev);
        assert!(!r.ok && r.fields.contains("why=io_error"), "{}", r.fields);
    }

    #[test]
    fn iops_counts_completions() {
        let mut dev = VolumeDev::new(vol(1 << 20));
        let r = run("work=iops:write:32:1", &mut dev);
        assert!(r.ok, "{}", r.fields);
        assert!(dev.vol.submitted() > 1000);
    }

    #[test]
    fn pattern_known_answers() {
        // The same values are pinned in xtask/src/blk.rs (the host's independent copy).
        let v: Vec<u8> = (0..12).map(|o| pattern_byte(11, o)).collect();
        assert_eq!(v, [6, 123, 211, 247, 129, 37, 172, 140, 164, 146, 81, 221]);
        let w: Vec<u8> = [4093, 4094, 4095, 4096].iter().map(|&o| pattern_byte(1 << 40, o)).collect();
        assert_eq!(w, [196, 205, 185, 71]);
    }

    #[test]
    fn command_line() {
        let c = GuestConfig::from_cmdline("name=g2 vol=data work=iops:read:32:5 disk=virtio").unwrap();
        assert_eq!((c.volume.as_str(), c.work, c.disk), ("data", Work::Iops { write: false, qd: 32, secs: 5 }, Disk::Virtio));
        assert_eq!(GuestConfig::from_cmdline("work=hostile:ring").unwrap().work, Work::HostileRing);
        for bad in ["work=hostile:x", "work=iops:read:0:5", "work=iops:x:1:1", "work=verify:0", "disk=usb", "work=fly"] {
            assert!(GuestConfig::from_cmdline(bad).is_err(), "{bad}");
        }
    }
}
