//! CPU per streamed event of the scanning path, without sockets: OpenAI chat chunks of one
//! word each (as a model streams them) pushed through `Pipeline` one event per push, against
//! the built-in license index plus the given indexes, beside the SSE decoder and the JSON
//! parse alone over the same bytes (the floor any event-aware relay pays).
//!
//!   cargo bench --bench pipeline -- [--index DIR ...] [--events 200000] [--hold none|strict]
//!                                    [--unique] [--interleave 1000]
//!
//! `--interleave N` keeps N streams open and pushes their events round-robin, as a proxy
//! serving N concurrent streams does: every stream's state and every probe is then cold in
//! the caches, which a one-stream-at-a-time loop hides. Events are pushed as the proxy pushes
//! them (`Pipeline::push_into` its queue of events to send); the allocations made per event
//! are counted and reported beside the time.
//!
//! `--tool-args` sends the same words as a tool call's arguments instead (each stream one call,
//! `{"path": "notes.md", "content": "…"}`, a word a delta): the per-event price of reading
//! arguments as JSON, against `--tool-args` off in another run.
//!
//! `--lag DIR [--lag-unwrap]` measures instead how long strict holdback keeps text back: the
//! text files under DIR (sorted, up to `--lag-mib`; with `--lag-unwrap` each paragraph on one
//! line, as a model writes) stream as one stream per file, a word an event, under
//! the built-in policy and under one that redacts license markers (whose text is held until its
//! line ends, docs/proxy.md); for each event, how many events later it was released.
//! `--lag-fence` puts each file in a code fence tagged with its extension (source files).
//!
//! `--blocks LIST` compares what the proxy blocks with what `scan` reports: each file named in
//! LIST (one path a line) in a code fence, streamed a word an event under the built-in policy
//! and strict holdback; a file counts as blocked if a copy (not a license marker) was blocked,
//! and as explained if the scanner's findings on the same text, once every run has ended,
//! include one the built-in policy blocks. The unexplained blocks are listed (docs/proxy.md).
//! `--labels FILE` (file, `copy` or `idiom`, …) also says how many of each label are blocked;
//! `--blocks-detail OUT` writes each blocked file's findings with the facts the policy weighs.
//!
//! Under `cargo test --all-targets` (no `--bench`) it runs a tiny smoke pass.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark's setup failing is fatal

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use verbatim::index::Index;
use verbatim::policy::Policy;
use verbatim::proxy::api::Api;
use verbatim::proxy::pipeline::{Hold, Pipeline, ScanSetup, Scope};
use verbatim::proxy::sse::SseDecoder;

// The allocator `verbatim serve` uses, counting its allocations: allocations per event are
// a cost a one-stream loop with warm caches hides.
#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{ALLOCS, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Parser)]
struct Args {
    #[arg(long = "index")]
    indexes: Vec<PathBuf>,
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    #[arg(long, default_value = "none")]
    hold: String,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Put a unique token before each word (as the load benchmark's timestamps do), so every
    /// k-gram is new and each filter probe misses the cache, as with real model output.
    #[arg(long)]
    unique: bool,
    /// Streams open at once, their events pushed round-robin (1: one stream after another).
    #[arg(long, default_value_t = 1)]
    interleave: usize,
    /// The words as tool-call arguments (see the module docs).
    #[arg(long)]
    tool_args: bool,
    /// Measure release lag over the text files under this directory (see the module docs).
    #[arg(long)]
    lag: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    lag_mib: usize,
    /// Join each paragraph's lines into one line first, as a model writes prose (a line
    /// that is held until it ends is then a whole paragraph).
    #[arg(long)]
    lag_unwrap: bool,
    /// Each file in a Markdown code fence tagged with its extension, so a source file is
    /// read as code (as a model's answer quoting it would be).
    #[arg(long)]
    lag_fence: bool,
    /// Compare the proxy's blocks with `scan`'s findings over the files this lists.
    #[arg(long)]
    blocks: Option<PathBuf>,
    /// With `--blocks`: write the findings of each blocked file as JSON Lines here (`scan`'s
    /// keys, and the run's matched units, longest stretch, structure and key rarity), to study
    /// what is blocked.
    #[arg(long)]
    blocks_detail: Option<PathBuf>,
    /// With `--blocks`: files labelled `copy` or `idiom` by hand (TSV: file, label, …; `#`
    /// comments), e.g. `benches/data/held-out-blocks-labelled.tsv`; reports how many of each
    /// are blocked.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Per-event cost of a long renamed run no policy blocks: an index of one document, a
    /// `Display` impl matching on an enum of this many variants, and a renamed copy of it
    /// (another enum, other strings) streamed a word an event (docs/benchmarks.md).
    #[arg(long)]
    long_renamed: Option<usize>,
    /// Passed by `cargo bench` (after the arguments given, so it may come twice).
    #[arg(long, overrides_with = "bench")]
    bench: bool,
}

/// Chat chunks carrying `text` a word (with the whitespace before the next) at a time.
fn text_events(text: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut start = 0;
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        // Past ASCII whitespace: `i` is on a character boundary.
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        out.push(chunk(&text[start..i]));
        start = i;
    }
    out
}

