//! Sending: a message is encrypted for the conversation's trusted devices and written to
//! the outbox (with the ratchet state it advanced) before anything leaves the device; the
//! driver sends it, and repairs it when the server's device list differs from the one it was
//! encrypted for.

use std::collections::BTreeMap;

use chat_core::{
    ClientKey, Content, ConversationId, ConversationKind, DeviceAddress, ErrorCode, MessageId,
    Text, UserId,
};
use chat_crypto::IdentityPublic;
use tokio::sync::oneshot;

use crate::client::{Client, Inner};
use crate::driver::Command;
use crate::e2e;
use crate::error::{Error, Result};
use crate::store::{OutboxEntry, Write};
use crate::wire;

impl Client {
    /// Sends a text message; returns its ID once the server has stored it.
    ///
    /// Encrypted for every device of every member and this user's other devices; sessions
    /// are set up on first use and the device list is repaired when the server says it is
    /// stale. The message is in the local outbox before it leaves the device, so it is sent
    /// even if the app restarts first (then [`Event::Sent`] reports it).
    pub(crate) async fn send_text(
        &self,
        conversation: ConversationId,
        text: &str,
    ) -> Result<MessageId> {
        let content = Content::Text(Text {
            body: text.to_owned(),
            reply_to: None,
        });
        self.send(conversation, &content).await
    }

    /// Sends any content (see [`send_text`](Self::send_text)).
    pub(crate) async fn send(
        &self,
        conversation: ConversationId,
        content: &Content,
    ) -> Result<MessageId> {
        let client_key = e2e::random_client_key();
        // Registered first: a reconnect may send the entry as soon as it is in the outbox.
        let (tx, rx) = oneshot::channel();
        self.inner
            .waiters
            .lock()
            .map_err(|_| Error::Closed)?
            .insert(client_key, tx);
        if let Err(e) = self.queue_with(client_key, conversation, content).await {
            self.inner.finish(client_key, Err(Error::Closed));
            return Err(e);
        }
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Encrypts a text message into the outbox and returns at once with its client key. The
    /// client sends it now or after a reconnect or restart, and reports [`Event::Sent`] (or
    /// [`Event::SendFailed`]) with that key.
    pub(crate) async fn queue_text(
        &self,
        conversation: ConversationId,
        text: &str,
    ) -> Result<ClientKey> {
        let content = Content::Text(Text {
            body: text.to_owned(),
            reply_to: None,
        });
        let client_key = e2e::random_client_key();
        self.queue_with(client_key, conversation, &content).await?;
        Ok(client_key)
    }

    async fn queue_with(
        &self,
        client_key: ClientKey,
        conversation: ConversationId,
        content: &Content,
    ) -> Result<()> {
        // A relation (or reply) also names its target by the target's client key, which
        // receivers check: the server's message IDs alone could aim it at another message.
        let target = match content {
            Content::Text(t) => t.reply_to,
            other => other.target(),
        };
        let target_key = match target {
            Some(id) => self
                .inner
                .store
                .message(conversation, id)?
                .map(|m| m.client_key),
            None => None,
        };
        let plaintext = match target_key {
            Some(key) => content.encode_with_target_key(key)?,
            None => content.encode()?,
        };
        self.inner
            .encrypt(client_key, conversation, plaintext)
            .await?;
        self.inner
            .commands
            .send(Command::Send(client_key))
            .map_err(|_| Error::Closed)
    }
}

impl Inner {
    async fn bundles(&self, user: UserId) -> Result<wire::Bundles> {
        self.http.get(&format!("/v1/users/{user}/bundles")).await
    }

    /// The devices a send to `conversation` must cover (every member device but this one).
    async fn devices(&self, conversation: ConversationId) -> Result<Vec<DeviceAddress>> {
        // Kept in the store, so messages can be written offline after a restart too.
        if let Some(d) = self.store.conversation_devices(conversation)? {
            return Ok(d);
        }
        let v: wire::Devices = self
            .http
            .get(&format!("/v1/conversations/{conversation}/devices"))
            .await?;
        let list: Vec<_> = v.devices.into_iter().filter(|d| *d != self.me).collect();
        self.store
            .commit(vec![Write::ConversationDevices {
                conversation,
                devices: Some(list.clone()),
            }])
            .await?;
        Ok(list)
    }

