//! The push boundary (R-PUSH-1): telling a gateway that an offline device has messages
//! waiting. A notification never carries plaintext (the server has none) or ciphertext.

use async_trait::async_trait;

use crate::ids::{ConversationId, DeviceAddress};
use crate::model::PushToken;

/// What a notifier is told about a device with waiting messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The offline device.
    pub device: DeviceAddress,
    /// Its registered push token.
    pub token: PushToken,
    /// The conversation of the newest waiting message.
    pub conversation: ConversationId,
    /// How many messages arrived since the last notification (bursts are coalesced).
    pub count: u32,
}

/// Why a notification was not delivered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The gateway refused the token; the registration should be dropped.
    #[error("push token rejected by the gateway")]
    TokenRejected,
    /// The gateway failed or timed out; the notifier may retry.
    #[error("push gateway unavailable: {0}")]
    Unavailable(String),
}

/// Sends notifications to a push gateway. Implementations must not block message delivery:
/// `notify` should enqueue and return.
#[async_trait]
pub trait PushNotifier: Send + Sync {
    /// Hands over one notification.
    async fn notify(&self, notification: Notification) -> Result<(), PushError>;
}
