//! Near-verbatim matching: code copied with identifiers renamed consistently and literals
//! changed is a `renamed` finding; text with a few words changed, inserted or deleted is one
//! `near` finding with its similarity — at every chunking; unrelated or inconsistently renamed
//! code is not `renamed`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use common::{
    IMPORT_BLOCK, Rng, build_index, scan, scan_cuts, shared_corpus, table, vocabulary, write_corpus,
};
use verbatim::index::{Index, Params};
use verbatim::matcher::{Finding, MatchKind};
use verbatim::normalize::{Lang, TextKind, UnitClass, normalize};

const RUST: TextKind = TextKind::Code(Lang::C_LIKE);

/// Real code to copy from: this crate's own sources.
const CODE: &[&str] = &[
    "src/hash.rs",
    "src/normalize/code.rs",
    "src/normalize/prose.rs",
    "src/index/format.rs",
];

struct Fixture {
    _dir: tempfile::TempDir,
    index: Arc<Index>,
    code: Vec<String>,
    prose: Vec<String>,
    outside: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let code: Vec<String> = CODE
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        let vocab = vocabulary('q', 400, 7);
        let mut r = Rng(7);
        let prose: Vec<String> = (0..4)
            .map(|_| {
                (0..400)
                    .map(|_| vocab[r.below(vocab.len())].clone())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let cd: Vec<(String, String)> = code
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("c{i}.rs"), t.clone()))
            .collect();
        let pd: Vec<(String, String)> = prose
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("p{i}.txt"), t.clone()))
            .collect();
        let m1 = write_corpus(dir.path(), "code", "code", "licensed", Some("MIT"), &cd);
        let m2 = write_corpus(dir.path(), "prose", "prose", "copyrighted", None, &pd);
        let index = build_index(dir.path(), &[m1, m2], Params::default());
        Fixture {
            _dir: dir,
            index,
            code,
            prose,
            outside: vocabulary('z', 300, 11),
        }
    })
}

/// `text[a..b]` with every identifier renamed (consistently if `consistent`, else a fresh name
/// per occurrence) and every number changed; identifiers and literals as the normaliser
/// classifies them, so keywords stay.
fn rename(text: &str, consistent: bool) -> String {
    rename_with(text, consistent, true)
}

/// [`rename`], with numbers kept unless `numbers`.
fn rename_with(text: &str, consistent: bool, numbers: bool) -> String {
    let units = normalize(text, RUST);
    let mut out = String::new();
    let mut names: HashMap<&str, String> = HashMap::new();
    let mut at = 0usize;
    for (n, u) in units.iter().enumerate() {
        let (s, e) = (u.start as usize, u.end() as usize);
        let tok = &text[s..e];
        let new = match u.class {
            UnitClass::Ident if consistent => {
                let next = names.len();
                names
                    .entry(tok)
                    .or_insert_with(|| format!("renamed_{next}"))
                    .clone()
            }
            UnitClass::Ident => format!("fresh_{n}"),
            UnitClass::Number if numbers => format!("{}", n % 7 + 100),
            _ => continue,
        };
        out.push_str(&text[at..s]);
        out.push_str(&new);
        at = e;
    }
    out.push_str(&text[at..]);
    out
}

/// A window of `len` units of `doc` starting near unit `a`, as its byte range.
fn window(doc: &str, kind: TextKind, a: usize, len: usize) -> (usize, usize) {
    let units = normalize(doc, kind);
    let a = a % (units.len() - len);
    (units[a].start as usize, units[a + len - 1].end() as usize)
}

fn cuts(len: usize, r: &mut Rng) -> Vec<Vec<usize>> {
    let mut random: Vec<usize> = (0..r.below(60)).map(|_| r.below(len + 1)).collect();
    random.sort_unstable();
    vec![(1..len).collect(), random]
}

/// Scans at every chunking and checks they agree; returns the findings.
fn scan_all(text: &str, kind: TextKind, r: &mut Rng) -> Vec<Finding> {
    let f = fixture();
    let whole = scan(&f.index, kind, text);
    for c in cuts(text.len(), r) {
        let got = scan_cuts(&f.index, kind, text.as_bytes(), &c);
        assert_eq!(got, whole, "chunking changed the findings");
    }
    whole
}

