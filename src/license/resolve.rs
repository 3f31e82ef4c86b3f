//! Which license each corpus file is under, and how that was found out.
//!
//! In this order unless the manifest's `license_order` says otherwise: the manifest's explicit
//! `license`; for a `license-text` corpus, the identification of the file's own text; an
//! `SPDX-License-Identifier` in the file; the nearest LICENSE/LICENCE/COPYING/NOTICE file
//! (identified by its text); the nearest package manifest (`Cargo.toml`, `package.json`,
//! `pyproject.toml`, `PKG-INFO`, `METADATA`); a Debian machine-readable `debian/copyright`
//! (DEP-5, per-file globs, the last matching paragraph wins); otherwise `NOASSERTION`. The
//! answers of the sources not used are kept when they disagree, so `verbatim corpus inspect`
//! shows conflicts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use super::identify::LicenseDb;
use crate::corpus::{Corpus, CorpusKind, SourceFile};

/// A source of license facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Manifest,
    LicenseText,
    SpdxIdentifier,
    LicenseFile,
    PackageManifest,
    DebianCopyright,
}

impl Source {
    pub const DEFAULT_ORDER: [Source; 6] = [
        Source::Manifest,
        Source::LicenseText,
        Source::SpdxIdentifier,
        Source::LicenseFile,
        Source::PackageManifest,
        Source::DebianCopyright,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Manifest => "manifest",
            Source::LicenseText => "license-text",
            Source::SpdxIdentifier => "spdx-identifier",
            Source::LicenseFile => "license-file",
            Source::PackageManifest => "package-manifest",
            Source::DebianCopyright => "debian-copyright",
        }
    }

    pub fn parse(s: &str) -> Option<Source> {
        Source::DEFAULT_ORDER.into_iter().find(|x| x.as_str() == s)
    }
}

/// One source's answer: the expression and where it was read (a file, relative to the corpus).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fact {
    pub source: Source,
    pub expression: String,
    pub from: Option<String>,
}

/// A file's license: the fact used, and the facts of other sources that disagree with it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resolution {
    pub expression: String,
    /// The source used, or `none`.
    pub source: String,
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Fact>,
}

/// Resolves licenses for the files of corpora; what it learns about a directory (its license
/// files, package manifest, DEP-5 file) is cached, so a corpus of many files costs one look
/// per directory. Safe to share between threads.
#[derive(Default)]
pub struct Resolver {
    dirs: Mutex<HashMap<(PathBuf, Source), Option<Fact>>>,
    dep5: Mutex<HashMap<PathBuf, Option<Vec<Dep5Paragraph>>>>,
}

/// Identification of a license file must be this good to count.
const MIN_LICENSE_FILE_SCORE: f64 = 0.8;

impl Resolver {
    pub fn new() -> Resolver {
        Resolver::default()
    }

