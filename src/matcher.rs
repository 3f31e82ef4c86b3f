//! The streaming matcher: output text in (any chunking), findings out — runs of at least `t`
//! units that also occur, unit for unit, in an indexed document.
//!
//! For every unit that arrives, the k-gram it completes is probed in each index (the query side
//! probes *every* k-gram; the index side sampled every p-th, so every run of `t = k + p − 1`
//! units is hit by the time its t-th unit arrives). A hit is verified against the document's
//! unit store, extended to the left through the recent output, and then kept open and
//! extended to the right as units arrive, until a unit differs; a run that reached `t` units
//! becomes a [`Finding`].
//!
//! The [`Scanner`] is sans-IO and is the one code path for `verbatim scan` and the proxy: an
//! offline scan and a live stream cannot disagree. It owns normalisation and matching; it does
//! not decide what to do about a finding (policy) or how to report it (callers).

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashSet;
use serde::Serialize;

use crate::hash::{RollingKgram, stored};
use crate::index::{Index, Params};
use crate::normalize::{Channel, Normalizer, TextKind, Unit};

/// How a run matched. This engine reports exact runs; the near-verbatim channels add kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatchKind {
    Exact,
    /// A run of an SPDX license or exception text (a corpus of kind `license-text`).
    LicenseText,
}

impl MatchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchKind::Exact => "exact",
            MatchKind::LicenseText => "license-text",
        }
    }
}

/// What a run of `doc` is: a license text when its corpus is of kind `license-text`.
fn kind_of(index: &Index, doc: u32) -> MatchKind {
    match index.doc(doc).map(|d| index.corpus(d).kind) {
        Some(crate::corpus::CorpusKind::LicenseText) => MatchKind::LicenseText,
        _ => MatchKind::Exact,
    }
}

/// A run of output units found in an indexed document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Finding {
    /// Byte range in the scanned output.
    pub output_start: u64,
    pub output_end: u64,
    /// Which of the scanner's indexes.
    pub index: usize,
    pub doc: u32,
    /// Unit range in the document.
    pub doc_unit_start: u32,
    pub units: u32,
    pub kind: MatchKind,
    pub channel: Channel,
    /// The run also occurs in text the caller supplied in the request.
    pub caller_supplied: bool,
}

/// Units of recent output kept for left extension. A run's first sampled k-gram starts within
/// its first p units, so a few hundred units is far more than exact matching needs.
const HISTORY: usize = 256;

#[derive(Debug, Clone)]
struct Candidate {
    doc: u32,
    doc_start: u32,
    out_start: u64,
    out_end: u64,
    len: u32,
    channel: Channel,
    /// Seeded by a k-gram that also occurs in the caller's own request text.
    caller_supplied: bool,
}

/// Matches one index against the unit stream.
struct IndexMatcher {
    index: Arc<Index>,
    /// Every corpus of the index is license texts.
    license_only: bool,
    params: Params,
    open: Vec<Candidate>,
    /// Documents with an open run (at most one run per document is open at a time, which also
    /// keeps repetitive documents from reporting the same output twice).
    open_docs: FxHashSet<u32>,
    roll: RollingKgram,
    roll_channel: Option<Channel>,
    /// Per fresh unit: its k-gram key if the filter may contain it.
    probes: Vec<Option<u64>>,
}

impl IndexMatcher {
    fn close(&self, c: &Candidate, which: usize, out: &mut Vec<Finding>) {
        if c.len >= self.params.channel(c.channel).t() {
            out.push(Finding {
                output_start: c.out_start,
                output_end: c.out_end,
                index: which,
                doc: c.doc,
                doc_unit_start: c.doc_start,
                units: c.len,
                kind: kind_of(&self.index, c.doc),
                channel: c.channel,
                caller_supplied: c.caller_supplied,
            });
        }
    }

    /// Rolls the k-gram keys of `fresh` (continuing from `hist`) and probes the filter for all
    /// of them in one tight loop, so the filter's cache misses overlap instead of stalling the
    /// per-unit logic one at a time. Fills `self.probes` with one entry per fresh unit.
    fn prepare(&mut self, hist: &VecDeque<Unit>, fresh: &[Unit]) {
        self.probes.clear();
        for (j, u) in fresh.iter().enumerate() {
            let k = self.params.channel(u.channel).k as usize;
            if self.roll_channel != Some(u.channel) {
                self.roll = RollingKgram::new(k);
                self.roll_channel = Some(u.channel);
            }
            let leaving = if j >= k {
                Some(fresh[j - k].hash)
            } else {
                hist.len().checked_sub(k - j).map(|i| hist[i].hash)
            };
            self.probes.push(self.roll.push(u.hash, leaving));
        }
        self.index.retain_possible(&mut self.probes);
    }