#[test]
fn consistently_renamed_code_is_a_renamed_finding() {
    let f = fixture();
    let mut r = Rng(3);
    let mut tried = 0;
    for (d, doc) in f.code.iter().enumerate() {
        // (Unit 902 of prose.rs is inside a periodic table of Unicode ranges, where a renamed
        // alignment can lock on a row too early and come out as `near`: not a start used here.)
        for a in [0usize, 137, 411, 700, 1500] {
            let (s, e) = window(doc, RUST, a, 120);
            let copy = rename(&doc[s..e], true);
            if copy == doc[s..e] {
                continue; // nothing to rename in this window
            }
            tried += 1;
            let text = format!("Here is the function:\n\n```rust\n{copy}\n```\n\nHope it helps.");
            let got = scan_all(&text, TextKind::Markdown, &mut r);
            // The longest: a shorter alignment with a look-alike function of the same file
            // (`is_ident_start` and `is_ident_continue` have one shape) may be reported too.
            let hit = got
                .iter()
                .filter(|g| g.doc as usize == d && g.kind == MatchKind::Renamed)
                .max_by_key(|g| g.units)
                .unwrap_or_else(|| panic!("doc {d} at {a}: no renamed finding in {got:?}"));
            // Nearly all of the 120 units: a run starts and ends on an equal unit, so renamed
            // names at its very edges may fall outside it.
            assert!(hit.units >= 100, "doc {d} at {a}: {hit:?}");
            assert_eq!(hit.similarity(), 1.0);
            assert!(
                got.iter()
                    .all(|g| g.kind != MatchKind::Exact || g.doc as usize != d),
                "the exact channel reported the renamed copy separately: {got:?}"
            );
        }
    }
    assert!(tried >= 15, "only {tried} windows had names to rename");
}

/// A renamed copy with one token changed in its middle is one gapped run whose exact pieces
/// are all shorter than `t` (names are renamed every few tokens): it is reported whole, as
/// `near`, because a stretch of it without a gap is long enough to be a renamed finding. Before,
/// the gapped run was judged by its longest exact piece alone and nothing was reported (a
/// 200-unit renamed copy of pylint's `bump_changelog.py` in the quality benchmark, whose run
/// reached a few units into the text before it across a gap).
#[test]
fn a_renamed_copy_with_a_token_changed_is_one_near_finding() {
    let f = fixture();
    let mut r = Rng(8);
    let (mut tried, mut no_exact_piece) = (0, 0);
    for (d, doc) in f.code.iter().enumerate() {
        for a in [0usize, 137, 411, 700, 1500] {
            let (s, e) = window(doc, RUST, a, 220);
            let units = normalize(&doc[s..e], RUST);
            // The first `;` past the middle followed by two tokens that are not names or
            // literals (`; } }`, `; )`…) becomes `,`: the two realign the run after the change
            // (names renamed cannot).
            let Some(semi) = units[110..].windows(3).find_map(|w| {
                (&doc[s..e][w[0].start as usize..w[0].end() as usize] == ";"
                    && w[1..].iter().all(|u| u.class == UnitClass::Other))
                .then_some(&w[0])
            }) else {
                continue;
            };
            let at = semi.start as usize;
            let edited = format!("{},{}", &doc[s..e][..at], &doc[s..e][at + 1..]);
            let copy = rename(&edited, true);
            if copy == edited {
                continue; // nothing to rename in this window
            }
            tried += 1;
            let got = scan_all(&copy, RUST, &mut r);
            let hit = got
                .iter()
                .filter(|g| g.doc as usize == d)
                .max_by_key(|g| g.units)
                .unwrap_or_else(|| panic!("doc {d} at {a}: nothing found in {got:?}"));
            // One finding across the change (the renamed copy's comma is at the same byte).
            assert!(
                hit.output_start < at as u64 && hit.output_end > at as u64 + 1,
                "doc {d} at {a}: the change splits the copy: {got:?}"
            );
            assert!(hit.units >= 180, "doc {d} at {a}: {hit:?}");
            assert!(
                matches!(hit.kind, MatchKind::Near | MatchKind::Renamed),
                "{hit:?}"
            );
            if hit.kind == MatchKind::Near && hit.longest < 23 {
                no_exact_piece += 1;
                assert!(hit.similarity() > 0.95, "{hit:?}");
            }
        }
    }
    assert!(tried >= 12, "only {tried} windows tried");
    // The case this test is for: no exact piece of t to carry the gapped run.
    assert!(
        no_exact_piece >= 5,
        "only {no_exact_piece} without an exact piece of t"
    );
}

