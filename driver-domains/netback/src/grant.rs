//! The seam to a frontend's buffers: copies by grant reference.
//!
//! A netif frontend names its buffers by `(grant ref, offset, length)` inside one 4 KiB page.
//! The engine never maps them; it asks a [`GrantAccess`] to copy between such a range and a
//! private slice. Implementations:
//! * Xen: `GNTTABOP_copy` against the frontend's domid (`rt::xen::copy_from_grant` /
//!   `copy_to_grant`, which take ordinary slices: Xen writes only where Rust holds `&mut`).
//! * QEMU platform: the "grant" is a page index into the ivshmem data area of the channel,
//!   reached through `xen_abi::shmem::SharedMem`'s copy accessors.
//! * Tests: [`FakeGrants`], a map of grant refs to pages.
//!
//! ## Contract
//! The engine guarantees `offset as usize + len <= 4096` on every call (it validates requests
//! first). Implementations must still check the range and the reference and return
//! [`Error::GrantCopy`] rather than touch anything outside the granted page; a failed copy may
//! have copied part of the data (the engine then discards the packet).

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use xen_abi::{GrantRef, PAGE_SIZE};

use crate::Error;

/// One copy out of a grant in a batch ([`GrantAccess::copy_from_batch`]).
#[derive(Debug)]
pub struct CopyIn<'a> {
    /// Source grant.
    pub gref: GrantRef,
    /// Offset in the granted page (`offset + dst.len() <= 4096`).
    pub offset: u16,
    /// Destination.
    pub dst: &'a mut [u8],
    /// Set by the implementation: whether this copy succeeded.
    pub ok: bool,
}

/// One copy into a grant in a batch ([`GrantAccess::copy_to_batch`]).
#[derive(Debug)]
pub struct CopyOut<'a> {
    /// Destination grant (writable).
    pub gref: GrantRef,
    /// Offset in the granted page (`offset + src.len() <= 4096`).
    pub offset: u16,
    /// Source.
    pub src: &'a [u8],
    /// Set by the implementation: whether this copy succeeded.
    pub ok: bool,
}

/// Copies to and from a frontend's granted pages.
///
/// The batch methods let an implementation turn one packet's copies into one hypercall
/// (`GNTTABOP_copy` takes an array); their defaults run the single copies one by one.
pub trait GrantAccess {
    /// Copies `dst.len()` bytes starting at `offset` of the page granted as `gref` into `dst`.
    fn copy_from(&mut self, gref: GrantRef, offset: u16, dst: &mut [u8]) -> Result<(), Error>;

    /// Copies `src` to `offset` of the page granted as `gref` (which must be writable).
    fn copy_to(&mut self, gref: GrantRef, offset: u16, src: &[u8]) -> Result<(), Error>;