    /// Fetches bundles and starts sessions for the trusted devices that have no session with
    /// the identity they are trusted with. A bundle with another identity is refused.
    async fn ensure_sessions(
        &self,
        trusted: &BTreeMap<DeviceAddress, IdentityPublic>,
    ) -> Result<()> {
        let missing = self.crypto.without_session(trusted)?;
        if missing.is_empty() {
            return Ok(());
        }
        let mut users: Vec<UserId> = missing.iter().map(|d| d.user).collect();
        users.sort_unstable();
        users.dedup();
        let wanted: BTreeMap<_, _> = trusted
            .iter()
            .filter(|(d, _)| missing.contains(d))
            .map(|(d, i)| (*d, *i))
            .collect();
        // A few users at a time: a group's first message may need 99 directories.
        for chunk in users.chunks(16) {
            let fetched = futures::future::join_all(chunk.iter().map(|u| self.bundles(*u))).await;
            let mut bundles = Vec::new();
            for f in fetched {
                match f {
                    Ok(b) => bundles.extend(b.bundles),
                    // A user deleted in the meantime: the server's device check says so.
                    Err(Error::Server {
                        code: ErrorCode::NotFound,
                        ..
                    }) => {}
                    Err(e) => return Err(e),
                }
            }
            for device in self.crypto.add_bundles(&bundles, &wanted).await? {
                self.refuse(device);
            }
        }
        Ok(())
    }

    /// Encrypts for the conversation's devices and commits the outbox entry.
    async fn encrypt(
        &self,
        client_key: ClientKey,
        conversation: ConversationId,
        plaintext: Vec<u8>,
    ) -> Result<OutboxEntry> {
        if !self.linked()? {
            return Err(Error::NotLinked);
        }
        let kind = self.kind(conversation).await?;
        let cached = self.store.conversation_devices(conversation)?.is_some();
        // Only devices on the trusted device lists of their users: the server's list may
        // name devices it invented (refused and reported).
        let mut recipients = self
            .trusted_recipients(&self.devices(conversation).await?)
            .await?;
        if kind == ConversationKind::Group {
            // And only the verified members' devices: the server may list a member no
            // signed change added. The group's new changes are fetched whenever its
            // devices are.
            self.verified_recipients(conversation, &mut recipients, !cached)
                .await?;
        }
        let crate::trust::Recipients {
            trusted,
            unreadable,
        } = recipients;
        let devices: Vec<DeviceAddress> = trusted.keys().copied().collect();
        match kind {
            ConversationKind::Group => {
                let holders = self
                    .store
                    .sender_key(conversation)?
                    .map(|(_, h)| h)
                    .unwrap_or_default();
                let need: BTreeMap<_, _> = trusted
                    .iter()
                    .filter(|(d, _)| !holders.contains(d))
                    .map(|(d, i)| (*d, *i))
                    .collect();
                self.ensure_sessions(&need).await?;
                self.crypto
                    .encrypt_group(client_key, conversation, &devices, &unreadable, plaintext)
                    .await
            }
            ConversationKind::Direct => {
                self.ensure_sessions(&trusted).await?;
                self.crypto
                    .encrypt_direct(client_key, conversation, &devices, &unreadable, plaintext)
                    .await
            }
        }
    }

    /// Makes an outbox entry match the server's device list, then queues it again. Devices
    /// the server reports missing are encrypted to only if their users' trusted device lists
    /// name them (fetched again); the others get an empty header.
    pub(crate) async fn repair(
        &self,
        entry: &OutboxEntry,
        missing: Vec<DeviceAddress>,
        extra: Vec<DeviceAddress>,
    ) -> Result<()> {
        let mut recipients = self.trusted_recipients(&missing).await?;
        if self.kind(entry.conversation).await? == ConversationKind::Group {
            self.verified_recipients(entry.conversation, &mut recipients, true)
                .await?;
        }
        let crate::trust::Recipients {
            trusted,
            unreadable,
        } = recipients;
        let missing: Vec<DeviceAddress> = trusted.keys().copied().collect();
        // Devices gone from the server's list: their users' signed lists say whether they
        // were removed (reported as a device list change).
        let gone: std::collections::BTreeSet<UserId> = extra.iter().map(|d| d.user).collect();
        for user in gone {
            match self.trust_of(user, true).await {
                Ok(_) | Err(Error::NoDeviceList(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(mut list) = self.store.conversation_devices(entry.conversation)? {
            list.retain(|d| !extra.contains(d));
            list.extend(
                missing
                    .iter()
                    .filter(|d| **d != self.me && !list.contains(d))
                    .copied()
                    .collect::<Vec<_>>(),
            );
            self.store
                .commit(vec![Write::ConversationDevices {
                    conversation: entry.conversation,
                    devices: Some(list),
                }])
                .await?;
        }
        self.ensure_sessions(&trusted).await?;
        self.crypto
            .repair(entry.client_key, &missing, &unreadable, &extra)
            .await
    }

    /// Reports the end of a send to its waiter, if one is still waiting.
    pub(crate) fn finish(&self, client_key: ClientKey, result: Result<MessageId>) {
        let waiter = self
            .waiters
            .lock()
            .ok()
            .and_then(|mut w| w.remove(&client_key));
        if let Some(w) = waiter {
            let _ = w.send(result);
        }
    }
}
