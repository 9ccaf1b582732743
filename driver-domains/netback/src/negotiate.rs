//! Feature negotiation as pure logic: the keys a netback writes into its backend directory, and
//! strict parsing of the keys a netfront writes into its frontend directory.
//!
//! Sources and sinks are `iconnect`'s [`KeySource`]/[`KeySink`] (a xenstore directory snapshot
//! on Xen, the control page on the QEMU platform). Values follow the strict syntax of
//! `iconnect::keys`: plain decimals without sign, spaces or leading zeros; booleans exactly `0`
//! or `1`. Linux reads these keys with `%u`-style parsing and defaults; a value Linux would
//! read leniently is an error here, named by its key.
//!
//! Single queue only: `multi-queue-max-queues` is not advertised, so the frontend's keys are at
//! the top of its directory (no `queue-N/`).

use iconnect::qos::XenRate;
use iconnect::{KeySink, KeySource};
use xen_abi::GrantRef;

use crate::Error;

/// Backend key: copying receiver supported (always 1).
pub const FEATURE_RX_COPY: &str = "feature-rx-copy";
/// Backend key: page flipping (never supported: 0).
pub const FEATURE_RX_FLIP: &str = "feature-rx-flip";
/// Both directions: scatter-gather (multi-slot packets).
pub const FEATURE_SG: &str = "feature-sg";
/// Both directions: IPv4 TCP/UDP checksum offload is *off* when 1.
pub const FEATURE_NO_CSUM_OFFLOAD: &str = "feature-no-csum-offload";
/// Both directions: IPv6 TCP/UDP checksum offload on when 1.
pub const FEATURE_IPV6_CSUM_OFFLOAD: &str = "feature-ipv6-csum-offload";
/// Backend key: separate TX and RX event channels allowed.
pub const FEATURE_SPLIT_EVENT_CHANNELS: &str = "feature-split-event-channels";
/// Frontend key: the frontend wants a copying receiver (required).
pub const REQUEST_RX_COPY: &str = "request-rx-copy";
/// Frontend key: the frontend notifies when it posts rx buffers.
pub const FEATURE_RX_NOTIFY: &str = "feature-rx-notify";
/// Frontend key: GSO TCPv4 accepted on receive (we never send GSO).
pub const FEATURE_GSO_TCPV4: &str = "feature-gso-tcpv4";
/// Frontend key: GSO TCPv6 accepted on receive (we never send GSO).
pub const FEATURE_GSO_TCPV6: &str = "feature-gso-tcpv6";
/// Frontend key: grant of the TX ring page.
pub const TX_RING_REF: &str = "tx-ring-ref";
/// Frontend key: grant of the RX ring page.
pub const RX_RING_REF: &str = "rx-ring-ref";
/// Frontend key: the one event channel.
pub const EVENT_CHANNEL: &str = "event-channel";
/// Frontend key: the TX event channel (split).
pub const EVENT_CHANNEL_TX: &str = "event-channel-tx";
/// Frontend key: the RX event channel (split).
pub const EVENT_CHANNEL_RX: &str = "event-channel-rx";
/// Frontend key: number of queues (must be 1 if present: multi-queue is not advertised).
pub const MULTI_QUEUE_NUM_QUEUES: &str = "multi-queue-num-queues";

/// What this backend offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendFeatures {
    /// Accept multi-slot TX packets and deliver multi-slot RX frames.
    pub sg: bool,
    /// Accept IPv6 packets with a blank checksum.
    pub ipv6_csum_offload: bool,
    /// Allow separate TX/RX event channels.
    pub split_event_channels: bool,
}

impl Default for BackendFeatures {
    fn default() -> Self {
        Self {
            sg: true,
            ipv6_csum_offload: true,
            split_event_channels: true,
        }
    }
}

fn bit(b: bool) -> &'static str {
    if b { "1" } else { "0" }
}

fn sink_err(e: iconnect::Error) -> Error {
    Error::BadKey(e.key().unwrap_or("(sink)"))
}

