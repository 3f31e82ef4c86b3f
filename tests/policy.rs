//! Policy files: validation (every problem, with its location), precedence, license
//! categories, shadow mode, and the shipped example policies' own test cases.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use verbatim::index::Index;
use verbatim::policy::{Category, Facts, Policy, category};
use verbatim::proxy::pipeline::Action;

fn parse(name: &str, src: &str) -> Result<Policy, String> {
    Policy::parse(&Path::new("policies").join(name), src.to_string()).map_err(|p| p.to_string())
}

/// A readable rendering of a validated policy, for snapshots.
fn summary(p: &Policy) -> String {
    let mut s = format!(
        "policy {} shadow={} default={} ({})\n",
        p.name,
        p.shadow,
        p.default_action.as_str(),
        p.default_reason
    );
    for (l, c) in &p.categories {
        s += &format!("category {l} = {}\n", c.as_str());
    }
    for (kind, rules) in [("exception", &p.exceptions), ("rule", &p.rules)] {
        for r in rules.iter() {
            let w = &r.when;
            s += &format!(
                "{kind} {} → {} ({}) line {}: kind {:?} source {:?} rights {:?} license {:?} category {:?} corpus {:?} tenant {:?} route {:?} model {:?} units {:?}..{:?}\n",
                r.name,
                r.action.as_str(),
                r.reason,
                r.line,
                w.kind,
                w.source,
                w.rights,
                w.license,
                w.category.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                w.corpus,
                w.tenant,
                w.route,
                w.model.as_ref().map(|m| m.text.clone()),
                w.min_units,
                w.max_units
            );
            if w.min_exact_units.is_some() || w.min_aligned_units.is_some() {
                s.pop();
                s += &format!(
                    " exact ≥ {:?} aligned ≥ {:?}\n",
                    w.min_exact_units, w.min_aligned_units
                );
            }
        }
    }
    for t in &p.tests {
        s += &format!("test {:?} expects {}\n", t.name, t.expect.as_str());
    }
    for l in &p.lints {
        s += &format!("lint {l}\n");
    }
    s
}

#[test]
fn shipped_policies_validate_and_pass_their_own_tests() {
    let mut rendered = String::new();
    let mut files: Vec<_> = std::fs::read_dir("proxy-config/policies")
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3);
    for f in files {
        let p = Policy::load(&f).unwrap();
        assert!(p.lints.is_empty(), "{}: {:?}", f.display(), p.lints);
        let results = p.run_tests();
        assert!(!results.is_empty());
        for (t, v, ok) in &results {
            assert!(
                ok,
                "{}: {} expected {} got {} by {}",
                f.display(),
                t.name,
                t.expect.as_str(),
                v.action.as_str(),
                v.rule
            );
        }
        // Every rule and exception decides at least one of the policy's own cases.
        for r in p.rules.iter().chain(&p.exceptions) {
            assert!(
                results.iter().any(|(_, v, _)| v.rule == r.name),
                "{}: rule {} is never exercised",
                f.display(),
                r.name
            );
        }
        rendered += &summary(&p);
        rendered += "\n";
    }
    insta::assert_snapshot!(rendered);
}

#[test]
fn bad_policies_report_every_problem_with_its_location() {
    let cases = [
        ("no-version.toml", "name = \"x\"\n"),
        ("future-version.toml", "version = 2\n"),
        (
            "everything-wrong.toml",
            r#"version = 1
shadow = "yes"
colour = "blue"
excerpts = 99999
[defaults]
action = "shred"
reason = "Not Kebab"
[categories]
copyleft = ["LicenseRef-X"]
freeware = ["Y"]
[[rules]]
name = "Block It"
action = "block"
when = { kind = ["verbatim"], source = ["poetry"], license = ["GPL-9.0", "MIT"], category = ["viral"], model = ["["], min_similarity = 3, extra = 1 }
[[rules]]
name = "dup"
action = "annotate"
reason = "same-reason"
[[rules]]
name = "dup"
action = "log"
reason = "same-reason"
[[exceptions]]
name = "unscoped"
action = "allow"
when = { source = ["code"] }
[[tests]]
name = "t"
finding = { kind = "exact", units = "many" }
expect = "block"
rule = "nope"
"#,
        ),
        (
            "contradiction.toml",
            "version = 1\n[[rules]]\nname = \"a\"\naction = \"block\"\nwhen = { source = [\"code\"], min_units = 50 }\n[[rules]]\nname = \"b\"\naction = \"log\"\nwhen = { source = [\"code\"], min_units = 50 }\n",
        ),
        ("not-toml.toml", "version = 1\n[[rules]\n"),
    ];
    let rendered: Vec<String> = cases
        .iter()
        .map(|(n, s)| {
            format!(
                "## {n}\n{}",
                match parse(n, s) {
                    Ok(p) => format!("valid: {}", p.name),
                    Err(e) => e,
                }
            )
        })
        .collect();
    insta::assert_snapshot!(rendered.join("\n\n"));
}

