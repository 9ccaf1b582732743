//! The local disk: hal's non-blocking virtio-blk driver (`hal::virtio_blk`, owned buffers, many
//! requests in flight) over the PCI transport, as a `blkback::Volume`.
//!
//! `submit` publishes a request to the device's queue (requests beyond the queue wait here,
//! in order); `poll` (or `kick`) notifies the device once for everything published since; `poll` then returns
//! what the device completed, in its order. Several guests' requests are in flight at once
//! (through `DiskMux`). Completions raise an MSI-X interrupt when the disk was opened with a
//! handler, which wakes the caller's event loop. A FLUSH is `VIRTIO_BLK_T_FLUSH` (QEMU offers
//! `VIRTIO_BLK_F_FLUSH` with its default write-back cache; xtask's disks use it), answered only
//! after the device completed it.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use blkback::volume::{Geometry, IoCompletion, IoKind, IoRequest, Volume};
use hal::ecam::Ecam;
use hal::pci::Function;
use hal::virtio_blk::pci::{self as vblk, PciBlk};
use hal::virtio_blk::{self, BlkError, Op, Request, SECTOR};

/// Virtqueue size: up to `QUEUE_SIZE / 3` requests in flight (QEMU's default queue is 256).
pub const QUEUE_SIZE: usize = 256;
/// Requests accepted beyond what the device holds (they wait here for a free slot).
const MAX_WAITING: usize = 64;

/// The first virtio-blk function on the ECAM's buses.
pub fn find(ecam: &Ecam) -> Option<Function> {
    vblk::find(ecam)
}

/// The disk.
pub struct Disk {
    blk: PciBlk<QUEUE_SIZE>,
    geometry: Geometry,
    /// Accepted while the device's queue was full, in order.
    waiting: VecDeque<Request>,
    /// Refused before reaching the device.
    done: VecDeque<IoCompletion>,
    /// Whether completions raise an interrupt (else the caller must poll while requests are in flight).
    pub interrupts: bool,
    /// Operations completed.
    pub ops: u64,
    /// Device errors.
    pub errors: u64,
    /// Notify the device at each submission (else at the next poll or kick).
    pub kick_early: bool,
}

impl Disk {
    /// Brings `func` up: BARs from `window`, the transport, bus mastering, the driver, and with
    /// `on_irq` a completion interrupt calling it.
    pub fn open(ecam: &mut Ecam, func: Function, window: (u64, u64), on_irq: Option<fn()>) -> Result<Self, &'static str> {
        let level = log::max_level();
        log::set_max_level(log::LevelFilter::Warn);
        let opened = vblk::open::<QUEUE_SIZE>(ecam, func, window, on_irq);
        log::set_max_level(level);
        let opened = opened.map_err(|_| "virtio-blk init")?;
        let blk = opened.blk;
        let geometry = Geometry {
            size: blk.capacity() * SECTOR as u64,
            sector_size: SECTOR as u32,
            read_only: blk.read_only(),
            flush: true,
            discard: false,
        };
        Ok(Self {
            blk,
            geometry,
            waiting: VecDeque::new(),
            done: VecDeque::new(),
            interrupts: opened.vector.is_some(),
            ops: 0,
            errors: 0,
            kick_early: false,
        })
    }

    /// Requests submitted and not yet completed (at the device or waiting for it).
    pub fn in_flight(&self) -> usize {
        self.blk.in_flight() + self.waiting.len()
    }

    /// Notifies the device of the requests submitted since the last poll or kick (a poll does
    /// it too: call this before sleeping without polling).
    pub fn kick(&mut self) {
        self.blk.kick();
    }

    /// Whether [`Volume::poll`] has a completion to return now.
    pub fn has_completion(&self) -> bool {
        !self.done.is_empty() || self.blk.has_completion()
    }

    /// The driver's counters.
    pub fn stats(&self) -> virtio_blk::BlkStats {
        self.blk.stats()
    }

    fn refuse(&mut self, tag: u64, e: blkback::Error) {
        self.ops += 1;
        self.errors += 1;
        self.done.push_back(IoCompletion { tag, result: Err(e), data: Vec::new() });
    }

    fn feed(&mut self) {
        while let Some(r) = self.waiting.pop_front() {
            if let Err(virtio_blk::Full(r)) = self.blk.submit(r) {
                self.waiting.push_front(r);
                break;
            }
        }
    }
}

impl Volume for Disk {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn can_submit(&self) -> bool {
        self.waiting.len() + self.done.len() < MAX_WAITING
    }

    fn submit(&mut self, req: IoRequest) {
        let ss = SECTOR as u64;
        let in_disk = req.offset.checked_add(req.len).is_some_and(|e| e <= self.geometry.size);
        let aligned = req.offset.is_multiple_of(ss) && req.len.is_multiple_of(ss);
        let refuse = match req.kind {
            IoKind::Flush => None,
            IoKind::Discard => Some(blkback::Error::Unsupported),
            _ if !in_disk => Some(blkback::Error::OutOfRange),
            _ if !aligned || req.len == 0 => Some(blkback::Error::Misaligned),
            IoKind::Write if self.geometry.read_only => Some(blkback::Error::ReadOnly),
            IoKind::Write if req.data.len() as u64 != req.len => Some(blkback::Error::OutOfRange),
            _ => None,
        };
        if let Some(e) = refuse {
            return self.refuse(req.tag, e);
        }
        let op = match req.kind {
            IoKind::Read => Op::Read,
            IoKind::Write => Op::Write,
            _ => Op::Flush,
        };
        let r = Request { tag: req.tag, op, sector: req.offset / ss, len: req.len as usize, data: req.data };
        if !self.waiting.is_empty() {
            self.waiting.push_back(r);
        } else if let Err(virtio_blk::Full(r)) = self.blk.submit(r) {
            self.waiting.push_back(r);
        } else if self.kick_early {
            // The device starts on it while the caller prepares the next ones (a device busy
            // with the queue suppresses the notification, so a batch costs about one).
            self.blk.kick();
        }
    }

    fn poll(&mut self, _now_us: u64) -> Option<IoCompletion> {
        // One notification for everything published since the last poll.
        self.blk.kick();
        if let Some(c) = self.done.pop_front() {
            return Some(c);
        }
        let c = self.blk.poll()?;
        if !self.waiting.is_empty() {
            self.feed();
            self.blk.kick();
        }
        self.ops += 1;
        let result = c.result.map_err(|e| {
            self.errors += 1;
            match e {
                BlkError::Misaligned => blkback::Error::Misaligned,
                BlkError::OutOfRange => blkback::Error::OutOfRange,
                BlkError::ReadOnly => blkback::Error::ReadOnly,
                BlkError::Unsupported => blkback::Error::Unsupported,
                BlkError::Io => blkback::Error::Io,
            }
        });
        let data = if c.op == Op::Read { c.data } else { Vec::new() };
        Some(IoCompletion { tag: c.tag, result, data })
    }
}
