//! `lastcall sweep` end to end: the built binary on an instance, against the emulator's EC2
//! (running, stopped, terminated and unknown instances), the Mackerel double and a real Zabbix
//! API (6.0, and 7.0 when `LASTCALL_ZABBIX_VERSION=7.0`, as scripts/test.sh runs it).

mod common;

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use common::services::*;
use common::*;
use serde_json::{json, Value};

/// Launches an instance in the emulator's EC2; returns its id.
async fn launch(aws: &Aws) -> String {
    let out = aws
        .ec2
        .run_instances()
        .image_id(AMI)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .expect("run instances");
    out.instances()[0]
        .instance_id()
        .expect("instance id")
        .to_string()
}

/// An instance id EC2 has never heard of.
fn unknown_id(n: u32) -> String {
    format!(
        "i-0{:016x}",
        0xdead_0000_0000u64 + u64::from(n) + u64::from(std::process::id()) * 1000
    )
}

/// A Mackerel host of `service`/`role` for `instance` (custom identifier as mackerel-agent
/// registers an EC2 instance), created `age` ago, in availability zone `az`.
async fn mackerel_host(service: &str, instance: &str, age: Duration, az: &str) -> String {
    let created = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("time")
        .saturating_sub(age)
        .as_secs();
    mackerel_control(
        "hosts",
        json!({
            "name": format!("{service}-{instance}"),
            "customIdentifier": format!("{instance}.ec2.amazonaws.com"),
            "roles": {service: ["app"]},
            "createdAt": created,
            "meta": {"cloud": {"provider": "ec2", "metadata": {"placement/availability-zone": az, "instance-id": instance}}},
        }),
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_string()
}

fn retired(hosts: &[Value], id: &str) -> bool {
    hosts
        .iter()
        .find(|h| h["id"] == id)
        .unwrap_or_else(|| panic!("no host {id}"))["isRetired"]
        == true
}

/// A Zabbix host group of its own; returns (name, id).
async fn zabbix_group(z: &Zabbix) -> (String, String) {
    let name = unique("sweep");
    let r = zabbix_rpc(z, "hostgroup.create", json!({ "name": name })).await;
    (
        name,
        r["groupids"][0].as_str().expect("group id").to_string(),
    )
}

/// A Zabbix host named `host` in group `gid`, with `extra` properties.
async fn zabbix_host_named(z: &Zabbix, gid: &str, host: &str, extra: Value) {
    let mut p = json!({
        "host": host, "groups": [{"groupid": gid}],
        "interfaces": [{"type": 1, "main": 1, "useip": 1, "ip": "10.255.0.1", "dns": "", "port": "10050"}]
    });
    if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    zabbix_rpc(z, "host.create", p).await;
}

async fn zabbix_exists(z: &Zabbix, host: &str) -> bool {
    !zabbix_get(z, host).await.is_empty()
}

/// The config: the steps whose credentials the sweep uses, and `[sweep]`.
fn config(dir: &std::path::Path, key: &str, sweep: &str) -> String {
    let z = zabbix();
    let key_file = secret_file(dir, "mackerel.key", key);
    format!(
        "[imds]\nlifecycle = true\n[lifecycle]\nstate_dir = \"{{dir}}/state\"\n\
         [[step]]\nkind = \"zabbix\"\nurl = \"{}\"\ntoken_file = \"{}\"\n\
         [[step]]\nkind = \"mackerel\"\napi_base = \"{}\"\napi_key_file = \"{}\"\n\
         [sweep]\n{sweep}\n",
        z.url,
        z.token_file.display(),
        mackerel().url,
        key_file.display()
    )
}

/// Runs `lastcall sweep ARGS` on the node; returns (exit code, stdout, log).
fn sweep(n: &mut Node, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut all = vec!["sweep"];
    all.extend_from_slice(args);
    let mut c = n.command(&all);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.stdout(Stdio::piped()).output().expect("run sweep");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        n.log(),
    )
}

