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
    spawn_with(dir, upstream, "")
}

/// [`spawn`] with more configuration tables appended.
fn spawn_with(dir: &std::path::Path, upstream: &str, extra: &str) -> Bin {
    let cfg = dir.join("verbatim.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nindexes = [\"{}\"]\n[upstream]\nopenai = \"{upstream}\"\nanthropic = \"{upstream}\"\n[audit]\npath = \"{}\"\n[limits]\nmax_request_bytes = 4096\n{extra}",
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

/// A streamed chat request carrying the secret in every credential header.
async fn send_chat(addr: std::net::SocketAddr) -> (u16, String) {
    send(
        addr,
        "/v1/chat/completions",
        chat_req(true, "go").to_string(),
    )
    .await
}

/// A request carrying the secret in every credential header.
async fn send(addr: std::net::SocketAddr, path: &str, body: String) -> (u16, String) {
    let bearer = format!("Bearer {SECRET}");
    let cookie = format!("session={SECRET}");
    let headers = [
        ("authorization", bearer.as_str()),
        ("x-api-key", SECRET),
        ("api-key", SECRET),
        ("cookie", cookie.as_str()),
    ];
    let (status, _, b) = post_raw(addr, path, &headers, body).await;
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
    bodies.push(send_chat(bin.addr).await);
    *mock.reply.lock().unwrap() =
        Reply::sse(&openai_stream(&format!("{INTRO}{SHORT}{OUTRO}"), 5), 64);
    bodies.push(send_chat(bin.addr).await);
    *mock.reply.lock().unwrap() =
        Reply::json(401, &serde_json::json!({"error": {"message": "bad key"}}));
    bodies.push(send(bin.addr, "/v1/messages", msg_req(false, "go").to_string()).await);
    let mut r = Reply::sse(&openai_stream(UNRELATED, 3), 40);
    r.reset_after = Some(3);
    *mock.reply.lock().unwrap() = r;
    bodies.push(send_chat(bin.addr).await);
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
    let down = send_chat(bin2.addr).await;
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

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    l[6..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn a_slow_client_holds_the_upstream_back_and_memory_stays_bounded() {
    // An upstream that writes a 36 MB stream as fast as its socket takes it, counting what
    // the socket accepted; a client that reads the response head and then nothing for 3 s.
    // Backpressure must reach the upstream: what it could write is bounded by the socket
    // buffers on both hops plus one frame in the proxy, and the proxy's memory does not grow
    // with the stream. Then the client reads everything: no event lost, the end intact.
    const EVENTS: usize = 32 * 1024;
    let pad = "x".repeat(1000);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up = listener.local_addr().unwrap();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w2 = written.clone();
    let total = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t2 = total.clone();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        // The request: head, then Content-Length bytes.
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).unwrap();
            req.extend_from_slice(&buf[..n]);
            if let Some(p) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&req[..p]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                if req.len() >= p + 4 + len {
                    break;
                }
            }
        }
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n").unwrap();
        let mut all = 0;
        for i in 0..=EVENTS {
            let ev = if i < EVENTS {
                format!(
                    "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}},\"finish_reason\":null}}],\"pad\":\"{pad}\"}}\n\n"
                )
            } else {
                "data: [DONE]\n\n".to_string()
            };
            let chunk = format!("{:x}\r\n{ev}\r\n", ev.len());
            all += chunk.len();
            t2.store(all + 5, std::sync::atomic::Ordering::SeqCst);
            if s.write_all(chunk.as_bytes()).is_err() {
                return;
            }
            w2.store(all, std::sync::atomic::Ordering::SeqCst);
        }
        let _ = s.write_all(b"0\r\n\r\n");
        w2.fetch_add(5, std::sync::atomic::Ordering::SeqCst);
    });
    let dir = tempfile::tempdir().unwrap();
    let bin = spawn_with(dir.path(), &format!("http://{up}"), "");
    let pid = bin.child.id();
    let before = rss(pid);
    let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut c = std::net::TcpStream::connect(bin.addr).unwrap();
    write!(
        c,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut head = [0u8; 64];
    c.read_exact(&mut head).unwrap();
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    std::thread::sleep(Duration::from_secs(3));
    let stalled_at = written.load(std::sync::atomic::Ordering::SeqCst);
    let stalled_rss = rss(pid);
    // A proxy that buffered the stream would let the upstream write all of it; with
    // backpressure it writes what the socket buffers of both hops hold (autotuned by the
    // kernel; ~15 MB seen here), the rest waits.
    let full = EVENTS * 1100;
    assert!(
        stalled_at < full * 3 / 4,
        "the upstream wrote {stalled_at} of ~{full} bytes to a client that reads nothing: no backpressure"
    );
    assert!(
        stalled_rss < before + (32 << 20),
        "proxy memory grew from {before} to {stalled_rss} bytes while the client did not read"
    );
    // Now read it all.
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut rest = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                rest.extend_from_slice(&buf[..n]);
                if rest.ends_with(b"0\r\n\r\n") {
                    break;
                }
            }
            Err(e) => panic!("reading the rest: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&rest);
    let events = text.matches("\"content\":\"w").count();
    assert_eq!(events, EVENTS, "every event reaches the slow client");
    assert!(text.contains(&format!("\"content\":\"w{} \"", EVENTS - 1)));
    assert!(text.contains("data: [DONE]"));
    assert_eq!(
        written.load(std::sync::atomic::Ordering::SeqCst),
        total.load(std::sync::atomic::Ordering::SeqCst)
    );
    eprintln!(
        "upstream bytes written while the client stalled: {stalled_at} of {}; proxy RSS {before} -> {stalled_rss}",
        total.load(std::sync::atomic::Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_accepts_times_out_at_connect_with_504() {
    // A listener whose accept queue is full: the kernel drops further SYNs, so a connect hangs
    // (as to a host that has gone away) until the connect timeout ends it.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(1).unwrap();
    let up = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    loop {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(up),
        )
        .await
        {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("filling the accept queue: {e}"),
            Err(_) => break, // the queue is full: connects now hang
        }
        assert!(fillers.len() < 64, "the accept queue never filled");
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = spawn_with(
        dir.path(),
        &format!("http://{up}"),
        "[timeouts]\nconnect_ms = 400\n",
    );
    let t = std::time::Instant::now();
    let (status, body) = send_chat(bin.addr).await;
    let took = t.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("upstream_connect_timeout"), "{body}");
    assert!(body.contains("400 ms"), "{body}");
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
    assert!(!body.contains(SECRET));
    drop(listener);
}
