//! Reassembly of one byte stream: bytes offered at 64-bit stream offsets in any order, delivered
//! once and in order, with explicit gaps — and, in strict mode, only up to the offset the server
//! acknowledged.
//!
//! The [`Assembler`] knows nothing of sequence numbers, flags, bounds or statistics: its owner
//! (the flow table) maps sequence numbers to offsets, passes on the server's acknowledgements,
//! decides how much may be buffered and when a hole has waited long enough, and counts what
//! happened. Events go to a caller-supplied sink, so the owner can tag them with the flow's key
//! without the assembler knowing it.
//!
//! Bytes not yet delivered wait as disjoint pieces: a copy offered over bytes already held only
//! adds the bytes it has beyond them. Without strict mode the first copy wins. In strict mode the
//! overlapping bytes are compared where the server has not acknowledged them yet: two different
//! copies make the overlap a *wall*, a range that is never delivered (a gap when delivery reaches
//! it), because the copy the server's TCP kept cannot be known. A gap's length is exact either
//! way (sequence numbers); whether the bytes after it can be framed is the HTTP framer's call
//! (in strict mode only where the next request's start is known: see `http::framer`), and a
//! flow it cannot frame any more is given up by the table ([`Assembler::clear`]).

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use smallvec::SmallVec;

use super::StreamEvent;

/// What [`Assembler::insert`] did with the bytes it was offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Insert {
    /// Nothing new: every byte was already delivered or held (a retransmission), or there were
    /// none.
    Duplicate,
    /// The bytes continued what was received in order (delivered at once if they are due).
    InOrder,
    /// The bytes lie beyond a hole: buffered until the hole fills or is skipped.
    Buffered,
    /// The bytes needed more room than allowed: dropped.
    NoRoom,
    /// Strict mode: some of the bytes differ from another copy held for the same unacknowledged
    /// offsets; that range will never be delivered.
    Conflict,
}

/// One stream's reassembly state: where delivery stands, what waits, since when, how far the
/// server acknowledged, and where the stream ends.
#[derive(Debug)]
pub(crate) struct Assembler {
    /// Next stream offset to deliver.
    next: u64,
    /// Received bytes not delivered yet, by stream offset: disjoint, never empty, all at or after
    /// `next`.
    pending: BTreeMap<u64, Bytes>,
    /// Bytes held in `pending`.
    buffered: usize,
    /// End of the bytes received contiguously from `next` (`next` if none).
    contig: u64,
    /// Nothing at or beyond this offset is delivered: the server's acknowledgement in strict
    /// mode, `u64::MAX` otherwise.
    limit: u64,
    /// Strict mode: acknowledgements gate delivery and different copies make walls.
    strict: bool,
    /// Strict mode: the range seen in two different copies, `[start, end)` (spanning them all
    /// when there were several).
    wall: Option<(u64, u64)>,
    /// Strict mode: a gap was declared; nothing more is delivered.
    stopped: bool,
    /// Held bytes never acknowledged that were dropped (by a gap or [`clear`](Self::clear)), not
    /// yet taken by the owner's statistics.
    dropped_unacked: u64,
    /// When the current hole (bytes due beyond a missing range) opened.
    hole_since: Option<Duration>,
    /// Stream offset of the end (FIN, or how far an RST said the stream went), once known.
    fin_at: Option<u64>,
}

impl Assembler {
    /// An empty stream, nothing delivered, starting at offset 0. `strict`: deliver only what
    /// [`acknowledge`](Self::acknowledge) allowed, and turn differing copies into walls.
    pub(crate) fn new(strict: bool) -> Self {
        Self {
            next: 0,
            pending: BTreeMap::new(),
            buffered: 0,
            contig: 0,
            limit: if strict { 0 } else { u64::MAX },
            strict,
            wall: None,
            stopped: false,
            dropped_unacked: 0,
            hole_since: None,
            fin_at: None,
        }
    }

    /// Whether delivery stopped for good (strict mode, given up: [`Assembler::clear`]).
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Held bytes never acknowledged that were dropped since the last call (strict mode).
    pub(crate) fn take_dropped_unacked(&mut self) -> u64 {
        std::mem::take(&mut self.dropped_unacked)
    }

