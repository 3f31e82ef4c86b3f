//! Building an index directory from validated corpora.
//!
//! Files are read and normalised in parallel (rayon) in batches; the results are written in a
//! deterministic order (corpus order, then path order), so the same corpora and parameters give
//! byte-identical indexes. Postings go to an in-memory buffer that is sorted and spilled to a
//! run file whenever it reaches its budget; the runs are merged at the end (k-way, streaming),
//! which is where keys shared by many documents are marked common. So the build's memory is the
//! spill budget plus one batch of files plus 8 bytes per distinct key (for the filter), whatever
//! the corpus size.
//!
//! The index is written into a temporary sibling directory and renamed into place at the end,
//! so a reader never sees a half-built index.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytemuck::Zeroable;
use rayon::prelude::*;
use xxhash_rust::xxh3::Xxh3;

use super::bloom;
use super::format::{self, CommonKey, HEADER_LEN, Header, Params, Posting, Span};
use super::{CorpusEntry, DocMeta, FileEntry, IndexStats, Manifest};
use crate::corpus::{Corpus, SkipReason, Skipped, SourceFile, read_text};
use crate::hash::{kgram_key, renamed_key, stored};
use crate::normalize::{Channel, UnitClass, normalize};

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub params: Params,
    /// Files larger than this are skipped (and counted).
    pub max_file_bytes: u64,
    /// Postings held in memory before a sorted run is spilled to disk.
    pub spill_postings: usize,
    /// Draw a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
    /// Replace an existing index at the output path.
    pub force: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            params: Params::default(),
            max_file_bytes: 64 << 20,
            // 16 bytes each: 256 MiB.
            spill_postings: 16 << 20,
            progress: false,
            force: false,
        }
    }
}

/// What a build did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildSummary {
    pub out: PathBuf,
    pub index_id: String,
    pub stats: IndexStats,
    pub files_seen: u64,
    pub skipped: Vec<Skipped>,
    pub size_on_disk: u64,
    /// RAM needed to serve: the filter and the document table.
    pub resident_bytes: u64,
    pub spilled_runs: usize,
    pub elapsed: Duration,
    /// Peak resident memory of this process during the build, if the OS tells.
    pub peak_rss: Option<u64>,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid build parameters: {}", .0.join("; "))]
    Params(Vec<String>),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{} exists and is not a verbatim index; refusing to replace it",
        .0.display()
    )]
    OutputExists(PathBuf),
    #[error("{} is an existing index; pass --force to replace it", .0.display())]
    OutputIsIndex(PathBuf),
    #[error("cannot build the membership filter: {0}")]
    Filter(String),
    #[error("document {path} has more than 2^32 units or bytes")]
    TooLarge { path: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One normalised file, ready to be written.
struct DocOut {
    meta: DocMeta,
    units: Vec<u32>,
    /// [`crate::normalize::UnitClass`] of each unit (empty without the renamed channel).
    classes: Vec<u8>,
    spans: Vec<Span>,
    /// Sampled k-gram keys and their unit positions.
    keys: Vec<(u64, u32)>,
}

/// Normalises one file and samples its k-grams. Pure: no shared state, run in parallel.
fn process(
    corpus: &Corpus,
    ci: u32,
    file: &SourceFile,
    opts: &BuildOptions,
    resolver: &crate::license::resolve::Resolver,
) -> Result<DocOut, Skipped> {
    let text = read_text(file, opts.max_file_bytes).map_err(|(reason, detail)| Skipped {
        corpus: corpus.name.clone(),
        path: file.rel.clone(),
        reason,
        detail,
    })?;
    let kind = corpus.text_kind(&file.rel);
    let units = normalize(&text, kind);
    if units.len() > u32::MAX as usize || text.len() > u32::MAX as usize {
        return Err(Skipped {
            corpus: corpus.name.clone(),
            path: file.rel.clone(),
            reason: SkipReason::TooLarge,
            detail: "more than 2^32 units or bytes".into(),
        });
    }
    let keys = sample_keys(&units, &opts.params);
    let lic = resolver.resolve(corpus, file, &text);
    Ok(DocOut {
        meta: DocMeta {
            corpus: ci,
            path: file.rel.clone(),
            url: corpus.url_for(&file.rel),
            license: lic.expression,
            license_source: lic.source,
            license_from: lic.from,
            license_conflicts: lic
                .conflicts
                .iter()
                .map(|f| format!("{}: {}", f.source.as_str(), f.expression))
                .collect(),
            text: kind.label().into(),
            bytes: text.len() as u64,
            unit_start: 0,
            units: units.len() as u32,
            xxh3: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes())),
        },
        units: units.iter().map(|u| stored(u.hash)).collect(),
        classes: match opts.params.renamed {
            Some(_) => units.iter().map(|u| u.class as u8).collect(),
            None => Vec::new(),
        },
        spans: units
            .iter()
            .map(|u| Span {
                start: u.start as u32,
                end: u.end() as u32,
            })
            .collect(),
        keys,
    })
}

