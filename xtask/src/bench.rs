//! `cargo xtask bench [ring|all]`: criterion benchmarks. Room for `net`/`blk` (QEMU-based) later.

use anyhow::{Result, bail};
use clap::ValueEnum;

use crate::util::{self, header};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// xen-abi shared ring vs rtrb / crossbeam ArrayQueue (two threads).
    Ring,
    /// Two QEMU VMs on an ivshmem-doorbell channel: doorbell round trip, shared-memory bandwidth.
    Chan,
    /// A guest through net-dd vs the same guest on its own virtio-net NIC: throughput and RTT.
    Net,
    /// 4 KiB random IOPS (QD1/QD32) of a guest through blk-dd vs on its own virtio-blk disk.
    Blk,
    /// Mixer/resampler and sndif engine throughput (host), media-dd's CPU share mixing 4 guests.
    Media,
    /// Every benchmark.
    All,
}

/// A cargo bench target: (package, bench name, what it measures).
const CARGO_BENCHES: &[(Which, &str, &str, &str)] =
    &[
        (Which::Ring, "xen-abi", "ring", "messages/s through one ring between two threads"),
        (Which::Media, "media-dsp", "dsp", "resampler and mixer throughput, frames/s per core"),
        (Which::Media, "sndback", "engine", "4 guests through rings, grant copies, resampling and mix: device frames/s per core"),
    ];

fn has_bench(meta: &serde_json::Value, pkg: &str, bench: &str) -> bool {
    meta["packages"].as_array().into_iter().flatten().filter(|p| p["name"] == pkg).any(|p| {
        p["targets"].as_array().into_iter().flatten().any(|t| {
            t["name"] == bench && t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bench"))
        })
    })
}

pub fn run(which: Which) -> Result<()> {
    let meta = util::workspace_metadata()?;
    let mut missing = Vec::new();
    for &(w, pkg, bench, what) in CARGO_BENCHES {
        if which != Which::All && which != w {
            continue;
        }
        header(&format!("bench {pkg}/{bench}: {what}"));
        if !has_bench(&meta, pkg, bench) {
            println!("bench: package `{pkg}` has no bench target `{bench}` yet (expected a criterion bench, e.g. {pkg}'s benches/{bench}.rs with [[bench]] name = \"{bench}\", harness = false)");
            missing.push(format!("{pkg}/{bench}"));
            continue;
        }
        let mut c = util::cargo();
        c.args(["bench", "-p", pkg, "--bench", bench]);
        util::run(&mut c)?;
    }
    if matches!(which, Which::Chan | Which::All) {
        header("bench chan: doorbell round trip and bandwidth between two QEMU VMs (ivshmem)");
        crate::chan::bench()?;
    }
    if matches!(which, Which::Net | Which::All) {
        header("bench net: a guest through net-dd vs the same guest on a direct virtio-net NIC");
        crate::netbench::run()?;
    }
    if matches!(which, Which::Blk | Which::All) {
        header("bench blk: 4 KiB random IOPS through blk-dd vs the same guest on a direct virtio-blk disk");
        crate::blk::bench(None)?;
    }
    if matches!(which, Which::Media | Which::All) {
        header("bench media: media-dd's CPU share mixing 4 guests at 48 kHz (QEMU, host-measured)");
        crate::media::bench(None)?;
    }
    if !missing.is_empty() {
        bail!("benchmark(s) not available yet: {}", missing.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bench_targets_in_metadata() {
        let meta = serde_json::json!({"packages": [
            {"name": "xen-abi", "targets": [{"name": "xen_abi", "kind": ["lib"]}, {"name": "ring", "kind": ["bench"]}]},
            {"name": "other", "targets": [{"name": "ring", "kind": ["test"]}]}
        ]});
        assert!(has_bench(&meta, "xen-abi", "ring"));
        assert!(!has_bench(&meta, "other", "ring"));
        assert!(!has_bench(&meta, "xen-abi", "net"));
    }
}
