//! The flow table: which flows exist and when they end. Sequence numbers to stream offsets, SYN
//! and RST handling, the server's acknowledgements, port reuse, eviction, idle and reorder timers,
//! the global buffer budget, giving flows up, and the statistics; each flow's bytes are put in
//! order by its [`Assembler`].

use std::{
    collections::{BTreeSet, VecDeque},
    time::Duration,
};

use mirror_common::{MUTE_SLACK, MUTE_SPAN, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

use super::{
    CloseReason, Direction, FlowConfig, FlowKey, FlowMap, FlowStats, Mute, Segment, StreamEvent,
    assembler::{Assembler, Insert},
    conn::{Flow, emitter},
    lru::{Lru, Tier},
    parked::{Parked, Start, shrink_map},
    reverse::Reverse,
};

#[path = "table/server.rs"]
mod server;

/// All flows, keyed by [`FlowKey`].
///
/// Time is the caller's: a [`Duration`] since any fixed start, the same clock for
/// [`on_segment`](Self::on_segment), [`on_tick`](Self::on_tick) and
/// [`poll_timeout`](Self::poll_timeout), never going backwards.
///
/// Cost, with n flows open: a segment O(log n) (a hash lookup, its flow's place in the eviction
/// order in O(1), its timer in O(log n) when it changes), opening a flow in a full table the same
/// (the flow to evict is the head of a list), a tick O(log n) per flow due, and
/// [`poll_timeout`](Self::poll_timeout) O(1). Only [`close_all`](Self::close_all) looks at every
/// flow.
#[derive(Debug, Default)]
pub struct FlowTable {
    cfg: FlowConfig,
    flows: FlowMap<Flow>,
    /// Every flow, in eviction order (see `flow/lru.rs`).
    lru: Lru,
    /// Every flow with a deadline, by the instant in its [`Flow::timer`].
    timers: BTreeSet<(Duration, FlowKey)>,
    total_pending: usize,
    /// Out-of-order bytes held by the server streams ([`FlowConfig::responses`]).
    reverse_pending: usize,
    /// Strict mode: SYN-ACKs seen before the SYN they answer (capture order across CPUs, or a
    /// capture file's own): acknowledgement and when, by flow. At most [`MAX_EARLY_SYN_ACKS`],
    /// the oldest forgotten first (`early_order`).
    early_syn_acks: FlowMap<(u32, Duration, u16, Option<u8>)>,
    /// The keys of `early_syn_acks` in the order they were filed, with when (an entry taken by
    /// its SYN since is skipped when its turn comes).
    early_order: VecDeque<(FlowKey, Duration)>,
    /// Opening flows put aside by the opening timeout (see `flow/parked.rs`).
    parked: Parked,
    /// Out-of-order bytes allowed over all flows right now: `cfg.max_total_buffer`, or less
    /// while the shared memory budget is short (see [`FlowTable::set_buffer_limit`]).
    buffer_limit: usize,
    /// Mutes asked for and not yet taken ([`FlowTable::take_mutes`]).
    mutes: Vec<Mute>,
    /// What the table did so far.
    pub stats: FlowStats,
}

/// Opening flows (nothing delivered yet) are guaranteed this fraction of the table: a handshake
/// during a flood has (max_flows / this) / (flood rate) seconds to carry its first request.
const OPENING_RESERVE_DIVISOR: usize = 8;

/// Most SYN-ACKs kept waiting for their SYN; beyond it the oldest is forgotten.
const MAX_EARLY_SYN_ACKS: usize = 1024;

impl FlowTable {
    /// An empty table with these bounds and timeouts.
    pub fn new(cfg: FlowConfig) -> Self {
        Self {
            lru: Lru::new(cfg.max_flows / OPENING_RESERVE_DIVISOR),
            buffer_limit: cfg.max_total_buffer,
            parked: Parked::new(cfg.max_flows),
            cfg,
            ..Self::default()
        }
    }

    /// Turns the server streams' reassembly on or off ([`FlowConfig::responses`]) for what comes
    /// from now on; flows whose server stream is being reassembled keep it until they end.
    pub fn set_responses(&mut self, on: bool) {
        self.cfg.responses = on;
    }

    /// Lowers (or restores) the bound on bytes held over all flows to `min(limit,
    /// max_total_buffer)`: a segment that would go beyond it is dropped (counted in
    /// `buffer_overflows`; its hole becomes a gap). Bytes already held stay.
    pub fn set_buffer_limit(&mut self, limit: usize) {
        self.buffer_limit = limit.min(self.cfg.max_total_buffer);
    }

    /// Flows open.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is open.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Bytes held out of order, over all flows (server streams included).
    pub fn buffered_bytes(&self) -> usize {
        self.total_pending + self.reverse_pending
    }

    /// When [`on_tick`](Self::on_tick) next has something to do: the earliest instant at which a
    /// flow may have been idle for the idle timeout, or a hole may have waited the reorder
    /// timeout. `None` when no flow has a timer (nothing will happen until a segment arrives:
    /// clean kept-alive flows wait without one, see [`FlowConfig::idle_timeout`]), or when every
    /// deadline is beyond what a `Duration` holds.
    ///
    /// A tick before this instant does nothing, so the caller may sleep until it (and until the
    /// next segment). It may be earlier than needed, never later: a flow that saw traffic since
    /// its timer was last set is found still busy by that tick, which sets its timer again. It may
    /// also be already past (e.g. more holes are waiting after a tick gave up on one): tick again.
    /// O(1).
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.timers.first().map(|&(at, _)| at)
    }

    /// Feeds one segment seen at `now`, of either direction; events for it are appended to `out`.
    pub fn on_segment(&mut self, seg: Segment, now: Duration, out: &mut Vec<(FlowKey, StreamEvent)>) {
        self.stats.segments += 1;
        let key = seg.key;
        match seg.dir {
            Direction::ToServer => self.on_client_segment(seg, now, out),
            Direction::ToClient => self.on_server_segment(seg, now, out),
        }
        // One look-up: a flow whose every byte up to its FIN was delivered closes (the paths
        // above leave that to here: a flow finished by an earlier segment was closed then), any
        // other is settled (`place`, as `settle(key, true)` does).
        let Some(flow) = self.flows.get(&key) else { return };
        if flow.finished() {
            self.close(key, CloseReason::Fin, out);
        } else if place(&mut self.lru, flow, true) {
            self.rearm(key);
        }
    }

    /// After `key`'s flow changed: moves it to its tier in the eviction order (as the most recent
    /// flow there if `active`: it just saw a segment), and files it under a deadline again if it
    /// had none (a kept-alive flow that was idle). O(1), or O(log n) when its timer is filed.
    fn settle(&mut self, key: FlowKey, active: bool) {
        if self.flows.get(&key).is_some_and(|flow| place(&mut self.lru, flow, active)) {
            self.rearm(key);
        }
    }

    /// A client→server segment: SYN, RST, FIN and the bytes of the stream.
    fn on_client_segment(&mut self, seg: Segment, now: Duration, out: &mut Vec<(FlowKey, StreamEvent)>) {
        let key = seg.key;
        let strict = self.cfg.require_ack;
        let syn = seg.flags & TCP_SYN != 0;
        let rst = seg.flags & TCP_RST != 0;
        if !syn && !rst && seg.flags & TCP_ACK == 0 {
            // Linux discards a segment with neither SYN, RST nor ACK (RFC 9293 §3.10.7.4): its
            // bytes never reach the server.
            self.stats.segments_without_ack += 1;
            return;
        }

        if syn && let Some(flow) = self.flows.get_mut(&key) {
            // The kernel took the 4-tuple's mute out at this SYN (whoever sent it). Undone here
            // too, in case the mute went in after the SYN went by; asked for again if this flow
            // goes on.
            if flow.muted_from.take().is_some() {
                self.mutes.push(Mute::Off(key));
            }
            let isn1 = seg.seq.wrapping_add(1);
            let fresh = flow.asm.next_offset() == 0 && !flow.asm.has_pending();
            if fresh && !flow.given_up {
                // Nothing delivered yet: the SYN (or a new SYN after a failed attempt) sets the base.
                if flow.base != isn1 {
                    // Another connection: the old one's windows are not its own.
                    flow.scales.syn_ack = None;
                    flow.server_window = 0;
                }
                flow.base = isn1;
                flow.syn_seen = true;
                flow.syn_len = seg.len;
                flow.confirmed = false;
                flow.pending_isn = None;
            } else if flow.base == isn1 || (!flow.syn_seen && flow.offset_of(isn1).is_err_and(|d| d < 1 << 20)) {
                // A retransmitted SYN, or a late one for a flow picked up mid-stream.
                flow.syn_seen = true;
            } else if strict {
                // A SYN with a new ISN on a flow that already carried bytes (or was given up): a
                // new connection once the server answers it with a SYN-ACK.
                flow.pending_isn = Some((isn1, seg.len, seg.wscale));
                return;
            } else {
                // Without the server's side: the 4-tuple was reused by a new connection.
                self.stats.reused += 1;
                self.close(key, CloseReason::Reused, out);
            }
        }

        if !self.flows.contains_key(&key) {
            let parked = self.parked.take(&key);
            if rst {
                return;
            }
            if let Some(start) = parked
                && !syn
                && !seg.payload.is_empty()
            {
                // Its first bytes: taken up where it was.
                self.stats.unparked += 1;
                self.open(key, start.base, Some(start.syn_len), now, out);
                let flow = self.flows.get_mut(&key).expect("opened");
                flow.confirmed = true;
                flow.server_ack = start.server_ack;
                flow.scales = start.scales;
                if let Some(ack) = start.server_ack {
                    flow.asm.acknowledge(u64::from(ack.wrapping_sub(start.base)), now, |_| {});
                }
            } else {
                if seg.payload.is_empty() && !syn {
                    // A bare ACK or FIN of a connection we never saw carry data: nothing to follow.
                    return;
                }
                let (base, syn_len) = if syn { (seg.seq.wrapping_add(1), Some(seg.len)) } else { (seg.seq, None) };
                self.open(key, base, syn_len, now, out);
            }
        }

        if rst {
            let flow = self.flows.get_mut(&key).expect("inserted above");
            if strict {
                if !flow.accepts_rst(seg.seq) {
                    self.stats.rst_ignored += 1;
                    return;
                }
            } else if let Ok(off) = flow.offset_of(seg.seq)
                && off > flow.asm.next_offset()
                && off - flow.asm.next_offset() < 1 << 30
            {
                // Bytes sent before the RST that we never saw are a gap too.
                flow.asm.extend_fin(off);
            }
            self.close(key, CloseReason::Rst, out);
            return;
        }
        let flow = self.flows.get_mut(&key).expect("inserted above");
        flow.last_seen = now;
        if syn && flow.base == seg.seq.wrapping_add(1) {
            flow.scales.syn = seg.wscale;
        }
        if self.cfg.responses && flow.reverse.is_none() && flow.syn_seen && !syn && seg.flags & TCP_ACK != 0 {
            // The SYN-ACK was not seen: the client's handshake ACK says where the server's
            // stream starts (its first ACK, before any request byte was delivered).
            if flow.asm.next_offset() == 0 && !flow.given_up {
                flow.reverse = Some(Box::new(Reverse::new(seg.ack)));
            }
        }
        let fin = seg.flags & TCP_FIN != 0;
        flow.client_fin |= fin;
        if flow.given_up {
            if self.cfg.mute_given_up && !seg.payload.is_empty() && flow.server_ack.is_some() {
                // Its bytes still come after it was given up: they are not needed. (Only once
                // the server acknowledged something of it: a spoofed flow costs no system call,
                // and a flow opened by this segment has no acknowledgement yet.)
                ask_mute(flow, key, seg.seq, &mut self.mutes);
            }
            // Measured only (see `given_up_acked_bytes`), within what the server's window lets
            // the client send: a segment of another connection on this 4-tuple is not this one's.
            let window = flow.server_window.max(1 << 16);
            // (Its length on the wire: a muted flow's segments come without their payload.)
            if !syn
                && let Ok(off) = flow.offset_of(seg.seq)
                && let end = off + u64::from(seg.len)
                && end <= flow.asm.acked() + window
            {
                flow.asm.seen_stopped(end);
            }
            if fin {
                self.close(key, CloseReason::Fin, out);
            }
            return;
        }
        if syn && seg.payload.is_empty() {
            return;
        }
        // Data of a SYN segment (TCP Fast Open) starts after the SYN's sequence number.
        let data_seq = if syn { seg.seq.wrapping_add(1) } else { seg.seq };
        let mut payload = seg.payload;
        let off = match flow.offset_of(data_seq) {
            Ok(off) => off,
            Err(before) => {
                if before >= payload.len() as u64 {
                    self.stats.retransmitted_segments += 1;
                    return;
                }
                let source = payload.len();
                let _ = payload.split_to(before as usize);
                payload = super::assembler::own_if_short(payload, source);
                0
            }
        };
        if fin {
            flow.asm.set_fin(off + payload.len() as u64);
        }

        if !payload.is_empty() {
            let room = self.buffer_limit.saturating_sub(self.total_pending);
            if flow.asm.buffered() == 0 {
                // Holding starts now: a burst after a quiet spell is not a stall.
                flow.progress_at = now;
            }
            let max_flow_buffer = if strict && !flow.stalled(now, &self.cfg) {
                flow.hold_bound(self.cfg.max_flow_buffer, self.buffer_limit / 4)
            } else {
                self.cfg.max_flow_buffer
            };
            let mut result = Insert::Duplicate;
            let hole_moved = run_asm(flow, key, &mut self.stats, &mut self.total_pending, out, |asm, emit| {
                result = asm.insert(off, payload, now, room, &mut *emit);
                if asm.buffered() > max_flow_buffer {
                    // Out of room for this flow: in strict mode the flow is given up (its bytes
                    // may never be acknowledged: a peer that never answers), otherwise the first
                    // hole becomes a gap.
                    if strict {
                        asm.finish(emit);
                    } else {
                        asm.skip_hole(emit);
                    }
                }
            });
            if hole_moved || (strict && flow.asm.buffered() > self.cfg.max_flow_buffer) {
                // (Beyond the allowance, a stall deadline applies.)
                self.rearm(key);
            }
            match result {
                Insert::Duplicate => self.stats.retransmitted_segments += 1,
                Insert::InOrder => {}
                Insert::Conflict => self.stats.conflicting_copies += 1,
                Insert::NoRoom => {
                    // Out of global budget: this segment is lost to us; its hole becomes a gap
                    // when the reorder timer or the flow's end closes it.
                    self.stats.out_of_order_segments += 1;
                    self.stats.buffer_overflows += 1;
                }
                Insert::Buffered => self.stats.out_of_order_segments += 1,
            }
        }
    }

    /// Opens a flow whose stream starts at sequence number `base`: after a SYN carrying `syn_len`
    /// bytes, or picked up mid-stream (`None`: given up at once in strict mode). Makes room in the
    /// table first.
    fn open(
        &mut self,
        key: FlowKey,
        base: u32,
        syn_len: Option<u32>,
        now: Duration,
        out: &mut Vec<(FlowKey, StreamEvent)>,
    ) {
        let strict = self.cfg.require_ack;
        if self.flows.len() >= self.cfg.max_flows
            && let Some(victim) = self.lru.oldest()
        {
            self.close(victim, CloseReason::Evicted, out);
        }
        let syn = syn_len.is_some();
        let slot = self.lru.insert(key, Tier::Opening);
        let mut flow = Flow::new(base, syn, syn_len.unwrap_or(0), now, strict, slot);
        if let Some((ack, at, window, wscale)) = self.early_syn_acks.remove(&key)
            && syn
            && flow.syn_ack_matches(ack)
            && now.saturating_sub(at) <= self.cfg.reorder_timeout
        {
            // The SYN-ACK came first: the server accepted this connection already.
            flow.confirmed = true;
            flow.server_ack = Some(ack);
            flow.asm.acknowledge(u64::from(ack.wrapping_sub(base)), now, |_| {});
            flow.scales.syn_ack_seen(wscale);
            flow.server_window = u64::from(window);
        }
        self.stats.flows_opened += 1;
        if !syn {
            self.stats.flows_midstream += 1;
            if strict {
                // Where its requests start is unknown: resynchronising could take body bytes for
                // a request line.
                flow.given_up = true;
                flow.asm.clear();
                self.stats.flows_given_up_midstream += 1;
            }
        }
        self.lru.touch(slot, flow.tier());
        self.flows.insert(key, flow);
        self.rearm(key);
        out.push((key, StreamEvent::Open { midstream: !syn }));
    }

    /// Gives up flow `key` after a gap its reader cannot frame past: nothing more of it is held
    /// or delivered (its FIN, RST or the idle timeout still closes it).
    pub fn give_up(&mut self, key: FlowKey) {
        let Some(flow) = self.flows.get_mut(&key).filter(|f| !f.given_up) else { return };
        let buffered = flow.asm.buffered();
        flow.given_up = true;
        flow.asm.clear();
        self.stats.flows_given_up_gap += 1;
        self.stats.unacked_bytes += flow.asm.take_dropped_unacked();
        self.total_pending -= buffered;
        self.settle(key, false);
    }

    /// Moves the mutes asked for since the last call to `out` (in the order asked: an `Off` after
    /// an `On` of the same flow undoes it). Only with [`FlowConfig::mute_given_up`].
    pub fn take_mutes(&mut self, out: &mut Vec<Mute>) {
        out.append(&mut self.mutes);
    }

    /// Runs `f` on `key`'s assembler with an emitter for its events, then settles the table: the
    /// global budget, giving the flow up if its stream was ended, its timer.
    fn with_asm(
        &mut self,
        key: FlowKey,
        out: &mut Vec<(FlowKey, StreamEvent)>,
        f: impl FnOnce(&mut Assembler, &mut dyn FnMut(StreamEvent)),
    ) {
        let Some(flow) = self.flows.get_mut(&key) else { return };
        if run_asm(flow, key, &mut self.stats, &mut self.total_pending, out, f) {
            self.rearm(key);
        }
    }

    /// Advances time: holes open longer than the reorder timeout become gaps (one hole per flow
    /// and tick), idle flows close (clean kept-alive ones stay, without a timer until their next
    /// segment: see [`FlowConfig::idle_timeout`]). Only flows whose timer is due at `now` are
    /// looked at.
    pub fn on_tick(&mut self, now: Duration, out: &mut Vec<(FlowKey, StreamEvent)>) {
        let due = self.timers.iter().take_while(|&&(at, _)| at <= now).map(|&(_, k)| k).collect();
        self.tick_flows(due, now, out);
    }

    /// [`on_tick`](Self::on_tick) without the timers: looks at every flow, as the table did
    /// before it had timers. The reference that `on_tick` and `poll_timeout` are tested against.
    #[cfg(test)]
    pub(super) fn on_tick_scanning_all(&mut self, now: Duration, out: &mut Vec<(FlowKey, StreamEvent)>) {
        let all = self.flows.keys().copied().collect();
        self.tick_flows(all, now, out);
    }

    /// Ticks the flows in `due`: closes the idle ones (a clean kept-alive flow only loses its
    /// timer), gives up on the holes that waited long enough, and files the others under their
    /// deadlines.
    fn tick_flows(&mut self, mut due: Vec<FlowKey>, now: Duration, out: &mut Vec<(FlowKey, StreamEvent)>) {
        due.sort();
        let (mut closing, mut parking) = (Vec::new(), Vec::new());
        for key in due {
            let Some(flow) = self.flows.get_mut(&key) else { continue };
            if flow.idle_at(now, &self.cfg) {
                if flow.parks(self.cfg.require_ack) {
                    parking.push(key);
                } else if flow.keeps_alive(self.cfg.require_ack) {
                    // Quiet, not dead: filed again by its next segment.
                    if let Some(at) = flow.timer.take() {
                        self.timers.remove(&(at, key));
                        self.stats.kept_alive += 1;
                    }
                } else {
                    closing.push(key);
                }
                continue;
            }
            if flow.stalled(now, &self.cfg) {
                // Held beyond the allowance with no acknowledgement for a reorder timeout: bytes
                // the server will never take (see `Flow::stall_deadline`).
                self.with_asm(key, out, |asm, emit| asm.finish(emit));
            } else if flow.hole_due_at(now, &self.cfg) {
                self.with_asm(key, out, |asm, emit| {
                    asm.skip_hole(emit);
                });
                if self.flows.get(&key).is_some_and(Flow::finished) {
                    closing.push(key);
                    continue;
                }
            }
            // Busy since its timer was set, or another hole waits: file it under its deadline
            // (its entry fired: it goes, and a new one is filed).
            if let Some(at) = self.flows.get_mut(&key).and_then(|f| f.timer.take()) {
                self.timers.remove(&(at, key));
            }
            self.rearm(key);
            self.settle(key, false);
        }
        for key in closing {
            let fin_done = self.flows.get(&key).is_some_and(Flow::finished);
            self.close(key, if fin_done { CloseReason::Fin } else { CloseReason::Idle }, out);
        }
        for key in parking {
            let Some(flow) = self.flows.get(&key) else { continue };
            let start =
                Start { base: flow.base, syn_len: flow.syn_len, server_ack: flow.server_ack, scales: flow.scales };
            self.close(key, CloseReason::Idle, out);
            self.parked.park(key, start);
            self.stats.parked += 1;
        }
        // After a flood: give the room of the emptied maps back.
        shrink_map(&mut self.flows);
        self.parked.shrink();
    }

    /// Parked flows (see [`FlowConfig::opening_timeout`]).
    pub fn parked_len(&self) -> usize {
        self.parked.len()
    }

    /// Closes every flow (end of a capture, shutdown), delivering what is buffered across gaps.
    pub fn close_all(&mut self, out: &mut Vec<(FlowKey, StreamEvent)>) {
        let mut keys: Vec<FlowKey> = self.flows.keys().copied().collect();
        keys.sort();
        for key in keys {
            self.close(key, CloseReason::Shutdown, out);
        }
    }

    /// Files `key`'s flow in [`timers`](Self::timers) under its current deadline. A deadline
    /// that moved later (every segment pushes the idle deadline on) keeps the earlier entry: when
    /// it fires, the flow is looked at and filed again under its real deadline. So the timers are
    /// touched once per idle period of a busy flow, not at every segment; they may fire early,
    /// never late.
    fn rearm(&mut self, key: FlowKey) {
        let Some(flow) = self.flows.get_mut(&key) else { return };
        let at = flow.deadline(&self.cfg);
        if at == flow.timer || at.zip(flow.timer).is_some_and(|(at, old)| at > old) {
            return;
        }
        if let Some(old) = flow.timer {
            self.timers.remove(&(old, key));
        }
        if let Some(at) = at {
            self.timers.insert((at, key));
        }
        flow.timer = at;
    }

    fn close(&mut self, key: FlowKey, reason: CloseReason, out: &mut Vec<(FlowKey, StreamEvent)>) {
        let Some(mut flow) = self.flows.remove(&key) else {
            return;
        };
        if let Some(at) = flow.timer {
            self.timers.remove(&(at, key));
        }
        self.lru.remove(flow.lru);
        if flow.muted_from.is_some() {
            self.mutes.push(Mute::Off(key));
        }
        // Without strict mode, whatever is buffered after holes is still delivered: complete
        // requests behind a hole can be framed after the framer resynchronises, and the FIN (or
        // RST) says how far the stream went: bytes up to it that never came are a gap. In strict
        // mode nothing more is delivered: what is left, held bytes the server never acknowledged
        // included, is one last gap.
        self.total_pending -= flow.asm.buffered();
        flow.asm.finish(emitter(key, &mut self.stats, out));
        self.stats.unacked_bytes += flow.asm.take_dropped_unacked();
        if let Some(rev) = flow.reverse.as_mut() {
            self.reverse_pending -= rev.buffered();
            rev.finish(emitter(key, &mut self.stats, out));
        }
        match reason {
            CloseReason::Fin => self.stats.closed_fin += 1,
            CloseReason::Rst => self.stats.closed_rst += 1,
            CloseReason::Idle => self.stats.closed_idle += 1,
            CloseReason::Evicted => self.stats.evicted += 1,
            CloseReason::Reused | CloseReason::Shutdown => {}
        }
        out.push((key, StreamEvent::Close(reason)));
    }
}

