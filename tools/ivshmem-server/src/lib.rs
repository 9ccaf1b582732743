//! `ivshmem-server`: the host side of one iConnect channel between two QEMU VMs.
//!
//! A channel is one shared-memory region plus doorbell interrupts between the two VMs that hold
//! an `ivshmem-doorbell` PCI device connected to this server. One server instance serves exactly
//! one channel and one region, so a guest never sees another channel's memory; by default it
//! admits at most two peers (a backend and a frontend) and refuses a third.
//!
//! The server speaks QEMU's ivshmem client/server protocol (QEMU `docs/specs/ivshmem-spec.rst`):
//! a one-way stream of 8-byte little-endian signed numbers over a UNIX socket, some carrying one
//! file descriptor (`SCM_RIGHTS`). On connect a client receives the protocol version (0), its
//! peer id, `-1` with the shared-memory fd, then for every other peer that peer's id once per
//! vector with that peer's eventfds (to ring it), then its own id once per vector with its own
//! eventfds (to be rung). The other peers learn about the newcomer the same way; when a peer
//! leaves, the others receive its id without a descriptor. [`protocol`] plans these messages
//! (pure, host-tested), [`server`] runs the socket loop, [`os`] is the thin OS interface
//! (memfd, eventfd, `SCM_RIGHTS`, mmap: the only `unsafe` of the crate), and [`client`] is a
//! client of the protocol used by the tests (it can also act as a host-side peer).
//!
//! A client beyond `max_peers` receives the version [`protocol::REFUSED_VERSION`] and is
//! disconnected: QEMU then fails to start with "server sent version -2, expecting 0".
//!
//! Robustness: clients never send anything in this protocol, so a client that sends a byte is
//! disconnected (protocol violation) like one that closes or whose socket fails; sends never
//! block (a client that does not read is dropped); the region is sealed against resizing, so a
//! peer cannot shrink it under the other one.

pub mod client;
pub mod os;
pub mod protocol;
pub mod server;

use core::fmt;
use std::path::PathBuf;

pub use rustix::io::Errno;

