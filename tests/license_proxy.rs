//! The license layer in the proxy: the built-in SPDX index (built into a temporary cache), a
//! reproduced license identified once by its license, license markers cited, and license runs
//! not held back when the policy cannot block them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;
mod proxy_mock;

use std::sync::{Arc, OnceLock};

use proxy_mock::harness::*;
use proxy_mock::*;
use serde_json::Value;
use verbatim::index::Index;
use verbatim::license::texts;
use verbatim::policy::Policy;
use verbatim::proxy::api::Api;
use verbatim::proxy::pipeline::{Hold, Pipeline, ScanSetup, Scope};

/// The built-in index, built once for this test binary into a temporary cache.
fn builtin() -> Arc<Index> {
    static DIR: OnceLock<(tempfile::TempDir, std::path::PathBuf)> = OnceLock::new();
    let (_, p) = DIR.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        let p = verbatim::license::builtin::ensure(t.path()).unwrap();
        (t, p)
    });
    Arc::new(Index::open(p).unwrap())
}

fn answer() -> String {
    format!(
        "Here is a file header and the license:\n\n// SPDX-License-Identifier: GPL-3.0-or-later\n// Copyright (c) 2024 Example Ltd\n\n{}\nThat is the whole license.",
        texts::text_of("MIT")
            .unwrap()
            .text
            .replace("Copyright (c) <year> <copyright holders>", "")
    )
}

