//! Load benchmark (issue #7): Verbatim against a direct connection, nginx as a plain relay and
//! the LiteLLM proxy, in one run, arms interleaved, every figure a ratio to a baseline measured
//! in the same run.
//!
//!   cargo bench --bench load -- run --index DIR ... [--nginx /usr/sbin/nginx] [--litellm PATH]
//!                                   [--out DIR] [--soak-secs 600 --soak-streams 300]
//!
//! `scripts/load-bench.sh` installs the peers, fetches and indexes the corpus and runs it.
//!
//! `--only ratios --ladder 256,512 [--ratio-rounds 5]` (not part of a full run: it takes
//! rounds × arms × `--ladder-secs` a step) repeats the goals' two ratios to nginx — CPU per
//! chunk, added per-chunk p99 — over interleaved rounds and reports each round's and the
//! median, where one step of the ladder gives a single draw of a noisy figure.
//!
//! Processes: a **mock upstream** (this program with `mock`; a mock, not a provider) streams
//! OpenAI Chat Completions, Anthropic Messages and OpenAI Responses events whose parameters are
//! read from the requested model name (`load-e<events>-p<pace ms>-t<first token ms>[-x]`, `x`
//! echoing the prompt's words); each content event carries the sender's `CLOCK_MONOTONIC` as a
//! token `T<16 hex>T` (in the delta text, so it survives LiteLLM's re-serialising; in a side
//! field when echoing, so the copied words stay one run). The **load client** (this process)
//! keeps one persistent HTTP/1.1 connection per virtual user and records time to first token,
//! the one-way latency of every content event (arrival minus the token), gaps between events,
//! frames and events delivered. The **proxies** run as child processes so that their CPU time
//! (`/proc/<pid>/stat`, whole process tree) and memory (PSS from `smaps_rollup`) are theirs
//! alone. Everything shares this machine's cores; the direct arm shows what the mock and the
//! client cost by themselves.
//!
//! Under `cargo test --all-targets` (no `--bench`) it runs a smoke pass: the mock, the direct
//! arm and Verbatim with scanning off, a few streams each; the numbers mean nothing there.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark's setup failing is fatal

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    /// Passed by `cargo bench`; without it this is a smoke pass.
    #[arg(long, global = true, overrides_with = "bench")]
    bench: bool,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Role {
    /// The mock upstream: prints `LISTEN <addr>` and serves until killed.
    Mock {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// The benchmark.
    Run(RunArgs),
    /// Draws the plots again from a run's `load.json`.
    Replot { json: PathBuf },
}

#[derive(Parser, Clone)]
struct RunArgs {
    /// The `verbatim` binary (a release build for real figures).
    #[arg(long, default_value = env!("CARGO_BIN_EXE_verbatim"))]
    verbatim: PathBuf,
    /// Index directories for the scanning-on arm (repeatable); the built-in license index is
    /// added as `verbatim serve` does.
    #[arg(long = "index")]
    indexes: Vec<PathBuf>,
    /// nginx binary for the plain-relay arm.
    #[arg(long)]
    nginx: Option<PathBuf>,
    /// `litellm` executable (from a virtualenv with `litellm[proxy]`) for the peer arm.
    #[arg(long)]
    litellm: Option<PathBuf>,
    /// Files whose text makes the large prompts (indexed text, so the exemption matters).
    #[arg(long)]
    prompt_source: Option<PathBuf>,
    /// Where the JSON, the Markdown table and the SVG plots go.
    #[arg(long, default_value = "target/load-bench")]
    out: PathBuf,
    /// Concurrency ladder (streams at 50 events/s).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "8,64,256,512,1024,1536,2048"
    )]
    ladder: Vec<usize>,
    /// Seconds each ladder step runs per arm.
    #[arg(long, default_value_t = 6)]
    ladder_secs: u64,
    /// LiteLLM's ladder stops here (it is a Python process; past this it only adds minutes).
    #[arg(long, default_value_t = 512)]
    litellm_max: usize,
    /// Idle streams opened for the memory figure.
    #[arg(long, default_value_t = 1000)]
    idle_streams: usize,
    /// Also run Verbatim (scanning off, on, and on with strict holdback) speaking HTTP/2 to the
    /// mock upstream (`--upstream-http2 prior-knowledge`): a worker's streams share a connection
    /// up to 100 each.
    #[arg(long)]
    upstream_h2: bool,
    /// Sequential streams per arm for the one-stream scenario (in rounds of 5, interleaved).
    #[arg(long, default_value_t = 20)]
    streams: usize,
    /// Soak run: this many seconds at `--soak-streams` against Verbatim scanning on (0: none).
    #[arg(long, default_value_t = 0)]
    soak_secs: u64,
    #[arg(long, default_value_t = 300)]
    soak_streams: usize,
    /// Only these scenarios (one, ladder, ratios, nonstream, formats, tools, prompts, idle).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Rounds of the `ratios` scenario: at each `--ladder` step, every arm (not LiteLLM) this
    /// many times, arms interleaved, each round's ratios taken against nginx in that round.
    #[arg(long, default_value_t = 5)]
    ratio_rounds: usize,
    /// Drop the operating system's page cache (needs root) before the arms start, so that the
    /// indexes start cold, as after a reboot or a fresh index: the scanning arm that runs first
    /// reads what it needs from the disk.
    #[arg(long)]
    cold: bool,
    /// Start Verbatim with `--no-warm`: it takes traffic before its indexes are read into
    /// the page cache (with `--cold`: the cost of not warming them).
    #[arg(long)]
    no_warm: bool,
}

/// Writes back dirty pages, then drops the page cache.
fn drop_page_cache() {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .unwrap_or_else(|e| panic!("--cold needs to write /proc/sys/vm/drop_caches (root): {e}"));
}

