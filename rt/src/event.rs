//! Events: the one place a domain sleeps. An event loop polls its work with the current time, then
//! calls [`wait_until`] with its next deadline; any device interrupt ([`signal`]) or the deadline
//! wakes it.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::arch::{self, apic};
use crate::time::{self, Instant};

static PENDING: AtomicBool = AtomicBool::new(false);
static SIGNALS: AtomicU64 = AtomicU64::new(0);
static APIC_HZ: AtomicU64 = AtomicU64::new(0);

pub(crate) fn set_apic_hz(hz: u64) {
    APIC_HZ.store(hz.max(1), Ordering::Relaxed);
}

/// The calibrated APIC timer frequency.
pub fn apic_hz() -> u64 {
    APIC_HZ.load(Ordering::Relaxed)
}

/// Marks an event pending: the current or next [`wait_until`] returns.
pub fn signal() {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
    PENDING.store(true, Ordering::Release);
}

/// How many times [`signal`] was called since boot (to tell an early wake-up caused by an event
/// from one that is not).
pub fn signal_count() -> u64 {
    SIGNALS.load(Ordering::Relaxed)
}

/// Sleeps (HLT) until an event is signalled or `deadline` passes; returns at once if an event was
/// signalled since the last call. `None` waits for an event only.
pub fn wait_until(deadline: Option<Instant>) {
    loop {
        arch::cli();
        if PENDING.swap(false, Ordering::AcqRel) {
            arch::sti();
            return;
        }
        let now = time::now();
        if let Some(d) = deadline
            && now >= d
        {
            apic::arm_timer(0);
            arch::sti();
            return;
        }
        // The table watchdog runs from here, so even a domain that idles for long checks its
        // tables every CHECK_EVERY_MS: the timer wakes it for that (and it sleeps on).
        crate::integrity::check_due(now.as_nanos());
        let check_at = Instant::from_nanos(crate::integrity::next_check_ns());
        let wake = deadline.map_or(check_at, |d| d.min(check_at));
        let ns = if wake > now { (wake - now).as_nanos() } else { 0 };
        let ticks = ns * u128::from(apic_hz()) / 1_000_000_000;
        apic::arm_timer(ticks.clamp(1, u128::from(u32::MAX)) as u32);
        // Atomically enable interrupts and halt: an interrupt between the checks above and the HLT
        // is delivered after HLT starts, so it cannot be lost.
        arch::sti_hlt();
    }
}
