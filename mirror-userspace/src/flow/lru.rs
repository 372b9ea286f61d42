//! The flow table's eviction order: one least-recently-used list per [`Tier`], every operation
//! O(1).
//!
//! A full table makes room by evicting the least recently active flow of the lowest tier that
//! holds any, so what a flood of SYNs (or of segments of connections never seen opening) adds
//! pushes out flows of its own kind: flows that delivered bytes are left alone. Within a tier,
//! the flow whose last segment is the oldest goes first, so a genuine connection's handshake has
//! (opening flows) / (flood rate) seconds to carry its first request before the flood pushes it
//! out.
//!
//! One exception keeps that time from shrinking to nothing when established flows fill the table:
//! opening flows are guaranteed a *reserve* (an eighth of the table). While fewer than that are
//! open, a new flow evicts the least recent clean kept-alive flow instead. A flood can therefore
//! evict established flows only when they fill more than seven eighths of the table, and then at
//! most the reserve of them (the ones quiet the longest), once: after that the flood's own flows
//! fill the reserve and only they are evicted. Flows holding bytes are evicted last, always.
//!
//! The lists are doubly linked through a slab of nodes addressed by index ([`Slot`]): each flow
//! keeps its slot, so moving it to the back of a list (or to another tier) needs no lookup.

use super::FlowKey;

/// How much is lost if a flow is evicted, lowest first: the order in which a full table evicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Tier {
    /// Given up: nothing more of it would ever be delivered.
    Doomed = 0,
    /// Nothing delivered yet: a handshake (answered or not), or bytes the server has not
    /// acknowledged. A SYN flood fills this tier and no other.
    Opening = 1,
    /// Delivered bytes and holds none: a kept-alive connection between requests.
    Idle = 2,
    /// Delivered bytes and holds some (waiting for the server's acknowledgement, or behind a hole).
    Busy = 3,
}

const TIERS: usize = 4;
const NIL: u32 = u32::MAX;

/// Where a flow sits in the [`Lru`]: returned by [`Lru::insert`], valid until
/// [`Lru::remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot(u32);

#[derive(Debug, Clone)]
struct Node {
    key: FlowKey,
    tier: Tier,
    prev: u32,
    next: u32,
}

/// The flows of a table, in eviction order.
#[derive(Debug)]
pub(crate) struct Lru {
    /// Opening flows below which an idle flow is evicted rather than an opening one.
    reserve: usize,
    nodes: Vec<Node>,
    /// Slots of removed nodes, reused first.
    free: Vec<u32>,
    /// Oldest and newest node of each tier (`NIL` when empty).
    ends: [(u32, u32); TIERS],
    lens: [usize; TIERS],
}

impl Default for Lru {
    fn default() -> Self {
        Self::new(0)
    }
}

impl Lru {
    /// Empty, guaranteeing opening flows `reserve` places (see the module documentation).
    pub(crate) fn new(reserve: usize) -> Self {
        Self { reserve, nodes: Vec::new(), free: Vec::new(), ends: [(NIL, NIL); TIERS], lens: [0; TIERS] }
    }

