//! The YAML stream → its documents, in one pass: libyaml parses the stream once, and each
//! document is deserialized once, by a visitor that reads the top-level keys as they come and
//! reads `spec` as the `kind` says. Positions are those of the whole file (serde_yaml's marks
//! count from the start of the stream), so an error in the third document says where it is in the
//! file.
//!
//! Before libyaml sees the text, `scan` checks its size, depth, documents and tokens; while it is
//! read, `budget` counts the values that aliases expand to. Time and memory stay linear in the
//! size of the file.

use std::{
    cell::Cell,
    collections::{BTreeMap, HashSet},
    fmt,
};

use serde::{
    Deserialize,
    de::{Deserializer as _, IgnoredAny, MapAccess, Visitor},
};

use super::{
    budget::Budget,
    diagnostic::{ConfigError, ConfigErrorKind, Location},
    istio::{
        DESTINATION_RULE_FIELDS, DestinationRuleSpec, EitherSpec, HttpRouteDoc, SpecMismatch, VIRTUAL_SERVICE_FIELDS,
        VirtualServiceSpec,
    },
    limits::{MAX_HOSTS, MAX_SUBSETS},
    ours::{OWN_FIELDS, OwnDoc, Section},
    scan,
    span::Spanned,
};

/// One list of routes as written, and the hosts it applies to.
#[derive(Debug)]
pub(crate) struct TableDoc {
    /// `routes` or `VirtualService ns/name`.
    pub(crate) source: String,
    /// `None`: every Host. Otherwise Istio `spec.hosts`.
    pub(crate) hosts: Option<Vec<String>>,
    /// The VirtualService's namespace.
    pub(crate) namespace: String,
    pub(crate) routes: Vec<Spanned<HttpRouteDoc>>,
}

/// Everything the documents of a stream say, read but not yet checked.
#[derive(Debug, Default)]
pub(crate) struct Documents {
    /// Our sections, merged over our documents (`routes` moved to `tables`).
    pub(crate) own: OwnDoc,
    /// Each VirtualService's routes in document order, then our `routes`.
    pub(crate) tables: Vec<TableDoc>,
    /// Host → subset names, from DestinationRules.
    pub(crate) subsets: BTreeMap<String, Vec<String>>,
    /// What loads but deserves a word.
    pub(crate) warnings: Vec<String>,
}

/// Reads every document of `text`, once.
pub(crate) fn documents(text: &str) -> Result<Documents, ConfigError> {
    scan::check(text)?;
    let mut out = Documents::default();
    let budget = Budget::default();
    // The top-level key being read: the place of errors serde_yaml gives none (an alias that
    // repeats too much).
    let reading = Cell::new(None);
    // After a syntax error the iterator repeats it: the first error ends the loop.
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        reading.set(None);
        let doc = budget.wrap(document).deserialize_any(DocVisitor { reading: &reading }).map_err(|e| {
            let e = ConfigError::from_yaml(&e);
            match (e.location(), e.path().is_empty()) {
                (Some(_), _) => e,
                (None, true) => e.at(reading.get()).within(format!("document {n}")),
                (None, false) => e.at(reading.get()),
            }
        })??;
        match doc {
            Doc::Empty => {}
            Doc::Ours(own) => out.own.merge(*own).map_err(|(section, at)| {
                ConfigError::new(ConfigErrorKind::DuplicateSection { section }).at(at).within(format!("document {n}"))
            })?,
            Doc::VirtualService { metadata, spec, at } => {
                let namespace = metadata.namespace.unwrap_or_else(|| "default".into());
                let name = metadata.name.unwrap_or_else(|| format!("document-{n}"));
                let source = format!("VirtualService {namespace}/{name}");
                if spec.gateways.is_some() {
                    out.warnings.push(format!("{source}: `gateways` is not evaluated"));
                }
                if spec.hosts.is_empty() {
                    return Err(ConfigError::new(ConfigErrorKind::NoHosts).at(at).within(source));
                }
                if let Some(extra) = spec.hosts.get(MAX_HOSTS) {
                    let kind = ConfigErrorKind::TooMany { field: "spec.hosts", max: MAX_HOSTS };
                    return Err(ConfigError::new(kind).at(extra.at).within(format!("{source} spec.hosts")));
                }
                let hosts = spec.hosts.into_iter().map(Spanned::into_inner).collect();
                out.tables.push(TableDoc { source, hosts: Some(hosts), namespace, routes: spec.http });
            }
            Doc::DestinationRule(spec) => {
                if let Some(extra) = spec.subsets.get(MAX_SUBSETS) {
                    let kind = ConfigErrorKind::TooMany { field: "spec.subsets", max: MAX_SUBSETS };
                    let within = format!("DestinationRule {} spec.subsets", spec.host);
                    return Err(ConfigError::new(kind).at(extra.name.at).within(within));
                }
                let names = spec.subsets.into_iter().map(|s| s.name.into_inner());
                out.subsets.entry(spec.host).or_default().extend(names);
            }
            Doc::Other(kind) => out.warnings.push(format!("document {n}: kind {kind} is not used, ignored")),
        }
    }
    if let Some(routes) = out.own.routes.take() {
        out.tables.push(TableDoc {
            source: "routes".into(),
            hosts: None,
            namespace: "default".into(),
            routes: routes.value,
        });
    }
    Ok(out)
}

