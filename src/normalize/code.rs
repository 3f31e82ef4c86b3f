//! Code units: a small lexer that drops whitespace and comments and keeps identifiers, numbers,
//! string literals (each one unit) and every other character as a one-character unit.
//!
//! It is a character-level state machine, so it gives the same units however the input is cut.
//! It does not parse: multi-character operators become one unit per character, which costs a
//! little density but keeps the lexer language-neutral and chunk-invariant. String literals end
//! at their closing quote or at the end of the line, so one stray quote cannot swallow a file.

use super::{Channel, Lang, Unit, UnitClass};
use crate::hash::unit_hash;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Ident,
    Number,
    Str {
        quote: char,
        escaped: bool,
    },
    /// A char literal being read where `'` does not quote strings: `'x'`, `'\x'` (`stage` 0
    /// after the quote, 1 after a backslash, 2 before the closing quote). Anything else (a
    /// Rust lifetime `'a`, `'\u{…}'`) is read as before: the `'` a unit of its own, the rest
    /// lexed again after it. Without it, the `"` in `'"'` or `'\"'` opened a string that took
    /// the rest of the line, trailing whitespace included, as one unit.
    Char {
        stage: u8,
    },
    /// Saw `/` where `//` or `/*` may follow.
    Slash,
    /// Saw `-` where `--` may follow.
    Dash,
    LineComment,
    BlockComment {
        star: bool,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct CodeLexer {
    lang: Lang,
    state: State,
    tok: String,
    tok_start: u64,
    /// No unit since the last newline (for [`Lang::hash_line_comments`]; a comment between
    /// does not count as one).
    line_start: bool,
}

impl CodeLexer {
    pub(crate) fn new(lang: Lang) -> Self {
        CodeLexer {
            lang,
            state: State::Idle,
            tok: String::new(),
            tok_start: 0,
            line_start: true,
        }
    }

    /// Starts a new block of code in `lang` (any open token must have been flushed).
    pub(crate) fn reset(&mut self, lang: Lang) {
        debug_assert!(self.tok.is_empty());
        self.lang = lang;
        self.state = State::Idle;
        self.line_start = true;
    }

    pub(crate) fn pending_start(&self) -> Option<u64> {
        match self.state {
            State::Ident
            | State::Number
            | State::Str { .. }
            | State::Char { .. }
            | State::Slash
            | State::Dash => Some(self.tok_start),
            // Comments never become units; nothing in them is pending.
            State::Idle | State::LineComment | State::BlockComment { .. } => None,
        }
    }

    /// Goes on as if it had just read `/*` (in a language with such comments): the bare-code
    /// reading starts on the line after one that opens a comment, which the lexer never saw.
    pub(crate) fn open_block_comment(&mut self) {
        debug_assert!(self.tok.is_empty());
        if self.lang.c_comments {
            self.state = State::BlockComment { star: false };
        }
    }

    /// Inside a `/* … */` comment.
    pub(crate) fn in_block_comment(&self) -> bool {
        matches!(self.state, State::BlockComment { .. })
    }

    pub(crate) fn push(&mut self, text: &str, at: u64, out: &mut Vec<Unit>) {
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            // Runs of ASCII that a state consumes without a decision are taken at once; the
            // character that ends the run goes through `push_char`, like every other. Each
            // run does exactly what `push_char` would do to its characters one by one.
            let run = |stop: fn(u8) -> bool| b[i..].iter().position(|&c| stop(c));
            match self.state {
                State::Idle => {
                    let n = run(|c| !is_ascii_space(c)).unwrap_or(b.len() - i);
                    if n > 0 {
                        if self.lang.hash_line_comments && b[i..i + n].contains(&b'\n') {
                            self.line_start = true;
                        }
                        i += n;
                        continue;
                    }
                    let c = b[i];
                    if is_single(c) {
                        // What `idle` makes of it — a unit of one character — without the
                        // token buffer and the hashing: most units of code are these.
                        out.push(Unit {
                            class: UnitClass::Other,
                            hash: single_hashes()[c as usize],
                            start: at + i as u64,
                            len: 1,
                            channel: Channel::Code,
                        });
                        self.line_start = false;
                        i += 1;
                        continue;
                    }
                    if is_ascii_ident_start(c) {
                        // An identifier that ends in this piece, on an ASCII character (which
                        // cannot continue it): a unit made from the slice itself.
                        let n = b[i..].iter().position(|&c| !is_ascii_ident_continue(c));
                        if let Some(n) = n.filter(|&n| b[i + n].is_ascii()) {
                            let tok = &text[i..i + n];
                            if self.lang.comment_words.contains(&tok) {
                                self.state = State::LineComment;
                            } else {
                                let (start, end) = (at + i as u64, at + (i + n) as u64);
                                out.push(unit(self.lang, State::Ident, tok, start, end));
                                self.line_start = false;
                            }
                            i += n;
                            continue;
                        }
                    }
                }
                State::Ident => {
                    let n = run(|c| !is_ascii_ident_continue(c)).unwrap_or(b.len() - i);
                    if n > 0 {
                        self.tok.push_str(&text[i..i + n]);
                        i += n;
                        continue;
                    }
                }
                State::Str {
                    quote,
                    escaped: false,
                } if quote.is_ascii() => {
                    let n =
                        memchr::memchr3(quote as u8, b'\\', b'\n', &b[i..]).unwrap_or(b.len() - i);
                    if n > 0 {
                        self.tok.push_str(&text[i..i + n]);
                        i += n;
                        continue;
                    }
                }
                State::LineComment => match memchr::memchr(b'\n', &b[i..]) {
                    Some(0) => {}
                    Some(n) => {
                        i += n;
                        continue;
                    }
                    None => return,
                },
                State::BlockComment { star: false } => match memchr::memchr(b'*', &b[i..]) {
                    Some(0) => {}
                    Some(n) => {
                        i += n;
                        continue;
                    }
                    None => return,
                },
                _ => {}
            }
            let Some(c) = text[i..].chars().next() else {
                break;
            };
            self.push_char(c, at + i as u64, out);
            i += c.len_utf8();
        }
    }

    fn emit(&mut self, end: u64, out: &mut Vec<Unit>) {
        out.push(unit(self.lang, self.state, &self.tok, self.tok_start, end));
        self.tok.clear();
        self.state = State::Idle;
        self.line_start = false;
    }

    /// Emits a string literal that the end of its line (or of the input) ended, without the
    /// whitespace before that end: a line's trailing whitespace and a CRLF file's `\r` are
    /// whitespace the code channel ignores everywhere else. Such literals are the lines of
    /// multi-line strings (Python docstrings, Rust strings continued on the next line) and
    /// stray quotes; re-indenting a file or saving it with other line endings left them, and
    /// every copy of them, different units.
    fn emit_unterminated(&mut self, out: &mut Vec<Unit>) {
        let kept = self.tok.trim_end().len();
        self.tok.truncate(kept);
        self.emit(self.tok_start + kept as u64, out);
    }

    fn start(&mut self, c: char, at: u64, state: State) {
        self.tok.clear();
        self.tok.push(c);
        self.tok_start = at;
        self.state = state;
    }

    fn push_char(&mut self, c: char, at: u64, out: &mut Vec<Unit>) {
        let len = c.len_utf8() as u64;
        match self.state {
            State::Idle => self.idle(c, at, out),
            State::Ident => {
                if is_ident_continue(c) {
                    self.tok.push(c);
                } else if self.lang.comment_words.contains(&self.tok.as_str()) {
                    self.tok.clear();
                    self.state = State::LineComment;
                    self.push_char(c, at, out);
                } else {
                    self.emit(at, out);
                    self.idle(c, at, out);
                }
            }
            State::Number => {
                if c.is_alphanumeric() || c == '_' || c == '.' {
                    self.tok.push(c);
                } else {
                    self.emit(at, out);
                    self.idle(c, at, out);
                }
            }
            State::Str { quote, escaped } => {
                if c == '\n' {
                    // Unterminated on this line: the literal ends here.
                    self.emit_unterminated(out);
                    self.line_start = true;
                } else {
                    self.tok.push(c);
                    if escaped {
                        self.state = State::Str {
                            quote,
                            escaped: false,
                        };
                    } else if c == '\\' {
                        self.state = State::Str {
                            quote,
                            escaped: true,
                        };
                    } else if c == quote {
                        self.emit(at + len, out);
                    }
                }
            }
            State::Char { stage } => match (stage, c) {
                (_, '\n') | (0, '\'') => {
                    self.abandon_char(out);
                    self.push_char(c, at, out);
                }
                (0, '\\') => {
                    self.tok.push(c);
                    self.state = State::Char { stage: 1 };
                }
                (0 | 1, _) => {
                    self.tok.push(c);
                    self.state = State::Char { stage: 2 };
                }
                (_, '\'') => {
                    self.tok.push(c);
                    self.emit(at + len, out);
                }
                _ => {
                    self.abandon_char(out);
                    self.push_char(c, at, out);
                }
            },
            State::Slash => match c {
                '/' => {
                    self.tok.clear();
                    self.state = State::LineComment;
                }
                '*' => {
                    self.tok.clear();
                    self.state = State::BlockComment { star: false };
                }
                _ => {
                    self.emit(at, out);
                    self.idle(c, at, out);
                }
            },
            State::Dash => {
                if c == '-' {
                    self.tok.clear();
                    self.state = State::LineComment;
                } else {
                    self.emit(at, out);
                    self.idle(c, at, out);
                }
            }
            State::LineComment => {
                if c == '\n' {
                    self.state = State::Idle;
                    self.line_start = true;
                }
            }
            State::BlockComment { star } => {
                if star && c == '/' {
                    self.state = State::Idle;
                } else {
                    self.state = State::BlockComment { star: c == '*' };
                }
            }
        }
    }

    /// A `'` that did not open a char literal: the quote is a unit of its own, as it is where
    /// no char literal is tried, and the characters read after it are lexed again.
    fn abandon_char(&mut self, out: &mut Vec<Unit>) {
        let rest = self.tok.split_off(1);
        let start = self.tok_start;
        self.state = State::Idle;
        self.emit(start + 1, out);
        let mut at = start + 1;
        for ch in rest.chars() {
            self.push_char(ch, at, out);
            at += ch.len_utf8() as u64;
        }
    }

    fn idle(&mut self, c: char, at: u64, out: &mut Vec<Unit>) {
        let lang = self.lang;
        if c.is_whitespace() {
            self.line_start |= c == '\n';
            return;
        }
        if is_ident_start(c) {
            self.start(c, at, State::Ident);
        } else if c.is_numeric() {
            self.start(c, at, State::Number);
        } else if c == '"'
            || (c == '\'' && lang.single_quote_strings)
            || (c == '`' && lang.backtick_strings)
        {
            self.start(
                c,
                at,
                State::Str {
                    quote: c,
                    escaped: false,
                },
            );
        } else if c == '\'' && lang.char_literals {
            self.start(c, at, State::Char { stage: 0 });
        } else if c == '/' && lang.c_comments {
            self.start(c, at, State::Slash);
        } else if c == '-' && lang.dash_comments {
            self.start(c, at, State::Dash);
        } else if (c == '#' && (lang.hash_comments || (lang.hash_line_comments && self.line_start)))
            || (c == ';' && lang.semicolon_comments)
        {
            self.state = State::LineComment;
        } else {
            self.start(c, at, State::Idle);
            self.emit(at + c.len_utf8() as u64, out);
        }
    }

    /// Ends the block: a token still open is complete.
    pub(crate) fn flush(&mut self, end: u64, out: &mut Vec<Unit>) {
        if let State::Char { .. } = self.state {
            // An unclosed `'` at the end: as if no char literal had been tried.
            self.abandon_char(out);
        }
        match self.state {
            // A block ending in `dnl`: a comment with nothing after it.
            State::Ident if self.lang.comment_words.contains(&self.tok.as_str()) => {}
            State::Str { .. } => self.emit_unterminated(out),
            State::Ident | State::Number | State::Slash | State::Dash => self.emit(end, out),
            _ => {}
        }
        self.tok.clear();
        self.state = State::Idle;
        self.line_start = true;
    }
}

