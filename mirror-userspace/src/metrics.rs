//! Prometheus metrics (prometheus-client), served as text on `--metrics-addr`.
//!
//! The sans-IO core keeps plain counters; the capture thread publishes them here periodically
//! (as deltas), and the replay workers record responses, latencies and failures directly.

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
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use tokio::sync::{Notify, oneshot};

use crate::{flow::FlowStats, pipeline::PipelineStats, stats::DropReason};

/// `{kind}`: what a kernel or flow counter counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// `{reason}` of `mirror_requests_dropped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: DropReason,
}

/// The label value is [`DropReason::as_str`].
impl EncodeLabelValue for DropReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// `{interface, mode}`: where the classifier is attached and how (`tcx` or `netlink`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttachLabel {
    interface: String,
    mode: String,
}

/// `{route, mirror}`: a route's name and a mirror's endpoints key.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteMirror {
    route: String,
    mirror: String,
}

/// `{route, mirror, class}`: a mirror response's status class (`2xx`, …, `other`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabel {
    route: String,
    mirror: String,
    class: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric the daemon exports, registered under the `mirror_` prefix.
pub struct Metrics {
    registry: Registry,
    kernel: Family<KindLabel, Counter>,
    flows_open: Gauge,
    attach: Family<AttachLabel, Gauge>,
    flow_events: Family<KindLabel, Counter>,
    framed: Counter,
    mirrored: Family<RouteMirror, Counter>,
    sampled_out: Family<RouteMirror, Counter>,
    no_route: Counter,
    dropped: Family<ReasonLabel, Counter>,
    responses: Family<ResponseLabel, Counter>,
    latency: Family<RouteMirror, Histogram, fn() -> Histogram>,
    /// The metrics endpoint's own connections (see [`serve`]).
    endpoint: EndpointMetrics,
    /// Last published absolute values, to publish deltas.
    last: Mutex<BTreeMap<String, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric (all at zero).
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mirror");
        let m = Metrics {
            kernel: Family::default(),
            flows_open: Gauge::default(),
            attach: Family::default(),
            flow_events: Family::default(),
            framed: Counter::default(),
            mirrored: Family::default(),
            sampled_out: Family::default(),
            no_route: Counter::default(),
            dropped: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            endpoint: EndpointMetrics::default(),
            last: Mutex::new(BTreeMap::new()),
            registry: Registry::default(),
        };
        registry.register(
            "kernel_packets",
            "TCP segments to watched ports, by what the classifier did: seen, shipped, lost (ring full), truncated, tail_pieces, ip_fragments, skipped_mirror_traffic",
            m.kernel.clone(),
        );
        registry.register("flows_open", "TCP flows being reassembled", m.flows_open.clone());
        registry.register(
            "attach_info",
            "1 for each interface the classifier is attached to, with the attach mode (tcx or netlink)",
            m.attach.clone(),
        );
        registry.register(
            "flow_events",
            "Flow counters, by the names of the JSON summary's `flows` object (opened, midstream, gaps, segments_without_ack, rst_ignored, conflicting_copies, flows_given_up_gap, flows_given_up_midstream, ...)",
            m.flow_events.clone(),
        );
        registry.register("requests_framed", "HTTP/1.1 requests framed", m.framed.clone());
        registry.register(
            "requests_mirrored",
            "Requests handed to replay complete, per route and mirror",
            m.mirrored.clone(),
        );
        registry.register(
            "requests_sampled_out",
            "Requests a route's sampling left out, per route and mirror",
            m.sampled_out.clone(),
        );
        registry.register("requests_no_route", "Requests no route matched", m.no_route.clone());
        registry.register(
            "requests_dropped",
            "Requests (or streams) lost, by reason: gap, queue_full, timeout, connect_error, io_error, bad_response, stream_reset and framing errors",
            m.dropped.clone(),
        );
        registry.register("shadow_responses", "Mirror responses, by status class", m.responses.clone());
        registry.register(
            "shadow_latency_seconds",
            "Time from sending a request to the mirror to its full response",
            m.latency.clone(),
        );
        m.endpoint.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// Records that the classifier is attached to `interface` in `mode` (`tcx` or `netlink`).
    pub fn attached(&self, interface: &str, mode: &str) {
        self.attach.get_or_create(&AttachLabel { interface: interface.into(), mode: mode.into() }).set(1);
    }

    fn delta(&self, key: &str, now: u64) -> u64 {
        let mut last = self.last.lock().expect("metrics lock");
        let prev = last.insert(key.to_string(), now).unwrap_or(0);
        now.saturating_sub(prev)
    }

