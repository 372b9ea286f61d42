//! The core end to end: segments in, mirrored requests out.
use super::*;
use crate::config::Config;
use mirror_common::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

fn pipeline(pct: f64) -> Pipeline {
    pipeline_with(pct, FlowConfig::default())
}

fn pipeline_with(pct: f64, flows: FlowConfig) -> Pipeline {
    let text = format!(
        "capture: {{interfaces: [eth0], ports: [80]}}\nendpoints: {{'httpbin/v2': ['127.0.0.1:1']}}\nroutes:\n  - mirror: {{host: httpbin, subset: v2}}\n    mirrorPercentage: {{value: {pct}}}\n"
    );
    let router = Router::new(&Config::parse(&text, "t").unwrap()).unwrap();
    Pipeline::with_rng(Arc::new(router), flows, 1 << 20, StdRng::seed_from_u64(3))
}

fn key() -> FlowKey {
    FlowKey { client: "10.0.0.1:5555".parse().unwrap(), server: "10.0.0.2:80".parse().unwrap() }
}

/// Feeds the client's segments, each followed by the server's ACK (a SYN-ACK for the SYN) of
/// everything up to the end of the furthest one so far (the server got every segment, even one
/// the capture lost).
fn feed(p: &mut Pipeline, segs: &[(u32, u8, &[u8])]) -> Vec<Outbound> {
    let mut out = Vec::new();
    let mut acked = 0u32;
    for (i, (seq, flags, data)) in segs.iter().enumerate() {
        let s = Segment::to_server(key(), *seq, 0, *flags, Bytes::copy_from_slice(data));
        p.on_segment(s, Duration::from_millis(i as u64), &mut out);
        let syn_fin = u32::from(flags & (TCP_SYN | TCP_FIN) != 0);
        acked = acked.max(seq + data.len() as u32 + syn_fin);
        // The SYN is answered with a SYN-ACK.
        let ack_flags = TCP_ACK | (flags & TCP_SYN);
        p.on_segment(Segment::to_client(key(), 7, acked, ack_flags, 0), Duration::from_millis(i as u64), &mut out);
    }
    out
}

#[test]
fn post_is_mirrored_with_host_rewritten_and_body_identical() {
    let mut p = pipeline(100.0);
    let req = b"POST /post HTTP/1.1\r\nHost: httpbin:8000\r\nContent-Length: 11\r\n\r\nhello world";
    let out = feed(&mut p, &[(1, TCP_SYN, b""), (2, TCP_ACK, &req[..50]), (52, TCP_ACK | TCP_FIN, &req[50..])]);
    assert_eq!(out.len(), 1);
    let r = out[0].whole().unwrap();
    assert_eq!(&r.head[..], b"POST /post HTTP/1.1\r\nHost: httpbin-shadow:8000\r\nContent-Length: 11\r\n\r\n");
    assert_eq!(&r.body.concat()[..], b"hello world");
    assert_eq!(p.stats().mirrored, 1);
}

