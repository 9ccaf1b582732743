//! The guest's command line:
//!
//! `ip=10.0.2.20/24 gw=10.0.2.2 mac=52:54:00:12:34:20 name=g0 work=<workload>` plus optional
//! `qos_guaranteed_bps= qos_ceiling_bps= qos_burst_bytes= qos_class=latency|normal|bulk`
//! (written as iConnect semantic keys), `secs=` (how long `serve` runs; default: until
//! killed), `nic=channel|virtio` (default `channel`: the iConnect channel on ivshmem device
//! number `chan=`, default 0; `virtio`: a virtio-net NIC of its own, no driver domain),
//! `timeout_s=` (give up connecting after this; default 60), `max_lost=` (pings that may be
//! lost with `ping` still ok; default 0), `interval_ms=` (between pings; default 10),
//! `heartbeat_ms=` (the liveness period promised to the backend as `heartbeat-ms`; default
//! 1000, `0` = none: a guest that stops beating for 5 periods loses its port).
//!
//! Workloads: `ping:<ip>:<count>`, `tcp-send:<ip>:<port>:<secs>`, `tcp-rtt:<ip>:<port>:<count>`,
//! `serve`, `hostile:<req-prod|bad-ref|oversize>`.

use core::net::Ipv4Addr;

use iconnect::Class;
use iconnect::qos::NetQosRequest;
use smoltcp::wire::{EthernetAddress, Ipv4Cidr};

use crate::Error;

/// Which NIC the guest drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nic {
    /// The iConnect channel on the `n`-th ivshmem device (PCI order).
    Channel(usize),
    /// A virtio-net device of its own (the "direct" baseline of `bench net`).
    Virtio,
}

/// What `hostile:` writes into its own TX ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// A producer index far beyond the ring (fatal for the channel).
    ReqProd,
    /// Requests naming data pages outside the data area (answered with errors).
    BadRef,
    /// A single-slot request whose size runs past its page (fatal for the channel).
    Oversize,
}

impl Hostile {
    /// The mode's name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Hostile::ReqProd => "req-prod",
            Hostile::BadRef => "bad-ref",
            Hostile::Oversize => "oversize",
        }
    }
}

/// The workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// ICMP echo `count` times (after one uncounted warm-up).
    Ping {
        /// Target.
        ip: Ipv4Addr,
        /// Echo requests counted.
        count: u32,
    },
    /// Bulk TCP to a sink for `secs` seconds.
    TcpSend {
        /// Sink.
        ip: Ipv4Addr,
        /// Its port.
        port: u16,
        /// Duration.
        secs: u32,
    },
    /// `count` 64-byte request/echo round trips on one TCP connection.
    TcpRtt {
        /// Echo server.
        ip: Ipv4Addr,
        /// Its port.
        port: u16,
        /// Round trips.
        count: u32,
    },
    /// Answer pings, TCP echo on 7, TCP discard on 9.
    Serve,
    /// Garbage in the TX ring.
    Hostile(Hostile),
}

impl Work {
    /// Parses a `work=` value.
    pub fn parse(v: &str) -> Result<Self, Error> {
        let bad = Error::BadConfig("work");
        let mut it = v.split(':');
        let kind = it.next().ok_or(bad)?;
        let mut field = || it.next().ok_or(bad);
        let w = match kind {
            "ping" => Work::Ping {
                ip: parse_ip(field()?).ok_or(bad)?,
                count: field()?.parse().map_err(|_| bad)?,
            },
            "tcp-send" => Work::TcpSend {
                ip: parse_ip(field()?).ok_or(bad)?,
                port: parse_port(field()?).ok_or(bad)?,
                secs: field()?.parse().map_err(|_| bad)?,
            },
            "tcp-rtt" => Work::TcpRtt {
                ip: parse_ip(field()?).ok_or(bad)?,
                port: parse_port(field()?).ok_or(bad)?,
                count: field()?.parse().map_err(|_| bad)?,
            },
            "serve" => Work::Serve,
            "hostile" => Work::Hostile(match field()? {
                "req-prod" => Hostile::ReqProd,
                "bad-ref" => Hostile::BadRef,
                "oversize" => Hostile::Oversize,
                _ => return Err(bad),
            }),
            _ => return Err(bad),
        };
        if it.next().is_some() {
            return Err(bad);
        }
        match w {
            Work::Ping { count: 0, .. }
            | Work::TcpSend { secs: 0, .. }
            | Work::TcpRtt { count: 0, .. } => Err(bad),
            w => Ok(w),
        }
    }
}

/// Everything the command line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    /// Address and prefix.
    pub cidr: Ipv4Cidr,
    /// Default gateway.
    pub gateway: Ipv4Addr,
    /// Our MAC (announced to the backend as `mac`).
    pub mac: EthernetAddress,
    /// Name in the markers.
    pub name: alloc::string::String,
    /// QoS request, if any `qos_*` key was given.
    pub qos: Option<NetQosRequest>,
    /// The workload (default `serve`).
    pub work: Work,
    /// The original `work=` text (for the markers).
    pub work_text: alloc::string::String,
    /// `serve` stops after this many seconds (`secs=0` or none: runs until killed).
    pub secs: Option<u32>,
    /// The NIC.
    pub nic: Nic,
    /// Connect timeout, seconds.
    pub timeout_s: u32,
    /// Pings that may be lost.
    pub max_lost: u32,
    /// Between pings, milliseconds.
    pub interval_ms: u32,
    /// Liveness period promised to the backend (`heartbeat-ms`), 0 = none.
    pub heartbeat_ms: u32,
}

