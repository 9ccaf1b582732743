//! The two ends of a channel: [`Backend`] and [`Frontend`].
//!
//! Both run `xen-abi`'s xenbus machines over their end blocks in the control page. They do no
//! waiting and ring no doorbells: the owner calls `poll` whenever something may have changed (a
//! doorbell, a timer) and handles the returned events until `poll` returns `None`; ring halves
//! report `notify` flags and the ring's [`RingDesc::vector`](crate::RingDesc) says which doorbell
//! to ring.
//!
//! The owner's loop, for each end: `poll` until `None` (acting on each event), serve the rings,
//! then, if `take_notify()`, ring the peer (any vector: the peer's loop polls everything on
//! every doorbell), and sleep only until the next doorbell after the rings' final checks. An
//! owner that skips the ring after a state change leaves the peer waiting.
//!
//! ```
//! use iconnect_channel::{Backend, BackendEvent, Frontend, FrontendConfig, FrontendEvent, KeyMap, RingSpec};
//! use iconnect::qos::{self, LinkAdmission, NetQosRequest};
//! use xen_abi::{ring::RawProtocol, shmem::HostMem, xenbus::FrontendStyle};
//!
//! let region = HostMem::pages(16); // an ivshmem BAR in the images
//! let mut be = Backend::new(region.clone(), KeyMap::new())?;
//! let mut ask = KeyMap::new();
//! NetQosRequest { guaranteed_bps: 10_000_000, ..Default::default() }.write(&mut ask).unwrap();
//! let config = FrontendConfig {
//!     style: FrontendStyle::Net,
//!     rings: vec![RingSpec { page_order: 0, slot_bytes: 16, vector: 0 }],
//!     data_pages: None,
//! };
//! let mut fe = Frontend::new(region.clone(), config, ask)?;
//! let mut link = LinkAdmission::new(1_000_000_000);
//! let (mut back, mut front) = (None, None);
//! // Two VMs would run these loops concurrently, woken by doorbells; here we alternate.
//! for _ in 0..4 {
//!     while let Some(ev) = be.poll() {
//!         if ev == BackendEvent::Connect {
//!             let req = NetQosRequest::from_keys(be.frontend_keys()).unwrap().unwrap();
//!             qos::write_decision(&link.admit(&req), be.keys_mut()).unwrap();
//!             be.publish_keys();
//!             back = Some(be.back_ring::<RawProtocol<16, 16>>(0)?);
//!             be.accept();
//!         }
//!     }
//!     while let Some(ev) = fe.poll() {
//!         if ev == FrontendEvent::SetUp {
//!             front = Some(fe.front_ring::<RawProtocol<16, 16>>(0)?);
//!         }
//!     }
//! }
//! assert_eq!(fe.backend_keys().get("iconnect-qos-status"), Some("granted"));
//! let (mut front, mut back) = (front.unwrap(), back.unwrap());
//! front.push_request(&[7; 16])?;
//! let kick = front.publish_requests_and_check_notify(); // ring layout().rings[0].vector if set
//! assert!(kick);
//! assert_eq!(back.pop_request()?, Some([7; 16]));
//! # Ok::<(), iconnect_channel::Error>(())
//! ```
//!
//! Generations: each end bumps its generation when it starts, and writes the peer generation
//! its state answers. An end interprets the peer's state only when the peer answers its own
//! current generation; a new peer generation is a restarted peer, and the end starts its
//! handshake over (reporting a disconnect first if it was serving).

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use xen_abi::PAGE_SIZE;
use xen_abi::ring::{BackRing, FrontRing, RawProtocol, RingProtocol};
use xen_abi::shmem::SharedMem;
use xen_abi::xenbus::{
    BackendFsm, BackendInput, BackendOutput, FrontendFsm, FrontendInput, FrontendOutput,
    FrontendStyle, XenbusState,
};

use crate::Error;
use crate::data::{DataArea, PageAllocator};
use crate::keys::KeyMap;
use crate::layout::{Layout, RingDesc, RingSpec, Side, off};
use crate::window::Window;

/// Minimum region: the control page and one ring page.
pub const MIN_REGION_BYTES: usize = 2 * PAGE_SIZE;

fn load(mem: &impl SharedMem, side: Side, field: usize) -> u32 {
    mem.load_u32(side.block() + field, Ordering::Acquire)
}

fn store(mem: &impl SharedMem, side: Side, field: usize, v: u32) {
    mem.store_u32(side.block() + field, v, Ordering::Release)
}

fn next_generation(old: u32) -> u32 {
    match old.wrapping_add(1) {
        0 => 1,
        g => g,
    }
}

fn ring_window<M: SharedMem + Clone>(mem: &M, d: &RingDesc) -> Result<Window<M>, Error> {
    Window::new(mem.clone(), d.offset(), d.bytes())
}

/// What the backend's owner must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendEvent {
    /// The frontend has set the channel up: the layout is validated ([`Backend::layout`]) and
    /// the frontend's keys are read ([`Backend::frontend_keys`]). Publish answer keys, take the
    /// ring halves and the data area, then [`Backend::accept`] or [`Backend::refuse`].
    Connect,
    /// Stop serving: drop ring halves and the data area (the frontend closed or restarted, or
    /// the channel failed).
    Disconnect,
    /// The frontend vanished (state `Unknown`) or the channel was shut down: this `Backend` is
    /// finished (closed, disconnected). A new `Backend` on the region may offer it again.
    Removed,
    /// The frontend broke the protocol; the channel is closing (a `Disconnect` follows if it
    /// was serving). Nothing outside this channel is affected.
    Failed(Error),
}

