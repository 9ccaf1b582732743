//! `cargo xtask demo`: a readable end-to-end run: prerequisites → build → boot net-dd behind a tap
//! device → ping → TCP echo → shut down; then net-dd as a driver domain: guests with different QoS
//! requests over iConnect channels stream to the host peer and to each other while the demo prints
//! live per-guest throughput against what each asked for, and a final table; blk-dd serving a
//! local and a remote (NBD) volume; media-dd mixing three guests. Each step is one entry of
//! [`STEPS`]. `--xen` runs the Xen demo instead (`xtask/src/xen`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::images::{self, Built, IMAGES};
use crate::netdd;
use crate::prereq;
use crate::qemu::Accel;
use crate::util::{fmt_bytes, fmt_dur, header};

#[derive(Default)]
pub struct Demo {
    requested: Option<Accel>,
    pub accel: Option<Accel>,
    built: Vec<Built>,
    net: Option<netdd::Session>,
    pub topo: Option<crate::topo::Net>,
    pub facts: Vec<String>,
}

type Step = fn(&mut Demo) -> Result<()>;

const STEPS: &[(&str, Step)] = &[
    ("check prerequisites (QEMU >= 8.2, iproute2, /dev/net/tun, Rust target)", prereqs),
    ("build the images", build),
    ("boot net-dd in QEMU (virtio-net on a tap device in a private network namespace)", boot_net),
    ("ping net-dd from the host side (ICMP echo, raw socket)", ping),
    ("talk TCP to net-dd's echo service (64 KiB, verified byte for byte)", tcp),
    ("shut net-dd down", stop_net),
    (
        "net-dd as a driver domain: boot it with 5 guests over iConnect channels, each with its own QoS request",
        crate::netdemo::boot,
    ),
    ("guests stream to the host peer and to each other: live throughput against each request", crate::netdemo::stream),
    ("shut the topology down", crate::netdemo::stop),
    ("storage: blk-dd serves one guest per volume of images/blk/demo.conf (a slice of its local disk, a remote qemu-nbd export), the same workload", blk),
    ("multimedia: media-dd mixes three guests' tones into one virtio-sound device (an alert ducks the others)", media),
];

fn media(d: &mut Demo) -> Result<()> {
    let accel = d.accel.context("no accelerator chosen")?;
    d.facts.extend(crate::media::demo(accel)?);
    Ok(())
}

fn blk(d: &mut Demo) -> Result<()> {
    let accel = d.accel.context("no accelerator chosen")?;
    let facts = crate::blk::demo(accel)?;
    d.facts.extend(facts);
    Ok(())
}

pub fn run(accel: Option<Accel>) -> Result<()> {
    let start = Instant::now();
    let mut d = Demo { requested: accel, ..Demo::default() };
    for (i, (title, step)) in STEPS.iter().enumerate() {
        if crate::util::interrupted() {
            d.net = None;
            d.topo = None;
            anyhow::bail!("interrupted");
        }
        header(&format!("demo step {}/{}: {title}", i + 1, STEPS.len()));
        let t = Instant::now();
        if let Err(e) = step(&mut d) {
            // Dropping the session kills QEMU and deletes the namespace.
            d.net = None;
            d.topo = None;
            println!("\ndemo: step {} FAILED after {}", i + 1, fmt_dur(t.elapsed()));
            return Err(e.context(format!("demo step {} ({title})", i + 1)));
        }
        println!("-> done in {}", fmt_dur(t.elapsed()));
    }
    header("demo: what happened");
    for f in &d.facts {
        println!("  * {f}");
    }
    println!("  demo finished successfully in {}", fmt_dur(start.elapsed()));
    Ok(())
}

fn prereqs(d: &mut Demo) -> Result<()> {
    prereq::ensure_rust_target()?;
    let v = prereq::ensure_qemu()?;
    prereq::ensure_net()?;
    prereq::ensure_qemu_utils()?;
    let accel = Accel::choose(d.requested)?;
    d.accel = Some(accel);
    d.facts.push(format!("QEMU {v}, accelerator {accel}"));
    Ok(())
}

fn build(d: &mut Demo) -> Result<()> {
    d.built = images::build(&IMAGES.iter().collect::<Vec<_>>())?;
    crate::chan::build_server()?;
    for b in &d.built {
        d.facts.push(format!(
            "image {}: {} ELF file (limit 1 MiB), {} in memory once loaded",
            b.name,
            fmt_bytes(b.file_bytes),
            fmt_bytes(b.elf.load_bytes)
        ));
    }
    Ok(())
}

fn boot_net(d: &mut Demo) -> Result<()> {
    let image = d.built.iter().find(|b| b.name == "net-dd").context("net-dd was not built")?;
    let accel = d.accel.context("no accelerator chosen")?;
    let s = netdd::boot(&image.path, accel, 64, Duration::from_secs(120), Duration::from_secs(600))?;
    let msg = format!(
        "net-dd booted: ready {} after its first instruction (guest TSC), {} after QEMU was started",
        fmt_dur(Duration::from_micros(s.boot_us)),
        fmt_dur(s.ready_after)
    );
    println!("{msg}");
    d.facts.push(msg);
    d.net = Some(s);
    Ok(())
}

fn ping(d: &mut Demo) -> Result<()> {
    let s = d.net.as_ref().context("net-dd is not running")?;
    let r = s.ping(5)?;
    for (i, us) in r.rtts_us.iter().enumerate() {
        println!("  reply from 10.0.2.15: icmp_seq={} time={:.3} ms", i + 1, *us as f64 / 1000.0);
    }
    let avg = r.rtts_us.iter().sum::<u64>() / r.rtts_us.len() as u64;
    let msg = format!(
        "ping: {0}/{0} echo replies with matching id, seq and payload; rtt min/avg/max {1:.3}/{2:.3}/{3:.3} ms",
        r.rtts_us.len(),
        *r.rtts_us.iter().min().unwrap_or(&0) as f64 / 1000.0,
        avg as f64 / 1000.0,
        *r.rtts_us.iter().max().unwrap_or(&0) as f64 / 1000.0
    );
    println!("{msg}");
    d.facts.push(msg);
    Ok(())
}

fn tcp(d: &mut Demo) -> Result<()> {
    let s = d.net.as_ref().context("net-dd is not running")?;
    let r = s.tcp(64 * 1024)?;
    let msg = format!(
        "TCP echo: {} sent in {} pieces to 10.0.2.15:7 and received back identical in {} ({:.0} KiB/s)",
        fmt_bytes(r.bytes),
        r.pieces,
        fmt_dur(Duration::from_micros(r.total_us)),
        r.kib_s
    );
    println!("{msg}");
    d.facts.push(msg);
    Ok(())
}

fn stop_net(d: &mut Demo) -> Result<()> {
    let s = d.net.take().context("net-dd is not running")?;
    let out = s.stop()?;
    let msg = format!("net-dd stopped after {} of run time, no fault or panic on its console", fmt_dur(out.duration));
    println!("{msg}");
    d.facts.push(msg);
    Ok(())
}
