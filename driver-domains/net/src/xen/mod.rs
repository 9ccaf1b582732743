//! `net-dd` as a Xen driver domain (PVH, `driver_domain=1`): serves the `vif`s that `xl` creates
//! with `backend=<this domain>` for Linux netfront guests. Chosen at boot when the image runs on
//! Xen (same ELF as on QEMU).
//!
//! * Control plane (`net_dd::vifctl`, platform-independent and host-tested; [`vif`] is its Xen
//!   implementation: xenstore, grant maps and copies, event channels): a xenstore watch on `backend/vif` of this domain finds new vifs;
//!   each vif runs xen-abi's xenbus [`BackendFsm`](xen_abi::xenbus::BackendFsm), advertises the
//!   netback crate's features, writes `hotplug-status = connected` itself (no hotplug scripts
//!   in a unikernel), and on the frontend's Connected parses its keys (`FrontendConfig`), maps
//!   its two ring pages into the grant hole, binds its event channel(s) and answers its QoS
//!   request (`iconnect-qos-*` keys in the frontend directory, with `rate=` of the xl config as
//!   an administrative ceiling) in the backend directory. Frontend Closing/Closed, a vanished
//!   frontend (`xl destroy`) or `online = 0` disconnect it: rings unmapped, ports closed.
//! * Data plane: each connected vif is a guest port of net-dd's platform-independent
//!   [`Switch`] (the same as on QEMU: netswitch's learning bridge and QoS scheduler, one netback
//!   engine per port) with the ring pages mapped and buffers reached by grant copies
//!   ([`grants`]); the domain's own smoltcp stack (`ip=`, ICMP echo, TCP echo on `echo_port`)
//!   is the switch's stack port; the uplink port is net-dd's own netfront ([`uplink`]) when the
//!   xl config gives net-dd a vif (on a dom0 bridge), else frames for it are dropped.
//!
//! Markers: `ICONNECT-READY net-dd`, `ICONNECT-XEN domid=<N> name=<name>`,
//! `ICONNECT-VIF <fe>/<dev> up port=<n> mac=<mac> qos=<granted|refused|none> ceiling_bps=<n|none>`,
//! `ICONNECT-VIF <fe>/<dev> qos=<...> ceiling_bps=<...>` (a QoS request changed),
//! `ICONNECT-VIF <fe>/<dev> down port=<n> reason=<why> ...`, and every 2 s while counters move
//! `ICONNECT-VIFSTAT <fe>/<dev> port=<n> tx_bps=.. rx_bps=.. tx_frames=.. rx_frames=.. drops=..`.

mod grants;
mod uplink;
mod vif;

use alloc::format;
use alloc::string::String;
use core::time::Duration;

use net_dd::config::NetConfig;
use net_dd::echo::EchoService;
use net_dd::stackdev::QueueDevice;
use net_dd::switch::{STACK, Switch, UPLINK};
use netswitch::Mac;
use smoltcp::iface::SocketSet;
use smoltcp::wire::EthernetAddress;
use xen_domain::{DomainError, Events, Store};

use self::uplink::{Uplink, XenFront};
use self::vif::{Backend, XenPlatform, XenStore, XenWire};

/// Longest sleep when nothing is scheduled (events wake the loop earlier).
const IDLE: Duration = Duration::from_secs(1);
/// Every vif is looked at this often even without an event.
const SWEEP: Duration = Duration::from_millis(100);
/// Period of the `ICONNECT-VIFSTAT` lines (only printed when counters moved).
const STATS_EVERY: Duration = Duration::from_secs(2);
/// Echo sockets of the domain's own stack, and their buffers.
const ECHO_SOCKETS: usize = 8;
const ECHO_BUF: usize = 8192;

/// The image's entry point on Xen.
pub fn main(boot: &'static rt::BootInfo) -> rt::ExitCode {
    if let Err(e) = xen_domain::console::install() {
        log::warn!("PV console unavailable: {e:?}");
    }
    match run(boot) {
        Ok(never) => match never {},
        Err(e) => {
            log::error!("net-dd on Xen: {e}");
            rt::ExitCode::Failure
        }
    }
}

fn smol_now() -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(rt::time::now().as_micros() as i64)
}

