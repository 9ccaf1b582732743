//! Property tests: a hostile frontend (or backend) writing random bytes anywhere in the region
//! (control page, rings, data) between the other end's steps. The endpoint under test must
//! never panic, never touch memory outside the region (`HostMem` asserts every access), and
//! never write the peer's parts of the control page (`fuzzing::Audit` asserts every write).

use iconnect_channel::fuzzing::{
    Op, SESSION_PAGES, hostile_backend_session, hostile_frontend_session,
};
use iconnect_channel::keys::KeyMap;
use iconnect_channel::layout::Side;
use proptest::prelude::*;
use xen_abi::PAGE_SIZE;
use xen_abi::shmem::HostMem;

fn op() -> impl Strategy<Value = Op> {
    let region = SESSION_PAGES * PAGE_SIZE;
    prop_oneof![
        // Anywhere in the region; biased to the control page and the first ring.
        3 => (0..region, prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(offset, bytes)| Op::Write { offset, bytes }),
        3 => (0..2 * PAGE_SIZE, prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(offset, bytes)| Op::Write { offset, bytes }),
        2 => (any::<u8>(), prop_oneof![0..10u32, any::<u32>()])
            .prop_map(|(field, value)| Op::Field { field, value }),
        3 => Just(Op::Poll),
        3 => Just(Op::Serve),
        3 => (prop_oneof![0..6u32, any::<u32>()], prop_oneof![0..4096u16, any::<u16>()], prop_oneof![0..4097u16, any::<u16>()])
            .prop_map(|(gref, offset, len)| Op::Request { gref, offset, len }),
        1 => any::<u8>().prop_map(|what| Op::Misc { what }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn backend_survives_hostile_frontend(honest in any::<bool>(), ops in prop::collection::vec(op(), 0..60)) {
        let st = hostile_frontend_session(honest, &ops);
        prop_assert!(st.refs_ok + st.refs_bad <= ops.len() as u32 * 8);
    }

    #[test]
    fn frontend_survives_hostile_backend(ops in prop::collection::vec(op(), 0..60)) {
        hostile_backend_session(&ops);
    }

    #[test]
    fn random_key_areas_never_panic_and_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..1800)) {
        iconnect_channel::fuzzing::fuzz_keys(&bytes);
    }

    #[test]
    fn published_keys_read_back(pairs in prop::collection::vec(("[a-z0-9._-]{1,20}", "[ -~]{0,40}"), 0..30)) {
        let mut k = KeyMap::new();
        for (a, b) in &pairs {
            k.insert(a, b).unwrap();
        }
        let m = HostMem::pages(1);
        k.publish(&m, Side::Frontend);
        prop_assert_eq!(KeyMap::read(&m, Side::Frontend).unwrap().0, k);
    }
}
