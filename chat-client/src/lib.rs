#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod client;
mod driver;
mod e2e;
mod error;
mod event;
mod http;
mod people;
mod search;
mod sqlite;
mod store;

pub use chat_core::{
    AttachmentId, AttachmentPointer, ClientKey, Content, ConversationId, ConversationKind,
    DeviceAddress, DeviceId, ErrorCode, GroupAction, GroupChange, MessageId, ReceiptKind, Text,
    UserId,
};
pub use chat_crypto::SafetyNumber;
pub use client::Client;
pub use error::{Error, Result};
pub use event::{ConnectionState, Event, Events, Message};
pub use people::{Profile, UserPage};
pub use search::{
    MAX_SEARCH_PAGE, SearchError, SearchHit, SearchIndex, SearchPage, SearchPosition, SearchResults,
};
pub use sqlite::SqliteStore;
pub use store::{
    ClientStore, ConversationRecord, DeviceRecord, MemoryStore, OutboxEntry, Secret, StoredMessage,
    Write,
};
