//! A PostgreSQL database of a test's own, for tests that start whole nodes on one (the
//! conformance suite uses a schema per test instead, through `PostgresOptions::schema`).

use std::sync::atomic::{AtomicU32, Ordering};

/// A database created for one test on the server at `CHAT_TEST_POSTGRES_URL` and dropped,
/// with any connections still open to it, when this is dropped (also when the test fails).
pub struct FreshPostgres {
    admin: String,
    name: String,
}

impl FreshPostgres {
    /// Creates a database named `<kind>_<process>_<n>`, or returns `None` when
    /// `CHAT_TEST_POSTGRES_URL` is unset (a visible skip; a failure under
    /// `CHAT_TEST_REQUIRE_SERVICES=1`, see [`super::service_url`]).
    ///
    /// # Panics
    /// When the server cannot be reached or refuses `CREATE DATABASE`: the test cannot run.
    #[allow(clippy::expect_used)]
    pub async fn create(kind: &str) -> Option<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let admin = super::service_url("CHAT_TEST_POSTGRES_URL")?;
        // Unique among concurrent test processes (the process ID) and within one (the
        // counter); `kind` must be a plain SQL identifier.
        let name = format!(
            "{kind}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .expect("CHAT_TEST_POSTGRES_URL reachable");
        tokio::spawn(conn);
        // A leftover of a killed process that had the same ID goes first (one statement
        // each: neither may run inside the transaction a multi-statement query makes).
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .expect("DROP DATABASE");
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        Some(Self { admin, name })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL: the server and credentials of `CHAT_TEST_POSTGRES_URL` (any query string
    /// kept) with this database instead of the URL's own.
    pub fn url(&self) -> String {
        let (base, query) = match self.admin.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (self.admin.as_str(), String::new()),
        };
        let server = match base.split_once("://") {
            Some((scheme, rest)) => {
                let host = rest.split_once('/').map_or(rest, |(host, _)| host);
                format!("{scheme}://{host}")
            }
            None => base.to_owned(),
        };
        format!("{server}/{}{query}", self.name)
    }
}

impl std::fmt::Debug for FreshPostgres {
    // The admin URL may carry a password: only the database's name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreshPostgres")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for FreshPostgres {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop may run inside the test's runtime, which cannot be blocked on: a thread with
        // a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok((client, conn)) =
                    tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(conn);
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        });
        let _ = dropped.join();
    }
}
