//! The client against the in-memory daemon over a real shared page (two `XsRing` ends on one
//! `HostMem`), including hostile daemons.

use proptest::prelude::*;
use xen_abi::shmem::{HostMem, SharedMem};
use xenstore::client::{Progress, reply};
use xenstore::sim::{Connection, Server};
use xenstore::{Client, Request, Side, TxId, XsError, XsRing};

struct World {
    server: Server<HostMem>,
    client: Client,
    ring: XsRing<HostMem>,
    page: HostMem,
}

impl World {
    fn new(domid: u16) -> World {
        let page = HostMem::new(4096);
        let mut server = Server::new();
        server.connections.push(Connection::new(domid, XsRing::new(page.clone(), Side::Server).unwrap()));
        World { server, client: Client::new(), ring: XsRing::new(page.clone(), Side::Client).unwrap(), page }
    }

    /// Sends one request and runs both ends until its reply is in.
    fn call(&mut self, tx: TxId, req: Request<'_>) -> Result<Vec<u8>, XsError> {
        let id = self.client.send(tx, req)?;
        for _ in 0..1000 {
            self.client.pump(&mut self.ring)?;
            self.server.run();
            self.client.pump(&mut self.ring)?;
            if let Some(r) = self.client.take_reply(id) {
                return r;
            }
        }
        panic!("no reply to {id}");
    }
}

#[test]
fn read_write_directory_rm() {
    let mut w = World::new(3);
    assert_eq!(w.call(TxId::NONE, Request::Read("/a")), Err(XsError::NoEntry));
    w.call(TxId::NONE, Request::Write("/a/b/c", b"hello")).unwrap();
    assert_eq!(w.call(TxId::NONE, Request::Read("/a/b/c")).unwrap(), b"hello");
    assert_eq!(w.call(TxId::NONE, Request::Read("/a/b")).unwrap(), b"", "parents are created empty");
    w.call(TxId::NONE, Request::Write("/a/b/d", b"")).unwrap();
    let dir = reply::list(&w.call(TxId::NONE, Request::Directory("/a/b")).unwrap()).unwrap();
    assert_eq!(dir, ["c", "d"]);
    // Relative paths resolve under the domain's home.
    w.call(TxId::NONE, Request::Write("device/vif/0/state", b"1")).unwrap();
    assert_eq!(w.server.store.get("/local/domain/3/device/vif/0/state"), Some(&b"1"[..]));
    let home = reply::text(&w.call(TxId::NONE, Request::GetDomainPath(3)).unwrap()).unwrap();
    assert_eq!(home.trim_end_matches('\0'), "/local/domain/3");
    w.call(TxId::NONE, Request::Rm("/a")).unwrap();
    assert_eq!(w.call(TxId::NONE, Request::Read("/a/b/c")), Err(XsError::NoEntry));
    assert_eq!(w.client.send(TxId::NONE, Request::Read("/bad//path")), Err(XsError::BadPath));
}

#[test]
fn a_reply_to_a_forgotten_request_is_dropped() {
    // A caller that timed out forgets its request; the daemon's late reply must not be kept,
    // nor be taken for the reply to a later request.
    let mut w = World::new(1);
    w.call(TxId::NONE, Request::Write("/a", b"first")).unwrap();
    let late = w.client.send(TxId::NONE, Request::Read("/a")).unwrap();
    w.client.forget(late);
    assert!(!w.client.is_pending(late));
    w.call(TxId::NONE, Request::Write("/a", b"second")).unwrap();
    assert_eq!(w.client.take_reply(late), None);
    assert_eq!(w.call(TxId::NONE, Request::Read("/a")).unwrap(), b"second");
}

#[test]
fn watches_fire_on_registration_change_and_removal() {
    let mut w = World::new(1);
    w.call(TxId::NONE, Request::Watch("/backend/vif", "be")).unwrap();
    let first = w.client.take_watch_event().unwrap();
    assert_eq!((first.path.as_str(), first.token.as_str()), ("/backend/vif", "be"));
    // The toolstack (dom0) writes under the watched path.
    w.server.set("/backend/vif/5/0/frontend", b"/local/domain/5/device/vif/0");
    w.client.pump(&mut w.ring).unwrap();
    let ev = w.client.take_watch_event().unwrap();
    assert_eq!(ev.path, "/backend/vif/5/0/frontend");
    // Writes outside do not fire.
    w.server.set("/backend/vbd/5/0", b"x");
    w.client.pump(&mut w.ring).unwrap();
    assert_eq!(w.client.take_watch_event(), None);
    // Removing an ancestor fires the watch, named by the watched path (as xenstored does).
    w.call(TxId::NONE, Request::Rm("/backend")).unwrap();
    let ev = w.client.take_watch_event().unwrap();
    assert_eq!((ev.path.as_str(), ev.token.as_str()), ("/backend/vif", "be"));
    w.call(TxId::NONE, Request::Unwatch("/backend/vif", "be")).unwrap();
    assert_eq!(w.call(TxId::NONE, Request::Unwatch("/backend/vif", "be")), Err(XsError::NoEntry));
}

