//! The metrics endpoint: serving `Metrics::encode` over HTTP without ever taking from mirroring
//! the file descriptors and CPU it needs.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::fd::{AsRawFd as _, RawFd},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::{Notify, oneshot};

use super::{KindLabel, Metrics};

// The metrics endpoint. It must never take from mirroring what mirroring needs: file descriptors (a
// replay connection that cannot get one is dropped as `connect_error`) and CPU. So:
// - at most `connection_cap(soft RLIMIT_NOFILE)` connections are open at once: 64, and never more
//   than an eighth of the limit (the accept loop holds one more while it waits for a slot);
// - a client has `header_read_timeout` to send a request head: the first one, and each next one on
//   a kept-alive connection (hyper runs that timer while the connection is idle too, so it is also
//   the keep-alive idle timeout);
// - a connection lives at most `deadline`, whatever it does;
// - when every slot is taken, the connection silent longest while waiting for a request (nothing
//   unread in its socket, accepted or answered at least `grace` ago, or silent for `stale` already,
//   time in the listen backlog included) is closed to make room for the new one, as nginx reuses
//   idle connections: idle connections cannot lock scrapers out, and a burst of scrapers is served
//   in turn (waiting in the listen backlog, 4096 deep), not refused;
// - request heads are read into a 16 KiB buffer (hyper's default is ~400 KiB), so 64 connections
//   cost little memory whatever their clients send;
// - accept() failing for want of descriptors (EMFILE, ENFILE) or memory pauses the loop for
//   `backoff`: the pending connection keeps the listener readable, so retrying at once spins a core.

/// Most metrics connections open at once, whatever the fd limit.
const MAX_CONNECTIONS: usize = 64;
/// Connections the kernel queues for the endpoint (std's and tokio's default is 128).
const LISTEN_BACKLOG: u32 = 4096;
/// Most bytes of a request head buffered per connection.
const READ_BUFFER: usize = 16 * 1024;
/// Metrics connections never hold more than 1/FD_SHARE of the fd limit: the rest is mirroring's.
const FD_SHARE: u64 = 8;

/// `{reason}` of `mirror_metrics_connections_closed_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabel {
    reason: &'static str,
}

/// Why the endpoint closed a connection itself (a client closing is not counted).
const CLOSE_REASONS: [&str; 3] = [
    "evicted",        // idle, closed to make room for a new connection
    "header_timeout", // no complete request head within the header read timeout
    "deadline",       // open longer than the per-connection deadline
];

/// What `accept()` failures are counted as (`{kind}` of `mirror_metrics_accept_errors_total`).
const ACCEPT_ERROR_KINDS: [&str; 3] = ["fd_limit", "no_memory", "other"];

/// The metrics endpoint's own metrics.
#[derive(Clone, Default)]
pub(super) struct EndpointMetrics {
    open: Gauge,
    limit: Gauge,
    closed: Family<CloseLabel, Counter>,
    accept_errors: Family<KindLabel, Counter>,
}

impl EndpointMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        for reason in CLOSE_REASONS {
            drop(self.closed.get_or_create(&CloseLabel { reason }));
        }
        for kind in ACCEPT_ERROR_KINDS {
            drop(self.accept_errors.get_or_create(&KindLabel { kind: kind.into() }));
        }
        registry.register("metrics_connections_open", "Connections open to this metrics endpoint", self.open.clone());
        registry.register(
            "metrics_connections_limit",
            "Most connections this metrics endpoint holds at once (64, at most an eighth of the file descriptor limit)",
            self.limit.clone(),
        );
        registry.register(
            "metrics_connections_closed",
            "Metrics connections the endpoint closed itself: evicted (idle, to make room), header_timeout, deadline",
            self.closed.clone(),
        );
        registry.register(
            "metrics_accept_errors",
            "Failed accepts on the metrics endpoint (each pauses it 100 ms): fd_limit (EMFILE/ENFILE), no_memory, other",
            self.accept_errors.clone(),
        );
    }
}

/// The endpoint's limits (tests shorten them).
#[derive(Clone, Copy, Debug)]
struct EndpointLimits {
    /// Most connections open at once; `None`: [`connection_cap`] of the soft fd limit, read at each
    /// accept (so it follows [`raise_fd_limit`]).
    max_connections: Option<usize>,
    /// Time to send a request head, and to keep an idle kept-alive connection.
    header_read_timeout: Duration,
    /// Longest life of a connection.
    deadline: Duration,
    /// A connection just accepted or answered is not closed to make room before this (its client's
    /// time to send a request)...
    grace: Duration,
    /// ... unless its client had already been silent this long (in the listen backlog).
    stale: Duration,
    /// Pause after a failed accept.
    backoff: Duration,
}

impl Default for EndpointLimits {
    fn default() -> Self {
        EndpointLimits {
            max_connections: None,
            header_read_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(30),
            grace: Duration::from_millis(50),
            stale: Duration::from_secs(1),
            backoff: Duration::from_millis(100),
        }
    }
}

