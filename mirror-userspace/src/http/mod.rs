//! HTTP/1.1 request framing (RFC 9112), sans-IO: the client→server byte stream of one flow goes
//! in, request boundaries come out.
//!
//! The head is parsed with httparse; the body framing (Content-Length, chunked) is ours. Bodies are
//! passed on as the raw bytes seen on the wire (chunk framing included) so a mirror receives the
//! request byte for byte. What a strict server rejects is rejected here too, and after a framing
//! error the flow is given up: a strict server closes such a connection, and guessing where the
//! next request starts is how smuggled requests get invented.

pub mod chunked;
pub mod response;

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};

use chunked::ChunkedBody;

/// Why a request could not be framed. Every variant is counted under its [`FramingError::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FramingError {
    BadHead,
    UnknownMethod,
    HeadTooLarge,
    TooManyHeaders,
    TeAndCl,
    BadTransferEncoding,
    BadContentLength,
    ChunkSizeOverflow,
    BadChunkSize,
    ChunkExtensionTooLong,
    MissingChunkCrlf,
    TrailersTooLarge,
    BareLf,
    BareCr,
}

impl FramingError {
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

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// One header field of a parsed head, with where it sits in [`RequestHead::raw`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Bytes,
    /// The value's byte range inside `raw`.
    pub value_range: Range<usize>,
    /// The whole field line's range inside `raw`, line end included.
    pub line: Range<usize>,
}

/// A request head as it was on the wire, plus what was parsed out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Request line and header section, through the empty line that ends it.
    pub raw: Bytes,
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<Header>,
    pub body: BodyKind,
    /// The request asks to switch protocols (`Upgrade` + `Connection: upgrade`) or is CONNECT:
    /// whatever follows it on the flow is a tunnel.
    pub tunnel: bool,
    pub expect_continue: bool,
    /// The connection stays open after this request (HTTP/1.1 without `Connection: close`, or
    /// HTTP/1.0 with `Connection: keep-alive`).
    pub persistent: bool,
    /// The first request framed after a gap (or after picking a flow up mid-stream).
    pub after_gap: bool,
    /// Offset of the head's first byte in the flow's byte stream.
    pub stream_offset: u64,
}

impl RequestHead {
    /// The first value of header `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| &h.value[..])
    }

    /// Every value of header `name`, in order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| &h.value[..])
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
    /// The current request (or the one being parsed) is lost; nothing of it may be sent.
    Dropped(DropReason),
    /// The flow became a tunnel (CONNECT, Upgrade): nothing after this is framed.
    Tunnel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Bytes of the request were never seen (a lost segment, a full ring).
    Gap,
    /// The flow ended (FIN, RST, idle, eviction) before the request was complete.
    Closed,
    Framing(FramingError),
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Gap => "gap",
            DropReason::Closed => "incomplete_at_close",
            DropReason::Framing(e) => e.as_str(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FramerConfig {
    /// Largest request head (request line + headers) accepted.
    pub max_head: usize,
    /// Most header fields accepted in one head.
    pub max_headers: usize,
}

impl Default for FramerConfig {
    fn default() -> Self {
        Self { max_head: 64 * 1024, max_headers: 128 }
    }
}

/// What the flow becomes once the current request ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Next,
    Tunnel,
    Close,
}

#[derive(Debug)]
enum State {
    /// Looking for the start of a request line (mid-stream pick-up, or after a gap).
    Resync,
    Head,
    Body {
        remaining: u64,
        after: After,
    },
    Chunked {
        body: ChunkedBody,
        after: After,
    },
    Tunnel,
    /// The last request was not persistent (`Connection: close`, HTTP/1.0 without keep-alive): the
    /// server closes after answering it, so nothing after it is a request.
    Done,
    /// A framing error: nothing more is framed on this flow.
    Failed,
}

/// Frames the requests of one client→server byte stream.
#[derive(Debug)]
pub struct RequestFramer {
    cfg: FramerConfig,
    state: State,
    /// Unconsumed bytes while looking for or parsing a head.
    buf: BytesMut,
    /// Stream offset of the next byte fed to the framer.
    offset: u64,
    /// Set by a gap (or mid-stream start) until the next head is framed.
    after_gap: bool,
}

/// Longest line we wait for while resynchronising before giving up on it.
const MAX_RESYNC_LINE: usize = 16 * 1024;

impl RequestFramer {
    /// `midstream`: the flow was picked up without its start, so framing begins at the first
    /// request line rather than at the first byte.
    pub fn new(cfg: FramerConfig, midstream: bool) -> Self {
        Self {
            cfg,
            state: if midstream { State::Resync } else { State::Head },
            buf: BytesMut::new(),
            offset: 0,
            after_gap: midstream,
        }
    }

