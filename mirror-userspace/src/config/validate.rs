//! The documents as read → the checked [`Config`], one section, route, match block and
//! destination at a time. Each error points at the node it is about. Every number is checked
//! against its range and every list against its size ([`limits`](super::limits)), so that what
//! loads also runs. Regexes are compiled here, once, in the anchored form routing runs.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    ops::{Bound, RangeInclusive},
    time::Duration,
};

use regex::{Regex, RegexBuilder};

use super::{
    Config, RouteTable,
    diagnostic::{ConfigError, ConfigErrorKind as K, Location},
    interfaces::{Direction, InterfaceEntry, InterfaceEntryDoc, is_glob},
    istio::{
        Destination, DestinationDoc, HttpRoute, HttpRouteDoc, MatchRequest, MatchRequestDoc, MirrorEntry,
        NamedMatchesDoc, Percent, PercentDoc, StringMatch, StringMatchDoc, endpoint_key,
    },
    limits::*,
    load::{Documents, TableDoc},
    ours::{
        Capture, CaptureDoc, DEFAULT_BATCH_MS, EndpointsDoc, HeaderOps, HeaderOpsDoc, HostRewrite, MemoryDoc,
        MemorySettings, MirrorPolicy, PoliciesDoc, ReplayDoc, ReplaySettings, Section,
    },
    span::{Int, Spanned},
};

/// Checks everything the documents say and builds the config.
pub(crate) fn config(docs: Documents) -> Result<Config, ConfigError> {
    let Documents { own, tables, subsets, warnings } = docs;
    let capture = capture(own.capture)?;
    let (replay, connections_at) = replay(own.replay)?;
    let memory = memory(own.memory, &replay)?;
    let endpoints = endpoints(own.endpoints, &replay, connections_at)?;
    if tables.iter().all(|t| t.routes.is_empty()) {
        return Err(ConfigError::new(K::NoRoutes));
    }
    let mut checks =
        Checks { refs: Refs { endpoints: &endpoints, subsets: &subsets }, warnings, routes: 0, regex_bytes: 0 };
    let tables = tables.into_iter().map(|t| checks.table(t)).collect::<Result<_, _>>()?;
    let warnings = checks.warnings;
    let policies = policies(own.mirror_policies, &endpoints)?;
    super::compare::check_routes(&policies, &tables, &endpoints)?;
    let mut capture = capture;
    capture.responses = policies.values().any(|p| p.compare.is_some());
    Ok(Config { capture, endpoints, replay, memory, policies, tables, warnings })
}

/// The memory budget; it must hold at least one buffered request.
fn memory(section: Option<Section<MemoryDoc>>, replay: &ReplaySettings) -> Result<MemorySettings, ConfigError> {
    let mut m = MemorySettings::default();
    let Some(Section { value: MemoryDoc { limit_bytes: Some(v) }, .. }) = section else {
        return Ok(m);
    };
    m.limit_bytes = in_range(&v, "memory.limitBytes", &MEMORY_LIMIT_BYTES, "memory")? as usize;
    if m.limit_bytes < replay.buffer_bytes {
        let kind = K::OutOfRange {
            field: "memory.limitBytes",
            value: m.limit_bytes as i128,
            min: replay.buffer_bytes as i128,
            max: *MEMORY_LIMIT_BYTES.end(),
        };
        return Err(ConfigError::new(kind).at(v.at).within("memory"));
    }
    Ok(m)
}

/// `v` if it is within `range`; `field` names the setting, `path` the place.
pub(super) fn in_range(
    v: &Spanned<Int>,
    field: &'static str,
    range: &RangeInclusive<i128>,
    path: &str,
) -> Result<i128, ConfigError> {
    let Int(value) = v.value;
    if range.contains(&value) {
        return Ok(value);
    }
    let kind = K::OutOfRange { field, value, min: *range.start(), max: *range.end() };
    Err(ConfigError::new(kind).at(v.at).within(path))
}

