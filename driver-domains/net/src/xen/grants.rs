//! The netback engine's [`GrantAccess`] on Xen: copies between a frontend's granted pages and
//! private buffers with `GNTTABOP_copy`, one hypercall per batch (`rt::xen::CopyBatch`). Xen
//! checks every reference and range against the frontend's grant table; each copy's own status is
//! checked, so a bad reference costs only the copies that named it.

use alloc::vec::Vec;

use netback::GrantAccess;
use netback::grant::{CopyIn, CopyOut};
use xen_abi::GrantRef;
use xen_domain::Xen;

/// Grant copies against one frontend domain.
#[derive(Debug, Clone, Copy)]
pub struct XenGrants {
    xen: Xen,
    domid: u16,
}

impl XenGrants {
    /// Copies against domain `domid`'s grants.
    pub fn new(xen: Xen, domid: u16) -> Self {
        Self { xen, domid }
    }
}

impl GrantAccess for XenGrants {
    fn copy_from(&mut self, gref: GrantRef, offset: u16, dst: &mut [u8]) -> Result<(), netback::Error> {
        rt::xen::copy_from_grant(self.xen, self.domid, gref, offset, dst).map_err(|_| netback::Error::GrantCopy)
    }

    fn copy_to(&mut self, gref: GrantRef, offset: u16, src: &[u8]) -> Result<(), netback::Error> {
        rt::xen::copy_to_grant(self.xen, src, self.domid, gref, offset).map_err(|_| netback::Error::GrantCopy)
    }

    fn copy_from_batch(&mut self, ops: &mut [CopyIn<'_>]) {
        let (entries, results) = {
            let mut batch = rt::xen::CopyBatch::new();
            let entries: Vec<Option<usize>> =
                ops.iter_mut().map(|op| batch.copy_in(self.domid, op.gref, op.offset, &mut *op.dst).ok()).collect();
            (entries, batch.submit(self.xen))
        };
        for (op, entry) in ops.iter_mut().zip(entries) {
            op.ok = matches!((&results, entry), (Ok(r), Some(i)) if r.get(i).is_some_and(|s| s.is_ok()));
        }
    }

    fn copy_to_batch(&mut self, ops: &mut [CopyOut<'_>]) {
        let (entries, results) = {
            let mut batch = rt::xen::CopyBatch::new();
            let entries: Vec<Option<usize>> =
                ops.iter().map(|op| batch.copy_out(op.src, self.domid, op.gref, op.offset).ok()).collect();
            (entries, batch.submit(self.xen))
        };
        for (op, entry) in ops.iter_mut().zip(entries) {
            op.ok = matches!((&results, entry), (Ok(r), Some(i)) if r.get(i).is_some_and(|s| s.is_ok()));
        }
    }
}
