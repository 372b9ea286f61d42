//! `mirror run`: the live daemon. A capture thread drives the sans-IO pipeline from the perf
//! buffers and hands complete requests to the replay workers on the tokio runtime; it never waits
//! on them. SIGINT/SIGTERM stop it and detach the classifier.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    capture::{Capture, attach::AttachPreference, decode_sample},
    config::Config,
    flow::FlowConfig,
    memory::Memory,
    metrics::{self, Metrics},
    pipeline::Pipeline,
    replay::Replayer,
    route::Router,
};

/// How many bytes of samples the capture thread lets gather in the rings between two drains at
/// the current rate (at most `capture.batchMs`): about 100 small requests. A batch is replayed at
/// once, so its size is a burst for the mirror and the cores it shares; fewer bytes per batch
/// cost wake-ups. Measured with small GETs on 2 cores (CPU-s per million requests, the
/// primary's p99 with the daemon attached, nothing attached: 0.25-0.4 ms): 256 KiB: 8-10 at
/// 2,000 req/s, 7-8 at 8,000 with p99 1.6-3.3 ms, 6.6-7.7 at 24,000; 32 KiB: 8-10, 8-8.8 with
/// p99 0.65-0.86 ms, 6.0-7.2; 16 KiB: 10-11.5 at 8,000 for p99 0.55-0.64 ms. A wake-up late by
/// hundreds of times the wait still finds room in a default ring.
const BATCH_BYTES: usize = 32 * 1024;

/// The longest the capture thread sleeps while nothing flows and no flow timer is due: a reload
/// (new routes, kernel maps) or a stop is taken at its next round, so within this time.
const IDLE_WAKE: Duration = Duration::from_millis(100);

/// A new configuration for the capture thread (SIGHUP).
struct Reload {
    router: Arc<Router>,
    /// Ports, addresses and interface entries.
    capture: crate::config::Capture,
}

/// Every mirror endpoint address: shadow traffic to them is never captured (loop prevention).
fn endpoint_addrs(router: &Router) -> Vec<std::net::SocketAddr> {
    router.endpoints.values().flatten().copied().collect()
}

/// Runs the daemon with the config at `path` and metrics on `metrics_addr` until SIGINT/SIGTERM,
/// then prints the JSON summary.
pub async fn run(path: &Path, metrics_addr: std::net::SocketAddr, attach: AttachPreference) -> Result<()> {
    // Handlers first: a signal sent as soon as "ready" is logged is queued, not fatal (SIGHUP's
    // default action would end the process).
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let cfg = Config::load(path)?;
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let router = Arc::new(Router::new(&cfg)?);
    let metrics = Arc::new(Metrics::new());
    let _server = metrics::serve(metrics_addr, metrics.clone()).await?;
    metrics::raise_fd_limit();
    let memory = Arc::new(Memory::new(cfg.memory.limit_bytes));
    let replayer = Arc::new(Replayer::start(&router, &cfg.replay, Some(metrics.clone()), memory.clone()));
    // Compared responses (issue 15): one task joins and compares them (idle while no destination
    // compares: a reload may make one); a pair waits as long as a mirror may take to answer, and
    // a second more.
    let comparing = {
        let wait = cfg.replay.request_timeout() + Duration::from_secs(1);
        let sink = crate::comparing::start(router.clone(), wait, Some(metrics.clone()), memory.clone());
        replayer.compare_to(sink.clone());
        Some(sink)
    };
    let capture = Capture::start(&cfg.capture, &endpoint_addrs(&router), attach)?;
    publish_links(&capture, &metrics);
    tracing::info!(
        interfaces = ?cfg.capture.interfaces,
        links = capture.attachments().count(),
        ports = ?cfg.capture.ports,
        addresses = ?cfg.capture.addresses,
        cpus = capture.buffers.len(),
        "ready"
    );
    // Loading the program and probing the kernel allocated and freed tens of MB; mimalloc keeps
    // freed pages until its next purge, which an idle daemon does not reach: give them back now
    // (RSS at rest 12 MB instead of 49).
    crate::memory::give_back();

    let stop = Arc::new(AtomicBool::new(false));
    let (reload_tx, reload_rx) = std::sync::mpsc::channel::<Reload>();
    let thread = {
        let stop = stop.clone();
        let replayer = replayer.clone();
        // Given-up flows are muted in the kernel (see `capture::mute`).
        let flow_cfg = FlowConfig { mute_given_up: true, ..Pipeline::budgeted_flows(cfg.capture.responses) };
        let pipeline = Pipeline::new(router, flow_cfg, cfg.replay.buffer_bytes).with_memory(memory.clone());
        let sinks = Sinks { replayer, comparing: comparing.clone() };
        // A thread of its own, not a task on the replay runtime. Tried (stop 31): one thread for
        // both saved 11% of the CPU at 24,000 small GETs per second (no wake-up of another
        // thread per batch), but at 512 MB/s of 64 KiB uploads (the bench's last fidelity step)
        // the replay writes and the kernel's TCP work they bring into our context left the
        // rings unread for over 125 ms: 36-546 samples lost and 2-54% of the uploads mirrored,
        // against 100% with this thread, even with the workers yielding every 256 KiB written.
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || capture_loop(capture, pipeline, sinks, metrics, stop, reload_rx))
            .context("spawning the capture thread")?
    };

    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break }
            // Off the signal loop: SIGINT and SIGTERM are acted on at once even during a reload.
            _ = hup.recv() => {
                let (path, cfg, replayer, memory, tx) =
                    (path.to_path_buf(), cfg.clone(), replayer.clone(), memory.clone(), reload_tx.clone());
                tokio::task::spawn_blocking(move || reload(&path, &cfg, &replayer, &memory, &tx));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let summary = tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("capture thread panicked"))??;
    let stats = replayer.stats.clone();
    replayer.shutdown(Duration::from_secs(2)).await;
    let mut summary = summary;
    summary["replay"] = json!(stats.snapshot());
    if let Some(sink) = &comparing {
        summary["compare"] = sink.finish().await;
    }
    println!("{summary}");
    Ok(())
}

