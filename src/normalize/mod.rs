//! Normalisation: text in, *units* out, each unit carrying its byte range in the original
//! stream so a finding can be cited, redacted or blocked exactly.
//!
//! One normaliser serves index build and scan, so they cannot disagree. It is incremental and
//! gives the same units whatever way the input is chunked: split inside words, inside UTF-8
//! sequences, one byte at a time (`tests/normalize.rs` replays every case at every split).
//!
//! What it owns: UTF-8 decoding of byte chunks (invalid bytes act as whitespace, keeping offsets
//! exact), markdown fence detection (fenced blocks are code in the fence's language), prose
//! words (`prose.rs`) and code tokens (`code.rs`). What it does not own: which units matter — that
//! is the index and the matcher.

mod code;
mod json;
mod lang;
mod prose;

pub use json::{
    JsonProjection, escape_contents, is_json_arguments, prompt_code_kind, string_contents_within,
    tool_args_hint, tool_text_kinds,
};
pub use lang::{Lang, TextKind};

pub use prose::normalize_word;

use code::CodeLexer;
use prose::ProseTokenizer;

/// Which normalisation produced a unit. Prose and code hash apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Prose,
    Code,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Prose => "prose",
            Channel::Code => "code",
        }
    }
}

/// What a unit is, for the rename-insensitive channel: identifiers and literals may differ
/// between a copy and its source (consistently, for identifiers); everything else must be equal.
/// Stored as one byte per unit in the index (`classes.bin`), so the values are part of the
/// index format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum UnitClass {
    /// A prose word, punctuation, an operator or a language keyword.
    #[default]
    Other = 0,
    /// A code identifier that is not a keyword of a common language.
    Ident = 1,
    /// A numeric literal.
    Number = 2,
    /// A string or character literal.
    Str = 3,
}

impl UnitClass {
    pub fn from_u8(b: u8) -> UnitClass {
        match b {
            1 => UnitClass::Ident,
            2 => UnitClass::Number,
            3 => UnitClass::Str,
            _ => UnitClass::Other,
        }
    }
}

/// One normalised unit: a prose word or a code token. 24 bytes: a scanner keeps the last 256
/// of every open stream (6 KB; 8 KB when the end was a `u64` of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// Hash of the normalised text (see [`crate::hash::unit_hash`]).
    pub hash: u64,
    /// Byte range in the original stream: `start..start + len` ([`Unit::end`]).
    pub start: u64,
    pub len: u32,
    pub channel: Channel,
    pub class: UnitClass,
}

// Kept at 24 bytes (see above).
const _: () = assert!(std::mem::size_of::<Unit>() == 24);

impl Unit {
    /// The unit at `start..end` (a unit longer than 4 GiB, which no limit of the proxy lets
    /// through, would be cut to that).
    #[inline]
    pub fn new(hash: u64, start: u64, end: u64, channel: Channel, class: UnitClass) -> Unit {
        Unit {
            hash,
            start,
            len: u32::try_from(end - start).unwrap_or(u32::MAX),
            channel,
            class,
        }
    }

