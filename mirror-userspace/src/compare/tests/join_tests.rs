//! Joining the sides of pairs, and settling them.

use std::time::{Duration, UNIX_EPOCH};

use crate::{
    compare::{
        CompareCounters, CompareResult, Incomplete, Response,
        join::{Expected, JoinStats, Joined, Joiner, settle},
    },
    config::CompareSettings,
    route::Name,
};

fn response(status: u16, body: &str) -> Response {
    Response::new(status, &[("Content-Type", "application/json")], body.as_bytes())
}

fn expected(baseline: bool) -> Expected {
    Expected {
        route: Name::new("api"),
        mirror: Name::new("httpbin/v2"),
        baseline: baseline.then(|| Name::new("httpbin/v1b")),
        method: "GET".into(),
        target: "/x".into(),
    }
}

const T0: Duration = Duration::from_secs(100);

#[test]
fn a_pair_goes_out_when_all_its_sides_came_in_any_order() {
    for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [2, 0, 1]] {
        let mut j = Joiner::new(Duration::from_secs(5), 10, 1 << 20);
        let mut out = Vec::new();
        assert!(j.expect(7, expected(true), T0));
        for side in order {
            assert!(out.is_empty());
            match side {
                0 => j.primary(7, Ok(response(200, "1")), &mut out),
                1 => j.mirror(7, "httpbin/v2", Ok(response(200, "2")), &mut out),
                _ => j.mirror(7, "httpbin/v1b", Ok(response(200, "3")), &mut out),
            }
        }
        assert_eq!(out.len(), 1);
        let Joined { primary, shadow, baseline, .. } = out.remove(0);
        assert_eq!(
            (primary.unwrap().body, shadow.unwrap().body, baseline.unwrap().unwrap().body),
            (b"1".to_vec(), b"2".to_vec(), b"3".to_vec())
        );
        assert_eq!(j.held(), (0, 0));
    }
}

#[test]
fn sides_missing_at_the_deadline_are_missing() {
    let mut j = Joiner::new(Duration::from_secs(5), 10, 1 << 20);
    let mut out = Vec::new();
    j.expect(1, expected(false), T0);
    j.expect(2, expected(true), T0 + Duration::from_secs(1));
    j.primary(1, Ok(response(200, "{}")), &mut out);
    j.mirror(2, "httpbin/v2", Err(Incomplete::Cut), &mut out);
    assert_eq!(j.poll_timeout(), Some(T0 + Duration::from_secs(5)));
    j.tick(T0 + Duration::from_millis(4_999), &mut out);
    assert!(out.is_empty());
    j.tick(T0 + Duration::from_secs(5), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].shadow, Err(Incomplete::Missing));
    assert!(out[0].baseline.is_none());
    j.tick(T0 + Duration::from_secs(60), &mut out);
    assert_eq!(
        (out[1].primary.clone(), out[1].shadow.clone(), out[1].baseline.clone()),
        (Err(Incomplete::Missing), Err(Incomplete::Cut), Some(Err(Incomplete::Missing)))
    );
    // A side after its pair left, a side of an unknown endpoint, a second copy: unmatched.
    j.primary(1, Ok(response(200, "{}")), &mut out);
    j.expect(3, expected(false), T0);
    j.mirror(3, "other", Ok(response(200, "{}")), &mut out);
    j.mirror(3, "httpbin/v2", Ok(response(200, "{}")), &mut out);
    j.mirror(3, "httpbin/v2", Ok(response(200, "{}")), &mut out);
    assert_eq!(j.stats(), JoinStats { refused: 0, unmatched: 3, timed_out: 2 });
}

#[test]
fn the_join_is_bounded_in_pairs_and_bytes() {
    let mut j = Joiner::new(Duration::from_secs(5), 2, 100);
    let mut out = Vec::new();
    assert!(j.expect(1, expected(false), T0));
    assert!(j.expect(2, expected(false), T0));
    assert!(!j.expect(3, expected(false), T0), "two pairs at most");
    assert!(!j.expect(1, expected(false), T0), "an id already waiting");
    j.primary(1, Ok(response(200, &"x".repeat(200))), &mut out);
    j.mirror(2, "httpbin/v2", Ok(response(200, "1")), &mut out);
    j.primary(2, Ok(response(200, "1")), &mut out);
    assert_eq!(out.len(), 1);
    assert!(!j.expect(4, expected(false), T0), "over the bytes");
    j.tick(T0 + Duration::from_secs(5), &mut out);
    assert_eq!(j.held(), (0, 0));
    assert!(j.expect(4, expected(false), T0));
    assert_eq!(j.stats().refused, 3);
}

#[test]
fn settling_compares_counts_and_records_only_differing_pairs() {
    let settings = CompareSettings::default();
    let mut counters = CompareCounters::default();
    let pair = |p: &str, s: &str, b: Option<&str>| Joined {
        expected: expected(b.is_some()),
        primary: Ok(response(200, p)),
        shadow: Ok(response(200, s)),
        baseline: b.map(|b| Ok(response(200, b))),
    };
    let t = UNIX_EPOCH + Duration::from_secs(1);
    let same = settle(&pair(r#"{"a": 1}"#, r#"{"a": 1.0}"#, None), &settings, &mut counters, t);
    assert_eq!((same.outcome.result, same.record.is_none()), (CompareResult::Same, true));
    let diff = settle(
        &pair(r#"{"a": 1, "t": 1}"#, r#"{"a": 2, "t": 3}"#, Some(r#"{"a": 1, "t": 2}"#)),
        &settings,
        &mut counters,
        t,
    );
    assert_eq!(diff.counted.fields, ["json:/a"]);
    let rec = diff.record.unwrap();
    assert_eq!(
        (rec["route"].as_str(), rec["target"].as_str(), rec["noise"][0].as_str()),
        (Some("api"), Some("/x"), Some("json:/t"))
    );
    let noise = settle(&pair(r#"{"t": 1}"#, r#"{"t": 3}"#, Some(r#"{"t": 2}"#)), &settings, &mut counters, t);
    assert_eq!((noise.outcome.result, noise.record.is_none()), (CompareResult::Noise, true));
    let missing = Joined { shadow: Err(Incomplete::Missing), ..pair("{}", "{}", None) };
    assert_eq!(settle(&missing, &settings, &mut counters, t).outcome.result, CompareResult::Incomplete);
    for (result, n) in [
        (CompareResult::Same, 1),
        (CompareResult::Different, 1),
        (CompareResult::Noise, 1),
        (CompareResult::Incomplete, 1),
    ] {
        assert_eq!(counters.result("api", "httpbin/v2", result), n);
    }
}
