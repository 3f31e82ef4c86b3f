//! `verbatim report`: the audit log read back (with --since), and a page that says what
//! happened, escapes what it shows, and loads nothing from anywhere.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use serde_json::json;
use verbatim::report::{html, read};

fn rec(kind: &str, time: &str, extra: serde_json::Value) -> String {
    let mut data = json!({"time": time, "request_id": "vb_1", "tenant": "abcd", "model": "m", "route": "chat-completions"});
    for (k, v) in extra.as_object().unwrap() {
        data[k] = v.clone();
    }
    json!({"v": 1, "type": kind, "data": data}).to_string()
}

#[test]
fn the_report_counts_filters_and_escapes() {
    let log = [
        rec("decision", "2026-11-01T10:00:00.000Z", json!({"action": "block", "reason": "long-code-run", "rule": "long-code-run", "corpus": "gpl-code", "doc": "src/<evil>.rs", "license": "GPL-3.0-only", "rights": "licensed", "units": 60, "channel": "code", "span_sha256": "ab12"})),
        rec("stream_end", "2026-11-01T10:00:01.000Z", json!({"end": "blocked"})),
        rec("decision", "2026-11-02T10:00:00.000Z", json!({"action": "annotate", "reason": "short-run", "rule": "default", "corpus": "acme-books", "doc": "ch1.md", "license": "LicenseRef-Acme", "rights": "copyrighted", "units": 20, "channel": "prose"})),
        rec("stream_end", "2026-11-02T10:00:01.000Z", json!({"end": "completed"})),
        "not json".to_string(),
    ]
    .join("\n");
    let all = read(&log, None);
    assert_eq!(
        (
            all.decisions.len(),
            all.stream_ends.len(),
            all.skipped_lines
        ),
        (2, 2, 1)
    );
    let since = read(&log, Some("2026-11-02"));
    assert_eq!((since.decisions.len(), since.stream_ends.len()), (1, 1));

    let page = html(&all, "audit.jsonl", "2026-11-03T00:00:00Z");
    assert!(page.starts_with("<!doctype html>"));
    assert!(page.contains("Latest blocks (1 in all)"));
    assert!(
        page.contains("src/&lt;evil&gt;.rs") && !page.contains("<evil>"),
        "text from the log is escaped"
    );
    assert!(page.contains("1 unreadable lines skipped"));
    assert!(
        page.contains("<code>ab12</code>"),
        "the evidence hash is shown"
    );
    for external in ["<script", "http://", "https://", "src=\""] {
        assert!(
            !page.contains(external),
            "the page must be self-contained: found {external}"
        );
    }
}
