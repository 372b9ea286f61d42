//! Issue 4 in namespaces: an Istio VirtualService loaded unchanged, cookie-scoped mirroring, and
//! SIGHUP reloads (valid: new routes for new requests on flows already open; invalid: refused).

use std::{net::SocketAddr, time::Duration};

use mirror_tests::*;
use serde_json::Value;

fn primary() -> SocketAddr {
    format!("{PRIMARY_V4}:{PORT}").parse().unwrap()
}

fn uris(path: &std::path::Path) -> Vec<String> {
    access_log(path).iter().map(|e| e["uri"].as_str().unwrap().to_string()).collect()
}

#[test]
fn istio_virtual_service_example_mirrors_with_its_policy() {
    let topo = Topology::new().unwrap();
    let (_v1, _v2) = topo.servers().unwrap();
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/istio-httpbin.yaml");
    let daemon = topo.daemon(&config).unwrap();
    let reqs = vec![
        request("GET", "/in-scope", &[("Authorization", "Bearer secret")], b""),
        // Host outside the VirtualService's hosts: not mirrored.
        b"GET /other-host HTTP/1.1\r\nHost: elsewhere:8000\r\n\r\n".to_vec(),
    ];
    topo.in_ns(&topo.client, move || exchange(primary(), &reqs)).unwrap().unwrap();
    let mirrored = wait_for_entries(&topo.path("v2.log"), 1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let summary = topo.stop_daemon(daemon, libc::SIGINT).unwrap();
    assert_eq!(uris(&topo.path("v2.log")), ["/in-scope"], "{summary}");
    let headers: Vec<(String, String)> = serde_json::from_value(mirrored[0]["headers"].clone()).unwrap();
    assert!(!headers.iter().any(|(k, _)| k == "authorization"), "credentials reached the shadow: {headers:?}");
    assert!(headers.contains(&("x-mirrored-by".into(), "mirror".into())), "{headers:?}");
    assert_eq!(mirrored[0]["host"], Value::from(format!("httpbin-shadow:{PORT}")));
    assert_eq!(summary["pipeline"]["no_route"], Value::from(1), "{summary}");
}

#[test]
fn sighup_reload_applies_to_open_flows_and_refuses_invalid_configs() {
    let topo = Topology::new().unwrap();
    let (_v1, _v2) = topo.servers().unwrap();
    let config = topo.config(0.0, "").unwrap();
    let mut daemon = topo.daemon(&config).unwrap();
    let client = KeepAliveClient::connect(&topo.client, primary()).unwrap();
    assert_eq!(client.send(request("GET", "/before", &[], b"")).unwrap().status, 200);

    // 0% -> 100%, on the same connection.
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap().replace("value: 0}", "value: 100}")).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_stderr("reloaded", Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(client.send(request("GET", "/after", &[], b"")).unwrap().status, 200);
    wait_for_entries(&topo.path("v2.log"), 1, Duration::from_secs(10));

    // An invalid config is refused; the running one stays.
    std::fs::write(&config, "capture: {interfaces: [eth0], ports: [8000]}\nroutes: [{mirror: {host: nowhere}}]\n")
        .unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_stderr("reload refused", Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(client.send(request("GET", "/still", &[], b"")).unwrap().status, 200);
    wait_for_entries(&topo.path("v2.log"), 2, Duration::from_secs(10));

    let summary = topo.stop_daemon(daemon, libc::SIGINT).unwrap();
    assert_eq!(uris(&topo.path("v2.log")), ["/after", "/still"], "{summary}");
    assert_eq!(summary["flows"]["opened"], Value::from(1), "one flow throughout: {summary}");
}

/// A reload that drops the watched port stops the capture of its traffic in the kernel, and one
/// that adds it back starts it again.
#[test]
fn a_reload_unwatches_a_dropped_port_and_watches_it_again() {
    let topo = Topology::new().unwrap();
    let (_v1, _v2) = topo.servers().unwrap();
    let config = topo.config(100.0, "").unwrap();
    let watched = std::fs::read_to_string(&config).unwrap();
    let daemon = topo.daemon(&config).unwrap();
    let mut reloads = 0;
    let get = |path: &str| {
        let reqs = vec![request("GET", path, &[], b"")];
        topo.in_ns(&topo.client, move || exchange(primary(), &reqs)).unwrap().unwrap();
    };
    let mut reload = |daemon: &Proc, text: &str| {
        std::fs::write(&config, text).unwrap();
        daemon.signal(libc::SIGHUP);
        reloads += 1;
        daemon.wait_for_stderr_count("reloaded", reloads);
        // The capture thread applies it at its next round (at most 100 ms when idle).
        std::thread::sleep(Duration::from_millis(300) * slowdown());
    };
    get("/watched");
    wait_for_entries(&topo.path("v2.log"), 1, Duration::from_secs(10));

    let other = watched.replace(&format!("ports: [{PORT}]"), &format!("ports: [{}]", PORT + 1));
    assert_ne!(other, watched);
    reload(&daemon, &other);
    get("/unwatched");
    std::thread::sleep(Duration::from_millis(500));

    reload(&daemon, &watched);
    get("/again");
    wait_for_entries(&topo.path("v2.log"), 2, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let summary = topo.stop_daemon(daemon, libc::SIGINT).unwrap();
    assert_eq!(uris(&topo.path("v2.log")), ["/watched", "/again"], "{summary}");
}

#[test]
fn sigint_during_a_reload_of_the_largest_config_stops_the_daemon_within_a_second() {
    let topo = Topology::new().unwrap();
    let (_v1, _v2) = topo.servers().unwrap();
    let config = topo.config(100.0, "").unwrap();
    let daemon = topo.daemon(&config).unwrap();
    // A reload of what the limits allow at most: a 4 MiB file (mostly comment) whose 250 routes
    // each compile a large regex (16 MiB together, the cap).
    let mut routes = String::new();
    for i in 0..250 {
        routes.push_str(&format!(
            "  - name: r{i}\n    match:\n      - headers:\n          x-id: {{regex: \"([a-z]{{1,40}}[0-9]{{1,30}}(alpha|beta|gamma|delta){{1,9}}){{1,3}}-{i}\"}}\n    mirror: {{host: httpbin, subset: v2}}\n"
        ));
    }
    let mut big = std::fs::read_to_string(topo.config(100.0, &routes).unwrap()).unwrap();
    let pad = 4 * 1024 * 1024 - big.len() - 64;
    big.push_str(&format!("# {}\n", "x".repeat(pad)));
    std::fs::write(&config, &big).unwrap();
    let out = std::process::Command::new(bin("mirror")).args(["check", "--config"]).arg(&config).output().unwrap();
    assert!(out.status.success(), "the reload is a valid one: {}", String::from_utf8_lossy(&out.stderr));
    let mut daemon = daemon;
    daemon.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(5));
    let at = std::time::Instant::now();
    daemon.signal(libc::SIGINT);
    let status = daemon.wait_exit(Duration::from_secs(10)).unwrap();
    let took = at.elapsed();
    assert!(status.success(), "{status}: {}", daemon.stderr());
    println!("SIGINT during a reload: exited after {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}
