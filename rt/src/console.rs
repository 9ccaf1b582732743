//! Console: COM1 16550 UART at 115200 8N1, mirrored to Xen's 0xe9 debug port when running on Xen,
//! and the `log` facade on top of it.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use crate::arch::{inb, outb};

const COM1: u16 = 0x3f8;
const XEN_DEBUG_PORT: u16 = 0xe9;

static MIRROR_E9: AtomicBool = AtomicBool::new(false);
static LOCK: spin::Mutex<()> = spin::Mutex::new(());
static SINK: AtomicUsize = AtomicUsize::new(0);
static MAX_LEVEL: AtomicU8 = AtomicU8::new(log::LevelFilter::Info as u8);

struct Serial;

impl Serial {
    fn put(&mut self, byte: u8) {
        // SAFETY: COM1 and 0xe9 are console ports; no memory is involved.
        unsafe {
            // Bounded wait for the transmit holding register: an absent UART must not hang us.
            for _ in 0..100_000 {
                if inb(COM1 + 5) & 0x20 != 0 {
                    break;
                }
            }
            outb(COM1, byte);
            if MIRROR_E9.load(Ordering::Relaxed) {
                outb(XEN_DEBUG_PORT, byte);
            }
        }
    }
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        let sink = SINK.load(Ordering::Acquire);
        if sink != 0 {
            // SAFETY: only `set_sink` stores into SINK, and it stores a valid `fn(&[u8])`.
            let sink: fn(&[u8]) = unsafe { core::mem::transmute::<usize, fn(&[u8])>(sink) };
            sink(s.as_bytes());
        }
        Ok(())
    }
}

/// Copies every byte printed from now on to `sink` too (e.g. Xen's PV console ring). The sink is
/// called under the console lock, or without it from exception and panic reports: it must not
/// print, allocate or block.
pub fn set_sink(sink: fn(&[u8])) {
    SINK.store(sink as usize, Ordering::Release);
}

/// Initialises COM1; `mirror_e9` also copies every byte to port 0xe9 (Xen's debug console).
pub fn init(mirror_e9: bool) {
    MIRROR_E9.store(mirror_e9, Ordering::Relaxed);
    // SAFETY: the standard 16550 initialisation sequence on COM1's ports.
    unsafe {
        outb(COM1 + 1, 0x00); // no UART interrupts
        outb(COM1 + 3, 0x80); // DLAB
        outb(COM1, 0x01); // divisor 1: 115200 baud
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03); // 8N1
        outb(COM1 + 2, 0xc7); // FIFO on, cleared
        outb(COM1 + 4, 0x03); // DTR | RTS
    }
}

/// Writes formatted text to the console under the console lock.
pub fn print(args: fmt::Arguments<'_>) {
    let _guard = LOCK.lock();
    let _ = Serial.write_fmt(args);
}

/// Writes formatted text without taking the lock: for exception and panic reports, where the lock
/// may be held by the interrupted code.
pub fn emergency(args: fmt::Arguments<'_>) {
    let _ = Serial.write_fmt(args);
}

/// Prints to the console (no newline added).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let us = crate::time::now().as_micros();
        print(format_args!(
            "[{:4}.{:06}] {:<5} {}: {}\n",
            us / 1_000_000,
            us % 1_000_000,
            record.level(),
            record.target(),
            record.args()
        ));
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Installs the console as the `log` backend; `level` comes from the `loglevel=` command-line word.
pub fn init_log(level: Option<&str>) {
    let filter = match level {
        Some("error") => log::LevelFilter::Error,
        Some("warn") => log::LevelFilter::Warn,
        Some("debug") => log::LevelFilter::Debug,
        Some("trace") => log::LevelFilter::Trace,
        _ => log::LevelFilter::Info,
    };
    MAX_LEVEL.store(filter as u8, Ordering::Relaxed);
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(filter);
}
