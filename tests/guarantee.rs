//! The product's backbone: any shared run of at least `t = k + p − 1` units is reported, with the
//! right document and offsets, however the output is chunked; a run of `t − 1` units is not;
//! unrelated text gives nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use std::sync::{Arc, OnceLock};

use common::{Rng, build_index, scan, scan_cuts, vocabulary, write_corpus};
use proptest::prelude::*;
use verbatim::index::build::informative;
use verbatim::index::{ChannelParams, Index, Params};
use verbatim::normalize::{Lang, TextKind, normalize};

struct Fixture {
    _dir: tempfile::TempDir,
    index: Arc<Index>,
    prose_docs: Vec<String>,
    code_docs: Vec<String>,
    /// Words that never occur in any document.
    outside: Vec<String>,
}

const RUST: TextKind = TextKind::Code(Lang::C_LIKE);

fn params_sets() -> [Params; 2] {
    [
        // The exact channel's guarantee, stated for it alone: a rename-insensitive seed could
        // also find an exact run the exact sampling skips (tests/near.rs covers that channel).
        Params {
            renamed: None,
            ..Params::default()
        },
        Params {
            prose: ChannelParams { k: 3, p: 4 },
            code: ChannelParams { k: 5, p: 3 },
            common_threshold: 32,
            renamed: None,
        },
    ]
}

fn fixture(which: usize) -> &'static Fixture {
    static F: [OnceLock<Fixture>; 2] = [OnceLock::new(), OnceLock::new()];
    F[which].get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let vocab = vocabulary('q', 400, 7);
        let mut r = Rng(99 + which as u64);
        let seps = [" ", " ", " ", "\n", ", ", ". ", " — ", "  ", "\n\n"];
        let prose_docs: Vec<String> = (0..6)
            .map(|_| {
                let mut s = String::new();
                for _ in 0..(150 + r.below(200)) {
                    s.push_str(&vocab[r.below(vocab.len())]);
                    s.push_str(seps[r.below(seps.len())]);
                }
                s
            })
            .collect();
        let punct = [
            "(", ")", "{", "}", ";", "=", "+", "->", "::", ",", "&", "<", ">",
        ];
        let code_docs: Vec<String> = (0..4)
            .map(|_| {
                let mut s = String::new();
                for _ in 0..(200 + r.below(200)) {
                    if r.below(3) == 0 {
                        s.push_str(punct[r.below(punct.len())]);
                    } else {
                        s.push_str(
                            &vocab[r.below(vocab.len())]
                                .replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
                        );
                    }
                    s.push_str(["", " ", "\n", "\n    "][r.below(4)]);
                }
                s
            })
            .collect();
        let pd: Vec<(String, String)> = prose_docs
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("p{i}.txt"), t.clone()))
            .collect();
        let cd: Vec<(String, String)> = code_docs
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("c{i}.rs"), t.clone()))
            .collect();
        let m1 = write_corpus(dir.path(), "prose", "prose", "copyrighted", None, &pd);
        let m2 = write_corpus(
            dir.path(),
            "code",
            "code",
            "licensed",
            Some("GPL-3.0-only"),
            &cd,
        );
        let index = build_index(dir.path(), &[m1, m2], params_sets()[which]);
        Fixture {
            _dir: dir,
            index,
            prose_docs,
            code_docs,
            outside: vocabulary('z', 300, 11),
        }
    })
}

/// Output text embedding units `a..a+len` of a document between unrelated words; returns the
/// text, the embedded byte range in it, and the source byte range.
fn embed(
    doc: &str,
    kind: TextKind,
    a: usize,
    len: usize,
    outside: &[String],
    r: &mut Rng,
    fenced: bool,
) -> (String, (u64, u64), (u64, u64)) {
    let units = normalize(doc, kind);
    let a = a % (units.len() - len);
    let (ss, se) = (units[a].start, units[a + len - 1].end());
    let copied = &doc[ss as usize..se as usize];
    let mut out = String::new();
    for _ in 0..r.below(30) {
        out.push_str(&outside[r.below(outside.len())]);
        out.push(' ');
    }
    if fenced {
        out.push_str("\n```rust\n");
    }
    let os = out.len() as u64;
    out.push_str(copied);
    let oe = out.len() as u64;
    if fenced {
        out.push_str("\n```\n");
    } else {
        out.push(' ');
    }
    for _ in 0..r.below(30) {
        out.push_str(&outside[r.below(outside.len())]);
        out.push(' ');
    }
    (out, (os, oe), (ss, se))
}

