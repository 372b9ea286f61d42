//! Given-up flows asked to be muted in the kernel ([`FlowConfig::mute_given_up`]): when, from
//! where, and unmuted when they end.

use super::*;
use mirror_common::MUTE_SPAN;

fn muting() -> FlowTable {
    FlowTable::new(FlowConfig { mute_given_up: true, ..FlowConfig::default() })
}

fn mutes(t: &mut FlowTable) -> Vec<Mute> {
    let mut out = Vec::new();
    t.take_mutes(&mut out);
    out
}

/// A client segment as a muted connection ships it: headers only, `len` bytes on the wire.
fn muted_seg(seq: u32, len: u32) -> Segment {
    Segment { len, ..Segment::to_server(key(), seq, 0, TCP_ACK, Bytes::new()) }
}

const SLACK: u32 = mirror_common::MUTE_SLACK;

/// A handshake (ISN 100), "abc" delivered and acknowledged, then given up by its reader.
fn given_up(t: &mut FlowTable) {
    run(t, vec![seg(100, TCP_SYN, b""), syn_ack(101), seg(101, TCP_ACK, b"abc"), ack(104)]);
    assert_eq!(mutes(t), []);
    t.give_up(key());
}

/// A given-up flow whose bytes kept coming: it asked for its mute.
fn muted() -> FlowTable {
    let mut t = muting();
    given_up(&mut t);
    run(&mut t, vec![seg(104, TCP_ACK, b"d")]);
    assert_eq!(mutes(&mut t).len(), 1);
    t
}

#[test]
fn a_given_up_flow_is_muted_when_its_bytes_keep_coming_and_unmuted_when_it_ends() {
    let mut t = muting();
    given_up(&mut t);
    assert_eq!(mutes(&mut t), []);
    // Its next bytes: muted from where it stood (less the slack), once.
    run(&mut t, vec![seg(104, TCP_ACK, b"defg"), ack(108), seg(108, TCP_ACK, b"hi")]);
    assert_eq!(mutes(&mut t), [Mute::On { key: key(), from_seq: 104u32.wrapping_sub(SLACK) }]);
    // Then its segments come as headers only: the bytes the server acknowledges are still
    // counted, by their length on the wire, and nothing more is asked.
    run(&mut t, vec![ack(110), muted_seg(110, 1000), ack(1110), muted_seg(1110, 500), ack(1610)]);
    assert_eq!(t.stats.given_up_acked_bytes, 4 + 2 + 1500);
    assert_eq!(mutes(&mut t), []);
    let ev = run(&mut t, vec![seg(1610, TCP_ACK | TCP_FIN, b"")]);
    assert_eq!(ev, [StreamEvent::Close(CloseReason::Fin)]);
    assert_eq!(mutes(&mut t), [Mute::Off(key())]);
}

#[test]
fn nothing_is_asked_without_the_setting_or_of_a_flow_never_given_up() {
    let mut t = FlowTable::new(FlowConfig::default());
    given_up(&mut t);
    run(&mut t, vec![seg(104, TCP_ACK, b"defg"), seg(108, TCP_ACK | TCP_FIN, b"")]);
    assert_eq!(mutes(&mut t), []);
    let mut t = muting();
    run(&mut t, vec![seg(100, TCP_SYN, b""), syn_ack(101), seg(101, TCP_ACK | TCP_FIN, b"abc"), ack(105)]);
    assert_eq!(t.len(), 0);
    assert_eq!(mutes(&mut t), []);
}

