//! `net-dd` as a Xen driver domain (PVH, `driver_domain=1`): serves the `vif`s that `xl` creates
//! with `backend=<this domain>` for Linux netfront guests. Chosen at boot when the image runs on
//! Xen (same ELF as on QEMU).

/// The image's entry point on Xen.
pub fn main(_boot: &'static rt::BootInfo) -> rt::ExitCode {
    log::error!("net-dd on Xen: not implemented yet");
    rt::ExitCode::Failure
}
