//! Given-up flows muted in the kernel (`MIRROR_MUTED`): the flow table asks ([`Mute`]), this
//! applies. A muted connection's segments reach the daemon as headers only, so a connection
//! whose requests will never be framed again (a gap it cannot frame past, or picked up
//! mid-stream) no longer costs the ring and the capture thread its payload. Under a ring overflow
//! that matters most: the flows it broke stop competing for the ring with the flows still whole.
//!
//! Muting only saves work, so it is best effort: at most [`MAX_PER_ROUND`] changes a round (a
//! flood of flows given up at once costs a bounded number of system calls), the rest dropped and
//! counted. An entry left behind is harmless: the kernel takes it out at the next SYN on its
//! 4-tuple (a new connection), it covers only [`mirror_common::MUTE_SPAN`] bytes of sequence
//! space, and the map forgets its least recently used entries beyond
//! [`mirror_common::MAX_MUTED`].

use std::net::{IpAddr, SocketAddr};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use mirror_common::{MuteKey, MuteValue};

use crate::flow::{FlowKey, Mute};

/// Most changes applied in one round of the capture loop.
pub const MAX_PER_ROUND: usize = 256;

/// What was done with the flow table's mutes (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MuteStats {
    /// Flows muted (or muted again further on).
    pub muted: u64,
    /// Flows unmuted as they ended.
    pub unmuted: u64,
    /// Changes not applied: beyond [`MAX_PER_ROUND`] in a round, or refused by the kernel.
    pub skipped: u64,
}

/// The kernel map's key for `key`: (client, server), IPv4 in the first 4 bytes.
pub fn mute_key(key: &FlowKey) -> MuteKey {
    fn put(addr: &SocketAddr, to: &mut [u8; 16]) -> u8 {
        match addr.ip() {
            IpAddr::V4(v4) => {
                to[..4].copy_from_slice(&v4.octets());
                4
            }
            IpAddr::V6(v6) => {
                *to = v6.octets();
                6
            }
        }
    }
    let mut k = MuteKey { client_port: key.client.port(), server_port: key.server.port(), ..Default::default() };
    k.family = put(&key.client, &mut k.client);
    put(&key.server, &mut k.server);
    k
}

/// Applies `changes` (in order, at most [`MAX_PER_ROUND`]) to `map` and empties it.
pub fn apply(map: &mut BpfHashMap<&mut MapData, MuteKey, MuteValue>, changes: &mut Vec<Mute>, stats: &mut MuteStats) {
    let over = changes.len().saturating_sub(MAX_PER_ROUND);
    stats.skipped += over as u64;
    for change in changes.drain(..).take(MAX_PER_ROUND) {
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
