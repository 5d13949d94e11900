//! People (R-ACC-3, R-ACC-4): profiles, the display-name directory and blocks.
//!
//! Display names and status texts are validated newtypes: trimmed, NFC-normalized, free of
//! control and format characters, and bounded in characters (Unicode scalar values after
//! normalization). Two inputs that differ only in normalization form are the same name.
//!
//! The directory is searched by prefix on a [`SearchKey`], a case- and compatibility-folded
//! form of the display name (NFKC, lowercased, NFKC again). Backends store it next to the
//! profile in a byte-ordered column with a b-tree index, so a prefix is one range scan:
//! every key starting with `p` lies in `[p, SearchPrefix::upper_bound(p))` in code-point
//! (= UTF-8 byte) order. Pages are keyset-paged by `(key, user)` with a [`SearchCursor`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::ids::{AttachmentId, UserId, Username};
use crate::time::Timestamp;

/// Why a display name, status text or search prefix was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeopleError {
    /// Nothing but whitespace (or joiners) is left after trimming.
    #[error("must not be empty")]
    Empty,
    /// More characters than allowed after trimming and normalization.
    #[error("longer than {max} characters")]
    TooLong {
        /// The most characters allowed.
        max: usize,
    },
    /// A control, format or line/paragraph separator character.
    #[error("control and format characters are not allowed")]
    ForbiddenCharacter,
    /// A search cursor that is not `USER_ID.HEX`.
    #[error("malformed search cursor")]
    Cursor,
}

/// Zero-width non-joiner and joiner: format characters, yet needed by emoji sequences
/// (👩‍💻) and by Persian and Indic orthography, so they are the only ones allowed.
const JOINERS: [char; 2] = ['\u{200c}', '\u{200d}'];

fn forbidden(c: char) -> bool {
    match c.general_category() {
        GeneralCategory::Control
        | GeneralCategory::LineSeparator
        | GeneralCategory::ParagraphSeparator
        | GeneralCategory::Surrogate => true,
        GeneralCategory::Format => !JOINERS.contains(&c),
        _ => false,
    }
}

/// Trims, normalizes (NFC) and checks `input`; `min_one` refuses an empty result.
fn clean(input: &str, max: usize, min_one: bool) -> Result<String, PeopleError> {
    let text: String = input.trim().nfc().collect();
    if text.chars().any(forbidden) {
        return Err(PeopleError::ForbiddenCharacter);
    }
    if min_one
        && text
            .chars()
            .all(|c| c.is_whitespace() || JOINERS.contains(&c))
    {
        return Err(PeopleError::Empty);
    }
    if text.chars().count() > max {
        return Err(PeopleError::TooLong { max });
    }
    Ok(text)
}

