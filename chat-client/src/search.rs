//! [`SearchIndex`]: local full-text search over decrypted messages (R-MSG-9).
//!
//! The server cannot read messages, so search happens here, over the device's own plaintext.
//! The index is an SQLite FTS5 table with the `trigram` tokenizer: every run of three
//! characters is a token, so a query finds any substring of at least three characters in any
//! script, Chinese, Japanese and Korean included (they have no spaces to split words at).
//! Matching is case-insensitive: the trigram tokenizer folds Unicode case; the short-term
//! fallback below folds ASCII letters only.
//!
//! A query is split at whitespace into terms, and a hit contains every term. A term of three
//! or more characters goes through the trigram index (`MATCH`). A term of one or two
//! characters has no trigram, so it is matched over the same table with `LIKE '%term%'` (if
//! it has ASCII letters, which `LIKE` folds like the index does) or `instr` (otherwise, e.g.
//! CJK): still correct, but that part is a scan. A query with at least one long term is
//! narrowed by the index first. A query of only short terms scans newest first and stops at
//! a page of hits, so a common one is quick, but a rare one reads every indexed message: about
//! 30 to 50 ms at 200,000 messages (docs/BENCHMARKS.md), over the 20 ms target.
//!
//! The index holds each message's *current* text: [`SearchIndex::edit`] replaces it and
//! [`SearchIndex::delete`] removes it, so an edited-away or deleted text is not found again.
//! Hits come newest-indexed first, a page at a time, with a keyset position that stays valid
//! while messages are added.

use std::fmt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use chat_core::{ConversationId, MessageId};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS search_keys (
    rowid INTEGER PRIMARY KEY,
    conversation INTEGER NOT NULL, message INTEGER NOT NULL,
    UNIQUE (conversation, message));
CREATE VIRTUAL TABLE IF NOT EXISTS search_text USING fts5(body, tokenize = 'trigram');
";

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

/// One message that matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchHit {
    /// Its conversation.
    pub conversation: ConversationId,
    /// The message.
    pub message: MessageId,
    /// Its current text.
    pub text: String,
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

    /// An index in the database of `conn` (its tables are created if missing).
    pub fn with_connection(conn: Connection) -> Result<Self, SearchError> {
        create_schema(&conn)?;
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
        edit(&self.conn(), conversation, message, text)
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

    /// The messages containing every whitespace-separated term of `query`, newest indexed
    /// first. An empty query finds nothing.
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

/// Creates the index's tables in `conn` if they are missing.
pub(crate) fn create_schema(conn: &Connection) -> Result<(), SearchError> {
    conn.execute_batch(SCHEMA)?;
    Ok(())
}

/// [`SearchIndex::edit`] on a connection (or inside a caller's transaction).
pub(crate) fn edit(
    conn: &Connection,
    conversation: ConversationId,
    message: MessageId,
    text: &str,
) -> Result<bool, SearchError> {
    let Some(rowid) = rowid(conn, conversation, message)? else {
        return Ok(false);
    };
    conn.prepare_cached("UPDATE search_text SET body = ?2 WHERE rowid = ?1")?
        .execute(params![rowid, text])?;
    Ok(true)
}

/// [`SearchIndex::delete`] inside a caller's transaction.
pub(crate) fn remove(
    conn: &Connection,
    conversation: ConversationId,
    message: MessageId,
) -> Result<bool, SearchError> {
    let Some(rowid) = rowid(conn, conversation, message)? else {
        return Ok(false);
    };
    conn.prepare_cached("DELETE FROM search_text WHERE rowid = ?1")?
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
    let terms: Vec<&str> = query.split_whitespace().collect();
    let limit = page.limit.min(MAX_SEARCH_PAGE);
    if terms.is_empty() || limit == 0 {
        return Ok(SearchResults {
            hits: Vec::new(),
            next: None,
        });
    }
    let mut sql = String::from("SELECT rowid, body FROM search_text WHERE 1");
    let mut args: Vec<Value> = Vec::new();
    let long: Vec<String> = terms
        .iter()
        .filter(|t| t.chars().nth(2).is_some())
        .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
        .collect();
    if !long.is_empty() {
        // Quoted terms side by side: each is a phrase (a substring), all must match.
        sql.push_str(" AND search_text MATCH ?");
        args.push(Value::Text(long.join(" ")));
    }
    for short in terms.iter().filter(|t| t.chars().nth(2).is_none()) {
        if short.chars().any(|c| c.is_ascii_alphabetic()) {
            // LIKE folds ASCII case, as the trigram index does.
            sql.push_str(" AND body LIKE ? ESCAPE '\\'");
            args.push(Value::Text(format!("%{}%", escape_like(short))));
        } else {
            // No ASCII letter to fold: a plain substring test, cheaper than LIKE.
            sql.push_str(" AND instr(body, ?) > 0");
            args.push(Value::Text((*short).to_owned()));
        }
    }
    if let Some(SearchPosition(after)) = page.after {
        sql.push_str(" AND rowid < ?");
        args.push(Value::Integer(after));
    }
    sql.push_str(" ORDER BY rowid DESC LIMIT ?");
    // One more than asked, to know whether there is a next page.
    args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX) + 1));

    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(args), |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
    })?;
    let mut hits = Vec::new();
    let mut last = None;
    let mut next = None;
    // The keys are looked up per hit (at most a page of primary-key reads) rather than
    // joined, so the planner always scans the FTS table, newest first, and stops early.
    let mut keys =
        conn.prepare_cached("SELECT conversation, message FROM search_keys WHERE rowid = ?1")?;
    for row in rows {
        let (rowid, text) = row?;
        if hits.len() == limit {
            next = last.map(SearchPosition);
            break;
        }
        last = Some(rowid);
        let (conversation, message) =
            keys.query_row([rowid], |row| Ok((row.get(0)?, row.get(1)?)))?;
        hits.push(hit(conversation, message, text)?);
    }
    Ok(SearchResults { hits, next })
}

