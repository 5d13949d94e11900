//! An interactive terminal client: sign in, list conversations with unread counts, chat in
//! one-to-one conversations and groups, send and save files, reply, edit, delete and react,
//! search your history, see who is online and who is typing, set a display name, find people
//! and block users.
//!
//! ```sh
//! cargo run -p chat-server &                       # a node on 127.0.0.1:8080
//! cargo run --example terminal -- --register http://127.0.0.1:8080 alice   # a new account
//! cargo run --example terminal -- http://127.0.0.1:8080 alice              # later runs
//! ```
//!
//! Logging in and registering are distinct: without `--register` the account must exist, and
//! a wrong password says so (and leaves no store file behind). The device's keys, sessions and
//! history are kept in `USERNAME.chat.db` (or `--store PATH`); later runs resume it without a
//! password. For a node with a certificate from a private authority (or self-signed), pass
//! the authority's certificate with `--ca-file PEM`. `/help` lists the commands; any other
//! line is sent to the current conversation. On a terminal, keys are read one at a time: the
//! line being typed stays at the bottom while messages print above it, and others see you
//! typing before you press Enter (with piped input, lines are read whole and typing is not
//! announced). `/quit`, Ctrl-C or Ctrl-D sign off cleanly: contacts see you offline at once.
//!
//! `tests/terminal_tmux.rs` drives this client in tmux, as a person would.

mod screen;
mod words;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat::client::{
    Client, ConnectionState, Content, ConversationId, ConversationKind, Credentials, ErrorCode,
    Event, MessageId, SearchPage, Server, SqliteStore, UserId,
};
use clap::Parser;

use screen::{Input, Screen};
use words::Names;

const COMMANDS: &str = "\
/list                  conversations, newest first, with unread counts
/open NAME             the one-to-one conversation with user NAME (and their presence)
/group NAME NAME...    a new group with these users
/to ID                 switch to conversation ID (from /list), show its latest messages
/add NAME | /kick NAME     change the current group's members (admins; /remove works too)
/members               the current group's name, members with their roles, and settings
/promote NAME | /demote NAME   make a member an admin, or an admin a member again
/rename NAME           rename the current group
/leave                 leave the current group
/history               the current conversation's latest messages
/send-file PATH        send a file to the current conversation (end-to-end encrypted)
/save ID [PATH]        save the file of message ID (default: its own name, here)
/reply ID TEXT         reply to message ID
/edit ID TEXT          replace the text of your message ID
/delete ID             delete your message ID for everyone
/react ID EMOJI | /unreact ID EMOJI   add or take back a reaction
/search WORDS          search your messages (every word must occur)
/name NAME [| STATUS]  set your display name (and status)
/who PREFIX            find users by display name
/safety NAME           the safety number to compare with NAME out of band
/verify NAME           mark NAME verified (after comparing safety numbers)
/accept NAME           trust NAME's new account identity after a change was blocked
/devices [NAME]        the devices of NAME (default: yours) on their signed device list
/link CODE             add your new device that shows CODE (run on a linked device)
/linked                finish linking this device, once a linked one ran /link
/unlink DEVICE         remove your device DEVICE (from /devices)
/recover               no linked device left: make a new account identity on this one
/block NAME | /unblock NAME   block or unblock a user (by username)
/quit                  sign off (also Ctrl-C, or Ctrl-D on an empty line)
anything else          sent to the current conversation";

/// How often the typing indicator is renewed while typing (the server drops it after 6 s).
const TYPING_RENEW: Duration = Duration::from_secs(4);

