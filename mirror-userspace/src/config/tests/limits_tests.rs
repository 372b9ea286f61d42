//! Limits: each is refused with its kind, at the place it is exceeded (see `limits`).

use super::*;

use limits::*;

/// Line and column of byte `offset` of an ASCII `text`, as errors give them.
fn at(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    (before.matches('\n').count() + 1, offset - before.rfind('\n').map_or(0, |i| i + 1) + 1)
}

/// Line and column of the `n`th (from 0) occurrence of `needle` in `text`.
fn nth(text: &str, needle: &str, n: usize) -> (usize, usize) {
    let offset = text.match_indices(needle).nth(n).unwrap_or_else(|| panic!("no {needle} #{n}")).0;
    at(text, offset)
}

/// `OWN` with `section` (text at the top level) added.
fn own_with(section: &str) -> String {
    format!("{OWN}{section}")
}

fn out_of_range(e: &ConfigError) -> (&'static str, i128) {
    match e.kind() {
        ConfigErrorKind::OutOfRange { field, value, .. } => (field, *value),
        _ => panic!("not OutOfRange: {e}"),
    }
}

fn too_many(e: &ConfigError) -> (&'static str, usize) {
    match e.kind() {
        ConfigErrorKind::TooMany { field, max } => (field, *max),
        _ => panic!("not TooMany: {e}"),
    }
}

#[test]
fn a_file_over_the_size_limit_is_refused_before_it_is_parsed() {
    let big = format!("{OWN}#{}\n", "x".repeat(MAX_FILE_BYTES));
    let e = err(&big);
    assert!(matches!(e.kind(), ConfigErrorKind::TooLarge { max, .. } if *max == MAX_FILE_BYTES as u64), "{e}");
    assert!(e.location().is_none());
    let e = Config::from_bytes(big.as_bytes(), "t.yaml").unwrap_err();
    assert!(matches!(e.kind(), ConfigErrorKind::TooLarge { .. }), "{e}");
    // From a file: refused on its size, and the message says both sizes.
    let path = std::env::temp_dir().join(format!("mirror-config-big-{}.yaml", std::process::id()));
    std::fs::write(&path, &big).unwrap();
    let e = Config::read(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(e.kind(), ConfigErrorKind::TooLarge { size, .. } if *size == big.len() as u64), "{e}");
    assert!(
        e.to_string().ends_with(&format!("{} bytes: a config file may have at most {MAX_FILE_BYTES} bytes", big.len()))
    );
    // Just within the limit: fine.
    let fits = format!("{OWN}#{}\n", "x".repeat(MAX_FILE_BYTES - OWN.len() - 2));
    assert_eq!(fits.len(), MAX_FILE_BYTES);
    Config::parse(&fits, "t").unwrap();
}

#[test]
fn non_utf8_is_placed_at_its_first_invalid_byte() {
    let mut bytes = OWN.replace("name: default", "name: café~").into_bytes();
    let i = bytes.iter().position(|b| *b == b'~').unwrap();
    bytes[i] = 0xff;
    let e = Config::from_bytes(&bytes, "t.yaml").unwrap_err();
    assert!(matches!(e.kind(), ConfigErrorKind::NotUtf8 { byte: 0xff }), "{e}");
    // Line 6 `  - name: café\xff`: columns count characters, so é is one.
    assert_eq!(place(&e), (6, 15));
    assert_eq!(e.to_string(), "t.yaml:6:15: not UTF-8 (byte 0xff)");
    // A truncated sequence at the very end, after \r\n line ends.
    let e = Config::from_bytes(b"a: 1\r\nb: \xc3", "t").unwrap_err();
    assert!(matches!(e.kind(), ConfigErrorKind::NotUtf8 { byte: 0xc3 }) && place(&e) == (2, 4), "{e}");
}

