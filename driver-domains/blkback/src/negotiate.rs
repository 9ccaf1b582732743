//! xenbus keys as pure logic: what a blkback writes into its backend directory for a volume,
//! and strict parsing of what a blkfront writes (`public/io/blkif.h`).
//!
//! Sources and sinks are `iconnect`'s [`KeySource`]/[`KeySink`] (a xenstore directory on Xen,
//! the control page on the QEMU platform); values follow `iconnect::keys`' strict syntax.
//!
//! Sizes: `sector-size` is the volume's logical sector size (512 or 4096) and `sectors` the
//! size in units of it; requests still count in 512-byte sectors (see [`crate::engine`]).

use alloc::format;

use iconnect::{KeySink, KeySource};
use xen_abi::GrantRef;
use xen_abi::ring::MAX_RING_PAGE_ORDER;

use crate::Error;
use crate::engine::Config;
use crate::volume::Geometry;

// The keys a frontend reads are defined once, in the frontend crate.
pub use blkfront::keys::{
    FEATURE_DISCARD, FEATURE_FLUSH_CACHE, FEATURE_MAX_INDIRECT_SEGMENTS, INFO, SECTOR_SIZE, SECTORS, VDISK_READONLY,
};
/// Backend: physical sector size.
pub const PHYSICAL_SECTOR_SIZE: &str = "physical-sector-size";
/// Backend: WRITE_BARRIER supported (never: 0).
pub const FEATURE_BARRIER: &str = "feature-barrier";
/// Backend: discard granularity in bytes.
pub const DISCARD_GRANULARITY: &str = "discard-granularity";
/// Backend: discard alignment in bytes.
pub const DISCARD_ALIGNMENT: &str = "discard-alignment";
/// Backend: secure discard supported (never: 0).
pub const DISCARD_SECURE: &str = "discard-secure";
/// Backend: largest `ring-page-order` accepted.
pub const MAX_RING_PAGE_ORDER_KEY: &str = "max-ring-page-order";
/// Frontend: grant of a one-page ring.
pub const RING_REF: &str = "ring-ref";
/// Frontend: log2 of the ring's pages (then `ring-ref0`..).
pub const RING_PAGE_ORDER: &str = "ring-page-order";
/// Frontend: event channel.
pub const EVENT_CHANNEL: &str = "event-channel";
/// Frontend: ABI of the ring slots.
pub const PROTOCOL: &str = "protocol";
/// Frontend: queues (only 1 supported).
pub const MULTI_QUEUE_NUM_QUEUES: &str = "multi-queue-num-queues";

fn sink_err(_: iconnect::Error) -> Error {
    Error::BadKey("xenbus write failed")
}

/// Writes the volume's keys into the backend directory before `Connected`: `sectors`, `info`,
/// `sector-size`, `physical-sector-size`, `feature-flush-cache`, `feature-barrier = 0`,
/// `feature-discard` (+ granularity = sector size, alignment 0, `discard-secure = 0`),
/// `feature-max-indirect-segments` (when non-zero) and `max-ring-page-order`.
pub fn advertise<S: KeySink + ?Sized>(g: &Geometry, config: &Config, max_ring_page_order: u32, sink: &mut S) -> Result<(), Error> {
    g.validate()?;
    if max_ring_page_order > MAX_RING_PAGE_ORDER {
        return Err(Error::BadConfig);
    }
    let bit = |b: bool| if b { "1" } else { "0" };
    sink.set(SECTORS, &format!("{}", g.sectors())).map_err(sink_err)?;
    sink.set(INFO, &format!("{}", if g.read_only { VDISK_READONLY } else { 0 })).map_err(sink_err)?;
    sink.set(SECTOR_SIZE, &format!("{}", g.sector_size)).map_err(sink_err)?;
    sink.set(PHYSICAL_SECTOR_SIZE, &format!("{}", g.sector_size)).map_err(sink_err)?;
    sink.set(FEATURE_FLUSH_CACHE, bit(g.flush)).map_err(sink_err)?;
    sink.set(FEATURE_BARRIER, "0").map_err(sink_err)?;
    sink.set(FEATURE_DISCARD, bit(g.discard)).map_err(sink_err)?;
    if g.discard {
        sink.set(DISCARD_GRANULARITY, &format!("{}", g.sector_size)).map_err(sink_err)?;
        sink.set(DISCARD_ALIGNMENT, "0").map_err(sink_err)?;
        sink.set(DISCARD_SECURE, "0").map_err(sink_err)?;
    }
    if config.max_indirect_segments > 0 {
        sink.set(FEATURE_MAX_INDIRECT_SEGMENTS, &format!("{}", config.max_indirect_segments))
            .map_err(sink_err)?;
    }
    sink.set(MAX_RING_PAGE_ORDER_KEY, &format!("{max_ring_page_order}")).map_err(sink_err)?;
    Ok(())
}

