//! License markers in generated text: `SPDX-License-Identifier:` lines (parsed as SPDX
//! expressions; imprecise names such as `GPLv2` or `Apache 2` tolerated, corrected and
//! reported), copyright notices (`Copyright (c) 2019 Name`, `© Name`, `(C) 2020 Name`), and the
//! well-known header phrases of the common licenses (the GNU "either version 2 of the License,
//! or (at your option) any later version" notice, Apache's "Licensed under the Apache License,
//! Version 2.0", MPL-2.0's "This Source Code Form is subject to the terms of …"). A model that
//! writes a GPL header on top of code says something even when the code is in no index.
//!
//! Streaming: [`MarkerScanner::push`] takes text as it arrives and reports a marker once its
//! line (identifiers, notices) or its wording (header phrases: up to 60 words after the
//! license's name, where the version and "any later version" stand) is complete — the same
//! markers whatever the chunking. Phrases are found with aho-corasick over the normalised word
//! stream, so comment prefixes and line wrapping do not matter.

use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, MatchKind};
use serde::Serialize;

use crate::normalize::JsonProjection;

/// What kind of marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MarkerKind {
    SpdxIdentifier,
    Copyright,
    HeaderPhrase,
    /// A license named in passing: its SPDX full name ("Mozilla Public License 2.0") or a
    /// common short form ("GPLv2", "LGPL 2.1", "the MIT license", "BSD 3-Clause").
    LicenseName,
}

/// One marker, with its byte span in the scanned text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Marker {
    pub kind: MarkerKind,
    pub start: u64,
    pub end: u64,
    /// The license expression the marker states (canonical SPDX), if it states one.
    pub expression: Option<String>,
    /// For an imprecise `SPDX-License-Identifier` (corrected into `expression`), what it said.
    pub imprecise: Option<String>,
    /// An identifier that could not be parsed at all, and why.
    pub problem: Option<String>,
    /// Copyright: the holder and years as written.
    pub holder: Option<String>,
    pub years: Option<String>,
}

impl Marker {
    fn new(kind: MarkerKind, start: u64, end: u64) -> Marker {
        Marker {
            kind,
            start,
            end,
            expression: None,
            imprecise: None,
            problem: None,
            holder: None,
            years: None,
        }
    }
}

/// A header phrase: the words that name the license, and how to find its version.
struct Phrase {
    words: std::borrow::Cow<'static, str>,
    family: Family,
}

