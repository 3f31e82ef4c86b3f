//! The normaliser: the insensitivities it promises, and that chunking never changes its output
//! (STYLE.md habit 3). Every case is replayed whole, one byte at a time, split at every byte
//! position, and at seeded random points; a failure names the split that broke.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use verbatim::normalize::{Channel, Lang, Normalizer, TextKind, Unit, normalize};

const RUST: TextKind = TextKind::Code(Lang::C_LIKE);

fn py() -> TextKind {
    TextKind::Code(Lang::from_name("python").unwrap())
}

/// Cases replayed at every chunking: (name, text, kind).
fn chunking_cases() -> Vec<(&'static str, &'static str, TextKind)> {
    vec![
        (
            "plain prose",
            "The quick brown fox jumps over the lazy dog.",
            TextKind::Markdown,
        ),
        (
            "multibyte words",
            "Café naïve straße — «quoted» 日本語のテキスト ÆØÅ ﬁne.",
            TextKind::Markdown,
        ),
        ("apostrophes", "don’t can't won`t ʼtis", TextKind::Markdown),
        (
            "string literals ended by their line, trailing whitespace and CRLF",
            "def f():  \r\n\t\"\"\"Docs here  \t\r\n\tmore  \n\t\"\"\"  \nx = \"open \u{a0}",
            TextKind::Code(Lang::C_LIKE),
        ),
        (
            // Found by the normaliser fuzz target: WB3d joins the two spaces and WB4 attaches
            // the Arabic vowel sign to them, so a cut between the spaces changed the units.
            "mark after a run of spaces",
            "  \u{65c} x \t\u{301}  \u{65c}y\u{2000} \u{200d} \u{feff}z quotes\u{202f}cödé a\u{a0}b",
            TextKind::Prose,
        ),
        (
            "combining marks after space",
            "a \u{301}b e\u{301}t\u{301}e \u{200d}x",
            TextKind::Markdown,
        ),
        (
            "markdown and fence",
            "Intro **bold** _it_ text.\n\n```rust\nfn main() { let x = \"s t r\"; } // c\n```\nAfter the fence.\n",
            TextKind::Markdown,
        ),
        (
            "fence indented and tilde",
            "  ~~~~ python\nx = 'a b'  # comment\n~~~~\n````\nnot closed by three ```\n````\nend",
            TextKind::Markdown,
        ),
        (
            "fence lines inside a block comment",
            "text\n```rust\n/**\n```rust\nlet x = 1;\n```\n*/\nfn f() {}\n```\nafter\n",
            TextKind::Markdown,
        ),
        (
            "fence at end without newline",
            "text\n```\ncode here\n```",
            TextKind::Markdown,
        ),
        (
            "unclosed fence",
            "text\n```js\nconst a = `tmpl ${x}`;\n",
            TextKind::Markdown,
        ),
        (
            "rust code",
            "fn f<'a>(x: &'a str) -> u8 { /* block\n comment */ x.len() as u8 // tail\n}",
            RUST,
        ),
        (
            "python code",
            "def f(a, b='x'):\n    # comment\n    return a ** 2 + 0x1F / 1.5e3  # more\n",
            py(),
        ),
        ("unterminated string", "let s = \"abc\nlet t = 1;", RUST),
        (
            "crlf",
            "line one\r\nline two\r\n```\r\nx = 1\r\n```\r\n",
            TextKind::Markdown,
        ),
        ("empty", "", TextKind::Markdown),
        (
            "a patch: markers, removed lines, hunk headers, a comment across kept lines",
            "@@ fn main\n fn main() {\n-    old();\n+    let x = 1; /* spans\n+    two */ new(x);\n+}\n\\ No newline at end of file\n*** End Patch",
            TextKind::Patch(Lang::C_LIKE),
        ),
        (
            "plain prose with tildes",
            "Title\n~~~~~\n```\nnot code\n```\n",
            TextKind::Prose,
        ),
    ]
}

fn whole(text: &[u8], kind: TextKind) -> Vec<Unit> {
    let mut n = Normalizer::new(kind);
    let mut out = Vec::new();
    n.push_bytes(text, &mut out);
    n.finish(&mut out);
    out
}

fn chunked(text: &[u8], kind: TextKind, cuts: &[usize]) -> Vec<Unit> {
    let mut n = Normalizer::new(kind);
    let mut out = Vec::new();
    let mut prev = 0;
    for &c in cuts.iter().chain(std::iter::once(&text.len())) {
        n.push_bytes(&text[prev..c], &mut out);
        prev = c;
    }
    n.finish(&mut out);
    out
}

/// Deterministic xorshift for reproducible random splits.
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

#[test]
fn chunking_never_changes_units() {
    for (name, text, kind) in chunking_cases() {
        let bytes = text.as_bytes();
        let expect = whole(bytes, kind);
        // Sanity: the str path agrees with the bytes path.
        assert_eq!(
            normalize(text, kind),
            expect,
            "{name}: push_str vs push_bytes"
        );
        let every: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(
            chunked(bytes, kind, &every),
            expect,
            "{name}: one byte at a time"
        );
        for cut in 1..bytes.len() {
            assert_eq!(
                chunked(bytes, kind, &[cut]),
                expect,
                "{name}: split at byte {cut}"
            );
        }
        let mut r = rng(0x5eed ^ bytes.len() as u64);
        for trial in 0..50 {
            let mut cuts: Vec<usize> = (0..(r() % 8))
                .map(|_| (r() as usize) % (bytes.len() + 1))
                .collect();
            cuts.sort_unstable();
            assert_eq!(
                chunked(bytes, kind, &cuts),
                expect,
                "{name}: random trial {trial} cuts {cuts:?}"
            );
        }
    }
}