/// [`FlowTable::settle`] on a flow already looked up: moves it in the eviction order; returns
/// whether it has no timer (the caller then files one with [`FlowTable::rearm`]).
fn place(lru: &mut Lru, flow: &Flow, active: bool) -> bool {
    let tier = flow.tier();
    if active || lru.tier_of(flow.lru) != tier {
        lru.touch(flow.lru, tier);
    }
    flow.timer.is_none()
}

/// [`FlowTable::with_asm`] on a flow already looked up (the table's fields it needs, apart):
/// runs `f` on `flow`'s assembler, gives the flow up if its stream was ended at its buffer bound,
/// and keeps the global count of held bytes. Returns whether its hole moved: the caller then
/// files its timer again ([`FlowTable::rearm`]).
fn run_asm(
    flow: &mut Flow,
    key: FlowKey,
    stats: &mut FlowStats,
    total_pending: &mut usize,
    out: &mut Vec<(FlowKey, StreamEvent)>,
    f: impl FnOnce(&mut Assembler, &mut dyn FnMut(StreamEvent)),
) -> bool {
    let hole_before = flow.asm.hole_since();
    let buffered_before = flow.asm.buffered();
    f(&mut flow.asm, &mut emitter(key, stats, out));
    if flow.asm.is_stopped() && !flow.given_up {
        // Ended at its buffer bound (strict mode: a peer that never answers).
        flow.given_up = true;
        stats.flows_given_up_gap += 1;
    }
    stats.unacked_bytes += flow.asm.take_dropped_unacked();
    *total_pending = *total_pending - buffered_before + flow.asm.buffered();
    flow.asm.hole_since() != hole_before
}

