//! Multi-VM topologies on the QEMU platform: `net-dd` with its virtio-net uplink on a tap device
//! in a private network namespace (host peer 10.0.2.2), one iConnect channel per guest (an
//! `ivshmem-server` and its own region, an `ivshmem-doorbell` device in net-dd and in the guest),
//! and `net-guest` VMs. A guest may instead drive a virtio-net NIC of its own (`nic=virtio`, on its
//! own tap and subnet in the same namespace) for the direct-path comparison.
//!
//! [`Topology`] describes a run; [`Topology::start`] boots it and returns a [`Net`]: every VM's
//! console is captured (and, with `echo`, printed live with the VM's name as prefix), markers are
//! awaited with deadlines, failures name the VM and show its console tail, and dropping the `Net`
//! kills every process by PID (guests, net-dd, the host peer, the servers) and deletes the
//! namespace. Consoles are written to `<target>/topo/<run>/<vm>.log`.
//!
//! A host-side peer (`xtask probe serve`) runs in the namespace: TCP echo on 7, sink on 9, source
//! on 19 (see [`probe::PEER_ECHO_PORT`]); it reports every finished connection (`PROBE conn`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::chan::{self, Server};
use crate::markers::{self, Fields};
use crate::netns::{Netns, TAP};
use crate::probe::{self, PeerConn};
use crate::qemu::{Accel, GuestExit, Outcome, Qemu, Running};
use crate::util::{self, fmt_dur};

/// Size of each channel's region (BAR2): control page, two ring pages, data pages.
pub const REGION: &str = "4M";
/// MSI-X vectors per channel: ring 0 (netif TX) and ring 1 (netif RX).
pub const VECTORS: u16 = 2;
/// The host peer's address on the uplink.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// Console lines shown with a failure.
pub const TAIL: usize = 40;

/// How a guest reaches the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nic {
    /// An iConnect channel to net-dd (one ivshmem-doorbell device).
    Channel,
    /// Its own virtio-net NIC on its own tap device (no driver domain): `nic=virtio`.
    Virtio,
}

/// A guest's QoS request (`qos_*=` on its command line).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Qos {
    pub guaranteed_bps: Option<u64>,
    pub ceiling_bps: Option<u64>,
    pub burst_bytes: Option<u64>,
    /// `latency`, `normal` or `bulk`.
    pub class: Option<&'static str>,
}

impl Qos {
    pub fn guaranteed(bps: u64) -> Qos {
        Qos { guaranteed_bps: Some(bps), ..Qos::default() }
    }
    pub fn is_empty(&self) -> bool {
        *self == Qos::default()
    }
    /// Human-readable, for tables.
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        if let Some(g) = self.guaranteed_bps {
            v.push(format!("guarantee {}", fmt_bps(g)));
        }
        if let Some(c) = self.ceiling_bps {
            v.push(format!("ceiling {}", fmt_bps(c)));
        }
        if let Some(b) = self.burst_bytes {
            v.push(format!("burst {b} B"));
        }
        if let Some(c) = self.class {
            v.push(format!("class {c}"));
        }
        if v.is_empty() { "best effort".into() } else { v.join(", ") }
    }
}

/// One guest VM.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    /// `g<index>`, 10.0.2.<20+index>, MAC 52:54:00:12:34:<20+index hex>.
    pub index: u8,
    pub qos: Qos,
    /// `work=` (net-guest's workload), if any.
    pub work: Option<String>,
    pub nic: Nic,
    /// More `key=value` words for the command line.
    pub extra: Vec<String>,
}

