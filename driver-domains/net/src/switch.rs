//! The data plane of the driver domain: guest ports (one `netback` engine each), the uplink NIC
//! and the domain's own stack, joined by `netswitch`'s bridge and QoS scheduler.
//!
//! Platform-independent: a guest port is any [`Netback`] over any [`SharedMem`] with any
//! [`GrantAccess`] (an iConnect channel's rings and data area on QEMU, see
//! [`crate::chanport`]; grant-mapped rings and grant copies on Xen). The uplink and the stack
//! are reached through [`Wire`], so host tests run the real engines with fakes for the NIC.
//!
//! Flow:
//! * uplink and stack frames enter with [`Switch::input`] and are forwarded at once (the RX
//!   direction of guests is not scheduled: it is bounded by each guest's RX queue and posted
//!   buffers; frames beyond are dropped and counted, like a NIC without buffers). A frame for
//!   a guest with posted buffers and nothing queued is copied straight from the ingress buffer
//!   (e.g. the uplink's receive buffer) into the guest's buffer: one copy;
//! * guest frames are *pulled* by [`Switch::pump`]: the scheduler picks a port, one frame is
//!   taken from its TX ring (netback `poll_tx` with a budget of one) and forwarded; ports not
//!   picked keep their frames in their rings (back-pressure into the guest);
//! * [`Switch::flush`] copies queued frames into guests' posted RX buffers and publishes every
//!   response of the round (one publish and at most one notification per guest per round);
//! * the owner rings doorbells for [`Switch::take_notify`] and tears down ports listed by
//!   [`Switch::take_failed`] (a fatal protocol error of one guest never touches another).
//!
//! Ports: [`UPLINK`] = 0, guests 1..=62, [`STACK`] = 63.
//!
//! ## The RX direction (frames *to* guests): what bounds one guest's share
//! It is not QoS-scheduled (the uplink NIC has one receive queue: what arrives must be looked at
//! in arrival order), but no guest can take the others' RX work or buffers:
//! * the work per frame is one bridge lookup and one copy into *that* guest's posted buffers;
//!   a guest without buffers costs one more copy into its own bounded queue
//!   (`chanport::RX_LIMITS`: 64 frames / 128 KiB), then nothing (drops counted against it);
//! * [`Switch::flush`] moves at most [`RX_BUDGET`] queued frames per guest per round, every
//!   guest every round, so a guest with a deep queue delays the others by at most one budget;
//! * a frame to one guest never waits behind another guest's frames (no shared queue after the
//!   bridge), and a guest that stops reading only fills its own queue (tested in
//!   `tests/switch_guests.rs`).
//!
//! What is *not* bounded: the share of the uplink's arrivals. A host flooding one guest makes
//! net-dd spend its receive work on that guest in proportion to the flood. Policing that needs a
//! per-guest RX ceiling applied at the bridge lookup, *before* the copy (a token bucket per
//! destination port, dropping early), and, to protect a guarantee under overload, taking uplink
//! frames in smaller budgets so the guest pulls (TX) still get their turn; not done yet.

use alloc::vec::Vec;

use iconnect::Decision;
use iconnect::qos::{LinkAdmission, NetQosGrant, NetQosRequest};
use netback::{GrantAccess, Netback, RxMeta};
use netswitch::{Bridge, DropReason, Forward, Mac, Pick, PortId, PortQos, Scheduler};
use xen_abi::shmem::SharedMem;

/// The uplink NIC's port.
pub const UPLINK: PortId = 0;
/// The domain's own stack's port.
pub const STACK: PortId = (netswitch::MAX_PORTS - 1) as PortId;
/// Largest number of guest ports.
pub const MAX_GUESTS: usize = netswitch::MAX_PORTS - 2;
/// Frames pulled from guests per [`Switch::pump`] call before it yields to the owner's other
/// work (uplink receive, stack).
pub const PUMP_BUDGET: usize = 64;
/// Frames delivered into one guest's RX buffers per [`Switch::flush`].
pub const RX_BUDGET: usize = 64;
/// Bridge capacity for learnt MACs.
pub const LEARNT_MACS: usize = 256;
/// How long the uplink may stay busy before [`Switch::pump`] asks to be polled again (ns).
pub const UPLINK_RETRY_NS: u64 = 50_000;

