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

use crate::hash::{RecentNames, RollingKgram, RollingRenamed, prev_distances, stored};
use crate::index::{ChannelParams, Index, Params};
use crate::normalize::{Channel, Normalizer, TextKind, Unit, UnitClass};

/// How a run matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatchKind {
    /// Every unit equal.
    Exact,
    /// Every unit equal, except identifiers renamed consistently and literals changed.
    Renamed,
    /// Aligned pieces with small gaps between them (changed, inserted or deleted units).
    Near,
    /// A run of an SPDX license or exception text (a corpus of kind `license-text`).
    LicenseText,
}

impl MatchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchKind::Exact => "exact",
            MatchKind::Renamed => "renamed",
            MatchKind::Near => "near",
            MatchKind::LicenseText => "license-text",
        }
    }
}

/// Whether `doc` is a license text (its corpus is of kind `license-text`).
fn is_license(index: &Index, doc: u32) -> bool {
    matches!(
        index.doc(doc).map(|d| index.corpus(d).kind),
        Some(crate::corpus::CorpusKind::LicenseText)
    )
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
    /// Unit range in the document: `doc_unit_start .. doc_unit_start + source_units`.
    pub doc_unit_start: u32,
    pub source_units: u32,
    /// Output units in the run (for `near`, including the ones in gaps).
    pub units: u32,
    /// Units aligned with the source, equal or renamed (`units` for exact and renamed runs).
    pub matched: u32,
    /// The longest run of equal units in it (`units` for exact runs).
    pub longest: u32,
    /// The longest stretch of it without a gap, of equal or renamed units (`units` for exact
    /// and renamed runs).
    pub longest_aligned: u32,
    /// For a renamed run that is otherwise reportable (long enough, hit by a rare key): how
    /// much of its source region is structure not repeated within it (see [`structure`]; long
    /// literals count by value when every literal of the run equals its source's, identifiers
    /// when every identifier does). For a gapped run with renamed units and no exact piece of
    /// `t`, hit by a rare key: the same of the source region of its
    /// [`longest_aligned`](Finding::longest_aligned) stretch, if that is at least
    /// [`RENAMED_PIECE_FACTOR`] times [`renamed_min`] units. `units` for every other run. What
    /// [`Finding::aligned_units`] weighs.
    pub structure: u32,
    /// In how many indexed documents the rarest k-gram that hit the run occurs (estimated from
    /// the documents it was sampled in, times the sampling period).
    pub key_docs: u32,
    pub kind: MatchKind,
    pub channel: Channel,
    /// The run also occurs in text the caller supplied in the request.
    pub caller_supplied: bool,
    /// A short run (under [`SHARED_MAX_T`] times its channel's `t`) that at least
    /// `common_threshold` documents of the index hold whole — the documents whose runs, open
    /// or closed moments before, cover its output span (every document holding a shared text
    /// of `t` units gets one): boilerplate such as a standard import block, not reported
    /// ([`qualifies`]).
    pub widely_shared: bool,
}

impl Finding {
    /// Similarity of the output region and the source region: 2·aligned / (output units +
    /// source units) — the F-measure of their alignment, as ROUGE-L's over the longest common
    /// subsequence (our alignment is one common subsequence, so this is a lower bound of it).
    /// 1 for exact and renamed runs.
    pub fn similarity(&self) -> f64 {
        let total = f64::from(self.units) + f64::from(self.source_units);
        if total == 0.0 {
            return 0.0;
        }
        (2.0 * f64::from(self.matched) / total).min(1.0)
    }

    /// The longest stretch without a gap, renamed units counting as copied — where names were
    /// renamed, only as much as its [`structure`](Finding::structure): a run of one shape repeated
    /// (enum arms each `X::A => write!(f, "a")`, serde's forwarding methods) renamed over
    /// 80–160 units holds 43–52 units of structure in unrelated crates' code, a renamed copy
    /// of code of its own about as much as its length (docs/proxy.md). A gapped run with an
    /// exact piece of `t` is not measured (measuring every such run cost copied code 5 % of its
    /// scan rate): its stretch counts whole. What a policy's `min_aligned_units` weighs.
    pub fn aligned_units(&self) -> u32 {
        self.longest_aligned.min(self.structure)
    }
}

/// Whether a run is reported: exact runs of at least the channel's `t`; renamed runs of at
/// least the renamed channel's `t`; gapped runs with a similarity of at least
/// [`NEAR_MIN_SIMILARITY`] and, in prose, at least `2t` aligned words (a short quotation plus a
/// few words that happen to fit is not a copy), in code at least `t + k/2` aligned tokens of
/// which one piece without a gap is at least `t` long (code's short seeds and low-entropy tokens
/// align by chance far more often; see docs/quality.md) — or, for a run with renamed units, one
/// stretch without a gap of [`RENAMED_PIECE_FACTOR`] times the units and structure a renamed
/// run needs. The same rule
/// for a finding and for a run still open ([`Scanner::open_finding`]), so a strict holdback blocks
/// exactly what would be reported.
pub fn qualifies(params: &Params, f: &Finding) -> bool {
    // A short text that many documents share is no evidence of copying any one of them: the
    // rule the index applies to a k-gram (a common key is dropped), applied to the whole run.
    // License texts are the license layer's (many licenses share their disclaimers).
    if f.widely_shared && f.kind != MatchKind::LicenseText {
        return false;
    }
    let cp = params.channel(f.channel);
    // A run that is not an exact copy must have been hit by a k-gram that is not boilerplate.
    let rare = |f: &Finding| f.key_docs < params.common_threshold;
    let near = |f: &Finding| {
        // Code's piece may also be a renamed one: a renamed copy with a token changed (or
        // whose run reached across a gap into the text around it) holds a renamed run —
        // twice as long as a renamed finding needs: runs that cross gaps in idiomatic code
        // (getters, builder setters) hold stretches of 39–77 renamed units in unrelated
        // crates (docs/near-verbatim.md).
        let renamed_piece = |f: &Finding| {
            renamed_stretch_min(params)
                .is_some_and(|min| f.longest_aligned >= min && f.structure >= min)
        };
        let enough = match f.channel {
            Channel::Prose => f.matched >= 2 * cp.t(),
            Channel::Code => {
                f.matched >= cp.t() + cp.k / 2 && (f.longest >= cp.t() || renamed_piece(f))
            }
        };
        enough && f.similarity() >= NEAR_MIN_SIMILARITY && rare(f)
    };
    match f.kind {
        MatchKind::Near => near(f),
        MatchKind::Renamed => params.renamed.is_some_and(|r| {
            let min = renamed_min(params, r);
            f.units >= min && f.structure >= min && rare(f)
        }),
        // License-text runs and exact runs (a gapped license run is judged as near).
        _ if f.matched < f.units => near(f),
        _ => f.units >= cp.t(),
    }
}

/// The fewest units a renamed run is reported with: its channel's `t`, and never fewer than
/// the code channel's `t + k` (39 by default) — structure alone is weaker evidence than text.
pub fn renamed_min(params: &Params, r: ChannelParams) -> u32 {
    r.t().max(params.code.t() + params.code.k)
}

/// A gapped code run without an exact piece of `t` is reported for a stretch without a gap
/// of this many times [`renamed_min`] units, with as much structure ([`qualifies`]).
pub const RENAMED_PIECE_FACTOR: u32 = 2;

/// The units (and structure) such a stretch needs; `None` without the renamed channel.
pub fn renamed_stretch_min(params: &Params) -> Option<u32> {
    params
        .renamed
        .map(|r| RENAMED_PIECE_FACTOR * renamed_min(params, r))
}

/// Bytes a literal needs to count as copied text in [`structure`]: `"abcd"`, `10000`,
/// `0x1234`. Shorter ones — `0`, `1`, `"a"`, enum discriminants counting up — are what
/// independently written lists of one form share.
pub const LONG_LITERAL: u64 = 6;

/// Width of the windows [`structure`] compares.
pub const STRUCTURE_W: usize = 12;
/// [`structure`] looks at most this many units of a run.
pub const STRUCTURE_MAX: usize = 4096;

/// How much structure a source region holds that it does not repeat: the number of its units
/// not inside a window of [`STRUCTURE_W`] units that occurred earlier in it, with identifiers
/// and literals abstracted to their class (so a region that never repeats itself counts its
/// length). A renamed run matches *shape*, and a list of items of one form (`pub use
/// self::a::b;` lines, `#[cfg(feature = "x")] pub mod x;`, bindgen's layout asserts, `pub
/// const X: T = N;` tables) has one shape however long it is: any other list of that form
/// matches it under renaming. Counting only structure not seen earlier in the run makes such a
/// list worth one item. Looks at the first [`STRUCTURE_MAX`] units.
///
/// With `literals`, literals of at least [`LONG_LITERAL`] bytes count by value, not by class:
/// a run whose literals all equal its source's (only its names changed) carries them as
/// copied text, and a table of test vectors is not one row repeated. With `idents`,
/// identifiers count by value: a run whose names all equal its source's (only its literals
/// changed) carries them as copied text, and a table of named constants (`pub const EPERM:
/// i32 = 1;` …) is its names in their order, not one row — another table of that form
/// names its rows otherwise and is still one row.
pub fn structure(
    index: &Index,
    doc: u32,
    start: u32,
    len: u32,
    literals: bool,
    idents: bool,
) -> u32 {
    let mut g = Structure::new(start, literals, idents, false);
    g.measure(index, doc, len).unwrap_or(len)
}

