//! An interactive terminal client: log in, list conversations, chat, see presence, typing
//! and receipts, set a display name, search the directory and block users.
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
    Client, ConnectionState, ConversationId, ErrorCode, Event, ReceiptKind, SqliteStore, UserId,
};
use tokio::io::{AsyncBufReadExt, BufReader};

const HELP: &str = "\
/list                  conversations
/open NAME             the one-to-one conversation with NAME (and their presence)
/group NAME NAME...    a new group with these users
/to ID                 switch to conversation ID and show its latest messages
/add NAME | /remove NAME   change the current group's members
/history               the current conversation's latest messages
/name NAME [| STATUS]  set your display name (and status)
/search PREFIX         find users by display name
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
            for id in client.conversations().await? {
                let members = client.members(id).await?;
                let mark = if Some(id) == *current { "*" } else { " " };
                println!("{mark} {id}: members {members:?}");
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
        Some("/search") => {
            let prefix = line
                .strip_prefix("/search")
                .unwrap_or_default()
                .trim_start();
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
    let all = client.history(id, None, 10_000)?;
    for m in all.iter().skip(all.len().saturating_sub(20)) {
        println!(
            "  [{}] {}: {}",
            m.id,
            names.of(m.sender.user),
            m.text().unwrap_or("<unsupported>")
        );
    }
    Ok(())
}

fn show(
    client: &Client,
    names: &Names,
    current: Option<ConversationId>,
    event: Event,
) -> Result<(), Box<dyn std::error::Error>> {
    match event {
        Event::Message(m) => {
            println!(
                "[{} #{}] {}: {}",
                m.conversation,
                m.id,
                names.of(m.sender.user),
                m.text().unwrap_or("<unsupported message>")
            );
            if Some(m.conversation) == current && m.sender.user != client.user() {
                client.send_receipt(m.conversation, ReceiptKind::Read, m.id)?;
            }
        }
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
            from,
            active: true,
            ..
        } => {
            println!("  [{conversation}] {} is typing…", names.of(from.user));
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
