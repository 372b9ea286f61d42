//! The sans-IO core, end to end: segments in, requests to mirror out.
//!
//! capture → **flow** (reassembly) → **http** (framing) → **route** (match, sample, rewrite) →
//! [`Outbound`], which the replay shell sends. The live daemon and offline pcap replay drive the same
//! [`Pipeline`]. A request is only emitted once every byte of it was seen: a request cut by a gap,
//! a close or a framing error is dropped and counted, never sent torn.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use rand::{SeedableRng, rngs::StdRng};
use serde::Serialize;

use crate::{
    flow::{FlowConfig, FlowKey, FlowMap, FlowTable, Segment, StreamEvent},
    http::{BodyKind, FramerConfig, HttpEvent, RequestFramer},
    memory::{self, Held, Memory},
    route::{Decision, MirrorTarget, Mirrors, Name, Router, rewrite_head},
    stats::DropReason,
};

mod compare;
pub use compare::CompareEvent;

/// Something for one mirror endpoint: a whole request, or a part of a streamed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The endpoints key (`host/subset`) of the mirror.
    pub endpoint: Name,
    /// The name of the route that sent it there.
    pub route: Name,
    /// The client connection it came from (its requests share one mirror connection, in order).
    pub flow: FlowKey,
    /// What of the request this is.
    pub part: Part,
    /// The comparison pair its response belongs to (see `pipeline/compare.rs`): replay reads it in
    /// full and hands it over. `None`: the response is only framed and thrown away.
    pub compare: Option<u64>,
}

/// A body piece at least this long is kept as a slice of the segment it came in (written with the
/// others by one `writev`), not copied: an upload's 60,000-byte segments cost the capture thread
/// no copy past the one out of the ring. Shorter pieces are copied together into one buffer, so a
/// body that arrived in many small segments is still one piece.
pub const SLICE_MIN: usize = 16 * 1024;

/// What a kept slice is charged at least: the largest payload one live sample carries, each
/// copied out of the ring into an allocation of its own (a slice keeps its whole segment's
/// allocation alive, and the part of a segment a body keeps may be shorter than the segment). A
/// longer segment (offline, from a capture file) is charged what was delivered of it.
pub const SLICE_CHARGE: usize = mirror_common::MAX_INLINE_CAPTURE as usize;

/// A request body as held for a mirror: its bytes in order, as one or more pieces (see
/// [`SLICE_MIN`]). Equal when the bytes are, however they are cut.
#[derive(Debug, Clone, Default)]
pub struct Body {
    pieces: smallvec::SmallVec<[Bytes; 2]>,
    /// What it keeps alive (the allocations its pieces are slices of, at least their bytes).
    held: usize,
}

impl Body {
    /// A body of one piece that holds exactly its bytes.
    pub fn from_bytes(b: Bytes) -> Self {
        let held = b.len();
        let mut pieces = smallvec::SmallVec::new();
        if !b.is_empty() {
            pieces.push(b);
        }
        Self { pieces, held }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum()
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The memory it keeps alive (at least [`Body::len`]).
    pub fn held(&self) -> usize {
        self.held
    }

    /// Its pieces, in order (none empty).
    pub fn pieces(&self) -> &[Bytes] {
        &self.pieces
    }

    /// Its bytes in one piece (a copy unless it has one piece).
    pub fn concat(&self) -> Bytes {
        match &self.pieces[..] {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => Bytes::from(many.concat()),
        }
    }
}

/// A body piece as it is handed on, with what it keeps alive: kept as a slice of its segment if
/// it is at least [`SLICE_MIN`] long (charged at least [`SLICE_CHARGE`], or the `arrived` bytes it
/// was cut from), else in an allocation of its own (charged its length).
fn kept(b: Bytes, arrived: usize) -> (Bytes, usize) {
    if b.len() >= SLICE_MIN {
        let held = b.len().max(arrived).max(SLICE_CHARGE);
        (b, held)
    } else {
        let held = b.len();
        (Bytes::copy_from_slice(&b), held)
    }
}

impl PartialEq for Body {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.concat() == other.concat()
    }
}

impl Eq for Body {}

