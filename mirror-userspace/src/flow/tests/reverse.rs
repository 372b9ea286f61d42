//! The server's stream ([`FlowConfig::responses`]): reassembled from the primary's own segments,
//! holes given up on after the reorder timeout, its FIN, its bytes counted in the table's buffer.

use super::*;

/// A server segment with payload at offset `off` of its stream (its ISN is 7).
fn resp(off: u32, flags: u8, data: &[u8]) -> Segment {
    let mut s = Segment::to_client(key(), 8 + off, 1, flags, data.len() as u32);
    s.payload = Bytes::copy_from_slice(data);
    s
}

fn reverse_only(out: Vec<(FlowKey, StreamEvent)>) -> Vec<StreamEvent> {
    out.into_iter()
        .map(|(_, e)| e)
        .filter(|e| matches!(e, StreamEvent::ReverseData(_) | StreamEvent::ReverseGap(_) | StreamEvent::ReverseFin))
        .collect()
}

#[test]
fn the_server_stream_is_reassembled_with_gaps_and_its_fin() {
    let cfg = FlowConfig { responses: true, reorder_timeout: Duration::from_millis(100), ..FlowConfig::default() };
    let mut t = FlowTable::new(cfg);
    let mut out = Vec::new();
    let ms = Duration::from_millis;
    t.on_segment(seg(0, TCP_SYN, b""), ms(0), &mut out);
    t.on_segment(syn_ack(1), ms(0), &mut out);
    // Out of order: held (and counted in the table's buffer) until the hole fills.
    t.on_segment(resp(3, TCP_ACK, b"def"), ms(1), &mut out);
    assert_eq!(t.buffered_bytes(), 3);
    t.on_segment(resp(0, TCP_ACK, b"abc"), ms(2), &mut out);
    assert_eq!(t.buffered_bytes(), 0);
    // A retransmission delivers nothing twice.
    t.on_segment(resp(0, TCP_ACK, b"abc"), ms(3), &mut out);
    // A hole that outlives the reorder timeout becomes a gap when the next segment comes.
    t.on_segment(resp(10, TCP_ACK, b"k"), ms(4), &mut out);
    t.on_segment(resp(11, TCP_ACK | TCP_FIN, b"l"), ms(200), &mut out);
    let want = vec![
        StreamEvent::ReverseData(Bytes::from_static(b"abc")),
        StreamEvent::ReverseData(Bytes::from_static(b"def")),
        StreamEvent::ReverseGap(4),
        StreamEvent::ReverseData(Bytes::from_static(b"k")),
        StreamEvent::ReverseData(Bytes::from_static(b"l")),
        StreamEvent::ReverseFin,
    ];
    assert_eq!(reverse_only(std::mem::take(&mut out)), want);
    assert_eq!((t.stats.response_gaps, t.stats.response_gap_bytes, t.stats.gaps), (1, 4, 0));

    // Without `responses`, the same segments carry nothing of the server's stream.
    let mut t = FlowTable::new(FlowConfig::default());
    t.on_segment(seg(0, TCP_SYN, b""), ms(0), &mut out);
    t.on_segment(syn_ack(1), ms(0), &mut out);
    t.on_segment(resp(0, TCP_ACK | TCP_FIN, b"abc"), ms(1), &mut out);
    assert!(reverse_only(out).is_empty());
}

#[test]
fn a_closing_flow_delivers_the_server_bytes_held_across_holes() {
    let mut t = FlowTable::new(FlowConfig { responses: true, ..FlowConfig::default() });
    let mut out = Vec::new();
    t.on_segment(seg(0, TCP_SYN, b""), Duration::ZERO, &mut out);
    t.on_segment(syn_ack(1), Duration::ZERO, &mut out);
    t.on_segment(resp(2, TCP_ACK, b"cd"), Duration::ZERO, &mut out);
    t.on_segment(Segment::to_client(key(), 8, 1, TCP_RST, 0), Duration::ZERO, &mut out);
    let events: Vec<StreamEvent> =
        out.into_iter().map(|(_, e)| e).skip_while(|e| !matches!(e, StreamEvent::ReverseGap(_))).collect();
    assert_eq!(
        events,
        [
            StreamEvent::ReverseGap(2),
            StreamEvent::ReverseData(Bytes::from_static(b"cd")),
            StreamEvent::Close(CloseReason::Rst)
        ]
    );
    assert_eq!(t.buffered_bytes(), 0);
}

#[test]
fn server_bytes_refused_for_want_of_buffer_room_are_counted_and_become_a_gap() {
    let mut t = FlowTable::new(FlowConfig { responses: true, ..FlowConfig::default() });
    t.set_buffer_limit(4);
    let mut out = Vec::new();
    t.on_segment(seg(0, TCP_SYN, b""), Duration::ZERO, &mut out);
    t.on_segment(syn_ack(1), Duration::ZERO, &mut out);
    // Out of order and within the room: held. Beyond it: refused, counted.
    t.on_segment(resp(3, TCP_ACK, b"def"), Duration::ZERO, &mut out);
    t.on_segment(resp(6, TCP_ACK, b"ghi"), Duration::ZERO, &mut out);
    assert_eq!((t.buffered_bytes(), t.stats.buffer_overflows), (3, 1));
    t.on_segment(resp(0, TCP_ACK, b"abc"), Duration::ZERO, &mut out);
    t.on_segment(resp(9, TCP_ACK, b"jkl"), Duration::ZERO, &mut out);
    t.on_segment(Segment::to_client(key(), 8, 1, TCP_RST, 0), Duration::ZERO, &mut out);
    assert_eq!(
        reverse_only(out),
        [
            StreamEvent::ReverseData(Bytes::from_static(b"abc")),
            StreamEvent::ReverseData(Bytes::from_static(b"def")),
            StreamEvent::ReverseGap(3),
            StreamEvent::ReverseData(Bytes::from_static(b"jkl")),
        ]
    );
}
