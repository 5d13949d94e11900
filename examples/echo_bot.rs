//! A bot that answers every text message with the same text, in the same conversation.
//!
//! ```sh
//! cargo run -p chat-server &                      # a node on 127.0.0.1:8080
//! cargo run --example echo_bot -- http://127.0.0.1:8080 echo_bot 'a long password'
//! ```
//!
//! The bot keeps its keys, sessions and cursor in `echo_bot.db` (or the path in a fourth
//! argument): restarted, it resumes where it stopped and answers nothing twice.

use chat::client::ClientStore as _;
use chat::client::{Client, ConnectionState, Event, SqliteStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, username, password, rest @ ..] = args.as_slice() else {
        eprintln!("usage: echo_bot SERVER USERNAME PASSWORD [STORE]");
        std::process::exit(2);
    };
    let path = rest.first().map_or("echo_bot.db", String::as_str);
    let store = SqliteStore::open(path)?;
    let bot = if store.device()?.is_some() {
        Client::open(server, store).await?
    } else {
        match Client::register(server, username, password, "echo bot", store).await {
            Ok(bot) => bot,
            // Registered before with another store: log in a new device.
            Err(e) if e.code() == Some(chat::client::ErrorCode::Conflict) => {
                Client::login(
                    server,
                    username,
                    password,
                    "echo bot",
                    SqliteStore::open(path)?,
                )
                .await?
            }
            Err(e) => return Err(e.into()),
        }
    };
    println!("echo bot {username} is user {}", bot.user());
    let mut events = bot.events();
    while let Some(event) = events.next().await {
        match event {
            // Only other users' messages: echoing our own other devices would loop.
            Event::Message(m) if m.sender.user != bot.user() => {
                if let Some(text) = m.text() {
                    bot.send_receipt(m.conversation, chat::client::ReceiptKind::Read, m.id)?;
                    let id = bot.send_text(m.conversation, text).await?;
                    println!(
                        "echoed message {} as {id} in conversation {}",
                        m.id, m.conversation
                    );
                }
            }
            Event::Connection(ConnectionState::LoggedOut) => {
                eprintln!("the server refused this device's token");
                break;
            }
            Event::Connection(state) => println!("connection: {state:?}"),
            _ => {}
        }
    }
    Ok(())
}