    /// End of the unit's byte range in the original stream.
    #[inline]
    pub fn end(&self) -> u64 {
        self.start + u64::from(self.len)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fence {
    ch: char,
    count: usize,
    /// The info string named a language with block comments (`rust`, `c`, `js` …): inside
    /// one of its block comments a fence line is comment text, not the end of the block.
    /// Doc comments hold Markdown examples (`/** … ```rust … ``` … */`), and a model copying
    /// such a file inside a three-backtick fence does not lengthen its fence; a Markdown
    /// renderer would end the block there, but the text that follows is still the file's
    /// code, and lexed as prose it could not match the file. Not for an unnamed or unknown
    /// language: there `/*` may be a shell glob that never closes. The price, accepted: in a
    /// block of a named C-like language, a `/*` that is never closed keeps the block open
    /// past its closing fence (the text after it is lexed as code, the same way at index
    /// build and at scan, so only a copy of that text alone is missed).
    comments_hide_fences: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Prose,
    /// Code; `fence` is the opening fence when inside a markdown block.
    Code {
        fence: Option<Fence>,
    },
    /// After an opening fence, reading its info string up to the end of the line.
    FenceInfo {
        fence: Fence,
        info: String,
    },
}

/// What the start of a line turned out to be.
enum LineStart {
    Undecided,
    NotFence,
    Open(Fence),
    Close,
}

/// Incremental normaliser for one stream or document.
pub struct Normalizer {
    kind: TextKind,
    mode: Mode,
    /// Bytes decoded so far (absolute offset of the next byte after `carry`'s start).
    offset: u64,
    /// An incomplete UTF-8 sequence at the end of the last byte chunk.
    carry: Vec<u8>,
    /// Markdown only: characters at the start of a line held until we know whether they open
    /// or close a fence (at most 3 spaces, the fence characters and trailing spaces).
    at_line_start: bool,
    prefix: String,
    prefix_start: u64,
    prose: ProseTokenizer,
    code: CodeLexer,
    /// Tool-call arguments only: the JSON reader that feeds its strings to a normaliser of
    /// their own.
    args: Option<Box<json::ArgsNormalizer>>,
    /// A patch only: the rest of the current line is not read ([`Normalizer::push_patch`]).
    patch_skip: bool,
    /// Markdown only, when asked ([`Normalizer::set_bare_code`]): the text outside fences
    /// read a second time, as code.
    bare: Option<Box<BareCode>>,
}

/// A line longer than this is a paragraph to [`BareCode`], not code.
const BARE_LINE_MAX: usize = 1024;

/// Markdown's text outside fences read as code too, from the line after one that looks like
/// code ([`code_line`]) to the line after one that looks like a sentence of prose
/// ([`looks_like_prose`]): a chat answer's code pasted without a fence.
///
/// A second reading, not a switch: a line cannot be told code or prose before it ends, and
/// holding every prose line back until its newline would delay a streamed paragraph by its
/// whole length (a paragraph is one line). So the prose reading goes on untouched, and this
/// one starts at the *next* line once a line has looked like code — decided on whole lines,
/// so the same whatever way the text is cut; the first line of bare code is read only as
/// prose (a few tokens of a run that needs dozens). Until a line looks like code it costs a
/// line test: a prose answer pays almost nothing. Its units go to [`Normalizer::take_bare`],
/// to be matched on a run history of their own (`matcher::Scanner`'s `bare` track): mixed
/// with the prose units of the same text, every change of channel would end a run.
struct BareCode {
    /// A line has looked like code, and none since like prose: every line is read.
    on: bool,
    /// The language was told from a line (`sniff`), not assumed (C-like) from one that only
    /// ends as code does; the first line that tells it sets it.
    lang_known: bool,
    /// Inside a triple-quoted string (a docstring) opened on a line read since: its lines are
    /// the code's, whatever they look like, so no prose test stops the reading there.
    in_string: bool,
    lexer: CodeLexer,
    /// The current line so far.
    line: CutLine,
    units: Vec<Unit>,
}

/// What the line tests read of a line: its start (without its indentation; the whole line
/// when it is short) and its last non-blank bytes, whether it has five words, and whether it
/// holds a bracket or an operator.
struct LineView<'a> {
    head: &'a str,
    tail: &'a str,
    five_words: bool,
    brackets: bool,
    /// `head` is the whole line (without its indentation).
    whole: bool,
}

/// Whether a line opens or closes a triple-quoted string (`"""`, `'''`): an odd number of
/// them in a line read whole; in a longer one, one at its start or at its end but not both.
fn toggles_triple_quote(line: &LineView<'_>) -> bool {
    const Q: [&str; 2] = ["\"\"\"", "'''"];
    if line.whole {
        return Q
            .iter()
            .map(|q| line.head.matches(q).count())
            .sum::<usize>()
            % 2
            == 1;
    }
    let starts = Q.iter().any(|q| line.head.starts_with(q));
    let ends = Q.iter().any(|q| line.tail.ends_with(q));
    starts != ends
}

/// Whether `b` holds one of `(){}[]=<>` (three `memchr3` scans: a byte-by-byte test of nine
/// characters cost a third of a prose scan).
fn has_bracket(b: &[u8]) -> bool {
    memchr::memchr3(b'(', b')', b'=', b).is_some()
        || memchr::memchr3(b'{', b'}', b'[', b).is_some()
        || memchr::memchr3(b']', b'<', b'>', b).is_some()
}

/// Bytes a [`CutLine`] keeps of its line's start (after its indentation) …
const CUT_HEAD: usize = 96;
/// … and of its end (its last bytes that are not blanks).
const CUT_TAIL: usize = 8;

/// The current line, summarised as it comes in rather than copied: a streamed paragraph is
/// one line, and every open stream is in the middle of one. Fixed size, inside the
/// [`BareCode`] box (a copy of the line took up to a kilobyte a stream). Blanks are ASCII
/// blanks here and in every line test, so no test can depend on where a push ended.
#[derive(Clone, Copy)]
struct CutLine {
    head: [u8; CUT_HEAD],
    tail: [u8; CUT_TAIL],
    head_len: u8,
    tail_len: u8,
    /// Words so far, counted to five.
    words: u8,
    /// The last byte seen was part of a word.
    in_word: bool,
    brackets: bool,
    /// Bytes so far.
    len: usize,
}

impl CutLine {
    const EMPTY: CutLine = CutLine {
        head: [0; CUT_HEAD],
        tail: [0; CUT_TAIL],
        head_len: 0,
        tail_len: 0,
        words: 0,
        in_word: false,
        brackets: false,
        len: 0,
    };