fn hashes(text: &str, kind: TextKind) -> Vec<u64> {
    normalize(text, kind).iter().map(|u| u.hash).collect()
}

#[test]
fn prose_is_insensitive_to_case_space_quotes_dashes_and_markup() {
    let base = "It's the writing that keeps the bell honest - he said, and the sea agreed";
    let variants = [
        "IT'S THE WRITING THAT KEEPS THE BELL HONEST — HE SAID, AND THE SEA AGREED",
        "It’s   the writing\nthat keeps the\n\nbell honest – he said,\tand the sea agreed",
        "> It's the **writing** that keeps the _bell_ honest -- he said, and the `sea` agreed",
        "- It's the writing that *keeps* the bell honest: he said; and the sea agreed!",
        "It＇s the ｗｒｉｔｉｎｇ that keeps the bell honest — he said, and the sea agreed",
    ];
    let expect = hashes(base, TextKind::Markdown);
    assert_eq!(expect.len(), 14);
    for v in variants {
        assert_eq!(hashes(v, TextKind::Markdown), expect, "variant: {v}");
    }
    // ß folds to ss, so an ALL-CAPS copy still matches.
    assert_eq!(
        hashes("Die Straße", TextKind::Markdown),
        hashes("DIE STRASSE", TextKind::Markdown)
    );
}

#[test]
fn prose_differs_when_words_differ() {
    assert_ne!(
        hashes("the bell rang twice", TextKind::Markdown),
        hashes("the bell rang thrice", TextKind::Markdown)
    );
}

#[test]
fn code_is_insensitive_to_whitespace_indentation_and_comments() {
    let base = "fn add(a: u32, b: u32) -> u32 {\n    a + b\n}\n";
    let variants = [
        "fn add(a:u32,b:u32)->u32{a+b}",
        "fn add(\n        a: u32, // first\n        b: u32 /* second */\n) -> u32 {\n\ta + b\n}",
        "/// Adds.\nfn add(a: u32, b: u32) -> u32 { a + b }",
    ];
    let expect = hashes(base, RUST);
    for v in variants {
        assert_eq!(hashes(v, RUST), expect, "variant: {v}");
    }
    // Python comments use `#`.
    assert_eq!(
        hashes("x = f(y)  # why\nreturn x\n", py()),
        hashes("x=f(y)\nreturn x", py())
    );
    // Case matters in code; string literals are kept whole.
    assert_ne!(hashes("let X = 1;", RUST), hashes("let x = 1;", RUST));
    assert_ne!(hashes("s = \"a b\"", RUST), hashes("s = \"a  b\"", RUST));
}

/// A string literal that its line ends (a line of a Python docstring or of a Rust string
/// continued on the next line) leaves out the line's trailing whitespace and a CRLF file's `\r`:
/// before index format 5, re-indenting such code with trailing spaces (a whitespace case of the
/// quality benchmark: a docstring re-indented with tabs) or saving it with CRLF line endings
/// changed those units. Whitespace inside a literal still counts.
#[test]
fn a_string_literal_ended_by_its_line_leaves_out_trailing_whitespace() {
    let base = "def f(names):\n    \"\"\"Removes from names any names\n    used as annotations.\n    \"\"\"\n    return names\n";
    let variants = [
        "def f(names):  \n\t\t\"\"\"Removes from names any names  \n\t\tused as annotations.  \n\t\t\"\"\"  \n\t\treturn names  ",
        "def f(names):\r\n    \"\"\"Removes from names any names\r\n    used as annotations.\r\n    \"\"\"\r\n    return names\r\n",
    ];
    let expect = hashes(base, py());
    for v in variants {
        assert_eq!(hashes(v, py()), expect, "variant: {v:?}");
    }
    // The unit of a line's literal ends at its last non-space character, at the end of the
    // input too.
    let text = "x = \"open to the end \t \r\ny = \"and here  ";
    let units = normalize(text, RUST);
    let strs: Vec<&str> = units
        .iter()
        .map(|u| &text[u.start as usize..u.end() as usize])
        .filter(|t| t.starts_with('"'))
        .collect();
    assert_eq!(strs, ["\"open to the end", "\"and here"]);
    assert_ne!(
        hashes("s = \"a b\n", RUST),
        hashes("s = \"a  b\n", RUST),
        "inner whitespace is the literal's"
    );
}

/// Char literals are one unit where `'` quotes no strings, so a `"` inside one opens no string:
/// before index format 3, `'"'` made the rest of the line one string unit, trailing spaces and
/// all, so re-indenting such a line changed it (a whitespace case of the quality benchmark was
/// missed so). A `'` that closes nothing — a Rust lifetime, a `'\u{…}'` escape — is punctuation
/// as before.
#[test]
fn char_literals_are_units_and_a_quote_inside_one_opens_no_string() {
    let line = "let c = none_of('\"').parse_next(input)?;\nif c == '\\\\' { f('a') }\n";
    let spaced =
        "\t\tlet c = none_of('\"').parse_next( input )?;   \n\t\tif c == '\\\\' {  f( 'a' ) }  \n";
    assert_eq!(hashes(spaced, RUST), hashes(line, RUST));
    let units = normalize(line, RUST);
    let texts: Vec<&str> = units
        .iter()
        .map(|u| &line[u.start as usize..u.end() as usize])
        .collect();
    assert!(
        texts.contains(&"'\"'") && texts.contains(&"'\\\\'") && texts.contains(&"'a'"),
        "{texts:?}"
    );
    assert!(texts.contains(&"parse_next"), "{texts:?}");
    // Lifetimes and unknown escapes: a quote unit, then the rest lexed as before.
    let l = "fn f<'a>(x: &'static str, y: &'a T) -> char { '\\u{41}' }";
    let t: Vec<&str> = normalize(l, RUST)
        .iter()
        .map(|u| &l[u.start as usize..u.end() as usize])
        .collect();
    assert_eq!(&t[2..5], ["<", "'", "a"], "{t:?}");
    assert!(t.contains(&"static") && t.contains(&"41"), "{t:?}");
    // Where `'` quotes strings (Python), nothing changes.
    assert_eq!(hashes("x = 'a' + \"'\"", py()).len(), 5);
}