#[test]
fn nesting_past_the_depth_limit_is_refused_where_it_goes_too_deep() {
    // Flow: `a:` is one level, each `[` one more; the 64th `[` is the 65th level.
    let text = format!("{OWN}x: {}\n", "[".repeat(100_000));
    let e = err(&text);
    assert!(matches!(e.kind(), ConfigErrorKind::TooDeep { max: MAX_DEPTH }), "{e}");
    let first = text.rfind("x: ").unwrap() + 3;
    assert_eq!(place(&e), at(&text, first + 63));
    // Block: each key one level deeper; placed at the key that opens the 65th level.
    let block: String = (0..70).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
    let e = err(&block);
    assert!(matches!(e.kind(), ConfigErrorKind::TooDeep { .. }), "{e}");
    assert_eq!(place(&e), (65, 65));
    // Exactly at the limit: the scan lets it through (and the schema refuses it).
    let e = err(&format!("{OWN}x: {}{}\n", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1)));
    assert!(matches!(e.kind(), ConfigErrorKind::UnknownField { .. }), "{e}");
    // An alias inside its own anchor recurses: serde_yaml's limit, placed.
    let e = err(&own_with("mirrorPolicies:\n  httpbin/v2: {host: &h [*h]}\n"));
    assert!(matches!(e.kind(), ConfigErrorKind::TooDeep { max: 128 }) && e.location().is_some(), "{e}");
}

#[test]
fn documents_past_the_limit_are_refused_at_the_first_one_too_many() {
    let within = format!("{OWN}{}", "---\n{}\n".repeat(MAX_DOCUMENTS - 1));
    Config::parse(&within, "t").unwrap();
    let over = format!("{within}---\n{{}}\n");
    let e = err(&over);
    assert!(matches!(e.kind(), ConfigErrorKind::TooManyDocuments { max: MAX_DOCUMENTS }), "{e}");
    assert_eq!(place(&e), nth(&over, "---", MAX_DOCUMENTS - 1));
    // 50,000 documents: refused as soon as the scan counts the 1001st.
    let e = err(&format!("{OWN}{}", "---\n".repeat(50_000)));
    assert!(matches!(e.kind(), ConfigErrorKind::TooManyDocuments { .. }), "{e}");
}

#[test]
fn tokens_past_the_limit_are_refused_before_parsing() {
    // `[1,1,…]`: two tokens an element.
    let list = |n: usize| format!("{OWN}---\nkind: Gateway\nspec: [{}]\n", vec!["1"; n].join(","));
    Config::parse(&list(MAX_TOKENS / 2 - 100), "t").unwrap();
    let text = list(MAX_TOKENS / 2);
    let e = err(&text);
    assert!(matches!(e.kind(), ConfigErrorKind::TooManyTokens { max: MAX_TOKENS }), "{e}");
    assert_eq!(e.line(), Some(13));
}

