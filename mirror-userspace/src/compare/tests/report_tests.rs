//! Reading a differences log back: the summary and the page.

use serde_json::json;

use crate::compare::report::{MAX_LINE_BYTES, Report, escape, html};

fn log_text() -> String {
    let rec = |route: &str, target: &str, fields: &[(&str, serde_json::Value, serde_json::Value)]| {
        let differences: Vec<_> =
            fields.iter().map(|(f, p, s)| json!({"field": f, "primary": p, "shadow": s})).collect();
        json!({"time": "2025-01-01T00:00:00.000Z", "route": route, "mirror": "httpbin/v2", "method": "GET", "target": target,
               "result": "different", "primary": {"status": 200}, "shadow": {"status": 500}, "differences": differences})
        .to_string()
    };
    [
        rec("api", "/a", &[("status", json!(200), json!(500)), ("json:/items/*/id", json!(1), json!(2))]),
        rec("api", "/b", &[("json:/items/*/id", json!(3), json!(4))]),
        rec("web", "/<script>alert(1)</script>", &[("header:x-v", json!("<b>1</b>"), json!("2"))]),
        "not json".to_string(),
        "[1, 2]".to_string(),
        String::new(),
    ]
    .join("\n")
}

#[test]
fn the_summary_counts_pairs_by_route_and_field() {
    let r = Report::read(log_text().as_bytes()).unwrap();
    assert_eq!((r.records, r.unreadable), (3, 2));
    assert_eq!(r.routes["api → httpbin/v2"].0, 2);
    assert_eq!(r.routes["api → httpbin/v2"].1["json:/items/*/id"], 2);
    let top: Vec<(&str, u64)> = r.top_fields().into_iter().map(|(f, s)| (f.as_str(), s.count)).collect();
    assert_eq!(top, [("json:/items/*/id", 2), ("header:x-v", 1), ("status", 1)]);
    let text = r.text();
    assert!(text.starts_with("3 differing pairs (2 unreadable lines)"), "{text}");
    assert!(text.contains("api → httpbin/v2: 2 pairs\n         2  json:/items/*/id\n         1  status\n"), "{text}");
}

#[test]
fn the_page_escapes_everything_from_the_log() {
    let r = Report::read(log_text().as_bytes()).unwrap();
    let page = html(&r, "diff.jsonl");
    assert!(!page.contains("<script"), "a script tag in the page");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page.contains("&lt;b&gt;1&lt;/b&gt;"));
    assert!(page.contains("Content-Security-Policy"));
    assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
}

#[test]
fn an_overlong_line_is_skipped_and_the_next_one_read() {
    let long = format!("{{\"pad\": \"{}\"}}", "x".repeat(MAX_LINE_BYTES));
    let good = json!({"route": "r", "mirror": "m", "differences": [{"field": "body"}]}).to_string();
    let r = Report::read(std::io::BufReader::with_capacity(4096, format!("{long}\n{good}\n").as_bytes())).unwrap();
    assert_eq!((r.records, r.unreadable), (1, 1));
    assert_eq!(r.fields["body"].count, 1);
}