/// Port number of guest `i` (0-based; its channel's position).
pub fn guest_port(i: usize) -> Option<PortId> {
    (i < MAX_GUESTS).then_some(i as PortId + 1)
}

/// The non-guest ends of the switch, provided by the owner.
pub trait Wire {
    /// Whether the uplink can take a frame now.
    fn uplink_ready(&mut self) -> bool;
    /// Sends a frame out of the uplink; `false` if it was dropped.
    fn uplink_send(&mut self, frame: &[u8]) -> bool;
    /// Hands a frame to the domain's stack.
    fn stack_deliver(&mut self, frame: &[u8]);
}

/// Every key a QoS decision may write into the backend's keys (`iconnect::qos::write_decision`):
/// remove them all before writing a new decision, so no stale answer is left behind.
pub const QOS_ANSWER_KEYS: [&str; 7] = [
    iconnect::qos::ANSWER.status,
    iconnect::qos::ANSWER.reason,
    iconnect::qos::ANSWER.error_key,
    iconnect::qos::GRANTED_GUARANTEED,
    iconnect::qos::GRANTED_CEILING,
    iconnect::qos::GRANTED_BURST,
    iconnect::qos::GRANTED_CLASS,
];

/// The QoS outcome of a guest port: `None` if it asked for nothing (best effort).
pub type QosDecision = Option<Decision<NetQosGrant>>;

/// The marker word of a QoS outcome: `granted`, `refused` or `none`.
pub fn qos_word(d: &QosDecision) -> &'static str {
    match d {
        None => "none",
        Some(Decision::Granted(_)) => "granted",
        Some(Decision::Refused { .. }) => "refused",
    }
}

/// Counters of a guest port (TX = from the guest, RX = to the guest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Frames taken from the guest's TX ring and forwarded.
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames copied into the guest's RX buffers.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames of this guest dropped: spoofed sources, malformed or failed TX packets, frames
    /// for it that did not fit its RX queue, could not be checksummed or copied.
    pub drops: u64,
    /// Of those: spoofed sources.
    pub spoofed: u64,
}

struct Vif<M: SharedMem, G> {
    nb: Netback<M>,
    grants: G,
    mac: Mac,
    qos: QosDecision,
    grant: Option<NetQosGrant>,
    rx_dirty: bool,
    notify_tx: bool,
    notify_rx: bool,
    failed: Option<netback::Error>,
    /// Drops counted by the switch (not by netback).
    drops: u64,
    /// Frames (and bytes) taken from the guest's TX ring.
    tx_frames: u64,
    tx_bytes: u64,
}

/// Counters of the switch itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwitchCounters {
    /// Frames sent out of the uplink.
    pub uplink_tx: u64,
    /// Frames the uplink could not take.
    pub uplink_drops: u64,
    /// Frames handed to the stack.
    pub stack_rx: u64,
    /// Frames the bridge dropped (any reason, any port).
    pub bridge_drops: u64,
}

/// The switch.
pub struct Switch<M: SharedMem, G: GrantAccess> {
    bridge: Bridge,
    sched: Scheduler,
    admission: LinkAdmission,
    vifs: Vec<Option<Vif<M, G>>>,
    scratch: Vec<u8>,
    failed: Vec<(PortId, netback::Error)>,
    counters: SwitchCounters,
}

/// What [`Switch::attach`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachError {
    /// The port number is not a guest port.
    BadPort,
    /// The port is attached already.
    InUse,
    /// The MAC is unusable (`bad-mac`) or another port has it (`mac-in-use`).
    Mac(netswitch::Error),
}

impl AttachError {
    /// Short reason for markers and keys.
    pub fn reason(&self) -> &'static str {
        match self {
            AttachError::BadPort => "bad-port",
            AttachError::InUse => "port-in-use",
            AttachError::Mac(netswitch::Error::MacInUse) => "mac-in-use",
            AttachError::Mac(_) => "bad-mac",
        }
    }
}

