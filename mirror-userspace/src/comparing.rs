//! The compare task (issue 15): brings together the primary's responses (from the capture
//! thread's pipeline) and the shadow's and baseline's (from replay), compares each pair, exports
//! the counts (`mirror_compare_total`, `mirror_compare_differences_total`) and writes the
//! differences log. It runs on a thread of its own at a lower CPU priority (nice +10: parsing and
//! diffing bodies yields to the capture thread, replay and the primary itself); the capture
//! thread and replay only [`Sink::send`] to it, which never waits: a full channel, or a message
//! whose response bytes do not fit in the memory budget (charged as `compare` until the task
//! takes it), is dropped and counted (a dropped side makes its pair incomplete at the join's
//! timeout, never blocks anything).
//!
//! Order matters and is kept by one channel for all: the capture thread sends a compared
//! request's `Expect` before it submits the request to replay, so the join knows the pair before
//! any of its mirror sides can arrive.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use serde_json::{Value, json};
use tokio::{
    sync::{mpsc, oneshot},
    time::{Instant as TokioInstant, sleep_until},
};

use crate::{
    compare::{
        CompareCounters,
        join::{Joined, Joiner, Side, settle},
        log::{DiffLog, LogStats},
    },
    memory::{Held, Memory},
    metrics::Metrics,
    pipeline::CompareEvent,
    route::{Name, Router},
};

/// Messages waiting for the task, at most: beyond, senders drop (counted).
const CHANNEL: usize = 16_384;
/// Pairs waiting for their sides, at most.
const MAX_PAIRS: usize = 4096;
/// Comparing holds at most 1/COMPARE_SHARE of the memory budget.
pub const COMPARE_SHARE: usize = 4;
/// Bytes of responses held by the join before new pairs are refused.
const MAX_BYTES: usize = 64 << 20;

/// A message for the compare task.
#[derive(Debug)]
pub enum Msg {
    /// From the capture thread's pipeline.
    Capture(CompareEvent),
    /// A mirror's response to pair `id` (from replay).
    Mirror {
        /// The pair's id.
        id: u64,
        /// The endpoints key of the mirror that answered (the compared one or the baseline).
        endpoint: Name,
        /// Its response, or why there is none.
        side: Side,
    },
    /// A reloaded config: new settings and logs for pairs settled from now on.
    Router(Arc<Router>),
    /// Stop: pairs still waiting are settled as they are, the summary is sent back.
    Finish(oneshot::Sender<Value>),
}

/// The senders' end of the task's channel. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sink {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
    memory: Arc<Memory>,
}

/// The response bytes a message carries (charged to the memory budget while it is queued).
fn weight(msg: &Msg) -> usize {
    match msg {
        Msg::Capture(CompareEvent::Primary { side, .. }) | Msg::Mirror { side, .. } => crate::compare::join::size(side),
        _ => 0,
    }
}

