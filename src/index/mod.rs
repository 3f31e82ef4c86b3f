//! The fingerprint index: an immutable directory built offline by [`build`] and opened
//! read-only with memory maps, so any number of processes share one copy through the page
//! cache.
//!
//! Layout (see `docs/index-format.md`): a JSON manifest (format version, parameters, corpora and
//! their digests, checksums of every file), the document store (`docs.jsonl`, loaded into RAM),
//! the membership filter (a one-word-per-key Bloom filter, [`bloom`], loaded into RAM), and three memory-mapped
//! arrays: postings (sampled k-gram key → document, unit position), the unit store (a 32-bit
//! hash per unit of every document, for verification and extension) and unit spans (byte range
//! of each unit in its document, for citing the source).
//!
//! Opening checks the format version, every file's size and header, and the document table
//! against the arrays; `verify` also checks every file's checksum. Every access is bounds
//! checked, so a damaged index yields errors or no matches, never a panic.

pub mod bloom;
pub mod build;
pub mod format;

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use xorf::{BinaryFuse16, Filter};

use crate::corpus::Rights;
pub use format::{ChannelParams, FORMAT_VERSION, Params, Posting};
use format::{CommonKey, HEADER_LEN, Header, Span};

/// The manifest: what the index is, how it was built, from what.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// The verbatim version that built it.
    pub generator: String,
    pub params: Params,
    /// A content identifier: hash of all corpus digests and parameters.
    pub index_id: String,
    pub corpora: Vec<CorpusEntry>,
    pub stats: IndexStats,
    /// File name → size and xxh3-64 checksum (hex).
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CorpusEntry {
    pub name: String,
    pub kind: crate::corpus::CorpusKind,
    pub rights: Rights,
    pub license: Option<String>,
    pub url: Option<String>,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub documents: u64,
    pub bytes: u64,
    pub skipped: u64,
    /// xxh3-64 over every indexed file's path and content hash, in order.
    pub digest: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexStats {
    pub documents: u64,
    pub units: u64,
    pub postings: u64,
    pub distinct_keys: u64,
    pub common_keys: u64,
    pub corpus_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub xxh3: String,
}

/// A document of the index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocMeta {
    /// Index into the manifest's corpora.
    pub corpus: u32,
    /// Path within the corpus.
    pub path: String,
    pub url: Option<String>,
    /// SPDX expression, or `NOASSERTION`.
    pub license: String,
    /// Where the license came from: `manifest`, `license-text`, `spdx-identifier`,
    /// `license-file`, `package-manifest`, `debian-copyright` or `none`.
    pub license_source: String,
    /// The file the license was read from (relative to the corpus), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license_from: Option<String>,
    /// Other sources that disagree, as `source: expression`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub license_conflicts: Vec<String>,
    /// `prose` (markdown-aware) or `code`.
    pub text: String,
    pub bytes: u64,
    /// First unit in the unit store.
    pub unit_start: u64,
    pub units: u32,
    /// xxh3-64 of the file's bytes (hex).
    pub xxh3: String,
}

