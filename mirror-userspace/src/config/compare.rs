//! `mirrorPolicies.<destination>.compare`: comparing that mirror's responses with the primary's
//! (issue 15). As written ([`CompareDoc`]), checked ([`CompareSettings`]), and the check that a
//! baseline is mirrored exactly the requests its destination is.
//!
//! ```yaml
//! mirrorPolicies:
//!   httpbin/v2:
//!     compare:
//!       ignoreHeaders: [server, x-request-id]   # plus, always: date, hop-by-hop, framing headers
//!       ignoreJsonPaths: ["/timestamp", "/items/*/id"]
//!       baseline: httpbin/v1b       # a second copy of the primary's version
//!       maxBodyBytes: 1048576       # a side over this is `incomplete`
//!       log: /var/log/mirror/differences.jsonl
//!       logMaxBytes: 67108864       # then rotated: .1, .2, … up to logFiles
//!       logFiles: 4
//!       logPerSecond: 100           # records per second at most (a burst of that many)
//!       redact: [x-api-key, /user/email]   # header names and JSON pointers never written
//!       maxFieldsPerRoute: 100      # differing fields counted by name per route; then `other`
//! ```

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf};

use serde::Deserialize;

use super::{
    RouteTable,
    diagnostic::{ConfigError, ConfigErrorKind as K, Location},
    limits::*,
    ours::MirrorPolicy,
    span::{Int, Spanned},
    validate::{at_most, header_name, in_range, resolve},
};
use crate::{compare::PointerPattern, route::percent_to_ppm};

/// `compare` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct CompareDoc {
    #[serde(default)]
    ignore_headers: Vec<Spanned<String>>,
    #[serde(default)]
    ignore_json_paths: Vec<Spanned<String>>,
    #[serde(default)]
    baseline: Option<Spanned<String>>,
    #[serde(default)]
    max_body_bytes: Option<Spanned<Int>>,
    #[serde(default)]
    log: Option<Spanned<String>>,
    #[serde(default)]
    log_max_bytes: Option<Spanned<Int>>,
    #[serde(default)]
    log_files: Option<Spanned<Int>>,
    #[serde(default)]
    log_per_second: Option<Spanned<Int>>,
    #[serde(default)]
    redact: Vec<Spanned<String>>,
    #[serde(default)]
    max_fields_per_route: Option<Spanned<Int>>,
}

/// How one mirror destination's responses are compared with the primary's.
#[derive(Debug, Clone)]
pub struct CompareSettings {
    /// Header names (lower case) left out of the comparison, besides those always left out
    /// ([`ALWAYS_IGNORED_HEADERS`](crate::compare::ALWAYS_IGNORED_HEADERS)).
    pub ignore_headers: Vec<String>,
    /// JSON fields left out of the comparison (and everything under them).
    pub ignore_json_paths: Vec<PointerPattern>,
    /// The endpoints key of a second copy of the primary's version, mirrored the same requests:
    /// what differs between the primary and it is noise.
    pub baseline: Option<String>,
    /// Where `baseline` was written.
    pub(crate) baseline_at: Option<Location>,
    /// Bodies (as sent, and decoded) up to this size are compared; a larger one makes the pair
    /// `incomplete`.
    pub max_body_bytes: usize,
    /// Where differing pairs are written, one JSON object a line (none: only counted).
    pub log: Option<LogSettings>,
    /// Header names (lower case) whose values are never written, besides authorization, cookie
    /// and set-cookie.
    pub redact_headers: Vec<String>,
    /// JSON fields whose values are never written.
    pub redact_json_paths: Vec<PointerPattern>,
    /// Differing fields counted under their own name per route; the others count as `other`.
    pub max_fields_per_route: usize,
}

/// The log of differing pairs: size-bounded with rotation, rate-limited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// The file written.
    pub path: PathBuf,
    /// When the file would grow past this, it becomes `path.1` (`.1` becomes `.2`, …).
    pub max_bytes: u64,
    /// Files kept in all, the current one included (1: it is truncated instead).
    pub files: usize,
    /// Records per second at most, in bursts of up to that many; the others are counted.
    pub per_second: u32,
}

/// Defaults of the optional settings.
pub mod defaults {
    /// `maxBodyBytes`.
    pub const MAX_BODY_BYTES: usize = 1 << 20;
    /// `logMaxBytes`.
    pub const LOG_MAX_BYTES: u64 = 64 << 20;
    /// `logFiles`.
    pub const LOG_FILES: usize = 4;
    /// `logPerSecond`.
    pub const LOG_PER_SECOND: u32 = 100;
    /// `maxFieldsPerRoute`.
    pub const MAX_FIELDS_PER_ROUTE: usize = 100;
}

impl Default for CompareSettings {
    fn default() -> Self {
        Self {
            ignore_headers: Vec::new(),
            ignore_json_paths: Vec::new(),
            baseline: None,
            baseline_at: None,
            max_body_bytes: defaults::MAX_BODY_BYTES,
            log: None,
            redact_headers: Vec::new(),
            redact_json_paths: Vec::new(),
            max_fields_per_route: defaults::MAX_FIELDS_PER_ROUTE,
        }
    }
}

