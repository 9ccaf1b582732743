//! A watchdog over the memory the CPU reads on its own: GDT, TSS, IDT and the page tables.
//!
//! Nothing in the image writes these after boot (except [`crate::mem`] when it maps MMIO, which
//! re-seals). If something does anyway (a stray DMA, a wild hypervisor copy, an emulator fault),
//! the next interrupt or exception cannot be delivered and the CPU resets without a word: under
//! Xen a "triple fault" with no console output of ours. So the image fingerprints the tables once
//! they are final and re-checks them at most every [`CHECK_EVERY_MS`] from the idle path
//! ([`crate::event::wait_until`]); a changed region is reported as `ICONNECT-FAULT
//! tables-corrupted region=<name> ...` and the domain ends with the exception code, while it can
//! still print.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::arch::cpu_tables;

/// How often the idle path re-checks the tables.
pub const CHECK_EVERY_MS: u64 = 500;

/// A region to watch: a name and its bytes' address and length (8-byte multiples).
type Region = (&'static str, *const u64, usize);

const MAX_REGIONS: usize = 12;

static SEALED: AtomicBool = AtomicBool::new(false);
static HASHES: [AtomicU64; MAX_REGIONS] = [const { AtomicU64::new(0) }; MAX_REGIONS];
static NEXT_CHECK_NS: AtomicU64 = AtomicU64::new(0);
static CHECKS: AtomicU64 = AtomicU64::new(0);

const PRESENT: u64 = 1;
const HUGE: u64 = 1 << 7;
/// Accessed and Dirty: the CPU sets them in entries it uses; they are not a change.
const ACCESSED_DIRTY: u64 = 0x60;

/// The regions, in a fixed order: the CPU tables, the boot PML4/PDPT/PDs, and every 4 KiB page
/// table the boot PDs point to (the stack-guard split, MMIO splits).
fn regions(out: &mut [Option<Region>; MAX_REGIONS]) {
    let mut n = 0;
    let mut push = |r: Region| {
        if n < MAX_REGIONS {
            out[n] = Some(r);
            n += 1;
        }
    };
    for (name, ptr, len) in cpu_tables::regions() {
        push((name, ptr, len));
    }
    let (pml4, pdpt, pd) = crate::mem::boot_tables();
    push(("pml4", pml4, 512));
    push(("pdpt", pdpt, 512));
    push(("pd", pd, 2048));
    for i in 0..2048 {
        // SAFETY: in bounds of the boot PDs (2048 entries, identity-mapped .bss); read-only.
        let e = unsafe { pd.add(i).read_volatile() };
        if e & PRESENT != 0 && e & HUGE == 0 {
            push(("pt", crate::mem::phys_to_virt(e & 0x000f_ffff_ffff_f000) as *const u64, 512));
        }
    }
}

/// FNV-1a over 64-bit words (Accessed/Dirty bits masked for page tables).
fn hash(name: &str, ptr: *const u64, words: usize) -> u64 {
    let mask = if matches!(name, "pml4" | "pdpt" | "pd" | "pt") { !ACCESSED_DIRTY } else { !0 };
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for i in 0..words {
        // SAFETY: `regions` names only our own static tables and page tables (identity-mapped,
        // `words` long); volatile reads, no reference is formed.
        let w = unsafe { ptr.add(i).read_volatile() } & mask;
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Records the tables as they are now as the truth. Called once boot set them up, and by
/// [`crate::mem`] after it changed a mapping (interrupts may be on: only the main flow calls it).
pub(crate) fn seal() {
    let mut rs = [None; MAX_REGIONS];
    regions(&mut rs);
    for (slot, r) in HASHES.iter().zip(rs.iter()) {
        let h = r.map_or(0, |(name, ptr, len)| hash(name, ptr, len));
        slot.store(h, Ordering::Relaxed);
    }
    SEALED.store(true, Ordering::Release);
}

/// Re-checks the tables (at most every [`CHECK_EVERY_MS`]); reports and ends the domain if a
/// region changed. For the main flow only (never from an interrupt handler).
pub(crate) fn check_due(now_ns: u64) {
    if !SEALED.load(Ordering::Acquire) || now_ns < NEXT_CHECK_NS.load(Ordering::Relaxed) {
        return;
    }
    NEXT_CHECK_NS.store(now_ns + CHECK_EVERY_MS * 1_000_000, Ordering::Relaxed);
    if let Err((name, index, now)) = verify() {
        let was = HASHES.get(index).map_or(0, |h| h.load(Ordering::Relaxed));
        crate::console::emergency(format_args!(
            "\nICONNECT-FAULT tables-corrupted region={name} index={index} hash={now:#018x} sealed={was:#018x} checks={}\n",
            CHECKS.load(Ordering::Relaxed)
        ));
        crate::exit_raw(crate::EXIT_EXCEPTION);
    }
}

/// Compares every region with its sealed fingerprint: the first that differs, if any.
pub fn verify() -> Result<(), (&'static str, usize, u64)> {
    CHECKS.fetch_add(1, Ordering::Relaxed);
    let mut rs = [None; MAX_REGIONS];
    regions(&mut rs);
    for (i, (slot, r)) in HASHES.iter().zip(rs.iter()).enumerate() {
        let h = r.map_or(0, |(name, ptr, len)| hash(name, ptr, len));
        if h != slot.load(Ordering::Relaxed) {
            return Err((r.map_or("region-list", |(name, _, _)| name), i, h));
        }
    }
    Ok(())
}

/// When the next check is due (ns on [`crate::time`]'s clock); `u64::MAX` until sealed.
pub(crate) fn next_check_ns() -> u64 {
    if SEALED.load(Ordering::Acquire) { NEXT_CHECK_NS.load(Ordering::Relaxed) } else { u64::MAX }
}

/// How many checks ran so far.
pub fn checks() -> u64 {
    CHECKS.load(Ordering::Relaxed)
}
