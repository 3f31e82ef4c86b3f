//! The audit trail under stress: durable blocks, size rotation, a sink that cannot be written
//! (fail-open and fail-closed), the tenant header, and a SIGKILL of the real binary under load
//! that may tear only the last line (cut off at the next start) and must lose no record the
//! client has seen acted on.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod proxy_mock;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use proxy_mock::harness::*;
use proxy_mock::*;
use serde_json::Value;
use verbatim::audit::OnFailure;

fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends in a torn line",
        path.display()
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn or bad line {l:?}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_block_is_on_disk_before_the_client_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let mut reply = Reply::sse(&openai_stream(&text, 3), 32);
    reply.delay = Duration::from_millis(2);
    let mock = start(reply).await;
    let p = proxy(&mock, |c| {
        c.audit_log = Some(log.clone());
        c.audit.durable = true;
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let req = http::Request::post(format!("http://{}/v1/chat/completions", p.addr))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat_req(true, "go").to_string())))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let id = resp.headers()["x-verbatim-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut body = resp.into_body();
    let mut seen = Vec::new();
    let mut checked = false;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("stream hung")
    {
        let Ok(data) = frame.unwrap().into_data() else {
            continue;
        };
        seen.extend_from_slice(&data);
        if !checked && String::from_utf8_lossy(&data).contains("content_filter") {
            // The block has reached us: its record must already be in the file.
            let recs = lines(&log);
            assert!(
                recs.iter().any(|r| r["type"] == "decision"
                    && r["data"]["action"] == "block"
                    && r["data"]["request_id"] == id.as_str()),
                "block sent before its audit record was written: {recs:?}"
            );
            checked = true;
        }
    }
    assert!(checked, "the stream was not blocked");
    let (_, m) = admin(p.admin.unwrap(), "GET", "/metrics").await;
    assert!(
        m.contains("verbatim_audit_durable_wait_seconds_count 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_starts_new_files_between_records_and_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let text = format!("{INTRO}{SHORT}{OUTRO}");
    let mock = start(Reply::sse(&openai_stream(&text, 5), 64)).await;
    let p = proxy(&mock, |c| {
        c.audit_log = Some(log.clone());
        c.audit.rotate_bytes = Some(4096);
        c.audit.keep = 100;
    })
    .await;
    const N: usize = 24;
    for _ in 0..N {
        post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
        // One response's records at a time, so files are cut between requests too.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Wait for the last record.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let files = loop {
        let mut files = vec![log.clone()];
        for i in 1.. {
            let f = dir.path().join(format!("audit.jsonl.{i}"));
            if !f.exists() {
                break;
            }
            files.push(f);
        }
        let n: usize = files.iter().map(|f| lines(f).len()).sum();
        if n >= 2 * N {
            assert_eq!(n, 2 * N, "one decision and one end per response");
            break files;
        }
        assert!(tokio::time::Instant::now() < deadline, "{n} records");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(files.len() >= 4, "expected several files: {files:?}");
    for f in &files {
        let size = std::fs::metadata(f).unwrap().len();
        // A file passes the bound only when one record alone is larger (never here).
        assert!(size <= 4096, "{} has {size} bytes", f.display());
        assert!(size > 0);
    }
    // The oldest file holds the first records.
    let oldest = lines(files.last().unwrap());
    let newest = lines(&log);
    assert!(oldest[0]["data"]["time"].as_str() <= newest[0]["data"]["time"].as_str());
    // `verbatim report` reads the rotated set.
    let out = dir.path().join("report.html");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_verbatim"));
    cmd.arg("report").arg("--audit-log");
    cmd.args(&files);
    let status = cmd.arg("--out").arg(&out).output().unwrap();
    assert!(status.status.success());
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        stdout.contains(&format!("{N} decisions, {N} responses")),
        "{stdout}"
    );

    // With keep = 2, only two rotated files stay.
    let dir2 = tempfile::tempdir().unwrap();
    let log2 = dir2.path().join("audit.jsonl");
    let p2 = proxy(&mock, |c| {
        c.audit_log = Some(log2.clone());
        c.audit.rotate_bytes = Some(4096);
        c.audit.keep = 2;
    })
    .await;
    for _ in 0..N {
        post(p2.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(dir2.path().join("audit.jsonl.2").exists());
    assert!(!dir2.path().join("audit.jsonl.3").exists());
}

/// `/dev/full` accepts the open and refuses every write (ENOSPC): a disk that is full.
const FULL: &str = "/dev/full";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_keeps_serving_and_shows_the_failure() {
    let text = format!("{INTRO}{SHORT}{OUTRO}");
    let upstream = openai_stream(&text, 5);
    let mock = start(Reply::sse(&upstream, 64)).await;
    let p = proxy(&mock, |c| {
        c.audit_log = Some(FULL.into());
        c.audit.on_failure = OnFailure::FailOpen;
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let admin_addr = p.admin.unwrap();
    for _ in 0..3 {
        let (s, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
        assert_eq!(s, 200);
        assert!(openai_text(&events(&body)).contains("Tobias Renwick"));
    }
    wait_for("failure visible in metrics", async || {
        let (_, m) = admin(admin_addr, "GET", "/metrics").await;
        m.contains("verbatim_audit_records{state=\"failing\"} 1")
    })
    .await;
    let (_, m) = admin(admin_addr, "GET", "/metrics").await;
    assert!(
        !m.contains("verbatim_audit_records{state=\"failed\"} 0"),
        "{m}"
    );
    assert_eq!(admin(admin_addr, "GET", "/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_scanned_requests_while_the_trail_cannot_be_written() {
    let text = format!("{INTRO}{SHORT}{OUTRO}");
    let mock = start(Reply::sse(&openai_stream(&text, 5), 64)).await;
    let p = proxy(&mock, |c| {
        c.audit_log = Some(FULL.into());
        c.audit.on_failure = OnFailure::FailClosed;
    })
    .await;
    // The first response's decision is queued; its write fails.
    post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    wait_for("not ready", async || {
        admin(p.addr, "GET", "/readyz").await.0 == 503
    })
    .await;
    let (s, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    assert_eq!(s, 503);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "audit_unavailable");
    let (s, _, _) = post(p.addr, "/v1/messages", &msg_req(false, "go")).await;
    assert_eq!(s, 503, "non-streamed requests too");
    // What is not scanned is not audited, and still passes.
    *mock.reply.lock().unwrap() = Reply::json(200, &serde_json::json!({"data": []}));
    let (s, _, _) = post(p.addr, "/v1/files", &serde_json::json!({})).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_named_header_names_the_tenant_for_policy_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let policy = write_policy(
        dir.path(),
        "version = 1\n[[rules]]\nname = \"block-books\"\naction = \"block\"\nwhen = { source = [\"prose\"], min_units = 12 }\n[[exceptions]]\nname = \"payments-may-quote\"\naction = \"log\"\nwhen = { tenant = [\"team-payments\"] }\n",
    );
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let upstream = openai_stream(&text, 5);
    let mock = start(Reply::sse(&upstream, 64)).await;
    let p = proxy(&mock, |c| {
        c.audit_log = Some(log.clone());
        c.policy = Some(policy.clone());
        c.tenant_header = Some(http::HeaderName::from_static("x-team"));
    })
    .await;
    let send = |team: Option<&'static str>| {
        let mut req = http::Request::post(format!("http://{}/v1/chat/completions", p.addr))
            .header("content-type", "application/json")
            .header("authorization", "Bearer sk-test-secret");
        if let Some(t) = team {
            req = req.header("x-team", t);
        }
        let req = req
            .body(Full::new(Bytes::from(chat_req(true, "go").to_string())))
            .unwrap();
        async move {
            let resp = client().request(req).await.unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        }
    };
    assert_eq!(
        send(Some("team-payments")).await,
        Bytes::from(upstream),
        "the excepted tenant gets the text"
    );
    let blocked = send(Some("team-search")).await;
    assert!(String::from_utf8_lossy(&blocked).contains("content_filter"));
    let by_hash = send(None).await;
    assert!(String::from_utf8_lossy(&by_hash).contains("content_filter"));
    let recs = audit_records(&log, 3).await;
    let tenants: Vec<&str> = recs
        .iter()
        .filter(|r| r["type"] == "stream_end")
        .map(|r| r["data"]["tenant"].as_str().unwrap())
        .collect();
    let hash = &verbatim::audit::sha256_hex(b"sk-test-secret")[..16];
    assert_eq!(tenants, ["team-payments", "team-search", hash]);
}

/// The real binary, durable, under a load of blocked streams, killed with SIGKILL: every line
/// of the trail parses, and every block a client saw has its decision on disk.
/// Starts the real binary on `cfg`; returns it and the address it listens on, once it does.
fn serve(cfg: &Path) -> (std::process::Child, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_verbatim"))
        .arg("serve")
        .arg("--config")
        .arg(cfg)
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(i) = line.find("listen=") {
                let addr: String = line[i + 7..]
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the proxy did not start")
        .parse()
        .unwrap();
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_tears_at_most_the_last_line_and_loses_no_block_the_client_saw() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let cfg = dir.path().join("verbatim.toml");
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let mock = start(Reply::sse(&openai_stream(&text, 2), 64)).await;
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nindexes = [\"{}\"]\n[upstream]\nopenai = \"http://{}\"\n[audit]\npath = \"{}\"\ndurable = true\n",
            std::fs::canonicalize(FIXTURE).unwrap().display(),
            mock.addr,
            log.display()
        ),
    )
    .unwrap();
    let (mut child, addr) = serve(&cfg);

    // 16 clients in a loop; each notes the request id of every block it received.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (seen, stop) = (seen.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(chat_req(true, "go").to_string())))
                    .unwrap();
                // Requests fail once the proxy is killed: that ends the client.
                let Ok(Ok(resp)) =
                    tokio::time::timeout(Duration::from_secs(5), client().request(req)).await
                else {
                    break;
                };
                let id = resp.headers()["x-verbatim-request-id"]
                    .to_str()
                    .unwrap()
                    .to_string();
                let mut body = resp.into_body();
                while let Ok(Some(Ok(f))) =
                    tokio::time::timeout(Duration::from_secs(5), body.frame()).await
                {
                    if let Ok(d) = f.into_data()
                        && String::from_utf8_lossy(&d).contains("content_filter")
                    {
                        seen.lock().unwrap().push(id.clone());
                        break;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 10, "too little load: {} blocks", seen.len());
    // A batch is one `write`, but a write the kill interrupts may have reached the file in
    // part (the kernel stops copying between pages for a fatal signal): only the *last* line
    // may be torn, and the next start cuts it off (`audit.rs`). Restart on the same trail,
    // and read it then.
    let raw = std::fs::read_to_string(&log).unwrap();
    let whole = raw.rfind('\n').map_or(0, |i| i + 1);
    for l in raw[..whole].lines() {
        serde_json::from_str::<Value>(l)
            .unwrap_or_else(|e| panic!("torn line {l:?} before the last: {e}"));
    }
    let (mut again, _) = serve(&cfg);
    again.kill().unwrap();
    again.wait().unwrap();
    let recs = lines(&log);
    assert!(
        recs.len() >= raw[..whole].lines().count(),
        "the restart lost whole records"
    );
    let on_disk: std::collections::HashSet<&str> = recs
        .iter()
        .filter(|r| r["type"] == "decision" && r["data"]["action"] == "block")
        .map(|r| r["data"]["request_id"].as_str().unwrap())
        .collect();
    for id in &seen {
        assert!(
            on_disk.contains(id.as_str()),
            "block {id} was seen but not recorded"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_is_audited_with_its_rule_kind_and_category() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let mock = start(Reply::sse(&openai_stream(&text, 5), 64)).await;
    for action in ["allow", "log", "annotate", "redact", "block"] {
        let log = dir.path().join(format!("{action}.jsonl"));
        let policy = dir.path().join(format!("{action}.toml"));
        std::fs::write(
            &policy,
            format!(
                "version = 1\n[defaults]\naction = \"{action}\"\nreason = \"every-{action}\"\n"
            ),
        )
        .unwrap();
        let p = proxy(&mock, |c| {
            c.audit_log = Some(log.clone());
            c.policy = Some(policy.clone());
        })
        .await;
        post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
        let recs = audit_records(&log, 1).await;
        let d: Vec<&Value> = recs
            .iter()
            .filter(|r| r["type"] == "decision")
            .map(|r| &r["data"])
            .collect();
        assert_eq!(d.len(), 1, "{action}: {recs:?}");
        assert_eq!(d[0]["action"], action);
        assert_eq!(d[0]["reason"], format!("every-{action}"));
        assert_eq!(d[0]["rule"], "default");
        assert_eq!(d[0]["kind"], "exact");
        assert_eq!(d[0]["category"], "proprietary");
        let end = recs.iter().find(|r| r["type"] == "stream_end").unwrap();
        let want = if action == "block" {
            "blocked"
        } else {
            "completed"
        };
        assert_eq!(end["data"]["end"], want, "{action}");
        assert_eq!(end["data"]["decisions"], 1);
    }
}

/// Fail-closed, in flight: a stream whose first decision's record cannot be written is stopped
/// at its next decision, in the provider's format, and counted as `audit_failure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_stops_a_stream_at_its_next_decision_once_the_trail_fails() {
    let text = format!("{INTRO}{SHORT}. {UNRELATED} {UNRELATED} {SHORT}{OUTRO}");
    let mut reply = Reply::sse(&openai_stream(&text, 2), 48);
    reply.delay = Duration::from_millis(3);
    let mock = start(reply).await;
    let p = proxy(&mock, |c| {
        c.audit_log = Some(FULL.into());
        c.audit.on_failure = OnFailure::FailClosed;
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let (s, _, body) = post(p.addr, "/v1/chat/completions", &chat_req(true, "go")).await;
    assert_eq!(s, 200);
    let evs = events(&body);
    let last = evs
        .iter()
        .rev()
        .find(|(_, v)| v.get("verbatim").is_some())
        .expect("no stop event");
    assert_eq!(last.1["verbatim"]["reason"], "audit-unavailable");
    assert_eq!(last.1["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(evs.last().unwrap().1, "[DONE]");
    let got = openai_text(&evs);
    assert!(
        got.contains("Tobias") && !got.contains(OUTRO.trim()),
        "stopped between the decisions: {got}"
    );
    let (_, m) = admin(p.admin.unwrap(), "GET", "/metrics").await;
    assert!(
        m.contains(
            "verbatim_response_ends_total{route=\"chat-completions\",end=\"audit_failure\"} 1"
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_excerpts_are_recorded_only_when_the_policy_enables_them() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{INTRO}{COPIED}{OUTRO}");
    let mock = start(Reply::json(200, &openai_json(&text))).await;
    for (excerpts, want) in [("", None), ("excerpts = 24\n", Some(&COPIED[..24]))] {
        let log = dir.path().join(format!("a{}.jsonl", excerpts.len()));
        let policy = dir.path().join(format!("p{}.toml", excerpts.len()));
        std::fs::write(
            &policy,
            format!("version = 1\n{excerpts}[defaults]\naction = \"log\"\n"),
        )
        .unwrap();
        let p = proxy(&mock, |c| {
            c.audit_log = Some(log.clone());
            c.policy = Some(policy.clone());
        })
        .await;
        post(p.addr, "/v1/chat/completions", &chat_req(false, "go")).await;
        let recs = audit_records(&log, 1).await;
        let d = recs.iter().find(|r| r["type"] == "decision").unwrap();
        assert_eq!(d["data"]["excerpt"].as_str(), want, "{excerpts:?}");
    }
}
