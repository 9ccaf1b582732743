//! Throw-away network namespaces with a tap device for the network tests and the demo.
//!
//! [`Netns::with_tap`] creates `icx-<pid>` containing `tap0` (host side 10.0.2.2/24, up); the
//! guest (net-dd, 10.0.2.15) sits behind the tap. Dropping the guard kills whatever still runs in
//! the namespace (by PID) and deletes it — also on error or panic. Namespaces left by an xtask that
//! was killed outright (its PID is gone) are removed the next time.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::util;

pub const TAP: &str = "tap0";
pub const HOST_CIDR: &str = "10.0.2.2/24";
pub const GUEST_IP: &str = "10.0.2.15";
pub const PREFIX: &str = "icx-";

pub struct Netns {
    name: String,
}

fn ip(args: &[&str]) -> Result<String> {
    util::output(Command::new("ip").args(args))
}

/// Namespace names from `ip netns list` output (`name (id: 0)` or `name`).
pub fn parse_netns_list(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// PID encoded in one of our namespace names (`icx-<pid>`).
pub fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.parse().ok()
}

fn kill_pids_in(name: &str) {
    if let Ok(out) = ip(&["netns", "pids", name]) {
        for pid in out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: kill(2) with a PID listed as living in our own namespace; no memory involved.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn delete(name: &str) -> Result<()> {
    kill_pids_in(name);
    ip(&["netns", "del", name]).map(|_| ())
}

/// Remove `icx-<pid>` namespaces whose creator no longer exists.
fn remove_stale() {
    let Ok(list) = ip(&["netns", "list"]) else { return };
    for name in parse_netns_list(&list) {
        if let Some(pid) = owner_pid(&name)
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            println!("netns: removing stale namespace {name}");
            let _ = delete(&name);
        }
    }
}

impl Netns {
    /// Create `icx-<pid>` with `tap0` (10.0.2.2/24, up) and loopback up.
    pub fn with_tap() -> Result<Netns> {
        remove_stale();
        let name = format!("{PREFIX}{}", std::process::id());
        let list = ip(&["netns", "list"]).unwrap_or_default();
        if parse_netns_list(&list).contains(&name) {
            delete(&name)?;
        }
        ip(&["netns", "add", &name]).context("creating a network namespace (needs root)")?;
        // From here on the guard deletes the namespace whatever happens.
        let ns = Netns { name };
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "tuntap", "add", "dev", TAP, "mode", "tap"])?;
        ip(&["-n", n, "addr", "add", HOST_CIDR, "dev", TAP])?;
        ip(&["-n", n, "link", "set", TAP, "up"])?;
        println!("netns: {n} with {TAP} {HOST_CIDR} (guest {GUEST_IP})");
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Another tap device in this namespace with its own host address (`cidr`), up.
    pub fn add_tap(&self, tap: &str, cidr: &str) -> Result<()> {
        let n = self.name.as_str();
        ip(&["-n", n, "tuntap", "add", "dev", tap, "mode", "tap"])?;
        ip(&["-n", n, "addr", "add", cidr, "dev", tap])?;
        ip(&["-n", n, "link", "set", tap, "up"])?;
        println!("netns: {n}: {tap} {cidr}");
        Ok(())
    }

    /// `ip netns exec <ns> <program>` (ip execs the program, so the child's PID is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match delete(&self.name) {
            Ok(()) => println!("netns: deleted {}", self.name),
            Err(e) => eprintln!("netns: could not delete {}: {e:#}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_parsing() {
        let t = "icx-123 (id: 0)\nother\nicx-9\n";
        assert_eq!(parse_netns_list(t), ["icx-123", "other", "icx-9"]);
        assert_eq!(owner_pid("icx-123"), Some(123));
        assert_eq!(owner_pid("other"), None);
        assert_eq!(owner_pid("icx-abc"), None);
    }

    /// Real namespace (root only): tap0 gets the host address, and the guard deletes the
    /// namespace when the code using it panics.
    #[test]
    fn guard_deletes_namespace_even_on_panic() {
        if !util::is_root() || !util::have_program("ip") || !Path::new("/dev/net/tun").exists() {
            eprintln!("skipping: needs root, ip and /dev/net/tun");
            return;
        }
        let name = format!("{PREFIX}{}", std::process::id());
        let r = std::panic::catch_unwind(|| {
            let ns = Netns::with_tap().unwrap();
            assert_eq!(ns.name(), name);
            let addr = ip(&["-n", ns.name(), "addr", "show", "dev", TAP]).unwrap();
            assert!(addr.contains("10.0.2.2/24"), "{addr}");
            panic!("deliberate panic while the namespace exists");
        });
        assert!(r.is_err());
        let list = ip(&["netns", "list"]).unwrap();
        assert!(!parse_netns_list(&list).contains(&name), "{name} left behind: {list}");
    }
}
