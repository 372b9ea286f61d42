//! Issue 5 in namespaces: shadow traffic never loops, failures of the mirror are counted and never
//! reach the primary, and the daemon leaves nothing behind.

use std::{net::SocketAddr, time::Duration};

use mirror_tests::*;
use serde_json::Value;

fn primary() -> SocketAddr {
    format!("{PRIMARY_V4}:{PORT}").parse().unwrap()
}

/// Two nodes running the same config (a DaemonSet): the primary's daemon mirrors to the mirror's
/// node, whose daemon watches the same port. The shadow requests arriving there are skipped in
/// the kernel, so the mirror gets each request once, not again from its own node's daemon.
#[test]
fn shadow_traffic_to_a_mirror_on_a_watched_port_is_never_mirrored_again() {
    let topo = Topology::new().unwrap();
    let (_v1, _v2) = topo.servers().unwrap();
    let config = topo.config(100.0, "").unwrap();
    let daemon_a = topo.daemon(&config).unwrap();
    let daemon_b = topo.daemon_in(&topo.mirror, "daemon-b", &config, &[]).unwrap();
    let reqs: Vec<Vec<u8>> = (0..10).map(|i| request("GET", &format!("/once/{i}"), &[], b"")).collect();
    topo.in_ns(&topo.client, move || exchange(primary(), &reqs)).unwrap().unwrap();
    let got = wait_for_entries(&topo.path("v2.log"), 10, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(700));
    let b = topo.stop_daemon(daemon_b, libc::SIGINT).unwrap();
    let a = topo.stop_daemon(daemon_a, libc::SIGINT).unwrap();
    assert_eq!(access_log(&topo.path("v2.log")).len(), 10, "mirror got {got:?}");
    assert!(b["kernel"]["skipped_mirror_traffic"].as_u64().unwrap() > 0, "{b}");
    assert_eq!(b["kernel"]["seen"], Value::from(0), "{b}");
    assert_eq!(b["pipeline"]["requests_framed"], Value::from(0), "{b}");
    assert_eq!(a["pipeline"]["mirrored"], Value::from(10), "{a}");
}
