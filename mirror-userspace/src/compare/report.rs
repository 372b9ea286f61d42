//! `mirror report --log F [--html OUT]`: reads a differences log and summarises it by route and
//! field (text, for a terminal), and as a self-contained HTML page (top differing fields, example
//! pairs side by side). The log holds text from requests and responses, that is from whoever
//! sends traffic: every line is read within a size bound, and every piece of text is escaped in
//! the page, which has no script and forbids any (Content-Security-Policy).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::{self, BufRead},
};

use serde_json::Value;

mod html;

pub use html::{escape, html};

/// Lines longer than this are not read (the writer's records are far smaller).
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Example pairs kept per field.
pub const EXAMPLES_PER_FIELD: usize = 3;

/// One differing pair, as the page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The record's `time`.
    pub time: String,
    /// Route and mirror.
    pub route: String,
    /// The mirror's endpoints key.
    pub mirror: String,
    /// Request method and target.
    pub method: String,
    /// The request target.
    pub target: String,
    /// Each side's value of the field (`null`: absent).
    pub primary: Value,
    /// The shadow's value.
    pub shadow: Value,
    /// Each side's status.
    pub statuses: (Value, Value),
}

/// How often a field differed, where, and a few examples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSummary {
    /// Pairs that differ in this field.
    pub count: u64,
    /// `route → mirror` names where it did.
    pub routes: BTreeSet<String>,
    /// The first few pairs.
    pub examples: Vec<Example>,
}

/// What a log holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Records read.
    pub records: u64,
    /// Lines that were not a record (not JSON, not an object, or over [`MAX_LINE_BYTES`]).
    pub unreadable: u64,
    /// `route → mirror` → (pairs, field → pairs).
    pub routes: BTreeMap<String, (u64, BTreeMap<String, u64>)>,
    /// Field → its summary.
    pub fields: BTreeMap<String, FieldSummary>,
}

impl Report {
    /// Reads a log: one JSON record a line.
    pub fn read(input: impl BufRead) -> io::Result<Report> {
        let mut report = Report::default();
        report.read_more(input)?;
        Ok(report)
    }

    /// Adds the records of another log (a rotated file of the same one, say).
    pub fn read_more(&mut self, input: impl BufRead) -> io::Result<()> {
        let mut lines = BoundedLines { input, max: MAX_LINE_BYTES };
        while let Some(line) = lines.next_line()? {
            match line.and_then(|l| serde_json::from_slice::<Value>(&l).ok()) {
                Some(Value::Object(rec)) => self.add(&Value::Object(rec)),
                Some(_) | None => self.unreadable += 1,
            }
        }
        Ok(())
    }

    fn add(&mut self, rec: &Value) {
        let text = |v: &Value| v.as_str().map(str::to_string).unwrap_or_default();
        let place = format!("{} → {}", text(&rec["route"]), text(&rec["mirror"]));
        self.records += 1;
        let route = self.routes.entry(place.clone()).or_default();
        route.0 += 1;
        let empty = Vec::new();
        for d in rec["differences"].as_array().unwrap_or(&empty) {
            let Some(field) = d["field"].as_str() else { continue };
            *route.1.entry(field.to_string()).or_default() += 1;
            let f = self.fields.entry(field.to_string()).or_default();
            f.count += 1;
            f.routes.insert(place.clone());
            if f.examples.len() < EXAMPLES_PER_FIELD {
                f.examples.push(Example {
                    time: text(&rec["time"]),
                    route: text(&rec["route"]),
                    mirror: text(&rec["mirror"]),
                    method: text(&rec["method"]),
                    target: text(&rec["target"]),
                    primary: d["primary"].clone(),
                    shadow: d["shadow"].clone(),
                    statuses: (rec["primary"]["status"].clone(), rec["shadow"]["status"].clone()),
                });
            }
        }
    }

    /// Fields, most frequent first (then by name).
    pub fn top_fields(&self) -> Vec<(&String, &FieldSummary)> {
        let mut v: Vec<_> = self.fields.iter().collect();
        v.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        v
    }

    /// The summary for a terminal: by route and mirror, then the top fields overall. Text from
    /// the log is printed with control characters escaped.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{} differing pairs ({} unreadable lines)", self.records, self.unreadable);
        for (place, (pairs, fields)) in &self.routes {
            let _ = writeln!(out, "\n{}: {pairs} pairs", printable(place));
            let mut fields: Vec<_> = fields.iter().collect();
            fields.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            for (field, n) in fields {
                let _ = writeln!(out, "  {n:>8}  {}", printable(field));
            }
        }
        let _ = writeln!(out, "\ntop fields:");
        for (field, s) in self.top_fields().into_iter().take(20) {
            let _ = writeln!(out, "  {:>8}  {}", s.count, printable(field));
        }
        out
    }
}

/// `s` with control characters written as escapes, so that log text cannot drive a terminal.
pub fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// Lines of at most `max` bytes; a longer one is skipped whole and given as `Some(None)`.
struct BoundedLines<R> {
    input: R,
    max: usize,
}

impl<R: BufRead> BoundedLines<R> {
    fn next_line(&mut self) -> io::Result<Option<Option<Vec<u8>>>> {
        let mut line = Vec::new();
        let mut over = false;
        let mut any = false;
        loop {
            let chunk = self.input.fill_buf()?;
            if chunk.is_empty() {
                return Ok(any.then_some((!over).then_some(line)));
            }
            any = true;
            let (take, end) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (chunk.len(), false),
            };
            if !over && line.len() + take <= self.max {
                line.extend_from_slice(&chunk[..take]);
            } else {
                over = true;
                line = Vec::new();
            }
            self.input.consume(take + usize::from(end));
            if end {
                if line.iter().all(u8::is_ascii_whitespace) && !over {
                    // An empty line: not a record, not an error either.
                    line.clear();
                    any = false;
                    continue;
                }
                return Ok(Some((!over).then_some(line)));
            }
        }
    }
}

/// `mirror report --log F [--log F.1 …] [--html OUT]`: the logs read together, the summary on
/// stdout, the page to `html_out`.
pub fn run(logs: &[std::path::PathBuf], html_out: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut report = Report::default();
    for log in logs {
        let file = std::fs::File::open(log).with_context(|| format!("cannot open {}", log.display()))?;
        report.read_more(io::BufReader::new(file)).with_context(|| format!("cannot read {}", log.display()))?;
    }
    print!("{}", report.text());
    if let Some(out) = html_out {
        let names: Vec<String> = logs.iter().map(|l| l.display().to_string()).collect();
        std::fs::write(out, html(&report, &names.join(", ")))
            .with_context(|| format!("cannot write {}", out.display()))?;
        println!("\nwrote {}", out.display());
    }
    Ok(())
}