    fn push(&mut self, piece: &str) {
        self.len += piece.len();
        let mut b = piece.as_bytes();
        if self.head_len == 0 {
            b = b.trim_ascii_start();
        }
        let h = usize::from(self.head_len);
        let n = b.len().min(CUT_HEAD - h);
        self.head[h..h + n].copy_from_slice(&b[..n]);
        self.head_len = (h + n) as u8;
        let b = piece.as_bytes();
        if self.words < 5 {
            let mut words = piece.split_ascii_whitespace().take(6).count();
            if self.in_word && b.first().is_some_and(|c| !c.is_ascii_whitespace()) {
                words -= 1;
            }
            self.words = (usize::from(self.words) + words).min(5) as u8;
        }
        if let Some(&last) = b.last() {
            self.in_word = !last.is_ascii_whitespace();
        }
        self.brackets = self.brackets || has_bracket(b);
        // The last non-blank bytes: this piece's, after those kept before it.
        let mut end = [0u8; CUT_TAIL];
        let mut k = 0;
        for &c in b
            .iter()
            .rev()
            .filter(|c| !c.is_ascii_whitespace())
            .take(CUT_TAIL)
        {
            k += 1;
            end[CUT_TAIL - k] = c;
        }
        if k > 0 {
            let len = usize::from(self.tail_len);
            let keep = (CUT_TAIL - k).min(len);
            self.tail.copy_within(len - keep..len, 0);
            self.tail[keep..keep + k].copy_from_slice(&end[CUT_TAIL - k..]);
            self.tail_len = (keep + k) as u8;
        }
    }

    /// The line, as the tests read it (`None` past [`BARE_LINE_MAX`]).
    fn view(&self) -> Option<LineView<'_>> {
        if self.len > BARE_LINE_MAX {
            return None;
        }
        let head = &self.head[..usize::from(self.head_len)];
        let head = match std::str::from_utf8(head) {
            Ok(h) => h,
            // Cut inside a character: the whole characters before it.
            Err(e) => std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or_default(),
        };
        let mut tail = &self.tail[..usize::from(self.tail_len)];
        while tail.first().is_some_and(|&c| (0x80..0xC0).contains(&c)) {
            tail = &tail[1..];
        }
        Some(LineView {
            head: head.trim_ascii_end(),
            tail: std::str::from_utf8(tail).unwrap_or_default(),
            five_words: self.words >= 5,
            brackets: self.brackets,
            whole: usize::from(self.head_len) < CUT_HEAD,
        })
    }
}

impl BareCode {
    /// Reads `text` (outside any fence) at offset `at`.
    fn feed(&mut self, text: &str, mut at: u64) {
        for piece in text.split_inclusive('\n') {
            if self.on {
                self.lexer.push(piece, at, &mut self.units);
            }
            at += piece.len() as u64;
            // Every line is read through the same summary, whole or cut: the tests then see
            // the same bytes whatever way the text was cut.
            self.line.push(piece);
            if !piece.ends_with('\n') {
                continue;
            }
            let line = std::mem::replace(&mut self.line, CutLine::EMPTY);
            // A line longer than any line of code a model writes is a paragraph.
            let view = line.view();
            // A line that opens, continues or closes a docstring is the code's.
            let was_in_string = self.in_string;
            if self.on && view.as_ref().is_some_and(toggles_triple_quote) {
                self.in_string = !self.in_string;
            }
            let in_string = was_in_string || self.in_string;
            match view.as_ref().map(|v| (v, code_line(v))) {
                Some((v, Some(sniffed))) if !self.on || (!self.lang_known && sniffed.is_some()) => {
                    // From the next line on, in the language the line shows (C-like when it
                    // shows none: it only ended as code does).
                    self.lexer.flush(at, &mut self.units);
                    self.lexer.reset(sniffed.unwrap_or(Lang::C_LIKE));
                    // A line that opens a comment and does not close it (a license block's
                    // `/* ====`): the lines after it are the comment's, not code.
                    if !self.on && v.head.starts_with("/*") && !v.tail.ends_with("*/") {
                        self.lexer.open_block_comment();
                    }
                    self.on = true;
                    self.lang_known = sniffed.is_some();
                    self.in_string = false;
                }
                // Code, read already, in a language told or not to be told by this line.
                Some((_, Some(_))) => {}
                Some((line, None)) if !self.on || in_string || !looks_like_prose(line) => {}
                _ if self.on => {
                    // Prose again: the code read so far ends with this line.
                    self.lexer.flush(at, &mut self.units);
                    self.on = false;
                    self.lang_known = false;
                    self.in_string = false;
                }
                _ => {}
            }
        }
    }

