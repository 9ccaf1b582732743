//! The network configuration from the kernel command line:
//! `ip=10.0.2.15/24 gw=10.0.2.2 echo_port=7 link_bps=1000000000` (these are also the defaults
//! of absent keys).

use crate::Error;
use core::net::Ipv4Addr;
use smoltcp::wire::{Ipv4Address, Ipv4Cidr};

/// Static IPv4 configuration and service port.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub struct NetConfig {
    /// Interface address and prefix.
    pub cidr: Ipv4Cidr,
    /// Default gateway.
    pub gateway: Ipv4Address,
    /// TCP echo service port.
    pub echo_port: u16,
    /// Uplink capacity, bits/s: QoS admission (sum of guarantees) and egress shaping.
    pub link_bps: u64,
}

/// Default `link_bps`: 1 Gbit/s.
pub const DEFAULT_LINK_BPS: u64 = 1_000_000_000;

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            cidr: Ipv4Cidr::new(Ipv4Addr::new(10, 0, 2, 15), 24),
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            echo_port: 7,
            link_bps: DEFAULT_LINK_BPS,
        }
    }
}

fn parse_cidr(s: &str) -> Option<Ipv4Cidr> {
    let (addr, prefix) = s.split_once('/').unwrap_or((s, "24"));
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    if prefix == 0
        || prefix > 32
        || addr.is_unspecified()
        || addr.is_broadcast()
        || addr.is_multicast()
    {
        return None;
    }
    Some(Ipv4Cidr::new(addr, prefix))
}

impl NetConfig {
    /// Reads `ip`, `gw`, `echo_port` and `link_bps` (≥ 1000) from `cmdline`; an absent key takes its default, a
    /// present but malformed one is an error naming the key (an empty `ip=` too). `ip` without
    /// a prefix means `/24`.
    pub fn from_cmdline(cmdline: &str) -> Result<Self, Error> {
        let mut cfg = Self::default();
        if let Some(v) = rt::cmdline::get(cmdline, "ip") {
            cfg.cidr = parse_cidr(v).ok_or(Error::BadConfig("ip"))?;
        }
        if let Some(v) = rt::cmdline::get(cmdline, "gw") {
            let gw: Ipv4Addr = v.parse().map_err(|_| Error::BadConfig("gw"))?;
            if gw.is_unspecified() || gw.is_broadcast() || gw.is_multicast() {
                return Err(Error::BadConfig("gw"));
            }
            cfg.gateway = gw;
        }
        if let Some(v) = rt::cmdline::get(cmdline, "echo_port") {
            cfg.echo_port = match v.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(Error::BadConfig("echo_port")),
            };
        }
        if let Some(v) = rt::cmdline::get(cmdline, "link_bps") {
            cfg.link_bps = match v.parse::<u64>() {
                Ok(b) if b >= 1000 => b,
                _ => return Err(Error::BadConfig("link_bps")),
            };
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_absent() {
        let c = NetConfig::from_cmdline("").unwrap();
        assert_eq!(c, NetConfig::default());
        assert_eq!(c.cidr.address(), Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(c.cidr.prefix_len(), 24);
        assert_eq!(c.gateway, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(c.echo_port, 7);
        assert_eq!(c.link_bps, 1_000_000_000);
    }

    #[test]
    fn parses_all_keys() {
        let c =
            NetConfig::from_cmdline("console=x ip=192.168.7.9/16 gw=192.168.0.1 echo_port=7007")
                .unwrap();
        assert_eq!(c.cidr, Ipv4Cidr::new(Ipv4Addr::new(192, 168, 7, 9), 16));
        assert_eq!(c.gateway, Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(c.echo_port, 7007);
        assert_eq!(
            NetConfig::from_cmdline("link_bps=20000000")
                .unwrap()
                .link_bps,
            20_000_000
        );
        let c = NetConfig::from_cmdline("ip=10.1.2.3").unwrap();
        assert_eq!(c.cidr.prefix_len(), 24);
    }

    #[test]
    fn rejects_malformed_values() {
        for (line, key) in [
            ("ip=10.0.2.300/24", "ip"),
            ("ip=10.0.2.15/33", "ip"),
            ("ip=10.0.2.15/0", "ip"),
            ("ip=10.0.2.15/", "ip"),
            ("ip=0.0.0.0/24", "ip"),
            ("ip=224.0.0.1/4", "ip"),
            ("ip", "ip"),
            ("gw=10.0.2", "gw"),
            ("gw=255.255.255.255", "gw"),
            ("echo_port=0", "echo_port"),
            ("echo_port=65536", "echo_port"),
            ("echo_port=-1", "echo_port"),
            ("link_bps=", "link_bps"),
            ("link_bps=999", "link_bps"),
            ("link_bps=1e9", "link_bps"),
        ] {
            assert_eq!(
                NetConfig::from_cmdline(line),
                Err(Error::BadConfig(key)),
                "{line}"
            );
        }
    }
}