/// GMP's and Nettle's `.asm` files are m4 input: `dnl` and `C` discard the rest of a line, at
/// its start or after an instruction. Before, those comment lines were lexed as code, so a copy
/// with its comments changed or dropped differed unit for unit.
#[test]
fn m4_comment_words_in_assembly_are_comments() {
    let asm = TextKind::from_path(std::path::Path::new("mpn/x86_64/add_n.asm"));
    let commented = "dnl  AMD64 mpn_add_n -- add two limb vectors.\nC\t     cycles/limb\nC AMD K8,K9\t 1.5\n\tmov\t(up), %r8\tC load the limb\n\tadc\t%r8, (rp)\n\tdnl\n";
    let bare = "\tmov\t(up), %r8\n\tadc\t%r8, (rp)\n";
    assert_eq!(hashes(commented, asm), hashes(bare, asm));
    assert_eq!(hashes(bare, asm).len(), 14);
    // Only the words themselves: `Cx`, `dnl2` and `C` in other languages are names.
    assert_eq!(hashes("Cx dnl2 ; comment", asm).len(), 2);
    assert_eq!(hashes("C x", RUST).len(), 2);
}

/// GNU as (`.s`, `.S`): `//` and `/* */` comments (AArch64, and `.S` files, which go through the
/// C preprocessor) and `#` comment lines (x86) are not code, while `#` inside a line is
/// AArch64's immediate and `;` separates statements. Before, `.s` was read with `;` comments:
/// every comment was code and a copy with its comments changed or dropped differed.
#[test]
fn gnu_assembler_comments_are_comments_and_immediates_are_not() {
    let s = TextKind::from_path(std::path::Path::new("crypto/fipsmodule/armv8-mont.S"));
    assert_eq!(s, TextKind::from_path(std::path::Path::new("x86_64/add.s")));
    let commented = "// This file is generated. Do not edit by hand.\n#include <asm_base.h>\n\
        \t/* save */ stp\tx29,x30,[sp,#-64]!\n  # a comment line\n\tldr\tx9,[x2],#8\t\t// bp[0]\n\
        #if defined(X)\n\tret ; nop\n#endif\n";
    let bare = "stp x29,x30,[sp,#-64]!\nldr x9,[x2],#8\nret ; nop\n";
    assert_eq!(hashes(commented, s), hashes(bare, s));
    // `stp x29 , x30 , [ sp , # - 64 ] !` 13, `ldr x9 , [ x2 ] , # 8` 9, `ret ; nop` 3.
    assert_eq!(hashes(bare, s).len(), 25);
    // The immediates are units: changing one changes the code.
    assert_ne!(hashes(bare, s), hashes(&bare.replace("#8", "#16"), s));
    // A `#` after a unit on its line is not a comment, wherever the line was cut.
    let units = |parts: &[&str]| {
        let mut n = verbatim::normalize::Normalizer::new(s);
        let mut out = Vec::new();
        for p in parts {
            n.push_bytes(p.as_bytes(), &mut out);
        }
        n.finish(&mut out);
        out.iter().map(|u| u.hash).collect::<Vec<_>>()
    };
    let whole = units(&["mov x0, #1\n  # gone\nret\n"]);
    assert_eq!(
        whole,
        units(&["mov x0, ", "#1\n ", " ", "# gone\nr", "et\n"])
    );
    assert_eq!(whole, hashes("mov x0, #1\nret", s));
    assert_eq!(whole.len(), 6);
}

#[test]
fn units_map_back_to_their_bytes() {
    let text = "Héllo, **wörld**!\n```py\nx = 'q' # c\n```\nBye";
    let units = normalize(text, TextKind::Markdown);
    let pieces: Vec<&str> = units
        .iter()
        .map(|u| &text[u.start as usize..u.end() as usize])
        .collect();
    assert_eq!(pieces, ["Héllo", "wörld", "x", "=", "'q'", "Bye"]);
}