/// At most `max` items, or an error at the first one too many.
pub(super) fn at_most<'a, T: 'a>(
    mut items: impl Iterator<Item = &'a T>,
    max: usize,
    field: &'static str,
    at: impl Fn(&T) -> Option<Location>,
    path: &str,
) -> Result<(), ConfigError> {
    match items.nth(max) {
        Some(extra) => Err(ConfigError::new(K::TooMany { field, max }).at(at(extra)).within(path)),
        None => Ok(()),
    }
}

fn capture(section: Option<Section<CaptureDoc>>) -> Result<Capture, ConfigError> {
    let Section { at, value: c } = section.ok_or_else(|| ConfigError::new(K::NoCapture))?;
    if c.interfaces.is_empty() {
        return Err(ConfigError::new(K::NoInterfaces).at(at).within("capture.interfaces"));
    }
    at_most(c.interfaces.iter(), MAX_INTERFACES, "capture.interfaces", |i| i.at, "capture")?;
    let interfaces = c.interfaces.into_iter().map(interface_entry).collect::<Result<Vec<_>, _>>()?;
    if c.ports.is_empty() {
        return Err(ConfigError::new(K::NoPorts).at(at).within("capture.ports"));
    }
    at_most(c.ports.iter(), MAX_PORTS, "capture.ports", |p| p.at, "capture")?;
    let ports = c
        .ports
        .iter()
        .map(|p| in_range(p, "capture.ports", &PORT, "capture").map(|p| p as u16))
        .collect::<Result<_, _>>()?;
    at_most(c.addresses.iter(), MAX_CAPTURE_ADDRESSES, "capture.addresses", |a| a.at, "capture")?;
    let addresses = c.addresses.iter().map(prefix).collect::<Result<_, _>>()?;
    let perf_pages = match &c.perf_pages {
        Some(p) => {
            let pages = in_range(p, "capture.perfPages", &PERF_PAGES, "capture")? as usize;
            if !pages.is_power_of_two() {
                return Err(ConfigError::new(K::PerfPagesNotPowerOfTwo { pages }).at(p.at).within("capture.perfPages"));
            }
            Some(pages)
        }
        None => None,
    };
    let batch_ms = match &c.batch_ms {
        Some(b) => in_range(b, "capture.batchMs", &BATCH_MS, "capture")? as u64,
        None => DEFAULT_BATCH_MS,
    };
    Ok(Capture { interfaces, ports, addresses, perf_pages, batch: Duration::from_millis(batch_ms), responses: false })
}

/// A `capture.interfaces` entry: a name Linux can give a link (`dev_valid_name`, IFNAMSIZ), or a
/// glob whose text obeys the same rules (and that the glob crate parses).
fn interface_entry(entry: Spanned<InterfaceEntryDoc>) -> Result<InterfaceEntry, ConfigError> {
    let InterfaceEntryDoc { name, direction } = entry.value;
    let place = name.at.or(entry.at);
    let glob = is_glob(&name);
    let max = if glob { MAX_INTERFACE_GLOB_BYTES } else { MAX_INTERFACE_NAME_BYTES };
    let valid = !name.is_empty()
        && name.len() <= max
        && !matches!(name.as_str(), "." | "..")
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if !valid {
        let kind = K::BadInterface { name: name.value.clone() };
        return Err(ConfigError::new(kind).at(place).within("capture.interfaces"));
    }
    if glob && let Err(e) = glob::Pattern::new(&name) {
        let kind = K::BadGlob { pattern: name.value.clone(), reason: e.msg.to_string() };
        return Err(ConfigError::new(kind).at(place).within("capture.interfaces"));
    }
    let direction = direction.map_or(Direction::Ingress, Spanned::into_inner);
    Ok(InterfaceEntry { name: name.into_inner(), direction })
}

