//! The config file: strict TOML read into a validated [`Config`].
//!
//! Parsing is done key by key through [`Fields`] rather than with one `#[derive(Deserialize)]`, so
//! that `lastcall check` can report **every** problem at once, each naming the file, the section
//! (for a step: its index and name) and the key. Each section's defaults are constants beside its
//! parser: [`sections`] for `[sqs]`, `[imds]` and `[lifecycle]`, [`steps`] for the step lists,
//! [`sweep`] for `[sweep]`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub mod fields;
pub mod permissions;
pub mod sections;
pub mod steps;
pub mod sweep;

pub use crate::steps::DEFAULT_STEP_TIMEOUT;
pub use fields::{Fields, Problem, Severity};
pub use permissions::unsafe_file;
pub use sections::{
    Heartbeat, ImdsConfig, LifecycleConfig, SqsConfig, DEFAULT_POLL_INTERVAL, DEFAULT_STALE_AFTER,
    DEFAULT_STATE_DIR, DEFAULT_STEP_ASIDE, DEFAULT_VISIBILITY_TIMEOUT, DEFAULT_WAIT_TIME,
};
pub use steps::{OnFailure, Step};
pub use sweep::{SweepConfig, ZabbixInstanceId};

/// Where the config is read from unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/lastcall/lastcall.toml";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    /// The shared-queue source, when `[sqs]` is present.
    pub sqs: Option<SqsConfig>,
    /// The instance-metadata sources, when `[imds]` is present.
    pub imds: Option<ImdsConfig>,
    /// How lifecycle actions are verified, kept alive and completed.
    pub lifecycle: LifecycleConfig,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Which monitoring hosts `lastcall sweep` looks after, when `[sweep]` is present.
    pub sweep: Option<SweepConfig>,
    /// The steps run when this instance launches (`[[launch_step]]`); empty: launches are not
    /// handled.
    pub launch_steps: Vec<Step>,
}

/// A config that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file has errors (all of them are listed).
    #[error("{} has {} error(s):\n{}", path.display(), problems.iter().filter(|p| p.severity == Severity::Error).count(), list(problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem, warnings included.
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A config that passed validation, with the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    /// The config.
    pub config: Config,
    /// Things that work but look wrong.
    pub warnings: Vec<Problem>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if let Some(why) = unsafe_file(path) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems: vec![Problem {
                    severity: Severity::Error,
                    file: path.to_path_buf(),
                    section: String::new(),
                    key: None,
                    message: format!("{why}: the steps run as root, so whoever can change this file can run anything on this host; fix it with `chown root:root {0} && chmod 0600 {0}`", path.display()),
                }],
            });
        }
        Self::from_str(&text, path)
    }

    /// [`Config::from_file`] off the async thread (for a reload while actions may run: the
    /// file may sit on a slow or hung filesystem, and that thread also runs heartbeats).
    pub async fn from_file_async(path: &Path) -> Result<Loaded, ConfigError> {
        let p = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::from_file(&p))
            .await
            .map_err(|e| ConfigError::Read {
                path: path.to_path_buf(),
                source: std::io::Error::other(e),
            })?
    }

    /// Validates config text; `path` is used in messages only.
    pub fn from_str(text: &str, path: &Path) -> Result<Loaded, ConfigError> {
        let mut problems = Vec::new();
        let config = parse(text, path, &mut problems);
        let has_errors = problems.iter().any(|p| p.severity == Severity::Error);
        match config {
            Some(config) if !has_errors => Ok(Loaded {
                config,
                warnings: problems,
            }),
            _ => Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            }),
        }
    }

    /// Every tag key that some step refers to with `{tag:KEY}`.
    pub fn tag_keys(&self) -> BTreeSet<String> {
        self.steps
            .iter()
            .chain(&self.launch_steps)
            .flat_map(|s| s.kind.templates())
            .flat_map(|t| t.tag_keys().map(str::to_string).collect::<Vec<_>>())
            .collect()
    }
}

