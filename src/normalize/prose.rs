//! Prose units: words found by Unicode word segmentation (UAX #29), each normalised with NFKC,
//! case folding and quote unification; punctuation and whitespace produce no unit. Markdown
//! markers (`*`, `_`, `#`, `>`, backticks, list bullets) are punctuation and so vanish too.
//!
//! Chunk invariance: segmentation of a buffered text is only run up to a safe cut: the start of
//! a whitespace character (not a no-break space: U+202F is ExtendNumLet) whose previous character is neither whitespace nor an Extend/Format
//! character (a mark, a format control, ZWJ/ZWNJ, an emoji modifier). UAX #29 always breaks
//! there: only WB3d (WSegSpace × WSegSpace) joins something to a following space, and WB4
//! attaches Extend/Format to what precedes them, so a space after a space, or after a mark that
//! follows a space, may still join what came before (a fuzzer found "  \u{65c}" cut between
//! the two spaces). Its look-ahead rules (WB6, WB7, WB11, WB12) need a letter or digit after
//! the position they decide, never whitespace, so every word that ends before the cut is
//! segmented exactly as it would be in the whole text.

use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

use super::{Channel, Unit};
use crate::hash::unit_hash;

/// Buffers prose until it can be segmented without depending on where chunks were cut.
/// The buffer holds only text after the last safe cut so far (no safe cut inside it): a push
/// completes it up to the first safe cut of the new text, and the rest of the new text is
/// segmented where it is, up to its last safe cut, without being copied.
#[derive(Debug, Default, Clone)]
pub(crate) struct ProseTokenizer {
    buf: String,
    /// Absolute byte offset of `buf[0]` in the stream.
    buf_start: u64,
    scratch: String,
}

/// Whether `c` may be a safe cut (see the module documentation), its previous character
/// allowing.
fn cut_char(c: char) -> bool {
    // No-break spaces are not word separators to UAX #29 (U+202F is even ExtendNumLet,
    // joining the words around it).
    c.is_whitespace() && !matches!(c, '\u{A0}' | '\u{2007}' | '\u{202F}')
}

/// The first safe cut in `text`, `prev` being the character before it (if any).
fn first_cut(text: &str, mut prev: Option<char>) -> Option<usize> {
    for (i, c) in text.char_indices() {
        if cut_char(c) && prev.is_some_and(breaks_before_space) {
            return Some(i);
        }
        prev = Some(c);
    }
    None
}

/// The last safe cut in `text` (nothing before it: a cut needs a previous character).
fn last_cut(text: &str) -> Option<usize> {
    text.char_indices()
        .rev()
        .find(|&(i, c)| {
            cut_char(c)
                && text[..i]
                    .chars()
                    .next_back()
                    .is_some_and(breaks_before_space)
        })
        .map(|(i, _)| i)
}

impl ProseTokenizer {
    /// Offset of the first byte that may still become part of a unit.
    pub(crate) fn pending_start(&self) -> Option<u64> {
        (!self.buf.is_empty()).then_some(self.buf_start)
    }

    pub(crate) fn push(&mut self, mut text: &str, mut at: u64, out: &mut Vec<Unit>) {
        if text.is_empty() {
            return;
        }
        if !self.buf.is_empty() {
            match first_cut(text, self.buf.chars().next_back()) {
                None => {
                    self.buf.push_str(text);
                    return;
                }
                Some(c) => {
                    // Everything buffered ends before this cut: segment it all.
                    self.buf.push_str(&text[..c]);
                    emit_words(&self.buf, self.buf_start, &mut self.scratch, out);
                    self.buf.clear();
                    text = &text[c..];
                    at += c as u64;
                }
            }
        }
        // Nothing buffered: segment `text` where it is, up to its last safe cut.
        let keep = match last_cut(text) {
            Some(c) => {
                emit_words(&text[..c], at, &mut self.scratch, out);
                c
            }
            None => 0,
        };
        self.buf.push_str(&text[keep..]);
        self.buf_start = at + keep as u64;
    }

