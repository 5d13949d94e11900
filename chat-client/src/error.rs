//! The crate's one error type, and the mapping from server answers to it.
//!
//! Every variant is something an app can act on: match on the variant (and, for
//! [`Error::Server`], on its stable wire code). Underlying errors are kept as sources
//! (`std::error::Error::source`), never flattened into strings.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use chat_core::ErrorCode;

/// A boxed underlying error.
type Source = Box<dyn StdError + Send + Sync + 'static>;

/// Everything a [`crate::Client`] call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server refused with a code that has no variant of its own here; match on `code`
    /// (docs/PROTOCOL.md section 8 lists them).
    #[error("the server refused ({code}): {message}")]
    Server {
        /// The stable wire error code.
        code: ErrorCode,
        /// The server's message, for humans and logs.
        message: String,
    },
    /// The server refused this device's token: the device was logged out or removed. Log in
    /// again.
    #[error("this device's token is no longer valid (logged out or removed)")]
    Unauthorized,
    /// The user is not a member of the conversation.
    #[error("not a member of this conversation")]
    NotMember,
    /// Too many requests: the server asks to wait this long (when it said) before retrying.
    #[error("rate limited")]
    RateLimited {
        /// How long to wait, from the server's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// A limit of the system was reached.
    #[error("limit reached: {0}")]
    LimitExceeded(Limit),
    /// The server could not be reached, or the connection broke.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The server sent something that does not follow the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading or writing a file the app named (an attachment) failed.
    #[error("file {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Encryption or decryption failed.
    #[error("crypto: {0}")]
    Crypto(#[from] chat_crypto::Error),
    /// The content is refused before encryption (for example text over 100,000 characters).
    #[error("content: {0}")]
    Content(#[from] chat_core::ContentError),
    /// An argument the app passed is not valid (an address, a certificate, a name, a code):
    /// [`InvalidArgument::what`] says which and why, the parse error is the source. A
    /// programming or input error: retrying does not help.
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    /// The store holds no device; register or log in first.
    #[error("no device in the local store; register or log in first")]
    NotLoggedIn,
    /// The client was closed.
    #[error("client closed")]
    Closed,
    /// This device is not linked to its user's account identity yet (see
    /// [`crate::Client::is_linked`]).
    #[error("this device is not linked yet")]
    NotLinked,
    /// The user's account identity changed and the new one waits to be accepted
    /// ([`crate::Client::accept_identity`]); nothing is sent to them until then.
    #[error("the account identity of user {0} changed; accept it before sending")]
    IdentityNotAccepted(chat_core::UserId),
    /// The user published no signed device list, so no device of theirs can be trusted.
    #[error("user {0} has no signed device list")]
    NoDeviceList(chat_core::UserId),
    /// The group's signed changes do not verify (or the server has none for it), so this
    /// device cannot sign a change to it.
    #[error("the group's signed changes do not verify: {0}")]
    GroupChain(#[from] chat_crypto::ChainError),
    /// An edit, delete or unreaction aimed at a message another user sent: only its sender
    /// may change it.
    #[error("message {0} was sent by another user; only its sender may change it")]
    NotSender(chat_core::MessageId),
    /// The store given to register or log in already holds a device: resume it with
    /// [`ClientBuilder::open`](crate::ClientBuilder::open) (a store holds one device).
    #[error("this store already holds a device; resume it with ClientBuilder::open")]
    StoreInUse,
    /// This device is linked to its user's account identity already, so it shows no link
    /// code.
    #[error("this device is linked already")]
    AlreadyLinked,
    /// A link code was confirmed on a device that has not shown one
    /// ([`crate::Client::link_code`] first).
    #[error("no link code shown on this device; show one first")]
    NoLinkCode,
    /// `remove_device` was given this device; it signs off with
    /// [`crate::Client::logout`] instead.
    #[error("this is the device itself; use logout")]
    ThisDevice,
}

/// Which limit [`Error::LimitExceeded`] hit, with the limit where it is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// A group has at most this many members.
    GroupMembers(usize),
    /// A user has at most this many devices.
    DevicesPerUser(usize),
    /// A message body (its ciphertext) is larger than this many bytes.
    MessageSize(usize),
    /// A message's header for one device is larger than this many bytes.
    HeaderSize(usize),
    /// A file is larger than the server's attachment limit (each deployment sets its own).
    AttachmentSize,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::GroupMembers(n) => write!(f, "a group has at most {n} members"),
            Self::DevicesPerUser(n) => write!(f, "a user has at most {n} devices"),
            Self::MessageSize(n) => write!(f, "a message body has at most {n} bytes"),
            Self::HeaderSize(n) => write!(f, "a message header has at most {n} bytes per device"),
            Self::AttachmentSize => f.write_str("the file is larger than the server takes"),
        }
    }
}

