//! Typed QEMU runner: [`Qemu`] (builder) → [`Running`] (serial lines streamed through a channel,
//! markers awaited with deadlines) → [`Outcome`] (exit status decoded per the isa-debug-exit
//! convention, serial text, timed_out, duration). Every run has a timeout; QEMU is killed by its
//! own PID (and dies with us through `PR_SET_PDEATHSIG`).

use std::fmt;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

use crate::images::{self, Devices};
use crate::markers;
use crate::prereq::{self, QEMU};
use crate::util::{self, fmt_dur};

/// How many serial lines to show when something fails.
pub const TAIL_LINES: usize = 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// /dev/kvm opens read-write.
pub fn kvm_usable() -> bool {
    OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// The KVM in this kernel is `kvm_pvm` (no hardware virtualization underneath).
pub fn kvm_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

impl Accel {
    /// Pick the accelerator: explicit request, else `ICONNECT_ACCEL`, else KVM if usable (and not
    /// kvm_pvm, which is slower than TCG for these tiny guests and cannot run every test), else TCG.
    /// Prints the choice and why.
    pub fn choose(requested: Option<Accel>) -> Result<Accel> {
        let env = std::env::var("ICONNECT_ACCEL").ok().filter(|s| !s.is_empty());
        let (accel, why) = match (requested, env) {
            (Some(a), _) => (a, "requested".to_string()),
            (None, Some(e)) => (
                Accel::from_str(&e, true).map_err(|_| anyhow::anyhow!("ICONNECT_ACCEL={e}: expected kvm or tcg"))?,
                format!("ICONNECT_ACCEL={e}"),
            ),
            (None, None) if kvm_usable() && kvm_is_pvm() => (
                Accel::Tcg,
                "/dev/kvm is kvm_pvm, a software virtualizer: guests start ~4.5 s slower than under TCG \
                 and int3 is not emulated; ICONNECT_ACCEL=kvm forces it"
                    .to_string(),
            ),
            (None, None) if kvm_usable() => (Accel::Kvm, "/dev/kvm is usable".to_string()),
            (None, None) => (Accel::Tcg, "/dev/kvm not usable, falling back".to_string()),
        };
        if accel == Accel::Kvm && !kvm_usable() {
            bail!("KVM requested ({why}) but /dev/kvm cannot be opened read-write");
        }
        println!("accel: {accel} ({why})");
        Ok(accel)
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            // /dev/kvm here may be kvm_pvm, where -cpu host/max fail: qemu64 works everywhere.
            Accel::Kvm => &["-accel", "kvm", "-cpu", "qemu64"],
            Accel::Tcg => &["-accel", "tcg"],
        }
    }
}

/// How the guest ended, decoded from QEMU's exit status (isa-debug-exit: status = (v << 1) | 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// rt wrote 0x10: status 33.
    Success,
    /// rt wrote 0x11: status 35.
    Failure,
    /// rt wrote 0x12: status 37.
    Panic,
    /// rt wrote 0x13 (CPU exception): status 39.
    Exception,
    /// QEMU exited 0: guest reset/triple fault under -no-reboot, or a shutdown without the exit device.
    Reset,
    /// Any other QEMU status (1 is also QEMU's own error status).
    Other(i32),
    /// We killed it when the timeout expired.
    TimedOut,
    /// We killed it on purpose (test finished with it).
    Killed,
    /// It died from a signal we did not send.
    Signal(i32),
    /// QEMU reported a fatal accelerator error (e.g. "KVM internal error"); we killed it.
    HostError,
}

impl GuestExit {
    pub fn decode(code: Option<i32>, signal: Option<i32>, timed_out: bool, killed: bool) -> GuestExit {
        if timed_out {
            return GuestExit::TimedOut;
        }
        if killed {
            return GuestExit::Killed;
        }
        match (code, signal) {
            (Some(33), _) => GuestExit::Success,
            (Some(35), _) => GuestExit::Failure,
            (Some(37), _) => GuestExit::Panic,
            (Some(39), _) => GuestExit::Exception,
            (Some(0), _) => GuestExit::Reset,
            (Some(c), _) => GuestExit::Other(c),
            (None, Some(s)) => GuestExit::Signal(s),
            (None, None) => GuestExit::Other(-1),
        }
    }
}