fn citations(evs: &[(Option<String>, Value)]) -> Vec<Value> {
    evs.iter()
        .filter_map(|(_, v)| v.get("verbatim"))
        .flat_map(|x| x["findings"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reproduced_license_is_one_finding_named_by_its_license_and_markers_are_cited() {
    let text = answer();
    let mock = start(Reply::sse(&openai_stream(&text, 3), 64)).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let p = proxy_with(&mock, vec![builtin()], |c| c.audit_log = Some(log.clone())).await;
    let (status, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    assert_eq!(status, 200);
    let evs = events(&body);
    assert_eq!(
        openai_text(&evs),
        text,
        "annotations add events, never change the text"
    );
    let cites = citations(&evs);
    let lic: Vec<&Value> = cites
        .iter()
        .filter(|c| c["kind"] == "license-text")
        .collect();
    assert_eq!(
        lic.len(),
        1,
        "one finding for the license, not one per similar text: {lic:?}"
    );
    assert_eq!(lic[0]["license"], "MIT");
    assert_eq!(lic[0]["doc"], "MIT");
    assert_eq!(lic[0]["url"], "https://spdx.org/licenses/MIT.html");
    assert!(lic[0]["coverage"].as_f64().unwrap() > 0.95, "{:?}", lic[0]);
    let markers: Vec<&Value> = cites
        .iter()
        .filter(|c| c["kind"] == "license-marker")
        .collect();
    assert_eq!(
        markers.len(),
        1,
        "the copyleft identifier is annotated: {markers:?}"
    );
    assert_eq!(markers[0]["license"], "GPL-3.0-or-later");
    assert_eq!(markers[0]["marker"]["kind"], "spdx-identifier");
    // The audit trail has all of them: the copyright notice and MIT header phrase are logged.
    let recs = audit_records(&log, 1).await;
    let d: Vec<(&str, &str, &str)> = recs
        .iter()
        .filter(|r| r["type"] == "decision")
        .map(|r| {
            (
                r["data"]["kind"].as_str().unwrap(),
                r["data"]["license"].as_str().unwrap(),
                r["data"]["action"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(d.contains(&("license-text", "MIT", "annotate")), "{d:?}");
    assert!(
        d.contains(&("license-marker", "GPL-3.0-or-later", "annotate")),
        "{d:?}"
    );
    assert!(
        d.contains(&("license-marker", "NOASSERTION", "log")),
        "{d:?}"
    );
    assert!(d.contains(&("license-marker", "MIT", "log")), "{d:?}");
    let cat: Vec<&str> = recs
        .iter()
        .filter(|r| r["data"]["kind"] == "license-text")
        .map(|r| r["data"]["category"].as_str().unwrap())
        .collect();
    assert_eq!(cat, ["permissive"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_mention_of_a_license_is_a_marker_not_a_license_text() {
    let text = "This crate is licensed under the MIT License; see the LICENSE file for details.";
    let mock = start(Reply::json(200, &openai_json(text))).await;
    let p = proxy_with(&mock, vec![builtin()], |_| {}).await;
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(false, "go")).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], text);
    // Logged markers do not annotate; and no license-text finding exists to annotate.
    assert!(v.get("verbatim").is_none(), "{v}");
}

fn setup(policy: Policy) -> ScanSetup {
    ScanSetup {
        indexes: vec![builtin()],
        exempt: Arc::default(),
        policy: Arc::new(policy),
        scope: Scope::default(),
        hold: Hold::Strict,
        max_event_bytes: 1 << 20,
        max_holdback_bytes: 8 << 20,
        max_response_bytes: 64 << 20,
        answer_kind: None,
    }
}

/// Events pushed and released while the first 60 words of the MIT license stream in, one
/// character an event, and the length of the last 12 words (t = 12: at most t − 1 words and the
/// word being formed may be held).
fn released_while_streaming(policy: Policy) -> (usize, usize, usize) {
    let words: Vec<String> = texts::text_of("MIT")
        .unwrap()
        .text
        .split_whitespace()
        .skip(6) // the title and copyright line
        .take(60)
        .map(|w| format!("{w} "))
        .collect();
    let tail = words[48..].concat().len();
    let upstream = openai_stream(&words.concat(), 1);
    let mut p = Pipeline::new(Api::ChatCompletions, setup(policy));
    let text = String::from_utf8(upstream).unwrap();
    let mut out = 0;
    let mut pushed = 0;
    let evs: Vec<&str> = text.split_inclusive("\n\n").collect();
    // Not the finish event and `[DONE]`: the stream is still going.
    for ev in &evs[..evs.len() - 2] {
        pushed += 1;
        out += p.push(ev.as_bytes()).len();
    }
    (pushed, out, tail)
}

#[test]
fn license_runs_are_held_back_only_when_the_policy_could_block_them() {
    // Built-in policy: license texts are annotated, so only the last t − 1 words are held.
    let (pushed, out, tail) = released_while_streaming(Policy::builtin());
    assert!(
        pushed - out <= tail,
        "held {} of {pushed} events (t − 1 words: {tail})",
        pushed - out
    );
    // A policy that blocks license texts holds the whole open run.
    let strict = policy(
        "version = 1\n[[rules]]\nname = \"no-license-texts\"\naction = \"block\"\nwhen = { kind = [\"license-text\"], min_units = 100 }\n",
    );
    let (pushed, out, _) = released_while_streaming(strict);
    assert!(
        out < 5,
        "released {out} of {pushed} events of an open license run"
    );
}

/// Threads (and processes) that start together on an empty cache wait for one build of the
/// built-in index instead of removing and replacing each other's: without the lock, a
/// `serve` started beside another after a format change failed to start now and then.
#[test]
fn concurrent_first_starts_share_one_build_of_the_builtin_index() {
    let t = tempfile::tempdir().unwrap();
    let got: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| verbatim::license::builtin::ensure(t.path())))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for g in got {
        let p = g.unwrap();
        Index::open(&p).unwrap().verify().unwrap();
    }
    let mut left: Vec<String> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let entry = verbatim::license::builtin::entry_name();
    assert_eq!(left, [entry.clone(), format!("{entry}.lock")]);
}

/// The fixture corpus's GPL ledger code, copied into an answer as a fenced block with a
/// copyright comment inserted inside it: the code channel skips the comment, so the index
/// finding spans it, and the license layer finds the notice inside that span. Two findings
/// over one region, both to be redacted.
fn overlapping_answer() -> (String, &'static str) {
    let code = std::fs::read_to_string("corpora/fixtures/gpl-code/src/ledger.rs").unwrap();
    let body = code.split_once("#[derive").unwrap().1;
    let notice = "// Copyright (C) 2025 Ünïcödé Ltd — «all rights reserved»";
    let (head, tail) = body.split_once("    Date(String),").unwrap();
    let copied = format!("#[derive{head}    {notice}\n    Date(String),{tail}");
    (
        format!("Here is the ledger code:\n\n```rust\n{copied}```\n\nThat is all — ünïcödé."),
        notice,
    )
}

/// A policy from its text, loaded as a file is.
fn policy(toml: &str) -> Policy {
    Policy::parse(std::path::Path::new("p.toml"), toml.to_string()).unwrap()
}

fn redact_everything() -> Policy {
    policy("version = 1\nname = \"redact-all\"\n[defaults]\naction = \"redact\"\n")
}

/// Redactions whose spans overlap (an index finding and a license marker inside it) in a
/// response that is not streamed: all of the text either covers is replaced, nothing of it is
/// released, and the text around them is kept whole.
#[test]
fn overlapping_redactions_in_a_whole_response_leave_nothing_of_either() {
    let (text, notice) = overlapping_answer();
    let mut s = setup(redact_everything());
    s.indexes = vec![Arc::new(Index::open("tests/fixtures/index-v5").unwrap())];
    let body = serde_json::to_vec(&openai_json(&text)).unwrap();
    let (changed, decisions) =
        verbatim::proxy::pipeline::scan_response(Api::ChatCompletions, &body, &s);
    let kinds: Vec<&str> = decisions.iter().map(|d| d.kind.as_str()).collect();
    assert!(
        kinds.contains(&"exact") && kinds.contains(&"license-marker"),
        "{kinds:?}"
    );
    let v: Value = serde_json::from_slice(&changed.expect("redacted")).unwrap();
    let got = v["choices"][0]["message"]["content"].as_str().unwrap();
    for copied in [
        "shillings",
        "bearing",
        "Column::Owed",
        notice,
        "Ünïcödé Ltd",
    ] {
        assert!(!got.contains(copied), "{copied:?} released: {got}");
    }
    assert!(got.starts_with("Here is the ledger code:"), "{got}");
    assert!(got.ends_with("That is all — ünïcödé."), "{got}");
    assert_only_placeholders_between_fences(got);
}

/// What stands between the code fences of [`overlapping_answer`] once redacted: placeholders
/// and whitespace, not one character of the copied code.
fn assert_only_placeholders_between_fences(got: &str) {
    let inner = got
        .split_once("```rust\n")
        .and_then(|(_, r)| r.rsplit_once("```"))
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("fences lost: {got}"));
    let mut rest = inner.to_string();
    while let Some(a) = rest.find("[verbatim: redacted") {
        let b = a + rest[a..].find(']').expect("placeholder closed");
        rest.replace_range(a..=b, "");
    }
    assert!(
        rest.trim().is_empty(),
        "copied text released around the placeholders: {rest:?} in {got}"
    );
    assert!(inner.contains("[verbatim: redacted"), "{got}");
}

/// The same in a stream, held strictly, for Chat Completions and Responses (whose closing
/// events repeat the whole text, even when it differs from the deltas): the notice inside the copied code is redacted when its line
/// arrives, the code when its run ends; neither may leave any of the other's text behind.
#[test]
fn overlapping_redactions_in_a_stream_leave_nothing_of_either() {
    let (text, notice) = overlapping_answer();
    let index = Arc::new(Index::open("tests/fixtures/index-v5").unwrap());
    // A Responses stream whose closing events repeat a text that differs from its deltas (here
    // in one word, before the copied code): what they repeat is redacted all the same.
    let differing = String::from_utf8(responses_stream(&text, 3))
        .unwrap()
        .replace("Here is the ledger code:", "Here is THE ledger code:")
        .into_bytes();
    // A closing event that comes before any delta of its stream, behind held text of another
    // stream: it was set to the stream's text when a redaction came while the copied code was
    // still held, and released with it (found by the `pipeline` fuzz target).
    let whole = String::from_utf8(responses_stream(&text, 3)).unwrap();
    let evs: Vec<&str> = whole.split_inclusive("\n\n").collect();
    let done = evs
        .iter()
        .position(|e| e.starts_with("event: response.output_text.done"))
        .unwrap();
    let first_delta = evs
        .iter()
        .position(|e| e.starts_with("event: response.output_text.delta"))
        .unwrap();
    let other = "event: response.output_text.delta\ndata: {\"type\": \"response.output_text.delta\", \"output_index\": 1, \"content_index\": 0, \"delta\": \"Some words of another item first\"}\n\n";
    // The other item ends (releasing what waits behind it) once the notice's line is in, the
    // copied code still held.
    let line_end = text[..text.find(notice).unwrap() + notice.len()]
        .chars()
        .count()
        + 1;
    let other_done = first_delta + line_end / 3 + 1;
    let end_other = "event: response.output_item.done\ndata: {\"type\": \"response.output_item.done\", \"output_index\": 1, \"item\": {}}\n\n";
    let mut early: Vec<&str> = evs[..first_delta].to_vec();
    early.extend([other, evs[done]]);
    early.extend(&evs[first_delta..other_done]);
    early.push(end_other);
    early.extend(&evs[other_done..]);
    let early = early.concat().into_bytes();
    for (api, upstream) in [
        (Api::ChatCompletions, openai_stream(&text, 3)),
        (Api::Responses, responses_stream(&text, 3)),
        (Api::Responses, differing),
        (Api::Responses, early),
    ] {
        let mut s = setup(redact_everything());
        s.indexes = vec![Arc::clone(&index)];
        let mut p = Pipeline::new(api, s);
        let mut out = Vec::new();
        for piece in upstream.chunks(7) {
            for f in p.push(piece) {
                out.extend_from_slice(&f);
            }
        }
        for f in p.finish() {
            out.extend_from_slice(&f);
        }
        let evs = events(&out);
        let got = match api {
            Api::Responses => evs
                .iter()
                .filter(|(_, v)| v["type"] == "response.output_text.delta")
                .map(|(_, v)| v["delta"].as_str().unwrap())
                .collect::<String>(),
            _ => openai_text(&evs),
        };
        assert_only_placeholders_between_fences(&got);
        // Every event, the closing ones included, is free of the copied text.
        let all = String::from_utf8_lossy(&out);
        for copied in [
            "shillings",
            "bearing",
            "Ok(out)",
            "enum Column",
            notice,
            "Ünïcödé Ltd",
        ] {
            assert!(!all.contains(copied), "{api:?}: {copied:?} released: {all}");
        }
    }
}

/// An Anthropic `tool_use` block's input is a JSON object: redacting text found in it (here a
/// copyright notice and an SPDX identifier in a file the model writes) must replace what it
/// covers inside the object's strings and leave the object valid (it was left as it was,
/// found by the `responses` fuzz target from its first seed; then blanked whole).
#[test]
fn redacting_a_tool_use_input_in_a_whole_response_replaces_it() {
    let file = "// SPDX-License-Identifier: GPL-3.0-or-later\n// Copyright (C) 2024 The Ledger Tools Authors\n\nfn main() {}\n";
    let v = serde_json::json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
        "content": [
            {"type": "text", "text": "I will write the file."},
            {"type": "tool_use", "id": "toolu_1", "name": "write_file",
             "input": {"path": "src/main.rs", "content": file}},
        ],
        "stop_reason": "tool_use",
    });
    let s = setup(redact_everything());
    let body = serde_json::to_vec(&v).unwrap();
    let (changed, decisions) = verbatim::proxy::pipeline::scan_response(Api::Messages, &body, &s);
    assert!(
        decisions.iter().any(|d| d.kind == "license-marker"),
        "{decisions:?}"
    );
    let out: Value = serde_json::from_slice(&changed.expect("redacted")).unwrap();
    let all = out.to_string();
    let input = &out["content"][1]["input"];
    // (The citations name the holder and the license: the input must not.)
    assert!(!input.to_string().contains("Ledger Tools Authors"), "{all}");
    assert!(
        !input.to_string().contains("SPDX-License-Identifier"),
        "{all}"
    );
    assert_eq!(input["path"], "src/main.rs", "{all}");
    let content = input["content"].as_str().unwrap();
    assert!(
        content.contains("[verbatim: redacted") && content.ends_with("fn main() {}\n"),
        "{all}"
    );
    assert_eq!(out["content"][1]["name"], "write_file");
    assert_eq!(out["content"][0]["text"], "I will write the file.");
}

/// The tool-call arguments a pipeline released, joined, from its output: Chat Completions'
/// `function.arguments` deltas or Anthropic's `partial_json` ones.
fn released_arguments(api: Api, out: &[u8]) -> String {
    events(out)
        .iter()
        .filter_map(|(_, v)| match api {
            Api::Messages => v.pointer("/delta/partial_json"),
            _ => v.pointer("/choices/0/delta/tool_calls/0/function/arguments"),
        })
        .filter_map(Value::as_str)
        .collect()
}

/// An agent writing a corpus file through a tool call: the arguments are JSON, the file's lines
/// escaped inside one string. Read as the JSON they are, the file's code was prose glued to
/// `\n` escapes and never matched the code index. Now each string value is read as the text it
/// holds (code in the language of the sibling `path`): the copy is an exact finding of the code
/// channel, and redacting it (and the license notice inside it) cuts string contents only —
/// the arguments stay valid JSON, the path intact, the placeholder inside the content — at
/// every event size, streamed (Chat Completions, Anthropic) and whole.
#[test]
fn a_file_written_through_a_tool_call_is_matched_as_code_and_redacted_inside_its_json() {
    let (copied, notice) = overlapping_answer();
    let code = copied
        .split_once("```rust\n")
        .and_then(|(_, r)| r.rsplit_once("```"))
        .unwrap()
        .0;
    // In the order a model writes them: the file's name, then its content (a value is read in
    // the language named before it).
    let args = format!(
        r#"{{"path": "src/ledger.rs", "content": {}, "mode": 420}}"#,
        serde_json::to_string(code).unwrap()
    );
    // An edit whose two strings hold the two halves: one run spans both (and the JSON between
    // them), and only string contents may be cut.
    let (a, b) = code.split_at(code.find("pub fn total_owed").unwrap());
    let edit = format!(
        r#"{{"path": "src/ledger.rs", "mode": 420, "old_string": {}, "content": {}}}"#,
        serde_json::to_string(a).unwrap(),
        serde_json::to_string(b).unwrap()
    );
    let index = Arc::new(Index::open("tests/fixtures/index-v5").unwrap());
    let check = |what: &str, args_out: &str, decisions: &[verbatim::proxy::pipeline::Decision]| {
        assert!(
            decisions
                .iter()
                .any(|d| d.kind == "exact" && d.citation.channel == "code"),
            "{what}: {decisions:?}"
        );
        let v: Value = serde_json::from_str(args_out)
            .unwrap_or_else(|e| panic!("{what}: arguments are not JSON ({e}): {args_out}"));
        assert_eq!(v["path"], "src/ledger.rs", "{what}");
        assert_eq!(v["mode"], 420, "{what}");
        let content = format!(
            "{}{}",
            v["old_string"].as_str().unwrap_or(""),
            v["content"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: {args_out}"))
        );
        assert!(content.contains("[verbatim: redacted"), "{what}: {content}");
        for gone in [
            "shillings",
            "bearing",
            "Column::Owed",
            notice,
            "Ünïcödé Ltd",
        ] {
            assert!(
                !content.contains(gone),
                "{what}: {gone:?} released: {content}"
            );
        }
    };
    // The content before the file name: its first lines that are not comments (`#[derive`,
    // `pub enum`) say it is C-like code.
    let content_first = format!(
        r#"{{"content": {}, "path": "src/ledger.rs", "mode": 420}}"#,
        serde_json::to_string(code).unwrap()
    );
    for piece in [1, 2, 5, 16, 200] {
        for (api, args) in [
            (Api::ChatCompletions, &args),
            (Api::Messages, &args),
            (Api::ChatCompletions, &edit),
            (Api::Messages, &content_first),
        ] {
            let upstream = match api {
                Api::Messages => anthropic_blocks("Plan.", "Writing it.", args, piece),
                _ => openai_two_choices("Writing it.", args, piece),
            };
            let mut s = setup(redact_everything());
            s.indexes = vec![Arc::clone(&index)];
            let mut p = Pipeline::new(api, s);
            let mut out = Vec::new();
            for chunk in upstream.chunks(11) {
                for f in p.push(chunk) {
                    out.extend_from_slice(&f);
                }
            }
            for f in p.finish() {
                out.extend_from_slice(&f);
            }
            let decisions = p.take_decisions();
            check(
                &format!("{api:?}, piece {piece}"),
                &released_arguments(api, &out),
                &decisions,
            );
            let all = String::from_utf8_lossy(&out);
            assert!(!all.contains("shillings"), "{api:?}, piece {piece}: {all}");
        }
    }
    // The same arguments in a whole response.
    let v = serde_json::json!({
        "id": "c", "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
            "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "write_file", "arguments": args}}]}}],
    });
    let mut s = setup(redact_everything());
    s.indexes = vec![Arc::clone(&index)];
    let body = serde_json::to_vec(&v).unwrap();
    let (changed, decisions) =
        verbatim::proxy::pipeline::scan_response(Api::ChatCompletions, &body, &s);
    let out: Value = serde_json::from_slice(&changed.expect("redacted")).unwrap();
    let args_out = out
        .pointer("/choices/0/message/tool_calls/0/function/arguments")
        .and_then(Value::as_str)
        .unwrap();
    check("whole response", args_out, &decisions);

    // An Anthropic `tool_use` input is an object, read here re-serialised with sorted keys:
    // `content` before `path`. Whole, the arguments are searched for a file name first.
    let v = serde_json::json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "write_file",
            "input": {"path": "src/ledger.rs", "content": code, "mode": 420}}],
        "stop_reason": "tool_use",
    });
    let mut s = setup(redact_everything());
    s.indexes = vec![Arc::clone(&index)];
    let body = serde_json::to_vec(&v).unwrap();
    let (changed, decisions) = verbatim::proxy::pipeline::scan_response(Api::Messages, &body, &s);
    let out: Value = serde_json::from_slice(&changed.expect("redacted")).unwrap();
    check(
        "whole Anthropic response",
        &out["content"][0]["input"].to_string(),
        &decisions,
    );
}

