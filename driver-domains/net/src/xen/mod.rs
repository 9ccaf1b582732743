//! `net-dd` as a Xen driver domain (PVH, `driver_domain=1`): serves the `vif`s that `xl` creates
//! with `backend=<this domain>` for Linux netfront guests. Chosen at boot when the image runs on
//! Xen (same ELF as on QEMU).
//!
//! * Control plane ([`vif`]): a xenstore watch on `backend/vif` of this domain finds new vifs;
//!   each vif runs xen-abi's xenbus [`BackendFsm`](xen_abi::xenbus::BackendFsm), advertises the
//!   netback crate's features, writes `hotplug-status = connected` itself (no hotplug scripts
//!   in a unikernel), and on the frontend's Connected parses its keys (`FrontendConfig`), maps
//!   its two ring pages into the grant hole, binds its event channel(s) and answers its QoS
//!   request (`iconnect-qos-*` keys in the frontend directory, with `rate=` of the xl config as
//!   an administrative ceiling) in the backend directory. Frontend Closing/Closed, a vanished
//!   frontend (`xl destroy`) or `online = 0` disconnect it: rings unmapped, ports closed.
//! * Data plane: the netback engine per vif (`poll_tx`, `queue_rx`, `poll_rx`) with grant copies
//!   ([`grants`]); frames between vifs go through a learning bridge ([`bridge`]).
//!
//! Markers: `ICONNECT-READY net-dd`, `ICONNECT-XEN domid=<N> name=<name>`,
//! `ICONNECT-VIF <fe>/<dev> up mac=<mac> qos=<granted|refused|none> ceiling_bps=<n|none>`,
//! `ICONNECT-VIF <fe>/<dev> qos=<...> ceiling_bps=<...>` (a QoS request changed),
//! `ICONNECT-VIF <fe>/<dev> down reason=<why>`, and periodic
//! `ICONNECT-VIFSTAT <fe>/<dev> tx_packets=.. tx_bytes=.. rx_packets=.. rx_bytes=.. drops=..`.

mod bridge;
mod grants;
mod vif;

use alloc::format;
use alloc::string::String;
use core::time::Duration;

use xen_domain::{DomainError, Events, Store};

use self::vif::Backend;

/// Longest sleep when nothing is scheduled (events wake the loop earlier).
const IDLE: Duration = Duration::from_secs(1);
/// Period of the `ICONNECT-VIFSTAT` lines (only printed when counters moved).
const STATS_EVERY: Duration = Duration::from_secs(5);

/// The image's entry point on Xen.
pub fn main(boot: &'static rt::BootInfo) -> rt::ExitCode {
    if let Err(e) = xen_domain::console::install() {
        log::warn!("PV console unavailable: {e:?}");
    }
    match run(boot) {
        Ok(never) => match never {},
        Err(e) => {
            log::error!("net-dd on Xen: {e:?}");
            rt::ExitCode::Failure
        }
    }
}

fn run(boot: &'static rt::BootInfo) -> Result<core::convert::Infallible, DomainError> {
    let xen = rt::xen().ok_or(DomainError::NotXen)?;
    let events = Events::new()?;
    let mut store = Store::open()?;
    let domid = store.domid()?;
    let name = store.read("name").unwrap_or_else(|_| String::from("?"));
    let link_bps = rt::cmdline::get(boot.cmdline, "link_bps")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&v| v > 0)
        .unwrap_or(1_000_000_000);
    let base = format!("/local/domain/{domid}/backend/vif");
    let mut be = Backend::new(xen, events, base, link_bps);
    be.watch(&mut store)?;
    rt::ready("net-dd");
    log::info!("ICONNECT-XEN domid={domid} name={name} link_bps={link_bps} serving {}", be.base());

    let mut last_stats = rt::time::now();
    loop {
        while let Some(ev) = store.poll_event()? {
            be.on_watch(&mut store, &ev.path, &ev.token);
        }
        let now = rt::time::now();
        let next = be.poll_data(&mut store, now);
        if now - last_stats >= STATS_EVERY {
            last_stats = now;
            be.report_stats();
        }
        let deadline = match next {
            vif::Next::Now => continue,
            vif::Next::At(t) => t.min(now + IDLE),
            vif::Next::Idle => now + IDLE,
        };
        rt::event::wait_until(Some(deadline));
    }
}
