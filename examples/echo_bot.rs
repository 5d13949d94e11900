//! A bot that answers every text message with the same text, in the same conversation.
//!
//! ```sh
//! cargo run -p chat-server &                      # a node on 127.0.0.1:8080
//! cargo run --example echo_bot -- --register http://127.0.0.1:8080 echo_bot 'a long password'
//! ```
//!
//! `--register` creates the account on the first run; without it the bot logs in to an
//! existing account (a new device). The bot keeps its keys, sessions and cursor in
//! `echo_bot.db` (or `--store PATH`): restarted, it resumes where it stopped and answers
//! nothing twice. For a node whose certificate comes from a private authority (or is
//! self-signed), pass the authority's certificate with `--ca-file PEM`.

use std::path::PathBuf;
use std::process::ExitCode;

use chat::client::{
    Client, ConnectionState, Credentials, ErrorCode, Event, ReceiptKind, Server, SqliteStore,
};
use clap::Parser;

/// A bot that echoes every text message it receives.
#[derive(Parser)]
#[command(name = "echo_bot")]
struct Args {
    /// The server: http://HOST:PORT, or https://HOST[:PORT] for TLS.
    server: String,
    /// The bot's username.
    username: String,
    /// The bot's password (needed only until the store holds a device).
    #[arg(env = "CHAT_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Create the account instead of logging in to an existing one.
    #[arg(long)]
    register: bool,
    /// The bot's store (keys, sessions, cursor).
    #[arg(long, value_name = "PATH", default_value = "echo_bot.db")]
    store: PathBuf,
    /// Trust the certificate authorities in this PEM file (instead of the web's) for an
    /// https:// server: a private authority, or a self-signed certificate.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let mut server = Server::parse(&args.server).map_err(|e| e.to_string())?;
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
        server = server
            .with_root_certificates(&pem)
            .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
    }
    let existed = args.store.exists();
    let store = SqliteStore::open(&args.store)
        .map_err(|e| format!("cannot open the store {}: {e}", args.store.display()))?;
    let resume = store.has_device().map_err(|e| e.to_string())?;
    let builder = Client::builder(server).store(store).device_name("echo bot");
    let bot = if resume {
        builder.open().await.map_err(|e| e.to_string())?
    } else {
        let password = args
            .password
            .as_deref()
            .ok_or("a password is needed to sign the bot in (argument or CHAT_PASSWORD)")?;
        let user = &args.username;
        let credentials = Credentials::new(user, password);
        let signed_in = if args.register {
            builder.register(&credentials).await
        } else {
            builder.login(&credentials).await
        };
        match signed_in {
            Ok(bot) => bot,
            Err(e) => {
                if !existed {
                    // Leave no empty store behind a failed sign-in.
                    let _ = std::fs::remove_file(&args.store);
                }
                return Err(match e.code() {
                    Some(ErrorCode::BadCredentials) => format!(
                        "wrong username or password for {user} (to create the account, add \
                         --register)"
                    ),
                    Some(ErrorCode::Conflict) => {
                        format!("the username {user} is taken (log in: drop --register)")
                    }
                    _ => format!("could not sign {user} in: {e}"),
                });
            }
        }
    };
    if !bot.is_linked().await.map_err(|e| e.to_string())? {
        // The account has a linked device already: this one must be added by it.
        let code = bot.link_code().await.map_err(|e| e.to_string())?;
        println!(
            "this device is not linked to {}'s account yet; on a linked device, run\n  \
             /link {}\nthe bot goes on once it is linked",
            args.username,
            code.as_str()
        );
        // The sealed account identity arrives once the linked device used the code.
        while !bot.finish_link().await.map_err(|e| e.to_string())? {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
    }
    println!("echo bot {} is running", args.username);
    let mut events = bot.events();
    while let Some(event) = events.next().await {
        match event {
            // Only other users' messages: echoing our own other devices would loop.
            Event::Message(m) if m.sender.user != bot.user() => {
                if let Some(text) = m.text() {
                    let chat = bot.conversation(m.conversation);
                    let _ = chat.send_receipt(ReceiptKind::Read, m.id);
                    match chat.send_text(text).await {
                        Ok(id) => println!(
                            "echoed message {} as {id} in conversation {}",
                            m.id, m.conversation
                        ),
                        Err(e) => println!("could not echo message {}: {e}", m.id),
                    }
                }
            }
            Event::Connection(ConnectionState::LoggedOut) => {
                eprintln!("the server refused this device's token (logged out or removed)");
                break;
            }
            Event::Connection(ConnectionState::Synced) => println!("connected, up to date"),
            Event::Connection(ConnectionState::Disconnected { reason, retry_in }) => println!(
                "connection lost ({reason}); trying again in {} ms",
                retry_in.as_millis()
            ),
            _ => {}
        }
    }
    Ok(())
}