#[test]
fn a_flow_picked_up_mid_stream_is_muted_from_its_second_segment_and_unmuted_by_its_fin() {
    let mut t = muting();
    // One segment (a flood's spoofed flow, say) costs no mute.
    run(&mut t, vec![seg(5000, TCP_ACK, b"body")]);
    assert_eq!(t.stats.flows_given_up_midstream, 1);
    assert_eq!(mutes(&mut t), []);
    // Nor one the server never acknowledged (a spoofed one).
    run(&mut t, vec![seg(5004, TCP_ACK, b"more")]);
    assert_eq!(mutes(&mut t), []);
    run(&mut t, vec![ack(5008), seg(5008, TCP_ACK, b"more")]);
    assert_eq!(mutes(&mut t), [Mute::On { key: key(), from_seq: 5008u32.wrapping_sub(SLACK) }]);
    run(&mut t, vec![muted_seg(5012, 100), seg(5112, TCP_FIN | TCP_ACK, b"")]);
    assert_eq!(mutes(&mut t), [Mute::Off(key())]);
}

#[test]
fn a_flow_given_up_at_its_buffer_bound_is_muted_too() {
    // Strict mode: bytes the server never acknowledges, beyond the flow's bound, end it.
    let mut t = FlowTable::new(FlowConfig { mute_given_up: true, max_flow_buffer: 8, ..FlowConfig::default() });
    run(&mut t, vec![seg(100, TCP_SYN, b""), syn_ack(101), seg(101, TCP_ACK, b"0123456789abcdef")]);
    assert_eq!(t.stats.flows_given_up_gap, 1);
    run(&mut t, vec![seg(117, TCP_ACK, b"more")]);
    assert!(matches!(mutes(&mut t)[..], [Mute::On { .. }]));
}

#[test]
fn a_long_given_up_upload_is_muted_again_once_past_its_span() {
    let mut t = muting();
    given_up(&mut t);
    run(&mut t, vec![seg(104, TCP_ACK, b"d"), ack(105)]);
    let first = 104u32.wrapping_sub(SLACK);
    assert_eq!(mutes(&mut t), [Mute::On { key: key(), from_seq: first }]);
    // Headers only, 32 KiB segments, each acknowledged, to the end of the span: nothing asked.
    let step = 1u32 << 15;
    let mut at = 105u32;
    let mut out = Vec::new();
    while at.wrapping_sub(first) < MUTE_SPAN {
        t.on_segment(muted_seg(at, step), Duration::ZERO, &mut out);
        at = at.wrapping_add(step);
        t.on_segment(ack(at), Duration::ZERO, &mut out);
    }
    assert!(out.is_empty());
    assert_eq!(mutes(&mut t), []);
    // Beyond it the kernel ships the payload again: muted anew, from where the server stands.
    run(&mut t, vec![seg(at, TCP_ACK, b"x"), seg(at.wrapping_add(1), TCP_ACK, b"y")]);
    assert_eq!(mutes(&mut t), [Mute::On { key: key(), from_seq: at.wrapping_sub(SLACK) }]);
}

#[test]
fn a_segment_far_ahead_without_acknowledgements_asks_nothing_more() {
    let mut t = muted();
    // Forged or not, far beyond what the server acknowledged, with its payload: no new mute (it
    // would start where the first one did), however many come.
    let far: Vec<Segment> = (0..100).map(|i| seg(105 + MUTE_SPAN + i, TCP_ACK, b"z")).collect();
    run(&mut t, far);
    assert_eq!(mutes(&mut t), []);
}

#[test]
fn a_new_connection_on_the_four_tuple_ends_the_mute_and_is_not_muted() {
    let mut t = muted();
    // Unmuted at its SYN (should the mute have gone in after the SYN went by), once.
    let ev = run(&mut t, vec![seg(9000, TCP_SYN, b"")]);
    assert_eq!(mutes(&mut t), [Mute::Off(key())]);
    let ev2 = run(&mut t, vec![syn_ack(9001), seg(9001, TCP_ACK, b"GET"), ack(9004)]);
    let get = StreamEvent::Data(Bytes::from_static(b"GET"));
    assert_eq!(
        [ev, ev2].concat(),
        [StreamEvent::Close(CloseReason::Reused), StreamEvent::Open { midstream: false }, get]
    );
    assert_eq!(mutes(&mut t), []);
}