/// The index side's sample: the k-gram starting at every unit position that is a multiple of
/// its channel's `p`, if all k units are of that channel and it is informative. With the query
/// side probing every k-gram, any shared single-channel run of `t = k + p − 1` units contains a
/// sampled k-gram — unless every k-gram of the run is uninformative (see [`informative`]).
pub fn sample_keys(units: &[crate::normalize::Unit], params: &Params) -> Vec<(u64, u32)> {
    let mut keys = Vec::new();
    for (q, u) in units.iter().enumerate() {
        let cp = params.channel(u.channel);
        if q % cp.p as usize != 0 {
            continue;
        }
        let Some(window) = units.get(q..q + cp.k as usize) else {
            continue;
        };
        if window.iter().any(|w| w.channel != u.channel) || !informative(window) {
            continue;
        }
        keys.push((kgram_key(window.iter().map(|w| w.hash)), q as u32));
    }
    if let Some(rp) = params.renamed {
        let (k, p) = (rp.k as usize, rp.p as usize);
        let prev = crate::hash::prev_distances(units);
        for q in (0..units.len().saturating_sub(k - 1)).step_by(p) {
            let window = &units[q..q + k];
            if window.iter().any(|w| w.channel != Channel::Code)
                || window.iter().all(|w| w.class == UnitClass::Other)
                || !shape_informative(window)
                || shape_periodic(window, &prev[q..q + k])
            {
                continue; // not code, nothing abstracted (the exact key covers it), or too plain
            }
            let key = renamed_key(
                window
                    .iter()
                    .zip(&prev[q..])
                    .map(|(u, &d)| (u.hash, u.class, d)),
            );
            keys.push((key, q as u32 | format::RENAMED_POS));
        }
    }
    keys
}

/// [`informative`] for the rename-insensitive channel: a window must hold at least
/// max(2, ⌈k/4⌉) distinct units that are not abstracted (keywords, operators, punctuation), so
/// a list of names (`a, b, c, …`) or of literals is never evidence of a renamed copy.
pub fn shape_informative(window: &[crate::normalize::Unit]) -> bool {
    let plain = window.iter().filter(|u| u.class == UnitClass::Other);
    distinct_at_least(plain.map(|u| u.hash), 2.max(window.len().div_ceil(4)))
}

/// Whether `hashes` holds at least `need` distinct values (or 16, which is always enough).
fn distinct_at_least(hashes: impl Iterator<Item = u64>, need: usize) -> bool {
    let mut seen: [u64; 16] = [0; 16];
    let mut n = 0;
    for h in hashes {
        if !seen[..n].contains(&h) {
            seen[n] = h;
            n += 1;
            if n >= need || n == seen.len() {
                return true;
            }
        }
    }
    false
}

