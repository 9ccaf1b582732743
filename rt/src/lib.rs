//! # rt — the iConnect unikernel runtime
//!
//! Every iConnect image (driver domains, guests, test images) is a PVH ELF built on this crate.
//! It is the only crate with boot-level `unsafe` code. The boot path:
//!
//! 1. `arch::boot`: the PVH entry (`XEN_ELFNOTE_PHYS32_ENTRY`) in 32-bit protected mode reads the
//!    TSC, clears `.bss`, identity-maps 4 GiB, enters long mode and calls `rt_start`.
//! 2. `start`: console, `hvm_start_info` (command line, memory map, RSDP), frame allocator and heap,
//!    GDT/TSS/IDT, PIC off, local APIC on, TSC and APIC-timer calibration, interrupts on.
//! 3. The image's `main` (declared with [`entry!`]) runs its tasks with [`exec`]: each is polled
//!    with the current time and names its next deadline; in between the CPU sleeps until that
//!    deadline or a device interrupt.
//! 4. [`exit`] ends the domain with a code the host can read (QEMU `isa-debug-exit`); a panic or a
//!    CPU exception also ends it, with its own code and a report on the console.
//!
//! The pure parts (command line, memory map, frame allocator, time scaling) build and are tested
//! on the host too.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod cmdline;
pub mod exec;
pub mod frames;
pub mod memmap;
pub mod time;

#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
pub mod console;
#[cfg(target_os = "none")]
pub mod event;
#[cfg(target_os = "none")]
pub mod integrity;
#[cfg(target_os = "none")]
pub mod irq;
#[cfg(target_os = "none")]
pub mod ktest;
#[cfg(target_os = "none")]
pub mod mem;
#[cfg(target_os = "none")]
mod start;
#[cfg(target_os = "none")]
pub mod trap;
#[cfg(target_os = "none")]
pub mod xen;

/// What the loader told the image.
#[derive(Debug)]
pub struct BootInfo {
    /// The command line (`key=value` words; see [`cmdline::get`]).
    pub cmdline: &'static str,
    /// TSC at the first instruction.
    pub tsc_at_entry: u64,
    /// RAM reported by the memory map.
    pub ram_bytes: u64,
    /// ACPI RSDP from `hvm_start_info`, 0 if the loader gave none.
    pub rsdp_paddr: u64,
}

/// How an image ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// QEMU exit status 33.
    Success,
    /// QEMU exit status 35.
    Failure,
}

/// Value written to `isa-debug-exit` for success: QEMU exits with `(v << 1) | 1` = 33.
pub const EXIT_SUCCESS: u8 = 0x10;
/// Failure: status 35.
pub const EXIT_FAILURE: u8 = 0x11;
/// Panic: status 37.
pub const EXIT_PANIC: u8 = 0x12;
/// CPU exception: status 39.
pub const EXIT_EXCEPTION: u8 = 0x13;

/// Ends the domain.
#[cfg(target_os = "none")]
pub fn exit(code: ExitCode) -> ! {
    let (v, word) = match code {
        ExitCode::Success => (EXIT_SUCCESS, "success"),
        ExitCode::Failure => (EXIT_FAILURE, "failure"),
    };
    println!("ICONNECT-EXIT {word}");
    exit_raw(v)
}

/// Xen, when the image runs on it (detected at boot).
#[cfg(target_os = "none")]
pub fn xen() -> Option<xen_hypercall::Xen> {
    start::xen()
}

#[cfg(target_os = "none")]
pub(crate) fn exit_raw(value: u8) -> ! {
    arch::cli();
    if let Some(xen) = xen() {
        // On Xen the domain shuts down: poweroff for success, crash for anything else (the
        // console marker tells which failure it was).
        let reason = if value == EXIT_SUCCESS {
            xen_hypercall::sched::POWEROFF
        } else {
            xen_hypercall::sched::CRASH
        };
        let refused = xen.shutdown(reason);
        console::emergency(format_args!("SCHEDOP_shutdown refused: {refused:?}\n"));
    }
    // SAFETY: port 0xf4 is QEMU's isa-debug-exit when present; elsewhere the write is ignored.
    unsafe { arch::outl(0xf4, u32::from(value)) };
    loop {
        arch::cli();
        // SAFETY: halting with interrupts off parks the CPU for good.
        unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
    }
}

/// The command line the image was booted with.
#[cfg(target_os = "none")]
pub fn cmdline_str() -> &'static str {
    start::boot_info().map_or("", |b| b.cmdline)
}

/// Announces that the image finished its initialisation, with the time since its first
/// instruction: `ICONNECT-READY <image> boot_us=<N>`.
#[cfg(target_os = "none")]
pub fn ready(image: &str) {
    let us = time::now().as_micros();
    println!("ICONNECT-READY {image} boot_us={us}");
}

/// Declares the image's main function: `fn main(boot: &'static rt::BootInfo) -> rt::ExitCode`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        extern "Rust" fn __rt_main(boot: &'static $crate::BootInfo) -> $crate::ExitCode {
            let main: fn(&'static $crate::BootInfo) -> $crate::ExitCode = $main;
            main(boot)
        }
    };
}

/// Declares an image's entry point for a crate that is an image on `x86_64-unknown-none` and
/// also builds on the host (for its host-tested library and workspace-wide host commands):
/// on the target it is [`entry!`]; on the host it defines a `main` that says the image only runs
/// as a unikernel and exits with status 2. Use with
/// `#![cfg_attr(target_os = "none", no_std)]` and `#![cfg_attr(target_os = "none", no_main)]`.
#[macro_export]
macro_rules! image_entry {
    ($name:literal, $main:path) => {
        #[cfg(target_os = "none")]
        $crate::entry!($main);

        /// The image only runs on `x86_64-unknown-none`; this host build keeps workspace-wide
        /// host commands working.
        #[cfg(not(target_os = "none"))]
        fn main() {
            ::std::eprintln!(
                "{} is a unikernel image: build it with --target x86_64-unknown-none",
                $name
            );
            ::std::process::exit(2);
        }
    };
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    arch::cli();
    console::emergency(format_args!("\nICONNECT-PANIC {info}\n"));
    exit_raw(EXIT_PANIC)
}
