//! `cargo xtask bench net`: a guest through net-dd versus the same guest image driving a virtio-net
//! NIC directly (`nic=virtio`), side by side in one run. Both guests serve (`work=serve`); the host
//! peer measures everything from its side, alternating between the two paths each round:
//! round-trip time (ICMP echo from the host), guest -> host throughput (reading the guest's TCP
//! source :19) and host -> guest throughput (writing to the guest's sink :9). Prints medians and
//! the ratios against the goal (≥ 0.9× throughput, ≤ 10 µs added RTT — a KVM goal; under TCG the
//! numbers measure the emulator as much as the design, and the report says so).

use std::time::Duration;

use anyhow::Result;

use crate::nettests::work;
use crate::probe::{BulkDir, PEER_SINK_PORT, PEER_SOURCE_PORT};
use crate::qemu::Accel;
use crate::topo::{Artifacts, GuestSpec, Nic, Topology, fmt_bps};
use crate::util::header;

const ROUNDS: usize = 3;
const PINGS: u16 = 20;
const BULK_SECS: f64 = 4.0;

#[derive(Default)]
struct Path {
    rtt_us: Vec<u64>,
    tx_bps: Vec<u64>,
    rx_bps: Vec<u64>,
}

fn median(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

pub fn run() -> Result<()> {
    crate::prereq::ensure_qemu()?;
    crate::prereq::ensure_net()?;
    let accel = Accel::choose(None)?;
    let a = Artifacts::build()?;
    let t = Topology::new("bench-net", accel, &a)
        .guest(GuestSpec::new(1).work(work::serve(0)))
        .guest(GuestSpec::new(2).nic(Nic::Virtio).work(work::serve(0)));
    let mut net = t.start()?;
    net.wait_port(1, "up", Duration::from_secs(30))?;
    net.wait_link("g1", Duration::from_secs(30))?;
    let paths = [("net-dd", "g1"), ("direct", "g2")];
    let mut res: [Path; 2] = Default::default();
    for round in 1..=ROUNDS {
        for (i, (label, vm)) in paths.iter().enumerate() {
            let ip = net.spec(vm).map(GuestSpec::ip).expect("guest spec");
            let rtts = net.ping(vm, ip, PINGS)?;
            let tx = net.bulk(vm, ip, PEER_SOURCE_PORT, BulkDir::Recv, BULK_SECS)?;
            let rx = net.bulk(vm, ip, PEER_SINK_PORT, BulkDir::Send, BULK_SECS)?;
            println!(
                "round {round}/{ROUNDS} {label:<7} ({vm} {ip}): rtt median {} us (min {}), guest->host {}, host->guest {}",
                median(&rtts),
                rtts.iter().min().copied().unwrap_or(0),
                fmt_bps(tx),
                fmt_bps(rx)
            );
            res[i].rtt_us.extend(rtts);
            res[i].tx_bps.push(tx);
            res[i].rx_bps.push(rx);
        }
    }
    net.stop()?;
    let (dd, direct) = (&res[0], &res[1]);
    header(&format!("bench net ({accel}): medians over {ROUNDS} alternating rounds"));
    println!("  {:<28} {:>16} {:>16} {:>10}", "", "through net-dd", "direct virtio", "ratio");
    let row = |what: &str, a: u64, b: u64| {
        println!("  {what:<28} {:>16} {:>16} {:>9.2}x", fmt_bps(a), fmt_bps(b), a as f64 / b.max(1) as f64);
    };
    row("guest -> host throughput", median(&dd.tx_bps), median(&direct.tx_bps));
    row("host -> guest throughput", median(&dd.rx_bps), median(&direct.rx_bps));
    let (rd, rv) = (median(&dd.rtt_us), median(&direct.rtt_us));
    println!(
        "  {:<28} {:>13} us {:>13} us {:>+8} us added",
        "round trip (host ping)",
        rd,
        rv,
        rd as i64 - rv as i64
    );
    println!(
        "  goal (under KVM): >= 0.90x throughput, <= 10 us added round trip.{}",
        if accel == Accel::Tcg {
            " This run used TCG (no usable hardware KVM here): every packet crosses two emulated \
             CPUs on the net-dd path, so the ratios measure the emulator as much as the design."
        } else {
            ""
        }
    );
    Ok(())
}