    /// Publishes the capture thread's counters (absolute values; deltas are added).
    pub fn publish(&self, kernel: &[(&'static str, u64)], flows: &FlowStats, flows_open: usize, p: &PipelineStats) {
        for (kind, v) in kernel {
            let d = self.delta(&format!("kernel/{kind}"), *v);
            self.kernel.get_or_create(&KindLabel { kind: kind.to_string() }).inc_by(d);
        }
        self.flows_open.set(flows_open as i64);
        // Every flow counter, under the name the JSON summary gives it (one vocabulary).
        if let Ok(serde_json::Value::Object(counters)) = serde_json::to_value(flows) {
            for (kind, v) in counters {
                let d = self.delta(&format!("flow/{kind}"), v.as_u64().unwrap_or(0));
                self.flow_events.get_or_create(&KindLabel { kind }).inc_by(d);
            }
        }
        self.framed.inc_by(self.delta("framed", p.requests_framed));
        self.no_route.inc_by(self.delta("no_route", p.no_route));
        for (&reason, v) in &p.dropped {
            self.dropped.get_or_create(&ReasonLabel { reason }).inc_by(self.delta(&format!("drop/{reason}"), *v));
        }
        for ((route, mirror), c) in &p.by_route {
            let labels = RouteMirror { route: route.to_string(), mirror: mirror.to_string() };
            self.mirrored.get_or_create(&labels).inc_by(self.delta(&format!("m/{route}/{mirror}"), c.mirrored));
            self.sampled_out.get_or_create(&labels).inc_by(self.delta(&format!("s/{route}/{mirror}"), c.sampled_out));
        }
    }

    /// A mirror response (replay workers).
    pub fn response(&self, route: &str, mirror: &str, status: u16, latency: Duration) {
        let class = match status / 100 {
            c @ 1..=5 => format!("{c}xx"),
            _ => "other".to_string(),
        };
        self.responses.get_or_create(&ResponseLabel { route: route.into(), mirror: mirror.into(), class }).inc();
        self.latency
            .get_or_create(&RouteMirror { route: route.into(), mirror: mirror.into() })
            .observe(latency.as_secs_f64());
    }

    /// A request replay lost (replay workers and the queue).
    pub fn drop_reason(&self, reason: DropReason) {
        self.dropped.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encoding to a String");
        out
    }
}

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
struct EndpointMetrics {
    open: Gauge,
    limit: Gauge,
    closed: Family<CloseLabel, Counter>,
    accept_errors: Family<KindLabel, Counter>,
}

impl EndpointMetrics {
    fn register(&self, registry: &mut Registry) {
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
mod endpoint_tests {
    use std::time::{Duration, Instant};

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
        time::timeout,
    };

    use super::*;

    /// Serves `metrics` on a loopback port with `limits`; returns the address.
    async fn start(limits: EndpointLimits) -> (SocketAddr, Arc<Metrics>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        tokio::spawn(accept_loop(listener, metrics.clone(), limits));
        (addr, metrics)
    }

    fn limits(max: usize) -> EndpointLimits {
        EndpointLimits { max_connections: Some(max), ..EndpointLimits::default() }
    }

    /// One `Connection: close` scrape: (status line, body).
    async fn scrape(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// Reads one response with a Content-Length off a kept-alive connection.
    async fn read_response(s: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed mid-head");
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .expect("content-length");
        let mut body = vec![0; len];
        s.read_exact(&mut body).await.unwrap();
        head + &String::from_utf8(body).unwrap()
    }

    /// Waits for the server to close `s` (EOF or reset); returns how long that took.
    async fn closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
        let t = Instant::now();
        let mut buf = [0u8; 64];
        match timeout(limit, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => t.elapsed(),
            Ok(Ok(n)) => panic!("read {n} bytes instead of EOF"),
            Err(_) => panic!("still open after {limit:?}"),
        }
    }

    fn value(text: &str, series: &str) -> f64 {
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(-1.0)
    }

    #[test]
    fn the_cap_is_64_and_at_most_an_eighth_of_the_fd_limit() {
        assert_eq!(connection_cap(256), 32);
        assert_eq!(connection_cap(1024), 64);
        assert_eq!(connection_cap(1_048_576), 64);
        assert_eq!(connection_cap(40), 5);
        assert_eq!(connection_cap(3), 1);
    }

    #[test]
    fn running_out_of_descriptors_pauses_accepting_and_one_bad_connection_does_not() {
        let os = std::io::Error::from_raw_os_error;
        assert_eq!(accept_error_kind(&os(libc::EMFILE)), Some("fd_limit"));
        assert_eq!(accept_error_kind(&os(libc::ENFILE)), Some("fd_limit"));
        assert_eq!(accept_error_kind(&os(libc::ENOBUFS)), Some("no_memory"));
        assert_eq!(accept_error_kind(&os(libc::EINVAL)), Some("other"));
        assert_eq!(accept_error_kind(&os(libc::ECONNABORTED)), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_beyond_the_cap_cannot_lock_scrapers_out() {
        let (addr, _) = start(limits(4)).await;
        let mut idle = Vec::new();
        for _ in 0..20 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let t = Instant::now();
        let text = timeout(Duration::from_secs(2), scrape(addr)).await.expect("a scrape within 2 s");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(value(&text, "mirror_metrics_connections_open") <= 4.0, "{text}");
        assert_eq!(value(&text, "mirror_metrics_connections_limit"), 4.0);
        // The 20 idle ones went through the 4 slots, the older closed to make room.
        let evicted = value(&text, "mirror_metrics_connections_closed_total{reason=\"evicted\"}");
        assert!(evicted >= 16.0, "evicted {evicted}:\n{text}");
        // Closed, not merely counted: at most 4 are left open (the newest, give or take the
        // kernel's millisecond clock).
        let reads = idle.into_iter().map(|mut s| {
            tokio::spawn(async move {
                matches!(timeout(Duration::from_secs(1), s.read(&mut [0u8; 16])).await, Ok(Ok(0) | Err(_)))
            })
        });
        let mut closed = 0;
        for r in reads.collect::<Vec<_>>() {
            closed += usize::from(r.await.unwrap());
        }
        assert!(closed >= 16, "only {closed} of 20 closed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_scrapers_beyond_the_cap_is_served_in_turn() {
        let (addr, _) = start(limits(4)).await;
        let scrapes: Vec<_> = (0..200).map(|_| tokio::spawn(scrape(addr))).collect();
        for s in scrapes {
            let text = timeout(Duration::from_secs(10), s).await.unwrap().unwrap();
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_header_read_timeout_closes_silent_and_idle_kept_alive_connections() {
        let lim = EndpointLimits { header_read_timeout: Duration::from_millis(300), ..limits(8) };
        let (addr, _) = start(lim).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert!(read_response(&mut kept).await.starts_with("HTTP/1.1 200"));
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        for s in [&mut silent, &mut kept, &mut slow] {
            let took = closed_within(s, Duration::from_secs(2)).await;
            assert!(took < Duration::from_millis(1000), "{took:?}");
        }
        let text = scrape(addr).await;
        assert_eq!(value(&text, "mirror_metrics_connections_closed_total{reason=\"header_timeout\"}"), 3.0, "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_responses_pass_and_oversized_heads_are_refused() {
        let (addr, metrics) = start(limits(8)).await;
        for i in 0..400 {
            metrics.response(&format!("route-{i}"), "httpbin/v2", 200, Duration::from_millis(3));
        }
        let expected = metrics.encode().len();
        assert!(expected > 10 * READ_BUFFER, "{expected}");
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let text = timeout(Duration::from_secs(5), read_response(&mut s)).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.len() > expected, "{} bytes", text.len());
        // A head larger than the read buffer is refused, and the connection closed.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let big = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(2 * READ_BUFFER));
        let _ = s.write_all(big.as_bytes()).await;
        let mut out = Vec::new();
        let _ = timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await.expect("closed");
        assert!(out.starts_with(b"HTTP/1.1 431"), "{}", String::from_utf8_lossy(&out));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_connection_outlives_the_deadline() {
        let lim = EndpointLimits { deadline: Duration::from_millis(300), ..limits(8) };
        let (addr, _) = start(lim).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Busy, not idle: a request every 100 ms on the kept-alive connection.
        let t = Instant::now();
        let mut answered = 0;
        while t.elapsed() < Duration::from_secs(2) {
            if s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.is_err() {
                break;
            }
            let mut buf = [0u8; 1];
            match timeout(Duration::from_secs(2), s.peek(&mut buf)).await.unwrap() {
                Ok(1) => {
                    read_response(&mut s).await;
                    answered += 1;
                }
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(t.elapsed() < Duration::from_millis(1500), "open for {:?}", t.elapsed());
        assert!(answered >= 2, "answered {answered}");
        let text = scrape(addr).await;
        assert_eq!(value(&text, "mirror_metrics_connections_closed_total{reason=\"deadline\"}"), 1.0, "{text}");
    }
}
