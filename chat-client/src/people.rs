//! People (R-ACC-3, R-ACC-4): profiles, the directory and blocks, over the HTTP API.
//!
//! Blocking is enforced by the server for one-to-one conversations (docs/PROTOCOL.md
//! section 11). In groups both users stay members; this client hides the messages of users
//! it knows this user blocks: they are stored (the cursor moves on as usual) but not
//! reported as [`Event::Message`](crate::Event::Message) and left out of
//! [`Conversation::history`](crate::Conversation::history). The list is loaded by [`Client::blocks`] (call it once at start) and
//! kept up to date by [`Client::block`] and [`Client::unblock`].

use chat_core::{AttachmentId, DisplayName, StatusText, Timestamp, UserId};
use hyper::Method;
use serde::Deserialize;
use serde_json::json;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::wire;

/// A user's public profile as the server shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Profile {
    /// The user.
    pub user_id: UserId,
    /// Their unique username.
    pub username: String,
    /// The name they chose; `None` when they never set a profile.
    pub display_name: Option<String>,
    /// Their status text.
    pub status: Option<String>,
    /// Their avatar (an attachment).
    pub avatar: Option<AttachmentId>,
    /// When the profile last changed.
    pub updated_at: Option<Timestamp>,
}

impl Profile {
    /// The name to show: the display name, else the username.
    pub fn name(&self) -> &str {
        self.display_name.as_deref().unwrap_or(&self.username)
    }
}

/// One page of a directory search.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct UserPage {
    /// The profiles found, in folded-name order.
    pub users: Vec<Profile>,
    /// Pass to [`Client::search_users`] as `after` for the next page; `None` on the last.
    #[serde(default)]
    pub next: Option<String>,
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// This user's profile.
    pub async fn profile(&self) -> Result<Profile> {
        self.inner.http.get("/v1/profile").await
    }

    /// Replaces this user's profile; peers sharing a conversation get a
    /// [`Event::Profile`](crate::Event::Profile). The display name and status are checked
    /// here first with the server's rules ([`Error::Invalid`]).
    pub async fn set_profile(
        &self,
        display_name: &str,
        status: Option<&str>,
        avatar: Option<AttachmentId>,
    ) -> Result<Profile> {
        let name = DisplayName::new(display_name)
            .map_err(|e| Error::invalid_because("the display name", e))?;
        let status = match status.map(str::trim) {
            None | Some("") => None,
            Some(s) => {
                Some(StatusText::new(s).map_err(|e| Error::invalid_because("the status", e))?)
            }
        };
        let body = json!({"display_name": name, "status": status, "avatar": avatar});
        self.inner
            .http
            .call(Method::PUT, "/v1/profile", Some(&body))
            .await
    }

    /// The profile of a user who shares a conversation with this one (`not_found` for
    /// anyone else).
    pub async fn user_profile(&self, user: UserId) -> Result<Profile> {
        self.inner
            .http
            .get(&format!("/v1/users/{user}/profile"))
            .await
    }

    /// A page of the directory: users whose display name starts with `prefix`, ignoring
    /// case. `limit` is 1 to 50. Searches are rate-limited per account (the client waits
    /// and retries a few times, then reports `rate_limited`).
    pub async fn search_users(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<UserPage> {
        let mut path = format!("/v1/users/search?prefix={}&limit={limit}", encode(prefix));
        if let Some(after) = after {
            path.push_str(&format!("&after={}", encode(after)));
        }
        self.inner.http.get(&path).await
    }

    /// Blocks `user`: they can no longer open a 1:1 with this user, reach them in one, see
    /// their presence or fetch their keys; in groups this client hides their messages.
    pub async fn block(&self, user: UserId) -> Result<()> {
        self.inner
            .http
            .send(Method::POST, "/v1/blocks", Some(&json!({"user_id": user})))
            .await?;
        self.inner.set_blocked(user, true);
        Ok(())
    }

    /// Removes a block.
    pub async fn unblock(&self, user: UserId) -> Result<()> {
        self.inner
            .http
            .send(Method::DELETE, &format!("/v1/blocks/{user}"), None::<&()>)
            .await?;
        self.inner.set_blocked(user, false);
        Ok(())
    }

    /// The users this user blocks (by user ID); also refreshes the list this client hides
    /// group messages by.
    pub async fn blocks(&self) -> Result<Vec<UserId>> {
        let list: wire::Blocks = self.inner.http.get("/v1/blocks").await?;
        let users: Vec<UserId> = list.blocks.into_iter().map(|b| b.user_id).collect();
        self.inner.replace_blocked(&users);
        Ok(users)
    }
}

impl crate::client::Inner {
    /// Whether messages from `user` are hidden (this user blocks them).
    pub(crate) fn hides(&self, user: UserId) -> bool {
        self.blocked.lock().is_ok_and(|b| b.contains(&user))
    }

    fn set_blocked(&self, user: UserId, blocked: bool) {
        if let Ok(mut b) = self.blocked.lock() {
            if blocked {
                b.insert(user);
            } else {
                b.remove(&user);
            }
        }
    }

    fn replace_blocked(&self, users: &[UserId]) {
        if let Ok(mut b) = self.blocked.lock() {
            *b = users.iter().copied().collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("Zoë a&b"), "Zo%C3%AB%20a%26b");
        assert_eq!(encode("7.6a6f"), "7.6a6f");
    }
}