impl Sink {
    /// Queues `msg` without waiting; `false` (and counted) if the channel is full or closed.
    pub fn send(&self, msg: Msg) -> bool {
        let w = weight(&msg);
        // Comparing may hold a quarter of the budget at most (what waits in the channel, the
        // join and the pairers): it never takes the memory mirroring needs.
        let room = self.memory.held(Held::Compare) + w <= self.memory.limit() / COMPARE_SHARE;
        let ok = room && self.memory.try_charge(Held::Compare, w) && {
            let queued = self.tx.try_send(msg).is_ok();
            if !queued {
                self.memory.release(Held::Compare, w);
            }
            queued
        };
        if !ok {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Queues `msg`, waiting for room (offline replay, where nothing live can be delayed).
    pub async fn send_wait(&self, msg: Msg) {
        let w = weight(&msg);
        self.memory.adjust(Held::Compare, 0, w);
        if self.tx.send(msg).await.is_err() {
            self.memory.release(Held::Compare, w);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stops the task and returns its summary (waits for room in the channel: shutdown only).
    pub async fn finish(&self) -> Value {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Finish(tx)).await.is_err() {
            return Value::Null;
        }
        let mut summary = rx.await.unwrap_or(Value::Null);
        summary["channel_dropped"] = json!(self.dropped.load(Ordering::Relaxed));
        summary
    }
}

/// Starts the task on a thread of its own. `timeout`: how long a pair waits for its sides.
pub fn start(router: Arc<Router>, timeout: Duration, metrics: Option<Arc<Metrics>>, memory: Arc<Memory>) -> Sink {
    let (tx, rx) = mpsc::channel(CHANNEL);
    let sink = Sink { tx, dropped: Arc::new(AtomicU64::new(0)), memory: memory.clone() };
    let task = Task {
        joiner: Joiner::new(timeout, MAX_PAIRS, MAX_BYTES),
        counters: CompareCounters::default(),
        logs: HashMap::new(),
        log_errors: 0,
        router,
        metrics,
        memory,
        held: 0,
        start: Instant::now(),
        joined: Vec::new(),
        incomplete: std::collections::BTreeMap::new(),
    };
    let thread = std::thread::Builder::new().name("compare".into()).spawn(move || {
        // Best effort: a thread's nice value (Linux: per thread); failure leaves it at the
        // daemon's priority.
        // SAFETY: plain syscalls on this thread's own id.
        unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, libc::getpriority(libc::PRIO_PROCESS, 0) + 10);
        }
        match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(rt) => rt.block_on(run(rx, task)),
            Err(e) => tracing::error!("compare task: no runtime: {e}"),
        }
    });
    if let Err(e) = thread {
        tracing::error!("compare task: no thread: {e}");
    }
    sink
}

struct Task {
    joiner: Joiner,
    counters: CompareCounters,
    /// Open logs by file (a destination's settings name it).
    logs: HashMap<PathBuf, DiffLog>,
    log_errors: u64,
    router: Arc<Router>,
    metrics: Option<Arc<Metrics>>,
    memory: Arc<Memory>,
    /// What the join was last charged to the memory budget.
    held: usize,
    start: Instant,
    joined: Vec<Joined>,
    /// Incomplete pairs by `side:reason` (summary).
    incomplete: std::collections::BTreeMap<String, u64>,
}

async fn run(mut rx: mpsc::Receiver<Msg>, mut task: Task) {
    loop {
        let next = task.joiner.poll_timeout().map(|d| TokioInstant::from_std(task.start + d));
        let msg = match next {
            Some(at) => tokio::select! {
                m = rx.recv() => m,
                () = sleep_until(at) => {
                    task.tick();
                    continue;
                }
            },
            None => rx.recv().await,
        };
        match msg {
            None => break,
            Some(Msg::Finish(reply)) => {
                task.tick_all();
                let _ = reply.send(task.summary());
                break;
            }
            Some(m) => task.on(m),
        }
    }
    task.memory.release(Held::Compare, task.held);
}

impl Task {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn on(&mut self, msg: Msg) {
        self.memory.release(Held::Compare, weight(&msg));
        let mut joined = std::mem::take(&mut self.joined);
        match msg {
            Msg::Capture(CompareEvent::Expect { id, expected }) => {
                // Refused (the join is full): counted by the join; the mirrors' sides for it will
                // be unmatched.
                self.joiner.expect(id, expected, self.now());
            }
            Msg::Capture(CompareEvent::Primary { id, side }) => self.joiner.primary(id, side, &mut joined),
            Msg::Mirror { id, endpoint, side } => self.joiner.mirror(id, &endpoint, side, &mut joined),
            Msg::Router(router) => self.router = router,
            Msg::Finish(_) => unreachable!("handled by run"),
        }
        self.settle_all(&mut joined);
        self.joined = joined;
    }