fn sql_id(id: u64) -> i64 {
    // IDs are at most `chat_core::MAX_ID`, which is `i64::MAX`.
    i64::try_from(id).unwrap_or(i64::MAX)
}

fn rowid(
    conn: &Connection,
    conversation: ConversationId,
    message: MessageId,
) -> Result<Option<i64>, SearchError> {
    Ok(conn
        .prepare_cached("SELECT rowid FROM search_keys WHERE conversation = ?1 AND message = ?2")?
        .query_row(
            params![sql_id(conversation.get()), sql_id(message.get())],
            |row| row.get(0),
        )
        .optional()?)
}

/// [`SearchIndex::index`] inside a caller's transaction.
pub(crate) fn upsert(
    conn: &Connection,
    conversation: ConversationId,
    message: MessageId,
    text: &str,
) -> Result<(), SearchError> {
    if let Some(rowid) = rowid(conn, conversation, message)? {
        conn.prepare_cached("UPDATE search_text SET body = ?2 WHERE rowid = ?1")?
            .execute(params![rowid, text])?;
        return Ok(());
    }
    conn.prepare_cached("INSERT INTO search_keys (conversation, message) VALUES (?1, ?2)")?
        .execute(params![sql_id(conversation.get()), sql_id(message.get())])?;
    let rowid = conn.last_insert_rowid();
    conn.prepare_cached("INSERT INTO search_text (rowid, body) VALUES (?1, ?2)")?
        .execute(params![rowid, text])?;
    Ok(())
}

fn hit(conversation: i64, message: i64, text: String) -> Result<SearchHit, SearchError> {
    let id = |n: i64| u64::try_from(n).map_err(|_| SearchError::Corrupt);
    Ok(SearchHit {
        conversation: ConversationId::new(id(conversation)?).map_err(|_| SearchError::Corrupt)?,
        message: MessageId::new(id(message)?).map_err(|_| SearchError::Corrupt)?,
        text,
    })
}

/// Escapes `LIKE`'s wildcards (with `\`, the query's `ESCAPE` character).
fn escape_like(term: &str) -> String {
    let mut out = String::with_capacity(term.len());
    for c in term.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
