//! Whole (non-streamed) responses and request bodies, for every provider adapter: any bytes as
//! a JSON response, scanned against the committed fixture index and acted on by the built-in
//! policy or by one that redacts everything (so overlapping redactions, blocks and annotations
//! are all reached); any bytes as a request body, read for the caller-supplied texts. Never a
//! panic; a rewritten response is JSON and keeps none of the text a redaction covered.
#![no_main]
#[path = "common.rs"]
mod common;
use std::sync::Arc;

use common::{index, redact_all, windows};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use verbatim::policy::Policy;
use verbatim::proxy::api::{self, Api};
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
    };
    let (changed, decisions) = scan_response(api, body, &setup);
    if let Some(b) = &changed {
        let out: Value = serde_json::from_slice(b).expect("a rewritten response is JSON");
        // Nothing a redaction covered survives in the piece of text it was found in: each
        // redacted span's pieces ([`windows`]) are looked for in the same piece rewritten, those
        // that occur nowhere else in it. (The same words elsewhere — another choice, a tool
        // call's escaped arguments — are that piece's own business.)
        let input: Value = serde_json::from_slice(body).expect("it was read as JSON");
        let before = api::response_pieces(api, &input);
        let after = api::response_pieces(api, &out);
        for d in decisions.iter().filter(|d| d.action == Action::Redact) {
            let c = &d.citation;
            let Some(piece) = before
                .iter()
                .find(|p| format!("{}:{}:{:?}", p.key.a, p.key.b, p.key.part) == d.stream)
            else {
                continue;
            };
            let Some(span) = piece
                .text
                .get(c.output_start as usize..c.output_end as usize)
            else {
                panic!("a redaction's span is not on the text's character boundaries");
            };
            let (head, tail) = (
                &piece.text[..c.output_start as usize],
                &piece.text[c.output_end as usize..],
            );
            let now = after
                .iter()
                .find(|p| p.key == piece.key)
                .map_or("", |p| &p.text);
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
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let _ = api::request_texts(api, &v);
        let _ = api::wants_stream(&v);
    }
});