    /// Emits everything buffered: the end of a prose section.
    pub(crate) fn flush(&mut self, out: &mut Vec<Unit>) {
        if !self.buf.is_empty() {
            emit_words(&self.buf, self.buf_start, &mut self.scratch, out);
            self.buf.clear();
        }
    }
}

/// Emits the words of `text`, which starts at offset `base` of the stream and ends at a safe
/// cut (or at the end of a prose section).
fn emit_words(text: &str, base: u64, scratch: &mut String, out: &mut Vec<Unit>) {
    let mut emit = |i: usize, word: &str, hash: Option<u64>| {
        if let Some(hash) = hash {
            out.push(Unit::new(
                hash,
                base + i as u64,
                base + (i + word.len()) as u64,
                Channel::Prose,
                super::UnitClass::Other,
            ));
        }
    };
    // UAX #29 always breaks after a newline and no rule looks across one, so each line
    // segments on its own: the lines with a non-ASCII character go through the general
    // segmenter, and each run of ASCII lines between them through `ascii_words` at once.
    let b = text.as_bytes();
    let mut at = 0;
    while at < b.len() {
        let (line_start, line_end) = match next_non_ascii(b, at) {
            None => (b.len(), b.len()),
            Some(p) => (
                memchr::memrchr(b'\n', &b[at..p]).map_or(at, |n| at + n + 1),
                memchr::memchr(b'\n', &b[p..]).map_or(b.len(), |n| p + n + 1),
            ),
        };
        ascii_words(&text[at..line_start], |i, w| {
            emit(at + i, w, ascii_word_hash(w.as_bytes()))
        });
        for (i, word) in text[line_start..line_end].unicode_word_indices() {
            emit(line_start + i, word, word_hash(word, scratch));
        }
        at = line_end;
    }
}

/// The first byte at or after `from` that is not ASCII, eight bytes at a time.
fn next_non_ascii(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(w) = b.get(i..i + 8) {
        let w = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        if w & 0x8080_8080_8080_8080 != 0 {
            break;
        }
        i += 8;
    }
    b[i..].iter().position(|&c| c >= 0x80).map(|p| i + p)
}

/// Whether UAX #29 always breaks between `prev` and a following whitespace character: `prev`
/// is not whitespace (WB3d joins spaces) and not Extend, Format or ZWJ (WB4 makes those take
/// the word-break property of what precedes them). The Extend/Format test is a superset of the
/// standard's sets (every combining mark, every format control), which only makes a cut less
/// often, never wrong.
fn breaks_before_space(prev: char) -> bool {
    if prev.is_ascii() {
        return !prev.is_ascii_whitespace();
    }
    !prev.is_whitespace()
        && !unicode_normalization::char::is_combining_mark(prev)
        && !matches!(prev,
            '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FF9E}'..='\u{FF9F}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{1F3FB}'..='\u{1F3FF}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
            | '\u{E0100}'..='\u{E01EF}')
}

/// UAX #29 word segmentation restricted to ASCII, giving exactly the words (and offsets)
/// `unicode_word_indices` gives on ASCII text (property-tested against it). Hand-written
/// because the general segmenter's table lookups were ~30 % of prose scanning, and on ASCII
/// the rules reduce to these: letters, digits and `_` join each other (WB5, WB8–10, WB13a/b);
/// `:` `.` `'` join two letters (WB6/7); `,` `;` `.` `'` join two digits (WB11/12); everything
/// else breaks. Words are the segments with a letter or digit.
pub(crate) fn ascii_words(s: &str, mut f: impl FnMut(usize, &str)) {
    let b = s.as_bytes();
    let class = |i: usize| b.get(i).map_or(0, |&c| CLASS[c as usize]);
    let mut i = 0;
    while i < b.len() {
        if CLASS[b[i] as usize] & WORDY == 0 {
            i += 1;
            continue;
        }
        let start = i;
        let mut alnum = false;
        loop {
            let c = class(i);
            if c & WORDY != 0 {
                alnum |= c & (ALPHA | DIGIT) != 0;
                i += 1;
                continue;
            }
            // A mid character joins only between two letters or two digits.
            let mid_letter =
                c & MID_LETTER != 0 && class(i - 1) & ALPHA != 0 && class(i + 1) & ALPHA != 0;
            let mid_num =
                c & MID_NUM != 0 && class(i - 1) & DIGIT != 0 && class(i + 1) & DIGIT != 0;
            if mid_letter || mid_num {
                i += 1;
                continue;
            }
            break;
        }
        if alnum {
            f(start, &s[start..i]);
        }
    }
}

