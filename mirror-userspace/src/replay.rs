//! Replay: sends complete requests to mirror endpoints over kept-alive connections and throws the
//! responses away. Fire and forget: no retries, bounded queues, every failure counted.
//!
//! Requests are written exactly as captured (head with Host rewritten, body byte for byte), which
//! is why this writes raw bytes rather than going through an HTTP client that would re-serialise
//! them. Responses are only framed (by the sans-IO [`ResponseReader`]) to know when the connection
//! is free for the next request.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
    task::JoinSet,
    time::timeout,
};

use crate::{
    config::ReplaySettings,
    http::response::ResponseReader,
    memory::{Held, Memory},
    metrics::Metrics,
    pipeline::{Outbound, Part, Request},
    route::Router,
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

/// Handle to the replay workers. Shared by the capture thread (which submits) and the daemon
/// (which reconfigures on reload and shuts down).
pub struct Replayer {
    endpoints: RwLock<HashMap<Arc<str>, Endpoint>>,
    settings: ReplaySettings,
    runtime: tokio::runtime::Handle,
    workers: Mutex<JoinSet<()>>,
    /// What replay did so far (shared with the workers).
    pub stats: Arc<ReplayStats>,
    metrics: Option<Arc<Metrics>>,
    /// The budget the queued requests are charged to ([`Held::Replay`]), shared with the core.
    memory: Arc<Memory>,
}

/// The bytes an item holds while queued: its own size (a queue slot, its strings) and its bytes.
fn weight(ob: &Outbound) -> usize {
    let bytes = match &ob.part {
        Part::Whole(r) | Part::Start { request: r, .. } => {
            r.head.len() + r.body.len() + r.method.len() + r.target.len()
        }
        Part::More { bytes, .. } => bytes.len(),
        Part::End { .. } | Part::Abort { .. } => 0,
    };
    std::mem::size_of::<Outbound>() + bytes
}

#[derive(Debug)]
enum Failure {
    Connect,
    Io,
    BadResponse,
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
        let r = Replayer {
            endpoints: RwLock::new(HashMap::new()),
            settings: settings.clone(),
            runtime: tokio::runtime::Handle::current(),
            workers: Mutex::new(JoinSet::new()),
            stats: Arc::new(ReplayStats::default()),
            metrics,
            memory,
        };
        r.reconfigure(router);
        r
    }

    /// Brings the endpoints in line with a (new) router: unchanged ones keep their connections,
    /// new ones get workers, removed ones finish what is queued and stop.
    pub fn reconfigure(&self, router: &Router) {
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
                    let rec = Recorder {
                        stats: self.stats.clone(),
                        metrics: self.metrics.clone(),
                        memory: self.memory.clone(),
                    };
                    workers.spawn_on(worker(*addr, rx, self.settings.clone(), rec), &self.runtime);
                }
            }
            eps.insert(key.clone(), Endpoint { addrs: addrs.clone(), queues });
        }
    }

    /// Queues a request (or part of one) without ever waiting: if its queue is full it is dropped
    /// and counted. Callable from any thread. Everything from one client connection goes to the
    /// same mirror connection, so the mirror sees it in order and streamed parts stay together; a
    /// streamed request missing a part is reset by the worker, never completed.
    pub fn submit(&self, ob: Outbound) {
        // Memory is bounded by bytes, not only by queue slots: a burst of large requests to a slow
        // mirror is dropped, never buffered without bound. Charged before it is queued, so the
        // worker's release never comes first.
        let w = weight(&ob);
        let refused = if self.memory.held(Held::Replay) + w > self.settings.max_queued_bytes {
            Some(DropReason::QueueFull)
        } else if !self.memory.try_charge(Held::Replay, w) {
            Some(DropReason::MemoryBudget)
        } else {
            let eps = self.endpoints.read().expect("endpoints lock");
            let queued = eps
                .get(&ob.endpoint)
                .is_some_and(|ep| ep.queues[queue_index(&ob, ep.queues.len())].try_send(ob).is_ok());
            if !queued {
                self.memory.release(Held::Replay, w);
            }
            (!queued).then_some(DropReason::QueueFull)
        };
        if let Some(reason) = refused {
            self.stats.count_drop(reason);
            if let Some(m) = &self.metrics {
                m.drop_reason(reason);
            }
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
        match queue {
            Some(q) if q.send(ob).await.is_ok() => {}
            _ => {
                self.memory.release(Held::Replay, w);
                self.stats.count_drop(DropReason::QueueFull);
            }
        }
    }

    /// Stops accepting requests and lets queued ones finish for at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.endpoints.write().expect("endpoints lock").clear();
        let mut workers = std::mem::take(&mut *self.workers.lock().expect("workers lock"));
        if timeout(grace, async { while workers.join_next().await.is_some() {} }).await.is_err() {
            workers.abort_all();
        }
    }
}

