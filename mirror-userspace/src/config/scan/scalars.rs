//! Scalars, anchors and tags: where each ends, as libyaml's scanner finds it.

use super::scanner::{Scanner, Step, Stop};

impl Scanner<'_> {
    pub(super) fn starts_plain(&self, c: u8) -> bool {
        !(self.is_blankz(0) || b"-?:,[]{}#&*!|>'\"%@`".contains(&c))
            || (c == b'-' && !self.is_blank(1))
            || (self.flow == 0 && (c == b'?' || c == b':') && !self.is_blankz(1))
    }

    /// `&name` or `*name`.
    pub(super) fn anchor(&mut self) -> Step {
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
    pub(super) fn tag(&mut self) -> Step {
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
    pub(super) fn uri(&mut self, verbatim: bool) {
        while self.is_alpha(0)
            || b";/?:@&=+$.%!~*'()".contains(&self.at(0))
            || (verbatim && b",[]".contains(&self.at(0)))
        {
            self.skip();
        }
    }

    /// `|` or `>` and its lines (libyaml's `scan_block_scalar`).
    pub(super) fn block_scalar(&mut self) -> Step {
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
    pub(super) fn block_scalar_breaks(&mut self, indent: &mut isize) -> Step {
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
    pub(super) fn quoted_scalar(&mut self, single: bool) -> Step {
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
    pub(super) fn plain_scalar(&mut self) -> Step {
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
