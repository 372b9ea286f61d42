//! Issue 9 in namespaces: attaching through netlink (forced here; the default on kernels without
//! TCX, which the VM runs of `cargo xtask test` cover), cleaning up after itself and after a killed
//! daemon, never touching anybody else's filters, and failing cleanly.

use std::{net::SocketAddr, time::Duration};

use mirror_tests::*;

fn primary() -> SocketAddr {
    format!("{PRIMARY_V4}:{PORT}").parse().unwrap()
}

fn tc(topo: &Topology, args: &[&str]) -> String {
    ns_run(&topo.primary, "tc", args).unwrap()
}

fn detach(topo: &Topology) -> Result<String, String> {
    ns_run(&topo.primary, bin("mirror").to_str().unwrap(), &["detach", "--interface", PRIMARY_IFACE])
        .map_err(|e| format!("{e:#}"))
}

/// A foreign filter (somebody else's, a CNI's say) on the same clsact qdisc: a `bpf` filter too,
/// but not ours (classic BPF that matches nothing, so classification goes on to the next filter).
fn add_foreign_filter(topo: &Topology) {
    tc(topo, &["qdisc", "add", "dev", PRIMARY_IFACE, "clsact"]);
    tc(
        topo,
        &[
            "filter",
            "add",
            "dev",
            PRIMARY_IFACE,
            "ingress",
            "pref",
            "7",
            "bpf",
            "bytecode",
            "1,6 0 0 0,",
            "classid",
            "1:1",
        ],
    );
}

fn foreign_filter_present(topo: &Topology) -> bool {
    tc(topo, &["filter", "show", "dev", PRIMARY_IFACE, "ingress"]).contains("bytecode '1,6 0 0 0'")
}

#[test]
fn netlink_attach_mirrors_and_removes_its_filter_and_the_qdisc_it_added() {
    let topo = Topology::new().unwrap();
    let (_v1, _v2) = topo.servers().unwrap();
    assert!(!topo.has_clsact().unwrap());
    let daemon =
        topo.daemon_in(&topo.primary, "daemon", &topo.config(100.0, "").unwrap(), &["--attach", "netlink"]).unwrap();
    assert!(daemon.stderr().contains("mode=\"netlink\""), "{}", daemon.stderr());
    assert_eq!(topo.ingress_programs().unwrap(), ["mirror_tc"]);
    assert_eq!(topo.egress_programs().unwrap(), ["mirror_tc"]);
    assert!(topo.has_clsact().unwrap());
    let metrics = scrape_metrics(&topo).unwrap();
    assert_eq!(metric(&metrics, "mirror_attach_info{interface=\"eth0\",mode=\"netlink\"}"), 1.0, "{metrics}");
    let reqs = vec![request("GET", "/netlink", &[], b"")];
    let got = topo.in_ns(&topo.client, move || exchange(primary(), &reqs)).unwrap().unwrap();
    assert_eq!(got[0].status, 200);
    let log = wait_for_entries(&topo.path("v2.log"), 1, Duration::from_secs(10));
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["uri"], "/netlink");
    let summary = topo.stop_daemon(daemon, libc::SIGTERM).unwrap();
    assert_eq!(summary["pipeline"]["mirrored"], serde_json::Value::from(1), "{summary}");
    assert_eq!(topo.ingress_programs().unwrap(), Vec::<String>::new());
    assert_eq!(topo.egress_programs().unwrap(), Vec::<String>::new());
    assert!(!topo.has_clsact().unwrap(), "the qdisc we added is left");
}

#[test]
fn netlink_attach_keeps_a_qdisc_it_did_not_add_and_other_filters() {
    let topo = Topology::new().unwrap();
    add_foreign_filter(&topo);
    let daemon =
        topo.daemon_in(&topo.primary, "daemon", &topo.config(100.0, "").unwrap(), &["--attach", "netlink"]).unwrap();
    assert_eq!(topo.ingress_programs().unwrap(), ["mirror_tc"]);
    topo.stop_daemon(daemon, libc::SIGINT).unwrap();
    assert_eq!(topo.ingress_programs().unwrap(), Vec::<String>::new());
    assert!(topo.has_clsact().unwrap(), "removed a qdisc we did not add");
    assert!(foreign_filter_present(&topo), "removed somebody else's filter");
}

