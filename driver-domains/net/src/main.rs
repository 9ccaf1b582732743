//! The `net-dd` image: the network driver domain. On QEMU it owns the virtio-net NIC (uplink)
//! and serves one guest per ivshmem-doorbell device through a learning bridge with QoS
//! scheduling; its own smoltcp stack answers ARP, ICMP echo and a TCP echo service. On Xen it
//! serves netfront vifs (`xen/`). See the library (`net_dd`) for the host-tested logic.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
// Hypercalls, MMIO and the entry point live in `rt`/`hal`; the image itself needs no `unsafe`.
#![forbid(unsafe_code)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod device;
#[cfg(target_os = "none")]
mod image;
#[cfg(target_os = "none")]
mod xen;

rt::image_entry!("net-dd", image::main);
