//! The PV console (`io/console.h` `struct xencons_interface`): output ring of 2048 bytes at
//! offset 1024, `out_cons`/`out_prod` at 3080/3084. Installed as an `rt` console sink, so
//! everything the image prints also reaches xenconsoled (`xl console`, guest console logs).
//! Bytes that do not fit are dropped: the console must never block the domain.

use core::sync::atomic::Ordering;

use xen_abi::shmem::SharedMem;
use xen_hypercall::{ForeignMem, Port, Xen};

use crate::DomainError;

const OUT: usize = 1024;
const OUT_SIZE: u32 = 2048;
const OUT_CONS: usize = 3080;
const OUT_PROD: usize = 3084;

static CONSOLE: spin::Once<(Xen, ForeignMem, Port)> = spin::Once::new();

fn sink(bytes: &[u8]) {
    let Some((xen, mem, port)) = CONSOLE.get() else { return };
    let cons = mem.load_u32(OUT_CONS, Ordering::Acquire);
    let prod = mem.load_u32(OUT_PROD, Ordering::Relaxed);
    let used = prod.wrapping_sub(cons);
    if used > OUT_SIZE {
        return; // the peer corrupted the indices: stop writing rather than guess
    }
    let n = bytes.len().min((OUT_SIZE - used) as usize);
    for (i, &b) in bytes[..n].iter().enumerate() {
        let at = (prod.wrapping_add(i as u32) % OUT_SIZE) as usize;
        mem.write_bytes(OUT + at, &[b]);
    }
    mem.store_u32(OUT_PROD, prod.wrapping_add(n as u32), Ordering::Release);
    let _ = xen.evtchn_send(*port);
}

/// Mirrors the console to Xen's PV console from now on.
pub fn install() -> Result<(), DomainError> {
    let xen = rt::xen().ok_or(DomainError::NotXen)?;
    let (mem, port) = rt::xen::console_page(xen)?;
    CONSOLE.call_once(|| (xen, mem, port));
    rt::console::set_sink(sink);
    Ok(())
}