/// A `capture.addresses` entry: a prefix without host bits (`10.244.0.0/16`), or one address.
fn prefix(p: &Spanned<String>) -> Result<ipnet::IpNet, ConfigError> {
    let bad = |reason: String| {
        Err(ConfigError::new(K::BadPrefix { prefix: p.value.clone(), reason }).at(p.at).within("capture.addresses"))
    };
    let text = p.trim();
    if !text.contains('/') {
        return match text.parse::<std::net::IpAddr>() {
            Ok(addr) => Ok(ipnet::IpNet::from(addr)),
            Err(_) => bad("expected an address or a prefix like 10.244.0.0/16 or fd00::/64".into()),
        };
    }
    match text.parse::<ipnet::IpNet>() {
        Ok(net) if net.trunc() != net => bad(format!("host bits are set (did you mean {}?)", net.trunc())),
        Ok(net) => Ok(net),
        Err(_) => {
            bad("expected a prefix like 10.244.0.0/16 or fd00::/64 (/0 to /32 for IPv4, /0 to /128 for IPv6)".into())
        }
    }
}

/// The replay settings, and where `connections` was given.
fn replay(section: Option<Section<ReplayDoc>>) -> Result<(ReplaySettings, Option<Location>), ConfigError> {
    let mut r = ReplaySettings::default();
    let Some(Section { value: d, .. }) = section else {
        return Ok((r, None));
    };
    let get =
        |v: &Option<Spanned<Int>>, field, range| v.as_ref().map(|v| in_range(v, field, range, "replay")).transpose();
    if let Some(v) = get(&d.connections, "replay.connections", &REPLAY_CONNECTIONS)? {
        r.connections = v as usize;
    }
    if let Some(v) = get(&d.queue, "replay.queue", &REPLAY_QUEUE)? {
        r.queue = v as usize;
    }
    if let Some(v) = get(&d.connect_timeout_ms, "replay.connectTimeoutMs", &REPLAY_TIMEOUT_MS)? {
        r.connect_timeout_ms = v as u64;
    }
    if let Some(v) = get(&d.request_timeout_ms, "replay.requestTimeoutMs", &REPLAY_TIMEOUT_MS)? {
        r.request_timeout_ms = v as u64;
    }
    if let Some(v) = get(&d.buffer_bytes, "replay.bufferBytes", &REPLAY_BUFFER_BYTES)? {
        r.buffer_bytes = v as usize;
    }
    if let Some(v) = get(&d.max_queued_bytes, "replay.maxQueuedBytes", &REPLAY_MAX_QUEUED_BYTES)? {
        r.max_queued_bytes = v as usize;
    }
    r.pace = d.pace.unwrap_or_default();
    Ok((r, d.connections.and_then(|c| c.at)))
}

/// The endpoints, parsed; with `replay.connections` (given at `connections_at`) they make at most
/// [`MAX_MIRROR_CONNECTIONS`].
fn endpoints(
    section: Option<Section<EndpointsDoc>>,
    replay: &ReplaySettings,
    connections_at: Option<Location>,
) -> Result<BTreeMap<String, Vec<SocketAddr>>, ConfigError> {
    let section = section.map(|s| s.value).unwrap_or_default();
    at_most(section.keys(), MAX_ENDPOINTS, "endpoints", |k| k.at, "endpoints")?;
    let per_address = replay.connections as i128;
    let (mut total, mut first_over) = (0, None);
    let mut out = BTreeMap::new();
    for (name, addrs) in section {
        let path = format!("endpoints.{}", name.value);
        if addrs.is_empty() {
            return Err(ConfigError::new(K::NoAddresses).at(name.at).within(path));
        }
        at_most(addrs.iter(), MAX_ADDRESSES, "endpoints addresses", |a| a.at, &path)?;
        let mut parsed = Vec::with_capacity(addrs.len());
        for a in &addrs {
            let addr = a.parse::<SocketAddr>().map_err(|_| {
                ConfigError::new(K::BadAddress { address: a.value.clone() }).at(a.at).within(path.as_str())
            })?;
            parsed.push(addr);
            total += per_address;
            if total > MAX_MIRROR_CONNECTIONS && first_over.is_none() {
                first_over = Some((a.at, path.clone()));
            }
        }
        out.insert(name.value, parsed);
    }
    if let Some((at, path)) = first_over {
        let kind = K::OutOfRange {
            field: "mirror connections (endpoint addresses × replay.connections)",
            value: total,
            min: 1,
            max: MAX_MIRROR_CONNECTIONS,
        };
        let e = ConfigError::new(kind);
        return Err(match connections_at {
            Some(at) => e.at(Some(at)).within("replay"),
            None => e.at(at).within(path),
        });
    }
    Ok(out)
}

