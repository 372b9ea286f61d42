//! What a streamed request's parts keep alive against what replay charges.

use std::sync::Arc;

use bytes::Bytes;
use mirror_common::{TCP_ACK, TCP_SYN};
use rand::{SeedableRng, rngs::StdRng};

use super::super::weight;
use crate::{
    config::Config,
    flow::{FlowConfig, FlowKey, Segment},
    pipeline::{Outbound, Part, Pipeline},
    route::Router,
};

fn key() -> FlowKey {
    FlowKey { client: "10.0.0.1:5555".parse().unwrap(), server: "10.0.0.2:80".parse().unwrap() }
}

fn pipeline(buffer_bytes: usize) -> Pipeline {
    let text = "capture: {interfaces: [eth0], ports: [80]}\nendpoints: {'httpbin/v2': ['127.0.0.1:1']}\nroutes:\n  - mirror: {host: httpbin, subset: v2}\n    mirrorPercentage: {value: 100}\n";
    let router = Router::new(&Config::parse(text, "t").unwrap()).unwrap();
    Pipeline::with_rng(Arc::new(router), FlowConfig::default(), buffer_bytes, StdRng::seed_from_u64(3))
}

/// Client bytes at `seq`, then the server's acknowledgement of `ack`.
fn send(p: &mut Pipeline, seq: u32, data: Bytes, ack: u32, out: &mut Vec<Outbound>) {
    let now = std::time::Duration::from_millis(1);
    p.on_segment(Segment::to_server(key(), seq, 8, TCP_ACK, data), now, out);
    p.on_segment(Segment::to_client(key(), 8, ack, TCP_ACK, 0), now, out);
}

/// A streamed request (beyond `bufferBytes`) whose client retransmits 60,000-byte segments that
/// overlap what was delivered but for their last byte (Linux's TCP takes the new byte). Each
/// such byte becomes a `Part::More` that is a slice of its whole 60,000-byte segment: replay
/// charges it `size_of::<Outbound>() + 1` to the budget and `replay.maxQueuedBytes`, while it keeps
/// the segment's allocation alive until written (a slow mirror: `replay.queue` slots per
/// connection, 16,384 by default, i.e. ~1 GB per mirror connection, against a 64 MiB
/// maxQueuedBytes).
#[test]
fn a_streamed_part_is_charged_at_least_what_it_keeps_alive() {
    let mut p = pipeline(100_000);
    let mut out = Vec::new();
    let now = std::time::Duration::ZERO;
    p.on_segment(Segment::to_server(key(), 1, 0, TCP_SYN, Bytes::new()), now, &mut out);
    p.on_segment(Segment::to_client(key(), 7, 2, TCP_SYN | TCP_ACK, 0), now, &mut out);
    let head = b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    let mut first = head.clone();
    first.resize(60_000, b'a');
    send(&mut p, 2, Bytes::from(first), 60_002, &mut out);
    send(&mut p, 60_002, Bytes::from(vec![b'b'; 60_000]), 120_002, &mut out);
    assert!(matches!(out.last().map(|o| &o.part), Some(Part::Start { .. })), "streaming");
    // Retransmissions: 59,999 bytes already delivered, one new byte each.
    // Each segment is kept alive here too: an allocation made after one was freed could land
    // at its address and pass for a slice of it.
    let (mut segs, mut alive) = (Vec::new(), Vec::new());
    for next in 120_002u32..120_012 {
        let seg = Bytes::from(vec![b'c'; 60_000]);
        segs.push((seg.as_ptr() as usize, seg.len()));
        alive.push(seg.clone());
        send(&mut p, next + 1 - 60_000, seg, next + 1, &mut out);
    }
    let mores: Vec<&Outbound> = out.iter().filter(|o| matches!(o.part, Part::More { .. })).collect();
    assert_eq!(mores.len(), 10);
    for (more, (at, len)) in mores.into_iter().zip(segs) {
        let Part::More { bytes, .. } = &more.part else { unreachable!() };
        assert_eq!(bytes.len(), 1);
        // A slice of its segment keeps the segment alive; a copy, its own byte.
        let kept = if (at..at + len).contains(&(bytes.as_ptr() as usize)) { len } else { bytes.len() };
        assert!(weight(more) >= kept, "charged {} for a part that keeps {} bytes alive", weight(more), kept);
    }
}
