//! `net-guest`: a guest VM on the iConnect network.
//!
//! The image (`main.rs`, target only) opens its ivshmem-doorbell device, runs the iConnect
//! channel's frontend endpoint (style Net: ring 0 = netif TX, ring 1 = netif RX, buffers in the
//! data area), states its QoS request in the channel keys, drives the [`netfront`] engine and
//! runs smoltcp and a workload on top; with `nic=virtio` the same stack and workloads drive a
//! virtio-net NIC directly (the baseline of `cargo xtask bench net`). What does not touch
//! hardware lives here and is tested on the host: the command line ([`config`]), the smoltcp
//! device over netfront and the byte meter ([`device`]), the workloads ([`work`], run against
//! a peer stack through netfront and the real netback engine over a channel in
//! `tests/through_netback.rs`), and the statistics ([`stats`]).
//!
//! ## Markers (serial console, one per line)
//! - `ICONNECT-READY net-guest boot_us=<N>`: device found (before the channel handshake).
//! - `ICONNECT-LINK up qos=<granted|refused|none> granted_bps=<n> [ceiling_bps= burst_bytes=
//!   class=] [qos_reason=<why>] after_ms=<n>` when the backend connected (`nic=virtio`:
//!   `ICONNECT-LINK up qos=none granted_bps=0 nic=virtio`); `ICONNECT-LINK down reason=<why>
//!   qos=...` when the channel closes (refused at connect, closed by the backend, protocol error).
//! - `ICONNECT-RATE name=<g> tx_bps=<n> rx_bps=<n> payload_tx_bps=<n> payload_rx_bps=<n>` once a
//!   second while a workload runs (`serve`: only while traffic flows); `tx_bps`/`rx_bps` count
//!   whole Ethernet frames, `payload_*` the workload's own bytes (TCP data acknowledged by the
//!   sink, received by the discard/echo services, echo payloads).
//! - `ICONNECT-RESULT ok|FAIL name=<g> work=<work=> <fields>` at the end (`why=` on failure),
//!   then exit status 33 (ok) or 35.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod config;
pub mod device;
pub mod link;
pub mod stats;
pub mod work;

use smoltcp::iface::{Config, Interface};
use smoltcp::phy::Device;
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpCidr};

/// The guest's smoltcp interface: its MAC, address and default route.
pub fn build_interface<D: Device + ?Sized>(
    cfg: &config::GuestConfig,
    device: &mut D,
    now: Instant,
    random_seed: u64,
) -> Interface {
    let mut icfg = Config::new(HardwareAddress::Ethernet(cfg.mac));
    icfg.random_seed = random_seed;
    let mut iface = Interface::new(icfg, device, now);
    iface.update_ip_addrs(|addrs| {
        // A fresh interface has room for its first address.
        let _ = addrs.push(IpCidr::Ipv4(cfg.cidr));
    });
    let _ = iface.routes_mut().add_default_ipv4_route(cfg.gateway);
    iface
}

/// What can go wrong in `net-guest`.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum Error {
    /// A command-line value does not parse; the key is named.
    BadConfig(&'static str),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::BadConfig(key) => write!(f, "bad command-line value for `{key}`"),
        }
    }
}
