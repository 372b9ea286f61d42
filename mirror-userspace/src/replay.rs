//! Replay: sends complete requests to mirror endpoints over kept-alive, pipelined connections and
//! throws the responses away. Fire and forget: nothing the mirror may have processed is sent twice,
//! queues are bounded, every loss is counted by cause.
//!
//! Requests are written exactly as captured (head with Host rewritten, body byte for byte), which
//! is why this writes raw bytes rather than going through an HTTP client that would re-serialise
//! them. Responses are only framed (by the sans-IO
//! [`ResponseReader`](crate::http::response::ResponseReader)) to know which request each answers.
//! How a connection pipelines, batches and fails: [`conn`].

mod compare;
mod conn;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinSet, time::timeout};

use crate::{
    config::{Pace, ReplaySettings},
    memory::{Held, Memory},
    metrics::Metrics,
    pipeline::{Outbound, Part},
    route::{Name, Router},
    stats::DropReason,
};

/// Counters of what replay did.
#[derive(Debug, Default)]
pub struct ReplayStats {
    /// Requests sent and answered.
    pub sent: AtomicU64,
    /// Responses by status class: index 1 to 5 for 1xx to 5xx, 0 for anything else.
    pub responses: [AtomicU64; 6],
    /// Requests (or streams) lost in replay, one counter per [`DropReason::REPLAY`] entry.
    dropped: [AtomicU64; DropReason::REPLAY.len()],
}

impl ReplayStats {
    /// How many were lost for `reason` (0 for reasons replay does not count).
    pub fn dropped(&self, reason: DropReason) -> u64 {
        Self::index(reason).map_or(0, |i| self.dropped[i].load(Ordering::Relaxed))
    }

    fn count_drop(&self, reason: DropReason) {
        let i = Self::index(reason).expect("replay counts only DropReason::REPLAY");
        self.dropped[i].fetch_add(1, Ordering::Relaxed);
    }

    fn index(reason: DropReason) -> Option<usize> {
        DropReason::REPLAY.iter().position(|r| *r == reason)
    }

    /// The counters for the JSON summary: `sent`, `responses_<class>` and `dropped_<reason>`.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        m.insert("sent".into(), self.sent.load(Ordering::Relaxed));
        for (i, c) in self.responses.iter().enumerate() {
            let label = if i == 0 { "responses_other".to_string() } else { format!("responses_{i}xx") };
            m.insert(label, c.load(Ordering::Relaxed));
        }
        for reason in DropReason::REPLAY {
            m.insert(format!("dropped_{reason}"), self.dropped(reason));
        }
        m
    }
}

struct Endpoint {
    addrs: Vec<SocketAddr>,
    queues: Vec<mpsc::Sender<Outbound>>,
}

/// The mirror connections' queues by endpoint key, looked up once per request on the replay
/// thread (foldhash: the keys come from the config, not the wire).
type Endpoints = HashMap<Name, Endpoint, foldhash::fast::RandomState>;

/// Handle to the replay workers. Shared by the capture thread (which submits) and the daemon
/// (which reconfigures on reload and shuts down).
pub struct Replayer {
    endpoints: Arc<RwLock<Endpoints>>,
    /// To the dispatcher: one message (one wake-up of the runtime) per batch of the capture
    /// thread, however many requests and connections it holds. `None` once shut down.
    batches: Mutex<Option<mpsc::UnboundedSender<Vec<Outbound>>>>,
    /// Batch vectors the dispatcher emptied, for the next batches (see [`Spare`]).
    spare: Arc<Spare>,
    settings: ReplaySettings,
    runtime: tokio::runtime::Handle,
    workers: Mutex<JoinSet<()>>,
    /// What replay did so far (shared with the workers).
    pub stats: Arc<ReplayStats>,
    metrics: Option<Arc<Metrics>>,
    /// The budget the queued requests are charged to ([`Held::Replay`]), shared with the core.
    memory: Arc<Memory>,
    /// Where compared responses go (issue 15).
    compare: Arc<compare::CompareOut>,
}