#[test]
fn invalid_utf8_acts_as_whitespace_and_keeps_offsets() {
    let mut bytes = b"alpha".to_vec();
    bytes.push(0xff);
    bytes.extend_from_slice(b"beta \xe2\x82 gamma");
    let units = whole(&bytes, TextKind::Markdown);
    let spans: Vec<(u64, u64)> = units.iter().map(|u| (u.start, u.end())).collect();
    assert_eq!(spans, [(0, 5), (6, 10), (14, 19)]);
    assert_eq!(
        units[0].hash,
        normalize("alpha", TextKind::Markdown)[0].hash
    );
    // A sequence cut at the end of the input is invalid, not lost.
    let mut n = Normalizer::new(TextKind::Markdown);
    let mut out = Vec::new();
    n.push_bytes(b"word \xe2", &mut out);
    n.finish(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(n.offset(), 6);
    // The text `scan` hands to the license layer reads the bytes the same way, at the same
    // offsets.
    let text = verbatim::normalize::text_at_same_offsets(&bytes);
    assert_eq!(text, "alpha beta    gamma");
    assert_eq!(normalize(&text, TextKind::Markdown), units);
    assert_eq!(
        verbatim::normalize::text_at_same_offsets(b"word \xe2"),
        "word  "
    );
}

#[test]
fn pending_start_never_passes_an_unfinished_unit() {
    let text = "alpha beta gam";
    let mut n = Normalizer::new(TextKind::Markdown);
    let mut out = Vec::new();
    n.push_str(text, &mut out);
    // "gam" may still grow into "gamma"; "beta" is not final either until whitespace
    // follows it, which it does.
    assert_eq!(
        n.pending_start(),
        10,
        "the space before `gam` and what follows are pending"
    );
    assert_eq!(out.len(), 2);
    n.push_str("ma ", &mut out);
    assert_eq!(out.len(), 3);
    assert_eq!(&text[out[2].start as usize..], "gam");
}

/// The hashes of the code units among `units`.
fn code(units: &[Unit]) -> Vec<u64> {
    units
        .iter()
        .filter(|u| u.channel == verbatim::normalize::Channel::Code)
        .map(|u| u.hash)
        .collect()
}

/// A model copying a file whose doc comment holds a Markdown example, inside a fence of three
/// backticks: the example's fence lines do not end the block, so the answer's code has the
/// file's units. Outside comments, and for an unnamed language, a fence line still closes.
#[test]
fn fence_lines_inside_a_block_comment_are_comment_text() {
    let file = "/**\nAn error.\n\n```rust\nlet e = f();\n```\n*/\npub struct TryFromFloatError {\n    pub(crate) _unused: (),\n}\n";
    let answer = format!("Here it is:\n\n```rs\n{file}```\n\nThat is the struct.\n");
    let md = normalize(&answer, TextKind::Markdown);
    assert_eq!(code(&md), code(&normalize(file, RUST)));
    let prose: Vec<&str> = md
        .iter()
        .filter(|u| u.channel == verbatim::normalize::Channel::Prose)
        .map(|u| &answer[u.start as usize..u.end() as usize])
        .collect();
    assert_eq!(prose, ["Here", "it", "is", "That", "is", "the", "struct"]);

    // An unnamed fence: `/*` may be a glob that never closes, so the fence line closes.
    let shell = "```\nls src/*\n```\nWords after.\n";
    let prose: Vec<&str> = normalize(shell, TextKind::Markdown)
        .iter()
        .filter(|u| u.channel == verbatim::normalize::Channel::Prose)
        .map(|u| &shell[u.start as usize..u.end() as usize])
        .collect();
    assert_eq!(prose, ["Words", "after"]);
}

#[test]
fn plain_prose_has_no_fences_but_markdown_does() {
    // reStructuredText underlines headings with `~~~`; in plain prose that is punctuation.
    let rst = "Heading\n~~~~~~~\n\nSome words here ``code`` and more.\n";
    let prose: Vec<&str> = normalize(rst, TextKind::Prose)
        .iter()
        .map(|u| &rst[u.start as usize..u.end() as usize])
        .collect();
    assert_eq!(
        prose,
        ["Heading", "Some", "words", "here", "code", "and", "more"]
    );
    let md = normalize(rst, TextKind::Markdown);
    assert!(
        md.iter()
            .any(|u| u.channel == verbatim::normalize::Channel::Code)
    );
    assert_eq!(
        TextKind::from_path(std::path::Path::new("a/b.rst.txt")),
        TextKind::Prose
    );
    assert_eq!(
        TextKind::from_path(std::path::Path::new("README.md")),
        TextKind::Markdown
    );
}

mod markdown_lines {
    use proptest::prelude::*;
    use verbatim::normalize::TextKind;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        /// Markdown fed whole (lines that cannot open a fence go to the prose tokenizer in one
        /// piece) and one byte at a time (every line through the fence check) gives the same
        /// units: fences opened and closed by backticks and tildes, indented up to three spaces
        /// or more, code spans and tildes inside lines, comments inside fenced code.
        #[test]
        fn markdown_whole_and_byte_by_byte_agree(
            lines in proptest::collection::vec(
                prop_oneof![
                    "[a-z ,.é]{0,20}",
                    "( {0,4})(```|~~~|````)(rust|py|)",
                    "[a-z ]{0,6}(`[a-z]{1,4}`|~)[a-z ]{0,6}",
                    "( {0,4})(`|~)[a-z]{0,5}",
                    "(/\\*|\\*/|//|#) ?[a-z]{0,8}",
                ],
                0..14,
            ),
        ) {
            let text = lines.join("\n");
            let b = text.as_bytes();
            let every: Vec<usize> = (1..b.len()).collect();
            prop_assert_eq!(super::whole(b, TextKind::Markdown), super::chunked(b, TextKind::Markdown, &every), "{:?}", text);
        }
    }
}

