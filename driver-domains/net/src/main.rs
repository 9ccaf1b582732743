//! The `net-dd` image: virtio-net over PCI, smoltcp on top; answers ARP and ICMP echo and
//! runs a TCP echo service. See the library (`net_dd`) for the host-tested logic.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod device;
#[cfg(target_os = "none")]
mod image;
#[cfg(target_os = "none")]
mod xen;

#[cfg(target_os = "none")]
rt::entry!(image::main);

/// The image only runs on `x86_64-unknown-none`; a host build exists so that workspace-wide
/// host commands (`cargo check --workspace`) keep working.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("net-dd is a unikernel image: build it with --target x86_64-unknown-none");
    std::process::exit(2);
}