/// Strict holdback under `policy`, without the holdback and response limits (a bench looks
/// at what is decided, not at what a limit stops).
fn strict(indexes: Vec<Arc<Index>>, policy: Policy) -> ScanSetup {
    ScanSetup {
        indexes,
        exempt: Arc::default(),
        policy: Arc::new(policy),
        scope: Scope::default(),
        hold: Hold::Strict,
        max_event_bytes: 1 << 20,
        max_holdback_bytes: usize::MAX,
        max_response_bytes: usize::MAX,
        answer_kind: None,
    }
}

/// Release lag (in events) of every event of every stream, under `setup`.
fn lags(streams: &[Vec<Vec<u8>>], setup: &ScanSetup) -> Vec<usize> {
    let mut lags = Vec::new();
    for evs in streams {
        let mut p = Pipeline::new(Api::ChatCompletions, setup.clone());
        let mut released = 0u64;
        for (i, e) in evs.iter().enumerate() {
            p.push(e);
            // Events go out in order: this push released events `released..events_out`.
            for j in released..p.events_out {
                lags.push(i - j as usize);
            }
            released = p.events_out;
        }
        p.finish();
        for j in released..p.events_out {
            lags.push(evs.len() - j as usize);
        }
    }
    lags
}

const WORDS: &[&str] = &[
    "the", "valley", "was", "mild", "all", "week", "and", "farmers", "planted", "barley", "early",
    "because", "soil", "dried", "sooner", "than", "anyone", "expected", "while", "herons",
    "waited", "by", "ditches", "for", "frogs",
];

/// One OpenAI chat chunk event whose delta is `content`.
fn chunk(content: &str) -> Vec<u8> {
    let content = serde_json::to_string(content).unwrap();
    format!(
        "data: {{\"id\":\"chatcmpl-load\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{content}}},\"finish_reason\":null}}]}}\n\n"
    )
    .into_bytes()
}

/// A chat chunk carrying a piece of a tool call's arguments.
fn tool_chunk(args: &str) -> Vec<u8> {
    let args = serde_json::to_string(args).unwrap();
    format!(
        "data: {{\"id\":\"chatcmpl-load\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":0,\"function\":{{\"arguments\":{args}}}}}]}},\"finish_reason\":null}}]}}\n\n"
    )
    .into_bytes()
}