/// The queue (mirror connection) a client connection's requests go to.
fn queue_index(ob: &Outbound, n: usize) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&ob.flow, &mut h);
    std::hash::Hasher::finish(&h) as usize % n
}

/// A streamed request being written on the connection.
struct Active {
    stream: u64,
    /// Index of the next `More` (or of the `End`).
    next: u64,
    /// False once writing failed: the rest of the stream is discarded.
    ok: bool,
    head_request: bool,
    started: Instant,
}

/// Where a worker records what happened: the summary counters and, if any, the metrics.
struct Recorder {
    stats: Arc<ReplayStats>,
    metrics: Option<Arc<Metrics>>,
    memory: Arc<Memory>,
}

impl Recorder {
    fn count_drop(&self, reason: DropReason) {
        self.stats.count_drop(reason);
        if let Some(m) = &self.metrics {
            m.drop_reason(reason);
        }
    }
}

async fn worker(addr: SocketAddr, mut rx: mpsc::Receiver<Outbound>, settings: ReplaySettings, rec: Recorder) {
    let stats = &rec;
    let mut conn: Option<TcpStream> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut active: Option<Active> = None;
    let limit = settings.request_timeout();
    let mut last_used = Instant::now();
    while let Some(ob) = rx.recv().await {
        stats.memory.release(Held::Replay, weight(&ob));
        let (route, endpoint) = (ob.route, ob.endpoint);
        match ob.part {
            Part::Whole(req) => {
                reset_unfinished(&mut active, &mut conn, stats);
                let started = Instant::now();
                let result = timeout(limit, async {
                    let stream = writable(&mut conn, addr, &settings, last_used.elapsed()).await?;
                    write_request(stream, &req).await?;
                    read_response(&mut conn, req.method == "HEAD", &mut buf).await
                })
                .await;
                record(result, &mut conn, stats, addr, (&route, &endpoint), started);
            }
            Part::Start { stream, request } => {
                reset_unfinished(&mut active, &mut conn, stats);
                let started = Instant::now();
                let result = timeout(limit, async {
                    let s = writable(&mut conn, addr, &settings, last_used.elapsed()).await?;
                    write_request(s, &request).await
                })
                .await;
                let ok = matches!(result, Ok(Ok(())));
                if !ok {
                    record(result.map(|r| r.map(|_| 0)), &mut conn, stats, addr, (&route, &endpoint), started);
                }
                active = Some(Active { stream, next: 1, ok, head_request: request.method == "HEAD", started });
            }
            Part::More { stream, index, bytes } => {
                let Some(a) = active.as_mut().filter(|a| a.stream == stream) else { continue };
                if !a.ok {
                    continue;
                }
                if index != a.next {
                    // A part was dropped on a full queue: this request must never complete.
                    reset(&mut conn, stats);
                    a.ok = false;
                    continue;
                }
                a.next += 1;
                let Some(s) = conn.as_mut() else { continue };
                if !matches!(timeout(limit, s.write_all(&bytes)).await, Ok(Ok(()))) {
                    reset(&mut conn, stats);
                    a.ok = false;
                }
            }
            Part::End { stream, index } => {
                let Some(a) = active.take_if(|a| a.stream == stream) else { continue };
                if !a.ok {
                    continue;
                }
                if index != a.next {
                    reset(&mut conn, stats);
                    continue;
                }
                let result = timeout(limit, read_response(&mut conn, a.head_request, &mut buf)).await;
                record(result, &mut conn, stats, addr, (&route, &endpoint), a.started);
            }
            Part::Abort { stream } => {
                if let Some(a) = active.take_if(|a| a.stream == stream)
                    && a.ok
                {
                    reset(&mut conn, stats);
                }
            }
        }
        last_used = Instant::now();
    }
    reset_unfinished(&mut active, &mut conn, stats);
}

