//! A small connection pool: at most `size` connections, each with every statement of the
//! backend prepared once when it connects, so a query costs one round trip.
//!
//! Broken connections are dropped when returned and replaced on demand. The idle list is a
//! `std::sync::Mutex`, held only to push or pop, never across an `.await`.

use std::collections::HashMap;
use std::sync::Mutex;

use chat_core::{StoreError, StoreResult};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::{Client, Config, NoTls, Statement};

use super::ops::STATEMENTS;
use crate::common::failure;

/// Prepared statements by their SQL text.
pub(crate) type Statements = HashMap<&'static str, Statement>;

/// One pooled connection.
pub(crate) struct PgConn {
    pub(crate) client: Client,
    pub(crate) statements: Statements,
}

pub(crate) struct Pool {
    config: Config,
    idle: Mutex<Vec<PgConn>>,
    permits: Semaphore,
}

/// A connection on loan; goes back to the pool when dropped, unless it broke.
pub(crate) struct Pooled<'a> {
    conn: Option<PgConn>,
    pool: &'a Pool,
    _permit: SemaphorePermit<'a>,
}

impl Pool {
    pub(crate) fn new(config: Config, size: usize) -> Self {
        Self {
            config,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
        }
    }

    /// A connection, waiting while all are in use.
    pub(crate) async fn get(&self) -> StoreResult<Pooled<'_>> {
        let permit = self.permits.acquire().await.map_err(StoreError::backend)?;
        let idle = loop {
            let next = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            match next {
                Some(conn) if conn.client.is_closed() => continue,
                other => break other,
            }
        };
        let conn = match idle {
            Some(conn) => conn,
            None => PgConn::open(&self.config).await?,
        };
        Ok(Pooled {
            conn: Some(conn),
            pool: self,
            _permit: permit,
        })
    }
}

impl PgConn {
    /// Opens a connection and prepares every statement on it.
    pub(crate) async fn open(config: &Config) -> StoreResult<Self> {
        let client = connect(config).await?;
        let mut statements = HashMap::with_capacity(STATEMENTS.len());
        for &sql in STATEMENTS {
            let statement = client.prepare(sql).await.map_err(StoreError::backend)?;
            statements.insert(sql, statement);
        }
        Ok(Self { client, statements })
    }
}

/// Opens one connection and drives it on a spawned task.
pub(crate) async fn connect(config: &Config) -> StoreResult<Client> {
    let (client, connection) = config.connect(NoTls).await.map_err(StoreError::backend)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(cause = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

impl Pooled<'_> {
    /// The connection.
    pub(crate) fn conn(&mut self) -> StoreResult<&mut PgConn> {
        self.conn
            .as_mut()
            .ok_or_else(|| failure("pooled connection already returned"))
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && !conn.client.is_closed()
            && let Ok(mut idle) = self.pool.idle.lock()
        {
            idle.push(conn);
        }
    }
}