    /// Feeds the next in-order bytes of the stream.
    pub fn on_data(&mut self, mut data: Bytes, out: &mut Vec<HttpEvent>) {
        let start_offset = self.offset;
        self.offset += data.len() as u64;
        // Offset of `data[0]`, for heads parsed out of `buf`.
        let mut data_offset = start_offset;
        loop {
            match &mut self.state {
                State::Body { remaining, after } => {
                    if data.is_empty() {
                        return;
                    }
                    let take = (*remaining).min(data.len() as u64) as usize;
                    out.push(HttpEvent::Body(data.split_to(take)));
                    data_offset += take as u64;
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        let after = *after;
                        self.finish_request(after, out);
                    }
                }
                State::Chunked { body, after } => {
                    if data.is_empty() {
                        return;
                    }
                    match body.advance(&data) {
                        Ok(n) => {
                            if n > 0 {
                                out.push(HttpEvent::Body(data.split_to(n)));
                                data_offset += n as u64;
                            }
                            if body.is_done() {
                                let after = *after;
                                self.finish_request(after, out);
                            }
                        }
                        Err(e) => {
                            out.push(HttpEvent::Dropped(DropReason::Framing(e)));
                            self.state = State::Failed;
                        }
                    }
                }
                State::Head | State::Resync => {
                    // `buf` holds bytes from before `data`; offset of its first byte:
                    data_offset -= self.buf.len() as u64;
                    self.buf.extend_from_slice(&data);
                    // Parse heads out of buf; a body found after one continues from `data`.
                    match self.parse_buffered(data_offset, out) {
                        Some((rest, rest_offset)) => {
                            data = rest;
                            data_offset = rest_offset;
                        }
                        None => return,
                    }
                }
                State::Tunnel | State::Done | State::Failed => return,
            }
        }
    }

    /// Bytes were lost before the next bytes fed: drop the request in progress and resynchronise.
    pub fn on_gap(&mut self, len: u64, out: &mut Vec<HttpEvent>) {
        self.offset += len;
        match self.state {
            State::Tunnel | State::Done | State::Failed => return,
            // Client bytes are requests: whatever the gap fell into (the request being read, or
            // one that began inside it) is lost, and counted once.
            State::Body { .. } | State::Chunked { .. } | State::Head | State::Resync => {
                out.push(HttpEvent::Dropped(DropReason::Gap));
            }
        }
        self.buf.clear();
        self.state = State::Resync;
        self.after_gap = true;
    }

    /// The stream ended: a request in progress is dropped.
    pub fn on_close(&mut self, out: &mut Vec<HttpEvent>) {
        match self.state {
            State::Body { .. } | State::Chunked { .. } => {
                out.push(HttpEvent::Dropped(DropReason::Closed));
            }
            State::Head if !self.buf.iter().all(|b| matches!(b, b'\r' | b'\n')) => {
                out.push(HttpEvent::Dropped(DropReason::Closed));
            }
            _ => {}
        }
        self.buf.clear();
        self.state = State::Failed;
    }

    fn finish_request(&mut self, after: After, out: &mut Vec<HttpEvent>) {
        out.push(HttpEvent::End);
        match after {
            After::Tunnel => {
                out.push(HttpEvent::Tunnel);
                self.state = State::Tunnel;
                self.buf.clear();
            }
            After::Close => {
                self.state = State::Done;
                self.buf.clear();
            }
            After::Next => self.state = State::Head,
        }
    }

    /// Works through `buf` (which starts at stream offset `offset`). Returns the bytes after a head
    /// whose body follows, with their offset, or `None` when more input is needed.
    fn parse_buffered(&mut self, mut offset: u64, out: &mut Vec<HttpEvent>) -> Option<(Bytes, u64)> {
        loop {
            match self.state {
                State::Resync => match find_request_line(&self.buf) {
                    Resync::Found(p) => {
                        self.buf.advance(p);
                        offset += p as u64;
                        self.state = State::Head;
                    }
                    Resync::NeedMore(p) => {
                        self.buf.advance(p);
                        return None;
                    }
                },
                State::Head => {
                    // Empty lines before a request line are ignored (RFC 9112 §2.2).
                    let skip = self.buf.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
                    self.buf.advance(skip);
                    offset += skip as u64;
                    if self.buf.is_empty() {
                        return None;
                    }
                    match self.parse_head(offset) {
                        Ok(None) => return None,
                        Ok(Some(head)) => {
                            let head_len = head.raw.len();
                            self.buf.advance(head_len);
                            offset += head_len as u64;
                            self.after_gap = false;
                            let body = head.body;
                            let after = if head.tunnel {
                                After::Tunnel
                            } else if head.persistent {
                                After::Next
                            } else {
                                After::Close
                            };
                            let connect = head.method == "CONNECT";
                            out.push(HttpEvent::Head(Box::new(head)));
                            self.state = match body {
                                BodyKind::Length(n) if n > 0 && !connect => State::Body { remaining: n, after },
                                BodyKind::Chunked if !connect => State::Chunked { body: ChunkedBody::new(), after },
                                _ => {
                                    self.finish_request(after, out);
                                    continue;
                                }
                            };
                            let rest = self.buf.split().freeze();
                            return Some((rest, offset));
                        }
                        Err(e) => {
                            out.push(HttpEvent::Dropped(DropReason::Framing(e)));
                            self.state = State::Failed;
                            self.buf.clear();
                            return None;
                        }
                    }
                }
                _ => return None,
            }
        }
    }

    /// Parses a head at the start of `buf`. `Ok(None)`: incomplete.
    fn parse_head(&self, offset: u64) -> Result<Option<RequestHead>, FramingError> {
        let mut slots = vec![httparse::EMPTY_HEADER; self.cfg.max_headers];
        let mut req = httparse::Request::new(&mut slots);
        let n = match req.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if self.buf.len() > self.cfg.max_head {
                    return Err(FramingError::HeadTooLarge);
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => return Err(FramingError::TooManyHeaders),
            Err(_) => return Err(FramingError::BadHead),
        };
        if n > self.cfg.max_head {
            return Err(FramingError::HeadTooLarge);
        }
        // Line ends: all CRLF, or all bare LF (RFC 9112 §2.2 lets a recipient accept LF alone, and
        // common servers do). A head that mixes the two is how requests get smuggled past parsers
        // that disagree, so it is rejected, as llhttp does.
        let head_bytes = &self.buf[..n];
        let bare = head_bytes
            .iter()
            .enumerate()
            .filter(|&(i, b)| *b == b'\n' && (i == 0 || head_bytes[i - 1] != b'\r'))
            .count();
        let total = head_bytes.iter().filter(|b| **b == b'\n').count();
        if bare != 0 && bare != total {
            return Err(FramingError::BareLf);
        }
        // httparse accepts non-ASCII bytes in the target; a strict server does not.
        if !req.path.unwrap_or_default().bytes().all(|b| b.is_ascii_graphic()) {
            return Err(FramingError::BadHead);
        }
        if !is_known_method(req.method.unwrap_or_default()) {
            return Err(FramingError::UnknownMethod);
        }
        let raw = Bytes::copy_from_slice(head_bytes);
        let base = self.buf.as_ptr() as usize;
        let headers: Vec<Header> = req
            .headers
            .iter()
            .map(|h| {
                let start = h.value.as_ptr() as usize - base;
                let end = start + h.value.len();
                let line_start = h.name.as_ptr() as usize - base;
                let line_end = raw[end..].iter().position(|b| *b == b'\n').map_or(raw.len(), |i| end + i + 1);
                Header {
                    name: h.name.to_string(),
                    value: raw.slice(start..end),
                    value_range: start..end,
                    line: line_start..line_end,
                }
            })
            .collect();
        let method = req.method.unwrap_or_default().to_string();
        let target = req.path.unwrap_or_default().to_string();
        let minor_version = req.version.unwrap_or(1);
        let mut head = RequestHead {
            raw,
            method,
            target,
            minor_version,
            headers,
            body: BodyKind::None,
            tunnel: false,
            expect_continue: false,
            persistent: true,
            after_gap: self.after_gap,
            stream_offset: offset,
        };
        head.body = body_kind(&head)?;
        let connect = head.method.eq_ignore_ascii_case("CONNECT");
        head.tunnel = connect
            || (head.header("upgrade").is_some() && head.header_all("connection").any(|v| has_token(v, "upgrade")));
        let expect_continue = head.header_all("expect").any(|v| has_token(v, "100-continue"));
        head.expect_continue = expect_continue;
        let close = head.header_all("connection").any(|v| has_token(v, "close"));
        let keep_alive = head.header_all("connection").any(|v| has_token(v, "keep-alive"));
        head.persistent = !close && (head.minor_version == 1 || keep_alive);
        Ok(Some(head))
    }
}

