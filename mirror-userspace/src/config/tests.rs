use super::*;

const OWN: &str = r#"
capture:
  interfaces: [eth0]
  ports: [8000]
routes:
  - name: default
    mirror: {host: httpbin, subset: v2}
    mirrorPercentage: {value: 100.0}
endpoints:
  httpbin/v2: ["10.77.0.3:8000"]
"#;

/// Istio's mirroring task (httpbin v1 → v2), exactly as its documentation gives it.
pub const ISTIO_TASK: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
    - httpbin
  http:
  - route:
    - destination:
        host: httpbin
        subset: v1
      weight: 100
    mirror:
      host: httpbin
      subset: v2
    mirrorPercentage:
      value: 100.0
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
capture: {interfaces: [eth0], ports: [8000]}
endpoints:
  httpbin/v2: ["10.77.0.3:8000"]
"#;

fn err(text: &str) -> ConfigError {
    Config::parse(text, "t.yaml").unwrap_err()
}

/// Line and column of an error.
fn place(e: &ConfigError) -> (usize, usize) {
    let l = e.location().unwrap_or_else(|| panic!("no location: {e}"));
    (l.line, l.column)
}

#[test]
fn own_document_parses() {
    let c = Config::parse(OWN, "t").unwrap();
    assert_eq!(c.capture.ports, vec![8000]);
    assert_eq!(c.tables.len(), 1);
    assert_eq!(c.route_count(), 1);
    assert_eq!(c.replay.connections, 4);
    // Ring size: 4 MiB per CPU, less with many CPUs (64 MiB over all), or as configured.
    assert_eq!(c.capture.perf_pages_for(2), 1024);
    assert_eq!(c.capture.perf_pages_for(64), 256);
    assert_eq!(c.capture.perf_pages_for(96), 128);
    assert_eq!(c.capture.perf_pages_for(4096), 64);
    let set = Config::parse(&OWN.replace("ports: [8000]", "ports: [8000]\n  perfPages: 8"), "t").unwrap();
    assert_eq!(set.capture.perf_pages_for(2), 8);
}

#[test]
fn the_istio_mirroring_task_loads_as_it_is() {
    let c = Config::parse(ISTIO_TASK, "t").unwrap();
    assert_eq!(c.tables[0].hosts.as_deref(), Some(&["httpbin".to_string()][..]));
    assert_eq!(c.tables[0].namespace, "default");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // Its routes are named after it in messages.
    let e = err(&ISTIO_TASK.replace("httpbin/v2:", "httpbin/v9:"));
    assert!(matches!(e.kind(), ConfigErrorKind::NoEndpoint { key, .. } if key == "httpbin/v2"), "{e}");
    assert_eq!((place(&e), e.path()), ((15, 13), "VirtualService default/httpbin http[0].mirror"));
}