/// Choices are edited where they stand in the array: a response that repeats a choice index
/// (malformed, or made to evade the filter) had a later choice's redaction written into the
/// first choice of that index, and released the later one as it came (found by the
/// `responses` fuzz target).
#[test]
fn a_repeated_choice_index_cannot_move_a_redaction_to_another_choice() {
    let (text, notice) = overlapping_answer();
    let v = serde_json::json!({
        "id": "c", "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Nothing to see."}, "finish_reason": "stop"},
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"},
        ],
    });
    let mut s = setup(redact_everything());
    s.indexes = vec![Arc::new(Index::open("tests/fixtures/index-v5").unwrap())];
    let body = serde_json::to_vec(&v).unwrap();
    let (changed, _) = verbatim::proxy::pipeline::scan_response(Api::ChatCompletions, &body, &s);
    let out: Value = serde_json::from_slice(&changed.expect("redacted")).unwrap();
    assert_eq!(out["choices"][0]["message"]["content"], "Nothing to see.");
    let second = out["choices"][1]["message"]["content"].as_str().unwrap();
    assert!(
        !second.contains(notice) && !second.contains("shillings"),
        "{second}"
    );
    assert_only_placeholders_between_fences(second);
}

/// Streams `text` through a strict pipeline, `piece` characters an event; returns the text
/// released before the stream's end (while the notice line was still unfinished, if it is the
/// last) and the whole text released.
fn released_text(policy: Policy, text: &str, piece: usize) -> (String, String) {
    let mut p = Pipeline::new(Api::ChatCompletions, setup(policy));
    let upstream = String::from_utf8(openai_stream(text, piece)).unwrap();
    let evs: Vec<&str> = upstream.split_inclusive("\n\n").collect();
    let mut out = Vec::new();
    // Not the finish event and `[DONE]`: the stream is still going.
    for ev in &evs[..evs.len() - 2] {
        for f in p.push(ev.as_bytes()) {
            out.extend_from_slice(&f);
        }
    }
    let during = openai_text(&events(&out));
    for ev in &evs[evs.len() - 2..] {
        for f in p.push(ev.as_bytes()) {
            out.extend_from_slice(&f);
        }
    }
    for f in p.finish() {
        out.extend_from_slice(&f);
    }
    (during, openai_text(&events(&out)))
}

