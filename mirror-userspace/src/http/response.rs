//! Sans-IO reader for a mirror backend's responses: it only finds where each response ends, so the
//! replay connection can be reused. The bytes are thrown away.

use bytes::{Buf, BytesMut};

use super::{FramingError, chunked::ChunkedBody, head::has_token};

/// The end of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseDone {
    /// The final status code (interim 1xx responses are skipped; 101 ends the connection).
    pub status: u16,
    /// The connection may carry the next request.
    pub reusable: bool,
}

#[derive(Debug)]
enum State {
    Head,
    Length {
        remaining: u64,
        status: u16,
        reusable: bool,
    },
    Chunked {
        body: ChunkedBody,
        status: u16,
        reusable: bool,
    },
    /// No length: the body runs until the server closes.
    UntilClose {
        status: u16,
    },
}

/// Reads one response; create a new one per request.
#[derive(Debug)]
pub struct ResponseReader {
    state: State,
    buf: BytesMut,
    head_request: bool,
    max_head: usize,
}

impl ResponseReader {
    /// `head_request`: the request was HEAD, so the response has no body whatever it says.
    pub fn new(head_request: bool) -> Self {
        Self { state: State::Head, buf: BytesMut::new(), head_request, max_head: 64 * 1024 }
    }

    /// Feeds bytes read from the connection. `Ok(Some(_))` when the response is complete. Bytes
    /// after the response (which a well-behaved server never sends unasked) make it not reusable.
    #[cfg(test)]
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<ResponseDone>, FramingError> {
        let (used, done) = self.feed_some(data)?;
        Ok(done.map(|d| ResponseDone { reusable: d.reusable && used == data.len(), ..d }))
    }

    /// Feeds bytes read from a connection that may carry further responses (pipelining): returns
    /// how many bytes of `data` belong to this response and, once it is complete, how it ended.
    /// The bytes after it are the next response's.
    pub fn feed_some(&mut self, data: &[u8]) -> Result<(usize, Option<ResponseDone>), FramingError> {
        if !matches!(self.state, State::Head) {
            return self.feed_body(data);
        }
        // Only an incomplete head is ever kept. Usually there is none and the head is parsed in
        // `data` itself: a read holding many pipelined responses is not copied once per response.
        let held = self.buf.len();
        if held > 0 {
            self.buf.extend_from_slice(data);
        }
        let mut pos = 0;
        loop {
            let view: &[u8] = if held > 0 { &self.buf } else { data };
            let parsed = parse_head(&view[pos..], self.head_request)?;
            let Some((n, head)) = parsed else {
                if view.len() - pos > self.max_head {
                    return Err(FramingError::HeadTooLarge);
                }
                if held > 0 {
                    self.buf.advance(pos);
                } else {
                    self.buf.extend_from_slice(&data[pos..]);
                }
                return Ok((data.len(), None));
            };
            pos += n;
            // The bytes of `data` up to here (the held ones came from earlier calls; a head
            // completed now ends within `data`).
            let from_data = pos.saturating_sub(held);
            match head {
                // Interim response (100 Continue, 103 Early Hints): the final one follows.
                Head::Interim => continue,
                Head::Switching => {
                    self.buf.clear();
                    return Ok((from_data, Some(ResponseDone { status: 101, reusable: false })));
                }
                Head::Final(state) => {
                    self.buf.clear();
                    self.state = state;
                    let (used, done) = self.feed_body(&data[from_data..])?;
                    return Ok((from_data + used, done));
                }
            }
        }
    }

    fn feed_body(&mut self, data: &[u8]) -> Result<(usize, Option<ResponseDone>), FramingError> {
        match &mut self.state {
            State::Head => unreachable!("feed_some handles heads"),
            State::Length { remaining, status, reusable } => {
                let take = (*remaining).min(data.len() as u64);
                *remaining -= take;
                let done = (*remaining == 0).then_some(ResponseDone { status: *status, reusable: *reusable });
                Ok((take as usize, done))
            }
            State::Chunked { body, status, reusable } => {
                let n = body.advance(data)?;
                Ok((n, body.is_done().then_some(ResponseDone { status: *status, reusable: *reusable })))
            }
            State::UntilClose { .. } => Ok((data.len(), None)),
        }
    }

    /// The server closed the connection. `Some` if that ends the response (no-length body).
    pub fn on_eof(&self) -> Option<ResponseDone> {
        match self.state {
            State::UntilClose { status } => Some(ResponseDone { status, reusable: false }),
            _ => None,
        }
    }
}

/// What a complete response head says.
enum Head {
    /// 1xx other than 101: another head follows.
    Interim,
    /// 101: the connection is no longer HTTP.
    Switching,
    /// The final head, and how its body is delimited.
    Final(State),
}

