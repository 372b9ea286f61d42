//! Sans-IO validator for a chunked message body (RFC 9112 §7.1).
//!
//! It does not decode: the bytes it accepts are forwarded to the mirror exactly as they arrived,
//! chunk framing included. It only finds where the body ends and rejects what a strict server
//! rejects (sizes that overflow, bad size lines, missing CRLFs, oversized extensions or trailers).

use super::FramingError;

/// Longest chunk-size line we accept, extensions included.
const MAX_SIZE_LINE: usize = 4096;
/// Largest trailer section we accept.
const MAX_TRAILERS: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size {
        value: u64,
        digits: u8,
    },
    /// After the size, whitespace: only more whitespace or `;` may follow (RFC 9112 BWS).
    SizeWs {
        value: u64,
    },
    /// After `;`: optional whitespace, then an extension name.
    ExtStart {
        value: u64,
    },
    /// Inside an extension (name, `=`, value), until CR.
    Ext {
        value: u64,
    },
    /// Saw CR of the size line, expecting LF.
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    TrailerLf,
    /// Saw CR of the final empty line.
    FinalLf,
    Done,
}

/// Where a chunked body ends, found byte by byte (it never needs more than the bytes at hand).
#[derive(Debug, Clone)]
pub struct ChunkedBody {
    state: State,
    line_len: usize,
    trailer_len: usize,
}

impl Default for ChunkedBody {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedBody {
    /// At the first chunk-size line.
    pub fn new() -> Self {
        Self { state: State::Size { value: 0, digits: 0 }, line_len: 0, trailer_len: 0 }
    }

    /// The final empty line (after the last chunk and any trailers) was consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes a prefix of `input`. Returns how many bytes belong to the body; when that is less
    /// than `input.len()`, the body ended there (check [`ChunkedBody::is_done`]).
    pub fn advance(&mut self, input: &[u8]) -> Result<usize, FramingError> {
        let mut i = 0;
        while i < input.len() {
            if let State::Data { remaining } = self.state {
                // Fast path: skip the chunk's data in one step.
                let take = remaining.min((input.len() - i) as u64) as usize;
                i += take;
                let left = remaining - take as u64;
                self.state = if left == 0 { State::DataCr } else { State::Data { remaining: left } };
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = match self.state {
                State::Size { value, digits } => {
                    self.line_len += 1;
                    if self.line_len > MAX_SIZE_LINE {
                        return Err(FramingError::ChunkExtensionTooLong);
                    }
                    match hex(b) {
                        Some(d) => {
                            let v = value
                                .checked_mul(16)
                                .and_then(|v| v.checked_add(u64::from(d)))
                                .ok_or(FramingError::ChunkSizeOverflow)?;
                            State::Size { value: v, digits: digits.saturating_add(1) }
                        }
                        None if digits == 0 => return Err(FramingError::BadChunkSize),
                        None => match b {
                            b'\r' => State::SizeLf { value },
                            b';' => State::ExtStart { value },
                            b' ' | b'\t' => State::SizeWs { value },
                            _ => return Err(FramingError::BadChunkSize),
                        },
                    }
                }
                State::SizeWs { value } => {
                    self.line_len += 1;
                    match b {
                        b' ' | b'\t' if self.line_len <= MAX_SIZE_LINE => State::SizeWs { value },
                        b';' => State::ExtStart { value },
                        _ => return Err(FramingError::BadChunkSize),
                    }
                }
                State::ExtStart { value } => {
                    self.line_len += 1;
                    match b {
                        b' ' | b'\t' if self.line_len <= MAX_SIZE_LINE => State::ExtStart { value },
                        _ if is_tchar(b) => State::Ext { value },
                        _ => return Err(FramingError::BadChunkSize),
                    }
                }
                State::Ext { value } => {
                    self.line_len += 1;
                    if self.line_len > MAX_SIZE_LINE {
                        return Err(FramingError::ChunkExtensionTooLong);
                    }
                    match b {
                        b'\r' => State::SizeLf { value },
                        b'\n' => return Err(FramingError::BareLf),
                        0..=8 | 10..=31 | 127 => return Err(FramingError::BadChunkSize),
                        _ => State::Ext { value },
                    }
                }
                State::SizeLf { value } => {
                    if b != b'\n' {
                        return Err(FramingError::BareCr);
                    }
                    self.line_len = 0;
                    if value == 0 { State::TrailerStart } else { State::Data { remaining: value } }
                }
                State::Data { .. } => unreachable!("handled above"),
                State::DataCr => {
                    if b != b'\r' {
                        return Err(FramingError::MissingChunkCrlf);
                    }
                    State::DataLf
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(FramingError::MissingChunkCrlf);
                    }
                    State::Size { value: 0, digits: 0 }
                }
                State::TrailerStart => match b {
                    b'\r' => State::FinalLf,
                    b'\n' => return Err(FramingError::BareLf),
                    _ => self.trailer_byte()?,
                },
                State::Trailer => match b {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(FramingError::BareLf),
                    _ => self.trailer_byte()?,
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(FramingError::BareCr);
                    }
                    State::TrailerStart
                }
                State::FinalLf => {
                    if b != b'\n' {
                        return Err(FramingError::BareCr);
                    }
                    self.state = State::Done;
                    return Ok(i);
                }
                State::Done => return Ok(i - 1),
            };
        }
        Ok(i)
    }

    fn trailer_byte(&mut self) -> Result<State, FramingError> {
        self.trailer_len += 1;
        if self.trailer_len > MAX_TRAILERS {
            return Err(FramingError::TrailersTooLarge);
        }
        Ok(State::Trailer)
    }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
