//! Host unit tests of the pure hardware logic against the fakes.

use crate::Error;
use crate::acpi::{self, McfgEntry, PhysRead, Rsdp, SdtHeader};
use crate::fake::{FakeConfigSpace, FakeMemory, FakeRegs};
use crate::mmio::RegisterBlock;
use crate::pci::*;
use crate::virtio;

fn bdf(b: u8, d: u8, f: u8) -> Bdf {
    Bdf::new(b, d, f).unwrap()
}

// ---------------------------------------------------------------- addressing and headers

#[test]
fn bdf_validates_and_formats() {
    assert!(Bdf::new(0, 32, 0).is_none());
    assert!(Bdf::new(0, 0, 8).is_none());
    assert_eq!(format!("{}", bdf(0, 3, 1)), "00:03.1");
    assert_eq!(
        bdf(2, 1, 3).ecam_offset(0),
        Some((2 << 20) | (1 << 15) | (3 << 12))
    );
    assert_eq!(
        bdf(2, 1, 3).ecam_offset(1),
        Some((1 << 20) | (1 << 15) | (3 << 12))
    );
    assert_eq!(bdf(0, 1, 3).ecam_offset(1), None);
}

#[test]
fn header_decodes_fields() {
    let h = Header::decode([0x1041_1af4, 0x0010_0007, 0x0200_0001, 0x0080_0000]).unwrap();
    assert_eq!(h.vendor_id, 0x1af4);
    assert_eq!(h.device_id, 0x1041);
    assert_eq!(h.command, 7);
    assert_eq!(h.status, 0x10);
    assert_eq!(h.revision, 1);
    assert_eq!((h.class, h.subclass, h.prog_if), (2, 0, 0));
    assert_eq!(h.header_type, 0);
    assert!(h.multifunction);
    assert_eq!(h.bar_count(), 6);
    assert!(Header::decode([0xffff_ffff, 0, 0, 0]).is_none());
    assert!(Header::decode([0x0000_0000, 0, 0, 0]).is_none());
    let bridge = Header::decode([0x000c_1b36, 0, 0x0604_0000, 0x0001_0000]).unwrap();
    assert!(bridge.is_bridge());
    assert_eq!(bridge.bar_count(), 2);
}

#[test]
fn config_space_sub_dword_reads() {
    let mut cfg = FakeConfigSpace::new();
    cfg.add(bdf(0, 0, 0), 0x8086, 0x29c0, 6, 0, 0);
    assert_eq!(cfg.read16(bdf(0, 0, 0), 0), 0x8086);
    assert_eq!(cfg.read16(bdf(0, 0, 0), 2), 0x29c0);
    assert_eq!(cfg.read8(bdf(0, 0, 0), 0x0b), 6);
    assert_eq!(cfg.read32(bdf(0, 1, 0), 0), u32::MAX);
}

// ---------------------------------------------------------------- enumeration

fn q35_like() -> FakeConfigSpace {
    let mut cfg = FakeConfigSpace::new();
    cfg.add(bdf(0, 0, 0), 0x8086, 0x29c0, 0x06, 0x00, 0x00); // host bridge
    cfg.add(bdf(0, 1, 0), 0x1234, 0x1111, 0x03, 0x00, 0x00); // VGA
    cfg.add(bdf(0, 2, 0), 0x1af4, 0x1041, 0x02, 0x00, 0x00); // virtio-net
    cfg.add(bdf(0, 0x1f, 0), 0x8086, 0x2918, 0x06, 0x01, 0x80); // ICH9 LPC, multifunction
    cfg.add(bdf(0, 0x1f, 2), 0x8086, 0x2922, 0x01, 0x06, 0x00); // AHCI
    cfg.add(bdf(0, 0x1f, 3), 0x8086, 0x2930, 0x0c, 0x05, 0x00); // SMBus
    cfg
}

fn collect(cfg: &FakeConfigSpace, last_bus: u8) -> Vec<(Bdf, u16)> {
    let mut v = Vec::new();
    for_each_function(cfg, 0, last_bus, true, |f| {
        v.push((f.bdf, f.header.device_id));
        true
    });
    v
}

#[test]
fn enumeration_finds_functions_and_multifunction() {
    let cfg = q35_like();
    let found = collect(&cfg, 255);
    assert_eq!(
        found,
        vec![
            (bdf(0, 0, 0), 0x29c0),
            (bdf(0, 1, 0), 0x1111),
            (bdf(0, 2, 0), 0x1041),
            (bdf(0, 0x1f, 0), 0x2918),
            (bdf(0, 0x1f, 2), 0x2922),
            (bdf(0, 0x1f, 3), 0x2930),
        ]
    );
}

