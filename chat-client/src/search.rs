//! [`SearchIndex`]: local full-text search over decrypted messages (R-MSG-9).
//!
//! The server cannot read messages, so search happens here, over the device's own plaintext.
//!
//! # What matches what
//!
//! A query is split into terms at whitespace and control characters; a hit contains every
//! term. Case is folded, character by character, with SQLite's Unicode tables; diacritics
//! are kept.
//!
//! - A term of **three or more characters** matches anywhere in the text, as a substring: `brar`
//!   finds "Library", `图书馆` finds "我们明天在图书馆见面", `도서관` finds "도서관에서".
//! - A term of **one or two characters** matches where it occurs *at the start of a token*.
//!   A token is a word of an alphabetic script (a run of letters and digits: Latin, Cyrillic,
//!   Greek, Arabic, ...), or any other single character: each Chinese, Japanese (kana) or
//!   Korean (Hangul) character, each punctuation mark, symbol or emoji. So `me` finds "Meet"
//!   and "me" but not "home", `7` finds "7pm" and "#7" but not "17", and `a_` finds "a_b";
//!   while `明天`, `駅`, `만나`, `%` and `，` match anywhere they occur, exactly as a substring
//!   (every character of these scripts starts a token). A short Latin term is thus a word
//!   prefix, which is what someone typing "hi" expects (not "this", "which", "chip").
//!
//! # How
//!
//! One contentless SQLite FTS5 table with the `trigram` tokenizer indexes, per message, the
//! text itself (every run of three characters is a token: long terms) followed by a string
//! built in Rust from the text's tokens in which every one- and two-character term the text
//! matches appears as one trigram of its own: `\x01c\x01` for a token starting with `c`, `c\x01d`
//! for a token starting with `c` followed by `d` (see [`short_terms`]). Control characters
//! never occur in indexed text (they become spaces) nor in terms, so a long term can never
//! match inside that string, and a short term never outside it. Every query is therefore a
//! single FTS5 `MATCH` of one phrase per term, evaluated inside FTS5 (all terms intersected
//! there), newest first, stopping at a page: no scan for any kind of term. The text itself and
//! the message's IDs live in `search_keys`, under the same rowid.
//!
//! The index holds each message's *current* text: [`SearchIndex::edit`] replaces it and
//! [`SearchIndex::delete`] removes it from both tables, so an edited-away or deleted text is
//! not found again. Hits come newest-indexed first, a page at a time, with a keyset position
//! (the rowid) that stays valid while messages are added. The index is created with FTS5's
//! `secure-delete` option, so a removed text leaves no trace in its segments; the client
//! store also runs with `secure_delete` and checkpoints its WAL after an erasure.
//!
//! Not covered: Thai, Lao, Khmer and Myanmar, also written without spaces, count as words
//! here, so a one- or two-character term of those scripts matches only at the start of a
//! space-separated run (longer terms match anywhere). Text is not Unicode-normalized: a
//! decomposed "é" (e + U+0301) is two characters, and does not match a composed one.
//!
//! A database written by the first version of this module (a contentful trigram table
//! `search_text`, no short-term index) is upgraded in place by [`create_schema`]: texts move to
//! `search_keys`, everything is indexed again, and `search_text` is dropped.

use std::fmt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use chat_core::{ConversationId, MessageId};
use rusqlite::{Connection, OptionalExtension, params};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS search_keys (
    rowid INTEGER PRIMARY KEY,
    conversation INTEGER NOT NULL, message INTEGER NOT NULL,
    body TEXT NOT NULL DEFAULT '',
    UNIQUE (conversation, message));
CREATE VIRTUAL TABLE IF NOT EXISTS search_terms USING fts5(
    terms, tokenize = 'trigram', content = '', contentless_delete = 1);
";

/// The rowids of a first page of hits: the MATCH expression (?1) and one more than the page
/// (?2).
const FIRST_PAGE: &str = "SELECT rowid FROM search_terms WHERE search_terms MATCH ?1 \
                          ORDER BY rowid DESC LIMIT ?2";
/// The same for the page after rowid ?3.
const NEXT_PAGE: &str = "SELECT rowid FROM search_terms WHERE search_terms MATCH ?1 \
                         AND rowid < ?3 ORDER BY rowid DESC LIMIT ?2";

