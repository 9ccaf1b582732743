//! `hal`: hardware access for iConnect-rs driver domains.
//!
//! Layers, from pure to target-only:
//! - [`pci`]: configuration-space logic (headers, enumeration, BAR sizing and assignment,
//!   capability walking, MSI-X) over the [`pci::ConfigSpace`] trait;
//! - [`acpi`]: RSDP/RSDT/XSDT/MCFG parsing over the [`acpi::PhysRead`] trait, to find ECAM;
//! - [`mmio`]: the [`mmio::RegisterBlock`] trait and its volatile implementation [`mmio::Mmio`];
//! - [`ecam`]: the memory-mapped [`pci::ConfigSpace`] (also usable by `virtio-drivers`);
//! - [`virtio`]: virtio PCI capabilities and MSI-X vector routing;
//! - [`virtio_blk`]: a virtio-blk driver with owned buffers and many requests in flight;
//! - [`virtio_net`]: a virtio-net driver with preallocated buffers and asynchronous transmit;
//! - [`virtio_sound`]: a virtio-sound driver (playback and capture) with owned buffers;
//! - `fake` (tests, or the `fake` feature): fakes for host tests: configuration space,
//!   registers, physical memory, and a virtio-net device serving split rings in host memory
//!   with a host `virtio_drivers::Hal`;
//! - `platform` and `dma` (target `x86_64-unknown-none` only): the bindings to `rt`: reading
//!   physical memory, mapping ECAM/BARs, and the `virtio_drivers::Hal` implementation.
//!
//! All pure parts, and the virtio-net driver against the fake device, are tested on the host
//! with `cargo test -p hal`. The target-only glue is exercised by booting `net-dd` in QEMU.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod acpi;
pub mod ecam;
mod error;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod ivshmem;
pub mod mmio;
pub mod pci;
pub mod virtio;
pub mod virtio_blk;
pub mod virtio_net;
pub mod virtio_sound;

#[cfg(target_os = "none")]
pub mod dma;
#[cfg(target_os = "none")]
pub mod platform;

pub use error::Error;

#[cfg(test)]
mod tests;
