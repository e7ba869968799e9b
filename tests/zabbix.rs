//! The `zabbix` step against a real Zabbix API (Debian's zabbix-frontend-php on a private
//! PostgreSQL, started by `tests/services/zabbix.sh`). The version is 6.0 unless
//! `LASTCALL_ZABBIX_VERSION=7.0` (scripts/test.sh runs both).

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::services::*;

use lastcall::config::Config;
use lastcall::steps::{StepEnv, StepError, StepKind};
use lastcall::template::Context;
use serde_json::json;

fn step(toml: &str) -> StepKind {
    let text = format!(
        "[imds]\n[[step]]\nkind = \"zabbix\"\nurl = \"{}\"\n{toml}",
        zabbix().url
    );
    let loaded = Config::from_str(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
    loaded.config.steps.into_iter().next().expect("a step").kind
}

async fn run(kind: &StepKind, hostname: &str) -> Result<String, StepError> {
    let mut c = Context::default();
    c.values.insert("hostname", hostname.to_string());
    c.values
        .insert("instance_id", "i-0123456789abcdef0".to_string());
    let env = StepEnv {
        name: "zabbix",
        ctx: &c,
        resumed: false,
        deadline: tokio::time::Instant::now() + Duration::from_secs(20),
    };
    kind.run(&env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_deletes_by_technical_name_and_absent_is_success() {
    let z = zabbix();
    let (h, _, _) = zabbix_host(z).await;
    // The default lookup is the technical name {hostname}, as zabbix-agent registers it.
    let kind = step(&format!("token_file = \"{}\"", z.token_file.display()));
    let out = run(&kind, &h).await.expect("deleted");
    assert!(out.contains(&format!("deleted Zabbix host {h}")), "{out}");
    assert!(zabbix_get(z, &h).await.is_empty());
    let out = run(&kind, &h).await.expect("absent is success");
    assert!(out.contains("no Zabbix host with host"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_auth_deletes_by_visible_name() {
    let z = zabbix();
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = secret_file(dir.path(), "pw", "zabbix\n");
    let (h, name, _) = zabbix_host(z).await;
    let kind = step(&format!(
        "username = \"Admin\"\npassword_file = \"{}\"\nvisible_name = \"{name}\"",
        pw.display()
    ));
    let out = run(&kind, "unused").await.expect("deleted");
    assert!(out.contains(&format!("deleted Zabbix host {h}")), "{out}");
    assert!(zabbix_get(z, &h).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_by_ip_and_disable() {
    let z = zabbix();
    let (h, _, ip) = zabbix_host(z).await;
    let kind = step(&format!(
        "token_file = \"{}\"\nip = \"{ip}\"\naction = \"disable\"",
        z.token_file.display()
    ));
    let out = run(&kind, "unused").await.expect("disabled");
    assert!(out.contains(&format!("disabled Zabbix host {h}")), "{out}");
    let hosts = zabbix_get(z, &h).await;
    assert_eq!(hosts[0]["status"], "1", "disabled, not deleted: {hosts:?}");
    // Two hosts on one address: lastcall refuses to guess.
    let (h2, _, _) = zabbix_host(z).await;
    let id2 = zabbix_get(z, &h2).await[0]["hostid"]
        .as_str()
        .expect("id")
        .to_string();
    let iface = zabbix_rpc(
        z,
        "hostinterface.get",
        json!({"output": ["interfaceid"], "hostids": [id2]}),
    )
    .await;
    let iid = iface[0]["interfaceid"].as_str().expect("iface").to_string();
    zabbix_rpc(
        z,
        "hostinterface.update",
        json!({"interfaceid": iid, "ip": ip}),
    )
    .await;
    let kind = step(&format!(
        "token_file = \"{}\"\nip = \"{ip}\"",
        z.token_file.display()
    ));
    let err = run(&kind, "unused").await.expect_err("ambiguous");
    assert!(err.to_string().contains("refusing to guess"), "{err}");
    assert_eq!(zabbix_get(z, &h).await.len(), 1);
    assert_eq!(zabbix_get(z, &h2).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_clearly_once_and_never_show_the_secret() {
    let z = zabbix();
    let dir = tempfile::tempdir().expect("tempdir");
    let (h, _, _) = zabbix_host(z).await;
    // A throw-away user: Zabbix blocks an account after five failed logins.
    let user = format!(
        "lastcall-bad-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    zabbix_rpc(
        z,
        "user.create",
        json!({ "username": user, "passwd": "Correct-horse-42!", "roleid": "1", "usrgrps": [{"usrgrpid": "8"}] }),
    )
    .await;
    let wrong = "wrong-password-7f3e91";
    let pw = secret_file(dir.path(), "pw", wrong);
    let kind = step(&format!(
        "username = \"{user}\"\npassword_file = \"{}\"\nhost = \"{h}\"",
        pw.display()
    ));
    let started = Instant::now();
    let err = run(&kind, "unused").await.expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("Zabbix login as {user} failed, not retrying")),
        "{msg}"
    );
    assert!(!msg.contains(wrong), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not retried: {:?}",
        started.elapsed()
    );
    // A wrong token.
    let tf = secret_file(dir.path(), "token", &"0".repeat(64));
    let kind = step(&format!(
        "token_file = \"{}\"\nhost = \"{h}\"",
        tf.display()
    ));
    let err = run(&kind, "unused").await.expect_err("refused");
    assert!(err.to_string().contains("refused the credentials"), "{err}");
    assert!(!err.to_string().contains(&"0".repeat(64)));
    assert_eq!(zabbix_get(z, &h).await.len(), 1, "nothing deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_is_read_only() {
    let z = zabbix();
    let (h, _, _) = zabbix_host(z).await;
    let kind = step(&format!(
        "token_file = \"{}\"\nhost = \"{h}\"",
        z.token_file.display()
    ));
    let StepKind::Zabbix(zs) = &kind else {
        panic!("zabbix")
    };
    let mut c = Context::default();
    c.values.insert("hostname", h.clone());
    let env = StepEnv {
        name: "check",
        ctx: &c,
        resumed: false,
        deadline: tokio::time::Instant::now() + Duration::from_secs(20),
    };
    let out = zs.check(&env).await.expect("check");
    assert!(
        out.contains(&format!("Zabbix {}.{}", z.version.0, z.version.1))
            && out.contains("credentials accepted"),
        "{out}"
    );
    assert_eq!(zabbix_get(z, &h).await.len(), 1, "check deleted nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_the_user_may_read_but_not_change_is_a_failure_not_gone_already() {
    // Zabbix answers "No permissions to referred object or it does not exist!" both for a host
    // that is gone and for one the API user may only read (a role with Read, not Read-write, on
    // the host's group). Before: "is gone already", the step ok, the host left alerting.
    let z = zabbix();
    let dir = tempfile::tempdir().expect("tempdir");
    let (h, _, _) = zabbix_host(z).await;
    let n = N.fetch_add(1, Ordering::SeqCst);
    let ug = format!("lastcall-readonly-{}-{n}", std::process::id());
    // Host-group permissions: `rights` until 6.0, `hostgroup_rights` from 6.2 on.
    let rights = json!([{"permission": 2, "id": z.group}]);
    let params = if z.version < (6, 2) {
        json!({"name": ug, "rights": rights})
    } else {
        json!({"name": ug, "hostgroup_rights": rights})
    };
    let r = zabbix_rpc(z, "usergroup.create", params).await;
    let ugid = r["usrgrpids"][0].as_str().expect("user group").to_string();
    let user = format!("lastcall-ro-{}-{n}", std::process::id());
    zabbix_rpc(
        z,
        "user.create",
        // "Admin role" (id 2): may call host.delete, on the hosts its groups may change.
        json!({ "username": user, "passwd": "Correct-horse-42!", "roleid": "2", "usrgrps": [{"usrgrpid": ugid}] }),
    )
    .await;
    let pw = secret_file(dir.path(), "pw", "Correct-horse-42!");
    let kind = step(&format!(
        "username = \"{user}\"\npassword_file = \"{}\"\nhost = \"{h}\"",
        pw.display()
    ));
    let err = run(&kind, "unused").await.expect_err("a failure");
    assert!(
        err.to_string().contains("can read it but not change it"),
        "{err}"
    );
    assert_eq!(zabbix_get(z, &h).await.len(), 1, "the host is still there");
}
