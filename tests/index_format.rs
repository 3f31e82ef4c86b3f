//! The index format: round trip, the committed compatibility fixture, determinism, and clear
//! errors (never panics) for every kind of damage.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use verbatim::corpus::load_manifests;
use verbatim::index::build::{BuildOptions, build, sample_keys};
use verbatim::index::{FORMAT_VERSION, Index, IndexOpenError, Params};
use verbatim::matcher::{FindingReport, Scanner};
use verbatim::normalize::{TextKind, normalize};

const FIXTURE: &str = "tests/fixtures/index-v5";
/// The same corpora built with the rename-insensitive channel (optional since format 1:
/// `params.renamed` in the manifest and `classes.bin`; indexes without it still open).
const FIXTURE_RENAMED: &str = "tests/fixtures/index-v5-renamed";
/// Indexes of the earlier formats, as earlier releases built them: refused, with a clear
/// message (format 2 lexed `'"'` as a quote opening a string to the end of the line; format 3
/// had a binary fuse filter; format 4 kept a line's trailing whitespace in a string literal
/// that the line ended).
const FIXTURES_OLD: [(&str, u32); 8] = [
    ("tests/fixtures/index-v1", 1),
    ("tests/fixtures/index-v1-renamed", 1),
    ("tests/fixtures/index-v2", 2),
    ("tests/fixtures/index-v2-renamed", 2),
    ("tests/fixtures/index-v3", 3),
    ("tests/fixtures/index-v3-renamed", 3),
    ("tests/fixtures/index-v4", 4),
    ("tests/fixtures/index-v4-renamed", 4),
];

/// A sentence copied from `corpora/fixtures/acme-books/chapter-02.md`, reflowed and capitalised.
const COPIED: &str = "Sure. \"YOU'LL WANT TO WRITE THAT DOWN,\" he told Marguerite, when she asked him about the \
names in the ledger. \"Everyone who ever kept that light wrote it down.\" Nice, right?";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn fixture_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("idx");
    copy_dir(Path::new(FIXTURE), &p);
    (dir, p)
}

fn scan_all(index: &Arc<Index>, text: &str) -> Vec<FindingReport> {
    let mut s = Scanner::new(std::slice::from_ref(index), TextKind::Markdown);
    s.push_str(text);
    s.finish();
    s.take_findings()
        .iter()
        .filter_map(|f| FindingReport::new(index, f))
        .collect()
}

#[test]
fn committed_fixture_opens_verifies_and_still_matches() {
    let ix = Arc::new(Index::open(FIXTURE).unwrap());
    ix.verify().unwrap();
    let got = scan_all(&ix, COPIED);
    assert_eq!(got.len(), 1, "{got:?}");
    let f = &got[0];
    assert_eq!(f.corpus, "acme-books");
    assert_eq!(f.doc, "fixtures/acme-books/chapter-02.md");
    assert_eq!(f.license, "LicenseRef-Acme-Proprietary");
    assert_eq!(f.rights, "copyrighted");
    assert_eq!(f.units, 28);
    let src = std::fs::read_to_string("corpora/fixtures/acme-books/chapter-02.md").unwrap();
    let span = &src[f.source_start as usize..f.source_end as usize];
    assert!(
        span.starts_with("You'll want") && span.ends_with("wrote it down"),
        "{span}"
    );
    assert_eq!(
        &COPIED[f.output_start as usize..f.output_end as usize],
        "YOU'LL WANT TO WRITE THAT DOWN,\" he told Marguerite, when she asked him about the names in the ledger. \"Everyone who ever kept that light wrote it down"
    );
}