fn parse(text: &str, path: &Path, problems: &mut Vec<Problem>) -> Option<Config> {
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            problems.push(Problem {
                severity: Severity::Error,
                file: path.to_path_buf(),
                section: String::new(),
                key: None,
                message: format!("not valid TOML: {}", e.to_string().trim_end()),
            });
            return None;
        }
    };
    let mut top = Fields::new(&table, path, String::new(), problems);

    let sqs = top.table("sqs").map(|t| {
        let mut f = Fields::new(&t, path, "[sqs]".into(), top.problems);
        let sqs = sections::parse_sqs(&mut f);
        f.finish();
        sqs
    });
    let lifecycle = {
        let t = top.table("lifecycle").unwrap_or_default();
        let mut f = Fields::new(&t, path, "[lifecycle]".into(), top.problems);
        let l = sections::parse_lifecycle(&mut f);
        f.finish();
        l
    };
    let imds = top.table("imds").map(|t| {
        let mut f = Fields::new(&t, path, "[imds]".into(), top.problems);
        let imds = sections::parse_imds(&mut f);
        f.finish();
        imds
    });
    let steps = steps::parse_steps(&mut top, "step");
    let launch_steps = steps::parse_steps(&mut top, "launch_step");
    let sweep = top.table("sweep").and_then(|t| {
        let mut f = Fields::new(&t, path, "[sweep]".into(), top.problems);
        let sweep = sweep::parse_sweep(&mut f);
        // The sweep uses the steps' own credentials and endpoints.
        let has = |kind: &str| steps.iter().any(|s| s.kind.kind_name() == kind);
        if sweep.as_ref().is_some_and(|s| s.mackerel_service.is_some()) && !has("mackerel") {
            f.problem_here(
                Some("mackerel_service"),
                "needs a [[step]] of kind \"mackerel\": the sweep uses its API key and api_base",
            );
        }
        if sweep.as_ref().is_some_and(|s| s.zabbix_group.is_some()) && !has("zabbix") {
            f.problem_here(
                Some("zabbix_group"),
                "needs a [[step]] of kind \"zabbix\": the sweep uses its url and credentials",
            );
        }
        f.finish();
        sweep
    });
    let imds_source = imds
        .as_ref()
        .is_some_and(|i| i.lifecycle || i.spot || i.rebalance);
    if sqs.is_none() && !imds_source {
        top.problem_here(
            None,
            "no event source is configured: add [imds] (lifecycle = true: no queue needed) or an [sqs] section with the queue_url of the group's lifecycle queue",
        );
    }
    top.finish();
    Some(Config {
        path: path.to_path_buf(),
        sqs: sqs.flatten(),
        imds,
        lifecycle,
        steps,
        launch_steps,
        sweep,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::autoscaling::ActionResult;

    fn load(text: &str) -> Result<Loaded, Vec<Problem>> {
        Config::from_str(text, Path::new("test.toml")).map_err(|e| match e {
            ConfigError::Invalid { problems, .. } => problems,
            ConfigError::Read { .. } => unreachable!(),
        })
    }

    /// Fails unless some problem's text contains `needle`.
    fn mentions(problems: &[Problem], needle: &str) {
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(
            text.iter().any(|t| t.contains(needle)),
            "no problem mentions {needle:?}; got:\n{}",
            text.join("\n")
        )
    }

    const MINIMAL: &str = r#"
        [sqs]
        queue_url = "https://sqs.us-east-1.amazonaws.com/123456789012/q"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load(MINIMAL).expect("valid").config;
        let sqs = c.sqs.expect("sqs");
        assert_eq!(sqs.wait_time, DEFAULT_WAIT_TIME);
        assert_eq!(sqs.visibility_timeout, DEFAULT_VISIBILITY_TIMEOUT);
        assert_eq!(sqs.stale_after, DEFAULT_STALE_AFTER);
        assert_eq!(sqs.step_aside, DEFAULT_STEP_ASIDE);
        assert_eq!(c.lifecycle.heartbeat, Heartbeat::Auto);
        assert_eq!(c.lifecycle.on_failure_result, ActionResult::Continue);
        assert!(c.lifecycle.verify);
        assert_eq!(c.lifecycle.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert!(c.steps.is_empty());
    }

    #[test]
    fn reports_every_problem_with_section_and_key() {
        let problems = load(
            r#"
            colour = "blue"
            [sqs]
            queue_url = "nope"
            wait_time = "30s"
            step_aside = "2h"
            [lifecycle]
            heartbeat = "sometimes"
            on_failure_result = "MAYBE"
            [[step]]
            kind = "command"
            name = "hello"
            command = ["/bin/echo", "{instanceid}"]
            [[step]]
            kind = "sleep"
            name = "hello"
            durration = "1s"
            [[step]]
            kind = "teleport"
        "#,
        )
        .expect_err("invalid");
        let has = |needle: &str| mentions(&problems, needle);
        has("key `colour`: unknown key at the top level");
        has("[sqs]: key `queue_url`: must be a queue URL");
        has("[sqs]: key `wait_time`: must be whole seconds from 0s to 20s");
        has("[sqs]: key `step_aside`: must be from 0s (never step aside) to 1h");
        has("[lifecycle]: key `heartbeat`");
        has("[lifecycle]: key `on_failure_result`");
        has("[[step]] #1 \"hello\": key `command[1]`: unknown placeholder {instanceid}");
        has("[[step]] #2 \"hello\": key `name`: \"hello\" is already the name of step #1");
        has("[[step]] #2 \"hello\": key `durration`: unknown key");
        has("[[step]] #2 \"hello\": key `duration`: is required");
        has("[[step]] #3 \"teleport\": key `kind`: unknown step kind \"teleport\"");
        assert!(problems
            .iter()
            .all(|p| p.to_string().starts_with("error: test.toml: ")));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let problems = load("[sqs\nqueue_url = 1").expect_err("invalid");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("line 1"), "{}", problems[0]);
    }

    #[test]
    fn missing_source_is_an_error() {
        let problems = load("[lifecycle]\nverify = false").expect_err("invalid");
        assert!(problems[0].message.contains("no event source"));
    }

    #[test]
    fn default_step_names_are_numbered_only_when_a_kind_repeats() {
        let c = load(&format!(
            "{MINIMAL}
            [[step]]
            kind = \"sleep\"
            duration = \"1s\"
            [[step]]
            kind = \"command\"
            command = [\"/bin/true\"]
            [[step]]
            kind = \"command\"
            command = [\"/bin/true\"]
            on_failure = \"abort\"
            timeout = \"5s\"
        "
        ))
        .expect("valid")
        .config;
        let names: Vec<_> = c.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["sleep", "command-2", "command-3"]);
        assert_eq!(c.steps[2].on_failure, OnFailure::Abort);
        assert_eq!(c.steps[2].timeout, Duration::from_secs(5));
        assert_eq!(c.steps[1].timeout, DEFAULT_STEP_TIMEOUT);
    }

    #[test]
    fn bounds_that_would_overflow_a_clock_or_defeat_the_design_are_refused() {
        // Before: a huge timeout was accepted and aborted the process when the step started
        // (a clock plus the timeout overflows), and again on every resume.
        let problems = load(&format!(
            "{MINIMAL}
            stale_after = \"10m\"
            [lifecycle]
            heartbeat = \"3h\"
            [[step]]
            kind = \"command\"
            command = [\"/bin/true\"]
            timeout = \"500000000000y\"
            [[step]]
            kind = \"sleep\"
            duration = \"49h\"
            [[step]]
            kind = \"zabbix\"
            url = \"https://zabbix.example.com/api_jsonrpc.php\"
            token_env = \"ZABBIX_TOKEN\"
            warm_pool = true
            [[step]]
            kind = \"mackerel\"
            api_key_env = \"MACKEREL_APIKEY\"
            on_rebalance = true
        "
        ))
        .expect_err("invalid");
        let has = |needle: &str| mentions(&problems, needle);
        has("[sqs]: key `stale_after`: must be at least 50m");
        has("[lifecycle]: key `heartbeat`");
        has("[[step]] #1 \"command\": key `timeout`: must be at most 48h");
        has("[[step]] #2 \"sleep\": key `duration`: must be at most 48h");
        has("[[step]] #3 \"zabbix\": key `warm_pool`: cannot be true for a monitoring step");
        has("[[step]] #4 \"mackerel\": key `on_rebalance`: cannot be true for a monitoring step");
    }

    #[test]
    fn secret_header_and_url_files_get_the_checks_of_every_secret_file() {
        // Before: an http step's { file = … } header and url_file skipped them.
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let open = dir.path().join("open.key");
        std::fs::write(&open, "k").expect("write");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let open = open.to_str().expect("utf8");
        let problems = load(&format!(
            "{MINIMAL}
            [[step]]
            kind = \"http\"
            url = \"https://example.com/hook\"
            headers = {{ DD-API-KEY = {{ file = \"{open}\" }}, X-Other = {{ file = \"relative.key\" }} }}
            [[step]]
            kind = \"http\"
            url_file = \"{open}\"
        "
        ))
        .expect_err("invalid");
        let has = |needle: &str| mentions(&problems, needle);
        has("key `headers.DD-API-KEY.file`: ");
        has("writable by group or others");
        has("key `headers.X-Other.file`: must be an absolute path");
        has("[[step]] #2 \"http-2\": key `url_file`: ");
    }

    #[test]
    fn a_reload_does_not_block_the_thread_that_runs_heartbeats() {
        // lastcall runs on one thread. Reading the config from a FIFO blocks until something
        // writes it, as a hung filesystem would: the other tasks must keep running meanwhile.
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("lastcall.toml");
        let made = std::process::Command::new("mkfifo")
            .args(["-m", "600"])
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
            let t = ticks.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    t.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
            let writer = {
                let fifo = fifo.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(300));
                    std::fs::write(&fifo, MINIMAL).expect("write fifo");
                })
            };
            let loaded = Config::from_file_async(&fifo).await;
            assert!(loaded.is_ok(), "{loaded:?}");
            let n = ticks.load(std::sync::atomic::Ordering::Relaxed);
            assert!(
                n >= 10,
                "the runtime was blocked while the config was read ({n} ticks)"
            );
            ticker.abort();
            writer.join().expect("writer");
        });
    }

    #[test]
    fn heartbeat_accepts_auto_off_and_durations() {
        for (v, want) in [
            ("auto", Heartbeat::Auto),
            ("off", Heartbeat::Off),
            ("45s", Heartbeat::Every(Duration::from_secs(45))),
        ] {
            let c = load(&format!("{MINIMAL}\n[lifecycle]\nheartbeat = \"{v}\""))
                .expect("valid")
                .config;
            assert_eq!(c.lifecycle.heartbeat, want);
        }
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The shipped example must stay valid and must show every key.
    #[test]
    fn shipped_example_config_parses() {
        let text = include_str!("../../deploy/lastcall.example.toml");
        let loaded = Config::from_str(text, Path::new("deploy/lastcall.example.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        // The example's secret files do not exist here; nothing else may be warned about.
        assert!(
            loaded
                .warnings
                .iter()
                .all(|w| w.message.contains("cannot be read now")),
            "{:?}",
            loaded.warnings
        );
        let c = loaded.config;
        assert_eq!(c.steps.len(), 11);
        let sweep = c.sweep.expect("[sweep] shown");
        assert_eq!(sweep.zabbix_group.as_deref(), Some("web servers"));
        assert_eq!(c.launch_steps.len(), 1);
        let imds = c.imds.expect("[imds] shown");
        assert!(imds.lifecycle && !imds.spot && !imds.rebalance);
        assert!(c.sqs.is_some());
        assert_eq!(c.lifecycle.hook_name.as_deref(), Some("drain"));
        assert_eq!(c.lifecycle.launch_hook_name.as_deref(), Some("register"));
        let kinds: Vec<_> = c.steps.iter().map(|s| s.kind.kind_name()).collect();
        for k in crate::steps::KINDS {
            assert!(kinds.contains(k), "the example shows no {k} step");
        }
    }
}
