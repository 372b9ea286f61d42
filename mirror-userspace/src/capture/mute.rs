//! Given-up flows muted in the kernel (`MIRROR_MUTED`): the flow table asks ([`Mute`]), this
//! applies. A muted connection's segments reach the daemon as headers only, so a connection
//! whose requests will never be framed again (a gap it cannot frame past, or picked up
//! mid-stream) no longer costs the ring and the capture thread its payload. Under a ring overflow
//! that matters most: the flows it broke stop competing for the ring with the flows still whole.
//!
//! At most [`MAX_PER_ROUND`] mutes are applied a round (a flood of flows given up at once costs a
//! bounded number of system calls a round); the rest wait for the next round, first in line,
//! unless their flow ends before (counted as `deferred`); a flow's mutes in a round, or waiting,
//! are one (a flow picked up mid-stream says where it stands by its own segments, so a forged one
//! can ask at every segment: that costs one map update a round). Unmutes are never put off (a
//! flow asks for one only after it asked for a mute, so they are bounded by those): an entry
//! left behind would mute the next connection on its 4-tuple should that one's SYN have passed
//! before the entry went in. Otherwise the kernel takes an entry out at the next SYN
//! on its 4-tuple (a new connection), it covers only [`mirror_common::MUTE_SPAN`] bytes of
//! sequence space, and the map forgets its least recently used entries beyond
//! [`mirror_common::MAX_MUTED`]. On a full map the kernel takes a node for an update (evicting
//! the least recently used entry) before it checks `BPF_EXIST`, so even an arming that fails
//! may evict another flow's entry (`BPF_EXIST` is used only where the entry went in a round
//! before: arming, renewing). Either way a forgotten entry only costs work: that flow's segments
//! carry their payload again (framing ignores it: the flow is given up) until it asks again,
//! half a span on.
//!
//! A SYN whose sample the ring lost is not seen by the daemon at all: an entry put in after the
//! kernel took the old one out at that SYN is armed, and mutes the new connection. That costs
//! nothing: without its SYN, the new connection's segments are taken for the old given-up flow's
//! (or, after it ends, for a flow picked up mid-stream) and are not mirrored either way.
//!
//! A mute goes in unarmed and is armed a round later (`BPF_EXIST`: only if the entry is still
//! there), unless the flow ended or saw a SYN meanwhile. A new connection on the same 4-tuple
//! whose SYN passed before the entry went in is therefore never muted: its SYN reaches the daemon
//! by the next round, which ends the old flow (an unmute, so the entry is not armed but removed),
//! and a SYN after the entry went in takes it out in the kernel (so arming it fails). The
//! classifier takes the entry out only after it published the SYN's sample, so "before" and
//! "after" are one order: an entry put in after the removal was put in after the SYN could be
//! read, and the next round's drain sees it. Muting
//! starts a round (at most `capture.batchMs`, or the idle wake) later than the flow asked. A
//! renewal (the flow went half a span on) of an entry armed a round ago or more replaces it armed
//! at once, but only if it is still there (`BPF_EXIST`: a SYN since would have taken it out, and
//! the renewal then goes in unarmed like a new mute).

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use mirror_common::{MuteKey, MuteValue};

use super::key_addr;
use crate::flow::{FlowKey, FlowMap, Mute};

/// Most mutes applied in one round of the capture loop (unmutes are all applied).
pub const MAX_PER_ROUND: usize = 256;

/// What was done with the flow table's mutes (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MuteStats {
    /// Flows muted (or muted again further on): entries armed.
    pub muted: u64,
    /// Entries gone before they could be armed: a SYN on the 4-tuple (a new connection) took
    /// them out, or the map forgot them.
    pub withdrawn: u64,
    /// Flows unmuted as they ended.
    pub unmuted: u64,
    /// Mutes put off to a later round: beyond [`MAX_PER_ROUND`] in a round (each time one is
    /// put off). They go first next round, unless their flow ends before.
    pub deferred: u64,
    /// Changes the kernel refused (the map's errors other than "no such entry").
    pub skipped: u64,
}