    /// A fence opens at `at`: the code read so far ends there.
    fn break_at(&mut self, at: u64) {
        if self.on {
            self.lexer.flush(at, &mut self.units);
        }
        self.in_string = false;
        self.line = CutLine::EMPTY;
    }
}

/// Whether a whole line looks like a sentence of prose: it starts with a capital letter,
/// has at least five words and ends as a sentence or a lead-in does (`.`, `!`, `?`, `:`,
/// Markdown emphasis after them allowed) — or it is running text ([`running_text`]) with no
/// bracket or operator. After one the bare-code reading stops, until a line looks like code
/// again; a comment line (`// Sums what is owed.`) looks like code first.
fn looks_like_prose(line: &LineView<'_>) -> bool {
    let sentence = line.head.starts_with(|c: char| c.is_ascii_uppercase())
        && line.five_words
        && line
            .tail
            .trim_end_matches(['*', '_'])
            .ends_with(['.', '!', '?', ':']);
    sentence || (!line.brackets && running_text(line.head))
}

/// Plain words a line's start needs to be [`running_text`].
const RUNNING_WORDS: usize = 8;

/// Whether a line's start is running text hard-wrapped, whatever its case or its ending: a
/// plain word first, and at least [`RUNNING_WORDS`] plain words making four fifths of its
/// words (a plain word: two or more letters, lower case after the first or all capitals, an
/// inner `'` or `-` and sentence marks around it allowed). A wrapped paragraph's lines begin
/// in lower case and end mid-sentence, so the sentence test of [`looks_like_prose`] sees none
/// of them: a license quoted after a code block (`Permission is hereby granted, free of
/// charge, to any person obtaining` …) was read as code to its end, and matched the same text
/// held as code by files a plain lexer reads (XML comments). Only lines that do not look like
/// code ([`code_line`]) are asked, so a comment (`# …`, `// …`, ` * …`: not a plain word
/// first) or a statement of many words (`from a import b, c, …`) never stops the reading.
fn running_text(head: &str) -> bool {
    let plain = |w: &str| {
        let w = w
            .trim_start_matches(['"', '\'', '`'])
            .trim_end_matches([',', '.', ';', ':', '!', '?', '"', '\'', '`']);
        let b = w.as_bytes();
        let inner_ok = |c: &u8| c.is_ascii_alphabetic() || *c == b'\'' || *c == b'-';
        b.len() >= 2
            && b[0].is_ascii_alphabetic()
            && b[b.len() - 1].is_ascii_alphabetic()
            && b.iter().all(inner_ok)
            && (b[1..].iter().all(|c| !c.is_ascii_uppercase())
                || b.iter().all(|c| !c.is_ascii_lowercase()))
    };
    let mut words = head.split_ascii_whitespace();
    if !words.next().is_some_and(plain) {
        return false;
    }
    let (mut n, mut p) = (1usize, 1usize);
    for w in words {
        n += 1;
        p += usize::from(plain(w));
    }
    p >= RUNNING_WORDS && p * 5 >= n * 4
}

