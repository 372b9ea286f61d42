//! What comparing the mirror's responses with the primary's (issue 15) costs: the same open-loop
//! workload against the primary, with the daemon mirroring without comparing, comparing, and
//! comparing with a baseline destination (each next to its no-compare reference), interleaved and
//! repeated, for small JSON responses and for ~50 kB ones (some gzip-encoded on one side), the
//! latter also at a rate beyond what the machine can compare (what gives way then). Per
//! configuration: the daemon's CPU (and its capture thread's) per request, the classifier's
//! kernel time per request, peak RSS and the compare kind of the memory budget, the kernel ring's
//! lost samples, the compare results against the requests sent, and the primary's latency. Writes
//! its section of BENCHMARKS.md in place (`--out`). Needs root; all traffic stays inside the
//! namespaces it creates (client → primary v1; mirror namespace: v2 and the baseline v1b).

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use mirror_tests::{
    BpfStats, MIRROR_V4, PORT, PRIMARY_IFACE, PRIMARY_V4, Proc, Topology, bpf_stats, cpu_seconds,
    load::{Load, load},
    machine,
    markdown::replace_section,
    metric, peak_rss_kib, request, rss_kib, scrape_metrics, thread_cpu_seconds,
};
use serde_json::Value;

/// The heading of the section in BENCHMARKS.md.
const HEADING: &str = "## Cost of comparing responses";

/// The compare results, in the order reported.
const RESULTS: [&str; 4] = ["same", "different", "noise", "incomplete"];

#[derive(Parser)]
struct Args {
    /// The file whose section is replaced (created if absent).
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Requests per second of the small-JSON workload.
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// Requests per second of the large-body workload (within what this machine compares).
    #[arg(long, default_value_t = 250)]
    large_rate: u32,
    /// Requests per second of the large-body workload run beyond capacity (0: not run).
    #[arg(long, default_value_t = 2000)]
    overload_rate: u32,
    /// Rounds: each configuration runs once per round, in turn.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Client connections (kept alive), split evenly across the workload's paths.
    #[arg(long, default_value_t = 60)]
    conns: usize,
    /// Only this workload (`small`, `large` or `overload`; all by default), for a quick look.
    #[arg(long)]
    only: Option<String>,
}

/// What the daemon is told to do (or that it is not there).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Config {
    /// No daemon: the primary alone.
    Nothing,
    /// Mirroring to v2, no comparison.
    Mirror,
    /// Mirroring to v2, its responses compared with the primary's.
    Compare,
    /// Mirroring to v2 and v1b, no comparison (the reference of `Baseline`).
    Mirror2,
    /// Mirroring to v2 and v1b, v2 compared with v1b as its baseline.
    Baseline,
}

const CONFIGS: [Config; 5] = [Config::Nothing, Config::Mirror, Config::Compare, Config::Mirror2, Config::Baseline];

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Nothing => "no daemon",
            Config::Mirror => "(a) mirror v2, no compare",
            Config::Compare => "(b) mirror v2, compare",
            Config::Mirror2 => "(a2) mirror v2 + v1b, no compare",
            Config::Baseline => "(c) mirror v2 + v1b, compare, baseline v1b",
        }
    }

    fn compares(self) -> bool {
        matches!(self, Config::Compare | Config::Baseline)
    }

    /// The configuration without comparing that this one is measured against.
    fn reference(self) -> Option<Config> {
        match self {
            Config::Compare => Some(Config::Mirror),
            Config::Baseline => Some(Config::Mirror2),
            _ => None,
        }
    }

    /// The daemon's YAML (`None` for no daemon); differing pairs are logged to `log`.
    fn yaml(self, log: &std::path::Path) -> Option<String> {
        let two = matches!(self, Config::Mirror2 | Config::Baseline);
        let (mirrors, endpoints) = if two {
            (
                "      - destination: {host: httpbin, subset: v2}\n      - destination: {host: httpbin, subset: v1b}\n",
                format!("  httpbin/v2: [\"{MIRROR_V4}:{PORT}\"]\n  httpbin/v1b: [\"{MIRROR_V4}:8001\"]\n"),
            )
        } else {
            ("      - destination: {host: httpbin, subset: v2}\n", format!("  httpbin/v2: [\"{MIRROR_V4}:{PORT}\"]\n"))
        };
        let baseline = if self == Config::Baseline { "      baseline: httpbin/v1b\n" } else { "" };
        let policy = if self.compares() {
            format!(
                "mirrorPolicies:\n  httpbin/v2:\n    compare:\n      ignoreHeaders: [x-served-by]\n{baseline}      log: {}\n",
                log.display()
            )
        } else {
            String::new()
        };
        (self != Config::Nothing).then(|| {
            format!(
                "capture: {{interfaces: [{PRIMARY_IFACE}], ports: [{PORT}]}}\nroutes:\n  - name: cmp\n    mirrors:\n{mirrors}endpoints:\n{endpoints}{policy}"
            )
        })
    }
}

