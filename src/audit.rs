//! The audit trail: JSON Lines, one versioned envelope per record
//! (`{"v": 1, "type": "decision" | "stream_end", "data": {…}}`), documented as a contract in
//! `docs/audit-log.md`. One record per decision and exactly one per response end.
//!
//! Records go through a bounded queue to a background writer thread, so a stream never waits on
//! the disk — except for a block when the trail is `durable`: that record is written and
//! `fdatasync`ed before the block reaches the client. Nothing is dropped silently: a full queue
//! or a failed write is counted ([`AuditSink::dropped`], [`AuditSink::failures`]) and logged;
//! records the disk refused wait in memory (bounded) and are written when it accepts them again.
//! Each batch of whole lines is written with one `write_all`; a failed write is cut back to the
//! last good length and a torn last line left by a killed process is cut off at the next start,
//! so a reader never meets half a record. Files rotate by size, between records.
//! Records hold no credential and no prompt text: the tenant is a hash of the credential and a
//! copied span is identified by its SHA-256.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

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
    /// `exact`, `caller-supplied`, … (the policy's finding kinds).
    pub kind: String,
    pub output_start: u64,
    pub output_end: u64,
    pub span_sha256: String,
    /// The span's first characters, only when the policy sets `excerpts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excerpt: Option<String>,
    pub units: u32,
    pub channel: String,
    pub corpus: String,
    pub doc: String,
    pub url: Option<String>,
    pub source_start: u64,
    pub source_end: u64,
    pub license: String,
    /// The license's category under the policy in force (`copyleft`, `permissive`, …).
    pub category: String,
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
    /// A record, and whether the sender waits for it to be on disk (`durable`).
    Record(Box<Record>, Option<oneshot::Sender<bool>>),
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

/// What the proxy does when the audit trail cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Keep relaying; the failure is counted in metrics and logged.
    #[default]
    FailOpen,
    /// Refuse scanned requests (503) while the trail cannot be written, and end a stream whose
    /// decision could not be queued.
    FailClosed,
}

impl OnFailure {
    pub fn parse(s: &str) -> Option<OnFailure> {
        match s {
            "fail-open" => Some(OnFailure::FailOpen),
            "fail-closed" => Some(OnFailure::FailClosed),
            _ => None,
        }
    }
}

/// How the audit trail is written.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Block decisions are on disk (written and `fdatasync`ed) before the block reaches the
    /// client.
    pub durable: bool,
    pub on_failure: OnFailure,
    /// Start a new file when the current one would grow past this many bytes (`path` is renamed
    /// to `path.1`, `path.1` to `path.2`, … up to `keep`); never inside a record.
    pub rotate_bytes: Option<u64>,
    /// Rotated files kept (older ones are deleted).
    pub keep: u32,
}

impl Default for AuditOptions {
    fn default() -> AuditOptions {
        AuditOptions {
            durable: false,
            on_failure: OnFailure::FailOpen,
            rotate_bytes: None,
            keep: 5,
        }
    }
}

/// Records held in memory while the disk refuses them, at most this many bytes; beyond it,
/// records are counted as failed (lost) and logged.
const MAX_PENDING: usize = 16 << 20;
/// How often a failing writer tries again when nothing new arrives.
const RETRY: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Counters {
    dropped: AtomicU64,
    failures: AtomicU64,
    written: AtomicU64,
    queued: AtomicU64,
    rotations: AtomicU64,
    /// The last write failed and nothing has been written since.
    failing: AtomicBool,
}

/// A record could not be queued (the queue was full or the writer had stopped); counted and
/// logged already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotQueued;

/// The sending side; cheap to clone. A disabled sink records nothing.
#[derive(Clone, Default)]
pub struct AuditSink {
    tx: Option<std::sync::mpsc::SyncSender<Msg>>,
    counters: Arc<Counters>,
    durable: bool,
    on_failure: OnFailure,
}

impl AuditSink {
    pub fn disabled() -> Self {
        AuditSink::default()
    }