/// The kernel map's key for `key`: (client, server), IPv4 in the first 4 bytes.
pub fn mute_key(key: &FlowKey) -> MuteKey {
    let (client, family) = key_addr(key.client.ip());
    let (server, _) = key_addr(key.server.ip());
    MuteKey { client, server, client_port: key.client.port(), server_port: key.server.port(), family, _pad: [0; 3] }
}

/// Puts `deferred` (mutes put off by earlier rounds, oldest first) before `changes`, merges the
/// mutes of each flow into one (the latest asked, in the place of the first), drops a mute that
/// an unmute of its key follows (its connection ended or saw a SYN: applied later, the entry
/// would be on a 4-tuple the next connection may hold; a mute after the unmute is that next
/// connection's own), and moves the mutes beyond the first [`MAX_PER_ROUND`] back into
/// `deferred` for a later round (every unmute stays, the order too). So `deferred` holds at most
/// one mute per flow, and a flow that asks again and again costs one slot. Returns how many were
/// put off.
fn within_cap(deferred: &mut Vec<Mute>, changes: &mut Vec<Mute>) -> u64 {
    let mut all = std::mem::take(deferred);
    all.append(changes);
    let mut merged: Vec<Option<Mute>> = Vec::with_capacity(all.len());
    // Where each flow's mute not followed (yet) by an unmute of its key is in `merged`.
    let mut open: FlowMap<usize> = FlowMap::default();
    for c in all {
        match c {
            Mute::On { key, .. } => match open.get(&key) {
                Some(&i) => merged[i] = Some(c),
                None => {
                    open.insert(key, merged.len());
                    merged.push(Some(c));
                }
            },
            Mute::Off(key) => {
                if let Some(i) = open.remove(&key) {
                    merged[i] = None;
                }
                merged.push(Some(c));
            }
        }
    }
    let mut ons = 0;
    for c in merged.into_iter().flatten() {
        match c {
            Mute::On { .. } if ons >= MAX_PER_ROUND => deferred.push(c),
            Mute::On { .. } => {
                ons += 1;
                changes.push(c);
            }
            Mute::Off(_) => changes.push(c),
        }
    }
    deferred.len() as u64
}

/// Flow keys hashed as the flow table hashes them (keys from the wire: a keyed hasher).
type FlowSet = std::collections::HashSet<FlowKey, foldhash::fast::RandomState>;

/// The flows `changes` unmutes: they ended (or saw a SYN) this round.
fn ending(changes: &[Mute]) -> FlowSet {
    changes.iter().filter_map(|c| if let Mute::Off(k) = c { Some(*k) } else { None }).collect()
}

/// What [`Mutes`] needs of the kernel map (the map itself; a fake with its semantics in tests).
pub trait MuteMap {
    /// Inserts or replaces `key` (`only_existing`: `BPF_EXIST`, fails with ENOENT when absent).
    fn put(&mut self, key: &MuteKey, value: MuteValue, only_existing: bool) -> Result<(), MapError>;
    /// Removes `key` (ENOENT when absent).
    fn take(&mut self, key: &MuteKey) -> Result<(), MapError>;
}

impl MuteMap for BpfHashMap<&mut MapData, MuteKey, MuteValue> {
    fn put(&mut self, key: &MuteKey, value: MuteValue, only_existing: bool) -> Result<(), MapError> {
        // BPF_EXIST (2): replace only; BPF_ANY (0): insert or replace.
        self.insert(key, value, if only_existing { 2 } else { 0 })
    }

    fn take(&mut self, key: &MuteKey) -> Result<(), MapError> {
        self.remove(key)
    }
}

/// Whether `e` is the kernel's "no such entry".
fn absent(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::ENOENT))
        || matches!(e, MapError::KeyNotFound)
}

/// The kernel's muted connections as the daemon keeps them: entries put in unarmed last round,
/// armed at the next [`Mutes::apply`].
#[derive(Default)]
pub struct Mutes {
    /// Entries put in (unarmed) by the last round, to arm.
    pending: Vec<(FlowKey, MuteValue)>,
    /// Mutes beyond the last round's cap, oldest first: applied before the next round's own.
    /// At most one per flow (see [`within_cap`]), so bounded by the flow table.
    deferred: Vec<Mute>,
    /// Flows whose entry this daemon armed (it may be gone since: a SYN, the map's LRU): only
    /// these are renewed in place. A first mute goes straight in unarmed, with no `BPF_EXIST`
    /// attempt that must fail first (on a full map such an attempt may evict another entry).
    armed: FlowSet,
    /// What was done (monotonic).
    pub stats: MuteStats,
}