/// Where the classifier is attached, how links came and went, and the copies dropped as second
/// sightings of one packet.
fn publish_links(capture: &Capture, metrics: &Metrics) {
    metrics.links(
        capture.attachments().map(|(i, m)| (i, m.as_str())),
        capture.link_stats(),
        capture.duplicates_dropped(),
    );
}

fn publish(capture: &Capture, pipeline: &Pipeline, metrics: &Metrics) {
    publish_links(capture, metrics);
    metrics.memory(pipeline.memory());
    pipeline.memory().give_back(pipeline.flows().len());
    match capture.kernel_stats() {
        Ok(kernel) => metrics.publish(&kernel, &pipeline.flows().stats, pipeline.flows().len(), pipeline.stats()),
        Err(e) => tracing::warn!("reading kernel counters: {e:#}"),
    }
}

/// SIGHUP: load and check the config again. A valid one takes effect for requests framed from now
/// on (flows and requests in progress keep going); an invalid one is refused and the current one
/// stays.
fn reload(path: &Path, current: &Config, replayer: &Replayer, memory: &Memory, tx: &std::sync::mpsc::Sender<Reload>) {
    let new = Config::load(path).and_then(|cfg| Ok((Router::new(&cfg)?, cfg)));
    match new {
        Ok((router, cfg)) => {
            for w in &cfg.warnings {
                tracing::warn!("{w}");
            }
            if cfg.capture.interfaces != current.capture.interfaces {
                tracing::info!(
                    from = ?current.capture.interfaces,
                    to = ?cfg.capture.interfaces,
                    "reload: capture.interfaces changed: attaching to links that match now, detaching from the others"
                );
            }
            replayer.reconfigure(&router);
            memory.set_limit(cfg.memory.limit_bytes);
            let routes = cfg.route_count();
            if tx.send(Reload { router: Arc::new(router), capture: cfg.capture.clone() }).is_ok() {
                tracing::info!(routes, endpoints = cfg.endpoints.len(), "reloaded {}", path.display());
            }
        }
        Err(e) => tracing::error!("reload refused, keeping the current config: {e:#}"),
    }
}

