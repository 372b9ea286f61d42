//! Routing, sans-IO: a request head in, the mirrors it goes to out, each with its rewritten head.
//!
//! Istio's semantics: the route tables (VirtualServices scoped by `spec.hosts`, then our own
//! `routes`) are consulted in order; the first table whose hosts match the request's Host decides,
//! and in it the first route whose match blocks accept the request wins (conditions in a block
//! AND, blocks OR). Each of that route's mirrors is then sampled on its own by its percentage, in
//! parts per million truncated, as Istio converts it for Envoy.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

pub use name::Name;

pub mod name;

use anyhow::{Context as _, Result};
use bytes::{Bytes, BytesMut};
use rand::Rng;
use regex::Regex;

use crate::{
    config::{self, Config, HeaderOps, HostRewrite, SampleKey},
    http::RequestHead,
};

/// A compiled string matcher.
#[derive(Debug, Clone)]
enum Matcher {
    Present,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl Matcher {
    fn compile(sm: &config::StringMatch) -> Result<Matcher> {
        Ok(match sm {
            config::StringMatch::Present => Matcher::Present,
            config::StringMatch::Exact(e) => Matcher::Exact(e.clone()),
            config::StringMatch::Prefix(p) => Matcher::Prefix(p.clone()),
            // Compiled by the config, anchored: Envoy's (RE2) regex matches cover the whole value.
            config::StringMatch::Regex(r) => Matcher::Regex(r.clone()),
        })
    }

    fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            Matcher::Present => true,
            Matcher::Exact(e) if ignore_case => value.eq_ignore_ascii_case(e),
            Matcher::Exact(e) => value == e,
            Matcher::Prefix(p) if ignore_case => {
                value.len() >= p.len() && value.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            }
            Matcher::Prefix(p) => value.starts_with(p.as_str()),
            Matcher::Regex(r) => r.is_match(value),
        }
    }
}

type Named = Vec<(String, Matcher)>;

fn compile_named(m: &BTreeMap<String, config::StringMatch>) -> Result<Named> {
    m.iter().map(|(k, v)| Ok((k.clone(), Matcher::compile(v)?))).collect()
}

#[derive(Debug, Clone)]
struct MatchBlock {
    uri: Option<Matcher>,
    scheme: Option<Matcher>,
    method: Option<Matcher>,
    authority: Option<Matcher>,
    headers: Named,
    without_headers: Named,
    query_params: Named,
    port: Option<u16>,
    ignore_uri_case: bool,
}

impl MatchBlock {
    fn compile(m: &config::MatchRequest) -> Result<MatchBlock> {
        let opt = |s: &Option<config::StringMatch>| s.as_ref().map(Matcher::compile).transpose();
        Ok(MatchBlock {
            uri: opt(&m.uri)?,
            scheme: opt(&m.scheme)?,
            method: opt(&m.method)?,
            authority: opt(&m.authority)?,
            headers: compile_named(&m.headers)?,
            without_headers: compile_named(&m.without_headers)?,
            query_params: compile_named(&m.query_params)?,
            // A port that cannot be a TCP port never matches.
            port: m.port.map(|p| u16::try_from(p).unwrap_or(0)),
            ignore_uri_case: m.ignore_uri_case,
        })
    }

    fn matches(&self, req: &RequestView<'_>) -> bool {
        let str_ok = |m: &Option<Matcher>, v: &str, ic: bool| m.as_ref().is_none_or(|m| m.matches(v, ic));
        let header_hit = |name: &str, m: &Matcher| {
            req.head.header_all(name).any(|v| std::str::from_utf8(v).is_ok_and(|v| m.matches(v, false)))
        };
        str_ok(&self.uri, req.path, self.ignore_uri_case)
            // We only ever see plaintext HTTP.
            && str_ok(&self.scheme, "http", false)
            && str_ok(&self.method, req.head.method, false)
            && str_ok(&self.authority, req.authority, false)
            && self.port.is_none_or(|p| p == req.port)
            && self.headers.iter().all(|(n, m)| header_hit(n, m))
            && !self.without_headers.iter().any(|(n, m)| header_hit(n, m))
            && self.query_params.iter().all(|(n, m)| req.query(n).is_some_and(|v| m.matches(v, false)))
    }
}

