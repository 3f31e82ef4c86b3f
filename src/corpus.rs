//! Corpus manifests (`corpora/*.toml`): what a corpus is called, where its files are, what they
//! are and under which rights. Read raw, then validated into a [`Corpus`] the rest of the code
//! can trust; every problem in every manifest is reported at once with its file, line and key.
//!
//! Also owns walking a corpus's files and deciding which are readable text. It does not
//! normalise or index anything (see [`crate::index::build`]).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::diag::{Problems, Spanned, TomlReader};
use crate::normalize::TextKind;

/// How the files of a corpus are normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CorpusKind {
    /// Prose (markdown files are read as markdown: fenced blocks are code).
    Prose,
    /// Code; the language of each file comes from its extension.
    Code,
    /// By file type: known code extensions are code, everything else prose.
    Auto,
    /// License and exception texts (read as prose); their runs are findings of kind
    /// `license-text`, identified by license. The built-in SPDX index is one.
    LicenseText,
}

/// The rights status of a corpus's works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rights {
    Copyrighted,
    Licensed,
    PublicDomain,
}

impl Rights {
    pub fn as_str(self) -> &'static str {
        match self {
            Rights::Copyrighted => "copyrighted",
            Rights::Licensed => "licensed",
            Rights::PublicDomain => "public-domain",
        }
    }
}

/// A validated corpus manifest.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub name: String,
    pub manifest: PathBuf,
    /// The manifest's directory: document paths are relative to it.
    pub root: PathBuf,
    pub kind: CorpusKind,
    pub rights: Rights,
    /// SPDX expression for the whole corpus, if the manifest gives one.
    pub license: Option<String>,
    /// Attribution URL template; `{path}` is replaced by the document path.
    pub url: Option<String>,
    pub paths: Vec<PathBuf>,
    include: Option<GlobSet>,
    exclude: GlobSet,
    /// Free metadata (`title`, `rights_holder`, …).
    pub metadata: BTreeMap<String, String>,
    /// The order in which sources of license facts are consulted; empty: the default order
    /// (see [`crate::license::resolve`]).
    pub license_order: Vec<crate::license::resolve::Source>,
    /// A Debian machine-readable copyright file (DEP-5) for the whole corpus.
    pub dep5: Option<PathBuf>,
}

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read corpus manifest {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Problems),
}

const KNOWN_KEYS: &[&str] = &[
    "name",
    "kind",
    "rights",
    "license",
    "license_order",
    "dep5",
    "url",
    "paths",
    "include",
    "exclude",
    "metadata",
];

/// Reads and validates several manifests, reporting the problems of all of them together
/// (including corpus names used twice).
pub fn load_manifests(paths: &[PathBuf]) -> Result<Vec<Corpus>, ManifestError> {
    let mut problems = Problems::default();
    let mut corpora: Vec<Corpus> = Vec::new();
    for path in paths {
        let src = fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        match parse_manifest(path, src) {
            Ok(c) => {
                if let Some(prev) = corpora.iter().find(|p| p.name == c.name) {
                    problems.0.push(crate::diag::Problem {
                        file: path.clone(),
                        line: 0,
                        column: 0,
                        key: "name".into(),
                        message: format!(
                            "corpus name `{}` is also used by {}",
                            c.name,
                            prev.manifest.display()
                        ),
                    });
                }
                corpora.push(c)
            }
            Err(p) => problems.extend(p),
        }
    }
    if problems.is_empty() {
        Ok(corpora)
    } else {
        Err(ManifestError::Invalid(problems))
    }
}