/// Whether a whole line (outside fences) looks like code, and the language its start shows
/// (`Some(None)`: code, language not shown): it begins as one family's lines do
/// ([`json::sniff_line`]: `def `, `fn `, `#include` …), or as a comment does (`//`, `/*`),
/// or it ends as statements and blocks do (`;`, `{`, `}`, `):`, `*/`). Generous on purpose:
/// a prose line taken for code costs only the reading of the lines after it as code too (a
/// finding still needs a run of code tokens found in a code corpus); code not taken for code
/// is missed.
fn code_line(line: &LineView<'_>) -> Option<Option<Lang>> {
    let (t, end) = (line.head, line.tail);
    // Most prose lines: a capital or a digit first, a letter, digit or sentence mark last.
    // Every test below needs another first or last character.
    let (Some(first), Some(last)) = (t.bytes().next(), end.bytes().next_back()) else {
        return None;
    };
    if (first.is_ascii_uppercase() || first.is_ascii_digit())
        && (last.is_ascii_alphanumeric() || matches!(last, b'.' | b'!' | b'?' | b',' | b'"'))
    {
        return None;
    }
    // A sentence that ends in `;` (`And the earth was without form, and void;`): a capital
    // first, five words, and none of the brackets or operators a statement that long has.
    if first.is_ascii_uppercase() && line.five_words && !line.brackets {
        return None;
    }
    // A list item or a quotation is prose whatever it ends with (`- first, the bell;`).
    let item = t.strip_prefix(['-', '*', '+', '>']).map_or_else(
        || {
            let digits = t.bytes().take_while(u8::is_ascii_digit).count();
            digits > 0 && t[digits..].starts_with(['.', ')'])
        },
        |rest| rest.starts_with(' '),
    );
    if item {
        return None;
    }
    // The language is sniffed once, and only for a line that is not told prose above.
    let sniffed = json::sniff_line(t);
    let code = sniffed.is_some()
        || ["//", "/*", "#include", "#define", "#!", "}"]
            .iter()
            .any(|p| t.starts_with(p))
        || [";", "{", "}", "):", "*/"].iter().any(|e| end.ends_with(e))
        || starts_as_statement(t);
    code.then_some(sniffed)
}

/// `name = …`, `name(…`, `name.field += …`: a line that begins with a lower-case name (dots
/// allowed) directly followed by an assignment, a call or an index — Python's and shell's
/// statements end with nothing [`code_line`] sees. Prose lines begin with a capital.
fn starts_as_statement(t: &str) -> bool {
    let name = t
        .bytes()
        .take_while(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        .count();
    if name == 0 || !t.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        return false;
    }
    let rest = t[name..].trim_start_matches(' ');
    rest.starts_with(['(', '['])
        || ["=", "+=", "-=", "*=", "|=", ":="]
            .iter()
            .any(|op| rest.strip_prefix(op).is_some_and(|r| !r.starts_with('=')))
}

impl Normalizer {
    pub fn new(kind: TextKind) -> Self {
        let (mode, lang) = Normalizer::start_mode(kind);
        Normalizer {
            kind,
            mode,
            offset: 0,
            carry: Vec::new(),
            at_line_start: true,
            prefix: String::new(),
            prefix_start: 0,
            prose: ProseTokenizer::default(),
            code: CodeLexer::new(lang),
            args: (kind == TextKind::ToolArgs).then(|| Box::new(json::ArgsNormalizer::new())),
            patch_skip: false,
            bare: None,
        }
    }

    /// Markdown only: whether to read the text outside fences as code too — a chat answer's
    /// code pasted without a fence — from the line after one that looks like code (a
    /// statement, a block, a comment, a line that begins as one language's do) to the line
    /// after one that looks like a sentence. Decided on whole lines, so the same whatever way
    /// the text is cut; the Markdown reading is not changed. Its units are taken with
    /// [`Normalizer::take_bare`]. Set it before the first push. Nothing for other kinds.
    pub fn set_bare_code(&mut self, on: bool) {
        if !on {
            self.bare = None;
        } else if self.kind == TextKind::Markdown && self.bare.is_none() {
            self.bare = Some(Box::new(BareCode {
                on: false,
                lang_known: false,
                in_string: false,
                lexer: CodeLexer::new(Lang::C_LIKE),
                line: CutLine::EMPTY,
                units: Vec::new(),
            }));
        }
    }

    /// Moves the units of the bare-code reading made so far ([`Normalizer::set_bare_code`])
    /// to `out`; false when there were none.
    pub fn take_bare(&mut self, out: &mut Vec<Unit>) -> bool {
        match &mut self.bare {
            Some(b) if !b.units.is_empty() => {
                out.append(&mut b.units);
                true
            }
            _ => false,
        }
    }

    fn start_mode(kind: TextKind) -> (Mode, Lang) {
        match kind {
            TextKind::Markdown | TextKind::Prose | TextKind::ToolArgs => {
                (Mode::Prose, Lang::C_LIKE)
            }
            TextKind::Code(lang) | TextKind::Patch(lang) => (Mode::Code { fence: None }, lang),
        }
    }

