//! Counting comparisons: results by (route, mirror), differing fields by (route, mirror, field).
//! Field names come from responses (header names, JSON keys), so their number is capped per
//! route: the first `maxFieldsPerRoute` distinct fields of a route keep their name, later ones
//! are counted as `other`. The labels returned are what Prometheus gets
//! (`mirror_compare_total{route,mirror,result}`, `mirror_compare_differences_total{route,mirror,field}`).

use std::collections::{BTreeMap, BTreeSet};

use super::diff::{CompareResult, Outcome};

/// The label that stands for fields over the cap.
pub const OTHER: &str = "other";

/// The labels of one counted comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// `mirror_compare_total{result}`.
    pub result: CompareResult,
    /// `mirror_compare_differences_total{field}`, one per difference (capped names).
    pub fields: Vec<String>,
}

/// A count of differences under one field label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldCount {
    /// The route.
    pub route: String,
    /// The mirror's endpoints key.
    pub mirror: String,
    /// The field label (`status`, `header:x`, `body`, `json:/p`, or `other`).
    pub field: String,
    /// How many pairs differed there.
    pub count: u64,
}

/// Counts of comparisons, with the per-route cap on field names.
#[derive(Debug, Default, Clone)]
pub struct CompareCounters {
    results: BTreeMap<(String, String, CompareResult), u64>,
    fields: BTreeMap<(String, String, String), u64>,
    named: BTreeMap<String, BTreeSet<String>>,
}

impl CompareCounters {
    /// Counts `outcome` for `route` and `mirror`; at most `cap` distinct field names per route.
    pub fn count(&mut self, route: &str, mirror: &str, outcome: &Outcome, cap: usize) -> Counted {
        *self.results.entry((route.into(), mirror.into(), outcome.result)).or_default() += 1;
        let named = self.named.entry(route.to_string()).or_default();
        let fields: Vec<String> = outcome
            .differences
            .iter()
            .map(|d| {
                let name = d.field.to_string();
                if named.contains(&name) || named.len() < cap {
                    named.insert(name.clone());
                    name
                } else {
                    OTHER.to_string()
                }
            })
            .collect();
        for f in &fields {
            *self.fields.entry((route.into(), mirror.into(), f.clone())).or_default() += 1;
        }
        Counted { result: outcome.result, fields }
    }

    /// How many comparisons of `route` and `mirror` had `result`.
    pub fn result(&self, route: &str, mirror: &str, result: CompareResult) -> u64 {
        self.results.get(&(route.to_string(), mirror.to_string(), result)).copied().unwrap_or(0)
    }

    /// Every field count, by route, mirror and field.
    pub fn fields(&self) -> impl Iterator<Item = FieldCount> + '_ {
        self.fields.iter().map(|((route, mirror, field), &count)| FieldCount {
            route: route.clone(),
            mirror: mirror.clone(),
            field: field.clone(),
            count,
        })
    }

    /// Totals as one JSON object for the daemon's summary:
    /// `{"route/mirror": {"same": n, …, "fields": {"status": n, …}}}`.
    pub fn summary(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for ((route, mirror, result), n) in &self.results {
            let entry = out.entry(format!("{route}/{mirror}")).or_insert_with(|| serde_json::json!({"fields": {}}));
            entry[result.as_str()] = (*n).into();
        }
        for ((route, mirror, field), n) in &self.fields {
            let entry = out.entry(format!("{route}/{mirror}")).or_insert_with(|| serde_json::json!({"fields": {}}));
            entry["fields"][field] = (*n).into();
        }
        serde_json::Value::Object(out)
    }
}