/// Whether a window's shapes (see [`crate::hash::shape`]) repeat with a short period — a list
/// of items of one form (`use a::b;` lines, `X => Some("X"),` arms, `#[attr] Variant,`, or
/// two-line items like `#[cfg(feature = "x")] pub use x::*;`): at some shift of at most 2k/3,
/// at least 80 % of the shapes equal the shape that many places on.
/// Renaming makes any such list match any other, so these windows are not renamed evidence
/// (the exact channel still indexes them).
pub fn shape_periodic(window: &[crate::normalize::Unit], prev: &[u32]) -> bool {
    let shapes: Vec<u64> = window
        .iter()
        .zip(prev)
        .enumerate()
        .map(|(j, (u, &d))| crate::hash::shape(u.hash, u.class, d, j))
        .collect();
    let k = shapes.len();
    (1..=k * 2 / 3).any(|q| {
        let same = (0..k - q).filter(|&i| shapes[i] == shapes[i + q]).count();
        same * 5 >= (k - q) * 4
    })
}

/// Whether a k-gram has enough distinct units to be evidence: at least max(2, ⌈k/4⌉) (4 for
/// code's k = 16). Runs of one or a few repeated units (table rules `----+----`, `0, 0, 0, …`,
/// "ha ha ha") match anything with the same padding, so they are never indexed; a run made only
/// of them is never reported.
pub fn informative(window: &[crate::normalize::Unit]) -> bool {
    informative_hashes(window.iter().map(|u| u.hash), window.len())
}

/// [`informative`] for a k-gram given as its `k` unit hashes (the scanner's history is a ring,
/// not a slice).
pub(crate) fn informative_hashes(hashes: impl Iterator<Item = u64>, k: usize) -> bool {
    distinct_at_least(hashes, 2.max(k.div_ceil(4)))
}

fn write_header(w: &mut impl Write, h: &Header) -> io::Result<()> {
    w.write_all(bytemuck::bytes_of(h))
}

