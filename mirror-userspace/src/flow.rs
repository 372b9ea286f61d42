//! TCP flow reassembly, sans-IO: segments and timestamps in, each client→server byte stream out in
//! order, with explicit gaps and closes.
//!
//! Only the client→server direction is seen (TC ingress on the primary's interface). Sequence
//! numbers are unwrapped to 64-bit stream offsets, so 32-bit wrap is invisible above this layer.
//! Out-of-order segments wait in a bounded buffer; a hole that stays open longer than
//! `reorder_timeout`, or that would make the buffer exceed its bound, becomes a [`StreamEvent::Gap`]
//! and the bytes after it are delivered. Overlaps keep the first copy delivered.
//!
//! [`FlowTable`] holds the flows and their policy (SYN, RST, port reuse, eviction, idle timeout,
//! the out-of-order budget over all flows, statistics); each flow's bytes are put in order by an
//! `Assembler` (`flow/assembler.rs`). [`FlowTable::poll_timeout`] says when the next timer is due.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;

mod assembler;
mod table;

pub use table::FlowTable;

/// Client and server ends of a connection, seen from the client's segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// The client's address and port (the segments' source).
    pub client: SocketAddr,
    /// The server's address and port (the segments' destination).
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
    /// The connection it belongs to.
    pub key: FlowKey,
    /// TCP sequence number of its first byte (of the SYN itself, if it has one).
    pub seq: u32,
    /// TCP flags (`mirror_common::TCP_*` bits).
    pub flags: u8,
    /// The TCP payload.
    pub payload: Bytes,
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
}

/// Why a flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Every byte up to the client's FIN was delivered (or declared a gap).
    Fin,
    /// The client reset the connection.
    Rst,
    /// No segment for the idle timeout.
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
    /// Flows tracked at once; a new one beyond it evicts the flow idle the longest.
    pub max_flows: usize,
    /// Out-of-order bytes buffered per flow before the hole is declared a gap.
    pub max_flow_buffer: usize,
    /// Out-of-order bytes buffered over all flows.
    pub max_total_buffer: usize,
    /// How long a flow may go without a segment before it is closed.
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
    /// Segments fed to the table.
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
    /// Flows closed because a SYN with a new ISN reused their addresses and ports.
    pub reused: u64,
    /// Segments dropped because the global out-of-order budget was spent.
    pub buffer_overflows: u64,
}

#[cfg(test)]
mod tests;
