//! The storage driver domain on QEMU: `blk-dd` with a raw disk file (virtio-blk-pci, write-back
//! cache, so `VIRTIO_BLK_F_FLUSH` is offered) and a virtio-net NIC on QEMU user networking, which
//! reaches a real `qemu-nbd` this tool starts on the host's loopback (10.0.2.2 from inside);
//! guests (`blk-guest`) each on one iConnect channel (an `ivshmem-server` per channel).
//!
//! [`Topo`] describes a run and boots it ([`Topo::start`]): blk-dd first (READY), then each guest
//! (READY before the next: fewer spoiled TSC calibrations under TCG). Consoles go to
//! `<target>/topo/<run>/<vm>.log`; every process (QEMU, servers, qemu-nbd) dies by PID when the
//! [`Blk`] is dropped.
//!
//! The QEMU tests ([`local_remote_hostile`], [`flush_then_kill`], [`nbd_restart`]) check the
//! guest's data on the host by reading the disk file / the exported file directly against the
//! pattern the guest wrote ([`pattern_byte`], the same function as `blk_guest::pattern_byte`).
//! [`bench`] is `cargo xtask bench blk`; [`demo`] the demo's storage step.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::chan::{self, Server};
use crate::markers::{self, Fields};
use crate::qemu::{Accel, Qemu, Running};
use crate::util::{self, fmt_dur};

/// Channel region size and doorbell vectors (ring 0 uses vector 0).
const REGION: &str = "4M";
const VECTORS: u16 = 2;
/// The host as seen from QEMU user networking.
const HOST_FROM_GUEST: &str = "10.0.2.2";
const READY_WITHIN: Duration = Duration::from_secs(60);
const TAIL: usize = 30;

/// The byte at `offset` of the guest's pattern `seed`: an independent copy of
/// `blk_guest::pattern_byte` (the host's check runs no guest code); both pin the same known
/// answers in their tests.
pub fn pattern_byte(seed: u64, offset: u64) -> u8 {
    let word = offset / 8;
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ word.wrapping_add(0x632b_e59b_d9b4_e019);
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> ((offset % 8) * 8)) as u8
}

/// Checks that `len` bytes of `file` at `at` hold the pattern `seed` as written at volume
/// offset `vol_off` (the guest's offset).
pub fn check_pattern(file: &Path, at: u64, len: u64, seed: u64) -> Result<()> {
    let mut f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    f.seek(SeekFrom::Start(at))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).with_context(|| format!("reading {} bytes at {at} of {}", len, file.display()))?;
    if let Some(i) = (0..len).find(|&i| buf[i as usize] != pattern_byte(seed, i)) {
        bail!(
            "{}: byte {} (guest offset {i}) is {:#04x}, the guest wrote {:#04x} (seed {seed})",
            file.display(),
            at + i,
            buf[i as usize],
            pattern_byte(seed, i)
        );
    }
    Ok(())
}

/// Checks that `len` bytes of `file` at `at` are all zero (never written).
pub fn check_zero(file: &Path, at: u64, len: u64) -> Result<()> {
    let mut f = std::fs::File::open(file)?;
    f.seek(SeekFrom::Start(at))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf)?;
    if let Some(i) = buf.iter().position(|&b| b != 0) {
        bail!("{}: byte {} is {:#04x}, expected untouched (0)", file.display(), at + i as u64, buf[i]);
    }
    Ok(())
}

/// A zero-filled raw file of `mib` MiB under the run's directory.
fn raw_file(dir: &Path, name: &str, mib: u64) -> Result<PathBuf> {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    let f = std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?;
    f.set_len(mib << 20)?;
    Ok(p)
}

/// A real `qemu-nbd` serving one raw file on 127.0.0.1 (killed by PID on drop).
pub struct Nbd {
    child: Option<Child>,
    pub port: u16,
    pub file: PathBuf,
    pub export: String,
}

impl Nbd {
    /// Serves `file` as `export` on a free loopback port.
    pub fn start(file: &Path, export: &str) -> Result<Nbd> {
        ensure_qemu_nbd()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut n = Nbd { child: None, port, file: file.into(), export: export.into() };
        n.restart()?;
        Ok(n)
    }