/// Cut points: `mode` 0 = whole, 1 = every byte, 2 = random.
fn cuts(len: usize, mode: u8, r: &mut Rng) -> Vec<usize> {
    match mode {
        0 => vec![],
        1 => (1..len).collect(),
        _ => {
            let mut v: Vec<usize> = (0..r.below(40)).map(|_| r.below(len + 1)).collect();
            v.sort_unstable();
            v
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn every_run_of_t_units_is_found_at_every_chunking(
        which in 0usize..2,
        code in any::<bool>(),
        fenced in any::<bool>(),
        doc in 0usize..16,
        start in 0usize..10_000,
        extra in prop_oneof![Just(0usize), 0usize..25],
        seed in any::<u64>(),
    ) {
        let f = fixture(which);
        let params = f.index.params();
        let mut r = Rng(seed);
        let (docs, kind, t, doc_id_base) = if code {
            (&f.code_docs, RUST, params.code.t(), f.prose_docs.len())
        } else {
            (&f.prose_docs, TextKind::Markdown, params.prose.t(), 0)
        };
        let d = doc % docs.len();
        let len = t as usize + extra;
        let (text, (os, oe), (ss, se)) = embed(&docs[d], kind, start, len, &f.outside, &mut r, code && fenced);
        let scan_kind = if code && !fenced { RUST } else { TextKind::Markdown };
        let whole = scan_cuts(&f.index, scan_kind, text.as_bytes(), &[]);
        prop_assert_eq!(whole.len(), 1, "expected one finding in {:?}", text);
        let w = &whole[0];
        prop_assert_eq!(w.doc as usize, doc_id_base + d);
        prop_assert_eq!((w.output_start, w.output_end), (os, oe));
        prop_assert_eq!(w.units as usize, len);
        let (s0, _) = f.index.unit_span(w.doc, w.doc_unit_start).unwrap();
        let (_, s1) = f.index.unit_span(w.doc, w.doc_unit_start + w.units - 1).unwrap();
        prop_assert_eq!((u64::from(s0), u64::from(s1)), (ss, se));
        for mode in [1u8, 2, 2, 2] {
            let c = cuts(text.len(), mode, &mut r);
            let got = scan_cuts(&f.index, scan_kind, text.as_bytes(), &c);
            prop_assert_eq!(&got, &whole, "chunking changed the findings; cuts {:?}", c);
        }
    }

    #[test]
    fn a_run_of_t_minus_one_units_is_not_reported(
        which in 0usize..2,
        code in any::<bool>(),
        doc in 0usize..16,
        start in 0usize..10_000,
        seed in any::<u64>(),
    ) {
        let f = fixture(which);
        let params = f.index.params();
        let mut r = Rng(seed);
        let (docs, kind, t) = if code {
            (&f.code_docs, RUST, params.code.t())
        } else {
            (&f.prose_docs, TextKind::Markdown, params.prose.t())
        };
        let d = doc % docs.len();
        let (text, _, _) = embed(&docs[d], kind, start, t as usize - 1, &f.outside, &mut r, false);
        let got = scan_cuts(&f.index, kind, text.as_bytes(), &cuts(text.len(), 2, &mut r));
        prop_assert!(got.is_empty(), "t-1 units reported: {:?}", got);
    }

    #[test]
    fn unrelated_text_gives_no_finding(which in 0usize..2, seed in any::<u64>()) {
        let f = fixture(which);
        let mut r = Rng(seed);
        // Same vocabulary as the documents, in a fresh random order.
        let vocab = vocabulary('q', 400, 7);
        let text: String = (0..400).map(|_| format!("{} ", vocab[r.below(vocab.len())])).collect();
        prop_assert!(scan(&f.index, TextKind::Markdown, &text).is_empty());
    }
}

#[test]
fn two_copies_from_two_documents_are_both_reported() {
    let f = fixture(0);
    let mut r = Rng(5);
    let (a, _, _) = embed(
        &f.prose_docs[1],
        TextKind::Markdown,
        17,
        20,
        &f.outside,
        &mut r,
        false,
    );
    let (b, _, _) = embed(
        &f.prose_docs[4],
        TextKind::Markdown,
        40,
        30,
        &f.outside,
        &mut r,
        false,
    );
    let text = format!("{a}\n\n{b}");
    let got = scan(&f.index, TextKind::Markdown, &text);
    let docs: Vec<u32> = got.iter().map(|g| g.doc).collect();
    assert_eq!(docs, [1, 4]);
    assert_eq!(got.iter().map(|g| g.units).collect::<Vec<_>>(), [20, 30]);
}

/// Exhaustive over the boundary: exactly `t` units copied from every start position of every
/// document, for both parameter sets and both channels. (A sampling off-by-one only misses some
/// alignments, which random cases can fail to hit.) The guarantee, stated exactly: the run is
/// found if and only if it contains a sampled k-gram that is informative.
#[test]
fn exactly_t_units_from_every_position_are_found() {
    for which in 0..2 {
        let f = fixture(which);
        let params = f.index.params();
        for (code, docs) in [(false, &f.prose_docs), (true, &f.code_docs)] {
            let (kind, cp, base) = if code {
                (RUST, params.code, f.prose_docs.len())
            } else {
                (TextKind::Markdown, params.prose, 0)
            };
            let (t, k) = (cp.t() as usize, cp.k as usize);
            let (mut positions, mut exempt) = (0usize, 0usize);
            for (d, doc) in docs.iter().enumerate() {
                let units = normalize(doc, kind);
                let p = cp.p as usize;
                for a in 0..=units.len() - t {
                    let copied = &doc[units[a].start as usize..units[a + t - 1].end() as usize];
                    let text = format!(
                        "{} {copied} {}",
                        f.outside[a % 300],
                        f.outside[(a + 7) % 300]
                    );
                    let got = scan(&f.index, kind, &text);
                    let found = got
                        .iter()
                        .any(|g| g.doc as usize == base + d && g.units as usize >= t);
                    // From the definition, not from the builder's code: some position q in the
                    // run with q ≡ 0 (mod p) starts an informative k-gram inside the run.
                    let expect =
                        (a..=a + t - k).any(|q| q % p == 0 && informative(&units[q..q + k]));
                    positions += 1;
                    exempt += usize::from(!expect);
                    assert_eq!(
                        found,
                        expect,
                        "params {which}, doc {d} ({}), start {a}",
                        if code { "code" } else { "prose" }
                    );
                }
            }
            // On diverse text the exception is rare; if it were not, this test would be vacuous.
            assert!(
                exempt * 100 <= positions,
                "params {which}: {exempt} of {positions} runs exempt"
            );
        }
    }
}

#[test]
fn runs_of_repeated_units_are_not_evidence() {
    // A document full of table rules and zero padding, copied whole: nothing in it is
    // informative enough to index, so nothing is reported.
    let dir = tempfile::tempdir().unwrap();
    let table = format!("{}\n", "-".repeat(200)) + &"0, ".repeat(200) + "\n" + &"ha ".repeat(100);
    let m = write_corpus(
        dir.path(),
        "pad",
        "code",
        "licensed",
        None,
        &[("t.c".to_string(), table.clone())],
    );
    let ix = build_index(dir.path(), &[m], verbatim::index::Params::default());
    assert_eq!(ix.manifest().stats.postings, 0);
    assert!(scan(&ix, RUST, &table).is_empty());
    // The same padding inside a copied informative run is still part of the finding.
    let f = fixture(0);
    let doc = &f.code_docs[0];
    let units = normalize(doc, RUST);
    let copied = &doc[units[10].start as usize..units[60].end() as usize];
    let got = scan(&f.index, RUST, &format!("zzz {copied} zzz"));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].units, 51);
}