#[test]
fn rules_that_can_never_match_are_linted() {
    let p = parse(
        "lint.toml",
        "version = 1\n[[rules]]\nname = \"never-a\"\naction = \"block\"\nwhen = { min_units = 90, max_units = 10 }\n[[rules]]\nname = \"never-b\"\naction = \"block\"\nwhen = { license = [\"MIT\"], category = [\"copyleft\"] }\n",
    )
    .unwrap();
    let lints: Vec<String> = p.lints.iter().map(|l| l.to_string()).collect();
    assert_eq!(lints.len(), 2, "{lints:?}");
    assert!(
        lints[0].contains("never-a` can never match: min_units 90 > max_units 10"),
        "{}",
        lints[0]
    );
    assert!(
        lints[1].contains("never-b` can never match: none of its licenses is in its categories"),
        "{}",
        lints[1]
    );
}

fn facts(source: &str, license: &str, units: u32) -> Facts {
    Facts {
        kind: "exact".into(),
        source: source.into(),
        rights: "licensed".into(),
        license: license.into(),
        corpus: "c".into(),
        units,
        similarity: 1.0,
        ..Facts::default()
    }
}

#[test]
fn the_most_severe_matching_rule_wins_exceptions_come_first_and_shadow_only_logs() {
    let src = r#"version = 1
[defaults]
action = "log"
[[rules]]
name = "annotate-all"
action = "annotate"
[[rules]]
name = "redact-long"
action = "redact"
when = { min_units = 40 }
[[rules]]
name = "block-longer"
action = "block"
when = { min_units = 80 }
[[rules]]
name = "also-block"
action = "block"
when = { min_units = 60 }
[[exceptions]]
name = "partner"
action = "allow"
when = { tenant = ["t1"] }
"#;
    let p = parse("p.toml", src).unwrap();
    let d = |units, tenant: Option<&str>| {
        let mut f = facts("code", "MIT", units);
        f.tenant = tenant.map(str::to_string);
        let v = p.decide(&f);
        (v.action, v.rule)
    };
    assert_eq!(d(10, None), (Action::Annotate, "annotate-all".into()));
    assert_eq!(d(50, None), (Action::Redact, "redact-long".into()));
    assert_eq!(
        d(70, None),
        (Action::Block, "also-block".into()),
        "earlier rule wins a tie in severity"
    );
    assert_eq!(d(90, None), (Action::Block, "block-longer".into()));
    assert_eq!(
        d(90, Some("t1")),
        (Action::Allow, "partner".into()),
        "an exception overrides the rules"
    );

    let shadow = parse(
        "s.toml",
        &src.replace("version = 1\n", "version = 1\nshadow = true\n"),
    )
    .unwrap();
    let v = shadow.decide(&facts("code", "MIT", 90));
    assert_eq!(
        (v.action, v.effective, v.shadow),
        (Action::Block, Action::Log, true)
    );

    let none = parse("n.toml", "version = 1\n").unwrap();
    let v = none.decide(&facts("code", "MIT", 90));
    assert_eq!(
        (v.action, v.rule.as_str(), v.reason.as_str()),
        (Action::Log, "default", "unmatched")
    );
}