/// The unit of token `tok`, read in `state`, at `start..end`.
#[inline]
fn unit(lang: Lang, state: State, tok: &str, start: u64, end: u64) -> Unit {
    let hash = unit_hash(Channel::Code, tok.as_bytes());
    let class = match state {
        _ if !lang.renames => UnitClass::Other,
        State::Ident if !is_keyword(hash, tok) => UnitClass::Ident,
        State::Number => UnitClass::Number,
        State::Str { .. } | State::Char { .. } => UnitClass::Str,
        _ => UnitClass::Other,
    };
    Unit::new(hash, start, end, Channel::Code, class)
}

/// Whether `idle` makes ASCII `c` a unit of its own in every language: punctuation that
/// starts no identifier, string, char literal or comment (the characters that may are left to
/// `idle`, which knows the language's conventions).
#[inline]
fn is_single(c: u8) -> bool {
    c.is_ascii_punctuation()
        && !matches!(
            c,
            b'_' | b'$' | b'"' | b'\'' | b'`' | b'/' | b'-' | b'#' | b';'
        )
}

/// The unit hash of each one-byte ASCII token.
fn single_hashes() -> &'static [u64; 128] {
    static HASHES: std::sync::OnceLock<[u64; 128]> = std::sync::OnceLock::new();
    HASHES.get_or_init(|| std::array::from_fn(|c| unit_hash(Channel::Code, &[c as u8])))
}

