//! The config loader on arbitrary bytes: it must never panic, and what it accepts must hold to
//! the ranges `run` relies on and build a router. libFuzzer's `-rss_limit_mb` and `-timeout`
//! bound its memory and time.
//!
//! The loader's pre-scan stands between the text and libyaml's time and memory, so it must never
//! count less than libyaml reads. For alias-free YAML that the pre-scan lets through, serde_yaml
//! is made to read every node: it must find no more nesting than twice the scan's depth (an
//! indentless sequence adds a level but no indentation) and no more nodes than two per token.
#![no_main]

use std::fmt;

use libfuzzer_sys::fuzz_target;
use mirror::{config::Config, route::Router};
use serde::de::{DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess, VariantAccess, Visitor};

/// Reads every node, counting them and the deepest nesting.
struct Measure<'a> {
    nodes: &'a mut usize,
    deepest: &'a mut usize,
    depth: usize,
}

impl Measure<'_> {
    fn nested(&mut self) -> Measure<'_> {
        Measure { nodes: self.nodes, deepest: self.deepest, depth: self.depth + 1 }
    }
}

impl<'de> DeserializeSeed<'de> for Measure<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Measure<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("anything")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        *self.nodes += 1;
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        *self.nodes += 1;
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        *self.nodes += 1;
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        *self.nodes += 1;
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        *self.nodes += 1;
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        *self.nodes += 1;
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        *self.nodes += 1;
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A tagged node (`!tag value`): the tag, then the value.
        let (_, value) = data.variant::<IgnoredAny>()?;
        value.newtype_variant_seed(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        *self.nodes += 1;
        *self.deepest = (*self.deepest).max(self.depth + 1);
        while seq.next_element_seed(self.nested())?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        *self.nodes += 1;
        *self.deepest = (*self.deepest).max(self.depth + 1);
        while map.next_key_seed(self.nested())?.is_some() {
            map.next_value_seed(self.nested())?;
        }
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) = Config::from_bytes(data, "fuzz.yaml") {
        // What `check` accepts, `run` can use.
        let r = &cfg.replay;
        assert!((1..=256).contains(&r.connections) && (1..=65_536).contains(&r.queue), "{r:?}");
        assert!((1..=600_000).contains(&r.connect_timeout_ms) && (1..=600_000).contains(&r.request_timeout_ms));
        assert!(r.buffer_bytes <= 64 << 20 && r.max_queued_bytes <= 1 << 30);
        assert!(cfg.capture.ports.iter().all(|p| *p != 0) && cfg.capture.ports.len() <= 64);
        assert!(cfg.capture.perf_pages.is_none_or(|p| p.is_power_of_two() && p <= 1024));
        assert!(cfg.route_count() <= 1_000);
        Router::new(&cfg).expect("a router from a checked config");
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(counts) = Config::scan(text) else { return };
    // With aliases, what serde_yaml reads is bounded by the loader's budget, not by the text.
    if text.contains('*') {
        return;
    }
    let (mut nodes, mut deepest) = (0, 0);
    for document in serde_yaml::Deserializer::from_str(text) {
        let measure = Measure { nodes: &mut nodes, deepest: &mut deepest, depth: 0 };
        if let Err(e) = measure.deserialize(document) {
            if e.to_string().starts_with("recursion limit exceeded") {
                // serde_yaml stops past 128 levels.
                deepest = deepest.max(129);
            }
            break;
        }
    }
    assert!(deepest <= 2 * counts.depth + 1, "serde_yaml nests {deepest} deep, the scan counted {counts:?}");
    assert!(
        nodes <= 2 * counts.tokens + counts.documents + 1,
        "serde_yaml read {nodes} nodes, the scan counted {counts:?}"
    );
});
