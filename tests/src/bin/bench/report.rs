//! BENCHMARKS.md sections and plots from the measurements.

use std::{fmt::Write as _, path::Path};

use anyhow::{Result, bail};
use plotters::prelude::*;

use crate::{
    env::{NGINX_PROXY_CONF, Peer},
    runs::{GET_PATH, LatencyRun, Saturation, Step, WRK, baseline_of},
};

/// Heading of each section the bench writes.
pub const LATENCY: &str = "## What shadowing costs the primary";
pub const FIDELITY: &str = "## Capture fidelity under load";
pub const SATURATION: &str = "## Saturation (closed loop)";
pub const COST: &str = "## Cost";
pub const TARGETS: &str = "## Targets";

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn spread(v: &[f64]) -> (f64, f64) {
    (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(f64::NEG_INFINITY, f64::max))
}

/// The median of `v` and its [min, max].
fn median_spread(v: &[f64]) -> (f64, f64, f64) {
    let (lo, hi) = spread(v);
    (median(v.to_vec()), lo, hi)
}

fn per_million(cpu: f64, n: usize) -> f64 {
    cpu / n.max(1) as f64 * 1e6
}

/// The runs of `peer` paired for `of` at `rate`, in order.
fn runs_of(runs: &[LatencyRun], peer: Peer, of: Peer, rate: u32) -> Vec<&LatencyRun> {
    runs.iter().filter(|r| r.peer == peer && r.of == of && r.rate == rate).collect()
}

/// p99 ratios of `peer`'s runs to their paired baselines, in run order.
pub fn p99_ratios(runs: &[LatencyRun], peer: Peer, rate: u32) -> Vec<f64> {
    runs_of(runs, peer, peer, rate)
        .into_iter()
        .filter_map(|r| baseline_of(runs, r).map(|b| r.load.pct(99.0) / b.load.pct(99.0)))
        .collect()
}

/// The latency section.
pub fn latency(runs: &[LatencyRun], rates: &[u32], secs: u64) -> Result<String> {
    let mut md = String::new();
    let copy_conns = crate::runs::copy_connections();
    writeln!(md, "{LATENCY}\n")?;
    writeln!(
        md,
        "Open-loop small GETs (`{GET_PATH}`) over 64 kept-alive connections, {secs} s per run, latency from each request's scheduled send time. Runs are interleaved in pairs — baseline, peer, baseline, peer, ... — and each peer is started afresh for each of its runs (so every one of our runs is a first run after the daemon started). The baseline of our daemon and of GoReplay is the primary with nothing attached; nginx's mirror module is a proxy in front of the primary, so its baseline is the same nginx proxying without `mirror`. Each cell is the median over the runs with [min–max]; the ratio is per pair (peer run / its own baseline run), then the median. *Copies sent straight to the mirror* is not a tool but a reference: during the run a second paced client in the primary's namespace sends every request to the mirror as well, over {copy_conns} connections (as many as our daemon keeps by default), so its ratio is what the mirror's own work on these two shared cores costs the primary, whoever sends it the copies.\n"
    )?;
    for &rate in rates {
        writeln!(md, "### {rate} req/s\n")?;
        writeln!(
            md,
            "| setup | runs | p50 ms | p99 ms | p99.9 ms | p99 ratio to its baseline | p99 ratio per pair, in run order | at mirror / answered | CPU-s per million mirrored |"
        )?;
        writeln!(md, "|---|---:|---:|---:|---:|---:|---|---:|---:|")?;
        for of in [Peer::Ours, Peer::DirectCopy, Peer::GoReplay, Peer::Nginx] {
            for peer in [of.baseline(), of] {
                let rs = runs_of(runs, peer, of, rate);
                if rs.is_empty() {
                    continue;
                }
                let cell = |p: f64| {
                    let v: Vec<f64> = rs.iter().map(|r| r.load.pct(p)).collect();
                    let (mid, lo, hi) = median_spread(&v);
                    format!("{mid:.3} [{lo:.3}–{hi:.3}]")
                };
                let (ratio, per_pair, mirrored, cpu) = if peer == of {
                    let ratios = p99_ratios(runs, of, rate);
                    let (mid, lo, hi) = median_spread(&ratios);
                    let answered: u64 = rs.iter().map(|r| r.load.ok).sum();
                    let mirrored: usize = rs.iter().map(|r| r.mirrored).sum();
                    let cpu = median(rs.iter().map(|r| per_million(r.used.cpu, r.mirrored)).collect());
                    (
                        format!("**{mid:.2}** [{lo:.2}–{hi:.2}]"),
                        ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", "),
                        format!("{mirrored} / {answered}"),
                        // The copy client is not a peer: its CPU is not a mirroring tool's.
                        if of == Peer::DirectCopy { "–".to_string() } else { format!("{cpu:.1}") },
                    )
                } else {
                    ("–".into(), String::new(), "–".into(), "–".into())
                };
                let label = if peer == of {
                    peer.name().to_string()
                } else {
                    format!("{} (paired with {})", peer.name(), of.name())
                };
                writeln!(
                    md,
                    "| {label} | {} | {} | {} | {} | {ratio} | {per_pair} | {mirrored} | {cpu} |",
                    rs.len(),
                    cell(50.0),
                    cell(99.0),
                    cell(99.9)
                )?;
            }
        }
        writeln!(md)?;
    }
    writeln!(
        md,
        "nginx runs with this configuration (one worker, like the primary; why, and the two sysctls it gets: see *nginx's mirror module* under *Saturation*):\n\n```nginx\n{}\n```\n",
        NGINX_PROXY_CONF.replace("MIRROR", "<mirror>").replace("PRIMARY", "<primary>").replace("PORT", "8000")
    )?;
    writeln!(md, "![p99 of every run](bench-latency.svg)\n")?;
    Ok(md)
}

