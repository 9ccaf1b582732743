//! Seeded smoke run of every fuzz entry point (`netback::fuzzing`): pseudo-random and
//! structure-biased inputs, so `cargo test` exercises the same invariants a fuzzer checks.

use netback::fuzzing::{self, TARGETS};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// TX slots that are mostly plausible: small grefs that the fuzz grant table knows, chained
/// flags, sizes near the page rules, occasional extra-info slots and random words.
fn tx_input(r: &mut Rng) -> Vec<u8> {
    let mut v = vec![r.below(80) as u8, 1 + r.below(64) as u8];
    for _ in 0..r.below(160) {
        let mut slot = [0u8; 12];
        match r.below(8) {
            0 => slot.iter_mut().for_each(|b| *b = r.next() as u8),
            1 => {
                // extra-info: type 1..=4 (sometimes invalid), flags 0/1
                slot[0] = r.below(6) as u8;
                slot[1] = r.below(2) as u8;
                slot[2] = r.below(3) as u8;
                slot[4] = r.below(3) as u8;
            }
            _ => {
                let gref = 6 + r.below(12) as u32;
                let offset = [0u16, 64, 4000, 4095, r.below(4096) as u16][r.below(5) as usize];
                let flags = [0u16, 4, 4, 8, 1, 2, 12, 0x20][r.below(8) as usize];
                let size = [14u16, 60, 96, 1514, 4096, 9000, 0, r.next() as u16][r.below(8) as usize];
                slot[..4].copy_from_slice(&gref.to_le_bytes());
                slot[4..6].copy_from_slice(&offset.to_le_bytes());
                slot[6..8].copy_from_slice(&flags.to_le_bytes());
                slot[8..10].copy_from_slice(&(r.next() as u16).to_le_bytes());
                slot[10..12].copy_from_slice(&size.to_le_bytes());
            }
        }
        v.extend_from_slice(&slot);
    }
    v
}

fn keys_input(r: &mut Rng) -> Vec<u8> {
    const KEYS: &[&str] = &[
        "tx-ring-ref", "rx-ring-ref", "event-channel", "event-channel-tx", "event-channel-rx",
        "request-rx-copy", "feature-sg", "feature-no-csum-offload", "feature-ipv6-csum-offload",
        "feature-rx-notify", "multi-queue-num-queues", "feature-gso-tcpv4",
    ];
    const VALS: &[&str] = &["0", "1", "2", "09", "4294967295", "4294967296", "", " 1", "x", "17"];
    let mut s = String::new();
    for _ in 0..r.below(14) {
        s.push_str(KEYS[r.below(KEYS.len() as u64) as usize]);
        s.push('=');
        s.push_str(VALS[r.below(VALS.len() as u64) as usize]);
        s.push('\n');
    }
    s.into_bytes()
}

#[test]
fn fuzz_targets_seeded_smoke() {
    let mut r = Rng(0x005e_ed0f_f00d);
    for (name, entry) in TARGETS {
        for i in 0..600 {
            let data = match (*name, i % 2) {
                ("tx_ring", 0) => tx_input(&mut r),
                ("frontend_keys", 0) => keys_input(&mut r),
                _ => {
                    let n = r.below(1200) as usize;
                    (0..n).map(|_| r.next() as u8).collect()
                }
            };
            let res = std::panic::catch_unwind(|| entry(&data));
            assert!(res.is_ok(), "{name}: input {i} panicked: {data:02x?}");
        }
    }
}

#[test]
fn tx_ring_inputs_reach_every_outcome() {
    let mut r = Rng(0xc0ffee);
    let (mut frames, mut errors, mut fatal, mut clean) = (0, 0, 0, 0);
    for _ in 0..2000 {
        let o = fuzzing::run_tx_ring(&tx_input(&mut r));
        frames += o.frames;
        errors += o.errors;
        fatal += o.fatal as usize;
        clean += (!o.fatal) as usize;
    }
    assert!(frames > 100 && errors > 100 && fatal > 100 && clean > 20, "{frames} {errors} {fatal} {clean}");
}

#[test]
fn csum_fuzz_accepts_a_real_frame() {
    // A valid UDP/IPv4 frame goes through the checksum target's success path.
    let mut f = vec![0u8; 14 + 20 + 8 + 4];
    f[12] = 0x08;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&32u16.to_be_bytes());
    f[23] = 17;
    f[38..40].copy_from_slice(&12u16.to_be_bytes());
    fuzzing::fuzz_csum(&f);
    let mut g = f.clone();
    netback::csum::fill_l4_checksum(&mut g).unwrap();
    assert_eq!(netback::csum::l4_checksum_ok(&g), Ok(true));
}
