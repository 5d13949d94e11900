//! Local search (R-MSG-9): English and CJK text is found, edits are reflected, deletes
//! forgotten, short queries work (at the start of a token), pages chain, an index written by
//! the first version is upgraded, and one- and two-character terms match exactly what the
//! rule in the module docs says, checked against a naive model.

use chat_client::store::SearchIndex;
use chat_client::{ConversationId, MessageId, SearchPage};

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
fn one_and_two_character_terms_match_at_the_start_of_a_token() {
    let index = sample();
    // CJK, kana and Hangul: every character starts a token, so any substring matches.
    assert_eq!(ids(&index, "明天"), vec![2]);
    assert_eq!(ids(&index, "书"), vec![2]);
    assert_eq!(ids(&index, "駅"), vec![1]);
    assert_eq!(ids(&index, "ち"), vec![1]);
    assert_eq!(ids(&index, "合わ"), vec![1]);
    assert_eq!(ids(&index, "만나"), vec![2]);
    assert_eq!(ids(&index, "서"), vec![2]);
    assert_eq!(ids(&index, "관에"), vec![2]);
    assert_eq!(ids(&index, "明後"), Vec::<u64>::new());
    // Latin: the start of a word, any case.
    assert_eq!(ids(&index, "at"), vec![1]);
    assert_eq!(ids(&index, "li"), vec![1]);
    assert_eq!(ids(&index, "LI"), vec![1]);
    assert_eq!(ids(&index, "M"), vec![1]);
    assert_eq!(ids(&index, "ib"), Vec::<u64>::new());
    assert_eq!(ids(&index, "ee"), Vec::<u64>::new());
    assert_eq!(ids(&index, "10"), vec![3]);
    assert_eq!(ids(&index, "00"), Vec::<u64>::new());
    // Punctuation and symbols are tokens of their own; wildcards are literal.
    assert_eq!(ids(&index, "%"), vec![3]);
    assert_eq!(ids(&index, "a_"), vec![3]);
    assert_eq!(ids(&index, "_b"), vec![3]);
    assert_eq!(ids(&index, ","), vec![3]);
    assert_eq!(ids(&index, "\"quoted\""), Vec::<u64>::new());
    assert_eq!(ids(&index, "\""), Vec::<u64>::new());
    assert_eq!(ids(&index, "   "), Vec::<u64>::new());
}

#[test]
fn short_and_long_terms_together() {
    let index = sample();
    assert_eq!(ids(&index, "图书馆 明天"), vec![2]);
    assert_eq!(ids(&index, "library no"), vec![1]);
    assert_eq!(ids(&index, "no Library"), vec![1]);
    assert_eq!(ids(&index, "library ib"), Vec::<u64>::new());
    assert_eq!(ids(&index, "library 駅"), Vec::<u64>::new());
    assert_eq!(ids(&index, "東京駅 で"), vec![1]);
    assert_eq!(ids(&index, "도서관 만 요"), vec![2]);
    assert_eq!(ids(&index, "sure a_ %"), vec![3]);
    // Terms are also separated by control characters.
    assert_eq!(ids(&index, "library\u{1}no"), vec![1]);
}

