//! One packet, seen at two attach points on its way (a NIC's ingress, then a pod veth's egress;
//! a VXLAN device, then the veth), is handed on once.
//!
//! A sighting is keyed by what the packet carries: addresses, ports, sequence and acknowledgement
//! numbers, flags, payload length, event kind and the TCP checksum field (which covers the
//! payload: a copy with other bytes has another one). A second sighting with the same key at
//! another attach point (interface, hook) within [`WINDOW_NS`] of the first is the same packet
//! further along its path: dropped and counted. A sighting at the same attach point is a genuine
//! retransmission (the client's TCP sent it again) and goes on to the flow table, which has its own
//! rules for retransmitted bytes. Either way, what goes on is identical to what is dropped, so the
//! flow table sees exactly what it would have seen from one attach point.

use std::collections::{HashMap, VecDeque};

use mirror_common::SegmentEvent;

/// How long after its first sighting a copy at another attach point counts as the same packet.
/// A packet crosses the node in microseconds; a genuine retransmission comes after at least
/// Linux's minimum RTO (200 ms) or a round trip of duplicate ACKs (and then at the client's own
/// attach point, which this lets through anyway).
pub const WINDOW_NS: u64 = 50_000_000;
/// Most sightings remembered; beyond it the oldest are forgotten (a copy then goes on, and the
/// flow table absorbs it as a retransmission).
pub const MAX_SIGHTINGS: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    saddr: [u8; 16],
    daddr: [u8; 16],
    seq: u32,
    ack: u32,
    sport: u16,
    dport: u16,
    payload_len: u32,
    csum: u16,
    flags: u8,
    kind: u8,
}

