//! A mock provider (not a real one): a hyper server on 127.0.0.1:0 that replays recorded
//! OpenAI- and Anthropic-shaped responses with chosen chunk sizes and delays, can reset a
//! stream midway, and records whether the client (the proxy) went away early.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub mod harness;

/// What the mock answers to the next request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    /// The body, sent in these pieces.
    pub chunks: Vec<Bytes>,
    pub delay: Duration,
    /// Break the connection after this many chunks.
    pub reset_after: Option<usize>,
    /// Wait this long before sending the response head.
    pub head_delay: Duration,
    /// After this many chunks, go silent for this long (a stalled upstream).
    pub stall: Option<(usize, Duration)>,
    /// More response headers.
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Reply {
    pub fn sse(events: &[u8], chunk: usize) -> Reply {
        Reply {
            status: 200,
            content_type: "text/event-stream",
            chunks: events
                .chunks(chunk.max(1))
                .map(Bytes::copy_from_slice)
                .collect(),
            delay: Duration::ZERO,
            reset_after: None,
            head_delay: Duration::ZERO,
            stall: None,
            headers: Vec::new(),
        }
    }
    pub fn json(status: u16, v: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            chunks: vec![Bytes::from(v.to_string())],
            delay: Duration::ZERO,
            reset_after: None,
            head_delay: Duration::ZERO,
            stall: None,
            headers: Vec::new(),
        }
    }
}

#[derive(Default)]
pub struct Seen {
    pub requests: Vec<(String, http::HeaderMap, Bytes)>,
    /// The HTTP version of each request, in the same order.
    pub versions: Vec<http::Version>,
}

pub struct Mock {
    pub addr: SocketAddr,
    pub reply: Arc<Mutex<Reply>>,
    pub seen: Arc<Mutex<Seen>>,
    /// Streams whose client went away before the end.
    pub cancelled: Arc<AtomicUsize>,
    pub completed: Arc<AtomicUsize>,
    /// Connections accepted, and the most responses ever sending at once.
    pub connections: Arc<AtomicUsize>,
    pub most_at_once: Arc<AtomicUsize>,
}

/// One response sending, counted in `now` (and the peak in `most`) until dropped.
struct Sending(Arc<AtomicUsize>);