#[test]
fn runs_the_caller_supplied_are_marked() {
    let f = fixture(0);
    let mut r = Rng(77);
    let (text, _, _) = embed(
        &f.prose_docs[2],
        TextKind::Markdown,
        30,
        25,
        &f.outside,
        &mut r,
        false,
    );
    // The request carried the copied passage; the output repeats it.
    let keys = verbatim::matcher::exemptions([text.as_str()], std::slice::from_ref(&f.index));
    let mut s = verbatim::matcher::Scanner::new(std::slice::from_ref(&f.index), TextKind::Markdown);
    s.set_exemptions(Arc::new(keys));
    s.push_str(&text);
    s.finish();
    let got = s.take_findings();
    assert_eq!(got.len(), 1);
    assert!(got[0].caller_supplied);
    // Without the exemption the same output is not caller-supplied.
    let plain = scan(&f.index, TextKind::Markdown, &text);
    assert!(!plain[0].caller_supplied);
}

/// A stream that goes on after it was finished (an upstream that sends deltas after a
/// stream's closing event): what follows is matched afresh. Before, the k-gram roll and the
/// history ran on across the end, so a run found after it extended back into text the proxy
/// had released as final.
#[test]
fn text_pushed_after_finish_is_matched_afresh() {
    let index = Arc::new(Index::open("tests/fixtures/index-v5").unwrap());
    let code = std::fs::read_to_string("corpora/fixtures/gpl-code/src/ledger.rs").unwrap();
    let text = format!("Here:\n\n```rust\n{code}```\n");
    let cut = text.find("pub fn parse_line").unwrap();
    let mut s = verbatim::matcher::Scanner::new(std::slice::from_ref(&index), TextKind::Markdown);
    s.push_str(&text[..cut]);
    s.finish();
    let first = s.take_findings();
    s.push_str(&text[cut..]);
    s.finish();
    let second = s.take_findings();
    assert!(
        !first.is_empty() && !second.is_empty(),
        "{first:?} {second:?}"
    );
    assert!(
        first.iter().all(|f| f.output_end <= cut as u64),
        "{first:?}"
    );
    assert!(
        second.iter().all(|f| f.output_start >= cut as u64),
        "a run found after the end reaches back across it: {second:?}"
    );
}

