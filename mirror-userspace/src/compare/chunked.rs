//! Decoding a chunked body (RFC 9112 §7.1) of a response being compared: the data of each chunk
//! goes to a sink, chunk framing and trailers are dropped. Lenient where a client is (a bare LF
//! ends a line, extensions are skipped) and bounded (size lines and trailers).

/// Longest chunk-size line, extensions included.
const MAX_LINE: usize = 4096;
/// Largest trailer section.
const MAX_TRAILERS: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line.
    Size,
    /// Inside a chunk's data.
    Data {
        remaining: u64,
    },
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// Reading trailer lines (the first empty one ends the body).
    Trailers,
    Done,
}

/// A chunked body being decoded; bytes are given as they come.
#[derive(Debug, Clone)]
pub(crate) struct Dechunker {
    state: State,
    line: Vec<u8>,
    trailer_bytes: usize,
}

/// Why a chunked body cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadChunk;

impl Dechunker {
    /// At the first chunk-size line.
    pub(crate) fn new() -> Self {
        Self { state: State::Size, line: Vec::new(), trailer_bytes: 0 }
    }

    /// The body ended (last chunk and trailers consumed).
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes a prefix of `input`, giving chunk data to `sink`; returns how much was consumed
    /// (less than `input.len()` only when the body ended there).
    pub(crate) fn advance(&mut self, input: &[u8], sink: &mut impl FnMut(&[u8])) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < input.len() {
            match &mut self.state {
                State::Done => break,
                State::Data { remaining } => {
                    let n = (*remaining).min((input.len() - i) as u64) as usize;
                    sink(&input[i..i + n]);
                    i += n;
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.state = State::DataEnd;
                    }
                }
                State::Size | State::DataEnd | State::Trailers => {
                    let Some(lf) = input[i..].iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(&input[i..]);
                        i = input.len();
                        self.bounded()?;
                        break;
                    };
                    self.line.extend_from_slice(&input[i..i + lf]);
                    i += lf + 1;
                    self.bounded()?;
                    let mut line = std::mem::take(&mut self.line);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    self.line_done(&line)?;
                }
            }
        }
        Ok(i)
    }

    fn bounded(&self) -> Result<(), BadChunk> {
        let max =
            if self.state == State::Trailers { MAX_TRAILERS.saturating_sub(self.trailer_bytes) } else { MAX_LINE };
        if self.line.len() > max { Err(BadChunk) } else { Ok(()) }
    }

    fn line_done(&mut self, line: &[u8]) -> Result<(), BadChunk> {
        self.state = match self.state {
            State::Size => {
                let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                let rest = &line[digits..];
                let rest_ok = rest.iter().all(|&b| b == b' ' || b == b'\t')
                    || rest
                        .iter()
                        .position(|&b| b == b';')
                        .is_some_and(|p| rest[..p].iter().all(|&b| b == b' ' || b == b'\t'));
                if digits == 0 || digits > 16 || !rest_ok {
                    return Err(BadChunk);
                }
                let text = std::str::from_utf8(&line[..digits]).map_err(|_| BadChunk)?;
                match u64::from_str_radix(text, 16).map_err(|_| BadChunk)? {
                    0 => State::Trailers,
                    n => State::Data { remaining: n },
                }
            }
            State::DataEnd if line.is_empty() => State::Size,
            State::DataEnd => return Err(BadChunk),
            State::Trailers if line.is_empty() => State::Done,
            State::Trailers => {
                self.trailer_bytes += line.len() + 2;
                State::Trailers
            }
            State::Data { .. } | State::Done => unreachable!("lines are read only in line states"),
        };
        Ok(())
    }
}
