//! The flow table: which flows exist and when they end. Sequence numbers to stream offsets, SYN
//! and RST handling, port reuse, eviction, idle and reorder timers, the global out-of-order budget
//! and the statistics; each flow's bytes are put in order by its [`Assembler`].

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use mirror_common::{TCP_FIN, TCP_RST, TCP_SYN};

use super::{
    CloseReason, FlowConfig, FlowKey, FlowStats, Segment, StreamEvent,
    assembler::{Assembler, Insert},
};

#[derive(Debug)]
struct Flow {
    /// Sequence number of stream offset 0.
    base: u32,
    syn_seen: bool,
    last_seen: Duration,
    /// The instant this flow is filed under in [`FlowTable::timers`]: never later than its
    /// [`deadline`](Flow::deadline) (traffic since it was filed only moves the deadline later).
    timer: Option<Duration>,
    asm: Assembler,
}

impl Flow {
    fn new(base: u32, syn_seen: bool, now: Duration) -> Self {
        Self { base, syn_seen, last_seen: now, timer: None, asm: Assembler::new() }
    }

    /// Stream offset of `seq`, unwrapped around the next expected offset. Negative offsets (bytes
    /// before the stream's start) come back as `Err` with how many bytes to trim.
    fn offset_of(&self, seq: u32) -> Result<u64, u64> {
        let next = self.asm.next_offset();
        let rel = seq.wrapping_sub(self.base);
        let delta = rel.wrapping_sub(next as u32) as i32 as i64;
        let off = next as i64 + delta;
        if off < 0 { Err((-off) as u64) } else { Ok(off as u64) }
    }

    /// Whether the flow has been idle for the idle timeout at `now`.
    fn idle_at(&self, now: Duration, cfg: &FlowConfig) -> bool {
        now.saturating_sub(self.last_seen) >= cfg.idle_timeout
    }

    /// Whether its hole has waited the reorder timeout at `now`.
    fn hole_due_at(&self, now: Duration, cfg: &FlowConfig) -> bool {
        self.asm.hole_since().is_some_and(|t| now.saturating_sub(t) >= cfg.reorder_timeout)
    }

    /// The first instant at which a tick has something to do for this flow: close it as idle or
    /// give up on its hole. `None` if that is beyond what a `Duration` holds.
    fn deadline(&self, cfg: &FlowConfig) -> Option<Duration> {
        let idle = self.last_seen.checked_add(cfg.idle_timeout);
        match (idle, self.asm.deadline(cfg.reorder_timeout)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// All flows, keyed by [`FlowKey`].
///
/// Time is the caller's: a [`Duration`] since any fixed start, the same clock for
/// [`on_segment`](Self::on_segment), [`on_tick`](Self::on_tick) and
/// [`poll_timeout`](Self::poll_timeout), never going backwards.
#[derive(Debug, Default)]
pub struct FlowTable {
    cfg: FlowConfig,
    flows: HashMap<FlowKey, Flow>,
    /// Every flow with a deadline, by the instant in its [`Flow::timer`].
    timers: BTreeSet<(Duration, FlowKey)>,
    total_pending: usize,
    /// What the table did so far.
    pub stats: FlowStats,
}

/// A sink for one flow's events: tags them with its key and counts gaps.
fn emitter<'a>(
    key: FlowKey,
    stats: &'a mut FlowStats,
    out: &'a mut Vec<(FlowKey, StreamEvent)>,
) -> impl FnMut(StreamEvent) + 'a {
    move |event| {
        if let StreamEvent::Gap(len) = event {
            stats.gaps += 1;
            stats.gap_bytes += len;
        }
        out.push((key, event));
    }
}

impl FlowTable {
    /// An empty table with these bounds and timeouts.
    pub fn new(cfg: FlowConfig) -> Self {
        Self { cfg, ..Self::default() }
    }

    /// Flows open.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is open.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Bytes held out of order, over all flows.
    pub fn buffered_bytes(&self) -> usize {
        self.total_pending
    }

