//! The strict mode (`require_ack`, the default): Linux's view of the stream, not the wire's.

use super::*;

fn strict() -> FlowTable {
    FlowTable::new(FlowConfig::default())
}

fn data(s: &[u8]) -> StreamEvent {
    StreamEvent::Data(Bytes::copy_from_slice(s))
}

const OPEN: StreamEvent = StreamEvent::Open { midstream: false };

#[test]
fn bytes_are_delivered_once_acknowledged_and_the_fin_once_its_ack_came() {
    let mut t = strict();
    let ev = run(
        &mut t,
        vec![
            seg(100, TCP_SYN, b""),
            syn_ack(101),
            seg(101, TCP_ACK, b""),
            seg(101, TCP_ACK | TCP_PSH, b"hello "),
            seg(107, TCP_ACK | TCP_PSH | TCP_FIN, b"world"),
        ],
    );
    assert_eq!(ev, vec![OPEN], "nothing acknowledged yet");
    assert_eq!(t.buffered_bytes(), 11);
    // An ACK covering both segments releases both; the FIN closes once acknowledged too.
    let ev = run(&mut t, vec![ack(112)]);
    assert_eq!(ev, vec![data(b"hello world")]);
    assert_eq!(t.len(), 1, "the FIN is not acknowledged yet");
    let ev = run(&mut t, vec![ack(113)]);
    assert_eq!(ev, vec![StreamEvent::Close(CloseReason::Fin)]);
    assert_eq!((t.buffered_bytes(), t.stats.closed_fin, t.stats.segments_to_client), (0, 1, 3));
}

#[test]
fn an_ack_arriving_later_releases_up_to_it_and_no_further() {
    let mut t = strict();
    let mut ev =
        run(&mut t, vec![seg(100, TCP_SYN, b""), syn_ack(101), seg(101, TCP_ACK, b"abc"), seg(104, TCP_ACK, b"def")]);
    ev.extend(run(&mut t, vec![ack(102)]));
    ev.extend(run(&mut t, vec![ack(101), ack(105)])); // an older ACK (reordered) changes nothing
    assert_eq!(ev, vec![OPEN, data(b"a"), data(b"bcd")]);
    ev = run(&mut t, vec![ack(107)]);
    assert_eq!(ev, vec![data(b"ef")]);
}

#[test]
fn unacknowledged_bytes_are_never_released_and_are_a_counted_gap_at_close() {
    // A request with a spoofed source: the primary never answers it.
    let mut t = FlowTable::new(FlowConfig { idle_timeout: Duration::from_secs(1), ..Default::default() });
    let mut out = Vec::new();
    t.on_segment(seg(100, TCP_SYN, b""), Duration::ZERO, &mut out);
    t.on_segment(seg(101, TCP_ACK, b"GET /phantom HTTP/1.1\r\n\r\n"), Duration::ZERO, &mut out);
    t.on_tick(Duration::from_secs(2), &mut out);
    assert_eq!(merge(out), vec![OPEN, StreamEvent::Gap(25), StreamEvent::Close(CloseReason::Idle)]);
    assert_eq!((t.stats.unacked_bytes, t.stats.gaps, t.buffered_bytes()), (25, 1, 0));
}

#[test]
fn a_peer_that_never_answers_is_given_up_at_the_flow_buffer_bound() {
    let mut t = FlowTable::new(FlowConfig { max_flow_buffer: 10, ..Default::default() });
    let ev =
        run(&mut t, vec![seg(100, TCP_SYN, b""), seg(101, TCP_ACK, b"0123456789"), seg(111, TCP_ACK, b"x"), ack(112)]);
    assert_eq!(ev, vec![OPEN, StreamEvent::Gap(11)]);
    assert_eq!((t.stats.flows_given_up_gap, t.stats.unacked_bytes, t.buffered_bytes()), (1, 11, 0));
}

/// A window-scaled handshake (both SYNs carry the option; the server's shift is `shift`) and the
/// client's first bytes, `len` of them in 1,000-byte segments, none acknowledged yet.
fn scaled_upload(t: &mut FlowTable, shift: Option<u8>, window: u16, len: u32) -> Vec<StreamEvent> {
    let syn = Segment { wscale: Some(7), ..seg(100, TCP_SYN, b"") };
    let answer = Segment { window: 65_535, wscale: shift, ..syn_ack(101) };
    // The server's window after the handshake, scaled by its shift.
    let open = Segment { window, ..ack(101) };
    let mut segs = vec![syn, answer, open];
    segs.extend((0..len / 1000).map(|i| seg(101 + i * 1000, TCP_ACK, &[b'x'; 1000])));
    run(t, segs)
}

