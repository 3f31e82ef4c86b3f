//! Heap a scanning stream's `Pipeline` holds while idle, and its parts: the live bytes a
//! counting allocator (around mimalloc, as `verbatim serve` uses) sees after N streams each
//! received the same OpenAI chat chunks, a word each, then nothing more — what the load
//! benchmark's idle scenario holds per stream for scanning, without hyper's connection state.
//!
//!   cargo bench --bench stream_memory -- [--index DIR ...] [--streams 1000] [--events 30]
//!
//! Under `cargo test --all-targets` (no `--bench`) it runs a tiny smoke pass.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark's setup failing is fatal

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use clap::Parser;
use verbatim::index::Index;
use verbatim::matcher::Scanner;
use verbatim::normalize::TextKind;
use verbatim::policy::Policy;
use verbatim::proxy::api::Api;
use verbatim::proxy::pipeline::{Hold, Pipeline, ScanSetup, Scope};
use verbatim::proxy::sse::SseDecoder;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{Counting, LIVE};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Parser)]
struct Args {
    #[arg(long = "index")]
    indexes: Vec<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    #[arg(long, default_value_t = 30)]
    events: usize,
    /// Passed by `cargo bench` (after the arguments given, so it may come twice).
    #[arg(long, overrides_with = "bench")]
    bench: bool,
}

fn chunk(content: &str) -> Vec<u8> {
    let content = serde_json::to_string(content).unwrap();
    format!(
        "data: {{\"id\":\"chatcmpl-load\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{content}}},\"finish_reason\":null}}]}}\n\n"
    )
    .into_bytes()
}

/// Live heap bytes per item while `n` of what `make` builds are alive.
fn per_item<T>(n: usize, mut make: impl FnMut(usize) -> T) -> f64 {
    let before = LIVE.load(Relaxed);
    let items: Vec<T> = (0..n).map(&mut make).collect();
    let held = LIVE.load(Relaxed) - before - (items.capacity() * std::mem::size_of::<T>()) as isize;
    drop(items);
    held as f64 / n as f64 + std::mem::size_of::<T>() as f64
}

fn main() {
    let mut a = Args::parse();
    if !a.bench {
        println!("test mode: smoke pass; the numbers mean nothing");
        a.streams = 10;
    }
    let cache = verbatim::license::builtin::cache_dir();
    let mut indexes = vec![Arc::new(
        Index::open(verbatim::license::builtin::ensure(&cache).unwrap()).unwrap(),
    )];
    for i in &a.indexes {
        indexes.push(Arc::new(Index::open(i).unwrap()));
    }
    // Words with a unique token in each, as the load benchmark's mock sends them.
    let words: Vec<Vec<u8>> = (0..a.events)
        .map(|i| chunk(&format!(" t{i:08}valley")))
        .collect();
    // Shared by every stream, as in the proxy.
    let policy = Arc::new(Policy::builtin());
    let exempt = Arc::default();
    let setup_held = |hold: Hold| ScanSetup {
        indexes: indexes.clone(),
        exempt: Arc::clone(&exempt),
        policy: Arc::clone(&policy),
        scope: Scope::default(),
        hold,
        max_event_bytes: 1 << 20,
        max_holdback_bytes: 8 << 20,
        max_response_bytes: usize::MAX,
        answer_kind: None,
    };
    let setup = || setup_held(Hold::None);
    let n = a.streams;
    let text: String = (0..a.events).map(|i| format!(" t{i:08}valley")).collect();
    let rows = [
        (
            "Pipeline, new",
            per_item(n, |_| Pipeline::new(Api::ChatCompletions, setup())),
        ),
        (
            "Pipeline, after the events",
            per_item(n, |_| {
                let mut p = Pipeline::new(Api::ChatCompletions, setup());
                for w in &words {
                    let _ = p.push(w);
                }
                p
            }),
        ),
        (
            "Pipeline, strict holdback, after the events",
            per_item(n, |_| {
                let mut p = Pipeline::new(Api::ChatCompletions, setup_held(Hold::Strict));
                for w in &words {
                    let _ = p.push(w);
                }
                p
            }),
        ),
        (
            "Scanner (all indexes), after the text",
            per_item(n, |_| {
                let mut s = Scanner::new(&indexes, TextKind::Markdown);
                s.push_str(&text);
                s
            }),
        ),
        (
            "Scanner (all indexes), new",
            per_item(n, |_| Scanner::new(&indexes, TextKind::Markdown)),
        ),
        (
            "Scanner (license index only), after the text",
            per_item(n, |_| {
                let mut s = Scanner::new(&indexes[..1], TextKind::Markdown);
                s.push_str(&text);
                s
            }),
        ),
        (
            "SseDecoder, after the events",
            per_item(n, |_| {
                let mut d = SseDecoder::new(1 << 20);
                let mut out = Vec::new();
                for w in &words {
                    d.push(w, &mut out).unwrap();
                    out.clear();
                }
                d
            }),
        ),
    ];
    println!(
        "{} streams, {} events each, {} indexes (the built-in license index first)",
        n,
        a.events,
        indexes.len()
    );
    println!(
        "inline sizes: Pipeline {} B, Scanner {} B",
        std::mem::size_of::<Pipeline>(),
        std::mem::size_of::<Scanner>()
    );
    for (what, bytes) in rows {
        println!("{what:40} {bytes:8.0} bytes per stream");
    }
}
