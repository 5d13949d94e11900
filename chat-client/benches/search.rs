//! Local search at 200,000 messages (R-MSG-9): the time of one query's first page (20 hits),
//! p50/p99/max over many queries, for queries of three or more characters (the trigram index)
//! and for one- and two-character queries (the LIKE fallback).
//!
//! `cargo bench -p chat-client --bench search` (set `SEARCH_MESSAGES` for another size).
//! Texts are generated deterministically: a third Chinese, Japanese or Korean, the rest
//! English-like words; queries are substrings of indexed texts (hits) and made-up words
//! (misses).

use std::time::{Duration, Instant};

use chat_client::{ConversationId, MessageId, SearchIndex, SearchPage};

const WORDS: &[&str] = &[
    "meet", "library", "noon", "tomorrow", "project", "deadline", "coffee", "review", "release",
    "budget", "dinner", "weekend", "flight", "hotel", "ticket", "meeting", "slides", "invoice",
    "server", "deploy", "holiday", "birthday", "gift", "please", "thanks", "sorry", "great", "the",
    "and", "for", "with", "about", "later", "today", "call", "when", "where", "photo",
];
const CJK: &[&str] = &[
    "我们明天在图书馆见面",
    "今天的会议改到下午三点",
    "请把报告发给我",
    "周末一起去吃饭吧",
    "東京駅で待ち合わせしましょう",
    "会議の資料を送ります",
    "明日は雨が降るそうです",
    "내일 도서관에서 만나요",
    "회의 자료를 보내 주세요",
    "주말에 같이 밥 먹어요",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, no dependency.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn text(rng: &mut Rng, n: u64) -> String {
    if rng.below(3) == 0 {
        let a = CJK[rng.below(CJK.len())];
        let b = CJK[rng.below(CJK.len())];
        return format!("{a}，{b} {n}");
    }
    let len = 4 + rng.below(16);
    let mut words: Vec<&str> = (0..len).map(|_| WORDS[rng.below(WORDS.len())]).collect();
    words.push("#");
    format!("{} {n}", words.join(" "))
}

fn percentiles(mut times: Vec<Duration>) -> (Duration, Duration, Duration) {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    (at(0.50), at(0.99), *times.last().unwrap())
}

fn run(index: &SearchIndex, label: &str, queries: &[String]) {
    let mut times = Vec::with_capacity(queries.len());
    let mut hits = 0usize;
    for q in queries {
        let start = Instant::now();
        let results = index.search(q, SearchPage::first(20)).unwrap();
        times.push(start.elapsed());
        hits += results.hits.len();
    }
    let (p50, p99, max) = percentiles(times);
    println!(
        "{label}: {} queries, {:.1} hits/query, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        queries.len(),
        hits as f64 / queries.len() as f64,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
    );
}

fn main() {
    let n: u64 = std::env::var("SEARCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open(dir.path().join("search.db")).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let texts: Vec<String> = (1..=n).map(|i| text(&mut rng, i)).collect();
    let start = Instant::now();
    for (chunk, batch) in texts.chunks(10_000).enumerate() {
        let base = chunk as u64 * 10_000;
        index
            .index_all(batch.iter().enumerate().map(|(i, t)| {
                let id = base + i as u64 + 1;
                let conversation = ConversationId::new(1 + id % 50).unwrap();
                (conversation, MessageId::new(id).unwrap(), t.as_str())
            }))
            .unwrap();
    }
    println!(
        "indexed {n} messages in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // Substrings of indexed texts: common words, CJK runs, the unique message numbers.
    let mut long = Vec::new();
    let mut short = Vec::new();
    for _ in 0..1000 {
        let t = &texts[rng.below(texts.len())];
        let chars: Vec<char> = t.chars().filter(|c| !c.is_whitespace()).collect();
        let take = 3 + rng.below(4);
        let at = rng.below(chars.len().saturating_sub(take).max(1));
        long.push(
            chars[at..(at + take).min(chars.len())]
                .iter()
                .collect::<String>(),
        );
        let at = rng.below(chars.len().saturating_sub(2).max(1));
        short.push(
            chars[at..(at + 1 + rng.below(2)).min(chars.len())]
                .iter()
                .collect::<String>(),
        );
    }
    // Exact message numbers (one hit each, deep in the index) and misses.
    let mut rare = Vec::new();
    for i in 0..500 {
        rare.push(format!(
            "{}",
            100 + rng.below((n as usize).saturating_sub(100).max(1))
        ));
        rare.push(format!("zq{i}x"));
    }
    // Short queries with few or no hits: the LIKE fallback's worst case, a full scan.
    let short_rare: Vec<String> = ["駅", "zq", "q", "雨", "飯"]
        .iter()
        .cycle()
        .take(50)
        .map(|s| s.to_string())
        .collect();

    run(&index, "3+ characters, substrings of texts", &long);
    run(&index, "3+ characters, numbers and misses", &rare);
    run(&index, "1-2 characters, substrings of texts", &short);
    run(&index, "1-2 characters, rare or absent", &short_rare);
}
