//! The flow table's server→client side: acknowledgements, RSTs, SYN-ACKs (also those that
//! come before their SYN) and, when responses are reassembled, the server's bytes.

use std::time::Duration;

use mirror_common::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

use super::{FlowTable, MAX_EARLY_SYN_ACKS, run_asm};
use crate::flow::{
    CloseReason, FlowKey, Segment, StreamEvent,
    conn::{emitter, unwrap_around},
    reverse::Reverse,
};

impl FlowTable {
    /// A server→client segment: its acknowledgement releases client bytes, its RST closes the flow.
    /// It never opens a flow.
    pub(super) fn on_server_segment(&mut self, seg: Segment, now: Duration, out: &mut Vec<(FlowKey, StreamEvent)>) {
        self.stats.segments_to_client += 1;
        let key = seg.key;
        let strict = self.cfg.require_ack;
        let syn_ack = seg.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK;
        if syn_ack
            && let Some(flow) = self.flows.get(&key)
            && let Some((isn1, syn_len, wscale)) = flow.pending_isn
            && seg.ack.wrapping_sub(isn1) <= syn_len
        {
            // The server accepted a new connection on this 4-tuple.
            self.stats.reused += 1;
            self.close(key, CloseReason::Reused, out);
            self.open(key, isn1, Some(syn_len), now, out);
            if let Some(flow) = self.flows.get_mut(&key) {
                flow.scales.syn = wscale;
            }
        }
        let Some(flow) = self.flows.get_mut(&key) else {
            if seg.flags & (TCP_RST | TCP_FIN) != 0 {
                // The connection ended while parked.
                self.parked.take(&key);
            }
            if syn_ack && strict {
                self.file_early_syn_ack(key, seg.ack, seg.window, seg.wscale, now);
            }
            return;
        };
        flow.last_seen = now;
        if seg.flags & TCP_ACK != 0 {
            if !syn_ack
                && flow.pending_isn.is_some()
                && flow.server_ack.is_some_and(|before| {
                    // Only bytes the old client was seen sending (its FIN too): an ACK beyond them
                    // is not the old connection's (the new one's, its SYN-ACK lost).
                    let seen =
                        flow.base.wrapping_add(flow.asm.next_offset() as u32).wrapping_add(u32::from(flow.client_fin));
                    let room = seen.wrapping_sub(before);
                    room < 1 << 31 && (1..=room).contains(&seg.ack.wrapping_sub(before))
                })
            {
                // The server acknowledged more of this connection after the SYN of another ISN:
                // it holds this one still (it answered that SYN with a challenge ACK, or the SYN
                // was forged), so no SYN-ACK for it will come.
                flow.pending_isn = None;
            }
            flow.server_ack = Some(seg.ack);
            let answers_syn = syn_ack && flow.syn_seen && flow.syn_ack_matches(seg.ack);
            if answers_syn {
                flow.confirmed = true;
            }
            if answers_syn || !syn_ack {
                let learned = answers_syn && flow.scales.syn_ack.is_none();
                flow.server_advertised(&seg, answers_syn);
                if learned && flow.scales.shift() > 0 {
                    self.stats.windows_scaled += 1;
                }
            }
            // The acknowledgement is taken nearest what was acknowledged before. A SYN-ACK
            // acknowledges only the SYN it answers: one of another connection on this 4-tuple
            // (its SYN not seen) says nothing of this one's bytes.
            if strict
                && flow.confirmed
                && (!syn_ack || answers_syn)
                && let Ok(off) = unwrap_around(seg.ack.wrapping_sub(flow.base), flow.asm.acked())
            {
                if flow.given_up {
                    self.stats.given_up_acked_bytes += flow.asm.acknowledge_stopped(off);
                } else {
                    if off > flow.asm.acked() {
                        flow.progress_at = now;
                    }
                    if run_asm(flow, key, &mut self.stats, &mut self.total_pending, out, |asm, emit| {
                        asm.acknowledge(off, now, emit)
                    }) {
                        self.rearm(key);
                    }
                }
            }
        }
        if self.cfg.responses {
            self.response_segment(key, &seg, syn_ack, now, out);
        }
        if seg.flags & TCP_RST != 0 {
            self.close(key, CloseReason::Rst, out);
        }
        // A flow its acknowledgement finished is closed by `on_segment`.
    }

    /// A server segment's bytes, for a flow whose responses are reassembled: the SYN-ACK sets
    /// where the server's stream starts (see `flow/reverse.rs`).
    fn response_segment(
        &mut self,
        key: FlowKey,
        seg: &Segment,
        syn_ack: bool,
        now: Duration,
        out: &mut Vec<(FlowKey, StreamEvent)>,
    ) {
        let Some(flow) = self.flows.get_mut(&key) else { return };
        if syn_ack && flow.syn_seen && !flow.given_up && flow.asm.next_offset() == 0 {
            flow.reverse = Some(Box::new(Reverse::new(seg.seq.wrapping_add(1))));
        }
        let Some(rev) = flow.reverse.as_mut() else { return };
        let before = rev.buffered();
        let emit = emitter(key, &mut self.stats, out);
        let room = self.buffer_limit.saturating_sub(self.total_pending + self.reverse_pending);
        if rev.on_segment(seg, now, &self.cfg, room, emit) {
            self.stats.buffer_overflows += 1;
        }
        self.reverse_pending = self.reverse_pending - before + rev.buffered();
    }

    /// Keeps a SYN-ACK that came before its SYN, forgetting the oldest one kept if there are too
    /// many. O(1) (amortized: entries already taken are skipped once).
    fn file_early_syn_ack(&mut self, key: FlowKey, ack: u32, window: u16, wscale: Option<u8>, now: Duration) {
        self.early_syn_acks.insert(key, (ack, now, window, wscale));
        self.early_order.push_back((key, now));
        while self.early_order.len() > MAX_EARLY_SYN_ACKS {
            let Some((old, at)) = self.early_order.pop_front() else { break };
            if self.early_syn_acks.get(&old).is_some_and(|&(_, t, _, _)| t == at) {
                self.early_syn_acks.remove(&old);
            }
        }
    }
}
