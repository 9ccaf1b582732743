//! A non-blocking xenstore client: requests are queued with [`Client::send`], bytes move between
//! the queues and the ring in [`Client::pump`], replies are collected by request id and watch
//! events queued. No clocks, no blocking: the domain's event loop decides when to pump (after an
//! event-channel notification), so the same client runs in host tests against
//! [`crate::sim::Server`].

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use xen_abi::shmem::SharedMem;

use crate::ring::XsRing;
use crate::wire::{self, HEADER_LEN, Header, Message, MsgType};
use crate::XsError;

/// A request id.
pub type ReqId = u32;

/// A transaction id (0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct TxId(pub u32);

impl TxId {
    /// Outside any transaction.
    pub const NONE: TxId = TxId(0);
}

/// What to ask the daemon.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    /// Value of a node.
    Read(&'a str),
    /// Set a node's value, creating it and its parents.
    Write(&'a str, &'a [u8]),
    /// Create a node (no error if it exists).
    Mkdir(&'a str),
    /// Remove a node and its children.
    Rm(&'a str),
    /// Names of a node's children.
    Directory(&'a str),
    /// Register a watch on a path with a token.
    Watch(&'a str, &'a str),
    /// Remove a watch.
    Unwatch(&'a str, &'a str),
    /// Start a transaction (the reply is its id).
    TransactionStart,
    /// End the transaction named by the tx id of the `send`: commit (`true`) or abort.
    TransactionEnd(bool),
    /// `/local/domain/<domid>`.
    GetDomainPath(u16),
    /// Permissions of a node.
    GetPerms(&'a str),
    /// Set permissions (`["b0", "r5"]`: owner 0 with no access for others, read for domain 5).
    SetPerms(&'a str, &'a [&'a str]),
}

/// A watch firing: the path that changed and the token given at registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// The changed path.
    pub path: String,
    /// The registration token.
    pub token: String,
}

/// Bytes moved by one [`Client::pump`]: notify the peer when either is non-zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Request bytes written to the ring.
    pub sent: usize,
    /// Reply bytes taken from the ring (which frees space the daemon may wait for).
    pub received: usize,
}

impl Progress {
    /// Whether anything moved.
    pub fn any(&self) -> bool {
        self.sent != 0 || self.received != 0
    }
}

/// The client state.
#[derive(Default)]
pub struct Client {
    next_id: ReqId,
    out: VecDeque<u8>,
    incoming: Vec<u8>,
    waiting: BTreeMap<ReqId, Option<Result<Vec<u8>, XsError>>>,
    events: VecDeque<WatchEvent>,
    broken: bool,
}

fn push_str(payload: &mut Vec<u8>, s: &str) {
    payload.extend_from_slice(s.as_bytes());
    payload.push(0);
}

impl Client {
    /// A client with nothing queued.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `request` within transaction `tx`; returns the id its reply will carry.
    pub fn send(&mut self, tx: TxId, request: Request<'_>) -> Result<ReqId, XsError> {
        if self.broken {
            return Err(XsError::Protocol);
        }
        let mut payload = Vec::new();
        let ty = match request {
            Request::Read(p) | Request::Mkdir(p) | Request::Rm(p) | Request::Directory(p) | Request::GetPerms(p) => {
                wire::validate_path(p)?;
                push_str(&mut payload, p);
                match request {
                    Request::Read(_) => MsgType::Read,
                    Request::Mkdir(_) => MsgType::Mkdir,
                    Request::Rm(_) => MsgType::Rm,
                    Request::Directory(_) => MsgType::Directory,
                    _ => MsgType::GetPerms,
                }
            }
            Request::Write(p, value) => {
                wire::validate_path(p)?;
                push_str(&mut payload, p);
                payload.extend_from_slice(value);
                MsgType::Write
            }
            Request::Watch(p, token) | Request::Unwatch(p, token) => {
                wire::validate_path(p)?;
                if token.contains('\0') {
                    return Err(XsError::Invalid);
                }
                push_str(&mut payload, p);
                push_str(&mut payload, token);
                if matches!(request, Request::Watch(..)) { MsgType::Watch } else { MsgType::Unwatch }
            }
            Request::TransactionStart => {
                payload.push(0);
                MsgType::TransactionStart
            }
            Request::TransactionEnd(commit) => {
                push_str(&mut payload, if commit { "T" } else { "F" });
                MsgType::TransactionEnd
            }
            Request::GetDomainPath(domid) => {
                push_str(&mut payload, &alloc::format!("{domid}"));
                MsgType::GetDomainPath
            }
            Request::SetPerms(p, perms) => {
                wire::validate_path(p)?;
                push_str(&mut payload, p);
                for perm in perms {
                    let valid = perm.len() >= 2
                        && matches!(perm.as_bytes()[0], b'r' | b'w' | b'b' | b'n')
                        && perm[1..].bytes().all(|b| b.is_ascii_digit());
                    if !valid {
                        return Err(XsError::Invalid);
                    }
                    push_str(&mut payload, perm);
                }
                MsgType::SetPerms
            }
        };
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let bytes = Message { ty, req_id: id, tx_id: tx.0, payload }.encode()?;
        self.out.extend(bytes);
        self.waiting.insert(id, None);
        Ok(id)
    }

    /// Moves queued request bytes into the ring and reply bytes out of it, then parses complete
    /// messages. A malformed message from the daemon breaks the client for good
    /// (`Err(Protocol)`); the domain must then reconnect.
    pub fn pump<M: SharedMem>(&mut self, ring: &mut XsRing<M>) -> Result<Progress, XsError> {
        if self.broken {
            return Err(XsError::Protocol);
        }
        let mut progress = Progress::default();
        let result = self.pump_inner(ring, &mut progress);
        if result.is_err() {
            self.broken = true;
        }
        result.map(|()| progress)
    }

    fn pump_inner<M: SharedMem>(&mut self, ring: &mut XsRing<M>, progress: &mut Progress) -> Result<(), XsError> {
        loop {
            let (front, _) = self.out.as_slices();
            if front.is_empty() {
                break;
            }
            let n = ring.write(front)?;
            if n == 0 {
                break;
            }
            self.out.drain(..n);
            progress.sent += n;
        }
        let mut buf = [0u8; 512];
        loop {
            let n = ring.read(&mut buf)?;
            if n == 0 {
                break;
            }
            progress.received += n;
            self.incoming.extend_from_slice(&buf[..n]);
            self.parse_incoming()?;
        }
        Ok(())
    }

    fn parse_incoming(&mut self) -> Result<(), XsError> {
        while self.incoming.len() >= HEADER_LEN {
            let mut raw = [0u8; HEADER_LEN];
            raw.copy_from_slice(&self.incoming[..HEADER_LEN]);
            let header = Header::parse(&raw)?;
            let total = HEADER_LEN + header.len as usize;
            if self.incoming.len() < total {
                break;
            }
            let payload: Vec<u8> = self.incoming[HEADER_LEN..total].to_vec();
            self.incoming.drain(..total);
            match header.ty {
                MsgType::WatchEvent => {
                    let mut parts = wire::split_strings(&payload);
                    let path = parts.next().ok_or(XsError::Protocol)?;
                    let token = parts.next().ok_or(XsError::Protocol)?;
                    let text = |b: &[u8]| core::str::from_utf8(b).map(String::from).map_err(|_| XsError::Protocol);
                    self.events.push_back(WatchEvent { path: text(path)?, token: text(token)? });
                }
                ty => {
                    // Replies to ids we never sent (or already answered) are dropped.
                    if let Some(slot @ None) = self.waiting.get_mut(&header.req_id) {
                        *slot = Some(if ty == MsgType::Error { Err(wire::parse_error(&payload)) } else { Ok(payload) });
                    }
                }
            }
        }
        Ok(())
    }

    /// The reply to `id` once it arrived (raw payload, or the daemon's error).
    pub fn take_reply(&mut self, id: ReqId) -> Option<Result<Vec<u8>, XsError>> {
        match self.waiting.get(&id) {
            Some(Some(_)) => self.waiting.remove(&id).flatten(),
            _ => None,
        }
    }

    /// Gives up on request `id` (its caller timed out): a reply that still arrives is dropped.
    pub fn forget(&mut self, id: ReqId) {
        self.waiting.remove(&id);
    }

    /// Whether a request is still unanswered.
    pub fn is_pending(&self, id: ReqId) -> bool {
        matches!(self.waiting.get(&id), Some(None))
    }

    /// The next watch event, oldest first.
    pub fn take_watch_event(&mut self) -> Option<WatchEvent> {
        self.events.pop_front()
    }

    /// Whether request bytes are still waiting for ring space.
    pub fn has_unsent(&self) -> bool {
        !self.out.is_empty()
    }
}

/// Decoders for reply payloads.
pub mod reply {
    use super::*;

    /// A value as text.
    pub fn text(payload: &[u8]) -> Result<String, XsError> {
        core::str::from_utf8(payload).map(String::from).map_err(|_| XsError::Invalid)
    }

    /// A directory listing.
    pub fn list(payload: &[u8]) -> Result<Vec<String>, XsError> {
        wire::split_strings(payload).map(text).collect()
    }

    /// A transaction id from `TransactionStart`.
    pub fn tx_id(payload: &[u8]) -> Result<TxId, XsError> {
        let s = wire::split_strings(payload).next().ok_or(XsError::Invalid)?;
        core::str::from_utf8(s).ok().and_then(|s| s.parse().ok()).map(TxId).ok_or(XsError::Invalid)
    }
}
