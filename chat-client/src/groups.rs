//! Groups (issue 17): names, roles, settings, and a membership the server cannot rewrite.
//!
//! Every change to a group (create, add, remove, leave, promote, demote, rename, settings) is
//! a chat-crypto [`SignedGroupChange`] signed with this user's account identity and posted to
//! the server, which checks it and appends it to the group's chain. Each device keeps the
//! [`VerifiedGroup`] it built from that chain, fetching the new changes when a group change
//! is announced, before it signs one, and whenever it reads the group's devices again, and
//! verifying each under its actor's trusted account key and the group rules (chat-core's
//! `apply_group_op`: only admins add or remove others, anyone may leave, the last admin
//! leaving promotes the oldest member, at most 100 members). Every accepted change is
//! reported as [`Event::GroupChanged`]; a refused one as [`Event::GroupChangeRefused`].
//!
//! Sender keys go only to the verified members' devices: a user the server lists without a
//! verified change adding them gets an empty header and no key, and is reported
//! ([`Event::GroupMemberUnverified`]). Each change is also announced to the members inside
//! the encryption (a [`GroupChange`] message, reported as [`Event::Message`]), which is what
//! tells their devices to fetch the chain.

use chat_core::{
    Content, Conversation, ConversationId, DEFAULT_GROUP_NAME, DeviceAddress, ErrorCode,
    GroupAction, GroupChange, GroupOp, GroupSettings, MessageId, Role, UserId,
};
use chat_crypto::{AccountKey, ChainError, SignedGroupChange, StateHash, VerifiedGroup};
use hyper::Method;
use serde_json::json;

use crate::client::{Client, Inner};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::store::Write;
use crate::trust::Recipients;
use crate::wire;

/// Changes asked for per page of a group's chain.
const CHANGES_PAGE: usize = 100;

/// How often a change that lost a race with a concurrent one is signed again on the new
/// state before the call gives up.
const REBASES: usize = 3;

/// A group's name, settings and members with their roles.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupInfo {
    /// The group's name.
    pub name: String,
    /// Who may add members and rename.
    pub settings: GroupSettings,
    /// Every member and their role, by user ID.
    pub members: Vec<(UserId, Role)>,
    /// Whether this is the state this device verified from the group's signed changes
    /// (`true`), or only what the server says (`false`: a group with no signed changes,
    /// made before them, or whose changes do not verify; nobody gets this device's keys
    /// for it).
    pub verified: bool,
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

impl Client {
    /// Creates a group with this user (its only admin) and `members` (at most 100 in all),
    /// named `Group` under the default settings, and announces it to them (a
    /// [`GroupChange`] message, which also hands them this device's sender key).
    pub async fn create_group(&self, members: &[UserId]) -> Result<ConversationId> {
        self.create(None, members, GroupSettings::default()).await
    }

    /// Creates a group named `name` with this user (its only admin) and `members`, under
    /// `settings`, and announces it to them.
    pub async fn create_named_group(
        &self,
        name: &str,
        members: &[UserId],
        settings: GroupSettings,
    ) -> Result<ConversationId> {
        self.create(Some(name), members, settings).await
    }

    async fn create(
        &self,
        name: Option<&str>,
        members: &[UserId],
        settings: GroupSettings,
    ) -> Result<ConversationId> {
        let body = match name {
            Some(name) => json!({"members": members, "name": name, "settings": settings}),
            None => json!({ "members": members }),
        };
        let c: Conversation = self
            .inner
            .http
            .call(Method::POST, "/v1/conversations/groups", Some(&body))
            .await?;
        self.remember(&c).await?;
        // The signed creation names the members as the server ordered them (by user ID,
        // once each, without the creator), so that both reach the same state.
        let mut others: Vec<UserId> = members
            .iter()
            .copied()
            .filter(|u| *u != self.user())
            .collect();
        others.sort_unstable();
        others.dedup();
        let create = GroupOp::Create {
            name: name.unwrap_or(DEFAULT_GROUP_NAME).to_owned(),
            members: others,
            settings,
        };
        self.inner.change_group(c.id, create).await?;
        self.announce(c.id, GroupAction::Created, members, name)
            .await?;
        Ok(c.id)
    }

