//! Issue 13 in namespaces shaped like a Kubernetes node (`mirror_tests::node`): pods behind veths
//! (Calico-like routed, and bridged), a remote node reaching them through the uplink, directly or
//! over VXLAN, pods coming and going while the daemon runs, `capture.addresses`, SIGHUP, and every
//! request mirrored exactly once. They need root and fail (never skip) without it.

use std::{collections::BTreeMap, time::Duration};

use mirror_tests::{
    Hook, Proc, access_log, metric,
    node::{Layout, MIRROR_V4, Node, POD_SUBNET, REMOTE_V4, Uplink, gets},
    ns_run, slowdown, tc_programs, wait_for_entries,
};
use serde_json::Value;

const PRIMARY: &str = "10.244.1.10";
const PRIMARY_ADDR: &str = "10.244.1.10:8000";

fn uris(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("/{prefix}/{i}")).collect()
}

/// The mirror's log, as uri → how many times it came.
fn mirrored(node: &Node) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for e in access_log(&node.path("v2.log")) {
        *count.entry(e["uri"].as_str().unwrap_or("?").to_string()).or_default() += 1;
    }
    count
}

/// Waits for `n` mirrored requests, then a little more (a duplicate would come right after).
fn wait_mirrored(node: &Node, n: usize) -> BTreeMap<String, usize> {
    wait_for_entries(&node.path("v2.log"), n, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(700) * slowdown());
    mirrored(node)
}

fn exactly_once(all: &[Vec<String>]) -> BTreeMap<String, usize> {
    all.iter().flatten().map(|u| (u.clone(), 1)).collect()
}

/// Stops the daemon with SIGINT; its JSON summary.
fn stop(mut d: Proc) -> Value {
    d.signal(libc::SIGINT);
    let st = d.wait_exit(Duration::from_secs(15)).unwrap();
    assert!(st.success(), "daemon exited with {st}:\n{}", d.stderr());
    let out = d.stdout();
    serde_json::from_str(out.lines().last().expect("a summary")).unwrap()
}

/// Log lines at WARN or ERROR level.
fn complaints(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect()
}

const CAPTURE_NODE: &str =
    "  interfaces: [eth0, {name: \"cali*\", direction: egress}]\n  ports: [8000]\n  addresses: [\"10.244.1.0/24\"]\n";

#[test]
fn routed_node_mirrors_remote_and_same_node_clients_once_and_nothing_else() {
    let mut k = Node::new(Layout::Routed, Uplink::Direct).unwrap();
    let primary = k.add_pod(1, PRIMARY).unwrap();
    let client = k.add_pod(2, "10.244.1.20").unwrap();
    // A pod on the same port outside capture.addresses.
    let other = k.add_pod(3, "10.244.9.10").unwrap();
    ns_run(&k.remote, "ip", &["route", "add", "10.244.9.0/24", "via", mirror_tests::node::NODE_V4]).unwrap();
    let _v1 = k.httpbin(&primary, "v1", "0.0.0.0:8000").unwrap();
    let _d1 = k.httpbin(&other, "d1", "0.0.0.0:8000").unwrap();
    let _far = k.httpbin(&k.remote, "far", &format!("{REMOTE_V4}:8000")).unwrap();
    let _v2 = k.httpbin(&k.mirror, "v2", &format!("{MIRROR_V4}:8000")).unwrap();
    let daemon = k.daemon(&k.config(CAPTURE_NODE).unwrap(), &[]).unwrap();

    let (remote, local) = (uris("remote", 5), uris("local", 5));
    gets(&k.remote, PRIMARY_ADDR, &remote, "v1").unwrap();
    gets(&client, PRIMARY_ADDR, &local, "v1").unwrap();
    // A pod of this node calling a server on another node: that node's daemon mirrors it, not us.
    gets(&client, &format!("{REMOTE_V4}:8000"), &uris("outbound", 5), "far").unwrap();
    // The same port on a pod outside capture.addresses.
    gets(&k.remote, "10.244.9.10:8000", &uris("outside", 5), "d1").unwrap();

    let got = wait_mirrored(&k, 10);
    let metrics = k.metrics().unwrap();
    let summary = stop(daemon);
    assert_eq!(got, exactly_once(&[remote, local]), "{summary}");
    // Remote requests crossed two attach points (eth0 ingress, cali1 egress): the second copies
    // were dropped before reassembly.
    assert!(summary["capture"]["duplicates_dropped"].as_u64().unwrap() > 0, "{summary}");
    assert!(metric(&metrics, "mirror_capture_duplicates_total") > 0.0, "{metrics}");
    // Positive control: the kernel saw the outside pod's requests and left them.
    assert!(summary["kernel"]["outside_addresses"].as_u64().unwrap() >= 5, "{summary}");
    assert_eq!(summary["pipeline"]["mirrored"], Value::from(10), "{summary}");
    assert_eq!(metric(&metrics, "mirror_links_attached"), 4.0, "{metrics}");
    assert_eq!(metric(&metrics, "mirror_link_events_total{event=\"attached\",reason=\"start\"}"), 4.0, "{metrics}");
}

