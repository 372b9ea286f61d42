//! Opening flows put aside: a handshake the server answered whose client has sent nothing for
//! [`FlowConfig::opening_timeout`](super::FlowConfig::opening_timeout). What a SYN flood leaves
//! behind looks exactly like a client that connected ahead of its first request (a warmed pool);
//! neither may cost a full flow for long. A parked flow keeps only where its stream starts, so
//! that when its first bytes do come the flow is taken up again as if it had never left (not as
//! one picked up mid-stream, which would lose the connection's every request).

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher, RandomState},
};

use super::FlowKey;

/// What a parked flow keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Start {
    /// Sequence number of stream offset 0.
    pub(super) base: u32,
    /// TCP Fast Open bytes its SYN carried.
    pub(super) syn_len: u32,
    /// The server's acknowledgement number when it was parked.
    pub(super) server_ack: Option<u32>,
    /// The handshake's window scale options.
    pub(super) scales: super::conn::Scales,
}

/// Parked flows, at most `max` (the oldest forgotten first), each filed under a keyed 64-bit
/// hash of its addresses rather than the addresses (32 bytes an entry instead of 80; the keys
/// are random per process, so no one can aim a collision, and by chance one in 2^33 at 65,536
/// entries — a collision would only give a flow a wrong start, which its bytes then show as a
/// gap).
#[derive(Debug, Default)]
pub(super) struct Parked {
    starts: HashMap<u64, Start>,
    /// Keys in the order they were parked (a key taken up since is skipped when its turn comes).
    order: VecDeque<u64>,
    max: usize,
    hasher: RandomState,
}

impl Parked {
    pub(super) fn new(max: usize) -> Self {
        Self { max, ..Self::default() }
    }

    /// Parks `key`. O(1) amortized.
    pub(super) fn park(&mut self, key: FlowKey, start: Start) {
        let key = self.hasher.hash_one(key);
        if self.starts.insert(key, start).is_none() {
            self.order.push_back(key);
        }
        while self.starts.len() > self.max {
            let Some(old) = self.order.pop_front() else { break };
            self.starts.remove(&old);
        }
        // Keys taken up leave stale entries in `order`: drop them once they are the majority.
        if self.order.len() > 2 * self.starts.len() + 64 {
            self.order.retain(|k| self.starts.contains_key(k));
        }
    }

    /// Takes `key` up again (or forgets it): its start, if it was parked.
    pub(super) fn take(&mut self, key: &FlowKey) -> Option<Start> {
        if self.starts.is_empty() {
            return None;
        }
        self.starts.remove(&self.hasher.hash_one(key))
    }

    pub(super) fn len(&self) -> usize {
        self.starts.len()
    }

    /// Gives back the room of a map that emptied (after a flood).
    pub(super) fn shrink(&mut self) {
        shrink_map(&mut self.starts);
        if self.order.len() < self.order.capacity() / 4 {
            self.order.shrink_to(self.order.len() * 2);
        }
    }
}

/// Gives back most of a hash map's room once it holds less than a quarter of it.
pub(super) fn shrink_map<K: std::hash::Hash + Eq, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    if map.capacity() > 1024 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey { client: format!("10.0.0.1:{port}").parse().unwrap(), server: "10.0.0.2:80".parse().unwrap() }
    }

    #[test]
    fn bounded_oldest_first_and_taken_once() {
        let mut p = Parked::new(3);
        let s = |base| Start { base, syn_len: 0, server_ack: None, scales: Default::default() };
        for i in 0..5u16 {
            p.park(key(i), s(u32::from(i)));
        }
        assert_eq!(p.len(), 3);
        assert_eq!(p.take(&key(0)), None, "the oldest were forgotten");
        assert_eq!(p.take(&key(3)), Some(s(3)));
        assert_eq!(p.take(&key(3)), None);
        for i in 10..10_000u16 {
            p.park(key(i), s(0));
            p.take(&key(i));
        }
        assert!(p.order.len() < 200, "stale keys are dropped: {}", p.order.len());
    }
}
