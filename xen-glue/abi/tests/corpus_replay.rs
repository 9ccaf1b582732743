//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/*`) through the same entry
//! points the cargo-fuzz targets call, so saved findings and coverage stay tested by `cargo test`.

use std::path::Path;

#[test]
fn replay_fuzz_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut total = 0;
    for (name, entry) in xen_abi::fuzzing::TARGETS {
        let dir = root.join(name);
        let mut n = 0;
        for f in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        {
            let path = f.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let r = std::panic::catch_unwind(|| entry(&data));
            assert!(r.is_ok(), "{name}: {} panicked", path.display());
            n += 1;
        }
        assert!(n > 0, "empty corpus for {name}");
        total += n;
    }
    println!("replayed {total} corpus files");
}