impl GuestSpec {
    pub fn new(index: u8) -> GuestSpec {
        GuestSpec { index, qos: Qos::default(), work: None, nic: Nic::Channel, extra: Vec::new() }
    }
    pub fn qos(mut self, q: Qos) -> Self {
        self.qos = q;
        self
    }
    pub fn work(mut self, w: impl Into<String>) -> Self {
        self.work = Some(w.into());
        self
    }
    /// `work=serve` for `secs` seconds (0: until killed).
    pub fn serve(mut self, secs: u32) -> Self {
        self.work = Some("serve".into());
        if secs > 0 {
            self.extra.push(format!("secs={secs}"));
        }
        self
    }
    pub fn nic(mut self, n: Nic) -> Self {
        self.nic = n;
        self
    }
    pub fn name(&self) -> String {
        format!("g{}", self.index)
    }
    /// Channel guests share net-dd's subnet; a virtio guest has its own (10.0.<100+i>.0/24, host
    /// side .2) on its own tap.
    pub fn ip(&self) -> Ipv4Addr {
        match self.nic {
            Nic::Channel => Ipv4Addr::new(10, 0, 2, 20 + self.index),
            Nic::Virtio => Ipv4Addr::new(10, 0, 100 + self.index, 20),
        }
    }
    /// The host peer as this guest sees it.
    pub fn gateway(&self) -> Ipv4Addr {
        match self.nic {
            Nic::Channel => HOST_IP,
            Nic::Virtio => Ipv4Addr::new(10, 0, 100 + self.index, 2),
        }
    }
    pub fn mac(&self) -> String {
        format!("52:54:00:12:34:{:02x}", 0x20 + u32::from(self.index))
    }
    fn tap(&self) -> String {
        format!("tg{}", self.index)
    }
    pub fn cmdline(&self) -> String {
        let mut v = vec![
            format!("ip={}/24", self.ip()),
            format!("gw={}", self.gateway()),
            format!("mac={}", self.mac()),
            format!("name={}", self.name()),
        ];
        if self.nic == Nic::Virtio {
            v.push("nic=virtio".into());
        }
        let q = &self.qos;
        for (k, val) in [
            ("qos_guaranteed_bps", q.guaranteed_bps),
            ("qos_ceiling_bps", q.ceiling_bps),
            ("qos_burst_bytes", q.burst_bytes),
        ] {
            if let Some(x) = val {
                v.push(format!("{k}={x}"));
            }
        }
        if let Some(c) = q.class {
            v.push(format!("qos_class={c}"));
        }
        if let Some(w) = &self.work {
            v.push(format!("work={w}"));
        }
        v.extend(self.extra.iter().cloned());
        v.join(" ")
    }
}

/// A multi-VM run.
pub struct Topology {
    /// Names the log directory.
    pub run: String,
    pub accel: Accel,
    pub netdd_image: PathBuf,
    pub guest_image: PathBuf,
    pub server_bin: PathBuf,
    /// `link_bps=` of net-dd (None: its default).
    pub link_bps: Option<u64>,
    /// More words for net-dd's command line.
    pub netdd_extra: Vec<String>,
    pub guests: Vec<GuestSpec>,
    pub netdd_memory_mib: u32,
    pub guest_memory_mib: u32,
    /// Every QEMU's run timeout (bounds a hang).
    pub timeout: Duration,
    /// How long each VM may take to print `ICONNECT-READY`.
    pub ready_within: Duration,
    /// Start the host peer (echo/sink/source) in the namespace.
    pub peer: bool,
    /// Print every console line live, prefixed with the VM's name.
    pub echo: bool,
}

/// What [`Topology::new`] builds once: the images and the server.
#[derive(Clone, Debug)]
pub struct Artifacts {
    pub netdd: PathBuf,
    pub guest: PathBuf,
    pub server: PathBuf,
}

impl Artifacts {
    /// Build net-dd, net-guest and ivshmem-server.
    pub fn build() -> Result<Artifacts> {
        let imgs = [crate::images::find("net-dd")?, crate::images::find("net-guest")?];
        let built = crate::images::build(&imgs)?;
        Ok(Artifacts { netdd: built[0].path.clone(), guest: built[1].path.clone(), server: chan::build_server()? })
    }
}

impl Topology {
    pub fn new(run: &str, accel: Accel, a: &Artifacts) -> Topology {
        Topology {
            run: run.into(),
            accel,
            netdd_image: a.netdd.clone(),
            guest_image: a.guest.clone(),
            server_bin: a.server.clone(),
            link_bps: None,
            netdd_extra: Vec::new(),
            guests: Vec::new(),
            netdd_memory_mib: 16,
            guest_memory_mib: 16,
            timeout: Duration::from_secs(300),
            ready_within: Duration::from_secs(60),
            peer: true,
            echo: std::env::var_os("ICONNECT_ECHO").is_some_and(|v| !v.is_empty() && v != "0"),
        }
    }
    pub fn guest(mut self, g: GuestSpec) -> Self {
        self.guests.push(g);
        self
    }
    pub fn link_bps(mut self, bps: u64) -> Self {
        self.link_bps = Some(bps);
        self
    }
    pub fn echo(mut self, on: bool) -> Self {
        self.echo = on;
        self
    }