/// The chat system's terminal client.
#[derive(Parser)]
#[command(
    name = "terminal",
    about = "Chat from a terminal: end-to-end encrypted one-to-one and group conversations.",
    after_help = format!("Commands, once signed in:\n{COMMANDS}\n\n\
        The first run on a store signs a new device in (logs in, or registers with \
        --register); later runs resume the device kept in the store, without a password.")
)]
struct Args {
    /// The server: http://HOST:PORT, or https://HOST[:PORT] for TLS.
    server: String,
    /// Your username.
    username: String,
    /// Your password; asked for when needed and not given.
    #[arg(env = "CHAT_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Create the account instead of logging in to an existing one.
    #[arg(long)]
    register: bool,
    /// This device's store (keys, sessions, history) [default: USERNAME.chat.db].
    #[arg(long, value_name = "PATH")]
    store: Option<PathBuf>,
    /// Trust the certificate authorities in this PEM file (instead of the web's) for an
    /// https:// server: a private authority, or a self-signed certificate.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let server = server(&args.server, args.ca_file.as_deref())?;
    let client = Arc::new(sign_in(&args, server).await?);
    let (screen, keyboard, mut inputs) = screen::start();
    let mut app = App::new(client.clone(), screen.clone()).await;
    let mut events = client.events();
    if !client.is_linked().await.map_err(|e| words::error(&e))? {
        let code = client.link_code().await.map_err(|e| words::error(&e))?;
        screen.print(format!(
            "this device is not linked to your account yet. On a device that is, type\n  \
             /link {}\nthen type /linked here. (No device left? /recover makes a new account \
             identity; your contacts will see it change.)",
            code.as_str()
        ));
    }
    loop {
        tokio::select! {
            input = inputs.recv() => match input {
                None | Some(Input::Quit) => break,
                Some(Input::Edited { composing }) => app.edited(composing),
                Some(Input::Line(line)) => match app.command(line.trim()).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => screen.print(format!("! {}", e.0)),
                },
            },
            event = events.next() => match event {
                Some(event) => if !app.show(event).await {
                    break;
                },
                None => break,
            },
        }
    }
    app.edited(false);
    screen.set_prompt(String::new());
    screen.print("signing off…");
    client.close().await;
    drop(keyboard);
    Ok(())
}

/// The server address, with the trusted authorities from `--ca-file`.
fn server(address: &str, ca_file: Option<&Path>) -> Result<Server, String> {
    let server = Server::parse(address).map_err(|e| format!("server {address}: {e}"))?;
    let Some(path) = ca_file else {
        return Ok(server);
    };
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
    server
        .with_root_certificates(&pem)
        .map_err(|e| format!("--ca-file {}: {e}", path.display()))
}

/// Resumes the device in the store, or signs a new one in: logs in, or registers with
/// `--register`. A store file made for a sign-in that failed is removed again.
async fn sign_in(args: &Args, server: Server) -> Result<Client, String> {
    let path = args
        .store
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.chat.db", args.username)));
    let existed = path.exists();
    let store = SqliteStore::open(&path)
        .map_err(|e| format!("cannot open the store {}: {e}", path.display()))?;
    let resume = store
        .has_device()
        .map_err(|e| format!("cannot read the store {}: {e}", path.display()))?;
    if resume {
        if args.register {
            return Err(format!(
                "{} already holds a signed-in device; run without --register to resume it, \
                 or give another --store",
                path.display()
            ));
        }
        return Client::builder(server)
            .store(store)
            .open()
            .await
            .map_err(|e| words::error(&e));
    }
    let password = match &args.password {
        Some(p) => p.clone(),
        None => screen::read_password(&format!("password for {}: ", args.username))
            .map_err(|e| format!("cannot read the password: {e}"))?
            .ok_or("no password given")?,
    };
    let user = &args.username;
    let credentials = Credentials::new(user, password);
    let builder = Client::builder(server).store(store).device_name("terminal");
    let result = if args.register {
        builder.register(&credentials).await
    } else {
        builder.login(&credentials).await
    };
    result.map_err(|e| {
        if !existed {
            remove_store(&path);
        }
        match (e.code(), args.register) {
            (Some(ErrorCode::BadCredentials), _) => format!(
                "wrong username or password for {user}; nothing was changed (to create a new \
                 account, run with --register)"
            ),
            (Some(ErrorCode::Conflict), true) => format!(
                "the username {user} is taken; if it is yours, log in (run without --register)"
            ),
            (_, true) => format!("could not register {user}: {}", words::error(&e)),
            (_, false) => format!("could not log in as {user}: {}", words::error(&e)),
        }
    })
}

/// Removes a store file (and SQLite's companions) made for a sign-in that failed.
fn remove_store(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}

/// A command's failure, in words.
struct Failure(String);

impl From<chat::client::Error> for Failure {
    fn from(e: chat::client::Error) -> Self {
        Self(words::error(&e))
    }
}

