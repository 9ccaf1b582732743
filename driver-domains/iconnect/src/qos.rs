//! Network QoS: what a VM asks for, Xen's `rate` key, what a backend grants, and admission
//! control (the sum of guarantees never exceeds the link capacity).

use crate::keys::{self, KeySink, KeySource};
use crate::{AnswerKeys, Class, Decision, Error};

/// Guaranteed rate, bits/s.
pub const GUARANTEED: &str = "iconnect-qos-guaranteed-bps";
/// Ceiling rate, bits/s.
pub const CEILING: &str = "iconnect-qos-ceiling-bps";
/// Burst, bytes.
pub const BURST: &str = "iconnect-qos-burst-bytes";
/// Priority/latency class.
pub const CLASS: &str = "iconnect-qos-class";
/// Xen's vif rate limit in the backend directory: `"<bytes>,<usecs>"`.
pub const XEN_RATE: &str = "rate";
/// Answer keys.
pub const ANSWER: AnswerKeys = AnswerKeys {
    status: "iconnect-qos-status",
    reason: "iconnect-qos-reason",
    error_key: "iconnect-qos-error-key",
};
/// Granted guaranteed rate.
pub const GRANTED_GUARANTEED: &str = "iconnect-qos-granted-guaranteed-bps";
/// Granted ceiling.
pub const GRANTED_CEILING: &str = "iconnect-qos-granted-ceiling-bps";
/// Granted burst.
pub const GRANTED_BURST: &str = "iconnect-qos-granted-burst-bytes";
/// Granted class.
pub const GRANTED_CLASS: &str = "iconnect-qos-granted-class";

/// Largest accepted burst (1 GiB).
pub const MAX_BURST_BYTES: u64 = 1 << 30;

/// A VM's QoS request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NetQosRequest {
    /// Guaranteed rate, bits/s (0 = best effort).
    pub guaranteed_bps: u64,
    /// Ceiling, bits/s (`None` = as fast as the link allows).
    pub ceiling_bps: Option<u64>,
    /// Burst, bytes (`None` = backend's choice).
    pub burst_bytes: Option<u64>,
    /// Class.
    pub class: Class,
}

impl NetQosRequest {
    /// Reads the request from the frontend directory; `Ok(None)` if the VM wrote no
    /// `iconnect-qos-*` key. Checks ranges and `guaranteed <= ceiling`.
    pub fn from_keys<S: KeySource + ?Sized>(src: &S) -> Result<Option<Self>, Error> {
        let (g, c, b, k) = (
            src.get(GUARANTEED),
            src.get(CEILING),
            src.get(BURST),
            src.get(CLASS),
        );
        if g.is_none() && c.is_none() && b.is_none() && k.is_none() {
            return Ok(None);
        }
        let r = Self {
            guaranteed_bps: g
                .map(|v| keys::parse_u64(GUARANTEED, v))
                .transpose()?
                .unwrap_or(0),
            ceiling_bps: c
                .map(|v| keys::parse_in_range(CEILING, v, 1, u64::MAX))
                .transpose()?,
            burst_bytes: b
                .map(|v| keys::parse_in_range(BURST, v, 1, MAX_BURST_BYTES))
                .transpose()?,
            class: k
                .map(|v| Class::parse(CLASS, v))
                .transpose()?
                .unwrap_or_default(),
        };
        r.check()?;
        Ok(Some(r))
    }

    fn check(&self) -> Result<(), Error> {
        if let Some(c) = self.ceiling_bps
            && self.guaranteed_bps > c
        {
            return Err(Error::Inconsistent { key: GUARANTEED });
        }
        Ok(())
    }

    /// Applies an administrative ceiling (Xen's `rate` key): the effective ceiling is the lower
    /// one; a guarantee above it is inconsistent.
    pub fn with_admin_ceiling(mut self, admin: Option<XenRate>) -> Result<Self, Error> {
        if let Some(a) = admin {
            let bps = a.bits_per_second();
            self.ceiling_bps = Some(self.ceiling_bps.map_or(bps, |c| c.min(bps)));
            if self.guaranteed_bps > bps {
                return Err(Error::Inconsistent { key: GUARANTEED });
            }
        }
        Ok(self)
    }

