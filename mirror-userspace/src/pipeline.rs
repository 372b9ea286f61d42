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
    http::{FramerConfig, HttpEvent, RequestFramer},
    route::{Decision, Router, rewrite_host},
};

/// A complete request, ready for one mirror endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub endpoint: usize,
    pub route: Arc<str>,
    /// The head with Host rewritten.
    pub head: Bytes,
    /// The body exactly as seen (chunk framing included).
    pub body: Bytes,
    pub method: String,
    pub target: String,
    pub flow: FlowKey,
}

/// What the core did, for metrics and `--json` summaries.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PipelineStats {
    pub requests_framed: u64,
    pub requests_complete: u64,
    pub mirrored: u64,
    pub sampled_out: u64,
    pub no_route: u64,
    pub tunnels: u64,
    /// Requests (or would-be requests) lost, by reason.
    pub dropped: BTreeMap<String, u64>,
}

impl PipelineStats {
    fn drop(&mut self, reason: &str) {
        *self.dropped.entry(reason.to_string()).or_default() += 1;
    }
}

/// The request being read on a flow, if it is to be mirrored.
#[derive(Debug)]
struct InFlight {
    decision: Decision,
    head: Box<crate::http::RequestHead>,
    body: BytesMut,
    too_large: bool,
}

#[derive(Debug)]
struct FlowState {
    framer: RequestFramer,
    current: Option<InFlight>,
}

pub struct Pipeline {
    flows: FlowTable,
    states: HashMap<FlowKey, FlowState>,
    router: Arc<Router>,
    framer_cfg: FramerConfig,
    max_request_bytes: usize,
    rng: StdRng,
    pub stats: PipelineStats,
    flow_events: Vec<(FlowKey, StreamEvent)>,
    http_events: Vec<HttpEvent>,
}

impl Pipeline {
    pub fn new(router: Arc<Router>, flow_cfg: FlowConfig, max_request_bytes: usize) -> Self {
        Self::with_rng(router, flow_cfg, max_request_bytes, StdRng::from_os_rng())
    }

    /// With a given random source (tests, reproducible offline runs).
    pub fn with_rng(router: Arc<Router>, flow_cfg: FlowConfig, max_request_bytes: usize, rng: StdRng) -> Self {
        Self {
            flows: FlowTable::new(flow_cfg),
            states: HashMap::new(),
            router,
            framer_cfg: FramerConfig::default(),
            max_request_bytes,
            rng,
            stats: PipelineStats::default(),
            flow_events: Vec::new(),
            http_events: Vec::new(),
        }
    }

    /// Replaces the routes; requests already being read keep the decision they got.
    pub fn set_router(&mut self, router: Arc<Router>) {
        self.router = router;
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
                        self.apply(key, &mut st, &mut http, out);
                    }
                    continue;
                }
            }
            if let Some(mut st) = self.states.remove(&key) {
                self.apply(key, &mut st, &mut http, out);
                self.states.insert(key, st);
            }
        }
        self.http_events = http;
    }

    fn apply(&mut self, key: FlowKey, st: &mut FlowState, http: &mut Vec<HttpEvent>, out: &mut Vec<Outbound>) {
        for ev in http.drain(..) {
            match ev {
                HttpEvent::Head(head) => {
                    self.stats.requests_framed += 1;
                    let decision = if head.method.eq_ignore_ascii_case("CONNECT") {
                        // A CONNECT opens a tunnel on the mirror too: never replayed.
                        self.stats.drop("connect");
                        Decision::NoRoute
                    } else {
                        self.router.decide(&head, &mut self.rng)
                    };
                    match &decision {
                        Decision::NoRoute => self.stats.no_route += 1,
                        Decision::SampledOut { .. } => self.stats.sampled_out += 1,
                        Decision::Mirror(_) => {}
                    }
                    st.current = Some(InFlight { decision, head, body: BytesMut::new(), too_large: false });
                }
                HttpEvent::Body(b) => {
                    if let Some(cur) = st.current.as_mut()
                        && matches!(cur.decision, Decision::Mirror(_))
                        && !cur.too_large
                    {
                        if cur.head.raw.len() + cur.body.len() + b.len() > self.max_request_bytes {
                            cur.too_large = true;
                            cur.body = BytesMut::new();
                        } else {
                            cur.body.extend_from_slice(&b);
                        }
                    }
                }
                HttpEvent::End => {
                    self.stats.requests_complete += 1;
                    let Some(cur) = st.current.take() else {
                        continue;
                    };
                    if let Decision::Mirror(target) = cur.decision {
                        if cur.too_large {
                            self.stats.drop("too_large");
                            continue;
                        }
                        self.stats.mirrored += 1;
                        out.push(Outbound {
                            endpoint: target.endpoint,
                            route: target.route,
                            head: rewrite_host(&cur.head),
                            body: cur.body.freeze(),
                            method: cur.head.method.clone(),
                            target: cur.head.target.clone(),
                            flow: key,
                        });
                    }
                }
                HttpEvent::Dropped(reason) => {
                    st.current = None;
                    self.stats.drop(reason.as_str());
                }
                HttpEvent::Tunnel => self.stats.tunnels += 1,
            }
        }
    }
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
        assert_eq!(&out[0].head[..], b"POST /post HTTP/1.1\r\nHost: httpbin-shadow:8000\r\nContent-Length: 11\r\n\r\n");
        assert_eq!(&out[0].body[..], b"hello world");
        assert_eq!(p.stats.mirrored, 1);
    }

    #[test]
    fn zero_percent_sends_nothing() {
        let mut p = pipeline(0.0);
        let out = feed(&mut p, &[(1, TCP_SYN, b""), (2, TCP_ACK, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")]);
        assert!(out.is_empty());
        assert_eq!(p.stats.sampled_out, 1);
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
        assert_eq!(out[0].target, "/after");
        assert_eq!(p.stats.dropped.get("gap"), Some(&1));
    }

    #[test]
    fn oversized_request_is_dropped_but_framing_continues() {
        let mut p = pipeline(100.0);
        p.max_request_bytes = 100;
        let big = format!("POST /big HTTP/1.1\r\nContent-Length: 200\r\n\r\n{}", "x".repeat(200));
        let next = b"GET /small HTTP/1.1\r\n\r\n";
        let out =
            feed(&mut p, &[(1, TCP_SYN, b""), (2, TCP_ACK, big.as_bytes()), (2 + big.len() as u32, TCP_ACK, next)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].target, "/small");
        assert_eq!(p.stats.dropped.get("too_large"), Some(&1));
    }
}
