//! The whole system in one process: a chat node on an embedded SQLite store, and two clients
//! that exchange end-to-end encrypted messages through it.
//!
//! ```sh
//! cargo run --example demo
//! ```

use std::process::ExitCode;
use std::time::Duration;

use chat::client::{Client, Credentials, Event, Events, ReceiptKind};
use chat::server::{Config, Server};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // A node on a fresh SQLite database in a temporary directory.
    let dir = std::env::temp_dir().join(format!("chat-demo-{}", std::process::id()));
    let db = dir.join("chat.db");
    let config = Config {
        listen: ([127, 0, 0, 1], 0).into(),
        store: format!("sqlite://{}", db.display()).into(),
        // Cheap password hashing so the demo starts at once; keep the defaults in production.
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
        ..Config::default()
    };
    let node = Server::bind(config).await?;
    let server = format!("http://{}", node.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(node.run_until(async {
        let _ = stopped.await;
    }));
    println!("node listening on {server}, store {}", db.display());

    // Two users, each with one device: keys are made and published on registration.
    // (Kept in memory here; an app gives `.store(SqliteStore::open(path)?)`.)
    let alice = Client::builder(&server)
        .device_name("laptop")
        .register(&Credentials::new("alice", "correct horse"))
        .await?;
    let bob = Client::builder(&server)
        .device_name("phone")
        .register(&Credentials::new("bob", "battery staple"))
        .await?;
    let (mut alice_events, mut bob_events) = (alice.events(), bob.events());
    let (a, b) = (alice.device(), bob.device());
    println!(
        "registered alice (user {}, device {}) and bob (user {}, device {})",
        a.user, a.device, b.user, b.device
    );

    let chat = alice.conversation(alice.open_direct(alice.user_by_name("bob").await?).await?);
    let number = alice.safety_number(bob.user()).await?;
    println!("safety number (compare it out of band): {number}");
    println!(
        "bob computes the same: {}",
        bob.safety_number(alice.user()).await? == number
    );
    alice.verify(bob.user()).await?;

    let id = chat.send_text("Hi Bob! Only you can read this.").await?;
    println!("alice -> bob: message {id} stored by the server (as ciphertext)");
    let m = next_text(&mut bob_events).await?;
    println!("bob decrypted message {}: \u{201c}{}\u{201d}", m.0, m.1);

    // The same conversation, as Bob's client sees it.
    let with_alice = bob.conversation(chat.id());
    with_alice.send_receipt(ReceiptKind::Read, m.0)?;
    with_alice.set_typing(true)?;
    let reply = with_alice.send_text("Hi Alice, loud and clear.").await?;
    println!("bob -> alice: message {reply}");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), alice_events.next()).await? {
            Some(Event::Receipt {
                user, kind, up_to, ..
            }) if user == bob.user() => {
                let what = match kind {
                    ReceiptKind::Read => "read",
                    _ => "received",
                };
                println!("alice sees: bob has {what} up to message {up_to}");
            }
            Some(Event::Typing { users, .. }) if users.contains(&bob.user()) => {
                println!("alice sees: bob is typing");
            }
            Some(Event::Message(m)) => {
                println!(
                    "alice decrypted message {}: \u{201c}{}\u{201d}",
                    m.id,
                    m.text().unwrap_or("")
                );
                break;
            }
            Some(_) => {}
            None => return Err("alice's client stopped".into()),
        }
    }

    // Bob links a tablet: it shows a code, his phone adds it to his signed device list.
    let tablet = Client::builder(&server)
        .device_name("tablet")
        .login(&Credentials::new("bob", "battery staple"))
        .await?;
    let mut tablet_events = tablet.events();
    println!("bob's tablet is linked: {}", tablet.is_linked().await?);
    let code = tablet.link_code().await?;
    bob.link_device(&code).await?;
    tablet.finish_link().await?;
    println!(
        "after entering its code on the phone: {}",
        tablet.is_linked().await?
    );
    chat.send_text("Both of your devices can read this.")
        .await?;
    let m = next_text(&mut tablet_events).await?;
    println!(
        "bob's tablet decrypted message {}: \u{201c}{}\u{201d}",
        m.0, m.1
    );
    loop {
        match tokio::time::timeout(Duration::from_secs(10), alice_events.next()).await? {
            Some(Event::DevicesChanged { user, added, .. }) if user == bob.user() => {
                println!("alice sees: bob linked devices {added:?}");
                break;
            }
            Some(_) => {}
            None => return Err("alice's client stopped".into()),
        }
    }
    println!(
        "bob's devices as alice trusts them: {:?}; the safety number is unchanged: {}",
        alice.devices_of(bob.user()).await?,
        alice.safety_number(bob.user()).await? == number
    );

    // What the server keeps is ciphertext only.
    // Sign off: a normal close, so each is offline for the other at once.
    alice.close().await;
    bob.close().await;
    tablet.close().await;
    drop((alice, bob, tablet));
    let _ = stop.send(());
    serving.await??;
    let mut found = false;
    for entry in std::fs::read_dir(&dir)? {
        // SQLite may remove its -wal and -shm files between the listing and the read.
        let bytes = match std::fs::read(entry?.path()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            read => read?,
        };
        found |= bytes.windows(5).any(|w| w == b"Hi Bo");
    }
    println!(
        "the server's database files contain the plaintext: {}",
        if found { "YES (bug!)" } else { "no" }
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

async fn next_text(
    events: &mut Events,
) -> Result<(chat::client::MessageId, String), Box<dyn std::error::Error>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.next()).await? {
            Some(Event::Message(m)) => {
                return Ok((m.id, m.text().unwrap_or("").to_owned()));
            }
            Some(_) => {}
            None => return Err("client stopped".into()),
        }
    }
}