#[test]
fn errors_have_file_line_column_and_what_was_expected() {
    let e = err(&OWN.replace("ports:", "prots:"));
    assert!(
        matches!(e.kind(), ConfigErrorKind::UnknownField { field, suggestion: Some(s), .. } if field == "prots" && s == "ports"),
        "{e}"
    );
    assert_eq!((place(&e), e.path()), ((4, 3), "capture"));
    // The display users see.
    let shown = e.to_string();
    assert!(shown.starts_with("t.yaml:4:3: capture: unknown field `prots`, expected one of"), "{shown}");
    assert!(shown.ends_with("; did you mean `ports`?"), "{shown}");
    // At the very start of the file too.
    let e = err(&format!("captures: 1{OWN}"));
    assert!(
        matches!(e.kind(), ConfigErrorKind::UnknownField { field, .. } if field == "captures") && place(&e) == (1, 1),
        "{e}"
    );
    let e = err(&ISTIO_TASK.replace("mirrorPercentage:", "mirrorPercentag:"));
    assert!(
        matches!(e.kind(), ConfigErrorKind::UnknownField { suggestion: Some(s), .. } if s == "mirrorPercentage"),
        "{e}"
    );
    assert_eq!(place(&e), (17, 5));
    let e = err(&OWN.replace("interfaces: [eth0]", "interfaces: eth0"));
    assert!(matches!(e.kind(), ConfigErrorKind::Yaml { .. }) && e.line() == Some(3), "{e}");
    // Semantic errors point at the value they are about.
    let e = err(&OWN.replace("100.0", "150"));
    assert!(matches!(e.kind(), ConfigErrorKind::PercentOutOfRange { value } if *value == 150.0), "{e}");
    assert_eq!((place(&e), e.path()), ((8, 31), "routes[0] (default).mirrorPercentage.value"));
    let e = err(&OWN.replace("httpbin/v2:", "httpbin/v3:"));
    assert!(
        matches!(e.kind(), ConfigErrorKind::NoEndpoint { key, known } if key == "httpbin/v2" && known == &["httpbin/v3"]),
        "{e}"
    );
    assert_eq!((place(&e), e.path()), ((7, 20), "routes[0] (default).mirror"));
    let e = err(&OWN.replace("10.77.0.3:8000", "nowhere"));
    assert!(matches!(e.kind(), ConfigErrorKind::BadAddress { address } if address == "nowhere"), "{e}");
    assert_eq!((place(&e), e.path()), ((10, 16), "endpoints.httpbin/v2"));
    let e = err(&ISTIO_TASK.replace("subset: v2\n    mirrorPercentage", "subset: v3\n    mirrorPercentage"));
    assert!(
        matches!(e.kind(), ConfigErrorKind::UnknownSubset { subset, known, .. } if subset == "v3" && known == &["v1", "v2"]),
        "{e}"
    );
    assert_eq!(place(&e), (16, 15));
    let e = err(&OWN.replace("    mirror:", "    match: [{uri: {regex: \"(\"}}]\n    mirror:"));
    assert!(matches!(e.kind(), ConfigErrorKind::InvalidRegex { pattern, .. } if pattern == "("), "{e}");
    assert_eq!((place(&e), e.path()), ((7, 27), "routes[0] (default).match[0].uri.regex"));
    let e = err(&OWN.replace("    mirror:", "    match: [{headers: {Cookie: {}}}]\n    mirror:"));
    assert!(matches!(e.kind(), ConfigErrorKind::UpperCaseHeader { name } if name == "Cookie"), "{e}");
    assert_eq!(place(&e), (7, 24));
}

/// A word that occurs earlier in the file no longer attracts the error: each error is placed at
/// its own node, in whichever document it is.
#[test]
fn errors_point_at_the_offending_node_in_any_document() {
    // `v2` occurs first in the VirtualService; the bad address is in the third document.
    let e = err(&ISTIO_TASK.replace("10.77.0.3:8000", "v2"));
    assert!(matches!(e.kind(), ConfigErrorKind::BadAddress { .. }), "{e}");
    assert_eq!(place(&e), (36, 16));
    // `httpbin` occurs first in the first route, which is fine: the error is at the second's.
    let two = OWN.replace("endpoints:", "  - name: second\n    mirror: {host: httpbin, subset: v9}\nendpoints:");
    let e = err(&two);
    assert!(matches!(e.kind(), ConfigErrorKind::NoEndpoint { key, .. } if key == "httpbin/v9"), "{e}");
    assert_eq!((place(&e), e.path()), ((10, 20), "routes[1] (second).mirror"));
    // A section given again in a later document: at its key there.
    let e = err(&format!("{OWN}---\nreplay: {{}}\n---\nendpoints: {{}}\n"));
    assert!(matches!(e.kind(), ConfigErrorKind::DuplicateSection { section: "endpoints" }), "{e}");
    assert_eq!((place(&e), e.path()), ((14, 1), "document 3"));
    assert_eq!(e.to_string(), "t.yaml:14:1: document 3: `endpoints` was already given in an earlier document");
}

