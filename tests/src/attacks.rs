//! The attacks of issue 12, run against the daemon (default config) in a fresh topology while real
//! requests go on: a SYN flood on a full flow table, unfinished uploads on hundreds of
//! connections, unfinished heads on thousands. Each returns what happened (the daemon's memory,
//! when each real request reached the mirror, its summary); the tests assert on it and the
//! benchmark reports it.

pub mod syn;

use std::{
    collections::HashMap,
    io::Write,
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{
    PORT, PRIMARY_V4, Topology, access_log, enter_netns, exchange, ns_run, peak_rss_kib, request, rss_kib,
    scrape_metrics,
};

/// Where RSS must come back to after an attack (issue 12).
pub const SETTLED_KIB: u64 = 64 * 1024;

fn primary() -> SocketAddr {
    format!("{PRIMARY_V4}:{PORT}").parse().expect("address")
}

/// What an attack did to the daemon.
#[derive(Debug)]
pub struct Outcome {
    /// Connections (or SYNs) the attack sent.
    pub sent: u64,
    /// The daemon's RSS before, at its peak during, and after the attack (KiB).
    pub rss_before_kib: u64,
    /// See `rss_before_kib`.
    pub rss_peak_kib: u64,
    /// See `rss_before_kib`: when it went below [`SETTLED_KIB`], or after a minute.
    pub rss_after_kib: u64,
    /// How long after the attack RSS took to go below [`SETTLED_KIB`] (a minute if it did not).
    pub settle: Duration,
    /// Real requests sent during the attack: their path, when, and the primary's status.
    pub real: Vec<(String, Instant, Result<u16, String>)>,
    /// When each path was first seen in the mirror's log.
    pub seen: HashMap<String, Instant>,
    /// The metrics scraped at the end of the attack.
    pub metrics: String,
    /// The daemon's JSON summary (after SIGINT).
    pub summary: Value,
}

impl Outcome {
    /// Delays from sending to the mirror's log, of the real requests that reached it.
    pub fn delays(&self) -> Vec<Duration> {
        self.real.iter().filter_map(|(u, at, _)| self.seen.get(u).map(|t| t.saturating_duration_since(*at))).collect()
    }

    /// Real requests that never reached the mirror.
    pub fn missing(&self) -> Vec<&str> {
        self.real.iter().filter(|(u, ..)| !self.seen.contains_key(u)).map(|(u, ..)| u.as_str()).collect()
    }
}

/// What to do to the daemon.
#[derive(Debug, Clone, Copy)]
pub enum Attack {
    /// SYNs at `rate` a second for `seconds` from spoofed sources (their flows are never closed).
    SynFlood { rate: u64, seconds: u64 },
    /// `connections` uploads declaring 1 MB, each sending `bytes` of it and then waiting.
    Bodies { connections: usize, bytes: usize },
    /// `connections` heads of `bytes` that never end.
    Heads { connections: usize, bytes: usize },
}

/// Raises this process's open-file limit (children inherit it: the test servers hold the
/// attack's connections too).
fn raise_nofile(n: u64) -> Result<()> {
    let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
    // SAFETY: setrlimit reads the struct it is given; no other precondition.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    anyhow::ensure!(rc == 0, "setrlimit(NOFILE, {n}): {}", std::io::Error::last_os_error());
    Ok(())
}

/// Runs `attack` against a daemon with the default config, a real request on a fresh connection
/// every 100 ms meanwhile, then ends the attack (closes its connections, or stops sending) and
/// watches the daemon's RSS come back down.
pub fn run(attack: Attack) -> Result<Outcome> {
    raise_nofile(16_384)?;
    let topo = Topology::new()?;
    let (_v1, _v2) = topo.servers()?;
    if let Attack::SynFlood { .. } = attack {
        for src in syn::FLOOD_SOURCES {
            ns_run(&topo.client, "ip", &["addr", "add", &format!("{src}/24"), "dev", "eth0"])?;
        }
        let sources = syn::FLOOD_SOURCES.map(|a| a.to_string()).join(", ");
        ns_run(&topo.client, "nft", &["add table inet flood"])?;
        ns_run(&topo.client, "nft", &["add chain inet flood out { type filter hook output priority 0 ; }"])?;
        let rule = format!("add rule inet flood out ip saddr {{ {sources} }} tcp flags & rst == rst drop");
        ns_run(&topo.client, "nft", &[&rule])?;
    }
    let daemon = topo.daemon(&topo.config(100.0, "")?)?;
    let pid = daemon.pid();
    let rss_before_kib = rss_kib(pid)?;

    // When each request was first seen in the mirror's log (polled every 20 ms).
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, log) = (done.clone(), topo.path("v2.log"));
        std::thread::spawn(move || {
            let mut seen: HashMap<String, Instant> = HashMap::new();
            while !done.load(Ordering::Relaxed) {
                for e in access_log(&log) {
                    seen.entry(e["uri"].as_str().unwrap_or_default().to_string()).or_insert_with(Instant::now);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        })
    };
    let attacker = {
        let client = topo.client.clone();
        std::thread::spawn(move || -> Result<(u64, Vec<TcpStream>)> {
            enter_netns(&client)?;
            Ok(match attack {
                Attack::SynFlood { rate, seconds } => {
                    (syn::syn_flood(primary(), rate, Duration::from_secs(seconds))?, Vec::new())
                }
                Attack::Bodies { connections, bytes } => {
                    let chunk = vec![b'b'; bytes];
                    let held = (0..connections)
                        .map(|i| -> Result<TcpStream> {
                            let mut s = TcpStream::connect(primary())?;
                            let head = format!(
                                "POST /attack/{i} HTTP/1.1\r\nHost: httpbin:8000\r\nContent-Length: 1000000\r\n\r\n"
                            );
                            s.write_all(head.as_bytes())?;
                            // Paced (≤ ~128 MB/s in all): the attack is about memory held, not
                            // about outrunning the kernel ring (a ring overrun gives the flows
                            // up before they hold anything).
                            for piece in chunk.chunks(64 << 10) {
                                s.write_all(piece)?;
                                std::thread::sleep(Duration::from_micros(500));
                            }
                            Ok(s)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    (connections as u64, held)
                }
                Attack::Heads { connections, bytes } => {
                    let partial = format!("GET /attack HTTP/1.1\r\nHost: httpbin:8000\r\nX-Pad: {}", "h".repeat(bytes));
                    let held = (0..connections)
                        .map(|_| -> Result<TcpStream> {
                            let mut s = TcpStream::connect(primary())?;
                            s.write_all(partial.as_bytes())?;
                            // Paced (≤ ~40 MB/s): memory held, not a ring overrun (a debug
                            // build of the daemon must keep up too).
                            std::thread::sleep(Duration::from_micros(1500));
                            Ok(s)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    (connections as u64, held)
                }
            })
        })
    };
    // RSS sampled every 100 ms until the attack ends.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        })
    };
    // Real requests: during the flood, or once the held connections sent their bytes (a burst of
    // hundreds of MB at veth speed can overrun the kernel ring: a capacity matter, not this one).
    let join = |a: std::thread::JoinHandle<Result<(u64, Vec<TcpStream>)>>| {
        a.join().map_err(|_| anyhow::anyhow!("attacker panicked"))?
    };
    let (lasts, mut attacker, held) = match attack {
        Attack::SynFlood { seconds, .. } => (Duration::from_secs(seconds), Some(attacker), None),
        _ => (Duration::from_secs(3), None, Some(join(attacker)?)),
    };
    if held.is_some() {
        // Let the daemon take the held bytes in.
        std::thread::sleep(Duration::from_secs(1));
    }
    let real = topo.in_ns(&topo.client, move || {
        let start = Instant::now();
        let mut sent = Vec::new();
        let mut i = 0u64;
        while start.elapsed() < lasts {
            let uri = format!("/real/{i}");
            let at = Instant::now();
            let r = exchange(primary(), &[request("GET", &uri, &[], b"")])
                .map(|rs| rs[0].status)
                .map_err(|e| format!("{e:#}"));
            sent.push((uri, at, r));
            i += 1;
            std::thread::sleep((start + Duration::from_millis(100 * i)).saturating_duration_since(Instant::now()));
        }
        sent
    })?;
    let (sent, held) = match (held, attacker.take()) {
        (Some(h), _) => h,
        (None, Some(a)) => join(a)?,
        (None, None) => unreachable!("one or the other"),
    };
    let metrics = scrape_metrics(&topo)?;
    sampling.store(false, Ordering::Relaxed);
    let rss_peak_kib = sampler.join().map_err(|_| anyhow::anyhow!("sampler panicked"))?.max(peak_rss_kib(pid)?);
    drop(held);
    let ended = Instant::now();
    let mut rss_after_kib = rss_kib(pid)?;
    while rss_after_kib >= SETTLED_KIB && ended.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(250));
        rss_after_kib = rss_kib(pid)?;
    }
    let settle = ended.elapsed();
    // Leave the last real requests their second to arrive.
    std::thread::sleep(Duration::from_millis(1200));
    done.store(true, Ordering::Relaxed);
    let seen = watcher.join().map_err(|_| anyhow::anyhow!("watcher panicked"))?;
    let summary = topo.stop_daemon(daemon, libc::SIGINT).context("stopping the daemon")?;
    Ok(Outcome { sent, rss_before_kib, rss_peak_kib, rss_after_kib, settle, real, seen, metrics, summary })
}
