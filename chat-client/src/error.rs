//! The crate's one error type, and the mapping from server answers to it.

use chat_core::ErrorCode;

/// Everything a [`crate::Client`] call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error code (HTTP or WebSocket); match on `code`.
    #[error("the server refused ({code}): {message}")]
    Server {
        /// The stable wire error code.
        code: ErrorCode,
        /// The server's message, for humans and logs.
        message: String,
    },
    /// The server could not be reached or the connection broke.
    #[error("network: {0}")]
    Network(String),
    /// The server sent something that does not follow the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The local store failed.
    #[error("local store: {0}")]
    Store(String),
    /// Encryption or decryption failed.
    #[error("crypto: {0}")]
    Crypto(#[from] chat_crypto::Error),
    /// The content is refused before encryption (for example text over 100,000 characters).
    #[error("content: {0}")]
    Content(#[from] chat_core::ContentError),
    /// A username or ID is not valid.
    #[error("invalid argument: {0}")]
    Invalid(String),
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
}

impl Error {
    /// The server's error code, if the server refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn server(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Server {
            code,
            message: message.into(),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(e.to_string())
    }
}

impl From<crate::SearchError> for Error {
    fn from(e: crate::SearchError) -> Self {
        Self::Store(e.to_string())
    }
}

impl From<chat_core::IdError> for Error {
    fn from(e: chat_core::IdError) -> Self {
        Self::Invalid(e.to_string())
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
