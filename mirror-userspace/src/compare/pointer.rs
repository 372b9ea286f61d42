//! JSON pointers (RFC 6901) as the comparison names differences: array indexes collapsed to `*`
//! (`/items/*/id`), so that one field of every element counts as one field. Patterns
//! (`ignoreJsonPaths`, `redact`) are pointers where a `*` segment matches any one segment; a
//! pattern also covers everything under what it matches (`/meta` ignores `/meta/time`).

use std::fmt;

/// A JSON pointer, as a list of unescaped segments; `*` stands for any array index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pointer(Vec<String>);

impl Pointer {
    /// The root (`""`).
    pub fn root() -> Self {
        Pointer(Vec::new())
    }

    /// This pointer with one more segment.
    pub fn child(&self, segment: &str) -> Self {
        let mut v = self.0.clone();
        v.push(segment.to_string());
        Pointer(v)
    }

    /// The segments, unescaped.
    pub fn segments(&self) -> &[String] {
        &self.0
    }
}

/// Written as RFC 6901 says: `/a~1b/~0c` for the segments `a/b`, `~c`.
impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.0 {
            f.write_str("/")?;
            f.write_str(&s.replace('~', "~0").replace('/', "~1"))?;
        }
        Ok(())
    }
}

/// A pointer pattern: `*` matches any one segment (an array index or a key); it matches a pointer
/// that it equals segment by segment, or any pointer below one it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointerPattern {
    segments: Vec<Segment>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Any,
    Literal(String),
}

impl PointerPattern {
    /// Parses `/a/*/b`: empty (the whole document) or `/`-separated segments with RFC 6901's
    /// escapes (`~0` is `~`, `~1` is `/`, any other `~` is an error). A segment that is exactly
    /// `*` is the wildcard (a key named `*` cannot be singled out, which no API needs).
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        if text.is_empty() {
            return Ok(PointerPattern { segments: Vec::new(), text: String::new() });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err("a JSON pointer starts with `/` (like /items/*/id)");
        };
        let mut segments = Vec::new();
        for raw in rest.split('/') {
            if raw == "*" {
                segments.push(Segment::Any);
                continue;
            }
            let mut s = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                match c {
                    '~' => match chars.next() {
                        Some('0') => s.push('~'),
                        Some('1') => s.push('/'),
                        _ => return Err("`~` must be followed by 0 (for ~) or 1 (for /)"),
                    },
                    c => s.push(c),
                }
            }
            segments.push(Segment::Literal(s));
        }
        Ok(PointerPattern { segments, text: text.to_string() })
    }

    /// Whether `pointer` is what this pattern names, or below it.
    pub fn matches(&self, pointer: &Pointer) -> bool {
        pointer.0.len() >= self.segments.len()
            && self.segments.iter().zip(&pointer.0).all(|(p, s)| match p {
                Segment::Any => true,
                Segment::Literal(l) => l == s,
            })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Whether any of `patterns` matches `pointer`.
pub fn any_matches(patterns: &[PointerPattern], pointer: &Pointer) -> bool {
    patterns.iter().any(|p| p.matches(pointer))
}
