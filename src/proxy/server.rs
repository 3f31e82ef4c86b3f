//! The hyper layer: accept connections, route each request to its upstream, and wrap scanned
//! response bodies in a [`PipelineBody`], which only polls the upstream, forwards bytes through
//! the sans-IO [`Pipeline`] and reports how the stream ended, exactly once. Dropping the body
//! (the client went away, or a block ended the stream) drops the upstream body, which cancels
//! the upstream request.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::api::{self, Api};
use super::config::{Config, UpstreamHttp2};
use super::metrics::Metrics;
use super::pipeline::{Decision, Pipeline, ScanSetup, Scope, scan_response};
use crate::audit::{self, AuditSink, DecisionRecord, Record, RequestInfo, StreamEndRecord};
use crate::index::Index;
use crate::matcher::{exemptions, exemptions_read};
use crate::policy::Policy;
use arc_swap::ArcSwap;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;
type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, ProxyBody>;

/// What a reload replaces: the policy and the indexes. Each request takes a snapshot, so a
/// stream finishes under the policy and indexes it started with.
pub struct Loaded {
    pub policy: Arc<Policy>,
    pub indexes: Vec<Arc<Index>>,
}

struct Shared {
    cfg: Config,
    /// TLS settings of upstream connections (the roots to trust), built once at bind.
    upstream_tls: rustls::ClientConfig,
    loaded: ArcSwap<Loaded>,
    audit: AuditSink,
    metrics: Metrics,
    /// Becomes true when the server starts shutting down: a connection that has not sent its
    /// first bytes yet is closed then instead of being waited for.
    stopping: tokio::sync::watch::Sender<bool>,
    /// True while the indexes the server started with are being read into the page cache
    /// (`warm_indexes`): `/readyz` answers 503 meanwhile.
    warming: AtomicBool,
}

/// A bound, not yet running proxy.
pub struct Server {
    listener: TcpListener,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
    audit_writer: Option<tokio::task::JoinHandle<()>>,
    /// Started with the server, idle until it runs; they end when it is dropped.
    workers: Vec<Worker>,
}

/// Controls a running proxy (reload); cheap to clone.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// Re-reads the policy file and reopens the indexes named in the configuration, and
    /// swaps them in. On any problem the running policy and indexes stay, and the problem is
    /// returned (and logged, and counted in metrics). In-flight streams are not affected.
    pub fn reload(&self) -> Result<(), String> {
        let s = &self.shared;
        let current = s.loaded.load_full();
        let indexes = if s.cfg.indexes.is_empty() {
            current.indexes.clone()
        } else {
            let mut v = Vec::new();
            for d in &s.cfg.indexes {
                match Index::open(d) {
                    Ok(ix) => v.push(Arc::new(ix)),
                    Err(e) => return s.reload_failed(format!("index {}: {e}", d.display())),
                }
            }
            v
        };
        let policy = policy_for(&s.cfg, &indexes);
        if policy.is_ok()
            && s.cfg.warm_indexes
            && warm_fits(&indexes)
                .inspect_err(|why| tracing::warn!("{why}"))
                .is_ok()
        {
            // Read the new indexes before they take traffic: swapped in cold, every worker's
            // first lookups would wait on the disk with their streams behind them.
            for ix in indexes.iter().filter(|ix| !ix.is_warm()) {
                if let Err(e) = warm(s, ix) {
                    return s.reload_failed(format!("index {}: {e}", ix.dir().display()));
                }
            }
        }
        match policy {
            Ok(policy) => {
                let loaded = Loaded {
                    policy: Arc::new(policy),
                    indexes,
                };
                set_loaded_metrics(&s.metrics, &loaded);
                tracing::info!(policy = %loaded.policy.name, version = %loaded.policy.hash, indexes = loaded.indexes.len(), "reloaded");
                s.loaded.store(Arc::new(loaded));
                if s.cfg.warm_indexes {
                    // What is in force now has been read (above).
                    s.warming.store(false, Relaxed);
                }
                s.metrics.reload(true);
                Ok(())
            }
            Err(e) => s.reload_failed(e),
        }
    }
}

/// Whether the indexes' mapped files fit the memory the machine has available: reading more
/// than it can cache would evict what was read first (and other processes' pages) and only
/// delay readiness — such indexes are read as lookups reach them, as with `warm_indexes = false`.
fn warm_fits(indexes: &[Arc<Index>]) -> Result<(), String> {
    let need: u64 = indexes.iter().map(|i| i.mapped_bytes()).sum();
    match crate::procstat::mem_available() {
        Some(have) if need > have => Err(format!(
            "the indexes' {:.1} GB are more than the {:.1} GB of memory available: not read into the page cache at start (warm_indexes); lookups will read from the disk",
            need as f64 / 1e9,
            have as f64 / 1e9
        )),
        _ => Ok(()),
    }
}

/// Reads one index into the page cache ([`Index::warm`]), counted in the metrics; gives up
/// when the server stops.
fn warm(s: &Shared, ix: &Index) -> std::io::Result<()> {
    let stopping = s.stopping.subscribe();
    s.metrics.index_warming(true);
    let t = std::time::Instant::now();
    let r = ix.warm(|| *stopping.borrow());
    s.metrics.index_warming(false);
    let bytes = r?;
    s.metrics.index_warm_bytes(bytes);
    if ix.is_warm() {
        tracing::info!(index = %ix.dir().display(), bytes, seconds = t.elapsed().as_secs_f64(), "index read into the page cache");
        Ok(())
    } else {
        Err(std::io::Error::other("the server is stopping"))
    }
}

/// Reads the indexes the server starts with into the page cache, on a thread of its own so
/// that the proxy serves meanwhile (`/readyz` answers 503 until done). It holds the server
/// weakly and stops when the server stops or a reload has replaced an index it has not read
/// yet (a reload reads its own). A failure leaves the index cold, which is slower, not wrong:
/// it is logged and the server reports ready.
fn spawn_warm(shared: &Arc<Shared>) -> std::io::Result<()> {
    let weak = Arc::downgrade(shared);
    let indexes = shared.loaded.load().indexes.clone();
    if let Err(why) = warm_fits(&indexes) {
        tracing::warn!("{why}");
        shared.warming.store(false, Relaxed);
        return Ok(());
    }
    std::thread::Builder::new()
        .name("verbatim-warm".into())
        .spawn(move || {
            for ix in indexes {
                let Some(s) = weak.upgrade() else { return };
                if !s.loaded.load().indexes.iter().any(|i| Arc::ptr_eq(i, &ix)) {
                    continue;
                }
                if let Err(e) = warm(&s, &ix) {
                    tracing::warn!(index = %ix.dir().display(), error = %e, "index not read into the page cache; lookups will read from the disk");
                }
            }
            if let Some(s) = weak.upgrade() {
                s.warming.store(false, Relaxed);
            }
        })
        .map(drop)
}

impl Shared {
    fn reload_failed(&self, e: String) -> Result<(), String> {
        tracing::error!(error = %e, "reload rejected; the running policy and indexes stay");
        self.metrics.reload(false);
        Err(e)
    }
}

fn set_loaded_metrics(m: &Metrics, l: &Loaded) {
    let ids: Vec<String> = l
        .indexes
        .iter()
        .map(|i| i.manifest().index_id.clone())
        .collect();
    m.set_loaded(&l.policy.name, &l.policy.hash, &ids);
}

