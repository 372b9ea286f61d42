//! Our own document (the one without `kind`): what to capture, where mirrors are reached, how to
//! replay, our routes and our per-destination extensions. The sections as read, and the types of
//! the checked config that are ours rather than Istio's.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

use super::{
    diagnostic::Location,
    interfaces::{InterfaceEntry, InterfaceEntryDoc},
    istio::HttpRouteDoc,
    span::{Int, Spanned},
};

/// What the classifier watches.
#[derive(Debug, Clone)]
pub struct Capture {
    /// Where the classifier is attached: link names or globs, each with the direction its
    /// requests travel in (globs match links as they come and go).
    pub interfaces: Vec<InterfaceEntry>,
    /// Destination ports of the primary service.
    pub ports: Vec<u16>,
    /// Destination prefixes of the primary (IPv4 and IPv6), checked in the kernel; empty: every
    /// address.
    pub addresses: Vec<ipnet::IpNet>,
    /// Pages per CPU of the perf ring (a power of two). Absent: all rings together 64 MiB, at most
    /// 8192 pages (32 MiB on 4 KiB pages) and at least 64 per CPU.
    pub perf_pages: Option<usize>,
    /// The longest a captured request waits before the daemon reads it and hands it to replay
    /// (`capture.batchMs`): the capture thread wakes about once per this time, whatever the rate,
    /// so it is also what the daemon's CPU per request at low rates is traded against (README,
    /// `batchMs` under "Configuration").
    pub batch: Duration,
    /// The primary's responses are shipped with their payload (some mirror destination compares
    /// them: `mirrorPolicies.<dest>.compare`); derived, not written.
    pub responses: bool,
}

impl Capture {
    /// The ring size per CPU to use on a machine with `cpus` CPUs.
    pub fn perf_pages_for(&self, cpus: usize) -> usize {
        self.perf_pages.unwrap_or_else(|| {
            let budget_pages = (64 << 20) / 4096 / cpus.max(1);
            // The largest power of two within the budget, between 64 pages and 8192 (32 MiB: a
            // 512 MB/s burst of uploads on a 2-CPU machine overflowed 4 MiB rings).
            let p = if budget_pages.is_power_of_two() { budget_pages } else { budget_pages.next_power_of_two() / 2 };
            p.clamp(64, 8192)
        })
    }
}

/// `capture` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct CaptureDoc {
    pub(crate) interfaces: Vec<Spanned<InterfaceEntryDoc>>,
    pub(crate) ports: Vec<Spanned<Int>>,
    #[serde(default)]
    pub(crate) addresses: Vec<Spanned<String>>,
    #[serde(default, alias = "perf_pages")]
    pub(crate) perf_pages: Option<Spanned<Int>>,
    #[serde(default, alias = "batch_ms")]
    pub(crate) batch_ms: Option<Spanned<Int>>,
}

/// `capture.batchMs` when absent.
pub const DEFAULT_BATCH_MS: u64 = 50;

/// How requests are sent to the mirrors. Each value is within its range in
/// [`limits`](super::limits).
#[derive(Debug, Clone)]
pub struct ReplaySettings {
    /// Kept-alive connections per mirror endpoint address.
    pub connections: usize,
    /// Requests (or parts of streamed ones) waiting per connection before new ones are dropped.
    pub queue: usize,
    /// How long connecting to a mirror may take, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How long a mirror may take to answer a request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Requests up to this size (head + body) are held until every byte was seen and only then
    /// sent. Larger ones are streamed to the mirror as they arrive (constant memory); if one of
    /// their bytes is lost, the mirror connection is reset so it never gets a complete request.
    pub buffer_bytes: usize,
    /// Bytes of requests waiting for all mirrors together; beyond it new ones are dropped.
    pub max_queued_bytes: usize,
    /// Which batches are spread over the time until the next one is due (`replay.pace`).
    pub pace: Pace,
}

/// `replay.pace`: which batches of requests are handed to the mirror connections spread out in
/// time rather than at once (a burst for a mirror that shares cores with the primary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Pace {
    /// Batches that come less than 25 ms apart (above ~4,000 small requests a second), whose
    /// spreading costs nothing measurable.
    #[default]
    Auto,
    /// Every batch of more than a few requests, slower rates included: a mirror on the primary's
    /// cores then costs the primary least (p99), for more of the daemon's CPU at low rates (a
    /// wake-up per connection and batch) and up to 50 ms more delay of a copy.
    Always,
    /// No batch: each is handed on at once (the least CPU).
    Off,
}

