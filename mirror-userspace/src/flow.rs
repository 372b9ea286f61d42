//! TCP flow reassembly, sans-IO: segments and timestamps in, each client→server byte stream out in
//! order, with explicit gaps and closes.
//!
//! Both directions are seen: the client's segments with their payload (TC ingress on the primary's
//! interface), the server's as headers only (TC egress). Sequence numbers are unwrapped to 64-bit
//! stream offsets, so 32-bit wrap is invisible above this layer.
//!
//! **Linux's view of the stream, not the wire's** ([`FlowConfig::require_ack`], on by default): a
//! client byte is delivered only once the primary's TCP has acknowledged it, because a copy on the
//! wire may be one the primary's kernel dropped (bad checksum, spoofed source, out of window).
//! Client data segments without ACK are ignored, as Linux ignores them on an established
//! connection; a client RST closes a flow only at exactly the sequence number the server expects
//! next (RFC 5961), a server RST always does; two different copies of the same unacknowledged
//! bytes make that range a gap, never a guess. After a gap, and on a flow picked up mid-stream
//! (no SYN seen), the flow is *given up*: nothing more of it is delivered until it closes, so a
//! resynchronisation can never take body bytes for a request. Bytes never acknowledged are never
//! delivered: at close they are a counted gap. Without `require_ack` (a capture of one direction
//! only) the bytes are delivered as soon as they are in order, overlaps keep the first copy, and
//! framing resynchronises after gaps and on mid-stream flows.
//!
//! Out-of-order segments wait in a bounded buffer; a hole that stays open longer than
//! `reorder_timeout` while bytes after it are due, or that would make the buffer exceed its bound,
//! becomes a [`StreamEvent::Gap`].
//!
//! [`FlowTable`] holds the flows and their policy (SYN, RST, acknowledgements, port reuse,
//! eviction, idle timeout, the buffer budget over all flows, giving up, statistics); each flow's
//! connection state is in `flow/conn.rs`, its bytes are put in order by an `Assembler`
//! (`flow/assembler.rs`), and the order in which a full table evicts is kept by `flow/lru.rs`
//! (every table operation is O(1) or O(log n) in the flows open). [`FlowTable::poll_timeout`]
//! says when the next timer is due.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;

mod assembler;
mod conn;
mod lru;
mod parked;
mod reverse;
mod table;

pub use table::FlowTable;

/// A hash map keyed by flow. The keys are attacker-controlled (a spoofed 4-tuple costs one
/// packet), so the hasher is keyed with a random seed per process and per map (foldhash's
/// `RandomState`): nobody can precompute colliding 4-tuples. It is several times cheaper than
/// std's SipHash for these 36-byte keys, looked up a few times per segment. foldhash only claims
/// "minimal" HashDoS resistance (an attacker able to measure our timings at length could in
/// principle learn the seed); the table's size bound (`flow.maxFlows`) and its eviction order
/// bound what a flood can do either way.
pub type FlowMap<V> = std::collections::HashMap<FlowKey, V, foldhash::fast::RandomState>;

/// Client and server ends of a connection: the same key for the segments of both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowKey {
    /// The client's address and port (the source of its segments, the destination of the server's).
    pub client: SocketAddr,
    /// The server's (the primary's watched) address and port.
    pub server: SocketAddr,
}

/// Each end packed into one or two words: `SocketAddr`'s own `Hash` writes the variant, the
/// address as a length-prefixed byte array and every field apart (flow info and scope id of IPv6
/// included), and hashing flow keys was ~2% of the daemon's CPU at 24,000 req/s (a few lookups
/// per segment). Equal keys write equal words, as `Hash` requires (the IPv6 fields left out only
/// make keys that differ in them alone collide).
impl std::hash::Hash for FlowKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        fn end<H: std::hash::Hasher>(a: &SocketAddr, state: &mut H) {
            match a {
                SocketAddr::V4(v) => state.write_u64((u64::from(v.ip().to_bits()) << 16) | u64::from(v.port())),
                SocketAddr::V6(v) => {
                    state.write_u128(v.ip().to_bits());
                    state.write_u16(v.port());
                }
            }
        }
        end(&self.client, state);
        end(&self.server, state);
    }
}

