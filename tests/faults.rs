//! Faults at the edges, against the real binary: secrets never leak into logs, audit records,
//! metrics or error bodies whatever fails, and request smuggling attempts are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod proxy_mock;

use std::io::{BufRead, Read, Write};
use std::time::Duration;

use proxy_mock::harness::*;
use proxy_mock::*;

const SECRET: &str = "sk-live-DO-NOT-LEAK-4242";

struct Bin {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Bin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real binary at debug log level, with an audit trail and an admin listener.
fn spawn(dir: &std::path::Path, upstream: &str) -> Bin {
    let cfg = dir.join("verbatim.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nindexes = [\"{}\"]\n[upstream]\nopenai = \"{upstream}\"\nanthropic = \"{upstream}\"\n[audit]\npath = \"{}\"\n[limits]\nmax_request_bytes = 4096\n",
            std::fs::canonicalize(FIXTURE).unwrap().display(),
            dir.join("audit.jsonl").display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_verbatim"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .env("VERBATIM_CACHE_DIR", dir.join("cache"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let l2 = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("verbatim proxy listening") {
                let get = |k: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(k))
                        .map(str::to_string)
                };
                let _ = tx.send((get("listen="), get("admin=")));
            }
            let mut l = l2.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let (listen, admin) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("did not start");
    Bin {
        child,
        addr: listen.unwrap().parse().unwrap(),
        admin: admin.unwrap().parse().unwrap(),
        log,
    }
}

async fn send(addr: std::net::SocketAddr, path: &str, body: String) -> (u16, String) {
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {SECRET}"))
        .header("x-api-key", SECRET)
        .header("cookie", format!("session={SECRET}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), client().request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    use http_body_util::BodyExt;
    let b = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&b).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_reaches_logs_audit_metrics_or_errors_whatever_fails() {
    let dir = tempfile::tempdir().unwrap();
    let copied = format!("{INTRO}{COPIED}{OUTRO}");
    let mut r = Reply::sse(&openai_stream(&copied, 5), 64);
    r.reset_after = None;
    let mock = start(r).await;
    let bin = spawn(dir.path(), &format!("http://{}", mock.addr));
    let mut bodies = Vec::new();
    // Blocked stream, annotated stream, upstream error, upstream reset, oversized request,
    // malformed JSON, a passthrough route.
    bodies.push(
        send(
            bin.addr,
            "/v1/chat/completions",
            chat_req(true, "go").to_string(),
        )
        .await,
    );
    *mock.reply.lock().unwrap() =
        Reply::sse(&openai_stream(&format!("{INTRO}{SHORT}{OUTRO}"), 5), 64);
    bodies.push(
        send(
            bin.addr,
            "/v1/chat/completions",
            chat_req(true, "go").to_string(),
        )
        .await,
    );
    *mock.reply.lock().unwrap() =
        Reply::json(401, &serde_json::json!({"error": {"message": "bad key"}}));
    bodies.push(send(bin.addr, "/v1/messages", msg_req(false, "go").to_string()).await);
    let mut r = Reply::sse(&openai_stream(UNRELATED, 3), 40);
    r.reset_after = Some(3);
    *mock.reply.lock().unwrap() = r;
    bodies.push(
        send(
            bin.addr,
            "/v1/chat/completions",
            chat_req(true, "go").to_string(),
        )
        .await,
    );
    bodies.push(send(bin.addr, "/v1/chat/completions", "x".repeat(10_000)).await);
    bodies.push(send(bin.addr, "/v1/chat/completions", "{not json".into()).await);
    bodies.push(send(bin.addr, "/v1/files", "{}".into()).await);
    assert_eq!(bodies[4].0, 413, "{:?}", bodies[4]);
    // An upstream that is not there at all.
    let dir2 = tempfile::tempdir().unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let bin2 = spawn(dir2.path(), &format!("http://{dead}"));
    let down = send(
        bin2.addr,
        "/v1/chat/completions",
        chat_req(true, "go").to_string(),
    )
    .await;
    assert_eq!(down.0, 502, "{down:?}");
    bodies.push(down);
    let (_, metrics) = admin(bin.admin, "GET", "/metrics").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(audit.lines().count() >= 4, "audit trail written: {audit}");
    let logs = format!("{}{}", bin.log.lock().unwrap(), bin2.log.lock().unwrap());
    assert!(logs.contains("finding"), "debug logs captured: {logs}");
    for (what, text) in [
        ("logs", logs.as_str()),
        ("audit", audit.as_str()),
        ("metrics", metrics.as_str()),
    ] {
        assert!(!text.contains(SECRET), "the credential reached the {what}");
    }
    for (status, body) in &bodies {
        assert!(
            !body.contains(SECRET),
            "the credential reached a response ({status}): {body}"
        );
    }
    // It did reach the upstream, where it belongs.
    let seen = mock.seen.lock().unwrap();
    assert!(
        seen.requests
            .iter()
            .all(|r| r.1["authorization"] == format!("Bearer {SECRET}").as_str())
    );
}

/// A raw HTTP/1.1 exchange on a fresh connection: everything that comes back until the
/// server closes the connection or is silent for 2 s.
fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status(response: &str) -> u16 {
    response
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_attempts_do_not_reach_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start(Reply::json(200, &serde_json::json!({"ok": true}))).await;
    let bin = spawn(dir.path(), &format!("http://{}", mock.addr));
    let a = bin.addr;
    // Content-Length and Transfer-Encoding together, with a second request hidden after the
    // chunked body (CL.TE). hyper frames by Transfer-Encoding alone and closes the connection
    // after answering (RFC 9112 §6.3), and Verbatim re-frames what it forwards: the hidden
    // request is never read, let alone forwarded.
    let both = raw(
        a,
        "POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    // Two different Content-Lengths, and an unknown Transfer-Encoding: refused.
    let two = raw(
        a,
        "POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}",
    );
    let obf = raw(
        a,
        "POST /v1/files HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    );
    assert!((400..500).contains(&status(&two)), "two CLs: {two:?}");
    assert!(
        (400..500).contains(&status(&obf)) || obf.is_empty(),
        "bad TE: {obf:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen: Vec<String> = mock
        .seen
        .lock()
        .unwrap()
        .requests
        .iter()
        .map(|r| r.0.clone())
        .collect();
    assert_eq!(
        seen,
        ["/v1/files"],
        "only the framed request reaches the upstream"
    );
    assert_eq!(both.matches("HTTP/1.1 ").count(), 1, "{both:?}");
    assert!(
        both.to_ascii_lowercase().contains("connection: close"),
        "{both:?}"
    );
}