/// Emptied batch vectors, handed back by the dispatcher for the capture thread's next batches: a
/// new vector per batch (tens of KB: ~100 items of a few hundred bytes) was a large allocation
/// on one thread and its free on another every round, and glibc consolidates its free lists at
/// every allocation of that size (2-3% of the daemon's CPU at 24,000 req/s, `perf`).
#[derive(Default)]
struct Spare(Mutex<Vec<Vec<Outbound>>>);

impl Spare {
    /// Vectors kept, at most.
    const KEEP: usize = 4;
    /// A vector that grew past this many items (a burst) is freed, not kept: kept ones hold at
    /// most `KEEP` × this × `size_of::<Outbound>()` (~3.5 MiB).
    const MAX_ITEMS: usize = 4096;

    fn take(&self) -> Vec<Outbound> {
        self.0.lock().expect("spare lock").pop().unwrap_or_default()
    }

    fn give_back(&self, v: Vec<Outbound>) {
        debug_assert!(v.is_empty());
        if v.capacity() <= Self::MAX_ITEMS {
            let mut spare = self.0.lock().expect("spare lock");
            if spare.len() < Self::KEEP {
                spare.push(v);
            }
        }
    }
}

/// The bytes an item holds while queued: its own size (a queue slot, its strings) and its bytes.
fn weight(ob: &Outbound) -> usize {
    let bytes = match &ob.part {
        // A body's pieces may keep more alive than their bytes (slices of whole segments).
        Part::Whole(r) | Part::Start { request: r, .. } => r.head.len() + r.body.held() + r.method.len(),
        Part::More { held, .. } => *held,
        Part::End { .. } | Part::Abort { .. } => 0,
    };
    std::mem::size_of::<Outbound>() + bytes
}

impl Replayer {
    /// Spawns `settings.connections` workers per endpoint address on the current tokio runtime;
    /// with `metrics`, responses, latencies and failures are recorded there too.
    /// Queued requests are charged to `memory`.
    pub fn start(
        router: &Router,
        settings: &ReplaySettings,
        metrics: Option<Arc<Metrics>>,
        memory: Arc<Memory>,
    ) -> Replayer {
        let (tx, rx) = mpsc::unbounded_channel();
        let r = Replayer {
            endpoints: Arc::default(),
            batches: Mutex::new(Some(tx)),
            spare: Arc::default(),
            settings: settings.clone(),
            runtime: tokio::runtime::Handle::current(),
            workers: Mutex::new(JoinSet::new()),
            stats: Arc::new(ReplayStats::default()),
            metrics,
            memory,
            compare: Arc::default(),
        };
        let rec = r.recorder();
        r.workers
            .lock()
            .expect("workers lock")
            .spawn_on(dispatch(rx, r.endpoints.clone(), r.spare.clone(), rec, settings.pace), &r.runtime);
        r.reconfigure(router);
        r
    }

    /// Brings the endpoints in line with a (new) router: unchanged ones keep their connections,
    /// new ones get workers, removed ones finish what is queued and stop.
    pub fn reconfigure(&self, router: &Router) {
        self.compare.set_router(router);
        let mut eps = self.endpoints.write().expect("endpoints lock");
        eps.retain(|k, ep| router.endpoints.get(k).is_some_and(|a| *a == ep.addrs));
        let mut workers = self.workers.lock().expect("workers lock");
        for (key, addrs) in &router.endpoints {
            if eps.contains_key(key) {
                continue;
            }
            let mut queues = Vec::new();
            for addr in addrs {
                for _ in 0..self.settings.connections {
                    let (tx, rx) = mpsc::channel(self.settings.queue);
                    queues.push(tx);
                    workers.spawn_on(conn::worker(*addr, rx, self.settings.clone(), self.recorder()), &self.runtime);
                }
            }
            eps.insert(*key, Endpoint { addrs: addrs.clone(), queues });
        }
    }

