#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod attachments;
mod client;
mod conversations;
mod driver;
mod e2e;
mod error;
mod event;
mod groups;
mod handle;
mod http;
mod net;
mod nodes;
mod outgoing;
mod people;
mod recovery;
mod search;
mod sqlite;
pub mod store;
mod thread;
mod trust;
mod wire;

pub use chat_core::protocol::ResyncReason;
pub use chat_core::{
    AttachmentId, AttachmentPointer, ClientKey, Content, ConversationId, ConversationKind, Delete,
    DeviceAddress, DeviceId, Edit, ErrorCode, GroupAction, GroupChange, GroupSettings, MessageId,
    MessageView, Permission, Reaction, ReadPosition, ReceiptKind, Role, Text, UserId,
};
pub use chat_crypto::{ChainError, SafetyNumber};
pub use client::Client;
pub use conversations::{ConversationSummary, MAX_TIMELINE_PAGE};
pub use error::{
    Error, InvalidArgument, Limit, NetworkError, NetworkErrorKind, ProtocolError, Result,
    StoreError,
};
pub use event::{ConnectionState, Event, Events, Message};
pub use groups::GroupInfo;
pub use handle::{ClientBuilder, Conversation, Credentials};
pub use net::{IntoServer, Server};
pub use nodes::{IntoNodes, Nodes};
pub use people::{Profile, UserPage};
pub use search::{
    MAX_SEARCH_PAGE, SearchError, SearchHit, SearchPage, SearchPosition, SearchResults,
};
pub use sqlite::SqliteStore;
pub use store::MemoryStore;
pub use thread::TimelineItem;
/// rustls' error and certificate reasons, as [`NetworkError::tls`] gives them.
pub use tokio_rustls::rustls::{CertificateError, Error as TlsError};
pub use trust::TrustPolicy;