/// The ASCII characters `char::is_whitespace` is true of (`u8::is_ascii_whitespace` leaves
/// out the vertical tab).
#[inline]
fn is_ascii_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\x0B' | b'\x0C' | b'\r')
}

/// [`is_ident_start`] for an ASCII byte.
#[inline]
fn is_ascii_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b'$'
}

/// [`is_ident_continue`] for an ASCII byte.
#[inline]
fn is_ascii_ident_continue(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$'
}

#[inline]
fn is_ident_start(c: char) -> bool {
    if c.is_ascii() {
        is_ascii_ident_start(c as u8)
    } else {
        unicode_ident::is_xid_start(c)
    }
}

#[inline]
fn is_ident_continue(c: char) -> bool {
    if c.is_ascii() {
        is_ascii_ident_continue(c as u8)
    } else {
        unicode_ident::is_xid_continue(c)
    }
}

/// Keywords of the languages models write most (Rust, C, C++, Java, C#, Go, JavaScript,
/// TypeScript, Python, Ruby, PHP, shell) and their built-in type names: a keyword is structure,
/// not a name a copier renames, so it must match exactly in the rename-insensitive channel.
/// Sorted, for binary search. Part of the index format: changing it changes `classes.bin`.
const KEYWORDS: &[&str] = &[
    "False",
    "None",
    "Self",
    "True",
    "abstract",
    "and",
    "as",
    "assert",
    "async",
    "auto",
    "await",
    "begin",
    "bool",
    "boolean",
    "break",
    "byte",
    "case",
    "catch",
    "char",
    "class",
    "const",
    "constexpr",
    "continue",
    "crate",
    "debugger",
    "def",
    "default",
    "defer",
    "del",
    "delete",
    "do",
    "done",
    "double",
    "dyn",
    "elif",
    "else",
    "elsif",
    "end",
    "enum",
    "esac",
    "except",
    "explicit",
    "export",
    "extends",
    "extern",
    "f32",
    "f64",
    "false",
    "fi",
    "final",
    "finally",
    "float",
    "fn",
    "for",
    "foreach",
    "from",
    "func",
    "function",
    "global",
    "go",
    "goto",
    "i128",
    "i16",
    "i32",
    "i64",
    "i8",
    "if",
    "impl",
    "implements",
    "import",
    "in",
    "inline",
    "instanceof",
    "int",
    "interface",
    "is",
    "isize",
    "lambda",
    "let",
    "long",
    "loop",
    "map",
    "match",
    "mod",
    "module",
    "move",
    "mut",
    "namespace",
    "new",
    "nil",
    "nonlocal",
    "not",
    "null",
    "nullptr",
    "operator",
    "or",
    "override",
    "package",
    "pass",
    "private",
    "protected",
    "pub",
    "public",
    "raise",
    "range",
    "ref",
    "register",
    "rescue",
    "return",
    "select",
    "self",
    "short",
    "signed",
    "sizeof",
    "static",
    "str",
    "string",
    "struct",
    "super",
    "switch",
    "template",
    "then",
    "this",
    "throw",
    "throws",
    "trait",
    "true",
    "try",
    "type",
    "typedef",
    "typename",
    "typeof",
    "u128",
    "u16",
    "u32",
    "u64",
    "u8",
    "union",
    "unless",
    "unsafe",
    "unsigned",
    "until",
    "use",
    "using",
    "usize",
    "var",
    "virtual",
    "void",
    "volatile",
    "where",
    "while",
    "with",
    "yield",
];

