//! One flow's connection state: where its stream starts, what the server acknowledged and
//! answered, its FIN and SYNs, its timers, and what is at stake if it were evicted; its bytes are
//! put in order by its [`Assembler`].

use std::time::Duration;

use super::{
    FlowConfig, FlowKey, FlowStats, StreamEvent,
    assembler::Assembler,
    lru::{Slot, Tier},
};

#[derive(Debug)]
pub(super) struct Flow {
    /// Sequence number of stream offset 0.
    pub(super) base: u32,
    pub(super) syn_seen: bool,
    pub(super) last_seen: Duration,
    /// Its place in the table's eviction order.
    pub(super) lru: Slot,
    /// The instant this flow is filed under in the table's timers: never later than its
    /// [`deadline`](Flow::deadline) (traffic since it was filed only moves the deadline later).
    pub(super) timer: Option<Duration>,
    pub(super) asm: Assembler,
    /// Strict mode: nothing more of this flow is delivered (after a gap, or picked up mid-stream).
    pub(super) given_up: bool,
    /// Where the capture was last asked to mute this given-up flow from ([`super::Mute::On`]).
    pub(super) muted_from: Option<u32>,
    /// The server's latest acknowledgement number: the next sequence number its TCP expects.
    pub(super) server_ack: Option<u32>,
    /// A client FIN was seen.
    pub(super) client_fin: bool,
    /// Strict mode: the server answered the SYN that set `base` with a SYN-ACK, so its
    /// acknowledgements are this connection's (a flow opened by a SYN delivers nothing before).
    pub(super) confirmed: bool,
    /// Bytes of TCP Fast Open data the SYN that set `base` carried: its SYN-ACK may acknowledge
    /// them too.
    pub(super) syn_len: u32,
    /// Strict mode: a SYN with another ISN was seen while this flow carried bytes: (its sequence
    /// number plus one, its data length). The 4-tuple is reused once the server's SYN-ACK
    /// acknowledges it (a SYN the server answers with a challenge ACK leaves this flow as it was).
    pub(super) pending_isn: Option<(u32, u32, Option<u8>)>,
    /// The server's stream, when responses are reassembled ([`FlowConfig::responses`]) and its
    /// start is known. Boxed: an assembler inline would cost every flow (a SYN flood's too) its
    /// ~140 bytes, for a stream only compared ports have.
    pub(super) reverse: Option<Box<super::reverse::Reverse>>,
    /// The handshake's window scale options, which say how the server's windows are scaled.
    pub(super) scales: Scales,
    /// The window (bytes) the server's latest segment advertised: how far beyond its
    /// acknowledgement the client may send, and so how much unacknowledged data this flow may
    /// rightly hold in strict mode ([`Flow::hold_bound`]).
    pub(super) server_window: u64,
    /// Strict mode: the last time this flow held nothing or the server's acknowledgement moved.
    /// The window may be held beyond the per-flow allowance only while this is recent
    /// ([`Flow::stall_deadline`]): bytes in flight are acknowledged as they arrive, bytes the
    /// server dropped (a bad checksum, a copy it never got) stall it.
    pub(super) progress_at: Duration,
}

/// The window scale options of a connection's handshake: the SYN's (only whether it had one
/// matters) and the SYN-ACK's, once seen (`Some(None)`: seen without one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Scales {
    pub(super) syn: Option<u8>,
    pub(super) syn_ack: Option<Option<u8>>,
}

impl Scales {
    /// The shift of the server's windows after its SYN-ACK. RFC 7323 §2.2: the scale applies only
    /// if both SYNs carried the option; Linux caps it at 14. A SYN-ACK never seen leaves the
    /// windows unscaled: an underestimate.
    pub(super) fn shift(self) -> u8 {
        match self {
            Self { syn: Some(_), syn_ack: Some(Some(shift)) } => shift.min(14),
            _ => 0,
        }
    }

    /// A sighting of the SYN-ACK. One without options (a classifier's tail of its payload, or an
    /// older classifier) says nothing about an option already seen.
    pub(super) fn syn_ack_seen(&mut self, wscale: Option<u8>) {
        if wscale.is_some() || self.syn_ack.is_none() {
            self.syn_ack = Some(wscale);
        }
    }
}