macro_rules! text_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Wraps text a store wrote after validating it, without checking it again: a
            /// later build with newer rules (or Unicode tables) must still read every stored
            /// profile, or one old row would fail whole search pages.
            pub fn from_stored(text: String) -> Self {
                Self(text)
            }
        }

        impl TryFrom<String> for $name {
            type Error = PeopleError;
            fn try_from(value: String) -> Result<Self, PeopleError> {
                Self::new(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_newtype!(
    /// A display name: 1 to [`DisplayName::MAX_CHARS`] characters after trimming and NFC
    /// normalization, without control or format characters (joiners excepted).
    DisplayName
);

impl DisplayName {
    /// The most characters in a display name.
    pub const MAX_CHARS: usize = 64;

    /// Trims, normalizes and validates `name`.
    pub fn new(name: &str) -> Result<Self, PeopleError> {
        clean(name, Self::MAX_CHARS, true).map(Self)
    }

    /// The folded form the directory is searched on.
    pub fn search_key(&self) -> SearchKey {
        SearchKey(fold(&self.0))
    }
}

text_newtype!(
    /// A status text ("on holiday"): at most [`StatusText::MAX_CHARS`] characters after
    /// trimming and NFC normalization, same character rules as a display name. Empty input
    /// means "no status" and is not a `StatusText`.
    StatusText
);

impl StatusText {
    /// The most characters in a status text.
    pub const MAX_CHARS: usize = 140;

    /// Trims, normalizes and validates `text`; [`PeopleError::Empty`] when nothing is left.
    pub fn new(text: &str) -> Result<Self, PeopleError> {
        clean(text, Self::MAX_CHARS, true).map(Self)
    }
}

/// Case and compatibility folding for search: NFKC, lowercase, NFKC again (lowercasing can
/// produce sequences that compose).
fn fold(text: &str) -> String {
    let lower: String = text.nfkc().collect::<String>().to_lowercase();
    lower.nfkc().collect()
}

/// The folded form of a display name, stored beside it and indexed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SearchKey(String);

impl SearchKey {
    /// Wraps a key read back from storage (already folded when it was written).
    pub fn from_stored(key: String) -> Self {
        Self(key)
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A folded search prefix: 1 to [`SearchPrefix::MAX_CHARS`] characters (leading whitespace
/// trimmed, trailing kept so "jo " finds "Jo Ann" but not "John").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPrefix(String);

impl SearchPrefix {
    /// The most characters in a prefix (a display name's limit).
    pub const MAX_CHARS: usize = DisplayName::MAX_CHARS;

    /// Folds and validates a prefix typed by a user.
    pub fn new(prefix: &str) -> Result<Self, PeopleError> {
        let text: String = prefix.trim_start().nfc().collect();
        if text.chars().any(forbidden) {
            return Err(PeopleError::ForbiddenCharacter);
        }
        if text.is_empty() {
            return Err(PeopleError::Empty);
        }
        if text.chars().count() > Self::MAX_CHARS {
            return Err(PeopleError::TooLong {
                max: Self::MAX_CHARS,
            });
        }
        Ok(Self(fold(&text)))
    }

    /// The inclusive lower bound of the keys starting with this prefix: the prefix itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The exclusive upper bound of the keys starting with this prefix, in code-point order:
    /// the prefix with its last character incremented (dropping trailing `U+10FFFF`s).
    /// `None` when every key from the prefix on matches.
    pub fn upper_bound(&self) -> Option<String> {
        let mut chars: Vec<char> = self.0.chars().collect();
        while let Some(last) = chars.pop() {
            let next = match last {
                '\u{d7ff}' => Some('\u{e000}'),
                c => char::from_u32(u32::from(c) + 1),
            };
            if let Some(next) = next {
                chars.push(next);
                return Some(chars.into_iter().collect());
            }
        }
        None
    }

    /// Whether `key` starts with this prefix.
    pub fn matches(&self, key: &SearchKey) -> bool {
        key.0.starts_with(&self.0)
    }
}

/// Where a search page ends: the last result's key and user. The next page starts strictly
/// after it in `(key, user)` order. Shown to clients as `USER_ID.HEX_OF_KEY`, opaque to them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SearchCursor {
    /// The last result's search key.
    pub key: SearchKey,
    /// The last result's user.
    pub user: UserId,
}

impl SearchCursor {
    /// The cursor just past `profile`.
    pub fn after(profile: &Profile) -> Self {
        Self {
            key: profile.display_name.search_key(),
            user: profile.user,
        }
    }
}

impl fmt::Display for SearchCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.user, hex::encode(self.key.0.as_bytes()))
    }
}

impl FromStr for SearchCursor {
    type Err = PeopleError;

    fn from_str(s: &str) -> Result<Self, PeopleError> {
        // A folded 64-character name stays far below this; it only bounds the work.
        const MAX_HEX: usize = 8 * 1024;
        let (user, key) = s.split_once('.').ok_or(PeopleError::Cursor)?;
        if key.len() > MAX_HEX {
            return Err(PeopleError::Cursor);
        }
        let user = user.parse().map_err(|_| PeopleError::Cursor)?;
        let bytes = hex::decode(key).map_err(|_| PeopleError::Cursor)?;
        let key = String::from_utf8(bytes).map_err(|_| PeopleError::Cursor)?;
        Ok(Self {
            key: SearchKey(key),
            user,
        })
    }
}

/// A user's public profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Whose profile.
    pub user: UserId,
    /// Their unique username.
    pub username: Username,
    /// The name shown to others.
    pub display_name: DisplayName,
    /// Their status text, if any.
    pub status: Option<StatusText>,
    /// Their avatar: an attachment they uploaded (ciphertext like any other).
    pub avatar: Option<AttachmentId>,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// What a user sets: the whole profile at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileUpdate {
    /// The name shown to others.
    pub display_name: DisplayName,
    /// The status text; `None` clears it.
    pub status: Option<StatusText>,
    /// The avatar; `None` clears it.
    pub avatar: Option<AttachmentId>,
}

/// One entry of a user's block list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The blocked user.
    pub user: UserId,
    /// When they were blocked.
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_are_trimmed_normalized_and_bounded() {
        let name = DisplayName::new("  Zoë  ").unwrap();
        assert_eq!(name.as_str(), "Zoë");
        // NFD input (e + combining diaeresis) is the same name as NFC input.
        assert_eq!(DisplayName::new("Zoe\u{308}").unwrap(), name);
        assert_eq!(DisplayName::new(""), Err(PeopleError::Empty));
        assert_eq!(DisplayName::new(" \t "), Err(PeopleError::Empty));
        assert_eq!(DisplayName::new("\u{200d}"), Err(PeopleError::Empty));
        assert!(DisplayName::new(&"x".repeat(64)).is_ok());
        // 64 characters of 4 bytes each are fine: the bound is in characters.
        assert!(DisplayName::new(&"😀".repeat(64)).is_ok());
        assert_eq!(
            DisplayName::new(&"x".repeat(65)),
            Err(PeopleError::TooLong { max: 64 })
        );
        // 65 characters before normalization, 64 after: e + U+0301 composes to é.
        let composing = format!("{}e\u{301}", "x".repeat(63));
        assert_eq!(
            DisplayName::new(&composing)
                .unwrap()
                .as_str()
                .chars()
                .count(),
            64
        );
    }

    #[test]
    fn control_and_format_characters_are_refused() {
        for bad in [
            "a\u{0}b",
            "a\u{7}b",
            "a\nb",
            "a\u{7f}b",
            "a\u{85}b",
            "a\u{202e}b",
            "a\u{200b}b",
            "a\u{feff}b",
            "a\u{2028}b",
            "a\u{2066}b",
        ] {
            assert_eq!(
                DisplayName::new(bad),
                Err(PeopleError::ForbiddenCharacter),
                "{bad:?}"
            );
            assert_eq!(StatusText::new(bad), Err(PeopleError::ForbiddenCharacter));
        }
        // Joiners stay: emoji sequences and Persian need them.
        assert!(DisplayName::new("👩\u{200d}💻").is_ok());
        assert!(DisplayName::new("می\u{200c}خواهم").is_ok());
    }

    #[test]
    fn status_texts_are_bounded() {
        assert!(StatusText::new(&"s".repeat(140)).is_ok());
        assert_eq!(
            StatusText::new(&"s".repeat(141)),
            Err(PeopleError::TooLong { max: 140 })
        );
        assert_eq!(StatusText::new("   "), Err(PeopleError::Empty));
    }

    #[test]
    fn search_is_case_and_compatibility_folded() {
        let key = DisplayName::new("Ｊosé ﬁ").unwrap().search_key();
        assert_eq!(key.as_str(), "josé fi");
        let prefix = SearchPrefix::new("JOSE\u{301}").unwrap();
        assert!(prefix.matches(&key));
        assert!(!SearchPrefix::new("jose ").unwrap().matches(&key));
        assert_eq!(SearchPrefix::new("  "), Err(PeopleError::Empty));
    }

    #[test]
    fn upper_bounds_cover_exactly_the_prefix() {
        let up = |p: &str| SearchPrefix(p.into()).upper_bound();
        assert_eq!(up("ab").as_deref(), Some("ac"));
        assert_eq!(up("a\u{10ffff}").as_deref(), Some("b"));
        assert_eq!(up("a\u{d7ff}").as_deref(), Some("a\u{e000}"));
        assert_eq!(up("\u{10ffff}"), None);
        let prefix = SearchPrefix::new("ab").unwrap();
        let upper = prefix.upper_bound().unwrap();
        for key in ["ab", "abz", "ab\u{10ffff}x", "ab\u{e000}"] {
            assert!(key >= prefix.as_str() && key < upper.as_str(), "{key:?}");
        }
        for key in ["a", "aa\u{10ffff}", "ac", "b"] {
            assert!(!(key >= prefix.as_str() && key < upper.as_str()), "{key:?}");
        }
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let cursor = SearchCursor {
            key: SearchKey("zoë".into()),
            user: UserId::new(7).unwrap(),
        };
        let text = cursor.to_string();
        assert_eq!(text.parse::<SearchCursor>(), Ok(cursor));
        for bad in ["", "7", "x.00", "7.zz", "7.ff", "0.61"] {
            assert_eq!(
                bad.parse::<SearchCursor>(),
                Err(PeopleError::Cursor),
                "{bad}"
            );
        }
    }
}
