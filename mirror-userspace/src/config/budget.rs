//! What reading the documents may cost, once aliases are expanded: a deserializer around
//! serde_yaml's that counts every value handed to a visitor, and the bytes of its text, and
//! refuses a string longer than [`MAX_STRING_BYTES`].
//!
//! The pre-scan (`scan`) bounds the text; aliases can still repeat a large node many times over
//! (serde_yaml only stops after 100 jumps per event of the document, and a jump can replay a
//! whole subtree). Values skipped with `IgnoredAny` are not expanded by serde_yaml and cost no
//! memory; everything else passes through here. The error is a visitor's, so serde_yaml places
//! it at the node being read; [`ConfigError::from_yaml`](super::ConfigError) recognizes it by its
//! marker.

use std::{cell::Cell, fmt};

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

use super::limits::{MAX_STRING_BYTES, MAX_TEXT_BYTES, MAX_VALUES};

/// Starts the error for a string over [`MAX_STRING_BYTES`]; its length follows.
pub(crate) const TOO_LONG: &str = "\u{1}mirror-config-too-long\u{1}";
/// The error once [`MAX_VALUES`] or [`MAX_TEXT_BYTES`] is exceeded.
pub(crate) const TOO_MANY_VALUES: &str = "\u{1}mirror-config-too-many-values\u{1}";

/// Values and bytes of text read so far, over all the documents of a stream.
#[derive(Default)]
pub(crate) struct Budget {
    values: Cell<usize>,
    bytes: Cell<usize>,
}

impl Budget {
    /// One more value, with `bytes` of text.
    fn take<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        if bytes > MAX_STRING_BYTES {
            return Err(E::custom(format_args!("{TOO_LONG}{bytes}")));
        }
        let values = self.values.get() + 1;
        let total = self.bytes.get() + bytes;
        self.values.set(values);
        self.bytes.set(total);
        if values > MAX_VALUES || total > MAX_TEXT_BYTES {
            return Err(E::custom(TOO_MANY_VALUES));
        }
        Ok(())
    }

    /// `d`, counted against this budget.
    pub(crate) fn wrap<D>(&self, d: D) -> Counted<'_, D> {
        Counted { inner: d, budget: self }
    }
}

/// A deserializer whose every value is counted.
pub(crate) struct Counted<'b, D> {
    inner: D,
    budget: &'b Budget,
}

/// A visitor, a seed or an access whose values are counted.
struct Count<'b, T> {
    inner: T,
    budget: &'b Budget,
}

impl<'b, T> Count<'b, T> {
    fn new(inner: T, budget: &'b Budget) -> Self {
        Count { inner, budget }
    }
}

macro_rules! counted_methods {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method($($arg,)* Count::new(visitor, self.budget))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Counted<'_, D> {
    type Error = D::Error;

    every_deserialize_method!(counted_methods);

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! count_scalars {
    ($($method:ident($ty:ty) $len:expr;)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            #[allow(clippy::redundant_closure_call)]
            self.budget.take(($len)(&v))?;
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Count<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    count_scalars! {
        visit_bool(bool) |_| 0;
        visit_i8(i8) |_| 0;
        visit_i16(i16) |_| 0;
        visit_i32(i32) |_| 0;
        visit_i64(i64) |_| 0;
        visit_i128(i128) |_| 0;
        visit_u8(u8) |_| 0;
        visit_u16(u16) |_| 0;
        visit_u32(u32) |_| 0;
        visit_u64(u64) |_| 0;
        visit_u128(u128) |_| 0;
        visit_f32(f32) |_| 0;
        visit_f64(f64) |_| 0;
        visit_char(char) |c: &char| c.len_utf8();
        visit_str(&str) |s: &&str| s.len();
        visit_borrowed_str(&'de str) |s: &&str| s.len();
        visit_string(String) |s: &String| s.len();
        visit_bytes(&[u8]) |s: &&[u8]| s.len();
        visit_borrowed_bytes(&'de [u8]) |s: &&[u8]| s.len();
        visit_byte_buf(Vec<u8>) |s: &Vec<u8>| s.len();
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.budget.take(0)?;
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.budget.take(0)?;
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(self.budget.wrap(d))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(self.budget.wrap(d))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.budget.take(0)?;
        self.inner.visit_seq(Count::new(seq, self.budget))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.budget.take(0)?;
        self.inner.visit_map(Count::new(map, self.budget))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.budget.take(0)?;
        self.inner.visit_enum(Count::new(data, self.budget))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Count<'_, S> {
    type Value = S::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(self.budget.wrap(d))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Count<'_, A> {
    type Error = A::Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, A::Error> {
        self.inner.next_element_seed(Count::new(seed, self.budget))
    }
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Count<'_, A> {
    type Error = A::Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        self.inner.next_key_seed(Count::new(seed, self.budget))
    }
    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.next_value_seed(Count::new(seed, self.budget))
    }
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'b, 'de, A: EnumAccess<'de>> EnumAccess<'de> for Count<'b, A> {
    type Error = A::Error;
    type Variant = Count<'b, A::Variant>;
    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self::Variant), A::Error> {
        let budget = self.budget;
        let (value, variant) = self.inner.variant_seed(Count::new(seed, budget))?;
        Ok((value, Count::new(variant, budget)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Count<'_, A> {
    type Error = A::Error;
    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.newtype_variant_seed(Count::new(seed, self.budget))
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner.tuple_variant(len, Count::new(visitor, self.budget))
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner.struct_variant(fields, Count::new(visitor, self.budget))
    }
}
