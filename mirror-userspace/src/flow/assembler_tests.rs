use super::*;

const T0: Duration = Duration::ZERO;
const ROOM: usize = usize::MAX;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Runs `f` with a sink collecting events.
fn with<R>(f: impl FnOnce(&mut dyn FnMut(StreamEvent)) -> R) -> (R, Vec<StreamEvent>) {
    let mut events = Vec::new();
    let r = f(&mut |e| events.push(e));
    (r, events)
}

fn data(s: &str) -> StreamEvent {
    StreamEvent::Data(b(s))
}

fn lax() -> Assembler {
    Assembler::new(false)
}

#[test]
fn in_order_is_delivered_at_once() {
    let mut a = lax();
    let (r, ev) = with(|e| a.insert(0, b("abc"), T0, ROOM, e));
    assert_eq!((r, ev), (Insert::InOrder, vec![data("abc")]));
    let (r, ev) = with(|e| a.insert(3, b("de"), T0, 0, e));
    assert_eq!((r, ev), (Insert::InOrder, vec![data("de")]), "in-order bytes need no room");
    assert_eq!(a.next_offset(), 5);
    assert_eq!((a.buffered(), a.has_pending(), a.hole_since()), (0, false, None));
}

#[test]
fn out_of_order_waits_then_drains_behind_the_filler() {
    let mut a = lax();
    let ms = Duration::from_millis;
    assert_eq!(with(|e| a.insert(6, b("gh"), ms(5), ROOM, e)), (Insert::Buffered, vec![]));
    assert_eq!(with(|e| a.insert(3, b("def"), ms(7), ROOM, e)), (Insert::Buffered, vec![]));
    assert_eq!(a.buffered(), 5);
    // The timer started with the first out-of-order piece and is not restarted.
    assert_eq!(a.hole_since(), Some(ms(5)));
    assert_eq!(a.deadline(ms(100)), Some(ms(105)));
    let (r, ev) = with(|e| a.insert(0, b("abc"), ms(9), ROOM, e));
    assert_eq!((r, ev), (Insert::InOrder, vec![data("abc"), data("def"), data("gh")]));
    assert_eq!((a.next_offset(), a.buffered(), a.hole_since(), a.deadline(ms(100))), (8, 0, None, None));
}

#[test]
fn retransmissions_and_overlaps_keep_the_delivered_copy() {
    let mut a = lax();
    with(|e| a.insert(0, b("abcd"), T0, ROOM, e));
    assert_eq!(with(|e| a.insert(0, b("abcd"), T0, ROOM, e)), (Insert::Duplicate, vec![]));
    assert_eq!(with(|e| a.insert(1, b("XY"), T0, ROOM, e)), (Insert::Duplicate, vec![]));
    assert_eq!(with(|e| a.insert(9, b(""), T0, ROOM, e)), (Insert::Duplicate, vec![]));
    // Overlapping the delivered bytes: only the new tail is delivered.
    let (r, ev) = with(|e| a.insert(2, b("XXef"), T0, ROOM, e));
    assert_eq!((r, ev), (Insert::InOrder, vec![data("ef")]));
    assert_eq!(a.next_offset(), 6);
}

#[test]
fn overlapping_held_pieces_first_copy_wins() {
    let mut a = lax();
    with(|e| a.insert(4, b("XYgh"), T0, ROOM, e));
    // Over held bytes only the new ones are kept: "cd" before, nothing over "XY".
    with(|e| a.insert(2, b("cdef"), T0, ROOM, e));
    assert_eq!(a.buffered(), 6);
    let (_, ev) = with(|e| a.insert(0, b("ab"), T0, ROOM, e));
    assert_eq!(ev, vec![data("ab"), data("cd"), data("XYgh")]);
    assert_eq!(a.buffered(), 0);
}

#[test]
fn same_offset_longer_copy_adds_its_tail() {
    let mut a = lax();
    with(|e| a.insert(2, b("cd"), T0, ROOM, e));
    assert_eq!(with(|e| a.insert(2, b("X"), T0, ROOM, e)).0, Insert::Duplicate);
    with(|e| a.insert(2, b("XY"), T0, ROOM, e));
    assert_eq!(a.buffered(), 2);
    assert_eq!(with(|e| a.insert(2, b("cde"), T0, ROOM, e)).0, Insert::Buffered);
    assert_eq!(a.buffered(), 3);
    let (_, ev) = with(|e| a.insert(0, b("ab"), T0, ROOM, e));
    assert_eq!(ev, vec![data("ab"), data("cd"), data("e")]);
}

#[test]
fn no_room_drops_out_of_order_bytes_only() {
    let mut a = lax();
    assert_eq!(with(|e| a.insert(5, b("xyz"), T0, 2, e)), (Insert::NoRoom, vec![]));
    assert_eq!((a.buffered(), a.hole_since()), (0, None));
    // In-order bytes need no room.
    assert_eq!(with(|e| a.insert(0, b("abc"), T0, 0, e)).0, Insert::InOrder);
    assert_eq!(with(|e| a.insert(5, b("xy"), T0, 2, e)).0, Insert::Buffered);
}

