//! The seam to where a guest's blocks live: [`Volume`].
//!
//! A volume is asynchronous: the engine [`submit`](Volume::submit)s operations tagged with its
//! own ids and later [`poll`](Volume::poll)s completions, in any order. That fits a local
//! virtio-blk disk (a virtqueue) as well as an NBD export with many requests in flight (where a
//! dropped connection becomes failed or retried operations, never a silent loss). Offsets and
//! lengths are bytes inside the volume; the engine checks them against [`Geometry`] before
//! submitting, and a volume must check them again (see [`crate::volumes::Slice`]).
//!
//! Durability contract: a completed WRITE may sit in a volatile cache; a FLUSH completes `Ok`
//! only once every WRITE that completed before the FLUSH was submitted is durable (virtio-blk
//! `VIRTIO_BLK_T_FLUSH`, NBD `NBD_CMD_FLUSH`). The engine answers a guest's flush only then.
//!
//! [`MemVolume`] is an in-memory volume for tests: a volatile view plus a durable image, a
//! configurable completion order, failure injection, and "power loss".

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use crate::Error;

/// What a volume looks like to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Size in bytes (a multiple of `sector_size`).
    pub size: u64,
    /// Logical sector size exposed to the guest: 512 or 4096.
    pub sector_size: u32,
    /// Writes and discards are refused.
    pub read_only: bool,
    /// The volume has a volatile cache and supports FLUSH (`feature-flush-cache`).
    pub flush: bool,
    /// The volume supports DISCARD (`feature-discard`).
    pub discard: bool,
}

impl Geometry {
    /// Checks the sector size (512 or 4096) and that the size is a whole number of sectors.
    pub fn validate(&self) -> Result<(), Error> {
        if !matches!(self.sector_size, 512 | 4096) || !self.size.is_multiple_of(u64::from(self.sector_size)) {
            return Err(Error::BadGeometry);
        }
        Ok(())
    }

    /// The xenbus `sectors` value: the size in units of `sector-size`.
    pub fn sectors(&self) -> u64 {
        self.size / u64::from(self.sector_size)
    }
}

/// Kind of a volume operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoKind {
    /// Read `len` bytes at `offset`.
    Read,
    /// Write `data` at `offset`.
    Write,
    /// Make every write completed before this was submitted durable.
    Flush,
    /// Discard `len` bytes at `offset` (contents afterwards unspecified; zero for `MemVolume`).
    Discard,
}

/// One operation submitted to a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoRequest {
    /// The engine's tag, echoed by the completion.
    pub tag: u64,
    /// What to do.
    pub kind: IoKind,
    /// Byte offset in the volume (0 for flush).
    pub offset: u64,
    /// Byte length (0 for flush; `data.len()` for writes).
    pub len: u64,
    /// The payload of a write (empty otherwise).
    pub data: Vec<u8>,
}

/// One finished operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoCompletion {
    /// The tag of the request.
    pub tag: u64,
    /// `Ok`, or why it failed ([`Error::Io`], [`Error::Unsupported`], ...).
    pub result: Result<(), Error>,
    /// The data of a successful read (`len` bytes); empty otherwise.
    pub data: Vec<u8>,
}

/// Where a guest's blocks live (see the [module documentation](self)).
pub trait Volume {
    /// The volume's geometry.
    fn geometry(&self) -> Geometry;

    /// Whether [`submit`](Self::submit) accepts another operation now.
    fn can_submit(&self) -> bool;

    /// Starts an operation. Failures (including a range outside the volume) are reported by
    /// its completion, never by a panic.
    fn submit(&mut self, req: IoRequest);

    /// The next finished operation, if any. `now_us` drives timeouts of remote volumes.
    fn poll(&mut self, now_us: u64) -> Option<IoCompletion>;
}

impl<V: Volume + ?Sized> Volume for &mut V {
    fn geometry(&self) -> Geometry {
        (**self).geometry()
    }
    fn can_submit(&self) -> bool {
        (**self).can_submit()
    }
    fn submit(&mut self, req: IoRequest) {
        (**self).submit(req)
    }
    fn poll(&mut self, now_us: u64) -> Option<IoCompletion> {
        (**self).poll(now_us)
    }
}

/// Order in which [`MemVolume`] completes what was submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Submission order.
    Fifo,
    /// Pseudo-random order (xorshift seeded with the value).
    Shuffled(u64),
}

