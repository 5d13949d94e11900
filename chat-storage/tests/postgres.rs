//! The conformance suite on the PostgreSQL backend, each test in a fresh schema so tests run
//! in parallel. Reads the server's URL from `CHAT_TEST_POSTGRES_URL`; without it every test
//! prints one line saying it was skipped, and passes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use chat_core::StoreError;
use chat_storage::testing::Fixture;
use chat_storage::{PostgresOptions, PostgresStore};

const URL_VAR: &str = "CHAT_TEST_POSTGRES_URL";

fn url() -> Option<String> {
    let url = std::env::var(URL_VAR).ok().filter(|u| !u.is_empty());
    if url.is_none() {
        eprintln!("skipped: set {URL_VAR} (e.g. postgres://postgres@127.0.0.1:5432/test) to run");
    }
    url
}

/// A schema name no other test (in this or a concurrent run) uses.
fn schema_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "chat_test_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// Drops the test's schema when the test ends.
struct DropSchema {
    url: String,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread
        // with its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let Ok(rt) = rt else { return };
            rt.block_on(async {
                let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(conn);
                let _ = client
                    .batch_execute(&format!(
                        "SET lock_timeout = '10s'; DROP SCHEMA {schema} CASCADE"
                    ))
                    .await;
            });
        });
        let _ = cleanup.join();
    }
}

async fn fresh() -> Option<Fixture> {
    let url = url()?;
    let schema = schema_name();
    let options = PostgresOptions::default()
        .pool_size(8)
        .schema(schema.clone());
    let store = PostgresStore::connect(&url, options)
        .await
        .expect("connect");
    Some(Fixture::with_guard(
        Arc::new(store),
        DropSchema { url, schema },
    ))
}

chat_storage::conformance_tests!(fresh());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_schema_is_refused() {
    let Some(url) = url() else { return };
    let schema = schema_name();
    let _cleanup = DropSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    let options = PostgresOptions::default()
        .pool_size(1)
        .schema(schema.clone());
    drop(
        PostgresStore::connect(&url, options.clone())
            .await
            .expect("connect"),
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("raw");
    tokio::spawn(conn);
    let row = client
        .query_one(
            &format!("SELECT max(version) FROM {schema}.schema_version"),
            &[],
        )
        .await
        .expect("version");
    let current: i32 = row.get(0);
    client
        .execute(
            &format!("UPDATE {schema}.schema_version SET version = version + 1"),
            &[],
        )
        .await
        .expect("bump");
    let err = PostgresStore::connect(&url, options)
        .await
        .expect_err("refused");
    match err {
        StoreError::SchemaTooNew { found, supported } => {
            assert_eq!((found, supported), (current as u32 + 1, current as u32));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_accepts_postgres_urls() {
    let Some(url) = url() else { return };
    let schema = schema_name();
    let _cleanup = DropSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("raw");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("schema");
    let sep = if url.contains('?') { '&' } else { '?' };
    let store = chat_storage::open(&format!("{url}{sep}options=-csearch_path%3D{schema}"))
        .await
        .expect("open");
    let user = chat_storage::testing::user(&*store).await;
    assert!(store.user(user).await.expect("user").is_some());
    let tables = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
            &[&schema],
        )
        .await
        .expect("tables");
    assert!(
        tables.get::<_, i64>(0) > 0,
        "the store's tables are in the schema from the URL"
    );
}
