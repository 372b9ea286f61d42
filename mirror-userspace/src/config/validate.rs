//! The documents as read → the checked [`Config`], one section, route, match block and
//! destination at a time. Each error points at the node it is about. Regexes are compiled here,
//! once, in the anchored form routing runs.

use std::{collections::BTreeMap, net::SocketAddr};

use regex::{Regex, RegexBuilder};

use super::{
    Config, RouteTable,
    diagnostic::{ConfigError, ConfigErrorKind as K, Location},
    istio::{
        Destination, DestinationDoc, HttpRoute, HttpRouteDoc, MatchRequest, MatchRequestDoc, MirrorEntry,
        NamedMatchesDoc, Percent, PercentDoc, StringMatch, StringMatchDoc, endpoint_key,
    },
    load::{Documents, TableDoc},
    ours::{Capture, CaptureDoc, EndpointsDoc, MirrorPolicy, PoliciesDoc, ReplaySettings, Section},
    span::Spanned,
};

/// Checks everything the documents say and builds the config.
pub(crate) fn config(docs: Documents) -> Result<Config, ConfigError> {
    let Documents { own, tables, subsets, mut warnings } = docs;
    let capture = capture(own.capture)?;
    let endpoints = endpoints(own.endpoints)?;
    if tables.iter().all(|t| t.routes.is_empty()) {
        return Err(ConfigError::new(K::NoRoutes));
    }
    let replay = replay(own.replay)?;
    let refs = Refs { endpoints: &endpoints, subsets: &subsets };
    let tables = tables.into_iter().map(|t| table(t, &refs, &mut warnings)).collect::<Result<_, _>>()?;
    let policies = policies(own.mirror_policies, &endpoints)?;
    Ok(Config { capture, endpoints, replay, policies, tables, warnings })
}

fn capture(section: Option<Section<CaptureDoc>>) -> Result<Capture, ConfigError> {
    let Section { at, value: c } = section.ok_or_else(|| ConfigError::new(K::NoCapture))?;
    if c.interfaces.is_empty() {
        return Err(ConfigError::new(K::NoInterfaces).at(at).within("capture.interfaces"));
    }
    if c.ports.is_empty() {
        return Err(ConfigError::new(K::NoPorts).at(at).within("capture.ports"));
    }
    if let Some(zero) = c.ports.iter().find(|p| p.value == 0) {
        return Err(ConfigError::new(K::NoPorts).at(zero.at).within("capture.ports"));
    }
    if let Some(p) = &c.perf_pages
        && !p.is_power_of_two()
    {
        return Err(ConfigError::new(K::PerfPagesNotPowerOfTwo { pages: p.value })
            .at(p.at)
            .within("capture.perfPages"));
    }
    Ok(Capture {
        interfaces: c.interfaces,
        ports: c.ports.into_iter().map(Spanned::into_inner).collect(),
        perf_pages: c.perf_pages.map(Spanned::into_inner),
    })
}

fn endpoints(section: Option<Section<EndpointsDoc>>) -> Result<BTreeMap<String, Vec<SocketAddr>>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, addrs) in section.map(|s| s.value).unwrap_or_default() {
        let path = format!("endpoints.{}", name.value);
        if addrs.is_empty() {
            return Err(ConfigError::new(K::NoAddresses).at(name.at).within(path));
        }
        let parsed = addrs
            .into_iter()
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|_| {
                    ConfigError::new(K::BadAddress { address: a.value.clone() }).at(a.at).within(path.as_str())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(name.value, parsed);
    }
    Ok(out)
}

fn replay(section: Option<Section<ReplaySettings>>) -> Result<ReplaySettings, ConfigError> {
    let Some(Section { at, value }) = section else {
        return Ok(ReplaySettings::default());
    };
    if value.connections == 0 || value.queue == 0 {
        return Err(ConfigError::new(K::ReplayZero).at(at).within("replay"));
    }
    Ok(value)
}

fn policies(
    section: Option<Section<PoliciesDoc>>,
    endpoints: &BTreeMap<String, Vec<SocketAddr>>,
) -> Result<BTreeMap<String, MirrorPolicy>, ConfigError> {
    let mut out = BTreeMap::new();
    for (key, policy) in section.map(|s| s.value).unwrap_or_default() {
        if !endpoints.contains_key(key.as_str()) {
            return Err(ConfigError::new(K::UnknownPolicy).at(key.at).within(format!("mirrorPolicies.{}", key.value)));
        }
        out.insert(key.value, policy);
    }
    Ok(out)
}

/// What destinations are checked against.
struct Refs<'a> {
    endpoints: &'a BTreeMap<String, Vec<SocketAddr>>,
    subsets: &'a BTreeMap<String, Vec<String>>,
}

fn table(t: TableDoc, refs: &Refs<'_>, warnings: &mut Vec<String>) -> Result<RouteTable, ConfigError> {
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
            route(r, &label, refs, warnings)
        })
        .collect::<Result<_, _>>()?;
    Ok(RouteTable { hosts: t.hosts, namespace: t.namespace, routes })
}

fn route(
    r: Spanned<HttpRouteDoc>,
    label: &str,
    refs: &Refs<'_>,
    warnings: &mut Vec<String>,
) -> Result<HttpRoute, ConfigError> {
    let at = r.at;
    let r = r.into_inner();
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
        Some(p) if p.value > 100 => {
            let value = f64::from(p.value);
            return Err(ConfigError::new(K::PercentOutOfRange { value })
                .at(p.at)
                .within(format!("{label}.mirrorPercent")));
        }
        Some(p) => {
            warnings.push(format!(
                "{label}: mirrorPercent is deprecated in Istio; use mirrorPercentage: {{value: {}}}",
                p.value
            ));
            Some(p.value)
        }
        None => None,
    };
    let matches = r
        .matches
        .into_iter()
        .enumerate()
        .map(|(k, m)| match_block(m, &format!("{label}.match[{k}]"), warnings))
        .collect::<Result<_, _>>()?;
    let mirror = r.mirror.map(|d| destination(d, &format!("{label}.mirror"), refs)).transpose()?;
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
                        destination: destination(m.destination, &format!("{place}.destination"), refs)?,
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()
        })
        .transpose()?;
    Ok(HttpRoute { name: r.name, matches, mirror, mirrors, mirror_percentage, mirror_percent })
}