/// Builds an index of `corpora` at `out`.
pub fn build(
    corpora: &[Corpus],
    out: &Path,
    opts: &BuildOptions,
) -> Result<BuildSummary, BuildError> {
    let started = Instant::now();
    let problems = opts.params.validate();
    if !problems.is_empty() {
        return Err(BuildError::Params(problems));
    }
    if out.exists() {
        if out.join(format::MANIFEST).is_file() {
            if !opts.force {
                return Err(BuildError::OutputIsIndex(out.to_path_buf()));
            }
        } else if fs::read_dir(out).map_err(io_err(out))?.next().is_some() {
            return Err(BuildError::OutputExists(out.to_path_buf()));
        }
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".verbatim-build-")
        .tempdir_in(&parent)
        .map_err(io_err(&parent))?;
    let tdir = tmp.path().to_path_buf();

    // Enumerate every file first: the progress bar needs the total.
    let mut files: Vec<(u32, SourceFile)> = Vec::new();
    let mut skipped: Vec<Skipped> = Vec::new();
    for (ci, c) in corpora.iter().enumerate() {
        let (f, s) = c.files();
        files.extend(f.into_iter().map(|f| (ci as u32, f)));
        skipped.extend(s);
    }
    let total_bytes: u64 = files.iter().map(|(_, f)| f.size).sum();
    let bar = progress_bar(opts.progress, total_bytes);
    let resolver = crate::license::resolve::Resolver::new();

    let upath = tdir.join(format::UNITS);
    let spath = tdir.join(format::SPANS);
    let cpath = tdir.join(format::CLASSES);
    let mut cw = match opts.params.renamed {
        Some(_) => {
            let mut w = BufWriter::new(File::create(&cpath).map_err(io_err(&cpath))?);
            write_header(&mut w, &Header::zeroed()).map_err(io_err(&cpath))?;
            Some(w)
        }
        None => None,
    };
    let dpath = tdir.join(format::DOCS);
    let mut uw = BufWriter::new(File::create(&upath).map_err(io_err(&upath))?);
    let mut sw = BufWriter::new(File::create(&spath).map_err(io_err(&spath))?);
    let mut dw = BufWriter::new(File::create(&dpath).map_err(io_err(&dpath))?);
    write_header(&mut uw, &Header::zeroed()).map_err(io_err(&upath))?;
    write_header(&mut sw, &Header::zeroed()).map_err(io_err(&spath))?;

    let mut spill = Spill::new(tdir.join("spill"), opts.spill_postings);
    let mut stats = IndexStats::default();
    let mut per_corpus: Vec<(u64, u64, u64, Xxh3)> =
        corpora.iter().map(|_| (0, 0, 0, Xxh3::new())).collect();

    // Batches bound the memory held by file texts and their units.
    const BATCH_BYTES: u64 = 64 << 20;
    let mut start = 0;
    while start < files.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < files.len()
            && (end == start || bytes + files[end].1.size <= BATCH_BYTES)
            && end - start < 4096
        {
            bytes += files[end].1.size;
            end += 1;
        }
        let batch = &files[start..end];
        let results: Vec<Result<DocOut, Skipped>> = batch
            .par_iter()
            .map(|(ci, f)| process(&corpora[*ci as usize], *ci, f, opts, &resolver))
            .collect();
        for ((ci, f), r) in batch.iter().zip(results) {
            bar.inc(f.size);
            match r {
                Err(s) => {
                    per_corpus[*ci as usize].2 += 1;
                    skipped.push(s);
                }
                Ok(mut d) => {
                    let doc_id = stats.documents as u32;
                    d.meta.unit_start = stats.units;
                    for u in &d.units {
                        uw.write_all(&u.to_le_bytes()).map_err(io_err(&upath))?;
                    }
                    sw.write_all(bytemuck::cast_slice(&d.spans))
                        .map_err(io_err(&spath))?;
                    if let Some(cw) = &mut cw {
                        cw.write_all(&d.classes).map_err(io_err(&cpath))?;
                    }
                    serde_json::to_writer(&mut dw, &d.meta).map_err(|e| BuildError::Io {
                        path: dpath.clone(),
                        source: e.into(),
                    })?;
                    dw.write_all(b"\n").map_err(io_err(&dpath))?;
                    for (key, pos) in d.keys {
                        spill.push(Posting {
                            key,
                            doc: doc_id,
                            pos,
                        })?;
                    }
                    let pc = &mut per_corpus[*ci as usize];
                    pc.0 += 1;
                    pc.1 += d.meta.bytes;
                    pc.3.update(d.meta.path.as_bytes());
                    pc.3.update(b"\0");
                    pc.3.update(d.meta.xxh3.as_bytes());
                    pc.3.update(b"\n");
                    stats.documents += 1;
                    stats.units += u64::from(d.meta.units);
                    stats.corpus_bytes += d.meta.bytes;
                }
            }
        }
        bar.set_message(format!("{} documents", stats.documents));
        start = end;
    }
    bar.finish_and_clear();

    // Headers now that counts are known.
    let uh = Header::new(format::MAGIC_UNITS, stats.units, 0, [0; 4]);
    let sh = Header::new(format::MAGIC_SPANS, stats.units, 0, [0; 4]);
    finish_with_header(uw, &upath, &uh)?;
    finish_with_header(sw, &spath, &sh)?;
    if let Some(cw) = cw {
        let ch = Header::new(format::MAGIC_CLASSES, stats.units, 0, [0; 4]);
        finish_with_header(cw, &cpath, &ch)?;
    }
    dw.flush().map_err(io_err(&dpath))?;

    // Merge the spilled runs into the postings file, marking common keys.
    let merged = spill.merge_into(&tdir, &opts.params)?;
    stats.postings = merged.postings;
    stats.distinct_keys = merged.keys.len() as u64;
    stats.common_keys = merged.common;

    let fpath = tdir.join(format::FILTER);
    write_filter(&fpath, &merged.keys)?;
    let filter_bytes = fs::metadata(&fpath).map_err(io_err(&fpath))?.len();
    drop(merged);

    // Manifest, with a checksum of every file.
    let mut files_meta = Vec::new();
    let mut size_on_disk = 0;
    for name in [
        format::DOCS,
        format::UNITS,
        format::SPANS,
        format::POSTINGS,
        format::FILTER,
        format::COMMON,
        format::CLASSES,
    ] {
        let p = tdir.join(name);
        if name == format::CLASSES && opts.params.renamed.is_none() {
            continue;
        }
        let bytes = fs::metadata(&p).map_err(io_err(&p))?.len();
        size_on_disk += bytes;
        files_meta.push(FileEntry {
            name: name.to_string(),
            bytes,
            xxh3: file_xxh3(&p).map_err(io_err(&p))?,
        });
    }
    let corpora_meta: Vec<CorpusEntry> = corpora
        .iter()
        .zip(per_corpus)
        .map(|(c, (docs, bytes, skipped, h))| CorpusEntry {
            name: c.name.clone(),
            kind: c.kind,
            rights: c.rights,
            license: c.license.clone(),
            url: c.url.clone(),
            metadata: c.metadata.clone(),
            documents: docs,
            bytes,
            skipped,
            digest: format!("{:016x}", h.digest()),
        })
        .collect();
    let mut id = Xxh3::new();
    id.update(&format::FORMAT_VERSION.to_le_bytes());
    id.update(
        serde_json::to_string(&opts.params)
            .unwrap_or_default()
            .as_bytes(),
    );
    for c in &corpora_meta {
        id.update(c.name.as_bytes());
        id.update(c.digest.as_bytes());
    }
    let manifest = Manifest {
        format_version: format::FORMAT_VERSION,
        generator: format!("verbatim {}", env!("CARGO_PKG_VERSION")),
        params: opts.params,
        index_id: format!("{:016x}", id.digest()),
        corpora: corpora_meta,
        stats: stats.clone(),
        files: files_meta,
    };
    let mpath = tdir.join(format::MANIFEST);
    let mtext = serde_json::to_vec_pretty(&manifest).map_err(|e| BuildError::Io {
        path: mpath.clone(),
        source: e.into(),
    })?;
    fs::write(&mpath, mtext).map_err(io_err(&mpath))?;
    let _ = fs::remove_dir_all(tdir.join("spill"));

    // Move into place.
    if out.exists() {
        fs::remove_dir_all(out).map_err(io_err(out))?;
    }
    let kept = tmp.keep();
    fs::rename(&kept, out).map_err(io_err(out))?;

    // Estimate the document table's resident size the same way `Index` does.
    let docs_text = fs::metadata(out.join(format::DOCS))
        .map(|m| m.len())
        .unwrap_or(0);
    let resident = (filter_bytes.saturating_sub(HEADER_LEN as u64))
        + docs_text
        + stats.documents * std::mem::size_of::<DocMeta>() as u64;
    Ok(BuildSummary {
        out: out.to_path_buf(),
        index_id: manifest.index_id,
        stats,
        files_seen: files.len() as u64,
        skipped,
        size_on_disk: size_on_disk
            + fs::metadata(out.join(format::MANIFEST))
                .map(|m| m.len())
                .unwrap_or(0),
        resident_bytes: resident,
        spilled_runs: spill.runs_written,
        elapsed: started.elapsed(),
        peak_rss: crate::procstat::peak_rss(),
    })
}