/// An HTTP token (RFC 9110 `token`): what a header name must be.
fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value as it may be written into a request: no control characters but tab.
fn is_field_value(value: &str) -> bool {
    value.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

pub(super) fn header_name(name: &Spanned<String>, path: &str) -> Result<(), ConfigError> {
    if is_token(name) {
        return Ok(());
    }
    let kind = K::BadHeader { name: name.value.clone(), reason: "a header name must be an HTTP token" };
    Err(ConfigError::new(kind).at(name.at).within(path))
}

fn header_value(name: &str, value: &str, at: Option<Location>, path: &str) -> Result<(), ConfigError> {
    if is_field_value(value) {
        return Ok(());
    }
    let kind = K::BadHeader { name: name.to_string(), reason: "a header value must not have control characters" };
    Err(ConfigError::new(kind).at(at).within(path))
}

fn policies(
    section: Option<Section<PoliciesDoc>>,
    endpoints: &BTreeMap<String, Vec<SocketAddr>>,
) -> Result<BTreeMap<String, MirrorPolicy>, ConfigError> {
    let mut out = BTreeMap::new();
    for (key, policy) in section.map(|s| s.value).unwrap_or_default() {
        let path = format!("mirrorPolicies.{}", key.value);
        if !endpoints.contains_key(key.as_str()) {
            return Err(ConfigError::new(K::UnknownPolicy).at(key.at).within(path));
        }
        let host = match policy.host {
            Some(Spanned { value: HostRewrite::Set(v), at }) => {
                header_value("host", &v, at, &format!("{path}.host"))?;
                HostRewrite::Set(v)
            }
            Some(h) => h.into_inner(),
            None => HostRewrite::default(),
        };
        let headers = header_ops(policy.headers, &format!("{path}.headers"))?;
        let compare = policy
            .compare
            .map(|c| super::compare::settings(c, &key.value, &format!("{path}.compare"), endpoints))
            .transpose()?;
        let sample_by = policy.sample_by.map(Spanned::into_inner);
        out.insert(key.value, MirrorPolicy { host, headers, sample_by, compare });
    }
    Ok(out)
}

fn header_ops(h: HeaderOpsDoc, path: &str) -> Result<HeaderOps, ConfigError> {
    at_most(h.set.keys(), MAX_HEADER_OPS, "headers.set", |k| k.at, path)?;
    at_most(h.add.keys(), MAX_HEADER_OPS, "headers.add", |k| k.at, path)?;
    at_most(h.remove.iter(), MAX_HEADER_OPS, "headers.remove", |k| k.at, path)?;
    for (name, value) in h.set.iter().chain(h.add.iter()) {
        header_name(name, path)?;
        header_value(name, value, value.at, path)?;
    }
    for name in &h.remove {
        header_name(name, path)?;
    }
    let plain = |m: BTreeMap<Spanned<String>, Spanned<String>>| {
        m.into_iter().map(|(k, v)| (k.into_inner(), v.into_inner())).collect()
    };
    Ok(HeaderOps {
        set: plain(h.set),
        add: plain(h.add),
        remove: h.remove.into_iter().map(Spanned::into_inner).collect(),
    })
}

/// What destinations are checked against.
struct Refs<'a> {
    endpoints: &'a BTreeMap<String, Vec<SocketAddr>>,
    subsets: &'a BTreeMap<String, Vec<String>>,
}

/// The checks of routes, and what they add up over all of them.
struct Checks<'a> {
    refs: Refs<'a>,
    warnings: Vec<String>,
    /// Routes checked so far, over every table.
    routes: usize,
    /// What the regexes compiled so far count for in [`REGEX_TOTAL_LIMIT`].
    regex_bytes: usize,
}

