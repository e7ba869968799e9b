//! The message corpus (`tests/corpus/`): every documented shape (`ok-*`, `test-*`) and hostile
//! bodies (`bad-*`: truncated, wrong types, near the 256 KiB SQS limit, deep nesting, shell
//! metacharacters and path separators in ids, newlines in names, unknown transitions, duplicated
//! keys, non-UTF-8), run through the parser and through the daemon.

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::*;
use lastcall::autoscaling::HookNames;
use lastcall::event::{self, Notification};
use lastcall::source::sqs::{route, Me, Route};

const LONG: Duration = Duration::from_secs(60);
/// The instance the `ok-*` bodies are for.
const OWNER: &str = "i-0194708ef7e24dcc7";

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/corpus")
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    v.sort();
    assert!(v.len() >= 40, "the corpus is there");
    v
}

#[test]
fn every_body_parses_to_what_its_name_says() {
    let now = humantime::parse_rfc3339("2026-01-01T00:01:00Z").expect("time");
    for (name, bytes) in corpus() {
        // SQS bodies are Unicode; bytes that are not UTF-8 never reach the parser as such.
        let body = match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => {
                assert!(name.starts_with("bad-"), "{name} is not UTF-8");
                String::from_utf8_lossy(e.as_bytes()).to_string()
            }
        };
        let parsed = std::panic::catch_unwind(|| event::parse(&body))
            .unwrap_or_else(|_| panic!("{name}: the parser panicked"));
        let hooks = HookNames::default();
        let me = Me {
            instance_id: OWNER,
            hooks: &hooks,
            launch: true,
        };
        let routed = route(&body, None, now, me, Duration::from_secs(48 * 3600));
        match name.split('-').next() {
            Some("ok") => {
                assert!(
                    matches!(parsed, Ok(Notification::Lifecycle(_))),
                    "{name}: {parsed:?}"
                );
                assert!(matches!(routed, Route::Mine(_)), "{name}: {routed:?}");
            }
            Some("other") => {
                assert!(
                    matches!(parsed, Ok(Notification::Other { .. })),
                    "{name}: {parsed:?}"
                );
                assert!(matches!(routed, Route::Other { .. }), "{name}: {routed:?}");
            }
            Some("test") => {
                assert!(
                    matches!(parsed, Ok(Notification::Test { .. })),
                    "{name}: {parsed:?}"
                );
                assert_eq!(routed, Route::Test, "{name}");
            }
            _ => {
                let err = parsed.expect_err(&name);
                assert!(!err.to_string().is_empty());
                // The reason never echoes a hostile value back into a log line.
                for hostile in ["rm -rf", "$(reboot)", "/etc/passwd", "\n"] {
                    assert!(!err.to_string().contains(hostile), "{name}: {err}");
                }
                assert!(
                    matches!(routed, Route::Unparseable(_)),
                    "{name}: {routed:?}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_survives_the_corpus_and_still_handles_its_own_termination() {
    let aws = aws().await;
    let g = group(&aws, "corpus", GroupSpec::default()).await;
    let me = g.instances[0].clone();
    // The corpus's valid shapes are another instance's messages, so this InService instance
    // steps aside after each round of them; 1 s instead of 30 s lets it get through the corpus
    // within the test's time.
    let cfg = with_sqs(
        &config(
            "",
            "[[step]]\nkind = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo ran >> {dir}/ran\"]\n",
        ),
        "step_aside = \"1s\"",
    );
    let mut n = Node::new(&me, &g.queue_url, &cfg).await;
    // Every hostile body that SQS can carry (it only carries Unicode), plus the valid shapes,
    // which are another instance's messages here.
    let mut bad = Vec::new();
    let mut foreign = Vec::new();
    let mut other = Vec::new();
    let mut test = Vec::new();
    for (name, bytes) in corpus() {
        let Ok(body) = String::from_utf8(bytes) else {
            continue;
        };
        if body.trim().is_empty() {
            continue; // SQS refuses an empty body.
        }
        let body = body.replace(
            "2026-01-01T00:00:00",
            &humantime::format_rfc3339_seconds(SystemTime::now()).to_string()[..19],
        );
        let id = send(&aws, &g.queue_url, &body).await;
        if name.starts_with("bad-") {
            bad.push((name, id));
        } else if name.starts_with("ok-") {
            foreign.push((name, id));
        } else if name.starts_with("other-") {
            other.push((name, id));
        } else if name.starts_with("test-") {
            test.push((name, id));
        }
    }
    n.start();
    for (name, id) in bad.iter().chain(&foreign).chain(&other).chain(&test) {
        n.wait_log(&format!("message_id={id}"), LONG).await;
        let _ = name;
    }
    // Bad bodies are left for the redrive policy, each named once in the log (no hot loop).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = n.log();
    for (name, id) in &bad {
        let lines: Vec<_> = log.lines().filter(|l| l.contains(id.as_str())).collect();
        assert_eq!(lines.len(), 1, "{name}: {lines:?}");
        assert!(
            lines[0].contains("leaving it for the queue's redrive policy"),
            "{name}: {}",
            lines[0]
        );
    }
    // AWS notifications that no lifecycle action follows (even this instance's) are deleted, and
    // so are test notifications in every wrapping, whatever they name.
    let said = [
        (&other, "no lifecycle action follows; deleting it"),
        (&test, "TEST_NOTIFICATION received; deleting it"),
    ];
    for (bodies, expected) in said {
        for (name, id) in bodies {
            let line = log
                .lines()
                .find(|l| l.contains(id.as_str()))
                .unwrap_or_default();
            assert!(line.contains(expected), "{name}: {line}");
        }
    }
    // Decided from the emulator's record of deletions, not from what is left in the queue.
    let gone = deleted(&queue_name(&g.queue_url)).await;
    for (name, id) in other.iter().chain(&test) {
        assert!(gone.contains_key(id), "{name} was not deleted");
    }
    for (name, id) in bad.iter().chain(&foreign) {
        assert!(!gone.contains_key(id), "{name} was deleted");
    }
    assert!(other.len() >= 12 && test.len() >= 6, "{other:?} {test:?}");
    assert!(
        lines(&n.path("ran")).is_empty(),
        "no step ran for any of them"
    );
    // It stepped aside (InService), at info when new messages sent it aside and at debug when
    // only the same ones came round again: a dead instance's message must not fill the log.
    let aside = |level: &str| {
        log.lines()
            .filter(|l| l.contains(level) && l.contains("stepping out of the queue's way"))
            .count()
    };
    assert!(aside(" INFO ") >= 1, "{log}");
    assert!(aside(" INFO ") <= foreign.len(), "{log}");
    assert!(aside(" DEBUG ") >= 1, "repeats at debug: {log}");
    assert!(
        n.child
            .as_mut()
            .expect("running")
            .try_wait()
            .expect("wait")
            .is_none(),
        "still running"
    );
    // Nothing was deleted: every bad body and every foreign message is still in the queue.
    let (visible, in_flight) = queue_counts(&aws, &g.queue_url).await;
    assert_eq!(visible + in_flight, (bad.len() + foreign.len()) as u64);
    // And the daemon is not wedged: its own termination is handled as usual.
    terminate(&aws, &me).await;
    wait_terminated(&aws, &me, LONG).await;
    assert_eq!(lines(&n.path("ran")), ["ran"]);
}