/// The policy the configuration names (checked against the indexes), or its built-in rules.
fn policy_for(cfg: &Config, indexes: &[Arc<Index>]) -> Result<Policy, String> {
    match &cfg.policy {
        Some(path) => {
            let p = Policy::load(path).map_err(|e| e.to_string())?;
            let problems = p.check_against(path, indexes);
            if problems.is_empty() {
                Ok(p)
            } else {
                Err(problems.to_string())
            }
        }
        None => Ok(Policy::from_rules(&cfg.rules)),
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Policy(String),
    #[error("cannot open the audit log {}: {source}", path.display())]
    Audit {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the connection worker threads: {0}")]
    Workers(std::io::Error),
    #[error("upstream.ca_file {}: {reason}", path.display())]
    UpstreamCa {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// TLS settings for upstream connections: the bundled Mozilla roots (works offline and in
/// minimal containers), and the certificates of `upstream.ca_file` (PEM) — a private CA in
/// front of a self-hosted model server.
fn upstream_tls(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, ServeError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let problem = |reason: String| ServeError::UpstreamCa {
            path: path.to_path_buf(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| problem(e.to_string()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| problem(format!("not a PEM certificate list: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| problem(format!("a certificate cannot be a root: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(problem("holds no PEM certificate".into()));
        }
    }
    // The crate's one crypto provider (ring), as hyper-rustls's own `with_webpki_roots` builds.
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The upstream connector: TLS with `tls`'s roots, `TCP_NODELAY`, offering HTTP/2 only where
/// the config asks for it ([`UpstreamHttp2`]).
fn connector(
    tls: rustls::ClientConfig,
    connect_timeout: std::time::Duration,
    http2: UpstreamHttp2,
) -> hyper_rustls::HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.enforce_http(false);
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    match http2 {
        UpstreamHttp2::Never => tls.enable_http1().wrap_connector(http),
        UpstreamHttp2::Negotiate => tls.enable_http1().enable_http2().wrap_connector(http),
        UpstreamHttp2::PriorKnowledge => tls.enable_http2().wrap_connector(http),
    }
}

/// A worker's upstream clients. Over HTTP/1.1 a hyper client's pool keeps a connection per
/// concurrent request. Over HTTP/2 a hyper client keeps one connection per upstream and, past
/// the upstream's cap on concurrent streams, queues further requests until a stream ends — it
/// opens no second connection (hyperium/hyper#2197, #3623), and a model's streamed answer lasts
/// seconds to minutes. So each client carries at most `max_streams` requests in flight to its
/// upstream, and a request that finds every client of its upstream full gets a new client,
/// which opens a new connection.
#[derive(Clone)]
struct Upstreams {
    /// Shared by the clients (its TLS settings and root store once).
    connector: hyper_rustls::HttpsConnector<HttpConnector>,
    http2: UpstreamHttp2,
    /// Requests in flight a client may carry to one upstream (no limit over HTTP/1.1 only,
    /// where a client's pool opens a connection per concurrent request).
    max_streams: usize,
    /// Clients by upstream, each with its requests in flight. One worker's: the lock is never
    /// contended.
    clients: Arc<std::sync::Mutex<Vec<UpstreamClient>>>,
    /// HTTP/2 flow-control windows: (a stream's, the connection's). See [`h2_windows`].
    h2_windows: (u32, u32),
    /// HTTP/1.1 only, for WebSocket upgrades ([`tunnel`]): an upgrade is an HTTP/1.1 request,
    /// whatever version the upstream's other requests use.
    tunnels: HttpsClient,
}

/// Bytes an HTTP/2 upstream may send on one stream before Verbatim has passed them on: hyper's
/// client default, so a large answer (embeddings, a whole file) arrives as fast as it did.
pub const H2_STREAM_WINDOW: u32 = 2 << 20;

/// Bytes an HTTP/2 client may send on one request before Verbatim has passed them on, and the
/// requests a client connection may have open at once: hyper's server defaults.
const CLIENT_H2_STREAM_WINDOW: u32 = 1 << 20;
const CLIENT_H2_MAX_STREAMS: u32 = 200;

/// The HTTP/2 flow-control windows of a connection carrying up to `max_streams` streams whose
/// windows would be `stream` bytes: (a stream's, the connection's).
///
/// A stream Verbatim cannot pass on holds still — an answer whose client stopped reading
/// (backpressure), an upload whose upstream reads nothing — and what the peer already sent on
/// it waits, counted against both windows until it moves on. With hyper's defaults (upstream
/// connections: 2 MiB a stream, 5 MiB the connection; client connections: 1 MiB and 1 MiB)
/// three such streams of an upstream connection, or one of a client's, used the connection's
/// whole window, and every other stream on it stopped with them (`tests/proxy.rs`,
/// `clients_that_stop_reading_do_not_stall_other_streams_on_a_shared_http2_upstream`,
/// `an_upload_the_upstream_does_not_read_does_not_stall_the_clients_other_http2_streams`). So
/// a connection's window is the sum of its streams' windows: stalled streams can never take
/// it all. That is a bound, not a buffer: a stalled stream still holds at most its own window,
/// as before. Past the largest window HTTP/2 allows (2³¹ − 1) the streams' windows shrink to
/// fit, down to the protocol's initial 65,535 bytes at [`H2_MAX_STREAMS`] streams (the most
/// `upstream.http2_max_streams` accepts).
pub fn h2_windows(stream: u32, max_streams: usize) -> (u32, u32) {
    const MAX: u64 = (1 << 31) - 1;
    let n = max_streams.clamp(1, H2_MAX_STREAMS) as u64;
    let stream = u64::from(stream).min(MAX / n).max(65_535);
    (stream as u32, (stream * n) as u32)
}

/// The most streams an HTTP/2 connection may be given (`upstream.http2_max_streams`): as many
/// windows of 65,535 bytes as HTTP/2's largest window holds ([`h2_windows`]).
pub const H2_MAX_STREAMS: usize = ((1u64 << 31) - 1) as usize / 65_535;

struct UpstreamClient {
    scheme: Option<http::uri::Scheme>,
    authority: Option<http::uri::Authority>,
    client: HttpsClient,
    in_flight: Arc<AtomicUsize>,
}

impl Upstreams {
    fn new(cfg: &Config, tls: &rustls::ClientConfig) -> Upstreams {
        Upstreams {
            connector: connector(tls.clone(), cfg.timeouts.connect, cfg.upstream_http2),
            http2: cfg.upstream_http2,
            max_streams: match cfg.upstream_http2 {
                UpstreamHttp2::Never => usize::MAX,
                _ => cfg.upstream_http2_max_streams,
            },
            clients: Arc::default(),
            h2_windows: h2_windows(H2_STREAM_WINDOW, cfg.upstream_http2_max_streams),
            tunnels: Client::builder(TokioExecutor::new()).build(connector(
                tls.clone(),
                cfg.timeouts.connect,
                UpstreamHttp2::Never,
            )),
        }
    }

    /// The client to send a request to `uri` with, and the request's place in that client's
    /// count, to keep until its response body is dropped.
    fn client(&self, uri: &Uri) -> (HttpsClient, Live) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let least = clients
            .iter()
            .filter(|c| {
                c.scheme.as_ref() == uri.scheme() && c.authority.as_ref() == uri.authority()
            })
            .min_by_key(|c| c.in_flight.load(Relaxed));
        let c = match least {
            Some(c) if c.in_flight.load(Relaxed) < self.max_streams => c,
            _ => {
                let mut b = Client::builder(TokioExecutor::new());
                b.http2_only(self.http2 == UpstreamHttp2::PriorKnowledge)
                    .http2_initial_stream_window_size(self.h2_windows.0)
                    .http2_initial_connection_window_size(self.h2_windows.1);
                clients.push(UpstreamClient {
                    scheme: uri.scheme().cloned(),
                    authority: uri.authority().cloned(),
                    client: b.build(self.connector.clone()),
                    in_flight: Arc::default(),
                });
                &clients[clients.len() - 1]
            }
        };
        (c.client.clone(), Live::new(&c.in_flight))
    }
}

/// An upstream response's body, holding its request's place in its client's count of
/// requests in flight ([`Upstreams`]) until dropped: an HTTP/2 stream ends when its body has
/// been read to the end or dropped.
struct UpstreamBody {
    inner: Incoming,
    _in_flight: Live,
    /// Bytes already read from `inner` to look at them ([`first_line`]), given out first.
    head: Option<Bytes>,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(h) = &self.head {
            let n = h.len() as u64;
            hint.set_lower(hint.lower() + n);
            if let Some(u) = hint.upper() {
                hint.set_upper(u + n);
            }
        }
        hint
    }
}

/// Reads the start of `body` to the end of its first line (or 64 KiB, or the body's end),
/// keeping what it read to be given out first.
async fn first_line(body: &mut UpstreamBody, idle: std::time::Duration) -> Result<Bytes, BoxError> {
    let mut buf = Vec::new();
    while !buf.contains(&b'\n') && buf.len() < 64 << 10 {
        match tokio::time::timeout(idle, body.inner.frame()).await {
            Err(_) => return Err("the upstream response did not arrive in time".into()),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    buf.extend_from_slice(&d);
                }
            }
        }
    }
    let buf = Bytes::from(buf);
    body.head = (!buf.is_empty()).then(|| buf.clone());
    Ok(buf)
}

impl Server {
    pub async fn bind(cfg: Config, indexes: Vec<Arc<Index>>) -> Result<Server, ServeError> {
        let addr = cfg.listen;
        let policy = policy_for(&cfg, &indexes).map_err(ServeError::Policy)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let admin = match cfg.admin_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|source| ServeError::Bind { addr: a, source })?,
            ),
            None => None,
        };
        let (audit, audit_writer) = match &cfg.audit_log {
            Some(path) => {
                let (sink, handle) =
                    AuditSink::open(path, &cfg.audit).map_err(|source| ServeError::Audit {
                        path: path.clone(),
                        source,
                    })?;
                (sink, Some(handle))
            }
            None => (AuditSink::disabled(), None),
        };
        let loaded = Loaded {
            policy: Arc::new(policy),
            indexes,
        };
        let metrics = Metrics::default();
        set_loaded_metrics(&metrics, &loaded);
        let upstream_tls = upstream_tls(cfg.upstream_ca_file.as_deref())?;
        let shared = Arc::new(Shared {
            cfg,
            upstream_tls,
            loaded: ArcSwap::from_pointee(loaded),
            audit,
            metrics,
            stopping: tokio::sync::watch::Sender::new(false),
            warming: AtomicBool::new(false),
        });
        if shared.cfg.warm_indexes && !shared.loaded.load().indexes.is_empty() {
            shared.warming.store(true, Relaxed);
            spawn_warm(&shared).map_err(ServeError::Workers)?;
        }
        let n = std::thread::available_parallelism().map_or(1, usize::from);
        let workers = (0..n)
            .map(|i| Worker::spawn(i, Arc::clone(&shared)))
            .collect::<std::io::Result<_>>()
            .map_err(ServeError::Workers)?;
        Ok(Server {
            listener,
            admin,
            shared,
            audit_writer,
            workers,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// The admin listener's address, if one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn handle(&self) -> Handle {
        Handle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serves until `shutdown` completes, then waits for open connections to finish.
    ///
    /// Connections are accepted here and served by workers, one thread per core, each
    /// with its own single-threaded runtime and upstream connection pool: a stream's client
    /// connection, upstream connection and scanning stay on one thread. On the multi-threaded
    /// runtime they were spread over its workers, and every event woke the other one to steal
    /// the task (docs/benchmarks.md, "Where scanning's CPU per chunk goes").
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let workers = self.workers;
        tokio::pin!(shutdown);
        let admin = self.admin;
        loop {
            tokio::select! {
                accepted = async { admin.as_ref()?.accept().await.ok() }, if admin.is_some() => {
                    let Some((stream, _)) = accepted else { continue };
                    let handle = Handle { shared: Arc::clone(&self.shared) };
                    let service = hyper::service::service_fn(move |req| {
                        let handle = handle.clone();
                        async move { Ok::<_, Infallible>(admin_handle(handle, req).await) }
                    });
                    let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
                    // Tracked by `graceful`: shutdown waits for it.
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let stream = match stream.into_std() {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "accepted connection unusable");
                            continue;
                        }
                    };
                    // To the worker with the fewest connections open (connections end at
                    // different times; round robin would let one worker collect the long
                    // ones). A connection stays on its worker's thread.
                    let w = &workers[least_loaded(workers.iter().map(|w| w.live.load(Relaxed)))];
                    let live = Live::new(&w.live);
                    // Tracked by `graceful` from here: shutdown waits for it.
                    if w.tx.send((stream, peer, graceful.watcher(), live)).is_err() {
                        tracing::error!(%peer, "connection worker gone; connection dropped");
                    }
                }
                () = &mut shutdown => break,
            }
        }
        self.shared.stopping.send_replace(true);
        graceful.shutdown().await;
        for w in workers {
            drop(w.tx);
            let _ = tokio::task::spawn_blocking(move || w.thread.join()).await;
        }
        // Every connection is done: the writer writes what is queued, syncs and ends. (A
        // `Handle` may still hold the sink, so this cannot wait for the last sender to drop.)
        self.shared.audit.stop().await;
        if let Some(w) = self.audit_writer {
            let _ = w.await;
        }
    }
}

