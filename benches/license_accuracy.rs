//! License identification accuracy, Verbatim beside askalono (the `spdx` crate's `detection`
//! feature, given the same SPDX texts), on the same inputs; ScanCode is run on the files this
//! writes by `scripts/license-accuracy.sh`, which also makes the table in
//! `docs/license-detection.md`.
//!
//!   cargo bench --bench license_accuracy -- --out DIR [--cases FILE.jsonl]...
//!
//! Sets made here from every current (not deprecated) SPDX text: `full`, `reformatted`
//! (rewrapped at 9 words, upper-cased, behind `//`, `#` or ` * `), `partial` (the middle 60 % of
//! the lines). More sets come from `--cases` files (JSON Lines: `set`, `expected`, `text`; the
//! script makes them from ScanCode's labelled rules — notices, mentions, license texts — and
//! from prose that is not a license, for false positives).
//!
//! Verbatim's answer is the product's: the input scanned against the built-in index, license
//! runs collapsed and identified; the region covering the most of its license if that is at
//! least half of it; else the expression of the first license marker (identifier, header,
//! license name); else a region covering at least a quarter of its license; else none. askalono's is
//! its scan (optimize on) at confidence 0.8. An answer is right if it names the expected text
//! (ids sharing one text, like `-only` / `-or-later`, count as the same) — or, for an expected
//! expression of several licenses, if it is that expression.
//!
//! Without `--out` (as under `cargo test --benches`) it runs a small smoke sample.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark program: a panic is its error

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use verbatim::index::Index;
use verbatim::license::{self, texts};
use verbatim::matcher::{MatchKind, Scanner};
use verbatim::normalize::TextKind;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Case {
    set: String,
    /// The expected SPDX id or expression; empty for negatives (no license should be named).
    expected: String,
    text: String,
    #[serde(default)]
    file: String,
}

#[derive(Serialize)]
struct Answer<'a> {
    file: &'a str,
    set: &'a str,
    expected: &'a str,
    verbatim: Option<String>,
    askalono: Option<String>,
    verbatim_right: bool,
    askalono_right: bool,
}

fn reformat(text: &str, i: usize) -> String {
    let prefix = ["// ", "# ", " * "][i % 3];
    text.split_whitespace()
        .collect::<Vec<_>>()
        .chunks(9)
        .map(|c| format!("{prefix}{}\n", c.join(" ").to_uppercase()))
        .collect()
}

fn spdx_cases(limit: Option<usize>) -> Vec<Case> {
    let mut out = Vec::new();
    let current: Vec<_> = texts::all()
        .iter()
        .filter(|t| !texts::deprecated(t.id))
        .collect();
    let step = limit.map_or(1, |l| (current.len() / l).max(1));
    for (i, t) in current.iter().enumerate().step_by(step) {
        let case = |set: &str, text: String| Case {
            set: set.into(),
            expected: t.id.into(),
            text,
            file: String::new(),
        };
        out.push(case("full", t.text.to_string()));
        out.push(case("reformatted", reformat(t.text, i)));
        let lines: Vec<&str> = t.text.lines().collect();
        if lines.len() >= 5 {
            let k = lines.len() * 6 / 10;
            let s = (lines.len() - k) / 2;
            out.push(case("partial", lines[s..s + k].join("\n")));
        }
    }
    out
}

/// Ids that name the same text as `id` (so `GPL-2.0-or-later` matches `GPL-2.0-only`).
fn same_text(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (texts::text_of(a), texts::text_of(b)) {
        (Some(x), Some(y)) => std::ptr::eq(x, y) || x.text == y.text,
        _ => false,
    }
}

fn right(expected: &str, got: &Option<String>) -> bool {
    match (expected.is_empty(), got) {
        (true, None) => true,
        (true, Some(_)) | (false, None) => false,
        (false, Some(g)) => {
            let canon = |e: &str| {
                spdx::Expression::canonicalize(e)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| e.to_string())
            };
            let (e, g) = (canon(expected), canon(g));
            e == g || same_text(&e, &g)
        }
    }
}

struct Verbatim {
    index: Arc<Index>,
}

impl Verbatim {
    fn answer(&self, text: &str) -> Option<String> {
        let mut s = Scanner::new(std::slice::from_ref(&self.index), TextKind::Markdown);
        s.push_str(text);
        s.finish();
        let lic: Vec<_> = s
            .take_findings()
            .into_iter()
            .filter(|f| f.kind == MatchKind::LicenseText)
            .collect();
        let best = license::collapse(lic, std::slice::from_ref(&self.index), text)
            .into_iter()
            .filter_map(|(_, id)| id)
            .filter(|id| id.coverage >= 0.25)
            .max_by(|a, b| a.coverage.total_cmp(&b.coverage));
        let marker = license::markers::scan(text)
            .into_iter()
            .find_map(|m| m.expression);
        // A notice is mostly a sentence of some license's text: what it says (the marker)
        // names the license better than which text it resembles, unless it is half a license.
        match (best, marker) {
            (Some(b), _) if b.coverage >= 0.5 => Some(b.id),
            (_, Some(m)) => Some(m),
            (b, None) => b.map(|b| b.id),
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut out: Option<PathBuf> = None;
    let mut case_files: Vec<PathBuf> = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = args.next().map(PathBuf::from),
            "--cases" => case_files.extend(args.next().map(PathBuf::from)),
            _ => {} // `--bench` from cargo
        }
    }
    let smoke = out.is_none();
    let cache = tempfile::tempdir().unwrap();
    // Verbatim's loading: building its index of the SPDX texts (which identifies each text, so
    // the identification database is built within it too).
    let t = Instant::now();
    let index = Arc::new(Index::open(license::builtin::ensure(cache.path()).unwrap()).unwrap());
    let verbatim_load = t.elapsed();
    let v = Verbatim { index };

