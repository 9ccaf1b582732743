//! The `blk-guest` image: a guest VM whose block device is an iConnect channel to blk-dd
//! (`blkfront`), or, with `disk=virtio`, a virtio-blk disk of its own (the baseline for
//! `cargo xtask bench blk`); runs one storage workload and reports `ICONNECT-RESULT`.
//! The workloads are host-tested in the library (`blk_guest`).
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod image;

rt::image_entry!("blk-guest", image::main);
