//! Which SPDX license a text reproduces, and how much of it.
//!
//! Texts are compared as sets of word bigrams after the normalisation the SPDX matching
//! guidelines allow (case, whitespace and line wrapping, punctuation including quotes and
//! dashes, bullets and list numbering, comment prefixes such as `//`, `#`, ` * `, copyright
//! lines, varietal spellings such as licence/license). The candidate with the highest Dice
//! coefficient wins — the measure askalono uses — computed through an inverted index from
//! bigram to license so a text is scored against every license at the cost of its own length.
//! Dice prefers, among texts that contain one another (BSD-2-Clause inside BSD-3-Clause, MIT
//! inside X11), the one whose extra clauses are present: a missing clause costs the larger
//! text, an extra one costs the smaller.
//!
//! Hand-written rather than askalono (the `spdx` crate's `detection` feature): askalono scores
//! a whole text against each license, whereas Verbatim needs the span-level coverage of a
//! reproduction inside other output, and a normalisation that drops comment prefixes and list
//! markers line by line. `docs/license-detection.md` measures both on the same inputs.

use std::collections::HashMap;
use std::sync::LazyLock;

use xxhash_rust::xxh3::xxh3_64;

use super::texts::{self, LicenseText};

/// Spellings the SPDX guidelines treat as equal, folded to one (a selection of its
/// `equivalentwords.txt`: British/American spellings and common variants).
const VARIETAL: &[(&str, &str)] = &[
    ("acknowledgment", "acknowledgement"),
    ("analogue", "analog"),
    ("analyse", "analyze"),
    ("artefact", "artifact"),
    ("authorisation", "authorization"),
    ("authorised", "authorized"),
    ("calibre", "caliber"),
    ("cancelled", "canceled"),
    ("capitalisations", "capitalizations"),
    ("catalogue", "catalog"),
    ("categorise", "categorize"),
    ("centre", "center"),
    ("emphasised", "emphasized"),
    ("favour", "favor"),
    ("favourite", "favorite"),
    ("fulfil", "fulfill"),
    ("fulfilment", "fulfillment"),
    ("initialise", "initialize"),
    ("judgment", "judgement"),
    ("labelling", "labeling"),
    ("labour", "labor"),
    ("licence", "license"),
    ("licences", "licenses"),
    ("licenced", "licensed"),
    ("licencing", "licensing"),
    ("maximise", "maximize"),
    ("modelled", "modeled"),
    ("modelling", "modeling"),
    ("offence", "offense"),
    ("optimise", "optimize"),
    ("organisation", "organization"),
    ("organise", "organize"),
    ("practise", "practice"),
    ("programme", "program"),
    ("realise", "realize"),
    ("recognise", "recognize"),
    ("signalling", "signaling"),
    ("utilisation", "utilization"),
    ("whilst", "while"),
    ("wilful", "willful"),
];

/// What a copyright statement starts with, lower-cased (and "all rights reserved", which
/// [`is_copyright_line`] takes alone).
const COPYRIGHT_STARTS: [&str; 4] = ["copyright", "©", "(c)", "portions copyright"];
const ALL_RIGHTS: &str = "all rights reserved";

/// Whether a line, after its comment prefix, is a copyright statement (ignored): it starts with
/// "copyright", `©` or `(c)` and carries a year, a sign or a template placeholder — so a
/// rewrapped sentence that happens to start a line with "copyright holders" is kept.
fn is_copyright_line(rest: &str) -> bool {
    // No character but ASCII letters lower-cases to a sequence of ASCII letters these prefixes
    // hold (`İ` gives `i` and a combining dot), so comparing ASCII case-insensitively first
    // spares most lines the lower-cased copy (`case`, `const`, `(void)`: a line of code is
    // asked too).
    let t = rest.trim_start().as_bytes();
    let starts = |p: &&str| {
        t.get(..p.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(p.as_bytes()))
    };
    COPYRIGHT_STARTS.iter().chain([&ALL_RIGHTS]).any(starts)
        && is_copyright_line_lowered(rest.trim_start())
}