    /// Writes the request (frontend side).
    pub fn write<S: KeySink + ?Sized>(&self, sink: &mut S) -> Result<(), Error> {
        keys::set_u64(sink, GUARANTEED, self.guaranteed_bps)?;
        if let Some(c) = self.ceiling_bps {
            keys::set_u64(sink, CEILING, c)?;
        }
        if let Some(b) = self.burst_bytes {
            keys::set_u64(sink, BURST, b)?;
        }
        sink.set(CLASS, self.class.as_str())
    }
}

/// Xen's `rate = "<bytes>,<usecs>"`: at most `bytes` per `usecs` microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct XenRate {
    /// Bytes per interval (> 0).
    pub bytes: u64,
    /// Interval, microseconds (> 0, fits u32 as libxl writes it).
    pub usecs: u32,
}

impl XenRate {
    /// Parses the value strictly (two plain decimals separated by one comma).
    pub fn parse(v: &str) -> Result<Self, Error> {
        let (b, u) = v.split_once(',').ok_or(Error::BadToken { key: XEN_RATE })?;
        let bytes = keys::parse_in_range(XEN_RATE, b, 1, u64::MAX)?;
        let usecs = keys::parse_in_range(XEN_RATE, u, 1, u32::MAX as u64)? as u32;
        Ok(Self { bytes, usecs })
    }

    /// Reads `rate` from the backend directory (`Ok(None)` if absent).
    pub fn from_keys<S: KeySource + ?Sized>(src: &S) -> Result<Option<Self>, Error> {
        src.get(XEN_RATE).map(Self::parse).transpose()
    }

    /// The rate in bits per second (saturating).
    pub fn bits_per_second(&self) -> u64 {
        let bps = self.bytes as u128 * 8 * 1_000_000 / self.usecs as u128;
        bps.min(u64::MAX as u128) as u64
    }
}

/// What a backend granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetQosGrant {
    /// Guaranteed rate, bits/s.
    pub guaranteed_bps: u64,
    /// Ceiling, bits/s.
    pub ceiling_bps: u64,
    /// Burst, bytes.
    pub burst_bytes: u64,
    /// Class.
    pub class: Class,
}

/// Writes a QoS decision into the backend directory.
pub fn write_decision<S: KeySink + ?Sized>(
    d: &Decision<NetQosGrant>,
    sink: &mut S,
) -> Result<(), Error> {
    crate::write_decision_head(d, &ANSWER, sink)?;
    if let Decision::Granted(g) = d {
        keys::set_u64(sink, GRANTED_GUARANTEED, g.guaranteed_bps)?;
        keys::set_u64(sink, GRANTED_CEILING, g.ceiling_bps)?;
        keys::set_u64(sink, GRANTED_BURST, g.burst_bytes)?;
        sink.set(GRANTED_CLASS, g.class.as_str())?;
    }
    Ok(())
}

/// Reads a QoS decision (frontend side); `Ok(None)` if the backend has not answered.
pub fn read_decision<S: KeySource + ?Sized>(
    src: &S,
) -> Result<Option<Decision<NetQosGrant>>, Error> {
    let Some(head) = crate::read_decision_head(&ANSWER, src)? else {
        return Ok(None);
    };
    if let Some((reason, error_key)) = head {
        return Ok(Some(Decision::Refused { reason, error_key }));
    }
    let num = |k: &'static str| keys::parse_u64(k, src.get(k).ok_or(Error::Missing { key: k })?);
    let g = NetQosGrant {
        guaranteed_bps: num(GRANTED_GUARANTEED)?,
        ceiling_bps: num(GRANTED_CEILING)?,
        burst_bytes: num(GRANTED_BURST)?,
        class: Class::parse(
            GRANTED_CLASS,
            src.get(GRANTED_CLASS)
                .ok_or(Error::Missing { key: GRANTED_CLASS })?,
        )?,
    };
    if g.guaranteed_bps > g.ceiling_bps {
        return Err(Error::Inconsistent {
            key: GRANTED_GUARANTEED,
        });
    }
    Ok(Some(Decision::Granted(g)))
}

