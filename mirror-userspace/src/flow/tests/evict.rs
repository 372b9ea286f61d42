//! Issue 12: a full table under a SYN flood (eviction in O(1), and in an order a flood cannot turn
//! against established flows), and kept-alive connections outliving the idle timeout.

use std::collections::HashSet;

use super::*;

const SECOND: Duration = Duration::from_secs(1);

fn key_of(port: u16) -> FlowKey {
    let mut k = key();
    k.client.set_port(port);
    k
}

fn client(port: u16, seq: u32, flags: u8, data: &[u8]) -> Segment {
    Segment::to_server(key_of(port), seq, 1, flags, Bytes::copy_from_slice(data))
}

fn server(port: u16, ack: u32, flags: u8) -> Segment {
    Segment::to_client(key_of(port), 7, ack, flags, 0)
}

/// A connection that carried one request, acknowledged by the server (clean, established).
fn established(port: u16) -> Vec<Segment> {
    vec![
        client(port, 100, TCP_SYN, b""),
        server(port, 101, TCP_SYN | TCP_ACK),
        client(port, 101, TCP_ACK, b"GET /a HTTP/1.1\r\n\r\n"),
        server(port, 120, TCP_ACK),
    ]
}

/// Feeds `segs` at `now` and returns the events.
fn feed(t: &mut FlowTable, segs: Vec<Segment>, now: Duration) -> Vec<(FlowKey, StreamEvent)> {
    let mut out = Vec::new();
    for s in segs {
        t.on_segment(s, now, &mut out);
    }
    out
}

/// Ticks whenever `poll_timeout` says so, from `from` to `to` in steps of a second.
fn tick_until(t: &mut FlowTable, from: Duration, to: Duration) -> Vec<(FlowKey, StreamEvent)> {
    let mut out = Vec::new();
    let mut now = from;
    while now <= to {
        if t.poll_timeout().is_some_and(|at| at <= now) {
            t.on_tick(now, &mut out);
        }
        now += SECOND;
    }
    out
}

#[test]
fn a_quiet_keep_alive_connection_goes_on_after_ten_minutes() {
    let mut t = FlowTable::new(FlowConfig::default());
    let ev = feed(&mut t, established(1), Duration::ZERO);
    assert_eq!(ev.last().unwrap().1, StreamEvent::Data(Bytes::from_static(b"GET /a HTTP/1.1\r\n\r\n")));
    // Ten minutes without a segment: the idle timeout (120 s) passes five times over.
    let ev = tick_until(&mut t, SECOND, 600 * SECOND);
    assert_eq!(ev, vec![], "not closed");
    assert_eq!((t.len(), t.stats.closed_idle, t.stats.kept_alive), (1, 0, 1));
    assert_eq!(t.poll_timeout(), None, "no timer while quiet");
    // The next request, at exactly the next sequence number, is delivered.
    let ev =
        feed(&mut t, vec![client(1, 120, TCP_ACK, b"GET /b HTTP/1.1\r\n\r\n"), server(1, 139, TCP_ACK)], 601 * SECOND);
    assert_eq!(ev, vec![(key_of(1), StreamEvent::Data(Bytes::from_static(b"GET /b HTTP/1.1\r\n\r\n")))]);
    assert_eq!(t.poll_timeout(), Some(721 * SECOND), "armed again by its segment");
    // And its FIN still closes it.
    let ev = feed(&mut t, vec![client(1, 139, TCP_ACK | TCP_FIN, b""), server(1, 140, TCP_ACK)], 602 * SECOND);
    assert_eq!(ev, vec![(key_of(1), StreamEvent::Close(CloseReason::Fin))]);
}

#[test]
fn the_idle_timeout_still_closes_what_is_not_a_clean_established_connection() {
    let mut t = FlowTable::new(FlowConfig::default());
    let mut segs = vec![
        // 2: a SYN never answered.
        client(2, 100, TCP_SYN, b""),
        // 3: given up (picked up mid-stream).
        client(3, 5000, TCP_ACK, b"body"),
        server(3, 5004, TCP_ACK),
        // 4: bytes the server never acknowledged.
        client(4, 100, TCP_SYN, b""),
        server(4, 101, TCP_SYN | TCP_ACK),
        client(4, 101, TCP_ACK, b"GET /x HTTP/1.1\r\n\r\n"),
    ];
    // 5: a FIN waiting for its acknowledgement.
    segs.extend(established(5));
    segs.push(client(5, 120, TCP_ACK | TCP_FIN, b""));
    // 6: clean and established: stays.
    segs.extend(established(6));
    feed(&mut t, segs, Duration::ZERO);
    let ev = tick_until(&mut t, SECOND, 600 * SECOND);
    let closed: Vec<u16> =
        ev.iter().filter(|(_, e)| *e == StreamEvent::Close(CloseReason::Idle)).map(|(k, _)| k.client.port()).collect();
    assert_eq!(closed, [2, 3, 4, 5]);
    assert_eq!((t.len(), t.stats.kept_alive, t.stats.unacked_bytes), (1, 1, 19));
}

