//! Comparing responses (issue 15) in the core: the server's stream reassembled, paired with
//! each flow's requests, compare ids on the copies, events out in order.
use super::*;
use crate::compare::Incomplete;

pub(super) const CONFIG: &str = "capture: {interfaces: [eth0], ports: [80]}
endpoints: {'httpbin/v2': ['127.0.0.1:1'], 'httpbin/v1b': ['127.0.0.1:2'], 'other': ['127.0.0.1:3']}
mirrorPolicies:
  httpbin/v2: {compare: {baseline: httpbin/v1b, maxBodyBytes: 1024}}
routes:
  - name: other
    match: [{uri: {prefix: /other}}]
    mirror: {host: other}
  - name: api
    mirrors:
      - destination: {host: httpbin, subset: v2}
      - destination: {host: httpbin, subset: v1b}
";

fn compared(responses: bool) -> Pipeline {
    let router = Router::new(&Config::parse(CONFIG, "t").unwrap()).unwrap();
    let cfg = FlowConfig { responses, ..FlowConfig::default() };
    Pipeline::with_rng(Arc::new(router), cfg, 1 << 20, StdRng::seed_from_u64(3))
}

/// A server segment at stream offset `off` (server ISN 1000) acknowledging `ack`.
fn server(p: &mut Pipeline, off: u32, flags: u8, ack: u32, data: &[u8], out: &mut Vec<Outbound>) {
    let mut s = Segment::to_client(key(), 1001u32.wrapping_add(off), ack, flags, data.len() as u32);
    s.payload = Bytes::copy_from_slice(data);
    p.on_segment(s, Duration::ZERO, out);
}

fn client(p: &mut Pipeline, seq: u32, flags: u8, data: &[u8], out: &mut Vec<Outbound>) {
    p.on_segment(Segment::to_server(key(), seq, 1001, flags, Bytes::copy_from_slice(data)), Duration::ZERO, out);
}

/// A side in brief: status and body, or why there is none.
type Brief = Result<(u16, Vec<u8>), Incomplete>;

fn status(side: &crate::compare::join::Side) -> Brief {
    side.as_ref().map(|r| (r.status, r.body.clone())).map_err(|e| *e)
}

