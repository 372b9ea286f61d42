//! One mirror connection's worker: HTTP/1.1 pipelining with batched writes.
//!
//! Requests taken from the queue are written back to back (one `writev` for what arrived
//! together) without waiting for the previous response; the responses are read and framed in
//! order, each by its own [`ResponseReader`] (so HEAD, 1xx and `Connection: close` are handled per
//! request). At most [`DEPTH`] requests are in flight on a connection.
//!
//! When a connection fails, no request the mirror may have processed is ever sent again (a mirror
//! may have side effects): a request is resent on a new connection only if none of its bytes were
//! accepted by the kernel, or if it came after a response that said `Connection: close` (RFC 9112
//! §9.6: the server must not process requests after that one). Every other unanswered request is
//! dropped and counted by cause (`io_error`, `timeout`, `bad_response`, `connect_error`).
//!
//! A streamed request that cannot be completed (a lost part, an abort, another request arriving in
//! the middle of it) is never completed: the worker stops writing, waits for the answers to the
//! requests written before it, and then resets the connection (RST), counted as `stream_reset`.

use std::{
    collections::VecDeque,
    io::IoSlice,
    net::SocketAddr,
    time::{Duration, Instant},
};

use std::io::{Read as _, Write as _};

use bytes::{Buf, Bytes};
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::TcpStream,
    sync::mpsc,
    time::{Instant as TokioInstant, sleep_until, timeout},
};

use super::{Recorder, weight};
use crate::{
    config::ReplaySettings,
    http::response::ResponseReader,
    pipeline::{Outbound, Part},
    stats::DropReason,
};

/// Requests written and not yet answered, per connection. Enough to ride out a mirror (or this
/// worker) stalled for a hundred milliseconds at tens of thousands of requests per second (on a
/// busy machine a mirror backend answers in bursts), small enough that a failure loses little;
/// the bytes are charged to the memory budget until answered.
pub(super) const DEPTH: usize = 1024;
/// How long answers may wait to be read with a later batch before the worker wakes up for them
/// (lazy reading: at steady load the answers to one batch are read when the next one is written,
/// so they cost no wake-up). The shadow latency metric is measured when an answer is read: an
/// upper bound, by at most this much.
const READ_LAG: Duration = Duration::from_millis(50);
/// Answers are read (with a batch) once the oldest unanswered request is this old or this many
/// are unanswered, not at every batch: at a light rate each read system call then takes the
/// answers of many batches (a `recv` per connection and batch was a tenth of the daemon's CPU at
/// 2,000 req/s). They stay in the socket's receive buffer meanwhile (a few KiB).
const READ_AFTER: Duration = Duration::from_millis(40);
const READ_BATCH: usize = 64;
/// How often answers are polled for when they are needed soon (see `Conn::urgent`).
const TICK: Duration = Duration::from_millis(1);
/// A connection idle this long is probed for a close by the server before it is used again.
const IDLE_PROBE: Duration = Duration::from_millis(250);
/// Buffers passed to one `writev`.
const MAX_IOV: usize = 64;

/// A request written (or being written) on the connection and not yet answered.
struct InFlight {
    /// Offset of its first byte in the connection's output.
    start: u64,
    head_request: bool,
    started: Instant,
    /// When its last part so far was handed to the connection: the request timeout runs from
    /// there (a long upload is not timed out while the client is still sending it; a streamed
    /// request still being written is never timed out here: the client's flow ends it).
    sent: Instant,
    /// The request itself: kept so that it can be resent if it never reached the server.
    ob: Outbound,
    /// How many times it was written before (on connections that failed before it was sent).
    tries: u8,
    /// The stream id of a streamed request (never resent).
    stream: Option<u64>,
    /// A streamed request that must never complete: the connection is reset when it is reached.
    poisoned: bool,
    /// A compared request: its response's bytes, kept as read.
    capture: Option<super::compare::Capture>,
}

struct Conn {
    /// Registered with the runtime for writability only: answers are read with the batches and
    /// on the worker's own timer, so their arrival never wakes the runtime's thread.
    stream: AsyncFd<std::net::TcpStream>,
    /// Bytes not yet accepted by the kernel, with the memory to give back once they are.
    out: VecDeque<(Bytes, usize)>,
    /// Bytes queued on this connection so far.
    queued: u64,
    /// Bytes the kernel accepted so far.
    written: u64,
    inflight: VecDeque<InFlight>,
    /// The reader of the first in-flight request's response.
    reader: Option<ResponseReader>,
    /// A streamed request being written: (stream id, index of the next `More`).
    active: Option<(u64, u64)>,
    /// No more requests on this connection: a stream is to be reset.
    poisoned: bool,
    /// When a request was last put on it.
    used: Instant,
}

