//! JSON bodies compared structurally: objects by key (order irrelevant), numbers by value (`1.0`
//! is `1`), arrays element by element in order. A difference is named by its [`Pointer`] with
//! array indexes collapsed to `*`, and reported once per pointer (with the first values found
//! there); patterns of `ignoreJsonPaths` leave fields out.

use std::collections::BTreeMap;

use serde_json::Value;

use super::pointer::{Pointer, PointerPattern, any_matches};

/// Where two JSON documents differ, by pointer: (primary's value, shadow's value), `None` where
/// a side has nothing there. At most `max` pointers (the map says whether more were found).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct JsonDiff {
    /// Pointer → the first differing values found there.
    pub fields: BTreeMap<Pointer, (Option<Value>, Option<Value>)>,
    /// More pointers differed than were kept.
    pub truncated: bool,
}

/// Compares two documents; `ignore`d fields (and everything under them) are left out.
pub fn diff(primary: &Value, shadow: &Value, ignore: &[PointerPattern], max: usize) -> JsonDiff {
    let mut out = JsonDiff::default();
    walk(Some(primary), Some(shadow), &Pointer::root(), ignore, max, &mut out);
    out
}

/// Whether two numbers are the same value, whatever their notation.
fn same_number(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    match (a.as_i64(), b.as_i64(), a.as_u64(), b.as_u64()) {
        (Some(x), Some(y), _, _) => x == y,
        (_, _, Some(x), Some(y)) => x == y,
        _ => a.as_f64() == b.as_f64(),
    }
}

fn walk(p: Option<&Value>, s: Option<&Value>, at: &Pointer, ignore: &[PointerPattern], max: usize, out: &mut JsonDiff) {
    if any_matches(ignore, at) {
        return;
    }
    match (p, s) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            for (k, v) in a {
                walk(Some(v), b.get(k), &at.child(k), ignore, max, out);
            }
            for (k, v) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
                walk(None, Some(v), &at.child(k), ignore, max, out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            let each = at.child("*");
            for i in 0..a.len().max(b.len()) {
                walk(a.get(i), b.get(i), &each, ignore, max, out);
            }
        }
        (Some(Value::Number(a)), Some(Value::Number(b))) if same_number(a, b) => {}
        (Some(a), Some(b)) if a == b => {}
        _ => {
            if out.fields.contains_key(at) {
                return;
            }
            if out.fields.len() >= max {
                out.truncated = true;
                return;
            }
            out.fields.insert(at.clone(), (p.cloned(), s.cloned()));
        }
    }
}

/// Where a value sits under `at`, whether `patterns` name it (or a field above it): the value
/// with every such part replaced by `mask`.
pub fn redact(value: &Value, at: &Pointer, patterns: &[PointerPattern], mask: &Value) -> Value {
    if any_matches(patterns, at) {
        return mask.clone();
    }
    match value {
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), redact(v, &at.child(k), patterns, mask))).collect())
        }
        Value::Array(items) => {
            let each = at.child("*");
            Value::Array(items.iter().map(|v| redact(v, &each, patterns, mask)).collect())
        }
        v => v.clone(),
    }
}
