//! Istio's schema: `VirtualService` and `DestinationRule` specs and their `HTTPRoute`s as written
//! (the `*Doc` types, which keep where values were written), and the routes of the checked config
//! (what routing reads).
//!
//! Fields Istio has that concern the primary's traffic (`route`, `retries`, `fault`, …) are read
//! and dropped, so that a VirtualService loads as it is; fields Istio does not have are errors.

use std::collections::BTreeMap;

use regex::Regex;
use serde::{Deserialize, de::IgnoredAny};

use super::span::{Int, Spanned};

/// Istio `HTTPRoute`, checked. Only `match` and the mirror fields matter here.
#[derive(Debug, Clone, Default)]
pub(crate) struct HttpRoute {
    /// The route's name (metrics and logs use it).
    pub(crate) name: Option<String>,
    /// Match blocks: conditions in one block AND, blocks OR; none means every request.
    pub(crate) matches: Vec<MatchRequest>,
    /// The one mirror (Istio `mirror`).
    pub(crate) mirror: Option<Destination>,
    /// Several mirrors, each sampled on its own (Istio `mirrors`).
    pub(crate) mirrors: Option<Vec<MirrorEntry>>,
    /// The share of requests `mirror` gets (absent: all).
    pub(crate) mirror_percentage: Option<Percent>,
    /// Deprecated in Istio (an integer percentage); `mirror_percentage` wins.
    pub(crate) mirror_percent: Option<u32>,
}

/// Istio `HTTPMirrorPolicy` (an entry of `mirrors`).
#[derive(Debug, Clone)]
pub(crate) struct MirrorEntry {
    /// Where the copy goes.
    pub(crate) destination: Destination,
    /// The share of requests it gets (absent: all).
    pub(crate) percentage: Option<Percent>,
}

/// Istio `Destination`: a mirror service, as `endpoints` knows it.
#[derive(Debug, Clone)]
pub(crate) struct Destination {
    /// Service name (short or fully qualified).
    pub(crate) host: String,
    /// A subset its DestinationRule defines.
    pub(crate) subset: Option<String>,
}

impl Destination {
    /// The `endpoints` key this destination is looked up by.
    pub(crate) fn endpoint_key(&self) -> String {
        endpoint_key(&self.host, self.subset.as_deref())
    }
}

/// `host/subset`, or `host`.
pub(crate) fn endpoint_key(host: &str, subset: Option<&str>) -> String {
    match subset {
        Some(s) => format!("{host}/{s}"),
        None => host.to_string(),
    }
}

/// Istio `Percent`: within [0, 100].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Percent {
    /// The percentage.
    pub(crate) value: f64,
}

/// Istio `HTTPMatchRequest`, checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct MatchRequest {
    /// The path, without the query string.
    pub(crate) uri: Option<StringMatch>,
    /// Always `http` here.
    pub(crate) scheme: Option<StringMatch>,
    /// The request method.
    pub(crate) method: Option<StringMatch>,
    /// The Host header as sent.
    pub(crate) authority: Option<StringMatch>,
    /// Header name (lower case) → match; [`StringMatch::Present`] means "present".
    pub(crate) headers: BTreeMap<String, StringMatch>,
    /// The connection's destination port.
    pub(crate) port: Option<u32>,
    /// Query parameter → match.
    pub(crate) query_params: BTreeMap<String, StringMatch>,
    /// Whether `uri` ignores ASCII case.
    pub(crate) ignore_uri_case: bool,
    /// Headers that must not match.
    pub(crate) without_headers: BTreeMap<String, StringMatch>,
}

/// Istio `StringMatch`, checked: exactly one of exact/prefix/regex, or presence only (headers and
/// query parameters).
#[derive(Debug, Clone)]
pub(crate) enum StringMatch {
    /// `{}`: the header or parameter is there, whatever its value.
    Present,
    /// The whole value.
    Exact(String),
    /// The start of the value.
    Prefix(String),
    /// RE2 syntax, compiled as it runs: anchored (`^(?:pattern)$`), since Envoy's regex matches
    /// must cover the whole value.
    Regex(Regex),
}

