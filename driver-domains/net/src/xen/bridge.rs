//! A minimal learning bridge between vifs (until net-dd's platform-independent `netswitch`
//! bridge is wired in here too): a source MAC is learnt on the vif it came from (a guest may
//! only send from the MAC xl gave it); broadcast, multicast and unknown destinations are flooded
//! to every other vif; a known one goes to its vif, never back out of the ingress vif.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// A vif: (frontend domid, device id).
pub type VifId = (u16, u32);

/// Learnt MAC table.
#[derive(Debug, Default)]
pub struct Bridge {
    table: BTreeMap<[u8; 6], VifId>,
}

/// Where a frame goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Forward {
    /// To this vif.
    One(VifId),
    /// To every up vif except the ingress one.
    Flood,
    /// Nowhere (runt, bad or spoofed source, hairpin).
    Drop,
}

fn mac_at(frame: &[u8], at: usize) -> Option<[u8; 6]> {
    frame.get(at..at + 6)?.try_into().ok()
}

impl Bridge {
    /// Decides where `frame` from `ingress` (whose MAC is `pinned`, if known) goes, learning its
    /// source.
    pub fn forward(&mut self, ingress: VifId, pinned: Option<[u8; 6]>, frame: &[u8]) -> Forward {
        let (Some(dst), Some(src)) = (mac_at(frame, 0), mac_at(frame, 6)) else { return Forward::Drop };
        if frame.len() < 14 || src[0] & 1 != 0 || src == [0; 6] || pinned.is_some_and(|p| p != src) {
            return Forward::Drop;
        }
        self.table.insert(src, ingress);
        if dst[0] & 1 != 0 {
            return Forward::Flood;
        }
        match self.table.get(&dst) {
            Some(&v) if v == ingress => Forward::Drop,
            Some(&v) => Forward::One(v),
            None => Forward::Flood,
        }
    }

    /// Forgets every MAC learnt on `vif` (it went down).
    pub fn remove(&mut self, vif: VifId) {
        let gone: Vec<[u8; 6]> = self.table.iter().filter(|(_, v)| **v == vif).map(|(m, _)| *m).collect();
        for m in gone {
            self.table.remove(&m);
        }
    }
}
