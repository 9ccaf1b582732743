//! A booted net-dd behind a tap device in its own network namespace, shared by the QEMU test and
//! the demo: boot → wait for `ICONNECT-READY net-dd` → ping / TCP echo from inside the namespace →
//! stop. Dropping the session kills QEMU (by PID) and then deletes the namespace.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::markers;
use crate::netns::{GUEST_IP, Netns, TAP};
use crate::probe;
use crate::qemu::{Accel, GuestExit, Outcome, Qemu, Running, TAIL_LINES};

pub const CMDLINE: &str = "ip=10.0.2.15/24 gw=10.0.2.2 echo_port=7";

pub struct Session {
    // Field order matters: QEMU is dropped (killed) before the namespace is deleted.
    qemu: Running,
    ns: Netns,
    /// Guest-reported µs from first instruction to ready.
    pub boot_us: u64,
    /// Host-side time from spawning QEMU to seeing the READY line.
    pub ready_after: Duration,
}

pub struct PingReport {
    pub rtts_us: Vec<u64>,
}

pub struct TcpReport {
    pub bytes: u64,
    pub pieces: u64,
    pub total_us: u64,
    pub kib_s: f64,
}

/// Boot `image` (net-dd) with `memory_mib` of RAM inside a fresh namespace with tap0 and wait for
/// it to be ready.
pub fn boot(image: &Path, accel: Accel, memory_mib: u32, ready_within: Duration, timeout: Duration) -> Result<Session> {
    let ns = Netns::with_tap()?;
    let mut qemu = Qemu::new(image, accel)
        .memory_mib(memory_mib)
        .append(CMDLINE)
        .netdev(&format!("tap,id=n0,ifname={TAP},script=no,downscript=no"))
        .device("virtio-net-pci,netdev=n0,disable-legacy=on")
        .netns(ns.name())
        .timeout(timeout)
        .spawn()?;
    println!("net-dd: QEMU pid {} in {}", qemu.pid(), ns.name());
    match qemu.wait_for(|l| l.contains("ICONNECT-READY net-dd"), ready_within) {
        Ok((line, after)) => {
            let boot_us = markers::parse_ready(&line)
                .map(|(_, us)| us)
                .ok_or_else(|| anyhow!("malformed ready line: {line}"))?;
            Ok(Session { qemu, ns, boot_us, ready_after: after })
        }
        Err(why) => {
            let out = qemu.stop();
            drop(ns);
            bail!("net-dd did not print ICONNECT-READY: {why}\n{}", out.diagnostics())
        }
    }
}

impl Session {
    fn with_serial(&self, e: anyhow::Error) -> anyhow::Error {
        anyhow!("{e:#}\n--- last {TAIL_LINES} serial lines ---\n{}", self.qemu.tail(TAIL_LINES))
    }

    pub fn ping(&self, count: u16) -> Result<PingReport> {
        let rtts_us = probe::ping_in(&self.ns, GUEST_IP, count, 200).map_err(|e| self.with_serial(e))?;
        Ok(PingReport { rtts_us })
    }

    pub fn tcp(&self, bytes: usize) -> Result<TcpReport> {
        let args: Vec<String> =
            ["tcp", GUEST_IP, "--port", "7", "--bytes", &bytes.to_string(), "--timeout-ms", "90000"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let lines = probe::run_in(&self.ns, &args, Duration::from_secs(100)).map_err(|e| self.with_serial(e))?;
        let l = lines
            .iter()
            .find(|l| l.starts_with("PROBE tcp "))
            .ok_or_else(|| self.with_serial(anyhow!("TCP probe printed no result")))?;
        let num = |k: &str| -> Result<f64> {
            probe::field(l, k).and_then(|v| v.parse().ok()).with_context(|| format!("no {k} in `{l}`"))
        };
        let rep = TcpReport {
            bytes: num("bytes")? as u64,
            pieces: num("pieces")? as u64,
            total_us: num("total_us")? as u64,
            kib_s: num("kib_s")?,
        };
        if rep.bytes != bytes as u64 {
            bail!("TCP probe echoed {} bytes, wanted {bytes}", rep.bytes);
        }
        Ok(rep)
    }

    /// Kill QEMU, delete the namespace; error if the guest had died or reported a fault/panic.
    pub fn stop(self) -> Result<Outcome> {
        let Session { qemu, ns, .. } = self;
        let out = qemu.stop();
        drop(ns);
        if out.exit != GuestExit::Killed {
            bail!("net-dd was not running any more when stopped\n{}", out.diagnostics());
        }
        if let Some(l) = out.line_with("ICONNECT-FAULT").or_else(|| out.line_with("panicked")) {
            bail!("net-dd reported: {l}\n{}", out.diagnostics());
        }
        Ok(out)
    }
}
