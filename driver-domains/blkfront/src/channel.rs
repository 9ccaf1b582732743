//! The frontend's pages on the QEMU platform: data pages of an iConnect channel (their page
//! numbers are the "grant references" the backend checks with the channel's `DataArea`), and
//! the channel layout a block frontend asks for.

use alloc::vec;

use iconnect_channel::{DataArea, FrontendConfig, PageAllocator, RingSpec};
use xen_abi::GrantRef;
use xen_abi::blkif;
use xen_abi::shmem::SharedMem;
use xen_abi::xenbus::FrontendStyle;

use crate::FrontPages;

/// Ring 0 carries blkif requests; its doorbell vector.
pub const RING: usize = 0;
/// Doorbell vector of ring 0 (both directions).
pub const VECTOR: u16 = 0;

/// The channel layout of the block contract: style Block, one ring of 112-byte blkif slots
/// (one page, vector 0), the rest of the region as data pages.
pub fn frontend_config() -> FrontendConfig {
    FrontendConfig {
        style: FrontendStyle::Block,
        rings: vec![RingSpec {
            page_order: 0,
            slot_bytes: blkif::REQUEST_SIZE as u32,
            vector: u32::from(VECTOR),
        }],
        data_pages: None,
    }
}

/// [`FrontPages`] over a channel's data area and the frontend's page allocator.
#[derive(Debug)]
pub struct ChannelPages<M: SharedMem> {
    alloc: PageAllocator,
    data: DataArea<M>,
}

impl<M: SharedMem> ChannelPages<M> {
    /// The pages of `data`, handed out by `alloc`.
    pub fn new(data: DataArea<M>, alloc: PageAllocator) -> Self {
        Self { alloc, data }
    }

    /// Pages not in use.
    pub fn free_pages(&self) -> u32 {
        self.alloc.free_pages()
    }

    /// The data area (for a deliberately hostile guest writing raw pages).
    pub fn data(&self) -> &DataArea<M> {
        &self.data
    }

    /// The allocator.
    pub fn allocator(&mut self) -> &mut PageAllocator {
        &mut self.alloc
    }
}

impl<M: SharedMem> FrontPages for ChannelPages<M> {
    fn alloc(&mut self, _writable: bool) -> Option<GrantRef> {
        self.alloc.alloc()
    }
    fn free(&mut self, page: GrantRef) {
        // A page this source never handed out is ignored (the engine only frees its own).
        let _ = self.alloc.free(page);
    }
    fn write(&mut self, page: GrantRef, offset: usize, src: &[u8]) -> bool {
        self.data.copy_to_page(page, offset, src).is_ok()
    }
    fn read(&mut self, page: GrantRef, offset: usize, dst: &mut [u8]) -> bool {
        self.data.copy_from_page(page, offset, dst).is_ok()
    }
}
