//! `media-dd` (work in progress).
#![no_std]
#![no_main]

rt::entry!(main);

fn main(_boot: &'static rt::BootInfo) -> rt::ExitCode {
    rt::ExitCode::Failure
}