#[derive(Clone, Copy, Debug)]
enum Family {
    /// A license's name, no version to look for.
    Name(&'static str),
    Gpl,
    Lgpl,
    LgplLibrary,
    Agpl,
    Fixed(&'static str),
    Apache,
    Mpl,
    Epl,
}

const HEADERS: &[Header] = &[
    Header {
        words: "gnu general public license",
        family: Family::Gpl,
    },
    Header {
        words: "gnu lesser general public license",
        family: Family::Lgpl,
    },
    Header {
        words: "gnu library general public license",
        family: Family::LgplLibrary,
    },
    Header {
        words: "gnu affero general public license",
        family: Family::Agpl,
    },
    Header {
        words: "licensed under the apache license",
        family: Family::Apache,
    },
    Header {
        words: "subject to the terms of the mozilla public license",
        family: Family::Mpl,
    },
    Header {
        words: "terms of the eclipse public license",
        family: Family::Epl,
    },
    Header {
        words: "licensed under the mit license",
        family: Family::Fixed("MIT"),
    },
    Header {
        words: "released under the mit license",
        family: Family::Fixed("MIT"),
    },
    Header {
        words: "permission is hereby granted free of charge to any person obtaining a copy",
        family: Family::Fixed("MIT"),
    },
    Header {
        words: "permission to use copy modify and or distribute this software for any purpose with or without fee is hereby granted",
        family: Family::Fixed("ISC"),
    },
    Header {
        words: "this is free and unencumbered software released into the public domain",
        family: Family::Fixed("Unlicense"),
    },
];

struct Header {
    words: &'static str,
    family: Family,
}

/// Common short names, normalised (`GPLv2` is `gplv2`, `LGPL-2.1` is `lgpl 2 1`).
const SHORT_NAMES: &[(&str, &str)] = &[
    ("gplv2", "GPL-2.0-only"),
    ("gpl v2", "GPL-2.0-only"),
    ("gpl 2", "GPL-2.0-only"),
    ("gpl 2 0", "GPL-2.0-only"),
    ("gpl version 2", "GPL-2.0-only"),
    ("gplv3", "GPL-3.0-only"),
    ("gpl v3", "GPL-3.0-only"),
    ("gpl 3", "GPL-3.0-only"),
    ("gpl 3 0", "GPL-3.0-only"),
    ("gpl version 3", "GPL-3.0-only"),
    ("lgplv2", "LGPL-2.0-only"),
    ("lgpl 2 0", "LGPL-2.0-only"),
    ("lgplv2 1", "LGPL-2.1-only"),
    ("lgpl v2 1", "LGPL-2.1-only"),
    ("lgpl 2 1", "LGPL-2.1-only"),
    ("lgplv3", "LGPL-3.0-only"),
    ("lgpl v3", "LGPL-3.0-only"),
    ("lgpl 3", "LGPL-3.0-only"),
    ("lgpl 3 0", "LGPL-3.0-only"),
    ("agplv3", "AGPL-3.0-only"),
    ("agpl v3", "AGPL-3.0-only"),
    ("agpl 3", "AGPL-3.0-only"),
    ("agpl 3 0", "AGPL-3.0-only"),
    ("apache 2 0", "Apache-2.0"),
    ("apache2", "Apache-2.0"),
    ("apache license 2 0", "Apache-2.0"),
    ("apache license version 2 0", "Apache-2.0"),
    ("apache software license 2 0", "Apache-2.0"),
    ("mpl 2 0", "MPL-2.0"),
    ("mpl 1 1", "MPL-1.1"),
    ("epl 2 0", "EPL-2.0"),
    ("epl 1 0", "EPL-1.0"),
    ("eupl 1 2", "EUPL-1.2"),
    ("cddl 1 0", "CDDL-1.0"),
    ("osl 3 0", "OSL-3.0"),
    ("afl 3 0", "AFL-3.0"),
    ("the mit license", "MIT"),
    ("mit licensed", "MIT"),
    ("bsd 3 clause", "BSD-3-Clause"),
    ("3 clause bsd", "BSD-3-Clause"),
    ("new bsd license", "BSD-3-Clause"),
    ("modified bsd license", "BSD-3-Clause"),
    ("bsd 2 clause", "BSD-2-Clause"),
    ("2 clause bsd", "BSD-2-Clause"),
    ("simplified bsd license", "BSD-2-Clause"),
    ("freebsd license", "BSD-2-Clause"),
    ("isc license", "ISC"),
    ("zlib license", "Zlib"),
    ("boost software license", "BSL-1.0"),
    ("the unlicense", "Unlicense"),
    ("cc0", "CC0-1.0"),
    ("cc0 1 0", "CC0-1.0"),
    ("cc by 4 0", "CC-BY-4.0"),
    ("cc by sa 4 0", "CC-BY-SA-4.0"),
    ("cc by 3 0", "CC-BY-3.0"),
    ("cc by sa 3 0", "CC-BY-SA-3.0"),
    ("wtfpl", "WTFPL"),
    ("python software foundation license", "PSF-2.0"),
];

/// Header phrases, then every current SPDX license's full name, then the short names.
static PHRASES: LazyLock<Vec<Phrase>> = LazyLock::new(|| {
    let mut v: Vec<Phrase> = HEADERS
        .iter()
        .map(|h| Phrase {
            words: h.words.into(),
            family: h.family,
        })
        .collect();
    for l in spdx::identifiers::LICENSES {
        if super::texts::deprecated(l.name) {
            continue;
        }
        let words: Vec<String> = super::identify::words_keeping_numbers(l.full_name)
            .into_iter()
            .map(|w| w.0)
            .collect();
        // A one-word name ("Beerware") is too likely to be a word in prose.
        if words.len() >= 2 {
            v.push(Phrase {
                words: words.join(" ").into(),
                family: Family::Name(l.name),
            });
        }
    }
    v.extend(SHORT_NAMES.iter().map(|(w, id)| Phrase {
        words: (*w).into(),
        family: Family::Name(id),
    }));
    v
});

/// Words after a GNU license's short name that may say "or later".
const NAME_LOOKAHEAD: usize = 4;

/// Words after a phrase that may carry its version.
const LOOKAHEAD: usize = 60;

/// Words in the longest phrase: how far back a search must overlap the last one.
static LONGEST: LazyLock<usize> = LazyLock::new(|| {
    PHRASES
        .iter()
        .map(|p| p.words.split(' ').count())
        .max()
        .unwrap_or(0)
});

/// The words a phrase can start with: the automaton is tried only at these (its own
/// prefilter cannot help: every pattern starts with a space).
static FIRST_WORDS: LazyLock<rustc_hash::FxHashSet<&'static str>> = LazyLock::new(|| {
    PHRASES
        .iter()
        .filter_map(|p| p.words.split(' ').next())
        .collect()
});

/// The phrases of one word, and the first two words of the others: a word that starts a
/// phrase is searched from only if it is one of the first or the next word makes one of the
/// second (most "the", "open" or "public" start none), without running the automaton.
static ONE_WORD: LazyLock<rustc_hash::FxHashSet<&'static str>> = LazyLock::new(|| {
    PHRASES
        .iter()
        .filter(|p| !p.words.contains(' '))
        .map(|p| &*p.words)
        .collect()
});
static FIRST_TWO: LazyLock<rustc_hash::FxHashSet<(&'static str, &'static str)>> =
    LazyLock::new(|| {
        PHRASES
            .iter()
            .filter_map(|p| {
                let mut w = p.words.split(' ');
                Some((w.next()?, w.next()?))
            })
            .collect()
    });

/// Every phrase's words ("gnu general public license"), and every proper beginning of one
/// in whole words ("gnu", "gnu general", "gnu general public"): what
/// [`MarkerScanner::undecided_from`] asks of the words of a line not finished yet.
static PHRASE_WORDS: LazyLock<rustc_hash::FxHashSet<&'static str>> =
    LazyLock::new(|| PHRASES.iter().map(|p| &*p.words).collect());
static PHRASE_BEGINNINGS: LazyLock<rustc_hash::FxHashSet<&'static str>> = LazyLock::new(|| {
    PHRASES
        .iter()
        .flat_map(|p| {
            let w: &'static str = &p.words;
            w.match_indices(' ').map(move |(i, _)| &w[..i])
        })
        .collect()
});