impl BackendFeatures {
    /// Writes the feature keys into the backend directory (before switching to InitWait):
    /// `feature-rx-copy = 1`, `feature-rx-flip = 0`, `feature-sg`, `feature-no-csum-offload = 0`
    /// (IPv4 checksum offload is always accepted), `feature-ipv6-csum-offload`,
    /// `feature-split-event-channels`. GSO, multicast control, multi-queue and the control ring
    /// are not advertised.
    pub fn advertise<S: KeySink + ?Sized>(&self, sink: &mut S) -> Result<(), Error> {
        let keys = [
            (FEATURE_RX_COPY, "1"),
            (FEATURE_RX_FLIP, "0"),
            (FEATURE_SG, bit(self.sg)),
            (FEATURE_NO_CSUM_OFFLOAD, "0"),
            (FEATURE_IPV6_CSUM_OFFLOAD, bit(self.ipv6_csum_offload)),
            (FEATURE_SPLIT_EVENT_CHANNELS, bit(self.split_event_channels)),
        ];
        for (k, v) in keys {
            sink.set(k, v).map_err(sink_err)?;
        }
        Ok(())
    }
}

/// Event channel(s) the frontend allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventChannels {
    /// One port for both rings (`event-channel`).
    Shared(u32),
    /// Separate ports (`event-channel-tx`, `event-channel-rx`).
    Split {
        /// TX ring port.
        tx: u32,
        /// RX ring port.
        rx: u32,
    },
}

/// The negotiated features that change what the engine sends to the frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendFeatures {
    /// Frontend accepts multi-slot RX frames (`feature-sg`, and the backend offers it).
    pub sg: bool,
    /// Frontend accepts IPv4 frames with a blank checksum (no `feature-no-csum-offload = 1`).
    pub ip_csum_offload: bool,
    /// Frontend accepts IPv6 frames with a blank checksum (`feature-ipv6-csum-offload = 1`).
    pub ipv6_csum_offload: bool,
    /// Frontend notifies when it posts rx buffers (`feature-rx-notify`).
    pub rx_notify: bool,
}

impl Default for FrontendFeatures {
    /// A frontend that wrote no feature keys: single-slot frames, IPv4 checksum offload only.
    fn default() -> Self {
        Self {
            sg: false,
            ip_csum_offload: true,
            ipv6_csum_offload: false,
            rx_notify: false,
        }
    }
}

/// Everything read from a netfront's directory when it reached `Connected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendConfig {
    /// Grant of the TX ring page.
    pub tx_ring_ref: GrantRef,
    /// Grant of the RX ring page.
    pub rx_ring_ref: GrantRef,
    /// Event channel(s) to bind (interdomain, with the frontend's domid).
    pub events: EventChannels,
    /// Negotiated features.
    pub features: FrontendFeatures,
}

fn num(src: &(impl KeySource + ?Sized), key: &'static str, min: u64, max: u64) -> Result<Option<u64>, Error> {
    match src.get(key) {
        None => Ok(None),
        Some(v) => iconnect::keys::parse_in_range(key, v, min, max)
            .map(Some)
            .map_err(|_| Error::BadKey(key)),
    }
}

fn required(src: &(impl KeySource + ?Sized), key: &'static str, min: u64, max: u64) -> Result<u64, Error> {
    num(src, key, min, max)?.ok_or(Error::MissingKey(key))
}

fn flag(src: &(impl KeySource + ?Sized), key: &'static str, default: bool) -> Result<bool, Error> {
    match src.get(key) {
        None => Ok(default),
        Some(v) => iconnect::keys::parse_bool(key, v).map_err(|_| Error::BadKey(key)),
    }
}

