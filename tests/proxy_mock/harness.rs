//! The test harness around the real proxy: start it in process in front of a mock provider,
//! talk to it over loopback, read SSE and the audit trail.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use verbatim::index::Index;
use verbatim::proxy::config::Config;
use verbatim::proxy::server::Server;
use verbatim::proxy::sse::SseDecoder;

use super::Mock;

pub const FIXTURE: &str = "tests/fixtures/index-v5";
/// 49 words of `corpora/fixtures/acme-books/chapter-01.md`: over the 32-word block threshold.
pub const COPIED: &str = "Marguerite Oduya kept the lighthouse on Carrow Point for eleven winters before she opened the ledger that her predecessor had hidden beneath the third stair. It was bound in green oilcloth and smelled of paraffin and salt, and every page was ruled into columns that nobody had asked for";
/// 21 words of chapter 2: over t = 12, under 32 — annotated.
pub const SHORT: &str = "Tobias Renwick had rowed the crossing to Carrow Point since he was fourteen, and in all that time he had never";
pub const INTRO: &str = "Here is a short story about a lighthouse, as you asked. ";
pub const OUTRO: &str = " That is all I can write today, I am afraid.";
pub const UNRELATED: &str = "The weather in the valley was mild all week, and the farmers planted their barley early because the soil had dried out sooner than anyone expected this spring.";

pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub stop: tokio::sync::oneshot::Sender<()>,
}

pub async fn proxy(mock: &Mock, tweak: impl FnOnce(&mut Config)) -> Proxy {
    proxy_with(mock, Vec::new(), tweak).await
}

/// The proxy with the fixture index and `more` indexes after it.
pub async fn proxy_with(
    mock: &Mock,
    more: Vec<Arc<Index>>,
    tweak: impl FnOnce(&mut Config),
) -> Proxy {
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream_openai: format!("http://{}", mock.addr).parse().unwrap(),
        upstream_anthropic: format!("http://{}", mock.addr).parse().unwrap(),
        ..Config::default()
    };
    tweak(&mut cfg);
    let mut indexes = vec![Arc::new(Index::open(FIXTURE).unwrap())];
    indexes.extend(more);
    let warm = cfg.warm_indexes;
    let server = Server::bind(cfg, indexes).await.unwrap();
    let addr = server.local_addr().unwrap();
    let admin_addr = server.admin_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    if warm {
        // As an orchestrator would: traffic once the indexes are in the page cache.
        wait_for("ready: the indexes read into the page cache", async || {
            admin(addr, "GET", "/readyz").await.0 == 200
        })
        .await;
    }
    Proxy {
        addr,
        admin: admin_addr,
        stop: tx,
    }
}

/// Writes policy `src` into `dir` and returns its path.
pub fn write_policy(dir: &std::path::Path, src: &str) -> std::path::PathBuf {
    let path = dir.join("policy.toml");
    std::fs::write(&path, src).unwrap();
    path
}

pub type C = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> C {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, http::HeaderMap, Bytes) {
    post_raw(
        addr,
        path,
        &[("authorization", "Bearer sk-test-secret")],
        body.to_string(),
    )
    .await
}

/// POSTs `body` as it is (valid JSON or not) with these headers besides the content type;
/// fails the test if no whole answer comes within 20 s.
pub async fn post_raw(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: String,
) -> (u16, http::HeaderMap, Bytes) {
    let mut req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    let fut = async {
        let resp = client().request(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, headers, body)
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("request hung")
}

pub fn chat_req(stream: bool, user: &str) -> Value {
    json!({"model": "mock-model", "stream": stream, "messages": [{"role": "user", "content": user}]})
}

pub fn msg_req(stream: bool, user: &str) -> Value {
    json!({"model": "mock-model", "max_tokens": 100, "stream": stream, "messages": [{"role": "user", "content": user}]})
}

pub fn events(body: &[u8]) -> Vec<(Option<String>, Value)> {
    let mut d = SseDecoder::new(1 << 20);
    let mut ev = Vec::new();
    d.push(body, &mut ev).unwrap();
    assert_eq!(d.finish(), None, "response ends mid-event");
    ev.into_iter()
        .filter_map(|e| {
            let data = e.data()?;
            let event = e.event().map(str::to_string);
            if data == "[DONE]" {
                return Some((event, json!("[DONE]")));
            }
            Some((
                event,
                serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_string())),
            ))
        })
        .collect()
}

pub fn openai_text(evs: &[(Option<String>, Value)]) -> String {
    evs.iter()
        .filter_map(|(_, v)| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect()
}

pub fn anthropic_text(evs: &[(Option<String>, Value)]) -> String {
    evs.iter()
        .filter_map(|(_, v)| v.pointer("/delta/text").and_then(Value::as_str))
        .collect()
}

/// Waits until the audit log holds `n` `stream_end` records; returns every record.
pub async fn audit_records(path: &std::path::Path, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let recs: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if recs.iter().filter(|r| r["type"] == "stream_end").count() >= n {
            return recs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "audit log has {} records: {text}",
            recs.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits up to 10 s for `cond`; fails the test after.
pub async fn wait_for(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn admin(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    (
        status,
        String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap(),
    )
}
