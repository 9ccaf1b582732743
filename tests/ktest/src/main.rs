//! `ktest`: the runtime's in-target tests. Booted by `cargo xtask test`; the host reads the
//! `KTEST-*` lines and the exit status. `fault=page` instead makes a deliberate page fault, which
//! the runtime must report with its address; `only=<substring>` runs a subset.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};
use core::time::Duration;

use rt::ktest::Test;
use rt::{ensure, ExitCode};

rt::entry!(main);

/// Address the page-fault test reads: never mapped (above 4 GiB, below the MMIO windows).
const UNMAPPED: u64 = 0xdeadbeef000;

fn main(boot: &'static rt::BootInfo) -> ExitCode {
    if rt::xen().is_some()
        && let Err(e) = xen_domain::console::install()
    {
        log::error!("PV console unavailable: {e:?}");
    }
    rt::ready("ktest");
    if rt::cmdline::get(boot.cmdline, "fault") == Some("page") {
        log::info!("reading {UNMAPPED:#x} on purpose");
        // SAFETY: deliberately unsound: this read must fault, and the runtime must report it.
        let v = unsafe { core::ptr::read_volatile(UNMAPPED as *const u64) };
        log::error!("read of an unmapped address returned {v:#x}");
        return ExitCode::Failure;
    }
    if rt::cmdline::get(boot.cmdline, "fault") == Some("stack") {
        log::info!("recursing until the stack overflows, on purpose");
        let depth = recurse(0);
        log::error!("recursion returned {depth}: the stack did not overflow");
        return ExitCode::Failure;
    }
    if rt::cmdline::get(boot.cmdline, "fault") == Some("tables") {
        scribble_idt();
        log::info!("changed IDT entry {SCRIBBLED_VECTOR} on purpose; idling until the watchdog notices");
        let until = rt::time::now() + core::time::Duration::from_secs(5);
        while rt::time::now() < until {
            rt::event::wait_until(Some(until));
        }
        log::error!("the table watchdog did not notice a changed IDT entry in 5 s");
        return ExitCode::Failure;
    }
    let filter = rt::cmdline::get(boot.cmdline, "only");
    if rt::xen().is_some() {
        let all: Vec<&Test> = TESTS.iter().chain(XEN_TESTS).collect();
        let tests: Vec<Test> = all.into_iter().map(|t| Test { name: t.name, run: t.run }).collect();
        return rt::ktest::run(&tests, filter);
    }
    rt::ktest::run(TESTS, filter)
}

/// An IDT vector nothing uses (above the device vectors, below the spurious vector).
const SCRIBBLED_VECTOR: usize = 250;

/// Changes the (unused) gate of [`SCRIBBLED_VECTOR`] behind rt's back, as a stray write would.
fn scribble_idt() {
    let mut idtr = [0u8; 10];
    // SAFETY: SIDT only stores the IDT register into our 10-byte buffer.
    unsafe { core::arch::asm!("sidt [{}]", in(reg) idtr.as_mut_ptr(), options(nostack, preserves_flags)) };
    let base = u64::from_le_bytes([idtr[2], idtr[3], idtr[4], idtr[5], idtr[6], idtr[7], idtr[8], idtr[9]]);
    let gate = (base + SCRIBBLED_VECTOR as u64 * 16) as *mut u16;
    // SAFETY: deliberately behind rt's back, but harmless to the CPU: the IDT is identity-mapped
    // writable memory and no interrupt ever uses vector 250, so flipping bits of its low word
    // (the handler's low offset bits) changes nothing that runs; only the watchdog can notice.
    unsafe { gate.write_volatile(gate.read_volatile() ^ 0x5a5a) };
}

/// Recurses forever (each frame keeps a 1 KiB buffer alive), to overflow the stack on purpose.
#[inline(never)]
#[allow(unconditional_recursion)] // the point: it only ends in the guard page
fn recurse(depth: u64) -> u64 {
    let buf = core::hint::black_box([depth as u8; 1024]);
    recurse(depth + 1) + u64::from(buf[depth as usize % 1024])
}

/// Tests that need Xen; run in addition when the image is a Xen domain.
const XEN_TESTS: &[Test] = &[
    Test { name: "xen_store_identity", run: xen_store_identity },
    Test { name: "xen_store_write_read_watch", run: xen_store_write_watch },
    Test { name: "xen_evtchn_loopback", run: xen_evtchn_loopback },
    Test { name: "xen_grant_copy_self", run: xen_grant_copy_self },
    Test { name: "xen_grant_map_self", run: xen_grant_map_self },
];

