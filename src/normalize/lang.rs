//! Which lexical conventions a piece of code follows: its comment syntax and which quote
//! characters open string literals. Chosen from a file extension or a markdown fence's info
//! string. Unknown languages get C-like conventions, the most common family.
//!
//! This is deliberately coarse: the normaliser only needs to drop comments and keep string
//! literals whole, not to parse. The same table serves index build and scan, so a choice made
//! here can never make the two disagree.

/// Lexical family of a programming language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lang {
    /// `//` line comments and `/* */` block comments.
    pub c_comments: bool,
    /// `#` line comments.
    pub hash_comments: bool,
    /// `#` starts a line comment only as the first character of a line that is not blank
    /// (GNU as: x86's comment lines and the C preprocessor's directives in `.S`; elsewhere on
    /// a line `#` is AArch64's immediate, `#16`).
    pub hash_line_comments: bool,
    /// `--` line comments (SQL, Lua, Haskell).
    pub dash_comments: bool,
    /// `;` line comments (Lisps, assembly, ini).
    pub semicolon_comments: bool,
    /// Words that start a line comment where they stand as a whole token: in assembly run
    /// through m4, `dnl` and `C` are macros that discard the rest of the line (GMP's and
    /// Nettle's `.asm` files comment every line so, at its start or after an instruction).
    pub comment_words: &'static [&'static str],
    /// `'...'` is a string literal (Python, JS, shell); otherwise `'` is punctuation, which keeps
    /// Rust lifetimes and C char literals from swallowing the rest of a line.
    pub single_quote_strings: bool,
    /// Where `'` does not quote strings: `'x'` and `'\x'` are one char-literal unit (C, Rust,
    /// Java, Go …), so the `"` in `'"'` opens no string; a `'` that does not close so (a Rust
    /// lifetime) is punctuation as before.
    pub char_literals: bool,
    /// `` `...` `` is a string literal (JS template strings, Go raw strings).
    pub backtick_strings: bool,
    /// Identifiers are names a copier could rename and literals values they could change (the
    /// rename-insensitive channel abstracts them); false for data and configuration formats,
    /// whose keys and values are the content (`[package] name = "x"` in every Cargo.toml).
    pub renames: bool,
}

impl Lang {
    pub const C_LIKE: Lang = Lang {
        c_comments: true,
        hash_comments: false,
        hash_line_comments: false,
        dash_comments: false,
        semicolon_comments: false,
        comment_words: &[],
        single_quote_strings: false,
        char_literals: true,
        backtick_strings: false,
        renames: true,
    };
    /// `#` comments, `'…'` strings: Python, shell, Ruby, Perl, R, Julia …
    pub const SCRIPT: Lang = Lang {
        c_comments: false,
        hash_comments: true,
        hash_line_comments: false,
        dash_comments: false,
        semicolon_comments: false,
        comment_words: &[],
        single_quote_strings: true,
        char_literals: false,
        backtick_strings: false,
        renames: true,
    };
    /// Configuration formats with `#` comments (TOML, YAML, …): lexed as scripts, not renamed.
    const CONFIG: Lang = Lang {
        renames: false,
        ..Lang::SCRIPT
    };
    const JS: Lang = Lang {
        single_quote_strings: true,
        backtick_strings: true,
        ..Lang::C_LIKE
    };
    const GO: Lang = Lang {
        backtick_strings: true,
        ..Lang::C_LIKE
    };
    const PHP: Lang = Lang {
        hash_comments: true,
        single_quote_strings: true,
        ..Lang::C_LIKE
    };
    const SQL: Lang = Lang {
        dash_comments: true,
        single_quote_strings: true,
        ..Lang::C_LIKE
    };
    const LUA: Lang = Lang {
        c_comments: false,
        dash_comments: true,
        single_quote_strings: true,
        ..Lang::C_LIKE
    };
    const HASKELL: Lang = Lang {
        c_comments: false,
        dash_comments: true,
        ..Lang::C_LIKE
    };
    const LISP: Lang = Lang {
        c_comments: false,
        semicolon_comments: true,
        // `'x` quotes a symbol; assembly's `'a'` is rare beside its `;` comments.
        char_literals: false,
        ..Lang::C_LIKE
    };
    /// `.asm`: assembly with `;` comments (NASM, MASM), and m4's (GMP, Nettle).
    const ASM: Lang = Lang {
        comment_words: &["dnl", "C"],
        ..Lang::LISP
    };
    /// `.s` / `.S`: GNU as — `//` and `/* */` comments (AArch64, and `.S` files run through
    /// the C preprocessor), `#` at a line's start (x86 comment lines, preprocessor directives);
    /// `;` separates statements, it starts no comment. ARM32's `@` comments are not stripped
    /// (`@` is part of x86 operands: `@function`, `@plt`).
    const GAS: Lang = Lang {
        hash_line_comments: true,
        // `'c` is a character constant with no closing quote: `'` pairs with nothing.
        char_literals: false,
        ..Lang::C_LIKE
    };
    /// Markup and data formats whose comments we do not strip (`//` appears in URLs).
    const PLAIN: Lang = Lang {
        c_comments: false,
        char_literals: false,
        renames: false,
        ..Lang::C_LIKE
    };
    /// INI files: `;` comments, not renamed.
    const INI: Lang = Lang {
        renames: false,
        ..Lang::LISP
    };

