//! Replay: sends complete requests to mirror endpoints over kept-alive connections and throws the
//! responses away. Fire and forget: no retries, bounded queues, every failure counted.
//!
//! Requests are written exactly as captured (head with Host rewritten, body byte for byte), which
//! is why this writes raw bytes rather than going through an HTTP client that would re-serialise
//! them. Responses are only framed (by the sans-IO [`ResponseReader`]) to know when the connection
//! is free for the next request.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
    task::JoinSet,
    time::timeout,
};

use crate::{config::ReplaySettings, http::response::ResponseReader, pipeline::Outbound, route::Router};

/// Counters of what replay did.
#[derive(Debug, Default)]
pub struct ReplayStats {
    pub sent: AtomicU64,
    pub responses: [AtomicU64; 6],
    pub queue_full: AtomicU64,
    pub connect_error: AtomicU64,
    pub io_error: AtomicU64,
    pub bad_response: AtomicU64,
    pub timeout: AtomicU64,
}

impl ReplayStats {
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        m.insert("sent".into(), self.sent.load(Ordering::Relaxed));
        for (i, c) in self.responses.iter().enumerate() {
            let label = if i == 0 { "responses_other".to_string() } else { format!("responses_{i}xx") };
            m.insert(label, c.load(Ordering::Relaxed));
        }
        for (k, v) in [
            ("dropped_queue_full", &self.queue_full),
            ("dropped_connect_error", &self.connect_error),
            ("dropped_io_error", &self.io_error),
            ("dropped_bad_response", &self.bad_response),
            ("dropped_timeout", &self.timeout),
        ] {
            m.insert(k.into(), v.load(Ordering::Relaxed));
        }
        m
    }
}

struct Endpoint {
    queues: Vec<mpsc::Sender<Outbound>>,
}

/// Handle to the replay workers.
pub struct Replayer {
    endpoints: Vec<Endpoint>,
    pub stats: Arc<ReplayStats>,
    workers: JoinSet<()>,
}

#[derive(Debug)]
enum Failure {
    Connect,
    Io,
    BadResponse,
}

impl Replayer {
    /// Spawns `settings.connections` workers per endpoint address on the current tokio runtime.
    pub fn start(router: &Router, settings: &ReplaySettings) -> Replayer {
        let stats = Arc::new(ReplayStats::default());
        let mut workers = JoinSet::new();
        let mut endpoints = Vec::new();
        for (_, addrs) in &router.endpoints {
            let mut queues = Vec::new();
            for addr in addrs {
                for _ in 0..settings.connections {
                    let (tx, rx) = mpsc::channel(settings.queue);
                    queues.push(tx);
                    workers.spawn(worker(*addr, rx, settings.clone(), stats.clone()));
                }
            }
            endpoints.push(Endpoint { queues });
        }
        Replayer { endpoints, stats, workers }
    }

    /// Queues a request without ever waiting: if every queue of its endpoint is full the request is
    /// dropped and counted. Callable from any thread. Requests of one client connection go to the
    /// same mirror connection while its queue has room, so the mirror sees them in order.
    pub fn submit(&self, ob: Outbound) {
        let Some(ep) = self.endpoints.get(ob.endpoint) else {
            self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let n = ep.queues.len();
        let start = queue_index(&ob, n);
        let mut ob = ob;
        for i in 0..n {
            match ep.queues[(start + i) % n].try_send(ob) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(back) | mpsc::error::TrySendError::Closed(back)) => ob = back,
            }
        }
        self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues a request, waiting for room (offline replay, where nothing live can be delayed).
    pub async fn send(&self, ob: Outbound) {
        let Some(ep) = self.endpoints.get(ob.endpoint) else { return };
        let queue = &ep.queues[queue_index(&ob, ep.queues.len())];
        if queue.send(ob).await.is_err() {
            self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stops accepting requests and lets queued ones finish for at most `grace`.
    pub async fn shutdown(mut self, grace: Duration) {
        self.endpoints.clear();
        if timeout(grace, async { while self.workers.join_next().await.is_some() {} }).await.is_err() {
            self.workers.abort_all();
        }
    }
}

/// The queue (mirror connection) a client connection's requests go to.
fn queue_index(ob: &Outbound, n: usize) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&ob.flow, &mut h);
    std::hash::Hasher::finish(&h) as usize % n
}

async fn worker(addr: SocketAddr, mut rx: mpsc::Receiver<Outbound>, settings: ReplaySettings, stats: Arc<ReplayStats>) {
    let mut conn: Option<TcpStream> = None;
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(ob) = rx.recv().await {
        let result = timeout(settings.request_timeout(), send_one(&mut conn, addr, &ob, &settings, &mut buf)).await;
        match result {
            Ok(Ok(status)) => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
                let class = (status / 100) as usize;
                stats.responses[if (1..=5).contains(&class) { class } else { 0 }].fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(f)) => {
                conn = None;
                let counter = match f {
                    Failure::Connect => &stats.connect_error,
                    Failure::Io => &stats.io_error,
                    Failure::BadResponse => &stats.bad_response,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%addr, route = %ob.route, "mirror request failed: {f:?}");
            }
            Err(_) => {
                conn = None;
                stats.timeout.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%addr, route = %ob.route, "mirror request timed out");
            }
        }
    }
}

/// Whether a kept-alive connection was closed by the server while idle.
fn closed_while_idle(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    !matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

async fn send_one(
    conn: &mut Option<TcpStream>,
    addr: SocketAddr,
    ob: &Outbound,
    settings: &ReplaySettings,
    buf: &mut [u8],
) -> Result<u16, Failure> {
    if conn.as_ref().is_some_and(closed_while_idle) {
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
    let stream = conn.as_mut().expect("connected above");
    stream.write_all(&ob.head).await.map_err(|_| Failure::Io)?;
    if !ob.body.is_empty() {
        stream.write_all(&ob.body).await.map_err(|_| Failure::Io)?;
    }
    let mut reader = ResponseReader::new(ob.method.eq_ignore_ascii_case("HEAD"));
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
