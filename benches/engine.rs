//! Engine benchmark: memory to serve, bulk scan throughput and per-chunk scan latency, each
//! beside a baseline measured in the same run (normalisation alone), because absolute figures
//! on a shared 2-core machine drift.
//!
//!   cargo bench --bench engine -- --index IDX --corpus-root DIR [--sample-mib 32] [--json F]
//!
//! `--corpus-root` is the directory the index's document paths are relative to (the manifests'
//! directory). Under `cargo test --all-targets` (no `--bench` flag) it runs once on the committed
//! fixture index so the program itself is tested; those numbers mean nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark's setup failing is fatal

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use verbatim::index::Index;
use verbatim::matcher::Scanner;
use verbatim::normalize::{Normalizer, TextKind};
use verbatim::procstat;

// The allocator `verbatim scan` and `verbatim serve` use (measured as shipped; until
// 2026-11-28 this bench ran on the system allocator: docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    index: Option<PathBuf>,
    #[arg(long)]
    corpus_root: Option<PathBuf>,
    /// Files never indexed (e.g. held-out crates): the "unrelated" workload.
    #[arg(long)]
    unrelated_root: Option<PathBuf>,
    /// Prose never indexed (e.g. the Python documentation sources): the "prose" workload.
    #[arg(long)]
    prose_root: Option<PathBuf>,
    /// Bytes of corpus text to sample for the scan workloads.
    #[arg(long, default_value_t = 32)]
    sample_mib: u64,
    /// Repetitions of each throughput measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Passed by `cargo bench` (after the arguments given, so it may come twice).
    #[arg(long, overrides_with = "bench")]
    bench: bool,
}

struct Doc {
    kind: TextKind,
    text: Vec<u8>,
    path: String,
}

/// The code documents of `docs`, each also as the arguments of a tool call that writes it
/// (`{"path": …, "content": …}`, as a coding agent's write tool gets them): the same text
/// plain and as JSON, to price reading tool-call arguments as the code they hold.
fn as_tool_calls(docs: &[Doc]) -> (Vec<Doc>, Vec<Doc>) {
    let code: Vec<&Doc> = docs
        .iter()
        .filter(|d| matches!(d.kind, TextKind::Code(_)))
        .collect();
    let plain = code
        .iter()
        .map(|d| Doc {
            kind: d.kind,
            text: d.text.clone(),
            path: d.path.clone(),
        })
        .collect();
    let wrapped = code
        .iter()
        .map(|d| {
            let text = String::from_utf8_lossy(&d.text);
            // The file name first, as models write it (a stream is read in that order).
            let args = format!(
                r#"{{"path": {}, "content": {}}}"#,
                serde_json::to_string(&d.path).unwrap_or_default(),
                serde_json::to_string(&text).unwrap_or_default()
            );
            Doc {
                kind: TextKind::ToolArgs,
                text: args.into_bytes(),
                path: d.path.clone(),
            }
        })
        .collect();
    (plain, wrapped)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Up to `want` bytes of text files under `root` (links followed), in path order.
fn read_tree(root: &Path, want: u64) -> Vec<Doc> {
    let mut docs = Vec::new();
    let mut got = 0;
    for e in walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
    {
        let Ok(e) = e else { continue };
        if got >= want || !e.file_type().is_file() {
            continue;
        }
        let kind = TextKind::from_path(e.path());
        let ext = e.path().extension().and_then(|x| x.to_str()).unwrap_or("");
        if !matches!(kind, TextKind::Code(_)) && !matches!(ext, "md" | "txt") {
            continue;
        }
        let Ok(text) = std::fs::read(e.path()) else {
            continue;
        };
        if text.len() > 4 << 20 || std::str::from_utf8(&text).is_err() {
            continue;
        }
        got += text.len() as u64;
        let path = e.path().to_string_lossy().into_owned();
        docs.push(Doc { kind, text, path });
    }
    docs
}

fn throughput(docs: &[Doc], reps: usize, mut f: impl FnMut(&Doc)) -> f64 {
    let bytes: usize = docs.iter().map(|d| d.text.len()).sum();
    let mut rates = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        for d in docs {
            f(d);
        }
        rates.push(bytes as f64 / 1e6 / t.elapsed().as_secs_f64());
    }
    median(&mut rates)
}

