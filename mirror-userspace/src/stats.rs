//! The one vocabulary of losses: every request (or would-be request, or streamed request) that
//! does not reach a mirror complete is counted under a [`DropReason`].
//!
//! The same reason keys the pipeline's counters ([`PipelineStats::dropped`]), replay's
//! (`ReplayStats`), the `mirror_requests_dropped_total{reason}` metric, the exit summary and the
//! benchmark's loss report; its [`DropReason::as_str`] is the label value and the JSON key users
//! see (replay's summary prefixes it: `dropped_queue_full`).
//!
//! [`PipelineStats::dropped`]: crate::pipeline::PipelineStats::dropped

use serde::{Serialize, Serializer};

use crate::http::FramingError;

/// Why a request was lost. The first group happens in the sans-IO core (framing and routing,
/// counted in [`PipelineStats`](crate::pipeline::PipelineStats)), the second in replay (counted in
/// its `ReplayStats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Bytes of the request were never seen (a lost segment, a full ring, a reorder timeout): the
    /// request the gap fell into is dropped and framing resumes at the next request line.
    Gap,
    /// The flow ended (FIN, RST, idle timeout, eviction, end of a capture) before the request was
    /// complete.
    IncompleteAtClose,
    /// The request broke HTTP/1.1 framing the way a strict server would reject it; nothing more
    /// is framed on that flow.
    Framing(FramingError),
    /// A CONNECT request: it would open a tunnel on the mirror too, so it is never replayed.
    ConnectMethod,
    /// A streamed request (larger than the buffer) lost bytes after its start was sent: its
    /// mirror connection is told to reset, once per mirror.
    StreamAborted,
    /// Shed to stay within `memory.limitBytes`. In the core: the flow holding the most bytes of
    /// unfinished requests (partial head, buffered body) loses its request and framing stops on
    /// it until it closes. In replay: a request that would not fit in the budget is not queued.
    MemoryBudget,
    /// Replay had no room for it: its connection's queue was full or the bytes queued for all
    /// mirrors were at `maxQueuedBytes` (live capture never waits).
    QueueFull,
    /// The mirror could not be connected to within `connectTimeoutMs` (refused, unreachable).
    ConnectError,
    /// Writing the request or reading the response failed (a reset, a close mid-response).
    IoError,
    /// The mirror's response could not be framed.
    BadResponse,
    /// The request and its response took longer than `requestTimeoutMs`.
    Timeout,
    /// A mirror connection carrying a streamed request was reset (with RST) before the request
    /// completed: a part was missing or aborted, its end never came, or writing failed.
    StreamReset,
}

impl DropReason {
    /// The reasons replay counts, in the order of its summary.
    pub const REPLAY: [DropReason; 7] = [
        DropReason::QueueFull,
        DropReason::MemoryBudget,
        DropReason::ConnectError,
        DropReason::IoError,
        DropReason::BadResponse,
        DropReason::Timeout,
        DropReason::StreamReset,
    ];

    /// The name users see: the metric label value and the JSON key (framing errors by their own
    /// name, e.g. `te_and_cl`).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Gap => "gap",
            DropReason::IncompleteAtClose => "incomplete_at_close",
            DropReason::Framing(e) => e.as_str(),
            DropReason::ConnectMethod => "connect",
            DropReason::StreamAborted => "stream_aborted",
            DropReason::MemoryBudget => "memory_budget",
            DropReason::QueueFull => "queue_full",
            DropReason::ConnectError => "connect_error",
            DropReason::IoError => "io_error",
            DropReason::BadResponse => "bad_response",
            DropReason::Timeout => "timeout",
            DropReason::StreamReset => "stream_reset",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// As its [`DropReason::as_str`] (so a map keyed by reasons is a JSON object keyed by names).
impl Serialize for DropReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_serialise_as_themselves() {
        let mut all = vec![
            DropReason::Gap,
            DropReason::IncompleteAtClose,
            DropReason::Framing(FramingError::TeAndCl),
            DropReason::ConnectMethod,
            DropReason::StreamAborted,
        ];
        all.extend(DropReason::REPLAY);
        let names: std::collections::BTreeSet<&str> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), all.len());
        let map: std::collections::BTreeMap<DropReason, u64> = all.iter().map(|r| (*r, 1)).collect();
        let json = serde_json::to_value(&map).unwrap();
        assert_eq!(json["te_and_cl"], 1);
        assert_eq!(json["stream_reset"], 1);
    }
}