    /// Opens (appends to) the file and starts the writer thread. A last line left torn by a
    /// killed process is cut off first (and logged), so the file stays valid JSON Lines. The
    /// writer ends after writing everything queued when [`AuditSink::stop`] is called or every
    /// clone of the sink is dropped.
    pub fn open(
        path: &Path,
        opts: &AuditOptions,
    ) -> std::io::Result<(AuditSink, tokio::task::JoinHandle<()>)> {
        let file = open_repaired(path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let sink = AuditSink {
            tx: Some(tx),
            counters: Arc::default(),
            durable: opts.durable,
            on_failure: opts.on_failure,
        };
        let mut w = Writer {
            len: file.metadata()?.len(),
            file,
            path: path.to_path_buf(),
            opts: opts.clone(),
            counters: Arc::clone(&sink.counters),
            pending: Vec::new(),
            pending_records: 0,
        };
        let handle = tokio::task::spawn_blocking(move || w.run(rx));
        Ok((sink, handle))
    }

    fn send(&self, r: Record, ack: Option<oneshot::Sender<bool>>) -> bool {
        let Some(tx) = &self.tx else { return true };
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(Msg::Record(Box::new(r), ack)) {
            Ok(()) => true,
            Err(e) => {
                self.counters.queued.fetch_sub(1, Ordering::Relaxed);
                let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let why = match e {
                    std::sync::mpsc::TrySendError::Full(_) => "queue full",
                    std::sync::mpsc::TrySendError::Disconnected(_) => "writer stopped",
                };
                tracing::error!(dropped_total = n, reason = why, "audit record not queued");
                false
            }
        }
    }

    /// Queues a record without waiting; whether it was queued. A full queue is counted and
    /// logged, never silent. A disabled sink accepts everything.
    pub fn record(&self, r: Record) -> bool {
        self.send(r, None)
    }

    /// Queues a record that must be on disk before the caller goes on (a block, when the trail
    /// is `durable`). The receiver says whether it was written and synced; `None` when the sink
    /// is not durable (or disabled) and there is nothing to wait for.
    pub fn record_durable(&self, r: Record) -> Result<Option<oneshot::Receiver<bool>>, NotQueued> {
        if !self.durable || self.tx.is_none() {
            return if self.send(r, None) {
                Ok(None)
            } else {
                Err(NotQueued)
            };
        }
        let (tx, rx) = oneshot::channel();
        if self.send(r, Some(tx)) {
            Ok(Some(rx))
        } else {
            Err(NotQueued)
        }
    }

    /// Asks the writer to write everything queued so far, sync and end (at shutdown).
    pub async fn stop(&self) {
        if let Some(tx) = self.tx.clone() {
            let _ = tokio::task::spawn_blocking(move || tx.send(Msg::Stop).is_ok()).await;
        }
    }

    pub fn on_failure(&self) -> OnFailure {
        self.on_failure
    }

    /// Whether the trail is failing: its last write failed, nothing written since.
    pub fn failing(&self) -> bool {
        self.counters.failing.load(Ordering::Relaxed)
    }

    /// Whether scanned requests must be refused now (`fail-closed` and failing).
    pub fn refuses(&self) -> bool {
        self.on_failure == OnFailure::FailClosed && self.failing()
    }

    /// Records not queued because the queue was full or the writer had stopped.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }
    /// Write attempts that failed (records then wait in memory and are tried again), plus
    /// records lost because they could not be serialised or the memory bound was reached.
    pub fn failures(&self) -> u64 {
        self.counters.failures.load(Ordering::Relaxed)
    }
    pub fn written(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }
    /// Records queued and not yet taken by the writer.
    pub fn queue_depth(&self) -> u64 {
        self.counters.queued.load(Ordering::Relaxed)
    }
    pub fn rotations(&self) -> u64 {
        self.counters.rotations.load(Ordering::Relaxed)
    }
}

/// Opens the trail for appending; a torn last line (no final newline: the process was killed
/// inside a write) is cut off.
fn open_repaired(path: &Path) -> std::io::Result<std::fs::File> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(file);
    }
    // Find the last newline, reading backwards in blocks.
    let mut end = len;
    let mut buf = vec![0u8; 64 << 10];
    let keep = loop {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            break start + i as u64 + 1;
        }
        if start == 0 {
            break 0;
        }
        end = start;
    };
    if keep < len {
        tracing::warn!(path = %path.display(), bytes = len - keep, "audit log ended in a torn line; cut it off");
        file.set_len(keep)?;
    }
    Ok(file)
}

struct Writer {
    file: std::fs::File,
    /// The file's length after the last good write: a failed write is cut back to it, so a
    /// retry never leaves half a line in the middle of the file.
    len: u64,
    path: PathBuf,
    opts: AuditOptions,
    counters: Arc<Counters>,
    /// Whole lines not yet written (the disk refused them).
    pending: Vec<u8>,
    pending_records: u64,
}