/// Strict holdback and boilerplate: a copy that begins with text the index holds in too many
/// documents to be evidence (a shared license header) opens no run until its distinctive part
/// arrives, and that run then extends left over the header. The header must still be held
/// when the run opens — released, it would be units of a blocked run let out before the run
/// was detected — and once no run can reach it, released.
#[test]
fn strict_holdback_keeps_boilerplate_a_later_run_extends_over() {
    let dir = tempfile::tempdir().unwrap();
    let vocab = vocabulary('h', 500, 5);
    let mut r = Rng(4242);
    let mut code = |n: usize| -> String {
        let punct = ["(", ")", "{", "}", ";", "=", "::", ","];
        let mut s = String::new();
        for _ in 0..n {
            if r.below(3) == 0 {
                s.push_str(punct[r.below(punct.len())]);
            } else {
                s.push_str(
                    &vocab[r.below(vocab.len())].replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
                );
            }
            s.push_str(["", " ", "\n"][r.below(3)]);
        }
        s
    };
    let header = code(60);
    let docs: Vec<(String, String)> = (0..6)
        .map(|i| (format!("c{i}.rs"), format!("{header}\n{}", code(120))))
        .collect();
    let m = write_corpus(dir.path(), "code", "code", "licensed", None, &docs);
    let params = Params {
        code: ChannelParams { k: 5, p: 3 },
        common_threshold: 4,
        renamed: None,
        ..Params::default()
    };
    let index = build_index(dir.path(), &[m], params);
    assert!(
        index.manifest().stats.common_keys > 0,
        "the header is common"
    );
    let outside = vocabulary('z', 300, 11);
    let intro: String = (0..20).map(|i| format!("{} ", outside[i])).collect();
    let outro: String = (0..40).map(|i| format!("{} ", outside[100 + i])).collect();

    // Streams `text` in random pieces; at the push where a run overlapping `body` is first
    // seen, returns (where the run starts, what had been released before that push).
    let stream = |text: &str, body: u64, seed: u64| -> Option<(u64, u64)> {
        let mut s = verbatim::matcher::Scanner::new(std::slice::from_ref(&index), RUST);
        s.set_hold_boilerplate(true);
        let mut r = Rng(seed);
        let (mut at, mut released) = (0, 0u64);
        let b = text.as_bytes();
        while at < b.len() {
            let end = (at + 1 + r.below(24)).min(b.len());
            s.push_bytes(&b[at..end]);
            at = end;
            let seen = s
                .take_findings()
                .into_iter()
                .chain(s.open_runs().map(|o| s.open_finding(&o)))
                .filter(|f| f.output_end > body)
                .map(|f| f.output_start)
                .min();
            if let Some(start) = seen {
                return Some((start, released));
            }
            released = released.max(s.stable_offset());
        }
        None
    };
    for seed in 0..20 {
        let text = format!("{intro}{}{outro}", docs[seed as usize % 6].1);
        let header_at = intro.len() as u64;
        let body = header_at + header.len() as u64 + 1;
        let (start, released) = stream(&text, body, seed).expect("the copy is found");
        assert!(
            start <= header_at + 8,
            "seed {seed}: the run covers the header ({start})"
        );
        assert!(
            released <= start,
            "seed {seed}: {} bytes of the run's header released before it was detected",
            released - start
        );
    }
    // The header alone, then unrelated text: held while a run could still reach it, then let go.
    let text = format!("{intro}{header}\n{outro}");
    let mut s = verbatim::matcher::Scanner::new(std::slice::from_ref(&index), RUST);
    s.set_hold_boilerplate(true);
    s.push_str(&text);
    assert!(s.take_findings().is_empty());
    assert!(s.stable_offset() > (intro.len() + header.len()) as u64);
}