fn percent(p: PercentDoc, path: &str) -> Result<Percent, ConfigError> {
    let v = p.value.value;
    if !(0.0..=100.0).contains(&v) || v.is_nan() {
        return Err(ConfigError::new(K::PercentOutOfRange { value: v }).at(p.value.at).within(format!("{path}.value")));
    }
    Ok(Percent { value: v })
}

/// A mirror destination: its subset must be one its DestinationRule defines (when there is one),
/// and `endpoints` must say how to reach it.
fn destination(d: DestinationDoc, path: &str, refs: &Refs<'_>) -> Result<Destination, ConfigError> {
    if let Some(subset) = &d.subset
        && let Some(known) = subsets_of(refs.subsets, &d.host)
        && !known.contains(&subset.value)
    {
        let kind = K::UnknownSubset { host: d.host.value.clone(), subset: subset.value.clone(), known: known.clone() };
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

/// The endpoints key a destination resolves to: `host/subset` or `host`, trying the short name
/// (`reviews` for `reviews.default.svc.cluster.local`) when the full one is not there.
pub(crate) fn resolve(endpoints: &BTreeMap<String, Vec<SocketAddr>>, d: &Destination) -> Option<String> {
    let short = d.host.split('.').next().unwrap_or(&d.host);
    [d.host.as_str(), short]
        .into_iter()
        .map(|h| endpoint_key(h, d.subset.as_deref()))
        .find(|k| endpoints.contains_key(k))
}

/// The subsets a DestinationRule defines for `host` (or for the same short name).
fn subsets_of<'a>(subsets: &'a BTreeMap<String, Vec<String>>, host: &str) -> Option<&'a Vec<String>> {
    let short = host.split('.').next().unwrap_or(host);
    subsets.get(host).or_else(|| subsets.iter().find(|(h, _)| h.split('.').next() == Some(short)).map(|(_, v)| v))
}

fn match_block(
    m: Spanned<MatchRequestDoc>,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<MatchRequest, ConfigError> {
    let block_at = m.at;
    let m = m.into_inner();
    let single = |sm: Option<Spanned<StringMatchDoc>>, field: &str| {
        sm.map(|sm| string_match(sm, block_at, &format!("{path}.{field}"), false)).transpose()
    };
    let uri = single(m.uri, "uri")?;
    let scheme = single(m.scheme, "scheme")?;
    let method = single(m.method, "method")?;
    let authority = single(m.authority, "authority")?;
    let headers = header_matches(m.headers, &format!("{path}.headers"))?;
    let without_headers = header_matches(m.without_headers, &format!("{path}.withoutHeaders"))?;
    let query_params = named_matches(m.query_params, &format!("{path}.queryParams"))?;
    if m.source_labels.is_some() || m.gateways.is_some() || m.source_namespace.is_some() {
        warnings.push(format!("{path}: sourceLabels, gateways and sourceNamespace are not evaluated"));
    }
    Ok(MatchRequest {
        uri,
        scheme,
        method,
        authority,
        headers,
        port: m.port,
        query_params,
        ignore_uri_case: m.ignore_uri_case,
        without_headers,
    })
}

/// Header matches: names must be lower case, as in Istio.
fn header_matches(named: NamedMatchesDoc, path: &str) -> Result<BTreeMap<String, StringMatch>, ConfigError> {
    if let Some(upper) = named.keys().find(|h| h.chars().any(|c| c.is_ascii_uppercase())) {
        let kind = K::UpperCaseHeader { name: upper.value.clone() };
        return Err(ConfigError::new(kind).at(upper.at).within(format!("{path}.{}", upper.value)));
    }
    named_matches(named, path)
}

fn named_matches(named: NamedMatchesDoc, path: &str) -> Result<BTreeMap<String, StringMatch>, ConfigError> {
    named
        .into_iter()
        .map(|(name, sm)| {
            let m = string_match(sm, name.at, &format!("{path}.{}", name.value), true)?;
            Ok((name.value, m))
        })
        .collect()
}

/// One of exact/prefix/regex (or none, where `presence_ok`); a regex compiled as it runs.
/// `parent` places an empty match, which has no place of its own.
fn string_match(
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
        (None, None, Some(r)) => StringMatch::Regex(anchored(&r).map_err(|error| {
            let kind = K::InvalidRegex { pattern: r.value.clone(), error };
            ConfigError::new(kind).at(r.at).within(format!("{path}.regex"))
        })?),
        _ => return Err(ConfigError::new(K::AmbiguousMatch).at(at).within(path)),
    })
}

/// `pattern` compiled as it runs: Envoy's (RE2) regex matches cover the whole value, hence
/// `^(?:pattern)$`. The pattern must also be a regex by itself, or a `)` in it could close the
/// group early (`a)|(b` would become `^(?:a)|(b)$`); checking that only parses it (with no room
/// to compile, the builder stops after the parse).
pub(crate) fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    if let Err(e @ regex::Error::Syntax(_)) = RegexBuilder::new(pattern).size_limit(0).build() {
        return Err(e);
    }
    Regex::new(&format!("^(?:{pattern})$"))
}
