//! Issue 15 in namespaces: the primary's responses (from the wire) compared with a candidate's
//! (v2) and a baseline copy of the primary's version (v1b), with no proxy. The test server
//! answers `/cmp/` paths as each version would (`--variant`): known differences on known paths,
//! exact counts per field, nothing on identical paths, the baseline cancelling a per-response
//! timestamp, an identical body gzip-encoded on one side only being the same.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use mirror_tests::*;
use serde_json::Value;

const PATHS: [&str; 9] = ["same", "status", "header", "json", "order", "gzip", "time", "big", "cookie"];
/// Requests per path (each path on its own kept-alive connection).
const N: usize = 3;

fn series(kind: &str, label: &str, value: &str) -> String {
    format!("mirror_compare_{kind}{{route=\"cmp\",mirror=\"httpbin/v2\",{label}=\"{value}\"}}")
}

/// The three versions: the primary v1, the candidate v2 and the baseline v1b (a second copy of
/// v1) in the mirror namespace.
fn versions(topo: &Topology) -> [Proc; 3] {
    [
        topo.httpbin(&topo.primary, "v1", &format!("[::]:{PORT}"), &["--variant", "v1"]).unwrap(),
        topo.httpbin(&topo.mirror, "v2", &format!("{MIRROR_V4}:{PORT}"), &["--variant", "v2"]).unwrap(),
        topo.httpbin(&topo.mirror, "v1b", &format!("{MIRROR_V4}:8001"), &["--variant", "v1b"]).unwrap(),
    ]
}

