//! A remote volume: `blkback::remote::NbdVolume` (retry across reconnects, replay log of
//! acknowledged-but-unflushed writes) over a smoltcp TCP socket. This file only moves bytes
//! between the socket and the sans-IO NBD client and (re)opens the connection: when the TCP
//! connection drops (server killed, reset) the client is told (`connection_lost`: its
//! requests in flight are retried by the volume on the next session), and a new connection is
//! tried every [`RETRY_US`].

use blkback::remote::{NbdVolume, RemoteConfig};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::{IpAddress, Ipv4Address};

/// Between connection attempts.
pub const RETRY_US: u64 = 200_000;
/// Socket buffers (each direction).
const SOCKET_BUF: usize = 128 << 10;

/// One remote volume and its connection.
pub struct Remote {
    /// The volume's id in the registry.
    pub id: usize,
    /// The volume.
    pub vol: NbdVolume,
    sock: SocketHandle,
    server: (Ipv4Address, u16),
    /// The TCP connection is established and handed to the client.
    up: bool,
    connecting: bool,
    retry_at: u64,
    next_port: u16,
    /// TCP connections made.
    pub connections: u64,
    /// The `ICONNECT-VOLUME` line with the size was printed.
    pub announced: bool,
}

impl Remote {
    /// A volume on `export` at `addr:port`, exposing `sector_size`-byte sectors.
    pub fn new(id: usize, addr: [u8; 4], port: u16, export: &str, sector_size: u32, sockets: &mut SocketSet<'static>) -> Self {
        let sock = tcp::Socket::new(
            tcp::SocketBuffer::new(alloc::vec![0; SOCKET_BUF]),
            tcp::SocketBuffer::new(alloc::vec![0; SOCKET_BUF]),
        );
        let config = RemoteConfig {
            sector_size,
            // The replay log lives in this domain's 16 MiB.
            max_log_bytes: 512 << 10,
            ..RemoteConfig::default()
        };
        Self {
            id,
            vol: NbdVolume::new(nbd::Client::new(nbd::Config::new(export)), config),
            sock: sockets.add(sock),
            server: (Ipv4Address::new(addr[0], addr[1], addr[2], addr[3]), port),
            up: false,
            connecting: false,
            retry_at: 0,
            next_port: 49152 + (id as u16) * 512,
            connections: 0,
            announced: false,
        }
    }

    /// Moves bytes both ways and (re)connects. Returns whether bytes moved.
    pub fn pump(&mut self, iface: &mut Interface, sockets: &mut SocketSet<'static>, now_us: u64) -> bool {
        let s = sockets.get_mut::<tcp::Socket>(self.sock);
        if self.up {
            let lost = s.state() != State::Established;
            if lost || self.vol.needs_connect() {
                if lost {
                    log::warn!("nbd {}:{}: connection lost ({})", self.server.0, self.server.1, s.state());
                    self.vol.client_mut().connection_lost();
                } else {
                    log::warn!("nbd {}:{}: session ended by the client", self.server.0, self.server.1);
                }
                s.abort();
                self.up = false;
                self.retry_at = now_us + RETRY_US;
            }
        }
        if !self.up {
            match s.state() {
                State::Established if self.connecting => {
                    self.connecting = false;
                    self.up = true;
                    self.connections += 1;
                    self.vol.client_mut().connect(now_us);
                    log::info!("nbd {}:{}: connected (connection {})", self.server.0, self.server.1, self.connections);
                }
                State::Closed if self.connecting => {
                    self.connecting = false;
                    self.retry_at = now_us + RETRY_US;
                }
                State::Closed if now_us >= self.retry_at => {
                    self.next_port = if self.next_port >= 65000 { 49152 } else { self.next_port + 1 };
                    match s.connect(iface.context(), (IpAddress::Ipv4(self.server.0), self.server.1), self.next_port) {
                        Ok(()) => self.connecting = true,
                        Err(e) => {
                            log::warn!("nbd: connect: {e}");
                            self.retry_at = now_us + RETRY_US;
                        }
                    }
                }
                _ => {}
            }
            return false;
        }
        let mut moved = false;
        let c = self.vol.client_mut();
        while !c.transmit().is_empty() && s.can_send() {
            match s.send_slice(c.transmit()) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    c.sent(n);
                    moved = true;
                }
            }
        }
        while s.can_recv() {
            let r = s.recv(|buf| (buf.len(), c.receive(now_us, buf)));
            match r {
                Ok(Ok(())) => moved = true,
                Ok(Err(e)) => {
                    log::warn!("nbd: server stream: {e:?}");
                    break;
                }
                Err(_) => break,
            }
        }
        moved
    }

    /// When the connection wants attention next (µs): a retry, or the client's timeout.
    pub fn poll_at(&self) -> Option<u64> {
        if self.up { self.vol.client().poll_at() } else { Some(self.retry_at) }
    }
}