/// What matching looks at in one request.
struct RequestView<'a> {
    head: &'a RequestHead,
    /// The path without the query string (Envoy matches `uri` on that).
    path: &'a str,
    query: &'a str,
    /// Host header as sent (with its port, if any).
    authority: &'a str,
    /// Destination port of the connection.
    port: u16,
}

impl RequestView<'_> {
    fn query(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }
}

/// The extensions of one mirror destination, compiled.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// What the mirror's copy gets as Host: `-shadow` appended (Envoy), kept, or a literal.
    pub host: HostRewrite,
    /// Header names lower-cased.
    pub headers: HeaderOps,
    /// Consistent sampling by a header or cookie value (the same value always decides the same).
    pub sample_by: Option<SampleKey>,
}

/// One mirror a request is sent to.
#[derive(Debug, Clone)]
pub struct MirrorTarget {
    /// The endpoints key (`host/subset`).
    pub endpoint: Name,
    /// The name of the route that matched.
    pub route: Name,
    /// The destination's policy (host rewrite, header operations, sampling key).
    pub policy: Arc<Policy>,
}

/// The mirrors a request goes to.
pub type Mirrors = smallvec::SmallVec<[MirrorTarget; 2]>;

impl PartialEq for MirrorTarget {
    fn eq(&self, other: &Self) -> bool {
        self.endpoint == other.endpoint && self.route == other.route
    }
}

#[derive(Debug, Clone)]
struct CompiledMirror {
    endpoint: Name,
    /// Parts per million sampled.
    ppm: u32,
    policy: Arc<Policy>,
    /// A compared destination's baseline on the same route takes that destination's sampling
    /// decision (the index of its mirror), so both are mirrored exactly the same requests.
    follows: Option<usize>,
}

#[derive(Debug, Clone)]
struct CompiledRoute {
    name: Name,
    blocks: Vec<MatchBlock>,
    mirrors: Vec<CompiledMirror>,
}

#[derive(Debug, Clone)]
struct Table {
    hosts: Option<Vec<String>>,
    namespace: String,
    routes: Vec<CompiledRoute>,
}

/// The outcome of routing one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// No route matched (or the request's Host is in no table).
    NoRoute,
    /// A route matched: the mirrors sampled in, and the endpoints of those sampled out.
    Route {
        /// The route's name.
        route: Name,
        /// The mirrors this request goes to (inline up to two: no allocation per request).
        targets: Mirrors,
        /// The endpoints whose sampling left this request out.
        sampled_out: Vec<Name>,
    },
}

/// The routing stage: the config's route tables (VirtualServices in order, then our `routes`),
/// scoped by Host, first match wins, each mirror sampled on its own. Immutable: a reload builds a
/// new one.
#[derive(Debug, Clone)]
pub struct Router {
    tables: Vec<Table>,
    /// Endpoint key → addresses.
    pub endpoints: BTreeMap<Name, Vec<SocketAddr>>,
    /// Endpoint key → how its responses are compared with the primary's (`mirrorPolicies.<dest>.
    /// compare`), for the destinations that have it.
    pub compared: BTreeMap<Name, Arc<config::CompareSettings>>,
    /// Compared endpoint key → its baseline's endpoint key, for those that have one (interned
    /// here once, not per compared request).
    pub baselines: BTreeMap<Name, Name>,
}

/// Istio's conversion of a percentage to Envoy's parts per million, truncating.
pub fn percent_to_ppm(value: f64) -> u32 {
    (value * 10_000.0) as u32
}