/// Marks a character that starts a token in the short-term string (and separates a token's
/// first character from its second).
const MARK: char = '\u{1}';
/// Separates chains in the short-term string, and the string from the text.
const SEPARATOR: char = '\u{2}';

/// The most hits one page returns, whatever the caller asks for.
pub const MAX_SEARCH_PAGE: usize = 200;

/// Why the search index failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// SQLite failed (or was built without FTS5 or the trigram tokenizer).
    #[error("search index: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored ID is out of range: the file was not written by this index.
    #[error("search index holds an invalid id")]
    Corrupt,
}

/// Where a page of hits ends; pass it back for the next page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchPosition(i64);

/// Which page of hits to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchPage {
    /// Continue after this position (`None`: the first page).
    pub after: Option<SearchPosition>,
    /// How many hits at most (capped at [`MAX_SEARCH_PAGE`]).
    pub limit: usize,
}

impl SearchPage {
    /// The first page of `limit` hits.
    pub const fn first(limit: usize) -> Self {
        Self { after: None, limit }
    }
}

/// One message that matches. Its `Debug` output leaves the text out.
#[derive(Clone, PartialEq, Eq)]
pub struct SearchHit {
    /// Its conversation.
    pub conversation: ConversationId,
    /// The message.
    pub message: MessageId,
    /// Its current text.
    pub text: String,
}

impl fmt::Debug for SearchHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SearchHit")
            .field("conversation", &self.conversation)
            .field("message", &self.message)
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .finish()
    }
}

/// A page of hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchResults {
    /// The hits, newest indexed first.
    pub hits: Vec<SearchHit>,
    /// The position to ask for the next page from; `None` if this was the last.
    pub next: Option<SearchPosition>,
}

/// A full-text index of decrypted messages in one SQLite database.
pub struct SearchIndex {
    conn: Mutex<Connection>,
}

impl fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SearchIndex")
    }
}

impl SearchIndex {
    /// Opens (creating if needed) the index in the SQLite file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SearchError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        Self::with_connection(conn)
    }

    /// An index that lives in memory only.
    pub fn in_memory() -> Result<Self, SearchError> {
        Self::with_connection(Connection::open_in_memory()?)
    }

    /// An index in the database of `conn` (its tables are created if missing, and an index
    /// written by an earlier version of this crate is upgraded, in one transaction).
    pub fn with_connection(mut conn: Connection) -> Result<Self, SearchError> {
        // One transaction, so an upgrade of an old database happens entirely or not at all.
        let tx = conn.transaction()?;
        create_schema(&tx)?;
        tx.commit()?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// Indexes a message's text, replacing what was indexed for it before (so indexing a
    /// duplicate again is harmless).
    pub fn index(
        &self,
        conversation: ConversationId,
        message: MessageId,
        text: &str,
    ) -> Result<(), SearchError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        upsert(&tx, conversation, message, text)?;
        tx.commit()?;
        Ok(())
    }

    /// Indexes many messages in one transaction (a backlog, a rebuild).
    pub fn index_all<'a>(
        &self,
        messages: impl IntoIterator<Item = (ConversationId, MessageId, &'a str)>,
    ) -> Result<(), SearchError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for (conversation, message, text) in messages {
            upsert(&tx, conversation, message, text)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Replaces an indexed message's text with its edited text. Returns whether the message
    /// was indexed (an edit of a message not indexed yet changes nothing: index it with its
    /// current text when it arrives).
    pub fn edit(
        &self,
        conversation: ConversationId,
        message: MessageId,
        text: &str,
    ) -> Result<bool, SearchError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let edited = edit(&tx, conversation, message, text)?;
        tx.commit()?;
        Ok(edited)
    }

    /// Forgets a message (deleted). Returns whether it was indexed.
    pub fn delete(
        &self,
        conversation: ConversationId,
        message: MessageId,
    ) -> Result<bool, SearchError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let removed = remove(&tx, conversation, message)?;
        tx.commit()?;
        Ok(removed)
    }

    /// The messages matching every term of `query` (terms are separated by whitespace and
    /// control characters), newest indexed first. A term of three or more characters matches
    /// anywhere (a substring); a term of one or two characters matches at the start of a word,
    /// or anywhere in Chinese, Japanese or Korean text (where every character starts a
    /// token), and anywhere as a punctuation mark, symbol or emoji. Case is folded. An empty
    /// query finds nothing.
    pub fn search(&self, query: &str, page: SearchPage) -> Result<SearchResults, SearchError> {
        search(&self.conn(), query, page)
    }

    /// How many messages are indexed.
    pub fn len(&self) -> Result<usize, SearchError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT count(*) FROM search_keys", [], |row| row.get(0))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> Result<bool, SearchError> {
        Ok(self.len()? == 0)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back on drop), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Creates the index's tables in `conn` if they are missing, and upgrades a database written