/// Default `heartbeat_ms`: generous under TCG, where guest clocks are skewed 2-3x (net-dd
/// declares a guest dead after 5 silent periods; the guest beats 4 times per period).
pub const DEFAULT_HEARTBEAT_MS: u32 = 1000;

fn parse_ip(s: &str) -> Option<Ipv4Addr> {
    let a: Ipv4Addr = s.parse().ok()?;
    (!a.is_unspecified() && !a.is_broadcast() && !a.is_multicast()).then_some(a)
}

fn parse_port(s: &str) -> Option<u16> {
    s.parse().ok().filter(|&p| p != 0)
}

fn parse_cidr(s: &str) -> Option<Ipv4Cidr> {
    let (addr, prefix) = s.split_once('/').unwrap_or((s, "24"));
    let prefix: u8 = prefix.parse().ok().filter(|p| (1..=32).contains(p))?;
    Some(Ipv4Cidr::new(parse_ip(addr)?, prefix))
}

fn parse_mac(s: &str) -> Option<EthernetAddress> {
    let mut b = [0u8; 6];
    let mut parts = s.split(':');
    for x in &mut b {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *x = u8::from_str_radix(p, 16).ok()?;
    }
    let mac = EthernetAddress(b);
    (parts.next().is_none() && mac.is_unicast()).then_some(mac)
}

fn parse_class(s: &str) -> Option<Class> {
    Some(match s {
        "latency" | "realtime" => Class::Realtime,
        "normal" | "interactive" => Class::Interactive,
        "bulk" => Class::Bulk,
        "background" => Class::Background,
        _ => return None,
    })
}

fn num<T: core::str::FromStr>(cmdline: &str, key: &'static str) -> Result<Option<T>, Error> {
    rt::cmdline::get(cmdline, key)
        .map(|v| v.parse().map_err(|_| Error::BadConfig(key)))
        .transpose()
}

