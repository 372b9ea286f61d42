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
/// client's first bytes, `len` of them in 1,000-byte segments, none acknowledged yet, all at
/// 1 ms (what one burst of a fast upload has in flight).
fn scaled_upload(t: &mut FlowTable, shift: Option<u8>, window: u16, len: u32) -> Vec<StreamEvent> {
    let syn = Segment { wscale: Some(7), ..seg(100, TCP_SYN, b"") };
    let answer = Segment { window: 65_535, wscale: shift, ..syn_ack(101) };
    // The server's window after the handshake, scaled by its shift.
    let open = Segment { window, ..ack(101) };
    let mut segs = vec![syn, answer, open];
    segs.extend((0..len / 1000).map(|i| seg(101 + i * 1000, TCP_ACK, &[b'x'; 1000])));
    let mut out = Vec::new();
    for s in segs {
        t.on_segment(s, Duration::from_millis(1), &mut out);
    }
    merge(out)
}

#[test]
fn a_window_held_without_any_acknowledgement_for_a_reorder_timeout_is_given_up() {
    // 3 MB held at 1 ms in a 4 MiB window, then silence from the server: bytes it will never
    // take (bad checksums, say). Given up once the reorder timeout passed, by its timer.
    let mut t = FlowTable::new(FlowConfig { max_flow_buffer: 100_000, ..Default::default() });
    scaled_upload(&mut t, Some(7), 32_768, 3_000_000);
    let reorder = FlowConfig::default().reorder_timeout;
    assert_eq!(t.poll_timeout(), Some(Duration::from_millis(1) + reorder));
    let mut out = Vec::new();
    t.on_tick(reorder, &mut out);
    assert_eq!((merge(std::mem::take(&mut out)), t.buffered_bytes()), (vec![], 3_000_000));
    t.on_tick(Duration::from_millis(1) + reorder, &mut out);
    assert_eq!(merge(out), vec![StreamEvent::Gap(3_000_000)]);
    assert_eq!((t.buffered_bytes(), t.stats.flows_given_up_gap, t.stats.unacked_bytes), (0, 1, 3_000_000));
}

#[test]
fn acknowledgements_keep_a_window_held_beyond_the_allowance() {
    // A long upload: 3 MB in flight at all times, the server acknowledging 1 MB every 400 ms,
    // for 4 s. Never a stall: everything acknowledged is delivered, nothing given up.
    let mut t = FlowTable::new(FlowConfig { max_flow_buffer: 100_000, ..Default::default() });
    scaled_upload(&mut t, Some(7), 32_768, 3_000_000);
    let mut out = Vec::new();
    for round in 1..=10u32 {
        let now = Duration::from_millis(1 + 400 * u64::from(round));
        t.on_tick(now, &mut out);
        t.on_segment(Segment { window: 32_768, ..ack(101 + round * 1_000_000) }, now, &mut out);
        for i in 0..1000 {
            let seq = 101 + 2_000_000 + round * 1_000_000 + i * 1000;
            t.on_segment(seg(seq, TCP_ACK, &[b'x'; 1000]), now, &mut out);
        }
    }
    let delivered: usize = out.iter().map(|(_, e)| if let StreamEvent::Data(d) = e { d.len() } else { 0 }).sum();
    assert_eq!((delivered, t.buffered_bytes(), t.stats.flows_given_up_gap), (10_000_000, 3_000_000, 0));
}

