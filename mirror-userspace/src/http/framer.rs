//! The request framer: one client→server byte stream in, [`HttpEvent`]s out. Heads are parsed by
//! `head::parse`, bodies are delimited here (Content-Length) or by [`ChunkedBody`];
//! on a flow picked up mid-stream, framing resumes at the next request line.
//!
//! After a gap: if the lost bytes lay inside a Content-Length body, where the next request starts
//! is known exactly (the body's end), so that request is dropped and framing goes on there. Any
//! other gap (in a head, a chunked body, or past a body's end) leaves the next request's start
//! unknown: the framer then resynchronises by looking for a request line, or, with
//! [`FramerConfig::exact_after_gap`], stops (a request line found inside a lost request's body
//! would be a request the client never sent).

use bytes::{Buf, Bytes, BytesMut};

use super::{BodyKind, HttpEvent, chunked::ChunkedBody, head, head::is_known_method};
use crate::stats::DropReason;

/// Limits of the framer.
#[derive(Debug, Clone)]
pub struct FramerConfig {
    /// Largest request head (request line + headers) accepted.
    pub max_head: usize,
    /// Most header fields accepted in one head.
    pub max_headers: usize,
    /// After a gap, go on only where the next request's start is known (a gap inside a
    /// Content-Length body); never look for a request line in bytes of unknown meaning.
    pub exact_after_gap: bool,
}

impl Default for FramerConfig {
    fn default() -> Self {
        Self { max_head: 64 * 1024, max_headers: 128, exact_after_gap: false }
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
    /// The rest of a body whose request was lost to a gap: its bytes are passed over.
    Skip {
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

/// An empty head buffer keeps at most this much room between requests.
const KEEP_EMPTY_BUF: usize = 4096;

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
                    out.push(HttpEvent::Body(own_if_more(data.split_to(take), &data)));
                    data_offset += take as u64;
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        let after = *after;
                        self.finish_request(after, out);
                    }
                }
                State::Skip { remaining, after } => {
                    let take = (*remaining).min(data.len() as u64) as usize;
                    data.advance(take);
                    data_offset += take as u64;
                    *remaining -= take as u64;
                    if *remaining > 0 {
                        return;
                    }
                    let after = *after;
                    self.after_request(after);
                }
                State::Chunked { body, after } => {
                    if data.is_empty() {
                        return;
                    }
                    match body.advance(&data) {
                        Ok(n) => {
                            if n > 0 {
                                out.push(HttpEvent::Body(own_if_more(data.split_to(n), &data)));
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
                    // The head began in bytes fed before: `buf` is an allocation of ours that may
                    // be larger than any segment.
                    let carried = !self.buf.is_empty();
                    // Nothing held: `data` itself becomes the buffer when nothing else holds it,
                    // so the body after a head in the same segment (an upload's first 64 KB) is
                    // handed on as a slice, not copied.
                    let mut moved = false;
                    if self.buf.is_empty() {
                        match data.try_into_mut() {
                            Ok(b) => (self.buf, moved) = (b, true),
                            Err(d) => self.buf.extend_from_slice(&d),
                        }
                    } else {
                        self.buf.extend_from_slice(&data);
                    }
                    // Parse heads out of buf; a body found after one continues from `data`.
                    let parsed = self.parse_buffered(data_offset, out);
                    if moved && !self.buf.is_empty() {
                        // An incomplete head waits in its own exact copy: the segment's
                        // allocation (bytes before the head included) is not kept for it, and
                        // what the framer holds is what the budget is charged.
                        self.buf = BytesMut::from(&self.buf[..]);
                    }
                    if self.buf.is_empty() && self.buf.capacity() > KEEP_EMPTY_BUF {
                        // A large head was read: do not keep its room while the flow waits.
                        self.buf = BytesMut::new();
                    }
                    match parsed {
                        Some((rest, rest_offset)) => {
                            // A body after a head that began in an earlier segment is a slice of
                            // the buffer both were put together in: a long one gets its own
                            // allocation, so that a body piece kept whole never keeps more than
                            // the segment it came in (short ones are copied by their user).
                            data = if !carried || rest.len() < crate::pipeline::SLICE_MIN {
                                rest
                            } else {
                                Bytes::copy_from_slice(&rest)
                            };
                            data_offset = rest_offset;
                        }
                        None => return,
                    }
                }
                State::Tunnel | State::Done | State::Failed => return,
            }
        }
    }

