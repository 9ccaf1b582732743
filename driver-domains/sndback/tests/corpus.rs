//! Replays the committed corpus (`tests/corpus/engine/*`) through `sndback::fuzzing::engine`,
//! then property-generated edits of it (byte changes, insertions, cuts, splices) and raw random
//! programs. Any panic is a finding; proptest prints the minimal input to add to the corpus.

use proptest::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

fn corpus() -> &'static [Vec<u8>] {
    static C: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    C.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/engine");
        let mut v: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|f| f.unwrap().path())
            .collect();
        v.sort();
        let files: Vec<Vec<u8>> = v.iter().map(|p| std::fs::read(p).unwrap()).collect();
        assert!(files.len() >= 8, "corpus incomplete");
        files
    })
}

#[test]
fn replay_corpus() {
    let (mut ok, mut errors, mut events, mut fatal) = (0, 0, 0, 0);
    for f in corpus() {
        let o = sndback::fuzzing::run(f);
        ok += o.stats.requests - o.stats.errors;
        errors += o.stats.errors;
        events += o.stats.events;
        fatal += u32::from(o.fatal);
    }
    println!("corpus: {ok} requests ok, {errors} refused, {events} events, {fatal} fatal");
    // The corpus reaches served requests, refusals, position events and both fatal faults.
    assert!(
        ok >= 25 && errors >= 12 && events >= 5 && fatal == 2,
        "{ok} {errors} {events} {fatal}"
    );
}

#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Cut(usize),
    Splice(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        2 => (any::<usize>(), prop_oneof![Just(0u8), Just(0xff), Just(5), any::<u8>()]).prop_map(|(i, b)| Edit::Insert(i, b)),
        1 => any::<usize>().prop_map(Edit::Cut),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Splice(a, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn mutated_corpus(pick in any::<usize>(), edits in proptest::collection::vec(edit(), 1..6)) {
        let c = corpus();
        let mut v = c[pick % c.len()].clone();
        for e in edits {
            let n = v.len().max(1);
            match e {
                Edit::Set(i, b) => if !v.is_empty() { v[i % n] = b },
                Edit::Insert(i, b) => v.insert(i % (v.len() + 1), b),
                Edit::Cut(i) => v.truncate((i % n).max(1)),
                Edit::Splice(a, i) => {
                    let other = &c[a % c.len()];
                    let at = i % n;
                    v.truncate(at.max(1));
                    v.extend_from_slice(&other[1..]);
                }
            }
        }
        sndback::fuzzing::engine(&v);
    }

    #[test]
    fn random_programs(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        sndback::fuzzing::engine(&data);
    }
}
