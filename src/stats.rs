//! Per-handler counters, moving averages and latency histograms, readable at any time
//! without the GIL and exportable as Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Weight of the newest sample in the exponential moving averages.
const EMA_ALPHA: f64 = 0.1;

/// A snapshot of one handler's queue sizes, counters and moving averages
/// (`pysched_stats` in C).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HandlerStats {
    /// Items waiting to be committed (queued, not yet taken into a batch).
    pub commit_queue_size: u64,
    /// Items taken into a batch (committed or being committed) that have not run yet.
    pub execute_queue_size: u64,
    /// Items ever passed to queue (accepted or not).
    pub total_enqueued: u64,
    /// Items whose Python call succeeded and whose completion callback did not fail.
    pub completed: u64,
    /// Items that failed in commit, in Python, in result checking or in their callback.
    pub failed: u64,
    pub cancelled: u64,
    /// Items whose deadline passed before they started.
    pub expired: u64,
    /// Items refused by a full queue (reject policy, or block policy timing out) or by shutdown.
    pub rejected: u64,
    /// Python calls made.
    pub batches: u64,
    pub commit_batch_size_ema: f64,
    pub execute_batch_size_ema: f64,
    pub commit_ns_per_batch_ema: f64,
    pub execute_ns_per_batch_ema: f64,
}

/// Moving averages, written by the worker that executes a batch (under the handler's
/// pipeline lock).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Emas {
    pub commit_batch_size: f64,
    pub execute_batch_size: f64,
    pub commit_ns_per_batch: f64,
    pub execute_ns_per_batch: f64,
}

fn ema(prev: f64, sample: f64) -> f64 {
    if prev == 0.0 {
        sample
    } else {
        prev + EMA_ALPHA * (sample - prev)
    }
}

impl Emas {
    pub(crate) fn record_commit(&mut self, items: usize, ns: u64) {
        self.commit_batch_size = ema(self.commit_batch_size, items as f64);
        self.commit_ns_per_batch = ema(self.commit_ns_per_batch, ns.max(1) as f64);
    }
    pub(crate) fn record_execute(&mut self, items: usize, ns: u64) {
        self.execute_batch_size = ema(self.execute_batch_size, items as f64);
        self.execute_ns_per_batch = ema(self.execute_ns_per_batch, ns.max(1) as f64);
    }
}

/// Lock-free counters, updated by producers and workers.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    pub expired: AtomicU64,
    pub rejected: AtomicU64,
    pub batches: AtomicU64,
}

/// Number of log2 buckets: bucket i holds values in [2^(i-1), 2^i), bucket 0 holds 0.
const BUCKETS: usize = 48;

/// A lock-free histogram with power-of-two buckets; quantiles are reported as the upper
/// bound of the bucket that holds them (within 2x of the true value).
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    sum: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }
}

fn bucket_of(value: u64) -> usize {
    (64 - value.leading_zeros() as usize).min(BUCKETS - 1)
}

/// Values of one batch (per-item queue waits), recorded without atomics and merged into a
/// [`Histogram`] once.
pub(crate) struct LocalHistogram {
    buckets: [u64; BUCKETS],
    count: u64,
    sum: u64,
}

impl Default for LocalHistogram {
    fn default() -> Self {
        LocalHistogram { buckets: [0; BUCKETS], count: 0, sum: 0 }
    }
}

impl LocalHistogram {
    pub(crate) fn record(&mut self, value: u64) {
        self.buckets[bucket_of(value)] += 1;
        self.count += 1;
        self.sum = self.sum.saturating_add(value);
    }
}

impl Histogram {
    pub fn record(&self, value: u64) {
        let idx = bucket_of(value);
        self.buckets[idx].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }

    /// Adds values gathered by one thread: one atomic add per touched bucket.
    pub(crate) fn merge(&self, local: &LocalHistogram) {
        if local.count == 0 {
            return;
        }
        for (bucket, &n) in self.buckets.iter().zip(&local.buckets) {
            if n > 0 {
                bucket.fetch_add(n, Relaxed);
            }
        }
        self.count.fetch_add(local.count, Relaxed);
        self.sum.fetch_add(local.sum, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    pub fn sum(&self) -> u64 {
        self.sum.load(Relaxed)
    }

    /// Upper bound of the bucket holding quantile `q` (0..=1); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_upper(i);
            }
        }
        bucket_upper(BUCKETS - 1)
    }

    fn write_prometheus(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            let c = b.load(Relaxed);
            cumulative += c;
            if c > 0 {
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}", bucket_upper(i));
            }
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count());
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum());
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count());
    }
}