/// Admission control for one link: guarantees are reserved and never sum above capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkAdmission {
    capacity_bps: u64,
    reserved_bps: u64,
}

impl LinkAdmission {
    /// A link of `capacity_bps` bits/s with nothing reserved.
    pub const fn new(capacity_bps: u64) -> Self {
        Self {
            capacity_bps,
            reserved_bps: 0,
        }
    }

    /// Link capacity.
    pub fn capacity_bps(&self) -> u64 {
        self.capacity_bps
    }

    /// Sum of granted guarantees.
    pub fn reserved_bps(&self) -> u64 {
        self.reserved_bps
    }

    /// Decides on a request. Granted: the guarantee is reserved, the ceiling is clamped to the
    /// link capacity, the burst defaults to 10 ms at the ceiling (at least one 1514-byte frame,
    /// at most [`MAX_BURST_BYTES`]). Refused with `over-capacity` if the guarantee does not fit.
    pub fn admit(&mut self, req: &NetQosRequest) -> Decision<NetQosGrant> {
        let free = self.capacity_bps - self.reserved_bps;
        if req.guaranteed_bps > free {
            return Decision::Refused {
                reason: crate::RefuseReason::OverCapacity,
                error_key: None,
            };
        }
        let ceiling = req
            .ceiling_bps
            .unwrap_or(self.capacity_bps)
            .min(self.capacity_bps)
            .max(req.guaranteed_bps);
        let burst = req
            .burst_bytes
            .unwrap_or((ceiling / 8 / 100).clamp(1514, MAX_BURST_BYTES));
        self.reserved_bps += req.guaranteed_bps;
        Decision::Granted(NetQosGrant {
            guaranteed_bps: req.guaranteed_bps,
            ceiling_bps: ceiling,
            burst_bytes: burst,
            class: req.class,
        })
    }