impl fmt::Display for GuestExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestExit::Success => write!(f, "success (status 33)"),
            GuestExit::Failure => write!(f, "failure (status 35)"),
            GuestExit::Panic => write!(f, "panic (status 37)"),
            GuestExit::Exception => write!(f, "CPU exception (status 39)"),
            GuestExit::Reset => write!(f, "reset/triple fault or shutdown without exit device (status 0)"),
            GuestExit::Other(1) => write!(f, "status 1 (QEMU error, or the guest wrote 0 to the exit port)"),
            GuestExit::Other(c) => write!(f, "unexpected status {c}"),
            GuestExit::TimedOut => write!(f, "timed out (killed)"),
            GuestExit::Killed => write!(f, "stopped by xtask"),
            GuestExit::Signal(s) => write!(f, "killed by signal {s}"),
            GuestExit::HostError => write!(f, "QEMU fatal error (VM stopped; killed), see QEMU stderr"),
        }
    }
}

/// A QEMU invocation (q35, PVH `-kernel` boot, serial on stdio, isa-debug-exit).
#[derive(Clone, Debug)]
pub struct Qemu {
    kernel: PathBuf,
    accel: Accel,
    machine: String,
    memory_mib: u32,
    append: String,
    extra: Vec<String>,
    timeout: Duration,
    netns: Option<String>,
    echo: bool,
    label: Option<String>,
}

impl Qemu {
    pub fn new(kernel: impl Into<PathBuf>, accel: Accel) -> Self {
        Qemu {
            kernel: kernel.into(),
            accel,
            machine: "q35".into(),
            memory_mib: 64,
            append: String::new(),
            extra: Vec::new(),
            timeout: Duration::from_secs(60),
            netns: None,
            echo: false,
            label: None,
        }
    }
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }
    pub fn append(mut self, cmdline: &str) -> Self {
        self.append = cmdline.into();
        self
    }
    pub fn device(mut self, spec: &str) -> Self {
        self.extra.extend(["-device".into(), spec.into()]);
        self
    }
    pub fn netdev(mut self, spec: &str) -> Self {
        self.extra.extend(["-netdev".into(), spec.into()]);
        self
    }
    /// Any other QEMU arguments, appended last (the nested Xen harness: `-smp`, `-cpu`, `-initrd`).
    pub fn args_extra<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.extra.extend(args.into_iter().map(Into::into));
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// Run QEMU inside this network namespace (`ip netns exec <ns> qemu...`, which execs, so the
    /// PID we hold is QEMU's).
    pub fn netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.into());
        self
    }
    /// Print serial lines to our stdout as they arrive.
    pub fn echo(mut self, on: bool) -> Self {
        self.echo = on;
        self
    }
    /// Name of this VM in a multi-VM run: echoed lines (serial and stderr) are prefixed with it.
    pub fn label(mut self, name: &str) -> Self {
        self.label = Some(name.into());
        self
    }

    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "-M",
            &self.machine,
            "-m",
            &format!("{}M", self.memory_mib),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-kernel",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(self.kernel.display().to_string());
        if !self.append.is_empty() {
            a.extend(["-append".into(), self.append.clone()]);
        }
        a.extend(self.accel.args().iter().map(|s| s.to_string()));
        a.extend(self.extra.iter().cloned());
        a
    }

    pub fn command(&self) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, QEMU]);
                c
            }
            None => Command::new(QEMU),
        };
        c.args(self.args());
        c
    }

    pub fn spawn(self) -> Result<Running> {
        if !self.kernel.is_file() {
            bail!("kernel image {} does not exist (run `cargo xtask build`)", self.kernel.display());
        }
        let mut cmd = self.command();
        println!("$ {}", util::show(&cmd));
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        util::die_with_parent(&mut cmd);
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting {QEMU}"))?;
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let echo = self.echo;
        let prefix = self.label.as_ref().map(|l| format!("{l:>7} | ")).unwrap_or_default();
        let prefix2 = prefix.clone();
        let lines2 = Arc::clone(&lines);
        let reader = thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
                        if echo {
                            println!("{prefix}{line}");
                        }
                        let idx = {
                            let mut l = lines2.lock().expect("serial lock");
                            l.push(line);
                            l.len() - 1
                        };
                        if tx.send(idx).is_err() {
                            // Nobody listens any more; keep draining so QEMU never blocks.
                        }
                    }
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let fatal = Arc::new(AtomicBool::new(false));
        let err_pipe = child.stderr.take().context("no stderr pipe")?;
        let (stderr2, fatal2) = (Arc::clone(&stderr), Arc::clone(&fatal));
        let err_reader = thread::spawn(move || {
            let mut r = BufReader::new(err_pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        if echo {
                            eprint!("{prefix2}{line}");
                        }
                        stderr2.lock().expect("stderr lock").push_str(&line);
                        if is_fatal_stderr(&line) && !fatal2.swap(true, Ordering::SeqCst) {
                            let _ = tx2.send(FATAL);
                        }
                    }
                }
            }
        });
        Ok(Running {
            child,
            lines,
            rx,
            started,
            deadline: started + self.timeout,
            timeout: self.timeout,
            stderr,
            fatal,
            readers: vec![reader, err_reader],
            eof: false,
        })
    }

    /// Spawn and wait for the guest to exit (or the timeout).
    pub fn run(self) -> Result<Outcome> {
        Ok(self.spawn()?.wait())
    }
}

