//! The memory budget: what the core holds is charged, the largest holder is shed at the budget,
//! everything is given back when flows end.

use super::*;

fn flow(n: u16) -> FlowKey {
    FlowKey { client: format!("10.0.0.1:{}", 10_000 + n).parse().unwrap(), server: "10.0.0.2:80".parse().unwrap() }
}

/// Client bytes `data` at stream offset `off` (from 1, after a SYN at 0) on `key`, acknowledged.
fn send(p: &mut Pipeline, key: FlowKey, off: u32, data: &[u8], out: &mut Vec<Outbound>) {
    let now = Duration::from_millis(1);
    if off == 1 {
        p.on_segment(Segment::to_server(key, 0, 0, TCP_SYN, Bytes::new()), now, out);
        p.on_segment(Segment::to_client(key, 7, 1, TCP_SYN | TCP_ACK, 0), now, out);
    }
    p.on_segment(Segment::to_server(key, off, 0, TCP_ACK, Bytes::copy_from_slice(data)), now, out);
    p.on_segment(Segment::to_client(key, 8, off + data.len() as u32, TCP_ACK, 0), now, out);
}

fn close(p: &mut Pipeline, key: FlowKey, out: &mut Vec<Outbound>) {
    p.on_segment(Segment::to_client(key, 8, 0, TCP_RST, 0), Duration::from_millis(2), out);
}

fn budgeted(limit: usize) -> Pipeline {
    pipeline(100.0).with_memory(Arc::new(Memory::new(limit)))
}

/// What the core says it holds must be what its flows hold, kind by kind.
fn check_books(p: &Pipeline) {
    let (heads, bodies) = p.http.values().map(|st| st.holding()).fold((0, 0), |a, h| (a.0 + h.0, a.1 + h.1));
    assert_eq!(p.memory.held(Held::Heads), heads);
    assert_eq!(p.memory.held(Held::Bodies), bodies);
    assert_eq!(p.memory.held(Held::Reassembly), p.flows.buffered_bytes());
}

#[test]
fn the_largest_body_is_shed_at_the_budget_and_the_rest_still_goes_through() {
    let mut p = budgeted(1 << 20);
    let mut out = Vec::new();
    let head = |n: usize| format!("POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n\r\n").into_bytes();
    // A holds 500 kB of a 900 kB body, B 300 kB of a 400 kB one: within 1 MiB together.
    let (a, b, c) = (flow(1), flow(2), flow(3));
    let ha = head(900_000);
    send(&mut p, a, 1, &ha, &mut out);
    send(&mut p, a, 1 + ha.len() as u32, &vec![b'a'; 500_000], &mut out);
    let hb = head(400_000);
    send(&mut p, b, 1, &hb, &mut out);
    send(&mut p, b, 1 + hb.len() as u32, &vec![b'b'; 300_000], &mut out);
    check_books(&p);
    assert_eq!(p.stats().shed_flows, 0, "{:?} held {}", p.stats(), p.memory.used());
    // A's next 300 kB go beyond the budget: A, the largest, is shed.
    send(&mut p, a, 1 + ha.len() as u32 + 500_000, &vec![b'a'; 300_000], &mut out);
    check_books(&p);
    assert!(p.memory.used() <= 1 << 20);
    assert_eq!(p.stats().shed_flows, 1);
    assert_eq!(p.stats().dropped.get(&DropReason::MemoryBudget), Some(&1));
    // B completes; A's further bytes are not framed; a small request on C goes through.
    send(&mut p, b, 1 + hb.len() as u32 + 300_000, &vec![b'b'; 100_000], &mut out);
    assert_eq!(out.len(), 1, "B is whole");
    assert_eq!(out[0].flow, b);
    assert_eq!(out[0].whole().unwrap().body.len(), 400_000);
    send(&mut p, a, 1 + ha.len() as u32 + 800_000, &vec![b'a'; 100_000], &mut out);
    send(&mut p, c, 1, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].flow, c);
    check_books(&p);
    for k in [a, b, c] {
        close(&mut p, k, &mut out);
    }
    assert_eq!(p.memory.used(), 0, "everything given back");
    assert!(p.by_held.is_empty());
}

#[test]
fn partial_heads_are_charged_and_shed_largest_first() {
    let mut p = budgeted(256 << 10);
    let mut out = Vec::new();
    // Ten flows each hold an unfinished head, growing: 6 kB, 12 kB, ... 60 kB (330 kB).
    for i in 1..=10u16 {
        let partial = format!("GET / HTTP/1.1\r\nX: {}", "y".repeat(6_000 * i as usize));
        send(&mut p, flow(i), 1, partial.as_bytes(), &mut out);
        check_books(&p);
        assert!(p.memory.used() <= 256 << 10, "within the budget after each segment");
    }
    // Flow 9's 54 kB did not fit: the largest holder then, flow 8, was shed to make room; flow
    // 10's 60 kB did not fit either: flow 9 was shed.
    let left: Vec<u16> = (1..=10).filter(|i| p.http[&flow(*i)].held.0 > 0).collect();
    assert_eq!(left, [1, 2, 3, 4, 5, 6, 7, 10]);
    assert_eq!(p.stats().shed_flows, 2);
    assert_eq!(p.stats().dropped.get(&DropReason::MemoryBudget).copied(), Some(p.stats().shed_flows));
    p.finish(&mut out);
    assert_eq!(p.memory.used(), 0);
    assert!(out.is_empty(), "no request was complete");
}