// ---------------------------------------------------------------------------------------------
// Clock and process figures (Linux)

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process on the machine.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// The process and all its descendants.
fn tree(root: u32) -> Vec<u32> {
    let mut parent: Vec<(u32, u32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                && let Some(rest) = s.rsplit_once(')').map(|x| x.1)
                && let Some(pp) = rest.split_whitespace().nth(1).and_then(|x| x.parse().ok())
            {
                parent.push((pid, pp));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// The mock upstream's process id, once started (for the load generator's CPU figure).
static MOCK_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// CPU seconds used so far by the load generator: this process (the load client) and the
/// mock upstream.
fn load_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    let own = ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9;
    own + MOCK_PID.get().map_or(0.0, |&p| cpu_secs(p))
}

/// The machine's CPU counters (`/proc/stat`, first line): (busy, total) jiffies over all
/// cores, busy being everything but idle and iowait.
fn machine_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// CPU seconds (user + system) of a process tree, from each process's CPU-time clock
/// (nanoseconds, all its threads, living and ended), falling back to `/proc/<pid>/stat` ticks.
fn cpu_secs(root: u32) -> f64 {
    tree(root)
        .iter()
        .map(|&p| {
            let mut id: libc::clockid_t = 0;
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: both calls write into values we own.
            let ok = unsafe {
                libc::clock_getcpuclockid(p as libc::pid_t, &mut id) == 0
                    && libc::clock_gettime(id, &mut ts) == 0
            };
            if ok {
                ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
            } else {
                stat_cpu_secs(p)
            }
        })
        .sum()
}

fn stat_cpu_secs(p: u32) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    std::fs::read_to_string(format!("/proc/{p}/stat"))
        .ok()
        .and_then(|s| {
            let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            Some((f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?) as f64 / tick)
        })
        .unwrap_or(0.0)
}

/// A `kB` field of `/proc/<pid>/smaps_rollup` summed over a process tree, in bytes.
fn smaps_sum(root: u32, field: &str) -> u64 {
    tree(root)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
        .filter_map(|s| {
            let l = s.lines().find(|l| l.starts_with(field))?;
            let kb = l[field.len()..].trim().trim_end_matches("kB").trim();
            Some(kb.parse::<u64>().ok()? * 1024)
        })
        .sum()
}

/// Proportional set size of a process tree, bytes (shared pages split between the sharers).
fn pss(root: u32) -> u64 {
    smaps_sum(root, "Pss:")
}

/// Anonymous PSS (heap, stacks) of a process tree: what streams cost, without mapped index pages.
fn pss_anon(root: u32) -> u64 {
    smaps_sum(root, "Pss_Anon:")
}

/// Entries of `/proc/<pid>/<dir>` summed over a process tree.
fn proc_entries(root: u32, dir: &str) -> usize {
    tree(root)
        .iter()
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/{dir}")).ok())
        .map(|d| d.count())
        .sum()
}

fn fds(root: u32) -> usize {
    proc_entries(root, "fd")
}

fn threads(root: u32) -> usize {
    proc_entries(root, "task")
}

// ---------------------------------------------------------------------------------------------
// The mock upstream

#[derive(Clone, Copy, PartialEq, Debug)]
enum Fmt {
    Chat,
    Anthropic,
    Responses,
}

#[derive(Clone, Copy, Debug)]
struct Params {
    events: usize,
    pace_ms: u64,
    first_ms: u64,
    echo: bool,
    /// From this event on, the upstream goes silent for ten minutes (idle streams).
    hang: Option<usize>,
    /// Chat only: the answer is a tool call writing a Rust file, each event a piece of the
    /// file in the call's `arguments` (which the proxy reads as JSON, the file as code).
    tool: bool,
}

impl Params {
    /// `events` content events, one every `pace_ms`, no delay before the first.
    fn paced(events: usize, pace_ms: u64) -> Params {
        Params {
            events,
            pace_ms,
            first_ms: 0,
            echo: false,
            hang: None,
            tool: false,
        }
    }
}

/// The steady load of the ladder and the soak: chat streams of 100 events at 50 events/s.
fn steady_chat() -> Req {
    Req {
        fmt: Fmt::Chat,
        p: Params::paced(100, 20),
        prompt: Arc::new("Tell me about the valley.".into()),
    }
}

fn model(p: Params) -> String {
    format!(
        "load-e{}-p{}-t{}{}{}{}",
        p.events,
        p.pace_ms,
        p.first_ms,
        if p.echo { "-x" } else { "" },
        if p.tool { "-c" } else { "" },
        p.hang.map(|h| format!("-h{h}")).unwrap_or_default()
    )
}

fn parse_model(m: &str) -> Params {
    let mut p = Params::paced(20, 20);
    for part in m.split('-') {
        let (k, v) = part.split_at(part.len().min(1));
        match k {
            "e" => p.events = v.parse().unwrap_or(p.events),
            "p" => p.pace_ms = v.parse().unwrap_or(p.pace_ms),
            "t" => p.first_ms = v.parse().unwrap_or(p.first_ms),
            "x" => p.echo = true,
            "h" => p.hang = v.parse().ok(),
            "c" => p.tool = true,
            _ => {}
        }
    }
    p
}

/// Prose that is in no corpus, one word per event.
const WORDS: &[&str] = &[
    "the", "valley", "was", "mild", "all", "week", "and", "farmers", "planted", "barley", "early",
    "because", "soil", "dried", "sooner", "than", "anyone", "expected", "while", "herons",
    "waited", "by", "ditches", "for", "frogs",
];

/// A streamed response generated as it is polled: no task or channel per stream.
struct MockStream {
    fmt: Fmt,
    p: Params,
    model: String,
    echo: Vec<String>,
    i: usize,
    stage: u8,
    start: tokio::time::Instant,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl MockStream {
    fn token() -> String {
        format!("T{:016x}T", mono_ns())
    }
    fn content(&self) -> (String, String) {
        if self.p.echo && !self.echo.is_empty() {
            let n = self.echo.len();
            let w: Vec<&str> = (0..4)
                .map(|k| self.echo[(self.i * 4 + k) % n].as_str())
                .collect();
            (format!("{} ", w.join(" ")), Self::token())
        } else {
            (
                format!("{} {} ", Self::token(), WORDS[self.i % WORDS.len()]),
                String::new(),
            )
        }
    }
    fn head(&self) -> String {
        match self.fmt {
            Fmt::Chat => String::new(),
            Fmt::Anthropic => format!(
                "event: message_start\ndata: {}\n\nevent: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}\n\n",
                json!({"type": "message_start", "message": {"id": "msg_load", "type": "message", "role": "assistant", "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 1, "output_tokens": 1}}})
            ),
            Fmt::Responses => format!(
                "event: response.created\ndata: {}\n\nevent: response.output_item.added\ndata: {}\n\n",
                json!({"type": "response.created", "response": {"id": "resp_load", "object": "response", "status": "in_progress", "model": self.model, "output": []}}),
                json!({"type": "response.output_item.added", "output_index": 0, "item": {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}})
            ),
        }
    }
    fn event(&self) -> String {
        let (text, side) = self.content();
        let side = if side.is_empty() {
            String::new()
        } else {
            format!(",\"ts\":\"{side}\"")
        };
        match self.fmt {
            Fmt::Chat if self.p.tool => {
                // A line of a Rust file per event, inside the `content` string of the
                // arguments `{"path": "src/valley.rs", "content": "…"}`.
                let head = if self.i == 0 {
                    r#"{"path": "src/valley.rs", "content": ""#
                } else {
                    ""
                };
                let line = text.trim_end().replace(' ', "_");
                let args = format!("{head}    let {line} = {};\\n", self.i);
                let call = if self.i == 0 {
                    json!({"index": 0, "id": "call_load", "type": "function", "function": {"name": "write_file", "arguments": args}})
                } else {
                    json!({"index": 0, "function": {"arguments": args}})
                };
                let mut v = json!({"id": "chatcmpl-load", "object": "chat.completion.chunk", "created": 0, "model": self.model,
                    "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": null}]});
                if !side.is_empty() {
                    v["ts"] = json!(side);
                }
                format!("data: {v}\n\n")
            }
            Fmt::Chat => {
                let role = if self.i == 0 {
                    "\"role\":\"assistant\","
                } else {
                    ""
                };
                format!(
                    "data: {{\"id\":\"chatcmpl-load\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"{}\",\"choices\":[{{\"index\":0,\"delta\":{{{role}\"content\":\"{text}\"}},\"finish_reason\":null}}]{side}}}\n\n",
                    self.model
                )
            }
            Fmt::Anthropic => format!(
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{text}\"}}{side}}}\n\n"
            ),
            Fmt::Responses => format!(
                "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"{text}\"{side}}}\n\n"
            ),
        }
    }
    fn tail(&self) -> String {
        match self.fmt {
            Fmt::Chat if self.p.tool => format!(
                "data: {}\n\ndata: {{\"id\":\"chatcmpl-load\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"{}\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"tool_calls\"}}]}}\n\ndata: [DONE]\n\n",
                json!({"id": "chatcmpl-load", "object": "chat.completion.chunk", "created": 0, "model": self.model,
                    "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"}"}}]}, "finish_reason": null}]}),
                self.model
            ),
            Fmt::Chat => format!(
                "data: {{\"id\":\"chatcmpl-load\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"{}\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\ndata: [DONE]\n\n",
                self.model
            ),
            Fmt::Anthropic => "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":1}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".into(),
            Fmt::Responses => format!(
                "event: response.completed\ndata: {}\n\n",
                json!({"type": "response.completed", "response": {"id": "resp_load", "object": "response", "status": "completed", "model": self.model, "output": []}})
            ),
        }
    }
    fn deadline(&self) -> tokio::time::Instant {
        let hung = if self.p.hang.is_some_and(|h| self.i >= h) {
            600_000
        } else {
            0
        };
        self.start + Duration::from_millis(self.p.first_ms + self.p.pace_ms * self.i as u64 + hung)
    }
}

impl Body for MockStream {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let me = &mut *self;
        loop {
            match me.stage {
                0 => {
                    me.stage = 1;
                    let h = me.head();
                    if !h.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(h)))));
                    }
                }
                1 if me.i < me.p.events => {
                    let d = me.deadline();
                    if tokio::time::Instant::now() < d {
                        me.sleep.as_mut().reset(d);
                        if me.sleep.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                    }
                    let e = me.event();
                    me.i += 1;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(e)))));
                }
                1 => {
                    me.stage = 2;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(me.tail())))));
                }
                _ => return Poll::Ready(None),
            }
        }
    }
}

fn prompt_words(v: &Value) -> Vec<String> {
    let mut text = String::new();
    if let Some(m) = v.get("messages").and_then(Value::as_array)
        && let Some(c) = m
            .last()
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
    {
        text.push_str(c);
    }
    if let Some(s) = v.get("input").and_then(Value::as_str) {
        text.push_str(s);
    }
    // Echo a stretch from the middle, whole words, enough for any stream.
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| w.replace(['"', '\\'], ""))
        .collect();
    let from = words.len() / 2;
    words[from..].iter().take(4096).cloned().collect()
}

