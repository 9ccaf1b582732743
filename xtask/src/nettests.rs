//! The QEMU-tier tests of the network driver domain (issue #4), on [`crate::topo`]: guest ↔ host
//! through net-dd, guest ↔ guest, QoS (2:1 guarantees under contention; a guarantee holding
//! against a best-effort flood), and a hostile guest that garbages its ring while another guest
//! keeps working. Rates are measured on the host side (the peer's per-second sink ticks, over the
//! window in which all flows run) and cross-checked with what the guests report.

use std::net::Ipv4Addr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::probe::{self, PEER_ECHO_PORT, PEER_SINK_PORT, SinkTick};
use crate::qemu::Accel;
use crate::topo::{Artifacts, GuestDone, GuestSpec, HOST_IP, Net, Nic, Qos, Topology, fmt_bps};

/// net-guest workloads (its `work=` syntax, guests/net-guest/src/config.rs, lives here only).
pub mod work {
    use std::net::Ipv4Addr;

    /// Bulk TCP to the sink `to:port` for `secs` seconds (rate reported once a second).
    pub fn stream(to: Ipv4Addr, port: u16, secs: u32) -> String {
        format!("tcp-send:{to}:{port}:{secs}")
    }
    /// `count` 64-byte request/echo round trips with the TCP echo server `to:port`.
    pub fn rtt(to: Ipv4Addr, port: u16, count: u32) -> String {
        format!("tcp-rtt:{to}:{port}:{count}")
    }
    /// Bytes a [`rtt`] run moves each way.
    pub const RTT_BYTES: u64 = 64;
    /// `count` ICMP echo requests to `to`.
    pub fn ping(to: Ipv4Addr, count: u32) -> String {
        format!("ping:{to}:{count}")
    }
    /// Garbage its own TX ring: `req-prod` (a producer index far past the ring), `bad-ref`
    /// (data references outside its data area), `oversize` (a request past its page).
    pub fn hostile(how: &str) -> String {
        format!("hostile:{how}")
    }
}

/// Bounds a hang only.
const FINISH_WITHIN: Duration = Duration::from_secs(120);
/// QoS runs: seconds each guest streams, and seconds cut from each end of the common window.
const QOS_SECS: u32 = 10;
const QOS_TRIM_MS: u64 = 1500;
/// Uplink capacity for the QoS runs: low enough that the shaper, not TCG, is the bottleneck.
pub const QOS_LINK_BPS: u64 = 2_000_000;

fn artifacts() -> Result<Artifacts> {
    static A: OnceLock<Artifacts> = OnceLock::new();
    if let Some(a) = A.get() {
        return Ok(a.clone());
    }
    let a = Artifacts::build()?;
    Ok(A.get_or_init(|| a).clone())
}

fn topology(run: &str, accel: Accel) -> Result<Topology> {
    crate::prereq::ensure_net()?;
    Ok(Topology::new(run, accel, &artifacts()?))
}

/// Host ↔ guest through net-dd. g1 serves: the host pings it and runs a 64 KiB TCP echo
/// exchange with it (verified by the host). g2 runs TCP round trips with the host's echo service
/// (verified by g2; the host counts the bytes), g3 pings the host.
pub fn guest_host(accel: Accel) -> Result<String> {
    let rounds = 200;
    let mut net = topology("guest-host", accel)?
        .guest(GuestSpec::new(1).serve(120))
        .guest(GuestSpec::new(2).work(work::rtt(HOST_IP, PEER_ECHO_PORT, rounds)))
        .guest(GuestSpec::new(3).work(work::ping(HOST_IP, 5)))
        .start()?;
    let ports = check_ports_up(&mut net)?;
    let g1 = net.spec("g1").map(GuestSpec::ip).context("g1")?;
    let rtts = net.ping("g1", g1, 3)?;
    let kib_s = net.tcp_echo("g1", g1, 7, 64 * 1024)?;
    let d2 = finish_ok(&mut net, "g2")?;
    let d3 = finish_ok(&mut net, "g3")?;
    let g2 = net.spec("g2").map(GuestSpec::ip).context("g2")?;
    let echoed = net.wait_peer_conns("echo", g2, 1, Duration::from_secs(10))?;
    let want = u64::from(rounds) * work::RTT_BYTES;
    if echoed[0].bytes != want {
        return Err(net.fail("g2", format!("the host echoed {} bytes for g2, expected {rounds} x 64 = {want}", echoed[0].bytes)));
    }
    net.kill("g1")?;
    net.stop()?;
    Ok(format!(
        "{ports}; host->g1 ping x3 (max {} us) and 64 KiB TCP echo verified ({kib_s:.0} KiB/s); g2->host {rounds} TCP round trips ({}); g3->host ping x5 ({})",
        rtts.iter().max().copied().unwrap_or(0),
        d2.summary(),
        d3.summary()
    ))
}

