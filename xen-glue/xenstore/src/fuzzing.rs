//! Fuzzing entry points: arbitrary bytes as what a hostile peer writes into a xenstore ring.
//! A panic is a finding. The cargo-fuzz targets (`xen-glue/abi/fuzz`, `xenstore_*`) call these,
//! and `tests/corpus_replay.rs` replays the committed corpus through them.

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use xen_abi::shmem::{HostMem, SharedMem};

use crate::sim::{Connection, Server};
use crate::{Client, Request, Side, TxId, XsRing};

/// A fuzz entry point.
pub type Entry = fn(&[u8]);

/// Every entry point by fuzz-target name.
pub const TARGETS: &[(&str, Entry)] = &[("xenstore_client", client_stream), ("xenstore_daemon", daemon_stream)];

/// The bytes are a daemon's reply stream, delivered in chunks whose sizes come from the input:
/// the client must never panic, and must only report replies to requests it sent.
pub fn client_stream(data: &[u8]) {
    let page = HostMem::new(4096);
    let Ok(mut ring) = XsRing::new(page.clone(), Side::Client) else { return };
    let mut client = Client::new();
    let ids: Vec<u32> = ["/a", "b/c", "/local/domain/1/device"]
        .iter()
        .filter_map(|p| client.send(TxId::NONE, Request::Read(p)).ok())
        .collect();
    let (mut prod, mut rest) = (0u32, data);
    while let Some((&n, tail)) = rest.split_first() {
        let take = (usize::from(n) % 64 + 1).min(tail.len());
        let (chunk, tail) = tail.split_at(take);
        rest = tail;
        let cons = page.load_u32(2056, Ordering::Acquire);
        if prod.wrapping_sub(cons) as usize + chunk.len() > 1024 {
            break;
        }
        for (i, &b) in chunk.iter().enumerate() {
            page.write_bytes(1024 + (prod.wrapping_add(i as u32) % 1024) as usize, &[b]);
        }
        prod = prod.wrapping_add(chunk.len() as u32);
        page.store_u32(2060, prod, Ordering::Release);
        if client.pump(&mut ring).is_err() {
            break;
        }
    }
    for id in &ids {
        let _ = client.take_reply(*id);
    }
    assert!(client.take_reply(u32::MAX).is_none(), "reply to a request never sent");
    while client.take_watch_event().is_some() {}
}

/// The bytes are a domain's request stream into the in-memory daemon: it must never panic, and a
/// broken stream must only cost that domain its connection.
pub fn daemon_stream(data: &[u8]) {
    let hostile = HostMem::new(4096);
    let honest = HostMem::new(4096);
    let mut server: Server<HostMem> = Server::new();
    let (Ok(h), Ok(o)) = (XsRing::new(hostile.clone(), Side::Server), XsRing::new(honest.clone(), Side::Server)) else {
        return;
    };
    server.connections.push(Connection::new(6, h));
    server.connections.push(Connection::new(7, o));
    let Ok(mut honest_ring) = XsRing::new(honest, Side::Client) else { return };
    let mut client = Client::new();
    let mut prod = 0u32;
    for chunk in data.chunks(512) {
        let cons = hostile.load_u32(2048, Ordering::Acquire);
        if prod.wrapping_sub(cons) as usize + chunk.len() > 1024 {
            server.run();
            continue;
        }
        for (i, &b) in chunk.iter().enumerate() {
            hostile.write_bytes((prod.wrapping_add(i as u32) % 1024) as usize, &[b]);
        }
        prod = prod.wrapping_add(chunk.len() as u32);
        hostile.store_u32(2052, prod, Ordering::Release);
        server.run();
    }
    // The honest domain is still served.
    let Ok(id) = client.send(TxId::NONE, Request::Write("/honest", b"yes")) else { return };
    for _ in 0..4 {
        let _ = client.pump(&mut honest_ring);
        server.run();
    }
    let _ = client.pump(&mut honest_ring);
    assert_eq!(client.take_reply(id), Some(Ok(b"OK\0".to_vec())), "honest domain starved");
}