/// RFC 9112 §6.3 for requests, strict: Transfer-Encoding must end in a single `chunked` and may not
/// come with Content-Length; Content-Length values must be digits and agree; no length means none.
fn body_kind(head: &RequestHead) -> Result<BodyKind, FramingError> {
    let mut codings: Vec<String> = Vec::new();
    for v in head.header_all("transfer-encoding") {
        let v = std::str::from_utf8(v).map_err(|_| FramingError::BadTransferEncoding)?;
        for c in v.split(',') {
            let c = c.trim_matches(|ch| ch == ' ' || ch == '\t');
            if !c.is_empty() {
                codings.push(c.to_ascii_lowercase());
            }
        }
    }
    let mut length: Option<u64> = None;
    let mut saw_cl = false;
    for v in head.header_all("content-length") {
        saw_cl = true;
        let v = std::str::from_utf8(v).map_err(|_| FramingError::BadContentLength)?;
        for part in v.split(',') {
            let part = part.trim_matches(|ch| ch == ' ' || ch == '\t');
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(FramingError::BadContentLength);
            }
            let n: u64 = part.parse().map_err(|_| FramingError::BadContentLength)?;
            match length {
                Some(prev) if prev != n => return Err(FramingError::BadContentLength),
                _ => length = Some(n),
            }
        }
    }
    if saw_cl && length.is_none() {
        return Err(FramingError::BadContentLength);
    }
    let te_present = head.header("transfer-encoding").is_some();
    if te_present {
        if saw_cl {
            return Err(FramingError::TeAndCl);
        }
        let chunked_count = codings.iter().filter(|c| *c == "chunked").count();
        if codings.last().map(String::as_str) != Some("chunked") || chunked_count != 1 {
            return Err(FramingError::BadTransferEncoding);
        }
        return Ok(BodyKind::Chunked);
    }
    Ok(match length {
        Some(n) => BodyKind::Length(n),
        None => BodyKind::None,
    })
}