/// The backend end of a channel (driver domain side).
#[derive(Debug)]
pub struct Backend<M: SharedMem> {
    mem: M,
    fsm: BackendFsm,
    generation: u32,
    peer_generation: u32,
    peer_state_raw: Option<u32>,
    layout: Option<Layout>,
    peer_keys: KeyMap,
    peer_keys_seq: u32,
    keys: KeyMap,
    events: VecDeque<BackendEvent>,
    notify: bool,
    stepped: bool,
}

impl<M: SharedMem> Backend<M> {
    /// Starts the backend on `mem`: bumps its generation, publishes `keys` (feature keys) and
    /// writes `InitWait`. [`Error::RegionTooSmall`] below [`MIN_REGION_BYTES`].
    pub fn new(mem: M, keys: KeyMap) -> Result<Self, Error> {
        if mem.len() < MIN_REGION_BYTES {
            return Err(Error::RegionTooSmall);
        }
        let generation = next_generation(load(&mem, Side::Backend, off::end::GENERATION));
        let mut be = Self {
            fsm: BackendFsm::new(),
            generation,
            peer_generation: load(&mem, Side::Frontend, off::end::GENERATION),
            peer_state_raw: None,
            layout: None,
            peer_keys: KeyMap::new(),
            peer_keys_seq: 0,
            keys,
            events: VecDeque::new(),
            notify: true,
            stepped: false,
            mem,
        };
        be.keys.publish(&be.mem, Side::Backend);
        store(&be.mem, Side::Backend, off::end::HEARTBEAT, 0);
        let out = be.fsm.on_input(BackendInput::Probed);
        be.apply(out);
        store(
            &be.mem,
            Side::Backend,
            off::end::PEER_GENERATION,
            be.peer_generation,
        );
        store(&be.mem, Side::Backend, off::end::GENERATION, generation);
        Ok(be)
    }

    /// The region.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Our xenbus state.
    pub fn state(&self) -> XenbusState {
        self.fsm.state()
    }

    /// Our generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Whether we wrote something the peer should look at (state, generation, keys) since the
    /// last call: the owner then rings the peer's doorbell (e.g. ring 0's vector). Clears the flag.
    pub fn take_notify(&mut self) -> bool {
        core::mem::take(&mut self.notify)
    }

    /// Whether the backend is finished ([`BackendEvent::Removed`]).
    pub fn is_removed(&self) -> bool {
        self.fsm.is_removed()
    }

    /// Carries out a machine output (in the documented order) and queues events.
    fn apply(&mut self, out: BackendOutput) {
        if out.disconnect {
            self.layout = None;
            self.events.push_back(BackendEvent::Disconnect);
        }
        if out.connect {
            match self.read_frontend() {
                Ok(()) => self.events.push_back(BackendEvent::Connect),
                Err(e) => {
                    self.events.push_back(BackendEvent::Failed(e));
                    let o = self.fsm.on_input(BackendInput::ConnectDone { ok: false });
                    self.apply(o);
                }
            }
        }
        if let Some(s) = out.write_state {
            store(&self.mem, Side::Backend, off::end::STATE, s as u32);
            self.notify = true;
        }
        if out.remove {
            self.layout = None;
            self.events.push_back(BackendEvent::Removed);
        }
    }

    /// The connect step: one copy of the header, validated; the frontend's keys.
    fn read_frontend(&mut self) -> Result<(), Error> {
        let layout = Layout::read(&self.mem)?;
        let (keys, seq) = KeyMap::read(&self.mem, Side::Frontend)?;
        self.layout = Some(layout);
        self.peer_keys = keys;
        self.peer_keys_seq = seq;
        Ok(())
    }

    /// Reads the frontend's end block and feeds what changed to the machine; returns the next
    /// event. Call until it returns `None`. One such round reads the frontend once, so a
    /// frontend that keeps rewriting its end block cannot keep the owner's loop busy (the next
    /// round comes with its next doorbell).
    pub fn poll(&mut self) -> Option<BackendEvent> {
        if self.events.is_empty() {
            if self.stepped || self.fsm.is_removed() {
                self.stepped = false;
                return None;
            }
            self.step();
            self.stepped = true;
        }
        let e = self.events.pop_front();
        if e.is_none() {
            self.stepped = false;
        }
        e
    }

    fn step(&mut self) {
        let gen_now = load(&self.mem, Side::Frontend, off::end::GENERATION);
        if gen_now != self.peer_generation {
            // A (re)started frontend: start the handshake over.
            let serving =
                self.layout.is_some() || matches!(self.fsm.state(), XenbusState::Connected);
            self.peer_generation = gen_now;
            self.peer_state_raw = None;
            self.layout = None;
            if serving {
                self.events.push_back(BackendEvent::Disconnect);
            }
            self.fsm = BackendFsm::new();
            let out = self.fsm.on_input(BackendInput::Probed);
            self.apply(out);
            store(&self.mem, Side::Backend, off::end::PEER_GENERATION, gen_now);
            self.notify = true;
        }
        if load(&self.mem, Side::Frontend, off::end::PEER_GENERATION) != self.generation {
            return; // the frontend has not seen this backend yet
        }
        let raw = load(&self.mem, Side::Frontend, off::end::STATE);
        if self.peer_state_raw == Some(raw) {
            return;
        }
        self.peer_state_raw = Some(raw);
        let input = match XenbusState::from_u32(raw) {
            Ok(s) => s,
            Err(_) => {
                self.events.push_back(BackendEvent::Failed(Error::BadState));
                XenbusState::Closing
            }
        };
        let out = self.fsm.on_input(BackendInput::FrontendState(input));
        self.apply(out);
    }

