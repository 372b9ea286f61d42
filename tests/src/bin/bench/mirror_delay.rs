//! Mirror delay: how long after the client sent a request the mirror receives it, next to how long
//! the primary took to answer the same request.
//!
//! The daemon hands a client's bytes to framing only once the primary's TCP acknowledged them (its
//! ACKs are captured on TC egress), so the mirror gets a request no earlier than that ACK. The
//! mirror is httpbin, whose access log carries `received_unix_ns` (wall clock when the head was
//! read); the client records the wall clock just before writing each request, whose path is
//! unique, so every mirror log entry joins to its send. All namespaces read the machine's clock.
//!
//! When Linux acknowledges a small request depends on the connection: while the server answers
//! within the delayed-ACK timeout (~40 ms) the socket is in "pingpong" mode and the ACK waits for
//! the response (or the timer); a socket whose server never answered that fast acknowledges as
//! soon as the application reads the request. Hence three slow-primary cases: every answer after
//! 30 ms, every answer after 50 ms, and mostly-fast with one request in five answered after 50 ms.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, ensure};
use mirror_tests::{
    load::{self, read_one},
    *,
};
use serde_json::Value;

// The section's options, flattened into the bench's (a doc comment here would become the
// bench's --help text).
#[derive(clap::Args)]
pub struct Opts {
    /// Seconds per row of the mirror-delay section.
    #[arg(long, default_value_t = 5)]
    delay_seconds: u64,
    /// The `mirror` binary the mirror-delay section measures (default: the one beside this bench,
    /// or in `MIRROR_BIN_DIR`).
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// Name of `--daemon` in the mirror-delay table.
    #[arg(long, default_value = "this build")]
    daemon_label: String,
    /// What `--daemon` is (how it was built), for the report.
    #[arg(long)]
    daemon_note: Option<String>,
    /// Another `mirror` binary (an older build, say) to run the mirror-delay section with too,
    /// case by case beside the first.
    #[arg(long)]
    compare_daemon: Option<PathBuf>,
    /// Name of `--compare-daemon` in the table.
    #[arg(long, default_value = "compared build")]
    compare_label: String,
    /// What `--compare-daemon` is (how it was built), for the report.
    #[arg(long)]
    compare_note: Option<String>,
}

/// Runs the section and returns its markdown, heading included.
pub fn section(opts: &Opts, machine: &str) -> Result<String> {
    let mut daemons = vec![Daemon {
        label: opts.daemon_label.clone(),
        path: opts.daemon.clone().unwrap_or_else(|| bin("mirror")),
        note: opts.daemon_note.clone(),
    }];
    if let Some(path) = &opts.compare_daemon {
        ensure!(path.exists(), "{} is missing", path.display());
        daemons.push(Daemon { label: opts.compare_label.clone(), path: path.clone(), note: opts.compare_note.clone() });
    }
    let results = run(&daemons, opts.delay_seconds)?;
    render(&daemons, &results, opts.delay_seconds, machine)
}

/// The heading of the section in BENCHMARKS.md.
pub const HEADING: &str = "## Mirror delay";

/// One request shape, run at a constant rate.
pub struct Case {
    /// Its name in the report.
    pub name: &'static str,
    /// `GET` or `POST`.
    method: &'static str,
    /// Body bytes (POST).
    body: usize,
    /// Requests per second (open loop).
    pub rate: u32,
    /// Kept-alive connections the requests are spread over.
    conns: usize,
    /// The primary.
    primary: Primary,
}

/// What answers on the primary's port.
#[derive(Clone, Copy)]
enum Primary {
    /// httpbin, answering every request after this many ms (0: at once).
    Httpbin { delay_ms: u64 },
    /// nginx answering at once, except every `slow_every`th request of a connection, which it
    /// proxies to an httpbin that answers after `delay_ms`.
    Mixed { slow_every: u32, delay_ms: u64 },
}

