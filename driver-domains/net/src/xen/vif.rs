//! The vifs of this driver domain on Xen: the Xen implementation of the control plane's traits
//! ([`net_dd::vifctl`], platform-independent and host-tested) — xenstore through the domain's
//! [`Store`], ring pages mapped into the grant hole (`rt::xen::map_grant`), buffers reached by
//! grant copies ([`XenGrants`]), event channels by hypercall — and the switch's non-guest ends
//! ([`XenWire`]).

use alloc::string::String;
use alloc::vec::Vec;

use net_dd::switch::Wire;
use net_dd::vifctl::{self, StoreAccess, StoreError, VifPlatform};
use xen_abi::GrantRef;
use xen_domain::{DomainError, Events, MappedGrant, Port, Store, Xen};

use super::grants::XenGrants;

/// All vifs of this driver domain, attached as guest ports of net-dd's switch.
pub type Backend = vifctl::Backend<XenPlatform>;

/// A [`DomainError`] as the control plane's store error.
pub struct XsError(pub DomainError);

impl core::fmt::Debug for XsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.fmt(f)
    }
}

impl StoreError for XsError {
    fn is_denied(&self) -> bool {
        self.0.is_denied()
    }
}

/// The domain's xenstore session as the control plane's [`StoreAccess`].
pub struct XenStore<'a>(pub &'a mut Store);

impl StoreAccess for XenStore<'_> {
    type Error = XsError;

    fn read(&mut self, path: &str) -> Result<Option<String>, XsError> {
        self.0.read_opt(path).map_err(XsError)
    }

    fn directory(&mut self, path: &str) -> Result<Option<Vec<String>>, XsError> {
        match self.0.directory(path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_no_entry() => Ok(None),
            Err(e) => Err(XsError(e)),
        }
    }

    fn write(&mut self, path: &str, value: &str) -> Result<(), XsError> {
        self.0.write(path, value).map_err(XsError)
    }

    fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.0.rm(path).map_err(XsError)
    }

    fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.0.watch(path, token).map_err(XsError)
    }

    fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.0.unwatch(path, token).map_err(XsError)
    }
}

/// The hypervisor side of the vifs: grant maps and copies, event channels.
pub struct XenPlatform {
    xen: Xen,
    events: Events,
}

impl XenPlatform {
    /// The platform of the Xen this image runs on.
    pub fn new(xen: Xen, events: Events) -> Self {
        Self { xen, events }
    }
}

impl VifPlatform for XenPlatform {
    type Ring = MappedGrant;
    type Grants = XenGrants;
    type Port = Port;
    type Error = DomainError;

    fn map_ring(&mut self, domid: u16, gref: GrantRef) -> Result<MappedGrant, DomainError> {
        Ok(rt::xen::map_grant(self.xen, domid, gref)?)
    }

    fn grants(&mut self, domid: u16) -> XenGrants {
        XenGrants::new(self.xen, domid)
    }

    fn bind(&mut self, domid: u16, remote_port: u32) -> Result<Port, DomainError> {
        self.events.bind_interdomain(domid, remote_port)
    }

    fn close(&mut self, port: Port) {
        let _ = self.events.close(port);
    }

    fn notify(&mut self, port: Port) {
        let _ = self.events.notify(port);
    }

    fn take_event(&mut self, port: Port) -> bool {
        self.events.take(port)
    }

    fn mapped_rings(&self) -> usize {
        rt::xen::mapped_grants()
    }
}

/// The switch's non-guest ends on Xen: the uplink (net-dd's own netfront, if it has a vif;
/// else frames for it are dropped and counted) and the domain's own stack.
pub struct XenWire<'a> {
    /// The stack's device.
    pub stack: &'a mut net_dd::stackdev::QueueDevice,
    /// The uplink.
    pub uplink: Option<&'a mut super::uplink::Uplink>,
}

impl Wire for XenWire<'_> {
    fn uplink_ready(&mut self) -> bool {
        // Without an uplink, frames for it are dropped (never a stall).
        self.uplink.as_ref().is_none_or(|u| u.ready(net_dd::stackdev::MAX_FRAME))
    }
    fn uplink_send(&mut self, frame: &[u8]) -> bool {
        self.uplink.as_mut().is_some_and(|u| u.send(frame))
    }
    fn stack_deliver(&mut self, frame: &[u8]) {
        self.stack.deliver(frame);
    }
}