impl From<&str> for Failure {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// The client's state between inputs and events.
struct App {
    client: Arc<Client>,
    screen: Screen,
    names: Names,
    /// Conversations whose kind is known (the client learns it shortly after the first
    /// message of a conversation started elsewhere).
    kinds: HashMap<ConversationId, ConversationKind>,
    /// Members of the conversations seen, fetched when first needed.
    members: HashMap<ConversationId, Vec<UserId>>,
    current: Option<ConversationId>,
    /// Who types in the current conversation (others only).
    typing_here: BTreeSet<UserId>,
    /// Our own typing indicator: where, and when it was last sent.
    typing: Option<(ConversationId, Instant)>,
    /// Whether the connection was up to date once (later ones are reconnections).
    synced_once: bool,
}

impl App {
    async fn new(client: Arc<Client>, screen: Screen) -> Self {
        let mut app = Self {
            client: client.clone(),
            screen,
            names: Names::new(client.user()),
            kinds: HashMap::new(),
            members: HashMap::new(),
            current: None,
            typing_here: BTreeSet::new(),
            typing: None,
            synced_once: false,
        };
        let me = app.client.user();
        match app.client.profile().await {
            Ok(profile) => {
                app.names.set(me, profile.name().to_owned());
                app.screen.print(format!(
                    "signed in as {} (@{}); /help lists the commands",
                    profile.name(),
                    profile.username
                ));
            }
            Err(e) => app.screen.print(format!(
                "signed in (your profile could not be read: {}); /help lists the commands",
                words::error(&e)
            )),
        }
        // Loads the block list the client hides group messages by.
        if let Err(e) = app.client.blocks().await {
            app.screen.print(format!(
                "! could not load your block list: {}",
                words::error(&e)
            ));
        }
        if let Err(e) = app.refresh().await {
            app.screen.print(format!("! {}", e.0));
        }
        app.prompt();
        app
    }

    /// Learns the conversations (also ones started elsewhere), their kinds and members.
    async fn refresh(&mut self) -> Result<(), Failure> {
        for id in self.client.sync_conversations().await? {
            if !self.members.contains_key(&id) {
                self.learn(id).await?;
            }
        }
        for c in self.client.conversation_list().await? {
            self.kinds.insert(c.id, c.kind);
        }
        Ok(())
    }

    /// Fetches a conversation's members and their names; fails unless this user is one.
    async fn learn(&mut self, id: ConversationId) -> Result<(), Failure> {
        let members = self.client.conversation(id).members().await?;
        self.learn_names(members.iter().copied()).await;
        self.members.insert(id, members);
        if !self.kinds.contains_key(&id) {
            let list = self.client.conversation_list().await?;
            if let Some(c) = list.iter().find(|c| c.id == id) {
                self.kinds.insert(id, c.kind);
            }
        }
        Ok(())
    }

    /// Fetches the names not known yet (best effort: only contacts' profiles are visible).
    async fn learn_names(&mut self, users: impl IntoIterator<Item = UserId>) {
        for user in self.names.missing(users) {
            if let Ok(profile) = self.client.user_profile(user).await {
                self.names.set(user, profile.name().to_owned());
            }
        }
    }

    fn title(&self, id: ConversationId) -> String {
        let direct = self.kinds.get(&id).map(|k| *k == ConversationKind::Direct);
        words::title(
            &self.names,
            self.client.user(),
            id,
            direct,
            self.members.get(&id),
        )
    }

    /// Shows the current conversation and who is typing in it before the line being typed.
    fn prompt(&self) {
        let typing = match self.typing_here.len() {
            0 => String::new(),
            1 => format!("({} is typing…) ", self.names.list(&self.typing_list())),
            _ => format!("({} are typing…) ", self.names.list(&self.typing_list())),
        };
        let here = self.current.map(|id| self.title(id)).unwrap_or_default();
        self.screen.set_prompt(format!("{typing}{here}> "));
    }

    fn typing_list(&self) -> Vec<UserId> {
        self.typing_here.iter().copied().collect()
    }

    /// The line being typed changed: starts, renews or stops our typing indicator.
    fn edited(&mut self, composing: bool) {
        let here = if composing { self.current } else { None };
        match (here, self.typing) {
            (Some(id), Some((at, sent))) if at == id && sent.elapsed() < TYPING_RENEW => {}
            (Some(id), previous) => {
                if let Some((other, _)) = previous.filter(|(c, _)| *c != id) {
                    let _ = self.client.conversation(other).set_typing(false);
                }
                let _ = self.client.conversation(id).set_typing(true);
                self.typing = Some((id, Instant::now()));
            }
            (None, Some((at, _))) => {
                let _ = self.client.conversation(at).set_typing(false);
                self.typing = None;
            }
            (None, None) => {}
        }
    }

    /// Makes `id` the current conversation.
    async fn switch(&mut self, id: ConversationId) -> Result<(), Failure> {
        self.edited(false);
        self.current = Some(id);
        self.typing_here = self
            .client
            .conversation(id)
            .typing()
            .into_iter()
            .filter(|u| *u != self.client.user())
            .collect();
        self.screen
            .print(format!("— {} (conversation {id}) —", self.title(id)));
        self.history(id).await?;
        self.prompt();
        Ok(())
    }

