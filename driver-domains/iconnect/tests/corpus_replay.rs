//! Replays the committed `iconnect_keys` fuzz corpus (kept with the other fuzz targets in
//! `xen-glue/abi/fuzz/corpus/`) through the fuzzing entry point.

use std::path::Path;

#[test]
fn replay_iconnect_keys_corpus() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../xen-glue/abi/fuzz/corpus/iconnect_keys");
    let mut n = 0;
    for f in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display())) {
        let path = f.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        assert!(
            std::panic::catch_unwind(|| iconnect::fuzzing::keys(&data)).is_ok(),
            "{} panicked",
            path.display()
        );
        n += 1;
    }
    assert!(n > 0, "empty corpus");
}
