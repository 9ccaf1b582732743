//! Virtio-over-PCI pieces that `virtio-drivers` does not expose: locating the virtio
//! structures through vendor capabilities, and routing queue/config events to MSI-X vectors
//! through the common configuration structure.

use crate::Error;
use crate::mmio::RegisterBlock;
use crate::pci::{Bdf, ConfigSpace, cap_id, capabilities};

/// The PCI vendor ID of virtio devices.
pub const VENDOR_ID: u16 = 0x1af4;
/// Modern (virtio 1.0) network device ID.
pub const DEVICE_NET_MODERN: u16 = 0x1041;
/// Transitional network device ID.
pub const DEVICE_NET_TRANSITIONAL: u16 = 0x1000;

/// `cfg_type` of the common configuration structure.
pub const CAP_COMMON_CFG: u8 = 1;
/// `cfg_type` of the notification structure.
pub const CAP_NOTIFY_CFG: u8 = 2;
/// `cfg_type` of the ISR status byte.
pub const CAP_ISR_CFG: u8 = 3;
/// `cfg_type` of the device-specific configuration.
pub const CAP_DEVICE_CFG: u8 = 4;

/// "No vector": the event raises no MSI-X interrupt.
pub const NO_VECTOR: u16 = 0xffff;

/// Offsets in `virtio_pci_common_cfg`.
mod common {
    pub const MSIX_CONFIG: usize = 0x10;
    pub const NUM_QUEUES: usize = 0x12;
    pub const QUEUE_SELECT: usize = 0x16;
    pub const QUEUE_MSIX_VECTOR: usize = 0x1a;
    /// Size of the structure.
    pub const LEN: usize = 0x38;
}

/// Where one virtio structure lives.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub struct VirtioCap {
    /// Which structure (`CAP_*`).
    pub cfg_type: u8,
    /// BAR index.
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u32,
    /// Length in bytes.
    pub length: u32,
}

/// Finds the first virtio structure of type `cfg_type` (vendor capability with `cap_len >= 16`
/// and a BAR index below 6).
pub fn find_cap<C: ConfigSpace + ?Sized>(
    cfg: &C,
    bdf: Bdf,
    cfg_type: u8,
) -> Result<VirtioCap, Error> {
    for cap in capabilities(cfg, bdf) {
        if cap.id != cap_id::VENDOR {
            continue;
        }
        let dw0 = cfg.read32(bdf, cap.offset);
        let cap_len = (dw0 >> 16) as u8;
        let ty = (dw0 >> 24) as u8;
        if ty != cfg_type || cap_len < 16 {
            continue;
        }
        let bar = cfg.read8(bdf, cap.offset + 4);
        if bar > 5 {
            continue;
        }
        return Ok(VirtioCap {
            cfg_type: ty,
            bar,
            offset: cfg.read32(bdf, cap.offset + 8),
            length: cfg.read32(bdf, cap.offset + 12),
        });
    }
    Err(Error::NotFound)
}

/// The common configuration structure, over a mapped register block.
pub struct CommonCfg<R: RegisterBlock> {
    regs: R,
}

impl<R: RegisterBlock> CommonCfg<R> {
    /// Wraps the registers; fails if the block is shorter than the structure.
    pub fn new(regs: R) -> Result<Self, Error> {
        if regs.len() < common::LEN {
            return Err(Error::Truncated);
        }
        Ok(Self { regs })
    }

    /// Number of virtqueues the device has.
    pub fn num_queues(&self) -> u16 {
        self.regs.read16(common::NUM_QUEUES)
    }

    /// Routes configuration-change events to MSI-X `vector` (or [`NO_VECTOR`]); returns the
    /// vector the device accepted (it answers [`NO_VECTOR`] when it refuses).
    pub fn set_config_vector(&mut self, vector: u16) -> u16 {
        self.regs.write16(common::MSIX_CONFIG, vector);
        self.regs.read16(common::MSIX_CONFIG)
    }

    /// Routes `queue`'s used-buffer events to MSI-X `vector` (or [`NO_VECTOR`]); returns the
    /// vector the device accepted, or an error if the queue does not exist.
    pub fn set_queue_vector(&mut self, queue: u16, vector: u16) -> Result<u16, Error> {
        if queue >= self.num_queues() {
            return Err(Error::OutOfRange);
        }
        self.regs.write16(common::QUEUE_SELECT, queue);
        self.regs.write16(common::QUEUE_MSIX_VECTOR, vector);
        Ok(self.regs.read16(common::QUEUE_MSIX_VECTOR))
    }
}

/// Whether a vendor/device ID pair is a virtio network device.
pub fn is_net(vendor: u16, device: u16) -> bool {
    vendor == VENDOR_ID && (device == DEVICE_NET_MODERN || device == DEVICE_NET_TRANSITIONAL)
}