    /// Bytes were lost before the next bytes fed: drop the request in progress; go on at the
    /// next request if where it starts is known, else resynchronise (or stop: see
    /// [`FramerConfig::exact_after_gap`]).
    pub fn on_gap(&mut self, len: u64, out: &mut Vec<HttpEvent>) {
        self.offset += len;
        // Inside a Content-Length body: the request is lost (counted once: a gap in the rest of a
        // body already passed over loses nothing more), the next one starts where its body ends.
        if let State::Body { remaining, after } | State::Skip { remaining, after } = self.state
            && len <= remaining
        {
            if matches!(self.state, State::Body { .. }) {
                out.push(HttpEvent::Dropped(DropReason::Gap));
            }
            self.state = State::Skip { remaining: remaining - len, after };
            if remaining == len {
                self.after_request(after);
            }
            return;
        }
        match self.state {
            State::Tunnel | State::Done | State::Failed => return,
            State::Skip { .. } => {}
            // Client bytes are requests: whatever the gap fell into (the request being read, or
            // one that began inside it) is lost, and counted once.
            State::Body { .. } | State::Chunked { .. } | State::Head | State::Resync => {
                out.push(HttpEvent::Dropped(DropReason::Gap));
            }
        }
        self.buf.clear();
        self.state = if self.cfg.exact_after_gap { State::Failed } else { State::Resync };
        self.after_gap = true;
    }

    /// Whether nothing more will be framed on this flow (a framing error, a gap with
    /// [`FramerConfig::exact_after_gap`], a shed flow, the end of a non-persistent exchange, a
    /// tunnel).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Failed | State::Done | State::Tunnel)
    }

    /// Where the bytes it holds start in memory (tests: which allocation holds them).
    #[cfg(test)]
    pub(super) fn buffered_at(&self) -> usize {
        self.buf.as_ptr() as usize
    }

    /// Bytes this framer holds (its buffer's allocation), for the memory budget.
    pub fn held(&self) -> usize {
        self.buf.capacity()
    }

    /// Gives the flow up to free memory: the request in progress (a partial head, or a body
    /// being read) is dropped as [`DropReason::MemoryBudget`] and nothing more is framed.
    pub fn shed(&mut self, out: &mut Vec<HttpEvent>) {
        match self.state {
            State::Body { .. } | State::Chunked { .. } => out.push(HttpEvent::Dropped(DropReason::MemoryBudget)),
            State::Head if !self.buf.iter().all(|b| matches!(b, b'\r' | b'\n')) => {
                out.push(HttpEvent::Dropped(DropReason::MemoryBudget));
            }
            _ => {}
        }
        self.buf = BytesMut::new();
        self.state = State::Failed;
    }

    /// The stream ended: a request in progress is dropped.
    pub fn on_close(&mut self, out: &mut Vec<HttpEvent>) {
        match self.state {
            State::Body { .. } | State::Chunked { .. } => {
                out.push(HttpEvent::Dropped(DropReason::IncompleteAtClose));
            }
            State::Head if !self.buf.iter().all(|b| matches!(b, b'\r' | b'\n')) => {
                out.push(HttpEvent::Dropped(DropReason::IncompleteAtClose));
            }
            _ => {}
        }
        self.buf.clear();
        self.state = State::Failed;
    }

    fn finish_request(&mut self, after: After, out: &mut Vec<HttpEvent>) {
        out.push(HttpEvent::End);
        if after == After::Tunnel {
            out.push(HttpEvent::Tunnel);
        }
        self.after_request(after);
    }

    /// A request (framed or lost) ended: what the flow becomes.
    fn after_request(&mut self, after: After) {
        match after {
            After::Tunnel => {
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
                    match head::parse(&self.buf, &self.cfg, offset, self.after_gap) {
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
                            // An empty buffer left by `split` still shares the allocation (and
                            // would be charged its spare room): the body's slices hold it alone.
                            self.buf = BytesMut::new();
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
}

/// `piece`, cut from the front of `rest`: when bytes follow it and it is short (its user copies
/// it anyway), a copy of its own, so that `rest` is again the only holder of its allocation and
/// the next head is parsed in place (`try_into_mut`), not copied with everything after it (one
/// copy of the rest of a segment per pipelined request was quadratic).
fn own_if_more(piece: Bytes, rest: &Bytes) -> Bytes {
    if !rest.is_empty() && piece.len() < crate::pipeline::SLICE_MIN { Bytes::copy_from_slice(&piece) } else { piece }
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
