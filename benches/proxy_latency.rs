//! Proxy latency benchmark: added time-to-first-token and added per-chunk latency of Verbatim
//! against a direct connection to the same mock upstream, in one run, arms interleaved, one
//! stream at a time and at 128 concurrent streams, scanning on.
//!
//!   cargo bench --bench proxy_latency -- [--index DIR] [--license-index] [--streams 40] [--events 60] [--pace-ms 10]
//!
//! The mock upstream (a mock, not a provider) streams OpenAI chat chunks, one word per event,
//! each carrying the nanoseconds since a shared epoch at which it was written; the client
//! records when each content event arrives. Mock, proxy and client share this process and its
//! two cores. Under `cargo test --all-targets` (no `--bench`) it runs a tiny smoke pass.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark's setup failing is fatal

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::sync::mpsc;
use verbatim::index::Index;
use verbatim::proxy::config::Config;
use verbatim::proxy::pipeline::Hold;
use verbatim::proxy::server::Server;

#[derive(Parser, Clone)]
struct Args {
    #[arg(long)]
    index: Option<PathBuf>,
    /// Also scan against the built-in SPDX license index, as `verbatim serve` does.
    #[arg(long)]
    license_index: bool,
    /// Streams per arm for the one-at-a-time scenario.
    #[arg(long, default_value_t = 40)]
    streams: usize,
    /// Content events per stream.
    #[arg(long, default_value_t = 60)]
    events: usize,
    #[arg(long, default_value_t = 10)]
    pace_ms: u64,
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Passed by `cargo bench` (after the arguments given, so it may come twice).
    #[arg(long, overrides_with = "bench")]
    bench: bool,
}

static EPOCH: OnceLock<Instant> = OnceLock::new();
fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

const WORDS: &[&str] = &[
    "the", "valley", "was", "mild", "all", "week", "and", "farmers", "planted", "barley", "early",
    "because", "soil", "dried", "sooner", "than", "anyone", "expected",
];

struct ChannelBody(mpsc::Receiver<Bytes>);
impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

async fn mock(events: usize, pace: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        let (tx, rx) = mpsc::channel(4);
                        tokio::spawn(async move {
                            for i in 0..events {
                                if i > 0 {
                                    tokio::time::sleep(pace).await;
                                }
                                let w = WORDS[i % WORDS.len()];
                                let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                                "choices": [{"index": 0, "delta": {"content": format!("{w} ")}, "finish_reason": null}],
                                "ts": now_ns()});
                                if tx
                                    .send(Bytes::from(format!("data: {chunk}\n\n")))
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                            }
                            let end = json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
                            let _ = tx
                                .send(Bytes::from(format!("data: {end}\n\ndata: [DONE]\n\n")))
                                .await;
                        });
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "text/event-stream")
                                .body(ChannelBody(rx))
                                .unwrap(),
                        )
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn proxy(upstream: SocketAddr, indexes: Vec<Arc<Index>>, hold: Hold) -> SocketAddr {
    let cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream_openai: format!("http://{upstream}").parse().unwrap(),
        hold,
        ..Config::default()
    };
    let server = Server::bind(cfg, indexes).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    addr
}

#[derive(Default)]
struct Sample {
    ttft_ns: Vec<u64>,
    chunk_ns: Vec<u64>,
    frames: usize,
    content_events: usize,
}

type C = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// One stream: returns TTFT (request sent → first content event) and per-event latencies.
async fn stream(client: &C, addr: SocketAddr, s: &mut Sample) {
    let body =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let req = hyper::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let t0 = now_ns();
    let resp = client.request(req).await.unwrap();
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut first = true;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let at = now_ns();
        s.frames += 1;
        buf.extend_from_slice(&data);
        while let Some(p) = buf.windows(2).position(|w| w == b"\n\n") {
            let ev: Vec<u8> = buf.drain(..p + 2).collect();
            let Some(json) = ev.strip_prefix(b"data: ") else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&json[..json.len() - 2]) else {
                continue;
            };
            if let Some(ts) = v.get("ts").and_then(|t| t.as_u64()) {
                s.content_events += 1;
                if first {
                    s.ttft_ns.push(at - t0);
                    first = false;
                }
                s.chunk_ns.push(at.saturating_sub(ts));
            }
        }
    }
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1e6
}