/// Whether `tok` (whose unit hash is `hash`) is a keyword: one lookup of the hash the unit
/// needs anyway (a binary search over the words cost ~7 string compares per identifier, 2 % of
/// a scan), confirmed on the text so a hash collision cannot make a name a keyword.
fn is_keyword(hash: u64, tok: &str) -> bool {
    static HASHES: std::sync::OnceLock<rustc_hash::FxHashMap<u64, &'static str>> =
        std::sync::OnceLock::new();
    HASHES
        .get_or_init(|| {
            KEYWORDS
                .iter()
                .map(|k| (unit_hash(Channel::Code, k.as_bytes()), *k))
                .collect()
        })
        .get(&hash)
        .is_some_and(|k| *k == tok)
}

#[cfg(test)]
mod tests {
    #[test]
    fn keywords_are_distinct_and_found_by_their_hash() {
        use super::*;
        assert!(KEYWORDS.windows(2).all(|w| w[0] < w[1]));
        for k in KEYWORDS {
            assert!(is_keyword(unit_hash(Channel::Code, k.as_bytes()), k), "{k}");
        }
        for name in ["iff", "self_", "While", "x", ""] {
            assert!(!is_keyword(unit_hash(Channel::Code, name.as_bytes()), name));
        }
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]
        /// `push`, which takes runs of ASCII at once, gives the units, states and pending
        /// starts that feeding every character to `push_char` gives, in every comment and
        /// string convention.
        #[test]
        fn runs_taken_at_once_equal_the_character_machine(
            pieces in proptest::collection::vec(
                prop_oneof![
                    "[a-z_$0-9]{1,6}",
                    "[ \t\n\r\x0B\x0C]{1,3}",
                    "(//|/\\*|\\*/|\\*|/|--|-|#|;|'|\"|`|\\\\|\n)",
                    "[é日🙂\u{A0}\u{2028}.(){}]",
                    "[(){}\\[\\],.<>=+*&|!?:%^~@]{1,3}",
                    "[A-Za-z_$][A-Za-z0-9_$]{0,5}",
                    "[0-9][0-9a-z_.]{0,4}",
                    "(dnl|C)",
                ],
                0..40,
            ),
            lang in prop_oneof![
                Just("rs"), Just("py"), Just("sql"), Just("lisp"), Just("js"), Just("toml"), Just("html"),
                Just("asm"), Just("s"),
            ],
            split in 0usize..200,
        ) {
            let text: String = pieces.concat();
            let lang = super::Lang::from_name(lang).expect("a known language");
            let mut fast = super::CodeLexer::new(lang);
            let mut slow = super::CodeLexer::new(lang);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let mut cut = split.min(text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            fast.push(&text[..cut], 0, &mut a);
            fast.push(&text[cut..], cut as u64, &mut a);
            for (i, c) in text.char_indices() {
                slow.push_char(c, i as u64, &mut b);
            }
            prop_assert_eq!(fast.state, slow.state);
            prop_assert_eq!(fast.pending_start(), slow.pending_start());
            prop_assert_eq!(&fast.tok, &slow.tok);
            if lang.hash_line_comments {
                prop_assert_eq!(fast.line_start, slow.line_start);
            }
            fast.flush(text.len() as u64, &mut a);
            slow.flush(text.len() as u64, &mut b);
            prop_assert_eq!(a, b);
        }
    }
}
