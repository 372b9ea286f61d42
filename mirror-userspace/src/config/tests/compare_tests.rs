//! `mirrorPolicies.<dest>.compare`: what loads, and each error at its place.

use super::*;

/// Routes to v2 and its baseline v1b, both at 100%, and `compare` (indented under the policy).
fn with_compare(compare: &str) -> String {
    format!(
        r#"
capture: {{interfaces: [eth0], ports: [8000]}}
routes:
  - name: api
    mirrors:
      - destination: {{host: httpbin, subset: v2}}
      - destination: {{host: httpbin, subset: v1b}}
endpoints:
  httpbin/v2: ["10.77.0.3:8000"]
  httpbin/v1b: ["10.77.0.4:8000"]
mirrorPolicies:
  httpbin/v2:
    compare:
{compare}
"#
    )
}

fn settings(c: &Config) -> &CompareSettings {
    c.policies["httpbin/v2"].compare.as_ref().expect("compare settings")
}

/// Line and column of the first `needle` in `text`.
fn first(text: &str, needle: &str) -> (usize, usize) {
    let offset = text.find(needle).unwrap_or_else(|| panic!("no {needle}"));
    let before = &text[..offset];
    (before.matches('\n').count() + 1, offset - before.rfind('\n').map_or(0, |i| i + 1) + 1)
}

fn problem(e: &ConfigError) -> &CompareProblem {
    match e.kind() {
        ConfigErrorKind::Compare(p) => p,
        _ => panic!("not a compare problem: {e}"),
    }
}

#[test]
fn the_issues_example_loads_with_defaults_for_the_rest() {
    let text = with_compare(
        r#"      ignoreHeaders: [Date, server, x-request-id]
      ignoreJsonPaths: ["/timestamp", "/items/*/id"]
      baseline: httpbin/v1b
      maxBodyBytes: 1048576
      log: /var/log/mirror/differences.jsonl"#,
    );
    let c = Config::parse(&text, "t").unwrap();
    let s = settings(&c);
    assert_eq!(s.ignore_headers, ["date", "server", "x-request-id"]);
    assert_eq!(s.ignore_json_paths.iter().map(|p| p.as_str()).collect::<Vec<_>>(), ["/timestamp", "/items/*/id"]);
    assert_eq!(s.baseline.as_deref(), Some("httpbin/v1b"));
    assert_eq!(s.max_body_bytes, 1 << 20);
    let log = s.log.as_ref().unwrap();
    assert_eq!(log.path, std::path::Path::new("/var/log/mirror/differences.jsonl"));
    assert_eq!(
        (log.max_bytes, log.files, log.per_second),
        (compare_defaults::LOG_MAX_BYTES, compare_defaults::LOG_FILES, compare_defaults::LOG_PER_SECOND)
    );
    assert_eq!(s.max_fields_per_route, compare_defaults::MAX_FIELDS_PER_ROUTE);
    // Only the policy that says so compares.
    assert!(c.policies.get("httpbin/v1b").is_none_or(|p| p.compare.is_none()));
}

#[test]
fn every_setting_is_read() {
    let text = with_compare(
        r#"      log: d.jsonl
      logMaxBytes: 65536
      logFiles: 1
      logPerSecond: 7
      redact: [X-Api-Key, /user/email, "/items/*/token"]
      maxFieldsPerRoute: 20
      maxBodyBytes: 1024"#,
    );
    let c = Config::parse(&text, "t").unwrap();
    let s = settings(&c);
    let log = s.log.as_ref().unwrap();
    assert_eq!((log.max_bytes, log.files, log.per_second), (65536, 1, 7));
    assert_eq!(s.redact_headers, ["x-api-key"]);
    assert_eq!(s.redact_json_paths.iter().map(|p| p.as_str()).collect::<Vec<_>>(), ["/user/email", "/items/*/token"]);
    assert_eq!((s.max_fields_per_route, s.max_body_bytes), (20, 1024));
    // An empty block: all defaults, no log.
    let c = Config::parse(&with_compare("      {}").replace("compare:\n      {}", "compare: {}"), "t").unwrap();
    assert!(settings(&c).log.is_none());
}

#[test]
fn numbers_out_of_range_are_refused_at_their_place() {
    for (line, field) in [
        ("maxBodyBytes: 10", "compare.maxBodyBytes"),
        ("maxBodyBytes: 1000000000", "compare.maxBodyBytes"),
        ("maxFieldsPerRoute: 0", "compare.maxFieldsPerRoute"),
        ("logFiles: 101", "compare.logFiles"),
        ("logPerSecond: 0", "compare.logPerSecond"),
        ("logMaxBytes: 100", "compare.logMaxBytes"),
    ] {
        let text = with_compare(&format!("      log: d.jsonl\n      {line}"));
        let e = err(&text);
        match e.kind() {
            ConfigErrorKind::OutOfRange { field: f, .. } => assert_eq!(*f, field, "{e}"),
            _ => panic!("{line}: {e}"),
        }
        let value = line.split(": ").nth(1).unwrap();
        let (l, col) = first(&text, line);
        assert_eq!(place(&e), (l, col + line.find(value).unwrap()), "{e}");
    }
}