#[test]
fn zero_percent_sends_nothing() {
    let mut p = pipeline(0.0);
    let out = feed(&mut p, &[(1, TCP_SYN, b""), (2, TCP_ACK, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")]);
    assert!(out.is_empty());
    assert_eq!(p.stats().sampled_out, 1);
}

#[test]
fn only_what_the_primary_processed_reaches_the_mirror() {
    // Issue 11: a data segment without ACK, an out-of-window RST, text in a body that looks
    // like a request line.
    let mut p = pipeline(100.0);
    let head = b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 25\r\n\r\n";
    let body = b"GET /phantom HTTP/1.1\r\n\r\n";
    let (h, n) = (head.len() as u32, (head.len() + body.len()) as u32);
    let client = |seq, flags, data: &[u8]| Segment::to_server(key(), seq, 0, flags, Bytes::copy_from_slice(data));
    let server = |ack, flags| Segment::to_client(key(), 7, ack, flags, 0);
    let mut out = Vec::new();
    for s in [
        client(1, TCP_SYN, b""),
        server(2, TCP_SYN | TCP_ACK),
        client(2, 0, b"GET /noack HTTP/1.1\r\n\r\n"),
        client(2, TCP_ACK, head),
        server(2 + h, TCP_ACK),
        client(99_999, TCP_RST, b""),
        client(2 + h, TCP_ACK, body),
        server(2 + n, TCP_ACK),
    ] {
        p.on_segment(s, Duration::ZERO, &mut out);
    }
    p.finish(&mut out);
    let targets: Vec<&str> = out.iter().map(|o| o.whole().unwrap().target()).collect();
    assert_eq!(targets, ["/up"]);
    assert_eq!(&out[0].whole().unwrap().body.concat()[..], body);
    assert_eq!((p.flows().stats.segments_without_ack, p.flows().stats.rst_ignored), (1, 1));
}

#[test]
fn request_the_primary_never_acknowledged_is_never_sent() {
    // A spoofed source: the primary answers the SYN to an address that never completes.
    let mut p = pipeline(100.0);
    let mut out = Vec::new();
    for (i, (seq, flags, data)) in
        [(1, TCP_SYN, &b""[..]), (2, TCP_ACK, b"GET /spoofed HTTP/1.1\r\n\r\n")].into_iter().enumerate()
    {
        let s = Segment::to_server(key(), seq, 0, flags, Bytes::copy_from_slice(data));
        p.on_segment(s, Duration::from_millis(i as u64), &mut out);
    }
    p.finish(&mut out);
    assert!(out.is_empty());
    assert_eq!(p.flows().stats.unacked_bytes, 25);
    assert_eq!(p.stats().dropped.get(&DropReason::Gap), Some(&1));
}

#[test]
fn request_cut_by_a_lost_segment_is_never_sent_nor_what_follows() {
    let mut p = pipeline(100.0);
    let req = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789";
    let next = b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n";
    let n = req.len() as u32;
    // Bytes 40..45 of the first request never arrive: the flow is given up.
    let mut out =
        feed(&mut p, &[(1, TCP_SYN, b""), (2, TCP_ACK, &req[..40]), (47, TCP_ACK, &req[45..]), (2 + n, TCP_ACK, next)]);
    p.on_tick(Duration::from_secs(10), &mut out);
    assert_eq!(p.flows().stats.given_up_acked_bytes, 0);
    // The connection goes on: what the primary accepts from it now is counted in bytes.
    let m = next.len() as u32;
    out.extend(feed(&mut p, &[(2 + n + m, TCP_ACK, next), (2 + n + 2 * m, TCP_ACK, next)]));
    p.finish(&mut out);
    assert!(out.is_empty());
    assert_eq!(p.stats().dropped.get(&DropReason::Gap), Some(&1));
    assert_eq!(p.flows().stats.flows_given_up_gap, 1);
    assert_eq!(p.flows().stats.given_up_acked_bytes, 2 * u64::from(m));
}

#[test]
fn a_segment_lost_inside_a_body_loses_that_request_only() {
    // A kept-alive flow of uploads whose body bytes look like requests; the capture lost part of
    // the first body (the server got it: its ACK covers it).
    let mut p = pipeline(100.0);
    let body = b"GET /phantom HTTP/1.1\r\nHost: h\r\n\r\nGET /p2 HTTP/1.1\r\n\r\n";
    let first =
        [format!("POST /1 HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(), body].concat();
    let next = b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody";
    let (h, n) = ((first.len() - body.len()) as u32, first.len() as u32);
    // Body bytes 5..20 lost.
    let (a, b) = (&first[..h as usize + 5], &first[h as usize + 20..]);
    let segs = [(1, TCP_SYN, &b""[..]), (2, TCP_ACK, a), (2 + h + 20, TCP_ACK, b)];
    let mut out = feed(&mut p, &segs);
    out.extend(feed(&mut p, &[(2 + n, TCP_ACK, &next[..])]));
    // The hole is given up at the reorder timeout.
    p.on_tick(Duration::from_secs(10), &mut out);
    p.finish(&mut out);
    let targets: Vec<&str> = out.iter().map(|o| o.whole().unwrap().target()).collect();
    assert_eq!(targets, ["/2"]);
    assert_eq!(&out[0].whole().unwrap().body.concat()[..], b"body");
    assert_eq!(p.stats().dropped.get(&DropReason::Gap), Some(&1));
    assert_eq!((p.flows().stats.gaps, p.flows().stats.flows_given_up_gap), (1, 0));
}

#[test]
fn one_direction_only_resynchronises_after_a_lost_segment() {
    let text =
        "capture: {interfaces: [eth0], ports: [80]}\nendpoints: {m: ['127.0.0.1:1']}\nroutes: [{mirror: {host: m}}]\n";
    let router = Router::new(&Config::parse(text, "t").unwrap()).unwrap();
    let flow_cfg = FlowConfig { require_ack: false, ..FlowConfig::default() };
    let mut p = Pipeline::with_rng(Arc::new(router), flow_cfg, 1 << 20, StdRng::seed_from_u64(3));
    let req = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789";
    let next = b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n";
    let n = req.len() as u32;
    // Bytes 40..45 of the first request never arrive (no ACK is needed without require_ack).
    let mut out =
        feed(&mut p, &[(1, TCP_SYN, b""), (2, TCP_ACK, &req[..40]), (47, TCP_ACK, &req[45..]), (2 + n, TCP_ACK, next)]);
    p.finish(&mut out);
    assert_eq!(out.len(), 1, "only the request after the gap");
    assert_eq!(out[0].whole().unwrap().target(), "/after");
    assert_eq!(p.stats().dropped.get(&DropReason::Gap), Some(&1));
}

#[test]
fn large_request_is_streamed_in_order_and_small_ones_stay_whole() {
    let mut p = pipeline(100.0);
    p.routing.buffer_bytes = 100;
    let big = format!("POST /big HTTP/1.1\r\nContent-Length: 300\r\n\r\n{}", "x".repeat(300));
    let next = b"GET /small HTTP/1.1\r\n\r\n";
    let (a, b) = big.as_bytes().split_at(120);
    let (b, c) = b.split_at(100);
    let mut segs: Vec<(u32, u8, &[u8])> = vec![(1, TCP_SYN, b"")];
    let mut seq = 2u32;
    for part in [a, b, c, &next[..]] {
        segs.push((seq, TCP_ACK, part));
        seq += part.len() as u32;
    }
    let out = feed(&mut p, &segs);
    let parts: Vec<&Part> = out.iter().map(|o| &o.part).collect();
    assert!(matches!(parts[0], Part::Start { stream: 0, request } if request.head.len() + request.body.len() == 120));
    assert!(matches!(parts[1], Part::More { stream: 0, index: 1, bytes, .. } if bytes.len() == 100));
    assert!(matches!(parts[2], Part::More { stream: 0, index: 2, bytes, .. } if bytes.len() == big.len() - 220));
    assert!(matches!(parts[3], Part::End { stream: 0, index: 3 }));
    assert!(matches!(parts[4], Part::Whole(r) if r.target() == "/small"));
    assert_eq!((p.stats().streamed, p.stats().mirrored), (1, 2));
}

#[test]
fn streamed_request_cut_by_a_gap_is_aborted() {
    let mut p = pipeline(100.0);
    p.routing.buffer_bytes = 50;
    let big = format!("POST /big HTTP/1.1\r\nContent-Length: 300\r\n\r\n{}", "x".repeat(300));
    let b = big.as_bytes();
    let mut out = feed(&mut p, &[(1, TCP_SYN, b""), (2, TCP_ACK, &b[..100]), (2 + 150, TCP_ACK, &b[150..])]);
    p.finish(&mut out);
    let parts: Vec<&Part> = out.iter().map(|o| &o.part).collect();
    assert!(matches!(parts.first(), Some(Part::Start { .. })));
    assert!(matches!(parts.last(), Some(Part::Abort { stream: 0 })));
    assert!(!parts.iter().any(|p| matches!(p, Part::End { .. })));
    assert_eq!(p.stats().dropped.get(&DropReason::StreamAborted), Some(&1));
}

mod body_pieces;
mod compare;
mod memory_budget;
mod targets;

/// An upload as the capture ships it (a 60,000-byte segment with the head, then the tail): the
/// body's long piece is the segment's own bytes, not a copy; the tail is copied; the mirror gets
/// the bytes in order, and the budget is charged at least the segment the slice keeps alive.
#[test]
fn a_long_body_piece_is_kept_as_a_slice_of_its_segment_and_charged_the_segment() {
    let mut p = pipeline(100.0).with_memory(Arc::new(Memory::new(1 << 30)));
    let body: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();
    let head = format!("POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    let mut req = head.clone();
    req.extend_from_slice(&body);
    let first = Bytes::copy_from_slice(&req[..60_000]);
    let at = first.as_ptr();
    let mut out = Vec::new();
    let now = Duration::ZERO;
    p.on_segment(Segment::to_server(key(), 1, 0, TCP_SYN, Bytes::new()), now, &mut out);
    p.on_segment(Segment::to_client(key(), 7, 2, TCP_SYN | TCP_ACK, 0), now, &mut out);
    p.on_segment(Segment::to_server(key(), 2, 8, TCP_ACK, first), now, &mut out);
    p.on_segment(Segment::to_client(key(), 8, 60_002, TCP_ACK, 0), now, &mut out);
    // Held while the tail is awaited: the segment, charged at least SLICE_CHARGE.
    assert_eq!(p.memory.held(Held::Bodies), SLICE_CHARGE);
    let tail = Bytes::copy_from_slice(&req[60_000..]);
    p.on_segment(Segment::to_server(key(), 60_002, 8, TCP_ACK, tail), now, &mut out);
    p.on_segment(Segment::to_client(key(), 8, 2 + req.len() as u32, TCP_ACK, 0), now, &mut out);
    assert_eq!(out.len(), 1);
    let r = out[0].whole().unwrap();
    assert_eq!(r.body.concat(), Bytes::from(body.clone()));
    let pieces = r.body.pieces();
    assert_eq!(pieces.len(), 2);
    assert_eq!(pieces[0].as_ptr(), at.wrapping_add(head.len()), "a slice of the segment");
    assert_eq!(pieces[0].len(), 60_000 - head.len());
    assert_eq!(r.body.held(), SLICE_CHARGE + (req.len() - 60_000));
    assert_eq!(p.memory.held(Held::Bodies), 0, "handed on");
}

/// A body that came in many short segments is one copied piece, held within its declared
/// length; pieces and bytes agree however the body was cut.
#[test]
fn short_body_pieces_are_copied_into_one() {
    let mut p = pipeline(100.0);
    let body: Vec<u8> = (0..20_000u32).map(|i| (i % 13) as u8).collect();
    let mut req = format!("POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    let head_len = req.len();
    req.extend_from_slice(&body);
    let mut segs: Vec<(u32, u8, &[u8])> = vec![(1, TCP_SYN, b"")];
    segs.extend(req.chunks(1448).enumerate().map(|(i, c)| (2 + (i * 1448) as u32, TCP_ACK, c)));
    let out = feed(&mut p, &segs);
    assert_eq!(out.len(), 1);
    let r = out[0].whole().unwrap();
    assert_eq!(r.body.pieces().len(), 1);
    assert_eq!(r.body.concat(), Bytes::from(body));
    assert!(head_len < 1448);
    assert_eq!(r.body.held(), 20_000, "its declared length, exactly");
    // Cut differently, equal.
    let other = Body::from_bytes(r.body.concat().slice(..7));
    assert_ne!(r.body, other);
    assert_eq!(r.body, Body::from_bytes(r.body.concat()));
}