    /// Adds `key` as the most recent flow of `tier`.
    pub(crate) fn insert(&mut self, key: FlowKey, tier: Tier) -> Slot {
        let node = Node { key, tier, prev: NIL, next: NIL };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                u32::try_from(self.nodes.len() - 1).expect("fewer than 2^32 flows")
            }
        };
        self.push_back(i, tier);
        Slot(i)
    }

    /// Makes the flow at `slot` the most recent of `tier` (its tier may change).
    pub(crate) fn touch(&mut self, slot: Slot, tier: Tier) {
        let i = slot.0;
        let node = &self.nodes[i as usize];
        if node.tier == tier && node.next == NIL {
            return; // already the most recent of its tier
        }
        self.unlink(i);
        self.push_back(i, tier);
    }

    /// Forgets the flow at `slot`; the slot may be handed out again.
    pub(crate) fn remove(&mut self, slot: Slot) {
        self.unlink(slot.0);
        self.free.push(slot.0);
    }

    /// The flow to evict: the least recent of the lowest tier that holds any, except that an
    /// idle flow goes before an opening one while opening flows are fewer than the reserve.
    pub(crate) fn oldest(&self) -> Option<FlowKey> {
        let order = if self.lens[Tier::Opening as usize] < self.reserve {
            [Tier::Doomed, Tier::Idle, Tier::Opening, Tier::Busy]
        } else {
            [Tier::Doomed, Tier::Opening, Tier::Idle, Tier::Busy]
        };
        let head = order.iter().map(|&t| self.ends[t as usize].0).find(|&head| head != NIL)?;
        Some(self.nodes[head as usize].key)
    }

    /// The tier the flow at `slot` is filed under.
    pub(crate) fn tier_of(&self, slot: Slot) -> Tier {
        self.nodes[slot.0 as usize].tier
    }

    /// Flows in `tier`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn len_of(&self, tier: Tier) -> usize {
        self.lens[tier as usize]
    }

    fn push_back(&mut self, i: u32, tier: Tier) {
        let t = tier as usize;
        let tail = self.ends[t].1;
        {
            let node = &mut self.nodes[i as usize];
            node.tier = tier;
            node.prev = tail;
            node.next = NIL;
        }
        if tail == NIL {
            self.ends[t].0 = i;
        } else {
            self.nodes[tail as usize].next = i;
        }
        self.ends[t].1 = i;
        self.lens[t] += 1;
    }

    fn unlink(&mut self, i: u32) {
        let Node { tier, prev, next, .. } = self.nodes[i as usize];
        let t = tier as usize;
        if prev == NIL {
            self.ends[t].0 = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.ends[t].1 = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
        self.lens[t] -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(port: u16) -> FlowKey {
        FlowKey { client: ([10, 0, 0, 1], port).into(), server: ([10, 0, 0, 2], 80).into() }
    }

    /// Evicts everything, returning the keys' ports in eviction order.
    fn drain(lru: &mut Lru, slots: &mut std::collections::HashMap<u16, Slot>) -> Vec<u16> {
        let mut order = Vec::new();
        while let Some(key) = lru.oldest() {
            let port = key.client.port();
            lru.remove(slots.remove(&port).unwrap());
            order.push(port);
        }
        order
    }

    #[test]
    fn lowest_tier_first_then_least_recent() {
        let mut lru = Lru::default();
        let mut slots = std::collections::HashMap::new();
        for (port, tier) in [
            (1, Tier::Busy),
            (2, Tier::Idle),
            (3, Tier::Opening),
            (4, Tier::Idle),
            (5, Tier::Opening),
            (6, Tier::Doomed),
        ] {
            slots.insert(port, lru.insert(k(port), tier));
        }
        // 2 becomes the most recent idle flow; 5 moves up to busy; 1 goes down to idle.
        lru.touch(slots[&2], Tier::Idle);
        lru.touch(slots[&5], Tier::Busy);
        lru.touch(slots[&1], Tier::Idle);
        assert_eq!((lru.len_of(Tier::Opening), lru.len_of(Tier::Idle), lru.len_of(Tier::Busy)), (1, 3, 1));
        assert_eq!(drain(&mut lru, &mut slots), [6, 3, 4, 2, 1, 5]);
        assert_eq!(lru.oldest(), None);
    }

    #[test]
    fn idle_flows_go_before_opening_ones_while_those_are_fewer_than_the_reserve() {
        let mut lru = Lru::new(2);
        let mut slots = std::collections::HashMap::new();
        for (port, tier) in [(1, Tier::Idle), (2, Tier::Opening), (3, Tier::Idle), (4, Tier::Busy), (5, Tier::Idle)] {
            slots.insert(port, lru.insert(k(port), tier));
        }
        assert_eq!(lru.oldest(), Some(k(1)), "one opening flow, below the reserve of two");
        slots.insert(6, lru.insert(k(6), Tier::Opening));
        // Two opening flows: they go first; below the reserve again, idle ones; then the rest.
        assert_eq!(drain(&mut lru, &mut slots), [2, 1, 3, 5, 6, 4]);
    }

    #[test]
    fn slots_are_reused_and_lists_stay_consistent() {
        let mut lru = Lru::default();
        let mut slots = std::collections::HashMap::new();
        for port in 0..100u16 {
            slots.insert(port, lru.insert(k(port), Tier::Opening));
        }
        for port in (0..100u16).step_by(2) {
            lru.remove(slots.remove(&port).unwrap());
        }
        for port in 100..150u16 {
            slots.insert(port, lru.insert(k(port), Tier::Opening));
        }
        assert_eq!(lru.nodes.len(), 100, "removed slots are reused");
        let want: Vec<u16> = (1..100).step_by(2).chain(100..150).collect();
        assert_eq!(drain(&mut lru, &mut slots), want);
    }
}