#[test]
fn the_primary_responses_pair_with_compared_requests_in_order() {
    let mut p = compared(true);
    let mut out = Vec::new();
    client(&mut p, 1, TCP_SYN, b"", &mut out);
    server(&mut p, u32::MAX, TCP_SYN | TCP_ACK, 2, b"", &mut out);
    // Three pipelined requests: compared, not routed to a compared destination, compared.
    let reqs =
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /other HTTP/1.1\r\nHost: h\r\n\r\nHEAD /c HTTP/1.1\r\nHost: h\r\n\r\n";
    client(&mut p, 2, TCP_ACK, reqs, &mut out);
    server(&mut p, 0, TCP_ACK, 2 + reqs.len() as u32, b"", &mut out);
    // Each compared request: one copy for v2 and one for its baseline, with the same id.
    let ids: Vec<(String, Option<u64>)> = out.iter().map(|o| (o.endpoint.to_string(), o.compare)).collect();
    assert_eq!(
        ids,
        [
            ("httpbin/v2".into(), Some(0)),
            ("httpbin/v1b".into(), Some(0)),
            ("other".into(), None),
            ("httpbin/v2".into(), Some(1)),
            ("httpbin/v1b".into(), Some(1))
        ]
    );
    let expects: Vec<(u64, String, String)> = p
        .take_compared()
        .into_iter()
        .map(|e| match e {
            CompareEvent::Expect { id, expected } => (id, expected.target, expected.baseline.unwrap().to_string()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(expects, [(0, "/a".into(), "httpbin/v1b".into()), (1, "/c".into(), "httpbin/v1b".into())]);

    // The responses, out of order and cut anywhere: the second segment comes first.
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 404 NF\r\nContent-Length: 3\r\n\r\nnopHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n";
    let ack = 2 + reqs.len() as u32;
    server(&mut p, 30, TCP_ACK, ack, &resp[30..], &mut out);
    assert!(p.take_compared().is_empty(), "waits for the hole");
    server(&mut p, 0, TCP_ACK, ack, &resp[..30], &mut out);
    let prim: Vec<(u64, Brief)> = p
        .take_compared()
        .into_iter()
        .map(|e| match e {
            CompareEvent::Primary { id, side } => (id, status(&side)),
            other => panic!("{other:?}"),
        })
        .collect();
    // The HEAD's response has no body despite its Content-Length.
    assert_eq!(prim, [(0, Ok((200, b"hi".to_vec()))), (1, Ok((200, Vec::new())))]);
    // The server stream's bytes were charged while held out of order, and given back.
    assert_eq!(p.flows().buffered_bytes(), 0);
}

#[test]
fn a_flow_that_ends_reports_its_waiting_requests_and_nothing_is_paired_without_responses() {
    let mut p = compared(true);
    let mut out = Vec::new();
    // The SYN-ACK is seen before its SYN (another CPU's ring): the flow did not exist yet, so the
    // client's handshake ACK says where the server's stream starts.
    server(&mut p, u32::MAX, TCP_SYN | TCP_ACK, 2, b"", &mut out);
    client(&mut p, 1, TCP_SYN, b"", &mut out);
    client(&mut p, 2, TCP_ACK, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", &mut out);
    server(&mut p, 0, TCP_ACK, 2 + 28, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", &mut out);
    let _ = p.take_compared();
    // The body being read is charged to the budget, and given back when the flow ends.
    assert!(p.memory().held(Held::Compare) > 0);
    server(&mut p, 0, TCP_RST, 0, b"", &mut out);
    assert_eq!(p.memory().held(Held::Compare), 0);
    let ev = p.take_compared();
    assert!(
        matches!(&ev[..], [CompareEvent::Primary { id: 0, side: Ok(r) }] if r.cut == Some(Incomplete::Cut)),
        "{ev:?}"
    );

    // Without the server's payload (the classifier ships headers only): no pairing at all, and
    // the copies carry no compare id.
    let mut p = compared(false);
    let mut out = Vec::new();
    client(&mut p, 1, TCP_SYN, b"", &mut out);
    server(&mut p, u32::MAX, TCP_SYN | TCP_ACK, 2, b"", &mut out);
    client(&mut p, 2, TCP_ACK, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", &mut out);
    server(&mut p, 0, TCP_ACK, 30, b"", &mut out);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|o| o.compare.is_none()));
    assert!(p.take_compared().is_empty());
}

#[test]
fn the_memory_budget_sheds_a_held_response_and_the_flow_pairs_nothing_after() {
    let memory = Arc::new(crate::memory::Memory::new(1 << 20));
    let mut p = compared(true).with_memory(memory.clone());
    let mut out = Vec::new();
    client(&mut p, 1, TCP_SYN, b"", &mut out);
    server(&mut p, u32::MAX, TCP_SYN | TCP_ACK, 2, b"", &mut out);
    client(&mut p, 2, TCP_ACK, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", &mut out);
    let _ = p.take_compared();
    // Replay holds all but 256 bytes of the budget; the primary's response body then takes more.
    assert!(memory.try_charge(Held::Replay, (1 << 20) - memory.used() - 256));
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
    let mut resp = head.to_vec();
    resp.extend_from_slice(&[b'x'; 600]);
    server(&mut p, 0, TCP_ACK, 30, &resp, &mut out);
    let ev: Vec<_> = p.take_compared().into_iter().filter(|e| matches!(e, CompareEvent::Primary { .. })).collect();
    // What was read of it is reported, marked shed (the pair is incomplete).
    assert!(
        matches!(&ev[..], [CompareEvent::Primary { id: 0, side: Ok(r) }] if r.cut == Some(Incomplete::Shed)),
        "{ev:?}"
    );
    assert_eq!(memory.held(Held::Compare), 0);
    assert!(memory.used() <= memory.limit());
    assert_eq!(p.stats().shed_flows, 1);
    // The rest of that response and the next request's response are not paired: the next
    // compared request is reported shed at once, never paired with the wrong bytes.
    memory.release(Held::Replay, memory.held(Held::Replay));
    let rest = [b'x'; 400];
    server(&mut p, resp.len() as u32, TCP_ACK, 30, &rest, &mut out);
    client(&mut p, 30, TCP_ACK, b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n", &mut out);
    server(&mut p, (resp.len() + rest.len()) as u32, TCP_ACK, 58, b"", &mut out);
    let ev = p.take_compared();
    assert!(ev.iter().any(|e| matches!(e, CompareEvent::Primary { id: 1, side: Err(Incomplete::Shed) })), "{ev:?}");
    // The copies themselves still went to the mirrors: only their comparison was given up.
    assert_eq!(out.iter().filter(|o| o.endpoint.as_ref() == "httpbin/v2").count(), 2);
}