    /// Takes the last unit of `hist`; `probe` is the key of the k-gram it completes if the
    /// filter says the index may hold it.
    fn on_unit(
        &mut self,
        hist: &VecDeque<Unit>,
        probe: Option<u64>,
        exempt: &FxHashSet<u64>,
        which: usize,
        out: &mut Vec<Finding>,
    ) {
        let Some(unit) = hist.back() else { return };
        let h32 = stored(unit.hash);
        let index = &*self.index;

        // Extend open runs by this unit, or close them.
        let mut i = 0;
        while i < self.open.len() {
            let c = &mut self.open[i];
            if index.doc_units(c.doc).get((c.doc_start + c.len) as usize) == Some(&h32) {
                c.len += 1;
                c.out_end = unit.end;
                i += 1;
            } else {
                let c = self.open.swap_remove(i);
                self.open_docs.remove(&c.doc);
                self.close(&c, which, out);
            }
        }

        let Some(key) = probe else { return };
        let ch = unit.channel;
        let k = self.params.channel(ch).k as usize;
        let first = hist.len() - k;
        let postings = index.lookup_unfiltered(key);
        if postings.is_empty() {
            return;
        }
        for p in postings {
            if self.open_docs.contains(&p.doc) {
                continue; // already inside a run of this document
            }
            let units = index.doc_units(p.doc);
            let q = p.pos as usize;
            let Some(window) = units.get(q..q + k) else {
                continue;
            };
            if !window
                .iter()
                .zip(hist.range(first..))
                .all(|(d, o)| *d == stored(o.hash))
            {
                continue; // filter false positive or hash collision
            }
            // Extend left through the kept history.
            let mut e = 0usize;
            while e < first && e < q {
                let o = &hist[first - e - 1];
                if units[q - e - 1] != stored(o.hash) {
                    break;
                }
                e += 1;
            }
            self.open_docs.insert(p.doc);
            self.open.push(Candidate {
                doc: p.doc,
                doc_start: (q - e) as u32,
                out_start: hist[first - e].start,
                out_end: unit.end,
                len: (k + e) as u32,
                channel: ch,
                caller_supplied: exempt.contains(&key),
            });
        }
    }

    fn finish(&mut self, which: usize, out: &mut Vec<Finding>) {
        self.open_docs.clear();
        for c in std::mem::take(&mut self.open) {
            self.close(&c, which, out);
        }
    }
}

/// Scans one output stream against one or more indexes.
pub struct Scanner {
    norm: Normalizer,
    matchers: Vec<IndexMatcher>,
    /// K-gram keys of text the caller supplied (see [`Exemptions`]).
    exempt: Arc<FxHashSet<u64>>,
    hist: VecDeque<Unit>,
    fresh: Vec<Unit>,
    findings: Vec<Finding>,
    /// Largest `t` of each channel over all indexes (prose, code): the holdback in units.
    t_max: [u32; 2],
    hold_license_runs: bool,
}

impl Scanner {
    pub fn new(indexes: &[Arc<Index>], kind: TextKind) -> Self {
        let matchers: Vec<_> = indexes
            .iter()
            .map(|ix| IndexMatcher {
                license_only: ix
                    .manifest()
                    .corpora
                    .iter()
                    .all(|c| c.kind == crate::corpus::CorpusKind::LicenseText),
                index: Arc::clone(ix),
                params: ix.params(),
                open: Vec::new(),
                open_docs: FxHashSet::default(),
                roll: RollingKgram::new(1),
                roll_channel: None,
                probes: Vec::new(),
            })
            .collect();
        let t_of = |c: Channel| {
            matchers
                .iter()
                .map(|m| m.params.channel(c).t())
                .max()
                .unwrap_or(1)
        };
        let t_max = [t_of(Channel::Prose), t_of(Channel::Code)];
        Scanner {
            norm: Normalizer::new(kind),
            matchers,
            exempt: Arc::default(),
            hist: VecDeque::with_capacity(HISTORY + 1),
            fresh: Vec::new(),
            findings: Vec::new(),
            t_max,
            hold_license_runs: true,
        }
    }