    fn tick(&mut self) {
        let mut joined = std::mem::take(&mut self.joined);
        self.joiner.tick(self.now(), &mut joined);
        self.settle_all(&mut joined);
        self.joined = joined;
    }

    /// Shutdown: every pair still waiting goes out with its missing sides.
    fn tick_all(&mut self) {
        let mut joined = std::mem::take(&mut self.joined);
        self.joiner.tick(Duration::MAX, &mut joined);
        self.settle_all(&mut joined);
    }

    fn settle_all(&mut self, joined: &mut Vec<Joined>) {
        for pair in joined.drain(..) {
            let Some(settings) = self.router.compared.get(&pair.expected.mirror).cloned() else {
                continue; // the destination stopped comparing (reload)
            };
            let settled = settle(&pair, &settings, &mut self.counters, SystemTime::now());
            let incomplete = settled.outcome.incomplete.map(|(side, why)| (side, why.as_str()));
            if let Some((side, why)) = incomplete {
                *self.incomplete.entry(format!("{side}:{why}")).or_default() += 1;
            }
            if let Some(m) = &self.metrics {
                m.compared(&pair.expected.route, &pair.expected.mirror, &settled.counted, incomplete);
            }
            if let (Some(record), Some(log)) = (&settled.record, &settings.log) {
                let file = match self.logs.entry(log.path.clone()) {
                    std::collections::hash_map::Entry::Occupied(e) => Some(e.into_mut()),
                    std::collections::hash_map::Entry::Vacant(e) => match DiffLog::open(log) {
                        Ok(l) => Some(e.insert(l)),
                        Err(err) => {
                            self.log_errors += 1;
                            tracing::warn!("opening the differences log {}: {err}", log.path.display());
                            None
                        }
                    },
                };
                if let Some(file) = file
                    && let Err(err) = file.write(record, Instant::now())
                {
                    self.log_errors += 1;
                    tracing::warn!("writing the differences log {}: {err}", log.path.display());
                }
            }
        }
        let (_, bytes) = self.joiner.held();
        self.memory.adjust(Held::Compare, self.held, bytes);
        self.held = bytes;
    }

    fn summary(&self) -> Value {
        let logs: serde_json::Map<String, Value> = self
            .logs
            .iter()
            .map(|(path, log)| {
                let LogStats { written, rate_limited, too_large, rotations } = log.stats();
                let v = json!({"written": written, "rate_limited": rate_limited, "too_large": too_large, "rotations": rotations});
                (path.display().to_string(), v)
            })
            .collect();
        json!({
            "pairs": self.counters.summary(),
            "join": self.joiner.stats(),
            "logs": logs,
            "log_errors": self.log_errors,
            "incomplete": self.incomplete,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compare::Response, config::Config};

    #[test]
    fn a_queued_response_is_charged_to_the_budget_and_one_that_does_not_fit_is_dropped() {
        let text = "capture: {interfaces: [eth0], ports: [80]}\nendpoints: {a: ['127.0.0.1:1']}\nroutes: [{mirror: {host: a}}]\n";
        let router = Arc::new(Router::new(&Config::parse(text, "t").unwrap()).unwrap());
        let memory = Arc::new(Memory::new(64 << 10));
        let sink = start(router, Duration::from_secs(1), None, memory.clone());
        let mirror = |n: usize| Msg::Mirror {
            id: 1,
            endpoint: crate::route::Name::new("a"),
            side: Ok(Response::new(200, &[], &vec![b'x'; n])),
        };
        // Larger than the whole budget: dropped and counted, nothing held.
        assert!(!sink.send(mirror(100 << 10)));
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(memory.held(Held::Compare), 0);
        // One that fits is taken; the task gives its charge back (to the join, which holds no
        // pair for it: unmatched).
        assert!(sink.send(mirror(10 << 10)));
        let deadline = Instant::now() + Duration::from_secs(5);
        while memory.held(Held::Compare) != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(memory.held(Held::Compare), 0);
    }
}
