//! An in-memory xenstore daemon for host tests and simulations: a tree of nodes, watches and
//! transactions, served over the server side of an [`XsRing`]. It follows xenstored's observable
//! behaviour where our domains depend on it (implicit parents on write, an initial watch event on
//! registration, recursive removal, `EAGAIN` for a transaction that raced a commit); it is a fake
//! beside the real daemon, which the Xen tier of the tests uses.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use xen_abi::shmem::SharedMem;

use crate::ring::XsRing;
use crate::wire::{self, HEADER_LEN, Header, Message, MsgType};
use crate::XsError;

#[derive(Clone)]
struct Tx {
    nodes: BTreeMap<String, Vec<u8>>,
    base_generation: u64,
    changed: Vec<String>,
}

/// The store: nodes, watches, open transactions.
pub struct Store {
    nodes: BTreeMap<String, Vec<u8>>,
    watches: Vec<(u16, String, String)>,
    txs: BTreeMap<u32, Tx>,
    next_tx: u32,
    generation: u64,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

fn parent(path: &str) -> Option<&str> {
    match path.rfind('/') {
        Some(0) if path.len() > 1 => Some("/"),
        Some(i) if i > 0 => Some(&path[..i]),
        _ => None,
    }
}

fn is_under(path: &str, ancestor: &str) -> bool {
    path == ancestor
        || (ancestor == "/" && path.starts_with('/'))
        || (path.starts_with(ancestor) && path.as_bytes().get(ancestor.len()) == Some(&b'/'))
}

impl Store {
    /// A store holding only `/`.
    pub fn new() -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert("/".to_string(), Vec::new());
        Store { nodes, watches: Vec::new(), txs: BTreeMap::new(), next_tx: 1, generation: 0 }
    }

