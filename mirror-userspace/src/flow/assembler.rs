//! Reassembly of one byte stream: bytes offered at 64-bit stream offsets in any order, delivered
//! once and in order, with explicit gaps.
//!
//! The [`Assembler`] knows nothing of sequence numbers, flags, bounds or statistics: its owner
//! (the flow table) maps sequence numbers to offsets, decides how much may be buffered and when a
//! hole has waited long enough, and counts what happened. Events go to a caller-supplied sink, so
//! the owner can tag them with the flow's key without the assembler knowing it.

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;

use super::StreamEvent;

/// What [`Assembler::insert`] did with the bytes it was offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Insert {
    /// Nothing new: every byte was already delivered (a retransmission), or there were none.
    Duplicate,
    /// The bytes continued the stream: delivered, followed by any buffered bytes they reached.
    Delivered,
    /// The bytes lie beyond a hole: buffered until the hole fills or is skipped (kept only if no
    /// copy at least as long waits at the same offset).
    Buffered,
    /// The bytes lie beyond a hole but are more than the room allowed: dropped.
    NoRoom,
}

/// One stream's reassembly state: where delivery stands, what waits beyond a hole, since when,
/// and where the stream ends.
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    /// Next stream offset to deliver.
    next: u64,
    /// Out-of-order data by stream offset (never empty pieces).
    pending: BTreeMap<u64, Bytes>,
    /// Bytes held in `pending`.
    buffered: usize,
    /// When the current hole (pending data beyond `next`) opened.
    hole_since: Option<Duration>,
    /// Stream offset of the end (FIN, or how far an RST said the stream went), once known.
    fin_at: Option<u64>,
}

impl Assembler {
    /// An empty stream, nothing delivered, starting at offset 0.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The next stream offset to deliver: everything before it was delivered or declared a gap.
    pub(crate) fn next_offset(&self) -> u64 {
        self.next
    }

    /// Bytes held out of order.
    pub(crate) fn buffered(&self) -> usize {
        self.buffered
    }

    /// Whether anything waits beyond a hole.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// When the current hole opened (the first out-of-order bytes arrived), if there is one.
    pub(crate) fn hole_since(&self) -> Option<Duration> {
        self.hole_since
    }

    /// When the current hole will have waited `reorder_timeout`: the instant from which
    /// [`skip_hole`](Self::skip_hole) should be called. `None` without a hole (or if that instant
    /// is beyond what a `Duration` holds).
    pub(crate) fn deadline(&self, reorder_timeout: Duration) -> Option<Duration> {
        self.hole_since.and_then(|t| t.checked_add(reorder_timeout))
    }