#[test]
fn a_full_table_evicts_given_up_then_opening_then_idle_then_busy_flows_least_recent_first() {
    let mut t = FlowTable::new(FlowConfig { max_flows: 8, ..Default::default() });
    let mut now = Duration::ZERO;
    let mut at = |t: &mut FlowTable, segs: Vec<Segment>| {
        now += SECOND;
        feed(t, segs, now)
    };
    // Busy (holding unacknowledged bytes): 10, 11. Idle (clean, established): 20, 21.
    // Opening (a handshake): 30, 31. Given up: 40, 41. Oldest first within each, except that 20
    // is refreshed by a later request after 21 came.
    for port in [10, 11] {
        let mut segs = established(port);
        segs.push(client(port, 120, TCP_ACK, b"POST /p HTTP/1.1\r\n"));
        at(&mut t, segs);
    }
    for port in [20, 21] {
        at(&mut t, established(port));
    }
    at(&mut t, vec![client(20, 120, TCP_ACK, b"GET /c HTTP/1.1\r\n\r\n"), server(20, 139, TCP_ACK)]);
    at(&mut t, vec![client(30, 100, TCP_SYN, b"")]);
    at(&mut t, vec![client(31, 100, TCP_SYN, b""), server(31, 101, TCP_SYN | TCP_ACK)]);
    at(&mut t, vec![client(40, 9, TCP_ACK, b"x")]);
    at(&mut t, vec![client(41, 9, TCP_ACK, b"x")]);
    assert_eq!(t.len(), 8);
    // Each new SYN evicts one; the new SYNs are themselves opening flows, more recent than 30, 31.
    let mut evicted = Vec::new();
    for port in 1000..1008 {
        let ev = at(&mut t, vec![client(port, 1, TCP_SYN, b"")]);
        evicted.extend(
            ev.iter().filter(|(_, e)| *e == StreamEvent::Close(CloseReason::Evicted)).map(|(k, _)| k.client.port()),
        );
    }
    assert_eq!(evicted, [40, 41, 30, 31, 1000, 1001, 1002, 1003]);
    // Without opening flows left, established flows go: idle before busy, least recent first.
    let mut t2 = FlowTable::new(FlowConfig { max_flows: 4, ..Default::default() });
    for port in [10, 20, 21, 11] {
        let mut segs = established(port);
        if port < 20 {
            segs.push(client(port, 120, TCP_ACK, b"POST /p HTTP/1.1\r\n"));
        }
        feed(&mut t2, segs, Duration::ZERO);
    }
    let mut order = Vec::new();
    for port in 2000..2004 {
        let mut segs = established(port);
        segs.push(client(port, 120, TCP_ACK, b"POST /p HTTP/1.1\r\n"));
        let ev = feed(&mut t2, segs, SECOND);
        order.extend(
            ev.iter().filter(|(_, e)| *e == StreamEvent::Close(CloseReason::Evicted)).map(|(k, _)| k.client.port()),
        );
    }
    assert_eq!(order, [20, 21, 10, 11]);
}

/// Distinct flood sources: 10.200.x.y, every port.
fn flood_key(i: u32) -> FlowKey {
    let client = std::net::SocketAddr::from((
        [10, 200 + (i >> 24) as u8, (i >> 16) as u8, (i >> 8) as u8],
        1024 + (i as u16 & 0xff),
    ));
    FlowKey { client, server: key().server }
}

/// `n` established connections from 10.1.x.y:40000.
fn genuine(n: usize) -> Vec<FlowKey> {
    (0..n as u32)
        .map(|i| FlowKey { client: ([10, 1, (i >> 8) as u8, i as u8], 40_000).into(), server: key().server })
        .collect()
}

