//! The pipeline's comparison stage (issue 15): pairs the primary's responses, reassembled from the
//! server's stream ([`StreamEvent::ReverseData`](crate::flow::StreamEvent::ReverseData)), with the
//! requests of each flow, and says which requests are compared.
//!
//! Every request of a flow is given to its [`Pairer`] in order (compared or not, routed or not),
//! so that later responses pair with the right request. A request routed to a destination that
//! compares (`mirrorPolicies.<dest>.compare`) gets one id per compared destination; its copy for
//! that destination and for the destination's baseline carry the id
//! ([`Outbound::compare`](super::Outbound::compare)). Out come [`CompareEvent`]s: `Expect` when a
//! compared request was handed to replay whole, `Primary` when the primary's response to it was
//! framed (or found missing, cut, too large). Pairing costs nothing unless the server's stream is
//! reassembled ([`FlowConfig::responses`](crate::flow::FlowConfig::responses)).

use crate::{
    compare::{
        PairLimits, Paired, Pairer,
        join::{Expected, Side},
    },
    flow::{FlowKey, StreamEvent},
    route::{MirrorTarget, Name, Router},
};

/// What the comparison needs to know from the capture side, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum CompareEvent {
    /// Compared request `id` was handed to replay (its copies carry `compare: Some(id)`).
    Expect {
        /// The pair's id.
        id: u64,
        /// Which request, where it went.
        expected: Expected,
    },
    /// The primary's response to compared request `id`, or why there is none.
    Primary {
        /// The pair's id.
        id: u64,
        /// The response.
        side: Side,
    },
}

/// Requests waiting for their response on one flow beyond which the flow stops being paired (its
/// responses never come: e.g. the server's stream start was never seen). Later requests of the
/// flow are reported missing at once.
const MAX_WAITING: usize = 1024;

/// One compared request's copy for one destination: its pair id, and whether the copy is the
/// compared one (`true`) or the baseline's (`false`).
pub(super) type CopyRole = Option<(u64, bool)>;

/// The roles of a request's copies, one per mirror (inline up to two, as [`crate::route::Mirrors`]).
pub(super) type Roles = smallvec::SmallVec<[CopyRole; 2]>;

/// The comparison stage of a pipeline.
#[derive(Default)]
pub(super) struct CompareStage {
    /// The server's stream is reassembled: pairing is on.
    on: bool,
    next_id: u64,
    pairers: crate::flow::FlowMap<Pairer<Vec<u64>>>,
    /// Bytes the pairers hold, over all flows (see [`Pairer::held`]).
    held: usize,
    paired: Vec<Paired<Vec<u64>>>,
    events: Vec<CompareEvent>,
}

impl CompareStage {
    pub(super) fn new(on: bool) -> Self {
        Self { on, ..Self::default() }
    }

    /// Pairs the requests framed from now on, or not (flows being paired go on until they end).
    pub(super) fn set_on(&mut self, on: bool) {
        self.on = on;
    }

