//! The measurements: interleaved latency pairs, fidelity steps and closed-loop saturation, each
//! for every peer, in one run.

use std::time::Duration;

use anyhow::{Context as _, Result};
use mirror::stats::DropReason;
use mirror_tests::{
    load::{Load, load},
    metric,
};
use serde_json::Value;

use crate::env::{Env, Peer, Used};

/// How long replay gets to drain (and the mirror's access log to be flushed) after a run.
const DRAIN: Duration = Duration::from_millis(2500);

/// The small GET every latency and saturation run sends (wrk sends the same path).
pub const GET_PATH: &str = "/api/items?id=42";

/// One latency run.
pub struct LatencyRun {
    /// Who was attached.
    pub peer: Peer,
    /// The peer whose pair this run belongs to (`peer` itself, or its baseline run).
    pub of: Peer,
    pub rate: u32,
    /// Which pair it belongs to (0-based), per peer and rate.
    pub pair: usize,
    pub load: Load,
    pub used: Used,
    pub mirrored: usize,
}

/// Connections of the direct-copy reference: as many as our daemon keeps to a mirror by default.
pub fn copy_connections() -> usize {
    mirror::config::ReplaySettings::default().connections
}

/// One run of `peer` at `rate`: attached fresh, load, drain, detached.
fn run_one(env: &Env, peer: Peer, rate: u32, secs: u64, conns: usize, req: &[u8]) -> Result<(Load, Used, usize)> {
    let a = env.attach(peer)?;
    let before = env.mirrored();
    // The reference: a second paced client sends the same requests to the mirror, over as many
    // connections as our daemon keeps to it by default, from the primary's namespace.
    let copies = (peer == Peer::DirectCopy).then(|| {
        let (ns, to, req) = (env.topo.primary.clone(), env.mirror_addr(), req.to_vec());
        let conns = copy_connections();
        std::thread::spawn(move || load(&ns, to, f64::from(rate), Duration::from_secs(secs), conns, req))
    });
    let l = load(&env.topo.client, env.target(peer), f64::from(rate), Duration::from_secs(secs), conns, req.to_vec())?;
    if let Some(t) = copies {
        let c = t.join().map_err(|_| anyhow::anyhow!("the copy client panicked"))??;
        anyhow::ensure!(c.errors == 0, "the copy client had {} errors", c.errors);
    }
    std::thread::sleep(DRAIN);
    let used = a.used()?;
    let mirrored = env.mirrored() - before;
    a.detach(env)?;
    env.settle_mirror();
    Ok((l, used, mirrored))
}

/// Interleaved pairs (baseline, peer, baseline, peer, ...) at each rate: `pairs` for our daemon,
/// `peer_pairs` for each other peer.
pub fn latency(
    env: &Env,
    rates: &[u32],
    pairs: usize,
    peer_pairs: usize,
    secs: u64,
    req: &[u8],
) -> Result<Vec<LatencyRun>> {
    let mut out = Vec::new();
    for &rate in rates {
        // Warm-up: connections, caches, the primary's first requests.
        load(&env.topo.client, env.target(Peer::Nothing), 500.0, Duration::from_secs(1), 64, req.to_vec())?;
        let peers = [
            (Peer::Ours, pairs),
            (Peer::DirectCopy, peer_pairs),
            (Peer::GoReplay, peer_pairs),
            (Peer::Nginx, peer_pairs),
        ];
        for (peer, n) in peers {
            for pair in 0..n {
                for p in [peer.baseline(), peer] {
                    println!("latency: {} at {rate} req/s, pair {}", p.name(), pair + 1);
                    let (load, used, mirrored) = run_one(env, p, rate, secs, 64, req)?;
                    println!(
                        "  p50 {:.3} ms, p99 {:.3} ms, {} answered, {mirrored} mirrored, {:.2} CPU-s",
                        load.pct(50.0),
                        load.pct(99.0),
                        load.ok,
                        used.cpu
                    );
                    out.push(LatencyRun { peer: p, of: peer, rate, pair, load, used, mirrored });
                }
            }
        }
    }
    Ok(out)
}

