//! `given_up_acked_bytes`: in strict mode, the client bytes seen on a flow after it was given up
//! that the server then acknowledged (from an adversarial review).

use super::*;

fn strict() -> FlowTable {
    FlowTable::new(FlowConfig::default())
}

fn data(s: &[u8]) -> StreamEvent {
    StreamEvent::Data(Bytes::copy_from_slice(s))
}

const OPEN: StreamEvent = StreamEvent::Open { midstream: false };

/// A handshake with ISN `isn`, "abc" delivered (acknowledged), then the flow given up by its
/// reader with nothing held.
fn given_up_after_abc(t: &mut FlowTable, isn: u32) {
    let s = isn.wrapping_add(1);
    let ev = run(t, vec![seg(isn, TCP_SYN, b""), syn_ack(s), seg(s, TCP_ACK, b"abc"), ack(s.wrapping_add(3))]);
    assert_eq!(ev, vec![OPEN, data(b"abc")]);
    t.give_up(key());
    assert_eq!((t.stats.flows_given_up_gap, t.stats.unacked_bytes, t.stats.given_up_acked_bytes), (1, 0, 0));
}

#[test]
fn only_acknowledgements_beyond_the_give_up_are_counted_each_byte_once() {
    let mut t = strict();
    given_up_after_abc(&mut t, 100);
    // Old, duplicate and reordered ACKs count nothing: "abc" was delivered.
    run(&mut t, vec![ack(101), ack(104), ack(104)]);
    assert_eq!(t.stats.given_up_acked_bytes, 0);
    run(&mut t, vec![seg(104, TCP_ACK, b"defg"), ack(106), ack(105), seg(108, TCP_ACK, b"hi"), ack(110), ack(108)]);
    assert_eq!(t.stats.given_up_acked_bytes, 6);
    assert_eq!((t.stats.gaps, t.stats.gap_bytes, t.stats.unacked_bytes), (0, 0, 0));
    // Its FIN closes it: the FIN's own acknowledgement finds no flow.
    let ev = run(&mut t, vec![seg(110, TCP_ACK | TCP_FIN, b""), ack(111)]);
    assert_eq!(ev, vec![StreamEvent::Close(CloseReason::Fin)]);
    assert_eq!(t.stats.given_up_acked_bytes, 6);
}

#[test]
fn a_long_given_up_upload_is_counted_exactly_across_sequence_wraps() {
    // 5 GiB in 32 KiB segments, each acknowledged (the client stays within the server's window),
    // from an ISN just before the wrap: the sequence numbers wrap more than once.
    let mut t = strict();
    let isn = u32::MAX - 2;
    given_up_after_abc(&mut t, isn);
    let mut at = isn.wrapping_add(4);
    let chunk = Bytes::from(vec![b'x'; 1 << 15]);
    let mut out = Vec::new();
    for _ in 0..(5 << 15) {
        t.on_segment(Segment::to_server(key(), at, 0, TCP_ACK, chunk.clone()), Duration::ZERO, &mut out);
        at = at.wrapping_add(1 << 15);
        t.on_segment(ack(at), Duration::ZERO, &mut out);
    }
    assert!(out.is_empty());
    assert_eq!(t.stats.given_up_acked_bytes, 5 << 30);
}

#[test]
fn a_flow_picked_up_mid_stream_counts_nothing_unless_its_late_syn_and_syn_ack_come() {
    // Never confirmed (no SYN): its ACKs are not taken at all.
    let mut t = strict();
    run(&mut t, vec![seg(5000, TCP_ACK, b"body"), ack(5004), seg(5004, TCP_ACK, b"more"), ack(5008)]);
    assert_eq!((t.stats.flows_given_up_midstream, t.stats.given_up_acked_bytes), (1, 0));
    // Its first bytes before its SYN (capture order), then the SYN-ACK: the flow is confirmed
    // while given up, and what the server acknowledges of the bytes seen is counted.
    let mut t = strict();
    let ev = run(&mut t, vec![seg(101, TCP_ACK, b"abc"), seg(100, TCP_SYN, b""), syn_ack(101), ack(104)]);
    assert_eq!(ev, vec![StreamEvent::Open { midstream: true }]);
    let s = &t.stats;
    assert_eq!((s.flows_given_up_midstream, s.flows_given_up_gap, s.given_up_acked_bytes), (1, 0, 3));
}

#[test]
fn a_four_tuple_reused_after_its_syn_counts_nothing_of_the_new_connection() {
    let mut t = strict();
    given_up_after_abc(&mut t, 100);
    run(&mut t, vec![seg(104, TCP_ACK, b"de"), ack(106)]);
    assert_eq!(t.stats.given_up_acked_bytes, 2);
    let ev = run(&mut t, vec![seg(9000, TCP_SYN, b""), syn_ack(9001), seg(9001, TCP_ACK, b"GET"), ack(9004)]);
    assert_eq!(ev, vec![StreamEvent::Close(CloseReason::Reused), OPEN, data(b"GET")]);
    assert_eq!((t.stats.reused, t.stats.given_up_acked_bytes), (1, 2));
}

