//! Tool-call arguments: JSON whose string values hold what the model wrote — a file's code, a
//! document, a command. Scanned as the JSON text they are, a copied file is a run of escaped
//! lines (`fn main() {\n    println!(\"hi\");\n}`): prose words glued to `n` escapes, never a
//! code unit, so an agent that writes a GPL file through a tool was not matched against code.
//!
//! [`JsonStrings`] reads JSON as it streams and yields the decoded contents of its strings,
//! each piece with the byte range of the JSON text it came from. [`ArgsNormalizer`] feeds each
//! string value to a normaliser of its own kind (code in the language a sibling file name or
//! `language` value names, else Markdown) over the decoded text, and maps the units back to the
//! JSON text's offsets, an escape as a whole — so a finding cites, and a redaction cuts, whole
//! escapes inside one string. [`JsonProjection`] writes the decoded text over the JSON text at
//! the same offsets, for readers that need lines (the license-marker scanner).
//!
//! Arguments that do not begin (after whitespace) like JSON — `{`, `[` or `"` — are free-form
//! text (a custom tool's input) and are read as Markdown, as they are.
//!
//! Hand-written: serde_json and the streaming JSON crates parse complete values or events of
//! whole strings; none yields a string's contents as they arrive with their source offsets.
//! The reader is lenient: it never fails, whatever the model wrote (a stray quote only toggles
//! string state; an invalid escape decodes as U+FFFD).

use std::collections::VecDeque;

use super::{Lang, Normalizer, TextKind, Unit};

/// Deeper containers are read, but their keys and hints are not tracked.
const MAX_DEPTH: usize = 64;

/// What [`JsonStrings::push`] reports, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// An object (`obj`) or array begins.
    Enter { obj: bool },
    /// The innermost container ends.
    Leave,
    /// A string begins at its opening quote `at`: an object key or a value.
    Open { at: u64, key: bool },
    /// Decoded contents of the open string, from `[start, end)` of the JSON text: unescaped
    /// text as it is, or one escape (`escape`: then `text` is its one character).
    Text {
        text: &'a str,
        start: u64,
        end: u64,
        escape: bool,
    },
    /// The open string ends at its closing quote `at`.
    Close { at: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Outside,
    InString,
    /// After a backslash at `start`.
    Escape {
        start: u64,
    },
    /// `\u` at `start`, `n` hex digits read so far; `high` the surrogate before it, when
    /// this is the second half of a pair (`start` is then the first half's).
    Unicode {
        start: u64,
        n: u8,
        value: u32,
        high: Option<u32>,
    },
    /// A high surrogate `\uD8xx` ended; `seen` characters of the `\u` of its pair so far.
    Low {
        start: u64,
        high: u32,
        seen: u8,
    },
}

/// Streaming reader of the strings in a JSON text (see the module documentation).
#[derive(Debug, Clone)]
pub(crate) struct JsonStrings {
    state: State,
    /// Offset of the next byte.
    offset: u64,
    /// Open containers: (is an object, a key is expected next).
    frames: Vec<(bool, bool)>,
    /// Containers open beyond [`MAX_DEPTH`].
    untracked: usize,
}

impl Default for JsonStrings {
    fn default() -> Self {
        JsonStrings {
            state: State::Outside,
            offset: 0,
            frames: Vec::new(),
            untracked: 0,
        }
    }
}

fn hex(c: u8) -> Option<u32> {
    (c as char).to_digit(16)
}

impl JsonStrings {
    /// The offset before which every byte has been reported: the start of an escape still
    /// being read, else everything pushed.
    pub(crate) fn decided(&self) -> u64 {
        match self.state {
            State::Escape { start } | State::Unicode { start, .. } | State::Low { start, .. } => {
                start
            }
            State::Outside | State::InString => self.offset,
        }
    }

    pub(crate) fn in_string(&self) -> bool {
        self.state != State::Outside
    }