/// Our daemon started once, then `n` runs in a row at `rate`: the first run after the start
/// next to the later ones (a start-up cost shows in the first only).
pub fn in_a_row(env: &Env, rate: u32, secs: u64, n: usize, req: &[u8]) -> Result<Vec<(Load, Used, usize)>> {
    let mut a = env.attach(Peer::Ours)?;
    let mut out = Vec::new();
    let mut last = Value::Null;
    for i in 0..n {
        println!("in a row: {} at {rate} req/s, run {}", Peer::Ours.name(), i + 1);
        a.mark()?;
        let before = env.mirrored();
        let l = load(
            &env.topo.client,
            env.target(Peer::Ours),
            f64::from(rate),
            Duration::from_secs(secs),
            64,
            req.to_vec(),
        )?;
        std::thread::sleep(DRAIN);
        let used = a.used()?;
        let mirrored = env.mirrored() - before;
        println!(
            "  p50 {:.3} ms, p99 {:.3} ms, {} answered, {mirrored} mirrored, {:.2} CPU-s {}",
            l.pct(50.0),
            l.pct(99.0),
            l.ok,
            used.cpu,
            loss_reasons(&a.metrics(env), &mut last)
        );
        out.push((l, used, mirrored));
    }
    if let Some(summary) = a.detach(env)? {
        println!("  summary: {summary}");
    }
    Ok(out)
}

/// The baseline run paired with `run` (same rate, same pair, the peer's baseline).
pub fn baseline_of<'a>(runs: &'a [LatencyRun], run: &LatencyRun) -> Option<&'a LatencyRun> {
    runs.iter().find(|b| b.of == run.of && b.peer != run.peer && b.rate == run.rate && b.pair == run.pair)
}

/// One fidelity step.
pub struct Step {
    pub peer: Peer,
    pub kind: &'static str,
    pub rate: u32,
    pub load: Load,
    pub received: usize,
    pub used: Used,
    /// Our daemon's loss counters that moved during the step.
    pub why: String,
}

/// What a fidelity plan runs: per peer, per request kind, the rates.
pub struct Plan {
    pub peer: Peer,
    pub kind: &'static str,
    pub rates: Vec<u32>,
    pub request: Vec<u8>,
}

/// Stepped open-loop rates, each peer attached once for all its steps. Returns the steps, our
/// daemon's final summary and its peak RSS (KiB).
pub fn fidelity(env: &Env, plans: &[Plan], secs: u64) -> Result<(Vec<Step>, Value, u64)> {
    let mut steps = Vec::new();
    let (mut summary, mut rss) = (Value::Null, 0);
    for peer in [Peer::Ours, Peer::GoReplay, Peer::Nginx] {
        if !plans.iter().any(|p| p.peer == peer) {
            continue;
        }
        let mut a = env.attach(peer)?;
        let mut last = Value::Null;
        for plan in plans.iter().filter(|p| p.peer == peer) {
            for &rate in &plan.rates {
                println!("fidelity: {} {} at {rate} req/s", peer.name(), plan.kind);
                a.mark()?;
                let before = env.mirrored();
                let conns = if rate >= 8000 { 64 } else { 32 };
                let l = load(
                    &env.topo.client,
                    env.target(peer),
                    f64::from(rate),
                    Duration::from_secs(secs),
                    conns,
                    plan.request.clone(),
                )?;
                std::thread::sleep(DRAIN);
                let received = env.mirrored() - before;
                let used = a.used()?;
                let why = if peer == Peer::Ours { loss_reasons(&a.metrics(env), &mut last) } else { String::new() };
                println!("  {received} of {} at the mirror, {:.2} CPU-s, {why}", l.ok, used.cpu);
                steps.push(Step { peer, kind: plan.kind, rate, load: l, received, used, why });
            }
        }
        if peer == Peer::Ours {
            rss = a.peak_rss_kib().unwrap_or(0);
        }
        if let Some(s) = a.detach(env)? {
            summary = s;
        }
        env.settle_mirror();
    }
    Ok((steps, summary, rss))
}

/// A closed-loop saturation run.
pub struct Saturation {
    pub peer: Peer,
    /// Requests wrk completed, and per second.
    pub requests: u64,
    pub per_second: f64,
    /// Non-2xx answers and socket errors wrk reported.
    pub errors: u64,
    pub mirrored: usize,
    /// Of those, how many arrived as the first request of a new connection to the mirror.
    pub fresh: usize,
    pub used: Used,
    /// Our daemon's loss counters that moved during the run.
    pub why: String,
}

/// wrk's connections and threads (the setup: 2 threads, 16 connections).
pub const WRK: (u32, u32) = (2, 16);