/// `replay` as written: each value is checked against its range.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ReplayDoc {
    #[serde(default)]
    pub(crate) connections: Option<Spanned<Int>>,
    #[serde(default)]
    pub(crate) queue: Option<Spanned<Int>>,
    #[serde(default)]
    pub(crate) connect_timeout_ms: Option<Spanned<Int>>,
    #[serde(default)]
    pub(crate) request_timeout_ms: Option<Spanned<Int>>,
    #[serde(default)]
    pub(crate) buffer_bytes: Option<Spanned<Int>>,
    #[serde(default)]
    pub(crate) max_queued_bytes: Option<Spanned<Int>>,
    #[serde(default)]
    pub(crate) pace: Option<Pace>,
}

impl Default for ReplaySettings {
    fn default() -> Self {
        Self {
            connections: default_connections(),
            queue: default_queue(),
            connect_timeout_ms: default_connect_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            buffer_bytes: default_buffer_bytes(),
            max_queued_bytes: default_max_queued_bytes(),
            pace: Pace::default(),
        }
    }
}

/// 4 kept-alive connections per mirror address. 2 were measured against it (small GETs, mirror
/// nginx with one worker on the same 2 cores, builds alternated) and changed nothing beyond the
/// host's noise, so the default keeps the wider spread for mirrors with more workers: CPU per
/// 120,000 requests at 24,000 req/s, median of 18 runs each, 0.585 against 0.605 (an earlier
/// series of 12: 0.60 against 0.63); at 32,000 req/s (18 each) 0.805 against 0.79; the
/// primary's p99 ratio, 3 series of 5 pairs, 1.05-1.10 against 1.04-1.10 at 2,000 req/s and
/// 1.47-1.73 against 1.56-1.70 at 8,000; every fidelity step (64 KiB uploads at 512 MB/s
/// included) 1.0000 with both, and closed-loop saturation 105,879 and 100,314 against 105,590
/// and 98,857 req/s, all mirrored.
fn default_connections() -> usize {
    4
}
fn default_queue() -> usize {
    // Items, not bytes: `maxQueuedBytes` and the memory budget bound what they hold. 4,096 (half a
    // second at 32,000 req/s over 4 connections) overflowed once when the machine starved the
    // daemon in a burst; a slot costs nothing until used.
    16_384
}
fn default_connect_timeout_ms() -> u64 {
    1000
}
fn default_request_timeout_ms() -> u64 {
    5000
}
fn default_buffer_bytes() -> usize {
    1024 * 1024
}
fn default_max_queued_bytes() -> usize {
    64 * 1024 * 1024
}

impl ReplaySettings {
    /// [`connect_timeout_ms`](Self::connect_timeout_ms) as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    /// [`request_timeout_ms`](Self::request_timeout_ms) as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// One budget over everything the daemon holds for requests in progress: out-of-order and
/// not yet acknowledged bytes, partial heads, buffered bodies and the replay queues. At the
/// budget the largest work is shed, counted by reason (see [`crate::memory`]).
#[derive(Debug, Clone)]
pub struct MemorySettings {
    /// The budget in bytes. The default, 128 MiB, leaves room within the DaemonSet's 256 MiB
    /// limit for the flow table, the perf rings and the program itself.
    pub limit_bytes: usize,
}

impl Default for MemorySettings {
    fn default() -> Self {
        Self { limit_bytes: 128 << 20 }
    }
}

/// `memory` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct MemoryDoc {
    #[serde(default)]
    pub(crate) limit_bytes: Option<Spanned<Int>>,
}

/// Our extensions for one mirror destination.
#[derive(Debug, Clone, Default)]
pub(crate) struct MirrorPolicy {
    /// What the mirror gets as Host: `shadow` (Envoy's `-shadow` rule, the default), `keep` (as
    /// sent, Istio 1.28's default), or `{set: "literal"}`.
    pub(crate) host: HostRewrite,
    /// Header changes for the mirrored copy, applied in the order remove, set, add.
    pub(crate) headers: HeaderOps,
    /// Consistent sampling: requests with the same value of this header or cookie are all
    /// mirrored or none (requests without it are sampled at random).
    pub(crate) sample_by: Option<SampleKey>,
    /// Compare this mirror's responses with the primary's (issue 15).
    pub(crate) compare: Option<super::compare::CompareSettings>,
}

/// A `mirrorPolicies` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct MirrorPolicyDoc {
    #[serde(default)]
    pub(crate) host: Option<Spanned<HostRewrite>>,
    #[serde(default)]
    pub(crate) headers: HeaderOpsDoc,
    #[serde(default)]
    pub(crate) sample_by: Option<Spanned<SampleKey>>,
    #[serde(default)]
    pub(crate) compare: Option<super::compare::CompareDoc>,
}

/// A policy's `headers` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderOpsDoc {
    #[serde(default)]
    pub(crate) set: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pub(crate) add: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pub(crate) remove: Vec<Spanned<String>>,
}