/// [`is_copyright_line`] without its pre-check: the line lower-cased whole (what it was before
/// the pre-check, and what the property test compares it with).
fn is_copyright_line_lowered(t: &str) -> bool {
    let l = t.to_lowercase();
    if !COPYRIGHT_STARTS.iter().any(|p| l.starts_with(p)) {
        return l.starts_with(ALL_RIGHTS);
    }
    let year = l
        .as_bytes()
        .windows(4)
        .any(|w| w.iter().all(u8::is_ascii_digit));
    if l.starts_with("(c)") {
        // Also a list marker: "(c) the licenses granted in this Section …".
        return year || l.contains("copyright");
    }
    year || l.contains('©')
        || l.contains("(c)")
        || ["<year>", "yyyy", "<owner>", "<copyright", "[name of"]
            .iter()
            .any(|p| l.contains(p))
}

/// A line without its comment prefix (`//`, `#`, `/*`, ` * `, `--`, `;`, `%`, `>`, `!`,
/// `REM`, `dnl`) and leading bullets.
fn strip_prefix(line: &str) -> &str {
    let mut l = line.trim_start();
    loop {
        let before = l.len();
        l = l.trim_start_matches(|c: char| {
            c.is_whitespace()
                || matches!(c, '/' | '*' | '#' | '-' | ';' | '%' | '>' | '!' | '|')
                || matches!(c, '•' | '·' | '‣' | '◦' | '▪' | '–' | '—' | '"' | '\'')
        });
        for p in ["REM ", "rem ", "dnl ", "<!--"] {
            if let Some(r) = l.strip_prefix(p) {
                l = r;
            }
        }
        if l.len() == before {
            return l;
        }
    }
}

/// Drops list numbering at the start of a line: `1.`, `2.1.`, `(a)`, `a)`, `iv.`, `(3)`.
fn strip_numbering(mut l: &str) -> &str {
    loop {
        let t = l.trim_start();
        let (inner, rest) = if let Some(r) = t.strip_prefix('(') {
            match r.find(')') {
                Some(i) if i <= 5 => (&r[..i], &r[i + 1..]),
                _ => return t,
            }
        } else {
            let end = t.find(|c: char| !c.is_alphanumeric()).unwrap_or(t.len());
            let (tok, after) = t.split_at(end);
            match after.chars().next() {
                Some('.' | ')') => (tok, &after[1..]),
                _ => return t,
            }
        };
        let marker = !inner.is_empty()
            && (inner.len() <= 3 && inner.bytes().all(|b| b.is_ascii_digit())
                || inner.len() == 1 && inner.bytes().all(|b| b.is_ascii_alphabetic())
                || inner.len() <= 5
                    && inner
                        .bytes()
                        .all(|b| matches!(b.to_ascii_lowercase(), b'i' | b'v' | b'x')));
        if !marker {
            return t;
        }
        l = rest;
    }
}

/// [`VARIETAL`] as a map: every word of every scanned line is looked up in it.
static VARIETAL_MAP: LazyLock<rustc_hash::FxHashMap<&'static str, &'static str>> =
    LazyLock::new(|| VARIETAL.iter().copied().collect());

/// `w` lower-cased and its varietal spelling folded, written into `scratch`; returns the
/// folded word (in `scratch`, or the static spelling it folds to).
pub(crate) fn fold_into<'a>(w: &str, scratch: &'a mut String) -> &'a str {
    scratch.clear();
    fold_append(w, scratch);
    scratch
}