/// [`structure`] of a sequence of units given as (hash, class).
pub fn structure_of(units: impl Iterator<Item = (u64, UnitClass)>) -> u32 {
    let mut g = Structure::new(0, false, false, false);
    for (h, c) in units.take(STRUCTURE_MAX) {
        g.push(coarse(h, c));
    }
    g.value(g.coarse.len())
}

/// A unit as [`structure`] compares it: its hash, or for an identifier or literal its class.
fn coarse(h: u64, c: UnitClass) -> u64 {
    match c {
        UnitClass::Other => h,
        other => u64::MAX - other as u64,
    }
}

/// [`structure`] of a source region that grows at its end, each unit looked at once: the proxy
/// measures a run still open on every event, and from scratch each time a run of 4,096 units
/// (a renamed `Display` impl matching on a long enum: its structure is small, so no policy
/// blocks it and it stays open) cost ~100 µs an event. Keeps the structure of every prefix, so
/// a run that ends on an earlier unit than it reached is measured without starting over.
#[derive(Debug)]
struct Structure {
    start: u32,
    literals: bool,
    idents: bool,
    /// The region's units so far, compared as [`coarse`].
    coarse: Vec<u64>,
    /// Windows of [`STRUCTURE_W`] units seen.
    seen: FxHashSet<u64>,
    /// Units inside a repeated window, and where the last one ends.
    repeated: usize,
    covered_to: usize,
    /// The structure of each prefix, `values[i]` of the first `i + 1` units — kept only for a
    /// region that grows (`prefixes`): a run may end on an earlier unit than it reached.
    prefixes: bool,
    values: Vec<u32>,
}

impl Structure {
    fn new(start: u32, literals: bool, idents: bool, prefixes: bool) -> Structure {
        Structure {
            start,
            literals,
            idents,
            coarse: Vec::new(),
            seen: FxHashSet::default(),
            repeated: 0,
            covered_to: 0,
            prefixes,
            values: Vec::new(),
        }
    }

    fn push(&mut self, v: u64) {
        self.coarse.push(v);
        let n = self.coarse.len();
        if n >= STRUCTURE_W {
            // Units inside a repeated window: the union of those windows, left to right.
            let j = n - STRUCTURE_W;
            if !self
                .seen
                .insert(crate::hash::kgram_key(self.coarse[j..].iter().copied()))
            {
                self.repeated += j + STRUCTURE_W - self.covered_to.max(j);
                self.covered_to = j + STRUCTURE_W;
            }
        }
        if self.prefixes {
            self.values.push((n - self.repeated) as u32);
        }
    }

    /// The structure of the first `n` units: `n` ≤ those pushed, all of them unless kept by
    /// prefix.
    fn value(&self, n: usize) -> u32 {
        if !self.prefixes {
            debug_assert_eq!(n, self.coarse.len());
            return (self.coarse.len() - self.repeated) as u32;
        }
        n.checked_sub(1).map_or(0, |i| self.values[i])
    }

    /// The structure of the first `len` units of the region in `doc` (at most
    /// [`STRUCTURE_MAX`]), reading only units not read before; `None` without a class store.
    fn measure(&mut self, index: &Index, doc: u32, len: u32) -> Option<u32> {
        let want = (len as usize).min(STRUCTURE_MAX);
        let (s, from, to) = (
            self.start as usize,
            self.start as usize + self.coarse.len(),
            self.start as usize + want,
        );
        if to > from {
            let (units, classes) = (
                index.doc_units(doc).get(from..to)?,
                index.doc_classes(doc).get(from..to)?,
            );
            let long = |pos: usize| {
                index
                    .unit_span(doc, pos as u32)
                    .is_some_and(|(a, b)| u64::from(b - a) >= LONG_LITERAL)
            };
            // Sized for what comes (growing the set as it fills cost a run measured once 5 %
            // more time than measuring it whole did).
            self.coarse.reserve(to - from);
            self.seen.reserve(to - from);
            if self.prefixes {
                self.values.reserve(to - from);
            }
            for (i, (&h, &c)) in units.iter().zip(classes).enumerate() {
                let class = match UnitClass::from_u8(c) {
                    UnitClass::Number | UnitClass::Str if self.literals && long(from + i) => {
                        UnitClass::Other
                    }
                    UnitClass::Ident if self.idents => UnitClass::Other,
                    class => class,
                };
                self.push(coarse(u64::from(h), class));
            }
        }
        debug_assert!(s + self.coarse.len() >= to);
        Some(self.value(want))
    }
}

/// Units of recent output kept for left extension. A run's first sampled k-gram starts within
/// its first p units, so a few hundred units is far more than exact matching needs.
const HISTORY: usize = 256;

/// Units matched together (see [`Scanner::take_units`]).
const BLOCK: usize = 64;

/// A gap: at most this many output units in a row may fail to align before a run is closed.
const MAX_GAP: u32 = 6;
/// A gap may skip at most this many more source units than output units (a deletion).
const MAX_SKIP: u32 = 4;
/// Runs of one document open at once (at different alignments).
const MAX_RUNS_PER_DOC: u8 = 4;

/// Runs shorter than this many times their channel's `t` may be boilerplate
/// ([`Finding::widely_shared`]): 46 code units, 24 prose words with the default parameters —
/// under the built-in policy's blocking lengths (50, 32).
pub const SHARED_MAX_T: u32 = 2;

/// Closed runs are kept this many units for [`IndexMatcher::widely_shared`]: a run closes at
/// most `MAX_GAP + MAX_SKIP` units after its last aligned unit, so one closing now ends well
/// inside the window.
const SHARED_WINDOW: usize = 64;
/// A gapped run is reported only if it is at least this similar to its source region.
pub const NEAR_MIN_SIMILARITY: f64 = 0.6;

/// How one output unit compares with one source unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Equal,
    /// An identifier renamed consistently with the run so far, or a changed literal.
    Renamed,
    Differ,
}

/// The renaming a run has used so far: output name ↔ source name, both ways, so a renaming
/// must be a bijection (`a→x, b→x` is not a renaming).
#[derive(Debug, Clone, Default)]
struct Names {
    fwd: rustc_hash::FxHashMap<u32, u32>,
    back: rustc_hash::FxHashMap<u32, u32>,
    /// Some name has been renamed. Until then names that stay the same are not recorded (an
    /// exact run would otherwise pay two map inserts per identifier); so a later renaming onto
    /// a name kept earlier is not caught — the price of a fast exact path.
    active: bool,
}

impl Names {
    fn pair(&mut self, out: u32, src: u32) -> bool {
        match (self.fwd.get(&out), self.back.get(&src)) {
            (Some(&s), _) if s != src => false,
            (_, Some(&o)) if o != out => false,
            (Some(_), Some(_)) => true,
            _ => {
                self.fwd.insert(out, src);
                self.back.insert(src, out);
                true
            }
        }
    }
}

/// Compares output unit `u` with source unit `src` (stored hash) of class `class`. Without
/// `names` (prose, or an index without the renamed channel) only equality counts.
fn compare(u: &Unit, src: u32, class: u8, names: Option<&mut Names>) -> Cmp {
    let o = stored(u.hash);
    let Some(names) = names else {
        return if o == src { Cmp::Equal } else { Cmp::Differ };
    };
    if o == src {
        // Equal text: equal, unless it breaks a renaming already made (`a→x` then `a→a`).
        if u.class == UnitClass::Ident && names.active && !names.pair(o, src) {
            return Cmp::Differ;
        }
        return Cmp::Equal;
    }
    if u.class != UnitClass::from_u8(class) {
        return Cmp::Differ;
    }
    match u.class {
        UnitClass::Other => Cmp::Differ,
        UnitClass::Ident => {
            if !names.active {
                // A renaming: a window's worth of names at once, without regrowing.
                names.fwd.reserve(32);
                names.back.reserve(32);
            }
            names.active = true;
            if names.pair(o, src) {
                Cmp::Renamed
            } else {
                Cmp::Differ
            }
        }
        UnitClass::Number | UnitClass::Str => Cmp::Renamed,
    }
}

/// The committed extent of a run: where it ends and what it holds.
#[derive(Debug, Clone, Copy)]
struct Extent {
    out_end: u64,
    out_units: u32,
    doc_end: u32,
    matched: u32,
    renamed: u32,
    /// Of `renamed`, literals whose value changed.
    literals_changed: u32,
    gaps: u32,
    /// Equal units in a row so far (a gap or a renamed unit ends a piece), where the current
    /// piece starts in the output, and the longest piece: (output start, output end, source
    /// start, units).
    piece: u32,
    piece_start: u64,
    longest: (u64, u64, u32, u32),
    /// Aligned units (equal or renamed) since the last gap, and the longest such stretch
    /// that a gap ended: (source start, units). Kept apart so that a unit in step costs one
    /// addition ([`Extent::longest_aligned`] takes the larger).
    stretch: u32,
    longest_ended: (u32, u32),
}

