//! Pairs each request of a client connection with the primary's response to it, from the bytes
//! the primary sent back (server → client, in order, possibly with gaps). Sans-IO: requests,
//! response bytes, gaps and the end of the stream go in; [`Paired`] results come out, in order.
//!
//! HTTP/1.1 answers requests in the order they were sent (RFC 9112 §9.3.2), so the n-th final
//! response answers the n-th request: interim 1xx responses are skipped; HEAD requests and
//! 204/304 responses have no body; a body is chunked, Content-Length or delimited by the close
//! (RFC 9112 §6.3). A 101 or a 2xx to CONNECT ends HTTP on the connection.
//!
//! Every request of the connection must be given, compared or not (`tag: None`): a request that
//! is not compared still has its response framed, so that the next ones pair correctly; only the
//! compared ones are reported. A gap inside a Content-Length body marks that response cut and
//! framing goes on after it; any other gap leaves the stream's boundaries unknown, so that
//! response and every later one are reported incomplete (as flows are given up after a gap).

use std::collections::VecDeque;

use super::chunked::Dechunker;

/// Why a response (or a side of a pair) cannot be compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Incomplete {
    /// No response came for the request (the connection ended first, or framing was lost earlier).
    Missing,
    /// Bytes of the response were not seen.
    Gap,
    /// The connection ended inside the response.
    Cut,
    /// The body (as sent, or decoded) is larger than `maxBodyBytes`.
    TooLarge,
    /// The bytes are not an HTTP/1.1 response (or its head is over the size limit).
    Unframed,
    /// The memory budget gave up pairing this connection's responses.
    Shed,
}

impl Incomplete {
    /// Its name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Incomplete::Missing => "missing",
            Incomplete::Gap => "gap",
            Incomplete::Cut => "cut",
            Incomplete::TooLarge => "too_large",
            Incomplete::Unframed => "unframed",
            Incomplete::Shed => "shed",
        }
    }
}

/// A response as framed: head, and the body without its transfer coding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The final status code.
    pub status: u16,
    /// Header lines in order: name lower-cased, value as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body without chunk framing (still content-coded), at most `max_body` bytes of it.
    pub body: Vec<u8>,
    /// The body's length in all (it may be more than `body` holds).
    pub body_len: u64,
    /// `Some`: the response is not whole, and why.
    pub cut: Option<Incomplete>,
}

impl Response {
    /// A whole response from its parts (header names lower-cased, values as given).
    pub fn new(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Self {
        Response {
            status,
            headers: headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec())).collect(),
            body: body.to_vec(),
            body_len: body.len() as u64,
            cut: None,
        }
    }

    /// The values of header `name` (lower case).
    pub fn header<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
}

/// A compared request and what the primary answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paired<T> {
    /// What the caller tagged the request with.
    pub tag: T,
    /// The response (possibly cut), or why there is none.
    pub response: Result<Response, Incomplete>,
}

/// Size limits of the pairer.
#[derive(Debug, Clone, Copy)]
pub struct PairLimits {
    /// Bodies are kept up to this size (beyond: framed and dropped, the response is `TooLarge`).
    pub max_body: usize,
    /// A response head larger than this is `Unframed` (and so is the rest of the stream).
    pub max_head: usize,
    /// Header lines in a head, at most.
    pub max_headers: usize,
    /// Bytes held for a response whose request is not known yet; beyond, the stream is
    /// `Unframed` (the request would have been framed long before in any real exchange).
    pub max_early: usize,
}

impl Default for PairLimits {
    fn default() -> Self {
        Self { max_body: 1 << 20, max_head: 64 << 10, max_headers: 128, max_early: 256 << 10 }
    }
}

#[derive(Debug)]
struct Pending<T> {
    head: bool,
    connect: bool,
    tag: Option<T>,
}

#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(Dechunker),
    UntilClose,
}

#[derive(Debug)]
enum State {
    /// Waiting for (or reading) a response head.
    Head,
    /// Reading the body of the response to the front request.
    Body { response: Response, framing: Framing },
    /// No more HTTP/1.1 on this connection (101, CONNECT): later requests get no response.
    Ended,
    /// Response boundaries are lost: every request from now on is incomplete for this reason.
    Lost(Incomplete),
}

/// The pairer of one client connection. `T` tags compared requests.
#[derive(Debug)]
pub struct Pairer<T> {
    limits: PairLimits,
    pending: VecDeque<Pending<T>>,
    buf: Vec<u8>,
    state: State,
}

impl<T> Pairer<T> {
    /// A connection at its start.
    pub fn new(limits: PairLimits) -> Self {
        Self { limits, pending: VecDeque::new(), buf: Vec::new(), state: State::Head }
    }

