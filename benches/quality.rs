//! Quality benchmark (issue #6): does Verbatim find lightly edited copies, and only copies?
//!
//! Positives are spans of 8–200 units taken from indexed documents, transformed by family
//! (verbatim; whitespace, line wrapping and indentation; case; quotes, dashes and markdown;
//! comments added and removed; identifiers renamed; literals changed; words changed at 2–20 %),
//! embedded in text from documents that were never indexed, and streamed through the proxy's
//! scanner in random chunks (strict holdback accounting: what would have been released before
//! the copy was detected). Negatives are never-indexed documents, boilerplate code, short
//! quotations and license mentions. Every case is also written out as files for the peer tools
//! (`scripts/quality_peers.py`), whose verdicts `report` puts beside ours.
//!
//!   cargo bench --bench quality -- gen --corpus M.. --held-out M.. --index IDX --out DIR
//!   cargo bench --bench quality -- report --out DIR --doc docs/quality.md
//!
//! `scripts/quality-bench.sh` fetches the corpora, builds the index and runs both with the peers.
//! Under `cargo test --all-targets` (no subcommand) it runs once on the committed fixture
//! corpora so the program itself is tested; those numbers mean nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark's setup failing is fatal

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use verbatim::corpus::{load_manifests, read_text};
use verbatim::index::build::{BuildOptions, build};
use verbatim::index::{Index, Params};
use verbatim::matcher::{Finding, Scanner};
use verbatim::normalize::{Channel, TextKind, UnitClass, normalize};
use verbatim::policy::{Facts, Policy};
use verbatim::proxy::pipeline::{Action, Rules};

/// Span lengths in units.
const LENGTHS: &[usize] = &[8, 12, 16, 24, 50, 100, 200];
/// Whether the built-in policy (`[rules]` defaults) blocks a finding: a run of at least
/// `long_prose_units` / `long_code_units`, at least `long_min_similarity` similar to its source,
/// code holding a piece of `long_code_exact_units` or `long_code_aligned_units`.
fn blocks(f: &Finding) -> bool {
    static POLICY: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
    let p = POLICY.get_or_init(Policy::builtin);
    p.decide(&Facts::of_finding(f)).action == Action::Block
}

/// SplitMix64's finaliser: distinct seeds for nearby inputs.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut s = self.0 | 1;
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        self.0 = s;
        s
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, pct: u32) -> bool {
        self.below(10_000) < pct as usize * 100
    }
}

struct Doc {
    id: String,
    text: String,
    kind: TextKind,
    /// Fence info string / file extension for code.
    ext: String,
}

impl Doc {
    fn is_code(&self) -> bool {
        matches!(self.kind, TextKind::Code(_))
    }
}

fn load(manifests: &[PathBuf], max_docs: usize, r: &mut Rng) -> Vec<Doc> {
    let corpora = load_manifests(manifests).unwrap();
    let mut docs = Vec::new();
    for c in &corpora {
        let (files, _) = c.files();
        for f in files {
            let Ok(text) = read_text(&f, 1 << 20) else {
                continue;
            };
            let kind = c.text_kind(&f.rel);
            if text.len() < 800 {
                continue;
            }
            let ext = Path::new(&f.rel)
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("txt")
                .to_string();
            docs.push(Doc {
                id: format!("{}:{}", c.name, f.rel),
                text,
                kind,
                ext,
            });
        }
    }
    // A random sample, so a few huge corpora do not dominate.
    for i in (1..docs.len()).rev() {
        docs.swap(i, r.below(i + 1));
    }
    docs.truncate(max_docs);
    docs
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Family {
    Verbatim,
    Whitespace,
    Case,
    Punctuation,
    Comments,
    Renamed,
    Literals,
    Edit2,
    Edit5,
    Edit10,
    Edit20,
}

const PROSE_FAMILIES: &[Family] = &[
    Family::Verbatim,
    Family::Whitespace,
    Family::Case,
    Family::Punctuation,
    Family::Edit2,
    Family::Edit5,
    Family::Edit10,
    Family::Edit20,
];
const CODE_FAMILIES: &[Family] = &[
    Family::Verbatim,
    Family::Whitespace,
    Family::Comments,
    Family::Renamed,
    Family::Literals,
    Family::Edit5,
    Family::Edit10,
];

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Verbatim => "verbatim",
            Family::Whitespace => "whitespace",
            Family::Case => "case",
            Family::Punctuation => "punctuation",
            Family::Comments => "comments",
            Family::Renamed => "renamed",
            Family::Literals => "literals",
            Family::Edit2 => "edit 2%",
            Family::Edit5 => "edit 5%",
            Family::Edit10 => "edit 10%",
            Family::Edit20 => "edit 20%",
        }
    }
    fn edit_rate(self) -> Option<u32> {
        match self {
            Family::Edit2 => Some(2),
            Family::Edit5 => Some(5),
            Family::Edit10 => Some(10),
            Family::Edit20 => Some(20),
            _ => None,
        }
    }
}

/// The line-comment syntax of a file's language, as the normaliser knows it (a copier adds
/// comments in the language's own syntax); `//` where it knows none. Before, a table of a few
/// extensions gave `//` to every other language — comments in `.asm` and Lisp that were code
/// to the language and to the normaliser alike.
fn comment_prefix(ext: &str) -> &'static str {
    match verbatim::normalize::Lang::from_name(ext) {
        Some(l) if !l.comment_words.is_empty() => l.comment_words[0],
        Some(l) if l.dash_comments => "--",
        Some(l) if l.c_comments => "//",
        Some(l) if l.hash_comments => "#",
        Some(l) if l.semicolon_comments => ";",
        _ => "//",
    }
}

const NAMES: &[&str] = &[
    "value", "item", "count", "buf", "data", "node", "entry", "state", "ctx", "result", "index",
    "total", "handle", "config", "cursor", "target", "source", "limit", "offset", "token",
];