    /// net-dd's command line.
    pub fn netdd_cmdline(&self) -> String {
        let mut s = crate::netdd::CMDLINE.to_string();
        if let Some(l) = self.link_bps {
            s.push_str(&format!(" link_bps={l}"));
        }
        for w in &self.netdd_extra {
            s.push(' ');
            s.push_str(w);
        }
        s
    }

    fn channel_guests(&self) -> impl Iterator<Item = &GuestSpec> {
        self.guests.iter().filter(|g| g.nic == Nic::Channel)
    }

    /// Boot everything: namespace, servers, host peer, net-dd (waits for its READY), guests
    /// (waits for each READY).
    pub fn start(self) -> Result<Net> {
        let started = Instant::now();
        let ns = Netns::with_tap()?;
        for g in self.guests.iter().filter(|g| g.nic == Nic::Virtio) {
            ns.add_tap(&g.tap(), &format!("{}/24", g.gateway()))?;
        }
        let mut net = Net {
            vms: Vec::new(),
            peer: None,
            servers: Vec::new(),
            ns,
            log_dir: log_dir(&self.run)?,
            echo: self.echo,
            started,
            guests: self.guests.clone(),
            logs_written: false,
        };
        // One server (one region) per channel.
        let mut sockets = Vec::new();
        for g in self.channel_guests() {
            let sock = chan::socket_path(&format!("net-{}-{}", self.run, g.name()))?;
            net.servers.push(Server::start(&self.server_bin, &sock, REGION, VECTORS)?);
            sockets.push((g.name(), sock));
        }
        if self.peer {
            net.peer = Some(Peer::start(&net.ns)?);
        }
        // net-dd: uplink NIC first, then the channels in guest order (PCI order = port 1..N).
        let mut q = Qemu::new(&self.netdd_image, self.accel)
            .memory_mib(self.netdd_memory_mib)
            .append(&self.netdd_cmdline())
            .netdev(&format!("tap,id=n0,ifname={TAP},script=no,downscript=no"))
            .device("virtio-net-pci,netdev=n0,disable-legacy=on")
            .netns(net.ns.name())
            .timeout(self.timeout)
            .echo(self.echo)
            .label("net-dd");
        for (i, (_, sock)) in sockets.iter().enumerate() {
            q = q.args_extra(chan::ivshmem_args(sock, VECTORS, &format!("ch{}", i + 1)));
        }
        net.vms.push(Vm { name: "net-dd".into(), run: Some(q.spawn()?), outcome: None });
        net.wait_line("net-dd", "ICONNECT-READY net-dd", |l| l.contains("ICONNECT-READY net-dd"), self.ready_within)?;
        // Guests.
        for g in &self.guests {
            let mut q = Qemu::new(&self.guest_image, self.accel)
                .memory_mib(self.guest_memory_mib)
                .append(&g.cmdline())
                .netns(net.ns.name())
                .timeout(self.timeout)
                .echo(self.echo)
                .label(&g.name());
            match g.nic {
                Nic::Channel => {
                    let sock = &sockets.iter().find(|(n, _)| *n == g.name()).context("no socket")?.1;
                    q = q.args_extra(chan::ivshmem_args(sock, VECTORS, "ch"));
                }
                Nic::Virtio => {
                    q = q
                        .netdev(&format!("tap,id=n0,ifname={},script=no,downscript=no", g.tap()))
                        .device(&format!("virtio-net-pci,netdev=n0,disable-legacy=on,mac={}", g.mac()));
                }
            }
            net.vms.push(Vm { name: g.name(), run: Some(q.spawn()?), outcome: None });
            // One at a time: rt calibrates its TSC against the PIT during boot, and under TCG
            // several VMs booting at once on a small host can spoil each other's calibration.
            net.wait_line(&g.name(), "ICONNECT-READY", |l| l.contains("ICONNECT-READY"), self.ready_within)?;
        }
        println!(
            "topo: net-dd + {} guest(s) ready after {} ({})",
            self.guests.len(),
            fmt_dur(started.elapsed()),
            self.guests.iter().map(|g| format!("{} {}", g.name(), g.qos.describe())).collect::<Vec<_>>().join("; ")
        );
        Ok(net)
    }
}

