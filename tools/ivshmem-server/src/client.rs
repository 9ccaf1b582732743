//! A client of the ivshmem protocol, as QEMU's device is one: receives its id, the region and
//! the eventfds, then follows peers joining and leaving. Used by the host tests; it can also
//! serve as a host-side peer of a channel.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::Error;
use crate::os::{self, Mapping};
use crate::protocol::{REFUSED_VERSION, SHM_MARKER, VERSION};

/// A change announced by the server after the handshake.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum Event {
    /// One more vector eventfd of `peer` arrived (`vectors` known for it now).
    PeerVector {
        /// The peer.
        peer: u16,
        /// Vectors of that peer known so far.
        vectors: usize,
    },
    /// `peer` left.
    PeerGone(u16),
}

/// A connected protocol client.
#[derive(Debug)]
pub struct Client {
    conn: UnixStream,
    id: u16,
    shm: OwnedFd,
    own: Vec<OwnedFd>,
    peers: BTreeMap<u16, Vec<OwnedFd>>,
}

impl Client {
    /// Connects and runs the handshake until this client's own `vectors` eventfds arrived
    /// (peers announced on the way are recorded). Fails with [`Error::Refused`] if the channel
    /// is full.
    pub fn connect(path: &Path, vectors: u16, timeout: Duration) -> Result<Client, Error> {
        let deadline = Instant::now() + timeout;
        let conn = UnixStream::connect(path)?;
        let next = || -> Result<(i64, Option<OwnedFd>), Error> {
            let left = deadline.saturating_duration_since(Instant::now());
            if !os::wait_readable(conn.as_fd(), Some(left))? {
                return Err(Error::Timeout);
            }
            os::recv_msg(conn.as_fd())?.ok_or(Error::Closed)
        };
        let (version, _) = next()?;
        if version == REFUSED_VERSION {
            return Err(Error::Refused);
        }
        if version != VERSION {
            return Err(Error::Protocol("unsupported protocol version"));
        }
        let (id, fd) = next()?;
        let id = u16::try_from(id).map_err(|_| Error::Protocol("peer id out of range"))?;
        if fd.is_some() {
            return Err(Error::Protocol("descriptor with the peer id"));
        }
        let (marker, shm) = next()?;
        let shm = match (marker, shm) {
            (SHM_MARKER, Some(fd)) => fd,
            _ => {
                return Err(Error::Protocol(
                    "expected -1 with the shared-memory descriptor",
                ));
            }
        };
        let mut own = Vec::new();
        let mut peers: BTreeMap<u16, Vec<OwnedFd>> = BTreeMap::new();
        while own.len() < usize::from(vectors) {
            let (v, fd) = next()?;
            let peer = u16::try_from(v).map_err(|_| Error::Protocol("peer id out of range"))?;
            match fd {
                Some(fd) if peer == id => own.push(fd),
                Some(fd) => peers.entry(peer).or_default().push(fd),
                None => {
                    peers.remove(&peer);
                }
            }
        }
        Ok(Client {
            conn,
            id,
            shm,
            own,
            peers,
        })
    }

    /// This client's peer id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The shared region's descriptor.
    pub fn shm(&self) -> std::os::fd::BorrowedFd<'_> {
        self.shm.as_fd()
    }

    /// Size of the shared region.
    pub fn shm_size(&self) -> Result<u64, Error> {
        os::file_size(self.shm.as_fd())
    }

    /// Maps the shared region.
    pub fn map(&self) -> Result<Mapping, Error> {
        Mapping::new(self.shm.as_fd())
    }

    /// Number of own vectors.
    pub fn vectors(&self) -> usize {
        self.own.len()
    }

    /// Known peers and how many of their vectors we can ring.
    pub fn peers(&self) -> Vec<(u16, usize)> {
        self.peers.iter().map(|(&p, v)| (p, v.len())).collect()
    }

    /// Waits for the next server message (at most `timeout`) and applies it.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Event, Error> {
        if !os::wait_readable(self.conn.as_fd(), Some(timeout))? {
            return Err(Error::Timeout);
        }
        let (v, fd) = os::recv_msg(self.conn.as_fd())?.ok_or(Error::Closed)?;
        let peer = u16::try_from(v).map_err(|_| Error::Protocol("peer id out of range"))?;
        match fd {
            Some(_) if peer == self.id => Err(Error::Protocol("own vectors after the handshake")),
            Some(fd) => {
                let v = self.peers.entry(peer).or_default();
                v.push(fd);
                Ok(Event::PeerVector {
                    peer,
                    vectors: v.len(),
                })
            }
            None => {
                self.peers.remove(&peer);
                Ok(Event::PeerGone(peer))
            }
        }
    }

    /// Waits until `peer` has at least `vectors` vectors known (processing events meanwhile).
    pub fn wait_peer(&mut self, peer: u16, vectors: usize, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        while self.peers.get(&peer).map_or(0, Vec::len) < vectors {
            self.next_event(deadline.saturating_duration_since(Instant::now()))?;
        }
        Ok(())
    }

    /// Interrupts `peer` on `vector` (what the guest's doorbell write makes QEMU do).
    pub fn ring(&self, peer: u16, vector: u16) -> Result<(), Error> {
        let fd = self
            .peers
            .get(&peer)
            .and_then(|v| v.get(usize::from(vector)))
            .ok_or(Error::Protocol("no such peer vector"))?;
        os::notify(fd.as_fd())
    }

    /// Waits until own `vector` was rung (at most `timeout`); returns how often (0: timeout).
    pub fn wait_interrupt(&self, vector: u16, timeout: Duration) -> Result<u64, Error> {
        let fd = self
            .own
            .get(usize::from(vector))
            .ok_or(Error::Protocol("no such own vector"))?;
        if !os::wait_readable(fd.as_fd(), Some(timeout))? {
            return Ok(0);
        }
        os::drain(fd.as_fd())
    }

    /// How often own `vector` was rung since the last call (never blocks).
    pub fn pending(&self, vector: u16) -> Result<u64, Error> {
        let fd = self
            .own
            .get(usize::from(vector))
            .ok_or(Error::Protocol("no such own vector"))?;
        os::drain(fd.as_fd())
    }

    /// Whether the server closed our connection (waits at most `timeout` for it).
    pub fn closed_within(&mut self, timeout: Duration) -> Result<bool, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_event(deadline.saturating_duration_since(Instant::now())) {
                Ok(_) => continue,
                Err(Error::Closed) => return Ok(true),
                Err(Error::Timeout) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// The raw connection (tests use it to misbehave).
    pub fn connection(&self) -> &UnixStream {
        &self.conn
    }
}