/// The soft and hard RLIMIT_NOFILE.
fn nofile_limit() -> (u64, u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return (1024, 1024);
    }
    (lim.rlim_cur, lim.rlim_max)
}

/// How many metrics connections may be open at once under an fd limit of `nofile`.
fn connection_cap(nofile: u64) -> usize {
    (nofile / FD_SHARE).clamp(1, MAX_CONNECTIONS as u64) as usize
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (systemd's default soft limit is 1024) and logs
/// both, with the metrics connection cap that follows.
pub(crate) fn raise_fd_limit() {
    let (soft, hard) = nofile_limit();
    let mut now = soft;
    if soft < hard {
        let lim = libc::rlimit { rlim_cur: hard, rlim_max: hard };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
            now = hard;
        } else {
            tracing::warn!(soft, hard, "raising the file descriptor limit: {}", std::io::Error::last_os_error());
        }
    }
    tracing::info!(soft = now, hard, metrics_connections = connection_cap(now), "file descriptor limit");
}

/// Bytes received on socket `fd` that nobody has read yet.
fn unread_bytes(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int. `fd` is a connection's socket, open while its slot exists
    // (the connection drops its stream before its slot); were the number reused in that instant,
    // this would only read another socket's count.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } == 0 { n.max(0) as usize } else { 0 }
}

/// How long the client on socket `fd` has sent nothing: since its last bytes or, if it never sent
/// any, since its handshake (so the time a connection sat in the listen backlog counts).
fn silent_for(fd: RawFd) -> Duration {
    // SAFETY: tcp_info is plain data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: TCP_INFO writes at most `len` bytes into `info`; `fd` is a socket we own.
    let rc = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len) };
    if rc == 0 { Duration::from_millis(info.tcpi_last_data_recv.into()) } else { Duration::ZERO }
}

/// How a failed `accept()` is handled: `None` for the failures of one connection (the next is
/// fine: retry at once), else the kind counted before pausing.
fn accept_error_kind(e: &std::io::Error) -> Option<&'static str> {
    match e.raw_os_error() {
        Some(libc::ECONNABORTED | libc::EINTR | libc::EAGAIN | libc::EPROTO | libc::EPERM) => None,
        Some(libc::EMFILE | libc::ENFILE) => Some("fd_limit"),
        Some(libc::ENOBUFS | libc::ENOMEM) => Some("no_memory"),
        _ => Some("other"),
    }
}

/// One open connection.
struct Slot {
    /// Its socket (for [`unread_bytes`]).
    fd: RawFd,
    /// Since when it has waited for a request (`None` while one is being answered).
    waiting_since: Option<Instant>,
    /// Since when its client has sent nothing that was answered: its last request's answer or,
    /// before any, its last bytes or handshake (time in the listen backlog included).
    silent_since: Instant,
    /// Closes it; taken when it is chosen to make room.
    evict: Option<oneshot::Sender<()>>,
}

/// The open connections, by accept order.
struct Slots {
    limits: EndpointLimits,
    metrics: Arc<Metrics>,
    table: Mutex<(u64, BTreeMap<u64, Slot>)>,
    /// A slot was released.
    released: Notify,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, BTreeMap<u64, Slot>)> {
        self.table.lock().expect("metrics slots lock")
    }

    fn cap(&self) -> usize {
        self.limits.max_connections.unwrap_or_else(|| connection_cap(nofile_limit().0))
    }

    /// A slot for the connection on socket `fd`: at once if one is free; else after closing the
    /// connection that has waited longest for a request, once it is idle enough; else when one is
    /// released.
    async fn admit(self: &Arc<Self>, fd: RawFd) -> (SlotGuard, oneshot::Receiver<()>) {
        loop {
            {
                let mut table = self.lock();
                let cap = self.cap();
                self.metrics.endpoint.limit.set(cap as i64);
                let (next_id, slots) = &mut *table;
                if slots.len() < cap {
                    let (tx, rx) = oneshot::channel();
                    let id = *next_id;
                    *next_id += 1;
                    let now = Instant::now();
                    let silent_since = now.checked_sub(silent_for(fd)).unwrap_or(now);
                    slots.insert(id, Slot { fd, waiting_since: Some(now), silent_since, evict: Some(tx) });
                    self.metrics.endpoint.open.set(slots.len() as i64);
                    return (SlotGuard(SlotHandle { slots: self.clone(), id }), rx);
                }
                let closing = slots.values().filter(|s| s.evict.is_none()).count();
                // Close one more only if those already closing would not make room.
                if slots.len() - closing >= cap
                    && let Some(victim) = self.victim(slots)
                    && let Some(evict) = slots.get_mut(&victim).and_then(|s| s.evict.take())
                {
                    let _ = evict.send(());
                    self.metrics.endpoint.closed.get_or_create(&CloseLabel { reason: "evicted" }).inc();
                }
            }
            // Woken when a slot is released, or after the grace (a connection may have become idle
            // enough).
            let _ = tokio::time::timeout(self.limits.grace, self.released.notified()).await;
        }
    }

    /// The connection to close to make room: the one silent longest among those waiting for a
    /// request with nothing unread (their request would be next), once they have had the grace
    /// since they were accepted or answered, or were silent `stale` already (an idle connection
    /// that sat in the backlog). Unread bytes that sat past the header read timeout do not protect
    /// a connection (a client that does not read its responses stalls hyper).
    fn victim(&self, slots: &BTreeMap<u64, Slot>) -> Option<u64> {
        let now = Instant::now();
        let l = &self.limits;
        slots
            .iter()
            .filter(|(_, s)| s.evict.is_some())
            .filter_map(|(id, s)| {
                let waited = now.saturating_duration_since(s.waiting_since?);
                let silent = now.saturating_duration_since(s.silent_since);
                let eligible = (waited >= l.grace || silent >= l.stale)
                    && (waited >= l.header_read_timeout || unread_bytes(s.fd) == 0);
                eligible.then_some((*id, silent))
            })
            .max_by_key(|(id, silent)| (*silent, std::cmp::Reverse(*id)))
            .map(|(id, _)| id)
    }
}

