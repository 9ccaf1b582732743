//! Grant tables (`grant_table.h`), version 1: the entries a domain writes to let another domain
//! reach one of its frames, and `GNTTABOP_copy`, by which Xen copies between a granted foreign
//! frame and a local one.

use core::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use crate::{Xen, XenError, check, nr};

/// A grant reference: an index into the granting domain's table.
pub type GrantRef = u32;

/// `GNTTABOP_map_grant_ref`.
pub const OP_MAP_GRANT_REF: u64 = 0;
/// `GNTTABOP_unmap_grant_ref`.
pub const OP_UNMAP_GRANT_REF: u64 = 1;
/// `GNTTABOP_copy`.
pub const OP_COPY: u64 = 5;
/// `GNTMAP_host_map`: map for CPU access (for an auto-translated guest, `host_addr` is a
/// guest-physical address whose frame the mapping replaces).
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// `GNTMAP_readonly`.
pub const GNTMAP_READONLY: u32 = 1 << 2;
/// `GNTTABOP_query_size`.
pub const OP_QUERY_SIZE: u64 = 6;
/// `GNTCOPY_source_gref`: the source is a grant reference (else a local frame).
pub const COPY_SOURCE_GREF: u16 = 1;
/// `GNTCOPY_dest_gref`.
pub const COPY_DEST_GREF: u16 = 2;
/// `GTF_permit_access`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// `GTF_readonly`.
pub const GTF_READONLY: u16 = 1 << 2;
/// `GTF_reading`: the grantee has it mapped or is copying from it.
pub const GTF_READING: u16 = 1 << 3;
/// `GTF_writing`.
pub const GTF_WRITING: u16 = 1 << 4;
/// References below this are reserved (console, xenstore, toolstack).
pub const FIRST_FREE_REF: GrantRef = 8;
/// Entries per 4 KiB frame (8 bytes each).
pub const ENTRIES_PER_FRAME: u32 = 512;

/// One side of a copy: a grant reference of `domid`, or a local frame (`domid` = DOMID_SELF).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyPtr {
    /// `u.ref` or `u.gmfn`.
    pub reference: u64,
    /// Owner of the frame.
    pub domid: u16,
    /// Byte offset in the frame.
    pub offset: u16,
    _pad: u32,
}

impl CopyPtr {
    /// A granted frame of `domid`.
    pub fn grant(domid: u16, gref: GrantRef, offset: u16) -> CopyPtr {
        CopyPtr { reference: u64::from(gref), domid, offset, _pad: 0 }
    }

    /// A local frame.
    pub fn local(gmfn: u64, offset: u16) -> CopyPtr {
        CopyPtr { reference: gmfn, domid: crate::hvm::DOMID_SELF, offset, _pad: 0 }
    }
}

/// `struct gnttab_copy`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GntCopy {
    /// Where from.
    pub source: CopyPtr,
    /// Where to.
    pub dest: CopyPtr,
    /// Bytes (source and destination ranges must each stay inside their frame).
    pub len: u16,
    /// `GNTCOPY_*`.
    pub flags: u16,
    /// `GNTST_*` result: 0 is success.
    pub status: i16,
    _pad: u16,
}

impl GntCopy {
    /// A copy of `len` bytes.
    pub fn new(source: CopyPtr, dest: CopyPtr, len: u16, flags: u16) -> GntCopy {
        GntCopy { source, dest, len, flags, status: 0, _pad: 0 }
    }
}

/// `struct gnttab_map_grant_ref`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapGrantRef {
    /// IN: where to map (guest-physical address of the frame, for PVH/HVM).
    pub host_addr: u64,
    /// IN: `GNTMAP_*`.
    pub flags: u32,
    /// IN: the granting domain's reference.
    pub gref: GrantRef,
    /// IN: the granting domain.
    pub dom: u16,
    /// OUT: `GNTST_*` (0 = okay).
    pub status: i16,
    /// OUT: handle for the unmap.
    pub handle: u32,
    /// OUT: bus address (device maps only).
    pub dev_bus_addr: u64,
}

/// `struct gnttab_unmap_grant_ref`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnmapGrantRef {
    /// IN: where the grant is mapped.
    pub host_addr: u64,
    /// IN: bus address (device maps only; 0).
    pub dev_bus_addr: u64,
    /// IN: the map's handle.
    pub handle: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    _pad: u16,
}

impl UnmapGrantRef {
    /// The unmap of a host mapping at `host_addr` made with `handle`.
    pub fn new(host_addr: u64, handle: u32) -> UnmapGrantRef {
        UnmapGrantRef { host_addr, dev_bus_addr: 0, handle, status: 0, _pad: 0 }
    }
}

const _: () = assert!(core::mem::size_of::<MapGrantRef>() == 32);
const _: () = assert!(core::mem::size_of::<UnmapGrantRef>() == 24);
const _: () = assert!(core::mem::offset_of!(MapGrantRef, status) == 18);
const _: () = assert!(core::mem::offset_of!(MapGrantRef, handle) == 20);
const _: () = assert!(core::mem::offset_of!(UnmapGrantRef, status) == 20);
const _: () = assert!(core::mem::size_of::<CopyPtr>() == 16);
const _: () = assert!(core::mem::size_of::<GntCopy>() == 40);

#[repr(C)]
struct QuerySize {
    dom: u16,
    _pad: u16,
    nr_frames: u32,
    max_nr_frames: u32,
    status: i16,
    _pad2: u16,
}

const _: () = assert!(core::mem::size_of::<QuerySize>() == 16);

