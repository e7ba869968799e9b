//! The monitoring and log integrations, driven through the library against their test doubles
//! (fluentd and Mackerel cannot run here; `tests/doubles/` behaves as the real ones do) and a
//! local HTTP server for the `http` step.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::services::*;
use common::{run_step, step_context, step_kind, unique};

use lastcall::steps::{StepError, StepKind};
use lastcall::template::Context;
use serde_json::{json, Value};

const INSTANCE: &str = "i-0123456789abcdef0";

fn ctx() -> Context {
    step_context(&[
        ("instance_id", INSTANCE),
        ("hostname", "web-1"),
        ("local_ipv4", "10.0.0.5"),
        ("asg_name", "web"),
    ])
}

fn step(toml: &str) -> StepKind {
    step_kind(toml)
}

async fn run(kind: &StepKind, timeout: Duration) -> Result<String, StepError> {
    run_step(kind, &ctx(), timeout).await
}

// ---------------------------------------------------------------------------------------------
// fluentd

#[tokio::test]
async fn fluentd_flush_is_confirmed_by_the_buffer_directory() {
    let f = Fluentd::start(&["--chunks", "3", "--chunk-seconds", "0.2", "--workers", "2"]);
    assert_eq!(f.chunks(), 6);
    let kind = step(&f.toml(&format!("buffer_path = \"{}\"", f.buffer().display())));
    let started = Instant::now();
    let out = run(&kind, Duration::from_secs(10)).await.expect("flushed");
    assert!(out.contains("flushed its buffers"), "{out}");
    assert_eq!(f.chunks(), 0, "nothing left when the step says so");
    // Three chunks per worker, written one at a time: the step waited for them.
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn fluentd_flush_is_confirmed_by_monitor_agent() {
    let f = Fluentd::start_with(
        &[
            "--chunks",
            "2",
            "--chunk-seconds",
            "0.3",
            "--output-id",
            "out_s3",
            "--output-id",
            "out_es",
        ],
        true,
    );
    let url = format!("http://127.0.0.1:{}", f.monitor.expect("port"));
    let kind = step(&f.toml(&format!(
        "monitor_agent = \"{url}\"\noutput_ids = [\"out_s3\", \"out_es\"]"
    )));
    let out = run(&kind, Duration::from_secs(10)).await.expect("flushed");
    assert!(out.contains("flushed"), "{out}");
    assert_eq!(
        f.chunks(),
        0,
        "monitor_agent's total drops only after the last write"
    );
    // An output id that does not exist is named, not silently passed.
    let kind = step(&f.toml(&format!(
        "monitor_agent = \"{url}\"\noutput_ids = [\"out_nope\"]\ntimeout = \"1s\""
    )));
    let err = run(&kind, Duration::from_secs(1))
        .await
        .expect_err("unknown output");
    assert!(
        err.to_string()
            .contains("output out_nope: not reported by monitor_agent"),
        "{err}"
    );
}

#[tokio::test]
async fn fluentd_in_retry_state_times_out_naming_the_output() {
    let f = Fluentd::start_with(&["--retry", "--chunks", "2"], true);
    let url = format!("http://127.0.0.1:{}", f.monitor.expect("port"));
    let kind = step(&f.toml(&format!(
        "buffer_path = \"{}\"\nmonitor_agent = \"{url}\"",
        f.buffer().display()
    )));
    let err = run(&kind, Duration::from_secs(2))
        .await
        .expect_err("retry state ignores SIGUSR1");
    let msg = err.to_string();
    assert!(
        msg.contains("did not finish flushing before the timeout"),
        "{msg}"
    );
    assert!(
        msg.contains("output out_file") && msg.contains("in retry state"),
        "{msg}"
    );
    assert!(msg.contains("chunk(s) left"), "{msg}");
}

#[tokio::test]
async fn fluentd_timeout_says_what_is_left() {
    let f = Fluentd::start(&["--chunks", "20", "--chunk-seconds", "0.5"]);
    let kind = step(&f.toml(&format!("buffer_path = \"{}\"", f.buffer().display())));
    let err = run(&kind, Duration::from_millis(1500))
        .await
        .expect_err("too slow");
    assert!(err.to_string().contains("chunk(s) left"), "{err}");
}

#[tokio::test]
async fn fluentd_stale_pid_files_workers_and_strangers_are_refused() {
    let f = Fluentd::start(&["--chunks", "1"]);
    // A worker's pid instead of the supervisor's.
    let worker = std::fs::read_to_string(format!("/proc/{}/task/{}/children", f.pid(), f.pid()))
        .expect("children")
        .split_whitespace()
        .next()
        .expect("a worker")
        .to_string();
    let wfile = f.dir.path().join("worker.pid");
    std::fs::write(&wfile, &worker).expect("write");
    let kind = step(&format!(
        "kind = \"fluentd\"\npid_file = \"{}\"",
        wfile.display()
    ));
    let err = run(&kind, Duration::from_secs(2))
        .await
        .expect_err("worker");
    assert!(err.to_string().contains("names a fluentd worker"), "{err}");
    // An unrelated live process: SIGUSR1 would kill it.
    let mut stranger = Command::new("/bin/sleep").arg("30").spawn().expect("sleep");
    let sfile = f.dir.path().join("stranger.pid");
    std::fs::write(&sfile, stranger.id().to_string()).expect("write");
    let kind = step(&format!(
        "kind = \"fluentd\"\npid_file = \"{}\"",
        sfile.display()
    ));
    let err = run(&kind, Duration::from_secs(2))
        .await
        .expect_err("stranger");
    assert!(err.to_string().contains("is not fluentd"), "{err}");
    assert!(
        stranger.try_wait().expect("wait").is_none(),
        "the stranger was not signalled"
    );
    let _ = stranger.kill();
    let _ = stranger.wait();
    // fluentd stopped: its pid file stays behind.
    let pid = f.pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("term");
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(f.pid_file().exists());
    let kind = step(&f.toml(""));
    let err = run(&kind, Duration::from_secs(2)).await.expect_err("stale");
    assert!(err.to_string().contains("is not running"), "{err}");
}

#[tokio::test]
async fn fluentd_without_confirmation_says_so() {
    let f = Fluentd::start(&["--chunks", "1"]);
    let out = run(&step(&f.toml("")), Duration::from_secs(5))
        .await
        .expect("signal sent");
    assert!(out.contains("flush unconfirmed"), "{out}");
    // The flush itself is asynchronous: the worker logs it a moment later.
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(f.log()).expect("log");
        if log.contains("force flushing buffered events") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "SIGUSR1 did not reach the worker:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Mackerel

/// A key file (0600) and the TOML of a mackerel step using it.
fn mackerel_step(dir: &Path, key: &str, extra: &str) -> StepKind {
    let kf = dir.join("mackerel.key");
    std::fs::write(&kf, format!("{key}\n")).expect("key");
    std::os::unix::fs::chown(&kf, None, None).ok();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    step(&format!(
        "kind = \"mackerel\"\napi_key_file = \"{}\"\napi_base = \"{}\"\nhost_id_file = \"{}/id\"\n{extra}",
        kf.display(),
        mackerel().url,
        dir.display()
    ))
}

fn retired(hosts: &[Value], id: &str) -> bool {
    hosts
        .iter()
        .any(|h| h["id"] == id && h["isRetired"] == true)
}

#[tokio::test]
async fn mackerel_retires_by_id_file_or_custom_identifier_and_treats_gone_as_done() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = unique("key");
    mackerel_control("keys", json!({"key": key, "write": true})).await;
    let ci = format!("{}.ec2.amazonaws.com", unique("i"));
    // By custom identifier (no id file).
    let id = mackerel_control("hosts", json!({"name": "web-1", "customIdentifier": ci})).await
        ["id"]
        .as_str()
        .expect("id")
        .to_string();
    let kind = mackerel_step(dir.path(), &key, &format!("custom_identifier = \"{ci}\""));
    let out = run(&kind, Duration::from_secs(5)).await.expect("retired");
    assert!(
        out.contains(&format!("retired Mackerel host {id}")),
        "{out}"
    );
    assert!(retired(&mackerel_hosts().await, &id));
    // Again: already retired is success.
    let out = run(&kind, Duration::from_secs(5)).await.expect("already");
    assert!(out.contains("retired already"), "{out}");
    // By the agent's id file.
    let ci2 = format!("{INSTANCE}.ec2.amazonaws.com");
    let id2 = mackerel_control("hosts", json!({"name": "web-2", "customIdentifier": ci2})).await
        ["id"]
        .as_str()
        .expect("id")
        .to_string();
    std::fs::write(dir.path().join("id"), &id2).expect("id file");
    let kind = mackerel_step(dir.path(), &key, "");
    let out = run(&kind, Duration::from_secs(5)).await.expect("retired");
    assert!(
        out.contains(&format!("retired Mackerel host {id2}")),
        "{out}"
    );
    assert!(retired(&mackerel_hosts().await, &id2));
    // An id file from a baked image naming another instance's host: that host is left alone,
    // and this instance's own host is found by its custom identifier and retired.
    let other = mackerel_control(
        "hosts",
        json!({"name": "web-3", "customIdentifier": "i-0fffffffffffffff0.ec2.amazonaws.com"}),
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let ci3 = format!("{}.ec2.amazonaws.com", unique("i"));
    let mine = mackerel_control("hosts", json!({"name": "web-4", "customIdentifier": ci3})).await
        ["id"]
        .as_str()
        .expect("id")
        .to_string();
    std::fs::write(dir.path().join("id"), &other).expect("id file");
    let kind = mackerel_step(dir.path(), &key, &format!("custom_identifier = \"{ci3}\""));
    let out = run(&kind, Duration::from_secs(5)).await.expect("fell back");
    assert!(
        out.contains(&format!("retired Mackerel host {mine}")),
        "{out}"
    );
    assert!(!retired(&mackerel_hosts().await, &other));
    assert!(retired(&mackerel_hosts().await, &mine));
    // An id file naming a host Mackerel does not know (404): likewise.
    let ci4 = format!("{}.ec2.amazonaws.com", unique("i"));
    let mine = mackerel_control("hosts", json!({"name": "web-5", "customIdentifier": ci4})).await
        ["id"]
        .as_str()
        .expect("id")
        .to_string();
    std::fs::write(dir.path().join("id"), "3Unknown404").expect("id file");
    let kind = mackerel_step(dir.path(), &key, &format!("custom_identifier = \"{ci4}\""));
    let out = run(&kind, Duration::from_secs(5)).await.expect("fell back");
    assert!(
        out.contains(&format!("retired Mackerel host {mine}")),
        "{out}"
    );
    assert!(retired(&mackerel_hosts().await, &mine));
}

#[tokio::test]
async fn mackerel_retries_5xx_and_429_and_reports_auth_without_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = unique("key");
    mackerel_control("keys", json!({"key": key, "write": true})).await;
    let ci = format!("{}.ec2.amazonaws.com", unique("i"));
    let id = mackerel_control("hosts", json!({"name": "web", "customIdentifier": ci})).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    mackerel_control(
        "faults",
        json!({"path_prefix": format!("/api/v0/hosts/{id}/retire"), "status": 503, "count": 2}),
    )
    .await;
    mackerel_control(
        "faults",
        json!({"path_prefix": "/api/v0/hosts-by-custom-identifier/", "status": 429, "count": 1}),
    )
    .await;
    let kind = mackerel_step(dir.path(), &key, &format!("custom_identifier = \"{ci}\""));
    let out = run(&kind, Duration::from_secs(15))
        .await
        .expect("retried to success");
    assert!(out.contains("retired"), "{out}");
    // Faults that do not end before the timeout: a failure that says what happened.
    let ci = format!("{}.ec2.amazonaws.com", unique("i"));
    mackerel_control("hosts", json!({"name": "web", "customIdentifier": ci})).await;
    mackerel_control(
        "faults",
        json!({"path_prefix": "/api/v0/hosts-by-custom-identifier/", "status": 500, "count": 100}),
    )
    .await;
    let kind = mackerel_step(dir.path(), &key, &format!("custom_identifier = \"{ci}\""));
    let err = run(&kind, Duration::from_secs(2)).await.expect_err("down");
    assert!(
        err.to_string().contains("500") && err.to_string().contains("gave up"),
        "{err}"
    );
    reqwest::Client::new()
        .delete(format!("{}/faults", mackerel().control))
        .send()
        .await
        .expect("clear");
    // A wrong key: 401, named by where it comes from, never shown.
    let wrong = unique("wrong-key");
    let err = run(
        &mackerel_step(dir.path(), &wrong, &format!("custom_identifier = \"{ci}\"")),
        Duration::from_secs(5),
    )
    .await
    .expect_err("401");
    let msg = err.to_string();
    assert!(msg.contains("401") && msg.contains("mackerel.key"), "{msg}");
    assert!(!msg.contains(&wrong), "the key is never shown: {msg}");
    // A read-only key: 403.
    let ro = unique("ro-key");
    mackerel_control("keys", json!({"key": ro, "write": false})).await;
    let err = run(
        &mackerel_step(dir.path(), &ro, &format!("custom_identifier = \"{ci}\"")),
        Duration::from_secs(5),
    )
    .await
    .expect_err("403");
    assert!(
        err.to_string().contains("403") && err.to_string().contains("write permission"),
        "{err}"
    );
    let requests: Vec<Value> = reqwest::get(format!("{}/requests", mackerel().control))
        .await
        .expect("r")
        .json()
        .await
        .expect("json");
    assert!(
        requests.iter().all(|r| r["api_key_present"] == true),
        "every call sends X-Api-Key"
    );
}

// ---------------------------------------------------------------------------------------------
// http

/// A local HTTP server answering the statuses given, in order (the last one repeats), and
/// recording each request.
struct Server {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn server(statuses: Vec<u16>) -> Server {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let rec = requests.clone();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read headers, then the body by Content-Length.
            loop {
                let r = s.read(&mut chunk).await.unwrap_or(0);
                if r == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..r]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            rec.lock()
                .expect("lock")
                .push(String::from_utf8_lossy(&buf).to_string());
            let status = statuses[n.min(statuses.len() - 1)];
            n += 1;
            let resp =
                format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    Server { url, requests }
}

#[tokio::test]
async fn http_sends_placeholders_and_secret_headers_and_retries_5xx() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "tok-3f9a1c77e2";
    let sf = dir.path().join("token");
    std::fs::write(&sf, secret).expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sf, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let s = server(vec![503, 502, 204]).await;
    let kind = step(&format!(
        "kind = \"http\"\nmethod = \"POST\"\nurl = \"{}/hooks/{{asg_name}}\"\nheaders = {{ \"Content-Type\" = \"application/json\", \"Authorization\" = {{ file = \"{}\", prefix = \"Bearer \" }} }}\nbody = '{{{{\"text\": \"{{instance_id}} leaves\"}}}}'\nexpect_status = [204]",
        s.url,
        sf.display()
    ));
    let out = run(&kind, Duration::from_secs(10))
        .await
        .expect("204 after two 5xx");
    assert!(out.ends_with(": 204"), "{out}");
    let reqs = s.requests.lock().expect("lock").clone();
    assert_eq!(reqs.len(), 3);
    let last = &reqs[2];
    assert!(last.starts_with("POST /hooks/web HTTP/1.1"), "{last}");
    assert!(
        last.contains(&format!("authorization: Bearer {secret}")),
        "{last}"
    );
    assert!(
        last.ends_with(&format!("{{\"text\": \"{INSTANCE} leaves\"}}")),
        "{last}"
    );
    assert!(!out.contains(secret));
    // A 4xx is final; a status outside expect_status is a failure naming it.
    let s = server(vec![404]).await;
    let kind = step(&format!(
        "kind = \"http\"\nmethod = \"DELETE\"\nurl = \"{}/x\"",
        s.url
    ));
    let err = run(&kind, Duration::from_secs(10)).await.expect_err("404");
    assert!(err.to_string().contains("answered 404"), "{err}");
    assert_eq!(s.requests.lock().expect("lock").len(), 1, "not retried");
}

#[tokio::test]
async fn http_secret_urls_never_appear_in_errors() {
    let s = server(vec![500]).await;
    let secret_url = format!("{}/services/T000/B000/sekrit-webhook-token", s.url);
    std::env::set_var("LASTCALL_TEST_WEBHOOK", &secret_url);
    let kind = step("kind = \"http\"\nurl_env = \"LASTCALL_TEST_WEBHOOK\"\nbody = \"hi\"");
    let err = run(&kind, Duration::from_secs(2)).await.expect_err("500");
    let msg = err.to_string();
    assert!(
        msg.contains("<URL from environment variable LASTCALL_TEST_WEBHOOK>")
            && msg.contains("500"),
        "{msg}"
    );
    assert!(!msg.contains("sekrit"), "{msg}");
    // A connection error (nothing listening) is described without the URL either.
    std::env::set_var(
        "LASTCALL_TEST_WEBHOOK",
        format!("http://127.0.0.1:{}/sekrit", free_port()),
    );
    let err = run(&kind, Duration::from_secs(1))
        .await
        .expect_err("refused");
    assert!(!err.to_string().contains("sekrit"), "{err}");
}

#[tokio::test]
async fn fluentd_with_two_workers_is_watched_on_each_workers_monitor_agent() {
    let f = Fluentd::start_with(
        &["--workers", "2", "--chunks", "2", "--chunk-seconds", "0.2"],
        true,
    );
    let p = f.monitor.expect("port");
    let kind = step(&f.toml(&format!(
        "monitor_agent = [\"http://127.0.0.1:{p}\", \"http://127.0.0.1:{}\"]",
        p + 1
    )));
    let out = run(&kind, Duration::from_secs(10)).await.expect("flushed");
    assert!(out.contains("flushed"), "{out}");
    assert_eq!(f.chunks(), 0, "both workers' buffers are empty");
}