/// A streamed request that never got its end (its `End` was dropped): reset it.
fn reset_unfinished(active: &mut Option<Active>, conn: &mut Option<TcpStream>, stats: &Recorder) {
    if active.take().is_some_and(|a| a.ok) {
        reset(conn, stats);
    }
}

/// Closes the connection with a RST, so a request written in part is never completed.
fn reset(conn: &mut Option<TcpStream>, rec: &Recorder) {
    if let Some(s) = conn.take() {
        // A zero linger makes close send RST at once; it does not block (the deprecation is
        // about non-zero lingers).
        #[allow(deprecated)]
        let _ = s.set_linger(Some(Duration::ZERO));
        rec.count_drop(DropReason::StreamReset);
    }
}

fn record(
    result: Result<Result<u16, Failure>, tokio::time::error::Elapsed>,
    conn: &mut Option<TcpStream>,
    rec: &Recorder,
    addr: SocketAddr,
    (route, endpoint): (&str, &str),
    started: Instant,
) {
    let stats = &rec.stats;
    match result {
        Ok(Ok(status)) => {
            stats.sent.fetch_add(1, Ordering::Relaxed);
            let class = (status / 100) as usize;
            stats.responses[if (1..=5).contains(&class) { class } else { 0 }].fetch_add(1, Ordering::Relaxed);
            if let Some(m) = &rec.metrics {
                m.response(route, endpoint, status, started.elapsed());
            }
        }
        Ok(Err(f)) => {
            *conn = None;
            rec.count_drop(match f {
                Failure::Connect => DropReason::ConnectError,
                Failure::Io => DropReason::IoError,
                Failure::BadResponse => DropReason::BadResponse,
            });
            tracing::debug!(%addr, %route, "mirror request failed: {f:?}");
        }
        Err(_) => {
            *conn = None;
            rec.count_drop(DropReason::Timeout);
            tracing::debug!(%addr, %route, "mirror request timed out");
        }
    }
}

/// Whether a kept-alive connection was closed by the server while idle.
fn closed_while_idle(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    !matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// The kept-alive connection, (re)connecting if there is none or the server closed it.
async fn writable<'a>(
    conn: &'a mut Option<TcpStream>,
    addr: SocketAddr,
    settings: &ReplaySettings,
    idle: Duration,
) -> Result<&'a mut TcpStream, Failure> {
    // A server closes idle kept-alive connections after seconds, not milliseconds: only a
    // connection that sat idle is probed (one syscall saved per request under load).
    if idle > Duration::from_millis(250) && conn.as_ref().is_some_and(closed_while_idle) {
        *conn = None;
    }
    if conn.is_none() {
        let stream = timeout(settings.connect_timeout(), TcpStream::connect(addr))
            .await
            .map_err(|_| Failure::Connect)?
            .map_err(|_| Failure::Connect)?;
        let _ = stream.set_nodelay(true);
        *conn = Some(stream);
    }
    Ok(conn.as_mut().expect("connected above"))
}

async fn write_request(stream: &mut TcpStream, req: &Request) -> Result<(), Failure> {
    stream.write_all(&req.head).await.map_err(|_| Failure::Io)?;
    if !req.body.is_empty() {
        stream.write_all(&req.body).await.map_err(|_| Failure::Io)?;
    }
    Ok(())
}

/// Reads and discards one response; returns its status.
async fn read_response(conn: &mut Option<TcpStream>, head_request: bool, buf: &mut [u8]) -> Result<u16, Failure> {
    let stream = conn.as_mut().ok_or(Failure::Io)?;
    let mut reader = ResponseReader::new(head_request);
    loop {
        let n = stream.read(buf).await.map_err(|_| Failure::Io)?;
        if n == 0 {
            let done = reader.on_eof().ok_or(Failure::Io)?;
            *conn = None;
            return Ok(done.status);
        }
        if let Some(done) = reader.feed(&buf[..n]).map_err(|_| Failure::BadResponse)? {
            if !done.reusable {
                *conn = None;
            }
            return Ok(done.status);
        }
    }
}