/// A VirtualService's `spec` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct VirtualServiceSpec {
    #[serde(default)]
    pub(crate) hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) http: Vec<Spanned<HttpRouteDoc>>,
    /// Not evaluated (a warning says so).
    #[serde(default)]
    pub(crate) gateways: Option<IgnoredAny>,
    #[serde(default, rename = "tls")]
    _tls: Option<IgnoredAny>,
    #[serde(default, rename = "tcp")]
    _tcp: Option<IgnoredAny>,
    #[serde(default, rename = "exportTo")]
    _export_to: Option<IgnoredAny>,
}

/// A DestinationRule's `spec` as written: only the subset names matter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct DestinationRuleSpec {
    pub(crate) host: String,
    #[serde(default)]
    pub(crate) subsets: Vec<SubsetDoc>,
    #[serde(default, rename = "trafficPolicy")]
    _traffic_policy: Option<IgnoredAny>,
    #[serde(default, rename = "exportTo")]
    _export_to: Option<IgnoredAny>,
    #[serde(default, rename = "workloadSelector")]
    _workload_selector: Option<IgnoredAny>,
}

/// A DestinationRule subset as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct SubsetDoc {
    pub(crate) name: Spanned<String>,
    #[serde(default, rename = "labels")]
    _labels: Option<IgnoredAny>,
    #[serde(default, rename = "trafficPolicy")]
    _traffic_policy: Option<IgnoredAny>,
}

/// A `spec` written before the document's `kind`: the fields of both kinds, sorted out once the
/// kind is known.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct EitherSpec {
    // VirtualService
    #[serde(default)]
    hosts: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    http: Option<Vec<Spanned<HttpRouteDoc>>>,
    #[serde(default)]
    gateways: Option<IgnoredAny>,
    #[serde(default)]
    tls: Option<IgnoredAny>,
    #[serde(default)]
    tcp: Option<IgnoredAny>,
    // both
    #[serde(default)]
    export_to: Option<IgnoredAny>,
    // DestinationRule
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    subsets: Option<Vec<SubsetDoc>>,
    #[serde(default)]
    traffic_policy: Option<IgnoredAny>,
    #[serde(default)]
    workload_selector: Option<IgnoredAny>,
}

/// Why an [`EitherSpec`] is not a spec of the kind the document turned out to be.
pub(crate) enum SpecMismatch {
    /// A field of the other kind.
    Stray(&'static str),
    /// A required field is absent.
    Missing(&'static str),
}

/// The fields of a VirtualService's `spec`, as written.
pub(crate) const VIRTUAL_SERVICE_FIELDS: &[&str] = &["hosts", "http", "gateways", "tls", "tcp", "exportTo"];
/// The fields of a DestinationRule's `spec`, as written.
pub(crate) const DESTINATION_RULE_FIELDS: &[&str] =
    &["host", "subsets", "trafficPolicy", "exportTo", "workloadSelector"];

impl EitherSpec {
    /// As a VirtualService's spec.
    pub(crate) fn virtual_service(self) -> Result<VirtualServiceSpec, SpecMismatch> {
        let stray = [
            ("host", self.host.is_some()),
            ("subsets", self.subsets.is_some()),
            ("trafficPolicy", self.traffic_policy.is_some()),
            ("workloadSelector", self.workload_selector.is_some()),
        ];
        if let Some((name, _)) = stray.into_iter().find(|(_, given)| *given) {
            return Err(SpecMismatch::Stray(name));
        }
        Ok(VirtualServiceSpec {
            hosts: self.hosts.unwrap_or_default(),
            http: self.http.unwrap_or_default(),
            gateways: self.gateways,
            _tls: self.tls,
            _tcp: self.tcp,
            _export_to: self.export_to,
        })
    }

    /// As a DestinationRule's spec.
    pub(crate) fn destination_rule(self) -> Result<DestinationRuleSpec, SpecMismatch> {
        let stray = [
            ("hosts", self.hosts.is_some()),
            ("http", self.http.is_some()),
            ("gateways", self.gateways.is_some()),
            ("tls", self.tls.is_some()),
            ("tcp", self.tcp.is_some()),
        ];
        if let Some((name, _)) = stray.into_iter().find(|(_, given)| *given) {
            return Err(SpecMismatch::Stray(name));
        }
        Ok(DestinationRuleSpec {
            host: self.host.ok_or(SpecMismatch::Missing("host"))?,
            subsets: self.subsets.unwrap_or_default(),
            _traffic_policy: self.traffic_policy,
            _export_to: self.export_to,
            _workload_selector: self.workload_selector,
        })
    }
}

/// Istio `HTTPRoute` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct HttpRouteDoc {
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default, rename = "match")]
    pub(crate) matches: Vec<Spanned<MatchRequestDoc>>,
    #[serde(default)]
    pub(crate) mirror: Option<DestinationDoc>,
    #[serde(default)]
    pub(crate) mirrors: Option<Vec<MirrorEntryDoc>>,
    #[serde(default)]
    pub(crate) mirror_percentage: Option<PercentDoc>,
    /// Deprecated in Istio (an integer percentage).
    #[serde(default, alias = "mirror_percent")]
    pub(crate) mirror_percent: Option<Spanned<Int>>,
    // Istio fields about the primary's traffic: accepted so that a VirtualService loads unchanged.
    #[serde(default, rename = "route")]
    _route: Option<IgnoredAny>,
    #[serde(default, rename = "redirect")]
    _redirect: Option<IgnoredAny>,
    #[serde(default, rename = "directResponse")]
    _direct_response: Option<IgnoredAny>,
    #[serde(default, rename = "delegate")]
    _delegate: Option<IgnoredAny>,
    #[serde(default, rename = "rewrite")]
    _rewrite: Option<IgnoredAny>,
    #[serde(default, rename = "timeout")]
    _timeout: Option<IgnoredAny>,
    #[serde(default, rename = "retries")]
    _retries: Option<IgnoredAny>,
    #[serde(default, rename = "fault")]
    _fault: Option<IgnoredAny>,
    #[serde(default, rename = "corsPolicy")]
    _cors_policy: Option<IgnoredAny>,
    #[serde(default, rename = "headers")]
    _headers: Option<IgnoredAny>,
}