/// An accepted client connection, handed to a worker, watched for graceful shutdown, counted
/// in its worker's load while it lives.
type Accepted = (
    std::net::TcpStream,
    SocketAddr,
    hyper_util::server::graceful::Watcher,
    Live,
);

/// One in a count, until dropped: a connection in a worker's count of open connections (until
/// it ended, failed, or never reached the worker), or a request in an upstream client's count
/// of requests in flight (until its response body is dropped, or the request failed).
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(count: &Arc<AtomicUsize>) -> Live {
        count.fetch_add(1, Relaxed);
        Live(Arc::clone(count))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The index of the smallest load (the first of equal ones).
fn least_loaded(loads: impl Iterator<Item = usize>) -> usize {
    loads
        .enumerate()
        .min_by_key(|&(i, n)| (n, i))
        .map_or(0, |(i, _)| i)
}

/// A thread serving the connections it is handed on its own single-threaded runtime, with
/// its own upstream client (pooled upstream connections are driven by the runtime that made
/// them, so a shared pool would bring the other threads back into every stream).
struct Worker {
    tx: tokio::sync::mpsc::UnboundedSender<Accepted>,
    thread: std::thread::JoinHandle<()>,
    /// Connections handed to it and not yet ended.
    live: Arc<AtomicUsize>,
}

impl Worker {
    fn spawn(i: usize, shared: Arc<Shared>) -> std::io::Result<Worker> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Accepted>();
        let thread = std::thread::Builder::new()
            .name(format!("verbatim-worker-{i}"))
            .spawn(move || {
                rt.block_on(async move {
                    let client = Upstreams::new(&shared.cfg, &shared.upstream_tls);
                    // Ends when the server has shut down (every connection done) and drops
                    // the sender.
                    while let Some((stream, peer, watcher, live)) = rx.recv().await {
                        let stream = match tokio::net::TcpStream::from_std(stream) {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::warn!(%peer, error = %e, "accepted connection unusable");
                                continue;
                            }
                        };
                        let header = shared.cfg.timeouts.client_header;
                        let stopping = shared.stopping.subscribe();
                        let shared = Arc::clone(&shared);
                        let client = client.clone();
                        // Boxed: hyper keeps the allocation of a service future for as long as
                        // the connection lives; this one's state (`forward` and the upstream
                        // request in flight) is freed when the response starts, 1.9 KB of
                        // every open stream otherwise (heaptrack).
                        let service = hyper::service::service_fn(move |req| {
                            let (shared, client) = (Arc::clone(&shared), client.clone());
                            let answer: Pin<Box<dyn Future<Output = _> + Send>> =
                                Box::pin(async move {
                                    Ok::<_, Infallible>(handle(shared, client, req).await)
                                });
                            answer
                        });
                        tokio::spawn(async move {
                            let _live = live;
                            if let Err(e) =
                                serve_client(stream, service, watcher, header, stopping).await
                            {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                        });
                    }
                });
            })?;
        Ok(Worker {
            tx,
            thread,
            live: Arc::default(),
        })
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4): how a client speaking HTTP/2 without TLS
/// ("prior knowledge") starts.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one client connection with HTTP/1.1, or HTTP/2 if it opens with the preface.
///
/// Hand-written instead of hyper-util's `auto::Builder`, which reads the first bytes to tell
/// the versions apart and replays them through a `Rewind`: hyper's first read then returns
/// those bytes alone, its second finds less than 8 KiB free and doubles the read buffer to
/// 16 KiB — 8 KiB more for every open connection (heaptrack of 1,000 idle streams,
/// docs/benchmarks.md, "Memory per idle stream"). Here the bytes are only peeked at, so hyper
/// reads them itself into its 8 KiB buffer.
///
/// `header` (`timeouts.client_header_ms`) bounds the wait for the first bytes, and for HTTP/1.1
/// every request head, from the connection's start or the end of the last response (hyper's
/// header read timeout, which needs its timer set): past it the connection is closed. So does
/// the server shutting down (`stopping`) while the first bytes are awaited: until they come
/// there is no hyper connection for the graceful shutdown to end.
async fn serve_client<S>(
    stream: tokio::net::TcpStream,
    service: S,
    watcher: hyper_util::server::graceful::Watcher,
    header: std::time::Duration,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<ProxyBody>> + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let h2 = tokio::select! {
        sniffed = tokio::time::timeout(header, speaks_h2(&stream)) => match sniffed {
            Ok(h2) => h2,
            Err(_) => {
                tracing::debug!("client sent nothing in time; connection closed");
                return Ok(());
            }
        },
        _ = stopping.wait_for(|s| *s) => return Ok(()),
    };
    if h2 {
        // Windows as [`h2_windows`] says: an upload its upstream does not read stops only
        // itself.
        let (stream_window, conn_window) =
            h2_windows(CLIENT_H2_STREAM_WINDOW, CLIENT_H2_MAX_STREAMS as usize);
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .max_concurrent_streams(CLIENT_H2_MAX_STREAMS)
            .initial_stream_window_size(stream_window)
            .initial_connection_window_size(conn_window)
            .serve_connection(TokioIo::new(stream), service);
        watcher.watch(conn).await
    } else {
        // With upgrades, for WebSockets ([`tunnel`]). hyper-util's graceful shutdown does not
        // take an upgradeable connection, so the watcher is held until it ends and the
        // shutdown signal (`stopping`, sent before the graceful shutdown waits) ends it.
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let _counted = watcher;
        tokio::pin!(conn);
        let stop = async {
            let _ = stopping.wait_for(|s| *s).await;
        };
        tokio::select! {
            r = conn.as_mut() => return r,
            () = stop => {}
        }
        conn.as_mut().graceful_shutdown();
        conn.await
    }
}

/// Whether the client's first bytes are the HTTP/2 preface, looked at without consuming them.
/// Anything else, an error, the end of the stream or a preface left unfinished for 10 s is left
/// to HTTP/1.1, which answers or closes as it does for any malformed request.
async fn speaks_h2(stream: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; H2_PREFACE.len()];
    let give_up = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return false;
        }
        if n == H2_PREFACE.len() {
            return true;
        }
        if tokio::time::Instant::now() >= give_up {
            return false;
        }
        // The start of the preface and no more yet (clients send it in one write, so this is
        // rare): peeking again at once would return the same bytes, so wait a little.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A JSON error in the OpenAI/Anthropic shape both SDKs parse.
