//! From `rt_start` (called by the boot stub in long mode) to the image's `main`.

use core::ptr::read_unaligned;

use crate::arch::{self, apic, cpu_tables, pit};
use crate::memmap::{self, Region};
use crate::{BootInfo, console, event, mem, time};

/// `hvm_start_info.magic`.
const START_INFO_MAGIC: u32 = 0x336e_c578;
const MAX_MAP_ENTRIES: usize = 128;
const CMDLINE_MAX: usize = 2048;

unsafe extern "Rust" {
    fn __rt_main(boot: &'static BootInfo) -> crate::ExitCode;
}

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

static BOOT: spin::Once<BootInfo> = spin::Once::new();
static XEN: spin::Once<Option<xen_hypercall::Xen>> = spin::Once::new();

pub(crate) fn xen() -> Option<xen_hypercall::Xen> {
    XEN.get().copied().flatten()
}
static CMDLINE: spin::Once<([u8; CMDLINE_MAX], usize)> = spin::Once::new();

pub(crate) fn boot_info() -> Option<&'static BootInfo> {
    BOOT.get()
}

fn read_u32(addr: u64) -> u32 {
    // SAFETY: the loader's start-info structures lie in identity-mapped RAM below 4 GiB.
    unsafe { read_unaligned(addr as *const u32) }
}

fn read_u64(addr: u64) -> u64 {
    // SAFETY: as for `read_u32`.
    unsafe { read_unaligned(addr as *const u64) }
}

fn copy_cmdline(paddr: u64) -> &'static str {
    let (buf, len) = CMDLINE.call_once(|| {
        let mut buf = [0u8; CMDLINE_MAX];
        let mut len = 0;
        if paddr != 0 {
            while len < CMDLINE_MAX - 1 {
                // SAFETY: a NUL-terminated string from the loader, in identity-mapped RAM.
                let b = unsafe { read_unaligned((paddr + len as u64) as *const u8) };
                if b == 0 {
                    break;
                }
                buf[len] = b;
                len += 1;
            }
        }
        (buf, len)
    });
    core::str::from_utf8(&buf[..*len]).unwrap_or("")
}

#[unsafe(no_mangle)]
extern "C" fn rt_start(start_info: u64, boot_tsc: u64) -> ! {
    let hv = arch::hypervisor();
    let xen = *XEN.call_once(xen_hypercall::Xen::detect);
    console::init(xen.is_some());

    let magic = read_u32(start_info);
    if magic != START_INFO_MAGIC {
        panic!("hvm_start_info at {start_info:#x} has magic {magic:#x}: not booted through PVH");
    }
    let version = read_u32(start_info + 4);
    let cmdline = copy_cmdline(read_u64(start_info + 24));
    let rsdp_paddr = read_u64(start_info + 32);
    console::init_log(crate::cmdline::get(cmdline, "loglevel"));

    // The memory map (start-info version 1); copied before any frame is handed out.
    let mut map = [Region { addr: 0, size: 0, kind: 0 }; MAX_MAP_ENTRIES];
    let mut entries = 0;
    if version >= 1 {
        let table = read_u64(start_info + 40);
        entries = (read_u32(start_info + 48) as usize).min(MAX_MAP_ENTRIES);
        for (i, slot) in map.iter_mut().take(entries).enumerate() {
            let mut raw = [0u8; memmap::ENTRY_SIZE];
            for (j, b) in raw.iter_mut().enumerate() {
                // SAFETY: the loader's memory map table, in identity-mapped RAM.
                *b = unsafe { read_unaligned((table + (i * memmap::ENTRY_SIZE + j) as u64) as *const u8) };
            }
            *slot = Region::parse(&raw);
        }
    }
    if entries == 0 {
        log::warn!("no PVH memory map: assuming RAM at [1 MiB, 16 MiB)");
        map[0] = Region { addr: 0x10_0000, size: 15 << 20, kind: memmap::TYPE_RAM };
        entries = 1;
    }
    let map = &map[..entries];
    let ram_bytes: u64 = map.iter().filter(|r| r.kind == memmap::TYPE_RAM).map(|r| r.size).sum();
    for r in map.iter().filter(|r| r.kind == memmap::TYPE_RAM) {
        mem::note_ram(r.addr, r.end());
    }
    let kernel = (
        core::ptr::addr_of!(__kernel_start) as u64,
        core::ptr::addr_of!(__kernel_end) as u64,
    );
    memmap::usable_ranges(map, 0x10_0000, 1 << 32, &[kernel], mem::add_ram);
    let heap_request = crate::cmdline::get(cmdline, "heap_kib")
        .and_then(|v| v.parse::<usize>().ok())
        .map(|kib| kib * 1024);
    let heap = mem::init_heap(heap_request);
    mem::protect_stack_guard();

    // SAFETY: first and only call, interrupts are still off.
    unsafe { cpu_tables::init() };
    pit::disable_pic();
    apic::init();
    let (tsc_hz, apic_hz, source) = calibrate(xen);
    time::set(boot_tsc, tsc_hz);
    event::set_apic_hz(apic_hz);
    crate::integrity::seal();
    arch::sti();

    let (free, _, _) = mem::stats();
    if let Some(x) = xen {
        if let Err(e) = crate::xen::init(x) {
            log::error!(target: "rt", "Xen event channels unavailable: {e:?}");
        }
        let (major, minor) = x.version();
        log::info!(target: "rt", "Xen {major}.{minor}, domid {:?}, {:?}", x.domid(), x.instruction);
    }
    log::info!(
        target: "rt",
        "{:?}; RAM {} KiB, heap {} KiB, free {} KiB; TSC {} kHz ({source}), APIC timer {} kHz; cmdline \"{cmdline}\"",
        hv,
        ram_bytes / 1024,
        heap / 1024,
        free / 1024,
        tsc_hz / 1000,
        apic_hz / 1000,
    );
    let boot = BOOT.call_once(|| BootInfo { cmdline, tsc_at_entry: boot_tsc, ram_bytes, rsdp_paddr });
    // SAFETY: `__rt_main` is defined by the image through `rt::entry!` with this signature.
    let code = unsafe { __rt_main(boot) };
    crate::exit(code)
}