impl Flow {
    pub(super) fn new(base: u32, syn_seen: bool, syn_len: u32, now: Duration, strict: bool, lru: Slot) -> Self {
        Self {
            base,
            syn_seen,
            last_seen: now,
            lru,
            timer: None,
            asm: Assembler::new(strict),
            given_up: false,
            muted_from: None,
            server_ack: None,
            client_fin: false,
            confirmed: false,
            syn_len,
            pending_isn: None,
            reverse: None,
            scales: Scales::default(),
            server_window: 0,
            progress_at: now,
        }
    }

    /// Takes the window a server segment advertised: a SYN-ACK's is unscaled and its option
    /// sets the shift of those that follow ([`Scales::shift`]).
    pub(super) fn server_advertised(&mut self, seg: &super::Segment, syn_ack: bool) {
        if syn_ack {
            self.scales.syn_ack_seen(seg.wscale);
            self.server_window = u64::from(seg.window);
        } else {
            self.server_window = u64::from(seg.window) << self.scales.shift();
        }
    }

    /// Strict mode: how many bytes this flow may hold before it is given up. Unacknowledged bytes
    /// are rightly as many as the server's window allows (a large upload on a fast link keeps
    /// megabytes in flight), so the bound is `base` (the configured per-flow allowance, which also
    /// covers a window update not seen yet) plus the window the server advertised last, never more
    /// than `cap`.
    pub(super) fn hold_bound(&self, base: usize, cap: usize) -> usize {
        let window = usize::try_from(self.server_window).unwrap_or(usize::MAX);
        base.saturating_add(window).min(cap.max(base))
    }

    /// Strict mode: when a flow holding more than the per-flow allowance (its window's worth)
    /// has gone a reorder timeout without the server acknowledging any of it; it is then given up
    /// (the allowance alone is its bound again). `None` while it holds no more than the allowance.
    pub(super) fn stall_deadline(&self, cfg: &FlowConfig) -> Option<Duration> {
        let over = cfg.require_ack && !self.given_up && self.asm.buffered() > cfg.max_flow_buffer;
        if over { self.progress_at.checked_add(cfg.reorder_timeout) } else { None }
    }

    /// Whether [`stall_deadline`](Self::stall_deadline) has passed at `now`.
    pub(super) fn stalled(&self, now: Duration, cfg: &FlowConfig) -> bool {
        self.stall_deadline(cfg).is_some_and(|at| now >= at)
    }

    /// Whether a server SYN-ACK acknowledging `ack` answers the SYN that set `base` (its
    /// acknowledgement may cover TCP Fast Open data too).
    pub(super) fn syn_ack_matches(&self, ack: u32) -> bool {
        ack.wrapping_sub(self.base) <= self.syn_len
    }

    /// Stream offset of `seq`, unwrapped around the next offset to deliver. Negative offsets
    /// (bytes before the stream's start) come back as `Err` with how many bytes to trim.
    pub(super) fn offset_of(&self, seq: u32) -> Result<u64, u64> {
        unwrap_around(seq.wrapping_sub(self.base), self.asm.next_offset())
    }

    /// Whether a client RST with this sequence number is one the server's TCP accepts (RFC 5961
    /// §3.2, as Linux does): exactly the next sequence number it expects, or one less once the
    /// client's FIN was taken (Linux's allowance in CLOSE-WAIT). Before any acknowledgement was
    /// seen, the expected number is the one after the SYN; mid-stream it is unknown.
    pub(super) fn accepts_rst(&self, seq: u32) -> bool {
        match self.server_ack {
            Some(ack) => seq == ack || (self.client_fin && seq == ack.wrapping_sub(1)),
            None => self.syn_seen && seq == self.base,
        }
    }

    /// Every byte up to its FIN was delivered (and it was not given up): the flow is done.
    pub(super) fn finished(&self) -> bool {
        !self.given_up && self.asm.is_finished()
    }

    /// How much would be lost if it were evicted (see [`Tier`]).
    pub(super) fn tier(&self) -> Tier {
        if self.given_up {
            Tier::Doomed
        } else if self.asm.next_offset() == 0 {
            Tier::Opening
        } else if self.asm.has_pending() || self.asm.hole_since().is_some() {
            Tier::Busy
        } else {
            Tier::Idle
        }
    }

