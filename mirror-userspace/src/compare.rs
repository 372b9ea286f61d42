//! Comparing the shadow's responses with the primary's (issue 15), without a proxy: the primary's
//! responses come from the wire, the shadow's from replay. Sans-IO, in stages:
//!
//! - [`pairer`]: frames the primary's responses of one connection and pairs each with its request
//!   (1xx skipped, HEAD/204/304 bodiless, chunked, Content-Length, close-delimited; gaps and cuts
//!   make a pair incomplete).
//! - [`diff`]: compares (primary, shadow[, baseline]) responses: status, headers (minus ignored
//!   ones), bodies decoded from gzip/deflate ([`body`]), JSON structurally ([`json`], named by
//!   [`pointer`]s with indexes collapsed to `*`), other bodies by bytes. With a baseline, what
//!   differs between the primary and the baseline is noise.
//! - [`record`]: the JSONL record of a differing pair (values of credentials and of the `redact`
//!   list never written), and [`log`]: its rate-limited, rotated writer.
//! - [`counters`]: results and differing fields per route and mirror, the fields capped per route.
//! - [`join`]: the sides of a pair (primary, shadow, baseline) brought together by id, with a
//!   timeout and bounds; `settle` compares, counts and builds the record of a joined pair.
//! - [`report`]: `mirror report`: a summary and a self-contained HTML page from a log.

pub mod body;
pub(crate) mod chunked;
pub mod counters;
pub mod diff;
pub mod join;
pub mod json;
pub mod log;
pub mod pairer;
pub mod pointer;
pub mod record;
pub mod report;

pub use counters::{CompareCounters, FieldCount};
pub use diff::{ALWAYS_IGNORED_HEADERS, CompareResult, Difference, Outcome, compare};
pub use pairer::{Incomplete, PairLimits, Paired, Pairer, Response};
pub use pointer::{Pointer, PointerPattern};

#[cfg(test)]
mod tests;