/// A SYN of another ISN on a given-up flow (strict mode): the kernel took the mute out at it.
/// Until the server answers, the 4-tuple may be a new connection's, so the old flow's late (or
/// forged) bytes ask for nothing (a mute put in then would be armed on the new connection if its
/// SYN-ACK came two rounds later). Once the server acknowledges more of the old connection (it
/// answered the stray SYN with a challenge ACK), the old flow is muted again.
#[test]
fn a_stray_syn_unmutes_a_given_up_flow_which_asks_again_once_the_server_goes_on() {
    let mut t = muted();
    run(&mut t, vec![seg(7000, TCP_SYN, b"")]);
    assert_eq!(mutes(&mut t), [Mute::Off(key())]);
    run(&mut t, vec![seg(105, TCP_ACK, b"e")]);
    assert_eq!(mutes(&mut t), [], "a mute asked for a 4-tuple a new connection may hold");
    // The server acknowledges only what it had before: still nothing.
    run(&mut t, vec![ack(104), seg(105, TCP_ACK, b"e")]);
    assert_eq!(mutes(&mut t), []);
    run(&mut t, vec![ack(106), seg(106, TCP_ACK, b"f")]);
    assert!(matches!(mutes(&mut t)[..], [Mute::On { .. }]));
}

/// The SYN was a new connection's: its SYN-ACK makes a new flow, which is not muted.
#[test]
fn a_new_connection_after_a_given_up_one_is_not_muted() {
    let mut t = muted();
    run(&mut t, vec![seg(9000, TCP_SYN, b""), seg(105, TCP_ACK, b"e")]);
    assert_eq!(mutes(&mut t), [Mute::Off(key())]);
    run(&mut t, vec![syn_ack(9001), seg(9001, TCP_ACK, b"GET / HTTP/1.1\r\n\r\n"), ack(9019)]);
    assert_eq!(t.stats.reused, 1, "the SYN-ACK made a new flow of the 4-tuple");
    assert_eq!(mutes(&mut t), []);
}

#[test]
fn a_flow_picked_up_mid_stream_is_muted_again_past_its_span_though_never_acknowledged() {
    // Never confirmed, its acknowledgements are not taken: where it stands is its own segments'.
    let mut t = muting();
    run(&mut t, vec![seg(5000, TCP_ACK, b"body"), ack(5004), seg(5004, TCP_ACK, b"more")]);
    let first = 5004u32.wrapping_sub(SLACK);
    assert_eq!(mutes(&mut t), [Mute::On { key: key(), from_seq: first }]);
    let past = first.wrapping_add(MUTE_SPAN);
    run(&mut t, vec![muted_seg(5008, 1000), ack(6008), seg(past, TCP_ACK, b"x"), ack(past + 1)]);
    assert_eq!(mutes(&mut t), [Mute::On { key: key(), from_seq: past.wrapping_sub(SLACK) }]);
}

/// The wait for a SYN-ACK ends only at an acknowledgement of bytes the old client was seen
/// sending. Here the SYN-ACK's sample is lost and the server's next ACK is the new connection's
/// (ISN 10^9, less than 2^31 past the old acknowledgement): taken for the old connection going
/// on, the old given-up flow (which now gets the new connection's segments) would ask for a mute
/// that is armed on the new connection.
#[test]
fn an_ack_beyond_what_the_old_client_sent_does_not_end_the_wait() {
    let isn = 1_000_000_000u32;
    let mut t = muted();
    run(&mut t, vec![seg(isn, TCP_SYN, b"")]);
    assert_eq!(mutes(&mut t), [Mute::Off(key())]);
    // (The SYN-ACK, ack isn + 1, lost.) The new connection's request and the server's ACK of it.
    run(
        &mut t,
        vec![seg(isn + 1, TCP_ACK, b"GET / HTTP/1.1\r\n\r\n"), ack(isn + 19), seg(isn + 19, TCP_ACK, b"GET /2")],
    );
    assert_eq!(mutes(&mut t), [], "the wait ended at an ACK of bytes the old client never sent");
}