    /// Runs every copy of `ops`, setting each one's `ok`.
    fn copy_from_batch(&mut self, ops: &mut [CopyIn<'_>]) {
        for op in ops {
            op.ok = self.copy_from(op.gref, op.offset, op.dst).is_ok();
        }
    }

    /// Runs every copy of `ops`, setting each one's `ok`.
    fn copy_to_batch(&mut self, ops: &mut [CopyOut<'_>]) {
        for op in ops {
            op.ok = self.copy_to(op.gref, op.offset, op.src).is_ok();
        }
    }
}

impl<G: GrantAccess + ?Sized> GrantAccess for &mut G {
    fn copy_from(&mut self, gref: GrantRef, offset: u16, dst: &mut [u8]) -> Result<(), Error> {
        (**self).copy_from(gref, offset, dst)
    }
    fn copy_to(&mut self, gref: GrantRef, offset: u16, src: &[u8]) -> Result<(), Error> {
        (**self).copy_to(gref, offset, src)
    }
    fn copy_from_batch(&mut self, ops: &mut [CopyIn<'_>]) {
        (**self).copy_from_batch(ops)
    }
    fn copy_to_batch(&mut self, ops: &mut [CopyOut<'_>]) {
        (**self).copy_to_batch(ops)
    }
}

/// One granted page of [`FakeGrants`].
#[derive(Debug, Clone)]
struct Page {
    data: Vec<u8>,
    readonly: bool,
}

/// A frontend's grant table for tests: grant refs mapped to 4 KiB pages, each granted
/// read-only or writable. Every call is checked like a hypervisor would; calls the engine should
/// never make (a range outside the page) are also counted in
/// [`range_violations`](Self::range_violations), so tests can assert they never happen.
#[derive(Debug, Clone, Default)]
pub struct FakeGrants {
    pages: BTreeMap<GrantRef, Page>,
    /// Copies refused because the range crossed the end of the page.
    range_violations: u64,
    /// Copies refused because the ref is not granted or is read-only for a write.
    ref_faults: u64,
    /// Successful copies (each call counts once).
    copies: u64,
    /// Batch calls.
    batches: u64,
}

impl FakeGrants {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Grants a zero-filled page as `gref`, replacing any earlier grant of that ref.
    pub fn grant(&mut self, gref: GrantRef, readonly: bool) {
        self.pages.insert(
            gref,
            Page {
                data: vec![0; PAGE_SIZE],
                readonly,
            },
        );
    }

    /// Revokes `gref`; later copies fail.
    pub fn revoke(&mut self, gref: GrantRef) {
        self.pages.remove(&gref);
    }

    /// Whether `gref` is granted.
    pub fn is_granted(&self, gref: GrantRef) -> bool {
        self.pages.contains_key(&gref)
    }

    /// The frontend's own view of its page (the frontend writes its buffers directly).
    pub fn page(&self, gref: GrantRef) -> Option<&[u8]> {
        self.pages.get(&gref).map(|p| &p.data[..])
    }

    /// The frontend's own mutable view of its page.
    pub fn page_mut(&mut self, gref: GrantRef) -> Option<&mut [u8]> {
        self.pages.get_mut(&gref).map(|p| &mut p.data[..])
    }

    /// Copies refused because the range left the page (the engine must never cause one).
    pub fn range_violations(&self) -> u64 {
        self.range_violations
    }

    /// Copies refused because of an ungranted or read-only ref.
    pub fn ref_faults(&self) -> u64 {
        self.ref_faults
    }

    /// Successful copies.
    pub fn copies(&self) -> u64 {
        self.copies
    }

    /// Batch calls (each would be one `GNTTABOP_copy` hypercall on Xen).
    pub fn batches(&self) -> u64 {
        self.batches
    }

    fn check(&mut self, offset: u16, len: usize) -> Result<usize, Error> {
        let start = offset as usize;
        if start.checked_add(len).is_none_or(|end| end > PAGE_SIZE) {
            self.range_violations += 1;
            return Err(Error::GrantCopy);
        }
        Ok(start)
    }
}

impl GrantAccess for FakeGrants {
    fn copy_from(&mut self, gref: GrantRef, offset: u16, dst: &mut [u8]) -> Result<(), Error> {
        let start = self.check(offset, dst.len())?;
        let Some(p) = self.pages.get(&gref) else {
            self.ref_faults += 1;
            return Err(Error::GrantCopy);
        };
        dst.copy_from_slice(&p.data[start..start + dst.len()]);
        self.copies += 1;
        Ok(())
    }

    fn copy_from_batch(&mut self, ops: &mut [CopyIn<'_>]) {
        self.batches += 1;
        for op in ops {
            op.ok = self.copy_from(op.gref, op.offset, op.dst).is_ok();
        }
    }

    fn copy_to_batch(&mut self, ops: &mut [CopyOut<'_>]) {
        self.batches += 1;
        for op in ops {
            op.ok = self.copy_to(op.gref, op.offset, op.src).is_ok();
        }
    }

    fn copy_to(&mut self, gref: GrantRef, offset: u16, src: &[u8]) -> Result<(), Error> {
        let start = self.check(offset, src.len())?;
        match self.pages.get_mut(&gref) {
            Some(p) if !p.readonly => {
                p.data[start..start + src.len()].copy_from_slice(src);
                self.copies += 1;
                Ok(())
            }
            _ => {
                self.ref_faults += 1;
                Err(Error::GrantCopy)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_checks_refs_ranges_and_permissions() {
        let mut g = FakeGrants::new();
        g.grant(10, true);
        g.grant(11, false);
        g.page_mut(10).unwrap()[4090..].copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        let mut b = [0u8; 6];
        g.copy_from(10, 4090, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4, 5, 6]);
        assert_eq!(g.copy_from(10, 4091, &mut b), Err(Error::GrantCopy));
        assert_eq!(g.range_violations(), 1);
        assert_eq!(g.copy_from(12, 0, &mut b), Err(Error::GrantCopy));
        assert_eq!(g.copy_to(10, 0, &b), Err(Error::GrantCopy), "read-only");
        assert_eq!(g.ref_faults(), 2);
        g.copy_to(11, 100, &b).unwrap();
        assert_eq!(&g.page(11).unwrap()[100..106], &b);
        g.revoke(11);
        assert_eq!(g.copy_to(11, 100, &b), Err(Error::GrantCopy));
        assert_eq!(g.copies(), 2);
    }
}