impl Sending {
    fn new(now: &Arc<AtomicUsize>, most: &AtomicUsize) -> Sending {
        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(n, Ordering::SeqCst);
        Sending(now.clone())
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Mock {
    /// Waits up to 5 s for the proxy to drop a stream (the client went away, or Verbatim
    /// ended the response); fails the test otherwise.
    pub async fn assert_cancelled(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.cancelled.load(Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the upstream stream was not cancelled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct ChannelBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

pub async fn start(reply: Reply) -> Mock {
    start_capped(reply, None).await
}

/// [`start`], with HTTP/2 connections capped at `h2_streams` concurrent streams each
/// (`SETTINGS_MAX_CONCURRENT_STREAMS`; hyper's default otherwise).
pub async fn start_capped(reply: Reply, h2_streams: Option<u32>) -> Mock {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reply = Arc::new(Mutex::new(reply));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let cancelled = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let most_at_once = Arc::new(AtomicUsize::new(0));
    let sending = Arc::new(AtomicUsize::new(0));
    let (r2, s2, c2, d2) = (
        reply.clone(),
        seen.clone(),
        cancelled.clone(),
        completed.clone(),
    );
    let (n2, m2) = (connections.clone(), most_at_once.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            n2.fetch_add(1, Ordering::SeqCst);
            let (r, s, c, d) = (r2.clone(), s2.clone(), c2.clone(), d2.clone());
            let (m, now) = (m2.clone(), sending.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (r, s, c, d) = (r.clone(), s.clone(), c.clone(), d.clone());
                    let (m, now) = (m.clone(), now.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        {
                            let mut seen = s.lock().unwrap();
                            seen.requests.push((
                                parts.uri.to_string(),
                                parts.headers.clone(),
                                body,
                            ));
                            seen.versions.push(parts.version);
                        }
                        let reply = r.lock().unwrap().clone();
                        let (tx, rx) = mpsc::channel(1);
                        let at_once = Sending::new(&now, &m);
                        tokio::spawn(async move {
                            let _at_once = at_once;
                            for (i, chunk) in reply.chunks.iter().enumerate() {
                                if reply.reset_after == Some(i) {
                                    let _ = tx.send(Err(std::io::Error::other("mock reset"))).await;
                                    return;
                                }
                                if !reply.delay.is_zero() {
                                    tokio::time::sleep(reply.delay).await;
                                }
                                if let Some((at, pause)) = reply.stall
                                    && at == i
                                {
                                    // Silent, but noticing a client (the proxy) that leaves.
                                    tokio::select! {
                                        () = tokio::time::sleep(pause) => {}
                                        () = tx.closed() => {
                                            c.fetch_add(1, Ordering::SeqCst);
                                            return;
                                        }
                                    }
                                }
                                if tx.send(Ok(chunk.clone())).await.is_err() {
                                    c.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                            }
                            d.fetch_add(1, Ordering::SeqCst);
                        });
                        if !reply.head_delay.is_zero() {
                            tokio::time::sleep(reply.head_delay).await;
                        }
                        let mut resp = Response::builder()
                            .status(StatusCode::from_u16(reply.status).unwrap())
                            .header("x-request-id", "req_mock_1");
                        // An empty content type: no header at all.
                        if !reply.content_type.is_empty() {
                            resp = resp.header("content-type", reply.content_type);
                        }
                        for (k, v) in &reply.headers {
                            resp = resp.header(*k, *v);
                        }
                        let resp = resp.body(ChannelBody(rx)).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Some(n) = h2_streams {
                    b.http2().max_concurrent_streams(n);
                }
                let _ = b.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Mock {
        addr,
        reply,
        seen,
        cancelled,
        completed,
        connections,
        most_at_once,
    }
}

/// An OpenAI chat completions stream carrying `text` in deltas of `piece` characters.
pub fn openai_stream(text: &str, piece: usize) -> Vec<u8> {
    let mut out = String::new();
    let head = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": "mock-model", "system_fingerprint": null,
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    };
    out.push_str(&format!(
        "data: {}\n\n",
        head(json!({"role": "assistant", "content": ""}), Value::Null)
    ));
    let chars: Vec<char> = text.chars().collect();
    for c in chars.chunks(piece.max(1)) {
        let s: String = c.iter().collect();
        out.push_str(&format!(
            "data: {}\n\n",
            head(json!({"content": s}), Value::Null)
        ));
    }
    out.push_str(&format!("data: {}\n\n", head(json!({}), json!("stop"))));
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// An Anthropic messages stream carrying `text` in deltas of `piece` characters.
pub fn anthropic_stream(text: &str, piece: usize) -> Vec<u8> {
    let mut out = String::new();
    let mut ev = |name: &str, v: Value| out.push_str(&format!("event: {name}\ndata: {v}\n\n"));
    ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant",
        "model": "mock-model", "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 1}}}),
    );
    ev(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    ev("ping", json!({"type": "ping"}));
    let chars: Vec<char> = text.chars().collect();
    for c in chars.chunks(piece.max(1)) {
        let s: String = c.iter().collect();
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": s}}),
        );
    }
    ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    );
    ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 42}}),
    );
    ev("message_stop", json!({"type": "message_stop"}));
    out.into_bytes()
}

pub fn openai_json(text: &str) -> Value {
    json!({"id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": "mock-model",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null},
                        "logprobs": null, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})
}

pub fn anthropic_json(text: &str) -> Value {
    json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": "mock-model",
           "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
           "usage": {"input_tokens": 10, "output_tokens": 42}})
}

/// An OpenAI Responses API stream carrying `text` in deltas of `piece` characters, with the
/// `*.done` events and `response.completed` that repeat the whole text.
pub fn responses_stream(text: &str, piece: usize) -> Vec<u8> {
    let mut out = String::new();
    let mut n = 0;
    let mut ev = |name: &str, mut v: Value| {
        v["sequence_number"] = json!(n);
        n += 1;
        out.push_str(&format!("event: {name}\ndata: {v}\n\n"));
    };
    let resp = |status: &str, output: Value| {
        json!({"id": "resp_mock", "object": "response", "created_at": 1_700_000_000,
        "status": status, "model": "mock-model", "output": output, "parallel_tool_calls": true, "tool_choice": "auto",
        "tools": [], "error": null, "incomplete_details": null, "instructions": null, "metadata": {}, "temperature": 1.0, "top_p": 1.0})
    };
    ev(
        "response.created",
        json!({"type": "response.created", "response": resp("in_progress", json!([]))}),
    );
    ev(
        "response.output_item.added",
        json!({"type": "response.output_item.added", "output_index": 0,
        "item": {"id": "msg_1", "type": "message", "status": "in_progress", "role": "assistant", "content": []}}),
    );
    ev(
        "response.content_part.added",
        json!({"type": "response.content_part.added", "item_id": "msg_1", "output_index": 0,
        "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
    );
    let chars: Vec<char> = text.chars().collect();
    for c in chars.chunks(piece.max(1)) {
        let s: String = c.iter().collect();
        ev(
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "item_id": "msg_1",
            "output_index": 0, "content_index": 0, "delta": s, "logprobs": []}),
        );
    }
    ev(
        "response.output_text.done",
        json!({"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0,
        "content_index": 0, "text": text, "logprobs": []}),
    );
    let part = json!({"type": "output_text", "text": text, "annotations": []});
    ev(
        "response.content_part.done",
        json!({"type": "response.content_part.done", "item_id": "msg_1", "output_index": 0,
        "content_index": 0, "part": part}),
    );
    let item = json!({"id": "msg_1", "type": "message", "status": "completed", "role": "assistant", "content": [part]});
    ev(
        "response.output_item.done",
        json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
    );
    ev(
        "response.completed",
        json!({"type": "response.completed", "response": resp("completed", json!([item]))}),
    );
    out.into_bytes()
}

