//! The sans-IO core, end to end: segments in, requests to mirror out.
//!
//! capture → **flow** (reassembly) → **http** (framing) → **route** (match, sample, rewrite) →
//! [`Outbound`], which the replay shell sends. The live daemon and offline pcap replay drive the same
//! [`Pipeline`]. A request is only emitted once every byte of it was seen: a request cut by a gap,
//! a close or a framing error is dropped and counted, never sent torn.

use std::{collections::BTreeMap, collections::HashMap, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use rand::{SeedableRng, rngs::StdRng};
use serde::Serialize;

use crate::{
    flow::{FlowConfig, FlowKey, FlowTable, Segment, StreamEvent},
    http::{BodyKind, FramerConfig, HttpEvent, RequestFramer},
    route::{Decision, MirrorTarget, Router, rewrite_head},
    stats::DropReason,
};

/// Something for one mirror endpoint: a whole request, or a part of a streamed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The endpoints key (`host/subset`) of the mirror.
    pub endpoint: Arc<str>,
    /// The name of the route that sent it there.
    pub route: Arc<str>,
    /// The client connection it came from (its requests share one mirror connection, in order).
    pub flow: FlowKey,
    /// What of the request this is.
    pub part: Part,
}

/// The start of a request for a mirror: the head with Host rewritten, and the body bytes so far,
/// exactly as seen (chunk framing included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The head as this mirror gets it (Host and headers per its policy).
    pub head: Bytes,
    /// The body bytes (all of them for a whole request, those held so far for a streamed one).
    pub body: Bytes,
    /// The request method.
    pub method: String,
    /// The request-target, as captured.
    pub target: String,
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
    /// Requests (or would-be requests) lost, by reason (a JSON object keyed by
    /// [`DropReason::as_str`]).
    pub dropped: BTreeMap<DropReason, u64>,
    /// Per (route, mirror endpoint): for metrics labels.
    #[serde(skip)]
    pub by_route: BTreeMap<(Arc<str>, Arc<str>), RouteCounts>,
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
}

/// The request being read on a flow.
#[derive(Debug)]
struct InFlight {
    /// One copy per mirror it goes to.
    shadows: Vec<Shadow>,
    method: String,
    /// The request-target.
    target: String,
    /// Body bytes held until the request completes or outgrows the buffer.
    body: BytesMut,
    head_len: usize,
}

/// The HTTP side of one flow: its framer and the request being read.
#[derive(Debug)]
struct HttpState {
    framer: RequestFramer,
    current: Option<InFlight>,
}

/// The sans-IO core: flow → http → route. Feed it segments and ticks; it appends what to send to
/// the mirrors.
pub struct Pipeline {
    flows: FlowTable,
    /// The HTTP state of every open flow.
    http: HashMap<FlowKey, HttpState>,
    framer_cfg: FramerConfig,
    routing: RouteStage,
    flow_events: Vec<(FlowKey, StreamEvent)>,
    http_events: Vec<HttpEvent>,
}

/// The route stage: what happens to each framed request (route, sample, rewrite, buffer or
/// stream, count).
struct RouteStage {
    router: Arc<Router>,
    buffer_bytes: usize,
    next_stream: u64,
    rng: StdRng,
    stats: PipelineStats,
}

impl Pipeline {
    /// `buffer_bytes`: requests up to this size are sent whole; larger ones are streamed.
    pub fn new(router: Arc<Router>, flow_cfg: FlowConfig, buffer_bytes: usize) -> Self {
        Self::with_rng(router, flow_cfg, buffer_bytes, StdRng::from_os_rng())
    }

    /// With a given random source (tests, reproducible offline runs).
    pub fn with_rng(router: Arc<Router>, flow_cfg: FlowConfig, buffer_bytes: usize, rng: StdRng) -> Self {
        Self {
            flows: FlowTable::new(flow_cfg),
            http: HashMap::new(),
            framer_cfg: FramerConfig::default(),
            routing: RouteStage { router, buffer_bytes, next_stream: 0, rng, stats: PipelineStats::default() },
            flow_events: Vec::new(),
            http_events: Vec::new(),
        }
    }

    /// Replaces the routes; requests already being read keep the decision they got.
    pub fn set_router(&mut self, router: Arc<Router>) {
        self.routing.router = router;
    }

    /// What the core did so far.
    pub fn stats(&self) -> &PipelineStats {
        &self.routing.stats
    }

