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
};

/// Something for one mirror endpoint: a whole request, or a part of a streamed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The endpoints key (`host/subset`) of the mirror.
    pub endpoint: Arc<str>,
    pub route: Arc<str>,
    /// The client connection it came from (its requests share one mirror connection, in order).
    pub flow: FlowKey,
    pub part: Part,
}

/// The start of a request for a mirror: the head with Host rewritten, and the body bytes so far,
/// exactly as seen (chunk framing included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub head: Bytes,
    pub body: Bytes,
    pub method: String,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// A complete request: every byte of it was seen. The common case.
    Whole(Request),
    /// A request larger than the buffer: its start. `More` parts (numbered from 1) and then `End`
    /// or `Abort` follow on the same flow.
    Start {
        stream: u64,
        request: Request,
    },
    More {
        stream: u64,
        index: u64,
        bytes: Bytes,
    },
    /// The streamed request is complete (`index` is one past the last `More`).
    End {
        stream: u64,
        index: u64,
    },
    /// The streamed request lost bytes: the mirror connection must be reset, never completed.
    Abort {
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
    pub requests_framed: u64,
    pub requests_complete: u64,
    /// Requests handed to replay complete (whole, or streamed to their end), once per mirror.
    pub mirrored: u64,
    /// Requests larger than the buffer, streamed to the mirror as they arrived.
    pub streamed: u64,
    /// (request, mirror) pairs a route's sampling left out.
    pub sampled_out: u64,
    pub no_route: u64,
    pub tunnels: u64,
    /// Requests (or would-be requests) lost, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Per (route, mirror endpoint): for metrics labels.
    #[serde(skip)]
    pub by_route: BTreeMap<(Arc<str>, Arc<str>), RouteCounts>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteCounts {
    pub mirrored: u64,
    pub sampled_out: u64,
}

impl PipelineStats {
    fn drop(&mut self, reason: &str) {
        *self.dropped.entry(reason.to_string()).or_default() += 1;
    }
}

/// One mirror's copy of the request being read.
#[derive(Debug)]
struct Shadow {
    target: MirrorTarget,
    /// The head as this mirror gets it (Host and headers per its policy).
    head: Bytes,
    /// Once the request outgrew the buffer and its start was sent: (stream id, next part index).
    stream: Option<(u64, u64)>,
}

/// The request being read on a flow.
#[derive(Debug)]
struct InFlight {
    /// The mirrors it goes to.
    targets: Vec<Shadow>,
    method: String,
    target: String,
    /// Body bytes held until the request completes or outgrows the buffer.
    body: BytesMut,
    head_len: usize,
}

#[derive(Debug)]
struct FlowState {
    framer: RequestFramer,
    current: Option<InFlight>,
}

pub struct Pipeline {
    flows: FlowTable,
    states: HashMap<FlowKey, FlowState>,
    framer_cfg: FramerConfig,
    req: Requests,
    flow_events: Vec<(FlowKey, StreamEvent)>,
    http_events: Vec<HttpEvent>,
}

/// The route stage: what happens to each framed request.
struct Requests {
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
            states: HashMap::new(),
            framer_cfg: FramerConfig::default(),
            req: Requests { router, buffer_bytes, next_stream: 0, rng, stats: PipelineStats::default() },
            flow_events: Vec::new(),
            http_events: Vec::new(),
        }
    }

    /// Replaces the routes; requests already being read keep the decision they got.
    pub fn set_router(&mut self, router: Arc<Router>) {
        self.req.router = router;
    }

    /// What the core did so far.
    pub fn stats(&self) -> &PipelineStats {
        &self.req.stats
    }

    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    pub fn on_segment(&mut self, seg: Segment, now: Duration, out: &mut Vec<Outbound>) {
        let mut events = std::mem::take(&mut self.flow_events);
        self.flows.on_segment(seg, now, &mut events);
        self.handle(&mut events, out);
        self.flow_events = events;
    }

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
                    self.states.insert(
                        key,
                        FlowState { framer: RequestFramer::new(self.framer_cfg.clone(), midstream), current: None },
                    );
                }
                StreamEvent::Data(data) => {
                    if let Some(st) = self.states.get_mut(&key) {
                        st.framer.on_data(data, &mut http);
                    }
                }
                StreamEvent::Gap(len) => {
                    if let Some(st) = self.states.get_mut(&key) {
                        st.framer.on_gap(len, &mut http);
                    }
                }
                StreamEvent::Close(_) => {
                    if let Some(mut st) = self.states.remove(&key) {
                        st.framer.on_close(&mut http);
                        self.req.apply(key, &mut st, &mut http, out);
                    }
                    continue;
                }
            }
            if let Some(st) = self.states.get_mut(&key) {
                self.req.apply(key, st, &mut http, out);
            }
        }
        self.http_events = http;
    }
}

