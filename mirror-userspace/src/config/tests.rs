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
    // Ring size: 64 MiB over all CPUs, at most 32 MiB per CPU, at least 256 KiB; or as configured.
    assert_eq!(c.capture.perf_pages_for(1), 8192);
    assert_eq!(c.capture.perf_pages_for(2), 8192);
    assert_eq!(c.capture.perf_pages_for(6), 2048);
    assert_eq!(c.capture.perf_pages_for(64), 256);
    assert_eq!(c.capture.perf_pages_for(96), 128);
    assert_eq!(c.capture.perf_pages_for(4096), 64);
    let set = Config::parse(&OWN.replace("ports: [8000]", "ports: [8000]\n  perfPages: 8"), "t").unwrap();
    assert_eq!(set.capture.perf_pages_for(2), 8);
    // Batches: 50 ms unless set.
    assert_eq!(c.capture.batch, std::time::Duration::from_millis(50));
    let set = Config::parse(&OWN.replace("ports: [8000]", "ports: [8000]\n  batchMs: 5"), "t").unwrap();
    assert_eq!(set.capture.batch, std::time::Duration::from_millis(5));
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

mod limits_tests;

mod capture_tests;

mod compare_tests;
