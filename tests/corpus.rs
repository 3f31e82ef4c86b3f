//! Corpus manifests: every problem reported at once with its location (snapshots of the
//! rendered errors), and files that cannot be indexed are skipped, counted and said why.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use std::path::{Path, PathBuf};

use verbatim::corpus::{
    CorpusKind, ManifestError, Rights, SkipReason, SourceFile, load_manifests, parse_manifest,
    read_text,
};
use verbatim::index::build::{BuildOptions, build};

/// Validates `src` as if it were `corpora/<name>` (so relative paths resolve in the repo).
fn problems(name: &str, src: &str) -> String {
    match parse_manifest(&Path::new("corpora").join(name), src.to_string()) {
        Ok(c) => format!("valid: {}", c.name),
        Err(p) => p.to_string(),
    }
}

#[test]
fn bad_manifests_report_every_problem_with_its_location() {
    let cases = [
        ("syntax.toml", "name = \"x\nrights = 1\n"),
        (
            "unknown-keys.toml",
            "name = \"x\"\nrights = \"copyrighted\"\nlicence = \"MIT\"\n[metadata]\ntitle = \"t\"\n[extra]\na = 1\n",
        ),
        (
            "everything-wrong.toml",
            "name = \"has space\"\nkind = \"poetry\"\nrights = \"mine\"\nlicense = \"MIT OR\"\nurl = \"https://x/{name}\"\npaths = [\"fixtures/nope\", 3]\ninclude = [\"[\"]\nlicense_order = [\"spdx-identifier\", \"guess\", \"spdx-identifier\"]\ndep5 = \"debian/nope\"\n[metadata]\ntitle = 5\n",
        ),
        ("missing-required.toml", "kind = \"code\"\n"),
        (
            "wrong-types.toml",
            "name = 1\nrights = [\"copyrighted\"]\npaths = { a = 1 }\nmetadata = \"m\"\n",
        ),
    ];
    let rendered: Vec<String> = cases
        .iter()
        .map(|(n, s)| format!("## {n}\n{}", problems(n, s)))
        .collect();
    insta::assert_snapshot!(rendered.join("\n\n"));
}

#[test]
fn good_manifest_validates_into_a_corpus() {
    let c = load_manifests(&[PathBuf::from("corpora/acme-books.toml")])
        .unwrap()
        .remove(0);
    assert_eq!(c.name, "acme-books");
    assert_eq!(c.kind, CorpusKind::Prose);
    assert_eq!(c.rights, Rights::Copyrighted);
    assert_eq!(c.license.as_deref(), Some("LicenseRef-Acme-Proprietary"));
    assert_eq!(
        c.metadata.get("rights_holder").map(String::as_str),
        Some("Acme Publishing Ltd.")
    );
    assert_eq!(
        c.url_for("a/b.md").as_deref(),
        Some("https://books.example.org/a/b.md")
    );
    let (files, skipped) = c.files();
    let rels: Vec<&str> = files.iter().map(|f| f.rel.as_str()).collect();
    assert_eq!(
        rels,
        [
            "fixtures/acme-books/chapter-01.md",
            "fixtures/acme-books/chapter-02.md"
        ]
    );
    assert!(skipped.is_empty());
}

#[test]
fn problems_of_several_manifests_come_together_with_duplicate_names() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.toml");
    let b = dir.path().join("b.toml");
    let c = dir.path().join("c.toml");
    std::fs::write(&a, "name = \"same\"\nrights = \"copyrighted\"\n").unwrap();
    std::fs::write(&b, "name = \"same\"\nrights = \"licensed\"\n").unwrap();
    std::fs::write(&c, "name = \"other\"\nrights = \"nope\"\n").unwrap();
    let Err(ManifestError::Invalid(p)) = load_manifests(&[a, b, c]) else {
        panic!("expected problems")
    };
    let msg = p.to_string();
    assert_eq!(p.len(), 2, "{msg}");
    assert!(
        msg.contains("b.toml: `name`: corpus name `same` is also used by"),
        "{msg}"
    );
    assert!(
        msg.contains("c.toml:2:10: `rights`: `nope` is not one of"),
        "{msg}"
    );
}

#[test]
fn a_missing_manifest_file_is_a_clear_error() {
    let e = load_manifests(&[PathBuf::from("corpora/does-not-exist.toml")]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot read corpus manifest corpora/does-not-exist.toml:"),
        "{e}"
    );
}

#[test]
fn unindexable_files_are_skipped_counted_and_explained() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mixed");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        root.join("good.txt"),
        "a perfectly ordinary text file with some words in it",
    )
    .unwrap();
    std::fs::write(root.join("image.png"), b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap();
    std::fs::write(root.join("latin1.txt"), b"caf\xe9 au lait").unwrap();
    std::fs::write(root.join("empty.txt"), b"").unwrap();
    std::fs::write(root.join("big.txt"), "word ".repeat(300_000)).unwrap();
    std::os::unix::fs::symlink(root.join("good.txt"), root.join("link.txt")).unwrap();
    std::fs::write(
        dir.path().join("m.toml"),
        "name = \"mixed\"\nrights = \"copyrighted\"\npaths = [\"mixed\"]\n",
    )
    .unwrap();
    let corpora = load_manifests(&[dir.path().join("m.toml")]).unwrap();
    let out = dir.path().join("idx");
    let s = build(
        &corpora,
        &out,
        &BuildOptions {
            max_file_bytes: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.stats.documents, 1);
    let mut got: Vec<(String, SkipReason)> = s
        .skipped
        .iter()
        .map(|k| (k.path.clone(), k.reason))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("mixed/big.txt".to_string(), SkipReason::TooLarge),
            ("mixed/empty.txt".to_string(), SkipReason::Empty),
            ("mixed/image.png".to_string(), SkipReason::Binary),
            ("mixed/latin1.txt".to_string(), SkipReason::NotUtf8),
            ("mixed/link.txt".to_string(), SkipReason::Symlink),
        ]
    );
    let ix = verbatim::index::Index::open(&out).unwrap();
    assert_eq!(
        ix.manifest().corpora[0].skipped,
        4,
        "walk-time skips (symlinks) are listed, read-time ones counted per corpus"
    );
}

#[test]
fn a_file_that_vanishes_before_reading_is_unreadable_not_a_panic() {
    let f = SourceFile {
        abs: PathBuf::from("/nonexistent/verbatim/file.txt"),
        rel: "file.txt".into(),
        size: 10,
    };
    let (reason, detail) = read_text(&f, 1 << 20).unwrap_err();
    assert_eq!(reason, SkipReason::Unreadable);
    assert!(detail.contains("No such file"), "{detail}");
}

#[test]
fn a_linked_path_named_by_the_manifest_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir_all(real.join("sub")).unwrap();
    std::fs::write(real.join("sub/a.txt"), "some words").unwrap();
    std::fs::write(dir.path().join("single.txt"), "one file").unwrap();
    std::os::unix::fs::symlink(&real, dir.path().join("linked")).unwrap();
    std::os::unix::fs::symlink(
        dir.path().join("single.txt"),
        dir.path().join("file-link.txt"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("m.toml"),
        "name = \"l\"\nrights = \"copyrighted\"\npaths = [\"linked\", \"file-link.txt\"]\n",
    )
    .unwrap();
    let c = load_manifests(&[dir.path().join("m.toml")])
        .unwrap()
        .remove(0);
    let (files, skipped) = c.files();
    let rels: Vec<&str> = files.iter().map(|f| f.rel.as_str()).collect();
    assert_eq!(rels, ["linked/sub/a.txt", "file-link.txt"]);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(files[0].size, 10);
}
