//! Soak (slow; not in CI): `lastcall run` on a shared queue with 1,000 other instances' messages
//! circulating, for `LASTCALL_SOAK_MINUTES` (default 30). RSS and open file descriptors are
//! recorded every minute and must stay flat; the log must hold no error; at the end the daemon
//! must still handle its own termination.
//!
//! Run: `LASTCALL_SOAK_MINUTES=30 cargo test --release --test soak -- --ignored --nocapture`

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: a 30-minute soak, run by hand"]
async fn thirty_minutes_with_a_thousand_foreign_messages() {
    let minutes: u64 = std::env::var("LASTCALL_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(30);
    let aws = aws().await;
    let g = group(&aws, "soak", GroupSpec::default()).await;
    let me = g.instances[0].clone();
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    for i in 0..1000u32 {
        let body = json!({
            "LifecycleHookName": g.hook, "AccountId": ACCOUNT,
            "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
            "AutoScalingGroupName": g.name, "Service": "AWS Auto Scaling", "Time": now,
            "EC2InstanceId": format!("i-{:017x}", 0x0a00_0000_0000_0000u64 + u64::from(i)),
            "LifecycleActionToken": format!("{:08x}-0000-4000-8000-000000000000", i),
        });
        send(&aws, &g.queue_url, &body.to_string()).await;
    }
    let mut n = Node::new(
        &me,
        &g.queue_url,
        // No stepping aside: the soak is of the receive-and-release path, at full load.
        &with_sqs(
            &config("", "[[step]]\nkind = \"sleep\"\nduration = \"100ms\"\n"),
            "step_aside = \"0s\"",
        )
        .replace("wait_time = \"1s\"", "wait_time = \"20s\""),
    )
    .await;
    // Info level: a soak's log at debug would measure the log, not the daemon.
    let mut child = n.command_at(&["run"], false).spawn().expect("start");
    let pid = child.id();
    let start = Instant::now();
    let mut samples = Vec::new();
    for minute in 0..=minutes {
        let (r, f) = (rss_kib(pid), fds(pid));
        let (visible, in_flight) = queue_counts(&aws, &g.queue_url).await;
        println!("minute {minute:3}: RSS {:.1} MiB, {f} fds, queue {visible} visible + {in_flight} in flight", r as f64 / 1024.0);
        samples.push((r, f));
        if minute < minutes {
            tokio::time::sleep(
                Duration::from_secs(60)
                    .saturating_sub(start.elapsed() - Duration::from_secs(60 * minute)),
            )
            .await;
        }
    }
    // Still alive, still correct: its own termination is handled.
    terminate(&aws, &me).await;
    // With a thousand messages, moto takes about half a second per receive (real SQS: tens of
    // milliseconds), so finding this one among them can take a few minutes here.
    wait_terminated(&aws, &me, Duration::from_secs(600)).await;
    let _ = child.kill();
    let _ = child.wait();
    let log = n.log();
    assert!(!log.contains(" ERROR "), "no error in the log");
    assert!(log.contains("termination handled"));
    let released = log.matches("message for another instance").count();
    println!(
        "foreign messages first seen and released: {released}; log {} KiB",
        log.len() / 1024
    );
    // Flat: after the first minute's warm-up, RSS grows by less than 2 MiB and fds not at all
    // beyond a few pooled connections.
    let (r1, f1) = samples[1.min(samples.len() - 1)];
    let (rmax, fmax) = samples
        .iter()
        .skip(1)
        .fold((0, 0), |(a, b), (r, f)| (a.max(*r), b.max(*f)));
    assert!(rmax <= r1 + 2048, "RSS grew from {r1} KiB to {rmax} KiB");
    assert!(fmax <= f1 + 4, "fds grew from {f1} to {fmax}");
    let _ = n.child.take();
}
