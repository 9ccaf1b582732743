//! The xenstore ring page (`struct xenstore_domain_interface`): two 1 KiB byte rings, requests
//! (client → daemon) at offset 0 and replies/watch events (daemon → client) at 1024, then the
//! free-running `u32` indices `req_cons`, `req_prod`, `rsp_cons`, `rsp_prod` at 2048..2064.
//!
//! Every index the peer can write is checked: a producer more than a ring ahead of its consumer
//! is a [`XsError::Protocol`] error, never an out-of-range access.

use core::sync::atomic::Ordering;

use xen_abi::shmem::SharedMem;

use crate::XsError;

/// `XENSTORE_RING_SIZE`.
pub const RING_SIZE: u32 = 1024;
const REQ: usize = 0;
const RSP: usize = 1024;
const REQ_CONS: usize = 2048;
const REQ_PROD: usize = 2052;
const RSP_CONS: usize = 2056;
const RSP_PROD: usize = 2060;
/// `server_features` offset.
pub const SERVER_FEATURES: usize = 2064;
/// `connection` offset.
pub const CONNECTION: usize = 2068;
/// Bytes of the interface structure.
pub const INTERFACE_LEN: usize = 2072;

/// Which end of the page this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// A domain talking to xenstored: writes requests, reads replies.
    Client,
    /// The daemon (or the in-memory store of the tests): reads requests, writes replies.
    Server,
}

/// One end of a xenstore ring page.
pub struct XsRing<M> {
    mem: M,
    side: Side,
}

struct Area {
    data: usize,
    cons: usize,
    prod: usize,
}

impl<M: SharedMem> XsRing<M> {
    /// Wraps the page; `Err(Protocol)` if it is smaller than the interface structure.
    pub fn new(mem: M, side: Side) -> Result<Self, XsError> {
        if mem.len() < INTERFACE_LEN {
            return Err(XsError::Protocol);
        }
        Ok(XsRing { mem, side })
    }

    /// The shared memory behind this ring.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    fn outgoing(&self) -> Area {
        match self.side {
            Side::Client => Area { data: REQ, cons: REQ_CONS, prod: REQ_PROD },
            Side::Server => Area { data: RSP, cons: RSP_CONS, prod: RSP_PROD },
        }
    }

    fn incoming(&self) -> Area {
        match self.side {
            Side::Client => Area { data: RSP, cons: RSP_CONS, prod: RSP_PROD },
            Side::Server => Area { data: REQ, cons: REQ_CONS, prod: REQ_PROD },
        }
    }

    /// Copies as much of `src` as fits into the outgoing ring; returns the bytes written.
    pub fn write(&mut self, src: &[u8]) -> Result<usize, XsError> {
        let a = self.outgoing();
        let cons = self.mem.load_u32(a.cons, Ordering::Acquire);
        let prod = self.mem.load_u32(a.prod, Ordering::Relaxed);
        let used = prod.wrapping_sub(cons);
        if used > RING_SIZE {
            return Err(XsError::Protocol);
        }
        let n = src.len().min((RING_SIZE - used) as usize);
        let start = (prod % RING_SIZE) as usize;
        let first = n.min(RING_SIZE as usize - start);
        self.mem.write_bytes(a.data + start, &src[..first]);
        self.mem.write_bytes(a.data, &src[first..n]);
        self.mem.store_u32(a.prod, prod.wrapping_add(n as u32), Ordering::Release);
        Ok(n)
    }

    /// Copies up to `dst.len()` available bytes out of the incoming ring; returns the count.
    pub fn read(&mut self, dst: &mut [u8]) -> Result<usize, XsError> {
        let a = self.incoming();
        let prod = self.mem.load_u32(a.prod, Ordering::Acquire);
        let cons = self.mem.load_u32(a.cons, Ordering::Relaxed);
        let avail = prod.wrapping_sub(cons);
        if avail > RING_SIZE {
            return Err(XsError::Protocol);
        }
        let n = dst.len().min(avail as usize);
        let start = (cons % RING_SIZE) as usize;
        let first = n.min(RING_SIZE as usize - start);
        self.mem.read_bytes(a.data + start, &mut dst[..first]);
        self.mem.read_bytes(a.data, &mut dst[first..n]);
        self.mem.store_u32(a.cons, cons.wrapping_add(n as u32), Ordering::Release);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_abi::shmem::HostMem;

    #[test]
    fn bytes_cross_the_wrap_in_order() {
        let page = HostMem::new(4096);
        let mut client = XsRing::new(page.clone(), Side::Client).unwrap();
        let mut server = XsRing::new(page, Side::Server).unwrap();
        let data: alloc::vec::Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut got = alloc::vec::Vec::new();
        let mut sent = 0;
        let mut buf = [0u8; 700];
        while got.len() < data.len() {
            sent += client.write(&data[sent..]).unwrap();
            let n = server.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, data);
    }

    #[test]
    fn full_ring_accepts_nothing_more() {
        let page = HostMem::new(4096);
        let mut client = XsRing::new(page, Side::Client).unwrap();
        assert_eq!(client.write(&[1u8; 2000]).unwrap(), 1024);
        assert_eq!(client.write(&[1u8; 10]).unwrap(), 0);
    }

    #[test]
    fn hostile_indices_are_protocol_errors() {
        let page = HostMem::new(4096);
        let mut client = XsRing::new(page.clone(), Side::Client).unwrap();
        page.store_u32(RSP_PROD, 5000, Ordering::Relaxed);
        assert_eq!(client.read(&mut [0u8; 16]), Err(XsError::Protocol));
        page.store_u32(REQ_CONS, 0xffff_0000, Ordering::Relaxed);
        assert_eq!(client.write(&[0u8; 4]), Err(XsError::Protocol));
        assert!(XsRing::new(HostMem::new(2000), Side::Client).is_err());
    }
}
