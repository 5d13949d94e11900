//! Encoding helpers shared by the model and the protocol.

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
        d.bytes().map(Bytes::copy_from_slice)
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
