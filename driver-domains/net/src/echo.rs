//! A TCP echo service on a pool of smoltcp sockets.
//!
//! Every socket of the pool listens on the same port, so while one connection is open (or
//! closing) the next client still finds a listener. Data is echoed only as far as the send
//! buffer has room (back-pressure instead of loss); when the peer closes its side and all its
//! data went back, our side closes too, and a closed socket listens again.

use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

/// Counters of what the service did.
#[derive(Copy, Clone, Debug, Default, Eq, PartialEq)]
pub struct EchoStats {
    /// Connections that reached the established state.
    pub connections: u64,
    /// Bytes echoed back.
    pub bytes: u64,
}

/// The echo service.
pub struct EchoService {
    port: u16,
    handles: Vec<SocketHandle>,
    /// Whether each socket has been counted as connected for its current connection.
    counted: Vec<bool>,
    stats: EchoStats,
}

impl EchoService {
    /// Adds `sockets` TCP sockets with `buf` bytes of receive and send buffer each to `set`,
    /// all listening on `port`.
    pub fn new(set: &mut SocketSet<'_>, port: u16, sockets: usize, buf: usize) -> Self {
        let mut handles = Vec::with_capacity(sockets);
        for _ in 0..sockets {
            let rx = tcp::SocketBuffer::new(vec![0; buf]);
            let tx = tcp::SocketBuffer::new(vec![0; buf]);
            let mut socket = tcp::Socket::new(rx, tx);
            // Echoes are small writes answering the peer: Nagle would hold them back until
            // the peer's (delayed) ACK, adding ~40 ms stalls against Linux clients.
            socket.set_nagle_enabled(false);
            handles.push(set.add(socket));
        }
        let mut svc = Self {
            port,
            counted: vec![false; handles.len()],
            handles,
            stats: EchoStats::default(),
        };
        svc.poll(set);
        svc
    }

    /// What the service did so far.
    pub fn stats(&self) -> EchoStats {
        self.stats
    }

    /// Serves every socket once: re-listen, echo, close. Call after each `Interface::poll`.
    /// Returns whether anything was echoed (so the caller polls the interface again soon).
    pub fn poll(&mut self, set: &mut SocketSet<'_>) -> bool {
        let mut progress = false;
        let mut chunk = [0u8; 1024];
        for (i, &h) in self.handles.iter().enumerate() {
            let s = set.get_mut::<tcp::Socket>(h);
            if !s.is_open() {
                self.counted[i] = false;
                if let Err(e) = s.listen(self.port) {
                    log::warn!("echo: listen on port {} failed: {e}", self.port);
                }
                continue;
            }
            if s.is_active() && !self.counted[i] && s.state() == tcp::State::Established {
                self.counted[i] = true;
                self.stats.connections += 1;
                if let Some(ep) = s.remote_endpoint() {
                    log::debug!("echo: connection from {ep}");
                }
            }
            while s.can_recv() && s.can_send() {
                let room = (s.send_capacity() - s.send_queue()).min(chunk.len());
                let n = match s.recv_slice(&mut chunk[..room]) {
                    Ok(n) if n > 0 => n,
                    _ => break,
                };
                // `n <= room`, so the whole slice fits in the send buffer.
                match s.send_slice(&chunk[..n]) {
                    Ok(sent) => {
                        self.stats.bytes += sent as u64;
                        progress = true;
                    }
                    Err(e) => {
                        log::warn!("echo: send failed: {e}");
                        break;
                    }
                }
            }
            if s.state() == tcp::State::CloseWait && s.recv_queue() == 0 && s.send_queue() == 0 {
                s.close();
            }
        }
        progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::iface::{Config, Interface};
    use smoltcp::phy::{Loopback, Medium};
    use smoltcp::time::Instant;
    use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};

    const SERVER: Ipv4Address = Ipv4Address::new(127, 0, 0, 1);

    struct World {
        dev: Loopback,
        iface: Interface,
        set: SocketSet<'static>,
        echo: EchoService,
        now: Instant,
    }

