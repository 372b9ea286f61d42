//! The configuration: a YAML stream of documents.
//!
//! - Our own document (no `kind`): `capture`, `endpoints`, optional `replay`, `routes` and
//!   `mirrorPolicies`.
//! - Istio `VirtualService` documents, unchanged: `spec.hosts` scopes their `http` routes by Host,
//!   short names included, as Istio does.
//! - Istio `DestinationRule` documents: their subset names are what `subset:` may refer to.
//!
//! Routes follow Istio's `HTTPRoute` semantics. Fields Istio has but that mean nothing here
//! (`route`, `retries`, `fault`, …) are accepted and ignored, so an existing VirtualService loads
//! as it is; fields Istio does not have are errors, with a suggestion.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, de::DeserializeOwned};
use serde_yaml::Value;

/// Everything the documents say, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub capture: Capture,
    /// `host` or `host/subset` → addresses of that mirror destination.
    pub endpoints: BTreeMap<String, Vec<SocketAddr>>,
    pub replay: ReplaySettings,
    /// Per mirror destination (`host` or `host/subset`): our extensions.
    pub policies: BTreeMap<String, MirrorPolicy>,
    /// Route lists in the order they are consulted: each VirtualService (scoped by its hosts),
    /// then our own `routes` (any host).
    pub tables: Vec<RouteTable>,
    /// Host → subset names, from DestinationRules.
    pub subsets: BTreeMap<String, Vec<String>>,
    /// Things worth saying that do not stop the config from loading (deprecated fields…).
    pub warnings: Vec<String>,
}

