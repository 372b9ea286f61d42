//! One pair (primary, shadow), and optionally the baseline's response to the same request,
//! compared: status, headers (names case-insensitive, minus ignored ones), bodies decoded
//! (gzip/deflate), JSON structurally, other bodies by bytes. A field that differs between the
//! primary and the baseline is noise: it is not reported, and a pair whose every difference is
//! noise is `noise`.

use std::{collections::BTreeMap, fmt};

use serde_json::Value;

use super::{
    Incomplete, Response,
    body::{self, Decoded},
    json,
    pointer::Pointer,
};
use crate::config::CompareSettings;

/// Headers never compared: the date, hop-by-hop headers (RFC 9110 §7.6.1) and the framing and
/// coding of the body (the body is compared decoded).
pub const ALWAYS_IGNORED_HEADERS: &[&str] = &[
    "date",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-encoding",
];

/// Differences reported per pair, at most (the record says when there were more).
pub const MAX_DIFFERENCES: usize = 64;

/// What a pair comparison found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CompareResult {
    /// Nothing compared differs.
    Same,
    /// Something differs that the baseline (if any) does not explain.
    Different,
    /// Everything that differs differs between the primary and the baseline too.
    Noise,
    /// A side is missing, cut, or over `maxBodyBytes`.
    Incomplete,
}

impl CompareResult {
    /// The label value of `mirror_compare_total{result}`.
    pub fn as_str(self) -> &'static str {
        match self {
            CompareResult::Same => "same",
            CompareResult::Different => "different",
            CompareResult::Noise => "noise",
            CompareResult::Incomplete => "incomplete",
        }
    }
}

/// What differs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// The status code.
    Status,
    /// A header (lower case); its values joined with `, ` in order.
    Header(String),
    /// A body compared by bytes.
    Body,
    /// A field of JSON bodies.
    Json(Pointer),
}

/// `status`, `header:<name>`, `body`, `json:<pointer>`: metric labels and log fields.
impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Status => f.write_str("status"),
            Field::Header(name) => write!(f, "header:{name}"),
            Field::Body => f.write_str("body"),
            Field::Json(p) => write!(f, "json:{p}"),
        }
    }
}

/// One difference: the field, each side's value (`None`: absent on that side) and, for bodies
/// compared by bytes, the first offset where they differ.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// What differs.
    pub field: Field,
    /// The primary's value: a number (status), a string (a header, a body's summary) or JSON.
    pub primary: Option<Value>,
    /// The shadow's value.
    pub shadow: Option<Value>,
    /// Bodies by bytes: the first offset where they differ.
    pub offset: Option<u64>,
}

/// The comparison of one pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// same, different, noise or incomplete.
    pub result: CompareResult,
    /// What differs and is not noise (empty unless `Different`).
    pub differences: Vec<Difference>,
    /// Fields that differ but differ between the primary and the baseline too.
    pub noise: Vec<Field>,
    /// More differences were found than kept.
    pub truncated: bool,
    /// `Incomplete`: which side (`primary`, `shadow`, `baseline`) and why.
    pub incomplete: Option<(&'static str, Incomplete)>,
}

impl Outcome {
    pub(crate) fn incomplete(side: &'static str, why: Incomplete) -> Self {
        Outcome {
            result: CompareResult::Incomplete,
            differences: Vec::new(),
            noise: Vec::new(),
            truncated: false,
            incomplete: Some((side, why)),
        }
    }
}

/// A response ready to compare: its body decoded, parsed as JSON once when first needed (the
/// primary's is compared with the shadow's and the baseline's).
struct Side<'a> {
    response: &'a Response,
    body: Decoded,
    json: std::cell::OnceCell<Option<Value>>,
}

fn side<'a>(r: Result<&'a Response, Incomplete>, max: usize) -> Result<Side<'a>, Incomplete> {
    let response = r?;
    if let Some(why) = response.cut {
        return Err(why);
    }
    if response.body_len > max as u64 {
        return Err(Incomplete::TooLarge);
    }
    Ok(Side { response, body: body::decode(response, max)?, json: std::cell::OnceCell::new() })
}

/// Compares the primary's and the shadow's responses to one request, with the baseline's if
/// the destination has one (`baseline: Some`).
pub fn compare(
    primary: Result<&Response, Incomplete>,
    shadow: Result<&Response, Incomplete>,
    baseline: Option<Result<&Response, Incomplete>>,
    settings: &CompareSettings,
) -> Outcome {
    let max = settings.max_body_bytes;
    let primary = match side(primary, max) {
        Ok(s) => s,
        Err(why) => return Outcome::incomplete("primary", why),
    };
    let shadow = match side(shadow, max) {
        Ok(s) => s,
        Err(why) => return Outcome::incomplete("shadow", why),
    };
    let baseline = match baseline.map(|b| side(b, max)).transpose() {
        Ok(b) => b,
        Err(why) => return Outcome::incomplete("baseline", why),
    };
    let (found, truncated) = differences(&primary, &shadow, settings);
    let noisy: Vec<Field> = match &baseline {
        Some(b) => differences(&primary, b, settings).0.into_iter().map(|d| d.field).collect(),
        None => Vec::new(),
    };
    let (noise, differences): (Vec<Difference>, Vec<Difference>) =
        found.into_iter().partition(|d| noisy.contains(&d.field));
    let result = match (differences.is_empty(), noise.is_empty()) {
        (false, _) => CompareResult::Different,
        (true, false) => CompareResult::Noise,
        (true, true) => CompareResult::Same,
    };
    Outcome { result, differences, noise: noise.into_iter().map(|d| d.field).collect(), truncated, incomplete: None }
}