/// Validates one manifest's text; `path` locates problems and resolves relative paths.
pub fn parse_manifest(path: &Path, src: String) -> Result<Corpus, Problems> {
    let (mut r, doc) = TomlReader::parse(path, src);
    let Some(doc) = doc else {
        return Err(r.problems);
    };
    let t = doc.as_table();
    r.unknown_keys(t, "", KNOWN_KEYS);
    let root = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));

    let name = r.req_str(t, "", "name").and_then(|n| {
        let ok = !n.value.is_empty()
            && n.value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            r.problem(
                n.span.clone(),
                "name",
                "a corpus name is non-empty and uses only ASCII letters, digits, `-`, `_` and `.`",
            );
        }
        ok.then_some(n.value)
    });
    let kind = match r.opt_str(t, "", "kind") {
        None => Some(CorpusKind::Auto),
        Some(k) => parse_enum(
            &mut r,
            "kind",
            k,
            &[
                ("prose", CorpusKind::Prose),
                ("code", CorpusKind::Code),
                ("auto", CorpusKind::Auto),
                ("license-text", CorpusKind::LicenseText),
            ],
        ),
    };
    let rights = match r.req_str(t, "", "rights") {
        None => None,
        Some(k) => parse_enum(
            &mut r,
            "rights",
            k,
            &[
                ("copyrighted", Rights::Copyrighted),
                ("licensed", Rights::Licensed),
                ("public-domain", Rights::PublicDomain),
            ],
        ),
    };
    let license = r
        .opt_str(t, "", "license")
        .and_then(|l| match validate_spdx(&l.value) {
            Ok(()) => Some(l.value),
            Err(msg) => {
                r.problem(l.span, "license", msg);
                None
            }
        });
    let url = r.opt_str(t, "", "url").and_then(|u| {
        let mut rest = u.value.as_str();
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').map(|c| open + c);
            match close {
                Some(c) if &rest[open..=c] == "{path}" => rest = &rest[c + 1..],
                _ => {
                    r.problem(
                        u.span.clone(),
                        "url",
                        "the only placeholder a url template may use is `{path}`",
                    );
                    return None;
                }
            }
        }
        Some(u.value)
    });
    let mut license_order = Vec::new();
    if let Some(list) = r.opt_str_list(t, "", "license_order") {
        for (i, v) in list.into_iter().enumerate() {
            match crate::license::resolve::Source::parse(&v.value) {
                Some(s) if !license_order.contains(&s) => license_order.push(s),
                Some(_) => r.problem(v.span, &format!("license_order[{i}]"), "listed twice"),
                None => {
                    let names: Vec<String> = crate::license::resolve::Source::DEFAULT_ORDER
                        .iter()
                        .map(|s| format!("`{}`", s.as_str()))
                        .collect();
                    r.problem(
                        v.span,
                        &format!("license_order[{i}]"),
                        format!("`{}` is not one of {}", v.value, names.join(", ")),
                    )
                }
            }
        }
    }
    let dep5 = r.opt_str(t, "", "dep5").and_then(|d| {
        let p = root.join(&d.value);
        if p.is_file() {
            Some(p)
        } else {
            r.problem(
                d.span,
                "dep5",
                format!("`{}` is not a file (resolved to {})", d.value, p.display()),
            );
            None
        }
    });
    let mut paths = Vec::new();
    match r.opt_str_list(t, "", "paths") {
        None => paths.push(root.clone()),
        Some(list) => {
            if list.is_empty() {
                r.problem(t.get("paths").and_then(|i| i.span()), "paths", "is empty");
            }
            for (i, p) in list.into_iter().enumerate() {
                let abs = root.join(&p.value);
                if !abs.exists() {
                    r.problem(
                        p.span,
                        &format!("paths[{i}]"),
                        format!(
                            "`{}` does not exist (resolved to {})",
                            p.value,
                            abs.display()
                        ),
                    );
                } else {
                    paths.push(abs);
                }
            }
        }
    }
    let include = r
        .opt_str_list(t, "", "include")
        .map(|l| build_globs(&mut r, "include", l));
    let exclude = r
        .opt_str_list(t, "", "exclude")
        .map(|l| build_globs(&mut r, "exclude", l))
        .unwrap_or_else(|| Some(GlobSet::empty()));
    let mut metadata = BTreeMap::new();
    if let Some(m) = r.opt_table(t, "", "metadata") {
        for (k, v, span) in m.entries() {
            match v {
                Some(v) => {
                    metadata.insert(k, v);
                }
                None => r.problem(
                    span,
                    &format!("metadata.{k}"),
                    "metadata values are strings",
                ),
            }
        }
    }

    if !r.problems.is_empty() {
        r.problems.sort();
        return Err(r.problems);
    }
    match (
        name,
        kind,
        rights,
        include.unwrap_or(Some(GlobSet::empty())),
        exclude,
    ) {
        (Some(name), Some(kind), Some(rights), Some(include_set), Some(exclude)) => Ok(Corpus {
            name,
            manifest: path.to_path_buf(),
            root,
            kind,
            rights,
            license,
            url,
            paths,
            include: (!include_set.is_empty()).then_some(include_set),
            exclude,
            metadata,
            license_order,
            dep5,
        }),
        // Every `None` above recorded a problem, so this is unreachable in practice; report it
        // rather than panic.
        _ => {
            r.problem(None, "", "manifest is incomplete");
            Err(r.problems)
        }
    }
}