/// A body being read ([`InFlight::body`]): slices of segments kept, shorter pieces copied into
/// `tail`.
#[derive(Debug, Default)]
struct BodyBuf {
    /// Pieces done: kept slices, and copied runs closed by a slice after them.
    done: smallvec::SmallVec<[Bytes; 2]>,
    /// Bytes in `done`.
    done_len: usize,
    /// What `done` keeps alive (see [`SLICE_CHARGE`]).
    done_held: usize,
    /// Short pieces copied since the last kept slice.
    tail: BytesMut,
}

impl BodyBuf {
    fn len(&self) -> usize {
        self.done_len + self.tail.len()
    }

    /// What it keeps alive.
    fn held(&self) -> usize {
        self.done_held + self.tail.capacity()
    }

    /// Appends `b`, a piece of a segment whose delivered bytes were `arrived` long: kept as a
    /// slice if it is at least [`SLICE_MIN`], else copied (see [`memory::hold`]; `max` bounds the
    /// copy buffer, `declared` is the body's Content-Length).
    fn push(&mut self, b: Bytes, arrived: usize, max: usize, declared: Option<usize>) {
        if b.len() >= SLICE_MIN {
            self.close_tail();
            let (b, held) = kept(b, arrived);
            self.done_len += b.len();
            self.done_held += held;
            self.done.push(b);
        } else {
            let room = max.saturating_sub(self.done_len);
            memory::hold(&mut self.tail, &b, room, declared.map(|d| d.saturating_sub(self.done_len)));
        }
    }

    fn close_tail(&mut self) {
        if !self.tail.is_empty() {
            let t = std::mem::take(&mut self.tail);
            self.done_len += t.len();
            self.done_held += t.capacity();
            self.done.push(t.freeze());
        }
    }

    /// The body so far; leaves this empty.
    fn take(&mut self) -> Body {
        self.close_tail();
        let body = Body { pieces: std::mem::take(&mut self.done), held: self.done_held };
        *self = Self::default();
        body
    }
}

/// The start of a request for a mirror: the head with Host rewritten, and the body bytes so far,
/// exactly as seen (chunk framing included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The head as this mirror gets it (Host and headers per its policy).
    pub head: Bytes,
    /// The body bytes (all of them for a whole request, those held so far for a streamed one).
    pub body: Body,
    /// The request method.
    pub method: &'static str,
}

impl Request {
    /// The request-target, read from the head's request line (replay has no use for it apart:
    /// a copy of it per request cost an allocation, freed on the replay thread).
    pub fn target(&self) -> &str {
        let target = self.head.split(|b| *b == b' ').nth(1).unwrap_or_default();
        std::str::from_utf8(target).unwrap_or_default()
    }
}

/// A request for a mirror, whole or as parts of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// A complete request: every byte of it was seen. The common case.
    Whole(Request),
    /// A request larger than the buffer: its start. `More` parts (numbered from 1) and then `End`
    /// or `Abort` follow on the same flow.
    Start {
        /// The stream's id, unique in this pipeline.
        stream: u64,
        /// The head and the body bytes held when the request outgrew the buffer.
        request: Request,
    },
    /// The next body bytes of a streamed request.
    More {
        /// The stream's id.
        stream: u64,
        /// 1 for the first `More`, then one more each time (a missing index means a lost part).
        index: u64,
        /// Raw body bytes, as seen.
        bytes: Bytes,
        /// What they keep alive (see [`kept`]).
        held: usize,
    },
    /// The streamed request is complete (`index` is one past the last `More`).
    End {
        /// The stream's id.
        stream: u64,
        /// One past the last `More`'s index.
        index: u64,
    },
    /// The streamed request lost bytes: the mirror connection must be reset, never completed.
    Abort {
        /// The stream's id.
        stream: u64,
    },
}

impl Outbound {
    /// The request when this is a whole one (tests, summaries).
    pub fn whole(&self) -> Option<&Request> {
        match &self.part {
            Part::Whole(r) => Some(r),
            _ => None,
        }
    }
}

