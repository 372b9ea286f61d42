//! Where a value was written, so that checks made after parsing (references between documents,
//! ranges, regexes) can point at the node they are about.
//!
//! serde_yaml 0.9 places its own errors but has no API for the position of a value that
//! deserializes fine. It does place an error raised by a visitor at the node being visited, and a
//! scalar is one event: once visited it is consumed whether the visitor succeeded or not. So
//! [`Spanned`] lets the real visitor build the value, keeps it, reports a marker error instead, and
//! reads the position that serde_yaml attached to that error. The document stays where it would
//! have been. A mapping is placed at its first key, found the same way; a sequence, or an empty
//! mapping, has no place of its own (`None`).
//!
//! Only for values that serde_yaml reads itself (not under `#[serde(untagged)]` or `flatten`,
//! which buffer the document and lose positions).

use std::{cmp::Ordering, fmt, ops::Deref};

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, Unexpected, Visitor};

use super::diagnostic::Location;

/// A deserialized value and where it was written.
#[derive(Debug, Clone)]
pub(crate) struct Spanned<T> {
    /// The value.
    pub(crate) value: T,
    /// Where it starts (a mapping: its first key).
    pub(crate) at: Option<Location>,
}

impl<T> Spanned<T> {
    /// The value, without its place.
    pub(crate) fn into_inner(self) -> T {
        self.value
    }
}

impl<T> Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

// Compared by value only: a spanned map key is the same key wherever it was written.
impl<T: PartialEq> PartialEq for Spanned<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}
impl<T: Eq> Eq for Spanned<T> {}
impl<T: Ord> PartialOrd for Spanned<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T: Ord> Ord for Spanned<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.value.cmp(&other.value)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut at = None;
        let value = T::deserialize(Probe { inner: d, at: &mut at })?;
        Ok(Spanned { value, at })
    }
}

/// The error a visitor reports instead of the value it built; nothing else says this.
const MARKER: &str = "\u{1}mirror-config-position\u{1}";

/// Where the marker starts in an error message. This runs for every value placed: a search for
/// its first character (memchr), not for the whole string.
fn marker_in(message: &str) -> Option<usize> {
    message.match_indices('\u{1}').map(|(i, _)| i).find(|&i| message[i..].starts_with(MARKER))
}

/// The position serde_yaml appended to the marker error (at `marker` in `message`):
/// ` at line L column C`, or nothing at the very start of the file.
fn position_in(message: &str, marker: usize) -> Option<Location> {
    let rest = &message[marker + MARKER.len()..];
    if rest.is_empty() {
        return Some(Location { line: 1, column: 1 });
    }
    let (line, column) = rest.strip_prefix(" at line ")?.split_once(" column ")?;
    Some(Location { line: line.parse().ok()?, column: column.parse().ok()? })
}

/// A deserializer that hands every visitor a [`Catch`] around it.
struct Probe<'a, D> {
    inner: D,
    at: &'a mut Option<Location>,
}

/// Wraps a visitor: a scalar it builds is kept in `slot` and the marker error returned instead; a
/// mapping has its first key probed.
struct Catch<'s, 'de, V: Visitor<'de>> {
    inner: V,
    slot: &'s mut Option<V::Value>,
    at: &'s mut Option<Location>,
}

/// The end of a probed `deserialize_*` call: the kept value, placed, or the real error.
fn settle<V, E: de::Error>(result: Result<V, E>, slot: Option<V>, at: &mut Option<Location>) -> Result<V, E> {
    let e = match result {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let Some(v) = slot else {
        return Err(e);
    };
    let message = e.to_string();
    match marker_in(&message) {
        Some(marker) => {
            *at = position_in(&message, marker);
            Ok(v)
        }
        None => Err(e),
    }
}

macro_rules! probe_methods {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            let mut slot = None;
            let mut at = None;
            let result = self.inner.$method($($arg,)* Catch { inner: visitor, slot: &mut slot, at: &mut at });
            let value = settle(result, slot, &mut at)?;
            *self.at = at;
            Ok(value)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Probe<'_, D> {
    type Error = D::Error;

    every_deserialize_method!(probe_methods);

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! catch_scalars {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            *self.slot = Some(self.inner.$method(v)?);
            Err(E::custom(MARKER))
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Catch<'_, 'de, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    catch_scalars! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Probe { inner: d, at: self.at })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(Probe { inner: d, at: self.at })
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(FirstKey { map, at: Some(self.at) })
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(data)
    }
}

/// A mapping whose first key is probed: the mapping's place is that key's.
struct FirstKey<'a, A> {
    map: A,
    /// Where to put the first key's place; `None` once it is read.
    at: Option<&'a mut Option<Location>>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for FirstKey<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        match self.at.take() {
            Some(at) => self.map.next_key_seed(ProbeSeed { seed, at }),
            None => self.map.next_key_seed(seed),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.map.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

/// A seed whose deserializer is probed.
struct ProbeSeed<'a, K> {
    seed: K,
    at: &'a mut Option<Location>,
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for ProbeSeed<'_, K> {
    type Value = K::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<K::Value, D::Error> {
        self.seed.deserialize(Probe { inner: d, at: self.at })
    }
}

/// An integer as written, whatever its size (beyond `i128`: saturated), so that a range check
/// sees the value rather than a type error; a float without a fractional part (`1e6`) counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Int(pub(crate) i128);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntVisitor)
    }
}

struct IntVisitor;

impl Visitor<'_> for IntVisitor {
    type Value = Int;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
        Ok(Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
        Ok(Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Int, E> {
        Ok(Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Int, E> {
        Ok(Int(i128::try_from(v).unwrap_or(i128::MAX)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Int, E> {
        if v.is_finite() && v.fract() == 0.0 {
            // Saturating: far outside every range either way.
            Ok(Int(v as i128))
        } else {
            Err(E::invalid_type(Unexpected::Float(v), &self))
        }
    }
}
