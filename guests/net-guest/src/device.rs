//! smoltcp devices: [`NetfrontDevice`] (the iConnect/Xen frontend engine) and [`Metered`], a
//! wrapper counting the frames and bytes through any device (for the rate markers).
//!
//! A received frame travels in the `RxToken` as the `Vec` netfront copied it into, and goes
//! back to netfront's spare list after smoltcp consumed it. smoltcp may transmit from inside
//! the receive closure, so the engine sits in a `RefCell` and the tokens hold no borrow while
//! smoltcp runs. Sending copies smoltcp's frame from a scratch buffer into a buffer page; when
//! the ring or the buffers are full the frame is dropped and counted (TCP retransmits), as a
//! full NIC would.

use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use netfront::{Buffers, Netfront};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;
use xen_abi::shmem::SharedMem;

/// Largest Ethernet frame sent or accepted (MTU 1500 + 14 bytes of header).
pub const MAX_FRAME: usize = 1514;

/// smoltcp's device over a [`Netfront`].
pub struct NetfrontDevice<M: SharedMem, B: Buffers> {
    nf: RefCell<Netfront<M, B>>,
    scratch: RefCell<Vec<u8>>,
    tx_dropped: Cell<u64>,
    fatal: Cell<Option<netfront::Error>>,
}

impl<M: SharedMem, B: Buffers> NetfrontDevice<M, B> {
    /// Wraps an engine.
    pub fn new(nf: Netfront<M, B>) -> Self {
        Self {
            nf: RefCell::new(nf),
            scratch: RefCell::new(alloc::vec![0; MAX_FRAME]),
            tx_dropped: Cell::new(0),
            fatal: Cell::new(None),
        }
    }

    /// The engine (poll it, take its notifications).
    pub fn netfront(&mut self) -> &mut Netfront<M, B> {
        self.nf.get_mut()
    }

    /// Frames smoltcp produced that found no room.
    pub fn tx_dropped(&self) -> u64 {
        self.tx_dropped.get()
    }

    /// A fatal engine error seen while smoltcp used the device.
    pub fn fatal(&self) -> Option<netfront::Error> {
        self.fatal.get()
    }
}

/// A received frame.
pub struct Rx<'a, M: SharedMem, B: Buffers> {
    dev: &'a NetfrontDevice<M, B>,
    frame: Vec<u8>,
}

/// Permission to send one frame.
pub struct Tx<'a, M: SharedMem, B: Buffers> {
    dev: &'a NetfrontDevice<M, B>,
}

impl<M: SharedMem, B: Buffers> Device for NetfrontDevice<M, B> {
    type RxToken<'a>
        = Rx<'a, M, B>
    where
        Self: 'a;
    type TxToken<'a>
        = Tx<'a, M, B>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Rx<'_, M, B>, Tx<'_, M, B>)> {
        let frame = match self.nf.get_mut().recv() {
            Ok(Some(f)) => f.data,
            Ok(None) => return None,
            Err(e) => {
                self.fatal.set(Some(e));
                return None;
            }
        };
        Some((Rx { dev: self, frame }, Tx { dev: self }))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Tx<'_, M, B>> {
        self.nf.get_mut().can_send(MAX_FRAME).then_some(Tx { dev: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps.max_burst_size = Some(32);
        caps
    }
}

impl<M: SharedMem, B: Buffers> RxToken for Rx<'_, M, B> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let r = f(&self.frame);
        self.dev.nf.borrow_mut().recycle(self.frame);
        r
    }
}

impl<M: SharedMem, B: Buffers> TxToken for Tx<'_, M, B> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buf = self.dev.scratch.borrow_mut();
        // Grown once, never cleared: smoltcp writes every byte of the frame it asked for.
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let r = f(&mut buf[..len]);
        match self.dev.nf.borrow_mut().send(&buf[..len]) {
            Ok(()) => {}
            Err(e) if e.is_fatal() => self.dev.fatal.set(Some(e)),
            Err(_) => self.dev.tx_dropped.set(self.dev.tx_dropped.get() + 1),
        }
        r
    }
}

/// Frames and bytes through a [`Metered`] device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meter {
    /// Frames handed to the device.
    pub tx_frames: u64,
    /// Their bytes (Ethernet header included).
    pub tx_bytes: u64,
    /// Frames received.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
}

/// Any smoltcp device, counting what passes through it.
pub struct Metered<D: Device> {
    inner: D,
    meter: RefCell<Meter>,
}

impl<D: Device> Metered<D> {
    /// Wraps `inner`.
    pub fn new(inner: D) -> Self {
        Self {
            inner,
            meter: RefCell::new(Meter::default()),
        }
    }

    /// The counters.
    pub fn meter(&self) -> Meter {
        *self.meter.borrow()
    }

    /// The wrapped device.
    pub fn inner(&mut self) -> &mut D {
        &mut self.inner
    }
}

/// A metered receive token.
pub struct MeteredRx<'a, T> {
    inner: T,
    meter: &'a RefCell<Meter>,
}

/// A metered transmit token.
pub struct MeteredTx<'a, T> {
    inner: T,
    meter: &'a RefCell<Meter>,
}

impl<D: Device> Device for Metered<D> {
    type RxToken<'a>
        = MeteredRx<'a, D::RxToken<'a>>
    where
        Self: 'a;
    type TxToken<'a>
        = MeteredTx<'a, D::TxToken<'a>>
    where
        Self: 'a;

    fn receive(&mut self, t: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let meter = &self.meter;
        self.inner.receive(t).map(|(rx, tx)| {
            (
                MeteredRx { inner: rx, meter },
                MeteredTx { inner: tx, meter },
            )
        })
    }

    fn transmit(&mut self, t: Instant) -> Option<Self::TxToken<'_>> {
        let meter = &self.meter;
        self.inner
            .transmit(t)
            .map(|tx| MeteredTx { inner: tx, meter })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}

impl<T: RxToken> RxToken for MeteredRx<'_, T> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let meter = self.meter;
        self.inner.consume(|buf| {
            {
                let mut m = meter.borrow_mut();
                m.rx_frames += 1;
                m.rx_bytes += buf.len() as u64;
            }
            f(buf)
        })
    }
}

impl<T: TxToken> TxToken for MeteredTx<'_, T> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        {
            let mut m = self.meter.borrow_mut();
            m.tx_frames += 1;
            m.tx_bytes += len as u64;
        }
        self.inner.consume(len, f)
    }
}