#[test]
fn parked_and_unparked_flows_count_nothing_until_given_up() {
    let mut t = strict();
    let mut out = Vec::new();
    let secs = Duration::from_secs;
    t.on_segment(seg(100, TCP_SYN, b""), secs(0), &mut out);
    t.on_segment(syn_ack(101), secs(0), &mut out);
    for s in 1..=20 {
        t.on_tick(secs(s), &mut out);
    }
    assert_eq!((t.len(), t.parked_len()), (0, 1));
    // An ACK while parked finds no flow; the first bytes unpark it (its acknowledgement is
    // restored without being counted).
    t.on_segment(ack(101), secs(21), &mut out);
    t.on_segment(seg(101, TCP_ACK, b"abc"), secs(22), &mut out);
    t.on_segment(ack(104), secs(22), &mut out);
    assert_eq!((t.stats.unparked, t.stats.given_up_acked_bytes), (1, 0));
    t.give_up(key());
    t.on_segment(seg(104, TCP_ACK, b"de"), secs(23), &mut out);
    t.on_segment(ack(106), secs(23), &mut out);
    assert_eq!(t.stats.given_up_acked_bytes, 2);
}

#[test]
fn bytes_held_unacknowledged_at_the_give_up_are_counted_once() {
    // "def" was held, not acknowledged, when the reader gave the flow up: `unacked_bytes`
    // counts it then; the server's later acknowledgement of it is not counted again.
    let mut t = strict();
    let ev = run(&mut t, vec![seg(100, TCP_SYN, b""), syn_ack(101), seg(101, TCP_ACK, b"abcdef"), ack(104)]);
    assert_eq!(ev, vec![OPEN, data(b"abc")]);
    t.give_up(key());
    assert_eq!(t.stats.unacked_bytes, 3);
    run(&mut t, vec![ack(107)]);
    assert_eq!((t.stats.unacked_bytes, t.stats.given_up_acked_bytes, t.stats.gap_bytes), (3, 0, 0));
}

/// A new connection on the 4-tuple of a given-up flow whose SYN the capture lost (a ring loss:
/// what gives flows up in the first place): its SYN-ACK answers no SYN of this flow, so it
/// acknowledges nothing of it (taken from the old ISN, it would count up to 2^31 - 1).
#[test]
fn a_syn_ack_of_another_connection_is_no_acknowledgement_of_a_given_up_flow() {
    let mut t = strict();
    given_up_after_abc(&mut t, 100);
    run(&mut t, vec![syn_ack(1_000_000_001)]);
    assert_eq!(t.stats.given_up_acked_bytes, 0);
}

/// The same with the new connection's SYN-ACK captured before its SYN, and its first bytes
/// (outside the old connection's window: not taken as seen).
#[test]
fn an_early_syn_ack_of_a_reused_four_tuple_is_no_acknowledgement_of_the_given_up_flow() {
    let mut t = strict();
    given_up_after_abc(&mut t, 100);
    let isn = 1_000_000_000u32;
    let ev = run(&mut t, vec![syn_ack(isn + 1), seg(isn, TCP_SYN, b""), seg(isn + 1, TCP_ACK, b"GET"), ack(isn + 4)]);
    assert_eq!(t.stats.given_up_acked_bytes, 0, "{ev:?}");
}

/// A forged server→client ACK far ahead of what the client sent counts nothing, and does not
/// hide the real acknowledgements that follow.
#[test]
fn acknowledgements_beyond_what_the_client_sent_are_not_counted() {
    let mut t = strict();
    given_up_after_abc(&mut t, 100);
    let far = 104u32.wrapping_add(i32::MAX as u32);
    run(&mut t, vec![ack(far), ack(far.wrapping_add(i32::MAX as u32))]);
    assert_eq!(t.stats.given_up_acked_bytes, 0, "the client sent nothing after the give-up");
    run(&mut t, vec![seg(104, TCP_ACK, b"de"), ack(106)]);
    assert_eq!(t.stats.given_up_acked_bytes, 2);
}

/// A flow given up at its buffer bound ends with one gap over everything it held, acknowledged
/// or not (`gap_bytes`): their later acknowledgement is not counted again.
#[test]
fn bytes_in_the_last_gap_of_a_flow_given_up_at_its_bound_are_not_counted_again() {
    let mut t = FlowTable::new(FlowConfig { max_flow_buffer: 10, ..Default::default() });
    let ev = run(
        &mut t,
        vec![seg(100, TCP_SYN, b""), syn_ack(101), seg(101, TCP_ACK, b"0123456789"), seg(111, TCP_ACK, b"x")],
    );
    assert_eq!(ev, vec![OPEN, StreamEvent::Gap(11)]);
    assert_eq!((t.stats.gap_bytes, t.stats.flows_given_up_gap), (11, 1));
    run(&mut t, vec![ack(112)]);
    assert_eq!(t.stats.given_up_acked_bytes, 0);
}

/// The same through a wall (two different copies): once the server acknowledges into it, the
/// whole wall is one gap beyond the acknowledgement; the reader then gives the flow up, and the
/// rest of the wall, acknowledged later, is not counted again.
#[test]
fn bytes_of_a_wall_declared_a_gap_are_not_counted_again() {
    let mut t = strict();
    let ev = run(
        &mut t,
        vec![
            seg(100, TCP_SYN, b""),
            syn_ack(101),
            seg(101, TCP_ACK, b"GET /a HTTP/1.1\r\n\r\n"),
            seg(101, TCP_ACK, b"GET /b HTTP/1.1\r\n\r\n"),
            ack(102),
        ],
    );
    assert_eq!(ev, vec![OPEN, StreamEvent::Gap(19)]);
    t.give_up(key());
    run(&mut t, vec![ack(120)]);
    assert_eq!((t.stats.gap_bytes, t.stats.given_up_acked_bytes), (19, 0));
}