/// Writes the config: v2 and v1b mirrored every request; `compare` (with a log file, if given)
/// or not.
fn write_config(topo: &Topology, compare: Option<&std::path::Path>) -> std::path::PathBuf {
    let policy = match compare {
        Some(log) => format!(
            "mirrorPolicies:\n  httpbin/v2:\n    compare:\n      ignoreHeaders: [x-served-by]\n      baseline: httpbin/v1b\n      maxBodyBytes: 4194304\n      log: {}\n",
            log.display()
        ),
        None => String::new(),
    };
    let config = topo.path("compare.yaml");
    std::fs::write(
        &config,
        format!(
            "capture: {{interfaces: [{PRIMARY_IFACE}], ports: [{PORT}]}}
routes:
  - name: cmp
    mirrors:
      - destination: {{host: httpbin, subset: v2}}
      - destination: {{host: httpbin, subset: v1b}}
endpoints:
  httpbin/v2: [\"{MIRROR_V4}:{PORT}\"]
  httpbin/v1b: [\"{MIRROR_V4}:8001\"]
{policy}"
        ),
    )
    .unwrap();
    config
}

/// `N` GETs of each of `paths` from the client, one kept-alive connection per path.
fn send(topo: &Topology, paths: &[&str]) {
    let primary: SocketAddr = format!("{PRIMARY_V4}:{PORT}").parse().unwrap();
    for path in paths {
        let reqs: Vec<Vec<u8>> = (0..N).map(|i| request("GET", &format!("/cmp/{path}?i={i}"), &[], b"")).collect();
        let got = topo.in_ns(&topo.client, move || exchange(primary, &reqs)).unwrap().unwrap();
        assert!(got.iter().all(|r| r.status == 200), "the primary answers as v1: {path}");
    }
}

/// Scrapes the metrics until `total` pairs are settled (or 15 s passed).
fn settled(topo: &Topology, total: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = scrape_metrics(topo).unwrap();
        let settled: f64 = ["same", "different", "noise", "incomplete"]
            .iter()
            .map(|r| metric(&text, &series("total", "result", r)))
            .sum();
        if settled >= total || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn responses_are_compared_with_exact_counts_per_field() {
    let topo = Topology::new().unwrap();
    // /big's responses must come as skbs larger than one perf sample, on a slow VM too: at least
    // 44 segments where the windows allow, and 2 MB each so that they grow (an skb is at most half
    // the largest window the client offered, 64 KB at first).
    topo.large_skbs(&topo.primary).unwrap();
    let _servers = versions(&topo);
    let log = topo.path("differences.jsonl");
    let daemon = topo.daemon(&write_config(&topo, Some(&log))).unwrap();
    send(&topo, &PATHS);
    // Every pair is settled once all three sides are in.
    let text = settled(&topo, (PATHS.len() * N) as f64);
    let summary = topo.stop_daemon(daemon, libc::SIGINT).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("mirror_compare")).collect();
    println!("{}\n{summary}", lines.join("\n"));
    let n = N as f64;
    let result = |r: &str| metric(&text, &series("total", "result", r));
    // same: /same, /gzip (gzip on one side only) and /big (2 MB); different: status, header, json, order;
    // noise: time (differs on every response, and between the primary and its baseline copy).
    assert_eq!(
        (result("same"), result("different"), result("noise"), result("incomplete")),
        (3.0 * n, 5.0 * n, n, 0.0),
        "{lines:#?}\n{summary}"
    );
    let field = |f: &str| metric(&text, &series("differences_total", "field", f));
    for f in ["status", "header:x-version", "json:/count", "json:/items/*", "header:set-cookie"] {
        assert_eq!(field(f), n, "{f}: {lines:#?}");
    }
    let fields = lines.iter().filter(|l| l.starts_with("mirror_compare_differences_total{")).count();
    assert_eq!(fields, 5, "no other field differs: {lines:#?}");

    // The log: one record per differing pair, none for the identical paths.
    let records: Vec<Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 5 * N, "{records:#?}");
    for r in &records {
        let target = r["target"].as_str().unwrap();
        let differing = ["status", "header", "json", "order", "cookie"];
        assert!(differing.iter().any(|p| target.starts_with(&format!("/cmp/{p}?"))), "{r}");
        assert_eq!((r["route"].as_str(), r["mirror"].as_str()), (Some("cmp"), Some("httpbin/v2")), "{r}");
    }
    let status = records.iter().find(|r| r["target"].as_str().unwrap().starts_with("/cmp/status")).unwrap();
    assert_eq!((status["primary"]["status"].as_u64(), status["shadow"]["status"].as_u64()), (Some(200), Some(500)));
    // A credential that differs is counted, never written.
    let text_log = std::fs::read_to_string(&log).unwrap();
    assert!(!text_log.contains("secret-v"), "a set-cookie value reached the log");
    let cookie = records.iter().find(|r| r["target"].as_str().unwrap().starts_with("/cmp/cookie")).unwrap();
    let diff = &cookie["differences"][0];
    assert_eq!(
        (diff["field"].as_str(), diff["primary"].as_str(), diff["shadow"].as_str()),
        (Some("header:set-cookie"), Some("[redacted]"), Some("[redacted]")),
        "{cookie}"
    );

    // The exit summary says the same, and nothing was lost on the way.
    let pairs = &summary["compare"]["pairs"]["cmp/httpbin/v2"];
    assert_eq!(pairs["same"], Value::from(3 * N), "{summary}");
    assert_eq!(pairs["fields"]["json:/items/*"], Value::from(N), "{summary}");
    assert_eq!(summary["compare"]["join"]["timed_out"], Value::from(0), "{summary}");
    assert_eq!(summary["compare"]["channel_dropped"], Value::from(0), "{summary}");
    assert!(summary["kernel"]["reverse_shipped"].as_u64().unwrap() > 0, "{summary}");
    // /big's responses outgrow one perf sample: their rest came as reverse tails (no request
    // here is that large), and nothing was lost.
    assert!(summary["kernel"]["tail_pieces"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(summary["kernel"]["truncated"], Value::from(0), "{summary}");
    assert_eq!(summary["flows"]["response_gaps"], Value::from(0), "{summary}");
}

/// Comparing is switched on by a reload (SIGHUP): before it, the primary's responses are not
/// shipped and nothing is compared; after it, connections opened from then on are.
#[test]
fn a_reload_turns_comparing_on() {
    let topo = Topology::new().unwrap();
    let _servers = versions(&topo);
    let mut daemon = topo.daemon(&write_config(&topo, None)).unwrap();
    send(&topo, &["json"]);
    std::thread::sleep(Duration::from_millis(300));
    let before = scrape_metrics(&topo).unwrap();
    assert!(!before.lines().any(|l| l.starts_with("mirror_compare_total{")), "nothing compared yet");

    write_config(&topo, Some(&topo.path("differences.jsonl")));
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_stderr("reloaded", Duration::from_secs(10)).unwrap();
    // The capture thread takes the reload at its next round.
    std::thread::sleep(Duration::from_millis(300));
    send(&topo, &["json", "same"]);
    let text = settled(&topo, (2 * N) as f64);
    let summary = topo.stop_daemon(daemon, libc::SIGINT).unwrap();
    let n = N as f64;
    let result = |r: &str| metric(&text, &series("total", "result", r));
    assert_eq!((result("same"), result("different"), result("incomplete")), (n, n, 0.0), "{text}\n{summary}");
    assert_eq!(metric(&text, &series("differences_total", "field", "json:/count")), n);
    assert_eq!(summary["compare"]["join"]["unmatched"], Value::from(0), "{summary}");
}

/// Sampled below 100%, the baseline takes its destination's decision: every request compared
/// has its baseline side (the timestamp that differs on every response is noise each time, never
/// a difference or incomplete), and only a share of the requests is compared.
#[test]
fn a_sampled_destination_and_its_baseline_get_the_same_requests() {
    let topo = Topology::new().unwrap();
    let _servers = versions(&topo);
    let config = write_config(&topo, Some(&topo.path("differences.jsonl")));
    let mut sampled = std::fs::read_to_string(&config).unwrap();
    for v in ["v2", "v1b"] {
        let line = format!("subset: {v}}}\n");
        sampled = sampled.replace(&line, &format!("{line}        percentage: {{value: 50}}\n"));
    }
    std::fs::write(&config, &sampled).unwrap();
    assert!(sampled.matches("percentage: {value: 50}").count() == 2, "{sampled}");
    let daemon = topo.daemon(&config).unwrap();
    let primary: SocketAddr = format!("{PRIMARY_V4}:{PORT}").parse().unwrap();
    let total = 40;
    let reqs: Vec<Vec<u8>> = (0..total).map(|i| request("GET", &format!("/cmp/time?i={i}"), &[], b"")).collect();
    let got = topo.in_ns(&topo.client, move || exchange(primary, &reqs)).unwrap().unwrap();
    assert_eq!(got.len(), total);
    // Both mirrored exactly as many requests (the sampler's share), and each pair settles.
    let mirrored = |text: &str, m: &str| {
        metric(text, &format!("mirror_requests_mirrored_total{{route=\"cmp\",mirror=\"httpbin/{m}\"}}"))
    };
    // The metrics are published once per capture round: wait until the count is in and still.
    let (mut last, deadline) = (-1.0, Instant::now() + Duration::from_secs(10));
    let first = loop {
        std::thread::sleep(Duration::from_millis(300));
        let text = scrape_metrics(&topo).unwrap();
        let now = mirrored(&text, "v2");
        if (now > 0.0 && now == last) || Instant::now() > deadline {
            break text;
        }
        last = now;
    };
    assert_eq!(mirrored(&first, "v2"), mirrored(&first, "v1b"), "{first}");
    let text = settled(&topo, mirrored(&first, "v2"));
    let summary = topo.stop_daemon(daemon, libc::SIGINT).unwrap();
    let result = |r: &str| metric(&text, &series("total", "result", r));
    let noise = result("noise");
    assert_eq!((result("same"), result("different"), result("incomplete")), (0.0, 0.0, 0.0), "{text}\n{summary}");
    // 40 requests at 50%: all or none compared has odds of 2^-39.
    assert!(noise > 0.0 && noise < total as f64, "{noise} of {total} compared: {text}");
    assert_eq!(noise, mirrored(&text, "v2"), "{text}");
}