#[test]
fn license_categories_follow_spdx_metadata_and_expressions() {
    let none = BTreeMap::new();
    let cases = [
        ("MIT", Category::Permissive),
        ("Apache-2.0", Category::Permissive),
        ("GPL-3.0-only", Category::Copyleft),
        ("GPL-3.0", Category::Copyleft),
        ("AGPL-3.0-or-later", Category::Copyleft),
        ("LGPL-2.1-or-later", Category::WeakCopyleft),
        ("MPL-2.0", Category::WeakCopyleft),
        ("CC0-1.0", Category::PublicDomain),
        ("Unlicense", Category::PublicDomain),
        ("MIT OR GPL-2.0-only", Category::Permissive),
        ("MIT AND GPL-2.0-only", Category::Copyleft),
        (
            "(Apache-2.0 OR MIT) AND LGPL-3.0-only",
            Category::WeakCopyleft,
        ),
        ("Apache-2.0 WITH LLVM-exception", Category::Permissive),
        ("MIT/Apache-2.0", Category::Permissive),
        ("LicenseRef-Acme-Proprietary", Category::Proprietary),
        ("NOASSERTION", Category::Proprietary),
        ("not a license", Category::Proprietary),
    ];
    for (expr, want) in cases {
        assert_eq!(category(expr, &none), want, "{expr}");
    }
    let mut extra = BTreeMap::new();
    extra.insert(
        "LicenseRef-Acme-Proprietary".to_string(),
        Category::Permissive,
    );
    assert_eq!(
        category("LicenseRef-Acme-Proprietary", &extra),
        Category::Permissive,
        "a policy can classify its own licenses"
    );
}

#[test]
fn checked_against_an_index_thresholds_below_t_and_unknown_corpora_are_problems() {
    let index = Arc::new(Index::open("tests/fixtures/index-v5").unwrap());
    let path = Path::new("policies/t.toml");
    let p = Policy::parse(
        path,
        "version = 1\n[[rules]]\nname = \"too-short\"\naction = \"block\"\nwhen = { source = [\"prose\"], min_units = 5, corpus = [\"acme-books\", \"no-such-corpus\"] }\n".into(),
    )
    .unwrap();
    let problems: Vec<String> = p
        .check_against(path, &[index])
        .0
        .iter()
        .map(|x| x.to_string())
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("no index has a corpus named `no-such-corpus`"),
        "{}",
        problems[0]
    );
    assert!(
        problems[1].contains("5 is below the guarantee t = 12 of prose"),
        "{}",
        problems[1]
    );
}

#[test]
fn the_config_rules_are_the_built_in_policy() {
    let p = Policy::builtin();
    assert_eq!(p.decide(&facts("prose", "MIT", 40)).action, Action::Block);
    assert_eq!(
        p.decide(&facts("prose", "MIT", 20)).action,
        Action::Annotate
    );
    assert_eq!(p.decide(&facts("code", "MIT", 49)).action, Action::Annotate);
    assert_eq!(p.decide(&facts("code", "MIT", 50)).action, Action::Block);
    let mut f = facts("code", "MIT", 500);
    f.kind = "caller-supplied".into();
    assert_eq!(p.decide(&f).action, Action::Log);
    // A near copy is blocked only if at least `long_min_similarity` (0.8) similar to its
    // source; a looser one is annotated.
    let mut near = facts("prose", "MIT", 40);
    near.kind = "near".into();
    near.similarity = 0.85;
    assert_eq!(p.decide(&near).action, Action::Block);
    near.similarity = 0.75;
    assert_eq!(p.decide(&near).action, Action::Annotate);
    // Code is blocked on a piece copied whole: 46 units token for token, or 78 without a
    // gap with names renamed. A near copy of 120 units whose pieces are shorter — what
    // idioms of unrelated crates share — is annotated.
    let mut code = facts("code", "MIT", 120);
    code.kind = "near".into();
    code.similarity = 0.95;
    code.exact_units = Some(45);
    code.aligned_units = Some(77);
    assert_eq!(p.decide(&code).action, Action::Annotate);
    code.exact_units = Some(46);
    assert_eq!(p.decide(&code).action, Action::Block);
    code.exact_units = Some(45);
    code.aligned_units = Some(78);
    assert_eq!(p.decide(&code).action, Action::Block);
    let mut renamed = facts("code", "MIT", 77);
    renamed.kind = "renamed".into();
    renamed.exact_units = Some(9);
    renamed.aligned_units = Some(77);
    assert_eq!(p.decide(&renamed).action, Action::Annotate);
    renamed.units = 78;
    renamed.aligned_units = Some(78);
    assert_eq!(p.decide(&renamed).action, Action::Block);
    // Prose keeps its rule: a near copy of 40 words with no long piece is blocked.
    near.similarity = 0.85;
    near.exact_units = Some(12);
    near.aligned_units = Some(12);
    assert_eq!(p.decide(&near).action, Action::Block);
}

