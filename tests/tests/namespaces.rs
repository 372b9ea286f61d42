//! End-to-end tests in network namespaces: a real kernel, the real classifier, real servers.
//! They need root and fail (never skip) without it.

use std::{net::SocketAddr, time::Duration};

use mirror_tests::*;
use serde_json::Value;

fn primary_v4() -> SocketAddr {
    format!("{PRIMARY_V4}:{PORT}").parse().unwrap()
}

fn headers_of(entry: &Value) -> Vec<(String, String)> {
    serde_json::from_value(entry["headers"].clone()).unwrap()
}

/// The primary's log entry and the mirror's must agree on everything but Host.
fn assert_same_request(primary: &Value, mirror: &Value) {
    for field in ["method", "uri", "version", "body_len", "body_sha256"] {
        assert_eq!(primary[field], mirror[field], "{field} differs");
    }
    assert_eq!(mirror["host"], Value::from(format!("httpbin-shadow:{PORT}")));
    let strip_host = |h: Vec<(String, String)>| h.into_iter().filter(|(k, _)| k != "host").collect::<Vec<_>>();
    assert_eq!(strip_host(headers_of(primary)), strip_host(headers_of(mirror)), "headers other than Host differ");
}

#[test]
fn get_and_post_are_mirrored_byte_identical_with_host_rewritten() {
    let topo = Topology::new().unwrap();
    let (_v1, _v2) = topo.servers().unwrap();
    let daemon = topo.daemon(&topo.config(100.0, "").unwrap()).unwrap();

    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let requests = vec![
        request("GET", "/get?x=1", &[("User-Agent", "mirror-test"), ("X-Trace", "abc")], b""),
        request("POST", "/post", &[("Content-Type", "application/octet-stream")], &body),
        request("PUT", "/put", &[("X-Empty", "")], b"small"),
    ];
    let responses = topo.in_ns(&topo.client, move || exchange(primary_v4(), &requests)).unwrap().unwrap();
    assert!(responses.iter().all(|r| r.status == 200 && r.served_by == "v1"), "{responses:?}");

    let mirrored = wait_for_entries(&topo.path("v2.log"), 3, Duration::from_secs(10));
    let primary = access_log(&topo.path("v1.log"));
    let summary = topo.stop_daemon(daemon, libc::SIGINT).unwrap();
    assert_eq!(mirrored.len(), 3, "mirror got {mirrored:?}\n{summary}");
    for (p, m) in primary.iter().zip(&mirrored) {
        assert_same_request(p, m);
    }
    assert_eq!(mirrored[1]["body_len"], Value::from(200_000));

    assert_eq!(summary["pipeline"]["mirrored"], Value::from(3), "{summary}");
    assert_eq!(summary["replay"]["responses_2xx"], Value::from(3), "{summary}");
}

#[test]
fn zero_percent_sends_nothing_but_sees_everything() {
    let topo = Topology::new().unwrap();
    let (_v1, _v2) = topo.servers().unwrap();
    let daemon = topo.daemon(&topo.config(0.0, "").unwrap()).unwrap();
    let requests: Vec<Vec<u8>> = (0..20).map(|i| request("GET", &format!("/r/{i}"), &[], b"")).collect();
    let responses = topo.in_ns(&topo.client, move || exchange(primary_v4(), &requests)).unwrap().unwrap();
    assert_eq!(responses.len(), 20);
    std::thread::sleep(Duration::from_millis(500));
    let summary = topo.stop_daemon(daemon, libc::SIGINT).unwrap();
    // Positive control: the daemon did frame all 20, and sampled every one out.
    assert_eq!(summary["pipeline"]["requests_framed"], Value::from(20), "{summary}");
    assert_eq!(summary["pipeline"]["sampled_out"], Value::from(20), "{summary}");
    assert!(access_log(&topo.path("v2.log")).is_empty());
}

#[test]
fn hundred_requests_on_one_keepalive_connection_all_arrive_in_order() {
    let topo = Topology::new().unwrap();
    let (_v1, _v2) = topo.servers().unwrap();
    let daemon = topo.daemon(&topo.config(100.0, "").unwrap()).unwrap();
    let requests: Vec<Vec<u8>> = (0..100)
        .map(|i| {
            if i % 3 == 0 {
                request("POST", &format!("/r/{i}"), &[], format!("body-{i}").as_bytes())
            } else {
                request("GET", &format!("/r/{i}"), &[], b"")
            }
        })
        .collect();
    let responses = topo.in_ns(&topo.client, move || exchange(primary_v4(), &requests)).unwrap().unwrap();
    assert_eq!(responses.len(), 100);
    let mirrored = wait_for_entries(&topo.path("v2.log"), 100, Duration::from_secs(15));
    assert_eq!(mirrored.len(), 100);
    // One client connection is replayed on one mirror connection, so order is kept.
    let uris: Vec<String> = mirrored.iter().map(|e| e["uri"].as_str().unwrap().to_string()).collect();
    let want: Vec<String> = (0..100).map(|i| format!("/r/{i}")).collect();
    assert_eq!(uris, want);
    let summary = topo.stop_daemon(daemon, libc::SIGTERM).unwrap();
    assert_eq!(summary["pipeline"]["mirrored"], Value::from(100), "{summary}");
}

