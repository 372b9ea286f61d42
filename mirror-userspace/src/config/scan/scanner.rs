//! The scanner behind [`super::check`]: libyaml's token boundaries, counted, no values kept.

use super::super::{
    diagnostic::{ConfigError, ConfigErrorKind as K, Location},
    limits::{MAX_DEPTH, MAX_DOCUMENTS, MAX_TOKENS},
};
use super::Counts;

/// A possible simple key (a key without `?`), as libyaml keeps one per flow level.
#[derive(Clone, Copy)]
pub(super) struct Key {
    index: usize,
    line: usize,
    column: usize,
}

/// Why the scan ended early.
pub(super) enum Stop {
    /// libyaml stops with an error here: nothing after it is parsed.
    Syntax,
    /// A limit is exceeded.
    Limit(ConfigError),
}

pub(super) type Step = Result<(), Stop>;

pub(super) struct Scanner<'a> {
    pub(super) b: &'a [u8],
    /// Byte offset.
    pub(super) i: usize,
    /// From 0, as libyaml's marks.
    pub(super) line: usize,
    pub(super) column: usize,
    pub(super) flow: usize,
    /// The current block indentation (-1 outside any block collection).
    pub(super) indent: isize,
    /// The enclosing ones.
    pub(super) indents: Vec<isize>,
    /// One per flow level, plus the block level.
    pub(super) keys: Vec<Option<Key>>,
    pub(super) key_allowed: bool,
    pub(super) tokens: usize,
    pub(super) documents: usize,
    /// A document is open: a further token is in it.
    pub(super) in_document: bool,
    /// The deepest nesting so far.
    pub(super) max_depth: usize,
}

impl<'a> Scanner<'a> {
    pub(super) fn new(b: &'a [u8]) -> Self {
        // The reader consumes a byte order mark at the start.
        let i = if b.starts_with("\u{feff}".as_bytes()) { 3 } else { 0 };
        Scanner {
            b,
            i,
            line: 0,
            column: 0,
            flow: 0,
            indent: -1,
            indents: Vec::new(),
            keys: vec![None],
            key_allowed: true,
            tokens: 0,
            documents: 0,
            in_document: false,
            max_depth: 0,
        }
    }

    pub(super) fn run(mut self) -> Result<Counts, ConfigError> {
        match self.tokens_until_end() {
            Ok(()) | Err(Stop::Syntax) => {
                Ok(Counts { tokens: self.tokens, depth: self.max_depth, documents: self.documents })
            }
            Err(Stop::Limit(e)) => Err(e),
        }
    }

    // Characters, as libyaml's macros see them (past the end: NUL).