    /// The next request the client sent on this connection, by method; `tag` is `Some` if its
    /// response is to be reported. Bytes of its response that came before it are framed now.
    pub fn request(&mut self, method: &[u8], tag: Option<T>, out: &mut Vec<Paired<T>>) {
        let pending = Pending { head: method == b"HEAD", connect: method == b"CONNECT", tag };
        match self.state {
            State::Ended => report(pending, Err(Incomplete::Missing), out),
            State::Lost(why) => report(pending, Err(why), out),
            State::Head | State::Body { .. } => {
                self.pending.push_back(pending);
                self.run(&[], out);
            }
        }
    }

    /// Requests given and not answered yet.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// Bytes it holds (allocations): a partial head or early bytes, the body being read.
    pub fn held(&self) -> usize {
        let body = match &self.state {
            State::Body { response, .. } => {
                response.body.capacity() + response.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()
            }
            _ => 0,
        };
        self.buf.capacity() + body
    }

    /// Bytes the primary sent, in order.
    pub fn data(&mut self, bytes: &[u8], out: &mut Vec<Paired<T>>) {
        self.run(bytes, out);
    }

    /// `len` bytes of the primary's stream were not seen (0: an unknown number).
    pub fn gap(&mut self, len: u64, out: &mut Vec<Paired<T>>) {
        match &mut self.state {
            State::Body { response, framing: Framing::Length(remaining) } if len > 0 && len <= *remaining => {
                // The boundary stays known: the rest of this body, then the next response.
                *remaining -= len;
                response.body_len += len;
                response.cut = Some(Incomplete::Gap);
                self.run(&[], out);
            }
            State::Head if len > 0 && self.buf.is_empty() && self.pending.is_empty() => {
                // Between responses with nothing asked: nothing of a compared response was lost,
                // but where the next one starts is unknown.
                self.lose(Incomplete::Gap, out);
            }
            _ => self.lose(Incomplete::Gap, out),
        }
    }

    /// The primary's stream ended: `clean` for a FIN (a close-delimited body ends there), not for
    /// a reset or a flow given up. Every request still waiting is reported.
    pub fn close(&mut self, clean: bool, out: &mut Vec<Paired<T>>) {
        match std::mem::replace(&mut self.state, State::Ended) {
            State::Body { mut response, framing } => {
                if !(clean && matches!(framing, Framing::UntilClose)) {
                    response.cut.get_or_insert(Incomplete::Cut);
                }
                self.answer(Ok(response), out);
            }
            State::Head if !self.buf.is_empty() => self.answer(Err(Incomplete::Cut), out),
            State::Lost(why) => self.state = State::Lost(why),
            _ => {}
        }
        let why = match self.state {
            State::Lost(why) => why,
            _ => Incomplete::Missing,
        };
        while let Some(p) = self.pending.pop_front() {
            report(p, Err(why), out);
        }
        self.buf = Vec::new();
    }

    /// The memory budget needs what this connection holds: the response in progress and every
    /// request waiting, and every later one, are reported [`Incomplete::Shed`]; it holds nothing
    /// from now on.
    pub fn shed(&mut self, out: &mut Vec<Paired<T>>) {
        self.lose(Incomplete::Shed, out);
    }

    /// Framing is lost: the response in progress and every request waiting are reported `why`.
    fn lose(&mut self, why: Incomplete, out: &mut Vec<Paired<T>>) {
        if let State::Body { mut response, .. } = std::mem::replace(&mut self.state, State::Lost(why)) {
            response.cut.get_or_insert(why);
            self.answer(Ok(response), out);
        }
        while let Some(p) = self.pending.pop_front() {
            report(p, Err(why), out);
        }
        self.buf = Vec::new();
    }

    /// Reports the front request's response.
    fn answer(&mut self, response: Result<Response, Incomplete>, out: &mut Vec<Paired<T>>) {
        if let Some(p) = self.pending.pop_front() {
            report(p, response, out);
        }
    }