/// [`FIRST_WORDS`]' lengths and first and last bytes, asked first (most words start no
/// phrase).
static FIRST_WORDS_PREFILTER: LazyLock<super::identify::WordEnds> = LazyLock::new(|| {
    FIRST_WORDS
        .iter()
        .fold(super::identify::WordEnds::EMPTY, |m, w| m.with(w))
});

static AC: LazyLock<AhoCorasick> = LazyLock::new(|| {
    // Patterns are padded with spaces so they match whole words in " w1 w2 … " text.
    #[allow(clippy::expect_used)] // a fixed, valid pattern set
    AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .start_kind(aho_corasick::StartKind::Anchored)
        .build(PHRASES.iter().map(|p| format!(" {} ", p.words)))
        .expect("valid patterns")
});

/// The version a GNU-style or versioned license phrase names, read from the words after it.
/// `after`: the words after the phrase as " w1 w2 … wn " (a slice of the scanner's joined
/// words).
fn resolve(family: Family, after: &str) -> Option<String> {
    let has = |s: &str| after.contains(s);
    let or_later = has(" any later version ") || has(" or later ");
    let gnu = |base: &str| {
        Some(format!(
            "{base}-{}",
            if or_later { "or-later" } else { "only" }
        ))
    };
    let ver = |vs: &[(&str, &'static str)]| vs.iter().find(|(w, _)| has(w)).map(|(_, v)| *v);
    match family {
        Family::Fixed(id) => Some(id.to_string()),
        // "GPLv2 or later", "LGPL 2.1 or any later version".
        Family::Name(id) => match id.strip_suffix("-only") {
            Some(base) if has(" or later") || has(" or any later") => {
                Some(format!("{base}-or-later"))
            }
            _ => Some(id.to_string()),
        },
        Family::Gpl => match ver(&[
            (" version 3", "3.0"),
            (" version 2", "2.0"),
            (" version 1", "1.0"),
            (" v3", "3.0"),
            (" v2", "2.0"),
        ]) {
            Some(v) => gnu(&format!("GPL-{v}")),
            // The license named without a version: a marker, with no expression.
            None => None,
        },
        Family::Lgpl => match ver(&[
            (" version 3", "3.0"),
            (" version 2 1", "2.1"),
            (" v3", "3.0"),
        ]) {
            Some(v) => gnu(&format!("LGPL-{v}")),
            None => None,
        },
        Family::LgplLibrary => match ver(&[(" version 2 1", "2.1"), (" version 2", "2.0")]) {
            Some(v) => gnu(&format!("LGPL-{v}")),
            None => None,
        },
        // Only version 3 of the AGPL is in use.
        Family::Agpl => gnu("AGPL-3.0"),
        Family::Apache => ver(&[
            (" version 2 0", "Apache-2.0"),
            (" version 1 1", "Apache-1.1"),
        ])
        .map(str::to_string),
        Family::Mpl => ver(&[
            (" v 2 0", "MPL-2.0"),
            (" version 2 0", "MPL-2.0"),
            (" version 1 1", "MPL-1.1"),
        ])
        .map(str::to_string),
        Family::Epl => ver(&[
            (" v 2 0", "EPL-2.0"),
            (" version 2 0", "EPL-2.0"),
            (" v1 0", "EPL-1.0"),
            (" version 1 0", "EPL-1.0"),
        ])
        .map(str::to_string),
    }
}

/// Parses what follows `SPDX-License-Identifier:` on its line. A backslash ends it: no SPDX
/// expression holds one, and in a string literal or JSON (a file a model writes through a
/// tool, `"// SPDX-License-Identifier: MIT\n// Copyright …"`) it starts the escaped line
/// break the line really ends at.
fn spdx_line(m: &mut Marker, rest: &str) {
    let rest = rest.split('\\').next().unwrap_or(rest);
    let expr = rest
        .trim()
        .trim_end_matches(|c: char| {
            c.is_whitespace() || matches!(c, '*' | '/' | '-' | '>' | '"' | '\'' | ',' | ';' | '#')
        })
        .trim_start_matches(|c: char| c.is_whitespace() || matches!(c, '"' | '\''));
    if expr.is_empty() {
        m.problem = Some("no expression after `SPDX-License-Identifier:`".into());
        return;
    }
    // A single imprecise name written with spaces ("Apache 2", "GPL v3") is not an
    // expression the lexer can read; try it joined up.
    if expr.split_whitespace().count() > 1
        && !expr
            .split_whitespace()
            .any(|w| matches!(w.to_ascii_uppercase().as_str(), "AND" | "OR" | "WITH"))
    {
        for joined in [expr.replace(' ', "-"), expr.replace(' ', "")] {
            if let Ok(Some(fixed)) = spdx::Expression::canonicalize(&joined)
                && spdx::Expression::parse(&fixed).is_ok()
            {
                m.expression = Some(fixed);
                m.imprecise = Some(expr.to_string());
                return;
            }
        }
    }
    match spdx::Expression::canonicalize(expr) {
        Ok(None) => match spdx::Expression::parse(expr) {
            Ok(_) => m.expression = Some(expr.to_string()),
            Err(e) => m.problem = Some(format!("`{}`: {}", quote(expr), e.reason)),
        },
        Ok(Some(fixed)) => match spdx::Expression::parse(&fixed) {
            Ok(_) => {
                m.expression = Some(fixed);
                m.imprecise = Some(expr.to_string());
            }
            Err(e) => m.problem = Some(format!("`{}`: {}", quote(expr), e.reason)),
        },
        Err(e) => m.problem = Some(format!("`{}`: {}", quote(expr), e.reason)),
    }
}

/// An unreadable expression as a problem quotes it: at most its first 64 characters. The
/// marker travels in citations beside text a policy may have redacted; the rest of a long
/// line is not the identifier's and must not ride along.
fn quote(expr: &str) -> std::borrow::Cow<'_, str> {
    match expr.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &expr[..i]).into(),
        None => expr.into(),
    }
}