#[test]
fn bridged_node_mirrors_through_the_pod_veth_once() {
    let mut k = Node::new(Layout::Bridged, Uplink::Direct).unwrap();
    let primary = k.add_pod(1, PRIMARY).unwrap();
    let client = k.add_pod(2, "10.244.1.20").unwrap();
    let _v1 = k.httpbin(&primary, "v1", "0.0.0.0:8000").unwrap();
    let _v2 = k.httpbin(&k.mirror, "v2", &format!("{MIRROR_V4}:8000")).unwrap();
    let config = "  interfaces: [{name: \"veth*\", direction: egress}]\n  ports: [8000]\n";
    let daemon = k.daemon(&k.config(config).unwrap(), &[]).unwrap();
    let (remote, local) = (uris("remote", 5), uris("local", 5));
    gets(&k.remote, PRIMARY_ADDR, &remote, "v1").unwrap();
    // Same bridge: never crosses eth0 nor a routed hop.
    gets(&client, PRIMARY_ADDR, &local, "v1").unwrap();
    let got = wait_mirrored(&k, 10);
    let summary = stop(daemon);
    assert_eq!(got, exactly_once(&[remote, local]), "{summary}");
    assert_eq!(summary["pipeline"]["mirrored"], Value::from(10), "{summary}");
}

#[test]
fn vxlan_overlay_is_missed_on_eth0_alone_and_captured_at_the_pod_veth() {
    let mut k = Node::new(Layout::Routed, Uplink::Vxlan).unwrap();
    let primary = k.add_pod(1, PRIMARY).unwrap();
    let _v1 = k.httpbin(&primary, "v1", "0.0.0.0:8000").unwrap();
    let _v2 = k.httpbin(&k.mirror, "v2", &format!("{MIRROR_V4}:8000")).unwrap();

    // eth0 alone: the requests cross it inside UDP (VXLAN): nothing to mirror.
    let daemon = k.daemon(&k.config("  interfaces: [eth0]\n  ports: [8000]\n").unwrap(), &[]).unwrap();
    gets(&k.remote, PRIMARY_ADDR, &uris("eth0-only", 3), "v1").unwrap();
    std::thread::sleep(Duration::from_millis(700) * slowdown());
    let summary = stop(daemon);
    assert!(mirrored(&k).is_empty(), "{summary}");
    assert_eq!(summary["kernel"]["seen"], Value::from(0), "{summary}");

    // With the pods' veths: each request once (eth0 still sees only UDP: no duplicate either).
    let daemon = k.daemon(&k.config(CAPTURE_NODE).unwrap(), &[]).unwrap();
    let overlay = uris("overlay", 5);
    gets(&k.remote, PRIMARY_ADDR, &overlay, "v1").unwrap();
    let got = wait_mirrored(&k, 5);
    let summary = stop(daemon);
    assert_eq!(got, exactly_once(&[overlay]), "{summary}");
    assert_eq!(summary["capture"]["duplicates_dropped"], Value::from(0), "{summary}");
}

