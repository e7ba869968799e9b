//! The config file: strict TOML read into a validated [`Config`].
//!
//! Parsing is done key by key through [`Fields`] rather than with one `#[derive(Deserialize)]`, so
//! that `lastcall check` can report **every** problem at once, each naming the file, the section
//! (for a step: its index and name) and the key. Defaults are defined once, as constants here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::steps::StepKind;
use crate::template::Template;

/// Where the config is read from unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/lastcall/lastcall.toml";
/// Where the journal and locks live unless `[lifecycle] state_dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/lastcall";
/// SQS long-poll wait (the API's maximum).
pub const DEFAULT_WAIT_TIME: Duration = Duration::from_secs(20);
/// How long a received message stays invisible to the other instances.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// The longest a lifecycle action can stay alive (the Auto Scaling global timeout cap, 48 h).
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(48 * 3600);
/// Default `[sqs] step_aside`.
pub const DEFAULT_STEP_ASIDE: Duration = Duration::from_secs(30);
/// How often instance metadata is polled.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// A step's timeout when it sets none.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(120);

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
    /// The steps run when this instance launches (`[[launch_step]]`); empty: launches are not
    /// handled.
    pub launch_steps: Vec<Step>,
}

/// `[imds]`: sources that read this instance's own metadata, at no AWS cost while idle.
#[derive(Debug, Clone)]
pub struct ImdsConfig {
    /// Poll `autoscaling/target-lifecycle-state` and handle lifecycle actions by instance id.
    pub lifecycle: bool,
    /// Poll `spot/instance-action` and run the `on_spot` steps before the interruption.
    pub spot: bool,
    /// Treat a rebalance recommendation like a spot interruption notice.
    pub rebalance: bool,
    /// How often the items are read.
    pub poll_interval: Duration,
}

/// `[sqs]`.
#[derive(Debug, Clone)]
pub struct SqsConfig {
    /// The queue every instance of the group long-polls.
    pub queue_url: String,
    /// Long-poll wait per receive (0–20 s).
    pub wait_time: Duration,
    /// Visibility timeout asked for on receive, and renewed while a pipeline runs.
    pub visibility_timeout: Duration,
    /// Messages older than this are deleted unseen.
    pub stale_after: Duration,
    /// How long an instance that is staying (instance metadata says so) stays out of the
    /// queue's way after receiving others' messages; zero never.
    pub step_aside: Duration,
}

/// `[lifecycle]`.
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// The hook to complete when the event does not name one (and the only one we complete).
    pub hook_name: Option<String>,
    /// Heartbeat policy while steps run.
    pub heartbeat: Heartbeat,
    /// Result sent when a step failed.
    pub on_failure_result: ActionResult,
    /// Check with `DescribeAutoScalingInstances` that this instance really is in `Terminating:Wait`.
    pub verify: bool,
    /// Journal and locks.
    pub state_dir: PathBuf,
}

/// `[lifecycle] heartbeat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// Half the hook's `HeartbeatTimeout`, read with `DescribeLifecycleHooks`.
    Auto,
    /// A fixed interval.
    Every(Duration),
    /// No heartbeats.
    Off,
}

/// The result sent with `CompleteLifecycleAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ActionResult {
    /// Let the termination (and the other hooks) proceed.
    #[serde(rename = "CONTINUE")]
    Continue,
    /// End the remaining hooks; for a termination the instance still goes away.
    #[serde(rename = "ABANDON")]
    Abandon,
}

impl ActionResult {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Continue => "CONTINUE",
            Self::Abandon => "ABANDON",
        }
    }
}

impl fmt::Display for ActionResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a step's failure does to the rest of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Go on with the next step.
    Continue,
    /// Skip the remaining steps (the action is still completed, with the failure result).
    Abort,
}