/// A workload: `/cmp/<path>` GETs, the rate split evenly across the paths.
struct Workload {
    key: &'static str,
    name: &'static str,
    paths: &'static [&'static str],
    rate: u32,
    /// Run beyond what the machine can compare: its failed checks are reported as findings,
    /// not as the benchmark's failure.
    beyond: bool,
}

/// One run of one configuration.
struct Run {
    config: Config,
    load: Load,
    /// Daemon CPU seconds (user + system) from the start of the load until it was settled.
    cpu: f64,
    /// The same for its capture thread.
    capture_cpu: f64,
    /// The classifier's kernel time and packets over the same window.
    bpf_ns: u64,
    bpf_runs: u64,
    peak_rss_kib: u64,
    /// The highest `mirror_memory_held_bytes{kind="compare"}` scraped (every 250 ms).
    held_compare: u64,
    /// The kernel ring's lost samples (classifier and reader).
    lost: u64,
    /// The compare results counted during the load (same, different, noise, incomplete).
    results: [u64; 4],
    /// Requests v2's access log got during the load.
    at_v2: u64,
    /// Reverse segments shipped with payload; the server streams' gaps; pairs the join gave up.
    reverse_shipped: u64,
    response_gaps: u64,
    timed_out: u64,
    channel_dropped: u64,
    /// The join's other losses: pairs refused (full), mirror sides with no pair.
    refused: u64,
    unmatched: u64,
}

fn series(result: &str) -> String {
    format!("mirror_compare_total{{route=\"cmp\",mirror=\"httpbin/v2\",result=\"{result}\"}}")
}

fn results(text: &str) -> [u64; 4] {
    RESULTS.map(|r| metric(text, &series(r)) as u64)
}

fn lines(path: &std::path::Path) -> u64 {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count() as u64)
}

/// The daemon's CPU, capture-thread CPU and classifier counters now.
fn counters(pid: i32) -> Result<(f64, f64, (u64, u64))> {
    Ok((cpu_seconds(pid)?, thread_cpu_seconds(pid, "capture")?, bpf_stats(pid)))
}

/// Open-loop load on each of `paths` at once (`rate` split evenly), merged.
fn load_paths(topo: &Topology, paths: &[&str], rate: u32, secs: u64, conns: usize) -> Result<Load> {
    let primary: SocketAddr = format!("{PRIMARY_V4}:{PORT}").parse()?;
    let share = f64::from(rate) / paths.len() as f64;
    let conns = (conns / paths.len()).max(1);
    let loads: Vec<Result<Load>> = std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .iter()
            .map(|p| {
                let req = request("GET", &format!("/cmp/{p}"), &[("Accept", "*/*")], b"");
                let client = topo.client.clone();
                s.spawn(move || load(&client, primary, share, Duration::from_secs(secs), conns, req))
            })
            .collect();
        handles.into_iter().map(|h| h.join().map_err(|_| anyhow::anyhow!("load panicked"))?).collect()
    });
    let mut total = Load::default();
    for l in loads {
        let l = l?;
        total.sent += l.sent;
        total.ok += l.ok;
        total.errors += l.errors;
        total.latencies.extend(l.latencies);
        total.elapsed = total.elapsed.max(l.elapsed);
    }
    Ok(total)
}

