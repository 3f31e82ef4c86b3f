//! License resolution for corpus files: each source of license facts, their order, a manifest
//! that changes the order, and conflicting sources reported.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::collections::BTreeMap;
use std::path::Path;

use verbatim::corpus::{Corpus, parse_manifest, read_text};
use verbatim::license::resolve::{Resolution, Resolver};
use verbatim::license::texts;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn license(id: &str) -> String {
    format!(
        "Copyright (c) 2021 Some Holder\n\n{}",
        texts::text_of(id).unwrap().text
    )
}

/// A tree with one directory per source of license facts.
fn tree(root: &Path) {
    write(root, "a/LICENSE", &license("MIT"));
    write(root, "a/src/lib.rs", "pub fn a() {}\n");
    write(
        root,
        "a/src/other.rs",
        "// SPDX-License-Identifier: Apache-2.0\npub fn b() {}\n",
    );
    write(
        root,
        "b/Cargo.toml",
        "[package]\nname = \"b\"\nversion = \"1.0.0\"\nlicense = \"MIT/Apache-2.0\"\n",
    );
    write(root, "b/src/main.rs", "fn main() {}\n");
    write(
        root,
        "c/package.json",
        "{\"name\": \"c\", \"license\": \"ISC\"}",
    );
    write(root, "c/index.js", "module.exports = 1;\n");
    write(
        root,
        "d/pyproject.toml",
        "[project]\nname = \"d\"\nlicense = {text = \"BSD-3-Clause\"}\n",
    );
    write(root, "d/d/__init__.py", "x = 1\n");
    write(
        root,
        "e/PKG-INFO",
        "Metadata-Version: 2.4\nName: e\nLicense-Expression: LGPL-2.1-or-later\n\nLong description. License: MIT\n",
    );
    write(root, "e/e.py", "y = 2\n");
    write(
        root,
        "f/debian/copyright",
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: f\n\nFiles: *\nCopyright: 2001 F Authors\nLicense: GPL-2+\n\nFiles: src/vendor/*\n third_party/*\nCopyright: 2010 V\nLicense: Expat\n",
    );
    write(root, "f/src/main.c", "int main(void) { return 0; }\n");
    write(root, "f/src/vendor/v.c", "int v;\n");
    write(root, "f/third_party/t.c", "int t;\n");
    write(root, "g/LICENSE-MIT", &license("MIT"));
    write(
        root,
        "g/LICENSE-APACHE",
        texts::text_of("Apache-2.0").unwrap().text,
    );
    write(root, "g/src/lib.rs", "pub fn g() {}\n");
    write(root, "h/notes.txt", "nothing about licenses here\n");
    write(
        root,
        "i/COPYING",
        texts::text_of("GPL-3.0-only").unwrap().text,
    );
    write(
        root,
        "i/COPYING.LESSER",
        texts::text_of("LGPL-3.0-only").unwrap().text,
    );
    write(root, "i/lib.c", "int i;\n");
}

fn resolve_all(root: &Path, manifest: &str) -> BTreeMap<String, Resolution> {
    let path = root.join("corpus.toml");
    std::fs::write(&path, manifest).unwrap();
    let c: Corpus = parse_manifest(&path, manifest.to_string()).unwrap();
    let (files, _) = c.files();
    let r = Resolver::new();
    files
        .iter()
        .filter(|f| !f.rel.ends_with("corpus.toml"))
        .map(|f| {
            let text = read_text(f, 1 << 20).unwrap();
            (f.rel.clone(), r.resolve(&c, f, &text))
        })
        .collect()
}

fn got(m: &BTreeMap<String, Resolution>, rel: &str) -> (String, String) {
    let r = &m[rel];
    (r.expression.clone(), r.source.clone())
}

#[test]
fn each_source_of_license_facts_in_the_default_order() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    let m = resolve_all(dir.path(), "name = \"t\"\nrights = \"licensed\"\n");
    let want = [
        ("a/src/lib.rs", "MIT", "license-file"),
        ("a/src/other.rs", "Apache-2.0", "spdx-identifier"),
        ("b/src/main.rs", "MIT OR Apache-2.0", "package-manifest"),
        ("c/index.js", "ISC", "package-manifest"),
        ("d/d/__init__.py", "BSD-3-Clause", "package-manifest"),
        ("e/e.py", "LGPL-2.1-or-later", "package-manifest"),
        ("f/src/main.c", "GPL-2.0-or-later", "debian-copyright"),
        ("f/src/vendor/v.c", "MIT", "debian-copyright"),
        ("f/third_party/t.c", "MIT", "debian-copyright"),
        ("g/src/lib.rs", "Apache-2.0 OR MIT", "license-file"),
        ("h/notes.txt", "NOASSERTION", "none"),
        // GPL-3.0 shipped beside LGPL-3.0 is LGPL-3.0's base, not a second license.
        ("i/lib.c", "LGPL-3.0-only", "license-file"),
    ];
    for (rel, expr, source) in want {
        assert_eq!(got(&m, rel), (expr.into(), source.into()), "{rel}");
    }
    assert_eq!(m["a/src/lib.rs"].from.as_deref(), Some("a/LICENSE"));
    assert_eq!(m["b/src/main.rs"].from.as_deref(), Some("b/Cargo.toml"));
    assert_eq!(
        m["f/src/main.c"].from.as_deref(),
        Some("f/debian/copyright")
    );
    // The file's own identifier wins over its directory's LICENSE, and the disagreement shows.
    let c = &m["a/src/other.rs"].conflicts;
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].expression, "MIT");
    assert!(m["a/src/lib.rs"].conflicts.is_empty());
    // The license files themselves are resolved too (the LICENSE is MIT by its own text).
    assert_eq!(got(&m, "a/LICENSE"), ("MIT".into(), "license-file".into()));
}

#[test]
fn the_manifest_license_wins_and_conflicts_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    let m = resolve_all(
        dir.path(),
        "name = \"t\"\nrights = \"licensed\"\nlicense = \"GPL-3.0-only\"\n",
    );
    assert_eq!(
        got(&m, "b/src/main.rs"),
        ("GPL-3.0-only".into(), "manifest".into())
    );
    let c: Vec<&str> = m["b/src/main.rs"]
        .conflicts
        .iter()
        .map(|f| f.source.as_str())
        .collect();
    assert_eq!(c, ["package-manifest"]);
    assert_eq!(
        got(&m, "h/notes.txt"),
        ("GPL-3.0-only".into(), "manifest".into())
    );
}

#[test]
fn a_manifest_can_change_the_order() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    write(
        dir.path(),
        "a/Cargo.toml",
        "[package]\nname = \"a\"\nversion = \"0.1.0\"\nlicense = \"Zlib\"\n",
    );
    let m = resolve_all(
        dir.path(),
        "name = \"t\"\nrights = \"licensed\"\nlicense_order = [\"package-manifest\", \"spdx-identifier\"]\n",
    );
    assert_eq!(
        got(&m, "a/src/other.rs"),
        ("Zlib".into(), "package-manifest".into())
    );
    // Sources left out of the order are not consulted at all.
    assert_eq!(
        got(&m, "f/src/main.c"),
        ("NOASSERTION".into(), "none".into())
    );
}

#[test]
fn a_license_text_corpus_is_resolved_by_identifying_each_text() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "texts/one",
        texts::text_of("BSD-2-Clause").unwrap().text,
    );
    write(dir.path(), "texts/two", &license("GPL-3.0-only"));
    let m = resolve_all(
        dir.path(),
        "name = \"t\"\nkind = \"license-text\"\nrights = \"licensed\"\n",
    );
    assert_eq!(
        got(&m, "texts/one"),
        ("BSD-2-Clause".into(), "license-text".into())
    );
    assert_eq!(
        got(&m, "texts/two"),
        ("GPL-3.0-only".into(), "license-text".into())
    );
}