fn run(boot: &'static rt::BootInfo) -> Result<core::convert::Infallible, String> {
    let cfg = NetConfig::from_cmdline(boot.cmdline).map_err(|e| format!("{e}"))?;
    let xen = rt::xen().ok_or("not on Xen")?;
    let err = |e: DomainError| format!("{e:?}");
    let events = Events::new().map_err(err)?;
    let mut store = Store::open().map_err(err)?;
    // The loop that answers xenstore also moves every guest's frames: a request waits 2 s at
    // most (xenstored answers in milliseconds, even nested), and while the daemon does not
    // answer, requests fail at once (xen_domain::store::FAIL_FAST) instead of stalling traffic.
    store.timeout = Duration::from_secs(2);
    let domid = store.domid().map_err(err)?;
    let name = store.read("name").unwrap_or_else(|_| String::from("?"));
    // The stack's MAC: locally administered, from the domain id.
    let stack_mac = Mac([0x02, 0x16, 0x3e, 0xdd, (domid >> 8) as u8, domid as u8]);
    let mut stack = QueueDevice::new();
    let seed = rt::time::now().as_nanos() ^ boot.tsc_at_entry.rotate_left(17);
    let mut iface = net_dd::build_interface(&cfg, EthernetAddress(stack_mac.0), &mut stack, smol_now(), seed);
    let mut sockets = SocketSet::new(alloc::vec![]);
    let mut echo = EchoService::new(&mut sockets, cfg.echo_port, ECHO_SOCKETS, ECHO_BUF);
    let base = format!("/local/domain/{domid}/backend/vif");
    let sw = Switch::new(cfg.link_bps, stack_mac, rt::time::now().as_nanos());
    let mut be = Backend::new(XenPlatform::new(xen, events), base, sw);
    be.watch(&mut XenStore(&mut store)).map_err(|e| err(e.0))?;
    let mut uplink = Uplink::find(XenFront::new(xen, events), &mut XenStore(&mut store), domid).map_err(|e| err(e.0))?;
    if uplink.is_none() {
        log::info!("no vif of our own: no uplink");
    }
    rt::ready("net-dd");
    log::info!(
        "ICONNECT-XEN domid={domid} name={name} link_bps={} ip={} mac={stack_mac} echo_port={} serving {}",
        cfg.link_bps,
        cfg.cidr,
        cfg.echo_port,
        be.base()
    );

    let (mut last_stats, mut last_sweep) = (rt::time::now(), rt::time::now());
    let mut uplink_rx: alloc::vec::Vec<alloc::vec::Vec<u8>> = alloc::vec::Vec::new();
    // Wake-ups and the reasons the loop ran again without sleeping (a domain that spins takes
    // the physical CPU from its guests): reported with the statistics.
    let (mut loops, mut spins) = (0u64, [0u64; 4]);
    let mut last_loops = (0u64, [0u64; 4]);
    let mut heartbeat = 0u64;
    loop {
        loops += 1;
        while let Some(ev) = store.poll_event().map_err(err)? {
            if ev.token == uplink::TOKEN {
                if let Some(u) = &mut uplink {
                    u.on_watch(&mut XenStore(&mut store));
                }
            } else {
                be.on_watch(&mut XenStore(&mut store), &ev.path, &ev.token, rt::time::now().as_nanos());
            }
        }
        let now = rt::time::now();
        let now_ns = now.as_nanos();
        let qos_due = be.tick(&mut XenStore(&mut store), now_ns);
        let sweep = now - last_sweep >= SWEEP;
        if sweep {
            last_sweep = now;
        }
        be.doorbells(sweep);
        let mut busy = [false; 4];
        let mut from_uplink = core::mem::take(&mut uplink_rx);
        if let Some(u) = &mut uplink {
            busy[0] = u.poll(|f| from_uplink.push(f.to_vec()));
        }
        let mut wire = XenWire { stack: &mut stack, uplink: uplink.as_mut() };
        for f in from_uplink.drain(..) {
            be.sw.input(UPLINK, &f, now_ns, &mut wire);
        }
        uplink_rx = from_uplink;
        let snow = smol_now();
        iface.poll(snow, wire.stack, &mut sockets);
        busy[1] = echo.poll(&mut sockets);
        while let Some(f) = wire.stack.pop_sent() {
            be.sw.input(STACK, &f, now_ns, &mut wire);
            wire.stack.recycle(f);
        }
        let wake = be.sw.pump(now_ns, &mut wire);
        busy[2] = be.sw.flush() || wake.is_some_and(|t| t <= now_ns);
        busy[3] = wire.stack.pending() > 0;
        if let Some(u) = wire.uplink {
            u.kick();
        }
        be.after_switch();
        if now - last_stats >= STATS_EVERY {
            let moved = be.report_stats((now - last_stats).as_secs_f64());
            heartbeat += 1;
            // Every line on Xen's debug port may be spliced into dom0's console lines on the
            // shared serial port: keep them few (while traffic moves, and every 10 s).
            if moved || heartbeat.is_multiple_of(10) {
                log::info!(
                    "ICONNECT-XENLOOP wakeups={} spins uplink={} stack={} switch={} stack_rx={}{}",
                    loops - last_loops.0,
                    spins[0] - last_loops.1[0],
                    spins[1] - last_loops.1[1],
                    spins[2] - last_loops.1[2],
                    spins[3] - last_loops.1[3],
                    uplink.as_ref().map_or(String::new(), |u| u.stats())
                );
            }
            last_loops = (loops, spins);
            last_stats = now;
        }
        if busy.iter().any(|b| *b) {
            for (n, b) in spins.iter_mut().zip(busy) {
                *n += u64::from(b);
            }
            continue;
        }
        let mut next = IDLE.min(SWEEP);
        if let Some(d) = iface.poll_delay(snow, &sockets) {
            next = next.min(Duration::from_micros(d.total_micros()));
        }
        for t in [wake, qos_due].into_iter().flatten() {
            next = next.min(Duration::from_nanos(t.saturating_sub(now_ns)));
        }
        rt::event::wait_until(Some(now + next));
    }
}