/// Channel value meaning "QEMU reported a fatal error on stderr" (serial lines send their index).
const FATAL: usize = usize::MAX;

/// stderr lines after which QEMU keeps running but the VM is dead (it stops instead of exiting).
pub fn is_fatal_stderr(line: &str) -> bool {
    line.contains("KVM internal error") || line.contains("KVM: entry failed")
}

/// A QEMU process we own. Dropping it kills QEMU.
pub struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    rx: Receiver<usize>,
    started: Instant,
    deadline: Instant,
    timeout: Duration,
    stderr: Arc<Mutex<String>>,
    /// QEMU reported an error after which the VM never continues (e.g. "KVM internal error").
    fatal: Arc<AtomicBool>,
    readers: Vec<thread::JoinHandle<()>>,
    eof: bool,
}

/// Why waiting for a marker did not succeed.
#[derive(Debug)]
pub enum WaitError {
    /// The deadline passed; QEMU is still running.
    Deadline(Duration),
    /// QEMU's serial output ended (it exited) before the marker appeared.
    Exited,
    /// QEMU reported a fatal accelerator error (the VM is stopped).
    HostError,
    /// Ctrl-C.
    Interrupted,
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::Deadline(d) => write!(f, "not within {}", fmt_dur(*d)),
            WaitError::Exited => write!(f, "QEMU exited first"),
            WaitError::HostError => write!(f, "QEMU reported a fatal error (VM stopped), see its stderr"),
            WaitError::Interrupted => write!(f, "interrupted"),
        }
    }
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait until a serial line satisfies `pred` (lines already received count), at most `within`
    /// and never past the run's own timeout. Returns the line and the time since spawn.
    pub fn wait_for(&mut self, pred: impl Fn(&str) -> bool, within: Duration) -> Result<(String, Duration), WaitError> {
        let deadline = (Instant::now() + within).min(self.deadline);
        let mut seen = 0;
        loop {
            {
                let lines = self.lines.lock().expect("serial lock");
                if let Some(l) = lines[seen..].iter().find(|l| pred(l)) {
                    return Ok((l.clone(), self.started.elapsed()));
                }
                seen = lines.len();
            }
            if self.fatal.load(Ordering::SeqCst) {
                return Err(WaitError::HostError);
            }
            if util::interrupted() {
                return Err(WaitError::Interrupted);
            }
            if self.eof {
                return Err(WaitError::Exited);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::Deadline(within));
            }
            match self.rx.recv_timeout((deadline - now).min(Duration::from_millis(100))) {
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.eof = true,
            }
        }
    }

    /// Serial lines so far.
    pub fn serial(&self) -> Vec<String> {
        self.lines.lock().expect("serial lock").clone()
    }

    pub fn tail(&self, n: usize) -> String {
        tail(&self.serial(), n)
    }

    /// Wait for QEMU to exit on its own; kill it when the run's timeout expires.
    pub fn wait(self) -> Outcome {
        let d = self.timeout;
        self.wait_within(d)
    }

    /// Like [`Running::wait`], but kill QEMU (reported as timed out) after `within` at the latest.
    pub fn wait_within(mut self, within: Duration) -> Outcome {
        let deadline = self.deadline.min(Instant::now() + within);
        let mut timed_out = false;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if self.fatal.load(Ordering::SeqCst) || util::interrupted() => {
                    self.kill_now();
                    break;
                }
                Ok(None) if Instant::now() >= deadline => {
                    timed_out = true;
                    self.kill_now();
                    break;
                }
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        self.finish(timed_out, false)
    }

    /// Kill QEMU now (by its PID) and collect the outcome.
    pub fn stop(mut self) -> Outcome {
        if self.eof {
            // Serial output ended: QEMU is exiting on its own; give it a moment to be reaped so
            // its real exit status is reported.
            let until = Instant::now() + Duration::from_secs(2);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < until {
                thread::sleep(Duration::from_millis(10));
            }
        }
        let already = matches!(self.child.try_wait(), Ok(Some(_)));
        if !already {
            self.kill_now();
        }
        self.finish(false, !already)
    }

    fn kill_now(&mut self) {
        // Child::kill sends SIGKILL to exactly this PID.
        let _ = self.child.kill();
    }

    fn finish(&mut self, timed_out: bool, killed: bool) -> Outcome {
        let status = self.child.wait().ok();
        let duration = self.started.elapsed();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let code = status.and_then(|s| s.code());
        let signal = status.and_then(|s| s.signal());
        Outcome {
            code,
            exit: if self.fatal.load(Ordering::SeqCst) {
                GuestExit::HostError
            } else {
                GuestExit::decode(code, signal, timed_out, killed)
            },
            serial: self.serial(),
            stderr: self.stderr.lock().expect("stderr lock").clone(),
            timed_out,
            duration,
            timeout: self.timeout,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill_now();
            let _ = self.child.wait();
        }
    }
}