    /// The flow table (its counters and open flows).
    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    /// A captured segment of either direction, at `now` (time since an arbitrary start,
    /// monotonic): the client's carry the bytes, the server's acknowledgements release them (see
    /// [`FlowConfig::require_ack`]).
    pub fn on_segment(&mut self, seg: Segment, now: Duration, out: &mut Vec<Outbound>) {
        let mut events = std::mem::take(&mut self.flow_events);
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
                    self.http.insert(
                        key,
                        HttpState { framer: RequestFramer::new(self.framer_cfg.clone(), midstream), current: None },
                    );
                }
                StreamEvent::Data(data) => {
                    if let Some(st) = self.http.get_mut(&key) {
                        st.framer.on_data(data, &mut http);
                    }
                }
                StreamEvent::Gap(len) => {
                    if let Some(st) = self.http.get_mut(&key) {
                        st.framer.on_gap(len, &mut http);
                    }
                }
                StreamEvent::Close(_) => {
                    if let Some(mut st) = self.http.remove(&key) {
                        st.framer.on_close(&mut http);
                        self.routing.apply(key, &mut st, &mut http, out);
                    }
                    continue;
                }
            }
            if let Some(st) = self.http.get_mut(&key) {
                self.routing.apply(key, st, &mut http, out);
            }
        }
        self.http_events = http;
    }
}