#[test]
fn bytes_in_flight_within_the_servers_window_are_held_beyond_the_flow_buffer_bound() {
    // A 4 MiB window (32,768 << 7), 3 MB in flight: what a large upload on a fast link has
    // unacknowledged at any time. Held, then released by the ACK.
    let mut t = FlowTable::new(FlowConfig { max_flow_buffer: 100_000, ..Default::default() });
    let ev = scaled_upload(&mut t, Some(7), 32_768, 3_000_000);
    assert_eq!(ev, vec![OPEN]);
    assert_eq!((t.buffered_bytes(), t.stats.flows_given_up_gap, t.stats.windows_scaled), (3_000_000, 0, 1));
    let ev = run(&mut t, vec![ack(3_000_101)]);
    assert_eq!(ev, vec![data(&[b'x'; 3_000_000])]);
    assert_eq!((t.buffered_bytes(), t.stats.gaps, t.stats.unacked_bytes), (0, 0, 0));
}

#[test]
fn bytes_beyond_the_servers_window_and_the_allowance_give_the_flow_up() {
    // The same window without the server's scale option (RFC 7323: unscaled, 32,768 bytes):
    // 100,000 + 32,768 may be held, and the 133rd kilobyte gives the flow up.
    let mut t = FlowTable::new(FlowConfig { max_flow_buffer: 100_000, ..Default::default() });
    let ev = scaled_upload(&mut t, None, 32_768, 133_000);
    assert_eq!(ev, vec![OPEN, StreamEvent::Gap(133_000)]);
    assert_eq!((t.stats.flows_given_up_gap, t.stats.unacked_bytes, t.stats.windows_scaled), (1, 133_000, 0));
    let mut t = FlowTable::new(FlowConfig { max_flow_buffer: 100_000, ..Default::default() });
    assert_eq!(scaled_upload(&mut t, None, 32_768, 132_000), vec![OPEN]);
}

#[test]
fn an_absurd_window_is_capped_at_a_quarter_of_the_global_budget() {
    // A 1 GiB window (65,535 << 14) with a 1 MB global budget: a flow holds up to 250,000 bytes.
    let cfg = FlowConfig { max_flow_buffer: 100_000, max_total_buffer: 1_000_000, ..Default::default() };
    let mut t = FlowTable::new(cfg.clone());
    assert_eq!(scaled_upload(&mut t, Some(14), 65_535, 250_000), vec![OPEN]);
    let mut t = FlowTable::new(cfg);
    assert_eq!(scaled_upload(&mut t, Some(14), 65_535, 251_000), vec![OPEN, StreamEvent::Gap(251_000)]);
}

#[test]
fn data_without_ack_is_ignored_as_linux_does() {
    let mut t = strict();
    let ev = run(
        &mut t,
        vec![
            seg(100, TCP_SYN, b""),
            syn_ack(101),
            seg(101, TCP_PSH, b"GET /forged HTTP/1.1\r\n\r\n"),
            seg(101, TCP_ACK | TCP_PSH, b"GET / HTTP/1.1\r\n\r\n"),
            ack(119),
        ],
    );
    assert_eq!(ev, vec![OPEN, data(b"GET / HTTP/1.1\r\n\r\n")]);
    assert_eq!((t.stats.segments_without_ack, t.stats.conflicting_copies), (1, 0));
    // Nor does such a segment open a flow.
    let mut t = strict();
    assert!(run(&mut t, vec![seg(5, TCP_PSH, b"GET")]).is_empty());
}

