//! The report as one self-contained HTML page: no script, no external resource, every piece of
//! text from the log escaped, and a Content-Security-Policy that would refuse a script anyway.

use std::fmt::Write as _;

use serde_json::Value;

use super::{Example, Report, printable};

/// Fields shown with their examples, at most.
const FIELDS_SHOWN: usize = 50;

/// `s` escaped for HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A value as shown: a string as itself, anything else as pretty JSON, `null` as absent.
fn shown(v: &Value) -> String {
    match v {
        Value::Null => "(absent)".to_string(),
        Value::String(s) => s.clone(),
        v => serde_json::to_string_pretty(v).unwrap_or_default(),
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}td.count{text-align:right}pre{margin:0;white-space:pre-wrap;word-break:break-all;max-width:40em}\
section.field{margin-top:2em}table.pair td{width:50%}p.request{color:#555}";

/// The page.
pub fn html(r: &Report, title: &str) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <title>mirror report: {}</title><style>{STYLE}</style></head><body>\n",
        escape(&printable(title))
    );
    let _ = write!(
        o,
        "<h1>Differences between the primary and its mirrors</h1>\n<p id=\"totals\">{} differing pairs, {} unreadable lines, from {}</p>\n",
        r.records,
        r.unreadable,
        escape(title)
    );
    let top = r.top_fields();
    o.push_str("<h2>Top differing fields</h2>\n<table id=\"top-fields\"><tr><th>field</th><th>pairs</th><th>routes</th></tr>\n");
    for (field, s) in &top {
        let routes: Vec<String> = s.routes.iter().map(|p| escape(p)).collect();
        let _ = writeln!(
            o,
            "<tr><td class=\"field\">{}</td><td class=\"count\">{}</td><td>{}</td></tr>",
            escape(field),
            s.count,
            routes.join("<br>")
        );
    }
    o.push_str("</table>\n<h2>By route</h2>\n<table id=\"routes\"><tr><th>route → mirror</th><th>pairs</th><th>fields</th></tr>\n");
    for (place, (pairs, fields)) in &r.routes {
        let mut fields: Vec<_> = fields.iter().collect();
        fields.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let list: Vec<String> = fields.iter().map(|(f, n)| format!("{} ({n})", escape(f))).collect();
        let _ = writeln!(
            o,
            "<tr><td class=\"route\">{}</td><td class=\"count\">{pairs}</td><td>{}</td></tr>",
            escape(place),
            list.join("<br>")
        );
    }
    o.push_str("</table>\n<h2>Example pairs</h2>\n");
    for (field, s) in top.iter().take(FIELDS_SHOWN) {
        let _ = writeln!(o, "<section class=\"field\"><h3>{} <small>({} pairs)</small></h3>", escape(field), s.count);
        for e in &s.examples {
            example(&mut o, e);
        }
        o.push_str("</section>\n");
    }
    o.push_str("</body></html>\n");
    o
}

fn example(o: &mut String, e: &Example) {
    let status = |v: &Value| if v.is_null() { "?".to_string() } else { escape(&v.to_string()) };
    let _ = write!(
        o,
        "<p class=\"request\">{} <code>{}</code> — {} → {}, {}</p>\n\
         <table class=\"pair\"><tr><th>primary (status {})</th><th>shadow (status {})</th></tr>\
         <tr><td class=\"primary\"><pre>{}</pre></td><td class=\"shadow\"><pre>{}</pre></td></tr></table>\n",
        escape(&e.method),
        escape(&e.target),
        escape(&e.route),
        escape(&e.mirror),
        escape(&e.time),
        status(&e.statuses.0),
        status(&e.statuses.1),
        escape(&shown(&e.primary)),
        escape(&shown(&e.shadow)),
    );
}