/// What a blkfront wrote when it reached `Initialised`/`Connected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendConfig {
    /// log2 of the ring's pages.
    pub ring_page_order: u32,
    /// Grants of the ring pages (the first `1 << ring_page_order` are meaningful).
    pub ring_refs: [GrantRef; 1 << MAX_RING_PAGE_ORDER],
    /// Event channel to bind.
    pub event_channel: u32,
}

impl FrontendConfig {
    /// The ring's grants.
    pub fn refs(&self) -> &[GrantRef] {
        &self.ring_refs[..1 << self.ring_page_order]
    }
}

fn num(src: &(impl KeySource + ?Sized), key: &'static str, min: u64, max: u64) -> Result<Option<u64>, Error> {
    match src.get(key) {
        None => Ok(None),
        Some(v) => iconnect::keys::parse_in_range(key, v, min, max)
            .map(Some)
            .map_err(|_| Error::BadKey(key)),
    }
}

/// The `ring-refN` key names.
const RING_REF_N: [&str; 16] = [
    "ring-ref0", "ring-ref1", "ring-ref2", "ring-ref3", "ring-ref4", "ring-ref5", "ring-ref6", "ring-ref7",
    "ring-ref8", "ring-ref9", "ring-ref10", "ring-ref11", "ring-ref12", "ring-ref13", "ring-ref14", "ring-ref15",
];

