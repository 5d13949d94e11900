//! The conformance suite on the in-memory backend.

use std::sync::Arc;

use chat_storage::MemoryStore;
use chat_storage::testing::Fixture;

async fn fresh() -> Option<Fixture> {
    Some(Fixture::new(Arc::new(MemoryStore::new())))
}

chat_storage::conformance_tests!(fresh());

#[tokio::test]
async fn open_picks_memory() {
    assert!(chat_storage::open("memory:").await.is_ok());
    assert!(chat_storage::open("nosuch://x").await.is_err());
}