    /// Whether [`Scanner::stable_offset`] holds back open runs of license-text indexes (true by
    /// default). A proxy whose policy cannot block a license text sets it false: such runs are
    /// only cited, and holding a whole license back until it ends would delay it for nothing.
    pub fn set_hold_license_runs(&mut self, hold: bool) {
        self.hold_license_runs = hold;
    }

    /// Feeds text.
    pub fn push_str(&mut self, text: &str) {
        let mut fresh = std::mem::take(&mut self.fresh);
        self.norm.push_str(text, &mut fresh);
        self.take_units(&mut fresh);
        self.fresh = fresh;
    }

    /// Feeds raw bytes (UTF-8 sequences may be split across calls).
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        let mut fresh = std::mem::take(&mut self.fresh);
        self.norm.push_bytes(bytes, &mut fresh);
        self.take_units(&mut fresh);
        self.fresh = fresh;
    }

    /// Ends the stream: open runs are closed and reported.
    pub fn finish(&mut self) {
        let mut fresh = std::mem::take(&mut self.fresh);
        self.norm.finish(&mut fresh);
        self.take_units(&mut fresh);
        self.fresh = fresh;
        for (i, m) in self.matchers.iter_mut().enumerate() {
            m.finish(i, &mut self.findings);
        }
    }

    fn take_units(&mut self, fresh: &mut Vec<Unit>) {
        if fresh.is_empty() {
            return;
        }
        for m in &mut self.matchers {
            m.prepare(&self.hist, fresh);
        }
        for (j, u) in fresh.drain(..).enumerate() {
            if self.hist.len() == HISTORY {
                self.hist.pop_front();
            }
            self.hist.push_back(u);
            for (i, m) in self.matchers.iter_mut().enumerate() {
                let probe = m.probes[j];
                m.on_unit(&self.hist, probe, &self.exempt, i, &mut self.findings);
            }
        }
    }

    /// Findings completed so far (each is reported once).
    pub fn take_findings(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.findings)
    }

    /// Bytes received so far.
    pub fn offset(&self) -> u64 {
        self.norm.offset()
    }

    /// The byte offset before which output can be released without letting any unit of a run
    /// of `t` or more units out before that run is detected: the last `t − 1` units (t of the
    /// latest unit's channel: a channel change closes every run of the other channel, so those
    /// are decided already), any unit still being formed, and every open run are held back.
    pub fn stable_offset(&self) -> u64 {
        let mut p = self.norm.pending_start();
        if let Some(last) = self.hist.back() {
            let t = self.t_max[match last.channel {
                Channel::Prose => 0,
                Channel::Code => 1,
            }];
            let held = (t as usize).saturating_sub(1);
            if held > 0 {
                let i = self.hist.len().saturating_sub(held);
                p = p.min(self.hist[i].start);
            }
        }
        for m in &self.matchers {
            if m.license_only && !self.hold_license_runs {
                continue;
            }
            for c in &m.open {
                p = p.min(c.out_start);
            }
        }
        p
    }

    /// Treats runs seeded by these k-gram keys as text the caller supplied.
    pub fn set_exemptions(&mut self, exempt: Arc<FxHashSet<u64>>) {
        self.exempt = exempt;
    }

    /// The runs still open (still growing): where they start in the output, how long they are.
    pub fn open_runs(&self) -> impl Iterator<Item = OpenRun> + '_ {
        self.matchers.iter().enumerate().flat_map(|(i, m)| {
            m.open.iter().map(move |c| OpenRun {
                output_start: c.out_start,
                output_end: c.out_end,
                kind: kind_of(&m.index, c.doc),
                units: c.len,
                channel: c.channel,
                index: i,
                doc: c.doc,
                doc_unit_start: c.doc_start,
                caller_supplied: c.caller_supplied,
            })
        })
    }
}

/// A run still being matched (see [`Scanner::open_runs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenRun {
    pub output_start: u64,
    pub output_end: u64,
    pub kind: MatchKind,
    pub units: u32,
    pub channel: Channel,
    pub index: usize,
    pub doc: u32,
    pub doc_unit_start: u32,
    pub caller_supplied: bool,
}

