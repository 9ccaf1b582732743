//! Replays the committed corpus (`tests/corpus/<target>/*`) and seeded mutations of it through
//! the fuzz entry points of `blkback::fuzzing`.

use std::path::Path;

fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn mutate(seed: &mut u64, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..(next(seed) % 6 + 1) {
        match next(seed) % 4 {
            0 if !v.is_empty() => {
                let i = (next(seed) as usize) % v.len();
                v[i] ^= (next(seed) as u8).max(1);
            }
            1 => {
                let i = (next(seed) as usize) % (v.len() + 1);
                v.insert(i, next(seed) as u8);
            }
            2 if !v.is_empty() => {
                let i = (next(seed) as usize) % v.len();
                v[i] = [0, 1, 2, 3, 0xff, 0x7f][(next(seed) % 6) as usize];
            }
            _ if v.len() > 1 => {
                let i = (next(seed) as usize) % v.len();
                v.truncate(i.max(1));
            }
            _ => {}
        }
    }
    v
}

#[test]
fn replay_corpus_and_mutations() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut seed = 0x0dd_ba11_u64;
    let mut total = 0;
    for (name, entry) in blkback::fuzzing::TARGETS {
        let dir = root.join(name);
        let mut files = Vec::new();
        for f in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display())) {
            files.push(std::fs::read(f.unwrap().path()).unwrap());
        }
        assert!(!files.is_empty(), "empty corpus for {name}");
        for data in &files {
            entry(data);
            for _ in 0..400 {
                entry(&mutate(&mut seed, data));
                total += 1;
            }
        }
        // Splices of two corpus files.
        for _ in 0..300 {
            let a = &files[(next(&mut seed) as usize) % files.len()];
            let b = &files[(next(&mut seed) as usize) % files.len()];
            let mut v = a.clone();
            v.extend_from_slice(&b[1..]);
            entry(&mutate(&mut seed, &v));
            total += 1;
        }
    }
    println!("ran {total} inputs");
}