impl FrontendConfig {
    /// Parses the frontend directory, given what this backend advertised.
    ///
    /// Rules: `request-rx-copy` must be `1` ([`Error::RxCopyRequired`] if absent or `0`);
    /// `tx-ring-ref` and `rx-ring-ref` are required grant refs; event channels are either
    /// `event-channel-tx` *and* `event-channel-rx` (only if split channels were advertised) or
    /// `event-channel`, ports non-zero; `multi-queue-num-queues`, if present, must be `1`;
    /// feature flags are `0`/`1` with netif.h's defaults.
    pub fn from_keys<S: KeySource + ?Sized>(src: &S, backend: &BackendFeatures) -> Result<Self, Error> {
        match src.get(REQUEST_RX_COPY) {
            Some("1") => {}
            None | Some("0") => return Err(Error::RxCopyRequired),
            Some(_) => return Err(Error::BadKey(REQUEST_RX_COPY)),
        }
        num(src, MULTI_QUEUE_NUM_QUEUES, 1, 1)?;
        let ring_max = u32::MAX as u64;
        let tx_ring_ref = required(src, TX_RING_REF, 0, ring_max)? as GrantRef;
        let rx_ring_ref = required(src, RX_RING_REF, 0, ring_max)? as GrantRef;
        let events = match num(src, EVENT_CHANNEL_TX, 1, ring_max)? {
            Some(tx) => {
                if !backend.split_event_channels {
                    return Err(Error::BadKey(EVENT_CHANNEL_TX));
                }
                let rx = required(src, EVENT_CHANNEL_RX, 1, ring_max)?;
                EventChannels::Split {
                    tx: tx as u32,
                    rx: rx as u32,
                }
            }
            None => {
                if src.get(EVENT_CHANNEL_RX).is_some() {
                    return Err(Error::MissingKey(EVENT_CHANNEL_TX));
                }
                EventChannels::Shared(required(src, EVENT_CHANNEL, 1, ring_max)? as u32)
            }
        };
        let sg = flag(src, FEATURE_SG, false)? && backend.sg;
        let no_csum = flag(src, FEATURE_NO_CSUM_OFFLOAD, false)?;
        let ipv6_csum = flag(src, FEATURE_IPV6_CSUM_OFFLOAD, false)?;
        let rx_notify = flag(src, FEATURE_RX_NOTIFY, false)?;
        // Checked for syntax only: this backend never sends GSO frames.
        flag(src, FEATURE_GSO_TCPV4, false)?;
        flag(src, FEATURE_GSO_TCPV6, false)?;
        Ok(Self {
            tx_ring_ref,
            rx_ring_ref,
            events,
            features: FrontendFeatures {
                sg,
                ip_csum_offload: !no_csum,
                ipv6_csum_offload: ipv6_csum,
                rx_notify,
            },
        })
    }
}

