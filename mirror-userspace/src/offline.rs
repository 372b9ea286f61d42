//! `mirror replay`: a pcap/pcapng capture through the same flow → http → route → replay path as
//! the live daemon. Offline there is no primary to protect, so replay waits for queue space instead
//! of dropping, and holes in a flow are closed only by the end of the capture.
//!
//! A two-way capture is replayed as the daemon sees the wire: a client byte is framed only once
//! the server's acknowledgement in the capture confirms the primary accepted it
//! ([`FlowConfig::require_ack`]). A capture without any server→client segment is framed without
//! that confirmation, with [`ONE_DIRECTION_WARNING`] logged and listed in the summary's
//! `warnings`.

use std::{collections::HashSet, path::Path, sync::Arc, time::Duration};

use anyhow::Result;
use serde_json::{Value, json};

use crate::{
    capture::pcap::read_segments, config::Config, flow::FlowConfig, pipeline::Pipeline, replay::Replayer, route::Router,
};

/// Why a capture's requests are framed without confirmation: it holds no server→client segment.
pub const ONE_DIRECTION_WARNING: &str =
    "the capture holds one direction only: nothing confirms the bytes the primary accepted";

/// Replays `pcap` to the config's mirrors; returns the summary counts.
pub async fn replay(cfg: &Config, pcap: &Path) -> Result<Value> {
    let ports: HashSet<u16> = cfg.capture.ports.iter().copied().collect();
    let (segments, counts) = read_segments(pcap, &ports)?;
    let mut warnings = Vec::new();
    if !counts.two_way() && counts.segments > 0 {
        tracing::warn!(capture = %pcap.display(), "{ONE_DIRECTION_WARNING}");
        warnings.push(ONE_DIRECTION_WARNING);
    }
    let router = Arc::new(Router::new(cfg)?);
    let replayer = Replayer::start(&router, &cfg.replay, None);
    let flow_cfg = FlowConfig {
        idle_timeout: Duration::from_secs(u32::MAX as u64),
        reorder_timeout: Duration::from_secs(u32::MAX as u64),
        require_ack: counts.two_way(),
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
        "warnings": warnings,
    }))
}
