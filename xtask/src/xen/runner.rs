//! Boots Xen + dom0 in QEMU (TCG) through [`crate::qemu`]'s runner, follows the boot through its
//! stages, and turns the serial console — Xen's log, dom0's `hvc0` and every domain's port-0xe9
//! output (`(d<N>) ...`) — into a typed [`XenRun`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};

use crate::qemu::{Accel, GuestExit, Outcome, Qemu};
use crate::util::fmt_dur;

/// Xen's command line: serial console on COM1 (QEMU's stdio), a fixed dom0 size, every log level
/// (guest_loglvl=all makes Xen print the domains' port-0xe9 output), and no boot-time scrubbing of
/// free memory (under TCG it costs CPU and makes QEMU touch all 1.5 GiB: RSS 1.7 GB -> 0.46 GB).
pub const XEN_CMDLINE: &str =
    "console=com1 com1=115200,8n1 dom0_mem=512M,max:512M loglvl=all guest_loglvl=all bootscrub=false";
/// dom0 Linux: console on Xen's hvc0 (which Xen mirrors to its serial line), quiet kernel.
pub const DOM0_CMDLINE: &str = "console=hvc0 earlyprintk=xen loglevel=4";
/// Guest RAM of the QEMU machine (dom0 gets 512 MiB, the rest is for domUs).
pub const MACHINE_MIB: u32 = 1536;
/// Two vCPUs: TCG runs one host thread per vCPU (MTTCG is QEMU's default for x86 on x86), which
/// is both cores of the CI machine.
pub const SMP: u32 = 2;

/// What to boot.
#[derive(Clone, Debug)]
pub struct Boot {
    pub xen: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub timeout: Duration,
    pub echo: bool,
    /// While the scenario runs, every serial line this maps to `Some(text)` is printed as it
    /// arrives (the demo's live narration).
    pub live: Option<fn(&str) -> Option<String>>,
}

/// Milestones of a run, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Xen printed its version banner.
    XenStarted,
    /// Xen handed over to dom0 (`Freed ... init memory`).
    Dom0Started,
    /// dom0's /init runs.
    Dom0Init,
    /// xenstored, xen-init-dom0 and xenconsoled are up; the scenario starts.
    Dom0Ready,
    /// The scenario script returned (`XENTEST-END`).
    ScenarioEnd,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::XenStarted, Stage::Dom0Started, Stage::Dom0Init, Stage::Dom0Ready, Stage::ScenarioEnd];

    pub fn matches(self, line: &str) -> bool {
        match self {
            Stage::XenStarted => line.contains("Xen version"),
            Stage::Dom0Started => line.starts_with("(XEN)") && line.contains("Freed") && line.contains("init memory"),
            Stage::Dom0Init => line.contains("XENTEST-STAGE dom0-init"),
            Stage::Dom0Ready => line.contains("XENTEST-STAGE dom0-ready"),
            Stage::ScenarioEnd => line.contains("XENTEST-END "),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Stage::XenStarted => "Xen started",
            Stage::Dom0Started => "Xen handed over to dom0",
            Stage::Dom0Init => "dom0 /init running",
            Stage::Dom0Ready => "dom0 Xen tools up",
            Stage::ScenarioEnd => "scenario finished",
        }
    }
}

/// A domain the scenario created (`XENTEST-DOMAIN`) and how it ended (`XENTEST-DOMAIN-END`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
    pub domid: u32,
    pub tries: u32,
    pub create_ms: u64,
    pub create_rc: i32,
    pub end: Option<DomainEnd>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainEnd {
    /// xl's state flags, e.g. `---s--`.
    pub state: String,
    /// `poweroff`, `crash`, `gone` or `running` (still running at the scenario's time limit).
    pub how: String,
    pub after_ms: u64,
}

