//! The server over real UNIX sockets, memfds and eventfds, driven by protocol clients.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use ivshmem_server::client::{Client, Event};
use ivshmem_server::server::{Server, Stopper};
use ivshmem_server::{Config, Error};

const T: Duration = Duration::from_secs(5);
const SHORT: Duration = Duration::from_millis(100);

/// A server running in a thread on a fresh socket; stopped (and checked to have ended cleanly)
/// on drop.
struct Running {
    path: PathBuf,
    stopper: Stopper,
    thread: Option<JoinHandle<Result<(), Error>>>,
}

impl Running {
    fn start(name: &str, f: impl FnOnce(&mut Config)) -> Running {
        let dir = std::env::temp_dir().join(format!("ivshmem-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.sock"));
        let mut cfg = Config::new(&path);
        cfg.size = 1 << 20;
        cfg.verbose = false;
        f(&mut cfg);
        let mut server = Server::bind(cfg).unwrap();
        let stopper = server.stopper().unwrap();
        let thread = std::thread::spawn(move || server.run());
        Running {
            path,
            stopper,
            thread: Some(thread),
        }
    }

    fn connect(&self, vectors: u16) -> Result<Client, Error> {
        Client::connect(&self.path, vectors, T)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stopper.stop().unwrap();
        let r = self
            .thread
            .take()
            .unwrap()
            .join()
            .expect("server thread panicked");
        if !std::thread::panicking() {
            assert_eq!(r, Ok(()), "server loop ended with an error");
            assert!(!self.path.exists(), "socket file left behind");
        }
    }
}

#[test]
fn handshake_gives_version_id_region_and_vectors() {
    let s = Running::start("handshake", |c| c.size = 2 << 20);
    let a = s.connect(2).unwrap();
    assert_eq!(a.id(), 0);
    assert_eq!(a.shm_size().unwrap(), 2 << 20);
    assert_eq!(a.vectors(), 2);
    assert!(a.peers().is_empty());
    let b = s.connect(2).unwrap();
    assert_eq!(b.id(), 1);
    // b learnt about a during its handshake, with both of a's vectors.
    assert_eq!(b.peers(), vec![(0, 2)]);
}

