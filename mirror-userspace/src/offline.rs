//! `mirror replay`: a pcap/pcapng capture through the same flow → http → route → replay path as
//! the live daemon. Offline there is no primary to protect, so replay waits for queue space instead
//! of dropping, and holes in a flow are closed only by the end of the capture.

use std::{collections::HashSet, path::Path, sync::Arc, time::Duration};

use anyhow::Result;
use serde_json::{Value, json};

use crate::{
    capture::pcap::read_segments, config::Config, flow::FlowConfig, pipeline::Pipeline, replay::Replayer, route::Router,
};

/// Replays `pcap` to the config's mirrors; returns the summary counts.
pub async fn replay(cfg: &Config, pcap: &Path) -> Result<Value> {
    let ports: HashSet<u16> = cfg.capture.ports.iter().copied().collect();
    let (segments, counts) = read_segments(pcap, &ports)?;
    let router = Arc::new(Router::new(cfg)?);
    let replayer = Replayer::start(&router, &cfg.replay, None);
    let flow_cfg = FlowConfig {
        idle_timeout: Duration::from_secs(u32::MAX as u64),
        reorder_timeout: Duration::from_secs(u32::MAX as u64),
        ..FlowConfig::default()
    };
    let mut pipeline = Pipeline::new(router, flow_cfg, cfg.replay.buffer_bytes);
    let mut out = Vec::new();
    for (ts, seg) in segments {
        pipeline.on_segment(seg, ts, &mut out);
        for ob in out.drain(..) {
            replayer.send(ob).await;
        }
    }
    pipeline.finish(&mut out);
    for ob in out.drain(..) {
        replayer.send(ob).await;
    }
    let stats = replayer.stats.clone();
    // Every queued request gets its full request timeout.
    replayer.shutdown(cfg.replay.request_timeout() + Duration::from_secs(1)).await;
    Ok(json!({
        "capture": counts,
        "flows": pipeline.flows().stats,
        "pipeline": pipeline.stats(),
        "replay": stats.snapshot(),
    }))
}
