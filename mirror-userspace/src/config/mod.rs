//! The configuration: a YAML stream of documents.
//!
//! - Our own document (no `kind`): `capture`, `endpoints`, optional `replay`, `routes` and
//!   `mirrorPolicies`.
//! - Istio `VirtualService` documents, unchanged: `spec.hosts` scopes their `http` routes by Host,
//!   short names included, as Istio does.
//! - Istio `DestinationRule` documents: their subset names are what `subset:` may refer to.
//!
//! Routes follow Istio's `HTTPRoute` semantics. Fields Istio has but that mean nothing here
//! (`route`, `retries`, `fault`, …) are accepted and ignored, so an existing VirtualService loads
//! as it is; fields Istio does not have are errors, with a suggestion.
//!
//! Loading goes `scan` (the raw text: size, nesting depth, documents and tokens, before libyaml
//! sees it) → `load` (the stream, each document read once, values keeping where they were
//! written: `span`, and counted as aliases expand them: `budget`) → `validate` (sections, routes,
//! match blocks and destinations checked one by one, numbers against their ranges, regexes
//! compiled) → [`Config`]. Every limit is in [`limits`]. What is wrong is a [`ConfigError`]
//! (`diagnostic`), shown as `file:line:column: where: what`.

/// Calls `$each! { method(args); ... }` with every method of serde's `Deserializer` that takes a
/// visitor: the wrappers that see every value (`span`'s probe, `budget`'s counter) forward each.
macro_rules! every_deserialize_method {
    ($each:ident) => {
        $each! {
            deserialize_any();
            deserialize_bool();
            deserialize_i8();
            deserialize_i16();
            deserialize_i32();
            deserialize_i64();
            deserialize_i128();
            deserialize_u8();
            deserialize_u16();
            deserialize_u32();
            deserialize_u64();
            deserialize_u128();
            deserialize_f32();
            deserialize_f64();
            deserialize_char();
            deserialize_str();
            deserialize_string();
            deserialize_bytes();
            deserialize_byte_buf();
            deserialize_option();
            deserialize_unit();
            deserialize_unit_struct(name: &'static str);
            deserialize_newtype_struct(name: &'static str);
            deserialize_seq();
            deserialize_tuple(len: usize);
            deserialize_tuple_struct(name: &'static str, len: usize);
            deserialize_map();
            deserialize_struct(name: &'static str, fields: &'static [&'static str]);
            deserialize_enum(name: &'static str, variants: &'static [&'static str]);
            deserialize_identifier();
            deserialize_ignored_any();
        }
    };
}

mod budget;
mod compare;
mod diagnostic;
mod interfaces;
mod istio;
pub mod limits;
mod load;
mod ours;
mod scan;
mod span;
mod validate;

use std::{collections::BTreeMap, io::Read, net::SocketAddr, path::Path};

pub use compare::{CompareProblem, CompareSettings, LogSettings, defaults as compare_defaults};
pub use diagnostic::{ConfigError, ConfigErrorKind, Location};
pub use interfaces::{Direction, InterfaceEntry};
pub(crate) use istio::{Destination, HttpRoute, MatchRequest, StringMatch};
pub(crate) use ours::MirrorPolicy;
pub use ours::{Capture, HeaderOps, HostRewrite, MemorySettings, Pace, ReplaySettings, SampleKey};
#[doc(hidden)]
pub use scan::Counts as ScanCounts;

/// Everything the documents say, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// What the classifier watches.
    pub capture: Capture,
    /// `host` or `host/subset` → addresses of that mirror destination.
    pub endpoints: BTreeMap<String, Vec<SocketAddr>>,
    /// How requests are sent to the mirrors.
    pub replay: ReplaySettings,
    /// The budget for requests in progress.
    pub memory: MemorySettings,
    /// Per mirror destination (`host` or `host/subset`): our extensions.
    pub(crate) policies: BTreeMap<String, MirrorPolicy>,
    /// Route lists in the order they are consulted: each VirtualService (scoped by its hosts),
    /// then our own `routes` (any host).
    pub(crate) tables: Vec<RouteTable>,
    /// Things worth saying that do not stop the config from loading (deprecated fields…).
    pub warnings: Vec<String>,
}

/// One list of routes and the hosts it applies to.
#[derive(Debug, Clone)]
pub(crate) struct RouteTable {
    /// `None`: every Host. Otherwise Istio `spec.hosts`.
    pub(crate) hosts: Option<Vec<String>>,
    /// The VirtualService's namespace (short host names are relative to it).
    pub(crate) namespace: String,
    /// In order: the first that matches a request takes it.
    pub(crate) routes: Vec<HttpRoute>,
}

impl Config {
    /// Reads and checks the config file at `path`. Files over
    /// [`MAX_FILE_BYTES`](limits::MAX_FILE_BYTES) are refused before they are read whole (and a
    /// file that grows while read, or a device, is read no further than that).
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let fail = |kind| ConfigError::new(kind).in_origin(origin.as_str());
        let mut file = std::fs::File::open(path).map_err(|e| fail(ConfigErrorKind::Read(e)))?;
        let size = file.metadata().map_err(|e| fail(ConfigErrorKind::Read(e)))?.len();
        if size > limits::MAX_FILE_BYTES as u64 {
            return Err(fail(too_large(size)));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        (&mut file)
            .take(limits::MAX_FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| fail(ConfigErrorKind::Read(e)))?;
        Self::from_bytes(&bytes, &origin)
    }

    /// Checks the bytes of a config file: UTF-8 (or an error at the first byte that is not), then
    /// [`Config::parse`].
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Config, ConfigError> {
        if bytes.len() > limits::MAX_FILE_BYTES {
            return Err(ConfigError::new(too_large(bytes.len() as u64)).in_origin(origin));
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::parse(text, origin),
            Err(e) => {
                let valid = e.valid_up_to();
                // The prefix is UTF-8: it says where the bad byte is.
                let prefix = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
                let at = scan::location_of(prefix, valid);
                let kind = ConfigErrorKind::NotUtf8 { byte: bytes[valid] };
                Err(ConfigError::new(kind).at(Some(at)).in_origin(origin))
            }
        }
    }

    /// [`Config::read`], for callers that work with `anyhow`; the error is a [`ConfigError`]
    /// (`downcast_ref` gets it back).
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        Ok(Self::read(path)?)
    }

    /// Parses and checks a YAML stream; `origin` (a file name) starts every error message. Every
    /// limit of [`limits`] applies: time and memory are linear in the size of `text`, which is at
    /// most [`MAX_FILE_BYTES`](limits::MAX_FILE_BYTES).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        load::documents(text).and_then(validate::config).map_err(|e| e.in_origin(origin))
    }

    /// The endpoints key a destination resolves to: `host/subset` or `host`, trying the short
    /// name (`reviews` for `reviews.default.svc.cluster.local`) when the full one is not there.
    pub(crate) fn resolve(&self, d: &Destination) -> Option<String> {
        validate::resolve(&self.endpoints, d)
    }

    /// What the pre-scan of the loader counts in `text` (tokens, deepest nesting, documents), or
    /// the limit it exceeds. For the fuzz target, which checks these bounds against what
    /// serde_yaml reads; not an API.
    #[doc(hidden)]
    pub fn scan(text: &str) -> Result<scan::Counts, ConfigError> {
        scan::check(text)
    }

    /// How many routes in all.
    pub fn route_count(&self) -> usize {
        self.tables.iter().map(|t| t.routes.len()).sum()
    }
}

/// The error for a file of `size` bytes, over the limit.
fn too_large(size: u64) -> ConfigErrorKind {
    ConfigErrorKind::TooLarge { size, max: limits::MAX_FILE_BYTES as u64 }
}

#[cfg(test)]
mod tests;