#[test]
fn transactions_commit_abort_and_conflict() {
    let mut w = World::new(2);
    let tx = reply::tx_id(&w.call(TxId::NONE, Request::TransactionStart).unwrap()).unwrap();
    w.call(tx, Request::Write("/t/x", b"1")).unwrap();
    assert_eq!(w.call(TxId::NONE, Request::Read("/t/x")), Err(XsError::NoEntry), "not visible before commit");
    assert_eq!(w.call(tx, Request::Read("/t/x")).unwrap(), b"1");
    w.call(tx, Request::TransactionEnd(true)).unwrap();
    assert_eq!(w.call(TxId::NONE, Request::Read("/t/x")).unwrap(), b"1");

    let tx = reply::tx_id(&w.call(TxId::NONE, Request::TransactionStart).unwrap()).unwrap();
    w.call(tx, Request::Write("/t/y", b"2")).unwrap();
    w.call(tx, Request::TransactionEnd(false)).unwrap();
    assert_eq!(w.call(TxId::NONE, Request::Read("/t/y")), Err(XsError::NoEntry));

    let tx = reply::tx_id(&w.call(TxId::NONE, Request::TransactionStart).unwrap()).unwrap();
    w.call(tx, Request::Write("/t/z", b"3")).unwrap();
    w.call(TxId::NONE, Request::Write("/t/other", b"racing")).unwrap();
    assert_eq!(w.call(tx, Request::TransactionEnd(true)), Err(XsError::Again));
    assert_eq!(w.call(TxId(99), Request::Read("/t/x")), Err(XsError::NoEntry));
}

#[test]
fn large_values_stream_through_the_small_ring() {
    let mut w = World::new(4);
    let value: Vec<u8> = (0..4000).map(|i| b'a' + (i % 26) as u8).collect();
    let ids: Vec<_> = (0..8)
        .map(|i| w.client.send(TxId::NONE, Request::Write(&format!("/big/{i}"), &value)).unwrap())
        .collect();
    for _ in 0..200 {
        w.client.pump(&mut w.ring).unwrap();
        w.server.run();
    }
    w.client.pump(&mut w.ring).unwrap();
    for id in ids {
        assert_eq!(w.client.take_reply(id), Some(Ok(b"OK\0".to_vec())));
    }
    assert_eq!(w.call(TxId::NONE, Request::Read("/big/7")).unwrap(), value);
}

#[test]
fn a_daemon_that_breaks_the_protocol_breaks_only_the_client() {
    let mut w = World::new(1);
    let id = w.client.send(TxId::NONE, Request::Read("/x")).unwrap();
    w.client.pump(&mut w.ring).unwrap();
    // A reply header announcing 5000 payload bytes.
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&2u32.to_le_bytes());
    header[4..8].copy_from_slice(&id.to_le_bytes());
    header[12..16].copy_from_slice(&5000u32.to_le_bytes());
    w.page.write_bytes(1024, &header);
    w.page.store_u32(2060, 16, std::sync::atomic::Ordering::Release);
    assert_eq!(w.client.pump(&mut w.ring), Err(XsError::Protocol));
    assert_eq!(w.client.send(TxId::NONE, Request::Read("/x")), Err(XsError::Protocol));
}

proptest! {
    /// Whatever a hostile daemon writes into the reply area and the indices, the client never
    /// panics and never reports a reply it did not ask for.
    #[test]
    fn hostile_reply_rings_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
        rsp_prod in any::<u32>(),
        rsp_cons in any::<u32>(),
        req_cons in any::<u32>(),
    ) {
        let page = HostMem::new(4096);
        let mut ring = XsRing::new(page.clone(), Side::Client).unwrap();
        let mut client = Client::new();
        let id = client.send(TxId::NONE, Request::Read("/x")).unwrap();
        page.write_bytes(1024, &bytes);
        page.store_u32(2060, rsp_prod, std::sync::atomic::Ordering::Relaxed);
        page.store_u32(2056, rsp_cons, std::sync::atomic::Ordering::Relaxed);
        page.store_u32(2048, req_cons, std::sync::atomic::Ordering::Relaxed);
        for _ in 0..3 {
            let _: Result<Progress, _> = client.pump(&mut ring);
        }
        let _ = client.take_reply(id);
        prop_assert_eq!(client.take_reply(id.wrapping_add(1)), None);
        while client.take_watch_event().is_some() {}
    }

    /// Whatever a hostile domain writes into the request area, the daemon side never panics.
    #[test]
    fn hostile_request_rings_never_panic_the_daemon(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
        req_prod in any::<u32>(),
    ) {
        let page = HostMem::new(4096);
        let mut server: Server<HostMem> = Server::new();
        server.connections.push(Connection::new(7, XsRing::new(page.clone(), Side::Server).unwrap()));
        page.write_bytes(0, &bytes);
        page.store_u32(2052, req_prod, std::sync::atomic::Ordering::Relaxed);
        server.run();
    }
}