mod ascii_segmentation {
    use proptest::prelude::*;
    use unicode_segmentation::UnicodeSegmentation;
    use verbatim::normalize::{TextKind, normalize};

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]
        /// The ASCII fast path must give exactly the words UAX #29 gives (checked through the
        /// units' byte ranges, which the fast path produces for ASCII input).
        #[test]
        fn ascii_fast_path_equals_uax29(s in "[a-cA-C0-2_.,;:'\" \\n\\r\\t!?()/-]{0,40}") {
            let want: Vec<(usize, usize)> = s
                .unicode_word_indices()
                .map(|(i, w)| (i, i + w.len()))
                .filter(|&(a, b)| s[a..b].trim_matches(|c| c == '_' || c == '\'').chars().any(char::is_alphanumeric))
                .collect();
            let got: Vec<(usize, usize)> = normalize(&s, TextKind::Prose)
                .iter()
                .map(|u| (u.start as usize, u.end() as usize))
                .collect();
            prop_assert_eq!(got, want, "text {:?}", s);
        }

        /// Lines with and without non-ASCII characters, mixed: the ASCII lines between two
        /// non-ASCII ones are segmented together, the others by the general segmenter, and
        /// the words are UAX #29's, at every chunking.
        #[test]
        fn mixed_ascii_and_unicode_lines_segment_as_uax29(
            lines in proptest::collection::vec(
                prop_oneof![
                    "[a-cA-C0-2_.,;:' \t!?-]{0,30}",
                    "[a-cé0-2ßΣ日’. ]{0,12}",
                ],
                0..8,
            ),
            crlf in any::<bool>(),
            cuts in proptest::collection::vec(0usize..400, 0..6),
        ) {
            let s = lines.join(if crlf { "\r\n" } else { "\n" });
            let want: Vec<(usize, usize)> = s
                .unicode_word_indices()
                .map(|(i, w)| (i, i + w.len()))
                .filter(|&(a, b)| s[a..b].trim_matches(|c| c == '_' || c == '\'').chars().any(char::is_alphanumeric))
                .collect();
            let spans = |units: Vec<verbatim::normalize::Unit>| -> Vec<(usize, usize)> {
                units.iter().map(|u| (u.start as usize, u.end() as usize)).collect()
            };
            prop_assert_eq!(spans(normalize(&s, TextKind::Prose)), want.clone(), "text {:?}", s);
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c < s.len()).collect();
            cuts.sort_unstable();
            let mut n = verbatim::normalize::Normalizer::new(TextKind::Prose);
            let mut out = Vec::new();
            let mut from = 0;
            for c in cuts.into_iter().chain([s.len()]) {
                n.push_bytes(&s.as_bytes()[from..c.max(from)], &mut out);
                from = c.max(from);
            }
            n.finish(&mut out);
            prop_assert_eq!(spans(out), want, "text {:?} chunked", s);
        }
    }
}

/// Tool-call arguments: each string value is normalised as the text it holds, at the JSON
/// text's offsets.
mod tool_args {
    use proptest::prelude::*;
    use verbatim::normalize::{Lang, Normalizer, TextKind, Unit, normalize};