/// One `[[step]]`.
#[derive(Debug, Clone)]
pub struct Step {
    /// 1-based position in the file.
    pub index: usize,
    /// Unique name (defaults to the kind, numbered when a kind repeats).
    pub name: String,
    /// Upper bound on the step's run time.
    pub timeout: Duration,
    /// Failure policy.
    pub on_failure: OnFailure,
    /// Run this step also when the instance only goes to the warm pool (it comes back).
    pub warm_pool: bool,
    /// Run this step on a spot interruption notice.
    pub on_spot: bool,
    /// What the step does.
    pub kind: StepKind,
}

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The config is refused.
    Error,
    /// The config works but probably not as meant.
    Warning,
}

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// The file.
    pub file: PathBuf,
    /// `[sqs]`, `[[step]] #2 "flush"`, … (empty for the file as a whole).
    pub section: String,
    /// The key, when one is to blame.
    pub key: Option<String>,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: {}", self.file.display())?;
        if !self.section.is_empty() {
            write!(f, ": {}", self.section)?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
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

/// Why a file that decides what runs as root must not be trusted, like sshd's StrictModes and
/// sudo: writable by group or others (or in such a directory without the sticky bit), or, when
/// running as root, owned by another user.
pub fn unsafe_file(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    if meta.mode() & 0o022 != 0 {
        return Some(format!(
            "{} is writable by group or others (mode {:o})",
            path.display(),
            meta.mode() & 0o777
        ));
    }
    let root = nix::unistd::geteuid().is_root();
    if root && meta.uid() != 0 {
        return Some(format!(
            "{} is owned by uid {}, not root",
            path.display(),
            meta.uid()
        ));
    }
    let dir = std::fs::canonicalize(path).ok()?.parent()?.to_path_buf();
    let d = std::fs::metadata(&dir).ok()?;
    if d.mode() & 0o022 != 0 && d.mode() & 0o1000 == 0 {
        return Some(format!(
            "its directory {} is writable by group or others (mode {:o}), so the file can be replaced",
            dir.display(),
            d.mode() & 0o777
        ));
    }
    if root && d.uid() != 0 {
        return Some(format!(
            "its directory {} is owned by uid {}, not root",
            dir.display(),
            d.uid()
        ));
    }
    None
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
        let sqs = parse_sqs(&mut f);
        f.finish();
        sqs
    });
    let lifecycle = {
        let t = top.table("lifecycle").unwrap_or_default();
        let mut f = Fields::new(&t, path, "[lifecycle]".into(), top.problems);
        let l = parse_lifecycle(&mut f);
        f.finish();
        l
    };
    let imds = top.table("imds").map(|t| {
        let mut f = Fields::new(&t, path, "[imds]".into(), top.problems);
        let imds = parse_imds(&mut f);
        f.finish();
        imds
    });
    let steps = parse_steps(&mut top, "step");
    let launch_steps = parse_steps(&mut top, "launch_step");
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
    })
}

fn parse_sqs(f: &mut Fields) -> Option<SqsConfig> {
    let queue_url: Option<String> = f.req("queue_url");
    if let Some(url) = &queue_url {
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || url.matches('/').count() < 4
        {
            f.problem(
                "queue_url",
                "must be a queue URL like https://sqs.REGION.amazonaws.com/ACCOUNT/NAME",
            );
        }
    }
    let wait_time = f.duration("wait_time").unwrap_or(DEFAULT_WAIT_TIME);
    if wait_time > Duration::from_secs(20) || wait_time.subsec_nanos() != 0 {
        f.problem(
            "wait_time",
            "must be whole seconds from 0s to 20s (the SQS long-poll limit)",
        );
    }
    let visibility_timeout = f
        .duration("visibility_timeout")
        .unwrap_or(DEFAULT_VISIBILITY_TIMEOUT);
    if visibility_timeout < Duration::from_secs(1)
        || visibility_timeout > Duration::from_secs(12 * 3600)
        || visibility_timeout.subsec_nanos() != 0
    {
        f.problem(
            "visibility_timeout",
            "must be whole seconds from 1s to 12h (the SQS limits)",
        );
    }
    let stale_after = f.duration("stale_after").unwrap_or(DEFAULT_STALE_AFTER);
    if stale_after.is_zero() {
        f.problem("stale_after", "must be longer than zero");
    } else if stale_after > DEFAULT_STALE_AFTER {
        f.warn(
            "stale_after",
            "is longer than 48h, the longest a lifecycle action can live; older messages are dead anyway",
        );
    }
    let step_aside = f.duration("step_aside").unwrap_or(DEFAULT_STEP_ASIDE);
    if step_aside > Duration::from_secs(3600) {
        f.problem(
            "step_aside",
            "must be from 0s (never step aside) to 1h; the default is 30s",
        );
    }
    Some(SqsConfig {
        queue_url: queue_url?,
        wait_time,
        visibility_timeout,
        stale_after,
        step_aside,
    })
}