/// A Kubernetes object's `metadata`: only its name and namespace matter.
#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

/// One document, read.
enum Doc {
    /// Nothing in it (comments only).
    Empty,
    Ours(Box<OwnDoc>),
    VirtualService {
        metadata: Metadata,
        spec: VirtualServiceSpec,
        /// Where `spec:` is.
        at: Option<Location>,
    },
    DestinationRule(DestinationRuleSpec),
    /// A kind we do not use.
    Other(String),
}

/// The top-level fields of a Kubernetes object, as written.
const OBJECT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];

/// Which schema a top-level key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Ours,
    Object,
    Neither,
}

/// A `spec`, read as the `kind` before it said.
enum SpecDoc {
    VirtualService(VirtualServiceSpec),
    DestinationRule(DestinationRuleSpec),
    /// Before `kind`.
    Either(EitherSpec),
    /// Of a kind we do not use.
    Ignored,
}

/// A document's top-level entries as they are read.
#[derive(Default)]
struct Parts {
    /// Where the document starts (its first key).
    at: Option<Location>,
    kind: Option<String>,
    api_version: bool,
    metadata: Option<Metadata>,
    spec: Option<(Option<Location>, SpecDoc)>,
    own: OwnDoc,
    /// Every key read, in order, with its schema.
    keys: Vec<(Spanned<String>, Owner)>,
    /// The same keys, to find one given twice in constant time.
    seen: HashSet<String>,
    /// The first key given twice.
    repeated: Option<Spanned<String>>,
}

/// A section's value with the place of its key; `None` for an empty one (`capture: ~`).
fn section<T>(at: Option<Location>, value: Option<T>) -> Option<Section<T>> {
    value.map(|value| Section { at, value })
}

impl Parts {
    /// Reads the value of `key`. Problems that are not serde's (a key given twice, a key of the
    /// wrong schema) are noted and reported by [`Parts::finish`], once the whole mapping is read.
    fn read<'de, A: MapAccess<'de>>(&mut self, key: &Spanned<String>, map: &mut A) -> Result<Owner, A::Error> {
        if !self.seen.insert(key.value.clone()) {
            self.repeated.get_or_insert_with(|| key.clone());
            map.next_value::<IgnoredAny>()?;
            return Ok(Owner::Neither);
        }
        let at = key.at;
        match key.as_str() {
            "kind" => self.kind = Some(map.next_value()?),
            "apiVersion" => {
                map.next_value::<String>()?;
                self.api_version = true;
            }
            "metadata" => self.metadata = Some(map.next_value()?),
            "status" => {
                map.next_value::<IgnoredAny>()?;
            }
            "spec" => {
                let spec = match self.kind.as_deref() {
                    Some("VirtualService") => SpecDoc::VirtualService(map.next_value()?),
                    Some("DestinationRule") => SpecDoc::DestinationRule(map.next_value()?),
                    Some(_) => {
                        map.next_value::<IgnoredAny>()?;
                        SpecDoc::Ignored
                    }
                    None => SpecDoc::Either(map.next_value()?),
                };
                self.spec = Some((at, spec));
            }
            "capture" => self.own.capture = section(at, map.next_value()?),
            "endpoints" => self.own.endpoints = section(at, map.next_value()?),
            "replay" => self.own.replay = section(at, map.next_value()?),
            "memory" => self.own.memory = section(at, map.next_value()?),
            "routes" => self.own.routes = section(at, map.next_value()?),
            "mirrorPolicies" => self.own.mirror_policies = section(at, map.next_value()?),
            _ => {
                map.next_value::<IgnoredAny>()?;
                return Ok(Owner::Neither);
            }
        }
        Ok(if OWN_FIELDS.contains(&key.as_str()) { Owner::Ours } else { Owner::Object })
    }

