//! An interactive terminal client: log in, list conversations with unread counts, chat,
//! reply, edit, delete and react, search your history, see presence, typing and receipts, set
//! a display name, find people and block users.
//!
//! ```sh
//! cargo run -p chat-server &                      # a node on 127.0.0.1:8080
//! cargo run --example terminal -- http://127.0.0.1:8080 alice 'a long password'
//! ```
//!
//! The first run logs in a new device (registering the user if it does not exist); its state
//! is kept in `USERNAME.chat.db` (or the path in a fourth argument) and later runs resume it.
//! Type `/help` for the commands; any other line is sent to the current conversation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chat::client::ClientStore as _;
use chat::client::{
    Client, ConnectionState, Content, ConversationId, ErrorCode, Event, MessageId, SearchPage,
    SqliteStore, TimelineItem, UserId,
};
use tokio::io::{AsyncBufReadExt, BufReader};

const HELP: &str = "\
/list                  conversations, newest first, with unread counts
/open NAME             the one-to-one conversation with NAME (and their presence)
/group NAME NAME...    a new group with these users
/to ID                 switch to conversation ID, show its latest messages, mark them read
/add NAME | /remove NAME   change the current group's members
/history               the current conversation's latest messages (edits, reactions applied)
/reply ID TEXT         reply to message ID
/edit ID TEXT          replace the text of your message ID
/delete ID             delete your message ID for everyone
/react ID EMOJI | /unreact ID EMOJI   add or take back a reaction
/search WORDS          search your messages (every word must occur)
/name NAME [| STATUS]  set your display name (and status)
/who PREFIX            find users by display name
/block NAME | /unblock NAME   block or unblock a user (by username)
/quit                  leave (the outbox is kept and sent on the next run)
anything else          sent to the current conversation";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, username, password, rest @ ..] = args.as_slice() else {
        eprintln!("usage: terminal SERVER USERNAME PASSWORD [STORE]");
        std::process::exit(2);
    };
    let path = rest
        .first()
        .cloned()
        .unwrap_or_else(|| format!("{username}.chat.db"));
    let store = SqliteStore::open(&path)?;
    let client = if store.device()?.is_some() {
        Client::open(server, store).await?
    } else {
        match Client::login(server, username, password, "terminal", store).await {
            Err(e) if e.code() == Some(ErrorCode::BadCredentials) => {
                println!("no such user or wrong password; registering {username}");
                Client::register(
                    server,
                    username,
                    password,
                    "terminal",
                    SqliteStore::open(&path)?,
                )
                .await?
            }
            other => other?,
        }
    };
    let client = Arc::new(client);
    // Loads the block list the client hides group messages by.
    client.blocks().await?;
    let names = Names::default();
    for id in client.conversations().await? {
        for user in client.members(id).await? {
            names.learn(&client, user).await;
        }
    }
    println!(
        "logged in as {username} (user {}); /help for commands",
        client.user()
    );
    let mut events = client.events();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut current: Option<ConversationId> = None;
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                match command(&client, &names, &mut current, line.trim()).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => println!("! {e}"),
                }
            }
            event = events.next() => {
                let Some(event) = event else { break };
                show(&client, &names, current, event)?;
            }
        }
    }
    Ok(())
}

/// Display names of the users seen so far, kept fresh by profile events.
#[derive(Default)]
struct Names(Mutex<HashMap<UserId, String>>);

impl Names {
    /// The name to show for `user`.
    fn of(&self, user: UserId) -> String {
        let known = self.0.lock().ok().and_then(|n| n.get(&user).cloned());
        known.unwrap_or_else(|| format!("user {user}"))
    }

    fn set(&self, user: UserId, name: String) {
        if let Ok(mut names) = self.0.lock() {
            names.insert(user, name);
        }
    }

    /// Fetches `user`'s profile (best effort: only contacts' profiles are visible).
    async fn learn(&self, client: &Client, user: UserId) {
        if let Ok(profile) = client.user_profile(user).await {
            self.set(user, profile.name().to_owned());
        }
    }
}