fn error(status: StatusCode, kind: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Whether a connect error is the connect timeout (`timeouts.connect_ms`) expiring.
fn connect_timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    causes(e)
        .filter_map(|x| x.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::TimedOut)
}

/// `e` and the errors under it (its `source`s), outermost first.
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |x| x.source())
}

/// Whether a header's comma-separated tokens include `token` (case-insensitive).
fn has_token(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A WebSocket opening handshake (RFC 6455 §4.1): an HTTP/1.1 `GET` asking to upgrade to
/// `websocket`. Any other upgrade (h2c above all: smuggling) is stripped as hop-by-hop.
fn wants_websocket<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::GET
        && req.version() == http::Version::HTTP_11
        && has_token(req.headers(), header::UPGRADE, "websocket")
        && has_token(req.headers(), header::CONNECTION, "upgrade")
}

/// The answer when the upstream did not answer within `timeouts.first_byte`.
fn no_answer_in_time(cfg: &Config) -> Response<ProxyBody> {
    error(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
        &format!(
            "verbatim: the upstream did not answer within {} ms",
            cfg.timeouts.first_byte.as_millis()
        ),
    )
}

/// A WebSocket handshake's headers for the next hop: the hop-by-hop ones stripped, the upgrade
/// to `websocket` asked for (or agreed to) again.
fn websocket_hop(h: &mut HeaderMap) {
    strip_hop_by_hop(h);
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// Passes a WebSocket through, unscanned (OpenAI's Realtime API, which the SDKs open at their
/// base URL): the handshake goes to the upstream over HTTP/1.1 with its `Upgrade` and
/// `Connection`; a `101` comes back to the client, and then the bytes of both sides are copied
/// to the other until either closes. Any other answer is relayed as an answer.
async fn tunnel(
    cfg: &Config,
    upstreams: &Upstreams,
    mut req: Request<Incoming>,
    uri: Uri,
) -> Response<ProxyBody> {
    let client_side = hyper::upgrade::on(&mut req);
    let (mut parts, _) = req.into_parts();
    websocket_hop(&mut parts.headers);
    parts.uri = uri;
    let upstream_req = Request::from_parts(parts, full(Bytes::new()));
    let mut resp = match tokio::time::timeout(
        cfg.timeouts.first_byte,
        upstreams.tunnels.request(upstream_req),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "upstream WebSocket handshake failed");
            return error(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "verbatim: the upstream could not be reached",
            );
        }
        Err(_) => {
            return no_answer_in_time(cfg);
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut rparts, body) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        return Response::from_parts(rparts, body.map_err(|e| Box::new(e) as BoxError).boxed());
    }
    let upstream_side = hyper::upgrade::on(&mut resp);
    let (mut rparts, _) = resp.into_parts();
    websocket_hop(&mut rparts.headers);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::join!(client_side, upstream_side) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                tracing::debug!(
                    client = c.is_ok(),
                    upstream = u.is_ok(),
                    "WebSocket upgrade not completed"
                );
                return;
            }
        };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(error = %e, "WebSocket tunnel ended");
        }
    });
    Response::from_parts(rparts, full(Bytes::new()))
}