#[test]
fn checks_of_sections_and_match_blocks() {
    let kind = |text: &str| err(text);
    assert!(matches!(kind(&OWN.replace("interfaces: [eth0]", "interfaces: []")).kind(), ConfigErrorKind::NoInterfaces));
    let e = err(&OWN.replace("ports: [8000]", "ports: [8000, 0]"));
    assert!(
        matches!(e.kind(), ConfigErrorKind::OutOfRange { field: "capture.ports", value: 0, min: 1, max: 65535 })
            && place(&e) == (4, 17),
        "{e}"
    );
    let e = err(&OWN.replace("ports: [8000]", "ports: [8000]\n  perfPages: 3"));
    assert!(matches!(e.kind(), ConfigErrorKind::PerfPagesNotPowerOfTwo { pages: 3 }) && place(&e) == (5, 14), "{e}");
    let e = kind(&format!("{OWN}replay: {{queue: 0}}\n"));
    assert!(matches!(e.kind(), ConfigErrorKind::OutOfRange { field: "replay.queue", value: 0, .. }), "{e}");
    assert!(matches!(
        kind(&OWN.replace("capture:", "# capture:").replace("  interfaces", "#").replace("  ports", "#")).kind(),
        ConfigErrorKind::NoCapture
    ));
    let no_routes = "capture: {interfaces: [eth0], ports: [80]}\nroutes: []\n";
    assert!(matches!(kind(no_routes).kind(), ConfigErrorKind::NoRoutes));
    let with_match = |m: &str| OWN.replace("    mirror:", &format!("    match: [{m}]\n    mirror:"));
    let e = err(&with_match("{uri: {exact: /a, prefix: /b}}"));
    assert!(matches!(e.kind(), ConfigErrorKind::AmbiguousMatch) && place(&e) == (7, 20), "{e}");
    let e = err(&with_match("{method: {}}"));
    assert!(matches!(e.kind(), ConfigErrorKind::EmptyMatch) && place(&e) == (7, 14), "{e}");
    assert_eq!(e.path(), "routes[0] (default).match[0].method");
    // Presence only is fine for headers and query parameters.
    let c = Config::parse(&with_match("{headers: {x-a: {}}, queryParams: {q: {}}}"), "t").unwrap();
    assert!(matches!(c.tables[0].routes[0].matches[0].headers["x-a"], StringMatch::Present));
    // Regexes are checked and compiled as they run: whole-value, and a pattern by themselves.
    let c = Config::parse(&with_match("{uri: {regex: \"/items/[0-9]+\"}}"), "t").unwrap();
    let StringMatch::Regex(re) = c.tables[0].routes[0].matches[0].uri.clone().unwrap() else { panic!() };
    assert!(re.is_match("/items/42") && !re.is_match("/items/42/x") && !re.is_match("x/items/42"));
    let e = err(&with_match("{uri: {regex: \"a)|(b\"}}"));
    assert!(matches!(e.kind(), ConfigErrorKind::InvalidRegex { pattern, .. } if pattern == "a)|(b"), "{e}");
}

#[test]
fn kubernetes_objects_are_read_in_any_key_order() {
    // `spec` before `kind` and `apiVersion`.
    let reordered = ISTIO_TASK
        .replacen(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: httpbin\nspec:",
            "metadata:\n  name: httpbin\nspec:",
            1,
        )
        .replacen(
            "      value: 100.0\n---",
            "      value: 100.0\nkind: VirtualService\napiVersion: networking.istio.io/v1\n---",
            1,
        );
    let c = Config::parse(&reordered, "t").unwrap();
    assert_eq!(c.tables[0].hosts.as_deref(), Some(&["httpbin".to_string()][..]));
    assert_eq!(c.route_count(), 1);
    // A field of the other kind, or of our document, in an object is an unknown field.
    let e = err(&ISTIO_TASK.replacen("spec:\n  hosts:", "spec:\n  host: x\n  hosts:", 1));
    assert!(matches!(e.kind(), ConfigErrorKind::UnknownField { field, .. } if field == "host"), "{e}");
    let e = err(&ISTIO_TASK.replacen("metadata:", "capture: ~\nmetadata:", 1));
    assert!(
        matches!(e.kind(), ConfigErrorKind::UnknownField { field, .. } if field == "capture") && place(&e) == (3, 1),
        "{e}"
    );
    let e = err(&ISTIO_TASK.replacen("apiVersion: networking.istio.io/v1\n", "", 1));
    assert!(matches!(e.kind(), ConfigErrorKind::MissingField { field: "apiVersion" }), "{e}");
    let e = err(&OWN.replace("routes:", "rotues:"));
    assert!(matches!(e.kind(), ConfigErrorKind::UnknownField { suggestion: Some(s), .. } if s == "routes"), "{e}");
    assert_eq!(place(&e), (5, 1));
    let e = err(&OWN.replace("routes:", "capture: {interfaces: [x], ports: [1]}\nroutes:"));
    assert!(
        matches!(e.kind(), ConfigErrorKind::DuplicateField { field } if field == "capture") && place(&e) == (5, 1),
        "{e}"
    );
    // Another kind is ignored, with a warning.
    let c = Config::parse(&format!("{OWN}---\nkind: Gateway\nspec: {{anything: 1}}\n"), "t").unwrap();
    assert_eq!(c.warnings, ["document 2: kind Gateway is not used, ignored"]);
}