/// `n` events a word each; with `tool_args`, each `per_stream` of them one tool call's
/// arguments (the first opens the JSON, the last closes it).
fn events(n: usize, unique: bool, tool_args: Option<usize>) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let token = if unique {
                format!("T{:016x}T ", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            } else {
                String::new()
            };
            let word = format!("{token}{} ", WORDS[(i * 7 + i / 25) % WORDS.len()]);
            match tool_args {
                None => chunk(&word),
                Some(per) => {
                    let escaped = serde_json::to_string(&word).unwrap();
                    let inner = &escaped[1..escaped.len() - 1];
                    let open = if i % per == 0 {
                        r#"{"path": "notes.md", "content": ""#
                    } else {
                        ""
                    };
                    let close = if i % per == per - 1 { "\"}" } else { "" };
                    tool_chunk(&format!("{open}{inner}{close}"))
                }
            }
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut a = Args::parse();
    if !a.bench {
        println!("test mode: smoke pass; the numbers mean nothing");
        a.events = 2_000;
        a.reps = 1;
    }
    // The built-in license index, from the cache `verbatim serve` uses (built once).
    let cache = verbatim::license::builtin::cache_dir();
    let mut indexes = vec![Arc::new(
        Index::open(verbatim::license::builtin::ensure(&cache).unwrap()).unwrap(),
    )];
    for i in &a.indexes {
        indexes.push(Arc::new(Index::open(i).unwrap()));
    }
    if let Some(n) = a.long_renamed {
        return long_renamed_report(n, if a.bench { a.reps.max(1) } else { 1 });
    }
    if let Some(list) = &a.blocks {
        return blocks_report(
            list,
            a.blocks_detail.as_deref(),
            a.labels.as_deref(),
            indexes,
        );
    }
    if let Some(dir) = &a.lag {
        return lag_report(
            dir,
            if a.bench { a.lag_mib << 20 } else { 64 << 10 },
            a.lag_unwrap,
            a.lag_fence,
            indexes,
        );
    }
    // Streams of 100 events, as in the load benchmark; a new pipeline per stream.
    let per_stream = 100;
    let evs = events(a.events, a.unique, a.tool_args.then_some(per_stream));
    let setup = ScanSetup {
        indexes,
        exempt: Arc::default(),
        policy: Arc::new(Policy::builtin()),
        scope: Scope::default(),
        hold: if a.hold == "strict" {
            Hold::Strict
        } else {
            Hold::None
        },
        max_event_bytes: 1 << 20,
        max_holdback_bytes: 8 << 20,
        max_response_bytes: usize::MAX,
        answer_kind: None,
    };
    // Groups of `interleave` streams; within a group, event i of every stream, then i + 1.
    let streams: Vec<&[Vec<u8>]> = evs.chunks(per_stream).collect();
    let groups: Vec<&[&[Vec<u8>]]> = streams.chunks(a.interleave.max(1)).collect();
    let (mut base, mut full, mut allocs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.reps {
        let t = Instant::now();
        let mut n = 0usize;
        for g in &groups {
            let mut ds: Vec<SseDecoder> = g.iter().map(|_| SseDecoder::new(1 << 20)).collect();
            let mut out = Vec::new();
            for i in 0..per_stream {
                for (s, d) in g.iter().zip(ds.iter_mut()) {
                    let Some(e) = s.get(i) else { continue };
                    out.clear();
                    d.push(e, &mut out).unwrap();
                    for ev in &out {
                        let v: serde_json::Value =
                            serde_json::from_str(ev.data().unwrap()).unwrap();
                        let delta = &v["choices"][0]["delta"];
                        n += delta["content"]
                            .as_str()
                            .or(delta["tool_calls"][0]["function"]["arguments"].as_str())
                            .map_or(0, str::len);
                    }
                }
            }
        }
        std::hint::black_box(n);
        base.push(t.elapsed().as_nanos() as f64 / evs.len() as f64);
        let t = Instant::now();
        let a0 = ALLOCS.load(Relaxed);
        let mut out = 0usize;
        for g in &groups {
            // Each with the queue of released events the proxy keeps for it (`push_into`).
            let mut ps: Vec<(Pipeline, VecDeque<Bytes>)> = g
                .iter()
                .map(|_| {
                    (
                        Pipeline::new(Api::ChatCompletions, setup.clone()),
                        VecDeque::new(),
                    )
                })
                .collect();
            for i in 0..per_stream {
                for (s, (p, ready)) in g.iter().zip(ps.iter_mut()) {
                    if let Some(e) = s.get(i) {
                        p.push_into(e, ready);
                        out += ready.len();
                        ready.clear();
                    }
                }
            }
            for (p, _) in &mut ps {
                out += p.finish().len();
            }
        }
        std::hint::black_box(out);
        full.push(t.elapsed().as_nanos() as f64 / evs.len() as f64);
        allocs.push((ALLOCS.load(Relaxed) - a0) as f64 / evs.len() as f64);
    }
    let (b, f, al) = (median(base), median(full), median(allocs));
    println!(
        "{} events{}, {} indexes, hold={}, {} streams at once: SSE decode + JSON parse {b:.0} ns/event; pipeline {f:.0} ns/event ({:.1}x), {al:.2} allocations/event",
        evs.len(),
        if a.tool_args {
            " (tool-call arguments)"
        } else {
            ""
        },
        setup.indexes.len(),
        a.hold,
        a.interleave,
        f / b
    );
}

/// `--lag`: release lag under the built-in policy and under one that redacts license markers.
fn lag_report(
    dir: &std::path::Path,
    budget: usize,
    unwrap: bool,
    fence: bool,
    indexes: Vec<Arc<Index>>,
) {
    let mut files: Vec<PathBuf> = walk(dir);
    files.sort();
    let mut streams = Vec::new();
    let (mut bytes, mut n_events) = (0usize, 0usize);
    for f in files {
        let Ok(mut text) = std::fs::read_to_string(&f) else {
            continue;
        };
        if unwrap {
            text = text
                .split("\n\n")
                .map(|p| p.split('\n').collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join("\n\n");
        }
        if fence {
            let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
            text = format!("```{ext}\n{text}\n```\n");
        }
        if bytes >= budget {
            break;
        }
        bytes += text.len();
        let evs = text_events(&text);
        n_events += evs.len();
        streams.push(evs);
    }
    let markers = Policy::parse(
        std::path::Path::new("markers.toml"),
        "version = 1\n[[rules]]\nname = \"markers\"\naction = \"redact\"\nwhen = { kind = [\"license-marker\"] }\n".into(),
    )
    .unwrap();
    println!(
        "{} streams (files{}{}), {:.1} MB, {n_events} events of a word each, hold=strict, {} indexes",
        streams.len(),
        if unwrap {
            ", paragraphs on one line"
        } else {
            ""
        },
        if fence { ", each in a code fence" } else { "" },
        bytes as f64 / 1e6,
        indexes.len()
    );
    for (name, policy) in [
        ("built-in policy", Policy::builtin()),
        ("markers redacted", markers),
    ] {
        let setup = strict(indexes.clone(), policy);
        let mut l = lags(&streams, &setup);
        l.sort_unstable();
        let q = |p: f64| {
            l.get(((l.len() as f64 - 1.0) * p) as usize)
                .copied()
                .unwrap_or(0)
        };
        let mean = l.iter().sum::<usize>() as f64 / l.len().max(1) as f64;
        println!(
            "{name}: {} events released; lag in events: mean {mean:.2}, p50 {}, p90 {}, p99 {}, p99.9 {}, max {}",
            l.len(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            l.last().copied().unwrap_or(0)
        );
    }
}

/// `--blocks`: files the proxy blocks, and those of them no ended run explains.
fn blocks_report(
    list: &std::path::Path,
    detail: Option<&std::path::Path>,
    labels: Option<&std::path::Path>,
    indexes: Vec<Arc<Index>>,
) {
    use std::io::Write;
    use verbatim::matcher::{MatchKind, Scanner};
    use verbatim::normalize::TextKind;
    use verbatim::policy::Facts;
    use verbatim::proxy::pipeline::Action;
    let labels: std::collections::HashMap<String, String> = labels
        .map(|p| std::fs::read_to_string(p).unwrap())
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut c = l.split('\t');
            Some((c.next()?.to_string(), c.next()?.to_string()))
        })
        .collect();
    // label -> (labelled files scanned, of them blocked)
    let mut by_label = std::collections::BTreeMap::<String, (usize, usize)>::new();
    let mut detail = detail.map(|p| std::io::BufWriter::new(std::fs::File::create(p).unwrap()));
    let files: Vec<String> = std::fs::read_to_string(list)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let setup = strict(indexes.clone(), Policy::builtin());
    let (mut n, mut blocked, mut explained) = (0, 0, 0);
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for f in &files {
        let Ok(src) = std::fs::read_to_string(f) else {
            continue;
        };
        n += 1;
        let ext = std::path::Path::new(f)
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("");
        let text = format!("```{ext}\n{src}\n```\n");
        let mut p = Pipeline::new(Api::ChatCompletions, setup.clone());
        let mut decisions = Vec::new();
        for e in text_events(&text) {
            p.push(&e);
            decisions.extend(p.take_decisions());
        }
        p.finish();
        decisions.extend(p.take_decisions());
        let d = decisions
            .iter()
            .find(|d| d.action == Action::Block && d.citation.marker.is_none());
        if let Some(l) = labels.get(f) {
            let e = by_label.entry(l.clone()).or_default();
            e.0 += 1;
            e.1 += usize::from(d.is_some());
            if let Some(d) = d {
                let c = &d.citation;
                println!(
                    "labelled {l}, blocked: {f} bytes {}..{} of the fenced text: {} of {} ({} units)",
                    c.output_start, c.output_end, c.kind, c.doc, c.units
                );
            }
        }
        let Some(d) = d else {
            continue;
        };
        blocked += 1;
        *kinds.entry(d.kind.clone()).or_default() += 1;
        let mut sc = Scanner::new(&indexes, TextKind::Markdown);
        sc.push_str(&text);
        sc.finish();
        let found = sc.take_findings();
        if let Some(w) = detail.as_mut() {
            for g in found.iter().filter(|g| g.kind != MatchKind::LicenseText) {
                let Some(r) = verbatim::matcher::FindingReport::new(&indexes[g.index], g) else {
                    continue;
                };
                let mut line = serde_json::to_value(r).unwrap();
                line["file"] = f.as_str().into();
                line["blocked_kind"] = d.kind.as_str().into();
                line["matched"] = g.matched.into();
                line["longest_aligned"] = g.longest_aligned.into();
                line["structure"] = g.structure.into();
                line["key_docs"] = g.key_docs.into();
                writeln!(w, "{line}").unwrap();
            }
        }
        let blockable = found
            .iter()
            .any(|g| setup.policy.decide(&Facts::of_finding(g)).action == Action::Block);
        if blockable {
            explained += 1;
        } else {
            let c = &d.citation;
            println!(
                "unexplained: {f}: {} of {} ({} units)",
                c.kind, c.doc, c.units
            );
        }
    }
    println!(
        "{n} files; blocked {blocked} ({kinds:?}); with a finding the policy blocks {explained}; without {}",
        blocked - explained
    );
    for (l, (n, b)) in &by_label {
        println!("labelled {l}: {b} of {n} blocked");
    }
}

/// `impl fmt::Display for {ty}` matching on `n` variants with made-up names (`seed`).
fn display_match(ty: &str, n: usize, seed: u64) -> String {
    let mut x = seed;
    let mut word = || {
        (0..6)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                char::from(b'a' + (x >> 59) as u8 % 26)
            })
            .collect::<String>()
    };
    let mut s = format!(
        "impl fmt::Display for {ty} {{\n    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {{\n        match *self {{\n"
    );
    for i in 0..n {
        let (v, t) = (word(), word());
        s += &format!("            {ty}::V{v}{i} => write!(f, \"{t}\"),\n");
    }
    s + "        }\n    }\n}\n"
}

