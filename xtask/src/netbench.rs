//! `cargo xtask bench net`: a guest through net-dd versus the same guest image driving a virtio-net
//! NIC directly (`nic=virtio`), side by side in one run, alternating between the two paths each
//! round. The host side measures: round-trip time (ICMP echo from the host to a serving guest),
//! host -> guest throughput (writing to the guest's TCP discard :9 for a few seconds), guest ->
//! host throughput (the guest's `tcp-send` into the host peer's sink, rate between its first and
//! last byte). Prints medians and
//! the ratios against the goal (≥ 0.9× throughput, ≤ 10 µs added RTT — a KVM goal; under TCG the
//! numbers measure the emulator as much as the design, and the report says so).

use std::time::Duration;

use anyhow::Result;

use crate::nettests::work;
use crate::probe::{BulkDir, PEER_SINK_PORT};
use crate::qemu::Accel;
use crate::topo::{Artifacts, GuestSpec, Nic, Topology, fmt_bps};
use crate::util::header;

const ROUNDS: usize = 3;
/// net-dd's `link_bps=` here: far above what either path reaches, so its shaper (which runs on
/// net-dd's own clock) never limits the comparison.
const UNSHAPED_BPS: u64 = 10_000_000_000;
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

/// One measurement of one path: RTT and host -> guest with the guest serving, then guest ->
/// host with the guest streaming to the host's sink (each in a fresh topology).
fn measure(accel: Accel, a: &Artifacts, nic: Nic, res: &mut Path) -> Result<String> {
    let run = if nic == Nic::Channel { "bench-net-dd" } else { "bench-net-direct" };
    let g = GuestSpec::new(1).nic(nic);
    let ip = g.ip();
    let mut net = Topology::new(run, accel, a).link_bps(UNSHAPED_BPS).guest(g.clone().serve(0)).start()?;
    if nic == Nic::Channel {
        net.wait_port(1, "up", Duration::from_secs(30))?;
    }
    let rtts = net.ping("g1", ip, PINGS)?;
    let rx = net.bulk("g1", ip, PEER_SINK_PORT, BulkDir::Send, BULK_SECS)?;
    let mut clocks = net.tsc_outliers();
    net.stop()?;
    let mut net = Topology::new(run, accel, a)
        .link_bps(UNSHAPED_BPS)
        .guest(g.clone().work(work::stream(g.gateway(), PEER_SINK_PORT, BULK_SECS as u32)))
        .start()?;
    let d = net.finish_guest("g1", Duration::from_secs(60))?;
    if !d.ok() {
        return Err(net.fail("g1", format!("stream did not finish ok: {} ({})", d.summary(), d.exit)));
    }
    let conn = net.wait_peer_conns("sink", ip, 1, Duration::from_secs(10))?;
    let tx = conn[0].bps;
    clocks.extend(net.tsc_outliers());
    net.stop()?;
    res.rtt_us.extend(&rtts);
    res.tx_bps.push(tx);
    res.rx_bps.push(rx);
    Ok(format!(
        "rtt median {} us (min {}), guest->host {} (guest's own count {}), host->guest {}{}",
        median(&rtts),
        rtts.iter().min().copied().unwrap_or(0),
        fmt_bps(tx),
        d.num("bps").map_or("-".into(), fmt_bps),
        fmt_bps(rx),
        if clocks.is_empty() { String::new() } else { format!(" [clock off: {}]", clocks.join(", ")) }
    ))
}

pub fn run() -> Result<()> {
    crate::prereq::ensure_qemu()?;
    crate::prereq::ensure_net()?;
    let accel = Accel::choose(None)?;
    let a = Artifacts::build()?;
    let mut res: [Path; 2] = Default::default();
    for round in 1..=ROUNDS {
        for (i, (label, nic)) in [("net-dd", Nic::Channel), ("direct", Nic::Virtio)].into_iter().enumerate() {
            let line = measure(accel, &a, nic, &mut res[i])?;
            println!("round {round}/{ROUNDS} {label:<7}: {line}");
        }
    }
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
        } else if crate::qemu::kvm_is_pvm() {
            " This KVM is kvm_pvm (a software virtualizer: costly exits, late interrupts), not \
             hardware KVM: not a measurement of the goal."
        } else {
            ""
        }
    );
    Ok(())
}
