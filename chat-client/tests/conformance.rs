//! The store conformance suite as a custom store's tests reach it (`testing` feature):
//! here against the in-memory store.

use chat_client::MemoryStore;
use chat_client::store::{ClientStore, conformance};

#[test]
fn the_memory_store_passes_the_public_suite() {
    let store = MemoryStore::new();
    conformance::run(&store);
    assert_eq!(store.cursor().unwrap().get(), 41);
}