#[test]
fn a_rule_can_ask_for_a_piece_copied_whole() {
    let p = parse(
        "pieces.toml",
        r#"version = 1
[[rules]]
name = "block-long-pieces"
action = "block"
when = { source = ["code"], min_exact_units = 40 }
[[rules]]
name = "block-long-renamed-stretches"
action = "block"
when = { source = ["code"], min_aligned_units = 90 }
[[tests]]
name = "a near copy with a long exact piece"
finding = { kind = "near", source = "code", units = 100, exact_units = 40, aligned_units = 40, similarity = 0.9 }
expect = "block"
rule = "block-long-pieces"
[[tests]]
name = "a near copy of short pieces"
finding = { kind = "near", source = "code", units = 100, exact_units = 39, aligned_units = 89, similarity = 0.9 }
expect = "log"
[[tests]]
name = "a finding that does not say is one piece"
finding = { kind = "exact", source = "code", units = 40 }
expect = "block"
"#,
    )
    .unwrap();
    let results = p.run_tests();
    assert_eq!(results.len(), 3);
    for (case, v, ok) in &results {
        assert!(ok, "{}: got {:?} by {}", case.name, v.action, v.rule);
    }
    let mut f = facts("code", "MIT", 100);
    f.kind = "near".into();
    f.exact_units = Some(39);
    f.aligned_units = Some(89);
    let why = p.rules[0].when.mismatch(&f, &BTreeMap::new()).unwrap();
    assert!(
        why.contains("longest exact piece 39 units < min_exact_units 40"),
        "{why}"
    );
    let why = p.rules[1].when.mismatch(&f, &BTreeMap::new()).unwrap();
    assert!(why.contains("89 units < min_aligned_units 90"), "{why}");
    let bad = parse(
        "bad-pieces.toml",
        "version = 1\n[[rules]]\nname = \"x\"\naction = \"block\"\nwhen = { min_exact_units = \"long\", min_aligned_units = -3 }\n",
    )
    .unwrap_err();
    for want in [
        "rules[0].when.min_exact_units",
        "rules[0].when.min_aligned_units",
    ] {
        assert!(bad.contains(want), "{want} in {bad}");
    }
}

#[test]
fn no_run_shorter_than_min_block_units_is_ever_blocked() {
    // The pipeline skips judging growing runs below this length; that must never skip a block.
    let mut policies: Vec<Policy> = std::fs::read_dir("proxy-config/policies")
        .unwrap()
        .map(|e| Policy::load(&e.unwrap().path()).unwrap())
        .collect();
    policies.push(Policy::builtin());
    policies.push(
        parse(
            "shadow.toml",
            "version = 1\nshadow = true\n[defaults]\naction = \"block\"\n",
        )
        .unwrap(),
    );
    policies.push(parse("d.toml", "version = 1\n[defaults]\naction = \"block\"\n").unwrap());
    let mut blocks = 0;
    for p in &policies {
        for source in ["prose", "code"] {
            let min = p.min_block_units(source);
            for kind in ["exact", "caller-supplied"] {
                for (license, rights, corpus, tenant) in [
                    ("GPL-3.0-only", "licensed", "gpl-code", None),
                    ("MIT", "licensed", "crates", None),
                    (
                        "LicenseRef-Acme-Proprietary",
                        "copyrighted",
                        "acme-books",
                        None,
                    ),
                    ("NOASSERTION", "public-domain", "kjv", None),
                    (
                        "LicenseRef-Acme-Proprietary",
                        "copyrighted",
                        "acme-handbook",
                        Some("2f6a0c9d1e8b7a55"),
                    ),
                ] {
                    for units in 0..=120 {
                        let f = Facts {
                            kind: kind.into(),
                            source: source.into(),
                            rights: rights.into(),
                            license: license.into(),
                            corpus: corpus.into(),
                            units,
                            similarity: 1.0,
                            tenant: tenant.map(str::to_string),
                            ..Facts::default()
                        };
                        if p.decide(&f).effective == Action::Block {
                            blocks += 1;
                            assert!(
                                min.is_some_and(|m| units >= m),
                                "{}: {source} run of {units} blocked below {min:?}",
                                p.name
                            );
                        }
                    }
                }
            }
        }
    }
    assert!(blocks > 1000, "the cases must include blocks ({blocks})");
    assert_eq!(Policy::builtin().min_block_units("prose"), Some(32));
    assert_eq!(Policy::builtin().min_block_units("code"), Some(50));
}
