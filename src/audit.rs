//! The audit trail: JSON Lines, one versioned envelope per record
//! (`{"v": 1, "type": "decision" | "stream_end", "data": {…}}`), documented as a contract in
//! `docs/audit-log.md`. One record per decision and exactly one per response end.
//!
//! Records go through a bounded queue to a background writer, so a stream never waits on the
//! disk. Nothing is dropped silently: a full queue or a failed write is counted
//! ([`AuditSink::dropped`], [`AuditSink::failures`]) and logged. Each batch of whole lines is
//! written with one `write_all`, so a reader never sees half a record from a live writer.
//! Records hold no credential and no prompt text: the tenant is a hash of the credential and a
//! copied span is identified by its SHA-256.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

pub const AUDIT_VERSION: u32 = 1;
const QUEUE: usize = 8192;

/// What the proxy knows about the request a response belongs to.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RequestInfo {
    /// Verbatim's own id for the request.
    pub request_id: String,
    /// The upstream's id (`x-request-id` / `request-id`), if it sent one.
    pub upstream_request_id: Option<String>,
    /// First 16 hex digits of the SHA-256 of the credential (never the credential).
    pub tenant: Option<String>,
    pub model: Option<String>,
    pub route: String,
    pub streamed: bool,
}

/// One decision about one finding.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    pub time: String,
    #[serde(flatten)]
    pub request: RequestInfo,
    pub action: String,
    pub reason: String,
    /// The rule that decided, and the policy it belongs to (name and SHA-256 of its file).
    pub rule: String,
    pub policy: String,
    pub policy_version: String,
    /// What the policy said; differs from `action` only in shadow mode.
    pub policy_action: String,
    pub shadow: bool,
    pub stream: String,
    pub output_start: u64,
    pub output_end: u64,
    pub span_sha256: String,
    pub units: u32,
    pub channel: String,
    pub corpus: String,
    pub doc: String,
    pub url: Option<String>,
    pub source_start: u64,
    pub source_end: u64,
    pub license: String,
    pub rights: String,
    pub index_id: String,
    pub hold: String,
}

/// How a response ended; one per response.
#[derive(Debug, Clone, Serialize)]
pub struct StreamEndRecord {
    pub time: String,
    #[serde(flatten)]
    pub request: RequestInfo,
    /// `completed`, `blocked`, `upstream_error` or `client_cancelled`.
    pub end: String,
    pub events: u64,
    pub decisions: u64,
}

/// What travels to the writer.
enum Msg {
    Record(Record),
    /// Write everything before this, sync, and end.
    Stop,
}

#[derive(Debug, Clone)]
pub enum Record {
    Decision(Box<DecisionRecord>),
    StreamEnd(StreamEndRecord),
}

impl Record {
    fn line(&self) -> serde_json::Result<Vec<u8>> {
        #[derive(Serialize)]
        struct Envelope<'a, T> {
            v: u32,
            #[serde(rename = "type")]
            kind: &'a str,
            data: &'a T,
        }
        let mut v = match self {
            Record::Decision(d) => serde_json::to_vec(&Envelope {
                v: AUDIT_VERSION,
                kind: "decision",
                data: d,
            })?,
            Record::StreamEnd(e) => serde_json::to_vec(&Envelope {
                v: AUDIT_VERSION,
                kind: "stream_end",
                data: e,
            })?,
        };
        v.push(b'\n');
        Ok(v)
    }
}

/// RFC 3339 UTC time, milliseconds.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The sending side; cheap to clone. A disabled sink records nothing.
#[derive(Clone, Default)]
pub struct AuditSink {
    tx: Option<mpsc::Sender<Msg>>,
    dropped: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl AuditSink {
    pub fn disabled() -> Self {
        AuditSink::default()
    }

    /// Opens (appends to) `path` and starts the writer on the current tokio runtime. The writer
    /// ends, after writing everything queued, when every clone of the sink is dropped.
    pub fn open(path: &Path) -> std::io::Result<(AuditSink, tokio::task::JoinHandle<()>)> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let sink = AuditSink {
            tx: Some(tx),
            ..AuditSink::default()
        };
        let handle = tokio::task::spawn_blocking({
            let sink = sink.clone_counters();
            let path = path.to_path_buf();
            move || writer(file, path, rx, sink)
        });
        Ok((sink, handle))
    }

    fn clone_counters(&self) -> AuditSink {
        AuditSink {
            tx: None,
            dropped: Arc::clone(&self.dropped),
            failures: Arc::clone(&self.failures),
            written: Arc::clone(&self.written),
        }
    }

    /// Queues a record without waiting; a full queue is counted and logged, never silent.
    pub fn record(&self, r: Record) {
        let Some(tx) = &self.tx else { return };
        if let Err(e) = tx.try_send(Msg::Record(r)) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(dropped_total = n, reason = %e, "audit record not queued");
        }
    }

    /// Asks the writer to write everything queued so far, sync and end (at shutdown).
    pub async fn stop(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Stop).await;
        }
    }

    /// Records not queued because the queue was full or the writer had stopped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    /// Records the writer failed to write.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

fn writer(
    mut file: std::fs::File,
    path: PathBuf,
    mut rx: mpsc::Receiver<Msg>,
    counters: AuditSink,
) {
    let mut batch: Vec<u8> = Vec::new();
    let mut in_batch = 0u64;
    let mut stop = false;
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        // Take whatever else is queued, so a burst costs one write.
        while let Some(msg) = next {
            let r = match msg {
                Msg::Record(r) => r,
                Msg::Stop => {
                    stop = true;
                    break;
                }
            };
            match r.line() {
                Ok(l) => {
                    batch.extend_from_slice(&l);
                    in_batch += 1;
                }
                Err(e) => {
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "audit record could not be serialised");
                }
            }
            next = if batch.len() < 1 << 20 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        match file.write_all(&batch) {
            Ok(()) => {
                counters.written.fetch_add(in_batch, Ordering::Relaxed);
            }
            Err(e) => {
                let n = counters.failures.fetch_add(in_batch, Ordering::Relaxed) + in_batch;
                tracing::error!(path = %path.display(), error = %e, failed_total = n, "audit log write failed");
            }
        }
        batch.clear();
        in_batch = 0;
        if stop {
            break;
        }
    }
    if let Err(e) = file.sync_all() {
        tracing::error!(path = %path.display(), error = %e, "audit log sync failed");
    }
}