/// Guest ↔ guest through net-dd's bridge: g1 serves; g2 runs TCP round trips with it, g3 pings
/// it, g4 streams to its sink for 2 s.
pub fn guest_guest(accel: Accel) -> Result<String> {
    let g1 = GuestSpec::new(1).serve(120);
    let ip = g1.ip();
    let rounds = 200;
    let mut net = topology("guest-guest", accel)?
        .guest(g1)
        .guest(GuestSpec::new(2).work(work::rtt(ip, 7, rounds)))
        .guest(GuestSpec::new(3).work(work::ping(ip, 5)))
        .guest(GuestSpec::new(4).work(work::stream(ip, 9, 2)))
        .start()?;
    let ports = check_ports_up(&mut net)?;
    let d2 = finish_ok(&mut net, "g2")?;
    let d3 = finish_ok(&mut net, "g3")?;
    let d4 = finish_ok(&mut net, "g4")?;
    if d4.num("bytes").unwrap_or(0) == 0 {
        return Err(net.fail("g4", "streamed no byte to g1"));
    }
    net.kill("g1")?;
    net.stop()?;
    Ok(format!(
        "{ports}; g2->g1 {rounds} TCP round trips ({}); g3->g1 ping x5 ({}); g4->g1 stream ({})",
        d2.summary(),
        d3.summary(),
        d4.summary()
    ))
}

/// The `bench net` baseline works: a guest driving a virtio-net NIC of its own (`nic=virtio`, its
/// own tap and subnet, no driver domain) answers the host's pings and a 64 KiB TCP echo (verified
/// by the host), while a second one streams to the host's sink.
pub fn direct_virtio(accel: Accel) -> Result<String> {
    let g1 = GuestSpec::new(1).nic(Nic::Virtio).serve(120);
    let g2 = GuestSpec::new(2).nic(Nic::Virtio);
    let (ip1, ip2) = (g1.ip(), g2.ip());
    let g2 = g2.clone().work(work::stream(g2.gateway(), PEER_SINK_PORT, 2));
    let mut net = topology("direct-virtio", accel)?.guest(g1).guest(g2).start()?;
    let rtts = net.ping("g1", ip1, 3)?;
    let kib_s = net.tcp_echo("g1", ip1, 7, 64 * 1024)?;
    let d2 = finish_ok(&mut net, "g2")?;
    let sunk = net.wait_peer_conns("sink", ip2, 1, Duration::from_secs(10))?;
    let sent = d2.num("bytes").unwrap_or(0);
    if sunk[0].bytes < sent || sent == 0 {
        return Err(net.fail("g2", format!("the host's sink got {} bytes from g2, g2 reports {sent}", sunk[0].bytes)));
    }
    net.stop()?;
    Ok(format!(
        "host->g1 {ip1} ping x3 (max {} us) and 64 KiB TCP echo verified ({kib_s:.0} KiB/s); g2 {ip2} streamed {} to the host",
        rtts.iter().max().copied().unwrap_or(0),
        crate::util::fmt_bytes(sunk[0].bytes)
    ))
}

/// Every guest's `ICONNECT-LINK up` and net-dd's `ICONNECT-PORT <n> up` with that guest's MAC.
fn check_ports_up(net: &mut Net) -> Result<String> {
    let specs: Vec<GuestSpec> = net.guest_specs().iter().filter(|g| g.nic == Nic::Channel).cloned().collect();
    for (i, g) in specs.iter().enumerate() {
        net.wait_link(&g.name(), Duration::from_secs(30))?;
        let port = net.wait_port(i + 1, "up", Duration::from_secs(10))?;
        if port.get("mac") != Some(g.mac().as_str()) {
            return Err(net.fail("net-dd", format!("port {} came up with mac={:?}, {} announced {}", i + 1, port.get("mac"), g.name(), g.mac())));
        }
    }
    Ok(format!("ports 1..{} up with the guests' MACs", specs.len()))
}

/// Wait for `guest` to end with `ICONNECT-RESULT ok` and exit 33.
fn finish_ok(net: &mut Net, guest: &str) -> Result<GuestDone> {
    let d = net.finish_guest(guest, FINISH_WITHIN)?;
    if !d.ok() {
        return Err(net.fail(guest, format!("did not finish ok: {} ({})", d.summary(), d.exit)));
    }
    Ok(d)
}

