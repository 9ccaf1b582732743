//! The domain's own stack as a switch port: a smoltcp [`Device`] over two bounded frame queues.
//! The switch puts frames for the stack into [`QueueDevice::deliver`]; what smoltcp sends is
//! taken with [`QueueDevice::take_sent`] and handed to the switch.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

/// Largest Ethernet frame (MTU 1500 + header).
pub const MAX_FRAME: usize = 1514;

/// Frames waiting in each direction at most.
pub const QUEUE_FRAMES: usize = 64;

/// The queue device.
#[derive(Debug, Default)]
pub struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    /// Frames dropped because the receive queue was full.
    pub rx_dropped: u64,
}

impl QueueDevice {
    /// An empty device.
    pub fn new() -> Self {
        Self::default()
    }

    fn buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    /// Queues a frame for the stack (dropped and counted when the queue is full).
    pub fn deliver(&mut self, frame: &[u8]) {
        if self.rx.len() >= QUEUE_FRAMES || frame.len() > MAX_FRAME {
            self.rx_dropped += 1;
            return;
        }
        let mut b = self.buffer();
        b.clear();
        b.extend_from_slice(frame);
        self.rx.push_back(b);
    }

    /// Frames waiting for the stack.
    pub fn pending(&self) -> usize {
        self.rx.len()
    }

    /// The oldest frame the stack sent (give it back with [`recycle`](Self::recycle)).
    pub fn pop_sent(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    /// Returns a buffer from [`pop_sent`](Self::pop_sent) for reuse.
    pub fn recycle(&mut self, b: Vec<u8>) {
        if self.spare.len() < QUEUE_FRAMES {
            self.spare.push(b);
        }
    }

    /// Hands every frame the stack sent to `f`, oldest first.
    pub fn take_sent(&mut self, mut f: impl FnMut(&[u8])) {
        while let Some(b) = self.tx.pop_front() {
            f(&b);
            self.recycle(b);
        }
    }
}

/// A received frame.
pub struct Rx(Vec<u8>);

/// Permission to send one frame.
pub struct Tx<'a>(&'a mut VecDeque<Vec<u8>>, Option<Vec<u8>>);

impl Device for QueueDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.rx.pop_front()?;
        let spare = self.spare.pop();
        Some((Rx(frame), Tx(&mut self.tx, spare)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Tx<'_>> {
        if self.tx.len() >= QUEUE_FRAMES {
            return None;
        }
        let spare = self.spare.pop();
        Some(Tx(&mut self.tx, spare))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps.max_burst_size = Some(QUEUE_FRAMES / 2);
        caps
    }
}

impl RxToken for Rx {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let Tx(queue, spare) = self;
        let mut b = spare.unwrap_or_default();
        b.clear();
        b.resize(len, 0);
        let r = f(&mut b);
        // `transmit` checked the bound; a reply from `receive` may exceed it by one frame.
        queue.push_back(b);
        r
    }
}