/// What the core did, for metrics and `--json` summaries.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PipelineStats {
    /// Request heads framed (every request that started, whatever became of it).
    pub requests_framed: u64,
    /// Requests framed to their end (every byte seen).
    pub requests_complete: u64,
    /// Requests handed to replay complete (whole, or streamed to their end), once per mirror.
    pub mirrored: u64,
    /// Requests larger than the buffer, streamed to the mirror as they arrived.
    pub streamed: u64,
    /// (request, mirror) pairs a route's sampling left out.
    pub sampled_out: u64,
    /// Requests no route matched (CONNECT requests included: they are never routed).
    pub no_route: u64,
    /// Flows that became tunnels (CONNECT, Upgrade): nothing after is framed.
    pub tunnels: u64,
    /// Flows given up to stay within the memory budget (the largest holder first): their
    /// request in progress, if any, is counted as dropped for `memory_budget`; or, when a
    /// primary's response held for comparison is the largest, only that flow's pairing (its
    /// compared requests end `incomplete`, reason `shed`; its requests are still mirrored).
    pub shed_flows: u64,
    /// Requests (or would-be requests) lost, by reason (a JSON object keyed by
    /// [`DropReason::as_str`]).
    pub dropped: BTreeMap<DropReason, u64>,
    /// Per route, per mirror endpoint: for metrics labels.
    #[serde(skip)]
    pub by_route: BTreeMap<Name, BTreeMap<Name, RouteCounts>>,
}

/// What became of the requests one route sent to one mirror.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteCounts {
    /// Handed to replay complete.
    pub mirrored: u64,
    /// Left out by the route's sampling.
    pub sampled_out: u64,
}

impl PipelineStats {
    /// The counts of `route` to `endpoint`: looked up by name, so that counting a request clones
    /// no `Arc` (only the first of a pair does).
    fn route_counts(&mut self, route: &Name, endpoint: &Name) -> &mut RouteCounts {
        if !self.by_route.contains_key(&**route) {
            self.by_route.insert(*route, BTreeMap::new());
        }
        let by_mirror = self.by_route.get_mut(&**route).expect("inserted above");
        if !by_mirror.contains_key(&**endpoint) {
            by_mirror.insert(*endpoint, RouteCounts::default());
        }
        by_mirror.get_mut(&**endpoint).expect("inserted above")
    }

    fn count_drop(&mut self, reason: DropReason) {
        *self.dropped.entry(reason).or_default() += 1;
    }
}

/// One mirror's copy of the request being read.
#[derive(Debug)]
struct Shadow {
    mirror: MirrorTarget,
    /// The head as this mirror gets it (Host and headers per its policy).
    head: Bytes,
    /// Once the request outgrew the buffer and its start was sent: (stream id, next part index).
    stream: Option<(u64, u64)>,
    /// Its comparison pair, if any.
    role: compare::CopyRole,
}

/// The request being read on a flow.
#[derive(Debug)]
struct InFlight {
    /// One copy per mirror it goes to (inline for one: no allocation per request).
    shadows: smallvec::SmallVec<[Shadow; 1]>,
    method: &'static str,
    /// The request-target, kept only if a copy of it is compared (the comparison records it).
    target: Option<Box<str>>,
    /// Body bytes held until the request completes or outgrows the buffer.
    body: BodyBuf,
    /// Its Content-Length, if it has one (see [`memory::hold`]).
    declared: Option<usize>,
    head_len: usize,
}

/// The HTTP side of one flow: its framer and the request being read.
#[derive(Debug)]
struct HttpState {
    framer: RequestFramer,
    current: Option<InFlight>,
    /// What this flow was last charged to the memory budget: (partial head, buffered body).
    held: (usize, usize),
}

impl HttpState {
    fn new(framer: RequestFramer) -> Self {
        Self { framer, current: None, held: (0, 0) }
    }

    /// What it holds now: the framer's buffer and the buffered body (their allocations).
    fn holding(&self) -> (usize, usize) {
        (self.framer.held(), self.current.as_ref().map_or(0, |c| c.body.held()))
    }
}