/// Where the capture thread hands what the pipeline made: requests to replay, and what the
/// comparison needs to the compare task (first: a compared request is expected before replay can
/// answer it).
struct Sinks {
    replayer: Arc<Replayer>,
    comparing: Option<crate::comparing::Sink>,
}

impl Sinks {
    fn hand_over(&self, pipeline: &mut Pipeline, out: &mut Vec<crate::pipeline::Outbound>) {
        let events = pipeline.take_compared();
        let mut refused = std::collections::HashSet::new();
        if let Some(sink) = &self.comparing {
            for ev in events {
                let expect = match &ev {
                    crate::pipeline::CompareEvent::Expect { id, .. } => Some(*id),
                    crate::pipeline::CompareEvent::Primary { .. } => None,
                };
                if !sink.send(crate::comparing::Msg::Capture(ev))
                    && let Some(id) = expect
                {
                    // Not expected: replay need not keep its responses.
                    refused.insert(id);
                }
            }
        }
        if !refused.is_empty() {
            for ob in out.iter_mut() {
                if ob.compare.is_some_and(|id| refused.contains(&id)) {
                    ob.compare = None;
                }
            }
        }
        self.replayer.submit_batch(out);
    }
}

/// Reads the perf buffers until `stop`; returns the final counters. Dropping `capture` at the end
/// detaches the classifier from every interface.
fn capture_loop(
    mut capture: Capture,
    mut pipeline: Pipeline,
    sinks: Sinks,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    reloads: std::sync::mpsc::Receiver<Reload>,
) -> Result<serde_json::Value> {
    let mut clock = crate::capture::clock::PacketClock::new();
    let lost = AtomicU64::new(0);
    let mut decode_errors = 0u64;
    let mut out = Vec::new();
    let mut last_publish = Instant::now();
    // Bytes of samples handled by the last drain.
    let mut drained = 0usize;
    // How long the last round took (from drain to drain).
    let (mut last_drain, mut round) = (Instant::now(), Duration::ZERO);
    // (kernel time, position in the batch, segment): see the sort below.
    let mut batch: Vec<(u64, u32, crate::flow::Segment)> = Vec::new();
    let mut mutes = Vec::new();
    // Whether segments or timers were handled since the allocator last gave memory back, and when.
    let (mut worked, mut given_back) = (false, Instant::now());
    const GIVE_BACK_EVERY: Duration = Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        if let Ok(r) = reloads.try_recv() {
            if let Err(e) = capture.reconfigure(&r.capture, &endpoint_addrs(&r.router)) {
                tracing::error!("reload: updating the kernel maps: {e:#}");
            }
            if let Some(sink) = &sinks.comparing {
                sink.send(crate::comparing::Msg::Router(r.router.clone()));
            }
            pipeline.set_router(r.router);
        }
        // Links that appeared (attach), went (forget) or were renamed since the last round.
        capture.watch_links();
        // Let a batch gather, so that each wake-up handles many segments and hands replay one
        // batch: wake-ups of this thread and of the replay runtime, replay's system calls per
        // mirror connection, and touching each flow's state again from a cold cache, not
        // parsing, are most of the cost (at 2,000 req/s: 16 CPU-s per million requests with
        // 20 ms batches, 11 with 40 ms, 9 with 80 ms). The wait is what lets BATCH_BYTES gather
        // at the rate of the last round, at most `capture.batchMs` (50 ms by default): small
        // requests up to ~2,000 per second wait that long, which bounds the extra delay of a
        // mirror copy; faster traffic waits less (8,000 small requests per second: ~14 ms; bulk
        // at 500 MB/s: under a millisecond, so not at all), so that a batch stays a small burst
        // for the mirror and a late wake-up on a busy machine cannot let a ring fill. After an
        // idle spell: wait for data, then BATCH_WAIT (a burst may follow).
        const BATCH_WAIT: Duration = Duration::from_millis(5);
        match drained {
            0 => {
                // Sleep until data arrives or the next flow timer (hole or idle timeout) is due,
                // at most IDLE_WAKE (metrics are published every 500 ms; a reload or a stop waits
                // for this). While idle the rings are looked at every `capture.batchMs`.
                let until_timer = pipeline
                    .flows()
                    .poll_timeout()
                    .map_or(IDLE_WAKE, |t| t.saturating_sub(clock.elapsed()).min(IDLE_WAKE));
                capture.wait(until_timer);
                if capture.buffers.iter().any(crate::capture::ring::PerfRing::readable) {
                    std::thread::sleep(BATCH_WAIT);
                }
            }
            n => {
                let wait = round.mul_f64(BATCH_BYTES as f64 / n as f64).min(capture.batch());
                if wait >= Duration::from_millis(1) {
                    // A burst that fills a quarter of a ring wakes the thread early.
                    capture.gather(wait);
                }
            }
        }
        let mut drained_now = 0usize;

        // Taken before the rings are read: the flow timers run at it, and each segment is timed
        // by the kernel (see `PacketClock`: a late round does not make holes look old).
        let now = clock.horizon();
        // Each CPU has its own ring: gather the batch from all of them, then put it back in the
        // order the kernel saw the packets (a SYN handled on one CPU must not come after the
        // data that followed it on another).
        batch.clear();
        capture.drain(
            |sample| match decode_sample(sample) {
                Ok((ts, seg)) => {
                    drained_now += sample.len();
                    batch.push((ts, batch.len() as u32, seg));
                }
                Err(e) => {
                    decode_errors += 1;
                    tracing::debug!("undecodable sample: {e:?}");
                }
            },
            |n| {
                lost.fetch_add(n, Ordering::Relaxed);
            },
        );
        // Stable for equal times (the pieces of one skb share its time) without the scratch
        // buffer a stable sort allocates: the position breaks ties. That buffer, tens of KB per
        // round, was 3-4% of the daemon's CPU at 24,000 req/s (glibc consolidates its free lists
        // whenever a chunk over 64 KiB is freed).
        if drained_now > 0 || capture.fill() >= 1.0 {
            metrics.ring_fill(capture.fill());
        }
        batch.sort_unstable_by_key(|(ts, i, _)| (*ts, *i));
        for (ts, _, seg) in batch.drain(..) {
            pipeline.on_segment(seg, clock.segment(ts), &mut out);
        }
        // Flow timers: only when one is due (poll_timeout may be early, never late).
        if pipeline.flows().poll_timeout().is_some_and(|t| t <= now) {
            pipeline.on_tick(now, &mut out);
            worked = true;
        }
        if last_publish.elapsed() >= Duration::from_millis(500) {
            publish(&capture, &pipeline, &metrics);
            last_publish = Instant::now();
        }
        sinks.hand_over(&mut pipeline, &mut out);
        pipeline.take_mutes(&mut mutes);
        if !mutes.is_empty() || capture.mutes_pending() {
            capture.apply_mutes(&mut mutes);
        }
        // mimalloc purges what was freed only as the thread allocates again: after a burst (a
        // flood's connections closed or timed out) an idle daemon would keep it. Once a round
        // finds nothing, give it back (at most once a second, and only after work).
        worked |= drained_now > 0;
        if drained_now == 0 && worked && given_back.elapsed() >= GIVE_BACK_EVERY {
            crate::memory::give_back();
            (worked, given_back) = (false, Instant::now());
        }
        drained = drained_now;
        round = last_drain.elapsed();
        last_drain = Instant::now();
    }
    // Deliver what was fully seen; requests still incomplete are dropped and counted.
    pipeline.finish(&mut out);
    sinks.hand_over(&mut pipeline, &mut out);
    publish(&capture, &pipeline, &metrics);
    let kernel: serde_json::Map<String, serde_json::Value> =
        capture.kernel_stats()?.into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    Ok(json!({
        "kernel": kernel,
        "perf_lost_samples": lost.load(Ordering::Relaxed),
        "decode_errors": decode_errors,
        "capture": {
            "links": capture.link_stats(),
            "duplicates_dropped": capture.duplicates_dropped(),
            "ring_peak_fill": capture.peak_fill(),
            "mutes": capture.mute_stats(),
        },
        "flows": pipeline.flows().stats,
        "pipeline": pipeline.stats(),
    }))
}
