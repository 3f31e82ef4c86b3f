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
            Mode::Prose => self.prose.push(text, at, out),
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

/// Normalises a whole text at once.
pub fn normalize(text: &str, kind: TextKind) -> Vec<Unit> {
    let mut n = Normalizer::new(kind);
    let mut out = Vec::new();
    n.push_str(text, &mut out);
    n.finish(&mut out);
    out
}