fn xen_grant_map_self() -> Result<(), alloc::string::String> {
    // Grant one of our pages to ourselves and map it into the hole. Xen moves a frame mapped
    // at a second guest-physical address of its own domain (the old address reads as a hole
    // afterwards), so the page is filled before the map, checked through the mapping, written
    // through the mapping and checked through a grant copy (Xen reads the frame itself), and
    // never used as RAM again. A mapped grant cannot be revoked; dropping the mapping unmaps it
    // (revoke then works, the hole frame is free again); a revoked ref does not map.
    use xen_domain::SharedMem;
    let xen = rt::xen().ok_or("not on Xen")?;
    let table = rt::xen::grant_table(xen).map_err(|e| alloc::format!("grant table: {e:?}"))?;
    let mut store = xen_domain::Store::open().map_err(|e| alloc::format!("open: {e:?}"))?;
    let me = store.domid().map_err(|e| alloc::format!("domid: {e:?}"))?;
    let (page, ptr) = rt::mem::alloc_dma(1).ok_or("no page")?;
    // SAFETY: a page we own, not yet granted.
    unsafe { ptr.as_ptr().add(4088).cast::<u64>().write_volatile(0x0123_4567_89ab_cdef) };
    let gref = 10;
    table.grant(gref, me, (page >> 12) as u32, false);
    let before = rt::xen::mapped_grants();
    let m = rt::xen::map_grant(xen, me, gref).map_err(|e| alloc::format!("map: {e:?}"))?;
    ensure!(m.gpa() >= 1 << 30, "mapped at {:#x}, not in the hole", m.gpa());
    ensure!(rt::xen::mapped_grants() == before + 1, "hole accounting");
    ensure!(m.load_u64(4088) == 0x0123_4567_89ab_cdef, "page contents not seen through the mapping");
    m.store_u32(64, 0xfeed_beef, Ordering::Release);
    m.write_bytes(100, b"through the mapping");
    let mut back = [0u8; 4];
    rt::xen::copy_from_grant(xen, me, gref, 64, &mut back).map_err(|e| alloc::format!("copy: {e:?}"))?;
    ensure!(u32::from_le_bytes(back) == 0xfeed_beef, "write through the mapping not in the frame: {back:x?}");
    let mut text = [0u8; 19];
    rt::xen::copy_from_grant(xen, me, gref, 100, &mut text).map_err(|e| alloc::format!("copy: {e:?}"))?;
    ensure!(&text == b"through the mapping", "bytes written through the mapping differ");
    ensure!(!table.revoke(gref), "revoke of a mapped grant succeeded");
    drop(m);
    ensure!(rt::xen::mapped_grants() == before, "hole frame not released");
    ensure!(table.revoke(gref), "revoke refused after unmap");
    ensure!(rt::xen::map_grant(xen, me, gref).is_err(), "revoked grant still maps");
    ensure!(rt::xen::mapped_grants() == before, "failed map kept a hole frame");
    // The page is deliberately never freed: it left its guest-physical address (see above).
    Ok(())
}

