//! `net-dd`: the network driver domain's device-independent logic.
//!
//! The image (`main.rs`, target only) finds the virtio-net device with `hal`, drives it with
//! `virtio-drivers` and runs `smoltcp` on it. What does not touch hardware lives here and is
//! tested on the host: the command-line configuration ([`config`]) and the TCP echo service
//! ([`echo`], exercised over smoltcp's loopback device).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod config;
pub mod echo;

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
