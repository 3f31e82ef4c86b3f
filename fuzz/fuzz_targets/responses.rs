//! Whole (non-streamed) responses and request bodies, for every provider adapter: any bytes as
//! a JSON response, scanned against the committed fixture index and acted on by the built-in
//! policy or by one that redacts everything (so overlapping redactions, blocks and annotations
//! are all reached); any bytes as a request body, read for the caller-supplied texts. Never a
//! panic; a rewritten response is JSON and keeps none of the text a redaction covered; tool-call
//! arguments that were JSON still are (a redaction cuts string contents only).
#![no_main]
#[path = "common.rs"]
mod common;
use std::sync::Arc;

use common::{index, redact_all, windows, without_placeholders};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use verbatim::policy::Policy;
use verbatim::proxy::api::{self, Api, Part};
use verbatim::proxy::pipeline::{Action, Hold, ScanSetup, scan_response};

fuzz_target!(|data: &[u8]| {
    let Some((&head, body)) = data.split_first() else {
        return;
    };
    let api = match head % 4 {
        0 => Api::ChatCompletions,
        1 => Api::Completions,
        2 => Api::Responses,
        _ => Api::Messages,
    };
    let policy = if head & 4 == 0 {
        Arc::new(Policy::builtin())
    } else {
        redact_all()
    };
    let setup = ScanSetup {
        indexes: vec![index()],
        exempt: Arc::default(),
        policy,
        scope: Default::default(),
        hold: Hold::Strict,
        max_event_bytes: 1 << 16,
        max_holdback_bytes: 1 << 16,
        max_response_bytes: 1 << 20,
        answer_kind: None,
    };
    let (changed, decisions) = scan_response(api, body, &setup);
    if let Some(b) = &changed {
        for line in b.split(|&c| c == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)) {
            let _: Value = serde_json::from_slice(line)
                .or_else(|_| serde_json::from_slice(b))
                .expect("a rewritten response is JSON, or JSON Lines");
        }
        // Nothing a redaction covered survives in the piece of text it was found in: each
        // redacted span's pieces ([`windows`]) are looked for in the same piece rewritten, those
        // that occur nowhere else in it. (The same words elsewhere — another choice, a tool
        // call's escaped arguments — are that piece's own business.)
        let before = named_pieces(api, body);
        let after = named_pieces(api, b);
        for d in decisions.iter().filter(|d| d.action == Action::Redact) {
            let c = &d.citation;
            let Some((_, piece)) = before.iter().find(|(name, _)| *name == d.stream) else {
                panic!("a decision names a stream the response does not have: {}", d.stream);
            };
            if piece
                .text
                .get(c.output_start as usize..c.output_end as usize)
                .is_none()
            {
                panic!("a redaction's span is not on the text's character boundaries");
            }
            let now = without_placeholders(
                after
                    .iter()
                    .find(|(name, _)| *name == d.stream)
                    .map_or("", |(_, p)| &p.text),
            );
            // In tool-call arguments only string contents are cut (the JSON between them
            // stays): those are what must be gone.
            let cut: Vec<(usize, usize)> = if piece.key.part == Part::ToolArgs {
                verbatim::normalize::string_contents_within(
                    &piece.text,
                    c.output_start,
                    c.output_end,
                )
                .into_iter()
                .map(|(a, b)| (a as usize, b as usize))
                .collect()
            } else {
                vec![(c.output_start as usize, c.output_end as usize)]
            };
            for (a, b) in cut {
                let (head, span, tail) = (&piece.text[..a], &piece.text[a..b], &piece.text[b..]);
                for w in windows(span) {
                    if !head.contains(w) && !tail.contains(w) {
                        assert!(
                            !now.contains(w),
                            "redacted text released: {w:?} of {span:?} in {now:?}"
                        );
                    }
                }
            }
        }
    }
    if let Some(b) = &changed {
        let after = named_pieces(api, b);
        for (name, piece) in named_pieces(api, body) {
            if piece.key.part != Part::ToolArgs
                || serde_json::from_str::<Value>(&piece.text).is_err()
            {
                continue;
            }
            if let Some((_, now)) = after.iter().find(|(n, _)| *n == name)
                && !now.text.is_empty()
            {
                assert!(
                    serde_json::from_str::<Value>(&now.text).is_ok(),
                    "tool-call arguments are no longer JSON: {:?} became {:?}",
                    piece.text,
                    now.text
                );
            }
        }
    }
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let _ = api::request_texts(api, &v);
        for t in api::request_tool_texts(api, &v) {
            let _ = verbatim::normalize::tool_text_kinds(&t);
        }
        let _ = api::wants_stream(&v);
    }
});

/// The pieces `scan_response` reads, each named as its decisions name their stream: one
/// answer's, or each of a list's answers and model-written items (`data[i]/` before the name),
/// or one item's (read as a response's only output).
fn named_pieces(api: Api, body: &[u8]) -> Vec<(String, api::Piece)> {
    let parsed = serde_json::from_slice::<Value>(body);
    if parsed.as_ref().map_or(true, api::batch_result) {
        // JSON Lines of batch results, each line's answer named `line[i]/…`.
        let mut out = Vec::new();
        for (i, line) in body.split(|&c| c == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Ok(mut v) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            // Each line's answer is read as one answer (never as a list or an item).
            if let Some((api, answer)) = api::batch_answer(&mut v) {
                out.extend(api::response_pieces(api, answer).into_iter().map(|p| {
                    let name = format!("line[{i}]/{}:{}:{:?}", p.key.a, p.key.b, p.key.part);
                    (name, p)
                }));
            }
        }
        return out;
    }
    match parsed {
        Ok(v) => named_value(api, &v),
        Err(_) => Vec::new(),
    }
}

fn named_value(api: Api, v: &Value) -> Vec<(String, api::Piece)> {
    let one = |prefix: &str, api: Api, v: &Value| -> Vec<(String, api::Piece)> {
        api::response_pieces(api, v)
            .into_iter()
            .map(|p| {
                let name = format!("{prefix}{}:{}:{:?}", p.key.a, p.key.b, p.key.part);
                (name, p)
            })
            .collect()
    };
    let item = |prefix: &str, v: &Value| {
        if api::model_wrote(v) {
            one(prefix, Api::Responses, &serde_json::json!({ "output": [v] }))
        } else {
            Vec::new()
        }
    };
    match api::Stored::of(api, v) {
        api::Stored::Answer => one("", api, v),
        api::Stored::Item => item("", v),
        api::Stored::List => v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .flat_map(|(i, e)| {
                let prefix = format!("data[{i}]/");
                match api::Stored::of(api, e) {
                    api::Stored::Item => item(&prefix, e),
                    _ => one(&prefix, api, e),
                }
            })
            .collect(),
        api::Stored::Other => Vec::new(),
    }
}