/// What kind of network failure a [`NetworkError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetworkErrorKind {
    /// No connection could be made (refused, unreachable, name not resolved).
    Connect,
    /// The server did not answer in time.
    Timeout,
    /// The TLS handshake failed (for example a certificate the client does not trust:
    /// [`NetworkError::tls`] gives rustls' reason).
    Tls,
    /// The connection broke, or the server's HTTP could not be read.
    ConnectionLost,
}

/// The server could not be reached, or the connection broke. The underlying I/O, TLS or HTTP
/// error is the [`source`](StdError::source).
#[derive(Debug)]
pub struct NetworkError {
    kind: NetworkErrorKind,
    /// The server (host and port) the client was talking to.
    server: String,
    source: Option<Source>,
}

impl NetworkError {
    pub(crate) fn new(
        kind: NetworkErrorKind,
        server: impl Into<String>,
        source: impl Into<Source>,
    ) -> Self {
        Self {
            kind,
            server: server.into(),
            source: Some(source.into()),
        }
    }

    pub(crate) fn timeout(server: impl Into<String>) -> Self {
        Self {
            kind: NetworkErrorKind::Timeout,
            server: server.into(),
            source: None,
        }
    }

    /// What kind of failure.
    pub fn kind(&self) -> NetworkErrorKind {
        self.kind
    }

    /// The server (host and port) the client was talking to.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// rustls' reason, for a TLS failure (a certificate error says which check failed).
    pub fn tls(&self) -> Option<&tokio_rustls::rustls::Error> {
        let mut next: Option<&(dyn StdError + 'static)> = self.source.as_deref().map(|s| s as _);
        while let Some(e) = next {
            if let Some(tls) = e.downcast_ref::<tokio_rustls::rustls::Error>() {
                return Some(tls);
            }
            // tokio-rustls reports a handshake failure as an I/O error wrapping rustls'
            // (and an I/O error's `source` skips the error it wraps).
            let wrapped = e
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>());
            if wrapped.is_some() {
                return wrapped;
            }
            next = e.source();
        }
        None
    }
}

impl fmt::Display for NetworkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            NetworkErrorKind::Connect => "cannot connect to",
            NetworkErrorKind::Timeout => "no answer in time from",
            NetworkErrorKind::Tls => "TLS failed with",
            NetworkErrorKind::ConnectionLost => "connection lost with",
        };
        write!(f, "{what} {}", self.server)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for NetworkError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|s| s as _)
    }
}

/// An error described in words (`what`) with, if there is one, the parse error that caused
/// it as its source. Written as a macro: [`ProtocolError`] and [`InvalidArgument`] differ only
/// in their prefix and docs.
macro_rules! described_error {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $(#[$what_doc:meta])*) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name {
            what: String,
            source: Option<Source>,
        }

        impl $name {
            pub(crate) fn new(what: impl Into<String>) -> Self {
                Self {
                    what: what.into(),
                    source: None,
                }
            }

            pub(crate) fn with_source(what: impl Into<String>, source: impl Into<Source>) -> Self {
                Self {
                    what: what.into(),
                    source: Some(source.into()),
                }
            }

            $(#[$what_doc])*
            pub fn what(&self) -> &str {
                &self.what
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, ": {}"), self.what)?;
                if let Some(source) = &self.source {
                    write!(f, ": {source}")?;
                }
                Ok(())
            }
        }

        impl StdError for $name {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                self.source.as_deref().map(|s| s as _)
            }
        }
    };
}