async fn mock_serve(
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<http_body_util::Either<MockStream, Full<Bytes>>>, Infallible> {
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let m = v
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("load")
        .to_string();
    let p = parse_model(&m);
    let fmt = if path.ends_with("/messages") {
        Fmt::Anthropic
    } else if path.ends_with("/responses") {
        Fmt::Responses
    } else {
        Fmt::Chat
    };
    let streaming = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !streaming {
        let text: String = (0..p.events)
            .map(|i| WORDS[i % WORDS.len()])
            .collect::<Vec<_>>()
            .join(" ");
        let out = json!({"id": "chatcmpl-load", "object": "chat.completion", "created": 0, "model": m,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": p.events, "total_tokens": p.events + 1}});
        return Ok(hyper::Response::builder()
            .header("content-type", "application/json")
            .body(http_body_util::Either::Right(Full::new(Bytes::from(
                out.to_string(),
            ))))
            .unwrap());
    }
    let echo = if p.echo { prompt_words(&v) } else { Vec::new() };
    let s = MockStream {
        fmt,
        p,
        model: m,
        echo,
        i: 0,
        stage: 0,
        start: tokio::time::Instant::now(),
        sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
    };
    Ok(hyper::Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(http_body_util::Either::Left(s))
        .unwrap())
}

async fn run_mock(listen: SocketAddr) {
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    println!("LISTEN {}", listener.local_addr().unwrap());
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            // HTTP/1.1, or HTTP/2 with prior knowledge (`--upstream-h2`) and no cap on the
            // streams a connection carries: hyper's own default cap (200) would make the
            // proxy's further requests wait behind open streams (see `UpstreamHttp2`).
            let mut b =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            b.http2().max_concurrent_streams(None);
            let _ = b
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(mock_serve))
                .await;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A child in its own process group, stopped (SIGTERM, then SIGKILL) with the group on drop.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe; the child dies with this process even when it
        // is killed without running its destructors.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.into(),
            child,
        }
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let g = -(self.child.id() as i32);
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(g, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        // SAFETY: as above.
        unsafe { libc::kill(g, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Waits until `addr` accepts connections; fails with the log's end if the process exits.
fn wait_listening(addr: SocketAddr, p: &mut Proc, log: Option<&Path>, limit: Duration) {
    let t = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        let exited = matches!(p.child.try_wait(), Ok(Some(_)));
        if exited || t.elapsed() > limit {
            let tail: String = log
                .and_then(|l| std::fs::read_to_string(l).ok())
                .map(|s| {
                    s.chars()
                        .rev()
                        .take(3000)
                        .collect::<String>()
                        .chars()
                        .rev()
                        .collect()
                })
                .unwrap_or_default();
            panic!(
                "{} did not listen on {addr} ({}):\n{tail}",
                p.name,
                if exited { "it exited" } else { "timed out" }
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_mock() -> (Proc, SocketAddr) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["mock", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped());
    let mut p = Proc::spawn("mock", cmd);
    let _ = MOCK_PID.set(p.child.id());
    let mut out = std::io::BufReader::new(p.child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("LISTEN ")
        .unwrap()
        .parse()
        .unwrap();
    (p, addr)
}

/// `hold`: `None` for scanning off, else the holdback mode with every index scanned.
fn start_verbatim(
    a: &RunArgs,
    mock: SocketAddr,
    hold: Option<&str>,
    h2: bool,
    dir: &Path,
) -> (Proc, SocketAddr) {
    let addr = free_port();
    let log = dir.join(format!(
        "verbatim-{}{}.log",
        hold.unwrap_or("off"),
        if h2 { "-h2" } else { "" }
    ));
    let mut cmd = Command::new(&a.verbatim);
    cmd.args(["serve", "--listen", &addr.to_string()])
        .args([
            "--upstream-http2",
            if h2 { "prior-knowledge" } else { "never" },
        ])
        .args(["--upstream-openai", &format!("http://{mock}")])
        .args(["--upstream-anthropic", &format!("http://{mock}")])
        .env("RUST_LOG", "warn")
        .env("VERBATIM_CACHE_DIR", dir.join("cache"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if let Some(h) = hold {
        cmd.args(["--hold", h]);
        for i in &a.indexes {
            cmd.arg("--index").arg(i);
        }
    } else {
        cmd.arg("--no-license-index");
    }
    if a.no_warm {
        cmd.arg("--no-warm");
    }
    let mut p = Proc::spawn("verbatim", cmd);
    wait_listening(addr, &mut p, Some(&log), Duration::from_secs(120));
    // Traffic once it reports ready, as an orchestrator sends it: its indexes read into the
    // page cache unless `--no-warm`.
    wait_ready(addr, Duration::from_secs(300));
    (p, addr)
}

/// Waits until `GET /readyz` answers 200.
fn wait_ready(addr: SocketAddr, limit: Duration) {
    use std::io::{Read, Write};
    let t = Instant::now();
    loop {
        let ok = std::net::TcpStream::connect(addr).is_ok_and(|mut c| {
            let mut head = [0u8; 12];
            c.write_all(b"GET /readyz HTTP/1.1\r\nhost: verbatim\r\nconnection: close\r\n\r\n")
                .is_ok()
                && c.read_exact(&mut head).is_ok()
                && head.ends_with(b" 200")
        });
        if ok {
            return;
        }
        assert!(
            t.elapsed() < limit,
            "verbatim on {addr} not ready after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_nginx(bin: &Path, mock: SocketAddr, dir: &Path) -> (Proc, SocketAddr) {
    let addr = free_port();
    let d = dir.join("nginx");
    std::fs::create_dir_all(d.join("tmp")).unwrap();
    let conf = format!(
        r#"worker_processes auto;
worker_rlimit_nofile 65536;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  client_max_body_size 8m;
  client_body_buffer_size 2m;
  keepalive_requests 100000;
  tcp_nodelay on;
  upstream mock {{ server {mock}; keepalive 1024; }}
  server {{
    listen {addr} backlog=4096;
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 600s;
    }}
  }}
}}
"#,
        d = d.display()
    );
    std::fs::write(d.join("nginx.conf"), conf).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-p").arg(&d).arg("-c").arg(d.join("nginx.conf"));
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut p = Proc::spawn("nginx", cmd);
    wait_listening(
        addr,
        &mut p,
        Some(&d.join("error.log")),
        Duration::from_secs(20),
    );
    (p, addr)
}

fn start_litellm(bin: &Path, mock: SocketAddr, dir: &Path) -> (Proc, SocketAddr) {
    let addr = free_port();
    let cfg = dir.join("litellm.yaml");
    let log = dir.join("litellm.log");
    std::fs::write(
        &cfg,
        format!(
            "model_list:\n  - model_name: \"*\"\n    litellm_params:\n      model: \"openai/*\"\n      api_base: \"http://{mock}/v1\"\n      api_key: \"sk-mock\"\nlitellm_settings:\n  drop_params: true\n  turn_off_message_logging: true\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(&cfg)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &addr.port().to_string(),
            "--num_workers",
            "1",
        ])
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_MASTER_KEY", KEY)
        .env("LITELLM_LOG", "ERROR")
        .env("DISABLE_ADMIN_UI", "True")
        .env("NO_DOCS", "True")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut p = Proc::spawn("litellm", cmd);
    wait_listening(addr, &mut p, Some(&log), Duration::from_secs(180));
    (p, addr)
}

// ---------------------------------------------------------------------------------------------
// The load client

#[derive(Default, Clone)]
struct Rec {
    streams: usize,
    ok: usize,
    /// Streams with a gap over 10× the pacing between two content events.
    stalled: usize,
    errors: BTreeMap<String, usize>,
    ttft_ns: Vec<u64>,
    /// Request sent → response head received (the part of TTFT before any event).
    head_ns: Vec<u64>,
    lat_ns: Vec<u64>,
    frames: usize,
    events: usize,
    /// Content events that arrived in the same frame as another one.
    merged: usize,
    max_gap_ns: u64,
    /// Share of the whole machine's CPU in use during the step (all processes, all cores).
    machine_busy: f64,
    /// Cores the load generator used during the step: this process and the mock upstream.
    load_cores: f64,
}

impl Rec {
    fn add(&mut self, o: Rec) {
        self.streams += o.streams;
        self.ok += o.ok;
        self.stalled += o.stalled;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.ttft_ns.extend(o.ttft_ns);
        self.head_ns.extend(o.head_ns);
        self.lat_ns.extend(o.lat_ns);
        self.frames += o.frames;
        self.events += o.events;
        self.merged += o.merged;
        self.max_gap_ns = self.max_gap_ns.max(o.max_gap_ns);
    }
    fn err(&mut self, e: impl Into<String>) {
        *self.errors.entry(e.into()).or_default() += 1;
    }
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1e6
}

/// One virtual user: a persistent connection, re-opened only if the server closes it.
struct Vu {
    addr: SocketAddr,
    send: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Vu {
    fn new(addr: SocketAddr) -> Vu {
        Vu { addr, send: None }
    }
    async fn sender(
        &mut self,
    ) -> Result<&mut hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
        if self.send.as_ref().is_none_or(|s| s.is_closed()) {
            let tcp = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect: {}", e.kind()))?;
            tcp.set_nodelay(true).map_err(|e| e.to_string())?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            self.send = Some(send);
        }
        let s = self.send.as_mut().unwrap();
        s.ready().await.map_err(|e| format!("ready: {e}"))?;
        Ok(s)
    }
}

#[derive(Clone)]
struct Req {
    fmt: Fmt,
    p: Params,
    prompt: Arc<String>,
}

impl Req {
    fn build(&self, addr: SocketAddr) -> hyper::Request<Full<Bytes>> {
        let m = model(self.p);
        let (path, body) = match self.fmt {
            Fmt::Chat if self.p.tool => (
                "/v1/chat/completions",
                json!({"model": m, "stream": true, "messages": [{"role": "user", "content": &*self.prompt}],
                    "tools": [{"type": "function", "function": {"name": "write_file", "description": "Writes a file.",
                        "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}}}}]}),
            ),
            Fmt::Chat => (
                "/v1/chat/completions",
                json!({"model": m, "stream": true, "messages": [{"role": "user", "content": &*self.prompt}]}),
            ),
            Fmt::Anthropic => (
                "/v1/messages",
                json!({"model": m, "stream": true, "max_tokens": 1024, "messages": [{"role": "user", "content": &*self.prompt}]}),
            ),
            Fmt::Responses => (
                "/v1/responses",
                json!({"model": m, "stream": true, "input": &*self.prompt}),
            ),
        };
        hyper::Request::post(path)
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {KEY}"))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    }
}

/// Finds `T<16 hex>T` tokens; returns their values and how many bytes were consumed.
fn tokens(buf: &[u8], out: &mut Vec<u64>) -> usize {
    let mut i = 0;
    while i + 18 <= buf.len() {
        if buf[i] == b'T'
            && buf[i + 17] == b'T'
            && buf[i + 1..i + 17].iter().all(u8::is_ascii_hexdigit)
        {
            let s = std::str::from_utf8(&buf[i + 1..i + 17]).unwrap();
            out.push(u64::from_str_radix(s, 16).unwrap());
            i += 18;
        } else {
            i += 1;
        }
    }
    i
}

fn ended(tail: &[u8], fmt: Fmt) -> bool {
    let t = String::from_utf8_lossy(tail);
    match fmt {
        Fmt::Chat => t.contains("[DONE]"),
        Fmt::Anthropic => t.contains("message_stop"),
        Fmt::Responses => t.contains("response.completed"),
    }
}

/// One stream on the user's connection, recorded into `rec`. `first` is told when the first
/// content event arrives (the idle scenario waits on it, then drops the stream).
async fn one_stream(
    vu: &mut Vu,
    r: &Req,
    rec: &mut Rec,
    first: Option<tokio::sync::mpsc::Sender<()>>,
) {
    rec.streams += 1;
    let limit = Duration::from_millis(r.p.first_ms + r.p.pace_ms * r.p.events as u64)
        + Duration::from_secs(60);
    let fut = async {
        let req = r.build(vu.addr);
        let s = vu.sender().await?;
        let t0 = mono_ns();
        let resp = s
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        rec.head_ns.push(mono_ns() - t0);
        if resp.status() != 200 {
            let st = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            return Err(format!("status {st}"));
        }
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        let mut tail: Vec<u8> = Vec::new();
        let mut got = Vec::new();
        let mut last: Option<u64> = None;
        let mut first = first;
        let mut n = 0usize;
        let mut max_gap = 0u64;
        while let Some(f) = body.frame().await {
            let f = f.map_err(|e| format!("body: {e}"))?;
            let Ok(d) = f.into_data() else { continue };
            let at = mono_ns();
            rec.frames += 1;
            buf.extend_from_slice(&d);
            got.clear();
            let used = tokens(&buf, &mut got);
            buf.drain(..used);
            tail.extend_from_slice(&d);
            if tail.len() > 256 {
                tail.drain(..tail.len() - 256);
            }
            if got.len() > 1 {
                rec.merged += got.len() - 1;
            }
            for &ts in &got {
                if n == 0 {
                    rec.ttft_ns.push(at - t0);
                    if let Some(tx) = first.take() {
                        let _ = tx.send(()).await;
                    }
                }
                if let Some(l) = last {
                    max_gap = max_gap.max(at - l);
                }
                last = Some(at);
                rec.lat_ns.push(at.saturating_sub(ts));
                n += 1;
            }
        }
        rec.events += n;
        rec.max_gap_ns = rec.max_gap_ns.max(max_gap);
        if n != r.p.events {
            return Err(format!("{n} of {} events", r.p.events));
        }
        if !ended(&tail, r.fmt) {
            return Err("no end event".into());
        }
        if max_gap > r.p.pace_ms.max(1) * 10 * 1_000_000 {
            rec.stalled += 1;
        }
        Ok::<(), String>(())
    };
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(())) => rec.ok += 1,
        Ok(Err(e)) => {
            vu.send = None;
            rec.err(e)
        }
        Err(_) => {
            vu.send = None;
            rec.err("timeout")
        }
    }
}

/// The API key every client sends (LiteLLM's master key; the others ignore it).
const KEY: &str = "sk-load-4f9c2a7e1b3d5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4";

struct Arm {
    name: &'static str,
    addr: SocketAddr,
    pid: Option<u32>,
}

/// `n` users each streaming back to back until `secs` have passed (each at least once), starts
/// spread over one pacing period × 10. Returns the record and the proxy's CPU seconds.
async fn run_users(arm: &Arm, n: usize, r: &Req, secs: f64) -> (Rec, f64, f64) {
    let cpu0 = arm.pid.map(cpu_secs).unwrap_or(0.0);
    let load0 = load_cpu_secs();
    let m0 = machine_jiffies();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(secs);
    let spread = Duration::from_millis((r.p.pace_ms * 10).max(50));
    let mut tasks = Vec::with_capacity(n);
    for u in 0..n {
        let r = r.clone();
        let addr = arm.addr;
        let delay = spread.mul_f64(u as f64 / n as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut vu = Vu::new(addr);
            let mut rec = Rec::default();
            loop {
                one_stream(&mut vu, &r, &mut rec, None).await;
                if Instant::now() >= deadline {
                    break;
                }
            }
            rec
        }));
    }
    let mut rec = Rec::default();
    for t in tasks {
        rec.add(t.await.unwrap());
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = arm.pid.map(cpu_secs).unwrap_or(0.0) - cpu0;
    let m1 = machine_jiffies();
    rec.machine_busy = (m1.0 - m0.0) as f64 / (m1.1 - m0.1).max(1) as f64;
    rec.load_cores = (load_cpu_secs() - load0) / wall;
    (rec, cpu, wall)
}

fn summary(rec: &mut Rec, cpu: f64, wall: f64) -> Value {
    let ttft50 = pct(&mut rec.ttft_ns, 0.5);
    let ttft99 = pct(&mut rec.ttft_ns, 0.99);
    let head50 = pct(&mut rec.head_ns, 0.5);
    let l50 = pct(&mut rec.lat_ns, 0.5);
    let l99 = pct(&mut rec.lat_ns, 0.99);
    let l999 = pct(&mut rec.lat_ns, 0.999);
    let over30 = rec.lat_ns.iter().filter(|&&l| l > 30_000_000).count();
    let v = json!({
        "streams": rec.streams, "ok": rec.ok, "stalled": rec.stalled, "errors": rec.errors,
        "events": rec.events, "frames": rec.frames, "merged_events": rec.merged,
        "ttft_p50_ms": ttft50, "ttft_p99_ms": ttft99, "head_p50_ms": head50,
        "chunk_p50_ms": l50, "chunk_p99_ms": l99, "chunk_p999_ms": l999,
        "chunks_over_30ms": over30, "max_gap_ms": rec.max_gap_ns as f64 / 1e6,
        "proxy_cpu_s": cpu, "wall_s": wall,
        "cpu_us_per_chunk": if rec.events > 0 { cpu * 1e6 / rec.events as f64 } else { f64::NAN },
        "proxy_cores": cpu / wall,
        "machine_busy": rec.machine_busy, "load_gen_cores": rec.load_cores,
    });
    v
}

/// Adds to an arm's summary its figures against the baselines of the same step: `added_*`,
/// the arm's figure minus the direct arm's, and, for Verbatim and the peer, the ratios to
/// nginx (added per-chunk p99, CPU per chunk).
fn compare(v: &mut Value, name: &str, direct: Option<&Value>, nginx: Option<&Value>) {
    let num = |x: &Value, k: &str| x[k].as_f64().unwrap_or(f64::NAN);
    if let Some(d) = direct {
        for k in ["ttft_p50_ms", "head_p50_ms", "chunk_p50_ms", "chunk_p99_ms"] {
            let added = num(v, k) - num(d, k);
            v[format!("added_{k}")] = json!(added);
        }
    }
    let (p99, cpu) = match (nginx, direct) {
        (Some(n), Some(d)) if name != "nginx" && name != "direct" => {
            // No ratio where nginx added nothing measurable (its p99 at or below the direct
            // arm's in the same step): the quotient would be negative or unbounded.
            let nginx_added = num(n, "chunk_p99_ms") - num(d, "chunk_p99_ms");
            (
                if nginx_added > 0.0 {
                    num(v, "added_chunk_p99_ms") / nginx_added
                } else {
                    f64::NAN
                },
                num(v, "cpu_us_per_chunk") / num(n, "cpu_us_per_chunk"),
            )
        }
        _ => (f64::NAN, f64::NAN),
    };
    v["added_p99_vs_nginx"] = json!(p99);
    v["cpu_per_chunk_vs_nginx"] = json!(cpu);
}

fn sustained(v: &Value) -> bool {
    let streams = v["streams"].as_u64().unwrap_or(0);
    streams > 0 && v["ok"].as_u64() == Some(streams) && v["stalled"].as_u64() == Some(0)
}

/// Writes what is measured so far (an interrupted run keeps its finished scenarios); returns
/// the Markdown.
fn save(c: &Ctx, out: &Path) -> String {
    let md = format!(
        "Arms: {}. Machine: {} cores.\n{}",
        c.arm_names().join(", "),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        c.md
    );
    std::fs::write(out.join("load.md"), &md).unwrap();
    std::fs::write(
        out.join("load.json"),
        serde_json::to_string_pretty(&Value::Object(c.out.clone())).unwrap(),
    )
    .unwrap();
    md
}

// ---------------------------------------------------------------------------------------------
// Scenarios

struct Ctx {
    arms: Vec<Arm>,
    out: serde_json::Map<String, Value>,
    md: String,
}

impl Ctx {
    fn arm_names(&self) -> Vec<&'static str> {
        self.arms.iter().map(|a| a.name).collect()
    }
}

/// A ratio cell: `1.23×`, or a dash where there is no ratio.
fn times(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}×")
    } else {
        "–".into()
    }
}

/// A cell about the proxy's own process: a dash for the direct arm, which has none.
fn proxy_cell(arm: &str, cell: String) -> String {
    if arm == "direct" { "–".into() } else { cell }
}

fn f2(x: &Value) -> String {
    match x.as_f64() {
        Some(v) if v.is_finite() => format!("{v:.3}"),
        _ => "–".into(),
    }
}

/// One stream at a time, rounds of 5 streams per arm, arms interleaved.
async fn scenario_one(
    c: &mut Ctx,
    fmt: Fmt,
    label: &str,
    streams: usize,
    prompt: Arc<String>,
    p: Params,
    arms: &[usize],
) {
    let r = Req { fmt, p, prompt };
    let mut recs: Vec<(Rec, f64, f64)> = arms.iter().map(|_| (Rec::default(), 0.0, 0.0)).collect();
    for round in 0..streams.div_ceil(5) {
        for k in 0..arms.len() {
            let j = (k + round) % arms.len();
            let arm = &c.arms[arms[j]];
            let cpu0 = arm.pid.map(cpu_secs).unwrap_or(0.0);
            let t = Instant::now();
            let mut vu = Vu::new(arm.addr);
            for _ in 0..5 {
                one_stream(&mut vu, &r, &mut recs[j].0, None).await;
            }
            recs[j].1 += arm.pid.map(cpu_secs).unwrap_or(0.0) - cpu0;
            recs[j].2 += t.elapsed().as_secs_f64();
        }
    }
    report(c, label, arms, recs);
}

/// 128 streams of `r` at once (4 in the smoke pass) for 4 s on each arm in turn, reported under
/// `label`.
async fn scenario_concurrent(c: &mut Ctx, label: &str, r: &Req, arms: &[usize], smoke: bool) {
    let (n, secs) = if smoke { (4, 0.5) } else { (128, 4.0) };
    let mut recs = Vec::new();
    for &j in arms {
        recs.push(run_users(&c.arms[j], n, r, secs).await);
    }
    report(c, label, arms, recs);
}

fn report(c: &mut Ctx, label: &str, arms: &[usize], mut recs: Vec<(Rec, f64, f64)>) {
    let mut rows = serde_json::Map::new();
    let mut sums: Vec<Option<Value>> = recs
        .iter_mut()
        .map(|(r, cpu, w)| Some(summary(r, *cpu, *w)))
        .collect();
    let names: Vec<&str> = arms.iter().map(|&a| c.arms[a].name).collect();
    compare_step(&names, &mut sums);
    c.md.push_str(&format!("\n#### {label}\n\n| arm | streams ok | TTFT p50 ms (added) | chunk p50 ms (added) | chunk p99 ms (added) | vs nginx: added p99 | CPU µs/chunk | vs nginx | events/frame | max gap ms |\n|---|---|---|---|---|---|---|---|---|---|\n"));
    for (v, name) in sums.iter_mut().flatten().zip(names) {
        let ratio_p99 = v["added_p99_vs_nginx"].as_f64().unwrap_or(f64::NAN);
        let ratio_cpu = v["cpu_per_chunk_vs_nginx"].as_f64().unwrap_or(f64::NAN);
        let epf =
            v["events"].as_f64().unwrap_or(0.0) / v["frames"].as_f64().unwrap_or(1.0).max(1.0);
        c.md.push_str(&format!(
            "| {name} | {}/{} | {} ({}) | {} ({}) | {} ({}) | {} | {} | {} | {epf:.2} | {:.1} |\n",
            v["ok"],
            v["streams"],
            f2(&v["ttft_p50_ms"]),
            f2(&v["added_ttft_p50_ms"]),
            f2(&v["chunk_p50_ms"]),
            f2(&v["added_chunk_p50_ms"]),
            f2(&v["chunk_p99_ms"]),
            f2(&v["added_chunk_p99_ms"]),
            times(ratio_p99),
            proxy_cell(
                name,
                format!("{:.1}", v["cpu_us_per_chunk"].as_f64().unwrap_or(f64::NAN))
            ),
            times(ratio_cpu),
            v["max_gap_ms"].as_f64().unwrap_or(0.0),
        ));
        rows.insert(name.into(), v.clone());
    }
    println!("{label}: {}", serde_json::to_string(&rows).unwrap());
    c.out.insert(label.into(), Value::Object(rows));
}

/// Every arm's summary of one step (`sums[i]` is the arm named `names[i]`, if it ran)
/// compared with the direct and nginx arms' of the same step ([`compare`]).
fn compare_step(names: &[&str], sums: &mut [Option<Value>]) {
    let find = |n: &str| {
        names
            .iter()
            .position(|&x| x == n)
            .and_then(|i| sums[i].clone())
    };
    let (direct, nginx) = (find("direct"), find("nginx"));
    for (name, v) in names.iter().zip(sums.iter_mut()) {
        if let Some(v) = v {
            compare(v, name, direct.as_ref(), nginx.as_ref());
        }
    }
}

/// The goals' ratios to nginx, repeated: at each `--ladder` step, `rounds` rounds of every arm
/// but LiteLLM (the order rotated each round), each round's CPU per chunk and added per-chunk
/// p99 divided by nginx's in the same round. One step's ratio moves by up to 0.4 between runs
/// on this shared two-core machine; the median over rounds, and how many rounds meet the goal,
/// is what a comparison can stand on.
async fn scenario_ratios(c: &mut Ctx, a: &RunArgs, rounds: usize, secs: f64) {
    let r = steady_chat();
    let arms: Vec<usize> = (0..c.arms.len())
        .filter(|&i| c.arms[i].name != "litellm")
        .collect();
    c.md.push_str(&format!("\n#### Ratios to nginx over {rounds} rounds (OpenAI chat streams, 100 events at 50 events/s, arms interleaved in each round)\n\n| streams | arm | CPU per chunk vs nginx, each round | median | rounds ≤ 1.5× | added p99 vs nginx, each round (– where nginx added nothing) | median | rounds ≤ 2× | TTFT p50 ms, median | machine busy, median |\n|---|---|---|---|---|---|---|---|---|---|\n"));
    let mut out = serde_json::Map::new();
    for &n in &a.ladder {
        // Per arm: each round's summary, compared with that round's direct and nginx arms.
        let mut per: Vec<Vec<Value>> = vec![Vec::new(); c.arms.len()];
        for round in 0..rounds {
            let mut sums: Vec<Option<Value>> = vec![None; c.arms.len()];
            for k in 0..arms.len() {
                let j = arms[(k + round) % arms.len()];
                let (mut rec, cpu, wall) = run_users(&c.arms[j], n, &r, secs).await;
                sums[j] = Some(summary(&mut rec, cpu, wall));
            }
            compare_step(&c.arm_names(), &mut sums);
            for &j in &arms {
                per[j].extend(sums[j].take());
            }
            println!("ratios {n}: round {} of {rounds} done", round + 1);
        }
        let mut step = serde_json::Map::new();
        for &j in &arms {
            let name = c.arms[j].name;
            let vs = &per[j];
            let col = |k: &str| -> Vec<f64> {
                vs.iter()
                    .map(|v| v[k].as_f64().unwrap_or(f64::NAN))
                    .collect()
            };
            let med = |mut x: Vec<f64>| {
                x.retain(|v| v.is_finite());
                x.sort_by(f64::total_cmp);
                if x.is_empty() {
                    f64::NAN
                } else {
                    x[x.len() / 2]
                }
            };
            let (cpu, p99) = (col("cpu_per_chunk_vs_nginx"), col("added_p99_vs_nginx"));
            // A ratio's three cells: each round's, the median, the rounds within `goal`.
            let cells = |x: &[f64], goal: f64| {
                if matches!(name, "direct" | "nginx") {
                    return "– | – | –".to_string();
                }
                let each: Vec<String> = x.iter().map(|&v| times(v)).collect();
                let met = x.iter().filter(|&&v| v <= goal).count();
                let measured = x.iter().filter(|v| v.is_finite()).count();
                format!(
                    "{} | {} | {met}/{measured}",
                    each.join(", "),
                    times(med(x.to_vec()))
                )
            };
            c.md.push_str(&format!(
                "| {n} | {name} | {} | {} | {} | {:.0} % |\n",
                cells(&cpu, 1.5),
                cells(&p99, 2.0),
                f2(&json!(med(col("ttft_p50_ms")))),
                med(col("machine_busy")) * 100.0,
            ));
            step.insert(
                name.into(),
                json!({
                    "cpu_per_chunk_vs_nginx": cpu, "added_p99_vs_nginx": p99,
                    "median_cpu_per_chunk_vs_nginx": med(cpu.clone()),
                    "median_added_p99_vs_nginx": med(p99.clone()),
                    "rounds": vs,
                }),
            );
        }
        out.insert(n.to_string(), Value::Object(step));
    }
    c.out.insert("ratios".into(), Value::Object(out));
}

/// The concurrency ladder at 50 events/s: each step runs every arm in turn (order rotated per
/// step); an arm leaves the ladder after the first step it does not sustain.
async fn scenario_ladder(
    c: &mut Ctx,
    a: &RunArgs,
    secs: f64,
) -> Vec<(String, Vec<(usize, Value)>)> {
    let r = steady_chat();
    let mut series: Vec<(String, Vec<(usize, Value)>)> = c
        .arms
        .iter()
        .map(|a| (a.name.to_string(), Vec::new()))
        .collect();
    let mut out_of: Vec<bool> = vec![false; c.arms.len()];
    c.md.push_str("\n#### Concurrency ladder (OpenAI chat streams, 100 events at 50 events/s, users streaming back to back)\n\n| streams | arm | streams ok | stalled | chunk p50 ms | chunk p99 ms | added p99 vs nginx | TTFT p50 ms (to head) | proxy cores | CPU µs/chunk | vs nginx | PSS MB | machine busy | load generator cores | sustained |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (step, &n) in a.ladder.iter().enumerate() {
        let mut sums: Vec<Option<Value>> = vec![None; c.arms.len()];
        let mut mem: Vec<u64> = vec![0; c.arms.len()];
        for k in 0..c.arms.len() {
            let j = (k + step) % c.arms.len();
            if out_of[j] || (c.arms[j].name == "litellm" && n > a.litellm_max) {
                continue;
            }
            let arm = &c.arms[j];
            // Sample memory in the middle of the step.
            let pid = arm.pid;
            let sampler = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs_f64(secs / 2.0)).await;
                pid.map(pss).unwrap_or(0)
            });
            let (mut rec, cpu, wall) = run_users(arm, n, &r, secs).await;
            mem[j] = sampler.await.unwrap();
            let v = summary(&mut rec, cpu, wall);
            if !sustained(&v) {
                out_of[j] = true;
            }
            sums[j] = Some(v);
        }
        compare_step(&c.arm_names(), &mut sums);
        for j in 0..c.arms.len() {
            let Some(mut v) = sums[j].take() else {
                continue;
            };
            let name = c.arms[j].name;
            let rp = v["added_p99_vs_nginx"].as_f64().unwrap_or(f64::NAN);
            let rc = v["cpu_per_chunk_vs_nginx"].as_f64().unwrap_or(f64::NAN);
            v["pss_bytes"] = json!(mem[j]);
            v["sustained"] = json!(sustained(&v));
            c.md.push_str(&format!(
                "| {n} | {name} | {}/{} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {:.0} % | {:.2} | {} |\n",
                v["ok"],
                v["streams"],
                v["stalled"],
                f2(&v["chunk_p50_ms"]),
                f2(&v["chunk_p99_ms"]),
                times(rp),
                f2(&v["ttft_p50_ms"]),
                f2(&v["head_p50_ms"]),
                proxy_cell(
                    name,
                    format!("{:.2}", v["proxy_cores"].as_f64().unwrap_or(0.0))
                ),
                proxy_cell(
                    name,
                    format!("{:.1}", v["cpu_us_per_chunk"].as_f64().unwrap_or(f64::NAN))
                ),
                times(rc),
                proxy_cell(name, format!("{:.0}", mem[j] as f64 / 1e6)),
                v["machine_busy"].as_f64().unwrap_or(f64::NAN) * 100.0,
                v["load_gen_cores"].as_f64().unwrap_or(f64::NAN),
                if sustained(&v) { "yes" } else { "**no**" },
            ));
            println!("ladder {n} {name}: {}", serde_json::to_string(&v).unwrap());
            series[j].1.push((n, v));
        }
    }
    c.out.insert(
        "ladder".into(),
        json!(
            series
                .iter()
                .map(|(n, s)| (
                    n.clone(),
                    s.iter()
                        .map(|(k, v)| json!({"streams": k, "result": v}))
                        .collect::<Vec<_>>()
                ))
                .map(|(k, v)| (k, Value::Array(v)))
                .collect::<serde_json::Map<_, _>>()
        ),
    );
    series
}

/// Non-streamed requests with wrk (closed loop, 16 connections): requests/s, latency, and the
/// proxy's CPU per request.
fn scenario_nonstream(c: &mut Ctx, secs: u64) {
    let Ok(wrk) = which("wrk") else {
        c.md.push_str("\n(non-streamed requests: wrk is not installed; scenario not run)\n");
        eprintln!("wrk not found: the non-streamed scenario is not run");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lua = dir.path().join("post.lua");
    std::fs::write(&lua, format!(
        "wrk.method = \"POST\"\nwrk.body = '{}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {KEY}\"\n",
        json!({"model": model(Params::paced(60, 0)), "stream": false, "messages": [{"role": "user", "content": "Tell me about the valley."}]})
    )).unwrap();
    c.md.push_str("\n#### Non-streamed chat completions (wrk, 1 thread, 16 connections, 60-word answers)\n\n| arm | requests/s | vs nginx | latency p50 ms | p99 ms | CPU µs/request | vs nginx | non-2xx |\n|---|---|---|---|---|---|---|---|\n");
    let mut rows = serde_json::Map::new();
    let mut nginx: Option<(f64, f64)> = None;
    let order: Vec<usize> = (0..c.arms.len()).collect();
    for j in order {
        let arm = &c.arms[j];
        let cpu0 = arm.pid.map(cpu_secs).unwrap_or(0.0);
        let o = Command::new(&wrk)
            .args(["-t1", "-c16", &format!("-d{secs}s"), "--latency", "-s"])
            .arg(&lua)
            .arg(format!("http://{}/v1/chat/completions", arm.addr))
            .output()
            .unwrap();
        let cpu = arm.pid.map(cpu_secs).unwrap_or(0.0) - cpu0;
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let rps = grab(&text, "Requests/sec:").unwrap_or(f64::NAN);
        let p50 = wrk_ms(&text, "50%");
        let p99 = wrk_ms(&text, "99%");
        let total = grab_requests(&text).unwrap_or(0.0);
        let non2xx = grab(&text, "Non-2xx or 3xx responses:").unwrap_or(0.0);
        let per = if total > 0.0 {
            cpu * 1e6 / total
        } else {
            f64::NAN
        };
        if arm.name == "nginx" {
            nginx = Some((rps, per));
        }
        let (rr, rc) = match nginx {
            Some((nr, nc)) if arm.name != "nginx" && arm.name != "direct" => (rps / nr, per / nc),
            _ => (f64::NAN, f64::NAN),
        };
        c.md.push_str(&format!(
            "| {} | {rps:.0} | {} | {p50:.2} | {p99:.2} | {} | {} | {non2xx} |\n",
            arm.name,
            times(rr),
            proxy_cell(arm.name, format!("{per:.0}")),
            times(rc),
        ));
        rows.insert(arm.name.into(), json!({"rps": rps, "p50_ms": p50, "p99_ms": p99, "requests": total, "cpu_us_per_request": per, "non_2xx": non2xx, "wrk": text}));
    }
    println!("nonstream: done");
    c.out.insert("nonstream".into(), Value::Object(rows));
}

fn which(name: &str) -> Result<PathBuf, ()> {
    for d in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
    {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(())
}

fn grab(text: &str, key: &str) -> Option<f64> {
    let l = text.lines().find(|l| l.trim_start().starts_with(key))?;
    l.trim_start()[key.len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn grab_requests(text: &str) -> Option<f64> {
    // "  12345 requests in 6.00s, 1.23MB read"
    let l = text.lines().find(|l| l.contains(" requests in "))?;
    l.split_whitespace().next()?.parse().ok()
}

fn wrk_ms(text: &str, key: &str) -> f64 {
    let Some(l) = text.lines().find(|l| l.trim_start().starts_with(key)) else {
        return f64::NAN;
    };
    let Some(v) = l.split_whitespace().nth(1) else {
        return f64::NAN;
    };
    let (num, mult) = if let Some(x) = v.strip_suffix("us") {
        (x, 1e-3)
    } else if let Some(x) = v.strip_suffix("ms") {
        (x, 1.0)
    } else if let Some(x) = v.strip_suffix('s') {
        (x, 1e3)
    } else {
        (v, f64::NAN)
    };
    num.parse::<f64>().map(|x| x * mult).unwrap_or(f64::NAN)
}

/// Idle streams: each user starts a stream that sends one event and then waits; once all have
/// their first event, the proxy's memory is read; then they go away and it is read again.
async fn scenario_idle(c: &mut Ctx, n: usize) {
    c.md.push_str(&format!("\n#### Memory per idle stream ({n} streams open, 30 events sent at once, then the upstream silent)\n\n| arm | streams open | PSS before MB | with streams MB | per stream KB | anonymous per stream KB | PSS after close MB | fds before / with / after |\n|---|---|---|---|---|---|---|---|\n"));
    let p = Params {
        events: 40,
        pace_ms: 0,
        first_ms: 0,
        echo: false,
        hang: Some(30),
        tool: false,
    };
    let r = Req {
        fmt: Fmt::Chat,
        p,
        prompt: Arc::new("hi".into()),
    };
    let mut rows = serde_json::Map::new();
    for j in 0..c.arms.len() {
        let arm = &c.arms[j];
        let Some(pid) = arm.pid else { continue };
        let (m0, a0, f0) = (pss(pid), pss_anon(pid), fds(pid));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(n.max(1));
        let mut tasks = Vec::new();
        for _ in 0..n {
            let r = r.clone();
            let tx = tx.clone();
            let addr = arm.addr;
            tasks.push(tokio::spawn(async move {
                let mut vu = Vu::new(addr);
                let mut rec = Rec::default();
                one_stream(&mut vu, &r, &mut rec, Some(tx)).await;
            }));
            if tasks.len() % 64 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        drop(tx);
        let mut open = 0;
        let t = Instant::now();
        while open < n && t.elapsed() < Duration::from_secs(60) {
            match tokio::time::timeout(
                Duration::from_secs(60) - t.elapsed().min(Duration::from_secs(60)),
                rx.recv(),
            )
            .await
            {
                Ok(Some(())) => open += 1,
                _ => break,
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (m1, a1, f1) = (pss(pid), pss_anon(pid), fds(pid));
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (m2, f2_) = (pss(pid), fds(pid));
        let per = (m1 as f64 - m0 as f64) / open.max(1) as f64 / 1024.0;
        let per_anon = (a1 as f64 - a0 as f64) / open.max(1) as f64 / 1024.0;
        c.md.push_str(&format!(
            "| {} | {open}/{n} | {:.1} | {:.1} | {per:.1} | {per_anon:.1} | {:.1} | {f0} / {f1} / {f2_} |\n",
            arm.name, m0 as f64 / 1e6, m1 as f64 / 1e6, m2 as f64 / 1e6
        ));
        println!("idle {}: open {open}/{n}, {per:.1} KB per stream", arm.name);
        rows.insert(arm.name.into(), json!({"open": open, "requested": n, "pss_before": m0, "pss_with": m1, "pss_after": m2, "kb_per_stream": per, "anon_kb_per_stream": per_anon, "fds": [f0, f1, f2_]}));
    }
    c.out.insert("idle".into(), Value::Object(rows));
}

/// Reads up to `bytes` of text from the files under `dir` (sorted, so every run uses the same).
fn prompt_text(dir: &Path, bytes: usize) -> String {
    let mut files: Vec<PathBuf> = walk(dir);
    files.sort();
    let mut s = String::new();
    for f in files {
        if let Ok(t) = std::fs::read_to_string(&f) {
            s.push_str(&t);
            s.push('\n');
            if s.len() >= bytes {
                break;
            }
        }
    }
    let mut cut = bytes.min(s.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .is_some_and(|x| x == "c" || x == "rs" || x == "rst")
            {
                out.push(p);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Plots (SVG, plotters)

/// The ladder's two plots, `ladder-p99.svg` and `ladder-cpu.svg`, in `dir`.
fn plot_ladders(series: &[(String, Vec<(usize, Value)>)], dir: &Path) {
    plot_ladder(
        series,
        "chunk_p99_ms",
        "chunk latency p99 (ms)",
        "Per-chunk latency p99 vs concurrent streams",
        &dir.join("ladder-p99.svg"),
    );
    plot_ladder(
        series,
        "cpu_us_per_chunk",
        "proxy CPU µs per chunk",
        "Proxy CPU per chunk vs concurrent streams",
        &dir.join("ladder-cpu.svg"),
    );
}

fn plot_ladder(
    series: &[(String, Vec<(usize, Value)>)],
    key: &str,
    ylabel: &str,
    title: &str,
    path: &Path,
) {
    use plotters::prelude::*;
    let pts: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(n, _)| key != "cpu_us_per_chunk" || n != "direct")
        .map(|(n, s)| {
            (
                n.clone(),
                s.iter()
                    .filter_map(|(k, v)| {
                        Some((
                            (*k as f64).log2(),
                            v[key].as_f64().filter(|x| x.is_finite())?,
                        ))
                    })
                    .collect(),
            )
        })
        .filter(|(_, s): &(String, Vec<(f64, f64)>)| !s.is_empty())
        .collect();
    let ymax = pts
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.5;
    let ymin = pts
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.1))
        .filter(|y| *y > 0.0)
        .fold(f64::MAX, f64::min)
        .min(ymax / 10.0)
        * 0.7;
    let xmin = pts
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.0))
        .fold(f64::MAX, f64::min)
        .min(3.0);
    let xmax = pts
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.0))
        .fold(0.0f64, f64::max)
        .max(xmin + 1.0);
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let mut ch = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        // Log scale: the peer's figures are two orders of magnitude above the others'.
        .build_cartesian_2d(xmin..xmax, (ymin..ymax).log_scale())
        .unwrap();
    ch.configure_mesh()
        .x_desc("concurrent streams (log2)")
        .y_desc(ylabel)
        .x_label_formatter(&|x| format!("{:.0}", 2f64.powf(*x)))
        .label_style(("sans-serif", 13))
        .draw()
        .unwrap();
    // One colour per arm in every plot.
    let color = |name: &str| match name {
        "direct" => BLACK,
        "nginx" => BLUE,
        "verbatim scan off" => GREEN,
        "verbatim scan on" => RED,
        "verbatim scan on, strict" => MAGENTA,
        "verbatim scan off, HTTP/2 upstream" => YELLOW,
        "verbatim scan on, HTTP/2 upstream" => RGBColor(230, 120, 0),
        "verbatim scan on, strict, HTTP/2 upstream" => RGBColor(150, 90, 0),
        _ => CYAN,
    };
    for (name, s) in &pts {
        let c = color(name);
        ch.draw_series(LineSeries::new(s.clone(), c.stroke_width(2)))
            .unwrap()
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        ch.draw_series(s.iter().map(|p| Circle::new(*p, 3, c.filled())))
            .unwrap();
    }
    legend(&mut ch, SeriesLabelPosition::UpperLeft);
    root.present().unwrap();
}

fn plot_soak(samples: &[Value], path: &Path) {
    use plotters::prelude::*;
    let mb = |key: &str| -> Vec<(f64, f64)> {
        samples
            .iter()
            .map(|s| (s["t_s"].as_f64().unwrap(), s[key].as_f64().unwrap() / 1e6))
            .collect()
    };
    let pss = mb("pss_bytes");
    let tmax = pss.last().map(|p| p.0).unwrap_or(1.0).max(1.0);
    let ymax = pss.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.1;
    let root = SVGBackend::new(path, (760, 380)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let mut ch = ChartBuilder::on(&root)
        .caption("Soak: Verbatim scanning on, memory", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..tmax, 0.0..ymax)
        .unwrap();
    ch.configure_mesh()
        .x_desc("seconds")
        .y_desc("MB")
        .label_style(("sans-serif", 13))
        .draw()
        .unwrap();
    for (line, label, c) in [
        (pss, "PSS MB (with mapped index pages)", RED),
        (
            mb("pss_anon_bytes"),
            "anonymous PSS MB (heap, stacks)",
            GREEN,
        ),
    ] {
        ch.draw_series(LineSeries::new(line, c.stroke_width(2)))
            .unwrap()
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    legend(&mut ch, SeriesLabelPosition::LowerRight);
    root.present().unwrap();
}

/// The legend box every plot draws.
fn legend<'a, DB: plotters::prelude::DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    ch: &mut plotters::prelude::ChartContext<'a, DB, CT>,
    at: plotters::prelude::SeriesLabelPosition,
) {
    use plotters::prelude::*;
    ch.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .label_font(("sans-serif", 13))
        .position(at)
        .draw()
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Soak

async fn soak(c: &mut Ctx, arm: usize, secs: u64, users: usize, out: &Path) {
    let arm = &c.arms[arm];
    let pid = arm.pid.unwrap();
    let r = steady_chat();
    let before = json!({"pss_bytes": pss(pid), "pss_anon_bytes": pss_anon(pid), "fds": fds(pid), "threads": threads(pid)});
    let t0 = Instant::now();
    let samples = Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let samples = samples.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                samples.lock().unwrap().push(json!({"t_s": t0.elapsed().as_secs_f64(), "pss_bytes": pss(pid), "pss_anon_bytes": pss_anon(pid), "fds": fds(pid), "threads": threads(pid), "cpu_s": cpu_secs(pid)}));
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    };
    let (mut rec, cpu, wall) = run_users(arm, users, &r, secs as f64).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = json!({"pss_bytes": pss(pid), "pss_anon_bytes": pss_anon(pid), "fds": fds(pid), "threads": threads(pid)});
    let samples = samples.lock().unwrap().clone();
    let v = summary(&mut rec, cpu, wall);
    // Flat: the last minute's PSS against the first minute after warm-up. Anonymous memory
    // (heap, stacks) is what a leak grows; the whole PSS also counts the mapped index's pages
    // as they are touched for the first time (file-backed, shared, reclaimable), which grows
    // for as long as new text reaches new postings.
    let at = |field: &str, from: f64, to: f64| {
        let xs: Vec<f64> = samples
            .iter()
            .filter(|s| (from..to).contains(&s["t_s"].as_f64().unwrap()))
            .map(|s| s[field].as_f64().unwrap())
            .collect();
        xs.iter().sum::<f64>() / xs.len().max(1) as f64
    };
    let total = secs as f64;
    let (e0, e1) = (60f64.min(total / 4.0), 120f64.min(total / 2.0));
    let (l0, l1) = (total - 60f64.min(total / 4.0), total + 1.0);
    let (early, late) = (at("pss_bytes", e0, e1), at("pss_bytes", l0, l1));
    let (early_anon, late_anon) = (at("pss_anon_bytes", e0, e1), at("pss_anon_bytes", l0, l1));
    let mb = |v: &Value| v.as_f64().unwrap_or(0.0) / 1e6;
    c.md.push_str(&format!(
        "\n#### Soak: {users} streams for {secs} s against Verbatim scanning on\n\n| figure | value |\n|---|---|\n| streams | {} ok of {} ({} stalled), {} events |\n| chunk latency | p50 {} ms, p99 {} ms, p99.9 {} ms, max gap {:.1} ms |\n| proxy CPU | {:.2} cores, {:.1} µs per chunk |\n| anonymous PSS (heap, stacks) before / early (after warm-up) / late / after | {:.1} / {:.1} / {:.1} / {:.1} MB |\n| late vs early, anonymous PSS | {:+.1} % |\n| PSS with the mapped index before / early / late / after | {:.1} / {:.1} / {:.1} / {:.1} MB |\n| late vs early, PSS with the mapped index (its pages touched for the first time) | {:+.1} % |\n| open fds before / after | {} / {} |\n| threads before / after | {} / {} |\n",
        v["ok"], v["streams"], v["stalled"], v["events"],
        f2(&v["chunk_p50_ms"]), f2(&v["chunk_p99_ms"]), f2(&v["chunk_p999_ms"]), v["max_gap_ms"].as_f64().unwrap_or(0.0),
        v["proxy_cores"].as_f64().unwrap_or(0.0), v["cpu_us_per_chunk"].as_f64().unwrap_or(0.0),
        mb(&before["pss_anon_bytes"]), early_anon / 1e6, late_anon / 1e6, mb(&after["pss_anon_bytes"]),
        (late_anon / early_anon - 1.0) * 100.0,
        mb(&before["pss_bytes"]), early / 1e6, late / 1e6, mb(&after["pss_bytes"]),
        (late / early - 1.0) * 100.0,
        before["fds"], after["fds"], before["threads"], after["threads"],
    ));
    plot_soak(&samples, &out.join("soak.svg"));
    c.out.insert("soak".into(), json!({"streams": users, "secs": secs, "result": v, "before": before, "after": after, "early_pss": early, "late_pss": late, "early_pss_anon": early_anon, "late_pss_anon": late_anon, "samples": samples}));
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let cli = Cli::parse();
    match cli.role {
        Some(Role::Replot { json }) => {
            // Draws the plots again from a run's load.json, next to it.
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
            let dir = json.parent().unwrap_or(Path::new("."));
            if let Some(s) = v.pointer("/soak/samples").and_then(Value::as_array) {
                plot_soak(s, &dir.join("soak.svg"));
            }
            if let Some(l) = v.get("ladder").and_then(Value::as_object) {
                let series: Vec<(String, Vec<(usize, Value)>)> = l
                    .iter()
                    .map(|(name, steps)| {
                        let pts = steps
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|st| {
                                (
                                    st["streams"].as_u64().unwrap_or(0) as usize,
                                    st["result"].clone(),
                                )
                            })
                            .collect();
                        (name.clone(), pts)
                    })
                    .collect();
                plot_ladders(&series, dir);
            }
        }
        Some(Role::Mock { listen }) => {
            raise_fd_limit();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(run_mock(listen));
        }
        Some(Role::Run(a)) if cli.bench => run(a, false),
        Some(Role::Run(a)) => run(a, true),
        None => {
            // `cargo test --all-targets` runs this with no arguments.
            let a = RunArgs::parse_from(["load"]);
            run(a, !cli.bench);
        }
    }
}

fn run(mut a: RunArgs, smoke: bool) {
    raise_fd_limit();
    if smoke {
        println!(
            "smoke pass: mock, direct and Verbatim scanning off, a few streams; the numbers mean nothing"
        );
        a.ladder = vec![4, 16];
        a.ladder_secs = 1;
        a.streams = 5;
        a.idle_streams = 16;
        a.nginx = None;
        a.litellm = None;
        a.indexes.clear();
        a.soak_secs = 0;
    }
    std::fs::create_dir_all(&a.out).unwrap();
    let dir = tempfile::tempdir().unwrap();
    if a.cold {
        drop_page_cache();
    }
    let (_mock, mock) = start_mock();
    let mut procs: Vec<Proc> = Vec::new();
    let mut arms = vec![Arm {
        name: "direct",
        addr: mock,
        pid: None,
    }];
    let mut add = |name: &'static str, (p, addr): (Proc, SocketAddr)| {
        arms.push(Arm {
            name,
            addr,
            pid: Some(p.pid()),
        });
        procs.push(p);
    };
    if let Some(ng) = &a.nginx {
        add("nginx", start_nginx(ng, mock, dir.path()));
    }
    // Scanning off; then hold=none: the cost of scanning itself; strict: plus the holdback
    // that keeps every blocked character back (t units of text, a property of the policy, not
    // of load). Over HTTP/1.1 to the mock, and with `--upstream-h2` over HTTP/2 too.
    let scanning = !a.indexes.is_empty();
    let verbatim_arms: [(&'static str, Option<&str>, bool, bool); 6] = [
        ("verbatim scan off", None, false, true),
        ("verbatim scan on", Some("none"), false, scanning),
        ("verbatim scan on, strict", Some("strict"), false, scanning),
        (
            "verbatim scan off, HTTP/2 upstream",
            None,
            true,
            a.upstream_h2,
        ),
        (
            "verbatim scan on, HTTP/2 upstream",
            Some("none"),
            true,
            a.upstream_h2 && scanning,
        ),
        (
            "verbatim scan on, strict, HTTP/2 upstream",
            Some("strict"),
            true,
            a.upstream_h2 && scanning,
        ),
    ];
    for (name, hold, h2, wanted) in verbatim_arms {
        if wanted {
            add(name, start_verbatim(&a, mock, hold, h2, dir.path()));
        }
    }
    if let Some(l) = &a.litellm {
        add("litellm", start_litellm(l, mock, dir.path()));
    }
    let mut c = Ctx {
        arms,
        out: serde_json::Map::new(),
        md: String::new(),
    };
    let want = |s: &str| a.only.is_empty() || a.only.iter().any(|o| o == s);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let all: Vec<usize> = (0..c.arms.len()).collect();
    let no_litellm: Vec<usize> = (0..c.arms.len())
        .filter(|&i| c.arms[i].name != "litellm")
        .collect();
    let scan_on = c.arms.iter().position(|x| x.name == "verbatim scan on");
    let meta = json!({
        "arms": c.arm_names(), "indexes": a.indexes, "ladder": a.ladder, "ladder_secs": a.ladder_secs,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "corpus_bytes": a.indexes.iter().map(|i| corpus_bytes(i)).sum::<u64>(),
    });
    c.out.insert("params".into(), meta);
    rt.block_on(async {
        // Warm every arm (connections, index pages) before measuring.
        for arm in &c.arms {
            let r = Req { fmt: Fmt::Chat, p: Params::paced(20, 1), prompt: Arc::new("hi".into()) };
            let _ = run_users(arm, 8, &r, 0.5).await;
        }
        let hi: Arc<String> = Arc::new("Tell me about the valley.".into());
        let p = Params::paced(60, 20);
        // Idle memory first, before other scenarios have grown the allocators' pools.
        if want("idle") {
            scenario_idle(&mut c, a.idle_streams).await;
            save(&c, &a.out);
        }
        if want("one") {
            scenario_one(&mut c, Fmt::Chat, "One stream at a time (OpenAI chat, 60 events at 50/s)", a.streams, hi.clone(), p, &all).await;
            save(&c, &a.out);
        }
        if want("formats") {
            scenario_one(&mut c, Fmt::Anthropic, "One stream at a time (Anthropic Messages, 60 events at 50/s)", a.streams / 2, hi.clone(), p, &no_litellm).await;
            scenario_one(&mut c, Fmt::Responses, "One stream at a time (OpenAI Responses, 60 events at 50/s)", a.streams / 2, hi.clone(), p, &no_litellm).await;
            for (fmt, label) in [(Fmt::Anthropic, "128 concurrent Anthropic Messages streams"), (Fmt::Responses, "128 concurrent OpenAI Responses streams")] {
                let r = Req { fmt, p: Params::paced(100, 20), prompt: hi.clone() };
                scenario_concurrent(&mut c, label, &r, &no_litellm, smoke).await;
                save(&c, &a.out);
            }
        }
        if want("tools") {
            let tool = Params { tool: true, ..Params::paced(60, 20) };
            scenario_one(&mut c, Fmt::Chat, "One stream at a time (OpenAI chat, a tool call writing a Rust file, 60 events at 50/s)", a.streams / 2, hi.clone(), tool, &no_litellm).await;
            let r = Req { fmt: Fmt::Chat, p: Params { tool: true, ..Params::paced(100, 20) }, prompt: hi.clone() };
            scenario_concurrent(&mut c, "128 concurrent OpenAI chat streams, each a tool call writing a Rust file", &r, &no_litellm, smoke).await;
            save(&c, &a.out);
        }
        if want("prompts") {
            let src = a.prompt_source.clone().unwrap_or_else(|| PathBuf::from("src"));
            for kb in [100usize, 1000] {
                let text = Arc::new(prompt_text(&src, kb * 1000));
                let label = format!("Large prompt ({} KB of indexed text), the answer quoting it (caller-supplied exemption), 40 events at 50/s", text.len() / 1000);
                let p = Params { events: 40, pace_ms: 20, first_ms: 0, echo: true, hang: None, tool: false };
                scenario_one(&mut c, Fmt::Chat, &label, if smoke { 5 } else { 10 }, text, p, &no_litellm).await;
                save(&c, &a.out);
            }
        }
        if a.only.iter().any(|o| o == "ratios") {
            scenario_ratios(&mut c, &a, a.ratio_rounds.max(1), a.ladder_secs as f64).await;
            save(&c, &a.out);
        }
        let mut series = Vec::new();
        if want("ladder") {
            series = scenario_ladder(&mut c, &a, a.ladder_secs as f64).await;
            save(&c, &a.out);
        }
        if want("nonstream") && smoke {
            println!("smoke pass: the non-streamed scenario (wrk) is left out");
        } else if want("nonstream") {
            tokio::task::block_in_place(|| scenario_nonstream(&mut c, 8));
            save(&c, &a.out);
        }
        if a.soak_secs > 0
            && let Some(j) = scan_on
        {
            soak(&mut c, j, a.soak_secs, a.soak_streams, &a.out).await;
        }
        if !series.is_empty() {
            plot_ladders(&series, &a.out);
        }
    });
    drop(procs);
    println!("{}", save(&c, &a.out));
    if smoke {
        // The smoke pass must at least have moved every stream through both arms.
        for label in [
            "One stream at a time (OpenAI chat, 60 events at 50/s)",
            "One stream at a time (OpenAI chat, a tool call writing a Rust file, 60 events at 50/s)",
        ] {
            let one = &c.out[label];
            for arm in ["direct", "verbatim scan off"] {
                assert_eq!(one[arm]["ok"], one[arm]["streams"], "{label}, {arm}: {one}");
            }
        }
    }
}

fn corpus_bytes(index: &Path) -> u64 {
    std::fs::read_to_string(index.join("manifest.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| {
            v["corpora"]
                .as_array()
                .map(|c| c.iter().filter_map(|x| x["bytes"].as_u64()).sum())
        })
        .unwrap_or(0)
}