/// Applies a family's transformation to a copied span.
fn transform(f: Family, span: &str, doc: &Doc, words: &[String], r: &mut Rng) -> String {
    let code = doc.is_code();
    match f {
        Family::Verbatim => span.to_string(),
        Family::Whitespace if code => span
            .lines()
            .map(|l| {
                let t = l.trim_start();
                let depth = (l.len() - t.len()) / 4;
                format!("{}{}  ", "\t".repeat(depth + 1), t)
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Family::Whitespace => {
            // Re-wrap at a random width with doubled spaces here and there.
            let width = 30 + r.below(50);
            let mut out = String::new();
            let mut line = 0;
            for w in span.split_whitespace() {
                if line + w.len() > width {
                    out.push('\n');
                    line = 0;
                } else if line > 0 {
                    out.push_str(if r.chance(10) { "  " } else { " " });
                }
                out.push_str(w);
                line += w.len() + 1;
            }
            out
        }
        Family::Case => {
            if r.chance(50) {
                span.to_uppercase()
            } else {
                span.to_lowercase()
            }
        }
        Family::Punctuation => {
            let mut out = String::new();
            let mut open = true;
            for (i, w) in span.split(' ').enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                let mut w = w.replace("--", "—").replace(" - ", " – ");
                w = w
                    .chars()
                    .map(|c| match c {
                        '"' => {
                            open = !open;
                            if open { '”' } else { '“' }
                        }
                        '\'' => '’',
                        c => c,
                    })
                    .collect();
                if r.chance(8) && w.chars().all(char::is_alphanumeric) && !w.is_empty() {
                    w = if r.chance(50) {
                        format!("**{w}**")
                    } else {
                        format!("_{w}_")
                    };
                }
                out.push_str(&w);
            }
            out
        }
        Family::Comments => {
            let c = comment_prefix(&doc.ext);
            let mut out = Vec::new();
            for l in span.lines() {
                let t = l.trim_start();
                if t.starts_with(c) || t.starts_with("/*") || t.starts_with('*') {
                    continue; // comments removed
                }
                out.push(l.to_string());
                if r.chance(30) {
                    let indent = &l[..l.len() - t.len()];
                    out.push(format!(
                        "{indent}{c} {} the {} here",
                        ["update", "check", "compute", "store"][r.below(4)],
                        NAMES[r.below(NAMES.len())]
                    ));
                }
            }
            out.join("\n")
        }
        Family::Renamed | Family::Literals => {
            let units = normalize(span, doc.kind);
            let mut names: HashMap<&str, String> = HashMap::new();
            let mut out = String::new();
            let mut at = 0;
            for u in &units {
                let (s, e) = (u.start as usize, u.end() as usize);
                let tok = &span[s..e];
                let new = match (f, u.class) {
                    (Family::Renamed, UnitClass::Ident) => {
                        let n = names.len();
                        names
                            .entry(tok)
                            .or_insert_with(|| format!("{}_{n}", NAMES[n % NAMES.len()]))
                            .clone()
                    }
                    (Family::Literals, UnitClass::Number) => format!("{}", r.below(1000)),
                    (Family::Literals, UnitClass::Str) => {
                        let q = &tok[..1];
                        format!("{q}{}{q}", NAMES[r.below(NAMES.len())])
                    }
                    _ => continue,
                };
                out.push_str(&span[at..s]);
                out.push_str(&new);
                at = e;
            }
            out.push_str(&span[at..]);
            out
        }
        _ => {
            let pct = f.edit_rate().unwrap_or(0);
            if code {
                // Token edits: an identifier replaced by another, unrelated one.
                let units = normalize(span, doc.kind);
                let mut out = String::new();
                let mut at = 0;
                for u in &units {
                    if u.class == UnitClass::Ident && r.chance(pct * 2) {
                        out.push_str(&span[at..u.start as usize]);
                        out.push_str(NAMES[r.below(NAMES.len())]);
                        at = u.end() as usize;
                    }
                }
                out.push_str(&span[at..]);
                out
            } else {
                // Word substitutions (and a few insertions and deletions) from never-indexed text.
                let mut out: Vec<&str> = Vec::new();
                for w in span.split(' ') {
                    if !r.chance(pct) {
                        out.push(w);
                        continue;
                    }
                    let other = words[r.below(words.len())].as_str();
                    match r.below(6) {
                        0 => {}                      // deleted
                        1 => out.extend([w, other]), // inserted
                        _ => out.push(other),        // substituted
                    }
                }
                out.join(" ")
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Case {
    id: String,
    positive: bool,
    /// Positive family, or negative kind.
    family: String,
    code: bool,
    len: usize,
    /// File extension for the peers.
    ext: String,
    text: String,
    /// Byte range of the copied span in `text` (positives).
    span: (usize, usize),
    /// Index into the reference files written for the peers (positives).
    source: Option<usize>,
    /// The span as it is in its source, and how that is normalised (positives).
    #[serde(skip)]
    original: Option<(String, TextKind)>,
}

fn words_of(docs: &[&Doc], n: usize, r: &mut Rng) -> String {
    let d = docs[r.below(docs.len())];
    let ws: Vec<&str> = d.text.split_whitespace().collect();
    let a = r.below(ws.len().saturating_sub(n));
    ws[a..(a + n).min(ws.len())].join(" ")
}

fn lines_of(docs: &[&Doc], n: usize, r: &mut Rng) -> (String, String) {
    let d = docs[r.below(docs.len())];
    // Lines cut out of the middle of a file may open a block comment or a string they do not
    // close, which would swallow the copy after them: such lines are left out.
    let ls: Vec<&str> = d
        .text
        .lines()
        .filter(|l| {
            !["/*", "*/", "\"\"\"", "'''", "`"]
                .iter()
                .any(|m| l.contains(m))
                && l.matches('"').count() % 2 == 0
        })
        .collect();
    let a = r.below(ls.len().saturating_sub(n));
    (ls[a..(a + n).min(ls.len())].join("\n"), d.ext.clone())
}

const BOILERPLATE: &[&str] = &[
    "```rust\nuse std::collections::HashMap;\nuse std::io::{self, Read, Write};\nuse std::path::PathBuf;\n\nfn main() {\n    let args: Vec<String> = std::env::args().collect();\n    println!(\"{:?}\", args);\n}\n```",
    "```python\nimport os\nimport sys\nimport json\n\n\ndef main():\n    args = sys.argv[1:]\n    print(json.dumps(args))\n\n\nif __name__ == \"__main__\":\n    main()\n```",
    "```java\npublic class NAME {\n    private String name;\n    private int age;\n\n    public String getName() {\n        return name;\n    }\n\n    public void setName(String name) {\n        this.name = name;\n    }\n\n    public int getAge() {\n        return age;\n    }\n\n    public void setAge(int age) {\n        this.age = age;\n    }\n}\n```",
    "```c\n#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n\nint main(int argc, char **argv) {\n    if (argc < 2) {\n        fprintf(stderr, \"usage: %s FILE\\n\", argv[0]);\n        return 1;\n    }\n    printf(\"%s\\n\", argv[1]);\n    return 0;\n}\n```",
    "```javascript\nconst express = require('express');\nconst app = express();\n\napp.get('/', (req, res) => {\n  res.send('Hello World!');\n});\n\napp.listen(3000, () => {\n  console.log('listening on port 3000');\n});\n```",
    "```rust\n#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]\npub struct NAME {\n    pub id: u64,\n    pub name: String,\n}\n\nimpl NAME {\n    pub fn new(id: u64, name: String) -> Self {\n        Self { id, name }\n    }\n\n    pub fn id(&self) -> u64 {\n        self.id\n    }\n\n    pub fn name(&self) -> &str {\n        &self.name\n    }\n}\n```",
    "```go\npackage main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n)\n\nfunc main() {\n\tif len(os.Args) < 2 {\n\t\tfmt.Println(\"usage: NAME FILE\")\n\t\tos.Exit(1)\n\t}\n\tfmt.Println(os.Args[1])\n}\n```",
    "```rust\n#[cfg(test)]\nmod tests {\n    use super::*;\n\n    #[test]\n    fn it_works() {\n        let result = add(2, 2);\n        assert_eq!(result, 4);\n    }\n}\n```",
];

const MENTIONS: &[&str] = &[
    "This project is licensed under the MIT License; see the LICENSE file for details.",
    "Licensed under either of Apache License, Version 2.0 or MIT license at your option.",
    "Because the library is GPL-3.0-or-later, a program that links it must be distributed under the GNU General Public License as well.",
    "Unless you explicitly state otherwise, any contribution intentionally submitted for inclusion in the work by you shall be dual licensed as above, without any additional terms or conditions.",
    "The code is released under the BSD 3-Clause license, which permits redistribution with attribution.",
    "// SPDX-License-Identifier: GPL-2.0-only\n// Copyright (c) 2024 The Example Authors",
    "The Mozilla Public License 2.0 is a weak copyleft license: changed files stay under the MPL.",
];

struct Gen<'a> {
    r: Rng,
    held_prose: Vec<&'a Doc>,
    held_code: Vec<&'a Doc>,
    words: Vec<String>,
    refs: Vec<&'a Doc>,
    ref_of: HashMap<String, usize>,
}

impl<'a> Gen<'a> {
    fn prose(&mut self, n: usize) -> String {
        if self.held_prose.is_empty() {
            return (0..n)
                .map(|_| self.words[self.r.below(self.words.len())].clone())
                .collect::<Vec<_>>()
                .join(" ");
        }
        words_of(&self.held_prose, n, &mut self.r)
    }
    fn code_lines(&mut self, n: usize) -> String {
        self.code_block(n).0
    }
    /// `n` lines of never-indexed code and the extension of their file.
    fn code_block(&mut self, n: usize) -> (String, String) {
        if self.held_code.is_empty() {
            return (String::new(), String::new());
        }
        lines_of(&self.held_code, n, &mut self.r)
    }
    fn reference(&mut self, d: &'a Doc) -> usize {
        if let Some(&i) = self.ref_of.get(&d.id) {
            return i;
        }
        self.refs.push(d);
        self.ref_of.insert(d.id.clone(), self.refs.len() - 1);
        self.refs.len() - 1
    }

    fn positive(&mut self, id: String, f: Family, d: &'a Doc, len: usize) -> Option<Case> {
        let units = normalize(&d.text, d.kind);
        let want = if d.is_code() {
            Channel::Code
        } else {
            Channel::Prose
        };
        if units.len() < len + 10 {
            return None;
        }
        // A window of one channel (a markdown document's fenced code is not prose).
        let mut a = 0;
        for _ in 0..20 {
            a = self.r.below(units.len() - len);
            if units[a..a + len].iter().all(|u| u.channel == want) {
                break;
            }
        }
        if !units[a..a + len].iter().all(|u| u.channel == want) {
            return None;
        }
        let span = &d.text[units[a].start as usize..units[a + len - 1].end() as usize];
        let span_text = span.to_string();
        let words = std::mem::take(&mut self.words);
        let copied = transform(f, span, d, &words, &mut self.r);
        self.words = words;
        let (text, span) = if d.is_code() {
            let before = format!("{}:\n\n```{}\n{}\n", self.prose(12), d.ext, {
                let n = 1 + self.r.below(6);
                self.code_lines(n)
            });
            let after = format!(
                "\n{}\n```\n\n{}",
                {
                    let n = 1 + self.r.below(6);
                    self.code_lines(n)
                },
                self.prose(20)
            );
            (
                format!("{before}{copied}{after}"),
                (before.len(), before.len() + copied.len()),
            )
        } else {
            let n1 = 20 + self.r.below(60);
            let n2 = 20 + self.r.below(60);
            let before = format!("{}\n\n", self.prose(n1));
            let after = format!("\n\n{}", self.prose(n2));
            (
                format!("{before}{copied}{after}"),
                (before.len(), before.len() + copied.len()),
            )
        };
        let source = Some(self.reference(d));
        Some(Case {
            id,
            positive: true,
            family: f.name().to_string(),
            code: d.is_code(),
            len,
            ext: if d.is_code() {
                d.ext.clone()
            } else {
                "txt".into()
            },
            text,
            span,
            source,
            original: Some((span_text, d.kind)),
        })
    }

    fn negative(&mut self, id: String, which: usize, indexed_prose: &[&Doc]) -> Case {
        let (family, code, text) = match which {
            0 => ("never-indexed prose", false, {
                let n = 100 + self.r.below(200);
                self.prose(n)
            }),
            1 => ("never-indexed code", true, {
                let n = 20 + self.r.below(40);
                let (lines, ext) = self.code_block(n);
                format!("{}:\n\n```{ext}\n{lines}\n```\n", self.prose(15))
            }),
            2 => ("boilerplate code", true, {
                let b = BOILERPLATE[self.r.below(BOILERPLATE.len())];
                let b = b.replace("NAME", NAMES[self.r.below(NAMES.len())]);
                format!("{}\n\n{b}\n\n{}", self.prose(15), self.prose(15))
            }),
            3 => ("short quotation", false, {
                // 5–11 words quoted from an indexed document: below the prose guarantee (12).
                let q = if indexed_prose.is_empty() {
                    self.prose(8)
                } else {
                    let n = 5 + self.r.below(7);
                    words_of(indexed_prose, n, &mut self.r)
                };
                format!(
                    "{} As the text puts it, \"{q}\" — {}",
                    self.prose(40),
                    self.prose(40)
                )
            }),
            _ => ("license mention", false, {
                let m = MENTIONS[self.r.below(MENTIONS.len())];
                format!("{} {m} {}", self.prose(30), self.prose(20))
            }),
        };
        Case {
            id,
            positive: false,
            family: family.into(),
            code,
            len: 0,
            ext: if code { "md".into() } else { "txt".into() },
            text,
            span: (0, 0),
            source: None,
            original: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Outcome {
    id: String,
    /// A qualifying finding overlapping the span (positives) / any finding (negatives).
    detected: bool,
    kind: Option<String>,
    similarity: Option<f64>,
    /// Units of the span released before the copy was detected (strict holdback).
    leaked: Option<usize>,
    /// Units of the span received when it was detected.
    latency: Option<usize>,
    span_units: usize,
    /// A finding the built-in policy would block (negatives).
    blocking: bool,
    /// Source document of the longest finding (corpus:path).
    source: Option<String>,
    /// A positive of at least `t` units whose *unchanged* span is not findable either: text
    /// in ≥ `common_threshold` documents (license headers, generated boilerplate) or made of
    /// repeated units. Left out of recall (counted in the report).
    excluded: bool,
    /// Code positives: units of non-repeated structure in the unchanged span
    /// (`matcher::structure_of`); a renamed run needs `renamed_min` of them.
    #[serde(default)]
    structure: Option<u32>,
}

/// Streams `c` through a scanner in random chunks, as the proxy's strict holdback would.
fn scan_case(index: &Arc<Index>, c: &Case, r: &mut Rng) -> (Outcome, Vec<Finding>) {
    let mut sc = Scanner::new(std::slice::from_ref(index), TextKind::Markdown);
    sc.set_hold_boilerplate(true);
    let units = normalize(&c.text, TextKind::Markdown);
    let span_units: Vec<_> = units
        .iter()
        .filter(|u| u.start as usize >= c.span.0 && u.end() as usize <= c.span.1)
        .collect();
    let bytes = c.text.as_bytes();
    let overlaps =
        |s: u64, e: u64| c.positive && (s as usize) < c.span.1 && (e as usize) > c.span.0;
    let mut released = 0u64;
    let mut detected_at: Option<(usize, usize)> = None;
    let mut findings: Vec<Finding> = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let n = 1 + r.below(24);
        let end = (at + n).min(bytes.len());
        sc.push_bytes(&bytes[at..end]);
        at = end;
        findings.extend(sc.take_findings());
        if c.positive && detected_at.is_none() {
            let open = sc.open_runs().map(|o| sc.open_finding(&o));
            // Where the detected run starts: units of the span before it were never part of
            // the copy the engine found (e.g. a license header in ≥ 32 documents, suppressed as
            // boilerplate), so releasing them is not a leak of the run.
            let start = findings
                .iter()
                .cloned()
                .chain(open)
                .filter(|f| {
                    verbatim::matcher::qualifies(&index.params(), f)
                        && overlaps(f.output_start, f.output_end)
                })
                .map(|f| f.output_start)
                .min();
            if let Some(start) = start {
                let leaked = span_units
                    .iter()
                    .filter(|u| u.start >= start && u.end() <= released)
                    .count();
                let received = span_units.iter().filter(|u| u.end() <= sc.offset()).count();
                detected_at = Some((leaked, received));
            }
        }
        released = released.max(sc.stable_offset());
    }
    sc.finish();
    findings.extend(sc.take_findings());
    let best = findings
        .iter()
        .filter(|f| !c.positive || overlaps(f.output_start, f.output_end))
        .max_by_key(|f| f.units);
    if c.positive && detected_at.is_none() && best.is_some() {
        // Detected only at the end of the stream: everything was released.
        detected_at = Some((span_units.len(), span_units.len()));
    }
    let blocking = findings.iter().any(blocks);
    let source = best.and_then(|f| {
        let d = index.doc(f.doc)?;
        Some(format!("{}:{}", index.corpus(d).name, d.path))
    });
    let outcome = Outcome {
        id: c.id.clone(),
        source,
        detected: best.is_some(),
        kind: best.map(|f| f.kind.as_str().to_string()),
        similarity: best.map(|f| (f.similarity() * 1000.0).round() / 1000.0),
        leaked: detected_at.map(|d| d.0),
        latency: detected_at.map(|d| d.1),
        span_units: span_units.len(),
        blocking,
        excluded: false,
        structure: None,
    };
    (outcome, findings)
}

/// Lower-cased alphanumeric tokens, for the independent check below.
fn tokens(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// 2·LCS / (n + m) of two token sequences (dynamic programming; both capped at 1,500 tokens).
fn lcs_ratio(a: &[String], b: &[String]) -> f64 {
    let (a, b) = (&a[..a.len().min(1500)], &b[..b.len().min(1500)]);
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let mut prev = vec![0u32; b.len() + 1];
    let mut cur = vec![0u32; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    2.0 * f64::from(prev[b.len()]) / (a.len() + b.len()) as f64
}

/// `s` without `//` and `/* */` comments, or `#` comments in a language that has those
/// (roughly: markers inside strings count too) — a copy with its comments dropped is still a
/// copy (the "comments" family of the positives).
fn strip_comments(s: &str, hash: bool) -> String {
    if hash {
        return s
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while !rest.is_empty() {
        match (rest.find("//"), rest.find("/*")) {
            (Some(l), b) if b.is_none_or(|b| l < b) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |e| &rest[l + e..]);
            }
            (_, Some(b)) => {
                out.push_str(&rest[..b]);
                rest = rest[b + 2..]
                    .find("*/")
                    .map_or("", |e| &rest[b + 2 + e + 2..]);
            }
            _ => {
                out.push_str(rest);
                rest = "";
            }
        }
    }
    out
}

/// Whether a finding is a real copy, judged without the engine: the output region and the
/// cited source region, read from disk (code without its comments), share ≥ 80 % of their
/// words in order (and ≥ 8 words).
fn genuine(index: &Index, root: &Path, text: &str, f: &Finding) -> bool {
    let Some(r) = verbatim::matcher::FindingReport::new(index, f) else {
        return false;
    };
    let Ok(src) = std::fs::read_to_string(root.join(&r.doc)) else {
        return false;
    };
    let (Some(o), Some(s)) = (
        text.get(f.output_start as usize..f.output_end as usize),
        src.get(r.source_start as usize..r.source_end as usize),
    ) else {
        return false;
    };
    let (a, b) = if f.channel == Channel::Code {
        let hash = comment_prefix(
            Path::new(&r.doc)
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or(""),
        ) == "#";
        (
            tokens(&strip_comments(o, hash)),
            tokens(&strip_comments(s, hash)),
        )
    } else {
        (tokens(o), tokens(s))
    };
    a.len().min(b.len()) >= 8 && lcs_ratio(&a, &b) >= 0.8
}

fn generate(
    corpus: &[PathBuf],
    held_out: &[PathBuf],
    index: &Path,
    out: &Path,
    per_cell: usize,
    negatives: usize,
    seed: u64,
) {
    let mut r = Rng(seed);
    let t0 = Instant::now();
    if !index.join("manifest.json").exists() {
        let corpora = load_manifests(corpus).unwrap();
        build(
            &corpora,
            index,
            &BuildOptions {
                params: Params::default(),
                progress: true,
                ..BuildOptions::default()
            },
        )
        .unwrap();
    }
    let idx = Arc::new(Index::open(index).unwrap());
    let indexed = load(corpus, 4000, &mut r);
    let held = load(held_out, 4000, &mut r);
    eprintln!(
        "{} indexed and {} held-out documents loaded in {:.1} s",
        indexed.len(),
        held.len(),
        t0.elapsed().as_secs_f64()
    );
    // Prose positives come from prose: the Bible and the Python documentation (a crate's
    // "prose" files are READMEs, lock files, data tables).
    let real_prose = |d: &&Doc| d.id.starts_with("kjv:") || d.id.starts_with("python-docs:");
    let iprose: Vec<&Doc> = {
        let all: Vec<&Doc> = indexed.iter().filter(|d| !d.is_code()).collect();
        let real: Vec<&Doc> = all.iter().copied().filter(real_prose).collect();
        if real.is_empty() { all } else { real }
    };
    let icode: Vec<&Doc> = indexed.iter().filter(|d| d.is_code()).collect();
    // Never-indexed prose for surroundings and negatives: the Bible's held-out books and the
    // held-out Python documentation. Crates' READMEs and LICENSE files are left out: they
    // repeat license texts and README boilerplate the indexed crates also carry.
    let hprose: Vec<&Doc> = held
        .iter()
        .filter(|d| !d.is_code() && (d.id.starts_with("kjv:") || d.id.starts_with("python-docs:")))
        .collect();
    let hcode: Vec<&Doc> = held.iter().filter(|d| d.is_code()).collect();
    let words: Vec<String> = hprose
        .iter()
        .take(50)
        .flat_map(|d| d.text.split_whitespace().take(2000).map(str::to_string))
        .filter(|w| w.chars().all(char::is_alphabetic))
        .collect();
    let mut g = Gen {
        r: Rng(seed ^ 0x5eed),
        held_prose: hprose,
        held_code: hcode,
        words: if words.is_empty() {
            vec!["lorem".into(), "ipsum".into()]
        } else {
            words
        },
        refs: Vec::new(),
        ref_of: HashMap::new(),
    };
    let mut cases = Vec::new();
    for (code, fams, docs) in [
        (false, PROSE_FAMILIES, &iprose),
        (true, CODE_FAMILIES, &icode),
    ] {
        if docs.is_empty() {
            continue;
        }
        for &f in fams {
            for &len in LENGTHS {
                let mut made = 0;
                let mut tries = 0;
                while made < per_cell && tries < per_cell * 20 {
                    tries += 1;
                    let d = docs[g.r.below(docs.len())];
                    let id = format!(
                        "{}-{}-{len}-{made}",
                        if code { "code" } else { "prose" },
                        f.name().replace([' ', '%'], "")
                    );
                    if let Some(c) = g.positive(id, f, d, len) {
                        cases.push(c);
                        made += 1;
                    }
                }
            }
        }
    }
    // Negatives that turn out to contain a real copy of indexed text (the Bible's parallel
    // passages, documentation repeating itself) are not negatives: each is checked without the
    // engine (`genuine`) and replaced. A negative whose findings are not real copies stays —
    // those findings are the false ones.
    let root = corpus
        .first()
        .and_then(|m| m.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    // Each candidate negative is drawn from a seed of its own (its kind and its number among
    // that kind's candidates) and named by it, and the check scans with a generator of its own:
    // when an engine change makes a candidate count as a real copy, only that candidate is
    // replaced; every other case, positive or negative, stays byte-identical, so two engines
    // are compared on the same cases. (Before, one replacement shifted every negative after it
    // and the chunking of every scan.)
    let mut replaced = 0usize;
    let mut drawn = [0u64; 5];
    let mut check_rng = Rng(seed ^ 0x6e65_6763_6865_636b);
    let mut i = 0;
    while i < negatives {
        let kind = i % 5;
        let j = drawn[kind];
        drawn[kind] += 1;
        g.r = Rng(splitmix(seed ^ ((kind as u64) << 40) ^ j));
        let c = g.negative(format!("neg-{kind}-{j}"), kind, &iprose);
        let (_, found) = scan_case(&idx, &c, &mut check_rng);
        // Boilerplate copies count too: a short text many indexed documents hold (a README's
        // contribution clause) is not reported, but a text holding one is no negative.
        let shared = || {
            let mut sc = Scanner::new(std::slice::from_ref(&idx), TextKind::Markdown);
            sc.set_report_shared(true);
            sc.push_str(&c.text);
            sc.finish();
            sc.take_findings()
                .iter()
                .any(|f| f.widely_shared && genuine(&idx, &root, &c.text, f))
        };
        let real = found.iter().any(|f| genuine(&idx, &root, &c.text, f)) || shared();
        if real && replaced < negatives * 10 {
            replaced += 1;
            continue;
        }
        cases.push(c);
        i += 1;
    }
    // Distractor references for the peers: as many again, from the indexed documents.
    g.r = Rng(splitmix(seed ^ 0x7265_6673));
    let n_src = g.refs.len();
    for _ in 0..n_src {
        let d = &indexed[g.r.below(indexed.len())];
        g.reference(d);
    }

    // Our verdicts.
    let t1 = Instant::now();
    let mut outcomes: Vec<Outcome> = cases.iter().map(|c| scan_case(&idx, c, &mut r).0).collect();
    // Positives of at least t units whose unchanged span is not findable either.
    for (c, o) in cases.iter().zip(outcomes.iter_mut()) {
        let Some((orig, kind)) = &c.original else {
            continue;
        };
        let t = idx
            .params()
            .channel(if c.code {
                Channel::Code
            } else {
                Channel::Prose
            })
            .t();
        if c.code {
            let units = normalize(orig, *kind);
            o.structure = Some(verbatim::matcher::structure_of(
                units.iter().map(|u| (u.hash, u.class)),
            ));
        }
        if c.len >= t as usize {
            let mut sc = Scanner::new(std::slice::from_ref(&idx), *kind);
            sc.push_str(orig);
            sc.finish();
            o.excluded = sc.take_findings().is_empty();
        }
    }
    let scan_secs = t1.elapsed().as_secs_f64();

    // SimHash as an auxiliary signal: would it find what the engine misses, and at what cost?
    let t2 = Instant::now();
    let sim = SimIndex::build(&indexed);
    let mut simhash = String::new();
    for (c, o) in cases.iter().zip(&outcomes) {
        let hit = sim.query(&c.text);
        writeln!(
            &mut simhash,
            "{}",
            serde_json::json!({"tool": "SimHash (auxiliary)", "id": c.id, "detected": hit, "score": f64::from(u8::from(hit)), "verbatim": o.detected})
        )
        .unwrap();
    }
    eprintln!("SimHash experiment in {:.1} s", t2.elapsed().as_secs_f64());

    // Files for the peers.
    std::fs::create_dir_all(out).unwrap();
    let pdir = out.join("peers");
    let _ = std::fs::remove_dir_all(&pdir);
    std::fs::create_dir_all(pdir.join("responses")).unwrap();
    std::fs::create_dir_all(pdir.join("refs")).unwrap();
    for c in &cases {
        std::fs::write(
            pdir.join("responses").join(format!("{}.{}", c.id, c.ext)),
            &c.text,
        )
        .unwrap();
    }
    let mut refs = String::new();
    for (i, d) in g.refs.iter().enumerate() {
        let ext = if d.is_code() { d.ext.as_str() } else { "txt" };
        let name = format!("ref{i}.{ext}");
        std::fs::write(pdir.join("refs").join(&name), &d.text).unwrap();
        writeln!(
            refs,
            "{}",
            serde_json::json!({"file": name, "doc": d.id, "code": d.is_code()})
        )
        .unwrap();
    }
    std::fs::write(pdir.join("refs.jsonl"), refs).unwrap();
    let mut lines = String::new();
    for c in &cases {
        writeln!(lines, "{}", serde_json::to_string(c).unwrap()).unwrap();
    }
    std::fs::write(out.join("cases.jsonl"), lines).unwrap();
    let mut lines = String::new();
    for o in &outcomes {
        writeln!(lines, "{}", serde_json::to_string(o).unwrap()).unwrap();
    }
    std::fs::write(out.join("verbatim.jsonl"), lines).unwrap();
    std::fs::write(out.join("simhash.jsonl"), simhash).unwrap();
    let m = idx.manifest();
    let meta = serde_json::json!({
        "index_id": m.index_id,
        "corpus_bytes": m.stats.corpus_bytes,
        "documents": m.stats.documents,
        "params": m.params,
        "cases": cases.len(),
        "positives": cases.iter().filter(|c| c.positive).count(),
        "negatives": negatives,
        "references_for_peers": g.refs.len(),
        "negatives_replaced": replaced,
        "excluded_positives": outcomes.iter().filter(|o| o.excluded).count(),
        "scan_seconds": scan_secs,
        "simhash_documents": indexed.len(),
        "seed": seed,
    });
    std::fs::write(
        out.join("meta.json"),
        serde_json::to_string_pretty(&meta).unwrap(),
    )
    .unwrap();
    eprintln!(
        "{} cases ({} positives) scanned in {scan_secs:.1} s; {} reference files for the peers",
        cases.len(),
        cases.iter().filter(|c| c.positive).count(),
        g.refs.len()
    );
}

/// SimHash of 50-unit windows (stride 25) of the indexed documents, searched for windows of a
/// response within Hamming distance 3 — the classic near-duplicate setting (Manku et al.,
/// WWW 2007: 64 bits, four 16-bit blocks, one of which must agree exactly). Hand-written here:
/// the `simhash` crate tokenises strings itself, and this must use the engine's own units.
struct SimIndex {
    tables: [HashMap<u16, Vec<u64>>; 4],
}

const SIM_WINDOW: usize = 50;

fn simhash_of(units: &[verbatim::normalize::Unit]) -> u64 {
    let mut v = [0i32; 64];
    for w in units.windows(3) {
        let f = verbatim::hash::kgram_key(w.iter().map(|u| u.hash));
        for (b, x) in v.iter_mut().enumerate() {
            *x += if f >> b & 1 == 1 { 1 } else { -1 };
        }
    }
    v.iter()
        .enumerate()
        .fold(0u64, |h, (b, &x)| if x > 0 { h | 1 << b } else { h })
}

impl SimIndex {
    fn build(docs: &[Doc]) -> SimIndex {
        let mut tables: [HashMap<u16, Vec<u64>>; 4] = Default::default();
        for d in docs {
            let units = normalize(&d.text, d.kind);
            let mut a = 0;
            while a + SIM_WINDOW <= units.len() {
                let h = simhash_of(&units[a..a + SIM_WINDOW]);
                for (i, t) in tables.iter_mut().enumerate() {
                    t.entry((h >> (16 * i)) as u16).or_default().push(h);
                }
                a += SIM_WINDOW / 2;
            }
        }
        SimIndex { tables }
    }

    fn query(&self, text: &str) -> bool {
        let units = normalize(text, TextKind::Markdown);
        let mut a = 0;
        while a + SIM_WINDOW <= units.len() {
            let h = simhash_of(&units[a..a + SIM_WINDOW]);
            for (i, t) in self.tables.iter().enumerate() {
                if let Some(c) = t.get(&((h >> (16 * i)) as u16))
                    && c.iter().any(|x| (x ^ h).count_ones() <= 3)
                {
                    return true;
                }
            }
            a += 5;
        }
        false
    }
}

/// One tool's verdict on one case (the peers write these, one JSON object per line).
#[derive(Debug, Clone, Deserialize)]
struct PeerVerdict {
    tool: String,
    id: String,
    /// At the tool's default threshold.
    detected: bool,
    /// Its strength of evidence (overlap, containment, similarity): 0 when nothing matched.
    score: f64,
}

/// A peer's verdicts: (detected at its default, score) per case it was run on.
type Verdicts = HashMap<String, (bool, f64)>;

/// `(hits, evaluated)` of a peer over `cases`, at its default (`tau` None) or at score ≥ tau.
fn peer_count(p: &Verdicts, cases: &[&Case], tau: Option<f64>) -> (usize, usize) {
    let mut n = 0;
    let mut hit = 0;
    for c in cases {
        if let Some(&(d, s)) = p.get(&c.id) {
            n += 1;
            hit += usize::from(match tau {
                None => d,
                Some(t) => s > 0.0 && s >= t,
            });
        }
    }
    (hit, n)
}

fn pct(n: usize, d: usize) -> String {
    if d == 0 {
        "–".into()
    } else {
        format!("{:.1}", 100.0 * n as f64 / d as f64)
    }
}

/// A table cell: Verbatim's recall over `cases`, with the counts (` 97.0 (98/101) |`).
fn recall_cell<'a>(
    ours: &HashMap<String, Outcome>,
    cases: impl Iterator<Item = &'a Case>,
) -> String {
    let (mut n, mut d) = (0, 0);
    for c in cases {
        d += 1;
        n += usize::from(ours.get(&c.id).is_some_and(|o| o.detected));
    }
    format!(" {} ({n}/{d}) |", pct(n, d))
}

fn report(out: &Path, doc: Option<&Path>, command: &str) {
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
    let cases: Vec<Case> = read("cases.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ours: HashMap<String, Outcome> = read("verbatim.jsonl")
        .lines()
        .map(|l| serde_json::from_str::<Outcome>(l).unwrap())
        .map(|o| (o.id.clone(), o))
        .collect();
    let mut peers: BTreeMap<String, Verdicts> = BTreeMap::new();
    for l in read("peers.jsonl").lines() {
        let v: PeerVerdict = serde_json::from_str(l).unwrap();
        peers
            .entry(v.tool)
            .or_default()
            .insert(v.id, (v.detected, v.score));
    }
    let meta: serde_json::Value = serde_json::from_str(&read("meta.json")).unwrap_or_default();
    let tools: Vec<String> = peers.keys().cloned().collect();

    let mut md = String::new();
    writeln!(
        md,
        "# Quality: near-verbatim detection against other tools\n"
    )
    .unwrap();
    writeln!(
        md,
        "Generated by `{command}` (see `scripts/quality-bench.sh`); do not edit by hand.\n"
    )
    .unwrap();
    writeln!(
        md,
        "Index: {} documents, {:.0} MB of corpus (`{}`), parameters `{}`. {} positives, {} negatives \
         ({} more drawn were replaced: a finding in them turned out to be a real copy of indexed text, \
         judged without the engine — the output and source regions share ≥ 80 % of their words in \
         order, code without its comments; each negative is drawn from a seed of its own, so an engine \
         that finds another real copy changes only that case); the peers compare each response with {} reference files \
         (every source document of a positive plus as many distractors) — a far easier task than our \
         whole index.\n",
        meta["documents"],
        meta["corpus_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        meta["index_id"].as_str().unwrap_or(""),
        meta["params"],
        meta["positives"],
        meta["negatives"],
        meta["negatives_replaced"],
        meta["references_for_peers"],
    )
    .unwrap();

    // Recall per family (and channel), for spans at or above the channel's guarantee and all.
    writeln!(md, "## Recall by family\n").unwrap();
    writeln!(
        md,
        "Recall over spans of ≥ 24 units (all spans in brackets); left out = spans of ≥ t units \
         whose unchanged text is not findable either (boilerplate by design: its k-grams are \
         sampled in ≥ 32 documents — license headers, generated code —, or it is shorter than 2t \
         and ≥ 32 documents hold all of it — import blocks —, or it is made of repeated units); leaked \
         = units of the copy a strict holdback would have released before the copy was detected \
         (mean / max over detected cases); latency = median units of the copy received at \
         detection.\n"
    )
    .unwrap();
    let mut head =
        "| channel | family | n | left out | Verbatim | leaked mean / max | latency |".to_string();
    let mut rule = "|---|---|---:|---:|---:|---:|---:|".to_string();
    for t in &tools {
        head += &format!(" {t} |");
        rule += "---:|";
    }
    writeln!(md, "{head}\n{rule}").unwrap();
    let mut groups: BTreeMap<(bool, String), Vec<&Case>> = BTreeMap::new();
    let mut excluded: BTreeMap<(bool, String), usize> = BTreeMap::new();
    for c in cases.iter().filter(|c| c.positive) {
        if ours.get(&c.id).is_some_and(|o| o.excluded) {
            *excluded.entry((c.code, c.family.clone())).or_default() += 1;
            continue;
        }
        groups
            .entry((c.code, c.family.clone()))
            .or_default()
            .push(c);
    }
    let order = |f: &str| {
        [
            "verbatim",
            "whitespace",
            "case",
            "punctuation",
            "comments",
            "renamed",
            "literals",
            "edit 2%",
            "edit 5%",
            "edit 10%",
            "edit 20%",
        ]
        .iter()
        .position(|x| *x == f)
        .unwrap_or(99)
    };
    let mut keys: Vec<_> = groups.keys().cloned().collect();
    keys.sort_by_key(|(code, f)| (*code, order(f)));
    let mut edit_series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for key in &keys {
        let cs = &groups[key];
        let long: Vec<&&Case> = cs.iter().filter(|c| c.len >= 24).collect();
        let hit = |c: &Case| ours.get(&c.id).is_some_and(|o| o.detected);
        let leaks: Vec<usize> = cs
            .iter()
            .filter_map(|c| ours.get(&c.id).and_then(|o| o.leaked))
            .collect();
        let mut lat: Vec<usize> = cs
            .iter()
            .filter_map(|c| ours.get(&c.id).and_then(|o| o.latency))
            .collect();
        lat.sort_unstable();
        let mut row = format!(
            "| {} | {} | {} | {} | {} ({}) | {} / {} | {} |",
            if key.0 { "code" } else { "prose" },
            key.1,
            cs.len(),
            excluded.get(key).copied().unwrap_or(0),
            pct(long.iter().filter(|c| hit(c)).count(), long.len()),
            pct(cs.iter().filter(|c| hit(c)).count(), cs.len()),
            if leaks.is_empty() {
                "–".into()
            } else {
                format!(
                    "{:.2}",
                    leaks.iter().sum::<usize>() as f64 / leaks.len() as f64
                )
            },
            leaks.iter().max().map_or("–".into(), |m| m.to_string()),
            lat.get(lat.len() / 2).map_or("–".into(), |m| m.to_string()),
        );
        for t in &tools {
            let long: Vec<&Case> = long.iter().map(|c| **c).collect();
            let (a, b) = peer_count(&peers[t], &long, None);
            let (c, d) = peer_count(&peers[t], cs, None);
            row += &format!(" {} ({}) |", pct(a, b), pct(c, d));
        }
        writeln!(md, "{row}").unwrap();
        if let Some(rate) = key
            .1
            .strip_prefix("edit ")
            .and_then(|s| s.trim_end_matches('%').parse::<f64>().ok())
        {
            let fifty: Vec<&&Case> = cs.iter().filter(|c| c.len == 50).collect();
            let ch = if key.0 { "code" } else { "prose" };
            edit_series
                .entry(format!("Verbatim, {ch}"))
                .or_default()
                .push((
                    rate,
                    100.0 * fifty.iter().filter(|c| hit(c)).count() as f64
                        / fifty.len().max(1) as f64,
                ));
            for t in &tools {
                let fifty: Vec<&Case> = fifty.iter().map(|c| **c).collect();
                let (h, n) = peer_count(&peers[t], &fifty, None);
                if n == 0 {
                    continue;
                }
                edit_series
                    .entry(format!("{t}, {ch}"))
                    .or_default()
                    .push((rate, 100.0 * h as f64 / n as f64));
            }
        }
    }

    // Recall by span length.
    // Code by language: structure-only matching depends on how repetitive a language is.
    writeln!(
        md,
        "\n## Verbatim's recall on code of ≥ 50 units, by language of the source\n\n\
         Assembly and C from GMP/MPFR (vendored by `gmp-mpfr-sys`) repeat the same structures \
         across hundreds of files, so most of their rename-insensitive keys are common (in ≥ 32 \
         documents) and not evidence on their own. Python is from the GPL and LGPL packages' \
         source distributions on PyPI (`scripts/fetch-pypi.sh`).\n"
    )
    .unwrap();
    let lang = |e: &str| match e {
        "rs" => "Rust",
        "c" | "h" => "C",
        "asm" | "s" | "S" => "assembly",
        "py" => "Python",
        _ => "other",
    };
    let langs = ["Rust", "C", "assembly", "Python", "other"];
    writeln!(
        md,
        "| family | Rust | C | assembly | Python | other |\n|---|---:|---:|---:|---:|---:|"
    )
    .unwrap();
    for key in keys.iter().filter(|k| k.0) {
        let mut row = format!("| {} |", key.1);
        for l in langs {
            row += &recall_cell(
                &ours,
                groups[key]
                    .iter()
                    .copied()
                    .filter(|c| c.len >= 50 && lang(&c.ext) == l),
            );
        }
        writeln!(md, "{row}").unwrap();
    }

    // Renamed and literal-changed copies by how much their source repeats itself.
    let params: Params = serde_json::from_value(meta["params"].clone()).unwrap_or_default();
    let min = params
        .renamed
        .map_or(0, |r| verbatim::matcher::renamed_min(&params, r));
    writeln!(
        md,
        "\nRenamed and literal-changed copies of ≥ 50 units by their source span: a list of items of \
         one form (an import block, a constant table, generated layout tests) matches any other list \
         of that form under renaming, so a renamed run is reported only with ≥ {min} units of \
         structure its source does not repeat (`matcher::structure`); lists are still found when \
         copied exactly.\n\n| family | source not a list | source a list |\n|---|---:|---:|"
    )
    .unwrap();
    for fam in ["renamed", "literals"] {
        let mut row = format!("| {fam} |");
        for listy in [false, true] {
            let at = cases
                .iter()
                .filter(|c| c.positive && c.code && c.family == fam && c.len >= 50)
                .filter(|c| {
                    ours.get(&c.id).is_some_and(|o| {
                        !o.excluded && o.structure.is_some_and(|s| (s < min) == listy)
                    })
                });
            row += &recall_cell(&ours, at);
        }
        writeln!(md, "{row}").unwrap();
    }

    writeln!(md, "\n## Verbatim's recall by span length (units)\n").unwrap();
    let mut head = "| channel | family |".to_string();
    let mut rule = "|---|---|".to_string();
    for l in LENGTHS {
        head += &format!(" {l} |");
        rule += "---:|";
    }
    writeln!(md, "{head}\n{rule}").unwrap();
    let mut len_series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for key in &keys {
        let cs = &groups[key];
        let mut row = format!("| {} | {} |", if key.0 { "code" } else { "prose" }, key.1);
        for &l in LENGTHS {
            let at: Vec<&&Case> = cs.iter().filter(|c| c.len == l).collect();
            let n = at
                .iter()
                .filter(|c| ours.get(&c.id).is_some_and(|o| o.detected))
                .count();
            row += &format!(" {} |", pct(n, at.len()));
            if !at.is_empty() {
                len_series
                    .entry(format!(
                        "{}, {}",
                        if key.0 { "code" } else { "prose" },
                        key.1
                    ))
                    .or_default()
                    .push((l as f64, 100.0 * n as f64 / at.len() as f64));
            }
        }
        writeln!(md, "{row}").unwrap();
    }

    // Negatives.
    writeln!(md, "\n## False findings per 1,000 negative responses\n").unwrap();
    writeln!(
        md,
        "Verbatim: any finding / a finding the built-in policy blocks (runs of ≥ {} prose or ≥ {} code \
         units, near copies at least {} similar to their source). Peers: any report at their default \
         thresholds.\n",
        Rules::default().long_prose_units,
        Rules::default().long_code_units,
        Rules::default().long_min_similarity
    )
    .unwrap();
    let mut head = "| negatives | n | Verbatim any | Verbatim blocking |".to_string();
    let mut rule = "|---|---:|---:|---:|".to_string();
    for t in &tools {
        head += &format!(" {t} |");
        rule += "---:|";
    }
    writeln!(md, "{head}\n{rule}").unwrap();
    let mut negs: BTreeMap<String, Vec<&Case>> = BTreeMap::new();
    for c in cases.iter().filter(|c| !c.positive) {
        negs.entry(c.family.clone()).or_default().push(c);
        negs.entry("all".into()).or_default().push(c);
    }
    let per_k = |n: usize, d: usize| {
        if d == 0 {
            "–".to_string()
        } else {
            format!("{:.1}", 1000.0 * n as f64 / d as f64)
        }
    };
    for (fam, cs) in &negs {
        let any = cs
            .iter()
            .filter(|c| ours.get(&c.id).is_some_and(|o| o.detected))
            .count();
        let blk = cs
            .iter()
            .filter(|c| ours.get(&c.id).is_some_and(|o| o.blocking))
            .count();
        let mut row = format!(
            "| {fam} | {} | {} | {} |",
            cs.len(),
            per_k(any, cs.len()),
            per_k(blk, cs.len())
        );
        for t in &tools {
            let (n, d) = peer_count(&peers[t], cs, None);
            row += &format!(" {} |", per_k(n, d));
        }
        writeln!(md, "{row}").unwrap();
    }
    // What the blocked negatives were, so a reader can judge them.
    let blocked: Vec<&Case> = cases
        .iter()
        .filter(|c| !c.positive && ours.get(&c.id).is_some_and(|o| o.blocking))
        .collect();
    if !blocked.is_empty() {
        writeln!(
            md,
            "\nThe negatives a finding of which the built-in policy blocks (the longest finding of \
             each; `bench-data/quality/run/cases.jsonl` has their text):\n\n\
             | case | negatives | kind | similarity | source |\n|---|---|---|---:|---|"
        )
        .unwrap();
        for c in blocked {
            let o = &ours[&c.id];
            writeln!(
                md,
                "| {} | {} | {} | {} | `{}` |",
                c.id,
                c.family,
                o.kind.as_deref().unwrap_or("–"),
                o.similarity.map_or("–".into(), |s| format!("{s:.2}")),
                o.source.as_deref().unwrap_or("–")
            )
            .unwrap();
        }
    }

    // Each peer at the false-finding rate Verbatim has on the cases that peer was run on: its
    // score threshold is raised until no more negatives are reported than Verbatim reports.
    writeln!(
        md,
        "\n## At equal false-finding rates\n\n\
         Each peer's score (copydetect: token overlap; MinHash: estimated containment; jscpd: clone \
         tokens; Dolos: pair similarity) is thresholded so that it reports no more of the negatives \
         it was run on than Verbatim reports (any finding); recall is then over the same positives \
         of ≥ 24 and ≥ 50 units. Verbatim's figures are over the same cases.\n\n\
         | tool | cases | false / 1,000 (default) | recall ≥ 24 (default) | threshold | false / 1,000 | recall ≥ 24 | recall ≥ 50 | Verbatim false / 1,000 | Verbatim recall ≥ 24 | Verbatim recall ≥ 50 |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    .unwrap();
    let all_neg: Vec<&Case> = cases.iter().filter(|c| !c.positive).collect();
    let all_pos: Vec<&Case> = groups.values().flatten().copied().collect();
    for t in &tools {
        let p = &peers[t];
        let neg: Vec<&Case> = all_neg
            .iter()
            .copied()
            .filter(|c| p.contains_key(&c.id))
            .collect();
        let pos24: Vec<&Case> = all_pos
            .iter()
            .copied()
            .filter(|c| c.len >= 24 && p.contains_key(&c.id))
            .collect();
        let pos50: Vec<&Case> = pos24.iter().copied().filter(|c| c.len >= 50).collect();
        if neg.is_empty() || pos24.is_empty() {
            continue;
        }
        let ours_hit = |cs: &[&Case]| {
            cs.iter()
                .filter(|c| ours.get(&c.id).is_some_and(|o| o.detected))
                .count()
        };
        let allowed = ours_hit(&neg);
        let mut scores: Vec<f64> = neg
            .iter()
            .filter_map(|c| p.get(&c.id))
            .map(|v| v.1)
            .filter(|s| *s > 0.0)
            .collect();
        scores.sort_by(|a, b| b.total_cmp(a));
        // The lowest threshold reporting at most `allowed` negatives: just above the
        // (allowed+1)-th highest negative score.
        let tau = scores
            .get(allowed)
            .map_or(f64::MIN_POSITIVE, |s| s * (1.0 + 1e-9) + 1e-12);
        let (fd, nd) = peer_count(p, &neg, None);
        let (rd, nrd) = peer_count(p, &pos24, None);
        let (ft, nt) = peer_count(p, &neg, Some(tau));
        let (r24, n24) = peer_count(p, &pos24, Some(tau));
        let (r50, n50) = peer_count(p, &pos50, Some(tau));
        writeln!(
            md,
            "| {t} | {} + {} | {} | {} | {:.3} | {} | {} | {} | {} | {} | {} |",
            pos24.len(),
            neg.len(),
            per_k(fd, nd),
            pct(rd, nrd),
            tau,
            per_k(ft, nt),
            pct(r24, n24),
            pct(r50, n50),
            per_k(allowed, neg.len()),
            pct(ours_hit(&pos24), pos24.len()),
            pct(ours_hit(&pos50), pos50.len()),
        )
        .unwrap();
    }
    // SimHash as an auxiliary signal.
    let sim: HashMap<String, bool> = read("simhash.jsonl")
        .lines()
        .map(|l| serde_json::from_str::<PeerVerdict>(l).unwrap())
        .map(|v| (v.id, v.detected))
        .collect();
    if !sim.is_empty() {
        writeln!(
            md,
            "\n## SimHash as an auxiliary signal\n\n\
             64-bit SimHash of every 50-unit window (stride 25) of the {} sampled indexed documents \
             (which include every positive's source), searched for each response's 50-unit windows \
             within Hamming distance 3. \"Gain\" = positives SimHash finds that Verbatim misses; \
             \"added false\" = negatives SimHash reports that Verbatim does not.\n\n\
             | channel | family | n (≥ 50 units) | Verbatim | SimHash | gain |\n|---|---|---:|---:|---:|---:|",
            meta["simhash_documents"]
        )
        .unwrap();
        let (mut gain_all, mut n_all) = (0, 0);
        for key in &keys {
            let cs: Vec<&&Case> = groups[key].iter().filter(|c| c.len >= 50).collect();
            let v = |c: &Case| ours.get(&c.id).is_some_and(|o| o.detected);
            let s = |c: &Case| sim.get(&c.id).copied().unwrap_or(false);
            let gain = cs.iter().filter(|c| s(c) && !v(c)).count();
            gain_all += gain;
            n_all += cs.len();
            writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                if key.0 { "code" } else { "prose" },
                key.1,
                cs.len(),
                pct(cs.iter().filter(|c| v(c)).count(), cs.len()),
                pct(cs.iter().filter(|c| s(c)).count(), cs.len()),
                gain
            )
            .unwrap();
        }
        let neg: Vec<&Case> = cases.iter().filter(|c| !c.positive).collect();
        let added = neg
            .iter()
            .filter(|c| {
                sim.get(&c.id).copied().unwrap_or(false)
                    && !ours.get(&c.id).is_some_and(|o| o.detected)
            })
            .count();
        writeln!(
            md,
            "\nOver all families: SimHash would add {gain_all} of {n_all} positives of ≥ 50 units and \
             {added} false findings on {} negatives ({} per 1,000).",
            neg.len(),
            per_k(added, neg.len())
        )
        .unwrap();
    }

    let img = doc
        .and_then(|d| d.parent())
        .map(|p| p.join("img"))
        .unwrap_or_else(|| out.to_path_buf());
    std::fs::create_dir_all(&img).unwrap();
    plot(
        &edit_series,
        "edit rate (%)",
        "Recall vs edit rate (50-unit spans)",
        &img.join("quality-edit-rate.svg"),
        false,
    );
    plot(
        &len_series,
        "span length (units)",
        "Verbatim's recall vs span length",
        &img.join("quality-span-length.svg"),
        true,
    );
    writeln!(md, "\n![recall vs edit rate](img/quality-edit-rate.svg)\n\n![recall vs span length](img/quality-span-length.svg)").unwrap();
    match doc {
        Some(d) => std::fs::write(d, &md).unwrap(),
        None => print!("{md}"),
    }
}

fn plot(
    series: &BTreeMap<String, Vec<(f64, f64)>>,
    xlabel: &str,
    title: &str,
    path: &Path,
    logx: bool,
) {
    use plotters::prelude::*;
    let tx = |x: f64| if logx { x.log2() } else { x };
    let xs: Vec<f64> = series.values().flatten().map(|p| tx(p.0)).collect();
    if xs.is_empty() {
        return;
    }
    let xmin = xs.iter().copied().fold(f64::MAX, f64::min);
    let xmax = xs.iter().copied().fold(f64::MIN, f64::max).max(xmin + 1.0);
    let root = SVGBackend::new(path, (760, 440)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let mut ch = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(xmin..xmax, 0.0..102.0)
        .unwrap();
    ch.configure_mesh()
        .x_desc(xlabel)
        .y_desc("recall (%)")
        .x_label_formatter(&|x| {
            if logx {
                format!("{:.0}", 2f64.powf(*x))
            } else {
                format!("{x:.0}")
            }
        })
        .label_style(("sans-serif", 13))
        .draw()
        .unwrap();
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = Palette99::pick(i).to_rgba();
        let style = ShapeStyle::from(c).stroke_width(2);
        let pts: Vec<(f64, f64)> = pts.iter().map(|p| (tx(p.0), p.1)).collect();
        ch.draw_series(LineSeries::new(pts.clone(), style))
            .unwrap()
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
        ch.draw_series(pts.iter().map(|&p| Circle::new(p, 3, style.filled())))
            .unwrap();
    }
    ch.configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .unwrap();
    root.present().unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut corpus = Vec::new();
    let mut held = Vec::new();
    let (mut index, mut out, mut doc) = (None, None, None);
    let (mut per_cell, mut negatives, mut seed) = (30usize, 1000usize, 1u64);
    let mut it = args.iter();
    let mut cmd = None;
    while let Some(a) = it.next() {
        let mut val = || PathBuf::from(it.next().expect("a value after the flag"));
        match a.as_str() {
            "--corpus" => corpus.push(val()),
            "--held-out" => held.push(val()),
            "--index" => index = Some(val()),
            "--out" => out = Some(val()),
            "--doc" => doc = Some(val()),
            "--per-cell" => per_cell = val().to_string_lossy().parse().unwrap(),
            "--negatives" => negatives = val().to_string_lossy().parse().unwrap(),
            "--seed" => seed = val().to_string_lossy().parse().unwrap(),
            "gen" | "report" => cmd = Some(a.clone()),
            _ => {} // `--bench` from cargo
        }
    }
    let expand = |v: Vec<PathBuf>| -> Vec<PathBuf> {
        v.into_iter()
            .flat_map(|p| {
                if p.is_dir() {
                    let mut m: Vec<PathBuf> = std::fs::read_dir(&p)
                        .unwrap()
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                        .collect();
                    m.sort();
                    m
                } else {
                    vec![p]
                }
            })
            .collect()
    };
    let command = format!(
        "cargo bench --bench quality -- {}",
        args.iter()
            .filter(|a| *a != "--bench")
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    );
    match cmd.as_deref() {
        Some("gen") => generate(
            &expand(corpus),
            &expand(held),
            &index.expect("--index"),
            &out.expect("--out"),
            per_cell,
            negatives,
            seed,
        ),
        Some("report") => report(&out.expect("--out"), doc.as_deref(), &command),
        _ => {
            // Smoke run on the committed fixture corpora (code and prose, indexed and held out
            // at once: the numbers mean nothing, the program is what is tested).
            let dir = tempfile::tempdir().unwrap();
            let m = vec![
                PathBuf::from("corpora/acme-books.toml"),
                PathBuf::from("corpora/gpl-code.toml"),
            ];
            generate(&m, &m, &dir.path().join("idx"), dir.path(), 1, 10, 7);
            std::fs::write(dir.path().join("peers.jsonl"), "").unwrap();
            report(dir.path(), None, "smoke");
            let o = std::fs::read_to_string(dir.path().join("verbatim.jsonl")).unwrap();
            assert!(o.lines().count() > 10, "too few cases in the smoke run");
        }
    }
}