#[test]
fn emoji_and_other_scripts() {
    let index = SearchIndex::in_memory().unwrap();
    index.index(conv(1), mid(1), "Привет, мир 👍🏽").unwrap();
    index.index(conv(1), mid(2), "❤️ Ελλάδα").unwrap();
    index
        .index(conv(1), mid(3), "tab\tand\u{1}control")
        .unwrap();
    assert_eq!(ids(&index, "пр"), vec![1]);
    assert_eq!(ids(&index, "ми"), vec![1]);
    assert_eq!(ids(&index, "ив"), Vec::<u64>::new());
    assert_eq!(ids(&index, "👍"), vec![1]);
    assert_eq!(ids(&index, "👍🏽"), vec![1]);
    assert_eq!(ids(&index, "❤️"), vec![2]);
    assert_eq!(ids(&index, "ελ"), vec![2]);
    // A control character ends a word like a space does, and no term spans it.
    assert_eq!(ids(&index, "co"), vec![3]);
    assert_eq!(ids(&index, "dc"), Vec::<u64>::new());
    assert_eq!(ids(&index, "andcontrol"), Vec::<u64>::new());
    assert_eq!(ids(&index, "and control"), vec![3]);
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
    assert_eq!(ids(&index, "li"), Vec::<u64>::new());
    assert_eq!(ids(&index, "no"), Vec::<u64>::new());
    assert_eq!(ids(&index, "café"), vec![1]);
    assert_eq!(ids(&index, "ca"), vec![1]);
    assert_eq!(ids(&index, "in"), vec![1]);
    assert!(index.delete(conv(1), mid(1)).unwrap());
    assert_eq!(ids(&index, "café"), Vec::<u64>::new());
    assert_eq!(ids(&index, "Me"), Vec::<u64>::new());
    assert_eq!(ids(&index, "c"), Vec::<u64>::new());
    assert!(!index.delete(conv(1), mid(1)).unwrap());
    assert!(!index.edit(conv(1), mid(1), "gone").unwrap());
    assert_eq!(ids(&index, "go"), Vec::<u64>::new());
    // CJK: an edited-away character is gone, a deleted message is not found by one.
    assert!(index.edit(conv(1), mid(2), "我们后天见").unwrap());
    assert_eq!(ids(&index, "明"), Vec::<u64>::new());
    assert_eq!(ids(&index, "明天"), Vec::<u64>::new());
    assert_eq!(ids(&index, "后天"), vec![2]);
    assert!(index.delete(conv(1), mid(2)).unwrap());
    assert_eq!(ids(&index, "见"), Vec::<u64>::new());
    assert_eq!(ids(&index, "我们"), Vec::<u64>::new());
    // Indexing a duplicate replaces, it does not add; indexing new text for it replaces it.
    index
        .index(conv(2), mid(2), "내일 도서관에서 만나요")
        .unwrap();
    assert_eq!(index.len().unwrap(), 3);
    index.index(conv(2), mid(2), "모레 봐요").unwrap();
    assert_eq!(ids(&index, "만"), Vec::<u64>::new());
    assert_eq!(ids(&index, "봐"), vec![2]);
    assert_eq!(index.len().unwrap(), 3);
}

fn all_pages(index: &SearchIndex, query: &str, limit: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut page = SearchPage::first(limit);
    loop {
        let results = index.search(query, page).unwrap();
        assert!(results.hits.len() <= limit);
        seen.extend(results.hits.iter().map(|h| h.message.get()));
        match results.next {
            Some(next) => page.after = Some(next),
            None => break,
        }
    }
    seen
}

#[test]
fn pages_chain_newest_first_without_repeats() {
    let index = SearchIndex::in_memory().unwrap();
    index
        .index_all((1..=25).map(|n| (conv(1 + n % 2), mid(n), "hello there")))
        .unwrap();
    assert_eq!(
        all_pages(&index, "hello", 10),
        (1..=25).rev().collect::<Vec<_>>()
    );
}

#[test]
fn pages_chain_for_short_and_mixed_queries() {
    let index = SearchIndex::in_memory().unwrap();
    let texts = ["hi there 你好", "hello 世界", "this is it"];
    index
        .index_all((1..=60).map(|n| (conv(1), mid(n), texts[(n % 3) as usize])))
        .unwrap();
    let with = |text: &str| -> Vec<u64> {
        (1..=60)
            .rev()
            .filter(|&n| texts[(n % 3) as usize] == text)
            .collect()
    };
    let mut h = with("hi there 你好");
    h.extend(with("hello 世界"));
    h.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(all_pages(&index, "h", 7), h);
    assert_eq!(all_pages(&index, "你", 6), with("hi there 你好"));
    assert_eq!(all_pages(&index, "世界", 20), with("hello 世界"));
    assert_eq!(all_pages(&index, "hello 世", 3), with("hello 世界"));
    assert_eq!(all_pages(&index, "is", 4), with("this is it"));
    assert_eq!(all_pages(&index, "hi", 5), with("hi there 你好"));
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

/// A database as the first version of the index wrote it: no text in `search_keys`, a
/// contentful trigram table `search_text`, no short-term index.
fn old_database(path: &std::path::Path, texts: &[(u64, u64, &str)]) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TABLE search_keys (
             rowid INTEGER PRIMARY KEY,
             conversation INTEGER NOT NULL, message INTEGER NOT NULL,
             UNIQUE (conversation, message));
         CREATE VIRTUAL TABLE search_text USING fts5(body, tokenize = 'trigram');",
    )
    .unwrap();
    for &(conversation, message, text) in texts {
        conn.execute(
            "INSERT INTO search_keys (conversation, message) VALUES (?1, ?2)",
            (conversation as i64, message as i64),
        )
        .unwrap();
        conn.execute(
            "INSERT INTO search_text (rowid, body) VALUES (last_insert_rowid(), ?1)",
            [text],
        )
        .unwrap();
    }
}