#[test]
fn socket_is_private_to_our_user() {
    use std::os::unix::fs::PermissionsExt;
    let s = Running::start("mode", |_| {});
    let mode = std::fs::metadata(&s.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn region_is_shared_between_peers() {
    let s = Running::start("shared", |_| {});
    let a = s.connect(2).unwrap();
    let b = s.connect(2).unwrap();
    let (ma, mb) = (a.map().unwrap(), b.map().unwrap());
    assert_eq!(ma.len(), 1 << 20);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    ma.write(0x8_0000, &pattern);
    let mut got = vec![0u8; 4096];
    mb.read(0x8_0000, &mut got);
    assert_eq!(got, pattern);
    mb.write((1 << 20) - 8, b"b-wrote!");
    let mut tail = [0u8; 8];
    ma.read((1 << 20) - 8, &mut tail);
    assert_eq!(&tail, b"b-wrote!");
    // The region is sealed: a client cannot shrink it under the other.
    assert!(rustix::fs::ftruncate(a.shm(), 4096).is_err());
}

#[test]
fn doorbells_reach_the_right_peer_and_vector() {
    let s = Running::start("doorbell", |c| c.vectors = 3);
    let mut a = s.connect(3).unwrap();
    let b = s.connect(3).unwrap();
    // a hears of b after its handshake: three vector eventfds.
    a.wait_peer(1, 3, T).unwrap();
    assert_eq!(a.peers(), vec![(1, 3)]);
    for v in 0..3 {
        a.ring(1, v).unwrap();
        assert_eq!(b.wait_interrupt(v, T).unwrap(), 1, "b vector {v}");
        for other in (0..3).filter(|&o| o != v) {
            assert_eq!(b.pending(other).unwrap(), 0, "b vector {other} rang too");
        }
        assert_eq!(a.pending(v).unwrap(), 0, "a rang itself");
    }
    b.ring(0, 2).unwrap();
    b.ring(0, 2).unwrap();
    assert_eq!(a.wait_interrupt(2, T).unwrap(), 2);
    assert_eq!(a.wait_interrupt(0, SHORT).unwrap(), 0);
}

#[test]
fn third_peer_is_refused_and_a_freed_slot_is_reused() {
    let s = Running::start("full", |_| {});
    let mut a = s.connect(2).unwrap();
    let b = s.connect(2).unwrap();
    a.wait_peer(1, 2, T).unwrap();
    // The channel joins exactly two peers: the third is refused (a version nobody speaks).
    assert_eq!(s.connect(2).unwrap_err(), Error::Refused);
    // The refusal disturbed nobody.
    assert!(!a.closed_within(SHORT).unwrap());
    // b leaves: a is told (its id, no descriptor), and a newcomer gets id 1 again.
    drop(b);
    assert_eq!(a.next_event(T).unwrap(), Event::PeerGone(1));
    assert!(a.peers().is_empty());
    let c = s.connect(2).unwrap();
    assert_eq!(c.id(), 1);
    assert_eq!(c.peers(), vec![(0, 2)]);
    a.wait_peer(1, 2, T).unwrap();
    a.ring(1, 1).unwrap();
    assert_eq!(c.wait_interrupt(1, T).unwrap(), 1);
}

#[test]
fn peer_sending_garbage_is_dropped_and_others_keep_working() {
    let s = Running::start("garbage", |_| {});
    let mut a = s.connect(2).unwrap();
    let mut b = s.connect(2).unwrap();
    a.wait_peer(1, 2, T).unwrap();
    b.connection()
        .write_all(b"\xde\xad\xbe\xef garbage")
        .unwrap();
    assert!(
        b.closed_within(T).unwrap(),
        "server kept a peer that sent data"
    );
    assert_eq!(a.next_event(T).unwrap(), Event::PeerGone(1));
    // The server still serves: a newcomer joins and can ring a.
    let mut c = s.connect(2).unwrap();
    assert_eq!(c.id(), 1);
    c.wait_peer(0, 2, T).unwrap();
    c.ring(0, 0).unwrap();
    assert_eq!(a.wait_interrupt(0, T).unwrap(), 1);
}

#[test]
fn clients_vanishing_mid_handshake_do_not_hurt_the_server() {
    let s = Running::start("vanish", |_| {});
    for _ in 0..20 {
        // Connect and close before reading anything; some with garbage first.
        let mut raw = UnixStream::connect(&s.path).unwrap();
        let _ = raw.write_all(b"x");
        drop(raw);
        drop(UnixStream::connect(&s.path).unwrap());
    }
    let a = s.connect(2).unwrap();
    let b = s.connect(2).unwrap();
    assert_eq!((a.id(), b.id()), (0, 1), "vanished clients still hold ids");
}

#[test]
fn live_socket_is_not_stolen_and_stale_socket_is_replaced() {
    let s = Running::start("inuse", |_| {});
    let err = Server::bind(Config::new(&s.path)).err();
    assert_eq!(err, Some(Error::SocketInUse));
    drop(s);
    // A stale socket file (nobody listening) is replaced.
    let dir = std::env::temp_dir().join(format!("ivshmem-test-{}", std::process::id()));
    let stale = dir.join("stale.sock");
    let _ = std::fs::remove_file(&stale);
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let mut cfg = Config::new(&stale);
    cfg.verbose = false;
    let server = Server::bind(cfg).unwrap();
    drop(server);
    assert!(!stale.exists());
    // A regular file at the path is refused, not deleted.
    let file = dir.join("file.sock");
    std::fs::write(&file, b"keep").unwrap();
    assert!(matches!(
        Server::bind(Config::new(&file)),
        Err(Error::BadConfig(_))
    ));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn binary_prints_ready_line_and_serves() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = std::env::temp_dir().join(format!("ivshmem-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bin.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ivshmem-server"))
        .args([
            "--socket",
            path.to_str().unwrap(),
            "--size",
            "64K",
            "--vectors",
            "1",
            "-q",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("ivshmem-server: listening on"), "{line}");
    let a = Client::connect(&path, 1, T).unwrap();
    assert_eq!(a.shm_size().unwrap(), 64 << 10);
    child.kill().unwrap();
    child.wait().unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_ivshmem-server"))
        .args(["--socket", "/tmp/x", "--size", "3M"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(bad.code(), Some(2));
}