#[derive(Debug)]
struct Candidate {
    doc: u32,
    doc_start: u32,
    out_start: u64,
    /// Everything aligned so far.
    cur: Extent,
    /// `cur` as it was after the last *equal* unit: a run ends on an equal unit, so renamed
    /// units after it (which may be unrelated names that happen to fit) are dropped on close.
    /// Only valid when `!anchor_is_cur` (copied when a renamed unit follows an equal one, not
    /// after every unit: an exact run never pays for the copy).
    anchor: Extent,
    anchor_is_cur: bool,
    /// Output units since the last aligned one (0: in step with the source).
    pending: u32,
    channel: Channel,
    /// Seeded by a k-gram that also occurs in the caller's own request text.
    caller_supplied: bool,
    /// The run's renaming, when renamed units may align (code, index with classes).
    names: Option<Box<Names>>,
    /// See [`Finding::key_docs`].
    key_docs: u32,
    /// The [`structure`] measured so far of the region it is asked for (the run's, or its
    /// longest stretch's): the proxy measures open runs on every event, and a run grows a few
    /// units at a time. In a mutex only so a scanner stays `Sync`; one thread uses it.
    structure: std::sync::Mutex<Option<Box<Structure>>>,
}

impl Extent {
    /// The longest stretch without a gap: (source start, units).
    fn longest_aligned(&self) -> (u32, u32) {
        if self.stretch > self.longest_ended.1 {
            (self.doc_end - self.stretch, self.stretch)
        } else {
            self.longest_ended
        }
    }

    /// What the run so far is: gapped, renamed or exact.
    fn kind(&self) -> MatchKind {
        if self.gaps > 0 {
            MatchKind::Near
        } else if self.renamed > 0 {
            MatchKind::Renamed
        } else {
            MatchKind::Exact
        }
    }
}

/// How a run of `doc` is reported: a run of a license text is `LicenseText` whatever aligned.
fn reported_kind(index: &Index, doc: u32, kind: MatchKind) -> MatchKind {
    if is_license(index, doc) {
        MatchKind::LicenseText
    } else {
        kind
    }
}

impl Candidate {
    /// Aligns output unit `u` (and the `matched − 1` equal units before it, the first of which
    /// starts at byte `first`) with source unit `doc_pos`, after `out_units − matched`
    /// unaligned output units; `gap` when a gap ends here.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        u: &Unit,
        first: u64,
        doc_pos: u32,
        cmp: Cmp,
        out_units: u32,
        matched: u32,
        gap: bool,
    ) {
        if cmp == Cmp::Renamed && self.anchor_is_cur {
            self.anchor = self.cur;
            self.anchor_is_cur = false;
        }
        let c = &mut self.cur;
        if gap {
            c.gaps += 1;
            c.piece = 0;
            // The stretch before the gap ends where the run's source end still is.
            if c.stretch > c.longest_ended.1 {
                c.longest_ended = (c.doc_end - c.stretch, c.stretch);
            }
            c.stretch = 0;
        }
        c.out_end = u.end();
        c.out_units += out_units;
        c.doc_end = doc_pos + 1;
        c.matched += matched;
        c.stretch += matched;
        if cmp == Cmp::Equal {
            if c.piece == 0 {
                c.piece_start = first;
            }
            c.piece += matched;
            if c.piece > c.longest.3 {
                c.longest = (c.piece_start, u.end(), doc_pos + 1 - c.piece, c.piece);
            }
        } else {
            c.piece = 0;
        }
        if cmp == Cmp::Renamed {
            c.renamed += 1;
            if matches!(u.class, UnitClass::Number | UnitClass::Str) {
                c.literals_changed += 1;
            }
        } else {
            self.anchor_is_cur = true;
        }
    }

    /// [`Finding::structure`] of the run up to `e`: computed only for a renamed run that is
    /// otherwise reportable — long enough, hit by a rare key — or a gapped one's renamed
    /// stretch (see there), the cases where it decides anything. `growing`: the run is still open and will be asked again as it grows — its
    /// measure is kept and extended; a run measured once (as it closes, in `scan`) is measured
    /// whole without keeping anything (keeping cost copied code 5 % of its scan rate).
    fn structure(&self, index: &Index, params: &Params, e: &Extent, growing: bool) -> u32 {
        let Some(r) = params.renamed else {
            return e.out_units;
        };
        let min = renamed_min(params, r);
        let rare = self.key_docs < params.common_threshold;
        // The source region measured: the whole run's, or for a gapped run (see
        // `Finding::structure`) its longest stretch without a gap.
        let (start, len) = match e.kind() {
            MatchKind::Renamed if e.out_units >= min && rare => {
                (self.doc_start, e.doc_end - self.doc_start)
            }
            MatchKind::Near
                if e.renamed > 0
                    && e.longest.3 < params.code.t()
                    && renamed_stretch_min(params).is_some_and(|m| e.longest_aligned().1 >= m)
                    && rare =>
            {
                e.longest_aligned()
            }
            _ => return e.out_units,
        };
        // A run's literals count by value while every one equals its source's, its
        // identifiers while every one does.
        let literals = e.literals_changed == 0;
        let idents = e.renamed == e.literals_changed;
        let mut g = self.structure.lock().unwrap_or_else(|p| p.into_inner());
        // Measured further only while the region keeps its start and modes.
        let st = match g.as_mut() {
            Some(st) if st.start == start && st.literals == literals && st.idents == idents => st,
            _ if !growing => return structure(index, self.doc, start, len, literals, idents),
            _ => g.insert(Box::new(Structure::new(start, literals, idents, true))),
        };
        st.measure(index, self.doc, len).unwrap_or(len)
    }

    /// The run as it ends: on its last equal unit.
    fn anchor(&self) -> Extent {
        if self.anchor_is_cur {
            self.cur
        } else {
            self.anchor
        }
    }
}

/// What one index's matcher needs only while a push is being matched: filled and read within
/// [`Scanner::take_block`], dead between pushes.
#[derive(Default)]
struct MatcherScratch {
    /// Per fresh unit: its k-gram key if the filter may contain it.
    probes: Vec<Option<u64>>,
    /// Per fresh unit: its rename-insensitive k-gram key if the filter may contain it.
    rprobes: Vec<Option<u64>>,
    /// The filter probes of `probes` and `rprobes`, between `prepare` and `filter`.
    pos: Vec<crate::index::FilterPos>,
    rpos: Vec<crate::index::FilterPos>,
    /// Per fresh unit: whether it completes a k-gram, and if so whether the index marks that
    /// k-gram's key common (filled only when boilerplate is tracked).
    commons: Vec<Option<bool>>,
    /// A seed's alignment (the seed window, and left of it).
    pairs: Vec<(usize, u32, Cmp)>,
    left: Vec<(usize, u32, Cmp)>,
}

/// A push's working buffers: the units it produced, their names' distances, and each index's
/// [`MatcherScratch`].
#[derive(Default)]
struct Scratch {
    fresh: Vec<Unit>,
    fresh_prev: Vec<u32>,
    matchers: Vec<MatcherScratch>,
}

/// A push is matched to the end before the next starts on the same thread, so the buffers it
/// works in are kept per thread rather than per scanner. A proxy holds a scanner for every open
/// stream, most of them idle between events; kept in each, these buffers were 1.6 KB of a
/// scanner fed 30 one-word pushes over three indexes, 7 KB if the same words came in one push
/// (`benches/stream_memory.rs`). A pool rather than one
/// `RefCell`, so a push made from inside another (none is today) would get buffers of its own
/// rather than a panic.
mod scratch {
    use std::cell::RefCell;

    thread_local! {
        static POOL: RefCell<Vec<super::Scratch>> = const { RefCell::new(Vec::new()) };
    }

    /// Units a thread's buffers keep room for between pushes; a larger push (a 64 KiB block of
    /// `verbatim scan`, ~13,000 units) gives back the excess.
    const KEEP_UNITS: usize = 1 << 14;

