//! The proxy in process: a mock provider on 127.0.0.1:0 replays recorded OpenAI and Anthropic
//! streams with chosen chunk sizes; the real proxy scans them against the committed fixture
//! index. Every case has a defined outcome and none may hang (each request has a deadline).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;
mod proxy_mock;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use proxy_mock::harness::*;
use proxy_mock::*;
use serde_json::{Value, json};
use verbatim::index::Index;
use verbatim::proxy::config::{Config, UpstreamHttp2};
use verbatim::proxy::pipeline::{Action, Hold};
use verbatim::proxy::server::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_streams_pass_through_byte_identical() {
    for (piece, chunk) in [(1, 1), (3, 17), (50, 4096)] {
        let text = format!("{INTRO}{UNRELATED}{OUTRO}");
        let upstream = openai_stream(&text, piece);
        let mock = start(Reply::sse(&upstream, chunk)).await;
        let p = proxy(&mock, |_| {}).await;
        let (status, headers, body) = post(
            p.addr,
            "/v1/chat/completions",
            &chat_req(true, "tell me a story"),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "text/event-stream");
        assert_eq!(
            headers["x-request-id"], "req_mock_1",
            "upstream headers reach the client"
        );
        assert_eq!(body, Bytes::from(upstream), "piece {piece} chunk {chunk}");
        // The request reached the upstream unchanged, credentials included.
        {
            let seen = mock.seen.lock().unwrap();
            assert_eq!(seen.requests[0].0, "/v1/chat/completions");
            assert_eq!(seen.requests[0].1["authorization"], "Bearer sk-test-secret");
        }

        let up = anthropic_stream(&text, piece);
        *mock.reply.lock().unwrap() = Reply::sse(&up, chunk);
        let (status, _, body) =
            post(p.addr, "/v1/messages", &msg_req(true, "tell me a story")).await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            Bytes::from(up),
            "anthropic piece {piece} chunk {chunk}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_run_is_blocked_with_nothing_of_it_released_at_every_chunking() {
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let run_start = INTRO.len();
    for (piece, chunk) in [
        (1, 1),
        (1, 64),
        (2, 7),
        (5, 33),
        (13, 100),
        (40, 4096),
        (500, 4096),
    ] {
        let mock = start(Reply::sse(&openai_stream(&text, piece), chunk)).await;
        let p = proxy(&mock, |_| {}).await;
        let (status, _, body) = post(
            p.addr,
            "/v1/chat/completions",
            &chat_req(true, "a story please"),
        )
        .await;
        assert_eq!(status, 200);
        let evs = events(&body);
        let got = openai_text(&evs);
        assert!(
            text.starts_with(&got) && got.len() <= run_start,
            "piece {piece} chunk {chunk}: released {got:?}"
        );
        let last = assert_blocked_as(&evs, "exact");
        assert_eq!(
            last.pointer("/choices/0/content_filter_results/protected_material_text/filtered"),
            Some(&json!(true))
        );
        assert_eq!(
            last.pointer("/verbatim/finding/doc"),
            Some(&json!("fixtures/acme-books/chapter-01.md"))
        );
        assert!(
            last.pointer("/verbatim/explanation")
                .and_then(Value::as_str)
                .unwrap()
                .contains("LicenseRef-Acme-Proprietary")
        );
        assert_eq!(evs.last().unwrap().1, json!("[DONE]"));

        let mock = start(Reply::sse(&anthropic_stream(&text, piece), chunk)).await;
        let p = proxy(&mock, |_| {}).await;
        let (_, _, body) = post(p.addr, "/v1/messages", &msg_req(true, "a story please")).await;
        let evs = events(&body);
        let got = anthropic_text(&evs);
        assert!(
            text.starts_with(&got) && got.len() <= run_start,
            "anthropic piece {piece} chunk {chunk}: {got:?}"
        );
        let names: Vec<&str> = evs
            .iter()
            .rev()
            .take(3)
            .filter_map(|(n, _)| n.as_deref())
            .collect();
        assert_eq!(
            names,
            ["message_stop", "message_delta", "content_block_stop"]
        );
        let delta = &evs[evs.len() - 2].1;
        assert_eq!(delta.pointer("/delta/stop_reason"), Some(&json!("refusal")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_is_annotated_and_the_text_flows() {
    let text = format!("{INTRO}{SHORT}{OUTRO}");
    let mock = start(Reply::sse(&openai_stream(&text, 4), 64)).await;
    let p = proxy(&mock, |_| {}).await;
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    let evs = events(&body);
    assert_eq!(openai_text(&evs), text, "annotate changes no text");
    let ann: Vec<&Value> = evs
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v.pointer("/choices/0/content_filter_results").is_some())
        .collect();
    assert_eq!(ann.len(), 1);
    let cit = ann[0]
        .pointer("/choices/0/content_filter_results/protected_material_text")
        .unwrap();
    assert_eq!(cit["detected"], json!(true));
    assert_eq!(cit["filtered"], json!(false));
    assert_eq!(
        cit["citation"]["URL"],
        json!("https://books.example.org/fixtures/acme-books/chapter-02.md")
    );
    assert_eq!(
        ann[0].pointer("/verbatim/findings/0/units"),
        Some(&json!(21))
    );
    // The annotation comes before [DONE] and after the finish chunk.
    let pos = evs.iter().position(|(_, v)| v == ann[0]).unwrap();
    assert!(pos < evs.len() - 1);

    *mock.reply.lock().unwrap() = Reply::sse(&anthropic_stream(&text, 4), 64);
    let (_, _, body) = post(p.addr, "/v1/messages", &msg_req(true, "go")).await;
    let evs = events(&body);
    assert_eq!(anthropic_text(&evs), text);
    let delta = evs
        .iter()
        .find(|(n, _)| n.as_deref() == Some("message_delta"))
        .unwrap();
    assert_eq!(
        delta.1.pointer("/delta/stop_reason"),
        Some(&json!("end_turn"))
    );
    assert_eq!(
        delta.1.pointer("/verbatim/findings/0/doc"),
        Some(&json!("fixtures/acme-books/chapter-02.md"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redact_replaces_the_copied_span_with_a_citation() {
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    for piece in [1, 6, 1000] {
        let mock = start(Reply::sse(&openai_stream(&text, piece), 50)).await;
        let p = proxy(&mock, |c| c.rules.long_action = Action::Redact).await;
        let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
        let got = openai_text(&events(&body));
        assert!(got.starts_with(INTRO), "{got}");
        assert!(got.contains("[verbatim: redacted 49 prose units of acme-books:fixtures/acme-books/chapter-01.md (LicenseRef-Acme-Proprietary)]"), "{got}");
        assert!(
            !got.contains("Oduya") && !got.contains("oilcloth"),
            "piece {piece}: {got}"
        );
        assert!(
            got.ends_with(&format!("(LicenseRef-Acme-Proprietary)]{OUTRO}")),
            "{got}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_the_caller_supplied_is_not_acted_on() {
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let upstream = openai_stream(&text, 5);
    let mock = start(Reply::sse(&upstream, 64)).await;
    let p = proxy(&mock, |_| {}).await;
    let user = format!("Please fix the typos in this passage I wrote down: {COPIED}");
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, &user)).await;
    assert_eq!(
        body,
        Bytes::from(upstream),
        "caller-supplied runs are only logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_responses_are_scanned_too() {
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let mock = start(Reply::json(200, &openai_json(&text))).await;
    let p = proxy(&mock, |_| {}).await;
    let (status, headers, body) =
        post(p.addr, "/v1/chat/completions", &chat_req(false, "go")).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(headers["content-length"], body.len().to_string());
    assert_eq!(
        v.pointer("/choices/0/finish_reason"),
        Some(&json!("content_filter"))
    );
    assert_eq!(v.pointer("/choices/0/message/content"), Some(&json!(INTRO)));
    assert_eq!(
        v.pointer("/usage/total_tokens"),
        Some(&json!(12)),
        "unknown fields survive"
    );

    *mock.reply.lock().unwrap() =
        Reply::json(200, &anthropic_json(&format!("{INTRO}{SHORT}{OUTRO}")));
    let (_, _, body) = post(p.addr, "/v1/messages", &msg_req(false, "go")).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v.pointer("/stop_reason"), Some(&json!("end_turn")));
    assert_eq!(v.pointer("/verbatim/action"), Some(&json!("annotate")));

    let clean = anthropic_json(UNRELATED);
    *mock.reply.lock().unwrap() = Reply::json(200, &clean);
    let (_, _, body) = post(p.addr, "/v1/messages", &msg_req(false, "go")).await;
    assert_eq!(
        body,
        Bytes::from(clean.to_string()),
        "byte-identical when nothing is found"
    );
}

/// A Responses output item with both string `arguments` and `input` (no item the API
/// documents has both) gets each scanned and rewritten in its own field: under one stream the
/// edit of `input` was written into `arguments`, and `input` went out with the copied text
/// (found by the `responses` fuzz target). Both orders of which field holds the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_item_with_both_arguments_and_input_is_rewritten_field_by_field() {
    let copy = format!("{INTRO}{COPIED}{OUTRO}");
    for (args, input) in [(UNRELATED, copy.as_str()), (copy.as_str(), UNRELATED)] {
        let resp = json!({
            "id": "resp_1", "object": "response", "status": "completed",
            "output": [{"type": "custom_tool_call", "call_id": "c1", "name": "write",
                        "arguments": args, "input": input}],
        });
        let mock = start(Reply::json(200, &resp)).await;
        let p = proxy(&mock, |_| {}).await;
        let req = json!({"model": "m", "input": "go"});
        let (status, _, body) = post(p.addr, "/v1/responses", &req).await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        let field = |f: &str| {
            v.pointer(&format!("/output/0/{f}"))
                .and_then(Value::as_str)
                .unwrap()
                .to_string()
        };
        let (copied, clean) = if input == UNRELATED {
            ("arguments", "input")
        } else {
            ("input", "arguments")
        };
        assert_eq!(field(clean), UNRELATED, "{v}");
        let cut = field(copied);
        assert!(
            !cut.contains("lighthouse on Carrow Point"),
            "{copied}: {cut:?}"
        );
        assert!(copy.starts_with(&cut), "{copied}: {cut:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_reach_the_client_as_sent() {
    for status in [400u16, 401, 429, 500, 529] {
        let err = json!({"error": {"message": "mock failure", "type": "server_error"}});
        let mock = start(Reply::json(status, &err)).await;
        let p = proxy(&mock, |_| {}).await;
        let (s, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
        assert_eq!(s, status);
        assert_eq!(body, Bytes::from(err.to_string()));
    }
    // No upstream at all: a 502 in the error shape the SDKs parse.
    let mock = start(Reply::json(200, &json!({}))).await;
    let mut p = proxy(&mock, |_| {}).await;
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    p = {
        drop(p);
        let m2 = Mock { addr: dead, ..mock };
        proxy(&m2, |_| {}).await
    };
    let (s, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    assert_eq!(s, 502);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v.pointer("/error/type"), Some(&json!("upstream_error")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_mid_stream_ends_the_response_cleanly() {
    let text = format!("{INTRO}{UNRELATED}{OUTRO}");
    let upstream = openai_stream(&text, 3);
    let mut reply = Reply::sse(&upstream, 40);
    reply.reset_after = Some(10);
    let mock = start(reply).await;
    let p = proxy(&mock, |_| {}).await;
    let (status, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    assert_eq!(status, 200);
    // What arrived is a prefix of what the upstream sent before it broke, ending on an event.
    assert!(
        upstream.starts_with(&body) && body.len() <= 400,
        "{}",
        body.len()
    );
    assert!(body.ends_with(b"\n\n") || body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_the_upstream() {
    let text = format!("{INTRO}{UNRELATED}{OUTRO}").repeat(20);
    let mut reply = Reply::sse(&openai_stream(&text, 3), 64);
    reply.delay = Duration::from_millis(5);
    let mock = start(reply).await;
    let p = proxy(&mock, |_| {}).await;
    let req = http::Request::post(format!("http://{}/v1/chat/completions", p.addr))
        .body(Full::new(Bytes::from(chat_req(true, "go").to_string())))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap();
    assert!(first.is_some());
    drop(body);
    mock.assert_cancelled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_and_invalid_utf8_pass_through() {
    let mut upstream =
        b"data: not json at all\n\n: comment\n\nevent: weird\ndata: {\"unknown\": true}\n\n"
            .to_vec();
    // Invalid UTF-8 split across two events' content.
    upstream.extend_from_slice(
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"caf\xc3\"}}]}\n\n",
    );
    upstream.extend_from_slice(
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\xa9 ok\"}}]}\n\n",
    );
    upstream.extend_from_slice(&openai_stream(UNRELATED, 10));
    for chunk in [1, 5, 4096] {
        let mock = start(Reply::sse(&upstream, chunk)).await;
        let p = proxy(&mock, |_| {}).await;
        let (status, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
        assert_eq!(status, 200);
        assert_eq!(body, Bytes::from(upstream.clone()), "chunk {chunk}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_endpoints_pass_through_untouched() {
    let models = json!({"object": "list", "data": [{"id": "mock-model", "object": "model"}]});
    let mock = start(Reply::json(200, &models)).await;
    let p = proxy(&mock, |_| {}).await;
    let req = http::Request::get(format!("http://{}/v1/models?limit=5", p.addr))
        .header("authorization", "Bearer sk-x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, Bytes::from(models.to_string()));
    assert_eq!(
        mock.seen.lock().unwrap().requests[0].0,
        "/v1/models?limit=5"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_none_releases_at_once_and_still_annotates() {
    let text = format!("{INTRO}{SHORT}{OUTRO}");
    let mock = start(Reply::sse(&openai_stream(&text, 4), 64)).await;
    let p = proxy(&mock, |c| c.hold = Hold::None).await;
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    let evs = events(&body);
    assert_eq!(openai_text(&evs), text);
    assert!(
        evs.iter()
            .any(|(_, v)| v.pointer("/choices/0/content_filter_results").is_some())
    );
}

fn responses_text(evs: &[(Option<String>, Value)]) -> String {
    evs.iter()
        .filter(|(n, _)| n.as_deref() == Some("response.output_text.delta"))
        .filter_map(|(_, v)| v.get("delta").and_then(Value::as_str))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_api_passes_blocks_annotates_and_redacts_everywhere() {
    let req = json!({"model": "mock-model", "stream": true, "input": "a story"});
    // Passthrough.
    let clean = responses_stream(&format!("{INTRO}{UNRELATED}{OUTRO}"), 5);
    let mock = start(Reply::sse(&clean, 50)).await;
    let p = proxy(&mock, |_| {}).await;
    let (_, _, body) = post(p.addr, "/v1/responses", &req).await;
    assert_eq!(body, Bytes::from(clean));
    // Block: nothing of the run, then response.incomplete with the content_filter reason.
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    *mock.reply.lock().unwrap() = Reply::sse(&responses_stream(&text, 3), 30);
    let (_, _, body) = post(p.addr, "/v1/responses", &req).await;
    let evs = events(&body);
    let got = responses_text(&evs);
    assert!(text.starts_with(&got) && got.len() <= INTRO.len(), "{got}");
    assert!(!String::from_utf8_lossy(&body).contains("Oduya"));
    let (name, last) = evs.last().unwrap();
    assert_eq!(name.as_deref(), Some("response.incomplete"));
    assert_eq!(
        last.pointer("/response/incomplete_details/reason"),
        Some(&json!("content_filter"))
    );
    assert_eq!(last.pointer("/response/id"), Some(&json!("resp_mock")));
    // Annotate: a url_citation annotation event.
    *mock.reply.lock().unwrap() =
        Reply::sse(&responses_stream(&format!("{INTRO}{SHORT}{OUTRO}"), 4), 30);
    let (_, _, body) = post(p.addr, "/v1/responses", &req).await;
    let evs = events(&body);
    let ann = evs
        .iter()
        .find(|(n, _)| n.as_deref() == Some("response.output_text.annotation.added"))
        .unwrap();
    assert_eq!(
        ann.1.pointer("/annotation/type"),
        Some(&json!("url_citation"))
    );
    assert_eq!(
        ann.1.pointer("/annotation/url"),
        Some(&json!(
            "https://books.example.org/fixtures/acme-books/chapter-02.md"
        ))
    );
    // Redact: the span is gone from the deltas *and* from the events that repeat the text.
    let mock = start(Reply::sse(&responses_stream(&text, 3), 30)).await;
    let p = proxy(&mock, |c| c.rules.long_action = Action::Redact).await;
    let (_, _, body) = post(p.addr, "/v1/responses", &req).await;
    let all = String::from_utf8_lossy(&body);
    assert!(!all.contains("Oduya") && !all.contains("oilcloth"), "{all}");
    assert_eq!(
        all.matches("[verbatim: redacted 49 prose units").count(),
        5,
        "deltas, text.done, part.done, item.done, completed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_completions_pass_and_block() {
    let req = json!({"model": "mock-model", "stream": true, "prompt": "once upon a time"});
    let clean = completions_stream(&format!("{INTRO}{UNRELATED}"), 4);
    let mock = start(Reply::sse(&clean, 64)).await;
    let p = proxy(&mock, |_| {}).await;
    let (_, _, body) = post(p.addr, "/v1/completions", &req).await;
    assert_eq!(body, Bytes::from(clean));
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    *mock.reply.lock().unwrap() = Reply::sse(&completions_stream(&text, 4), 64);
    let (_, _, body) = post(p.addr, "/v1/completions", &req).await;
    let evs = events(&body);
    let got: String = evs
        .iter()
        .filter_map(|(_, v)| v.pointer("/choices/0/text").and_then(Value::as_str))
        .collect();
    assert!(text.starts_with(&got) && got.len() <= INTRO.len(), "{got}");
    assert_eq!(
        evs[evs.len() - 2].1.pointer("/choices/0/finish_reason"),
        Some(&json!("content_filter"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_choices_and_a_tool_call_are_scanned_separately() {
    // Choice 0 is clean; choice 1 streams a copied passage as tool-call arguments.
    let args = format!("{{\"query\": \"{COPIED}\"}}");
    let up = openai_two_choices(&format!("{INTRO}{UNRELATED}"), &args, 6);
    let mock = start(Reply::sse(&up, 40)).await;
    let p = proxy(&mock, |_| {}).await;
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    let evs = events(&body);
    let tool: String = evs
        .iter()
        .filter_map(|(_, v)| {
            v.pointer("/choices/0/delta/tool_calls/0/function/arguments")
                .and_then(Value::as_str)
        })
        .collect();
    assert!(!tool.contains("Oduya"), "{tool}");
    let last = &evs[evs.len() - 2].1;
    let choices = last["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "every choice ends: {last}");
    assert!(
        choices
            .iter()
            .all(|c| c["finish_reason"] == json!("content_filter"))
    );
    assert_eq!(
        last.pointer("/verbatim/finding/key_a"),
        Some(&json!(1)),
        "the copy was in choice 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_and_every_stream_end_is_audited_once_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let mock = start(Reply::sse(&openai_stream(&text, 5), 64)).await;
    let p = proxy(&mock, |c| c.audit_log = Some(log.clone())).await;
    // 1. blocked
    post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    // 2. completed, with an annotate decision
    *mock.reply.lock().unwrap() =
        Reply::sse(&openai_stream(&format!("{INTRO}{SHORT}{OUTRO}"), 5), 64);
    post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    // 3. upstream error
    let mut r = Reply::sse(&openai_stream(UNRELATED, 3), 40);
    r.reset_after = Some(3);
    *mock.reply.lock().unwrap() = r;
    post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    // 4. non-streamed, blocked
    *mock.reply.lock().unwrap() = Reply::json(200, &openai_json(&text));
    post(p.addr, "/v1/chat/completions", &chat_req(false, "go")).await;
    // 5. client cancelled
    let mut r = Reply::sse(&openai_stream(&UNRELATED.repeat(30), 3), 64);
    r.delay = Duration::from_millis(5);
    *mock.reply.lock().unwrap() = r;
    let req = http::Request::post(format!("http://{}/v1/chat/completions", p.addr))
        .header("x-api-key", "sk-ant-very-secret")
        .body(Full::new(Bytes::from(chat_req(true, "go").to_string())))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let mut body = resp.into_body();
    let _ = body.frame().await;
    drop(body);

    let recs = audit_records(&log, 5).await;
    let ends: Vec<&str> = recs
        .iter()
        .filter(|r| r["type"] == "stream_end")
        .map(|r| r["data"]["end"].as_str().unwrap())
        .collect();
    assert_eq!(
        ends,
        [
            "blocked",
            "completed",
            "upstream_error",
            "blocked",
            "client_cancelled"
        ]
    );
    let ids: std::collections::HashSet<&str> = recs
        .iter()
        .filter(|r| r["type"] == "stream_end")
        .map(|r| r["data"]["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5, "one stream_end per response");
    for r in &recs {
        assert_eq!(r["v"], 1);
    }
    let decisions: Vec<&Value> = recs
        .iter()
        .filter(|r| r["type"] == "decision")
        .map(|r| &r["data"])
        .collect();
    assert_eq!(
        decisions
            .iter()
            .map(|d| d["action"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["block", "annotate", "block"]
    );
    let b = decisions[0];
    assert_eq!(b["reason"], "long-prose-run");
    assert_eq!(b["doc"], "fixtures/acme-books/chapter-01.md");
    assert_eq!(b["license"], "LicenseRef-Acme-Proprietary");
    assert_eq!(b["model"], "mock-model");
    assert_eq!(b["hold"], "strict");
    assert_eq!(b["upstream_request_id"], "req_mock_1");
    // A streamed block is decided when the open run reaches the threshold: the span is the run
    // so far. The non-streamed response is scanned whole: the span is the whole run.
    let (s, e) = (
        b["output_start"].as_u64().unwrap() as usize,
        b["output_end"].as_u64().unwrap() as usize,
    );
    assert_eq!(s, INTRO.len());
    assert!(b["units"].as_u64().unwrap() >= 32);
    assert_eq!(
        b["span_sha256"],
        verbatim::audit::sha256_hex(&text.as_bytes()[s..e])
    );
    assert_eq!(
        decisions[2]["span_sha256"],
        verbatim::audit::sha256_hex(COPIED.as_bytes())
    );
    assert_eq!(
        b["tenant"],
        verbatim::audit::sha256_hex(b"sk-test-secret")[..16]
    );
    let all = std::fs::read_to_string(&log).unwrap();
    assert!(
        !all.contains("sk-test-secret") && !all.contains("sk-ant-very-secret"),
        "a credential reached the audit log"
    );
    assert!(
        !all.contains("Oduya"),
        "span text is not recorded, only its hash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_in_shadow_mode_records_but_does_not_act_and_exceptions_are_scoped() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let tenant = verbatim::audit::sha256_hex(b"sk-test-secret")[..16].to_string();
    let policy = write_policy(
        dir.path(),
        "version = 1\nname = \"shadowed\"\nshadow = true\n[[rules]]\nname = \"block-books\"\naction = \"block\"\nwhen = { source = [\"prose\"], corpus = [\"acme-books\"], min_units = 12 }\n",
    );
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let upstream = openai_stream(&text, 5);
    let mock = start(Reply::sse(&upstream, 64)).await;
    let p = proxy(&mock, |c| {
        c.policy = Some(policy.clone());
        c.audit_log = Some(log.clone());
    })
    .await;
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    assert_eq!(
        body,
        Bytes::from(upstream.clone()),
        "shadow mode changes nothing on the wire"
    );
    let recs = audit_records(&log, 1).await;
    let d = recs.iter().find(|r| r["type"] == "decision").unwrap();
    assert_eq!(d["data"]["action"], "log");
    assert_eq!(d["data"]["policy_action"], "block");
    assert_eq!(d["data"]["shadow"], true);
    assert_eq!(d["data"]["rule"], "block-books");
    assert_eq!(d["data"]["policy"], "shadowed");
    assert_eq!(
        d["data"]["policy_version"],
        verbatim::audit::sha256_hex(&std::fs::read(&policy).unwrap())
    );

    // Not in shadow mode, with an exception for this tenant: logged; others are blocked.
    let policy2 = dir.path().join("p2.toml");
    std::fs::write(
        &policy2,
        format!(
            "version = 1\n[[rules]]\nname = \"block-books\"\naction = \"block\"\nwhen = {{ source = [\"prose\"], corpus = [\"acme-books\"], min_units = 12 }}\n[[exceptions]]\nname = \"partner\"\naction = \"log\"\nwhen = {{ tenant = [\"{tenant}\"] }}\n"
        ),
    )
    .unwrap();
    let p2 = proxy(&mock, |c| c.policy = Some(policy2.clone())).await;
    let (_, _, body) = post(p2.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    assert_eq!(
        body,
        Bytes::from(upstream),
        "the excepted tenant gets the text"
    );
    let req = http::Request::post(format!("http://{}/v1/chat/completions", p2.addr))
        .header("authorization", "Bearer sk-someone-else")
        .body(Full::new(Bytes::from(chat_req(true, "go").to_string())))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let evs = events(&body);
    assert_eq!(
        evs[evs.len() - 2].1.pointer("/choices/0/finish_reason"),
        Some(&json!("content_filter"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_refuses_an_invalid_policy_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("bad.toml");
    std::fs::write(&policy, "version = 1\n[[rules]]\nname = \"x\"\naction = \"shred\"\nwhen = { corpus = [\"nope\"], min_units = 3 }\n").unwrap();
    let cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        policy: Some(policy),
        ..Config::default()
    };
    let index = Arc::new(Index::open(FIXTURE).unwrap());
    let err = match Server::bind(cfg, vec![index]).await {
        Ok(_) => panic!("started with an invalid policy"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("`rules[0].action`: `shred` is not one of"),
        "{err}"
    );
}

/// The indexes' mapped files are read into the page cache before the proxy reports ready,
/// and a reload reads the indexes it opens before swapping them in (a cold index makes a
/// worker's streams wait on the disk: docs/benchmarks.md); `warm_indexes = false` reads none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_are_read_into_the_page_cache_before_ready_and_before_a_reload_swaps_them_in() {
    let mock = start(Reply::sse(&openai_stream(UNRELATED, 5), 64)).await;
    let per_index = Index::open(FIXTURE).unwrap().mapped_bytes();
    assert!(per_index > 0);
    for warm in [true, false] {
        let p = proxy(&mock, |c| {
            c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
            // Named in the config, so that a reload opens the index again.
            c.indexes = vec![FIXTURE.into()];
            c.warm_indexes = warm;
        })
        .await;
        let admin_addr = p.admin.unwrap();
        // The harness has waited for /readyz (when warming): the whole index has been read.
        assert_eq!(admin(p.addr, "GET", "/readyz").await.0, 200);
        let read = async || {
            let (_, m) = admin(admin_addr, "GET", "/metrics").await;
            assert!(m.contains("verbatim_index_warming 0\n"), "{m}");
            m.lines()
                .find_map(|l| l.strip_prefix("verbatim_index_warm_bytes_total "))
                .unwrap_or_else(|| panic!("{m}"))
                .parse::<u64>()
                .unwrap()
        };
        assert_eq!(read().await, if warm { per_index } else { 0 });
        let (s, body) = admin(admin_addr, "POST", "/admin/reload").await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(read().await, if warm { 2 * per_index } else { 0 });
        assert_eq!(admin(p.addr, "GET", "/readyz").await.0, 200);
        let (s, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
        assert_eq!(s, 200);
        assert_eq!(openai_text(&events(&body)), UNRELATED);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics() {
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let mock = start(Reply::sse(&openai_stream(&text, 5), 64)).await;
    let p = proxy(&mock, |c| {
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap())
    })
    .await;
    let (s, body) = admin(p.addr, "GET", "/healthz").await;
    assert_eq!((s, body.as_str()), (200, "ok\n"));
    let (s, _) = admin(p.addr, "GET", "/readyz").await;
    assert_eq!(s, 200);
    assert!(
        mock.seen.lock().unwrap().requests.is_empty(),
        "health checks are not forwarded"
    );
    post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    let admin_addr = p.admin.unwrap();
    let (s, m) = admin(admin_addr, "GET", "/metrics").await;
    assert_eq!(s, 200);
    for line in [
        "verbatim_decisions_total{action=\"block\",reason=\"long-prose-run\",channel=\"prose\",kind=\"exact\",category=\"proprietary\"} 1",
        "verbatim_audit_records{state=\"queued\"} 0",
        "verbatim_holdback_seconds_bucket{le=\"+Inf\"}",
        "verbatim_response_ends_total{route=\"chat-completions\",end=\"blocked\"} 1",
        "verbatim_requests_total{route=\"chat-completions\",status=\"2xx\"} 1",
        "verbatim_loaded{what=\"policy\",name=\"built-in\",version=\"built-in\"} 1",
    ] {
        assert!(m.contains(line), "missing {line} in:\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_keeps_every_stream_and_a_bad_reload_keeps_the_old_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(
        dir.path(),
        "version = 1\nname = \"observe\"\n[defaults]\naction = \"log\"\n",
    );
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let upstream = openai_stream(&text, 4);
    let mut reply = Reply::sse(&upstream, 40);
    reply.delay = Duration::from_millis(15);
    let mock = start(reply).await;
    let p = proxy(&mock, |c| {
        c.policy = Some(policy.clone());
        c.indexes = vec![FIXTURE.into()];
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let admin_addr = p.admin.unwrap();
    // Eight streams in flight under the log-only policy…
    let streams = chat_streams(p.addr, 8);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // …when the policy changes to blocking.
    std::fs::write(
        &policy,
        "version = 1\nname = \"enforce\"\n[defaults]\naction = \"block\"\n",
    )
    .unwrap();
    let (s, body) = admin(admin_addr, "POST", "/admin/reload").await;
    assert_eq!((s, body.as_str()), (200, "reloaded\n"));
    // An in-flight stream finishes under the policy it started with.
    expect_whole(streams, &upstream).await;
    mock.reply.lock().unwrap().delay = Duration::ZERO;
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    let evs = events(&body);
    assert_eq!(
        evs[evs.len() - 2].1.pointer("/choices/0/finish_reason"),
        Some(&json!("content_filter")),
        "new streams use the new policy"
    );
    // A broken policy is refused and the running one stays.
    std::fs::write(
        &policy,
        "version = 1\n[defaults]\naction = \"obliterate\"\n",
    )
    .unwrap();
    let (s, body) = admin(admin_addr, "POST", "/admin/reload").await;
    assert_eq!(s, 422);
    assert!(body.contains("`obliterate` is not one of"), "{body}");
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    let evs = events(&body);
    assert_eq!(
        evs[evs.len() - 2].1.pointer("/choices/0/finish_reason"),
        Some(&json!("content_filter"))
    );
    let (_, m) = admin(admin_addr, "GET", "/metrics").await;
    assert!(
        m.contains("verbatim_reloads_total{result=\"ok\"} 1")
            && m.contains("verbatim_reloads_total{result=\"rejected\"} 1"),
        "{m}"
    );
    assert!(m.contains("name=\"enforce\""), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_thinking_and_tool_use_blocks_are_relayed_and_scanned() {
    let tool = format!("{{\"query\": \"{UNRELATED}\"}}");
    let clean = anthropic_blocks(UNRELATED, &format!("{INTRO}{OUTRO}"), &tool, 5);
    let mock = start(Reply::sse(&clean, 50)).await;
    let p = proxy(&mock, |_| {}).await;
    let (_, _, body) = post(p.addr, "/v1/messages", &msg_req(true, "go")).await;
    assert_eq!(
        body,
        Bytes::from(clean),
        "thinking, signature and tool-use events pass untouched"
    );
    // A protected passage in the thinking block: blocked there, nothing of it released.
    let copied = anthropic_blocks(
        &format!("{INTRO}{COPIED}{OUTRO}"),
        "never reached",
        &tool,
        5,
    );
    *mock.reply.lock().unwrap() = Reply::sse(&copied, 50);
    let (_, _, body) = post(p.addr, "/v1/messages", &msg_req(true, "go")).await;
    let all = String::from_utf8_lossy(&body);
    assert!(
        !all.contains("Oduya") && !all.contains("never reached"),
        "{all}"
    );
    let evs = events(&body);
    let names: Vec<&str> = evs
        .iter()
        .rev()
        .take(3)
        .filter_map(|(n, _)| n.as_deref())
        .collect();
    assert_eq!(
        names,
        ["message_stop", "message_delta", "content_block_stop"]
    );
    assert_eq!(
        evs[evs.len() - 2].1.pointer("/delta/stop_reason"),
        Some(&json!("refusal"))
    );
}

/// Anthropic's citations quote their source (`cited_text`, e.g. up to 150 characters of a web
/// page its web search fetched): the quote reaches the reader, so a protected passage in it is
/// caught as in the answer's text — streamed (a `citations_delta`) and whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_citation_quotes_are_scanned_streamed_and_whole() {
    let stream = |quote: &str| {
        // The mock's Anthropic stream, with a citation right after its text block starts.
        let base = String::from_utf8(anthropic_stream(INTRO, 8)).unwrap();
        let cite = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "citations_delta",
            "citation": {"type": "web_search_result_location", "cited_text": quote,
            "url": "https://example.org/story", "title": "A story", "encrypted_index": "e1"}}});
        let at = base.find("event: ping").unwrap();
        format!(
            "{}event: content_block_delta\ndata: {cite}\n\n{}",
            &base[..at],
            &base[at..]
        )
        .into_bytes()
    };
    let whole = |quote: &str| {
        json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": "mock-model",
            "content": [{"type": "text", "text": INTRO, "citations": [
                {"type": "char_location", "cited_text": UNRELATED, "document_index": 0,
                 "document_title": "notes", "start_char_index": 0, "end_char_index": 10},
                {"type": "web_search_result_location", "cited_text": quote,
                 "url": "https://example.org/story", "title": "A story", "encrypted_index": "e1"}]}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 42}})
    };
    let clean = stream(UNRELATED);
    let mock = start(Reply::sse(&clean, 64)).await;
    let p = proxy(&mock, |_| {}).await;
    let (_, _, body) = post(p.addr, "/v1/messages", &msg_req(true, "go")).await;
    assert_eq!(body, Bytes::from(clean), "a clean quote passes untouched");

    *mock.reply.lock().unwrap() = Reply::sse(&stream(COPIED), 64);
    let (_, _, body) = post(p.addr, "/v1/messages", &msg_req(true, "go")).await;
    let all = String::from_utf8_lossy(&body);
    assert!(!all.contains("Oduya"), "{all}");
    let evs = events(&body);
    let stop = evs
        .iter()
        .find_map(|(_, v)| v.pointer("/delta/stop_reason"))
        .expect("a message_delta");
    assert_eq!(stop, &json!("refusal"), "{all}");
    assert_eq!(evs.last().unwrap().0.as_deref(), Some("message_stop"));

    let clean = whole(UNRELATED);
    *mock.reply.lock().unwrap() = Reply::json(200, &clean);
    let (_, _, body) = post(p.addr, "/v1/messages", &msg_req(false, "go")).await;
    assert_eq!(body, Bytes::from(clean.to_string()), "byte-identical");

    *mock.reply.lock().unwrap() = Reply::json(200, &whole(COPIED));
    let (_, _, body) = post(p.addr, "/v1/messages", &msg_req(false, "go")).await;
    let all = String::from_utf8_lossy(&body);
    assert!(!all.contains("Oduya"), "{all}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v.pointer("/stop_reason"), Some(&json!("refusal")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_silent_upstream_times_out_with_a_clean_end() {
    let ms = Duration::from_millis;
    // 1. Silent mid-stream: the events so far are relayed, then a clean end.
    let text = format!("{INTRO}{UNRELATED}{OUTRO}");
    let mut r = Reply::sse(&openai_stream(&text, 5), 64);
    r.stall = Some((20, Duration::from_secs(60)));
    let mock = start(r).await;
    let p = proxy(&mock, |c| c.timeouts.idle = ms(300)).await;
    let t = std::time::Instant::now();
    let (status, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    assert_eq!(status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    let got = openai_text(&events(&body)); // panics on a partial event
    assert!(!got.is_empty() && text.starts_with(&got), "{got:?}");
    assert!(got.len() < text.len());
    // The upstream request is dropped, not left hanging.
    mock.assert_cancelled().await;

    // 2. No response head in time: 504 in the provider's error shape.
    let mut r = Reply::sse(&openai_stream(&text, 5), 64);
    r.head_delay = Duration::from_secs(60);
    *mock.reply.lock().unwrap() = r;
    let p = proxy(&mock, |c| c.timeouts.first_byte = ms(300)).await;
    let t = std::time::Instant::now();
    let (status, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    assert_eq!(status, 504);
    assert!(t.elapsed() < Duration::from_secs(10));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "upstream_timeout");

    // 3. A non-streamed body that does not arrive: 502, not a hang.
    let mut r = Reply::json(200, &openai_json(&text));
    r.delay = Duration::from_secs(60);
    *mock.reply.lock().unwrap() = r;
    let p = proxy(&mock, |c| c.timeouts.idle = ms(300)).await;
    let (status, _, _) = post(p.addr, "/v1/chat/completions", &chat_req(false, "go")).await;
    assert_eq!(status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_holdback_limit_the_stream_stops_and_releases_nothing_undecided() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    // A policy that could block the run, but only far beyond its length: the run stays
    // undecided, so strict holdback keeps every event of it.
    let policy = write_policy(
        dir.path(),
        "version = 1\n[[rules]]\nname = \"very-long-runs\"\naction = \"block\"\nwhen = { min_units = 100000 }\n",
    );
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let mock = start(Reply::sse(&openai_stream(&text, 4), 64)).await;
    let p = proxy(&mock, |c| {
        c.policy = Some(policy.clone());
        c.audit_log = Some(log.clone());
        c.max_holdback_bytes = 2048;
    })
    .await;
    let (status, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    assert_eq!(status, 200);
    let evs = events(&body);
    let got = openai_text(&evs);
    assert!(
        INTRO.starts_with(got.trim_end()) || got.len() <= INTRO.len(),
        "released: {got:?}"
    );
    assert!(
        !got.contains("Oduya"),
        "nothing of the undecided run is released: {got:?}"
    );
    let stop = evs
        .iter()
        .find_map(|(_, v)| v.get("verbatim"))
        .expect("a stop event");
    assert_eq!(stop["reason"], "holdback-limit");
    assert_eq!(evs.last().unwrap().1, "[DONE]");
    let recs = audit_records(&log, 1).await;
    let end = recs.iter().find(|r| r["type"] == "stream_end").unwrap();
    assert_eq!(end["data"]["end"], "holdback_limit");
    // Under the limit, the same stream is relayed whole.
    let p = proxy(&mock, |c| c.policy = Some(policy.clone())).await;
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    assert_eq!(openai_text(&events(&body)), text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_stream_is_stopped_at_the_response_limit() {
    let long = format!("{} ", UNRELATED).repeat(400); // ~64 KB of text, far more as events
    let mut r = Reply::sse(&openai_stream(&long, 20), 256);
    r.delay = Duration::from_millis(1);
    let mock = start(r).await;
    let p = proxy(&mock, |c| c.max_response_bytes = 16 << 10).await;
    let (status, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    assert_eq!(status, 200);
    let evs = events(&body);
    let got = openai_text(&evs);
    assert!(!got.is_empty() && long.starts_with(&got) && got.len() < long.len() / 4);
    let stop = evs
        .iter()
        .find_map(|(_, v)| v.get("verbatim"))
        .expect("a stop event");
    assert_eq!(stop["reason"], "response-too-large");
    assert_eq!(evs.last().unwrap().1, "[DONE]");
    mock.assert_cancelled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_upstream_event_stops_the_stream_in_the_providers_format() {
    // Whole text, then one event of 3 KB against a 1 KB limit, then more text: what was
    // decided before it is relayed, the oversized event and everything after are not, and the
    // client gets a stop event and the stream's end marker rather than a cut connection.
    // The upstream writes 100-byte pieces (the event arrives over many reads) or each event
    // in one write (it arrives whole, in one read: hyper reads 8 KB at a time).
    let mut before = openai_stream(UNRELATED, 12);
    let done = before.len() - "data: [DONE]\n\n".len();
    before.truncate(done);
    let huge = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1,
        "model": "mock-model", "choices": [{"index": 0, "delta": {"content": "Z".repeat(3000)}, "finish_reason": null}]});
    let huge = format!("data: {huge}\n\n").into_bytes();
    let after = openai_stream("after the oversized event", 5);
    let up = [&before[..], &huge, &after].concat();
    for whole_events in [false, true] {
        let mut reply = Reply::sse(&up, 100);
        if whole_events {
            reply.chunks = [before.clone(), huge.clone(), after.clone()]
                .into_iter()
                .map(Bytes::from)
                .collect();
        }
        an_oversized_event_stops(reply).await;
    }
}

async fn an_oversized_event_stops(reply: Reply) {
    let mock = start(reply).await;
    let p = proxy(&mock, |c| {
        c.max_event_bytes = 1024;
        c.hold = Hold::None;
    })
    .await;
    let (status, _, body) = tokio::time::timeout(
        Duration::from_secs(10),
        post(p.addr, "/v1/chat/completions", &chat_req(true, "go")),
    )
    .await
    .expect("the response ends");
    assert_eq!(status, 200);
    let evs = events(&body);
    let got = openai_text(&evs);
    assert_eq!(
        got, UNRELATED,
        "everything before the oversized event, nothing after"
    );
    assert!(!String::from_utf8_lossy(&body).contains("ZZZZ"));
    let stop = evs
        .iter()
        .find_map(|(_, v)| v.get("verbatim"))
        .expect("a stop event");
    assert_eq!(stop["reason"], "event-too-large");
    assert_eq!(evs.last().unwrap().1, "[DONE]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_and_headers_named_in_connection_are_not_forwarded() {
    // RFC 9110 §7.6.1: a proxy removes Connection, the headers it names, and the other
    // hop-by-hop headers. Abuse: naming an end-to-end header to have it stripped, and an h2c
    // upgrade that must never reach the upstream (h2c smuggling).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = start(Reply::json(200, &json!({"ok": true}))).await;
    let p = proxy(&mock, |_| {}).await;
    for path in ["/v1/chat/completions", "/v1/models"] {
        let body = chat_req(false, "hi").to_string();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: keep-alive, x-drop-me, Upgrade, HTTP2-Settings\r\nx-drop-me: 1\r\nUpgrade: h2c\r\n\
             HTTP2-Settings: AAMAAABkAAQAAP__\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
             Proxy-Authorization: Basic c2VjcmV0\r\nx-keep: 1\r\n\r\n{body}",
            body.len()
        );
        let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        let seen = mock.seen.lock().unwrap();
        let h = &seen.requests.last().unwrap().1;
        for gone in [
            "connection",
            "x-drop-me",
            "upgrade",
            "http2-settings",
            "keep-alive",
            "te",
            "proxy-authorization",
        ] {
            assert!(
                h.get(gone).is_none(),
                "{path}: {gone} reached the upstream: {h:?}"
            );
        }
        assert_eq!(h.get("x-keep").unwrap(), "1", "{path}");
        assert_eq!(h.get("content-type").unwrap(), "application/json");
    }
}

/// Checks an OpenAI stream ended blocked by a finding of `kind`; returns the closing chunk.
fn assert_blocked_as<'a>(evs: &'a [(Option<String>, Value)], kind: &str) -> &'a Value {
    let last = &evs[evs.len() - 2].1;
    assert_eq!(
        last.pointer("/choices/0/finish_reason"),
        Some(&json!("content_filter")),
        "{last}"
    );
    assert_eq!(
        last.pointer("/verbatim/finding/kind"),
        Some(&json!(kind)),
        "{last}"
    );
    last
}

/// `text` with whole identifiers replaced as `pairs` say.
fn rename_idents(text: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let w = std::mem::take(word);
        out.push_str(
            pairs
                .iter()
                .find(|(a, _)| *a == w)
                .map_or(w.as_str(), |(_, b)| b),
        );
    };
    for c in text.chars() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// The fixture's GPL ledger code from its first function on.
fn ledger_functions() -> String {
    let src = std::fs::read_to_string("corpora/fixtures/gpl-code/src/ledger.rs").unwrap();
    src[src.find("pub fn total_owed").unwrap()..].to_string()
}

/// The fixture's GPL ledger code from `total_owed` on, with every name changed.
fn renamed_ledger() -> String {
    let body = &ledger_functions();
    let pairs = [
        ("total_owed", "sum_debts"),
        ("columns", "cells"),
        ("column", "cell"),
        ("Column", "Entry"),
        ("totals", "acc"),
        ("name", "who"),
        ("shillings", "pence"),
        ("parse_line", "split_row"),
        ("line", "row"),
        ("parts", "fields"),
        ("out", "res"),
        ("bearing", "dir"),
        ("force", "strength"),
        ("sum", "amount"),
    ];
    rename_idents(body, &pairs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_and_edited_copies_are_blocked_with_their_kind() {
    // The fixture's GPL code with every name changed, and a fixture chapter with words changed:
    // both are blocked like verbatim copies (the built-in long-run rules cover `renamed` and
    // `near`), say which kind of copy they are, and release nothing of the renamed code.
    let renamed_index = Arc::new(Index::open("tests/fixtures/index-v5-renamed").unwrap());
    let code = renamed_ledger();
    let intro = "Here is a ledger parser for you:\n\n```rust\n";
    let text = format!("{intro}{code}\n```\n");
    for piece in [1, 3, 17] {
        let mock = start(Reply::sse(&openai_stream(&text, piece), 64)).await;
        let p = proxy_with(&mock, vec![Arc::clone(&renamed_index)], |_| {}).await;
        let (status, _, resp) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
        assert_eq!(status, 200);
        let evs = events(&resp);
        let got = openai_text(&evs);
        assert!(
            text.starts_with(&got) && got.len() <= intro.len(),
            "piece {piece}: released {got:?}"
        );
        let last = assert_blocked_as(&evs, "renamed");
        assert_eq!(
            last.pointer("/verbatim/finding/doc"),
            Some(&json!("fixtures/gpl-code/src/ledger.rs"))
        );
    }

    // Prose: one word in twelve changed.
    let chapter = std::fs::read_to_string("corpora/fixtures/acme-books/chapter-01.md").unwrap();
    let words: Vec<&str> = chapter.split_whitespace().skip(5).take(60).collect();
    let edited: Vec<&str> = words
        .iter()
        .enumerate()
        .map(|(i, w)| if i % 12 == 6 { "zebra" } else { w })
        .collect();
    let text = format!("{INTRO}{}{OUTRO}", edited.join(" "));
    let mock = start(Reply::sse(&openai_stream(&text, 4), 64)).await;
    let p = proxy_with(&mock, vec![Arc::clone(&renamed_index)], |_| {}).await;
    let (_, _, resp) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    let evs = events(&resp);
    let last = assert_blocked_as(&evs, "near");
    let sim = last
        .pointer("/verbatim/finding/similarity")
        .and_then(Value::as_f64)
        .unwrap();
    assert!((0.85..1.0).contains(&sim), "similarity {sim}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_copy_with_an_operator_changed_is_cited_whole() {
    // The renamed ledger code with `+=` turned into `-=` near its start: one gapped run with
    // renamed units and no exact piece of t, cited as a near copy when it ends. A policy that
    // only annotates acts on finished runs alone; before, the run was dropped when it ended
    // (judged by its exact pieces) and the copy went uncited.
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(
        dir.path(),
        "version = 1\nname = \"cite-code\"\n[[rules]]\nname = \"cite-code\"\naction = \"annotate\"\nwhen = { source = [\"code\"], min_units = 50 }\n",
    );
    let renamed_index = Arc::new(Index::open("tests/fixtures/index-v5-renamed").unwrap());
    let code = renamed_ledger();
    let edited = code.replacen("+=", "-=", 1);
    assert_ne!(edited, code);
    let text = format!("Here is a ledger parser for you:\n\n```rust\n{edited}\n```\n");
    let mock = start(Reply::sse(&openai_stream(&text, 5), 64)).await;
    let p = proxy_with(&mock, vec![renamed_index], |c| {
        c.policy = Some(policy.clone())
    })
    .await;
    let (status, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    assert_eq!(status, 200);
    let evs = events(&body);
    assert_eq!(openai_text(&evs), text, "annotate changes no text");
    let finding = ledger_citation(&evs);
    assert_eq!(finding["kind"], json!("near"), "{finding}");
    assert!(finding["units"].as_u64().unwrap() >= 300, "{finding}");
    assert!(finding["similarity"].as_f64().unwrap() > 0.95, "{finding}");
}

/// The longest citation of the fixture's GPL ledger code among a response's annotations.
fn ledger_citation(evs: &[(Option<String>, Value)]) -> &Value {
    evs.iter()
        .filter_map(|(_, v)| v.pointer("/verbatim/findings"))
        .flat_map(|f| f.as_array().unwrap())
        .filter(|f| f["doc"] == json!("fixtures/gpl-code/src/ledger.rs"))
        .max_by_key(|f| f["units"].as_u64())
        .unwrap_or_else(|| panic!("the copy is not cited: {evs:?}"))
}

/// The fixture's GPL ledger code with a statement of its own after every `every`-th line: a
/// near copy whose pieces are about `every` lines long.
fn ledger_with_insertions(every: usize) -> String {
    let mut out = String::new();
    for (i, line) in ledger_functions().lines().enumerate() {
        out += line;
        out += "\n";
        if i % every == every - 1 {
            out += "drop(0);\n";
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_policy_blocks_code_only_on_a_piece_copied_whole() {
    // A near copy of 250+ tokens, 0.85+ similar, whose pieces are ~30 tokens (what idioms of
    // unrelated crates share) is cited, not blocked; with pieces twice as long it is blocked.
    let index = Arc::new(Index::open("tests/fixtures/index-v5-renamed").unwrap());
    for (every, blocked) in [(2, false), (9, true)] {
        let code = ledger_with_insertions(every);
        let text = format!("Here is a ledger parser for you:\n\n```rust\n{code}\n```\n");
        // What the policy weighs, as `scan` reports it.
        let mut sc = verbatim::matcher::Scanner::new(
            std::slice::from_ref(&index),
            verbatim::normalize::TextKind::Markdown,
        );
        sc.push_str(&text);
        sc.finish();
        let f = sc
            .take_findings()
            .into_iter()
            .max_by_key(|f| f.units)
            .unwrap();
        assert!(f.units >= 250 && f.similarity() > 0.85, "{f:?}");
        assert_eq!(f.longest >= 46, blocked, "every {every}: {f:?}");
        assert!(f.longest_aligned < 78 || blocked, "every {every}: {f:?}");
        let mock = start(Reply::sse(&openai_stream(&text, 5), 64)).await;
        let p = proxy_with(&mock, vec![Arc::clone(&index)], |_| {}).await;
        let (status, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
        assert_eq!(status, 200);
        let evs = events(&body);
        if blocked {
            // Blocked as soon as a piece of 50 exact tokens has streamed, before the gap.
            assert_blocked_as(&evs, "exact");
            assert!(openai_text(&evs).len() < text.len() / 2);
            continue;
        }
        assert_eq!(
            openai_text(&evs),
            text,
            "every {every}: annotated, not changed"
        );
        let finding = ledger_citation(&evs);
        assert_eq!(finding["kind"], json!("near"), "{finding}");
        assert!(finding["units"].as_u64().unwrap() >= 250, "{finding}");
        assert_eq!(finding["action"], json!("annotate"), "{finding}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_streams_in_flight_finish_then_stops_listening() {
    // Connections are served by worker threads; a shutdown must still wait for every stream
    // they carry, whichever worker has it, and then end the workers.
    let (upstream, reply) = paced_unrelated(Duration::from_millis(15));
    let mock = start(reply).await;
    let cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream_openai: format!("http://{}", mock.addr).parse().unwrap(),
        upstream_anthropic: format!("http://{}", mock.addr).parse().unwrap(),
        ..Config::default()
    };
    let server = Server::bind(cfg, vec![Arc::new(Index::open(FIXTURE).unwrap())])
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let streams = chat_streams(addr, 6);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(streams.iter().all(|s| !s.is_finished()), "not in flight");
    stop.send(()).unwrap();
    expect_whole(streams, &upstream).await;
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the server did not stop after its streams ended")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_upstream_gets_http2_only_with_prior_knowledge() {
    // `upstream.http2`: HTTP/2 where TLS chooses it (the default) or always; a plain-http
    // upstream has no TLS to choose it by.
    let text = format!("{INTRO}{UNRELATED}{OUTRO}");
    let upstream = openai_stream(&text, 16);
    for (mode, want) in [
        (UpstreamHttp2::Never, http::Version::HTTP_11),
        (UpstreamHttp2::Negotiate, http::Version::HTTP_11),
        (UpstreamHttp2::PriorKnowledge, http::Version::HTTP_2),
    ] {
        let mock = start(Reply::sse(&upstream, 40)).await;
        let p = proxy(&mock, |c| c.upstream_http2 = mode).await;
        expect_whole(chat_streams(p.addr, 3), &upstream).await;
        let seen = mock.seen.lock().unwrap().versions.clone();
        assert_eq!(seen, vec![want; 3], "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_upstream_is_offered_http2_only_when_the_config_asks() {
    // What the proxy offers a TLS upstream by ALPN, read from its ClientHello (the handshake
    // then fails: the listener is no TLS server, and the request gets an error).
    for (mode, want) in [
        // No ALPN at all: without it a TLS server speaks HTTP/1.1.
        (UpstreamHttp2::Never, vec![]),
        (UpstreamHttp2::Negotiate, vec!["h2", "http/1.1"]),
        (UpstreamHttp2::PriorKnowledge, vec!["h2"]),
    ] {
        let tls = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: http::Uri = format!("https://{}", tls.local_addr().unwrap())
            .parse()
            .unwrap();
        let mock = start(Reply::sse(b"", 1)).await;
        let p = proxy(&mock, |c| {
            c.upstream_http2 = mode;
            c.upstream_openai = url;
        })
        .await;
        let addr = p.addr;
        let answer =
            tokio::spawn(
                async move { post(addr, "/v1/chat/completions", &chat_req(true, "go")).await },
            );
        let hello = tokio::time::timeout(Duration::from_secs(10), async {
            let (mut sock, _) = tls.accept().await.unwrap();
            let mut buf = Vec::new();
            // The first TLS record: a 5-byte header, then its length.
            while buf.len() < 5 || buf.len() < 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]))
            {
                let mut chunk = [0u8; 4096];
                let n = tokio::io::AsyncReadExt::read(&mut sock, &mut chunk)
                    .await
                    .unwrap();
                assert!(n > 0, "the connection closed before a whole ClientHello");
                buf.extend_from_slice(&chunk[..n]);
            }
            buf
        })
        .await
        .expect("no TLS connection from the proxy");
        assert_eq!(alpn_offered(&hello), want, "{mode:?}");
        let (status, _, _) = answer.await.unwrap();
        assert!(status >= 500, "{mode:?}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_past_the_per_connection_limit_go_on_a_new_connection() {
    // An HTTP/2 upstream caps the streams a connection carries (here 2); hyper's client would
    // queue a third request until a stream ended — for a model's answer, seconds to minutes.
    // With `upstream.http2_max_streams` at the cap, 6 streams at once run at once, on 3
    // connections (the proxy's two workers each open their own).
    let (upstream, reply) = paced_unrelated(Duration::from_millis(25));
    let mock = start_capped(reply, Some(2)).await;
    let p = proxy(&mock, |c| {
        c.upstream_http2 = UpstreamHttp2::PriorKnowledge;
        c.upstream_http2_max_streams = 2;
    })
    .await;
    expect_whole(chat_streams(p.addr, 6), &upstream).await;
    let at_once = mock.most_at_once.load(std::sync::atomic::Ordering::SeqCst);
    let conns = mock.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        at_once, 6,
        "streams queued behind the cap ({conns} connections)"
    );
    assert!((3..=4).contains(&conns), "{conns} connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_upstream_chooses_http2_by_alpn_and_streams_past_its_cap_get_connections() {
    // The path towards a hosted provider: TLS (here with a private CA, `upstream.ca_file`),
    // HTTP/2 chosen by ALPN, streams capped per connection (2 here).
    let (upstream, reply) = paced_unrelated(Duration::from_millis(25));
    for (mode, want) in [
        (UpstreamHttp2::Negotiate, http::Version::HTTP_2),
        (UpstreamHttp2::Never, http::Version::HTTP_11),
    ] {
        let mock = start_capped(reply.clone(), Some(2)).await;
        let tls = tls_front(mock.addr).await;
        let p = proxy(&mock, |c| {
            c.upstream_openai = format!("https://{tls}").parse().unwrap();
            c.upstream_ca_file = Some("tests/fixtures/tls/ca.pem".into());
            c.upstream_http2 = mode;
            c.upstream_http2_max_streams = 2;
        })
        .await;
        expect_whole(chat_streams(p.addr, 6), &upstream).await;
        let seen = mock.seen.lock().unwrap().versions.clone();
        assert_eq!(seen, vec![want; 6], "{mode:?}");
        let at_once = mock.most_at_once.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(at_once, 6, "{mode:?}: streams queued behind the cap");
    }
}

#[tokio::test]
async fn an_unusable_upstream_ca_file_stops_the_proxy_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    for (path, why) in [
        (&empty, "holds no PEM certificate"),
        (&missing, "No such file"),
    ] {
        let cfg = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream_ca_file: Some(path.clone()),
            ..Config::default()
        };
        let err = match Server::bind(cfg, vec![Arc::new(Index::open(FIXTURE).unwrap())]).await {
            Ok(_) => panic!("bound with {}", path.display()),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("upstream.ca_file")
                && err.contains(&*path.to_string_lossy())
                && err.contains(why),
            "{err}"
        );
    }
}

/// TLS in front of the mock at `to` (the fixture certificate for 127.0.0.1, ALPN `h2` and
/// `http/1.1`): the bytes after the handshake go to the mock, which tells HTTP/2 from HTTP/1.1
/// itself, so its counts hold.
async fn tls_front(to: std::net::SocketAddr) -> std::net::SocketAddr {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs = CertificateDer::pem_file_iter("tests/fixtures/tls/server.pem")
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file("tests/fixtures/tls/server.key").unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

/// The protocols of the ALPN extension of a TLS record holding a ClientHello (none without the
/// extension).
fn alpn_offered(record: &[u8]) -> Vec<String> {
    let u16_at = |b: &[u8], i: usize| usize::from(u16::from_be_bytes([b[i], b[i + 1]]));
    assert_eq!(record[0], 22, "not a handshake record");
    let h = &record[5..];
    assert_eq!(h[0], 1, "not a ClientHello");
    // Handshake header (4), version (2), random (32), then the session id, cipher suites and
    // compression methods, each with its length.
    let mut i = 4 + 2 + 32;
    i += 1 + usize::from(h[i]);
    i += 2 + u16_at(h, i);
    i += 1 + usize::from(h[i]);
    let end = i + 2 + u16_at(h, i);
    i += 2;
    while i < end {
        let (kind, len) = (u16_at(h, i), u16_at(h, i + 2));
        let data = &h[i + 4..i + 4 + len];
        if kind == 16 {
            let mut out = Vec::new();
            let mut j = 2;
            while j < data.len() {
                let n = usize::from(data[j]);
                out.push(String::from_utf8_lossy(&data[j + 1..j + 1 + n]).into_owned());
                j += 1 + n;
            }
            return out;
        }
        i += 4 + len;
    }
    Vec::new()
}

/// An unrelated answer's stream, and a reply sending it in 40-byte pieces `every` apart: a
/// stream that lasts long enough (~40 pieces) for others to be under way with it.
fn paced_unrelated(every: Duration) -> (Vec<u8>, Reply) {
    let upstream = openai_stream(&format!("{INTRO}{UNRELATED}{OUTRO}"), 16);
    let mut reply = Reply::sse(&upstream, 40);
    reply.delay = every;
    (upstream, reply)
}

type Answer = (u16, http::HeaderMap, Bytes);

/// `n` streamed chat requests to the proxy at `addr`, under way at once.
fn chat_streams(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::task::JoinHandle<Answer>> {
    (0..n)
        .map(|_| {
            tokio::spawn(
                async move { post(addr, "/v1/chat/completions", &chat_req(true, "go")).await },
            )
        })
        .collect()
}

/// Every one of `streams` answered 200 with the upstream's stream, whole and unchanged.
async fn expect_whole(streams: Vec<tokio::task::JoinHandle<Answer>>, upstream: &[u8]) {
    for st in streams {
        let (status, _, body) = st.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            body,
            Bytes::copy_from_slice(upstream),
            "a stream was not relayed whole"
        );
    }
}

/// Writes its first 8 bytes, then nothing for 50 ms: a client whose first segment holds only
/// the start of what it sends.
struct SlowStart {
    io: hyper_util::rt::TokioIo<tokio::net::TcpStream>,
    written: usize,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::rt::Read for SlowStart {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for SlowStart {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Some(p) = self.pause.as_mut() {
            std::task::ready!(p.as_mut().poll(cx));
        }
        let n = if self.written == 0 {
            buf.len().min(8)
        } else {
            buf.len()
        };
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, &buf[..n]);
        if let std::task::Poll::Ready(Ok(n)) = r {
            if self.written == 0 {
                self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
            }
            self.written += n;
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_and_http1_are_told_apart_even_from_a_partial_first_segment() {
    // The proxy looks at a connection's first bytes to choose HTTP/1.1 or HTTP/2 (prior
    // knowledge, h2c). A first segment of 8 bytes is a prefix of the HTTP/2 preface ("PRI *
    // HT") or ambiguous with it ("POST /v1" starts with its "P"): the rest decides.
    use http_body_util::Empty;
    use hyper::client::conn::{http1, http2};
    let mock = start(Reply::json(200, &json!({"ok": true}))).await;
    let p = proxy(&mock, |_| {}).await;
    let body = chat_req(false, "hi").to_string();
    for (h2, slow) in [(true, false), (true, true), (false, false), (false, true)] {
        let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        let io = SlowStart {
            io: hyper_util::rt::TokioIo::new(tcp),
            written: if slow { 0 } else { 8 },
            pause: None,
        };
        let req = |path: &str, b: Option<&str>| {
            let r = http::Request::post(format!("http://{}{path}", p.addr))
                .header("content-type", "application/json");
            let r = if h2 { r } else { r.header("host", "x") };
            r.body(match b {
                Some(b) => Full::new(Bytes::from(b.to_string())).boxed(),
                None => Empty::new().map_err(|n| match n {}).boxed(),
            })
            .unwrap()
        };
        let what = format!("h2 {h2}, slow first segment {slow}");
        let statuses = tokio::time::timeout(Duration::from_secs(10), async {
            // Either sender: `Ok` speaks HTTP/1.1, `Err` HTTP/2.
            let mut send = if h2 {
                let (send, conn) = http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                Err(send)
            } else {
                let (send, conn) = http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                Ok(send)
            };
            let mut out = Vec::new();
            for (path, b) in [
                ("/v1/chat/completions", Some(body.as_str())),
                ("/v1/models", None),
            ] {
                // `ready` first: an HTTP/1.1 connection takes the next request only once it has
                // gone back to idle after the last response, which can lag its body's end.
                let r = match &mut send {
                    Ok(h1) => {
                        h1.ready().await.unwrap();
                        h1.send_request(req(path, b)).await
                    }
                    Err(h2) => {
                        h2.ready().await.unwrap();
                        h2.send_request(req(path, b)).await
                    }
                }
                .unwrap();
                let version = if h2 {
                    http::Version::HTTP_2
                } else {
                    http::Version::HTTP_11
                };
                assert_eq!(r.version(), version, "{what}");
                out.push((
                    r.status(),
                    r.into_body().collect().await.unwrap().to_bytes(),
                ));
            }
            out
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in 10 s"));
        for (status, b) in statuses {
            assert_eq!(status, 200, "{what}");
            assert_eq!(
                serde_json::from_slice::<Value>(&b).unwrap(),
                json!({"ok": true}),
                "{what}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_no_request_head_in_time_is_disconnected() {
    // `timeouts.client_header_ms`: nothing at all, the start of a head and no more, the start
    // of the HTTP/2 preface and no more, and a kept-alive connection left idle after its
    // response are all closed once the limit has passed; a request sent in time is served.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = start(Reply::json(200, &json!({"ok": true}))).await;
    let p = proxy(&mock, |c| {
        c.timeouts.client_header = Duration::from_millis(300);
    })
    .await;
    let closes = |mut s: tokio::net::TcpStream| async move {
        let t = std::time::Instant::now();
        let mut buf = [0u8; 4096];
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        (ended.is_ok(), t.elapsed())
    };
    let head = "POST /v1/models HTTP/1.1\r\nHost: x\r\n";
    for first in ["", head, "PRI * HT"] {
        let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        s.write_all(first.as_bytes()).await.unwrap();
        let (closed, after) = closes(s).await;
        assert!(closed, "{first:?}: the connection is still open after 5 s");
        assert!(
            after >= Duration::from_millis(200),
            "{first:?}: closed after {after:?}, before the limit"
        );
    }
    // In time: answered; then idle on the kept-alive connection past the limit: closed.
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (closed, _) = closes(s).await;
    assert!(
        closed,
        "an idle kept-alive connection is still open after 5 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_connection_that_sent_nothing() {
    // A connection that has sent no byte yet (a preconnect, a health check's TCP probe) has
    // no request to finish: shutdown closes it rather than waiting `client_header_ms` (30 s).
    let mock = start(Reply::json(200, &json!({"ok": true}))).await;
    let cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream_openai: format!("http://{}", mock.addr).parse().unwrap(),
        ..Config::default()
    };
    let server = Server::bind(cfg, Vec::new()).await.unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Served: the connection has reached a worker and waits for its first bytes.
    let (status, _, _) = post(addr, "/v1/models", &json!({})).await;
    assert_eq!(status, 200);
    stop.send(()).unwrap();
    let t = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("shutdown still waiting after 5 s for a connection that sent nothing")
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    drop(silent);
}

/// An agent that read a GPL file (it came back as a tool result) and writes it back through a
/// tool call: the run is the caller's own text, logged, not blocked — the request offers
/// tools, so its tool results are read as code for the exemption too. The same answer to a
/// request without that tool result is blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_the_agent_read_written_back_through_a_tool_is_not_blocked() {
    let file = std::fs::read_to_string("corpora/fixtures/gpl-code/src/ledger.rs").unwrap();
    let args = format!(
        r#"{{"path": "src/ledger.rs", "content": {}}}"#,
        serde_json::to_string(&file).unwrap()
    );
    let mock = start(Reply::sse(&openai_two_choices("Done.", &args, 9), 64)).await;
    let p = proxy(&mock, |_| {}).await;
    let tools = json!([{"type": "function", "function": {"name": "write_file", "parameters": {}}}]);
    let read = json!({"role": "assistant", "content": null, "tool_calls": [{"id": "r", "type": "function",
        "function": {"name": "read_file", "arguments": "{\"path\": \"src/ledger.rs\"}"}}]});
    let with_result = json!({"model": "m", "stream": true, "tools": tools, "messages": [
        {"role": "user", "content": "Rename the ledger module's main enum, please."}, read,
        {"role": "tool", "tool_call_id": "r", "content": file}]});
    let without = json!({"model": "m", "stream": true, "tools": tools, "messages": [
        {"role": "user", "content": "Write me a ledger module, please."}]});
    let arguments = |body: &[u8]| -> (String, Vec<Value>) {
        let evs = events(body);
        let args = evs
            .iter()
            .filter_map(|(_, v)| {
                v.pointer("/choices/0/delta/tool_calls/0/function/arguments")
                    .and_then(Value::as_str)
            })
            .collect();
        let finishes = evs
            .iter()
            .filter_map(|(_, v)| v.pointer("/choices/0/finish_reason").cloned())
            .filter(|f| !f.is_null())
            .collect();
        (args, finishes)
    };
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &with_result).await;
    let (got, finishes) = arguments(&body);
    assert_eq!(got, args);
    assert!(finishes.contains(&json!("tool_calls")), "{finishes:?}");
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &without).await;
    let (got, finishes) = arguments(&body);
    assert!(!got.contains("shillings"), "{got}");
    assert!(finishes.contains(&json!("content_filter")), "{finishes:?}");
}

/// A policy that blocks code from 24 units — under 2t, where a standard import block lies —
/// does not block that block when 40 indexed documents hold it whole (boilerplate, not a copy
/// of any one of them: `Finding::widely_shared`): strict holdback holds it while its runs are
/// open and releases it, byte for byte. Code of that length one document holds is blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_blocking_length_does_not_block_boilerplate_many_documents_hold() {
    let (dir, index, _) = common::shared_corpus(40, common::IMPORT_BLOCK);
    let policy = write_policy(
        dir.path(),
        "version = 1\n[[rules]]\nname = \"block-code\"\naction = \"block\"\nwhen = { source = [\"code\"], min_units = 24 }\n",
    );
    let boiler = format!(
        "Here you go:\n\n```rust\n{}fn shout(y: u64) -> u64 {{ y * 7 }}\n```\n",
        common::IMPORT_BLOCK
    );
    // Document 3's own functions (~80 units), which no other document holds.
    let own = format!(
        "Here you go:\n\n```rust\n{}```\n",
        common::own_code(3, "head")
    );
    passes_then_blocked_as_exact(&index, Some(policy), &boiler, &own, "code/d3.rs").await;
}

/// At each chunking, `passes` streams through byte for byte, not blocked, then `blocked` is
/// blocked as an exact copy of `doc`.
async fn passes_then_blocked_as_exact(
    index: &Arc<Index>,
    policy: Option<std::path::PathBuf>,
    passes: &str,
    blocked: &str,
    doc: &str,
) {
    for piece in [1, 7, 40] {
        let mock = start(Reply::sse(&openai_stream(passes, piece), 64)).await;
        let p = proxy_with(&mock, vec![Arc::clone(index)], |c| {
            c.policy = policy.clone()
        })
        .await;
        let (status, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
        assert_eq!(status, 200);
        let evs = events(&body);
        assert_eq!(openai_text(&evs), passes, "piece {piece}");
        assert!(
            evs.iter()
                .all(|(_, v)| v.pointer("/choices/0/finish_reason")
                    != Some(&json!("content_filter"))),
            "piece {piece}: {evs:?}"
        );

        *mock.reply.lock().unwrap() = Reply::sse(&openai_stream(blocked, piece), 64);
        let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
        let evs = events(&body);
        let last = assert_blocked_as(&evs, "exact");
        assert_eq!(
            last.pointer("/verbatim/finding/doc"),
            Some(&json!(doc)),
            "piece {piece}"
        );
    }
}

/// A response holding a list of the form of an indexed list — its own names, type and values:
/// any list of one form matches any other once renamed, so `scan` reports nothing
/// (`tests/near.rs::a_list_matches_any_list_of_its_form_…`). The proxy judged runs still open by
/// the policy alone, without the rule every ended run is reported by, and blocked it as a renamed
/// copy while it grew. It streams through now, byte for byte; the indexed list itself is still
/// blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_run_is_judged_by_the_rule_a_finished_one_is() {
    let dir = tempfile::tempdir().unwrap();
    let docs = vec![(
        "table.rs".to_string(),
        common::table("VM_MEMORY", "c_uint", 40),
    )];
    let m = common::write_corpus(dir.path(), "code", "code", "licensed", Some("MIT"), &docs);
    let index = common::build_index(dir.path(), &[m], verbatim::index::Params::default());
    let other = format!(
        "The constants:\n\n```rust\n{}```\n",
        common::table("GDI_HANDLE", "ULONG", 30)
    );
    let original = format!(
        "The constants:\n\n```rust\n{}```\n",
        common::table("VM_MEMORY", "c_uint", 40)
    );
    passes_then_blocked_as_exact(&index, None, &other, &original, "code/table.rs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_do_not_stall_other_streams_on_a_shared_http2_upstream() {
    // Over HTTP/2 the streams to one upstream share a connection and its flow-control window.
    // A client that stops reading holds its stream back (backpressure), and what the upstream
    // already sent for it waits in the proxy, counted against the connection's window until
    // read. With hyper's defaults (2 MB a stream, 5 MB the connection) three such clients
    // used up the window, and every other stream on that connection stopped. Here three
    // clients stop reading 4 MB answers; a fourth stream on the same upstream connection
    // must still arrive whole.
    use hyper::client::conn::http2;
    let big = openai_stream(&UNRELATED.repeat(4 << 20 >> 7), 1000);
    assert!(big.len() > 4 << 20);
    let mock = start(Reply::sse(&big, 16 << 10)).await;
    let p = proxy(&mock, |c| c.upstream_http2 = UpstreamHttp2::PriorKnowledge).await;
    // One client connection, so every stream is on one worker and so on one upstream
    // connection. Small stream windows on the client's side (so a stream that is not read
    // stops the proxy soon) and a connection window large enough that the client's own
    // connection is not what stalls.
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let (mut send, conn) = http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .initial_stream_window_size(64 << 10)
        .initial_connection_window_size(1 << 30)
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = || {
        http::Request::post(format!("http://{}/v1/chat/completions", p.addr))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(chat_req(true, "go").to_string())))
            .unwrap()
    };
    let mut unread = Vec::new();
    for _ in 0..3 {
        send.ready().await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(10), send.send_request(req()))
            .await
            .expect("no response head in 10 s")
            .unwrap();
        assert_eq!(r.status(), 200);
        unread.push(r);
    }
    // Time for the upstream to send the unread streams what their windows allow.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        mock.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let (upstream, reply) = paced_unrelated(Duration::ZERO);
    *mock.reply.lock().unwrap() = reply;
    send.ready().await.unwrap();
    let body = tokio::time::timeout(Duration::from_secs(10), async {
        let r = send.send_request(req()).await.unwrap();
        assert_eq!(r.status(), 200);
        r.into_body().collect().await.unwrap().to_bytes()
    })
    .await
    .expect("a stream sharing the upstream connection with unread ones did not arrive in 10 s");
    assert_eq!(body, Bytes::from(upstream));
    assert_eq!(
        mock.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the fourth stream went on a connection of its own"
    );
    // Backpressure still reaches the upstream: an unread 4 MB answer is held back by its
    // stream's window (2 MiB), so the upstream finished only the fourth stream.
    assert_eq!(
        mock.completed.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "an unread answer was read from the upstream to its end"
    );
    drop(unread);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_upstream_does_not_read_does_not_stall_the_clients_other_http2_streams() {
    // A client speaking HTTP/2 to Verbatim sends every request of a connection over it. A
    // request body that passes through (an upload) is read only as fast as its upstream takes
    // it; with hyper's server defaults (1 MiB a stream and 1 MiB the connection) one upload
    // to an upstream that reads nothing used the connection's whole window, and no other
    // request of the client's could send its body. The stalled upload here goes to the
    // Anthropic upstream (an `x-api-key` header), a socket that never reads; a chat request on
    // the same client connection must still be answered.
    use hyper::client::conn::http2;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        // Accepts and keeps the connection, reading nothing, until the test ends.
        let (s, _) = silent.accept().unwrap();
        std::thread::sleep(Duration::from_secs(20));
        drop(s);
    });
    let (upstream, reply) = paced_unrelated(Duration::ZERO);
    let mock = start(reply).await;
    let p = proxy(&mock, |c| {
        c.upstream_anthropic = format!("http://{silent_addr}").parse().unwrap();
    })
    .await;
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let (mut send, conn) = http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    // More than the kernel's socket buffers on the way to the silent upstream hold.
    let upload = http::Request::post(format!("http://{}/v1/files", p.addr))
        .header("x-api-key", "k")
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(vec![b'x'; 48 << 20])))
        .unwrap();
    send.ready().await.unwrap();
    let stalled = tokio::spawn(send.send_request(upload));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!stalled.is_finished(), "the silent upstream answered");
    send.ready().await.unwrap();
    let chat = http::Request::post(format!("http://{}/v1/chat/completions", p.addr))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat_req(true, "go").to_string())))
        .unwrap();
    let body = tokio::time::timeout(Duration::from_secs(10), async {
        let r = send.send_request(chat).await.unwrap();
        assert_eq!(r.status(), 200);
        r.into_body().collect().await.unwrap().to_bytes()
    })
    .await
    .expect("a request behind a stalled upload on the same connection got no answer in 10 s");
    assert_eq!(body, Bytes::from(upstream));
    stalled.abort();
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_drops_its_stream_cancels_the_upstream_over_either_http_version() {
    // A client over HTTP/2 leaves a stream with RST_STREAM, keeping its connection; over
    // HTTP/1.1 it closes the connection. Either way the upstream stream is cancelled — over
    // HTTP/2 upstream with RST_STREAM on a connection other streams go on using.
    use hyper::client::conn::{http1, http2};
    let text = format!("{INTRO}{UNRELATED}{OUTRO}").repeat(20);
    for (client_h2, upstream_h2) in [(true, true), (true, false), (false, true)] {
        let what = format!("client h2 {client_h2}, upstream h2 {upstream_h2}");
        let mut reply = Reply::sse(&openai_stream(&text, 3), 64);
        reply.delay = Duration::from_millis(5);
        let mock = start(reply).await;
        let p = proxy(&mock, |c| {
            if upstream_h2 {
                c.upstream_http2 = UpstreamHttp2::PriorKnowledge;
            }
        })
        .await;
        let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(tcp);
        let req = http::Request::post(format!("http://{}/v1/chat/completions", p.addr))
            .header("host", "x")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(chat_req(true, "go").to_string())))
            .unwrap();
        let resp = if client_h2 {
            let (mut send, conn) = http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            send.send_request(req).await
        } else {
            let (mut send, conn) = http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            send.send_request(req).await
        }
        .unwrap();
        assert_eq!(resp.status(), 200, "{what}");
        let mut body = resp.into_body();
        let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap_or_else(|_| panic!("{what}: no first event"));
        assert!(first.is_some(), "{what}");
        drop(body);
        mock.assert_cancelled().await;
        assert_eq!(
            mock.completed.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "{what}"
        );
    }
}

/// An HTTP/2 upstream (h2c, prior knowledge) that refuses the first `refuse` streams of each
/// connection with RST_STREAM REFUSED_STREAM — what a server does with streams past its
/// concurrency limit, or under load — and answers the others `200` with `body`. Counts the
/// streams it was sent.
async fn refusing_h2_upstream(
    refuse: usize,
    body: Bytes,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (seen, body) = (seen2.clone(), body.clone());
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(tcp).await.unwrap();
                let mut n = 0;
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    n += 1;
                    if n <= refuse {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let body = body.clone();
                    tokio::spawn(async move {
                        // Read the request body to its end before answering.
                        let mut rb = req.into_body();
                        while let Some(chunk) = rb.data().await {
                            let chunk = chunk.unwrap();
                            let _ = rb.flow_control().release_capacity(chunk.len());
                        }
                        let resp = http::Response::builder()
                            .status(200)
                            .header("content-type", "text/event-stream")
                            .body(())
                            .unwrap();
                        let mut send = respond.send_response(resp, false).unwrap();
                        send.send_data(body, true).unwrap();
                    });
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_http2_upstream_refused_is_sent_again() {
    // RST_STREAM with REFUSED_STREAM means the upstream did not process the stream at all
    // (RFC 9113 §8.7), so sending it again is safe, even for a POST. A scanned request's body
    // is held whole, and so is an empty one: those are sent again (up to three attempts in
    // all), and the client sees the answer, not a 502. A body that passes through as it
    // streams in cannot be sent twice: refused, it is a 502 that says so.
    let upstream = openai_stream(&format!("{INTRO}{UNRELATED}{OUTRO}"), 16);
    let chat = chat_req(true, "go").to_string();
    // (method, path, body, streams refused, status wanted, streams the upstream sees)
    let cases = [
        (
            "POST",
            "/v1/chat/completions",
            Some(chat.as_str()),
            1,
            200,
            2,
        ),
        (
            "POST",
            "/v1/chat/completions",
            Some(chat.as_str()),
            2,
            200,
            3,
        ),
        (
            "POST",
            "/v1/chat/completions",
            Some(chat.as_str()),
            3,
            502,
            3,
        ),
        ("GET", "/v1/models", None, 1, 200, 2),
        ("POST", "/v1/files", Some("a file's bytes"), 1, 502, 1),
    ];
    for (method, path, body, refuse, want_status, want_seen) in cases {
        let what = format!("{method} {path}, {refuse} refused");
        let (addr, seen) = refusing_h2_upstream(refuse, Bytes::from(upstream.clone())).await;
        let mock = start(Reply::json(200, &json!({"unused": true}))).await;
        let p = proxy(&mock, |c| {
            c.upstream_openai = format!("http://{addr}").parse().unwrap();
            c.upstream_http2 = UpstreamHttp2::PriorKnowledge;
        })
        .await;
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", p.addr))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
            .unwrap();
        let resp = client().request(req).await.unwrap();
        let status = resp.status().as_u16();
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&got);
        assert_eq!(status, want_status, "{what}: {text}");
        if want_status == 200 {
            assert_eq!(got, Bytes::from(upstream.clone()), "{what}");
        } else {
            assert!(text.contains("REFUSED_STREAM"), "{what}: {text}");
        }
        assert_eq!(
            seen.load(std::sync::atomic::Ordering::SeqCst),
            want_seen,
            "{what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_answer_on_a_scanned_route_is_refused_not_relayed_unscanned() {
    // Verbatim asks the upstream for `accept-encoding: identity` on scanned routes. An upstream
    // (or a box on the way) that compresses anyway would have its answer relayed unscanned:
    // the SSE decoder finds no events in gzip and relays what it cannot read, and a JSON
    // answer that does not parse is relayed as it came. Fail-closed: a 502 that says why, and
    // none of the body. `identity` is no compression; a route Verbatim does not scan relays
    // whatever it gets.
    let text = format!("{INTRO}{UNRELATED}{OUTRO}");
    let stream = openai_stream(&text, 16);
    let json_body = openai_json(&text);
    for (encoding, stream_req, path, want) in [
        ("gzip", true, "/v1/chat/completions", 502),
        ("br", false, "/v1/chat/completions", 502),
        ("identity", true, "/v1/chat/completions", 200),
        ("gzip", false, "/v1/embeddings", 200),
    ] {
        let what = format!("{encoding}, stream {stream_req}, {path}");
        let mut reply = if stream_req {
            Reply::sse(&stream, 64)
        } else {
            Reply::json(200, &json_body)
        };
        reply.headers = vec![("content-encoding", encoding)];
        let mock = start(reply.clone()).await;
        let p = proxy(&mock, |_| {}).await;
        let (status, headers, body) = post(p.addr, path, &chat_req(stream_req, "go")).await;
        let text_out = String::from_utf8_lossy(&body);
        assert_eq!(status, want, "{what}: {text_out}");
        let sent: Vec<u8> = reply.chunks.concat();
        if want == 502 {
            assert!(
                text_out.contains("content-encoding") && text_out.contains(encoding),
                "{what}: {text_out}"
            );
            assert!(
                !body.windows(20).any(|w| sent.windows(20).any(|s| s == w)),
                "{what}"
            );
        } else {
            assert_eq!(body.as_ref(), sent.as_slice(), "{what}");
            assert_eq!(
                headers.get("content-encoding").map(|v| v.to_str().unwrap()),
                Some(encoding),
                "{what}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_a_known_content_type_is_scanned_as_the_request_asked() {
    // A scanned route's answer was read as a stream only when labelled `text/event-stream`
    // and as JSON only when labelled `application/json`; anything else — no content type
    // at all, as some self-hosted servers send, or `text/plain` — was relayed unscanned.
    // Now such an answer is read as the request asked for it: a stream if it asked to
    // stream, JSON otherwise.
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    for ctype in ["", "text/plain; charset=utf-8", "application/octet-stream"] {
        let mut reply = Reply::sse(&openai_stream(&text, 5), 64);
        reply.content_type = ctype;
        let mock = start(reply).await;
        let p = proxy(&mock, |_| {}).await;
        let (status, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
        assert_eq!(status, 200, "{ctype:?}");
        let evs = events(&body);
        let got = openai_text(&evs);
        assert!(
            text.starts_with(&got) && got.len() <= INTRO.len(),
            "{ctype:?}: released {got:?}"
        );
        assert_blocked_as(&evs, "exact");

        let mut reply = Reply::json(200, &openai_json(&text));
        reply.content_type = ctype;
        *mock.reply.lock().unwrap() = reply;
        let (status, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(false, "go")).await;
        assert_eq!(status, 200, "{ctype:?}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v.pointer("/choices/0/finish_reason"),
            Some(&json!("content_filter")),
            "{ctype:?}"
        );
        assert_eq!(v.pointer("/choices/0/message/content"), Some(&json!(INTRO)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_fetched_later_are_scanned_as_the_answers_they_are() {
    // A Responses request with `background: true` answers at once with no output; the client
    // then fetches the answer — `GET /v1/responses/{id}`, or streams it, `?stream=true` — and
    // a stored chat completion is fetched with `GET /v1/chat/completions/{id}`. Those routes
    // passed through, so a background answer reached its client unscanned. They are scanned
    // as the whole or streamed answers they are. A response's input items (the caller's own
    // text) still pass through.
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let stream = responses_stream(&text, 3);
    let whole = events(&stream)
        .into_iter()
        .find(|(n, _)| n.as_deref() == Some("response.completed"))
        .map(|(_, v)| v["response"].clone())
        .unwrap();
    let get = |addr: std::net::SocketAddr, path: &str| {
        let req = http::Request::get(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        async move {
            let r = client().request(req).await.unwrap();
            let status = r.status().as_u16();
            (status, r.into_body().collect().await.unwrap().to_bytes())
        }
    };
    // Streamed.
    let mock = start(Reply::sse(&stream, 30)).await;
    let p = proxy(&mock, |_| {}).await;
    let (status, body) = get(
        p.addr,
        "/v1/responses/resp_mock?stream=true&starting_after=0",
    )
    .await;
    assert_eq!(status, 200);
    let evs = events(&body);
    let got = responses_text(&evs);
    assert!(text.starts_with(&got) && got.len() <= INTRO.len(), "{got}");
    assert!(!String::from_utf8_lossy(&body).contains("Oduya"));
    assert_eq!(
        evs.last().unwrap().0.as_deref(),
        Some("response.incomplete")
    );
    // Whole.
    *mock.reply.lock().unwrap() = Reply::json(200, &whole);
    let (status, body) = get(p.addr, "/v1/responses/resp_mock").await;
    assert_eq!(status, 200);
    let all = String::from_utf8_lossy(&body);
    assert!(!all.contains("Oduya"), "{all}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v.pointer("/incomplete_details/reason"),
        Some(&json!("content_filter")),
        "{v}"
    );
    // A stored chat completion.
    *mock.reply.lock().unwrap() = Reply::json(200, &openai_json(&text));
    let (status, body) = get(p.addr, "/v1/chat/completions/chatcmpl-mock").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v.pointer("/choices/0/message/content"), Some(&json!(INTRO)));
    assert_eq!(
        v.pointer("/choices/0/finish_reason"),
        Some(&json!("content_filter"))
    );
    // A stored completion's messages (the request's own) and other routes pass through.
    for path in [
        "/v1/chat/completions/chatcmpl-mock/messages",
        "/v1/responses",
    ] {
        *mock.reply.lock().unwrap() = Reply::json(200, &openai_json(&text));
        let (status, body) = get(p.addr, path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(body, Bytes::from(openai_json(&text).to_string()), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_answers_listed_or_returned_by_other_routes_are_scanned() {
    // A blocked answer stays stored at the provider (`store: true`, and every Responses
    // answer by default). Besides fetching it by id, a client could list stored chat
    // completions, read a conversation's items one by one or all at once, cancel a background
    // response (which returns its output so far) or update a stored completion's metadata
    // (which returns the completion), or list a chained response's input items (the earlier
    // turns' answers among them): each passed through and gave the passage back.
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let clean = format!("{INTRO}{UNRELATED}");
    let request = |method: &'static str, addr: std::net::SocketAddr, path: &str| {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(if method == "POST" {
                r#"{"metadata":{"k":"v"}}"#
            } else {
                ""
            })))
            .unwrap();
        async move {
            let r = client().request(req).await.unwrap();
            let status = r.status().as_u16();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert!(!String::from_utf8_lossy(&body).contains("Oduya"), "{v}");
            (status, v)
        }
    };
    let mock = start(Reply::json(200, &json!({}))).await;
    let p = proxy(&mock, |_| {}).await;

    // Stored chat completions, listed: each scanned alone; the clean one untouched.
    let list = json!({"object": "list", "data": [openai_json(&clean), openai_json(&text)],
        "first_id": "a", "last_id": "b", "has_more": false});
    *mock.reply.lock().unwrap() = Reply::json(200, &list);
    let (status, v) = request("GET", p.addr, "/v1/chat/completions?limit=2").await;
    assert_eq!(status, 200);
    assert_eq!(v["data"][0], openai_json(&clean), "{v}");
    assert_eq!(
        v.pointer("/data/1/choices/0/message/content"),
        Some(&json!(INTRO))
    );
    assert_eq!(
        v.pointer("/data/1/choices/0/finish_reason"),
        Some(&json!("content_filter"))
    );
    assert_eq!(v.pointer("/data/1/verbatim/action"), Some(&json!("block")));
    assert_eq!(v["has_more"], json!(false));

    // A stored completion's metadata updated: the completion comes back.
    *mock.reply.lock().unwrap() = Reply::json(200, &openai_json(&text));
    let (status, v) = request("POST", p.addr, "/v1/chat/completions/chatcmpl-1").await;
    assert_eq!(status, 200);
    assert_eq!(v.pointer("/choices/0/message/content"), Some(&json!(INTRO)));

    // A background response cancelled: the output it has so far.
    let stream = responses_stream(&text, 3);
    let whole = events(&stream)
        .into_iter()
        .find(|(n, _)| n.as_deref() == Some("response.completed"))
        .map(|(_, v)| v["response"].clone())
        .unwrap();
    *mock.reply.lock().unwrap() = Reply::json(200, &whole);
    let (status, v) = request("POST", p.addr, "/v1/responses/resp_1/cancel").await;
    assert_eq!(status, 200);
    assert_eq!(
        v.pointer("/incomplete_details/reason"),
        Some(&json!("content_filter"))
    );

    // A conversation's items: the user's message quoting the book is the caller's own text
    // and stays; the assistant's copy is cut, its item marked.
    let message = |role: &str, kind: &str, t: &str| {
        json!({"type": "message", "id": format!("msg_{role}"), "status": "completed",
            "role": role, "content": [{"type": kind, "text": t, "annotations": []}]})
    };
    let user = message("user", "input_text", &text);
    let assistant = message("assistant", "output_text", &text);
    let tool_output = json!({"type": "function_call_output", "call_id": "c1", "output": text});
    let items = json!({"object": "list",
        "data": [user.clone(), assistant.clone(), tool_output.clone(), message("assistant", "output_text", &clean)],
        "first_id": "msg_user", "last_id": "msg_assistant", "has_more": false});
    *mock.reply.lock().unwrap() = Reply::json(200, &items);
    let get = async |path: &str| {
        let req = http::Request::get(format!("http://{}{path}", p.addr))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = client().request(req).await.unwrap();
        let status = r.status().as_u16();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice::<Value>(&body).unwrap())
    };
    let (status, v) = get("/v1/conversations/conv_1/items?order=asc").await;
    assert_eq!(status, 200);
    assert_eq!(
        v["data"][0], user,
        "the caller's own message is not scanned"
    );
    assert_eq!(
        v["data"][2], tool_output,
        "nor a tool's output the caller sent"
    );
    assert_eq!(
        v["data"][3], items["data"][3],
        "a clean answer is untouched"
    );
    assert_eq!(
        v.pointer("/data/1/content/0/text"),
        Some(&json!(INTRO)),
        "{v}"
    );
    assert_eq!(v.pointer("/data/1/status"), Some(&json!("incomplete")));
    assert_eq!(v.pointer("/data/1/verbatim/action"), Some(&json!("block")));
    // A chained response's input items hold the earlier turn's answer.
    let (status, v) = get("/v1/responses/resp_2/input_items?order=asc").await;
    assert_eq!(status, 200);
    assert_eq!(v["data"][0], user);
    assert_eq!(
        v.pointer("/data/1/content/0/text"),
        Some(&json!(INTRO)),
        "{v}"
    );
    // One item fetched by its id.
    *mock.reply.lock().unwrap() = Reply::json(200, &assistant);
    let (status, v) = request(
        "GET",
        p.addr,
        "/v1/conversations/conv_1/items/msg_assistant",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v.pointer("/content/0/text"), Some(&json!(INTRO)), "{v}");
    assert_eq!(v.pointer("/verbatim/action"), Some(&json!("block")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_batchs_results_are_scanned_answer_by_answer() {
    // Anthropic's Message Batches answer each request later; the results come as JSON Lines
    // from `GET /v1/messages/batches/{id}/results`, each line one request's whole answer. The
    // route passed through: a batch was a way round every policy. Each answer is now scanned
    // and acted on as if it had come alone; the other lines stay byte for byte.
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let line = |id: &str, result: Value| json!({"custom_id": id, "result": result}).to_string();
    let ok = |t: &str| json!({"type": "succeeded", "message": anthropic_json(t)});
    let lines = [
        line("clean", ok(UNRELATED)),
        line("copied", ok(&text)),
        line(
            "failed",
            json!({"type": "errored", "error": {"type": "error", "error": {"type": "invalid_request_error", "message": text}}}),
        ),
        line("late", json!({"type": "expired"})),
        // A broken line is relayed as it is; it does not take the scan off the others.
        r#"{"custom_id": "broken", "result": {"#.to_string(),
    ];
    let body = format!("{}\n", lines.join("\n"));
    let mock = start(Reply {
        content_type: "application/binary",
        chunks: body
            .as_bytes()
            .chunks(100)
            .map(Bytes::copy_from_slice)
            .collect(),
        ..Reply::json(200, &json!({}))
    })
    .await;
    let p = proxy(&mock, |_| {}).await;
    let req = http::Request::get(format!(
        "http://{}/v1/messages/batches/msgbatch_1/results",
        p.addr
    ))
    .header("anthropic-version", "2023-06-01")
    .header("x-api-key", "sk-ant-test")
    .body(Full::new(Bytes::new()))
    .unwrap();
    let r = client().request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    let got = r.into_body().collect().await.unwrap().to_bytes();
    let got = String::from_utf8(got.to_vec()).unwrap();
    let out: Vec<&str> = got.split('\n').collect();
    assert_eq!(out.len(), 6, "{got}");
    assert_eq!(out[0], lines[0], "a clean answer's line is kept as it came");
    let v: Value = serde_json::from_str(out[1]).unwrap();
    let m = &v["result"]["message"];
    assert_eq!(m.pointer("/content/0/text"), Some(&json!(INTRO)), "{v}");
    assert_eq!(m["stop_reason"], json!("refusal"));
    assert_eq!(m.pointer("/verbatim/action"), Some(&json!("block")));
    assert_eq!(v["custom_id"], json!("copied"));
    // An error's message is the provider's (here it echoes text): not an answer, not read.
    assert_eq!(out[2], lines[2]);
    assert_eq!(out[3], lines[3]);
    assert_eq!(out[4], lines[4]);
    assert_eq!(out[5], "");
    assert!(!out[1].contains("Oduya"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchs_output_file_is_scanned_and_other_files_pass_untouched() {
    // OpenAI's Batch API answers later: the output is a file, `GET /v1/files/{id}/content`,
    // JSON Lines of whole answers — the route every kind of file is served on. A file whose
    // first line is batch output is read whole and each answer scanned as if it had come
    // alone; any other file streams through byte for byte, however large.
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let line = |id: &str, body: Value| {
        json!({"id": format!("batch_req_{id}"), "custom_id": id,
               "response": {"status_code": 200, "request_id": "req_1", "body": body}, "error": null})
        .to_string()
    };
    let lines = [
        line("clean", openai_json(UNRELATED)),
        line("copied", openai_json(&text)),
        json!({"id": "batch_req_x", "custom_id": "failed", "response": null,
               "error": {"code": "server_error", "message": text}})
        .to_string(),
    ];
    let output = format!("{}\n", lines.join("\n"));
    let file = |body: Vec<u8>| Reply {
        content_type: "application/octet-stream",
        chunks: body.chunks(1000).map(Bytes::copy_from_slice).collect(),
        ..Reply::json(200, &json!({}))
    };
    let mock = start(file(output.clone().into_bytes())).await;
    let p = proxy(&mock, |c| {
        c.max_response_bytes = 64 << 10;
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let get = async || {
        let req = http::Request::get(format!("http://{}/v1/files/file-1/content", p.addr))
            .header("authorization", "Bearer sk-test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = client().request(req).await.unwrap();
        let status = r.status().as_u16();
        (status, r.into_body().collect().await.unwrap().to_bytes())
    };
    let (status, body) = get().await;
    assert_eq!(status, 200);
    let got = String::from_utf8(body.to_vec()).unwrap();
    let out: Vec<&str> = got.split('\n').collect();
    assert_eq!(out.len(), 4, "{got}");
    assert_eq!(out[0], lines[0]);
    let v: Value = serde_json::from_str(out[1]).unwrap();
    let answer = &v["response"]["body"];
    assert_eq!(
        answer.pointer("/choices/0/message/content"),
        Some(&json!(INTRO)),
        "{v}"
    );
    assert_eq!(
        answer.pointer("/choices/0/finish_reason"),
        Some(&json!("content_filter"))
    );
    assert_eq!(
        out[2], lines[2],
        "an error line is the provider's, not an answer"
    );
    assert!(!out[1].contains("Oduya"));

    // Other files: a fine-tuning file (JSON Lines, not batch output) and a binary file larger
    // than `max_response_bytes` (no line end in its first 64 KiB) come through untouched.
    let training = format!(
        "{}\n",
        json!({"messages": [{"role": "assistant", "content": text}]})
    );
    let binary: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8 | 1).collect();
    for body in [training.into_bytes(), binary] {
        *mock.reply.lock().unwrap() = file(body.clone());
        let (status, got) = get().await;
        assert_eq!(status, 200);
        assert!(
            got == body,
            "a file that is not batch output is relayed as it is"
        );
    }
    // Batch output past the limit is refused, not relayed unscanned.
    let big: String = (0..200)
        .map(|i| format!("{}\n", line(&i.to_string(), openai_json(&text))))
        .collect();
    *mock.reply.lock().unwrap() = file(big.into_bytes());
    let (status, got) = get().await;
    assert_eq!(status, 502);
    assert!(!String::from_utf8_lossy(&got).contains("Oduya"));
    // Counted as file downloads, not as chat completions.
    let (_, m) = admin(p.admin.unwrap(), "GET", "/metrics").await;
    for line in [
        "verbatim_requests_total{route=\"file-content\",status=\"2xx\"} 3",
        "verbatim_requests_total{route=\"file-content\",status=\"5xx\"} 1",
        "verbatim_response_ends_total{route=\"file-content\",end=\"blocked\"} 1",
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }
    assert!(!m.contains("route=\"chat-completions\""), "{m}");
}

/// A chat answer that pastes a GPL file without a Markdown fence (a model told "no
/// formatting"): read as Markdown only, the code was prose to the scanner and went out whole.
/// Read as code too from its first code line, it is blocked before its copied run goes out,
/// at every chunking; the caller's own file, pasted the same way in the request, repeated
/// back, is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_answers_code_without_a_fence_is_read_as_code() {
    let file = std::fs::read_to_string("corpora/fixtures/gpl-code/src/ledger.rs").unwrap();
    let answer = format!(
        "Here is the ledger module, with no formatting as you asked:\n\n{file}\nAnything else?"
    );
    let ask = |content: &str| json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": content}]});
    let mock = start(Reply::sse(&openai_stream(&answer, 7), 64)).await;
    let p = proxy(&mock, |_| {}).await;
    for piece in [1, 7, 64] {
        *mock.reply.lock().unwrap() = Reply::sse(&openai_stream(&answer, piece), 64);
        let (s, _, body) = post(
            p.addr,
            "/v1/chat/completions",
            &ask("The ledger module, plain text."),
        )
        .await;
        assert_eq!(s, 200);
        let evs = events(&body);
        let got = openai_text(&evs);
        assert!(
            !got.contains("total_owed") && answer.starts_with(&got),
            "piece {piece}: released {got:?}"
        );
        assert!(
            evs.iter()
                .any(|(_, v)| v.pointer("/choices/0/finish_reason")
                    == Some(&json!("content_filter"))),
            "piece {piece}: not ended as filtered"
        );
    }
    // The caller pasted the file (no fence either) and asked for it back.
    let own = format!("Tidy this up, and give it back whole:\n\n{file}");
    let (s, _, body) = post(p.addr, "/v1/chat/completions", &ask(&own)).await;
    assert_eq!(s, 200);
    assert_eq!(openai_text(&events(&body)), answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_completion_is_read_as_the_code_its_prompt_is_in() {
    // Legacy completions and fill-in-the-middle answer with bare code, no Markdown fence. Read
    // as chat text is (Markdown: code only inside fences) a copy of a GPL file was prose to
    // the scanner and went out whole. The prompt says what the answer is: code in the
    // prompt's language.
    let file = std::fs::read_to_string("corpora/fixtures/gpl-code/src/ledger.rs").unwrap();
    let cut = file.find("/// Sums what is owed").unwrap();
    let (prompt, answer) = file.split_at(cut);
    let completion = |t: &str| {
        json!({"id": "cmpl-mock", "object": "text_completion", "created": 1_700_000_000, "model": "mock-model",
               "choices": [{"index": 0, "text": t, "logprobs": null, "finish_reason": "stop"}]})
    };
    let mock = start(Reply::json(200, &completion(answer))).await;
    let p = proxy(&mock, |_| {}).await;
    let req =
        |stream: bool| json!({"model": "m", "prompt": prompt, "max_tokens": 500, "stream": stream});
    // Whole; and DeepSeek's fill-in-the-middle, the same API under its beta base URL.
    let fim = json!({"model": "deepseek-chat", "prompt": prompt, "suffix": "\n"});
    for (path, body) in [("/v1/completions", req(false)), ("/beta/completions", fim)] {
        let (s, _, body) = post(p.addr, path, &body).await;
        assert_eq!(s, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        let got = v
            .pointer("/choices/0/text")
            .and_then(Value::as_str)
            .unwrap();
        assert!(
            !got.contains("total_owed") && answer.starts_with(got),
            "{path}: {v}"
        );
        assert_eq!(
            v.pointer("/choices/0/finish_reason"),
            Some(&json!("content_filter")),
            "{path}"
        );
    }
    // Streamed.
    *mock.reply.lock().unwrap() = Reply::sse(&completions_stream(answer, 7), 64);
    let (s, _, body) = post(p.addr, "/v1/completions", &req(true)).await;
    assert_eq!(s, 200);
    let evs = events(&body);
    let got: String = evs
        .iter()
        .filter_map(|(_, v)| v.pointer("/choices/0/text").and_then(Value::as_str))
        .collect();
    assert!(
        !got.contains("total_owed") && answer.starts_with(&got),
        "released {got:?}"
    );
    // Mistral's fill-in-the-middle route answers as chat completions do.
    *mock.reply.lock().unwrap() = Reply::sse(&openai_stream(answer, 7), 64);
    let fim = json!({"model": "codestral", "prompt": prompt, "suffix": "\n", "stream": true});
    let (s, _, body) = post(p.addr, "/v1/fim/completions", &fim).await;
    assert_eq!(s, 200);
    let got = openai_text(&events(&body));
    assert!(
        !got.contains("total_owed") && answer.starts_with(&got),
        "released {got:?}"
    );
    // The caller's own code, repeated: caller-supplied, not blocked (the prompt is read as
    // the same code as the answer).
    *mock.reply.lock().unwrap() = Reply::json(200, &completion(answer));
    let own = json!({"model": "m", "prompt": format!("{file}\n// again:\n")});
    let (s, _, body) = post(p.addr, "/v1/completions", &own).await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v.pointer("/choices/0/text"), Some(&json!(answer)), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_beside_a_whole_chat_answer_is_scanned_as_when_streamed() {
    // OpenAI-compatible servers that reason (DeepSeek, vLLM) return `reasoning_content`
    // beside the answer. Streamed, its deltas were scanned; a whole answer's was not.
    let mut v = openai_json(&format!("{INTRO}{UNRELATED}"));
    v["choices"][0]["message"]["reasoning_content"] = json!(format!("{INTRO}{COPIED}{OUTRO}"));
    let mock = start(Reply::json(200, &v)).await;
    let p = proxy(&mock, |_| {}).await;
    let (status, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(false, "go")).await;
    assert_eq!(status, 200);
    assert!(!String::from_utf8_lossy(&body).contains("Oduya"));
    let got: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        got.pointer("/choices/0/finish_reason"),
        Some(&json!("content_filter")),
        "{got}"
    );
    // Redacted in place, the answer itself kept.
    let p = proxy(&mock, |c| c.rules.long_action = Action::Redact).await;
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(false, "go")).await;
    let got: Value = serde_json::from_slice(&body).unwrap();
    let reasoning = got["choices"][0]["message"]["reasoning_content"]
        .as_str()
        .unwrap();
    assert!(
        reasoning.starts_with(INTRO)
            && reasoning.contains("[verbatim: redacted")
            && !reasoning.contains("Oduya"),
        "{reasoning}"
    );
    assert_eq!(
        got.pointer("/choices/0/message/content"),
        Some(&json!(format!("{INTRO}{UNRELATED}")))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_passes_through_and_carries_bytes_both_ways() {
    // Everything Verbatim does not scan passes through — a WebSocket too (OpenAI's Realtime
    // API, which the SDKs open at their base URL). The upgrade reaches the upstream with its
    // `Upgrade` and `Connection` headers (only `websocket`: an h2c upgrade is still stripped,
    // see `hop_by_hop_headers_and_headers_named_in_connection_are_not_forwarded`), the 101
    // comes back, and the bytes after it flow both ways untouched. Not scanned.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        // A mock WebSocket server that answers 101 and then echoes every byte upper-cased.
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        *seen2.lock().unwrap() = String::from_utf8_lossy(&head).to_ascii_lowercase();
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = [0u8; 1024];
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            let up: Vec<u8> = buf[..n].to_ascii_uppercase();
            if s.write_all(&up).await.is_err() {
                return;
            }
        }
    });
    let mock = start(Reply::json(200, &json!({"unused": true}))).await;
    let p = proxy(&mock, |c| {
        c.upstream_openai = format!("http://{up}").parse().unwrap();
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        b"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Authorization: Bearer sk-test\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
    })
    .await
    .expect("no answer to the upgrade");
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("upgrade: websocket") && head.contains("sec-websocket-accept"),
        "{head}"
    );
    let up_head = seen.lock().unwrap().clone();
    for want in [
        "get /v1/realtime?model=gpt-realtime http/1.1",
        "upgrade: websocket",
        "sec-websocket-key: dghlihnhbxbszsbub25jzq==",
        "authorization: bearer sk-test",
    ] {
        assert!(up_head.contains(want), "{want} missing upstream: {up_head}");
    }
    assert!(
        up_head
            .lines()
            .any(|l| l.starts_with("connection:") && l.contains("upgrade")),
        "{up_head}"
    );
    for msg in [
        &b"hello realtime"[..],
        &[0x81, 0x05, b'h', b'e', b'l', b'l', b'o'][..],
    ] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .expect("no bytes back through the tunnel")
            .unwrap();
        assert_eq!(back, msg.to_ascii_uppercase());
    }
    // An upstream that does not switch protocols: its answer is relayed as an answer. (The
    // JSON mock, reached as the Anthropic upstream through `x-api-key`.)
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        b"GET /v1/realtime HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nx-api-key: k\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("unused") {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let got = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(
        got.starts_with("http/1.1 200") && got.contains("{\"unused\":true}"),
        "{got}"
    );
    assert!(!got.contains("upgrade: websocket"), "{got}");
    // A WebSocket to a scanned API's path would carry its answers unscanned: refused.
    for path in ["/v1/responses", "/v1/chat/completions", "/v1/messages"] {
        let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        s.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
        assert!(
            got.starts_with("http/1.1 501") && got.contains("cannot be scanned"),
            "{path}: {got}"
        );
    }
}

/// One Chat Completions chunk of choice 0, as an SSE event.
fn chat_chunk(delta: Value, finish: Value) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": "mock-model", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    )
}

/// `first`, then `text` in chunks of `piece` characters each put in a delta by `delta`, then
/// `[DONE]`.
fn chat_pieces(first: Value, text: &str, piece: usize, delta: impl Fn(String) -> Value) -> String {
    let mut out = chat_chunk(first, Value::Null);
    let chars: Vec<char> = text.chars().collect();
    for c in chars.chunks(piece) {
        out.push_str(&chat_chunk(delta(c.iter().collect()), Value::Null));
    }
    out.push_str("data: [DONE]\n\n");
    out
}

/// The texts at `pointer` in `evs`, one after the other.
fn joined(evs: &[(Option<String>, Value)], pointer: &str) -> String {
    evs.iter()
        .filter_map(|(_, v)| v.pointer(pointer).and_then(Value::as_str))
        .collect()
}

/// What a stream stopped by a copy released of the text at `pointer` in choice 0's deltas: a
/// start of `whole`, less than half of it; and the chunk that ended the stream with
/// `content_filter`, returned.
fn released_before_block<'a>(
    evs: &'a [(Option<String>, Value)],
    pointer: &str,
    whole: &str,
) -> &'a Value {
    let got = joined(evs, pointer);
    assert!(
        whole.starts_with(&got) && got.len() < whole.len() / 2,
        "released {} of {}",
        got.len(),
        whole.len()
    );
    let last = &evs[evs.len() - 2].1;
    assert_eq!(
        last.pointer("/choices/0/finish_reason"),
        Some(&json!("content_filter")),
        "{last}"
    );
    last
}

/// A whole answer stopped by a copy — `content_filter` at `stopped` (a chat choice's
/// `finish_reason`, a response's `incomplete_details.reason`) — with the text at `pointer` cut
/// to less than half of `whole`. Returns the answer.
fn cut_in_whole_answer(body: &[u8], stopped: &str, pointer: &str, whole: &str) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v.pointer(stopped), Some(&json!("content_filter")), "{v}");
    let kept = v.pointer(pointer).and_then(Value::as_str).unwrap();
    assert!(kept.len() < whole.len() / 2, "{kept}");
    v
}

const CHAT_STOPPED: &str = "/choices/0/finish_reason";
const RESPONSE_STOPPED: &str = "/incomplete_details/reason";

/// A Chat Completions answer spoken as audio, streamed: the transcript in pieces of `piece`
/// characters, each followed by a chunk of (mock) audio data `AUDIO-n`.
fn openai_audio_stream(transcript: &str, piece: usize) -> Vec<u8> {
    let chunk = chat_chunk;
    let mut out = chunk(
        json!({"role": "assistant", "content": null, "refusal": null, "audio": {"id": "audio_mock", "transcript": ""}}),
        Value::Null,
    );
    let chars: Vec<char> = transcript.chars().collect();
    for (n, c) in chars.chunks(piece).enumerate() {
        let t: String = c.iter().collect();
        out.push_str(&chunk(json!({"audio": {"transcript": t}}), Value::Null));
        out.push_str(&chunk(
            json!({"audio": {"data": format!("AUDIO-{n}")}}),
            Value::Null,
        ));
    }
    out.push_str(&chunk(
        json!({"audio": {"id": "audio_mock", "expires_at": 1_700_003_600}}),
        json!("stop"),
    ));
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_spoken_as_audio_is_read_by_its_transcript_and_blocked_with_its_audio() {
    // Chat Completions can answer as audio (`modalities: ["text", "audio"]`): the text is then
    // the audio's transcript, `delta.audio.transcript` / `message.audio.transcript` — where a
    // recited passage or lyric shows. It was not read at all. Now it is scanned like text; the
    // audio cannot be read or redacted, so a block stops the audio after the transcript's
    // last released piece (strict holdback keeps the audio behind held transcript), a
    // blocked whole answer loses its audio, and what the policy would redact is blocked.
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let clean = openai_audio_stream(&format!("{INTRO}{UNRELATED}{OUTRO}"), 9);
    let mock = start(Reply::sse(&clean, 64)).await;
    let p = proxy(&mock, |_| {}).await;
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "sing")).await;
    assert_eq!(
        body,
        Bytes::from(clean),
        "a clean spoken answer is relayed as it came"
    );

    let piece = 9;
    *mock.reply.lock().unwrap() = Reply::sse(&openai_audio_stream(&text, piece), 64);
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "sing")).await;
    let evs = events(&body);
    let said = joined(&evs, "/choices/0/delta/audio/transcript");
    assert!(
        text.starts_with(&said) && said.len() <= INTRO.len(),
        "released {said:?}"
    );
    assert_blocked_as(&evs, "exact");
    // Audio after the last released transcript piece did not go out.
    let released_pieces = said.chars().count().div_ceil(piece);
    let audio: Vec<&str> = evs
        .iter()
        .filter_map(|(_, v)| {
            v.pointer("/choices/0/delta/audio/data")
                .and_then(Value::as_str)
        })
        .collect();
    assert!(!audio.is_empty(), "the audio before the passage goes out");
    for a in audio {
        let n: usize = a.trim_start_matches("AUDIO-").parse().unwrap();
        assert!(
            n < released_pieces,
            "audio {a} after the released transcript ({released_pieces} pieces)"
        );
    }

    // Whole: blocked, the audio gone.
    let whole = json!({"id": "chatcmpl-audio", "object": "chat.completion", "created": 1_700_000_000, "model": "mock-audio",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null,
            "audio": {"id": "audio_mock", "data": "AUDIO-ALL", "expires_at": 1_700_003_600, "transcript": text}},
            "finish_reason": "stop"}]});
    *mock.reply.lock().unwrap() = Reply::json(200, &whole);
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(false, "sing")).await;
    let all = String::from_utf8_lossy(&body);
    assert!(
        !all.contains("Oduya") && !all.contains("AUDIO-ALL"),
        "{all}"
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v.pointer("/choices/0/finish_reason"),
        Some(&json!("content_filter"))
    );
    assert_eq!(v.pointer("/choices/0/message/audio"), Some(&Value::Null));

    // A policy that redacts blocks a transcript instead, and says why.
    let mock = start(Reply::json(200, &whole)).await;
    let p = proxy(&mock, |c| c.rules.long_action = Action::Redact).await;
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(false, "sing")).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v.pointer("/choices/0/finish_reason"),
        Some(&json!("content_filter")),
        "{v}"
    );
    assert_eq!(v.pointer("/choices/0/message/audio"), Some(&Value::Null));
    assert!(
        v.pointer("/verbatim/reason")
            .and_then(Value::as_str)
            .is_some_and(|r| r.contains("audio cannot be redacted")),
        "{v}"
    );
    *mock.reply.lock().unwrap() = Reply::sse(&openai_audio_stream(&text, piece), 64);
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "sing")).await;
    let evs = events(&body);
    assert!(!String::from_utf8_lossy(&body).contains("Oduya"));
    assert_blocked_as(&evs, "exact");
}

/// OpenAI-style log probabilities for `text`, a token per `piece` characters: each token's
/// text, its bytes, and one alternative.
fn logprobs_of(text: &str, piece: usize) -> Value {
    let chars: Vec<char> = text.chars().collect();
    let content: Vec<Value> = chars
        .chunks(piece)
        .map(|c| {
            let t: String = c.iter().collect();
            json!({"token": t, "logprob": -0.1, "bytes": t.as_bytes(),
                   "top_logprobs": [{"token": t, "logprob": -0.1, "bytes": t.as_bytes()}]})
        })
        .collect();
    json!({"content": content, "refusal": null})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_probabilities_do_not_give_back_what_was_blocked_or_redacted() {
    // With `logprobs: true` every token of the answer comes back a second time, beside the
    // text: in `choices[i].logprobs.content[].token` (and `.bytes`, and the alternatives in
    // `top_logprobs`). Cutting or redacting the text and leaving those would hand the copied
    // passage back token by token. Where a choice's text changes, its log probabilities go.
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let mut whole = openai_json(&text);
    whole["choices"][0]["logprobs"] = logprobs_of(&text, 4);
    for action in [Action::Block, Action::Redact] {
        let mock = start(Reply::json(200, &whole)).await;
        let p = proxy(&mock, |c| c.rules.long_action = action).await;
        let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(false, "go")).await;
        let all = String::from_utf8_lossy(&body);
        assert!(
            !all.contains("Oduya") && !all.contains("oilc"),
            "{action:?}: {all}"
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v.pointer("/choices/0/logprobs"),
            Some(&Value::Null),
            "{action:?}"
        );
    }
    // Streamed and redacted: each rewritten chunk loses its log probabilities.
    let mut stream = String::new();
    let chars: Vec<char> = text.chars().collect();
    for c in chars.chunks(4) {
        let t: String = c.iter().collect();
        stream.push_str(&format!(
            "data: {}\n\n",
            json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                   "choices": [{"index": 0, "delta": {"content": t}, "logprobs": logprobs_of(&t, 4), "finish_reason": null}]})
        ));
    }
    stream.push_str("data: [DONE]\n\n");
    let mock = start(Reply::sse(stream.as_bytes(), 64)).await;
    let p = proxy(&mock, |c| c.rules.long_action = Action::Redact).await;
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    let all = String::from_utf8_lossy(&body);
    assert!(all.contains("[verbatim: redacted"), "{all}");
    assert!(!all.contains("Oduya") && !all.contains("oilc"), "{all}");
    // Chunks left as they were keep theirs.
    assert!(all.contains("\"logprobs\":{\"content\""), "{all}");

    // A whole Responses answer: each output text carries its own.
    let mut resp = events(&responses_stream(&text, 3))
        .into_iter()
        .find(|(n, _)| n.as_deref() == Some("response.completed"))
        .map(|(_, v)| v["response"].clone())
        .unwrap();
    resp["output"][0]["content"][0]["logprobs"] = logprobs_of(&text, 4)["content"].clone();
    let mock = start(Reply::json(200, &resp)).await;
    let p = proxy(&mock, |_| {}).await;
    let req = json!({"model": "mock-model", "input": "a story"});
    let (_, _, body) = post(p.addr, "/v1/responses", &req).await;
    let all = String::from_utf8_lossy(&body);
    assert!(!all.contains("Oduya") && !all.contains("oilc"), "{all}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v.pointer("/output/0/content/0/logprobs"), Some(&json!([])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deprecated_function_call_is_scanned_like_tool_calls() {
    // A request's `functions` (deprecated, still served by OpenAI and by OpenAI-compatible
    // servers) is answered with one `function_call`, not `tool_calls`: its arguments were not
    // read, so a file written through it passed unscanned. Read as tool-call arguments now,
    // streamed and whole.
    let src = std::fs::read_to_string("corpora/fixtures/gpl-code/src/ledger.rs").unwrap();
    let args = json!({"path": "src/ledger.rs", "content": src}).to_string();
    let stream = chat_pieces(
        json!({"role": "assistant", "content": null, "function_call": {"name": "write_file", "arguments": ""}}),
        &args,
        11,
        |t| json!({"function_call": {"arguments": t}}),
    );
    let mock = start(Reply::sse(stream.as_bytes(), 64)).await;
    let p = proxy(&mock, |_| {}).await;
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    let evs = events(&body);
    let last = released_before_block(&evs, "/choices/0/delta/function_call/arguments", &args);
    assert_eq!(
        last.pointer("/verbatim/finding/doc"),
        Some(&json!("fixtures/gpl-code/src/ledger.rs"))
    );

    let whole = json!({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
            "function_call": {"name": "write_file", "arguments": args}}, "finish_reason": "function_call"}]});
    *mock.reply.lock().unwrap() = Reply::json(200, &whole);
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(false, "go")).await;
    cut_in_whole_answer(
        &body,
        CHAT_STOPPED,
        "/choices/0/message/function_call/arguments",
        &args,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_a_model_streams_to_a_remote_mcp_tool_are_scanned() {
    // The Responses API can call a remote MCP server itself: the model writes the call's
    // arguments, streamed as `response.mcp_call_arguments.delta`. Those deltas were relayed
    // unread, and the closing item's `arguments` then emptied as a repeat of a stream never
    // scanned. Now they are tool-call arguments like a function call's.
    let args = json!({"text": format!("{INTRO}{COPIED}{OUTRO}")}).to_string();
    let mut evs = Vec::new();
    let mut ev = |v: Value| evs.push(v);
    let item = |arguments: &str, status: &str| {
        json!({"id": "mcp_1", "type": "mcp_call", "server_label": "notes", "name": "save",
               "arguments": arguments, "status": status})
    };
    ev(
        json!({"type": "response.created", "response": {"id": "resp_mcp", "object": "response", "status": "in_progress", "output": []}}),
    );
    ev(
        json!({"type": "response.output_item.added", "output_index": 0, "item": item("", "in_progress")}),
    );
    let chars: Vec<char> = args.chars().collect();
    for c in chars.chunks(7) {
        let d: String = c.iter().collect();
        ev(
            json!({"type": "response.mcp_call_arguments.delta", "output_index": 0, "item_id": "mcp_1", "delta": d}),
        );
    }
    ev(
        json!({"type": "response.mcp_call_arguments.done", "output_index": 0, "item_id": "mcp_1", "arguments": args}),
    );
    ev(
        json!({"type": "response.output_item.done", "output_index": 0, "item": item(&args, "completed")}),
    );
    ev(
        json!({"type": "response.completed", "response": {"id": "resp_mcp", "object": "response", "status": "completed",
        "output": [item(&args, "completed")]}}),
    );
    let mock = start(Reply::sse(responses_events(evs).as_bytes(), 50)).await;
    let p = proxy(&mock, |_| {}).await;
    let req = json!({"model": "mock-model", "stream": true, "input": "save it"});
    let (_, _, body) = post(p.addr, "/v1/responses", &req).await;
    let all = String::from_utf8_lossy(&body);
    assert!(!all.contains("Oduya") && !all.contains("oilcloth"), "{all}");
    let evs = events(&body);
    let (name, last) = evs.last().unwrap();
    assert_eq!(name.as_deref(), Some("response.incomplete"), "{all}");
    assert_eq!(
        last.pointer("/response/incomplete_details/reason"),
        Some(&json!("content_filter"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_tools_free_form_input_in_chat_completions_is_scanned() {
    // Chat Completions' custom tools are called with free-form text, `tool_calls[i].custom.input`
    // instead of `function.arguments`: it was not read. Now it is, as a tool's free-form input
    // (Markdown: the file in its fence is code).
    let src = std::fs::read_to_string("corpora/fixtures/gpl-code/src/ledger.rs").unwrap();
    let input = format!("Writing src/ledger.rs:\n```rust\n{src}```\n");
    let whole = json!({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "custom", "custom": {"name": "write_file", "input": input}}]},
            "finish_reason": "tool_calls"}]});
    let mock = start(Reply::json(200, &whole)).await;
    let p = proxy(&mock, |_| {}).await;
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(false, "go")).await;
    cut_in_whole_answer(
        &body,
        CHAT_STOPPED,
        "/choices/0/message/tool_calls/0/custom/input",
        &input,
    );

    let stream = chat_pieces(
        json!({"role": "assistant", "tool_calls": [
            {"index": 0, "id": "call_1", "type": "custom", "custom": {"name": "write_file", "input": ""}}]}),
        &input,
        13,
        |t| json!({"tool_calls": [{"index": 0, "custom": {"input": t}}]}),
    );
    *mock.reply.lock().unwrap() = Reply::sse(stream.as_bytes(), 64);
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    released_before_block(
        &events(&body),
        "/choices/0/delta/tool_calls/0/custom/input",
        &input,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_call_that_writes_a_file_is_scanned() {
    // The Responses shell tool: the model streams shell commands
    // (`response.shell_call_command.delta`), which can write a whole file through a heredoc.
    // They were relayed unread. Read as a script now, streamed and whole.
    // A function without `#` or `'`: the same units read as a script as read as Rust.
    let code = format!("{}\n}}", ledger_total_owed_open());
    let command = format!("cat > src/ledger.rs <<EOF\n{code}\nEOF");
    let call = |commands: Value, status: &str| {
        json!({"id": "sh_1", "type": "shell_call", "call_id": "call_1", "status": status,
               "action": {"commands": commands}})
    };
    let mut evs = Vec::new();
    let mut ev = |v: Value| evs.push(v);
    ev(
        json!({"type": "response.created", "response": {"id": "r", "object": "response", "status": "in_progress", "output": []}}),
    );
    ev(
        json!({"type": "response.output_item.added", "output_index": 0, "item": call(json!([]), "in_progress")}),
    );
    ev(
        json!({"type": "response.shell_call_command.added", "output_index": 0, "command_index": 0, "command": "ls"}),
    );
    ev(
        json!({"type": "response.shell_call_command.done", "output_index": 0, "command_index": 0, "command": "ls"}),
    );
    ev(
        json!({"type": "response.shell_call_command.added", "output_index": 0, "command_index": 1, "command": ""}),
    );
    let chars: Vec<char> = command.chars().collect();
    for c in chars.chunks(9) {
        let d: String = c.iter().collect();
        ev(
            json!({"type": "response.shell_call_command.delta", "output_index": 0, "command_index": 1, "delta": d}),
        );
    }
    ev(
        json!({"type": "response.shell_call_command.done", "output_index": 0, "command_index": 1, "command": command}),
    );
    ev(
        json!({"type": "response.output_item.done", "output_index": 0, "item": call(json!(["ls", command]), "completed")}),
    );
    ev(
        json!({"type": "response.completed", "response": {"id": "r", "object": "response", "status": "completed",
        "output": [call(json!(["ls", command]), "completed")]}}),
    );
    let mock = start(Reply::sse(responses_events(evs).as_bytes(), 50)).await;
    let p = proxy(&mock, |_| {}).await;
    let req = json!({"model": "mock-model", "stream": true, "input": "write the ledger"});
    let (_, _, body) = post(p.addr, "/v1/responses", &req).await;
    let evs = events(&body);
    let got: String = evs
        .iter()
        .filter(|(n, _)| n.as_deref() == Some("response.shell_call_command.delta"))
        .filter_map(|(_, v)| v["delta"].as_str())
        .collect();
    assert!(
        command.starts_with(&got) && got.len() < command.len() / 2,
        "released {} of {}",
        got.len(),
        command.len()
    );
    let (name, last) = evs.last().unwrap();
    assert_eq!(name.as_deref(), Some("response.incomplete"));
    assert_eq!(
        last.pointer("/response/incomplete_details/reason"),
        Some(&json!("content_filter"))
    );
    assert!(
        String::from_utf8_lossy(&body).contains("\"command\":\"ls\""),
        "the first command went out"
    );

    // Whole.
    let whole = json!({"id": "r", "object": "response", "status": "completed", "output": [call(json!(["ls", command]), "completed")]});
    *mock.reply.lock().unwrap() = Reply::json(200, &whole);
    let req = json!({"model": "mock-model", "input": "write the ledger"});
    let (_, _, body) = post(p.addr, "/v1/responses", &req).await;
    let v = cut_in_whole_answer(
        &body,
        RESPONSE_STOPPED,
        "/output/0/action/commands/1",
        &command,
    );
    assert_eq!(v.pointer("/output/0/action/commands/0"), Some(&json!("ls")));
}

/// A Responses stream of `events`, each numbered (`sequence_number`) and named by its type.
fn responses_events(events: Vec<Value>) -> String {
    events
        .into_iter()
        .enumerate()
        .map(|(n, mut v)| {
            v["sequence_number"] = json!(n);
            format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap())
        })
        .collect()
}

/// A Responses stream in which the model writes `diff` to `path` through the `apply_patch`
/// tool: the item is announced (its diff empty), then comes whole in `output_item.done`.
fn apply_patch_stream(path: &str, diff: &str) -> String {
    let call = |diff: &str, status: &str| {
        json!({"id": "apc_1", "type": "apply_patch_call", "call_id": "call_1", "status": status,
               "operation": {"type": "create_file", "path": path, "diff": diff}})
    };
    let mut evs = Vec::new();
    let mut ev = |v: Value| evs.push(v);
    ev(
        json!({"type": "response.created", "response": {"id": "r", "object": "response", "status": "in_progress", "output": []}}),
    );
    ev(
        json!({"type": "response.output_item.added", "output_index": 0, "item": call("", "in_progress")}),
    );
    ev(
        json!({"type": "response.output_item.done", "output_index": 0, "item": call(diff, "completed")}),
    );
    ev(
        json!({"type": "response.completed", "response": {"id": "r", "object": "response", "status": "completed",
        "output": [call(diff, "completed")]}}),
    );
    responses_events(evs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_through_the_apply_patch_tool_is_scanned_as_the_file() {
    // The Responses `apply_patch` tool: the model writes a file as a diff, every line marked
    // `+`, in an `apply_patch_call` item that comes whole. It was not read; and read as it
    // is, each line's marker would break every run of code at every line. Now the diff is read
    // as a patch — the file's lines without their markers, in the language of its path.
    let file = std::fs::read_to_string("corpora/fixtures/gpl-code/src/ledger.rs").unwrap();
    let diff: String = file.lines().map(|l| format!("+{l}\n")).collect();
    let req = json!({"model": "mock-model", "stream": true, "input": "write the ledger"});
    // A file of one's own passes as it came.
    let own: String = (0..40)
        .map(|i| format!("+fn step_{i}(x: u32) -> u32 {{ x * {i} + {} }}\n", i * 7))
        .collect();
    let clean = apply_patch_stream("src/steps.rs", &own);
    let mock = start(Reply::sse(clean.as_bytes(), 80)).await;
    let p = proxy(&mock, |_| {}).await;
    let (_, _, body) = post(p.addr, "/v1/responses", &req).await;
    assert_eq!(body, Bytes::from(clean));

    *mock.reply.lock().unwrap() =
        Reply::sse(apply_patch_stream("src/ledger.rs", &diff).as_bytes(), 80);
    let (_, _, body) = post(p.addr, "/v1/responses", &req).await;
    let all = String::from_utf8_lossy(&body);
    assert!(!all.contains("total_owed"), "{all}");
    let evs = events(&body);
    let (name, last) = evs.last().unwrap();
    assert_eq!(name.as_deref(), Some("response.incomplete"), "{all}");
    assert_eq!(
        last.pointer("/response/incomplete_details/reason"),
        Some(&json!("content_filter"))
    );
    assert_eq!(
        last.pointer("/verbatim/finding/doc")
            .or_else(|| last.pointer("/response/verbatim/finding/doc")),
        Some(&json!("fixtures/gpl-code/src/ledger.rs")),
        "{last}"
    );

    // Whole, and under a policy that redacts: blocked, as a patch with a redaction in it
    // would no longer apply.
    let whole = json!({"id": "r", "object": "response", "status": "completed", "output": [
        {"id": "apc_1", "type": "apply_patch_call", "call_id": "call_1", "status": "completed",
         "operation": {"type": "create_file", "path": "src/ledger.rs", "diff": diff}}]});
    let mock = start(Reply::json(200, &whole)).await;
    let p = proxy(&mock, |c| c.rules.long_action = Action::Redact).await;
    let (_, _, body) = post(
        p.addr,
        "/v1/responses",
        &json!({"model": "m", "input": "x"}),
    )
    .await;
    let v = cut_in_whole_answer(&body, RESPONSE_STOPPED, "/output/0/operation/diff", &diff);
    let kept = v
        .pointer("/output/0/operation/diff")
        .and_then(Value::as_str)
        .unwrap();
    assert!(
        kept.len() < diff.len() / 2 && !kept.contains("total_owed"),
        "{kept}"
    );
    assert!(
        v.pointer("/verbatim/reason")
            .and_then(Value::as_str)
            .is_some_and(|r| r.contains("would no longer apply")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_given_as_a_list_of_parts_is_read() {
    // Some OpenAI-compatible providers give `content` as a list of parts — Mistral's reasoning
    // models: `[{"type": "thinking", "thinking": [{"type": "text", "text": …}]}, {"type":
    // "text", "text": …}]`, streamed and whole. Only a string was read, so such an answer went
    // out unscanned. Its text and reasoning parts are read now, and rewritten in place.
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let parts = |thinking: &str, answer: &str| {
        json!([{"type": "thinking", "thinking": [{"type": "text", "text": thinking}]},
               {"type": "text", "text": answer}])
    };
    let whole = json!({"id": "c", "object": "chat.completion", "created": 0, "model": "magistral",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": parts("Let me think.", &text)},
            "finish_reason": "stop"}]});
    let mock = start(Reply::json(200, &whole)).await;
    let p = proxy(&mock, |_| {}).await;
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(false, "go")).await;
    let v = cut_in_whole_answer(
        &body,
        CHAT_STOPPED,
        "/choices/0/message/content/1/text",
        &text,
    );
    assert_eq!(
        v.pointer("/choices/0/message/content/0/thinking/0/text"),
        Some(&json!("Let me think.")),
        "{v}"
    );
    // The copy in the reasoning, redacted there and nowhere else.
    let whole = json!({"id": "c", "object": "chat.completion", "created": 0, "model": "magistral",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": parts(&text, UNRELATED)},
            "finish_reason": "stop"}]});
    let mock = start(Reply::json(200, &whole)).await;
    let p = proxy(&mock, |c| c.rules.long_action = Action::Redact).await;
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(false, "go")).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    let thought = v
        .pointer("/choices/0/message/content/0/thinking/0/text")
        .and_then(Value::as_str)
        .unwrap();
    assert!(
        thought.contains("[verbatim: redacted") && !thought.contains("Oduya"),
        "{v}"
    );
    assert_eq!(
        v.pointer("/choices/0/message/content/1/text"),
        Some(&json!(UNRELATED))
    );
    // Streamed: each chunk's content a list of one part.
    let stream = chat_pieces(
        json!({"role": "assistant", "content": ""}),
        &text,
        7,
        |t| json!({"content": [{"type": "text", "text": t}]}),
    );
    let mock = start(Reply::sse(stream.as_bytes(), 64)).await;
    let p = proxy(&mock, |_| {}).await;
    let (_, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    let evs = events(&body);
    let got = joined(&evs, "/choices/0/delta/content/0/text");
    assert!(
        text.starts_with(&got) && got.len() <= INTRO.len(),
        "released {got:?}"
    );
    assert!(!String::from_utf8_lossy(&body).contains("Oduya"));
    assert_eq!(
        evs[evs.len() - 2].1.pointer("/choices/0/finish_reason"),
        Some(&json!("content_filter"))
    );
}