#[test]
fn inconsistently_renamed_code_is_not_a_renamed_finding() {
    // A fresh name for every occurrence breaks the bijection wherever a name occurs twice: the
    // copy may still show as a gapped `near` run (it keeps every keyword and operator), but a
    // `renamed` run may only cover source stretches in which every name occurs once (a list of
    // constants — there a fresh name per occurrence *is* a consistent renaming).
    let f = fixture();
    let mut r = Rng(4);
    let mut checked = 0;
    for (d, doc) in f.code.iter().enumerate() {
        let units = normalize(doc, RUST);
        let (s, e) = window(doc, RUST, 300, 150);
        let copy = rename(&doc[s..e], false);
        for g in scan_all(&copy, RUST, &mut r) {
            if g.kind != MatchKind::Renamed || g.doc as usize != d {
                continue;
            }
            let span = &units[g.doc_unit_start as usize..][..g.source_units as usize];
            let mut names: Vec<u64> = span
                .iter()
                .filter(|u| u.class == UnitClass::Ident)
                .map(|u| u.hash)
                .collect();
            let n = names.len();
            names.sort_unstable();
            names.dedup();
            assert_eq!(
                names.len(),
                n,
                "doc {d}: a renamed run across a repeated name: {g:?}"
            );
            checked += 1;
        }
    }
    // Lists of constants in these sources do give renamed runs, so the check above ran on
    // some: if none came out, this test would no longer test anything.
    assert!(checked > 0, "no renamed run to check");
}

#[test]
fn prose_with_words_changed_is_one_near_finding() {
    let f = fixture();
    let mut r = Rng(5);
    for (d, doc) in f.prose.iter().enumerate() {
        for a in [10usize, 120, 250] {
            let words: Vec<&str> = doc.split(' ').skip(a).take(80).collect();
            // Change every 15th word, drop one word, insert one: about 8 % edits.
            let mut edited: Vec<String> = Vec::new();
            for (i, w) in words.iter().enumerate() {
                match i {
                    40 => continue,
                    55 => {
                        edited.push(f.outside[i].clone());
                        edited.push(w.to_string());
                    }
                    _ if i % 15 == 7 => edited.push(f.outside[i].clone()),
                    _ => edited.push(w.to_string()),
                }
            }
            let text = format!("{} {} {}", f.outside[d], edited.join(" "), f.outside[d + 1]);
            let got = scan_all(&text, TextKind::Markdown, &mut r);
            assert_eq!(got.len(), 1, "doc {d} at {a}: {got:?}");
            let g = &got[0];
            assert_eq!((g.doc as usize, g.kind), (d + CODE.len(), MatchKind::Near));
            // The whole edited region, from its first word to its last.
            let first = text.find(words[0]).unwrap() as u64;
            let last = text.rfind(words[79]).unwrap() + words[79].len();
            assert_eq!(
                (g.output_start, g.output_end),
                (first, last as u64),
                "{g:?}"
            );
            let sim = g.similarity();
            assert!((0.85..1.0).contains(&sim), "similarity {sim}");
            assert_eq!(g.source_units, 80);
        }
    }
}

#[test]
fn a_changed_word_does_not_split_an_exact_copy_into_pieces() {
    let f = fixture();
    let doc = &f.prose[1];
    let words: Vec<&str> = doc.split(' ').skip(30).take(40).collect();
    let mut edited = words.clone();
    edited[20] = "zebra";
    let got = scan(&f.index, TextKind::Prose, &edited.join(" "));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].units, got[0].matched, got[0].source_units),
        (40, 39, 40)
    );
    assert!((got[0].similarity() - 0.975).abs() < 1e-9);
}

#[test]
fn unrelated_code_and_text_give_nothing() {
    let f = fixture();
    // Code of the same language and idioms that is not in the index: this test file.
    let own = std::fs::read_to_string("tests/near.rs").unwrap();
    let got = scan(&f.index, RUST, &own);
    assert!(
        got.iter().all(|g| g.units < 40),
        "findings in unrelated code: {got:?}"
    );
    let vocab = vocabulary('q', 400, 7);
    let mut r = Rng(9);
    let text: String = (0..600)
        .map(|_| format!("{} ", vocab[r.below(vocab.len())]))
        .collect();
    assert!(scan(&f.index, TextKind::Prose, &text).is_empty());
}

#[test]
fn a_renamed_copy_of_code_the_caller_supplied_is_marked_as_such() {
    // "Rename the variables in this function I pasted": the answer is a renamed copy of indexed
    // code, but of the caller's own text, so it is marked caller-supplied (policy decides).
    let f = fixture();
    let (s, e) = window(&f.code[0], RUST, 137, 120);
    let pasted = format!("```rust\n{}\n```", &f.code[0][s..e]);
    let answer = format!("```rust\n{}\n```", rename(&f.code[0][s..e], true));
    let exempt = verbatim::matcher::exemptions([pasted.as_str()], std::slice::from_ref(&f.index));
    let mut sc =
        verbatim::matcher::Scanner::new(std::slice::from_ref(&f.index), TextKind::Markdown);
    sc.set_exemptions(Arc::new(exempt));
    sc.push_str(&answer);
    sc.finish();
    let got = sc.take_findings();
    let renamed: Vec<&Finding> = got
        .iter()
        .filter(|g| g.kind == MatchKind::Renamed)
        .collect();
    assert!(!renamed.is_empty(), "{got:?}");
    assert!(renamed.iter().all(|g| g.caller_supplied), "{got:?}");
}