    /// Runs `f` with working buffers for `matchers` indexes.
    pub(super) fn with<R>(matchers: usize, f: impl FnOnce(&mut super::Scratch) -> R) -> R {
        let mut s = POOL
            .try_with(|p| p.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        if s.matchers.len() < matchers {
            s.matchers.resize_with(matchers, Default::default);
        }
        let r = f(&mut s);
        s.fresh.clear();
        s.fresh.shrink_to(KEEP_UNITS);
        s.fresh_prev.shrink_to(KEEP_UNITS);
        // A thread being torn down has no pool any more: the buffers are dropped.
        let _ = POOL.try_with(|p| p.borrow_mut().push(s));
        r
    }
}

/// Matches one index against the unit stream.
struct IndexMatcher {
    index: Arc<Index>,
    /// Every corpus of the index is license texts.
    license_only: bool,
    params: Params,
    /// The index has the rename-insensitive channel (its parameters and class store).
    renamed: Option<ChannelParams>,
    open: Vec<Candidate>,
    /// Runs closed in the last [`SHARED_WINDOW`] units: output range (start, end of the last
    /// aligned unit) and document, for [`IndexMatcher::widely_shared`].
    closed: VecDeque<(u64, u64, u32)>,
    /// Open runs per document. A document may have a few open at once, at different
    /// alignments: a passage that occurs twice in it (a refrain, a repeated warning) may seed
    /// the wrong occurrence first, and the right one must not wait for the wrong one to die —
    /// its first units would be released meanwhile. Bounded so a repetitive document cannot
    /// open a run at every repeat.
    open_docs: rustc_hash::FxHashMap<u32, u8>,
    roll: RollingKgram,
    roll_channel: Option<Channel>,
    /// The rename-insensitive key of the last k code units, rolled.
    rroll: RollingRenamed,
    /// Code units in a row so far, and units since the last abstracted one (identifier or
    /// literal): windows that are not all code or abstract nothing have no key in the index.
    rrun: usize,
    since_abstract: usize,
    /// Whether boilerplate stretches are tracked ([`Scanner::set_hold_boilerplate`]).
    track_boiler: bool,
    /// Widely shared runs are reported too ([`Scanner::set_report_shared`]).
    report_shared: bool,
    /// A stretch of boilerplate being received: where it starts in the output and how many
    /// units have come since its last boilerplate k-gram. Text that is no evidence — in too
    /// many documents (a license header), or too repetitive to be indexed at all (a table of
    /// zeros, [`crate::index::build::informative`]) — opens no run, but a run the distinctive
    /// text after it opens extends left over it; strict holdback keeps it until it cannot be
    /// reached so ([`Scanner::stable_offset`]).
    boiler: Option<(u64, u32)>,
}

impl IndexMatcher {
    /// The run `c` as a finding, if it [`qualifies`]; a gapped or renamed run that does not
    /// may still hold an exact piece that does.
    fn finding(&self, c: &Candidate, which: usize) -> Option<Finding> {
        let e = c.anchor();
        let kind = e.kind();
        let f = Finding {
            output_start: c.out_start,
            output_end: e.out_end,
            index: which,
            doc: c.doc,
            doc_unit_start: c.doc_start,
            source_units: e.doc_end - c.doc_start,
            units: e.out_units,
            matched: e.matched,
            longest: e.longest.3,
            longest_aligned: e.longest_aligned().1,
            structure: c.structure(&self.index, &self.params, &e, false),
            key_docs: c.key_docs,
            kind: reported_kind(&self.index, c.doc, kind),
            channel: c.channel,
            caller_supplied: c.caller_supplied,
            widely_shared: false,
        };
        // Whether the documents sharing the run are counted only for a run that is otherwise
        // reportable: most runs that end are too short to be (a seed's run in a document that
        // parts from the output a few units on).
        let shared = |start, end, units| {
            let w = self.widely_shared(c.channel, c.doc, start, end, units);
            (w, w && !self.report_shared)
        };
        let mut as_kind = f.clone();
        as_kind.kind = kind;
        if qualifies(&self.params, &as_kind) {
            let (w, drop) = shared(f.output_start, f.output_end, f.units);
            if !drop {
                return Some(Finding {
                    widely_shared: w,
                    ..f
                });
            }
        }
        // A gapped run that is not enough of a near copy, or a renamed run that is not enough
        // of a renamed copy (too short, a list, hit only by boilerplate), may still hold an
        // exact run of `t`: that is reported as it would have been without gap tolerance and
        // renaming, so neither ever loses an exact finding.
        let (start, end, doc_start, units) = e.longest;
        let exact = Finding {
            output_start: start,
            output_end: end,
            doc_unit_start: doc_start,
            source_units: units,
            units,
            matched: units,
            longest: units,
            longest_aligned: units,
            structure: units,
            kind: if f.kind == MatchKind::LicenseText {
                MatchKind::LicenseText
            } else {
                MatchKind::Exact
            },
            ..f
        };
        if kind == MatchKind::Exact || !qualifies(&self.params, &exact) {
            return None;
        }
        let (w, drop) = shared(start, end, units);
        (!drop).then_some(Finding {
            widely_shared: w,
            ..exact
        })
    }

    fn close(&mut self, c: &Candidate, which: usize, out: &mut Vec<Finding>) {
        out.extend(self.finding(c, which));
        self.closed
            .push_back((c.out_start, c.anchor().out_end, c.doc));
    }

    /// Whether a run of `doc` over output `start..end` (`units` long) is short and at least
    /// `common_threshold` documents hold all of it: `doc` and the documents of the runs open
    /// now or closed in the last [`SHARED_WINDOW`] units that cover it. Every document holding
    /// a text of at least `t` units gets a run (the index's guarantee), so these are the
    /// documents that share the text — for a standard three-line import block, 138 in the
    /// crates index. Counted only where enough runs exist to reach the threshold.
    ///
    /// Only short runs: a long text many documents hold (a file vendored into many crates) is
    /// still a copy of licensed text, and what models reproduce most is what was duplicated
    /// most.
    fn widely_shared(&self, channel: Channel, doc: u32, start: u64, end: u64, units: u32) -> bool {
        let threshold = self.params.common_threshold as usize;
        let t = self.params.channel(channel).t();
        if self.license_only
            || !(t..SHARED_MAX_T * t).contains(&units)
            || self.open.len() + self.closed.len() + 1 < threshold
        {
            return false;
        }
        let covering = |s: u64, e: u64| s <= start && e >= end;
        let docs = self
            .open
            .iter()
            .filter(|c| covering(c.out_start, c.cur.out_end))
            .map(|c| c.doc)
            .chain(
                self.closed
                    .iter()
                    .filter(|&&(s, e, _)| covering(s, e))
                    .map(|&(_, _, d)| d),
            )
            .chain([doc]);
        // Distinct documents (one may have several runs) counted in a set of 1,024 bits on the
        // stack, stopping at the threshold: two documents may share a bit, so the count errs
        // low — towards reporting. A sorted list cost copied code 11 % of its scan.
        let mut seen = [0u64; 16];
        let mut distinct = 0;
        for d in docs {
            let h = (d.wrapping_mul(0x9E37_79B1) >> 22) as usize;
            let (w, b) = (h >> 6, 1u64 << (h & 63));
            if seen[w] & b == 0 {
                seen[w] |= b;
                distinct += 1;
                if distinct >= threshold {
                    return true;
                }
            }
        }
        false
    }

    /// Rolls the k-gram keys of `fresh` (continuing from `hist`) and starts loading the filter
    /// lines of all of them, so the filter's cache misses overlap instead of stalling the
    /// per-unit logic one at a time ([`IndexMatcher::filter`] then tests them). Fills
    /// `s.probes` (and `s.rprobes`, the rename-insensitive keys of code units) with one
    /// entry per fresh unit.
    fn prepare(
        &mut self,
        s: &mut MatcherScratch,
        hist: &VecDeque<Unit>,
        fresh: &[Unit],
        fprev: &[u32],
    ) {
        s.probes.clear();
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
            s.probes.push(self.roll.push(u.hash, leaving));
        }
        self.index.prefetch_filter(&s.probes, &mut s.pos);
        s.rprobes.clear();
        let Some(rp) = self.renamed else { return };
        let k = rp.k as usize;
        for (u, &d) in fresh.iter().zip(fprev) {
            if u.channel != Channel::Code {
                self.rroll.reset();
                (self.rrun, self.since_abstract) = (0, usize::MAX);
                s.rprobes.push(None);
                continue;
            }
            let key = self.rroll.push(u.hash, u.class, d);
            self.rrun += 1;
            self.since_abstract = if u.class == UnitClass::Other {
                self.since_abstract.saturating_add(1)
            } else {
                0
            };
            s.rprobes
                .push(key.filter(|_| self.rrun >= k && self.since_abstract < k));
        }
        self.index.prefetch_filter(&s.rprobes, &mut s.rpos);
    }

    /// The second half of [`IndexMatcher::prepare`]: drops the keys the filter rules out and
    /// starts loading the postings of the rest. Split so that a scan with several indexes
    /// has every index's filter lines in flight at once (one memory latency per push, not
    /// one per index: docs/benchmarks.md).
    fn filter(&self, s: &mut MatcherScratch) {
        let index = &self.index;
        s.commons.clear();
        if self.track_boiler {
            s.commons
                .extend(s.probes.iter().map(|k| k.map(|k| index.is_common(k))));
        }
        index.retain_possible(&mut s.probes, &s.pos);
        index.prefetch_postings(&s.probes);
        if self.renamed.is_some() {
            index.retain_possible(&mut s.rprobes, &s.rpos);
            index.prefetch_postings(&s.rprobes);
        }
    }