/// What a QEMU run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub code: Option<i32>,
    pub exit: GuestExit,
    pub serial: Vec<String>,
    pub stderr: String,
    pub timed_out: bool,
    pub duration: Duration,
    pub timeout: Duration,
}

impl Outcome {
    /// First serial line containing `needle`.
    pub fn line_with(&self, needle: &str) -> Option<&str> {
        self.serial.iter().map(String::as_str).find(|l| l.contains(needle))
    }

    /// Diagnostic text for a failed run: decoded exit, QEMU's stderr, the last serial lines.
    pub fn diagnostics(&self) -> String {
        let mut s = format!(
            "QEMU ended: {} [exit status {}] after {}{}\n",
            self.exit,
            self.code.map_or("none".to_string(), |c| c.to_string()),
            fmt_dur(self.duration),
            if self.timed_out { format!(", hit the {} timeout", fmt_dur(self.timeout)) } else { String::new() }
        );
        if !self.stderr.trim().is_empty() {
            s.push_str(&format!("--- QEMU stderr ---\n{}\n", self.stderr.trim_end()));
        }
        s.push_str(&format!(
            "--- last {} serial lines (of {}) ---\n{}",
            TAIL_LINES.min(self.serial.len()),
            self.serial.len(),
            tail(&self.serial, TAIL_LINES)
        ));
        s
    }
}