#[test]
fn primary_responses_are_unchanged_with_the_daemon_attached() {
    let topo = Topology::new().unwrap();
    let (_v1, _v2) = topo.servers().unwrap();
    let requests: Vec<Vec<u8>> = vec![
        request("GET", "/status/200", &[], b""),
        request("GET", "/status/404", &[], b""),
        request("POST", "/status/503", &[], b"payload"),
        request("DELETE", "/status/204", &[], b""),
        request("GET", "/get", &[("Cookie", "SessionID=XXX")], b""),
    ];
    let r1 = requests.clone();
    let before = topo.in_ns(&topo.client, move || exchange(primary_v4(), &r1)).unwrap().unwrap();
    let daemon = topo.daemon(&topo.config(100.0, "").unwrap()).unwrap();
    let r2 = requests.clone();
    let during = topo.in_ns(&topo.client, move || exchange(primary_v4(), &r2)).unwrap().unwrap();
    let _ = wait_for_entries(&topo.path("v2.log"), requests.len(), Duration::from_secs(10));
    let summary = topo.stop_daemon(daemon, libc::SIGINT).unwrap();
    let after = topo.in_ns(&topo.client, move || exchange(primary_v4(), &requests)).unwrap().unwrap();
    assert_eq!(before, during);
    assert_eq!(before, after);
    assert_eq!(before.iter().map(|r| r.status).collect::<Vec<_>>(), [200, 404, 503, 204, 200]);
    assert!(during.iter().all(|r| r.served_by == "v1"));
    assert_eq!(summary["pipeline"]["mirrored"], Value::from(5), "{summary}");
}

#[test]
fn stopping_the_daemon_leaves_no_attachment() {
    let topo = Topology::new().unwrap();
    for sig in [libc::SIGINT, libc::SIGTERM] {
        assert_eq!(topo.ingress_programs().unwrap(), Vec::<String>::new(), "attached before start");
        let daemon = topo.daemon(&topo.config(100.0, "").unwrap()).unwrap();
        assert_eq!(topo.ingress_programs().unwrap(), ["mirror_tc"], "not attached while running");
        assert_eq!(topo.egress_programs().unwrap(), ["mirror_tc"], "not attached to egress while running");
        topo.stop_daemon(daemon, sig).unwrap();
        assert_eq!(topo.ingress_programs().unwrap(), Vec::<String>::new(), "left attached after signal {sig}");
        assert_eq!(topo.egress_programs().unwrap(), Vec::<String>::new(), "left on egress after signal {sig}");
        // Netlink mode added a clsact qdisc that nothing else uses: removed too. TCX adds none.
        assert!(!topo.has_clsact().unwrap(), "clsact qdisc left after signal {sig}");
    }
}

#[test]
fn ipv6_requests_are_mirrored() {
    let topo = Topology::new().unwrap();
    let (_v1, _v2) = topo.servers().unwrap();
    let daemon = topo.daemon(&topo.config(100.0, "").unwrap()).unwrap();
    let addr: SocketAddr = format!("[{PRIMARY_V6}]:{PORT}").parse().unwrap();
    let reqs = vec![request("GET", "/v6", &[], b""), request("POST", "/v6post", &[], b"six")];
    let responses = topo.in_ns(&topo.client, move || exchange(addr, &reqs)).unwrap().unwrap();
    assert_eq!(responses.len(), 2);
    let mirrored = wait_for_entries(&topo.path("v2.log"), 2, Duration::from_secs(10));
    let uris: Vec<&str> = mirrored.iter().map(|e| e["uri"].as_str().unwrap()).collect();
    assert_eq!(uris, ["/v6", "/v6post"]);
    topo.stop_daemon(daemon, libc::SIGINT).unwrap();
}

#[test]
fn cookie_route_sends_only_matching_requests_to_its_mirror() {
    let topo = Topology::new().unwrap();
    let (_v1, _v2) = topo.servers().unwrap();
    // The cookie route mirrors to v2; the default route mirrors 0%.
    let cookie_route = "  - name: session\n    match:\n      - headers:\n          cookie: {regex: \"^(.*?;)?(SessionID=XXX)(;.*)?$\"}\n    mirror: {host: httpbin, subset: v2}\n";
    let daemon = topo.daemon(&topo.config(0.0, cookie_route).unwrap()).unwrap();
    let reqs = vec![
        request("GET", "/a", &[("Cookie", "SessionID=XXX")], b""),
        request("GET", "/b", &[("Cookie", "SessionID=YYY")], b""),
        request("GET", "/c", &[], b""),
        request("GET", "/d", &[("Cookie", "SessionID=XXX; theme=dark")], b""),
    ];
    topo.in_ns(&topo.client, move || exchange(primary_v4(), &reqs)).unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let summary = topo.stop_daemon(daemon, libc::SIGINT).unwrap();
    let uris: Vec<String> =
        access_log(&topo.path("v2.log")).iter().map(|e| e["uri"].as_str().unwrap().to_string()).collect();
    assert_eq!(uris, ["/a", "/d"]);
    assert_eq!(summary["pipeline"]["sampled_out"], Value::from(2), "{summary}");
}
