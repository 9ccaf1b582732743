//! The QEMU-tier tests of the network driver domain (issue #4), on [`crate::topo`]: guest ↔ host
//! through net-dd, guest ↔ guest, QoS (2:1 guarantees under contention; a guarantee holding
//! against a best-effort flood), and a hostile guest that garbages its ring while another guest
//! keeps working. Rates are measured on the host side (the peer's per-second sink ticks, over the
//! window in which all flows run) and cross-checked with what the guests report.

use std::net::Ipv4Addr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::probe::{self, PEER_ECHO_PORT, PEER_SINK_PORT, SinkTick};
use crate::qemu::Accel;
use crate::topo::{Artifacts, GuestSpec, HOST_IP, Net, Qos, Topology, fmt_bps};

/// net-guest workloads (its `work=` syntax lives here only).
pub mod work {
    use std::net::Ipv4Addr;

    /// Stream TCP to `to:port` for `secs` seconds (rate reported once a second).
    pub fn stream(to: Ipv4Addr, port: u16, secs: u32) -> String {
        format!("stream:{to}:{port}:{secs}")
    }
    /// TCP echo exchange of `bytes` with `to:port`, verified byte for byte.
    pub fn echo(to: Ipv4Addr, port: u16, bytes: u32) -> String {
        format!("echo:{to}:{port}:{bytes}")
    }
    /// `count` ICMP echo requests to `to`.
    pub fn ping(to: Ipv4Addr, count: u32) -> String {
        format!("ping:{to}:{count}")
    }
    /// Serve (ICMP echo, TCP echo :7, sink :9) for `secs` seconds.
    pub fn serve(secs: u32) -> String {
        format!("serve:{secs}")
    }
    /// Garbage its own ring.
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
pub const QOS_LINK_BPS: u64 = 4_000_000;

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

/// Host ↔ guest through net-dd: the guest's port comes up, the host pings the guest, the guest
/// runs a TCP echo exchange with the host peer (verified in the guest, counted by the peer), and
/// pings the host.
pub fn guest_host(accel: Accel) -> Result<String> {
    let bytes = 128 * 1024;
    let g1 = GuestSpec::new(1).work(work::echo(HOST_IP, PEER_ECHO_PORT, bytes));
    let ip = g1.ip();
    let mut net = topology("guest-host", accel)?.guest(g1).start()?;
    let port = net.wait_port(1, "up", Duration::from_secs(30))?;
    ensure!(
        port.get("mac") == Some(net.spec("g1").context("g1")?.mac().as_str()),
        "net-dd port 1 came up with mac={:?}, g1 announced {}",
        port.get("mac"),
        net.spec("g1").context("g1")?.mac()
    );
    let rtts = net.ping("g1", ip, 3)?;
    let done = net.finish_all_ok(FINISH_WITHIN)?;
    let echoed = net.wait_peer_conns("echo", ip, 1, Duration::from_secs(10))?;
    ensure!(
        echoed[0].bytes == u64::from(bytes) && done[0].num("bytes") == Some(u64::from(bytes)),
        "the host peer echoed {} bytes for g1, g1 reports {:?}, expected {bytes}",
        echoed[0].bytes,
        done[0].num("bytes")
    );
    net.stop()?;
    Ok(format!(
        "port 1 up ({}); host->g1 ping x3 (max {} us); g1<->host TCP echo {bytes} bytes verified",
        port.get("qos").unwrap_or("?"),
        rtts.iter().max().copied().unwrap_or(0)
    ))
}

/// Guest ↔ guest through net-dd's bridge: g2 serves, g1 pings it and runs a TCP echo exchange.
pub fn guest_guest(accel: Accel) -> Result<String> {
    let bytes = 128 * 1024;
    let g2 = GuestSpec::new(2).work(work::serve(60));
    let g2_ip = g2.ip();
    let g1 = GuestSpec::new(1).work(work::echo(g2_ip, 7, bytes));
    let g3 = GuestSpec::new(3).work(work::ping(g2_ip, 5));
    let mut net = topology("guest-guest", accel)?.guest(g2).guest(g1).guest(g3).start()?;
    let d1 = net.finish_guest("g1", FINISH_WITHIN)?;
    let d3 = net.finish_guest("g3", FINISH_WITHIN)?;
    for d in [&d1, &d3] {
        if !d.ok() {
            return Err(net.fail(&d.name, format!("did not finish ok: {:?} ({})", d.result, d.exit)));
        }
    }
    ensure!(d1.num("bytes") == Some(u64::from(bytes)), "g1 echoed {:?} bytes with g2, expected {bytes}", d1.num("bytes"));
    ensure!(d3.num("lost") == Some(0), "g3 lost {:?} of 5 pings to g2", d3.num("lost"));
    net.stop()?;
    Ok(format!(
        "g1<->g2 TCP echo {bytes} bytes verified; g3->g2 ping x5 (p50 {} us)",
        d3.num("rtt_us_p50").unwrap_or(0)
    ))
}

/// Rates of the given sources over the window in which all of them stream (trimmed by
/// `trim_ms` at both ends): the window and each source's bits per second.
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

/// Boots the guests streaming to the host sink for [`QOS_SECS`], checks each one's link/port QoS
/// status, and returns the common-window rates (host-measured) plus a description.
fn qos_run(accel: Accel, run: &str, link: u64, qos: &[Qos]) -> Result<(Vec<u64>, String)> {
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
    let total: u64 = rates.iter().sum();
    let desc = names
        .iter()
        .zip(qos)
        .zip(&rates)
        .map(|((n, q), r)| format!("{n} ({}) {}", q.describe(), fmt_bps(*r)))
        .collect::<Vec<_>>()
        .join(", ");
    // The shaper must be what limits the flows (else this proves nothing about QoS).
    if total * 100 < link * 85 || total * 100 > link * 110 {
        net.stop()?;
        bail!(
            "the flows together got {} on a {} link over {ws}..{we} ms: the shaper is not the bottleneck ({desc})",
            fmt_bps(total),
            fmt_bps(link)
        );
    }
    net.stop()?;
    Ok((rates, format!("link {}: {desc} (over {:.1} s)", fmt_bps(link), (we - ws) as f64 / 1000.0)))
}

/// Two guests with guarantees 2:1 flooding the uplink: their rates are ≈ 2:1.
pub fn qos_ratio(accel: Accel) -> Result<String> {
    let (hi, lo) = (QOS_LINK_BPS * 2 / 3, QOS_LINK_BPS / 3);
    let (r, desc) = qos_run(accel, "qos-ratio", QOS_LINK_BPS, &[Qos::guaranteed(hi), Qos::guaranteed(lo)])?;
    let ratio = r[0] as f64 / r[1].max(1) as f64;
    ensure!((1.6..=2.4).contains(&ratio), "rate ratio g1/g2 = {ratio:.2}, expected about 2 (1.6..2.4): {desc}");
    Ok(format!("ratio {ratio:.2}; {desc}"))
}

/// A guaranteed guest against a best-effort flood: it keeps ≥ 95% of its guarantee.
pub fn qos_guarantee(accel: Accel) -> Result<String> {
    let g = QOS_LINK_BPS / 2;
    let (r, desc) = qos_run(accel, "qos-guarantee", QOS_LINK_BPS, &[Qos::guaranteed(g), Qos::default()])?;
    ensure!(
        r[0] * 100 >= g * 95,
        "g1 got {} = {:.1}% of its {} guarantee against a best-effort flood: {desc}",
        fmt_bps(r[0]),
        r[0] as f64 * 100.0 / g as f64,
        fmt_bps(g)
    );
    Ok(format!("g1 kept {:.1}% of its guarantee; {desc}", r[0] as f64 * 100.0 / g as f64))
}

/// A hostile guest garbages its ring: its port goes down with a reason; another guest's TCP
/// echo exchange with the host completes, verified.
pub fn hostile(accel: Accel) -> Result<String> {
    let bytes = 256 * 1024;
    let g1 = GuestSpec::new(1).work(work::hostile("ring"));
    let g2 = GuestSpec::new(2).work(work::echo(HOST_IP, PEER_ECHO_PORT, bytes));
    let g2_ip = g2.ip();
    let mut net = topology("hostile", accel)?.guest(g1).guest(g2).start()?;
    let down = net.wait_port(1, "down", Duration::from_secs(60))?;
    let reason = down.get("reason").unwrap_or("").to_string();
    if reason.is_empty() {
        return Err(net.fail("net-dd", "port 1 went down without a reason"));
    }
    let d2 = net.finish_guest("g2", FINISH_WITHIN)?;
    if !d2.ok() || d2.num("bytes") != Some(u64::from(bytes)) {
        return Err(net.fail("g2", format!("did not complete its {bytes}-byte echo: {:?} ({})", d2.result, d2.exit)));
    }
    let echoed = net.wait_peer_conns("echo", g2_ip, 1, Duration::from_secs(10))?;
    ensure!(echoed[0].bytes == u64::from(bytes), "the peer echoed {} bytes for g2", echoed[0].bytes);
    let port2 = net.serial("net-dd").iter().any(|l| {
        crate::markers::parse_fields(l, "ICONNECT-PORT").is_some_and(|f| f.word(0) == Some("2") && f.word(1) == Some("down"))
    });
    if port2 {
        return Err(net.fail("net-dd", "port 2 (the well-behaved guest) went down too"));
    }
    net.kill("g1")?;
    net.stop()?;
    Ok(format!("port 1 down (reason={reason}); g2 echoed {bytes} bytes with the host meanwhile"))
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
