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

use anyhow::{Context as _, Result};
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    capture::{Capture, decode_sample},
    config::Config,
    flow::FlowConfig,
    pipeline::Pipeline,
    replay::Replayer,
    route::Router,
};

pub async fn run(cfg: Config) -> Result<()> {
    let router = Arc::new(Router::new(&cfg)?);
    let replayer = Arc::new(Replayer::start(&router, &cfg.replay));
    let capture = Capture::start(&cfg.capture.interfaces, &cfg.capture.ports, cfg.capture.perf_pages)?;
    tracing::info!(
        interfaces = ?cfg.capture.interfaces,
        ports = ?cfg.capture.ports,
        cpus = capture.buffers.len(),
        "ready"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        let replayer = replayer.clone();
        let buffer_bytes = cfg.replay.buffer_bytes;
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || capture_loop(capture, router, replayer, buffer_bytes, stop))
            .context("spawning the capture thread")?
    };

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    stop.store(true, Ordering::Relaxed);
    let summary = tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("capture thread panicked"))??;
    let stats = replayer.stats.clone();
    replayer.shutdown(Duration::from_secs(2)).await;
    let mut summary = summary;
    summary["replay"] = json!(stats.snapshot());
    println!("{summary}");
    Ok(())
}

/// Reads the perf buffers until `stop`; returns the final counters. Dropping `capture` at the end
/// detaches the classifier from every interface.
fn capture_loop(
    mut capture: Capture,
    router: Arc<Router>,
    replayer: Arc<Replayer>,
    buffer_bytes: usize,
    stop: Arc<AtomicBool>,
) -> Result<serde_json::Value> {
    let mut pipeline = Pipeline::new(router, FlowConfig::default(), buffer_bytes);
    let start = Instant::now();
    let lost = AtomicU64::new(0);
    let mut decode_errors = 0u64;
    let mut out = Vec::new();
    let mut last_tick = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        capture.wait(100);
        let now = start.elapsed();
        capture.drain(
            |sample| match decode_sample(sample) {
                Ok(seg) => pipeline.on_segment(seg, now, &mut out),
                Err(e) => {
                    decode_errors += 1;
                    tracing::debug!("undecodable sample: {e:?}");
                }
            },
            |n| {
                lost.fetch_add(n, Ordering::Relaxed);
            },
        );
        if last_tick.elapsed() >= Duration::from_millis(50) {
            pipeline.on_tick(start.elapsed(), &mut out);
            last_tick = Instant::now();
        }
        for ob in out.drain(..) {
            replayer.submit(ob);
        }
    }
    // Deliver what was fully seen; requests still incomplete are dropped and counted.
    pipeline.finish(&mut out);
    for ob in out.drain(..) {
        replayer.submit(ob);
    }
    let kernel: serde_json::Map<String, serde_json::Value> =
        capture.kernel_stats()?.into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    let f = &pipeline.flows().stats;
    Ok(json!({
        "kernel": kernel,
        "perf_lost_samples": lost.load(Ordering::Relaxed),
        "decode_errors": decode_errors,
        "flows": {
            "opened": f.flows_opened, "midstream": f.flows_midstream, "gaps": f.gaps,
            "retransmitted_segments": f.retransmitted_segments, "out_of_order_segments": f.out_of_order_segments,
            "evicted": f.evicted,
        },
        "pipeline": pipeline.stats,
    }))
}