fn main() {
    let args = Args::parse();
    let smoke = !args.bench;
    let (index_dir, root, unrelated_root) = if smoke {
        println!("test mode: one smoke run on the fixture index; the numbers mean nothing");
        (
            PathBuf::from("tests/fixtures/index-v5"),
            PathBuf::from("corpora"),
            PathBuf::from("src"),
        )
    } else {
        (
            args.index.clone().expect("--index is required"),
            args.corpus_root.clone().expect("--corpus-root is required"),
            args.unrelated_root
                .clone()
                .expect("--unrelated-root is required"),
        )
    };
    let reps = if smoke { 1 } else { args.reps.max(1) };

    let anon0 = procstat::rss_anon().unwrap_or(0);
    let t = Instant::now();
    let index = std::sync::Arc::new(Index::open(&index_dir).expect("open index"));
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let anon1 = procstat::rss_anon().unwrap_or(0);
    let corpus_gb = index.manifest().stats.corpus_bytes as f64 / 1e9;

    // Sample documents spread over the whole index.
    let want = args.sample_mib << 20;
    let ndocs = index.docs().len();
    let stride = (ndocs / 4000).max(1);
    let mut pos = Vec::new();
    let mut got = 0u64;
    for (i, d) in index.docs().iter().enumerate().step_by(stride) {
        if got >= want {
            break;
        }
        if d.bytes > 4 << 20 {
            continue;
        }
        let Ok(text) = std::fs::read(root.join(&d.path)) else {
            continue;
        };
        let kind = match (d.text.as_str(), TextKind::from_path(Path::new(&d.path))) {
            ("code", TextKind::Code(l)) => TextKind::Code(l),
            ("code", _) => TextKind::Code(verbatim::normalize::Lang::C_LIKE),
            ("markdown", _) => TextKind::Markdown,
            _ => TextKind::Prose,
        };
        got += text.len() as u64;
        pos.push(Doc {
            kind,
            text,
            path: d.path.clone(),
        });
        let _ = i;
    }
    let neg = read_tree(&unrelated_root, want);
    let prose = match (&args.prose_root, smoke) {
        (Some(p), _) => read_tree(p, want),
        (None, true) => read_tree(Path::new("docs"), want),
        (None, false) => Vec::new(),
    };
    let sample_mb = got as f64 / 1e6;
    let unrelated_mb = neg.iter().map(|d| d.text.len()).sum::<usize>() as f64 / 1e6;

    // Throughput, single thread: normalisation alone (the baseline) and full scans.
    let chunk = 64 << 10;
    let norm = |d: &Doc| {
        let mut n = Normalizer::new(d.kind);
        let mut out = Vec::new();
        for c in d.text.chunks(chunk) {
            n.push_bytes(c, &mut out);
            out.clear();
        }
        n.finish(&mut out);
    };
    // A whole document scanned (a Markdown one with its code outside fences read as code too,
    // the default, or not): its findings.
    let scan_with = |d: &Doc, bare: bool| {
        let mut s = Scanner::new(std::slice::from_ref(&index), d.kind);
        s.set_bare_code(bare);
        for c in d.text.chunks(chunk) {
            s.push_bytes(c);
        }
        s.finish();
        s.take_findings().len()
    };
    let findings = std::cell::Cell::new(0usize);
    let scan = |d: &Doc| findings.set(findings.get() + scan_with(d, true));
    let norm_pos = throughput(&pos, reps, norm);
    let scan_pos = throughput(&pos, reps, scan);
    let pos_findings = findings.replace(0) / reps;
    let norm_neg = throughput(&neg, reps, norm);
    let scan_neg = throughput(&neg, reps, scan);
    let neg_findings = findings.replace(0) / reps;
    let (norm_prose, scan_prose) = if prose.is_empty() {
        (0.0, 0.0)
    } else {
        (
            throughput(&prose, reps, norm),
            throughput(&prose, reps, scan),
        )
    };
    let prose_findings = findings.replace(0) / reps;
    // The license layer's marker scanner (identifiers, notices, header phrases), which `scan`
    // and the proxy run beside the matcher on the same text.
    let markers = |d: &Doc| {
        let text = String::from_utf8_lossy(&d.text);
        std::hint::black_box(verbatim::license::markers::scan(&text));
    };
    let markers_pos = throughput(&pos, reps, markers);
    let markers_neg = throughput(&neg, reps, markers);
    let markers_prose = if prose.is_empty() {
        0.0
    } else {
        throughput(&prose, reps, markers)
    };

    // Tool-call arguments: the code documents, plain and wrapped as a write tool's JSON
    // arguments, scanned in the same run; the same units, so the same findings.
    let tool = |docs: &[Doc]| {
        let (plain, wrapped) = as_tool_calls(docs);
        let plain_mb = plain.iter().map(|d| d.text.len()).sum::<usize>() as f64 / 1e6;
        let json_mb = wrapped.iter().map(|d| d.text.len()).sum::<usize>() as f64 / 1e6;
        let norm_plain = throughput(&plain, reps, norm);
        let norm_json = throughput(&wrapped, reps, norm);
        let scan_plain = throughput(&plain, reps, scan);
        let f_plain = findings.replace(0) / reps;
        let scan_json = throughput(&wrapped, reps, scan);
        let f_json = findings.replace(0) / reps;
        let markers_plain = throughput(&plain, reps, markers);
        let markers_json = throughput(&wrapped, reps, |d: &Doc| {
            let text = String::from_utf8_lossy(&d.text);
            std::hint::black_box(verbatim::license::markers::scan_json(&text));
        });
        // Rates of the code each carries (the JSON is longer by its escapes).
        let per_code = plain_mb / json_mb;
        serde_json::json!({
            "docs": plain.len(), "code_mb": plain_mb, "json_mb": json_mb,
            "normalise_code_mb_s": norm_plain, "normalise_json_code_mb_s": norm_json * per_code,
            "scan_code_mb_s": scan_plain, "scan_json_code_mb_s": scan_json * per_code,
            "scan_json_over_code": scan_json * per_code / scan_plain,
            "findings_code": f_plain, "findings_json": f_json,
            "license_markers_code_mb_s": markers_plain,
            "license_markers_json_code_mb_s": markers_json * per_code,
        })
    };
    let tool_copied = tool(&pos);
    let tool_unrelated = tool(&neg);

    // The caller-supplied exemption of a 1 MB request (its texts' k-gram keys, computed before
    // the request is forwarded): read as Markdown, and as a request that offers tools reads it
    // (Markdown, C-like and script code; JSON texts as tool arguments). Half prose, half code,
    // in 10 KB texts (messages).
    let texts_of = |docs: &[Doc], want: usize| -> Vec<String> {
        let mut got = 0;
        let mut out = Vec::new();
        for d in docs {
            for c in String::from_utf8_lossy(&d.text).as_bytes().chunks(10_000) {
                if got >= want {
                    return out;
                }
                got += c.len();
                out.push(String::from_utf8_lossy(c).into_owned());
            }
        }
        out
    };
    let mut request = texts_of(&prose, 500_000);
    let tool_results = texts_of(&neg, 500_000);
    request.extend(tool_results.iter().cloned());
    let exempt_ms = |request: &[String], kinds: &[TextKind]| {
        let mut v: Vec<f64> = (0..reps.max(3))
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(verbatim::matcher::exemptions_as(
                    request.iter().map(String::as_str),
                    std::slice::from_ref(&index),
                    kinds,
                ));
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        median(&mut v)
    };
    let exempt_markdown = exempt_ms(&request, &[TextKind::Markdown]);
    // Every text also read as code, and only the half that are tool
    // results (what the proxy does).
    let all_kinds = [
        TextKind::Markdown,
        TextKind::Code(verbatim::normalize::Lang::C_LIKE),
        TextKind::Code(verbatim::normalize::Lang::SCRIPT),
    ];
    let exempt_all_code = exempt_ms(&request, &all_kinds);
    let exempt_tool_results = exempt_markdown + {
        let mut v: Vec<f64> = (0..reps.max(3))
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(verbatim::matcher::exemptions_read(
                    tool_results.iter().flat_map(|t| {
                        verbatim::normalize::tool_text_kinds(t)
                            .into_iter()
                            .map(move |k| (t.as_str(), k))
                    }),
                    std::slice::from_ref(&index),
                ));
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        median(&mut v)
    };

    // Latency of each 32-byte chunk pushed into a scanner, over interleaved copied and
    // unrelated text (a stream of ~4 MiB at most).
    let timer_ns = {
        let mut v: Vec<u64> = (0..100_000)
            .map(|_| {
                let t = Instant::now();
                t.elapsed().as_nanos() as u64
            })
            .collect();
        v.sort_unstable();
        percentile(&v, 0.5)
    };
    // Each chunk's time is also kept by workload: the interleaved p99 is set by copied code
    // (text in many documents opens many runs), and the two tails differ by an order of
    // magnitude.
    let time_chunks = |d: &Doc, bare: bool, out: &mut Vec<u64>| {
        let mut s = Scanner::new(std::slice::from_ref(&index), d.kind);
        s.set_bare_code(bare);
        for c in d.text.chunks(32) {
            let t = Instant::now();
            s.push_bytes(c);
            out.push(t.elapsed().as_nanos() as u64);
        }
        s.finish();
    };
    let (mut lat_copied, mut lat_unrelated, mut lat_prose) = (Vec::new(), Vec::new(), Vec::new());
    let mut budget = 4usize << 20;
    for (p, n) in pos.iter().zip(&neg) {
        for (d, out) in [(p, &mut lat_copied), (n, &mut lat_unrelated)] {
            if budget == 0 {
                break;
            }
            time_chunks(d, true, out);
            budget = budget.saturating_sub(d.text.len());
        }
    }
    let mut lat: Vec<u64> = lat_copied.iter().chain(&lat_unrelated).copied().collect();
    let mut budget = 2usize << 20;
    for d in &prose {
        if budget == 0 {
            break;
        }
        time_chunks(d, true, &mut lat_prose);
        budget = budget.saturating_sub(d.text.len());
    }
    for v in [
        &mut lat,
        &mut lat_copied,
        &mut lat_unrelated,
        &mut lat_prose,
    ] {
        v.sort_unstable();
    }
    let tail = |v: &[u64]| {
        if v.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::json!({
            "chunks": v.len(), "p50": percentile(v, 0.5), "p90": percentile(v, 0.9),
            "p99": percentile(v, 0.99), "p999": percentile(v, 0.999),
        })
    };

    // Chat answers read as Markdown, with and without the reading of code outside fences
    // (`Scanner::set_bare_code`), alternated rep by rep: the copied code pasted after a line
    // of prose without a fence (found only with it), the same code fenced (for reference),
    // and the prose documents (their code examples turn it on).
    let as_markdown = |docs: &[Doc], before: &[u8], after: &[u8]| -> Vec<Doc> {
        docs.iter()
            .map(|d| Doc {
                kind: TextKind::Markdown,
                text: [before, &d.text[..], after].concat(),
                path: d.path.clone(),
            })
            .collect()
    };
    let paired = |docs: &[Doc]| {
        let bytes: usize = docs.iter().map(|d| d.text.len()).sum();
        let (mut on, mut off, mut f) = (Vec::new(), Vec::new(), [0usize; 2]);
        for _ in 0..reps {
            for (bare, rates) in [(true, &mut on), (false, &mut off)] {
                let t = Instant::now();
                f[usize::from(!bare)] = docs.iter().map(|d| scan_with(d, bare)).sum();
                rates.push(bytes as f64 / 1e6 / t.elapsed().as_secs_f64());
            }
        }
        let (on, off) = (median(&mut on), median(&mut off));
        serde_json::json!({
            "mb": bytes as f64 / 1e6, "scan_mb_s_bare_code_read": on,
            "scan_mb_s_not_read": off, "read_over_not": on / off,
            "findings_read": f[0], "findings_not_read": f[1],
        })
    };
    const INTRO: &[u8] = b"Here is the file you asked for:\n\n";
    let unfenced = as_markdown(&pos, INTRO, b"");
    let (mut lat_on, mut lat_off) = (Vec::new(), Vec::new());
    let mut budget = 2usize << 20;
    for d in &unfenced {
        if budget == 0 {
            break;
        }
        time_chunks(d, true, &mut lat_on);
        time_chunks(d, false, &mut lat_off);
        budget = budget.saturating_sub(d.text.len());
    }
    lat_on.sort_unstable();
    lat_off.sort_unstable();
    let markdown_answers = serde_json::json!({
        "copied_code_unfenced": paired(&unfenced),
        "copied_code_fenced": paired(&as_markdown(&pos, &[INTRO, b"```\n"].concat(), b"\n```\n")),
        "prose": if prose.is_empty() { serde_json::Value::Null } else { paired(&as_markdown(&prose, b"", b"")) },
        "copied_code_unfenced_chunk32_ns": {"bare_code_read": tail(&lat_on), "not_read": tail(&lat_off)},
    });
    let anon2 = procstat::rss_anon().unwrap_or(0);
    let file2 = procstat::rss_file().unwrap_or(0);

    let serve_anon = anon1.saturating_sub(anon0);
    let report = serde_json::json!({
        "index": index_dir,
        "corpus_gb": corpus_gb,
        "documents": index.manifest().stats.documents,
        "open_ms": open_ms,
        "resident_anon_bytes_after_open": serve_anon,
        "resident_anon_gb_per_corpus_gb": serve_anon as f64 / 1e9 / corpus_gb.max(1e-12),
        "index_estimate_resident_bytes": index.resident_bytes(),
        "rss_file_after_scans_bytes": file2,
        "rss_anon_after_scans_bytes": anon2,
        "sample_mb": sample_mb,
        "sample_docs": pos.len(),
        "unrelated_mb": unrelated_mb,
        "unrelated_docs": neg.len(),
        "reps": reps,
        "copied": {"normalise_mb_s": norm_pos, "scan_mb_s": scan_pos, "scan_over_normalise": scan_pos / norm_pos, "findings": pos_findings, "license_markers_mb_s": markers_pos},
        "prose": {"mb": prose.iter().map(|d| d.text.len()).sum::<usize>() as f64 / 1e6, "normalise_mb_s": norm_prose, "scan_mb_s": scan_prose, "scan_over_normalise": scan_prose / norm_prose, "findings": prose_findings, "license_markers_mb_s": markers_prose},
        "exemption_1mb_request_ms": {
            "bytes": request.iter().map(String::len).sum::<usize>(),
            "markdown": exempt_markdown,
            "every_text_also_as_code": exempt_all_code,
            "tool_results_also_as_code": exempt_tool_results,
        },
        "markdown_answers": markdown_answers,
        "tool_args_copied": tool_copied,
        "tool_args_unrelated": tool_unrelated,
        "unrelated": {"normalise_mb_s": norm_neg, "scan_mb_s": scan_neg, "scan_over_normalise": scan_neg / norm_neg, "findings": neg_findings, "license_markers_mb_s": markers_neg},
        "chunk32_latency_ns": {
            "chunks": lat.len(),
            "p50": percentile(&lat, 0.5), "p90": percentile(&lat, 0.9), "p99": percentile(&lat, 0.99),
            "p999": percentile(&lat, 0.999), "max": lat.last().copied().unwrap_or(0),
            "timer_overhead_p50": timer_ns,
            "copied": tail(&lat_copied), "unrelated": tail(&lat_unrelated),
            "prose": tail(&lat_prose),
        },
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    }
}