#[test]
fn filters_left_by_a_killed_daemon_are_removed_at_the_next_start_or_by_detach() {
    let topo = Topology::new().unwrap();
    let (_v1, _v2) = topo.servers().unwrap();
    add_foreign_filter(&topo);
    let config = topo.config(100.0, "").unwrap();
    let args = ["--attach", "netlink"];

    // A live daemon's filter: `mirror detach` refuses to touch it.
    let mut first = topo.daemon_in(&topo.primary, "first", &config, &args).unwrap();
    let err = detach(&topo).unwrap_err();
    assert!(err.contains("running mirror daemon"), "{err}");
    assert_eq!(topo.ingress_programs().unwrap(), ["mirror_tc"]);

    // SIGKILL: the filter stays (netlink filters do not die with their process).
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(5)).unwrap();
    assert_eq!(topo.ingress_programs().unwrap(), ["mirror_tc"]);

    // The next daemon finds it by name, removes it, and attaches once.
    let second = topo.daemon_in(&topo.primary, "second", &config, &args).unwrap();
    assert!(second.stderr().contains("left by a daemon that did not exit cleanly"), "{}", second.stderr());
    assert_eq!(topo.ingress_programs().unwrap(), ["mirror_tc"]);
    let reqs = vec![request("GET", "/after-restart", &[], b"")];
    topo.in_ns(&topo.client, move || exchange(primary(), &reqs)).unwrap().unwrap();
    assert_eq!(wait_for_entries(&topo.path("v2.log"), 1, Duration::from_secs(10)).len(), 1);
    let mut second = second;
    second.signal(libc::SIGKILL);
    second.wait_exit(Duration::from_secs(5)).unwrap();

    // By hand: `mirror detach` removes ours (ingress and egress) and nothing else.
    assert_eq!(detach(&topo).unwrap().trim(), format!("{PRIMARY_IFACE}: removed 2 mirror_tc filter(s)"));
    assert_eq!(topo.ingress_programs().unwrap(), Vec::<String>::new());
    assert_eq!(topo.egress_programs().unwrap(), Vec::<String>::new());
    assert!(foreign_filter_present(&topo), "removed somebody else's filter");
    assert_eq!(detach(&topo).unwrap().trim(), format!("{PRIMARY_IFACE}: nothing of mirror's attached"));
}

/// An attach that fails part-way (the second interface does not exist) exits non-zero with a
/// message naming the interface and leaves nothing on the first one, in either mode.
#[test]
fn a_failed_start_leaves_nothing_attached() {
    let topo = Topology::new().unwrap();
    let text = format!(
        "capture:\n  interfaces: [{PRIMARY_IFACE}, no-such-if0]\n  ports: [{PORT}]\nroutes:\n  - name: d\n    mirror: {{host: h}}\nendpoints:\n  h: [\"{MIRROR_V4}:{PORT}\"]\n"
    );
    let config = topo.path("two.yaml");
    std::fs::write(&config, text).unwrap();
    for mode in ["auto", "netlink"] {
        let mut d = topo
            .spawn(
                &topo.primary,
                mode,
                &bin("mirror"),
                &["run", "--config", config.to_str().unwrap(), "--attach", mode],
            )
            .unwrap();
        let st = d.wait_exit(Duration::from_secs(30)).unwrap();
        assert!(!st.success(), "started with a missing interface");
        assert!(d.stderr().contains("no-such-if0"), "{}", d.stderr());
        assert_eq!(topo.ingress_programs().unwrap(), Vec::<String>::new(), "{mode}: left attached");
        assert!(!topo.has_clsact().unwrap(), "{mode}: left the qdisc it added");
    }
}

/// `--attach tcx` on a kernel without TCX names the missing feature and its version, exits
/// non-zero and leaves nothing; on a kernel with TCX it attaches that way.
#[test]
fn tcx_is_used_where_the_kernel_has_it_and_named_where_it_does_not() {
    let topo = Topology::new().unwrap();
    let config = topo.config(100.0, "").unwrap();
    if kernel_has_tcx() {
        let d = topo.daemon_in(&topo.primary, "tcx", &config, &["--attach", "tcx"]).unwrap();
        assert!(d.stderr().contains("mode=\"tcx\""), "{}", d.stderr());
        assert!(!topo.has_clsact().unwrap(), "TCX needs no qdisc");
        topo.stop_daemon(d, libc::SIGINT).unwrap();
        let auto = topo.daemon(&config).unwrap();
        assert!(auto.stderr().contains("mode=\"tcx\""), "auto did not pick TCX: {}", auto.stderr());
    } else {
        let mut d = topo
            .spawn(
                &topo.primary,
                "tcx",
                &bin("mirror"),
                &["run", "--config", config.to_str().unwrap(), "--attach", "tcx"],
            )
            .unwrap();
        let st = d.wait_exit(Duration::from_secs(30)).unwrap();
        assert!(!st.success());
        assert!(d.stderr().contains("has no TCX (Linux 6.6 or later)"), "{}", d.stderr());
        assert_eq!(topo.ingress_programs().unwrap(), Vec::<String>::new());
        let auto = topo.daemon(&config).unwrap();
        assert!(auto.stderr().contains("mode=\"netlink\""), "auto did not pick netlink: {}", auto.stderr());
    }
}