/// Rates of the given sources over the window in which all of them stream (trimmed by
/// `trim_ms` at both ends): the window and each source's bits per second in a typical second
/// ([`probe::window_bps`]).
pub fn common_window_rates(ticks: &[SinkTick], sources: &[Ipv4Addr], trim_ms: u64) -> Result<((u64, u64), Vec<u64>)> {
    let mut start = 0u64;
    let mut end = u64::MAX;
    for &s in sources {
        let mine: Vec<&SinkTick> = ticks.iter().filter(|t| t.from == s).collect();
        let first = mine.iter().map(|t| t.at_ms.saturating_sub(t.ms)).min().with_context(|| format!("no sink ticks from {s}"))?;
        let last = mine.iter().map(|t| t.at_ms).max().unwrap_or(0);
        start = start.max(first);
        end = end.min(last);
    }
    let (ws, we) = (start + trim_ms, end.saturating_sub(trim_ms));
    ensure!(we > ws + 1000, "the flows overlapped for only {} ms ({start}..{end})", end.saturating_sub(start));
    let rates = sources
        .iter()
        .map(|&s| probe::window_bps(ticks, s, ws, we).with_context(|| format!("no sink tick from {s} inside {ws}..{we} ms")))
        .collect::<Result<Vec<_>>>()?;
    Ok(((ws, we), rates))
}

fn sink_ticks(net: &Net) -> Vec<SinkTick> {
    net.peer_lines().iter().filter_map(|l| SinkTick::parse(l)).collect()
}

/// What one QoS run measured (host side) and whether net-dd's clock could be trusted.
struct QosRun {
    rates: Vec<u64>,
    desc: String,
    /// net-dd calibrated its TSC far off the other VMs (its shaper then runs at a scaled rate).
    netdd_clock_off: Option<String>,
}

/// Boots the guests streaming to the host sink for [`QOS_SECS`], checks each one's link/port QoS
/// status, and measures the common-window rates on the host; then `check` judges them. net-dd
/// shapes by its own clock, which rt calibrates against the PIT at boot: under TCG on a loaded
/// host that calibration is sometimes far off (RT-REQUESTS item 5), and the shaper then runs at a
/// scaled rate. A run that failed while net-dd's clock was off (its TSC >25% from the other VMs')
/// measured rt's calibration, not QoS: it runs once more, and the result line says so. Nothing
/// else is retried.
fn qos_test(
    accel: Accel,
    run: &str,
    link: u64,
    qos: &[Qos],
    check: impl Fn(&[u64], &str) -> Result<String>,
) -> Result<String> {
    let first = qos_attempt(accel, run, link, qos)?;
    let verdict = qos_verdict(&first, link).and_then(|()| check(&first.rates, &first.desc));
    match (&verdict, &first.netdd_clock_off) {
        (Err(e), Some(off)) => {
            println!("qos: failed while net-dd's clock was off ({off}): {e:#}; running once more");
            let second = qos_attempt(accel, run, link, qos)?;
            qos_verdict(&second, link)?;
            let line = check(&second.rates, &second.desc)?;
            Ok(format!("{line} [second run: the first failed while net-dd's clock was off: {off}]"))
        }
        _ => verdict,
    }
}

/// The shaper must be what limits the flows (else the run proves nothing about QoS): in a typical
/// second they fill the link together, less TCP/IP headers (~4%) and scheduling noise.
fn qos_verdict(r: &QosRun, link: u64) -> Result<()> {
    let total: u64 = r.rates.iter().sum();
    ensure!(
        total * 100 >= link * 80 && total * 100 <= link * 110,
        "the flows together got {} on a {} link: the shaper is not the bottleneck ({})",
        fmt_bps(total),
        fmt_bps(link),
        r.desc
    );
    Ok(())
}