    /// Adds members to a group, all or none (`group_full` past the limit), and announces it.
    /// Users already members are skipped.
    pub(crate) async fn add_members(
        &self,
        group: ConversationId,
        members: &[UserId],
    ) -> Result<()> {
        let current = self.inner.require_verified(group).await?;
        let mut new: Vec<UserId> = members
            .iter()
            .copied()
            .filter(|u| !current.state().is_member(*u))
            .collect();
        new.sort_unstable();
        new.dedup();
        if new.is_empty() {
            return Ok(());
        }
        self.inner.change_group(group, GroupOp::Add(new)).await?;
        self.inner.forget_devices(group).await;
        self.announce(group, GroupAction::Added, members, None)
            .await?;
        Ok(())
    }

    /// Removes a member (admins only) and announces it to the others, or leaves (for this
    /// user). This device's next message to the group (the announcement) uses a new sender
    /// key that the removed member never gets.
    pub(crate) async fn remove_member(&self, group: ConversationId, user: UserId) -> Result<()> {
        if user == self.user() {
            return self.leave(group).await;
        }
        self.inner
            .change_group(group, GroupOp::Remove(user))
            .await?;
        self.inner.forget_devices(group).await;
        self.announce(group, GroupAction::Removed, &[user], None)
            .await?;
        Ok(())
    }

    /// The group's name, settings and members with their roles: the state this device
    /// verified from the group's signed changes, or the server's word for a group without
    /// them ([`GroupInfo::verified`] says which). For a one-to-one conversation, both
    /// members, neither an admin.
    pub(crate) async fn group_info(&self, group: ConversationId) -> Result<GroupInfo> {
        let v: wire::Members = self
            .inner
            .http
            .get(&format!("/v1/conversations/{group}/members"))
            .await?;
        let Some(roles) = v.roles else {
            return Ok(GroupInfo {
                name: String::new(),
                settings: GroupSettings::default(),
                members: v.members.into_iter().map(|u| (u, Role::Member)).collect(),
                verified: false,
            });
        };
        if let Some(verified) = self.inner.sync_group(group).await? {
            let state = verified.state();
            return Ok(GroupInfo {
                name: state.name().to_owned(),
                settings: state.settings(),
                members: state.members().map(|(u, m)| (u, m.role)).collect(),
                verified: true,
            });
        }
        Ok(GroupInfo {
            name: v.name.unwrap_or_default(),
            settings: v.settings.unwrap_or_default(),
            members: roles.into_iter().map(|r| (r.user_id, r.role)).collect(),
            verified: false,
        })
    }

    /// Leaves the group (announced first, while this user may still send to it). If this
    /// user was its last admin, the oldest member becomes one.
    pub(crate) async fn leave(&self, group: ConversationId) -> Result<()> {
        self.announce(group, GroupAction::Left, &[self.user()], None)
            .await?;
        self.inner.change_group(group, GroupOp::Leave).await?;
        self.inner.forget_devices(group).await;
        Ok(())
    }

    /// Makes a member an admin (admins only), and announces it.
    pub(crate) async fn promote(&self, group: ConversationId, user: UserId) -> Result<()> {
        self.inner
            .change_group(group, GroupOp::Promote(user))
            .await?;
        self.announce(group, GroupAction::Promoted, &[user], None)
            .await?;
        Ok(())
    }

    /// Makes an admin a member again (admins only; never the last admin), and announces it.
    pub(crate) async fn demote(&self, group: ConversationId, user: UserId) -> Result<()> {
        self.inner
            .change_group(group, GroupOp::Demote(user))
            .await?;
        self.announce(group, GroupAction::Demoted, &[user], None)
            .await?;
        Ok(())
    }

    /// Renames the group (1 to 128 characters; who may is in its settings), and announces it.
    pub(crate) async fn rename(&self, group: ConversationId, name: &str) -> Result<()> {
        self.inner
            .change_group(group, GroupOp::Rename(name.to_owned()))
            .await?;
        self.announce(group, GroupAction::Renamed, &[], Some(name))
            .await?;
        Ok(())
    }

