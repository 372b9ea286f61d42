//! Routing, sans-IO: a request head in, the mirrors it goes to out, with the Host rewritten.
//!
//! Routes are tried in order and the first whose match blocks accept the request wins (Istio's
//! VirtualService `http` semantics); its mirror is then sampled by `mirrorPercentage`, applied as
//! Istio does, in parts per million truncated.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use bytes::{Bytes, BytesMut};
use rand::Rng;
use regex::Regex;

use crate::{
    config::{self, Config},
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
        Ok(if let Some(e) = &sm.exact {
            Matcher::Exact(e.clone())
        } else if let Some(p) = &sm.prefix {
            Matcher::Prefix(p.clone())
        } else if let Some(r) = &sm.regex {
            // Istio's regexes are RE2 and must match the whole value.
            Matcher::Regex(Regex::new(&format!("^(?:{r})$")).with_context(|| format!("regex {r:?}"))?)
        } else {
            Matcher::Present
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

#[derive(Debug, Clone)]
struct MatchBlock {
    uri: Option<Matcher>,
    method: Option<Matcher>,
    authority: Option<Matcher>,
    headers: Vec<(String, Matcher)>,
    without_headers: Vec<(String, Matcher)>,
    ignore_uri_case: bool,
}

impl MatchBlock {
    fn matches(&self, head: &RequestHead) -> bool {
        let path = head.target.as_str();
        if let Some(m) = &self.uri
            && !m.matches(path, self.ignore_uri_case)
        {
            return false;
        }
        if let Some(m) = &self.method
            && !m.matches(&head.method, false)
        {
            return false;
        }
        if let Some(m) = &self.authority {
            let host = head.header("host").and_then(|h| std::str::from_utf8(h).ok()).unwrap_or("");
            if !m.matches(host, false) {
                return false;
            }
        }
        let header_matches = |name: &str, m: &Matcher| {
            head.header_all(name).any(|v| std::str::from_utf8(v).is_ok_and(|v| m.matches(v, false)))
        };
        self.headers.iter().all(|(n, m)| header_matches(n, m))
            && !self.without_headers.iter().any(|(n, m)| header_matches(n, m))
    }
}

/// One mirror destination a request is sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorTarget {
    /// Index into [`Router::endpoints`].
    pub endpoint: usize,
    pub route: Arc<str>,
}

#[derive(Debug, Clone)]
struct CompiledRoute {
    name: Arc<str>,
    blocks: Vec<MatchBlock>,
    endpoint: usize,
    /// Parts per million sampled.
    ppm: u32,
}

/// The outcome of routing one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    NoRoute,
    SampledOut { route: Arc<str> },
    Mirror(MirrorTarget),
}

#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<CompiledRoute>,
    /// Endpoint keys (`host/subset`) with their addresses, in index order.
    pub endpoints: Vec<(String, Vec<std::net::SocketAddr>)>,
}

/// Istio's conversion of a percentage to Envoy's parts-per-million, truncating.
pub fn percent_to_ppm(value: f64) -> u32 {
    (value * 10_000.0) as u32
}