#[test]
fn an_index_of_the_first_version_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("search.db");
    old_database(
        &path,
        &[
            (1, 1, "Meet me at the Library at noon"),
            (1, 2, "我们明天在图书馆见面"),
            (2, 1, "내일 도서관에서 만나요"),
        ],
    );
    let index = SearchIndex::open(&path).unwrap();
    assert_eq!(index.len().unwrap(), 3);
    assert_eq!(ids(&index, "library"), vec![1]);
    assert_eq!(ids(&index, "li"), vec![1]);
    assert_eq!(ids(&index, "明天"), vec![2]);
    assert_eq!(ids(&index, "书"), vec![2]);
    assert_eq!(ids(&index, "만"), vec![1]);
    let hits = index.search("at", SearchPage::first(5)).unwrap().hits;
    assert_eq!(hits[0].text, "Meet me at the Library at noon");
    // Edits, deletes and new messages work on the upgraded index, newest first.
    assert!(index.edit(conv(1), mid(2), "明日").unwrap());
    assert_eq!(ids(&index, "图"), Vec::<u64>::new());
    assert!(index.delete(conv(2), mid(1)).unwrap());
    assert_eq!(ids(&index, "만"), Vec::<u64>::new());
    index.index(conv(3), mid(9), "明天 at 9").unwrap();
    assert_eq!(ids(&index, "at"), vec![9, 1]);
    assert_eq!(ids(&index, "明"), vec![9, 2]);
    drop(index);
    // The old table is gone, and opening again changes nothing.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let old: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'search_text'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(old, 0);
    drop(conn);
    let index = SearchIndex::open(&path).unwrap();
    assert_eq!(index.len().unwrap(), 3);
    assert_eq!(ids(&index, "明"), vec![9, 2]);
}

/// What the module docs say a term matches, written naively: a term of three or more
/// characters anywhere, a shorter one where a token starts. Case is folded with
/// `to_lowercase`, which agrees with SQLite's folding for the characters used here.
fn model(text: &str, term: &str) -> bool {
    let fold = |s: &str| -> Vec<char> { s.chars().flat_map(char::to_lowercase).collect() };
    let text = fold(text);
    let term = fold(term);
    let unspaced = |c: char| matches!(c, '\u{3000}'..='\u{30FF}' | '\u{4E00}'..='\u{9FFF}' | '\u{AC00}'..='\u{D7AF}');
    let word = |c: char| c.is_alphanumeric() && !unspaced(c);
    let breaks = |c: char| c.is_whitespace() || c.is_control();
    (0..text.len()).any(|at| {
        let starts_token = term.len() >= 3
            || (!breaks(text[at]) && (at == 0 || !word(text[at]) || !word(text[at - 1])));
        starts_token && text[at..].starts_with(&term)
    })
}

#[test]
fn short_terms_match_exactly_what_the_model_says() {
    let texts = [
        "The theory: that's it, THAT is 'it'.",
        "我们明天在图书馆见面，明天见！明明",
        "東京駅で待ち合わせ・カフェ",
        "내일 도서관에서 만나요 내내",
        "a1 b2-c3 #7 17 x_y (z) ab ba aa",
        "mix英文and中文 ok東京OK",
        "Привет мир ПРИ",
        "\"quotes\" and \\back\\slash ... ** *",
        "",
        "  x  ",
    ];
    let index = SearchIndex::in_memory().unwrap();
    index
        .index_all(
            texts
                .iter()
                .enumerate()
                .map(|(i, t)| (conv(1), mid(i as u64 + 1), *t)),
        )
        .unwrap();
    // Every one- and two-character string over the characters used (and a few more), and
    // every three-character substring of the texts.
    let mut alphabet: Vec<char> = texts.iter().flat_map(|t| t.chars()).collect();
    alphabet.extend(['q', 'Q', '猫', '한']);
    alphabet.retain(|c| !c.is_whitespace());
    alphabet.sort_unstable();
    alphabet.dedup();
    let mut terms: Vec<String> = Vec::new();
    for &a in &alphabet {
        terms.push(a.to_string());
        for &b in &alphabet {
            terms.push([a, b].iter().collect());
        }
    }
    for t in &texts {
        let chars: Vec<char> = t.chars().collect();
        for w in chars.windows(3) {
            if !w.iter().any(|c| c.is_whitespace()) {
                terms.push(w.iter().collect());
            }
        }
    }
    let mut checked = 0;
    for term in &terms {
        let mut expected: Vec<u64> = (0..texts.len())
            .filter(|&i| model(texts[i], term))
            .map(|i| i as u64 + 1)
            .collect();
        expected.reverse();
        assert_eq!(ids(&index, term), expected, "term {term:?}");
        checked += 1;
    }
    assert!(checked > 5_000, "{checked} terms");
}