    /// Accepts the connection after [`BackendEvent::Connect`]: writes `Connected`.
    pub fn accept(&mut self) {
        let out = self.fsm.on_input(BackendInput::ConnectDone { ok: true });
        self.apply(out);
    }

    /// Refuses the connection after [`BackendEvent::Connect`] (publish the reason in the keys
    /// first): writes `Closing`.
    pub fn refuse(&mut self) {
        let out = self.fsm.on_input(BackendInput::ConnectDone { ok: false });
        self.apply(out);
    }

    /// The owner found a protocol violation in the rings or data references: the channel is
    /// closed as if the frontend had asked to close (a `Disconnect` event follows).
    pub fn fail(&mut self) {
        let out = self
            .fsm
            .on_input(BackendInput::FrontendState(XenbusState::Closing));
        self.apply(out);
    }

    /// Unplugs the channel (the toolstack's `online = 0`): closes, and finishes once the
    /// frontend has closed.
    pub fn shutdown(&mut self) {
        let out = self.fsm.on_input(BackendInput::Online(false));
        self.apply(out);
    }

    /// The validated layout (between `Connect` and `Disconnect`).
    pub fn layout(&self) -> Option<&Layout> {
        self.layout.as_ref()
    }

    /// The frontend's keys as read at connect time (or by [`refresh_frontend_keys`](Self::refresh_frontend_keys)).
    pub fn frontend_keys(&self) -> &KeyMap {
        &self.peer_keys
    }

    /// Re-reads the frontend's keys if their sequence number moved; `Ok(true)` if they changed.
    /// A malformed area is [`Error::BadKeys`] (the old keys stay; the owner may [`fail`](Self::fail)).
    pub fn refresh_frontend_keys(&mut self) -> Result<bool, Error> {
        if KeyMap::seq(&self.mem, Side::Frontend) == self.peer_keys_seq {
            return Ok(false);
        }
        let (k, seq) = KeyMap::read(&self.mem, Side::Frontend)?;
        self.peer_keys_seq = seq;
        let changed = k != self.peer_keys;
        self.peer_keys = k;
        Ok(changed)
    }

    /// Our keys; [`publish_keys`](Self::publish_keys) makes edits visible.
    pub fn keys_mut(&mut self) -> &mut KeyMap {
        &mut self.keys
    }

    /// Our keys.
    pub fn keys(&self) -> &KeyMap {
        &self.keys
    }

    /// Publishes our keys.
    pub fn publish_keys(&mut self) {
        self.keys.publish(&self.mem, Side::Backend);
        self.notify = true;
    }

    /// Bumps our heartbeat.
    pub fn beat(&mut self) {
        let b = self.mem.load_u32(
            Side::Backend.block() + off::end::HEARTBEAT,
            Ordering::Relaxed,
        );
        store(
            &self.mem,
            Side::Backend,
            off::end::HEARTBEAT,
            b.wrapping_add(1),
        );
    }

    /// The frontend's heartbeat counter.
    pub fn peer_heartbeat(&self) -> u32 {
        load(&self.mem, Side::Frontend, off::end::HEARTBEAT)
    }

    fn desc(&self, index: usize, slot: usize) -> Result<RingDesc, Error> {
        let l = self.layout.as_ref().ok_or(Error::NotConnected)?;
        let d = *l.rings.get(index).ok_or(Error::RingMismatch)?;
        if d.slot_bytes as usize != slot {
            return Err(Error::RingMismatch);
        }
        Ok(d)
    }
}

impl<M: SharedMem + Clone> Backend<M> {
    /// The backend half of ring `index` (take it once per connection). [`Error::RingMismatch`]
    /// if the ring does not exist or its slot size is not `P::SLOT`.
    pub fn back_ring<P: RingProtocol>(
        &self,
        index: usize,
    ) -> Result<BackRing<Window<M>, P>, Error> {
        let d = self.desc(index, P::SLOT)?;
        Ok(BackRing::attach(ring_window(&self.mem, &d)?)?)
    }

    /// The memory of ring `index` (for engines that attach their own ring halves, such as
    /// `netback::Netback::new`). [`Error::RingMismatch`] if the ring does not exist or its slot
    /// size is not `P::SLOT`.
    pub fn ring_window<P: RingProtocol>(&self, index: usize) -> Result<Window<M>, Error> {
        let d = self.desc(index, P::SLOT)?;
        ring_window(&self.mem, &d)
    }

    /// The data area, checking every reference (it implements [`netback::GrantAccess`]).
    pub fn data_area(&self) -> Result<DataArea<M>, Error> {
        let l = self.layout.as_ref().ok_or(Error::NotConnected)?;
        DataArea::new(self.mem.clone(), l.data_offset(), l.data_pages)
    }
}