/// What is wrong with a `compare` block, beyond ranges and names ([`ConfigErrorKind::Compare`](K::Compare)).
#[derive(Debug)]
pub enum CompareProblem {
    /// An `ignoreJsonPaths` or `redact` entry that is not a JSON pointer pattern.
    BadJsonPath {
        /// The entry as written.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// `baseline` is not an `endpoints` key.
    UnknownBaseline {
        /// The baseline as written.
        baseline: String,
        /// The keys there are.
        known: Vec<String>,
    },
    /// `baseline` names the compared destination itself.
    BaselineIsItself,
    /// A route mirrors the destination but not the baseline, or not both to every request.
    BaselineNotMirrored {
        /// The route, as the config places it (`routes[0] (api)`).
        route: String,
        /// The baseline.
        baseline: String,
        /// What is missing.
        reason: &'static str,
    },
    /// `log` is not a usable file name.
    BadLog {
        /// What is wrong.
        reason: &'static str,
    },
    /// The same log file for two destinations.
    SharedLog {
        /// The other destination.
        other: String,
    },
}

impl fmt::Display for CompareProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompareProblem::BadJsonPath { path, reason } => write!(f, "`{path}`: {reason}"),
            CompareProblem::UnknownBaseline { baseline, known } => write!(
                f,
                "baseline '{baseline}' is not a destination listed under `endpoints` (there: {})",
                known.join(", ")
            ),
            CompareProblem::BaselineIsItself => f.write_str("the baseline must be another endpoint than the mirror"),
            CompareProblem::BaselineNotMirrored { route, baseline, reason } => write!(
                f,
                "{route} mirrors this destination but {reason}: the baseline '{baseline}' must be mirrored the same requests"
            ),
            CompareProblem::BadLog { reason } => write!(f, "log: {reason}"),
            CompareProblem::SharedLog { other } => write!(f, "log: the same file as {other}'s compare.log"),
        }
    }
}

fn problem(p: CompareProblem, at: Option<Location>, path: impl Into<String>) -> ConfigError {
    ConfigError::new(K::Compare(p)).at(at).within(path)
}

/// Pointer patterns, checked.
fn patterns(list: &[Spanned<String>], path: &str) -> Result<Vec<PointerPattern>, ConfigError> {
    list.iter()
        .map(|p| {
            PointerPattern::parse(p)
                .map_err(|reason| problem(CompareProblem::BadJsonPath { path: p.value.clone(), reason }, p.at, path))
        })
        .collect()
}

/// Header names, checked and lower-cased.
fn headers(list: &[Spanned<String>], path: &str) -> Result<Vec<String>, ConfigError> {
    list.iter().map(|h| header_name(h, path).map(|()| h.to_ascii_lowercase())).collect()
}

/// Checks the `compare` block of the policy for endpoints key `key` (at `path`).
pub(crate) fn settings(
    doc: CompareDoc,
    key: &str,
    path: &str,
    endpoints: &BTreeMap<String, Vec<SocketAddr>>,
) -> Result<CompareSettings, ConfigError> {
    let mut s = CompareSettings::default();
    at_most(doc.ignore_headers.iter(), MAX_COMPARE_LIST, "compare.ignoreHeaders", |h| h.at, path)?;
    at_most(doc.ignore_json_paths.iter(), MAX_COMPARE_LIST, "compare.ignoreJsonPaths", |h| h.at, path)?;
    at_most(doc.redact.iter(), MAX_COMPARE_LIST, "compare.redact", |h| h.at, path)?;
    s.ignore_headers = headers(&doc.ignore_headers, &format!("{path}.ignoreHeaders"))?;
    s.ignore_json_paths = patterns(&doc.ignore_json_paths, &format!("{path}.ignoreJsonPaths"))?;
    let (pointers, names): (Vec<_>, Vec<_>) = doc.redact.into_iter().partition(|r| r.starts_with('/'));
    s.redact_headers = headers(&names, &format!("{path}.redact"))?;
    s.redact_json_paths = patterns(&pointers, &format!("{path}.redact"))?;
    if let Some(b) = doc.baseline {
        if !endpoints.contains_key(b.as_str()) {
            let known = endpoints.keys().cloned().collect();
            let p = CompareProblem::UnknownBaseline { baseline: b.value.clone(), known };
            return Err(problem(p, b.at, format!("{path}.baseline")));
        }
        if b.value == key {
            return Err(problem(CompareProblem::BaselineIsItself, b.at, format!("{path}.baseline")));
        }
        s.baseline_at = b.at;
        s.baseline = Some(b.value);
    }
    let get = |v: &Option<Spanned<Int>>, field, range| v.as_ref().map(|v| in_range(v, field, range, path)).transpose();
    if let Some(v) = get(&doc.max_body_bytes, "compare.maxBodyBytes", &COMPARE_MAX_BODY_BYTES)? {
        s.max_body_bytes = v as usize;
    }
    if let Some(v) = get(&doc.max_fields_per_route, "compare.maxFieldsPerRoute", &COMPARE_MAX_FIELDS)? {
        s.max_fields_per_route = v as usize;
    }
    let log_settings = [&doc.log_max_bytes, &doc.log_files, &doc.log_per_second];
    match doc.log {
        Some(file) => {
            let reason = if file.is_empty() {
                Some("an empty file name")
            } else if file.ends_with('/') {
                Some("a directory, not a file")
            } else if file.contains('\0') {
                Some("a NUL byte in the file name")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(problem(CompareProblem::BadLog { reason }, file.at, path));
            }
            let max_bytes = get(&doc.log_max_bytes, "compare.logMaxBytes", &COMPARE_LOG_MAX_BYTES)?;
            let files = get(&doc.log_files, "compare.logFiles", &COMPARE_LOG_FILES)?;
            let per_second = get(&doc.log_per_second, "compare.logPerSecond", &COMPARE_LOG_PER_SECOND)?;
            s.log = Some(LogSettings {
                path: PathBuf::from(file.value),
                max_bytes: max_bytes.map_or(defaults::LOG_MAX_BYTES, |v| v as u64),
                files: files.map_or(defaults::LOG_FILES, |v| v as usize),
                per_second: per_second.map_or(defaults::LOG_PER_SECOND, |v| v as u32),
            });
        }
        None => {
            if let Some(v) = log_settings.into_iter().flatten().next() {
                let reason = "logMaxBytes, logFiles and logPerSecond need `log` (the file)";
                return Err(problem(CompareProblem::BadLog { reason }, v.at, path));
            }
        }
    }
    Ok(s)
}