fn finish_with_header(mut w: BufWriter<File>, path: &Path, h: &Header) -> Result<(), BuildError> {
    w.flush().map_err(io_err(path))?;
    let mut f = w.into_inner().map_err(|e| BuildError::Io {
        path: path.to_path_buf(),
        source: e.into_error(),
    })?;
    f.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    write_header(&mut f, h).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn progress_bar(enabled: bool, total: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !enabled || !io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// xxh3-64 of a file's bytes, hex.
pub fn file_xxh3(path: &Path) -> io::Result<String> {
    let mut f = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut h = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:016x}", h.digest()))
}

fn write_filter(path: &Path, keys: &[u64]) -> Result<(), BuildError> {
    let mut w = BufWriter::new(File::create(path).map_err(io_err(path))?);
    if keys.is_empty() {
        write_header(&mut w, &Header::new(format::MAGIC_FILTER, 0, 0, [0; 4]))
            .map_err(io_err(path))?;
    } else {
        let words = bloom::build(keys, bloom::SEED);
        if words.len() as u64 > u64::from(u32::MAX) {
            return Err(BuildError::Filter(format!(
                "{} keys need more than 2^32 filter words",
                keys.len()
            )));
        }
        let h = Header::new(
            format::MAGIC_FILTER,
            words.len() as u64,
            bloom::SEED,
            [bloom::BITS_PER_KEY, bloom::HASHES, 0, 0],
        );
        write_header(&mut w, &h).map_err(io_err(path))?;
        w.write_all(bytemuck::cast_slice(&words))
            .map_err(io_err(path))?;
    }
    w.flush().map_err(io_err(path))
}

/// Sorted runs of postings, spilled to disk when the buffer is full.
struct Spill {
    dir: PathBuf,
    budget: usize,
    buf: Vec<Posting>,
    runs: Vec<PathBuf>,
    runs_written: usize,
    total: u64,
}

struct Merged {
    postings: u64,
    keys: Vec<u64>,
    common: u64,
}

impl Spill {
    fn new(dir: PathBuf, budget: usize) -> Self {
        Spill {
            dir,
            budget: budget.max(1),
            buf: Vec::new(),
            runs: Vec::new(),
            runs_written: 0,
            total: 0,
        }
    }

    fn push(&mut self, p: Posting) -> Result<(), BuildError> {
        self.buf.push(p);
        self.total += 1;
        if self.buf.len() >= self.budget {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<(), BuildError> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        self.buf.par_sort_unstable();
        let path = self.dir.join(format!("run-{:05}.bin", self.runs.len()));
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&path).map_err(io_err(&path))?);
        w.write_all(bytemuck::cast_slice(&self.buf))
            .map_err(io_err(&path))?;
        w.flush().map_err(io_err(&path))?;
        self.buf.clear();
        self.runs.push(path);
        self.runs_written += 1;
        Ok(())
    }

    /// Writes `postings.bin` and `common.bin` into `dir` and returns the distinct keys kept.
    fn merge_into(&mut self, dir: &Path, params: &Params) -> Result<Merged, BuildError> {
        // Bucket directory sized for ~4 postings per bucket.
        let bits = (64 - (self.total / 4).max(1).leading_zeros()).clamp(4, 26);
        let n_buckets = 1usize << bits;
        let ppath = dir.join(format::POSTINGS);
        let mut pw =
            BufWriter::with_capacity(1 << 20, File::create(&ppath).map_err(io_err(&ppath))?);
        write_header(&mut pw, &Header::zeroed()).map_err(io_err(&ppath))?;
        let mut bdir = vec![0u64; n_buckets + 1];
        pw.write_all(bytemuck::cast_slice(&bdir))
            .map_err(io_err(&ppath))?;

        let mut sink = MergeSink {
            pw: &mut pw,
            ppath: &ppath,
            bdir: &mut bdir,
            bits,
            next_bucket: 0,
            written: 0,
            keys: Vec::new(),
            common: Vec::new(),
            threshold: params.common_threshold,
            renamed_threshold: params
                .renamed_common_docs()
                .unwrap_or(params.common_threshold),
            group: Vec::new(),
        };

        if self.runs.is_empty() {
            self.buf.par_sort_unstable();
            for p in self.buf.drain(..) {
                sink.push(p)?;
            }
        } else {
            if !self.buf.is_empty() {
                self.spill()?;
            }
            let mut readers = Vec::new();
            for path in &self.runs {
                readers.push(RunReader::open(path)?);
            }
            let mut heap = BinaryHeap::new();
            for (i, r) in readers.iter_mut().enumerate() {
                if let Some(p) = r.next()? {
                    heap.push(Reverse((p, i)));
                }
            }
            while let Some(Reverse((p, i))) = heap.pop() {
                sink.push(p)?;
                if let Some(n) = readers[i].next()? {
                    heap.push(Reverse((n, i)));
                }
            }
        }
        sink.flush_group()?;
        let written = sink.written;
        for b in sink.next_bucket..=n_buckets {
            sink.bdir[b] = written;
        }
        let keys = std::mem::take(&mut sink.keys);
        let common = std::mem::take(&mut sink.common);
        drop(sink);
        pw.flush().map_err(io_err(&ppath))?;
        let mut f = pw.into_inner().map_err(|e| BuildError::Io {
            path: ppath.clone(),
            source: e.into_error(),
        })?;
        f.seek(SeekFrom::Start(0)).map_err(io_err(&ppath))?;
        write_header(
            &mut f,
            &Header::new(format::MAGIC_POSTINGS, written, u64::from(bits), [0; 4]),
        )
        .map_err(io_err(&ppath))?;
        f.write_all(bytemuck::cast_slice(&bdir))
            .map_err(io_err(&ppath))?;
        f.sync_all().map_err(io_err(&ppath))?;

        let cpath = dir.join(format::COMMON);
        let mut cw = BufWriter::new(File::create(&cpath).map_err(io_err(&cpath))?);
        write_header(
            &mut cw,
            &Header::new(format::MAGIC_COMMON, common.len() as u64, 0, [0; 4]),
        )
        .map_err(io_err(&cpath))?;
        cw.write_all(bytemuck::cast_slice(&common))
            .map_err(io_err(&cpath))?;
        cw.flush().map_err(io_err(&cpath))?;
        for r in &self.runs {
            let _ = fs::remove_file(r);
        }
        Ok(Merged {
            postings: written,
            keys,
            common: common.len() as u64,
        })
    }
}

