//! Runs the fuzz entry points on pseudo-random inputs (a fixed-seed generator), so `cargo test`
//! exercises them even before a corpus exists; the committed corpus is replayed by
//! `corpus_replay.rs`.

#[test]
fn entry_points_survive_pseudo_random_streams() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (name, entry) in xenstore::fuzzing::TARGETS {
        for round in 0..300 {
            let len = (next() % 3000) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Every third input starts with a well-formed header, to get past the first check.
            if round % 3 == 0 && data.len() >= 17 {
                data[1..5].copy_from_slice(&2u32.to_le_bytes());
                data[13..17].copy_from_slice(&((next() % 64) as u32).to_le_bytes());
            }
            entry(&data);
            let _ = name;
        }
    }
}
