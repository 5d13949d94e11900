//! An interactive terminal client: log in, list conversations, chat, see presence, typing
//! and receipts.
//!
//! ```sh
//! cargo run -p chat-server &                      # a node on 127.0.0.1:8080
//! cargo run --example terminal -- http://127.0.0.1:8080 alice 'a long password'
//! ```
//!
//! The first run logs in a new device (registering the user if it does not exist); its state
//! is kept in `USERNAME.chat.db` (or the path in a fourth argument) and later runs resume it.
//! Type `/help` for the commands; any other line is sent to the current conversation.

use std::sync::Arc;

use chat::client::ClientStore as _;
use chat::client::{
    Client, ConnectionState, ConversationId, ErrorCode, Event, ReceiptKind, SqliteStore,
};
use tokio::io::{AsyncBufReadExt, BufReader};

const HELP: &str = "\
/list                  conversations
/open NAME             the one-to-one conversation with NAME (and their presence)
/group NAME NAME...    a new group with these users
/to ID                 switch to conversation ID and show its latest messages
/add NAME | /remove NAME   change the current group's members
/history               the current conversation's latest messages
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
                match command(&client, &mut current, line.trim()).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => println!("! {e}"),
                }
            }
            event = events.next() => {
                let Some(event) = event else { break };
                show(&client, current, event)?;
            }
        }
    }
    Ok(())
}

/// Runs one input line; `false` to quit.
async fn command(
    client: &Arc<Client>,
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
            *current = Some(id);
            println!("now in conversation {id} with {name}");
            history(client, id)?;
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
            history(client, id)?;
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
        Some("/history") => history(client, current.ok_or("no current conversation")?)?,
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

fn history(client: &Client, id: ConversationId) -> Result<(), Box<dyn std::error::Error>> {
    let all = client.history(id, None, 10_000)?;
    for m in all.iter().skip(all.len().saturating_sub(20)) {
        println!(
            "  [{}] user {}: {}",
            m.id,
            m.sender.user,
            m.text().unwrap_or("<unsupported>")
        );
    }
    Ok(())
}

fn show(
    client: &Client,
    current: Option<ConversationId>,
    event: Event,
) -> Result<(), Box<dyn std::error::Error>> {
    match event {
        Event::Message(m) => {
            println!(
                "[{} #{}] user {}: {}",
                m.conversation,
                m.id,
                m.sender.user,
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
            println!("  [{conversation}] user {user}: {kind:?} up to #{up_to}");
        }
        Event::Typing {
            conversation,
            from,
            active: true,
            ..
        } => {
            println!("  [{conversation}] user {} is typing…", from.user);
        }
        Event::Presence { user, online, .. } => {
            println!(
                "  user {user} is {}",
                if online { "online" } else { "offline" }
            );
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
