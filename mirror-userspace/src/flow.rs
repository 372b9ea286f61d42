//! TCP flow reassembly, sans-IO: segments and timestamps in, each client→server byte stream out in
//! order, with explicit gaps and closes.
//!
//! Only the client→server direction is seen (TC ingress on the primary's interface). Sequence
//! numbers are unwrapped to 64-bit stream offsets, so 32-bit wrap is invisible above this layer.
//! Out-of-order segments wait in a bounded buffer; a hole that stays open longer than
//! `reorder_timeout`, or that would make the buffer exceed its bound, becomes a [`StreamEvent::Gap`]
//! and the bytes after it are delivered. Overlaps keep the first copy delivered.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    time::Duration,
};

use bytes::Bytes;
use mirror_common::{TCP_FIN, TCP_RST, TCP_SYN};

/// Client and server ends of a connection, seen from the client's segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

impl std::fmt::Display for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}->{}", self.client, self.server)
    }
}

/// One client→server TCP segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub key: FlowKey,
    pub seq: u32,
    pub flags: u8,
    pub payload: Bytes,
}

/// What happened on a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// A new flow. `midstream`: its start (SYN) was not seen, so the first byte delivered is not
    /// necessarily the start of a request.
    Open {
        midstream: bool,
    },
    /// The next bytes of the stream, in order.
    Data(Bytes),
    /// This many bytes were never seen; the next `Data` follows them.
    Gap(u64),
    Close(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    Fin,
    Rst,
    Idle,
    /// Evicted to make room (flow table full).
    Evicted,
    /// A new connection (SYN with another ISN) reused the same addresses and ports.
    Reused,
    /// End of input (offline replay) or shutdown.
    Shutdown,
}

#[derive(Debug, Clone)]
pub struct FlowConfig {
    pub max_flows: usize,
    /// Out-of-order bytes buffered per flow before the hole is declared a gap.
    pub max_flow_buffer: usize,
    /// Out-of-order bytes buffered over all flows.
    pub max_total_buffer: usize,
    pub idle_timeout: Duration,
    /// How long a hole may stay open waiting for a late or retransmitted segment.
    pub reorder_timeout: Duration,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            max_flows: 65_536,
            // Out-of-order data only waits for a late segment (reorder timeout): a little per
            // flow, and a bound over all flows that caps memory when the ring loses segments.
            max_flow_buffer: 1024 * 1024,
            max_total_buffer: 64 * 1024 * 1024,
            idle_timeout: Duration::from_secs(120),
            reorder_timeout: Duration::from_millis(500),
        }
    }
}

/// Counters of what the flow layer did (all monotonic).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlowStats {
    pub segments: u64,
    #[serde(rename = "opened")]
    pub flows_opened: u64,
    #[serde(rename = "midstream")]
    pub flows_midstream: u64,
    pub retransmitted_segments: u64,
    pub out_of_order_segments: u64,
    pub gaps: u64,
    pub gap_bytes: u64,
    pub closed_fin: u64,
    pub closed_rst: u64,
    pub closed_idle: u64,
    pub evicted: u64,
    pub reused: u64,
    /// Segments dropped because the global out-of-order budget was spent.
    pub buffer_overflows: u64,
}

#[derive(Debug)]
struct Flow {
    /// Sequence number of stream offset 0.
    base: u32,
    syn_seen: bool,
    /// Next stream offset to deliver.
    next: u64,
    /// Out-of-order data by stream offset.
    pending: BTreeMap<u64, Bytes>,
    pending_bytes: usize,
    /// Stream offset of the FIN, once seen.
    fin_at: Option<u64>,
    last_seen: Duration,
    /// When the current hole (pending data beyond `next`) opened.
    hole_since: Option<Duration>,
}

impl Flow {
    fn new(base: u32, syn_seen: bool, now: Duration) -> Self {
        Self {
            base,
            syn_seen,
            next: 0,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            fin_at: None,
            last_seen: now,
            hole_since: None,
        }
    }

    /// Stream offset of `seq`, unwrapped around the next expected offset. Negative offsets (bytes
    /// before the stream's start) come back as `None` with how many bytes to trim.
    fn offset_of(&self, seq: u32) -> Result<u64, u64> {
        let rel = seq.wrapping_sub(self.base);
        let delta = rel.wrapping_sub(self.next as u32) as i32 as i64;
        let off = self.next as i64 + delta;
        if off < 0 { Err((-off) as u64) } else { Ok(off as u64) }
    }
}

/// All flows, keyed by [`FlowKey`].
#[derive(Debug, Default)]
pub struct FlowTable {
    cfg: FlowConfig,
    flows: HashMap<FlowKey, Flow>,
    total_pending: usize,
    pub stats: FlowStats,
}

