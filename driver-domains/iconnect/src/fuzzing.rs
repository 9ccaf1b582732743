//! Fuzzing entry point for the key parsers (used by the `iconnect_keys` cargo-fuzz target in
//! `xen-glue/abi/fuzz/` and by this crate's corpus replay test).

use crate::keys::{ArraySink, LineSource};
use crate::{media, qos, storage};

/// Interprets `data` as `key=value` lines, runs every request and decision parser on them, and
/// checks that whatever parses is written back and re-read unchanged. Never panics unless an
/// invariant breaks.
pub fn keys(data: &[u8]) {
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    let src = LineSource::<32>::new(text);

    if let Ok(Some(r)) = qos::NetQosRequest::from_keys(&src) {
        if let Some(c) = r.ceiling_bps {
            assert!(r.guaranteed_bps <= c);
        }
        let mut s = ArraySink::<16, 64>::default();
        r.write(&mut s).unwrap();
        assert_eq!(qos::NetQosRequest::from_keys(&s), Ok(Some(r)));
        if let Ok(Some(rate)) = qos::XenRate::from_keys(&src)
            && let Ok(eff) = r.with_admin_ceiling(Some(rate))
        {
            assert!(
                eff.ceiling_bps
                    .is_some_and(|c| c <= rate.bits_per_second() && eff.guaranteed_bps <= c)
            );
        }
        let mut link = qos::LinkAdmission::new(10_000_000_000);
        let d = link.admit(&r);
        assert!(link.reserved_bps() <= link.capacity_bps());
        let mut s = ArraySink::<16, 64>::default();
        qos::write_decision(&d, &mut s).unwrap();
        assert_eq!(qos::read_decision(&s), Ok(Some(d)));
    }
    if let Ok(Some(d)) = qos::read_decision(&src) {
        let mut s = ArraySink::<16, 64>::default();
        qos::write_decision(&d, &mut s).unwrap();
        assert_eq!(qos::read_decision(&s), Ok(Some(d)));
    }
    if let Ok(Some(r)) = storage::StorageRequest::from_keys(&src) {
        let mut s = ArraySink::<16, 80>::default();
        r.write(&mut s).unwrap();
        assert_eq!(storage::StorageRequest::from_keys(&s), Ok(Some(r)));
    }
    if let Ok(Some(d)) = storage::read_decision(&src) {
        let mut s = ArraySink::<16, 64>::default();
        storage::write_decision(&d, &mut s).unwrap();
        assert_eq!(storage::read_decision(&s), Ok(Some(d)));
    }
    if let Ok(Some(r)) = media::MediaRequest::from_keys(&src) {
        let mut s = ArraySink::<16, 64>::default();
        r.write(&mut s).unwrap();
        assert_eq!(media::MediaRequest::from_keys(&s), Ok(Some(r)));
        let _ = r.bytes_per_second();
    }
    if let Ok(Some(d)) = media::read_decision(&src) {
        let mut s = ArraySink::<16, 64>::default();
        media::write_decision(&d, &mut s).unwrap();
        assert_eq!(media::read_decision(&s), Ok(Some(d)));
    }
}
