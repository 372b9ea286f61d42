//! `mirror replay`: a pcap/pcapng capture through the same flow → http → route → replay path as
//! the live daemon. Offline there is no primary to protect, so replay waits for queue space instead
//! of dropping, and holes in a flow are closed only by the end of the capture.
//!
//! A two-way capture is replayed as the daemon sees the wire: a client byte is framed only once
//! the server's acknowledgement in the capture confirms the primary accepted it
//! ([`FlowConfig::require_ack`]). A capture without any server→client segment is framed without
//! that confirmation, with [`ONE_DIRECTION_WARNING`] logged and listed in the summary's
//! `warnings`.
//!
//! When a destination compares responses and the capture holds both directions, the captured
//! primary's responses are paired with their requests and compared with the live mirrors' (the
//! summary's `compare`).
//!
//! Reading is linear in the capture: IPv4 fragments wait in bounded buffers with a timeout in
//! capture time (those given up are counted in the summary's `capture.fragments_dropped`), and
//! the flow table's operations are O(1) or O(log n), eviction included.

use std::{collections::HashSet, path::Path, sync::Arc, time::Duration};

use anyhow::Result;
use serde_json::{Value, json};

use crate::{
    capture::pcap::read_segments, config::Config, flow::FlowConfig, memory::Memory, pipeline::Pipeline,
    replay::Replayer, route::Router,
};

/// Why a capture's requests are framed without confirmation: it holds no server→client segment.
pub const ONE_DIRECTION_WARNING: &str =
    "the capture holds one direction only: nothing confirms the bytes the primary accepted";

/// Replays `pcap` to the config's mirrors; returns the summary counts.
pub async fn replay(cfg: &Config, pcap: &Path) -> Result<Value> {
    let ports: HashSet<u16> = cfg.capture.ports.iter().copied().collect();
    let (segments, counts) = read_segments(pcap, &ports, cfg.capture.responses)?;
    let mut warnings = Vec::new();
    if counts.fragments_dropped > 0 {
        tracing::warn!(
            capture = %pcap.display(),
            dropped = counts.fragments_dropped,
            "IPv4 fragments that never made a whole datagram (timed out, over a bound, or incomplete at the end)"
        );
    }
    if !counts.two_way() && counts.segments > 0 {
        tracing::warn!(capture = %pcap.display(), "{ONE_DIRECTION_WARNING}");
        warnings.push(ONE_DIRECTION_WARNING);
        if cfg.capture.responses {
            tracing::warn!("responses are not compared: the capture has none of the primary's");
        }
    }
    let router = Arc::new(Router::new(cfg)?);
    let memory = Arc::new(Memory::new(cfg.memory.limit_bytes));
    let replayer = Replayer::start(&router, &cfg.replay, None, memory.clone());
    let responses = cfg.capture.responses && counts.two_way();
    let comparing = responses.then(|| {
        let wait = cfg.replay.request_timeout() + Duration::from_secs(1);
        let sink = crate::comparing::start(router.clone(), wait, None, memory.clone());
        replayer.compare_to(sink.clone());
        sink
    });
    let flow_cfg = FlowConfig {
        idle_timeout: Duration::from_secs(u32::MAX as u64),
        reorder_timeout: Duration::from_secs(u32::MAX as u64),
        require_ack: counts.two_way(),
        ..Pipeline::budgeted_flows(responses)
    };
    let mut pipeline = Pipeline::new(router, flow_cfg, cfg.replay.buffer_bytes).with_memory(memory);
    let mut out = Vec::new();
    for (ts, seg) in segments {
        pipeline.on_segment(seg, ts, &mut out);
        hand_over(&mut pipeline, comparing.as_ref()).await;
        for ob in out.drain(..) {
            replayer.send(ob).await;
        }
    }
    pipeline.finish(&mut out);
    hand_over(&mut pipeline, comparing.as_ref()).await;
    for ob in out.drain(..) {
        replayer.send(ob).await;
    }
    let stats = replayer.stats.clone();
    // Every queued request gets its full request timeout.
    replayer.shutdown(cfg.replay.request_timeout() + Duration::from_secs(1)).await;
    let mut summary = json!({
        "capture": counts,
        "flows": pipeline.flows().stats,
        "pipeline": pipeline.stats(),
        "replay": stats.snapshot(),
        "warnings": warnings,
    });
    if let Some(sink) = &comparing {
        summary["compare"] = sink.finish().await;
    }
    Ok(summary)
}