impl Conn {
    /// `f` is the streamed request still being written (its parts still arriving).
    fn writing(&self, f: &InFlight) -> bool {
        f.stream.is_some() && self.active.is_some_and(|(s, _)| Some(s) == f.stream)
    }

    fn push(&mut self, bytes: Bytes, release: usize) {
        if !bytes.is_empty() {
            self.queued += bytes.len() as u64;
            self.out.push_back((bytes, release));
        }
    }

    /// Whether answers are polled for every [`TICK`] rather than read with the next batch: when
    /// writing is stuck (the server may be waiting for us to read), when many are in flight,
    /// while a stream waits to be reset, and when shutting down.
    fn urgent(&self, open: bool) -> bool {
        !self.out.is_empty() || self.inflight.len() >= DEPTH / 2 || self.poisoned || !open
    }

    /// Whether what the mirror answered is read now (see [`READ_AFTER`]).
    fn answers_due(&self, open: bool) -> bool {
        self.inflight.front().is_some_and(|f| {
            self.urgent(open) || self.inflight.len() >= READ_BATCH || f.started.elapsed() >= READ_AFTER
        })
    }

    /// Whether the server closed this idle connection (probed before it is used again).
    fn closed_while_idle(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!((&mut self.stream.get_ref()).read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Writes what the kernel takes now. `Err` if the connection failed.
    fn flush(&mut self, rec: &Recorder) -> std::io::Result<()> {
        while !self.out.is_empty() {
            let slices: Vec<IoSlice<'_>> = self.out.iter().take(MAX_IOV).map(|(b, _)| IoSlice::new(b)).collect();
            let mut n = match (&mut self.stream.get_ref()).write_vectored(&slices) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            self.written += n as u64;
            while n > 0 {
                let (front, release) = self.out.front_mut().expect("written bytes were queued");
                if n >= front.len() {
                    n -= front.len();
                    rec.memory.release(crate::memory::Held::Replay, *release);
                    self.out.pop_front();
                } else {
                    front.advance(n);
                    n = 0;
                }
            }
        }
        Ok(())
    }
}

/// A request is written at most this many times on connections that failed before taking any of
/// its bytes: a server that keeps failing cannot loop us. (Resends after a `Connection: close`
/// are not bounded: each such connection answered a request first.)
const MAX_TRIES: u8 = 3;

/// A queued item and how many times it was written before.
type Queued = (Outbound, u8);

/// How a connection ended with requests unanswered.
#[derive(Clone, Copy)]
enum Ending {
    /// The server said `Connection: close`: it processes nothing after that response.
    ServerClose,
    Failed(DropReason),
}

/// The worker of one mirror connection (reconnected as needed).
pub(super) async fn worker(
    addr: SocketAddr,
    mut rx: mpsc::Receiver<Outbound>,
    settings: ReplaySettings,
    rec: Recorder,
) {
    let limit = settings.request_timeout();
    let mut conn: Option<Conn> = None;
    let mut pending: VecDeque<Queued> = VecDeque::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut open = true;
    // One timer for the first in-flight request: when its answer should be read (lazy) or when
    // it times out. It may fire early (it is re-armed then, not at every response).
    let timer = sleep_until(TokioInstant::now() + limit);
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    loop {
        // What the mirror answered is read in the wake-up of a later batch (or of the timer below,
        // if none comes): answers need no wake-up of their own.
        if let Some(c) = conn.as_mut()
            && c.answers_due(open)
        {
            // The oldest unanswered request changes: the timer is set again below for the new
            // one (left for an answered one, it would wake the worker for nothing).
            armed = None;
            if let Some(e) = read_available(c, &mut buf, &rec) {
                end(&mut conn, &mut pending, e, &rec);
            }
        }
        admit(&mut conn, &mut pending, addr, &settings, &rec).await;
        if let Some(c) = conn.as_mut()
            && c.flush(&rec).is_err()
        {
            end(&mut conn, &mut pending, Ending::Failed(DropReason::IoError), &rec);
        }
        reset_if_due(&mut conn, &rec);
        if conn.is_none() && !pending.is_empty() {
            // The connection ended with requests to (re)send: connect again at once.
            continue;
        }
        let now = Instant::now();
        let busy = conn.as_ref().is_some_and(|c| !c.inflight.is_empty());
        if let Some(c) = conn.as_ref()
            && let Some(f) = c.inflight.front()
        {
            // Answers needed soon are polled for every TICK; others wait for the next batch or
            // READ_LAG; a request past its deadline is failed when the timer fires.
            let due = if c.urgent(open) { now + TICK } else { (f.started + READ_LAG).max(now + READ_LAG) };
            let due = if c.writing(f) { due } else { due.min(f.sent + limit) };
            if armed.is_none_or(|a| due < a) {
                timer.as_mut().reset(TokioInstant::from_std(due));
                armed = Some(due);
            }
        }
        if !open && pending.is_empty() && !busy {
            return;
        }
        let can_take = open && pending.len() < DEPTH;
        tokio::select! {
            got = rx.recv(), if can_take => match got {
                Some(ob) => {
                    pending.push_back((ob, 0));
                    while pending.len() < DEPTH {
                        match rx.try_recv() {
                            Ok(ob) => pending.push_back((ob, 0)),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            ready = writable(&conn) => {
                let ending = match ready {
                    Ok(()) => conn.as_mut().expect("writable needs a connection").flush(&rec).err(),
                    Err(e) => Some(e),
                };
                if ending.is_some() {
                    end(&mut conn, &mut pending, Ending::Failed(DropReason::IoError), &rec);
                }
            }
            _ = &mut timer, if armed.is_some() => {
                armed = None;
                let now = Instant::now();
                let late = conn.as_ref().is_some_and(|c| {
                    c.inflight.front().is_some_and(|f| !c.writing(f) && now.duration_since(f.sent) >= limit)
                });
                if late {
                    end(&mut conn, &mut pending, Ending::Failed(DropReason::Timeout), &rec);
                }
            }
        }
    }
}

/// Waits until the socket takes more bytes (only while some wait to be written).
async fn writable(conn: &Option<Conn>) -> std::io::Result<()> {
    match conn.as_ref().filter(|c| !c.out.is_empty()) {
        Some(c) => {
            let mut guard = c.stream.ready(Interest::WRITABLE).await?;
            // The flush that follows tells the next wait whether the socket is still full.
            guard.clear_ready();
            Ok(())
        }
        None => std::future::pending().await,
    }
}

/// Reads and frames what has arrived, without waiting (a short read is taken as the end: one
/// system call saved). `Some` if the connection ended.
fn read_available(c: &mut Conn, buf: &mut [u8], rec: &Recorder) -> Option<Ending> {
    loop {
        let n = match (&mut c.stream.get_ref()).read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(_) => return Some(Ending::Failed(DropReason::IoError)),
        };
        if n == 0 {
            // The server closed: that may end a response without a length.
            if let Some(done) = c.reader.as_ref().and_then(ResponseReader::on_eof) {
                let f = c.inflight.pop_front().expect("a reader reads a request's response");
                rec.answered(&f.ob, f.started.elapsed(), done.status);
                rec.compare.hand_over(&f.ob, f.capture);
                c.reader = None;
            }
            return Some(Ending::Failed(DropReason::IoError));
        }
        // One clock read for every answer in this read (the shadow latency metric is measured
        // when an answer is read: see READ_LAG).
        let now = Instant::now();
        let mut data = &buf[..n];
        while !data.is_empty() {
            let Some(front) = c.inflight.front() else {
                // Bytes nobody asked for: the connection is out of step.
                return Some(Ending::Failed(DropReason::BadResponse));
            };
            let reader = c.reader.get_or_insert_with(|| ResponseReader::new(front.head_request));
            let (used, done) = match reader.feed_some(data) {
                Ok(r) => r,
                Err(_) => return Some(Ending::Failed(DropReason::BadResponse)),
            };
            if let Some(capture) = c.inflight.front_mut().and_then(|f| f.capture.as_mut()) {
                capture.push(&data[..used]);
            }
            data = &data[used..];
            let Some(done) = done else { continue };
            c.reader = None;
            let f = c.inflight.pop_front().expect("front checked above");
            rec.answered(&f.ob, now.saturating_duration_since(f.started), done.status);
            rec.compare.hand_over(&f.ob, f.capture);
            if c.active.is_some_and(|(s, _)| Some(s) == f.stream) {
                // Answered before its body was all written (an early error status): the rest
                // of the stream has nowhere to go.
                c.active = None;
                c.poisoned = true;
            }
            if !done.reusable {
                return Some(Ending::ServerClose);
            }
        }
        if n < buf.len() {
            return None;
        }
    }
}

/// Moves queued requests onto the connection (connecting if needed) while it can take them.
async fn admit(
    conn: &mut Option<Conn>,
    pending: &mut VecDeque<Queued>,
    addr: SocketAddr,
    settings: &ReplaySettings,
    rec: &Recorder,
) {
    // One clock read for the whole batch admitted (taken again after a connect, which waits).
    let mut now = Instant::now();
    while let Some((ob, _)) = pending.front() {
        // Parts of a stream that is not being written (its start was dropped, or it was reset)
        // are thrown away: their loss was counted when it happened.
        let stream_part = match &ob.part {
            Part::More { stream, .. } | Part::End { stream, .. } | Part::Abort { stream } => Some(*stream),
            _ => None,
        };
        if let Some(s) = stream_part
            && !conn.as_ref().is_some_and(|c| c.active.is_some_and(|(a, _)| a == s) && !c.poisoned)
        {
            let (ob, _) = pending.pop_front().expect("front");
            rec.memory.release(crate::memory::Held::Replay, weight(&ob));
            continue;
        }
        if conn
            .as_ref()
            .is_some_and(|c| c.inflight.is_empty() && now.duration_since(c.used) > IDLE_PROBE && c.closed_while_idle())
        {
            *conn = None;
        }
        if let Some(c) = conn.as_mut() {
            c.used = now;
            if c.poisoned || c.inflight.len() >= DEPTH {
                return;
            }
            if stream_part.is_none() && c.active.is_some() {
                // A new request in the middle of a stream: the stream can never be completed.
                poison(c);
                return;
            }
        } else {
            let connected = connect(addr, settings).await;
            now = Instant::now();
            match connected {
                Some(stream) => *conn = Some(new_conn(stream)),
                None => {
                    // The mirror is unreachable: what waits now is lost, later requests try again.
                    for (ob, _) in pending.drain(..) {
                        rec.compare.failed(&ob);
                        rec.memory.release(crate::memory::Held::Replay, weight(&ob));
                        if !matches!(ob.part, Part::More { .. } | Part::End { .. } | Part::Abort { .. }) {
                            rec.count_drop(DropReason::ConnectError);
                        }
                    }
                    return;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let (ob, tries) = pending.pop_front().expect("front");
        write(c, ob, tries, rec, now);
    }
}

/// Queues one item's bytes on the connection.
fn write(c: &mut Conn, ob: Outbound, tries: u8, rec: &Recorder, now: Instant) {
    let start = c.queued;
    match &ob.part {
        Part::Whole(req) | Part::Start { request: req, .. } => {
            let (head, body, head_request) = (req.head.clone(), req.body.clone(), req.method == "HEAD");
            let stream = match &ob.part {
                Part::Start { stream, .. } => Some(*stream),
                _ => None,
            };
            c.push(head, 0);
            for piece in body.pieces() {
                c.push(piece.clone(), 0);
            }
            if let Some(s) = stream {
                c.active = Some((s, 1));
            }
            let capture = rec.compare.capture(&ob, head_request);
            c.inflight.push_back(InFlight {
                start,
                head_request,
                started: now,
                sent: now,
                ob,
                tries,
                stream,
                poisoned: false,
                capture,
            });
        }
        Part::More { index, bytes, .. } => {
            let (_, next) = c.active.as_mut().expect("admit checked the stream");
            if *index != *next {
                // A part was lost on a full queue: this request must never complete.
                rec.memory.release(crate::memory::Held::Replay, weight(&ob));
                poison(c);
                return;
            }
            *next += 1;
            touch(c);
            let w = weight(&ob);
            c.push(bytes.clone(), w);
            if bytes.is_empty() {
                rec.memory.release(crate::memory::Held::Replay, w);
            }
        }
        Part::End { index, .. } => {
            rec.memory.release(crate::memory::Held::Replay, weight(&ob));
            if c.active.is_some_and(|(_, next)| next == *index) {
                touch(c);
                c.active = None;
            } else {
                poison(c);
            }
        }
        Part::Abort { .. } => {
            rec.memory.release(crate::memory::Held::Replay, weight(&ob));
            poison(c);
        }
    }
}

/// The stream being written got a part now: its request timeout starts again.
fn touch(c: &mut Conn) {
    if let Some((s, _)) = c.active
        && let Some(f) = c.inflight.iter_mut().rev().find(|f| f.stream == Some(s))
    {
        f.sent = Instant::now();
    }
}

/// The stream being written must never complete: nothing more is written on this connection,
/// and it is reset once the requests before the stream are answered.
fn poison(c: &mut Conn) {
    if let Some((s, _)) = c.active.take()
        && let Some(f) = c.inflight.iter_mut().rev().find(|f| f.stream == Some(s))
    {
        f.poisoned = true;
    }
    c.poisoned = true;
}

/// Resets a poisoned connection once nothing written before the stream awaits an answer.
fn reset_if_due(conn: &mut Option<Conn>, rec: &Recorder) {
    let Some(c) = conn.as_mut() else { return };
    if !c.poisoned || c.inflight.front().is_some_and(|f| !f.poisoned) {
        return;
    }
    let c = conn.take().expect("checked");
    // A zero linger makes close send RST at once (it does not block).
    set_zero_linger(c.stream.get_ref());
    release_out(&c, rec);
    for f in c.inflight {
        // Only the poisoned stream is left (whatever came after it was never admitted). A stream
        // its server answered early was counted as answered: nothing is left of it here.
        rec.memory.release(crate::memory::Held::Replay, weight(&f.ob));
        rec.compare.failed(&f.ob);
        rec.count_drop(DropReason::StreamReset);
    }
}

/// Gives back the memory of bytes that will never be written.
fn release_out(c: &Conn, rec: &Recorder) {
    for (_, release) in &c.out {
        rec.memory.release(crate::memory::Held::Replay, *release);
    }
}

/// Ends the connection: unanswered requests that never reached the server go back to the front
/// of the queue, the others are counted as lost.
fn end(conn: &mut Option<Conn>, pending: &mut VecDeque<Queued>, how: Ending, rec: &Recorder) {
    let Some(c) = conn.take() else { return };
    release_out(&c, rec);
    let mut again = Vec::new();
    for f in c.inflight {
        let untouched = f.start >= c.written;
        // After a close the server answered one request at least: resending makes progress.
        // After a failure it may not have: those resends are bounded.
        let tries = match how {
            Ending::ServerClose => Some(f.tries),
            Ending::Failed(_) => (untouched && f.tries + 1 < MAX_TRIES).then_some(f.tries + 1),
        };
        if let Some(tries) = tries.filter(|_| f.stream.is_none() && !f.poisoned) {
            again.push((f.ob, tries));
            continue;
        }
        rec.memory.release(crate::memory::Held::Replay, weight(&f.ob));
        rec.compare.failed(&f.ob);
        rec.count_drop(match how {
            Ending::Failed(reason) => reason,
            // A streamed request cut short by the server's close.
            Ending::ServerClose => DropReason::StreamReset,
        });
    }
    for q in again.into_iter().rev() {
        pending.push_front(q);
    }
    if matches!(how, Ending::Failed(_)) {
        tracing::debug!("mirror connection ended");
    }
}

fn new_conn(stream: AsyncFd<std::net::TcpStream>) -> Conn {
    Conn {
        stream,
        out: VecDeque::new(),
        queued: 0,
        written: 0,
        inflight: VecDeque::new(),
        reader: None,
        active: None,
        poisoned: false,
        used: Instant::now(),
    }
}

async fn connect(addr: SocketAddr, settings: &ReplaySettings) -> Option<AsyncFd<std::net::TcpStream>> {
    let stream = timeout(settings.connect_timeout(), TcpStream::connect(addr)).await.ok()?.ok()?;
    let _ = stream.set_nodelay(true);
    // Off the runtime's read readiness (non-blocking still): see `Conn::stream`.
    let stream = stream.into_std().ok()?;
    // SAFETY: a std TcpStream owns its descriptor, always returns it from as_raw_fd, and it stays
    // open until the AsyncFd (its owner) is dropped.
    unsafe { AsyncFd::register_with_interest(stream, Interest::WRITABLE) }.ok()
}

/// SO_LINGER with a zero timeout: closing then sends RST, so a request written in part is never
/// completed by the server.
fn set_zero_linger(stream: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket descriptor and a pointer to a linger struct of the size passed.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