/// Runs one input line; `false` to quit.
async fn command(
    client: &Arc<Client>,
    names: &Names,
    current: &mut Option<ConversationId>,
    line: &str,
) -> Result<bool, Box<dyn std::error::Error>> {
    let mut words = line.split_whitespace();
    match words.next() {
        None => {}
        Some("/help") => println!("{HELP}"),
        Some("/quit") => return Ok(false),
        Some("/list") => {
            // Learns conversations started elsewhere, then lists the local view.
            client.conversations().await?;
            for c in client.conversation_list()? {
                let mark = if Some(c.id) == *current { "*" } else { " " };
                let unread = if c.unread > 0 {
                    format!(" ({} unread)", c.unread)
                } else {
                    String::new()
                };
                let last = c
                    .last
                    .as_ref()
                    .map(|m| format!(": {}: {}", names.of(m.view.sender), summary(m)))
                    .unwrap_or_default();
                println!("{mark} {} {:?}{unread}{last}", c.id, c.kind);
            }
        }
        Some("/open") => {
            let name = words.next().ok_or("/open NAME")?;
            let user = client.user_by_name(name).await?;
            let id = client.open_direct(user).await?;
            client.subscribe_presence(&[user])?;
            names.learn(client, user).await;
            *current = Some(id);
            println!("now in conversation {id} with {}", names.of(user));
            history(client, names, id)?;
        }
        Some("/group") => {
            let mut users = Vec::new();
            for name in words {
                users.push(client.user_by_name(name).await?);
            }
            let id = client.create_group(&users).await?;
            *current = Some(id);
            println!("created group {id}");
        }
        Some("/to") => {
            let id: ConversationId = words.next().ok_or("/to ID")?.parse()?;
            *current = Some(id);
            for user in client.members(id).await? {
                names.learn(client, user).await;
            }
            history(client, names, id)?;
        }
        Some(cmd @ ("/add" | "/remove")) => {
            let id = current.ok_or("no current conversation")?;
            let user = client
                .user_by_name(words.next().ok_or("/add NAME")?)
                .await?;
            if cmd == "/add" {
                client.add_members(id, &[user]).await?;
            } else {
                client.remove_member(id, user).await?;
            }
            println!("done");
        }
        Some("/history") => history(client, names, current.ok_or("no current conversation")?)?,
        Some(cmd @ ("/reply" | "/edit" | "/delete" | "/react" | "/unreact")) => {
            let id = current.ok_or("no current conversation")?;
            let target: MessageId = words.next().ok_or("which message? (its #ID)")?.parse()?;
            let rest = words.collect::<Vec<_>>().join(" ");
            let sent = match cmd {
                "/reply" => client.send_reply(id, target, &rest).await?,
                "/edit" => client.edit_message(id, target, &rest).await?,
                "/delete" => client.delete_message(id, target).await?,
                "/react" => client.react(id, target, &rest).await?,
                _ => client.unreact(id, target, &rest).await?,
            };
            println!("  (sent as {sent})");
        }
        Some("/search") => {
            let query = line
                .strip_prefix("/search")
                .unwrap_or_default()
                .trim_start();
            let results = client.search(query, SearchPage::first(20))?;
            for hit in &results.hits {
                println!("  [{} #{}] {}", hit.conversation, hit.message, hit.text);
            }
            if results.hits.is_empty() {
                println!("  nothing found");
            } else if results.next.is_some() {
                println!("  … more; add words to narrow it");
            }
        }
        Some("/name") => {
            let rest = line.strip_prefix("/name").unwrap_or_default();
            let (name, status) = match rest.split_once('|') {
                Some((name, status)) => (name, Some(status)),
                None => (rest, None),
            };
            let profile = client.set_profile(name, status, None).await?;
            names.set(client.user(), profile.name().to_owned());
            println!("you are now {}", profile.name());
        }
        Some("/who") => {
            let prefix = line.strip_prefix("/who").unwrap_or_default().trim_start();
            let page = client.search_users(prefix, None, 20).await?;
            for user in &page.users {
                let status = user.status.as_deref().unwrap_or("");
                println!(
                    "  {} (@{}, user {}) {status}",
                    user.name(),
                    user.username,
                    user.user_id
                );
            }
            if page.users.is_empty() {
                println!("  nobody found");
            } else if page.next.is_some() {
                println!("  … more; type more letters");
            }
        }
        Some(cmd @ ("/block" | "/unblock")) => {
            let user = client
                .user_by_name(words.next().ok_or("/block NAME")?)
                .await?;
            if cmd == "/block" {
                client.block(user).await?;
            } else {
                client.unblock(user).await?;
            }
            println!("done");
        }
        Some(cmd) if cmd.starts_with('/') => println!("unknown command; /help"),
        Some(_) => {
            let id = current.ok_or("no current conversation: /open NAME first")?;
            let (client, text) = (client.clone(), line.to_owned());
            // Sending waits for the server's acknowledgement; keep the prompt responsive.
            tokio::spawn(async move {
                match client.send_text(id, &text).await {
                    Ok(mid) => println!("  (sent as {mid})"),
                    Err(e) => println!("! not sent: {e}"),
                }
            });
        }
    }
    Ok(true)
}

