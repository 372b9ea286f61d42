//! Joining the sides of a pair: the primary's response (from the pairer, on the capture side),
//! the shadow's and the baseline's (from replay) arrive at different times and in any order,
//! under one id per (request, compared mirror). Sans-IO: sides and ticks in, whole pairs out. A
//! pair whose sides do not all come within the timeout goes out with the missing ones
//! [`Incomplete::Missing`]. What waits is bounded in pairs and in body bytes: a pair expected
//! beyond either is refused (counted), so the join never grows without bound.
//!
//! [`settle`] then compares a joined pair, counts it and builds its log record: what is left to
//! the caller is exporting the counts and writing the record.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, SystemTime},
};

use serde_json::Value;

use super::{
    Incomplete, Response,
    counters::{CompareCounters, Counted},
    diff::{CompareResult, Outcome, compare},
    record::{PairInfo, record},
};
use crate::{config::CompareSettings, route::Name};

/// A side: a response, or why there is none.
pub type Side = Result<Response, Incomplete>;

/// Which request a pair answers, and where it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The route's name.
    pub route: Name,
    /// The compared mirror's endpoints key.
    pub mirror: Name,
    /// The baseline's endpoints key, if the mirror has one.
    pub baseline: Option<Name>,
    /// The request method.
    pub method: String,
    /// The request target.
    pub target: String,
}

/// A pair with all its sides (or their absence).
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    /// What was expected.
    pub expected: Expected,
    /// The primary's response.
    pub primary: Side,
    /// The shadow's response.
    pub shadow: Side,
    /// The baseline's response (`None`: the mirror has no baseline).
    pub baseline: Option<Side>,
}

#[derive(Debug)]
struct Waiting {
    expected: Expected,
    deadline: Duration,
    primary: Option<Side>,
    shadow: Option<Side>,
    baseline: Option<Side>,
    bytes: usize,
}

impl Waiting {
    fn done(&self) -> bool {
        self.primary.is_some() && self.shadow.is_some() && (self.expected.baseline.is_none() || self.baseline.is_some())
    }

    fn into_joined(self) -> Joined {
        let has_baseline = self.expected.baseline.is_some();
        Joined {
            expected: self.expected,
            primary: self.primary.unwrap_or(Err(Incomplete::Missing)),
            shadow: self.shadow.unwrap_or(Err(Incomplete::Missing)),
            baseline: has_baseline.then(|| self.baseline.unwrap_or(Err(Incomplete::Missing))),
        }
    }
}

/// What the join did that no pair shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct JoinStats {
    /// Pairs refused because the join was full (pairs or bytes).
    pub refused: u64,
    /// Sides for no pair waiting (refused, already timed out, or a second copy).
    pub unmatched: u64,
    /// Pairs that went out with a side missing at the timeout.
    pub timed_out: u64,
}

/// Pairs waiting for their sides.
#[derive(Debug)]
pub struct Joiner {
    waiting: HashMap<u64, Waiting>,
    deadlines: BTreeSet<(Duration, u64)>,
    bytes: usize,
    timeout: Duration,
    max_pairs: usize,
    max_bytes: usize,
    stats: JoinStats,
}

pub(crate) fn size(side: &Side) -> usize {
    side.as_ref().map_or(0, |r| r.body.len() + r.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>())
}

impl Joiner {
    /// Pairs wait `timeout` for their sides; at most `max_pairs` wait, and no new pair is taken
    /// while `max_bytes` of responses are held (each pair holds at most three bodies within its
    /// `maxBodyBytes`, so the total stays within `max_bytes` + `max_pairs` × 3 × that).
    pub fn new(timeout: Duration, max_pairs: usize, max_bytes: usize) -> Self {
        Self {
            waiting: HashMap::new(),
            deadlines: BTreeSet::new(),
            bytes: 0,
            timeout,
            max_pairs,
            max_bytes,
            stats: JoinStats::default(),
        }
    }