#[test]
fn mirror_and_mirrors_together_is_an_error_and_mirror_percent_warns() {
    let both = OWN
        .replace("    mirrorPercentage: {value: 100.0}", "    mirrors: [{destination: {host: httpbin, subset: v2}}]");
    let e = err(&both);
    assert!(matches!(e.kind(), ConfigErrorKind::MirrorAndMirrors), "{e}");
    // At the route.
    assert_eq!((place(&e), e.path()), ((6, 5), "routes[0] (default)"));
    let old = OWN.replace("mirrorPercentage: {value: 100.0}", "mirrorPercent: 50");
    let c = Config::parse(&old, "t").unwrap();
    assert!(c.warnings.iter().any(|w| w.contains("mirrorPercent is deprecated")), "{:?}", c.warnings);
    let snake = OWN.replace("mirrorPercentage: {value: 100.0}", "mirror_percent: 50");
    assert_eq!(Config::parse(&snake, "t").unwrap().tables[0].routes[0].mirror_percent, Some(50));
    let e = err(&OWN.replace("mirrorPercentage: {value: 100.0}", "mirrorPercent: 101"));
    assert!(
        matches!(e.kind(), ConfigErrorKind::PercentOutOfRange { value } if *value == 101.0) && place(&e) == (8, 20),
        "{e}"
    );
    let e = err(&OWN.replace(
        "    mirror: {host: httpbin, subset: v2}",
        "    mirrors: [{destination: {host: httpbin, subset: v2}}]",
    ));
    assert!(matches!(e.kind(), ConfigErrorKind::PercentageWithMirrors) && place(&e) == (8, 31), "{e}");
}

#[test]
fn policies_must_name_an_endpoint() {
    let text = format!("{OWN}mirrorPolicies:\n  httpbin/v9: {{host: keep}}\n");
    let e = err(&text);
    assert!(matches!(e.kind(), ConfigErrorKind::UnknownPolicy), "{e}");
    assert_eq!((place(&e), e.path()), ((12, 3), "mirrorPolicies.httpbin/v9"));
    let text = format!(
        "{OWN}mirrorPolicies:\n  httpbin/v2:\n    host: {{set: shadow.example}}\n    headers: {{remove: [authorization], set: {{x-shadow: '1'}}}}\n    sampleBy: {{cookie: SessionID}}\n"
    );
    let c = Config::parse(&text, "t").unwrap();
    let p = &c.policies["httpbin/v2"];
    assert_eq!(p.host, HostRewrite::Set("shadow.example".into()));
    assert_eq!(p.sample_by, Some(SampleKey::Cookie("SessionID".into())));
}

#[test]
fn unreadable_file_is_a_read_error() {
    let e = Config::read(Path::new("/nonexistent/mirror.yaml")).unwrap_err();
    assert!(matches!(e.kind(), ConfigErrorKind::Read(_)) && e.location().is_none(), "{e}");
    assert!(e.to_string().starts_with("/nonexistent/mirror.yaml: cannot read it: "), "{e}");
}

// Limits: each is refused with its kind, at the place it is exceeded (see `limits`).

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
    let e = err(&pages("2048"));
    assert_eq!(out_of_range(&e), ("capture.perfPages", 2048));
    assert_eq!(place(&e), (5, 14));
    assert_eq!(out_of_range(&err(&pages("0"))), ("capture.perfPages", 0));
    assert_eq!(Config::parse(&pages("1024"), "t").unwrap().capture.perf_pages, Some(1024));
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