    /// The first key that is not `owner`'s, as an unknown field among `expected`.
    fn stray(&self, owner: Owner, expected: &[&str]) -> Result<(), ConfigError> {
        match self.keys.iter().find(|(_, o)| *o != owner) {
            Some((k, _)) => Err(unknown_field(k, k.at, expected)),
            None => Ok(()),
        }
    }

    /// The document, once every entry is read.
    fn finish(self) -> Result<Doc, ConfigError> {
        if let Some(k) = self.repeated {
            return Err(ConfigError::new(ConfigErrorKind::DuplicateField { field: k.value }).at(k.at));
        }
        let Some(kind) = self.kind.as_deref() else {
            self.stray(Owner::Ours, OWN_FIELDS)?;
            return Ok(Doc::Ours(Box::new(self.own)));
        };
        if !matches!(kind, "VirtualService" | "DestinationRule") {
            return Ok(Doc::Other(kind.to_string()));
        }
        self.stray(Owner::Object, OBJECT_FIELDS)?;
        let missing = |field| ConfigError::new(ConfigErrorKind::MissingField { field }).at(self.at);
        if !self.api_version {
            return Err(missing("apiVersion"));
        }
        let Some((at, spec)) = self.spec else {
            return Err(missing("spec"));
        };
        let metadata = self.metadata.unwrap_or_default();
        let mismatch = |m: SpecMismatch, expected: &[&str]| match m {
            SpecMismatch::Stray(field) => unknown_field(field, at, expected).within("spec"),
            SpecMismatch::Missing(field) => {
                ConfigError::new(ConfigErrorKind::MissingField { field }).at(at).within("spec")
            }
        };
        Ok(match spec {
            SpecDoc::VirtualService(spec) => Doc::VirtualService { metadata, spec, at },
            SpecDoc::DestinationRule(spec) => Doc::DestinationRule(spec),
            SpecDoc::Either(either) if kind == "VirtualService" => Doc::VirtualService {
                metadata,
                spec: either.virtual_service().map_err(|m| mismatch(m, VIRTUAL_SERVICE_FIELDS))?,
                at,
            },
            SpecDoc::Either(either) => {
                Doc::DestinationRule(either.destination_rule().map_err(|m| mismatch(m, DESTINATION_RULE_FIELDS))?)
            }
            // `spec` is read as the kind says, and a kind is given once.
            SpecDoc::Ignored => unreachable!("the spec of a used kind is read"),
        })
    }
}

fn unknown_field(field: &str, at: Option<Location>, expected: &[&str]) -> ConfigError {
    let expected = expected.iter().map(|s| s.to_string()).collect();
    ConfigError::new(ConfigErrorKind::unknown_field(field, expected)).at(at)
}

/// Reads one document: ours, a VirtualService, a DestinationRule, or another kind (ignored).
struct DocVisitor<'a> {
    /// Where the top-level key being read is.
    reading: &'a Cell<Option<Location>>,
}

impl<'de> Visitor<'de> for DocVisitor<'_> {
    /// serde's errors stop the reading; ours are found once the document is read.
    type Value = Result<Doc, ConfigError>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping (our document, a VirtualService or a DestinationRule)")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Ok(Doc::Empty))
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Ok(Doc::Empty))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut parts = Parts::default();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            parts.at = parts.at.or(key.at);
            self.reading.set(key.at);
            let owner = parts.read(&key, &mut map)?;
            parts.keys.push((key, owner));
        }
        Ok(parts.finish())
    }
}