/// What a frontend asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendConfig {
    /// Net style (announce `Connected` after setup) or block style (`Initialised`).
    pub style: FrontendStyle,
    /// The rings, placed in this order after the control page.
    pub rings: Vec<RingSpec>,
    /// Data area pages (`None`: the rest of the region).
    pub data_pages: Option<u32>,
}

/// What the frontend's owner must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendEvent {
    /// Layout written, rings initialised, keys published: take the ring halves
    /// ([`Frontend::front_ring`]), the data area and a page allocator now.
    SetUp,
    /// The backend is connected: traffic may flow. Its answers are in [`Frontend::backend_keys`].
    Ready,
    /// Stop using the rings and data pages (the backend closed, failed or restarted; after a
    /// restart the handshake starts over by itself).
    Disconnect,
    /// Both ends are closed; [`Frontend::restart`] tries again.
    Closed,
    /// The backend broke the protocol (bad state or keys); the channel is closing.
    Failed(Error),
}

/// The frontend end of a channel (guest side). Initialises the layout and the rings.
#[derive(Debug)]
pub struct Frontend<M: SharedMem> {
    mem: M,
    config: FrontendConfig,
    layout: Layout,
    fsm: FrontendFsm,
    generation: u32,
    peer_generation: u32,
    peer_state_raw: Option<u32>,
    set_up: bool,
    peer_keys: KeyMap,
    keys: KeyMap,
    events: VecDeque<FrontendEvent>,
    notify: bool,
    stepped: bool,
}

impl<M: SharedMem> Frontend<M> {
    /// Starts the frontend on `mem` with `keys` (published at setup). The layout is planned now,
    /// so a configuration that cannot fit fails here ([`Error::RegionTooSmall`],
    /// [`Error::BadRing`]).
    pub fn new(mem: M, config: FrontendConfig, keys: KeyMap) -> Result<Self, Error> {
        if mem.len() < MIN_REGION_BYTES {
            return Err(Error::RegionTooSmall);
        }
        let layout = Layout::plan(mem.len(), &config.rings, config.data_pages)?;
        let mut fe = Self {
            fsm: FrontendFsm::new(config.style),
            config,
            layout,
            generation: 0,
            peer_generation: 0,
            peer_state_raw: None,
            set_up: false,
            peer_keys: KeyMap::new(),
            keys,
            events: VecDeque::new(),
            notify: true,
            stepped: false,
            mem,
        };
        fe.restart();
        Ok(fe)
    }

    /// Starts over as a new frontend generation (after [`FrontendEvent::Closed`], or to drop a
    /// connection): writes `Initialising`; the backend answers with a fresh `InitWait`.
    pub fn restart(&mut self) {
        if self.set_up {
            self.set_up = false;
            self.events.push_back(FrontendEvent::Disconnect);
        }
        self.fsm = FrontendFsm::new(self.config.style);
        self.generation = next_generation(load(&self.mem, Side::Frontend, off::end::GENERATION));
        self.peer_generation = load(&self.mem, Side::Backend, off::end::GENERATION);
        self.peer_state_raw = None;
        store(
            &self.mem,
            Side::Frontend,
            off::end::STATE,
            XenbusState::Initialising as u32,
        );
        store(
            &self.mem,
            Side::Frontend,
            off::end::PEER_GENERATION,
            self.peer_generation,
        );
        store(
            &self.mem,
            Side::Frontend,
            off::end::GENERATION,
            self.generation,
        );
        self.notify = true;
    }

    /// The region.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Our xenbus state.
    pub fn state(&self) -> XenbusState {
        self.fsm.state()
    }

    /// Our generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Whether we wrote something the peer should look at (state, generation, keys) since the
    /// last call: the owner then rings the peer's doorbell (e.g. ring 0's vector). Clears the flag.
    pub fn take_notify(&mut self) -> bool {
        core::mem::take(&mut self.notify)
    }

    /// The planned layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Whether the rings are set up (between `SetUp` and `Disconnect`).
    pub fn is_set_up(&self) -> bool {
        self.set_up
    }

    fn apply(&mut self, out: FrontendOutput) {
        if out.teardown && self.set_up {
            self.set_up = false;
            self.events.push_back(FrontendEvent::Disconnect);
        }
        if out.setup {
            self.setup();
            self.set_up = true;
            self.events.push_back(FrontendEvent::SetUp);
            let o = self.fsm.on_input(FrontendInput::SetupDone { ok: true });
            self.apply(o);
        }
        if let Some(s) = out.write_state {
            store(&self.mem, Side::Frontend, off::end::STATE, s as u32);
            self.notify = true;
            if s == XenbusState::Closed {
                self.events.push_back(FrontendEvent::Closed);
            }
        }
        if out.ready {
            match KeyMap::read(&self.mem, Side::Backend) {
                Ok((k, _)) => {
                    self.peer_keys = k;
                    self.events.push_back(FrontendEvent::Ready);
                }
                Err(e) => {
                    self.events.push_back(FrontendEvent::Failed(e));
                    let o = self.fsm.on_input(FrontendInput::Close);
                    self.apply(o);
                }
            }
        }
    }

