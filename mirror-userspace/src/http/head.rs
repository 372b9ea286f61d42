//! Request heads: what httparse finds, checked the way a strict server checks it, and the body
//! framing it announces (RFC 9112 §6.3).

use std::{mem::MaybeUninit, ops::Range};

use bytes::Bytes;

use super::{FramerConfig, FramingError};

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body (no Content-Length, no Transfer-Encoding).
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: …, chunked`.
    Chunked,
}

/// One header field of a parsed head: where its parts sit in [`RequestHead::raw`] (ranges, not
/// slices: a `Bytes` slice per name and value cost an allocation to share the head and two atomic
/// operations per header, for every request). [`RequestHead::name`] and [`RequestHead::value`]
/// give the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The field name's byte range (as sent: case preserved; a token, so ASCII).
    pub name_range: Range<usize>,
    /// The value's byte range, without surrounding whitespace.
    pub value_range: Range<usize>,
    /// The whole field line's range, line end included.
    pub line: Range<usize>,
}

/// Header fields a parsed head keeps without an allocation of their own (a client's usual
/// request has fewer; a browser's has about a dozen).
pub const INLINE_HEADERS: usize = 8;

/// A request head as it was on the wire, plus what was parsed out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Request line and header section, through the empty line that ends it.
    pub raw: Bytes,
    /// The method token (`GET`, `POST`, …), one of the registered methods.
    pub method: &'static str,
    /// Where the request-target sits in `raw` (a range, not a copy: see [`RequestHead::target`]).
    pub target_range: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// The header fields, in order: inline up to [`INLINE_HEADERS`] (the head is boxed once per
    /// request; a vector of its own was a second allocation for every request).
    pub headers: smallvec::SmallVec<[Header; INLINE_HEADERS]>,
    /// How the body is delimited.
    pub body: BodyKind,
    /// The request asks to switch protocols (`Upgrade` + `Connection: upgrade`) or is CONNECT:
    /// whatever follows it on the flow is a tunnel.
    pub tunnel: bool,
    /// The connection stays open after this request (HTTP/1.1 without `Connection: close`, or
    /// HTTP/1.0 with `Connection: keep-alive`).
    pub persistent: bool,
    /// The first request framed after a gap (or after picking a flow up mid-stream).
    pub after_gap: bool,
    /// Offset of the head's first byte in the flow's byte stream.
    pub stream_offset: u64,
}

impl RequestHead {
    /// The request-target as sent (`/path?query`, `host:port` for CONNECT, …): visible ASCII,
    /// checked when parsed.
    pub fn target(&self) -> &str {
        std::str::from_utf8(&self.raw[self.target_range.clone()]).unwrap_or_default()
    }

    /// Header `h`'s name, as sent.
    pub fn name(&self, h: &Header) -> &[u8] {
        &self.raw[h.name_range.clone()]
    }

    /// Header `h`'s value, without surrounding whitespace.
    pub fn value(&self, h: &Header) -> &[u8] {
        &self.raw[h.value_range.clone()]
    }

    /// The first header named `name` (ASCII case-insensitive).
    pub fn field(&self, name: &str) -> Option<&Header> {
        self.headers.iter().find(|h| self.name(h).eq_ignore_ascii_case(name.as_bytes()))
    }

    /// The first value of header `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.field(name).map(|h| self.value(h))
    }

    /// Every value of header `name`, in order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.iter().filter(move |h| self.name(h).eq_ignore_ascii_case(name.as_bytes())).map(|h| self.value(h))
    }
}