fn parse_imds(f: &mut Fields) -> ImdsConfig {
    let lifecycle = f.opt("lifecycle").unwrap_or(true);
    let spot = f.opt("spot").unwrap_or(false);
    let rebalance = f.opt("rebalance").unwrap_or(false);
    let poll_interval = f.duration("poll_interval").unwrap_or(DEFAULT_POLL_INTERVAL);
    if poll_interval < Duration::from_millis(100) || poll_interval > Duration::from_secs(60) {
        f.problem("poll_interval", "must be from 100ms to 60s");
    }
    if !(lifecycle || spot || rebalance) {
        f.warn(
            "lifecycle",
            "[imds] enables nothing: set lifecycle, spot or rebalance to true, or remove the section",
        );
    }
    ImdsConfig {
        lifecycle,
        spot,
        rebalance,
        poll_interval,
    }
}

fn parse_lifecycle(f: &mut Fields) -> LifecycleConfig {
    let hook_name: Option<String> = f.opt("hook_name");
    if let Some(h) = &hook_name {
        if !crate::event::valid_hook_name(h) {
            f.problem(
                "hook_name",
                "must be 1–255 characters of A–Z, a–z, 0–9, '-', '_' and '/'",
            );
        }
    }
    let heartbeat = match f.opt::<String>("heartbeat").as_deref() {
        None | Some("auto") => Heartbeat::Auto,
        Some("off") => Heartbeat::Off,
        Some(s) => {
            match humantime::parse_duration(s) {
                Ok(d) if d >= Duration::from_secs(1) => Heartbeat::Every(d),
                _ => {
                    f.problem(
                    "heartbeat",
                    format!("{s:?} is not \"auto\", \"off\" or a duration of at least 1s like \"60s\""),
                );
                    Heartbeat::Auto
                }
            }
        }
    };
    let on_failure_result = match f.opt::<String>("on_failure_result") {
        None => ActionResult::Continue,
        Some(s) if s.eq_ignore_ascii_case("CONTINUE") => ActionResult::Continue,
        Some(s) if s.eq_ignore_ascii_case("ABANDON") => ActionResult::Abandon,
        Some(s) => {
            f.problem(
                "on_failure_result",
                format!("{s:?} is not \"CONTINUE\" or \"ABANDON\""),
            );
            ActionResult::Continue
        }
    };
    let verify = f.opt("verify").unwrap_or(true);
    let state_dir = f
        .opt::<String>("state_dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    if !state_dir.is_absolute() {
        f.problem("state_dir", "must be an absolute path");
    }
    LifecycleConfig {
        hook_name,
        heartbeat,
        on_failure_result,
        verify,
        state_dir,
    }
}