/// Whether `e` is the upstream refusing the request's HTTP/2 stream (RST_STREAM with
/// REFUSED_STREAM): the stream was not processed at all (RFC 9113 §8.7), so the request may
/// be sent again — what a server does with streams past its concurrency limit before the
/// client has its settings (a burst on a new connection), or when it sheds load.
fn refused_stream(e: &(dyn std::error::Error + 'static)) -> bool {
    causes(e)
        .find_map(|x| x.downcast_ref::<h2::Error>())
        .is_some_and(|h2| h2.is_remote() && h2.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// The content coding of a response other than `identity`, if it has one (RFC 9110 §8.4: a
/// list, in the order applied).
fn compressed(h: &HeaderMap) -> Option<String> {
    let codings: Vec<String> = h
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("unreadable").split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    (!codings.is_empty()).then(|| codings.join(", "))
}

/// Times a request the upstream refuses ([`refused_stream`]) is sent in all.
const REFUSED_ATTEMPTS: u32 = 3;

/// A request as sent upstream, kept to send again: only one whose body Verbatim holds whole
/// (a scanned request's, read before sending, or an empty one).
struct Resend {
    method: http::Method,
    uri: Uri,
    version: http::Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Resend {
    fn of(parts: &http::request::Parts, body: Bytes) -> Resend {
        Resend {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body,
        }
    }

    fn request(&self) -> Request<ProxyBody> {
        let mut r = Request::new(full(self.body.clone()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and others a proxy must not forward as they are.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for n in named {
        h.remove(n.as_str());
    }
    for n in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::HOST,
    ] {
        h.remove(n);
    }
    h.remove("keep-alive");
}

fn upstream_uri(base: &Uri, path_and_query: &str) -> Option<Uri> {
    let prefix = base.path().trim_end_matches('/');
    let pq = format!("{prefix}{path_and_query}");
    Uri::builder()
        .scheme(base.scheme()?.clone())
        .authority(base.authority()?.clone())
        .path_and_query(pq)
        .build()
        .ok()
}

/// The route name of a file's content ([`route_name`]).
const FILE_CONTENT: &str = "file-content";

/// A request's route as metrics and the audit trail name it: its API's name; `file-content`
/// for a file's content (read as a batch's output if it is one, [`api::file_content`]);
/// `passthrough` for the rest.
fn route_name(api: Option<Api>, path: &str) -> &'static str {
    match api {
        Some(_) if api::file_content(path) => FILE_CONTENT,
        Some(a) => a.name(),
        None => "passthrough",
    }
}

/// For a request about Anthropic message batches (not their results): the origin and path
/// prefix the client reached Verbatim by, where a batch's `results_url` must point so that
/// the results come through Verbatim and are scanned ([`api::point_results_here`]). The
/// scheme is `https` only when a TLS terminator in front says so (`x-forwarded-proto`).
fn results_here(parts: &http::request::Parts) -> Option<String> {
    let prefix = api::batches_prefix(parts.uri.path())?;
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))?;
    let scheme = match parts.headers.get("x-forwarded-proto") {
        Some(p) if p.as_bytes().eq_ignore_ascii_case(b"https") => "https",
        _ => "http",
    };
    Some(format!("{scheme}://{host}{prefix}"))
}

/// An upstream body read whole, within `max_response_bytes` and the idle timeout; past
/// either, the 502 to send instead (nothing of the body goes out).
async fn read_whole(cfg: &Config, rbody: UpstreamBody) -> Result<Bytes, Response<ProxyBody>> {
    tokio::time::timeout(
        cfg.timeouts.idle,
        Limited::new(rbody, cfg.max_response_bytes).collect(),
    )
    .await
    .unwrap_or_else(|_| Err("the upstream response did not arrive in time".into()))
    .map(|c| c.to_bytes())
    .map_err(|e| {
        tracing::warn!(error = %e, "upstream response could not be read");
        error(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "verbatim: the upstream response could not be read",
        )
    })
}

/// A message batch object (or a list of them) relayed with its `results_url` pointing at
/// Verbatim; a body that is not such JSON is relayed as it came.
async fn with_results_here(
    cfg: &Config,
    mut rparts: http::response::Parts,
    rbody: UpstreamBody,
    here: &str,
) -> Response<ProxyBody> {
    if compressed(&rparts.headers).is_some() {
        // Asked for `identity`; a compressed body's results_url cannot be rewritten, and left
        // as it is the client would fetch the results round Verbatim. Fail-closed.
        return error(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "verbatim: the upstream sent a message batch compressed though asked for no compression; its results_url cannot be pointed at Verbatim",
        );
    }
    let bytes = match read_whole(cfg, rbody).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let rewritten = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|mut v| api::point_results_here(&mut v, here).then(|| serde_json::to_vec(&v)))
        .and_then(Result::ok);
    let body = rewritten.map_or(bytes, Bytes::from);
    rparts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Response::from_parts(rparts, full(body))
}

/// The admin listener: metrics, health, reload.
async fn admin_handle(h: Handle, req: Request<Incoming>) -> Response<ProxyBody> {
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(full(body));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    };
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => text(StatusCode::OK, h.shared.metrics.render(&h.shared.audit)),
        ("GET", "/healthz") => text(StatusCode::OK, "ok\n".into()),
        ("GET", "/readyz") => match readiness(&h.shared) {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        // A reload reads its indexes from the disk: not on the runtime's threads.
        ("POST", "/admin/reload") => match tokio::task::spawn_blocking(move || h.reload())
            .await
            .unwrap_or_else(|e| Err(format!("reload failed: {e}")))
        {
            Ok(()) => text(StatusCode::OK, "reloaded\n".into()),
            Err(e) => text(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("reload rejected; the running policy stays:\n{e}\n"),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

async fn handle(
    shared: Arc<Shared>,
    client: Upstreams,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    // Liveness and readiness are answered here, never forwarded.
    if req.method() == http::Method::GET && matches!(req.uri().path(), "/healthz" | "/readyz") {
        let ready = match req.uri().path() {
            "/readyz" => readiness(&shared),
            _ => Ok(()),
        };
        let mut r = match ready {
            Ok(()) => Response::new(full("ok\n")),
            Err(why) => {
                let mut r = Response::new(full(format!("{why}\n")));
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                r
            }
        };
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return r;
    }
    // Routed once: the API (or none) and its name for metrics and the audit trail.
    let api = Api::route(req.method(), req.uri().path());
    let route = route_name(api, req.uri().path());
    let id = request_id();
    let mut resp = forward(Arc::clone(&shared), &client, req, api, route, id.clone()).await;
    shared.metrics.request(route, resp.status().as_u16());
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-verbatim-request-id", v);
    }
    resp
}

/// Whether the proxy can serve scanned requests now: not while a fail-closed audit trail
/// cannot be written.
fn readiness(shared: &Shared) -> Result<(), &'static str> {
    if shared.audit.refuses() {
        Err("not ready: the audit trail cannot be written (audit.on_failure = fail-closed)")
    } else if shared.warming.load(Relaxed) {
        Err("not ready: reading the indexes into the page cache (warm_indexes)")
    } else {
        Ok(())
    }
}

const AUDIT_REFUSAL: &str =
    "verbatim: the audit trail cannot be written and audit.on_failure is fail-closed";

async fn forward(
    shared: Arc<Shared>,
    upstreams: &Upstreams,
    req: Request<Incoming>,
    api: Option<Api>,
    route: &'static str,
    request_id: String,
) -> Response<ProxyBody> {
    let cfg = &shared.cfg;
    let loaded = shared.loaded.load_full();
    let anthropic = match api {
        Some(a) => a.is_anthropic(),
        None => {
            req.headers().contains_key("anthropic-version")
                || req.headers().contains_key("x-api-key")
        }
    };
    let base = if anthropic {
        &cfg.upstream_anthropic
    } else {
        &cfg.upstream_openai
    };
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let Some(uri) = upstream_uri(base, pq) else {
        return error(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "verbatim: cannot build the upstream URL",
        );
    };
    if wants_websocket(&req) {
        // A WebSocket to an API whose answers are scanned (a WebSocket mode of the Responses
        // API) would carry them unscanned: refused, fail-closed.
        if Api::route(&http::Method::POST, req.uri().path()).is_some() {
            return error(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported",
                "verbatim: a WebSocket to an API whose answers Verbatim scans cannot be scanned; use HTTP requests (streamed or not)",
            );
        }
        return tunnel(cfg, upstreams, req, uri).await;
    }
    let (mut parts, body) = req.into_parts();
    let here = results_here(&parts);
    let file_content = route == FILE_CONTENT;
    let mut info = RequestInfo {
        request_id,
        tenant: tenant(&parts.headers, cfg.tenant_header.as_ref()),
        route: route.to_string(),
        ..RequestInfo::default()
    };
    strip_hop_by_hop(&mut parts.headers);
    parts.uri = uri;
    // The upstream connection's version is negotiated on its own (HTTP/2 by ALPN where the
    // upstream offers it); a client's HTTP/2 must not be demanded of an HTTP/1.1 upstream.
    parts.version = http::Version::HTTP_11;

    // Requests to scanned APIs are read whole (bounded): the stream flag and the caller's own
    // text decide how the response is handled. Everything else streams through untouched.
    let scan = api.filter(|_| !loaded.indexes.is_empty());
    if here.is_some() {
        // Its body is rewritten: it must come as it is.
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    if scan.is_some() && shared.audit.refuses() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            AUDIT_REFUSAL,
        );
    }
    let (upstream_req, setup, resend) = match scan {
        // A body that is already at its end (GET, or nothing sent) can be sent again.
        None if body.is_end_stream() => {
            let resend = Resend::of(&parts, Bytes::new());
            (
                Request::from_parts(parts, full(Bytes::new())),
                None,
                Some(resend),
            )
        }
        None => (
            Request::from_parts(parts, body.map_err(|e| Box::new(e) as BoxError).boxed()),
            None,
            None,
        ),
        Some(api) => {
            let bytes = match Limited::new(body, cfg.max_request_bytes).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) => {
                    return if e.is::<http_body_util::LengthLimitError>() {
                        error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "request_too_large",
                            &format!(
                                "verbatim: request body over {} bytes",
                                cfg.max_request_bytes
                            ),
                        )
                    } else {
                        error(
                            StatusCode::BAD_REQUEST,
                            "invalid_request_error",
                            "verbatim: could not read the request body",
                        )
                    };
                }
            };
            let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
            if let Some(v) = &json {
                info.model = v.get("model").and_then(|m| m.as_str()).map(str::to_string);
                info.streamed = api::wants_stream(v);
            }
            // An answer fetched later (`GET`) asks for a stream in its query.
            if parts.method == http::Method::GET {
                info.streamed =
                    Api::query_streams(parts.uri.path_and_query().map_or("", |p| p.as_str()));
            }
            let answer_kind = json.as_ref().and_then(api::answer_kind);
            let exempt = match &json {
                Some(v) => {
                    let texts = api::request_texts(api, v);
                    let mut keys = exemptions(texts.iter().map(String::as_str), &loaded.indexes);
                    // A code completion's answer is read as code: so is the caller's prompt,
                    // or the answer repeating it would not be found to be the caller's text.
                    if let Some(k) = answer_kind {
                        keys.extend(exemptions_read(
                            texts.iter().map(|t| (t.as_str(), k)),
                            &loaded.indexes,
                        ));
                    }
                    if api::offers_tools(v) {
                        let tool_texts = api::request_tool_texts(api, v);
                        keys.extend(exemptions_read(
                            tool_texts.iter().flat_map(|t| {
                                crate::normalize::tool_text_kinds(t)
                                    .into_iter()
                                    .map(move |k| (t.as_str(), k))
                            }),
                            &loaded.indexes,
                        ));
                    }
                    keys
                }
                None => Default::default(),
            };
            // The response must arrive uncompressed to be scanned.
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            let setup = ScanSetup {
                indexes: loaded.indexes.clone(),
                exempt: Arc::new(exempt),
                policy: Arc::clone(&loaded.policy),
                scope: Scope {
                    tenant: info.tenant.clone(),
                    route: Some(api.name().to_string()),
                    model: info.model.clone(),
                },
                hold: cfg.hold,
                max_event_bytes: cfg.max_event_bytes,
                max_holdback_bytes: cfg.max_holdback_bytes,
                max_response_bytes: cfg.max_response_bytes,
                answer_kind,
            };
            let resend = Resend::of(&parts, bytes.clone());
            (
                Request::from_parts(parts, full(bytes)),
                Some((api, setup)),
                Some(resend),
            )
        }
    };

    let (client, in_flight) = upstreams.client(upstream_req.uri());
    // A stream the upstream refused is sent again, if its body is held; `first_byte` bounds
    // all the attempts together.
    let deadline = tokio::time::Instant::now() + cfg.timeouts.first_byte;
    let mut req = upstream_req;
    let mut attempts = 1;
    let answer = loop {
        match tokio::time::timeout_at(deadline, client.request(req)).await {
            Ok(Err(e)) if refused_stream(&e) => match &resend {
                Some(r) if attempts < REFUSED_ATTEMPTS => {
                    tracing::debug!(upstream = %base, attempts, "the upstream refused the stream; sending it again");
                    attempts += 1;
                    req = r.request();
                }
                _ => {
                    tracing::warn!(upstream = %base, attempts, "the upstream refused the stream");
                    return error(
                        StatusCode::BAD_GATEWAY,
                        "upstream_error",
                        &format!(
                            "verbatim: the upstream refused the request (HTTP/2 REFUSED_STREAM, {attempts} {})",
                            if attempts == 1 {
                                "attempt: its body was streamed and cannot be sent again"
                            } else {
                                "attempts"
                            }
                        ),
                    );
                }
            },
            other => break other,
        }
    };
    let resp = match answer {
        Err(_) => {
            tracing::warn!(upstream = %base, timeout = ?cfg.timeouts.first_byte, "upstream did not answer in time");
            return no_answer_in_time(cfg);
        }
        Ok(Ok(r)) => r,
        Ok(Err(e)) if e.is_connect() && connect_timed_out(&e) => {
            tracing::warn!(upstream = %base, timeout = ?cfg.timeouts.connect, "upstream did not accept a connection in time");
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_connect_timeout",
                &format!(
                    "verbatim: the upstream did not accept a connection within {} ms",
                    cfg.timeouts.connect.as_millis()
                ),
            );
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, upstream = %base, "upstream request failed");
            return error(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "verbatim: the upstream could not be reached",
            );
        }
    };
    let (mut rparts, inner) = resp.into_parts();
    let mut rbody = UpstreamBody {
        inner,
        _in_flight: in_flight,
        head: None,
    };
    strip_hop_by_hop(&mut rparts.headers);
    info.upstream_request_id = ["x-request-id", "request-id"]
        .iter()
        .find_map(|h| rparts.headers.get(*h))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some((api, setup)) = setup.filter(|_| rparts.status.is_success()) else {
        if let Some(here) =
            here.filter(|_| rparts.status.is_success() && !loaded.indexes.is_empty())
        {
            return with_results_here(cfg, rparts, rbody, &here).await;
        }
        return Response::from_parts(rparts, rbody.map_err(|e| Box::new(e) as BoxError).boxed());
    };
    // Asked for `identity`, an upstream (or a box on the way) may compress all the same: the
    // SSE decoder would find no events in it and relay what it cannot read, a JSON answer
    // that does not parse would be relayed as it came — unscanned either way. Fail-closed.
    if let Some(coding) = compressed(&rparts.headers) {
        tracing::warn!(upstream = %base, %coding, "the upstream compressed an answer to be scanned");
        shared.metrics.stream_end(route, "upstream_compressed");
        return error(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            &format!(
                "verbatim: the upstream sent its answer compressed (content-encoding: {coding}) though asked for none; a compressed answer cannot be scanned"
            ),
        );
    }
    if file_content {
        // A file's content: a batch's output is scanned (below, whole, as JSON Lines); any
        // other file is relayed as it is once its first line shows it is not one.
        let head = match first_line(&mut rbody, cfg.timeouts.idle).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "upstream response could not be read");
                return error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    "verbatim: the upstream response could not be read",
                );
            }
        };
        let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let batch =
            serde_json::from_slice::<serde_json::Value>(line).is_ok_and(|v| api::batch_result(&v));
        if !batch {
            return Response::from_parts(
                rparts,
                rbody.map_err(|e| Box::new(e) as BoxError).boxed(),
            );
        }
    }
    let ctype = rparts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    // Read as its label says; an answer labelled neither a stream nor JSON (no content type,
    // as some self-hosted servers send, or `text/plain`) as the request asked for it — it
    // was relayed unscanned before.
    let sse = if file_content {
        false // batch output (above): JSON Lines, whatever its label
    } else if ctype.starts_with("text/event-stream") {
        true
    } else if ctype.starts_with("application/json") {
        false
    } else {
        tracing::debug!(content_type = %ctype, streamed = info.streamed, "an answer to be scanned has no known content type; read as the request asked");
        info.streamed
    };
    if sse {
        rparts.headers.remove(header::CONTENT_LENGTH);
        let hold = format!("{:?}", setup.hold).to_lowercase();
        let body = PipelineBody {
            api,
            shared: Arc::clone(&shared),
            policy: Arc::clone(&loaded.policy),
            info,
            hold,
            decisions: 0,
            ready: Default::default(),
            upstream: Some(rbody),
            pipeline: Pipeline::new(api, setup),
            end: None,
            wait: None,
            arrivals: Default::default(),
            idle: Box::pin(tokio::time::sleep(cfg.timeouts.idle)),
            last_frame: tokio::time::Instant::now(),
            idle_after: cfg.timeouts.idle,
        };
        return Response::from_parts(rparts, body.boxed());
    }
    let bytes = match read_whole(cfg, rbody).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let (changed, decisions) = scan_response(api, &bytes, &setup);
    log_decisions(api, &decisions);
    let hold = format!("{:?}", setup.hold).to_lowercase();
    let (queued, waits) = record_decisions(&shared, &info, &loaded.policy, &hold, &decisions);
    let unrecorded = !queued;
    // `audit.durable`: the block is on disk before the client hears of it.
    let since = std::time::Instant::now();
    for w in waits {
        if !w.await.unwrap_or(false) {
            tracing::error!(request_id = %info.request_id, "a block's audit record is not confirmed on disk");
        }
        shared.metrics.audit_wait(since.elapsed().as_secs_f64());
    }
    if unrecorded && shared.audit.on_failure() == audit::OnFailure::FailClosed {
        shared.metrics.stream_end(route, "audit_failure");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            AUDIT_REFUSAL,
        );
    }
    let blocked = decisions
        .iter()
        .any(|d| d.action == super::pipeline::Action::Block);
    shared
        .metrics
        .stream_end(route, if blocked { "blocked" } else { "completed" });
    shared.audit.record(Record::StreamEnd(StreamEndRecord {
        time: audit::now(),
        request: info,
        end: if blocked { "blocked" } else { "completed" }.into(),
        events: 0,
        decisions: decisions.len() as u64,
    }));
    let body = changed.unwrap_or(bytes);
    rparts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Response::from_parts(rparts, full(body))
}