    /// Starts a new text of `kind` where the last one ended (which must have been finished):
    /// offsets go on from there. Not for tool-call arguments.
    fn restart(&mut self, kind: TextKind) {
        debug_assert!(kind != TextKind::ToolArgs && self.args.is_none());
        let (mode, lang) = Normalizer::start_mode(kind);
        self.kind = kind;
        self.mode = mode;
        self.at_line_start = true;
        self.patch_skip = false;
        self.prefix.clear();
        self.prefix_start = self.offset;
        self.code.reset(lang);
    }

    /// Tool-call arguments only: values that no sibling or key names are read as `kind` (a
    /// hint found in the whole arguments beforehand, [`tool_args_hint`]).
    pub fn set_tool_args_hint(&mut self, kind: TextKind) {
        if let Some(a) = &mut self.args {
            a.set_default_hint(kind);
        }
    }

    /// Bytes received so far.
    pub fn offset(&self) -> u64 {
        self.offset + self.carry.len() as u64
    }

    /// The earliest byte offset that may still become part of a unit not yet emitted. Every
    /// byte before it is final: it either belongs to an emitted unit or to none.
    pub fn pending_start(&self) -> u64 {
        if let Some(a) = &self.args {
            return a.pending_start();
        }
        let mut p = self.offset;
        if self.at_line_start && !self.prefix.is_empty() {
            p = p.min(self.prefix_start);
        }
        if let Some(s) = self.prose.pending_start() {
            p = p.min(s);
        }
        if let Some(s) = self.code.pending_start() {
            p = p.min(s);
        }
        if let Some(s) = self.bare.as_ref().and_then(|b| b.lexer.pending_start()) {
            p = p.min(s);
        }
        p
    }

    /// Feeds raw bytes; an incomplete UTF-8 sequence at the end waits for the next chunk, and
    /// invalid bytes count as whitespace (one space per byte, so offsets stay exact).
    pub fn push_bytes(&mut self, bytes: &[u8], out: &mut Vec<Unit>) {
        if self.carry.is_empty() {
            let consumed = self.push_valid_prefix(bytes, out);
            self.carry.extend_from_slice(&bytes[consumed..]);
        } else {
            // Rare: only when a chunk ended inside a multi-byte sequence.
            let mut joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(bytes);
            let consumed = self.push_valid_prefix(&joined, out);
            self.carry = joined[consumed..].to_vec();
        }
    }

    /// Pushes the longest prefix of `bytes` that is not an incomplete trailing UTF-8 sequence,
    /// turning invalid bytes into spaces; returns how many bytes it consumed.
    fn push_valid_prefix(&mut self, mut bytes: &[u8], out: &mut Vec<Unit>) -> usize {
        let total = bytes.len();
        loop {
            match std::str::from_utf8(bytes) {
                Ok(s) => {
                    self.push_str_inner(s, out);
                    return total;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: `valid_up_to` guarantees this prefix is valid UTF-8.
                    let s = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
                    self.push_str_inner(s, out);
                    match e.error_len() {
                        None => return total - (bytes.len() - valid),
                        Some(n) => {
                            self.push_str_inner(&"   "[..n.min(3)], out);
                            bytes = &bytes[valid + n..];
                        }
                    }
                }
            }
        }
    }

    /// Feeds text that is already valid UTF-8.
    pub fn push_str(&mut self, text: &str, out: &mut Vec<Unit>) {
        if !self.carry.is_empty() {
            // A byte chunk ended mid-sequence and text follows: the carried bytes are invalid.
            let n = self.carry.len();
            self.carry.clear();
            self.push_str_inner(&"   "[..n.min(3)], out);
        }
        self.push_str_inner(text, out);
    }

