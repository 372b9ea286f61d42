use super::*;
use crate::http::{FramerConfig, HttpEvent, RequestFramer};
use rand::{SeedableRng, rngs::StdRng};

fn head(raw: &str) -> RequestHead {
    let mut f = RequestFramer::new(FramerConfig::default(), false);
    let mut out = Vec::new();
    f.on_data(Bytes::copy_from_slice(raw.as_bytes()), &mut out);
    match out.into_iter().next() {
        Some(HttpEvent::Head(h)) => *h,
        other => panic!("no head in {raw:?}: {other:?}"),
    }
}

fn router(docs: &str) -> Router {
    let text = format!(
        "capture: {{interfaces: [eth0], ports: [80]}}\nendpoints: {{a: ['127.0.0.1:1'], b: ['127.0.0.1:2'], 'm/v1': ['127.0.0.1:3'], 'm/v2': ['127.0.0.1:4']}}\n{docs}"
    );
    Router::new(&Config::parse(&text, "t").unwrap()).unwrap()
}

/// The route a request takes (None: no route), at 100% so sampling does not interfere.
fn route_of(r: &Router, raw: &str, port: u16) -> Option<String> {
    match r.decide(&head(raw), port, &mut StdRng::seed_from_u64(0)) {
        Decision::NoRoute => None,
        Decision::Route { route, .. } => Some(route.to_string()),
    }
}

#[test]
fn istio_match_semantics_table() {
    let r = router(
        r#"routes:
  - name: exact-uri
    match: [{uri: {exact: /exact}}]
    mirror: {host: a}
  - name: prefix-ignore-case
    match: [{uri: {prefix: /API/}, ignoreUriCase: true}]
    mirror: {host: a}
  - name: regex-uri
    match: [{uri: {regex: "/items/[0-9]+"}}]
    mirror: {host: a}
  - name: method-and-header
    match: [{method: {exact: POST}, headers: {x-tenant: {prefix: blue}}}]
    mirror: {host: a}
  - name: header-present
    match: [{headers: {x-debug: {}}}]
    mirror: {host: a}
  - name: query
    match: [{queryParams: {debug: {exact: "1"}}}]
    mirror: {host: a}
  - name: authority
    match: [{authority: {regex: "shop\\.example\\.com(:[0-9]+)?"}}]
    mirror: {host: a}
  - name: port-8080
    match: [{port: 8080}]
    mirror: {host: a}
  - name: scheme
    match: [{scheme: {exact: https}}]
    mirror: {host: a}
  - name: or-blocks
    match: [{uri: {prefix: /one}}, {uri: {prefix: /two}}]
    mirror: {host: a}
  - name: without
    match: [{uri: {prefix: /w}, withoutHeaders: {x-skip: {}}}]
    mirror: {host: a}
"#,
    );
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("GET /exact HTTP/1.1\r\n\r\n", 80, Some("exact-uri")),
        // uri matches the path without its query string.
        ("GET /exact?x=1 HTTP/1.1\r\n\r\n", 80, Some("exact-uri")),
        ("GET /exact/ HTTP/1.1\r\n\r\n", 80, None),
        ("GET /api/v1 HTTP/1.1\r\n\r\n", 80, Some("prefix-ignore-case")),
        ("GET /Api/v1 HTTP/1.1\r\n\r\n", 80, Some("prefix-ignore-case")),
        ("GET /items/42 HTTP/1.1\r\n\r\n", 80, Some("regex-uri")),
        // regex must match the whole path.
        ("GET /items/42/x HTTP/1.1\r\n\r\n", 80, None),
        ("POST /p HTTP/1.1\r\nX-Tenant: blue-7\r\nContent-Length: 0\r\n\r\n", 80, Some("method-and-header")),
        ("GET /p HTTP/1.1\r\nX-Tenant: blue-7\r\n\r\n", 80, None),
        ("POST /p HTTP/1.1\r\nX-Tenant: red\r\nContent-Length: 0\r\n\r\n", 80, None),
        ("GET /p HTTP/1.1\r\nX-Debug: \r\n\r\n", 80, Some("header-present")),
        ("GET /p?a=2&debug=1 HTTP/1.1\r\n\r\n", 80, Some("query")),
        ("GET /p?debug=10 HTTP/1.1\r\n\r\n", 80, None),
        ("GET /p HTTP/1.1\r\nHost: shop.example.com:8000\r\n\r\n", 80, Some("authority")),
        ("GET /p HTTP/1.1\r\nHost: shop.example.org\r\n\r\n", 80, None),
        ("GET /p HTTP/1.1\r\n\r\n", 8080, Some("port-8080")),
        ("GET /one/x HTTP/1.1\r\n\r\n", 80, Some("or-blocks")),
        ("GET /two HTTP/1.1\r\n\r\n", 80, Some("or-blocks")),
        ("GET /w HTTP/1.1\r\n\r\n", 80, Some("without")),
        ("GET /w HTTP/1.1\r\nX-Skip: 1\r\n\r\n", 80, None),
        // First match wins: /exact with X-Debug still takes exact-uri.
        ("GET /exact HTTP/1.1\r\nX-Debug: 1\r\n\r\n", 80, Some("exact-uri")),
    ];
    for (raw, port, want) in cases {
        assert_eq!(route_of(&r, raw, *port).as_deref(), *want, "{raw:?} on port {port}");
    }
}