/// A request id of our own: time and a process-wide counter, hashed (unique per process run).
fn request_id() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let h = xxhash_rust::xxh3::xxh3_64(&[t.to_le_bytes().as_slice(), &n.to_le_bytes()].concat());
    format!("vb_{h:016x}{n:x}")
}

/// The tenant: the value of the operator's tenant header when the request carries a usable one
/// (visible ASCII, at most 128 bytes); otherwise a pseudonym, the first 16 hex digits of the
/// SHA-256 of the credential. The credential itself never leaves the request.
fn tenant(h: &HeaderMap, named: Option<&http::HeaderName>) -> Option<String> {
    if let Some(v) = named.and_then(|n| h.get(n)) {
        match v.to_str().map(str::trim) {
            Ok(t) if !t.is_empty() && t.len() <= 128 && t.bytes().all(|b| b.is_ascii_graphic()) => {
                return Some(t.to_string());
            }
            _ => tracing::warn!(
                header = %named.map(|n| n.as_str()).unwrap_or(""),
                "tenant header is not visible ASCII of at most 128 bytes; using the key's hash"
            ),
        }
    }
    // Anthropic's, Azure OpenAI's, then a bearer token.
    let key = h
        .get("x-api-key")
        .or_else(|| h.get("api-key"))
        .or_else(|| h.get(header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok())?;
    let key = key.strip_prefix("Bearer ").unwrap_or(key);
    Some(audit::sha256_hex(key.as_bytes())[..16].to_string())
}

fn decision_record(
    info: &RequestInfo,
    policy: &Policy,
    d: &Decision,
    hold: &str,
) -> DecisionRecord {
    let c = &d.citation;
    DecisionRecord {
        time: audit::now(),
        request: info.clone(),
        action: d.action.as_str().into(),
        reason: d.reason.clone(),
        rule: d.rule.clone(),
        policy: policy.name.clone(),
        policy_version: policy.hash.clone(),
        policy_action: d.policy_action.as_str().into(),
        shadow: d.shadow,
        stream: d.stream.clone(),
        kind: d.kind.clone(),
        output_start: c.output_start,
        output_end: c.output_end,
        span_sha256: d.span_sha256.clone(),
        excerpt: d.excerpt.clone(),
        units: c.units,
        channel: c.channel.clone(),
        corpus: c.corpus.clone(),
        doc: c.doc.clone(),
        url: c.url.clone(),
        source_start: c.source_start,
        source_end: c.source_end,
        license: c.license.clone(),
        category: d.category.clone(),
        rights: c.rights.clone(),
        index_id: c.index_id.clone(),
        hold: hold.into(),
    }
}

/// Sends decisions to the audit trail and the metrics. Whether every record was queued, and
/// the acknowledgements to wait for (a block's record, when the trail is durable).
fn record_decisions(
    shared: &Shared,
    info: &RequestInfo,
    policy: &Policy,
    hold: &str,
    ds: &[Decision],
) -> (bool, Vec<tokio::sync::oneshot::Receiver<bool>>) {
    let mut queued = true;
    let mut waits = Vec::new();
    for d in ds {
        let r = Record::Decision(Box::new(decision_record(info, policy, d, hold)));
        if d.action == super::pipeline::Action::Block {
            match shared.audit.record_durable(r) {
                Ok(w) => waits.extend(w),
                Err(audit::NotQueued) => queued = false,
            }
        } else {
            queued &= shared.audit.record(r);
        }
        shared.metrics.decision(d);
    }
    (queued, waits)
}

fn log_decisions(api: Api, decisions: &[super::pipeline::Decision]) {
    for d in decisions {
        tracing::info!(
            api = api.name(),
            action = d.action.as_str(),
            reason = d.reason,
            corpus = %d.citation.corpus,
            doc = %d.citation.doc,
            license = %d.citation.license,
            units = d.citation.units,
            "finding"
        );
    }
}

/// How a scanned stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    Completed,
    Blocked,
    UpstreamError,
    ClientCancelled,
    /// A decision could not be recorded and the audit trail is fail-closed.
    AuditFailure,
    /// More was held back than `limits.max_holdback_bytes` allows (fail-closed).
    HoldbackLimit,
    /// The stream passed `limits.max_response_bytes`.
    TooLarge,
}