#[test]
fn rebuilding_the_fixture_corpora_is_deterministic_and_matches_the_fixture() {
    // Same corpora, same parameters, same format → the same bytes. If this fails while the
    // fixture still opens, the normaliser or hashing changed without a format version bump.
    let dir = tempfile::tempdir().unwrap();
    let corpora = load_manifests(&[
        PathBuf::from("corpora/acme-books.toml"),
        PathBuf::from("corpora/gpl-code.toml"),
    ])
    .unwrap();
    let files = |p: &Path| -> Vec<String> {
        Index::open(p)
            .unwrap()
            .manifest()
            .files
            .iter()
            .map(|f| f.xxh3.clone())
            .collect()
    };
    // Built before the renamed channel existed: the same parameters still give the same bytes.
    let plain = dir.path().join("plain");
    let opts = BuildOptions {
        params: Params {
            renamed: None,
            ..Params::default()
        },
        ..BuildOptions::default()
    };
    build(&corpora, &plain, &opts).unwrap();
    assert_eq!(files(&plain), files(Path::new(FIXTURE)));
    let mut ids = Vec::new();
    for n in 0..2 {
        let out = dir.path().join(format!("i{n}"));
        build(&corpora, &out, &BuildOptions::default()).unwrap();
        ids.push(
            Index::open(&out)
                .unwrap()
                .manifest()
                .files
                .iter()
                .map(|f| f.xxh3.clone())
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[0], files(Path::new(FIXTURE_RENAMED)));
}

#[test]
fn round_trip_every_sampled_key_finds_its_posting() {
    let ix = Index::open(FIXTURE).unwrap();
    let params = ix.params();
    for (id, d) in ix.docs().iter().enumerate() {
        let text = std::fs::read_to_string(Path::new("corpora").join(&d.path)).unwrap();
        let kind = if d.text == "code" {
            TextKind::Code(
                verbatim::normalize::Lang::from_name(d.path.rsplit('.').next().unwrap()).unwrap(),
            )
        } else {
            TextKind::Markdown
        };
        let units = normalize(&text, kind);
        assert_eq!(units.len(), d.units as usize, "{}", d.path);
        let stored: Vec<u32> = units
            .iter()
            .map(|u| verbatim::hash::stored(u.hash))
            .collect();
        assert_eq!(ix.doc_units(id as u32), &stored[..]);
        for (i, u) in units.iter().enumerate() {
            assert_eq!(
                ix.unit_span(id as u32, i as u32),
                Some((u.start as u32, u.end() as u32))
            );
        }
        for (key, pos) in sample_keys(&units, &params) {
            assert!(
                ix.lookup(key)
                    .iter()
                    .any(|p| p.doc == id as u32 && p.pos == pos),
                "{}: key at {pos}",
                d.path
            );
        }
    }
    assert!(ix.lookup(0xdead_beef).is_empty());
    // The keys marked common are readable and counted as the manifest says.
    assert_eq!(
        ix.common_keys().count() as u64,
        ix.manifest().stats.common_keys
    );
}

fn open_err(dir: &Path) -> String {
    match Index::open(dir) {
        Ok(_) => panic!("opened a damaged index at {}", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn another_format_version_fails_with_a_clear_message() {
    let (_t, p) = fixture_copy();
    let m = p.join("manifest.json");
    let text = std::fs::read_to_string(&m).unwrap().replace(
        &format!("\"format_version\": {FORMAT_VERSION}"),
        "\"format_version\": 999",
    );
    std::fs::write(&m, text).unwrap();
    let e = Index::open(&p).unwrap_err();
    assert!(matches!(
        e,
        IndexOpenError::FormatVersion {
            found: 999,
            expected: FORMAT_VERSION,
            ..
        }
    ));
    assert!(
        e.to_string().contains(&format!(
            "has format version 999, this verbatim reads version {FORMAT_VERSION}: rebuild it"
        )),
        "{e}"
    );
}

#[test]
fn an_index_of_the_previous_format_is_refused_with_a_clear_message() {
    for (dir, version) in FIXTURES_OLD {
        let e = Index::open(dir).unwrap_err();
        assert!(
            matches!(
                e,
                IndexOpenError::FormatVersion {
                    found,
                    expected: FORMAT_VERSION,
                    ..
                } if found == version
            ),
            "{dir}: {e}"
        );
        assert!(
            e.to_string().contains(&format!(
                "has format version {version}, this verbatim reads version {FORMAT_VERSION}: rebuild it"
            )),
            "{e}"
        );
    }
}

#[test]
fn damage_is_reported_with_the_file_it_is_in() {
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "no manifest",
            Box::new(|p: &Path| std::fs::remove_file(p.join("manifest.json")).unwrap()),
            "is not a verbatim index",
        ),
        (
            "manifest not json",
            Box::new(|p: &Path| std::fs::write(p.join("manifest.json"), "{").unwrap()),
            "manifest.json is corrupt: invalid manifest",
        ),
        (
            "truncated postings",
            Box::new(|p: &Path| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(p.join("postings.bin"))
                    .unwrap();
                let len = f.metadata().unwrap().len();
                f.set_len(len - 3).unwrap();
            }),
            "postings.bin is corrupt",
        ),
        (
            "missing units",
            Box::new(|p: &Path| std::fs::remove_file(p.join("units.bin")).unwrap()),
            "units.bin",
        ),
        (
            "wrong magic",
            Box::new(|p: &Path| {
                let path = p.join("spans.bin");
                let mut b = std::fs::read(&path).unwrap();
                b[0] ^= 0xff;
                std::fs::write(&path, b).unwrap();
            }),
            "spans.bin is corrupt: wrong magic bytes",
        ),
        (
            "docs garbage",
            Box::new(|p: &Path| {
                let path = p.join("docs.jsonl");
                let b = std::fs::read(&path).unwrap();
                let mut g = b.clone();
                g[5] = b'#';
                std::fs::write(&path, g).unwrap();
            }),
            "docs.jsonl is corrupt: line 1",
        ),
        (
            "filter of another hash count",
            Box::new(|p: &Path| {
                // Header: magic 8, version 4 bytes, pad 4, count 8, seed 8, bits a key 8, hashes 8.
                let path = p.join("filter.bin");
                let mut b = std::fs::read(&path).unwrap();
                b[40..48].copy_from_slice(&7u64.to_le_bytes());
                std::fs::write(&path, b).unwrap();
            }),
            "filter.bin is corrupt: filter of",
        ),
    ];
    for (name, damage, expect) in cases {
        let (_t, p) = fixture_copy();
        damage(&p);
        let msg = open_err(&p);
        assert!(msg.contains(expect), "{name}: {msg}");
    }
}

#[test]
fn verify_catches_a_flipped_body_byte() {
    let (_t, p) = fixture_copy();
    let path = p.join("units.bin");
    let mut b = std::fs::read(&path).unwrap();
    let i = b.len() - 5;
    b[i] ^= 1;
    std::fs::write(&path, b).unwrap();
    let ix = Index::open(&p).unwrap();
    let e = ix.verify().unwrap_err().to_string();
    assert!(e.contains("units.bin is corrupt: checksum"), "{e}");
}

#[test]
fn flipped_bytes_anywhere_never_panic() {
    let mut r = common::Rng(1234);
    for file in [
        "units.bin",
        "spans.bin",
        "postings.bin",
        "filter.bin",
        "common.bin",
    ] {
        let len = std::fs::metadata(Path::new(FIXTURE).join(file))
            .unwrap()
            .len() as usize;
        let positions: Vec<usize> = (0..64)
            .chain((0..64).map(|_| r.below(len)))
            .filter(|&i| i < len)
            .collect();
        for i in positions {
            let (_t, p) = fixture_copy();
            let path = p.join(file);
            let mut b = std::fs::read(&path).unwrap();
            b[i] ^= 1 << (r.below(8));
            std::fs::write(&path, b).unwrap();
            // Either it opens and scans (perhaps finding less), or it says what is wrong.
            if let Ok(ix) = Index::open(&p).map(Arc::new) {
                let _ = scan_all(&ix, COPIED);
            }
        }
    }
}

#[test]
fn an_empty_corpus_builds_an_index_that_finds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    std::fs::write(
        dir.path().join("e.toml"),
        "name = \"e\"\nrights = \"public-domain\"\npaths = [\"empty\"]\n",
    )
    .unwrap();
    let ix = common::build_index(dir.path(), &[dir.path().join("e.toml")], Params::default());
    assert_eq!(ix.manifest().stats.documents, 0);
    assert!(scan_all(&ix, COPIED).is_empty());
}