/// Everything a run produced.
#[derive(Debug)]
pub struct XenRun {
    pub outcome: Outcome,
    /// Host time since QEMU was spawned at which each reached stage was seen.
    pub stages: Vec<(Stage, Duration)>,
    /// `XENTEST-RESULT` lines: (name, Ok or the reason).
    pub results: Vec<(String, Result<(), String>)>,
    pub domains: BTreeMap<String, Domain>,
    pub info: BTreeMap<String, String>,
    pub warnings: Vec<String>,
    /// dom0 uptime (ms) at XENTEST-STAGE / XENTEST-END markers.
    pub dom0_ms: BTreeMap<String, u64>,
    /// Exit status of /scenario.sh.
    pub scenario_rc: Option<i32>,
    pub serial_log: PathBuf,
}

fn kv<'a>(toks: impl Iterator<Item = &'a str>) -> BTreeMap<&'a str, &'a str> {
    toks.filter_map(|t| t.split_once('=')).collect()
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| &line[i + marker.len()..])
}

/// The text of a `(d<N>) text` line if it belongs to domain `domid`.
pub fn domain_line(line: &str, domid: u32) -> Option<&str> {
    let p = format!("(d{domid}) ");
    let i = line.find(&p)?;
    // Only at the start (Xen may prefix a timestamp in brackets).
    if line[..i].trim().is_empty() || line[..i].trim_end().ends_with(']') {
        Some(&line[i + p.len()..])
    } else {
        None
    }
}

/// A result's name: its first word, cut where Xen spliced a domain's `(dN) ...` debug-port line
/// into dom0's console line (both share the serial port; names never contain `(`).
fn result_name(s: &str) -> String {
    let w = s.split_whitespace().next().unwrap_or("");
    w.split('(').next().unwrap_or("").to_string()
}

impl XenRun {
    /// Parse the markers out of the serial lines.
    pub fn parse(outcome: Outcome, stages: Vec<(Stage, Duration)>, serial_log: PathBuf) -> XenRun {
        let mut run = XenRun {
            outcome,
            stages,
            results: Vec::new(),
            domains: BTreeMap::new(),
            info: BTreeMap::new(),
            warnings: Vec::new(),
            dom0_ms: BTreeMap::new(),
            scenario_rc: None,
            serial_log,
        };
        for line in &run.outcome.serial {
            let line = line.trim_end();
            if let Some(rest) = after(line, "XENTEST-RESULT ") {
                if let Some(name) = rest.strip_prefix("ok ") {
                    run.results.push((result_name(name), Ok(())));
                } else if let Some(rest) = rest.strip_prefix("FAIL ") {
                    let (name, why) = rest.split_once(':').unwrap_or((rest, ""));
                    run.results.push((result_name(name), Err(why.trim().to_string())));
                }
            } else if let Some(rest) = after(line, "XENTEST-DOMAIN-END ") {
                let mut t = rest.split_whitespace();
                let Some(name) = t.next() else { continue };
                let m = kv(t);
                if let Some(d) = run.domains.get_mut(name) {
                    d.end = Some(DomainEnd {
                        state: m.get("state").unwrap_or(&"").to_string(),
                        how: m.get("how").unwrap_or(&"").to_string(),
                        after_ms: m.get("after_ms").and_then(|v| v.parse().ok()).unwrap_or(0),
                    });
                }
            } else if let Some(rest) = after(line, "XENTEST-DOMAIN ") {
                let mut t = rest.split_whitespace();
                let Some(name) = t.next() else { continue };
                let m = kv(t);
                let Some(domid) = m.get("domid").and_then(|v| v.parse().ok()) else { continue };
                let num = |k: &str| m.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                run.domains.insert(
                    name.to_string(),
                    Domain {
                        name: name.to_string(),
                        domid,
                        tries: num("tries") as u32,
                        create_ms: num("create_ms") as u64,
                        create_rc: num("rc") as i32,
                        end: None,
                    },
                );
            } else if let Some(rest) = after(line, "XENTEST-INFO ") {
                if let Some((k, v)) = rest.split_once('=') {
                    run.info.insert(k.trim().to_string(), v.trim().to_string());
                }
            } else if let Some(rest) = after(line, "XENTEST-WARN ") {
                run.warnings.push(rest.to_string());
            } else if let Some(rest) = after(line, "XENTEST-STAGE ") {
                let mut t = rest.split_whitespace();
                if let Some(stage) = t.next()
                    && let Some(ms) = kv(t).get("uptime_ms").and_then(|v| v.parse().ok())
                {
                    run.dom0_ms.insert(stage.to_string(), ms);
                }
            } else if let Some(rest) = after(line, "XENTEST-END ") {
                let m = kv(rest.split_whitespace());
                run.scenario_rc = m.get("rc").and_then(|v| v.parse().ok());
                if let Some(ms) = m.get("uptime_ms").and_then(|v| v.parse().ok()) {
                    run.dom0_ms.insert("end".into(), ms);
                }
            }
        }
        run
    }