/// Gives what the comparison learned to the compare task (waiting for room: nothing live).
async fn hand_over(pipeline: &mut Pipeline, comparing: Option<&crate::comparing::Sink>) {
    for ev in pipeline.take_compared() {
        if let Some(sink) = comparing {
            sink.send_wait(crate::comparing::Msg::Capture(ev)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    //! Issue 12: captures that used to hang `mirror replay` (300,000 IPv4 fragments that never
    //! complete: quadratic; 150,000 SYN flows: a scan of the flow table per flow beyond 65,536)
    //! now replay in time linear in their size. Set `MIRROR_KEEP_PCAPS=<dir>` to keep the
    //! generated captures (to time `mirror replay` on them by hand).

    use std::path::PathBuf;

    use mirror_common::{TCP_ACK, TCP_PSH, TCP_SYN};

    use super::*;
    use crate::capture::pcap::testdata::{ipv4, tcp, write_pcap};

    const CLIENT: [u8; 4] = [10, 0, 0, 1];
    const SERVER: [u8; 4] = [10, 0, 0, 2];

    fn config() -> Config {
        Config::parse(
            "capture: {interfaces: [lo], ports: [80]}\nroutes: [{mirror: {host: m}}]\nendpoints: {m: ['127.0.0.1:1']}\n",
            "test",
        )
        .unwrap()
    }

    fn capture_path(name: &str) -> (PathBuf, Option<tempdir::Dir>) {
        match std::env::var_os("MIRROR_KEEP_PCAPS") {
            Some(dir) => (PathBuf::from(dir).join(name), None),
            None => {
                let dir = tempdir::Dir::new();
                (dir.0.join(name), Some(dir))
            }
        }
    }

    /// A scratch directory removed on drop.
    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir().join(format!("mirror-offline-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    /// One complete request on its own connection from `port`, with the server's handshake and
    /// acknowledgements, IP id `id`; the request split into two IPv4 fragments if `fragmented`.
    fn request_flow(port: u16, id: u16, fragmented: bool) -> Vec<Vec<u8>> {
        let req = format!("GET /real/{port} HTTP/1.1\r\nHost: h\r\n\r\n");
        let data = tcp(port, 80, 101, 8, TCP_ACK | TCP_PSH, req.as_bytes());
        let mut packets = vec![
            ipv4(CLIENT, SERVER, id, 0, &tcp(port, 80, 100, 0, TCP_SYN, b"")),
            ipv4(SERVER, CLIENT, id, 0, &tcp(80, port, 7, 101, TCP_SYN | TCP_ACK, b"")),
        ];
        if fragmented {
            packets.push(ipv4(CLIENT, SERVER, id, 0x2000, &data[..24]));
            packets.push(ipv4(CLIENT, SERVER, id, 3, &data[24..]));
        } else {
            packets.push(ipv4(CLIENT, SERVER, id, 0, &data));
        }
        packets.push(ipv4(SERVER, CLIENT, id, 0, &tcp(80, port, 8, 101 + req.len() as u32, TCP_ACK, b"")));
        packets
    }

    async fn replay_packets(name: &str, packets: Vec<Vec<u8>>) -> Value {
        let (path, _dir) = capture_path(name);
        // A millisecond apart: 300,000 packets span 5 minutes of capture time.
        write_pcap(&path, packets.into_iter().enumerate().map(|(i, p)| (Duration::from_millis(i as u64), p))).unwrap();
        replay(&config(), &path).await.unwrap()
    }

    /// Issue 15, point 5: the captured primary's responses compared with a live mirror's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn captured_responses_are_compared_with_the_live_mirrors() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // The mirror: every request answered with `{"a":2}` (the primary answered `{"a":1}`).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while let Ok(n) = s.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let r = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":2}";
                            let _ = s.write_all(r).await;
                        }
                    }
                });
            }
        });
        let cfg = Config::parse(
            &format!(
                "capture: {{interfaces: [lo], ports: [80]}}\nroutes: [{{name: r, mirror: {{host: m}}}}]\nendpoints: {{m: ['{addr}']}}\nmirrorPolicies: {{m: {{compare: {{}}}}}}\n"
            ),
            "test",
        )
        .unwrap();
        // Two requests on one connection; the primary answers both (its second response in two
        // segments), the first the same as the mirror will, the second not.
        let (a, b) = (b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n");
        let same = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":2}";
        let other = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
        let (la, lb, ls) = (a.len() as u32, b.len() as u32, same.len() as u32);
        let packets = vec![
            ipv4(CLIENT, SERVER, 0, 0, &tcp(4000, 80, 100, 0, TCP_SYN, b"")),
            ipv4(SERVER, CLIENT, 0, 0, &tcp(80, 4000, 7, 101, TCP_SYN | TCP_ACK, b"")),
            ipv4(CLIENT, SERVER, 0, 0, &tcp(4000, 80, 101, 8, TCP_ACK | TCP_PSH, a)),
            ipv4(SERVER, CLIENT, 0, 0, &tcp(80, 4000, 8, 101 + la, TCP_ACK | TCP_PSH, same)),
            ipv4(CLIENT, SERVER, 0, 0, &tcp(4000, 80, 101 + la, 8 + ls, TCP_ACK | TCP_PSH, b)),
            ipv4(SERVER, CLIENT, 0, 0, &tcp(80, 4000, 8 + ls, 101 + la + lb, TCP_ACK, &other[..20])),
            ipv4(SERVER, CLIENT, 0, 0, &tcp(80, 4000, 8 + ls + 20, 101 + la + lb, TCP_ACK | TCP_PSH, &other[20..])),
        ];
        let (path, _dir) = capture_path("compare.pcap");
        write_pcap(&path, packets.into_iter().enumerate().map(|(i, p)| (Duration::from_millis(i as u64), p))).unwrap();
        let summary = replay(&cfg, &path).await.unwrap();
        let pairs = &summary["compare"]["pairs"]["r/m"];
        assert_eq!((&pairs["same"], &pairs["different"]), (&json!(1), &json!(1)), "{summary}");
        assert_eq!(pairs["fields"], json!({"json:/a": 1}), "{summary}");
        assert_eq!(summary["compare"]["join"], json!({"refused": 0, "timed_out": 0, "unmatched": 0}), "{summary}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_hundred_thousand_fragments_that_never_complete_replay_in_linear_time() {
        // One datagram with its first and last pieces and a hole just before the last, then
        // 300,000 pieces (re-sent copies) that never fill it: before, each one sorted and scanned
        // all those held. One in a thousand is of another datagram. A fragmented request before
        // and after them is still reassembled.
        let mut packets = request_flow(40_000, 1, true);
        packets.push(ipv4(CLIENT, SERVER, 7, 0x2000, &[0; 8]));
        packets.push(ipv4(CLIENT, SERVER, 7, 8000, &[0; 8]));
        for i in 0..300_000u32 {
            let id = if i % 1000 == 0 { 10_000 + (i / 1000) as u16 } else { 7 };
            packets.push(ipv4(CLIENT, SERVER, id, 0x2000 | (1 + (i % 7990) as u16), &[i as u8; 8]));
        }
        packets.extend(request_flow(40_001, 2, true));
        let summary = replay_packets("fragments.pcap", packets).await;
        let capture = &summary["capture"];
        // The requests' first pieces waited too, and completed.
        assert_eq!(capture["fragments"], json!(300_004), "{summary}");
        assert_eq!(capture["fragments_dropped"], json!(300_002), "{summary}");
        assert_eq!(summary["pipeline"]["requests_framed"], json!(2), "{summary}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hundred_and_fifty_thousand_syn_flows_replay_in_linear_time() {
        // Each a SYN the server answers and nothing more, from distinct ports and addresses; a
        // real request every 10,000 of them.
        let mut packets = Vec::new();
        for i in 0..150_000u32 {
            if i % 10_000 == 0 {
                packets.extend(request_flow(i as u16 | 1, 0, false));
            }
            let src = [10, 1, (i >> 16) as u8, (i >> 8) as u8];
            let port = 1024 + (i & 0xff) as u16;
            packets.push(ipv4(src, SERVER, 0, 0, &tcp(port, 80, i, 0, TCP_SYN, b"")));
            packets.push(ipv4(SERVER, src, 0, 0, &tcp(80, port, 7, i.wrapping_add(1), TCP_SYN | TCP_ACK, b"")));
        }
        let summary = replay_packets("syn-flows.pcap", packets).await;
        let flows = &summary["flows"];
        assert_eq!(flows["opened"], json!(150_015), "{summary}");
        assert_eq!(flows["evicted"], json!(150_015 - FlowConfig::default().max_flows as u64), "{summary}");
        assert_eq!(summary["pipeline"]["requests_framed"], json!(15), "{summary}");
    }
}
