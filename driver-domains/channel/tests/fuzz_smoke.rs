//! Runs every fuzz entry point over seeded pseudo-random inputs and hand-made seeds, so
//! `cargo test` exercises them (a panic is a finding).

use iconnect_channel::fuzzing::{self, TARGETS};
use iconnect_channel::keys::KeyMap;
use iconnect_channel::layout::{self, Layout, RingSpec};
use xen_abi::shmem::{HostMem, SharedMem};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.next() as usize) % (max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    let mut k = KeyMap::new();
    k.insert("iconnect-qos-class", "realtime").unwrap();
    k.insert("mac", "00:16:3e:00:00:01").unwrap();
    v.push(("keys", k.encode()));
    let m = HostMem::pages(16);
    let l = Layout::plan(
        m.len(),
        &[
            RingSpec {
                page_order: 0,
                slot_bytes: 12,
                vector: 0,
            },
            RingSpec {
                page_order: 1,
                slot_bytes: 8,
                vector: 1,
            },
        ],
        None,
    )
    .unwrap();
    l.write(&m);
    let mut s = vec![14u8];
    let mut h = vec![0u8; 0x40];
    m.read_bytes(0, &mut h);
    s.extend_from_slice(&h);
    let mut d = vec![0u8; layout::MAX_RINGS * 16];
    m.read_bytes(layout::off::RINGS, &mut d);
    s.extend_from_slice(&d);
    v.push(("layout", s));
    // Honest start, then: polls, serve, a write into ring 0's request slot, serve, poll.
    v.push((
        "backend",
        vec![
            1, 3, 5, 0, 0x10, 0x04, 8, 0, 0, 0, 0, 0, 0, 16, 0, 5, 3, 7, 2,
        ],
    ));
    v.push((
        "frontend",
        vec![3, 2, 1, 1, 0, 0, 0, 3, 2, 2, 1, 0, 0, 0, 3, 7, 2, 3],
    ));
    v
}

#[test]
fn seeded_inputs_do_not_break_invariants() {
    for (name, seed) in seeds() {
        let f = TARGETS.iter().find(|(n, _)| *n == name).unwrap().1;
        f(&seed);
    }
    let mut rng = Rng(0x1c0_77ec7);
    for (name, f) in TARGETS {
        let rounds = if name.starts_with("backend") || name.starts_with("frontend") {
            300
        } else {
            2000
        };
        for _ in 0..rounds {
            f(&rng.bytes(600));
        }
    }
}

#[test]
fn seeded_hostile_sessions_with_honest_start() {
    let mut rng = Rng(42);
    for _ in 0..300 {
        let mut d = rng.bytes(400);
        if d.is_empty() {
            d.push(1);
        }
        d[0] |= 1;
        fuzzing::fuzz_backend(&d);
    }
}

#[test]
fn hostile_sessions_reach_every_path() {
    use iconnect_channel::fuzzing::{Op, SessionStats, hostile_frontend_session};
    let mut rng = Rng(7);
    let mut total = SessionStats::default();
    for _ in 0..300 {
        let mut ops = Vec::new();
        for _ in 0..(rng.next() % 40) {
            ops.push(match rng.next() % 11 {
                // Ring 0's header (producer and event indices).
                10 => Op::Write {
                    offset: 4096 + (rng.next() % 16) as usize,
                    bytes: rng.bytes(4),
                },
                0 => Op::Write {
                    offset: (rng.next() % (8 * 4096)) as usize,
                    bytes: rng.bytes(32),
                },
                1 => Op::Field {
                    field: rng.next() as u8,
                    value: (rng.next() % 10) as u32,
                },
                2 | 3 => Op::Poll,
                4 | 5 => Op::Serve,
                6 => Op::Misc {
                    what: rng.next() as u8,
                },
                _ => Op::Request {
                    gref: (rng.next() % 6) as u32,
                    offset: (rng.next() % 4200) as u16,
                    len: (rng.next() % 600) as u16,
                },
            });
        }
        let st = hostile_frontend_session(!rng.next().is_multiple_of(4), &ops);
        total.connects += st.connects;
        total.refs_ok += st.refs_ok;
        total.refs_bad += st.refs_bad;
        total.ring_errors += st.ring_errors;
        total.failures += st.failures;
    }
    // Not vacuous: the sessions connected, followed good and bad references, met broken rings
    // and protocol errors.
    assert!(total.connects > 100, "{total:?}");
    assert!(total.refs_ok > 100 && total.refs_bad > 100, "{total:?}");
    assert!(total.ring_errors > 0 && total.failures > 0, "{total:?}");
}

#[test]
#[should_panic(expected = "wrote 4 bytes at 0x40")]
fn audit_catches_writes_into_the_peers_block() {
    use iconnect_channel::fuzzing::Audit;
    use iconnect_channel::layout::Side;
    let a = Audit::new(HostMem::pages(2), Side::Backend);
    a.store_u32(0x80, 1, std::sync::atomic::Ordering::Relaxed); // own block: fine
    a.write_bytes(4096, &[1; 64]); // ring pages: fine
    a.store_u32(0x40, 1, std::sync::atomic::Ordering::Relaxed); // the frontend's block
}