/// Checks every baseline against the routes: each route that mirrors a compared destination must
/// mirror its baseline too, with the same percentage (the baseline then takes the destination's
/// sampling decision, so both get exactly the same requests), and no two destinations may log to
/// one file.
pub(crate) fn check_routes(
    policies: &BTreeMap<String, MirrorPolicy>,
    tables: &impl AsRef<[RouteTable]>,
    endpoints: &BTreeMap<String, Vec<SocketAddr>>,
) -> Result<(), ConfigError> {
    let tables = tables.as_ref();
    let mut logs: BTreeMap<&PathBuf, &str> = BTreeMap::new();
    for (key, policy) in policies {
        let Some(c) = &policy.compare else { continue };
        let path = format!("mirrorPolicies.{key}.compare");
        if let Some(log) = &c.log
            && let Some(other) = logs.insert(&log.path, key)
        {
            return Err(problem(CompareProblem::SharedLog { other: other.to_string() }, None, path));
        }
        let Some(baseline) = &c.baseline else { continue };
        for (t, table) in tables.iter().enumerate() {
            for (j, r) in table.routes.iter().enumerate() {
                let mut mirrored: Vec<(String, u32)> = Vec::new();
                if let Some(d) = &r.mirror {
                    let pct = r.mirror_percentage.map(|p| p.value).or(r.mirror_percent.map(f64::from)).unwrap_or(100.0);
                    mirrored.extend(resolve(endpoints, d).map(|k| (k, percent_to_ppm(pct))));
                }
                for m in r.mirrors.iter().flatten() {
                    let pct = m.percentage.map_or(100.0, |p| p.value);
                    mirrored.extend(resolve(endpoints, &m.destination).map(|k| (k, percent_to_ppm(pct))));
                }
                let share = |k: &str| mirrored.iter().find(|(m, _)| m == k).map(|(_, ppm)| *ppm);
                let Some(dest_ppm) = share(key) else { continue };
                // Other compared destinations of this route and their baselines.
                let baseline_of =
                    |k: &str| policies.get(k).and_then(|p| p.compare.as_ref()).and_then(|c| c.baseline.as_deref());
                let others = mirrored.iter().filter(|(m, _)| m != key);
                let shared = others.clone().any(|(m, _)| baseline_of(m) == Some(baseline.as_str()));
                let is_baseline = others.clone().any(|(m, _)| baseline_of(m) == Some(key.as_str()));
                let reason = match share(baseline) {
                    None => "not the baseline",
                    Some(b) if b != dest_ppm => "not with the same percentage",
                    // The baseline takes the destination's sampling decision: it can follow only
                    // one destination, and a destination that follows cannot lead.
                    Some(_) if dest_ppm < 1_000_000 && shared => {
                        "below 100% with another compared destination of the same baseline"
                    }
                    Some(_) if dest_ppm < 1_000_000 && is_baseline => {
                        "below 100% while it is itself another destination's baseline"
                    }
                    Some(_) => continue,
                };
                let route = match &r.name {
                    Some(n) => format!("route {n}"),
                    None => format!("route {j} of table {t}"),
                };
                let p = CompareProblem::BaselineNotMirrored { route, baseline: baseline.clone(), reason };
                return Err(problem(p, c.baseline_at, format!("{path}.baseline")));
            }
        }
    }
    Ok(())
}