    /// Writes the layout, initialises every ring (`SHARED_RING_INIT` through `xen-abi`'s
    /// `FrontRing::init`) and publishes our keys.
    fn setup(&mut self) {
        self.layout.write(&self.mem);
        for d in &self.layout.rings {
            // The ring header does not depend on the slot size: a 4-byte raw protocol writes it.
            // The window lies inside the region (the layout was validated against it).
            if let Ok(w) = Window::new(&self.mem, d.offset(), d.bytes()) {
                let _ = FrontRing::<_, RawProtocol<4, 4>>::init(w);
            }
        }
        self.keys.publish(&self.mem, Side::Frontend);
    }

    /// Reads the backend's end block and feeds what changed to the machine; returns the next
    /// event. Call until it returns `None` (one round reads the backend once).
    pub fn poll(&mut self) -> Option<FrontendEvent> {
        if self.events.is_empty() {
            if self.stepped {
                self.stepped = false;
                return None;
            }
            self.step();
            self.stepped = true;
        }
        let e = self.events.pop_front();
        if e.is_none() {
            self.stepped = false;
        }
        e
    }

    fn step(&mut self) {
        let gen_now = load(&self.mem, Side::Backend, off::end::GENERATION);
        if gen_now != self.peer_generation {
            if !self.set_up && self.fsm.state() == XenbusState::Initialising {
                // Nothing done yet: just answer the new backend.
                self.peer_generation = gen_now;
                self.peer_state_raw = None;
                store(
                    &self.mem,
                    Side::Frontend,
                    off::end::PEER_GENERATION,
                    gen_now,
                );
                self.notify = true;
            } else {
                // A (re)started backend: start over (a new generation of ours tells it so).
                self.restart();
            }
        }
        if load(&self.mem, Side::Backend, off::end::PEER_GENERATION) != self.generation {
            return; // the backend has not answered this frontend yet
        }
        let raw = load(&self.mem, Side::Backend, off::end::STATE);
        if self.peer_state_raw == Some(raw) {
            return;
        }
        self.peer_state_raw = Some(raw);
        let input = match XenbusState::from_u32(raw) {
            Ok(s) => s,
            Err(_) => {
                self.events
                    .push_back(FrontendEvent::Failed(Error::BadState));
                XenbusState::Closing
            }
        };
        let out = self.fsm.on_input(FrontendInput::BackendState(input));
        self.apply(out);
    }

    /// Asks to close the channel (writes `Closing`; `Disconnect` and `Closed` follow).
    pub fn close(&mut self) {
        let out = self.fsm.on_input(FrontendInput::Close);
        self.apply(out);
    }

    /// The backend's keys as read when it connected.
    pub fn backend_keys(&self) -> &KeyMap {
        &self.peer_keys
    }

    /// Re-reads the backend's keys.
    pub fn read_backend_keys(&mut self) -> Result<&KeyMap, Error> {
        self.peer_keys = KeyMap::read(&self.mem, Side::Backend)?.0;
        Ok(&self.peer_keys)
    }

    /// Our keys; [`publish_keys`](Self::publish_keys) makes edits visible (setup publishes them
    /// too).
    pub fn keys_mut(&mut self) -> &mut KeyMap {
        &mut self.keys
    }

    /// Publishes our keys.
    pub fn publish_keys(&mut self) {
        self.keys.publish(&self.mem, Side::Frontend);
        self.notify = true;
    }

    /// Bumps our heartbeat.
    pub fn beat(&mut self) {
        let b = self.mem.load_u32(
            Side::Frontend.block() + off::end::HEARTBEAT,
            Ordering::Relaxed,
        );
        store(
            &self.mem,
            Side::Frontend,
            off::end::HEARTBEAT,
            b.wrapping_add(1),
        );
    }

    /// The backend's heartbeat counter.
    pub fn peer_heartbeat(&self) -> u32 {
        load(&self.mem, Side::Backend, off::end::HEARTBEAT)
    }

    /// A fresh allocator over the data pages.
    pub fn page_allocator(&self) -> PageAllocator {
        PageAllocator::new(self.layout.data_pages)
    }
}

impl<M: SharedMem + Clone> Frontend<M> {
    /// The frontend half of ring `index` (take it once per setup, after
    /// [`FrontendEvent::SetUp`]).
    pub fn front_ring<P: RingProtocol>(
        &self,
        index: usize,
    ) -> Result<FrontRing<Window<M>, P>, Error> {
        if !self.set_up {
            return Err(Error::NotConnected);
        }
        let d = *self.layout.rings.get(index).ok_or(Error::RingMismatch)?;
        if d.slot_bytes as usize != P::SLOT {
            return Err(Error::RingMismatch);
        }
        Ok(FrontRing::attach_at(ring_window(&self.mem, &d)?, 0)?)
    }