#[test]
fn skip_hole_declares_one_gap_at_a_time() {
    let mut a = lax();
    let ms = Duration::from_millis;
    with(|e| a.insert(0, b("ab"), T0, ROOM, e));
    with(|e| a.insert(5, b("fg"), ms(1), ROOM, e));
    with(|e| a.insert(7, b("h"), ms(2), ROOM, e));
    with(|e| a.insert(10, b("k"), ms(3), ROOM, e));
    let (gap, ev) = with(|e| a.skip_hole(e));
    assert_eq!((gap, ev), (3, vec![StreamEvent::Gap(3), data("fg"), data("h")]));
    // Another hole remains: the timer keeps its start.
    assert_eq!((a.next_offset(), a.hole_since()), (8, Some(ms(1))));
    let (gap, ev) = with(|e| a.skip_hole(e));
    assert_eq!((gap, ev), (2, vec![StreamEvent::Gap(2), data("k")]));
    assert_eq!((a.next_offset(), a.hole_since(), a.buffered()), (11, None, 0));
    // Nothing pending: nothing to skip.
    assert_eq!(with(|e| a.skip_hole(e)), (0, vec![]));
}

#[test]
fn fin_offset_first_fin_wins_and_rst_extends() {
    let mut a = lax();
    assert_eq!(a.fin_offset(), None);
    assert!(!a.is_finished());
    a.set_fin(5);
    a.set_fin(9);
    assert_eq!(a.fin_offset(), Some(5));
    a.extend_fin(3);
    assert_eq!(a.fin_offset(), Some(5));
    a.extend_fin(7);
    assert_eq!(a.fin_offset(), Some(7));
    with(|e| a.insert(0, b("abcdef"), T0, ROOM, e));
    assert!(!a.is_finished());
    with(|e| a.insert(6, b("g"), T0, ROOM, e));
    assert!(a.is_finished());
}

#[test]
fn finish_delivers_across_holes_then_gap_to_fin() {
    let mut a = lax();
    with(|e| a.insert(2, b("c"), T0, ROOM, e));
    with(|e| a.insert(5, b("f"), T0, ROOM, e));
    a.set_fin(9);
    let (_, ev) = with(|e| a.finish(e));
    assert_eq!(ev, vec![StreamEvent::Gap(2), data("c"), StreamEvent::Gap(2), data("f"), StreamEvent::Gap(3)]);
    assert!(a.is_finished());
    assert_eq!((a.buffered(), a.has_pending(), a.hole_since()), (0, false, None));
    // Without a FIN, finishing only flushes.
    let mut a = lax();
    with(|e| a.insert(0, b("ab"), T0, ROOM, e));
    assert_eq!(with(|e| a.finish(e)), ((), vec![]));
}

#[test]
fn deadline_is_none_without_hole_or_on_overflow() {
    let mut a = lax();
    assert_eq!(a.deadline(Duration::ZERO), None);
    with(|e| a.insert(1, b("x"), Duration::from_secs(2), ROOM, e));
    assert_eq!(a.deadline(Duration::ZERO), Some(Duration::from_secs(2)));
    assert_eq!(a.deadline(Duration::MAX), None);
}

// Strict mode: acknowledgements gate delivery, differing copies make walls.

#[test]
fn strict_holds_until_acknowledged_then_delivers_what_is_covered() {
    let mut a = Assembler::new(true);
    assert_eq!(with(|e| a.insert(0, b("abc"), T0, ROOM, e)), (Insert::InOrder, vec![]));
    assert_eq!(with(|e| a.insert(3, b("def"), T0, ROOM, e)), (Insert::InOrder, vec![]));
    assert_eq!((a.buffered(), a.unacked(), a.hole_since()), (6, 6, None));
    // An acknowledgement in the middle of a piece delivers its covered part only.
    assert_eq!(with(|e| a.acknowledge(4, T0, e)), ((), vec![data("abc"), data("d")]));
    assert_eq!((a.next_offset(), a.buffered(), a.unacked()), (4, 2, 2));
    // An older acknowledgement does nothing; a later one delivers the rest.
    assert_eq!(with(|e| a.acknowledge(2, T0, e)), ((), vec![]));
    assert_eq!(with(|e| a.acknowledge(6, T0, e)), ((), vec![data("ef")]));
    // Bytes already acknowledged are delivered as they arrive (the ACK was seen first).
    with(|e| a.acknowledge(9, T0, e));
    assert_eq!(a.hole_since(), Some(T0), "acknowledged bytes never seen: a hole");
    assert_eq!(with(|e| a.insert(6, b("ghij"), T0, ROOM, e)), (Insert::InOrder, vec![data("ghi")]));
    assert_eq!((a.next_offset(), a.unacked(), a.hole_since()), (9, 1, None));
}

#[test]
fn strict_in_order_bytes_need_room() {
    let mut a = Assembler::new(true);
    assert_eq!(with(|e| a.insert(0, b("abc"), T0, 2, e)).0, Insert::NoRoom);
    with(|e| a.acknowledge(2, T0, e));
    // Two of them are due at once: only the third needs room.
    assert_eq!(with(|e| a.insert(0, b("abc"), T0, 1, e)), (Insert::InOrder, vec![data("ab")]));
}

