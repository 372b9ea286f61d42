//! Records (redaction, bounds), the log (rate limit, rotation) and the counters (cardinality cap).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::{
    compare::{
        CompareCounters, CompareResult, PointerPattern, Response, compare,
        counters::OTHER,
        log::{DiffLog, Logged, RateLimit, rotated},
        record::{PairInfo, REDACTED, record, rfc3339},
    },
    config::{CompareSettings, LogSettings},
};

fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
    Response::new(status, headers, body.as_bytes())
}

fn info(target: &str) -> PairInfo<'_> {
    PairInfo {
        time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        route: "api",
        mirror: "httpbin/v2",
        method: "GET",
        target,
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mirror-compare-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_record_has_both_sides_and_every_difference_and_never_a_credential() {
    let ct = ("Content-Type", "application/json");
    let p = response(
        200,
        &[ct, ("Set-Cookie", "sid=primary-secret"), ("X-Api-Key", "k1"), ("X-V", "1")],
        r#"{"user": {"email": "a@x", "name": "a"}, "token": "t1", "n": 1}"#,
    );
    let s = response(
        201,
        &[ct, ("Set-Cookie", "sid=shadow-secret"), ("X-Api-Key", "k2"), ("X-V", "2")],
        r#"{"user": {"email": "b@x", "name": "b"}, "token": "t2", "n": 2}"#,
    );
    let settings = CompareSettings {
        redact_headers: vec!["x-api-key".into()],
        redact_json_paths: vec![
            PointerPattern::parse("/token").unwrap(),
            PointerPattern::parse("/user/email").unwrap(),
        ],
        ..CompareSettings::default()
    };
    let o = compare(Ok(&p), Ok(&s), None, &settings);
    let rec = record(&info("/users?id=1"), &p, &s, &o, &settings);
    let text = rec.to_string();
    for secret in ["primary-secret", "shadow-secret", "k1", "k2", "t1", "t2", "a@x", "b@x"] {
        assert!(!text.contains(secret), "{secret} written: {text}");
    }
    assert_eq!(rec["time"], "2023-11-14T22:13:20.123Z");
    assert_eq!(
        (rec["route"].clone(), rec["mirror"].clone(), rec["method"].clone()),
        (json!("api"), json!("httpbin/v2"), json!("GET"))
    );
    assert_eq!(rec["target"], "/users?id=1");
    assert_eq!(rec["result"], "different");
    assert_eq!(rec["primary"]["status"], 200);
    assert_eq!(rec["shadow"]["body_len"], s.body.len() as u64);
    assert_eq!(rec["shadow"]["body_sha256"].as_str().unwrap().len(), 64);
    let diffs: Vec<(String, Value, Value)> = rec["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["field"].as_str().unwrap().to_string(), d["primary"].clone(), d["shadow"].clone()))
        .collect();
    let r = || json!(REDACTED);
    assert_eq!(
        diffs,
        vec![
            ("status".into(), json!(200), json!(201)),
            ("header:set-cookie".into(), r(), r()),
            ("header:x-api-key".into(), r(), r()),
            ("header:x-v".into(), json!("1"), json!("2")),
            ("json:/n".into(), json!(1), json!(2)),
            ("json:/token".into(), r(), r()),
            ("json:/user/email".into(), r(), r()),
            ("json:/user/name".into(), json!("a"), json!("b")),
        ]
    );
    // A redacted field inside a differing value is masked too.
    let p2 = response(200, &[ct], r#"{"user": {"email": "a@x"}}"#);
    let s2 = response(200, &[ct], r#"{"user": null}"#);
    let o = compare(Ok(&p2), Ok(&s2), None, &settings);
    let rec = record(&info("/"), &p2, &s2, &o, &settings);
    assert_eq!(rec["differences"][0]["primary"], json!({"email": REDACTED}));
}

#[test]
fn long_values_and_targets_are_cut() {
    let long = "x".repeat(10_000);
    let p = response(200, &[("X-Long", &long)], "");
    let s = response(200, &[], "");
    let o = compare(Ok(&p), Ok(&s), None, &CompareSettings::default());
    let rec = record(&info(&format!("/{long}")), &p, &s, &o, &CompareSettings::default());
    assert!(rec.to_string().len() < 4_000, "{}", rec.to_string().len());
    assert!(rec["differences"][0]["primary"].as_str().unwrap().ends_with('…'));
}

#[test]
fn rfc3339_is_utc_to_the_millisecond() {
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000Z");
    assert!(rfc3339(SystemTime::now()).starts_with("20"));
}

#[test]
fn the_rate_limit_lets_a_burst_through_then_the_rate() {
    let t0 = Instant::now();
    let mut r = RateLimit::new(10);
    assert_eq!((0..15).filter(|_| r.take(t0)).count(), 10);
    assert!(!r.take(t0 + Duration::from_millis(50)));
    assert!(r.take(t0 + Duration::from_millis(100)));
    // Idle for a long time: a full burst again, no more.
    assert_eq!((0..15).filter(|_| r.take(t0 + Duration::from_secs(60))).count(), 10);
}

#[test]
fn the_log_rotates_at_its_size_keeps_its_files_and_limits_its_rate() {
    let dir = temp_dir("rotate");
    let path = dir.join("diff.jsonl");
    let settings = LogSettings { path: path.clone(), max_bytes: 1_000, files: 3, per_second: 5 };
    let mut log = DiffLog::open(&settings).unwrap();
    let rec = json!({"pad": "y".repeat(180)});
    let line = rec.to_string().len() as u64 + 1;
    let t0 = Instant::now();
    let mut written = 0;
    for i in 0..100u64 {
        // 5 per second: one every 200 ms gets through; a burst at each second is limited.
        let now = t0 + Duration::from_millis(i * 100);
        if log.write(&rec, now).unwrap() == Logged::Written {
            written += 1;
        }
    }
    let stats = log.stats();
    assert_eq!(stats.written, written);
    assert!((50..=56).contains(&written), "{written} written of 100 at 10/s with 5/s allowed");
    assert_eq!(stats.rate_limited, 100 - written);
    // 1,000 bytes hold 5 lines; 3 files are kept.
    let per_file = 1_000 / line;
    assert_eq!(stats.rotations, (written - 1) / per_file);
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    assert!(size(&path) <= 1_000 && size(&path) > 0);
    assert_eq!(size(&rotated(&path, 1)), per_file * line);
    assert_eq!(size(&rotated(&path, 2)), per_file * line);
    assert!(!rotated(&path, 3).exists(), "only 3 files kept");
    for p in [path.clone(), rotated(&path, 1)] {
        for l in std::fs::read_to_string(&p).unwrap().lines() {
            assert_eq!(serde_json::from_str::<Value>(l).unwrap(), rec);
        }
    }
    // Reopened: the size so far counts.
    drop(log);
    let before = size(&path);
    let mut log = DiffLog::open(&settings).unwrap();
    log.write(&rec, t0).unwrap();
    assert_eq!(size(&path), if before + line > 1_000 { line } else { before + line });
    // A record larger than the file may be is not written.
    assert_eq!(log.write(&json!({"pad": "z".repeat(2_000)}), t0 + Duration::from_secs(9)).unwrap(), Logged::TooLarge);
    // One file: truncated in place.
    let one = LogSettings { path: dir.join("one.jsonl"), files: 1, ..settings };
    let mut log = DiffLog::open(&one).unwrap();
    for i in 0..20 {
        log.write(&rec, t0 + Duration::from_secs(i)).unwrap();
    }
    assert!(size(&one.path) <= 1_000 && !rotated(&one.path, 1).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn field_names_are_capped_per_route_then_counted_as_other() {
    let mut c = CompareCounters::default();
    let settings = CompareSettings::default();
    let ct = ("Content-Type", "application/json");
    let mut other_total = 0;
    for i in 0..10 {
        let p = response(200, &[ct], &format!(r#"{{"k{i}": 1}}"#));
        let s = response(200, &[ct], &format!(r#"{{"k{i}": 2}}"#));
        let o = compare(Ok(&p), Ok(&s), None, &settings);
        let counted = c.count("api", "m", &o, 3);
        other_total += counted.fields.iter().filter(|f| *f == OTHER).count();
        // Another route has its own cap.
        c.count("web", "m", &o, 3);
    }
    assert_eq!(other_total, 7);
    let fields: Vec<(String, String, u64)> = c.fields().map(|f| (f.route, f.field, f.count)).collect();
    assert_eq!(fields.iter().filter(|f| f.0 == "api").count(), 4, "{fields:?}");
    assert!(fields.contains(&("api".into(), "json:/k0".into(), 1)));
    assert!(fields.contains(&("api".into(), OTHER.into(), 7)));
    assert!(fields.contains(&("web".into(), OTHER.into(), 7)));
    // A name already counted keeps its label past the cap.
    let p = response(200, &[ct], r#"{"k1": 1}"#);
    let s = response(200, &[ct], r#"{"k1": 5}"#);
    let counted = c.count("api", "m", &compare(Ok(&p), Ok(&s), None, &settings), 3);
    assert_eq!(counted.fields, ["json:/k1"]);
    assert_eq!(c.result("api", "m", CompareResult::Different), 11);
    assert_eq!(c.summary()["api/m"]["different"], 11);
}