/// The sans-IO core: flow → http → route. Feed it segments and ticks; it appends what to send to
/// the mirrors.
pub struct Pipeline {
    flows: FlowTable,
    /// The HTTP state of every open flow.
    http: FlowMap<HttpState>,
    framer_cfg: FramerConfig,
    routing: RouteStage,
    flow_events: Vec<(FlowKey, StreamEvent)>,
    http_events: Vec<HttpEvent>,
    /// The budget shared with replay.
    memory: Arc<Memory>,
    /// What the flow table's out-of-order buffers and the pairers (`compare.rs`) were last charged.
    reassembly_held: usize,
    compare_held: usize,
    /// Flows holding bytes, by what they hold: the largest is shed first.
    by_held: BTreeSet<(usize, FlowKey)>,
}

/// The route stage: what happens to each framed request (route, sample, rewrite, buffer or
/// stream, count).
struct RouteStage {
    router: Arc<Router>,
    buffer_bytes: usize,
    next_stream: u64,
    rng: StdRng,
    stats: PipelineStats,
    compare: compare::CompareStage,
}

impl Pipeline {
    /// `buffer_bytes`: requests up to this size are sent whole; larger ones are streamed.
    pub fn new(router: Arc<Router>, flow_cfg: FlowConfig, buffer_bytes: usize) -> Self {
        Self::with_rng(router, flow_cfg, buffer_bytes, StdRng::from_os_rng())
    }

    /// The flow table's settings for a pipeline drawing on a memory budget (the daemon's, `mirror
    /// replay`'s): the table's own bound over all flows (64 MiB by default, for a table on its
    /// own) is lifted, because [`Pipeline::on_segment`] bounds reassembly at half the budget in
    /// force, as `memory.limitBytes` promises (and a reload may change it). With the table's
    /// bound kept, a budget above 128 MiB did not give reassembly more than 64 MiB: large uploads
    /// on many connections at once shared it.
    pub fn budgeted_flows(responses: bool) -> FlowConfig {
        FlowConfig { responses, max_total_buffer: usize::MAX, ..FlowConfig::default() }
    }

    /// With a given random source (tests, reproducible offline runs).
    pub fn with_rng(router: Arc<Router>, flow_cfg: FlowConfig, buffer_bytes: usize, rng: StdRng) -> Self {
        let responses = flow_cfg.responses;
        // Where the server's acknowledgements say which bytes are requests, a gap is crossed only
        // where the next request's start is known (never by looking for a request line).
        let framer_cfg = FramerConfig { exact_after_gap: flow_cfg.require_ack, ..FramerConfig::default() };
        Self {
            flows: FlowTable::new(flow_cfg),
            http: FlowMap::default(),
            framer_cfg,
            routing: RouteStage {
                compare: compare::CompareStage::new(responses),
                router,
                buffer_bytes,
                next_stream: 0,
                rng,
                stats: PipelineStats::default(),
            },
            flow_events: Vec::new(),
            http_events: Vec::new(),
            memory: Arc::new(Memory::new(crate::config::MemorySettings::default().limit_bytes)),
            reassembly_held: 0,
            compare_held: 0,
            by_held: BTreeSet::new(),
        }
    }

    /// Draws on `memory` (shared with replay) instead of a budget of its own.
    pub fn with_memory(mut self, memory: Arc<Memory>) -> Self {
        self.memory = memory;
        self
    }

    /// The memory budget it draws on.
    pub fn memory(&self) -> &Arc<Memory> {
        &self.memory
    }

    /// Replaces the routes; requests already being read keep the decision they got. Pairing is on
    /// while some destination compares (the daemon's classifier then ships the responses).
    pub fn set_router(&mut self, router: Arc<Router>) {
        let on = !router.compared.is_empty();
        self.flows.set_responses(on);
        self.routing.compare.set_on(on);
        self.routing.router = router;
    }

    /// What the core did so far.
    pub fn stats(&self) -> &PipelineStats {
        &self.routing.stats
    }

    /// What the comparison learned since the last call, in order: the caller hands it to the
    /// compare task before it submits this round's [`Outbound`]s.
    pub fn take_compared(&mut self) -> Vec<CompareEvent> {
        self.routing.compare.take()
    }

    /// The flow table (its counters and open flows).
    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    /// The flow table's mutes of given-up flows since the last call ([`FlowTable::take_mutes`]).
    pub fn take_mutes(&mut self, out: &mut Vec<crate::flow::Mute>) {
        self.flows.take_mutes(out);
    }