impl<M: SharedMem, G: GrantAccess> Switch<M, G> {
    /// A switch for an uplink of `link_bps` (admission and egress shaping) with the domain's
    /// stack at `stack_mac`.
    pub fn new(link_bps: u64, stack_mac: Mac, now_ns: u64) -> Self {
        let mut bridge = Bridge::new(LEARNT_MACS, netswitch::bridge::DEFAULT_AGE_NS);
        // Fresh bridge, valid ports: these cannot fail (a bad stack MAC is unpinned instead).
        let _ = bridge.add_port(UPLINK, None);
        if bridge.add_port(STACK, Some(stack_mac)).is_err() {
            let _ = bridge.add_port(STACK, None);
        }
        Self {
            bridge,
            sched: Scheduler::new(link_bps, now_ns),
            admission: LinkAdmission::new(link_bps),
            vifs: (0..netswitch::MAX_PORTS).map(|_| None).collect(),
            scratch: Vec::with_capacity(2048),
            failed: Vec::new(),
            counters: SwitchCounters::default(),
        }
    }

    /// The link rate.
    pub fn link_bps(&self) -> u64 {
        self.sched.link_bps()
    }

    /// Sum of granted guarantees.
    pub fn reserved_bps(&self) -> u64 {
        self.admission.reserved_bps()
    }

    /// Switch counters.
    pub fn counters(&self) -> SwitchCounters {
        SwitchCounters {
            bridge_drops: self.bridge.stats().dropped,
            ..self.counters
        }
    }

    /// Attaches a guest: its engine, its buffers, the MAC it announced (pinned: it may send
    /// with no other) and its QoS request (`Ok(None)`: none; `Err`: malformed, refused as
    /// `invalid-request`). Returns the decision to write into the backend's keys. A refused
    /// request still attaches the port, best effort.
    pub fn attach(
        &mut self,
        port: PortId,
        nb: Netback<M>,
        grants: G,
        mac: Mac,
        request: Result<Option<NetQosRequest>, iconnect::Error>,
        now_ns: u64,
    ) -> Result<QosDecision, AttachError> {
        if port == UPLINK || port == STACK || usize::from(port) >= netswitch::MAX_PORTS {
            return Err(AttachError::BadPort);
        }
        if self.vifs[usize::from(port)].is_some() {
            return Err(AttachError::InUse);
        }
        self.bridge
            .add_port(port, Some(mac))
            .map_err(AttachError::Mac)?;
        let (decision, grant, qos) = self.admit(request);
        if self.sched.add_port(port, qos, now_ns).is_err() {
            // Cannot happen (the slot was free); undo rather than half-attach.
            self.bridge.remove_port(port);
            if let Some(g) = grant {
                self.admission.release(&g);
            }
            return Err(AttachError::InUse);
        }
        // The guest may have queued requests before we attached.
        self.sched.set_backlog(port, true);
        self.vifs[usize::from(port)] = Some(Vif {
            nb,
            grants,
            mac,
            qos: decision,
            grant,
            rx_dirty: true,
            notify_tx: false,
            notify_rx: false,
            failed: None,
            drops: 0,
            tx_frames: 0,
            tx_bytes: 0,
        });
        Ok(decision)
    }

    /// Admission control for a request: the decision, the reserved grant, the scheduler's rates.
    fn admit(
        &mut self,
        request: Result<Option<NetQosRequest>, iconnect::Error>,
    ) -> (QosDecision, Option<NetQosGrant>, PortQos) {
        let decision = match request {
            Ok(None) => None,
            Ok(Some(r)) => Some(self.admission.admit(&r)),
            Err(e) => Some(Decision::invalid(e)),
        };
        let grant = match decision {
            Some(Decision::Granted(g)) => Some(g),
            _ => None,
        };
        let qos = grant.map_or(PortQos::best_effort(self.link_bps()), |g| {
            PortQos::from_grant(&g)
        });
        (decision, grant, qos)
    }

    /// Decides again on an attached guest's QoS request (a Xen guest may write its keys while
    /// connected): the old guarantee is released, the new request admitted (or refused: best
    /// effort) and the scheduler takes the new rates. Returns the decision to write into the
    /// backend's keys; `None` if no guest is attached at `port`.
    pub fn requalify(
        &mut self,
        port: PortId,
        request: Result<Option<NetQosRequest>, iconnect::Error>,
        now_ns: u64,
    ) -> Option<QosDecision> {
        let old = self.vifs.get_mut(usize::from(port))?.as_mut()?.grant.take();
        if let Some(g) = old {
            self.admission.release(&g);
        }
        let (decision, grant, qos) = self.admit(request);
        self.sched.remove_port(port);
        // The slot was just freed: this cannot fail.
        let _ = self.sched.add_port(port, qos, now_ns);
        self.sched.set_backlog(port, true);
        let v = self.vifs.get_mut(usize::from(port))?.as_mut()?;
        v.qos = decision;
        v.grant = grant;
        Some(decision)
    }

