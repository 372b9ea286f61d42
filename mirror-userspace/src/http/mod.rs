//! HTTP/1.1 request framing (RFC 9112), sans-IO: the client→server byte stream of one flow goes
//! in, request boundaries come out.
//!
//! The head is parsed with httparse (`head`); the body framing (Content-Length, chunked) is ours
//! (`framer`, `chunked`). Bodies are passed on as the raw bytes seen on the wire (chunk framing
//! included) so a mirror receives the request byte for byte. What a strict server rejects is
//! rejected here too, and after a framing error the flow is given up: a strict server closes such
//! a connection, and guessing where the next request starts is how smuggled requests get invented.

mod chunked;
mod framer;
mod head;
pub(crate) mod response;

use bytes::Bytes;

pub use framer::{FramerConfig, RequestFramer};
pub use head::{BodyKind, Header, RequestHead};

use crate::stats::DropReason;

/// Why a request could not be framed: what a strict server rejects. Each is counted as
/// [`DropReason::Framing`], under its [`FramingError::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FramingError {
    /// httparse could not parse the head, or the request-target has non-ASCII bytes.
    BadHead,
    /// The method is not a registered HTTP method (RTSP, HTTP/2's preface, garbage).
    UnknownMethod,
    /// The head is larger than [`FramerConfig::max_head`].
    HeadTooLarge,
    /// The head has more fields than [`FramerConfig::max_headers`].
    TooManyHeaders,
    /// Transfer-Encoding and Content-Length together (the classic smuggling vector).
    TeAndCl,
    /// Transfer-Encoding that does not end in exactly one `chunked`.
    BadTransferEncoding,
    /// Content-Length that is not digits, overflows, or disagrees with another one.
    BadContentLength,
    /// A chunk size that overflows 64 bits.
    ChunkSizeOverflow,
    /// A malformed chunk-size line (no digits, stray characters, bad whitespace).
    BadChunkSize,
    /// A chunk-size line longer than 4 KiB (extensions included).
    ChunkExtensionTooLong,
    /// Chunk data not followed by CRLF.
    MissingChunkCrlf,
    /// A trailer section over 64 KiB.
    TrailersTooLarge,
    /// A bare LF where CRLF is required, or a head mixing the two line ends.
    BareLf,
    /// A CR not followed by LF.
    BareCr,
}

impl FramingError {
    /// The name it is counted under (a drop reason's label value).
    pub fn as_str(self) -> &'static str {
        match self {
            FramingError::BadHead => "bad_head",
            FramingError::UnknownMethod => "unknown_method",
            FramingError::HeadTooLarge => "head_too_large",
            FramingError::TooManyHeaders => "too_many_headers",
            FramingError::TeAndCl => "te_and_cl",
            FramingError::BadTransferEncoding => "bad_transfer_encoding",
            FramingError::BadContentLength => "bad_content_length",
            FramingError::ChunkSizeOverflow => "chunk_size_overflow",
            FramingError::BadChunkSize => "bad_chunk_size",
            FramingError::ChunkExtensionTooLong => "chunk_extension_too_long",
            FramingError::MissingChunkCrlf => "missing_chunk_crlf",
            FramingError::TrailersTooLarge => "trailers_too_large",
            FramingError::BareLf => "bare_lf",
            FramingError::BareCr => "bare_cr",
        }
    }
}

impl std::fmt::Display for FramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the framer found in the bytes it was fed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpEvent {
    /// A request starts; its body (if any) follows as `Body` events, then `End`.
    Head(Box<RequestHead>),
    /// Raw body bytes of the current request.
    Body(Bytes),
    /// The current request is complete: every byte of it was seen.
    End,
    /// The current request (or the one being parsed) is lost; nothing of it may be sent. The
    /// framer's reasons are [`DropReason::Gap`], [`DropReason::IncompleteAtClose`] and
    /// [`DropReason::Framing`].
    Dropped(DropReason),
    /// The flow became a tunnel (CONNECT, Upgrade): nothing after this is framed.
    Tunnel,
}

#[cfg(test)]
mod tests;