/// Where the first `copyright` or `(c)` in any ASCII case starts in `line` (the ways a notice
/// starts but `©`, which is not ASCII). Every line of every answer is asked, so by vector
/// searches that stop rarely rather than an automaton stepping every byte (an aho-corasick
/// automaton over these patterns, four distinct first bytes in any case, gets no prefilter),
/// nor a search for their first bytes (code is full of `c` and `(`): `copyright` is found by
/// its `y` (`memchr`), `(c)` with `memmem`, which tests two of its bytes at once.
fn ascii_notice_token(line: &[u8]) -> Option<usize> {
    static PAREN_C: LazyLock<[memchr::memmem::Finder<'static>; 2]> = LazyLock::new(|| {
        [
            memchr::memmem::Finder::new("(c)"),
            memchr::memmem::Finder::new("(C)"),
        ]
    });
    let word = memchr::memchr2_iter(b'y', b'Y', line).find_map(|i| {
        let start = i.checked_sub(3)?;
        line.get(start..start + 9)
            .filter(|w| w.eq_ignore_ascii_case(b"copyright"))
            .map(|_| start)
    });
    // A `(c)` after the word cannot come first: only the part before it is searched.
    let before = word.map_or(line, |w| &line[..(w + 2).min(line.len())]);
    let sign = PAREN_C.iter().filter_map(|f| f.find(before)).min();
    [word, sign].into_iter().flatten().min()
}

/// What an identifier line or a copyright notice starts with, lower-case.
const MARKER_STARTS: [&[u8]; 3] = [b"spdx-license-identifier:", b"copyright", b"(c)"];

/// Where the first identifier tag or notice token (`copyright`, `(c)`, `©`) starts in `line`.
fn marker_token(line: &str) -> Option<usize> {
    [spdx_tag(line), marker_notice_token(line)]
        .into_iter()
        .flatten()
        .min()
}

/// Where the end of `line` could be the beginning of an identifier tag or a notice token
/// ("SPDX-Lic", "Copyr", "(c"): the start of the longest such end, in any ASCII case.
fn marker_token_begun(line: &str) -> Option<usize> {
    let b = line.as_bytes();
    MARKER_STARTS
        .iter()
        .filter_map(|t| {
            (1..t.len().min(b.len() + 1))
                .rev()
                .find(|&k| b[b.len() - k..].eq_ignore_ascii_case(&t[..k]))
        })
        .max()
        .map(|k| b.len() - k)
}

/// Where `SPDX-License-Identifier:` starts in a line, in any ASCII case (the leftmost). Found
/// by its `x`, a rare letter, with `memchr`; the reasons are [`ascii_notice_token`]'s.
fn spdx_tag(line: &str) -> Option<usize> {
    const TAG: &[u8] = b"spdx-license-identifier:";
    let b = line.as_bytes();
    memchr::memchr2_iter(b'x', b'X', b).find_map(|i| {
        let start = i.checked_sub(3)?;
        b.get(start..start + TAG.len())
            .filter(|w| w.eq_ignore_ascii_case(TAG))
            .map(|_| start)
    })
}

/// A copyright notice in a line, if there is one: "copyright", `©` or `(c)`, with a year or a
/// sign (so prose about copyright law is not a notice).
fn copyright_line(line: &str, line_start: u64) -> Option<Marker> {
    // ASCII case-insensitive matching in the line itself finds what lower-casing it would
    // (no other character lower-cases to a letter of `copyright` or to `(c)` in sequence),
    // at its place in the line even where lower-casing changes the line's length (`İ`).
    // While the line streams in, the proxy holds it from this token (`undecided_from`).
    let pos = marker_notice_token(line)?;
    copyright_fields(&line[pos..], line_start + pos as u64)
}

/// Where the first notice token (`copyright` or `(c)` in any ASCII case, or `©`) starts.
fn marker_notice_token(line: &str) -> Option<usize> {
    [
        ascii_notice_token(line.as_bytes()),
        find_copyright_sign(line.as_bytes()),
    ]
    .into_iter()
    .flatten()
    .min()
}

/// Where the first `©` (bytes C2 A9) starts: its second byte, rare in any text, found with
/// `memchr`'s vector search (`str::find` with a `char` goes through the standard library's
/// word-at-a-time search, and every line of every answer is asked).
fn find_copyright_sign(line: &[u8]) -> Option<usize> {
    memchr::memchr_iter(0xA9, line).find_map(|i| (i > 0 && line[i - 1] == 0xC2).then(|| i - 1))
}