described_error!(
    /// The server sent something that does not follow the protocol: `what` names it; the
    /// parse error, if any, is the source.
    ProtocolError,
    "protocol",
    /// What was malformed.
);

described_error!(
    /// An argument the app passed is not valid: `what` says which and why; the parse error,
    /// if any, is the source.
    InvalidArgument,
    "invalid argument",
    /// Which argument, and why it is not valid.
);

/// The local store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed (disk full, I/O error, a locked or damaged file).
    #[error("local store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The search index failed.
    #[error("local search index: {0}")]
    Search(#[from] crate::SearchError),
    /// A stored record does not decode: the store is damaged (or written by a newer build).
    #[error("local store: corrupt {0}")]
    Corrupt(&'static str),
    /// A thread panicked while it held the store or the crypto state; this client cannot go
    /// on safely. Open the store again.
    #[error("local store: {0} poisoned by a panic")]
    Poisoned(&'static str),
    /// The file was written by a newer build (its schema version is higher than this build
    /// knows); open it with that build.
    #[error("local store: schema version {found} is newer than this build's {supported}")]
    TooNew {
        /// The file's version.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// An fsync of the store failed (the source, the first time): the batches since the last
    /// good one may or may not be on disk, so the store refuses every later write. Open it
    /// again (SQLite recovers it to a consistent state).
    #[error("local store: an fsync failed; open the store again")]
    SyncFailed(#[source] Option<std::io::Error>),
    /// The store is encrypted: open it with its key
    /// ([`SqliteStore::open_encrypted`](crate::SqliteStore::open_encrypted)).
    #[error("local store: encrypted; a key is needed to open it")]
    KeyRequired,
    /// The key does not open this store.
    #[error("local store: the key does not open it")]
    WrongKey,
    /// The store was made without encryption, and a key was given: it is not encrypted now
    /// (there is no conversion; a new device with an encrypted store is).
    #[error("local store: made without encryption")]
    NotEncrypted,
}

impl Error {
    /// The wire error code, for errors the server answered with (also for the variants made
    /// from its codes: [`Error::Unauthorized`] is `invalid_token`, [`Error::NotMember`]
    /// `not_member`, and so on).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { code, .. } => Some(*code),
            Self::Unauthorized => Some(ErrorCode::InvalidToken),
            Self::NotMember => Some(ErrorCode::NotMember),
            Self::RateLimited { .. } => Some(ErrorCode::RateLimited),
            Self::LimitExceeded(Limit::GroupMembers(_)) => Some(ErrorCode::GroupFull),
            Self::LimitExceeded(Limit::DevicesPerUser(_)) => Some(ErrorCode::TooManyDevices),
            Self::LimitExceeded(Limit::MessageSize(_)) => Some(ErrorCode::BodyTooLarge),
            Self::LimitExceeded(Limit::HeaderSize(_)) => Some(ErrorCode::HeaderTooLarge),
            Self::LimitExceeded(Limit::AttachmentSize) => Some(ErrorCode::PayloadTooLarge),
            _ => None,
        }
    }

    /// The error for a server's refusal: its own variant where the code has one.
    pub(crate) fn server(code: ErrorCode, message: impl Into<String>) -> Self {
        use chat_core::limits::{
            MAX_BODY_BYTES, MAX_DEVICE_HEADER_BYTES, MAX_DEVICES_PER_USER, MAX_GROUP_MEMBERS,
        };
        match code {
            ErrorCode::InvalidToken => Self::Unauthorized,
            ErrorCode::NotMember => Self::NotMember,
            ErrorCode::RateLimited => Self::RateLimited { retry_after: None },
            ErrorCode::GroupFull => Self::LimitExceeded(Limit::GroupMembers(MAX_GROUP_MEMBERS)),
            ErrorCode::TooManyDevices => {
                Self::LimitExceeded(Limit::DevicesPerUser(MAX_DEVICES_PER_USER))
            }
            ErrorCode::BodyTooLarge => Self::LimitExceeded(Limit::MessageSize(MAX_BODY_BYTES)),
            ErrorCode::HeaderTooLarge => {
                Self::LimitExceeded(Limit::HeaderSize(MAX_DEVICE_HEADER_BYTES))
            }
            ErrorCode::PayloadTooLarge => Self::LimitExceeded(Limit::AttachmentSize),
            code => Self::Server {
                code,
                message: message.into(),
            },
        }
    }

    /// An argument the app passed that is not valid.
    pub(crate) fn invalid(what: impl Into<String>) -> Self {
        Self::Invalid(InvalidArgument::new(what))
    }

    /// An argument the app passed that does not parse, with the parse error.
    pub(crate) fn invalid_because(what: impl Into<String>, source: impl Into<Source>) -> Self {
        Self::Invalid(InvalidArgument::with_source(what, source))
    }

    /// A malformed answer or frame.
    pub(crate) fn protocol(what: impl Into<String>) -> Self {
        Self::Protocol(ProtocolError::new(what))
    }

    /// A record of the local store that does not decode.
    pub(crate) fn corrupt(what: &'static str) -> Self {
        Self::Store(StoreError::Corrupt(what))
    }

    /// A lock poisoned by a panic.
    pub(crate) fn poisoned(what: &'static str) -> Self {
        Self::Store(StoreError::Poisoned(what))
    }

    /// A file the app named could not be read or written.
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(StoreError::Sqlite(e))
    }
}

impl From<crate::SearchError> for Error {
    fn from(e: crate::SearchError) -> Self {
        Self::Store(StoreError::Search(e))
    }
}

impl From<chat_core::IdError> for Error {
    fn from(e: chat_core::IdError) -> Self {
        Self::invalid_because("an ID", e)
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_codes_with_a_variant_keep_their_code() {
        for code in [
            ErrorCode::InvalidToken,
            ErrorCode::NotMember,
            ErrorCode::RateLimited,
            ErrorCode::GroupFull,
            ErrorCode::TooManyDevices,
            ErrorCode::BodyTooLarge,
            ErrorCode::HeaderTooLarge,
            ErrorCode::PayloadTooLarge,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
        ] {
            let e = Error::server(code, "x");
            assert_eq!(e.code(), Some(code), "{e:?}");
        }
        assert!(matches!(
            Error::server(ErrorCode::BodyTooLarge, ""),
            Error::LimitExceeded(Limit::MessageSize(n)) if n == chat_core::limits::MAX_BODY_BYTES
        ));
        assert!(matches!(
            Error::server(ErrorCode::GroupFull, ""),
            Error::LimitExceeded(Limit::GroupMembers(100))
        ));
        assert!(matches!(
            Error::server(ErrorCode::NotFound, "no such user"),
            Error::Server { code: ErrorCode::NotFound, message } if message == "no such user"
        ));
    }

    #[test]
    fn an_invalid_argument_keeps_its_parse_error() {
        let e = Error::from(chat_core::IdError::OutOfRange);
        assert!(
            matches!(&e, Error::Invalid(a) if a.what() == "an ID"),
            "{e:?}"
        );
        let source = StdError::source(&e).expect("the id error");
        assert!(source.downcast_ref::<chat_core::IdError>().is_some());
        assert_eq!(
            e.to_string(),
            "invalid argument: an ID: identifier out of range"
        );
        let e = crate::Server::parse("ftp://example.com").unwrap_err();
        assert!(
            matches!(&e, Error::Invalid(a) if a.what().contains("ftp")),
            "{e:?}"
        );
    }

    #[test]
    fn sources_are_kept() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::from(NetworkError::new(NetworkErrorKind::Connect, "h:1", io));
        // `Network` is transparent: its source is the network error's, the I/O error.
        let source = StdError::source(&e).expect("the io error");
        assert_eq!(
            source
                .downcast_ref::<std::io::Error>()
                .map(std::io::Error::kind),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
        assert!(e.to_string().contains("cannot connect to h:1"));
    }
}