/// Feeds every key in `keys` the segments of [`established`] at time 0.
fn establish(t: &mut FlowTable, keys: &[FlowKey]) {
    let mut out = Vec::new();
    for k in keys {
        for mut s in established(1) {
            s.key = *k;
            t.on_segment(s, Duration::ZERO, &mut out);
        }
    }
}

/// Feeds `n` SYNs from distinct sources, 20,000 a second from `from`, ticking when due; the
/// events.
fn flood(
    t: &mut FlowTable,
    n: u32,
    from: u32,
    mut also: impl FnMut(u32, &mut FlowTable, Duration, &mut Vec<(FlowKey, StreamEvent)>),
) -> Vec<(FlowKey, StreamEvent)> {
    let mut out = Vec::new();
    let mut now = SECOND;
    for i in from..from + n {
        now += Duration::from_micros(50);
        t.on_segment(Segment::to_server(flood_key(i), i, 0, TCP_SYN, Bytes::new()), now, &mut out);
        also(i, t, now, &mut out);
        if t.poll_timeout().is_some_and(|at| at <= now) {
            t.on_tick(now, &mut out);
        }
    }
    out
}

fn closed(out: &[(FlowKey, StreamEvent)]) -> HashSet<FlowKey> {
    out.iter().filter(|(_, e)| matches!(e, StreamEvent::Close(_))).map(|(k, _)| *k).collect()
}

#[test]
fn a_syn_flood_on_a_full_table_evicts_only_its_own_flows_in_constant_time() {
    // The daemon's bound, full: established connections in seven eighths of it, handshakes (an
    // earlier flood's) in the rest. Then 200,000 SYNs from distinct spoofed sources that never go
    // further. Each SYN evicts exactly one flow, found at the head of a list (before: a scan of
    // all 65,536 flows, 3-8 ms a SYN: this test would have taken 10-25 minutes).
    const FLOOD: u32 = 200_000;
    let max_flows = FlowConfig::default().max_flows;
    let mut t = FlowTable::new(FlowConfig::default());
    // (One short of seven eighths: the genuine connection opening during the flood joins them.)
    let genuine = genuine(max_flows * 7 / 8 - 1);
    establish(&mut t, &genuine);
    flood(&mut t, (max_flows - genuine.len()) as u32, FLOOD, |_, _, _, _| {});
    assert_eq!((t.len(), t.stats.evicted), (max_flows, 0));
    // A genuine connection opens in the middle of the flood: its request comes 1,000 SYNs later.
    let late = FlowKey { client: ([10, 2, 0, 1], 50_000).into(), server: key().server };
    let out = flood(&mut t, FLOOD, 0, |i, t, now, out| {
        let mut segs = established(1);
        let segs = match i {
            _ if i == FLOOD / 2 => segs.drain(..1).collect(),
            _ if i == FLOOD / 2 + 1000 => segs.split_off(1),
            _ => return,
        };
        for mut s in segs {
            s.key = late;
            t.on_segment(s, now, out);
        }
    });
    assert_eq!((t.len(), t.stats.evicted), (max_flows, u64::from(FLOOD) + 1));
    let closed = closed(&out);
    assert!(genuine.iter().all(|k| !closed.contains(k)), "an established flow was evicted by the flood");
    assert!(!closed.contains(&late));
    let delivered: Vec<&StreamEvent> =
        out.iter().filter(|(k, e)| *k == late && matches!(e, StreamEvent::Data(_))).map(|(_, e)| e).collect();
    assert_eq!(delivered, [&StreamEvent::Data(Bytes::from_static(b"GET /a HTTP/1.1\r\n\r\n"))]);
}

#[test]
fn a_flood_on_a_table_full_of_established_flows_evicts_at_most_the_reserve_of_them() {
    // Established flows fill the whole table: the flood takes the opening flows' reserve (an
    // eighth) from the ones quiet the longest, once, then only evicts its own.
    let mut t = FlowTable::new(FlowConfig { max_flows: 4096, ..Default::default() });
    let genuine = genuine(4096);
    establish(&mut t, &genuine);
    let out = flood(&mut t, 20_000, 0, |_, _, _, _| {});
    let closed = closed(&out);
    let lost: Vec<&FlowKey> = genuine.iter().filter(|k| closed.contains(k)).collect();
    assert_eq!(lost.len(), 512);
    assert_eq!(lost, genuine[..512].iter().collect::<Vec<_>>(), "the least recent first");
    assert_eq!(t.stats.evicted, 20_000);
}

