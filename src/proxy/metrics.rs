//! Prometheus metrics (text exposition format), served on the admin listener at `/metrics`.
//! Counters are updated where things happen; audit-sink figures are read at scrape time.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

type Labels = Vec<(String, String)>;

/// The proxy's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    stream_ends: Family<Labels, Counter>,
    decisions: Family<Labels, Counter>,
    reloads: Family<Labels, Counter>,
    audit: Family<Labels, Gauge>,
    loaded: Family<Labels, Gauge>,
    index_warming: Gauge,
    index_warm_bytes: Counter,
    scan_seconds: FrameHistogram,
    holdback_seconds: FrameHistogram,
    audit_wait_seconds: Histogram,
}

/// Buckets from 10 µs to ~10 s, ×≈3 each.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(1e-5, 3.0, 13)
}

/// A latency histogram observed on every upstream frame of every scanned stream, by every
/// worker thread: each thread counts into its own cache line of atomic counters, summed when
/// scraped. prometheus-client's `Histogram` takes a mutex on each observation (its own TODO
/// asks for atomics); with two workers relaying thousands of frames a second its one lock and
/// cache line went back and forth between the cores twice a frame (docs/benchmarks.md).
/// Hand-written because no maintained crate offers a sharded histogram that this registry can
/// encode; ~60 lines.
#[derive(Debug, Clone)]
pub struct FrameHistogram(Arc<FrameShards>);

#[derive(Debug)]
struct FrameShards {
    /// Upper bounds in seconds (as exposed) and in nanoseconds (as compared), ascending; a
    /// last, unbounded bucket follows them.
    bounds: Box<[f64]>,
    bounds_ns: Box<[u64]>,
    shards: Box<[Shard]>,
}

/// One thread's counters (threads past [`SHARDS`] share, still correctly: the counters are
/// atomic), inline and alone in their cache lines — counters behind a pointer would be small
/// heap blocks that the allocator packs side by side, sharing lines between threads again.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    /// Per bucket (the bounds', then the unbounded one); only the first `bounds.len() + 1`
    /// are used.
    buckets: [AtomicU64; MAX_BUCKETS],
    sum_ns: AtomicU64,
}

/// Shards of a [`FrameHistogram`]: more than the proxy's worker threads on most machines.
const SHARDS: usize = 16;
/// Buckets a [`FrameHistogram`] can have, the unbounded one included.
const MAX_BUCKETS: usize = 16;

thread_local! {
    /// This thread's shard, assigned in turn at its first observation.
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Relaxed) % SHARDS
    };
}

impl FrameHistogram {
    /// A histogram with these upper bounds (seconds, ascending; at most `MAX_BUCKETS − 1`).
    fn new(bounds: impl Iterator<Item = f64>) -> FrameHistogram {
        let bounds: Box<[f64]> = bounds.collect();
        assert!(
            bounds.len() < MAX_BUCKETS,
            "a FrameHistogram has at most {} bounds",
            MAX_BUCKETS - 1
        );
        let bounds_ns: Box<[u64]> = bounds.iter().map(|b| (b * 1e9).round() as u64).collect();
        let shards = (0..SHARDS)
            .map(|_| Shard {
                buckets: std::array::from_fn(|_| AtomicU64::new(0)),
                sum_ns: AtomicU64::new(0),
            })
            .collect();
        FrameHistogram(Arc::new(FrameShards {
            bounds,
            bounds_ns,
            shards,
        }))
    }

    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let h = &self.0;
        let b = h.bounds_ns.partition_point(|&bound| bound < ns);
        let shard = &h.shards[SHARD.with(|s| *s)];
        shard.buckets[b].fetch_add(1, Relaxed);
        shard.sum_ns.fetch_add(ns, Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts with their upper bounds in seconds). Every
    /// observation counts in exactly one bucket, so the count is their total, not a third
    /// counter a frame.
    fn totals(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let h = &self.0;
        let mut buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .map(|&b| (b, 0))
            .chain([(f64::INFINITY, 0)])
            .collect();
        let mut sum_ns = 0u64;
        for s in &h.shards {
            for (acc, b) in buckets.iter_mut().zip(&s.buckets) {
                acc.1 += b.load(Relaxed);
            }
            sum_ns = sum_ns.wrapping_add(s.sum_ns.load(Relaxed));
        }
        let count = buckets.iter().map(|b| b.1).sum();
        (sum_ns as f64 / 1e9, count, buckets)
    }
}