    /// The license of `file` (whose text is `text`) in `corpus`.
    pub fn resolve(&self, corpus: &Corpus, file: &SourceFile, text: &str) -> Resolution {
        let order = if corpus.license_order.is_empty() {
            Source::DEFAULT_ORDER.to_vec()
        } else {
            corpus.license_order.clone()
        };
        let mut facts: Vec<Fact> = Vec::new();
        for s in order {
            if let Some(f) = self.fact(s, corpus, file, text) {
                facts.push(f);
            }
        }
        let Some(first) = facts.first().cloned() else {
            return Resolution {
                expression: "NOASSERTION".into(),
                source: "none".into(),
                from: None,
                conflicts: Vec::new(),
            };
        };
        let same = |a: &str, b: &str| {
            let norm = |e: &str| {
                spdx::Expression::canonicalize(e)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| e.to_string())
            };
            norm(a) == norm(b)
        };
        Resolution {
            conflicts: facts[1..]
                .iter()
                .filter(|f| !same(&f.expression, &first.expression))
                .cloned()
                .collect(),
            expression: first.expression,
            source: first.source.as_str().into(),
            from: first.from,
        }
    }

    fn fact(&self, s: Source, corpus: &Corpus, file: &SourceFile, text: &str) -> Option<Fact> {
        let fact = |expression: String, from: Option<String>| Fact {
            source: s,
            expression,
            from,
        };
        match s {
            Source::Manifest => corpus.license.clone().map(|l| fact(l, None)),
            Source::LicenseText => {
                if corpus.kind != CorpusKind::LicenseText {
                    return None;
                }
                let id = LicenseDb::builtin().identify(text)?;
                (id.score >= MIN_LICENSE_FILE_SCORE).then(|| fact(id.id, None))
            }
            Source::SpdxIdentifier => {
                // Identifiers stand in a file's header; the first 8 KiB is plenty.
                let mut end = text.len().min(8 << 10);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                super::markers::scan(&text[..end])
                    .into_iter()
                    .find(|m| m.kind == super::markers::MarkerKind::SpdxIdentifier)
                    .and_then(|m| m.expression)
                    .map(|e| fact(e, None))
            }
            Source::LicenseFile | Source::PackageManifest | Source::DebianCopyright => {
                // Walk up from the file's directory to the corpus root.
                let mut dir = file.abs.parent()?.to_path_buf();
                loop {
                    let found = match s {
                        Source::DebianCopyright => self.dep5_fact(&dir, corpus, file),
                        _ => self.dir_fact(&dir, s, corpus),
                    };
                    if let Some(f) = found {
                        return Some(f);
                    }
                    if dir == corpus.root || !dir.starts_with(&corpus.root) {
                        break;
                    }
                    dir = dir.parent()?.to_path_buf();
                }
                // An explicit DEP-5 file from the manifest.
                if s == Source::DebianCopyright
                    && let Some(p) = &corpus.dep5
                {
                    let rel = &file.rel;
                    return self
                        .dep5_paragraphs(p)
                        .and_then(|ps| dep5_license(&ps, rel))
                        .map(|e| fact(e, Some(rel_to(&corpus.root, p))));
                }
                None
            }
        }
    }

    fn dir_fact(&self, dir: &Path, s: Source, corpus: &Corpus) -> Option<Fact> {
        let key = (dir.to_path_buf(), s);
        if let Some(f) = self.dirs.lock().ok()?.get(&key) {
            return f.clone();
        }
        let f = match s {
            Source::LicenseFile => license_files(dir, &corpus.root),
            _ => package_manifest(dir, &corpus.root),
        };
        if let Ok(mut m) = self.dirs.lock() {
            m.insert(key, f.clone());
        }
        f
    }

    fn dep5_fact(&self, dir: &Path, corpus: &Corpus, file: &SourceFile) -> Option<Fact> {
        let path = dir.join("debian").join("copyright");
        let ps = self.dep5_paragraphs(&path)?;
        // Globs are relative to the package root (the directory holding `debian/`).
        let rel = file
            .abs
            .strip_prefix(dir)
            .ok()?
            .to_string_lossy()
            .replace('\\', "/");
        dep5_license(&ps, &rel).map(|e| Fact {
            source: Source::DebianCopyright,
            expression: e,
            from: Some(rel_to(&corpus.root, &path)),
        })
    }

    fn dep5_paragraphs(&self, path: &Path) -> Option<Vec<Dep5Paragraph>> {
        if let Some(p) = self.dep5.lock().ok()?.get(path) {
            return p.clone();
        }
        let parsed = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| parse_dep5(&t));
        if let Ok(mut m) = self.dep5.lock() {
            m.insert(path.to_path_buf(), parsed.clone());
        }
        parsed
    }
}

fn rel_to(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .replace('\\', "/")
}

