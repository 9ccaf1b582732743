//! The `net-guest` image. See the library (`net_guest`) for the host-tested logic.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod image;
#[cfg(target_os = "none")]
mod nic;

rt::image_entry!("net-guest", image::main);