/// by the first version of this module (see the module docs). Meant to run inside the
/// caller's transaction; the upgrade runs in a savepoint of its own, so it is all or nothing
/// (and one transaction, not one per message) even when the caller has none.
/// A removed or replaced text leaves no trace in the index's pages (FTS5 otherwise only marks
/// it deleted until segments merge): a deleted message must not be recoverable from the file.
/// A persistent option of the table; setting it again is harmless.
const SECURE_DELETE: &str =
    "INSERT INTO search_terms (search_terms, rank) VALUES ('secure-delete', 1)";

/// The index's tables in SQLite's `temp` schema (an encrypted store's index, kept in
/// memory): unqualified names resolve to `temp` before the file's own tables.
pub(crate) fn create_temp_schema(conn: &Connection) -> Result<(), SearchError> {
    let schema = SCHEMA
        .replace(
            "CREATE TABLE IF NOT EXISTS search_keys",
            "CREATE TEMP TABLE IF NOT EXISTS search_keys",
        )
        .replace(
            "CREATE VIRTUAL TABLE IF NOT EXISTS search_terms",
            "CREATE VIRTUAL TABLE IF NOT EXISTS temp.search_terms",
        );
    conn.execute_batch(&schema)?;
    Ok(())
}

pub(crate) fn create_schema(conn: &Connection) -> Result<(), SearchError> {
    let old = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'search_text'")?
        .exists([])?;
    if !old {
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(SECURE_DELETE)?;
        return Ok(());
    }
    conn.execute_batch("SAVEPOINT search_upgrade")?;
    match upgrade(conn) {
        Ok(()) => {
            conn.execute_batch("RELEASE search_upgrade")?;
            Ok(())
        }
        Err(err) => {
            // The upgrade's error is the one worth reporting.
            let _ = conn.execute_batch("ROLLBACK TO search_upgrade; RELEASE search_upgrade");
            Err(err)
        }
    }
}

/// Upgrades the first version's tables: the texts of `search_text` move to a new column of
/// `search_keys`, all are indexed again (short terms included), and `search_text` is dropped.
fn upgrade(conn: &Connection) -> Result<(), SearchError> {
    let has_body = conn
        .prepare("SELECT 1 FROM pragma_table_info('search_keys') WHERE name = 'body'")?
        .exists([])?;
    if !has_body {
        conn.execute_batch("ALTER TABLE search_keys ADD COLUMN body TEXT NOT NULL DEFAULT ''")?;
    }
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(SECURE_DELETE)?;
    conn.execute_batch(
        "UPDATE search_keys SET body = coalesce(
             (SELECT body FROM search_text WHERE search_text.rowid = search_keys.rowid), '');
         INSERT INTO search_terms (search_terms) VALUES ('delete-all');",
    )?;
    let mut select = conn.prepare("SELECT rowid, body FROM search_keys")?;
    let mut rows = select.query([])?;
    while let Some(row) = rows.next()? {
        insert_terms(conn, row.get(0)?, &row.get::<_, String>(1)?)?;
    }
    conn.execute_batch("DROP TABLE search_text")?;
    Ok(())
}

/// [`SearchIndex::edit`] inside a caller's transaction.
pub(crate) fn edit(
    conn: &Connection,
    conversation: ConversationId,
    message: MessageId,
    text: &str,
) -> Result<bool, SearchError> {
    let Some((rowid, old)) = indexed(conn, conversation, message)? else {
        return Ok(false);
    };
    if old != text {
        replace(conn, rowid, text)?;
    }
    Ok(true)
}