    pub(crate) fn push(&mut self, text: &str, f: &mut impl FnMut(Piece<'_>)) {
        let b = text.as_bytes();
        let base = self.offset;
        let mut i = 0;
        let mut buf = [0u8; 4];
        while i < b.len() {
            let at = base + i as u64;
            match self.state {
                State::Outside => {
                    match b[i] {
                        b'"' => {
                            let key = self.frames.last().is_some_and(|&(o, k)| o && k)
                                && self.untracked == 0;
                            self.state = State::InString;
                            f(Piece::Open { at, key });
                        }
                        c @ (b'{' | b'[') => {
                            if self.frames.len() < MAX_DEPTH && self.untracked == 0 {
                                self.frames.push((c == b'{', c == b'{'));
                                f(Piece::Enter { obj: c == b'{' });
                            } else {
                                self.untracked += 1;
                            }
                        }
                        b'}' | b']' => {
                            if self.untracked > 0 {
                                self.untracked -= 1;
                            } else if self.frames.pop().is_some() {
                                f(Piece::Leave);
                            }
                        }
                        b':' => self.expect_key(false),
                        b',' => {
                            if let Some(&(true, _)) = self.frames.last() {
                                self.expect_key(true);
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                State::InString => {
                    let n = memchr::memchr2(b'"', b'\\', &b[i..]).unwrap_or(b.len() - i);
                    if n > 0 {
                        f(Piece::Text {
                            text: &text[i..i + n],
                            start: at,
                            end: at + n as u64,
                            escape: false,
                        });
                        i += n;
                        continue;
                    }
                    if b[i] == b'"' {
                        self.state = State::Outside;
                        if self.untracked == 0 {
                            self.expect_key(false);
                        }
                        f(Piece::Close { at });
                    } else {
                        self.state = State::Escape { start: at };
                    }
                    i += 1;
                }
                State::Escape { start } => {
                    let c = b[i];
                    if c == b'u' {
                        self.state = State::Unicode {
                            start,
                            n: 0,
                            value: 0,
                            high: None,
                        };
                        i += 1;
                        continue;
                    }
                    let decoded = match c {
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'"' | b'\\' | b'/' => c as char,
                        _ => '\u{FFFD}',
                    };
                    if !c.is_ascii() {
                        // Not an escape: the backslash alone is invalid; the character is
                        // read again as string text.
                        self.state = State::InString;
                        self.text(decoded, start, at, f, &mut buf);
                        continue;
                    }
                    self.state = State::InString;
                    self.text(decoded, start, at + 1, f, &mut buf);
                    i += 1;
                }
                State::Unicode {
                    start,
                    n,
                    value,
                    high,
                } => {
                    let Some(d) = hex(b[i]) else {
                        // Not four hex digits: what was read is one invalid escape.
                        self.state = State::InString;
                        self.text('\u{FFFD}', start, at, f, &mut buf);
                        continue;
                    };
                    let value = value << 4 | d;
                    i += 1;
                    if n < 3 {
                        self.state = State::Unicode {
                            start,
                            n: n + 1,
                            value,
                            high,
                        };
                        continue;
                    }
                    let end = base + i as u64;
                    match (high, value) {
                        (None, 0xD800..=0xDBFF) => {
                            self.state = State::Low {
                                start,
                                high: value,
                                seen: 0,
                            };
                        }
                        (Some(h), 0xDC00..=0xDFFF) => {
                            let c = 0x10000 + ((h - 0xD800) << 10) + (value - 0xDC00);
                            self.state = State::InString;
                            let c = char::from_u32(c).unwrap_or('\u{FFFD}');
                            self.text(c, start, end, f, &mut buf);
                        }
                        (Some(_), _) => {
                            self.state = State::InString;
                            self.text('\u{FFFD}', start, end, f, &mut buf);
                        }
                        (None, v) => {
                            self.state = State::InString;
                            let c = char::from_u32(v).unwrap_or('\u{FFFD}');
                            self.text(c, start, end, f, &mut buf);
                        }
                    }
                }
                State::Low { start, high, seen } => {
                    let want = if seen == 0 { b'\\' } else { b'u' };
                    if b[i] != want {
                        // A lone high surrogate: invalid, and what follows is read again.
                        self.state = State::InString;
                        let end = at - u64::from(seen);
                        self.text('\u{FFFD}', start, end, f, &mut buf);
                        if seen == 1 {
                            self.state = State::Escape { start: end };
                        }
                        continue;
                    }
                    i += 1;
                    self.state = if seen == 0 {
                        State::Low {
                            start,
                            high,
                            seen: 1,
                        }
                    } else {
                        State::Unicode {
                            start,
                            n: 0,
                            value: 0,
                            high: Some(high),
                        }
                    };
                }
            }
        }
        self.offset = base + b.len() as u64;
    }

    /// The text ended: a string or escape still open ends with it.
    pub(crate) fn finish(&mut self, f: &mut impl FnMut(Piece<'_>)) {
        let mut buf = [0u8; 4];
        match self.state {
            State::Escape { start } | State::Unicode { start, .. } | State::Low { start, .. } => {
                self.state = State::InString;
                self.text('\u{FFFD}', start, self.offset, f, &mut buf);
            }
            State::Outside | State::InString => {}
        }
        if self.state == State::InString {
            self.state = State::Outside;
            f(Piece::Close { at: self.offset });
        }
    }

    fn expect_key(&mut self, k: bool) {
        if let Some(top) = self.frames.last_mut() {
            top.1 = top.0 && k;
        }
    }

    fn text(
        &self,
        c: char,
        start: u64,
        end: u64,
        f: &mut impl FnMut(Piece<'_>),
        buf: &mut [u8; 4],
    ) {
        f(Piece::Text {
            text: c.encode_utf8(buf),
            start,
            end,
            escape: true,
        });
    }
}

/// Whether arguments beginning with `c` (their first character that is not whitespace) are
/// JSON; if not, they are free-form text.
fn begins_json(c: char) -> bool {
    matches!(c, '{' | '[' | '"')
}

/// Whether `text` reads as JSON arguments: its first character that is not whitespace is
/// `{`, `[` or `"` (else they are free-form text); an empty or all-whitespace text does not.
pub fn is_json_arguments(text: &str) -> bool {
    text.trim_start().chars().next().is_some_and(begins_json)
}

/// What arguments turned out to be, once their first character that is not whitespace came.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// Only whitespace so far (kept, to be read as whichever it turns out to be).
    Undecided(String),
    Json,
    /// Free-form: read as it is.
    Raw,
}

impl Default for Shape {
    fn default() -> Self {
        Shape::Undecided(String::new())
    }
}

/// A piece of decoded text and where it came from: `dec` is its offset in the decoded text,
/// `orig` in the JSON text; an escape (`esc` > 0: its length in the JSON text) maps as a whole.
#[derive(Debug, Clone, Copy)]
struct Seg {
    dec: u64,
    orig: u64,
    esc: u8,
}

/// The longest key or hint value that is read (longer ones are neither).
const MAX_NOTE: usize = 256;

/// The keys and short values of a JSON text as its pieces arrive — what a value's kind is told
/// from: its key, and a sibling file name or language. Shared by the streaming reader and the
/// whole-text search ([`tool_args_hint`]), so the two read them alike.
#[derive(Debug, Default)]
struct Notes {
    /// Per open container, its last key (an array: the key it stands under, whose values its
    /// values are read as).
    keys: Vec<String>,
    /// The open string's text while it may be a key or a hint: at most [`MAX_NOTE`] bytes, one
    /// line.
    note: Option<String>,
    in_key: bool,
}

impl Notes {
    /// Follows `p`; when a value closes, its text if it is short enough to be a hint.
    fn follow(&mut self, p: &Piece<'_>) -> Option<String> {
        match *p {
            Piece::Enter { obj } => {
                let key = match (obj, self.keys.last()) {
                    (false, Some(k)) => k.clone(),
                    _ => String::new(),
                };
                self.keys.push(key);
            }
            Piece::Leave => {
                self.keys.pop();
            }
            Piece::Open { key, .. } => (self.note, self.in_key) = (Some(String::new()), key),
            Piece::Text { text, .. } => {
                if let Some(n) = &mut self.note {
                    if n.len() + text.len() > MAX_NOTE || text.contains('\n') {
                        self.note = None;
                    } else {
                        n.push_str(text);
                    }
                }
            }
            Piece::Close { .. } => {
                let n = self.note.take()?;
                if !self.in_key {
                    return Some(n);
                }
                if let Some(k) = self.keys.last_mut() {
                    *k = n;
                }
            }
        }
        None
    }

    /// The key the innermost container's next value stands under.
    fn key(&self) -> &str {
        self.keys.last().map_or("", String::as_str)
    }
}

/// Normaliser of tool-call arguments (see the module documentation): each string value is
/// normalised as its own text, of the kind a sibling says; units carry offsets of the JSON.
pub(crate) struct ArgsNormalizer {
    shape: Shape,
    json: JsonStrings,
    /// Normalises the decoded text of the current value (its offsets count decoded bytes).
    inner: Box<Normalizer>,
    /// The open string is a value (fed to `inner`), not a key.
    in_value: bool,
    /// Decoded → JSON offsets, from the segment holding `inner`'s pending start on.
    map: VecDeque<Seg>,
    /// The open value's text decoded and not yet fed to `inner` (see [`ArgsNormalizer::flush`]).
    decoded: String,
    /// The open value's kind is not decided yet: what it is if its first lines do not say.
    sniff: Option<TextKind>,
    /// Per open container: the kind its string values are read as, once a sibling value said
    /// (a file name, a language).
    hints: Vec<Option<TextKind>>,
    notes: Notes,
    /// The kind of values no sibling or key names, when known before reading (see
    /// [`tool_args_hint`]).
    default_hint: Option<TextKind>,
    scratch: Vec<Unit>,
}

/// Keys whose values are code even when no sibling names a file or a language (code
/// interpreters, `run_code`-style tools). Their language is unknown: C-like conventions.
const CODE_KEYS: &[&str] = &[
    "code",
    "source",
    "source_code",
    "sourcecode",
    "script",
    "program",
    "snippet",
];

/// Keys whose values name a language.
const LANGUAGE_KEYS: &[&str] = &["language", "lang", "programming_language"];

impl ArgsNormalizer {
    pub(crate) fn new() -> Self {
        ArgsNormalizer {
            shape: Shape::default(),
            json: JsonStrings::default(),
            inner: Box::new(Normalizer::new(TextKind::Markdown)),
            in_value: false,
            map: VecDeque::new(),
            decoded: String::new(),
            sniff: None,
            hints: Vec::new(),
            notes: Notes::default(),
            default_hint: None,
            scratch: Vec::new(),
        }
    }

    /// Reads values no sibling or key names as `kind` (see [`tool_args_hint`]).
    pub(crate) fn set_default_hint(&mut self, kind: TextKind) {
        self.default_hint = Some(kind);
    }

    pub(crate) fn push(&mut self, text: &str, out: &mut Vec<Unit>) {
        if let Shape::Undecided(lead) = &mut self.shape {
            let Some(c) = text.trim_start().chars().next() else {
                lead.push_str(text);
                return;
            };
            let lead = std::mem::take(lead);
            if begins_json(c) {
                self.shape = Shape::Json;
                self.push_json(&lead, out);
            } else {
                // Free-form: `inner` reads it all, from offset 0 (so no map: offsets are the
                // text's own).
                self.shape = Shape::Raw;
                self.inner.restart(TextKind::Markdown);
                self.inner.push_str(&lead, out);
            }
        }
        match self.shape {
            Shape::Raw => self.inner.push_str(text, out),
            _ => self.push_json(text, out),
        }
    }

    fn push_json(&mut self, text: &str, out: &mut Vec<Unit>) {
        let mut json = std::mem::take(&mut self.json);
        json.push(text, &mut |p| self.piece(p, out));
        self.json = json;
        self.flush(out, false);
        self.prune();
    }

    /// Feeds the value's text decoded since the last flush to `inner`, in one piece (an
    /// escape every line would otherwise make two pushes a line). A value whose kind no
    /// sibling or key named waits until its first lines are in (or it ends, `closing`), which
    /// decide it.
    fn flush(&mut self, out: &mut Vec<Unit>, closing: bool) {
        if let Some(fallback) = self.sniff {
            let window = match sniff_window(&self.decoded) {
                Some(w) => w,
                None if closing => &self.decoded,
                None => return,
            };
            let kind = sniff(window).unwrap_or(fallback);
            self.inner.restart(kind);
            self.sniff = None;
        }
        if !self.decoded.is_empty() {
            self.inner.push_str(&self.decoded, &mut self.scratch);
            self.decoded.clear();
            self.emit(out);
        }
    }

    pub(crate) fn finish(&mut self, out: &mut Vec<Unit>) {
        match self.shape {
            Shape::Raw => return self.inner.finish(out),
            Shape::Undecided(_) => return,
            Shape::Json => {}
        }
        let mut json = std::mem::take(&mut self.json);
        json.finish(&mut |p| self.piece(p, out));
        self.json = json;
        self.map.clear();
    }

    /// See [`Normalizer::pending_start`].
    pub(crate) fn pending_start(&self) -> u64 {
        match self.shape {
            Shape::Raw => return self.inner.pending_start(),
            Shape::Undecided(_) => return 0,
            Shape::Json => {}
        }
        let decided = self.json.decided();
        if !self.in_value || !self.json.in_string() {
            return decided;
        }
        let mut p = decided;
        let ip = self.inner.pending_start();
        if ip < self.inner.offset() {
            p = p.min(map_start(&self.map, ip));
        }
        if !self.decoded.is_empty() {
            // Text waiting for its value's kind to be decided.
            p = p.min(map_start(&self.map, self.inner.offset()));
        }
        p
    }

    fn piece(&mut self, p: Piece<'_>, out: &mut Vec<Unit>) {
        let closed_value = self.notes.follow(&p);
        match p {
            Piece::Enter { .. } => {
                let parent = self.hints.last().copied().flatten();
                self.hints.push(parent);
            }
            Piece::Leave => {
                self.hints.pop();
            }
            Piece::Open { key, .. } => {
                self.in_value = !key;
                if !key {
                    match self.value_kind() {
                        (kind, true) => {
                            self.inner.restart(kind);
                            self.sniff = None;
                        }
                        // No name for it: its first lines decide (see `sniff_window`).
                        (fallback, false) => self.sniff = Some(fallback),
                    }
                }
            }
            Piece::Text {
                text,
                start,
                end,
                escape,
            } => {
                if !self.in_value {
                    return;
                }
                let dec = self.inner.offset() + self.decoded.len() as u64;
                let contiguous = self
                    .map
                    .back()
                    .is_some_and(|s| !escape && s.esc == 0 && s.orig + (dec - s.dec) == start);
                if !contiguous {
                    let esc = if escape { (end - start) as u8 } else { 0 };
                    self.map.push_back(Seg {
                        dec,
                        orig: start,
                        esc,
                    });
                }
                self.decoded.push_str(text);
            }
            Piece::Close { .. } => {
                if self.in_value {
                    self.flush(out, true);
                    self.inner.finish(&mut self.scratch);
                    self.emit(out);
                    self.in_value = false;
                }
                // A value that names a file (`src/main.rs`) or a language sets how the values
                // after it in its container (and inside them) are read.
                let hint = closed_value.and_then(|v| hint_of(self.notes.key(), &v));
                if let (Some(h), Some(slot)) = (hint, self.hints.last_mut()) {
                    *slot = Some(h);
                }
            }
        }
    }

    /// The kind the value about to begin is read as, and whether a sibling or the whole
    /// arguments named it (if not, it is what its first lines say, else this).
    fn value_kind(&self) -> (TextKind, bool) {
        let named = self.hints.last().copied().flatten().or(self.default_hint);
        if let Some(k) = named {
            return (k, true);
        }
        if CODE_KEYS.contains(&self.notes.key().to_ascii_lowercase().as_str()) {
            (TextKind::Code(Lang::C_LIKE), false)
        } else {
            (TextKind::Markdown, false)
        }
    }

    /// Moves the units `inner` produced to `out`, in the JSON text's offsets. Units come in
    /// order, so the segments are walked once (a search per unit over the thousands of
    /// segments a 64 KiB push of code leaves costs more than the normalising: measured).
    fn emit(&mut self, out: &mut Vec<Unit>) {
        // As a slice: indexing a `VecDeque` wraps every index, and this walk indexes the
        // segments several times per unit (rarely a copy: `prune` pops from the front).
        let map: &[Seg] = self.map.make_contiguous();
        let mut i = 0;
        for mut u in self.scratch.drain(..) {
            if i >= map.len() || map[i].dec > u.start {
                i = map.partition_point(|s| s.dec <= u.start).saturating_sub(1);
            }
            while i + 1 < map.len() && map[i + 1].dec <= u.start {
                i += 1;
            }
            let mut j = i;
            let dec_end = u.end();
            while j + 1 < map.len() && map[j + 1].dec < dec_end {
                j += 1;
            }
            // An escape maps as a whole: a unit starting at one starts at its backslash, one
            // ending at one ends after it.
            if let (Some(a), Some(b)) = (map.get(i), map.get(j)) {
                let start = if a.esc > 0 {
                    a.orig
                } else {
                    a.orig + (u.start - a.dec)
                };
                let end = if b.esc > 0 {
                    b.orig + u64::from(b.esc)
                } else {
                    b.orig + (dec_end - b.dec)
                };
                u = Unit::new(u.hash, start, end, u.channel, u.class);
            }
            out.push(u);
        }
    }

    /// Drops the segments no unit still to come can start in.
    fn prune(&mut self) {
        let keep_from = if self.in_value && self.json.in_string() {
            self.inner.pending_start()
        } else {
            self.inner.offset()
        };
        while self.map.len() > 1 && self.map[1].dec <= keep_from {
            self.map.pop_front();
        }
    }
}

/// The most of a value its kind is told from.
const SNIFF_BYTES: usize = 1024;

/// How much of a value its kind is told from: up to the end of its third line that is neither
/// blank nor a comment (a file's license header says nothing of its language), at most
/// [`SNIFF_BYTES`] (`None` until that much has come). A fixed prefix, so the decision does not
/// depend on where the text was cut.
fn sniff_window(text: &str) -> Option<&str> {
    let mut lines = 0;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') || at + line.len() > SNIFF_BYTES {
            break;
        }
        at += line.len();
        let t = line.trim();
        let comment = ["//", "/*", "*", "--", ";", "\"\"\"", "\'\'\'"]
            .iter()
            .any(|c| t.starts_with(c))
            || (t.starts_with('#')
                && !["#!", "#[", "#include", "#define", "#import"]
                    .iter()
                    .any(|c| t.starts_with(c)));
        if !t.is_empty() && !comment {
            lines += 1;
            if lines == 3 {
                return Some(&text[..at]);
            }
        }
    }
    if text.len() < SNIFF_BYTES {
        return None;
    }
    let mut end = SNIFF_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(&text[..end])
}

/// The code a value's first lines show, when no file name or language names it: a `#!` line,
/// or lines that begin as only one family's do (`def `, `fn `, `func `, `#include` …). `None`
/// when nothing says (prose, or too little to tell). Python and shell read as
/// [`Lang::SCRIPT`], Rust, C, C++, Java and C# as [`Lang::C_LIKE`], Go and JavaScript as theirs.
fn sniff(text: &str) -> Option<TextKind> {
    let code = |name: &str| Lang::from_name(name).map(TextKind::Code);
    // Scores: script (Python, shell), C-like, Go, JavaScript.
    let mut score = [0u32; 4];
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(bang) = t.strip_prefix("#!") {
            return if bang.contains("node") {
                code("js")
            } else {
                Some(TextKind::Code(Lang::SCRIPT))
            };
        }
        let starts = |ps: &[&str]| ps.iter().any(|p| t.starts_with(p));
        let end = t.trim_end();
        if starts(&["def ", "async def ", "elif ", "print(", "if __name__"])
            || (starts(&["class "]) && end.ends_with(':'))
            || (starts(&["from "]) && t.contains(" import "))
            || (starts(&["import "]) && !end.ends_with(';') && !t.contains(" from "))
        {
            score[0] += 1;
        }
        if starts(&[
            "fn ",
            "pub ",
            "impl ",
            "mod ",
            "#[",
            "#![",
            "let mut ",
            "struct ",
            "enum ",
            "#include",
            "#define",
            "int main",
            "using namespace",
            "namespace ",
            "public class ",
        ]) || (starts(&["use ", "import "]) && end.ends_with(';') && !t.contains(" from "))
        {
            score[1] += 1;
        }
        if starts(&["package ", "func "]) {
            score[2] += 1;
        }
        if starts(&[
            "const ",
            "function ",
            "export ",
            "module.exports",
            "require(",
        ]) || (starts(&["let "]) && !starts(&["let mut "]))
            || (starts(&["import "]) && (t.contains(" from ") || t.starts_with("import {")))
        {
            score[3] += 1;
        }
    }
    let (best, &n) = score
        .iter()
        .enumerate()
        .max_by_key(|&(i, n)| (*n, usize::MAX - i))?;
    if n == 0 {
        return None;
    }
    match best {
        0 => Some(TextKind::Code(Lang::SCRIPT)),
        1 => Some(TextKind::Code(Lang::C_LIKE)),
        2 => code("go"),
        _ => code("js"),
    }
}

/// The lexical family one line shows by how it begins (see `sniff`), for a Markdown text's
/// code outside fences (`BareCode`).
pub(super) fn sniff_line(line: &str) -> Option<Lang> {
    match sniff(line)? {
        TextKind::Code(l) => Some(l),
        _ => None,
    }
}

/// The code a code-completion request's prompt is in, from the lines of its last 4 KiB (what
/// the completion continues), as a tool-call value's first lines are read (`#!`, `def `, `fn `,
/// `#include` …); `None` when they show no code.
pub fn prompt_code_kind(prompt: &str) -> Option<TextKind> {
    let mut from = prompt.len().saturating_sub(4096);
    while !prompt.is_char_boundary(from) {
        from += 1;
    }
    sniff(&prompt[from..])
}

/// How a request's tool result or earlier tool call's arguments are read for the caller-supplied
/// exemption, besides as Markdown as every text is (see
/// [`crate::matcher::exemptions_read`]): JSON as tool-call arguments; other text as the code
/// its first lines show, or, when they show nothing, as code of both common lexical families
/// (C-like and script) — a file an agent read arrives as plain text, which Markdown reads as
/// prose, and the agent writing it back must not be taken for the model reciting it.
pub fn tool_text_kinds(text: &str) -> Vec<TextKind> {
    if is_json_arguments(text) {
        return vec![TextKind::ToolArgs];
    }
    match sniff(sniff_window(text).unwrap_or(text)) {
        Some(k) => vec![k],
        None => vec![TextKind::Code(Lang::C_LIKE), TextKind::Code(Lang::SCRIPT)],
    }
}

/// The kind a string value under `key` says the values beside it are: a file name with a
/// known extension (`src/main.rs`), or a language under a `language`-like key.
fn hint_of(key: &str, value: &str) -> Option<TextKind> {
    let v = value.trim();
    let key = key.to_ascii_lowercase();
    if LANGUAGE_KEYS.contains(&key.as_str()) {
        return match v.to_ascii_lowercase().as_str() {
            "markdown" | "md" => Some(TextKind::Markdown),
            l => Lang::from_name(l).map(TextKind::Code),
        };
    }
    // A file name: its last component has no space (a sentence ending in "3.c" is not one).
    let name = v.rsplit(['/', '\\']).next()?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    match TextKind::from_path(std::path::Path::new(v)) {
        // A name without a known extension (`v1.2`, `notes.txt`) says nothing.
        TextKind::Prose => None,
        k => Some(k),
    }
}

/// The first kind a value of whole tool-call arguments names (a file name, a language; see
/// [`TextKind::ToolArgs`]), wherever it stands: for arguments that are complete before they
/// are read (a whole response; arguments re-serialised with sorted keys put `content` before
/// `path`). A stream cannot wait for it.
pub fn tool_args_hint(text: &str) -> Option<TextKind> {
    if !is_json_arguments(text) {
        return None;
    }
    let mut json = JsonStrings::default();
    let mut notes = Notes::default();
    let mut found = None;
    let mut f = |p: Piece<'_>| {
        if found.is_none()
            && let Some(v) = notes.follow(&p)
        {
            found = hint_of(notes.key(), &v);
        }
    };
    json.push(text, &mut f);
    json.finish(&mut f);
    found
}

/// Where the decoded offset `dec` (a character's start) lies in the JSON text.
fn map_start(map: &VecDeque<Seg>, dec: u64) -> u64 {
    let i = map.partition_point(|s| s.dec <= dec);
    match i.checked_sub(1).map(|i| map[i]) {
        Some(s) if s.esc > 0 => s.orig,
        Some(s) => s.orig + (dec - s.dec),
        None => dec,
    }
}

/// The decoded text of a JSON text written over it at the same offsets, as it streams: string
/// contents as they are, an escape as its character preceded by spaces to the escape's length,
/// each string's opening quote a newline (so the lines of one value never run into another's),
/// everything else a space. What a line-oriented reader of a tool call's arguments reads.
#[derive(Debug, Clone, Default)]
pub struct JsonProjection {
    /// Whitespace before the first other character is written as it is, whatever the shape.
    shape: Shape,
    json: JsonStrings,
    /// Bytes written so far.
    written: u64,
}

impl JsonProjection {
    pub fn new() -> Self {
        JsonProjection::default()
    }

    /// Where the bytes pushed but not written yet start (an escape still being read is
    /// written when it is complete), if there are any.
    pub fn unwritten_from(&self) -> Option<u64> {
        (self.shape == Shape::Json && self.written < self.json.offset).then_some(self.written)
    }

    /// Appends the projection of `text`, the next piece of the JSON text, to `out`.
    pub fn push(&mut self, text: &str, out: &mut String) {
        if let Shape::Undecided(lead) = &mut self.shape {
            let Some(c) = text.trim_start().chars().next() else {
                out.push_str(text);
                lead.push_str(text);
                self.written += text.len() as u64;
                return;
            };
            let lead = std::mem::take(lead);
            if begins_json(c) {
                self.shape = Shape::Json;
                // Whitespace: nothing to write (it is written already).
                self.json.push(&lead, &mut |_| {});
            } else {
                self.shape = Shape::Raw;
            }
        }
        if self.shape == Shape::Raw {
            out.push_str(text);
            self.written += text.len() as u64;
            return;
        }
        let mut json = std::mem::take(&mut self.json);
        json.push(text, &mut |p| self.piece(p, out));
        let to = json.decided();
        self.json = json;
        self.pad(to, out);
    }

    /// The text ended: an escape still open is written as spaces.
    pub fn finish(&mut self, out: &mut String) {
        if self.shape != Shape::Json {
            return;
        }
        let mut json = std::mem::take(&mut self.json);
        json.finish(&mut |p| self.piece(p, out));
        let to = json.decided();
        self.json = json;
        self.pad(to, out);
    }

    fn pad(&mut self, to: u64, out: &mut String) {
        if to > self.written {
            out.extend(std::iter::repeat_n(' ', (to - self.written) as usize));
            self.written = to;
        }
    }

    fn piece(&mut self, p: Piece<'_>, out: &mut String) {
        match p {
            Piece::Open { at, .. } => {
                self.pad(at, out);
                out.push('\n');
                self.written = at + 1;
            }
            Piece::Text {
                text, start, end, ..
            } => {
                if text.len() as u64 > end - start {
                    // An invalid escape shorter than U+FFFD: spaces.
                    self.pad(end, out);
                } else {
                    self.pad(end - text.len() as u64, out);
                    out.push_str(text);
                    self.written = end;
                }
            }
            Piece::Close { .. } | Piece::Enter { .. } | Piece::Leave => {}
        }
    }
}

/// The parts of `[start, end)` of a JSON text that lie in the contents of string values (not
/// keys), each widened to whole escapes: where a cut leaves valid JSON of the same shape.
/// Free-form arguments ([`is_json_arguments`] false) are cut as they are: `[start, end)`.
pub fn string_contents_within(text: &str, start: u64, end: u64) -> Vec<(u64, u64)> {
    if !is_json_arguments(text) {
        return vec![(start, end)];
    }
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut json = JsonStrings::default();
    // Whether the last range is in the string still open (a piece right after it extends it),
    // and whether that string is a value.
    let mut open = false;
    let mut value = false;
    let mut f = |p: Piece<'_>| match p {
        Piece::Text {
            start: a,
            end: b,
            escape,
            ..
        } if value && a < end && b > start => {
            let (a, b) = if escape {
                (a, b)
            } else {
                (a.max(start), b.min(end))
            };
            match ranges.last_mut() {
                Some(r) if open && r.1 == a => r.1 = b,
                _ => ranges.push((a, b)),
            }
            open = true;
        }
        Piece::Open { key, .. } => (open, value) = (false, !key),
        Piece::Close { .. } => open = false,
        _ => {}
    };
    json.push(text, &mut f);
    json.finish(&mut f);
    ranges
}

/// `s` written as the contents of a JSON string (escaped, without the quotes).
pub fn escape_contents(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted
        .get(1..quoted.len().saturating_sub(1))
        .unwrap_or("")
        .to_string()
}