impl Mutes {
    /// Whether the next round has something to do even if the flow table asks nothing.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || !self.deferred.is_empty()
    }

    /// One round: arms last round's entries (except those whose flow this round ends), then
    /// applies the mutes earlier rounds put off and `changes`, in order (mutes beyond the first
    /// [`MAX_PER_ROUND`] put off to the next round; each mute goes in unarmed, to be armed next
    /// round) and empties it.
    pub fn apply(&mut self, map: &mut impl MuteMap, changes: &mut Vec<Mute>) {
        self.stats.deferred += within_cap(&mut self.deferred, changes);
        // A flow that ended or saw a SYN since its entry went in has an unmute here: its entry is
        // removed below, never armed.
        let ended = ending(changes);
        let ended = |k: &FlowKey| ended.contains(k);
        let last = std::mem::take(&mut self.pending);
        for &(key, value) in &last {
            if ended(&key) {
                continue;
            }
            match map.put(&mute_key(&key), MuteValue { armed: 1, ..value }, true) {
                Ok(()) => {
                    self.stats.muted += 1;
                    self.armed.insert(key);
                }
                // A SYN on the 4-tuple took the entry out (or the map forgot it): a new
                // connection, not to be muted.
                Err(e) if absent(&e) => self.stats.withdrawn += 1,
                Err(e) => {
                    self.stats.skipped += 1;
                    tracing::debug!("arming a mute: {e}");
                }
            }
        }
        for change in changes.drain(..) {
            match change {
                Mute::On { key, from_seq } => {
                    // A renewal of an entry that went in a round ago or more and is still there
                    // (no SYN took it out since): replaced armed, only if it exists (BPF_EXIST).
                    let settled =
                        self.armed.contains(&key) && !last.iter().chain(&self.pending).any(|(k, _)| *k == key);
                    if settled && map.put(&mute_key(&key), MuteValue { from_seq, armed: 1 }, true).is_ok() {
                        self.stats.muted += 1;
                        continue;
                    }
                    let value = MuteValue { from_seq, armed: 0 };
                    match map.put(&mute_key(&key), value, false) {
                        Ok(()) => {
                            self.armed.remove(&key);
                            self.pending.retain(|(k, _)| *k != key);
                            self.pending.push((key, value));
                        }
                        Err(e) => {
                            self.stats.skipped += 1;
                            tracing::debug!("muting a given-up flow: {e}");
                        }
                    }
                }
                Mute::Off(key) => {
                    self.armed.remove(&key);
                    self.pending.retain(|(k, _)| *k != key);
                    match map.take(&mute_key(&key)) {
                        // Already gone (a SYN took it out, or the map forgot it): as good.
                        Ok(()) => self.stats.unmuted += 1,
                        Err(e) if absent(&e) => self.stats.unmuted += 1,
                        Err(e) => {
                            self.stats.skipped += 1;
                            tracing::debug!("unmuting a flow: {e}");
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use aya::sys::SyscallError;

    use super::*;

    /// The kernel map's semantics: BPF_EXIST fails on an absent key, removal of one too; `syn`
    /// is what the classifier does at a SYN on the 4-tuple; `muting` whether it would mute.
    #[derive(Default)]
    struct FakeMap(HashMap<Vec<u8>, MuteValue>, usize);

    fn bytes(k: &MuteKey) -> Vec<u8> {
        let mut b = k.client.to_vec();
        b.extend_from_slice(&k.server);
        b.extend_from_slice(&k.client_port.to_ne_bytes());
        b.extend_from_slice(&k.server_port.to_ne_bytes());
        b.push(k.family);
        b
    }

    fn enoent(call: &'static str) -> MapError {
        MapError::SyscallError(SyscallError { call, io_error: std::io::Error::from_raw_os_error(libc::ENOENT) })
    }

    impl MuteMap for FakeMap {
        fn put(&mut self, key: &MuteKey, value: MuteValue, only_existing: bool) -> Result<(), MapError> {
            self.1 += 1;
            if only_existing && !self.0.contains_key(&bytes(key)) {
                return Err(enoent("bpf_map_update_elem"));
            }
            self.0.insert(bytes(key), value);
            Ok(())
        }

        fn take(&mut self, key: &MuteKey) -> Result<(), MapError> {
            self.0.remove(&bytes(key)).map(|_| ()).ok_or_else(|| enoent("bpf_map_delete_elem"))
        }
    }

    impl FakeMap {
        fn syn(&mut self, key: &FlowKey) {
            self.0.remove(&bytes(&mute_key(key)));
        }

        fn muting(&self, key: &FlowKey) -> bool {
            self.0.get(&bytes(&mute_key(key))).is_some_and(|v| v.armed != 0)
        }
    }

    fn flow(port: u16) -> FlowKey {
        FlowKey { client: format!("10.0.0.1:{port}").parse().unwrap(), server: "10.0.0.2:80".parse().unwrap() }
    }

    #[test]
    fn a_mute_is_armed_a_round_after_it_went_in() {
        let (mut map, mut mutes) = (FakeMap::default(), Mutes::default());
        mutes.apply(&mut map, &mut vec![Mute::On { key: flow(1), from_seq: 7 }]);
        assert!(!map.muting(&flow(1)) && mutes.has_pending());
        mutes.apply(&mut map, &mut Vec::new());
        assert!(map.muting(&flow(1)) && !mutes.has_pending());
        assert_eq!(map.0[&bytes(&mute_key(&flow(1)))], MuteValue { from_seq: 7, armed: 1 });
        assert_eq!(mutes.stats, MuteStats { muted: 1, ..Default::default() });
    }

    /// The race: the old connection closed and a new one on its 4-tuple opened (SYN) after the
    /// round that asked for the mute had drained, before the entry went in. The next round sees
    /// the SYN (the flow table's unmute): the entry is removed, never armed.
    #[test]
    fn a_syn_before_the_entry_went_in_keeps_the_new_connection_unmuted() {
        let (mut map, mut mutes) = (FakeMap::default(), Mutes::default());
        map.syn(&flow(1));
        mutes.apply(&mut map, &mut vec![Mute::On { key: flow(1), from_seq: 7 }]);
        assert!(!map.muting(&flow(1)));
        mutes.apply(&mut map, &mut vec![Mute::Off(flow(1))]);
        assert!(map.0.is_empty() && !mutes.has_pending());
        assert_eq!(mutes.stats, MuteStats { unmuted: 1, ..Default::default() });
    }

    /// A SYN after the entry went in takes it out in the kernel: arming it fails.
    #[test]
    fn a_syn_after_the_entry_went_in_withdraws_it() {
        let (mut map, mut mutes) = (FakeMap::default(), Mutes::default());
        mutes
            .apply(&mut map, &mut vec![Mute::On { key: flow(1), from_seq: 7 }, Mute::On { key: flow(2), from_seq: 9 }]);
        map.syn(&flow(1));
        mutes.apply(&mut map, &mut Vec::new());
        assert!(!map.muting(&flow(1)) && map.muting(&flow(2)));
        assert_eq!(map.0.len(), 1);
        assert_eq!(mutes.stats, MuteStats { muted: 1, withdrawn: 1, ..Default::default() });
    }

    /// A renewal of an entry not armed yet goes in unarmed, and a flow muted and ended in one
    /// round leaves nothing.
    #[test]
    fn renewals_rearm_and_a_flow_ended_in_its_round_leaves_nothing() {
        let (mut map, mut mutes) = (FakeMap::default(), Mutes::default());
        mutes.apply(&mut map, &mut vec![Mute::On { key: flow(1), from_seq: 7 }]);
        mutes.apply(&mut map, &mut vec![Mute::On { key: flow(1), from_seq: 1 << 29 }]);
        assert!(!map.muting(&flow(1)));
        mutes.apply(&mut map, &mut vec![Mute::On { key: flow(2), from_seq: 3 }, Mute::Off(flow(2))]);
        assert!(map.muting(&flow(1)) && !map.0.contains_key(&bytes(&mute_key(&flow(2)))));
        assert!(!mutes.has_pending());
        assert_eq!(map.0[&bytes(&mute_key(&flow(1)))], MuteValue { from_seq: 1 << 29, armed: 1 });
        assert_eq!(mutes.stats, MuteStats { muted: 2, unmuted: 1, ..Default::default() });
    }

    /// Mutes beyond the cap wait for the next round (they go first there); unmutes are never
    /// put off, and a mute whose flow ends is dropped, whether it ends in the round it asked or
    /// in a later one.
    #[test]
    fn beyond_the_cap_mutes_wait_their_turn_and_unmutes_never_do() {
        let (mut map, mut mutes) = (FakeMap::default(), Mutes::default());
        let mut changes: Vec<Mute> = (0..300).map(|p| Mute::On { key: flow(p), from_seq: 1 }).collect();
        // The last mutes' flows end in the same round: their unmutes all go through, and their
        // mutes are not kept for later.
        changes.extend((290..300).map(|p| Mute::Off(flow(p))));
        mutes.apply(&mut map, &mut changes);
        assert!(changes.is_empty());
        assert_eq!(map.0.len(), MAX_PER_ROUND);
        assert_eq!(mutes.stats, MuteStats { deferred: 34, unmuted: 10, ..Default::default() });
        // Next round: one of the flows put off ends, the others go in first (unarmed), before
        // this round's own mute; last round's entries are armed.
        let mut changes = vec![Mute::Off(flow(256)), Mute::On { key: flow(1000), from_seq: 1 }];
        mutes.apply(&mut map, &mut changes);
        assert!((0..256).all(|p| map.muting(&flow(p))));
        assert!((257..290).chain([1000]).all(|p| map.0.contains_key(&bytes(&mute_key(&flow(p))))));
        assert!(!map.0.contains_key(&bytes(&mute_key(&flow(256)))));
        assert!((290..300).all(|p| !map.0.contains_key(&bytes(&mute_key(&flow(p))))));
        mutes.apply(&mut map, &mut Vec::new());
        assert!((257..290).chain([1000]).all(|p| map.muting(&flow(p))) && !mutes.has_pending());
        assert_eq!(mutes.stats, MuteStats { muted: 256 + 34, deferred: 34, unmuted: 11, ..Default::default() });
    }

    /// A flood of mutes is applied [`MAX_PER_ROUND`] a round, oldest first, every one in the end.
    #[test]
    fn mutes_put_off_go_first_next_round() {
        let mut deferred = Vec::new();
        let mut changes: Vec<Mute> = (0..600).map(|p| Mute::On { key: flow(p), from_seq: 1 }).collect();
        assert_eq!(within_cap(&mut deferred, &mut changes), 344);
        assert_eq!(changes.len(), MAX_PER_ROUND);
        let mut next = vec![Mute::On { key: flow(700), from_seq: 1 }];
        assert_eq!(within_cap(&mut deferred, &mut next), 89);
        assert_eq!(next.first(), Some(&Mute::On { key: flow(256), from_seq: 1 }));
        let mut last = Vec::new();
        assert_eq!(within_cap(&mut deferred, &mut last), 0);
        assert_eq!(last.len(), 89);
        assert_eq!(last.last(), Some(&Mute::On { key: flow(700), from_seq: 1 }));
    }

    /// A mute after an unmute of its key in one round (the old connection ended, a new one on the
    /// 4-tuple was given up and asked) is the new connection's: beyond the cap it waits its turn
    /// like any other, it is not dropped (its flow asks again only half a span on).
    #[test]
    fn a_mute_after_an_unmute_of_its_key_is_put_off_not_dropped() {
        let (mut map, mut mutes) = (FakeMap::default(), Mutes::default());
        let mut changes: Vec<Mute> =
            (0..MAX_PER_ROUND as u16).map(|p| Mute::On { key: flow(p), from_seq: 1 }).collect();
        changes.push(Mute::Off(flow(1000)));
        changes.push(Mute::On { key: flow(1000), from_seq: 5 });
        mutes.apply(&mut map, &mut changes);
        assert_eq!(mutes.stats.deferred, 1);
        mutes.apply(&mut map, &mut Vec::new());
        mutes.apply(&mut map, &mut Vec::new());
        assert!(map.muting(&flow(1000)), "the new connection's mute was dropped, not put off");
        assert_eq!(map.0[&bytes(&mute_key(&flow(1000)))].from_seq, 5);
    }

    /// A flow asking again and again (a forged flow picked up mid-stream asks at every segment
    /// whose sequence number jumps half a span) costs one map update a round (a first mute goes
    /// straight in, no `BPF_EXIST` attempt first), whether its mutes fit the cap or wait: one
    /// waiting mute at most, the latest asked.
    #[test]
    fn a_flow_asking_again_and_again_costs_one_update_a_round() {
        let (mut map, mut mutes) = (FakeMap::default(), Mutes::default());
        let mut changes: Vec<Mute> = (0..300u32).map(|i| Mute::On { key: flow(7), from_seq: i << 20 }).collect();
        mutes.apply(&mut map, &mut changes);
        assert_eq!((map.1, mutes.deferred.len()), (1, 0));
        assert_eq!(map.0[&bytes(&mute_key(&flow(7)))].from_seq, 299 << 20);
        // Beyond the cap: 256 other flows first, then one flow's 1,000 asks wait as one.
        for round in 0..20u32 {
            let mut changes: Vec<Mute> =
                (0..MAX_PER_ROUND as u16).map(|p| Mute::On { key: flow(1000 + p), from_seq: round }).collect();
            changes.extend((0..1000u32).map(|i| Mute::On { key: flow(7), from_seq: round * 1000 + i }));
            mutes.apply(&mut map, &mut changes);
            assert!(mutes.deferred.len() <= 1, "{} mutes wait for one flow", mutes.deferred.len());
        }
        // Put off once, flow 7 goes first the round after (oldest first): each round it went in
        // with the latest it asked, and the last of the 256 others waits.
        assert_eq!(mutes.deferred, [Mute::On { key: flow(1000 + 255), from_seq: 19 }]);
        assert_eq!(map.0[&bytes(&mute_key(&flow(7)))].from_seq, 19 * 1000 + 999);
    }

    /// One flow's asks do not starve another's: a mute asked while another flow floods the cap
    /// is applied within two rounds of the flood's end, and the flood's own mute with it.
    #[test]
    fn one_flows_asks_do_not_starve_another_flows_mute() {
        let (mut map, mut mutes) = (FakeMap::default(), Mutes::default());
        for round in 0..10u32 {
            let mut changes: Vec<Mute> =
                (0..1000u32).map(|i| Mute::On { key: flow(7), from_seq: (round * 1000 + i) << 12 }).collect();
            if round == 5 {
                changes.push(Mute::On { key: flow(8), from_seq: 1 });
            }
            mutes.apply(&mut map, &mut changes);
        }
        mutes.apply(&mut map, &mut Vec::new());
        assert!(map.muting(&flow(8)) && map.muting(&flow(7)));
        assert!(!mutes.has_pending());
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

    /// A renewal (the flow went half a span on) of an entry armed a round ago or more keeps it
    /// armed: replaced unarmed, the given-up connection would ship its payload again for a round
    /// at every renewal.
    #[test]
    fn a_renewal_keeps_an_armed_mute_armed() {
        let (mut map, mut mutes) = (FakeMap::default(), Mutes::default());
        mutes.apply(&mut map, &mut vec![Mute::On { key: flow(1), from_seq: 7 }]);
        mutes.apply(&mut map, &mut Vec::new());
        assert!(map.muting(&flow(1)));
        mutes.apply(&mut map, &mut vec![Mute::On { key: flow(1), from_seq: 1 << 29 }]);
        assert!(map.muting(&flow(1)), "a renewal unmuted an armed connection for a round");
        assert_eq!(map.0[&bytes(&mute_key(&flow(1)))].from_seq, 1 << 29);
    }

    /// Arming renewals at once keeps the guarantee. A SYN took the armed entry out and the old flow asks for a renewal before the daemon saw that SYN:
    /// the renewal must not arm an entry a new connection could meet.
    #[test]
    fn a_renewal_after_a_syn_is_not_armed_at_once() {
        let (mut map, mut mutes) = (FakeMap::default(), Mutes::default());
        mutes.apply(&mut map, &mut vec![Mute::On { key: flow(1), from_seq: 7 }]);
        mutes.apply(&mut map, &mut Vec::new());
        map.syn(&flow(1));
        mutes.apply(&mut map, &mut vec![Mute::On { key: flow(1), from_seq: 1 << 29 }]);
        assert!(!map.muting(&flow(1)));
        // The next round sees the SYN: the old flow's unmute.
        mutes.apply(&mut map, &mut vec![Mute::Off(flow(1))]);
        assert!(map.0.is_empty() && !mutes.has_pending());
    }

    /// A mute put in last round (not armed yet) and renewed this round goes in unarmed again, and
    /// the flow's end removes it.
    #[test]
    fn a_renewal_of_a_pending_mute_waits_its_round() {
        let (mut map, mut mutes) = (FakeMap::default(), Mutes::default());
        mutes.apply(&mut map, &mut vec![Mute::On { key: flow(1), from_seq: 7 }]);
        // The renewal comes the round after: the entry is armed first (it waited its round), then
        // replaced unarmed (not settled: it was pending).
        mutes.apply(&mut map, &mut vec![Mute::On { key: flow(1), from_seq: 1 << 29 }]);
        assert!(!map.muting(&flow(1)));
        mutes.apply(&mut map, &mut vec![Mute::Off(flow(1))]);
        assert!(map.0.is_empty());
    }

    // A randomized model of the wire, the kernel map and the flow table (from the second review).

    use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

    #[derive(Clone, Copy, Debug)]
    enum Sample {
        Syn(u16, u32),
        Data(u16, u32),
        Fin(u16),
    }

    /// Whether an event of chance `pct` (%) happens.
    fn chance(rng: &mut StdRng, pct: u64) -> bool {
        rng.random_range(0..100) < pct
    }

    const KEYS: u16 = 4;

    /// The wire and the kernel: the map, the current connection on each 4-tuple, the ring.
    struct Sim {
        map: HashMap<u16, MuteValue>,
        conn: [u32; KEYS as usize],
        ring: Vec<Sample>,
        rng: StdRng,
        /// Chance (%) of a kernel event before each map call.
        racy: u64,
        violations: Vec<String>,
    }

    impl Sim {
        fn kernel_event(&mut self) {
            let k = self.rng.random_range(0..KEYS);
            match self.rng.random_range(0..10) {
                0 => {
                    // A new connection's SYN: published, then the entry taken out.
                    self.conn[k as usize] += 1;
                    self.ring.push(Sample::Syn(k, self.conn[k as usize]));
                    self.map.remove(&k);
                }
                1 => self.ring.push(Sample::Fin(k)),
                _ => self.ring.push(Sample::Data(k, self.conn[k as usize])),
            }
        }

        fn check(&mut self, at: &str) {
            for (k, v) in &self.map {
                if v.armed != 0 && v.from_seq != self.conn[*k as usize] {
                    self.violations.push(format!(
                        "{at}: key {k} armed for connection {} while connection {} holds it",
                        v.from_seq, self.conn[*k as usize]
                    ));
                }
            }
        }

        fn port(key: &MuteKey) -> u16 {
            key.client_port
        }
    }

    impl MuteMap for Sim {
        fn put(&mut self, key: &MuteKey, value: MuteValue, only_existing: bool) -> Result<(), MapError> {
            if chance(&mut self.rng, self.racy) {
                self.kernel_event();
            }
            let k = Self::port(key);
            if k >= KEYS {
                return Ok(()); // filler flows: not modelled in the kernel
            }
            let r = if only_existing && !self.map.contains_key(&k) {
                Err(enoent("bpf_map_update_elem"))
            } else {
                self.map.insert(k, value);
                Ok(())
            };
            self.check("put");
            r
        }

        fn take(&mut self, key: &MuteKey) -> Result<(), MapError> {
            if chance(&mut self.rng, self.racy) {
                self.kernel_event();
            }
            let k = Self::port(key);
            if k >= KEYS {
                return Ok(());
            }
            let r = self.map.remove(&k).map(|_| ()).ok_or_else(|| enoent("bpf_map_delete_elem"));
            self.check("take");
            r
        }
    }

    #[derive(Clone, Copy)]
    struct TFlow {
        conn: u32,
        given_up: bool,
        muted: bool,
    }

    /// Whatever the order of SYNs, data, FINs, the daemon's rounds and its map calls (a kernel
    /// event may land before any of them), and with mutes put off by the cap, no entry is ever
    /// armed for a connection other than the one on the wire; once every flow ended, `armed` and
    /// the map are empty. (Fails without the `ended` check on arming, or without dropping a mute
    /// an unmute of its key follows.)
    #[test]
    fn a_model_of_the_wire_never_sees_an_entry_armed_on_a_new_connection() {
        for seed in 1..400u64 {
            let mut sim = Sim {
                map: HashMap::new(),
                conn: [1; KEYS as usize],
                ring: Vec::new(),
                rng: StdRng::seed_from_u64(seed),
                racy: 20,
                violations: Vec::new(),
            };
            let mut mutes = Mutes::default();
            let mut table: [Option<TFlow>; KEYS as usize] = [None; KEYS as usize];
            let flood = seed % 3 == 0;
            for round in 0..200u32 {
                let n = sim.rng.random_range(0..6);
                for _ in 0..n {
                    sim.kernel_event();
                }
                sim.check("wire");
                let batch = std::mem::take(&mut sim.ring);
                let mut changes = Vec::new();
                if flood && chance(&mut sim.rng, 50) {
                    // Filler flows ahead of ours: the cap defers ours.
                    changes.extend((0..300u16).map(|p| Mute::On { key: flow(1000 + p), from_seq: round }));
                }
                for s in batch {
                    match s {
                        Sample::Syn(k, c) => {
                            if let Some(f) = table[k as usize]
                                && f.muted
                            {
                                changes.push(Mute::Off(flow(k)));
                            }
                            table[k as usize] = Some(TFlow { conn: c, given_up: false, muted: false });
                        }
                        Sample::Fin(k) => {
                            if let Some(f) = table[k as usize].take()
                                && f.muted
                            {
                                changes.push(Mute::Off(flow(k)));
                            }
                        }
                        Sample::Data(k, c) => {
                            let f = table[k as usize].get_or_insert(TFlow { conn: c, given_up: true, muted: false });
                            if !f.given_up && chance(&mut sim.rng, 30) {
                                f.given_up = true;
                            }
                            if f.given_up && (!f.muted || chance(&mut sim.rng, 40)) {
                                f.muted = true;
                                changes.push(Mute::On { key: flow(k), from_seq: f.conn });
                            }
                        }
                    }
                    if flood && chance(&mut sim.rng, 30) {
                        changes.extend((0..50u16).map(|p| Mute::On { key: flow(1400 + p), from_seq: round }));
                    }
                }
                mutes.apply(&mut sim, &mut changes);
                sim.check("round");
            }
            // Every flow ends (what is left in the ring no longer matters).
            sim.racy = 0;
            sim.ring.clear();
            let mut changes = Vec::new();
            for (k, f) in table.iter_mut().enumerate() {
                if let Some(f) = f.take()
                    && f.muted
                {
                    changes.push(Mute::Off(flow(k as u16)));
                }
            }
            mutes.apply(&mut sim, &mut changes);
            mutes.apply(&mut sim, &mut Vec::new());
            assert!(sim.violations.is_empty(), "seed {seed}: {:?}", &sim.violations[..sim.violations.len().min(3)]);
            let ours: Vec<_> = mutes.armed.iter().filter(|k| k.client.port() < KEYS).collect();
            assert!(ours.is_empty(), "seed {seed}: armed keeps ended flows {ours:?}");
            assert!(sim.map.is_empty(), "seed {seed}: entries left {:?}", sim.map);
        }
    }
}