/// [`SearchIndex::delete`] inside a caller's transaction.
pub(crate) fn remove(
    conn: &Connection,
    conversation: ConversationId,
    message: MessageId,
) -> Result<bool, SearchError> {
    let Some((rowid, _)) = indexed(conn, conversation, message)? else {
        return Ok(false);
    };
    conn.prepare_cached("DELETE FROM search_terms WHERE rowid = ?1")?
        .execute([rowid])?;
    conn.prepare_cached("DELETE FROM search_keys WHERE rowid = ?1")?
        .execute([rowid])?;
    Ok(true)
}

/// [`SearchIndex::search`] on a connection.
pub(crate) fn search(
    conn: &Connection,
    query: &str,
    page: SearchPage,
) -> Result<SearchResults, SearchError> {
    let limit = page.limit.min(MAX_SEARCH_PAGE);
    let expression = match_expression(query);
    if expression.is_empty() || limit == 0 {
        return Ok(SearchResults {
            hits: Vec::new(),
            next: None,
        });
    }
    // FTS5 evaluates the whole expression, walks its doclists newest first (ORDER BY rowid
    // DESC and the rowid bound are handled by the table itself) and stops at the LIMIT; the
    // keys and texts are then read per hit (at most a page of primary-key reads).
    let sql = if page.after.is_some() {
        NEXT_PAGE
    } else {
        FIRST_PAGE
    };
    // One more than asked, to know whether there is a next page.
    let fetch = i64::try_from(limit).unwrap_or(i64::MAX) + 1;
    let mut stmt = conn.prepare_cached(sql)?;
    let rowids: Vec<i64> = match page.after {
        None => stmt
            .query_map(params![expression, fetch], |row| row.get(0))?
            .collect::<Result<_, _>>()?,
        Some(SearchPosition(after)) => stmt
            .query_map(params![expression, fetch, after], |row| row.get(0))?
            .collect::<Result<_, _>>()?,
    };
    let next = (rowids.len() > limit).then(|| SearchPosition(rowids[limit - 1]));
    let mut keys = conn
        .prepare_cached("SELECT conversation, message, body FROM search_keys WHERE rowid = ?1")?;
    let mut hits = Vec::with_capacity(limit.min(rowids.len()));
    for &rowid in rowids.iter().take(limit) {
        let (conversation, message, text) = keys
            .query_row([rowid], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .optional()?
            .ok_or(SearchError::Corrupt)?;
        hits.push(hit(conversation, message, text)?);
    }
    Ok(SearchResults { hits, next })
}

/// [`SearchIndex::index`] inside a caller's transaction.
pub(crate) fn upsert(
    conn: &Connection,
    conversation: ConversationId,
    message: MessageId,
    text: &str,
) -> Result<(), SearchError> {
    if let Some((rowid, old)) = indexed(conn, conversation, message)? {
        // A duplicate delivery leaves the index alone.
        if old != text {
            replace(conn, rowid, text)?;
        }
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO search_keys (conversation, message, body) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![
        sql_id(conversation.get()),
        sql_id(message.get()),
        text
    ])?;
    insert_terms(conn, conn.last_insert_rowid(), text)
}

/// Replaces the text indexed under `rowid` in both tables.
fn replace(conn: &Connection, rowid: i64, text: &str) -> Result<(), SearchError> {
    conn.prepare_cached("UPDATE search_keys SET body = ?2 WHERE rowid = ?1")?
        .execute(params![rowid, text])?;
    conn.prepare_cached("DELETE FROM search_terms WHERE rowid = ?1")?
        .execute([rowid])?;
    insert_terms(conn, rowid, text)
}

/// Indexes `text` in `search_terms` under `rowid` (which holds nothing there).
fn insert_terms(conn: &Connection, rowid: i64, text: &str) -> Result<(), SearchError> {
    let mut terms = String::new();
    index_terms(text, &mut terms);
    conn.prepare_cached("INSERT INTO search_terms (rowid, terms) VALUES (?1, ?2)")?
        .execute(params![rowid, terms])?;
    Ok(())
}

fn sql_id(id: u64) -> i64 {
    // IDs are at most `chat_core::MAX_ID`, which is `i64::MAX`.
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// The rowid and current text of an indexed message.
fn indexed(
    conn: &Connection,
    conversation: ConversationId,
    message: MessageId,
) -> Result<Option<(i64, String)>, SearchError> {
    Ok(conn
        .prepare_cached(
            "SELECT rowid, body FROM search_keys WHERE conversation = ?1 AND message = ?2",
        )?
        .query_row(
            params![sql_id(conversation.get()), sql_id(message.get())],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?)
}

fn hit(conversation: i64, message: i64, text: String) -> Result<SearchHit, SearchError> {
    let id = |n: i64| u64::try_from(n).map_err(|_| SearchError::Corrupt);
    Ok(SearchHit {
        conversation: ConversationId::new(id(conversation)?).map_err(|_| SearchError::Corrupt)?,
        message: MessageId::new(id(message)?).map_err(|_| SearchError::Corrupt)?,
        text,
    })
}

/// The FTS5 expression for `query`: one quoted phrase per term, side by side (all must
/// match). Empty if the query has no term.
fn match_expression(query: &str) -> String {
    let mut expression = String::new();
    for term in query.split(is_break).filter(|t| !t.is_empty()) {
        if !expression.is_empty() {
            expression.push(' ');
        }
        expression.push('"');
        let mut chars = term.chars();
        let quote = |c: char, out: &mut String| {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        };
        match (chars.next(), chars.next(), chars.next()) {
            // The trigram a one- or two-character term is indexed as (see `short_terms`).
            (Some(c), None, _) => {
                expression.push(MARK);
                quote(c, &mut expression);
                expression.push(MARK);
            }
            (Some(c), Some(d), None) => {
                quote(c, &mut expression);
                expression.push(MARK);
                quote(d, &mut expression);
            }
            // A substring, through the text's own trigrams.
            _ => term.chars().for_each(|c| quote(c, &mut expression)),
        }
        expression.push('"');
    }
    expression
}

/// What `search_terms` indexes for `text` (into `out`, cleared first): the text with control
/// characters turned into spaces, then [`SEPARATOR`] and the [`short_terms`] string.
fn index_terms(text: &str, out: &mut String) {
    out.clear();
    out.extend(text.chars().map(|c| if c.is_control() { ' ' } else { c }));
    let start = out.len();
    out.push(SEPARATOR);
    short_terms(text, out);
    if out.len() == start + SEPARATOR.len_utf8() {
        out.truncate(start);
    }
}

/// Appends to `out` a string whose trigrams include, for each token start in `text` (see the
/// module docs), `MARK c MARK` (its character `c`) and `c MARK d` (with the character `d`
/// after it, unless that is whitespace or a control character), and otherwise only trigrams
/// no query asks for (a mark or a separator where a query's trigram has none).
///
/// Each distinct term is written once, in chains that share characters where they can:
/// `MARK a MARK b MARK c MARK` holds a, ab, b, bc and c (a run of CJK characters is one chain),
/// while a word like "this" gives `MARK t MARK h` (t and th; `h` starts no token, so no
/// `MARK` may follow it, and the next chain begins after a [`SEPARATOR`]). Two characters other
/// than marks and separators are never adjacent, so no term of three or more characters can
/// match here.
fn short_terms(text: &str, out: &mut String) {
    // Sorted vectors rather than hash sets: cheaper for the short texts most messages are.
    // ASCII letters are folded here only to write fewer duplicates; FTS5 folds all case.
    let mut starts: Vec<char> = Vec::new();
    let mut pairs: Vec<(char, char)> = Vec::new();
    let mut prev: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let starts_token = !is_break(c) && (!is_word(c) || !prev.is_some_and(is_word));
        prev = Some(c);
        if !starts_token {
            continue;
        }
        let c = c.to_ascii_lowercase();
        starts.push(c);
        if let Some(&d) = chars.peek().filter(|&&d| !is_break(d)) {
            pairs.push((c, d.to_ascii_lowercase()));
        }
    }
    starts.sort_unstable();
    starts.dedup();
    pairs.sort_unstable();
    pairs.dedup();
    // For each start, the range of its pairs still to write, and whether its single is written.
    let mut next = vec![0; starts.len()];
    let mut end = vec![0; starts.len()];
    let mut at = 0;
    for (i, &c) in starts.iter().enumerate() {
        next[i] = at;
        while pairs.get(at).is_some_and(|&(p, _)| p == c) {
            at += 1;
        }
        end[i] = at;
    }
    let mut written = vec![false; starts.len()];
    let index = |c: char| starts.binary_search(&c).ok();
    // Chains start at characters no pair leads to, so they run as long as they can.
    let mut led_to: Vec<char> = pairs.iter().map(|&(_, d)| d).collect();
    led_to.sort_unstable();
    led_to.dedup();
    let mut order: Vec<usize> = (0..starts.len()).collect();
    order.sort_by_key(|&i| led_to.binary_search(&starts[i]).is_ok());
    for first in order {
        while next[first] < end[first] {
            begin_chain(out);
            out.push(starts[first]);
            written[first] = true;
            let mut at = first;
            loop {
                if next[at] == end[at] {
                    // Closes `MARK c MARK` for the chain's last character.
                    out.push(MARK);
                    break;
                }
                let (_, d) = pairs[next[at]];
                next[at] += 1;
                out.push(MARK);
                out.push(d);
                let Some(i) = index(d) else {
                    // `d` starts no token: nothing may follow it but a separator.
                    break;
                };
                written[i] = true;
                at = i;
            }
        }
        if !written[first] {
            written[first] = true;
            begin_chain(out);
            out.push(starts[first]);
            out.push(MARK);
        }
    }
}

/// Starts a chain with its [`MARK`]. After a chain that ended with a mark (`.. c MARK`) the
/// new one can follow directly: `c MARK MARK` and `MARK MARK d` are trigrams no query asks
/// for. After a chain that ended with a character that starts no token (or after the text),
/// a [`SEPARATOR`] comes first, or `MARK h MARK` would claim a token starting with `h`.
fn begin_chain(out: &mut String) {
    if !out.is_empty() && !out.ends_with(MARK) && !out.ends_with(SEPARATOR) {
        out.push(SEPARATOR);
    }
    out.push(MARK);
}

/// Separates terms, and ends a token.
fn is_break(c: char) -> bool {
    c.is_whitespace() || c.is_control()
}

/// Whether `c` belongs to a word of several characters (letters and digits of scripts written
/// with spaces); every other character that is not a break is a token of its own.
fn is_word(c: char) -> bool {
    c.is_alphanumeric() && !is_unspaced(c)
}

/// Characters of the Chinese, Japanese and Korean scripts (and their punctuation), where
/// words are not separated by spaces, so each character is a token of its own.
fn is_unspaced(c: char) -> bool {
    matches!(c,
        '\u{1100}'..='\u{11FF}'     // Hangul Jamo
        | '\u{2E80}'..='\u{2FDF}'   // CJK and Kangxi radicals
        | '\u{3000}'..='\u{303F}'   // CJK symbols and punctuation
        | '\u{3040}'..='\u{30FF}'   // Hiragana, Katakana
        | '\u{3100}'..='\u{31FF}'   // Bopomofo, Hangul compatibility Jamo, Katakana extensions
        | '\u{3200}'..='\u{4DBF}'   // enclosed CJK, compatibility, Extension A
        | '\u{4E00}'..='\u{9FFF}'   // CJK Unified Ideographs
        | '\u{A960}'..='\u{A97F}'   // Hangul Jamo Extended-A
        | '\u{AC00}'..='\u{D7FF}'   // Hangul syllables, Jamo Extended-B
        | '\u{F900}'..='\u{FAFF}'   // CJK compatibility ideographs
        | '\u{FF65}'..='\u{FFDC}'   // halfwidth Katakana and Hangul
        | '\u{1B000}'..='\u{1B16F}' // Kana supplement and extensions
        | '\u{20000}'..='\u{3FFFF}' // CJK Extensions B and later
    )
}

#[cfg(test)]
mod tests {
    use rusqlite::ToSql;
    use rusqlite::params_from_iter;

    use super::*;

    fn terms(text: &str) -> String {
        let mut out = String::new();
        short_terms(text, &mut out);
        out
    }

    #[test]
    fn short_terms_are_chains_of_marked_characters() {
        let m = MARK;
        let s = SEPARATOR;
        // A CJK run is one chain: 明, 明天, 天, 天见, 见.
        assert_eq!(terms("明天见"), format!("{m}明{m}天{m}见{m}"));
        // A word gives its first character and its first two.
        assert_eq!(terms("This"), format!("{m}t{m}h"));
        // Two words: the second chain needs a separator after a character that starts no
        // token; a closed chain (`.. MARK`) is followed directly.
        assert_eq!(terms("to be"), format!("{m}b{m}e{s}{m}t{m}o"));
        assert_eq!(terms("a b"), format!("{m}a{m}{m}b{m}"));
        // Duplicates are written once.
        assert_eq!(terms("go Go GO"), format!("{m}g{m}o"));
        assert_eq!(terms(" \t\u{1} "), "");
    }

    #[test]
    fn no_two_characters_of_the_text_are_adjacent_in_the_short_term_string() {
        // So a term of three or more characters can only match the text itself.
        let text = "The theory: that's it, 我们明天在图书馆见面，明天见！ 내일 a1 b2-c3 #7 👍🏽 ❤️";
        let out = terms(text);
        let chars: Vec<char> = out.chars().collect();
        assert!(
            chars
                .windows(2)
                .all(|w| w[0] == MARK || w[0] == SEPARATOR || w[1] == MARK || w[1] == SEPARATOR),
            "{out:?}"
        );
        let mut indexed = String::new();
        index_terms("a\u{1}b", &mut indexed);
        assert_eq!(indexed, format!("a b{SEPARATOR}{MARK}a{MARK}{MARK}b{MARK}"));
    }

    #[test]
    fn queries_are_one_phrase_per_term() {
        let m = MARK;
        assert_eq!(match_expression("  "), "");
        assert_eq!(
            match_expression("Library a 明天 \"x"),
            format!("\"Library\" \"{m}a{m}\" \"明{m}天\" \"\"\"{m}x\"")
        );
    }

    #[test]
    fn an_old_index_is_upgraded_in_one_step_with_or_without_a_transaction() {
        for in_transaction in [false, true] {
            let mut conn = Connection::open_in_memory().unwrap();
            conn.execute_batch(
                "CREATE TABLE search_keys (
                     rowid INTEGER PRIMARY KEY,
                     conversation INTEGER NOT NULL, message INTEGER NOT NULL,
                     UNIQUE (conversation, message));
                 CREATE VIRTUAL TABLE search_text USING fts5(body, tokenize = 'trigram');
                 INSERT INTO search_keys VALUES (1, 1, 1);
                 INSERT INTO search_text (rowid, body) VALUES (1, '明天 at noon');",
            )
            .unwrap();
            if in_transaction {
                let tx = conn.transaction().unwrap();
                create_schema(&tx).unwrap();
                tx.commit().unwrap();
            } else {
                create_schema(&conn).unwrap();
            }
            assert!(conn.is_autocommit());
            for query in ["明", "at", "noon"] {
                let hits = search(&conn, query, SearchPage::first(5)).unwrap().hits;
                assert_eq!(hits.len(), 1, "{query}");
                assert_eq!(hits[0].text, "明天 at noon");
            }
            // Idempotent.
            create_schema(&conn).unwrap();
            assert_eq!(
                search(&conn, "明", SearchPage::first(5))
                    .unwrap()
                    .hits
                    .len(),
                1
            );
        }
    }

    #[test]
    fn the_planner_walks_the_index_newest_first_without_sorting() {
        let conn = Connection::open_in_memory().unwrap();
        create_schema(&conn).unwrap();
        for (sql, args) in [(FIRST_PAGE, 2), (NEXT_PAGE, 3)] {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let plan: Vec<String> = stmt
                .query_map(
                    params_from_iter([&"\"abc\"" as &dyn ToSql, &21, &5][..args].iter()),
                    |row| row.get(3),
                )
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(plan.len(), 1, "{plan:?}");
            assert!(
                plan[0].starts_with("SCAN search_terms VIRTUAL TABLE"),
                "{plan:?}"
            );
        }
    }
}
