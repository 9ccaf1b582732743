//! A virtio-blk driver with owned buffers and many requests in flight, on top of
//! `virtio-drivers`' split [`VirtQueue`].
//!
//! `virtio-drivers`' `VirtIOBlk` either waits for every request (its safe calls) or leaves the
//! buffers' lifetime to the caller (its `unsafe` `*_nb` calls), and its queue has 16 entries.
//! Here a request *owns* its buffers: the request header, the data (`Vec<u8>`, moved in for a
//! write, allocated here for a read) and the status byte are parked under the device's token
//! until the device hands the token back in the used ring; only then are they unshared and
//! returned in a [`Completion`]. Nothing is borrowed across calls, so the API is safe, and up
//! to `QS / 3` requests (three descriptors each: header, data, status) are in flight at once.
//! Completions may come in any order; [`VirtioBlk::poll`] returns them as the device reports
//! them (used-ring polling; interrupts only wake the caller up).
//!
//! Notifications are batched: [`VirtioBlk::submit`] only publishes the request;
//! [`VirtioBlk::kick`] notifies the device once for everything published since (unless the
//! device suppressed notifications).
//!
//! The unsafe part is `VirtQueue::add`/`pop_used`'s contract: buffers handed to the device are
//! neither touched, moved nor freed until popped. Their heap storage (boxes and vectors) does
//! not move when the owning values move into the slot table; a driver dropped with requests
//! in flight resets the device first and leaks what was still in flight.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::marker::PhantomData;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, Transport};
use virtio_drivers::{Error as VirtioError, Hal};

/// Sector size of the virtio-blk protocol (offsets and capacity are in these units).
pub const SECTOR: usize = 512;
/// Feature: the device is read-only.
pub const F_RO: u64 = 1 << 5;
/// Feature: `VIRTIO_BLK_T_FLUSH` is supported (write-back cache).
pub const F_FLUSH: u64 = 1 << 9;
/// Feature: virtio 1.0.
pub const F_VERSION_1: u64 = 1 << 32;
/// Features this driver accepts (plain split ring: no indirect descriptors, no event index).
pub const SUPPORTED: u64 = F_RO | F_FLUSH | F_VERSION_1;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const S_OK: u8 = 0;
const S_UNSUPP: u8 = 2;
const QUEUE: u16 = 0;
/// Descriptors a read or write takes (header, data, status).
const DESC_PER_RW: usize = 3;

/// An operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read `len` bytes.
    Read,
    /// Write the request's data.
    Write,
    /// Make every completed write durable.
    Flush,
}

/// A request: `tag` comes back in its [`Completion`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Caller's identifier.
    pub tag: u64,
    /// What to do.
    pub op: Op,
    /// First sector (512 bytes) for reads and writes.
    pub sector: u64,
    /// Bytes to read (reads; a non-zero multiple of [`SECTOR`]).
    pub len: usize,
    /// Bytes to write (writes; a non-zero multiple of [`SECTOR`]).
    pub data: Vec<u8>,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkError {
    /// Length zero or not a multiple of [`SECTOR`].
    Misaligned,
    /// Beyond the end of the disk.
    OutOfRange,
    /// A write to a read-only device.
    ReadOnly,
    /// The device answered `VIRTIO_BLK_S_UNSUPP`.
    Unsupported,
    /// The device answered `VIRTIO_BLK_S_IOERR` (or an unknown status), or wrote less than a
    /// read asked for.
    Io,
}

/// A finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The request's tag.
    pub tag: u64,
    /// The operation.
    pub op: Op,
    /// Outcome.
    pub result: Result<(), BlkError>,
    /// The bytes read (reads that succeeded); otherwise the request's own buffer (a write's
    /// data comes back for reuse) or empty.
    pub data: Vec<u8>,
}

/// Why [`VirtioBlk::submit`] did not take a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full(pub Request);

/// Counters.
#[derive(Copy, Clone, Debug, Default, Eq, PartialEq)]
pub struct BlkStats {
    /// Requests handed to the device.
    pub submitted: u64,
    /// Requests the device completed.
    pub completed: u64,
    /// Device notifications sent.
    pub kicks: u64,
    /// Used-ring entries naming a token with no request in flight (device bugs).
    pub bad_tokens: u64,
}