impl Checks<'_> {
    fn table(&mut self, t: TableDoc) -> Result<RouteTable, ConfigError> {
        let routes = t
            .routes
            .into_iter()
            .enumerate()
            .map(|(j, r)| {
                let place = if t.hosts.is_none() { format!("routes[{j}]") } else { format!("{} http[{j}]", t.source) };
                let label = match &r.name {
                    Some(n) => format!("{place} ({n})"),
                    None => place,
                };
                self.route(r, &label)
            })
            .collect::<Result<_, _>>()?;
        Ok(RouteTable { hosts: t.hosts, namespace: t.namespace, routes })
    }

    fn route(&mut self, r: Spanned<HttpRouteDoc>, label: &str) -> Result<HttpRoute, ConfigError> {
        let at = r.at;
        let r = r.into_inner();
        self.routes += 1;
        if self.routes > MAX_ROUTES {
            return Err(ConfigError::new(K::TooMany { field: "routes", max: MAX_ROUTES }).at(at).within(label));
        }
        if r.mirror.is_some() && r.mirrors.is_some() {
            return Err(ConfigError::new(K::MirrorAndMirrors).at(at).within(label));
        }
        if r.mirrors.is_some() {
            let given = r.mirror_percentage.as_ref().map(|p| p.value.at).or(r.mirror_percent.as_ref().map(|p| p.at));
            if let Some(place) = given {
                return Err(ConfigError::new(K::PercentageWithMirrors).at(place.or(at)).within(label));
            }
        }
        let mirror_percentage =
            r.mirror_percentage.map(|p| percent(p, &format!("{label}.mirrorPercentage"))).transpose()?;
        let mirror_percent = match r.mirror_percent {
            Some(p) if !(0..=100).contains(&p.value.0) => {
                let value = p.value.0 as f64;
                return Err(ConfigError::new(K::PercentOutOfRange { value })
                    .at(p.at)
                    .within(format!("{label}.mirrorPercent")));
            }
            Some(p) => {
                let value = p.value.0 as u32;
                self.warnings.push(format!(
                    "{label}: mirrorPercent is deprecated in Istio; use mirrorPercentage: {{value: {value}}}"
                ));
                Some(value)
            }
            None => None,
        };
        at_most(r.matches.iter(), MAX_MATCH_BLOCKS, "match", |m| m.at, label)?;
        let matches = r
            .matches
            .into_iter()
            .enumerate()
            .map(|(k, m)| self.match_block(m, &format!("{label}.match[{k}]")))
            .collect::<Result<_, _>>()?;
        let mirror = r.mirror.map(|d| self.destination(d, &format!("{label}.mirror"))).transpose()?;
        if let Some(entries) = &r.mirrors {
            at_most(entries.iter(), MAX_MIRRORS, "mirrors", |m| m.destination.host.at, label)?;
        }
        let mirrors = r
            .mirrors
            .map(|entries| {
                entries
                    .into_iter()
                    .enumerate()
                    .map(|(k, m)| {
                        let place = format!("{label}.mirrors[{k}]");
                        Ok(MirrorEntry {
                            percentage: m.percentage.map(|p| percent(p, &format!("{place}.percentage"))).transpose()?,
                            destination: self.destination(m.destination, &format!("{place}.destination"))?,
                        })
                    })
                    .collect::<Result<Vec<_>, ConfigError>>()
            })
            .transpose()?;
        Ok(HttpRoute { name: r.name, matches, mirror, mirrors, mirror_percentage, mirror_percent })
    }

    /// A mirror destination: its subset must be one its DestinationRule defines (when there is
    /// one), and `endpoints` must say how to reach it.
    fn destination(&self, d: DestinationDoc, path: &str) -> Result<Destination, ConfigError> {
        let refs = &self.refs;
        if let Some(subset) = &d.subset
            && let Some(known) = subsets_of(refs.subsets, &d.host)
            && !known.contains(&subset.value)
        {
            let kind =
                K::UnknownSubset { host: d.host.value.clone(), subset: subset.value.clone(), known: known.clone() };
            return Err(ConfigError::new(kind).at(subset.at).within(path));
        }
        let host_at = d.host.at;
        let d = Destination { host: d.host.into_inner(), subset: d.subset.map(Spanned::into_inner) };
        if resolve(refs.endpoints, &d).is_none() {
            let kind = K::NoEndpoint { key: d.endpoint_key(), known: refs.endpoints.keys().cloned().collect() };
            return Err(ConfigError::new(kind).at(host_at).within(path));
        }
        Ok(d)
    }

    fn match_block(&mut self, m: Spanned<MatchRequestDoc>, path: &str) -> Result<MatchRequest, ConfigError> {
        let block_at = m.at;
        let m = m.into_inner();
        let mut single = |sm: Option<Spanned<StringMatchDoc>>, field: &str| {
            sm.map(|sm| self.string_match(sm, block_at, &format!("{path}.{field}"), false)).transpose()
        };
        let uri = single(m.uri, "uri")?;
        let scheme = single(m.scheme, "scheme")?;
        let method = single(m.method, "method")?;
        let authority = single(m.authority, "authority")?;
        let port = m.port.map(|p| in_range(&p, "match.port", &PORT, path).map(|p| p as u32)).transpose()?;
        let headers = self.header_matches(m.headers, "match.headers", &format!("{path}.headers"))?;
        let without_headers =
            self.header_matches(m.without_headers, "match.withoutHeaders", &format!("{path}.withoutHeaders"))?;
        let query_params = self.named_matches(m.query_params, "match.queryParams", &format!("{path}.queryParams"))?;
        if m.source_labels.is_some() || m.gateways.is_some() || m.source_namespace.is_some() {
            self.warnings.push(format!("{path}: sourceLabels, gateways and sourceNamespace are not evaluated"));
        }
        Ok(MatchRequest {
            uri,
            scheme,
            method,
            authority,
            headers,
            port,
            query_params,
            ignore_uri_case: m.ignore_uri_case,
            without_headers,
        })
    }

    /// Header matches: names must be lower case, as in Istio.
    fn header_matches(
        &mut self,
        named: NamedMatchesDoc,
        field: &'static str,
        path: &str,
    ) -> Result<BTreeMap<String, StringMatch>, ConfigError> {
        if let Some(upper) = named.keys().find(|h| h.chars().any(|c| c.is_ascii_uppercase())) {
            let kind = K::UpperCaseHeader { name: upper.value.clone() };
            return Err(ConfigError::new(kind).at(upper.at).within(format!("{path}.{}", upper.value)));
        }
        self.named_matches(named, field, path)
    }

    fn named_matches(
        &mut self,
        named: NamedMatchesDoc,
        field: &'static str,
        path: &str,
    ) -> Result<BTreeMap<String, StringMatch>, ConfigError> {
        at_most(named.keys(), MAX_CONDITIONS, field, |k| k.at, path)?;
        named
            .into_iter()
            .map(|(name, sm)| {
                let m = self.string_match(sm, name.at, &format!("{path}.{}", name.value), true)?;
                Ok((name.value, m))
            })
            .collect()
    }

    /// One of exact/prefix/regex (or none, where `presence_ok`); a regex compiled as it runs.
    /// `parent` places an empty match, which has no place of its own.
    fn string_match(
        &mut self,
        sm: Spanned<StringMatchDoc>,
        parent: Option<Location>,
        path: &str,
        presence_ok: bool,
    ) -> Result<StringMatch, ConfigError> {
        let at = sm.at.or(parent);
        let StringMatchDoc { exact, prefix, regex } = sm.into_inner();
        Ok(match (exact, prefix, regex) {
            (None, None, None) if presence_ok => StringMatch::Present,
            (None, None, None) => return Err(ConfigError::new(K::EmptyMatch).at(at).within(path)),
            (Some(e), None, None) => StringMatch::Exact(e),
            (None, Some(p), None) => StringMatch::Prefix(p),
            (None, None, Some(r)) => StringMatch::Regex(self.regex(&r, &format!("{path}.regex"))?),
            _ => return Err(ConfigError::new(K::AmbiguousMatch).at(at).within(path)),
        })
    }

    /// `r` compiled as it runs (see [`anchored`]), within [`REGEX_SIZE_LIMIT`], and counted in
    /// [`REGEX_TOTAL_LIMIT`] as the smallest tier (4 KiB × 4ⁿ) it compiles within; its lazy DFA
    /// may use 4 × that tier, up to [`REGEX_DFA_SIZE_LIMIT`].
    fn regex(&mut self, r: &Spanned<String>, path: &str) -> Result<Regex, ConfigError> {
        let mut tier = REGEX_TIER_MIN;
        let (re, size) = loop {
            match anchored(&r.value, tier, (4 * tier).min(REGEX_DFA_SIZE_LIMIT)) {
                Ok(re) => break (re, tier),
                Err(regex::Error::CompiledTooBig(_)) if tier < REGEX_SIZE_LIMIT => {
                    tier = (tier * 4).min(REGEX_SIZE_LIMIT);
                }
                Err(error) => {
                    let kind = K::InvalidRegex { pattern: r.value.clone(), error };
                    return Err(ConfigError::new(kind).at(r.at).within(path));
                }
            }
        };
        self.regex_bytes += size;
        if self.regex_bytes > REGEX_TOTAL_LIMIT {
            return Err(ConfigError::new(K::RegexesTooLarge { max: REGEX_TOTAL_LIMIT }).at(r.at).within(path));
        }
        Ok(re)
    }
}