fn parse_enum<T: Copy>(
    r: &mut TomlReader,
    key: &str,
    v: Spanned<String>,
    choices: &[(&str, T)],
) -> Option<T> {
    if let Some((_, t)) = choices.iter().find(|(n, _)| *n == v.value) {
        return Some(*t);
    }
    let names: Vec<_> = choices.iter().map(|(n, _)| format!("`{n}`")).collect();
    r.problem(
        v.span,
        key,
        format!("`{}` is not one of {}", v.value, names.join(", ")),
    );
    None
}

fn build_globs(r: &mut TomlReader, key: &str, list: Vec<Spanned<String>>) -> Option<GlobSet> {
    let mut b = GlobSetBuilder::new();
    let mut ok = true;
    for (i, g) in list.into_iter().enumerate() {
        match Glob::new(&g.value) {
            Ok(glob) => {
                b.add(glob);
            }
            Err(e) => {
                ok = false;
                r.problem(
                    g.span,
                    &format!("{key}[{i}]"),
                    format!("invalid glob: {}", e.kind()),
                );
            }
        }
    }
    if !ok {
        return None;
    }
    match b.build() {
        Ok(set) => Some(set),
        Err(e) => {
            r.problem(None, key, format!("invalid globs: {e}"));
            None
        }
    }
}

/// Checks an SPDX license expression (`NOASSERTION` is accepted as "unknown"). Deprecated
/// identifiers (`GPL-3.0`, meaning `GPL-3.0-only`) are still SPDX and common in the wild, so they
/// are accepted; unknown identifiers are not (they are usually typos).
pub fn validate_spdx(expr: &str) -> Result<(), String> {
    if expr == "NOASSERTION" {
        return Ok(());
    }
    let mode = spdx::ParseMode {
        allow_deprecated: true,
        allow_postfix_plus_on_gpl: true,
        ..spdx::ParseMode::STRICT
    };
    spdx::Expression::parse_mode(expr, mode)
        .map(|_| ())
        .map_err(|e| format!("invalid SPDX expression `{expr}`: {}", e.reason))
}

/// A file of a corpus, found by [`Corpus::files`].
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub abs: PathBuf,
    /// Path within the corpus, `/`-separated, relative to the manifest's directory.
    pub rel: String,
    pub size: u64,
}

/// Why a file was not indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    Unreadable,
    Binary,
    NotUtf8,
    TooLarge,
    Symlink,
    Empty,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Unreadable => "unreadable",
            SkipReason::Binary => "binary",
            SkipReason::NotUtf8 => "not-utf8",
            SkipReason::TooLarge => "too-large",
            SkipReason::Symlink => "symlink",
            SkipReason::Empty => "empty",
        }
    }
}

/// A file that was passed over, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub corpus: String,
    pub path: String,
    pub reason: SkipReason,
    pub detail: String,
}