/// The shapes measured.
pub fn cases() -> Vec<Case> {
    vec![
        Case { name: "GET, small", method: "GET", body: 0, rate: 500, conns: 32, primary: fast() },
        Case { name: "POST 10 KB body", method: "POST", body: 10_000, rate: 500, conns: 32, primary: fast() },
        // 1,000,000 bytes + head stays under the daemon's default 1 MiB `replay.bufferBytes`: the
        // request is sent to the mirror whole, once every byte of it was acknowledged.
        Case { name: "POST 1 MB body", method: "POST", body: 1_000_000, rate: 100, conns: 16, primary: fast() },
        Case {
            name: "GET, every answer after 30 ms",
            method: "GET",
            body: 0,
            rate: 500,
            conns: 32,
            primary: Primary::Httpbin { delay_ms: 30 },
        },
        Case {
            name: "GET, every answer after 50 ms",
            method: "GET",
            body: 0,
            rate: 500,
            conns: 32,
            primary: Primary::Httpbin { delay_ms: 50 },
        },
        Case {
            name: "GET, 1 in 5 answered after 50 ms",
            method: "GET",
            body: 0,
            rate: 500,
            conns: 32,
            primary: Primary::Mixed { slow_every: 5, delay_ms: 50 },
        },
    ]
}

fn fast() -> Primary {
    Primary::Httpbin { delay_ms: 0 }
}

/// A daemon binary and its name in the report.
pub struct Daemon {
    /// Its name in the report.
    pub label: String,
    /// The `mirror` binary.
    pub path: PathBuf,
    /// What it is, for the report.
    pub note: Option<String>,
}

/// What one case saw with one daemon (for the mixed case: one of its two kinds of requests).
pub struct Measured {
    /// Index into [`cases`].
    pub case: usize,
    /// Which requests of the case (`None`: all of them).
    pub part: Option<&'static str>,
    /// Index into the daemons.
    pub daemon: usize,
    /// Requests sent.
    pub sent: usize,
    /// Requests the primary answered.
    pub answered: usize,
    /// Answered requests the mirror received.
    pub at_mirror: usize,
    /// Client send → response received, µs, per answered request.
    pub response: Vec<i64>,
    /// Client send → the primary's httpbin read the head, µs (behind nginx in the mixed case, so
    /// only for its slow requests).
    pub primary_head: Vec<i64>,
    /// Client send → mirror read the head, µs, per request the mirror received.
    pub mirror: Vec<i64>,
    /// Mirror read the head − client had the full response, µs (negative: the mirror was first).
    pub mirror_after_response: Vec<i64>,
    /// Largest lag of a send behind its schedule, µs (the load generator keeping up).
    pub max_send_lag_us: u64,
    /// The daemon's `flows` summary at exit.
    pub flows: Value,
}

