//! # xen-domain — Xen services for iConnect images, without `unsafe`
//!
//! Built on `rt::xen` (which maps shared info, installs the event-channel callback and hands out
//! the ring pages as `ForeignMem`) and on the pure protocol crates:
//!
//! * [`Store`]: a xenstore session over the domain's ring page: requests wait for their reply on
//!   the event loop (`rt::event::wait_until`) with a deadline, watches queue events;
//! * [`console`]: the PV console ring as an `rt` console sink, so `xl console` and xenconsoled's
//!   logs see what the image prints;
//! * [`Events`]: event-channel operations by port.
//!
//! Only builds for the bare-metal target (it needs `rt`'s target API).
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod console;
mod store;

pub use store::Store;
pub use xen_abi::shmem::SharedMem;
pub use xen_hypercall::{ForeignMem, GrantTableV1, MappedGrant, Port, Xen};

/// Errors of the Xen glue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainError {
    /// Not running on Xen.
    NotXen,
    /// A hypercall failed with this `-errno`.
    Hypercall(i64),
    /// The xenstore daemon answered with an error, or the session broke.
    Store(xenstore::XsError),
    /// No answer before the deadline.
    Timeout,
}

impl DomainError {
    /// Whether xenstore answered `ENOENT` (no such node).
    pub fn is_no_entry(&self) -> bool {
        matches!(self, DomainError::Store(xenstore::XsError::NoEntry))
    }

    /// Whether xenstore answered `EACCES` (e.g. a node of a domain being destroyed).
    pub fn is_denied(&self) -> bool {
        matches!(self, DomainError::Store(xenstore::XsError::Denied))
    }
}

impl From<xen_hypercall::XenError> for DomainError {
    fn from(e: xen_hypercall::XenError) -> Self {
        DomainError::Hypercall(e.0)
    }
}

impl From<xenstore::XsError> for DomainError {
    fn from(e: xenstore::XsError) -> Self {
        DomainError::Store(e)
    }
}

/// Event-channel operations of this domain.
#[derive(Clone, Copy, Debug)]
pub struct Events {
    xen: Xen,
}

impl Events {
    /// The events of the Xen this image runs on.
    pub fn new() -> Result<Events, DomainError> {
        let xen = rt::xen().ok_or(DomainError::NotXen)?;
        if !rt::xen::events_ready() {
            return Err(DomainError::NotXen);
        }
        Ok(Events { xen })
    }

    /// A port domain `remote` may bind to.
    pub fn alloc_unbound(&self, remote: u16) -> Result<Port, DomainError> {
        let port = self.xen.evtchn_alloc_unbound(remote)?;
        self.xen.evtchn_unmask(port)?;
        Ok(port)
    }

    /// Binds to `remote_port` of domain `remote`.
    pub fn bind_interdomain(&self, remote: u16, remote_port: u32) -> Result<Port, DomainError> {
        let port = self.xen.evtchn_bind_interdomain(remote, remote_port)?;
        self.xen.evtchn_unmask(port)?;
        Ok(port)
    }

    /// Notifies the other end.
    pub fn notify(&self, port: Port) -> Result<(), DomainError> {
        Ok(self.xen.evtchn_send(port)?)
    }

    /// Closes a port.
    pub fn close(&self, port: Port) -> Result<(), DomainError> {
        Ok(self.xen.evtchn_close(port)?)
    }

    /// Whether `port` fired since the last call.
    pub fn take(&self, port: Port) -> bool {
        rt::xen::take_event(port)
    }
}