    /// Detaches a guest (disconnect, failure): forgets its MAC, releases its guarantee. Returns
    /// its final counters.
    pub fn detach(&mut self, port: PortId) -> Option<PortCounters> {
        let c = self.port_counters(port);
        let vif = self.vifs.get_mut(usize::from(port))?.take()?;
        self.bridge.remove_port(port);
        self.sched.remove_port(port);
        if let Some(g) = vif.grant {
            self.admission.release(&g);
        }
        c
    }

    /// Whether a guest is attached at `port`.
    pub fn is_attached(&self, port: PortId) -> bool {
        self.vif(port).is_some()
    }

    fn vif(&self, port: PortId) -> Option<&Vif<M, G>> {
        self.vifs.get(usize::from(port))?.as_ref()
    }

    /// The guest's MAC and QoS outcome.
    pub fn port_info(&self, port: PortId) -> Option<(Mac, QosDecision)> {
        self.vif(port).map(|v| (v.mac, v.qos))
    }

    /// Counters of a guest port.
    pub fn port_counters(&self, port: PortId) -> Option<PortCounters> {
        let v = self.vif(port)?;
        let s = v.nb.stats();
        Some(PortCounters {
            tx_frames: v.tx_frames,
            tx_bytes: v.tx_bytes,
            rx_frames: s.rx_packets,
            rx_bytes: s.rx_bytes,
            drops: v.drops
                + self.bridge.spoofed(port)
                + s.tx_malformed
                + s.tx_unsupported
                + s.tx_copy_errors
                + s.rx_queue_full
                + s.rx_bad_size
                + s.rx_csum_errors
                + s.rx_copy_errors,
            spoofed: self.bridge.spoofed(port),
        })
    }

    /// A doorbell from the guest at `port`: TX requests or RX buffers may be waiting.
    pub fn doorbell(&mut self, port: PortId) {
        if let Some(Some(v)) = self.vifs.get_mut(usize::from(port)) {
            v.rx_dirty = true;
            self.sched.set_backlog(port, true);
        }
    }

    /// A frame from the uplink or the stack.
    pub fn input(&mut self, ingress: PortId, frame: &[u8], now_ns: u64, wire: &mut impl Wire) {
        self.forward(ingress, frame, RxMeta::default(), now_ns, wire);
    }

    fn forward(
        &mut self,
        ingress: PortId,
        frame: &[u8],
        meta: RxMeta,
        now_ns: u64,
        wire: &mut impl Wire,
    ) {
        match self.bridge.forward(ingress, frame, now_ns) {
            Forward::To(p) => self.deliver(ingress, p, frame, meta, now_ns, wire),
            Forward::Flood(set) => {
                for p in set.iter() {
                    self.deliver(ingress, p, frame, meta, now_ns, wire);
                }
            }
            Forward::Drop(DropReason::Spoofed) => {} // counted per port by the bridge
            Forward::Drop(_) => {
                if let Some(Some(v)) = self.vifs.get_mut(usize::from(ingress)) {
                    v.drops += 1;
                }
            }
        }
    }

    fn deliver(
        &mut self,
        ingress: PortId,
        to: PortId,
        frame: &[u8],
        meta: RxMeta,
        now_ns: u64,
        wire: &mut impl Wire,
    ) {
        match to {
            UPLINK => {
                if wire.uplink_send(frame) {
                    self.counters.uplink_tx += 1;
                    if ingress == STACK {
                        // Guest frames were charged when they were picked.
                        self.sched.charge_link(frame.len(), now_ns);
                    }
                } else {
                    self.counters.uplink_drops += 1;
                }
            }
            STACK => {
                self.counters.stack_rx += 1;
                wire.stack_deliver(frame);
            }
            p => {
                let Some(Some(v)) = self.vifs.get_mut(usize::from(p)) else {
                    return;
                };
                // One copy when the guest's buffers are posted (straight from the ingress
                // buffer); queued otherwise. Either way `flush` publishes and notifies.
                match v.nb.push_rx(&mut v.grants, frame, meta) {
                    Ok(_) => v.rx_dirty = true,
                    Err(e) if e.is_fatal() => {
                        if v.failed.is_none() {
                            v.failed = Some(e);
                            self.failed.push((p, e));
                        }
                    }
                    Err(_) => {} // counted by netback (queue full, size, checksum)
                }
            }
        }
    }