/// Istio `HTTPMirrorPolicy` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MirrorEntryDoc {
    pub(crate) destination: DestinationDoc,
    #[serde(default)]
    pub(crate) percentage: Option<PercentDoc>,
}

/// Istio `Destination` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DestinationDoc {
    pub(crate) host: Spanned<String>,
    #[serde(default)]
    pub(crate) subset: Option<Spanned<String>>,
    /// Istio's port selector: the `endpoints` addresses carry the port used.
    #[serde(default, rename = "port")]
    _port: Option<PortSelector>,
}

/// Istio `PortSelector` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PortSelector {
    #[serde(rename = "number")]
    _number: u32,
}

/// Istio `Percent` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PercentDoc {
    pub(crate) value: Spanned<f64>,
}

/// A header or query parameter name → its match, as written.
pub(crate) type NamedMatchesDoc = BTreeMap<Spanned<String>, Spanned<StringMatchDoc>>;

/// Istio `HTTPMatchRequest` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct MatchRequestDoc {
    #[serde(default, rename = "name")]
    _name: Option<String>,
    #[serde(default)]
    pub(crate) uri: Option<Spanned<StringMatchDoc>>,
    #[serde(default)]
    pub(crate) scheme: Option<Spanned<StringMatchDoc>>,
    #[serde(default)]
    pub(crate) method: Option<Spanned<StringMatchDoc>>,
    #[serde(default)]
    pub(crate) authority: Option<Spanned<StringMatchDoc>>,
    #[serde(default)]
    pub(crate) headers: NamedMatchesDoc,
    #[serde(default)]
    pub(crate) port: Option<Spanned<Int>>,
    #[serde(default)]
    pub(crate) query_params: NamedMatchesDoc,
    #[serde(default)]
    pub(crate) ignore_uri_case: bool,
    #[serde(default)]
    pub(crate) without_headers: NamedMatchesDoc,
    // Istio fields about where traffic comes from: accepted, not evaluated (a warning says so).
    #[serde(default)]
    pub(crate) source_labels: Option<IgnoredAny>,
    #[serde(default)]
    pub(crate) gateways: Option<IgnoredAny>,
    #[serde(default)]
    pub(crate) source_namespace: Option<IgnoredAny>,
    #[serde(default, rename = "statPrefix")]
    _stat_prefix: Option<IgnoredAny>,
}

/// Istio `StringMatch` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StringMatchDoc {
    #[serde(default)]
    pub(crate) exact: Option<String>,
    #[serde(default)]
    pub(crate) prefix: Option<String>,
    #[serde(default)]
    pub(crate) regex: Option<Spanned<String>>,
}