#[test]
fn two_different_copies_before_the_ack_are_a_gap_of_exactly_their_range() {
    // A copy with a bad checksum first (the primary's kernel drops it), then the good one.
    let mut t = strict();
    let ev = run(
        &mut t,
        vec![
            seg(100, TCP_SYN, b""),
            syn_ack(101),
            seg(101, TCP_ACK, b"GET /a HTTP/1.1\r\n\r\n"),
            seg(101, TCP_ACK, b"GET /b HTTP/1.1\r\n\r\n"),
            ack(120),
            seg(120, TCP_ACK, b"GET /next HTTP/1.1\r\n\r\n"),
            ack(143),
        ],
    );
    // The copies agree on "GET /" only... as a range they overlap whole: all of it is a gap. What
    // follows is delivered: whether it can be framed is the framer's call (here it cannot: the
    // gap took a head, so the pipeline gives the flow up; see pipeline's tests).
    assert_eq!(ev, vec![OPEN, StreamEvent::Gap(19), data(b"GET /next HTTP/1.1\r\n\r\n")]);
    assert_eq!((t.stats.conflicting_copies, t.stats.gaps, t.stats.flows_given_up_gap), (1, 1, 0));
    assert_eq!(t.buffered_bytes(), 0);
}

#[test]
fn identical_copies_and_copies_after_the_ack_are_retransmissions() {
    let mut t = strict();
    let ev = run(
        &mut t,
        vec![
            seg(100, TCP_SYN, b""),
            syn_ack(101),
            seg(101, TCP_ACK, b"abcd"),
            seg(101, TCP_ACK, b"abcd"),
            seg(103, TCP_ACK, b"cdef"),
            ack(107),
            // After the ACK the primary holds the bytes: a different copy now is ignored by it.
            seg(101, TCP_ACK, b"XXXXXX"),
            seg(107, TCP_ACK, b"g"),
            ack(108),
        ],
    );
    assert_eq!(ev, vec![OPEN, data(b"abcdefg")]);
    assert_eq!((t.stats.conflicting_copies, t.stats.gaps, t.stats.retransmitted_segments), (0, 0, 2));
}

