//! The `verbatim` command: a thin layer over the library. Errors are printed with their causes
//! (`{:#}`) and exit with status 2; `scan` exits 1 when it found something, like grep.

use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};

// mimalloc rather than glibc's malloc: the relay allocates and frees small objects for every
// streamed event on both worker threads (decoded events, JSON values, text pieces); under load
// it cut the scanning proxy's CPU per event by about a fifth. Built without its transparent
// huge pages (`no_thp` in Cargo.toml): with them an idle stream cost ~14 KB more than with
// glibc's malloc (docs/benchmarks.md, "Memory per idle stream").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Args, Parser, Subcommand, ValueEnum};

use verbatim::corpus::load_manifests;
use verbatim::index::build::{BuildOptions, build};
use verbatim::index::{ChannelParams, Index, Params};
use verbatim::matcher::{FindingReport, Scanner};
use verbatim::normalize::{Lang, TextKind};

#[derive(Parser)]
#[command(
    name = "verbatim",
    version,
    about = "Notice when LLM output reproduces protected text or code"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build, inspect and verify fingerprint indexes.
    #[command(subcommand)]
    Index(IndexCommand),
    /// Scan a file (or stdin) for text reproduced from indexed works.
    Scan(ScanArgs),
    /// Run the proxy.
    Serve(ServeArgs),
    /// Check, test and explain policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Look at corpora before building an index.
    #[command(subcommand)]
    Corpus(CorpusCommand),
    /// Make a self-contained HTML report from an audit log (and its rotated files).
    Report {
        /// One or more audit logs, e.g. `--audit-log audit.jsonl*` for a rotated set.
        #[arg(long, num_args = 1.., required = true)]
        audit_log: Vec<PathBuf>,
        /// Only records at or after this RFC 3339 time (e.g. 2026-11-01 or 2026-11-01T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum CorpusCommand {
    /// Each file's license, where it was found (manifest, SPDX identifier, LICENSE file,
    /// package manifest, debian/copyright) and what disagrees; a summary by license.
    Inspect {
        /// Corpus manifests (or directories of them).
        #[arg(required = true)]
        manifests: Vec<PathBuf>,
        /// `text` (default on a terminal) or `jsonl`.
        #[arg(long)]
        format: Option<Format>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy (and, with --index, its corpus names and thresholds).
    Check {
        file: PathBuf,
        #[arg(long = "index")]
        indexes: Vec<PathBuf>,
    },
    /// Run the policy's own test cases; exit 1 if any fails.
    Test {
        file: PathBuf,
        #[arg(long = "index")]
        indexes: Vec<PathBuf>,
    },
    /// Show which rule decides each finding, and why the others did not.
    Explain {
        file: PathBuf,
        /// Findings as printed by `verbatim scan --format jsonl`.
        #[arg(long, conflicts_with = "text")]
        findings: Option<PathBuf>,
        /// A sample text to scan (needs --index).
        #[arg(long)]
        text: Option<PathBuf>,
        #[arg(long = "index")]
        indexes: Vec<PathBuf>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        route: Option<String>,
        #[arg(long)]
        model: Option<String>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file (see proxy-config/verbatim.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// OpenAI-compatible upstream base URL [default: https://api.openai.com].
    #[arg(long)]
    upstream_openai: Option<String>,
    /// Anthropic upstream base URL [default: https://api.anthropic.com].
    #[arg(long)]
    upstream_anthropic: Option<String>,
    /// HTTP/2 to the upstream: `negotiate` (the default: where TLS chooses it), `never`
    /// (HTTP/1.1, a connection per concurrent request) or `prior-knowledge` (always, h2c too);
    /// see `upstream.http2_max_streams` in proxy-config/verbatim.toml.
    #[arg(long, value_parser = verbatim::proxy::config::UpstreamHttp2::NAMES)]
    upstream_http2: Option<String>,
    /// Index directory to scan against (repeatable; replaces the config's list).
    #[arg(long = "index")]
    indexes: Vec<PathBuf>,
    /// `strict` holds back just enough that nothing of a blocked run is released; `none` adds
    /// no delay (annotate/log only).
    #[arg(long, value_parser = ["strict", "none"])]
    hold: Option<String>,
    /// Append the audit trail (JSON Lines, docs/audit-log.md) to this file.
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Policy file (docs/policy.md); replaces the config's built-in `[rules]`.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Admin listener for /metrics, /healthz, /readyz and POST /admin/reload (off by default).
    #[arg(long)]
    admin_listen: Option<std::net::SocketAddr>,
    /// Leave out the built-in SPDX license index.
    #[arg(long)]
    no_license_index: bool,
    /// Do not read the indexes into the page cache at start and before a reload
    /// (`warm_indexes = false`); lookups then read what they need from the disk as they go.
    #[arg(long)]
    no_warm: bool,
}

#[derive(Subcommand)]
enum IndexCommand {
    /// Build an index from corpus manifests.
    Build(BuildArgs),
    /// Print an index's manifest summary.
    Info { dir: PathBuf },
    /// Check every file of an index against its manifest's checksums.
    Verify { dir: PathBuf },
}

/// The default rename-insensitive channel parameters.
const RENAMED: ChannelParams = ChannelParams { k: 24, p: 6 };

#[derive(Args)]
struct BuildArgs {
    /// A corpus manifest (repeatable), or a directory of `*.toml` manifests.
    #[arg(long = "corpus", required = true)]
    corpora: Vec<PathBuf>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Units per k-gram for prose.
    #[arg(long, default_value_t = Params::default().prose.k)]
    prose_k: u32,
    /// Index sampling stride for prose (guarantee t = k + p - 1).
    #[arg(long, default_value_t = Params::default().prose.p)]
    prose_p: u32,
    #[arg(long, default_value_t = Params::default().code.k)]
    code_k: u32,
    #[arg(long, default_value_t = Params::default().code.p)]
    code_p: u32,
    /// Keys found in at least this many documents are common (not evidence alone).
    #[arg(long, default_value_t = Params::default().common_threshold)]
    common_threshold: u32,
    /// Units per k-gram of the rename-insensitive code channel.
    #[arg(long, default_value_t = RENAMED.k)]
    renamed_k: u32,
    /// Index sampling stride of the rename-insensitive code channel.
    #[arg(long, default_value_t = RENAMED.p)]
    renamed_p: u32,
    /// Build without the rename-insensitive channel (smaller index; renamed code then shows
    /// only as gapped `near` findings, if at all).
    #[arg(long)]
    no_renamed: bool,
    /// Skip files larger than this many MiB.
    #[arg(long, default_value_t = 64)]
    max_file_mib: u64,
    /// Memory for postings before spilling a sorted run to disk, in MiB.
    #[arg(long, default_value_t = 256)]
    spill_mib: u64,
    /// Replace an existing index at --out.
    #[arg(long)]
    force: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Jsonl,
    Text,
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    /// By file extension; stdin is markdown.
    Auto,
    /// Prose, with fenced blocks as code (model output).
    Markdown,
    /// Plain prose, no fences.
    Prose,
    /// Code (language from --lang or the extension).
    Code,
    /// A tool call's arguments (JSON): each string value read as the text it holds, code in
    /// the language a sibling file name or `language` value names.
    ToolArgs,
    /// A file written as a diff: added (`+`) and kept (` `) lines read as code without their
    /// markers, removed lines and headers left out (language from --lang, else C-like).
    Patch,
}

#[derive(Args)]
struct ScanArgs {
    /// Index directory (repeatable). The built-in SPDX license index is always added.
    #[arg(long = "index")]
    indexes: Vec<PathBuf>,
    /// Leave out the built-in SPDX license index (and license markers).
    #[arg(long)]
    no_license_index: bool,
    /// Also report the short runs that many indexed documents hold whole (a standard import
    /// block: boilerplate, not reported otherwise), marked `"shared": true`; they count for
    /// the exit status.
    #[arg(long)]
    shared: bool,
    /// `jsonl` (default when stdout is not a terminal) or `text`.
    #[arg(long)]
    format: Option<Format>,
    #[arg(long, value_enum, default_value_t = KindArg::Auto)]
    kind: KindArg,
    /// Language of code input (e.g. `rust`, `python`).
    #[arg(long)]
    lang: Option<String>,
    /// Files or directories to scan (every file under a directory, hidden entries and links
    /// left out; binary files found there are skipped), or `-` for stdin. With more than one file, each
    /// JSON line names its `input`.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Index(IndexCommand::Build(a)) => cmd_build(a).map(|()| ExitCode::SUCCESS),
        Command::Index(IndexCommand::Info { dir }) => cmd_info(&dir).map(|()| ExitCode::SUCCESS),
        Command::Index(IndexCommand::Verify { dir }) => {
            cmd_verify(&dir).map(|()| ExitCode::SUCCESS)
        }
        Command::Scan(a) => cmd_scan(a),
        Command::Serve(a) => cmd_serve(a).map(|()| ExitCode::SUCCESS),
        Command::Policy(c) => cmd_policy(c),
        Command::Corpus(CorpusCommand::Inspect { manifests, format }) => {
            cmd_inspect(&manifests, format).map(|()| ExitCode::SUCCESS)
        }
        Command::Report {
            audit_log,
            since,
            out,
        } => cmd_report(&audit_log, since.as_deref(), &out).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Expands directories given to `--corpus` into their `*.toml` manifests (sorted).
fn manifest_paths(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for a in args {
        if a.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(a)
                .with_context(|| format!("cannot list {}", a.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            v.sort();
            out.extend(v);
        } else {
            out.push(a.clone());
        }
    }
    Ok(out)
}

fn cmd_build(a: BuildArgs) -> Result<()> {
    let corpora = load_manifests(&manifest_paths(&a.corpora)?)?;
    let opts = BuildOptions {
        params: Params {
            prose: ChannelParams {
                k: a.prose_k,
                p: a.prose_p,
            },
            code: ChannelParams {
                k: a.code_k,
                p: a.code_p,
            },
            common_threshold: a.common_threshold,
            renamed: (!a.no_renamed).then_some(ChannelParams {
                k: a.renamed_k,
                p: a.renamed_p,
            }),
        },
        max_file_bytes: a.max_file_mib << 20,
        spill_postings: ((a.spill_mib << 20) / 16) as usize,
        progress: !a.quiet,
        force: a.force,
    };
    let s = build(&corpora, &a.out, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let mb = s.stats.corpus_bytes as f64 / 1e6;
    let secs = s.elapsed.as_secs_f64();
    println!("built {} ({})", s.out.display(), s.index_id);
    println!("  documents        {:>12}", s.stats.documents);
    println!("  corpus           {:>12.1} MB", mb);
    println!("  units            {:>12}", s.stats.units);
    println!("  postings         {:>12}", s.stats.postings);
    println!("  distinct keys    {:>12}", s.stats.distinct_keys);
    println!("  common keys      {:>12}", s.stats.common_keys);
    println!(
        "  size on disk     {:>12.1} MB",
        s.size_on_disk as f64 / 1e6
    );
    println!(
        "  memory to serve  {:>12.1} MB (filter and document table; the rest is mmap'd)",
        s.resident_bytes as f64 / 1e6
    );
    if let Some(p) = s.peak_rss {
        println!("  peak build RSS   {:>12.1} MB", p as f64 / 1e6);
    }
    println!("  spilled runs     {:>12}", s.spilled_runs);
    println!(
        "  build time       {:>12.2} s ({:.1} MB/s)",
        secs,
        mb / secs.max(1e-9)
    );
    println!(
        "  guarantee t      prose {} units, code {} units{}",
        opts.params.prose.t(),
        opts.params.code.t(),
        match opts.params.renamed {
            Some(r) => format!(", renamed code {} units", r.t()),
            None => String::new(),
        }
    );
    if !s.skipped.is_empty() {
        let mut by: std::collections::BTreeMap<&str, usize> = Default::default();
        for k in &s.skipped {
            *by.entry(k.reason.as_str()).or_default() += 1;
        }
        let parts: Vec<String> = by.iter().map(|(r, n)| format!("{n} {r}")).collect();
        println!(
            "  skipped files    {:>12} ({})",
            s.skipped.len(),
            parts.join(", ")
        );
        for k in s.skipped.iter().take(20) {
            eprintln!(
                "skipped {}:{}: {} ({})",
                k.corpus,
                k.path,
                k.reason.as_str(),
                k.detail
            );
        }
        if s.skipped.len() > 20 {
            eprintln!("… and {} more skipped files", s.skipped.len() - 20);
        }
    }
    Ok(())
}

fn cmd_info(dir: &Path) -> Result<()> {
    let ix = Index::open(dir)?;
    let m = ix.manifest();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "index_id": m.index_id,
            "format_version": m.format_version,
            "generator": m.generator,
            "params": m.params,
            "stats": m.stats,
            "corpora": m.corpora.iter().map(|c| serde_json::json!({
                "name": c.name, "rights": c.rights, "license": c.license,
                "documents": c.documents, "bytes": c.bytes, "skipped": c.skipped, "digest": c.digest,
            })).collect::<Vec<_>>(),
            "resident_bytes": ix.resident_bytes(),
        }))?
    );
    Ok(())
}

fn cmd_verify(dir: &Path) -> Result<()> {
    let ix = Index::open(dir)?;
    ix.verify()?;
    println!(
        "{}: {} files verified",
        dir.display(),
        ix.manifest().files.len()
    );
    Ok(())
}

fn open_indexes(dirs: &[PathBuf]) -> Result<Vec<Arc<Index>>> {
    dirs.iter()
        .map(|d| {
            Index::open(d)
                .map(Arc::new)
                .with_context(|| format!("cannot open index {}", d.display()))
        })
        .collect()
}

/// The built-in SPDX license index, built into the cache on first use.
fn builtin_license_index() -> Result<PathBuf> {
    let cache = verbatim::license::builtin::cache_dir();
    verbatim::license::builtin::ensure(&cache)
        .with_context(|| format!("built-in license index in {}", cache.display()))
}

fn cmd_scan(a: ScanArgs) -> Result<ExitCode> {
    let mut dirs = a.indexes.clone();
    if !a.no_license_index {
        dirs.push(builtin_license_index()?);
    }
    let indexes = open_indexes(&dirs)?;
    let lang = match &a.lang {
        Some(l) => Some(Lang::from_name(l).with_context(|| format!("unknown language `{l}`"))?),
        None => None,
    };
    let kind_of = |path: Option<&Path>| match a.kind {
        KindArg::Markdown => TextKind::Markdown,
        KindArg::Prose => TextKind::Prose,
        KindArg::ToolArgs => TextKind::ToolArgs,
        KindArg::Patch => TextKind::Patch(lang.unwrap_or(Lang::C_LIKE)),
        KindArg::Code => {
            TextKind::Code(lang.unwrap_or_else(|| match path.map(TextKind::from_path) {
                Some(TextKind::Code(l)) => l,
                _ => Lang::C_LIKE,
            }))
        }
        KindArg::Auto => match (lang, path) {
            (Some(l), _) => TextKind::Code(l),
            (None, None) => TextKind::Markdown,
            (None, Some(p)) => TextKind::from_path(p),
        },
    };
    let format = a.format.unwrap_or(if io::stdout().is_terminal() {
        Format::Text
    } else {
        Format::Jsonl
    });
    // Buffered: stdout alone is line-buffered, one write(2) per finding, and serde_json's many
    // small writes each searched for a newline (a third of a `scan` with 200,000 findings).
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let scan = |input: &mut dyn Read, kind, skip_binary| {
        scan_input(
            &indexes,
            kind,
            input,
            a.no_license_index,
            a.shared,
            skip_binary,
        )
    };

    let stdin = a.inputs.iter().any(|p| p.as_os_str() == "-");
    let single_file = a.inputs.len() == 1 && !a.inputs[0].is_dir();
    if stdin || single_file {
        if a.inputs.len() > 1 {
            anyhow::bail!("`-` (standard input) cannot be scanned together with other inputs");
        }
        let input = &a.inputs[0];
        let mut reader: Box<dyn Read> = if stdin {
            Box::new(io::stdin().lock())
        } else {
            Box::new(
                std::fs::File::open(input)
                    .with_context(|| format!("cannot open {}", input.display()))?,
            )
        };
        let kind = kind_of((!stdin).then_some(input.as_path()));
        let Some((bytes, found)) = scan(&mut *reader, kind, false)
            .with_context(|| format!("cannot read {}", input.display()))?
        else {
            // Not asked to skip binary input, `scan_input` always scans it.
            anyhow::bail!("{}: not scanned", input.display());
        };
        write_scan(
            &mut out,
            &input.display().to_string(),
            None,
            &bytes,
            &found,
            &indexes,
            format,
        )?;
        out.flush()?;
        return Ok(ExitCode::from(u8::from(found.any())));
    }

    // Several inputs, or a directory: every file named and every file under a directory
    // named (hidden entries and links skipped; binary files found there skipped and counted),
    // scanned in parallel, reported in order, each line naming its input.
    let mut problems = Vec::new();
    let mut files: Vec<(PathBuf, bool)> = Vec::new();
    for input in &a.inputs {
        if !input.is_dir() {
            files.push((input.clone(), false));
            continue;
        }
        let walk = walkdir::WalkDir::new(input)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
        for e in walk {
            match e {
                Ok(e) if e.file_type().is_file() => files.push((e.into_path(), true)),
                Ok(_) => {}
                Err(e) => problems.push(format!("{}: {e}", input.display())),
            }
        }
    }
    use rayon::prelude::*;
    let (mut any, mut binary) = (false, 0usize);
    // A batch at a time, so a large tree is not held in memory whole.
    for batch in files.chunks(64) {
        let results: Vec<FileScan> = batch
            .par_iter()
            .map(|(path, walked)| {
                let mut file = std::fs::File::open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                // Binary files a directory walk found are skipped (a file named on the
                // command line is scanned whatever it holds).
                scan(&mut file, kind_of(Some(path)), *walked)
                    .with_context(|| format!("cannot read {}", path.display()))
            })
            .collect();
        for ((path, _), r) in batch.iter().zip(results) {
            match r {
                Ok(Some((bytes, found))) => {
                    let name = path.display().to_string();
                    write_scan(
                        &mut out,
                        &name,
                        Some(&name),
                        &bytes,
                        &found,
                        &indexes,
                        format,
                    )?;
                    any |= found.any();
                }
                Ok(None) => binary += 1,
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
    }
    out.flush()?;
    if binary > 0 {
        eprintln!("verbatim: {binary} binary files skipped");
    }
    for p in &problems {
        eprintln!("verbatim: {p}");
    }
    Ok(ExitCode::from(if !problems.is_empty() {
        2
    } else {
        u8::from(any)
    }))
}

/// What a scan of one input found.
struct Scanned {
    findings: Vec<(
        verbatim::matcher::Finding,
        Option<verbatim::license::identify::Identification>,
    )>,
    markers: Vec<verbatim::license::markers::Marker>,
}

impl Scanned {
    fn any(&self) -> bool {
        !self.findings.is_empty() || !self.markers.is_empty()
    }
}

/// A file's bytes and what its scan found; `None` for a binary file a directory walk skipped.
type FileScan = Result<Option<(Vec<u8>, Scanned)>>;

/// Scans one input as it is read. The input is kept: license texts are identified from the
/// copied text, markers found in it, and the text report quotes it. With `skip_binary`, an
/// input with a NUL byte in its first 8 KiB is not scanned (`None`), as grep skips binary
/// files.
fn scan_input(
    indexes: &[Arc<Index>],
    kind: TextKind,
    input: &mut dyn Read,
    no_markers: bool,
    shared: bool,
    skip_binary: bool,
) -> io::Result<Option<(Vec<u8>, Scanned)>> {
    let mut scanner = Scanner::new(indexes, kind);
    scanner.set_report_shared(shared);
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let head = (8usize << 10).saturating_sub(kept.len()).min(n);
        if skip_binary && buf[..head].contains(&0) {
            return Ok(None);
        }
        if kind != TextKind::ToolArgs {
            scanner.push_bytes(&buf[..n]);
        }
        kept.extend_from_slice(&buf[..n]);
    }
    if kind == TextKind::ToolArgs {
        // Read whole first: a file name anywhere in the arguments names the language.
        let text = verbatim::normalize::text_at_same_offsets(&kept);
        if let Some(h) = verbatim::normalize::tool_args_hint(&text) {
            scanner.set_tool_args_hint(h);
        }
        scanner.push_bytes(&kept);
    }
    scanner.finish();
    let bytes = &kept;
    let mut findings = scanner.take_findings();
    findings.sort_by_key(|f| (f.output_start, f.output_end, f.index, f.doc));
    // Offsets in it are the input's (findings and markers are reported at them).
    let text = verbatim::normalize::text_at_same_offsets(bytes);
    // Runs of license texts are one finding per reproduced region, named by its license.
    let mut findings = verbatim::license::with_regions(findings, indexes, &text);
    findings.sort_by_key(|(f, _)| (f.output_start, f.output_end, f.index, f.doc));
    let markers = if no_markers {
        Vec::new()
    } else if kind == TextKind::ToolArgs {
        verbatim::license::markers::scan_json(&text)
    } else {
        verbatim::license::markers::scan(&text)
    };
    drop(text);
    Ok(Some((kept, Scanned { findings, markers })))
}

/// Writes what a scan of `kept` (named `name`) found; JSON lines carry `input` when given.
fn write_scan(
    out: &mut impl Write,
    name: &str,
    input: Option<&str>,
    kept: &[u8],
    found: &Scanned,
    indexes: &[Arc<Index>],
    format: Format,
) -> Result<()> {
    #[derive(serde::Serialize)]
    struct WithInput<'a, T> {
        input: &'a str,
        #[serde(flatten)]
        line: &'a T,
    }
    for (f, id) in &found.findings {
        let Some(mut r) = FindingReport::new(&indexes[f.index], f) else {
            continue;
        };
        if let Some(id) = id {
            r.apply_identification(id);
        }
        match format {
            Format::Jsonl => {
                match input {
                    Some(input) => {
                        serde_json::to_writer(&mut *out, &WithInput { input, line: &r })?
                    }
                    None => serde_json::to_writer(&mut *out, &r)?,
                }
                writeln!(out)?;
            }
            Format::Text => write_text(out, name, kept, &r)?,
        }
    }
    for m in &found.markers {
        match format {
            Format::Jsonl => {
                #[derive(serde::Serialize)]
                struct Line<'a> {
                    #[serde(skip_serializing_if = "Option::is_none")]
                    input: Option<&'a str>,
                    kind: &'static str,
                    output_start: u64,
                    output_end: u64,
                    marker: &'a verbatim::license::markers::Marker,
                }
                serde_json::to_writer(
                    &mut *out,
                    &Line {
                        input,
                        kind: "license-marker",
                        output_start: m.start,
                        output_end: m.end,
                        marker: m,
                    },
                )?;
                writeln!(out)?;
            }
            Format::Text => {
                let line = 1 + kept[..(m.start as usize).min(kept.len())]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count();
                let what = match (&m.expression, &m.holder, &m.problem) {
                    (Some(e), _, _) => e.clone(),
                    (None, Some(h), _) => format!("© {h}"),
                    (None, None, Some(p)) => format!("unparseable: {p}"),
                    _ => "no license named".into(),
                };
                writeln!(out, "{name}:{line}: license marker ({:?}): {what}", m.kind)?;
                if let Some(i) = &m.imprecise {
                    writeln!(out, "  imprecise identifier `{i}` read as {what}")?;
                }
                writeln!(out)?;
            }
        }
    }
    Ok(())
}

fn write_text(out: &mut impl Write, name: &str, input: &[u8], r: &FindingReport) -> io::Result<()> {
    let line = 1 + input[..(r.output_start as usize).min(input.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count();
    writeln!(
        out,
        "{name}:{line}: {} {} units copied (bytes {}..{}){}",
        r.units,
        r.channel,
        r.output_start,
        r.output_end,
        if r.shared {
            " — boilerplate, many indexed documents hold it"
        } else {
            ""
        }
    )?;
    write!(
        out,
        "  from {}:{} (bytes {}..{})",
        r.corpus, r.doc, r.source_start, r.source_end
    )?;
    if let Some(u) = &r.url {
        write!(out, " {u}")?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "  rights {} · license {} ({})",
        r.rights, r.license, r.license_source
    )?;
    if let Some(c) = r.coverage {
        writeln!(
            out,
            "  license text: {:.0} % of {} reproduced",
            c * 100.0,
            r.license
        )?;
    }
    let s = (r.output_start as usize).min(input.len());
    let e = (r.output_end as usize).min(input.len());
    let text = String::from_utf8_lossy(&input[s..e]);
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let excerpt: String = if flat.chars().count() > 160 {
        flat.chars().take(157).collect::<String>() + "…"
    } else {
        flat
    };
    writeln!(out, "  │ {excerpt}")?;
    writeln!(out)
}

fn cmd_serve(a: ServeArgs) -> Result<()> {
    use verbatim::proxy::config::{Config, UpstreamHttp2, parse_upstream};
    use verbatim::proxy::pipeline::Hold;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        .init();
    let mut cfg = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(l) = a.listen {
        cfg.listen = l;
    }
    if let Some(u) = &a.upstream_openai {
        cfg.upstream_openai = parse_upstream(u)
            .map_err(anyhow::Error::msg)
            .context("--upstream-openai")?;
    }
    if let Some(u) = &a.upstream_anthropic {
        cfg.upstream_anthropic = parse_upstream(u)
            .map_err(anyhow::Error::msg)
            .context("--upstream-anthropic")?;
    }
    if let Some(h) = a.upstream_http2.as_deref().and_then(UpstreamHttp2::parse) {
        cfg.upstream_http2 = h;
    }
    if !a.indexes.is_empty() {
        cfg.indexes = a.indexes.clone();
    }
    if let Some(x) = a.admin_listen {
        cfg.admin_listen = Some(x);
    }
    if let Some(p) = &a.policy {
        cfg.policy = Some(p.clone());
    }
    if let Some(p) = &a.audit_log {
        cfg.audit_log = Some(p.clone());
    }
    if let Some(h) = &a.hold {
        cfg.hold = if h == "none" {
            Hold::None
        } else {
            Hold::Strict
        };
    }
    if a.no_license_index {
        cfg.license_index = false;
    }
    if a.no_warm {
        cfg.warm_indexes = false;
    }
    if cfg.license_index {
        let p = builtin_license_index()?;
        tracing::info!(index = %p.display(), "built-in SPDX license index");
        cfg.indexes.insert(0, p);
    }
    let indexes = open_indexes(&cfg.indexes)?;
    if indexes.is_empty() {
        tracing::warn!("no index configured (--index DIR): responses are relayed without scanning");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let server = verbatim::proxy::server::Server::bind(cfg.clone(), indexes).await?;
        // SIGHUP reloads the policy and indexes; in-flight streams keep theirs.
        #[cfg(unix)]
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            let handle = server.handle();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    // A reload reads its indexes from the disk: not on the runtime's threads.
                    let h = handle.clone();
                    let _ = tokio::task::spawn_blocking(move || h.reload()).await;
                }
            });
        }
        tracing::info!(
            listen = %server.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            openai = %cfg.upstream_openai,
            anthropic = %cfg.upstream_anthropic,
            upstream_http2 = ?cfg.upstream_http2,
            indexes = cfg.indexes.len(),
            hold = ?cfg.hold,
            admin = %server.admin_addr().map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
            "verbatim proxy listening"
        );
        server.run(shutdown_signal()).await;
        tracing::info!("stopped");
        Ok::<_, anyhow::Error>(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn load_policy(
    file: &Path,
    indexes: &[PathBuf],
) -> Result<(verbatim::policy::Policy, Vec<Arc<Index>>)> {
    let policy = verbatim::policy::Policy::load(file)?;
    let ixs = open_indexes(indexes)?;
    let problems = policy.check_against(file, &ixs);
    if !problems.is_empty() {
        anyhow::bail!("{problems}");
    }
    for l in &policy.lints {
        eprintln!("warning: {l}");
    }
    Ok((policy, ixs))
}

fn cmd_policy(c: PolicyCommand) -> Result<ExitCode> {
    use verbatim::policy::Facts;
    match c {
        PolicyCommand::Check { file, indexes } => {
            let (p, _) = load_policy(&file, &indexes)?;
            println!(
                "{}: policy `{}` is valid: {} rules, {} exceptions, {} tests, default {}{}",
                file.display(),
                p.name,
                p.rules.len(),
                p.exceptions.len(),
                p.tests.len(),
                p.default_action.as_str(),
                if p.shadow { ", shadow mode" } else { "" }
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Test { file, indexes } => {
            let (p, _) = load_policy(&file, &indexes)?;
            let results = p.run_tests();
            let mut failed = 0;
            for (t, v, ok) in &results {
                if *ok {
                    println!("ok     {} → {} ({})", t.name, v.action.as_str(), v.rule);
                } else {
                    failed += 1;
                    let want_rule = t
                        .rule
                        .as_deref()
                        .map(|r| format!(" by `{r}`"))
                        .unwrap_or_default();
                    println!(
                        "FAILED {}: expected {}{want_rule}, got {} by `{}` ({})",
                        t.name,
                        t.expect.as_str(),
                        v.action.as_str(),
                        v.rule,
                        v.reason
                    );
                }
            }
            let used: std::collections::HashSet<&str> =
                results.iter().map(|(_, v, _)| v.rule.as_str()).collect();
            for r in p.rules.iter().chain(&p.exceptions) {
                if !used.contains(r.name.as_str()) {
                    eprintln!("warning: rule `{}` decided no test case", r.name);
                }
            }
            println!("{} passed, {} failed", results.len() - failed, failed);
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        PolicyCommand::Explain {
            file,
            findings,
            text,
            indexes,
            tenant,
            route,
            model,
        } => {
            let (p, ixs) = load_policy(&file, &indexes)?;
            let mut facts: Vec<(String, Facts)> = Vec::new();
            let scope = |mut f: Facts| {
                f.tenant = tenant.clone();
                f.route = route.clone();
                f.model = model.clone();
                f
            };
            if let Some(path) = &findings {
                let body = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                for (i, line) in body
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    let r: serde_json::Value = serde_json::from_str(line)
                        .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
                    let s = |k: &str| {
                        r.get(k)
                            .and_then(|v| v.as_str())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let n = |k: &str| r.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
                    let f = Facts {
                        kind: if r
                            .get("caller_supplied")
                            .and_then(|v| v.as_bool())
                            .unwrap_or(false)
                        {
                            "caller-supplied".into()
                        } else {
                            s("kind")
                        },
                        source: s("channel"),
                        rights: s("rights"),
                        license: s("license"),
                        corpus: s("corpus"),
                        units: n("units") as u32,
                        // `scan` output before these keys: the run counts as one piece.
                        exact_units: r
                            .get("exact_units")
                            .and_then(|v| v.as_u64())
                            .map(|v| v as u32),
                        aligned_units: r
                            .get("aligned_units")
                            .and_then(|v| v.as_u64())
                            .map(|v| v as u32),
                        chars: n("output_end").saturating_sub(n("output_start")),
                        similarity: r.get("similarity").and_then(|v| v.as_f64()).unwrap_or(1.0),
                        ..Facts::default()
                    };
                    facts.push((
                        format!("{}:{} {}", s("corpus"), s("doc"), n("units")),
                        scope(f),
                    ));
                }
            } else if let Some(path) = &text {
                anyhow::ensure!(!ixs.is_empty(), "--text needs --index");
                let body = std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let mut sc = Scanner::new(&ixs, TextKind::Markdown);
                sc.push_bytes(&body);
                sc.finish();
                for f in sc.take_findings() {
                    let Some(r) = FindingReport::new(&ixs[f.index], &f) else {
                        continue;
                    };
                    let fa = Facts {
                        rights: r.rights.into(),
                        license: r.license.clone(),
                        corpus: r.corpus.clone(),
                        ..Facts::of_finding(&f)
                    };
                    facts.push((
                        format!(
                            "bytes {}..{} from {}:{}",
                            f.output_start, f.output_end, r.corpus, r.doc
                        ),
                        scope(fa),
                    ));
                }
            } else {
                anyhow::bail!("give --findings FILE.jsonl or --text FILE --index DIR");
            }
            for (label, f) in &facts {
                let v = p.decide(f);
                println!(
                    "{label}: {} by `{}` ({}){}",
                    v.action.as_str(),
                    v.rule,
                    v.reason,
                    if v.shadow {
                        " [shadow: only logged]"
                    } else {
                        ""
                    }
                );
                // What the piece conditions weigh, when the finding is not one piece.
                let pieces = match (f.exact_units, f.aligned_units) {
                    (Some(e), Some(a)) if e < f.units || a < f.units => {
                        format!(" (longest exact piece {e}, longest stretch without a gap {a})")
                    }
                    _ => String::new(),
                };
                println!(
                    "  facts: kind {}, source {}, rights {}, license {} ({}), corpus {}, {} units{pieces}",
                    f.kind,
                    f.source,
                    f.rights,
                    f.license,
                    verbatim::policy::category(&f.license, &p.categories).as_str(),
                    f.corpus,
                    f.units
                );
                for r in p
                    .exceptions
                    .iter()
                    .map(|r| ("exception", r))
                    .chain(p.rules.iter().map(|r| ("rule", r)))
                {
                    match r.1.when.mismatch(f, &p.categories) {
                        None => {
                            println!("  {} `{}` matches → {}", r.0, r.1.name, r.1.action.as_str())
                        }
                        Some(why) => println!("  {} `{}` does not match: {why}", r.0, r.1.name),
                    }
                }
            }
            if facts.is_empty() {
                println!("no findings");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn cmd_inspect(manifests: &[PathBuf], format: Option<Format>) -> Result<()> {
    use verbatim::license::resolve::Resolver;
    let corpora = verbatim::corpus::load_manifests(&manifest_paths(manifests)?)?;
    let format = format.unwrap_or(if io::stdout().is_terminal() {
        Format::Text
    } else {
        Format::Jsonl
    });
    let resolver = Resolver::new();
    let out = io::stdout();
    let mut out = out.lock();
    for c in &corpora {
        let (files, skipped) = c.files();
        let mut by_license: std::collections::BTreeMap<String, usize> = Default::default();
        if let Format::Text = format {
            writeln!(
                out,
                "corpus {} ({}): {} files",
                c.name,
                c.manifest.display(),
                files.len()
            )?;
        }
        for f in &files {
            let text = match verbatim::corpus::read_text(f, 64 << 20) {
                Ok(t) => t,
                Err((reason, detail)) => {
                    if let Format::Text = format {
                        writeln!(out, "  {}  skipped: {} ({detail})", f.rel, reason.as_str())?;
                    }
                    continue;
                }
            };
            let r = resolver.resolve(c, f, &text);
            *by_license.entry(r.expression.clone()).or_default() += 1;
            match format {
                Format::Jsonl => {
                    #[derive(serde::Serialize)]
                    struct Line<'a> {
                        corpus: &'a str,
                        path: &'a str,
                        #[serde(flatten)]
                        resolution: &'a verbatim::license::resolve::Resolution,
                    }
                    serde_json::to_writer(
                        &mut out,
                        &Line {
                            corpus: &c.name,
                            path: &f.rel,
                            resolution: &r,
                        },
                    )?;
                    writeln!(out)?;
                }
                Format::Text => {
                    write!(out, "  {}  {}  ({}", f.rel, r.expression, r.source)?;
                    if let Some(from) = &r.from {
                        write!(out, ": {from}")?;
                    }
                    writeln!(out, ")")?;
                    for x in &r.conflicts {
                        write!(
                            out,
                            "      disagrees: {} says {}",
                            x.source.as_str(),
                            x.expression
                        )?;
                        if let Some(from) = &x.from {
                            write!(out, " ({from})")?;
                        }
                        writeln!(out)?;
                    }
                }
            }
        }
        if let Format::Text = format {
            writeln!(out, "  by license:")?;
            let mut rows: Vec<_> = by_license.into_iter().collect();
            rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            for (l, n) in rows {
                writeln!(out, "    {n:>6}  {l}")?;
            }
            if !skipped.is_empty() {
                writeln!(out, "  {} files skipped while listing", skipped.len())?;
            }
            writeln!(out)?;
        }
    }
    Ok(())
}

fn cmd_report(logs: &[PathBuf], since: Option<&str>, out: &Path) -> Result<()> {
    let mut text = String::new();
    for log in logs {
        let t = std::fs::read_to_string(log)
            .with_context(|| format!("cannot read {}", log.display()))?;
        text.push_str(&t);
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
    }
    let summary = verbatim::report::read(&text, since);
    let names: Vec<String> = logs.iter().map(|l| l.display().to_string()).collect();
    let page = verbatim::report::html(&summary, &names.join(", "), &verbatim::audit::now());
    std::fs::write(out, page).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "{}: {} decisions, {} responses{}",
        out.display(),
        summary.decisions.len(),
        summary.stream_ends.len(),
        if summary.skipped_lines > 0 {
            format!(", {} unreadable lines skipped", summary.skipped_lines)
        } else {
            String::new()
        }
    );
    Ok(())
}