/// The notice's fields from `from`, the line from its first marker on (at offset `start`).
fn copyright_fields(from: &str, start: u64) -> Option<Marker> {
    let mut rest = from;
    let mut sign = false;
    let mut word = false;
    loop {
        let t = rest.trim_start();
        let lower = t.to_lowercase();
        if lower.starts_with("copyright") {
            rest = &t["copyright".len()..];
            word = true;
        } else if let Some(r) = t.strip_prefix('©') {
            rest = r;
            sign = true;
        } else if lower.starts_with("(c)") {
            rest = &t[3..];
            sign = true;
        } else if let Some(r) = t.strip_prefix(':') {
            rest = r;
        } else {
            rest = t;
            break;
        }
    }
    // Years: digits, ranges, commas.
    let years_end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '-' | '–' | ',' | ' ')))
        .unwrap_or(rest.len());
    let years = rest[..years_end].trim().trim_end_matches(',').trim();
    let has_year = years.len() >= 4 && years.bytes().filter(u8::is_ascii_digit).count() >= 4;
    if !(has_year || sign && word || sign && !rest.trim().is_empty()) {
        return None;
    }
    let mut holder = rest[years_end..].trim().trim_start_matches("by ");
    for close in ["*/", "-->", "#"] {
        holder = holder.trim_end().trim_end_matches(close);
    }
    let holder = holder.trim_end_matches(|c: char| c.is_whitespace() || matches!(c, ';' | '.'));
    let holder = holder
        .split_terminator(". All rights reserved")
        .next()
        .unwrap_or(holder)
        .split_terminator(", all rights reserved")
        .next()
        .unwrap_or(holder)
        .trim();
    if holder.chars().any(|c| c.is_control() && c != '\t') {
        // Control characters are not in a notice: a `©` (bytes C2 A9) in binary data.
        return None;
    }
    let mut m = Marker::new(
        MarkerKind::Copyright,
        start,
        start + from.trim_end().len() as u64,
    );
    m.years = Some(years.to_string()).filter(|y| !y.is_empty());
    m.holder = Some(holder.to_string()).filter(|h| !h.is_empty());
    Some(m)
}

/// Finds markers in text pushed piece by piece.
#[derive(Default)]
pub struct MarkerScanner {
    /// The current line, not yet complete, and the offset of its first byte.
    line: String,
    line_start: u64,
    /// Normalised words of recent lines, joined as " w1 w2 … wn " (what the phrase automaton
    /// searches), kept up to date as words arrive so a line's search does not rebuild it;
    /// where each word starts in it, and its byte span in the text.
    joined: String,
    words: Vec<(u64, u64)>,
    word_at: Vec<usize>,
    /// Per word: whether some phrase starts with it.
    starts: Vec<bool>,
    /// Offset of `words[0]` in the word stream, and how far phrases have been searched.
    searched: usize,
    /// Phrases found whose version words have not all arrived: (family, first word, phrase end).
    pending: Vec<(Family, usize, usize)>,
    found: Vec<Marker>,
    /// Spans of recent `SPDX-License-Identifier` lines: the names inside them are not
    /// markers of their own.
    spdx_lines: Vec<(u64, u64)>,
    /// How much of the current line [`MarkerScanner::undecided_from`] has searched for an
    /// identifier tag or a notice token, and where the first one starts (offsets in `line`).
    line_searched: usize,
    line_token: Option<usize>,
    /// Phrases in the current line, for [`MarkerScanner::undecided_from`] (phrases are
    /// searched for when a line ends): how far its complete words have been read; the words
    /// read so far that begin a phrase, each with the phrase's words so far; where the first
    /// complete phrase in it starts; and, once asked, where the earliest phrase begun in the
    /// lines before it and not finished there starts.
    line_lexed: usize,
    line_begun: Vec<(u64, String)>,
    line_phrase: Option<u64>,
    line_seed: Option<Option<u64>>,
    /// Tool-call arguments: the text pushed is JSON, read through its projection (its strings
    /// decoded in place, so their lines are lines; see [`JsonProjection`]).
    json: Option<Box<(JsonProjection, String)>>,
}

impl MarkerScanner {
    pub fn new() -> MarkerScanner {
        MarkerScanner::default()
    }

    /// A scanner of tool-call arguments: JSON whose string values are read as the text they
    /// hold, at the JSON text's offsets.
    pub fn for_json() -> MarkerScanner {
        MarkerScanner {
            json: Some(Box::default()),
            ..MarkerScanner::default()
        }
    }

    pub fn push(&mut self, text: &str) {
        if let Some(mut j) = self.json.take() {
            let (projection, out) = &mut *j;
            out.clear();
            projection.push(text, out);
            self.push_text(out);
            self.json = Some(j);
        } else {
            self.push_text(text);
        }
    }

    fn push_text(&mut self, text: &str) {
        let mut rest = text;
        while let Some(i) = memchr::memchr(b'\n', rest.as_bytes()) {
            if self.line.is_empty() {
                // A whole line in `text`: read where it is, not copied.
                self.line_done(&rest[..i]);
            } else {
                self.line.push_str(&rest[..i]);
                self.end_line();
            }
            self.line_start += 1; // the newline
            rest = &rest[i + 1..];
        }
        self.line.push_str(rest);
    }