impl Key {
    fn of(ev: &SegmentEvent) -> Key {
        Key {
            saddr: ev.saddr,
            daddr: ev.daddr,
            seq: ev.seq,
            ack: ev.ack,
            sport: ev.sport,
            dport: ev.dport,
            payload_len: ev.payload_len,
            csum: ev.tcp_csum,
            flags: ev.tcp_flags,
            kind: ev.kind,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Sighting {
    /// (ifindex, hook).
    point: (u32, u8),
    ts: u64,
}

/// The sightings of the last [`WINDOW_NS`].
#[derive(Debug, Default)]
pub struct Dedupe {
    seen: HashMap<Key, Sighting>,
    /// Keys in the order they were (last) seen, with when: expiry walks it from the front.
    order: VecDeque<(Key, u64)>,
    /// Copies dropped as second sightings.
    pub dropped: u64,
}

impl Dedupe {
    /// Whether `ev` should go on: false for a second sighting of one packet at another point.
    pub fn first_sighting(&mut self, ev: &SegmentEvent) -> bool {
        self.expire(ev.ts_ns);
        let key = Key::of(ev);
        let here = Sighting { point: (ev.ifindex, ev.hook), ts: ev.ts_ns };
        if let Some(s) = self.seen.get_mut(&key) {
            if s.point != here.point && ev.ts_ns.abs_diff(s.ts) <= WINDOW_NS {
                self.dropped += 1;
                return false;
            }
            // At the same point (a retransmission) or long after: a new first sighting.
            *s = here;
        } else {
            self.seen.insert(key, here);
        }
        self.order.push_back((key, ev.ts_ns));
        true
    }

    /// Forgets sightings older than the window (and the oldest beyond the cap).
    fn expire(&mut self, now: u64) {
        while let Some(&(key, ts)) = self.order.front() {
            if self.order.len() < MAX_SIGHTINGS && ts.saturating_add(WINDOW_NS) >= now {
                break;
            }
            self.order.pop_front();
            // Only if this entry was not seen again since (then a later one in `order` has it).
            if self.seen.get(&key).is_some_and(|s| s.ts == ts) {
                self.seen.remove(&key);
            }
        }
    }

    /// Sightings remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none are remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use mirror_common::{HOOK_EGRESS, HOOK_INGRESS, KIND_PACKET, KIND_REVERSE};

    use super::*;

    fn ev(ts_ns: u64, ifindex: u32, hook: u8, seq: u32) -> SegmentEvent {
        SegmentEvent {
            ts_ns,
            ifindex,
            hook,
            seq,
            ack: 7,
            sport: 40000,
            dport: 8000,
            family: 4,
            kind: KIND_PACKET,
            payload_len: 100,
            tcp_csum: 0xbeef,
            ..Default::default()
        }
    }

    #[test]
    fn a_packet_seen_at_the_nic_and_at_the_veth_goes_on_once() {
        let mut d = Dedupe::default();
        assert!(d.first_sighting(&ev(1_000, 2, HOOK_INGRESS, 1)));
        assert!(!d.first_sighting(&ev(1_050, 9, HOOK_EGRESS, 1)), "the veth copy");
        assert!(!d.first_sighting(&ev(1_080, 5, HOOK_INGRESS, 1)), "a third point (a vxlan device)");
        assert_eq!(d.dropped, 2);
        // The next segment is new.
        assert!(d.first_sighting(&ev(2_000, 2, HOOK_INGRESS, 101)));
        assert!(!d.first_sighting(&ev(2_010, 9, HOOK_EGRESS, 101)));
    }

    #[test]
    fn a_retransmission_at_the_same_point_goes_on_and_its_copy_does_not() {
        let mut d = Dedupe::default();
        assert!(d.first_sighting(&ev(1_000, 2, HOOK_INGRESS, 1)));
        assert!(!d.first_sighting(&ev(1_010, 9, HOOK_EGRESS, 1)));
        // The client sends it again (fast retransmit, within the window): a genuine packet.
        assert!(d.first_sighting(&ev(3_000, 2, HOOK_INGRESS, 1)));
        assert!(!d.first_sighting(&ev(3_010, 9, HOOK_EGRESS, 1)), "and its own copy at the veth");
        assert_eq!(d.dropped, 2);
    }

    #[test]
    fn the_same_interface_on_the_other_hook_is_another_point() {
        let mut d = Dedupe::default();
        assert!(d.first_sighting(&ev(1_000, 4, HOOK_INGRESS, 1)));
        assert!(!d.first_sighting(&ev(1_001, 4, HOOK_EGRESS, 1)), "hairpin");
    }

    #[test]
    fn copies_that_differ_in_anything_they_carry_both_go_on() {
        let mut d = Dedupe::default();
        let first = ev(1_000, 2, HOOK_INGRESS, 1);
        assert!(d.first_sighting(&first));
        let variants = [
            SegmentEvent { tcp_csum: 0xbeee, ..first },
            SegmentEvent { ack: 8, ..first },
            SegmentEvent { payload_len: 99, ..first },
            SegmentEvent { tcp_flags: 1, ..first },
            SegmentEvent { kind: KIND_REVERSE, ..first },
            SegmentEvent { sport: 40001, ..first },
        ];
        for v in variants {
            assert!(d.first_sighting(&SegmentEvent { ifindex: 9, hook: HOOK_EGRESS, ts_ns: 1_010, ..v }), "{v:?}");
        }
        assert_eq!(d.dropped, 0);
    }

    #[test]
    fn after_the_window_a_copy_goes_on_and_old_sightings_are_forgotten() {
        let mut d = Dedupe::default();
        assert!(d.first_sighting(&ev(1_000, 2, HOOK_INGRESS, 1)));
        assert!(d.first_sighting(&ev(1_000 + WINDOW_NS + 1, 9, HOOK_EGRESS, 1)));
        assert!(d.first_sighting(&ev(10 * WINDOW_NS, 2, HOOK_INGRESS, 500)));
        assert_eq!(d.len(), 1, "only the last sighting is remembered");
    }

    #[test]
    fn memory_is_bounded() {
        let mut d = Dedupe::default();
        for i in 0..(MAX_SIGHTINGS as u32 + 1000) {
            assert!(d.first_sighting(&ev(1_000, 2, HOOK_INGRESS, i)));
        }
        assert!(d.len() <= MAX_SIGHTINGS);
        assert!(d.order.len() <= MAX_SIGHTINGS);
    }
}