/// Scrapes until the compare results reach `want` (or `limit` passes); the last scrape.
fn settle(topo: &Topology, want: u64, limit: Duration) -> Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        let text = scrape_metrics(topo)?;
        if results(&text).iter().sum::<u64>() >= want || Instant::now() > deadline {
            return Ok(text);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The three versions: primary v1, mirror v2 and the baseline v1b.
fn servers(topo: &Topology) -> Result<[Proc; 3]> {
    Ok([
        topo.httpbin(&topo.primary, "v1", &format!("[::]:{PORT}"), &["--variant", "v1"])?,
        topo.httpbin(&topo.mirror, "v2", &format!("{MIRROR_V4}:{PORT}"), &["--variant", "v2"])?,
        topo.httpbin(&topo.mirror, "v1b", &format!("{MIRROR_V4}:8001"), &["--variant", "v1b"])?,
    ])
}

/// One run: fresh namespaces, servers and daemon; a 1 s warm-up (settled, not counted); the load;
/// everything settled (or 2.5 s for the configurations that do not compare); the daemon stopped.
fn run_one(w: &Workload, config: Config, args: &Args) -> Result<Run> {
    let topo = Topology::new()?;
    let _servers = servers(&topo)?;
    let Some(yaml) = config.yaml(&topo.path("differences.jsonl")) else {
        load_paths(&topo, w.paths, 200, 1, args.conns)?;
        let load = load_paths(&topo, w.paths, w.rate, args.seconds, args.conns)?;
        return Ok(Run {
            config,
            load,
            cpu: 0.0,
            capture_cpu: 0.0,
            bpf_ns: 0,
            bpf_runs: 0,
            peak_rss_kib: 0,
            held_compare: 0,
            lost: 0,
            results: [0; 4],
            at_v2: 0,
            reverse_shipped: 0,
            response_gaps: 0,
            timed_out: 0,
            channel_dropped: 0,
            refused: 0,
            unmatched: 0,
        });
    };
    let cfg = topo.path("mirror.yaml");
    std::fs::write(&cfg, yaml)?;
    let daemon = topo.daemon(&cfg)?;
    let pid = daemon.pid();
    let warm = load_paths(&topo, w.paths, 200, 1, args.conns)?;
    let before = if config.compares() {
        settle(&topo, warm.ok, Duration::from_secs(10))?
    } else {
        std::thread::sleep(Duration::from_millis(1500));
        scrape_metrics(&topo)?
    };
    let v2_log = topo.path("v2.log");
    let (at_v2_0, (cpu0, cap0, bpf0)) = (lines(&v2_log), counters(pid)?);
    let sampling = AtomicBool::new(true);
    let (load, held_compare) = std::thread::scope(|s| -> Result<(Load, u64)> {
        let sampler = s.spawn(|| {
            let mut peak = 0u64;
            while sampling.load(Ordering::Relaxed) {
                let text = scrape_metrics(&topo).unwrap_or_default();
                peak = peak.max(metric(&text, "mirror_memory_held_bytes{kind=\"compare\"}") as u64);
                std::thread::sleep(Duration::from_millis(250));
            }
            peak
        });
        let load = load_paths(&topo, w.paths, w.rate, args.seconds, args.conns);
        sampling.store(false, Ordering::Relaxed);
        let peak = sampler.join().map_err(|_| anyhow::anyhow!("sampler panicked"))?;
        Ok((load?, peak))
    })?;
    let base = results(&before);
    let after = if config.compares() {
        settle(&topo, base.iter().sum::<u64>() + load.ok, Duration::from_secs(15))?
    } else {
        std::thread::sleep(Duration::from_millis(2500));
        scrape_metrics(&topo)?
    };
    let (cpu1, cap1, bpf1) = counters(pid)?;
    let peak_rss_kib = peak_rss_kib(pid)?.max(rss_kib(pid)?);
    let at_v2 = lines(&v2_log) - at_v2_0;
    let now = results(&after);
    let summary: Value = topo.stop_daemon(daemon, libc::SIGINT).context("stopping the daemon")?;
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    Ok(Run {
        config,
        load,
        cpu: cpu1 - cpu0,
        capture_cpu: cap1 - cap0,
        bpf_ns: bpf1.0 - bpf0.0,
        bpf_runs: bpf1.1 - bpf0.1,
        peak_rss_kib,
        held_compare,
        lost: n(&summary["kernel"]["lost"]) + n(&summary["perf_lost_samples"]),
        results: std::array::from_fn(|i| now[i] - base[i]),
        at_v2,
        reverse_shipped: n(&summary["kernel"]["reverse_shipped"]),
        response_gaps: n(&summary["flows"]["response_gaps"]),
        timed_out: n(&summary["compare"]["join"]["timed_out"]),
        channel_dropped: n(&summary["compare"]["channel_dropped"]),
        refused: n(&summary["compare"]["join"]["refused"]),
        unmatched: n(&summary["compare"]["join"]["unmatched"]),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// `median (min–max)` of `f` over `runs`.
fn spread(runs: &[&Run], f: impl Fn(&Run) -> f64, digits: usize) -> String {
    let v: Vec<f64> = runs.iter().map(|r| f(r)).collect();
    let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(*x), b.max(*x)));
    format!("{:.digits$} ({lo:.digits$}–{hi:.digits$})", median(v))
}

/// CPU seconds per million answered requests.
fn per_million(cpu: f64, r: &Run) -> f64 {
    cpu / r.load.ok.max(1) as f64 * 1e6
}

/// The workload's table, and the problems its checks found.
fn table(w: &Workload, runs: &[Run], args: &Args) -> Result<(String, Vec<String>)> {
    let mut s = String::new();
    let mut problems = Vec::new();
    writeln!(s, "### {} — {} req/s for {} s, {} runs per configuration\n", w.name, w.rate, args.seconds, args.rounds)?;
    writeln!(
        s,
        "| configuration | answered | primary p50 ms | primary p99 ms | daemon CPU-s per 1M req | capture thread CPU-s per 1M | classifier ns per req | peak RSS MiB | held `compare` peak KiB | lost samples | same / different / noise / incomplete | at v2 |"
    )?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")?;
    let of = |c: Config| runs.iter().filter(|r| r.config == c).collect::<Vec<_>>();
    for c in CONFIGS {
        let rs = of(c);
        if rs.is_empty() {
            continue;
        }
        let answered: u64 = rs.iter().map(|r| r.load.ok).sum();
        let sent: u64 = rs.iter().map(|r| r.load.sent).sum();
        let p50 = spread(&rs, |r| r.load.pct(50.0), 2);
        let p99 = spread(&rs, |r| r.load.pct(99.0), 2);
        if c == Config::Nothing {
            writeln!(s, "| {} | {answered} | {p50} | {p99} | – | – | – | – | – | – | – | – |", c.name())?;
            continue;
        }
        let cpu = spread(&rs, |r| per_million(r.cpu, r), 1);
        let cap = spread(&rs, |r| per_million(r.capture_cpu, r), 1);
        let bpf = spread(&rs, |r| r.bpf_ns as f64 / r.load.ok.max(1) as f64, 0);
        let rss = spread(&rs, |r| r.peak_rss_kib as f64 / 1024.0, 0);
        let held = spread(&rs, |r| r.held_compare as f64 / 1024.0, 0);
        let lost: u64 = rs.iter().map(|r| r.lost).sum();
        let res: [u64; 4] = std::array::from_fn(|i| rs.iter().map(|r| r.results[i]).sum());
        let at_v2: u64 = rs.iter().map(|r| r.at_v2).sum();
        let counted = res.iter().sum::<u64>();
        let res_text = if c.compares() {
            let mark = if counted == answered { "" } else { " ≠ answered" };
            format!("{} / {} / {} / {}{mark}", res[0], res[1], res[2], res[3])
        } else {
            "–".to_string()
        };
        writeln!(
            s,
            "| {} | {answered} | {p50} | {p99} | {cpu} | {cap} | {bpf} | {rss} | {held} | {lost} | {res_text} | {at_v2} |",
            c.name()
        )?;
        let name = format!("{}, {}", w.name, c.name());
        if sent != answered {
            problems.push(format!("{name}: {} of {sent} requests not answered by the primary", sent - answered));
        }
        if lost > 0 {
            problems.push(format!("{name}: {lost} samples lost by the kernel ring"));
        }
        if at_v2 != answered {
            problems.push(format!("{name}: v2 got {at_v2} requests of {answered}"));
        }
        if c.compares() && (counted != answered || res[3] > 0) {
            problems.push(format!(
                "{name}: {counted} compared for {answered} answered, {} incomplete (join: timed out {}, refused {}, unmatched {}; channel dropped {}, response gaps {})",
                res[3],
                rs.iter().map(|r| r.timed_out).sum::<u64>(),
                rs.iter().map(|r| r.refused).sum::<u64>(),
                rs.iter().map(|r| r.unmatched).sum::<u64>(),
                rs.iter().map(|r| r.channel_dropped).sum::<u64>(),
                rs.iter().map(|r| r.response_gaps).sum::<u64>(),
            ));
        }
        if c.compares() && rs.iter().any(|r| r.reverse_shipped == 0) {
            problems.push(format!("{name}: no response payload shipped"));
        }
    }
    writeln!(s)?;
    for c in CONFIGS {
        let Some(reference) = c.reference() else { continue };
        let mid = |c: Config, f: &dyn Fn(&Run) -> f64| median(of(c).iter().map(|r| f(r)).collect());
        let per_req = |f: fn(&Run) -> f64| {
            let g = |r: &Run| f(r) / r.load.ok.max(1) as f64;
            (mid(c, &g) - mid(reference, &g)) * 1e6
        };
        writeln!(
            s,
            "- {} against {}: **{:+.1} µs** of daemon CPU per compared request ({:+.1} µs on the capture thread, {:+.0} ns in the classifier), peak RSS {:+.1} MiB, primary p50 {:+.2} ms, p99 {:+.2} ms.",
            c.name(),
            reference.name(),
            per_req(|r| r.cpu),
            per_req(|r| r.capture_cpu),
            per_req(|r| r.bpf_ns as f64 / 1e9) * 1e3,
            (mid(c, &|r| r.peak_rss_kib as f64) - mid(reference, &|r| r.peak_rss_kib as f64)) / 1024.0,
            mid(c, &|r| r.load.pct(50.0)) - mid(reference, &|r| r.load.pct(50.0)),
            mid(c, &|r| r.load.pct(99.0)) - mid(reference, &|r| r.load.pct(99.0)),
        )?;
    }
    writeln!(s)?;
    Ok((s, problems))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let _stats = BpfStats::enable()?;
    let workloads = [
        Workload {
            key: "small",
            name: "Small JSON responses (`/cmp/same`, `/cmp/json`, `/cmp/time`)",
            paths: &["same", "json", "time"],
            rate: args.rate,
            beyond: false,
        },
        Workload {
            key: "large",
            name: "~50 kB JSON responses (`/cmp/large`; `/cmp/large-gzip`, gzip-encoded by v2)",
            paths: &["large", "large-gzip"],
            rate: args.large_rate,
            beyond: false,
        },
        Workload {
            key: "overload",
            name: "The same ~50 kB responses beyond this machine's capacity to compare them",
            paths: &["large", "large-gzip"],
            rate: args.overload_rate,
            beyond: true,
        },
    ];
    let mut s = String::new();
    writeln!(s, "{HEADING}\n")?;
    writeln!(
        s,
        "Issue 15: what comparing the mirror's responses with the primary's costs. Namespaces: client → primary (the test server as v1); mirror namespace: v2 and v1b (the same server as v2 and as a second copy of v1). The same open-loop load (latency from each request's scheduled send, {} kept-alive connections split across the paths) against the primary with each configuration, the configurations interleaved (one run each per round, fresh namespaces, servers and daemon per run, 1 s warm-up not counted). Comparing config: `ignoreHeaders: [x-served-by]`, differing pairs logged (`log:`, rate-limited). CPU: user + system of the daemon from /proc, from the start of the load until every compared pair was settled (2.5 s after the load for the others); the capture thread's from /proc/<pid>/task; the classifier's kernel time with `kernel.bpf_stats_enabled` (it runs in the softirq of every packet of the watched port, both ways). Held `compare`: the highest `mirror_memory_held_bytes{{kind=\"compare\"}}` scraped every 250 ms. Figures are the median (min–max) of the runs; counts are summed; \"per compared request\" is per request the primary answered (every one is compared in (b) and (c)). The ~50 kB workload runs at a rate this machine compares without falling behind, and once more at a rate beyond that (CPU per request there is per answered request, most of which were not compared), to show what gives way. Generated by `target/release/bench-compare` (run by `cargo xtask bench`) on {}. **The machine is shared** with other agents' builds and tests (2 cores): CPU per request is the steadiest figure; latencies and their differences are noisy, a difference of a few tenths of a ms between configurations is within the noise.\n",
        args.conns,
        machine()
    )?;
    let mut problems = Vec::new();
    let mut findings = Vec::new();
    let chosen = |w: &&Workload| w.rate > 0 && args.only.as_ref().is_none_or(|o| w.key == o);
    for w in workloads.iter().filter(chosen) {
        let mut runs = Vec::new();
        for round in 0..args.rounds {
            // Rotated per round, so no configuration always runs first after the previous one.
            for k in 0..CONFIGS.len() {
                let c = CONFIGS[(k + round) % CONFIGS.len()];
                eprintln!("bench-compare: {}, round {}, {}", w.name, round + 1, c.name());
                let r = run_one(w, c, &args)?;
                eprintln!(
                    "  answered {}/{}, p50 {:.2} ms, p99 {:.2} ms, CPU {:.2} s (capture {:.2} s), results {:?}, at v2 {}, lost {}, held compare peak {} B, classifier {:.0} ns per packet, join timed out {} refused {} unmatched {}, channel dropped {}, response gaps {}",
                    r.load.ok,
                    r.load.sent,
                    r.load.pct(50.0),
                    r.load.pct(99.0),
                    r.cpu,
                    r.capture_cpu,
                    r.results,
                    r.at_v2,
                    r.lost,
                    r.held_compare,
                    r.bpf_ns as f64 / r.bpf_runs.max(1) as f64,
                    r.timed_out,
                    r.refused,
                    r.unmatched,
                    r.channel_dropped,
                    r.response_gaps
                );
                runs.push(r);
            }
        }
        let (t, p) = table(w, &runs, &args)?;
        s.push_str(&t);
        if w.beyond { findings.extend(p) } else { problems.extend(p) }
    }
    if problems.is_empty() {
        writeln!(
            s,
            "Checks (the workloads within capacity): every request was answered by the primary and reached v2, no sample was lost, and with comparing on every answered request was counted as exactly one compare result (none incomplete)."
        )?;
    } else {
        writeln!(s, "Checks that failed:\n")?;
        for p in &problems {
            writeln!(s, "- {p}")?;
        }
    }
    if !findings.is_empty() {
        writeln!(s, "\nBeyond capacity (expected there, reported, not a failure of the run):\n")?;
        for p in &findings {
            writeln!(s, "- {p}")?;
        }
    }
    let old = std::fs::read_to_string(&args.out).unwrap_or_default();
    std::fs::write(&args.out, replace_section(&old, HEADING, &s))?;
    println!("{s}");
    if !problems.is_empty() {
        bail!("{} check(s) failed (written to {}): {problems:#?}", problems.len(), args.out.display());
    }
    Ok(())
}