    /// A captured segment of either direction, at `now` (time since an arbitrary start,
    /// monotonic): the client's carry the bytes, the server's acknowledgements release them (see
    /// [`FlowConfig::require_ack`]).
    pub fn on_segment(&mut self, seg: Segment, now: Duration, out: &mut Vec<Outbound>) {
        let mut events = std::mem::take(&mut self.flow_events);
        // The flow table may buffer what the budget has left; to take this segment, the largest
        // holders make room first (the flow table itself sheds nothing: it refuses what does not
        // fit, and the hole becomes a gap).
        if seg.payload.len() > self.memory.room() {
            let mut http = std::mem::take(&mut self.http_events);
            self.shed(seg.payload.len(), &mut http, out);
            self.http_events = http;
        }
        // Out-of-order and unacknowledged bytes may take half the budget at most: a flood of them
        // cannot crowd out the requests being framed.
        let reassembly_room = (self.reassembly_held + self.memory.room()).min(self.memory.limit() / 2);
        self.flows.set_buffer_limit(reassembly_room);
        self.flows.on_segment(seg, now, &mut events);
        self.handle(&mut events, out);
        self.flow_events = events;
    }

    /// Time passes: reorder and idle timeouts fire.
    pub fn on_tick(&mut self, now: Duration, out: &mut Vec<Outbound>) {
        let mut events = std::mem::take(&mut self.flow_events);
        self.flows.on_tick(now, &mut events);
        self.handle(&mut events, out);
        self.flow_events = events;
        if self.http.capacity() > 1024 && self.http.len() < self.http.capacity() / 4 {
            self.http.shrink_to(self.http.len() * 2);
        }
    }

    /// Closes every flow (end of input).
    pub fn finish(&mut self, out: &mut Vec<Outbound>) {
        let mut events = std::mem::take(&mut self.flow_events);
        self.flows.close_all(&mut events);
        self.handle(&mut events, out);
        self.flow_events = events;
    }

    fn handle(&mut self, events: &mut Vec<(FlowKey, StreamEvent)>, out: &mut Vec<Outbound>) {
        let mut http = std::mem::take(&mut self.http_events);
        for (key, ev) in events.drain(..) {
            match ev {
                StreamEvent::Open { midstream } => {
                    self.routing.compare.close(key, false);
                    if let Some(old) = self.http.remove(&key) {
                        self.forget(key, old.held);
                    }
                    // A flow that starts at its start gets its HTTP state with its first bytes:
                    // handshakes that never carry any (a SYN flood) cost nothing here.
                    if midstream {
                        let framer = RequestFramer::new(self.framer_cfg.clone(), true);
                        self.http.insert(key, HttpState::new(framer));
                    }
                }
                StreamEvent::Data(data) => {
                    // The common case, with one look-up of the flow's state.
                    let st = http_state(&mut self.http, &self.framer_cfg, key);
                    let arrived = data.len();
                    st.framer.on_data(data, &mut http);
                    self.routing.apply(key, st, &mut http, out, arrived);
                    charge(st, key, &self.memory, &mut self.by_held);
                    continue;
                }
                StreamEvent::Gap(len) => {
                    let framer = &mut http_state(&mut self.http, &self.framer_cfg, key).framer;
                    let framing = !framer.is_finished();
                    framer.on_gap(len, &mut http);
                    if framing && framer.is_finished() {
                        self.flows.give_up(key);
                    }
                }
                StreamEvent::Close(_) => {
                    if let Some(mut st) = self.http.remove(&key) {
                        st.framer.on_close(&mut http);
                        self.routing.apply(key, &mut st, &mut http, out, 0);
                        self.forget(key, st.held);
                    }
                    self.routing.compare.close(key, false);
                    continue;
                }
                reverse @ (StreamEvent::ReverseData(_) | StreamEvent::ReverseGap(_) | StreamEvent::ReverseFin) => {
                    self.routing.compare.on_reverse(key, reverse);
                    continue;
                }
            }
            if let Some(st) = self.http.get_mut(&key) {
                self.routing.apply(key, st, &mut http, out, 0);
                self.account(key);
            }
        }
        let reassembly = self.flows.buffered_bytes();
        self.memory.adjust(Held::Reassembly, self.reassembly_held, reassembly);
        self.reassembly_held = reassembly;
        self.memory.adjust(Held::Compare, self.compare_held, self.routing.compare.held());
        self.compare_held = self.routing.compare.held();
        self.shed(0, &mut http, out);
        self.http_events = http;
    }

