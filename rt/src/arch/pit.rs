//! The legacy PIT (8254), used once at boot to measure the TSC frequency, and the 8259 PICs,
//! remapped and masked so that they never deliver.

use super::{inb, outb};

/// PIT input clock.
pub const PIT_HZ: u64 = 1_193_182;

/// One reading of PIT channel 2's counter, bracketed by two TSC reads.
#[derive(Clone, Copy)]
struct Pair {
    /// TSC halfway between the two reads around the latch.
    tsc: u64,
    /// TSC ticks between those two reads: the uncertainty of `tsc` for this `count`.
    spread: u64,
    /// Counter value (counts down).
    count: u16,
}

/// Reads channel 2's counter `tries` times and keeps the reading with the tightest TSC bracket
/// (a read during which the vCPU was descheduled has a wide one and loses).
///
/// # Safety
/// Channel 2 must be running (programmed by [`measure_tsc`]).
unsafe fn tight_pair(tries: usize) -> Pair {
    let mut best = Pair { tsc: 0, spread: u64::MAX, count: 0 };
    for _ in 0..tries {
        let t0 = super::rdtsc();
        // SAFETY: the caller guarantees channel 2 is programmed; 0x43/0x42 are the PIT's ports.
        let count = unsafe {
            outb(0x43, 0b1000_0000); // latch channel 2's count
            let lo = inb(0x42);
            let hi = inb(0x42);
            u16::from(lo) | (u16::from(hi) << 8)
        };
        let t1 = super::rdtsc();
        let spread = t1.wrapping_sub(t0);
        if spread < best.spread {
            best = Pair { tsc: t0 + spread / 2, spread, count };
        }
    }
    best
}

/// Measures the TSC frequency against PIT channel 2 over about `ticks` PIT periods (at most
/// 60000, ~50 ms). Returns `(tsc_hz, uncertainty_ppm)`, or `None` when no PIT answers (e.g. a
/// Xen PVH domain).
///
/// Only the two ends of the window matter: each is a (TSC, counter) pair read back to back, the
/// tightest of several, so a vCPU descheduled *during* the window (common under TCG on a loaded
/// host, where both clocks follow the host's real time) does not skew the result, and a pair
/// whose read was interrupted is discarded by its wide bracket. The uncertainty is the two
/// brackets relative to the window.
pub fn measure_tsc(ticks: u16) -> Option<(u64, u64)> {
    let ticks = ticks.min(60_000);
    // SAFETY: ports 0x61, 0x42 and 0x43 belong to the PIT/speaker; no memory is involved.
    unsafe {
        let gate = inb(0x61);
        if gate == 0xff {
            return None;
        }
        outb(0x61, (gate & !0x02) | 0x01); // gate high, speaker off
        outb(0x43, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0 (count down once)
        outb(0x42, 0xff);
        outb(0x42, 0xff);
        // Let the counter load (it starts on the next input clock).
        let mut first = tight_pair(1);
        let mut spins: u64 = 0;
        while first.count == 0xffff || first.count == 0 {
            spins += 1;
            if spins > 1_000_000 {
                return None;
            }
            first = tight_pair(1);
        }
        let a = tight_pair(8);
        let target = a.count.saturating_sub(ticks);
        spins = 0;
        loop {
            let now = tight_pair(1);
            // Mode 0 counts down to 0 and then wraps to 0xffff: stop at the target or a wrap.
            if now.count <= target || now.count > a.count {
                break;
            }
            spins += 1;
            if spins > 50_000_000 {
                return None;
            }
        }
        let b = tight_pair(8);
        // In mode 0, OUT (port 0x61 bit 5) rises when the count reaches zero and stays high
        // until the channel is reprogrammed: high here means the counter wrapped at least once
        // (the vCPU was away for ~55 ms or more), so the count difference is ambiguous.
        if inb(0x61) & 0x20 != 0 || b.count >= a.count {
            return None;
        }
        let elapsed_pit = u64::from(a.count - b.count);
        let elapsed_tsc = b.tsc.checked_sub(a.tsc)?;
        let hz = (u128::from(elapsed_tsc) * u128::from(PIT_HZ) / u128::from(elapsed_pit)) as u64;
        let ppm = (u128::from(a.spread + b.spread) * 1_000_000 / u128::from(elapsed_tsc.max(1))) as u64;
        Some((hz, ppm))
    }
}

/// Remaps both 8259 PICs to vectors 32..48 and masks every line.
pub fn disable_pic() {
    // SAFETY: the 8259 command/data ports; the standard ICW1-4 sequence followed by full masks.
    unsafe {
        outb(0x20, 0x11);
        outb(0xa0, 0x11);
        outb(0x21, 32);
        outb(0xa1, 40);
        outb(0x21, 4);
        outb(0xa1, 2);
        outb(0x21, 0x01);
        outb(0xa1, 0x01);
        outb(0x21, 0xff);
        outb(0xa1, 0xff);
    }
}
