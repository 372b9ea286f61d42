//! Route and endpoint names, interned: a [`Name`] is a `&'static str` that every request to a
//! mirror carries from the capture thread to replay. It is `Copy`, so a request costs no
//! reference count: an `Arc<str>` cloned on the capture thread and dropped on the replay thread
//! moved its count's cache line between the two cores for every request.
//!
//! Names come from the config only (never from the wire), and each distinct one is stored once
//! for the daemon's life: a reload with the same names adds nothing, and one that renames keeps
//! the old names too (a few bytes each).

use std::{
    borrow::Borrow,
    collections::HashSet,
    fmt,
    ops::Deref,
    sync::{Mutex, OnceLock},
};

/// An interned name (compared, hashed and ordered as its text).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(&'static str);

impl Name {
    /// The name `s`, stored the first time it is seen. For names from the config only: one
    /// from the wire would be stored for good (there is no `From` conversion, so that interning
    /// is never implicit).
    pub fn new(s: &str) -> Name {
        static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
        let mut names = NAMES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&known) = names.get(s) {
            return Name(known);
        }
        let stored: &'static str = Box::leak(s.into());
        names.insert(stored);
        Name(stored)
    }

    /// The text, for the daemon's life.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Name;

    #[test]
    fn one_copy_per_distinct_name() {
        let a = Name::new("reviews/v2");
        let b = Name::new(&String::from("reviews/v2"));
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
        assert_eq!(a, b);
        let c = Name::new("reviews/v3");
        assert_ne!(a, c);
        assert!(a < c);
        let map: std::collections::HashMap<Name, u8> = [(a, 1), (c, 2)].into();
        assert_eq!((map.get("reviews/v2"), map.get("reviews/v3"), map.get("x")), (Some(&1), Some(&2), None));
        assert_eq!(format!("{a} {a:?}"), "reviews/v2 \"reviews/v2\"");
    }

    /// Maps keyed by `Name` are looked up by `&str` (`Borrow<str>`): equality, order and hash
    /// are the text's, never the address's (a name interned later is not "greater").
    #[test]
    fn names_compare_order_and_hash_as_their_text() {
        use std::{
            collections::{BTreeMap, HashMap},
            hash::BuildHasher,
        };
        let late_first = Name::new("zz-review/late");
        let early_second = Name::new("aa-review/early");
        assert!(early_second < late_first);
        assert_eq!(early_second.cmp(&late_first), "aa-review/early".cmp("zz-review/late"));
        let h = std::collections::hash_map::RandomState::new();
        assert_eq!(h.hash_one(late_first), h.hash_one("zz-review/late"));
        // A name built from a String equals the interned one.
        let owned = String::from("zz-review/") + "late";
        assert_eq!(Name::new(&owned), late_first);
        let tree: BTreeMap<Name, u8> = [(late_first, 1), (early_second, 2)].into();
        assert_eq!(tree.keys().map(|n| n.as_str()).collect::<Vec<_>>(), ["aa-review/early", "zz-review/late"]);
        assert_eq!((tree.get("zz-review/late"), tree.get("aa-review/early"), tree.get("")), (Some(&1), Some(&2), None));
        let hashed: HashMap<Name, u8, foldhash::fast::RandomState> = [(late_first, 1)].into_iter().collect();
        assert_eq!(hashed.get(owned.as_str()), Some(&1));
        // From several threads at once: one copy.
        let all: Vec<Name> = std::thread::scope(|s| {
            let spawned: Vec<_> = (0..4).map(|_| s.spawn(|| Name::new("review/threads"))).collect();
            spawned.into_iter().map(|j| j.join().unwrap()).collect()
        });
        assert!(all.iter().all(|n| std::ptr::eq(n.as_str(), all[0].as_str())));
    }
}
