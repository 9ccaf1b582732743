//! The local disk: `virtio-drivers`' `VirtIOBlk` over the PCI transport (hal's ECAM, BARs and
//! `VirtioHal`), as a `blkback::Volume`.
//!
//! Requests run to completion at submission with the driver's blocking calls (its
//! non-blocking calls are `unsafe` in virtio-drivers 0.13 and images keep `unsafe` in rt/hal),
//! so the disk has one request in flight; completions are queued for the engines' next poll.
//! A FLUSH is `VIRTIO_BLK_T_FLUSH` (QEMU offers `VIRTIO_BLK_F_FLUSH` with its default
//! write-back cache; xtask's disks use it), answered only after the device completed it.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use blkback::volume::{Geometry, IoCompletion, IoKind, IoRequest, Volume};
use hal::dma::VirtioHal;
use hal::ecam::{self, Ecam};
use hal::pci::{self, Function, command};
use hal::platform;
use virtio_drivers::device::blk::{SECTOR_SIZE, VirtIOBlk};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::PciRoot;

/// Modern (virtio 1.0) block device ID.
pub const DEVICE_BLK_MODERN: u16 = 0x1042;
/// Transitional block device ID.
pub const DEVICE_BLK_TRANSITIONAL: u16 = 0x1001;

/// Largest transfer handed to the device at once.
const CHUNK: usize = 128 << 10;

/// The first virtio-blk function on the ECAM's buses.
pub fn find(ecam: &Ecam) -> Option<Function> {
    let mut found = None;
    pci::for_each_function(ecam, ecam.start_bus(), ecam.end_bus(), true, |f| {
        let h = f.header;
        if h.vendor_id == hal::virtio::VENDOR_ID && matches!(h.device_id, DEVICE_BLK_MODERN | DEVICE_BLK_TRANSITIONAL) {
            found = Some(f);
            return false;
        }
        true
    });
    found
}

/// The disk.
pub struct Disk {
    blk: VirtIOBlk<VirtioHal, PciTransport>,
    geometry: Geometry,
    done: VecDeque<IoCompletion>,
    /// Operations completed, device errors.
    pub ops: u64,
    /// Device errors.
    pub errors: u64,
}

impl Disk {
    /// Brings `func` up: BARs from `window`, the transport (through a second ECAM mapping
    /// `transport_ecam`, which virtio-drivers' `PciRoot` owns), bus mastering, the driver.
    pub fn open(ecam: &mut Ecam, transport_ecam: Ecam, func: Function, window: (u64, u64)) -> Result<Self, &'static str> {
        let bdf = func.bdf;
        pci::update_command(ecam, bdf, 0, command::MEMORY_SPACE | command::IO_SPACE);
        platform::assign_bars(ecam, bdf, window.0, window.1).map_err(|_| "BAR assignment")?;
        let mut root = PciRoot::new(transport_ecam);
        let transport =
            PciTransport::new::<VirtioHal, Ecam>(&mut root, ecam::device_function(bdf)).map_err(|_| "virtio PCI transport")?;
        pci::update_command(ecam, bdf, command::MEMORY_SPACE | command::BUS_MASTER, 0);
        let level = log::max_level();
        log::set_max_level(log::LevelFilter::Warn);
        let blk = VirtIOBlk::<VirtioHal, PciTransport>::new(transport);
        log::set_max_level(level);
        let blk = blk.map_err(|_| "virtio-blk init")?;
        let geometry = Geometry {
            size: blk.capacity() * SECTOR_SIZE as u64,
            sector_size: SECTOR_SIZE as u32,
            read_only: blk.readonly(),
            flush: true,
            discard: false,
        };
        Ok(Self { blk, geometry, done: VecDeque::new(), ops: 0, errors: 0 })
    }

    fn execute(&mut self, req: &IoRequest) -> Result<Vec<u8>, blkback::Error> {
        let ss = SECTOR_SIZE as u64;
        let in_disk = req.offset.checked_add(req.len).is_some_and(|e| e <= self.geometry.size);
        let aligned = req.offset.is_multiple_of(ss) && req.len.is_multiple_of(ss);
        match req.kind {
            IoKind::Flush => return self.blk.flush().map(|()| Vec::new()).map_err(|_| blkback::Error::Io),
            IoKind::Discard => return Err(blkback::Error::Unsupported),
            _ if !in_disk => return Err(blkback::Error::OutOfRange),
            _ if !aligned => return Err(blkback::Error::Misaligned),
            IoKind::Write if self.geometry.read_only => return Err(blkback::Error::ReadOnly),
            IoKind::Write if req.data.len() as u64 != req.len => return Err(blkback::Error::OutOfRange),
            _ => {}
        }
        let first = (req.offset / ss) as usize;
        if req.kind == IoKind::Write {
            for (i, chunk) in req.data.chunks(CHUNK).enumerate() {
                self.blk.write_blocks(first + i * CHUNK / SECTOR_SIZE, chunk).map_err(|_| blkback::Error::Io)?;
            }
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; req.len as usize];
        for (i, chunk) in buf.chunks_mut(CHUNK).enumerate() {
            self.blk.read_blocks(first + i * CHUNK / SECTOR_SIZE, chunk).map_err(|_| blkback::Error::Io)?;
        }
        Ok(buf)
    }
}

impl Volume for Disk {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn can_submit(&self) -> bool {
        self.done.len() < 64
    }

    fn submit(&mut self, req: IoRequest) {
        let r = self.execute(&req);
        self.ops += 1;
        if r.is_err() {
            self.errors += 1;
        }
        let (result, data) = match r {
            Ok(d) => (Ok(()), d),
            Err(e) => (Err(e), Vec::new()),
        };
        self.done.push_back(IoCompletion { tag: req.tag, result, data });
    }

    fn poll(&mut self, _now_us: u64) -> Option<IoCompletion> {
        self.done.pop_front()
    }
}
