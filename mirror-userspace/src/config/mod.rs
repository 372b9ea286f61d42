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
//! Loading goes `load` (the stream, each document read once, values keeping where they were
//! written: `span`) → `validate` (sections, routes, match blocks and destinations checked one by
//! one, regexes compiled) → [`Config`]. What is wrong is a [`ConfigError`] (`diagnostic`), shown as
//! `file:line:column: where: what`.

mod diagnostic;
mod istio;
mod load;
mod ours;
mod span;
mod validate;

use std::{collections::BTreeMap, net::SocketAddr, path::Path};

pub use diagnostic::{ConfigError, ConfigErrorKind, Location};
pub(crate) use istio::{Destination, HttpRoute, MatchRequest, StringMatch};
pub(crate) use ours::MirrorPolicy;
pub use ours::{Capture, HeaderOps, HostRewrite, ReplaySettings, SampleKey};

/// Everything the documents say, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// What the classifier watches.
    pub capture: Capture,
    /// `host` or `host/subset` → addresses of that mirror destination.
    pub endpoints: BTreeMap<String, Vec<SocketAddr>>,
    /// How requests are sent to the mirrors.
    pub replay: ReplaySettings,
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
    /// Reads and checks the config file at `path`.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &origin),
            Err(e) => Err(ConfigError::new(ConfigErrorKind::Read(e)).in_origin(origin)),
        }
    }

    /// [`Config::read`], for callers that work with `anyhow`; the error is a [`ConfigError`]
    /// (`downcast_ref` gets it back).
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        Ok(Self::read(path)?)
    }

    /// Parses and checks a YAML stream; `origin` (a file name) starts every error message.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        load::documents(text).and_then(validate::config).map_err(|e| e.in_origin(origin))
    }

    /// The endpoints key a destination resolves to: `host/subset` or `host`, trying the short
    /// name (`reviews` for `reviews.default.svc.cluster.local`) when the full one is not there.
    pub(crate) fn resolve(&self, d: &Destination) -> Option<String> {
        validate::resolve(&self.endpoints, d)
    }

    /// How many routes in all.
    pub fn route_count(&self) -> usize {
        self.tables.iter().map(|t| t.routes.len()).sum()
    }
}

#[cfg(test)]
mod tests;
