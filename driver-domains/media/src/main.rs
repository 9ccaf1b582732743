//! The `media-dd` image: the multimedia driver domain on the QEMU platform. It owns a
//! virtio-sound device, opens its output once at the native shape and serves one guest per
//! ivshmem-doorbell device (sndif over an iConnect channel), mixing every guest's stream with
//! `sndback::Hub`. The host-tested logic is the library (`media_dd`).
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod image;
#[cfg(target_os = "none")]
mod sound;

rt::image_entry!("media-dd", image::main);