    /// Steps an open run by the newest unit `unit`; false when the run ends before it.
    fn step(index: &Index, c: &mut Candidate, hist: &VecDeque<Unit>, unit: &Unit) -> bool {
        let units = index.doc_units(c.doc);
        let classes = index.doc_classes(c.doc);
        let class = |d: u32| classes.get(d as usize).copied().unwrap_or(0);
        if c.pending == 0 {
            let d = c.cur.doc_end;
            let cmp = match units.get(d as usize) {
                Some(&src) => compare(unit, src, class(d), c.names.as_deref_mut()),
                None => Cmp::Differ,
            };
            if cmp == Cmp::Differ {
                c.pending = 1;
            } else {
                c.commit(unit, unit.start, d, cmp, 1, 1, false);
            }
            return true;
        }
        // In a gap: look for the point where output and source agree again — `n` equal units
        // in a row ending at this one, all inside the gap. On the diagonal (as many source
        // units skipped as output units: substitutions) fewer are needed than elsewhere
        // (insertions, deletions); code needs one more than prose, its tokens being far less
        // distinctive than words (`)`, `;`, `self` align anywhere).
        c.pending += 1;
        let g = c.pending;
        let base = c.cur.doc_end;
        let diag = base + g - 1;
        let code = unit.channel == Channel::Code;
        let (on_diag, off_diag) = match (code, g <= 3) {
            (false, true) => (1, 2),
            (false, false) => (2, 2),
            (true, _) => (2, 3),
        };
        let h = hist.len();
        let run = |d: u32, n: u32| {
            n <= g
                && d + 1 >= base + n
                && (0..n).all(|m| {
                    units.get((d - m) as usize) == Some(&stored(hist[h - 1 - m as usize].hash))
                })
        };
        let mut found = None;
        if run(diag, on_diag) {
            found = Some((diag, on_diag));
        } else {
            for d in base..=(diag + MAX_SKIP) {
                if d != diag && run(d, off_diag) {
                    found = Some((d, off_diag));
                    break;
                }
            }
        }
        match found {
            Some((d, n)) => {
                // An equal name is recorded once a renaming is under way, as `compare` does.
                if let (Some(names), UnitClass::Ident) = (c.names.as_deref_mut(), unit.class)
                    && names.active
                {
                    names.pair(stored(unit.hash), stored(unit.hash));
                }
                c.pending = 0;
                let first = hist[h - n as usize].start;
                c.commit(unit, first, d, Cmp::Equal, g, n, true);
                true
            }
            None => g <= MAX_GAP,
        }
    }

    /// Takes the last unit of `hist`, the `j`-th fresh unit of the block: `probes[j]` and
    /// `rprobes[j]` are the keys of the k-grams it completes (exact and rename-insensitive) if
    /// the filter says the index may hold them, `commons[j]` whether the exact one is common.
    fn on_unit(
        &mut self,
        s: &mut MatcherScratch,
        hist: &VecDeque<Unit>,
        j: usize,
        exempt: &FxHashSet<u64>,
        which: usize,
        out: &mut Vec<Finding>,
    ) {
        let Some(unit) = hist.back() else { return };
        let probe = s.probes[j];
        let rprobe = s.rprobes.get(j).copied().flatten();
        if self.track_boiler {
            let cp = self.params.channel(unit.channel);
            let k = cp.k as usize;
            let h = hist.len();
            // Boilerplate: a common k-gram, or one too repetitive to be indexed (the index's
            // own test over the last k units).
            let boiler = match s.commons.get(j).copied().flatten() {
                None => false,
                Some(true) => true,
                Some(false) => {
                    k <= h
                        && !crate::index::build::informative_hashes(
                            hist.range(h - k..).map(|u| u.hash),
                            k,
                        )
                }
            };
            if boiler {
                let start = hist[h.saturating_sub(k)].start;
                let from = self.boiler.map_or(start, |(s, _)| s.min(start));
                self.boiler = Some((from, 0));
            } else if let Some((from, n)) = self.boiler {
                // A run of the text after the stretch seeds within p units of its last
                // common k-gram (the next sampled position); k + p leaves room for a
                // k-gram that straddles both.
                self.boiler = (n < cp.k + cp.p).then_some((from, n + 1));
            }
        }

        // Runs closed too long ago to cover a run closing from now on. Closed in about the
        // order they end; one out of order stays a little longer, covering nothing.
        if !self.closed.is_empty() {
            let cutoff = hist[hist.len().saturating_sub(SHARED_WINDOW)].start;
            while self.closed.front().is_some_and(|&(_, e, _)| e < cutoff) {
                self.closed.pop_front();
            }
        }
        // Extend open runs by this unit, or close them.
        let mut i = 0;
        while i < self.open.len() {
            if Self::step(&self.index, &mut self.open[i], hist, unit) {
                i += 1;
            } else {
                let c = self.open.swap_remove(i);
                if let Some(n) = self.open_docs.get_mut(&c.doc) {
                    *n -= 1;
                    if *n == 0 {
                        self.open_docs.remove(&c.doc);
                    }
                }
                self.close(&c, which, out);
            }
        }

        let ch = unit.channel;
        if let Some(key) = probe {
            let k = self.params.channel(ch).k as usize;
            let p = self.params.channel(ch).p;
            self.seed(s, hist, key, k, p, exempt.contains(&key), false);
        }
        if let (Some(key), Some(rp)) = (rprobe, self.renamed) {
            self.seed(
                s,
                hist,
                key,
                rp.k as usize,
                rp.p,
                exempt.contains(&key),
                true,
            );
        }
    }

    /// Opens a run at each posting of `key` — the k-gram of the last `k` units of `hist`,
    /// sampled every `p` units in the index — that aligns with the output just received, or
    /// notes the key's rarity on the open run the posting falls in. A `renamed` (rename-
    /// insensitive) key opens runs only when it is rare.
    #[allow(clippy::too_many_arguments)] // the seed's facts, each a plain value
    fn seed(
        &mut self,
        s: &mut MatcherScratch,
        hist: &VecDeque<Unit>,
        key: u64,
        k: usize,
        p: u32,
        caller_supplied: bool,
        renamed: bool,
    ) {
        // Borrowed, not cloned: every scanning thread holds the same `Arc`, and an atomic
        // increment and decrement of its count for every seeded unit made its cache line move
        // between cores (a tenth of this function's time in a two-thread `verbatim scan`).
        let index = &*self.index;
        let postings = index.lookup_unfiltered(key);
        if postings.is_empty() {
            return;
        }
        // Documents the key occurs in, estimated: it was sampled at one in p positions, so
        // it is in about p times as many documents as it was sampled in. Postings are sorted
        // by document.
        let sampled_docs = {
            let (mut n, mut i) = (0, 0);
            while i < postings.len() {
                n += 1;
                i = doc_run_end(postings, i);
            }
            n
        };
        let key_docs = (sampled_docs as u32).saturating_mul(p);
        if renamed && key_docs >= self.params.common_threshold {
            // A structural key in this many documents cannot make a renamed run reportable
            // (`qualifies` wants a rare key), and the runs it would open — one per document
            // sharing the shape — mostly die within a few units. The first rare key of a
            // real renamed copy opens the run and extends it left through the history; an
            // exact copy is the exact channel's. With the default parameters these are keys
            // sampled in 6 or more documents, which a build now marks common and leaves out
            // of the filter and the postings (`Params::renamed_common_docs`): this test is for
            // indexes built before, which dropped only those in 8 or more. Measured:
            // docs/benchmarks.md.
            return;
        }
        let Some(unit) = hist.back() else { return };
        let ch = unit.channel;
        let first = hist.len() - k;
        let with_names = ch == Channel::Code && self.renamed.is_some();
        let mut next = 0;
        while next < postings.len() {
            let at = next;
            let p = &postings[at];
            next += 1;
            let q = (p.pos & !crate::index::format::RENAMED_POS) as usize;
            let end = (q + k) as u32;
            match self.open_docs.get(&p.doc) {
                None => {}
                Some(&n) if n >= MAX_RUNS_PER_DOC => {
                    // The document takes no more runs: none of its other postings either.
                    next = doc_run_end(postings, at);
                    continue;
                }
                Some(_) => {
                    // Already part of an open run of this document at this alignment (in step,
                    // or inside the gap it may resynchronise across)?
                    let inside = self.open.iter_mut().find(|c| {
                        c.doc == p.doc
                            && (c.cur.doc_end == end
                                || (c.pending > 0
                                    && (c.cur.doc_end..=c.cur.doc_end + c.pending + MAX_SKIP)
                                        .contains(&end)))
                    });
                    if let Some(c) = inside {
                        c.key_docs = c.key_docs.min(key_docs);
                        continue;
                    }
                }
            }
            let units = index.doc_units(p.doc);
            let classes = index.doc_classes(p.doc);
            let class = |d: usize| classes.get(d).copied().unwrap_or(0);
            if units.get(q..q + k).is_none() {
                continue;
            }
            let mut names = with_names.then(Box::<Names>::default);
            // The seed window must align unit for unit (a filter false positive, a hash
            // collision or an inconsistent renaming fails here). Scratch vectors are reused:
            // a structural key may have several postings to verify in one push.
            let mut pairs = std::mem::take(&mut s.pairs);
            pairs.clear();
            let aligned = (0..k).all(|j| {
                let c = compare(
                    &hist[first + j],
                    units[q + j],
                    class(q + j),
                    names.as_deref_mut(),
                );
                pairs.push((first + j, (q + j) as u32, c));
                c != Cmp::Differ
            });
            if !aligned {
                s.pairs = pairs;
                continue;
            }
            // Extend left through the kept history, across gaps as the right side does.
            let mut left = std::mem::take(&mut s.left);
            left.clear();
            extend_left(
                hist,
                units,
                &class,
                first,
                q,
                names.as_deref_mut(),
                &mut left,
            );
            left.reverse();
            left.extend_from_slice(&pairs);
            s.pairs = pairs;
            let pairs = left;
            // A run starts at its first equal unit.
            let Some(lead) = pairs.iter().position(|&(_, _, c)| c == Cmp::Equal) else {
                s.left = pairs;
                continue;
            };
            // Renamings made left of the run's first equal unit are not the run's: a name
            // there (`x` before `== MIN` where the source has `start`) must not stop the same
            // name later from matching itself (`start` … `start`). The names are paired again
            // over the run alone.
            if lead > 0 && names.as_ref().is_some_and(|n| n.active) {
                let mut fresh = Box::<Names>::default();
                for &(o, d, _) in &pairs[lead..] {
                    compare(
                        &hist[o],
                        units[d as usize],
                        class(d as usize),
                        Some(&mut fresh),
                    );
                }
                names = Some(fresh);
            }
            let (start, doc_start, _) = pairs[lead];
            let empty = Extent {
                out_end: hist[start].start,
                out_units: 0,
                doc_end: doc_start,
                matched: 0,
                renamed: 0,
                literals_changed: 0,
                gaps: 0,
                piece: 0,
                piece_start: 0,
                longest: (0, 0, 0, 0),
                stretch: 0,
                longest_ended: (0, 0),
            };
            let mut cand = Candidate {
                doc: p.doc,
                doc_start,
                out_start: hist[start].start,
                cur: empty,
                anchor: empty,
                anchor_is_cur: true,
                pending: 0,
                channel: ch,
                caller_supplied,
                names,
                key_docs,
                structure: std::sync::Mutex::new(None),
            };
            let mut last = (start, doc_start);
            for (n, &(o, d, c)) in pairs[lead..].iter().enumerate() {
                let step = if n == 0 { 1 } else { (o - last.0) as u32 };
                let gap = n > 0 && (o - last.0 > 1 || d - last.1 > 1);
                cand.commit(&hist[o], hist[o].start, d, c, step, 1, gap);
                last = (o, d);
            }
            s.left = pairs;
            *self.open_docs.entry(p.doc).or_default() += 1;
            self.open.push(cand);
        }
    }