const ALPHA: u8 = 1;
const DIGIT: u8 = 2;
const WORDY: u8 = 4; // letters, digits, `_`
const MID_LETTER: u8 = 8; // `:` `.` `'`
const MID_NUM: u8 = 16; // `,` `;` `.` `'`

/// Each ASCII byte's word-segmentation classes (one table lookup instead of several tests).
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 128 {
        let b = c as u8;
        let mut k = 0;
        if b.is_ascii_alphabetic() {
            k |= ALPHA | WORDY;
        }
        if b.is_ascii_digit() {
            k |= DIGIT | WORDY;
        }
        if b == b'_' {
            k |= WORDY;
        }
        if matches!(b, b':' | b'.' | b'\'') {
            k |= MID_LETTER;
        }
        if matches!(b, b',' | b';' | b'.' | b'\'') {
            k |= MID_NUM;
        }
        t[c] = k;
        c += 1;
    }
    t
};

/// [`word_hash`] for an ASCII word, without the general path's char-by-char folding: trim `_`
/// and `'`, lowercase into a stack buffer, hash. The same hash as [`word_hash`] (tested).
pub(crate) fn ascii_word_hash(word: &[u8]) -> Option<u64> {
    let mut s = 0;
    let mut e = word.len();
    while s < e && matches!(word[s], b'_' | b'\'') {
        s += 1;
    }
    while e > s && matches!(word[e - 1], b'_' | b'\'') {
        e -= 1;
    }
    let w = &word[s..e];
    if !w.iter().any(u8::is_ascii_alphanumeric) {
        return None;
    }
    let mut buf = [0u8; 64];
    if let Some(dst) = buf.get_mut(..w.len()) {
        for (d, c) in dst.iter_mut().zip(w) {
            *d = c.to_ascii_lowercase();
        }
        Some(unit_hash(Channel::Prose, dst))
    } else {
        Some(unit_hash(Channel::Prose, &w.to_ascii_lowercase()))
    }
}

/// The normalised form of one word, hashed; `None` if nothing alphanumeric is left.
pub(crate) fn word_hash(word: &str, scratch: &mut String) -> Option<u64> {
    scratch.clear();
    normalize_word(word, scratch);
    let trimmed = scratch.trim_matches(|c| c == '_' || c == '\'');
    if !trimmed.chars().any(char::is_alphanumeric) {
        return None;
    }
    Some(unit_hash(Channel::Prose, trimmed.as_bytes()))
}

/// NFKC, case fold, quote unification. ASCII words (the vast majority) take a fast path that
/// gives the same result as the general one.
pub fn normalize_word(word: &str, out: &mut String) {
    if word.is_ascii() {
        out.extend(word.bytes().map(|b| b.to_ascii_lowercase() as char));
        return;
    }
    for c in word.nfkc() {
        match c {
            // Apostrophes and single quotes in all their typographic forms.
            '\u{2018}' | '\u{2019}' | '\u{201B}' | '\u{2032}' | '\u{02BC}' | '\u{FF07}' => {
                out.push('\'')
            }
            // Full case folding differs from lowercasing for a few letters; these matter for
            // ALL-CAPS copies ("STRASSE" vs "straße").
            'ß' | 'ẞ' => out.push_str("ss"),
            'ς' => out.push('σ'),
            c => out.extend(c.to_lowercase()),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]
        /// The ASCII word hash equals the general one, on any ASCII word shape (long ones too).
        #[test]
        fn ascii_word_hash_equals_word_hash(w in "[a-zA-Z0-9_'.:,;]{1,80}") {
            let mut scratch = String::new();
            prop_assert_eq!(super::ascii_word_hash(w.as_bytes()), super::word_hash(&w, &mut scratch));
        }
    }
}