/// Measures the TSC and APIC-timer frequencies: Xen's CPUID leaf when on Xen, else the PIT
/// (a ~5 ms window whose two ends are tight (TSC, PIT counter) pairs: descheduling in between, a
/// real hazard on a loaded TCG host, cancels out; three windows, the one with the tightest ends
/// wins), else CPUID 0x16. The APIC timer is then measured against the TSC over 2 ms.
fn calibrate(xen: Option<xen_hypercall::Xen>) -> (u64, u64, &'static str) {
    const PIT_TICKS: u16 = 5966; // 5 ms
    const WINDOWS: usize = 3;
    /// A window whose ends are this tight (parts per million of the window) is taken at once.
    const GOOD_PPM: u64 = 2000;
    let mut source = "pit-pairs-5ms";
    let mut tsc_hz = xen.map_or(0, |x| u64::from(x.tsc_khz()) * 1000);
    if tsc_hz != 0 {
        source = "xen-cpuid";
    } else {
        let mut best: Option<(u64, u64)> = None;
        for _ in 0..WINDOWS {
            // `None`: no PIT, or a window the vCPU was away from for too long: try again.
            let Some((hz, ppm)) = pit::measure_tsc(PIT_TICKS) else { continue };
            if best.is_none_or(|(_, p)| ppm < p) {
                best = Some((hz, ppm));
            }
            if ppm <= GOOD_PPM {
                break;
            }
        }
        if let Some((hz, _)) = best {
            tsc_hz = hz;
        } else {
            let mhz = u64::from(arch::cpuid(0x16, 0)[0] & 0xffff);
            tsc_hz = if mhz != 0 { mhz * 1_000_000 } else { 1_000_000_000 };
            source = if mhz != 0 { "cpuid-0x16" } else { "guess-1ghz" };
        }
    }
    apic::start_calibration();
    let start = arch::rdtsc();
    while arch::rdtsc() - start < tsc_hz / 500 {
        core::hint::spin_loop();
    }
    let window = arch::rdtsc() - start;
    let apic_ticks = u64::from(apic::calibration_elapsed());
    let apic_hz = (u128::from(apic_ticks) * u128::from(tsc_hz) / u128::from(window.max(1))) as u64;
    (tsc_hz, apic_hz, source)
}
