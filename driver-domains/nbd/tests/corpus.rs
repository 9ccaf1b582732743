//! Replays the committed corpus (`tests/corpus/<target>/*`) and seeded random inputs (raw,
//! and mutations of the corpus files) through the fuzz entry points of `nbd::fuzzing`.

use std::path::Path;

fn mutate(seed: &mut u64, base: &[u8]) -> Vec<u8> {
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    let mut v = base.to_vec();
    for _ in 0..(next() % 4 + 1) {
        match next() % 3 {
            0 if !v.is_empty() => {
                let i = (next() as usize) % v.len();
                v[i] ^= (next() as u8).max(1);
            }
            1 => {
                let i = (next() as usize) % (v.len() + 1);
                v.insert(i, next() as u8);
            }
            _ if !v.is_empty() => {
                let i = (next() as usize) % v.len();
                v.truncate(i);
            }
            _ => {}
        }
    }
    v
}

#[test]
fn replay_corpus_and_mutations() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut total = 0;
    for (name, entry) in nbd::fuzzing::TARGETS {
        let dir = root.join(name);
        let mut files = Vec::new();
        for f in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display())) {
            files.push(std::fs::read(f.unwrap().path()).unwrap());
        }
        assert!(!files.is_empty(), "empty corpus for {name}");
        for data in &files {
            entry(data);
            for _ in 0..300 {
                entry(&mutate(&mut seed, data));
                total += 1;
            }
        }
        for _ in 0..500 {
            let mut x = mutate(&mut seed, b"len").len() as u64 * 0x9e37_79b9 + seed;
            let len = (x % 300) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            entry(&data);
            total += 1;
        }
    }
    println!("ran {total} inputs");
}