    /// Frames what `bytes` and the buffer hold, as far as the requests known allow.
    fn run(&mut self, mut bytes: &[u8], out: &mut Vec<Paired<T>>) {
        loop {
            match &mut self.state {
                State::Ended | State::Lost(_) => return,
                State::Head => {
                    self.buf.extend_from_slice(bytes);
                    bytes = &[];
                    if self.buf.is_empty() {
                        return;
                    }
                    match self.head(out) {
                        Ok(true) => {}
                        Ok(false) if self.pending.is_empty() && self.buf.len() > self.limits.max_early => {
                            return self.lose(Incomplete::Unframed, out);
                        }
                        Ok(false) => return,
                        Err(why) => return self.lose(why, out),
                    }
                }
                State::Body { response, framing } => {
                    // Buffered bytes first (after a head), then the new ones.
                    let from_buf = !self.buf.is_empty();
                    let input: &[u8] = if from_buf { &self.buf } else { bytes };
                    // (A gap may have taken the rest of a Content-Length body: it ends now.)
                    if input.is_empty() && !matches!(framing, Framing::Length(0)) {
                        return;
                    }
                    let max = self.limits.max_body;
                    let mut keep = |data: &[u8]| {
                        let room = max.saturating_sub(response.body.len());
                        response.body.extend_from_slice(&data[..data.len().min(room)]);
                        if data.len() > room {
                            response.cut.get_or_insert(Incomplete::TooLarge);
                        }
                        response.body_len += data.len() as u64;
                    };
                    let (used, done) = match framing {
                        Framing::Length(remaining) => {
                            let n = (*remaining).min(input.len() as u64) as usize;
                            keep(&input[..n]);
                            *remaining -= n as u64;
                            (n, *remaining == 0)
                        }
                        Framing::UntilClose => {
                            keep(input);
                            (input.len(), false)
                        }
                        Framing::Chunked(d) => match d.advance(input, &mut keep) {
                            Ok(n) => (n, d.is_done()),
                            Err(_) => return self.lose(Incomplete::Unframed, out),
                        },
                    };
                    if from_buf {
                        self.buf.drain(..used);
                    } else {
                        bytes = &bytes[used..];
                    }
                    if done {
                        let State::Body { response, .. } = std::mem::replace(&mut self.state, State::Head) else {
                            unreachable!("in the body state")
                        };
                        self.answer(Ok(response), out);
                    }
                }
            }
        }
    }

    /// Parses a head at the start of the buffer: `Ok(true)` if the state moved on, `Ok(false)` if
    /// more bytes (or the request it answers) are needed.
    fn head(&mut self, out: &mut Vec<Paired<T>>) -> Result<bool, Incomplete> {
        let mut slots = Vec::new();
        slots.resize_with(self.limits.max_headers, std::mem::MaybeUninit::<httparse::Header<'_>>::uninit);
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            &self.buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if self.buf.len() <= self.limits.max_head => return Ok(false),
            Ok(httparse::Status::Partial) | Err(_) => return Err(Incomplete::Unframed),
        };
        if len > self.limits.max_head {
            return Err(Incomplete::Unframed);
        }
        let status = parsed.code.unwrap_or(0);
        let headers: Vec<(String, Vec<u8>)> =
            parsed.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect();
        if (100..200).contains(&status) && status != 101 {
            // Interim: it answers nothing by itself.
            self.buf.drain(..len);
            return Ok(true);
        }
        let Some(front) = self.pending.front() else {
            // A response ahead of its request (the request is still being framed): wait.
            return Ok(false);
        };
        self.buf.drain(..len);
        let response = Response { status, headers, body: Vec::new(), body_len: 0, cut: None };
        if status == 101 || (front.connect && (200..300).contains(&status)) {
            // What follows is another protocol.
            self.buf = Vec::new();
            self.answer(Ok(response), out);
            self.state = State::Ended;
            // Requests sent after it get no HTTP answer: reported now, before any later one.
            while let Some(p) = self.pending.pop_front() {
                report(p, Err(Incomplete::Missing), out);
            }
            return Ok(false);
        }
        match body_framing(&response, front.head)? {
            Some(framing) => self.state = State::Body { response, framing },
            None => self.answer(Ok(response), out),
        }
        Ok(true)
    }
}

/// How the body of `r` is delimited (RFC 9112 §6.3); `None`: it has none.
fn body_framing(r: &Response, head_request: bool) -> Result<Option<Framing>, Incomplete> {
    if head_request || r.status == 204 || r.status == 304 {
        return Ok(None);
    }
    if let Some(te) = r.header("transfer-encoding").last() {
        let last = te.rsplit(|&b| b == b',').next().unwrap_or_default();
        return Ok(Some(if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked(Dechunker::new())
        } else {
            Framing::UntilClose
        }));
    }
    let mut length = None;
    for value in r.header("content-length") {
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            let n = std::str::from_utf8(part)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(Incomplete::Unframed)?;
            if length.is_some_and(|l| l != n) {
                return Err(Incomplete::Unframed);
            }
            length = Some(n);
        }
    }
    Ok(Some(match length {
        Some(0) => return Ok(None),
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    }))
}

fn report<T>(p: Pending<T>, response: Result<Response, Incomplete>, out: &mut Vec<Paired<T>>) {
    if let Some(tag) = p.tag {
        out.push(Paired { tag, response });
    }
}
