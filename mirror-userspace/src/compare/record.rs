//! The log record of one differing pair: one JSON object, one line.
//!
//! ```json
//! {"time":"2025-01-02T03:04:05.678Z","route":"api","mirror":"httpbin/v2","method":"GET",
//!  "target":"/items?id=1","result":"different",
//!  "primary":{"status":200,"body_len":42,"body_sha256":"…"},"shadow":{…},
//!  "differences":[{"field":"json:/items/*/id","primary":1,"shadow":"1"}],"noise":["header:etag"]}
//! ```
//!
//! Values of `authorization`, `proxy-authorization`, `cookie` and `set-cookie`, of the headers
//! and JSON fields of the `redact` list (and of anything inside a redacted JSON field) are never
//! written: `"[redacted]"` stands in their place. Long values and targets are cut, so that a
//! record stays within [`MAX_RECORD_BYTES`].

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{
    Response,
    body::sha256_hex,
    diff::{Difference, Field, Outcome},
    json::redact,
};
use crate::config::CompareSettings;

/// Headers whose values are never written, whatever the config says.
pub const ALWAYS_REDACTED_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie", "set-cookie"];
/// What stands for a value not written.
pub const REDACTED: &str = "[redacted]";
/// A value (as JSON text) longer than this is written as a string of its first bytes.
pub const MAX_VALUE_BYTES: usize = 512;
/// A request target longer than this is cut.
pub const MAX_TARGET_BYTES: usize = 2048;
/// A record is at most about this size (64 differences of two cut values, and the rest).
pub const MAX_RECORD_BYTES: usize = 96 << 10;

/// Which request a pair answers.
#[derive(Debug, Clone, Copy)]
pub struct PairInfo<'a> {
    /// When the comparison was made.
    pub time: SystemTime,
    /// The route's name.
    pub route: &'a str,
    /// The mirror's endpoints key.
    pub mirror: &'a str,
    /// The request method.
    pub method: &'a str,
    /// The request target (path and query), as sent.
    pub target: &'a str,
}

/// The record of a pair whose outcome is `different` (or any other: the result is written).
pub fn record(info: &PairInfo, primary: &Response, shadow: &Response, outcome: &Outcome, s: &CompareSettings) -> Value {
    let side = |r: &Response| json!({"status": r.status, "body_len": r.body_len, "body_sha256": sha256_hex(&r.body)});
    let differences: Vec<Value> = outcome.differences.iter().map(|d| difference(d, s)).collect();
    let mut rec = json!({
        "time": rfc3339(info.time),
        "route": info.route,
        "mirror": info.mirror,
        "method": cut(info.method, 32),
        "target": cut(info.target, MAX_TARGET_BYTES),
        "result": outcome.result.as_str(),
        "primary": side(primary),
        "shadow": side(shadow),
        "differences": differences,
    });
    if !outcome.noise.is_empty() {
        rec["noise"] = outcome.noise.iter().map(|f| Value::String(f.to_string())).collect();
    }
    if outcome.truncated {
        rec["truncated"] = true.into();
    }
    rec
}

fn difference(d: &Difference, s: &CompareSettings) -> Value {
    let mask = Value::String(REDACTED.into());
    let shown = |v: &Option<Value>| -> Value {
        let Some(v) = v else { return Value::Null };
        let v = match &d.field {
            Field::Header(name)
                if ALWAYS_REDACTED_HEADERS.contains(&name.as_str()) || s.redact_headers.contains(name) =>
            {
                mask.clone()
            }
            Field::Json(at) => redact(v, at, &s.redact_json_paths, &mask),
            _ => v.clone(),
        };
        bounded(v)
    };
    let mut out = json!({"field": d.field.to_string(), "primary": shown(&d.primary), "shadow": shown(&d.shadow)});
    if let Some(offset) = d.offset {
        out["offset"] = offset.into();
    }
    out
}

/// `v`, or if its JSON text is longer than [`MAX_VALUE_BYTES`], a string of that text's start.
fn bounded(v: Value) -> Value {
    match &v {
        Value::String(s) if s.len() <= MAX_VALUE_BYTES => v,
        Value::String(s) => Value::String(cut(s, MAX_VALUE_BYTES)),
        _ => {
            let text = v.to_string();
            if text.len() <= MAX_VALUE_BYTES { v } else { Value::String(cut(&text, MAX_VALUE_BYTES)) }
        }
    }
}

/// `s` cut to at most `max` bytes (at a character boundary), with `…` when cut.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `t` as RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}