/// The fidelity section.
pub fn fidelity(steps: &[Step], secs: u64) -> Result<String> {
    let mut md = String::new();
    writeln!(md, "{FIDELITY}\n")?;
    writeln!(
        md,
        "Requests the mirror received / requests the primary answered, at stepped open-loop rates, {secs} s per step, each peer attached once for all its steps (our daemon with the default config). \"Losses\" names our daemon's counters that moved during the step. CPU: user + system of the peer's processes during the step, per million requests the mirror received.\n"
    )?;
    writeln!(
        md,
        "| peer | requests | rate req/s | answered | at mirror | fidelity | primary p99 ms | CPU-s per million | classifier ns/packet | losses |"
    )?;
    writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|")?;
    for s in steps {
        let bpf = if s.used.bpf_runs > 0 {
            format!("{:.0}", s.used.bpf_ns as f64 / s.used.bpf_runs as f64)
        } else {
            "–".into()
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.4} | {:.2} | {:.1} | {bpf} | {} |",
            s.peer.name(),
            s.kind,
            s.rate,
            s.load.ok,
            s.received,
            s.received as f64 / s.load.ok.max(1) as f64,
            s.load.pct(99.0),
            per_million(s.used.cpu, s.received),
            if s.why.is_empty() { "–" } else { &s.why }
        )?;
    }
    writeln!(md, "\n![fidelity against rate](bench-fidelity.svg)\n")?;
    Ok(md)
}

/// The saturation section.
pub fn saturation(sat: &[Saturation], secs: u64) -> Result<String> {
    let mut md = String::new();
    writeln!(md, "{SATURATION}\n")?;
    writeln!(
        md,
        "The primary's maximum throughput, closed loop: `wrk -t{} -c{} -d{secs}s` from the client namespace, small GETs, with each peer attached in turn. \"Mirrored\" is the share of the requests wrk completed that reached the mirror (counted after a 2.5 s drain).\n",
        WRK.0, WRK.1
    )?;
    writeln!(
        md,
        "| attached | req/s | requests | errors | mirrored | share mirrored | mirrored on a new connection | CPU-s per million mirrored | our losses |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---|")?;
    for s in sat {
        let (share, fresh, cpu) = if s.peer.mirrors() {
            (
                format!("{:.4}", s.mirrored as f64 / s.requests.max(1) as f64),
                format!("{:.1}%", 100.0 * s.fresh as f64 / s.mirrored.max(1) as f64),
                format!("{:.1}", per_million(s.used.cpu, s.mirrored)),
            )
        } else {
            ("–".into(), "–".into(), "–".into())
        };
        writeln!(
            md,
            "| {} | {:.0} | {} | {} | {} | {share} | {fresh} | {cpu} | {} |",
            s.peer.name(),
            s.per_second,
            s.requests,
            s.errors,
            if s.peer.mirrors() { s.mirrored.to_string() } else { "–".into() },
            if s.why.is_empty() { "–" } else { &s.why }
        )?;
    }
    writeln!(md)?;
    md.push_str(&nginx_notes(sat));
    Ok(md)
}