    fn recorder(&self) -> Recorder {
        Recorder {
            stats: self.stats.clone(),
            metrics: self.metrics.clone(),
            memory: self.memory.clone(),
            compare: self.compare.clone(),
        }
    }

    /// Queues requests (or parts of them), in order, without ever waiting: what does not fit is
    /// dropped and counted. Callable from any thread; the whole batch costs the replay runtime
    /// one wake-up. Everything from one client connection goes to the same mirror connection, so
    /// the mirror sees it in order and streamed parts stay together; a streamed request missing
    /// a part is reset by the worker, never completed.
    pub fn submit_batch(&self, items: &mut Vec<Outbound>) {
        if items.is_empty() {
            return;
        }
        let rec = self.recorder();
        let mut batch = self.spare.take();
        batch.reserve(items.len());
        for ob in items.drain(..) {
            // Memory is bounded by bytes, not only by queue slots: a burst of large requests to a
            // slow mirror is dropped, never buffered without bound. Charged before it is queued,
            // so the worker's release never comes first.
            let w = weight(&ob);
            if self.memory.held(Held::Replay) + w > self.settings.max_queued_bytes {
                rec.refuse(&ob, DropReason::QueueFull);
            } else if !self.memory.try_charge(Held::Replay, w) {
                rec.refuse(&ob, DropReason::MemoryBudget);
            } else {
                batch.push(ob);
            }
        }
        let refused = match &*self.batches.lock().expect("batches lock") {
            Some(tx) => tx.send(batch).err().map(|e| e.0),
            None => Some(batch),
        };
        for ob in refused.unwrap_or_default() {
            rec.memory.release(Held::Replay, weight(&ob));
            rec.refuse(&ob, DropReason::QueueFull);
        }
    }

    /// Queues a request, waiting for room (offline replay, where nothing live can be delayed).
    pub async fn send(&self, ob: Outbound) {
        let queue = {
            let eps = self.endpoints.read().expect("endpoints lock");
            eps.get(&ob.endpoint).map(|ep| ep.queues[queue_index(&ob, ep.queues.len())].clone())
        };
        let w = weight(&ob);
        self.memory.adjust(Held::Replay, 0, w);
        let sent = match queue {
            Some(q) => q.send(ob).await.map_err(|e| e.0),
            None => Err(ob),
        };
        if let Err(ob) = sent {
            self.memory.release(Held::Replay, w);
            self.recorder().refuse(&ob, DropReason::QueueFull);
        }
    }

    /// From now on, the responses of compared requests ([`Outbound::compare`]) are read in full
    /// (up to their destination's `maxBodyBytes`) and sent to `sink`; until then, and for other
    /// requests, responses are only framed. Set once.
    pub fn compare_to(&self, sink: crate::comparing::Sink) {
        let _ = self.compare.sink.set(sink);
    }

    /// Stops accepting requests and lets queued ones finish for at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.batches.lock().expect("batches lock").take();
        self.endpoints.write().expect("endpoints lock").clear();
        let mut workers = std::mem::take(&mut *self.workers.lock().expect("workers lock"));
        if timeout(grace, async { while workers.join_next().await.is_some() {} }).await.is_err() {
            workers.abort_all();
        }
    }
}

/// Batches of at most this many items go whole: too small a burst to matter.
const PACE_MIN_ITEMS: usize = 16;
/// The shortest time between two paced groups (a timer wake-up of the runtime each).
const PACE_MIN_GAP: Duration = Duration::from_millis(5);
/// With `replay.pace: auto`, batches that come further apart than this go whole.
const PACE_BELOW: Duration = Duration::from_millis(25);
/// Batches are paced only while what waits for the mirrors (the batch included) is less than
/// this: bulk, and a mirror that fell behind, get everything at once.
const PACE_MAX_QUEUED: usize = 1 << 20;
/// The longest time a batch is spread over (the default `capture.batchMs`): what pacing may add
/// to a copy's delay.
const PACE_WINDOW: Duration = Duration::from_millis(50);