impl Router {
    /// Compiles the routes, policies and endpoints of a checked config.
    pub fn new(cfg: &Config) -> Result<Router> {
        let endpoints: BTreeMap<Name, Vec<SocketAddr>> =
            cfg.endpoints.iter().map(|(k, v)| (Name::new(k), v.clone())).collect();
        let policies: BTreeMap<&str, Arc<Policy>> = cfg
            .policies
            .iter()
            .map(|(k, p)| {
                let lower =
                    |m: &BTreeMap<String, String>| m.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
                let headers = HeaderOps {
                    set: lower(&p.headers.set),
                    add: lower(&p.headers.add),
                    remove: p.headers.remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
                };
                (k.as_str(), Arc::new(Policy { host: p.host.clone(), headers, sample_by: p.sample_by.clone() }))
            })
            .collect();
        let default_policy = Arc::new(Policy::default());
        let mut tables = Vec::new();
        let mut n = 0;
        for t in &cfg.tables {
            let mut routes = Vec::new();
            for r in &t.routes {
                let mut dests: Vec<(&config::Destination, f64)> = Vec::new();
                if let Some(d) = &r.mirror {
                    // mirrorPercentage wins over the deprecated mirrorPercent; neither means 100.
                    let pct = r.mirror_percentage.map(|p| p.value).or(r.mirror_percent.map(f64::from)).unwrap_or(100.0);
                    dests.push((d, pct));
                }
                for m in r.mirrors.iter().flatten() {
                    dests.push((&m.destination, m.percentage.map_or(100.0, |p| p.value)));
                }
                let mirrors = dests
                    .into_iter()
                    .map(|(d, pct)| {
                        let key = cfg.resolve(d).with_context(|| format!("no endpoint for {}", d.endpoint_key()))?;
                        let endpoint = *endpoints.get_key_value(key.as_str()).expect("resolved").0;
                        let policy = policies.get(key.as_str()).cloned().unwrap_or_else(|| default_policy.clone());
                        Ok(CompiledMirror { endpoint, ppm: percent_to_ppm(pct), policy, follows: None })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let mirrors = follow_destinations(mirrors, cfg);
                routes.push(CompiledRoute {
                    name: Name::new(&r.name.clone().unwrap_or_else(|| format!("route-{n}"))),
                    blocks: r.matches.iter().map(MatchBlock::compile).collect::<Result<_>>()?,
                    mirrors,
                });
                n += 1;
            }
            tables.push(Table { hosts: t.hosts.clone(), namespace: t.namespace.clone(), routes });
        }
        let compared: BTreeMap<Name, Arc<config::CompareSettings>> =
            cfg.policies.iter().filter_map(|(k, p)| Some((Name::new(k), Arc::new(p.compare.clone()?)))).collect();
        let baselines = compared.iter().filter_map(|(k, c)| Some((*k, Name::new(c.baseline.as_deref()?)))).collect();
        Ok(Router { tables, endpoints, compared, baselines })
    }

    /// Routes one request that arrived on destination port `port`.
    pub fn decide(&self, head: &RequestHead, port: u16, rng: &mut impl Rng) -> Decision {
        let authority = head.header("host").and_then(|h| std::str::from_utf8(h).ok()).unwrap_or("");
        let target = head.target();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let view = RequestView { head, path, query, authority, port };
        // Lower-cased once, and only if a table names hosts.
        let mut host: Option<String> = None;
        let Some(table) = self.tables.iter().find(|t| {
            t.hosts.as_ref().is_none_or(|hs| {
                let host = host.get_or_insert_with(|| strip_port(authority).to_ascii_lowercase());
                hs.iter().any(|h| host_matches(h, host, &t.namespace))
            })
        }) else {
            return Decision::NoRoute;
        };
        let Some(route) =
            table.routes.iter().find(|r| r.blocks.is_empty() || r.blocks.iter().any(|b| b.matches(&view)))
        else {
            return Decision::NoRoute;
        };
        let mut targets = Mirrors::new();
        let mut sampled_out = Vec::new();
        // With a baseline on the route, the others decide first and the baseline takes its
        // destination's decision (a destination followed never follows itself).
        let leaders: Vec<bool> = if route.mirrors.iter().any(|m| m.follows.is_some()) {
            route.mirrors.iter().map(|m| m.follows.is_none() && sampled(m, head, rng)).collect()
        } else {
            Vec::new()
        };
        for (i, m) in route.mirrors.iter().enumerate() {
            let taken = match m.follows {
                Some(j) => leaders[j],
                None if leaders.is_empty() => sampled(m, head, rng),
                None => leaders[i],
            };
            if taken {
                targets.push(MirrorTarget { endpoint: m.endpoint, route: route.name, policy: m.policy.clone() });
            } else {
                sampled_out.push(m.endpoint);
            }
        }
        Decision::Route { route: route.name, targets, sampled_out }
    }
}

/// Marks each compared destination's baseline listed on the same route as following that
/// destination's sampling decision.
fn follow_destinations(mut mirrors: Vec<CompiledMirror>, cfg: &Config) -> Vec<CompiledMirror> {
    for i in 0..mirrors.len() {
        let Some(baseline) = cfg
            .policies
            .get(&*mirrors[i].endpoint)
            .and_then(|p| p.compare.as_ref())
            .and_then(|c| c.baseline.as_deref())
        else {
            continue;
        };
        if let Some(j) = mirrors.iter().position(|m| &*m.endpoint == baseline)
            && mirrors[j].follows.is_none()
            && mirrors[i].follows.is_none()
        {
            mirrors[j].follows = Some(i);
        }
    }
    mirrors
}

/// Random per request, or, with a sampling key present, a stable function of its value.
fn sampled(m: &CompiledMirror, head: &RequestHead, rng: &mut impl Rng) -> bool {
    if m.ppm >= 1_000_000 {
        return true;
    }
    if m.ppm == 0 {
        return false;
    }
    let key = match &m.policy.sample_by {
        Some(SampleKey::Header(h)) => head.header(h).map(<[u8]>::to_vec),
        Some(SampleKey::Cookie(c)) => cookie(head, c).map(<[u8]>::to_vec),
        None => None,
    };
    let bucket = match key {
        Some(v) => (fnv1a(&[m.endpoint.as_bytes(), b"\0", &v]) % 1_000_000) as u32,
        None => rng.random_range(0..1_000_000),
    };
    bucket < m.ppm
}

/// FNV-1a, 64-bit: stable across runs and releases (unlike std's hasher).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The value of cookie `name` in the request's Cookie headers.
fn cookie<'a>(head: &'a RequestHead, name: &str) -> Option<&'a [u8]> {
    head.header_all("cookie").flat_map(|v| v.split(|b| *b == b';')).find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
    })
}

