//! The `snd-guest` image: a guest VM that plays a tone through media-dd over an iConnect
//! channel (sndif frontend). The host-tested logic is the library (`snd_guest`).
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod image;

rt::image_entry!("snd-guest", image::main);
