//! [`Buffers`] on an iConnect channel: data pages of the channel's data area, allocated with
//! the frontend's [`PageAllocator`]; the page number is the reference put into requests (the
//! backend's `DataArea` validates it like a grant reference).

use alloc::vec;

use iconnect_channel::{DataArea, FrontendConfig, PageAllocator, RingSpec};
use xen_abi::GrantRef;
use xen_abi::netif::{RX_RESPONSE_SIZE, TX_REQUEST_SIZE};
use xen_abi::xenbus::FrontendStyle;
use xen_abi::shmem::SharedMem;

use crate::{Buffers, Error};

/// Ring 0 of a net channel: the netif TX ring; its doorbell vector.
pub const TX_RING: usize = 0;
/// Doorbell vector of the TX ring.
pub const TX_VECTOR: u16 = 0;
/// Ring 1 of a net channel: the netif RX ring.
pub const RX_RING: usize = 1;
/// Doorbell vector of the RX ring.
pub const RX_VECTOR: u16 = 1;

/// The layout a netif frontend asks for on an iConnect channel (the QEMU platform's contract):
/// style Net; ring 0 = TX ring (request-sized slots, vector 0), ring 1 = RX ring (vector 1),
/// one page each; the rest of the region is the data area.
pub fn frontend_config() -> FrontendConfig {
    FrontendConfig {
        style: FrontendStyle::Net,
        rings: vec![
            RingSpec {
                page_order: 0,
                slot_bytes: TX_REQUEST_SIZE as u32,
                vector: u32::from(TX_VECTOR),
            },
            RingSpec {
                page_order: 0,
                slot_bytes: RX_RESPONSE_SIZE as u32,
                vector: u32::from(RX_VECTOR),
            },
        ],
        data_pages: None,
    }
}

/// The frontend's data pages of one channel.
#[derive(Debug, Clone)]
pub struct ChannelBuffers<M: SharedMem> {
    data: DataArea<M>,
    pages: PageAllocator,
}

impl<M: SharedMem> ChannelBuffers<M> {
    /// Buffers from `pages` (the frontend's allocator) inside `data` (its view of the area).
    pub fn new(data: DataArea<M>, pages: PageAllocator) -> Self {
        Self { data, pages }
    }

    /// The data area.
    pub fn data(&self) -> &DataArea<M> {
        &self.data
    }

    /// The allocator.
    pub fn allocator(&self) -> &PageAllocator {
        &self.pages
    }

    /// The allocator, to take pages for other uses of the channel.
    pub fn allocator_mut(&mut self) -> &mut PageAllocator {
        &mut self.pages
    }
}

impl<M: SharedMem> Buffers for ChannelBuffers<M> {
    fn alloc(&mut self) -> Option<GrantRef> {
        self.pages.alloc()
    }

    fn free(&mut self, page: GrantRef) {
        // A page we never allocated cannot be here (the engine only frees its own).
        let _ = self.pages.free(page);
    }

    fn write(&mut self, page: GrantRef, offset: usize, src: &[u8]) -> Result<(), Error> {
        self.data
            .copy_to_page(page, offset, src)
            .map_err(|_| Error::Buffer)
    }

    fn read(&mut self, page: GrantRef, offset: usize, dst: &mut [u8]) -> Result<(), Error> {
        self.data
            .copy_from_page(page, offset, dst)
            .map_err(|_| Error::Buffer)
    }
}
