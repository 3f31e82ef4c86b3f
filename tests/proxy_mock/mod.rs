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
        }
    }
    pub fn json(status: u16, v: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            chunks: vec![Bytes::from(v.to_string())],
            delay: Duration::ZERO,
            reset_after: None,
        }
    }
}

#[derive(Default)]
pub struct Seen {
    pub requests: Vec<(String, http::HeaderMap, Bytes)>,
}

pub struct Mock {
    pub addr: SocketAddr,
    pub reply: Arc<Mutex<Reply>>,
    pub seen: Arc<Mutex<Seen>>,
    /// Streams whose client went away before the end.
    pub cancelled: Arc<AtomicUsize>,
    pub completed: Arc<AtomicUsize>,
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reply = Arc::new(Mutex::new(reply));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let cancelled = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let (r2, s2, c2, d2) = (
        reply.clone(),
        seen.clone(),
        cancelled.clone(),
        completed.clone(),
    );
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (r, s, c, d) = (r2.clone(), s2.clone(), c2.clone(), d2.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (r, s, c, d) = (r.clone(), s.clone(), c.clone(), d.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        s.lock().unwrap().requests.push((
                            parts.uri.to_string(),
                            parts.headers.clone(),
                            body,
                        ));
                        let reply = r.lock().unwrap().clone();
                        let (tx, rx) = mpsc::channel(1);
                        tokio::spawn(async move {
                            for (i, chunk) in reply.chunks.iter().enumerate() {
                                if reply.reset_after == Some(i) {
                                    let _ = tx.send(Err(std::io::Error::other("mock reset"))).await;
                                    return;
                                }
                                if !reply.delay.is_zero() {
                                    tokio::time::sleep(reply.delay).await;
                                }
                                if tx.send(Ok(chunk.clone())).await.is_err() {
                                    c.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                            }
                            d.fetch_add(1, Ordering::SeqCst);
                        });
                        let resp = Response::builder()
                            .status(StatusCode::from_u16(reply.status).unwrap())
                            .header("content-type", reply.content_type)
                            .header("x-request-id", "req_mock_1")
                            .body(ChannelBody(rx))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Mock {
        addr,
        reply,
        seen,
        cancelled,
        completed,
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
