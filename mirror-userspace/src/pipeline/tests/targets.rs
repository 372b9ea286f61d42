//! Request-targets (kept as a range of the head, as a string only for compared copies) and
//! budgeted flow tables at their extremes.
use super::*;

use super::compare::CONFIG;

fn compared(flows: FlowConfig, buffer: usize) -> Pipeline {
    let router = Router::new(&Config::parse(CONFIG, "t").unwrap()).unwrap();
    Pipeline::with_rng(Arc::new(router), FlowConfig { responses: true, ..flows }, buffer, StdRng::seed_from_u64(3))
}

fn client(p: &mut Pipeline, seq: u32, flags: u8, data: &[u8], out: &mut Vec<Outbound>) {
    p.on_segment(Segment::to_server(key(), seq, 1001, flags, Bytes::copy_from_slice(data)), Duration::ZERO, out);
}

fn server(p: &mut Pipeline, flags: u8, ack: u32, out: &mut Vec<Outbound>) {
    p.on_segment(Segment::to_client(key(), 1000, ack, flags, 0), Duration::ZERO, out);
}

/// Compared requests (one streamed, one with many headers, one after blank lines) record the
/// target of their own request line; requests sent elsewhere record nothing.
#[test]
fn compared_copies_record_their_own_target() {
    let mut p = compared(Pipeline::budgeted_flows(true), 64);
    let mut out = Vec::new();
    client(&mut p, 1, TCP_SYN, b"", &mut out);
    server(&mut p, TCP_SYN | TCP_ACK, 2, &mut out);
    let mut many = String::from("GET /many?q=2 HTTP/1.1\r\n");
    for i in 0..15 {
        many.push_str(&format!("X-{i}: {i}\r\n"));
    }
    many.push_str("Host: h\r\n\r\n");
    let body = vec![b'b'; 300];
    let mut reqs = Vec::new();
    reqs.extend_from_slice(b"POST /stream HTTP/1.1\r\nHost: h\r\nContent-Length: 300\r\n\r\n");
    reqs.extend_from_slice(&body);
    reqs.extend_from_slice(b"GET /other/x HTTP/1.1\r\nHost: h\r\n\r\n");
    reqs.extend_from_slice(many.as_bytes());
    reqs.extend_from_slice(b"\r\nOPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
    // In small segments, each acknowledged.
    let mut seq = 2u32;
    for c in reqs.chunks(37) {
        client(&mut p, seq, TCP_ACK, c, &mut out);
        seq += c.len() as u32;
        server(&mut p, TCP_ACK, seq, &mut out);
    }
    let expects: Vec<(u64, String)> = p
        .take_compared()
        .into_iter()
        .filter_map(|e| match e {
            CompareEvent::Expect { id, expected } => Some((id, expected.target)),
            _ => None,
        })
        .collect();
    assert_eq!(expects, [(0, "/stream".into()), (1, "/many?q=2".into()), (2, "*".into())]);
    let wholes: Vec<(String, &str)> =
        out.iter().filter_map(|o| o.whole().map(|r| (o.endpoint.to_string(), r.target()))).collect();
    assert_eq!(
        wholes,
        [
            ("other".into(), "/other/x"),
            ("httpbin/v2".into(), "/many?q=2"),
            ("httpbin/v1b".into(), "/many?q=2"),
            ("httpbin/v2".into(), "*"),
            ("httpbin/v1b".into(), "*"),
        ]
    );
}

/// The budgeted flow table before any `set_buffer_limit` and with the largest windows: no
/// overflow, and nothing delivered that the server did not acknowledge.
#[test]
fn budgeted_table_alone_and_huge_windows() {
    use crate::flow::FlowTable;
    let mut t = FlowTable::new(Pipeline::budgeted_flows(false));
    let mut ev = Vec::new();
    let k = key();
    // SYN and SYN-ACK with scale 14 (capped) and the largest window.
    t.on_segment(
        Segment::to_server(k, 0, 0, TCP_SYN, Bytes::new()).with_window(65535, &[3, 3, 14]),
        Duration::ZERO,
        &mut ev,
    );
    t.on_segment(
        Segment::to_client(k, 7, 1, TCP_SYN | TCP_ACK, 0).with_window(65535, &[3, 3, 200]),
        Duration::ZERO,
        &mut ev,
    );
    t.on_segment(Segment::to_client(k, 8, 1, TCP_ACK, 0).with_window(65535, &[]), Duration::ZERO, &mut ev);
    let chunk = Bytes::from(vec![b'x'; 60_000]);
    for i in 0..40u32 {
        t.on_segment(Segment::to_server(k, 1 + i * 60_000, 8, TCP_ACK, chunk.clone()), Duration::ZERO, &mut ev);
    }
    assert!(ev.iter().all(|(_, e)| !matches!(e, StreamEvent::Data(_))), "{ev:?}");
    assert_eq!(t.buffered_bytes(), 2_400_000);
    // Acknowledged: every byte goes on, exactly once.
    t.on_segment(Segment::to_client(k, 8, 1 + 2_400_000, TCP_ACK, 0), Duration::from_millis(1), &mut ev);
    let delivered: usize = ev.iter().map(|(_, e)| if let StreamEvent::Data(d) = e { d.len() } else { 0 }).sum();
    assert_eq!((delivered, t.buffered_bytes()), (2_400_000, 0));
    t.on_tick(Duration::from_secs(3600), &mut ev);
}

/// A pipeline on a budgeted table with the default budget and one far beyond usize::MAX / 2.
#[test]
fn budgeted_pipeline_with_huge_memory_limit() {
    for limit in [usize::MAX, usize::MAX / 2, 1 << 40] {
        let router = Router::new(&Config::parse(CONFIG, "t").unwrap()).unwrap();
        let mut p =
            Pipeline::with_rng(Arc::new(router), Pipeline::budgeted_flows(false), 1 << 20, StdRng::seed_from_u64(3))
                .with_memory(Arc::new(Memory::new(limit)));
        let mut out = Vec::new();
        client(&mut p, 1, TCP_SYN, b"", &mut out);
        server(&mut p, TCP_SYN | TCP_ACK, 2, &mut out);
        client(&mut p, 100, TCP_ACK, b"later", &mut out);
        client(&mut p, 2, TCP_ACK, b"GET /a HTTP/1.1\r\n\r\n", &mut out);
        server(&mut p, TCP_ACK, 2 + 19, &mut out);
        p.on_tick(Duration::from_secs(10), &mut out);
        p.finish(&mut out);
        assert_eq!(out.iter().filter_map(|o| o.whole()).map(|r| r.target()).next(), Some("/a"));
    }
}
