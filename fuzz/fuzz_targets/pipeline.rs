//! The response pipeline and every provider adapter: arbitrary upstream bytes for each API,
//! against the committed fixture index, under the built-in policy or one that redacts
//! everything; never a panic, every released frame is whole, and with strict holdback no
//! text a redaction or a block of an exact run covered is released — not in the events that
//! carry the text, not in those that repeat it at the end.
#![no_main]
#[path = "common.rs"]
mod common;
use std::collections::BTreeMap;
use std::sync::Arc;

use common::{index, redact_all, windows, without_placeholders};
use libfuzzer_sys::fuzz_target;
use verbatim::policy::Policy;
use verbatim::proxy::api::{self, Api};
use verbatim::proxy::pipeline::{Action, Hold, MAX_QUOTE_STREAMS, Pipeline, ScanSetup};
use verbatim::proxy::sse::SseDecoder;

/// Each text stream's text (`a:b:Part`, as decisions name them) in SSE bytes, as the
/// pipeline reads it (every event's pieces, in order), and the texts closing events repeat
/// ([`api::for_each_repeated_text`]). Events that are not JSON are relayed unread
/// (`tests/proxy.rs`, `malformed_events_and_invalid_utf8_pass_through`), and fields no adapter
/// reads are relayed as they came, so neither is looked at.
fn stream_texts(api: Api, bytes: &[u8]) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut d = SseDecoder::new(usize::MAX);
    let mut evs = Vec::new();
    let _ = d.push(bytes, &mut evs);
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut repeated: BTreeMap<String, String> = BTreeMap::new();
    let mut quotes = 0u64;
    for ev in evs {
        let Some(mut v) = ev
            .data()
            .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        else {
            continue;
        };
        api::for_each_repeated_text(api, &mut v, &mut |k, t| {
            if let Some(t) = t.as_str() {
                let r = repeated
                    .entry(format!("{}:{}:{:?}", k.a, k.b, k.part))
                    .or_default();
                r.push_str(t);
                r.push('\u{0}');
            }
        });
        for p in api::event_pieces(api, &v) {
            // The pipeline gives each citation quote a stream of its own, numbered in
            // arrival order up to its cap (the rest share one more).
            let b = if p.key.part == api::Part::Quote {
                quotes += 1;
                (quotes - 1).min(MAX_QUOTE_STREAMS)
            } else {
                p.key.b
            };
            out.entry(format!("{}:{}:{:?}", p.key.a, b, p.key.part))
                .or_default()
                .push_str(&p.text);
        }
    }
    (out, repeated)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let api = match data[0] % 4 {
        0 => Api::ChatCompletions,
        1 => Api::Completions,
        2 => Api::Responses,
        _ => Api::Messages,
    };
    let hold = if data[1] & 1 == 0 {
        Hold::Strict
    } else {
        Hold::None
    };
    let size = (data[1] as usize >> 1) % 31 + 1;
    let setup = ScanSetup {
        indexes: vec![index()],
        exempt: Arc::default(),
        policy: if data[0] & 4 == 0 {
            Arc::new(Policy::builtin())
        } else {
            redact_all()
        },
        scope: Default::default(),
        hold,
        max_event_bytes: 1 << 16,
        max_holdback_bytes: 1 << 16,
        max_response_bytes: 1 << 20,
        answer_kind: None,
    };
    let mut p = Pipeline::new(api, setup);
    let (mut released, mut decisions) = (Vec::new(), Vec::new());
    for c in data[2..].chunks(size) {
        for frame in p.push(c) {
            assert!(!frame.is_empty());
            released.extend_from_slice(&frame);
        }
        decisions.extend(p.take_decisions());
    }
    let end = if data[1] & 2 == 0 {
        p.finish()
    } else {
        p.abort()
    };
    for frame in end {
        released.extend_from_slice(&frame);
    }
    decisions.extend(p.take_decisions());
    if hold != Hold::Strict {
        return; // released as it came: nothing can be taken back
    }
    // What the upstream sent and what the client got, stream by stream; a span a decision
    // cut out must not be in what the client got (pieces of it, see [`windows`], that occur nowhere else in
    // their stream's text: those may be there by right).
    let (sent, _) = stream_texts(api, &data[2..]);
    let (got, raw) = stream_texts(api, &released);
    // Exact runs and license markers only: a gapped (`near`) or `renamed` run extends left
    // across gaps past the text strict holdback keeps, so some of its first units may be out
    // before it is found — measured as "leaked units" per family by the quality benchmark
    // (docs/quality.md), not promised away.
    for d in decisions.iter().filter(|d| {
        matches!(d.action, Action::Redact | Action::Block)
            && (d.kind == "exact" || d.citation.marker.is_some())
    }) {
        let Some(text) = sent.get(&d.stream) else {
            continue;
        };
        let (a, b) = (
            d.citation.output_start as usize,
            d.citation.output_end as usize,
        );
        if text.get(a..b).is_none() {
            continue; // the pipeline stopped reading before the end (a limit, a block)
        }
        // A redaction in tool-call arguments cuts string contents only (the JSON between
        // them stays): those are what must be gone.
        let cut: Vec<(usize, usize)> =
            if d.action == Action::Redact && d.stream.ends_with(":ToolArgs") {
                verbatim::normalize::string_contents_within(text, a as u64, b as u64)
                    .into_iter()
                    .map(|(x, y)| (x as usize, y as usize))
                    .collect()
            } else {
                vec![(a, b)]
            };
        let out = without_placeholders(got.get(&d.stream).map_or("", String::as_str));
        let raw = without_placeholders(raw.get(&d.stream).map_or("", String::as_str));
        for (a, b) in cut {
            let span = &text[a..b];
            for w in windows(span) {
                if text[..a].contains(w) || text[b..].contains(w) {
                    continue;
                }
                assert!(
                    !out.contains(w),
                    "{:?}: {w:?} of {span:?} released",
                    d.action
                );
                assert!(
                    !raw.contains(w),
                    "{:?}: {w:?} of {span:?} released in a repeating event",
                    d.action
                );
            }
        }
    }
});
