//! `capture.interfaces` entries and `capture.addresses`: a plain name (requests captured on TC
//! ingress, as a NIC sees them), or `{name: <name or glob>, direction: ingress|egress}`.
//!
//! An entry is read by hand (a string or a mapping) rather than by an untagged enum, which would
//! buffer the node and lose the places of its values: every value keeps where it was written.

use std::fmt;

use serde::{
    Deserialize,
    de::{self, Deserializer, MapAccess, Visitor},
};

use super::span::Spanned;

/// Where, on an interface, requests to the primary are captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// As they arrive (TC ingress): a NIC, or the primary's own interface.
    Ingress,
    /// As they leave (TC egress): the host side of a pod's veth, where packets to the pod leave
    /// the node's namespace, already decapsulated and routed whatever the CNI.
    Egress,
}

impl Direction {
    /// `ingress` or `egress`, as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// One `capture.interfaces` entry: a link name or a glob over link names (`cali*`, `veth?*`,
/// `eth[01]`), and the direction its requests travel in.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct InterfaceEntry {
    /// A link name, or a glob (it has one of `*`, `?`, `[`).
    pub name: String,
    /// Which hook sees the requests.
    pub direction: Direction,
}

impl InterfaceEntry {
    /// Whether the name is a glob (matches links that come and go) rather than one link's name.
    pub fn is_glob(&self) -> bool {
        is_glob(&self.name)
    }
}

/// Whether `name` is a glob rather than a link name.
pub(crate) fn is_glob(name: &str) -> bool {
    name.contains(['*', '?', '['])
}

/// `eth0`, or `cali*:egress` when the direction is not the default.
impl fmt::Debug for InterfaceEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.direction {
            Direction::Ingress => write!(f, "{}", self.name),
            Direction::Egress => write!(f, "{}:egress", self.name),
        }
    }
}

/// An entry as written.
#[derive(Debug)]
pub(crate) struct InterfaceEntryDoc {
    pub(crate) name: Spanned<String>,
    pub(crate) direction: Option<Spanned<Direction>>,
}

impl<'de> Deserialize<'de> for InterfaceEntryDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EntryVisitor)
    }
}

const ENTRY_FIELDS: &[&str] = &["name", "direction"];

struct EntryVisitor;

impl<'de> Visitor<'de> for EntryVisitor {
    type Value = InterfaceEntryDoc;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an interface name, or {name: <name or glob>, direction: ingress|egress}")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        // The place of a plain name is the entry's own, which `Spanned` around the entry keeps.
        Ok(InterfaceEntryDoc { name: Spanned { value: v.to_string(), at: None }, direction: None })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut name: Option<Spanned<String>> = None;
        let mut direction: Option<Spanned<Direction>> = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "name" if name.is_some() => return Err(de::Error::duplicate_field("name")),
                "name" => name = Some(map.next_value()?),
                "direction" if direction.is_some() => return Err(de::Error::duplicate_field("direction")),
                "direction" => direction = Some(map.next_value()?),
                other => return Err(de::Error::unknown_field(other, ENTRY_FIELDS)),
            }
        }
        let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
        Ok(InterfaceEntryDoc { name, direction })
    }
}