/// The one error type of the crate.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum Error {
    /// A configuration value or command-line argument is not acceptable.
    BadConfig(&'static str),
    /// Another server already listens on the socket path.
    SocketInUse,
    /// A system call failed.
    Os(Errno),
    /// The peer broke the protocol (bad version, bad id, missing descriptor...).
    Protocol(&'static str),
    /// The connection was closed.
    Closed,
    /// The server refused the client: the channel already has its peers.
    Refused,
    /// Nothing arrived in time.
    Timeout,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadConfig(why) => write!(f, "bad configuration: {why}"),
            Error::SocketInUse => f.write_str("another server listens on the socket path"),
            Error::Os(e) => write!(f, "system call failed: {e}"),
            Error::Protocol(why) => write!(f, "protocol violation: {why}"),
            Error::Closed => f.write_str("connection closed"),
            Error::Refused => f.write_str("refused: the channel is full"),
            Error::Timeout => f.write_str("timed out"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Errno> for Error {
    fn from(e: Errno) -> Self {
        Error::Os(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Os(Errno::from_io_error(&e).unwrap_or(Errno::IO))
    }
}

/// Smallest region: one page.
pub const MIN_SIZE: u64 = 4096;
/// Largest region: 1 GiB.
pub const MAX_SIZE: u64 = 1 << 30;
/// Most interrupt vectors per peer (QEMU's device accepts more; nothing here needs more).
pub const MAX_VECTORS: u16 = 64;
/// Most peers a channel can be configured for.
pub const MAX_PEERS: u16 = 256;

/// What one server instance (one channel) serves.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Config {
    /// The UNIX socket QEMU's `-chardev socket,path=...` connects to.
    pub socket: PathBuf,
    /// Size of the shared region in bytes: a power of two in `MIN_SIZE..=MAX_SIZE` (it becomes
    /// the PCI BAR2 size).
    pub size: u64,
    /// Interrupt vectors (eventfds) per peer; match QEMU's `vectors=` of the device.
    pub vectors: u16,
    /// Peers admitted at once (2: a backend and a frontend).
    pub max_peers: u16,
    /// Log connects/disconnects/refusals to stderr.
    pub verbose: bool,
}

impl Config {
    /// The defaults: 4 MiB, 2 vectors, 2 peers, verbose.
    pub fn new(socket: impl Into<PathBuf>) -> Config {
        Config {
            socket: socket.into(),
            size: 4 << 20,
            vectors: 2,
            max_peers: 2,
            verbose: true,
        }
    }

    /// Checks every value against its allowed range.
    pub fn validate(&self) -> Result<(), Error> {
        if !self.size.is_power_of_two() || !(MIN_SIZE..=MAX_SIZE).contains(&self.size) {
            return Err(Error::BadConfig(
                "size must be a power of two between 4 KiB and 1 GiB",
            ));
        }
        if !(1..=MAX_VECTORS).contains(&self.vectors) {
            return Err(Error::BadConfig("vectors must be 1..=64"));
        }
        if !(1..=MAX_PEERS).contains(&self.max_peers) {
            return Err(Error::BadConfig("max-peers must be 1..=256"));
        }
        if self.socket.as_os_str().is_empty() {
            return Err(Error::BadConfig("socket path is empty"));
        }
        Ok(())
    }

    /// Parses the command line (without the program name): `--socket PATH` (required),
    /// `--size SIZE` (bytes, or with a `K`/`M`/`G` suffix), `--vectors N`, `--max-peers N`,
    /// `--quiet`. Validates the result.
    pub fn from_args<I, S>(args: I) -> Result<Config, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut cfg = Config::new("");
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let arg = arg.as_ref();
            let (key, inline) = match arg.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (arg, None),
            };
            let mut value = || -> Result<String, Error> {
                match &inline {
                    Some(v) => Ok(v.clone()),
                    None => it
                        .next()
                        .map(|v| v.as_ref().to_string())
                        .ok_or(Error::BadConfig("option needs a value")),
                }
            };
            match key {
                "--socket" | "-S" => cfg.socket = PathBuf::from(value()?),
                "--size" | "-l" => {
                    cfg.size = parse_size(&value()?).ok_or(Error::BadConfig("bad --size"))?
                }
                "--vectors" | "-n" => {
                    cfg.vectors = value()?
                        .parse()
                        .map_err(|_| Error::BadConfig("bad --vectors"))?
                }
                "--max-peers" => {
                    cfg.max_peers = value()?
                        .parse()
                        .map_err(|_| Error::BadConfig("bad --max-peers"))?
                }
                "--quiet" | "-q" => cfg.verbose = false,
                _ => return Err(Error::BadConfig("unknown argument (see --help)")),
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Usage text of the binary.
pub const USAGE: &str =
    "usage: ivshmem-server --socket PATH [--size SIZE] [--vectors N] [--max-peers N] [--quiet]
  Serves one ivshmem-doorbell channel: one shared region (memfd, sealed against resizing) and
  N eventfds per peer, over QEMU's ivshmem server protocol on the UNIX socket PATH.
  --size SIZE     region size, a power of two, 4K..1G (suffix K/M/G), default 4M
  --vectors N     interrupt vectors per peer (QEMU device vectors=N), default 2
  --max-peers N   peers admitted at once; more are refused (version -2, then closed), default 2
  --quiet         do not log connects and disconnects
QEMU: -chardev socket,path=PATH,id=ivs -device ivshmem-doorbell,chardev=ivs,vectors=N
Prints `ivshmem-server: listening on PATH ...` on stdout once clients can connect.";

/// Parses `4096`, `64K`, `4M`, `1G` (binary units) into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = num.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("4m"), Some(4 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
        assert_eq!(parse_size("17179869184G"), None);
    }

    #[test]
    fn config_validation() {
        let ok = Config::new("/tmp/x.sock");
        assert_eq!(ok.validate(), Ok(()));
        for size in [0, 3, 2048, 3 << 20, 2 << 30] {
            let c = Config { size, ..ok.clone() };
            assert!(c.validate().is_err(), "size {size} accepted");
        }
        for size in [4096, 1 << 20, 16 << 20, 1 << 30] {
            let c = Config { size, ..ok.clone() };
            assert_eq!(c.validate(), Ok(()), "size {size} refused");
        }
        assert!(
            Config {
                vectors: 0,
                ..ok.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            Config {
                vectors: 65,
                ..ok.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            Config {
                max_peers: 0,
                ..ok.clone()
            }
            .validate()
            .is_err()
        );
        assert!(Config::new("").validate().is_err());
    }

    #[test]
    fn args_parse() {
        let c = Config::from_args([
            "--socket",
            "/tmp/s",
            "--size=16M",
            "--vectors",
            "4",
            "--max-peers",
            "3",
            "-q",
        ])
        .unwrap();
        assert_eq!(
            c,
            Config {
                socket: "/tmp/s".into(),
                size: 16 << 20,
                vectors: 4,
                max_peers: 3,
                verbose: false
            }
        );
        assert_eq!(Config::from_args(["-S", "/x"]).unwrap(), Config::new("/x"));
        assert!(Config::from_args(["--socket"]).is_err());
        assert!(
            Config::from_args(["--size", "4M"]).is_err(),
            "socket is required"
        );
        assert!(Config::from_args(["--socket", "/x", "--size", "3M"]).is_err());
        assert!(Config::from_args(["--socket", "/x", "--bogus"]).is_err());
        assert!(Config::from_args(["--socket", "/x", "--vectors", "x"]).is_err());
    }
}