/// A table of constants of one form followed by a short function, as generated bindings are.
#[test]
fn a_list_matches_any_list_of_its_form_so_only_an_exact_copy_of_one_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let own = std::fs::read_to_string("src/hash.rs").unwrap();
    // Documents are numbered in path order: 0 is hash.rs, 1 the table.
    let docs = vec![
        ("table.rs".to_string(), table("VM_MEMORY", "c_uint", 40)),
        ("hash.rs".to_string(), own.clone()),
    ];
    let m = write_corpus(dir.path(), "code", "code", "licensed", Some("MIT"), &docs);
    let index = build_index(dir.path(), &[m], Params::default());

    // Another table of the same form: every name, type and value differs, the shape is the
    // same. Not a renamed copy of anything.
    let other = table("GDI_HANDLE", "ULONG", 30);
    let got = scan(&index, RUST, &other);
    assert!(got.is_empty(), "{got:?}");
    // Nor with a token changed in it: a gapped run is judged by its stretches without a gap,
    // each again a list of that form.
    let got = scan(
        &index,
        RUST,
        &other.replacen(";\n", ",\n", 15).replacen(",\n", ";\n", 14),
    );
    assert!(got.is_empty(), "{got:?}");
    // Its structure is one row (and the function), however long the list.
    let s = |t: &str| {
        verbatim::matcher::structure_of(normalize(t, RUST).iter().map(|u| (u.hash, u.class)))
    };
    let (rows10, rows30) = (s(&table("A", "u8", 10)), s(&table("A", "u8", 30)));
    assert_eq!(rows10, rows30, "a longer list added structure");
    assert!(rows30 < 39, "{rows30}");

    // The table copied exactly is found, exactly.
    let original = table("VM_MEMORY", "c_uint", 40);
    let got = scan(&index, RUST, &original);
    assert!(
        got.iter()
            .any(|g| g.kind == MatchKind::Exact && g.doc == 1 && g.units >= 200),
        "{got:?}"
    );

    // The table with every value changed and its names kept is a copy of its names in their
    // order: a renamed finding (one of the renamed channel's; its literals changed).
    let revalued = original.replace(" = ", " = 9");
    let got = scan(&index, RUST, &revalued);
    assert!(
        got.iter()
            .any(|g| g.kind == MatchKind::Renamed && g.doc == 1 && g.units >= 200),
        "{got:?}"
    );
    // The same with its type renamed is again a list of that form and nothing more.
    let got = scan(&index, RUST, &revalued.replace("c_uint", "c_ulong"));
    assert!(got.is_empty(), "{got:?}");

    // Code that does not repeat itself keeps all of its structure (here `RollingKgram::new`
    // and the start of its methods), and a renamed copy of it is still a renamed finding in
    // this index.
    let at = own.find("impl RollingKgram").unwrap() as u64;
    let first = normalize(&own, RUST)
        .iter()
        .position(|u| u.start >= at)
        .unwrap();
    let (a, b) = window(&own, RUST, first, 100);
    let n = normalize(&own[a..b], RUST).len() as u32;
    assert!(s(&own[a..b]) >= n * 9 / 10, "{} of {n}", s(&own[a..b]));
    let got = scan(&index, RUST, &rename(&own[a..b], true));
    assert!(
        got.iter()
            .any(|g| g.kind == MatchKind::Renamed && g.doc == 0 && g.units >= 80),
        "{got:?}"
    );
}

/// Test vectors as crates keep them: test functions of rows of one form, each row with
/// literals of its own.
fn vectors(n_fns: usize, seed: u64) -> String {
    let mut r = Rng(seed);
    let mut s = String::from("use super::*;\n\n");
    for f in 0..n_fns {
        s += &format!("#[test]\nfn parse_case_{f}() {{\n");
        for _ in 0..6 {
            s += &format!(
                "    check!(parse::<f64>(\"{}.{}e{}\", {}), ({}, 0x{:x}));\n",
                r.below(1000),
                r.below(100),
                r.below(300),
                r.below(2),
                r.below(100_000),
                r.below(1 << 20),
            );
        }
        s += "}\n\n";
    }
    s
}