/// A connection's slot, for its service to say when it answers.
#[derive(Clone)]
struct SlotHandle {
    slots: Arc<Slots>,
    id: u64,
}

impl SlotHandle {
    fn set_answering(&self, answering: bool) {
        if let Some(slot) = self.slots.lock().1.get_mut(&self.id) {
            let now = Instant::now();
            slot.waiting_since = if answering { None } else { Some(now) };
            slot.silent_since = now;
        }
    }
}

/// Holds a slot; releases it when dropped.
struct SlotGuard(SlotHandle);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let slots = &self.0.slots;
        let mut table = slots.lock();
        table.1.remove(&self.0.id);
        slots.metrics.endpoint.open.set(table.1.len() as i64);
        drop(table);
        slots.released.notify_one();
    }
}

/// Serves `GET /metrics` (any path, in fact) on `addr` until the task is dropped, within the
/// limits described above.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<tokio::task::JoinHandle<()>> {
    let listener = listen(addr).with_context(|| format!("binding the metrics address {addr}"))?;
    let limits = EndpointLimits::default();
    tracing::info!(
        %addr,
        header_read_timeout = ?limits.header_read_timeout,
        deadline = ?limits.deadline,
        "metrics on http://{addr}/metrics"
    );
    Ok(tokio::spawn(accept_loop(listener, metrics, limits)))
}

/// A listener on `addr` whose backlog holds a burst of scrapers waiting for slots (the kernel's,
/// not ours: no descriptor each), up to `net.core.somaxconn`.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections for ever, each in a slot of its own.
async fn accept_loop(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, limits: EndpointLimits) {
    let slots = Arc::new(Slots {
        limits,
        metrics: metrics.clone(),
        table: Mutex::new((0, BTreeMap::new())),
        released: Notify::new(),
    });
    let mut failures: u64 = 0;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                let Some(kind) = accept_error_kind(&e) else { continue };
                metrics.endpoint.accept_errors.get_or_create(&KindLabel { kind: kind.into() }).inc();
                if failures == 0 {
                    tracing::warn!("metrics endpoint: accept failed ({e}); retrying every {:?}", limits.backoff);
                }
                failures += 1;
                tokio::time::sleep(limits.backoff).await;
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(failures, "metrics endpoint: accepting again");
            failures = 0;
        }
        let (slot, evicted) = slots.admit(stream.as_raw_fd()).await;
        tokio::spawn(connection(stream, slot, evicted, metrics.clone(), limits));
    }
}

/// Serves one connection until its client closes it, a timeout or the deadline, or it is evicted.
async fn connection(
    stream: tokio::net::TcpStream,
    slot: SlotGuard,
    evicted: oneshot::Receiver<()>,
    metrics: Arc<Metrics>,
    limits: EndpointLimits,
) {
    let handle = slot.0.clone();
    let m = metrics.clone();
    let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
        handle.set_answering(true);
        let body = m.encode();
        handle.set_answering(false);
        async move {
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
                    .body(Full::new(Bytes::from(body)))
                    .expect("valid response"),
            )
        }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).max_buf_size(READ_BUFFER);
    let mut conn = Box::pin(builder.serve_connection(TokioIo::new(stream), svc));
    let closed = tokio::select! {
        r = conn.as_mut() => match r {
            Err(e) if e.is_timeout() => Some("header_timeout"),
            _ => None,
        },
        _ = evicted => None, // counted where it was decided
        _ = tokio::time::sleep(limits.deadline) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
            Some("deadline")
        }
    };
    if let Some(reason) = closed {
        metrics.endpoint.closed.get_or_create(&CloseLabel { reason }).inc();
    }
    // The stream (in `conn`) is closed before the slot is released: the cap bounds descriptors.
    drop(conn);
    drop(slot);
}

#[cfg(test)]
#[path = "endpoint_tests.rs"]
mod tests;