impl TypedMetric for FrameHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for FrameHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.totals();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("verbatim");
        let requests = Family::default();
        let stream_ends = Family::default();
        let decisions = Family::default();
        let reloads = Family::default();
        let audit = Family::default();
        let loaded = Family::default();
        let index_warming = Gauge::default();
        let index_warm_bytes = Counter::default();
        let scan_seconds = FrameHistogram::new(latency_buckets());
        let holdback_seconds = FrameHistogram::new(latency_buckets());
        let audit_wait_seconds = Histogram::new(latency_buckets());
        registry.register(
            "scan_seconds",
            "Added latency: time Verbatim spends on each upstream frame of a scanned stream (decode, scan, decide)",
            scan_seconds.clone(),
        );
        registry.register(
            "holdback_seconds",
            "Time from an upstream frame's arrival until every event it completed is released to the client (hold = strict holds the last t-1 units)",
            holdback_seconds.clone(),
        );
        registry.register(
            "audit_durable_wait_seconds",
            "Time a block waited for its audit record to be written and synced (audit.durable)",
            audit_wait_seconds.clone(),
        );
        registry.register(
            "requests",
            "Requests by route and response status class",
            requests.clone(),
        );
        registry.register(
            "response_ends",
            "Scanned responses by route and how they ended",
            stream_ends.clone(),
        );
        registry.register(
            "decisions",
            "Decisions by action, reason, channel, finding kind and license category",
            decisions.clone(),
        );
        registry.register(
            "reloads",
            "Policy and index reloads by result",
            reloads.clone(),
        );
        registry.register(
            "audit_records",
            "Audit trail: records written, dropped (queue full), failed (write errors; records wait and are retried), queued (queue depth), failing (1 while the last write failed), rotations",
            audit.clone(),
        );
        registry.register(
            "loaded",
            "The policy and indexes in force (value 1)",
            loaded.clone(),
        );
        registry.register(
            "index_warming",
            "Indexes whose files are being read into the page cache (at start, or before a reload swaps them in); /readyz answers 503 while the ones in force are",
            index_warming.clone(),
        );
        registry.register(
            "index_warm_bytes",
            "Bytes of index files read into the page cache ahead of lookups",
            index_warm_bytes.clone(),
        );
        Metrics {
            registry,
            requests,
            stream_ends,
            decisions,
            reloads,
            audit,
            loaded,
            index_warming,
            index_warm_bytes,
            scan_seconds,
            holdback_seconds,
            audit_wait_seconds,
        }
    }
}

impl Metrics {
    pub fn request(&self, route: &str, status: u16) {
        let class = format!("{}xx", status / 100);
        self.requests
            .get_or_create(&l(&[("route", route), ("status", &class)]))
            .inc();
    }
    pub fn stream_end(&self, route: &str, end: &str) {
        self.stream_ends
            .get_or_create(&l(&[("route", route), ("end", end)]))
            .inc();
    }
    pub fn decision(&self, d: &super::pipeline::Decision) {
        self.decisions
            .get_or_create(&l(&[
                ("action", d.action.as_str()),
                ("reason", &d.reason),
                ("channel", &d.citation.channel),
                ("kind", &d.kind),
                ("category", &d.category),
            ]))
            .inc();
    }
    pub fn scan_time(&self, d: Duration) {
        self.scan_seconds.observe(d);
    }
    pub fn holdback(&self, d: Duration) {
        self.holdback_seconds.observe(d);
    }
    pub fn audit_wait(&self, secs: f64) {
        self.audit_wait_seconds.observe(secs);
    }
    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&l(&[("result", if ok { "ok" } else { "rejected" })]))
            .inc();
    }
    /// An index starts (`true`) or ends (`false`) being read into the page cache.
    pub fn index_warming(&self, starts: bool) {
        if starts {
            self.index_warming.inc();
        } else {
            self.index_warming.dec();
        }
    }
    pub fn index_warm_bytes(&self, n: u64) {
        self.index_warm_bytes.inc_by(n);
    }
    /// Records which policy and indexes are in force (replacing the previous ones).
    pub fn set_loaded(&self, policy: &str, policy_version: &str, index_ids: &[String]) {
        self.loaded.clear();
        self.loaded
            .get_or_create(&l(&[
                ("what", "policy"),
                ("name", policy),
                ("version", policy_version),
            ]))
            .set(1);
        for id in index_ids {
            self.loaded
                .get_or_create(&l(&[("what", "index"), ("name", id), ("version", id)]))
                .set(1);
        }
    }
    /// The text exposition, with the audit sink's figures as of now.
    pub fn render(&self, audit: &crate::audit::AuditSink) -> String {
        for (state, value) in [
            ("written", audit.written()),
            ("dropped", audit.dropped()),
            ("failed", audit.failures()),
            ("queued", audit.queue_depth()),
            ("failing", u64::from(audit.failing())),
            ("rotations", audit.rotations()),
        ] {
            self.audit
                .get_or_create(&l(&[("state", state)]))
                .set(value as i64);
        }
        let mut s = String::new();
        if encode(&mut s, &self.registry).is_err() {
            s.push_str("# metrics could not be encoded\n");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_histogram_sums_every_threads_observations_into_cumulative_buckets() {
        let h = FrameHistogram::new([1e-5, 1e-4].into_iter());
        std::thread::scope(|s| {
            for _ in 0..4 {
                let h = h.clone();
                s.spawn(move || {
                    for _ in 0..1000 {
                        h.observe(Duration::from_micros(5)); // ≤ 10 µs
                        h.observe(Duration::from_micros(10)); // on the bound: ≤ 10 µs
                        h.observe(Duration::from_micros(50)); // ≤ 100 µs
                        h.observe(Duration::from_secs(2)); // +Inf
                    }
                });
            }
        });
        let (sum, count, buckets) = h.totals();
        assert_eq!(count, 16_000);
        assert!((sum - 4000.0 * (65e-6 + 2.0)).abs() < 1e-6, "{sum}");
        assert_eq!(
            buckets,
            [(1e-5, 8000), (1e-4, 4000), (f64::INFINITY, 4000)],
            "per-bucket counts"
        );

        let mut registry = Registry::default();
        registry.register("frame_seconds", "test", h.clone());
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE frame_seconds histogram",
            "frame_seconds_count 16000",
            "frame_seconds_bucket{le=\"0.00001\"} 8000",
            "frame_seconds_bucket{le=\"0.0001\"} 12000",
            "frame_seconds_bucket{le=\"+Inf\"} 16000",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
    }
}