/// Why nginx's mirror row looks the way it does, with this run's evidence.
fn nginx_notes(sat: &[Saturation]) -> String {
    let fresh = sat
        .iter()
        .find(|s| s.peer == Peer::Nginx)
        .map(|s| format!("{:.1}%", 100.0 * s.fresh as f64 / s.mirrored.max(1) as f64))
        .unwrap_or_else(|| "–".into());
    format!(
        "### nginx's mirror module\n\n\
The configuration is nginx's documented one (`mirror` + an `internal` location proxying to a `keepalive` upstream with HTTP/1.1 and an empty `Connection` header; `$request_uri`, without which the mirror would get `/__mirror` as the path; access log off; one worker, like the primary). The one change an nginx operator would make here is outside nginx.conf: `net.ipv4.tcp_tw_reuse=1` and `net.ipv4.ip_local_port_range=1024 65535` in the proxy's namespace (with the ports listened on there, our metrics port included, in `ip_local_reserved_ports`, so that no outgoing connection takes one). Why:\n\n\
- A mirror subrequest is `header_only` (`ngx_http_mirror_module.c`), and the upstream module finalizes a `header_only` request as soon as the response header is in; it keeps the upstream connection only when the response has no body (`ngx_http_proxy_process_header` sets `u->keepalive` for 204/304/HEAD/`Content-Length: 0` only). So with a mirror that answers with a body, nginx opens **one TCP connection per mirrored request** whatever `keepalive` says: {fresh} of the requests nginx mirrored at saturation in this run were the first on their connection (our daemon: see its row).\n\
- Each of those connections ends in TIME-WAIT on the proxy's side. With Linux's default 28,232 ephemeral ports and no TIME-WAIT reuse for non-loopback destinations, the port range is full within seconds, and each `connect()` then searches it (`__inet_hash_connect` at the top of a `perf` profile of the worker): that was the ~2-4 ms of worker CPU per request and the 256-1009 req/s of earlier runs. With the two sysctls, the cost left is a connection set-up and tear-down per mirrored request, shown in the CPU column.\n\n"
    )
}

/// Classifier nanoseconds per packet and CPU-seconds per million mirrored requests.
fn classifier(used: &[(crate::env::Used, usize)]) -> (f64, f64) {
    let ns: u64 = used.iter().map(|(u, _)| u.bpf_ns).sum();
    let runs: u64 = used.iter().map(|(u, _)| u.bpf_runs).sum();
    let mirrored: usize = used.iter().map(|(_, m)| m).sum();
    (ns as f64 / runs.max(1) as f64, per_million(ns as f64 / 1e9, mirrored))
}

/// Our daemon's runs at one of the high rates: (rate, each run's CPU and requests mirrored).
pub type HighRate = (u32, Vec<(crate::env::Used, usize)>);

/// The median CPU-s per million of a high-rate series, with its [min, max].
fn high_cpu(used: &[(crate::env::Used, usize)]) -> (f64, f64, f64) {
    let cpus: Vec<f64> = used.iter().map(|(u, m)| per_million(u.cpu, *m)).collect();
    median_spread(&cpus)
}