    /// Returns a grant's reservation (the VM disconnected). Releasing more than is reserved
    /// saturates at zero.
    pub fn release(&mut self, grant: &NetQosGrant) {
        self.reserved_bps = self.reserved_bps.saturating_sub(grant.guaranteed_bps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RefuseReason;
    use crate::keys::{ArraySink, PairSource};

    #[test]
    fn parse_full_request() {
        let src = PairSource(&[
            (GUARANTEED, "100000000"),
            (CEILING, "1000000000"),
            (BURST, "65536"),
            (CLASS, "realtime"),
            ("iconnect-qos-future-key", "whatever"),
            ("mac", "00:16:3e:00:00:01"),
        ]);
        let r = NetQosRequest::from_keys(&src).unwrap().unwrap();
        assert_eq!(
            r,
            NetQosRequest {
                guaranteed_bps: 100_000_000,
                ceiling_bps: Some(1_000_000_000),
                burst_bytes: Some(65536),
                class: Class::Realtime
            }
        );
        let mut sink = ArraySink::<8, 48>::default();
        r.write(&mut sink).unwrap();
        assert_eq!(NetQosRequest::from_keys(&sink), Ok(Some(r)));
    }

    #[test]
    fn defaults_and_absence() {
        assert_eq!(
            NetQosRequest::from_keys(&PairSource(&[("mac", "x")])),
            Ok(None)
        );
        let r = NetQosRequest::from_keys(&PairSource(&[(CLASS, "background")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            r,
            NetQosRequest {
                class: Class::Background,
                ..Default::default()
            }
        );
    }

    #[test]
    fn strict_errors_name_the_key() {
        let cases: &[(&[(&str, &str)], Error)] = &[
            (&[(GUARANTEED, "1k")], Error::NotANumber { key: GUARANTEED }),
            (&[(CEILING, "0")], Error::OutOfRange { key: CEILING }),
            (&[(BURST, "2000000000")], Error::OutOfRange { key: BURST }),
            (&[(CLASS, "Realtime")], Error::BadToken { key: CLASS }),
            (
                &[(GUARANTEED, "10"), (CEILING, "5")],
                Error::Inconsistent { key: GUARANTEED },
            ),
        ];
        for (pairs, want) in cases {
            assert_eq!(NetQosRequest::from_keys(&PairSource(pairs)), Err(*want));
        }
    }

    #[test]
    fn xen_rate_is_a_ceiling() {
        let r = XenRate::parse("1250000,50000").unwrap();
        assert_eq!(r.bits_per_second(), 200_000_000);
        assert_eq!(
            XenRate::from_keys(&PairSource(&[(XEN_RATE, "125000,1000")]))
                .unwrap()
                .unwrap()
                .bits_per_second(),
            1_000_000_000
        );
        for bad in [
            "",
            "1",
            "1,",
            ",1",
            "1,0",
            "0,1",
            "1, 2",
            "1,2,3",
            "1,99999999999",
        ] {
            assert!(XenRate::parse(bad).is_err(), "{bad:?}");
        }
        let req = NetQosRequest {
            guaranteed_bps: 1_000_000,
            ceiling_bps: Some(500_000_000),
            ..Default::default()
        };
        assert_eq!(
            req.with_admin_ceiling(Some(r)).unwrap().ceiling_bps,
            Some(200_000_000)
        );
        let greedy = NetQosRequest {
            guaranteed_bps: 300_000_000,
            ..Default::default()
        };
        assert_eq!(
            greedy.with_admin_ceiling(Some(r)),
            Err(Error::Inconsistent { key: GUARANTEED })
        );
        assert_eq!(
            XenRate::parse("18446744073709551615,1")
                .unwrap()
                .bits_per_second(),
            u64::MAX
        );
    }

    #[test]
    fn admission_and_answers() {
        let mut link = LinkAdmission::new(1_000_000_000);
        let a = NetQosRequest {
            guaranteed_bps: 600_000_000,
            ..Default::default()
        };
        let Decision::Granted(ga) = link.admit(&a) else {
            panic!("first fits")
        };
        assert_eq!(ga.ceiling_bps, 1_000_000_000);
        assert_eq!(ga.burst_bytes, 1_250_000);
        let b = NetQosRequest {
            guaranteed_bps: 500_000_000,
            class: Class::Realtime,
            ..Default::default()
        };
        let refused = link.admit(&b);
        assert_eq!(
            refused,
            Decision::Refused {
                reason: RefuseReason::OverCapacity,
                error_key: None
            }
        );
        let mut sink = ArraySink::<8, 48>::default();
        write_decision(&refused, &mut sink).unwrap();
        assert_eq!(sink.get(ANSWER.status), Some("refused"));
        assert_eq!(sink.get(ANSWER.reason), Some("over-capacity"));
        assert_eq!(read_decision(&sink), Ok(Some(refused)));
        link.release(&ga);
        let Decision::Granted(gb) = link.admit(&b) else {
            panic!("fits after release")
        };
        let mut sink = ArraySink::<8, 48>::default();
        write_decision(&Decision::Granted(gb), &mut sink).unwrap();
        assert_eq!(sink.get(GRANTED_CLASS), Some("realtime"));
        assert_eq!(read_decision(&sink), Ok(Some(Decision::Granted(gb))));
        let inv: Decision<NetQosGrant> = Decision::invalid(Error::BadToken { key: CLASS });
        let mut sink = ArraySink::<8, 48>::default();
        write_decision(&inv, &mut sink).unwrap();
        assert_eq!(sink.get(ANSWER.error_key), Some(CLASS));
        assert_eq!(read_decision(&sink), Ok(Some(inv)));
        assert_eq!(read_decision(&PairSource(&[])), Ok(None));
        assert_eq!(
            read_decision(&PairSource(&[(ANSWER.status, "maybe")])),
            Err(Error::BadToken { key: ANSWER.status })
        );
    }
}