fn strip_port(authority: &str) -> &str {
    match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') && authority[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            &authority[..i]
        }
        _ => authority,
    }
}

/// Istio's host matching for `spec.hosts`: `*`, `*.suffix`, exact names, and Kubernetes short
/// names relative to the VirtualService's namespace (`reviews` = `reviews.ns` =
/// `reviews.ns.svc` = `reviews.ns.svc.cluster.local`).
pub fn host_matches(pattern: &str, host: &str, namespace: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    if pattern == "*" {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return host.ends_with(suffix);
    }
    pattern == host || cluster_name(&pattern, namespace) == cluster_name(host, namespace)
}

fn cluster_name(host: &str, namespace: &str) -> String {
    match host.matches('.').count() {
        0 => format!("{host}.{namespace}.svc.cluster.local"),
        1 => format!("{host}.svc.cluster.local"),
        2 if host.ends_with(".svc") => format!("{host}.cluster.local"),
        _ => host.to_string(),
    }
}

/// Envoy's `-shadow` rule: `foo` → `foo-shadow`, `foo:8080` → `foo-shadow:8080`,
/// `[::1]:80` → `[::1]-shadow:80`.
pub fn shadow_host(host: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(host.len() + 7);
    push_shadow_host(&mut out, host);
    out
}

/// [`shadow_host`], written at the end of `out` (no allocation of its own: once per request).
fn push_shadow_host(out: &mut impl bytes::BufMut, host: &[u8]) {
    let port_start = host.iter().rposition(|b| *b == b':').filter(|&colon| {
        let v6_end = host.iter().rposition(|b| *b == b']');
        let port = &host[colon + 1..];
        v6_end.is_none_or(|e| e < colon) && !port.is_empty() && port.iter().all(u8::is_ascii_digit)
    });
    let (name, port) = host.split_at(port_start.unwrap_or(host.len()));
    out.put_slice(name);
    out.put_slice(b"-shadow");
    out.put_slice(port);
}

