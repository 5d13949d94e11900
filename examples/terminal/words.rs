//! Everything the client shows, in words: names instead of numbers, group changes as
//! sentences, errors and connection states as a person would say them.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chat::client::{
    CertificateError, Content, ConversationId, Error, ErrorCode, GroupAction, GroupChange, Limit,
    NetworkError, ResyncReason, TimelineItem, TlsError, UserId,
};

/// Display names of the users seen so far, kept fresh by profile events.
pub(crate) struct Names {
    me: UserId,
    names: HashMap<UserId, String>,
}

impl Names {
    /// No names yet; `me` is this user.
    pub(crate) fn new(me: UserId) -> Self {
        Self {
            me,
            names: HashMap::new(),
        }
    }

    /// `you` for this user, else the name: for sentences such as `alice added you`.
    pub(crate) fn who(&self, user: UserId) -> String {
        if user == self.me {
            "you".to_owned()
        } else {
            self.of(user)
        }
    }

    /// The name to show for `user` (learn it first with [`Names::missing`]).
    pub(crate) fn of(&self, user: UserId) -> String {
        self.names
            .get(&user)
            .cloned()
            .unwrap_or_else(|| format!("user {user}"))
    }

    /// Records a name.
    pub(crate) fn set(&mut self, user: UserId, name: String) {
        self.names.insert(user, name);
    }

    /// Which of `users` have no name yet.
    pub(crate) fn missing(&self, users: impl IntoIterator<Item = UserId>) -> BTreeSet<UserId> {
        users
            .into_iter()
            .filter(|u| !self.names.contains_key(u))
            .collect()
    }

    /// `alice`, `alice and bob`, `alice, you and carol`.
    pub(crate) fn list(&self, users: &[UserId]) -> String {
        let names: Vec<String> = users.iter().map(|u| self.who(*u)).collect();
        match names.as_slice() {
            [] => "nobody".to_owned(),
            [one] => one.clone(),
            [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
        }
    }
}

/// Every user a message mentions: its sender, the users of a group change, who reacted.
pub(crate) fn users_in(item: &TimelineItem) -> Vec<UserId> {
    let mut users = vec![item.view.sender];
    if let Some(Content::GroupChange(g)) = &item.view.content {
        users.extend(&g.users);
    }
    for reacted in item.view.reactions.values() {
        users.extend(reacted);
    }
    users
}

/// A group change as a sentence: `alice added carol`.
pub(crate) fn group_change(names: &Names, sender: UserId, change: &GroupChange) -> String {
    let who = names.who(sender);
    let users = names.list(&change.users);
    let mut line = match change.action {
        GroupAction::Created => format!("{who} created the group with {users}"),
        GroupAction::Added => format!("{who} added {users}"),
        GroupAction::Removed if change.users == [sender] => format!("{who} left the group"),
        GroupAction::Removed => format!("{who} removed {users}"),
        GroupAction::Left => format!("{who} left the group"),
        GroupAction::Promoted => format!("{who} made {users} admin"),
        GroupAction::Demoted => format!("{who} made {users} members again"),
        GroupAction::Renamed => format!("{who} renamed the group"),
        GroupAction::SettingsChanged => {
            format!("{who} changed who may add members and rename (/members)")
        }
        _ => format!("{who} changed the group ({users})"),
    };
    if let Some(name) = &change.name {
        line.push_str(&format!("; the group is called \u{201c}{name}\u{201d}"));
    }
    line
}

/// One message as shown: `#7 bob: hello`, `#8 * alice added carol`, `#9 bob sent a file ...`.
pub(crate) fn message(
    names: &Names,
    id: chat::client::MessageId,
    sender: UserId,
    content: Option<&Content>,
) -> String {
    let who = names.of(sender);
    match content {
        None => format!("#{id} (deleted)"),
        Some(Content::Text(t)) => match t.reply_to {
            Some(to) => format!("#{id} {who} (replying to #{to}): {}", t.body),
            None => format!("#{id} {who}: {}", t.body),
        },
        Some(Content::Attachment(a)) => format!(
            "#{id} {who} sent a file: {} ({}); /save {id} to keep it",
            a.name.as_deref().unwrap_or("unnamed"),
            size(a.size)
        ),
        Some(Content::GroupChange(g)) => format!("#{id} * {}", group_change(names, sender, g)),
        Some(Content::Edit(_) | Content::Delete(_) | Content::Reaction(_)) => {
            format!("#{id} {who} changed an earlier message")
        }
        Some(_) => format!("#{id} {who} sent a kind of message this client cannot show"),
    }
}

/// A message in its current state, with `(edited)` and reactions.
pub(crate) fn item(names: &Names, m: &TimelineItem) -> String {
    let mut line = message(names, m.id(), m.view.sender, m.view.content.as_ref());
    if m.is_edited() {
        line.push_str(" (edited)");
    }
    for (emoji, users) in &m.view.reactions {
        let users: Vec<UserId> = users.iter().copied().collect();
        line.push_str(&format!(" [{emoji} {}]", names.list(&users)));
    }
    line
}

/// `812 bytes`, `12.3 kB`, `4.5 MB`.
pub(crate) fn size(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes} bytes"),
        1_000..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", bytes as f64 / 1e6),
        _ => format!("{:.1} GB", bytes as f64 / 1e9),
    }
}