fn bucket_upper(i: usize) -> u64 {
    if i == 0 {
        0
    } else {
        (1u64 << i.min(63)) - 1
    }
}

/// Distributions of one handler.
#[derive(Debug, Default)]
pub struct Histograms {
    /// Items per Python call.
    pub batch_size: Histogram,
    /// Nanoseconds from queue to the start of the item's batch.
    pub queue_wait_ns: Histogram,
    /// Nanoseconds spent committing one batch.
    pub commit_ns: Histogram,
    /// Nanoseconds of one Python call.
    pub execute_ns: Histogram,
    /// Nanoseconds a worker waited to take the GIL for a batch.
    pub gil_wait_ns: Histogram,
}

/// p50/p99 of one handler's batch sizes and latencies, as histogram bucket upper
/// bounds (`pysched_latency` in C).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    pub batch_size_p50: u64,
    pub batch_size_p99: u64,
    pub queue_wait_ns_p50: u64,
    pub queue_wait_ns_p99: u64,
    pub commit_ns_p50: u64,
    pub commit_ns_p99: u64,
    pub execute_ns_p50: u64,
    pub execute_ns_p99: u64,
    pub gil_wait_ns_p50: u64,
    pub gil_wait_ns_p99: u64,
}

impl Histograms {
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            batch_size_p50: self.batch_size.quantile(0.5),
            batch_size_p99: self.batch_size.quantile(0.99),
            queue_wait_ns_p50: self.queue_wait_ns.quantile(0.5),
            queue_wait_ns_p99: self.queue_wait_ns.quantile(0.99),
            commit_ns_p50: self.commit_ns.quantile(0.5),
            commit_ns_p99: self.commit_ns.quantile(0.99),
            execute_ns_p50: self.execute_ns.quantile(0.5),
            execute_ns_p99: self.execute_ns.quantile(0.99),
            gil_wait_ns_p50: self.gil_wait_ns.quantile(0.5),
            gil_wait_ns_p99: self.gil_wait_ns.quantile(0.99),
        }
    }
}

/// Appends one handler's metrics in Prometheus text exposition format. `handler` labels
/// every series (quotes and backslashes in it are escaped).
pub(crate) fn write_prometheus(out: &mut String, handler: &str, stats: &HandlerStats, hist: &Histograms) {
    let label =
        format!("handler=\"{}\"", handler.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"));
    let counters = [
        ("enqueued", stats.total_enqueued),
        ("completed", stats.completed),
        ("failed", stats.failed),
        ("cancelled", stats.cancelled),
        ("expired", stats.expired),
        ("rejected", stats.rejected),
        ("batches", stats.batches),
    ];
    for (name, v) in counters {
        let _ = writeln!(out, "# TYPE pyscheduler_items_{name}_total counter");
        let _ = writeln!(out, "pyscheduler_items_{name}_total{{{label}}} {v}");
    }
    let gauges =
        [("commit_queue_size", stats.commit_queue_size), ("execute_queue_size", stats.execute_queue_size)];
    for (name, v) in gauges {
        let _ = writeln!(out, "# TYPE pyscheduler_{name} gauge");
        let _ = writeln!(out, "pyscheduler_{name}{{{label}}} {v}");
    }
    let hists = [
        ("batch_size", &hist.batch_size),
        ("queue_wait_ns", &hist.queue_wait_ns),
        ("commit_ns", &hist.commit_ns),
        ("execute_ns", &hist.execute_ns),
        ("gil_wait_ns", &hist.gil_wait_ns),
    ];
    for (name, h) in hists {
        let _ = writeln!(out, "# TYPE pyscheduler_{name} histogram");
        h.write_prometheus(out, &format!("pyscheduler_{name}"), &label);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_fall_in_the_right_bucket() {
        let h = Histogram::default();
        for v in 1..=100u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5);
        assert!((50..=127).contains(&p50), "p50 {p50}");
        let p99 = h.quantile(0.99);
        assert!((99..=127).contains(&p99), "p99 {p99}");
        assert_eq!(h.count(), 100);
        assert_eq!(h.sum(), 5050);
    }

    #[test]
    fn empty_histogram_reports_zero() {
        assert_eq!(Histogram::default().quantile(0.99), 0);
    }
}