/// Parses the response head at the start of `buf`: its length and what it says, `None` if it is
/// incomplete.
fn parse_head(buf: &[u8], head_request: bool) -> Result<Option<(usize, Head)>, FramingError> {
    // Uninitialised slots: httparse writes the ones it fills (writing 2 KiB of empty ones for
    // every response was most of the cost of a small one's head).
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 64];
    let mut resp = httparse::Response::new(&mut []);
    let n = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(FramingError::TooManyHeaders),
        Err(_) => return Err(FramingError::BadHead),
    };
    let status = resp.code.unwrap_or(0);
    let headers: &[httparse::Header<'_>] = resp.headers;
    let close = named(headers, "connection").any(|h| has_token(h.value, "close"));
    let keep_alive = named(headers, "connection").any(|h| has_token(h.value, "keep-alive"));
    let reusable = !close && (resp.version == Some(1) || keep_alive);
    let chunked = named(headers, "transfer-encoding").any(|h| has_token(h.value, "chunked"));
    let length = match named(headers, "content-length").next() {
        Some(h) => Some(
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or(FramingError::BadContentLength)?,
        ),
        None => None,
    };
    let head = match status {
        101 => Head::Switching,
        100..200 => Head::Interim,
        _ if head_request || status == 204 || status == 304 => {
            Head::Final(State::Length { remaining: 0, status, reusable })
        }
        _ if chunked => Head::Final(State::Chunked { body: ChunkedBody::new(), status, reusable }),
        _ => Head::Final(match length {
            Some(n) => State::Length { remaining: n, status, reusable },
            None => State::UntilClose { status },
        }),
    };
    Ok(Some((n, head)))
}

fn named<'h, 'b>(headers: &'h [httparse::Header<'b>], name: &'h str) -> impl Iterator<Item = &'h httparse::Header<'b>> {
    headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(head_request: bool, bytes: &[u8]) -> Result<Option<ResponseDone>, FramingError> {
        let mut r = ResponseReader::new(head_request);
        let mut done = None;
        for b in bytes {
            if let Some(d) = r.feed(std::slice::from_ref(b))? {
                done = Some(d);
                break;
            }
        }
        Ok(done)
    }

    #[test]
    fn content_length_response() {
        let d = read_all(false, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc").unwrap().unwrap();
        assert_eq!(d, ResponseDone { status: 200, reusable: true });
    }

    #[test]
    fn chunked_response_and_interim_100() {
        let bytes = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(read_all(false, bytes).unwrap(), Some(ResponseDone { status: 201, reusable: true }));
        let mut r = ResponseReader::new(false);
        assert_eq!(r.feed(bytes).unwrap(), Some(ResponseDone { status: 201, reusable: true }));
    }

    #[test]
    fn head_and_204_have_no_body() {
        let d = read_all(true, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n").unwrap().unwrap();
        assert_eq!(d.status, 200);
        let d = read_all(false, b"HTTP/1.1 204 No Content\r\n\r\n").unwrap().unwrap();
        assert_eq!(d.status, 204);
    }

    #[test]
    fn until_close_and_connection_close() {
        let mut r = ResponseReader::new(false);
        assert_eq!(r.feed(b"HTTP/1.0 200 OK\r\n\r\nbody").unwrap(), None);
        assert_eq!(r.on_eof(), Some(ResponseDone { status: 200, reusable: false }));
        let d = read_all(false, b"HTTP/1.1 500 X\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(d, Some(ResponseDone { status: 500, reusable: false }));
    }

    #[test]
    fn pipelined_responses_split_where_each_ends() {
        let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 X\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n";
        let mut rest = &bytes[..];
        let mut got = Vec::new();
        for head in [false, false, true] {
            let mut r = ResponseReader::new(head);
            let (used, done) = r.feed_some(rest).unwrap();
            got.push(done.unwrap().status);
            rest = &rest[used..];
        }
        assert_eq!(got, [200, 201, 200]);
        assert!(rest.is_empty(), "a HEAD response has no body whatever its length says");
        // Fed a byte at a time, the first response ends at its last body byte.
        let mut r = ResponseReader::new(false);
        let mut n = 0;
        loop {
            let (used, done) = r.feed_some(&bytes[n..n + 1]).unwrap();
            assert_eq!(used, 1);
            n += 1;
            if done.is_some() {
                break;
            }
        }
        assert_eq!(&bytes[n..n + 8], b"HTTP/1.1");
        // The plain feed still calls extra bytes a reason not to reuse the connection.
        assert!(!ResponseReader::new(false).feed(bytes).unwrap().unwrap().reusable);
    }

    /// Reads `chunks` as replay does (a reader per response, each fed what is left of a read):
    /// the statuses in order, and the bytes left unclaimed at the end.
    fn statuses(chunks: &[&[u8]], heads: &[bool]) -> (Vec<u16>, usize) {
        let (mut got, mut left, mut reader) = (Vec::new(), 0, None);
        for chunk in chunks {
            let mut data = *chunk;
            while !data.is_empty() && got.len() < heads.len() {
                let r = reader.get_or_insert_with(|| ResponseReader::new(heads[got.len()]));
                let (used, done) = r.feed_some(data).unwrap();
                data = &data[used..];
                if let Some(d) = done {
                    got.push(d.status);
                    reader = None;
                }
            }
            left += data.len();
        }
        (got, left)
    }

    #[test]
    fn a_head_split_anywhere_across_two_reads_is_read_the_same() {
        let bytes: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: </a>\r\n\r\nHTTP/1.1 201 X\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n";
        let heads = [false, false, true];
        assert_eq!(statuses(&[bytes], &heads), (vec![200, 201, 200], 0));
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let got = statuses(&[&bytes[..i], &bytes[i..j], &bytes[j..]], &heads);
                assert_eq!(got, (vec![200, 201, 200], 0), "split at {i} and {j}");
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(read_all(false, b"NOT HTTP AT ALL\r\n\r\n").is_err());
        assert!(read_all(false, b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
        assert!(read_all(false, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
    }
}