    /// The text is complete: the last line and every pending phrase are decided.
    pub fn finish(&mut self) {
        if let Some(mut j) = self.json.take() {
            let (projection, out) = &mut *j;
            out.clear();
            projection.finish(out);
            self.push_text(out);
        }
        if !self.line.is_empty() {
            self.end_line();
        }
        self.search(true);
    }

    /// Markers found so far (each reported once).
    pub fn take(&mut self) -> Vec<Marker> {
        std::mem::take(&mut self.found)
    }

    /// Where the earliest marker not reported yet could start, if one could. Markers are
    /// recognised when their line ends (phrases also wait for the words that may carry their
    /// version), so this is the earliest of: a phrase waiting for those words; in the line not
    /// finished yet, an `SPDX-License-Identifier` tag or copyright notice token, or an end
    /// that could begin one ("SPDX-Lic", "Copyr", "(c"); a license name or header phrase in
    /// it, or the start of one that its words so far begin ("the GNU General"), or one begun
    /// in the lines before that the line may go on with; and the word still being formed at
    /// its end. A proxy that holds text from here on releases nothing of a marker before it
    /// is decided.
    pub fn undecided_from(&mut self) -> Option<u64> {
        let waiting = self.pending.iter().map(|p| self.words[p.1].0).min();
        let token = self.line_hold().map(|i| self.line_start + i as u64);
        let phrase = self.line_phrase_hold();
        // JSON bytes not projected yet (an escape still being read) are undecided too.
        let unread = self.json.as_ref().and_then(|j| j.0.unwritten_from());
        [waiting, token, phrase, unread].into_iter().flatten().min()
    }

    /// The phrase part of [`MarkerScanner::undecided_from`]. The line's words are read as
    /// the scanner reads them at its end (runs of letters and digits, folded), but from the
    /// line's first character: a comment prefix (`REM`, `dnl`) or list numbering the scanner
    /// drops only adds words here, so a phrase is never missed, only a few more words held.
    /// A phrase begun in the lines before is held until this line ends, not followed into it:
    /// the scanner skips a copyright line, and a prefix or numbering can still be dropped, so
    /// which of this line's words continue it is not known before the line ends.
    fn line_phrase_hold(&mut self) -> Option<u64> {
        if self.line_seed.is_none() {
            // The earliest of the last words that the words after it so far only begin a
            // phrase from.
            let n = self.words.len();
            let seed = (n.saturating_sub(*LONGEST)..n)
                .find(|&i| PHRASE_BEGINNINGS.contains(self.words_text(i, n).trim()))
                .map(|i| self.words[i].0);
            self.line_seed = Some(seed);
        }
        let line = self.line.as_str();
        let mut scratch = String::new();
        let mut at = self.line_lexed;
        let mut forming = None;
        let phrase = &mut self.line_phrase;
        let mut complete_from = |from: u64| *phrase = Some(phrase.map_or(from, |p| p.min(from)));
        while at < line.len() {
            let rest = &line[at..];
            let Some(s) = rest.find(char::is_alphanumeric) else {
                at = line.len();
                break;
            };
            let e = rest[s..]
                .find(|c: char| !c.is_alphanumeric())
                .map(|e| s + e);
            let Some(e) = e else {
                // The word at the end may go on: read when it is complete.
                forming = Some(self.line_start + (at + s) as u64);
                at += s;
                break;
            };
            let (ws, we) = (at + s, at + e);
            at = we;
            let w = super::identify::fold_into(&line[ws..we], &mut scratch);
            let start = self.line_start + ws as u64;
            self.line_begun.retain_mut(|(from, seq)| {
                seq.push(' ');
                seq.push_str(w);
                if PHRASE_WORDS.contains(seq.as_str()) {
                    complete_from(*from);
                }
                PHRASE_BEGINNINGS.contains(seq.as_str())
            });
            if PHRASE_WORDS.contains(w) {
                complete_from(start);
            }
            if PHRASE_BEGINNINGS.contains(w) {
                self.line_begun.push((start, w.to_string()));
            }
        }
        self.line_lexed = at;
        let begun = self.line_begun.iter().map(|b| b.0).min();
        [self.line_seed.flatten(), self.line_phrase, begun, forming]
            .into_iter()
            .flatten()
            .min()
    }

    /// [`MarkerScanner::undecided_from`] in the current line: an offset in `line`. Searched
    /// only where the line has grown since the last call (with the longest tag's overlap), so
    /// a long line streamed in many pieces is not searched again from its start each time.
    fn line_hold(&mut self) -> Option<usize> {
        let line = self.line.as_str();
        if self.line_token.is_none() && self.line_searched < line.len() {
            let mut from = self
                .line_searched
                .saturating_sub(MARKER_STARTS[0].len() - 1);
            while !line.is_char_boundary(from) {
                from -= 1;
            }
            self.line_token = marker_token(&line[from..]).map(|i| from + i);
            self.line_searched = line.len();
        }
        self.line_token.or_else(|| marker_token_begun(line))
    }

    /// The buffered line is complete.
    fn end_line(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        self.line_done(&line);
        // The line's buffer is kept for the next line.
        line.clear();
        self.line = line;
    }