/// How a batch of `len` items that came `interval` after the previous one is handed on, when
/// its endpoints have at most `lanes` connections and `queued` bytes wait for the mirrors (the
/// batch's included): in how many groups and how far apart. Each group is the whole share of
/// the batch of some of the connections (see [`group_of`]).
///
/// A batch written at once is a burst for the mirror: when the mirror shares cores with the
/// primary, the primary's slowest answers are those that wait behind it. Handing each
/// connection its share at a different time spreads the burst over the time until the next
/// batch is due without a write more: a connection still gets its share of the batch in one
/// write, only not at the same instant as the others. (Cutting the batch into chunks across
/// every connection, as first done, multiplied the writes, and each write to a mirror on this
/// machine costs ~20 µs of the kernel's TCP work in our context: chunks of 12 at 2,000 req/s
/// doubled the CPU per request.) At most one group per [`PACE_MIN_GAP`] (≤ 200 wake-ups a
/// second), so fast rounds (24,000 req/s: ~5 ms) go whole; the spread is at most
/// [`PACE_WINDOW`].
///
/// What it costs is a wake-up of the runtime per group. At 8,000 small requests per second
/// (rounds of ~16 ms: 3 groups) it pays: median p99 ratio of 5 pairs 2.84 paced against 4.39 at
/// once (p99 0.62 against 0.99 ms), 9.0 against 8.5 CPU-s per million requests. At 2,000 (rounds
/// of ~50 ms that waited for `capture.batchMs`) 4 groups took the daemon from 8-9 to 12-13 CPU-s
/// per million, for a median ratio of 0.90-1.29 (3 series) against 1.18-1.57 at once (6), within
/// the spread of a series: so `auto` paces only batches closer than [`PACE_BELOW`], and `always`
/// is there for a mirror on the primary's cores that should cost it least.
///
/// Not paced either: a batch when [`PACE_MAX_QUEUED`] bytes or more wait for the mirrors. Where
/// the mirror is the bottleneck (64 KiB uploads at 8,000 req/s: 512 MB/s), holding a
/// connection's share back only leaves it idle meanwhile. (Pacing those too, one bench lost 187
/// of 40,000 such uploads at `replay.maxQueuedBytes`, `queue_full`; with this rule, none. Such a
/// mirror was seen to fall that far behind unpaced too, once: 247.)
fn pace(len: usize, interval: Duration, lanes: usize, queued: usize, mode: Pace) -> (usize, Duration) {
    let slow = interval >= PACE_BELOW;
    if len <= PACE_MIN_ITEMS
        || lanes <= 1
        || queued >= PACE_MAX_QUEUED
        || mode == Pace::Off
        || (slow && mode == Pace::Auto)
    {
        return (1, Duration::ZERO);
    }
    let window = interval.min(PACE_WINDOW);
    let by_time = (window.as_micros() / PACE_MIN_GAP.as_micros()).max(1) as usize;
    let n = lanes.min(by_time);
    (n, window / n as u32)
}

/// The group (of `n`) the connection `queue` of `queues` is handed its share in: consecutive
/// connections together, every group at least one connection when `n <= queues`.
fn group_of(queue: usize, queues: usize, n: usize) -> usize {
    queue * n / queues.max(1)
}