    /// When [`on_tick`](Self::on_tick) next has something to do: the earliest instant at which a
    /// flow may have been idle for the idle timeout, or a hole may have waited the reorder
    /// timeout. `None` when no flow is open (nothing will happen until a segment arrives), or
    /// when every deadline is beyond what a `Duration` holds.
    ///
    /// A tick before this instant does nothing, so the caller may sleep until it (and until the
    /// next segment). It may be earlier than needed, never later: a flow that saw traffic since
    /// its timer was last set is found still busy by that tick, which sets its timer again. It may
    /// also be already past (e.g. more holes are waiting after a tick gave up on one): tick again.
    /// O(1).
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.timers.first().map(|&(at, _)| at)
    }

    /// Feeds one segment seen at `now`; events for it are appended to `out`.
    pub fn on_segment(&mut self, seg: Segment, now: Duration, out: &mut Vec<(FlowKey, StreamEvent)>) {
        self.stats.segments += 1;
        let key = seg.key;
        let syn = seg.flags & TCP_SYN != 0;

        if syn && let Some(flow) = self.flows.get_mut(&key) {
            let isn1 = seg.seq.wrapping_add(1);
            if flow.asm.next_offset() == 0 && !flow.asm.has_pending() {
                // Nothing delivered yet: the SYN (or a new SYN after a failed attempt) sets the base.
                flow.base = isn1;
                flow.syn_seen = true;
            } else if flow.base == isn1 || (!flow.syn_seen && flow.offset_of(isn1).is_err_and(|d| d < 1 << 20)) {
                // A retransmitted SYN, or a late one for a flow picked up mid-stream.
                flow.syn_seen = true;
            } else {
                // A SYN with a new ISN on a flow that already carried bytes: the 4-tuple was reused.
                self.stats.reused += 1;
                self.close(key, CloseReason::Reused, out);
            }
        }

        if !self.flows.contains_key(&key) {
            if seg.flags & TCP_RST != 0 {
                return;
            }
            if seg.payload.is_empty() && !syn {
                // A bare ACK or FIN of a connection we never saw carry data: nothing to follow.
                return;
            }
            if self.flows.len() >= self.cfg.max_flows {
                self.evict_oldest(out);
            }
            let (base, midstream) = if syn { (seg.seq.wrapping_add(1), false) } else { (seg.seq, true) };
            self.flows.insert(key, Flow::new(base, syn, now));
            self.rearm(key);
            self.stats.flows_opened += 1;
            if midstream {
                self.stats.flows_midstream += 1;
            }
            out.push((key, StreamEvent::Open { midstream }));
        }

        if seg.flags & TCP_RST != 0 {
            // Bytes sent before the RST that we never saw are a gap too.
            if let Some(flow) = self.flows.get_mut(&key)
                && let Ok(off) = flow.offset_of(seg.seq)
                && off > flow.asm.next_offset()
                && off - flow.asm.next_offset() < 1 << 30
            {
                flow.asm.extend_fin(off);
            }
            self.close(key, CloseReason::Rst, out);
            return;
        }
        let flow = self.flows.get_mut(&key).expect("inserted above");
        flow.last_seen = now;
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
                let _ = payload.split_to(before as usize);
                0
            }
        };
        if seg.flags & TCP_FIN != 0 {
            flow.asm.set_fin(off + payload.len() as u64);
        }

        if !payload.is_empty() {
            let hole_before = flow.asm.hole_since();
            let buffered_before = flow.asm.buffered();
            let room = self.cfg.max_total_buffer.saturating_sub(self.total_pending);
            match flow.asm.insert(off, payload, now, room, emitter(key, &mut self.stats, out)) {
                Insert::Duplicate => self.stats.retransmitted_segments += 1,
                Insert::Delivered => {}
                Insert::NoRoom => {
                    // Out of global budget: this segment is lost to us; its hole becomes a gap
                    // when the reorder timer or the flow's end closes it.
                    self.stats.out_of_order_segments += 1;
                    self.stats.buffer_overflows += 1;
                }
                Insert::Buffered => {
                    self.stats.out_of_order_segments += 1;
                    if flow.asm.buffered() > self.cfg.max_flow_buffer {
                        flow.asm.skip_hole(emitter(key, &mut self.stats, out));
                    }
                }
            }
            self.total_pending = self.total_pending - buffered_before + flow.asm.buffered();
            if flow.asm.hole_since() != hole_before {
                self.rearm(key);
            }
        }

        if self.flows.get(&key).is_some_and(|f| f.asm.is_finished()) {
            self.close(key, CloseReason::Fin, out);
        }
    }

    /// Advances time: holes open longer than the reorder timeout become gaps (one hole per flow
    /// and tick), idle flows close. Only flows whose timer is due at `now` are looked at.
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

    /// Ticks the flows in `due`: closes the idle ones, gives up on the holes that waited long
    /// enough, and files the others under their deadlines.
    fn tick_flows(&mut self, mut due: Vec<FlowKey>, now: Duration, out: &mut Vec<(FlowKey, StreamEvent)>) {
        due.sort();
        let mut closing = Vec::new();
        for key in due {
            let Some(flow) = self.flows.get_mut(&key) else { continue };
            if flow.idle_at(now, &self.cfg) {
                closing.push(key);
                continue;
            }
            if flow.hole_due_at(now, &self.cfg) {
                let before = flow.asm.buffered();
                flow.asm.skip_hole(emitter(key, &mut self.stats, out));
                self.total_pending = self.total_pending - before + flow.asm.buffered();
                if flow.asm.is_finished() {
                    closing.push(key);
                    continue;
                }
            }
            // Busy since its timer was set, or another hole waits: file it under its deadline.
            self.rearm(key);
        }
        for key in closing {
            let fin_done = self.flows.get(&key).is_some_and(|f| f.asm.is_finished());
            self.close(key, if fin_done { CloseReason::Fin } else { CloseReason::Idle }, out);
        }
    }

    /// Closes every flow (end of a capture, shutdown), delivering what is buffered across gaps.
    pub fn close_all(&mut self, out: &mut Vec<(FlowKey, StreamEvent)>) {
        let mut keys: Vec<FlowKey> = self.flows.keys().copied().collect();
        keys.sort();
        for key in keys {
            self.close(key, CloseReason::Shutdown, out);
        }
    }

    /// Files `key`'s flow in [`timers`](Self::timers) under its current deadline.
    fn rearm(&mut self, key: FlowKey) {
        let Some(flow) = self.flows.get_mut(&key) else { return };
        let at = flow.deadline(&self.cfg);
        if at == flow.timer {
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
        // Whatever is buffered after holes is still delivered: complete requests behind a hole
        // can be framed after the framer resynchronises. The FIN (or RST) says how far the stream
        // went: bytes up to it that never came are a gap.
        self.total_pending -= flow.asm.buffered();
        flow.asm.finish(emitter(key, &mut self.stats, out));
        match reason {
            CloseReason::Fin => self.stats.closed_fin += 1,
            CloseReason::Rst => self.stats.closed_rst += 1,
            CloseReason::Idle => self.stats.closed_idle += 1,
            CloseReason::Evicted => self.stats.evicted += 1,
            CloseReason::Reused | CloseReason::Shutdown => {}
        }
        out.push((key, StreamEvent::Close(reason)));
    }

    fn evict_oldest(&mut self, out: &mut Vec<(FlowKey, StreamEvent)>) {
        // O(flows), and only when the table is full.
        if let Some(key) = self.flows.iter().min_by_key(|(k, f)| (f.last_seen, **k)).map(|(k, _)| *k) {
            self.close(key, CloseReason::Evicted, out);
        }
    }
}