    /// `s` as a JSON string literal, as an encoder may write it: every non-ASCII character as
    /// `\uXXXX` (surrogate pairs beyond the BMP) when `ascii`, `/` as `\/` when `slash`.
    fn escape(s: &str, ascii: bool, slash: bool) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '/' if slash => out.push_str("\\/"),
                c if (c as u32) < 0x20 || (ascii && !c.is_ascii()) => {
                    let mut b = [0u16; 2];
                    for u in c.encode_utf16(&mut b) {
                        out.push_str(&format!("\\u{:04x}", u));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    fn units(json: &str, cuts: &[usize]) -> (Vec<Unit>, Vec<u64>) {
        let b = json.as_bytes();
        let mut n = Normalizer::new(TextKind::ToolArgs);
        let mut out = Vec::new();
        let mut pendings = Vec::new();
        let mut from = 0;
        for &c in cuts.iter().filter(|&&c| c < b.len()).chain([&b.len()]) {
            if c < from {
                continue;
            }
            n.push_bytes(&b[from..c], &mut out);
            from = c;
            pendings.push((out.len(), n.pending_start()));
        }
        n.finish(&mut out);
        // Every unit emitted after a pending start was reported starts at or after it.
        for (emitted, p) in &pendings {
            for u in &out[*emitted..] {
                assert!(
                    u.start >= *p,
                    "unit at {} before pending start {p}",
                    u.start
                );
            }
        }
        (out, pendings.iter().map(|p| p.1).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]
        /// A file written through a tool (`{"path": "x.py", "content": "…"}`) has the units
        /// of the file, whatever the encoder escaped and however the JSON is cut; each unit's
        /// JSON bytes are whole escapes that decode to the file's bytes of that unit; and the
        /// normaliser's pending start never passes a unit still to come.
        #[test]
        fn a_file_in_tool_arguments_has_the_files_units(
            content in "([a-z_]{1,6}|[0-9]|[ \t\n]|[\"'#/*(){}=,.\\\\]|é|日|😀| // c\n| # h\n){0,40}",
            ext in prop_oneof![Just("py"), Just("rs"), Just("js"), Just("md")],
            ascii in any::<bool>(),
            slash in any::<bool>(),
            path_key in prop_oneof![Just("path"), Just("file_path"), Just("filename")],
            cuts in proptest::collection::vec(0usize..300, 0..6),
        ) {
            let path = format!("src/a b/x.{ext}");
            let json = format!(
                "{{\"{path_key}\": {}, \"content\": {}}}",
                escape(&path, ascii, slash),
                escape(&content, ascii, slash)
            );
            let kind = TextKind::from_path(std::path::Path::new(&path));
            let want = normalize(&content, kind);
            let body = json.rfind(":").unwrap();
            let mut cuts = cuts;
            cuts.sort_unstable();
            let (got, _) = units(&json, &cuts);
            let got: Vec<Unit> = got.into_iter().filter(|u| u.start as usize > body).collect();
            prop_assert_eq!(
                got.iter().map(|u| (u.hash, u.class, u.channel)).collect::<Vec<_>>(),
                want.iter().map(|u| (u.hash, u.class, u.channel)).collect::<Vec<_>>(),
                "{}", json
            );
            for (g, w) in got.iter().zip(&want) {
                let slice = &json[g.start as usize..g.end() as usize];
                let decoded: String = serde_json::from_str(&format!("\"{slice}\"")).unwrap();
                prop_assert_eq!(&decoded, &content[w.start as usize..w.end() as usize]);
            }
        }
    }

    #[test]
    fn the_kind_of_a_value_comes_from_a_sibling_or_its_key() {
        use super::code;
        let py = "def f(a, b='x y'):\n    # note\n    return a\n";
        let want = code(&normalize(
            py,
            TextKind::Code(Lang::from_name("py").unwrap()),
        ));
        let quoted = serde_json::to_string(py).unwrap();
        // A language named by a sibling value, before the code or in an enclosing object.
        for json in [
            format!(r#"{{"language": "python", "code": {quoted}}}"#),
            format!(r#"{{"file": "m.py", "edits": [{{"old": "", "new": {quoted}}}]}}"#),
        ] {
            assert_eq!(code(&normalize(&json, TextKind::ToolArgs)), want, "{json}");
        }
        // No name: the value's first lines say what it is (here `def `: Python), whatever the
        // key, and however the JSON is cut.
        for json in [
            format!(r#"{{"code": {quoted}}}"#),
            format!(r#"{{"content": {quoted}, "path": "m.py"}}"#),
        ] {
            assert_eq!(code(&normalize(&json, TextKind::ToolArgs)), want, "{json}");
            let every: Vec<usize> = (1..json.len()).collect();
            assert_eq!(units(&json, &every).0, units(&json, &[]).0, "{json}");
        }
        let rust = "use std::fmt;\n\npub fn f(x: &str) -> usize { x.len() } // c\n";
        let json = format!(
            r#"{{"content": {}, "path": "x.rs"}}"#,
            serde_json::to_string(rust).unwrap()
        );
        assert_eq!(
            code(&normalize(&json, TextKind::ToolArgs)),
            code(&normalize(rust, TextKind::Code(Lang::C_LIKE)))
        );
        // A `code` key whose lines say nothing: C-like conventions.
        let plain = "x = compute(a, b) # half\ny = 'q r'\n";
        let json = format!(r#"{{"code": {}}}"#, serde_json::to_string(plain).unwrap());
        assert_eq!(
            code(&normalize(&json, TextKind::ToolArgs)),
            code(&normalize(plain, TextKind::Code(Lang::C_LIKE)))
        );
        // Anything else is Markdown: prose, and fenced code in its fence's language.
        let md = "Some words here.\n\n```python\nx = 1  # one\n```\n";
        let json = serde_json::json!({"answer": md, "n": [1, {"k": null}]}).to_string();
        assert_eq!(
            normalize(&json, TextKind::ToolArgs)
                .iter()
                .map(|u| u.hash)
                .collect::<Vec<_>>(),
            normalize(md, TextKind::Markdown)
                .iter()
                .map(|u| u.hash)
                .collect::<Vec<_>>()
        );
        // A file name after content whose lines say nothing does not change it as it streams…
        let json = format!(
            r#"{{"content": {}, "path": "m.py"}}"#,
            serde_json::to_string(plain).unwrap()
        );
        assert_eq!(
            code(&normalize(&json, TextKind::ToolArgs)),
            Vec::<u64>::new(),
            "read as Markdown: no fence, no code"
        );
        // …but whole arguments can be searched for it first.
        let hint = verbatim::normalize::tool_args_hint(&json);
        assert_eq!(hint, Some(TextKind::Code(Lang::from_name("py").unwrap())));
        let mut n = Normalizer::new(TextKind::ToolArgs);
        n.set_tool_args_hint(hint.unwrap());
        let mut out = Vec::new();
        n.push_str(&json, &mut out);
        n.finish(&mut out);
        // (The file name itself, read as Python too, adds its own units after the content's.)
        let plain_py = code(&normalize(
            plain,
            TextKind::Code(Lang::from_name("py").unwrap()),
        ));
        assert_eq!(code(&out)[..plain_py.len()], plain_py[..]);
        assert_eq!(
            verbatim::normalize::tool_args_hint(r#"{"a": "some words", "b": [1]}"#),
            None
        );
    }

    /// Arguments that do not begin like JSON (a custom tool's free-form input) are read as
    /// Markdown, as they are, however they are cut — leading whitespace included.
    #[test]
    fn free_form_arguments_are_read_as_markdown() {
        for text in [
            "  \n Apply this:\n```rust\nfn main() { let x = 1; }\n```\nand words after it.",
            "*** Begin Patch\n+fn f() {}\n",
        ] {
            let want = normalize(text, TextKind::Markdown);
            assert!(!want.is_empty());
            let every: Vec<usize> = (1..text.len()).collect();
            assert_eq!(units(text, &[]).0, want, "{text:?}");
            assert_eq!(units(text, &every).0, want, "{text:?}");
        }
        assert!(normalize(" \n ", TextKind::ToolArgs).is_empty());
    }

    #[test]
    fn invalid_escapes_and_broken_json_never_fail() {
        for json in [
            r#"{"a": "x\q y \ud800 z \udc00 \u12g4 \"#,
            r#"{"a": "\ud83d\ude00 \ud83d\u0041 \ud83dx"}"#,
            "\"unterminated \\u00",
            "}}]] \"a\" : \"b\" ,, {\"c\"",
            "{\"é\": \"\\\u{e9}\"}",
        ] {
            let b = json.as_bytes();
            let whole = units(json, &[]).0;
            let every: Vec<usize> = (1..b.len()).collect();
            assert_eq!(units(json, &every).0, whole, "{json}");
            for u in &whole {
                assert!(
                    u.start < u.end() && u.end() as usize <= json.len(),
                    "{json}: {u:?}"
                );
                assert!(
                    json.is_char_boundary(u.start as usize)
                        && json.is_char_boundary(u.end() as usize)
                );
            }
        }
    }
}

#[test]
fn a_file_written_as_a_patch_reads_as_the_file() {
    // A file created through a patch tool: every line marked `+`. Its units are the file's,
    // and each maps back to the same text inside the patch. Removed lines, hunk headers and
    // the patch's own lines are not read.
    let file = std::fs::read_to_string("corpora/fixtures/gpl-code/src/ledger.rs").unwrap();
    let patch: String = file.lines().map(|l| format!("+{l}\n")).collect();
    let kind = TextKind::Patch(Lang::C_LIKE);
    let (want, got) = (normalize(&file, RUST), normalize(&patch, kind));
    assert!(want.len() > 100);
    assert_eq!(
        want.iter().map(|u| (u.hash, u.class)).collect::<Vec<_>>(),
        got.iter().map(|u| (u.hash, u.class)).collect::<Vec<_>>()
    );
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(
            &file[w.start as usize..w.end() as usize],
            &patch[g.start as usize..g.end() as usize]
        );
    }
    let edited = format!(
        "*** Begin Patch\n@@ -1,3 +1,3 @@\n-fn gone() {{ removed(); }}\n{patch}\\ No newline at end of file\n*** End Patch\n"
    );
    assert_eq!(hashes(&edited, kind), hashes(&patch, kind));
    // Kept lines (a space) are read too.
    let kept: String = file.lines().map(|l| format!(" {l}\n")).collect();
    assert_eq!(hashes(&kept, kind), hashes(&patch, kind));
}

/// Both readings of `text` (Markdown read as bare code too), pushed in pieces cut at `cuts`:
/// the units and the bare-code units.
fn with_bare(text: &[u8], cuts: &[usize]) -> (Vec<Unit>, Vec<Unit>) {
    let mut n = Normalizer::new(TextKind::Markdown);
    n.set_bare_code(true);
    let (mut out, mut bare) = (Vec::new(), Vec::new());
    let (mut prev, mut pending) = (0, 0);
    for &c in cuts.iter().chain(std::iter::once(&text.len())) {
        n.push_bytes(&text[prev..c], &mut out);
        let made = bare.len();
        n.take_bare(&mut bare);
        // What was final stays so: no later unit of either reading starts before the
        // pending start the last push reported (strict holdback releases up to it).
        assert!(
            bare[made..].iter().all(|u| u.start >= pending),
            "a bare unit before the pending start {pending} of the last push, pushed to {c}"
        );
        pending = n.pending_start();
        prev = c;
    }
    n.finish(&mut out);
    let made = bare.len();
    n.take_bare(&mut bare);
    assert!(bare[made..].iter().all(|u| u.start >= pending));
    (out, bare)
}

/// Both readings of `text` as [`with_bare`] makes them whole, checked to be the same at every
/// split and byte by byte: the units, the bare-code units, and the text of each of those.
fn read_bare(text: &str) -> (Vec<Unit>, Vec<Unit>, Vec<&str>) {
    let bytes = text.as_bytes();
    let whole = with_bare(bytes, &[]);
    for cut in 1..bytes.len() {
        assert_eq!(with_bare(bytes, &[cut]), whole, "split at {cut}");
    }
    let every: Vec<usize> = (1..bytes.len()).collect();
    assert_eq!(with_bare(bytes, &every), whole, "byte by byte");
    let (units, bare) = whole;
    let words = bare
        .iter()
        .map(|u| &text[u.start as usize..u.end() as usize])
        .collect();
    (units, bare, words)
}

/// A chat answer's code pasted without a fence is read as code too, from the line after the
/// first that looks like code, in the language that line shows; the prose reading is the
/// same as without it; fenced code is not read twice; and the units are the same whatever
/// way the text is cut. A prose answer makes no bare-code unit at all.
#[test]
fn markdown_code_outside_fences_is_read_as_code_too() {
    let text = "Here is the module, as you asked:\n\
                \n\
                use std::collections::HashMap;\n\
                /// Adds up what is owed.\n\
                pub fn total(xs: &[u64]) -> u64 {\n    xs.iter().sum() // all of it\n}\n\
                \n\
                And in Python:\n\
                ```python\n\
                def f(x):\n    return x\n\
                ```\n\
                fn after_the_fence() {}\n\
                let total_with_a_long_name = first_value_of_the_ledger(alpha, beta) + second_value(gamma, delta);\n\
                \u{a0}\u{a0}x = f(1) ;  \n\
                Grüße, the end of it all, with a comma, \u{e9}t\u{e9} ) :\n\
                That is all of it, and it should compile.\n\
                Some words that stay prose only\n\
                x = compute(1)\n\
                print(x)\n\
                y = 'a # b'  # a note\n";
    let (units, bare, words) = read_bare(text);
    assert_eq!(
        units,
        normalize(text, TextKind::Markdown),
        "the Markdown reading is unchanged"
    );
    // The `use` line turns the reading on; it starts on the next line. Comments are dropped
    // as code drops them; the prose line between is read as code too (tokens nothing
    // matches); the fenced block is not read again; the reading goes on after the fence.
    let first = words.iter().position(|w| *w == "pub").unwrap();
    assert_eq!(first, 0, "{words:?}");
    assert!(
        !words.contains(&"use") && !words.contains(&"Adds"),
        "{words:?}"
    );
    for w in ["total", "sum", "And", "after_the_fence", "That"] {
        assert!(words.contains(&w), "{w} not in {words:?}");
    }
    assert!(
        !words.contains(&"def") && !words.contains(&"return"),
        "{words:?}"
    );
    // A sentence of prose stops the reading after its line; a statement starts it again
    // from the next line, and a line that shows the language (`print(`: script) sets it, so
    // `#` starts a comment and `'…'` is one string.
    assert!(
        !words.contains(&"Some") && !words.contains(&"compute"),
        "{words:?}"
    );
    let tail: Vec<&str> = words[words.iter().position(|w| *w == "print").unwrap()..].to_vec();
    assert_eq!(tail, ["print", "(", "x", ")", "y", "=", "'a # b'"]);
    assert!(bare.iter().all(|u| u.channel == Channel::Code));
    // The same code in a named fence gives the same units as read bare (the language read
    // from `use …;`: C-like, as `rust` is).
    let code = "pub fn total(xs: &[u64]) -> u64 {\n    xs.iter().sum() // all of it\n}\n";
    let fenced: Vec<u64> = normalize(&format!("```rust\n{code}```\n"), TextKind::Markdown)
        .iter()
        .map(|u| u.hash)
        .collect();
    let bare_code: Vec<u64> = bare
        .iter()
        .take_while(|u| u.start < text.find("\n\nAnd").unwrap() as u64)
        .map(|u| u.hash)
        .collect();
    assert_eq!(bare_code, fenced);
    // A Python answer: `import` says script, so `#` starts a comment.
    let py_text = "Sure:\n\nimport os\nprint(os.sep)  # the separator\n";
    let (_, _, py_words) = read_bare(py_text);
    assert_eq!(py_words, ["print", "(", "os", ".", "sep", ")"]);
    // Prose, lists, a colon-ended line, inline code: never read as code.
    let prose = "The answer, in short:\n\n- first, the keeper rings the bell;\n  then he waits\n\
                 Use `let x = 1;` there. It ends (as it should).\n";
    let (_, none, _) = read_bare(prose);
    assert!(none.is_empty(), "{none:?}");
    // Running text hard-wrapped after code stops the reading on its first line of eight plain
    // words, whatever its case and ending — a quoted license is not read as code (it matched
    // the same text that XML files hold in comments, read as code by a plain lexer). Lines
    // that look like code are never asked: a comment of many words, a long `from … import`.
    let quoted = "    return total;\n}\n\nexpat\n\n  Permission is hereby granted, free of charge, to any person obtaining\n  \
                  a copy of this software and associated documentation files (the\n  \
                  THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR\n\
                  x = ledger(1)\n\
                  # this comment goes on for more than eight plain words in a row\n\
                  from alpha import beta, gamma, delta, epsilon, zeta, theta, iota\n\
                  keep_going(2)\n";
    let (_, _, qw) = read_bare(quoted);
    // Read from the line after `return total;` through the line that stops it (a line is
    // told prose only once it has ended), then from the line after `x = ledger(1)` on.
    assert_eq!(qw.first(), Some(&"}"), "{qw:?}");
    let stop = qw.iter().position(|w| *w == "obtaining").unwrap();
    assert_eq!(qw[stop + 1], "#", "{qw:?}");
    for w in ["copy", "SOFTWARE", "ledger"] {
        assert!(!qw.contains(&w), "{w} read as code: {qw:?}");
    }
    for w in ["comment", "alpha", "iota", "keep_going"] {
        assert!(qw.contains(&w), "{w} not read as code: {qw:?}");
    }
    // A line that opens a comment starts the reading inside that comment: its lines are not
    // read as code (a license block pasted before a file matched license texts held as code).
    let header = "The file, as it is:\n\n/* ========\n * Copyright (c) 1998 The Project.\n \
                  * Redistribution and use in source and binary forms\n */\n\
                  int main(void) { return 0; }\n/* one line */\nint after;\n";
    let (_, _, hw) = read_bare(header);
    assert_eq!(
        hw,
        [
            "int", "main", "(", "void", ")", "{", "return", "0", ";", "}", "int", "after", ";"
        ]
    );
    // A docstring's lines are the code's, however much they look like prose: the reading goes
    // on through them, and stops on running text after the code.
    let py = "Here it is:\n\ndef total(xs):\n    \"\"\"Return the sum of the items in the list, ignoring any that are\n    \
              missing from the ledger or that the caller has marked as void.\n\n    \
              It is what it is, and it works as documented in the whole project.\n    \"\"\"\n    \
              return sum(x for x in xs if x is not None)\n\n\
              The function above adds up the items that are in the ledger and skips\n\
              the ones that the caller marked, as the project asks it to do now\n";
    let (_, _, pw) = read_bare(py);
    let ret = pw
        .iter()
        .position(|w| *w == "return")
        .expect("read through the docstring");
    assert_eq!(pw[ret + 1], "sum", "{pw:?}");
    // The first line of running text is read (a line is told prose once it has ended), the
    // next is not.
    assert!(pw.contains(&"adds") && !pw.contains(&"asks"), "{pw:?}");
}