fn main() {
    let mut args = Args::parse();
    if !args.bench {
        println!("test mode: smoke pass; the numbers mean nothing");
        args.streams = 2;
        args.events = 20;
        args.pace_ms = 1;
        args.concurrency = 4;
    }
    let index_dir = args
        .index
        .clone()
        .unwrap_or_else(|| PathBuf::from("tests/fixtures/index-v5"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut index = vec![Arc::new(Index::open(&index_dir).unwrap())];
        let cache = tempfile::tempdir().unwrap();
        if args.license_index {
            let p = verbatim::license::builtin::ensure(cache.path()).unwrap();
            index.insert(0, Arc::new(Index::open(p).unwrap()));
        }
        let pace = Duration::from_millis(args.pace_ms);
        let up = mock(args.events, pace).await;
        let arms = [
            ("direct", up),
            ("verbatim hold=strict", proxy(up, index.clone(), Hold::Strict).await),
            ("verbatim hold=none", proxy(up, index.clone(), Hold::None).await),
        ];
        let client: C = Client::builder(TokioExecutor::new()).build_http();
        let mut report = serde_json::Map::new();
        for (scenario, conc, rounds) in [("1 stream", 1usize, args.streams), (&*format!("{} streams", args.concurrency), args.concurrency, 2)] {
            let mut samples: Vec<Sample> = arms.iter().map(|_| Sample::default()).collect();
            for _ in 0..rounds {
                // Interleave the arms round by round so drift hits them alike.
                for (i, (_, addr)) in arms.iter().enumerate() {
                    let mut tasks = Vec::new();
                    for _ in 0..conc {
                        let client = client.clone();
                        let addr = *addr;
                        tasks.push(tokio::spawn(async move {
                            let mut s = Sample::default();
                            stream(&client, addr, &mut s).await;
                            s
                        }));
                    }
                    for t in tasks {
                        let s = t.await.unwrap();
                        samples[i].ttft_ns.extend(s.ttft_ns);
                        samples[i].chunk_ns.extend(s.chunk_ns);
                        samples[i].frames += s.frames;
                        samples[i].content_events += s.content_events;
                    }
                }
            }
            let mut rows = serde_json::Map::new();
            let (mut d_ttft, mut d_chunk50, mut d_chunk99) = (0.0, 0.0, 0.0);
            for (i, (name, _)) in arms.iter().enumerate() {
                let s = &mut samples[i];
                let t50 = pct(&mut s.ttft_ns, 0.5);
                let c50 = pct(&mut s.chunk_ns, 0.5);
                let c99 = pct(&mut s.chunk_ns, 0.99);
                if i == 0 {
                    (d_ttft, d_chunk50, d_chunk99) = (t50, c50, c99);
                }
                println!(
                    "{scenario:>12} | {name:<22} | TTFT p50 {t50:8.3} ms (+{:7.3}) | chunk p50 {c50:8.3} ms (+{:7.3}) p99 {c99:8.3} ms (+{:7.3}) | {} content events in {} frames",
                    t50 - d_ttft, c50 - d_chunk50, c99 - d_chunk99, s.content_events, s.frames
                );
                rows.insert(name.to_string(), json!({
                    "ttft_p50_ms": t50, "chunk_p50_ms": c50, "chunk_p99_ms": c99,
                    "added_ttft_p50_ms": t50 - d_ttft, "added_chunk_p50_ms": c50 - d_chunk50, "added_chunk_p99_ms": c99 - d_chunk99,
                    "content_events": s.content_events, "frames": s.frames,
                }));
            }
            report.insert(scenario.to_string(), serde_json::Value::Object(rows));
        }
        report.insert("params".into(), json!({"events": args.events, "pace_ms": args.pace_ms, "index": index_dir, "license_index": args.license_index}));
        if let Some(p) = &args.json {
            std::fs::write(p, serde_json::to_string_pretty(&report).unwrap()).unwrap();
        }
    });
}