/// The license files of a directory, identified by text. Several files named for their
/// license (`LICENSE-MIT`, `LICENSE-APACHE`) are the usual dual-license: OR; otherwise AND.
fn license_files(dir: &Path, root: &Path) -> Option<Fact> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().to_uppercase())
                .unwrap_or_default();
            ["LICENSE", "LICENCE", "COPYING", "NOTICE", "UNLICENSE"]
                .iter()
                .any(|s| n.starts_with(s))
        })
        .collect();
    names.sort();
    let mut ids: Vec<String> = Vec::new();
    let mut from = Vec::new();
    for p in &names {
        let Ok(t) = std::fs::read_to_string(p) else {
            continue;
        };
        if let Some(id) = LicenseDb::builtin().identify(&t)
            && id.score >= MIN_LICENSE_FILE_SCORE
            && !ids.contains(&id.id)
        {
            ids.push(id.id);
            from.push(rel_to(root, p));
        }
    }
    if ids.is_empty() {
        return None;
    }
    // LGPL-3.0 is a set of permissions added to GPL-3.0, and projects under it ship both texts
    // (COPYING and COPYING.LESSER): the pair means LGPL-3.0.
    if ids.iter().any(|i| i.starts_with("LGPL-3.0"))
        && let Some(i) = ids.iter().position(|i| i.starts_with("GPL-3.0"))
    {
        ids.remove(i);
        from.remove(i);
    }
    let dual = names.len() > 1
        && names.iter().all(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(['-', '.', '_']))
        });
    Some(Fact {
        source: Source::LicenseFile,
        expression: ids.join(if dual { " OR " } else { " AND " }),
        from: Some(from.join(", ")),
    })
}

/// The license a package manifest in `dir` declares.
fn package_manifest(dir: &Path, root: &Path) -> Option<Fact> {
    let fact = |e: String, p: &Path| {
        let e = spdx::Expression::canonicalize(&e)
            .ok()
            .flatten()
            .unwrap_or(e);
        spdx::Expression::parse(&e).ok().map(|_| Fact {
            source: Source::PackageManifest,
            expression: e,
            from: Some(rel_to(root, p)),
        })
    };
    let cargo = dir.join("Cargo.toml");
    if let Ok(t) = std::fs::read_to_string(&cargo)
        && let Ok(v) = t.parse::<toml_edit::DocumentMut>()
        && let Some(l) = v
            .get("package")
            .and_then(|p| p.get("license"))
            .and_then(|l| l.as_str())
    {
        return fact(l.replace('/', " OR "), &cargo);
    }
    let npm = dir.join("package.json");
    if let Ok(t) = std::fs::read_to_string(&npm)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&t)
        && let Some(l) = v.get("license").and_then(|l| l.as_str())
    {
        return fact(l.to_string(), &npm);
    }
    let py = dir.join("pyproject.toml");
    if let Ok(t) = std::fs::read_to_string(&py)
        && let Ok(v) = t.parse::<toml_edit::DocumentMut>()
        && let Some(l) = v.get("project").and_then(|p| p.get("license"))
    {
        // PEP 639: a string expression; older: a table with `text`.
        let s = l
            .as_str()
            .or_else(|| l.get("text").and_then(|t| t.as_str()));
        if let Some(s) = s {
            return fact(s.to_string(), &py);
        }
    }
    for name in ["PKG-INFO", "METADATA"] {
        let p = dir.join(name);
        if let Ok(t) = std::fs::read_to_string(&p) {
            let header = t.split("\n\n").next().unwrap_or("");
            let get = |k: &str| {
                header
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty() && v != "UNKNOWN")
            };
            if let Some(l) = get("License-Expression:").or_else(|| get("License:")) {
                return fact(l, &p);
            }
        }
    }
    None
}

#[derive(Debug, Clone)]
struct Dep5Paragraph {
    globs: globset::GlobSet,
    license: String,
}

