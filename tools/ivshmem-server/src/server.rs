//! The server loop: accept peers, hand out the region and eventfds as planned by
//! [`crate::protocol`], notice peers leaving, refuse peers beyond the channel's limit.
//!
//! Single-threaded around `poll`: the listening socket, a stop eventfd, and every peer's
//! socket (readable means closed, failed, or sending garbage: each ends that peer).

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use rustix::event::{PollFd, PollFlags};
use rustix::net::RecvFlags;

use crate::protocol::{self, FdRef, Msg};
use crate::{Config, Errno, Error, os};

/// One connected peer.
struct Peer {
    id: u16,
    conn: UnixStream,
    /// Eventfds of its vectors: writing vector `v`'s interrupts this peer on vector `v`.
    vectors: Vec<OwnedFd>,
}

/// What happened to a connecting client.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum Admission {
    /// Admitted with this id.
    Admitted(u16),
    /// Refused: the channel already has `max_peers` peers.
    Full,
    /// Failed during the handshake (it went away, or eventfds could not be made).
    Failed,
}

/// One channel: its region, its socket, its peers.
pub struct Server {
    cfg: Config,
    listener: UnixListener,
    /// (device, inode) of the socket file we created, so we only ever remove our own.
    socket_id: (u64, u64),
    shm: OwnedFd,
    stop: OwnedFd,
    peers: Vec<Peer>,
    refused: u64,
}

/// Stops a running [`Server::run`] from another thread.
#[derive(Debug)]
pub struct Stopper(OwnedFd);

impl Stopper {
    /// Makes `run` return.
    pub fn stop(&self) -> Result<(), Error> {
        os::notify(self.0.as_fd())
    }
}

/// Removes a stale socket file (nobody listening), refuses a live one or a non-socket.
fn clear_socket_path(path: &Path) -> Result<(), Error> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
        Ok(m) if !m.file_type().is_socket() => {
            Err(Error::BadConfig("socket path exists and is not a socket"))
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => Err(Error::SocketInUse),
            Err(_) => Ok(std::fs::remove_file(path)?),
        },
    }
}

impl Server {
    /// Creates the region and listens on the configured socket (a stale socket file is
    /// replaced; a live one is [`Error::SocketInUse`]).
    pub fn bind(cfg: Config) -> Result<Server, Error> {
        cfg.validate()?;
        clear_socket_path(&cfg.socket)?;
        let name = format!(
            "ivshmem:{}",
            cfg.socket
                .file_name()
                .map_or("".into(), |n| n.to_string_lossy())
        );
        let shm = os::create_shm(&name, cfg.size)?;
        let listener = UnixListener::bind(&cfg.socket)?;
        // Whoever connects gets the region: only our user may (QEMU runs as the same user).
        std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let m = std::fs::symlink_metadata(&cfg.socket)?;
        let stop = os::create_eventfd()?;
        Ok(Server {
            socket_id: (m.dev(), m.ino()),
            cfg,
            listener,
            shm,
            stop,
            peers: Vec::new(),
            refused: 0,
        })
    }

