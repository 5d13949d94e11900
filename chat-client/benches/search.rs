//! Local search at 200,000 messages (R-MSG-9): indexing rate, index size, and the time of one
//! query's first page (20 hits) as p50/p99/max over many queries of each class: long (3+
//! characters) and short (1-2 characters) terms, English and CJK, common, rare and absent,
//! and short terms mixed with long ones.
//!
//! `cargo bench -p chat-client --bench search` (`SEARCH_MESSAGES` for another size,
//! `SEARCH_QUERIES` for another number of queries per class). Texts are generated
//! deterministically: a third Chinese, Japanese or Korean, the rest English-like words, each
//! ending in its unique number.

use std::path::Path;
use std::time::{Duration, Instant};

use chat_client::store::SearchIndex;
use chat_client::{ConversationId, MessageId, SearchPage};

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
/// Short terms no text here has at the start of a word (or at all).
const SHORT_LATIN_RARE: &[&str] = &[
    "q", "zq", "x", "j", "k", "v", "y", "qu", "xy", "zz", "o", "u", "e", "jo", "ky",
];
/// One and two CJK characters that are rare or absent here.
const SHORT_CJK_RARE: &[&str] = &[
    "猫", "犬", "鱼", "駅前", "시간", "猫犬", "雪", "ね", "カ", "강", "飯", "駅で",
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

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
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

/// `len` characters of `s` from a random place (all of it if shorter).
fn piece(rng: &mut Rng, s: &str, len: usize) -> String {
    let chars: Vec<char> = s.chars().filter(|c| !c.is_whitespace()).collect();
    let at = rng.below(chars.len().saturating_sub(len) + 1);
    chars[at..(at + len).min(chars.len())].iter().collect()
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
        "{label:<44} {:>5} queries {:>5.1} hits/query  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms",
        queries.len(),
        hits as f64 / queries.len() as f64,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
    );
}

/// The database's size with the WAL checkpointed: pages in use, and per table (dbstat).
fn report_size(path: &Path, n: u64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let pragma = |name: &str| -> i64 {
        conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))
            .unwrap()
    };
    let used = (pragma("page_count") - pragma("freelist_count")) * pragma("page_size");
    println!(
        "index size: {:.1} MB in use, {:.0} bytes per message",
        used as f64 / 1e6,
        used as f64 / n as f64
    );
    let mut stmt = conn
        .prepare(
            "SELECT name, sum(pgsize) FROM dbstat WHERE name NOT LIKE 'sqlite_%' \
             GROUP BY name ORDER BY 2 DESC",
        )
        .unwrap();
    let tables = stmt
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })
        .unwrap();
    for table in tables {
        let (name, bytes) = table.unwrap();
        println!(
            "  {name:<28} {:>6.0} bytes per message",
            bytes as f64 / n as f64
        );
    }
}

fn main() {
    let n: u64 = std::env::var("SEARCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let per_class: usize = std::env::var("SEARCH_QUERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("search.db");
    let index = SearchIndex::open(&path).unwrap();
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
    let took = start.elapsed().as_secs_f64();
    println!(
        "indexed {n} messages in {took:.1} s ({:.0} messages/s, index_all in batches of 10,000)",
        n as f64 / took
    );
    report_size(&path, n);

    let english = |rng: &mut Rng| -> String {
        loop {
            let t = &texts[rng.below(texts.len())];
            if t.is_ascii() {
                return t.clone();
            }
        }
    };
    let cjk = |rng: &mut Rng| rng.pick(CJK).to_owned();
    let long_words: Vec<&str> = WORDS.iter().copied().filter(|w| w.len() >= 3).collect();
    let classes: Vec<(&str, Vec<String>)> = vec![
        (
            "long English, common (3-6 letters of a word)",
            (0..per_class)
                .map(|_| {
                    let w = rng.pick(&long_words);
                    let len = 3 + rng.below(4);
                    piece(&mut rng, w, len)
                })
                .collect(),
        ),
        (
            "long, rare (message numbers)",
            (0..per_class)
                .map(|_| {
                    format!(
                        "{}",
                        1000 + rng.below((n as usize).saturating_sub(1000).max(1))
                    )
                })
                .collect(),
        ),
        (
            "long CJK (3-6 characters of a sentence)",
            (0..per_class)
                .map(|_| {
                    let s = cjk(&mut rng);
                    let len = 3 + rng.below(4);
                    piece(&mut rng, &s, len)
                })
                .collect(),
        ),
        (
            "long, absent (made-up Latin and CJK)",
            (0..per_class)
                .map(|i| {
                    if i % 2 == 0 {
                        format!("zq{i}x")
                    } else {
                        format!("猫{}", rng.pick(&["狗鱼", "图书", "明天", "会议"]))
                    }
                })
                .collect(),
        ),
        (
            "short Latin, common (word starts, digits)",
            (0..per_class)
                .map(|i| {
                    if i % 5 == 0 {
                        format!("{}", rng.below(10))
                    } else {
                        let w = rng.pick(WORDS);
                        w.chars().take(1 + rng.below(2)).collect()
                    }
                })
                .collect(),
        ),
        (
            "short Latin, rare or absent",
            (0..per_class)
                .map(|_| rng.pick(SHORT_LATIN_RARE).to_owned())
                .collect(),
        ),
        (
            "short CJK, common (1-2 chars of a sentence)",
            (0..per_class)
                .map(|_| {
                    let s = cjk(&mut rng);
                    let len = 1 + rng.below(2);
                    piece(&mut rng, &s, len)
                })
                .collect(),
        ),
        (
            "short CJK, rare or absent",
            (0..per_class)
                .map(|_| rng.pick(SHORT_CJK_RARE).to_owned())
                .collect(),
        ),
        (
            "mixed long + short, from one text",
            (0..per_class)
                .map(|i| {
                    let (t, short_len) = if i % 2 == 0 {
                        (english(&mut rng), 1 + rng.below(2))
                    } else {
                        (cjk(&mut rng), 1 + rng.below(2))
                    };
                    let words: Vec<&str> = t.split_whitespace().collect();
                    let long = words
                        .iter()
                        .copied()
                        .filter(|w| w.chars().count() >= 3)
                        .nth(rng.below(3))
                        .unwrap_or(words[0]);
                    let other = words[rng.below(words.len())];
                    let short: String = other.chars().take(short_len).collect();
                    format!("{long} {short}")
                })
                .collect(),
        ),
        (
            "mixed long + short, disjoint (no hit)",
            (0..per_class)
                .map(|i| {
                    if i % 2 == 0 {
                        let w = rng.pick(&long_words);
                        let s = cjk(&mut rng);
                        format!("{w} {}", piece(&mut rng, &s, 1))
                    } else {
                        let s = cjk(&mut rng);
                        let long = piece(&mut rng, &s, 3);
                        let w = rng.pick(WORDS);
                        format!("{long} {}", &w[..1])
                    }
                })
                .collect(),
        ),
    ];
    for (label, queries) in &classes {
        run(&index, label, queries);
    }
}