    fn finish(&mut self, which: usize, out: &mut Vec<Finding>) {
        self.open_docs.clear();
        self.boiler = None;
        // Every run ends here: each is judged with all the others (still open until now)
        // covering it or not.
        let open = std::mem::take(&mut self.open);
        self.closed.extend(
            open.iter()
                .map(|c| (c.out_start, c.anchor().out_end, c.doc)),
        );
        for c in &open {
            self.close(c, which, out);
        }
        self.closed.clear();
    }
}

/// Where the postings of `postings[i].doc` end (postings are sorted by document). Most
/// documents hold a key once; a repetitive one (generated tables, test data) may hold it
/// thousands of times (encoding_rs's `data.rs` tables: 2,678 postings of one key), and a copy
/// of such a document meets such a key at every unit — so the end is found by galloping
/// (steps of 1, 2, 4, … then a binary search inside the last step), not by walking: as cheap
/// as a binary search for a long run, and for the short runs most repeated keys have, a
/// search over a few postings instead of over every document after this one.
fn doc_run_end(postings: &[crate::index::format::Posting], i: usize) -> usize {
    let d = postings[i].doc;
    match postings.get(i + 1) {
        Some(p) if p.doc == d => {
            // postings[lo] is in the run; find the first hi past it.
            let (mut lo, mut step) = (i + 1, 1);
            let hi = loop {
                match postings.get(lo + step) {
                    Some(p) if p.doc == d => {
                        lo += step;
                        step *= 2;
                    }
                    _ => break (lo + step).min(postings.len()),
                }
            };
            lo + 1 + postings[lo + 1..hi].partition_point(|p| p.doc == d)
        }
        _ => i + 1,
    }
}

/// Aligns the output before a seed (`hist[..first]`) with the source before `q`, right to
/// left: unit for unit while units compare equal or renamed, across a gap of at most
/// [`MAX_GAP`] output units when two units in a row left of it are equal again. Returns the
/// aligned (history index, source position, comparison) pairs, nearest first, into `out`.
fn extend_left(
    hist: &VecDeque<Unit>,
    units: &[u32],
    class: &dyn Fn(usize) -> u8,
    first: usize,
    q: usize,
    mut names: Option<&mut Names>,
    out: &mut Vec<(usize, u32, Cmp)>,
) {
    let (mut o, mut d) = (first, q);
    let eq = |o: usize, d: usize| units.get(d) == Some(&stored(hist[o].hash));
    while o > 0 && d > 0 {
        let c = compare(
            &hist[o - 1],
            units[d - 1],
            class(d - 1),
            names.as_deref_mut(),
        );
        if c != Cmp::Differ {
            o -= 1;
            d -= 1;
            out.push((o, d as u32, c));
            continue;
        }
        // A gap: `s` output units and `sd` source units skipped, diagonal first; `n` equal
        // units in a row left of it (see `IndexMatcher::step`).
        let n = if hist[o - 1].channel == Channel::Code {
            3
        } else {
            2
        };
        let mut found = None;
        'search: for s in 1..=MAX_GAP as usize {
            let Some(oc) = (o - 1).checked_sub(s) else {
                break;
            };
            if oc + 1 < n {
                break;
            }
            let diag = std::iter::once(s);
            let others = (0..=s + MAX_SKIP as usize).filter(|&x| x != s);
            for sd in diag.chain(others) {
                let Some(dc) = (d - 1).checked_sub(sd) else {
                    continue;
                };
                if dc + 1 >= n && (0..n).all(|m| eq(oc - m, dc - m)) {
                    found = Some((oc, dc));
                    break 'search;
                }
            }
        }
        let Some((oc, dc)) = found else { break };
        o = oc;
        d = dc;
        out.push((o, d as u32, Cmp::Equal));
    }
}