impl RouteStage {
    fn apply(&mut self, key: FlowKey, st: &mut HttpState, http: &mut Vec<HttpEvent>, out: &mut Vec<Outbound>) {
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
                            Vec::new()
                        }
                        Decision::Route { route, targets, sampled_out } => {
                            self.stats.sampled_out += sampled_out.len() as u64;
                            for endpoint in sampled_out {
                                self.stats.by_route.entry((route.clone(), endpoint)).or_default().sampled_out += 1;
                            }
                            targets
                        }
                    };
                    st.current = Some(InFlight {
                        shadows: mirrors
                            .into_iter()
                            .map(|mirror| Shadow { head: rewrite_head(&head, &mirror.policy), mirror, stream: None })
                            .collect(),
                        method: head.method.clone(),
                        target: head.target.clone(),
                        // Sized once from Content-Length (up to the buffer): no doubling growth, so
                        // memory held is what is accounted.
                        body: match head.body {
                            BodyKind::Length(n) => BytesMut::with_capacity((n as usize).min(self.buffer_bytes)),
                            _ => BytesMut::new(),
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
                        cur.body.extend_from_slice(&b);
                        continue;
                    }
                    if !streaming {
                        // Outgrew the buffer: start a stream per mirror with what is held.
                        cur.body.extend_from_slice(&b);
                        let body = std::mem::take(&mut cur.body).freeze();
                        self.stats.streamed += 1;
                        for Shadow { mirror, head, stream } in &mut cur.shadows {
                            let id = self.next_stream;
                            self.next_stream += 1;
                            *stream = Some((id, 1));
                            let request = Request {
                                head: head.clone(),
                                body: body.clone(),
                                method: cur.method.clone(),
                                target: cur.target.clone(),
                            };
                            out.push(outbound(key, mirror, Part::Start { stream: id, request }));
                        }
                        continue;
                    }
                    for Shadow { mirror, stream, .. } in &mut cur.shadows {
                        let (id, index) = stream.as_mut().expect("streaming");
                        *index += 1;
                        out.push(outbound(
                            key,
                            mirror,
                            Part::More { stream: *id, index: *index - 1, bytes: b.clone() },
                        ));
                    }
                }
                HttpEvent::End => {
                    self.stats.requests_complete += 1;
                    let Some(cur) = st.current.take() else { continue };
                    let body = cur.body.freeze();
                    for Shadow { mirror, head, stream } in cur.shadows {
                        self.stats.mirrored += 1;
                        self.stats
                            .by_route
                            .entry((mirror.route.clone(), mirror.endpoint.clone()))
                            .or_default()
                            .mirrored += 1;
                        let part = match stream {
                            Some((id, index)) => Part::End { stream: id, index },
                            None => Part::Whole(Request {
                                head,
                                body: body.clone(),
                                method: cur.method.clone(),
                                target: cur.target.clone(),
                            }),
                        };
                        out.push(outbound(key, &mirror, part));
                    }
                }
                HttpEvent::Dropped(reason) => {
                    if let Some(cur) = st.current.take() {
                        for Shadow { mirror, stream, .. } in cur.shadows {
                            if let Some((id, _)) = stream {
                                self.stats.count_drop(DropReason::StreamAborted);
                                out.push(outbound(key, &mirror, Part::Abort { stream: id }));
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

fn outbound(flow: FlowKey, mirror: &MirrorTarget, part: Part) -> Outbound {
    Outbound { endpoint: mirror.endpoint.clone(), route: mirror.route.clone(), flow, part }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use mirror_common::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

    fn pipeline(pct: f64) -> Pipeline {
        let text = format!(
            "capture: {{interfaces: [eth0], ports: [80]}}\nendpoints: {{'httpbin/v2': ['127.0.0.1:1']}}\nroutes:\n  - mirror: {{host: httpbin, subset: v2}}\n    mirrorPercentage: {{value: {pct}}}\n"
        );
        let router = Router::new(&Config::parse(&text, "t").unwrap()).unwrap();
        Pipeline::with_rng(Arc::new(router), FlowConfig::default(), 1 << 20, StdRng::seed_from_u64(3))
    }

    fn key() -> FlowKey {
        FlowKey { client: "10.0.0.1:5555".parse().unwrap(), server: "10.0.0.2:80".parse().unwrap() }
    }

    /// Feeds the client's segments, each followed by the server's ACK (a SYN-ACK for the SYN) of
    /// everything up to the end of the furthest one so far (the server got every segment, even one
    /// the capture lost).
    fn feed(p: &mut Pipeline, segs: &[(u32, u8, &[u8])]) -> Vec<Outbound> {
        let mut out = Vec::new();
        let mut acked = 0u32;
        for (i, (seq, flags, data)) in segs.iter().enumerate() {
            let s = Segment::to_server(key(), *seq, 0, *flags, Bytes::copy_from_slice(data));
            p.on_segment(s, Duration::from_millis(i as u64), &mut out);
            let syn_fin = u32::from(flags & (TCP_SYN | TCP_FIN) != 0);
            acked = acked.max(seq + data.len() as u32 + syn_fin);
            // The SYN is answered with a SYN-ACK.
            let ack_flags = TCP_ACK | (flags & TCP_SYN);
            p.on_segment(Segment::to_client(key(), 7, acked, ack_flags, 0), Duration::from_millis(i as u64), &mut out);
        }
        out
    }

    #[test]
    fn post_is_mirrored_with_host_rewritten_and_body_identical() {
        let mut p = pipeline(100.0);
        let req = b"POST /post HTTP/1.1\r\nHost: httpbin:8000\r\nContent-Length: 11\r\n\r\nhello world";
        let out = feed(&mut p, &[(1, TCP_SYN, b""), (2, TCP_ACK, &req[..50]), (52, TCP_ACK | TCP_FIN, &req[50..])]);
        assert_eq!(out.len(), 1);
        let r = out[0].whole().unwrap();
        assert_eq!(&r.head[..], b"POST /post HTTP/1.1\r\nHost: httpbin-shadow:8000\r\nContent-Length: 11\r\n\r\n");
        assert_eq!(&r.body[..], b"hello world");
        assert_eq!(p.stats().mirrored, 1);
    }

    #[test]
    fn zero_percent_sends_nothing() {
        let mut p = pipeline(0.0);
        let out = feed(&mut p, &[(1, TCP_SYN, b""), (2, TCP_ACK, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")]);
        assert!(out.is_empty());
        assert_eq!(p.stats().sampled_out, 1);
    }

    #[test]
    fn only_what_the_primary_processed_reaches_the_mirror() {
        // Issue 11: a data segment without ACK, an out-of-window RST, text in a body that looks
        // like a request line.
        let mut p = pipeline(100.0);
        let head = b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 25\r\n\r\n";
        let body = b"GET /phantom HTTP/1.1\r\n\r\n";
        let (h, n) = (head.len() as u32, (head.len() + body.len()) as u32);
        let client = |seq, flags, data: &[u8]| Segment::to_server(key(), seq, 0, flags, Bytes::copy_from_slice(data));
        let server = |ack, flags| Segment::to_client(key(), 7, ack, flags, 0);
        let mut out = Vec::new();
        for s in [
            client(1, TCP_SYN, b""),
            server(2, TCP_SYN | TCP_ACK),
            client(2, 0, b"GET /noack HTTP/1.1\r\n\r\n"),
            client(2, TCP_ACK, head),
            server(2 + h, TCP_ACK),
            client(99_999, TCP_RST, b""),
            client(2 + h, TCP_ACK, body),
            server(2 + n, TCP_ACK),
        ] {
            p.on_segment(s, Duration::ZERO, &mut out);
        }
        p.finish(&mut out);
        let targets: Vec<&str> = out.iter().map(|o| o.whole().unwrap().target.as_str()).collect();
        assert_eq!(targets, ["/up"]);
        assert_eq!(&out[0].whole().unwrap().body[..], body);
        assert_eq!((p.flows().stats.segments_without_ack, p.flows().stats.rst_ignored), (1, 1));
    }

    #[test]
    fn request_the_primary_never_acknowledged_is_never_sent() {
        // A spoofed source: the primary answers the SYN to an address that never completes.
        let mut p = pipeline(100.0);
        let mut out = Vec::new();
        for (i, (seq, flags, data)) in
            [(1, TCP_SYN, &b""[..]), (2, TCP_ACK, b"GET /spoofed HTTP/1.1\r\n\r\n")].into_iter().enumerate()
        {
            let s = Segment::to_server(key(), seq, 0, flags, Bytes::copy_from_slice(data));
            p.on_segment(s, Duration::from_millis(i as u64), &mut out);
        }
        p.finish(&mut out);
        assert!(out.is_empty());
        assert_eq!(p.flows().stats.unacked_bytes, 25);
        assert_eq!(p.stats().dropped.get(&DropReason::Gap), Some(&1));
    }

    #[test]
    fn request_cut_by_a_lost_segment_is_never_sent_nor_what_follows() {
        let mut p = pipeline(100.0);
        let req = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789";
        let next = b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n";
        let n = req.len() as u32;
        // Bytes 40..45 of the first request never arrive: the flow is given up.
        let mut out = feed(
            &mut p,
            &[(1, TCP_SYN, b""), (2, TCP_ACK, &req[..40]), (47, TCP_ACK, &req[45..]), (2 + n, TCP_ACK, next)],
        );
        p.on_tick(Duration::from_secs(10), &mut out);
        p.finish(&mut out);
        assert!(out.is_empty());
        assert_eq!(p.stats().dropped.get(&DropReason::Gap), Some(&1));
        assert_eq!(p.flows().stats.flows_given_up_gap, 1);
    }

    #[test]
    fn one_direction_only_resynchronises_after_a_lost_segment() {
        let text = "capture: {interfaces: [eth0], ports: [80]}\nendpoints: {m: ['127.0.0.1:1']}\nroutes: [{mirror: {host: m}}]\n";
        let router = Router::new(&Config::parse(text, "t").unwrap()).unwrap();
        let flow_cfg = FlowConfig { require_ack: false, ..FlowConfig::default() };
        let mut p = Pipeline::with_rng(Arc::new(router), flow_cfg, 1 << 20, StdRng::seed_from_u64(3));
        let req = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789";
        let next = b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n";
        let n = req.len() as u32;
        // Bytes 40..45 of the first request never arrive (no ACK is needed without require_ack).
        let mut out = feed(
            &mut p,
            &[(1, TCP_SYN, b""), (2, TCP_ACK, &req[..40]), (47, TCP_ACK, &req[45..]), (2 + n, TCP_ACK, next)],
        );
        p.finish(&mut out);
        assert_eq!(out.len(), 1, "only the request after the gap");
        assert_eq!(out[0].whole().unwrap().target, "/after");
        assert_eq!(p.stats().dropped.get(&DropReason::Gap), Some(&1));
    }

    #[test]
    fn large_request_is_streamed_in_order_and_small_ones_stay_whole() {
        let mut p = pipeline(100.0);
        p.routing.buffer_bytes = 100;
        let big = format!("POST /big HTTP/1.1\r\nContent-Length: 300\r\n\r\n{}", "x".repeat(300));
        let next = b"GET /small HTTP/1.1\r\n\r\n";
        let (a, b) = big.as_bytes().split_at(120);
        let (b, c) = b.split_at(100);
        let mut segs: Vec<(u32, u8, &[u8])> = vec![(1, TCP_SYN, b"")];
        let mut seq = 2u32;
        for part in [a, b, c, &next[..]] {
            segs.push((seq, TCP_ACK, part));
            seq += part.len() as u32;
        }
        let out = feed(&mut p, &segs);
        let parts: Vec<&Part> = out.iter().map(|o| &o.part).collect();
        assert!(
            matches!(parts[0], Part::Start { stream: 0, request } if request.head.len() + request.body.len() == 120)
        );
        assert!(matches!(parts[1], Part::More { stream: 0, index: 1, bytes } if bytes.len() == 100));
        assert!(matches!(parts[2], Part::More { stream: 0, index: 2, bytes } if bytes.len() == big.len() - 220));
        assert!(matches!(parts[3], Part::End { stream: 0, index: 3 }));
        assert!(matches!(parts[4], Part::Whole(r) if r.target == "/small"));
        assert_eq!((p.stats().streamed, p.stats().mirrored), (1, 2));
    }

    #[test]
    fn streamed_request_cut_by_a_gap_is_aborted() {
        let mut p = pipeline(100.0);
        p.routing.buffer_bytes = 50;
        let big = format!("POST /big HTTP/1.1\r\nContent-Length: 300\r\n\r\n{}", "x".repeat(300));
        let b = big.as_bytes();
        let mut out = feed(&mut p, &[(1, TCP_SYN, b""), (2, TCP_ACK, &b[..100]), (2 + 150, TCP_ACK, &b[150..])]);
        p.finish(&mut out);
        let parts: Vec<&Part> = out.iter().map(|o| &o.part).collect();
        assert!(matches!(parts.first(), Some(Part::Start { .. })));
        assert!(matches!(parts.last(), Some(Part::Abort { stream: 0 })));
        assert!(!parts.iter().any(|p| matches!(p, Part::End { .. })));
        assert_eq!(p.stats().dropped.get(&DropReason::StreamAborted), Some(&1));
    }
}