impl Requests {
    fn apply(&mut self, key: FlowKey, st: &mut FlowState, http: &mut Vec<HttpEvent>, out: &mut Vec<Outbound>) {
        for ev in http.drain(..) {
            match ev {
                HttpEvent::Head(head) => {
                    self.stats.requests_framed += 1;
                    let decision = if head.method == "CONNECT" {
                        // A CONNECT opens a tunnel on the mirror too: never replayed.
                        self.stats.drop("connect");
                        Decision::NoRoute
                    } else {
                        self.router.decide(&head, key.server.port(), &mut self.rng)
                    };
                    let targets = match decision {
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
                        targets: targets
                            .into_iter()
                            .map(|target| Shadow { head: rewrite_head(&head, &target.policy), target, stream: None })
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
                    if cur.targets.is_empty() {
                        continue;
                    }
                    let streaming = cur.targets[0].stream.is_some();
                    if !streaming && cur.head_len + cur.body.len() + b.len() <= self.buffer_bytes {
                        cur.body.extend_from_slice(&b);
                        continue;
                    }
                    if !streaming {
                        // Outgrew the buffer: start a stream per mirror with what is held.
                        cur.body.extend_from_slice(&b);
                        let body = std::mem::take(&mut cur.body).freeze();
                        self.stats.streamed += 1;
                        for Shadow { target: t, head, stream } in &mut cur.targets {
                            let id = self.next_stream;
                            self.next_stream += 1;
                            *stream = Some((id, 1));
                            let request = Request {
                                head: head.clone(),
                                body: body.clone(),
                                method: cur.method.clone(),
                                target: cur.target.clone(),
                            };
                            out.push(outbound(key, t, Part::Start { stream: id, request }));
                        }
                        continue;
                    }
                    for Shadow { target: t, stream, .. } in &mut cur.targets {
                        let (id, index) = stream.as_mut().expect("streaming");
                        *index += 1;
                        out.push(outbound(key, t, Part::More { stream: *id, index: *index - 1, bytes: b.clone() }));
                    }
                }
                HttpEvent::End => {
                    self.stats.requests_complete += 1;
                    let Some(cur) = st.current.take() else { continue };
                    let body = cur.body.freeze();
                    for Shadow { target: t, head, stream } in cur.targets {
                        self.stats.mirrored += 1;
                        self.stats.by_route.entry((t.route.clone(), t.endpoint.clone())).or_default().mirrored += 1;
                        let part = match stream {
                            Some((id, index)) => Part::End { stream: id, index },
                            None => Part::Whole(Request {
                                head,
                                body: body.clone(),
                                method: cur.method.clone(),
                                target: cur.target.clone(),
                            }),
                        };
                        out.push(outbound(key, &t, part));
                    }
                }
                HttpEvent::Dropped(reason) => {
                    if let Some(cur) = st.current.take() {
                        for Shadow { target: t, stream, .. } in cur.targets {
                            if let Some((id, _)) = stream {
                                self.stats.drop("stream_aborted");
                                out.push(outbound(key, &t, Part::Abort { stream: id }));
                            }
                        }
                    }
                    self.stats.drop(reason.as_str());
                }
                HttpEvent::Tunnel => self.stats.tunnels += 1,
            }
        }
    }
}

fn outbound(flow: FlowKey, t: &MirrorTarget, part: Part) -> Outbound {
    Outbound { endpoint: t.endpoint.clone(), route: t.route.clone(), flow, part }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use mirror_common::{TCP_ACK, TCP_FIN, TCP_SYN};

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

    fn feed(p: &mut Pipeline, segs: &[(u32, u8, &[u8])]) -> Vec<Outbound> {
        let mut out = Vec::new();
        for (i, (seq, flags, data)) in segs.iter().enumerate() {
            let s = Segment { key: key(), seq: *seq, flags: *flags, payload: Bytes::copy_from_slice(data) };
            p.on_segment(s, Duration::from_millis(i as u64), &mut out);
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
    fn request_cut_by_a_lost_segment_is_never_sent() {
        let mut p = pipeline(100.0);
        let req = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789";
        let next = b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n";
        let n = req.len() as u32;
        // Bytes 40..45 of the first request never arrive.
        let mut out = feed(
            &mut p,
            &[(1, TCP_SYN, b""), (2, TCP_ACK, &req[..40]), (47, TCP_ACK, &req[45..]), (2 + n, TCP_ACK, next)],
        );
        p.finish(&mut out);
        assert_eq!(out.len(), 1, "only the request after the gap");
        assert_eq!(out[0].whole().unwrap().target, "/after");
        assert_eq!(p.stats().dropped.get("gap"), Some(&1));
    }

    #[test]
    fn large_request_is_streamed_in_order_and_small_ones_stay_whole() {
        let mut p = pipeline(100.0);
        p.req.buffer_bytes = 100;
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
        p.req.buffer_bytes = 50;
        let big = format!("POST /big HTTP/1.1\r\nContent-Length: 300\r\n\r\n{}", "x".repeat(300));
        let b = big.as_bytes();
        let mut out = feed(&mut p, &[(1, TCP_SYN, b""), (2, TCP_ACK, &b[..100]), (2 + 150, TCP_ACK, &b[150..])]);
        p.finish(&mut out);
        let parts: Vec<&Part> = out.iter().map(|o| &o.part).collect();
        assert!(matches!(parts.first(), Some(Part::Start { .. })));
        assert!(matches!(parts.last(), Some(Part::Abort { stream: 0 })));
        assert!(!parts.iter().any(|p| matches!(p, Part::End { .. })));
        assert_eq!(p.stats().dropped.get("stream_aborted"), Some(&1));
    }
}
