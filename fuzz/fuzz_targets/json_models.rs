//! serde_json decoding of the chat-core types the HTTP API's JSON consists of: the request
//! bodies the server reads (see chat-server/src/api/*.rs: usernames, IDs, device keys,
//! one-time prekeys, push tokens, profile text) and the responses a client reads from the
//! server (bundles, profiles, conversations, ...). Also the text a query string or a path
//! carries, parsed by the same newtypes (search prefix and cursor, IDs).
//!
//! The first byte picks the type; the rest is the JSON (or the text). Whatever decodes must
//! encode to JSON that decodes to the same value: a validated newtype accepts its own output.
//!
//! The request structs themselves are `pub(crate)` in chat-server and consist of these types
//! plus plain strings and options; building chat-server here would put axum, tokio, SQLite
//! and PostgreSQL into every sanitizer build, for serde_derive code that holds no checks of
//! ours.
#![no_main]

use std::fmt::Debug;
use std::str::FromStr;

use chat_core::{
    AttachmentId, AttachmentMeta, Block, ClientKey, Conversation, ConversationId, Device,
    DeviceAddress, DeviceId, DeviceKeys, DeviceMismatch, DisplayName, ErrorCode, InboxPos,
    MessageId, OneTimePrekey, PrekeyBundle, Profile, PushToken, ReceiptPosition, SearchCursor,
    SearchPrefix, StatusText, User, UserId, Username,
};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Decodes `json` as `T`; a value that decodes must survive a round trip.
fn json<T: DeserializeOwned + Serialize + PartialEq + Debug>(json: &[u8]) -> Option<T> {
    let value: T = serde_json::from_slice(json).ok()?;
    let again = serde_json::to_vec(&value).expect("a decoded value encodes");
    let back: T = serde_json::from_slice(&again).expect("our own JSON decodes");
    assert_eq!(back, value);
    Some(value)
}

/// Parses `text` as `T`; a value that parses must parse again from its `Display` form.
fn text<T: FromStr + ToString + PartialEq + Debug>(text: &str) {
    if let Ok(value) = text.parse::<T>() {
        assert_eq!(value.to_string().parse::<T>().ok(), Some(value));
    }
}

/// What `PUT /v1/keys` checks after decoding (chat-server's `verify_keys`), through the same
/// chat-crypto calls.
fn verify_keys(keys: &DeviceKeys) {
    let Ok((public, binding)) = chat_crypto::IdentityPublic::from_published(&keys.identity) else {
        return;
    };
    let _ = public.verify_binding(&binding);
    let spk = &keys.signed_prekey;
    if let (Ok(key), Ok(signature)) = (
        spk.public.as_ref().try_into(),
        spk.signature.as_ref().try_into(),
    ) {
        let signed = chat_crypto::SignedPrekey {
            id: spk.id,
            key,
            signature,
        };
        let _ = signed.verify(&public);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 24 {
        0 => drop(json::<Username>(rest)),
        1 => drop(json::<UserId>(rest)),
        2 => drop(json::<DeviceId>(rest)),
        3 => drop(json::<ConversationId>(rest)),
        4 => drop(json::<MessageId>(rest)),
        5 => drop(json::<AttachmentId>(rest)),
        6 => {
            if let Some(keys) = json::<DeviceKeys>(rest) {
                verify_keys(&keys);
            }
        }
        7 => drop(json::<Vec<OneTimePrekey>>(rest)),
        8 => drop(json::<PushToken>(rest)),
        9 => drop(json::<DisplayName>(rest)),
        10 => drop(json::<Option<StatusText>>(rest)),
        11 => drop(json::<Vec<UserId>>(rest)),
        12 => drop(json::<PrekeyBundle>(rest)),
        13 => drop(json::<Profile>(rest)),
        14 => drop(json::<Vec<Conversation>>(rest)),
        15 => drop(json::<(User, Vec<Device>)>(rest)),
        16 => drop(json::<(AttachmentMeta, Vec<ReceiptPosition>, Vec<Block>)>(
            rest,
        )),
        17 => drop(json::<(
            DeviceMismatch,
            DeviceAddress,
            ErrorCode,
            InboxPos,
            ClientKey,
        )>(rest)),
        which => {
            let Ok(s) = std::str::from_utf8(rest) else {
                return;
            };
            match which {
                18 => {
                    // The people search's query string: `prefix` and `after`.
                    if let Ok(prefix) = SearchPrefix::new(s) {
                        assert!(!prefix.as_str().is_empty());
                    }
                }
                19 => text::<SearchCursor>(s),
                20 => text::<UserId>(s),
                21 => text::<AttachmentId>(s),
                22 => {
                    // The profile handler trims the status and takes "" as none.
                    if let Ok(name) = DisplayName::new(s) {
                        assert_eq!(DisplayName::new(name.as_str()), Ok(name));
                    }
                    if let Ok(status) = StatusText::new(s.trim()) {
                        assert_eq!(StatusText::new(status.as_str()), Ok(status));
                    }
                }
                _ => {
                    if let Ok(name) = Username::new(s) {
                        assert_eq!(Username::new(name.as_str()).as_ref(), Ok(&name));
                    }
                }
            }
        }
    }
});