/// Asks the capture to mute given-up `flow`, whose client segment at `seq` still came with its
/// payload: once, and again when the client went half a [`MUTE_SPAN`] past where the last mute
/// began (so that a long-lived given-up connection stays muted). Only a flow whose bytes keep
/// coming after it was given up is asked for (a one-segment flow picked up mid-stream, a flood's,
/// costs no system call). The mute begins [`MUTE_SLACK`] before where the flow stands.
fn ask_mute(flow: &mut Flow, key: FlowKey, seq: u32, mutes: &mut Vec<Mute>) {
    // The assembler of a given-up flow starts past everything known, then follows the client's
    // bytes seen and the server's acknowledgements of them. A flow never confirmed (picked up
    // mid-stream) takes no acknowledgement: there the segment itself says where the client is.
    let at = if flow.confirmed { flow.base.wrapping_add(flow.asm.acked() as u32) } else { seq };
    let from_seq = at.wrapping_sub(MUTE_SLACK);
    let ahead = |a: u32, b: u32, by: u32| (by..1 << 31).contains(&a.wrapping_sub(b));
    // A SYN of another ISN waits for the server's answer (strict mode): the kernel took the mute
    // out at that SYN, and the 4-tuple may be a new connection's by now. Asked again only once
    // the server acknowledged more of this connection since, which ends the wait (the SYN was a
    // stray or a forgery, answered by a challenge ACK); its SYN-ACK would make a new flow.
    if flow.pending_isn.is_some() {
        return;
    }
    // Again once the client went half a span on and, if confirmed, the server's acknowledgements
    // followed (there a segment far ahead alone, forged or not, asks for nothing); never for
    // bytes sent before the last mute took effect.
    let due =
        flow.muted_from.is_none_or(|from| ahead(seq, from, MUTE_SPAN / 2) && ahead(from_seq, from, MUTE_SPAN / 4));
    if due {
        flow.muted_from = Some(from_seq);
        mutes.push(Mute::On { key, from_seq });
    }
}