/// `--long-renamed N`: see [`Args::long_renamed`].
fn long_renamed_report(n: usize, reps: usize) {
    use verbatim::index::build::{BuildOptions, build};
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("code")).unwrap();
    std::fs::write(
        dir.path().join("code/t.rs"),
        format!("fn head() -> u32 {{ 17 }}\n{}", display_match("Isa", n, 1)),
    )
    .unwrap();
    let manifest = dir.path().join("code.toml");
    std::fs::write(
        &manifest,
        "name = \"code\"\nkind = \"code\"\nrights = \"licensed\"\npaths = [\"code\"]\n",
    )
    .unwrap();
    let corpora = verbatim::corpus::load_manifests(&[manifest]).unwrap();
    let out = dir.path().join("idx");
    build(&corpora, &out, &BuildOptions::default()).unwrap();
    let setup = strict(
        vec![Arc::new(Index::open(&out).unwrap())],
        Policy::builtin(),
    );
    let text = format!("```rust\n{}```\n", display_match("MediaDesc", n, 2));
    let evs = text_events(&text);
    let mut per_event = Vec::new();
    let mut kinds = Vec::new();
    for _ in 0..reps {
        let mut p = Pipeline::new(Api::ChatCompletions, setup.clone());
        let t = Instant::now();
        for e in &evs {
            p.push(e);
        }
        p.finish();
        per_event.push(t.elapsed().as_secs_f64() * 1e6 / evs.len() as f64);
        kinds = p
            .take_decisions()
            .iter()
            .map(|d| {
                format!(
                    "{} {} units: {}",
                    d.kind,
                    d.citation.units,
                    d.action.as_str()
                )
            })
            .collect();
    }
    println!(
        "{n} variants, {} events: {:.2} µs per event (median of {reps}); decisions: {kinds:?}",
        evs.len(),
        median(per_event)
    );
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
