//! The `verbatim` binary as a user runs it: exit status like grep (0 nothing, 1 findings,
//! 2 error), JSON Lines with the documented keys, readable errors.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::io::Write;
use std::process::{Command, Output, Stdio};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_verbatim");
const FIXTURE: &str = "tests/fixtures/index-v5";

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        // The program may exit (e.g. on a bad index) before reading its input.
        match c.stdin.take().unwrap().write_all(s.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => panic!("writing stdin: {e}"),
        }
    }
    drop(c.stdin.take());
    c.wait_with_output().unwrap()
}

/// `verbatim index build --corpus CORPUS --out OUT --quiet`.
fn index_build(corpus: &str, out: &std::path::Path) -> Output {
    let out = out.to_str().unwrap();
    run(
        &[
            "index", "build", "--corpus", corpus, "--out", out, "--quiet",
        ],
        None,
    )
}

/// The findings of a scan that must have found some (exit status 1), one per JSON line.
fn findings(out: &Output) -> Vec<serde_json::Value> {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out.stdout)
}

/// Each line of a JSON Lines output, parsed.
fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const ANSWER: &str = "Here you go:\n\n```rust\npub fn total_owed(columns: &[Column]) -> std::collections::BTreeMap<String, u32> {\n    let mut totals = std::collections::BTreeMap::new();\n    for column in columns {\n        if let Column::Owed { name, shillings } = column {\n            *totals.entry(name.clone()).or_insert(0) += *shillings;\n        }\n    }\n    totals\n}\n```\n";

#[test]
fn scan_reports_findings_as_json_lines_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("answer.md");
    std::fs::write(&f, ANSWER).unwrap();
    let out = run(&["scan", "--index", FIXTURE, f.to_str().unwrap()], None);
    let lines = findings(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let v = &lines[0];
    for key in [
        "output_start",
        "output_end",
        "corpus",
        "doc",
        "url",
        "source_start",
        "source_end",
        "units",
        "kind",
        "license",
        "rights",
    ] {
        assert!(v.get(key).is_some(), "missing key {key} in {v}");
    }
    assert_eq!(v["corpus"], "gpl-code");
    assert_eq!(v["doc"], "fixtures/gpl-code/src/ledger.rs");
    assert_eq!(v["kind"], "exact");
    assert_eq!(v["license"], "GPL-3.0-or-later");
    assert_eq!(v["rights"], "licensed");
    assert_eq!(
        v["url"],
        "https://git.example.org/ledger/blob/main/fixtures/gpl-code/src/ledger.rs"
    );
    let (s, e) = (
        v["output_start"].as_u64().unwrap() as usize,
        v["output_end"].as_u64().unwrap() as usize,
    );
    assert!(
        ANSWER[s..e].starts_with("pub fn total_owed") && ANSWER[s..e].ends_with("totals\n}"),
        "{}",
        &ANSWER[s..e]
    );
}

/// The Rust code inside [`ANSWER`]'s fence.
fn answer_code() -> &'static str {
    ANSWER
        .split_once("```rust\n")
        .and_then(|(_, r)| r.split_once("```"))
        .unwrap()
        .0
}

/// `--kind tool-args`: a tool call's arguments (JSON) saved from a log; the file inside the
/// `content` string is read as Rust (the `path` before it names the language) and the finding
/// cites the JSON's bytes. Read as Markdown, the escaped code matches nothing.
#[test]
fn scan_of_tool_call_arguments_reads_the_code_inside_the_json() {
    let code = answer_code();
    let args = format!(
        r#"{{"path": "src/ledger.rs", "content": {}}}"#,
        serde_json::to_string(code).unwrap()
    );
    let out = run(
        &[
            "scan",
            "--index",
            FIXTURE,
            "--no-license-index",
            "--kind",
            "tool-args",
            "-",
        ],
        Some(&args),
    );
    let lines = findings(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["doc"], "fixtures/gpl-code/src/ledger.rs");
    assert_eq!(lines[0]["channel"], "code");
    let (s, e) = (
        lines[0]["output_start"].as_u64().unwrap() as usize,
        lines[0]["output_end"].as_u64().unwrap() as usize,
    );
    assert!(
        args[s..e].starts_with("pub fn total_owed") && args[s..e].ends_with("totals\\n}"),
        "{}",
        &args[s..e]
    );
    let markdown = run(
        &["scan", "--index", FIXTURE, "--no-license-index", "-"],
        Some(&args),
    );
    assert_eq!(
        markdown.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&markdown.stdout)
    );
}