#[test]
fn virtual_service_hosts_scope_routes_short_names_included() {
    let r = router(
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - name: reviews-route
    mirror: {host: a}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wild}
spec:
  hosts: ["*.example.com"]
  http:
  - name: wild-route
    mirror: {host: b}
---
routes:
  - name: fallback
    mirror: {host: a}
    mirrorPercentage: {value: 0}
"#,
    );
    for (host, want) in [
        ("reviews", "reviews-route"),
        ("reviews:9080", "reviews-route"),
        ("reviews.shop", "reviews-route"),
        ("reviews.shop.svc.cluster.local:9080", "reviews-route"),
        ("reviews.other", "fallback"),
        ("api.example.com", "wild-route"),
        ("example.com", "fallback"),
    ] {
        let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert_eq!(route_of(&r, &raw, 80).as_deref(), Some(want), "Host: {host}");
    }
}

fn mirrored_fraction(r: &Router, n: usize, seed: u64) -> BTreeMap<String, usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let h = head("GET / HTTP/1.1\r\n\r\n");
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        if let Decision::Route { targets, .. } = r.decide(&h, 80, &mut rng) {
            for t in targets {
                *counts.entry(t.endpoint.to_string()).or_default() += 1;
            }
        }
    }
    counts
}

/// |k - np| <= 4 sigma: fails by chance less than once in 15,000 runs (and the seed is fixed).
fn within_binomial(k: usize, n: usize, p: f64) -> bool {
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    (k as f64 - mean).abs() <= 4.0 * sigma
}

#[test]
fn sampling_fraction_within_binomial_bounds() {
    let n = 50_000;
    for pct in [1.0, 20.0, 50.0] {
        let r = router(&format!("routes: [{{mirror: {{host: a}}, mirrorPercentage: {{value: {pct}}}}}]"));
        let k = mirrored_fraction(&r, n, 11).get("a").copied().unwrap_or(0);
        assert!(within_binomial(k, n, pct / 100.0), "{pct}%: {k} of {n}");
    }
    for (pct, want) in [(0.0, 0), (100.0, n)] {
        let r = router(&format!("routes: [{{mirror: {{host: a}}, mirrorPercentage: {{value: {pct}}}}}]"));
        assert_eq!(mirrored_fraction(&r, n, 1).get("a").copied().unwrap_or(0), want);
    }
    assert_eq!(percent_to_ppm(0.00015), 1);
    assert_eq!(percent_to_ppm(12.34567), 123_456);
}

#[test]
fn two_mirrors_each_get_their_own_share() {
    let r = router(
        "routes:\n  - mirrors:\n      - {destination: {host: m, subset: v1}, percentage: {value: 10}}\n      - {destination: {host: m, subset: v2}, percentage: {value: 20}}\n",
    );
    let n = 50_000;
    let c = mirrored_fraction(&r, n, 5);
    assert!(within_binomial(c["m/v1"], n, 0.10), "{c:?}");
    assert!(within_binomial(c["m/v2"], n, 0.20), "{c:?}");
}

#[test]
fn a_compared_destinations_baseline_takes_its_sampling_decision() {
    // m/v2 is compared against the baseline m/v1, both at 30%, listed baseline first: every
    // request mirrored to one is mirrored to the other; a third mirror keeps its own share.
    let r = router(
        "routes:\n  - mirrors:\n      - {destination: {host: m, subset: v1}, percentage: {value: 30}}\n      - {destination: {host: m, subset: v2}, percentage: {value: 30}}\n      - {destination: {host: a}, percentage: {value: 30}}\nmirrorPolicies:\n  m/v2: {compare: {baseline: m/v1}}\n",
    );
    let mut rng = StdRng::seed_from_u64(3);
    let h = head("GET / HTTP/1.1\r\n\r\n");
    let (n, mut both, mut a, mut a_with_v2) = (20_000, 0, 0, 0);
    for _ in 0..n {
        let Decision::Route { targets, .. } = r.decide(&h, 80, &mut rng) else { panic!("routed") };
        let has = |e: &str| targets.iter().any(|t| &*t.endpoint == e);
        assert_eq!(has("m/v1"), has("m/v2"), "baseline and destination split");
        both += usize::from(has("m/v2"));
        a += usize::from(has("a"));
        a_with_v2 += usize::from(has("a") && has("m/v2"));
    }
    assert!(within_binomial(both, n, 0.30), "{both}");
    assert!(within_binomial(a, n, 0.30), "{a}");
    // Independent of the pair: about 9% of requests go to both.
    assert!(within_binomial(a_with_v2, n, 0.09), "{a_with_v2}");
}

