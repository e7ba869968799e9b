//! The services the integration tests use besides the AWS emulator: a real Zabbix API
//! (`tests/services/zabbix.sh`), and the fluentd and Mackerel doubles (`tests/doubles/`).
//! Each is started once per test binary; tests use unique names.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{root, Ready};

// ---------------------------------------------------------------------------------------------
// fluentd double

pub struct Fluentd {
    pub dir: tempfile::TempDir,
    pub monitor: Option<u16>,
}

impl Fluentd {
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, false)
    }

    pub fn start_with(args: &[&str], monitor: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let workers = args
            .iter()
            .position(|a| *a == "--workers")
            .and_then(|i| args.get(i + 1))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(1);
        // Worker N listens on port + N, as fluentd's monitor_agent does: all must be free.
        let port = monitor.then(|| free_ports(workers));
        let mut cmd = Command::new(root().join("tests/doubles/fluentd"));
        cmd.arg("-d")
            .arg(dir.path().join("fluentd.pid"))
            .arg("--buffer-path")
            .arg(dir.path().join("buffer"))
            .arg("-o")
            .arg(dir.path().join("fluentd.log"))
            .args([
                "--exit-with",
                &std::process::id().to_string(),
                "--max-lifetime",
                "120",
            ])
            .args(args);
        if let Some(p) = port {
            cmd.args(["--monitor-port", &p.to_string()]);
        }
        let status = cmd.status().expect("start the fluentd double");
        assert!(status.success());
        let f = Self { dir, monitor: port };
        // The pid file appears a little after the launcher returns, and each worker needs a
        // moment before it handles SIGUSR1 (it logs when it does): until then SIGUSR1 kills it,
        // as with the real fluentd.
        let start = Instant::now();
        while std::fs::read_to_string(f.log())
            .unwrap_or_default()
            .matches("fluentd worker is now running")
            .count()
            < workers
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the fluentd double did not start; its log:\n{}",
                std::fs::read_to_string(f.log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        f
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.path().join("fluentd.pid")
    }
    pub fn buffer(&self) -> PathBuf {
        self.dir.path().join("buffer")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("fluentd.log")
    }
    pub fn pid(&self) -> i32 {
        std::fs::read_to_string(self.pid_file())
            .expect("pid")
            .trim()
            .parse()
            .expect("pid")
    }
    pub fn chunks(&self) -> usize {
        fn walk(p: &Path) -> usize {
            std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        usize::from(n.starts_with("buffer.") && n.ends_with(".log"))
                    }
                })
                .sum()
        }
        walk(&self.buffer())
    }
    pub fn toml(&self, extra: &str) -> String {
        format!(
            "kind = \"fluentd\"\npid_file = \"{}\"\n{extra}",
            self.pid_file().display()
        )
    }
}

impl Drop for Fluentd {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// The first of `n` consecutive ports that are free now.
pub fn free_ports(n: usize) -> u16 {
    for _ in 0..50 {
        let first = free_port();
        let rest_free = (1..n).all(|i| {
            u16::try_from(usize::from(first) + i)
                .is_ok_and(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        });
        if rest_free {
            return first;
        }
    }
    panic!("no {n} consecutive free ports");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

// ---------------------------------------------------------------------------------------------
// A double of its own (Nomad, the ECS agent): one process per test

/// A double from `tests/doubles/`, started for one test.
pub struct Double {
    pub url: String,
    pub control: String,
    _proc: Ready,
}

impl Double {
    /// Starts `tests/doubles/<script>` with `args` (and `--port 0`).
    pub fn start(script: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new("python3");
        cmd.arg(root().join("tests/doubles").join(script))
            .args(["--port", "0"])
            .args(args);
        let proc = Ready::start(cmd, script);
        Self {
            url: proc.field("url"),
            control: proc.field("control"),
            _proc: proc,
        }
    }

    /// `POST /_control/<path>` with `body`; the answer's JSON.
    pub async fn post(&self, path: &str, body: Value) -> Value {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let r = reqwest::Client::new()
            .post(format!("{}/{path}", self.control))
            .json(&body)
            .send()
            .await
            .expect("control");
        assert!(r.status().is_success(), "control {path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    /// `GET /_control/<path>`.
    pub async fn get(&self, path: &str) -> Value {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        reqwest::get(format!("{}/{path}", self.control))
            .await
            .expect("control")
            .json()
            .await
            .expect("json")
    }
}

// ---------------------------------------------------------------------------------------------
// Mackerel double

pub struct Mackerel {
    pub url: String,
    pub control: String,
    _proc: Ready,
}

pub fn mackerel() -> &'static Mackerel {
    static M: OnceLock<Mackerel> = OnceLock::new();
    M.get_or_init(|| {
        let mut cmd = Command::new("python3");
        cmd.arg(root().join("tests/doubles/fake_mackerel.py"))
            .args(["--port", "0"]);
        let proc = Ready::start(cmd, "the fake Mackerel");
        Mackerel {
            url: proc.field("url"),
            control: proc.field("control"),
            _proc: proc,
        }
    })
}

pub async fn mackerel_control(path: &str, body: Value) -> Value {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::new()
        .post(format!("{}/{path}", mackerel().control))
        .json(&body)
        .send()
        .await
        .expect("control")
        .json()
        .await
        .expect("json")
}

pub async fn mackerel_hosts() -> Vec<Value> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::get(format!("{}/hosts", mackerel().control))
        .await
        .expect("hosts")
        .json()
        .await
        .expect("json")
}

// ---------------------------------------------------------------------------------------------
// Zabbix

pub struct Zabbix {
    pub url: String,
    pub version: (u32, u32),
    pub token: String,
    pub token_file: PathBuf,
    pub group: String,
}

pub fn zabbix() -> &'static Zabbix {
    static Z: OnceLock<Zabbix> = OnceLock::new();
    Z.get_or_init(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let version = std::env::var("LASTCALL_ZABBIX_VERSION").unwrap_or_else(|_| "6.0".into());
        let out = Command::new(format!(
            "{}/tests/services/zabbix.sh",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(["start", "--version", &version])
        .output()
        .expect("run tests/services/zabbix.sh");
        assert!(
            out.status.success(),
            "tests/services/zabbix.sh start failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("its JSON line");
        let token_file = PathBuf::from(v["token_file"].as_str().expect("token_file"));
        let token = std::fs::read_to_string(&token_file)
            .expect("token")
            .trim()
            .to_string();
        let ver = v["version"].as_str().expect("version");
        let mut it = ver.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let version = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        let mut z = Zabbix {
            url: v["url"].as_str().expect("url").to_string(),
            version,
            token,
            token_file,
            group: String::new(),
        };
        let name = format!("lastcall-tests-{}", std::process::id());
        let r = block(zabbix_rpc(&z, "hostgroup.create", json!({ "name": name })));
        z.group = r["groupids"][0].as_str().expect("group id").to_string();
        z
    })
}

/// Runs a future to completion on a fresh runtime (for set-up inside `OnceLock`).
pub fn block<F>(f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt")
                .block_on(f)
        })
        .join()
        .expect("join")
    })
}