#[test]
fn enumeration_skips_functions_of_single_function_devices() {
    let mut cfg = q35_like();
    // A function 1 on a device that does not claim multi-function must not be reported
    // (some devices alias function 0 on every function number).
    cfg.add(bdf(0, 1, 1), 0x1234, 0x2222, 0x03, 0x00, 0x00);
    assert!(!collect(&cfg, 0).iter().any(|(b, _)| *b == bdf(0, 1, 1)));
}

#[test]
fn enumeration_follows_bridges_once_and_stays_in_range() {
    let mut cfg = q35_like();
    cfg.add_bridge(bdf(0, 3, 0), 1, 2);
    cfg.add(bdf(1, 0, 0), 0x1af4, 0x1042, 0x01, 0x00, 0x00);
    cfg.add_bridge(bdf(1, 1, 0), 2, 2);
    cfg.add(bdf(2, 5, 0), 0x1af4, 0x1059, 0x04, 0x01, 0x00);
    // A looping bridge pointing back at bus 1 and one pointing outside the window.
    cfg.add_bridge(bdf(2, 6, 0), 1, 1);
    cfg.add_bridge(bdf(2, 7, 0), 9, 9);
    cfg.add(bdf(9, 0, 0), 0xdead, 0xbeef, 0, 0, 0);
    let found = collect(&cfg, 8);
    assert!(found.contains(&(bdf(1, 0, 0), 0x1042)));
    assert!(found.contains(&(bdf(2, 5, 0), 0x1059)));
    assert!(!found.iter().any(|(b, _)| b.bus == 9));
    let bus1: Vec<_> = found.iter().filter(|(b, _)| b.bus == 1).collect();
    assert_eq!(bus1.len(), 2, "bus 1 scanned once");
    // Without following bridges only bus 0 is seen.
    let mut n = 0;
    for_each_function(&cfg, 0, 8, false, |f| {
        assert_eq!(f.bdf.bus, 0);
        n += 1;
        true
    });
    assert_eq!(n, 7);
}

#[test]
fn find_function_stops_early() {
    let cfg = q35_like();
    let f = find_function(&cfg, 0, 255, |f| {
        virtio::is_net(f.header.vendor_id, f.header.device_id)
    })
    .unwrap();
    assert_eq!(f.bdf, bdf(0, 2, 0));
    let reads_for_find = cfg.reads.get();
    assert!(
        reads_for_find < 40,
        "stopped after the hit ({reads_for_find} reads)"
    );
    assert!(find_function(&cfg, 0, 255, |f| f.header.vendor_id == 0x10ec).is_none());
}

// ---------------------------------------------------------------- command register

#[test]
fn command_update_sets_and_clears() {
    let mut cfg = q35_like();
    let d = bdf(0, 2, 0);
    let v = update_command(
        &mut cfg,
        d,
        command::MEMORY_SPACE | command::BUS_MASTER | command::INTX_DISABLE,
        command::IO_SPACE,
    );
    assert_eq!(v, 0x406);
    assert_eq!(command(&cfg, d), 0x406);
    update_command(&mut cfg, d, 0, command::BUS_MASTER);
    assert_eq!(command(&cfg, d), 0x402);
}

// ---------------------------------------------------------------- BARs

#[test]
fn decode_bar_pure_cases() {
    // Unimplemented.
    assert_eq!(decode_bar(0, 0, 0, 0, 0), Ok(None));
    // 32-bit 4 KiB non-prefetchable at 0xfebd1000.
    let b = decode_bar(1, 0xfebd_1000, 0, 0xffff_f000, 0)
        .unwrap()
        .unwrap();
    assert_eq!(
        (b.kind, b.address, b.size, b.prefetchable),
        (BarKind::Memory32, 0xfebd_1000, 0x1000, false)
    );
    // 64-bit prefetchable 16 KiB at 0x8_0000_0000.
    let b = decode_bar(4, 0x0000_000c, 0x8, 0xffff_c00c, 0xffff_ffff)
        .unwrap()
        .unwrap();
    assert_eq!(
        (b.kind, b.address, b.size, b.prefetchable),
        (BarKind::Memory64, 0x8_0000_0000, 0x4000, true)
    );
    assert_eq!(b.slots(), 2);
    // 64-bit BAR bigger than 4 GiB: low mask bits all zero.
    let b = decode_bar(0, 0x4, 0, 0x4, 0xffff_fffe).unwrap().unwrap();
    assert_eq!(b.size, 0x2_0000_0000);
    // I/O, 32 ports, 16-bit decoder.
    let b = decode_bar(0, 0xc041, 0, 0x0000_ffe1, 0).unwrap().unwrap();
    assert_eq!((b.kind, b.address, b.size), (BarKind::Io, 0xc040, 32));
    // Reserved memory type 0b01 and non-power-of-two masks are rejected.
    assert_eq!(decode_bar(0, 0x2, 0, 0xffff_f002, 0), Err(Error::Invalid));
    assert_eq!(decode_bar(0, 0x0, 0, 0xfff0_f000, 0), Err(Error::Invalid));
}