    /// Changes who may add members and rename (admins only), and announces it.
    pub(crate) async fn set_group_settings(
        &self,
        group: ConversationId,
        settings: GroupSettings,
    ) -> Result<()> {
        self.inner
            .change_group(group, GroupOp::ChangeSettings(settings))
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

impl Inner {
    /// Signs `op` on the group's current verified state and posts it; a change that lost a
    /// race with a concurrent one (`conflict`) is signed again on the new state, if the rules
    /// still allow it there. Once the server took it, it is applied here as any other change
    /// (verified, stored, reported).
    pub(crate) async fn change_group(&self, group: ConversationId, op: GroupOp) -> Result<()> {
        let mut attempt = 0;
        let (current, change) = loop {
            let current = match op {
                GroupOp::Create { .. } => None,
                _ => Some(self.require_verified(group).await?),
            };
            let parent = current
                .as_ref()
                .map_or(StateHash::GENESIS, VerifiedGroup::hash);
            let change = self.crypto.with_account_identity(|identity| {
                SignedGroupChange::sign(
                    identity.signing_key(),
                    group,
                    parent,
                    self.me.user,
                    op.clone(),
                )
            })?;
            let body = json!({ "change": hex::encode(change.encode()) });
            let path = format!("/v1/conversations/{group}/changes");
            match self.http.send(Method::POST, &path, Some(&body)).await {
                Ok(()) => break (current, change),
                Err(e) if e.code() == Some(ErrorCode::Conflict) && attempt < REBASES => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        // Applied here rather than fetched back: after leaving, the chain is not this
        // user's to read any more.
        let key = self.crypto.account_key()?;
        let keys = |user: UserId| {
            key.as_ref()
                .filter(|_| user == self.me.user)
                .map(AccountKey::verifying_key)
        };
        let next = match &current {
            None => VerifiedGroup::create(&change, &keys)?,
            Some(state) => state.apply(&change, &keys)?,
        };
        let _one = self.group_sync.lock().await;
        let stored = self.stored_group(group)?;
        // Unless a fetch in the meantime went past it.
        if stored.as_ref().map(VerifiedGroup::hash) == current.as_ref().map(VerifiedGroup::hash) {
            self.store
                .commit(vec![Write::VerifiedGroup {
                    conversation: group,
                    pickle: next.pickle(),
                }])
                .await?;
            self.emit(Event::GroupChanged {
                conversation: group,
                actor: self.me.user,
                op,
            });
        }
        Ok(())
    }

    /// The group's verified state after the server's newest changes, or why there is none.
    async fn require_verified(&self, group: ConversationId) -> Result<VerifiedGroup> {
        self.sync_group(group)
            .await?
            .ok_or(Error::GroupChain(ChainError::NoCreation))
    }

    /// The group state this device verified, as stored.
    fn stored_group(&self, group: ConversationId) -> Result<Option<VerifiedGroup>> {
        self.store
            .verified_group(group)?
            .map(|pickle| {
                VerifiedGroup::unpickle(&pickle)
                    .map_err(|_| crate::StoreError::Corrupt("group state").into())
            })
            .transpose()
    }

    /// Fetches the group's changes after the verified state and applies each that verifies,
    /// in the server's order, stopping at the first refused one (every later change names a
    /// state this device does not have). The new state is stored before its changes are
    /// reported. `None` for a group with no change that verifies.
    pub(crate) async fn sync_group(&self, group: ConversationId) -> Result<Option<VerifiedGroup>> {
        let _one = self.group_sync.lock().await;
        let stored = self.stored_group(group)?;
        let mut state = stored.clone();
        let mut events = Vec::new();
        let fetched = self.apply_new_changes(group, &mut state, &mut events).await;
        if state != stored
            && let Some(verified) = &state
        {
            self.store
                .commit(vec![Write::VerifiedGroup {
                    conversation: group,
                    pickle: verified.pickle(),
                }])
                .await?;
        }
        for event in events {
            self.emit(event);
        }
        fetched.map(|()| state)
    }

    async fn apply_new_changes(
        &self,
        group: ConversationId,
        state: &mut Option<VerifiedGroup>,
        events: &mut Vec<Event>,
    ) -> Result<()> {
        loop {
            let after = state.as_ref().map_or(0, VerifiedGroup::epoch);
            let page: wire::Changes = self
                .http
                .get(&format!(
                    "/v1/conversations/{group}/changes?after={after}&limit={CHANGES_PAGE}"
                ))
                .await?;
            let full = page.changes.len() >= CHANGES_PAGE;
            for view in page.changes {
                match self
                    .verify_change(group, state.as_ref(), &view.change)
                    .await?
                {
                    Ok((change, next)) => {
                        events.push(Event::GroupChanged {
                            conversation: group,
                            actor: change.actor(),
                            op: change.op().clone(),
                        });
                        *state = Some(next);
                    }
                    Err(reason) => {
                        if self.first_report(group, Report::Refused(view.change)) {
                            tracing::warn!(%group, cause = %reason, "refused a group change");
                            events.push(Event::GroupChangeRefused {
                                conversation: group,
                                reason,
                            });
                        }
                        return Ok(());
                    }
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// One change from the server, verified on `state` (`None`: it must be the creation)
    /// under its actor's trusted account key, fetched again once if it does not verify (the
    /// actor's account may have changed). The outer error is this device's failure (network,
    /// store); the inner one is the change's.
    async fn verify_change(
        &self,
        group: ConversationId,
        state: Option<&VerifiedGroup>,
        hex_change: &str,
    ) -> Result<std::result::Result<(SignedGroupChange, VerifiedGroup), ChainError>> {
        let Ok(bytes) = hex::decode(hex_change) else {
            return Ok(Err(ChainError::Malformed(chat_crypto::Error::Malformed(
                "group change",
            ))));
        };
        let change = match SignedGroupChange::decode(&bytes) {
            Ok(change) => change,
            Err(e) => return Ok(Err(e)),
        };
        if change.group() != group {
            return Ok(Err(ChainError::WrongGroup));
        }
        let mut result = Err(ChainError::UnknownAccount(change.actor()));
        for refresh in [false, true] {
            let key = self.account_key_of(change.actor(), refresh).await?;
            let keys = |user: UserId| {
                key.as_ref()
                    .filter(|_| user == change.actor())
                    .map(AccountKey::verifying_key)
            };
            result = match state {
                None => VerifiedGroup::create(&change, &keys),
                Some(state) => state.apply(&change, &keys),
            };
            if !matches!(
                result,
                Err(ChainError::BadSignature | ChainError::UnknownAccount(_))
            ) {
                break;
            }
        }
        Ok(result.map(|next| (change, next)))
    }

    /// The account key this device trusts for `user`, if any.
    async fn account_key_of(&self, user: UserId, refresh: bool) -> Result<Option<AccountKey>> {
        match self.trust_of(user, refresh).await {
            Ok(record) => Ok(Some(record.list.account())),
            Err(Error::NoDeviceList(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Keeps in `recipients.trusted` only the devices of the group's verified members (after
    /// fetching its newest changes if `fetch`, or if this device has no state for it yet);
    /// the others move to `unreadable` (an empty header, no sender key) and their users are
    /// reported once.
    pub(crate) async fn verified_recipients(
        &self,
        group: ConversationId,
        recipients: &mut Recipients,
        fetch: bool,
    ) -> Result<()> {
        let state = match self.stored_group(group)? {
            Some(state) if !fetch => Some(state),
            _ => self.sync_group(group).await?,
        };
        let outsiders: Vec<DeviceAddress> = recipients
            .trusted
            .keys()
            .filter(|d| !state.as_ref().is_some_and(|s| s.state().is_member(d.user)))
            .copied()
            .collect();
        for device in outsiders {
            recipients.trusted.remove(&device);
            recipients.unreadable.push(device);
            if self.first_report(group, Report::Unverified(device.user)) {
                tracing::warn!(%group, user = %device.user, "a group member no signed change added");
                self.emit(Event::GroupMemberUnverified {
                    conversation: group,
                    user: device.user,
                });
            }
        }
        Ok(())
    }

    /// Whether `report` about `group` is made for the first time by this client.
    fn first_report(&self, group: ConversationId, report: Report) -> bool {
        self.group_reports
            .lock()
            .map(|mut r| r.insert((group, report)))
            .unwrap_or(true)
    }
}

/// Something reported once per group and client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Report {
    /// A refused change, as the server served it.
    Refused(String),
    /// A user the server lists whom no verified change added.
    Unverified(UserId),
}