/// Parses a head at the start of `buf` (stream offset `offset`). `Ok(None)`: incomplete.
pub(super) fn parse(
    buf: &[u8],
    cfg: &FramerConfig,
    offset: u64,
    after_gap: bool,
) -> Result<Option<RequestHead>, FramingError> {
    // The header slots on the stack for the usual limits, the default (128) included: every
    // request is parsed here. Left uninitialised (httparse writes the ones it fills): writing 4
    // KiB of empty slots was 40% of this function's time for a small GET.
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
    let mut heap = Vec::new();
    let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if cfg.max_headers <= stack.len() {
        &mut stack[..cfg.max_headers]
    } else {
        heap.resize_with(cfg.max_headers, MaybeUninit::uninit);
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    let n = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > cfg.max_head {
                return Err(FramingError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(FramingError::TooManyHeaders),
        Err(_) => return Err(FramingError::BadHead),
    };
    if n > cfg.max_head {
        return Err(FramingError::HeadTooLarge);
    }
    // Line ends: all CRLF, or all bare LF (RFC 9112 §2.2 lets a recipient accept LF alone, and
    // common servers do). A head that mixes the two is how requests get smuggled past parsers
    // that disagree, so it is rejected, as llhttp does.
    let head_bytes = &buf[..n];
    if mixed_line_ends(head_bytes) {
        return Err(FramingError::BareLf);
    }
    // httparse accepts non-ASCII bytes in the target; a strict server does not.
    if !req.path.unwrap_or_default().bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FramingError::BadHead);
    }
    let Some(method) = known_method(req.method.unwrap_or_default()) else {
        return Err(FramingError::UnknownMethod);
    };
    let raw = Bytes::copy_from_slice(head_bytes);
    let base = buf.as_ptr() as usize;
    let headers: smallvec::SmallVec<[Header; INLINE_HEADERS]> = req
        .headers
        .iter()
        .map(|h| {
            let start = h.value.as_ptr() as usize - base;
            let end = start + h.value.len();
            let line_start = h.name.as_ptr() as usize - base;
            // The line ends right after the value unless whitespace trimmed off it follows.
            let line_end = match head_bytes.get(end..end + 2) {
                Some(b"\r\n") => end + 2,
                Some([b'\n', _]) => end + 1,
                _ => memchr::memchr(b'\n', &head_bytes[end..]).map_or(n, |i| end + i + 1),
            };
            Header {
                name_range: line_start..line_start + h.name.len(),
                value_range: start..end,
                line: line_start..line_end,
            }
        })
        .collect();
    let path = req.path.unwrap_or_default();
    let target_start = if path.is_empty() { 0 } else { path.as_ptr() as usize - base };
    let target_range = target_start..target_start + path.len();
    let minor_version = req.version.unwrap_or(1);
    let mut head = RequestHead {
        raw,
        method,
        target_range,
        minor_version,
        headers,
        body: BodyKind::None,
        tunnel: false,
        persistent: true,
        after_gap,
        stream_offset: offset,
    };
    head.body = body_kind(&head)?;
    let connect = head.method.eq_ignore_ascii_case("CONNECT");
    head.tunnel =
        connect || (head.header("upgrade").is_some() && head.header_all("connection").any(|v| has_token(v, "upgrade")));
    let close = head.header_all("connection").any(|v| has_token(v, "close"));
    let keep_alive = head.header_all("connection").any(|v| has_token(v, "keep-alive"));
    head.persistent = !close && (head.minor_version == 1 || keep_alive);
    Ok(Some(head))
}

/// Whether `head` ends some lines with CRLF and others with a bare LF (one pass, by memchr).
fn mixed_line_ends(head: &[u8]) -> bool {
    let (mut crlf, mut bare) = (false, false);
    for i in memchr::memchr_iter(b'\n', head) {
        if i > 0 && head[i - 1] == b'\r' {
            crlf = true;
        } else {
            bare = true;
        }
        if crlf && bare {
            return true;
        }
    }
    false
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
pub(crate) fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
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

/// Whether `m` is one of the registered request methods we frame.
pub(super) fn is_known_method(m: &str) -> bool {
    known_method(m).is_some()
}

/// `m` as one of the registered request methods, if it is one.
fn known_method(m: &str) -> Option<&'static str> {
    METHODS.iter().copied().find(|k| *k == m)
}