impl Corpus {
    /// The corpus's files in a stable order, and the entries passed over while walking.
    pub fn files(&self) -> (Vec<SourceFile>, Vec<Skipped>) {
        let mut files = Vec::new();
        let mut skipped = Vec::new();
        for base in &self.paths {
            for entry in walkdir::WalkDir::new(base)
                .follow_links(false)
                .sort_by_file_name()
            {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        let path = e
                            .path()
                            .map(|p| self.rel_path(p))
                            .unwrap_or_else(|| self.rel_path(base));
                        skipped.push(Skipped {
                            corpus: self.name.clone(),
                            path,
                            reason: SkipReason::Unreadable,
                            detail: e.to_string(),
                        });
                        continue;
                    }
                };
                let rel = self.rel_path(entry.path());
                if !self.selected(&rel) {
                    continue;
                }
                // A path the manifest names is followed even if it is a link (walkdir follows
                // roots); links found below it are not.
                let ft = if entry.depth() == 0 && entry.path_is_symlink() {
                    match fs::metadata(entry.path()) {
                        Ok(m) => m.file_type(),
                        Err(e) => {
                            skipped.push(Skipped {
                                corpus: self.name.clone(),
                                path: rel,
                                reason: SkipReason::Unreadable,
                                detail: e.to_string(),
                            });
                            continue;
                        }
                    }
                } else {
                    entry.file_type()
                };
                if ft.is_symlink() {
                    skipped.push(Skipped {
                        corpus: self.name.clone(),
                        path: rel,
                        reason: SkipReason::Symlink,
                        detail: "symbolic links are not followed".into(),
                    });
                } else if ft.is_file() {
                    let size = fs::metadata(entry.path()).map(|m| m.len()).unwrap_or(0);
                    files.push(SourceFile {
                        abs: entry.path().to_path_buf(),
                        rel,
                        size,
                    });
                }
            }
        }
        files.dedup_by(|a, b| a.abs == b.abs);
        (files, skipped)
    }

    fn selected(&self, rel: &str) -> bool {
        if self.exclude.is_match(rel) {
            return false;
        }
        match &self.include {
            Some(inc) => inc.is_match(rel),
            None => true,
        }
    }

    fn rel_path(&self, p: &Path) -> String {
        let rel = p.strip_prefix(&self.root).unwrap_or(p);
        let s = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        if s.is_empty() { ".".into() } else { s }
    }

    /// How a file of this corpus is normalised.
    pub fn text_kind(&self, rel: &str) -> TextKind {
        match self.kind {
            CorpusKind::Prose => match TextKind::from_path(Path::new(rel)) {
                TextKind::Markdown => TextKind::Markdown,
                TextKind::Prose | TextKind::Code(_) | TextKind::ToolArgs | TextKind::Patch(_) => {
                    TextKind::Prose
                }
            },
            CorpusKind::Code => match TextKind::from_path(Path::new(rel)) {
                TextKind::Code(l) | TextKind::Patch(l) => TextKind::Code(l),
                TextKind::Markdown | TextKind::Prose | TextKind::ToolArgs => {
                    TextKind::Code(crate::normalize::Lang::C_LIKE)
                }
            },
            CorpusKind::Auto => TextKind::from_path(Path::new(rel)),
            CorpusKind::LicenseText => TextKind::Prose,
        }
    }

    /// The attribution URL of a document, if the manifest gives a template.
    pub fn url_for(&self, rel: &str) -> Option<String> {
        self.url.as_ref().map(|t| t.replace("{path}", rel))
    }
}

/// Reads a corpus file as text, or says why it is skipped. Binary means a NUL byte in the first
/// 8 KiB (the same test git and ripgrep use).
pub fn read_text(file: &SourceFile, max_bytes: u64) -> Result<String, (SkipReason, String)> {
    if file.size > max_bytes {
        return Err((
            SkipReason::TooLarge,
            format!("{} bytes is over the {max_bytes}-byte limit", file.size),
        ));
    }
    let bytes = fs::read(&file.abs).map_err(|e| (SkipReason::Unreadable, e.to_string()))?;
    if bytes.is_empty() {
        return Err((SkipReason::Empty, "no bytes".into()));
    }
    if bytes.len() as u64 > max_bytes {
        return Err((
            SkipReason::TooLarge,
            format!("{} bytes is over the {max_bytes}-byte limit", bytes.len()),
        ));
    }
    if memchr_nul(&bytes[..bytes.len().min(8192)]) {
        return Err((SkipReason::Binary, "NUL byte in the first 8 KiB".into()));
    }
    String::from_utf8(bytes).map_err(|e| {
        (
            SkipReason::NotUtf8,
            format!("invalid UTF-8 at byte {}", e.utf8_error().valid_up_to()),
        )
    })
}

fn memchr_nul(b: &[u8]) -> bool {
    b.contains(&0)
}