fn percent(p: PercentDoc, path: &str) -> Result<Percent, ConfigError> {
    let v = p.value.value;
    if !PERCENT.contains(&v) {
        return Err(ConfigError::new(K::PercentOutOfRange { value: v }).at(p.value.at).within(format!("{path}.value")));
    }
    Ok(Percent { value: v })
}

/// The endpoints key a destination resolves to: `host/subset` or `host`, trying the short name
/// (`reviews` for `reviews.default.svc.cluster.local`) when the full one is not there.
pub(crate) fn resolve(endpoints: &BTreeMap<String, Vec<SocketAddr>>, d: &Destination) -> Option<String> {
    let short = d.host.split('.').next().unwrap_or(&d.host);
    [d.host.as_str(), short]
        .into_iter()
        .map(|h| endpoint_key(h, d.subset.as_deref()))
        .find(|k| endpoints.contains_key(k))
}

/// The subsets a DestinationRule defines for `host` (or for the same short name: the first such
/// host in order, which is the short name itself or the first `short.…`), in log time.
fn subsets_of<'a>(subsets: &'a BTreeMap<String, Vec<String>>, host: &str) -> Option<&'a Vec<String>> {
    let short = host.split('.').next().unwrap_or(host);
    let dotted = format!("{short}.");
    subsets.get(host).or_else(|| subsets.get(short)).or_else(|| {
        subsets
            .range::<str, _>((Bound::Included(dotted.as_str()), Bound::Unbounded))
            .next()
            .filter(|(h, _)| h.starts_with(&dotted))
            .map(|(_, v)| v)
    })
}

/// `pattern` compiled as it runs, within `size_limit` (and `dfa_size_limit` for its lazy DFA):
/// Envoy's (RE2) regex matches cover the whole value, hence `^(?:pattern)$`. The pattern must also be a regex by itself, or a `)` in it could
/// close the group early (`a)|(b` would become `^(?:a)|(b)$`); checking that only parses it (with
/// no room to compile, the builder stops after the parse).
pub(crate) fn anchored(pattern: &str, size_limit: usize, dfa_size_limit: usize) -> Result<Regex, regex::Error> {
    if let Err(e @ regex::Error::Syntax(_)) = RegexBuilder::new(pattern).size_limit(0).build() {
        return Err(e);
    }
    RegexBuilder::new(&format!("^(?:{pattern})$")).size_limit(size_limit).dfa_size_limit(dfa_size_limit).build()
}
