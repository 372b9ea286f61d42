//! Comparing pairs: status, headers, bodies (decoded), JSON structurally, baselines.

use std::io::Write;

use flate2::{
    Compression,
    write::{GzEncoder, ZlibEncoder},
};
use serde_json::json;

use crate::{
    compare::{
        CompareResult, Incomplete, PointerPattern, Response, compare,
        diff::{Field, Outcome},
    },
    config::CompareSettings,
};

fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Response {
    Response::new(status, headers, body)
}

fn json_response(body: &str) -> Response {
    response(200, &[("Content-Type", "application/json; charset=utf-8")], body.as_bytes())
}

fn fields(o: &Outcome) -> Vec<String> {
    o.differences.iter().map(|d| d.field.to_string()).collect()
}

fn two(p: &Response, s: &Response, settings: &CompareSettings) -> Outcome {
    compare(Ok(p), Ok(s), None, settings)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn identical_responses_are_the_same() {
    let r = response(200, &[("Content-Type", "text/plain"), ("X-A", "1")], b"hello");
    let o = two(&r, &r.clone(), &CompareSettings::default());
    assert_eq!((o.result, o.differences.len()), (CompareResult::Same, 0));
}

#[test]
fn status_and_headers_differ_by_name_case_insensitively_minus_ignored_ones() {
    let p = response(
        200,
        &[("X-Version", "1"), ("Date", "Mon"), ("Server", "a"), ("Connection", "x-hop"), ("X-Hop", "1")],
        b"",
    );
    let s = response(500, &[("x-version", "2"), ("date", "Tue"), ("server", "b"), ("X-New", "yes")], b"");
    let settings = CompareSettings { ignore_headers: vec!["server".into()], ..CompareSettings::default() };
    let o = two(&p, &s, &settings);
    assert_eq!(o.result, CompareResult::Different);
    // Date always, server by config, x-hop nominated by Connection: none of them.
    assert_eq!(fields(&o), ["status", "header:x-new", "header:x-version"]);
    assert_eq!(o.differences[0].primary, Some(json!(200)));
    assert_eq!(o.differences[1].primary, None);
    assert_eq!(o.differences[2].shadow, Some(json!("2")));
    // Same values under names of another case, with repeated lines joined in order.
    let a = response(200, &[("X-A", "1"), ("x-a", "2")], b"");
    let b = response(200, &[("x-A", "1"), ("X-a", "2")], b"");
    assert_eq!(two(&a, &b, &CompareSettings::default()).result, CompareResult::Same);
}

#[test]
fn a_body_gzip_encoded_on_one_side_only_is_the_same() {
    let plain = b"{\"a\": [1, 2, 3], \"b\": \"text\"}".repeat(20);
    let p = response(200, &[("Content-Type", "application/json"), ("Content-Length", "600")], &plain);
    let zipped = gzip(&plain);
    let s = response(200, &[("Content-Type", "application/json"), ("Content-Encoding", "gzip")], &zipped);
    // Not JSON (documents one after another): compared by bytes, decoded: the same.
    assert_eq!(two(&p, &s, &CompareSettings::default()).result, CompareResult::Same);
    let doc = br#"{"a": [1, 2, 3], "b": "text"}"#;
    let p = response(200, &[("Content-Type", "application/json")], doc);
    let s = response(200, &[("Content-Type", "application/json"), ("Content-Encoding", "gzip")], &gzip(doc));
    assert_eq!(two(&p, &s, &CompareSettings::default()).result, CompareResult::Same);
    // Text by bytes, deflate (zlib-wrapped) on one side.
    let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
    z.write_all(&plain).unwrap();
    let p = response(200, &[], &plain);
    let s = response(200, &[("Content-Encoding", "deflate")], &z.finish().unwrap());
    assert_eq!(two(&p, &s, &CompareSettings::default()).result, CompareResult::Same);
}

#[test]
fn a_compressed_body_that_inflates_past_the_limit_is_incomplete() {
    let big = vec![b'a'; 4 << 20];
    let s = response(200, &[("Content-Encoding", "gzip")], &gzip(&big));
    assert!(s.body.len() < 10_000);
    let settings = CompareSettings { max_body_bytes: 1 << 20, ..CompareSettings::default() };
    let o = two(&response(200, &[], b"a"), &s, &settings);
    assert_eq!((o.result, o.incomplete), (CompareResult::Incomplete, Some(("shadow", Incomplete::TooLarge))));
}

#[test]
fn json_key_order_and_number_formatting_do_not_matter() {
    let p = json_response(r#"{"a": 1, "b": {"x": 2.50, "y": [1, 2]}, "c": 1e3}"#);
    let s = json_response(r#"{"c": 1000, "b": {"y": [1.0, 2], "x": 2.5}, "a": 1.0}"#);
    let o = two(&p, &s, &CompareSettings::default());
    assert_eq!(o.result, CompareResult::Same, "{o:?}");
}

#[test]
fn array_order_matters_and_is_named_with_indexes_collapsed() {
    let p = json_response(r#"{"items": [{"id": 1}, {"id": 2}], "n": 2}"#);
    let s = json_response(r#"{"items": [{"id": 2}, {"id": 1}], "n": 2}"#);
    let o = two(&p, &s, &CompareSettings::default());
    assert_eq!(fields(&o), ["json:/items/*/id"]);
    // The first differing element's values.
    assert_eq!((o.differences[0].primary.clone(), o.differences[0].shadow.clone()), (Some(json!(1)), Some(json!(2))));
    // A missing element, a missing key, a changed type.
    let s = json_response(r#"{"items": [{"id": 1}], "n": "2", "extra": null}"#);
    let o = two(&p, &s, &CompareSettings::default());
    assert_eq!(fields(&o), ["json:/extra", "json:/items/*", "json:/n"]);
    assert_eq!(o.differences[0].primary, None);
    assert_eq!(o.differences[0].shadow, Some(json!(null)));
}

#[test]
fn ignored_json_paths_leave_fields_out_with_star_for_any_segment() {
    let p = json_response(r#"{"timestamp": 1, "items": [{"id": "a", "v": 1}], "meta": {"t": 1}}"#);
    let s = json_response(r#"{"timestamp": 2, "items": [{"id": "b", "v": 1}], "meta": {"t": 2}}"#);
    let patterns = ["/timestamp", "/items/*/id", "/meta"].map(|p| PointerPattern::parse(p).unwrap()).to_vec();
    let settings = CompareSettings { ignore_json_paths: patterns, ..CompareSettings::default() };
    assert_eq!(two(&p, &s, &settings).result, CompareResult::Same);
    assert_eq!(
        fields(&two(&p, &s, &CompareSettings::default())),
        ["json:/items/*/id", "json:/meta/t", "json:/timestamp"]
    );
}

#[test]
fn other_bodies_compare_by_bytes_with_the_first_differing_offset() {
    let p = response(200, &[("Content-Type", "text/html")], b"<p>hello world</p>");
    let s = response(200, &[("Content-Type", "text/html")], b"<p>hello there</p>");
    let o = two(&p, &s, &CompareSettings::default());
    assert_eq!(fields(&o), ["body"]);
    let d = &o.differences[0];
    assert_eq!(d.offset, Some(9));
    let expected = format!("18 bytes, sha256 {}", crate::compare::body::sha256_hex(b"<p>hello world</p>"));
    assert_eq!(d.primary, Some(json!(expected)));
    // JSON on one side only: bytes.
    let j = json_response("{}");
    let not_json = response(200, &[("Content-Type", "application/json; charset=utf-8")], b"not json");
    assert_eq!(fields(&two(&j, &not_json, &CompareSettings::default())), ["body"]);
}

#[test]
fn a_baseline_cancels_what_differs_between_the_primary_and_it() {
    let p = json_response(r#"{"timestamp": 100, "value": "a"}"#);
    let b = json_response(r#"{"timestamp": 101, "value": "a"}"#);
    let s = json_response(r#"{"timestamp": 102, "value": "a"}"#);
    let settings = CompareSettings::default();
    let o = compare(Ok(&p), Ok(&s), Some(Ok(&b)), &settings);
    assert_eq!(
        (o.result, o.noise.clone()),
        (CompareResult::Noise, vec![Field::Json(crate::compare::Pointer::root().child("timestamp"))])
    );
    // A real difference beside the noise is reported, the noise is not.
    let s = json_response(r#"{"timestamp": 102, "value": "b"}"#);
    let o = compare(Ok(&p), Ok(&s), Some(Ok(&b)), &settings);
    assert_eq!((o.result, fields(&o)), (CompareResult::Different, vec!["json:/value".to_string()]));
    // Without the baseline, the timestamp differs.
    assert_eq!(fields(&two(&p, &s, &settings)), ["json:/timestamp", "json:/value"]);
}

#[test]
fn a_missing_cut_or_oversized_side_is_incomplete() {
    let r = response(200, &[], b"abc");
    let settings = CompareSettings { max_body_bytes: 2, ..CompareSettings::default() };
    let o = compare(Ok(&r), Ok(&r), None, &settings);
    assert_eq!(o.incomplete, Some(("primary", Incomplete::TooLarge)));
    let settings = CompareSettings::default();
    let o = compare(Ok(&r), Err(Incomplete::Missing), None, &settings);
    assert_eq!((o.result, o.incomplete), (CompareResult::Incomplete, Some(("shadow", Incomplete::Missing))));
    let cut = Response { cut: Some(Incomplete::Gap), ..r.clone() };
    assert_eq!(compare(Ok(&cut), Ok(&r), None, &settings).incomplete, Some(("primary", Incomplete::Gap)));
    assert_eq!(
        compare(Ok(&r), Ok(&r), Some(Err(Incomplete::Cut)), &settings).incomplete,
        Some(("baseline", Incomplete::Cut))
    );
}

#[test]
fn pointers_escape_and_patterns_parse_as_rfc_6901_says() {
    let p = crate::compare::Pointer::root().child("a/b").child("~c").child("*");
    assert_eq!(p.to_string(), "/a~1b/~0c/*");
    assert!(PointerPattern::parse("/a~1b/*").unwrap().matches(&p));
    assert!(PointerPattern::parse("").unwrap().matches(&p));
    assert!(!PointerPattern::parse("/a~1b/~0d").unwrap().matches(&p));
    assert!(PointerPattern::parse("a").is_err());
    assert!(PointerPattern::parse("/a~2").is_err());
}

#[test]
fn differences_are_bounded_per_pair() {
    let names: Vec<String> = (0..100).map(|i| format!("x-h{i:03}")).collect();
    let p = response(200, &names.iter().map(|n| (n.as_str(), "1")).collect::<Vec<_>>(), b"");
    let s = response(200, &names.iter().map(|n| (n.as_str(), "2")).collect::<Vec<_>>(), b"");
    let o = two(&p, &s, &CompareSettings::default());
    assert_eq!((o.differences.len(), o.truncated), (crate::compare::diff::MAX_DIFFERENCES, true));
    let big: String = format!("{{{}}}", (0..200).map(|i| format!("\"k{i}\": {i}")).collect::<Vec<_>>().join(","));
    let o = two(&json_response(&big), &json_response("{}"), &CompareSettings::default());
    assert_eq!((o.differences.len(), o.truncated), (crate::compare::diff::MAX_DIFFERENCES, true));
}