/// `--kind patch`: a file written as a diff (every line marked `+`), as an agent's patch tool
/// writes it; the finding cites the diff's bytes. Read as code with its markers, each line's
/// `+` breaks the run at every line and nothing is found.
#[test]
fn scan_of_a_patch_reads_the_file_it_writes() {
    let code = answer_code();
    let patch: String = code.lines().map(|l| format!("+{l}\n")).collect();
    let scan = |kind: &str| {
        run(
            &[
                "scan",
                "--index",
                FIXTURE,
                "--no-license-index",
                "--kind",
                kind,
                "--lang",
                "rust",
                "-",
            ],
            Some(&patch),
        )
    };
    let out = scan("patch");
    let lines = findings(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["doc"], "fixtures/gpl-code/src/ledger.rs");
    let (s, e) = (
        lines[0]["output_start"].as_u64().unwrap() as usize,
        lines[0]["output_end"].as_u64().unwrap() as usize,
    );
    assert!(
        patch[s..e].starts_with("pub fn total_owed"),
        "{}",
        &patch[s..e]
    );
    assert_eq!(lines[0]["kind"], "exact", "{lines:?}");
    let units = lines[0]["units"].as_u64().unwrap();
    for f in findings(&scan("code")) {
        assert_ne!(f["kind"], "exact", "{f}");
        assert!(f["exact_units"].as_u64().unwrap() < units / 2, "{f}");
    }
}

#[test]
fn scan_of_stdin_with_text_format_and_clean_input() {
    let out = run(
        &["scan", "--index", FIXTURE, "--format", "text", "-"],
        Some(ANSWER),
    );
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("from gpl-code:fixtures/gpl-code/src/ledger.rs"),
        "{text}"
    );
    assert!(text.contains("license GPL-3.0-or-later"), "{text}");

    let clean = run(
        &["scan", "--index", FIXTURE, "-"],
        Some("Nothing here is copied from anywhere at all, I promise you that much."),
    );
    assert_eq!(clean.status.code(), Some(0));
    assert!(clean.stdout.is_empty());
}

#[test]
fn scan_errors_exit_2_with_a_message() {
    let out = run(&["scan", "--index", "/nonexistent/idx", "-"], Some("x"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with(
            "error: cannot open index /nonexistent/idx: /nonexistent/idx is not a verbatim index"
        ),
        "{err}"
    );

    let out = run(
        &["scan", "--index", FIXTURE, "/nonexistent/answer.md"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open /nonexistent/answer.md"));
}

#[test]
fn build_reports_every_manifest_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("bad.toml");
    std::fs::write(
        &m,
        "name = \"bad\"\nrights = \"whatever\"\nkind = \"poem\"\n",
    )
    .unwrap();
    let out = run(
        &[
            "index",
            "build",
            "--corpus",
            m.to_str().unwrap(),
            "--out",
            dir.path().join("i").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("bad.toml:2:10: `rights`: `whatever` is not one of"),
        "{err}"
    );
    assert!(
        err.contains("bad.toml:3:8: `kind`: `poem` is not one of"),
        "{err}"
    );
}

#[test]
fn build_info_verify_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("idx");
    let out = index_build("corpora", &out_dir);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8(out.stdout).unwrap();
    for word in [
        "documents",
        "units",
        "size on disk",
        "memory to serve",
        "build time",
        "guarantee t",
    ] {
        assert!(summary.contains(word), "{summary}");
    }
    // A second build to the same place needs --force.
    let again = run(
        &[
            "index",
            "build",
            "--corpus",
            "corpora",
            "--out",
            out_dir.to_str().unwrap(),
            "--quiet",
        ],
        None,
    );
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("pass --force"));
    let info = run(&["index", "info", out_dir.to_str().unwrap()], None);
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["stats"]["documents"], 4);
    let verify = run(&["index", "verify", out_dir.to_str().unwrap()], None);
    assert_eq!(verify.status.code(), Some(0));
}