#[test]
fn probe_bars_sizes_restores_and_keeps_command() {
    let mut cfg = q35_like();
    let d = bdf(0, 2, 0);
    cfg.function(d)
        .unwrap()
        .add_io_bar(0, 32, 0xc040)
        .add_mem32_bar(1, 0x1000, 0xfebd_1000, false)
        .add_mem64_bar(4, 0x4000, 0xfe00_0000, true);
    update_command(&mut cfg, d, command::MEMORY_SPACE | command::IO_SPACE, 0);
    let writes_before = cfg.command_writes;
    let bars = probe_bars(&mut cfg, d);
    assert!(!cfg.sized_while_decoding);
    assert_eq!(
        cfg.command_writes - writes_before,
        2,
        "decode toggled once for all BARs"
    );
    assert_eq!(bars[0].unwrap().kind, BarKind::Io);
    assert_eq!(bars[0].unwrap().size, 32);
    assert_eq!(bars[1].unwrap().address, 0xfebd_1000);
    assert_eq!(bars[1].unwrap().size, 0x1000);
    assert!(bars[2].is_none() && bars[3].is_none() && bars[5].is_none());
    let b4 = bars[4].unwrap();
    assert_eq!(
        (b4.kind, b4.address, b4.size, b4.prefetchable),
        (BarKind::Memory64, 0xfe00_0000, 0x4000, true)
    );
    // Originals restored, decode re-enabled.
    assert_eq!(cfg.read32(d, 0x10), 0xc041);
    assert_eq!(cfg.read32(d, 0x14), 0xfebd_1000);
    assert_eq!(cfg.read32(d, 0x20), 0xfe00_000c);
    assert_eq!(cfg.read32(d, 0x24), 0);
    assert_eq!(command(&cfg, d), command::MEMORY_SPACE | command::IO_SPACE);
    // A single BAR probe also sizes with decoding off and restores the command register.
    let b1 = probe_bar(&mut cfg, d, 1).unwrap().unwrap();
    assert_eq!(b1.size, 0x1000);
    assert!(!cfg.sized_while_decoding);
    assert_eq!(command(&cfg, d), command::MEMORY_SPACE | command::IO_SPACE);
}

#[test]
fn probe_bar_rejects_64bit_in_last_slot() {
    let mut cfg = q35_like();
    let d = bdf(0, 2, 0);
    cfg.function(d)
        .unwrap()
        .set32(0x24, 0x4)
        .set_writable(0x24, 0xffff_f000);
    assert_eq!(probe_bar(&mut cfg, d, 5), Err(Error::Invalid));
    assert_eq!(probe_bar(&mut cfg, d, 6), Err(Error::OutOfRange));
}

#[test]
fn unassigned_bar_gets_an_address_from_the_allocator() {
    let mut cfg = q35_like();
    let d = bdf(0, 2, 0);
    cfg.function(d)
        .unwrap()
        .add_mem64_bar(4, 0x4000, 0, true)
        .add_mem32_bar(1, 0x1000, 0, false);
    let mut alloc = BarAllocator::new(0xc000_0000, 0xd000_0000);
    alloc.reserve(0xc000_0000, 0x1000).unwrap();
    let bars = probe_bars(&mut cfg, d);
    for bar in bars.iter().flatten() {
        assert_eq!(bar.address, 0);
        let addr = alloc.alloc(bar.size).unwrap();
        set_bar_address(&mut cfg, d, bar, addr);
    }
    let bars = probe_bars(&mut cfg, d);
    let b1 = bars[1].unwrap();
    let b4 = bars[4].unwrap();
    assert_eq!(b1.address, 0xc000_1000);
    assert_eq!(b4.address, 0xc000_4000);
    assert!(b4.prefetchable, "flag bits kept");
}

