//! Group administration (issue 17, item 4): names, roles and settings. The server enforces
//! the group rules (chat-core's `apply_group_op`: only admins add or remove others, anyone
//! may leave, the last admin leaving promotes the oldest member, at most 100 members); every
//! change is also announced to the members inside the encryption (a
//! [`GroupChange`](chat_core::GroupChange) message, reported to them as
//! [`Event::Message`](crate::Event::Message)).
//!
//! Not built yet: the changes are not signed with the account identity, so clients still
//! take the server's member list for who gets sender keys (docs/SECURITY.md, "Groups:
//! membership and roles").

use chat_core::{
    Content, Conversation, ConversationId, GroupAction, GroupChange, GroupSettings, MessageId,
    Role, UserId,
};
use hyper::Method;
use serde::Deserialize;
use serde_json::json;

use crate::client::Client;
use crate::error::Result;

/// A group as the server has it: its name, settings and members with their roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group's name.
    pub name: String,
    /// Who may add members and rename.
    pub settings: GroupSettings,
    /// Every member and their role, by user ID.
    pub members: Vec<(UserId, Role)>,
}

impl GroupInfo {
    /// The admins.
    pub fn admins(&self) -> impl Iterator<Item = UserId> + '_ {
        self.members
            .iter()
            .filter(|(_, r)| *r == Role::Admin)
            .map(|(u, _)| *u)
    }

    /// `user`'s role, if a member.
    pub fn role(&self, user: UserId) -> Option<Role> {
        self.members
            .iter()
            .find(|(u, _)| *u == user)
            .map(|(_, r)| *r)
    }
}

#[derive(Deserialize)]
struct MembersView {
    members: Vec<UserId>,
    #[serde(default)]
    roles: Option<Vec<RoleView>>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    settings: Option<GroupSettings>,
}

#[derive(Deserialize)]
struct RoleView {
    user_id: UserId,
    role: Role,
}

impl Client {
    /// Creates a group with this user (its only admin) and `members` (at most 100 in all),
    /// named `Group` under the default settings, and announces it to them (a
    /// [`GroupChange`](chat_core::GroupChange) message, which also hands them this device's
    /// sender key).
    pub async fn create_group(&self, members: &[UserId]) -> Result<ConversationId> {
        self.create(json!({ "members": members }), members, None)
            .await
    }

    /// Adds members to a group, all or none (`group_full` past the limit), and announces it.
    pub async fn add_members(&self, group: ConversationId, members: &[UserId]) -> Result<()> {
        self.inner
            .http
            .send(
                Method::POST,
                &format!("/v1/conversations/{group}/members"),
                Some(&json!({"members": members})),
            )
            .await?;
        self.inner.forget_devices(group);
        self.announce(group, GroupAction::Added, members, None)
            .await?;
        Ok(())
    }

    /// Removes a member and announces it to the others, or leaves (for this user, announced
    /// first). This device's next message to the group (the announcement) uses a new sender
    /// key that the removed member never gets.
    pub async fn remove_member(&self, group: ConversationId, user: UserId) -> Result<()> {
        let leaving = user == self.user();
        if leaving {
            self.announce(group, GroupAction::Left, &[user], None)
                .await?;
        }
        self.inner
            .http
            .send(
                Method::DELETE,
                &format!("/v1/conversations/{group}/members/{user}"),
                None::<&()>,
            )
            .await?;
        self.inner.forget_devices(group);
        if !leaving {
            self.announce(group, GroupAction::Removed, &[user], None)
                .await?;
        }
        Ok(())
    }

    /// Creates a group named `name` with this user (its only admin) and `members`, under
    /// `settings`, and announces it to them.
    pub async fn create_named_group(
        &self,
        name: &str,
        members: &[UserId],
        settings: GroupSettings,
    ) -> Result<ConversationId> {
        let body = json!({"members": members, "name": name, "settings": settings});
        self.create(body, members, Some(name)).await
    }