    fn push_str_inner(&mut self, s: &str, out: &mut Vec<Unit>) {
        let base = self.offset;
        self.offset += s.len() as u64;
        match self.kind {
            TextKind::Code(_) => return self.code.push(s, base, out),
            TextKind::Patch(_) => return self.push_patch(s, base, out),
            TextKind::Prose => return self.prose.push(s, base, out),
            TextKind::ToolArgs => {
                if let Some(a) = &mut self.args {
                    a.push(s, out);
                }
                return;
            }
            TextKind::Markdown => {}
        }
        let mut i = 0;
        while i < s.len() {
            let at = base + i as u64;
            if let Mode::FenceInfo { info, fence } = &mut self.mode {
                let rest = &s[i..];
                match rest.find('\n') {
                    Some(nl) => {
                        info.push_str(&rest[..nl]);
                        let named = Lang::named_in_fence_info(info);
                        let lang = named.unwrap_or(Lang::C_LIKE);
                        let fence = Fence {
                            comments_hide_fences: named.is_some_and(|l| l.c_comments),
                            ..*fence
                        };
                        self.code.reset(lang);
                        self.mode = Mode::Code { fence: Some(fence) };
                        self.at_line_start = true;
                        self.prefix_start = at + nl as u64 + 1;
                        i += nl + 1;
                    }
                    None => {
                        info.push_str(rest);
                        i = s.len();
                    }
                }
                continue;
            }
            if self.at_line_start && self.prefix.is_empty() && self.mode == Mode::Prose {
                // Whole lines that do not start (after at most three spaces) with a backtick or
                // a tilde cannot open a fence: they are prose, fed in one piece instead of a
                // line at a time (the prose tokenizer gives the same words however its input
                // is cut).
                let rest = &s.as_bytes()[i..];
                let clear = memchr::memchr2_iter(b'`', b'~', rest)
                    .find_map(|p| {
                        let ls = memchr::memrchr(b'\n', &rest[..p]).map_or(0, |n| n + 1);
                        (p - ls <= 3 && rest[ls..p].iter().all(|&b| b == b' ')).then_some(ls)
                    })
                    .unwrap_or(rest.len());
                if let Some(nl) = memchr::memrchr(b'\n', &rest[..clear]) {
                    self.prose.push(&s[i..i + nl + 1], at, out);
                    if let Some(b) = &mut self.bare {
                        b.feed(&s[i..i + nl + 1], at);
                    }
                    i += nl + 1;
                    self.prefix_start = base + i as u64;
                    continue;
                }
            }
            if self.at_line_start {
                let c = s[i..].chars().next().unwrap_or(' ');
                if self.prefix.is_empty() {
                    self.prefix_start = at;
                }
                match self.classify_line_start(c) {
                    LineStart::Undecided => {
                        self.prefix.push(c);
                        i += c.len_utf8();
                    }
                    LineStart::NotFence => {
                        self.at_line_start = false;
                        let prefix = std::mem::take(&mut self.prefix);
                        self.feed(&prefix, self.prefix_start, out);
                    }
                    LineStart::Open(fence) => {
                        self.prose.flush(out);
                        if let Some(b) = &mut self.bare {
                            b.break_at(self.prefix_start);
                        }
                        self.prefix.clear();
                        self.at_line_start = false;
                        self.mode = Mode::FenceInfo {
                            fence,
                            info: String::new(),
                        };
                    }
                    LineStart::Close => {
                        self.code.flush(self.prefix_start, out);
                        self.prefix.clear();
                        self.mode = Mode::Prose;
                        self.prefix_start = at + 1;
                        i += c.len_utf8(); // the newline that ends the fence line
                    }
                }
                continue;
            }
            let rest = &s[i..];
            let (line, done) = match rest.find('\n') {
                Some(nl) => (&rest[..=nl], true),
                None => (rest, false),
            };
            self.feed(line, at, out);
            i += line.len();
            if done {
                self.at_line_start = true;
                self.prefix_start = base + i as u64;
            }
        }
    }