/// `<target>/topo/<run>/`; the previous run's logs move to `<run>.prev/` (a failure's consoles
/// survive one rerun).
fn log_dir(run: &str) -> Result<PathBuf> {
    let base = util::target_dir()?.join("topo");
    let d = base.join(run);
    if d.is_dir() {
        let prev = base.join(format!("{run}.prev"));
        let _ = std::fs::remove_dir_all(&prev);
        let _ = std::fs::rename(&d, &prev);
    }
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

/// One VM of a topology.
struct Vm {
    name: String,
    run: Option<Running>,
    outcome: Option<Outcome>,
}

impl Vm {
    fn serial(&self) -> Vec<String> {
        match (&self.run, &self.outcome) {
            (Some(r), _) => r.serial(),
            (None, Some(o)) => o.serial.clone(),
            (None, None) => Vec::new(),
        }
    }
}

/// The host-side peer (`xtask probe serve` inside the namespace), killed by PID on drop.
pub struct Peer {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Peer {
    fn start(ns: &Netns) -> Result<Peer> {
        let exe = std::env::current_exe().context("locating the xtask binary")?;
        let mut cmd = ns.command(&exe);
        cmd.args(["probe", "serve"]);
        println!("$ {}", util::show(&cmd));
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        util::die_with_parent(&mut cmd);
        let mut child = cmd.spawn().context("starting the host peer")?;
        let out = child.stdout.take().context("no stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = Arc::clone(&lines);
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l2.lock().expect("peer lock").push(line);
            }
        });
        let peer = Peer { child, lines };
        let until = Instant::now() + Duration::from_secs(10);
        while !peer.lines().iter().any(|l| l.starts_with("PROBE serving")) {
            if Instant::now() > until {
                bail!("the host peer did not start listening within 10 s");
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(peer)
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("peer lock").clone()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How one guest ended.
#[derive(Clone, Debug)]
pub struct GuestDone {
    pub name: String,
    /// The `ICONNECT-RESULT` line's fields (`word(0)` is `ok` or `FAIL`), if it printed one.
    pub result: Option<Fields>,
    pub exit: GuestExit,
}

impl GuestDone {
    /// `ICONNECT-RESULT ok` and exit 33.
    pub fn ok(&self) -> bool {
        self.result.as_ref().and_then(|r| r.word(0)) == Some("ok") && self.exit == GuestExit::Success
    }
    pub fn num(&self, k: &str) -> Option<u64> {
        self.result.as_ref()?.num(k)
    }
    /// The result line's words and fields (for reports).
    pub fn summary(&self) -> String {
        self.result.as_ref().map_or("no ICONNECT-RESULT line".to_string(), |f| f.words.join(" ") + &fmt_kv(f))
    }
}

/// A running topology. Field order is drop order: VMs, peer, servers, namespace.
pub struct Net {
    vms: Vec<Vm>,
    peer: Option<Peer>,
    servers: Vec<Server>,
    ns: Netns,
    log_dir: PathBuf,
    echo: bool,
    started: Instant,
    guests: Vec<GuestSpec>,
    logs_written: bool,
}

impl Net {
    fn vm(&self, name: &str) -> Result<&Vm> {
        self.vms.iter().find(|v| v.name == name).ok_or_else(|| anyhow!("no VM named {name}"))
    }
    fn vm_mut(&mut self, name: &str) -> Result<&mut Vm> {
        self.vms.iter_mut().find(|v| v.name == name).ok_or_else(|| anyhow!("no VM named {name}"))
    }

    pub fn spec(&self, name: &str) -> Option<&GuestSpec> {
        self.guests.iter().find(|g| g.name() == name)
    }
    pub fn guest_specs(&self) -> &[GuestSpec] {
        &self.guests
    }
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The last [`TAIL`] console lines of `vm` (and its QEMU stderr once it ended), headed by
    /// its name.
    pub fn console_tail(&self, vm: &str) -> String {
        let Ok(v) = self.vm(vm) else { return format!("(no VM {vm})") };
        let mut s = format!("--- {vm}: last {TAIL} console lines ---\n{}", crate::qemu::tail(&v.serial(), TAIL));
        if let Some(o) = &v.outcome {
            s = format!("--- {vm}: {} ---\n{s}", o.exit);
            if !o.stderr.trim().is_empty() {
                s.push_str(&format!("\n--- {vm}: QEMU stderr ---\n{}", o.stderr.trim_end()));
            }
        }
        s
    }

    /// An error about `vm`, with its console tail (and net-dd's, when `vm` is a guest).
    pub fn fail(&self, vm: &str, e: impl std::fmt::Display) -> anyhow::Error {
        let mut s = format!("{vm}: {e}\n{}", self.console_tail(vm));
        if vm != "net-dd" {
            s.push('\n');
            s.push_str(&self.console_tail("net-dd"));
        }
        anyhow!(s)
    }

    /// VMs whose calibrated TSC rate (rt's `TSC <N> kHz` line) is more than 25% off the median
    /// of all VMs: their own time-based numbers (rates, `secs=`, RTTs) are not to be trusted (rt's
    /// PIT calibration can be preempted under TCG on a loaded host).
    pub fn tsc_outliers(&self) -> Vec<String> {
        let rates: Vec<(String, u64)> =
            self.vms.iter().filter_map(|v| Some((v.name.clone(), chan::tsc_khz(&v.serial())?))).collect();
        let mut sorted: Vec<u64> = rates.iter().map(|r| r.1).collect();
        sorted.sort_unstable();
        let Some(&median) = sorted.get(sorted.len() / 2) else { return Vec::new() };
        rates
            .into_iter()
            .filter(|(_, khz)| khz.max(&median) * 4 > khz.min(&median) * 5)
            .map(|(n, khz)| format!("{n} (TSC {khz} kHz vs median {median})"))
            .collect()
    }

    /// Console lines of `vm` so far.
    pub fn serial(&self, vm: &str) -> Vec<String> {
        self.vm(vm).map(Vm::serial).unwrap_or_default()
    }

    /// Wait until a console line of `vm` satisfies `pred` (earlier lines count); `what` names it
    /// in the error.
    pub fn wait_line(
        &mut self,
        vm: &str,
        what: &str,
        pred: impl Fn(&str) -> bool,
        within: Duration,
    ) -> Result<String> {
        let r = {
            let v = self.vm_mut(vm)?;
            let Some(run) = v.run.as_mut() else {
                let serial = v.serial();
                return match serial.iter().find(|l| pred(l)) {
                    Some(l) => Ok(l.clone()),
                    None => Err(self.fail(vm, format!("ended before printing {what}"))),
                };
            };
            run.wait_for(pred, within)
        };
        match r {
            Ok((line, _)) => Ok(line),
            Err(why) => Err(self.fail(vm, format!("waiting for `{what}`: {why}"))),
        }
    }

    /// net-dd's `ICONNECT-PORT <port> up|down ...` line for `port` (1-based channel), waiting
    /// for it.
    pub fn wait_port(&mut self, port: usize, state: &str, within: Duration) -> Result<Fields> {
        let p = port.to_string();
        let state2 = state.to_string();
        let line = self.wait_line(
            "net-dd",
            &format!("ICONNECT-PORT {port} {state}"),
            move |l| {
                markers::parse_fields(l, "ICONNECT-PORT")
                    .is_some_and(|f| f.word(0) == Some(p.as_str()) && f.word(1) == Some(state2.as_str()))
            },
            within,
        )?;
        markers::parse_fields(&line, "ICONNECT-PORT").context("unparsable port line")
    }

    /// A guest's `ICONNECT-LINK up ...` line, waiting for it.
    pub fn wait_link(&mut self, guest: &str, within: Duration) -> Result<Fields> {
        let line = self.wait_line(guest, "ICONNECT-LINK up", |l| l.contains("ICONNECT-LINK up"), within)?;
        markers::parse_fields(&line, "ICONNECT-LINK").context("unparsable link line")
    }

    /// Wait for `guest` to exit (killing it after `within`), and report its result line.
    pub fn finish_guest(&mut self, guest: &str, within: Duration) -> Result<GuestDone> {
        let v = self.vm_mut(guest)?;
        if let Some(run) = v.run.take() {
            v.outcome = Some(run.wait_within(within));
        }
        let o = v.outcome.as_ref().context("no outcome")?;
        let result = o.serial.iter().find_map(|l| markers::parse_fields(l, "ICONNECT-RESULT"));
        Ok(GuestDone { name: guest.into(), result, exit: o.exit })
    }

    /// [`Net::finish_guest`] for every guest; error (naming the guest, with its console) unless
    /// each printed `ICONNECT-RESULT ok` and exited with 33.
    pub fn finish_all_ok(&mut self, within: Duration) -> Result<Vec<GuestDone>> {
        let deadline = Instant::now() + within;
        let names: Vec<String> = self.guests.iter().map(GuestSpec::name).collect();
        let mut done = Vec::new();
        for n in names {
            let d = self.finish_guest(&n, deadline.saturating_duration_since(Instant::now()))?;
            done.push(d);
        }
        for d in &done {
            if !d.ok() {
                let r = d.result.as_ref().map_or("no ICONNECT-RESULT line".to_string(), |f| {
                    format!("ICONNECT-RESULT {}", f.words.join(" ")) + &fmt_kv(f)
                });
                return Err(self.fail(&d.name, format!("{r}; ended with {}", d.exit)));
            }
        }
        Ok(done)
    }

    /// Kill `vm` now (by PID).
    pub fn kill(&mut self, vm: &str) -> Result<()> {
        let v = self.vm_mut(vm)?;
        if let Some(run) = v.run.take() {
            v.outcome = Some(run.stop());
        }
        Ok(())
    }

    /// The host peer's finished connections.
    pub fn peer_conns(&self) -> Vec<PeerConn> {
        self.peer_lines().iter().filter_map(|l| PeerConn::parse(l)).collect()
    }
    /// Every line the host peer printed.
    pub fn peer_lines(&self) -> Vec<String> {
        self.peer.as_ref().map(Peer::lines).unwrap_or_default()
    }

    /// Wait until the host peer reports `n` finished connections of `kind` from `from`.
    pub fn wait_peer_conns(&self, kind: &str, from: Ipv4Addr, n: usize, within: Duration) -> Result<Vec<PeerConn>> {
        let until = Instant::now() + within;
        loop {
            let c: Vec<PeerConn> = self.peer_conns().into_iter().filter(|c| c.kind == kind && c.from == from).collect();
            if c.len() >= n {
                return Ok(c);
            }
            if Instant::now() >= until || util::interrupted() {
                bail!("the host peer saw {} of {n} {kind} connection(s) from {from} end within {}", c.len(), fmt_dur(within));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// ICMP echo from the host peer to `ip`: the RTTs (µs). Errors show `vm`'s console.
    pub fn ping(&self, vm: &str, ip: Ipv4Addr, count: u16) -> Result<Vec<u64>> {
        probe::ping_in(&self.ns, &ip.to_string(), count, 50).map_err(|e| self.fail(vm, format!("ping {ip}: {e:#}")))
    }

    /// TCP echo exchange from the host to `ip:port` (`bytes`, verified byte for byte by the
    /// probe): KiB/s. Errors show `vm`'s console.
    pub fn tcp_echo(&self, vm: &str, ip: Ipv4Addr, port: u16, bytes: usize) -> Result<f64> {
        let args: Vec<String> =
            ["tcp", &ip.to_string(), "--port", &port.to_string(), "--bytes", &bytes.to_string(), "--timeout-ms", "90000"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let lines = probe::run_in(&self.ns, &args, Duration::from_secs(100))
            .map_err(|e| self.fail(vm, format!("TCP echo {ip}:{port}: {e:#}")))?;
        let l = lines
            .iter()
            .find(|l| l.starts_with("PROBE tcp "))
            .ok_or_else(|| self.fail(vm, "TCP probe printed no result"))?;
        probe::field(l, "kib_s").and_then(|v| v.parse().ok()).context("no kib_s")
    }

    /// Bulk TCP between the host peer and `ip:port` for `secs` (`Send`: host -> a sink;
    /// `Recv`: a source -> host): bits per second, measured on the host.
    pub fn bulk(&self, vm: &str, ip: Ipv4Addr, port: u16, dir: probe::BulkDir, secs: f64) -> Result<u64> {
        let d = if dir == probe::BulkDir::Send { "send" } else { "recv" };
        let args: Vec<String> = ["bulk", &ip.to_string(), "--port", &port.to_string(), "--dir", d, "--secs", &secs.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let lines = probe::run_in(&self.ns, &args, Duration::from_secs_f64(secs + 30.0))
            .map_err(|e| self.fail(vm, format!("bulk {d} {ip}:{port}: {e:#}")))?;
        let l = lines.iter().find(|l| l.starts_with("PROBE bulk ")).ok_or_else(|| self.fail(vm, "bulk probe printed no result"))?;
        probe::field(l, "bps").and_then(|v| v.parse().ok()).context("no bps")
    }

    /// Stop every VM still running; error if net-dd had died or reported a fault or panic (or
    /// any VM did), or if a process or the namespace outlived the topology. Writes the console
    /// logs.
    pub fn stop(mut self) -> Result<BTreeMap<String, Outcome>> {
        let mut pids: Vec<(String, u32)> = self
            .servers
            .iter()
            .map(|s| ("ivshmem-server".to_string(), s.pid()))
            .chain(self.peer.as_ref().map(|p| ("host peer".to_string(), p.child.id())))
            .collect();
        for v in &mut self.vms {
            if let Some(run) = v.run.take() {
                pids.push((format!("QEMU of {}", v.name), run.pid()));
                v.outcome = Some(run.stop());
            }
        }
        self.write_logs();
        let out = self.check_outcomes()?;
        let ns = self.ns.name().to_string();
        drop(self);
        let left: Vec<String> = pids
            .iter()
            .filter(|(_, pid)| alive(*pid))
            .map(|(what, pid)| format!("{what} (pid {pid})"))
            .collect();
        if !left.is_empty() {
            bail!("still running after the topology was stopped: {}", left.join(", "));
        }
        let list = util::output(std::process::Command::new("ip").args(["netns", "list"])).unwrap_or_default();
        if crate::netns::parse_netns_list(&list).contains(&ns) {
            bail!("network namespace {ns} still exists after the topology was stopped");
        }
        Ok(out)
    }

    fn check_outcomes(&self) -> Result<BTreeMap<String, Outcome>> {
        let mut out = BTreeMap::new();
        for v in &self.vms {
            let o = v.outcome.clone().context("no outcome")?;
            if let Some(l) = o.serial.iter().find(|l| l.contains("ICONNECT-FAULT") || l.contains("ICONNECT-PANIC")) {
                return Err(self.fail(&v.name, format!("reported: {}", l.trim())));
            }
            if v.name == "net-dd" && o.exit != GuestExit::Killed {
                return Err(self.fail("net-dd", format!("was not running any more when stopped: {}", o.exit)));
            }
            out.insert(v.name.clone(), o);
        }
        Ok(out)
    }

    fn write_logs(&mut self) {
        if self.logs_written {
            return;
        }
        self.logs_written = true;
        for v in &self.vms {
            let p = self.log_dir.join(format!("{}.log", v.name));
            let _ = std::fs::write(&p, v.serial().join("\n") + "\n");
        }
        let _ = std::fs::write(self.log_dir.join("host-peer.log"), self.peer_lines().join("\n") + "\n");
        let logs: Vec<String> = self.servers.iter().map(Server::log).collect();
        let _ = std::fs::write(self.log_dir.join("ivshmem-servers.log"), logs.join("\n"));
        if !self.echo {
            println!("topo: consoles in {}", self.log_dir.display());
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.write_logs();
        // Then the fields drop in order: VMs (killed by PID), peer, servers, namespace.
    }
}

/// The process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

fn fmt_kv(f: &Fields) -> String {
    f.kv.iter().map(|(k, v)| format!(" {k}={v}")).collect()
}

/// `12.3 Mbit/s`.
pub fn fmt_bps(bps: u64) -> String {
    let b = bps as f64;
    if b >= 1e9 {
        format!("{:.2} Gbit/s", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} Mbit/s", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kbit/s", b / 1e3)
    } else {
        format!("{bps} bit/s")
    }
}

/// `cargo xtask net`: boot a topology by hand and watch it.
#[derive(clap::Args, Debug)]
pub struct NetArgs {
    /// One guest per occurrence: extra command-line words for it (e.g.
    /// "work=... qos_guaranteed_bps=4000000"); "" for a plain guest.
    #[arg(long = "guest")]
    guests: Vec<String>,
    /// net-dd's uplink capacity (`link_bps=`).
    #[arg(long)]
    link_bps: Option<u64>,
    /// Guest image (default net-guest).
    #[arg(long, default_value = "net-guest")]
    guest_image: String,
    /// After everything is ready: wait this long for the guests to exit, then stop all.
    #[arg(long, default_value_t = 30)]
    hold: u64,
    #[arg(long, value_enum)]
    accel: Option<Accel>,
    /// Do not print the consoles live.
    #[arg(long)]
    quiet: bool,
}

pub fn net_cmd(args: &NetArgs) -> Result<()> {
    crate::prereq::ensure_qemu()?;
    crate::prereq::ensure_net()?;
    let accel = Accel::choose(args.accel)?;
    let imgs = [crate::images::find("net-dd")?, crate::images::find(&args.guest_image)?];
    let built = crate::images::build(&imgs)?;
    let a = Artifacts { netdd: built[0].path.clone(), guest: built[1].path.clone(), server: chan::build_server()? };
    let mut t = Topology::new("manual", accel, &a).echo(!args.quiet);
    t.link_bps = args.link_bps;
    for (i, extra) in args.guests.iter().enumerate() {
        let mut g = GuestSpec::new(u8::try_from(i + 1).context("too many guests")?);
        g.extra = extra.split_whitespace().map(str::to_string).collect();
        t = t.guest(g);
    }
    let mut net = t.start()?;
    let names: Vec<String> = net.guest_specs().iter().map(GuestSpec::name).collect();
    let until = Instant::now() + Duration::from_secs(args.hold);
    for n in &names {
        let d = net.finish_guest(n, until.saturating_duration_since(Instant::now()))?;
        println!(
            "net: {n}: {} ({})",
            d.result.as_ref().map_or("no ICONNECT-RESULT".to_string(), |f| f.words.join(" ") + &fmt_kv(f)),
            d.exit
        );
    }
    if names.is_empty() {
        thread::sleep(until.saturating_duration_since(Instant::now()));
    }
    net.stop()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_addresses_and_cmdline() {
        let g = GuestSpec::new(1)
            .qos(Qos { guaranteed_bps: Some(4_000_000), class: Some("bulk"), ..Qos::default() })
            .work("tcp_send:10.0.2.2:9");
        assert_eq!(g.name(), "g1");
        assert_eq!(g.ip(), Ipv4Addr::new(10, 0, 2, 21));
        assert_eq!(g.mac(), "52:54:00:12:34:21");
        assert_eq!(
            g.cmdline(),
            "ip=10.0.2.21/24 gw=10.0.2.2 mac=52:54:00:12:34:21 name=g1 qos_guaranteed_bps=4000000 qos_class=bulk work=tcp_send:10.0.2.2:9"
        );
        let v = GuestSpec::new(2).nic(Nic::Virtio);
        assert_eq!(v.ip(), Ipv4Addr::new(10, 0, 102, 20));
        assert_eq!(v.gateway(), Ipv4Addr::new(10, 0, 102, 2));
        assert!(v.cmdline().contains(" nic=virtio"));
        assert_eq!(GuestSpec::new(10).mac(), "52:54:00:12:34:2a");
    }

    #[test]
    fn qos_description_and_rates() {
        assert_eq!(Qos::default().describe(), "best effort");
        assert_eq!(Qos::guaranteed(2_000_000).describe(), "guarantee 2.00 Mbit/s");
        assert_eq!(fmt_bps(1_500), "1.5 kbit/s");
        assert_eq!(fmt_bps(12_340_000_000), "12.34 Gbit/s");
    }

    #[test]
    fn guest_done_needs_ok_line_and_exit_33() {
        let f = markers::parse_fields("ICONNECT-RESULT ok name=g1 bytes=5", "ICONNECT-RESULT");
        let d = GuestDone { name: "g1".into(), result: f.clone(), exit: GuestExit::Success };
        assert!(d.ok());
        assert_eq!(d.num("bytes"), Some(5));
        assert!(!GuestDone { exit: GuestExit::Failure, ..d.clone() }.ok());
        assert!(!GuestDone { result: None, ..d.clone() }.ok());
        let fail = markers::parse_fields("ICONNECT-RESULT FAIL name=g1 reason=x", "ICONNECT-RESULT");
        assert!(!GuestDone { result: fail, ..d }.ok());
    }
}