/// Why an index could not be opened or verified. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum IndexOpenError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a verbatim index (no {})", dir.display(), format::MANIFEST)]
    NotAnIndex { dir: PathBuf },
    #[error(
        "index {} has format version {found}, this verbatim reads version {expected}: rebuild it with `verbatim index build`",
        dir.display()
    )]
    FormatVersion {
        dir: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("index file {} is corrupt: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
}

fn corrupt(path: &Path, detail: impl Into<String>) -> IndexOpenError {
    IndexOpenError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// An open, read-only index.
pub struct Index {
    dir: PathBuf,
    manifest: Manifest,
    docs: Vec<DocMeta>,
    /// Where each document's units start in the unit store, and where the last one's end
    /// (documents follow on, checked at open): a document's units are between two adjacent
    /// entries. Kept apart from `docs`, whose entries are ~240 bytes each, because the matcher
    /// looks a document's units up for every run it steps and every posting it verifies: 8
    /// bytes from a table that stays in cache (0.45 MB for the 56,000 documents of 0.9 GB of
    /// crates), not a cold line of the document table (measured: docs/benchmarks.md).
    unit_starts: Vec<u64>,
    filter: Option<FilterTable>,
    postings: Mmap,
    bucket_bits: u32,
    n_postings: usize,
    units: Mmap,
    spans: Mmap,
    common: Mmap,
    /// The common keys in RAM, for [`Index::is_common`] (built at open from `common.bin`;
    /// ~2.3 bytes a key: 260 KB for the 113,000 common keys of 0.9 GB of crates).
    common_filter: Option<BinaryFuse16>,
    /// One class byte per unit, when the index has the rename-insensitive channel.
    classes: Option<Mmap>,
    /// The files behind the maps above, for [`Index::warm`].
    mapped: Vec<File>,
    /// Set when [`Index::warm`] has read every mapped file through.
    warmed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("dir", &self.dir)
            .field("id", &self.manifest.index_id)
            .finish_non_exhaustive()
    }
}

fn map(path: &Path) -> Result<Mmap, IndexOpenError> {
    map_file(path).map(|(_, m)| m)
}

/// A map of `path` and the open file it maps (kept for [`Index::warm`], which must read the
/// very file mapped, not whatever is at its path by then).
fn map_file(path: &Path) -> Result<(File, Mmap), IndexOpenError> {
    let file = File::open(path).map_err(|source| IndexOpenError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: the index directory is immutable once built (builds write a new directory and
    // rename it into place); truncating a file under a running reader is outside the contract,
    // as for every mmap-based store (tantivy, LMDB).
    let m = unsafe { Mmap::map(&file) }.map_err(|source| IndexOpenError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((file, m))
}

fn header(path: &Path, data: &[u8], magic: [u8; 8]) -> Result<Header, IndexOpenError> {
    let bytes = data.get(..HEADER_LEN).ok_or_else(|| {
        corrupt(
            path,
            format!("{} bytes is shorter than its header", data.len()),
        )
    })?;
    let h: Header = bytemuck::pod_read_unaligned(bytes);
    if h.magic != magic {
        return Err(corrupt(
            path,
            "wrong magic bytes (not this kind of index file)",
        ));
    }
    if h.version != FORMAT_VERSION {
        return Err(corrupt(
            path,
            format!(
                "header says format version {}, expected {FORMAT_VERSION}",
                h.version
            ),
        ));
    }
    Ok(h)
}

/// Checks that `data` holds exactly `count` records of `T` after `skip` bytes.
fn records<'a, T: bytemuck::Pod>(
    path: &Path,
    data: &'a [u8],
    skip: usize,
    count: u64,
) -> Result<&'a [T], IndexOpenError> {
    let size = std::mem::size_of::<T>() as u64;
    let want = count
        .checked_mul(size)
        .and_then(|b| b.checked_add(skip as u64))
        .ok_or_else(|| corrupt(path, "record count overflows"))?;
    if data.len() as u64 != want {
        return Err(corrupt(
            path,
            format!("{} bytes, expected {want} for {count} records", data.len()),
        ));
    }
    bytemuck::try_cast_slice(&data[skip..]).map_err(|e| corrupt(path, format!("{e}")))
}

impl Index {
    /// Opens an index directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<Index, IndexOpenError> {
        let dir = dir.as_ref().to_path_buf();
        let mpath = dir.join(format::MANIFEST);
        if !mpath.is_file() {
            return Err(IndexOpenError::NotAnIndex { dir });
        }
        let mtext = std::fs::read(&mpath).map_err(|source| IndexOpenError::Io {
            path: mpath.clone(),
            source,
        })?;
        // Read the version first so an index of another version says so, whatever else changed.
        #[derive(Deserialize)]
        struct VersionOnly {
            format_version: u32,
        }
        let v: VersionOnly = serde_json::from_slice(&mtext)
            .map_err(|e| corrupt(&mpath, format!("invalid manifest: {e}")))?;
        if v.format_version != FORMAT_VERSION {
            return Err(IndexOpenError::FormatVersion {
                dir,
                found: v.format_version,
                expected: FORMAT_VERSION,
            });
        }
        let manifest: Manifest = serde_json::from_slice(&mtext)
            .map_err(|e| corrupt(&mpath, format!("invalid manifest: {e}")))?;
        for f in &manifest.files {
            let p = dir.join(&f.name);
            let meta = std::fs::metadata(&p).map_err(|source| IndexOpenError::Io {
                path: p.clone(),
                source,
            })?;
            if meta.len() != f.bytes {
                return Err(corrupt(
                    &p,
                    format!("{} bytes, the manifest says {}", meta.len(), f.bytes),
                ));
            }
        }

        // The document table and the filter are read through a map of their files, not into
        // a buffer: a buffer of a file's size (20 MB and 48 MB on an index of 892 MB of crates)
        // would be garbage as soon as the open returns, and mimalloc, the binary's allocator,
        // keeps such memory resident in an idle process (measured: docs/benchmarks.md).
        let dpath = dir.join(format::DOCS);
        let dmap = map(&dpath)?;
        let dtext =
            std::str::from_utf8(&dmap).map_err(|e| corrupt(&dpath, format!("not UTF-8: {e}")))?;
        let mut docs = Vec::with_capacity(manifest.stats.documents as usize);
        for (i, line) in dtext.lines().enumerate() {
            let d: DocMeta = serde_json::from_str(line)
                .map_err(|e| corrupt(&dpath, format!("line {}: {e}", i + 1)))?;
            if d.corpus as usize >= manifest.corpora.len() {
                return Err(corrupt(
                    &dpath,
                    format!("line {}: unknown corpus {}", i + 1, d.corpus),
                ));
            }
            docs.push(d);
        }
        if docs.len() as u64 != manifest.stats.documents {
            return Err(corrupt(
                &dpath,
                format!(
                    "{} documents, the manifest says {}",
                    docs.len(),
                    manifest.stats.documents
                ),
            ));
        }

        let mut mapped = Vec::with_capacity(5);
        let upath = dir.join(format::UNITS);
        let (units_file, units) = map_file(&upath)?;
        mapped.push(units_file);
        let uh = header(&upath, &units, format::MAGIC_UNITS)?;
        records::<u32>(&upath, &units, HEADER_LEN, uh.count)?;
        let spath = dir.join(format::SPANS);
        let (spans_file, spans) = map_file(&spath)?;
        mapped.push(spans_file);
        let sh = header(&spath, &spans, format::MAGIC_SPANS)?;
        records::<Span>(&spath, &spans, HEADER_LEN, sh.count)?;
        if uh.count != sh.count || uh.count != manifest.stats.units {
            return Err(corrupt(
                &spath,
                "unit store and span store disagree on the unit count",
            ));
        }
        let mut next = 0u64;
        for (i, d) in docs.iter().enumerate() {
            if d.unit_start != next {
                return Err(corrupt(
                    &dpath,
                    format!("line {}: units do not follow on", i + 1),
                ));
            }
            next += u64::from(d.units);
        }
        if next != uh.count {
            return Err(corrupt(&dpath, "documents do not cover the unit store"));
        }
        let unit_starts: Vec<u64> = docs
            .iter()
            .map(|d| d.unit_start)
            .chain(std::iter::once(next))
            .collect();

        let ppath = dir.join(format::POSTINGS);
        let (postings_file, postings) = map_file(&ppath)?;
        mapped.push(postings_file);
        let ph = header(&ppath, &postings, format::MAGIC_POSTINGS)?;
        let bucket_bits = ph.aux as u32;
        if !(1..=32).contains(&bucket_bits) {
            return Err(corrupt(
                &ppath,
                format!("bucket bits {bucket_bits} out of range"),
            ));
        }
        let dir_len = (1usize << bucket_bits) + 1;
        let dir_bytes = dir_len * 8;
        let entries_at = HEADER_LEN + dir_bytes;
        if postings.len() < entries_at {
            return Err(corrupt(&ppath, "shorter than its bucket directory"));
        }
        records::<Posting>(&ppath, &postings, entries_at, ph.count)?;
        let bdir: &[u64] = bytemuck::try_cast_slice(&postings[HEADER_LEN..entries_at])
            .map_err(|e| corrupt(&ppath, format!("{e}")))?;
        if bdir.windows(2).any(|w| w[0] > w[1]) || bdir.last() != Some(&ph.count) {
            return Err(corrupt(&ppath, "bucket directory is not monotone"));
        }

        let fpath = dir.join(format::FILTER);
        let fbytes = map(&fpath)?;
        let fh = header(&fpath, &fbytes, format::MAGIC_FILTER)?;
        let words: &[u64] = records(&fpath, &fbytes, HEADER_LEN, fh.count)?;
        if fh.count > u64::from(u32::MAX) || (fh.count > 0 && fh.aux2[1] != bloom::HASHES) {
            // The word is chosen by 32 bits of the hash, and the bits a key sets are fixed.
            return Err(corrupt(
                &fpath,
                format!(
                    "filter of {} words and {} bits a key: not this format's",
                    fh.count, fh.aux2[1]
                ),
            ));
        }
        let filter = if fh.count > 0 {
            Some(FilterTable {
                seed: fh.aux,
                words: huge_copy(words).map_err(|source| IndexOpenError::Io {
                    path: fpath.clone(),
                    source,
                })?,
            })
        } else {
            None
        };

        let cpath = dir.join(format::COMMON);
        let (common_file, common) = map_file(&cpath)?;
        mapped.push(common_file);
        let ch = header(&cpath, &common, format::MAGIC_COMMON)?;
        let common_keys: &[CommonKey] = records(&cpath, &common, HEADER_LEN, ch.count)?;
        let common_filter = {
            let mut keys: Vec<u64> = common_keys.iter().map(|c| c.key).collect();
            keys.sort_unstable();
            keys.dedup();
            (!keys.is_empty())
                .then(|| BinaryFuse16::try_from(&keys[..]))
                .transpose()
                .map_err(|e| corrupt(&cpath, format!("common keys: {e}")))?
        };

        let classes = match manifest.params.renamed {
            None => None,
            Some(_) => {
                let kpath = dir.join(format::CLASSES);
                let (classes_file, classes) = map_file(&kpath)?;
                mapped.push(classes_file);
                let kh = header(&kpath, &classes, format::MAGIC_CLASSES)?;
                records::<u8>(&kpath, &classes, HEADER_LEN, kh.count)?;
                if kh.count != uh.count {
                    return Err(corrupt(
                        &kpath,
                        "class store and unit store disagree on the unit count",
                    ));
                }
                Some(classes)
            }
        };

        Ok(Index {
            dir,
            manifest,
            docs,
            unit_starts,
            filter,
            n_postings: ph.count as usize,
            postings,
            bucket_bits,
            units,
            spans,
            common,
            common_filter,
            classes,
            mapped,
            warmed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn params(&self) -> Params {
        self.manifest.params
    }
    pub fn docs(&self) -> &[DocMeta] {
        &self.docs
    }
    pub fn doc(&self, id: u32) -> Option<&DocMeta> {
        self.docs.get(id as usize)
    }
    pub fn corpus(&self, doc: &DocMeta) -> &CorpusEntry {
        &self.manifest.corpora[doc.corpus as usize]
    }

    /// Bytes this index keeps in anonymous memory (filter and document table, estimated);
    /// everything else is read through the page cache.
    pub fn resident_bytes(&self) -> u64 {
        let filter = (self.filter.as_ref().map_or(0, |f| f.words.len())
            + self
                .common_filter
                .as_ref()
                .map_or(0, |f| f.fingerprints.len() * 2)) as u64;
        let docs: u64 = self
            .docs
            .iter()
            .map(|d| {
                (std::mem::size_of::<DocMeta>()
                    + d.path.len()
                    + d.url.as_ref().map_or(0, String::len)
                    + d.license.len()
                    + d.license_source.len()
                    + d.text.len()
                    + d.xxh3.len()) as u64
            })
            .sum();
        filter + docs + (self.unit_starts.len() * 8) as u64
    }

    fn entries(&self) -> &[Posting] {
        let at = HEADER_LEN + ((1usize << self.bucket_bits) + 1) * 8;
        // Validated at open: exactly n_postings aligned records.
        bytemuck::try_cast_slice(&self.postings[at..]).unwrap_or(&[])
    }

    fn bucket_dir(&self) -> &[u64] {
        let end = HEADER_LEN + ((1usize << self.bucket_bits) + 1) * 8;
        bytemuck::try_cast_slice(&self.postings[HEADER_LEN..end]).unwrap_or(&[])
    }

    /// [`Index::may_contain`] for many keys at once, in two halves. The filter is far larger
    /// than the caches, so each probe is a cache miss; this half computes every key's word
    /// and bits into `pos` (one entry per key) and starts loading the word, and
    /// [`Index::retain_possible`] tests them after — so the misses overlap instead of
    /// queueing, across all the keys and, for a caller with several indexes that calls this
    /// on each before testing any, across indexes.
    pub fn prefetch_filter(&self, keys: &[Option<u64>], pos: &mut Vec<FilterPos>) {
        pos.clear();
        let Some(f) = &self.filter else { return };
        let words = f.words();
        pos.extend(keys.iter().map(|k| {
            let Some(key) = *k else {
                return (0, 0);
            };
            let p = f.position(key);
            prefetch(words, p.0);
            p
        }));
    }

    /// The second half of [`Index::prefetch_filter`], given the same `keys` and its `pos`:
    /// each `Some(key)` the filter rules out becomes `None`.
    pub fn retain_possible(&self, keys: &mut [Option<u64>], pos: &[FilterPos]) {
        let Some(f) = &self.filter else {
            keys.fill(None);
            return;
        };
        let words = f.words();
        for (k, &p) in keys.iter_mut().zip(pos) {
            if k.is_some() && !bloom::test(words, p) {
                *k = None;
            }
        }
    }

    /// Starts loading, for every `Some(key)` (keys the filter let through), the bucket its
    /// postings are in — the directory entry first, then the start of the bucket — so the
    /// lookups that follow find them in cache: the postings are mmap'd and far larger than
    /// the caches, and a scan looks up the keys of a push one after another.
    pub fn prefetch_postings(&self, keys: &[Option<u64>]) {
        let dir = self.bucket_dir();
        let entries = self.entries();
        let bucket = |key: u64| (key >> (64 - self.bucket_bits)) as usize;
        for key in keys.iter().flatten() {
            prefetch(dir, bucket(*key));
        }
        for key in keys.iter().flatten() {
            if let Some(&lo) = dir.get(bucket(*key)) {
                prefetch(entries, lo as usize);
            }
        }
    }

    /// Whether the filter says `key` may be present (no false negatives).
    #[inline]
    pub fn may_contain(&self, key: u64) -> bool {
        self.filter.as_ref().is_some_and(|f| f.contains(key))
    }

    /// Whether `key` is one of the keys found in so many documents that the index keeps no
    /// postings for it (boilerplate: license headers, generated code); false positives at
    /// the filter's rate (2⁻¹⁶), no false negatives.
    #[inline]
    pub fn is_common(&self, key: u64) -> bool {
        self.common_filter
            .as_ref()
            .is_some_and(|f| f.contains(&key))
    }

    /// The postings of a sampled k-gram key (empty if absent or common).
    pub fn lookup(&self, key: u64) -> &[Posting] {
        if !self.may_contain(key) {
            return &[];
        }
        self.lookup_unfiltered(key)
    }

    /// [`Index::lookup`] for a key the filter already let through.
    pub fn lookup_unfiltered(&self, key: u64) -> &[Posting] {
        let b = (key >> (64 - self.bucket_bits)) as usize;
        let dir = self.bucket_dir();
        let (Some(&lo), Some(&hi)) = (dir.get(b), dir.get(b + 1)) else {
            return &[];
        };
        let entries = self.entries();
        let Some(bucket) = entries.get(lo as usize..(hi as usize).min(self.n_postings)) else {
            return &[];
        };
        let first = bucket.partition_point(|p| p.key < key);
        let last = bucket.partition_point(|p| p.key <= key);
        &bucket[first..last]
    }

    /// Where document `doc`'s units are in the unit store (and class store).
    #[inline]
    fn unit_range(&self, doc: u32) -> Option<std::ops::Range<usize>> {
        let d = doc as usize;
        match (self.unit_starts.get(d), self.unit_starts.get(d + 1)) {
            (Some(&s), Some(&e)) => Some(s as usize..e as usize),
            _ => None,
        }
    }

    /// The stored unit hashes of a document.
    pub fn doc_units(&self, doc: u32) -> &[u32] {
        let Some(r) = self.unit_range(doc) else {
            return &[];
        };
        let all: &[u32] = bytemuck::try_cast_slice(&self.units[HEADER_LEN..]).unwrap_or(&[]);
        all.get(r).unwrap_or(&[])
    }

    /// The [`crate::normalize::UnitClass`] bytes of a document's units (empty when the index
    /// has no rename-insensitive channel).
    pub fn doc_classes(&self, doc: u32) -> &[u8] {
        let (Some(r), Some(classes)) = (self.unit_range(doc), &self.classes) else {
            return &[];
        };
        classes
            .get(HEADER_LEN + r.start..HEADER_LEN + r.end)
            .unwrap_or(&[])
    }

    /// Byte range of unit `pos` within document `doc`.
    pub fn unit_span(&self, doc: u32, pos: u32) -> Option<(u32, u32)> {
        let r = self.unit_range(doc)?;
        if pos as usize >= r.len() {
            return None;
        }
        let all: &[Span] = bytemuck::try_cast_slice(&self.spans[HEADER_LEN..]).ok()?;
        let s = all.get(r.start + pos as usize)?;
        Some((s.start, s.end))
    }

    /// The keys marked common, with the number of documents each occurs in.
    pub fn common_keys(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        let all: &[CommonKey] = bytemuck::try_cast_slice(&self.common[HEADER_LEN..]).unwrap_or(&[]);
        all.iter().map(|c| (c.key, c.docs))
    }

    /// Recomputes every file's checksum and compares it with the manifest.
    /// Bytes of the memory-mapped files (postings, units, spans, common keys, classes): what
    /// lookups read on demand, and what [`Index::warm`] reads ahead.
    pub fn mapped_bytes(&self) -> u64 {
        let classes = self.classes.as_ref().map_or(0, |c| c.len());
        (self.postings.len() + self.units.len() + self.spans.len() + self.common.len() + classes)
            as u64
    }

    /// Reads the memory-mapped files once through, so that they are in the operating system's
    /// page cache before lookups need them; returns the bytes read. Stops early, with what it
    /// read so far, when `stop()` turns true (checked between blocks).
    ///
    /// Why: a lookup that touches a page not in the page cache blocks its thread on the disk
    /// (a major page fault), and the proxy's worker threads each serve many streams — one
    /// fault stalls all of them for the read's milliseconds. A ladder run at 256 streams on a
    /// dropped page cache took 122 major faults and a chunk p99 of 7.7 ms, against 2.1 ms warm
    /// (docs/benchmarks.md, "A cold index stalls every stream of its thread").
    ///
    /// The files are read with `pread` into a small buffer rather than touched through the
    /// maps: the page cache fills the same, but the pages are not mapped into this process
    /// until used, so its resident size stays what it serves with. The pages stay cached only
    /// as long as the system has the memory for them; nothing is locked.
    pub fn warm(&self, stop: impl Fn() -> bool) -> std::io::Result<u64> {
        const BLOCK: usize = 256 << 10;
        let mut buf = vec![0u8; BLOCK];
        let mut total = 0u64;
        for f in &self.mapped {
            let mut at = 0u64;
            loop {
                if stop() {
                    return Ok(total);
                }
                let n = read_at(f, &mut buf, at)?;
                if n == 0 {
                    break;
                }
                at += n as u64;
                total += n as u64;
            }
        }
        self.warmed
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(total)
    }

    /// Whether [`Index::warm`] has read every mapped file through (in this process; the
    /// pages may have been evicted since, under memory pressure).
    pub fn is_warm(&self) -> bool {
        self.warmed.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn verify(&self) -> Result<(), IndexOpenError> {
        for f in &self.manifest.files {
            let p = self.dir.join(&f.name);
            let got = build::file_xxh3(&p).map_err(|source| IndexOpenError::Io {
                path: p.clone(),
                source,
            })?;
            if got != f.xxh3 {
                return Err(corrupt(
                    &p,
                    format!("checksum {got} does not match the manifest's {}", f.xxh3),
                ));
            }
        }
        Ok(())
    }
}

/// Reads from `f` at `at`, without moving a shared file offset (`pread`), retrying when
/// interrupted.
fn read_at(f: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    loop {
        #[cfg(unix)]
        let r = std::os::unix::fs::FileExt::read_at(f, buf, at);
        #[cfg(windows)]
        let r = std::os::windows::fs::FileExt::seek_read(f, buf, at);
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Asks the CPU to bring `v[i]` into the cache (a hint: no effect on results).
#[inline(always)]
fn prefetch<T>(v: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(x) = v.get(i) {
        // SAFETY: `_mm_prefetch` only hints the cache; the pointer is to a live element.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                (x as *const T).cast::<i8>(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (v, i);
}

/// The membership filter ([`bloom`]), its words copied at open into an anonymous map advised
/// to use transparent huge pages. Each probe reads a random word of a table far larger than
/// the caches (54 MB for 0.9 GB of crates); with 4 KiB pages each read also missed the TLB
/// and walked the page table, with 2 MiB pages the table's ~27 pages stay in the TLB.
/// Measured: docs/benchmarks.md ("Huge pages for the filter").
struct FilterTable {
    seed: u64,
    /// The table: whole `u64` words, at most 2³² of them (checked at open).
    words: memmap2::MmapMut,
}

impl FilterTable {
    fn words(&self) -> &[u64] {
        // The map is page-aligned and holds exactly the words.
        bytemuck::try_cast_slice(&self.words[..]).unwrap_or(&[])
    }

    #[inline(always)]
    fn position(&self, key: u64) -> FilterPos {
        bloom::position(bloom::hash(key, self.seed), self.words.len() as u64 / 8)
    }

    #[inline]
    fn contains(&self, key: u64) -> bool {
        bloom::test(self.words(), self.position(key))
    }
}

/// `v` copied into an anonymous map advised to use transparent huge pages: a hint — where
/// the kernel has none to give (THP off, memory fragmented) the pages are ordinary ones.
/// Linux ≥ 6.7 places anonymous maps of 2 MiB or more on a 2 MiB boundary, so all of the map
/// but its tail can be huge pages. mimalloc (built with `no_thp`) never asks for them: this
/// map is one allocation made at open, all of it touched, so huge pages cost no memory here.
fn huge_copy(v: &[u64]) -> std::io::Result<memmap2::MmapMut> {
    let bytes: &[u8] = bytemuck::cast_slice(v);
    let mut m = memmap2::MmapOptions::new().len(bytes.len()).map_anon()?;
    #[cfg(target_os = "linux")]
    let _ = m.advise(memmap2::Advice::HugePage);
    m.copy_from_slice(bytes);
    Ok(m)
}

/// A key's filter probe: the word it is tested against and the bits it needs there.
pub type FilterPos = (usize, u64);