impl Xen {
    /// `GNTTABOP_copy` for a batch; each op's `status` tells its own result.
    ///
    /// # Safety
    /// Every local (non-grant) side must name a frame of this domain and a range inside it that
    /// no Rust reference aliases (Xen writes local destinations behind the compiler's back).
    pub unsafe fn grant_copy(&self, ops: &mut [GntCopy]) -> Result<(), XenError> {
        // SAFETY: `ops` is an array of `gnttab_copy` (layout asserted) of the given length that
        // lives across the call; the caller vouches for the local frames.
        let ret = unsafe {
            self.call(nr::GRANT_TABLE_OP, OP_COPY, ops.as_mut_ptr() as u64, ops.len() as u64, 0, 0)
        };
        check(ret).map(|_| ())
    }

    /// `GNTTABOP_map_grant_ref` for a batch; each op's `status` tells its own result.
    ///
    /// # Safety
    /// Every `host_addr` must be a page-aligned guest-physical address of this domain that holds
    /// no RAM or other mapping in use (the grant replaces whatever frame is there), and nothing
    /// may reach it through Rust references while it is mapped.
    pub unsafe fn grant_map(&self, ops: &mut [MapGrantRef]) -> Result<(), XenError> {
        // SAFETY: `ops` is an array of `gnttab_map_grant_ref` (layout asserted) that lives across
        // the call; the caller vouches for the target frames.
        let ret = unsafe {
            self.call(nr::GRANT_TABLE_OP, OP_MAP_GRANT_REF, ops.as_mut_ptr() as u64, ops.len() as u64, 0, 0)
        };
        check(ret).map(|_| ())
    }

    /// `GNTTABOP_unmap_grant_ref` for a batch; each op's `status` tells its own result.
    ///
    /// # Safety
    /// Nothing may access the mapped frames any more (afterwards they are holes in this
    /// domain's physical address space).
    pub unsafe fn grant_unmap(&self, ops: &mut [UnmapGrantRef]) -> Result<(), XenError> {
        // SAFETY: `ops` is an array of `gnttab_unmap_grant_ref` (layout asserted) that lives
        // across the call; the caller gives up the mappings.
        let ret = unsafe {
            self.call(nr::GRANT_TABLE_OP, OP_UNMAP_GRANT_REF, ops.as_mut_ptr() as u64, ops.len() as u64, 0, 0)
        };
        check(ret).map(|_| ())
    }

    /// `GNTTABOP_query_size`: (current frames, maximum frames) of this domain's table.
    pub fn grant_query_size(&self) -> Result<(u32, u32), XenError> {
        let mut q = QuerySize { dom: crate::hvm::DOMID_SELF, _pad: 0, nr_frames: 0, max_nr_frames: 0, status: 0, _pad2: 0 };
        // SAFETY: `gnttab_query_size` is exactly `QuerySize`; one op; it lives across the call.
        let ret = unsafe { self.call(nr::GRANT_TABLE_OP, OP_QUERY_SIZE, &mut q as *mut QuerySize as u64, 1, 0, 0) };
        check(ret)?;
        if q.status != 0 {
            return Err(XenError(i64::from(q.status)));
        }
        Ok((q.nr_frames, q.max_nr_frames))
    }
}

/// This domain's v1 grant table, as mapped frames (`XENMAPSPACE_grant_table`). Entries are
/// written with atomic stores: Xen and the grantee read and update them concurrently.
pub struct GrantTableV1 {
    base: *mut u8,
    entries: u32,
}

// SAFETY: entries are only accessed atomically; the frames stay mapped (constructor contract).
unsafe impl Send for GrantTableV1 {}
// SAFETY: as above.
unsafe impl Sync for GrantTableV1 {}

impl GrantTableV1 {
    /// Wraps `frames` contiguous grant-table frames at `base`.
    ///
    /// # Safety
    /// `base` must be where Xen mapped grant-table frames `0..frames` of this domain, mapped for
    /// the rest of the program and used by nothing else.
    pub unsafe fn from_ptr(base: *mut u8, frames: u32) -> GrantTableV1 {
        GrantTableV1 { base, entries: frames * ENTRIES_PER_FRAME }
    }

    /// Number of entries.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    fn flags(&self, gref: GrantRef) -> &AtomicU16 {
        assert!(gref < self.entries, "grant ref out of range");
        // SAFETY: in range (checked), 8-byte entries in mapped frames (constructor contract).
        unsafe { AtomicU16::from_ptr(self.base.add(gref as usize * 8).cast()) }
    }

    fn domid(&self, gref: GrantRef) -> &AtomicU16 {
        assert!(gref < self.entries, "grant ref out of range");
        // SAFETY: as for `flags`.
        unsafe { AtomicU16::from_ptr(self.base.add(gref as usize * 8 + 2).cast()) }
    }

    fn frame(&self, gref: GrantRef) -> &AtomicU32 {
        assert!(gref < self.entries, "grant ref out of range");
        // SAFETY: as for `flags`.
        unsafe { AtomicU32::from_ptr(self.base.add(gref as usize * 8 + 4).cast()) }
    }

    /// Lets `domid` access local frame `gfn` through `gref` (read-only if asked).
    pub fn grant(&self, gref: GrantRef, domid: u16, gfn: u32, readonly: bool) {
        self.frame(gref).store(gfn, Ordering::Relaxed);
        self.domid(gref).store(domid, Ordering::Relaxed);
        let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        // Release: the grantee must see frame and domid before the permission.
        self.flags(gref).store(flags, Ordering::Release);
    }

    /// Revokes `gref`; `false` while the grantee still has it mapped or is copying (retry later).
    pub fn revoke(&self, gref: GrantRef) -> bool {
        let flags = self.flags(gref);
        let mut current = flags.load(Ordering::Acquire);
        loop {
            if current & (GTF_READING | GTF_WRITING) != 0 {
                return false;
            }
            match flags.compare_exchange(current, 0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }
}