impl std::fmt::Display for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}->{}", self.client, self.server)
    }
}

/// Which way a segment went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client → server (the primary): the stream that is reassembled, payload included.
    ToServer,
    /// Server → client: headers only; its acknowledgements say which client bytes the primary's
    /// TCP accepted, its RST closes the flow.
    ToClient,
}

/// One TCP segment of a watched connection, in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The connection it belongs to, oriented (client, server) whatever the direction.
    pub key: FlowKey,
    /// Which way it went.
    pub dir: Direction,
    /// TCP sequence number of its first byte (of the SYN itself, if it has one).
    pub seq: u32,
    /// TCP acknowledgement number (meaningful when `flags` has `TCP_ACK`).
    pub ack: u32,
    /// TCP flags (`mirror_common::TCP_*` bits).
    pub flags: u8,
    /// TCP payload length on the wire: `payload.len()` for a client segment captured whole, more
    /// if the capture cut it short, and the server's payload length for a [`Direction::ToClient`]
    /// segment.
    pub len: u32,
    /// The TCP payload as captured (empty for a [`Direction::ToClient`] segment unless its
    /// port's responses are compared).
    pub payload: Bytes,
    /// The TCP header's window field, unscaled (0 when unknown: then nothing is inferred from it).
    pub window: u16,
    /// A SYN's window scale option (RFC 7323 §2), if it had one and it was captured.
    pub wscale: Option<u8>,
}

impl Segment {
    /// A client→server segment carrying `payload` (whole: `len` is its length).
    pub fn to_server(key: FlowKey, seq: u32, ack: u32, flags: u8, payload: Bytes) -> Self {
        let len = payload.len() as u32;
        Self { key, dir: Direction::ToServer, seq, ack, flags, len, payload, window: 0, wscale: None }
    }

    /// A server→client segment's headers: `len` payload bytes on the wire, none captured.
    pub fn to_client(key: FlowKey, seq: u32, ack: u32, flags: u8, len: u32) -> Self {
        Self { key, dir: Direction::ToClient, seq, ack, flags, len, payload: Bytes::new(), window: 0, wscale: None }
    }

    /// Sets the window field and, for a SYN, the window scale found in `options` (the TCP
    /// header's bytes after its fixed 20).
    pub fn with_window(mut self, window: u16, options: &[u8]) -> Self {
        self.window = window;
        if self.flags & mirror_common::TCP_SYN != 0 {
            self.wscale = window_scale(options);
        }
        self
    }
}

/// The window scale option (kind 3, length 3) among TCP `options`, if present and well formed.
/// Options that do not add up (a length under 2 or past the end) end the walk: nothing after them
/// can be trusted.
pub fn window_scale(options: &[u8]) -> Option<u8> {
    const END: u8 = 0;
    const NOP: u8 = 1;
    const WSCALE: u8 = 3;
    let mut rest = options;
    while let Some((&kind, after)) = rest.split_first() {
        match kind {
            END => return None,
            NOP => rest = after,
            _ => {
                let len = usize::from(*after.first()?);
                if len < 2 || len > rest.len() {
                    return None;
                }
                if kind == WSCALE {
                    return (len == 3).then(|| rest[2]);
                }
                rest = &rest[len..];
            }
        }
    }
    None
}

/// What happened on a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// A new flow. `midstream`: its start (SYN) was not seen, so the first byte delivered is not
    /// necessarily the start of a request.
    Open {
        /// The SYN was not seen.
        midstream: bool,
    },
    /// The next bytes of the stream, in order.
    Data(Bytes),
    /// This many bytes were never seen; the next `Data` follows them.
    Gap(u64),
    /// The flow ended; nothing more comes for it (a later segment with its key opens a new one).
    Close(CloseReason),
    /// The next bytes of the server's stream (the primary's responses), in order: only with
    /// [`FlowConfig::responses`], for flows whose start was seen.
    ReverseData(Bytes),
    /// This many bytes of the server's stream were never seen; the next `ReverseData` follows
    /// them.
    ReverseGap(u64),
    /// Every byte of the server's stream up to its FIN was delivered (or declared a gap).
    ReverseFin,
}