#[test]
fn bad_names_and_pointers_are_refused_at_their_place() {
    let text = with_compare("      ignoreHeaders: [ok, \"bad name\"]");
    let e = err(&text);
    assert!(matches!(e.kind(), ConfigErrorKind::BadHeader { .. }), "{e}");
    assert_eq!(place(&e), first(&text, "\"bad name\""));
    assert!(e.to_string().contains("mirrorPolicies.httpbin/v2.compare.ignoreHeaders"), "{e}");
    for bad in ["\"timestamp\"", "\"/a~2\""] {
        let text = with_compare(&format!("      ignoreJsonPaths: [\"/ok\", {bad}]"));
        let e = err(&text);
        assert!(matches!(problem(&e), CompareProblem::BadJsonPath { .. }), "{e}");
        assert_eq!(place(&e), first(&text, bad));
    }
    let text = with_compare("      redact: [\"/ok\", \"/a~x\"]");
    assert_eq!(place(&err(&text)), first(&text, "\"/a~x\""));
    let text = with_compare("      ignoreHeadrs: [a]");
    let e = err(&text);
    assert!(e.to_string().contains("did you mean `ignoreHeaders`?"), "{e}");
}

#[test]
fn log_settings_need_a_log_and_a_log_needs_a_file_name() {
    let text = with_compare("      logFiles: 3");
    let e = err(&text);
    assert!(matches!(problem(&e), CompareProblem::BadLog { .. }), "{e}");
    assert_eq!(place(&e), first(&text, "3\n"));
    for bad in ["\"\"", "/var/log/"] {
        let text = with_compare(&format!("      log: {bad}"));
        let e = err(&text);
        assert!(matches!(problem(&e), CompareProblem::BadLog { .. }), "{e}");
        assert_eq!(place(&e), first(&text, bad));
    }
}

#[test]
fn a_baseline_must_be_another_endpoint_mirrored_the_same_requests() {
    let text = with_compare("      baseline: httpbin/v9");
    let e = err(&text);
    assert!(matches!(problem(&e), CompareProblem::UnknownBaseline { .. }), "{e}");
    assert_eq!(place(&e), first(&text, "httpbin/v9"));
    assert!(e.to_string().contains("there: httpbin/v1b, httpbin/v2"), "{e}");
    let text = with_compare("      baseline: httpbin/v2");
    assert!(matches!(problem(&err(&text)), CompareProblem::BaselineIsItself));
    // A route that mirrors v2 without the baseline.
    let text = with_compare("      baseline: httpbin/v1b")
        .replace("endpoints:", "  - name: other\n    mirror: {host: httpbin, subset: v2}\nendpoints:");
    let e = err(&text);
    match problem(&e) {
        CompareProblem::BaselineNotMirrored { route, reason, .. } => {
            assert_eq!((route.as_str(), *reason), ("route other", "not the baseline"));
        }
        p => panic!("{p}"),
    }
    assert_eq!(place(&e), first(&text, "httpbin/v1b\n"));
    // Sampled with different percentages: the baseline takes the destination's decision, so
    // what is written must say the same.
    let sampled = |v2: &str, v1b: &str| {
        with_compare("      baseline: httpbin/v1b")
            .replace(
                "      - destination: {host: httpbin, subset: v2}\n",
                &format!("      - destination: {{host: httpbin, subset: v2}}\n        percentage: {{value: {v2}}}\n"),
            )
            .replace(
                "      - destination: {host: httpbin, subset: v1b}\n",
                &format!("      - destination: {{host: httpbin, subset: v1b}}\n        percentage: {{value: {v1b}}}\n"),
            )
    };
    for (v2, v1b) in [("50", "100"), ("100", "99.99"), ("10", "20")] {
        let e = err(&sampled(v2, v1b));
        assert!(
            matches!(problem(&e), CompareProblem::BaselineNotMirrored { reason: "not with the same percentage", .. }),
            "{e}"
        );
    }
    // The same percentage below 100 loads.
    Config::parse(&sampled("25", "25"), "t").unwrap();
    // Below 100%, a baseline can follow only one destination.
    let shared = sampled("25", "25")
        .replace(
            "    mirrors:\n",
            "    mirrors:\n      - destination: {host: httpbin, subset: v3}\n        percentage: {value: 25}\n",
        )
        .replace("endpoints:\n", "endpoints:\n  httpbin/v3: [\"10.77.0.5:8000\"]\n")
        + "  httpbin/v3:\n    compare: {baseline: httpbin/v1b}\n";
    let e = err(&shared);
    assert!(
        matches!(
            problem(&e),
            CompareProblem::BaselineNotMirrored {
                reason: "below 100% with another compared destination of the same baseline",
                ..
            }
        ),
        "{e}"
    );
    // A route that mirrors the baseline only is fine (its pairs are simply not compared).
    let text = with_compare("      baseline: httpbin/v1b")
        .replace("endpoints:", "  - name: other\n    mirror: {host: httpbin, subset: v1b}\nendpoints:");
    Config::parse(&text, "t").unwrap();
}

#[test]
fn two_destinations_cannot_share_a_log_file() {
    let text = with_compare("      log: same.jsonl") + "  httpbin/v1b:\n    compare: {log: same.jsonl}\n";
    let e = err(&text);
    assert!(matches!(problem(&e), CompareProblem::SharedLog { .. }), "{e}");
}