    /// Prints a conversation's latest messages and marks them read.
    async fn history(&mut self, id: ConversationId) -> Result<(), Failure> {
        let mut page = self.client.conversation(id).timeline(None, 20).await?;
        page.reverse();
        let users: Vec<UserId> = page.iter().flat_map(words::users_in).collect();
        self.learn_names(users).await;
        if page.is_empty() {
            self.screen.print("  (no messages yet)");
        }
        for m in &page {
            self.screen
                .print(format!("  {}", words::item(&self.names, m)));
        }
        if let Some(last) = page.last() {
            self.client.conversation(id).mark_read(last.id()).await?;
        }
        Ok(())
    }

    fn here(&self) -> Result<ConversationId, Failure> {
        self.current
            .ok_or_else(|| "no current conversation: /open NAME or /to ID first".into())
    }

    async fn user_named(&self, name: Option<&str>, usage: &str) -> Result<UserId, Failure> {
        let name = name.ok_or(usage)?;
        match self.client.user_by_name(name).await {
            Ok(user) => Ok(user),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                Err(format!("there is no user called {name}").into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs one input line; `false` to quit.
    async fn command(&mut self, line: &str) -> Result<bool, Failure> {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else {
            return Ok(true);
        };
        if !first.starts_with('/') {
            self.send_text(line)?;
            return Ok(true);
        }
        match first {
            "/help" => self.screen.print(COMMANDS),
            "/quit" => return Ok(false),
            "/list" => self.list().await?,
            "/open" => {
                let user = self.user_named(words.next(), "/open NAME").await?;
                let id = self.client.open_direct(user).await?;
                self.kinds.insert(id, ConversationKind::Direct);
                self.learn(id).await?;
                self.client.subscribe_presence(&[user])?;
                self.switch(id).await?;
            }
            "/group" => {
                let mut users = Vec::new();
                for name in words {
                    users.push(self.user_named(Some(name), "/group NAME...").await?);
                }
                if users.is_empty() {
                    return Err("/group NAME NAME...: whom to add?".into());
                }
                let id = self.client.create_group(&users).await?;
                self.kinds.insert(id, ConversationKind::Group);
                self.learn(id).await?;
                self.screen.print(format!(
                    "* you created group {id} with {}",
                    self.names.list(&users)
                ));
                self.switch(id).await?;
            }
            "/to" => {
                let arg = words.next().ok_or("/to ID (a number from /list)")?;
                let id: ConversationId = arg
                    .parse()
                    .map_err(|_| format!("{arg} is not a conversation number (see /list)"))?;
                // Switch only once the server confirmed this user is a member.
                if let Err(e) = self.learn(id).await {
                    let still = match self.current {
                        Some(c) => format!("still in {}", self.title(c)),
                        None => "no conversation is open".to_owned(),
                    };
                    return Err(format!("cannot open conversation {id}: {}; {still}", e.0).into());
                }
                self.switch(id).await?;
            }
            cmd @ ("/add" | "/remove" | "/kick") => {
                let id = self.here()?;
                let user = self
                    .user_named(words.next(), "/add NAME or /kick NAME")
                    .await?;
                if cmd == "/add" {
                    self.client.conversation(id).add_members(&[user]).await?;
                } else {
                    self.client.conversation(id).remove_member(user).await?;
                }
                self.learn(id).await?;
                self.learn_names([user]).await;
                let what = if cmd == "/add" { "added" } else { "removed" };
                self.screen
                    .print(format!("* you {what} {}", self.names.of(user)));
                self.prompt();
            }
            "/history" => {
                let id = self.here()?;
                self.history(id).await?;
            }
            "/members" => {
                let id = self.here()?;
                let info = self.client.conversation(id).group_info().await?;
                self.learn_names(info.members.iter().map(|(u, _)| *u)).await;
                let list: Vec<String> = info
                    .members
                    .iter()
                    .map(|(u, role)| match role {
                        chat::client::Role::Admin => format!("{} (admin)", self.names.of(*u)),
                        _ => self.names.of(*u),
                    })
                    .collect();
                let who = |p: chat::client::Permission| match p {
                    chat::client::Permission::Admins => "admins",
                    _ => "everyone",
                };
                self.screen.print(format!(
                    "  {}: {}\n  adding members: {}; renaming: {}",
                    info.name,
                    list.join(", "),
                    who(info.settings.add_members),
                    who(info.settings.edit_name)
                ));
            }
            cmd @ ("/promote" | "/demote") => {
                let id = self.here()?;
                let user = self
                    .user_named(words.next(), "/promote NAME or /demote NAME")
                    .await?;
                if cmd == "/promote" {
                    self.client.conversation(id).promote(user).await?;
                } else {
                    self.client.conversation(id).demote(user).await?;
                }
                self.learn_names([user]).await;
                let what = if cmd == "/promote" {
                    "is an admin now"
                } else {
                    "is no longer an admin"
                };
                self.screen
                    .print(format!("* {} {what}", self.names.of(user)));
            }
            "/rename" => {
                let id = self.here()?;
                let name = line.strip_prefix("/rename").unwrap_or_default().trim();
                if name.is_empty() {
                    return Err("/rename NAME".into());
                }
                self.client.conversation(id).rename(name).await?;
                self.screen
                    .print(format!("* the group is called {name} now"));
            }
            "/leave" => {
                let id = self.here()?;
                self.client.conversation(id).leave().await?;
                self.screen.print("* you left the group");
            }
            "/send-file" => {
                let id = self.here()?;
                let path = line.strip_prefix("/send-file").unwrap_or_default().trim();
                self.send_file(id, path)?;
            }
            "/save" => {
                let id = self.here()?;
                let message = words.next().ok_or("/save ID [PATH]")?;
                let message: MessageId = message
                    .trim_start_matches('#')
                    .parse()
                    .map_err(|_| format!("{message} is not a message number"))?;
                let rest: Vec<&str> = words.collect();
                self.save(id, message, &rest.join(" ")).await?;
            }
            cmd @ ("/reply" | "/edit" | "/delete" | "/react" | "/unreact") => {
                let id = self.here()?;
                let target = words.next().ok_or("which message? (its number)")?;
                let target: MessageId = target
                    .trim_start_matches('#')
                    .parse()
                    .map_err(|_| format!("{target} is not a message number"))?;
                let rest = words.collect::<Vec<_>>().join(" ");
                let chat = self.client.conversation(id);
                let sent = match cmd {
                    "/reply" => chat.reply(target, &rest).await?,
                    "/edit" => chat.edit(target, &rest).await?,
                    "/delete" => chat.delete(target).await?,
                    "/react" => chat.react(target, &rest).await?,
                    _ => chat.unreact(target, &rest).await?,
                };
                self.screen.print(format!("  (sent as #{sent})"));
            }
            "/search" => {
                let query = line.strip_prefix("/search").unwrap_or_default().trim();
                let results = self.client.search(query, SearchPage::first(20)).await?;
                for hit in &results.hits {
                    self.screen.print(format!(
                        "  {} #{}: {}",
                        self.title(hit.conversation),
                        hit.message,
                        hit.text
                    ));
                }
                if results.hits.is_empty() {
                    self.screen.print("  nothing found");
                } else if results.next.is_some() {
                    self.screen.print("  … more; add words to narrow it");
                }
            }
            "/name" => {
                let rest = line.strip_prefix("/name").unwrap_or_default();
                let (name, status) = match rest.split_once('|') {
                    Some((name, status)) => (name, Some(status)),
                    None => (rest, None),
                };
                let profile = self.client.set_profile(name, status, None).await?;
                self.names
                    .set(self.client.user(), profile.name().to_owned());
                self.screen
                    .print(format!("you are now called {}", profile.name()));
            }
            "/who" => {
                let prefix = line.strip_prefix("/who").unwrap_or_default().trim();
                let page = self.client.search_users(prefix, None, 20).await?;
                for user in &page.users {
                    let status = user.status.as_deref().unwrap_or("");
                    self.screen
                        .print(format!("  {} (@{}) {status}", user.name(), user.username));
                }
                if page.users.is_empty() {
                    self.screen.print("  nobody found");
                } else if page.next.is_some() {
                    self.screen.print("  … more; type more letters");
                }
            }
            "/safety" => {
                let user = self.user_named(words.next(), "/safety NAME").await?;
                let number = self.client.safety_number(user).await?;
                let verified = if self.client.is_verified(user).await? {
                    "verified"
                } else {
                    "not verified: compare it in person or on a call, then /verify NAME"
                };
                self.screen.print(format!(
                    "safety number with {}: {number}\n  ({verified}; it changes only when \
                     an account identity changes)",
                    self.names.of(user)
                ));
            }
            "/verify" => {
                let user = self.user_named(words.next(), "/verify NAME").await?;
                self.client.verify(user).await?;
                self.screen.print(format!(
                    "{} is verified; a change of their identity will stop your messages to \
                     them until you /accept it",
                    self.names.of(user)
                ));
            }
            "/accept" => {
                let user = self.user_named(words.next(), "/accept NAME").await?;
                self.client.accept_identity(user).await?;
                self.screen.print(format!(
                    "{}'s new identity is trusted (not verified)",
                    self.names.of(user)
                ));
            }
            "/devices" => {
                let user = match words.next() {
                    Some(name) => self.user_named(Some(name), "/devices [NAME]").await?,
                    None => self.client.user(),
                };
                let devices = self.client.devices_of(user).await?;
                let list: Vec<String> = devices.iter().map(ToString::to_string).collect();
                self.screen.print(format!(
                    "{}'s devices: {}",
                    self.names.of(user),
                    list.join(", ")
                ));
            }
            "/link" => {
                let code = words.next().ok_or("/link CODE (shown by the new device)")?;
                let device = self.client.link_device(code).await?;
                self.screen
                    .print(format!("device {device} is linked; type /linked on it"));
            }
            "/linked" => {
                if self.client.finish_link().await? {
                    self.screen.print("this device is linked");
                } else {
                    self.screen
                        .print("not yet: run /link CODE on a linked device first");
                }
            }
            "/unlink" => {
                let id = words
                    .next()
                    .and_then(|w| w.parse::<u64>().ok())
                    .ok_or("/unlink DEVICE (a number from /devices)")?;
                let device = chat::client::DeviceId::new(id).map_err(|e| e.to_string())?;
                self.client.remove_device(device).await?;
                self.screen.print(format!("device {device} is removed"));
            }
            "/recover" => {
                self.client.recover_account().await?;
                self.screen
                    .print("this device has a new account identity; link your other devices again");
            }
            cmd @ ("/block" | "/unblock") => {
                let user = self.user_named(words.next(), "/block NAME").await?;
                if cmd == "/block" {
                    self.client.block(user).await?;
                } else {
                    self.client.unblock(user).await?;
                }
                let what = if cmd == "/block" {
                    "blocked"
                } else {
                    "unblocked"
                };
                self.screen.print(format!("{what} {}", self.names.of(user)));
            }
            _ => return Err(format!("unknown command {first}; /help lists them").into()),
        }
        Ok(true)
    }

    async fn list(&mut self) -> Result<(), Failure> {
        self.refresh().await?;
        let list = self.client.conversation_list().await?;
        let users: Vec<UserId> = list
            .iter()
            .filter_map(|c| c.last.as_ref())
            .flat_map(words::users_in)
            .collect();
        self.learn_names(users).await;
        if list.is_empty() {
            self.screen
                .print("  no conversations yet: /open NAME or /group NAME NAME...");
            return Ok(());
        }
        for c in list {
            let mark = if Some(c.id) == self.current { "*" } else { " " };
            let unread = if c.unread > 0 {
                format!(" ({} unread)", c.unread)
            } else {
                String::new()
            };
            let last = c
                .last
                .as_ref()
                .map(|m| format!(" — {}", words::item(&self.names, m)))
                .unwrap_or_default();
            self.screen.print(format!(
                "{mark} {:>3}  {}{unread}{last}",
                c.id,
                self.title(c.id)
            ));
        }
        self.screen.print("  (/to ID switches)");
        Ok(())
    }

    fn send_text(&mut self, text: &str) -> Result<(), Failure> {
        let id = self.here()?;
        self.edited(false);
        let chat = self.client.conversation(id);
        let (screen, text) = (self.screen.clone(), text.to_owned());
        // Sending waits for the server's acknowledgement; keep the prompt responsive.
        tokio::spawn(async move {
            match chat.send_text(&text).await {
                Ok(mid) => screen.print(format!("  (sent as #{mid})")),
                Err(e) => screen.print(format!("! not sent: {}", words::error(&e))),
            }
        });
        Ok(())
    }

    fn send_file(&self, id: ConversationId, path: &str) -> Result<(), Failure> {
        if path.is_empty() {
            return Err("/send-file PATH".into());
        }
        let meta = std::fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{path} is not a file").into());
        }
        let chat = self.client.conversation(id);
        let (screen, path) = (self.screen.clone(), path.to_owned());
        screen.print(format!(
            "  sending {path} ({}), encrypted…",
            words::size(meta.len())
        ));
        tokio::spawn(async move {
            match chat.send_file(&path, mime(&path)).await {
                Ok(mid) => screen.print(format!("  (sent {path} as #{mid})")),
                Err(e) => screen.print(format!("! {path} not sent: {}", words::error(&e))),
            }
        });
        Ok(())
    }

    async fn save(
        &self,
        id: ConversationId,
        message: MessageId,
        path: &str,
    ) -> Result<(), Failure> {
        let item = self
            .client
            .conversation(id)
            .message(message)
            .await?
            .ok_or_else(|| format!("there is no message #{message} in this conversation"))?;
        let Some(Content::Attachment(pointer)) = item.view.content else {
            return Err(format!("message #{message} is not a file").into());
        };
        // Only the file name part of what the sender chose: never a path of theirs.
        let name = pointer
            .name
            .as_deref()
            .and_then(|n| Path::new(n).file_name())
            .map_or_else(|| PathBuf::from(format!("file-{message}")), PathBuf::from);
        let target = match path {
            "" => name,
            p if Path::new(p).is_dir() => Path::new(p).join(name),
            p => PathBuf::from(p),
        };
        if target.exists() {
            return Err(format!("{} exists; give another PATH", target.display()).into());
        }
        let (client, screen) = (self.client.clone(), self.screen.clone());
        tokio::spawn(async move {
            match client.download_file(&pointer, &target).await {
                Ok(()) => screen.print(format!(
                    "  saved #{message} to {} ({}, verified)",
                    target.display(),
                    words::size(pointer.size)
                )),
                Err(e) => screen.print(format!("! #{message} not saved: {}", words::error(&e))),
            }
        });
        Ok(())
    }

    /// Shows one event; `false` when the client cannot go on.
    async fn show(&mut self, event: Event) -> bool {
        let me = self.client.user();
        match event {
            Event::Message(m) => {
                if !self.members.contains_key(&m.conversation) {
                    let _ = self.learn(m.conversation).await;
                }
                if let Content::GroupChange(g) = &m.content {
                    // Membership changed: fetch it again (fails if we were removed).
                    if self.learn(m.conversation).await.is_err() {
                        self.members.remove(&m.conversation);
                    }
                    self.learn_names(g.users.iter().copied()).await;
                }
                self.learn_names([m.sender.user]).await;
                let line = words::message(&self.names, m.id, m.sender.user, Some(&m.content));
                if Some(m.conversation) == self.current {
                    self.screen.print(format!("  {line}"));
                    if m.sender.user != me {
                        let _ = self
                            .client
                            .conversation(m.conversation)
                            .mark_read(m.id)
                            .await;
                    }
                } else {
                    let unread = self
                        .client
                        .conversation(m.conversation)
                        .unread_count()
                        .await
                        .unwrap_or(0);
                    self.screen.print(format!(
                        "  [{}] {line}   ({unread} unread; /to {})",
                        self.title(m.conversation),
                        m.conversation
                    ));
                }
            }
            Event::NewConversation { id, kind } => {
                self.kinds.insert(id, kind);
                let _ = self.learn(id).await;
                self.screen
                    .print(format!("  new conversation: {} (/to {id})", self.title(id)));
            }
            Event::Updated(item) => {
                self.learn_names(words::users_in(&item)).await;
                let line = words::item(&self.names, &item);
                if Some(item.conversation) == self.current {
                    self.screen.print(format!("  now: {line}"));
                } else {
                    self.screen
                        .print(format!("  [{}] now: {line}", self.title(item.conversation)));
                }
            }
            Event::Replaced { conversation, id } => self.screen.print(format!(
                "! messages from #{id} on in {} were lost on the server",
                self.title(conversation)
            )),
            Event::SendFailed {
                conversation, code, ..
            } => {
                let why = words::error(&chat::client::Error::Server {
                    code,
                    message: code.name().to_owned(),
                });
                self.screen.print(format!(
                    "! a message to {} was refused: {why}",
                    self.title(conversation)
                ));
            }
            Event::Undecryptable {
                conversation,
                id,
                sender,
            } => {
                self.learn_names([sender.user]).await;
                self.screen.print(format!(
                    "! message #{id} from {} in {} could not be decrypted on this device",
                    self.names.of(sender.user),
                    self.title(conversation)
                ));
            }
            Event::Receipt {
                conversation,
                user,
                kind: chat::client::ReceiptKind::Read,
                up_to,
            } if user != me && Some(conversation) == self.current => {
                self.learn_names([user]).await;
                self.screen
                    .print(format!("  ✓ {} read up to #{up_to}", self.names.of(user)));
            }
            Event::Typing {
                conversation,
                users,
            } if Some(conversation) == self.current => {
                self.learn_names(users.iter().copied()).await;
                let before = std::mem::take(&mut self.typing_here);
                self.typing_here = users.into_iter().filter(|u| *u != me).collect();
                let started: Vec<UserId> = self.typing_here.difference(&before).copied().collect();
                if !started.is_empty() && !self.screen.is_interactive() {
                    self.screen
                        .print(format!("  {} is typing…", self.names.list(&started)));
                }
                self.prompt();
            }
            Event::Presence {
                user,
                online,
                last_active_at,
            } if user != me => {
                self.learn_names([user]).await;
                let name = self.names.of(user);
                if online {
                    self.screen.print(format!("  {name} is online"));
                } else {
                    let ago = last_active_at
                        .map(|at| {
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap_or_default();
                            let at = Duration::from_millis(at.as_millis());
                            format!(
                                " (last active {} ago)",
                                words::duration(now.saturating_sub(at))
                            )
                        })
                        .unwrap_or_default();
                    self.screen.print(format!("  {name} is offline{ago}"));
                }
            }
            Event::Profile {
                user, display_name, ..
            } => {
                let before = self.names.of(user);
                self.names.set(user, display_name.clone());
                if user != me && before != display_name {
                    self.screen
                        .print(format!("  {before} is now called {display_name}"));
                }
                self.prompt();
            }
            Event::DevicesChanged {
                user,
                added,
                removed,
                changed,
            } => {
                self.learn_names([user]).await;
                let ids = |d: &[chat::client::DeviceId]| {
                    d.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                self.screen.print(format!(
                    "  {}'s devices changed: added [{}], removed [{}], new keys [{}]",
                    self.names.of(user),
                    ids(&added),
                    ids(&removed),
                    ids(&changed)
                ));
            }
            Event::AccountChanged {
                user,
                verified,
                blocked,
            } => {
                self.learn_names([user]).await;
                let what = if blocked {
                    "nothing is sent to them until you /accept NAME"
                } else {
                    "compare safety numbers: /safety NAME"
                };
                let was = if verified { "verified " } else { "" };
                self.screen.print(format!(
                    "! {}'s {was}account identity changed (a recovered account, or an \
                     attack); {what}",
                    self.names.of(user)
                ));
            }
            Event::DeviceRefused { device } => {
                self.learn_names([device.user]).await;
                self.screen.print(format!(
                    "! the server named device {} of {}, which is not on their signed \
                     device list; nothing is sent to it",
                    device.device,
                    self.names.of(device.user)
                ));
            }
            Event::GroupMemberUnverified { conversation, user } => {
                self.learn_names([user]).await;
                self.screen.print(format!(
                    "! the server lists {} in conversation {conversation}, but no member's \
                     signed change added them; nothing is sent to them",
                    self.names.of(user)
                ));
            }
            Event::GroupChangeRefused {
                conversation,
                reason,
            } => self.screen.print(format!(
                "! refused a change to conversation {conversation} the server served \
                 ({reason}); the group stays as verified"
            )),
            Event::ResyncRequired { reason } => self.screen.print(format!(
                "! {}; reading what history allows",
                words::resync(reason)
            )),
            Event::Recovered { recovered, missed } => self.screen.print(format!(
                "  recovered {recovered} messages from history; {} cannot be read on this device",
                missed.len()
            )),
            Event::Connection(ConnectionState::Synced) => {
                let what = if self.synced_once {
                    "reconnected"
                } else {
                    "connected"
                };
                self.synced_once = true;
                self.screen.print(format!("  ({what}, up to date)"));
            }
            Event::Connection(ConnectionState::Disconnected { reason, retry_in }) => {
                self.typing_here.clear();
                self.prompt();
                self.screen.print(format!(
                    "  (connection lost: {reason}; trying again in {})",
                    words::duration(retry_in)
                ));
            }
            Event::Connection(ConnectionState::LoggedOut) => {
                self.screen.print(
                    "! the server signed this device out (logged out or removed elsewhere); \
                     sign in again with a new --store",
                );
                return false;
            }
            Event::Lagged(n) => self.screen.print(format!(
                "  ({n} updates were skipped while busy; /history shows what is stored)"
            )),
            _ => {}
        }
        true
    }
}

/// A MIME type from a file name's extension.
fn mime(path: &str) -> &'static str {
    let ext = Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("txt" | "log") => "text/plain",
        Some("md") => "text/markdown",
        Some("html" | "htm") => "text/html",
        Some("json") => "application/json",
        Some("pdf") => "application/pdf",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("mp3") => "audio/mpeg",
        Some("mp4") => "video/mp4",
        Some("zip") => "application/zip",
        _ => "application/octet-stream",
    }
}