    /// [`TextKind::Patch`]: each line's first byte says whether the line is read (`+`, ` `:
    /// the marker skipped; any other first byte but those below: the whole line, a patch
    /// whose added lines carry no marker) or not (`-`, `@`, `*`, `\\`: the whole line). The
    /// code lexer sees the read lines' text at its own offsets, so units map back into the
    /// diff. `at_line_start` says a line's first byte is next; `patch_skip` that the rest of
    /// the line is not read.
    fn push_patch(&mut self, s: &str, base: u64, out: &mut Vec<Unit>) {
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if self.at_line_start {
                self.at_line_start = false;
                match b[i] {
                    b'+' | b' ' => {
                        self.patch_skip = false;
                        i += 1;
                        continue;
                    }
                    b'-' | b'@' | b'*' | b'\\' => self.patch_skip = true,
                    _ => self.patch_skip = false,
                }
            }
            let (end, done) = match memchr::memchr(b'\n', &b[i..]) {
                Some(nl) => (i + nl + 1, true),
                None => (b.len(), false),
            };
            if !self.patch_skip {
                self.code.push(&s[i..end], base + i as u64, out);
            }
            i = end;
            self.at_line_start = done;
        }
    }

    fn feed(&mut self, text: &str, at: u64, out: &mut Vec<Unit>) {
        match self.mode {
            Mode::Prose => {
                self.prose.push(text, at, out);
                if let Some(b) = &mut self.bare {
                    b.feed(text, at);
                }
            }
            Mode::Code { .. } => self.code.push(text, at, out),
            Mode::FenceInfo { .. } => {}
        }
    }

    /// Decides what the line prefix plus `c` is. Follows CommonMark: up to three spaces of
    /// indentation, then three or more backticks or tildes; a closing fence uses the opening
    /// character, at least as many times, and nothing but spaces after it.
    fn classify_line_start(&self, c: char) -> LineStart {
        let indent = self.prefix.bytes().take_while(|&b| b == b' ').count();
        let rest = &self.prefix[indent..];
        if rest.is_empty() {
            return if (c == ' ' && indent < 3) || c == '`' || c == '~' {
                LineStart::Undecided
            } else {
                LineStart::NotFence
            };
        }
        let Some(fc) = rest.chars().next() else {
            return LineStart::NotFence;
        };
        let n = rest.chars().take_while(|&x| x == fc).count();
        let after = &rest[n * fc.len_utf8()..];
        match &self.mode {
            Mode::Prose => {
                if after.is_empty() && c == fc {
                    LineStart::Undecided
                } else if n >= 3 {
                    LineStart::Open(Fence {
                        ch: fc,
                        count: n,
                        comments_hide_fences: false,
                    })
                } else {
                    LineStart::NotFence
                }
            }
            Mode::Code { fence: Some(open) } => {
                if fc != open.ch || (open.comments_hide_fences && self.code.in_block_comment()) {
                    return LineStart::NotFence;
                }
                if after.is_empty() && c == fc {
                    LineStart::Undecided
                } else if n < open.count {
                    LineStart::NotFence
                } else if c == '\n' {
                    LineStart::Close
                } else if c == ' ' || c == '\t' || c == '\r' {
                    LineStart::Undecided
                } else {
                    LineStart::NotFence
                }
            }
            _ => LineStart::NotFence,
        }
    }

    /// Ends the stream: everything pending becomes final.
    pub fn finish(&mut self, out: &mut Vec<Unit>) {
        if !self.carry.is_empty() {
            let n = self.carry.len();
            self.carry.clear();
            self.push_str_inner(&"   "[..n.min(3)], out);
        }
        if let Some(a) = &mut self.args {
            return a.finish(out);
        }
        if self.at_line_start && !self.prefix.is_empty() {
            let prefix = std::mem::take(&mut self.prefix);
            if let Mode::Code { fence: Some(open) } = self.mode {
                // A closing fence at the very end of the input, without a newline.
                let trimmed = prefix.trim();
                if trimmed.chars().all(|x| x == open.ch)
                    && trimmed.len() >= open.count
                    && !(open.comments_hide_fences && self.code.in_block_comment())
                {
                    self.code.flush(self.prefix_start, out);
                    self.mode = Mode::Prose;
                    return;
                }
            }
            self.feed(&prefix, self.prefix_start, out);
        }
        self.prose.flush(out);
        self.code.flush(self.offset, out);
        if let Some(b) = &mut self.bare {
            b.break_at(self.offset);
        }
    }
}

/// `bytes` as text with the same byte offsets, read as the normaliser reads them: each byte of
/// an invalid UTF-8 sequence becomes a space. (`String::from_utf8_lossy` writes three bytes for
/// each invalid sequence, so every offset after one would point elsewhere.)
pub fn text_at_same_offsets(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.into(),
        Err(_) => {
            let mut out = String::with_capacity(bytes.len());
            for chunk in bytes.utf8_chunks() {
                out.push_str(chunk.valid());
                out.extend(std::iter::repeat_n(' ', chunk.invalid().len()));
            }
            out.into()
        }
    }
}

/// Normalises a whole text at once, and reads it as bare code too (Markdown only; see
/// [`Normalizer::set_bare_code`]): the units, and those of the bare-code reading.
pub fn normalize_with_bare(text: &str, kind: TextKind) -> (Vec<Unit>, Vec<Unit>) {
    normalize_reading(text, kind, true)
}

/// Normalises a whole text at once.
pub fn normalize(text: &str, kind: TextKind) -> Vec<Unit> {
    normalize_reading(text, kind, false).0
}

fn normalize_reading(text: &str, kind: TextKind, bare_code: bool) -> (Vec<Unit>, Vec<Unit>) {
    let mut n = Normalizer::new(kind);
    n.set_bare_code(bare_code);
    let mut out = Vec::new();
    n.push_str(text, &mut out);
    n.finish(&mut out);
    let mut bare = Vec::new();
    n.take_bare(&mut bare);
    (out, bare)
}