/// Constants as generated bindings declare them: `impl` blocks of one form, the values
/// counting up from zero in each.
fn enums(n_blocks: usize) -> String {
    let mut s = String::new();
    for b in 0..n_blocks {
        s += &format!("impl Kind{b} {{\n");
        for v in 0..6 {
            s += &format!("    pub const VARIANT_{b}_{v}: Self = Self({v});\n");
        }
        s += "}\n\n";
    }
    s
}

/// Functions `from..to` of a [`vectors`] or [`enums`] text, with its names renamed and its
/// literals kept; and the span of source units they occupy.
fn rows(doc: &str, header: &str, from: usize, to: usize) -> (String, u32, u32) {
    let (a, b) = (
        doc.find(&format!("{header}{from}")).unwrap(),
        doc.find(&format!("{header}{to}")).unwrap(),
    );
    let units = normalize(doc, RUST);
    let unit = |at: usize| units.iter().position(|u| u.start as usize >= at).unwrap() as u32;
    let copy = rename_with(&doc[a..b], true, false);
    assert!(copy.contains("renamed_"), "{copy}");
    (copy, unit(a), unit(b))
}

#[test]
fn a_renamed_copy_of_a_list_is_found_by_its_long_literals() {
    // Every test function has the same shape, so the renaming of one matches the renaming of
    // any other: only the literals say which rows were copied. Names renamed, literals kept:
    // a renamed copy of those rows, aligned with them. The same rows with other values: a
    // list of that form, like any other — not a renamed copy. Enum constants counting up
    // from zero, renamed: short literals are what independently written lists of one form
    // share (generated bindings do exactly this), so not a renamed copy either.
    let dir = tempfile::tempdir().unwrap();
    let own = std::fs::read_to_string("src/hash.rs").unwrap();
    let docs = vec![
        ("enums.rs".to_string(), enums(12)),
        ("hash.rs".to_string(), own),
        ("vectors.rs".to_string(), vectors(12, 5)),
    ];
    let m = write_corpus(dir.path(), "code", "code", "licensed", Some("MIT"), &docs);
    let index = build_index(dir.path(), &[m], Params::default());
    let renamed = |got: &[Finding], doc: u32| -> Vec<Finding> {
        got.iter()
            .filter(|g| g.kind == MatchKind::Renamed && g.doc == doc)
            .cloned()
            .collect()
    };

    let (copy, ua, ub) = rows(&vectors(12, 5), "#[test]\nfn parse_case_", 6, 10);
    let cuts: Vec<usize> = (1..copy.len()).collect();
    for got in [
        scan(&index, RUST, &copy),
        scan_cuts(&index, RUST, copy.as_bytes(), &cuts),
    ] {
        let found = renamed(&got, 2);
        assert!(
            found.iter().any(|g| g.units >= 150),
            "no renamed finding of the rows: {got:?}"
        );
        for g in &found {
            let (s, e) = (g.doc_unit_start, g.doc_unit_start + g.source_units);
            assert!(
                s >= ua && e <= ub,
                "aligned with other rows ({s}..{e}, copied {ua}..{ub})"
            );
        }
    }

    let (other, _, _) = rows(&vectors(12, 99), "#[test]\nfn parse_case_", 6, 10);
    let got = scan(&index, RUST, &other);
    assert!(renamed(&got, 2).is_empty(), "{got:?}");

    let (consts, _, _) = rows(&enums(12), "impl Kind", 6, 10);
    let got = scan(&index, RUST, &consts);
    assert!(renamed(&got, 0).is_empty(), "{got:?}");
}