/// [`fold_into`] appending to `out` (the marker scanner folds each word into its joined
/// text, not into a scratch buffer copied from after).
pub(crate) fn fold_append(w: &str, out: &mut String) {
    let at = out.len();
    if w.is_ascii() {
        out.push_str(w);
        out[at..].make_ascii_lowercase();
    } else {
        // `str::to_lowercase`, not per char: a final sigma lower-cases by its position.
        out.push_str(&w.to_lowercase());
    }
    if !WordEnds::VARIETAL.may_hold(&out[at..]) {
        return;
    }
    if let Some(to) = VARIETAL_MAP.get(&out[at..]) {
        out.truncate(at);
        out.push_str(to);
    }
}

/// Which (length, first byte, last byte) classes the words of a small set have, one bit each
/// of 8,192 (see [`WordEnds::bit`]): a word whose bit is clear is not in the set, found
/// without a hash table. Most words of a text are in neither [`VARIETAL`] nor the marker
/// scanner's phrase starts, and both are asked about every word.
pub(crate) struct WordEnds([u64; 128]);

impl WordEnds {
    const VARIETAL: WordEnds = {
        let mut m = WordEnds::EMPTY;
        let mut i = 0;
        while i < VARIETAL.len() {
            m = m.with(VARIETAL[i].0);
            i += 1;
        }
        m
    };

    pub(crate) const EMPTY: WordEnds = WordEnds([0; 128]);

    /// The set so far, with `w` added.
    pub(crate) const fn with(mut self, w: &str) -> WordEnds {
        let b = w.as_bytes();
        if !b.is_empty() {
            let bit = Self::bit(b);
            self.0[bit / 64] |= 1 << (bit % 64);
        }
        self
    }

    /// False when no word of the set is in `w`'s (length, first byte, last byte) class.
    #[inline]
    pub(crate) fn may_hold(&self, w: &str) -> bool {
        let b = w.as_bytes();
        if b.is_empty() {
            return false;
        }
        let bit = Self::bit(b);
        self.0[bit / 64] & (1 << (bit % 64)) != 0
    }

    /// One of 8,192 bits (`b` is not empty): the length (long words share the last of 8
    /// values), the first and the last byte (32 values each).
    const fn bit(b: &[u8]) -> usize {
        let l = if b.len() > 7 { 7 } else { b.len() };
        (l << 10) | (((b[0] & 31) as usize) << 5) | (b[b.len() - 1] & 31) as usize
    }
}

/// The words of a text under the SPDX matching guidelines' equivalences, with, for each, the
/// byte range it came from.
pub fn words(text: &str) -> Vec<(String, (usize, usize))> {
    words_with(text, false)
}

/// As [`words`], keeping short numbers (a header's "version 2" matters there).
pub fn words_keeping_numbers(text: &str) -> Vec<(String, (usize, usize))> {
    words_with(text, true)
}

fn words_with(text: &str, numbers: bool) -> Vec<(String, (usize, usize))> {
    let mut out = Vec::new();
    for_each_word(text, numbers, &mut String::new(), |w, span| {
        out.push((w.to_string(), span))
    });
    out
}

/// Calls `f` with each word of `text` (folded: lower-cased, varietal spellings unified) and
/// its byte range, as [`words`] (or, with `numbers`, [`words_keeping_numbers`]) lists them,
/// without a `String` per word: `scratch` holds the word being folded.
pub(crate) fn for_each_word(
    text: &str,
    numbers: bool,
    scratch: &mut String,
    mut f: impl FnMut(&str, (usize, usize)),
) {
    let base = text.as_ptr() as usize;
    for line in text.lines() {
        let off = line.as_ptr() as usize - base;
        for_each_word_in_line(line, numbers, |w, (s, e)| {
            f(fold_into(w, scratch), (off + s, off + e))
        });
    }
}