/// License markers are recognised when their line ends. When the policy could block or redact
/// markers, strict holdback holds the unfinished line from an SPDX tag, a notice, a license
/// name or header phrase, or whatever its end could begin ("SPDX-Lic", "Copyr", "the GNU
/// General") until the marker is decided, so nothing of it is released first, at any event
/// size. When the policy only logs or annotates them, the line flows as it arrives.
#[test]
fn a_marker_is_held_until_its_line_ends_when_the_policy_could_block_or_redact_it() {
    let rule = |action: &str| {
        policy(&format!(
            "version = 1\n[[rules]]\nname = \"markers\"\naction = \"{action}\"\nwhen = {{ kind = [\"license-marker\"] }}\n"
        ))
    };
    // Each marker's line goes on long enough that the index's own holdback (the last t − 1
    // words) has moved past the marker before the line ends.
    let more = "and many more words follow on this same line, one after the other, until the \
                held tail of words is well past the marker";
    let head = "Here is the file:\n\n// ";
    let identifier =
        format!("{head}SPDX-License-Identifier: GPL-3.0-only -- {more}\nfn main() {{}}\n");
    let long_line = format!("Notes.\nCopyright (C) 2007 Free Software Foundation, Inc. {more}");
    let notice = format!("{long_line}\nThe end.\n");
    for piece in 1..=7 {
        let (_, got) = released_text(rule("block"), &identifier, piece);
        assert_eq!(
            got, head,
            "piece {piece}: only the text before the identifier"
        );
        let (_, got) = released_text(rule("block"), &notice, piece);
        assert_eq!(
            got, "Notes.\n",
            "piece {piece}: only the text before the notice"
        );
        // A header phrase, and one split over two lines.
        let header = format!("// This file is licensed under the Apache License, {more}\n");
        let (_, got) = released_text(rule("block"), &header, piece);
        assert_eq!(
            got, "// This file is ",
            "piece {piece}: only the text before the phrase"
        );
        let split = format!("It is under the GNU General\nPublic License, {more}\n");
        let (_, got) = released_text(rule("block"), &split, piece);
        assert_eq!(
            got, "It is under the ",
            "piece {piece}: only the text before the phrase"
        );
        let (_, got) = released_text(rule("redact"), &notice, piece);
        for part in ["Copyright", "(C)", "2007", "Free Software", "Inc."] {
            assert!(
                !got.contains(part),
                "piece {piece}: {part:?} released: {got:?}"
            );
        }
        assert!(
            got.starts_with("Notes.\n") && got.ends_with("\nThe end.\n"),
            "piece {piece}: {got:?}"
        );
        let (during, _) = released_text(rule("redact"), &long_line, piece);
        // Events go out whole: the one that starts the notice line waits with it.
        assert!(
            !during.is_empty() && "Notes.\n".starts_with(during.as_str()),
            "piece {piece}: the unfinished notice line is held: {during:?}"
        );
        let (during, _) = released_text(Policy::builtin(), &long_line, piece);
        assert!(
            during.contains("Copyright (C) 2007 Free Software Foundation, Inc. and many"),
            "piece {piece}: the built-in policy only logs markers, so nothing waits: {during:?}"
        );
    }
}