    /// The data area (the frontend's own view, with the same checks).
    pub fn data_area(&self) -> Result<DataArea<M>, Error> {
        DataArea::new(
            self.mem.clone(),
            self.layout.data_offset(),
            self.layout.data_pages,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use iconnect::qos::{self, LinkAdmission, NetQosRequest};
    use iconnect::{Class, Decision};
    use xen_abi::shmem::HostMem;

    type P = RawProtocol<16, 16>;

    fn config(style: FrontendStyle) -> FrontendConfig {
        FrontendConfig {
            style,
            rings: vec![
                RingSpec {
                    page_order: 0,
                    slot_bytes: 16,
                    vector: 0,
                },
                RingSpec {
                    page_order: 1,
                    slot_bytes: 8,
                    vector: 1,
                },
            ],
            data_pages: None,
        }
    }

    #[derive(Default, Debug)]
    struct Log {
        be: Vec<BackendEvent>,
        fe: Vec<FrontendEvent>,
    }

    /// Polls both ends until neither has anything to report; `on_connect` decides Connect.
    fn drive(
        be: &mut Backend<HostMem>,
        fe: &mut Frontend<HostMem>,
        mut on_connect: impl FnMut(&mut Backend<HostMem>) -> bool,
    ) -> Log {
        let mut log = Log::default();
        for _ in 0..20 {
            // A written state/generation/key rings the peer's doorbell: poll again.
            let mut quiet = !be.take_notify() & !fe.take_notify();
            while let Some(e) = be.poll() {
                quiet = false;
                log.be.push(e);
                if e == BackendEvent::Connect {
                    if on_connect(be) {
                        be.accept()
                    } else {
                        be.refuse()
                    }
                }
            }
            while let Some(e) = fe.poll() {
                quiet = false;
                log.fe.push(e);
            }
            if quiet {
                return log;
            }
        }
        panic!("no quiescence: {log:?}");
    }

    fn qos_keys(guaranteed: u64) -> KeyMap {
        let mut k = KeyMap::new();
        NetQosRequest {
            guaranteed_bps: guaranteed,
            class: Class::Realtime,
            ..Default::default()
        }
        .write(&mut k)
        .unwrap();
        k.insert("mac", "00:16:3e:00:00:01").unwrap();
        k
    }

    fn admit(link: &mut LinkAdmission) -> impl FnMut(&mut Backend<HostMem>) -> bool + '_ {
        move |be| {
            let d = match NetQosRequest::from_keys(be.frontend_keys()) {
                Ok(Some(r)) => link.admit(&r),
                Ok(None) => return true,
                Err(e) => Decision::invalid(e),
            };
            qos::write_decision(&d, be.keys_mut()).unwrap();
            be.publish_keys();
            matches!(d, Decision::Granted(_))
        }
    }

    #[test]
    fn net_handshake_negotiates_qos_and_connects_rings() {
        for backend_first in [true, false] {
            let m = HostMem::pages(16);
            let mut feature = KeyMap::new();
            feature.insert("feature-rx-copy", "1").unwrap();
            let (mut be, mut fe) = if backend_first {
                let be = Backend::new(m.clone(), feature).unwrap();
                (
                    be,
                    Frontend::new(m.clone(), config(FrontendStyle::Net), qos_keys(300)).unwrap(),
                )
            } else {
                let fe =
                    Frontend::new(m.clone(), config(FrontendStyle::Net), qos_keys(300)).unwrap();
                (Backend::new(m.clone(), feature).unwrap(), fe)
            };
            assert!(be.take_notify() && fe.take_notify());
            let mut link = LinkAdmission::new(1000);
            let log = drive(&mut be, &mut fe, admit(&mut link));
            assert_eq!(log.be, [BackendEvent::Connect], "{backend_first}");
            assert_eq!(log.fe, [FrontendEvent::SetUp, FrontendEvent::Ready]);
            assert_eq!(
                (be.state(), fe.state()),
                (XenbusState::Connected, XenbusState::Connected)
            );
            assert_eq!(link.reserved_bps(), 300);
            let Ok(Some(Decision::Granted(g))) = qos::read_decision(fe.backend_keys()) else {
                panic!("granted: {:?}", fe.backend_keys())
            };
            assert_eq!((g.guaranteed_bps, g.class), (300, Class::Realtime));
            assert_eq!(fe.backend_keys().get("feature-rx-copy"), Some("1"));
            assert_eq!(be.frontend_keys().get("mac"), Some("00:16:3e:00:00:01"));
            assert_eq!(be.layout(), Some(fe.layout()));

            // Rings and data through references.
            let mut f = fe.front_ring::<P>(0).unwrap();
            let mut b = be.back_ring::<P>(0).unwrap();
            let fdata = fe.data_area().unwrap();
            let bdata = be.data_area().unwrap();
            let mut alloc = fe.page_allocator();
            let page = alloc.alloc().unwrap();
            fdata.copy_to_page(page, 100, b"hello").unwrap();
            let mut req = [0u8; 16];
            req[..4].copy_from_slice(&page.to_le_bytes());
            f.push_request(&req).unwrap();
            f.publish_requests();
            let got = b.pop_request().unwrap().unwrap();
            let gref = u32::from_le_bytes(got[..4].try_into().unwrap());
            let mut buf = [0u8; 5];
            bdata.copy_from_page(gref, 100, &mut buf).unwrap();
            assert_eq!(&buf, b"hello");
            bdata.copy_to_page(gref, 200, b"HELLO").unwrap();
            b.push_response(&[9; 16]).unwrap();
            b.publish_responses();
            assert_eq!(f.pop_response().unwrap(), Some([9; 16]));
            fdata.copy_from_page(page, 200, &mut buf).unwrap();
            assert_eq!(&buf, b"HELLO");
            assert_eq!(be.back_ring::<RawProtocol<8, 8>>(1).unwrap().size(), 512);
            assert_eq!(be.back_ring::<P>(1).err(), Some(Error::RingMismatch));
            assert_eq!(be.back_ring::<P>(2).err(), Some(Error::RingMismatch));
        }
    }

    #[test]
    fn block_style_and_refusal() {
        let m = HostMem::pages(8);
        let mut be = Backend::new(m.clone(), KeyMap::new()).unwrap();
        let mut fe =
            Frontend::new(m.clone(), config(FrontendStyle::Block), qos_keys(5000)).unwrap();
        let mut link = LinkAdmission::new(1000);
        let log = drive(&mut be, &mut fe, admit(&mut link));
        assert_eq!(log.be, [BackendEvent::Connect, BackendEvent::Disconnect]);
        assert_eq!(
            log.fe,
            [
                FrontendEvent::SetUp,
                FrontendEvent::Disconnect,
                FrontendEvent::Closed
            ]
        );
        assert_eq!(be.state(), XenbusState::Closed);
        assert_eq!(be.keys().get(qos::ANSWER.reason), Some("over-capacity"));
        // The guest lowers its request and restarts: a fresh handshake, block style.
        fe.keys_mut().insert(qos::GUARANTEED, "10").unwrap();
        fe.restart();
        let log = drive(&mut be, &mut fe, admit(&mut link));
        assert_eq!(log.be, [BackendEvent::Connect]);
        assert_eq!(log.fe, [FrontendEvent::SetUp, FrontendEvent::Ready]);
        assert_eq!(fe.state(), XenbusState::Connected);
        assert_eq!(fe.backend_keys().get(qos::ANSWER.status), Some("granted"));
    }

    #[test]
    fn either_end_restarting_reconnects() {
        let m = HostMem::pages(8);
        let mut be = Backend::new(m.clone(), KeyMap::new()).unwrap();
        let mut fe = Frontend::new(m.clone(), config(FrontendStyle::Net), KeyMap::new()).unwrap();
        drive(&mut be, &mut fe, |_| true);
        // The guest reboots: a new Frontend on the same region.
        drop(fe);
        let mut fe = Frontend::new(m.clone(), config(FrontendStyle::Net), KeyMap::new()).unwrap();
        let log = drive(&mut be, &mut fe, |_| true);
        assert_eq!(log.be, [BackendEvent::Disconnect, BackendEvent::Connect]);
        assert_eq!(log.fe, [FrontendEvent::SetUp, FrontendEvent::Ready]);
        // The driver domain restarts.
        let g = be.generation();
        drop(be);
        let mut be = Backend::new(m.clone(), KeyMap::new()).unwrap();
        assert_eq!(be.generation(), g + 1);
        let log = drive(&mut be, &mut fe, |_| true);
        assert_eq!(log.be, [BackendEvent::Connect]);
        assert_eq!(
            log.fe,
            [
                FrontendEvent::Disconnect,
                FrontendEvent::SetUp,
                FrontendEvent::Ready
            ]
        );
        assert_eq!(
            (be.state(), fe.state()),
            (XenbusState::Connected, XenbusState::Connected)
        );
    }

    #[test]
    fn close_and_restart() {
        let m = HostMem::pages(8);
        let mut be = Backend::new(m.clone(), KeyMap::new()).unwrap();
        let mut fe = Frontend::new(m.clone(), config(FrontendStyle::Net), KeyMap::new()).unwrap();
        drive(&mut be, &mut fe, |_| true);
        fe.close();
        let log = drive(&mut be, &mut fe, |_| true);
        assert_eq!(log.be, [BackendEvent::Disconnect]);
        assert_eq!(log.fe, [FrontendEvent::Disconnect, FrontendEvent::Closed]);
        assert_eq!(
            (be.state(), fe.state()),
            (XenbusState::Closed, XenbusState::Closed)
        );
        assert_eq!(fe.front_ring::<P>(0).err(), Some(Error::NotConnected));
        assert_eq!(be.back_ring::<P>(0).err(), Some(Error::NotConnected));
        fe.restart();
        drive(&mut be, &mut fe, |_| true);
        assert_eq!(
            (be.state(), fe.state()),
            (XenbusState::Connected, XenbusState::Connected)
        );
        // The backend shuts the channel down for good.
        be.shutdown();
        let log = drive(&mut be, &mut fe, |_| true);
        assert_eq!(log.be, [BackendEvent::Disconnect, BackendEvent::Removed]);
        assert!(be.is_removed());
        assert_eq!(fe.state(), XenbusState::Closed);
    }

    #[test]
    fn hostile_frontend_fails_only_its_channel() {
        // Garbage state.
        let m = HostMem::pages(8);
        let mut be = Backend::new(m.clone(), KeyMap::new()).unwrap();
        let mut fe = Frontend::new(m.clone(), config(FrontendStyle::Net), KeyMap::new()).unwrap();
        drive(&mut be, &mut fe, |_| true);
        m.store_u32(off::FRONT_END + off::end::STATE, 77, Ordering::Release);
        assert_eq!(be.poll(), Some(BackendEvent::Failed(Error::BadState)));
        assert_eq!(be.poll(), Some(BackendEvent::Disconnect));
        assert_eq!(be.poll(), None);
        assert_eq!(be.state(), XenbusState::Closing);
        // Garbage header at connect time.
        let m = HostMem::pages(8);
        let mut be = Backend::new(m.clone(), KeyMap::new()).unwrap();
        let mut fe = Frontend::new(m.clone(), config(FrontendStyle::Block), KeyMap::new()).unwrap();
        while fe.poll().is_some() {}
        while be.poll().is_some() {}
        while fe.poll().is_some() {}
        assert_eq!(fe.state(), XenbusState::Initialised);
        m.store_u32(off::RINGS, 0, Ordering::Relaxed);
        assert_eq!(be.poll(), Some(BackendEvent::Failed(Error::BadRing)));
        assert_eq!(be.poll(), Some(BackendEvent::Disconnect));
        assert_eq!(be.state(), XenbusState::Closing);
        // Garbage keys at connect time.
        let m = HostMem::pages(8);
        let mut be = Backend::new(m.clone(), KeyMap::new()).unwrap();
        let mut fe = Frontend::new(m.clone(), config(FrontendStyle::Block), KeyMap::new()).unwrap();
        while fe.poll().is_some() {}
        while be.poll().is_some() {}
        while fe.poll().is_some() {}
        m.write_bytes(off::FRONT_KEYS, &[1, 1, b'/', b'x']);
        m.store_u32(off::FRONT_END + off::end::KEYS_LEN, 4, Ordering::Relaxed);
        assert_eq!(be.poll(), Some(BackendEvent::Failed(Error::BadKeys)));
        // The owner's own finding (e.g. a broken ring) closes the channel too.
        let m = HostMem::pages(8);
        let mut be = Backend::new(m.clone(), KeyMap::new()).unwrap();
        let mut fe = Frontend::new(m.clone(), config(FrontendStyle::Net), KeyMap::new()).unwrap();
        drive(&mut be, &mut fe, |_| true);
        be.fail();
        let log = drive(&mut be, &mut fe, |_| true);
        assert_eq!(log.be, [BackendEvent::Disconnect]);
        assert_eq!(log.fe, [FrontendEvent::Disconnect, FrontendEvent::Closed]);
    }

    #[test]
    fn a_flapping_frontend_cannot_keep_the_backends_loop_busy() {
        let m = HostMem::pages(8);
        let mut be = Backend::new(m.clone(), KeyMap::new()).unwrap();
        let mut fe = Frontend::new(m.clone(), config(FrontendStyle::Net), KeyMap::new()).unwrap();
        drive(&mut be, &mut fe, |_| true);
        // Between every two calls the frontend restarts with a new generation, answering the
        // backend, in a new state: each read finds a change.
        let blk = off::FRONT_END;
        let mut calls = 0;
        let flip = |n: u32| {
            m.store_u32(
                blk + off::end::PEER_GENERATION,
                be_gen(&m),
                Ordering::Release,
            );
            m.store_u32(
                blk + off::end::STATE,
                [3, 4][n as usize % 2],
                Ordering::Release,
            );
            m.store_u32(blk + off::end::GENERATION, 1000 + n, Ordering::Release);
        };
        fn be_gen(m: &HostMem) -> u32 {
            m.load_u32(off::BACK_END + off::end::GENERATION, Ordering::Acquire)
        }
        for round in 0..3 {
            flip(round * 100);
            while let Some(e) = be.poll() {
                calls += 1;
                assert!(calls < 50, "round {round} never ends");
                if e == BackendEvent::Connect {
                    be.accept();
                }
                flip(round * 100 + calls);
            }
        }
        assert!(calls >= 3, "every round saw the frontend");
    }

    #[test]
    fn hostile_backend_is_reported_by_the_frontend() {
        let m = HostMem::pages(8);
        let mut be = Backend::new(m.clone(), KeyMap::new()).unwrap();
        let mut fe = Frontend::new(m.clone(), config(FrontendStyle::Net), KeyMap::new()).unwrap();
        while be.poll().is_some() {}
        assert_eq!(fe.poll(), Some(FrontendEvent::SetUp));
        assert_eq!(fe.poll(), None);
        assert_eq!(be.poll(), Some(BackendEvent::Connect));
        // The backend's key area is garbage when the frontend reads it at Ready.
        m.store_u32(off::BACK_END + off::end::KEYS_LEN, 9999, Ordering::Relaxed);
        be.accept();
        let mut ev = Vec::new();
        while let Some(e) = fe.poll() {
            ev.push(e);
        }
        assert!(
            ev.contains(&FrontendEvent::Failed(Error::BadKeys)),
            "{ev:?}"
        );
        assert_eq!(fe.state(), XenbusState::Closing);
        m.store_u32(off::BACK_END + off::end::STATE, 12, Ordering::Relaxed);
        assert_eq!(fe.poll(), Some(FrontendEvent::Failed(Error::BadState)));
    }

    #[test]
    fn heartbeats_and_small_regions() {
        let m = HostMem::pages(4);
        let mut be = Backend::new(m.clone(), KeyMap::new()).unwrap();
        let mut fe = Frontend::new(m.clone(), config(FrontendStyle::Net), KeyMap::new()).unwrap();
        fe.beat();
        fe.beat();
        be.beat();
        assert_eq!((be.peer_heartbeat(), fe.peer_heartbeat()), (2, 1));
        assert_eq!(
            Backend::new(HostMem::pages(1), KeyMap::new()).err(),
            Some(Error::RegionTooSmall)
        );
        let c = config(FrontendStyle::Net);
        assert_eq!(
            Frontend::new(HostMem::pages(3), c, KeyMap::new()).err(),
            Some(Error::RegionTooSmall)
        );
    }
}