/// A scanned streaming body: polls the upstream, feeds the pipeline, forwards what it releases.
pub struct PipelineBody {
    api: Api,
    shared: Arc<Shared>,
    policy: Arc<Policy>,
    info: RequestInfo,
    hold: String,
    decisions: u64,
    /// Released events not yet handed to hyper (one frame each).
    ready: std::collections::VecDeque<Bytes>,
    upstream: Option<UpstreamBody>,
    pipeline: Pipeline,
    end: Option<StreamEnd>,
    /// `audit.durable`: a block's record being written and synced; nothing more is sent
    /// until it is.
    wait: Option<(tokio::sync::oneshot::Receiver<bool>, std::time::Instant)>,
    /// (upstream events seen after a frame, when the frame arrived): for the holdback time.
    arrivals: std::collections::VecDeque<(u64, std::time::Instant)>,
    /// Fires when the upstream may have been silent for the idle timeout. It is not reset on
    /// every frame (re-registering a timer takes the timer wheel's lock, which two workers
    /// relaying thousands of frames a second contend on); when it fires early, it is re-armed
    /// from the last frame's time.
    idle: Pin<Box<tokio::time::Sleep>>,
    last_frame: tokio::time::Instant,
    idle_after: std::time::Duration,
}

impl PipelineBody {
    /// Sends the decisions made so far to the log and the audit trail; whether every record
    /// was queued. A block's record, when the trail is durable, is waited for before anything
    /// more is sent.
    fn flush_decisions(&mut self) -> bool {
        let ds = self.pipeline.take_decisions();
        log_decisions(self.api, &ds);
        let (all, mut waits) =
            record_decisions(&self.shared, &self.info, &self.policy, &self.hold, &ds);
        // A block ends the stream: there is at most one to wait for.
        if let Some(rx) = waits.pop() {
            self.wait = Some((rx, std::time::Instant::now()));
        }
        self.decisions += ds.len() as u64;
        // Fail-closed: no decision passes while the trail is failing, even one still queued.
        all && (ds.is_empty() || !self.shared.audit.refuses())
    }

