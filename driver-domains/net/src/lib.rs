//! `net-dd`: the network driver domain's device-independent logic.
//!
//! The image (`main.rs`, target only) owns the virtio-net NIC (the *uplink*, through `hal`) and
//! serves every ivshmem-doorbell device as one guest's iConnect channel; on Xen (`src/xen/`) it
//! serves Linux netfront vifs instead. What does not touch hardware lives here and is tested on
//! the host:
//!
//! * [`switch`] — the data plane: guest ports (one `netback` engine each, over any shared
//!   memory and any grant access), the uplink and the domain's own stack, joined by
//!   `netswitch`'s learning bridge (guests pinned to their announced MAC) and its QoS scheduler
//!   (guest frames are *pulled* from their TX rings in scheduler order, shaped at `link_bps`);
//! * [`chanport`] — one guest channel on the QEMU platform: the iConnect handshake, the
//!   frontend's keys (`mac`, features, QoS request, doorbell id), admission, the decision and
//!   refusal keys, the `ICONNECT-PORT` markers;
//! * [`stackdev`] — the domain's smoltcp stack as a switch port (a queue device);
//! * [`config`] — the command line (`ip= gw= echo_port= link_bps=`);
//! * [`echo`] — the TCP echo service (exercised over smoltcp's loopback device);
//! * [`vifctl`] — the Xen vifs' xenbus backend control plane (backend directory watch, state
//!   machine per vif, frontend keys, ring mapping and event channels through a platform trait,
//!   QoS answers, teardown), generic over the xenstore and the hypervisor; `src/xen/vif.rs`
//!   is its thin Xen implementation;
//! * [`xenuplink`] — net-dd's own netfront towards dom0 on Xen (frontend state machine, ring
//!   and buffer pages granted through a platform trait, the `netfront` engine).
//!
//! `tests/switch_guests.rs` runs several guests — the real `netfront` engine behind a real
//! channel `Frontend` — through the real `ChannelPort`s, `Switch` and `netback` engines:
//! switching, flooding, spoofing, QoS keys and enforcement, refusals, a hostile guest that loses
//! only its own channel and comes back after a reboot. `tests/xen_vifs.rs` runs the Xen
//! control plane against the in-memory xenstore daemon laid out as libxl and Linux netfront
//! lay it out, rings in host memory and the real `netfront` engine as the guest.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod chanport;
pub mod config;
pub mod echo;
pub mod stackdev;
pub mod switch;
pub mod vifctl;
pub mod xenuplink;

use smoltcp::iface::{Config, Interface};
use smoltcp::phy::Device;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

/// The smoltcp interface of the domain: Ethernet `mac`, the configured address and default
/// route. (ARP and ICMP echo replies are answered by the interface itself.)
pub fn build_interface<D: Device + ?Sized>(
    cfg: &config::NetConfig,
    mac: EthernetAddress,
    device: &mut D,
    now: Instant,
    random_seed: u64,
) -> Interface {
    let mut icfg = Config::new(HardwareAddress::Ethernet(mac));
    icfg.random_seed = random_seed;
    let mut iface = Interface::new(icfg, device, now);
    iface.update_ip_addrs(|addrs| {
        // A fresh interface has room for its first address.
        let _ = addrs.push(IpCidr::Ipv4(cfg.cidr));
    });
    if iface
        .routes_mut()
        .add_default_ipv4_route(cfg.gateway)
        .is_err()
    {
        log::warn!("could not add the default route via {}", cfg.gateway);
    }
    iface
}

#[cfg(test)]
mod stack_tests;

/// What can go wrong in `net-dd`.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum Error {
    /// A command-line value does not parse; the key is named.
    BadConfig(&'static str),
    /// No virtio-net device on the PCI bus.
    NoDevice,
    /// The device was found but could not be brought up.
    DeviceInit,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::BadConfig(key) => write!(f, "bad command-line value for `{key}`"),
            Error::NoDevice => f.write_str("no virtio-net device found"),
            Error::DeviceInit => f.write_str("virtio-net device initialisation failed"),
        }
    }
}