/// Hands each batch's items to their connections' queues (on the runtime: no thread wake-up per
/// connection), paced (see [`pace`]); a full queue drops the item, counted. Items of a
/// connection keep their order (a connection's share is handed on whole, and groups in batch
/// order); a batch still being paced when the next one arrives hands the rest on at once.
async fn dispatch(
    mut rx: mpsc::UnboundedReceiver<Vec<Outbound>>,
    endpoints: Arc<RwLock<Endpoints>>,
    spare: Arc<Spare>,
    rec: Recorder,
    mode: Pace,
) {
    let mut last = Instant::now();
    while let Some(mut batch) = rx.recv().await {
        let now = Instant::now();
        let interval = now.duration_since(last);
        last = now;
        let (groups, gap) = {
            let eps = endpoints.read().expect("endpoints lock");
            let lanes = eps.values().map(|ep| ep.queues.len()).max().unwrap_or(1);
            let (n, gap) = pace(batch.len(), interval, lanes, rec.memory.held(Held::Replay), mode);
            if n == 1 {
                (vec![batch], gap)
            } else {
                let mut groups: Vec<Vec<Outbound>> = (0..n).map(|_| Vec::with_capacity(batch.len() / n + 1)).collect();
                for ob in batch.drain(..) {
                    let g = eps.get(&ob.endpoint).map_or(0, |ep| {
                        let q = ep.queues.len();
                        group_of(queue_index(&ob, q), q, n)
                    });
                    groups[g].push(ob);
                }
                spare.give_back(batch);
                (groups, gap)
            }
        };
        let start = tokio::time::Instant::now();
        for (i, mut group) in groups.into_iter().enumerate() {
            if i > 0 && !group.is_empty() && rx.is_empty() {
                tokio::time::sleep_until(start + gap * i as u32).await;
            }
            queue_items(group.drain(..), &endpoints, &rec);
            spare.give_back(group);
        }
    }
}

/// Queues `items` on their connections; what does not fit is dropped and counted.
fn queue_items(items: impl IntoIterator<Item = Outbound>, endpoints: &RwLock<Endpoints>, rec: &Recorder) {
    let eps = endpoints.read().expect("endpoints lock");
    for ob in items {
        let queued = match eps.get(&ob.endpoint) {
            Some(ep) => ep.queues[queue_index(&ob, ep.queues.len())].try_send(ob).map_err(|e| e.into_inner()),
            None => Err(ob),
        };
        if let Err(ob) = queued {
            rec.memory.release(Held::Replay, weight(&ob));
            rec.refuse(&ob, DropReason::QueueFull);
        }
    }
}

/// The key of [`queue_index`]'s hash: random per process, so that no client can choose ports
/// that put every connection on one mirror connection (`DefaultHasher::new()` has fixed keys).
static QUEUE_HASH: std::sync::LazyLock<foldhash::fast::RandomState> = std::sync::LazyLock::new(Default::default);

/// The queue (mirror connection) a client connection's requests go to.
fn queue_index(ob: &Outbound, n: usize) -> usize {
    (std::hash::BuildHasher::hash_one(&*QUEUE_HASH, ob.flow) % n.max(1) as u64) as usize
}

/// Where a worker records what happened: the summary counters, the metrics if any, and the
/// memory budget the queued requests were charged to.
struct Recorder {
    stats: Arc<ReplayStats>,
    metrics: Option<Arc<Metrics>>,
    memory: Arc<Memory>,
    compare: Arc<compare::CompareOut>,
}

impl Recorder {
    fn count_drop(&self, reason: DropReason) {
        self.stats.count_drop(reason);
        if let Some(m) = &self.metrics {
            m.drop_reason(reason);
        }
    }

    /// `ob` never reached a mirror connection: counted, and if it is compared its mirror side is
    /// missing now rather than at the join's timeout.
    fn refuse(&self, ob: &Outbound, reason: DropReason) {
        self.compare.failed(ob);
        self.count_drop(reason);
    }

    /// A request's response was read: counted, and its memory given back.
    fn answered(&self, ob: &Outbound, latency: Duration, status: u16) {
        self.memory.release(Held::Replay, weight(ob));
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        let class = (status / 100) as usize;
        self.stats.responses[if (1..=5).contains(&class) { class } else { 0 }].fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.response(&ob.route, &ob.endpoint, status, latency);
        }
    }
}