/// Nearest-rank percentile of µs values, in ms (NaN when empty).
pub fn pct(v: &[i64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_unstable();
    let i = ((v.len() as f64 * p / 100.0).ceil() as usize).clamp(1, v.len()) - 1;
    v[i] as f64 / 1000.0
}

fn unix_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// One request as the client saw it.
struct Sent {
    path: String,
    /// One of the mixed case's slow requests.
    slow: bool,
    send_ns: i64,
    /// When its full response was read (None: failed).
    done_ns: Option<i64>,
}

/// Open-loop constant-rate load from namespace `ns`, each request with its own path
/// `/md/<tag>/<conn>/<i>` (`/md/slow/…` for the mixed case's slow ones); returns every request
/// with its wall-clock send time, and the largest lag of a send behind its schedule.
fn load(ns: &str, addr: SocketAddr, case: &Case, tag: &str, duration: Duration) -> Result<(Vec<Sent>, u64)> {
    let body: Arc<Vec<u8>> = Arc::new((0..case.body).map(|i| (i % 251) as u8).collect());
    let start = Instant::now() + Duration::from_millis(100);
    let interval = Duration::from_secs_f64(case.conns as f64 / f64::from(case.rate));
    let mut threads = Vec::new();
    for c in 0..case.conns {
        let (ns, body, tag, method, conns) = (ns.to_string(), body.clone(), tag.to_string(), case.method, case.conns);
        let slow_every = match case.primary {
            Primary::Mixed { slow_every, .. } => slow_every,
            Primary::Httpbin { .. } => 0,
        };
        threads.push(std::thread::spawn(move || -> Result<(Vec<Sent>, u64)> {
            enter_netns(&ns)?;
            let connect = || load::connect(addr);
            let mut s = connect()?;
            let mut buf = vec![0u8; 64 * 1024];
            let (mut out, mut lag) = (Vec::new(), 0u64);
            let offset = interval.mul_f64(c as f64 / conns as f64);
            for i in 0u32.. {
                let scheduled = start + offset + interval * i;
                if scheduled >= start + duration {
                    break;
                }
                let slow = slow_every > 0 && i % slow_every == slow_every - 1;
                let path = if slow { format!("/md/slow/{tag}/{c}/{i}") } else { format!("/md/{tag}/{c}/{i}") };
                let req = request(method, &path, &[("User-Agent", "bench")], &body);
                if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                lag = lag.max(scheduled.elapsed().as_micros() as u64);
                let send_ns = unix_ns();
                let ok = s.write_all(&req).is_ok() && read_one(&mut s, &mut buf).is_ok();
                out.push(Sent { path, slow, send_ns, done_ns: ok.then(unix_ns) });
                if !ok {
                    s = connect()?;
                }
            }
            Ok((out, lag))
        }));
    }
    let (mut all, mut lag) = (Vec::new(), 0);
    for t in threads {
        let (v, l) = t.join().map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        all.extend(v);
        lag = lag.max(l);
    }
    Ok((all, lag))
}

/// `uri` → `received_unix_ns` of an httpbin access log (first entry per uri).
fn received(log: &Path) -> HashMap<String, i64> {
    let mut m = HashMap::new();
    for e in access_log(log) {
        if let (Some(uri), Some(t)) = (e["uri"].as_str(), e["received_unix_ns"].as_i64()) {
            m.entry(uri.to_string()).or_insert(t);
        }
    }
    m
}

/// Runs every case with every daemon (interleaved: case by case, daemon by daemon), each run in
/// fresh servers and a fresh daemon, over new connections opened after the daemon is attached.
pub fn run(daemons: &[Daemon], seconds: u64) -> Result<Vec<Measured>> {
    let topo = Topology::new()?;
    let primary: SocketAddr = format!("{PRIMARY_V4}:{PORT}").parse()?;
    let config = topo.config_with(100.0, "", "replay: {connections: 8}\n")?;
    let mut out = Vec::new();
    for (ci, case) in cases().iter().enumerate() {
        for (di, daemon) in daemons.iter().enumerate() {
            println!("mirror delay: {} at {} req/s, daemon {}", case.name, case.rate, daemon.label);
            let tag = format!("c{ci}d{di}");
            let p_name = format!("md-primary-{tag}");
            let m_name = format!("md-mirror-{tag}");
            let _servers = primary_servers(&topo, case.primary, &p_name)?;
            let _m = topo.httpbin(&topo.mirror, &m_name, &format!("{MIRROR_V4}:{PORT}"), &[])?;
            let args = ["run", "--config", config.to_str().context("utf-8 path")?];
            let mut d = topo.spawn(&topo.primary, &format!("md-daemon-{tag}"), &daemon.path, &args)?;
            d.wait_for_stderr("ready", Duration::from_secs(30))?;
            let (sent, lag) = load(&topo.client, primary, case, &tag, Duration::from_secs(seconds))?;
            // Let replay drain.
            std::thread::sleep(Duration::from_secs(2));
            let summary = topo.stop_daemon(d, libc::SIGINT)?;
            let at_primary = received(&topo.path(&format!("{p_name}.log")));
            let at_mirror = received(&topo.path(&format!("{m_name}.log")));
            let parts: &[(Option<&'static str>, Option<bool>)] = match case.primary {
                Primary::Httpbin { .. } => &[(None, None)],
                Primary::Mixed { .. } => &[(Some("the slow ones"), Some(true)), (Some("the others"), Some(false))],
            };
            for &(part, slow) in parts {
                let mut m = Measured {
                    case: ci,
                    part,
                    daemon: di,
                    sent: 0,
                    answered: 0,
                    at_mirror: 0,
                    response: Vec::new(),
                    primary_head: Vec::new(),
                    mirror: Vec::new(),
                    mirror_after_response: Vec::new(),
                    max_send_lag_us: lag,
                    flows: summary["flows"].clone(),
                };
                for s in sent.iter().filter(|s| slow.is_none_or(|slow| s.slow == slow)) {
                    m.sent += 1;
                    let Some(done) = s.done_ns else { continue };
                    m.answered += 1;
                    m.response.push((done - s.send_ns) / 1000);
                    if let Some(t) = at_primary.get(&s.path) {
                        m.primary_head.push((t - s.send_ns) / 1000);
                    }
                    if let Some(t) = at_mirror.get(&s.path) {
                        m.at_mirror += 1;
                        m.mirror.push((t - s.send_ns) / 1000);
                        m.mirror_after_response.push((t - done) / 1000);
                    }
                }
                println!(
                    "  {}: answered {}/{}, at mirror {}, response p50 {:.3} ms, mirror p50 {:.3} p90 {:.3} p99 {:.3} ms, send lag max {} µs, flows {}",
                    part.unwrap_or("all"),
                    m.answered,
                    m.sent,
                    m.at_mirror,
                    pct(&m.response, 50.0),
                    pct(&m.mirror, 50.0),
                    pct(&m.mirror, 90.0),
                    pct(&m.mirror, 99.0),
                    lag,
                    m.flows
                );
                out.push(m);
            }
        }
    }
    Ok(out)
}

/// Starts what answers on the primary's port (killed when the returned processes drop); the
/// httpbin that sees the requests (all, or the mixed case's slow ones) logs to `<name>.log`.
fn primary_servers(topo: &Topology, primary: Primary, name: &str) -> Result<Vec<Proc>> {
    Ok(match primary {
        Primary::Httpbin { delay_ms } => {
            let delay = delay_ms.to_string();
            let extra: &[&str] = if delay_ms > 0 { &["--delay-ms", &delay] } else { &[] };
            vec![topo.httpbin(&topo.primary, name, &format!("{PRIMARY_V4}:{PORT}"), extra)?]
        }
        Primary::Mixed { delay_ms, .. } => {
            let slow = topo.httpbin(&topo.primary, name, "127.0.0.1:8002", &["--delay-ms", &delay_ms.to_string()])?;
            let nginx = crate::env::nginx(
                topo,
                &topo.primary,
                &format!("{name}-nginx"),
                "1",
                &format!(
                    "  upstream slow {{ server 127.0.0.1:8002; keepalive 64; }}\n  server {{ listen {PRIMARY_V4}:{PORT} backlog=4096; access_log off;\n    location /md/slow/ {{ proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_pass http://slow; }}\n    location / {{ return 200 \"primary\\n\"; }} }}"
                ),
            )?;
            vec![nginx, slow]
        }
    })
}

/// The section (heading included) for BENCHMARKS.md.
pub fn render(daemons: &[Daemon], results: &[Measured], seconds: u64, machine: &str) -> Result<String> {
    let cases = cases();
    let mut md = String::new();
    writeln!(md, "{HEADING}\n")?;
    writeln!(
        md,
        "How long after the client sent a request the mirror receives it, next to how long the primary took to answer that same request. The daemon hands a client's bytes to framing only once the primary's TCP acknowledged them (its ACKs are captured on TC egress), so a request cannot reach the mirror before the primary's ACK of its last segment.\n"
    )?;
    writeln!(
        md,
        "Measured on {machine}, with everything else the machine was doing at the time (other builds included); {seconds} s per row, open-loop at the rate shown over 32 kept-alive connections (16 for 1 MB) opened after the daemon attached, a fresh daemon (100%, `replay: {{connections: 8}}`) and fresh servers per row. The mirror is `httpbin` (`tests/src/bin/httpbin.rs`), whose access log has `received_unix_ns`, the wall clock when it read a request's head; the primary is httpbin too (with `--delay-ms` for the slow rows), except in the last case: nginx answering at once, proxying every fifth request of a connection to an httpbin that answers after 50 ms. The client takes the wall clock just before writing each request and gives it a unique path (`/md/…`) to join the logs; every namespace reads the same clock.\n"
    )?;
    writeln!(
        md,
        "- **response**: client send → the client has the full response (the primary's latency as its client sees it).\n- **primary head**: client send → the primary's httpbin read the request head (behind nginx for the last case's slow requests; none for its fast ones).\n- **mirror**: client send → the mirror read the request head.\n- **mirror − response**: per request, mirror read − client had its response (negative: the mirror had the request first).\n"
    )?;
    if daemons.len() > 1 {
        writeln!(md, "Daemons compared, case by case:\n")?;
        for d in daemons {
            let note = d.note.as_deref().map(|n| format!(": {}.", n.trim_end_matches('.'))).unwrap_or_default();
            writeln!(md, "- *{}*{note}", d.label)?;
        }
        writeln!(md)?;
    }
    writeln!(
        md,
        "| request | req/s | daemon | answered | at mirror | response p50 / p90 / p99 ms | primary head p50 / p99 ms | mirror p50 / p90 / p99 ms | mirror − response p50 / p90 / p99 ms |"
    )?;
    writeln!(md, "|---|---:|---|---:|---:|---:|---:|---:|---:|")?;
    let ms = |v: &[i64], ps: &[f64]| {
        if v.is_empty() {
            return "–".to_string();
        }
        ps.iter().map(|&p| format!("{:.2}", pct(v, p))).collect::<Vec<_>>().join(" / ")
    };
    let three = [50.0, 90.0, 99.0];
    for r in results {
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row_name(&cases, r),
            cases[r.case].rate,
            daemons[r.daemon].label,
            r.answered,
            r.at_mirror,
            ms(&r.response, &three),
            ms(&r.primary_head, &[50.0, 99.0]),
            ms(&r.mirror, &three),
            ms(&r.mirror_after_response, &three)
        )?;
    }
    writeln!(md)?;
    let lag = results.iter().map(|r| r.max_send_lag_us).max().unwrap_or(0);
    writeln!(
        md,
        "Largest lag of a send behind its schedule over all rows: {:.1} ms (the load generator shares the two cores with both servers and the daemon).\n",
        lag as f64 / 1000.0
    )?;
    for r in results.iter().filter(|r| r.at_mirror < r.answered) {
        let f = &r.flows;
        writeln!(
            md,
            "- {} / {}: {} of {} answered requests did not reach the mirror; the daemon's flow counters for the run: {} gaps ({} bytes), {} retransmitted and {} out-of-order segments, {} flows given up after a gap.",
            row_name(&cases, r),
            daemons[r.daemon].label,
            r.answered - r.at_mirror,
            r.answered,
            f["gaps"],
            f["gap_bytes"],
            f["retransmitted_segments"],
            f["out_of_order_segments"],
            f["flows_given_up_gap"]
        )?;
    }
    if results.iter().any(|r| r.at_mirror < r.answered) {
        writeln!(md)?;
    }
    explain(&mut md, daemons, results)?;
    writeln!(
        md,
        "Rerun this section alone (root): `cargo build --release --bins && MIRROR_BIN_DIR=target/release target/release/bench --only mirror-delay --out BENCHMARKS.md` replaces it here and leaves the rest of the file; `--daemon PATH` measures another `mirror` binary, `--compare-daemon PATH --compare-label NAME --compare-note TEXT` adds rows for a second one. `cargo xtask bench` runs it too, with this build's daemon only.\n"
    )?;
    Ok(md)
}

/// "Reading it": what the rows say, with this build's figures (and the compared build's).
fn explain(md: &mut String, daemons: &[Daemon], results: &[Measured]) -> Result<()> {
    let find = |case: usize, part: Option<&str>, daemon: usize| {
        results.iter().find(|r| r.case == case && r.part == part && r.daemon == daemon)
    };
    // "X ms" for this build, "X ms (Y ms with <compared>)" when there is a second daemon.
    let fig = |case: usize, part: Option<&str>, f: &dyn Fn(&Measured) -> f64| -> String {
        let one = |d| find(case, part, d).map_or(f64::NAN, f);
        match daemons.get(1) {
            Some(other) => format!("{:.1} ms ({:.1} ms with *{}*)", one(0), one(1), other.label),
            None => format!("{:.1} ms", one(0)),
        }
    };
    let mirror50 = |r: &Measured| pct(&r.mirror, 50.0);
    let resp50 = |r: &Measured| pct(&r.response, 50.0);
    writeln!(md, "Reading it (medians from the table):\n")?;
    writeln!(
        md,
        "- **Fast primary, small requests** (first two rows): the ACK of a small GET rides on the response, {} after the send; a 10 KB body, more than one full segment, is acknowledged at once. The mirror reads a small GET {} after its send, a 10 KB POST {}: the wait for the ACK adds about the primary's response time, the rest is the daemon's own path from capture to replay, there with or without the gate.",
        fig(0, None, &resp50),
        fig(0, None, &mirror50),
        fig(1, None, &mirror50)
    )?;
    writeln!(
        md,
        "- **POST 1 MB**: bulk data is acknowledged as it arrives (every other full segment); the request is held until its last byte is acknowledged and then sent whole. The mirror reads its head {} after the send.",
        fig(2, None, &mirror50)
    )?;
    writeln!(
        md,
        "- **Every answer after 30 ms**: while a server answers within the delayed-ACK timeout (40 ms) Linux keeps the socket in *pingpong* mode and lets the ACK ride on the response, so the mirror gets the request with the response: {} after the send, response {}.",
        fig(3, None, &mirror50),
        fig(3, None, &resp50)
    )?;
    writeln!(
        md,
        "- **Every answer after 50 ms**: the server never answers within the timeout, so the socket leaves pingpong mode and acknowledges each request as soon as the application reads it: the mirror reads it {} after the send.",
        fig(4, None, &mirror50)
    )?;
    writeln!(
        md,
        "- **1 in 5 answered after 50 ms**: the fast answers keep the socket in pingpong mode, so a slow request's ACK waits for the delayed-ACK timer (40 ms, rounded up to timer ticks): the slow requests reach the mirror {} after the send — still before their response — while the fast ones take {}.",
        fig(5, Some("the slow ones"), &mirror50),
        fig(5, Some("the others"), &mirror50)
    )?;
    writeln!(
        md,
        "\nSo waiting for the primary's ACK delays a small request's mirror copy by up to the primary's response time, capped by the ~40 ms delayed-ACK timer, and by nothing when Linux acknowledges at once (requests of more than one full segment, connections whose server is never that fast).\n"
    )?;
    Ok(())
}

fn row_name(cases: &[Case], r: &Measured) -> String {
    match r.part {
        Some(part) => format!("{}: {part}", cases[r.case].name),
        None => cases[r.case].name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_in_ms() {
        let v: Vec<i64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!((pct(&v, 50.0), pct(&v, 90.0), pct(&v, 99.0)), (50.0, 90.0, 99.0));
        assert_eq!(pct(&[-2000, 3000], 50.0), -2.0);
        assert!(pct(&[], 50.0).is_nan());
    }
}