    /// (Re)starts the server on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["-f", "raw", "-x", &self.export, "-b", "127.0.0.1", "-p", &self.port.to_string(), "--persistent", "--shared=8"])
            .arg(&self.file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        println!("$ {}", util::show(&cmd));
        util::die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().context("starting qemu-nbd")?);
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            ensure!(t.elapsed() < Duration::from_secs(10), "qemu-nbd does not listen on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL (no chance to flush anything of its own).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The `vol=` token of this export.
    pub fn vol(&self, name: &str) -> String {
        format!("vol={name}:nbd://{HOST_FROM_GUEST}:{}/{}", self.port, self.export)
    }
}

impl Drop for Nbd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `qemu-nbd` (Debian's qemu-utils) is needed by the storage tests, demo and bench.
fn ensure_qemu_nbd() -> Result<()> {
    crate::prereq::ensure_qemu_utils()
}

/// The images and the server binary.
#[derive(Clone, Debug)]
pub struct Artifacts {
    pub dd: PathBuf,
    pub guest: PathBuf,
    pub server: PathBuf,
}

impl Artifacts {
    pub fn build() -> Result<Artifacts> {
        let imgs = [crate::images::find("blk-dd")?, crate::images::find("blk-guest")?];
        let built = crate::images::build(&imgs)?;
        Ok(Artifacts { dd: built[0].path.clone(), guest: built[1].path.clone(), server: chan::build_server()? })
    }
}

/// One guest of a run.
#[derive(Clone, Debug)]
pub struct Guest {
    pub name: String,
    /// The rest of its command line (`vol=`, `work=`, `seed=`).
    pub args: String,
    /// `disk=virtio` on its own raw file instead of a channel.
    pub virtio_disk: Option<PathBuf>,
}

impl Guest {
    pub fn new(name: &str, args: &str) -> Guest {
        Guest { name: name.into(), args: args.into(), virtio_disk: None }
    }
}

/// A run: blk-dd's disk and volumes, the guests.
pub struct Topo {
    pub run: String,
    pub accel: Accel,
    pub art: Artifacts,
    /// blk-dd's disk (None: no virtio-blk device).
    pub disk: Option<PathBuf>,
    /// `vol=` tokens.
    pub vols: Vec<String>,
    /// A NIC on user networking (remote volumes).
    pub nic: bool,
    pub guests: Vec<Guest>,
    pub timeout: Duration,
    pub echo: bool,
    /// Start blk-dd at all (false: virtio guests alone).
    pub dd: bool,
}

impl Topo {
    pub fn new(run: &str, accel: Accel, art: &Artifacts) -> Topo {
        Topo {
            run: run.into(),
            accel,
            art: art.clone(),
            disk: None,
            vols: Vec::new(),
            nic: false,
            guests: Vec::new(),
            timeout: Duration::from_secs(240),
            echo: std::env::var_os("ICONNECT_ECHO").is_some_and(|v| !v.is_empty() && v != "0"),
            dd: true,
        }
    }

    /// The run's directory (`<target>/topo/<run>`), created.
    pub fn dir(run: &str) -> Result<PathBuf> {
        let d = util::target_dir()?.join("topo").join(run);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    }

    pub fn start(self) -> Result<Blk> {
        let t0 = Instant::now();
        let dir = Topo::dir(&self.run)?;
        let mut blk = Blk { vms: Vec::new(), servers: Vec::new(), dir, started: t0 };
        let chan_guests: Vec<&Guest> = self.guests.iter().filter(|g| g.virtio_disk.is_none()).collect();
        let mut socks = BTreeMap::new();
        for g in &chan_guests {
            let sock = chan::socket_path(&format!("blk-{}-{}", self.run, g.name))?;
            blk.servers.push(Server::start(&self.art.server, &sock, REGION, VECTORS)?);
            socks.insert(g.name.clone(), sock);
        }
        if self.dd {
            let mut q = Qemu::new(&self.art.dd, self.accel)
                .memory_mib(16)
                .append(&self.vols.join(" "))
                .timeout(self.timeout)
                .echo(self.echo)
                .label("blk-dd");
            if let Some(d) = &self.disk {
                q = q
                    .args_extra(["-drive".to_string(), format!("file={},format=raw,if=none,id=d0,cache=writeback", d.display())])
                    .device("virtio-blk-pci,drive=d0,disable-legacy=on");
            }
            if self.nic {
                q = q.netdev("user,id=n0").device("virtio-net-pci,netdev=n0,disable-legacy=on");
            }
            for (i, g) in chan_guests.iter().enumerate() {
                q = q.args_extra(chan::ivshmem_args(&socks[&g.name], VECTORS, &format!("ch{}", i + 1)));
            }
            blk.vms.push(("blk-dd".into(), q.spawn()?));
            blk.wait("blk-dd", "ICONNECT-READY blk-dd", READY_WITHIN)?;
        }
        for g in &self.guests {
            let mut q = Qemu::new(&self.art.guest, self.accel)
                .memory_mib(16)
                .timeout(self.timeout)
                .echo(self.echo)
                .label(&g.name);
            match &g.virtio_disk {
                Some(d) => {
                    q = q
                        .append(&format!("name={} disk=virtio {}", g.name, g.args))
                        .args_extra(["-drive".to_string(), format!("file={},format=raw,if=none,id=d0,cache=writeback", d.display())])
                        .device("virtio-blk-pci,drive=d0,disable-legacy=on");
                }
                None => {
                    q = q.append(&format!("name={} {}", g.name, g.args)).args_extra(chan::ivshmem_args(&socks[&g.name], VECTORS, "ch"));
                }
            }
            blk.vms.push((g.name.clone(), q.spawn()?));
            blk.wait(&g.name, "ICONNECT-READY blk-guest", READY_WITHIN)?;
        }
        println!("blk topo {}: blk-dd + {} guest(s) ready after {}", self.run, self.guests.len(), fmt_dur(t0.elapsed()));
        Ok(blk)
    }
}

/// A running storage topology.
pub struct Blk {
    vms: Vec<(String, Running)>,
    servers: Vec<Server>,
    dir: PathBuf,
    started: Instant,
}

impl Blk {
    fn vm(&mut self, name: &str) -> Result<&mut Running> {
        self.vms.iter_mut().find(|(n, _)| n == name).map(|(_, r)| r).ok_or_else(|| anyhow!("no VM {name}"))
    }

    /// A VM's console so far.
    pub fn serial(&self, name: &str) -> Vec<String> {
        self.vms.iter().find(|(n, _)| n == name).map(|(_, r)| r.serial()).unwrap_or_default()
    }

    fn fail(&self, name: &str, e: impl std::fmt::Display) -> anyhow::Error {
        self.write_logs();
        let tail = self.vms.iter().find(|(n, _)| n == name).map(|(_, r)| r.tail(TAIL)).unwrap_or_default();
        let dd = if name != "blk-dd" {
            let t = self.vms.iter().find(|(n, _)| n == "blk-dd").map(|(_, r)| r.tail(12)).unwrap_or_default();
            format!("\n--- blk-dd console (last lines) ---\n{t}")
        } else {
            String::new()
        };
        anyhow!("{name}: {e}\n--- {name} console (last {TAIL} lines) ---\n{tail}{dd}\n(logs in {})", self.dir.display())
    }

    /// Waits for a console line containing `needle`; returns it and the host time it arrived
    /// (since the topology started).
    pub fn wait(&mut self, name: &str, needle: &str, within: Duration) -> Result<(String, Duration)> {
        let started = self.started;
        let r = self.vm(name)?.wait_for(|l| l.contains(needle), within);
        match r {
            Ok((l, _)) => Ok((l, started.elapsed())),
            Err(e) => Err(self.fail(name, format!("waiting for `{needle}`: {e}"))),
        }
    }

    /// Waits for the guest's `ICONNECT-RESULT`; `Err` if it is a FAIL.
    pub fn result(&mut self, name: &str, within: Duration) -> Result<(Fields, Duration)> {
        let (line, at) = self.wait(name, "ICONNECT-RESULT", within)?;
        let f = markers::parse_fields(&line, "ICONNECT-RESULT").context("unparsable result line")?;
        if f.word(0) != Some("ok") {
            return Err(self.fail(name, format!("guest failed: {line}")));
        }
        Ok((f, at))
    }

    /// SIGKILLs one VM now.
    pub fn kill(&mut self, name: &str) -> Result<()> {
        let i = self.vms.iter().position(|(n, _)| n == name).ok_or_else(|| anyhow!("no VM {name}"))?;
        let (n, r) = self.vms.remove(i);
        let out = r.stop();
        let _ = std::fs::write(self.dir.join(format!("{n}.log")), out.serial.join("\n"));
        Ok(())
    }

    fn write_logs(&self) {
        for (n, r) in &self.vms {
            let _ = std::fs::write(self.dir.join(format!("{n}.log")), r.serial().join("\n"));
        }
    }

    /// Stops everything; fails if any console shows a fault or panic.
    pub fn stop(mut self) -> Result<()> {
        self.write_logs();
        let vms = std::mem::take(&mut self.vms);
        let mut bad = Vec::new();
        for (n, r) in vms {
            let out = r.stop();
            let _ = std::fs::write(self.dir.join(format!("{n}.log")), out.serial.join("\n"));
            if let Some(l) = out.serial.iter().find(|l| l.contains("ICONNECT-FAULT") || l.contains("ICONNECT-PANIC")) {
                bad.push(format!("{n}: {l}"));
            }
        }
        self.servers.clear();
        ensure!(bad.is_empty(), "fault or panic: {}", bad.join("; "));
        Ok(())
    }
}

impl Drop for Blk {
    fn drop(&mut self) {
        self.write_logs();
    }
}

const MIB: u64 = 1 << 20;

/// QEMU test: one blk-dd, five guests with the same image: g1 on a local slice (512-byte
/// sectors), g2 hostile on the next slice (4 KiB sectors), g3 on a remote NBD export, g4 on a
/// third slice (4 KiB sectors), g5 publishing a wild ring index (its port alone goes down,
/// `blkback:ring...`). The host
/// reads back the disk file and the exported file byte-exact; g2's requests outside its
/// slice, with bad references and oversized segment counts are refused, g1's slice beyond what
/// g1 wrote is untouched.
pub fn local_remote_hostile(accel: Accel) -> Result<String> {
    let art = Artifacts::build()?;
    let dir = Topo::dir("blk-basic")?;
    let disk = raw_file(&dir, "disk.raw", 52)?;
    let exp = raw_file(&dir, "export.raw", 16)?;
    let nbd = Nbd::start(&exp, "blk")?;
    let mut t = Topo::new("blk-basic", accel, &art);
    t.disk = Some(disk.clone());
    t.nic = true;
    t.vols = vec![
        "vol=v1:local:0:16M".into(),
        "vol=v2:local:16M:16M:ss=4096".into(),
        nbd.vol("v3"),
        "vol=v4:local:32M:16M:ss=4096".into(),
        "vol=v5:local:48M:4M".into(),
    ];
    t.guests = vec![
        Guest::new("g1", "vol=v1 work=verify:2048 seed=11"),
        Guest::new("g2", "vol=v2 work=hostile seed=12"),
        Guest::new("g3", "vol=v3 work=verify:2048 seed=13"),
        Guest::new("g4", "vol=v4 work=verify:1024 seed=14"),
        Guest::new("g5", "vol=v5 work=hostile:ring"),
    ];
    let mut b = t.start()?;
    let (r1, _) = b.result("g1", Duration::from_secs(120))?;
    let (r2, _) = b.result("g2", Duration::from_secs(60))?;
    let (r3, _) = b.result("g3", Duration::from_secs(120))?;
    let (r4, _) = b.result("g4", Duration::from_secs(120))?;
    let (r5, _) = b.result("g5", Duration::from_secs(60))?;
    b.wait("blk-dd", "ICONNECT-PORT 5 down reason=blkback:ring", Duration::from_secs(10))?;
    ensure!(r2.get("refused") == Some("4/4") && r2.get("after") == Some("io-ok"), "g2 hostile: {:?}", r2.kv);
    // Discard: offered by the NBD volume (NBD_CMD_TRIM), not by the local disk (virtio-drivers
    // has no discard); the guest's discard past its verified region must be answered Okay.
    ensure!(r3.get("discard") == Some("ok"), "g3 (nbd): discard={:?}", r3.get("discard"));
    ensure!(r1.get("discard") == Some("unsupported"), "g1 (local): discard={:?}", r1.get("discard"));
    let dd = b.serial("blk-dd");
    for want in [
        "ICONNECT-PORT 1 up volume=v1 backing=local sectors=32768 sector_size=512",
        "ICONNECT-PORT 2 up volume=v2 backing=local sectors=4096 sector_size=4096",
        "ICONNECT-PORT 3 up volume=v3 backing=nbd",
        "ICONNECT-PORT 4 up volume=v4 backing=local sectors=4096 sector_size=4096",
        "ICONNECT-PORT 2 down reason=disconnected",
        "ICONNECT-PORT 5 down reason=blkback:ring",
    ] {
        ensure!(dd.iter().any(|l| l.contains(want)), "blk-dd never said `{want}`");
    }
    b.stop()?;
    check_pattern(&disk, 0, 2 * MIB, 11).context("g1's data in the disk file")?;
    check_zero(&disk, 2 * MIB, 14 * MIB).context("g1's slice beyond its data")?;
    check_pattern(&disk, 16 * MIB, 4096, 12).context("g2's one good write (after its hostile requests)")?;
    check_zero(&disk, 16 * MIB + 4096, 16 * MIB - 4096).context("g2's slice")?;
    check_pattern(&exp, 0, 2 * MIB, 13).context("g3's data in the NBD export's file")?;
    check_pattern(&disk, 32 * MIB, MIB, 14).context("g4's data in the disk file")?;
    check_zero(&disk, 33 * MIB, 15 * MIB).context("g4's slice beyond its data")?;
    Ok(format!(
        "g1 local {} B ok, g2 hostile refused {} (then io-ok), g3 nbd {} B ok, g4 local 4K-sector {} B ok, g5 wild req_prod: {} and only its port down; host read back both files byte-exact",
        r1.get("bytes").unwrap_or("?"),
        r2.get("refused").unwrap_or("?"),
        r3.get("bytes").unwrap_or("?"),
        r4.get("bytes").unwrap_or("?"),
        r5.get("outcome").unwrap_or("?")
    ))
}

/// QEMU test: the guest's flush response means durable: blk-dd and the guest are SIGKILLed the
/// moment the guest prints `ICONNECT-FLUSHED`; the disk file must hold everything.
pub fn flush_then_kill(accel: Accel) -> Result<String> {
    let art = Artifacts::build()?;
    let dir = Topo::dir("blk-flush-kill")?;
    let disk = raw_file(&dir, "disk.raw", 16)?;
    let mut t = Topo::new("blk-flush-kill", accel, &art);
    t.disk = Some(disk.clone());
    t.vols = vec!["vol=v1:local:4M:8M".into()];
    t.guests = vec![Guest::new("g1", "vol=v1 work=verify:8192 seed=21")];
    let mut b = t.start()?;
    b.wait("g1", "ICONNECT-FLUSHED", Duration::from_secs(120))?;
    b.kill("blk-dd")?;
    b.kill("g1")?;
    drop(b);
    check_pattern(&disk, 4 * MIB, 8 * MIB, 21).context("after the flush response, QEMU killed")?;
    check_zero(&disk, 0, 4 * MIB)?;
    Ok("8 MiB written, flush answered, blk-dd SIGKILLed at once: all 8 MiB in the file".into())
}

/// QEMU test: a guest VM killed in the middle of its writes (without closing its channel) is
/// taken down by its missing heartbeat, which frees its volume: blk-dd says
/// `ICONNECT-PORT 1 down reason=heartbeat-timeout`.
pub fn killed_guest(accel: Accel) -> Result<String> {
    let art = Artifacts::build()?;
    let dir = Topo::dir("blk-killed-guest")?;
    let disk = raw_file(&dir, "disk.raw", 8)?;
    let mut t = Topo::new("blk-killed-guest", accel, &art);
    t.disk = Some(disk);
    t.vols = vec!["vol=v1:local:0:8M".into()];
    t.guests = vec![Guest::new("g1", "vol=v1 work=verify:4096:1000 seed=51")];
    let mut b = t.start()?;
    b.wait("g1", "ICONNECT-FLUSHED", Duration::from_secs(60))?;
    let killed = Instant::now();
    b.kill("g1")?;
    b.wait("blk-dd", "ICONNECT-PORT 1 down reason=heartbeat-timeout", Duration::from_secs(20))?;
    let took = killed.elapsed();
    let stat = b.serial("blk-dd").into_iter().find(|l| l.contains("ICONNECT-PORTSTAT 1")).unwrap_or_default();
    b.stop()?;
    let stat = stat.find("requests=").map(|i| stat[i..].to_string()).unwrap_or_default();
    Ok(format!("guest SIGKILLed mid-run; its port went down (heartbeat-timeout) {} later, volume freed; {stat}", fmt_dur(took)))
}

/// QEMU test: blk-dd checks the volume map against its disk at start and refuses to run with a
/// bad one (overlapping slices; a slice past the end of the disk), saying why.
pub fn bad_volume_maps(accel: Accel) -> Result<String> {
    let art = Artifacts::build()?;
    let dir = Topo::dir("blk-bad-maps")?;
    let disk = raw_file(&dir, "disk.raw", 16)?;
    let mut seen = Vec::new();
    for (vols, why) in [
        ("vol=a:local:0:8M vol=b:local:4M:8M", "local slices overlap"),
        ("vol=a:local:0:8M vol=b:local:8M:16M", "slice outside the disk"),
    ] {
        let out = Qemu::new(&art.dd, accel)
            .memory_mib(16)
            .append(vols)
            .timeout(Duration::from_secs(60))
            .args_extra(["-drive".to_string(), format!("file={},format=raw,if=none,id=d0,readonly=on", disk.display())])
            .device("virtio-blk-pci,drive=d0,disable-legacy=on")
            .label("blk-dd")
            .run()?;
        let said = out.serial.iter().find(|l| l.contains(why)).cloned();
        ensure!(
            out.exit == crate::qemu::GuestExit::Failure && said.is_some(),
            "blk-dd with `{vols}` on a 16 MiB disk: exit {:?}, expected a failure saying `{why}`; console:\n{}",
            out.exit,
            out.serial.join("\n")
        );
        seen.push(why);
    }
    Ok(format!("refused at start, exit 35: {}", seen.join("; ")))
}

/// QEMU test: qemu-nbd is SIGKILLed in the middle of a guest's writes (after its first pass's
/// flush) and restarted; the guest finishes without an error and the export's file holds
/// every byte of the last pass.
pub fn nbd_restart(accel: Accel) -> Result<String> {
    let art = Artifacts::build()?;
    let dir = Topo::dir("blk-nbd-restart")?;
    let exp = raw_file(&dir, "export.raw", 16)?;
    let mut nbd = Nbd::start(&exp, "blk")?;
    let mut t = Topo::new("blk-nbd-restart", accel, &art);
    t.nic = true;
    t.vols = vec![nbd.vol("v1")];
    t.guests = vec![Guest::new("g1", "vol=v1 work=verify:8192:3 seed=31")];
    let mut b = t.start()?;
    b.wait("g1", "ICONNECT-FLUSHED name=g1 pass=0", Duration::from_secs(120))?;
    nbd.kill();
    std::thread::sleep(Duration::from_millis(300));
    nbd.restart()?;
    let (r, _) = b.result("g1", Duration::from_secs(180))?;
    let dd = b.serial("blk-dd");
    let reconnected = dd.iter().any(|l| l.contains("connected (connection 2)"));
    b.stop()?;
    ensure!(reconnected, "blk-dd never reconnected to qemu-nbd (no `connection 2`)");
    check_pattern(&exp, 0, 8 * MIB, 33).context("the export after the restart")?;
    Ok(format!("qemu-nbd killed after pass 0's flush, restarted 0.3 s later; blk-dd reconnected; guest ok ({} ops), export byte-exact", r.get("ops").unwrap_or("?")))
}

/// `cargo xtask bench blk`: 4 KiB random read/write IOPS at QD1 and QD32, through blk-dd (local
/// slice), with the same guest image on a virtio-blk disk of its own, and through blk-dd to a
/// remote volume on qemu-nbd. IOPS are measured on the host: operations / (time of the result
/// line - time of the start line).
pub fn bench(accel: Option<Accel>) -> Result<()> {
    let accel = Accel::choose(accel)?;
    let art = Artifacts::build()?;
    let secs = std::env::var("ICONNECT_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5u32);
    let mut rows = Vec::new();
    // ICONNECT_BENCH_BLK=read:32,write:1 picks cases (default: all four).
    let pick = std::env::var("ICONNECT_BENCH_BLK").unwrap_or_default();
    let cases = [("read", 1), ("read", 32), ("write", 1), ("write", 32)];
    // ICONNECT_BENCH_BLK_PATHS=blk-dd,virtio picks paths (default: all three);
    // ICONNECT_BENCH_BLK_DD_ARGS / ICONNECT_BENCH_BLK_GUEST_ARGS add command-line tokens
    // (blk-dd: disk_poll=1; blk-guest: spin=1).
    let paths = std::env::var("ICONNECT_BENCH_BLK_PATHS").unwrap_or_default();
    let dd_args = std::env::var("ICONNECT_BENCH_BLK_DD_ARGS").unwrap_or_default();
    let guest_args = std::env::var("ICONNECT_BENCH_BLK_GUEST_ARGS").unwrap_or_default();
    for (rw, qd) in cases.into_iter().filter(|(rw, qd)| pick.is_empty() || pick.split(',').any(|c| c == format!("{rw}:{qd}"))) {
        let mut row = Vec::new();
        for path in ["blk-dd", "virtio", "nbd"] {
            if !paths.is_empty() && !paths.split(',').any(|p| p == path) {
                row.push(f64::NAN);
                continue;
            }
            let run = format!("bench-blk-{path}-{rw}{qd}");
            let dir = Topo::dir(&run)?;
            let disk = raw_file(&dir, "disk.raw", 80)?;
            let mut t = Topo::new(&run, accel, &art);
            // No liveness promise: under kvm_pvm the domains' clocks jump (a silent-guest
            // verdict would be spurious); this measures throughput only.
            let work = format!("work=iops:{rw}:{qd}:{secs} heartbeat_ms=0 {guest_args}");
            let mut _nbd = None;
            if path == "blk-dd" {
                t.disk = Some(disk);
                t.vols = vec!["vol=b:local:0:64M".into(), dd_args.clone()];
                t.guests = vec![Guest::new("g1", &format!("vol=b {work}"))];
            } else if path == "nbd" {
                let n = Nbd::start(&disk, "bench")?;
                t.nic = true;
                t.vols = vec![n.vol("b"), dd_args.clone()];
                t.guests = vec![Guest::new("g1", &format!("vol=b {work}"))];
                _nbd = Some(n);
            } else {
                t.dd = false;
                let mut g = Guest::new("g1", &work);
                g.virtio_disk = Some(disk);
                t.guests = vec![g];
            }
            let mut b = t.start()?;
            let (_, t0) = b.wait("g1", "ICONNECT-IOPS-START", Duration::from_secs(60))?;
            let (f, t1) = b.result("g1", Duration::from_secs(u64::from(secs) + 120))?;
            b.stop()?;
            let ops = f.num("ops").context("no ops=")?;
            let host_iops = ops as f64 / (t1 - t0).as_secs_f64();
            println!(
                "bench blk: {path:7} {rw:5} qd={qd:2}: {host_iops:8.0} IOPS (host clock; guest says iops={} p50={}us p99={}us, {ops} ops)",
                f.get("iops").unwrap_or("?"),
                f.get("lat_us_p50").unwrap_or("?"),
                f.get("lat_us_p99").unwrap_or("?")
            );
            row.push(host_iops);
        }
        rows.push((rw, qd, row[0], row[1], row[2]));
    }
    println!("\nbench blk ({accel}, {secs} s per case, 4 KiB random, host-clock IOPS):");
    println!("  {:14} {:>12} {:>12} {:>8} {:>14}", "case", "via blk-dd", "direct", "ratio", "blk-dd->nbd");
    for (rw, qd, dd, direct, nbd) in rows {
        println!("  {:14} {dd:12.0} {direct:12.0} {:8.2} {nbd:14.0}", format!("{rw} qd={qd}"), dd / direct.max(1e-9));
    }
    println!(
        "  (goal >= 0.90; via blk-dd = a local slice of blk-dd's virtio-blk disk; direct = the same blk-guest image on \
         its own virtio-blk disk; blk-dd->nbd = a remote volume on the host's qemu-nbd through blk-dd's smoltcp. \
         Both use hal::virtio_blk (requests in flight up to the QD); direct polls its disk, blk-dd sleeps until the disk's or a doorbell's interrupt.)"
    );
    Ok(())
}

/// The demo's storage step: two guests run the same workload, one on a local slice of
/// blk-dd's disk, one on a remote NBD export; prints where each volume lives and the results.
pub fn demo(accel: Accel) -> Result<Vec<String>> {
    let art = Artifacts::build()?;
    let dir = Topo::dir("demo-blk")?;
    let disk = raw_file(&dir, "disk.raw", 32)?;
    let exp = raw_file(&dir, "export.raw", 16)?;
    let nbd = Nbd::start(&exp, "demo")?;
    let mut t = Topo::new("demo-blk", accel, &art);
    t.disk = Some(disk.clone());
    t.nic = true;
    t.vols = vec!["vol=alpha:local:0:16M".into(), nbd.vol("beta")];
    t.guests = vec![Guest::new("g1", "vol=alpha work=verify:4096 seed=41"), Guest::new("g2", "vol=beta work=verify:4096 seed=42")];
    let mut b = t.start()?;
    let mut facts = Vec::new();
    for g in ["g1", "g2"] {
        let (f, _) = b.result(g, Duration::from_secs(120))?;
        facts.push(format!("{g}: verify ok, {} bytes written, flushed, read back ({} ops)", f.get("bytes").unwrap_or("?"), f.get("ops").unwrap_or("?")));
    }
    for l in b.serial("blk-dd") {
        if let Some(i) = l.find("ICONNECT-VOLUME").or_else(|| l.find("ICONNECT-PORT")) {
            println!("  blk-dd | {}", &l[i..]);
            if l.contains("ICONNECT-VOLUME") && l.contains(" size=") {
                facts.push(format!("blk-dd: {}", &l[i..]));
            }
        }
    }
    b.stop()?;
    check_pattern(&disk, 0, 4 * MIB, 41)?;
    check_pattern(&exp, 0, 4 * MIB, 42)?;
    facts.push(format!(
        "host check: {} (local slice) and {} (NBD export via qemu-nbd port {}) hold each guest's 4 MiB byte-exact",
        disk.display(),
        exp.display(),
        nbd.port
    ));
    for f in &facts {
        println!("  {f}");
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_matches_the_guest() {
        // The known answers pinned in blk-guest's tests too.
        let v: Vec<u8> = (0..12).map(|o| pattern_byte(11, o)).collect();
        assert_eq!(v, [6, 123, 211, 247, 129, 37, 172, 140, 164, 146, 81, 221]);
        let w: Vec<u8> = [4093, 4094, 4095, 4096].iter().map(|&o| pattern_byte(1 << 40, o)).collect();
        assert_eq!(w, [196, 205, 185, 71]);
        let dir = std::env::temp_dir().join(format!("blk-pattern-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("p.raw");
        let mut data = vec![0u8; 8192];
        for (i, b) in data[4096..].iter_mut().enumerate() {
            *b = pattern_byte(5, i as u64);
        }
        std::fs::write(&f, &data).unwrap();
        check_pattern(&f, 4096, 4096, 5).unwrap();
        check_zero(&f, 0, 4096).unwrap();
        assert!(check_pattern(&f, 0, 4096, 5).is_err());
        assert!(check_pattern(&f, 4096, 4096, 6).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