/// The primary's closed-loop maximum with each peer attached: wrk for `secs`.
pub fn saturation(env: &Env, secs: u64, ours_only: bool) -> Result<Vec<Saturation>> {
    let mut out = Vec::new();
    let peers: &[Peer] = if ours_only {
        &[Peer::Nothing, Peer::Ours]
    } else {
        &[Peer::Nothing, Peer::Ours, Peer::GoReplay, Peer::NginxPlain, Peer::Nginx]
    };
    for &peer in peers {
        println!("saturation: {}", peer.name());
        let a = env.attach(peer)?;
        let before = env.mirrored_fresh();
        let url = format!("http://{}{GET_PATH}", env.target(peer));
        let text = mirror_tests::ns_run(
            &env.topo.client,
            "wrk",
            &[&format!("-t{}", WRK.0), &format!("-c{}", WRK.1), &format!("-d{secs}s"), &url],
        )?;
        std::thread::sleep(DRAIN);
        let used = a.used()?;
        let why = if peer == Peer::Ours { loss_reasons(&a.metrics(env), &mut Value::Null) } else { String::new() };
        let after = env.mirrored_fresh();
        let (mirrored, fresh) = (after.0 - before.0, after.1 - before.1);
        a.detach(env)?;
        env.settle_mirror();
        let (requests, per_second, errors) = parse_wrk(&text).with_context(|| format!("wrk said:\n{text}"))?;
        println!("  {per_second:.0} req/s, {requests} requests, {mirrored} mirrored, {:.2} CPU-s {why}", used.cpu);
        out.push(Saturation { peer, requests, per_second, errors, mirrored, fresh, used, why });
    }
    Ok(out)
}

/// (requests, requests per second, errors) from wrk's report.
pub fn parse_wrk(text: &str) -> Option<(u64, f64, u64)> {
    let requests = text.lines().find(|l| l.contains(" requests in "))?.split_whitespace().next()?.parse().ok()?;
    let per_second = text.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:"))?.trim().parse().ok()?;
    let non2xx: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let socket: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|v| v.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    Some((requests, per_second, non2xx + socket))
}

/// The drop reasons a step reports, with their names in the report.
pub const LOSSES: [(DropReason, &str); 8] = [
    (DropReason::QueueFull, "queue full"),
    (DropReason::MemoryBudget, "memory budget"),
    (DropReason::Gap, "gap"),
    (DropReason::Timeout, "backend timeout"),
    (DropReason::ConnectError, "backend connect"),
    (DropReason::IoError, "backend io"),
    (DropReason::BadResponse, "bad response"),
    (DropReason::StreamReset, "stream reset"),
];

/// What the daemon's counters say about losses since the previous step.
pub fn loss_reasons(metrics: &str, last: &mut Value) -> String {
    let drops = LOSSES.map(|(reason, label)| (label, format!("mirror_requests_dropped_total{{reason=\"{reason}\"}}")));
    let series = [
        ("kernel ring", "mirror_kernel_packets_total{kind=\"lost\"}".to_string()),
        // A flow given up after a gap: its later requests are never framed, so never counted
        // one by one.
        ("flows given up (gap)", "mirror_flow_events_total{kind=\"flows_given_up_gap\"}".to_string()),
        // What the primary accepted on those flows afterwards, which was never framed.
        ("bytes acknowledged on given-up flows", "mirror_flow_events_total{kind=\"given_up_acked_bytes\"}".to_string()),
    ]
    .into_iter()
    .chain(drops);
    let mut out = Vec::new();
    let mut now = serde_json::Map::new();
    for (label, s) in series {
        let v = metric(metrics, &s);
        let prev = last.get(label).and_then(Value::as_f64).unwrap_or(0.0);
        if v > prev {
            out.push(format!("{label} +{}", v - prev));
        }
        now.insert(label.to_string(), Value::from(v));
    }
    *last = Value::Object(now);
    if out.is_empty() { "none".into() } else { out.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_report_and_loss_series_are_parsed() {
        let wrk = "Running 10s test @ http://10.77.0.2:8000/\n  2 threads and 16 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   210.11us  100.00us   5.00ms   90.00%\n  741234 requests in 10.00s, 100.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  74123.40\nTransfer/sec:     10.00MB\n";
        assert_eq!(parse_wrk(wrk), Some((741234, 74123.4, 7)));
        let metrics = "mirror_kernel_packets_total{kind=\"lost\"} 5\nmirror_requests_dropped_total{reason=\"queue_full\"} 2\nmirror_requests_dropped_total{reason=\"stream_reset\"} 1\n";
        let mut last = Value::Null;
        assert_eq!(loss_reasons(metrics, &mut last), "kernel ring +5, queue full +2, stream reset +1");
        assert_eq!(loss_reasons(metrics, &mut last), "none");
    }
}