    /// Observes the holdback time of every upstream frame whose events are all released, as
    /// of `now`.
    fn observe_holdback(&mut self, now: std::time::Instant) {
        while let Some(&(n, t)) = self.arrivals.front() {
            if n > self.pipeline.events_out {
                break;
            }
            self.shared
                .metrics
                .holdback(now.saturating_duration_since(t));
            self.arrivals.pop_front();
        }
    }

    /// Records how the stream ended, exactly once.
    fn ended(&mut self, how: StreamEnd) {
        if self.end.is_none() {
            self.end = Some(how);
            self.flush_decisions();
            tracing::info!(api = self.api.name(), end = ?how, events = self.pipeline.events_in, "stream ended");
            let end = match how {
                StreamEnd::Completed => "completed",
                StreamEnd::Blocked => "blocked",
                StreamEnd::UpstreamError => "upstream_error",
                StreamEnd::ClientCancelled => "client_cancelled",
                StreamEnd::AuditFailure => "audit_failure",
                StreamEnd::HoldbackLimit => "holdback_limit",
                StreamEnd::TooLarge => "too_large",
            };
            self.shared.metrics.stream_end(self.api.name(), end);
            self.shared.audit.record(Record::StreamEnd(StreamEndRecord {
                time: audit::now(),
                request: self.info.clone(),
                end: end.into(),
                events: self.pipeline.events_in,
                decisions: self.decisions,
            }));
        }
    }
}

impl Drop for PipelineBody {
    fn drop(&mut self) {
        self.ended(StreamEnd::ClientCancelled);
    }
}

impl Body for PipelineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some((rx, since)) = this.wait.as_mut() {
                let Poll::Ready(written) = Pin::new(rx).poll(cx) else {
                    return Poll::Pending;
                };
                if !written.unwrap_or(false) {
                    tracing::error!(request_id = %this.info.request_id, "a block's audit record is not confirmed on disk");
                }
                this.shared
                    .metrics
                    .audit_wait(since.elapsed().as_secs_f64());
                this.wait = None;
            }
            if let Some(b) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if this.end.is_some() {
                return Poll::Ready(None);
            }
            let Some(up) = this.upstream.as_mut() else {
                // Upstream finished, failed or was dropped after a block.
                this.ready.extend(this.pipeline.finish());
                let how = match this.pipeline.refused() {
                    Some("holdback-limit") => StreamEnd::HoldbackLimit,
                    Some("response-too-large" | "event-too-large") => StreamEnd::TooLarge,
                    _ if this.pipeline.ended_by_block() => StreamEnd::Blocked,
                    _ => StreamEnd::Completed,
                };
                this.ended(how);
                continue;
            };
            match Pin::new(up).poll_frame(cx) {
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let due = this.last_frame + this.idle_after;
                    if due > tokio::time::Instant::now() {
                        this.idle.as_mut().reset(due);
                        continue;
                    }
                    tracing::warn!(request_id = %this.info.request_id, timeout = ?this.idle_after, "upstream silent too long; ending the response");
                    this.upstream = None;
                    this.ready.extend(this.pipeline.abort());
                    this.ended(StreamEnd::UpstreamError);
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // Two clock reads a frame: its arrival (the idle timer's reference, the
                    // scan and holdback timers' start) and the end of its scan (both timers'
                    // end).
                    let t0 = std::time::Instant::now();
                    this.last_frame = tokio::time::Instant::from_std(t0);
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let seen = this.pipeline.events_in;
                    this.pipeline.push_into(&data, &mut this.ready);
                    let t1 = std::time::Instant::now();
                    this.shared
                        .metrics
                        .scan_time(t1.saturating_duration_since(t0));
                    if this.pipeline.events_in > seen {
                        this.arrivals.push_back((this.pipeline.events_in, t0));
                    }
                    this.observe_holdback(t1);
                    if !this.flush_decisions()
                        && this.shared.audit.on_failure() == audit::OnFailure::FailClosed
                    {
                        tracing::error!(request_id = %this.info.request_id, "a decision could not be recorded; ending the stream (audit.on_failure = fail-closed)");
                        this.ready.extend(this.pipeline.refuse(
                            "audit-unavailable",
                            "verbatim: output stopped; the audit trail cannot be written (audit.on_failure = fail-closed)",
                        ));
                        this.upstream = None;
                        this.ended(StreamEnd::AuditFailure);
                        continue;
                    }
                    if this.pipeline.ended() {
                        this.upstream = None; // cancels the upstream request
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream stream failed; ending the response");
                    this.upstream = None;
                    this.ready.extend(this.pipeline.abort());
                    this.ended(StreamEnd::UpstreamError);
                }
                Poll::Ready(None) => this.upstream = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_least_loaded_worker_and_leave_its_count_when_they_end() {
        let counts: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
        let load = || counts.iter().map(|c| c.load(Relaxed));
        let mut open = Vec::new();
        for _ in 0..6 {
            let i = least_loaded(load());
            open.push((i, Live::new(&counts[i])));
        }
        // Filled evenly, the first of equals first.
        let picked: Vec<usize> = open.iter().map(|(i, _)| *i).collect();
        assert_eq!(picked, [0, 1, 2, 0, 1, 2]);
        // Worker 1's two connections end: it is the one to take the next two.
        open.retain(|(i, _)| *i != 1);
        assert_eq!(load().collect::<Vec<_>>(), [2, 0, 2]);
        assert_eq!(least_loaded(load()), 1);
        drop(open);
        assert_eq!(load().collect::<Vec<_>>(), [0, 0, 0]);
        assert_eq!(least_loaded(std::iter::empty()), 0);
    }

    #[test]
    fn a_connections_window_is_the_sum_of_its_streams_windows() {
        const MAX: u64 = (1 << 31) - 1;
        let w = H2_STREAM_WINDOW;
        assert_eq!(h2_windows(w, 100), (w, 100 * w));
        assert_eq!(h2_windows(w, 1), (w, w));
        assert_eq!(h2_windows(w, 0), h2_windows(w, 1));
        assert_eq!(
            h2_windows(CLIENT_H2_STREAM_WINDOW, CLIENT_H2_MAX_STREAMS as usize),
            (1 << 20, 200 << 20)
        );
        // Past HTTP/2's largest window the streams' windows shrink, the sum still fits.
        assert_eq!(H2_MAX_STREAMS, 32_768);
        for n in [1023, 1024, 10_000, H2_MAX_STREAMS] {
            let (stream, conn) = h2_windows(w, n);
            assert!(u64::from(conn) <= MAX, "{n}");
            assert!((65_535..=w).contains(&stream), "{n}: {stream}");
            assert_eq!(u64::from(stream) * n as u64, u64::from(conn), "{n}");
        }
        // The config refuses more; were it given, the windows stay those of the most.
        assert_eq!(h2_windows(w, usize::MAX), h2_windows(w, H2_MAX_STREAMS));
    }
}
