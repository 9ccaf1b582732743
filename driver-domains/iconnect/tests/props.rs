//! Property tests: admission never over-commits a link; arbitrary key text never panics the
//! parsers and whatever parses round-trips.

use iconnect::qos::{LinkAdmission, NetQosRequest};
use iconnect::{Class, Decision};
use proptest::prelude::*;

proptest! {
    #[test]
    fn admission_never_overcommits(
        capacity in 1u64..=100_000_000_000,
        ops in proptest::collection::vec((any::<bool>(), 0u64..=40_000_000_000, any::<u8>()), 0..200),
    ) {
        let mut link = LinkAdmission::new(capacity);
        let mut granted = Vec::new();
        for (admit, g, pick) in ops {
            if admit || granted.is_empty() {
                let req = NetQosRequest { guaranteed_bps: g, class: Class::Bulk, ..Default::default() };
                let free = capacity - link.reserved_bps();
                match link.admit(&req) {
                    Decision::Granted(gr) => {
                        prop_assert!(g <= free);
                        prop_assert!(gr.guaranteed_bps <= gr.ceiling_bps && gr.ceiling_bps <= capacity.max(g));
                        granted.push(gr);
                    }
                    Decision::Refused { .. } => prop_assert!(g > free),
                }
            } else {
                let gr = granted.swap_remove(pick as usize % granted.len());
                link.release(&gr);
            }
            let sum: u64 = granted.iter().map(|g| g.guaranteed_bps).sum();
            prop_assert_eq!(sum, link.reserved_bps());
            prop_assert!(sum <= capacity);
        }
    }

    #[test]
    fn arbitrary_key_text(lines in proptest::collection::vec(
        (prop_oneof![
            Just("iconnect-qos-guaranteed-bps"), Just("iconnect-qos-ceiling-bps"), Just("iconnect-qos-burst-bytes"),
            Just("iconnect-qos-class"), Just("rate"), Just("iconnect-storage-volume"), Just("iconnect-storage-durable-flush"),
            Just("iconnect-media-direction"), Just("iconnect-media-format"), Just("iconnect-media-rate-hz"),
            Just("iconnect-media-channels"), Just("iconnect-media-class"), Just("iconnect-qos-status"),
            Just("iconnect-qos-reason"), Just("iconnect-qos-granted-ceiling-bps"), Just("unknown-key"),
        ], prop_oneof!["[0-9]{1,21}", "[a-z0-9._-]{0,70}", "[0-9]{1,8},[0-9]{1,8}", Just("realtime".to_string()), Just("granted".to_string())]),
        0..12,
    )) {
        let text: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        iconnect::fuzzing::keys(text.as_bytes());
    }
}