/// A request the device holds, parked under its token.
struct InFlight {
    tag: u64,
    op: Op,
    header: Box<[u8; 16]>,
    data: Vec<u8>,
    status: Box<[u8; 1]>,
}

/// The driver. `QS` is the virtqueue size (power of two, at most the device's maximum).
pub struct VirtioBlk<H: Hal, T: Transport, const QS: usize> {
    transport: T,
    queue: VirtQueue<H, QS>,
    capacity: u64,
    features: u64,
    slots: Vec<Option<InFlight>>,
    in_flight: usize,
    /// Published since the last notification.
    unkicked: bool,
    /// Requests refused before reaching the device, completed at the next poll.
    refused: VecDeque<Completion>,
    stats: BlkStats,
    _hal: PhantomData<H>,
}

impl<H: Hal, T: Transport, const QS: usize> VirtioBlk<H, T, QS> {
    /// Initialises the device (features, queue 0, `DRIVER_OK`).
    pub fn new(mut transport: T) -> Result<Self, VirtioError> {
        // virtio 1.0 section 3.1.1, as `Transport::begin_init`, with our own feature mask.
        transport.set_status(DeviceStatus::empty());
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let features = transport.read_device_features() & SUPPORTED;
        transport.write_driver_features(features);
        transport.set_status(
            DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK,
        );
        transport.set_guest_page_size(4096);
        let capacity = transport.read_consistent(|| {
            let lo: u32 = transport.read_config_space(0)?;
            let hi: u32 = transport.read_config_space(4)?;
            Ok(u64::from(lo) | (u64::from(hi) << 32))
        })?;
        let queue = VirtQueue::<H, QS>::new(&mut transport, QUEUE, false, false)?;
        transport.set_status(
            DeviceStatus::ACKNOWLEDGE
                | DeviceStatus::DRIVER
                | DeviceStatus::FEATURES_OK
                | DeviceStatus::DRIVER_OK,
        );
        Ok(Self {
            transport,
            queue,
            capacity,
            features,
            slots: (0..QS).map(|_| None).collect(),
            in_flight: 0,
            unkicked: false,
            refused: VecDeque::new(),
            stats: BlkStats::default(),
            _hal: PhantomData,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the device refuses writes.
    pub fn read_only(&self) -> bool {
        self.features & F_RO != 0
    }

    /// Whether the device has a write cache that [`Op::Flush`] empties (without it, writes
    /// are durable when completed and a flush completes at once).
    pub fn has_flush(&self) -> bool {
        self.features & F_FLUSH != 0
    }

    /// Counters so far.
    pub fn stats(&self) -> BlkStats {
        self.stats
    }

    /// Requests the device holds.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether [`submit`](Self::submit) takes another request now.
    pub fn can_submit(&self) -> bool {
        self.queue.available_desc() >= DESC_PER_RW
    }

    /// Most requests in flight at once.
    pub const fn max_in_flight() -> usize {
        QS / DESC_PER_RW
    }

    fn check(&self, req: &Request) -> Result<(), BlkError> {
        let len = match req.op {
            Op::Flush => return Ok(()),
            Op::Read => req.len,
            Op::Write => req.data.len(),
        };
        if len == 0 || !len.is_multiple_of(SECTOR) {
            return Err(BlkError::Misaligned);
        }
        let end = req.sector.checked_add((len / SECTOR) as u64);
        if end.is_none_or(|e| e > self.capacity) {
            return Err(BlkError::OutOfRange);
        }
        if req.op == Op::Write && self.read_only() {
            return Err(BlkError::ReadOnly);
        }
        Ok(())
    }

    /// Publishes `req` to the device (notified by the next [`kick`](Self::kick)). A request
    /// that is invalid here (alignment, range, read-only) is not sent: it fails at the next
    /// [`poll`](Self::poll). A full queue gives the request back.
    pub fn submit(&mut self, req: Request) -> Result<(), Full> {
        if let Err(e) = self.check(&req) {
            let data = if req.op == Op::Write {
                req.data
            } else {
                Vec::new()
            };
            self.refused.push_back(Completion {
                tag: req.tag,
                op: req.op,
                result: Err(e),
                data,
            });
            return Ok(());
        }
        if req.op == Op::Flush && !self.has_flush() {
            self.refused.push_back(Completion {
                tag: req.tag,
                op: req.op,
                result: Ok(()),
                data: Vec::new(),
            });
            return Ok(());
        }
        if !self.can_submit() {
            return Err(Full(req));
        }
        let (kind, sector) = match req.op {
            Op::Read => (T_IN, req.sector),
            Op::Write => (T_OUT, req.sector),
            Op::Flush => (T_FLUSH, 0),
        };
        let mut header = Box::new([0u8; 16]);
        header[0..4].copy_from_slice(&kind.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        let mut status = Box::new([0xffu8; 1]);
        let mut data = match req.op {
            Op::Read => vec![0u8; req.len],
            Op::Write => req.data,
            Op::Flush => Vec::new(),
        };
        // The header, data and status buffers are heap storage owned by the `InFlight` parked
        // under the returned token below; nothing reads, writes, moves the storage of or frees
        // them until `poll` pops that token with the same buffers (or `Drop` leaks them after
        // resetting the device).
        let added = match req.op {
            // SAFETY: see above.
            Op::Read => unsafe {
                self.queue
                    .add(&[&header[..]], &mut [&mut data[..], &mut status[..]])
            },
            // SAFETY: see above.
            Op::Write => unsafe {
                self.queue
                    .add(&[&header[..], &data[..]], &mut [&mut status[..]])
            },
            // SAFETY: see above.
            Op::Flush => unsafe { self.queue.add(&[&header[..]], &mut [&mut status[..]]) },
        };
        let token = match added {
            Ok(t) => t,
            Err(_) => {
                // Not added (queue full): the device never saw the buffers.
                let data = if req.op == Op::Write {
                    data
                } else {
                    Vec::new()
                };
                let len = if req.op == Op::Read { req.len } else { 0 };
                return Err(Full(Request {
                    tag: req.tag,
                    op: req.op,
                    sector: req.sector,
                    len,
                    data,
                }));
            }
        };
        let entry = InFlight {
            tag: req.tag,
            op: req.op,
            header,
            data,
            status,
        };
        match self.slots.get_mut(usize::from(token)) {
            Some(slot @ None) => *slot = Some(entry),
            _ => {
                // A token outside the table or in use: the queue's state is inconsistent.
                // Leak rather than free memory the device may access.
                core::mem::forget(entry);
                self.stats.bad_tokens += 1;
                return Ok(());
            }
        }
        self.in_flight += 1;
        self.stats.submitted += 1;
        self.unkicked = true;
        Ok(())
    }

    /// Notifies the device of everything published since the last kick (if it wants to be).
    pub fn kick(&mut self) {
        if core::mem::take(&mut self.unkicked) && self.queue.should_notify() {
            self.transport.notify(QUEUE);
            self.stats.kicks += 1;
        }
    }

    /// Whether a completion is ready (refused requests or a used-ring entry).
    pub fn has_completion(&self) -> bool {
        !self.refused.is_empty() || self.queue.can_pop()
    }

    /// The next finished request, in the order the device completed them.
    pub fn poll(&mut self) -> Option<Completion> {
        if let Some(c) = self.refused.pop_front() {
            return Some(c);
        }
        let token = self.queue.peek_used()?;
        let Some(mut f) = self
            .slots
            .get_mut(usize::from(token))
            .and_then(Option::take)
        else {
            // The device named a token we did not hand out: nothing sane to pop.
            self.stats.bad_tokens += 1;
            return None;
        };
        // `f` holds exactly the buffers given to `add` for `token`, in the same roles and
        // order, untouched since.
        let popped = match f.op {
            // SAFETY: see above.
            Op::Read => unsafe {
                self.queue.pop_used(
                    token,
                    &[&f.header[..]],
                    &mut [&mut f.data[..], &mut f.status[..]],
                )
            },
            // SAFETY: see above.
            Op::Write => unsafe {
                self.queue.pop_used(
                    token,
                    &[&f.header[..], &f.data[..]],
                    &mut [&mut f.status[..]],
                )
            },
            // SAFETY: see above.
            Op::Flush => unsafe {
                self.queue
                    .pop_used(token, &[&f.header[..]], &mut [&mut f.status[..]])
            },
        };
        let used_len = match popped {
            Ok(n) => n as usize,
            Err(_) => {
                // Not popped: the device still owns the buffers. Park them again.
                self.slots[usize::from(token)] = Some(f);
                return None;
            }
        };
        self.in_flight -= 1;
        self.stats.completed += 1;
        let result = match f.status[0] {
            // A read must have filled its buffer (plus the status byte).
            S_OK if f.op == Op::Read && used_len < f.data.len() + 1 => Err(BlkError::Io),
            S_OK => Ok(()),
            S_UNSUPP => Err(BlkError::Unsupported),
            _ => Err(BlkError::Io),
        };
        let data = match (f.op, result) {
            (Op::Read, Err(_)) => Vec::new(),
            _ => f.data,
        };
        Some(Completion {
            tag: f.tag,
            op: f.op,
            result,
            data,
        })
    }
}

impl<H: Hal, T: Transport, const QS: usize> Drop for VirtioBlk<H, T, QS> {
    fn drop(&mut self) {
        // Reset the device: it stops using the queue (virtio 1.0 section 2.1.2), so the queue's
        // own memory can go. Buffers of requests still in flight are leaked regardless.
        self.transport.set_status(DeviceStatus::empty());
        self.transport.queue_unset(QUEUE);
        for s in self.slots.iter_mut() {
            if let Some(f) = s.take() {
                core::mem::forget(f);
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// Bringing a virtio-blk PCI function up on the target (blk-dd's disk, blk-guest's `disk=virtio`).
#[cfg(target_os = "none")]
pub mod pci {
    use super::VirtioBlk;
    use crate::Error;
    use crate::dma::VirtioHal;
    use crate::ecam::Ecam;
    use crate::pci::{self, Function};
    use crate::platform;
    use crate::virtio;
    use virtio_drivers::transport::pci::PciTransport;

    /// Modern (virtio 1.0) block device ID.
    pub const DEVICE_BLK_MODERN: u16 = 0x1042;
    /// Transitional block device ID.
    pub const DEVICE_BLK_TRANSITIONAL: u16 = 0x1001;
    /// The MSI-X table entry completions use.
    pub const MSIX_ENTRY: u16 = 0;

    /// The driver on a PCI transport.
    pub type PciBlk<const QS: usize> = VirtioBlk<VirtioHal, PciTransport, QS>;

    /// An opened disk.
    pub struct Opened<const QS: usize> {
        /// The driver.
        pub blk: PciBlk<QS>,
        /// The CPU vector completion interrupts arrive on, or `None` (poll).
        pub vector: Option<u8>,
    }

    /// The first virtio-blk function on the ECAM's buses.
    pub fn find(ecam: &Ecam) -> Option<Function> {
        let mut found = None;
        pci::for_each_function(ecam, ecam.start_bus(), ecam.end_bus(), true, |f| {
            let h = f.header;
            if h.vendor_id == virtio::VENDOR_ID
                && matches!(h.device_id, DEVICE_BLK_MODERN | DEVICE_BLK_TRANSITIONAL)
            {
                found = Some(f);
                return false;
            }
            true
        });
        found
    }

    /// Brings `func` up: BARs from `window`, the transport, bus mastering, the driver; then,
    /// with `on_irq`, MSI-X entry [`MSIX_ENTRY`] on a fresh `rt` vector calling it, with the
    /// request queue routed to it. Interrupt trouble is logged and leaves polling.
    pub fn open<const QS: usize>(
        ecam: &mut Ecam,
        func: Function,
        window: (u64, u64),
        on_irq: Option<fn()>,
    ) -> Result<Opened<QS>, Error> {
        let bdf = func.bdf;
        let platform::VirtioFunction { bars, transport } = platform::open_virtio(ecam, bdf, window)?;
        let mut vector = platform::msix_vector(ecam, bdf, &bars, MSIX_ENTRY, on_irq);
        let blk = PciBlk::<QS>::new(transport).map_err(|e| {
            log::error!("{bdf}: virtio-blk init: {e}");
            Error::Invalid
        })?;
        if vector.is_some()
            && let Err(e) = platform::route_virtio_vectors(ecam, bdf, &bars, &[(super::QUEUE, MSIX_ENTRY)])
        {
            log::warn!("{bdf}: virtio MSI-X vector routing failed ({e}); polling");
            vector = None;
        }
        Ok(Opened { blk, vector })
    }
}