#[test]
fn a_passage_in_many_documents_is_found_when_copied_exactly_but_is_no_evidence_of_a_near_copy() {
    // The same 60 words in 48 documents, each at its own offset: every k-gram of it is sampled
    // in about 48 / p documents (fewer than the common threshold of 32, so exact copies are
    // still guaranteed), and it occurs in about 48 (more than 32): boilerplate, not evidence
    // that an edited copy is a copy.
    let dir = tempfile::tempdir().unwrap();
    let vocab = vocabulary('b', 500, 21);
    let mut r = Rng(21);
    let mut words = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| vocab[r.below(vocab.len())].clone())
            .collect()
    };
    let passage = words(60);
    let docs: Vec<(String, String)> = (0..48)
        .map(|i| {
            let text = [words(5 + i % 17), passage.clone(), words(40)]
                .concat()
                .join(" ");
            (format!("d{i}.txt"), text)
        })
        .collect();
    let m = write_corpus(dir.path(), "prose", "prose", "copyrighted", None, &docs);
    let index = build_index(dir.path(), &[m], Params::default());
    let outside = vocabulary('z', 50, 22);

    let exact = format!("{} {} {}", outside[0], passage.join(" "), outside[1]);
    let got = scan(&index, TextKind::Prose, &exact);
    assert!(
        got.iter()
            .any(|g| g.kind == MatchKind::Exact && g.units == 60),
        "{got:?}"
    );
    let hit = got.iter().find(|g| g.units == 60).unwrap();
    assert!(hit.key_docs >= 32, "{hit:?}");

    // Two words changed: the whole is not a near copy, and the pieces between the changes
    // (19 and 20 words, under twice t) are short texts that 48 documents hold: boilerplate,
    // not reported either (`Finding::widely_shared`; they were, as exact runs, before).
    let mut edited = passage.clone();
    edited[20] = outside[2].clone();
    edited[40] = outside[3].clone();
    let text = format!("{} {} {}", outside[0], edited.join(" "), outside[1]);
    let got = scan(&index, TextKind::Prose, &text);
    assert!(got.is_empty(), "{got:?}");

    // The same edit of a passage in one document is a near copy.
    let single = &docs[0].1;
    let mut one: Vec<String> = single.split(' ').map(str::to_string).collect();
    one[25] = outside[2].clone();
    one[45] = outside[3].clone();
    let got = scan(&index, TextKind::Prose, &one[..].join(" "));
    assert!(got.iter().any(|g| g.kind == MatchKind::Near), "{got:?}");
}