impl GuestConfig {
    /// Parses the command line; an absent key takes its default, a malformed one is an error
    /// naming it.
    pub fn from_cmdline(c: &str) -> Result<Self, Error> {
        let get = |k| rt::cmdline::get(c, k);
        let cidr = match get("ip") {
            Some(v) => parse_cidr(v).ok_or(Error::BadConfig("ip"))?,
            None => Ipv4Cidr::new(Ipv4Addr::new(10, 0, 2, 20), 24),
        };
        let gateway = match get("gw") {
            Some(v) => parse_ip(v).ok_or(Error::BadConfig("gw"))?,
            None => Ipv4Addr::new(10, 0, 2, 2),
        };
        let mac = match get("mac") {
            Some(v) => parse_mac(v).ok_or(Error::BadConfig("mac"))?,
            None => EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x20]),
        };
        let name = get("name").unwrap_or("g0");
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(Error::BadConfig("name"));
        }
        let guaranteed: Option<u64> = num(c, "qos_guaranteed_bps")?;
        let ceiling: Option<u64> = num(c, "qos_ceiling_bps")?;
        let burst: Option<u64> = num(c, "qos_burst_bytes")?;
        let class = get("qos_class")
            .map(|v| parse_class(v).ok_or(Error::BadConfig("qos_class")))
            .transpose()?;
        if ceiling == Some(0) {
            return Err(Error::BadConfig("qos_ceiling_bps"));
        }
        if burst == Some(0) {
            return Err(Error::BadConfig("qos_burst_bytes"));
        }
        let qos = (guaranteed.is_some() || ceiling.is_some() || burst.is_some() || class.is_some())
            .then(|| NetQosRequest {
                guaranteed_bps: guaranteed.unwrap_or(0),
                ceiling_bps: ceiling,
                burst_bytes: burst,
                class: class.unwrap_or_default(),
            });
        let work_text = get("work").unwrap_or("serve");
        let work = Work::parse(work_text)?;
        let nic = match get("nic").unwrap_or("channel") {
            "channel" => Nic::Channel(num(c, "chan")?.unwrap_or(0)),
            "virtio" => Nic::Virtio,
            _ => return Err(Error::BadConfig("nic")),
        };
        Ok(Self {
            cidr,
            gateway,
            mac,
            name: name.into(),
            qos,
            work,
            work_text: work_text.into(),
            secs: num(c, "secs")?.filter(|&s| s > 0),
            nic,
            timeout_s: num(c, "timeout_s")?.unwrap_or(60),
            max_lost: num(c, "max_lost")?.unwrap_or(0),
            interval_ms: num(c, "interval_ms")?.unwrap_or(10),
            heartbeat_ms: match num(c, "heartbeat_ms")? {
                None => DEFAULT_HEARTBEAT_MS,
                Some(ms) if ms <= 60_000 => ms,
                Some(_) => return Err(Error::BadConfig("heartbeat_ms")),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_command_line() {
        let c = GuestConfig::from_cmdline(
            "ip=10.0.2.21/24 gw=10.0.2.2 mac=52:54:00:12:34:21 name=g1 qos_guaranteed_bps=200000000 \
             qos_ceiling_bps=400000000 qos_burst_bytes=65536 qos_class=latency work=tcp-send:10.0.2.2:9:10",
        )
        .unwrap();
        assert_eq!(c.cidr, Ipv4Cidr::new(Ipv4Addr::new(10, 0, 2, 21), 24));
        assert_eq!(c.mac, EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x21]));
        assert_eq!(c.name, "g1");
        assert_eq!(
            c.qos,
            Some(NetQosRequest {
                guaranteed_bps: 200_000_000,
                ceiling_bps: Some(400_000_000),
                burst_bytes: Some(65536),
                class: Class::Realtime
            })
        );
        assert_eq!(
            c.work,
            Work::TcpSend {
                ip: Ipv4Addr::new(10, 0, 2, 2),
                port: 9,
                secs: 10
            }
        );
        assert_eq!(c.work_text, "tcp-send:10.0.2.2:9:10");
        assert_eq!(c.nic, Nic::Channel(0));
    }

    #[test]
    fn defaults_and_no_qos() {
        let c = GuestConfig::from_cmdline("").unwrap();
        assert_eq!(c.qos, None);
        assert_eq!(c.work, Work::Serve);
        assert_eq!(c.gateway, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!((c.timeout_s, c.max_lost, c.interval_ms, c.secs), (60, 0, 10, None));
        assert_eq!(c.heartbeat_ms, DEFAULT_HEARTBEAT_MS);
        assert_eq!(GuestConfig::from_cmdline("heartbeat_ms=0").unwrap().heartbeat_ms, 0);
        assert_eq!(GuestConfig::from_cmdline("heartbeat_ms=500").unwrap().heartbeat_ms, 500);
        assert_eq!(GuestConfig::from_cmdline("heartbeat_ms=60001"), Err(Error::BadConfig("heartbeat_ms")));
        let c = GuestConfig::from_cmdline("qos_class=normal nic=virtio").unwrap();
        assert_eq!(c.qos.unwrap().class, Class::Interactive);
        assert_eq!(c.qos.unwrap().guaranteed_bps, 0);
        assert_eq!(c.nic, Nic::Virtio);
        assert_eq!(GuestConfig::from_cmdline("qos_class=bulk chan=2").unwrap().nic, Nic::Channel(2));
        assert_eq!(GuestConfig::from_cmdline("secs=0").unwrap().secs, None);
        assert_eq!(GuestConfig::from_cmdline("secs=5").unwrap().secs, Some(5));
    }

    #[test]
    fn workloads() {
        let ip = Ipv4Addr::new(10, 0, 2, 21);
        assert_eq!(Work::parse("ping:10.0.2.21:100"), Ok(Work::Ping { ip, count: 100 }));
        assert_eq!(
            Work::parse("tcp-rtt:10.0.2.21:7:1000"),
            Ok(Work::TcpRtt { ip, port: 7, count: 1000 })
        );
        assert_eq!(Work::parse("hostile:bad-ref"), Ok(Work::Hostile(Hostile::BadRef)));
        assert_eq!(Work::parse("hostile:req-prod"), Ok(Work::Hostile(Hostile::ReqProd)));
        assert_eq!(Work::parse("hostile:oversize"), Ok(Work::Hostile(Hostile::Oversize)));
        for bad in [
            "", "ping", "ping:10.0.2.21", "ping:10.0.2.21:0", "ping:10.0.2.21:5:6", "ping:300.1.1.1:5",
            "tcp-send:10.0.2.2:0:5", "tcp-send:10.0.2.2:9:0", "tcp-rtt:10.0.2.2:7", "serve:1",
            "hostile", "hostile:nice", "flood",
        ] {
            assert_eq!(Work::parse(bad), Err(Error::BadConfig("work")), "{bad}");
        }
    }

    #[test]
    fn malformed_values_name_their_key() {
        for (line, key) in [
            ("ip=10.0.2.300/24", "ip"),
            ("ip=10.0.2.20/33", "ip"),
            ("ip=0.0.0.0", "ip"),
            ("gw=x", "gw"),
            ("mac=52:54:00:12:34", "mac"),
            ("mac=01:00:5e:00:00:01", "mac"),
            ("mac=52:54:00:12:34:2g", "mac"),
            ("name=", "name"),
            ("name=a;b", "name"),
            ("qos_guaranteed_bps=-1", "qos_guaranteed_bps"),
            ("qos_ceiling_bps=0", "qos_ceiling_bps"),
            ("qos_burst_bytes=0", "qos_burst_bytes"),
            ("qos_class=fast", "qos_class"),
            ("nic=e1000", "nic"),
            ("chan=x", "chan"),
            ("secs=-3", "secs"),
        ] {
            assert_eq!(GuestConfig::from_cmdline(line), Err(Error::BadConfig(key)), "{line}");
        }
    }
}
