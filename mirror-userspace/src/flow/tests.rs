//! The flow table without `require_ack` (a capture of one direction: today's framing), its timers,
//! and the property tests of both modes; `tests/strict.rs` has the rules of the strict mode.

use super::*;
use mirror_common::{TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};
use proptest::prelude::*;

mod evict;
mod given_up;
mod mute;
mod reverse;
mod strict;

fn key() -> FlowKey {
    FlowKey { client: "10.0.0.1:40000".parse().unwrap(), server: "10.0.0.2:80".parse().unwrap() }
}

/// A client→server segment.
fn seg(seq: u32, flags: u8, data: &[u8]) -> Segment {
    Segment::to_server(key(), seq, 0, flags, Bytes::copy_from_slice(data))
}

/// A server→client segment acknowledging every client byte before sequence number `ack`.
fn ack(ack: u32) -> Segment {
    Segment::to_client(key(), 7, ack, TCP_ACK, 0)
}

/// The server's SYN-ACK, acknowledging the client's SYN (sequence number `ack` - 1).
fn syn_ack(ack: u32) -> Segment {
    Segment::to_client(key(), 7, ack, TCP_SYN | TCP_ACK, 0)
}

/// A table without `require_ack`.
fn lax(cfg: FlowConfig) -> FlowTable {
    FlowTable::new(FlowConfig { require_ack: false, ..cfg })
}

/// Runs segments through a table and returns the stream as events with data merged.
fn run(table: &mut FlowTable, segs: Vec<Segment>) -> Vec<StreamEvent> {
    let mut out = Vec::new();
    for (i, s) in segs.into_iter().enumerate() {
        table.on_segment(s, Duration::from_millis(i as u64), &mut out);
    }
    merge(out)
}

fn merge(out: Vec<(FlowKey, StreamEvent)>) -> Vec<StreamEvent> {
    let mut merged: Vec<StreamEvent> = Vec::new();
    for (_, e) in out {
        match (merged.last_mut(), e) {
            (Some(StreamEvent::Data(prev)), StreamEvent::Data(d)) => {
                let mut v = prev.to_vec();
                v.extend_from_slice(&d);
                *prev = Bytes::from(v);
            }
            (_, e) => merged.push(e),
        }
    }
    merged
}

#[test]
fn in_order_with_handshake_and_fin() {
    let mut t = lax(FlowConfig::default());
    let ev = run(
        &mut t,
        vec![
            seg(100, TCP_SYN, b""),
            seg(101, TCP_ACK, b""),
            seg(101, TCP_ACK | TCP_PSH, b"hello "),
            seg(107, TCP_ACK | TCP_PSH | TCP_FIN, b"world"),
        ],
    );
    assert_eq!(
        ev,
        vec![
            StreamEvent::Open { midstream: false },
            StreamEvent::Data(Bytes::from_static(b"hello world")),
            StreamEvent::Close(CloseReason::Fin),
        ]
    );
    assert!(t.is_empty());
}

#[test]
fn out_of_order_and_retransmission() {
    let mut t = lax(FlowConfig::default());
    let ev = run(
        &mut t,
        vec![
            seg(100, TCP_SYN, b""),
            seg(104, TCP_ACK, b"def"),
            seg(101, TCP_ACK, b"abc"),
            seg(101, TCP_ACK, b"abc"),
            seg(105, TCP_ACK, b"eXgh"), // overlapping re-cut: the first copy of "ef" wins
        ],
    );
    assert_eq!(ev, vec![StreamEvent::Open { midstream: false }, StreamEvent::Data(Bytes::from_static(b"abcdefgh")),]);
    assert_eq!(t.stats.out_of_order_segments, 1);
    assert_eq!(t.stats.retransmitted_segments, 1);
}