/// `verbatim scan --format jsonl FILE` with the built-in license index cached under `dir`,
/// which must find something (exit 1); its output.
fn scan_with_findings(file: &std::path::Path, dir: &std::path::Path) -> String {
    let out = Command::new(BIN)
        .args(["scan", "--format", "jsonl", file.to_str().unwrap()])
        .env("VERBATIM_CACHE_DIR", dir.join("cache"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn scan_names_a_reproduced_license_and_reports_license_markers() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("answer.md");
    let apache = verbatim::license::texts::text_of("Apache-2.0")
        .unwrap()
        .text;
    let half: String = apache
        .lines()
        .take(apache.lines().count() * 6 / 10)
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(
        &f,
        format!("# SPDX-License-Identifier: Apache 2\n# Copyright 2023 Example\n\n{half}\n"),
    )
    .unwrap();
    let lines = json_lines(scan_with_findings(&f, dir.path()).as_bytes());
    let texts: Vec<_> = lines
        .iter()
        .filter(|l| l["kind"] == "license-text")
        .collect();
    assert_eq!(texts.len(), 1, "{lines:?}");
    assert_eq!(texts[0]["license"], "Apache-2.0");
    let cov = texts[0]["coverage"].as_f64().unwrap();
    assert!((0.5..0.8).contains(&cov), "coverage {cov}");
    let markers: Vec<_> = lines
        .iter()
        .filter(|l| l["kind"] == "license-marker")
        .collect();
    assert_eq!(markers[0]["marker"]["expression"], "Apache-2.0");
    assert_eq!(markers[0]["marker"]["imprecise"], "Apache 2");
    assert_eq!(markers[1]["marker"]["holder"], "Example");
}

#[test]
fn scan_reports_input_offsets_when_the_input_is_not_utf8() {
    // The same license notice after 100 spaces and after 100 bytes that are not UTF-8 (read
    // as spaces): the same findings and markers at the same offsets, the same license named.
    // Before, the text the license layer read was the lossy UTF-8 copy, 200 bytes longer.
    let dir = tempfile::tempdir().unwrap();
    let mit = verbatim::license::texts::text_of("MIT").unwrap().text;
    let notice = format!("Copyright (c) 2020 Jane Doe\n\n{mit}\n");
    let scan = |prefix: &[u8]| {
        let f = dir.path().join("answer.txt");
        std::fs::write(&f, [prefix, notice.as_bytes()].concat()).unwrap();
        scan_with_findings(&f, dir.path())
    };
    let ascii = scan(&b" ".repeat(100));
    let invalid = scan(&b"\xff\xfe".repeat(50));
    assert!(ascii.contains("\"license\":\"MIT\""), "{ascii}");
    assert!(ascii.contains("\"holder\":\"Jane Doe\""), "{ascii}");
    assert_eq!(invalid, ascii);
}

#[test]
fn corpus_inspect_prints_each_files_license_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("p/src")).unwrap();
    std::fs::write(
        root.join("p/Cargo.toml"),
        "[package]\nname = \"p\"\nversion = \"0.1.0\"\nlicense = \"MIT\"\n",
    )
    .unwrap();
    std::fs::write(root.join("p/src/lib.rs"), "pub fn p() {}\n").unwrap();
    std::fs::write(
        root.join("p/src/gpl.rs"),
        "// SPDX-License-Identifier: GPL-2.0-only\nfn g() {}\n",
    )
    .unwrap();
    std::fs::write(root.join("c.toml"), "name = \"c\"\nrights = \"licensed\"\n").unwrap();
    let out = run(
        &[
            "corpus",
            "inspect",
            "--format",
            "text",
            root.join("c.toml").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "p/src/lib.rs  MIT  (package-manifest: p/Cargo.toml)",
        "p/src/gpl.rs  GPL-2.0-only  (spdx-identifier)",
        "disagrees: package-manifest says MIT (p/Cargo.toml)",
        "by license:",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

/// Several files, or a directory, as a CI gate over generated code runs it: each JSON line
/// names its input, in order; hidden entries and binary files under a directory are left
/// out (binary ones counted on stderr); a file named explicitly is scanned whatever it holds.
#[test]
fn scan_of_several_files_and_a_directory_names_each_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("tree/sub")).unwrap();
    std::fs::create_dir_all(d.join("tree/.git")).unwrap();
    std::fs::write(d.join("tree/b.md"), ANSWER).unwrap();
    std::fs::write(d.join("tree/sub/a.md"), ANSWER).unwrap();
    std::fs::write(d.join("tree/clean.txt"), "Nothing copied here at all.\n").unwrap();
    std::fs::write(d.join("tree/.git/copy.md"), ANSWER).unwrap();
    let binary = format!("\0\x01\x02{ANSWER}");
    std::fs::write(d.join("tree/blob.md"), &binary).unwrap();
    std::fs::write(d.join("named.md"), &binary).unwrap();
    let p = |s: &str| d.join(s).to_str().unwrap().to_string();

    let out = run(
        &[
            "scan",
            "--index",
            FIXTURE,
            "--format",
            "jsonl",
            &p("tree"),
            &p("named.md"),
        ],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inputs: Vec<String> = json_lines(&out.stdout)
        .iter()
        .map(|v| v["input"].as_str().unwrap().to_string())
        .collect();
    // Walked in name order; `.git` and the binary `blob.md` left out; `named.md` scanned.
    assert_eq!(inputs, [p("tree/b.md"), p("tree/sub/a.md"), p("named.md")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 binary files skipped"), "{err}");

    // The same finding as a scan of the file alone, plus the input's name.
    let alone = run(&["scan", "--index", FIXTURE, &p("tree/b.md")], None);
    let mut alone = json_lines(&alone.stdout).remove(0);
    let mut first = json_lines(&out.stdout).remove(0);
    assert_eq!(
        first.as_object_mut().unwrap().remove("input").unwrap(),
        p("tree/b.md")
    );
    assert!(alone.get("input").is_none());
    alone.as_object_mut().unwrap().remove("index_id");
    first.as_object_mut().unwrap().remove("index_id");
    assert_eq!(first, alone);

    // Only clean files: exit 0, nothing printed.
    let out = run(
        &[
            "scan",
            "--index",
            FIXTURE,
            &p("tree/clean.txt"),
            &p("tree/clean.txt"),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
}

/// A file that cannot be read among others: its error on stderr and exit 2, the others still
/// reported; `-` cannot be mixed with files.
#[test]
fn scan_of_several_inputs_reports_what_it_can_and_exits_2_on_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("answer.md");
    std::fs::write(&f, ANSWER).unwrap();
    let out = run(
        &[
            "scan",
            "--index",
            FIXTURE,
            "/nonexistent/a.md",
            f.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json_lines(&out.stdout).len(), 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open /nonexistent/a.md"), "{err}");

    let out = run(
        &["scan", "--index", FIXTURE, "-", f.to_str().unwrap()],
        Some(ANSWER),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be scanned together"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A standard import block that 40 indexed files hold is boilerplate: `scan` reports nothing
/// and exits 0; with `--shared` it lists one finding per file, marked, and exits 1.
#[test]
fn scan_leaves_out_boilerplate_many_files_hold_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let block = common::IMPORT_BLOCK;
    let manifest = common::write_corpus(
        dir.path(),
        "shared",
        "code",
        "licensed",
        Some("MIT"),
        &common::shared_docs(40, block),
    );
    let idx = dir.path().join("idx");
    let out = index_build(manifest.to_str().unwrap(), &idx);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer =
        format!("fn main() {{ println!(\"hi\"); }}\n{block}fn shout(y: u64) -> u64 {{ y * 7 }}\n");
    let args = [
        "scan",
        "--no-license-index",
        "--kind",
        "code",
        "--lang",
        "rust",
        "--index",
        idx.to_str().unwrap(),
        "-",
    ];
    let out = run(&args, Some(&answer));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(&[&args[..8], &["--shared", "-"]].concat(), Some(&answer));
    let lines = findings(&out);
    assert_eq!(lines.len(), 40, "{lines:?}");
    assert!(lines.iter().all(|l| l["shared"] == true), "{lines:?}");
}

#[test]
fn policy_explain_shows_the_pieces_a_rule_weighs() {
    // A near copy of GPL code as `scan` prints it: 120 tokens, 0.93 similar, but no piece of it
    // copied whole longer than 30 tokens (what idioms of unrelated code share). The example
    // policy blocks copyleft code only on a piece of 46 tokens (or 78 renamed): annotated, and
    // `explain` says which piece fell short. The same finding with a 50-token piece is blocked.
    let dir = tempfile::tempdir().unwrap();
    let line = |exact: u32| {
        format!(
            "{{\"output_start\":0,\"output_end\":600,\"corpus\":\"gpl-code\",\"doc\":\"src/ledger.rs\",\"units\":120,\"exact_units\":{exact},\"aligned_units\":45,\"kind\":\"near\",\"similarity\":0.93,\"channel\":\"code\",\"license\":\"GPL-3.0-or-later\",\"rights\":\"licensed\"}}\n"
        )
    };
    let findings = dir.path().join("findings.jsonl");
    std::fs::write(&findings, format!("{}{}", line(30), line(50))).unwrap();
    let out = run(
        &[
            "policy",
            "explain",
            "proxy-config/policies/annotate-permissive-block-copyleft.toml",
            "--findings",
            findings.to_str().unwrap(),
        ],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases: Vec<&str> = text.split("gpl-code:src/ledger.rs").skip(1).collect();
    assert_eq!(cases.len(), 2, "{text}");
    for want in [
        "annotate by `default`",
        "120 units (longest exact piece 30, longest stretch without a gap 45)",
        "longest exact piece 30 units < min_exact_units 46",
        "longest stretch without a gap 45 units < min_aligned_units 78",
    ] {
        assert!(cases[0].contains(want), "{want} in {}", cases[0]);
    }
    assert!(
        cases[1].contains("block by `block-copyleft-code`"),
        "{}",
        cases[1]
    );
}