#[test]
fn aliases_cannot_expand_past_the_value_and_text_limits() {
    // Routes × match blocks × headers, through aliases: refused at the node being read.
    let headers = (0..10).map(|i| format!("h{i}: {{exact: x}}")).collect::<Vec<_>>().join(", ");
    let bomb = format!(
        "{OWN}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nstatus:\n  m: &m {{headers: {{{headers}}}}}\n  ms: &ms [{}]\n  r: &r {{match: *ms, mirror: {{host: httpbin, subset: v2}}}}\n  rs: &rs [{}]\nspec:\n  hosts: [x]\n  http: *rs\n",
        vec!["*m"; 60].join(", "),
        vec!["*r"; 900].join(", ")
    );
    let e = err(&bomb);
    assert!(matches!(e.kind(), ConfigErrorKind::TooManyValues { max_values: MAX_VALUES, .. }), "{e}");
    assert!(e.location().is_some() && e.path().starts_with("spec.http["), "{e}");
    // Text: a long string repeated.
    let text = format!(
        "{OWN}---\napiVersion: v1\nkind: VirtualService\nstatus:\n  s: &s {}\n  l: &l [{}]\nspec:\n  hosts: *l\n",
        "x".repeat(16_000),
        vec!["*s"; 1000].join(", ")
    );
    let e = err(&text);
    assert!(matches!(e.kind(), ConfigErrorKind::TooManyValues { .. }) && e.location().is_some(), "{e}");
    // serde_yaml's own repetition limit (100 alias jumps per event of the document) has no place:
    // the top-level key being read gives one. Each jump here reads one value or a list of jumps.
    let mut nested = "x0: &a0 lol\n".to_string();
    for i in 1..10 {
        nested += &format!("x{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 10].join(","));
    }
    let text = format!("{nested}{OWN}mirrorPolicies:\n  httpbin/v2: {{host: *a9}}\n");
    let e = err(&text);
    assert!(matches!(e.kind(), ConfigErrorKind::TooManyValues { .. }), "{e}");
    assert_eq!((place(&e), e.path()), (nth(&text, "mirrorPolicies:", 0), "document 1"));
    // Found by the fuzz target (slow under ASan before the budget was 100,000): lists of lists
    // into `host`, which serde reads whole before it tries its forms; our budget stops it.
    let text = format!(
        "{}{OWN}mirrorPolicies:\n  httpbin/v2: {{host: *a8}}\n",
        nested.replace("&a0 lol", &format!("&a0 [{}]", ["lol"; 10].join(",")))
    );
    let e = err(&text);
    assert!(matches!(e.kind(), ConfigErrorKind::TooManyValues { .. }) && e.location().is_some(), "{e}");
    assert!(e.path().starts_with("mirrorPolicies.httpbin/v2.host["), "{e}");
}

#[test]
fn strings_past_the_length_limit_are_refused_where_they_are() {
    let long = "n".repeat(MAX_STRING_BYTES + 1);
    let e = err(&OWN.replace("name: default", &format!("name: {long}")));
    assert!(
        matches!(e.kind(), ConfigErrorKind::TooLong { len, max: MAX_STRING_BYTES, .. } if *len == long.len()),
        "{e}"
    );
    assert_eq!((place(&e), e.path()), ((6, 11), "routes[0].name"));
    Config::parse(&OWN.replace("name: default", &format!("name: {}", &long[1..])), "t").unwrap();
}

#[test]
fn capture_limits() {
    let with_capture = |c: &str| OWN.replace("  interfaces: [eth0]\n  ports: [8000]\n", c);
    let many = |n: usize, item: &dyn Fn(usize) -> String| (0..n).map(item).collect::<Vec<_>>().join(", ");
    let text = with_capture(&format!("  interfaces: [{}]\n  ports: [8000]\n", many(65, &|i| format!("e{i}"))));
    let e = err(&text);
    assert_eq!(too_many(&e), ("capture.interfaces", MAX_INTERFACES));
    assert_eq!(place(&e), nth(&text, "e64", 0));
    let e = err(&OWN.replace("[eth0]", "[eth0, a-very-long-name0]"));
    assert!(matches!(e.kind(), ConfigErrorKind::BadInterface { name } if name == "a-very-long-name0"), "{e}");
    assert_eq!(place(&e), (3, 22));
    assert!(matches!(err(&OWN.replace("[eth0]", "[\"eth 0\"]")).kind(), ConfigErrorKind::BadInterface { .. }));
    Config::parse(&OWN.replace("[eth0]", "[a-very-long-nam]"), "t").unwrap();
    let text = with_capture(&format!("  interfaces: [eth0]\n  ports: [{}]\n", many(65, &|i| (1000 + i).to_string())));
    let e = err(&text);
    assert_eq!(too_many(&e), ("capture.ports", MAX_PORTS));
    assert_eq!(place(&e), nth(&text, "1064", 0));
    let e = err(&OWN.replace("[8000]", "[8000, 65536]"));
    assert_eq!(out_of_range(&e), ("capture.ports", 65536));
    assert_eq!(place(&e), (4, 17));
    let e = err(&OWN.replace("[8000]", "[-1]"));
    assert_eq!(out_of_range(&e), ("capture.ports", -1));
    let pages = |p: &str| OWN.replace("ports: [8000]", &format!("ports: [8000]\n  perfPages: {p}"));
    let e = err(&pages("16384"));
    assert_eq!(out_of_range(&e), ("capture.perfPages", 16384));
    assert_eq!(place(&e), (5, 14));
    assert_eq!(out_of_range(&err(&pages("0"))), ("capture.perfPages", 0));
    assert_eq!(Config::parse(&pages("1024"), "t").unwrap().capture.perf_pages, Some(1024));
    // A batch wait of 0 would spin the capture thread; over a second would hold requests longer
    // than clients wait.
    let batch = |b: &str| OWN.replace("ports: [8000]", &format!("ports: [8000]\n  batchMs: {b}"));
    for (text, value) in [("0", 0), ("1001", 1001), ("-5", -5), ("18446744073709551616", 1 << 64)] {
        let e = err(&batch(text));
        assert_eq!(out_of_range(&e), ("capture.batchMs", value), "{text}");
        assert_eq!(place(&e), (5, 12), "{text}");
    }
    assert_eq!(Config::parse(&batch("1000"), "t").unwrap().capture.batch.as_millis(), 1000);
}

#[test]
fn replay_ranges_are_checked_at_their_value() {
    let replay = |body: &str| own_with(&format!("replay:\n  {body}\n"));
    let cases: &[(&str, &str, i128)] = &[
        // The issue's: each passed `check`, then made `run` panic, stall or abort.
        ("queue: 18446744073709551615", "replay.queue", 18_446_744_073_709_551_615),
        ("connections: 1000000", "replay.connections", 1_000_000),
        ("bufferBytes: 1099511627776", "replay.bufferBytes", 1 << 40),
        ("queue: 0", "replay.queue", 0),
        ("queue: 65537", "replay.queue", 65_537),
        ("connections: 0", "replay.connections", 0),
        ("connections: 257", "replay.connections", 257),
        ("connectTimeoutMs: 0", "replay.connectTimeoutMs", 0),
        ("requestTimeoutMs: 600001", "replay.requestTimeoutMs", 600_001),
        ("bufferBytes: 1023", "replay.bufferBytes", 1023),
        ("maxQueuedBytes: 65535", "replay.maxQueuedBytes", 65_535),
        ("maxQueuedBytes: 1073741825", "replay.maxQueuedBytes", (1 << 30) + 1),
        ("queue: -5", "replay.queue", -5),
        ("queue: 1e30", "replay.queue", 1_000_000_000_000_000_019_884_624_838_656),
        ("queue: 99999999999999999999999999999999999999999", "replay.queue", i128::MAX),
    ];
    for (body, field, value) in cases {
        let e = err(&replay(body));
        assert_eq!(out_of_range(&e), (*field, *value), "{body}: {e}");
        let column = body.find(' ').unwrap() + 4;
        assert_eq!((place(&e), e.path()), ((12, column), "replay"), "{body}");
    }
    let e = err(&replay("queue: 0"));
    assert_eq!(e.to_string(), "t.yaml:12:10: replay: replay.queue must be within 1..=65536, not 0");
    // The extremes are fine, and so is a float without a fraction.
    let c = Config::parse(
        &replay(
            "{queue: 65536, connections: 200, connectTimeoutMs: 600000, bufferBytes: 67108864, maxQueuedBytes: 1e9}",
        )
        .replace("  {", "{")
        .replace("replay:\n", "replay: "),
        "t",
    )
    .unwrap();
    assert_eq!((c.replay.queue, c.replay.connections, c.replay.max_queued_bytes), (65_536, 200, 1_000_000_000));
    assert!(matches!(err(&replay("queue: 1.5")).kind(), ConfigErrorKind::Yaml { .. }));
}

#[test]
fn replay_pace_is_one_of_its_modes() {
    use crate::config::Pace;
    let replay = |body: &str| own_with(&format!("replay:\n  {body}\n"));
    assert_eq!(Config::parse(&own_with(""), "t").unwrap().replay.pace, Pace::Auto);
    for (text, mode) in [("auto", Pace::Auto), ("always", Pace::Always), ("off", Pace::Off)] {
        assert_eq!(Config::parse(&replay(&format!("pace: {text}")), "t").unwrap().replay.pace, mode);
    }
    for bad in ["fast", "true", "1", "Always"] {
        let e = err(&replay(&format!("pace: {bad}")));
        let text = e.to_string();
        assert!(text.contains("auto") && text.contains("always") && text.contains("off"), "{bad}: {text}");
        assert_eq!(place(&e).0, 12, "{bad}: {text}");
    }
}

#[test]
fn endpoint_limits_and_the_total_of_mirror_connections() {
    let endpoints = |e: &str| OWN.replace("  httpbin/v2: [\"10.77.0.3:8000\"]\n", e);
    let keys: String = (0..=MAX_ENDPOINTS).map(|i| format!("  e{i:03}: [\"10.0.0.1:80\"]\n")).collect();
    let text = endpoints(&format!("  httpbin/v2: [\"10.77.0.3:8000\"]\n{keys}"));
    let e = err(&text);
    assert_eq!(too_many(&e), ("endpoints", MAX_ENDPOINTS));
    // The first too many in the order of keys.
    assert_eq!(place(&e), nth(&text, "e256", 0));
    let addrs =
        |n: usize| (0..n).map(|i| format!("\"10.0.{}.{}:80\"", i / 250, i % 250)).collect::<Vec<_>>().join(", ");
    let text = endpoints(&format!("  httpbin/v2: [{}]\n", addrs(65)));
    let e = err(&text);
    assert_eq!(too_many(&e), ("endpoints addresses", MAX_ADDRESSES));
    assert_eq!((place(&e), e.path()), (nth(&text, "\"10.0.0.64:80\"", 0), "endpoints.httpbin/v2"));
    // 5 addresses × 256 connections: placed at `connections`.
    let text = format!("{}replay: {{connections: 256}}\n", endpoints(&format!("  httpbin/v2: [{}]\n", addrs(5))));
    let e = err(&text);
    assert!(matches!(e.kind(), ConfigErrorKind::OutOfRange { value: 1280, max: MAX_MIRROR_CONNECTIONS, .. }), "{e}");
    assert_eq!((place(&e), e.path()), (nth(&text, "256", 0), "replay"));
    // 257 addresses × the default 4: at the address that goes over.
    let many: String = (0..5).map(|k| format!("  m{k}: [{}]\n", addrs(52))).collect();
    let text = endpoints(&format!("  httpbin/v2: [\"10.77.0.3:8000\"]\n{many}"));
    let e = err(&text);
    assert!(matches!(e.kind(), ConfigErrorKind::OutOfRange { value: 1044, .. }), "{e}");
    // 4 + 4 × 4 × 52 = 836 before m4, whose 48th address makes 1028.
    assert_eq!((place(&e), e.path()), (nth(&text, "\"10.0.0.47:80\"", 4), "endpoints.m4"));
}

#[test]
fn route_limits() {
    let route = "  - mirror: {host: httpbin, subset: v2}\n";
    let text = OWN.replace("endpoints:", &format!("{}endpoints:", route.repeat(MAX_ROUTES)));
    let e = err(&text);
    assert_eq!(too_many(&e), ("routes", MAX_ROUTES));
    assert_eq!((place(&e), e.path()), (at(&text, text.rfind("  - mirror").unwrap() + 4), "routes[1000]"));
    // Over VirtualServices and our routes together.
    let vs = format!(
        "---\napiVersion: v1\nkind: VirtualService\nspec:\n  hosts: [x]\n  http:\n{}",
        route.repeat(MAX_ROUTES)
    );
    assert_eq!(too_many(&err(&format!("{OWN}{vs}"))), ("routes", MAX_ROUTES));
    let with_match = |m: &str| OWN.replace("    mirror:", &format!("    match: [{m}]\n    mirror:"));
    let e = err(&with_match(&vec!["{uri: {prefix: /}}"; 65].join(", ")));
    assert_eq!(too_many(&e), ("match", MAX_MATCH_BLOCKS));
    // A mapping is placed at its first key.
    assert_eq!(place(&e), (7, 14 + 20 * 64));
    let headers = (0..65).map(|i| format!("h{i:02}: {{}}")).collect::<Vec<_>>().join(", ");
    let text = with_match(&format!("{{headers: {{{headers}}}}}"));
    let e = err(&text);
    assert_eq!(too_many(&e), ("match.headers", MAX_CONDITIONS));
    assert_eq!(place(&e), nth(&text, "h64", 0));
    let e = err(&with_match(&format!("{{queryParams: {{{headers}}}}}")));
    assert_eq!(too_many(&e).0, "match.queryParams");
    let e = err(&with_match("{port: 70000}"));
    assert_eq!(out_of_range(&e), ("match.port", 70000));
    assert_eq!((place(&e), e.path()), ((7, 20), "routes[0] (default).match[0]"));
    let mirrors = vec!["{destination: {host: httpbin, subset: v2}}"; 17].join(", ");
    let text = OWN.replace(
        "    mirror: {host: httpbin, subset: v2}\n    mirrorPercentage: {value: 100.0}",
        &format!("    mirrors: [{mirrors}]"),
    );
    let e = err(&text);
    assert_eq!(too_many(&e), ("mirrors", MAX_MIRRORS));
    assert_eq!(place(&e), nth(&text, "httpbin, subset", 16));
    let e = err(&OWN.replace("mirrorPercentage: {value: 100.0}", "mirrorPercent: -1"));
    assert!(
        matches!(e.kind(), ConfigErrorKind::PercentOutOfRange { value } if *value == -1.0) && place(&e) == (8, 20),
        "{e}"
    );
    // Istio objects: hosts and subsets.
    let hosts = (0..=MAX_HOSTS).map(|i| format!("h{i}")).collect::<Vec<_>>().join(", ");
    let text = ISTIO_TASK.replace("  hosts:\n    - httpbin\n", &format!("  hosts: [{hosts}]\n"));
    let e = err(&text);
    assert_eq!(too_many(&e), ("spec.hosts", MAX_HOSTS));
    assert_eq!(place(&e), nth(&text, "h256", 0));
    let subsets: String = (0..MAX_SUBSETS).map(|i| format!("  - name: s{i}\n")).collect();
    let text = ISTIO_TASK.replace("  subsets:\n", &format!("  subsets:\n{subsets}"));
    let e = err(&text);
    assert_eq!(too_many(&e), ("spec.subsets", MAX_SUBSETS));
    let (line, column) = nth(&text, "name: v1", 0);
    assert_eq!(place(&e), (line, column + 6));
}

#[test]
fn regexes_are_bounded_one_by_one_and_together() {
    let with_regexes = |patterns: &[&str]| {
        let routes: String = patterns
            .iter()
            .map(|p| format!("  - match: [{{uri: {{regex: '{p}'}}}}]\n    mirror: {{host: httpbin, subset: v2}}\n"))
            .collect();
        OWN.replace("endpoints:", &format!("{routes}endpoints:"))
    };
    // One that compiles past REGEX_SIZE_LIMIT (Unicode \w is ~50 KiB).
    let text = with_regexes(&[r"\w{50}"]);
    let e = err(&text);
    assert!(
        matches!(e.kind(), ConfigErrorKind::InvalidRegex { error: regex::Error::CompiledTooBig(REGEX_SIZE_LIMIT), .. }),
        "{e}"
    );
    assert_eq!((place(&e), e.path()), ((9, 27), "routes[1].match[0].uri.regex"));
    // Each \w{20} counts as 1 MiB: the 17th is over REGEX_TOTAL_LIMIT.
    let big = vec![r"\w{20}"; 17];
    let e = err(&with_regexes(&big));
    assert!(matches!(e.kind(), ConfigErrorKind::RegexesTooLarge { max: REGEX_TOTAL_LIMIT }), "{e}");
    assert_eq!(place(&e), (9 + 2 * 16, 27));
    // Small ones count as 4 KiB: 999 routes with one each are far within.
    Config::parse(&with_regexes(&vec!["/api/v[0-9]+/users/[^/]+"; 999]), "t").unwrap();
}

#[test]
fn policy_headers_are_bounded_and_safe_to_write() {
    let policy = |p: &str| own_with(&format!("mirrorPolicies:\n  httpbin/v2: {p}\n"));
    let set = (0..65).map(|i| format!("x-h{i:02}: v")).collect::<Vec<_>>().join(", ");
    let text = policy(&format!("{{headers: {{set: {{{set}}}}}}}"));
    let e = err(&text);
    assert_eq!(too_many(&e), ("headers.set", MAX_HEADER_OPS));
    assert_eq!((place(&e), e.path()), (nth(&text, "x-h64", 0), "mirrorPolicies.httpbin/v2.headers"));
    let text = policy("{headers: {set: {\"x a\": v}}}");
    let e = err(&text);
    assert!(matches!(e.kind(), ConfigErrorKind::BadHeader { name, .. } if name == "x a"), "{e}");
    assert_eq!(place(&e), nth(&text, "\"x a\"", 0));
    // A CR LF in a value would add a header of the sender's choosing to every mirrored request.
    let text = policy("{headers: {add: {x-a: \"v\\r\\nevil: 1\"}}}");
    let e = err(&text);
    assert!(matches!(e.kind(), ConfigErrorKind::BadHeader { name, .. } if name == "x-a"), "{e}");
    assert_eq!(place(&e), nth(&text, "\"v", 0));
    let e = err(&policy("{host: {set: \"a\\nb\"}}"));
    assert!(matches!(e.kind(), ConfigErrorKind::BadHeader { name, .. } if name == "host"), "{e}");
    assert_eq!(e.path(), "mirrorPolicies.httpbin/v2.host");
    let c = Config::parse(&policy("{headers: {set: {x-a: \"tab\\tok\"}, remove: [cookie]}}"), "t").unwrap();
    assert_eq!(c.policies["httpbin/v2"].headers.set["x-a"], "tab\tok");
}

/// Time is linear in the input: these complete (measured by hand: README).
#[test]
fn large_inputs_within_the_limits_load() {
    // 1,000 documents.
    let vs = "---\napiVersion: v1\nkind: VirtualService\nspec:\n  hosts: [h]\n  http: [{mirror: {host: httpbin, subset: v2}}]\n";
    let c = Config::parse(&format!("{OWN}{}", vs.repeat(MAX_DOCUMENTS - 1)), "t").unwrap();
    assert_eq!(c.route_count(), MAX_DOCUMENTS);
    // 2 MB of comments and long strings.
    let text = format!("{OWN}{}", format!("# {}\n", "c".repeat(1000)).repeat(2000));
    assert!(text.len() > 2_000_000);
    Config::parse(&text, "t").unwrap();
    // A document with 40,000 top-level keys: each checked in constant time.
    let keys: String = (0..40_000).map(|i| format!("k{i}: 1\n")).collect();
    let e = err(&format!("{OWN}{keys}"));
    assert!(matches!(e.kind(), ConfigErrorKind::UnknownField { field, .. } if field == "k0"), "{e}");
}
