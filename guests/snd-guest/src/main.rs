//! The `snd-guest` image: a guest VM that plays a tone through media-dd over an iConnect
//! channel (sndif frontend). The host-tested logic is the library (`snd_guest`).
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod image;

#[cfg(target_os = "none")]
rt::entry!(image::main);

/// The image only runs on `x86_64-unknown-none`; a host build exists so that workspace-wide
/// host commands keep working.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("snd-guest is a unikernel image: build it with --target x86_64-unknown-none");
    std::process::exit(2);
}
