//! Encoding helpers shared by the model and the protocol.
//!
//! Decoding accepts any valid CBOR, as docs/PROTOCOL.md promises: minicbor's own decoders
//! for strings and byte strings take only definite lengths, so every text and byte field
//! decodes through [`text`], [`opt_text`], [`bytes_field`] or [`byte_array`], which also
//! take indefinite-length (chunked) strings. Maps and arrays of any length already decode
//! through minicbor's derive and `Vec`, and frame arrays through [`skip_rest`]. Encoders
//! always write definite lengths.

use minicbor::data::Type;
use minicbor::{Decoder, decode};

/// A byte string of definite or indefinite length, its chunks joined.
pub(crate) fn concat_bytes(d: &mut Decoder<'_>) -> Result<Vec<u8>, decode::Error> {
    let mut out = Vec::new();
    for chunk in d.bytes_iter()? {
        out.extend_from_slice(chunk?);
    }
    Ok(out)
}

/// Skips what is left of an array whose first `read` elements were decoded: the rest of
/// `len` elements, or up to and including the break of an indefinite-length array (`None`).
pub(crate) fn skip_rest(
    d: &mut Decoder<'_>,
    len: Option<u64>,
    read: u64,
) -> Result<(), decode::Error> {
    match len {
        Some(n) => {
            for _ in read..n {
                d.skip()?;
            }
        }
        None => {
            while d.datatype()? != Type::Break {
                d.skip()?;
            }
            // The break itself: one byte.
            d.set_position(d.position() + 1);
        }
    }
    Ok(())
}

/// Decodes a text string of definite or indefinite length, for
/// `#[cbor(decode_with = "crate::wire::text")]` on `String` fields.
pub(crate) fn text<Ctx>(d: &mut Decoder<'_>, _: &mut Ctx) -> Result<String, decode::Error> {
    let mut out = String::new();
    for chunk in d.str_iter()? {
        out.push_str(chunk?);
    }
    Ok(out)
}

/// [`text`] for `Option<String>` fields: `null` is `None`, as for minicbor's `Option`.
pub(crate) fn opt_text<Ctx>(
    d: &mut Decoder<'_>,
    ctx: &mut Ctx,
) -> Result<Option<String>, decode::Error> {
    if d.datatype()? == Type::Null {
        d.skip()?;
        return Ok(None);
    }
    text(d, ctx).map(Some)
}

/// Encodes a `[u8; N]` as a CBOR byte string, for `#[cbor(with = "crate::wire::byte_array")]`.
pub(crate) mod byte_array {
    use minicbor::{Decoder, Encoder, decode as de, encode as en};

    pub(crate) fn encode<C, W: en::Write, const N: usize>(
        v: &[u8; N],
        e: &mut Encoder<W>,
        _: &mut C,
    ) -> Result<(), en::Error<W::Error>> {
        e.bytes(v)?;
        Ok(())
    }

    pub(crate) fn decode<C, const N: usize>(
        d: &mut Decoder<'_>,
        _: &mut C,
    ) -> Result<[u8; N], de::Error> {
        let p = d.position();
        <[u8; N]>::try_from(super::concat_bytes(d)?)
            .map_err(|_| de::Error::message(format!("expected a byte string of {N} bytes")).at(p))
    }
}

/// Encodes a [`bytes::Bytes`] as a CBOR byte string, for `#[cbor(with = "bytes_field")]`.
pub(crate) mod bytes_field {
    use bytes::Bytes;
    use minicbor::{Decoder, Encoder, decode as de, encode as en};

    pub(crate) fn encode<C, W: en::Write>(
        v: &Bytes,
        e: &mut Encoder<W>,
        _: &mut C,
    ) -> Result<(), en::Error<W::Error>> {
        e.bytes(v)?;
        Ok(())
    }

    pub(crate) fn decode<C>(d: &mut Decoder<'_>, _: &mut C) -> Result<Bytes, de::Error> {
        super::concat_bytes(d).map(Bytes::from)
    }
}

/// Encodes a [`bytes::Bytes`] as a lowercase hex string in JSON, for
/// `#[serde(with = "hex_bytes")]`.
pub(crate) mod hex_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        hex::decode(s.as_ref())
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}