#[test]
fn sequence_wrap_is_seamless() {
    let mut t = lax(FlowConfig::default());
    let isn = u32::MAX - 3;
    let ev = run(
        &mut t,
        vec![
            seg(isn, TCP_SYN, b""),
            seg(isn.wrapping_add(1), TCP_ACK, b"abc"),
            seg(isn.wrapping_add(4), TCP_ACK, b"def"), // seq 0 after the wrap
            seg(isn.wrapping_add(7), TCP_ACK | TCP_FIN, b"g"),
        ],
    );
    assert_eq!(ev[1], StreamEvent::Data(Bytes::from_static(b"abcdefg")));
    assert_eq!(ev[2], StreamEvent::Close(CloseReason::Fin));
}

#[test]
fn midstream_pickup_and_late_syn() {
    let mut t = lax(FlowConfig::default());
    let ev = run(&mut t, vec![seg(5000, TCP_ACK, b"xyz"), seg(4990, TCP_SYN, b""), seg(5003, TCP_ACK, b"!")]);
    assert_eq!(ev, vec![StreamEvent::Open { midstream: true }, StreamEvent::Data(Bytes::from_static(b"xyz!"))]);
    assert_eq!(t.stats.reused, 0);
}

#[test]
fn port_reuse_with_new_isn_is_a_new_flow() {
    let mut t = lax(FlowConfig::default());
    let ev = run(
        &mut t,
        vec![
            seg(100, TCP_SYN, b""),
            seg(101, TCP_ACK, b"first"),
            seg(900_000, TCP_SYN, b""),
            seg(900_001, TCP_ACK, b"second"),
        ],
    );
    assert_eq!(
        ev,
        vec![
            StreamEvent::Open { midstream: false },
            StreamEvent::Data(Bytes::from_static(b"first")),
            StreamEvent::Close(CloseReason::Reused),
            StreamEvent::Open { midstream: false },
            StreamEvent::Data(Bytes::from_static(b"second")),
        ]
    );
}

#[test]
fn hole_becomes_gap_after_reorder_timeout() {
    let cfg = FlowConfig { reorder_timeout: Duration::from_millis(100), ..Default::default() };
    let mut t = lax(cfg);
    let mut out = Vec::new();
    t.on_segment(seg(100, TCP_SYN, b""), Duration::ZERO, &mut out);
    t.on_segment(seg(101, TCP_ACK, b"aaaa"), Duration::ZERO, &mut out);
    t.on_segment(seg(110, TCP_ACK, b"cccc"), Duration::from_millis(1), &mut out);
    t.on_tick(Duration::from_millis(50), &mut out);
    assert_eq!(merge(out.clone()).len(), 2, "no gap before the timeout");
    t.on_tick(Duration::from_millis(200), &mut out);
    let ev = merge(out);
    assert_eq!(&ev[2..], &[StreamEvent::Gap(5), StreamEvent::Data(Bytes::from_static(b"cccc"))]);
    assert_eq!(t.stats.gaps, 1);
    assert_eq!(t.buffered_bytes(), 0);
}

#[test]
fn per_flow_buffer_bound_forces_gap() {
    let cfg = FlowConfig { max_flow_buffer: 10, ..Default::default() };
    let mut t = lax(cfg);
    let ev = run(&mut t, vec![seg(100, TCP_SYN, b""), seg(200, TCP_ACK, b"0123456789"), seg(210, TCP_ACK, b"x")]);
    assert_eq!(ev[1], StreamEvent::Gap(99));
    assert_eq!(ev[2], StreamEvent::Data(Bytes::from_static(b"0123456789x")));
}