    pub fn reached(&self, s: Stage) -> Option<Duration> {
        self.stages.iter().find(|(st, _)| *st == s).map(|(_, d)| *d)
    }

    /// The last stage reached (None: not even Xen's banner).
    pub fn last_stage(&self) -> Option<Stage> {
        self.stages.last().map(|(s, _)| *s)
    }

    /// Whether the run ended the intended way: scenario finished and QEMU exited on dom0's
    /// power-off (not killed by us).
    pub fn clean(&self) -> bool {
        self.reached(Stage::ScenarioEnd).is_some()
            && !matches!(self.outcome.exit, GuestExit::TimedOut | GuestExit::Killed)
    }

    /// A run-level problem that invalidates every check of the scenario, if any.
    pub fn problem(&self) -> Option<String> {
        if self.reached(Stage::ScenarioEnd).is_none() {
            let next = Stage::ALL.iter().find(|s| self.reached(**s).is_none()).copied();
            return Some(format!(
                "the run did not get to `{}` (last: {}); QEMU: {}",
                next.map_or("?", Stage::describe),
                self.last_stage().map_or("nothing", Stage::describe),
                self.outcome.exit
            ));
        }
        if !self.clean() {
            return Some(format!("dom0 did not power the machine off: QEMU {}", self.outcome.exit));
        }
        None
    }

    /// A domain's port-0xe9 console lines (Xen's `(d<N>)` prefix removed).
    pub fn console(&self, domid: u32) -> Vec<String> {
        self.outcome.serial.iter().filter_map(|l| domain_line(l, domid)).map(|s| s.trim_end().to_string()).collect()
    }

    /// A domain's PV console lines as followed by dom0 (`[console <name>] ...`, see `xt_follow`).
    pub fn pv_console(&self, name: &str) -> Vec<String> {
        let p = format!("[console {name}] ");
        self.outcome.serial.iter().filter_map(|l| l.find(&p).map(|i| l[i + p.len()..].trim_end().to_string())).collect()
    }