fn xen_grant_copy_self() -> Result<(), alloc::string::String> {
    // Grant one of our pages to ourselves, then let Xen copy through the grant reference in both
    // directions, across a page boundary on our side.
    let xen = rt::xen().ok_or("not on Xen")?;
    let table = rt::xen::grant_table(xen).map_err(|e| alloc::format!("grant table: {e:?}"))?;
    let mut store = xen_domain::Store::open().map_err(|e| alloc::format!("open: {e:?}"))?;
    let me = store.domid().map_err(|e| alloc::format!("domid: {e:?}"))?;
    let (page, ptr) = rt::mem::alloc_dma(1).ok_or("no page")?;
    // SAFETY: a page we own.
    let shared = unsafe { core::slice::from_raw_parts_mut(ptr.as_ptr(), 4096) };
    for (i, b) in shared.iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    let gref = 9;
    table.grant(gref, me, (page >> 12) as u32, false);
    let mut buf = alloc::vec![0u8; 8192];
    let dst = &mut buf[4000..4000 + 300]; // crosses a page boundary unless the heap aligns oddly
    rt::xen::copy_from_grant(xen, me, gref, 100, dst).map_err(|e| alloc::format!("copy in: {e:?}"))?;
    ensure!(dst.iter().enumerate().all(|(i, &b)| b == ((i + 100) * 7) as u8), "copied-in bytes differ");
    let src = [0x5au8; 64];
    rt::xen::copy_to_grant(xen, &src, me, gref, 4000).map_err(|e| alloc::format!("copy out: {e:?}"))?;
    ensure!(shared[4000..4064].iter().all(|&b| b == 0x5a), "copied-out bytes missing");
    ensure!(rt::xen::copy_to_grant(xen, &src, me, gref, 4090).is_err(), "copy past the granted page accepted");
    // A batch: two copies in (one crossing our page boundary), one out, one refused by Xen (offset
    // past a page is caught locally; a bad grant ref is Xen's error), in one hypercall.
    let (mut a, mut b, mut c) = ([0u8; 40], alloc::vec![0u8; 8192], [0u8; 4]);
    let out = [0xc3u8; 16];
    let mut batch = rt::xen::CopyBatch::new();
    let ia = batch.copy_in(me, gref, 8, &mut a).map_err(|e| alloc::format!("add: {e:?}"))?;
    let ib = batch.copy_in(me, gref, 0, &mut b[4090..4090 + 2000]).map_err(|e| alloc::format!("add: {e:?}"))?;
    let io = batch.copy_out(&out, me, gref, 2000).map_err(|e| alloc::format!("add: {e:?}"))?;
    let bad = batch.copy_in(me, 4000, 0, &mut c).map_err(|e| alloc::format!("add: {e:?}"))?;
    let results = batch.submit(xen).map_err(|e| alloc::format!("submit: {e:?}"))?;
    ensure!(results[ia].is_ok() && results[ib].is_ok() && results[io].is_ok(), "batch results {results:?}");
    ensure!(results[bad].is_err(), "copy through an ungranted ref succeeded");
    ensure!(a.iter().enumerate().all(|(i, &x)| x == ((i + 8) * 7) as u8), "batched copy-in (a) differs");
    ensure!(b[4090..6090].iter().enumerate().all(|(i, &x)| x == (i * 7) as u8), "batched copy-in (b) differs");
    ensure!(shared[2000..2016].iter().all(|&x| x == 0xc3), "batched copy-out missing");
    ensure!(table.revoke(gref), "revoke refused with no mapping");
    ensure!(rt::xen::copy_from_grant(xen, me, gref, 0, &mut [0u8; 8]).is_err(), "revoked grant still copies");
    Ok(())
}

fn xen_store_identity() -> Result<(), alloc::string::String> {
    let mut store = xen_domain::Store::open().map_err(|e| alloc::format!("open: {e:?}"))?;
    let domid = store.domid().map_err(|e| alloc::format!("domid: {e:?}"))?;
    let name = store.read("name").map_err(|e| alloc::format!("name: {e:?}"))?;
    ensure!(domid != 0, "a domU cannot be domain 0");
    ensure!(!name.is_empty(), "empty name");
    let hv_domid = rt::xen().and_then(|x| x.domid());
    ensure!(hv_domid.is_none_or(|d| d == domid), "CPUID says domid {hv_domid:?}, xenstore {domid}");
    rt::println!("KTEST-XEN domid={domid} name={name}");
    Ok(())
}

fn xen_store_write_watch() -> Result<(), alloc::string::String> {
    let mut store = xen_domain::Store::open().map_err(|e| alloc::format!("open: {e:?}"))?;
    let value = alloc::format!("hello-{}", rt::time::now().as_nanos());
    store.watch("data/ktest", "kt").map_err(|e| alloc::format!("watch: {e:?}"))?;
    let deadline = rt::time::now() + Duration::from_secs(5);
    let first = store.next_event(deadline).map_err(|e| alloc::format!("event: {e:?}"))?;
    ensure!(first.as_ref().is_some_and(|e| e.token == "kt"), "no initial watch event: {first:?}");
    store.write("data/ktest", &value).map_err(|e| alloc::format!("write: {e:?}"))?;
    let got = store.read("data/ktest").map_err(|e| alloc::format!("read: {e:?}"))?;
    ensure!(got == value, "read back {got:?}, wrote {value:?}");
    let fired = store.next_event(rt::time::now() + Duration::from_secs(5)).map_err(|e| alloc::format!("event: {e:?}"))?;
    ensure!(fired.as_ref().is_some_and(|e| e.path.ends_with("data/ktest")), "write did not fire: {fired:?}");
    ensure!(store.read("data/missing").is_err(), "missing node read succeeded");
    Ok(())
}