/// An in-memory volume for tests.
///
/// Writes land in a volatile view at completion time; [`durable`](Self::durable) is what a
/// power loss keeps: it is updated only by a completed flush (with the view as it was when
/// the flush was submitted... conservatively: as it is at the flush's completion, minus nothing
/// — the engine never relies on more than "completed before submission").
#[derive(Debug, Clone)]
pub struct MemVolume {
    geometry: Geometry,
    view: Vec<u8>,
    durable: Vec<u8>,
    queue: VecDeque<IoRequest>,
    capacity: usize,
    order: Order,
    /// Tags whose operation fails with [`Error::Io`].
    fail_tags: Vec<u64>,
    /// Operations that reached the volume with a range outside it (the engine must never cause one).
    range_violations: u64,
    flushes: u64,
    submitted: u64,
}

impl MemVolume {
    /// A zero-filled volume with `geometry`, at most `capacity` operations queued.
    pub fn new(geometry: Geometry, capacity: usize) -> Self {
        let n = usize::try_from(geometry.size).expect("test volume fits in memory");
        Self {
            geometry,
            view: vec![0; n],
            durable: vec![0; n],
            queue: VecDeque::new(),
            capacity,
            order: Order::Fifo,
            fail_tags: Vec::new(),
            range_violations: 0,
            flushes: 0,
            submitted: 0,
        }
    }

    /// Sets the completion order.
    pub fn set_order(&mut self, order: Order) {
        self.order = order;
    }

    /// Makes the operation with `tag` fail with [`Error::Io`].
    pub fn fail_tag(&mut self, tag: u64) {
        self.fail_tags.push(tag);
    }

    /// The current contents (what reads see).
    pub fn view(&self) -> &[u8] {
        &self.view
    }

    /// Mutable contents (to prefill).
    pub fn view_mut(&mut self) -> &mut [u8] {
        &mut self.view
    }

    /// What survives a power loss.
    pub fn durable(&self) -> &[u8] {
        &self.durable
    }

    /// Operations submitted with a range outside the volume.
    pub fn range_violations(&self) -> u64 {
        self.range_violations
    }

    /// Completed flushes.
    pub fn flushes(&self) -> u64 {
        self.flushes
    }

    /// Operations submitted.
    pub fn submitted(&self) -> u64 {
        self.submitted
    }

    /// Operations queued, not completed.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn range(&mut self, offset: u64, len: u64) -> Option<core::ops::Range<usize>> {
        match offset.checked_add(len) {
            Some(end) if end <= self.geometry.size => Some(offset as usize..end as usize),
            _ => {
                self.range_violations += 1;
                None
            }
        }
    }

    fn execute(&mut self, req: IoRequest) -> IoCompletion {
        let mut c = IoCompletion {
            tag: req.tag,
            result: Ok(()),
            data: Vec::new(),
        };
        if self.fail_tags.contains(&req.tag) {
            c.result = Err(Error::Io);
            return c;
        }
        match req.kind {
            IoKind::Read => match self.range(req.offset, req.len) {
                Some(r) => c.data = self.view[r].to_vec(),
                None => c.result = Err(Error::OutOfRange),
            },
            IoKind::Write | IoKind::Discard if self.geometry.read_only => c.result = Err(Error::ReadOnly),
            IoKind::Write => match self.range(req.offset, req.data.len() as u64) {
                Some(r) if req.len == req.data.len() as u64 => self.view[r].copy_from_slice(&req.data),
                _ => c.result = Err(Error::OutOfRange),
            },
            IoKind::Discard if !self.geometry.discard => c.result = Err(Error::Unsupported),
            IoKind::Discard => match self.range(req.offset, req.len) {
                Some(r) => self.view[r].fill(0),
                None => c.result = Err(Error::OutOfRange),
            },
            IoKind::Flush if !self.geometry.flush => c.result = Err(Error::Unsupported),
            IoKind::Flush => {
                self.durable.copy_from_slice(&self.view);
                self.flushes += 1;
            }
        }
        c
    }
}

impl Volume for MemVolume {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn can_submit(&self) -> bool {
        self.queue.len() < self.capacity
    }

    fn submit(&mut self, req: IoRequest) {
        self.submitted += 1;
        self.queue.push_back(req);
    }

    fn poll(&mut self, _now_us: u64) -> Option<IoCompletion> {
        let i = match &mut self.order {
            Order::Fifo => 0,
            Order::Shuffled(x) => {
                if self.queue.is_empty() {
                    return None;
                }
                *x ^= *x << 13;
                *x ^= *x >> 7;
                *x ^= *x << 17;
                (*x % self.queue.len() as u64) as usize
            }
        };
        let req = self.queue.remove(i)?;
        Some(self.execute(req))
    }
}