#[test]
fn an_rst_out_of_window_is_ignored_and_one_at_the_expected_sequence_number_closes() {
    let mut t = strict();
    let ev = run(
        &mut t,
        vec![
            seg(100, TCP_SYN, b""),
            syn_ack(101),
            seg(101, TCP_ACK, b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n"),
            ack(140),
            seg(5000, TCP_RST, b""), // out of window: Linux ignores it
            seg(141, TCP_RST, b""),  // in window but not exact: a challenge ACK, ignored too
            seg(140, TCP_ACK, b"0123456789"),
            ack(150),
        ],
    );
    assert_eq!(
        ev,
        vec![OPEN, data(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789")],
        "the flow went on, nothing was picked up mid-stream"
    );
    assert_eq!((t.stats.rst_ignored, t.stats.flows_midstream), (2, 0));
    let ev = run(&mut t, vec![seg(150, TCP_RST, b"")]);
    assert_eq!(ev, vec![StreamEvent::Close(CloseReason::Rst)]);
    assert_eq!(t.stats.closed_rst, 1);
}

#[test]
fn an_rst_before_any_ack_must_be_at_the_byte_after_the_syn() {
    let mut t = strict();
    run(&mut t, vec![seg(100, TCP_SYN, b""), seg(300, TCP_RST, b"")]);
    assert_eq!((t.len(), t.stats.rst_ignored), (1, 1));
    assert_eq!(run(&mut t, vec![seg(101, TCP_RST, b"")]), vec![StreamEvent::Close(CloseReason::Rst)]);
}

#[test]
fn a_server_rst_closes_and_unacknowledged_bytes_are_a_gap() {
    let mut t = strict();
    let ev = run(
        &mut t,
        vec![
            seg(100, TCP_SYN, b""),
            syn_ack(101),
            seg(101, TCP_ACK, b"abc"),
            ack(102),
            Segment::to_client(key(), 7, 102, TCP_RST | TCP_ACK, 0),
        ],
    );
    assert_eq!(ev, vec![OPEN, data(b"a"), StreamEvent::Gap(2), StreamEvent::Close(CloseReason::Rst)]);
    assert_eq!(t.stats.unacked_bytes, 2);
}

#[test]
fn server_segments_never_open_a_flow() {
    let mut t = strict();
    assert!(run(&mut t, vec![ack(5), Segment::to_client(key(), 7, 5, TCP_SYN | TCP_ACK, 0)]).is_empty());
    assert!(t.is_empty());
    assert_eq!(t.stats.segments_to_client, 2);
}

#[test]
fn sequence_wrap_with_acks() {
    let mut t = strict();
    let isn = u32::MAX - 3;
    let ev = run(
        &mut t,
        vec![
            seg(isn, TCP_SYN, b""),
            syn_ack(isn.wrapping_add(1)),
            seg(isn.wrapping_add(1), TCP_ACK, b"abc"),
            seg(isn.wrapping_add(4), TCP_ACK, b"def"), // seq 0 after the wrap
            ack(isn.wrapping_add(5)),                  // 1, past the wrap
            seg(isn.wrapping_add(7), TCP_ACK | TCP_FIN, b"g"),
            ack(isn.wrapping_add(9)), // data and FIN
        ],
    );
    assert_eq!(ev, vec![OPEN, data(b"abcdefg"), StreamEvent::Close(CloseReason::Fin)]);
}

#[test]
fn a_flow_picked_up_mid_stream_is_given_up_until_it_closes() {
    // The daemon started while a large body was in flight: the text inside it is no request.
    let mut t = strict();
    let ev = run(
        &mut t,
        vec![
            seg(5000, TCP_ACK, b"xxxx\r\nGET /phantom HTTP/1.1\r\n\r\n"),
            ack(5032),
            seg(5032, TCP_ACK, b"GET /next HTTP/1.1\r\n\r\n"),
            ack(5055),
            seg(5055, TCP_ACK | TCP_FIN, b""),
        ],
    );
    assert_eq!(ev, vec![StreamEvent::Open { midstream: true }, StreamEvent::Close(CloseReason::Fin)]);
    assert_eq!((t.stats.flows_midstream, t.stats.flows_given_up_midstream, t.buffered_bytes()), (1, 1, 0));
    // A new connection on the same ports after a SYN is fine again.
    let ev = run(&mut t, vec![seg(9000, TCP_SYN, b""), syn_ack(9001), seg(9001, TCP_ACK, b"GET"), ack(9004)]);
    assert_eq!(ev, vec![OPEN, data(b"GET")]);
}

#[test]
fn a_syn_with_a_new_isn_replaces_a_given_up_flow() {
    let mut t = strict();
    run(&mut t, vec![seg(5000, TCP_ACK, b"body"), ack(5004)]);
    // The flow is replaced once the server accepts the new connection.
    assert!(run(&mut t, vec![seg(9000, TCP_SYN, b"")]).is_empty());
    let ev = run(&mut t, vec![syn_ack(9001), seg(9001, TCP_ACK, b"GET"), ack(9004)]);
    assert_eq!(ev, vec![StreamEvent::Close(CloseReason::Reused), OPEN, data(b"GET")]);
    assert_eq!(t.stats.reused, 1);
}

#[test]
fn a_syn_the_server_does_not_accept_leaves_the_flow_as_it_was() {
    // A forged SYN with another ISN on a live connection: Linux answers with a challenge ACK.
    let mut t = strict();
    let ev = run(
        &mut t,
        vec![
            seg(100, TCP_SYN, b""),
            syn_ack(101),
            seg(101, TCP_ACK, b"GET /a HTTP/1.1\r\n\r\n"),
            ack(120),
            seg(7000, TCP_SYN, b""),
            ack(120), // the challenge ACK
            seg(120, TCP_ACK, b"GET /b HTTP/1.1\r\n\r\n"),
            ack(139),
        ],
    );
    assert_eq!(ev, vec![OPEN, data(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")]);
    assert_eq!(t.stats.reused, 0);
}

#[test]
fn acknowledgements_count_only_once_the_server_answered_the_syn() {
    // The flow was opened by a SYN the server never answered (a spoofed source, or a stale SYN
    // after our table dropped a live connection): its ACKs are not for these bytes.
    let mut t = strict();
    let ev = run(&mut t, vec![seg(100, TCP_SYN, b""), seg(101, TCP_ACK, b"GET"), ack(104)]);
    assert_eq!(ev, vec![OPEN]);
    // A SYN-ACK for another ISN confirms nothing either.
    assert!(run(&mut t, vec![syn_ack(90_000), ack(104)]).is_empty());
    assert_eq!(run(&mut t, vec![syn_ack(101), ack(104)]), vec![data(b"GET")]);
}

#[test]
fn a_gap_is_exactly_the_bytes_acknowledged_and_never_seen_and_giving_up_ends_delivery() {
    let cfg = FlowConfig { reorder_timeout: Duration::from_millis(100), ..Default::default() };
    let mut t = FlowTable::new(cfg);
    let ms = Duration::from_millis;
    let mut out = Vec::new();
    t.on_segment(seg(100, TCP_SYN, b""), ms(0), &mut out);
    t.on_segment(syn_ack(101), ms(0), &mut out);
    t.on_segment(seg(101, TCP_ACK, b"POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\n"), ms(0), &mut out);
    // The ring lost the body's first 20 bytes; the rest looks like a request line.
    t.on_segment(seg(160, TCP_ACK, b"GET /phantom HTTP/1.1\r\n\r\n"), ms(1), &mut out);
    t.on_segment(ack(185), ms(2), &mut out);
    assert_eq!(t.poll_timeout(), Some(ms(102)), "acknowledged bytes never seen: the hole timer runs");
    t.on_tick(ms(102), &mut out);
    let ev = merge(out);
    let head = data(b"POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\n");
    // The body's last 20 bytes follow the gap (the framer knows they are body: see pipeline's
    // tests, where they never become a request).
    assert_eq!(ev, vec![OPEN, head, StreamEvent::Gap(20), data(b"GET /phantom HTTP/1.1\r\n\r\n")]);
    assert_eq!((t.stats.flows_given_up_gap, t.stats.gaps, t.buffered_bytes()), (0, 1, 0));
    // Given up by its reader: nothing more of it is delivered; its FIN closes it.
    t.give_up(key());
    assert_eq!(t.stats.flows_given_up_gap, 1);
    let ev = run(&mut t, vec![seg(185, TCP_ACK | TCP_FIN, b"GET / HTTP/1.1\r\n\r\n"), ack(205)]);
    assert_eq!(ev, vec![StreamEvent::Close(CloseReason::Fin)]);
}

#[test]
fn a_hole_the_server_has_not_acknowledged_waits_for_the_retransmission() {
    let cfg = FlowConfig { reorder_timeout: Duration::from_millis(100), ..Default::default() };
    let mut t = FlowTable::new(cfg);
    let ms = Duration::from_millis;
    let mut out = Vec::new();
    t.on_segment(seg(100, TCP_SYN, b""), ms(0), &mut out);
    t.on_segment(syn_ack(101), ms(0), &mut out);
    t.on_segment(seg(101, TCP_ACK, b"ab"), ms(0), &mut out);
    t.on_segment(seg(105, TCP_ACK, b"ef"), ms(0), &mut out);
    t.on_segment(ack(103), ms(1), &mut out);
    // The primary lost "cd" too: its retransmission comes after an RTO, longer than the reorder
    // timeout, and is no gap.
    t.on_tick(ms(500), &mut out);
    t.on_segment(seg(103, TCP_ACK, b"cd"), ms(600), &mut out);
    t.on_segment(ack(107), ms(601), &mut out);
    assert_eq!(merge(out), vec![OPEN, data(b"abcdef")]);
    assert_eq!(t.stats.gaps, 0);
}

#[test]
fn tcp_fast_open_data_is_released_by_the_syn_ack() {
    let mut t = strict();
    let syn_ack = Segment::to_client(key(), 7, 104, TCP_SYN | TCP_ACK, 0);
    let ev = run(&mut t, vec![seg(100, TCP_SYN, b"GET"), syn_ack]);
    assert_eq!(ev, vec![OPEN, data(b"GET")]);
}

#[test]
fn a_syn_ack_seen_before_its_syn_confirms_the_flow() {
    // Capture order (CPU rings drained one after the other, or the capture file's own).
    let mut t = strict();
    let ev = run(&mut t, vec![syn_ack(101), seg(100, TCP_SYN, b""), seg(101, TCP_ACK, b"GET"), ack(104)]);
    assert_eq!(ev, vec![OPEN, data(b"GET")]);
    // One for another ISN confirms nothing.
    let mut t = strict();
    let ev = run(&mut t, vec![syn_ack(5001), seg(100, TCP_SYN, b""), seg(101, TCP_ACK, b"GET"), ack(104)]);
    assert_eq!(ev, vec![OPEN]);
}