#[test]
fn strict_identical_copies_are_retransmissions() {
    let mut a = Assembler::new(true);
    with(|e| a.insert(0, b("abcd"), T0, ROOM, e));
    assert_eq!(with(|e| a.insert(0, b("abcd"), T0, ROOM, e)).0, Insert::Duplicate);
    assert_eq!(with(|e| a.insert(2, b("cdef"), T0, ROOM, e)).0, Insert::InOrder);
    assert_eq!(with(|e| a.acknowledge(6, T0, e)), ((), vec![data("abcd"), data("ef")]));
}

#[test]
fn strict_different_copies_before_the_ack_are_a_gap() {
    let mut a = Assembler::new(true);
    // A forged copy first (bad checksum: the server's TCP dropped it), then the genuine one.
    with(|e| a.insert(0, b("GET /a"), T0, ROOM, e));
    assert_eq!(with(|e| a.insert(4, b("/bc"), T0, ROOM, e)).0, Insert::Conflict);
    // The bytes before the differing range are delivered once acknowledged; the range is a gap
    // of exactly its length, and the bytes after it follow (the framer decides whether they can
    // be framed).
    let (_, ev) = with(|e| a.acknowledge(7, T0, e));
    assert_eq!(ev, vec![data("GET "), StreamEvent::Gap(2), data("c")]);
    assert_eq!(a.next_offset(), 7);
}

#[test]
fn strict_a_copy_after_the_ack_is_old_and_ignored() {
    let mut a = Assembler::new(true);
    with(|e| a.acknowledge(5, T0, e));
    // Held behind a hole although acknowledged: a different copy now is one the TCP ignores.
    with(|e| a.insert(2, b("cde"), T0, ROOM, e));
    assert_eq!(with(|e| a.insert(2, b("XYZ"), T0, ROOM, e)).0, Insert::Duplicate);
    let (_, ev) = with(|e| a.insert(0, b("ab"), T0, ROOM, e));
    assert_eq!(ev, vec![data("ab"), data("cde")]);
}

#[test]
fn strict_hole_timer_runs_only_for_acknowledged_bytes() {
    let mut a = Assembler::new(true);
    let ms = Duration::from_millis;
    with(|e| a.insert(0, b("ab"), ms(1), ROOM, e));
    with(|e| a.insert(4, b("ef"), ms(2), ROOM, e));
    assert_eq!(a.hole_since(), None, "the server waits for bytes 2..4 too");
    with(|e| a.acknowledge(2, ms(3), e));
    assert_eq!(a.hole_since(), None);
    with(|e| a.acknowledge(6, ms(4), e));
    assert_eq!(a.hole_since(), Some(ms(4)), "the server has bytes we never saw");
    // The gap is exactly the acknowledged bytes never seen; what follows it is delivered.
    let (gap, ev) = with(|e| a.skip_hole(e));
    assert_eq!((gap, ev), (2, vec![StreamEvent::Gap(2), data("ef")]));
    assert_eq!(a.hole_since(), None);
    assert_eq!(with(|e| a.insert(6, b("gh"), ms(5), ROOM, e)).0, Insert::InOrder);
    assert_eq!(with(|e| a.acknowledge(8, ms(5), e)), ((), vec![data("gh")]));
    // Given up (the framer could not go on): nothing more is held or delivered.
    a.clear();
    assert!(a.is_stopped());
    assert_eq!(with(|e| a.insert(8, b("ij"), ms(6), ROOM, e)), (Insert::Duplicate, vec![]));
}

#[test]
fn strict_fin_ends_the_stream_only_when_acknowledged_exactly() {
    let mut a = Assembler::new(true);
    with(|e| a.insert(0, b("abc"), T0, ROOM, e));
    a.set_fin(3);
    with(|e| a.acknowledge(3, T0, e));
    assert!(!a.is_finished(), "the FIN is not acknowledged yet");
    with(|e| a.acknowledge(4, T0, e));
    assert!(a.is_finished());
    assert_eq!(a.hole_since(), None, "the FIN's sequence number is no missing byte");
    assert_eq!(with(|e| a.finish(e)), ((), vec![]));
    // A FIN followed by acknowledged data was not where the stream ended.
    let mut a = Assembler::new(true);
    a.set_fin(1);
    with(|e| a.insert(0, b("abc"), T0, ROOM, e));
    with(|e| a.acknowledge(3, T0, e));
    assert!(!a.is_finished());
}

#[test]
fn strict_finish_turns_unacknowledged_bytes_into_a_gap() {
    let mut a = Assembler::new(true);
    with(|e| a.insert(0, b("abc"), T0, ROOM, e));
    with(|e| a.insert(5, b("fg"), T0, ROOM, e));
    with(|e| a.acknowledge(1, T0, e));
    assert_eq!(a.unacked(), 4);
    let (_, ev) = with(|e| a.finish(e));
    assert_eq!(ev, vec![StreamEvent::Gap(6)]);
    assert_eq!((a.next_offset(), a.buffered(), a.has_pending()), (7, 0, false));
}