/// The words of one line (no newline in it) as [`for_each_word`] finds them, before folding
/// (fold them with [`fold_into`] or [`fold_append`]), with byte ranges in the line. The
/// license marker scanner runs this over every line of every answer, each line as it ends.
pub(crate) fn for_each_word_in_line(
    line: &str,
    numbers: bool,
    mut f: impl FnMut(&str, (usize, usize)),
) {
    let base = line.as_ptr() as usize;
    let rest = strip_prefix(line);
    if is_copyright_line(rest) {
        return;
    }
    let rest = strip_numbering(rest);
    let off = rest.as_ptr() as usize - base;
    // Short numbers and single letters are dropped wherever they stand: section and list
    // markers ("1.", "2.1.", "a)") move to the middle of a line when text is rewrapped, where
    // they cannot be told from the rest.
    let mut word = |s: usize, i: usize| {
        let w = &rest[s..i];
        let marker =
            w.len() <= 3 && w.bytes().all(|b| b.is_ascii_digit()) || w.chars().nth(1).is_none();
        if numbers || !marker {
            f(w, (off + s, off + i));
        }
    };
    if rest.is_ascii() {
        // Most lines: a word is a run of ASCII letters and digits.
        let b = rest.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if !b[i].is_ascii_alphanumeric() {
                i += 1;
                continue;
            }
            let s = i;
            while i < b.len() && b[i].is_ascii_alphanumeric() {
                i += 1;
            }
            word(s, i);
        }
        return;
    }
    let mut start = None;
    for (i, c) in rest
        .char_indices()
        .chain(std::iter::once((rest.len(), ' ')))
    {
        match (c.is_alphanumeric(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                word(s, i);
                start = None;
            }
            _ => {}
        }
    }
}