pub fn tail(lines: &[String], n: usize) -> String {
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// A free TCP port on 127.0.0.1 (bind port 0, read it, release it).
pub fn free_local_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a local port")?;
    Ok(l.local_addr()?.port())
}

/// `cargo xtask run <image>`.
pub fn run_cmd(
    name: &str,
    append: Option<String>,
    accel: Option<Accel>,
    timeout: u64,
    memory: u32,
    no_build: bool,
) -> Result<()> {
    let image = images::find(name)?;
    prereq::ensure_qemu()?;
    let path = if no_build {
        util::target_dir()?.join("images").join(format!("{}.elf", image.name))
    } else {
        images::build(&[image])?.remove(0).path
    };
    let accel = Accel::choose(accel)?;
    let append = append.unwrap_or_else(|| image.default_append.to_string());
    let mut q = Qemu::new(&path, accel)
        .memory_mib(memory)
        .append(&append)
        .timeout(Duration::from_secs(timeout))
        .echo(true);
    match image.devices {
        Devices::None => {}
        Devices::NetUser => {
            let port = free_local_port()?;
            q = q
                .netdev(&format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-10.0.2.15:7"))
                .device("virtio-net-pci,netdev=n0,disable-legacy=on");
            println!("net: user-mode network; host 127.0.0.1:{port} -> guest 10.0.2.15:7 (TCP echo)");
            println!("     try: nc 127.0.0.1 {port}");
        }
    }
    println!("run: {} (timeout {timeout}s; Ctrl-C to stop)", image.name);
    let out = q.spawn()?.wait();
    if let Some((img, us)) = out.serial.iter().find_map(|l| markers::parse_ready(l)) {
        println!("run: {img} was ready after {} (guest TSC)", fmt_dur(Duration::from_micros(us)));
    }
    println!("run: QEMU ended: {} after {}", out.exit, fmt_dur(out.duration));
    match out.exit {
        GuestExit::Success | GuestExit::TimedOut => Ok(()),
        e => bail!("{} ended with {e}", image.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_decoding() {
        assert_eq!(GuestExit::decode(Some(33), None, false, false), GuestExit::Success);
        assert_eq!(GuestExit::decode(Some(35), None, false, false), GuestExit::Failure);
        assert_eq!(GuestExit::decode(Some(37), None, false, false), GuestExit::Panic);
        assert_eq!(GuestExit::decode(Some(39), None, false, false), GuestExit::Exception);
        assert_eq!(GuestExit::decode(Some(0), None, false, false), GuestExit::Reset);
        assert_eq!(GuestExit::decode(Some(1), None, false, false), GuestExit::Other(1));
        assert_eq!(GuestExit::decode(None, Some(9), true, false), GuestExit::TimedOut);
        assert_eq!(GuestExit::decode(None, Some(9), false, true), GuestExit::Killed);
        assert_eq!(GuestExit::decode(None, Some(11), false, false), GuestExit::Signal(11));
    }

    #[test]
    fn exit_values_match_debug_exit_formula() {
        // rt writes v; QEMU exits with (v << 1) | 1.
        let status = |v: i32| (v << 1) | 1;
        assert_eq!(GuestExit::decode(Some(status(0x10)), None, false, false), GuestExit::Success);
        assert_eq!(GuestExit::decode(Some(status(0x11)), None, false, false), GuestExit::Failure);
        assert_eq!(GuestExit::decode(Some(status(0x12)), None, false, false), GuestExit::Panic);
        assert_eq!(GuestExit::decode(Some(status(0x13)), None, false, false), GuestExit::Exception);
    }

    #[test]
    fn command_line_shape() {
        let q = Qemu::new("/x/k.elf", Accel::Kvm)
            .append("fault=page")
            .device("virtio-net-pci,netdev=n0,disable-legacy=on")
            .netns("icx-1");
        let args = q.args();
        let joined = args.join(" ");
        assert!(joined.starts_with("-M q35 -m 64M "));
        assert!(joined.contains("-device isa-debug-exit,iobase=0xf4,iosize=0x04"));
        assert!(joined.contains("-kernel /x/k.elf -append fault=page -accel kvm -cpu qemu64"));
        assert!(joined.contains("-serial stdio"));
        assert!(joined.contains("-no-reboot"));
        let cmd = q.command();
        assert_eq!(cmd.get_program(), "ip");
        let first: Vec<_> = cmd.get_args().take(4).map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(first, ["netns", "exec", "icx-1", QEMU]);
        let tcg = Qemu::new("/k", Accel::Tcg).args().join(" ");
        assert!(tcg.contains("-accel tcg") && !tcg.contains("-cpu"));
        assert!(!tcg.contains("-append"));
    }

    #[test]
    fn fatal_stderr_lines() {
        assert!(is_fatal_stderr("KVM internal error. Suberror: 1"));
        assert!(!is_fatal_stderr("qemu-system-x86_64: warning: host doesn't support requested feature"));
    }

    #[test]
    fn tail_takes_last_lines() {
        let l: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        let t = tail(&l, 3);
        assert_eq!(t, "97\n98\n99");
        assert_eq!(tail(&l[..2], 60), "0\n1");
    }

    fn have_qemu() -> bool {
        let ok = std::process::Command::new(QEMU).arg("--version").output().is_ok_and(|o| o.status.success());
        if !ok {
            eprintln!("skipping: {QEMU} not installed");
        }
        ok
    }

    /// A minimal PVH ELF64 (entry in 32-bit protected mode): writes `msg` to COM1, then either
    /// writes `exit` to the isa-debug-exit port or (None) spins forever.
    fn pvh_elf(msg: &str, exit: Option<u32>) -> Vec<u8> {
        let mut code = Vec::new();
        for &ch in msg.as_bytes() {
            code.extend([0x66, 0xba, 0xf8, 0x03, 0xb0, ch, 0xee]); // mov dx,0x3f8; mov al,ch; out dx,al
        }
        if let Some(v) = exit {
            code.extend([0x66, 0xba, 0xf4, 0x00, 0xb8]); // mov dx,0xf4; mov eax,v
            code.extend(v.to_le_bytes());
            code.push(0xef); // out dx,eax
        }
        code.extend([0xeb, 0xfe]); // jmp $
        let base = 0x10_0000u64;
        let code_off = 0x1000usize;
        let note_off = 64 + 2 * 56;
        let mut b = vec![0u8; code_off];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // ELF64
        b[5] = 1; // little endian
        b[6] = 1;
        b[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        b[0x12..0x14].copy_from_slice(&0x3eu16.to_le_bytes()); // x86-64
        b[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
        b[0x18..0x20].copy_from_slice(&(base + code_off as u64).to_le_bytes()); // e_entry
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        b[0x34..0x36].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        b[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
        b[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        b.extend(&code);
        let total = b.len() as u64;
        let mut ph = |at: usize, p_type: u32, flags: u32, off: u64, addr: u64, size: u64, align: u64| {
            let f = [
                &p_type.to_le_bytes()[..],
                &flags.to_le_bytes(),
                &off.to_le_bytes(),
                &addr.to_le_bytes(),
                &addr.to_le_bytes(),
                &size.to_le_bytes(),
                &size.to_le_bytes(),
                &align.to_le_bytes(),
            ]
            .concat();
            b[at..at + 56].copy_from_slice(&f);
        };
        ph(64, 1, 5, 0, base, total, 0x1000); // PT_LOAD, R+X
        ph(120, 4, 4, note_off as u64, 0, 20, 4); // PT_NOTE
        // Xen note type 18 (XEN_ELFNOTE_PHYS32_ENTRY): 32-bit entry address.
        let note = [
            &4u32.to_le_bytes()[..],
            &4u32.to_le_bytes(),
            &18u32.to_le_bytes(),
            b"Xen\0",
            &((base + code_off as u64) as u32).to_le_bytes(),
        ]
        .concat();
        b[note_off..note_off + note.len()].copy_from_slice(&note);
        b
    }

    /// Write a kernel into its own temp directory (remove it with `cleanup`).
    fn write_kernel(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let k = dir.join(name);
        std::fs::write(&k, bytes).unwrap();
        k
    }

    fn cleanup(kernel: &std::path::Path) {
        if let Some(d) = kernel.parent() {
            std::fs::remove_dir_all(d).ok();
        }
    }

    #[test]
    fn fixture_is_a_pvh_elf() {
        let info = crate::images::parse_elf(&pvh_elf("x", Some(0x10))).unwrap();
        assert_eq!(info.pvh_entry, Some(0x10_1000));
    }

    /// Real QEMU: the debug-exit values rt uses come back as the decoded exits, with the serial
    /// output captured line by line.
    #[test]
    fn real_qemu_exit_statuses_and_serial() {
        if !have_qemu() {
            return;
        }
        for (v, want) in [(0x10, GuestExit::Success), (0x11, GuestExit::Failure), (0x13, GuestExit::Exception)] {
            let k = write_kernel(&format!("exit-{v:x}.elf"), &pvh_elf("hello\nKTEST-DONE passed=1 failed=0\n", Some(v)));
            let out = Qemu::new(&k, Accel::Tcg).timeout(Duration::from_secs(30)).run().unwrap();
            assert_eq!(out.exit, want, "{}", out.diagnostics());
            assert_eq!(out.serial, ["hello", "KTEST-DONE passed=1 failed=0"], "{}", out.diagnostics());
            assert!(!out.timed_out);
            cleanup(&k);
        }
    }

    /// Real QEMU: waiting for a marker of a running guest, a deadline that passes, stopping it by
    /// PID, and the run timeout of a guest that never exits.
    #[test]
    fn real_qemu_wait_stop_and_timeout() {
        if !have_qemu() {
            return;
        }
        let k = write_kernel("spin.elf", &pvh_elf("ICONNECT-READY spin boot_us=7\n", None));
        let mut r = Qemu::new(&k, Accel::Tcg).timeout(Duration::from_secs(30)).spawn().unwrap();
        let (line, _) = r.wait_for(|l| l.contains("ICONNECT-READY"), Duration::from_secs(20)).unwrap();
        assert_eq!(crate::markers::parse_ready(&line), Some(("spin".to_string(), 7)));
        assert!(matches!(r.wait_for(|l| l.contains("never"), Duration::from_millis(300)), Err(WaitError::Deadline(_))));
        let pid = r.pid();
        let out = r.stop();
        assert_eq!(out.exit, GuestExit::Killed);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "QEMU {pid} still exists");

        let t = Instant::now();
        let out = Qemu::new(&k, Accel::Tcg).timeout(Duration::from_secs(2)).run().unwrap();
        assert_eq!(out.exit, GuestExit::TimedOut);
        assert!(out.timed_out);
        assert!(t.elapsed() < Duration::from_secs(15), "timeout not enforced: {:?}", t.elapsed());
        cleanup(&k);
    }

    /// Real QEMU (when installed): a kernel that is not a PVH ELF makes QEMU fail fast with an
    /// error on stderr; the runner must report it, not hang.
    #[test]
    fn qemu_rejects_non_pvh_kernel() {
        if !have_qemu() {
            return;
        }
        let k = write_kernel("bogus.elf", b"\x7fELF this is not a kernel");
        let out = Qemu::new(&k, Accel::Tcg).timeout(Duration::from_secs(20)).run().unwrap();
        cleanup(&k);
        assert!(!out.timed_out, "QEMU hung on a bogus kernel");
        assert_ne!(out.exit, GuestExit::Success);
        assert!(!out.stderr.is_empty(), "QEMU said nothing about the bogus kernel");
    }
}