    /// Failure report for a domain: what the scenario saw and the domain's console lines, plus
    /// Xen's own lines that name the domain.
    pub fn domain_report(&self, name: &str) -> String {
        let Some(d) = self.domains.get(name) else {
            let mut s = format!("domain `{name}` was never created");
            for l in self.outcome.serial.iter().filter(|l| l.contains(&format!("xl create {name}]"))) {
                s.push_str(&format!("\n  {l}"));
            }
            return s;
        };
        let mut s = format!(
            "domain `{name}` (domid {}, created in {} ms after {} tr{}, xl create exit {}), ended: {}",
            d.domid,
            d.create_ms,
            d.tries,
            if d.tries == 1 { "y" } else { "ies" },
            d.create_rc,
            d.end.as_ref().map_or("never reported".to_string(), |e| format!(
                "{} (state {}) after {} ms",
                e.how, e.state, e.after_ms
            ))
        );
        let tag = format!("d{}", d.domid);
        let xen: Vec<&String> = self
            .outcome
            .serial
            .iter()
            .filter(|l| {
                l.starts_with("(XEN)")
                    // xen-hvmctx makes Xen log one `HVM dN save: ...` line per record: noise.
                    && !l.contains(" save: ")
                    && (l.contains(&format!("{tag}v")) || l.contains(&format!(" {tag} ")) || l.contains(&format!("{tag}:")))
            })
            .collect();
        if !xen.is_empty() {
            s.push_str(&format!("\n--- Xen about {tag} ---"));
            for l in xen.iter().rev().take(20).rev() {
                s.push_str(&format!("\n{l}"));
            }
        }
        let con = self.console(d.domid);
        s.push_str(&format!("\n--- console of {name} ({tag}), last {} of {} lines ---", con.len().min(40), con.len()));
        for l in &con[con.len().saturating_sub(40)..] {
            s.push_str(&format!("\n{l}"));
        }
        let pv = self.pv_console(name);
        if !pv.is_empty() {
            s.push_str(&format!("\n--- PV console of {name}, last {} of {} lines ---", pv.len().min(40), pv.len()));
            for l in &pv[pv.len().saturating_sub(40)..] {
                s.push_str(&format!("\n{l}"));
            }
        }
        for l in self.outcome.serial.iter().filter(|l| l.contains(&format!("[hvmctx {name}]"))) {
            s.push_str(&format!("\n{l}"));
        }
        s
    }

    pub fn timings(&self) -> String {
        let mut parts: Vec<String> =
            self.stages.iter().map(|(s, d)| format!("{} at {}", s.describe(), fmt_dur(*d))).collect();
        parts.push(format!("QEMU ended at {}", fmt_dur(self.outcome.duration)));
        let mut s = format!("host: {}", parts.join(", "));
        if !self.dom0_ms.is_empty() {
            let d: Vec<String> = self.dom0_ms.iter().map(|(k, v)| format!("{k} {:.2}s", *v as f64 / 1e3)).collect();
            s.push_str(&format!("; dom0 uptime: {}", d.join(", ")));
        }
        for d in self.domains.values() {
            s.push_str(&format!("; xl create {} {} ms (tries {})", d.name, d.create_ms, d.tries));
            if let Some(e) = &d.end {
                s.push_str(&format!(", {} {} ms later", e.how, e.after_ms));
            }
        }
        s
    }
}

/// Seconds dom0 lets the scenario run: the host timeout minus what booting and powering off
/// take, so a hung scenario is killed inside dom0 and the run still ends cleanly.
pub fn scenario_limit(host_timeout: Duration) -> u64 {
    host_timeout.as_secs().saturating_sub(90).max(30)
}

/// The QEMU invocation for a nested Xen boot.
pub fn qemu(b: &Boot) -> Result<Qemu> {
    for p in [&b.xen, &b.kernel, &b.initrd] {
        let s = p.display().to_string();
        if s.contains(',') {
            bail!("path {s} contains a comma, which QEMU's multiboot module list cannot carry");
        }
    }
    let mut cmdline = XEN_CMDLINE.to_string();
    // Extra Xen options for experiments (e.g. `console_timestamps=boot`).
    if let Ok(extra) = std::env::var("ICONNECT_XEN_EXTRA")
        && !extra.trim().is_empty()
    {
        cmdline.push(' ');
        cmdline.push_str(extra.trim());
    }
    Ok(Qemu::new(&b.xen, Accel::Tcg)
        .memory_mib(MACHINE_MIB)
        .append(&cmdline)
        .timeout(b.timeout)
        .echo(b.echo)
        .args_extra([
            "-cpu".to_string(),
            "max".to_string(),
            "-smp".to_string(),
            SMP.to_string(),
            "-initrd".to_string(),
            format!("{} {DOM0_CMDLINE} xentest_timeout={},{}", b.kernel.display(), scenario_limit(b.timeout), b.initrd.display()),
        ]))
}