    async fn create(
        &self,
        body: serde_json::Value,
        members: &[UserId],
        name: Option<&str>,
    ) -> Result<ConversationId> {
        let c: Conversation = self
            .inner
            .http
            .call(Method::POST, "/v1/conversations/groups", Some(&body))
            .await?;
        self.remember(&c)?;
        self.announce(c.id, GroupAction::Created, members, name)
            .await?;
        Ok(c.id)
    }

    /// The group's name, settings and members with their roles.
    pub async fn group_info(&self, group: ConversationId) -> Result<GroupInfo> {
        let v: MembersView = self
            .inner
            .http
            .get(&format!("/v1/conversations/{group}/members"))
            .await?;
        let members = match v.roles {
            Some(roles) => roles.into_iter().map(|r| (r.user_id, r.role)).collect(),
            // A one-to-one conversation: both members, neither an admin.
            None => v.members.into_iter().map(|u| (u, Role::Member)).collect(),
        };
        Ok(GroupInfo {
            name: v.name.unwrap_or_default(),
            settings: v.settings.unwrap_or_default(),
            members,
        })
    }

    /// Leaves the group (announced first, while this user may still send to it). If this
    /// user was its last admin, the oldest member becomes one.
    pub async fn leave(&self, group: ConversationId) -> Result<()> {
        self.announce(group, GroupAction::Left, &[self.user()], None)
            .await?;
        self.inner
            .http
            .send(
                Method::POST,
                &format!("/v1/conversations/{group}/leave"),
                None::<&()>,
            )
            .await?;
        self.inner.forget_devices(group);
        Ok(())
    }

    /// Makes a member an admin (admins only), and announces it.
    pub async fn promote(&self, group: ConversationId, user: UserId) -> Result<()> {
        self.set_admin(group, user, true).await
    }

    /// Makes an admin a member again (admins only; never the last admin), and announces it.
    pub async fn demote(&self, group: ConversationId, user: UserId) -> Result<()> {
        self.set_admin(group, user, false).await
    }

    async fn set_admin(&self, group: ConversationId, user: UserId, admin: bool) -> Result<()> {
        let method = if admin { Method::PUT } else { Method::DELETE };
        self.inner
            .http
            .send(
                method,
                &format!("/v1/conversations/{group}/members/{user}/admin"),
                None::<&()>,
            )
            .await?;
        let action = if admin {
            GroupAction::Promoted
        } else {
            GroupAction::Demoted
        };
        self.announce(group, action, &[user], None).await?;
        Ok(())
    }

    /// Renames the group (1 to 128 characters; who may is in its settings), and announces it.
    pub async fn rename(&self, group: ConversationId, name: &str) -> Result<()> {
        self.inner
            .http
            .send(
                Method::PUT,
                &format!("/v1/conversations/{group}/name"),
                Some(&json!({ "name": name })),
            )
            .await?;
        self.announce(group, GroupAction::Renamed, &[], Some(name))
            .await?;
        Ok(())
    }

    /// Changes who may add members and rename (admins only), and announces it.
    pub async fn set_group_settings(
        &self,
        group: ConversationId,
        settings: GroupSettings,
    ) -> Result<()> {
        self.inner
            .http
            .send(
                Method::PUT,
                &format!("/v1/conversations/{group}/settings"),
                Some(&settings),
            )
            .await?;
        self.announce(group, GroupAction::SettingsChanged, &[], None)
            .await?;
        Ok(())
    }

    /// Sends a group change to the group's members, inside the encryption.
    pub(crate) async fn announce(
        &self,
        group: ConversationId,
        action: GroupAction,
        users: &[UserId],
        name: Option<&str>,
    ) -> Result<MessageId> {
        let change = Content::GroupChange(GroupChange {
            action,
            users: users.to_vec(),
            name: name.map(str::to_owned),
        });
        self.send(group, &change).await
    }
}
