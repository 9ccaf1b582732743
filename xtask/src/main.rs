//! `cargo xtask` — the project's build, run, test, demo and bench tool (matklad's xtask convention).
//!
//! Everything a developer or CI needs goes through here, so that a fresh Debian machine with only
//! Rust/rustup needs exactly two commands: `cargo xtask demo` and `cargo xtask test`. Prerequisites
//! (QEMU ≥ 8.2, iproute2, /dev/net/tun, the `x86_64-unknown-none` target) are checked and, when
//! running as root on Debian, installed.
//!
//! Layout: [`images`] holds the image table and the image build; [`qemu`] is the typed QEMU runner
//! (builder → running instance → outcome); [`netns`] makes throw-away network namespaces with a tap
//! device; [`probe`] implements ICMP echo and TCP echo clients (run *inside* a namespace by
//! re-executing this binary); [`topo`] runs multi-VM topologies (net-dd, guests over iConnect
//! channels, a host peer); [`suite`] (`cargo xtask test`), [`demo`] and [`bench`] are the subcommands built on them.

mod bench;
mod blk;
mod chan;
mod demo;
mod markers;
mod media;
mod media_capture;
mod netdd;
mod images;
mod netbench;
mod netdemo;
mod netns;
mod nettests;
mod prereq;
mod probe;
mod qemu;
mod suite;
mod topo;
mod util;
mod xen;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::qemu::Accel;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "iConnect-rs build, run, test, demo and bench tool")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build every image (or the named ones) into <target-dir>/images/<name>.elf and print sizes.
    Build {
        /// Only these images (default: all).
        images: Vec<String>,
    },
    /// Boot an image in QEMU with its serial console on this terminal.
    Run {
        /// Image name (see `cargo xtask build`).
        image: String,
        /// Kernel command line (e.g. "ip=10.0.2.15/24 gw=10.0.2.2 echo_port=7").
        #[arg(long)]
        append: Option<String>,
        /// Accelerator (default: kvm when /dev/kvm is usable, else tcg; env ICONNECT_ACCEL).
        #[arg(long, value_enum)]
        accel: Option<Accel>,
        /// Kill QEMU after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 64)]
        memory: u32,
        /// Do not rebuild the image first.
        #[arg(long)]
        no_build: bool,
    },
    /// The full test suite: host tests, clippy, image build, QEMU boot tests.
    Test(suite::TestArgs),
    /// Build, boot net-dd, ping it and talk TCP to it; print what happened.
    Demo {
        /// Accelerator (default: automatic).
        #[arg(long, value_enum)]
        accel: Option<Accel>,
        /// The Xen demo instead: net-dd as a driver domain for Linux netfront guests, nested Xen.
        #[arg(long)]
        xen: bool,
    },
    /// Benchmarks (criterion).
    Bench {
        #[arg(value_enum, default_value_t = bench::Which::All)]
        which: bench::Which,
    },
    /// Boot net-dd + guests over iConnect channels (a host peer on the uplink) and show their consoles.
    Net(topo::NetArgs),
    /// Boot media-dd (virtio-sound; `--tone HZ`: a PulseAudio pipe source for capture) + snd-guests, consoles live.
    Media(media_capture::MediaArgs),
    /// Boot blk-dd with a volume file (images/blk/) + guests over iConnect channels; `--check` only checks the file.
    Blk(blk::BlkArgs),
    /// Nested Xen: boot Xen 4.17 + a busybox dom0 in QEMU and run scenarios (default: all).
    Xen(xen::XenArgs),
    /// Internal: network probes run inside a namespace (`ip netns exec <ns> xtask probe ...`).
    #[command(hide = true)]
    Probe {
        #[command(subcommand)]
        probe: probe::ProbeCmd,
    },
}

fn main() -> ExitCode {
    util::ensure_stdin_open();
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Probe { .. }) {
        util::install_interrupt_handler();
    }
    let result = match cli.cmd {
        Cmd::Build { images } => images::build_cmd(&images).map(|_| ()),
        Cmd::Run { image, append, accel, timeout, memory, no_build } => {
            qemu::run_cmd(&image, append, accel, timeout, memory, no_build)
        }
        Cmd::Test(args) => suite::run(&args),
        Cmd::Demo { xen: true, .. } => xen::demo(),
        Cmd::Demo { accel, .. } => demo::run(accel),
        Cmd::Bench { which } => bench::run(which),
        Cmd::Probe { probe } => probe::run(&probe),
        Cmd::Xen(args) => xen::run_cmd(&args),
        Cmd::Net(args) => topo::net_cmd(&args),
        Cmd::Media(args) => media_capture::media_cmd(&args),
        Cmd::Blk(args) => blk::blk_cmd(&args),
    };
    if util::interrupted() {
        eprintln!("xtask: interrupted");
        return ExitCode::from(130);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