impl Router {
    pub fn new(cfg: &Config) -> Result<Router> {
        let endpoints: Vec<(String, Vec<std::net::SocketAddr>)> = cfg
            .endpoints
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.iter().map(|a| a.parse()).collect::<Result<_, _>>()?)))
            .collect::<Result<_>>()?;
        let mut routes = Vec::new();
        for (i, r) in cfg.routes.iter().enumerate() {
            let key = r.mirror.endpoint_key();
            let endpoint = endpoints
                .iter()
                .position(|(k, _)| *k == key)
                .with_context(|| format!("route #{i}: no endpoint {key}"))?;
            let compile_map = |m: &std::collections::BTreeMap<String, config::StringMatch>| {
                m.iter().map(|(k, v)| Ok((k.clone(), Matcher::compile(v)?))).collect::<Result<Vec<_>>>()
            };
            let blocks = r
                .matches
                .iter()
                .map(|m| {
                    Ok(MatchBlock {
                        uri: m.uri.as_ref().map(Matcher::compile).transpose()?,
                        method: m.method.as_ref().map(Matcher::compile).transpose()?,
                        authority: m.authority.as_ref().map(Matcher::compile).transpose()?,
                        headers: compile_map(&m.headers)?,
                        without_headers: compile_map(&m.without_headers)?,
                        ignore_uri_case: m.ignore_uri_case,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            routes.push(CompiledRoute {
                name: r.name.clone().unwrap_or_else(|| format!("route-{i}")).into(),
                blocks,
                endpoint,
                ppm: percent_to_ppm(r.mirror_percentage.map_or(100.0, |p| p.value)),
            });
        }
        Ok(Router { routes, endpoints })
    }

    /// Routes one request: first matching route, then its sampling.
    pub fn decide(&self, head: &RequestHead, rng: &mut impl Rng) -> Decision {
        let Some(route) = self.routes.iter().find(|r| r.blocks.is_empty() || r.blocks.iter().any(|b| b.matches(head)))
        else {
            return Decision::NoRoute;
        };
        let sampled = route.ppm >= 1_000_000 || (route.ppm > 0 && rng.random_range(0..1_000_000) < route.ppm);
        if sampled {
            Decision::Mirror(MirrorTarget { endpoint: route.endpoint, route: route.name.clone() })
        } else {
            Decision::SampledOut { route: route.name.clone() }
        }
    }
}

/// Envoy's `-shadow` rule: `foo` → `foo-shadow`, `foo:8080` → `foo-shadow:8080`,
/// `[::1]:80` → `[::1]-shadow:80`.
pub fn shadow_host(host: &[u8]) -> Vec<u8> {
    let port_start = host.iter().rposition(|b| *b == b':').filter(|&colon| {
        let v6_end = host.iter().rposition(|b| *b == b']');
        let port = &host[colon + 1..];
        v6_end.is_none_or(|e| e < colon) && !port.is_empty() && port.iter().all(u8::is_ascii_digit)
    });
    let mut out = Vec::with_capacity(host.len() + 7);
    match port_start {
        Some(p) => {
            out.extend_from_slice(&host[..p]);
            out.extend_from_slice(b"-shadow");
            out.extend_from_slice(&host[p..]);
        }
        None => {
            out.extend_from_slice(host);
            out.extend_from_slice(b"-shadow");
        }
    }
    out
}

/// The head with its (first) Host value replaced by the shadow form; every other byte unchanged.
/// A head without Host is returned as it is.
pub fn rewrite_host(head: &RequestHead) -> Bytes {
    let Some(h) = head.headers.iter().find(|h| h.name.eq_ignore_ascii_case("host")) else {
        return head.raw.clone();
    };
    let new = shadow_host(&h.value);
    let mut out = BytesMut::with_capacity(head.raw.len() + new.len());
    out.extend_from_slice(&head.raw[..h.value_range.start]);
    out.extend_from_slice(&new);
    out.extend_from_slice(&head.raw[h.value_range.end..]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{FramerConfig, HttpEvent, RequestFramer};
    use rand::{SeedableRng, rngs::StdRng};

    fn head(raw: &[u8]) -> RequestHead {
        let mut f = RequestFramer::new(FramerConfig::default(), false);
        let mut out = Vec::new();
        f.on_data(Bytes::copy_from_slice(raw), &mut out);
        match out.into_iter().next() {
            Some(HttpEvent::Head(h)) => *h,
            other => panic!("no head: {other:?}"),
        }
    }

    #[test]
    fn shadow_host_follows_envoy() {
        let cases: &[(&str, &str)] = &[
            ("httpbin", "httpbin-shadow"),
            ("httpbin:8000", "httpbin-shadow:8000"),
            ("[::1]:80", "[::1]-shadow:80"),
            ("[::1]", "[::1]-shadow"),
            ("10.0.0.1:80", "10.0.0.1-shadow:80"),
            ("host:", "host:-shadow"),
            ("host:abc", "host:abc-shadow"),
        ];
        for (i, o) in cases {
            assert_eq!(String::from_utf8(shadow_host(i.as_bytes())).unwrap(), *o, "{i}");
        }
    }

    #[test]
    fn rewrite_changes_only_the_host_value() {
        let raw = b"GET /x HTTP/1.1\r\nUser-Agent: t\r\nHost: httpbin:8000\r\nX-Host: httpbin:8000\r\n\r\n";
        let h = head(raw);
        assert_eq!(
            &rewrite_host(&h)[..],
            &b"GET /x HTTP/1.1\r\nUser-Agent: t\r\nHost: httpbin-shadow:8000\r\nX-Host: httpbin:8000\r\n\r\n"[..]
        );
        let h10 = head(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(rewrite_host(&h10), h10.raw);
    }

    fn router(routes_yaml: &str) -> Router {
        let text = format!(
            "capture: {{interfaces: [eth0], ports: [80]}}\nendpoints: {{a: ['127.0.0.1:1'], b: ['127.0.0.1:2']}}\nroutes:\n{routes_yaml}"
        );
        Router::new(&Config::parse(&text, "t").unwrap()).unwrap()
    }

    #[test]
    fn first_matching_route_wins_and_blocks_or() {
        let r = router(
            "  - name: cookie\n    match: [{headers: {cookie: {regex: '.*SessionID=XXX.*'}}}, {uri: {prefix: /admin}}]\n    mirror: {host: b}\n  - name: rest\n    mirror: {host: a}\n",
        );
        let mut rng = StdRng::seed_from_u64(1);
        let d = |raw: &[u8], rng: &mut StdRng| r.decide(&head(raw), rng);
        let to = |e: usize, n: &str| Decision::Mirror(MirrorTarget { endpoint: e, route: n.into() });
        assert_eq!(d(b"GET / HTTP/1.1\r\nCookie: a=1; SessionID=XXX\r\n\r\n", &mut rng), to(1, "cookie"));
        assert_eq!(d(b"GET /admin/x HTTP/1.1\r\n\r\n", &mut rng), to(1, "cookie"));
        assert_eq!(d(b"GET / HTTP/1.1\r\nCookie: SessionID=YYY\r\n\r\n", &mut rng), to(0, "rest"));
    }

    #[test]
    fn match_conditions_and() {
        let r = router(
            "  - name: m\n    match: [{method: {exact: POST}, uri: {exact: /p}, headers: {x-a: {}}}]\n    mirror: {host: a}\n",
        );
        let mut rng = StdRng::seed_from_u64(1);
        assert!(matches!(r.decide(&head(b"POST /p HTTP/1.1\r\nX-A: 1\r\n\r\n"), &mut rng), Decision::Mirror(_)));
        assert_eq!(r.decide(&head(b"POST /p HTTP/1.1\r\n\r\n"), &mut rng), Decision::NoRoute);
        assert_eq!(r.decide(&head(b"GET /p HTTP/1.1\r\nX-A: 1\r\n\r\n"), &mut rng), Decision::NoRoute);
    }

    #[test]
    fn sampling_zero_and_hundred_are_exact_and_twenty_is_close() {
        let mut rng = StdRng::seed_from_u64(7);
        let h = head(b"GET / HTTP/1.1\r\n\r\n");
        for (pct, lo, hi) in [(0.0, 0, 0), (100.0, 10_000, 10_000), (20.0, 1_880, 2_120)] {
            let r = router(&format!("  - mirror: {{host: a}}\n    mirrorPercentage: {{value: {pct}}}\n"));
            let n = (0..10_000).filter(|_| matches!(r.decide(&h, &mut rng), Decision::Mirror(_))).count();
            // 20%: ±3σ of a binomial(10000, 0.2) is ±120.
            assert!((lo..=hi).contains(&n), "{pct}% mirrored {n}");
        }
        assert_eq!(percent_to_ppm(0.00015), 1);
        assert_eq!(percent_to_ppm(12.34567), 123_456);
    }
}