/// The same for a copy that begins with text too repetitive to be indexed at all (a table of
/// zeros: its k-grams have too few distinct units to be keys, common or not): held while it
/// streams, so the run the code after it opens has released nothing of it; let go once the
/// table is followed by text that is not the copy.
#[test]
fn strict_holdback_keeps_a_repetitive_start_a_later_run_extends_over() {
    let dir = tempfile::tempdir().unwrap();
    let (table, doc) = common::table_then_code('r', 6);
    let index = common::one_code_doc_index(
        dir.path(),
        &doc,
        Params {
            renamed: None,
            ..Params::default()
        },
    );
    let intro = "Here is the table:\n\n```rust\n";
    for piece in [1, 5, 17] {
        let text = format!("{intro}{doc}```\n");
        let mut s =
            verbatim::matcher::Scanner::new(std::slice::from_ref(&index), TextKind::Markdown);
        s.set_hold_boilerplate(true);
        let mut released = 0;
        let mut seen = None;
        for c in text.as_bytes().chunks(piece) {
            s.push_bytes(c);
            seen = s
                .take_findings()
                .into_iter()
                .chain(s.open_runs().map(|o| s.open_finding(&o)))
                .map(|f| f.output_start)
                .min();
            if seen.is_some() {
                break;
            }
            released = released.max(s.stable_offset());
        }
        let start = seen.expect("the copy is found");
        assert!(
            start <= intro.len() as u64,
            "piece {piece}: the run covers the table"
        );
        assert!(
            released <= start,
            "piece {piece}: {} bytes of the table out before the run",
            released - start
        );
    }
    // The table, then prose: released once no run can reach it.
    let text = format!(
        "{intro}{table}```\n\n{}\n",
        "and then the answer went on to other things ".repeat(8)
    );
    let mut s = verbatim::matcher::Scanner::new(std::slice::from_ref(&index), TextKind::Markdown);
    s.set_hold_boilerplate(true);
    s.push_str(&text);
    assert!(s.take_findings().is_empty());
    assert!(s.stable_offset() > (intro.len() + table.len()) as u64);
}
