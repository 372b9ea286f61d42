//! Issue 12, item 5, in namespaces: the metrics endpoint can never starve mirroring. With the fd
//! limit low (256, via prlimit) and 400 idle connections held open on the metrics port, the daemon
//! stays idle, /metrics answers, requests are still mirrored, the idle connections are closed by
//! the header read timeout, and 2,000 concurrent scrapers are all answered. Running out of
//! descriptors altogether (soft limit lowered under the daemon's feet) pauses accepting instead of
//! spinning, and it recovers.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use mirror_tests::*;
use serde_json::Value;

const FD_LIMIT: usize = 256;
/// `min(64, FD_LIMIT / 8)`.
const CAP: usize = FD_LIMIT / 8;
const IDLE: usize = 400;
/// Concurrent scrapers: the 2,000 the issue says held before (200 in emulated VM runs).
fn scrapers() -> usize {
    if slowdown() > 1 { 200 } else { 2000 }
}
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

fn primary() -> SocketAddr {
    format!("{PRIMARY_V4}:{PORT}").parse().unwrap()
}

fn metrics_addr() -> SocketAddr {
    "127.0.0.1:9464".parse().unwrap()
}

/// A bound stretched for slow (emulated) runs.
fn bound(d: Duration) -> Duration {
    d * slowdown()
}

fn open_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// One `Connection: close` scrape from the primary namespace, timed.
fn timed_scrape(topo: &Topology) -> (Duration, String) {
    let t = Instant::now();
    let text = scrape_metrics(topo).unwrap();
    (t.elapsed(), text)
}