impl FlowTable {
    pub fn new(cfg: FlowConfig) -> Self {
        Self { cfg, flows: HashMap::new(), total_pending: 0, stats: FlowStats::default() }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Bytes held out of order, over all flows.
    pub fn buffered_bytes(&self) -> usize {
        self.total_pending
    }

    /// Feeds one segment seen at `now`; events for it are appended to `out`.
    pub fn on_segment(&mut self, seg: Segment, now: Duration, out: &mut Vec<(FlowKey, StreamEvent)>) {
        self.stats.segments += 1;
        let key = seg.key;
        let syn = seg.flags & TCP_SYN != 0;

        if syn && let Some(flow) = self.flows.get_mut(&key) {
            let isn1 = seg.seq.wrapping_add(1);
            if flow.next == 0 && flow.pending.is_empty() {
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
                && off > flow.next
                && off - flow.next < 1 << 30
            {
                flow.fin_at = Some(flow.fin_at.map_or(off, |f| f.max(off)));
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
        let mut off = match flow.offset_of(data_seq) {
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
        if seg.flags & TCP_FIN != 0 && flow.fin_at.is_none() {
            flow.fin_at = Some(off + payload.len() as u64);
        }

        if !payload.is_empty() {
            let end = off + payload.len() as u64;
            if end <= flow.next {
                self.stats.retransmitted_segments += 1;
            } else {
                if off < flow.next {
                    let _ = payload.split_to((flow.next - off) as usize);
                    off = flow.next;
                }
                if off == flow.next {
                    flow.next = end;
                    out.push((key, StreamEvent::Data(payload)));
                    Self::drain(flow, &mut self.total_pending, key, out);
                } else {
                    self.stats.out_of_order_segments += 1;
                    if self.total_pending + payload.len() > self.cfg.max_total_buffer {
                        // Out of global budget: this segment is lost to us; its hole becomes a gap
                        // when the reorder timer or the flow's end closes it.
                        self.stats.buffer_overflows += 1;
                    } else {
                        let len = payload.len();
                        let replaced = match flow.pending.get(&off) {
                            Some(existing) if existing.len() >= len => None,
                            _ => flow.pending.insert(off, payload).map(|p| p.len()).or(Some(0)),
                        };
                        if let Some(old) = replaced {
                            flow.pending_bytes = flow.pending_bytes + len - old;
                            self.total_pending = self.total_pending + len - old;
                        }
                        if flow.hole_since.is_none() {
                            flow.hole_since = Some(now);
                        }
                        if flow.pending_bytes > self.cfg.max_flow_buffer {
                            Self::skip_hole(flow, &mut self.total_pending, &mut self.stats, key, out);
                        }
                    }
                }
            }
        }

        let flow = self.flows.get_mut(&key).expect("present");
        if flow.fin_at.is_some_and(|f| flow.next >= f) {
            self.close(key, CloseReason::Fin, out);
        }
    }

    /// Advances time: holes open longer than the reorder timeout become gaps, idle flows close.
    pub fn on_tick(&mut self, now: Duration, out: &mut Vec<(FlowKey, StreamEvent)>) {
        let mut idle = Vec::new();
        for (key, flow) in self.flows.iter_mut() {
            if now.saturating_sub(flow.last_seen) >= self.cfg.idle_timeout {
                idle.push(*key);
                continue;
            }
            if flow.hole_since.is_some_and(|t| now.saturating_sub(t) >= self.cfg.reorder_timeout) {
                Self::skip_hole(flow, &mut self.total_pending, &mut self.stats, *key, out);
                if flow.fin_at.is_some_and(|f| flow.next >= f) {
                    idle.push(*key);
                }
            }
        }
        idle.sort();
        for key in idle {
            let fin_done = self.flows.get(&key).is_some_and(|f| f.fin_at.is_some_and(|x| f.next >= x));
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

    fn close(&mut self, key: FlowKey, reason: CloseReason, out: &mut Vec<(FlowKey, StreamEvent)>) {
        let Some(mut flow) = self.flows.remove(&key) else {
            return;
        };
        // Whatever is buffered after holes is still delivered: complete requests behind a hole
        // can be framed after the framer resynchronises.
        while !flow.pending.is_empty() {
            Self::skip_hole(&mut flow, &mut self.total_pending, &mut self.stats, key, out);
        }
        // The FIN (or RST) says how far the stream went: bytes up to it that never came are a gap.
        if let Some(end) = flow.fin_at
            && end > flow.next
        {
            self.stats.gaps += 1;
            self.stats.gap_bytes += end - flow.next;
            out.push((key, StreamEvent::Gap(end - flow.next)));
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

    fn evict_oldest(&mut self, out: &mut Vec<(FlowKey, StreamEvent)>) {
        // O(flows), and only when the table is full.
        if let Some(key) = self.flows.iter().min_by_key(|(k, f)| (f.last_seen, **k)).map(|(k, _)| *k) {
            self.close(key, CloseReason::Evicted, out);
        }
    }

    /// Declares the hole before the first pending segment lost, and delivers what follows it.
    fn skip_hole(
        flow: &mut Flow,
        total: &mut usize,
        stats: &mut FlowStats,
        key: FlowKey,
        out: &mut Vec<(FlowKey, StreamEvent)>,
    ) {
        let Some((&first, _)) = flow.pending.first_key_value() else {
            flow.hole_since = None;
            return;
        };
        if first > flow.next {
            let len = first - flow.next;
            stats.gaps += 1;
            stats.gap_bytes += len;
            out.push((key, StreamEvent::Gap(len)));
            flow.next = first;
        }
        Self::drain(flow, total, key, out);
    }

    /// Delivers pending segments that are now in order.
    fn drain(flow: &mut Flow, total: &mut usize, key: FlowKey, out: &mut Vec<(FlowKey, StreamEvent)>) {
        while let Some(entry) = flow.pending.first_entry() {
            let off = *entry.key();
            if off > flow.next {
                break;
            }
            let mut data = entry.remove();
            flow.pending_bytes -= data.len();
            *total -= data.len();
            let end = off + data.len() as u64;
            if end <= flow.next {
                continue;
            }
            let _ = data.split_to((flow.next - off) as usize);
            flow.next = end;
            out.push((key, StreamEvent::Data(data)));
        }
        flow.hole_since = if flow.pending.is_empty() { None } else { flow.hole_since };
    }
}

#[cfg(test)]
mod tests;