fn xen_evtchn_loopback() -> Result<(), alloc::string::String> {
    let events = xen_domain::Events::new().map_err(|e| alloc::format!("events: {e:?}"))?;
    let mut store = xen_domain::Store::open().map_err(|e| alloc::format!("open: {e:?}"))?;
    let me = store.domid().map_err(|e| alloc::format!("domid: {e:?}"))?;
    let a = events.alloc_unbound(me).map_err(|e| alloc::format!("alloc_unbound: {e:?}"))?;
    let b = events.bind_interdomain(me, a.0).map_err(|e| alloc::format!("bind: {e:?}"))?;
    events.take(a);
    events.notify(b).map_err(|e| alloc::format!("send: {e:?}"))?;
    let deadline = rt::time::now() + Duration::from_secs(2);
    while !events.take(a) {
        ensure!(rt::time::now() < deadline, "port {a:?} never fired after a send on {b:?}");
        rt::event::wait_until(Some(deadline));
    }
    events.notify(a).map_err(|e| alloc::format!("send back: {e:?}"))?;
    while !events.take(b) {
        ensure!(rt::time::now() < deadline, "port {b:?} never fired after a send on {a:?}");
        rt::event::wait_until(Some(deadline));
    }
    events.close(b).map_err(|e| alloc::format!("close: {e:?}"))?;
    events.close(a).map_err(|e| alloc::format!("close: {e:?}"))?;
    Ok(())
}

const TESTS: &[Test] = &[
    Test { name: "heap_alloc_and_free", run: heap_alloc_and_free },
    Test { name: "dma_pages_zeroed_aligned_distinct", run: dma_pages },
    Test { name: "clock_monotonic_and_calibrated", run: clock },
    Test { name: "wait_until_honours_deadline", run: wait_deadline },
    Test { name: "msi_self_ipi_runs_handler_and_wakes", run: msi_wakes },
    Test { name: "breakpoint_trap_resumes", run: breakpoint },
    Test { name: "mmio_above_4g_maps", run: mmio_high },
    Test { name: "cmdline_reaches_image", run: cmdline },
    Test { name: "executor_runs_timers_and_interrupts", run: executor },
    Test { name: "table_watchdog_sealed_and_checking", run: table_watchdog },
];

fn table_watchdog() -> Result<(), alloc::string::String> {
    // After boot (and after mmio_above_4g_maps changed the page tables) the sealed fingerprints
    // match, and idling runs the periodic check by itself: two more checks must come while we
    // only sleep (bounded by a generous 20 s: nested TCG may deschedule us for long).
    rt::integrity::verify().map_err(|(name, i, _)| alloc::format!("region {name} (#{i}) differs from its seal"))?;
    let before = rt::integrity::checks();
    let give_up = rt::time::now() + core::time::Duration::from_secs(20);
    while rt::integrity::checks() < before + 2 && rt::time::now() < give_up {
        rt::event::wait_until(Some(rt::time::now() + core::time::Duration::from_millis(100)));
    }
    let ran = rt::integrity::checks() - before;
    if ran < 2 {
        return Err(alloc::format!("idle checks ran {ran} times in 20 s (every {} ms expected)", rt::integrity::CHECK_EVERY_MS));
    }
    Ok(())
}

fn heap_alloc_and_free() -> Result<(), alloc::string::String> {
    let (_, used_before, size) = rt::mem::stats();
    ensure!(size >= 1 << 20, "heap only {size} bytes");
    let mut map = BTreeMap::new();
    for i in 0..10_000u32 {
        map.insert(i, alloc::format!("value-{i}"));
    }
    let big: Vec<u64> = (0..100_000).collect();
    ensure!(map[&4242] == "value-4242", "map lookup wrong");
    ensure!(big.iter().sum::<u64>() == 99_999 * 100_000 / 2, "vector sum wrong");
    drop(map);
    drop(big);
    let (_, used_after, _) = rt::mem::stats();
    ensure!(used_after <= used_before + 64, "leak: {used_before} -> {used_after}");
    Ok(())
}