/// The Host value a mirror gets for `value`, written at the end of `out`.
fn push_host(out: &mut impl bytes::BufMut, rewrite: &HostRewrite, value: &[u8]) {
    match rewrite {
        HostRewrite::Shadow => push_shadow_host(out, value),
        HostRewrite::Keep => out.put_slice(value),
        HostRewrite::Set(v) => out.put_slice(v.as_bytes()),
    }
}

/// How long what [`push_host`] writes for `value` is.
fn host_len(rewrite: &HostRewrite, value: &[u8]) -> usize {
    match rewrite {
        HostRewrite::Shadow => value.len() + b"-shadow".len(),
        HostRewrite::Keep => value.len(),
        HostRewrite::Set(v) => v.len(),
    }
}

/// The head a mirror gets: Host per the policy, headers removed/set/added; every other byte as
/// captured. With the default policy only the Host value changes.
pub fn rewrite_head(head: &RequestHead, policy: &Policy) -> Bytes {
    let ops = &policy.headers;
    if ops.is_empty() && policy.host == HostRewrite::Keep {
        return head.raw.clone();
    }
    let raw = &head.raw;
    if ops.is_empty() {
        // Only the first Host value changes (the default policy): the bytes before and after it
        // are copied whole, not line by line.
        let Some(h) = head.field("host") else {
            return raw.clone();
        };
        // Exactly as long as the result: a vector whose length is its capacity becomes `Bytes`
        // without an allocation of its own (the shared header a longer one needs).
        let value = head.value(h);
        let mut out = Vec::with_capacity(raw.len() - value.len() + host_len(&policy.host, value));
        out.extend_from_slice(&raw[..h.value_range.start]);
        push_host(&mut out, &policy.host, value);
        out.extend_from_slice(&raw[h.value_range.end..]);
        debug_assert_eq!(out.len(), out.capacity());
        return Bytes::from(out);
    }
    let eol: &[u8] = if raw.ends_with(b"\r\n\r\n") { b"\r\n" } else { b"\n" };
    let mut out = BytesMut::with_capacity(raw.len() + 64);
    // The request line, then each header line kept, changed or dropped.
    let first_line_end = raw.iter().position(|b| *b == b'\n').map_or(raw.len(), |i| i + 1);
    out.extend_from_slice(&raw[..first_line_end]);
    let mut host_done = false;
    for h in &head.headers {
        // Header operations name headers in lower case; a head without them (the default) costs
        // no lower-cased copy per header.
        if !ops.is_empty() {
            let lname = std::str::from_utf8(head.name(h)).unwrap_or_default().to_ascii_lowercase();
            if ops.remove.contains(&lname) || ops.set.contains_key(&lname) {
                continue;
            }
        }
        let line = h.line.clone();
        if !host_done && head.name(h).eq_ignore_ascii_case(b"host") {
            host_done = true;
            out.extend_from_slice(&raw[line.start..h.value_range.start]);
            push_host(&mut out, &policy.host, head.value(h));
            out.extend_from_slice(&raw[h.value_range.end..line.end]);
        } else {
            out.extend_from_slice(&raw[line]);
        }
    }
    for (name, value) in ops.set.iter().chain(ops.add.iter()) {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(eol);
    out.freeze()
}

#[cfg(test)]
mod tests;