impl Writer {
    fn run(&mut self, rx: std::sync::mpsc::Receiver<Msg>) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut acks: Vec<oneshot::Sender<bool>> = Vec::new();
        loop {
            let first = if self.pending.is_empty() {
                match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => break,
                }
            } else {
                match rx.recv_timeout(RETRY) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            let mut stop = false;
            let mut next = first;
            // Take whatever else is queued, so a burst costs one write.
            while let Some(msg) = next {
                match msg {
                    Msg::Stop => {
                        stop = true;
                        break;
                    }
                    Msg::Record(r, ack) => {
                        self.counters.queued.fetch_sub(1, Ordering::Relaxed);
                        self.add(&r);
                        acks.extend(ack);
                    }
                }
                next = if self.pending.len() < 1 << 20 {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            let ok = self.write(!acks.is_empty());
            for a in acks.drain(..) {
                let _ = a.send(ok);
            }
            if stop {
                break;
            }
        }
        // Last attempt for what is still pending, then sync.
        if !self.pending.is_empty() && !self.write(false) {
            let n = self.pending_records;
            self.counters.failures.fetch_add(n, Ordering::Relaxed);
            tracing::error!(path = %self.path.display(), records = n, "audit records lost at shutdown: the log cannot be written");
        }
        if let Err(e) = self.file.sync_all() {
            tracing::error!(path = %self.path.display(), error = %e, "audit log sync failed");
        }
    }

    fn add(&mut self, r: &Record) {
        match r.line() {
            Ok(l) if self.pending.len() + l.len() <= MAX_PENDING => {
                self.pending.extend_from_slice(&l);
                self.pending_records += 1;
            }
            Ok(_) => {
                let n = self.counters.failures.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(path = %self.path.display(), failed_total = n, "audit record lost: the log has not been writable for a while and the memory bound is reached");
            }
            Err(e) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "audit record could not be serialised");
            }
        }
    }

    /// Writes what is pending, in as few writes as the size bound allows: whole records that
    /// fit in the current file, then a rotation, and so on, so a file passes `rotate_bytes`
    /// only when one record alone is larger (a batch of several responses' records, queued
    /// while the writer was busy, used to go into one file whole). `sync` also makes it
    /// durable. Whether everything pending is now written (and synced if asked).
    fn write(&mut self, sync: bool) -> bool {
        if self.pending.is_empty() {
            return !self.counters.failing.load(Ordering::Relaxed);
        }
        let mut r = Ok(());
        while !self.pending.is_empty() {
            let mut take = self.pending.len();
            if let Some(max) = self.opts.rotate_bytes
                && self.len + take as u64 > max
            {
                let room = max.saturating_sub(self.len) as usize;
                // The whole records that fit in the room left.
                let fits = self.pending[..room.min(self.pending.len())]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map(|i| i + 1);
                match fits {
                    Some(n) => take = n,
                    None if self.len > 0 => {
                        self.rotate();
                        continue;
                    }
                    // An empty file and a first record larger than the bound: it goes alone.
                    None => {
                        take = self
                            .pending
                            .iter()
                            .position(|&b| b == b'\n')
                            .map_or(self.pending.len(), |i| i + 1);
                    }
                }
            }
            r = self.file.write_all(&self.pending[..take]);
            if r.is_err() {
                break;
            }
            let records = self.pending[..take].iter().filter(|&&b| b == b'\n').count() as u64;
            self.len += take as u64;
            self.counters.written.fetch_add(records, Ordering::Relaxed);
            self.pending.drain(..take);
            self.pending_records = self.pending_records.saturating_sub(records);
        }
        if r.is_ok() && sync {
            r = self.file.sync_data();
        }
        match r {
            Ok(()) => {
                if self.counters.failing.swap(false, Ordering::Relaxed) {
                    tracing::warn!(path = %self.path.display(), "audit log writable again");
                }
                true
            }
            Err(e) => {
                // Cut back whatever part of the failed write reached the file: what is still
                // pending is tried again, and a reader never meets a torn line. (After a failed
                // sync the records stay written; a later sync makes them durable, and the
                // waiters are told now that they are not confirmed.)
                let _ = self.file.set_len(self.len);
                let n = self.counters.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if !self.counters.failing.swap(true, Ordering::Relaxed) || n.is_multiple_of(100) {
                    tracing::error!(path = %self.path.display(), error = %e, failed_writes = n, waiting = self.pending_records, "audit log write failed; records wait in memory and are retried");
                }
                false
            }
        }
    }

    /// `path` → `path.1` → … → `path.keep` (the oldest deleted), and a new empty `path`.
    fn rotate(&mut self) {
        let path = &self.path;
        let name = |i: u32| {
            let mut s = path.as_os_str().to_owned();
            s.push(format!(".{i}"));
            PathBuf::from(s)
        };
        let _ = self.file.sync_all();
        let keep = self.opts.keep.max(1);
        let _ = std::fs::remove_file(name(keep));
        for i in (1..keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        let opened = std::fs::rename(path, name(1)).and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        });
        match opened {
            Ok(f) => {
                self.file = f;
                self.len = 0;
                self.counters.rotations.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "audit log rotation failed; still writing the current file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn end(request_id: &str) -> Record {
        Record::StreamEnd(StreamEndRecord {
            time: now(),
            request: RequestInfo {
                request_id: request_id.into(),
                ..RequestInfo::default()
            },
            end: "completed".into(),
            events: 1,
            decisions: 0,
        })
    }

    #[test]
    fn a_torn_last_line_is_cut_off_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(&p, "{\"v\":1}\n{\"v\":1,\"ty").unwrap();
        drop(open_repaired(&p).unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"v\":1}\n");
        // A file with no newline at all is all torn.
        std::fs::write(&p, "x".repeat(100_000)).unwrap();
        drop(open_repaired(&p).unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "");
    }

    #[test]
    fn records_the_disk_refused_are_written_when_it_accepts_them_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let counters = Arc::new(Counters::default());
        let mut w = Writer {
            file: std::fs::OpenOptions::new()
                .append(true)
                .open("/dev/full")
                .unwrap(),
            len: 0,
            path: path.clone(),
            opts: AuditOptions::default(),
            counters: Arc::clone(&counters),
            pending: Vec::new(),
            pending_records: 0,
        };
        w.add(&end("one"));
        w.add(&end("two"));
        assert!(!w.write(true), "/dev/full refuses");
        assert!(counters.failing.load(Ordering::Relaxed));
        assert_eq!(counters.written.load(Ordering::Relaxed), 0);
        // The disk has room again.
        w.file = open_repaired(&path).unwrap();
        w.add(&end("three"));
        assert!(w.write(false));
        assert!(!counters.failing.load(Ordering::Relaxed));
        assert_eq!(counters.written.load(Ordering::Relaxed), 3);
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["data"]["request_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(ids, ["one", "two", "three"], "in order, none lost");
    }

    /// A writer on a new file at `path` that rotates past `bytes`, keeping `keep` files.
    fn rotating_writer(path: &Path, bytes: u64, keep: u32, counters: &Arc<Counters>) -> Writer {
        Writer {
            file: open_repaired(path).unwrap(),
            len: 0,
            path: path.to_path_buf(),
            opts: AuditOptions {
                rotate_bytes: Some(bytes),
                keep,
                ..AuditOptions::default()
            },
            counters: Arc::clone(counters),
            pending: Vec::new(),
            pending_records: 0,
        }
    }

    #[test]
    fn rotation_shifts_files_and_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let counters = Arc::new(Counters::default());
        let mut w = rotating_writer(&path, 300, 2, &counters);
        for i in 0..10 {
            w.add(&end(&format!("r{i}")));
            assert!(w.write(false));
        }
        let name = |s: &str| dir.path().join(format!("a.jsonl{s}"));
        assert!(name(".1").exists() && name(".2").exists() && !name(".3").exists());
        let newest = std::fs::read_to_string(name("")).unwrap();
        assert!(newest.contains("\"r9\""), "{newest}");
        assert!(counters.rotations.load(Ordering::Relaxed) >= 3);
    }

    /// Records queued together (a busy writer takes a burst at once) are still split between
    /// files at record boundaries: no file passes the bound, and every record is kept, in
    /// order. A record larger than the bound goes alone into a file of its own.
    #[test]
    fn a_batch_larger_than_the_bound_is_split_between_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let counters = Arc::new(Counters::default());
        let mut w = rotating_writer(&path, 400, 100, &counters);
        let one = end("r0").line().unwrap().len();
        assert!(one < 400 && 2 * one > 200, "records of {one} bytes");
        let big = format!("r-{}", "x".repeat(600));
        let mut ids: Vec<String> = (0..7).map(|i| format!("r{i}")).collect();
        ids.insert(3, big);
        for id in &ids {
            w.add(&end(id));
        }
        assert!(w.write(false));
        assert_eq!(counters.written.load(Ordering::Relaxed), ids.len() as u64);
        let mut files = vec![path.clone()];
        for i in 1.. {
            let f = dir.path().join(format!("a.jsonl.{i}"));
            if !f.exists() {
                break;
            }
            files.push(f);
        }
        let mut got = Vec::new();
        for f in files.iter().rev() {
            let text = std::fs::read_to_string(f).unwrap();
            let big_one = text.contains("xxxx");
            assert!(
                text.len() <= 400 || (big_one && text.lines().count() == 1),
                "{} has {} bytes",
                f.display(),
                text.len()
            );
            got.extend(text.lines().map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["data"]["request_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }));
        }
        assert_eq!(got, ids, "every record, in order");
    }
}
