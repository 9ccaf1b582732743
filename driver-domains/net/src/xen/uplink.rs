//! The uplink on Xen: the Xen implementation of [`net_dd::xenuplink`]'s platform (the control
//! plane and the engine are platform-independent and host-tested): ring and buffer pages are
//! pages of our RAM granted to the backend domain in our grant table, the event channel is
//! allocated unbound for it.

use alloc::vec::Vec;

use net_dd::xenuplink::{self, FrontPlatform};
use netfront::Buffers;
use xen_abi::GrantRef;
use xen_abi::shmem::SharedMem;
use xen_domain::{DomainError, Events, Port, Xen};
use xen_domain::{ForeignMem, GrantTableV1};

pub use net_dd::xenuplink::TOKEN;

/// net-dd's own vif towards dom0.
pub type Uplink = xenuplink::Uplink<XenFront>;

/// Buffer pages granted to the backend (allocated on first use, never freed).
pub struct XenBuffers {
    table: &'static GrantTableV1,
    backend: u16,
    pages: Vec<ForeignMem>,
    free: Vec<GrantRef>,
    first_ref: GrantRef,
    next_ref: GrantRef,
}

impl XenBuffers {
    fn page(&self, r: GrantRef) -> Option<&ForeignMem> {
        self.pages.get(r.checked_sub(self.first_ref)? as usize)
    }
}

impl Buffers for XenBuffers {
    fn alloc(&mut self) -> Option<GrantRef> {
        if let Some(r) = self.free.pop() {
            return Some(r);
        }
        if self.next_ref >= self.table.entries() {
            return None;
        }
        let (gfn, mem) = rt::xen::alloc_shared_pages(1)?;
        let r = self.next_ref;
        self.table.grant(r, self.backend, gfn as u32, false);
        self.next_ref += 1;
        self.pages.push(mem);
        Some(r)
    }

    fn free(&mut self, page: GrantRef) {
        self.free.push(page);
    }

    fn write(&mut self, page: GrantRef, offset: usize, src: &[u8]) -> Result<(), netfront::Error> {
        let m = self.page(page).ok_or(netfront::Error::FrameSize)?;
        if offset + src.len() > m.len() {
            return Err(netfront::Error::FrameSize);
        }
        m.write_bytes(offset, src);
        Ok(())
    }

    fn read(&mut self, page: GrantRef, offset: usize, dst: &mut [u8]) -> Result<(), netfront::Error> {
        let m = self.page(page).ok_or(netfront::Error::FrameSize)?;
        if offset + dst.len() > m.len() {
            return Err(netfront::Error::FrameSize);
        }
        m.read_bytes(offset, dst);
        Ok(())
    }
}

/// Why a page or port could not be had.
pub enum FrontError {
    /// A hypercall failed.
    Xen(DomainError),
    /// No free page.
    NoMemory,
}

impl core::fmt::Debug for FrontError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrontError::Xen(e) => e.fmt(f),
            FrontError::NoMemory => f.write_str("no memory"),
        }
    }
}

impl From<DomainError> for FrontError {
    fn from(e: DomainError) -> Self {
        FrontError::Xen(e)
    }
}

/// Our grant table and event channels.
pub struct XenFront {
    xen: Xen,
    events: Events,
}

impl XenFront {
    /// The platform of the Xen this image runs on.
    pub fn new(xen: Xen, events: Events) -> Self {
        Self { xen, events }
    }

    fn table(&self) -> Result<&'static GrantTableV1, FrontError> {
        rt::xen::grant_table(self.xen).map_err(|e| FrontError::Xen(e.into()))
    }
}

impl FrontPlatform for XenFront {
    type Page = ForeignMem;
    type Buffers = XenBuffers;
    type Port = Port;
    type Error = FrontError;

    fn grant_page(&mut self, backend: u16, gref: GrantRef) -> Result<ForeignMem, FrontError> {
        let table = self.table()?;
        let (gfn, mem) = rt::xen::alloc_shared_pages(1).ok_or(FrontError::NoMemory)?;
        table.grant(gref, backend, gfn as u32, false);
        Ok(mem)
    }

    fn buffers(&mut self, backend: u16, first_ref: GrantRef) -> Result<XenBuffers, FrontError> {
        let table = self.table()?;
        Ok(XenBuffers { table, backend, pages: Vec::new(), free: Vec::new(), first_ref, next_ref: first_ref })
    }

    fn alloc_unbound(&mut self, backend: u16) -> Result<(Port, u32), FrontError> {
        let port = self.events.alloc_unbound(backend)?;
        Ok((port, port.0))
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
}