/// Debian's short license names that are not SPDX ids.
const DEBIAN_NAMES: &[(&str, &str)] = &[
    ("Expat", "MIT"),
    ("GPL-1", "GPL-1.0-only"),
    ("GPL-1+", "GPL-1.0-or-later"),
    ("GPL-2", "GPL-2.0-only"),
    ("GPL-2+", "GPL-2.0-or-later"),
    ("GPL-3", "GPL-3.0-only"),
    ("GPL-3+", "GPL-3.0-or-later"),
    ("LGPL-2", "LGPL-2.0-only"),
    ("LGPL-2+", "LGPL-2.0-or-later"),
    ("LGPL-2.1", "LGPL-2.1-only"),
    ("LGPL-2.1+", "LGPL-2.1-or-later"),
    ("LGPL-3", "LGPL-3.0-only"),
    ("LGPL-3+", "LGPL-3.0-or-later"),
    ("AGPL-3", "AGPL-3.0-only"),
    ("AGPL-3+", "AGPL-3.0-or-later"),
    ("BSD-2-clause", "BSD-2-Clause"),
    ("BSD-3-clause", "BSD-3-Clause"),
    ("BSD-4-clause", "BSD-4-Clause"),
    ("Apache-2", "Apache-2.0"),
    ("MPL-2", "MPL-2.0"),
    ("public-domain", "LicenseRef-public-domain"),
    ("PSF-2", "PSF-2.0"),
    ("Python", "Python-2.0"),
    ("Zlib", "Zlib"),
];

/// A DEP-5 license field (`GPL-2+ or Artistic`, `BSD-3-clause and Expat`) as SPDX.
fn dep5_expression(field: &str) -> Option<String> {
    let mut out = Vec::new();
    for tok in field.split_whitespace() {
        let t = tok.trim_matches(|c| c == '(' || c == ')' || c == ',');
        let mapped = match t.to_ascii_lowercase().as_str() {
            "or" => "OR".to_string(),
            "and" => "AND".to_string(),
            "with" => "WITH".to_string(),
            _ => DEBIAN_NAMES
                .iter()
                .find(|(d, _)| d.eq_ignore_ascii_case(t))
                .map(|(_, s)| s.to_string())
                .unwrap_or_else(|| t.to_string()),
        };
        out.push(mapped);
    }
    let e = out.join(" ");
    let e = spdx::Expression::canonicalize(&e)
        .ok()
        .flatten()
        .unwrap_or(e);
    spdx::Expression::parse_mode(&e, spdx::ParseMode::LAX)
        .ok()
        .map(|_| e)
}

fn parse_dep5(text: &str) -> Option<Vec<Dep5Paragraph>> {
    if !text.starts_with("Format:") {
        return None; // not machine-readable
    }
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let mut files: Option<String> = None;
        let mut license: Option<String> = None;
        let mut last: Option<&str> = None;
        for line in para.lines() {
            if line.starts_with([' ', '\t']) {
                if last == Some("Files")
                    && let Some(f) = &mut files
                {
                    f.push(' ');
                    f.push_str(line.trim());
                }
                continue;
            }
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            last = Some(k);
            match k {
                "Files" => files = Some(v.trim().to_string()),
                "License" => license = Some(v.trim().to_string()),
                _ => {}
            }
        }
        let (Some(files), Some(license)) = (files, license) else {
            continue;
        };
        let Some(expr) = dep5_expression(&license) else {
            continue;
        };
        let mut b = globset::GlobSetBuilder::new();
        for g in files.split_whitespace() {
            // DEP-5: `*` also matches `/`; globset's default does the same.
            if let Ok(g) = globset::Glob::new(g) {
                b.add(g);
            }
        }
        if let Ok(globs) = b.build() {
            out.push(Dep5Paragraph {
                globs,
                license: expr,
            });
        }
    }
    Some(out)
}

/// The license of `rel` under DEP-5 paragraphs: the last matching paragraph wins.
fn dep5_license(ps: &[Dep5Paragraph], rel: &str) -> Option<String> {
    ps.iter()
        .rev()
        .find(|p| p.globs.is_match(rel))
        .map(|p| p.license.clone())
}