/// Sends one request from the client through the primary and waits until the mirror logged it.
fn mirrored(topo: &Topology, path: &str) -> bool {
    let req = request("GET", path, &[], b"");
    let resp = topo.in_ns(&topo.client, move || exchange(primary(), &[req])).unwrap().unwrap();
    assert_eq!(resp[0].status, 200);
    let deadline = Instant::now() + bound(Duration::from_secs(5));
    while Instant::now() < deadline {
        if access_log(&topo.path("v2.log")).iter().any(|e| e.to_string().contains(path)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `n` scrapers at once (threads released together), from the primary namespace.
fn concurrent_scrapes(topo: &Topology, n: usize) -> Vec<Result<String, String>> {
    topo.in_ns(&topo.primary, move || {
        let barrier = Arc::new(Barrier::new(n));
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let barrier = barrier.clone();
                // Threads started here inherit this thread's network namespace.
                std::thread::spawn(move || -> Result<String, String> {
                    barrier.wait();
                    let mut s = TcpStream::connect_timeout(&metrics_addr(), bound(Duration::from_secs(10)))
                        .map_err(|e| format!("connect: {e}"))?;
                    s.set_read_timeout(Some(bound(Duration::from_secs(10)))).unwrap();
                    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                        .map_err(|e| format!("write: {e}"))?;
                    let mut out = String::new();
                    s.read_to_string(&mut out).map_err(|e| format!("read: {e}"))?;
                    Ok(out)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
    .unwrap()
}

fn set_soft_limit(pid: i32, soft: usize) {
    let st = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:{FD_LIMIT}")])
        .status()
        .unwrap();
    assert!(st.success(), "prlimit --pid {pid} failed");
}

#[test]
fn idle_connections_at_a_low_fd_limit_starve_neither_mirroring_nor_scrapers() {
    let topo = Topology::new().unwrap();
    let (_v1, _v2) = topo.servers().unwrap();
    let config = topo.config(100.0, "").unwrap();
    let mirror = bin("mirror");
    let nofile = format!("--nofile={FD_LIMIT}:{FD_LIMIT}");
    let args = [nofile.as_str(), mirror.to_str().unwrap(), "run", "--config", config.to_str().unwrap()];
    let mut daemon = topo.spawn(&topo.primary, "daemon", Path::new("/usr/bin/prlimit"), &args).unwrap();
    daemon.wait_for_stderr("ready", Duration::from_secs(30)).unwrap();
    let pid = daemon.pid();
    // `ip netns exec` and prlimit both exec: the pid is the daemon's own.
    assert_eq!(fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim(), "mirror");
    assert!(
        daemon
            .stderr()
            .contains(&format!("file descriptor limit soft={FD_LIMIT} hard={FD_LIMIT} metrics_connections={CAP}")),
        "{}",
        daemon.stderr()
    );

    // Before: mirroring works, and the endpoint says its cap.
    assert!(mirrored(&topo, "/before"), "not mirrored before the attack");
    let (_, text) = timed_scrape(&topo);
    assert_eq!(metric(&text, "mirror_metrics_connections_limit"), CAP as f64, "{text}");
    let fds_before = open_fds(pid);

    // 400 connections to the metrics port that never send a byte.
    let t0 = Instant::now();
    let mut idle: Vec<TcpStream> = topo
        .in_ns(&topo.primary, || {
            (0..IDLE).map(|_| TcpStream::connect_timeout(&metrics_addr(), Duration::from_secs(5)).unwrap()).collect()
        })
        .unwrap();
    let cpu0 = cpu_seconds(pid).unwrap();

    // At once: a scrape is answered within 2 s (the idle ones make room: each is closed when a
    // newer connection needs its slot).
    let (took, text) = timed_scrape(&topo);
    println!("scrape with {IDLE} idle connections just opened: {took:?}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(took < bound(Duration::from_secs(2)), "scrape took {took:?}");

    // Mirroring goes on: a request reaches the mirror, no replay connection lacks a descriptor.
    assert!(mirrored(&topo, "/during"), "not mirrored during the attack");

    // Three seconds of attack: the daemon stays idle and its descriptors stay bounded.
    let mut fds_max = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        fds_max = fds_max.max(open_fds(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let cpu = cpu_seconds(pid).unwrap() - cpu0;
    println!(
        "daemon CPU over {:?} of attack: {cpu:.3} s; fds {fds_before} before, at most {fds_max} during",
        t0.elapsed()
    );
    assert!(cpu < 0.5 * slowdown() as f64, "daemon used {cpu:.2} s of CPU");
    // The cap, the connection waiting for a slot, and slack for replay connections.
    assert!(fds_max <= fds_before + CAP + 1 + 4, "fds went from {fds_before} to {fds_max}");
    let (took, text) = timed_scrape(&topo);
    println!("scrape after 3 s of attack: {took:?}");
    assert!(took < bound(Duration::from_secs(2)), "scrape took {took:?}");
    assert!(metric(&text, "mirror_metrics_connections_open") <= CAP as f64, "{text}");

    // The idle connections are all closed by the endpoint: the older to make room, the last
    // ones by the header read timeout (5 s after they were accepted).
    let deadline = t0 + bound(HEADER_READ_TIMEOUT + Duration::from_secs(2));
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()).saturating_sub(Duration::from_secs(1)));
    let mut still_open = 0;
    for s in &mut idle {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut [0u8; 16]) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => {
                still_open += 1;
                eprintln!("an idle connection: {other:?}");
            }
        }
    }
    println!("all {IDLE} idle connections closed after {:?}", t0.elapsed());
    let text = scrape_metrics(&topo).unwrap();
    assert_eq!(still_open, 0, "{still_open} idle connections still open:\n{text}");
    let evicted = metric(&text, "mirror_metrics_connections_closed_total{reason=\"evicted\"}");
    let timed_out = metric(&text, "mirror_metrics_connections_closed_total{reason=\"header_timeout\"}");
    println!("closed by the endpoint: {evicted} evicted, {timed_out} by the header read timeout");
    assert!(timed_out >= 1.0, "{text}");
    assert_eq!(evicted + timed_out, IDLE as f64, "{text}");
    drop(idle);

    // The old property: many concurrent scrapers, all answered. One exception, by design: a
    // scraper accepted while every slot is taken that has not sent its request within the grace
    // (50 ms) is, to the endpoint, an idle connection, and may be closed to make room (counted as
    // evicted). On an emulated VM, 200 threads on 2 slow vCPUs can take that long between
    // `connect()` and `write()` (one of 200 was reset so in a 6.1 run). Such a scraper sees a
    // reset and tries again, as Prometheus does at its next interval: each retry is answered,
    // and the endpoint counted an eviction for every reset. Any other failure fails the test.
    let scrapers = scrapers();
    let t = Instant::now();
    let results = concurrent_scrapes(&topo, scrapers);
    println!("{scrapers} concurrent scrapers answered in {:?}", t.elapsed());
    let is_reset = |e: &String| e.contains("(os error 104)") || e.contains("(os error 32)");
    let failed: Vec<_> = results
        .iter()
        .filter(|r| !r.as_ref().is_ok_and(|t| t.starts_with("HTTP/1.1 200")) && !r.as_ref().is_err_and(is_reset))
        .collect();
    assert!(failed.is_empty(), "{} of {scrapers} scrapes failed: {:?}", failed.len(), failed.first());
    assert!(t.elapsed() < bound(Duration::from_secs(10)));
    let resets = results.iter().filter(|r| r.as_ref().is_err_and(is_reset)).count();
    for _ in 0..resets {
        let again = scrape_metrics(&topo).unwrap();
        assert!(again.starts_with("HTTP/1.1 200"), "a reset scraper's retry: {again}");
    }
    let text = scrape_metrics(&topo).unwrap();
    let evictions = metric(&text, "mirror_metrics_connections_closed_total{reason=\"evicted\"}") - evicted;
    println!("{resets} scrapers reset (retried and answered); evictions during the burst: {evictions}");
    assert!(evictions >= resets as f64, "{resets} resets, {evictions} evictions:\n{text}");

    // Out of descriptors altogether (soft limit 3, below what is open): accept fails with EMFILE
    // and the endpoint pauses instead of spinning; a scraper waiting meanwhile is answered once
    // descriptors are back.
    set_soft_limit(pid, 3);
    let cpu0 = cpu_seconds(pid).unwrap();
    let t = Instant::now();
    let waiting = topo
        .in_ns(&topo.primary, || {
            let mut s = TcpStream::connect_timeout(&metrics_addr(), Duration::from_secs(5)).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
            s
        })
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_seconds(pid).unwrap() - cpu0;
    set_soft_limit(pid, FD_LIMIT);
    let stalled = t.elapsed();
    println!("daemon CPU over {stalled:?} without descriptors: {cpu:.3} s");
    assert!(cpu < 0.3 * slowdown() as f64, "daemon used {cpu:.2} s of CPU while out of descriptors");
    let mut waiting = waiting;
    waiting.set_read_timeout(Some(bound(Duration::from_secs(3)))).unwrap();
    let mut answer = String::new();
    waiting.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let fd_errors = metric(&answer, "mirror_metrics_accept_errors_total{kind=\"fd_limit\"}");
    println!("accept failed {fd_errors} times for want of descriptors in {stalled:?}");
    // One try every 100 ms.
    assert!(fd_errors >= 5.0 && fd_errors <= stalled.as_secs_f64() * 10.0 + 2.0, "{fd_errors} in {stalled:?}");
    assert!(daemon.stderr().contains("accept failed"), "{}", daemon.stderr());
    assert!(mirrored(&topo, "/after"), "not mirrored after the attack");

    let summary = topo.stop_daemon(daemon, libc::SIGTERM).unwrap();
    assert_eq!(summary["replay"]["dropped_connect_error"], Value::from(0), "{summary}");
    assert_eq!(summary["replay"]["sent"], Value::from(3), "{summary}");
}