    /// Drops every held byte (a stopped or given-up stream): nothing more is kept or delivered.
    ///
    /// In strict mode the stream is then only measured: `next` becomes the end of the client's
    /// bytes seen ([`Assembler::seen_stopped`]) and `limit` how far the server's acceptance of
    /// them was counted ([`Assembler::acknowledge_stopped`]). Both start at the end of everything
    /// known now (delivered, held, acknowledged, a wall), so that no byte already in a gap or in
    /// the dropped unacknowledged bytes is counted again.
    pub(crate) fn clear(&mut self) {
        self.dropped_unacked += self.unacked();
        if self.strict {
            let held = self.pending.last_key_value().map_or(0, |(k, v)| k + v.len() as u64);
            let known = held.max(self.next).max(self.limit).max(self.wall.map_or(0, |(_, e)| e));
            (self.next, self.contig, self.limit) = (known, known, known);
        }
        self.pending.clear();
        self.buffered = 0;
        self.hole_since = None;
        self.wall = None;
        self.stopped = self.strict;
    }

    /// A stopped stream: the client's bytes up to offset `end` were seen (never delivered).
    pub(crate) fn seen_stopped(&mut self, end: u64) {
        if self.stopped {
            self.next = self.next.max(end);
            self.contig = self.next;
        }
    }

    /// A stopped stream: the server acknowledged up to offset `off`. Returns how many of the
    /// client's bytes seen this newly acknowledges: never beyond what was seen (a forged
    /// acknowledgement far ahead counts nothing), each byte once.
    pub(crate) fn acknowledge_stopped(&mut self, off: u64) -> u64 {
        if !self.stopped {
            return 0;
        }
        let to = off.min(self.next);
        let n = to.saturating_sub(self.limit);
        self.limit = self.limit.max(to);
        n
    }

    /// Declares a gap of `len` bytes at `next` and moves past it.
    fn gap(&mut self, len: u64, emit: &mut impl FnMut(StreamEvent)) {
        if len > 0 {
            emit(StreamEvent::Gap(len));
        }
        self.skip_to(self.next + len);
    }

    /// The next stream offset to deliver: everything before it was delivered or declared a gap.
    pub(crate) fn next_offset(&self) -> u64 {
        self.next
    }

    /// How far the server acknowledged (strict mode; `u64::MAX` otherwise).
    pub(crate) fn acked(&self) -> u64 {
        self.limit
    }

    /// Bytes held, delivered not yet.
    pub(crate) fn buffered(&self) -> usize {
        self.buffered
    }

    /// Whether any byte is held.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Held bytes at or beyond the acknowledged offset (all of them outside strict mode).
    pub(crate) fn unacked(&self) -> u64 {
        let mut n = 0;
        for (&k, v) in self.pending.range(..).rev() {
            let end = k + v.len() as u64;
            if end <= self.limit {
                break;
            }
            n += end - k.max(self.limit);
        }
        n
    }

    /// When the current hole opened, if there is one.
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

    /// Records a FIN ending the stream at `off`. Outside strict mode the first FIN counts; in
    /// strict mode the latest does (a FIN only ends the stream once acknowledged, see
    /// [`is_finished`](Self::is_finished), so an early bogus one cannot hide the real one).
    pub(crate) fn set_fin(&mut self, off: u64) {
        if self.strict {
            self.fin_at = Some(off);
        } else {
            self.fin_at.get_or_insert(off);
        }
    }

    /// Records that the stream went at least as far as `off` (an RST's sequence number): moves
    /// the end later, never earlier.
    pub(crate) fn extend_fin(&mut self, off: u64) {
        self.fin_at = Some(self.fin_at.map_or(off, |f| f.max(off)));
    }

    /// Whether every byte up to the FIN was delivered (or declared a gap); in strict mode, also
    /// that the server acknowledged exactly the FIN, nothing beyond it.
    pub(crate) fn is_finished(&self) -> bool {
        match self.fin_at {
            None => false,
            Some(f) if self.strict => self.next == f && self.limit == f + 1,
            Some(f) => self.next >= f,
        }
    }

    /// Where delivery must stop for now: the acknowledgement, or a wall.
    fn deliver_end(&self) -> u64 {
        self.wall.map_or(self.limit, |(s, _)| s.min(self.limit))
    }

    /// Whether bytes are missing before bytes that are due: without strict mode, held bytes
    /// beyond a missing range; in strict mode, acknowledged bytes never seen (the FIN's own
    /// sequence number excepted).
    fn has_hole(&self) -> bool {
        if self.stopped {
            false
        } else if self.strict {
            // The FIN's own sequence number is acknowledged, never seen as a byte.
            let due = if self.fin_at == Some(self.contig) && self.limit == self.contig + 1 {
                self.contig
            } else {
                self.limit
            };
            self.wall.is_none_or(|(s, _)| s > self.contig) && self.contig < due
        } else {
            self.pending.range(self.contig..).next().is_some()
        }
    }