    /// Reads a node directly (for test assertions).
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.nodes.get(path).map(Vec::as_slice)
    }

    /// Writes a node directly (as the toolstack would), firing watches; returns the events.
    pub fn set(&mut self, path: &str, value: &[u8]) -> Vec<(u16, Message)> {
        Self::write_node(&mut self.nodes, path, value);
        self.generation += 1;
        self.fire(&[path.to_string()], false)
    }

    fn write_node(nodes: &mut BTreeMap<String, Vec<u8>>, path: &str, value: &[u8]) {
        let mut p = parent(path);
        while let Some(dir) = p {
            nodes.entry(dir.to_string()).or_default();
            p = parent(dir);
        }
        nodes.insert(path.to_string(), value.to_vec());
    }

    fn resolve(domid: u16, path: &str) -> Result<String, XsError> {
        let path = core::str::from_utf8(path.as_bytes()).map_err(|_| XsError::Invalid)?;
        wire::validate_path(path)?;
        Ok(if path.starts_with('/') { path.to_string() } else { format!("/local/domain/{domid}/{path}") })
    }

    fn fire(&self, changed: &[String], removal: bool) -> Vec<(u16, Message)> {
        let mut out = Vec::new();
        for (dom, wpath, token) in &self.watches {
            for c in changed {
                // A change at or below the watched node is reported with the changed path; the
                // removal of an ancestor, as xenstored does, with the watched path itself.
                let reported = if is_under(c, wpath) {
                    c.as_str()
                } else if removal && is_under(wpath, c) {
                    wpath.as_str()
                } else {
                    continue;
                };
                {
                    let mut payload = Vec::new();
                    payload.extend_from_slice(reported.as_bytes());
                    payload.push(0);
                    payload.extend_from_slice(token.as_bytes());
                    payload.push(0);
                    out.push((*dom, Message { ty: MsgType::WatchEvent, req_id: 0, tx_id: 0, payload }));
                }
            }
        }
        out
    }

    /// Handles one request from domain `domid`; returns the messages to deliver: `(domain,
    /// message)`, the reply to `domid` first, then watch events for any domain.
    pub fn handle(&mut self, domid: u16, msg: &Message) -> Vec<(u16, Message)> {
        let reply = |payload: Vec<u8>| Message { ty: msg.ty, req_id: msg.req_id, tx_id: msg.tx_id, payload };
        let error = |e: XsError| {
            let mut payload = wire::error_name(e).as_bytes().to_vec();
            payload.push(0);
            Message { ty: MsgType::Error, req_id: msg.req_id, tx_id: msg.tx_id, payload }
        };
        match self.handle_inner(domid, msg) {
            Ok((payload, events)) => {
                let mut out = Vec::with_capacity(1 + events.len());
                out.push((domid, reply(payload)));
                out.extend(events);
                out
            }
            Err(e) => alloc::vec![(domid, error(e))],
        }
    }

    #[allow(clippy::type_complexity)]
    fn handle_inner(&mut self, domid: u16, msg: &Message) -> Result<(Vec<u8>, Vec<(u16, Message)>), XsError> {
        let ok = b"OK\0".to_vec();
        let mut args = wire::split_strings(&msg.payload);
        let mut arg = || args.next().and_then(|a| core::str::from_utf8(a).ok()).ok_or(XsError::Invalid);
        let tx = msg.tx_id;
        if tx != 0 && !self.txs.contains_key(&tx) && msg.ty != MsgType::TransactionStart {
            return Err(XsError::NoEntry);
        }
        match msg.ty {
            MsgType::Read => {
                let path = Self::resolve(domid, arg()?)?;
                let nodes = if tx != 0 { &self.txs[&tx].nodes } else { &self.nodes };
                nodes.get(&path).cloned().map(|v| (v, Vec::new())).ok_or(XsError::NoEntry)
            }
            MsgType::Directory => {
                let path = Self::resolve(domid, arg()?)?;
                let nodes = if tx != 0 { &self.txs[&tx].nodes } else { &self.nodes };
                if !nodes.contains_key(&path) {
                    return Err(XsError::NoEntry);
                }
                let prefix = if path == "/" { path.clone() } else { format!("{path}/") };
                let mut out = Vec::new();
                for child in nodes.keys().filter(|k| k.starts_with(&prefix) && k.len() > prefix.len()) {
                    let name = &child[prefix.len()..];
                    if !name.contains('/') {
                        out.extend_from_slice(name.as_bytes());
                        out.push(0);
                    }
                }
                Ok((out, Vec::new()))
            }
            MsgType::Write | MsgType::Mkdir => {
                let nul = msg.payload.iter().position(|&b| b == 0).ok_or(XsError::Invalid)?;
                let raw = core::str::from_utf8(&msg.payload[..nul]).map_err(|_| XsError::Invalid)?;
                let path = Self::resolve(domid, raw)?;
                let value = if msg.ty == MsgType::Write { msg.payload[nul + 1..].to_vec() } else { Vec::new() };
                self.change(tx, &path, |nodes| {
                    if msg.ty == MsgType::Write || !nodes.contains_key(&path) {
                        Self::write_node(nodes, &path, &value);
                    }
                    Ok(())
                })?;
                Ok((ok, if tx == 0 { self.fire(&[path], false) } else { Vec::new() }))
            }
            MsgType::Rm => {
                let path = Self::resolve(domid, arg()?)?;
                if path == "/" {
                    return Err(XsError::Invalid);
                }
                self.change(tx, &path, |nodes| {
                    if !nodes.contains_key(&path) {
                        return Err(XsError::NoEntry);
                    }
                    nodes.retain(|k, _| !is_under(k, &path));
                    Ok(())
                })?;
                Ok((ok, if tx == 0 { self.fire(&[path], true) } else { Vec::new() }))
            }
            MsgType::Watch => {
                let path = Self::resolve(domid, arg()?)?;
                let token = arg()?.to_string();
                self.watches.push((domid, path.clone(), token.clone()));
                // xenstored fires every new watch once.
                let mut payload = path.into_bytes();
                payload.push(0);
                payload.extend_from_slice(token.as_bytes());
                payload.push(0);
                Ok((ok, alloc::vec![(domid, Message { ty: MsgType::WatchEvent, req_id: 0, tx_id: 0, payload })]))
            }
            MsgType::Unwatch => {
                let path = Self::resolve(domid, arg()?)?;
                let token = arg()?;
                let before = self.watches.len();
                self.watches.retain(|(d, p, t)| !(*d == domid && *p == path && t == token));
                if self.watches.len() == before { Err(XsError::NoEntry) } else { Ok((ok, Vec::new())) }
            }
            MsgType::TransactionStart => {
                let id = self.next_tx;
                self.next_tx += 1;
                self.txs.insert(id, Tx { nodes: self.nodes.clone(), base_generation: self.generation, changed: Vec::new() });
                let mut payload = format!("{id}").into_bytes();
                payload.push(0);
                Ok((payload, Vec::new()))
            }
            MsgType::TransactionEnd => {
                let commit = match arg()? {
                    "T" => true,
                    "F" => false,
                    _ => return Err(XsError::Invalid),
                };
                let t = self.txs.remove(&tx).ok_or(XsError::NoEntry)?;
                if !commit {
                    return Ok((ok, Vec::new()));
                }
                if t.base_generation != self.generation && !t.changed.is_empty() {
                    return Err(XsError::Again);
                }
                if t.changed.is_empty() {
                    return Ok((ok, Vec::new()));
                }
                self.nodes = t.nodes;
                self.generation += 1;
                Ok((ok, self.fire(&t.changed, true)))
            }
            MsgType::GetDomainPath => {
                let dom: u16 = arg()?.parse().map_err(|_| XsError::Invalid)?;
                let mut payload = format!("/local/domain/{dom}").into_bytes();
                payload.push(0);
                Ok((payload, Vec::new()))
            }
            MsgType::GetPerms => {
                let path = Self::resolve(domid, arg()?)?;
                if !self.nodes.contains_key(&path) {
                    return Err(XsError::NoEntry);
                }
                Ok((b"n0\0".to_vec(), Vec::new()))
            }
            MsgType::SetPerms => {
                let path = Self::resolve(domid, arg()?)?;
                if self.nodes.contains_key(&path) { Ok((ok, Vec::new())) } else { Err(XsError::NoEntry) }
            }
            _ => Err(XsError::Invalid),
        }
    }

    fn change(
        &mut self,
        tx: u32,
        path: &str,
        f: impl FnOnce(&mut BTreeMap<String, Vec<u8>>) -> Result<(), XsError>,
    ) -> Result<(), XsError> {
        if tx == 0 {
            f(&mut self.nodes)?;
            self.generation += 1;
        } else {
            let t = self.txs.get_mut(&tx).ok_or(XsError::NoEntry)?;
            f(&mut t.nodes)?;
            t.changed.push(path.to_string());
        }
        Ok(())
    }
}

