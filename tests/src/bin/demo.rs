//! `cargo xtask demo`: Istio's mirroring task without Kubernetes. Namespaces for a client, the
//! primary (httpbin v1) and the mirror (httpbin v2); the daemon on the primary's interface with
//! `config/httpbin.yaml`; a few requests from the client; then both access logs side by side.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use mirror_tests::*;
use serde_json::Value;

#[derive(Parser)]
struct Args {
    /// The config the daemon runs (its interface, port and endpoint match the demo topology).
    #[arg(long)]
    config: PathBuf,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: cleaning up");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Ctrl-C: finish the current step, then drop everything (namespaces, processes) on the way out.
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let topo = Topology::new()?;
    println!(
        "== topology: client {CLIENT_V4} -> primary {PRIMARY_V4}:{PORT} ({PRIMARY_IFACE}), mirror {MIRROR_V4}:{PORT}"
    );
    println!("   namespaces: {} {} {}", topo.client, topo.primary, topo.mirror);
    let (_v1, _v2) = topo.servers()?;
    check_interrupt()?;
    println!("== mirror run --config {}", args.config.display());
    let config = std::fs::canonicalize(&args.config).context("config")?;
    let daemon = topo.daemon(&config)?;
    println!("   attached to the TC ingress of {PRIMARY_IFACE}: {:?}", topo.ingress_programs()?);

    let url = |path: &str| format!("http://{PRIMARY_V4}:{PORT}{path}");
    let calls: Vec<Vec<String>> = vec![
        vec!["-H".into(), format!("Host: httpbin:{PORT}"), url("/get")],
        vec!["-H".into(), format!("Host: httpbin:{PORT}"), "-H".into(), "X-Demo: 1".into(), url("/headers")],
        vec!["-H".into(), format!("Host: httpbin:{PORT}"), "--data-binary".into(), "hello mirror".into(), url("/post")],
        vec!["-H".into(), format!("Host: httpbin:{PORT}"), url("/status/418")],
    ];
    println!("== client requests (curl from {}), and what the client saw:", topo.client);
    for call in &calls {
        check_interrupt()?;
        let mut a: Vec<&str> = vec!["-s", "-S", "-i", "--max-time", "5"];
        a.extend(call.iter().map(String::as_str));
        let out = ns_run(&topo.client, "curl", &a)?;
        let status = out.lines().next().unwrap_or("").trim().to_string();
        let served_by = out
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("x-served-by"))
            .map(|l| l.trim().to_string())
            .unwrap_or_default();
        println!("   {:<40} -> {status:<22} {served_by}", call.last().unwrap());
    }
    let mirrored = wait_for_entries(&topo.path("v2.log"), calls.len(), Duration::from_secs(10));
    check_interrupt()?;
    let summary = topo.stop_daemon(daemon, libc::SIGINT)?;
    println!("== daemon stopped (SIGINT); TC ingress now: {:?}", topo.ingress_programs()?);
    println!("   summary: {summary}");
    let show = |title: &str, entries: &[Value]| {
        println!("== {title}");
        for e in entries {
            println!(
                "   {:<4} {:<6} {:<12} Host: {:<22} body {} bytes",
                e["server"].as_str().unwrap_or(""),
                e["method"].as_str().unwrap_or(""),
                e["uri"].as_str().unwrap_or(""),
                e["host"].as_str().unwrap_or("-"),
                e["body_len"]
            );
        }
    };
    let primary = access_log(&topo.path("v1.log"));
    show("httpbin v1 (primary) access log", &primary);
    show("httpbin v2 (mirror) access log", &mirrored);
    if primary.len() != calls.len() || mirrored.len() != calls.len() {
        bail!("expected {} requests in each log, got v1 {} and v2 {}", calls.len(), primary.len(), mirrored.len());
    }
    println!("== every request reached v2 with Host rewritten to httpbin-shadow:{PORT}; the client only saw v1.");
    Ok(())
}