#[test]
fn consistent_sampling_by_cookie_keeps_a_session_together() {
    let r = router(
        "routes: [{mirror: {host: a}, mirrorPercentage: {value: 30}}]\nmirrorPolicies:\n  a: {sampleBy: {cookie: SessionID}}\n",
    );
    let mut rng = StdRng::seed_from_u64(9);
    let mut sessions_in = 0;
    for s in 0..2000 {
        let mut verdicts = (0..5).map(|i| {
            let raw = format!("GET /{i} HTTP/1.1\r\nCookie: theme=dark; SessionID=user{s}\r\n\r\n");
            matches!(r.decide(&head(&raw), 80, &mut rng), Decision::Route { targets, .. } if !targets.is_empty())
        });
        let first = verdicts.next().unwrap();
        assert!(verdicts.all(|v| v == first), "session {s} split");
        sessions_in += usize::from(first);
    }
    assert!(within_binomial(sessions_in, 2000, 0.30), "{sessions_in} of 2000 sessions");
}

fn policy(text: &str) -> Policy {
    let r = router(&format!("routes: [{{mirror: {{host: a}}}}]\nmirrorPolicies:\n  a: {text}\n"));
    let Decision::Route { targets, .. } = r.decide(&head("GET / HTTP/1.1\r\n\r\n"), 80, &mut StdRng::seed_from_u64(0))
    else {
        panic!()
    };
    (*targets[0].policy).clone()
}

#[test]
fn host_modes_and_header_mutations() {
    let raw = "GET /x HTTP/1.1\r\nUser-Agent: t\r\nHost: httpbin:8000\r\nAuthorization: secret\r\nCookie: a=1\r\nX-Host: httpbin:8000\r\n\r\n";
    let h = head(raw);
    let shadow = rewrite_head(&h, &Policy::default());
    assert_eq!(&shadow[..], raw.replacen("\r\nHost: httpbin:8000", "\r\nHost: httpbin-shadow:8000", 1).as_bytes());
    assert_eq!(rewrite_head(&h, &policy("{host: keep}")), h.raw);
    let set = rewrite_head(&h, &policy("{host: {set: mirror.internal}}"));
    assert!(String::from_utf8_lossy(&set).contains("\r\nHost: mirror.internal\r\n"));
    let ops = rewrite_head(
        &h,
        &policy("{headers: {remove: [Authorization, cookie], set: {x-host: replaced}, add: {x-shadow: 'true'}}}"),
    );
    assert_eq!(
        String::from_utf8_lossy(&ops),
        "GET /x HTTP/1.1\r\nUser-Agent: t\r\nHost: httpbin-shadow:8000\r\nx-host: replaced\r\nx-shadow: true\r\n\r\n"
    );
    // The name is matched in any case, and only the first Host line is rewritten (a second one
    // is the framer's to refuse; here it is kept as sent).
    let upper = head("GET / HTTP/1.1\nHOST: a:1\nhost: b\n\n");
    assert_eq!(&rewrite_head(&upper, &Policy::default())[..], b"GET / HTTP/1.1\nHOST: a-shadow:1\nhost: b\n\n");
    // No Host (HTTP/1.0): nothing to rewrite, the head goes as captured, with or without ops.
    let bare = head("GET / HTTP/1.0\r\nAccept: */*\r\n\r\n");
    assert_eq!(rewrite_head(&bare, &Policy::default()), bare.raw);
    assert_eq!(rewrite_head(&bare, &policy("{host: {set: m}, headers: {remove: [x]}}")), bare.raw);
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
fn review_rewrite_of_a_head_with_many_headers() {
    let mut raw = String::from("GET /x HTTP/1.1\r\n");
    for i in 0..12 {
        raw.push_str(&format!("X-{i}: {i}\r\n"));
    }
    raw.push_str("Host: hh:80\r\nCookie: c\r\n\r\n");
    let h = head(&raw);
    assert!(h.headers.spilled());
    let got = rewrite_head(&h, &policy("{headers: {remove: [x-3, cookie], set: {x-11: eleven}}}"));
    let mut want = String::from("GET /x HTTP/1.1\r\n");
    for i in (0..11).filter(|i| *i != 3) {
        want.push_str(&format!("X-{i}: {i}\r\n"));
    }
    want.push_str("Host: hh-shadow:80\r\nx-11: eleven\r\n\r\n");
    assert_eq!(String::from_utf8_lossy(&got), want);
    assert_eq!(h.target(), "/x");
}