/// What a mirrored request gets as its Host header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "HostRewriteRaw")]
pub enum HostRewrite {
    /// Envoy's rule: `-shadow` appended to the host name (`httpbin:8000` → `httpbin-shadow:8000`).
    #[default]
    Shadow,
    /// As the client sent it.
    Keep,
    /// This literal value.
    Set(String),
}

/// `shadow`, `keep`, or `{set: value}` as written in YAML.
#[derive(Deserialize)]
#[serde(untagged)]
enum HostRewriteRaw {
    Mode(String),
    Set { set: String },
}

impl TryFrom<HostRewriteRaw> for HostRewrite {
    type Error = String;
    fn try_from(raw: HostRewriteRaw) -> Result<Self, String> {
        match raw {
            HostRewriteRaw::Mode(m) if m == "shadow" => Ok(HostRewrite::Shadow),
            HostRewriteRaw::Mode(m) if m == "keep" => Ok(HostRewrite::Keep),
            HostRewriteRaw::Mode(m) => Err(format!("host: `{m}` is not one of shadow, keep, {{set: value}}")),
            HostRewriteRaw::Set { set } => Ok(HostRewrite::Set(set)),
        }
    }
}

/// Header changes for the mirrored copy of a request. Names are HTTP tokens and values have no
/// control characters but tab.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    /// Headers replaced (every line of that name removed, this one added).
    pub set: BTreeMap<String, String>,
    /// Headers added (existing lines of that name kept).
    pub add: BTreeMap<String, String>,
    /// Headers removed.
    pub remove: Vec<String>,
}

impl HeaderOps {
    /// Whether the mirrored copy keeps every header as it was.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// What consistent sampling hashes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SampleKeyRaw")]
pub enum SampleKey {
    /// The value of this header (name lower-cased).
    Header(String),
    /// The value of this cookie.
    Cookie(String),
}

/// `{header: name}` or `{cookie: name}` as written in YAML.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleKeyRaw {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    cookie: Option<String>,
}

impl TryFrom<SampleKeyRaw> for SampleKey {
    type Error = &'static str;
    fn try_from(raw: SampleKeyRaw) -> Result<Self, &'static str> {
        match (raw.header, raw.cookie) {
            (Some(h), None) => Ok(SampleKey::Header(h.to_ascii_lowercase())),
            (None, Some(c)) => Ok(SampleKey::Cookie(c)),
            _ => Err("sampleBy: give exactly one of header, cookie"),
        }
    }
}

/// A top-level section and where its key was written.
#[derive(Debug)]
pub(crate) struct Section<T> {
    /// The place of the section's key (`capture:`).
    pub(crate) at: Option<Location>,
    /// The section.
    pub(crate) value: T,
}

/// `endpoints` as written: `host[/subset]` → addresses.
pub(crate) type EndpointsDoc = BTreeMap<Spanned<String>, Vec<Spanned<String>>>;

/// `mirrorPolicies` as written.
pub(crate) type PoliciesDoc = BTreeMap<Spanned<String>, MirrorPolicyDoc>;

/// Our document's sections, each absent or given once over all the documents of the stream.
#[derive(Debug, Default)]
pub(crate) struct OwnDoc {
    pub(crate) capture: Option<Section<CaptureDoc>>,
    pub(crate) endpoints: Option<Section<EndpointsDoc>>,
    pub(crate) replay: Option<Section<ReplayDoc>>,
    pub(crate) memory: Option<Section<MemoryDoc>>,
    pub(crate) routes: Option<Section<Vec<Spanned<HttpRouteDoc>>>>,
    pub(crate) mirror_policies: Option<Section<PoliciesDoc>>,
}

/// The names of our document's sections, as written.
pub(crate) const OWN_FIELDS: &[&str] = &["capture", "endpoints", "replay", "memory", "routes", "mirrorPolicies"];

impl OwnDoc {
    /// Takes the sections of a further document of ours; `Err((name, place))` for a section given
    /// again.
    pub(crate) fn merge(&mut self, other: OwnDoc) -> Result<(), (&'static str, Option<Location>)> {
        fn take<T>(
            into: &mut Option<Section<T>>,
            from: Option<Section<T>>,
            name: &'static str,
        ) -> Result<(), (&'static str, Option<Location>)> {
            match (into.is_some(), from) {
                (true, Some(again)) => Err((name, again.at)),
                (_, Some(v)) => {
                    *into = Some(v);
                    Ok(())
                }
                (_, None) => Ok(()),
            }
        }
        take(&mut self.capture, other.capture, "capture")?;
        take(&mut self.endpoints, other.endpoints, "endpoints")?;
        take(&mut self.replay, other.replay, "replay")?;
        take(&mut self.memory, other.memory, "memory")?;
        take(&mut self.routes, other.routes, "routes")?;
        take(&mut self.mirror_policies, other.mirror_policies, "mirrorPolicies")
    }
}
