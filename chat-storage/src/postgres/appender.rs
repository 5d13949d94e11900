//! Group commit for appends, across the callers of one store.
//!
//! `append` queues its message and waits. A few appender tasks (`PostgresOptions::appenders`),
//! each with its own connection, take the first queued request and everything queued behind
//! it (up to a batch limit), run them in one transaction ([`ops::append_batch`]) and answer
//! every caller once the commit is durable. A request of several messages (`append_all`)
//! goes into one batch whole, in its order, so they get IDs in that order. So a commit's WAL flush, its round trips and the
//! per-statement work are shared by the whole batch, and while one appender waits for its
//! flush another runs the next batch.
//!
//! A refused request writes nothing and does not affect the others. A batch that lost a
//! race (a deadlock, a client key taken meanwhile by another node) runs again, up to
//! [`MAX_RETRIES`] times; a batch that fails otherwise runs again one request at a time, so
//! one bad request fails alone. Several appenders, and several nodes, run batches
//! concurrently: the row locks of [`ops`] order them.

use std::sync::Arc;

use chat_core::{Appended, NewMessage, StoreResult};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::Config;

use super::MAX_RETRIES;
use super::ops::{self, Db, Outcome};
use super::pool::PgConn;
use crate::common::failure;

/// Most messages queued before `append` waits for room.
const QUEUE: usize = 4096;

/// Queued appends, run in this order in one batch, and where to answer them.
struct Request {
    messages: Vec<NewMessage>,
    reply: oneshot::Sender<Vec<StoreResult<Appended>>>,
}

/// The queue the appender tasks take batches from. The tasks stop when it is dropped.
pub(crate) struct Appender {
    queue: mpsc::Sender<Request>,
}

impl Appender {
    /// Starts `tasks` appender tasks (at least one) on the current runtime; each connects
    /// when it gets its first batch, and again after its connection broke.
    pub(crate) fn start(config: Config, tasks: usize, max_batch: usize) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let config = Arc::new(config);
        for _ in 0..tasks.max(1) {
            tokio::spawn(run(Arc::clone(&config), Arc::clone(&rx), max_batch.max(1)));
        }
        Self { queue }
    }

    /// Appends `messages` in the next batch, in their order; returns once its commit is
    /// durable, with each message's result.
    pub(crate) async fn append(&self, messages: Vec<NewMessage>) -> Vec<StoreResult<Appended>> {
        let count = messages.len();
        let (reply, answer) = oneshot::channel();
        let why = match self.queue.send(Request { messages, reply }).await {
            Ok(()) => match answer.await {
                Ok(results) => return results,
                Err(_) => "the appender stopped before answering",
            },
            Err(_) => "the appenders have stopped",
        };
        (0..count).map(|_| Err(failure(why))).collect()
    }
}

/// One appender: takes a batch, runs it, answers, until the queue is dropped.
async fn run(config: Arc<Config>, queue: Arc<Mutex<mpsc::Receiver<Request>>>, max_batch: usize) {
    let mut conn: Option<PgConn> = None;
    loop {
        let batch = {
            let mut rx = queue.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut taken = first.messages.len();
            let mut batch = vec![first];
            while taken < max_batch
                && let Ok(next) = rx.try_recv()
            {
                taken += next.messages.len();
                batch.push(next);
            }
            batch
        };
        let messages: Vec<&NewMessage> = batch.iter().flat_map(|r| &r.messages).collect();
        let results = match connection(&config, &mut conn).await {
            Ok(c) => commit(c, &messages).await,
            Err(e) => {
                let why = e.to_string();
                messages
                    .iter()
                    .map(|_| Err(failure(format!("connecting: {why}"))))
                    .collect()
            }
        };
        if conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            conn = None;
        }
        let mut results = results.into_iter();
        for request in batch {
            let answers = results.by_ref().take(request.messages.len()).collect();
            // The caller may have gone away; the appends stand either way.
            let _ = request.reply.send(answers);
        }
    }
}

/// The appender's connection, opened if it has none.
async fn connection<'c>(config: &Config, conn: &'c mut Option<PgConn>) -> StoreResult<&'c PgConn> {
    if conn.is_none() {
        *conn = Some(PgConn::open(config).await?);
    }
    conn.as_ref()
        .ok_or_else(|| failure("appender connection missing"))
}

/// Runs `batch` to its answers: the whole batch again after a lost race, one request at a
/// time after any other failure.
async fn commit(conn: &PgConn, batch: &[&NewMessage]) -> Vec<StoreResult<Appended>> {
    let mut attempt = 0;
    let error = loop {
        let started = std::time::Instant::now();
        match ops::append_batch(&conn.client, &conn.statements, batch).await {
            Ok(outcomes) => {
                metrics::histogram!(crate::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
                return answers(conn, batch, outcomes).await;
            }
            Err(e) if attempt < MAX_RETRIES && ops::should_retry(&e) => attempt += 1,
            Err(e) => break e,
        }
    };
    if batch.len() == 1 || conn.client.is_closed() {
        let why = error.to_string();
        let mut results = vec![Err(error)];
        results.extend((1..batch.len()).map(|_| Err(failure(format!("batch failed: {why}")))));
        return results;
    }
    tracing::warn!(cause = %error, batch = batch.len(), "append batch failed; running it one by one");
    let mut results = Vec::with_capacity(batch.len());
    for &message in batch {
        let one = Box::pin(commit(conn, &[message])).await;
        results.extend(one);
    }
    results
}

/// The callers' answers, looking up the senders that need it.
async fn answers(
    conn: &PgConn,
    batch: &[&NewMessage],
    outcomes: Vec<Outcome>,
) -> Vec<StoreResult<Appended>> {
    let mut results = Vec::with_capacity(outcomes.len());
    for (message, outcome) in batch.iter().zip(outcomes) {
        results.push(match outcome {
            Outcome::Done(result) => result,
            Outcome::NotMemberOrUnknown => {
                let db = Db::client(&conn.client, &conn.statements);
                Err(ops::sender_refusal(&db, message.sender).await)
            }
            Outcome::Written { .. } => Err(failure("append was not completed")),
        });
    }
    results
}

impl std::fmt::Debug for Appender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appender").finish_non_exhaustive()
    }
}