/// Whether a comma-separated header value contains `token` (ASCII case-insensitive).
pub fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

enum Resync {
    /// A request line starts at this offset.
    Found(usize),
    /// None yet; everything before this offset can be discarded.
    NeedMore(usize),
}

/// Looks for the start of a request line in `buf`. After a gap the next request usually follows the
/// lost one's body on the same line (bodies end without a newline), so a request line may start
/// anywhere a method token starts, not only after a LF.
fn find_request_line(buf: &[u8]) -> Resync {
    let mut p = 0;
    while p < buf.len() {
        match buf[p..].iter().position(|b| *b == b'\n') {
            Some(nl) => {
                let line = &buf[p..p + nl];
                // Only a line ending in ` HTTP/1.x` can hold a request line: checked first, so
                // resynchronising through a body costs one pass over it, not one per candidate.
                if line.ends_with(b" HTTP/1.1\r") || line.ends_with(b" HTTP/1.0\r") {
                    let starts = (0..line.len())
                        .filter(|&i| line[i].is_ascii_uppercase() && (i == 0 || !line[i - 1].is_ascii_uppercase()));
                    for i in starts {
                        if looks_like_request_line(&line[i..]) {
                            return Resync::Found(p + i);
                        }
                    }
                }
                p += nl + 1;
            }
            None => {
                // An unfinished last line: keep it unless it is too long to be a request line.
                return if buf.len() - p > MAX_RESYNC_LINE { Resync::NeedMore(buf.len()) } else { Resync::NeedMore(p) };
            }
        }
    }
    Resync::NeedMore(buf.len())
}

/// HTTP request methods (RFC 9110, WebDAV and the other registered extensions llhttp accepts).
/// Anything else (RTSP's ANNOUNCE, HTTP/2's PRI preface, garbage) is not an HTTP/1.x request.
const METHODS: [&str; 35] = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "COPY",
    "LOCK",
    "MKCOL",
    "MOVE",
    "PROPFIND",
    "PROPPATCH",
    "SEARCH",
    "UNLOCK",
    "BIND",
    "REBIND",
    "UNBIND",
    "ACL",
    "REPORT",
    "MKACTIVITY",
    "CHECKOUT",
    "MERGE",
    "M-SEARCH",
    "NOTIFY",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "PURGE",
    "MKCALENDAR",
    "LINK",
    "UNLINK",
    "QUERY",
    "SOURCE",
];

pub fn is_known_method(m: &str) -> bool {
    METHODS.contains(&m)
}

/// `METHOD SP request-target SP HTTP/1.x CR`: the shape of a request line, strictly.
fn looks_like_request_line(line: &[u8]) -> bool {
    let Some(line) = line.strip_suffix(b"\r") else {
        return false;
    };
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    std::str::from_utf8(method).is_ok_and(is_known_method)
        && !target.is_empty()
        && target.iter().all(|b| b.is_ascii_graphic())
        && (version == b"HTTP/1.1" || version == b"HTTP/1.0")
}

#[cfg(test)]
mod tests;
