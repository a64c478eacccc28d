//! Byte strings that decode without trusting their length prefix.
//!
//! bincode's owned decoder allocates a `Vec<u8>` of the claimed length before it
//! reads the bytes. Routing byte strings through `deserialize_bytes` on the
//! borrowed decoder ([`crate::codec::decode`]) makes bincode check that the bytes
//! are really in the frame first, and only then copy them. Sequences reserve at
//! most [`MAX_PREALLOCATED`] elements up front, so a claimed count of 2^31
//! reserves almost nothing.
//! These helpers are used through `#[serde(deserialize_with = ...)]` on the wire
//! types; serialization is the default one (a u64 length, then the bytes).

use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use std::fmt;

/// A byte string that deserializes from borrowed bytes.
struct Blob(Bytes);

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BlobVisitor;
        impl Visitor<'_> for BlobVisitor {
            type Value = Blob;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(Bytes::from(v)))
            }
        }
        d.deserialize_bytes(BlobVisitor)
    }
}

pub(crate) fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    Blob::deserialize(d).map(|b| b.0)
}

pub(crate) fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
    Option::<Blob>::deserialize(d).map(|o| o.map(|b| b.0))
}

/// Elements reserved up front for a sequence, whatever count it claims; the
/// vector grows as elements really arrive.
const MAX_PREALLOCATED: usize = 256;

/// A sequence whose claimed count reserves at most [`MAX_PREALLOCATED`] slots.
struct Seq<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Seq<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SeqVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for SeqVisitor<T> {
            type Value = Seq<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seq<T>, A::Error> {
                let mut out =
                    Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PREALLOCATED));
                while let Some(item) = seq.next_element()? {
                    out.push(item);
                }
                Ok(Seq(out))
            }
        }
        d.deserialize_seq(SeqVisitor(std::marker::PhantomData))
    }
}

pub(crate) fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Bytes>, D::Error> {
    Seq::<Blob>::deserialize(d).map(|v| v.0.into_iter().map(|b| b.0).collect())
}

/// A list of anything, reserving as [`Seq`] does.
pub(crate) fn seq<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Seq::<T>::deserialize(d).map(|s| s.0)
}

pub(crate) fn pairs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Bytes, Bytes)>, D::Error> {
    Seq::<(Blob, Blob)>::deserialize(d).map(|v| v.0.into_iter().map(|(k, v)| (k.0, v.0)).collect())
}

/// A UTF-8 string read through `deserialize_str`, for the same reason as [`Blob`].
pub(crate) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s: &'de str = Deserialize::deserialize(d)?;
    Ok(s.to_owned())
}

/// A string borrowed from the frame, copied once.
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string(d).map(Text)
    }
}

/// An optional UTF-8 string, read like [`string`].
pub(crate) fn option_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<Text>::deserialize(d).map(|o| o.map(|t| t.0))
}

/// `Stats` figures: (name, value) pairs.
pub(crate) fn figures<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, i64)>, D::Error> {
    Seq::<(Text, i64)>::deserialize(d).map(|v| v.0.into_iter().map(|(n, x)| (n.0, x)).collect())
}

type Flag = std::thread::LocalKey<std::cell::Cell<bool>>;

thread_local! {
    /// Whether this thread is inside the `command` of an `Indexed` command
    /// or the `reply` of an `Indexed` reply being decoded.
    static IN_INDEXED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Whether it is inside the replies of a `Txn` reply.
    static IN_TXN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Decodes `T` inside a wrapper (`Indexed`, or a `Txn` reply's list),
/// refusing a second one of the same kind inside it (`inside`, named
/// `what`): nesting them would make the decoder recurse as deep as a frame
/// allows.
fn one_level<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    inside: &'static Flag,
    what: &str,
    d: D,
) -> Result<T, D::Error> {
    /// Leaves the wrapper on drop, even if decoding unwinds.
    struct Leave(&'static Flag);
    impl Drop for Leave {
        fn drop(&mut self) {
            self.0.with(|inside| inside.set(false));
        }
    }
    if inside.with(|inside| inside.replace(true)) {
        return Err(serde::de::Error::custom(format!("{what} inside {what}")));
    }
    let _leave = Leave(inside);
    T::deserialize(d)
}

pub(crate) fn inner_command<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Box<crate::Command>, D::Error> {
    one_level(&IN_INDEXED, "Indexed", d).map(Box::new)
}

pub(crate) fn inner_reply<'de, D: Deserializer<'de>>(d: D) -> Result<Box<crate::Reply>, D::Error> {
    one_level(&IN_INDEXED, "Indexed", d).map(Box::new)
}

/// A `Txn` command's branch, which holds no `Txn` command.
pub(crate) fn txn_commands<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<crate::Command>, D::Error> {
    one_level::<_, Seq<crate::Command>>(&IN_TXN, "Txn", d).map(|s| s.0)
}

/// A `Txn` reply's replies, which hold no `Txn` reply.
pub(crate) fn txn_replies<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<crate::Reply>, D::Error> {
    one_level::<_, Seq<crate::Reply>>(&IN_TXN, "Txn", d).map(|s| s.0)
}