fn bigrams(words: &[(String, (usize, usize))]) -> Vec<u64> {
    let hashes: Vec<u64> = words.iter().map(|w| xxh3_64(w.0.as_bytes())).collect();
    let mut v: Vec<u64> = hashes
        .windows(2)
        .map(|w| w[0].rotate_left(23) ^ w[1].wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// How much the share of the license present counts beside the share of the text the license
/// explains. Precision first: a partial reproduction is explained wholly by its license (and
/// by any license containing that part); among those, coverage prefers the license more of
/// which is present (BSD-2-Clause over BSD-3-Clause when clause 3 is absent, and the other way
/// round when it is there).
const COVERAGE_WEIGHT: f64 = 0.25;

/// Scores this close to the best are a tie (see [`LicenseDb::identify`]).
const NEAR_TIE: f64 = 0.01;

fn osi(id: &str) -> bool {
    spdx::license_id(id).is_some_and(|l| l.is_osi_approved())
}

/// What a text was identified as.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Identification {
    /// The SPDX id reported (for a text shared by `-only` and `-or-later`, the `-only` id:
    /// the text alone does not say which; a notice does, and is a license marker).
    pub id: String,
    /// Every SPDX id whose text this is (e.g. `GPL-2.0-only`, `GPL-2.0-or-later`).
    pub same_text: Vec<String>,
    pub exception: bool,
    /// The ranking score, 0–1: (precision + ¼ coverage) / 1.25.
    pub score: f64,
    /// Share of the license's bigrams present in the text, 0–1.
    pub coverage: f64,
    /// Share of the text's bigrams that belong to the license, 0–1.
    pub precision: f64,
    /// The next best license and its score: how clearly the text was told apart.
    pub runner_up: Option<(String, f64)>,
}

/// One distinguishable text: texts with the same bigram set (the same words, differing only
/// in what the normalisation ignores) are one entry with all their ids.
struct Entry {
    id: &'static str,
    ids: Vec<&'static str>,
    exception: bool,
    bigrams: u32,
}

/// Every SPDX license and exception text, as bigram sets with an inverted index.
pub struct LicenseDb {
    entries: Vec<Entry>,
    postings: HashMap<u64, Vec<u32>>,
}

static DB: LazyLock<LicenseDb> = LazyLock::new(|| LicenseDb::new(texts::all()));

impl LicenseDb {
    /// The database of the texts shipped with the `spdx` crate (built on first use, ~0.2 s).
    pub fn builtin() -> &'static LicenseDb {
        &DB
    }

    fn new(all: &'static [LicenseText]) -> LicenseDb {
        let mut postings: HashMap<u64, Vec<u32>> = HashMap::new();
        let mut entries: Vec<Entry> = Vec::with_capacity(all.len());
        let mut by_set: HashMap<u64, usize> = HashMap::new();
        for t in all {
            // A text only deprecated ids name (`GPL-2.0+`, `wxWindows`, `Nunit`) is a copy or
            // an old form of a current one: reporting it would name a deprecated id.
            if t.ids.iter().all(|i| texts::deprecated(i)) {
                continue;
            }
            let b = bigrams(&words(t.text));
            if b.is_empty() {
                continue;
            }
            let set = xxh3_64(bytemuck::cast_slice(&b));
            if let Some(&i) = by_set.get(&set) {
                let e = &mut entries[i];
                e.ids.extend(t.ids.iter().copied());
                if texts::deprecated(e.id) && !texts::deprecated(t.id) {
                    e.id = t.id;
                    e.exception = t.exception;
                }
                continue;
            }
            let i = entries.len();
            by_set.insert(set, i);
            for &g in &b {
                postings.entry(g).or_default().push(i as u32);
            }
            entries.push(Entry {
                id: t.id,
                ids: t.ids.clone(),
                exception: t.exception,
                bigrams: b.len() as u32,
            });
        }
        LicenseDb { entries, postings }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The best-scoring license for `text`, or `None` if no license shares a bigram with it.
    pub fn identify(&self, text: &str) -> Option<Identification> {
        let b = bigrams(&words(text));
        if b.is_empty() {
            return None;
        }
        let mut counts = vec![0u32; self.entries.len()];
        for g in &b {
            if let Some(ls) = self.postings.get(g) {
                for &l in ls {
                    counts[l as usize] += 1;
                }
            }
        }
        let a = b.len() as f64;
        let mut scored: Vec<(u32, f64, u32)> = counts
            .into_iter()
            .enumerate()
            .filter(|&(_, inter)| inter > 0)
            .map(|(l, inter)| {
                let l = l as u32;
                let e = &self.entries[l as usize];
                let precision = inter as f64 / a;
                let coverage = inter as f64 / e.bigrams.max(1) as f64;
                (
                    l,
                    (precision + COVERAGE_WEIGHT * coverage) / (1.0 + COVERAGE_WEIGHT),
                    inter,
                )
            })
            .collect();
        // Highest score first; ties to the smaller text, then by name, so results are stable.
        scored.sort_by(|x, y| {
            y.1.total_cmp(&x.1)
                .then(
                    self.entries[x.0 as usize]
                        .bigrams
                        .cmp(&self.entries[y.0 as usize].bigrams),
                )
                .then(
                    self.entries[x.0 as usize]
                        .id
                        .cmp(self.entries[y.0 as usize].id),
                )
        });
        // Near ties (a part shared by a license and its variants, e.g. the first half of
        // Apache-2.0 and of Pixar's modified Apache) go to an OSI-approved license: the variants
        // are rarer by far.
        // Only for a text that explains the input at least as well (precision: the best one
        // leads by coverage alone), and never for a deprecated id.
        let (top, top_inter) = scored.first().map(|x| (x.1, x.2))?;
        if let Some(i) = scored
            .iter()
            .take_while(|x| x.1 >= top - NEAR_TIE)
            .position(|x| {
                let id = self.entries[x.0 as usize].id;
                x.2 >= top_inter && osi(id) && !texts::deprecated(id)
            })
            .filter(|&i| i > 0 && !osi(self.entries[scored[0].0 as usize].id))
        {
            let x = scored.remove(i);
            scored.insert(0, x);
        }
        let &(best, score, inter) = scored.first()?;
        let e = &self.entries[best as usize];
        Some(Identification {
            id: e.id.to_string(),
            same_text: e.ids.iter().map(|s| s.to_string()).collect(),
            exception: e.exception,
            score,
            coverage: inter as f64 / e.bigrams.max(1) as f64,
            precision: inter as f64 / a,
            runner_up: scored
                .get(1)
                .map(|&(l, s, _)| (self.entries[l as usize].id.to_string(), s)),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]
        /// The pre-checks reject no line the whole lower-cased test accepts (`İ`, `K`, `©`
        /// and mixed case included).
        #[test]
        fn copyright_lines_are_told_as_before_the_ascii_pre_check(
            parts in proptest::collection::vec(
                prop_oneof![
                    "(COPYRIGHT|Copyright|copyrİght|COPYRIGHT|\\(c\\)|\\(C\\)|©|Portions copyRight|all RIGHTS reserved|ALL rİghts|yyyy|<owner>)",
                    "[ (cCpPaAK]{0,3}",
                    "[0-9]{1,5}",
                    "\\PC{0,4}",
                ],
                0..6,
            ),
        ) {
            let line: String = parts.concat();
            prop_assert_eq!(
                super::is_copyright_line(&line),
                super::is_copyright_line_lowered(line.trim_start()),
                "{:?}",
                line
            );
        }
    }

    /// The word list as it was computed before [`super::for_each_word`]: a `String` per word,
    /// every character tested with `char::is_alphanumeric`, varietal spellings found by a
    /// linear search. Kept as the reference the fast path must agree with.
    fn reference(text: &str, numbers: bool) -> Vec<(String, (usize, usize))> {
        let fold = |w: &str| {
            let lower = w.to_lowercase();
            match super::VARIETAL.iter().find(|(from, _)| *from == lower) {
                Some((_, to)) => (*to).to_string(),
                None => lower,
            }
        };
        let mut out = Vec::new();
        let base = text.as_ptr() as usize;
        for line in text.lines() {
            let rest = super::strip_prefix(line);
            if super::is_copyright_line(rest) {
                continue;
            }
            let rest = super::strip_numbering(rest);
            let mut start = None;
            let off = rest.as_ptr() as usize - base;
            for (i, c) in rest
                .char_indices()
                .chain(std::iter::once((rest.len(), ' ')))
            {
                match (c.is_alphanumeric(), start) {
                    (true, None) => start = Some(i),
                    (false, Some(s)) => {
                        let w = &rest[s..i];
                        let marker = w.len() <= 3 && w.bytes().all(|b| b.is_ascii_digit())
                            || w.chars().count() == 1;
                        if numbers || !marker {
                            out.push((fold(w), (off + s, off + i)));
                        }
                        start = None;
                    }
                    _ => {}
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]
        /// Same words, folded the same, at the same offsets as the reference, on license-like
        /// ASCII lines (comment prefixes, numbering, copyright lines, varietal spellings) and
        /// on lines with other characters (final sigma, letters that lower-case to several).
        #[test]
        fn words_agree_with_the_reference(
            lines in proptest::collection::vec(
                prop_oneof![
                    "[ /*#;>-]{0,4}(\\(?[0-9a-c]{1,3}[.)] )?[A-Za-z0-9 ,.'()-]{0,40}",
                    "(Copyright|\\(C\\)|©|All rights reserved) [0-9]{0,4} [A-Za-z ]{0,12}",
                    "(Licence|CENTRE|Whilst|organisation|x|7|123|1234) [a-z]{1,6}",
                    "[ΣσςΑΒΓßİẞa-zÉé0-9 .,-]{0,30}",
                    "\\PC{0,20}",
                ],
                0..6,
            ),
            crlf in any::<bool>(),
            numbers in any::<bool>(),
        ) {
            let text = lines.join(if crlf { "\r\n" } else { "\n" });
            prop_assert_eq!(super::words_with(&text, numbers), reference(&text, numbers));
        }
    }
}
