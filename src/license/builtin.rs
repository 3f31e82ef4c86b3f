//! The built-in index: every SPDX license and exception text the `spdx` crate ships, as a
//! corpus of kind `license-text`, built once (about a second) into a cache directory and
//! reused; `verbatim serve` and `verbatim scan` use it with no configuration, offline.
//!
//! The cache entry's name carries a digest of the texts and Verbatim's version, so a new
//! license list or a new index format builds a new entry. Two processes starting at once both
//! build; the index builder's atomic rename lets one win and the other use its result.

use std::io::Write;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

use super::texts;
use crate::corpus::parse_manifest;
use crate::index::Index;
use crate::index::build::{BuildError, BuildOptions, build};

/// Where caches go: `$VERBATIM_CACHE_DIR`, else `$XDG_CACHE_HOME/verbatim`, else
/// `$HOME/.cache/verbatim`, else a folder in the system's temporary directory.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VERBATIM_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("verbatim");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h).join(".cache").join("verbatim");
    }
    std::env::temp_dir().join("verbatim-cache")
}

/// Bumped whenever what goes into the built-in index changes (its documents, their resolved
/// licenses, the build parameters) without the texts or the index format changing.
const REVISION: u32 = 3;

/// The name of the built-in index's cache entry for this build of Verbatim.
pub fn entry_name() -> String {
    let mut h = Xxh3::new();
    for t in texts::all() {
        h.update(t.id.as_bytes());
        h.update(&[0]);
        h.update(t.text.as_bytes());
        h.update(&[0]);
    }
    format!(
        "spdx-licenses-{:016x}-v{}-r{REVISION}-{}",
        h.digest(),
        crate::index::format::FORMAT_VERSION,
        env!("CARGO_PKG_VERSION")
    )
}

/// Why the built-in index could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    #[error("cannot write the license texts under {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the built-in license index: {0}")]
    Build(#[from] BuildError),
    #[error("the built-in license corpus manifest is invalid: {0}")]
    Manifest(String),
}

/// The built-in index's directory under `cache`, built first if it is not there (or does not
/// open).
pub fn ensure(cache: &Path) -> Result<PathBuf, BuiltinError> {
    let out = cache.join(entry_name());
    if Index::open(&out).is_ok() {
        return Ok(out);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuiltinError::Io { path, source }
    };
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    // One builder at a time. Processes that start together (several `serve`s after an
    // upgrade, tests in parallel) would otherwise each remove and replace the entry while
    // another is opening or renaming it; now the others wait for the first build and use it.
    // The lock is released when `lock` is dropped (or the process dies).
    let lock_path = cache.join(format!("{}.lock", entry_name()));
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    if Index::open(&out).is_ok() {
        return Ok(out);
    }
    // A stale entry of the same name (a broken earlier build) is replaced.
    if out.exists() {
        let _ = std::fs::remove_dir_all(&out);
    }
    let work = tempfile::Builder::new()
        .prefix(".spdx-texts-")
        .tempdir_in(cache)
        .map_err(io(cache))?;
    let dir = work.path().join("texts");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    for t in texts::all() {
        let p = dir.join(t.id);
        let mut f = std::fs::File::create(&p).map_err(io(&p))?;
        f.write_all(t.text.as_bytes()).map_err(io(&p))?;
    }
    let manifest = work.path().join("spdx-licenses.toml");
    let src = "# Built by Verbatim from the `spdx` crate's texts.\nname = \"spdx-licenses\"\nkind = \"license-text\"\nrights = \"licensed\"\nurl = \"https://spdx.org/licenses/{path}.html\"\npaths = [\"texts\"]\n[metadata]\ntitle = \"SPDX license and exception texts\"\n";
    std::fs::write(&manifest, src).map_err(io(&manifest))?;
    let mut corpus = parse_manifest(&manifest, src.to_string())
        .map_err(|p| BuiltinError::Manifest(p.to_string()))?;
    // Documents are named by id (`texts/MIT` → `MIT`), so the URL template gives the SPDX page.
    corpus.root = dir.clone();
    corpus.paths = vec![dir];
    let mut opts = BuildOptions::default();
    // License texts share whole paragraphs across dozens of variants (the MIT grant, the GPL
    // preamble): here that is expected, not boilerplate, and identification tells them apart.
    opts.params.common_threshold = u32::MAX;
    // License texts are prose: the rename-insensitive code channel would hold nothing, and a
    // scan would still compute and probe its keys for every code unit of every answer.
    opts.params.renamed = None;
    let built = build(&[corpus], &out, &opts);
    drop(lock);
    match built {
        Ok(_) => Ok(out),
        // Another process built it meanwhile (one of an older Verbatim that does not lock).
        Err(BuildError::OutputIsIndex(_)) if Index::open(&out).is_ok() => Ok(out),
        Err(e) => Err(e.into()),
    }
}