fn qos_attempt(accel: Accel, run: &str, link: u64, qos: &[Qos]) -> Result<QosRun> {
    let mut t = topology(run, accel)?;
    t = t.link_bps(link);
    for (i, q) in qos.iter().enumerate() {
        let g = GuestSpec::new(u8::try_from(i + 1)?).qos(q.clone()).work(work::stream(HOST_IP, PEER_SINK_PORT, QOS_SECS));
        t = t.guest(g);
    }
    let mut net = t.start()?;
    let names: Vec<String> = net.guest_specs().iter().map(GuestSpec::name).collect();
    let ips: Vec<Ipv4Addr> = net.guest_specs().iter().map(GuestSpec::ip).collect();
    for (i, (n, q)) in names.iter().zip(qos).enumerate() {
        let link = net.wait_link(n, Duration::from_secs(30))?;
        let want = if q.is_empty() { ["none", "granted"].as_slice() } else { ["granted"].as_slice() };
        let status = link.get("qos").unwrap_or("");
        if !want.contains(&status) {
            return Err(net.fail(n, format!("link up with qos={status}, expected {}", want.join("|"))));
        }
        if let Some(g) = q.guaranteed_bps
            && link.num("granted_bps") != Some(g)
        {
            return Err(net.fail(n, format!("granted_bps={:?}, asked {g}", link.num("granted_bps"))));
        }
        net.wait_port(i + 1, "up", Duration::from_secs(10))?;
    }
    net.finish_all_ok(FINISH_WITHIN)?;
    let ticks = sink_ticks(&net);
    let ((ws, we), rates) = common_window_rates(&ticks, &ips, QOS_TRIM_MS)?;
    let desc = names
        .iter()
        .zip(qos)
        .zip(&rates)
        .map(|((n, q), r)| format!("{n} ({}) {}", q.describe(), fmt_bps(*r)))
        .collect::<Vec<_>>()
        .join(", ");
    let netdd_clock_off = net.tsc_outliers().into_iter().find(|o| o.starts_with("net-dd "));
    net.stop()?;
    Ok(QosRun {
        rates,
        desc: format!("link {}: {desc} (over {:.1} s)", fmt_bps(link), (we - ws) as f64 / 1000.0),
        netdd_clock_off,
    })
}

/// Two guests with guarantees 2:1 flooding the uplink: their rates are ≈ 2:1.
pub fn qos_ratio(accel: Accel) -> Result<String> {
    let (hi, lo) = (QOS_LINK_BPS * 2 / 3, QOS_LINK_BPS / 3);
    qos_test(accel, "qos-ratio", QOS_LINK_BPS, &[Qos::guaranteed(hi), Qos::guaranteed(lo)], |r, desc| {
        let ratio = r[0] as f64 / r[1].max(1) as f64;
        ensure!((1.6..=2.4).contains(&ratio), "rate ratio g1/g2 = {ratio:.2}, expected about 2 (1.6..2.4): {desc}");
        Ok(format!("ratio {ratio:.2}; {desc}"))
    })
}

/// A guaranteed guest against a best-effort flood: it keeps ≥ 95% of its guarantee.
pub fn qos_guarantee(accel: Accel) -> Result<String> {
    let g = QOS_LINK_BPS / 2;
    qos_test(accel, "qos-guarantee", QOS_LINK_BPS, &[Qos::guaranteed(g), Qos::default()], |r, desc| {
        let pct = r[0] as f64 * 100.0 / g as f64;
        ensure!(
            r[0] * 100 >= g * 95,
            "g1 got {} = {pct:.1}% of its {} guarantee against a best-effort flood: {desc}",
            fmt_bps(r[0]),
            fmt_bps(g)
        );
        Ok(format!("g1 kept {pct:.1}% of its guarantee; {desc}"))
    })
}