#[test]
fn flow_cap_evicts_least_recent_and_idle_timeout_closes_only_unclean_flows() {
    let cfg = FlowConfig { max_flows: 2, idle_timeout: Duration::from_secs(1), ..Default::default() };
    let mut t = lax(cfg);
    let mut out = Vec::new();
    for (i, port) in [1u16, 2, 3].into_iter().enumerate() {
        let mut s = seg(1, TCP_ACK, b"GET");
        s.key.client.set_port(port);
        t.on_segment(s, Duration::from_millis(i as u64), &mut out);
    }
    assert_eq!(t.len(), 2);
    assert_eq!(t.stats.evicted, 1);
    let evicted: Vec<_> = out.iter().filter(|(_, e)| *e == StreamEvent::Close(CloseReason::Evicted)).collect();
    assert_eq!(evicted[0].0.client.port(), 1);
    // Port 3 holds bytes behind a hole: the idle timeout closes it; port 2 is clean: a
    // kept-alive connection, left open.
    let mut s = seg(10, TCP_ACK, b"late");
    s.key.client.set_port(3);
    t.on_segment(s, Duration::from_millis(3), &mut out);
    t.on_tick(Duration::from_secs(5), &mut out);
    assert_eq!((t.len(), t.stats.closed_idle, t.stats.kept_alive), (1, 1, 1));
    assert_eq!(out.last().unwrap().0.client.port(), 3);
    assert_eq!(t.poll_timeout(), None, "a kept-alive flow waits without a timer");
}

#[test]
fn rst_closes_and_delivers_buffered_data_behind_a_gap() {
    let mut t = lax(FlowConfig::default());
    let ev = run(&mut t, vec![seg(100, TCP_SYN, b""), seg(105, TCP_ACK, b"late"), seg(0, TCP_RST, b"")]);
    // RST with a bogus seq still closes; the buffered bytes come out after a gap.
    assert_eq!(
        ev[1..],
        [StreamEvent::Gap(4), StreamEvent::Data(Bytes::from_static(b"late")), StreamEvent::Close(CloseReason::Rst)]
    );
}

