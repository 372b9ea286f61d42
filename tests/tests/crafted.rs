//! Issue 11 in namespaces: a request the primary never processed never reaches the mirror.
//!
//! Raw segments crafted with scapy in the client namespace (`tests/scripts/craft.py`), next to
//! genuine requests written through a real socket on the same connection: a copy with a bad
//! checksum, a data segment without ACK, an out-of-window RST, a daemon started in the middle of a
//! body, and a connection from a spoofed source. The primary is Linux's own TCP stack; each test
//! asserts exactly what the primary served (its access log) and what the mirror got (its access
//! log, after a settle time), the daemon's flow counters for the rule that applied, and that a
//! normal request on a fresh connection is still mirrored afterwards (the daemon is alive).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use mirror_tests::*;
use serde_json::Value;

/// The helper that crafts segments, run with `python3` inside the client namespace.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/craft.py")
}

fn primary() -> SocketAddr {
    format!("{PRIMARY_V4}:{PORT}").parse().unwrap()
}

/// Runs `craft.py` in the client namespace with `args` (split on whitespace) and then `extra`
/// (taken whole), and returns the JSON object it prints.
fn craft(topo: &Topology, args: &str, extra: &[&str]) -> Value {
    let script = script();
    let mut full = vec![script.to_str().expect("utf-8 path")];
    full.extend(args.split_whitespace());
    full.extend_from_slice(extra);
    let out = ns_run(&topo.client, "python3", &full).unwrap_or_else(|e| panic!("craft.py {args:?}: {e:#}"));
    let line = out.lines().last().unwrap_or_else(|| panic!("craft.py {args:?} printed nothing"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("craft.py output {line:?}: {e}"))
}

/// Asserts the script's genuine requests were each answered 200 by the primary, in this order.
fn assert_served(out: &Value, paths: &[&str]) {
    let got: Vec<(&str, u64, &str)> = out["responses"]
        .as_array()
        .unwrap_or_else(|| panic!("no responses: {out}"))
        .iter()
        .map(|r| (r["path"].as_str().unwrap(), r["status"].as_u64().unwrap(), r["served_by"].as_str().unwrap()))
        .collect();
    let want: Vec<(&str, u64, &str)> = paths.iter().map(|p| (*p, 200, "v1")).collect();
    assert_eq!(got, want, "responses the client read: {out}");
}

/// A normal request on a fresh connection, answered by the primary (and, the daemon being alive,
/// mirrored).
fn control(topo: &Topology, path: &str) {
    let req = vec![request("GET", path, &[], b"")];
    let r = topo.in_ns(&topo.client, move || exchange(primary(), &req)).unwrap().unwrap();
    assert_eq!((r[0].status, r[0].served_by.as_str()), (200, "v1"), "control {path}");
}

/// The request targets of a server's access log, in log order.
fn uris(log: &Path) -> Vec<String> {
    access_log(log).iter().map(|e| e["uri"].as_str().unwrap_or_default().to_string()).collect()
}

/// The primary's log, which the test's own requests filled synchronously.
fn primary_uris(topo: &Topology) -> Vec<String> {
    uris(&topo.path("v1.log"))
}

/// Waits until the mirror has `n` entries, then a settle time for any that should not come;
/// returns its request targets, sorted (replay order is not the client's).
fn mirror_uris(topo: &Topology, n: usize) -> Vec<String> {
    wait_for_entries(&topo.path("v2.log"), n, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(700) * slowdown());
    let mut v = uris(&topo.path("v2.log"));
    v.sort();
    v
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// A flow-layer counter of the daemon's summary (`"flows"` object: `FlowStats`).
fn flows(summary: &Value, name: &str) -> u64 {
    summary["flows"][name].as_u64().unwrap_or_else(|| panic!("no flows.{name} in the summary: {summary}"))
}

/// Nothing in the mirror's log mentions `needle` (an injected or phantom request).
fn assert_never_mirrored(topo: &Topology, needle: &str) {
    let entries = access_log(&topo.path("v2.log"));
    let hits: Vec<&Value> = entries.iter().filter(|e| e.to_string().contains(needle)).collect();
    assert!(hits.is_empty(), "the mirror got a request the primary never served: {hits:?}");
}

/// Case 1: a copy of the next request with other bytes and a bad TCP checksum, then the genuine
/// request. The primary's kernel drops the bad copy and serves the genuine one; the daemon sees two
/// different copies of the same unacknowledged bytes, so the range is a counted gap and the flow
/// is given up: the mirror gets neither (never the injected one), but the request before it.
#[test]
fn bad_checksum_copy_is_never_mirrored_and_the_conflict_is_a_counted_gap() {
    let topo = Topology::new().unwrap();
    let (_v1, _v2) = topo.servers().unwrap();
    let daemon = topo.daemon(&topo.config(100.0, "").unwrap()).unwrap();
    let t = Instant::now();
    let args = "inject --kind badsum --before /badsum/before --inject-path /INSERTED-badsum --after /badsum_real";
    let out = craft(&topo, args, &[]);
    println!("crafted: {}", out["injected"]);
    assert_served(&out, &["/badsum/before", "/badsum_real"]);
    control(&topo, "/badsum/control");
    let mirrored = mirror_uris(&topo, 2);
    let summary = topo.stop_daemon(daemon, libc::SIGINT).unwrap();
    println!("bad checksum: {:?}; flows {}", t.elapsed(), summary["flows"]);
    assert_eq!(primary_uris(&topo), ["/badsum/before", "/badsum_real", "/badsum/control"]);
    assert_never_mirrored(&topo, "INSERTED");
    assert_eq!(mirrored, sorted(&["/badsum/before", "/badsum/control"]), "{summary}");
    assert!(flows(&summary, "conflicting_copies") >= 1, "{summary}");
    assert!(flows(&summary, "gaps") >= 1, "{summary}");
    assert!(flows(&summary, "flows_given_up_gap") >= 1, "{summary}");
}

/// Case 2: a data segment without the ACK flag (Linux drops it on an established connection)
/// carrying another request, then the genuine one. The daemon ignores the segment, so there is no
/// conflict: the mirror gets the genuine request, never the injected one.
#[test]
fn data_segment_without_ack_is_ignored_and_the_real_request_mirrored() {
    let topo = Topology::new().unwrap();
    let (_v1, _v2) = topo.servers().unwrap();
    let daemon = topo.daemon(&topo.config(100.0, "").unwrap()).unwrap();
    let t = Instant::now();
    let args = "inject --kind noack --before /noack/before --inject-path /INSERTED-noack --after /noack_real";
    let out = craft(&topo, args, &[]);
    println!("crafted: {}", out["injected"]);
    assert_served(&out, &["/noack/before", "/noack_real"]);
    control(&topo, "/noack/control");
    let mirrored = mirror_uris(&topo, 3);
    let summary = topo.stop_daemon(daemon, libc::SIGINT).unwrap();
    println!("no ACK: {:?}; flows {}", t.elapsed(), summary["flows"]);
    assert_eq!(primary_uris(&topo), ["/noack/before", "/noack_real", "/noack/control"]);
    assert_never_mirrored(&topo, "INSERTED");
    assert_eq!(mirrored, sorted(&["/noack/before", "/noack_real", "/noack/control"]), "{summary}");
    assert!(flows(&summary, "segments_without_ack") >= 1, "{summary}");
    assert_eq!(flows(&summary, "conflicting_copies"), 0, "{summary}");
    assert_eq!(flows(&summary, "gaps"), 0, "{summary}");
    assert_eq!(flows(&summary, "flows_given_up_gap"), 0, "{summary}");
}

/// Case 3: an RST far out of the window in the middle of a POST body whose both halves hold
/// `DELETE /PHANTOM-after-bogus-rst HTTP/1.1` lines, then two more requests on the same
/// connection. Linux ignores the RST; so must the daemon (RFC 5961: only the exact next sequence
/// number closes): the mirror gets the POST, whole, and both requests, and no phantom.
#[test]
fn out_of_window_rst_neither_closes_the_flow_nor_makes_a_phantom() {
    let topo = Topology::new().unwrap();
    let (_v1, _v2) = topo.servers().unwrap();
    let daemon = topo.daemon(&topo.config(100.0, "").unwrap()).unwrap();
    let t = Instant::now();
    let args = "inject --kind rst --post-path /rst/post --after /rst/after1 --after /rst/after2";
    let out = craft(&topo, args, &["--phantom", "DELETE /PHANTOM-after-bogus-rst"]);
    println!("crafted: {} (primary's window {})", out["injected"], out["window"]);
    assert_served(&out, &["/rst/post", "/rst/after1", "/rst/after2"]);
    control(&topo, "/rst/control");
    let mirrored = mirror_uris(&topo, 4);
    let summary = topo.stop_daemon(daemon, libc::SIGINT).unwrap();
    println!("out-of-window RST: {:?}; flows {}", t.elapsed(), summary["flows"]);
    assert_eq!(primary_uris(&topo), ["/rst/post", "/rst/after1", "/rst/after2", "/rst/control"]);
    assert_never_mirrored(&topo, "PHANTOM");
    assert_eq!(mirrored, sorted(&["/rst/post", "/rst/after1", "/rst/after2", "/rst/control"]), "{summary}");
    // The POST reached the mirror whole: same method, length and digest as the primary's.
    let post = |log: &str| access_log(&topo.path(log)).into_iter().find(|e| e["uri"] == "/rst/post").unwrap();
    let (p, m) = (post("v1.log"), post("v2.log"));
    assert_eq!(p["body_len"], out["post_body_len"], "{p}");
    assert_eq!((&m["method"], &m["body_len"], &m["body_sha256"]), (&p["method"], &p["body_len"], &p["body_sha256"]));
    assert!(flows(&summary, "rst_ignored") >= 1, "{summary}");
    assert_eq!(flows(&summary, "closed_rst"), 0, "{summary}");
    assert_eq!(flows(&summary, "midstream"), 0, "{summary}");
    assert_eq!(flows(&summary, "gaps"), 0, "{summary}");
}

/// Case 4: the daemon starts while a large POST body is in flight; the rest of the body holds
/// `GET /phantom HTTP/1.1` lines, then a genuine request follows on the same connection. The
/// flow was picked up mid-stream, so it is given up: nothing of that connection is mirrored (never
/// the phantom), and the summary counts the give-up.
#[test]
fn daemon_started_mid_body_mirrors_nothing_of_that_connection() {
    let topo = Topology::new().unwrap();
    let (_v1, _v2) = topo.servers().unwrap();
    let config = topo.config(100.0, "").unwrap();
    let go = topo.path("go");
    let script = script();
    let args = [
        script.to_str().unwrap(),
        "midstream",
        "--post-path",
        "/midstream/post",
        "--phantom",
        "GET /phantom",
        "--next-path",
        "/midstream/after",
        "--body-bytes",
        "1048576",
        "--go-file",
        go.to_str().unwrap(),
    ];
    let mut client = topo.spawn(&topo.client, "craft-midstream", Path::new("python3"), &args).unwrap();
    client.wait_for_stderr("HALF-SENT", Duration::from_secs(20)).unwrap();
    let t = Instant::now();
    let daemon = topo.daemon(&config).unwrap();
    std::fs::write(&go, b"go").unwrap();
    let st = client.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(st.success(), "craft.py midstream exited with {st}: {}", client.stderr());
    let out: Value = serde_json::from_str(client.stdout().lines().last().expect("craft.py printed nothing")).unwrap();
    assert_served(&out, &["/midstream/post", "/midstream/after"]);
    control(&topo, "/midstream/control");
    let mirrored = mirror_uris(&topo, 1);
    let summary = topo.stop_daemon(daemon, libc::SIGINT).unwrap();
    println!("daemon started mid-body: {:?}; flows {}", t.elapsed(), summary["flows"]);
    assert_eq!(primary_uris(&topo), ["/midstream/post", "/midstream/after", "/midstream/control"]);
    let post = &access_log(&topo.path("v1.log"))[0];
    assert_eq!((&post["method"], &post["body_len"]), (&Value::from("POST"), &out["post_body_len"]), "{post}");
    assert_never_mirrored(&topo, "phantom");
    assert_eq!(mirrored, ["/midstream/control"], "{summary}");
    assert_eq!(flows(&summary, "midstream"), 1, "{summary}");
    assert_eq!(flows(&summary, "flows_given_up_midstream"), 1, "{summary}");
}

/// Case 5: SYN, ACK and data from 10.77.0.99, an address nobody owns: the primary's SYN-ACK can
/// never reach it, so the primary's TCP never accepts the data and never serves it. The daemon
/// sees the client's segments but no acknowledgement of them: it sends nothing, and counts the
/// bytes as never acknowledged.
#[test]
fn spoofed_source_the_primary_never_answers_is_never_mirrored() {
    let topo = Topology::new().unwrap();
    let (_v1, _v2) = topo.servers().unwrap();
    let daemon = topo.daemon(&topo.config(100.0, "").unwrap()).unwrap();
    let t = Instant::now();
    let out = craft(&topo, "spoof --spoof-src 10.77.0.99 --path /spoofed", &[]);
    println!("spoofed: {} (seen towards the spoofed address: {})", out["sent"], out["towards_spoofed"]);
    // The premise: nothing of the primary's TCP ever reached the spoofed address.
    assert_eq!(out["towards_spoofed"]["tcp"], Value::from(0), "{out}");
    control(&topo, "/spoof/control");
    let mirrored = mirror_uris(&topo, 1);
    let summary = topo.stop_daemon(daemon, libc::SIGINT).unwrap();
    println!("spoofed source: {:?}; flows {}", t.elapsed(), summary["flows"]);
    assert_eq!(primary_uris(&topo), ["/spoof/control"]);
    assert_never_mirrored(&topo, "spoofed");
    assert_eq!(mirrored, ["/spoof/control"], "{summary}");
    let payload = out["payload_len"].as_u64().unwrap();
    assert!(flows(&summary, "unacked_bytes") >= payload, "{summary}");
}