    /// A pair `id` is coming (at `now`, monotonic); `false` if the join is full (counted: the
    /// caller should not compare this request).
    pub fn expect(&mut self, id: u64, expected: Expected, now: Duration) -> bool {
        if self.waiting.len() >= self.max_pairs || self.bytes >= self.max_bytes || self.waiting.contains_key(&id) {
            self.stats.refused += 1;
            return false;
        }
        let deadline = now + self.timeout;
        self.deadlines.insert((deadline, id));
        let w = Waiting { expected, deadline, primary: None, shadow: None, baseline: None, bytes: 0 };
        self.waiting.insert(id, w);
        true
    }

    /// The primary's side of pair `id`.
    pub fn primary(&mut self, id: u64, side: Side, out: &mut Vec<Joined>) {
        self.put(id, None, side, out);
    }

    /// A mirror's side of pair `id`: `endpoint` says whether it is the shadow or the baseline.
    pub fn mirror(&mut self, id: u64, endpoint: &str, side: Side, out: &mut Vec<Joined>) {
        self.put(id, Some(endpoint), side, out);
    }

    fn put(&mut self, id: u64, endpoint: Option<&str>, side: Side, out: &mut Vec<Joined>) {
        let Some(w) = self.waiting.get_mut(&id) else {
            self.stats.unmatched += 1;
            return;
        };
        let slot = match endpoint {
            None => &mut w.primary,
            Some(e) if *w.expected.mirror == *e => &mut w.shadow,
            Some(e) if w.expected.baseline.as_deref() == Some(e) => &mut w.baseline,
            Some(_) => {
                self.stats.unmatched += 1;
                return;
            }
        };
        if slot.is_some() {
            self.stats.unmatched += 1;
            return;
        }
        let n = size(&side);
        *slot = Some(side);
        w.bytes += n;
        self.bytes += n;
        if w.done() {
            self.release(id, out);
        }
    }

    fn release(&mut self, id: u64, out: &mut Vec<Joined>) {
        if let Some(w) = self.waiting.remove(&id) {
            self.deadlines.remove(&(w.deadline, id));
            self.bytes -= w.bytes;
            out.push(w.into_joined());
        }
    }

    /// Time passes: pairs past their deadline go out with what they have.
    pub fn tick(&mut self, now: Duration, out: &mut Vec<Joined>) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.stats.timed_out += 1;
            self.release(id, out);
        }
    }

    /// When [`tick`](Self::tick) has something to do next.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Pairs waiting, and the bytes they hold.
    pub fn held(&self) -> (usize, usize) {
        (self.waiting.len(), self.bytes)
    }

    /// What no pair shows.
    pub fn stats(&self) -> JoinStats {
        self.stats
    }
}

/// A joined pair compared and counted; its log record if it differs.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    /// What the comparison found.
    pub outcome: Outcome,
    /// The labels to export (`Metrics::compared`).
    pub counted: Counted,
    /// The record to write to the mirror's log (`different` pairs only).
    pub record: Option<Value>,
}

/// Compares `pair` with the mirror's `settings`, counts it in `counters`, and builds its record
/// (time `now`) if it differs.
pub fn settle(pair: &Joined, settings: &CompareSettings, counters: &mut CompareCounters, now: SystemTime) -> Settled {
    fn side(s: &Side) -> Result<&Response, Incomplete> {
        s.as_ref().map_err(|e| *e)
    }
    let outcome = compare(side(&pair.primary), side(&pair.shadow), pair.baseline.as_ref().map(side), settings);
    let e = &pair.expected;
    let counted = counters.count(&e.route, &e.mirror, &outcome, settings.max_fields_per_route);
    let record = match (&pair.primary, &pair.shadow) {
        (Ok(p), Ok(s)) if outcome.result == CompareResult::Different => {
            let info = PairInfo { time: now, route: &e.route, mirror: &e.mirror, method: &e.method, target: &e.target };
            Some(record(&info, p, s, &outcome, settings))
        }
        _ => None,
    };
    Settled { outcome, counted, record }
}
