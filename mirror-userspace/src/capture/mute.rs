//! Given-up flows muted in the kernel (`MIRROR_MUTED`): the flow table asks ([`Mute`]), this
//! applies. A muted connection's segments reach the daemon as headers only, so a connection
//! whose requests will never be framed again (a gap it cannot frame past, or picked up
//! mid-stream) no longer costs the ring and the capture thread its payload. Under a ring overflow
//! that matters most: the flows it broke stop competing for the ring with the flows still whole.
//!
//! Muting only saves work, so it is best effort: at most [`MAX_PER_ROUND`] mutes a round (a
//! flood of flows given up at once costs a bounded number of system calls), the rest dropped and
//! counted. Unmutes are never dropped (each follows a mute applied, so they are bounded by them):
//! an entry left behind would mute the next connection on its 4-tuple should that one's SYN
//! have passed before the entry went in. Otherwise the kernel takes an entry out at the next SYN
//! on its 4-tuple (a new connection), it covers only [`mirror_common::MUTE_SPAN`] bytes of
//! sequence space, and the map forgets its least recently used entries beyond
//! [`mirror_common::MAX_MUTED`].
//!
//! What is left: a mute applied after the SYN of a new connection on the same 4-tuple went by
//! (the old connection closed and the new one opened between the capture round that asked for the
//! mute and its end) mutes the new one until the next round unmutes it: its first bytes come
//! without payload, so its first request is lost (a counted gap) and the flow is given up.

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use mirror_common::{MuteKey, MuteValue};

use super::key_addr;
use crate::flow::{FlowKey, Mute};

/// Most mutes applied in one round of the capture loop (unmutes are all applied).
pub const MAX_PER_ROUND: usize = 256;

/// What was done with the flow table's mutes (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MuteStats {
    /// Flows muted (or muted again further on).
    pub muted: u64,
    /// Flows unmuted as they ended.
    pub unmuted: u64,
    /// Changes not applied: mutes beyond [`MAX_PER_ROUND`] in a round, or refused by the kernel.
    pub skipped: u64,
}

/// The kernel map's key for `key`: (client, server), IPv4 in the first 4 bytes.
pub fn mute_key(key: &FlowKey) -> MuteKey {
    let (client, family) = key_addr(key.client.ip());
    let (server, _) = key_addr(key.server.ip());
    MuteKey { client, server, client_port: key.client.port(), server_port: key.server.port(), family, _pad: [0; 3] }
}

/// Leaves out of `changes` the mutes beyond the first [`MAX_PER_ROUND`] (every unmute stays, the
/// order too); returns how many were left out.
fn within_cap(changes: &mut Vec<Mute>) -> u64 {
    let mut ons = 0;
    let before = changes.len();
    changes.retain(|c| match c {
        Mute::On { .. } => {
            ons += 1;
            ons <= MAX_PER_ROUND
        }
        Mute::Off(_) => true,
    });
    (before - changes.len()) as u64
}

/// Applies `changes` to `map` in order (mutes beyond the first [`MAX_PER_ROUND`] left out) and
/// empties it.
pub fn apply(map: &mut BpfHashMap<&mut MapData, MuteKey, MuteValue>, changes: &mut Vec<Mute>, stats: &mut MuteStats) {
    stats.skipped += within_cap(changes);
    for change in changes.drain(..) {
        match change {
            Mute::On { key, from_seq } => match map.insert(mute_key(&key), MuteValue { from_seq }, 0) {
                Ok(()) => stats.muted += 1,
                Err(e) => {
                    stats.skipped += 1;
                    tracing::debug!("muting a given-up flow: {e}");
                }
            },
            Mute::Off(key) => match map.remove(&mute_key(&key)) {
                Ok(()) => stats.unmuted += 1,
                // Already gone (a SYN took it out, or the map forgot it): as good.
                Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                    stats.unmuted += 1;
                }
                Err(e) => {
                    stats.skipped += 1;
                    tracing::debug!("unmuting a flow: {e}");
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_the_cap_mutes_are_left_out_and_unmutes_never() {
        let key = |p: u16| FlowKey {
            client: format!("10.0.0.1:{p}").parse().unwrap(),
            server: "10.0.0.2:80".parse().unwrap(),
        };
        let mut changes: Vec<Mute> = (0..300).map(|p| Mute::On { key: key(p), from_seq: 1 }).collect();
        // The last mutes' flows end in the same round: their unmutes must all go through.
        changes.extend((250..300).map(|p| Mute::Off(key(p))));
        assert_eq!(within_cap(&mut changes), 44);
        let ons = changes.iter().filter(|c| matches!(c, Mute::On { .. })).count();
        let offs: Vec<&Mute> = changes.iter().filter(|c| matches!(c, Mute::Off(_))).collect();
        assert_eq!((ons, offs.len()), (MAX_PER_ROUND, 50));
        // In order: every mute kept comes before the unmutes, as asked.
        assert!(changes[..MAX_PER_ROUND].iter().all(|c| matches!(c, Mute::On { .. })));
    }

    #[test]
    fn keys_put_client_then_server_ipv4_first_bytes() {
        let key = FlowKey { client: "10.0.0.1:40000".parse().unwrap(), server: "10.0.0.2:8000".parse().unwrap() };
        let k = mute_key(&key);
        assert_eq!((k.family, k.client_port, k.server_port), (4, 40000, 8000));
        assert_eq!(&k.client[..4], &[10, 0, 0, 1]);
        assert_eq!(&k.server[..4], &[10, 0, 0, 2]);
        assert!(k.client[4..].iter().chain(&k.server[4..]).all(|b| *b == 0));
        assert_eq!(k._pad, [0; 3]);
        let v6 = FlowKey { client: "[fd00::1]:40000".parse().unwrap(), server: "[fd00::2]:8000".parse().unwrap() };
        let k = mute_key(&v6);
        assert_eq!(k.family, 6);
        assert_eq!(k.client, "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!(k.server, "fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    }
}