    /// Pulls and forwards guest frames as the scheduler allows (at most [`PUMP_BUDGET`]).
    /// Returns when to call again: `Some(now_ns)` if the budget ran out, `Some(t)` when the
    /// scheduler or the uplink wait, `None` when no guest has frames waiting.
    pub fn pump(&mut self, now_ns: u64, wire: &mut impl Wire) -> Option<u64> {
        let now_us = now_ns / 1000;
        for _ in 0..PUMP_BUDGET {
            if !wire.uplink_ready() {
                return Some(now_ns + UPLINK_RETRY_NS);
            }
            let g = match self.sched.pick(now_ns) {
                Pick::Go(g) => g,
                Pick::WaitUntil(t) => return Some(t),
                Pick::Idle => return None,
            };
            // Not cleared: it becomes netback's next frame buffer, which only zero-fills growth.
            let mut frame = core::mem::take(&mut self.scratch);
            let mut meta = None;
            let Some(Some(v)) = self.vifs.get_mut(usize::from(g.port)) else {
                self.sched.complete(g, 0, false);
                self.scratch = frame;
                continue;
            };
            let res = v.nb.poll_tx(now_us, &mut v.grants, 1, |f| {
                meta = Some(RxMeta::from_tx(&f));
            });
            if meta.is_some() {
                // The frame netback assembled, taken without a copy.
                v.nb.swap_tx_buffer(&mut frame);
            }
            match res {
                Ok(p) => {
                    v.notify_tx |= p.notify;
                    let n = if meta.is_some() { frame.len() } else { 0 };
                    if n > 0 {
                        v.tx_frames += 1;
                        v.tx_bytes += n as u64;
                    }
                    self.sched.complete(g, n, p.more);
                }
                Err(e) => {
                    self.sched.complete(g, 0, false);
                    if e.is_fatal() && v.failed.is_none() {
                        v.failed = Some(e);
                        self.failed.push((g.port, e));
                    }
                }
            }
            if let Some(mut m) = meta {
                if m.csum_blank {
                    // The uplink and the stack take only complete checksums; other guests get
                    // a completed one too (simplest; netback would complete it for them).
                    if netback::csum::fill_l4_checksum(&mut frame).is_ok() {
                        m = RxMeta {
                            csum_blank: false,
                            data_validated: true,
                        };
                        self.forward(g.port, &frame, m, now_ns, wire);
                    } else if let Some(Some(v)) = self.vifs.get_mut(usize::from(g.port)) {
                        v.drops += 1;
                    }
                } else {
                    self.forward(g.port, &frame, m, now_ns, wire);
                }
            }
            self.scratch = frame;
        }
        Some(now_ns)
    }

    /// Delivers queued frames into the guests' posted RX buffers. Returns whether a guest has
    /// more queued frames and buffers for them (call again without waiting).
    pub fn flush(&mut self) -> bool {
        let mut more = false;
        for (i, slot) in self.vifs.iter_mut().enumerate() {
            let Some(v) = slot.as_mut() else { continue };
            if !v.rx_dirty || v.failed.is_some() {
                continue;
            }
            v.rx_dirty = false;
            match v.nb.poll_rx(&mut v.grants, RX_BUDGET) {
                Ok(p) => {
                    v.notify_rx |= p.notify;
                    if p.queued > 0 && !p.waiting_for_buffers {
                        v.rx_dirty = true;
                        more = true;
                    }
                }
                Err(e) => {
                    if v.failed.is_none() {
                        v.failed = Some(e);
                        self.failed.push((i as PortId, e));
                    }
                }
            }
        }
        more
    }

    /// Whether the guest at `port` must be notified: `(tx, rx)` = its TX ring (responses)
    /// and its RX ring (frames). Clears the flags.
    pub fn take_notify(&mut self, port: PortId) -> (bool, bool) {
        match self.vifs.get_mut(usize::from(port)) {
            Some(Some(v)) => (
                core::mem::take(&mut v.notify_tx),
                core::mem::take(&mut v.notify_rx),
            ),
            _ => (false, false),
        }
    }

    /// Guests whose engine hit a fatal protocol error since the last call: detach them and
    /// close their channel.
    pub fn take_failed(&mut self) -> Vec<(PortId, netback::Error)> {
        core::mem::take(&mut self.failed)
    }
}