impl OpenRun {
    /// The run as a finding (as if it ended now).
    pub fn as_finding(&self) -> Finding {
        Finding {
            output_start: self.output_start,
            output_end: self.output_end,
            index: self.index,
            doc: self.doc,
            doc_unit_start: self.doc_unit_start,
            units: self.units,
            kind: self.kind,
            channel: self.channel,
            caller_supplied: self.caller_supplied,
        }
    }
}

/// The k-gram keys of text the caller supplied (system prompt, messages, tool results,
/// documents), computed with the k of every channel of every index, so a run of the output
/// that repeats the request can be told apart from one the model produced.
pub fn exemptions<'a>(
    texts: impl IntoIterator<Item = &'a str>,
    indexes: &[Arc<Index>],
) -> FxHashSet<u64> {
    let mut ks: Vec<(Channel, usize)> = indexes
        .iter()
        .flat_map(|ix| {
            let p = ix.params();
            [
                (Channel::Prose, p.prose.k as usize),
                (Channel::Code, p.code.k as usize),
            ]
        })
        .collect();
    ks.sort_unstable();
    ks.dedup();
    let mut keys = FxHashSet::default();
    for text in texts {
        let units = crate::normalize::normalize(text, TextKind::Markdown);
        for &(channel, k) in &ks {
            let mut roll = RollingKgram::new(k);
            for (i, u) in units.iter().enumerate() {
                if u.channel != channel {
                    roll.reset();
                    continue;
                }
                let leaving = i.checked_sub(k).map(|j| units[j].hash);
                if let Some(key) = roll.push(u.hash, leaving) {
                    keys.insert(key);
                }
            }
        }
    }
    keys
}

/// A finding with the facts of its source, as `scan` prints it (one JSON object per line).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FindingReport {
    pub output_start: u64,
    pub output_end: u64,
    pub corpus: String,
    pub doc: String,
    pub url: Option<String>,
    pub source_start: u64,
    pub source_end: u64,
    pub units: u32,
    pub kind: MatchKind,
    pub channel: &'static str,
    pub license: String,
    pub license_source: String,
    pub rights: &'static str,
    pub title: Option<String>,
    pub rights_holder: Option<String>,
    pub index_id: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub caller_supplied: bool,
    /// A license text: the share of the license the output reproduces (0–1); `license` is then
    /// the license identified from the output itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<f64>,
}

impl FindingReport {
    pub fn new(index: &Index, f: &Finding) -> Option<FindingReport> {
        let doc = index.doc(f.doc)?;
        let corpus = index.corpus(doc);
        let (source_start, _) = index.unit_span(f.doc, f.doc_unit_start)?;
        let (_, source_end) = index.unit_span(f.doc, f.doc_unit_start + f.units - 1)?;
        Some(FindingReport {
            output_start: f.output_start,
            output_end: f.output_end,
            corpus: corpus.name.clone(),
            doc: doc.path.clone(),
            url: doc.url.clone(),
            source_start: u64::from(source_start),
            source_end: u64::from(source_end),
            units: f.units,
            kind: f.kind,
            channel: f.channel.as_str(),
            license: doc.license.clone(),
            license_source: doc.license_source.clone(),
            rights: corpus.rights.as_str(),
            title: corpus.metadata.get("title").cloned(),
            rights_holder: corpus.metadata.get("rights_holder").cloned(),
            index_id: index.manifest().index_id.clone(),
            caller_supplied: f.caller_supplied,
            coverage: None,
        })
    }

    /// For a license-text run, names the license from the reproduced `span` itself (a run of
    /// one license's text may also occur in others) and says how much of it was reproduced.
    pub fn identify_license(&mut self, span: &str) {
        if self.kind != MatchKind::LicenseText {
            return;
        }
        if let Some(id) = crate::license::LicenseDb::builtin().identify(span) {
            self.apply_identification(&id);
        }
    }

    /// [`FindingReport::identify_license`] with an identification already made (by
    /// [`crate::license::collapse`], for the whole region).
    pub fn apply_identification(&mut self, id: &crate::license::Identification) {
        self.license = id.id.clone();
        self.license_source = "identified".into();
        self.coverage = Some((id.coverage * 1000.0).round() / 1000.0);
    }
}
