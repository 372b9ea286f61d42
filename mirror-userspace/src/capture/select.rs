//! Which links the classifier goes on, and on which hook their requests are captured: the
//! `capture.interfaces` entries (names and globs) applied to a link's name.
//!
//! A link matched by several entries with different directions gets both flags: requests are then
//! captured on both hooks (the daemon drops the second sighting of a packet, see `dedupe`).

use mirror_common::{IFACE_REQUESTS_EGRESS, IFACE_REQUESTS_INGRESS};

use crate::config::{Direction, InterfaceEntry};

/// One entry, compiled.
#[derive(Debug, Clone)]
struct Rule {
    entry: InterfaceEntry,
    matcher: Matcher,
}

#[derive(Debug, Clone)]
enum Matcher {
    /// A plain name, compared as it is.
    Name,
    Glob(glob::Pattern),
    /// A glob that does not parse.
    Nothing,
}

/// The compiled `capture.interfaces`.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    rules: Vec<Rule>,
}

impl Selection {
    /// Compiles the entries. Globs were checked when the config was loaded; one that does not parse
    /// here (only possible if the config was built by hand) matches nothing and is said so.
    pub fn new(entries: &[InterfaceEntry]) -> Selection {
        let rules = entries
            .iter()
            .map(|e| {
                let matcher = if e.is_glob() {
                    match glob::Pattern::new(&e.name) {
                        Ok(p) => Matcher::Glob(p),
                        Err(err) => {
                            tracing::error!(glob = %e.name, "not a glob, matches nothing: {err}");
                            Matcher::Nothing
                        }
                    }
                } else {
                    Matcher::Name
                };
                Rule { entry: e.clone(), matcher }
            })
            .collect();
        Selection { rules }
    }

    /// The `IFACE_REQUESTS_*` flags of the link named `name`: 0 if no entry matches it.
    pub fn flags(&self, name: &str) -> u8 {
        self.rules.iter().filter(|r| r.matches(name)).fold(0, |acc, r| acc | flag(r.entry.direction))
    }

    /// The plain names (not globs): links that must exist when the daemon starts.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().filter(|r| matches!(r.matcher, Matcher::Name)).map(|r| r.entry.name.as_str())
    }

    /// The names of the links of this namespace that an entry matches now.
    pub fn matching_links(&self) -> std::io::Result<Vec<String>> {
        Ok(super::links::dump()?.into_iter().filter(|l| self.flags(&l.name) != 0).map(|l| l.name).collect())
    }

    /// The entries.
    pub fn entries(&self) -> impl Iterator<Item = &InterfaceEntry> {
        self.rules.iter().map(|r| &r.entry)
    }
}

impl Rule {
    fn matches(&self, name: &str) -> bool {
        match &self.matcher {
            Matcher::Name => self.entry.name == name,
            Matcher::Glob(p) => p.matches(name),
            Matcher::Nothing => false,
        }
    }
}

/// The kernel flag of a direction.
pub fn flag(direction: Direction) -> u8 {
    match direction {
        Direction::Ingress => IFACE_REQUESTS_INGRESS,
        Direction::Egress => IFACE_REQUESTS_EGRESS,
    }
}

/// The directions in `flags`, for logs and metrics: `ingress`, `egress` or `ingress+egress`.
pub fn directions(flags: u8) -> &'static str {
    match (flags & IFACE_REQUESTS_INGRESS != 0, flags & IFACE_REQUESTS_EGRESS != 0) {
        (true, true) => "ingress+egress",
        (false, true) => "egress",
        _ => "ingress",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, direction: Direction) -> InterfaceEntry {
        InterfaceEntry { name: name.into(), direction }
    }

    #[test]
    fn names_match_exactly_and_globs_match_what_they_say() {
        let s = Selection::new(&[
            entry("eth0", Direction::Ingress),
            entry("cali*", Direction::Egress),
            entry("veth?x", Direction::Egress),
            entry("eni[0-9a-f]*", Direction::Egress),
        ]);
        assert_eq!(s.flags("eth0"), IFACE_REQUESTS_INGRESS);
        assert_eq!(s.flags("eth01"), 0, "a plain name is not a prefix");
        assert_eq!(s.flags("eth"), 0);
        assert_eq!(s.flags("cali12ab34cd56e"), IFACE_REQUESTS_EGRESS);
        assert_eq!(s.flags("cali"), IFACE_REQUESTS_EGRESS, "* matches nothing too");
        assert_eq!(s.flags("xcali1"), 0, "globs are anchored");
        assert_eq!(s.flags("veth1x"), IFACE_REQUESTS_EGRESS);
        assert_eq!(s.flags("veth12x"), 0, "? is one character");
        assert_eq!(s.flags("eni3f"), IFACE_REQUESTS_EGRESS);
        assert_eq!(s.flags("enix"), 0);
        assert_eq!(s.flags("lo"), 0);
        assert_eq!(s.names().collect::<Vec<_>>(), ["eth0"]);
    }

    #[test]
    fn a_link_matched_in_both_directions_gets_both_flags() {
        let s = Selection::new(&[entry("veth*", Direction::Egress), entry("veth0", Direction::Ingress)]);
        assert_eq!(s.flags("veth0"), IFACE_REQUESTS_INGRESS | IFACE_REQUESTS_EGRESS);
        assert_eq!(directions(s.flags("veth0")), "ingress+egress");
        assert_eq!(directions(s.flags("veth1")), "egress");
        assert_eq!(directions(s.flags("eth0")), "ingress");
    }

    #[test]
    fn a_glob_that_does_not_parse_matches_nothing() {
        let s = Selection::new(&[entry("cali[", Direction::Egress)]);
        assert_eq!(s.flags("cali["), 0);
        assert_eq!(s.flags("cali1"), 0);
    }
}