    /// Starts the hole timer at `now` if a hole opened, stops it if none is left.
    fn refresh_hole(&mut self, now: Duration) {
        if self.has_hole() {
            self.hole_since.get_or_insert(now);
        } else {
            self.hole_since = None;
        }
    }

    /// Extends `contig` over the held pieces that continue it.
    fn extend_contig(&mut self) {
        self.contig = self.contig.max(self.next);
        while let Some(piece) = self.pending.get(&self.contig) {
            self.contig += piece.len() as u64;
        }
    }

    /// The server acknowledged every byte before `off` (strict mode; ignored otherwise, and when
    /// it is not beyond what was acknowledged): delivers what is now due, and starts the hole
    /// timer at `now` if acknowledged bytes were never seen.
    pub(crate) fn acknowledge(&mut self, off: u64, now: Duration, emit: impl FnMut(StreamEvent)) {
        if !self.strict || off <= self.limit {
            return;
        }
        self.limit = off;
        self.drain(emit);
        self.refresh_hole(now);
    }

    /// Offers the bytes `data` found at stream offset `off`, seen at `now`.
    ///
    /// Bytes before [`next_offset`](Self::next_offset) were delivered already and are dropped.
    /// Bytes over held bytes keep the held copy (in strict mode, where they differ and are not
    /// acknowledged, they make a wall instead). The other bytes are held, unless more than `room`
    /// of them cannot be delivered at once, and what is due is delivered through `emit`.
    pub(crate) fn insert(
        &mut self,
        off: u64,
        mut data: Bytes,
        now: Duration,
        room: usize,
        emit: impl FnMut(StreamEvent),
    ) -> Insert {
        let end = off + data.len() as u64;
        if end <= self.next || data.is_empty() || self.stopped {
            return Insert::Duplicate;
        }
        // What a piece of `data` held here keeps alive, at most (see `own_if_short`).
        let source = data.len();
        let off = if off < self.next {
            let _ = data.split_to((self.next - off) as usize);
            self.next
        } else {
            off
        };
        // The pieces of `data` not held yet, and a conflict with held bytes, if any. Nearly
        // always one piece (a segment in order): kept inline, not allocated per segment.
        let mut fresh: SmallVec<[(u64, Bytes); 2]> = SmallVec::new();
        let mut conflict: Option<(u64, u64)> = None;
        let mut cursor = off;
        let first = self.pending.range(..=off).next_back().filter(|(k, v)| **k + v.len() as u64 > off).map(|(k, _)| *k);
        for (&k, held) in self.pending.range(first.unwrap_or(off)..end) {
            let held_end = k + held.len() as u64;
            if k > cursor {
                fresh.push((cursor, data.slice((cursor - off) as usize..(k - off) as usize)));
            }
            // Compare where the server has not acknowledged the bytes yet: a copy arriving after
            // the acknowledgement is one its TCP ignores as old.
            let (from, to) = (k.max(cursor).max(self.limit), held_end.min(end));
            if self.strict
                && from < to
                && held[(from - k) as usize..(to - k) as usize] != data[(from - off) as usize..(to - off) as usize]
            {
                let (s, e) = (from, to);
                conflict = Some(conflict.map_or((s, e), |(cs, ce)| (cs.min(s), ce.max(e))));
            }
            cursor = cursor.max(held_end);
        }
        if cursor < end {
            fresh.push((cursor, data.slice((cursor - off) as usize..)));
        }
        let in_order = fresh.first().is_some_and(|(o, _)| *o <= self.contig);
        let total: usize = fresh.iter().map(|(_, d)| d.len()).sum();
        let at_once = match fresh.first() {
            Some((o, d)) if *o == self.next => (self.deliver_end().saturating_sub(*o) as usize).min(d.len()),
            _ => 0,
        };
        if total - at_once > room {
            return Insert::NoRoom;
        }
        for (o, d) in fresh {
            self.buffered += d.len();
            self.pending.insert(o, own_if_short(d, source));
        }
        if let Some((s, e)) = conflict {
            // One wall covers every conflicting range (and the bytes between them): a second
            // range forgotten would let its other copy be delivered. Over-wide, but never wrong.
            self.wall = Some(self.wall.map_or((s, e), |(ws, we)| (ws.min(s), we.max(e))));
        }
        self.extend_contig();
        self.drain(emit);
        self.refresh_hole(now);
        match () {
            _ if conflict.is_some() => Insert::Conflict,
            _ if total == 0 => Insert::Duplicate,
            _ if in_order => Insert::InOrder,
            _ => Insert::Buffered,
        }
    }