/// Boot, follow the stages, wait for dom0's power-off (killing QEMU at the timeout), parse.
pub fn boot(b: &Boot, serial_log: &Path) -> Result<XenRun> {
    let mut running = qemu(b)?.spawn()?;
    println!("xen: QEMU pid {} (TCG, -cpu max, -smp {SMP}, {MACHINE_MIB} MiB), timeout {}", running.pid(), fmt_dur(b.timeout));
    let mut stages = Vec::new();
    let started = std::time::Instant::now();
    let mut shown = 0;
    for s in Stage::ALL {
        let waited = match b.live.filter(|_| s == Stage::ScenarioEnd) {
            None => running.wait_for(|l| s.matches(l), b.timeout),
            Some(live) => loop {
                let r = running.wait_for(|l| s.matches(l), Duration::from_millis(500));
                let lines = running.serial();
                for l in lines.iter().skip(shown) {
                    if let Some(text) = live(l) {
                        println!("  [{}] {text}", fmt_dur(started.elapsed()));
                    }
                }
                shown = lines.len();
                match r {
                    Err(crate::qemu::WaitError::Deadline(_)) if started.elapsed() < b.timeout => continue,
                    other => break other,
                }
            },
        };
        match waited {
            Ok((_, at)) => {
                println!("xen: [{}] {}", fmt_dur(at), s.describe());
                stages.push((s, at));
            }
            Err(e) => {
                println!("xen: stopped waiting for `{}`: {e}", s.describe());
                break;
            }
        }
    }
    if stages.last().map(|s| s.0) == Some(Stage::ScenarioEnd) {
        // dom0 runs `poweroff -f` next: give Xen time to turn the machine off.
        let _ = running.wait_for(|_| false, Duration::from_secs(30));
    }
    let outcome = running.stop();
    let mut text = outcome.serial.join("\n");
    text.push('\n');
    if !outcome.stderr.trim().is_empty() {
        text.push_str(&format!("--- QEMU stderr ---\n{}", outcome.stderr));
    }
    std::fs::write(serial_log, text)?;
    Ok(XenRun::parse(outcome, stages, serial_log.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(lines: &str, exit: GuestExit) -> Outcome {
        Outcome {
            code: Some(0),
            exit,
            serial: lines.lines().map(str::to_string).collect(),
            stderr: String::new(),
            timed_out: exit == GuestExit::TimedOut,
            duration: Duration::from_secs(70),
            timeout: Duration::from_secs(300),
        }
    }

    const SAMPLE: &str = "\
(XEN) Xen version 4.17.7 (Debian)
(XEN) Freed 2048kB init memory
XENTEST-STAGE dom0-init uptime_ms=9120
XENTEST-STAGE dom0-ready uptime_ms=10500
XENTEST-INFO virt_caps=pv hvm hap gnttab-v1 gnttab-v2
[xl create ktest] Parsing config from /etc/xentest/ktest.cfg
XENTEST-DOMAIN ktest domid=1 tries=1 create_ms=1230 rc=0
(d1) [   0.000100] INFO  rt: booting
(XEN) d1v0 some hypervisor note
(d1) KTEST-RESULT ok heap
(d12) not ours
XENTEST-DOMAIN-END ktest state=---s-- how=poweroff after_ms=800
XENTEST-RESULT ok create-ktest
XENTEST-RESULT FAIL other: it broke: badly
XENTEST-WARN insmod bridge.ko failed
XENTEST-END rc=0 uptime_ms=13000
";

    #[test]
    fn parses_markers() {
        let r = XenRun::parse(outcome(SAMPLE, GuestExit::Reset), vec![], PathBuf::from("/x"));
        assert_eq!(r.info["virt_caps"], "pv hvm hap gnttab-v1 gnttab-v2");
        let d = &r.domains["ktest"];
        assert_eq!((d.domid, d.tries, d.create_ms, d.create_rc), (1, 1, 1230, 0));
        let e = d.end.as_ref().unwrap();
        assert_eq!((e.how.as_str(), e.state.as_str(), e.after_ms), ("poweroff", "---s--", 800));
        assert_eq!(r.results[0], ("create-ktest".to_string(), Ok(())));
        assert_eq!(r.results[1], ("other".to_string(), Err("it broke: badly".to_string())));
        assert_eq!(r.warnings, ["insmod bridge.ko failed"]);
        assert_eq!(r.scenario_rc, Some(0));
        assert_eq!(r.dom0_ms["dom0-init"], 9120);
        assert_eq!(r.dom0_ms["end"], 13000);
        assert_eq!(r.console(1), ["[   0.000100] INFO  rt: booting", "KTEST-RESULT ok heap"]);
        let rep = r.domain_report("ktest");
        assert!(rep.contains("domid 1") && rep.contains("d1v0 some hypervisor note") && rep.contains("KTEST-RESULT ok heap"));
        assert!(!rep.contains("not ours"));
        assert!(r.domain_report("nope").contains("never created"));
    }

    #[test]
    fn stages_and_problems() {
        let lines: Vec<&str> = SAMPLE.lines().collect();
        let found: Vec<Stage> =
            Stage::ALL.iter().copied().filter(|s| lines.iter().any(|l| s.matches(l))).collect();
        assert_eq!(found, Stage::ALL);
        let d = Duration::from_secs(1);
        let all: Vec<_> = Stage::ALL.iter().map(|s| (*s, d)).collect();
        let ok = XenRun::parse(outcome(SAMPLE, GuestExit::Reset), all.clone(), PathBuf::new());
        assert!(ok.clean() && ok.problem().is_none());
        let killed = XenRun::parse(outcome(SAMPLE, GuestExit::TimedOut), all, PathBuf::new());
        assert!(killed.problem().unwrap().contains("did not power"));
        let partial = XenRun::parse(outcome(SAMPLE, GuestExit::TimedOut), vec![(Stage::XenStarted, d)], PathBuf::new());
        let p = partial.problem().unwrap();
        assert!(p.contains("Xen handed over to dom0") && p.contains("last: Xen started"), "{p}");
    }

    #[test]
    fn result_names_survive_spliced_lines() {
        let r = XenRun::parse(
            outcome(
                "[console guest-a] XENTEST-RESULT ok netdd-ping(d1) [ 76.02] INFO  net_dd::xen: ICONNECT-XENLOOP wakeups=6\n\
                 XENTEST-RESULT FAIL b-c: it broke\nXENTEST-RESULT ok plain\n",
                GuestExit::Reset,
            ),
            Vec::new(),
            PathBuf::new(),
        );
        let names: Vec<&str> = r.results.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["netdd-ping", "b-c", "plain"]);
        assert_eq!(r.results[1].1, Err("it broke".to_string()));
    }

    #[test]
    fn domain_lines_only_match_their_domain() {
        assert_eq!(domain_line("(d1) hello", 1), Some("hello"));
        assert_eq!(domain_line("(d11) hello", 1), None);
        assert_eq!(domain_line("[2026-11-24 20:00:00.000] (d3) x", 3), Some("x"));
        assert_eq!(domain_line("echo (d1) inside text", 1), None);
    }

    #[test]
    fn command_line() {
        let b = Boot {
            xen: "/c/xen".into(),
            kernel: "/c/vmlinuz".into(),
            initrd: "/c/initrd.cpio".into(),
            timeout: Duration::from_secs(5),
            echo: false,
            live: None,
        };
        let a = qemu(&b).unwrap().args().join(" ");
        assert!(a.contains("-kernel /c/xen -append console=com1"), "{a}");
        assert!(a.contains("-accel tcg -cpu max -smp 2"), "{a}");
        assert!(a.contains("-initrd /c/vmlinuz console=hvc0 earlyprintk=xen loglevel=4 xentest_timeout=30,/c/initrd.cpio"), "{a}");
        assert!(a.contains("-m 1536M"));
        let bad = Boot { initrd: "/c,d/initrd".into(), ..b };
        assert!(qemu(&bad).is_err());
    }
}