fn history(
    client: &Client,
    names: &Names,
    id: ConversationId,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut page = client.timeline(id, None, 20)?;
    page.reverse();
    for m in &page {
        println!("  {}", line_of(names, m));
    }
    if let Some(last) = page.last() {
        client.mark_read(id, last.id())?;
    }
    Ok(())
}

/// One message as a line: `[#ID] NAME: TEXT (edited) [👍 2]`, or a tombstone.
fn line_of(names: &Names, m: &TimelineItem) -> String {
    let mut line = format!("[#{}] {}: {}", m.id(), names.of(m.view.sender), summary(m));
    if m.is_edited() {
        line.push_str(" (edited)");
    }
    for (emoji, users) in &m.view.reactions {
        line.push_str(&format!(" [{emoji} {}]", users.len()));
    }
    line
}

/// What a message says, in a few words.
fn summary(m: &TimelineItem) -> String {
    match &m.view.content {
        None => "<deleted>".to_owned(),
        Some(Content::Text(t)) => match t.reply_to {
            Some(to) => format!("(re #{to}) {}", t.body),
            None => t.body.clone(),
        },
        Some(Content::Attachment(a)) => format!(
            "<file {} ({} bytes)>",
            a.name.as_deref().unwrap_or("unnamed"),
            a.size
        ),
        Some(Content::GroupChange(g)) => format!("<group: {:?} {:?}>", g.action, g.users),
        Some(_) => "<unsupported message>".to_owned(),
    }
}

fn show(
    client: &Client,
    names: &Names,
    current: Option<ConversationId>,
    event: Event,
) -> Result<(), Box<dyn std::error::Error>> {
    match event {
        Event::Message(m) => {
            let unread = client.unread_count(m.conversation)?;
            let text = match &m.content {
                Content::Text(t) => match t.reply_to {
                    Some(to) => format!("(re #{to}) {}", t.body),
                    None => t.body.clone(),
                },
                Content::Attachment(a) => format!("<file {}>", a.name.as_deref().unwrap_or("")),
                _ => "<unsupported message>".to_owned(),
            };
            println!(
                "[{} #{}] {}: {text}",
                m.conversation,
                m.id,
                names.of(m.sender.user),
            );
            if Some(m.conversation) == current && m.sender.user != client.user() {
                client.mark_read(m.conversation, m.id)?;
            } else if unread > 0 {
                println!("  ({unread} unread in {})", m.conversation);
            }
        }
        Event::Updated(m) => println!("  [{}] now: {}", m.conversation, line_of(names, &m)),
        Event::Receipt {
            conversation,
            user,
            kind,
            up_to,
        } if user != client.user() => {
            println!(
                "  [{conversation}] {}: {kind:?} up to #{up_to}",
                names.of(user)
            );
        }
        Event::Typing {
            conversation,
            users,
        } => {
            let who: Vec<String> = users.iter().map(|u| names.of(*u)).collect();
            if who.is_empty() {
                println!("  [{conversation}] (nobody typing)");
            } else {
                println!("  [{conversation}] {} typing…", who.join(", "));
            }
        }
        Event::ResyncRequired { reason } => {
            println!("! the server could not sync this device ({reason:?}); recovering history");
        }
        Event::Recovered { recovered, missed } => {
            println!(
                "  (recovered {recovered} messages; {} cannot be read on this device)",
                missed.len()
            );
        }
        Event::Presence { user, online, .. } => {
            println!(
                "  {} is {}",
                names.of(user),
                if online { "online" } else { "offline" }
            );
        }
        Event::Profile {
            user, display_name, ..
        } => {
            let before = names.of(user);
            names.set(user, display_name.clone());
            if user != client.user() && before != display_name {
                println!("  {before} is now called {display_name}");
            }
        }
        Event::IdentityChanged { device } => println!(
            "! user {} device {} has a new identity key; compare safety numbers",
            device.user, device.device
        ),
        Event::SendFailed { code, .. } => println!("! a message was refused: {}", code.name()),
        Event::Connection(ConnectionState::Synced) => println!("  (connected, up to date)"),
        Event::Connection(ConnectionState::Disconnected { reason, retry_in }) => {
            println!(
                "  (disconnected: {reason}; retrying in {} ms)",
                retry_in.as_millis()
            );
        }
        Event::Connection(ConnectionState::LoggedOut) => println!("! logged out by the server"),
        _ => {}
    }
    Ok(())
}