    let mut cases = spdx_cases(smoke.then_some(15));
    for f in &case_files {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            cases.push(serde_json::from_str(line).unwrap());
        }
    }

    let t = Instant::now();
    let mut store = spdx::detection::Store::new();
    for (id, text) in spdx::text::LICENSE_TEXTS
        .iter()
        .chain(spdx::text::EXCEPTION_TEXTS)
    {
        if !text.trim().is_empty() {
            store.add_license(id.to_string(), spdx::detection::TextData::new(text));
        }
    }
    let askalono_load = t.elapsed();
    let strategy = spdx::detection::scan::Scanner::new(&store)
        .confidence_threshold(0.8)
        .optimize(true);
    let askalono = |text: &str| -> Option<String> {
        let r = strategy.scan(&spdx::detection::TextData::new(text));
        r.license
            .map(|l| l.name.to_string())
            .or_else(|| r.containing.first().map(|c| c.license.name.to_string()))
    };

    let dir = out.clone().unwrap_or_else(|| cache.path().join("out"));
    std::fs::create_dir_all(dir.join("cases")).unwrap();
    let mut answers = Vec::new();
    let (mut tv, mut ta) = (Duration::ZERO, Duration::ZERO);
    let mut bytes = 0usize;
    for (i, c) in cases.iter_mut().enumerate() {
        c.file = format!("cases/{:05}-{}.txt", i, c.set);
        std::fs::write(dir.join(&c.file), &c.text).unwrap();
        bytes += c.text.len();
        let t = Instant::now();
        let vg = v.answer(&c.text);
        tv += t.elapsed();
        let t = Instant::now();
        let ag = askalono(&c.text);
        ta += t.elapsed();
        answers.push((vg, ag));
    }
    let mut jl = std::fs::File::create(dir.join("answers.jsonl")).unwrap();
    let mut sets: Vec<String> = cases.iter().map(|c| c.set.clone()).collect();
    sets.dedup();
    let mut seen = std::collections::BTreeSet::new();
    sets.retain(|s| seen.insert(s.clone()));
    let mut table: Vec<(String, usize, usize, usize)> = Vec::new();
    for (c, (vg, ag)) in cases.iter().zip(&answers) {
        let a = Answer {
            file: &c.file,
            set: &c.set,
            expected: &c.expected,
            verbatim: vg.clone(),
            askalono: ag.clone(),
            verbatim_right: right(&c.expected, vg),
            askalono_right: right(&c.expected, ag),
        };
        serde_json::to_writer(&mut jl, &a).unwrap();
        writeln!(jl).unwrap();
        match table.iter_mut().find(|r| r.0 == c.set) {
            Some(r) => {
                r.1 += 1;
                r.2 += a.verbatim_right as usize;
                r.3 += a.askalono_right as usize;
            }
            None => table.push((
                c.set.clone(),
                1,
                a.verbatim_right as usize,
                a.askalono_right as usize,
            )),
        }
    }
    let mb = bytes as f64 / 1e6;
    let summary = serde_json::json!({
        "cases": cases.len(),
        "bytes": bytes,
        "verbatim_seconds": tv.as_secs_f64(),
        "askalono_seconds": ta.as_secs_f64(),
        "verbatim_seconds_per_mb": tv.as_secs_f64() / mb,
        "askalono_seconds_per_mb": ta.as_secs_f64() / mb,
        "verbatim_load_seconds": verbatim_load.as_secs_f64(),
        "askalono_load_seconds": askalono_load.as_secs_f64(),
        "sets": table.iter().map(|(s, n, v, a)| serde_json::json!({"set": s, "n": n, "verbatim_right": v, "askalono_right": a})).collect::<Vec<_>>(),
    });
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary).unwrap(),
    )
    .unwrap();
    println!("set            n   verbatim  askalono");
    for (s, n, v, a) in &table {
        println!(
            "{s:<12} {n:>4}   {:>6.1} %  {:>6.1} %",
            100.0 * *v as f64 / *n as f64,
            100.0 * *a as f64 / *n as f64
        );
    }
    println!(
        "time per MB: verbatim {:.3} s, askalono {:.3} s ({} cases, {:.2} MB); load: verbatim {:.2} s, askalono {:.2} s",
        tv.as_secs_f64() / mb,
        ta.as_secs_f64() / mb,
        cases.len(),
        mb,
        verbatim_load.as_secs_f64(),
        askalono_load.as_secs_f64()
    );
    if smoke {
        let full = table.iter().find(|r| r.0 == "full").unwrap();
        assert_eq!(
            full.2, full.1,
            "smoke: every full text identified by Verbatim"
        );
    }
}