/// Scans one output stream against one or more indexes.
pub struct Scanner {
    norm: Normalizer,
    matchers: Vec<IndexMatcher>,
    /// K-gram keys of text the caller supplied (see [`Exemptions`]).
    exempt: Arc<FxHashSet<u64>>,
    hist: VecDeque<Unit>,
    /// Those distances, when some index has the rename-insensitive channel.
    idents: Option<RecentNames>,
    findings: Vec<Finding>,
    /// Largest `t` of each channel over all indexes (prose, code): the holdback in units.
    t_max: [u32; 2],
    hold_license_runs: bool,
    /// Markdown: the runs of the text outside fences read as code
    /// ([`Normalizer::set_bare_code`]), matched apart from the main reading's (whose prose
    /// units cover the same text) by a scanner of their own whose normaliser is not used;
    /// made when the first such unit comes, so a prose answer carries none.
    bare: Option<Box<Scanner>>,
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
                renamed: ix.params().renamed,
                open: Vec::new(),
                closed: VecDeque::new(),
                open_docs: rustc_hash::FxHashMap::default(),
                roll: RollingKgram::new(1),
                roll_channel: None,
                rroll: RollingRenamed::new(ix.params().renamed.map_or(1, |r| r.k as usize)),
                rrun: 0,
                since_abstract: usize::MAX,
                track_boiler: false,
                report_shared: false,
                boiler: None,
            })
            .collect();
        let t_of = |c: Channel| {
            matchers
                .iter()
                .map(|m| {
                    let renamed = m
                        .renamed
                        .filter(|_| c == Channel::Code)
                        .map_or(0, |r| r.t());
                    m.params.channel(c).t().max(renamed)
                })
                .max()
                .unwrap_or(1)
        };
        let t_max = [t_of(Channel::Prose), t_of(Channel::Code)];
        // The longest rename-insensitive window of any index: a name's distance back to its
        // previous occurrence matters only inside one.
        let renamed_k = matchers
            .iter()
            .filter_map(|m| m.renamed.map(|r| r.k as usize))
            .max();
        let mut norm = Normalizer::new(kind);
        norm.set_bare_code(true);
        Scanner {
            norm,
            matchers,
            exempt: Arc::default(),
            // Grown as units arrive rather than sized up front: 257 units are 8 KB, and a
            // proxy keeps a scanner per open stream, most of which never see that many.
            hist: VecDeque::new(),
            idents: renamed_k.map(RecentNames::new),
            findings: Vec::new(),
            t_max,
            hold_license_runs: true,
            bare: None,
        }
    }

    /// The scanner of the bare-code reading, as this one is set up.
    fn bare_track(&self) -> Scanner {
        let indexes: Vec<Arc<Index>> = self.matchers.iter().map(|m| Arc::clone(&m.index)).collect();
        let mut b = Scanner::new(&indexes, TextKind::Code(crate::normalize::Lang::C_LIKE));
        b.exempt = Arc::clone(&self.exempt);
        b.hold_license_runs = self.hold_license_runs;
        for (bm, m) in b.matchers.iter_mut().zip(&self.matchers) {
            bm.track_boiler = m.track_boiler;
            bm.report_shared = m.report_shared;
        }
        b
    }

    /// Matches the units the bare-code reading has made (see [`Scanner::bare`]).
    fn take_bare_units(&mut self, s: &mut Scratch) {
        s.fresh.clear();
        if !self.norm.take_bare(&mut s.fresh) {
            return;
        }
        if self.bare.is_none() {
            self.bare = Some(Box::new(self.bare_track()));
        }
        if let Some(b) = &mut self.bare {
            b.take_units(s);
        }
    }

    /// Whether [`Scanner::stable_offset`] holds back open runs of license-text indexes (true by
    /// default). A proxy whose policy cannot block a license text sets it false: such runs are
    /// only cited, and holding a whole license back until it ends would delay it for nothing.
    pub fn set_hold_license_runs(&mut self, hold: bool) {
        self.hold_license_runs = hold;
        if let Some(b) = &mut self.bare {
            b.hold_license_runs = hold;
        }
    }

    /// Whether [`Scanner::stable_offset`] holds back boilerplate a later run could extend over
    /// (false by default: tracking it costs 10–20 % of a scan of code that matches nothing,
    /// docs/benchmarks.md, and only strict holdback reads it). Set it before the first push.
    pub fn set_hold_boilerplate(&mut self, hold: bool) {
        for m in &mut self.matchers {
            m.track_boiler = hold;
            m.boiler = None;
        }
        if let Some(b) = &mut self.bare {
            b.set_hold_boilerplate(hold);
        }
    }

    /// Also reports the short runs many documents share ([`Finding::widely_shared`] set),
    /// which are otherwise boilerplate and not reported: to see what is suppressed, or to tell
    /// whether a text holds any indexed text at all (the quality benchmark's negatives).
    pub fn set_report_shared(&mut self, on: bool) {
        for m in &mut self.matchers {
            m.report_shared = on;
        }
        if let Some(b) = &mut self.bare {
            b.set_report_shared(on);
        }
    }

    /// Whether a Markdown text's code outside fences is read as code too (true by default; see
    /// [`Normalizer::set_bare_code`]). Set it before the first push.
    pub fn set_bare_code(&mut self, on: bool) {
        self.norm.set_bare_code(on);
    }

    /// Feeds text.
    pub fn push_str(&mut self, text: &str) {
        scratch::with(self.matchers.len(), |s| {
            self.norm.push_str(text, &mut s.fresh);
            self.take_units(s);
            self.take_bare_units(s);
        });
    }

    /// Feeds raw bytes (UTF-8 sequences may be split across calls).
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        scratch::with(self.matchers.len(), |s| {
            self.norm.push_bytes(bytes, &mut s.fresh);
            self.take_units(s);
            self.take_bare_units(s);
        });
    }

    /// Ends the stream: open runs are closed and reported. Text pushed after it (an upstream
    /// that goes on after a stream's closing event) is matched afresh: no k-gram, run or name
    /// distance reaches back across the end, so text reported final here — and released by a
    /// proxy as such — is never found again as the start of a later run (found by the
    /// `pipeline` fuzz target).
    pub fn finish(&mut self) {
        scratch::with(self.matchers.len(), |s| {
            self.norm.finish(&mut s.fresh);
            self.take_units(s);
            self.take_bare_units(s);
        });
        if let Some(b) = &mut self.bare {
            b.finish_runs();
        }
        self.finish_runs();
    }

    /// Closes and reports every open run; nothing reaches back across.
    fn finish_runs(&mut self) {
        for (i, m) in self.matchers.iter_mut().enumerate() {
            m.finish(i, &mut self.findings);
            m.roll_channel = None;
            m.rroll.reset();
            (m.rrun, m.since_abstract) = (0, usize::MAX);
        }
        self.hist.clear();
        if let Some(d) = &mut self.idents {
            d.reset();
        }
    }

    /// Matches the units of a push, a block of [`BLOCK`] at a time: the filter lines and
    /// postings of a block are requested together so their cache misses overlap, and a block
    /// is small enough that they are still in cache when tested — a 64 KiB push is ~13,000
    /// units, whose lines would evict each other before use. Findings do not depend on it.
    fn take_units(&mut self, s: &mut Scratch) {
        let Scratch {
            fresh,
            fresh_prev,
            matchers,
        } = s;
        for block in fresh.chunks(BLOCK) {
            self.take_block(block, fresh_prev, matchers);
        }
    }

    fn take_block(&mut self, fresh: &[Unit], fresh_prev: &mut Vec<u32>, ms: &mut [MatcherScratch]) {
        // Identifier distances: kept only when some index has the rename-insensitive channel
        // (the only reader), so a scan without it pays nothing per unit.
        fresh_prev.clear();
        if let Some(d) = &mut self.idents {
            fresh_prev.extend(fresh.iter().map(|u| d.next(u)));
        }
        for (m, s) in self.matchers.iter_mut().zip(ms.iter_mut()) {
            m.prepare(s, &self.hist, fresh, fresh_prev);
        }
        for (m, s) in self.matchers.iter().zip(ms.iter_mut()) {
            m.filter(s);
        }
        for (j, &u) in fresh.iter().enumerate() {
            if self.hist.len() == HISTORY {
                self.hist.pop_front();
            }
            self.hist.push_back(u);
            for (i, (m, s)) in self.matchers.iter_mut().zip(ms.iter_mut()).enumerate() {
                m.on_unit(s, &self.hist, j, &self.exempt, i, &mut self.findings);
            }
        }
    }

    /// Findings completed so far (each is reported once), by where they start in the output
    /// when the bare-code reading found some too.
    pub fn take_findings(&mut self) -> Vec<Finding> {
        if let Some(b) = &mut self.bare
            && !b.findings.is_empty()
        {
            self.findings.append(&mut b.findings);
            self.findings.sort_by_key(|f| f.output_start);
        }
        std::mem::take(&mut self.findings)
    }

    /// Bytes received so far.
    pub fn offset(&self) -> u64 {
        self.norm.offset()
    }

    /// The byte offset before which output can be released without letting any unit of a run
    /// of `t` or more units out before that run is detected: the last `t − 1` units (t of the
    /// latest unit's channel: a channel change closes every run of the other channel, so those
    /// are decided already), any unit still being formed, every open run, and — with
    /// [`Scanner::set_hold_boilerplate`] — a stretch of boilerplate until `k + p` units after
    /// its last common or repetitive k-gram (a run seeded by the text after it would extend
    /// left over it; at most the kept history, beyond which no run extends) are held back.
    pub fn stable_offset(&self) -> u64 {
        let p = self.held_from(self.norm.pending_start());
        match &self.bare {
            Some(b) => b.held_from(p),
            None => p,
        }
    }

    /// `p`, or the earliest offset this scanner's runs and history hold back if earlier.
    fn held_from(&self, mut p: u64) -> u64 {
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
            if let (Some((from, _)), Some(oldest)) = (m.boiler, self.hist.front()) {
                p = p.min(from.max(oldest.start));
            }
        }
        p
    }

    /// See [`Normalizer::set_tool_args_hint`].
    pub fn set_tool_args_hint(&mut self, kind: TextKind) {
        self.norm.set_tool_args_hint(kind);
    }

    /// Treats runs seeded by these k-gram keys as text the caller supplied.
    pub fn set_exemptions(&mut self, exempt: Arc<FxHashSet<u64>>) {
        if let Some(b) = &mut self.bare {
            b.exempt = Arc::clone(&exempt);
        }
        self.exempt = exempt;
    }

    /// The runs still open (still growing): where they start in the output, how long they are.
    pub fn open_runs(&self) -> impl Iterator<Item = OpenRun> + '_ {
        let bare = self
            .bare
            .iter()
            .flat_map(|b| b.track_open_runs().map(|r| OpenRun { bare: true, ..r }));
        self.track_open_runs().chain(bare)
    }

    fn track_open_runs(&self) -> impl Iterator<Item = OpenRun> + '_ {
        self.matchers.iter().enumerate().flat_map(|(i, m)| {
            m.open.iter().enumerate().map(move |(slot, c)| OpenRun {
                output_start: c.out_start,
                output_end: c.cur.out_end,
                kind: reported_kind(&m.index, c.doc, c.cur.kind()),
                units: c.cur.out_units,
                slot,
                key_docs: c.key_docs,
                source_units: c.cur.doc_end - c.doc_start,
                matched: c.cur.matched,
                longest: c.cur.longest.3,
                longest_aligned: c.cur.longest_aligned().1,
                channel: c.channel,
                index: i,
                doc: c.doc,
                doc_unit_start: c.doc_start,
                caller_supplied: c.caller_supplied,
                bare: false,
            })
        })
    }

    /// Open run `r` as a finding, as if it ended now — [`Finding::widely_shared`] and
    /// [`Finding::structure`] included, which are measured here, for the runs a caller asks
    /// about (measuring them for every open run on every event would cost the proxy's
    /// per-event path for nothing). `r` is from [`Scanner::open_runs`] since the last push.
    pub fn open_finding(&self, r: &OpenRun) -> Finding {
        if let Some(b) = self.bare.as_ref().filter(|_| r.bare) {
            return b.open_finding(&OpenRun { bare: false, ..*r });
        }
        let m = &self.matchers[r.index];
        let structure = m
            .open
            .get(r.slot)
            .filter(|c| c.doc == r.doc && c.out_start == r.output_start)
            .map_or(r.units, |c| c.structure(&m.index, &m.params, &c.cur, true));
        Finding {
            output_start: r.output_start,
            output_end: r.output_end,
            index: r.index,
            doc: r.doc,
            doc_unit_start: r.doc_unit_start,
            source_units: r.source_units,
            units: r.units,
            matched: r.matched,
            longest: r.longest,
            longest_aligned: r.longest_aligned,
            structure,
            key_docs: r.key_docs,
            kind: r.kind,
            channel: r.channel,
            caller_supplied: r.caller_supplied,
            widely_shared: m.widely_shared(r.channel, r.doc, r.output_start, r.output_end, r.units),
        }
    }
}