#[test]
fn a_content_length_is_not_reserved_before_the_bytes_arrive() {
    let mut p = budgeted(32 << 20);
    let mut out = Vec::new();
    // 1,000 flows promise 1 MB each and send nothing: what is held is far less than 1 GB.
    for i in 0..1000u16 {
        send(&mut p, flow(i), 1, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n", &mut out);
    }
    check_books(&p);
    assert_eq!(p.stats().shed_flows, 0);
    assert!(p.memory.held(Held::Bodies) <= 1000 * 16 * 1024, "{}", p.memory.held(Held::Bodies));
}

#[test]
fn out_of_order_bytes_take_at_most_half_the_budget() {
    let mut p = budgeted(1 << 20);
    let mut out = Vec::new();
    let head = b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 2000000\r\n\r\n";
    send(&mut p, flow(1), 1, head, &mut out);
    for i in 0..10 {
        send(&mut p, flow(1), 1 + head.len() as u32 + i * 60_000, &[b'x'; 60_000], &mut out);
    }
    let body = p.memory.held(Held::Bodies);
    assert!((600_000..=1_200_000).contains(&body), "grown as bytes came, at most twice them: {body}");
    // Flow 2 sends 600 kB beyond a hole: flow 1, the largest holder, makes room, and at most
    // half the budget is buffered.
    let key = flow(2);
    let now = Duration::from_millis(1);
    p.on_segment(Segment::to_server(key, 0, 0, TCP_SYN, Bytes::new()), now, &mut out);
    p.on_segment(Segment::to_client(key, 7, 1, TCP_SYN | TCP_ACK, 0), now, &mut out);
    for i in 0..10u32 {
        let seg = Segment::to_server(key, 1_001 + i * 60_000, 0, TCP_ACK, Bytes::from(vec![b'z'; 60_000]));
        p.on_segment(seg, now, &mut out);
    }
    check_books(&p);
    assert!(p.memory.used() <= 1 << 20, "{}", p.memory.used());
    assert!(p.memory.held(Held::Reassembly) <= 512 << 10);
    assert!(p.flows().stats.buffer_overflows > 0);
    assert_eq!(p.stats().shed_flows, 1, "{:?} {:?}", p.memory.snapshot(), p.flows().stats);
}

/// `memory.limitBytes` promises reassembly half the budget: with 512 MiB, 100 uploads holding
/// 900 kB each that the primary has not acknowledged yet (90 MB) are all held. The flow table's
/// own default bound (64 MiB) used to cap it whatever the budget.
#[test]
fn reassembly_may_take_half_of_a_large_budget() {
    let mut p = pipeline_with(100.0, Pipeline::budgeted_flows(false)).with_memory(Arc::new(Memory::new(512 << 20)));
    let mut out = Vec::new();
    // One buffer shared by every segment: the test holds 90 MB of stream without allocating it.
    let chunk = Bytes::from(vec![b'x'; 60_000]);
    // Flows `flows`, each sending 900 kB the primary does not acknowledge (yet).
    let mut unacknowledged = |p: &mut Pipeline, flows: std::ops::Range<u16>| {
        let now = Duration::from_millis(1);
        for n in flows {
            let key = flow(n);
            p.on_segment(Segment::to_server(key, 0, 0, TCP_SYN, Bytes::new()), now, &mut out);
            p.on_segment(Segment::to_client(key, 7, 1, TCP_SYN | TCP_ACK, 0), now, &mut out);
            for i in 0..15u32 {
                p.on_segment(Segment::to_server(key, 1 + i * 60_000, 0, TCP_ACK, chunk.clone()), now, &mut out);
            }
        }
    };
    unacknowledged(&mut p, 0..100);
    check_books(&p);
    assert_eq!(p.flows().buffered_bytes(), 90_000_000, "{:?}", p.flows().stats);
    assert_eq!(p.flows().stats.buffer_overflows, 0);
    assert_eq!(p.memory.held(Held::Reassembly), 90_000_000);
    // Half the budget (268 MB) stays the bound: 220 more such flows do not all fit.
    unacknowledged(&mut p, 100..320);
    check_books(&p);
    assert!(p.memory.held(Held::Reassembly) <= 256 << 20, "{}", p.memory.held(Held::Reassembly));
    assert!(p.flows().stats.buffer_overflows > 0);
    assert!(out.is_empty(), "nothing acknowledged, nothing sent");
}
