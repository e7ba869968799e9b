//! The seed's scenario, end to end through the real pipeline: a scale-in on the emulator →
//! fluentd flushed and confirmed → the agents stopped → the host deleted in the real Zabbix →
//! retired in Mackerel → CONTINUE → the instance terminated. The order is asserted, and the logs
//! are searched for the secrets.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::services::*;
use common::*;
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

/// A stand-in for systemctl (no systemd runs here): records each call with a timestamp and
/// reports units inactive once stopped.
fn fake_systemctl(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("systemctl");
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\necho \"$(date +%s.%N) $*\" >> {dir}/systemctl.calls\ncase \"$1\" in is-active) echo inactive; exit 3;; esac\nexit 0\n",
            dir = dir.display()
        ),
    )
    .expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_flushes_stops_deregisters_retires_then_continues() {
    let aws = aws().await;
    let g = group(
        &aws,
        "seed",
        GroupSpec {
            size: 1,
            ..Default::default()
        },
    )
    .await;
    let me = g.instances[0].clone();
    let z = zabbix();
    let m = mackerel();

    // The instance as the services know it.
    zabbix_rpc(
        z,
        "host.create",
        json!({"host": me, "groups": [{"groupid": z.group}],
               "interfaces": [{"type": 1, "main": 1, "useip": 1, "ip": "127.0.0.1", "dns": "", "port": "10050"}]}),
    )
    .await;
    let mkey = format!("mkr-{}", unique("k"));
    mackerel_control("keys", json!({"key": mkey, "write": true})).await;
    let mid = mackerel_control(
        "hosts",
        json!({"name": me, "customIdentifier": format!("{me}.ec2.amazonaws.com")}),
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let fluentd = Fluentd::start(&["--chunks", "3", "--chunk-seconds", "0.2"]);

    let config = format!(
        r#"
[sqs]
queue_url = "{{queue}}"
wait_time = "1s"

[lifecycle]
state_dir = "{{dir}}/state"

[[step]]
kind = "fluentd"
pid_file = "{pid}"
buffer_path = "{buffer}"

[[step]]
kind = "systemd"
name = "stop-zabbix-agent"
unit = "zabbix-agent.service"
systemctl = "{{dir}}/systemctl"

[[step]]
kind = "systemd"
name = "stop-mackerel-agent"
unit = "mackerel-agent.service"
systemctl = "{{dir}}/systemctl"

[[step]]
kind = "zabbix"
url = "{zurl}"
token_file = "{{dir}}/zabbix.token"
host = "{{instance_id}}"

[[step]]
kind = "mackerel"
api_base = "{murl}"
api_key_env = "LASTCALL_TEST_MACKEREL_KEY"
host_id_file = "{{dir}}/no-agent-id"
"#,
        pid = fluentd.pid_file().display(),
        buffer = fluentd.buffer().display(),
        zurl = z.url,
        murl = m.url,
    );
    let mut n = Node::new(&me, &g.queue_url, &config).await;
    fake_systemctl(n.dir.path());
    secret_file(n.dir.path(), "zabbix.token", &z.token);
    let mut cmd = n.command(&["--log-format", "json", "-vv", "run"]);
    cmd.env("LASTCALL_TEST_MACKEREL_KEY", &mkey);
    n.child = Some(cmd.spawn().expect("start"));
    n.wait_log("polling the lifecycle queue", LONG).await;

    set_desired(&aws, &g.name, 0).await;
    wait_terminated(&aws, &me, LONG).await;
    // The instance is gone once the completion was accepted; the summary line comes just after.
    n.wait_log("termination handled", LONG).await;

    // Every step succeeded, in the configured order.
    let log = n.log();
    let started: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "step started")
        .filter_map(|v| v["step"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        started,
        [
            "fluentd",
            "stop-zabbix-agent",
            "stop-mackerel-agent",
            "zabbix",
            "mackerel"
        ],
        "{log}"
    );
    assert!(
        log.contains("\"steps_ok\":5") && log.contains("\"steps_failed\":0"),
        "{log}"
    );
    let acts = actions(&me).await;
    assert_eq!(
        (acts[0]["state"].as_str(), acts[0]["result"].as_str()),
        (Some("completed"), Some("CONTINUE"))
    );

    // What each step did, seen from the other side.
    assert_eq!(fluentd.chunks(), 0, "fluentd's buffers were flushed");
    let calls = lines(&n.path("systemctl.calls"));
    let verbs: Vec<String> = calls
        .iter()
        .filter_map(|l| l.split_once(' ').map(|(_, c)| c.to_string()))
        .filter(|c| c.starts_with("stop"))
        .collect();
    assert_eq!(
        verbs,
        [
            "stop -- zabbix-agent.service",
            "stop -- mackerel-agent.service"
        ]
    );
    let zh = zabbix_rpc(
        z,
        "host.get",
        json!({"output": ["hostid"], "filter": {"host": [me]}}),
    )
    .await;
    assert_eq!(zh, json!([]), "the Zabbix host is deleted");
    let hosts: Vec<serde_json::Value> = reqwest::get(format!("{}/hosts", m.control))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert!(
        hosts
            .iter()
            .any(|h| h["id"] == mid.as_str() && h["isRetired"] == true),
        "the Mackerel host is retired"
    );

    // The order, from the services' own records: the flush finished before the first agent
    // stopped, the agents before the Zabbix deletion, which came before the retirement.
    let step_done = |name: &str| -> f64 {
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["step"] == name && v["outcome"] == "ok")
            .and_then(|v| v["timestamp"].as_str().map(str::to_string))
            .and_then(|t| humantime::parse_rfc3339_weak(&t).ok())
            .map(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .expect("epoch")
                    .as_secs_f64()
            })
            .unwrap_or_else(|| panic!("no ok line for {name}"))
    };
    let first_stop: f64 = calls[0].split(' ').next().expect("ts").parse().expect("ts");
    assert!(
        step_done("fluentd") <= first_stop,
        "flush confirmed before the agents stop"
    );
    assert!(step_done("stop-mackerel-agent") <= step_done("zabbix"));
    assert!(step_done("zabbix") <= step_done("mackerel"));

    // No secret anywhere in the log.
    assert!(
        !log.contains(&z.token),
        "the Zabbix token leaked into the log"
    );
    assert!(!log.contains(&mkey), "the Mackerel key leaked into the log");
}