#[test]
fn assign_bars_avoids_other_devices_and_keeps_assigned_ones() {
    let mut cfg = q35_like();
    // Firmware-assigned BARs of other devices in the window.
    cfg.function(bdf(0, 1, 0))
        .unwrap()
        .add_mem32_bar(0, 0x100_0000, 0xc000_0000, true) // VGA framebuffer 16 MiB
        .add_mem32_bar(2, 0x1000, 0xc100_0000, false);
    cfg.add_bridge(bdf(0, 3, 0), 1, 1);
    cfg.add(bdf(1, 0, 0), 0x1af4, 0x1042, 1, 0, 0)
        .add_mem64_bar(4, 0x4000, 0xc100_4000, true);
    let d = bdf(0, 2, 0);
    cfg.function(d)
        .unwrap()
        .add_mem32_bar(1, 0x1000, 0, false)
        .add_mem64_bar(4, 0x4000, 0, true)
        .add_io_bar(0, 32, 0);
    update_command(&mut cfg, d, command::MEMORY_SPACE, 0);
    let mut log = Vec::new();
    let bars = assign_bars(&mut cfg, d, 0, 255, 0xc000_0000, 0xd000_0000, |b, a| {
        log.push((b.index, a))
    })
    .unwrap();
    let b1 = bars[1].unwrap();
    let b4 = bars[4].unwrap();
    assert_eq!(log, vec![(1, b1.address), (4, b4.address)]);
    // Naturally aligned, inside the window, clear of the 0xc0000000..0xc1000000 framebuffer,
    // the BAR at 0xc1000000 and the one behind the bridge at 0xc1004000.
    let taken = [
        (0xc000_0000u64, 0x100_0000u64),
        (0xc100_0000, 0x1000),
        (0xc100_4000, 0x4000),
    ];
    for b in [b1, b4] {
        assert_eq!(b.address % b.size.max(0x1000), 0);
        assert!(b.address >= 0xc000_0000 && b.address + b.size <= 0xd000_0000);
        for (base, size) in taken {
            assert!(
                b.address + b.size <= base || b.address >= base + size,
                "{b:?} overlaps {base:#x}"
            );
        }
    }
    assert!(b1.address + b1.size <= b4.address || b4.address + b4.size <= b1.address);
    // I/O BARs are left alone, decoding restored.
    assert_eq!(bars[0].unwrap().address, 0);
    assert_eq!(command(&cfg, d), command::MEMORY_SPACE);
    // A second call finds nothing to do and changes nothing.
    let again = assign_bars(&mut cfg, d, 0, 255, 0xc000_0000, 0xd000_0000, |_, _| {
        panic!("nothing to assign")
    })
    .unwrap();
    assert_eq!(again, bars);
}

#[test]
fn assign_bars_reports_a_full_window() {
    let mut cfg = q35_like();
    let d = bdf(0, 2, 0);
    cfg.function(d).unwrap().add_mem32_bar(1, 0x2000, 0, false);
    assert_eq!(
        assign_bars(&mut cfg, d, 0, 0, 0xc000_0000, 0xc000_1000, |_, _| ()),
        Err(Error::NoSpace)
    );
    assert_eq!(cfg.read32(d, 0x14), 0, "BAR untouched");
}

#[test]
fn bar_allocator_alignment_overlap_and_exhaustion() {
    let mut a = BarAllocator::new(0x1000, 0x10000);
    assert_eq!(a.alloc(0x1000), Ok(0x1000));
    assert_eq!(a.alloc(0x4000), Ok(0x4000));
    assert_eq!(a.alloc(0x1000), Ok(0x2000));
    a.reserve(0x3000, 0x1000).unwrap();
    assert_eq!(a.alloc(0x1000), Ok(0x8000));
    assert_eq!(a.alloc(0x8000), Err(Error::NoSpace));
    assert_eq!(a.alloc(0x3000), Err(Error::Invalid));
    assert_eq!(a.alloc(0), Err(Error::Invalid));
    // Reservations outside the window are ignored; wrapping ones rejected.
    a.reserve(0x10_0000, 0x1000).unwrap();
    assert_eq!(a.reserve(u64::MAX, 2), Err(Error::OutOfRange));
    let mut b = BarAllocator::new(u64::MAX - 0xfff, u64::MAX);
    assert_eq!(b.alloc(0x2000), Err(Error::NoSpace));
}

// ---------------------------------------------------------------- capabilities