/// The cost section.
pub fn cost(
    runs: &[LatencyRun],
    steps: &[Step],
    high: &[HighRate],
    sat: &[Saturation],
    rates: &[u32],
    rss_kib: u64,
) -> Result<String> {
    let mut md = String::new();
    writeln!(md, "{COST}\n")?;
    writeln!(
        md,
        "CPU-seconds (user + system of the peer's processes) per million requests that reached the mirror. Our classifier's own time runs in the kernel, charged to the softirq of the packets it sees (not to the daemon): it is measured separately with `kernel.bpf_stats_enabled=1` (`run_time_ns` / `run_cnt` of the daemon's BPF programs, read from their fdinfo; every packet on the hooks counts, the responses' and ACKs' included). GoReplay's libpcap filter runs in the kernel too (classic BPF, not counted by these statistics).\n"
    )?;
    writeln!(
        md,
        "| peer | load | CPU-s per million mirrored | classifier ns per packet | classifier CPU-s per million mirrored |"
    )?;
    writeln!(md, "|---|---|---:|---:|---:|")?;
    // One row: the peer, the load, its CPU, and (ours only) the classifier's time.
    let mut row = |peer: Peer, what: String, cpu: f64, used: &[(crate::env::Used, usize)]| {
        let (ns, kcpu) = classifier(used);
        let (ns, kcpu) =
            if peer == Peer::Ours { (format!("{ns:.0}"), format!("{kcpu:.2}")) } else { ("–".into(), "–".into()) };
        writeln!(md, "| {} | {what} | **{cpu:.1}** | {ns} | {kcpu} |", peer.name())
    };
    for &rate in rates {
        for peer in [Peer::Ours, Peer::GoReplay, Peer::Nginx] {
            let rs = runs_of(runs, peer, peer, rate);
            if rs.is_empty() {
                continue;
            }
            let cpu = median(rs.iter().map(|r| per_million(r.used.cpu, r.mirrored)).collect());
            let used: Vec<_> = rs.iter().map(|r| (r.used, r.mirrored)).collect();
            row(peer, format!("{rate} req/s open loop (median of {} runs)", rs.len()), cpu, &used)?;
        }
    }
    for (rate, used) in high {
        let (cpu, lo, hi) = high_cpu(used);
        let what =
            format!("{rate} req/s open loop (median of {} runs in a row, one daemon; [{lo:.1}–{hi:.1}])", used.len());
        row(Peer::Ours, what, cpu, used)?;
    }
    for s in steps.iter().filter(|s| s.kind == "GET" && s.rate >= 16000) {
        let cpu = per_million(s.used.cpu, s.received);
        row(s.peer, format!("{} req/s open loop (fidelity step)", s.rate), cpu, &[(s.used, s.received)])?;
    }
    for s in sat.iter().filter(|s| s.peer.mirrors()) {
        let cpu = per_million(s.used.cpu, s.mirrored);
        row(s.peer, format!("closed-loop saturation, {:.0} req/s", s.per_second), cpu, &[(s.used, s.mirrored)])?;
    }
    if rss_kib > 0 {
        writeln!(md, "\nOur daemon's peak RSS over the fidelity steps: **{:.1} MiB**.", rss_kib as f64 / 1024.0)?;
    }
    writeln!(md)?;
    Ok(md)
}