#[test]
fn building_over_a_non_index_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious.txt"), "keep me").unwrap();
    let corpora = load_manifests(&[PathBuf::from("corpora/acme-books.toml")]).unwrap();
    let e = build(
        &corpora,
        dir.path(),
        &BuildOptions {
            force: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("is not a verbatim index; refusing to replace it"),
        "{e}"
    );
    assert!(dir.path().join("precious.txt").exists());
}

#[test]
fn small_spill_budget_gives_the_same_index() {
    // Forces many spilled runs and a k-way merge; the result must equal the in-memory build.
    let dir = tempfile::tempdir().unwrap();
    let corpora = load_manifests(&[
        PathBuf::from("corpora/acme-books.toml"),
        PathBuf::from("corpora/gpl-code.toml"),
    ])
    .unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let sa = build(&corpora, &a, &BuildOptions::default()).unwrap();
    let sb = build(
        &corpora,
        &b,
        &BuildOptions {
            spill_postings: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(sa.spilled_runs, 0);
    assert!(sb.spilled_runs > 1, "{}", sb.spilled_runs);
    for f in ["postings.bin", "filter.bin", "common.bin"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
}

/// Every program that opens the committed fixture outside this file (tests, benches, the fuzz
/// targets, which CI does not build, the SDK and browser tests) names the current format's:
/// the fuzz harness still named `index-v2` two formats later, so the `pipeline` and
/// `responses` targets failed at their first input (`scripts/fuzz.sh`).
#[test]
fn every_fixture_path_names_the_current_format() {
    let want = format!("index-v{}", verbatim::index::format::FORMAT_VERSION);
    let mut stale = Vec::new();
    for root in ["tests", "benches", "fuzz/fuzz_targets", "scripts", "src"] {
        for e in walkdir::WalkDir::new(root) {
            let e = e.unwrap();
            let p = e.path();
            if !e.file_type().is_file()
                || p.ends_with("index_format.rs")
                || p.starts_with("tests/fixtures")
            {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(p) else {
                continue;
            };
            for (i, line) in text.lines().enumerate() {
                let mut rest = line;
                while let Some(at) = rest.find("fixtures/index-v") {
                    let name: String = rest[at + "fixtures/".len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                        .collect();
                    let version = name.trim_end_matches("-renamed");
                    // `index-v$v` in the script that makes the fixtures.
                    if version != want && version != "index-v" {
                        stale.push(format!("{}:{}: {name}", p.display(), i + 1));
                    }
                    rest = &rest[at + 1..];
                }
            }
        }
    }
    assert!(stale.is_empty(), "paths to an old fixture: {stale:#?}");
}

#[test]
fn warming_reads_every_mapped_file_through_the_files_opened_not_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("idx");
    copy_dir(Path::new(FIXTURE_RENAMED), &p);
    let mapped: u64 = [
        "postings.bin",
        "units.bin",
        "spans.bin",
        "common.bin",
        "classes.bin",
    ]
    .iter()
    .map(|f| std::fs::metadata(p.join(f)).unwrap().len())
    .sum();
    let ix = Index::open(&p).unwrap();
    assert_eq!(ix.mapped_bytes(), mapped);
    assert!(!ix.is_warm());

    // Told to stop at once, it reads nothing and the index stays cold.
    assert_eq!(ix.warm(|| true).unwrap(), 0);
    assert!(!ix.is_warm());

    // A rebuild that replaces the files under their names does not change what the open
    // index maps, so warming must read what is mapped: the old files, not the new ones.
    for f in ["postings.bin", "units.bin"] {
        std::fs::remove_file(p.join(f)).unwrap();
        std::fs::write(p.join(f), vec![7u8; 3 << 20]).unwrap();
    }
    assert_eq!(ix.warm(|| false).unwrap(), mapped);
    assert!(ix.is_warm());
    let got = scan_all(&Arc::new(ix), COPIED);
    assert_eq!(got.len(), 1, "the index still reads its own files: {got:?}");
}