async fn mackerel_key() -> String {
    let key = unique("sweepkey");
    mackerel_control("keys", json!({"key": key, "write": true})).await;
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_removes_the_hosts_of_gone_instances_and_nothing_else() {
    let aws = aws().await;
    let z = zabbix();
    let me = launch(&aws).await;
    let running = launch(&aws).await;
    let stopped = launch(&aws).await;
    let terminated = launch(&aws).await;
    let terminated_young = launch(&aws).await;
    aws.ec2
        .stop_instances()
        .instance_ids(&stopped)
        .send()
        .await
        .expect("stop");
    aws.ec2
        .terminate_instances()
        .instance_ids(&terminated)
        .instance_ids(&terminated_young)
        .send()
        .await
        .expect("terminate");
    let (unknown_old, unknown_young) = (unknown_id(1), unknown_id(2));

    let service = unique("web");
    let hour = Duration::from_secs(3600);
    let old = 3 * hour;
    let young = Duration::from_secs(60);
    let m_running = mackerel_host(&service, &running, old, "us-east-1a").await;
    let m_stopped = mackerel_host(&service, &stopped, old, "us-east-1b").await;
    let m_terminated = mackerel_host(&service, &terminated, old, "us-east-1a").await;
    let m_terminated_young = mackerel_host(&service, &terminated_young, young, "us-east-1a").await;
    let m_unknown_old = mackerel_host(&service, &unknown_old, old, "us-east-1a").await;
    let m_unknown_young = mackerel_host(&service, &unknown_young, young, "us-east-1a").await;
    // Not this sweep's: another region's instance, a host that is no EC2 instance's, and the
    // same dead instance's host in another service.
    let m_other_region = mackerel_host(&service, &unknown_id(3), old, "eu-west-1a").await;
    let m_not_ec2 = mackerel_control(
        "hosts",
        json!({"name": "db-on-premises", "roles": {service.clone(): ["app"]}, "customIdentifier": "db.example.com"}),
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let other_service = mackerel_host(&unique("batch"), &terminated, old, "us-east-1a").await;

    let (group, gid) = zabbix_group(z).await;
    let (_, other_gid) = zabbix_group(z).await;
    let zh = |i: &str| format!("web-{i}");
    for i in [&running, &stopped, &terminated, &unknown_old] {
        zabbix_host_named(z, &gid, &zh(i), json!({})).await;
    }
    let no_id = unique("web-no-instance");
    zabbix_host_named(z, &gid, &no_id, json!({})).await;
    let other_group_host = format!("other-{terminated}");
    zabbix_host_named(z, &other_gid, &other_group_host, json!({})).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let key = mackerel_key().await;
    let cfg = config(
        dir.path(),
        &key,
        &format!("mackerel_service = \"{service}\"\nmackerel_role = \"app\"\nzabbix_group = \"{group}\"\n"),
    );
    let mut n = Node::new(&me, "", &cfg).await;

    // A dry run says what it would do and changes nothing.
    let (code, out, log) = sweep(&mut n, &["--dry-run"], &[]);
    assert_eq!(code, 0, "{out}\n{log}");
    assert!(
        out.contains(&format!("{terminated}: terminated -> would retire")),
        "{out}"
    );
    assert!(out.contains(&format!("web-{terminated} (host")), "{out}");
    assert!(out.contains("would delete"), "{out}");
    let hosts = mackerel_hosts().await;
    assert!(!retired(&hosts, &m_terminated) && !retired(&hosts, &m_unknown_old));
    assert!(zabbix_exists(z, &zh(&terminated)).await);

    let (code, out, log) = sweep(&mut n, &[], &[]);
    assert_eq!(code, 0, "{out}\n{log}");
    let hosts = mackerel_hosts().await;
    assert!(retired(&hosts, &m_terminated), "terminated: {out}");
    for (id, what) in [
        (&m_running, "running"),
        (&m_stopped, "stopped (a warm pool's instances are stopped)"),
        (&m_terminated_young, "younger than min_age"),
        (&m_unknown_young, "unknown but young"),
        // EC2 answers for its own region and account only: an instance it never showed alive
        // may be another region's or account's, alive (before: retired once min_age passed,
        // and so were other regions' hosts in a shared Zabbix group).
        (&m_unknown_old, "unknown to EC2 and never seen alive here"),
        (&m_other_region, "another region's"),
        (&m_not_ec2, "not an EC2 instance's"),
        (&other_service, "another service's"),
    ] {
        assert!(!retired(&hosts, id), "{what} must be kept: {out}");
    }
    assert!(!zabbix_exists(z, &zh(&terminated)).await, "{out}");
    for h in [
        zh(&running),
        zh(&stopped),
        no_id.clone(),
        other_group_host.clone(),
    ] {
        assert!(zabbix_exists(z, &h).await, "{h} must be kept: {out}");
    }
    assert!(zabbix_exists(z, &zh(&unknown_old)).await, "{out}");
    assert!(
        out.contains(&format!(
            "{unknown_old}: unknown to EC2 -> keep: unknown to EC2 and never seen alive here"
        )),
        "{out}"
    );
    assert!(
        out.contains("not this sweep's") && out.contains("eu-west-1a"),
        "{out}"
    );

    // Every instance of the group sweeps: the next run finds the work done and removes nothing.
    let (code, out, log) = sweep(&mut n, &[], &[]);
    assert_eq!(code, 0, "{out}\n{log}");
    assert!(
        !out.contains("retired Mackerel host") && !out.contains("deleted Zabbix host"),
        "{out}"
    );
    assert!(!out.contains(&key), "the key never shows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_fails_closed() {
    let aws = aws().await;
    let z = zabbix();
    let me = launch(&aws).await;
    let a = launch(&aws).await;
    let b = launch(&aws).await;
    aws.ec2
        .terminate_instances()
        .instance_ids(&a)
        .instance_ids(&b)
        .send()
        .await
        .expect("terminate");
    let service = unique("web");
    let old = Duration::from_secs(3 * 3600);
    let ma = mackerel_host(&service, &a, old, "us-east-1a").await;
    let mb = mackerel_host(&service, &b, old, "us-east-1a").await;
    let (group, gid) = zabbix_group(z).await;
    zabbix_host_named(z, &gid, &format!("web-{a}"), json!({})).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = mackerel_key().await;
    let sweep_conf = format!("mackerel_service = \"{service}\"\nzabbix_group = \"{group}\"\n");
    let untouched = |what: &'static str| {
        let (ma, mb, host) = (ma.clone(), mb.clone(), format!("web-{a}"));
        async move {
            let hosts = mackerel_hosts().await;
            assert!(!retired(&hosts, &ma) && !retired(&hosts, &mb), "{what}");
            assert!(zabbix_exists(zabbix(), &host).await, "{what}");
        }
    };

    // EC2 cannot be reached.
    let mut n = Node::new(&me, "", &config(dir.path(), &key, &sweep_conf)).await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (code, out, _) = sweep(&mut n, &[], &[("AWS_ENDPOINT_URL", closed.as_str())]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nothing removed"), "{out}");
    untouched("EC2 unreachable").await;

    // EC2 does not show the instance the sweep runs on alive (a wrong region or account would
    // look the same: every host's instance "gone").
    let ghost = launch(&aws).await;
    let mut n = Node::new(&ghost, "", &config(dir.path(), &key, &sweep_conf)).await;
    aws.ec2
        .terminate_instances()
        .instance_ids(&ghost)
        .send()
        .await
        .expect("terminate");
    let (code, out, _) = sweep(&mut n, &[], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not show this instance"), "{out}");
    untouched("this instance not alive in EC2").await;

    // More than max_delete would go.
    let mut n = Node::new(
        &me,
        "",
        &config(dir.path(), &key, &format!("{sweep_conf}max_delete = 2\n")),
    )
    .await;
    let (code, out, _) = sweep(&mut n, &[], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("more than max_delete = 2: removing none"),
        "{out}"
    );
    untouched("max_delete").await;

    // Mackerel refuses (here: a key it does not know): the Zabbix part still goes on, and the
    // exit says that something failed.
    let mut n = Node::new(&me, "", &config(dir.path(), "not-a-known-key", &sweep_conf)).await;
    let (code, out, _) = sweep(&mut n, &[], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no Mackerel host removed"), "{out}");
    assert!(!out.contains("not-a-known-key"), "{out}");
    assert!(!zabbix_exists(z, &format!("web-{a}")).await, "{out}");
    let hosts = mackerel_hosts().await;
    assert!(!retired(&hosts, &ma) && !retired(&hosts, &mb), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_zabbix_host_unknown_to_ec2_goes_once_min_age_has_passed_since_first_seen() {
    let aws = aws().await;
    let z = zabbix();
    let me = launch(&aws).await;
    let alive = launch(&aws).await;
    // Seen alive by an earlier sweep of this region and account, and forgotten by EC2 since
    // (EC2 forgets a terminated instance within about an hour).
    let gone = unknown_id(11);
    // Never seen alive: another region's or account's instance, perhaps alive.
    let stranger = unknown_id(12);
    let (group, gid) = zabbix_group(z).await;
    // The instance id in the inventory's asset tag, as many Zabbix set-ups keep it.
    for (host, instance) in [("a", &alive), ("g", &gone), ("s", &stranger)] {
        let name = format!("{host}-{}", unique("inv"));
        zabbix_host_named(
            z,
            &gid,
            &name,
            json!({"inventory_mode": 0, "inventory": {"asset_tag": instance}}),
        )
        .await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let key = mackerel_key().await;
    let cfg = config(
        dir.path(),
        &key,
        &format!("zabbix_group = \"{group}\"\nzabbix_instance_id = \"inventory:asset_tag\"\nmin_age = \"3s\"\n"),
    );
    let mut n = Node::new(&me, "", &cfg).await;
    seen_alive(&n, &[&gone]);
    let (code, out, log) = sweep(&mut n, &[], &[]);
    assert_eq!(code, 0, "{out}\n{log}");
    assert!(
        out.contains(&format!("{gone}: unknown to EC2 -> keep for now")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{alive}: running -> keep: instance is running")),
        "{out}"
    );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (code, out, log) = sweep(&mut n, &[], &[]);
    assert_eq!(code, 0, "{out}\n{log}");
    assert!(
        out.contains(&format!("{gone}: unknown to EC2 -> deleted Zabbix host")),
        "{out}"
    );
    let left: Vec<Value> = zabbix_rpc(
        z,
        "host.get",
        json!({"output": ["host"], "groupids": [gid]}),
    )
    .await
    .as_array()
    .cloned()
    .unwrap_or_default();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        out.contains(&format!(
            "{stranger}: unknown to EC2 -> keep: unknown to EC2 and never seen alive here"
        )),
        "{out}"
    );
}

/// Notes in the node's state directory that an earlier sweep saw `instances` alive.
fn seen_alive(n: &Node, instances: &[&str]) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let v: serde_json::Map<String, Value> = instances
        .iter()
        .map(|i| (i.to_string(), json!(now - 7200)))
        .collect();
    std::fs::create_dir_all(n.path("state")).expect("state dir");
    std::fs::write(
        n.path("state/sweep-alive.json"),
        Value::Object(v).to_string(),
    )
    .expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_off_instance_sweep_whose_ec2_knows_none_of_the_hosts_removes_none() {
    // `lastcall sweep --region` from a laptop with another account's credentials: every host's
    // instance is unknown to that EC2, and an off-instance sweep has no instance of its own to
    // notice it with. Before: every old host was retired on the first run (final in Mackerel),
    // up to max_delete. Here even a state directory that says they were alive does not help.
    let aws = aws().await;
    let me = launch(&aws).await;
    let service = unique("web");
    let old = Duration::from_secs(3 * 3600);
    let ids = [unknown_id(21), unknown_id(22), unknown_id(23)];
    let mut hosts = Vec::new();
    for i in &ids {
        hosts.push(mackerel_host(&service, i, old, "us-east-1a").await);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let key = mackerel_key().await;
    let cfg = config(
        dir.path(),
        &key,
        &format!("mackerel_service = \"{service}\"\n"),
    );
    let mut n = Node::new(&me, "", &cfg).await;
    seen_alive(&n, &[&ids[0], &ids[1], &ids[2]]);
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (code, out, log) = sweep(
        &mut n,
        &["--region", "us-east-1"],
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", closed.as_str())],
    );
    assert_eq!(code, 1, "{out}\n{log}");
    assert!(out.contains("(not from an instance)"), "{out}");
    assert!(out.contains("knows none of the 3 mackerel hosts"), "{out}");
    let all = mackerel_hosts().await;
    for h in &hosts {
        assert!(!retired(&all, h), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_on_a_secondary_ip_of_a_live_instance_is_kept() {
    // zabbix_instance_id = "ip" and an agent on a secondary private IP (a second address or a
    // second network interface: multi-ENI instances, EKS nodes). Before: DescribeInstances'
    // `private-ip-address` filter matches primary addresses only, so the live host looked dead
    // and was deleted once min_age had passed.
    let aws = aws().await;
    let z = zabbix();
    let me = launch(&aws).await;
    let alive = launch(&aws).await;
    let d = aws
        .ec2
        .describe_instances()
        .instance_ids(&alive)
        .send()
        .await
        .expect("describe");
    let eni = d.reservations()[0].instances()[0].network_interfaces()[0]
        .network_interface_id()
        .expect("eni")
        .to_string();
    aws.ec2
        .assign_private_ip_addresses()
        .network_interface_id(&eni)
        .secondary_private_ip_address_count(1)
        .send()
        .await
        .expect("a secondary IP");
    let d = aws
        .ec2
        .describe_instances()
        .instance_ids(&alive)
        .send()
        .await
        .expect("describe");
    let i = &d.reservations()[0].instances()[0];
    let primary = i.private_ip_address().expect("primary").to_string();
    let secondary = i.network_interfaces()[0]
        .private_ip_addresses()
        .iter()
        .filter_map(|a| a.private_ip_address())
        .find(|ip| *ip != primary)
        .expect("the secondary IP")
        .to_string();
    let (group, gid) = zabbix_group(z).await;
    let host = unique("web-secondary");
    zabbix_host_named(
        z,
        &gid,
        &host,
        json!({"interfaces": [{"type": 1, "main": 1, "useip": 1, "ip": secondary, "dns": "", "port": "10050"}]}),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = mackerel_key().await;
    let cfg = config(
        dir.path(),
        &key,
        &format!("zabbix_group = \"{group}\"\nzabbix_instance_id = \"ip\"\nmin_age = \"1s\"\n"),
    );
    let mut n = Node::new(&me, "", &cfg).await;
    // An earlier sweep saw the address alive: only EC2's answer now decides.
    seen_alive(&n, &[&format!("ip:{secondary}")]);
    for _ in 0..2 {
        let (code, out, log) = sweep(&mut n, &[], &[]);
        assert_eq!(code, 0, "{out}\n{log}");
        assert!(out.contains(&format!("{alive} running -> keep")), "{out}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    assert!(zabbix_exists(z, &host).await);
}

/// G20: every instance of a group runs the sweep timer, but only the group's InService instance
/// with the lowest id sweeps; the others say whose turn it is and exit 0 without a call to
/// Mackerel or Zabbix. Before, each of N instances swept every hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_groups_lowest_in_service_instance_sweeps() {
    let aws = aws().await;
    let g = group(&aws, "sweepturn", GroupSpec::of(2)).await;
    let mut ids = g.instances.clone();
    ids.sort();
    let (lowest, other) = (ids[0].clone(), ids[1].clone());
    let gone = launch(&aws).await;
    aws.ec2
        .terminate_instances()
        .instance_ids(&gone)
        .send()
        .await
        .expect("terminate");
    let service = unique("turn");
    let host = mackerel_host(&service, &gone, Duration::from_secs(3 * 3600), "us-east-1a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = mackerel_key().await;
    let cfg = config(
        dir.path(),
        &key,
        &format!("mackerel_service = \"{service}\"\n"),
    );

    let mut n = Node::new(&other, "", &cfg).await;
    let (code, out, log) = sweep(&mut n, &[], &[]);
    assert_eq!(code, 0, "{out}\n{log}");
    assert!(
        out.contains(&format!("not this instance's turn: {lowest}")),
        "{out}"
    );
    assert!(!retired(&mackerel_hosts().await, &host), "{out}");
    assert!(!log.contains("Mackerel"), "no Mackerel call: {log}");

    let mut n = Node::new(&lowest, "", &cfg).await;
    let (code, out, log) = sweep(&mut n, &[], &[]);
    assert_eq!(code, 0, "{out}\n{log}");
    assert!(log.contains("this instance sweeps for its group"), "{log}");
    assert!(retired(&mackerel_hosts().await, &host), "{out}");

    // The lowest leaves (Terminating is not InService): the next one's turn.
    terminate(&aws, &lowest).await;
    let mut n = Node::new(&other, "", &cfg).await;
    let (code, out, log) = sweep(&mut n, &["--dry-run"], &[]);
    assert_eq!(code, 0, "{out}\n{log}");
    assert!(!out.contains("not this instance's turn"), "{out}");
}