    /// Whether the idle timeout leaves it open: a connection that is established (it delivered
    /// bytes, or in strict mode the server answered its SYN) and *clean* — nothing held, no hole,
    /// no FIN or new SYN waiting for the server — can stay quiet as long as its peers keep it
    /// alive (Envoy: an hour) and go on at exactly the next sequence number. It stays until a
    /// FIN or RST closes it or the table's bound evicts it (as an [`Tier::Idle`] or
    /// [`Tier::Opening`] flow: before any flow carrying data).
    pub(super) fn keeps_alive(&self, strict: bool) -> bool {
        !self.given_up
            && !self.client_fin
            && self.pending_isn.is_none()
            && !self.asm.has_pending()
            && self.asm.hole_since().is_none()
            && (self.asm.next_offset() > 0 || (strict && self.confirmed))
    }

    /// Whether the flow has been idle for the idle timeout at `now`.
    pub(super) fn idle_at(&self, now: Duration, cfg: &FlowConfig) -> bool {
        now.saturating_sub(self.last_seen) >= self.idle_timeout(cfg)
    }

    /// Its idle timeout: the opening timeout while it delivered and holds nothing (see
    /// [`FlowConfig::opening_timeout`]), the idle timeout otherwise.
    pub(super) fn idle_timeout(&self, cfg: &FlowConfig) -> Duration {
        let empty = self.tier() == Tier::Opening && !self.asm.has_pending() && self.asm.hole_since().is_none();
        if empty { cfg.opening_timeout.min(cfg.idle_timeout) } else { cfg.idle_timeout }
    }

    /// Whether the opening timeout parks it rather than keep it: it delivered nothing yet and
    /// would be kept alive (the server answered its SYN; nothing held).
    pub(super) fn parks(&self, strict: bool) -> bool {
        self.tier() == Tier::Opening && self.keeps_alive(strict)
    }

    /// Whether its hole has waited the reorder timeout at `now`.
    pub(super) fn hole_due_at(&self, now: Duration, cfg: &FlowConfig) -> bool {
        self.asm.hole_since().is_some_and(|t| now.saturating_sub(t) >= cfg.reorder_timeout)
    }

    /// The first instant at which a tick has something to do for this flow: close it as idle or
    /// give up on its hole. `None` if that is beyond what a `Duration` holds.
    pub(super) fn deadline(&self, cfg: &FlowConfig) -> Option<Duration> {
        let idle = self.last_seen.checked_add(self.idle_timeout(cfg));
        [idle, self.asm.deadline(cfg.reorder_timeout), self.stall_deadline(cfg)].into_iter().flatten().min()
    }
}

/// Stream offset of a sequence number `rel` bytes past the stream's start (32 bits, wrapped),
/// taken as the one nearest `around`. Negative offsets come back as `Err(how far before 0)`.
pub(super) fn unwrap_around(rel: u32, around: u64) -> Result<u64, u64> {
    let delta = rel.wrapping_sub(around as u32) as i32 as i64;
    let off = around as i64 + delta;
    if off < 0 { Err((-off) as u64) } else { Ok(off as u64) }
}

/// A sink for one flow's events: tags them with its key and counts gaps.
pub(super) fn emitter<'a>(
    key: FlowKey,
    stats: &'a mut FlowStats,
    out: &'a mut Vec<(FlowKey, StreamEvent)>,
) -> impl FnMut(StreamEvent) + 'a {
    move |event| {
        match event {
            StreamEvent::Gap(len) => {
                stats.gaps += 1;
                stats.gap_bytes += len;
            }
            StreamEvent::ReverseGap(len) => {
                stats.response_gaps += 1;
                stats.response_gap_bytes += len;
            }
            _ => {}
        }
        out.push((key, event));
    }
}

#[cfg(test)]
mod tests {
    use super::Scales;

    #[test]
    fn windows_are_scaled_only_if_both_syns_had_the_option() {
        let mut s = Scales { syn: Some(7), syn_ack: None };
        assert_eq!(s.shift(), 0, "no SYN-ACK seen");
        s.syn_ack_seen(Some(9));
        assert_eq!(s.shift(), 9);
        s.syn_ack_seen(None);
        assert_eq!(s.shift(), 9, "a sighting without options keeps what was seen");
        s.syn_ack_seen(Some(20));
        assert_eq!(s.shift(), 14, "capped as Linux does");
        s.syn = None;
        assert_eq!(s.shift(), 0, "the SYN had none");
        let mut t = Scales::default();
        t.syn_ack_seen(None);
        t.syn = Some(7);
        assert_eq!(t.shift(), 0, "the SYN-ACK had none");
    }
}
