//! The ivshmem client/server protocol as data: which number, with which descriptor, goes to
//! which peer when a peer joins or leaves. Pure, so the message order is tested on its own.

/// The protocol version this server speaks (QEMU 2.5 and later).
pub const VERSION: i64 = 0;

/// Sent instead of [`VERSION`] to a client the channel refuses (it is full), just before closing
/// the connection. No client speaks this version, so QEMU's device fails its start with "server
/// sent version -2, expecting 0". (Merely closing is worse: QEMU's device keeps re-reading a
/// closed socket during its start, spinning forever.)
pub const REFUSED_VERSION: i64 = -2;

/// The number sent with the shared-memory descriptor.
pub const SHM_MARKER: i64 = -1;

/// Which descriptor travels with a message.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum FdRef {
    /// None: a plain number (version, id, or a disconnect notification).
    None,
    /// The shared-memory region.
    Shm,
    /// Eventfd of `peer`'s interrupt vector `vector` (writing it interrupts `peer`).
    Vector {
        /// Owner of the eventfd.
        peer: u16,
        /// Vector index.
        vector: u16,
    },
}

/// One 8-byte message for the peer `to`.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub struct Msg {
    /// Recipient peer id.
    pub to: u16,
    /// The number (sent as 8 bytes little-endian).
    pub value: i64,
    /// The descriptor sent with it.
    pub fd: FdRef,
}

/// The messages for a newcomer `new` joining the peers `existing`, in sending order: to the
/// newcomer its version, id and the region; to each existing peer the newcomer's vectors; to
/// the newcomer each existing peer's vectors; finally to the newcomer its own vectors (that is
/// the order of QEMU's specification; per socket, the order is what matters).
pub fn connect_plan(new: u16, existing: &[u16], vectors: u16) -> Vec<Msg> {
    let mut m = vec![
        Msg {
            to: new,
            value: VERSION,
            fd: FdRef::None,
        },
        Msg {
            to: new,
            value: i64::from(new),
            fd: FdRef::None,
        },
        Msg {
            to: new,
            value: SHM_MARKER,
            fd: FdRef::Shm,
        },
    ];
    let vecs = |to: u16, owner: u16| {
        (0..vectors).map(move |vector| Msg {
            to,
            value: i64::from(owner),
            fd: FdRef::Vector {
                peer: owner,
                vector,
            },
        })
    };
    for &other in existing.iter().filter(|&&p| p != new) {
        m.extend(vecs(other, new));
    }
    for &other in existing.iter().filter(|&&p| p != new) {
        m.extend(vecs(new, other));
    }
    m.extend(vecs(new, new));
    m
}

/// The messages announcing that `gone` left, one to each of `remaining`.
pub fn disconnect_plan(gone: u16, remaining: &[u16]) -> Vec<Msg> {
    remaining
        .iter()
        .filter(|&&p| p != gone)
        .map(|&to| Msg {
            to,
            value: i64::from(gone),
            fd: FdRef::None,
        })
        .collect()
}

/// The lowest id not in `used` (the first client gets 0), or `None` if all 65536 are taken.
pub fn pick_id(used: &[u16]) -> Option<u16> {
    let mut sorted = used.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    // The first index whose id is not its own position is the lowest gap.
    match sorted
        .iter()
        .enumerate()
        .find(|&(i, &id)| usize::from(id) != i)
    {
        Some((i, _)) => u16::try_from(i).ok(),
        None => u16::try_from(sorted.len()).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(peer: u16, vector: u16) -> FdRef {
        FdRef::Vector { peer, vector }
    }

    #[test]
    fn first_peer_gets_header_and_own_vectors() {
        let p = connect_plan(0, &[], 2);
        assert_eq!(
            p,
            vec![
                Msg {
                    to: 0,
                    value: 0,
                    fd: FdRef::None
                },
                Msg {
                    to: 0,
                    value: 0,
                    fd: FdRef::None
                },
                Msg {
                    to: 0,
                    value: -1,
                    fd: FdRef::Shm
                },
                Msg {
                    to: 0,
                    value: 0,
                    fd: v(0, 0)
                },
                Msg {
                    to: 0,
                    value: 0,
                    fd: v(0, 1)
                },
            ]
        );
    }

    #[test]
    fn second_peer_is_announced_both_ways() {
        let p = connect_plan(1, &[0], 2);
        let to_old: Vec<_> = p.iter().filter(|m| m.to == 0).copied().collect();
        assert_eq!(
            to_old,
            vec![
                Msg {
                    to: 0,
                    value: 1,
                    fd: v(1, 0)
                },
                Msg {
                    to: 0,
                    value: 1,
                    fd: v(1, 1)
                },
            ]
        );
        let to_new: Vec<_> = p.iter().filter(|m| m.to == 1).copied().collect();
        assert_eq!(
            to_new,
            vec![
                Msg {
                    to: 1,
                    value: 0,
                    fd: FdRef::None
                },
                Msg {
                    to: 1,
                    value: 1,
                    fd: FdRef::None
                },
                Msg {
                    to: 1,
                    value: -1,
                    fd: FdRef::Shm
                },
                Msg {
                    to: 1,
                    value: 0,
                    fd: v(0, 0)
                },
                Msg {
                    to: 1,
                    value: 0,
                    fd: v(0, 1)
                },
                Msg {
                    to: 1,
                    value: 1,
                    fd: v(1, 0)
                },
                Msg {
                    to: 1,
                    value: 1,
                    fd: v(1, 1)
                },
            ]
        );
    }

    #[test]
    fn every_vector_fd_goes_to_the_right_peers() {
        let existing = [0, 2, 5];
        let p = connect_plan(3, &existing, 3);
        for m in &p {
            if let FdRef::Vector { peer, .. } = m.fd {
                // A vector fd is always announced under its owner's id.
                assert_eq!(i64::from(peer), m.value);
            }
        }
        // The newcomer's vectors reach every existing peer and itself, once per vector.
        for to in [0, 2, 5, 3] {
            for vector in 0..3 {
                assert_eq!(
                    p.iter()
                        .filter(|m| m.to == to && m.fd == v(3, vector))
                        .count(),
                    1
                );
            }
        }
        // Existing peers' vectors reach only the newcomer.
        assert!(p.iter().all(|m| match m.fd {
            FdRef::Vector { peer, .. } if peer != 3 => m.to == 3,
            _ => true,
        }));
        // The newcomer's own vectors come last on its socket.
        let last: Vec<_> = p.iter().filter(|m| m.to == 3).rev().take(3).collect();
        assert!(last.iter().all(|m| m.value == 3));
    }

    #[test]
    fn disconnect_goes_to_the_others_only() {
        assert_eq!(
            disconnect_plan(1, &[0, 1, 2]),
            vec![
                Msg {
                    to: 0,
                    value: 1,
                    fd: FdRef::None
                },
                Msg {
                    to: 2,
                    value: 1,
                    fd: FdRef::None
                },
            ]
        );
        assert!(disconnect_plan(0, &[]).is_empty());
    }

    #[test]
    fn ids_are_lowest_free() {
        assert_eq!(pick_id(&[]), Some(0));
        assert_eq!(pick_id(&[0]), Some(1));
        assert_eq!(pick_id(&[1]), Some(0));
        assert_eq!(pick_id(&[0, 2, 1]), Some(3));
        let all: Vec<u16> = (0..=u16::MAX).collect();
        assert_eq!(pick_id(&all), None);
        assert_eq!(pick_id(&all[1..]), Some(0));
        assert_eq!(pick_id(&[3, 3, 0, 1]), Some(2));
    }
}