#[test]
fn an_exact_run_followed_by_a_renamed_name_is_still_reported() {
    // 30 units copied exactly, then one name renamed, then a few equal units: the alignment is
    // a renamed run of 34 units, too short to be reported as renamed (39) — its exact piece of
    // 30 (≥ t = 23) must still be reported, as it would be without the renamed channel.
    let f = fixture();
    let mut checked = 0;
    for (d, doc) in f.code.iter().enumerate() {
        let units = normalize(doc, RUST);
        for a in (0..units.len() - 40).step_by(23) {
            let w = &units[a..a + 34];
            let target = &w[30];
            if target.class != UnitClass::Ident
                || w.iter()
                    .enumerate()
                    .any(|(i, u)| i != 30 && u.hash == target.hash)
            {
                continue;
            }
            let (s, e) = (w[0].start as usize, w[33].end() as usize);
            let (ts, te) = (target.start as usize, target.end() as usize);
            let text = format!("{}zzz_renamed{}", &doc[s..ts], &doc[te..e]);
            let got = scan(&f.index, RUST, &text);
            assert!(
                got.iter().any(|g| g.doc as usize == d && g.units >= 30),
                "doc {d} at unit {a}: {got:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} windows checked");
}

/// An exact copy preceded in the output by another name where the source has a name `p` that
/// occurs again inside the copy: the left extension pairs the other name with `p` as a
/// renaming, but that unit is left of the run's first equal unit, not part of it — so the later
/// `p` must still match itself and the copy be one exact finding. Before, the dropped pairing
/// made the later `p` differ (a 24-unit copy of tantivy's bucket code in the quality benchmark
/// was not found at all).
#[test]
fn a_renaming_left_of_an_exact_run_does_not_break_it() {
    let f = fixture();
    let mut checked = 0;
    for (d, doc) in f.code.iter().enumerate() {
        let units = normalize(doc, RUST);
        for a in (1..units.len().saturating_sub(45)).step_by(7) {
            let (before, w) = (&units[a - 1], &units[a..a + 40]);
            // The name before the copy occurs again in its last 12 units, and not earlier.
            let again = w.iter().position(|u| u.hash == before.hash);
            if before.class != UnitClass::Ident || again.is_none_or(|i| i < 28) {
                continue;
            }
            let (s, e) = (w[0].start as usize, w[39].end() as usize);
            let text = format!("zzz_other {}", &doc[s..e]);
            let got = scan(&f.index, RUST, &text);
            assert!(
                got.iter()
                    .any(|g| g.doc as usize == d && g.kind == MatchKind::Exact && g.units >= 40),
                "doc {d} at unit {a}: {got:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} windows checked");
}

/// Code of one shape in `n` documents, each with its own names, between code of its own, at
/// offsets that cover every residue modulo the renamed channel's p = 6 equally: each of its
/// keys is sampled in `n / 6` documents. With 42, that is 7 — fewer than the 8 that make a
/// rename-insensitive key common in the index (32 / 4) — and estimated at 42 documents, more
/// than the common threshold of 32.
fn shape_corpus(n: usize) -> (tempfile::TempDir, Arc<Index>) {
    let dir = tempfile::tempdir().unwrap();
    let docs: Vec<(String, String)> = (0..n)
        .map(|i| {
            let own = |tag: &str, extra: usize| {
                (0..8 + extra)
                    .map(|j| {
                        format!(
                            "fn {tag}_{i}_{j}(x: u{}) -> bool {{ x > {j} }}\n",
                            8 << (j % 4)
                        )
                    })
                    .collect::<String>()
            };
            // `;` is one unit: offsets 0–5 modulo 6.
            let text = format!(
                "{}{}{}{}",
                own("head", 0),
                ";".repeat(i % 6),
                shape(i),
                own("tail", 0)
            );
            (format!("d{i}.rs"), text)
        })
        .collect();
    let m = write_corpus(dir.path(), "code", "code", "licensed", Some("MIT"), &docs);
    let index = build_index(dir.path(), &[m], Params::default());
    (dir, index)
}

fn shape(n: usize) -> String {
    format!(
        "pub fn get_{n}(cfg_{n}: &Config{n}, key_{n}: u32) -> Option<Value{n}> {{\n    let entry_{n} = cfg_{n}.table_{n}.lookup(key_{n} + 1);\n    if entry_{n}.is_valid() && !cfg_{n}.frozen_{n} {{\n        return Some(entry_{n}.value_{n}.clone());\n    }}\n    for alt_{n} in cfg_{n}.fallbacks_{n}.iter() {{\n        if let Some(v_{n}) = alt_{n}.find_{n}(key_{n}) {{\n            return Some(v_{n});\n        }}\n    }}\n    None\n}}\n"
    )
}

/// The most runs open at once while `text` is pushed a few bytes at a time.
fn most_open_runs(index: &Arc<Index>, text: &str) -> usize {
    let mut s = verbatim::matcher::Scanner::new(std::slice::from_ref(index), RUST);
    let mut most = 0;
    for piece in text.as_bytes().chunks(8) {
        s.push_bytes(piece);
        most = most.max(s.open_runs().count());
    }
    s.finish();
    most
}

/// A shape of code in many documents (42, each with its own names) is boilerplate to the
/// rename-insensitive channel: a renamed copy of it opens no runs (it used to open one per
/// document sharing the shape, none of them reportable — most of what made held-out code slow
/// to scan), and it is not reported. The same shape in three documents opens runs and is a
/// renamed finding.
#[test]
fn a_shape_in_many_documents_opens_no_renamed_runs() {
    let copy = shape(999);
    let (_d, many) = shape_corpus(42);
    assert_eq!(most_open_runs(&many, &copy), 0);
    assert!(scan(&many, RUST, &copy).is_empty());

    let (_d, few) = shape_corpus(3);
    assert!(most_open_runs(&few, &copy) >= 3);
    let got = scan(&few, RUST, &copy);
    assert!(got.iter().any(|g| g.kind == MatchKind::Renamed), "{got:?}");
}

/// The index leaves out the rename-insensitive keys the matcher would drop: the shape's keys,
/// sampled in 7 of 42 documents (estimated at 42, over the common threshold of 32), are marked
/// common at build and kept out of the filter and the postings — before, only keys sampled in
/// 8 or more were (32 / 4), and these were found, looked up and dropped at every probe. Keys
/// sampled in 5 documents (estimated at 30) are kept and still open runs.
#[test]
fn renamed_keys_the_matcher_would_drop_are_common_in_the_index() {
    let (_d, many) = shape_corpus(42);
    let common: Vec<u32> = many.common_keys().map(|(_, docs)| docs).collect();
    assert!(common.contains(&7), "{common:?}");
    let (_d, fewer) = shape_corpus(30);
    assert!(fewer.common_keys().all(|(_, docs)| docs >= 6));
    assert!(most_open_runs(&fewer, &shape(999)) > 0);
}

/// A short text many documents hold whole is boilerplate, not a copy of any one of them: a
/// standard import block (25 units, t = 23) in 40 documents is not reported (it was, once per
/// document: a scan of warp's `filter/then.rs` against the crates index reported the same
/// three lines in 138 files). In 20 documents it is, in each. A long text in 40 documents (a
/// file vendored into many crates) still is, and so is a longer copy of one of them that
/// holds the block.
#[test]
fn a_short_text_many_documents_hold_is_not_reported_a_long_one_is() {
    let block = IMPORT_BLOCK;
    let output =
        format!("fn main() {{ println!(\"hi\"); }}\n{block}fn shout(y: u64) -> u64 {{ y * 7 }}\n");

    let (_d, many, whole) = shared_corpus(40, block);
    let got = scan(&many, RUST, &output);
    assert!(got.is_empty(), "{got:?}");
    // Asked for, they are reported, marked.
    let mut sc = verbatim::matcher::Scanner::new(std::slice::from_ref(&many), RUST);
    sc.set_report_shared(true);
    sc.push_str(&output);
    sc.finish();
    let shared = sc.take_findings();
    assert_eq!(shared.len(), 40, "{shared:?}");
    assert!(shared.iter().all(|f| f.widely_shared));
    // While the runs are still open, as the proxy judges them (it does not judge these).
    let mut sc = verbatim::matcher::Scanner::new(std::slice::from_ref(&many), RUST);
    sc.push_str(&format!("fn main() {{ println!(\"hi\"); }}\n{block}"));
    let open: Vec<Finding> = sc.open_runs().map(|r| sc.open_finding(&r)).collect();
    assert_eq!(open.len(), 40, "{open:?}");
    assert!(open.iter().all(|f| f.widely_shared), "{open:?}");
    let got = scan(&many, RUST, &format!("// a copy\n{whole}"));
    assert!(got.iter().any(|g| g.doc == 0 && g.units > 25), "{got:?}");

    let (_d, some, _) = shared_corpus(20, block);
    let got = scan(&some, RUST, &output);
    assert_eq!(got.len(), 20, "{got:?}");
    assert!(
        got.iter()
            .all(|g| g.kind == MatchKind::Exact && g.units >= 25),
        "{got:?}"
    );

    let long = format!(
        "{block}pub struct Ticker {{ count: u64, limit: u64 }}\nimpl Ticker {{\n    pub fn tick(&mut self) -> bool {{ self.count += 1; self.count >= self.limit }}\n}}\n"
    );
    let (_d, vendored, _) = shared_corpus(40, &long);
    let got = scan(&vendored, RUST, &format!("fn main() {{}}\n{long}"));
    assert!(got.len() >= 32, "{} findings: {got:?}", got.len());
}

/// `impl fmt::Display for {ty}` matching on its variants, one `write!` arm each.
fn display_match(ty: &str, variants: &[(String, String)]) -> String {
    let mut s = format!(
        "impl fmt::Display for {ty} {{\n    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {{\n        match *self {{\n"
    );
    for (v, text) in variants {
        s += &format!("            {ty}::{v} => write!(f, \"{text}\"),\n");
    }
    s + "        }\n    }\n}\n"
}

/// What a policy weighs of a renamed stretch is its structure: a `Display` impl matching on an
/// enum, copied as another enum's (other names, other strings), is a renamed run as long as the
/// impl but one arm's shape over and over — the built-in policy annotates it (unrelated crates
/// share such impls; docs/proxy.md). A renamed copy of code of its own is blocked.
#[test]
fn a_renamed_stretch_counts_only_its_structure_toward_blocking() {
    use verbatim::policy::{Facts, Policy};
    use verbatim::proxy::pipeline::Action;
    let variants = |tag: &str, n: usize| -> Vec<(String, String)> {
        vocabulary('v', n, tag.len() as u64)
            .into_iter()
            .enumerate()
            .map(|(i, w)| {
                let w: String = w.chars().filter(char::is_ascii_alphanumeric).collect();
                (format!("{tag}{w}{i}"), format!("{w} {i}"))
            })
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let doc = format!(
        "{}{}{}",
        common::own_code(0, "head"),
        display_match("Isa", &variants("Arch", 24)),
        common::own_code(0, "tail")
    );
    let index = common::one_code_doc_index(dir.path(), &doc, Params::default());
    let copy = display_match("MediaDesc", &variants("Medium", 24));
    let found = scan(&index, RUST, &copy);
    let f = found
        .iter()
        .filter(|f| f.kind == MatchKind::Renamed)
        .max_by_key(|f| f.units)
        .unwrap_or_else(|| panic!("no renamed finding: {found:?}"));
    assert!(f.units >= 200, "{f:?}");
    assert!(
        f.aligned_units() < 78 && f.aligned_units() == f.structure,
        "{f:?}"
    );
    let builtin = Policy::builtin();
    assert_eq!(
        builtin.decide(&Facts::of_finding(f)).action,
        Action::Annotate,
        "{f:?}"
    );

    // Code of its own, renamed: its structure is about its length.
    let fx = fixture();
    let (s, e) = window(&fx.code[1], RUST, 411, 120);
    let copy = rename(&fx.code[1][s..e], true);
    let found = scan(&fx.index, RUST, &copy);
    let f = found
        .iter()
        .filter(|f| f.kind == MatchKind::Renamed)
        .max_by_key(|f| f.units)
        .unwrap_or_else(|| panic!("no renamed finding: {found:?}"));
    assert!(f.aligned_units() >= 78, "{f:?}");
    assert_eq!(
        builtin.decide(&Facts::of_finding(f)).action,
        Action::Block,
        "{f:?}"
    );
}
