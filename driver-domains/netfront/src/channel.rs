//! [`Buffers`] on an iConnect channel: data pages of the channel's data area, allocated with
//! the frontend's [`PageAllocator`]; the page number is the reference put into requests (the
//! backend's `DataArea` validates it like a grant reference).

use alloc::vec;

use iconnect_channel::{DataArea, FrontendConfig, KeyMap, PageAllocator, RingSpec};
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

/// Key carrying each end's ivshmem peer id (its doorbell address), decimal.
pub const PEER_KEY: &str = "ivshmem-peer";

/// A MAC address as the `mac` key writes it: `xx:xx:xx:xx:xx:xx`, lower-case hex.
pub fn mac_key(m: [u8; 6]) -> alloc::string::String {
    alloc::format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// The keys a netif frontend publishes on an iConnect channel (the contract): `mac` as
/// `xx:xx:xx:xx:xx:xx`, `request-rx-copy = 1`, `feature-sg = 1`, `feature-rx-notify = 1`,
/// `feature-no-csum-offload = 1` (the frontend fills and checks every checksum itself) and its
/// doorbell address [`PEER_KEY`]. QoS keys (`iconnect::qos::NetQosRequest::write`) go on top.
pub fn frontend_keys(mac: [u8; 6], ivshmem_peer: u16) -> Result<KeyMap, iconnect_channel::Error> {
    let mac = mac_key(mac);
    let peer = alloc::format!("{ivshmem_peer}");
    let mut keys = KeyMap::new();
    for (k, v) in [
        ("mac", mac.as_str()),
        ("request-rx-copy", "1"),
        ("feature-sg", "1"),
        ("feature-rx-notify", "1"),
        ("feature-no-csum-offload", "1"),
        (PEER_KEY, peer.as_str()),
    ] {
        keys.insert(k, v)?;
    }
    Ok(keys)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_keys() {
        let k = frontend_keys([0x52, 0x54, 0, 0x12, 0x34, 0xab], 3).unwrap();
        assert_eq!(k.get("mac"), Some("52:54:00:12:34:ab"));
        assert_eq!(k.get(PEER_KEY), Some("3"));
        assert_eq!(k.get("request-rx-copy"), Some("1"));
        assert_eq!(k.get("feature-no-csum-offload"), Some("1"));
        let c = frontend_config();
        assert_eq!(c.rings[TX_RING].vector, u32::from(TX_VECTOR));
        assert_eq!(c.rings[RX_RING].vector, u32::from(RX_VECTOR));
        assert_eq!(c.rings[TX_RING].slot_bytes, 12);
        assert_eq!(c.rings[RX_RING].slot_bytes, 8);
    }
}