/// A run still being matched (see [`Scanner::open_runs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenRun {
    pub output_start: u64,
    pub output_end: u64,
    pub kind: MatchKind,
    pub units: u32,
    pub source_units: u32,
    pub matched: u32,
    pub longest: u32,
    /// See [`Finding::longest_aligned`].
    pub longest_aligned: u32,
    /// Its place among its index's open runs, where [`Scanner::open_finding`] measures its
    /// [`Finding::structure`].
    pub slot: usize,
    /// See [`Finding::key_docs`].
    pub key_docs: u32,
    pub channel: Channel,
    pub index: usize,
    pub doc: u32,
    pub doc_unit_start: u32,
    pub caller_supplied: bool,
    /// Found by the reading of a Markdown text's code outside fences
    /// ([`crate::normalize::Normalizer::set_bare_code`]).
    pub bare: bool,
}

/// The k-gram keys of text the caller supplied (system prompt, messages, tool results,
/// documents), computed with the k of every channel of every index, so a run of the output
/// that repeats the request can be told apart from one the model produced.
pub fn exemptions<'a>(
    texts: impl IntoIterator<Item = &'a str>,
    indexes: &[Arc<Index>],
) -> FxHashSet<u64> {
    exemptions_as(texts, indexes, &[TextKind::Markdown])
}

/// [`exemptions`] of the texts, each read as each of `kinds`.
pub fn exemptions_as<'a>(
    texts: impl IntoIterator<Item = &'a str>,
    indexes: &[Arc<Index>],
    kinds: &[TextKind],
) -> FxHashSet<u64> {
    exemptions_read(
        texts
            .into_iter()
            .flat_map(|text| kinds.iter().map(move |&k| (text, k))),
        indexes,
    )
}

/// [`exemptions`] of texts each read as the kind beside it. A request that offers tools needs
/// more than Markdown for its tool results: the output's tool-call arguments are read as code
/// ([`TextKind::ToolArgs`]), and the file an agent read reaches the request as plain text,
/// which Markdown reads as prose ([`crate::normalize::tool_text_kinds`]).
pub fn exemptions_read<'a>(
    readings: impl IntoIterator<Item = (&'a str, TextKind)>,
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
    let mut renamed_ks: Vec<usize> = indexes
        .iter()
        .filter_map(|ix| ix.params().renamed.map(|r| r.k as usize))
        .collect();
    renamed_ks.sort_unstable();
    renamed_ks.dedup();
    let mut keys = FxHashSet::default();
    for (text, kind) in readings {
        // Markdown's code outside fences is read as code too, as a scanner reads the output.
        let (units, bare) = crate::normalize::normalize_with_bare(text, kind);
        for units in [units, bare] {
            keys_of(&units, &ks, &renamed_ks, &mut keys);
        }
    }
    keys
}

/// The k-gram keys of `units` (one text's units, or its bare-code reading's) with each of
/// `ks` and of `renamed_ks`, into `keys`.
fn keys_of(
    units: &[Unit],
    ks: &[(Channel, usize)],
    renamed_ks: &[usize],
    keys: &mut FxHashSet<u64>,
) {
    if !renamed_ks.is_empty() {
        let prev = prev_distances(units);
        for &k in renamed_ks {
            // Rolled, as the matcher rolls them (the same keys as `renamed_key` of each
            // window: `hash::tests::rolling_renamed_key_equals_direct_key`), in O(1) a
            // unit; hashing each window afresh made a request's code cost k times more.
            let mut roll = RollingRenamed::new(k);
            for (u, &d) in units.iter().zip(&prev) {
                if u.channel != Channel::Code {
                    roll.reset();
                    continue;
                }
                if let Some(key) = roll.push(u.hash, u.class, d) {
                    keys.insert(key);
                }
            }
        }
    }
    for &(channel, k) in ks {
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
    /// The longest piece copied unit for unit ([`Finding::longest`]); `units` for exact runs.
    pub exact_units: u32,
    /// The longest stretch without a gap, renamed units counting ([`Finding::aligned_units`]):
    /// `units` for exact runs, the structure of a renamed one.
    pub aligned_units: u32,
    pub kind: MatchKind,
    /// 2·aligned / (output units + source units): 1 for exact and renamed runs.
    pub similarity: f64,
    pub channel: &'static str,
    pub license: String,
    pub license_source: String,
    pub rights: &'static str,
    pub title: Option<String>,
    pub rights_holder: Option<String>,
    pub index_id: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub caller_supplied: bool,
    /// Boilerplate many indexed documents hold whole ([`Finding::widely_shared`]), reported
    /// only when asked for ([`Scanner::set_report_shared`], `scan --shared`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
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
        let last = f.doc_unit_start + f.source_units.max(1) - 1;
        let (_, source_end) = index.unit_span(f.doc, last)?;
        Some(FindingReport {
            output_start: f.output_start,
            output_end: f.output_end,
            corpus: corpus.name.clone(),
            doc: doc.path.clone(),
            url: doc.url.clone(),
            source_start: u64::from(source_start),
            source_end: u64::from(source_end),
            units: f.units,
            exact_units: f.longest,
            aligned_units: f.aligned_units(),
            kind: f.kind,
            similarity: (f.similarity() * 1000.0).round() / 1000.0,
            channel: f.channel.as_str(),
            license: doc.license.clone(),
            license_source: doc.license_source.clone(),
            rights: corpus.rights.as_str(),
            title: corpus.metadata.get("title").cloned(),
            rights_holder: corpus.metadata.get("rights_holder").cloned(),
            index_id: index.manifest().index_id.clone(),
            caller_supplied: f.caller_supplied,
            shared: f.widely_shared,
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

#[cfg(test)]
mod tests {
    use crate::index::format::Posting;
    use proptest::prelude::*;

    /// [`super::structure_of`] as it was written before it was measured incrementally: every
    /// window of the whole sequence at once.
    fn structure_reference(coarse: &[u64]) -> u32 {
        use super::STRUCTURE_W;
        if coarse.len() < STRUCTURE_W {
            return coarse.len() as u32;
        }
        let mut seen = std::collections::HashSet::new();
        let (mut repeated, mut covered_to) = (0, 0);
        for (j, w) in coarse.windows(STRUCTURE_W).enumerate() {
            if !seen.insert(w.to_vec()) {
                repeated += j + STRUCTURE_W - covered_to.max(j);
                covered_to = j + STRUCTURE_W;
            }
        }
        (coarse.len() - repeated) as u32
    }

    proptest! {
        /// Measured as the region grows, in pieces, the structure of every prefix is what
        /// measuring that prefix whole gives.
        #[test]
        fn structure_measured_as_it_grows_is_structure_measured_whole(
            // Stretches of one period (windows repeat, overlapping) and of noise; and pieces
            // of the growth.
            parts in proptest::collection::vec((1u64..16, 1usize..60, any::<bool>()), 0..8),
            cuts in proptest::collection::vec(1usize..40, 1..20),
        ) {
            let mut seq = Vec::new();
            for (i, &(period, n, noise)) in parts.iter().enumerate() {
                let mut x = i as u64 * 7919 + period;
                seq.extend((0..n as u64).map(|k| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    if noise { x >> 60 } else { k % period }
                }));
            }
            let mut g = super::Structure::new(0, false, false, true);
            let mut at = 0;
            for c in cuts.iter().cycle() {
                if at >= seq.len() {
                    break;
                }
                let to = (at + c).min(seq.len());
                for &v in &seq[at..to] {
                    g.push(v);
                }
                at = to;
                for n in 0..=at {
                    prop_assert_eq!(g.value(n), structure_reference(&seq[..n]), "prefix {}", n);
                }
            }
        }

        /// The end of a document's postings, found by galloping, is where a walk ends.
        #[test]
        fn doc_run_end_is_where_a_walk_ends(runs in proptest::collection::vec(1usize..40, 1..30)) {
            let postings: Vec<Posting> = runs
                .iter()
                .enumerate()
                .flat_map(|(d, &n)| (0..n).map(move |q| Posting { key: 7, doc: d as u32, pos: q as u32 }))
                .collect();
            for i in 0..postings.len() {
                let walked = i + postings[i..].iter().take_while(|p| p.doc == postings[i].doc).count();
                prop_assert_eq!(super::doc_run_end(&postings, i), walked, "at {}", i);
            }
        }
    }
}
