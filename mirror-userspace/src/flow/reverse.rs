//! The server → client byte stream of a flow whose responses are compared (issue 15): the
//! primary's responses, reassembled from its own egress segments ([`FlowConfig::responses`]).
//!
//! The bytes are the primary's own, so a retransmission carries the same bytes: reassembly is not
//! strict (the first copy wins, holes are skipped, delivery goes on after a gap). Offset 0 is the
//! byte after the server's SYN-ACK (its ISN + 1); when the SYN-ACK was not seen, the client's
//! handshake ACK says where it is. A flow picked up mid-stream has no reverse stream (its
//! requests are not framed either).
//!
//! A hole waits for a late copy while later bytes arrive, until it is older than the reorder
//! timeout or the held bytes exceed the per-flow bound: then it becomes a
//! [`StreamEvent::ReverseGap`] (checked when the next server segment arrives, and at close, when
//! everything held is delivered across its holes). The server's FIN, once every byte before it
//! was delivered, is a [`StreamEvent::ReverseFin`].

use std::time::Duration;

use mirror_common::{TCP_FIN, TCP_SYN};

use super::{
    FlowConfig, Segment, StreamEvent,
    assembler::{Assembler, Insert},
    conn::unwrap_around,
};

/// The reverse stream of one flow.
#[derive(Debug)]
pub(super) struct Reverse {
    /// Sequence number of offset 0 (the server's ISN + 1).
    base: u32,
    asm: Assembler,
    /// The FIN was delivered as [`StreamEvent::ReverseFin`].
    fin_sent: bool,
}

/// Turns the assembler's events into reverse-stream events.
fn reverse_events(mut emit: impl FnMut(StreamEvent)) -> impl FnMut(StreamEvent) {
    move |ev| {
        emit(match ev {
            StreamEvent::Data(b) => StreamEvent::ReverseData(b),
            StreamEvent::Gap(n) => StreamEvent::ReverseGap(n),
            other => other,
        })
    }
}

impl Reverse {
    /// A stream whose first byte has sequence number `base`.
    pub(super) fn new(base: u32) -> Self {
        Self { base, asm: Assembler::new(false), fin_sent: false }
    }

    /// Bytes held out of order.
    pub(super) fn buffered(&self) -> usize {
        self.asm.buffered()
    }

    /// A server segment: its payload (as captured), its FIN. Events go to `emit`. At
    /// most `room` more bytes may be held out of order (the table's global bound), and at most
    /// `cfg.max_flow_buffer` by this stream. Whether its bytes were refused for want of that room
    /// (they become part of a gap).
    #[must_use]
    pub(super) fn on_segment(
        &mut self,
        seg: &Segment,
        now: Duration,
        cfg: &FlowConfig,
        room: usize,
        mut emit: impl FnMut(StreamEvent),
    ) -> bool {
        let (seq, flags, mut payload) = (seg.seq, seg.flags, seg.payload.clone());
        // Data of a SYN-ACK (TCP Fast Open's server data) starts after its sequence number.
        let seq = if flags & TCP_SYN != 0 { seq.wrapping_add(1) } else { seq };
        let off = match unwrap_around(seq.wrapping_sub(self.base), self.asm.next_offset()) {
            Ok(off) => off,
            Err(before) => {
                if before >= payload.len() as u64 {
                    return false;
                }
                let _ = payload.split_to(before as usize);
                0
            }
        };
        let end = off + payload.len() as u64;
        let room = cfg.max_flow_buffer.saturating_sub(self.asm.buffered()).min(room);
        let mut out = reverse_events(&mut emit);
        let refused = !payload.is_empty() && self.asm.insert(off, payload, now, room, &mut out) == Insert::NoRoom;
        if flags & TCP_FIN != 0 {
            self.asm.set_fin(end);
        }
        // A hole that waited long enough, or held bytes beyond the bound: given up on.
        let due = self.asm.deadline(cfg.reorder_timeout).is_some_and(|at| at <= now);
        if due || self.asm.buffered() >= cfg.max_flow_buffer {
            self.asm.skip_hole(&mut out);
        }
        drop(out);
        self.fin_if_done(&mut emit);
        refused
    }

    /// The flow ends: what is held is delivered across its holes, the bytes up to a FIN that
    /// never came are a gap.
    pub(super) fn finish(&mut self, mut emit: impl FnMut(StreamEvent)) {
        self.asm.finish(reverse_events(&mut emit));
        self.fin_if_done(&mut emit);
    }

    fn fin_if_done(&mut self, mut emit: impl FnMut(StreamEvent)) {
        if !self.fin_sent && self.asm.is_finished() {
            self.fin_sent = true;
            emit(StreamEvent::ReverseFin);
        }
    }
}
