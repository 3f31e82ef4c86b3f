//! Prometheus metrics (text exposition format), served on the admin listener at `/metrics`.
//! Counters are updated where things happen; audit-sink figures are read at scrape time.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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
    scan_seconds: Histogram,
    holdback_seconds: Histogram,
    audit_wait_seconds: Histogram,
}

/// Buckets from 10 µs to ~10 s, ×≈3 each.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(1e-5, 3.0, 13)
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
        let scan_seconds = Histogram::new(latency_buckets());
        let holdback_seconds = Histogram::new(latency_buckets());
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
        Metrics {
            registry,
            requests,
            stream_ends,
            decisions,
            reloads,
            audit,
            loaded,
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
    pub fn scan_time(&self, secs: f64) {
        self.scan_seconds.observe(secs);
    }
    pub fn holdback(&self, secs: f64) {
        self.holdback_seconds.observe(secs);
    }
    pub fn audit_wait(&self, secs: f64) {
        self.audit_wait_seconds.observe(secs);
    }
    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&l(&[("result", if ok { "ok" } else { "rejected" })]))
            .inc();
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