    pub(super) fn at(&self, k: usize) -> u8 {
        self.b.get(self.i + k).copied().unwrap_or(0)
    }
    pub(super) fn is(&self, k: usize, c: u8) -> bool {
        self.at(k) == c
    }
    pub(super) fn is_z(&self, k: usize) -> bool {
        self.i + k >= self.b.len()
    }
    pub(super) fn is_blank(&self, k: usize) -> bool {
        matches!(self.at(k), b' ' | b'\t')
    }
    pub(super) fn is_break(&self, k: usize) -> bool {
        match self.at(k) {
            b'\r' | b'\n' => true,
            0xc2 => self.at(k + 1) == 0x85,
            0xe2 => self.at(k + 1) == 0x80 && matches!(self.at(k + 2), 0xa8 | 0xa9),
            _ => false,
        }
    }
    pub(super) fn is_breakz(&self, k: usize) -> bool {
        self.is_break(k) || self.is_z(k)
    }
    pub(super) fn is_blankz(&self, k: usize) -> bool {
        self.is_blank(k) || self.is_breakz(k)
    }
    pub(super) fn is_alpha(&self, k: usize) -> bool {
        matches!(self.at(k), b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' | b'_' | b'-')
    }
    pub(super) fn is_hex(&self, k: usize) -> bool {
        self.at(k).is_ascii_hexdigit()
    }
    /// `---` or `...` at the start of a line, followed by a blank or the end of a line.
    pub(super) fn is_document_indicator(&self) -> bool {
        self.column == 0
            && ((self.is(0, b'-') && self.is(1, b'-') && self.is(2, b'-'))
                || (self.is(0, b'.') && self.is(1, b'.') && self.is(2, b'.')))
            && self.is_blankz(3)
    }

    /// Past one character.
    pub(super) fn skip(&mut self) {
        let width = match self.at(0) {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            _ => 4,
        };
        self.i = (self.i + width).min(self.b.len());
        self.column += 1;
    }

    /// Past one line break (`\r\n` is one).
    pub(super) fn skip_line(&mut self) {
        if self.is(0, b'\r') && self.is(1, b'\n') {
            self.i += 2;
        } else if self.is_break(0) {
            self.i += if self.at(0) < 0x80 {
                1
            } else if self.at(0) == 0xc2 {
                2
            } else {
                3
            };
        } else {
            return;
        }
        self.line += 1;
        self.column = 0;
    }

    pub(super) fn here(&self) -> Location {
        Location { line: self.line + 1, column: self.column + 1 }
    }

    // Limits.

    /// One more token (`n` of them: libyaml adds some).
    pub(super) fn token(&mut self, n: usize) -> Step {
        self.tokens += n;
        if self.tokens > MAX_TOKENS {
            return Err(Stop::Limit(ConfigError::new(K::TooManyTokens { max: MAX_TOKENS }).at(Some(self.here()))));
        }
        Ok(())
    }

    /// The nesting is within its limit; `at` is the collection that deepens it.
    pub(super) fn check_depth(&mut self, at: Location) -> Step {
        self.max_depth = self.max_depth.max(self.flow + self.indents.len());
        if self.max_depth > MAX_DEPTH {
            return Err(Stop::Limit(ConfigError::new(K::TooDeep { max: MAX_DEPTH }).at(Some(at))));
        }
        Ok(())
    }

    /// A token that is content opens a document if none is open.
    pub(super) fn content(&mut self) -> Step {
        if !self.in_document {
            self.open_document()?;
        }
        Ok(())
    }

    pub(super) fn open_document(&mut self) -> Step {
        self.in_document = true;
        self.documents += 1;
        if self.documents > MAX_DOCUMENTS {
            let e = ConfigError::new(K::TooManyDocuments { max: MAX_DOCUMENTS }).at(Some(self.here()));
            return Err(Stop::Limit(e));
        }
        Ok(())
    }

    // libyaml's indentation and simple keys.

    /// A block collection starting at `column` of `line` (libyaml's `roll_indent`).
    pub(super) fn roll(&mut self, line: usize, column: usize) -> Step {
        if self.flow == 0 && self.indent < column as isize {
            self.indents.push(self.indent);
            self.indent = column as isize;
            self.token(1)?;
            self.check_depth(Location { line: line + 1, column: column + 1 })?;
        }
        Ok(())
    }

    /// Block collections ending before `column` (libyaml's `unroll_indent`).
    pub(super) fn unroll(&mut self, column: isize) -> Step {
        if self.flow == 0 {
            while self.indent > column {
                self.indent = self.indents.pop().unwrap_or(-1);
                self.token(1)?;
            }
        }
        Ok(())
    }

    pub(super) fn save_key(&mut self) {
        if self.key_allowed {
            let key = Key { index: self.i, line: self.line, column: self.column };
            *self.keys.last_mut().expect("the block level's key") = Some(key);
        }
    }

    pub(super) fn remove_key(&mut self) {
        *self.keys.last_mut().expect("the block level's key") = None;
    }

    /// The possible simple key of this level, unless it is stale (libyaml: on an earlier line, or
    /// more than 1024 bytes back).
    pub(super) fn take_key(&mut self) -> Option<Key> {
        let (i, line) = (self.i, self.line);
        self.keys.last_mut().expect("the block level's key").take().filter(|k| k.line == line && k.index + 1024 >= i)
    }

    // The scanner.

    pub(super) fn tokens_until_end(&mut self) -> Step {
        loop {
            self.skip_to_next_token();
            self.unroll(self.column as isize)?;
            if self.is_z(0) {
                return self.unroll(-1);
            }
            let c = self.at(0);
            if self.column == 0 && c == b'%' {
                self.directive()?;
            } else if self.is_document_indicator() {
                self.document_indicator(c == b'-')?;
            } else {
                self.content()?;
                self.next_token(c)?;
            }
        }
    }

    /// Past spaces, comments and line breaks (libyaml's `scan_to_next_token`).
    pub(super) fn skip_to_next_token(&mut self) {
        loop {
            if self.column == 0 && self.b[self.i..].starts_with("\u{feff}".as_bytes()) {
                self.skip();
            }
            while self.is(0, b' ') || ((self.flow > 0 || !self.key_allowed) && self.is(0, b'\t')) {
                self.skip();
            }
            if self.is(0, b'#') {
                while !self.is_breakz(0) {
                    self.skip();
                }
            }
            if !self.is_break(0) {
                return;
            }
            self.skip_line();
            if self.flow == 0 {
                self.key_allowed = true;
            }
        }
    }

    /// `%YAML`, `%TAG` or another directive: to the end of the line.
    pub(super) fn directive(&mut self) -> Step {
        self.unroll(-1)?;
        self.remove_key();
        self.key_allowed = false;
        self.token(1)?;
        while !self.is_breakz(0) {
            self.skip();
        }
        self.skip_line();
        Ok(())
    }

    pub(super) fn document_indicator(&mut self, start: bool) -> Step {
        self.unroll(-1)?;
        self.remove_key();
        self.key_allowed = false;
        self.token(1)?;
        if start {
            self.open_document()?;
        } else {
            self.in_document = false;
        }
        self.skip();
        self.skip();
        self.skip();
        Ok(())
    }

    /// The token starting with `c` (libyaml's `fetch_next_token`, after the document level).
    pub(super) fn next_token(&mut self, c: u8) -> Step {
        self.token(1)?;
        let flow = self.flow > 0;
        match c {
            b'[' | b'{' => {
                self.save_key();
                self.flow += 1;
                self.keys.push(None);
                self.check_depth(self.here())?;
                self.key_allowed = true;
                self.skip();
            }
            b']' | b'}' => {
                self.remove_key();
                if self.flow > 0 {
                    self.flow -= 1;
                    self.keys.pop();
                }
                self.key_allowed = false;
                self.skip();
            }
            b',' => {
                self.remove_key();
                self.key_allowed = true;
                self.skip();
            }
            b'-' if self.is_blankz(1) => {
                if !flow {
                    if !self.key_allowed {
                        return Err(Stop::Syntax);
                    }
                    self.roll(self.line, self.column)?;
                }
                self.remove_key();
                self.key_allowed = true;
                self.skip();
            }
            b'?' if flow || self.is_blankz(1) => {
                if !flow {
                    if !self.key_allowed {
                        return Err(Stop::Syntax);
                    }
                    self.roll(self.line, self.column)?;
                }
                self.remove_key();
                self.key_allowed = !flow;
                self.skip();
            }
            b':' if flow || self.is_blankz(1) => {
                if let Some(key) = self.take_key() {
                    // libyaml inserts a KEY token before the key.
                    self.token(1)?;
                    self.roll(key.line, key.column)?;
                    self.key_allowed = false;
                } else {
                    if !flow {
                        if !self.key_allowed {
                            return Err(Stop::Syntax);
                        }
                        self.roll(self.line, self.column)?;
                    }
                    self.key_allowed = !flow;
                }
                self.skip();
            }
            b'*' | b'&' => {
                self.save_key();
                self.key_allowed = false;
                self.anchor()?;
            }
            b'!' => {
                self.save_key();
                self.key_allowed = false;
                self.tag()?;
            }
            b'|' | b'>' if !flow => {
                self.remove_key();
                self.key_allowed = true;
                self.block_scalar()?;
            }
            b'\'' | b'"' => {
                self.save_key();
                self.key_allowed = false;
                self.quoted_scalar(c == b'\'')?;
            }
            _ if self.starts_plain(c) => {
                self.save_key();
                self.key_allowed = false;
                self.plain_scalar()?;
            }
            _ => return Err(Stop::Syntax),
        }
        Ok(())
    }
}