/// A legacy completions stream.
pub fn completions_stream(text: &str, piece: usize) -> Vec<u8> {
    let mut out = String::new();
    let chars: Vec<char> = text.chars().collect();
    for c in chars.chunks(piece.max(1)) {
        let s: String = c.iter().collect();
        out.push_str(&format!("data: {}\n\n", json!({"id": "cmpl-mock", "object": "text_completion", "created": 1_700_000_000,
            "model": "mock-model", "choices": [{"index": 0, "text": s, "logprobs": null, "finish_reason": null}]})));
    }
    out.push_str(&format!("data: {}\n\n", json!({"id": "cmpl-mock", "object": "text_completion", "created": 1_700_000_000,
        "model": "mock-model", "choices": [{"index": 0, "text": "", "logprobs": null, "finish_reason": "stop"}]})));
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// A chat stream with two choices interleaved (n = 2) and a tool call on choice 1.
pub fn openai_two_choices(a: &str, b: &str, piece: usize) -> Vec<u8> {
    let mut out = String::new();
    let chunk = |i: usize, delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": "mock-model", "choices": [{"index": i, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        )
    };
    let (ca, cb): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let (pa, pb): (Vec<&[char]>, Vec<&[char]>) =
        (ca.chunks(piece).collect(), cb.chunks(piece).collect());
    out.push_str(&chunk(
        1,
        json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
        "function": {"name": "lookup", "arguments": ""}}]}),
        Value::Null,
    ));
    for i in 0..pa.len().max(pb.len()) {
        if let Some(p) = pa.get(i) {
            out.push_str(&chunk(
                0,
                json!({"content": p.iter().collect::<String>()}),
                Value::Null,
            ));
        }
        if let Some(p) = pb.get(i) {
            out.push_str(&chunk(1, json!({"tool_calls": [{"index": 0, "function": {"arguments": p.iter().collect::<String>()}}]}), Value::Null));
        }
    }
    out.push_str(&chunk(0, json!({}), json!("stop")));
    out.push_str(&chunk(1, json!({}), json!("tool_calls")));
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// An Anthropic stream with a thinking block (0), a text block (1) and a tool_use block (2)
/// whose input arrives as JSON fragments.
pub fn anthropic_blocks(thinking: &str, text: &str, tool_json: &str, piece: usize) -> Vec<u8> {
    let mut out = String::new();
    let mut ev = |name: &str, v: Value| out.push_str(&format!("event: {name}\ndata: {v}\n\n"));
    ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant",
        "model": "mock-model", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 1}}}),
    );
    let chunks = |s: &str| {
        s.chars()
            .collect::<Vec<_>>()
            .chunks(piece.max(1))
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
    };
    ev(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
    );
    for c in chunks(thinking) {
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": c}}),
        );
    }
    ev(
        "content_block_delta",
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}}),
    );
    ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    );
    ev(
        "content_block_start",
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
    );
    for c in chunks(text) {
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": c}}),
        );
    }
    ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 1}),
    );
    ev(
        "content_block_start",
        json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}}),
    );
    for c in chunks(tool_json) {
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": c}}),
        );
    }
    ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 2}),
    );
    ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 42}}),
    );
    ev("message_stop", json!({"type": "message_stop"}));
    out.into_bytes()
}

/// The GPL fixture's `total_owed` function (`corpora/fixtures/gpl-code/src/ledger.rs`) up to,
/// not including, its closing brace. It has no `#` or `'`, so read as a script or as Python
/// its units are those read as Rust.
pub fn ledger_total_owed_open() -> String {
    let file = std::fs::read_to_string("corpora/fixtures/gpl-code/src/ledger.rs").unwrap();
    let code = file
        .split_once("pub fn total_owed")
        .map(|(_, r)| format!("pub fn total_owed{}", r.split_once("\n}\n").unwrap().0))
        .unwrap();
    assert!(!code.contains('#') && !code.contains('\''));
    code
}