fn dma_pages() -> Result<(), alloc::string::String> {
    let (a, pa) = rt::mem::alloc_dma(3).ok_or("alloc_dma(3) failed")?;
    let (b, _) = rt::mem::alloc_dma(1).ok_or("alloc_dma(1) failed")?;
    ensure!(a % 4096 == 0 && b % 4096 == 0, "unaligned: {a:#x} {b:#x}");
    ensure!(b >= a + 3 * 4096 || b + 4096 <= a, "overlap: {a:#x}+3 pages and {b:#x}");
    ensure!(rt::mem::virt_to_phys(pa.as_ptr()) == a, "virt_to_phys mismatch");
    // SAFETY: three pages we own.
    let bytes = unsafe { core::slice::from_raw_parts_mut(pa.as_ptr(), 3 * 4096) };
    ensure!(bytes.iter().all(|&x| x == 0), "not zeroed");
    bytes.fill(0xa5);
    // SAFETY: the pages came from alloc_dma and are no longer used.
    unsafe { rt::mem::free_dma(a, 3) };
    let (c, pc) = rt::mem::alloc_dma(3).ok_or("re-alloc failed")?;
    // SAFETY: three pages we own.
    let again = unsafe { core::slice::from_raw_parts(pc.as_ptr(), 3 * 4096) };
    ensure!(again.iter().all(|&x| x == 0), "re-allocation at {c:#x} not zeroed");
    // SAFETY: as above.
    unsafe { rt::mem::free_dma(c, 3) };
    // SAFETY: as above.
    unsafe { rt::mem::free_dma(b, 1) };
    Ok(())
}

fn clock() -> Result<(), alloc::string::String> {
    let hz = rt::time::tsc_hz();
    ensure!((50_000_000..100_000_000_000).contains(&hz), "implausible TSC frequency {hz}");
    let mut last = rt::time::now();
    for _ in 0..10_000 {
        let t = rt::time::now();
        ensure!(t >= last, "time went backwards: {last:?} -> {t:?}");
        last = t;
    }
    let t0 = rt::time::now();
    rt::time::spin_for(Duration::from_millis(2));
    let dt = rt::time::now() - t0;
    ensure!(dt >= Duration::from_millis(2), "spin_for(2 ms) took {dt:?}");
    Ok(())
}

fn wait_deadline() -> Result<(), alloc::string::String> {
    // Sleep to deadlines. An early return is allowed only when an event was signalled (on Xen,
    // xenstore and console event channels fire at any time); then the test waits again for the
    // rest. A signal that arrived after the previous wait's last check leaves the event pending,
    // so "signalled" means: the count grew since just before the previous wait was called.
    let mut before_previous = rt::event::signal_count();
    rt::event::wait_until(Some(rt::time::now())); // drain what earlier code left pending
    for ms in [1u64, 10, 30] {
        let t0 = rt::time::now();
        let deadline = t0 + Duration::from_millis(ms);
        let mut early_wakes = 0;
        loop {
            let before_this = rt::event::signal_count();
            rt::event::wait_until(Some(deadline));
            let now = rt::time::now();
            let signalled = rt::event::signal_count() != before_previous;
            before_previous = before_this;
            if now >= deadline {
                break;
            }
            ensure!(signalled, "woke at {:?} of a {ms} ms wait with no event signalled", now - t0);
            early_wakes += 1;
            ensure!(early_wakes < 1000, "{early_wakes} early wake-ups in a {ms} ms wait");
        }
        let slept = rt::time::now() - t0;
        ensure!(slept < Duration::from_secs(2), "slept {slept:?} for a {ms} ms deadline");
    }
    Ok(())
}

static MSI_HITS: AtomicU32 = AtomicU32::new(0);

fn msi_handler() {
    MSI_HITS.fetch_add(1, Ordering::SeqCst);
}

fn msi_wakes() -> Result<(), alloc::string::String> {
    let msg = rt::irq::register_msi(msi_handler).ok_or("no free vector")?;
    ensure!(msg.address & 0xfff0_0000 == 0xfee0_0000, "bad MSI address {:#x}", msg.address);
    rt::event::wait_until(Some(rt::time::now()));
    rt::irq::raise(msg);
    let t0 = rt::time::now();
    // Without a deadline this returns only through the signal the handler's interrupt raises.
    rt::event::wait_until(None);
    ensure!(MSI_HITS.load(Ordering::SeqCst) == 1, "handler ran {} times", MSI_HITS.load(Ordering::SeqCst));
    log::info!("MSI self-IPI woke the event loop after {:?}", rt::time::now() - t0);
    Ok(())
}

