//! A look at the raw text before libyaml parses it, in one pass: its size, its nesting depth, its
//! number of documents and of YAML tokens, each refused past its limit at the place it is
//! exceeded.
//!
//! Why: serde_yaml keeps every event of a document in memory before deserializing it (about 130
//! bytes an event, one event for every two bytes at worst), and libyaml spends time proportional
//! to the flow depth on every token. Bounding tokens and depth before parsing bounds both.
//!
//! The scanner follows libyaml's (`unsafe-libyaml`'s `scanner.rs`) wherever a token starts or
//! ends: comments, quoted, block and plain scalars, anchors, tags, directives, document markers,
//! simple keys and the block indentation stack. It keeps no values. Where libyaml would stop
//! with an error, it stops too (libyaml reports the error); past such a point nothing is parsed,
//! so nothing there needs counting.

use super::{
    diagnostic::{ConfigError, ConfigErrorKind as K, Location},
    limits::MAX_FILE_BYTES,
};

/// What the scan counted in a text within the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// YAML tokens, those libyaml adds for block collections included.
    pub tokens: usize,
    /// The deepest nesting: flow levels and block indentation levels.
    pub depth: usize,
    /// Documents.
    pub documents: usize,
}

/// Checks the size, depth, documents and tokens of `text` against their limits.
pub(crate) fn check(text: &str) -> Result<Counts, ConfigError> {
    if text.len() > MAX_FILE_BYTES {
        let kind = K::TooLarge { size: text.len() as u64, max: MAX_FILE_BYTES as u64 };
        return Err(ConfigError::new(kind));
    }
    let b = text.as_bytes();
    // libyaml's reader refuses control characters: nothing past the first one is parsed.
    let end = text.char_indices().find(|&(_, c)| !allowed(c)).map_or(b.len(), |(i, _)| i);
    Scanner::new(&b[..end]).run()
}

/// Where byte `offset` of `text` is, counted as libyaml counts: lines end at `\n`, `\r\n`, `\r`,
/// U+0085, U+2028 and U+2029; columns are characters; a byte order mark at the start is not one.
pub(crate) fn location_of(text: &str, offset: usize) -> Location {
    let text = &text[..offset.min(text.len())];
    let start = if text.starts_with('\u{feff}') { 3 } else { 0 };
    let (mut line, mut column) = (1, 1);
    let mut chars = text[start..].chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}' => {
                line += 1;
                column = 1;
            }
            _ => column += 1,
        }
    }
    Location { line, column }
}

/// The characters libyaml's reader accepts (YAML 1.1's printable set).
fn allowed(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}')
        || c >= '\u{10000}'
}

mod scalars;
mod scanner;

use scanner::Scanner;
