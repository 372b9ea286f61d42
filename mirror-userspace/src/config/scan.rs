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
    limits::{MAX_DEPTH, MAX_DOCUMENTS, MAX_FILE_BYTES, MAX_TOKENS},
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

/// A possible simple key (a key without `?`), as libyaml keeps one per flow level.
#[derive(Clone, Copy)]
struct Key {
    index: usize,
    line: usize,
    column: usize,
}

/// Why the scan ended early.
enum Stop {
    /// libyaml stops with an error here: nothing after it is parsed.
    Syntax,
    /// A limit is exceeded.
    Limit(ConfigError),
}

type Step = Result<(), Stop>;

struct Scanner<'a> {
    b: &'a [u8],
    /// Byte offset.
    i: usize,
    /// From 0, as libyaml's marks.
    line: usize,
    column: usize,
    flow: usize,
    /// The current block indentation (-1 outside any block collection).
    indent: isize,
    /// The enclosing ones.
    indents: Vec<isize>,
    /// One per flow level, plus the block level.
    keys: Vec<Option<Key>>,
    key_allowed: bool,
    tokens: usize,
    documents: usize,
    /// A document is open: a further token is in it.
    in_document: bool,
    /// The deepest nesting so far.
    max_depth: usize,
}

impl<'a> Scanner<'a> {
    fn new(b: &'a [u8]) -> Self {
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

    fn run(mut self) -> Result<Counts, ConfigError> {
        match self.tokens_until_end() {
            Ok(()) | Err(Stop::Syntax) => {
                Ok(Counts { tokens: self.tokens, depth: self.max_depth, documents: self.documents })
            }
            Err(Stop::Limit(e)) => Err(e),
        }
    }

    // Characters, as libyaml's macros see them (past the end: NUL).

    fn at(&self, k: usize) -> u8 {
        self.b.get(self.i + k).copied().unwrap_or(0)
    }
    fn is(&self, k: usize, c: u8) -> bool {
        self.at(k) == c
    }
    fn is_z(&self, k: usize) -> bool {
        self.i + k >= self.b.len()
    }
    fn is_blank(&self, k: usize) -> bool {
        matches!(self.at(k), b' ' | b'\t')
    }
    fn is_break(&self, k: usize) -> bool {
        match self.at(k) {
            b'\r' | b'\n' => true,
            0xc2 => self.at(k + 1) == 0x85,
            0xe2 => self.at(k + 1) == 0x80 && matches!(self.at(k + 2), 0xa8 | 0xa9),
            _ => false,
        }
    }
    fn is_breakz(&self, k: usize) -> bool {
        self.is_break(k) || self.is_z(k)
    }
    fn is_blankz(&self, k: usize) -> bool {
        self.is_blank(k) || self.is_breakz(k)
    }
    fn is_alpha(&self, k: usize) -> bool {
        matches!(self.at(k), b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' | b'_' | b'-')
    }
    fn is_hex(&self, k: usize) -> bool {
        self.at(k).is_ascii_hexdigit()
    }
    /// `---` or `...` at the start of a line, followed by a blank or the end of a line.
    fn is_document_indicator(&self) -> bool {
        self.column == 0
            && ((self.is(0, b'-') && self.is(1, b'-') && self.is(2, b'-'))
                || (self.is(0, b'.') && self.is(1, b'.') && self.is(2, b'.')))
            && self.is_blankz(3)
    }

    /// Past one character.
    fn skip(&mut self) {
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
    fn skip_line(&mut self) {
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

    fn here(&self) -> Location {
        Location { line: self.line + 1, column: self.column + 1 }
    }

    // Limits.

    /// One more token (`n` of them: libyaml adds some).
    fn token(&mut self, n: usize) -> Step {
        self.tokens += n;
        if self.tokens > MAX_TOKENS {
            return Err(Stop::Limit(ConfigError::new(K::TooManyTokens { max: MAX_TOKENS }).at(Some(self.here()))));
        }
        Ok(())
    }

    /// The nesting is within its limit; `at` is the collection that deepens it.
    fn check_depth(&mut self, at: Location) -> Step {
        self.max_depth = self.max_depth.max(self.flow + self.indents.len());
        if self.max_depth > MAX_DEPTH {
            return Err(Stop::Limit(ConfigError::new(K::TooDeep { max: MAX_DEPTH }).at(Some(at))));
        }
        Ok(())
    }

    /// A token that is content opens a document if none is open.
    fn content(&mut self) -> Step {
        if !self.in_document {
            self.open_document()?;
        }
        Ok(())
    }

    fn open_document(&mut self) -> Step {
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
    fn roll(&mut self, line: usize, column: usize) -> Step {
        if self.flow == 0 && self.indent < column as isize {
            self.indents.push(self.indent);
            self.indent = column as isize;
            self.token(1)?;
            self.check_depth(Location { line: line + 1, column: column + 1 })?;
        }
        Ok(())
    }

    /// Block collections ending before `column` (libyaml's `unroll_indent`).
    fn unroll(&mut self, column: isize) -> Step {
        if self.flow == 0 {
            while self.indent > column {
                self.indent = self.indents.pop().unwrap_or(-1);
                self.token(1)?;
            }
        }
        Ok(())
    }

    fn save_key(&mut self) {
        if self.key_allowed {
            let key = Key { index: self.i, line: self.line, column: self.column };
            *self.keys.last_mut().expect("the block level's key") = Some(key);
        }
    }

    fn remove_key(&mut self) {
        *self.keys.last_mut().expect("the block level's key") = None;
    }

    /// The possible simple key of this level, unless it is stale (libyaml: on an earlier line, or
    /// more than 1024 bytes back).
    fn take_key(&mut self) -> Option<Key> {
        let (i, line) = (self.i, self.line);
        self.keys.last_mut().expect("the block level's key").take().filter(|k| k.line == line && k.index + 1024 >= i)
    }

    // The scanner.

    fn tokens_until_end(&mut self) -> Step {
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
    fn skip_to_next_token(&mut self) {
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
    fn directive(&mut self) -> Step {
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

    fn document_indicator(&mut self, start: bool) -> Step {
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
    fn next_token(&mut self, c: u8) -> Step {
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

    fn starts_plain(&self, c: u8) -> bool {
        !(self.is_blankz(0) || b"-?:,[]{}#&*!|>'\"%@`".contains(&c))
            || (c == b'-' && !self.is_blank(1))
            || (self.flow == 0 && (c == b'?' || c == b':') && !self.is_blankz(1))
    }

    /// `&name` or `*name`.
    fn anchor(&mut self) -> Step {
        self.skip();
        let start = self.i;
        while self.is_alpha(0) {
            self.skip();
        }
        let ends = self.is_blankz(0) || b"?:,]}%@`".contains(&self.at(0));
        if self.i == start || !ends {
            return Err(Stop::Syntax);
        }
        Ok(())
    }

    /// `!<uri>`, `!handle!suffix` or `!suffix`.
    fn tag(&mut self) -> Step {
        if self.is(1, b'<') {
            self.skip();
            self.skip();
            self.uri(true);
            if !self.is(0, b'>') {
                return Err(Stop::Syntax);
            }
            self.skip();
        } else {
            // The handle (`!`, `!!` or `!name!`), then the suffix: all of it URI characters.
            self.skip();
            self.uri(false);
        }
        if !(self.is_blankz(0) || (self.flow > 0 && self.is(0, b','))) {
            return Err(Stop::Syntax);
        }
        Ok(())
    }

    /// Past the characters of a tag URI (libyaml's `scan_tag_uri`; `%` escapes are URI
    /// characters followed by hex digits, and malformed ones are libyaml's error to report).
    fn uri(&mut self, verbatim: bool) {
        while self.is_alpha(0)
            || b";/?:@&=+$.%!~*'()".contains(&self.at(0))
            || (verbatim && b",[]".contains(&self.at(0)))
        {
            self.skip();
        }
    }

    /// `|` or `>` and its lines (libyaml's `scan_block_scalar`).
    fn block_scalar(&mut self) -> Step {
        self.skip();
        let mut increment = 0;
        if self.is(0, b'+') || self.is(0, b'-') {
            self.skip();
            if self.at(0).is_ascii_digit() {
                if self.is(0, b'0') {
                    return Err(Stop::Syntax);
                }
                increment = isize::from(self.at(0) - b'0');
                self.skip();
            }
        } else if self.at(0).is_ascii_digit() {
            if self.is(0, b'0') {
                return Err(Stop::Syntax);
            }
            increment = isize::from(self.at(0) - b'0');
            self.skip();
            if self.is(0, b'+') || self.is(0, b'-') {
                self.skip();
            }
        }
        while self.is_blank(0) {
            self.skip();
        }
        if self.is(0, b'#') {
            while !self.is_breakz(0) {
                self.skip();
            }
        }
        if !self.is_breakz(0) {
            return Err(Stop::Syntax);
        }
        self.skip_line();
        let mut indent = match increment {
            0 => 0,
            n if self.indent >= 0 => self.indent + n,
            n => n,
        };
        self.block_scalar_breaks(&mut indent)?;
        while self.column as isize == indent && !self.is_z(0) {
            while !self.is_breakz(0) {
                self.skip();
            }
            self.skip_line();
            self.block_scalar_breaks(&mut indent)?;
        }
        Ok(())
    }

    /// Empty lines and indentation of a block scalar; the first sets its indentation.
    fn block_scalar_breaks(&mut self, indent: &mut isize) -> Step {
        let mut max_indent = 0;
        loop {
            while (*indent == 0 || (self.column as isize) < *indent) && self.is(0, b' ') {
                self.skip();
            }
            max_indent = max_indent.max(self.column as isize);
            if (*indent == 0 || (self.column as isize) < *indent) && self.is(0, b'\t') {
                return Err(Stop::Syntax);
            }
            if !self.is_break(0) {
                break;
            }
            self.skip_line();
        }
        if *indent == 0 {
            *indent = max_indent.max(self.indent + 1).max(1);
        }
        Ok(())
    }

    /// `'…'` or `"…"`, over lines (libyaml's `scan_flow_scalar`).
    fn quoted_scalar(&mut self, single: bool) -> Step {
        let quote = if single { b'\'' } else { b'"' };
        self.skip();
        loop {
            if self.is_document_indicator() || self.is_z(0) {
                return Err(Stop::Syntax);
            }
            while !self.is_blankz(0) {
                if single && self.is(0, b'\'') && self.is(1, b'\'') {
                    self.skip();
                    self.skip();
                } else if self.is(0, quote) {
                    break;
                } else if !single && self.is(0, b'\\') && self.is_break(1) {
                    self.skip();
                    self.skip_line();
                    break;
                } else if !single && self.is(0, b'\\') {
                    let digits = match self.at(1) {
                        b'0' | b'a' | b'b' | b't' | b'\t' | b'n' | b'v' | b'f' | b'r' | b'e' | b' ' | b'"' | b'/'
                        | b'\\' | b'N' | b'_' | b'L' | b'P' => 0,
                        b'x' => 2,
                        b'u' => 4,
                        b'U' => 8,
                        _ => return Err(Stop::Syntax),
                    };
                    self.skip();
                    self.skip();
                    for _ in 0..digits {
                        if !self.is_hex(0) {
                            return Err(Stop::Syntax);
                        }
                        self.skip();
                    }
                } else {
                    self.skip();
                }
            }
            if self.is(0, quote) {
                self.skip();
                return Ok(());
            }
            while self.is_blank(0) || self.is_break(0) {
                if self.is_blank(0) {
                    self.skip();
                } else {
                    self.skip_line();
                }
            }
        }
    }

    /// A plain scalar, over lines while they are indented more than the block (libyaml's
    /// `scan_plain_scalar`).
    fn plain_scalar(&mut self) -> Step {
        let indent = self.indent + 1;
        let mut leading_blanks = false;
        loop {
            if self.is_document_indicator() || self.is(0, b'#') {
                break;
            }
            while !self.is_blankz(0) {
                let c = self.at(0);
                if self.flow > 0 && c == b':' && b",?[]{}".contains(&self.at(1)) {
                    return Err(Stop::Syntax);
                }
                if (c == b':' && self.is_blankz(1)) || (self.flow > 0 && b",[]{}".contains(&c)) {
                    break;
                }
                leading_blanks = false;
                self.skip();
            }
            if !(self.is_blank(0) || self.is_break(0)) {
                break;
            }
            while self.is_blank(0) || self.is_break(0) {
                if self.is_blank(0) {
                    if leading_blanks && (self.column as isize) < indent && self.is(0, b'\t') {
                        return Err(Stop::Syntax);
                    }
                    self.skip();
                } else {
                    self.skip_line();
                    leading_blanks = true;
                }
            }
            if self.flow == 0 && (self.column as isize) < indent {
                break;
            }
        }
        if leading_blanks {
            self.key_allowed = true;
        }
        Ok(())
    }
}