    /// The configuration served.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The shared region (for a host-side observer).
    pub fn shm(&self) -> BorrowedFd<'_> {
        self.shm.as_fd()
    }

    /// Ids of the connected peers.
    pub fn peer_ids(&self) -> Vec<u16> {
        self.peers.iter().map(|p| p.id).collect()
    }

    /// Clients refused so far because the channel was full.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// A handle that makes [`Server::run`] return.
    pub fn stopper(&self) -> Result<Stopper, Error> {
        Ok(Stopper(self.stop.try_clone()?))
    }

    fn log(&self, msg: std::fmt::Arguments<'_>) {
        if self.cfg.verbose {
            eprintln!("ivshmem-server[{}]: {msg}", self.cfg.socket.display());
        }
    }

    /// Serves until the [`Stopper`] fires. Only a failing `poll` on our own descriptors ends
    /// it with an error; anything a client does ends that client only.
    pub fn run(&mut self) -> Result<(), Error> {
        let mut buf = [0u8; 64];
        loop {
            let (stop, accept, ready) = {
                let mut fds = Vec::with_capacity(2 + self.peers.len());
                fds.push(PollFd::new(&self.stop, PollFlags::IN));
                fds.push(PollFd::new(&self.listener, PollFlags::IN));
                for p in &self.peers {
                    fds.push(PollFd::new(&p.conn, PollFlags::IN));
                }
                match rustix::event::poll(&mut fds, None) {
                    Ok(_) => {}
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
                let ready = |f: &PollFd<'_>| !f.revents().is_empty();
                let peers: Vec<bool> = fds[2..].iter().map(ready).collect();
                (ready(&fds[0]), ready(&fds[1]), peers)
            };
            if stop {
                let _ = os::drain(self.stop.as_fd());
                return Ok(());
            }
            // Peers first: a leaving peer frees its slot for a client waiting to be accepted.
            let mut gone = Vec::new();
            for (p, r) in self.peers.iter().zip(ready) {
                if !r {
                    continue;
                }
                match rustix::net::recv(&p.conn, &mut buf, RecvFlags::DONTWAIT) {
                    Ok((0, _)) => gone.push((p.id, "closed the connection")),
                    Ok(_) => {
                        gone.push((p.id, "sent data (clients never send): protocol violation"))
                    }
                    Err(Errno::AGAIN | Errno::INTR) => {}
                    Err(_) => gone.push((p.id, "socket error")),
                }
            }
            for (id, why) in gone {
                self.log(format_args!("peer {id} {why}; disconnecting it"));
                self.remove(id);
            }
            if accept {
                loop {
                    match self.listener.accept() {
                        Ok((conn, _)) => {
                            self.admit(conn);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            // ECONNABORTED, EMFILE...: this client is lost, the server is not.
                            self.log(format_args!("accept failed: {e}"));
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Handshake with a freshly accepted client.
    pub fn admit(&mut self, conn: UnixStream) -> Admission {
        if self.peers.len() >= usize::from(self.cfg.max_peers) {
            self.refused += 1;
            self.log(format_args!(
                "refusing a client: the channel already has {} peers (max {})",
                self.peers.len(),
                self.cfg.max_peers
            ));
            // Best effort: the client may be gone already.
            let _ = conn.set_nonblocking(true);
            let _ = os::send_msg(conn.as_fd(), protocol::REFUSED_VERSION, None);
            return Admission::Full;
        }
        let used = self.peer_ids();
        let Some(id) = protocol::pick_id(&used) else {
            return Admission::Full;
        };
        let vectors: Result<Vec<OwnedFd>, Error> = (0..self.cfg.vectors)
            .map(|_| os::create_eventfd())
            .collect();
        let vectors = match vectors {
            Ok(v) => v,
            Err(e) => {
                self.log(format_args!("cannot create eventfds for a client: {e}"));
                return Admission::Failed;
            }
        };
        if conn.set_nonblocking(true).is_err() {
            return Admission::Failed;
        }
        self.peers.push(Peer { id, conn, vectors });
        let plan = protocol::connect_plan(id, &used, self.cfg.vectors);
        let dead = self.deliver(&plan);
        let admitted = !dead.contains(&id);
        self.bury(dead);
        if admitted {
            self.log(format_args!(
                "peer {id} connected ({} vectors); peers now {:?}",
                self.cfg.vectors,
                self.peer_ids()
            ));
            Admission::Admitted(id)
        } else {
            Admission::Failed
        }
    }

    /// Sends `plan`; returns the peers a send failed for (each at most once; later messages
    /// to a failed peer are skipped).
    fn deliver(&self, plan: &[Msg]) -> Vec<u16> {
        let mut dead = Vec::new();
        for m in plan {
            if dead.contains(&m.to) {
                continue;
            }
            let Some(to) = self.peers.iter().find(|p| p.id == m.to) else {
                continue;
            };
            let fd = match m.fd {
                FdRef::None => None,
                FdRef::Shm => Some(self.shm.as_fd()),
                FdRef::Vector { peer, vector } => self
                    .peers
                    .iter()
                    .find(|p| p.id == peer)
                    .and_then(|p| p.vectors.get(usize::from(vector)))
                    .map(|f| f.as_fd()),
            };
            if m.fd != FdRef::None && fd.is_none() {
                // The owner is gone already: skip (the recipient hears of that separately).
                continue;
            }
            if os::send_msg(to.conn.as_fd(), m.value, fd).is_err() {
                dead.push(m.to);
            }
        }
        dead
    }

    /// Removes peers (and those that fail while hearing about it) until none is left to remove.
    fn bury(&mut self, dead: Vec<u16>) {
        let mut queue: VecDeque<u16> = dead.into();
        while let Some(id) = queue.pop_front() {
            let Some(i) = self.peers.iter().position(|p| p.id == id) else {
                continue;
            };
            self.peers.remove(i);
            self.log(format_args!(
                "peer {id} removed; peers now {:?}",
                self.peer_ids()
            ));
            let plan = protocol::disconnect_plan(id, &self.peer_ids());
            queue.extend(self.deliver(&plan));
        }
    }

    /// Disconnects peer `id` and tells the others.
    pub fn remove(&mut self, id: u16) {
        self.bury(vec![id]);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Remove the socket file only if it is still the one we created.
        if let Ok(m) = std::fs::symlink_metadata(&self.cfg.socket)
            && (m.dev(), m.ino()) == self.socket_id
        {
            let _ = std::fs::remove_file(&self.cfg.socket);
        }
    }
}
