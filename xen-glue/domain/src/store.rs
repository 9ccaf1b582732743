//! A xenstore session over the domain's ring page.

use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use rt::time::{self, Instant};
use xen_hypercall::{ForeignMem, Port, Xen};
use xenstore::client::reply;
use xenstore::{Client, Request, Side, TxId, WatchEvent, XsRing};

use crate::DomainError;

/// How long a request may take before [`DomainError::Timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// After a request timed out, requests fail at once for this long (doubling with every further
/// timeout, up to [`MAX_FAIL_FAST`]) before the daemon is tried again: a domain whose main loop
/// also moves data must not stall for a whole timeout per request while xenstored is gone.
pub const FAIL_FAST: Duration = Duration::from_secs(5);
/// The longest fail-fast window.
pub const MAX_FAIL_FAST: Duration = Duration::from_secs(60);

/// This domain's xenstore connection.
pub struct Store {
    xen: Xen,
    ring: XsRing<ForeignMem>,
    port: Port,
    client: Client,
    /// Per-request deadline.
    pub timeout: Duration,
    /// While the daemon is unresponsive: until when requests fail at once, and the window to
    /// use after the next timeout.
    fail_fast: Option<(Instant, Duration)>,
    /// Requests that timed out, and that failed fast, so far.
    timeouts: u64,
    failed_fast: u64,
}

impl Store {
    /// Connects to the page and event channel Xen gave this domain.
    pub fn open() -> Result<Store, DomainError> {
        let xen = rt::xen().ok_or(DomainError::NotXen)?;
        let (mem, port) = rt::xen::store_page(xen)?;
        let ring = XsRing::new(mem, Side::Client)?;
        xen.evtchn_unmask(port)?;
        Ok(Store {
            xen,
            ring,
            port,
            client: Client::new(),
            timeout: DEFAULT_TIMEOUT,
            fail_fast: None,
            timeouts: 0,
            failed_fast: 0,
        })
    }

    fn pump(&mut self) -> Result<(), DomainError> {
        let progress = self.client.pump(&mut self.ring)?;
        if progress.any() {
            self.xen.evtchn_send(self.port)?;
        }
        Ok(())
    }

    /// Requests that timed out so far, and requests failed at once while the daemon was
    /// unresponsive.
    pub fn timeouts(&self) -> (u64, u64) {
        (self.timeouts, self.failed_fast)
    }

    /// Sends `req` in `tx` and waits for the reply (at most [`Store::timeout`]; while the daemon
    /// is unresponsive, see [`FAIL_FAST`], it fails at once with [`DomainError::Timeout`]).
    pub fn call(&mut self, tx: TxId, req: Request<'_>) -> Result<Vec<u8>, DomainError> {
        if let Some((until, _)) = self.fail_fast
            && time::now() < until
        {
            self.failed_fast += 1;
            return Err(DomainError::Timeout);
        }
        let id = self.client.send(tx, req)?;
        let deadline = time::now() + self.timeout;
        loop {
            self.pump()?;
            if let Some(reply) = self.client.take_reply(id) {
                if self.fail_fast.take().is_some() {
                    log::warn!("xenstore answers again ({} requests timed out, {} failed fast)", self.timeouts, self.failed_fast);
                }
                return Ok(reply?);
            }
            if time::now() >= deadline {
                self.client.forget(id);
                self.timeouts += 1;
                let window = self.fail_fast.map_or(FAIL_FAST, |(_, w)| (w * 2).min(MAX_FAIL_FAST));
                self.fail_fast = Some((time::now() + window, window));
                log::warn!(
                    "xenstore: no answer in {} ms; requests fail at once for {} s",
                    self.timeout.as_millis(),
                    window.as_secs()
                );
                return Err(DomainError::Timeout);
            }
            // The daemon's notification wakes us; the 10 ms cap covers a lost one.
            rt::event::wait_until(Some(deadline.min(time::now() + Duration::from_millis(10))));
            rt::xen::take_event(self.port);
        }
    }

    /// A node's value as text.
    pub fn read(&mut self, path: &str) -> Result<String, DomainError> {
        let v = self.call(TxId::NONE, Request::Read(path))?;
        Ok(reply::text(&v)?)
    }

    /// A node's value, or `None` when it does not exist.
    pub fn read_opt(&mut self, path: &str) -> Result<Option<String>, DomainError> {
        match self.read(path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_no_entry() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a node.
    pub fn write(&mut self, path: &str, value: &str) -> Result<(), DomainError> {
        self.call(TxId::NONE, Request::Write(path, value.as_bytes())).map(|_| ())
    }

    /// Removes a node and its children.
    pub fn rm(&mut self, path: &str) -> Result<(), DomainError> {
        self.call(TxId::NONE, Request::Rm(path)).map(|_| ())
    }

    /// Children of a node.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, DomainError> {
        let v = self.call(TxId::NONE, Request::Directory(path))?;
        Ok(reply::list(&v)?)
    }

    /// Registers a watch; events come from [`Store::next_event`].
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), DomainError> {
        self.call(TxId::NONE, Request::Watch(path, token)).map(|_| ())
    }

    /// Removes a watch registered with [`Store::watch`].
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), DomainError> {
        self.call(TxId::NONE, Request::Unwatch(path, token)).map(|_| ())
    }

    /// The next watch event, waiting until `deadline` at most.
    pub fn next_event(&mut self, deadline: Instant) -> Result<Option<WatchEvent>, DomainError> {
        loop {
            self.pump()?;
            if let Some(ev) = self.client.take_watch_event() {
                return Ok(Some(ev));
            }
            if time::now() >= deadline {
                return Ok(None);
            }
            rt::event::wait_until(Some(deadline.min(time::now() + Duration::from_millis(10))));
            rt::xen::take_event(self.port);
        }
    }

    /// The watch event already received, if any (no waiting).
    pub fn poll_event(&mut self) -> Result<Option<WatchEvent>, DomainError> {
        self.pump()?;
        Ok(self.client.take_watch_event())
    }

    /// This domain's id, from the `domid` node of its home directory.
    pub fn domid(&mut self) -> Result<u16, DomainError> {
        self.read("domid")?.trim().parse().map_err(|_| DomainError::Store(xenstore::XsError::Invalid))
    }
}
