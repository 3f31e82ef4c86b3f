//! Helpers shared by integration tests: building small indexes from generated documents.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::path::{Path, PathBuf};
use std::sync::Arc;

use verbatim::corpus::load_manifests;
use verbatim::index::build::{BuildOptions, build};
use verbatim::index::{Index, Params};
use verbatim::matcher::{Finding, Scanner};
use verbatim::normalize::TextKind;

/// Writes `docs` (relative path, text) under `dir/<name>/` with a manifest, returns its path.
pub fn write_corpus(
    dir: &Path,
    name: &str,
    kind: &str,
    rights: &str,
    license: Option<&str>,
    docs: &[(String, String)],
) -> PathBuf {
    let root = dir.join(name);
    for (rel, text) in docs {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let manifest = dir.join(format!("{name}.toml"));
    let license = license
        .map(|l| format!("license = \"{l}\"\n"))
        .unwrap_or_default();
    std::fs::write(
        &manifest,
        format!("name = \"{name}\"\nkind = \"{kind}\"\nrights = \"{rights}\"\n{license}paths = [\"{name}\"]\nurl = \"https://example.test/{name}/{{path}}\"\n"),
    )
    .unwrap();
    manifest
}

/// Builds an index at `dir/idx` from manifests.
pub fn build_index(dir: &Path, manifests: &[PathBuf], params: Params) -> Arc<Index> {
    let corpora = load_manifests(manifests).unwrap();
    let out = dir.join("idx");
    let opts = BuildOptions {
        params,
        force: true,
        ..BuildOptions::default()
    };
    build(&corpora, &out, &opts).unwrap();
    Arc::new(Index::open(&out).unwrap())
}

/// Scans `text` pushed in pieces cut at `cuts` (byte offsets, ascending).
pub fn scan_cuts(index: &Arc<Index>, kind: TextKind, text: &[u8], cuts: &[usize]) -> Vec<Finding> {
    let mut s = Scanner::new(std::slice::from_ref(index), kind);
    let mut prev = 0;
    for &c in cuts.iter().chain(std::iter::once(&text.len())) {
        let c = c.clamp(prev, text.len());
        s.push_bytes(&text[prev..c]);
        prev = c;
    }
    s.finish();
    let mut f = s.take_findings();
    f.sort_by_key(|f| (f.output_start, f.doc, f.doc_unit_start));
    f
}

pub fn scan(index: &Arc<Index>, kind: TextKind, text: &str) -> Vec<Finding> {
    scan_cuts(index, kind, text.as_bytes(), &[])
}

/// Deterministic xorshift.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut s = self.0 | 1;
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        self.0 = s;
        s
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A vocabulary of made-up words; `tag` keeps two vocabularies disjoint. Some are multi-byte.
pub fn vocabulary(tag: char, n: usize, seed: u64) -> Vec<String> {
    let mut r = Rng(seed);
    let letters: Vec<char> = "abcdefghijklmnopqrstuvwxyzéøüñß".chars().collect();
    (0..n)
        .map(|i| {
            let len = 3 + r.below(6);
            let mut w: String = (0..len).map(|_| letters[r.below(letters.len())]).collect();
            w.push(tag);
            w.push_str(&i.to_string());
            w
        })
        .collect()
}

/// A code document that begins with a table of zeros (k-grams too repetitive to index) and goes
/// on with 60 lines of distinctive calls; returns (the table, the whole document).
pub fn table_then_code(tag: char, seed: u64) -> (String, String) {
    let vocab = vocabulary(tag, 500, seed);
    let mut r = Rng(seed ^ 0x7ab1e);
    let body: String = (0..60)
        .map(|_| {
            format!(
                "{} ( ) ;\n",
                vocab[r.below(vocab.len())].replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            )
        })
        .collect();
    let table = format!("{}\n", "0, ".repeat(100));
    let doc = format!("{table}{body}");
    (table, doc)
}

/// An index at `dir/idx` of one code corpus holding `doc` as `t.rs`.
pub fn one_code_doc_index(dir: &Path, doc: &str, params: Params) -> Arc<Index> {
    let m = write_corpus(
        dir,
        "code",
        "code",
        "licensed",
        None,
        &[("t.rs".to_string(), doc.to_string())],
    );
    build_index(dir, &[m], params)
}

/// A standard three-line import block: 25 code units (t = 23), boilerplate in many crates.
pub const IMPORT_BLOCK: &str =
    "use std::future::Future;\nuse std::pin::Pin;\nuse std::task::{Context, Poll};\n";

/// Rust functions of document `i`'s own (3 to 7 of them, names tagged `tag` and `i`), to put
/// around a shared text.
pub fn own_code(i: usize, tag: &str) -> String {
    (0..3 + i % 5)
        .map(|j| {
            format!(
                "fn {tag}_{i}_{j}(x: u{}) -> bool {{ x > {j} }}\n",
                8 << (j % 4)
            )
        })
        .collect()
}

/// `n` Rust documents `d{i}.rs` that each hold `shared` between code of their own
/// ([`own_code`]).
pub fn shared_docs(n: usize, shared: &str) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let text = format!("{}{shared}{}", own_code(i, "head"), own_code(i, "tail"));
            (format!("d{i}.rs"), text)
        })
        .collect()
}

/// [`shared_docs`] indexed as the licensed code corpus `code` (documents `code/d{i}.rs`), with
/// the first document's whole text.
pub fn shared_corpus(n: usize, shared: &str) -> (tempfile::TempDir, Arc<Index>, String) {
    let dir = tempfile::tempdir().unwrap();
    let docs = shared_docs(n, shared);
    let whole = docs[0].1.clone();
    let m = write_corpus(dir.path(), "code", "code", "licensed", Some("MIT"), &docs);
    let index = build_index(dir.path(), &[m], Params::default());
    (dir, index, whole)
}

/// A table of `n` constants of one form (`pub const {prefix}_{i}: {ty} = …;`) and a function
/// after it: a list whose every row has one shape.
pub fn table(prefix: &str, ty: &str, n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        s += &format!("pub const {prefix}_{i}: {ty} = {};\n", i * 3 + 1);
    }
    s += &format!(
        "\n#[inline]\npub const fn {prefix}_tag(tag: {ty}) -> i32 {{\n    (tag as i32) << 24\n}}\n"
    );
    s
}