    fn line_done(&mut self, line: &str) {
        let start = self.line_start;
        self.line_searched = 0;
        self.line_token = None;
        self.line_lexed = 0;
        self.line_begun.clear();
        self.line_phrase = None;
        self.line_seed = None;
        if let Some(i) = spdx_tag(line) {
            let mut m = Marker::new(
                MarkerKind::SpdxIdentifier,
                start + i as u64,
                start + line.trim_end().len() as u64,
            );
            spdx_line(&mut m, &line[i + "spdx-license-identifier:".len()..]);
            if self.spdx_lines.len() >= 16 {
                self.spdx_lines.remove(0);
            }
            self.spdx_lines.push((m.start, m.end));
            self.found.push(m);
        } else if let Some(m) = copyright_line(line, start) {
            self.found.push(m);
        }
        if self.joined.is_empty() {
            self.joined.push(' ');
        }
        let (joined, word_at, starts, words) = (
            &mut self.joined,
            &mut self.word_at,
            &mut self.starts,
            &mut self.words,
        );
        let prefilter = &*FIRST_WORDS_PREFILTER;
        super::identify::for_each_word_in_line(line, true, |w, (s, e)| {
            let at = joined.len();
            word_at.push(at);
            super::identify::fold_append(w, joined);
            let w = &joined[at..];
            starts.push(prefilter.may_hold(w) && FIRST_WORDS.contains(w));
            joined.push(' ');
            words.push((start + s as u64, start + e as u64));
        });
        self.line_start = start + line.len() as u64;
        self.search(false);
    }

    /// Word `i` (of `words`).
    fn word(&self, i: usize) -> &str {
        let end = self
            .word_at
            .get(i + 1)
            .copied()
            .unwrap_or(self.joined.len());
        &self.joined[self.word_at[i]..end - 1]
    }

    /// Words `from..to` as " w_from … w_(to−1) " (a single space when empty).
    fn words_text(&self, from: usize, to: usize) -> &str {
        let at = |i: usize| self.word_at.get(i).copied().unwrap_or(self.joined.len());
        &self.joined[at(from) - 1..at(to)]
    }

    fn search(&mut self, finishing: bool) {
        // Search the words not yet searched, with an overlap of the longest phrase: a phrase
        // not searched yet ends after `searched`, so it starts at one of the last `longest`
        // words searched or later.
        let longest = *LONGEST;
        let from = self.searched.saturating_sub(longest);
        // Leftmost-longest, non-overlapping phrase matches from word `from` on, as an
        // unanchored search of " w_from … w_n " would give them, but tried only where a phrase
        // can start: the longest phrase starting at each such word (an anchored search, which
        // stops as soon as no phrase continues), skipping words a match has used. A match's
        // trailing space is the next word's leading one, so the word right after a match
        // cannot start one either.
        let mut next_free = from;
        let mut next = from;
        // The words that may start a phrase are few (none in most lines of code): found with
        // `memchr` over the flags, not by testing every word of the overlap at every line.
        while let Some(d) = memchr::memchr(1, bytemuck::cast_slice(&self.starts[next..])) {
            let first = next + d;
            next = first + 1;
            if first < next_free {
                continue;
            }
            let w = self.word(first);
            if !ONE_WORD.contains(w) {
                // A longer phrase needs the next word; without it (the last word so far), the
                // next search, whose overlap holds this word, tries again.
                if first + 1 == self.words.len() || !FIRST_TWO.contains(&(w, self.word(first + 1)))
                {
                    continue;
                }
            }
            // The space before the word: patterns are " w1 … wn ".
            let at = self.word_at[first] - 1;
            let input = aho_corasick::Input::new(&self.joined)
                .span(at..self.joined.len())
                .anchored(aho_corasick::Anchored::Yes);
            let Some(m) = AC.find(input) else { continue };
            let n = PHRASES[m.pattern().as_usize()].words.split(' ').count();
            let end = first + n;
            next_free = end + 1;
            if end <= self.searched || self.pending.iter().any(|p| p.1 == first) {
                continue; // found before, in the overlap
            }
            self.pending
                .push((PHRASES[m.pattern().as_usize()].family, first, end));
        }
        self.searched = self.words.len();
        let mut keep = Vec::new();
        for (family, first, end) in std::mem::take(&mut self.pending) {
            let n = self.words.len();
            let avail = n.saturating_sub(end);
            let lookahead = match family {
                Family::Name(id) if id.ends_with("-only") => NAME_LOOKAHEAD,
                Family::Name(_) | Family::Fixed(_) => 0,
                _ => LOOKAHEAD,
            };
            if avail < lookahead && !finishing {
                keep.push((family, first, end));
                continue;
            }
            let kind = match family {
                Family::Name(_) => MarkerKind::LicenseName,
                _ => MarkerKind::HeaderPhrase,
            };
            let mut m = Marker::new(kind, self.words[first].0, self.words[end - 1].1);
            m.expression = resolve(family, self.words_text(end, (end + lookahead).min(n)));
            if !self
                .spdx_lines
                .iter()
                .any(|&(s, e)| m.start < e && s < m.end)
            {
                self.found.push(m);
            }
        }
        self.pending = keep;
        // Forget words no phrase can still need.
        let keep_from = self
            .pending
            .iter()
            .map(|p| p.1)
            .min()
            .unwrap_or(self.words.len())
            .min(self.words.len().saturating_sub(longest));
        if keep_from > 4096 {
            self.words.drain(..keep_from);
            self.starts.drain(..keep_from);
            // Keep the joined text from the space before the first word kept.
            let cut = self
                .word_at
                .get(keep_from)
                .map_or(self.joined.len(), |&o| o - 1);
            self.joined.drain(..cut);
            self.word_at.drain(..keep_from);
            for o in &mut self.word_at {
                *o -= cut;
            }
            self.searched -= keep_from;
            for p in &mut self.pending {
                p.1 -= keep_from;
                p.2 -= keep_from;
            }
        }
    }
}