    /// The family for a language name or file extension (case-insensitive), if it is code.
    pub fn from_name(name: &str) -> Option<Lang> {
        let n = name.trim().to_ascii_lowercase();
        let lang = match n.as_str() {
            "rs" | "rust" | "c" | "h" | "cc" | "cpp" | "cxx" | "hpp" | "hh" | "hxx" | "c++"
            | "java" | "cs" | "csharp" | "c#" | "swift" | "kt" | "kts" | "kotlin" | "scala"
            | "sc" | "dart" | "zig" | "v" | "sv" | "verilog" | "proto" | "groovy" | "gradle"
            | "m" | "mm" | "objc" | "objective-c" | "d" | "glsl" | "hlsl" | "cu" | "cuda"
            | "sol" | "solidity" | "css" | "scss" | "less" | "json5" | "jsonc" => Lang::C_LIKE,
            "go" | "golang" => Lang::GO,
            "js" | "mjs" | "cjs" | "jsx" | "javascript" | "ts" | "tsx" | "mts" | "cts"
            | "typescript" | "vue" | "svelte" => Lang::JS,
            "py" | "pyi" | "pyw" | "python" | "python3" | "sh" | "bash" | "zsh" | "fish"
            | "shell" | "console" | "rb" | "ruby" | "pl" | "pm" | "perl" | "r" | "jl" | "julia"
            | "cmake" | "makefile" | "mk" | "make" | "dockerfile" | "nim" | "cr" | "crystal"
            | "ex" | "exs" | "elixir" | "tcl" | "ps1" | "powershell" | "awk" | "sed" | "nix"
            | "gd" | "coffee" | "pyx" => Lang::SCRIPT,
            "toml" | "yaml" | "yml" | "conf" | "cfg" | "properties" => Lang::CONFIG,
            "php" => Lang::PHP,
            "sql" | "psql" | "plsql" | "mysql" | "sqlite" => Lang::SQL,
            "lua" | "ada" | "adb" | "ads" | "vhdl" | "vhd" => Lang::LUA,
            "hs" | "haskell" | "elm" | "purs" | "idr" | "agda" => Lang::HASKELL,
            "lisp" | "lsp" | "cl" | "el" | "elisp" | "clj" | "cljs" | "cljc" | "edn"
            | "clojure" | "scm" | "ss" | "scheme" | "rkt" | "racket" | "fnl" | "nasm" => Lang::LISP,
            "asm" => Lang::ASM,
            "s" | "gas" => Lang::GAS,
            "ini" => Lang::INI,
            "html" | "htm" | "xml" | "xhtml" | "svg" | "json" | "tex" | "latex" | "sty" | "cls"
            | "bib" | "erl" | "hrl" | "erlang" | "ml" | "mli" | "ocaml" | "fs" | "fsi" | "fsx"
            | "fsharp" | "pas" | "pascal" | "f" | "f90" | "f95" | "fortran" | "for" | "bat"
            | "cmd" | "vb" | "vbs" | "matlab" | "octave" | "diff" | "patch" | "code" => Lang::PLAIN,
            _ => return None,
        };
        Some(lang)
    }

    /// The language a fenced block's info string names (its first word, e.g. `rust,ignore`),
    /// if we know it. An empty or unknown info string still means code: the normaliser lexes
    /// it with C-like conventions ([`Lang::C_LIKE`]).
    pub fn named_in_fence_info(info: &str) -> Option<Lang> {
        let first = info
            .trim()
            .split(|c: char| c.is_whitespace() || c == ',' || c == '{' || c == '}')
            .find(|s| !s.is_empty())
            .unwrap_or("");
        Lang::from_name(first)
    }
}

/// What the text of a file or a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextKind {
    /// Prose with markdown fences: fenced blocks are lexed as code. Model output is this.
    Markdown,
    /// Plain prose: no fences (reStructuredText underlines headings with `~~~`).
    Prose,
    /// Code in one language, no fences.
    Code(Lang),
    /// A tool call's arguments: JSON whose string values are each read as the text they hold
    /// (code in the language a sibling file name or `language` value names, else Markdown).
    /// For scanning output; documents are never indexed as this.
    ToolArgs,
    /// A file written as a diff, lines marked `+` (added), ` ` (kept), `-` (removed): the
    /// added and kept lines read as code in one language without their markers, so a file
    /// written through a patch tool matches the file; removed lines, hunk headers (`@@`) and a
    /// patch's own lines (`*** Begin Patch`, `\ No newline at end of file`) are not read. For
    /// scanning output; documents are never indexed as this.
    Patch(Lang),
}

impl TextKind {
    /// How a document of this kind is described in the index (`docs.jsonl`).
    pub fn label(self) -> &'static str {
        match self {
            TextKind::Markdown => "markdown",
            TextKind::Prose => "prose",
            TextKind::Code(_) => "code",
            TextKind::ToolArgs => "tool-args",
            TextKind::Patch(_) => "patch",
        }
    }

    /// Guess from a path: a known code extension (or well-known file name) is code, markdown
    /// extensions are markdown, anything else is plain prose.
    pub fn from_path(path: &std::path::Path) -> TextKind {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match name.as_str() {
            "makefile" | "gnumakefile" | "dockerfile" | "cmakelists.txt" | "build" | "bazel" => {
                return TextKind::Code(Lang::SCRIPT);
            }
            _ => {}
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        if matches!(ext.as_str(), "md" | "markdown" | "mdx" | "mkd" | "mdown") {
            return TextKind::Markdown;
        }
        Lang::from_name(&ext)
            .map(TextKind::Code)
            .unwrap_or(TextKind::Prose)
    }
}