    impl World {
        fn new(sockets: usize) -> Self {
            let mut dev = Loopback::new(Medium::Ethernet);
            let mut cfg = Config::new(EthernetAddress([0x02, 0, 0, 0, 0, 1]).into());
            cfg.random_seed = 7;
            let now = Instant::from_millis(0);
            let mut iface = Interface::new(cfg, &mut dev, now);
            iface.update_ip_addrs(|a| {
                a.push(IpCidr::new(IpAddress::Ipv4(SERVER), 8)).unwrap();
            });
            let mut set = SocketSet::new(vec![]);
            let echo = EchoService::new(&mut set, 7, sockets, 2048);
            Self {
                dev,
                iface,
                set,
                echo,
                now,
            }
        }

        fn client(&mut self, local_port: u16) -> SocketHandle {
            let rx = tcp::SocketBuffer::new(vec![0; 8192]);
            let tx = tcp::SocketBuffer::new(vec![0; 8192]);
            let h = self.set.add(tcp::Socket::new(rx, tx));
            let cx = self.iface.context();
            self.set
                .get_mut::<tcp::Socket>(h)
                .connect(cx, (SERVER, 7), local_port)
                .unwrap();
            h
        }

        fn step(&mut self) {
            self.iface.poll(self.now, &mut self.dev, &mut self.set);
            self.echo.poll(&mut self.set);
            self.now += smoltcp::time::Duration::from_millis(1);
        }

        fn run(&mut self, steps: usize) {
            for _ in 0..steps {
                self.step();
            }
        }

        fn sock(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
            self.set.get_mut::<tcp::Socket>(h)
        }

        /// Sends `data` from client `h` and collects the echo.
        fn exchange(&mut self, h: SocketHandle, data: &[u8]) -> Vec<u8> {
            let mut sent = 0;
            let mut got = Vec::new();
            for _ in 0..2000 {
                if sent < data.len() && self.sock(h).can_send() {
                    sent += self.sock(h).send_slice(&data[sent..]).unwrap();
                }
                self.step();
                while self.sock(h).can_recv() {
                    let mut b = [0u8; 700];
                    let n = self.sock(h).recv_slice(&mut b).unwrap();
                    got.extend_from_slice(&b[..n]);
                }
                if got.len() >= data.len() {
                    break;
                }
            }
            got
        }
    }

    #[test]
    fn echoes_bytes_larger_than_its_buffers() {
        let mut w = World::new(2);
        for h in w.echo.handles.clone() {
            assert!(!w.sock(h).nagle_enabled(), "no Nagle delay on echoes");
        }
        let c = w.client(50000);
        w.run(5);
        assert_eq!(w.sock(c).state(), tcp::State::Established);
        // 10 KiB through 2 KiB server buffers: needs back-pressure to be lossless.
        let data: Vec<u8> = (0..10_240u32).map(|i| (i * 7 + i / 256) as u8).collect();
        assert_eq!(w.exchange(c, &data), data);
        assert_eq!(w.echo.stats().bytes, data.len() as u64);
        assert_eq!(w.echo.stats().connections, 1);
    }

    #[test]
    fn accepts_repeated_and_concurrent_connections() {
        let mut w = World::new(2);
        // Five sequential connections, each closed by the client.
        for i in 0..5u16 {
            let c = w.client(50100 + i);
            w.run(5);
            let msg = alloc::format!("hello {i}");
            assert_eq!(w.exchange(c, msg.as_bytes()), msg.as_bytes());
            w.sock(c).close();
            w.run(20);
            // Our side closed too (no TIME-WAIT on the server after a client close).
            assert!(matches!(
                w.sock(c).state(),
                tcp::State::TimeWait | tcp::State::Closed
            ));
            w.set.remove(c);
        }
        assert_eq!(w.echo.stats().connections, 5);
        // Two at once on a two-socket pool.
        let a = w.client(50200);
        let b = w.client(50201);
        w.run(5);
        assert_eq!(w.exchange(a, b"first"), b"first");
        assert_eq!(w.exchange(b, b"second"), b"second");
        assert_eq!(w.echo.stats().connections, 7);
        // A third concurrent client is refused while both sockets are busy.
        let c = w.client(50202);
        w.run(5);
        assert_eq!(w.sock(c).state(), tcp::State::Closed);
        // Once one closes, a new client gets in.
        w.sock(a).close();
        w.run(20);
        let d = w.client(50203);
        w.run(5);
        assert_eq!(w.exchange(d, b"third"), b"third");
    }
}