/// Reads `[[step]]` or `[[launch_step]]` (`list` is the key).
fn parse_steps(top: &mut Fields, list: &str) -> Vec<Step> {
    let launch = list == "launch_step";
    let raw: Vec<toml::Value> = match top.table.get(list) {
        None => return Vec::new(),
        Some(toml::Value::Array(a)) => {
            top.used.insert(list.into());
            a.clone()
        }
        Some(_) => {
            top.used.insert(list.into());
            top.problem(
                list,
                format!("must be an array of tables: write each one as [[{list}]]"),
            );
            return Vec::new();
        }
    };
    // Count kinds first so that default names are numbered only where a kind repeats.
    let mut kind_count: BTreeMap<String, usize> = BTreeMap::new();
    for v in &raw {
        if let Some(k) = v.get("kind").and_then(|k| k.as_str()) {
            *kind_count.entry(k.to_string()).or_default() += 1;
        }
    }
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut steps = Vec::new();
    for (i, v) in raw.iter().enumerate() {
        let index = i + 1;
        let Some(t) = v.as_table() else {
            top.problem_in(format!("[[{list}]] #{index}"), None, "must be a table");
            continue;
        };
        let kind = t.get("kind").and_then(|k| k.as_str()).map(str::to_string);
        let explicit_name = t.get("name").and_then(|k| k.as_str()).map(str::to_string);
        let name = match (&explicit_name, &kind) {
            (Some(n), _) => n.clone(),
            (None, Some(k)) if kind_count.get(k).copied().unwrap_or(0) > 1 => {
                format!("{k}-{index}")
            }
            (None, Some(k)) => k.clone(),
            (None, None) => format!("step-{index}"),
        };
        let section = format!("[[{list}]] #{index} {name:?}");
        let mut f = Fields::new(t, top.path, section, top.problems);
        let _: Option<String> = f.opt("name");
        if explicit_name.as_deref() == Some("") {
            f.problem("name", "must not be empty");
        }
        if let Some(first) = names.insert(name.clone(), index) {
            f.problem(
                "name",
                format!("{name:?} is already the name of step #{first}; step names must be unique"),
            );
        }
        let kind_str: Option<String> = f.req("kind");
        let timeout = f.duration("timeout");
        if timeout.is_some_and(|d| d.is_zero()) {
            f.problem("timeout", "must be longer than zero");
        }
        let on_failure = match f.opt::<String>("on_failure").as_deref() {
            None | Some("continue") => OnFailure::Continue,
            Some("abort") => OnFailure::Abort,
            Some(s) => {
                f.problem(
                    "on_failure",
                    format!("{s:?} is not \"continue\" or \"abort\""),
                );
                OnFailure::Continue
            }
        };
        let warm_pool: Option<bool> = f.opt("warm_pool");
        let on_spot: Option<bool> = f.opt("on_spot");
        if launch {
            for (key, v) in [("warm_pool", warm_pool), ("on_spot", on_spot)] {
                if v.is_some() {
                    f.problem(
                        key,
                        "only applies to [[step]]: launch steps run on every launch",
                    );
                }
            }
        }
        let kind = kind_str.and_then(|k| StepKind::parse(&k, &mut f));
        if let Some(kind) = kind {
            let timeout = match timeout {
                Some(t) => {
                    if let Some(min) = kind.minimum_timeout() {
                        if t < min {
                            f.problem(
                                "timeout",
                                format!(
                                    "{} is shorter than what the step itself needs ({})",
                                    humantime::format_duration(t),
                                    humantime::format_duration(min)
                                ),
                            );
                        }
                    }
                    t
                }
                None => kind.default_timeout(),
            };
            steps.push(Step {
                index,
                name,
                timeout,
                on_failure,
                warm_pool: warm_pool.unwrap_or_else(|| kind.default_warm_pool()),
                on_spot: on_spot.unwrap_or(true),
                kind,
            });
        }
        f.finish();
    }
    steps
}

/// Reads the keys of one TOML table, recording every problem and every key it did not know.
pub struct Fields<'a> {
    table: &'a toml::Table,
    path: &'a Path,
    section: String,
    used: BTreeSet<String>,
    problems: &'a mut Vec<Problem>,
}

impl<'a> Fields<'a> {
    fn new(
        table: &'a toml::Table,
        path: &'a Path,
        section: String,
        problems: &'a mut Vec<Problem>,
    ) -> Self {
        Self {
            table,
            path,
            section,
            used: BTreeSet::new(),
            problems,
        }
    }

