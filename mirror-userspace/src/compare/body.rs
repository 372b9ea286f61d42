//! Bodies as compared: decoded from the content codings the response names (gzip, deflate),
//! within a size limit, and summarised by length and SHA-256.

use std::io::Read;

use flate2::read::{DeflateDecoder, GzDecoder, ZlibDecoder};
use sha2::{Digest, Sha256};

use super::{Incomplete, Response};

/// A body without its content codings, or why it could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The body as the application wrote it.
    Plain(Vec<u8>),
    /// A coding that is not gzip, deflate or identity (`br`…): the bytes as sent, and the codings.
    Unknown {
        /// The body as sent.
        raw: Vec<u8>,
        /// The Content-Encoding values, lower-cased.
        codings: String,
    },
    /// The body claims a coding its bytes do not have: the bytes as sent.
    Corrupt {
        /// The body as sent.
        raw: Vec<u8>,
    },
}

/// The body of `r` decoded, at most `max` bytes of it (more: [`Incomplete::TooLarge`], so that a
/// small compressed body cannot make us hold a large one).
pub fn decode(r: &Response, max: usize) -> Result<Decoded, Incomplete> {
    let mut codings: Vec<String> = r
        .header("content-encoding")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|c| String::from_utf8_lossy(c.trim_ascii()).to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    let mut body = r.body.clone();
    // Codings are listed in the order they were applied: undone last first.
    while let Some(coding) = codings.pop() {
        let inflated = match coding.as_str() {
            "gzip" | "x-gzip" => inflate(GzDecoder::new(body.as_slice()), max),
            // HTTP's "deflate" is zlib-wrapped; some servers send it raw.
            "deflate" => inflate(ZlibDecoder::new(body.as_slice()), max)
                .or_else(|_| inflate(DeflateDecoder::new(body.as_slice()), max)),
            _ => {
                codings.push(coding);
                return Ok(Decoded::Unknown { raw: body, codings: codings.join(", ") });
            }
        };
        body = match inflated {
            Ok(b) => b,
            Err(Some(why)) => return Err(why),
            Err(None) => return Ok(Decoded::Corrupt { raw: r.body.clone() }),
        };
    }
    Ok(Decoded::Plain(body))
}

/// Reads `reader` to its end, at most `max` bytes; `Err(None)` if the stream is corrupt.
fn inflate(reader: impl Read, max: usize) -> Result<Vec<u8>, Option<Incomplete>> {
    let mut out = Vec::new();
    match reader.take(max as u64 + 1).read_to_end(&mut out) {
        Ok(n) if n > max => Err(Some(Incomplete::TooLarge)),
        Ok(_) => Ok(out),
        Err(_) => Err(None),
    }
}

/// The SHA-256 of `bytes`, in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the response says its body is JSON (`application/json`, `…+json`).
pub fn is_json(r: &Response) -> bool {
    r.header("content-type").last().is_some_and(|v| {
        let media = v.split(|&b| b == b';').next().unwrap_or_default().trim_ascii().to_ascii_lowercase();
        media == b"application/json" || (media.starts_with(b"application/") && media.ends_with(b"+json"))
    })
}