    /// A request head framed on `key`, going to `mirrors`: gives it to the flow's pairer and
    /// returns each copy's role (`None` for every copy when nothing is compared).
    pub(super) fn request(&mut self, key: FlowKey, method: &str, mirrors: &[MirrorTarget], router: &Router) -> Roles {
        let mut roles: Roles = smallvec::smallvec![None; mirrors.len()];
        if !self.on || router.compared.is_empty() {
            return roles;
        }
        let mut ids = Vec::new();
        for (i, m) in mirrors.iter().enumerate() {
            if !router.compared.contains_key(&m.endpoint) {
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            ids.push(id);
            roles[i] = Some((id, true));
            if let Some(&b) = router.baselines.get(&m.endpoint)
                && let Some(j) = mirrors.iter().position(|t| t.endpoint == b)
                && roles[j].is_none()
            {
                roles[j] = Some((id, false));
            }
        }
        // The baseline of a compared destination may itself be compared: then its copy carries
        // its own id (set above, as it comes first or later), and the other pair lacks its baseline.
        let limits = PairLimits {
            max_body: router.compared.values().map(|s| s.max_body_bytes).max().unwrap_or(0),
            ..PairLimits::default()
        };
        self.pairers.entry(key).or_insert_with(|| Pairer::new(limits));
        self.with(key, |p, out| {
            p.request(method.as_bytes(), (!ids.is_empty()).then_some(ids), out);
            if p.waiting() > MAX_WAITING {
                p.close(false, out);
            }
        });
        roles
    }

    /// A compared request was handed to replay whole (called once per compared copy).
    pub(super) fn expect(&mut self, id: u64, route: &Name, mirror: &Name, method: &str, target: &str, router: &Router) {
        let baseline = router.baselines.get(mirror).copied();
        let expected = Expected {
            route: *route,
            mirror: *mirror,
            baseline,
            method: method.to_string(),
            target: target.to_string(),
        };
        self.events.push(CompareEvent::Expect { id, expected });
    }

    /// An event of `key`'s server stream: its bytes, a gap, its FIN.
    pub(super) fn on_reverse(&mut self, key: FlowKey, ev: StreamEvent) {
        match ev {
            StreamEvent::ReverseFin => self.close(key, true),
            StreamEvent::ReverseData(bytes) => self.with(key, |p, out| p.data(&bytes, out)),
            StreamEvent::ReverseGap(len) => self.with(key, |p, out| p.gap(len, out)),
            _ => {}
        }
    }

    /// Runs `f` on `key`'s pairer (if it has one), keeps the books of what it holds, and turns
    /// what it paired into events.
    fn with(&mut self, key: FlowKey, f: impl FnOnce(&mut Pairer<Vec<u64>>, &mut Vec<Paired<Vec<u64>>>)) {
        let Some(p) = self.pairers.get_mut(&key) else { return };
        let before = p.held();
        f(p, &mut self.paired);
        self.held = self.held - before + p.held();
        self.flush();
    }

    /// Bytes the pairers hold, over all flows.
    pub(super) fn held(&self) -> usize {
        self.held
    }

    /// The flow whose pairer holds the most, and how much (a scan: only under memory pressure).
    pub(super) fn largest(&self) -> Option<(usize, FlowKey)> {
        self.pairers.iter().map(|(k, p)| (p.held(), *k)).filter(|(n, _)| *n > 0).max()
    }

    /// The memory budget needs what `key`'s pairer holds: its waiting and later requests are
    /// reported incomplete (`shed`); the pairer stays, so later responses never pair with the
    /// wrong request.
    pub(super) fn shed(&mut self, key: FlowKey) {
        self.with(key, |p, out| p.shed(out));
    }

    /// `key`'s server stream ended: by its FIN (`clean`), or the flow ended (reset, idle,
    /// evicted, given up). Every request still waiting is reported.
    pub(super) fn close(&mut self, key: FlowKey, clean: bool) {
        if let Some(mut p) = self.pairers.remove(&key) {
            self.held -= p.held();
            p.close(clean, &mut self.paired);
            self.flush();
        }
    }

    /// Pairs framed so far become events, one per compared destination.
    fn flush(&mut self) {
        for Paired { tag, response } in self.paired.drain(..) {
            for id in tag {
                self.events.push(CompareEvent::Primary { id, side: response.clone() });
            }
        }
    }

    /// The events since the last call, in order.
    pub(super) fn take(&mut self) -> Vec<CompareEvent> {
        std::mem::take(&mut self.events)
    }
}

impl super::Pipeline {
    /// Sheds pairings while comparing holds more than its share of the budget.
    pub(super) fn keep_compare_share(&mut self) {
        let share = self.memory.limit() / crate::comparing::COMPARE_SHARE;
        while self.memory.held(crate::memory::Held::Compare) > share && self.shed_pairing() {}
    }

    /// Sheds the pairing of the flow whose held response is the largest (see
    /// [`CompareStage::shed`]): when comparing holds more than its share of the budget
    /// ([`COMPARE_SHARE`](crate::comparing::COMPARE_SHARE)), or when it is the largest thing
    /// any flow holds. `false` when there is none to shed.
    pub(super) fn shed_pairing(&mut self) -> bool {
        let over_share =
            self.memory.held(crate::memory::Held::Compare) > self.memory.limit() / crate::comparing::COMPARE_SHARE;
        let top = if over_share { 0 } else { self.by_held.last().map_or(0, |&(n, _)| n) };
        let Some((_, key)) = self.routing.compare.largest().filter(|&(n, _)| n >= top) else { return false };
        self.routing.compare.shed(key);
        self.routing.stats.shed_flows += 1;
        let held = self.routing.compare.held();
        self.memory.adjust(crate::memory::Held::Compare, self.compare_held, held);
        self.compare_held = held;
        true
    }
}
