//! The Xen-tier scenarios. A scenario names the images and xl configs it needs (configs live in
//! `images/xen/`), the shell body of `/scenario.sh` (run in dom0 with `images/xen/xentest-lib.sh`
//! sourced) and the checks that turn the parsed run into named test results.

use anyhow::{Result, bail, ensure};

use super::runner::XenRun;
use crate::qemu::GuestExit;
use crate::suite;

/// One named assertion of a scenario.
pub struct Check {
    pub name: String,
    pub result: Result<String>,
}

pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    /// Images (see `cargo xtask build`) copied to `/images/<name>.elf` in dom0.
    pub images: &'static [&'static str],
    /// xl configs from `images/xen/`, copied to `/etc/xentest/`.
    pub configs: &'static [&'static str],
    /// Body of `/scenario.sh`.
    pub script: &'static str,
    pub checks: fn(&XenRun) -> Vec<Check>,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "boot",
        about: "Xen + dom0 boot; `xl info` reports HVM support; dom0 is listed by xl",
        images: &[],
        configs: &[],
        script: "xt_info\nxl list | sed 's/^/[xl list] /'\nif xl list Domain-0 >/dev/null 2>&1; then xt_result ok dom0-listed; else xt_result FAIL dom0-listed 'xl list does not show Domain-0'; fi\n",
        checks: checks_boot,
    },
    Scenario {
        name: "ktest",
        about: "rt's in-target tests (ktest) as a PVH domU: all pass, the domain powers off",
        images: &["ktest"],
        configs: &["ktest.cfg"],
        script: "xt_info\nif xt_create ktest /etc/xentest/ktest.cfg; then\n    xt_wait_end ktest 90\n    xt_console_log ktest\n    xt_destroy ktest\nfi\n",
        checks: checks_ktest,
    },
];

pub fn find(name: &str) -> Result<&'static Scenario> {
    match SCENARIOS.iter().find(|s| s.name == name) {
        Some(s) => Ok(s),
        None => {
            let names: Vec<_> = SCENARIOS.iter().map(|s| s.name).collect();
            bail!("unknown Xen scenario `{name}` (known: {})", names.join(", "))
        }
    }
}

fn check(name: &str, f: impl FnOnce() -> Result<String>) -> Check {
    Check { name: name.to_string(), result: f() }
}

/// `xl info`'s virt_caps lists `hvm` (Xen sees SVM/VMX in the nested CPU).
pub fn check_virt_caps(run: &XenRun) -> Result<String> {
    let Some(caps) = run.info.get("virt_caps") else { bail!("no `virt_caps` in `xl info` output") };
    ensure!(caps.split_whitespace().any(|c| c == "hvm"), "virt_caps is `{caps}`, without hvm");
    Ok(format!("virt_caps: {caps}"))
}

fn checks_boot(run: &XenRun) -> Vec<Check> {
    vec![
        check("xen: xl info virt_caps has hvm", || check_virt_caps(run)),
        check("xen: dom0 listed by xl", || match run.results.iter().find(|r| r.0 == "dom0-listed") {
            Some((_, Ok(()))) => Ok("Domain-0 present".into()),
            Some((_, Err(why))) => bail!("{why}"),
            None => bail!("the scenario printed no dom0-listed result"),
        }),
    ]
}

/// ktest under Xen: created, its console shows every in-target test passing (checked exactly like
/// the QEMU tier does), and it powered off (rt's success exit on Xen) rather than crashed.
pub fn check_ktest_domain(run: &XenRun) -> Result<String> {
    let report = || run.domain_report("ktest");
    let Some(d) = run.domains.get("ktest") else { bail!("{}", report()) };
    let Some(end) = &d.end else { bail!("ktest never ended\n{}", report()) };
    // rt on Xen: SCHEDOP_shutdown poweroff on success, crash on failure.
    let exit = match end.how.as_str() {
        "poweroff" => GuestExit::Success,
        "crash" => GuestExit::Failure,
        "running" => GuestExit::TimedOut,
        _ => GuestExit::Other(-1),
    };
    let con = run.console(d.domid);
    match suite::check_ktest(&con, exit) {
        Ok(n) => Ok(format!(
            "{n} in-target tests passed in domain {} (PVH), powered off; xl create {} ms",
            d.domid, d.create_ms
        )),
        Err(e) => bail!("{e:#} (domain ended: {}, state {})\n{}", end.how, end.state, report()),
    }
}

fn checks_ktest(run: &XenRun) -> Vec<Check> {
    vec![
        check("xen: xl info virt_caps has hvm", || check_virt_caps(run)),
        check("xen: ktest as a PVH domU", || check_ktest_domain(run)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::project_root;

    #[test]
    fn scenario_table_is_consistent() {
        let mut names: Vec<_> = SCENARIOS.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len());
        for s in SCENARIOS {
            for i in s.images {
                assert!(crate::images::find(i).is_ok(), "{}: unknown image {i}", s.name);
            }
            for c in s.configs {
                assert!(project_root().join("images/xen").join(c).is_file(), "{}: no images/xen/{c}", s.name);
                assert!(s.script.contains(&format!("/etc/xentest/{c}")), "{}: config {c} unused", s.name);
            }
        }
    }

    /// Every PVH/HVM xl config must keep the guest's TSC accesses from trapping (QEMU reports a
    /// nested RDTSCP as RDTSC and Xen crashes the domain).
    #[test]
    fn every_pvh_or_hvm_config_has_native_tsc() {
        let dir = project_root().join("images/xen");
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "cfg") {
                let text = std::fs::read_to_string(&p).unwrap();
                if super::super::config_type(&text).is_some_and(|t| t == "pvh" || t == "hvm") {
                    assert!(super::super::has_native_tsc(&text), "{} lacks tsc_mode = \"native\"", p.display());
                }
            }
        }
    }
}