#[test]
fn capability_walk_lists_in_order() {
    let mut cfg = q35_like();
    let d = bdf(0, 2, 0);
    let f = cfg.function(d).unwrap();
    let a = f.add_capability(cap_id::MSIX, &[0; 10]);
    let b = f.add_capability(cap_id::VENDOR, &[14, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let c = f.add_capability(cap_id::PCIE, &[0; 2]);
    let caps: Vec<_> = capabilities(&cfg, d).map(|c| (c.id, c.offset)).collect();
    assert_eq!(
        caps,
        vec![(cap_id::MSIX, a), (cap_id::VENDOR, b), (cap_id::PCIE, c)]
    );
    assert_eq!(find_capability(&cfg, d, cap_id::PCIE).unwrap().offset, c);
    assert!(find_capability(&cfg, d, cap_id::MSI).is_none());
}

#[test]
fn capability_walk_without_list_bit_is_empty() {
    let mut cfg = q35_like();
    let d = bdf(0, 2, 0);
    cfg.function(d)
        .unwrap()
        .set8(reg::CAP_PTR, 0x40)
        .set8(0x40, cap_id::MSIX);
    assert_eq!(capabilities(&cfg, d).count(), 0);
    assert_eq!(
        capabilities(&cfg, bdf(0, 9, 0)).count(),
        0,
        "absent function"
    );
}

#[test]
fn capability_walk_survives_loops_and_bad_pointers() {
    let mut cfg = q35_like();
    let d = bdf(0, 2, 0);
    let f = cfg.function(d).unwrap();
    let a = f.add_capability(cap_id::MSIX, &[0; 2]);
    let b = f.add_capability(cap_id::VENDOR, &[0; 2]);
    // b -> a: a loop.
    f.set8(b + 1, a as u8);
    assert_eq!(capabilities(&cfg, d).count(), 2);
    // Self loop.
    let f = cfg.function(d).unwrap();
    f.set8(a + 1, a as u8);
    assert_eq!(capabilities(&cfg, d).count(), 1);
    // Pointer into the header (< 0x40) ends the walk; low bits are masked off.
    cfg.function(d).unwrap().set8(a + 1, 0x10);
    assert_eq!(capabilities(&cfg, d).count(), 1);
    let f = cfg.function(d).unwrap();
    f.set8(reg::CAP_PTR, (b as u8) | 0x3);
    f.set8(b + 1, 0);
    let caps: Vec<_> = capabilities(&cfg, d).collect();
    assert_eq!(
        caps,
        vec![Capability {
            id: cap_id::VENDOR,
            offset: b
        }]
    );
    // Worst case: every dword from 0x40 points to the next one, the last back to 0x40.
    let f = cfg.function(d).unwrap();
    f.set8(reg::CAP_PTR, 0x40);
    for off in (0x40u16..0x100).step_by(4) {
        let next = if off == 0xfc { 0x40 } else { off + 4 };
        f.set8(off, 0x01).set8(off + 1, next as u8);
    }
    assert_eq!(capabilities(&cfg, d).count(), 48);
}

// ---------------------------------------------------------------- MSI-X

fn msix_body(control: u16, table: u32, pba: u32) -> Vec<u8> {
    let mut v = control.to_le_bytes().to_vec();
    v.extend_from_slice(&table.to_le_bytes());
    v.extend_from_slice(&pba.to_le_bytes());
    v
}

#[test]
fn msix_capability_decodes() {
    let mut cfg = q35_like();
    let d = bdf(0, 2, 0);
    let f = cfg.function(d).unwrap();
    f.add_capability(cap_id::VENDOR, &[0; 2]);
    // 3 entries (size-1 = 2), table in BAR 1 at 0, PBA in BAR 1 at 0x800.
    let off = f.add_capability(cap_id::MSIX, &msix_body(0x0002, 0x0000_0001, 0x0000_0801));
    f.set_writable(off, 0xc000_0000);
    let mut m = MsixCap::read(&cfg, d).unwrap();
    assert_eq!(
        m,
        MsixCap {
            cap_offset: off,
            table_size: 3,
            table_bar: 1,
            table_offset: 0,
            pba_bar: 1,
            pba_offset: 0x800,
            enabled: false,
            function_mask: false,
        }
    );
    assert_eq!(m.table_len(), 48);
    m.set_control(&mut cfg, d, true, false);
    assert_eq!(cfg.read16(d, off + 2), 0x8002);
    assert_eq!(cfg.read8(d, off), cap_id::MSIX, "header bytes preserved");
    let m2 = MsixCap::read(&cfg, d).unwrap();
    assert!(m2.enabled && !m2.function_mask);
    m.set_control(&mut cfg, d, true, true);
    assert_eq!(cfg.read16(d, off + 2), 0xc002);
}

#[test]
fn msix_decode_rejects_bad_bir_and_missing_cap() {
    assert_eq!(
        MsixCap::decode(0x40, 0x0001_0011, 0x6, 0x1),
        Err(Error::Invalid)
    );
    assert_eq!(
        MsixCap::decode(0x40, 0x0001_0005, 0x1, 0x1),
        Err(Error::Invalid)
    );
    let m = MsixCap::decode(0x40, 0x07ff_0011, 0x2000_0004, 0x3000_0004).unwrap();
    assert_eq!(
        (m.table_size, m.table_offset, m.pba_offset),
        (2048, 0x2000_0000, 0x3000_0000)
    );
    let cfg = q35_like();
    assert_eq!(MsixCap::read(&cfg, bdf(0, 2, 0)), Err(Error::NotFound));
}

#[test]
fn msix_table_programs_entries() {
    let mut t = MsixTable::new(FakeRegs::new(48), 3).unwrap();
    // Reset state: all entries masked.
    for e in 0..3 {
        t.set_masked(e, true).unwrap();
    }
    t.program(1, 0xfee0_0000, 0x0000_4031).unwrap();
    assert_eq!(t.entry(1), Ok((0xfee0_0000, 0x4031, false)));
    assert_eq!(t.entry(0), Ok((0, 0, true)));
    t.set_masked(1, true).unwrap();
    assert_eq!(t.entry(1), Ok((0xfee0_0000, 0x4031, true)));
    assert_eq!(t.program(3, 0, 0), Err(Error::OutOfRange));
    assert_eq!(t.entry(3), Err(Error::OutOfRange));
    assert!(MsixTable::new(FakeRegs::new(47), 3).is_err());
}

// ---------------------------------------------------------------- virtio capabilities

#[test]
fn virtio_caps_found_by_type() {
    let mut cfg = q35_like();
    let d = bdf(0, 2, 0);
    let f = cfg.function(d).unwrap();
    let vcap = |ty: u8, bar: u8, off: u32, len: u32| {
        let mut v = vec![16u8, ty, bar, 0, 0, 0];
        v.extend_from_slice(&off.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v
    };
    f.add_capability(cap_id::MSIX, &msix_body(2, 1, 0x801));
    f.add_capability(cap_id::VENDOR, &vcap(virtio::CAP_COMMON_CFG, 4, 0, 0x1000));
    f.add_capability(
        cap_id::VENDOR,
        &vcap(virtio::CAP_ISR_CFG, 4, 0x1000, 0x1000),
    );
    // Bad BAR index: skipped.
    f.add_capability(
        cap_id::VENDOR,
        &vcap(virtio::CAP_DEVICE_CFG, 7, 0x2000, 0x1000),
    );
    f.add_capability(
        cap_id::VENDOR,
        &vcap(virtio::CAP_DEVICE_CFG, 4, 0x2000, 0x1000),
    );
    let c = virtio::find_cap(&cfg, d, virtio::CAP_COMMON_CFG).unwrap();
    assert_eq!((c.bar, c.offset, c.length), (4, 0, 0x1000));
    let c = virtio::find_cap(&cfg, d, virtio::CAP_DEVICE_CFG).unwrap();
    assert_eq!((c.bar, c.offset), (4, 0x2000));
    assert_eq!(
        virtio::find_cap(&cfg, d, virtio::CAP_NOTIFY_CFG),
        Err(Error::NotFound)
    );
}

#[test]
fn virtio_common_cfg_vector_routing() {
    let mut regs = FakeRegs::new(0x38);
    regs.write16(0x12, 2); // num_queues
    let mut c = virtio::CommonCfg::new(regs).unwrap();
    assert_eq!(c.set_queue_vector(1, 0), Ok(0));
    assert_eq!(c.set_queue_vector(2, 0), Err(Error::OutOfRange));
    assert_eq!(c.set_config_vector(virtio::NO_VECTOR), virtio::NO_VECTOR);
    assert!(virtio::CommonCfg::new(FakeRegs::new(0x20)).is_err());
    assert!(virtio::is_net(0x1af4, 0x1000) && virtio::is_net(0x1af4, 0x1041));
    assert!(!virtio::is_net(0x1af4, 0x1042) && !virtio::is_net(0x8086, 0x1041));
}

// ---------------------------------------------------------------- ACPI

fn checksum_fix(table: &mut [u8], at: usize) {
    table[at] = 0;
    let s = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    table[at] = 0u8.wrapping_sub(s);
}

fn rsdp_v2(rsdt: u32, xsdt: u64) -> Vec<u8> {
    let mut r = vec![0u8; 36];
    r[..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(b"BOCHS ");
    r[15] = 2;
    r[16..20].copy_from_slice(&rsdt.to_le_bytes());
    r[20..24].copy_from_slice(&36u32.to_le_bytes());
    r[24..32].copy_from_slice(&xsdt.to_le_bytes());
    checksum_fix(&mut r[..20], 8);
    checksum_fix(&mut r, 32);
    r
}

fn rsdp_v1(rsdt: u32) -> Vec<u8> {
    let mut r = vec![0u8; 20];
    r[..8].copy_from_slice(b"RSD PTR ");
    r[16..20].copy_from_slice(&rsdt.to_le_bytes());
    checksum_fix(&mut r, 8);
    r
}

fn sdt(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 36];
    t[..4].copy_from_slice(sig);
    t[4..8].copy_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t[8] = 1;
    t[10..16].copy_from_slice(b"BOCHS ");
    t.extend_from_slice(body);
    checksum_fix(&mut t, 9);
    t
}

fn mcfg(entries: &[(u64, u16, u8, u8)]) -> Vec<u8> {
    let mut body = vec![0u8; 8];
    for &(base, seg, s, e) in entries {
        body.extend_from_slice(&base.to_le_bytes());
        body.extend_from_slice(&seg.to_le_bytes());
        body.extend_from_slice(&[s, e, 0, 0, 0, 0]);
    }
    sdt(b"MCFG", &body)
}

fn rsdt(entries: &[u32]) -> Vec<u8> {
    let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    sdt(b"RSDT", &body)
}

fn xsdt(entries: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    sdt(b"XSDT", &body)
}

/// A QEMU-q35-like layout: RSDP in the BIOS area, RSDT with FACP and MCFG.
fn q35_acpi(rsdp_at: u64) -> FakeMemory {
    let mut mem = FakeMemory::new();
    let mut bios = vec![0u8; (acpi::BIOS_AREA_END - acpi::BIOS_AREA_START) as usize];
    // A decoy with the right signature but a bad checksum comes first.
    let mut decoy = rsdp_v1(0x0300_0000);
    decoy[8] ^= 0x55;
    bios[0x100..0x114].copy_from_slice(&decoy);
    let r = rsdp_v1(0x03fe_0000);
    let at = (rsdp_at - acpi::BIOS_AREA_START) as usize;
    bios[at..at + 20].copy_from_slice(&r);
    mem.add(acpi::BIOS_AREA_START, bios);
    mem.add(0x03fe_0000, rsdt(&[0x03fe_1000, 0x03fe_2000]));
    mem.add(0x03fe_1000, sdt(b"FACP", &[0; 80]));
    mem.add(0x03fe_2000, mcfg(&[(0xb000_0000, 0, 0, 0xff)]));
    mem
}

#[test]
fn rsdp_parse_v1_v2_and_errors() {
    let r = Rsdp::parse(&rsdp_v1(0x1234)).unwrap();
    assert_eq!(
        (r.revision, r.rsdt_address, r.xsdt_address),
        (0, 0x1234, None)
    );
    let r = Rsdp::parse(&rsdp_v2(0x1234, 0x5678_0000)).unwrap();
    assert_eq!((r.revision, r.xsdt_address), (2, Some(0x5678_0000)));
    let mut bad = rsdp_v2(0x1234, 0x5678_0000);
    bad[30] ^= 1; // only the extended checksum covers this byte
    assert_eq!(Rsdp::parse(&bad), Err(Error::BadChecksum));
    let mut bad = rsdp_v1(1);
    bad[17] ^= 1;
    assert_eq!(Rsdp::parse(&bad), Err(Error::BadChecksum));
    let mut bad = rsdp_v1(1);
    bad[0] = b'X';
    assert_eq!(Rsdp::parse(&bad), Err(Error::Invalid));
    assert_eq!(Rsdp::parse(&rsdp_v1(1)[..19]), Err(Error::Truncated));
    // Revision 2 whose length field lies beyond the buffer.
    let mut bad = rsdp_v2(1, 2);
    bad[20..24].copy_from_slice(&400u32.to_le_bytes());
    checksum_fix(&mut bad[..20], 8);
    assert_eq!(Rsdp::parse(&bad), Err(Error::Truncated));
}

#[test]
fn rsdp_scan_skips_decoys_and_misaligned() {
    let mem = q35_acpi(0xf_5a00);
    let (at, r) = acpi::scan_rsdp(&mem, acpi::BIOS_AREA_START, acpi::BIOS_AREA_END).unwrap();
    assert_eq!((at, r.rsdt_address), (0xf_5a00, 0x03fe_0000));
    // The same valid RSDP at a non-16-byte-aligned address is not found.
    let mem = q35_acpi(0xf_5a08);
    assert_eq!(
        acpi::scan_rsdp(&mem, acpi::BIOS_AREA_START, acpi::BIOS_AREA_END),
        Err(Error::NotFound)
    );
    assert_eq!(
        acpi::scan_rsdp(&FakeMemory::new(), 0xe0000, 0x100000),
        Err(Error::NotFound)
    );
}

#[test]
fn find_ecam_via_scanned_rsdt() {
    let mem = q35_acpi(0xf_5a00);
    let e = acpi::find_ecam(&mem, 0).unwrap();
    assert_eq!(
        e,
        McfgEntry {
            base: 0xb000_0000,
            segment: 0,
            start_bus: 0,
            end_bus: 0xff
        }
    );
    assert_eq!(e.window_len(), 256 << 20);
    assert_eq!(e.start_address(), 0xb000_0000);
}

#[test]
fn find_ecam_via_hint_and_xsdt_prefers_segment0_bus0() {
    let mut mem = FakeMemory::new();
    mem.add(0x9000, rsdp_v2(0x0, 0x10_0000));
    mem.add(0x10_0000, xsdt(&[0x20_0000, 0x30_0000]));
    mem.add(0x20_0000, sdt(b"APIC", &[0; 8]));
    mem.add(
        0x30_0000,
        mcfg(&[
            (0xc000_0000, 1, 0, 0x3f),    // other segment
            (0xe010_0000, 0, 1, 0x3f),    // misaligned base: invalid
            (0xd000_0000, 0, 0x10, 0x1f), // segment 0 but not bus 0
            (0xe000_0000, 0, 0, 0x3f),
        ]),
    );
    let e = acpi::find_ecam(&mem, 0x9000).unwrap();
    assert_eq!((e.base, e.start_bus, e.end_bus), (0xe000_0000, 0, 0x3f));
    // No hint and nothing in the BIOS area: not found (caller falls back).
    assert_eq!(acpi::find_ecam(&mem, 0), Err(Error::NotFound));
}

#[test]
fn find_ecam_rejects_corrupt_tables() {
    // MCFG checksum broken.
    let mut mem = FakeMemory::new();
    mem.add(0x9000, rsdp_v1(0x10_0000));
    mem.add(0x10_0000, rsdt(&[0x20_0000]));
    let mut m = mcfg(&[(0xb000_0000, 0, 0, 0xff)]);
    m[44] ^= 1;
    mem.add(0x20_0000, m);
    assert_eq!(acpi::find_ecam(&mem, 0x9000), Err(Error::BadChecksum));
    // RSDT whose length runs past readable memory.
    let mut mem = FakeMemory::new();
    mem.add(0x9000, rsdp_v1(0x10_0000));
    let mut r = rsdt(&[0x20_0000]);
    r[4..8].copy_from_slice(&4000u32.to_le_bytes());
    mem.add(0x10_0000, r);
    assert_eq!(acpi::find_ecam(&mem, 0x9000), Err(Error::OutOfRange));
    // Root table with the wrong signature.
    let mut mem = FakeMemory::new();
    mem.add(0x9000, rsdp_v1(0x10_0000));
    mem.add(0x10_0000, sdt(b"XSDT", &[]));
    assert_eq!(acpi::find_ecam(&mem, 0x9000), Err(Error::Invalid));
    // No MCFG listed.
    let mut mem = FakeMemory::new();
    mem.add(0x9000, rsdp_v1(0x10_0000));
    mem.add(0x10_0000, rsdt(&[0, 0x20_0000]));
    mem.add(0x20_0000, sdt(b"FACP", &[0; 4]));
    assert_eq!(acpi::find_ecam(&mem, 0x9000), Err(Error::NotFound));
    // MCFG with an empty allocation list.
    let mut mem = FakeMemory::new();
    mem.add(0x9000, rsdp_v1(0x10_0000));
    mem.add(0x10_0000, rsdt(&[0x20_0000]));
    mem.add(0x20_0000, mcfg(&[]));
    assert_eq!(acpi::find_ecam(&mem, 0x9000), Err(Error::NotFound));
}

#[test]
fn sdt_header_bounds() {
    let t = sdt(b"MCFG", &[0; 8]);
    assert_eq!(
        SdtHeader::parse(&t).unwrap(),
        SdtHeader {
            signature: *b"MCFG",
            length: 44,
            revision: 1
        }
    );
    let mut short = t.clone();
    short[4..8].copy_from_slice(&10u32.to_le_bytes());
    assert_eq!(SdtHeader::parse(&short), Err(Error::Invalid));
    let mut huge = t.clone();
    huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(SdtHeader::parse(&huge), Err(Error::Invalid));
    assert_eq!(SdtHeader::parse(&t[..35]), Err(Error::Truncated));
    assert_eq!(acpi::mcfg_entry_count(44 + 16 * 3 + 5), 3);
    assert_eq!(acpi::mcfg_entry_count(10), 0);
    assert_eq!(acpi::parse_mcfg_entry(&[0; 15]), Err(Error::Truncated));
    let mut e = [0u8; 16];
    e[10] = 5;
    e[11] = 4;
    assert_eq!(acpi::parse_mcfg_entry(&e), Err(Error::Invalid));
}

#[test]
fn fake_memory_read_bounds() {
    let mut mem = FakeMemory::new();
    mem.add(0x1000, vec![1, 2, 3, 4]);
    let mut b = [0u8; 2];
    mem.read(0x1002, &mut b).unwrap();
    assert_eq!(b, [3, 4]);
    assert_eq!(mem.read(0x1003, &mut b), Err(Error::OutOfRange));
}
