//! Prometheus metrics (text exposition format), served on the admin listener at `/metrics`.
//! Counters are updated where things happen; audit-sink figures are read at scrape time.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
            "Decisions by action, reason and channel",
            decisions.clone(),
        );
        registry.register(
            "reloads",
            "Policy and index reloads by result",
            reloads.clone(),
        );
        registry.register(
            "audit_records",
            "Audit records written, dropped (queue full) and failed (write errors)",
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
    pub fn decision(&self, action: &str, reason: &str, channel: &str) {
        self.decisions
            .get_or_create(&l(&[
                ("action", action),
                ("reason", reason),
                ("channel", channel),
            ]))
            .inc();
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
        self.audit
            .get_or_create(&l(&[("state", "written")]))
            .set(audit.written() as i64);
        self.audit
            .get_or_create(&l(&[("state", "dropped")]))
            .set(audit.dropped() as i64);
        self.audit
            .get_or_create(&l(&[("state", "failed")]))
            .set(audit.failures() as i64);
        let mut s = String::new();
        if encode(&mut s, &self.registry).is_err() {
            s.push_str("# metrics could not be encoded\n");
        }
        s
    }
}
