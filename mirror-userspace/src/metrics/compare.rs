//! `mirror_compare_total{route,mirror,result}` and `mirror_compare_differences_total{route,mirror,field}`:
//! what comparing the mirrors' responses with the primary's found. The labels come from
//! [`CompareCounters::count`](crate::compare::CompareCounters::count), which caps the field names
//! per route (then `other`), so the series stay bounded.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::compare::counters::Counted;

/// `{route, mirror, result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    route: String,
    mirror: String,
    result: String,
}

/// `{route, mirror, field}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FieldLabel {
    route: String,
    mirror: String,
    field: String,
}

/// `{route, mirror, side, reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IncompleteLabel {
    route: String,
    mirror: String,
    side: String,
    reason: String,
}

/// The comparison metrics.
#[derive(Debug, Default)]
pub(crate) struct CompareMetrics {
    total: Family<ResultLabel, Counter>,
    differences: Family<FieldLabel, Counter>,
    incomplete: Family<IncompleteLabel, Counter>,
}

impl CompareMetrics {
    /// Adds them to `registry` (prefix `mirror_`).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "compare",
            "Pairs of primary and mirror responses compared, by result: same, different, noise (differs only where the baseline differs too), incomplete (a side missing, cut or over maxBodyBytes)",
            self.total.clone(),
        );
        registry.register(
            "compare_differences",
            "Differing pairs by field: status, header:<name>, body, json:<pointer> (names capped per route, then other)",
            self.differences.clone(),
        );
        registry.register(
            "compare_incomplete",
            "Incomplete pairs by side (primary, shadow, baseline) and reason (missing, gap, cut, too_large, unframed, shed)",
            self.incomplete.clone(),
        );
    }

    /// One comparison of `route` and `mirror`, as counted.
    pub(crate) fn record(&self, route: &str, mirror: &str, counted: &Counted, incomplete: Option<(&str, &str)>) {
        if let Some((side, reason)) = incomplete {
            let label = IncompleteLabel {
                route: route.into(),
                mirror: mirror.into(),
                side: side.into(),
                reason: reason.into(),
            };
            self.incomplete.get_or_create(&label).inc();
        }
        let result = counted.result.as_str().to_string();
        self.total.get_or_create(&ResultLabel { route: route.into(), mirror: mirror.into(), result }).inc();
        for field in &counted.fields {
            let label = FieldLabel { route: route.into(), mirror: mirror.into(), field: field.clone() };
            self.differences.get_or_create(&label).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::compare::{
        CompareCounters, CompareResult, Outcome,
        diff::{Difference, Field},
    };

    #[test]
    fn counted_comparisons_are_exported_with_capped_fields() {
        let m = crate::metrics::Metrics::new();
        let mut counters = CompareCounters::default();
        let outcome = |fields: &[&str]| Outcome {
            result: CompareResult::Different,
            differences: fields
                .iter()
                .map(|f| Difference { field: Field::Header(f.to_string()), primary: None, shadow: None, offset: None })
                .collect(),
            noise: Vec::new(),
            truncated: false,
            incomplete: None,
        };
        for fields in [&["a", "b"][..], &["c"], &["a"]] {
            let counted = counters.count("api", "httpbin/v2", &outcome(fields), 2);
            m.compared("api", "httpbin/v2", &counted, None);
        }
        let incomplete = Outcome::incomplete("shadow", crate::compare::Incomplete::Missing);
        let counted = counters.count("api", "httpbin/v2", &incomplete, 2);
        m.compared("api", "httpbin/v2", &counted, Some(("shadow", "missing")));
        let text = m.encode();
        let line = |l: &str| text.lines().any(|x| x == l);
        assert!(line("mirror_compare_total{route=\"api\",mirror=\"httpbin/v2\",result=\"different\"} 3"), "{text}");
        assert!(
            line("mirror_compare_differences_total{route=\"api\",mirror=\"httpbin/v2\",field=\"header:a\"} 2"),
            "{text}"
        );
        assert!(
            line("mirror_compare_differences_total{route=\"api\",mirror=\"httpbin/v2\",field=\"header:b\"} 1"),
            "{text}"
        );
        assert!(
            line("mirror_compare_differences_total{route=\"api\",mirror=\"httpbin/v2\",field=\"other\"} 1"),
            "{text}"
        );
        assert!(!text.contains("header:c"), "{text}");
        assert!(
            line(
                "mirror_compare_incomplete_total{route=\"api\",mirror=\"httpbin/v2\",side=\"shadow\",reason=\"missing\"} 1"
            ),
            "{text}"
        );
    }
}
