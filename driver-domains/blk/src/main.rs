//! The `blk-dd` image: the storage driver domain on the QEMU platform. It owns a virtio-blk
//! disk and a virtio-net NIC, and serves one guest per ivshmem-doorbell device (blkif over an
//! iConnect channel) from the volumes on its command line: slices of the local disk or remote
//! NBD exports. The host-tested logic is the library (`blk_dd`).
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod image;
#[cfg(target_os = "none")]
mod nic;
#[cfg(target_os = "none")]
mod remote;

rt::image_entry!("blk-dd", image::main);