/// Receives postings in sorted order, one key group at a time.
struct MergeSink<'a> {
    pw: &'a mut BufWriter<File>,
    ppath: &'a Path,
    bdir: &'a mut Vec<u64>,
    bits: u32,
    next_bucket: usize,
    written: u64,
    keys: Vec<u64>,
    common: Vec<CommonKey>,
    threshold: u32,
    /// [`Params::renamed_common_docs`].
    renamed_threshold: u32,
    group: Vec<Posting>,
}

impl MergeSink<'_> {
    fn push(&mut self, p: Posting) -> Result<(), BuildError> {
        if self.group.first().is_some_and(|g| g.key != p.key) {
            self.flush_group()?;
        }
        self.group.push(p);
        Ok(())
    }

    fn flush_group(&mut self) -> Result<(), BuildError> {
        let Some(first) = self.group.first().copied() else {
            return Ok(());
        };
        // Sorted by (key, doc, pos): distinct documents are where `doc` changes.
        let docs = 1 + self
            .group
            .windows(2)
            .filter(|w| w[0].doc != w[1].doc)
            .count() as u32;
        let threshold = if first.pos & format::RENAMED_POS != 0 {
            self.renamed_threshold
        } else {
            self.threshold
        };
        if docs >= threshold {
            self.common.push(CommonKey {
                key: first.key,
                docs,
                _pad: 0,
            });
        } else {
            let bucket = (first.key >> (64 - self.bits)) as usize;
            while self.next_bucket <= bucket {
                self.bdir[self.next_bucket] = self.written;
                self.next_bucket += 1;
            }
            self.pw
                .write_all(bytemuck::cast_slice(&self.group))
                .map_err(io_err(self.ppath))?;
            self.written += self.group.len() as u64;
            self.keys.push(first.key);
        }
        self.group.clear();
        Ok(())
    }
}

struct RunReader {
    r: BufReader<File>,
    path: PathBuf,
}

impl RunReader {
    fn open(path: &Path) -> Result<Self, BuildError> {
        Ok(RunReader {
            r: BufReader::with_capacity(1 << 20, File::open(path).map_err(io_err(path))?),
            path: path.to_path_buf(),
        })
    }

    fn next(&mut self) -> Result<Option<Posting>, BuildError> {
        let mut b = [0u8; 16];
        match self.r.read_exact(&mut b) {
            Ok(()) => Ok(Some(bytemuck::pod_read_unaligned(&b))),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(BuildError::Io {
                path: self.path.clone(),
                source: e,
            }),
        }
    }
}