    /// Charges the budget with what flow `key` holds now, and files it by size.
    fn account(&mut self, key: FlowKey) {
        if let Some(st) = self.http.get_mut(&key) {
            charge(st, key, &self.memory, &mut self.by_held);
        }
    }

    /// Flow `key`, charged `held`, is gone: gives its bytes back.
    fn forget(&mut self, key: FlowKey, held: (usize, usize)) {
        self.memory.release(Held::Heads, held.0);
        self.memory.release(Held::Bodies, held.1);
        if held.0 + held.1 > 0 {
            self.by_held.remove(&(held.0 + held.1, key));
        }
    }

    /// Gives up the flows holding the most until `need` more bytes fit in the budget (or none holds
    /// anything): requests in progress dropped (`memory_budget`), later bytes not framed.
    fn shed(&mut self, need: usize, http: &mut Vec<HttpEvent>, out: &mut Vec<Outbound>) {
        self.keep_compare_share();
        while self.memory.used() + need > self.memory.limit() {
            if self.shed_pairing() {
                continue;
            }
            let Some(&(_, key)) = self.by_held.last() else { return };
            let Some(st) = self.http.get_mut(&key) else {
                self.by_held.pop_last();
                continue;
            };
            st.framer.shed(http);
            self.routing.apply(key, st, http, out, 0);
            self.routing.stats.shed_flows += 1;
            self.account(key);
            if let Some(st) = self.http.get(&key).filter(|st| st.held != (0, 0)) {
                // Nothing more to free here (cannot happen: a shed framer and no request hold
                // nothing); never pick it again.
                self.by_held.remove(&(st.held.0 + st.held.1, key));
            }
        }
    }
}