    /// An optional key of any serde type; a wrong type is recorded and read as absent.
    pub fn opt<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        self.used.insert(key.to_string());
        let v = self.table.get(key)?;
        match v.clone().try_into::<T>() {
            Ok(x) => Some(x),
            Err(e) => {
                let msg = format!(
                    "has the wrong type ({}): {}",
                    v.type_str(),
                    e.to_string().trim_end()
                );
                self.problem(key, msg);
                None
            }
        }
    }

    /// A required key.
    pub fn req<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        if !self.table.contains_key(key) {
            self.used.insert(key.to_string());
            self.problem(key, "is required");
            return None;
        }
        self.opt(key)
    }

    /// True when the key is present (whatever its value).
    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// The raw value of a key, without marking it as read or checking it.
    pub fn peek(&self, key: &str) -> Option<&toml::Value> {
        self.table.get(key)
    }

    /// An optional duration such as `"30s"` or `"5m"`.
    pub fn duration(&mut self, key: &str) -> Option<Duration> {
        let s: String = self.opt(key)?;
        match humantime::parse_duration(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(
                    key,
                    format!(
                        "{s:?} is not a duration ({e}); write e.g. \"30s\", \"5m\", \"1h 30m\""
                    ),
                );
                None
            }
        }
    }

    /// A required duration.
    pub fn req_duration(&mut self, key: &str) -> Option<Duration> {
        if !self.table.contains_key(key) {
            self.used.insert(key.to_string());
            self.problem(key, "is required");
            return None;
        }
        self.duration(key)
    }

    /// An optional string with placeholders.
    pub fn template(&mut self, key: &str) -> Option<Template> {
        let s: String = self.opt(key)?;
        self.parse_template(key, &s)
    }

    /// A required string with placeholders.
    pub fn req_template(&mut self, key: &str) -> Option<Template> {
        let s: String = self.req(key)?;
        self.parse_template(key, &s)
    }

    /// An optional array of strings with placeholders.
    pub fn templates(&mut self, key: &str) -> Option<Vec<Template>> {
        let v: Vec<String> = self.opt(key)?;
        let mut out = Vec::with_capacity(v.len());
        let mut ok = true;
        for (i, s) in v.iter().enumerate() {
            match Template::parse(s) {
                Ok(t) => out.push(t),
                Err(e) => {
                    ok = false;
                    self.problem(&format!("{key}[{i}]"), e.to_string());
                }
            }
        }
        ok.then_some(out)
    }

    /// An optional table of strings with placeholders (e.g. `env`).
    pub fn template_map(&mut self, key: &str) -> Option<BTreeMap<String, Template>> {
        let v: BTreeMap<String, String> = self.opt(key)?;
        let mut out = BTreeMap::new();
        for (k, s) in v {
            match Template::parse(&s) {
                Ok(t) => {
                    out.insert(k, t);
                }
                Err(e) => self.problem(&format!("{key}.{k}"), e.to_string()),
            }
        }
        Some(out)
    }

    fn parse_template(&mut self, key: &str, s: &str) -> Option<Template> {
        match Template::parse(s) {
            Ok(t) => Some(t),
            Err(e) => {
                self.problem(key, e.to_string());
                None
            }
        }
    }

    fn table(&mut self, key: &str) -> Option<toml::Table> {
        self.used.insert(key.to_string());
        match self.table.get(key)? {
            toml::Value::Table(t) => Some(t.clone()),
            other => {
                let msg = format!("must be a table like [{key}], not a {}", other.type_str());
                self.problem(key, msg);
                None
            }
        }
    }

    /// Records an error against a key of this section.
    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        let section = self.section.clone();
        self.push(
            Severity::Error,
            section,
            Some(key.to_string()),
            message.into(),
        );
    }

    /// Records a warning against a key of this section.
    pub fn warn(&mut self, key: &str, message: impl Into<String>) {
        let section = self.section.clone();
        self.push(
            Severity::Warning,
            section,
            Some(key.to_string()),
            message.into(),
        );
    }

    fn problem_here(&mut self, key: Option<&str>, message: impl Into<String>) {
        let section = self.section.clone();
        self.push(
            Severity::Error,
            section,
            key.map(str::to_string),
            message.into(),
        );
    }

    fn problem_in(&mut self, section: String, key: Option<&str>, message: impl Into<String>) {
        self.push(
            Severity::Error,
            section,
            key.map(str::to_string),
            message.into(),
        );
    }

    fn push(&mut self, severity: Severity, section: String, key: Option<String>, message: String) {
        self.problems.push(Problem {
            severity,
            file: self.path.to_path_buf(),
            section,
            key,
            message,
        });
    }

    /// Records every key that was present but never asked for.
    fn finish(self) {
        for key in self.table.keys() {
            if !self.used.contains(key) {
                let where_ = if self.section.is_empty() {
                    "at the top level".to_string()
                } else {
                    format!("in {}", self.section)
                };
                self.problems.push(Problem {
                    severity: Severity::Error,
                    file: self.path.to_path_buf(),
                    section: self.section.clone(),
                    key: Some(key.clone()),
                    message: format!("unknown key {where_}"),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Loaded, Vec<Problem>> {
        Config::from_str(text, Path::new("test.toml")).map_err(|e| match e {
            ConfigError::Invalid { problems, .. } => problems,
            ConfigError::Read { .. } => unreachable!(),
        })
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
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let has = |needle: &str| {
            assert!(
                text.iter().any(|t| t.contains(needle)),
                "no problem mentions {needle:?}; got:\n{}",
                text.join("\n")
            )
        };
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
        assert!(text.iter().all(|t| t.starts_with("error: test.toml: ")));
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
        let text = include_str!("../deploy/lastcall.example.toml");
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
        assert_eq!(c.steps.len(), 9);
        assert_eq!(c.launch_steps.len(), 1);
        let imds = c.imds.expect("[imds] shown");
        assert!(imds.lifecycle && !imds.spot && !imds.rebalance);
        assert!(c.sqs.is_some());
        assert_eq!(c.lifecycle.hook_name.as_deref(), Some("drain"));
        let kinds: Vec<_> = c.steps.iter().map(|s| s.kind.kind_name()).collect();
        for k in crate::steps::KINDS {
            assert!(kinds.contains(k), "the example shows no {k} step");
        }
    }
}
