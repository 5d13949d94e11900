//! Three of the node's latency histograms during a run, from its `/metrics` page: the
//! store's commits (`chat_store_commit_seconds`: how many per delivery, which shows how well
//! commits are grouped, and how long they took; on SQLite with `durability = fsync`, mostly
//! the WAL's fsync), SQLite's checkpoints (`chat_store_checkpoint_seconds`: the commits
//! issued during one wait behind its fsync of the database file) and the appends
//! (`chat_append_seconds`: a send stored durably, queueing for the writer included). Beside
//! the end-to-end latency they show where a tail comes from.

use serde_json::{Value, json};

/// The store's commits (chat-storage's `COMMIT_SECONDS`, spelled out: the bench does not
/// link the storage crate for one name).
pub(crate) const COMMITS: &str = "chat_store_commit_seconds";
/// SQLite's checkpoints (chat-storage's `CHECKPOINT_SECONDS`).
pub(crate) const CHECKPOINTS: &str = "chat_store_checkpoint_seconds";
/// The node's appends.
pub(crate) const APPENDS: &str = "chat_append_seconds";
/// The histograms a run reports, in the order of its `store_commits`, `store_checkpoints`
/// and `server_appends` fields.
pub(crate) const NAMES: [&str; 3] = [COMMITS, CHECKPOINTS, APPENDS];

/// One reading of a histogram.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Histogram {
    /// `(upper bound in seconds, commits at or below it)`, cumulative, ascending; `+Inf` last.
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// Reads the histogram `name` (without labels) from a Prometheus text page; `None` if the
    /// page has none.
    pub(crate) fn parse(page: &str, name: &str) -> Option<Self> {
        let mut buckets = Vec::new();
        let mut sum = None;
        let mut count = None;
        for line in page.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let Some((key, value)) = rest.rsplit_once(' ') else {
                continue;
            };
            if let Some(labels) = key.strip_prefix("_bucket{") {
                let le = labels.split("le=\"").nth(1)?.split('"').next()?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                buckets.push((bound, value.parse().ok()?));
            } else if key == "_sum" {
                sum = value.parse().ok();
            } else if key == "_count" {
                count = value.parse().ok();
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(Self {
            buckets,
            sum: sum?,
            count: count?,
        })
    }

    /// What happened between `before` and `self` (`before` is `None` if the metric did not
    /// exist yet: nothing had been recorded).
    fn since(&self, before: Option<&Self>) -> Self {
        let Some(before) = before else {
            return self.clone();
        };
        let buckets = self
            .buckets
            .iter()
            .map(|&(bound, n)| {
                let was = before
                    .buckets
                    .iter()
                    .find(|b| b.0 == bound)
                    .map_or(0, |b| b.1);
                (bound, n.saturating_sub(was))
            })
            .collect();
        Self {
            buckets,
            sum: self.sum - before.sum,
            count: self.count.saturating_sub(before.count),
        }
    }

    /// The bucket bound at or below which a fraction `q` of the samples fell, in ms.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let wanted = (self.count as f64 * q).ceil().max(1.0) as u64;
        self.buckets
            .iter()
            .find(|b| b.1 >= wanted)
            .map(|b| b.0 * 1000.0)
    }

    /// The report: samples (and per delivery), mean, and the p50 and p99 as bucket bounds
    /// ("at most"), or `None` when there was none.
    pub(crate) fn report(before: Option<&Self>, after: &Self, delivered: u64) -> Option<Value> {
        let run = after.since(before);
        if run.count == 0 {
            return None;
        }
        let finite = |v: Option<f64>| v.filter(|v| v.is_finite());
        Some(json!({
            "count": run.count,
            "per_delivery": (run.count as f64 / delivered.max(1) as f64 * 1000.0).round() / 1000.0,
            "mean_ms": (run.sum / run.count as f64 * 1e6).round() / 1000.0,
            "p50_ms_at_most": finite(run.quantile_ms(0.5)),
            "p99_ms_at_most": finite(run.quantile_ms(0.99)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(counts: [u64; 4], sum: f64) -> String {
        const NAME: &str = COMMITS;
        format!(
            "# HELP {NAME} x\n# TYPE {NAME} histogram\n\
             {NAME}_bucket{{le=\"0.0005\"}} {}\n{NAME}_bucket{{le=\"0.001\"}} {}\n\
             {NAME}_bucket{{le=\"0.005\"}} {}\n{NAME}_bucket{{le=\"+Inf\"}} {}\n\
             {NAME}_sum {sum}\n{NAME}_count {}\nchat_append_seconds_count 7\n",
            counts[0], counts[1], counts[2], counts[3], counts[3]
        )
    }

    #[test]
    fn a_run_is_the_difference_of_two_readings() {
        let before = Histogram::parse(&page([10, 10, 10, 10], 0.002), COMMITS).unwrap();
        // 100 more: 40 under 0.5 ms, 59 under 1 ms, 1 under 5 ms.
        let after = Histogram::parse(&page([50, 109, 110, 110], 0.062), COMMITS).unwrap();
        let r = Histogram::report(Some(&before), &after, 200).unwrap();
        assert_eq!(r["count"], 100);
        assert_eq!(r["per_delivery"], 0.5);
        assert_eq!(r["mean_ms"], 0.6);
        assert_eq!(r["p50_ms_at_most"], 1.0);
        assert_eq!(r["p99_ms_at_most"], 1.0);
        let r = Histogram::report(None, &after, 110).unwrap();
        assert_eq!(r["count"], 110);
        // Another histogram on the page is told apart.
        let appends = Histogram::parse(&page([1, 2, 3, 3], 0.001), APPENDS);
        assert_eq!(appends, None);
    }

    #[test]
    fn no_histogram_or_no_commit_is_no_report() {
        assert_eq!(
            Histogram::parse("chat_append_seconds_count 3\n", COMMITS),
            None
        );
        let same = Histogram::parse(&page([1, 2, 3, 3], 0.001), COMMITS).unwrap();
        assert_eq!(Histogram::report(Some(&same), &same, 10), None);
    }
}