fn breakpoint() -> Result<(), alloc::string::String> {
    let before = rt::trap::breakpoints();
    // SAFETY: int3 traps to the runtime, which reports and resumes.
    unsafe { core::arch::asm!("int3") };
    ensure!(rt::trap::breakpoints() == before + 1, "breakpoint not counted");
    Ok(())
}

fn mmio_high() -> Result<(), alloc::string::String> {
    // Below 4 GiB: the LAPIC page (MMIO, not RAM) is mapped and stays usable.
    let apic = rt::mem::map_mmio(0xfee0_0000, 0x1000).ok_or("map of the LAPIC page failed")?;
    ensure!(apic.as_ptr() as u64 == 0xfee0_0000, "low MMIO not identity");
    // Mapping must succeed above 4 GiB (no read: nothing is there) and fail beyond 512 GiB.
    // Above 4 GiB (no read: nothing is there), including past 512 GiB where SeaBIOS places big
    // 64-bit BARs (a second PML4 entry), up to the CPU's physical-address limit.
    let limit = rt::mem::phys_limit();
    ensure!(limit >= 1 << 36, "physical limit {limit:#x} below 64 GiB");
    for addr in [0x80_0000_0000 - 0x20_0000, 1022u64 << 30, limit - 0x1000] {
        let p = rt::mem::map_mmio(addr, 0x1000).ok_or_else(|| alloc::format!("map of {addr:#x} failed"))?;
        ensure!(p.as_ptr() as u64 == addr, "{addr:#x} not identity-mapped");
    }
    let wb = rt::mem::map_physical(1023u64 << 30, 4 << 20, rt::mem::Caching::WriteBack).ok_or("write-back map failed")?;
    ensure!(wb.as_ptr() as u64 == 1023u64 << 30, "write-back map not identity");
    ensure!(rt::mem::map_mmio(limit, 1).is_none(), "mapped beyond the physical-address limit");
    ensure!(rt::mem::map_mmio(u64::MAX, 2).is_none(), "overflowing range accepted");
    ensure!(rt::mem::map_mmio(0x1000_0000_0000, 0).is_none(), "empty range accepted");
    Ok(())
}

fn cmdline() -> Result<(), alloc::string::String> {
    // xtask boots ktest with `ktest-arg=42` on its command line.
    let boot_cmdline = rt::cmdline_str();
    ensure!(rt::cmdline::get(boot_cmdline, "ktest-arg") == Some("42"), "cmdline was {boot_cmdline:?}");
    Ok(())
}

static EXEC_IRQS: AtomicU32 = AtomicU32::new(0);

fn exec_irq() {
    EXEC_IRQS.fetch_add(1, Ordering::SeqCst);
}

fn executor() -> Result<(), alloc::string::String> {
    use rt::exec::Step;
    use rt::time::Instant;
    // A timer task that ticks every 2 ms five times, and an interrupt-driven task that is idle
    // until its MSI arrives (raised by the timer task at its third tick).
    let msg = rt::irq::register_msi(exec_irq).ok_or("no free vector")?;
    let start = rt::time::now();
    let mut ticks = 0u32;
    let mut next = start;
    let mut timer = |now: Instant| {
        if now < next {
            return Step::At(next);
        }
        ticks += 1;
        if ticks == 3 {
            rt::irq::raise(msg);
        }
        next = now + Duration::from_millis(2);
        if ticks == 5 { Step::Exit(ExitCode::Success) } else { Step::At(next) }
    };
    let mut seen = 0u32;
    let mut irq_task = |_now: Instant| {
        seen = EXEC_IRQS.load(Ordering::SeqCst);
        Step::Idle
    };
    let code = rt::exec::run(&mut [&mut timer, &mut irq_task]);
    let elapsed = rt::time::now() - start;
    ensure!(code == ExitCode::Success, "executor ended with {code:?}");
    ensure!(ticks == 5, "timer task ticked {ticks} times");
    ensure!(seen == 1, "interrupt task saw {seen} interrupts");
    ensure!(elapsed >= Duration::from_millis(8), "five 2 ms ticks took only {elapsed:?}");
    Ok(())
}