/// An agent that read a file (the tool result reaches the request as plain text) and writes it
/// back through a tool call: the run is the caller's own text. A request that offers tools has
/// its tool results read as code too ([`verbatim::normalize::tool_text_kinds`]), so the run in
/// the arguments is caller-supplied; read as prose only, the run in the arguments is not
/// recognised as the caller's. Read as Markdown it is now (its code outside fences is read as
/// code too, from the line after the first that looks like code); before that it was not.
#[test]
fn a_file_the_caller_supplied_written_back_through_a_tool_is_caller_supplied() {
    let file = std::fs::read_to_string("corpora/fixtures/gpl-code/src/ledger.rs").unwrap();
    let code = file.split_once("/// A column").unwrap().1;
    let args = format!(
        r#"{{"file_path": "src/ledger.rs", "content": {}}}"#,
        serde_json::to_string(code).unwrap()
    );
    let index = Arc::new(Index::open("tests/fixtures/index-v5").unwrap());
    let kinds_of = |kinds: &[verbatim::normalize::TextKind]| -> Vec<String> {
        let mut s = setup(Policy::builtin());
        s.indexes = vec![Arc::clone(&index)];
        s.exempt = Arc::new(verbatim::matcher::exemptions_read(
            kinds.iter().map(|&k| (file.as_str(), k)),
            &s.indexes,
        ));
        let mut p = Pipeline::new(Api::ChatCompletions, s);
        p.push(&openai_two_choices("Done.", &args, 9));
        p.finish();
        p.take_decisions()
            .into_iter()
            .filter(|d| d.kind != "license-marker")
            .map(|d| d.kind)
            .collect()
    };
    assert_eq!(
        kinds_of(&verbatim::normalize::tool_text_kinds(&file)),
        ["caller-supplied"]
    );
    assert_eq!(
        kinds_of(&[verbatim::normalize::TextKind::Markdown]),
        ["caller-supplied"]
    );
    assert_eq!(kinds_of(&[verbatim::normalize::TextKind::Prose]), ["exact"]);
}

/// Responses output items that carry model text besides messages and function calls: a
/// reasoning summary, the code a hosted code interpreter runs (Python) and a custom tool's
/// free-form input. Each is scanned as its own stream — the code as Python, the input as
/// Markdown — and redacted in its deltas and in every event that repeats it (their `.done`
/// events, `output_item.done`, `response.completed`). They were relayed unscanned.
#[test]
fn responses_summaries_interpreter_code_and_custom_tool_input_are_scanned() {
    // A function without `#` or `'`: the same units read as Python as read as Rust.
    let code = ledger_total_owed_open();
    let input = format!("*** Begin Patch\n```rust\n{code}\n}}\n```\n");
    let summary = "I will total what is owed, then write the patch.";
    let mut out = String::new();
    let mut n = 0;
    let mut ev = |v: Value| {
        let mut v = v;
        v["sequence_number"] = serde_json::json!(n);
        n += 1;
        out.push_str(&format!(
            "event: {}\ndata: {v}\n\n",
            v["type"].as_str().unwrap()
        ));
    };
    let pieces = |s: &str| -> Vec<String> {
        s.chars()
            .collect::<Vec<_>>()
            .chunks(5)
            .map(|c| c.iter().collect())
            .collect()
    };
    ev(serde_json::json!({"type": "response.created", "response": {"id": "r", "output": []}}));
    for p in pieces(summary) {
        ev(
            serde_json::json!({"type": "response.reasoning_summary_text.delta", "output_index": 0, "summary_index": 0, "delta": p}),
        );
    }
    ev(
        serde_json::json!({"type": "response.reasoning_summary_text.done", "output_index": 0, "summary_index": 0, "text": summary}),
    );
    for p in pieces(&code) {
        ev(
            serde_json::json!({"type": "response.code_interpreter_call_code.delta", "output_index": 1, "delta": p}),
        );
    }
    ev(
        serde_json::json!({"type": "response.code_interpreter_call_code.done", "output_index": 1, "code": code}),
    );
    for p in pieces(&input) {
        ev(
            serde_json::json!({"type": "response.custom_tool_call_input.delta", "output_index": 2, "delta": p}),
        );
    }
    ev(
        serde_json::json!({"type": "response.custom_tool_call_input.done", "output_index": 2, "input": input}),
    );
    let items = serde_json::json!([
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": summary}]},
        {"type": "code_interpreter_call", "code": code},
        {"type": "custom_tool_call", "name": "apply_patch", "input": input},
    ]);
    for (i, it) in items.as_array().unwrap().iter().enumerate() {
        ev(serde_json::json!({"type": "response.output_item.done", "output_index": i, "item": it}));
    }
    ev(serde_json::json!({"type": "response.completed", "response": {"id": "r", "output": items}}));

    let mut s = setup(redact_everything());
    s.indexes = vec![Arc::new(Index::open("tests/fixtures/index-v5").unwrap())];
    let mut p = Pipeline::new(Api::Responses, s);
    let mut released = Vec::new();
    for chunk in out.as_bytes().chunks(13) {
        for f in p.push(chunk) {
            released.extend_from_slice(&f);
        }
    }
    for f in p.finish() {
        released.extend_from_slice(&f);
    }
    let streams: Vec<String> = p
        .take_decisions()
        .into_iter()
        .filter(|d| d.kind == "exact" && d.citation.channel == "code")
        .map(|d| d.stream)
        .collect();
    assert!(
        streams.contains(&"1:0:Code".to_string()) && streams.contains(&"2:0:ToolArgs".to_string()),
        "{streams:?}"
    );
    let all = String::from_utf8_lossy(&released);
    assert!(!all.contains("shillings"), "{all}");
    assert!(all.contains(summary), "the summary is relayed: {all}");
    let evs = events(&released);
    let text_of = |ty: &str, field: &str| -> String {
        evs.iter()
            .filter(|(_, v)| v["type"] == ty)
            .filter_map(|(_, v)| v[field].as_str())
            .collect()
    };
    for (delta, done, field) in [
        (
            "response.code_interpreter_call_code.delta",
            "response.code_interpreter_call_code.done",
            "code",
        ),
        (
            "response.custom_tool_call_input.delta",
            "response.custom_tool_call_input.done",
            "input",
        ),
    ] {
        let got = text_of(delta, "delta");
        assert!(got.contains("[verbatim: redacted"), "{got}");
        assert_eq!(
            text_of(done, field),
            got,
            "{done} repeats what the deltas delivered"
        );
    }
    assert!(
        text_of("response.custom_tool_call_input.delta", "delta")
            .starts_with("*** Begin Patch\n```rust\n"),
        "the text around the run is kept"
    );
}