#[test]
fn poll_timeout_is_the_idle_deadline_and_none_when_empty() {
    let cfg = FlowConfig { idle_timeout: Duration::from_secs(1), ..Default::default() };
    let mut t = lax(cfg);
    let ms = Duration::from_millis;
    assert_eq!(t.poll_timeout(), None);
    let mut out = Vec::new();
    t.on_segment(seg(100, TCP_SYN, b""), ms(10), &mut out);
    assert_eq!(t.poll_timeout(), Some(ms(1010)));
    out.clear();
    t.on_tick(ms(1009), &mut out);
    assert!(out.is_empty(), "nothing before the deadline");
    t.on_tick(ms(1010), &mut out);
    assert_eq!(merge(out), vec![StreamEvent::Close(CloseReason::Idle)]);
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn poll_timeout_follows_the_hole_timer() {
    let cfg = FlowConfig { reorder_timeout: Duration::from_millis(100), ..Default::default() };
    let idle = cfg.idle_timeout;
    let mut t = lax(cfg);
    let ms = Duration::from_millis;
    let mut out = Vec::new();
    t.on_segment(seg(100, TCP_SYN, b""), ms(0), &mut out);
    t.on_segment(seg(105, TCP_ACK, b"e"), ms(5), &mut out);
    assert_eq!(t.poll_timeout(), Some(ms(105)), "a hole opened at 5 ms");
    // A second out-of-order piece does not restart the timer.
    t.on_segment(seg(107, TCP_ACK, b"g"), ms(20), &mut out);
    assert_eq!(t.poll_timeout(), Some(ms(105)));
    // Filling every hole stops it: back to the idle deadline, once the early entry fired
    // (timers may fire early, never late; a later deadline keeps the earlier entry).
    t.on_segment(seg(101, TCP_ACK, b"abcd"), ms(30), &mut out);
    t.on_segment(seg(106, TCP_ACK, b"f"), ms(40), &mut out);
    assert!(t.poll_timeout().is_some_and(|at| at <= ms(40) + idle));
    t.on_tick(ms(105), &mut out);
    assert_eq!(t.poll_timeout(), Some(ms(40) + idle));
    assert_eq!(merge(out)[1], StreamEvent::Data(Bytes::from_static(b"abcdefg")));
}

#[test]
fn poll_timeout_after_skipping_one_of_several_holes_is_already_due() {
    let cfg = FlowConfig { reorder_timeout: Duration::from_millis(100), ..Default::default() };
    let mut t = lax(cfg);
    let ms = Duration::from_millis;
    let mut out = Vec::new();
    t.on_segment(seg(100, TCP_SYN, b""), ms(0), &mut out);
    t.on_segment(seg(103, TCP_ACK, b"c"), ms(0), &mut out);
    t.on_segment(seg(106, TCP_ACK, b"f"), ms(0), &mut out);
    out.clear();
    t.on_tick(ms(100), &mut out);
    assert_eq!(merge(std::mem::take(&mut out)), vec![StreamEvent::Gap(2), StreamEvent::Data(Bytes::from_static(b"c"))]);
    // The second hole has waited as long: the next tick is due at once and gives it up.
    assert_eq!(t.poll_timeout(), Some(ms(100)));
    t.on_tick(ms(100), &mut out);
    assert_eq!(merge(std::mem::take(&mut out)), vec![StreamEvent::Gap(2), StreamEvent::Data(Bytes::from_static(b"f"))]);
    assert_eq!(t.poll_timeout(), Some(ms(0) + FlowConfig::default().idle_timeout));
    assert_eq!(t.buffered_bytes(), 0);
}

#[test]
fn poll_timeout_may_be_early_for_a_busy_flow_and_a_tick_rearms_it() {
    let cfg = FlowConfig { idle_timeout: Duration::from_secs(1), ..Default::default() };
    let mut t = lax(cfg);
    let ms = Duration::from_millis;
    let mut out = Vec::new();
    t.on_segment(seg(100, TCP_SYN, b""), ms(0), &mut out);
    t.on_segment(seg(101, TCP_ACK, b"a"), ms(600), &mut out);
    assert_eq!(t.poll_timeout(), Some(ms(1000)));
    out.clear();
    t.on_tick(ms(1000), &mut out);
    assert!(out.is_empty(), "the flow was busy at 600 ms");
    assert_eq!(t.poll_timeout(), Some(ms(1600)));
}

#[test]
fn poll_timeout_forgets_closed_flows() {
    let cfg = FlowConfig { max_flows: 1, idle_timeout: Duration::from_secs(1), ..Default::default() };
    let mut t = lax(cfg);
    let ms = Duration::from_millis;
    let mut out = Vec::new();
    t.on_segment(seg(100, TCP_SYN, b""), ms(0), &mut out);
    t.on_segment(seg(101, TCP_ACK | TCP_FIN, b"a"), ms(1), &mut out);
    assert_eq!(t.poll_timeout(), None, "FIN");
    t.on_segment(seg(100, TCP_SYN, b""), ms(2), &mut out);
    t.on_segment(seg(101, TCP_RST, b""), ms(3), &mut out);
    assert_eq!(t.poll_timeout(), None, "RST");
    t.on_segment(seg(100, TCP_SYN, b""), ms(4), &mut out);
    let mut other = seg(1, TCP_ACK, b"x");
    other.key.client.set_port(1);
    t.on_segment(other, ms(5), &mut out);
    assert_eq!(t.stats.evicted, 1);
    assert_eq!(t.poll_timeout(), Some(ms(1005)), "evicted");
    t.close_all(&mut out);
    assert_eq!(t.poll_timeout(), None, "close_all");
}

/// The server's TCP as far as the tests need it: which client bytes it holds, and the next one it
/// expects (what it acknowledges).
#[derive(Default)]
struct ServerModel {
    /// Received ranges of stream offsets.
    got: Vec<(usize, usize)>,
    /// Every byte before it was received.
    rcv_nxt: usize,
}

impl ServerModel {
    fn receive(&mut self, start: usize, end: usize) {
        self.got.push((start, end));
        self.got.sort();
        for &(s, e) in &self.got {
            if s <= self.rcv_nxt {
                self.rcv_nxt = self.rcv_nxt.max(e);
            }
        }
    }
}

proptest! {
    /// A table ticked only when `poll_timeout` says so emits exactly what a table that looks at
    /// every flow every millisecond emits: the timers never miss a deadline, and no tick before
    /// `poll_timeout` ever has anything to do. Both modes, with server ACKs and RSTs among the
    /// client's segments.
    #[test]
    fn ticking_at_poll_timeout_equals_ticking_always(
        ops in proptest::collection::vec((0u8..24, 0u16..3, 0u32..64, 0usize..12, 0u64..40), 1..80),
        strict in any::<bool>(),
    ) {
        let cfg = FlowConfig {
            max_flows: 2,
            max_flow_buffer: 24,
            max_total_buffer: 40,
            idle_timeout: Duration::from_millis(150),
            opening_timeout: Duration::from_millis(90),
            reorder_timeout: Duration::from_millis(30),
            require_ack: strict,
            responses: false,
            mute_given_up: true,
        };
        let (mut always, mut polled) = (FlowTable::new(cfg.clone()), FlowTable::new(cfg));
        let (mut out_a, mut out_p) = (Vec::new(), Vec::new());
        let mut now = Duration::ZERO;
        for (kind, port, off, len, wait) in ops {
            // Mostly data; one in twenty-four a SYN, a client RST, a FIN, a data segment without
            // ACK, a server RST or a SYN-ACK; one in eight a server ACK.
            let payload: Vec<u8> = (0..len).map(|i| (off as usize + i) as u8).collect();
            let mut s = match kind {
                0 => seg(999, TCP_SYN, b""),
                1 => seg(1000 + off, TCP_RST, b""),
                2 => seg(1000 + off, TCP_ACK | TCP_FIN, &payload),
                3 => seg(1000 + off, TCP_PSH, &payload),
                4 => Segment::to_client(key(), 5, 1000 + off, TCP_RST | TCP_ACK, 0),
                5 => syn_ack(1000),
                6..=8 => ack(1000 + off),
                _ => seg(1000 + off, TCP_ACK, &payload),
            };
            s.key.client.set_port(port);
            // Time moves a millisecond at a time; both tables see every instant.
            for _ in 0..wait {
                now += Duration::from_millis(1);
                always.on_tick_scanning_all(now, &mut out_a);
                if polled.poll_timeout().is_some_and(|at| at <= now) {
                    polled.on_tick(now, &mut out_p);
                }
                prop_assert_eq!(&out_a, &out_p);
                // Clean kept-alive flows wait without a timer; an empty table has none.
                prop_assert!(!polled.is_empty() || polled.poll_timeout().is_none());
            }
            always.on_segment(s.clone(), now, &mut out_a);
            polled.on_segment(s, now, &mut out_p);
        }
        always.close_all(&mut out_a);
        polled.close_all(&mut out_p);
        prop_assert_eq!(&out_a, &out_p);
        prop_assert_eq!(&always.stats, &polled.stats);
        prop_assert_eq!(polled.poll_timeout(), None);
        prop_assert_eq!(polled.buffered_bytes(), 0);
        // Every flow muted was unmuted when it ended (all have), never before it was muted.
        let mut mutes = Vec::new();
        polled.take_mutes(&mut mutes);
        let mut muted = std::collections::BTreeSet::new();
        for m in mutes {
            match m {
                Mute::On { key, .. } => { muted.insert(key); }
                Mute::Off(key) => prop_assert!(muted.remove(&key), "unmuted before muted: {:?}", key),
            }
        }
        prop_assert!(muted.is_empty(), "left muted: {:?}", muted);
    }

    /// Any permutation, duplication and re-cut of a flow's segments yields the same bytes, in
    /// both modes, with the server's ACKs (what it holds in order at that point) interleaved at
    /// random points and a last one once it has everything.
    #[test]
    fn any_permutation_duplication_recut_yields_same_stream(
        data in proptest::collection::vec(any::<u8>(), 1..400),
        cuts in proptest::collection::vec(1usize..50, 1..30),
        extra in proptest::collection::vec((0usize..400, 1usize..60), 0..10),
        order in any::<u64>(),
        acks in any::<u64>(),
        isn in any::<u32>(),
        strict in any::<bool>(),
    ) {
        // Cut the stream into segments, add re-cut retransmissions of arbitrary ranges.
        let mut pieces = Vec::new();
        let mut at = 0;
        for c in cuts.iter().cycle() {
            if at >= data.len() { break; }
            let end = (at + c).min(data.len());
            pieces.push((at, end));
            at = end;
        }
        for (s, l) in extra {
            let s = s % data.len();
            pieces.push((s, (s + l).min(data.len())));
        }
        // Shuffle deterministically from `order`.
        let mut state = order | 1;
        for i in (1..pieces.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            pieces.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let seq_of = |off: usize| isn.wrapping_add(1).wrapping_add(off as u32);
        let mut segs = vec![seg(isn, TCP_SYN, b""), syn_ack(seq_of(0))];
        let mut server = ServerModel::default();
        for (i, (s, e)) in pieces.into_iter().enumerate() {
            segs.push(seg(seq_of(s), TCP_ACK, &data[s..e]));
            server.receive(s, e);
            if acks >> (i % 64) & 1 == 1 {
                segs.push(ack(seq_of(server.rcv_nxt)));
            }
        }
        prop_assert_eq!(server.rcv_nxt, data.len());
        segs.push(ack(seq_of(data.len())));
        let mut t = FlowTable::new(FlowConfig { require_ack: strict, ..FlowConfig::default() });
        let mut out = Vec::new();
        for s in segs { t.on_segment(s, Duration::ZERO, &mut out); }
        t.close_all(&mut out);
        let ev = merge(out);
        prop_assert_eq!(&ev[0], &StreamEvent::Open { midstream: false });
        prop_assert_eq!(&ev[1], &StreamEvent::Data(Bytes::from(data.clone())));
        prop_assert_eq!(&ev[2], &StreamEvent::Close(CloseReason::Shutdown));
        prop_assert_eq!(t.stats.gaps, 0);
        prop_assert_eq!(t.stats.conflicting_copies, 0);
        prop_assert_eq!(t.stats.unacked_bytes, 0);
    }
}

/// The packed `Hash` of a flow key agrees with its equality (equal keys, equal hashes, whatever
/// IPv6's flow info and scope id say) and tells apart keys that differ in one field only.
#[test]
fn flow_key_hash_agrees_with_equality() {
    use std::hash::BuildHasher;
    use std::net::{Ipv6Addr, SocketAddrV6};
    let h = |k: &FlowKey| foldhash::fast::FixedState::with_seed(7).hash_one(k);
    let k = key();
    assert_eq!(h(&k), h(&k.clone()));
    let v6 = |flowinfo, scope| FlowKey {
        client: SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 40000, flowinfo, scope)),
        server: "[::1]:8000".parse().unwrap(),
    };
    assert_eq!(v6(0, 0), v6(0, 0));
    assert_eq!(h(&v6(0, 0)), h(&v6(0, 0)));
    let mut variants = vec![k, v6(0, 0)];
    for port in [1u16, 2] {
        let mut c = k;
        c.client.set_port(k.client.port() + port);
        variants.push(c);
        let mut s = k;
        s.server.set_port(k.server.port() + port);
        variants.push(s);
    }
    let mut swapped = k;
    std::mem::swap(&mut swapped.client, &mut swapped.server);
    variants.push(swapped);
    let mut ip = k;
    ip.client.set_ip("10.9.9.9".parse().unwrap());
    variants.push(ip);
    let hashes: std::collections::HashSet<u64> = variants.iter().map(h).collect();
    assert_eq!(hashes.len(), variants.len(), "distinct keys, distinct hashes: {variants:?}");
}
/// A flow's own size is what a SYN flood costs per table entry (65,536 of them, with their keys,
/// in a table of twice as many buckets): the server's stream, which only compared ports have,
/// is boxed. 336 bytes before the window fields, 360 with them inline, 232 boxed.
#[test]
fn a_flow_entry_stays_small() {
    assert!(std::mem::size_of::<conn::Flow>() <= 240, "{} bytes", std::mem::size_of::<conn::Flow>());
}