/// One list of routes and the hosts it applies to.
#[derive(Debug, Clone)]
pub struct RouteTable {
    /// Where it came from, for messages: `routes` or `VirtualService ns/name`.
    pub source: String,
    /// `None`: every Host. Otherwise Istio `spec.hosts`.
    pub hosts: Option<Vec<String>>,
    /// The VirtualService's namespace (short host names are relative to it).
    pub namespace: String,
    pub routes: Vec<HttpRoute>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Capture {
    /// Interfaces whose TC ingress hook gets the classifier.
    pub interfaces: Vec<String>,
    /// Destination ports of the primary service.
    pub ports: Vec<u16>,
    /// Pages per CPU of the perf ring (a power of two). Absent: 1024 (4 MiB on 4 KiB pages), fewer
    /// on machines with many CPUs so that all rings together stay within 64 MiB.
    #[serde(default, alias = "perf_pages")]
    pub perf_pages: Option<usize>,
}

impl Capture {
    /// The ring size per CPU to use on a machine with `cpus` CPUs.
    pub fn perf_pages_for(&self, cpus: usize) -> usize {
        self.perf_pages.unwrap_or_else(|| {
            let budget_pages = (64 << 20) / 4096 / cpus.max(1);
            // The largest power of two within the budget, between 64 and 1024 pages.
            let p = if budget_pages.is_power_of_two() { budget_pages } else { budget_pages.next_power_of_two() / 2 };
            p.clamp(64, 1024)
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReplaySettings {
    /// Kept-alive connections per mirror endpoint address.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Requests (or parts of streamed ones) waiting per connection before new ones are dropped.
    #[serde(default = "default_queue")]
    pub queue: usize,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Requests up to this size (head + body) are held until every byte was seen and only then
    /// sent. Larger ones are streamed to the mirror as they arrive (constant memory); if one of
    /// their bytes is lost, the mirror connection is reset so it never gets a complete request.
    #[serde(default = "default_buffer_bytes")]
    pub buffer_bytes: usize,
    /// Bytes of requests waiting for all mirrors together; beyond it new ones are dropped.
    #[serde(default = "default_max_queued_bytes")]
    pub max_queued_bytes: usize,
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
        }
    }
}

fn default_connections() -> usize {
    4
}
fn default_queue() -> usize {
    1024
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
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Our extensions for one mirror destination.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MirrorPolicy {
    /// What the mirror gets as Host: `shadow` (Envoy's `-shadow` rule, the default), `keep` (as
    /// sent, Istio 1.28's default), or `{set: "literal"}`.
    #[serde(default)]
    pub host: HostRewrite,
    /// Header changes for the mirrored copy, applied in the order remove, set, add.
    #[serde(default)]
    pub headers: HeaderOps,
    /// Consistent sampling: requests with the same value of this header or cookie are all
    /// mirrored or none (requests without it are sampled at random).
    #[serde(default)]
    pub sample_by: Option<SampleKey>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "HostRewriteRaw")]
pub enum HostRewrite {
    #[default]
    Shadow,
    Keep,
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SampleKeyRaw")]
pub enum SampleKey {
    Header(String),
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

/// Istio `HTTPRoute`. Only `match` and the mirror fields matter here.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRoute {
    #[serde(default)]
    pub name: Option<String>,
    /// Match blocks: conditions in one block AND, blocks OR; none means every request.
    #[serde(default, rename = "match")]
    pub matches: Vec<MatchRequest>,
    #[serde(default)]
    pub mirror: Option<Destination>,
    #[serde(default)]
    pub mirrors: Option<Vec<MirrorEntry>>,
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    /// Deprecated in Istio (an integer percentage).
    #[serde(default, alias = "mirror_percent")]
    pub mirror_percent: Option<u32>,
    // Istio fields about the primary's traffic: accepted so a VirtualService loads unchanged.
    #[serde(default)]
    pub route: Option<Value>,
    #[serde(default)]
    pub redirect: Option<Value>,
    #[serde(default)]
    pub direct_response: Option<Value>,
    #[serde(default)]
    pub delegate: Option<Value>,
    #[serde(default)]
    pub rewrite: Option<Value>,
    #[serde(default)]
    pub timeout: Option<Value>,
    #[serde(default)]
    pub retries: Option<Value>,
    #[serde(default)]
    pub fault: Option<Value>,
    #[serde(default)]
    pub cors_policy: Option<Value>,
    #[serde(default)]
    pub headers: Option<Value>,
}

/// Istio `HTTPMirrorPolicy` (an entry of `mirrors`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorEntry {
    pub destination: Destination,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSelector>,
}

impl Destination {
    /// The `endpoints` key this destination is looked up by.
    pub fn endpoint_key(&self) -> String {
        match &self.subset {
            Some(s) => format!("{}/{}", self.host, s),
            None => self.host.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    pub number: u32,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    pub value: f64,
}

/// Istio `HTTPMatchRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<StringMatch>,
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    #[serde(default)]
    pub method: Option<StringMatch>,
    #[serde(default)]
    pub authority: Option<StringMatch>,
    /// Header name (lower case) → match; `{}` means "present".
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub ignore_uri_case: bool,
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    // Istio fields about where traffic comes from: accepted, not evaluated (a warning says so).
    #[serde(default)]
    pub source_labels: Option<Value>,
    #[serde(default)]
    pub gateways: Option<Value>,
    #[serde(default)]
    pub source_namespace: Option<Value>,
    #[serde(default)]
    pub stat_prefix: Option<Value>,
}

/// Istio `StringMatch`: exactly one of exact/prefix/regex, or none (presence only, for headers
/// and query parameters).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

/// Our own document.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OwnDoc {
    #[serde(default)]
    capture: Option<Capture>,
    #[serde(default)]
    endpoints: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    replay: Option<ReplaySettings>,
    #[serde(default)]
    routes: Option<Vec<HttpRoute>>,
    #[serde(default)]
    mirror_policies: Option<BTreeMap<String, MirrorPolicy>>,
}

impl OwnDoc {
    /// Takes the fields of a further document of ours; `Err(field)` if one is given twice.
    fn merge(&mut self, other: OwnDoc) -> Result<(), &'static str> {
        fn take<T>(into: &mut Option<T>, from: Option<T>, name: &'static str) -> Result<(), &'static str> {
            match (into.is_some(), from) {
                (true, Some(_)) => Err(name),
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
        take(&mut self.routes, other.routes, "routes")?;
        take(&mut self.mirror_policies, other.mirror_policies, "mirrorPolicies")
    }
}

/// A Kubernetes object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Object<S> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    metadata: Metadata,
    spec: S,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VirtualServiceSpec {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    http: Vec<HttpRoute>,
    #[serde(default)]
    gateways: Option<Value>,
    #[serde(default)]
    tls: Option<Value>,
    #[serde(default)]
    tcp: Option<Value>,
    #[serde(default)]
    export_to: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DestinationRuleSpec {
    host: String,
    #[serde(default)]
    subsets: Vec<Subset>,
    #[serde(default)]
    traffic_policy: Option<Value>,
    #[serde(default)]
    export_to: Option<Value>,
    #[serde(default)]
    workload_selector: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Subset {
    name: String,
    #[serde(default)]
    labels: Option<Value>,
    #[serde(default)]
    traffic_policy: Option<Value>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses a YAML stream; `origin` (a file name) starts every error message.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let mut own = OwnDoc::default();
        let mut tables = Vec::new();
        let mut subsets: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut warnings = Vec::new();
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            // Read the document once as a plain value to learn its kind, then again, typed, from the
            // same text, so that errors keep their line and column.
            let value = Value::deserialize(doc).map_err(|e| yaml_error(origin, &e))?;
            if value.is_null() {
                continue;
            }
            let kind = value.get("kind").and_then(Value::as_str).map(str::to_string);
            let typed = serde_yaml::Deserializer::from_str(text).nth(i).expect("same document");
            match kind.as_deref() {
                None => {
                    let doc: OwnDoc = typed_doc(typed, origin)?;
                    own.merge(doc).map_err(|field| {
                        anyhow!("{origin}: document {}: `{field}` was already given in an earlier document", i + 1)
                    })?;
                }
                Some("VirtualService") => {
                    let vs: Object<VirtualServiceSpec> = typed_doc(typed, origin)?;
                    let namespace = vs.metadata.namespace.unwrap_or_else(|| "default".into());
                    let name = vs.metadata.name.unwrap_or_else(|| format!("document-{}", i + 1));
                    if vs.spec.gateways.is_some() {
                        warnings.push(format!("VirtualService {namespace}/{name}: `gateways` is not evaluated"));
                    }
                    let _ = (&vs.spec.tls, &vs.spec.tcp, &vs.spec.export_to);
                    if vs.spec.hosts.is_empty() {
                        bail!("{origin}: VirtualService {namespace}/{name}: spec.hosts is empty");
                    }
                    tables.push(RouteTable {
                        source: format!("VirtualService {namespace}/{name}"),
                        hosts: Some(vs.spec.hosts),
                        namespace,
                        routes: vs.spec.http,
                    });
                }
                Some("DestinationRule") => {
                    let dr: Object<DestinationRuleSpec> = typed_doc(typed, origin)?;
                    let _ = (&dr.spec.traffic_policy, &dr.spec.export_to, &dr.spec.workload_selector);
                    let names = dr
                        .spec
                        .subsets
                        .iter()
                        .map(|s| {
                            let _ = (&s.labels, &s.traffic_policy);
                            s.name.clone()
                        })
                        .collect::<Vec<_>>();
                    subsets.entry(dr.spec.host).or_default().extend(names);
                }
                Some(other) => warnings.push(format!("document {}: kind {other} is not used, ignored", i + 1)),
            }
        }
        if let Some(routes) = own.routes.take() {
            tables.push(RouteTable { source: "routes".into(), hosts: None, namespace: "default".into(), routes });
        }
        let capture = own.capture.ok_or_else(|| anyhow!("{origin}: no `capture` section (interfaces and ports)"))?;
        let mut endpoints = BTreeMap::new();
        for (name, addrs) in own.endpoints.unwrap_or_default() {
            let parsed = addrs
                .iter()
                .map(|a| {
                    a.parse::<SocketAddr>().map_err(|_| {
                        at(
                            origin,
                            text,
                            a,
                            format!("endpoints.{name}: '{a}' is not an address:port (like 10.0.0.3:8000)"),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            if parsed.is_empty() {
                return Err(at(origin, text, &name, format!("endpoints.{name}: no addresses")));
            }
            endpoints.insert(name, parsed);
        }
        let cfg = Config {
            capture,
            endpoints,
            replay: own.replay.unwrap_or_default(),
            policies: own.mirror_policies.unwrap_or_default(),
            tables,
            subsets,
            warnings,
        };
        let mut cfg = cfg;
        cfg.validate(origin, text)?;
        Ok(cfg)
    }

    /// Every mirror destination of every route, with where it is.
    pub fn destinations(&self) -> Vec<(String, &Destination)> {
        let mut out = Vec::new();
        for t in &self.tables {
            for (j, r) in t.routes.iter().enumerate() {
                let label = route_label(t, j, r);
                if let Some(d) = &r.mirror {
                    out.push((format!("{label}.mirror"), d));
                }
                for (k, m) in r.mirrors.iter().flatten().enumerate() {
                    out.push((format!("{label}.mirrors[{k}].destination"), &m.destination));
                }
            }
        }
        out
    }

    /// The endpoints key a destination resolves to: `host/subset` or `host`, trying the short
    /// name (`reviews` for `reviews.default.svc.cluster.local`) when the full one is not there.
    pub fn resolve(&self, d: &Destination) -> Option<String> {
        let short = d.host.split('.').next().unwrap_or(&d.host);
        [d.host.as_str(), short]
            .iter()
            .map(|h| match &d.subset {
                Some(s) => format!("{h}/{s}"),
                None => h.to_string(),
            })
            .find(|k| self.endpoints.contains_key(k))
    }

    /// Checks what serde cannot: references, ranges, exclusive fields.
    fn validate(&mut self, origin: &str, text: &str) -> Result<()> {
        let c = &self.capture;
        if c.interfaces.is_empty() {
            bail!("{origin}: capture.interfaces: at least one interface is needed");
        }
        if c.ports.is_empty() || c.ports.contains(&0) {
            bail!("{origin}: capture.ports: at least one port (1-65535) is needed");
        }
        if let Some(p) = c.perf_pages
            && !p.is_power_of_two()
        {
            bail!("{origin}: capture.perfPages: {p} is not a power of two");
        }
        if self.tables.iter().all(|t| t.routes.is_empty()) {
            bail!("{origin}: no routes: give `routes`, or a VirtualService with `http` routes");
        }
        let rs = &self.replay;
        if rs.connections == 0 || rs.queue == 0 {
            bail!("{origin}: replay: connections and queue must be at least 1");
        }
        for t in &self.tables {
            for (j, r) in t.routes.iter().enumerate() {
                let label = route_label(t, j, r);
                if r.mirror.is_some() && r.mirrors.is_some() {
                    return Err(at(
                        origin,
                        text,
                        "mirrors",
                        format!("{label}: `mirror` and `mirrors` cannot both be set (as in Istio)"),
                    ));
                }
                if r.mirrors.is_some() && (r.mirror_percentage.is_some() || r.mirror_percent.is_some()) {
                    return Err(at(
                        origin,
                        text,
                        "mirrors",
                        format!("{label}: with `mirrors`, give each entry its own `percentage`"),
                    ));
                }
                let percents = r.mirror_percentage.iter().map(|p| ("mirrorPercentage", p.value)).chain(
                    r.mirrors.iter().flatten().filter_map(|m| m.percentage).map(|p| ("mirrors[].percentage", p.value)),
                );
                for (field, v) in percents {
                    if !(0.0..=100.0).contains(&v) || v.is_nan() {
                        return Err(at(
                            origin,
                            text,
                            &v.to_string(),
                            format!("{label}.{field}.value: {v} is not within [0, 100]"),
                        ));
                    }
                }
                if let Some(p) = r.mirror_percent {
                    if p > 100 {
                        bail!("{origin}: {label}.mirrorPercent: {p} is not within [0, 100]");
                    }
                    self.warnings.push(format!(
                        "{label}: mirrorPercent is deprecated in Istio; use mirrorPercentage: {{value: {p}}}"
                    ));
                }
                for (k, m) in r.matches.iter().enumerate() {
                    let at_ = format!("{label}.match[{k}]");
                    for (field, sm) in
                        [("uri", &m.uri), ("scheme", &m.scheme), ("method", &m.method), ("authority", &m.authority)]
                    {
                        if let Some(sm) = sm {
                            sm.check(origin, text, &format!("{at_}.{field}"), false)?;
                        }
                    }
                    for (h, sm) in m.headers.iter().chain(m.without_headers.iter()) {
                        if h.chars().any(|c| c.is_ascii_uppercase()) {
                            return Err(at(
                                origin,
                                text,
                                h,
                                format!("{at_}.headers.{h}: header names must be lower case (as in Istio)"),
                            ));
                        }
                        sm.check(origin, text, &format!("{at_}.headers.{h}"), true)?;
                    }
                    for (q, sm) in &m.query_params {
                        sm.check(origin, text, &format!("{at_}.queryParams.{q}"), true)?;
                    }
                    if m.source_labels.is_some() || m.gateways.is_some() || m.source_namespace.is_some() {
                        self.warnings
                            .push(format!("{at_}: sourceLabels, gateways and sourceNamespace are not evaluated"));
                    }
                }
            }
        }
        for (label, d) in self.destinations() {
            if let (Some(subset), Some(known)) = (&d.subset, self.subsets_of(&d.host))
                && !known.contains(subset)
            {
                return Err(at(
                    origin,
                    text,
                    subset,
                    format!(
                        "{label}: subset '{subset}' of '{}' is not defined by its DestinationRule (it has: {})",
                        d.host,
                        known.join(", ")
                    ),
                ));
            }
            if self.resolve(d).is_none() {
                let known: Vec<_> = self.endpoints.keys().cloned().collect();
                return Err(at(
                    origin,
                    text,
                    &d.host,
                    format!(
                        "{label}: no endpoint for '{}': add it under `endpoints` (there: {})",
                        d.endpoint_key(),
                        if known.is_empty() { "none".into() } else { known.join(", ") }
                    ),
                ));
            }
        }
        for key in self.policies.keys() {
            if !self.endpoints.contains_key(key) {
                return Err(at(
                    origin,
                    text,
                    key,
                    format!("mirrorPolicies.{key}: not a destination listed under `endpoints`"),
                ));
            }
        }
        Ok(())
    }

    fn subsets_of(&self, host: &str) -> Option<&Vec<String>> {
        let short = host.split('.').next().unwrap_or(host);
        self.subsets
            .get(host)
            .or_else(|| self.subsets.iter().find(|(h, _)| h.split('.').next() == Some(short)).map(|(_, v)| v))
    }

    /// How many routes in all.
    pub fn route_count(&self) -> usize {
        self.tables.iter().map(|t| t.routes.len()).sum()
    }
}

fn route_label(t: &RouteTable, j: usize, r: &HttpRoute) -> String {
    let place = if t.source == "routes" { format!("routes[{j}]") } else { format!("{} http[{j}]", t.source) };
    match &r.name {
        Some(n) => format!("{place} ({n})"),
        None => place,
    }
}

impl StringMatch {
    fn check(&self, origin: &str, text: &str, at_: &str, presence_ok: bool) -> Result<()> {
        let set = [&self.exact, &self.prefix, &self.regex].iter().filter(|o| o.is_some()).count();
        if set > 1 {
            bail!("{origin}: {at_}: give only one of exact, prefix, regex");
        }
        if set == 0 && !presence_ok {
            bail!("{origin}: {at_}: give one of exact, prefix, regex");
        }
        if let Some(re) = &self.regex
            && let Err(e) = regex::Regex::new(re)
        {
            return Err(at(origin, text, re, format!("{at_}.regex: invalid regular expression (RE2 syntax): {e}")));
        }
        Ok(())
    }
}

/// Deserialises one document, turning serde's error into `file:line:column: message`.
fn typed_doc<T: DeserializeOwned>(doc: serde_yaml::Deserializer<'_>, origin: &str) -> Result<T> {
    T::deserialize(doc).map_err(|e| yaml_error(origin, &e))
}

fn yaml_error(origin: &str, e: &serde_yaml::Error) -> anyhow::Error {
    let msg = e.to_string();
    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
    let hint = suggestion(&msg).map(|s| format!("; did you mean `{s}`?")).unwrap_or_default();
    match e.location() {
        Some(l) => anyhow!("{origin}:{}:{}: {msg}{hint}", l.line(), l.column()),
        None => anyhow!("{origin}: {msg}{hint}"),
    }
}

/// For "unknown field `x`, expected one of `a`, `b`": the expected name closest to `x`.
fn suggestion(msg: &str) -> Option<String> {
    let unknown = msg.split("unknown field `").nth(1)?.split('`').next()?;
    let expected = msg.split("expected ").nth(1)?;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|c| (strsim::jaro_winkler(unknown, c), c))
        .filter(|(score, _)| *score > 0.75)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_string())
}

/// An error located at the first occurrence of `needle` in the text (semantic errors, which serde
/// cannot place).
fn at(origin: &str, text: &str, needle: &str, msg: String) -> anyhow::Error {
    let found = text.lines().enumerate().find_map(|(i, line)| line.find(needle).map(|c| (i + 1, c + 1)));
    match found {
        Some((line, col)) if !needle.is_empty() => anyhow!("{origin}:{line}:{col}: {msg}"),
        _ => anyhow!("{origin}: {msg}"),
    }
}

#[cfg(test)]
mod tests;
