//! Local search (R-MSG-9): English and CJK text is found, edits are reflected, deletes
//! forgotten, short queries work, pages chain.

use chat_client::{ConversationId, MessageId, SearchIndex, SearchPage};

fn conv(n: u64) -> ConversationId {
    ConversationId::new(n).unwrap()
}

fn mid(n: u64) -> MessageId {
    MessageId::new(n).unwrap()
}

fn ids(index: &SearchIndex, query: &str) -> Vec<u64> {
    let results = index.search(query, SearchPage::first(50)).unwrap();
    results.hits.iter().map(|h| h.message.get()).collect()
}

fn sample() -> SearchIndex {
    let index = SearchIndex::in_memory().unwrap();
    index
        .index(conv(1), mid(1), "Meet me at the Library at noon")
        .unwrap();
    index
        .index(conv(1), mid(2), "我们明天在图书馆见面")
        .unwrap();
    index
        .index(conv(2), mid(1), "東京駅で待ち合わせしましょう")
        .unwrap();
    index
        .index(conv(2), mid(2), "내일 도서관에서 만나요")
        .unwrap();
    index.index(conv(2), mid(3), "100% sure, use a_b").unwrap();
    index
}

#[test]
fn english_and_cjk_are_found() {
    let index = sample();
    assert_eq!(ids(&index, "library"), vec![1]);
    assert_eq!(ids(&index, "LIBRARY noon"), vec![1]);
    assert_eq!(ids(&index, "library tomorrow"), Vec::<u64>::new());
    assert_eq!(ids(&index, "图书馆"), vec![2]);
    assert_eq!(ids(&index, "待ち合わせ"), vec![1]);
    assert_eq!(ids(&index, "도서관"), vec![2]);
    let hit = &index.search("東京駅", SearchPage::first(5)).unwrap().hits[0];
    assert_eq!((hit.conversation, hit.message), (conv(2), mid(1)));
}

#[test]
fn one_and_two_character_queries_fall_back_to_like() {
    let index = sample();
    assert_eq!(ids(&index, "明天"), vec![2]);
    assert_eq!(ids(&index, "駅"), vec![1]);
    assert_eq!(ids(&index, "만나"), vec![2]);
    assert_eq!(ids(&index, "at"), vec![1]);
    // Wildcards are literal: "%" finds only the text with a percent sign.
    assert_eq!(ids(&index, "%"), vec![3]);
    assert_eq!(ids(&index, "a_"), vec![3]);
    // Short and long terms together.
    assert_eq!(ids(&index, "图书馆 明天"), vec![2]);
    assert_eq!(ids(&index, "\"quoted\""), Vec::<u64>::new());
    assert_eq!(ids(&index, "   "), Vec::<u64>::new());
}

#[test]
fn edits_are_reflected_and_deletes_forgotten() {
    let index = sample();
    assert!(
        index
            .edit(conv(1), mid(1), "Meet me at the café instead")
            .unwrap()
    );
    assert_eq!(ids(&index, "library"), Vec::<u64>::new());
    assert_eq!(ids(&index, "café"), vec![1]);
    assert!(index.delete(conv(1), mid(1)).unwrap());
    assert_eq!(ids(&index, "café"), Vec::<u64>::new());
    assert_eq!(ids(&index, "Me"), Vec::<u64>::new());
    assert!(!index.delete(conv(1), mid(1)).unwrap());
    assert!(!index.edit(conv(1), mid(1), "gone").unwrap());
    // Indexing a duplicate replaces, it does not add.
    index
        .index(conv(2), mid(2), "내일 도서관에서 만나요")
        .unwrap();
    assert_eq!(index.len().unwrap(), 4);
}

#[test]
fn pages_chain_newest_first_without_repeats() {
    let index = SearchIndex::in_memory().unwrap();
    index
        .index_all((1..=25).map(|n| (conv(1 + n % 2), mid(n), "hello there")))
        .unwrap();
    let mut seen = Vec::new();
    let mut page = SearchPage::first(10);
    loop {
        let results = index.search("hello", page).unwrap();
        seen.extend(results.hits.iter().map(|h| h.message.get()));
        match results.next {
            Some(next) => page.after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, (1..=25).rev().collect::<Vec<_>>());
}

#[test]
fn the_index_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("search.db");
    SearchIndex::open(&path)
        .unwrap()
        .index(conv(1), mid(7), "persistent 持久")
        .unwrap();
    let index = SearchIndex::open(&path).unwrap();
    assert_eq!(ids(&index, "persistent"), vec![7]);
    assert_eq!(ids(&index, "持久"), vec![7]);
}