/// Every difference between `a` and `b` (at most [`MAX_DIFFERENCES`]), and whether there were
/// more.
fn differences(a: &Side, b: &Side, settings: &CompareSettings) -> (Vec<Difference>, bool) {
    let mut out = Vec::new();
    let (ra, rb) = (a.response, b.response);
    if ra.status != rb.status {
        out.push(Difference {
            field: Field::Status,
            primary: Some(ra.status.into()),
            shadow: Some(rb.status.into()),
            offset: None,
        });
    }
    let (ha, hb) = (headers(ra, settings), headers(rb, settings));
    let names: std::collections::BTreeSet<&String> = ha.keys().chain(hb.keys()).collect();
    for name in names {
        let (va, vb) = (ha.get(name), hb.get(name));
        if va != vb {
            let text = |v: Option<&String>| v.map(|v| Value::String(v.clone()));
            out.push(Difference {
                field: Field::Header(name.clone()),
                primary: text(va),
                shadow: text(vb),
                offset: None,
            });
        }
    }
    let room = MAX_DIFFERENCES.saturating_sub(out.len());
    let mut truncated = false;
    let same_bytes = matches!((&a.body, &b.body), (Decoded::Plain(x), Decoded::Plain(y)) if x == y);
    // Byte-identical decoded bodies are the same whatever they hold: no parse, no walk.
    let parsed = (!same_bytes).then(|| (json_of(a), json_of(b)));
    match parsed {
        None => {}
        Some((Some(ja), Some(jb))) => {
            let d = json::diff(ja, jb, &settings.ignore_json_paths, room);
            truncated |= d.truncated;
            out.extend(d.fields.into_iter().map(|(p, (x, y))| Difference {
                field: Field::Json(p),
                primary: x,
                shadow: y,
                offset: None,
            }));
        }
        Some(_) => {
            let (ba, bb) = (bytes_of(&a.body), bytes_of(&b.body));
            if ba != bb && room > 0 {
                let offset = ba.iter().zip(bb).position(|(x, y)| x != y).unwrap_or(ba.len().min(bb.len()));
                let summary = |d: &Decoded, bytes: &[u8]| {
                    let coding = match d {
                        Decoded::Unknown { codings, .. } => format!(" ({codings}, not decoded)"),
                        Decoded::Corrupt { .. } => " (its content coding does not decode)".to_string(),
                        Decoded::Plain(_) => String::new(),
                    };
                    Value::String(format!("{} bytes, sha256 {}{coding}", bytes.len(), body::sha256_hex(bytes)))
                };
                out.push(Difference {
                    field: Field::Body,
                    primary: Some(summary(&a.body, ba)),
                    shadow: Some(summary(&b.body, bb)),
                    offset: Some(offset as u64),
                });
            }
        }
    }
    if out.len() > MAX_DIFFERENCES {
        out.truncate(MAX_DIFFERENCES);
        truncated = true;
    }
    (out, truncated)
}

/// Header name → its values joined with `, `, minus ignored headers and those the Connection
/// header names (hop-by-hop for this connection only).
fn headers(r: &Response, settings: &CompareSettings) -> BTreeMap<String, String> {
    let nominated: Vec<String> = r
        .header("connection")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .collect();
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &r.headers {
        if ALWAYS_IGNORED_HEADERS.contains(&name.as_str())
            || settings.ignore_headers.contains(name)
            || nominated.contains(name)
        {
            continue;
        }
        let value = String::from_utf8_lossy(value.trim_ascii());
        out.entry(name.clone()).and_modify(|v| *v = format!("{v}, {value}")).or_insert_with(|| value.into_owned());
    }
    out
}

/// The body as JSON, if the response says it is JSON and it parses.
fn json_of<'s>(s: &'s Side) -> Option<&'s Value> {
    s.json
        .get_or_init(|| match &s.body {
            Decoded::Plain(b) if body::is_json(s.response) => serde_json::from_slice(b).ok(),
            _ => None,
        })
        .as_ref()
}

fn bytes_of(d: &Decoded) -> &[u8] {
    match d {
        Decoded::Plain(b) | Decoded::Unknown { raw: b, .. } | Decoded::Corrupt { raw: b } => b,
    }
}
