//! Prometheus metrics (prometheus-client), served as text on `--metrics-addr`.
//!
//! The sans-IO core keeps plain counters; the capture thread publishes them here periodically
//! (as deltas), and the replay workers record responses, latencies and failures directly.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Mutex, RwLock},
    time::Duration,
};

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

use crate::{flow::FlowStats, memory::Memory, pipeline::PipelineStats, stats::DropReason};

mod compare;
mod endpoint;
mod links;

use endpoint::EndpointMetrics;
pub(crate) use endpoint::{raise_fd_limit, serve};

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
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
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

/// One (route, mirror)'s handles on its response metrics, so that recording a response (once per
/// mirrored request, on the replay workers) builds no label strings and hashes no label set.
/// `Family` never removes an entry here (no `remove`/`clear`), so a handle stays the series the
/// family exports for the whole process: nothing to invalidate on reload.
struct ResponseHandles {
    /// `shadow_responses` by status class (index: 1-5 for 1xx-5xx, 0 for other), created at
    /// first use (a class never seen has no series, as before).
    classes: [Option<Counter>; 6],
    latency: Histogram,
}

/// Route → mirror → handles (nested so that a lookup borrows the caller's `&str`s): two lookups
/// per mirror response, hashed with foldhash (the names come from the config, not the wire).
type ResponseCache = HashMap<String, HashMap<String, ResponseHandles, Fold>, Fold>;
type Fold = foldhash::fast::RandomState;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric the daemon exports, registered under the `mirror_` prefix.
pub struct Metrics {
    registry: Registry,
    kernel: Family<KindLabel, Counter>,
    /// How full the fullest perf ring was at each drain.
    ring_fill: Histogram,
    flows_open: Gauge,
    memory: Family<KindLabel, Gauge>,
    memory_limit: Gauge,
    shed_flows: Counter,
    attach: Family<AttachLabel, Gauge>,
    flow_events: Family<KindLabel, Counter>,
    framed: Counter,
    mirrored: Family<RouteMirror, Counter>,
    sampled_out: Family<RouteMirror, Counter>,
    no_route: Counter,
    dropped: Family<ReasonLabel, Counter>,
    responses: Family<ResponseLabel, Counter>,
    latency: Family<RouteMirror, Histogram, fn() -> Histogram>,
    /// Handles on `responses` and `latency` per (route, mirror).
    response_handles: RwLock<ResponseCache>,
    /// The metrics endpoint's own connections (see [`serve`]).
    endpoint: EndpointMetrics,
    /// Links attached, detached and failed; duplicate copies (see `links`).
    links: links::LinkMetrics,
    /// Comparisons of mirror responses with the primary's (issue 15).
    compare: compare::CompareMetrics,
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
            ring_fill: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]),
            flows_open: Gauge::default(),
            memory: Family::default(),
            memory_limit: Gauge::default(),
            shed_flows: Counter::default(),
            attach: Family::default(),
            flow_events: Family::default(),
            framed: Counter::default(),
            mirrored: Family::default(),
            sampled_out: Family::default(),
            no_route: Counter::default(),
            dropped: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            response_handles: RwLock::default(),
            endpoint: EndpointMetrics::default(),
            links: links::LinkMetrics::default(),
            compare: compare::CompareMetrics::default(),
            last: Mutex::new(BTreeMap::new()),
            registry: Registry::default(),
        };
        registry.register(
            "kernel_packets",
            "TCP segments to watched ports, by what the classifier did: seen, shipped, lost (ring full), truncated, tail_pieces, ip_fragments, skipped_mirror_traffic",
            m.kernel.clone(),
        );
        registry.register(
            "kernel_ring_fill_ratio",
            "How full the fullest per-CPU perf ring was (0 to 1) each time the capture thread began to read them; at 1 the kernel drops samples (kernel_packets{kind=\"lost\"}): a fill often above 0.5 asks for more capture.perfPages",
            m.ring_fill.clone(),
        );
        registry.register("flows_open", "TCP flows being reassembled", m.flows_open.clone());
        registry.register(
            "memory_held_bytes",
            "Bytes held for requests in progress, by kind: reassembly, heads, bodies, replay",
            m.memory.clone(),
        );
        registry.register(
            "memory_limit_bytes",
            "The budget of memory_held_bytes (memory.limitBytes)",
            m.memory_limit.clone(),
        );
        registry.register(
            "flows_shed",
            "Flows given up to stay within the memory budget, the largest holder first",
            m.shed_flows.clone(),
        );
        registry.register(
            "attach_info",
            "1 for each interface the classifier is attached to, with the attach mode (tcx or netlink)",
            m.attach.clone(),
        );
        registry.register(
            "flow_events",
            "Flow counters, by the names of the JSON summary's `flows` object (opened, midstream, gaps, segments_without_ack, rst_ignored, conflicting_copies, flows_given_up_gap, flows_given_up_midstream, given_up_acked_bytes, ...)",
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
        m.links.register(&mut registry);
        m.compare.register(&mut registry);
        Metrics { registry, ..m }
    }

    fn delta(&self, key: &str, now: u64) -> u64 {
        let mut last = self.last.lock().expect("metrics lock");
        let prev = last.insert(key.to_string(), now).unwrap_or(0);
        now.saturating_sub(prev)
    }

    /// Publishes the capture thread's counters (absolute values; deltas are added).
    pub fn publish(&self, kernel: &[(&'static str, u64)], flows: &FlowStats, flows_open: usize, p: &PipelineStats) {
        self.shed_flows.inc_by(self.delta("shed_flows", p.shed_flows));
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
        for (route, mirror, c) in p.by_route.iter().flat_map(|(r, m)| m.iter().map(move |(e, c)| (r, e, c))) {
            let labels = RouteMirror { route: route.to_string(), mirror: mirror.to_string() };
            self.mirrored.get_or_create(&labels).inc_by(self.delta(&format!("m/{route}/{mirror}"), c.mirrored));
            self.sampled_out.get_or_create(&labels).inc_by(self.delta(&format!("s/{route}/{mirror}"), c.sampled_out));
        }
    }

    /// How full the fullest ring was when the capture thread began to read them.
    pub fn ring_fill(&self, fill: f64) {
        self.ring_fill.observe(fill);
    }

    /// What the memory budget holds now.
    pub fn memory(&self, memory: &Memory) {
        for (kind, bytes) in memory.snapshot() {
            self.memory.get_or_create(&KindLabel { kind: kind.as_str().into() }).set(bytes as i64);
        }
        self.memory_limit.set(memory.limit() as i64);
    }

    /// A mirror response (replay workers).
    pub fn response(&self, route: &str, mirror: &str, status: u16, latency: Duration) {
        let class = match status / 100 {
            c @ 1..=5 => c as usize,
            _ => 0,
        };
        let record = |h: &ResponseHandles, c: &Counter| {
            c.inc();
            h.latency.observe(latency.as_secs_f64());
        };
        {
            let cache = self.response_handles.read().expect("metrics lock");
            if let Some(h) = cache.get(route).and_then(|m| m.get(mirror))
                && let Some(c) = &h.classes[class]
            {
                return record(h, c);
            }
        }
        // First response of this (route, mirror, class): the handles are made once.
        let mut cache = self.response_handles.write().expect("metrics lock");
        let h =
            cache.entry(route.to_string()).or_default().entry(mirror.to_string()).or_insert_with(|| ResponseHandles {
                classes: Default::default(),
                latency: self.latency.get_or_create_owned(&RouteMirror { route: route.into(), mirror: mirror.into() }),
            });
        let c = h.classes[class]
            .get_or_insert_with(|| {
                let class = if class == 0 { "other".to_string() } else { format!("{class}xx") };
                self.responses.get_or_create_owned(&ResponseLabel { route: route.into(), mirror: mirror.into(), class })
            })
            .clone();
        record(h, &c);
    }

    /// A pair compared (`counted` by [`CompareCounters::count`](crate::compare::CompareCounters::count)).
    /// `incomplete`: which side was missing or unusable, and why.
    pub fn compared(
        &self,
        route: &str,
        mirror: &str,
        counted: &crate::compare::counters::Counted,
        incomplete: Option<(&str, &str)>,
    ) {
        self.compare.record(route, mirror, counted, incomplete);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix)).map(|l| l.rsplit(' ').next().expect("a value"))
    }

    #[test]
    fn responses_are_counted_per_route_mirror_and_class() {
        let m = Metrics::new();
        for (route, status) in [("a", 200), ("a", 204), ("a", 503), ("a", 0), ("b", 200), ("a", 200)] {
            m.response(route, "m/v1", status, Duration::from_millis(2));
        }
        let text = m.encode();
        let count = |labels: &str| line(&text, &format!("mirror_shadow_responses_total{{{labels}}}"));
        assert_eq!(count(r#"route="a",mirror="m/v1",class="2xx""#), Some("3"), "{text}");
        assert_eq!(count(r#"route="a",mirror="m/v1",class="5xx""#), Some("1"), "{text}");
        assert_eq!(count(r#"route="a",mirror="m/v1",class="other""#), Some("1"), "{text}");
        assert_eq!(count(r#"route="b",mirror="m/v1",class="2xx""#), Some("1"), "{text}");
        // Only the classes seen have a series.
        assert_eq!(count(r#"route="b",mirror="m/v1",class="5xx""#), None, "{text}");
        assert_eq!(count(r#"route="a",mirror="m/v1",class="4xx""#), None, "{text}");
        let latency = |route: &str| {
            line(&text, &format!("mirror_shadow_latency_seconds_count{{route=\"{route}\",mirror=\"m/v1\"}}"))
        };
        assert_eq!(latency("a"), Some("5"), "{text}");
        assert_eq!(latency("b"), Some("1"), "{text}");
    }

    /// `given_up_acked_bytes` reaches the JSON summary and Prometheus under one name, and the
    /// per-route series keyed by interned names keep their labels.
    #[test]
    fn given_up_acked_bytes_and_named_route_series_are_published() {
        use crate::{pipeline::RouteCounts, route::Name};
        let m = Metrics::new();
        let mut flows = FlowStats { given_up_acked_bytes: 1234, ..Default::default() };
        let json = serde_json::to_value(&flows).expect("serialized");
        assert_eq!(json["given_up_acked_bytes"], 1234);
        let mut p = PipelineStats::default();
        let counts = RouteCounts { mirrored: 7, sampled_out: 2 };
        p.by_route.entry(Name::new("api")).or_default().insert(Name::new("httpbin/v2"), counts);
        m.publish(&[], &flows, 0, &p);
        flows.given_up_acked_bytes = 2000;
        m.publish(&[], &flows, 0, &p);
        let text = m.encode();
        assert_eq!(line(&text, r#"mirror_flow_events_total{kind="given_up_acked_bytes"}"#), Some("2000"), "{text}");
        let labels = r#"{route="api",mirror="httpbin/v2"}"#;
        assert_eq!(line(&text, &format!("mirror_requests_mirrored_total{labels}")), Some("7"), "{text}");
        assert_eq!(line(&text, &format!("mirror_requests_sampled_out_total{labels}")), Some("2"), "{text}");
    }
}