/// The targets of issue 14, met or not, from this run's figures.
pub fn targets(
    runs: &[LatencyRun],
    steps: &[Step],
    high: &[HighRate],
    sat: &[Saturation],
    rates: &[u32],
    summary: &serde_json::Value,
) -> Result<String> {
    let mut md = String::new();
    writeln!(md, "{TARGETS}\n")?;
    let ours: Vec<&Step> = steps.iter().filter(|s| s.peer == Peer::Ours).collect();
    let worst = ours.iter().map(|s| s.received as f64 / s.load.ok.max(1) as f64).fold(f64::INFINITY, f64::min);
    writeln!(
        md,
        "- 100% of requests at the mirror at every open-loop step: lowest step fidelity **{worst:.4}** over {} steps",
        ours.len()
    )?;
    if let Some(s) = sat.iter().find(|s| s.peer == Peer::Ours) {
        writeln!(
            md,
            "- ≥ 99.9% at closed-loop saturation: **{:.4}** at {:.0} req/s",
            s.mirrored as f64 / s.requests.max(1) as f64,
            s.per_second
        )?;
    }
    for &rate in rates {
        let rs = runs_of(runs, Peer::Ours, Peer::Ours, rate);
        let cpu = median(rs.iter().map(|r| per_million(r.used.cpu, r.mirrored)).collect());
        let ratios = p99_ratios(runs, Peer::Ours, rate);
        let (ratio, lo, hi) = median_spread(&ratios);
        // What the mirror's own work costs the primary on these cores, whoever sends the copies.
        let reference = p99_ratios(runs, Peer::DirectCopy, rate);
        let reference = if reference.is_empty() {
            String::new()
        } else {
            let (mid, rlo, rhi) = median_spread(&reference);
            format!(" (copies sent straight to the mirror: {mid:.2} [{rlo:.2}–{rhi:.2}])")
        };
        let cpu_target = if rate == 2000 { format!(" (target ≤ 10: {})", met(cpu <= 10.0)) } else { String::new() };
        writeln!(
            md,
            "- primary p99 ratio ≤ 1.05 at {rate} req/s: median of {} pairs **{ratio:.2}** [{lo:.2}–{hi:.2}], {}{reference}; CPU **{cpu:.1}** CPU-s per million mirrored{cpu_target}",
            ratios.len(),
            met(ratio <= 1.05),
        )?;
    }
    for (rate, used) in high {
        let (cpu, lo, hi) = high_cpu(used);
        writeln!(
            md,
            "- ≤ 5 CPU-s per million at {rate} req/s: median of {} runs **{cpu:.1}** [{lo:.1}–{hi:.1}], {}",
            used.len(),
            met(cpu <= 5.0)
        )?;
    }
    let stepped: Vec<f64> = ours
        .iter()
        .filter(|s| s.kind == "GET" && s.rate >= 20000)
        .map(|s| per_million(s.used.cpu, s.received))
        .collect();
    if !stepped.is_empty() {
        writeln!(
            md,
            "- ≤ 5 CPU-s per million at ≥ 20,000 req/s, single fidelity steps: {}",
            stepped.iter().map(|c| format!("**{c:.1}**")).collect::<Vec<_>>().join(", ")
        )?;
    }
    writeln!(md, "\nOur daemon's summary after the fidelity steps: `{summary}`")?;
    Ok(md)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

/// The latency plot: every run's p99, per setup, per rate.
pub fn plot_latency(runs: &[LatencyRun], rates: &[u32], path: &Path) -> Result<()> {
    let setups = [
        (Peer::Nothing, Peer::Ours),
        (Peer::Ours, Peer::Ours),
        (Peer::DirectCopy, Peer::DirectCopy),
        (Peer::Nothing, Peer::GoReplay),
        (Peer::GoReplay, Peer::GoReplay),
        (Peer::NginxPlain, Peer::Nginx),
        (Peer::Nginx, Peer::Nginx),
    ];
    let labels = ["nothing", "ours", "direct copy", "nothing", "GoReplay", "nginx proxy", "nginx mirror"];
    let root = SVGBackend::new(path, (860, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = runs.iter().map(|r| r.load.pct(99.0)).fold(0.1f64, f64::max) * 1.5;
    let min = runs.iter().map(|r| r.load.pct(99.0)).fold(f64::INFINITY, f64::min).min(max / 2.0) * 0.7;
    let mut chart = ChartBuilder::on(&root)
        .caption("Primary p99 of every latency run (pairs interleaved)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(labels.len() as f64 - 0.5), (min.max(0.01)..max).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(labels.len())
        .x_label_formatter(&|x| labels.get(x.round() as usize).map(|s| s.to_string()).unwrap_or_default())
        .y_desc("p99 ms (log scale)")
        .draw()?;
    for (i, &rate) in rates.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let offset = (i as f64 - (rates.len() as f64 - 1.0) / 2.0) * 0.15;
        let pts: Vec<(f64, f64)> = setups
            .iter()
            .enumerate()
            .flat_map(|(x, (peer, of))| {
                runs_of(runs, *peer, *of, rate).into_iter().map(move |r| (x as f64 + offset, r.load.pct(99.0)))
            })
            .collect();
        chart
            .draw_series(pts.into_iter().map(move |p| Circle::new(p, 4, color.filled())))?
            .label(format!("{rate} req/s"))
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// The fidelity plot: mirror / answered against rate, per peer and request kind.
pub fn plot_fidelity(steps: &[Step], path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_rate = steps.iter().map(|s| s.rate).max().unwrap_or(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("Fidelity (mirror / answered) against rate", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d((100f64..max_rate * 1.5).log_scale(), 0f64..1.05f64)?;
    chart.configure_mesh().x_desc("requests/s").y_desc("fidelity").draw()?;
    let mut series: Vec<(Peer, &str)> = Vec::new();
    for s in steps {
        if !series.contains(&(s.peer, s.kind)) {
            series.push((s.peer, s.kind));
        }
    }
    for (i, (peer, kind)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = steps
            .iter()
            .filter(|s| s.peer == *peer && s.kind == *kind)
            .map(|s| (f64::from(s.rate), s.received as f64 / s.load.ok.max(1) as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(format!("{}, {kind}", peer.name()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    if !path.exists() {
        bail!("plot not written");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
        assert_eq!(spread(&[2.0, 1.0, 3.0]), (1.0, 3.0));
        assert_eq!(median_spread(&[2.0, 1.0, 4.0, 3.0]), (2.5, 1.0, 4.0));
    }
}