/// A JSON-RPC call as Admin (with the API token), for setting up and checking. Zabbix's id
/// allocation can fail under concurrent writes (`DBEXECUTE_ERROR`): such calls are tried again.
pub async fn zabbix_rpc(z: &Zabbix, method: &str, params: Value) -> Value {
    for _ in 0..10 {
        let v = zabbix_call(z, method, &params).await;
        match v.get("error") {
            Some(e) if e["data"] == "DBEXECUTE_ERROR" => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some(_) => panic!("{method}: {v}"),
            None => return v["result"].clone(),
        }
    }
    panic!("{method}: DBEXECUTE_ERROR ten times")
}

async fn zabbix_call(z: &Zabbix, method: &str, params: &Value) -> Value {
    let mut body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1});
    let mut req = reqwest::Client::new()
        .post(&z.url)
        .header("Content-Type", "application/json-rpc");
    if z.version >= (6, 4) {
        req = req.bearer_auth(&z.token);
    } else {
        body["auth"] = json!(z.token);
    }
    req.json(&body)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json")
}

pub static N: AtomicU32 = AtomicU32::new(0);

/// Creates a host with a unique technical name, visible name and IP; returns them.
pub async fn zabbix_host(z: &Zabbix) -> (String, String, String) {
    let n = N.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id();
    let host = format!("web-{pid}-{n}");
    let name = format!("Web server {pid} {n}");
    let ip = format!("10.{}.{}.{}", pid % 250, n % 250, 1 + (pid / 250) % 250);
    zabbix_rpc(
        z,
        "host.create",
        json!({
            "host": host, "name": name, "groups": [{"groupid": z.group}],
            "interfaces": [{"type": 1, "main": 1, "useip": 1, "ip": ip, "dns": "", "port": "10050"}]
        }),
    )
    .await;
    (host, name, ip)
}

pub async fn zabbix_get(z: &Zabbix, host: &str) -> Vec<Value> {
    zabbix_rpc(
        z,
        "host.get",
        json!({"output": ["hostid", "host", "status"], "filter": {"host": [host]}}),
    )
    .await
    .as_array()
    .cloned()
    .unwrap_or_default()
}

/// A secret file, mode 0600.
pub fn secret_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, value).expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

// ---------------------------------------------------------------------------------------------
// Fault-injecting proxy

/// A `tests/faults/proxy.py` in front of one upstream.
pub struct Proxy {
    pub url: String,
    pub control: String,
    _proc: Ready,
}

impl Proxy {
    /// Starts a proxy in front of `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> Self {
        let mut cmd = Command::new("python3");
        cmd.arg(root().join("tests/faults/proxy.py"))
            .args(["--upstream", upstream, "--port", "0"]);
        let proc = Ready::start(cmd, "the fault proxy");
        Self {
            url: proc.field("url"),
            control: proc.field("control"),
            _proc: proc,
        }
    }

    /// Adds a fault rule (see tests/faults/README.md).
    pub async fn rule(&self, rule: Value) {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let r = reqwest::Client::new()
            .post(format!("{}/rules", self.control))
            .json(&rule)
            .send()
            .await
            .expect("rule");
        assert!(r.status().is_success(), "rule refused: {rule}");
    }

    /// Every request seen, with its operation and whether a fault answered it.
    pub async fn log(&self) -> Vec<Value> {
        reqwest::get(format!("{}/log", self.control))
            .await
            .expect("log")
            .json()
            .await
            .expect("json")
    }

    /// How many requests for `operation` the proxy saw, and how many of them it failed.
    pub async fn count(&self, operation: &str) -> (usize, usize) {
        let log = self.log().await;
        let seen: Vec<_> = log.iter().filter(|e| e["operation"] == operation).collect();
        let faulted = seen.iter().filter(|e| !e["fault"].is_null()).count();
        (seen.len(), faulted)
    }
}