/// One domain's connection to the store over a ring page.
pub struct Connection<M> {
    /// The domain at the other end.
    pub domid: u16,
    ring: XsRing<M>,
    incoming: Vec<u8>,
    out: VecDeque<u8>,
}

impl<M: SharedMem> Connection<M> {
    /// Serves `domid` over the server side of `ring`.
    pub fn new(domid: u16, ring: XsRing<M>) -> Self {
        Connection { domid, ring, incoming: Vec::new(), out: VecDeque::new() }
    }

    /// Queues a message for this domain.
    pub fn queue(&mut self, msg: &Message) {
        if let Ok(bytes) = msg.encode() {
            self.out.extend(bytes);
        }
    }

    /// Writes queued replies and events into the ring, as far as there is room.
    pub fn flush(&mut self) -> Result<(), XsError> {
        loop {
            let (front, _) = self.out.as_slices();
            if front.is_empty() {
                break;
            }
            let n = self.ring.write(front)?;
            if n == 0 {
                break;
            }
            self.out.drain(..n);
        }
        Ok(())
    }

    /// Flushes, then returns the complete requests read. A malformed request header is an error:
    /// the stream cannot be resynchronised, so the caller drops the connection.
    pub fn pump(&mut self) -> Result<Vec<Message>, XsError> {
        self.flush()?;
        let mut buf = [0u8; 512];
        let mut msgs = Vec::new();
        loop {
            let n = self.ring.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.incoming.extend_from_slice(&buf[..n]);
        }
        while self.incoming.len() >= HEADER_LEN {
            let mut raw = [0u8; HEADER_LEN];
            raw.copy_from_slice(&self.incoming[..HEADER_LEN]);
            let header = match Header::parse(&raw) {
                Ok(h) => h,
                Err(e) => {
                    self.incoming.clear();
                    return Err(e);
                }
            };
            let total = HEADER_LEN + header.len as usize;
            if self.incoming.len() < total {
                break;
            }
            msgs.push(Message {
                ty: header.ty,
                req_id: header.req_id,
                tx_id: header.tx_id,
                payload: self.incoming[HEADER_LEN..total].to_vec(),
            });
            self.incoming.drain(..total);
        }
        Ok(msgs)
    }
}

/// A store serving several domains, each over its own ring.
pub struct Server<M> {
    /// The store.
    pub store: Store,
    /// One connection per domain.
    pub connections: Vec<Connection<M>>,
}

impl<M: SharedMem> Server<M> {
    /// A server with an empty store and no connections.
    pub fn new() -> Self {
        Server { store: Store::new(), connections: Vec::new() }
    }

    /// Serves every connection until no request is left; returns the requests handled.
    /// A connection that sent garbage is dropped.
    pub fn run(&mut self) -> usize {
        let mut handled = 0;
        loop {
            let mut any = false;
            let mut i = 0;
            while i < self.connections.len() {
                let requests = match self.connections[i].pump() {
                    Ok(r) => r,
                    Err(_) => {
                        self.connections.remove(i);
                        continue;
                    }
                };
                let domid = self.connections[i].domid;
                for req in requests {
                    any = true;
                    handled += 1;
                    for (dom, msg) in self.store.handle(domid, &req) {
                        self.deliver(dom, &msg);
                    }
                }
                i += 1;
            }
            for c in &mut self.connections {
                let _ = c.flush();
            }
            if !any {
                return handled;
            }
        }
    }

    /// Writes a node as the toolstack would and delivers the watch events it fires.
    pub fn set(&mut self, path: &str, value: &[u8]) {
        for (dom, msg) in self.store.set(path, value) {
            self.deliver(dom, &msg);
        }
        for c in &mut self.connections {
            let _ = c.flush();
        }
    }

    fn deliver(&mut self, dom: u16, msg: &Message) {
        if let Some(c) = self.connections.iter_mut().find(|c| c.domid == dom) {
            c.queue(msg);
        }
    }
}

impl<M: SharedMem> Default for Server<M> {
    fn default() -> Self {
        Self::new()
    }
}