/// Hostile guests garbage their TX rings while the others keep working. g1 writes a wild producer
/// index (`hostile:req-prod`) and g4 a request past its page (`hostile:oversize`): their ports go
/// down with a reason and each of them sees its channel closed. g5 sends requests with data
/// references outside its data area (`hostile:bad-ref`): each is answered with an error and its
/// port stays up. Meanwhile g2 streams to the host's sink for 3 s (the sink gets all it sent, and
/// net-dd keeps counting port 2's traffic after port 1 went down) and g3 runs verified TCP round
/// trips with the host's echo (the host counts the bytes).
pub fn hostile(accel: Accel) -> Result<String> {
    let rounds = 2000;
    let mut net = topology("hostile", accel)?
        .guest(GuestSpec::new(1).work(work::hostile("req-prod")))
        .guest(GuestSpec::new(2).work(work::stream(HOST_IP, PEER_SINK_PORT, 3)))
        .guest(GuestSpec::new(3).work(work::rtt(HOST_IP, PEER_ECHO_PORT, rounds)))
        .guest(GuestSpec::new(4).work(work::hostile("oversize")))
        .guest(GuestSpec::new(5).work(work::hostile("bad-ref")))
        .start()?;
    let mut reasons = Vec::new();
    for port in [1, 4] {
        let down = net.wait_port(port, "down", Duration::from_secs(60))?;
        match down.get("reason") {
            Some(r) if !r.is_empty() && r != "disconnected" => reasons.push(format!("port {port}: {r}")),
            r => return Err(net.fail("net-dd", format!("port {port} went down with reason {r:?}, expected the fault named"))),
        }
    }
    let mut outcomes = Vec::new();
    for g in ["g1", "g4", "g5"] {
        let d = finish_ok(&mut net, g)?;
        outcomes.push(format!("{g} {}", d.result.as_ref().and_then(|f| f.get("outcome")).unwrap_or("?")));
    }
    let d2 = finish_ok(&mut net, "g2")?;
    let d3 = finish_ok(&mut net, "g3")?;
    let ip = |n: &str| net.spec(n).map(GuestSpec::ip).context("no such guest");
    let (g2, g3) = (ip("g2")?, ip("g3")?);
    let sunk = net.wait_peer_conns("sink", g2, 1, Duration::from_secs(10))?;
    // g2 counts what its stack took (short of the last send buffer at most); the sink must have
    // all of that.
    let sent = d2.num("bytes").unwrap_or(0);
    if sunk[0].bytes < sent || sent == 0 {
        return Err(net.fail("g2", format!("the host's sink got {} bytes from g2, g2 reports {sent}", sunk[0].bytes)));
    }
    let echoed = net.wait_peer_conns("echo", g3, 1, Duration::from_secs(10))?;
    let want = u64::from(rounds) * work::RTT_BYTES;
    if echoed[0].bytes != want {
        return Err(net.fail("g3", format!("the host echoed {} bytes for g3, expected {want}", echoed[0].bytes)));
    }
    // In net-dd's own order: after port 1 went down, port 2 still moved traffic; ports 2, 3 and 5
    // went down only by their guests leaving.
    let dd = net.serial("net-dd");
    let port = |l: &str| crate::markers::parse_fields(l, "ICONNECT-PORT");
    let at_down = dd.iter().position(|l| port(l).is_some_and(|f| f.word(0) == Some("1") && f.word(1) == Some("down")));
    let later_tx = dd[at_down.unwrap_or(dd.len())..]
        .iter()
        .filter_map(|l| crate::markers::parse_fields(l, "ICONNECT-PORTSTAT"))
        .any(|f| f.word(0) == Some("2") && f.num("tx_bps").unwrap_or(0) > 0);
    if !later_tx {
        return Err(net.fail("net-dd", "no ICONNECT-PORTSTAT with traffic on port 2 after port 1 went down"));
    }
    if let Some(f) = dd.iter().filter_map(|l| port(l)).find(|f| {
        matches!(f.word(0), Some("2" | "3" | "5")) && f.word(1) == Some("down") && f.get("reason") != Some("disconnected")
    }) {
        return Err(net.fail("net-dd", format!("port {} went down too: reason={:?}", f.word(0).unwrap_or("?"), f.get("reason"))));
    }
    net.stop()?;
    Ok(format!(
        "{}; guests saw: {}; meanwhile g2 streamed {} to the host (all received) and g3 completed {rounds} verified TCP round trips (p50 {} us)",
        reasons.join(", "),
        outcomes.join(", "),
        crate::util::fmt_bytes(sunk[0].bytes),
        d3.num("rtt_us_p50").unwrap_or(0)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(from: Ipv4Addr, bytes: u64, at_ms: u64) -> SinkTick {
        SinkTick { from, bytes, ms: 1000, at_ms }
    }

    #[test]
    fn window_rates_use_the_overlap_only() {
        let (a, b) = (Ipv4Addr::new(10, 0, 2, 21), Ipv4Addr::new(10, 0, 2, 22));
        let mut t = Vec::new();
        // a alone for 2 s at 8 kbit/s, then both 4 s: a 2 kbit/s, b 1 kbit/s; b alone 2 s after.
        for s in 1..=2 {
            t.push(tick(a, 1000, s * 1000));
        }
        for s in 3..=6 {
            t.push(tick(a, 250, s * 1000));
            t.push(tick(b, 125, s * 1000));
        }
        for s in 7..=8 {
            t.push(tick(b, 1000, s * 1000));
        }
        let ((ws, we), r) = common_window_rates(&t, &[a, b], 0).unwrap();
        assert_eq!((ws, we), (2000, 6000));
        assert_eq!(r, [2000, 1000]);
        assert!(common_window_rates(&t, &[a, b], 1500).is_err(), "1 s of overlap left is too short");
        assert!(common_window_rates(&t, &[a, Ipv4Addr::new(1, 2, 3, 4)], 0).is_err());
    }
}