/// Why a flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Every byte up to the client's FIN was delivered (or declared a gap); on a given-up flow,
    /// the client's FIN was seen.
    Fin,
    /// The server reset the connection, or the client did with an RST the server accepts.
    Rst,
    /// No segment for the idle timeout (and not a clean kept-alive connection: see
    /// [`FlowConfig::idle_timeout`]).
    Idle,
    /// Evicted to make room (flow table full).
    Evicted,
    /// A new connection (SYN with another ISN) reused the same addresses and ports.
    Reused,
    /// End of input (offline replay) or shutdown.
    Shutdown,
}

/// Bounds and timeouts of a [`FlowTable`].
#[derive(Debug, Clone)]
pub struct FlowConfig {
    /// Flows tracked at once. A new one beyond it evicts the least recently active flow among
    /// those with the least at stake: given-up flows first, then flows that delivered nothing yet
    /// (handshakes: what a SYN flood adds), then clean kept-alive flows, then flows holding bytes
    /// — except that flows that delivered nothing yet keep an eighth of the table, so that a
    /// genuine handshake survives a flood long enough to carry its request. O(1).
    pub max_flows: usize,
    /// Out-of-order bytes buffered per flow before the hole is declared a gap. In strict mode
    /// ([`require_ack`](Self::require_ack)) it bounds every byte a flow holds, acknowledged or
    /// not, and a flow beyond it is given up; there the window the server advertised last is
    /// added to it (bytes in flight are rightly that many), up to a quarter of the reassembly
    /// budget in force, for as long as the server keeps acknowledging: a flow beyond it that
    /// went a [`reorder_timeout`](Self::reorder_timeout) without is given up.
    pub max_flow_buffer: usize,
    /// Out-of-order bytes buffered over all flows.
    pub max_total_buffer: usize,
    /// How long a flow may go without a segment before it is closed, unless it is a clean
    /// established connection: one that delivered bytes (or whose SYN the server answered, in
    /// strict mode) and holds nothing, no hole, no FIN. Such a flow is a kept-alive connection
    /// between requests (Envoy keeps them an hour): it stays open, costing its table entry only,
    /// until a FIN or RST closes it or the table's bound evicts it, so that its next request, at
    /// exactly the next sequence number, is delivered. Closing it would make that request's
    /// flow one picked up mid-stream, given up until the connection closes.
    pub idle_timeout: Duration,
    /// How long a flow that delivered nothing yet (a handshake the server answered, then silence)
    /// stays a full flow. Then it is parked: only where its stream starts is kept, and its first
    /// bytes, whenever they come, take it up again as if it had never left. A SYN flood's flows
    /// are all of this kind; parked, they cost a small fraction of a flow each and are forgotten
    /// oldest first beyond [`max_flows`](Self::max_flows).
    pub opening_timeout: Duration,
    /// How long a hole may stay open waiting for a late or retransmitted segment (once bytes
    /// after it are due: acknowledged by the server, or any with `require_ack` off).
    pub reorder_timeout: Duration,
    /// Deliver a client byte only once the server acknowledged it, and apply Linux's other rules
    /// (see the module documentation). On by default; off only for a capture that holds the
    /// client→server direction alone, where nothing confirms what the primary accepted.
    pub require_ack: bool,
    /// Reassemble the server's stream too ([`StreamEvent::ReverseData`]): server segments carry
    /// their payload (a port whose responses are compared). Off by default: server segments are
    /// headers only.
    pub responses: bool,
    /// Ask the capture to stop shipping the payload of given-up flows ([`FlowTable::take_mutes`]):
    /// their requests are never framed again, so only their headers (sequence numbers, lengths,
    /// flags) are needed, to close them and to count what the primary acknowledged on them. Off by
    /// default (an offline replay has no capture to ask).
    pub mute_given_up: bool,
}