#[test]
fn an_early_syn_ack_is_forgotten_oldest_first() {
    let mut t = FlowTable::new(FlowConfig::default());
    // A SYN-ACK before its SYN, then 1,023 more for flows never seen: it is still kept.
    let early = Segment::to_client(key_of(1), 7, 101, TCP_SYN | TCP_ACK, 0);
    feed(&mut t, vec![early], Duration::ZERO);
    let junk: Vec<Segment> = (0..1023)
        .map(|i| Segment { key: flood_key(i), ..Segment::to_client(key(), 7, 1, TCP_SYN | TCP_ACK, 0) })
        .collect();
    feed(&mut t, junk, Duration::ZERO);
    let ev = feed(
        &mut t,
        vec![client(1, 100, TCP_SYN, b""), client(1, 101, TCP_ACK, b"GET"), server(1, 104, TCP_ACK)],
        Duration::ZERO,
    );
    assert_eq!(ev.last().unwrap().1, StreamEvent::Data(Bytes::from_static(b"GET")), "confirmed by the early SYN-ACK");
    // One more than the bound pushes the oldest out.
    let early = Segment::to_client(key_of(2), 7, 101, TCP_SYN | TCP_ACK, 0);
    feed(&mut t, vec![early], Duration::ZERO);
    let junk: Vec<Segment> = (2000..3024)
        .map(|i| Segment { key: flood_key(i), ..Segment::to_client(key(), 7, 1, TCP_SYN | TCP_ACK, 0) })
        .collect();
    feed(&mut t, junk, Duration::ZERO);
    let ev = feed(
        &mut t,
        vec![client(2, 100, TCP_SYN, b""), client(2, 101, TCP_ACK, b"GET"), server(2, 104, TCP_ACK)],
        Duration::ZERO,
    );
    assert!(!ev.iter().any(|(_, e)| matches!(e, StreamEvent::Data(_))), "forgotten: not confirmed");
}

#[test]
fn a_silent_handshake_is_parked_and_its_first_bytes_take_it_up_again() {
    let mut t = FlowTable::new(FlowConfig::default());
    feed(&mut t, vec![client(1, 100, TCP_SYN, b""), server(1, 101, TCP_SYN | TCP_ACK)], Duration::ZERO);
    // The opening timeout (10 s): parked, no longer a flow.
    let ev = tick_until(&mut t, SECOND, 20 * SECOND);
    assert_eq!(ev, vec![(key_of(1), StreamEvent::Close(CloseReason::Idle))]);
    assert_eq!((t.len(), t.parked_len(), t.stats.parked), (0, 1, 1));
    // Five minutes on, its first request: delivered as from its start, not mid-stream.
    let ev =
        feed(&mut t, vec![client(1, 101, TCP_ACK, b"GET /a HTTP/1.1\r\n\r\n"), server(1, 120, TCP_ACK)], 300 * SECOND);
    assert_eq!(
        ev,
        vec![
            (key_of(1), StreamEvent::Open { midstream: false }),
            (key_of(1), StreamEvent::Data(Bytes::from_static(b"GET /a HTTP/1.1\r\n\r\n"))),
        ]
    );
    assert_eq!((t.len(), t.parked_len(), t.stats.unparked, t.stats.flows_midstream), (1, 0, 1, 0));
}

#[test]
fn a_syn_flood_leaves_no_flow_once_its_handshakes_are_parked_and_parking_is_bounded() {
    let mut t = FlowTable::new(FlowConfig { max_flows: 1000, ..FlowConfig::default() });
    let mut segs = Vec::new();
    for port in 1..=3000u16 {
        segs.push(client(port, 100, TCP_SYN, b""));
        segs.push(server(port, 101, TCP_SYN | TCP_ACK));
    }
    feed(&mut t, segs, Duration::ZERO);
    assert_eq!(t.len(), 1000, "the table's bound");
    tick_until(&mut t, SECOND, 20 * SECOND);
    assert_eq!((t.len(), t.parked_len()), (0, 1000));
    // A parked handshake the server then resets is forgotten: bytes after it are mid-stream.
    feed(&mut t, vec![server(3000, 101, TCP_RST)], 21 * SECOND);
    assert_eq!(t.parked_len(), 999);
    let ev = feed(&mut t, vec![client(3000, 101, TCP_ACK, b"GET /late HTTP/1.1\r\n\r\n")], 22 * SECOND);
    assert_eq!(ev, vec![(key_of(3000), StreamEvent::Open { midstream: true })]);
}