/// A refusal is model text like any other: Chat Completions' `refusal` deltas and message
/// field, Responses' `response.refusal.delta` / `.done` events and `refusal` content parts (in
/// `content_part.done`, `output_item.done`, `response.completed` and whole responses) are
/// scanned as their own stream and redacted wherever they appear. They were relayed unscanned.
#[test]
fn refusals_are_scanned_and_redacted_wherever_they_appear() {
    let chapter = std::fs::read_to_string("corpora/fixtures/acme-books/chapter-01.md").unwrap();
    let passage: String = chapter
        .split_whitespace()
        .skip(4)
        .take(40)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(passage.contains("lighthouse"));
    let refusal = format!("I can't share that book, but it begins: {passage} and so on.");
    let pieces: Vec<String> = refusal
        .chars()
        .collect::<Vec<_>>()
        .chunks(7)
        .map(|c| c.iter().collect())
        .collect();
    let mut s = setup(redact_everything());
    s.indexes = vec![Arc::new(Index::open("tests/fixtures/index-v5").unwrap())];
    let run = |api: Api, upstream: String| -> (String, Vec<String>) {
        let mut p = Pipeline::new(api, s.clone());
        let mut released = Vec::new();
        for chunk in upstream.as_bytes().chunks(11) {
            for f in p.push(chunk) {
                released.extend_from_slice(&f);
            }
        }
        for f in p.finish() {
            released.extend_from_slice(&f);
        }
        let streams = p
            .take_decisions()
            .into_iter()
            .filter(|d| d.kind == "exact")
            .map(|d| d.stream)
            .collect();
        (String::from_utf8(released).unwrap(), streams)
    };
    let sse = |evs: Vec<Value>| -> String {
        evs.iter()
            .map(|v| match v["type"].as_str() {
                Some(t) if v.get("choices").is_none() => format!("event: {t}\ndata: {v}\n\n"),
                _ => format!("data: {v}\n\n"),
            })
            .collect()
    };

    // Chat Completions, streamed.
    let mut evs = vec![
        serde_json::json!({"id": "c", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": null, "refusal": ""}}]}),
    ];
    for p in &pieces {
        evs.push(
            serde_json::json!({"id": "c", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"refusal": p}}]}),
        );
    }
    evs.push(
        serde_json::json!({"id": "c", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    );
    let (out, streams) = run(Api::ChatCompletions, sse(evs) + "data: [DONE]\n\n");
    assert_eq!(streams, ["0:0:Refusal"]);
    assert!(!out.contains("lighthouse"), "{out}");
    let got: String = events(out.as_bytes())
        .iter()
        .filter_map(|(_, v)| {
            v["choices"][0]["delta"]["refusal"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert!(
        got.starts_with("I can't share that book, but it begins: ")
            && got.contains("[verbatim: redacted")
            && got.ends_with(" and so on."),
        "{got}"
    );

    // Responses, streamed: the deltas and every event that repeats the refusal.
    let part = serde_json::json!({"type": "refusal", "refusal": refusal});
    let item =
        serde_json::json!({"type": "message", "id": "m", "role": "assistant", "content": [part]});
    let mut evs = vec![
        serde_json::json!({"type": "response.created", "response": {"id": "r", "output": []}}),
    ];
    for p in &pieces {
        evs.push(serde_json::json!({"type": "response.refusal.delta", "output_index": 0, "content_index": 0, "delta": p}));
    }
    evs.push(serde_json::json!({"type": "response.refusal.done", "output_index": 0, "content_index": 0, "refusal": refusal}));
    evs.push(serde_json::json!({"type": "response.content_part.done", "output_index": 0, "content_index": 0, "part": part}));
    evs.push(
        serde_json::json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
    );
    evs.push(serde_json::json!({"type": "response.completed", "response": {"id": "r", "output": [item]}}));
    let (out, streams) = run(Api::Responses, sse(evs));
    assert_eq!(streams, ["0:0:Refusal"]);
    assert!(!out.contains("lighthouse"), "{out}");
    let evs = events(out.as_bytes());
    let deltas: String = evs
        .iter()
        .filter(|(_, v)| v["type"] == "response.refusal.delta")
        .filter_map(|(_, v)| v["delta"].as_str())
        .collect();
    assert!(deltas.contains("[verbatim: redacted"), "{deltas}");
    let repeated: Vec<&str> = evs
        .iter()
        .filter_map(|(_, v)| match v["type"].as_str() {
            Some("response.refusal.done") => v["refusal"].as_str(),
            Some("response.content_part.done") => v["part"]["refusal"].as_str(),
            Some("response.output_item.done") => v["item"]["content"][0]["refusal"].as_str(),
            Some("response.completed") => {
                v["response"]["output"][0]["content"][0]["refusal"].as_str()
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        repeated,
        [deltas.as_str(); 4],
        "each repeats what the deltas delivered"
    );

    // Whole responses.
    let mut chat = openai_json("");
    chat["choices"][0]["message"]["content"] = Value::Null;
    chat["choices"][0]["message"]["refusal"] = serde_json::json!(refusal);
    let whole = serde_json::json!({"id": "r", "object": "response", "output": [item]});
    for (api, v, at) in [
        (Api::ChatCompletions, chat, "/choices/0/message/refusal"),
        (Api::Responses, whole, "/output/0/content/0/refusal"),
    ] {
        let body = serde_json::to_vec(&v).unwrap();
        let (changed, decisions) = verbatim::proxy::pipeline::scan_response(api, &body, &s);
        assert!(
            decisions
                .iter()
                .any(|d| d.kind == "exact" && d.stream == "0:0:Refusal"),
            "{api:?}: {decisions:?}"
        );
        let v: Value = serde_json::from_slice(&changed.expect("redacted")).unwrap();
        let got = v.pointer(at).and_then(Value::as_str).unwrap();
        assert!(
            !got.contains("lighthouse")
                && got.contains("[verbatim: redacted")
                && got.ends_with(" and so on."),
            "{api:?}: {got}"
        );
    }
}

/// A license written through a tool call (`{"path": "LICENSE", "content": …}`, read as
/// Markdown: the name has no code extension) is one license-text finding named by its
/// license; identification reads the region in the JSON text, escapes and all, and still
/// names it.
#[test]
fn a_license_written_through_a_tool_call_is_identified() {
    let mit = texts::text_of("MIT")
        .unwrap()
        .text
        .replace("<year>", "2024")
        .replace("<copyright holders>", "Example Ltd");
    let args = format!(
        r#"{{"path": "LICENSE", "content": {}}}"#,
        serde_json::to_string(&mit).unwrap()
    );
    let v = serde_json::json!({
        "id": "c", "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
            "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "write_file", "arguments": args}}]}}],
    });
    let body = serde_json::to_vec(&v).unwrap();
    let (_, decisions) = verbatim::proxy::pipeline::scan_response(
        Api::ChatCompletions,
        &body,
        &setup(Policy::builtin()),
    );
    let licenses: Vec<(&str, &str)> = decisions
        .iter()
        .filter(|d| d.kind == "license-text")
        .map(|d| (d.citation.license.as_str(), d.stream.as_str()))
        .collect();
    assert_eq!(licenses, [("MIT", "0:0:ToolArgs")], "{decisions:?}");
}

/// A block in a whole response cuts a custom tool's free-form input as text (what precedes the
/// run is kept); JSON arguments, which a cut would break, are emptied instead.
#[test]
fn a_block_cuts_free_form_tool_input_and_empties_json_arguments() {
    let file = std::fs::read_to_string("corpora/fixtures/gpl-code/src/ledger.rs").unwrap();
    let code = file.split_once("/// A column").unwrap().1;
    let input = format!("*** Begin Patch\n```rust\n{code}```\n");
    let args = format!(
        r#"{{"path": "src/ledger.rs", "content": {}}}"#,
        serde_json::to_string(code).unwrap()
    );
    let v = serde_json::json!({"id": "r", "object": "response", "output": [
        {"type": "custom_tool_call", "name": "apply_patch", "input": input},
        {"type": "function_call", "name": "write_file", "arguments": args},
    ]});
    let mut s = setup(policy("version = 1\n[defaults]\naction = \"block\"\n"));
    s.indexes = vec![Arc::new(Index::open("tests/fixtures/index-v5").unwrap())];
    let body = serde_json::to_vec(&v).unwrap();
    let (changed, _) = verbatim::proxy::pipeline::scan_response(Api::Responses, &body, &s);
    let out: Value = serde_json::from_slice(&changed.expect("blocked")).unwrap();
    let cut = out["output"][0]["input"].as_str().unwrap();
    assert!(
        cut.starts_with("*** Begin Patch\n```rust\n") && !cut.contains("shillings"),
        "{cut:?}"
    );
    assert_eq!(out["output"][1]["arguments"], "");
}

/// Through the proxy's pipeline under strict holdback: an answer quoting a file that begins
/// with a table of zeros (too repetitive to be indexed) and goes on with distinctive code, under
/// a policy that redacts. The table is held while it streams, since the run the code opens
/// extends left over it, so the redaction covers it and none of it reaches the client.
#[test]
fn strict_holdback_redacts_a_repetitive_start_a_later_run_extends_over() {
    let dir = tempfile::tempdir().unwrap();
    let (_, doc) = common::table_then_code('t', 8);
    let index = common::one_code_doc_index(dir.path(), &doc, verbatim::index::Params::default());
    let answer = format!("Here is the file:\n\n```rust\n{doc}```\n");
    for piece in [1, 4, 9] {
        let mut s = setup(redact_everything());
        s.indexes = vec![Arc::clone(&index)];
        let mut p = Pipeline::new(Api::ChatCompletions, s);
        let mut out = Vec::new();
        for ev in String::from_utf8(openai_stream(&answer, piece))
            .unwrap()
            .split_inclusive("\n\n")
        {
            for f in p.push(ev.as_bytes()) {
                out.extend_from_slice(&f);
            }
        }
        for f in p.finish() {
            out.extend_from_slice(&f);
        }
        let got = openai_text(&events(&out));
        assert!(
            got.starts_with("Here is the file:") && got.contains("[verbatim: redacted"),
            "piece {piece}: {got}"
        );
        assert!(
            !got.contains("0, 0"),
            "piece {piece}: the table was released: {got}"
        );
    }
}

/// What a proxy pushes with [`Pipeline::push_into`] (released events appended to its queue of
/// events not yet sent, which may still hold earlier ones) is what [`Pipeline::push`]
/// returns, byte for byte and in order: for a stream relayed, one redacted, one blocked, and
/// ones stopped by the holdback and response limits, in pieces of several sizes.
#[test]
fn pushing_into_the_senders_queue_releases_what_push_returns() {
    let (text, _) = overlapping_answer();
    let index = Arc::new(Index::open("tests/fixtures/index-v5").unwrap());
    let block = policy("version = 1\nname = \"block-all\"\n[defaults]\naction = \"block\"\n");
    let log = policy("version = 1\nname = \"log-all\"\n[defaults]\naction = \"log\"\n");
    let cases: Vec<(&str, Policy, usize, usize)> = vec![
        ("relayed", log.clone(), 8 << 20, 64 << 20),
        ("redact", redact_everything(), 8 << 20, 64 << 20),
        ("block", block, 8 << 20, 64 << 20),
        ("holdback limit", redact_everything(), 64, 64 << 20),
        ("response limit", log, 8 << 20, 600),
    ];
    for (name, pol, max_held, max_response) in cases {
        for (api, upstream) in [
            (Api::ChatCompletions, openai_stream(&text, 3)),
            (Api::Responses, responses_stream(&text, 5)),
        ] {
            for piece in [1, 7, 64] {
                let mut s = setup(pol.clone());
                s.indexes = vec![Arc::clone(&index)];
                s.max_holdback_bytes = max_held;
                s.max_response_bytes = max_response;
                let mut a = Pipeline::new(api, s.clone());
                let mut b = Pipeline::new(api, s);
                let (mut returned, mut queued) = (Vec::new(), Vec::new());
                let mut ready = std::collections::VecDeque::new();
                for (i, chunk) in upstream.chunks(piece).enumerate() {
                    returned.extend(a.push(chunk));
                    b.push_into(chunk, &mut ready);
                    // The sender is sometimes behind: its queue still holds earlier events.
                    if i % 3 == 2 {
                        queued.extend(ready.drain(..));
                    }
                    assert_eq!(a.ended(), b.ended(), "{name} {api:?} piece {piece}");
                }
                returned.extend(a.finish());
                queued.extend(ready.drain(..));
                queued.extend(b.finish());
                assert_eq!(returned, queued, "{name} {api:?} piece {piece}");
                assert_eq!(a.refused(), b.refused(), "{name} {api:?} piece {piece}");
                // Each case does what it is named for.
                let expected = match name {
                    "holdback limit" => Some("holdback-limit"),
                    "response limit" => Some("response-too-large"),
                    _ => None,
                };
                assert_eq!(a.refused(), expected, "{name} {api:?} piece {piece}");
                // A limit's stop ends the stream as a block does.
                let stopped = !matches!(name, "relayed" | "redact");
                assert_eq!(a.ended_by_block(), stopped, "{name} {api:?} piece {piece}");
                if name == "redact" {
                    let all = String::from_utf8_lossy(&returned.concat()).to_string();
                    assert!(
                        all.contains("[verbatim: redacted"),
                        "{api:?} {piece}: {all}"
                    );
                }
            }
        }
    }
}

/// An Anthropic citation's quote is a stream of its own, decided with the event that carries it
/// whole: under strict holdback neither the quote nor the text after it waits for the content
/// block to end (with one stream for all of a block's quotes, the quote's last words stayed
/// undecided, and everything queued behind them, until `content_block_stop`). A quote that
/// reproduces a license is still found, in its own stream.
#[test]
fn a_citation_quote_is_decided_at_its_event_under_strict_holdback() {
    let (ev, quote) = (sse_event, citation_event);
    let words = "The valley was mild all week and the farmers planted their barley early because the soil dried out sooner than expected this spring";
    let mut evs = vec![
        ev(
            "message_start",
            serde_json::json!({"type": "message_start", "message": {"id": "m", "type": "message",
                "role": "assistant", "model": "mock", "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 1, "output_tokens": 1}}}),
        ),
        ev(
            "content_block_start",
            serde_json::json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": "", "citations": []}}),
        ),
        quote("Farmers in the valley planted barley early this year, a local paper reported."),
    ];
    for w in words.split_inclusive(' ') {
        evs.push(ev(
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": w}}),
        ));
    }
    evs.push(quote(&mit_quote()));
    let mut p = Pipeline::new(Api::Messages, setup(Policy::builtin()));
    let mut out = Vec::new();
    let mut released_at = Vec::new();
    for (i, e) in evs.iter().enumerate() {
        for f in p.push(e.as_bytes()) {
            released_at.push(i);
            out.extend_from_slice(&f);
        }
    }
    // The block has not ended. The first quote (event 2) went out with its own push.
    assert!(released_at.contains(&2), "{released_at:?}");
    let got = events(&out);
    assert!(
        got.iter()
            .any(|(_, v)| v.pointer("/delta/citation/cited_text").is_some()),
        "the quote is released before the block ends"
    );
    // The text after it flows with strict holdback's usual lag (t − 1 = 11 words), not the
    // whole block.
    let text: String = got
        .iter()
        .filter_map(|(_, v)| v.pointer("/delta/text").and_then(Value::as_str))
        .collect();
    let n = words.split_whitespace().count();
    assert!(
        text.split_whitespace().count() >= n - 12,
        "released {:?} of {n} words",
        text
    );
    // The second quote is 40 words of the MIT license (shared with MIT-0, which the finding may
    // name): a license-text finding in a stream of its own.
    let mut rest = Vec::new();
    for e in [
        ev(
            "content_block_stop",
            serde_json::json!({"type": "content_block_stop", "index": 0}),
        ),
        ev(
            "message_delta",
            serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "end_turn",
                "stop_sequence": null}, "usage": {"output_tokens": 9}}),
        ),
        ev("message_stop", serde_json::json!({"type": "message_stop"})),
    ] {
        for f in p.push(e.as_bytes()) {
            rest.extend_from_slice(&f);
        }
    }
    for f in p.finish() {
        rest.extend_from_slice(&f);
    }
    out.extend_from_slice(&rest);
    let cites = citations(&events(&out));
    assert!(
        cites.iter().any(|c| c["kind"] == "license-text"
            && c["license"].as_str().is_some_and(|l| l.starts_with("MIT"))),
        "{cites:?}"
    );
}

fn sse_event(name: &str, v: Value) -> String {
    format!("event: {name}\ndata: {v}\n\n")
}

/// An Anthropic `citations_delta` of block 0 quoting `text` from a web page.
fn citation_event(text: &str) -> String {
    sse_event(
        "content_block_delta",
        serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {
            "type": "citations_delta", "citation": {"type": "web_search_result_location",
            "cited_text": text, "url": "https://example.org/a", "title": "A",
            "encrypted_index": "e"}}}),
    )
}

/// 40 words of the MIT license (shared with MIT-0).
fn mit_quote() -> String {
    let mit = texts::text_of("MIT").unwrap().text;
    mit.split_whitespace()
        .skip(6)
        .take(40)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Past the 64 quotes a response may open a stream each for, the rest share one, decided as
/// their block ends: a license quoted there is still found.
#[test]
fn quotes_past_the_cap_share_a_stream_and_are_still_scanned() {
    let mut upstream = sse_event(
        "message_start",
        serde_json::json!({"type": "message_start", "message": {"id": "m", "type": "message",
            "role": "assistant", "model": "mock", "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 1, "output_tokens": 1}}}),
    );
    upstream += &sse_event(
        "content_block_start",
        serde_json::json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": "", "citations": []}}),
    );
    for i in 0..70 {
        upstream += &citation_event(&format!("Page {i} says the valley had a mild week."));
    }
    upstream += &citation_event(&mit_quote());
    upstream += &sse_event(
        "content_block_stop",
        serde_json::json!({"type": "content_block_stop", "index": 0}),
    );
    upstream += &sse_event(
        "message_delta",
        serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "end_turn",
            "stop_sequence": null}, "usage": {"output_tokens": 9}}),
    );
    upstream += &sse_event("message_stop", serde_json::json!({"type": "message_stop"}));
    let mut p = Pipeline::new(Api::Messages, setup(Policy::builtin()));
    let mut out = Vec::new();
    for e in upstream.split_inclusive("\n\n") {
        for f in p.push(e.as_bytes()) {
            out.extend_from_slice(&f);
        }
    }
    for f in p.finish() {
        out.extend_from_slice(&f);
    }
    let got = events(&out);
    let quotes = got
        .iter()
        .filter(|(_, v)| v.pointer("/delta/citation/cited_text").is_some())
        .count();
    assert_eq!(
        quotes, 71,
        "every quote is released (annotated, not blocked)"
    );
    let cites = citations(&got);
    assert!(
        cites.iter().any(|c| c["kind"] == "license-text"
            && c["license"].as_str().is_some_and(|l| l.starts_with("MIT"))),
        "{cites:?}"
    );
}