    /// Delivers the held bytes that are now in order and due, a wall reached as a gap, and stops
    /// the hole timer if no hole is left.
    pub(crate) fn drain(&mut self, mut emit: impl FnMut(StreamEvent)) {
        while !self.stopped {
            let end = self.deliver_end();
            if self.next < end
                && let Some(mut entry) = self.pending.first_entry()
                && *entry.key() == self.next
            {
                let len = entry.get().len() as u64;
                let data = if self.next + len <= end {
                    entry.remove()
                } else {
                    // Due only in part: deliver that part, hold the rest at its new offset.
                    let head = entry.get_mut().split_to((end - self.next) as usize);
                    let rest = entry.remove();
                    self.pending.insert(end, rest);
                    head
                };
                self.buffered -= data.len();
                self.next += data.len() as u64;
                emit(StreamEvent::Data(data));
                continue;
            }
            if let Some((s, e)) = self.wall
                && self.next >= s
                && self.limit > s
            {
                // Strict mode: a range seen in two different copies is never delivered, and is a
                // gap once the server acknowledged into it (it took one of the copies). Before,
                // it is not reached: the server may still take neither (both forged) and the
                // sender's retransmission, or the flow's end, decides.
                self.wall = None;
                self.gap(e.saturating_sub(self.next).max(1), &mut emit);
                continue;
            }
            break;
        }
        self.extend_contig();
        if !self.has_hole() {
            self.hole_since = None;
        }
    }

    /// Moves delivery to `off` without delivering: held bytes before it are dropped (those never
    /// acknowledged are counted).
    fn skip_to(&mut self, off: u64) {
        while let Some(entry) = self.pending.first_entry() {
            let k = *entry.key();
            if k >= off {
                break;
            }
            let mut data = entry.remove();
            self.buffered -= data.len();
            if k + data.len() as u64 > off {
                let rest = data.split_off((off - k) as usize);
                self.buffered += rest.len();
                self.pending.insert(off, rest);
            }
            let end = k + data.len() as u64;
            self.dropped_unacked += end.saturating_sub(k.max(self.limit));
        }
        self.next = self.next.max(off);
        self.contig = self.contig.max(self.next);
    }

    /// Gives up on the first hole: declares it a [`StreamEvent::Gap`] and delivers the held bytes
    /// that follow it and are due, up to the next hole. Returns the gap's length (0 if there was
    /// no hole). The hole timer keeps its start if another hole is left, so a timed-out flow
    /// gives up one hole per call.
    pub(crate) fn skip_hole(&mut self, mut emit: impl FnMut(StreamEvent)) -> u64 {
        let since = self.hole_since;
        if !self.has_hole() {
            self.hole_since = None;
            return 0;
        }
        // With a hole, everything received before it was delivered: it starts at `next`.
        debug_assert_eq!(self.contig, self.next);
        let start = self.next;
        let mut to = self.pending.range(start..).next().map_or(u64::MAX, |(k, _)| *k);
        if self.strict {
            to = to.min(self.limit);
        }
        let gap = to - start;
        self.gap(gap, &mut emit);
        self.drain(&mut emit);
        if let Some(t) = since {
            self.refresh_hole(t);
        }
        gap
    }

    /// Ends the stream: outside strict mode, delivers everything held across its holes, then
    /// declares the bytes up to the FIN that never came a gap. In strict mode delivers nothing
    /// more: what is left up to the end of everything known (held, acknowledged, the FIN) is one
    /// gap. Nothing is left held.
    pub(crate) fn finish(&mut self, mut emit: impl FnMut(StreamEvent)) {
        if self.strict {
            self.drain(&mut emit);
            if self.stopped {
                self.clear();
                return;
            }
            let held = self.pending.last_key_value().map_or(0, |(k, v)| k + v.len() as u64);
            let end = held.max(self.limit).max(self.fin_at.unwrap_or(0)).max(self.wall.map_or(0, |(_, e)| e));
            // Only the FIN's sequence number left (acknowledged or not): nothing was lost.
            let fin_only = self.fin_at == Some(self.next) && !self.has_pending() && self.limit <= self.next + 1;
            if end > self.next && !fin_only {
                self.gap(end - self.next, &mut emit);
            }
            self.clear();
            return;
        }
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

/// `piece` of a segment `source` bytes long, in an allocation of its own when it is less than
/// half of it. Held bytes are charged by their count, and a slice keeps its whole segment alive:
/// without this, segments that overlap what is held but for a byte (which the primary's TCP
/// accepts) would keep 60,000 bytes alive for each byte charged.
pub(crate) fn own_if_short(piece: Bytes, source: usize) -> Bytes {
    if piece.len().saturating_mul(2) < source { Bytes::copy_from_slice(&piece) } else { piece }
}

#[cfg(test)]
#[path = "assembler_tests.rs"]
mod tests;
