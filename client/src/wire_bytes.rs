//! Byte strings that decode without trusting their length prefix.
//!
//! bincode's owned decoder allocates a `Vec<u8>` of the claimed length before it
//! reads the bytes. Routing byte strings through `deserialize_bytes` on the
//! borrowed decoder ([`crate::codec::decode`]) makes bincode check that the bytes
//! are really in the frame first, and only then copy them. Sequences use serde's
//! cautious preallocation, so a claimed count of 2^31 reserves almost nothing.
//! These helpers are used through `#[serde(deserialize_with = ...)]` on the wire
//! types; serialization is the default one (a u64 length, then the bytes).

use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, Visitor};
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

pub(crate) fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Bytes>, D::Error> {
    Vec::<Blob>::deserialize(d).map(|v| v.into_iter().map(|b| b.0).collect())
}

pub(crate) fn pairs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Bytes, Bytes)>, D::Error> {
    Vec::<(Blob, Blob)>::deserialize(d).map(|v| v.into_iter().map(|(k, v)| (k.0, v.0)).collect())
}

/// A UTF-8 string read through `deserialize_str`, for the same reason as [`Blob`].
pub(crate) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s: &'de str = Deserialize::deserialize(d)?;
    Ok(s.to_owned())
}