impl RouteStage {
    /// `arrived`: the length of the delivered bytes the events' body pieces were cut from (0 when
    /// none were delivered), for what a kept slice is charged.
    fn apply(
        &mut self,
        key: FlowKey,
        st: &mut HttpState,
        http: &mut Vec<HttpEvent>,
        out: &mut Vec<Outbound>,
        arrived: usize,
    ) {
        for ev in http.drain(..) {
            match ev {
                HttpEvent::Head(head) => {
                    self.stats.requests_framed += 1;
                    let decision = if head.method == "CONNECT" {
                        // A CONNECT opens a tunnel on the mirror too: never replayed.
                        self.stats.count_drop(DropReason::ConnectMethod);
                        Decision::NoRoute
                    } else {
                        self.router.decide(&head, key.server.port(), &mut self.rng)
                    };
                    let mirrors = match decision {
                        Decision::NoRoute => {
                            self.stats.no_route += 1;
                            Mirrors::new()
                        }
                        Decision::Route { route, targets, sampled_out } => {
                            self.stats.sampled_out += sampled_out.len() as u64;
                            for endpoint in sampled_out {
                                self.stats.route_counts(&route, &endpoint).sampled_out += 1;
                            }
                            targets
                        }
                    };
                    let roles = self.compare.request(key, head.method, &mirrors, &self.router);
                    let compared = roles.iter().any(|r| matches!(r, Some((_, true))));
                    st.current = Some(InFlight {
                        shadows: mirrors
                            .into_iter()
                            .zip(roles)
                            .map(|(mirror, role)| Shadow {
                                head: rewrite_head(&head, &mirror.policy),
                                mirror,
                                stream: None,
                                role,
                            })
                            .collect(),
                        method: head.method,
                        target: compared.then(|| head.target().into()),
                        // No room before the first bytes: a Content-Length is a promise, not
                        // bytes; the buffer grows as they arrive (see `hold`).
                        body: BodyBuf::default(),
                        declared: match head.body {
                            BodyKind::Length(n) => usize::try_from(n).ok(),
                            _ => None,
                        },
                        head_len: head.raw.len(),
                    });
                }
                HttpEvent::Body(b) => {
                    let Some(cur) = st.current.as_mut() else { continue };
                    if cur.shadows.is_empty() {
                        continue;
                    }
                    let streaming = cur.shadows[0].stream.is_some();
                    if !streaming && cur.head_len + cur.body.len() + b.len() <= self.buffer_bytes {
                        cur.body.push(b, arrived, self.buffer_bytes - cur.head_len, cur.declared);
                        continue;
                    }
                    if !streaming {
                        // Outgrew the buffer: start a stream per mirror with what is held.
                        cur.body.push(b, arrived, usize::MAX, None);
                        let body = cur.body.take();
                        self.stats.streamed += 1;
                        for Shadow { mirror, head, stream, role } in &mut cur.shadows {
                            let id = self.next_stream;
                            self.next_stream += 1;
                            *stream = Some((id, 1));
                            let request = Request { head: head.clone(), body: body.clone(), method: cur.method };
                            out.push(outbound(key, mirror, Part::Start { stream: id, request }, *role));
                        }
                        continue;
                    }
                    // A short piece gets its own allocation (a slice of it could keep its whole
                    // segment alive while charged its length).
                    let (b, held) = kept(b, arrived);
                    for Shadow { mirror, stream, role, .. } in &mut cur.shadows {
                        let (id, index) = stream.as_mut().expect("streaming");
                        *index += 1;
                        out.push(outbound(
                            key,
                            mirror,
                            Part::More { stream: *id, index: *index - 1, bytes: b.clone(), held },
                            *role,
                        ));
                    }
                }
                HttpEvent::End => {
                    self.stats.requests_complete += 1;
                    let Some(mut cur) = st.current.take() else { continue };
                    let body = cur.body.take();
                    for Shadow { mirror, head, stream, role } in cur.shadows {
                        if let Some((id, true)) = role {
                            self.compare.expect(
                                id,
                                &mirror.route,
                                &mirror.endpoint,
                                cur.method,
                                cur.target.as_deref().unwrap_or_default(),
                                &self.router,
                            );
                        }
                        self.stats.mirrored += 1;
                        self.stats.route_counts(&mirror.route, &mirror.endpoint).mirrored += 1;
                        let part = match stream {
                            Some((id, index)) => Part::End { stream: id, index },
                            None => Part::Whole(Request { head, body: body.clone(), method: cur.method }),
                        };
                        out.push(outbound(key, &mirror, part, role));
                    }
                }
                HttpEvent::Dropped(reason) => {
                    if let Some(cur) = st.current.take() {
                        for Shadow { mirror, stream, role, .. } in cur.shadows {
                            if let Some((id, _)) = stream {
                                self.stats.count_drop(DropReason::StreamAborted);
                                out.push(outbound(key, &mirror, Part::Abort { stream: id }, role));
                            }
                        }
                    }
                    self.stats.count_drop(reason);
                }
                HttpEvent::Tunnel => self.stats.tunnels += 1,
            }
        }
    }
}

/// Flow `key`'s HTTP state, made with its first bytes (a flow opened mid-stream has one from its
/// `Open`).
fn http_state<'a>(http: &'a mut FlowMap<HttpState>, cfg: &FramerConfig, key: FlowKey) -> &'a mut HttpState {
    http.entry(key).or_insert_with(|| HttpState::new(RequestFramer::new(cfg.clone(), false)))
}

/// [`Pipeline::account`] for a flow's state already looked up.
fn charge(st: &mut HttpState, key: FlowKey, memory: &Memory, by_held: &mut BTreeSet<(usize, FlowKey)>) {
    let (before, now) = (st.held, st.holding());
    if before == now {
        return;
    }
    st.held = now;
    memory.adjust(Held::Heads, before.0, now.0);
    memory.adjust(Held::Bodies, before.1, now.1);
    let (old, new) = (before.0 + before.1, now.0 + now.1);
    if old > 0 {
        by_held.remove(&(old, key));
    }
    if new > 0 {
        by_held.insert((new, key));
    }
}

fn outbound(flow: FlowKey, mirror: &MirrorTarget, part: Part, role: compare::CopyRole) -> Outbound {
    let (endpoint, route, compare) = (mirror.endpoint, mirror.route, role.map(|(id, _)| id));
    Outbound { endpoint, route, flow, part, compare }
}

#[cfg(test)]
mod tests;