/// Xen's `rate = "<bytes>,<usecs>"` from the *backend* directory (written by `xl` for a vif
/// `rate=`), parsed by `iconnect`; `None` when absent. The owner applies it as a ceiling (and
/// passes it to `iconnect::qos::NetQosRequest::with_admin_ceiling`).
pub fn xen_rate<S: KeySource + ?Sized>(backend_dir: &S) -> Result<Option<XenRate>, Error> {
    XenRate::from_keys(backend_dir).map_err(|e| Error::BadKey(e.key().unwrap_or(iconnect::qos::XEN_RATE)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use iconnect::keys::{ArraySink, PairSource};

    const LINUX: &[(&str, &str)] = &[
        ("tx-ring-ref", "9"),
        ("rx-ring-ref", "10"),
        ("event-channel-tx", "5"),
        ("event-channel-rx", "6"),
        ("request-rx-copy", "1"),
        ("feature-rx-notify", "1"),
        ("feature-sg", "1"),
        ("feature-gso-tcpv4", "1"),
        ("feature-gso-tcpv6", "1"),
        ("feature-ipv6-csum-offload", "1"),
        ("multi-queue-num-queues", "1"),
    ];

    fn with(over: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = over.to_vec();
        for p in LINUX {
            if !over.iter().any(|(k, _)| k == &p.0) {
                v.push(*p);
            }
        }
        v
    }

    #[test]
    fn linux_netfront_keys() {
        let c = FrontendConfig::from_keys(&PairSource(LINUX), &BackendFeatures::default()).unwrap();
        assert_eq!(c.tx_ring_ref, 9);
        assert_eq!(c.rx_ring_ref, 10);
        assert_eq!(c.events, EventChannels::Split { tx: 5, rx: 6 });
        assert_eq!(
            c.features,
            FrontendFeatures {
                sg: true,
                ip_csum_offload: true,
                ipv6_csum_offload: true,
                rx_notify: true
            }
        );
    }

    #[test]
    fn shared_channel_and_defaults() {
        let keys = [
            ("tx-ring-ref", "8"),
            ("rx-ring-ref", "4294967295"),
            ("event-channel", "3"),
            ("request-rx-copy", "1"),
            ("feature-no-csum-offload", "1"),
        ];
        let c = FrontendConfig::from_keys(&PairSource(&keys), &BackendFeatures::default()).unwrap();
        assert_eq!(c.events, EventChannels::Shared(3));
        assert_eq!(c.rx_ring_ref, u32::MAX);
        assert!(!c.features.sg && !c.features.ip_csum_offload && !c.features.ipv6_csum_offload);
    }

    #[test]
    fn strict_errors_name_the_key() {
        let b = BackendFeatures::default();
        let cases: &[(&[(&str, &str)], Error)] = &[
            (&[("request-rx-copy", "0")], Error::RxCopyRequired),
            (&[("request-rx-copy", "yes")], Error::BadKey(REQUEST_RX_COPY)),
            (&[("tx-ring-ref", "09")], Error::BadKey(TX_RING_REF)),
            (&[("tx-ring-ref", " 9")], Error::BadKey(TX_RING_REF)),
            (&[("rx-ring-ref", "4294967296")], Error::BadKey(RX_RING_REF)),
            (&[("event-channel-tx", "0")], Error::BadKey(EVENT_CHANNEL_TX)),
            (&[("feature-sg", "2")], Error::BadKey(FEATURE_SG)),
            (&[("multi-queue-num-queues", "2")], Error::BadKey(MULTI_QUEUE_NUM_QUEUES)),
        ];
        for (over, want) in cases {
            let keys = with(over);
            assert_eq!(
                FrontendConfig::from_keys(&PairSource(&keys), &b),
                Err(*want),
                "{over:?}"
            );
        }
        let keys: Vec<_> = LINUX.iter().copied().filter(|(k, _)| *k != "request-rx-copy").collect();
        assert_eq!(FrontendConfig::from_keys(&PairSource(&keys), &b), Err(Error::RxCopyRequired));
        let keys: Vec<_> = LINUX.iter().copied().filter(|(k, _)| *k != "event-channel-rx").collect();
        assert_eq!(
            FrontendConfig::from_keys(&PairSource(&keys), &b),
            Err(Error::MissingKey(EVENT_CHANNEL_RX))
        );
        let keys: Vec<_> = LINUX.iter().copied().filter(|(k, _)| *k != "tx-ring-ref").collect();
        assert_eq!(
            FrontendConfig::from_keys(&PairSource(&keys), &b),
            Err(Error::MissingKey(TX_RING_REF))
        );
        let keys: Vec<_> = LINUX.iter().copied().filter(|(k, _)| *k != "event-channel-tx").collect();
        assert_eq!(
            FrontendConfig::from_keys(&PairSource(&keys), &b),
            Err(Error::MissingKey(EVENT_CHANNEL_TX))
        );
        let no_split = BackendFeatures {
            split_event_channels: false,
            ..b
        };
        assert_eq!(
            FrontendConfig::from_keys(&PairSource(LINUX), &no_split),
            Err(Error::BadKey(EVENT_CHANNEL_TX))
        );
        let no_sg = BackendFeatures { sg: false, ..b };
        assert!(!FrontendConfig::from_keys(&PairSource(LINUX), &no_sg).unwrap().features.sg);
    }

    #[test]
    fn advertised_keys() {
        let mut s = ArraySink::<16, 40>::default();
        BackendFeatures::default().advertise(&mut s).unwrap();
        assert_eq!(s.get(FEATURE_RX_COPY), Some("1"));
        assert_eq!(s.get(FEATURE_RX_FLIP), Some("0"));
        assert_eq!(s.get(FEATURE_SG), Some("1"));
        assert_eq!(s.get(FEATURE_NO_CSUM_OFFLOAD), Some("0"));
        assert_eq!(s.get(FEATURE_IPV6_CSUM_OFFLOAD), Some("1"));
        assert_eq!(s.get(FEATURE_SPLIT_EVENT_CHANNELS), Some("1"));
        assert_eq!(s.get("feature-gso-tcpv4"), None);
    }

    #[test]
    fn rate_key() {
        let r = xen_rate(&PairSource(&[("rate", "125000,20000")])).unwrap().unwrap();
        assert_eq!(r.bits_per_second(), 50_000_000);
        assert_eq!(xen_rate(&PairSource(&[])), Ok(None));
        assert_eq!(xen_rate(&PairSource(&[("rate", "1,0")])), Err(Error::BadKey("rate")));
    }
}