/// A change the flow table asks of the kernel's muted connections (`mirror_common::MAP_MUTED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mute {
    /// Ship this given-up flow's segments as headers only, from client sequence number
    /// `from_seq` on (for `mirror_common::MUTE_SPAN` bytes).
    On {
        /// The flow.
        key: FlowKey,
        /// Where the muted span starts.
        from_seq: u32,
    },
    /// The flow ended: forget it.
    Off(FlowKey),
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
            opening_timeout: Duration::from_secs(10),
            reorder_timeout: Duration::from_millis(500),
            require_ack: true,
            responses: false,
            mute_given_up: false,
        }
    }
}

/// Counters of what the flow layer did (all monotonic).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlowStats {
    /// Segments fed to the table (both directions).
    pub segments: u64,
    /// Flows opened.
    #[serde(rename = "opened")]
    pub flows_opened: u64,
    /// Flows opened without their SYN (picked up mid-stream).
    #[serde(rename = "midstream")]
    pub flows_midstream: u64,
    /// Segments carrying only bytes already delivered.
    pub retransmitted_segments: u64,
    /// Segments that arrived beyond a hole (buffered or, out of budget, dropped).
    pub out_of_order_segments: u64,
    /// Holes given up on ([`StreamEvent::Gap`] events).
    pub gaps: u64,
    /// Bytes in those holes.
    pub gap_bytes: u64,
    /// Flows closed by a FIN.
    pub closed_fin: u64,
    /// Flows closed by an RST.
    pub closed_rst: u64,
    /// Flows closed by the idle timeout.
    pub closed_idle: u64,
    /// Flows evicted because the table was full.
    pub evicted: u64,
    /// Idle timeouts that left a flow open because it was a clean kept-alive connection (see
    /// [`FlowConfig::idle_timeout`]).
    pub kept_alive: u64,
    /// Opening flows parked by the opening timeout (see [`FlowConfig::opening_timeout`]).
    pub parked: u64,
    /// Parked flows taken up again by their first bytes.
    pub unparked: u64,
    /// Flows closed because a SYN with a new ISN reused their addresses and ports.
    pub reused: u64,
    /// Segments dropped because the global out-of-order budget was spent (either direction).
    pub buffer_overflows: u64,
    /// Server→client segments fed to the table (headers only).
    pub segments_to_client: u64,
    /// Client segments with neither SYN, RST nor ACK, ignored (Linux discards them).
    pub segments_without_ack: u64,
    /// Client RSTs ignored because their sequence number was not exactly the next one the server
    /// expects (RFC 5961: Linux answers with a challenge ACK and keeps the connection).
    pub rst_ignored: u64,
    /// Ranges of unacknowledged bytes seen in two different copies: each became a gap.
    pub conflicting_copies: u64,
    /// Bytes seen but never acknowledged by the server, dropped when their flow ended or was
    /// given up (part of the gaps, or beyond the last one).
    pub unacked_bytes: u64,
    /// Flows given up after a gap (a lost or conflicting range, or a buffer bound): nothing more
    /// of them was delivered.
    pub flows_given_up_gap: u64,
    /// Flows given up because they were picked up mid-stream (no SYN seen): nothing of them was
    /// delivered.
    pub flows_given_up_midstream: u64,
    /// Strict mode: client bytes seen on flows already given up (after a gap, or picked up
    /// mid-stream and confirmed by a late handshake) that the server then acknowledged. Those
    /// bytes reached the primary and none of them was framed: the requests in them are lost
    /// without a count of their own, so this says what a given-up flow cost. Each byte is counted
    /// once, never one already in `gap_bytes` or `unacked_bytes`, and never beyond the bytes
    /// seen (a forged acknowledgement far ahead counts nothing).
    pub given_up_acked_bytes: u64,
    /// Handshakes whose SYN and SYN-ACK both carried a window scale option (the server's windows
    /// are then scaled: see [`FlowConfig::max_flow_buffer`]), counted when the SYN-ACK is taken
    /// after its SYN (one seen first scales the windows too, uncounted).
    pub windows_scaled: u64,
    /// Server stream ([`FlowConfig::responses`]): holes given up on
    /// ([`StreamEvent::ReverseGap`] events).
    pub response_gaps: u64,
    /// Server stream: bytes in those holes.
    pub response_gap_bytes: u64,
}

#[cfg(test)]
mod tests;