/// `3 s`, `1.2 s`, `2 minutes`.
pub(crate) fn duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 10.0 {
        format!("{secs:.1} s")
    } else if secs < 120.0 {
        format!("{} s", d.as_secs())
    } else if secs < 7200.0 {
        format!("{} minutes", d.as_secs() / 60)
    } else {
        format!("{} hours", d.as_secs() / 3600)
    }
}

/// An SDK error as a sentence.
pub(crate) fn error(e: &Error) -> String {
    match e {
        Error::Server { code, message } => match *code {
            ErrorCode::BadCredentials => "wrong username or password".to_owned(),
            ErrorCode::Forbidden => "the server does not allow that".to_owned(),
            ErrorCode::NotFound => "the server does not know it".to_owned(),
            ErrorCode::Conflict => "the name is taken".to_owned(),
            ErrorCode::Internal | ErrorCode::Unavailable | ErrorCode::ShuttingDown => {
                format!("the server cannot do it now ({message}); try again later")
            }
            _ => format!("the server refused ({code}): {message}"),
        },
        Error::Unauthorized => {
            "the server no longer accepts this device (it was signed out or removed)".to_owned()
        }
        Error::NotMember => "you are not a member of that conversation".to_owned(),
        Error::RateLimited { .. } => "too many requests; wait a moment and try again".to_owned(),
        Error::LimitExceeded(Limit::DevicesPerUser(n)) => {
            format!("this account has {n} devices, as many as allowed; remove one first")
        }
        Error::LimitExceeded(limit) => format!("not possible: {limit}"),
        Error::Network(n) => network(n),
        Error::Io { path, source } => format!("{}: {source}", path.display()),
        Error::Closed => "the client has stopped".to_owned(),
        other => other.to_string(),
    }
}

/// A network failure as a sentence, with what to do about the usual TLS mistakes.
fn network(n: &NetworkError) -> String {
    let what = format!("cannot reach the server securely: {n}");
    match n.tls() {
        Some(tls) if tls.to_string().contains("CaUsedAsEndEntity") => format!(
            "{what}. The server presents an authority's certificate as its own; it must serve \
             a certificate the authority signed (see docs/OPERATIONS.md)"
        ),
        Some(TlsError::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => format!("{what}. Use a name its certificate is for"),
        Some(TlsError::InvalidCertificate(_)) => format!(
            "{what}. If its certificate comes from a private authority, give that authority's \
             certificate with --ca-file PEM"
        ),
        _ if n.to_string().contains("invalid HTTP version") => {
            format!("cannot reach the server: {n} (does it use TLS? then give it as https://)")
        }
        _ => format!("cannot reach the server: {n}"),
    }
}

/// Why the server asked for a resync, in words.
pub(crate) fn resync(reason: ResyncReason) -> &'static str {
    match reason {
        ResyncReason::InboxTrimmed => {
            "the server no longer keeps the messages that arrived while this device was away \
             (they passed its retention)"
        }
        ResyncReason::CursorAhead => {
            "the server has lost recent messages (it was restored from a backup)"
        }
        _ => "the server cannot continue from where this device stopped",
    }
}

/// A conversation's title: the other person for a one-to-one conversation (`direct`, when
/// known), `group 5 (you, alice and bob)` for a group.
pub(crate) fn title(
    names: &Names,
    me: UserId,
    id: ConversationId,
    direct: Option<bool>,
    members: Option<&Vec<UserId>>,
) -> String {
    let others: Vec<UserId> = members
        .map(|m| m.iter().copied().filter(|u| *u != me).collect())
        .unwrap_or_default();
    // A conversation of unknown kind with one other member is most likely one-to-one.
    match (direct.unwrap_or(true), others.as_slice()) {
        (true, [other]) => names.of(*other),
        (_, []) => format!("conversation {id}"),
        (_, others) if others.len() > 4 => format!(
            "group {id} ({}, … and {} more)",
            names.list(&others[..3]).replace(" and ", ", "),
            others.len() - 3
        ),
        (_, others) => format!("group {id} (you, {})", names.list(others)),
    }
}