/// Every marker in a whole text.
pub fn scan(text: &str) -> Vec<Marker> {
    let mut s = MarkerScanner::new();
    s.push(text);
    s.finish();
    s.take()
}

/// Every marker in the strings of a JSON text (a tool call's arguments), at the JSON text's
/// offsets.
pub fn scan_json(text: &str) -> Vec<Marker> {
    let mut s = MarkerScanner::for_json();
    s.push(text);
    s.finish();
    s.take()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]
        /// The byte searches find what an ASCII case-insensitive aho-corasick search of the
        /// same patterns finds (the implementation they replaced), at the same place.
        #[test]
        fn tag_and_notice_searches_agree_with_aho_corasick(
            parts in proptest::collection::vec(
                prop_oneof![
                    "[a-zA-Z (),:-]{0,12}",
                    "(SPDX|spdx|SpDx)-(License|LICENSE)-(Identifier|identifiEr)(:|)",
                    "(Copyright|COPYRIGHT|copyrigh|\\(c\\)|\\(C\\)|\\(c|©|x|X)",
                    "\\PC{0,6}",
                ],
                0..8,
            ),
        ) {
            let line: String = parts.concat();
            let ci = |p: &[&str]| {
                aho_corasick::AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .build(p)
                    .expect("valid patterns")
            };
            let spdx = ci(&["spdx-license-identifier:"]).find(&line).map(|m| m.start());
            prop_assert_eq!(super::spdx_tag(&line), spdx);
            prop_assert_eq!(super::find_copyright_sign(line.as_bytes()), line.find('©'));
            if line.is_ascii() {
                let notice = aho_corasick::AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .match_kind(aho_corasick::MatchKind::LeftmostFirst)
                    .build(["copyright", "(c)"])
                    .expect("valid patterns")
                    .find(&line)
                    .map(|m| m.start());
                prop_assert_eq!(super::ascii_notice_token(line.as_bytes()), notice);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]
        /// However the text arrives, a marker not reported yet starts at or after
        /// [`super::MarkerScanner::undecided_from`] (or after the text so far): text before
        /// that offset can be released without any of a marker.
        #[test]
        fn no_unreported_marker_starts_before_the_undecided_offset(
            parts in proptest::collection::vec(
                prop_oneof![
                    "[a-zA-Z ,.:-]{0,10}",
                    "(the|this|open|public|software|license|version|or|and|under) ",
                    "(// |# |)(SPDX|spdx)-(License|LICENSE)-Identifier: (MIT|GPL-2.0-only|Apache-2.0)",
                    "(Copyright|COPYRIGHT|\\(c\\)|\\(C\\)|©) (2007|1999-2004) [A-Z][a-z]{1,8}( Inc\\.|)",
                    "(GNU|gnu) (General|Lesser General|Affero General) (Public|public)( |\n)(License|Licence)",
                    "(Licensed|licensed) under the (Apache|MIT) License(, Version 2\\.0|)",
                    "(the MIT license|GPLv2|LGPL 2\\.1|BSD 3-Clause|Mozilla Public License 2\\.0)",
                    "(either version 3|or \\(at your option\\) any later version)",
                    "\n(// |dnl |REM |1\\. |\\(a\\) |)",
                    "\nCopyright 2020 Someone\n",
                    "(İ|ß|é|日本)",
                ],
                0..14,
            ),
            cuts in proptest::collection::vec(0usize..400, 0..12),
        ) {
            let text: String = parts.concat();
            let all: Vec<(super::MarkerKind, u64)> = super::scan(&text)
                .into_iter()
                .map(|m| (m.kind, m.start))
                .collect();
            let mut cuts: Vec<usize> = cuts
                .into_iter()
                .map(|c| c.min(text.len()))
                .filter(|&c| text.is_char_boundary(c))
                .collect();
            cuts.push(text.len());
            cuts.sort_unstable();
            let mut s = super::MarkerScanner::new();
            let mut reported = Vec::new();
            let mut at = 0;
            for c in cuts {
                s.push(&text[at..c]);
                at = c;
                reported.extend(s.take().into_iter().map(|m| (m.kind, m.start)));
                let released = s.undecided_from().unwrap_or(c as u64).min(c as u64);
                for m in all.iter().filter(|m| !reported.contains(m)) {
                    prop_assert!(
                        released <= m.1,
                        "{m:?} unreported, but text up to {released} released ({:?})",
                        &text[..c]
                    );
                }
            }
        }
    }

    /// The prefilter may let words through that start no phrase, never the other way round.
    #[test]
    fn the_first_word_prefilter_holds_every_first_word() {
        let missed: Vec<_> = super::FIRST_WORDS
            .iter()
            .filter(|w| !super::FIRST_WORDS_PREFILTER.may_hold(w))
            .collect();
        assert!(missed.is_empty(), "{missed:?}");
        assert!(super::FIRST_WORDS.len() > 100, "SPDX names are among them");
        assert!(!super::FIRST_WORDS_PREFILTER.may_hold("zzzzzzzzzzzzzzzzzzzz"));
    }
}
