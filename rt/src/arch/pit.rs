//! The legacy PIT (8254), used once at boot to measure the TSC frequency, and the 8259 PICs,
//! remapped and masked so that they never deliver.

use super::{inb, outb};

/// PIT input clock.
pub const PIT_HZ: u64 = 1_193_182;

/// Counts TSC ticks over `ticks` PIT periods using channel 2 in one-shot mode.
/// Returns `None` when no PIT answers (e.g. a Xen PVH domain).
pub fn measure_tsc(ticks: u16, mut during: impl FnMut()) -> Option<u64> {
    // SAFETY: ports 0x61, 0x42 and 0x43 belong to the PIT/speaker; no memory is involved.
    unsafe {
        let gate = inb(0x61);
        if gate == 0xff {
            return None;
        }
        outb(0x61, (gate & !0x02) | 0x01); // gate high, speaker off
        outb(0x43, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0
        outb(0x42, ticks as u8);
        outb(0x42, (ticks >> 8) as u8);
        let start = super::rdtsc();
        during();
        let mut spins: u64 = 0;
        while inb(0x61) & 0x20 == 0 {
            spins += 1;
            if spins > 50_000_000 {
                return None;
            }
        }
        Some(super::rdtsc() - start)
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