#[test]
fn a_burst_after_a_quiet_spell_is_not_a_stall() {
    // Everything acknowledged, then 10 s without a segment (a kept-alive connection), then a
    // window's worth at once: its holding starts with it, not with the last acknowledgement.
    let mut t = FlowTable::new(FlowConfig { max_flow_buffer: 100_000, ..Default::default() });
    scaled_upload(&mut t, Some(7), 32_768, 1000);
    let mut out = Vec::new();
    t.on_segment(Segment { window: 32_768, ..ack(1101) }, Duration::from_millis(2), &mut out);
    let later = Duration::from_secs(10);
    for i in 0..2000 {
        t.on_segment(seg(1101 + i * 1000, TCP_ACK, &[b'x'; 1000]), later, &mut out);
    }
    assert_eq!((t.buffered_bytes(), t.stats.flows_given_up_gap), (2_000_000, 0));
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

/// A handshake, then two different copies of a request's 19 bytes, neither acknowledged yet.
fn two_copies() -> Vec<Segment> {
    vec![
        seg(100, TCP_SYN, b""),
        syn_ack(101),
        seg(101, TCP_ACK, b"GET /a HTTP/1.1\r\n\r\n"),
        seg(101, TCP_ACK, b"GET /b HTTP/1.1\r\n\r\n"),
    ]
}

#[test]
fn two_different_copies_before_the_ack_are_a_gap_of_exactly_their_range() {
    // A copy with a bad checksum first (the primary's kernel drops it), then the good one.
    let mut t = strict();
    let mut segs = two_copies();
    segs.extend([ack(120), seg(120, TCP_ACK, b"GET /next HTTP/1.1\r\n\r\n"), ack(143)]);
    let ev = run(&mut t, segs);
    // The copies agree on "GET /" only... as a range they overlap whole: all of it is a gap. What
    // follows is delivered: whether it can be framed is the framer's call (here it cannot: the
    // gap took a head, so the pipeline gives the flow up; see pipeline's tests).
    assert_eq!(ev, vec![OPEN, StreamEvent::Gap(19), data(b"GET /next HTTP/1.1\r\n\r\n")]);
    assert_eq!((t.stats.conflicting_copies, t.stats.gaps, t.stats.flows_given_up_gap), (1, 1, 0));
    assert_eq!(t.buffered_bytes(), 0);
}

#[test]
fn two_different_copies_the_server_never_acknowledged_are_one_gap_at_the_end() {
    // Found by the reassembler fuzz target: the wall was declared a gap as soon as delivery
    // stood at its start, before any acknowledgement (then the flow's end declared a second).
    let mut t = strict();
    let ev = run(&mut t, two_copies());
    assert_eq!(ev, vec![OPEN], "nothing acknowledged: no gap yet");
    let mut out = Vec::new();
    t.close_all(&mut out);
    assert_eq!(merge(out), vec![StreamEvent::Gap(19), StreamEvent::Close(CloseReason::Shutdown)]);
    assert_eq!((t.stats.gaps, t.stats.unacked_bytes), (1, 19));
}

#[test]
fn two_conflicting_ranges_before_the_ack_are_both_walled() {
    // Found by the reassembler fuzz target: with one wall kept, the second range's first copy
    // (maybe the forged one) was delivered. Both ranges and the bytes between them are one gap.
    let mut t = strict();
    let ev = run(
        &mut t,
        vec![
            seg(100, TCP_SYN, b""),
            syn_ack(101),
            seg(101, TCP_ACK, b"aaaaa"),
            seg(101, TCP_ACK, b"bbbbb"),
            seg(111, TCP_ACK, b"ccccc"),
            seg(111, TCP_ACK, b"ddddd"),
            seg(106, TCP_ACK, b"eeeee"),
            ack(116),
            seg(116, TCP_ACK, b"zz"),
            ack(118),
        ],
    );
    assert_eq!(ev, vec![OPEN, StreamEvent::Gap(15), data(b"zz")]);
    assert_eq!(t.stats.conflicting_copies, 2);
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

// ---- Adversarial tests of the window-bounded hold (review of 0976cc5) ----

/// Another client of the same server (a second flow).
fn other_key() -> FlowKey {
    FlowKey { client: "10.0.0.9:40001".parse().unwrap(), server: "10.0.0.2:80".parse().unwrap() }
}

/// `len` client bytes from sequence number `seq` on, in 1,000-byte segments, never acknowledged.
fn unacked_bytes(seq: u32, len: u32) -> Vec<Segment> {
    (0..len / 1000).map(|i| seg(seq.wrapping_add(i * 1000), TCP_ACK, &[b'x'; 1000])).collect()
}

/// With a per-flow allowance of 100,000 bytes: after `handshake`, `most` unacknowledged bytes
/// from sequence number `seq` on are held, and a kilobyte more gives the flow up.
fn holds_at_most(handshake: Vec<Segment>, seq: u32, most: u32) {
    let cfg = FlowConfig { max_flow_buffer: 100_000, ..Default::default() };
    for (len, want) in [(most, vec![OPEN]), (most + 1000, vec![OPEN, StreamEvent::Gap(u64::from(most) + 1000)])] {
        let mut segs = handshake.clone();
        segs.extend(unacked_bytes(seq, len));
        assert_eq!(run(&mut FlowTable::new(cfg.clone()), segs), want, "{len} bytes");
    }
}

#[test]
fn a_window_scale_beyond_14_is_taken_as_14_and_never_overflows() {
    // Window 1 with shift 200 (nonsense): read as 1 << 14 = 16,384 bytes.
    for shift in [15u8, 200, 255] {
        let cfg = FlowConfig { max_flow_buffer: 100_000, ..Default::default() };
        let mut t = FlowTable::new(cfg.clone());
        assert_eq!(scaled_upload(&mut t, Some(shift), 1, 116_000), vec![OPEN], "shift {shift}");
        let mut t = FlowTable::new(cfg);
        assert_eq!(scaled_upload(&mut t, Some(shift), 1, 117_000), vec![OPEN, StreamEvent::Gap(117_000)]);
    }
}

#[test]
fn a_syn_ack_that_does_not_answer_the_syn_sets_no_scale() {
    // The SYN-ACK acknowledges another ISN (spoofed or stale) with scale 14: ignored, so the
    // window that follows (65,535) is unscaled: 100,000 + 65,535 may be held, not 1 GiB.
    holds_at_most(
        vec![
            Segment { wscale: Some(7), ..seg(100, TCP_SYN, b"") },
            Segment { window: 65_535, wscale: Some(14), ..syn_ack(5_000) },
            Segment { window: 65_535, ..ack(101) },
        ],
        101,
        165_000,
    );
}

#[test]
fn a_client_syn_without_the_option_leaves_the_servers_windows_unscaled() {
    // RFC 7323: the scale applies only if both SYNs carried it.
    holds_at_most(
        vec![
            seg(100, TCP_SYN, b""),
            Segment { window: 65_535, wscale: Some(7), ..syn_ack(101) },
            Segment { window: 32_768, ..ack(101) },
        ],
        101,
        132_000,
    );
}

#[test]
fn a_flow_picked_up_mid_stream_holds_nothing_whatever_the_window() {
    // No handshake seen (spoofed bytes, or a flow older than the daemon): given up at once; a
    // huge server window changes nothing.
    let mut t = strict();
    let mut segs = vec![Segment { window: 65_535, ..ack(5_000) }, seg(5_000, TCP_ACK, b"x")];
    segs.push(Segment { window: 65_535, ..ack(5_000) });
    segs.extend(unacked_bytes(5_001, 50_000));
    let ev = run(&mut t, segs);
    assert_eq!(ev, vec![StreamEvent::Open { midstream: true }]);
    assert_eq!(t.buffered_bytes(), 0);
}

#[test]
fn a_handshake_the_server_never_answered_holds_at_most_the_unscaled_window_more() {
    // A spoofed SYN: whatever server ACKs go by (not a SYN-ACK answering it), no shift is
    // learnt: at most 65,535 bytes more than before this change.
    holds_at_most(
        vec![Segment { wscale: Some(14), ..seg(100, TCP_SYN, b"") }, Segment { window: 65_535, ..ack(7) }],
        101,
        165_000,
    );
}

#[test]
fn an_unparked_flow_keeps_its_shift() {
    let cfg = FlowConfig { max_flow_buffer: 100_000, ..Default::default() };
    let mut t = FlowTable::new(cfg);
    let mut out = Vec::new();
    let at = Duration::from_millis;
    t.on_segment(Segment { wscale: Some(7), ..seg(100, TCP_SYN, b"") }, at(0), &mut out);
    t.on_segment(Segment { window: 65_535, wscale: Some(7), ..syn_ack(101) }, at(1), &mut out);
    // The opening timeout: parked.
    for s in 1..=20 {
        t.on_tick(Duration::from_secs(s), &mut out);
    }
    assert_eq!((t.len(), t.parked_len()), (0, 1));
    let t0 = Duration::from_secs(30);
    t.on_segment(seg(101, TCP_ACK, &[b'x'; 1000]), t0, &mut out);
    // The server's window, scaled by the shift kept while parked: 4 MiB.
    t.on_segment(Segment { window: 32_768, ..ack(101) }, t0, &mut out);
    for s in unacked_bytes(1101, 300_000) {
        t.on_segment(s, t0, &mut out);
    }
    assert_eq!((t.stats.unparked, t.stats.flows_given_up_gap, t.buffered_bytes()), (1, 0, 301_000));
}

/// Bug: a 4-tuple reused by a new connection (strict mode's `pending_isn`: a SYN with a new ISN
/// while the old flow is still open) loses its SYN's window scale: the flow is reopened by the
/// server's SYN-ACK with `scales.syn: None`, so the server's windows are taken unscaled and a
/// large upload is given up at `max_flow_buffer` again, as before the change.
#[test]
fn a_reused_four_tuple_keeps_the_window_scale_of_its_new_syn() {
    let mut t = FlowTable::new(FlowConfig { max_flow_buffer: 100_000, ..Default::default() });
    let mut segs = vec![
        Segment { wscale: Some(7), ..seg(100, TCP_SYN, b"") },
        Segment { window: 65_535, wscale: Some(7), ..syn_ack(101) },
        seg(101, TCP_ACK, b"abc"),
        ack(104),
        // A new connection on the same 4-tuple, the old flow still open.
        Segment { wscale: Some(7), ..seg(50_000, TCP_SYN, b"") },
        Segment { window: 65_535, wscale: Some(7), ..syn_ack(50_001) },
        Segment { window: 32_768, ..ack(50_001) }, // 4 MiB
    ];
    segs.extend(unacked_bytes(50_001, 300_000));
    let ev = run(&mut t, segs);
    assert_eq!(t.stats.reused, 1);
    assert_eq!((t.stats.flows_given_up_gap, t.buffered_bytes()), (0, 300_000), "300 kB in a 4 MiB window: {ev:?}");
}

/// Bug: a SYN-ACK that came before its SYN confirms the flow (`file_early_syn_ack`), but its
/// window scale is not kept: the server's windows are taken unscaled.
#[test]
fn an_early_syn_ack_still_sets_the_window_scale() {
    let mut t = FlowTable::new(FlowConfig { max_flow_buffer: 100_000, ..Default::default() });
    let mut segs = vec![
        Segment { window: 65_535, wscale: Some(7), ..syn_ack(101) },
        Segment { wscale: Some(7), ..seg(100, TCP_SYN, b"") },
        Segment { window: 32_768, ..ack(101) }, // 4 MiB
    ];
    segs.extend(unacked_bytes(101, 300_000));
    let ev = run(&mut t, segs);
    assert_eq!((t.stats.flows_given_up_gap, t.buffered_bytes()), (0, 300_000), "{ev:?}");
}

/// Weakness: the per-flow cap is a quarter of `max_total_buffer`, not of the budget in force
/// (`set_buffer_limit`, lowered when the shared memory budget is short): then one flow with a
/// large window can take the whole budget, and every other flow's bytes are dropped.
#[test]
fn one_flow_cannot_take_the_whole_of_a_lowered_budget() {
    let cfg = FlowConfig { max_flow_buffer: 100_000, max_total_buffer: 1_000_000, ..Default::default() };
    let mut t = FlowTable::new(cfg);
    t.set_buffer_limit(200_000);
    // An attacker's connection: a real handshake, a 1 GiB window, bytes the server never
    // acknowledges (bad checksums, or beyond a hole).
    scaled_upload(&mut t, Some(14), 65_535, 240_000);
    // Another client's request, the same instant.
    let other = |s: Segment| Segment { key: other_key(), ..s };
    let overflows = t.stats.buffer_overflows;
    let mut out = Vec::new();
    let now = Duration::from_millis(1);
    for s in [
        Segment { wscale: Some(7), ..seg(100, TCP_SYN, b"") },
        Segment { window: 65_535, wscale: Some(7), ..syn_ack(101) },
        seg(101, TCP_ACK, b"GET / HTTP/1.1\r\n\r\n"),
    ] {
        t.on_segment(other(s), now, &mut out);
    }
    assert_eq!(t.stats.buffer_overflows - overflows, 0, "the other flow's request was dropped: {}", t.buffered_bytes());
}

/// What holding a window costs: with the default budgets (1 MiB a flow, 64 MiB in all), four
/// connections to a server that advertises a ≥ 15 MiB window can hold the whole 64 MiB with
/// bytes it never acknowledges (1 MiB each without their windows: 64 connections), and every
/// other flow's bytes are dropped meanwhile. For a reorder timeout only: then the stall gives
/// them up and the budget is free again. Memory stays bounded by `max_total_buffer`.
#[test]
fn four_connections_with_large_windows_fill_the_budget_until_their_stall_is_seen() {
    let mut t = strict();
    let mut out = Vec::new();
    let now = Duration::from_millis(1);
    for port in 0..4u16 {
        let k = FlowKey { client: format!("10.0.1.{port}:40000").parse().unwrap(), server: key().server };
        let on = |s: Segment| Segment { key: k, ..s };
        let mut segs = vec![
            on(Segment { wscale: Some(7), ..seg(100, TCP_SYN, b"") }),
            on(Segment { window: 65_535, wscale: Some(8), ..syn_ack(101) }),
            on(Segment { window: 65_535, ..ack(101) }), // 16 MiB
        ];
        // A hole at 101, then 16 MiB the server holds out of order (never acknowledged).
        segs.extend((0..256u32).map(|i| on(seg(102 + i * 65_536, TCP_ACK, &[b'x'; 65_536]))));
        for s in segs {
            t.on_segment(s, now, &mut out);
        }
    }
    assert_eq!((t.buffered_bytes(), t.stats.flows_given_up_gap), (64 * 1024 * 1024, 0));
    let on = |s: Segment| Segment { key: other_key(), ..s };
    for s in [seg(100, TCP_SYN, b""), syn_ack(101), seg(101, TCP_ACK, b"GET / HTTP/1.1\r\n\r\n")] {
        t.on_segment(on(s), now, &mut out);
    }
    assert_eq!(t.stats.buffer_overflows, 1, "a fifth client's request is dropped");
    t.on_tick(now + FlowConfig::default().reorder_timeout, &mut out);
    assert_eq!((t.buffered_bytes(), t.stats.flows_given_up_gap), (0, 4));
    let k = FlowKey { client: "10.0.0.10:40002".parse().unwrap(), server: key().server };
    for s in [seg(100, TCP_SYN, b""), syn_ack(101), seg(101, TCP_ACK, b"GET / HTTP/1.1\r\n\r\n")] {
        t.on_segment(Segment { key: k, ..s }, now + FlowConfig::default().reorder_timeout, &mut out);
    }
    assert_eq!((t.stats.buffer_overflows, t.buffered_bytes()), (1, 18), "the next client's request is held");
}

/// With the fix for early SYN-ACKs: a SYN without the option, after its scaled SYN-ACK, leaves
/// the windows unscaled (RFC 7323).
#[test]
fn an_early_syn_ack_to_a_syn_without_the_option_is_unscaled() {
    holds_at_most(
        vec![
            Segment { window: 65_535, wscale: Some(7), ..syn_ack(101) },
            seg(100, TCP_SYN, b""),
            Segment { window: 32_768, ..ack(101) },
        ],
        101,
        132_000,
    );
}

/// A new ISN on a flow that delivered nothing (a new attempt) forgets the old SYN-ACK's shift
/// until its own SYN-ACK comes.
#[test]
fn a_new_attempt_forgets_the_old_attempts_shift() {
    holds_at_most(
        vec![
            Segment { wscale: Some(7), ..seg(100, TCP_SYN, b"") },
            Segment { window: 65_535, wscale: Some(14), ..syn_ack(101) },
            // Another attempt (new ISN), unanswered; the server's ACK is the old connection's.
            seg(90_000, TCP_SYN, b""),
            Segment { window: 32_768, ..ack(101) },
        ],
        90_001,
        132_000,
    );
}

/// Bug (with the classifier's change): a SYN-ACK carrying payload on a port whose responses are
/// not compared now has its headers shipped inline (`inline = payload_off`), so the classifier's
/// `inline > 0 && ip_end > inline && inline >= payload_off` test ships its payload as a
/// `KIND_REVERSE_TAIL`, which keeps the SYN-ACK's flags but decodes without options
/// (`wscale: None`). Taken after the head, it answers the SYN again and resets the shift to 0.
/// The same happens to any answering SYN-ACK whose options were not captured.
#[test]
fn a_syn_ack_sighting_without_its_options_keeps_the_shift_already_learnt() {
    let mut t = FlowTable::new(FlowConfig { max_flow_buffer: 100_000, ..Default::default() });
    let mut segs = vec![
        Segment { wscale: Some(7), ..seg(100, TCP_SYN, b"") },
        Segment { window: 65_535, wscale: Some(7), ..syn_ack(101) },
        // The tail of the same SYN-ACK: its flags, no options.
        Segment { window: 65_535, wscale: None, ..Segment::to_client(key(), 7, 101, TCP_SYN | TCP_ACK, 10) },
        Segment { window: 32_768, ..ack(101) }, // 4 MiB
    ];
    segs.extend(unacked_bytes(101, 300_000));
    let ev = run(&mut t, segs);
    assert_eq!((t.stats.flows_given_up_gap, t.buffered_bytes()), (0, 300_000), "{ev:?}");
}