    /// Stream offset of the end, once a FIN (or RST) said where it is.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn fin_offset(&self) -> Option<u64> {
        self.fin_at
    }

    /// Records a FIN ending the stream at `off`. The first FIN counts; later ones are ignored.
    pub(crate) fn set_fin(&mut self, off: u64) {
        self.fin_at.get_or_insert(off);
    }

    /// Records that the stream went at least as far as `off` (an RST's sequence number): moves
    /// the end later, never earlier.
    pub(crate) fn extend_fin(&mut self, off: u64) {
        self.fin_at = Some(self.fin_at.map_or(off, |f| f.max(off)));
    }

    /// Whether every byte up to the FIN was delivered (or declared a gap).
    pub(crate) fn is_finished(&self) -> bool {
        self.fin_at.is_some_and(|f| self.next >= f)
    }

    /// Offers the bytes `data` found at stream offset `off`, seen at `now`.
    ///
    /// Bytes before [`next_offset`](Self::next_offset) were delivered already and are dropped:
    /// the copy delivered first wins. Bytes at it are delivered at once through `emit`, with
    /// whatever buffered bytes they now reach. Bytes beyond it are buffered (starting the hole
    /// timer if it is not running), unless there are more than `room` of them; at an offset where
    /// bytes already wait, the longer copy is kept. Buffered pieces that overlap are trimmed when
    /// delivered, so the piece at the lower offset wins.
    pub(crate) fn insert(
        &mut self,
        off: u64,
        mut data: Bytes,
        now: Duration,
        room: usize,
        mut emit: impl FnMut(StreamEvent),
    ) -> Insert {
        let end = off + data.len() as u64;
        if end <= self.next || data.is_empty() {
            return Insert::Duplicate;
        }
        if off <= self.next {
            let _ = data.split_to((self.next - off) as usize);
            self.next = end;
            emit(StreamEvent::Data(data));
            self.drain(emit);
            return Insert::Delivered;
        }
        let len = data.len();
        if len > room {
            return Insert::NoRoom;
        }
        let replaced = match self.pending.get(&off) {
            Some(existing) if existing.len() >= len => None,
            _ => Some(self.pending.insert(off, data).map_or(0, |p| p.len())),
        };
        if let Some(old) = replaced {
            self.buffered = self.buffered + len - old;
        }
        self.hole_since.get_or_insert(now);
        Insert::Buffered
    }

    /// Delivers the buffered bytes that are now in order (up to the next hole), and stops the
    /// hole timer if nothing is left waiting.
    pub(crate) fn drain(&mut self, mut emit: impl FnMut(StreamEvent)) {
        while let Some(entry) = self.pending.first_entry() {
            let off = *entry.key();
            if off > self.next {
                break;
            }
            let mut data = entry.remove();
            self.buffered -= data.len();
            let end = off + data.len() as u64;
            if end <= self.next {
                continue;
            }
            let _ = data.split_to((self.next - off) as usize);
            self.next = end;
            emit(StreamEvent::Data(data));
        }
        if self.pending.is_empty() {
            self.hole_since = None;
        }
    }

    /// Gives up on the first hole: declares it a [`StreamEvent::Gap`] and delivers the buffered
    /// bytes that follow it, up to the next hole. Returns the gap's length (0 if there was no
    /// hole). The hole timer keeps running if bytes still wait beyond another hole, so a timed-out
    /// flow gives up one hole per call.
    pub(crate) fn skip_hole(&mut self, mut emit: impl FnMut(StreamEvent)) -> u64 {
        let Some(&first) = self.pending.keys().next() else {
            self.hole_since = None;
            return 0;
        };
        let gap = first.saturating_sub(self.next);
        if gap > 0 {
            emit(StreamEvent::Gap(gap));
            self.next = first;
        }
        self.drain(emit);
        gap
    }

    /// Ends the stream: delivers everything buffered across its holes, then declares the bytes up
    /// to the FIN that never came a gap. Nothing is left buffered.
    pub(crate) fn finish(&mut self, mut emit: impl FnMut(StreamEvent)) {
        while self.has_pending() {
            self.skip_hole(&mut emit);
        }
        if let Some(end) = self.fin_at
            && end > self.next
        {
            emit(StreamEvent::Gap(end - self.next));
            self.next = end;
        }
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn in_order_is_delivered_at_once() {
        let mut a = Assembler::new();
        let (r, ev) = with(|e| a.insert(0, b("abc"), T0, ROOM, e));
        assert_eq!((r, ev), (Insert::Delivered, vec![data("abc")]));
        let (r, ev) = with(|e| a.insert(3, b("de"), T0, ROOM, e));
        assert_eq!((r, ev), (Insert::Delivered, vec![data("de")]));
        assert_eq!(a.next_offset(), 5);
        assert_eq!((a.buffered(), a.has_pending(), a.hole_since()), (0, false, None));
    }

    #[test]
    fn out_of_order_waits_then_drains_behind_the_filler() {
        let mut a = Assembler::new();
        let ms = Duration::from_millis;
        assert_eq!(with(|e| a.insert(6, b("gh"), ms(5), ROOM, e)), (Insert::Buffered, vec![]));
        assert_eq!(with(|e| a.insert(3, b("def"), ms(7), ROOM, e)), (Insert::Buffered, vec![]));
        assert_eq!(a.buffered(), 5);
        // The timer started with the first out-of-order piece and is not restarted.
        assert_eq!(a.hole_since(), Some(ms(5)));
        assert_eq!(a.deadline(ms(100)), Some(ms(105)));
        let (r, ev) = with(|e| a.insert(0, b("abc"), ms(9), ROOM, e));
        assert_eq!((r, ev), (Insert::Delivered, vec![data("abc"), data("def"), data("gh")]));
        assert_eq!((a.next_offset(), a.buffered(), a.hole_since(), a.deadline(ms(100))), (8, 0, None, None));
    }

    #[test]
    fn retransmissions_and_overlaps_keep_the_delivered_copy() {
        let mut a = Assembler::new();
        with(|e| a.insert(0, b("abcd"), T0, ROOM, e));
        assert_eq!(with(|e| a.insert(0, b("abcd"), T0, ROOM, e)), (Insert::Duplicate, vec![]));
        assert_eq!(with(|e| a.insert(1, b("XY"), T0, ROOM, e)), (Insert::Duplicate, vec![]));
        assert_eq!(with(|e| a.insert(9, b(""), T0, ROOM, e)), (Insert::Duplicate, vec![]));
        // Overlapping the delivered bytes: only the new tail is delivered.
        let (r, ev) = with(|e| a.insert(2, b("XXef"), T0, ROOM, e));
        assert_eq!((r, ev), (Insert::Delivered, vec![data("ef")]));
        assert_eq!(a.next_offset(), 6);
    }

    #[test]
    fn overlapping_buffered_pieces_lower_offset_wins() {
        let mut a = Assembler::new();
        with(|e| a.insert(2, b("cdef"), T0, ROOM, e));
        with(|e| a.insert(4, b("XYgh"), T0, ROOM, e));
        assert_eq!(a.buffered(), 8);
        let (_, ev) = with(|e| a.insert(0, b("ab"), T0, ROOM, e));
        assert_eq!(ev, vec![data("ab"), data("cdef"), data("gh")]);
        assert_eq!(a.buffered(), 0);
    }

    #[test]
    fn same_offset_keeps_the_longer_copy() {
        let mut a = Assembler::new();
        with(|e| a.insert(2, b("cd"), T0, ROOM, e));
        // Shorter or equal: the first copy stays.
        with(|e| a.insert(2, b("X"), T0, ROOM, e));
        with(|e| a.insert(2, b("XY"), T0, ROOM, e));
        assert_eq!(a.buffered(), 2);
        // Longer: replaces it, and the count follows.
        with(|e| a.insert(2, b("cde"), T0, ROOM, e));
        assert_eq!(a.buffered(), 3);
        let (_, ev) = with(|e| a.insert(0, b("ab"), T0, ROOM, e));
        assert_eq!(ev, vec![data("ab"), data("cde")]);
    }

    #[test]
    fn no_room_drops_out_of_order_bytes_only() {
        let mut a = Assembler::new();
        assert_eq!(with(|e| a.insert(5, b("xyz"), T0, 2, e)), (Insert::NoRoom, vec![]));
        assert_eq!((a.buffered(), a.hole_since()), (0, None));
        // In-order bytes need no room.
        assert_eq!(with(|e| a.insert(0, b("abc"), T0, 0, e)).0, Insert::Delivered);
        assert_eq!(with(|e| a.insert(5, b("xy"), T0, 2, e)).0, Insert::Buffered);
    }

    #[test]
    fn skip_hole_declares_one_gap_at_a_time() {
        let mut a = Assembler::new();
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
        let mut a = Assembler::new();
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
        let mut a = Assembler::new();
        with(|e| a.insert(2, b("c"), T0, ROOM, e));
        with(|e| a.insert(5, b("f"), T0, ROOM, e));
        a.set_fin(9);
        let (_, ev) = with(|e| a.finish(e));
        assert_eq!(ev, vec![StreamEvent::Gap(2), data("c"), StreamEvent::Gap(2), data("f"), StreamEvent::Gap(3)]);
        assert!(a.is_finished());
        assert_eq!((a.buffered(), a.has_pending(), a.hole_since()), (0, false, None));
        // Without a FIN, finishing only flushes.
        let mut a = Assembler::new();
        with(|e| a.insert(0, b("ab"), T0, ROOM, e));
        assert_eq!(with(|e| a.finish(e)), ((), vec![]));
    }

    #[test]
    fn deadline_is_none_without_hole_or_on_overflow() {
        let mut a = Assembler::new();
        assert_eq!(a.deadline(Duration::ZERO), None);
        with(|e| a.insert(1, b("x"), Duration::from_secs(2), ROOM, e));
        assert_eq!(a.deadline(Duration::ZERO), Some(Duration::from_secs(2)));
        assert_eq!(a.deadline(Duration::MAX), None);
    }
}
