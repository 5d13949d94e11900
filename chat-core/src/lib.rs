//! chat-core: the model, identifiers, limits, sync cursor, presence state machine, wire
//! protocol and boundary traits of the chat crate family.
//!
//! Nothing here does I/O or reads a clock: time comes in as a [`Timestamp`] argument, bytes
//! come in as slices, and every rule is a plain function or state machine that tests drive
//! directly. The server and client crates are thin drivers around it.
#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod blob;
mod bus;
mod content;
mod cursor;
mod delivery;
mod discovery;
mod error;
mod group;
mod ids;
pub mod limits;
mod model;
mod people;
mod presence;
pub mod protocol;
mod push;
mod store;
mod thread;
mod time;
mod transport;
mod typing;
mod unread;
mod wire;

pub use blob::{BlobError, BlobStore, ByteStream};
pub use bus::{Bus, BusError, BusMessage, BusSink, SubscriptionId, Topic};
pub use content::{
    AttachmentKey, AttachmentPointer, Content, ContentError, Delete, Edit, GroupAction,
    GroupChange, MAX_REACTION_BYTES, Reaction, Text, kinds,
};
pub use cursor::{SyncCursor, Verdict};
pub use delivery::{Action, DeliveryStream, Entry, Live};
pub use discovery::{NodeId, NodeInfo, NodeRegistry, OVERLOADED_CPU, RegistryError, recommend};
pub use error::ErrorCode;
pub use group::{
    DEFAULT_GROUP_NAME, GroupOp, GroupRuleError, GroupSettings, GroupState, MAX_GROUP_NAME_CHARS,
    MemberInfo, Permission, Role, apply as apply_group_op, require_group,
};
pub use ids::{
    AttachmentId, ClientKey, ConversationId, DeviceAddress, DeviceId, IdError, InboxPos, MAX_ID,
    MessageId, UserId, Username,
};
pub use model::{
    Appended, AttachmentMeta, Conversation, ConversationKind, Credentials, Device, DeviceKeys,
    DeviceListRecord, DeviceMismatch, Direction, Envelope, InboxEntry, NewMessage, OneTimePrekey,
    PrekeyBundle, PushToken, ReceiptKind, ReceiptPosition, Recipient, SignedPrekey, TokenHash,
    User,
};
pub use people::{
    Block, DisplayName, PeopleError, Profile, ProfileUpdate, SearchCursor, SearchKey, SearchPrefix,
    StatusText,
};
pub use presence::{PresenceChange, PresenceConfig, PresenceTracker};
pub use push::{Notification, PushError, PushNotifier};
pub use store::{
    AccountStore, BlockStore, ChainLink, ConversationStore, HealthStore, KeyStore, MessageStore,
    MetaStore, ProfileStore, ReceiptStore, Store, StoreError, StoreResult,
};
pub use thread::{DEFAULT_MAX_ORPHANS, MessageView, Timeline};
pub use time::Timestamp;
pub use transport::{Transport, TransportError};
pub use typing::{MAX_TYPING_TTL, TypingTracker};
pub use unread::{ReadPosition, unread_count};