impl FrontendConfig {
    /// Parses the frontend directory: `protocol` absent or `x86_64-abi` (the 32-bit layout is
    /// not supported); `multi-queue-num-queues` absent or 1; `ring-page-order` up to what was
    /// advertised, then `ring-ref0..` (or `ring-ref` for order 0) all present; `event-channel`
    /// non-zero.
    pub fn from_keys<S: KeySource + ?Sized>(src: &S, max_ring_page_order: u32) -> Result<Self, Error> {
        match src.get(PROTOCOL) {
            None | Some("x86_64-abi") => {}
            Some(_) => return Err(Error::BadKey(PROTOCOL)),
        }
        num(src, MULTI_QUEUE_NUM_QUEUES, 1, 1)?;
        let order = num(src, RING_PAGE_ORDER, 0, u64::from(max_ring_page_order.min(MAX_RING_PAGE_ORDER)))?;
        let mut ring_refs = [0; 1 << MAX_RING_PAGE_ORDER];
        let max = u64::from(u32::MAX);
        let ring_page_order = match order {
            None => {
                ring_refs[0] = num(src, RING_REF, 0, max)?.ok_or(Error::MissingKey(RING_REF))? as GrantRef;
                0
            }
            Some(o) => {
                let o = o as u32;
                for (i, r) in ring_refs.iter_mut().enumerate().take(1 << o) {
                    let key = RING_REF_N[i];
                    *r = num(src, key, 0, max)?.ok_or(Error::MissingKey(key))? as GrantRef;
                }
                o
            }
        };
        let event_channel = num(src, EVENT_CHANNEL, 1, max)?.ok_or(Error::MissingKey(EVENT_CHANNEL))? as u32;
        Ok(Self {
            ring_page_order,
            ring_refs,
            event_channel,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec::Vec;
    use iconnect::keys::PairSource;

    struct Sink(Vec<(String, String)>);
    impl KeySink for Sink {
        fn set(&mut self, k: &str, v: &str) -> Result<(), iconnect::Error> {
            self.0.push((String::from(k), String::from(v)));
            Ok(())
        }
    }

    #[test]
    fn advertised_keys() {
        let g = Geometry {
            size: 64 << 20,
            sector_size: 4096,
            read_only: true,
            flush: true,
            discard: true,
        };
        let mut s = Sink(Vec::new());
        advertise(&g, &Config::default(), 2, &mut s).unwrap();
        let get = |k: &str| s.0.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
        assert_eq!(get(SECTORS), Some("16384"));
        assert_eq!(get(INFO), Some("4"));
        assert_eq!(get(SECTOR_SIZE), Some("4096"));
        assert_eq!(get(FEATURE_FLUSH_CACHE), Some("1"));
        assert_eq!(get(FEATURE_BARRIER), Some("0"));
        assert_eq!(get(DISCARD_GRANULARITY), Some("4096"));
        assert_eq!(get(FEATURE_MAX_INDIRECT_SEGMENTS), Some("64"));
        assert_eq!(get(MAX_RING_PAGE_ORDER_KEY), Some("2"));
        let mut s = Sink(Vec::new());
        let bad = Geometry { sector_size: 1024, ..g };
        assert_eq!(advertise(&bad, &Config::default(), 0, &mut s), Err(Error::BadGeometry));
    }

    #[test]
    fn frontend_keys() {
        let one = [(RING_REF, "8"), (EVENT_CHANNEL, "5")];
        let c = FrontendConfig::from_keys(&PairSource(&one), 0).unwrap();
        assert_eq!((c.refs(), c.event_channel), (&[8u32][..], 5));
        let multi = [(RING_PAGE_ORDER, "1"), ("ring-ref0", "10"), ("ring-ref1", "11"), (EVENT_CHANNEL, "5"), (PROTOCOL, "x86_64-abi")];
        let c = FrontendConfig::from_keys(&PairSource(&multi), 2).unwrap();
        assert_eq!(c.refs(), &[10, 11]);
        assert_eq!(FrontendConfig::from_keys(&PairSource(&multi), 0), Err(Error::BadKey(RING_PAGE_ORDER)));
        let missing = [(RING_PAGE_ORDER, "1"), ("ring-ref0", "10"), (EVENT_CHANNEL, "5")];
        assert_eq!(FrontendConfig::from_keys(&PairSource(&missing), 4), Err(Error::MissingKey("ring-ref1")));
        let x32 = [(RING_REF, "8"), (EVENT_CHANNEL, "5"), (PROTOCOL, "x86_32-abi")];
        assert_eq!(FrontendConfig::from_keys(&PairSource(&x32), 0), Err(Error::BadKey(PROTOCOL)));
        let zero_port = [(RING_REF, "8"), (EVENT_CHANNEL, "0")];
        assert_eq!(FrontendConfig::from_keys(&PairSource(&zero_port), 0), Err(Error::BadKey(EVENT_CHANNEL)));
        let lead0 = [(RING_REF, "08"), (EVENT_CHANNEL, "5")];
        assert_eq!(FrontendConfig::from_keys(&PairSource(&lead0), 0), Err(Error::BadKey(RING_REF)));
        let mq = [(RING_REF, "8"), (EVENT_CHANNEL, "5"), (MULTI_QUEUE_NUM_QUEUES, "2")];
        assert_eq!(FrontendConfig::from_keys(&PairSource(&mq), 0), Err(Error::BadKey(MULTI_QUEUE_NUM_QUEUES)));
        assert_eq!(FrontendConfig::from_keys(&PairSource(&[]), 0), Err(Error::MissingKey(RING_REF)));
    }
}