/// Pods created after the start are captured; a deleted pod's veth is forgotten without an error,
/// its attachment and flows are gone, and flows on other pods go on.
fn pods_come_and_go(mode: &str) {
    let mut k = Node::new(Layout::Routed, Uplink::Direct).unwrap();
    let first = k.add_pod(1, PRIMARY).unwrap();
    let _v1 = k.httpbin(&first, "v1", "0.0.0.0:8000").unwrap();
    let _v2 = k.httpbin(&k.mirror, "v2", &format!("{MIRROR_V4}:8000")).unwrap();
    let config = format!(
        "  interfaces: [{{name: \"cali*\", direction: egress}}]\n  ports: [8000]\n  addresses: [\"{POD_SUBNET}\"]\n"
    );
    let daemon = k.daemon(&k.config(&config).unwrap(), &["--attach", mode]).unwrap();
    // A kept-alive connection to the first pod, open across the churn.
    let kept = mirror_tests::KeepAliveClient::connect(&k.remote, PRIMARY_ADDR.parse().unwrap()).unwrap();
    assert_eq!(kept.send(mirror_tests::request("GET", "/kept/0", &[], b"")).unwrap().status, 200);

    let mut want = vec![vec!["/kept/0".to_string()]];
    for round in 0..2 {
        let second = k.add_pod(2, "10.244.1.11").unwrap();
        daemon.wait_for_stderr_count("attached mirror_tc to TC ingress and egress interface=cali2", round + 1);
        let v1b = k.httpbin(&second, "v1", "0.0.0.0:8000").unwrap();
        let late = uris(&format!("late{round}"), 3);
        gets(&k.remote, "10.244.1.11:8000", &late, "v1").unwrap();
        want.push(late);
        let n = want.iter().map(Vec::len).sum();
        assert_eq!(wait_mirrored(&k, n), exactly_once(&want), "round {round}:\n{}", daemon.stderr());
        assert!(!tc_programs(&k.node, "cali2", Hook::Egress).unwrap().is_empty());

        let before = daemon.stderr().len();
        drop(v1b);
        k.delete_pod(2).unwrap();
        let gone = "link gone: forgot its attachment interface=cali2";
        daemon.wait_for_stderr_count(gone, round + 1);
        // Let the daemon run a while without the link: nothing to complain about.
        std::thread::sleep(Duration::from_millis(1500) * slowdown());
        let after = daemon.stderr()[before..].to_string();
        assert!(complaints(&after).is_empty(), "after deleting the pod:\n{after}");
        let metrics = k.metrics().unwrap();
        assert_eq!(metric(&metrics, "mirror_links_attached"), 1.0, "{metrics}");
        assert!(!metrics.contains("interface=\"cali2\""), "{metrics}");
        assert_eq!(
            metric(&metrics, "mirror_link_events_total{event=\"detached\",reason=\"gone\"}"),
            (round + 1) as f64
        );
        assert_eq!(metric(&metrics, "mirror_link_events_total{event=\"failed\",reason=\"gone\"}"), 0.0, "{metrics}");
        // Only the kept-alive connection to the first pod is open; nothing is held.
        assert_eq!(metric(&metrics, "mirror_flows_open"), 1.0, "{metrics}");
        for kind in ["reassembly", "heads", "bodies", "replay"] {
            assert_eq!(metric(&metrics, &format!("mirror_memory_held_bytes{{kind=\"{kind}\"}}")), 0.0, "{metrics}");
        }
        // The first pod's flow went on undisturbed.
        let uri = format!("/kept/{}", round + 1);
        assert_eq!(kept.send(mirror_tests::request("GET", &uri, &[], b"")).unwrap().status, 200);
        want.push(vec![uri]);
    }
    let n = want.iter().map(Vec::len).sum();
    let got = wait_mirrored(&k, n);
    let summary = stop(daemon);
    assert_eq!(got, exactly_once(&want), "{summary}");
    assert_eq!(summary["capture"]["links"]["events"]["attached/new_link"], Value::from(2), "{summary}");
    // Nothing left on the link that stayed.
    assert!(tc_programs(&k.node, "cali1", Hook::Ingress).unwrap().is_empty());
    assert!(tc_programs(&k.node, "cali1", Hook::Egress).unwrap().is_empty());
}

#[test]
fn pods_come_and_go_tcx_or_netlink_by_kernel() {
    pods_come_and_go("auto");
}

#[test]
fn pods_come_and_go_netlink() {
    pods_come_and_go("netlink");
}

#[test]
fn sighup_updates_interfaces_and_addresses() {
    let mut k = Node::new(Layout::Routed, Uplink::Direct).unwrap();
    let one = k.add_pod(1, PRIMARY).unwrap();
    let two = k.add_pod(2, "10.244.1.11").unwrap();
    let _a = k.httpbin(&one, "v1", "0.0.0.0:8000").unwrap();
    let _b = k.httpbin(&two, "v1b", "0.0.0.0:8000").unwrap();
    let _v2 = k.httpbin(&k.mirror, "v2", &format!("{MIRROR_V4}:8000")).unwrap();
    let narrow =
        "  interfaces: [{name: cali1, direction: egress}]\n  ports: [8000]\n  addresses: [\"10.244.1.10/32\"]\n";
    let config = k.config(narrow).unwrap();
    let mut daemon = k.daemon(&config, &[]).unwrap();
    gets(&k.remote, PRIMARY_ADDR, &uris("a0", 2), "v1").unwrap();
    gets(&k.remote, "10.244.1.11:8000", &uris("b0", 2), "v1b").unwrap();
    assert_eq!(wait_mirrored(&k, 2), exactly_once(&[uris("a0", 2)]));

    // Every pod's veth, the whole subnet.
    k.config(
        "  interfaces: [{name: \"cali*\", direction: egress}]\n  ports: [8000]\n  addresses: [\"10.244.1.0/24\"]\n",
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_stderr("interface=cali2", Duration::from_secs(10)).unwrap();
    daemon.wait_for_stderr("reloaded", Duration::from_secs(10)).unwrap();
    gets(&k.remote, "10.244.1.11:8000", &uris("b1", 2), "v1b").unwrap();
    assert_eq!(wait_mirrored(&k, 4), exactly_once(&[uris("a0", 2), uris("b1", 2)]));

    // Back to the first pod's address only: cali2 stays attached, its pod is outside.
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap().replace("10.244.1.0/24", "10.244.1.10/32"))
        .unwrap();
    let reloads = daemon.stderr().matches("reloaded").count();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_stderr_count("reloaded", reloads + 1);
    std::thread::sleep(Duration::from_millis(200) * slowdown());
    gets(&k.remote, "10.244.1.11:8000", &uris("b2", 2), "v1b").unwrap();
    gets(&k.remote, PRIMARY_ADDR, &uris("a2", 2), "v1").unwrap();
    let got = wait_mirrored(&k, 6);
    let summary = stop(daemon);
    assert_eq!(got, exactly_once(&[uris("a0", 2), uris("b1", 2), uris("a2", 2)]), "{summary}");
    assert!(summary["kernel"]["outside_addresses"].as_u64().unwrap() > 0, "{summary}");
}
