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

/// The hostile frontend runs concurrently on its own thread (torn reads, a key area rewritten
/// during the copy, indices moving between loads), spraying the control page and the rings
/// while the backend polls and serves. The backend thread must neither panic, nor write the
/// frontend's parts of the control page, nor follow a reference outside the data area.
#[test]
fn backend_survives_a_concurrent_hostile_frontend() {
    use iconnect_channel::fuzzing::{Audit, SESSION_PAGES};
    use iconnect_channel::{Backend, BackendEvent, Frontend, FrontendConfig, RingSpec};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use xen_abi::ring::RawProtocol;
    use xen_abi::shmem::SharedMem;
    use xen_abi::xenbus::FrontendStyle;

    let mut total_served = 0;
    for seed in 1..=4u64 {
        let m = HostMem::pages(SESSION_PAGES);
        let audit = Audit::new(m.clone(), Side::Backend);
        let mut be = Backend::new(audit.clone(), KeyMap::new()).unwrap();
        let config = FrontendConfig {
            style: FrontendStyle::Net,
            rings: vec![RingSpec {
                page_order: 0,
                slot_bytes: 16,
                vector: 0,
            }],
            data_pages: None,
        };
        let mut fe = Frontend::new(m.clone(), config, KeyMap::new()).unwrap();
        let mut serving = None;
        let mut connects = 0;
        let mut failures = 0;
        let mut poll_backend = |be: &mut Backend<Audit<HostMem>>, serving: &mut Option<_>| {
            while let Some(e) = be.poll() {
                match e {
                    BackendEvent::Connect => {
                        connects += 1;
                        *serving = be
                            .back_ring::<RawProtocol<16, 16>>(0)
                            .ok()
                            .zip(be.data_area().ok());
                        be.accept();
                    }
                    BackendEvent::Disconnect | BackendEvent::Removed => *serving = None,
                    BackendEvent::Failed(_) => failures += 1,
                }
            }
        };
        for _ in 0..4 {
            poll_backend(&mut be, &mut serving);
            while fe.poll().is_some() {}
        }
        assert!(serving.is_some(), "the honest start connected");
        let stop = Arc::new(AtomicBool::new(false));
        let hostile = {
            let (m, stop) = (m.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut rnd = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                for i in 0..200_000u64 {
                    let r = rnd();
                    let fe_block = 0x40..0x80;
                    if r % 1000 == 0 {
                        // Rarely: the frontend's own end block (state, generations, key length).
                        let off = 0x40 + 4 * ((r >> 16) as usize % 6);
                        m.store_u32(off, (rnd() % 12) as u32, Ordering::Release);
                        continue;
                    }
                    if r % 10 < 2 {
                        // A plausible or slightly impossible req_prod for ring 0.
                        let rsp = m.load_u32(PAGE_SIZE + 8, Ordering::Relaxed);
                        m.store_u32(
                            PAGE_SIZE,
                            rsp.wrapping_add((rnd() % 136) as u32),
                            Ordering::Release,
                        );
                        continue;
                    }
                    let off = match r % 10 {
                        2..=5 => (r >> 8) as usize % PAGE_SIZE, // control page
                        6..=8 => PAGE_SIZE + (r >> 8) as usize % PAGE_SIZE, // ring 0
                        _ => (r >> 8) as usize % (SESSION_PAGES * PAGE_SIZE),
                    };
                    let len = 1 + (r >> 40) as usize % 8;
                    let len = len.min(m.len() - off);
                    if fe_block.contains(&off) || fe_block.contains(&(off + len - 1)) {
                        continue;
                    }
                    m.write_bytes(off, &rnd().to_le_bytes()[..len]);
                    if i % 64 == 0 {
                        std::thread::yield_now();
                    }
                }
                stop.store(true, Ordering::Release);
            })
        };
        let mut served = 0u64;
        while !stop.load(Ordering::Acquire) {
            poll_backend(&mut be, &mut serving);
            if let Some((ring, data)) = serving.as_mut() {
                loop {
                    match ring.pop_request() {
                        Ok(Some(req)) => {
                            let gref = u32::from_le_bytes(req[..4].try_into().unwrap());
                            let at = u16::from_le_bytes([req[4], req[5]]) as usize;
                            let mut buf = vec![0u8; u16::from_le_bytes([req[6], req[7]]) as usize];
                            if data.copy_from_page(gref, at, &mut buf).is_ok() {
                                assert!(gref < data.pages() && at + buf.len() <= PAGE_SIZE);
                            }
                            ring.push_response(&[0; 16]).unwrap();
                            served += 1;
                        }
                        Ok(None) => break,
                        Err(_) => {
                            be.fail();
                            break;
                        }
                    }
                }
                ring.publish_responses();
            }
            let _ = be.refresh_frontend_keys();
        }
        hostile.join().unwrap();
        assert!(audit.writes() > 0);
        println!(
            "seed {seed}: connects {connects}, failures {failures}, served {served}, backend {:?}",
            be.state()
        );
        // The garbage was noticed: the channel was failed or torn down at least once.
        assert!(failures > 0 || be.state() != xen_abi::xenbus::XenbusState::Connected);
        total_served += served;
    }
    assert!(
        total_served > 0,
        "garbage requests reached the backend's reference checks"
    );
}
