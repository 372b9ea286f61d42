//! What is wrong with a config, and where: [`ConfigError`] carries the file, the line and column
//! of the offending node, where it sits in the config (`routes[0] (api).match[1].uri`) and a typed
//! [`ConfigErrorKind`]. It displays as `file:line:column: where: what`, the form editors jump to.

use std::fmt;

use super::{
    budget::{TOO_LONG, TOO_MANY_VALUES},
    limits::{MAX_STRING_BYTES, MAX_TEXT_BYTES, MAX_VALUES},
};

/// A place in the config file, as people count: the first line is 1, the first column is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column (in characters), from 1.
    pub column: usize,
}

/// A config that cannot be used, and why: where (file, line, column, place in the config) and a
/// typed [`ConfigErrorKind`]. Boxed: it travels in every `Result` of the loader.
#[derive(Debug)]
pub struct ConfigError(Box<Inner>);

#[derive(Debug)]
struct Inner {
    origin: String,
    location: Option<Location>,
    path: String,
    kind: ConfigErrorKind,
}

/// What is wrong with a config.
#[derive(Debug)]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Read(std::io::Error),
    /// Not YAML, or YAML of the wrong shape (a wrong type, a missing field…), in serde_yaml's words
    /// (including its path to the node).
    Yaml {
        /// serde_yaml's message, without the position (that is [`ConfigError::location`]).
        message: String,
    },
    /// A field that this place does not have.
    UnknownField {
        /// The field as written.
        field: String,
        /// The fields this place has.
        expected: Vec<String>,
        /// The expected field closest to `field`, if one is close.
        suggestion: Option<String>,
    },
    /// A required field of a VirtualService or DestinationRule is absent.
    MissingField {
        /// Its name.
        field: &'static str,
    },
    /// A field given twice in one mapping.
    DuplicateField {
        /// Its name.
        field: String,
    },
    /// A section of our own document given again in a later document.
    DuplicateSection {
        /// `capture`, `endpoints`, `replay`, `routes` or `mirrorPolicies`.
        section: &'static str,
    },
    /// No document has a `capture` section.
    NoCapture,
    /// `capture.interfaces` is empty.
    NoInterfaces,
    /// `capture.ports` is empty.
    NoPorts,
    /// `capture.perfPages` is not a power of two.
    PerfPagesNotPowerOfTwo {
        /// The value given.
        pages: usize,
    },
    /// Neither `routes` nor a VirtualService with `http` routes.
    NoRoutes,
    /// A VirtualService's `spec.hosts` is empty.
    NoHosts,
    /// A route has both `mirror` and `mirrors` (Istio refuses that too).
    MirrorAndMirrors,
    /// A route with `mirrors` also has `mirrorPercentage` or `mirrorPercent`.
    PercentageWithMirrors,
    /// A percentage outside [0, 100].
    PercentOutOfRange {
        /// The value given.
        value: f64,
    },
    /// A string match with more than one of `exact`, `prefix`, `regex`.
    AmbiguousMatch,
    /// A string match with none of `exact`, `prefix`, `regex` where presence alone means nothing
    /// (`uri`, `scheme`, `method`, `authority`).
    EmptyMatch,
    /// A `regex` that RE2 syntax (the regex crate's) refuses, by itself or anchored as it runs.
    InvalidRegex {
        /// The pattern as written.
        pattern: String,
        /// The regex crate's explanation.
        error: regex::Error,
    },
    /// A header name in a match with upper-case letters (Istio wants them lower case).
    UpperCaseHeader {
        /// The name as written.
        name: String,
    },
    /// A mirror destination names a subset its host's DestinationRule does not define.
    UnknownSubset {
        /// The destination's host.
        host: String,
        /// The subset named.
        subset: String,
        /// The subsets the DestinationRule defines.
        known: Vec<String>,
    },
    /// A mirror destination that no `endpoints` entry says how to reach.
    NoEndpoint {
        /// The `endpoints` key looked for (`host/subset` or `host`).
        key: String,
        /// The keys there are.
        known: Vec<String>,
    },
    /// An `endpoints` address that is not `address:port`.
    BadAddress {
        /// The address as written.
        address: String,
    },
    /// An `endpoints` entry without addresses.
    NoAddresses,
    /// A `mirrorPolicies` key that is not an `endpoints` key.
    UnknownPolicy,
    /// The file is larger than [`MAX_FILE_BYTES`](super::limits::MAX_FILE_BYTES) (no place: the
    /// whole file is).
    TooLarge {
        /// Its size in bytes (reading stops one byte past the limit, if the file grows).
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The file is not UTF-8; placed at the first byte that is not.
    NotUtf8 {
        /// That byte.
        byte: u8,
    },
    /// Collections nested deeper than [`MAX_DEPTH`](super::limits::MAX_DEPTH) (or, through an alias
    /// inside its own anchor, than serde_yaml's 128).
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// More than [`MAX_DOCUMENTS`](super::limits::MAX_DOCUMENTS) documents; placed at the first one
    /// too many.
    TooManyDocuments {
        /// The limit.
        max: usize,
    },
    /// More than [`MAX_TOKENS`](super::limits::MAX_TOKENS) YAML tokens; placed at the first one too
    /// many.
    TooManyTokens {
        /// The limit.
        max: usize,
    },
    /// More than [`MAX_VALUES`](super::limits::MAX_VALUES) values or
    /// [`MAX_TEXT_BYTES`](super::limits::MAX_TEXT_BYTES) bytes of text once aliases are expanded
    /// (or more alias jumps than serde_yaml's own limit).
    TooManyValues {
        /// The limit on values.
        max_values: usize,
        /// The limit on bytes of text.
        max_text_bytes: usize,
    },
    /// A string longer than its limit.
    TooLong {
        /// What kind of string (`a string`, `an interface name`).
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A number outside its range (the limits are in [`limits`](super::limits)).
    OutOfRange {
        /// The setting, as README's table names it (`replay.queue`).
        field: &'static str,
        /// The value given (saturated to `i128`).
        value: i128,
        /// The smallest allowed.
        min: i128,
        /// The largest allowed.
        max: i128,
    },
    /// A list or mapping with more entries than its limit; placed at the first entry too many.
    TooMany {
        /// The setting, as README's table names it (`capture.ports`).
        field: &'static str,
        /// The limit.
        max: usize,
    },
    /// The regexes together compile to more than
    /// [`REGEX_TOTAL_LIMIT`](super::limits::REGEX_TOTAL_LIMIT); placed at the first one too many.
    RegexesTooLarge {
        /// The limit.
        max: usize,
    },
    /// An interface name Linux cannot have (1 to 15 bytes, no `/`, `:` or whitespace).
    BadInterface {
        /// The name as written.
        name: String,
    },
    /// A header that would be written into mirrored requests as it is: its name must be an HTTP
    /// token, its value free of control characters (a CR or LF would start another header).
    BadHeader {
        /// The header's name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A `capture.interfaces` glob that does not parse (`cali[`).
    BadGlob {
        /// The glob as written.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `capture.addresses` entry that is not a prefix (`10.244.0.0/16`, `fd00::/64`) or an
    /// address.
    BadPrefix {
        /// The entry as written.
        prefix: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `mirrorPolicies.<dest>.compare` block that cannot be used (see `config/compare.rs`).
    Compare(super::compare::CompareProblem),
}

impl ConfigError {
    /// An error of this kind, not yet placed.
    pub(crate) fn new(kind: ConfigErrorKind) -> Self {
        ConfigError(Box::new(Inner { origin: String::new(), location: None, path: String::new(), kind }))
    }

    /// Placed at `location`.
    pub(crate) fn at(mut self, location: Option<Location>) -> Self {
        self.0.location = location;
        self
    }

    /// Said to be about `path` (`routes[0].mirror`).
    pub(crate) fn within(mut self, path: impl Into<String>) -> Self {
        self.0.path = path.into();
        self
    }

    /// Said to be in `origin` (a file name).
    pub(crate) fn in_origin(mut self, origin: impl Into<String>) -> Self {
        self.0.origin = origin.into();
        self
    }

    /// The file name (or whatever the caller of [`Config::parse`](super::Config::parse) called
    /// the text).
    pub fn origin(&self) -> &str {
        &self.0.origin
    }

    /// Where the offending node starts; `None` for what is missing rather than wrong, and for an
    /// unreadable file.
    pub fn location(&self) -> Option<Location> {
        self.0.location
    }

    /// The line of the offending node, if the error has a place.
    pub fn line(&self) -> Option<usize> {
        self.0.location.map(|l| l.line)
    }

    /// The column of the offending node, if the error has a place.
    pub fn column(&self) -> Option<usize> {
        self.0.location.map(|l| l.column)
    }

    /// Where in the config, as people write it (`capture.ports`, `routes[0] (api).mirror`);
    /// empty when the kind says it all (YAML errors carry their own path in their message).
    pub fn path(&self) -> &str {
        &self.0.path
    }

    /// What is wrong.
    pub fn kind(&self) -> &ConfigErrorKind {
        &self.0.kind
    }

    /// serde_yaml's error (syntax, types, unknown fields), placed where serde_yaml places it.
    pub(crate) fn from_yaml(e: &serde_yaml::Error) -> Self {
        let location = e.location().map(|l| Location { line: l.line(), column: l.column() });
        let text = e.to_string();
        // serde_yaml appends the position; it is kept apart, in `location`.
        let message = text.split(" at line ").next().unwrap_or(&text);
        if let Some((path, kind)) = limit_exceeded(message) {
            return ConfigError::new(kind).within(path).at(location);
        }
        match unknown_field(message) {
            Some((path, field, expected)) => {
                ConfigError::new(ConfigErrorKind::unknown_field(field, expected)).within(path).at(location)
            }
            None => ConfigError::new(ConfigErrorKind::Yaml { message: message.to_string() }).at(location),
        }
    }
}

impl ConfigErrorKind {
    /// An unknown field, with the closest expected name as a suggestion.
    pub(crate) fn unknown_field(field: &str, expected: Vec<String>) -> Self {
        let suggestion = expected
            .iter()
            .map(|c| (strsim::jaro_winkler(field, c), c))
            .filter(|(score, _)| *score > 0.75)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, c)| c.clone());
        ConfigErrorKind::UnknownField { field: field.to_string(), expected, suggestion }
    }
}

/// A limit of the budget (`budget`) or serde_yaml's own ones, from its message: the path before it,
/// and the kind.
fn limit_exceeded(message: &str) -> Option<(&str, ConfigErrorKind)> {
    let too_many = || ConfigErrorKind::TooManyValues { max_values: MAX_VALUES, max_text_bytes: MAX_TEXT_BYTES };
    match message {
        // An alias repeated more often than serde_yaml allows (it gives no position).
        "repetition limit exceeded" => return Some(("", too_many())),
        // Only reachable through an alias inside its own anchor: the scan refuses deeper text.
        "recursion limit exceeded" => return Some(("", ConfigErrorKind::TooDeep { max: 128 })),
        _ => {}
    }
    // serde_yaml puts the path to the node first: `routes[0].name: <marker>`.
    fn path(before: &str) -> &str {
        before.strip_suffix(": ").unwrap_or("")
    }
    if let Some((before, len)) = message.split_once(TOO_LONG) {
        let kind = ConfigErrorKind::TooLong { what: "a string", len: len.parse().unwrap_or(0), max: MAX_STRING_BYTES };
        return Some((path(before), kind));
    }
    let (before, _) = message.split_once(TOO_MANY_VALUES)?;
    Some((path(before), too_many()))
}

/// serde's "path: unknown field `x`, expected one of `a`, `b`" taken apart: path, field, expected.
fn unknown_field(message: &str) -> Option<(&str, &str, Vec<String>)> {
    let (before, after) = message.split_once("unknown field `")?;
    let path = if before.is_empty() { "" } else { before.strip_suffix(": ")? };
    let (field, rest) = after.split_once('`')?;
    let expected = match rest {
        ", there are no fields" => Vec::new(),
        _ => rest.strip_prefix(", expected ")?.split('`').skip(1).step_by(2).map(str::to_string).collect(),
    };
    Some((path, field, expected))
}

/// As serde words a list of expected names: `a`, `a` or `b`, one of `a`, `b`, `c`.
struct OneOf<'a>(&'a [String]);

impl fmt::Display for OneOf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => f.write_str("nothing"),
            [a] => write!(f, "`{a}`"),
            [a, b] => write!(f, "`{a}` or `{b}`"),
            all => {
                f.write_str("one of ")?;
                for (i, name) in all.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "`{name}`")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for ConfigErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ConfigErrorKind as K;
        match self {
            K::Read(e) => write!(f, "cannot read it: {e}"),
            K::Yaml { message } => f.write_str(message),
            K::UnknownField { field, expected, suggestion } => {
                if expected.is_empty() {
                    write!(f, "unknown field `{field}`, there are no fields")?;
                } else {
                    write!(f, "unknown field `{field}`, expected {}", OneOf(expected))?;
                }
                match suggestion {
                    Some(s) => write!(f, "; did you mean `{s}`?"),
                    None => Ok(()),
                }
            }
            K::MissingField { field } => write!(f, "missing field `{field}`"),
            K::DuplicateField { field } => write!(f, "duplicate field `{field}`"),
            K::DuplicateSection { section } => write!(f, "`{section}` was already given in an earlier document"),
            K::NoCapture => f.write_str("no `capture` section (interfaces and ports)"),
            K::NoInterfaces => f.write_str("at least one interface is needed"),
            K::NoPorts => f.write_str("at least one port (1-65535) is needed"),
            K::PerfPagesNotPowerOfTwo { pages } => write!(f, "{pages} is not a power of two"),
            K::NoRoutes => f.write_str("no routes: give `routes`, or a VirtualService with `http` routes"),
            K::NoHosts => f.write_str("spec.hosts is empty"),
            K::MirrorAndMirrors => f.write_str("`mirror` and `mirrors` cannot both be set (as in Istio)"),
            K::PercentageWithMirrors => f.write_str("with `mirrors`, give each entry its own `percentage`"),
            K::PercentOutOfRange { value } => write!(f, "{value} is not within [0, 100]"),
            K::AmbiguousMatch => f.write_str("give only one of exact, prefix, regex"),
            K::EmptyMatch => f.write_str("give one of exact, prefix, regex"),
            K::InvalidRegex { error, .. } => write!(f, "invalid regular expression (RE2 syntax): {error}"),
            K::UpperCaseHeader { .. } => f.write_str("header names must be lower case (as in Istio)"),
            K::UnknownSubset { host, subset, known } => write!(
                f,
                "subset '{subset}' of '{host}' is not defined by its DestinationRule (it has: {})",
                known.join(", ")
            ),
            K::NoEndpoint { key, known } => write!(
                f,
                "no endpoint for '{key}': add it under `endpoints` (there: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ),
            K::BadAddress { address } => write!(f, "'{address}' is not an address:port (like 10.0.0.3:8000)"),
            K::NoAddresses => f.write_str("no addresses"),
            K::UnknownPolicy => f.write_str("not a destination listed under `endpoints`"),
            K::TooLarge { size, max } => {
                write!(f, "{size} bytes: a config file may have at most {max} bytes")
            }
            K::NotUtf8 { byte } => write!(f, "not UTF-8 (byte 0x{byte:02x})"),
            K::TooDeep { max } => write!(f, "nested more than {max} levels deep"),
            K::TooManyDocuments { max } => write!(f, "more than {max} documents"),
            K::TooManyTokens { max } => {
                write!(f, "more than {max} YAML tokens (scalars, aliases, `-`, `?`, `:`, `,` and brackets)")
            }
            K::TooManyValues { max_values, max_text_bytes } => {
                write!(f, "more than {max_values} values or {max_text_bytes} bytes of text once aliases are expanded")
            }
            K::TooLong { what, len, max } => write!(f, "{what} of {len} bytes: at most {max} bytes"),
            K::OutOfRange { field, value, min, max } => {
                write!(f, "{field} must be within {min}..={max}, not {value}")
            }
            K::TooMany { field, max } => write!(f, "more than {max} entries in {field}"),
            K::RegexesTooLarge { max } => {
                write!(f, "the regular expressions together compile to more than {max} bytes")
            }
            K::BadInterface { name } => {
                write!(f, "'{name}' is not an interface name (1 to 15 bytes, no '/', ':' or whitespace)")
            }
            K::BadHeader { name, reason } => write!(f, "header `{name}`: {reason}"),
            K::BadGlob { pattern, reason } => write!(f, "'{pattern}' is not a glob of interface names: {reason}"),
            K::BadPrefix { prefix, reason } => write!(f, "'{prefix}' is not an address prefix: {reason}"),
            K::Compare(problem) => problem.fmt(f),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.0;
        f.write_str(&e.origin)?;
        if let Some(l) = e.location {
            write!(f, ":{}:{}", l.line, l.column)?;
        }
        f.write_str(": ")?;
        if !e.path.is_empty() {
            write!(f, "{}: ", e.path)?;
        }
        e.kind.fmt(f)
    }
}

impl std::error::Error for ConfigError {}
