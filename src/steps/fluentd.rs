//! `fluentd`: make fluentd flush its buffers (SIGUSR1 to the supervisor) and confirm that it
//! did, before the agents stop and the instance goes away.
//!
//! SIGUSR1 is asynchronous: fluentd says nothing when the flush ends, and an output in retry
//! state ignores it. Completion is confirmed by watching the file buffer (no chunk left, in two
//! consecutive scans, worker subdirectories included: one scan can miss a chunk being renamed
//! from `b` to `q`; `buffer_path` is written exactly as buf_file's `path`, and resolved the way
//! buf_file resolves it, see [`BufferChunks`]) and/or `monitor_agent` (`buffer_total_queued_size` 0 for every
//! output or the given `@id`s: it drops only after the write, unlike the queue length).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::config::fields::Fields;
use crate::template::{Context, RenderError, Template};

use super::{StepEnv, StepError};

/// Where the packages put the supervisor's pid file, in the order they are tried.
pub const DEFAULT_PID_FILES: &[&str] = &[
    "/var/run/fluent/fluentd.pid",
    "/var/run/td-agent/td-agent.pid",
    "/var/run/calyptia-fluentd/calyptia-fluentd.pid",
];
/// buf_file's default `path_suffix`.
pub const DEFAULT_PATH_SUFFIX: &str = ".log";
/// How often the buffer and monitor_agent are looked at.
const POLL: Duration = Duration::from_millis(200);

/// `kind = "fluentd"`.
#[derive(Debug, Clone)]
pub struct FluentdStep {
    /// The supervisor's pid file (default: the packages' paths).
    pub pid_file: Option<Template>,
    /// A file buffer's `path`, as written in fluentd's `<buffer>` section, to watch for chunks.
    pub buffer_path: Option<Template>,
    /// The buffer's `path_suffix` (fluentd's default `.log`).
    pub path_suffix: String,
    /// monitor_agent's base URL, e.g. `http://127.0.0.1:24220`; with `<system> workers N`, one
    /// per worker (each worker serves its own, on port + worker id).
    pub monitor_agent: Vec<Template>,
    /// Only these outputs (`@id`) must be empty (default: every output).
    pub output_ids: Vec<String>,
}

impl FluentdStep {
    /// Reads `pid_file`, `buffer_path`, `path_suffix`, `monitor_agent`, `output_ids`.
    pub fn parse(f: &mut Fields) -> Option<Self> {
        let pid_file = f.template("pid_file");
        let buffer_path = f.template("buffer_path");
        if buffer_path
            .as_ref()
            .is_some_and(|b| !b.source().starts_with('/'))
        {
            f.problem(
                "buffer_path",
                "must be an absolute path (the buffer's path in fluentd's config)",
            );
        }
        let path_suffix = f
            .opt::<String>("path_suffix")
            .unwrap_or_else(|| DEFAULT_PATH_SUFFIX.to_string());
        if path_suffix.contains('/') || path_suffix.contains('*') {
            f.problem("path_suffix", "must be a file name suffix like \".log\"");
        }
        if f.has("path_suffix") && buffer_path.is_none() {
            f.problem(
                "path_suffix",
                "needs buffer_path: it is the suffix of its chunks",
            );
        }
        let monitor_agent = match f.peek("monitor_agent") {
            Some(toml::Value::Array(_)) => f.templates("monitor_agent").unwrap_or_default(),
            _ => f.template("monitor_agent").into_iter().collect(),
        };
        if monitor_agent
            .iter()
            .any(|m| !m.source().starts_with("http://") && !m.source().starts_with("https://"))
        {
            f.problem(
                "monitor_agent",
                "must be monitor_agent's URL, like http://127.0.0.1:24220 (or a list, one per worker)",
            );
        }
        let output_ids: Vec<String> = f.opt("output_ids").unwrap_or_default();
        if !output_ids.is_empty() && monitor_agent.is_empty() {
            f.problem(
                "output_ids",
                "needs monitor_agent: the outputs are checked through it",
            );
        }
        Some(Self {
            pid_file,
            buffer_path,
            path_suffix,
            monitor_agent,
            output_ids,
        })
    }

    pub(super) fn templates(&self) -> Vec<&Template> {
        [&self.pid_file, &self.buffer_path]
            .into_iter()
            .flatten()
            .chain(&self.monitor_agent)
            .collect()
    }

    pub(super) fn describe(&self, ctx: &Context) -> Result<String, RenderError> {
        let pid = match &self.pid_file {
            Some(p) => p.render(ctx)?,
            None => DEFAULT_PID_FILES.join(" or "),
        };
        let mut confirm = Vec::new();
        if let Some(b) = &self.buffer_path {
            confirm.push(format!(
                "no chunk left in {}",
                BufferChunks::resolve(&b.render(ctx)?, &self.path_suffix)
            ));
        }
        for m in &self.monitor_agent {
            confirm.push(format!("{} reports empty buffers", m.render(ctx)?));
        }
        Ok(format!(
            "SIGUSR1 to the fluentd supervisor in {pid}, then wait until {}",
            if confirm.is_empty() {
                "(unconfirmed)".to_string()
            } else {
                confirm.join(" and ")
            }
        ))
    }

    /// The supervisor's pid, refusing stale pid files, workers and unrelated processes.
    pub fn supervisor(&self, ctx: &Context) -> Result<(Pid, String), StepError> {
        let path = match &self.pid_file {
            Some(p) => p.render(ctx)?,
            None => DEFAULT_PID_FILES
                .iter()
                .find(|p| Path::new(p).exists())
                .map(|p| p.to_string())
                .ok_or_else(|| {
                    StepError::Failed(format!(
                        "no fluentd pid file found (looked at {}); is fluentd running? set pid_file",
                        DEFAULT_PID_FILES.join(", ")
                    ))
                })?,
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| StepError::Failed(format!("cannot read fluentd pid file {path}: {e}")))?;
        let pid: i32 = text.trim().parse().ok().filter(|p| *p > 1).ok_or_else(|| {
            StepError::Failed(format!("fluentd pid file {path} does not hold a pid"))
        })?;
        // A pid file outlives fluentd, and SIGUSR1 kills a process that does not handle it:
        // only signal a live fluentd supervisor.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|_| {
            StepError::Failed(format!(
                "stale pid file {path}: process {pid} is not running"
            ))
        })?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains("fluentd") {
            return Err(StepError::Failed(format!(
                "stale pid file {path}: process {pid} is not fluentd ({}); not signalling it",
                cmdline.trim().chars().take(80).collect::<String>()
            )));
        }
        if cmdline.contains("--under-supervisor") {
            return Err(StepError::Failed(format!(
                "pid file {path} names a fluentd worker ({pid}), not the supervisor; not signalling it"
            )));
        }
        Ok((Pid::from_raw(pid), path))
    }

    /// For `lastcall check`: the supervisor, and that the buffer (when configured) can be read.
    pub async fn check(&self, ctx: &Context) -> Result<String, StepError> {
        let (pid, path) = self.supervisor(ctx)?;
        let mut out = format!("supervisor {pid} (from {path})");
        if let Some(b) = &self.buffer_path {
            let buffer = BufferChunks::resolve(&b.render(ctx)?, &self.path_suffix);
            let n = buffer.scan().await?.len();
            out.push_str(&format!("; buffer {buffer}: {n} chunk(s) now"));
        }
        Ok(out)
    }

    /// True when no fluentd supervisor runs where the pid file says (no pid file, or its
    /// process has exited).
    fn supervisor_gone(&self, ctx: &Context) -> bool {
        let path = match &self.pid_file {
            Some(p) => match p.render(ctx) {
                Ok(p) => p,
                Err(_) => return false,
            },
            None => match DEFAULT_PID_FILES.iter().find(|p| Path::new(p).exists()) {
                Some(p) => p.to_string(),
                None => return true,
            },
        };
        match std::fs::read_to_string(&path) {
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            Ok(t) => t
                .trim()
                .parse::<i32>()
                .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()),
        }
    }

    /// Signals and waits for the confirmation, until shortly before the deadline. Run again
    /// after an interruption (`env.resumed`), a fluentd that is gone is not a failure: it was
    /// signalled (and then stopped) before lastcall was interrupted; its file buffer, when
    /// configured, must still be empty.
    pub async fn run(&self, env: &StepEnv<'_>) -> Result<String, StepError> {
        let (pid, path) = match self.supervisor(env.ctx) {
            Ok(s) => s,
            Err(e) if env.resumed && self.supervisor_gone(env.ctx) => {
                if let Some(b) = &self.buffer_path {
                    let buffer = BufferChunks::resolve(&b.render(env.ctx)?, &self.path_suffix);
                    let left = buffer.scan().await?;
                    if !left.is_empty() {
                        return Err(StepError::Failed(format!(
                            "fluentd is not running any more ({e}) and {buffer} still holds {} chunk(s)",
                            left.len()
                        )));
                    }
                }
                return Ok(format!(
                    "fluentd is not running any more ({e}): it was signalled before lastcall was interrupted"
                ));
            }
            Err(e) => return Err(e),
        };
        kill(pid, Signal::SIGUSR1).map_err(|e| {
            StepError::Failed(format!(
                "cannot send SIGUSR1 to fluentd {pid} (from {path}): {e}"
            ))
        })?;
        let buffer = self
            .buffer_path
            .as_ref()
            .map(|b| b.render(env.ctx))
            .transpose()?
            .map(|b| BufferChunks::resolve(&b, &self.path_suffix));
        let monitor = self
            .monitor_agent
            .iter()
            .map(|m| m.render(env.ctx))
            .collect::<Result<Vec<_>, _>>()?;
        if buffer.is_none() && monitor.is_empty() {
            tracing::warn!(step = env.name, "sent SIGUSR1 to fluentd; the flush is unconfirmed (set buffer_path or monitor_agent to wait for it)");
            return Ok(format!("sent SIGUSR1 to fluentd {pid}; flush unconfirmed"));
        }
        let mut empty_scans = 0;
        loop {
            tokio::time::sleep(POLL).await;
            let mut pending = Vec::new();
            if let Some(dir) = &buffer {
                // An unreadable buffer is a failure, never "empty": the flush cannot be confirmed.
                let chunks = dir.scan().await?;
                if chunks.is_empty() {
                    empty_scans += 1;
                } else {
                    empty_scans = 0;
                }
                if empty_scans < 2 {
                    pending.push(if chunks.is_empty() {
                        format!("{dir}: confirming it is empty")
                    } else {
                        format!("{dir}: {} chunk(s) left", chunks.len())
                    });
                }
            }
            if !monitor.is_empty() {
                pending.extend(self.queued(&monitor, env).await);
            }
            if pending.is_empty() {
                return Ok(format!("fluentd {pid} flushed its buffers"));
            }
            if env.remaining() <= POLL {
                return Err(StepError::Failed(format!(
                    "fluentd did not finish flushing before the timeout; still holding data: {} (an output in retry state ignores SIGUSR1 and sends at its next retry)",
                    pending.join("; ")
                )));
            }
        }
    }

    /// Outputs that still hold data, as the monitor_agents report them (or why they cannot).
    async fn queued(&self, bases: &[String], env: &StepEnv<'_>) -> Vec<String> {
        let mut pending = Vec::new();
        let mut seen = Vec::new();
        for base in bases {
            match self.plugins(base, env).await {
                Ok(plugins) => {
                    for p in plugins {
                        if p["output_plugin"].as_bool() != Some(true) {
                            continue;
                        }
                        let id = p["plugin_id"].as_str().unwrap_or("?").to_string();
                        if !self.output_ids.is_empty() && !self.output_ids.contains(&id) {
                            continue;
                        }
                        seen.push(id.clone());
                        let queued = p["buffer_total_queued_size"].as_u64().unwrap_or(0);
                        if queued > 0 {
                            let retry = p["retry_count"].as_u64().unwrap_or(0);
                            let mut s = format!("output {id}: {queued} bytes queued");
                            if bases.len() > 1 {
                                s.push_str(&format!(" at {base}"));
                            }
                            if retry > 0 || p["retry"].as_object().is_some_and(|r| !r.is_empty()) {
                                s.push_str(&format!(", in retry state ({retry} retries)"));
                            }
                            pending.push(s);
                        }
                    }
                }
                Err(e) => pending.push(e),
            }
        }
        for id in &self.output_ids {
            if !seen.contains(id) {
                pending.push(format!(
                    "output {id}: not reported by monitor_agent (check output_ids)"
                ));
            }
        }
        pending
    }

    async fn plugins(&self, base: &str, env: &StepEnv<'_>) -> Result<Vec<Value>, String> {
        let client = crate::http_client::client()?;
        let url = format!("{}/api/plugins.json", base.trim_end_matches('/'));
        let v: Value = client
            .get(&url)
            .timeout(
                env.remaining()
                    .clamp(Duration::from_millis(100), Duration::from_secs(5)),
            )
            .send()
            .await
            .map_err(|e| format!("monitor_agent {url}: {}", crate::http_client::describe(e)))?
            .json()
            .await
            .map_err(|e| format!("monitor_agent {url}: {}", crate::http_client::describe(e)))?;
        Ok(v["plugins"].as_array().cloned().unwrap_or_default())
    }
}

/// Where a file buffer keeps its chunks: buf_file's `path` resolved as buf_file resolves it
/// (fluentd `lib/fluent/plugin/buf_file.rb`, `configure`):
/// - an existing directory, or a path that does not exist and holds no `.*`: a directory of
///   `buffer.*{path_suffix}` chunks (one `worker{N}` subdirectory per worker, or
///   `{root_dir}/worker{N}/{@id}/buffer` with `root_dir`: subdirectories are searched too);
/// - a file name holding `.*.`: the chunks are that name with `*` a chunk id;
/// - a file name ending in `.*`: likewise, with `path_suffix` appended;
/// - any other file name: `{path}.*{path_suffix}`.
///
/// A chunk id is `b` (staged) or `q` (queued) and a hex id; `….meta` files are not chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferChunks {
    /// The directory the chunks are in.
    dir: PathBuf,
    /// A chunk's name starts with this…
    prefix: String,
    /// …and ends with this.
    suffix: String,
    /// Search subdirectories (the directory form: workers, root_dir).
    recursive: bool,
}

impl std::fmt::Display for BufferChunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}*{}", self.dir.display(), self.prefix, self.suffix)?;
        if self.recursive {
            f.write_str(" (worker subdirectories included)")?;
        }
        Ok(())
    }
}

impl BufferChunks {
    /// Resolves `path` (and `path_suffix`) the way buf_file does.
    pub fn resolve(path: &str, path_suffix: &str) -> Self {
        let p = Path::new(path);
        let is_dir = p.is_dir();
        if is_dir || (!p.exists() && !path.contains(".*")) {
            return Self {
                dir: p.to_path_buf(),
                prefix: "buffer.".into(),
                suffix: path_suffix.into(),
                recursive: true,
            };
        }
        let dir = p.parent().unwrap_or(Path::new("/")).to_path_buf();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (prefix, suffix) = if let Some(i) = name.find(".*.") {
            (name[..i + 1].to_string(), name[i + 2..].to_string())
        } else if let Some(stem) = name.strip_suffix(".*") {
            (format!("{stem}."), path_suffix.to_string())
        } else {
            (format!("{name}."), path_suffix.to_string())
        };
        Self {
            dir,
            prefix,
            suffix,
            recursive: false,
        }
    }

    /// True when `name` is one of this buffer's chunks.
    fn is_chunk(&self, name: &str) -> bool {
        name.len() > self.prefix.len() + self.suffix.len()
            && name.starts_with(&self.prefix)
            && name.ends_with(&self.suffix)
            && matches!(name.as_bytes()[self.prefix.len()], b'b' | b'q')
    }

    /// Every chunk, off the async thread (a large buffer tree takes a while to list). A
    /// directory that cannot be read is an error that names it: an unreadable buffer is not an
    /// empty one.
    pub async fn scan(&self) -> Result<Vec<PathBuf>, StepError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.scan_now())
            .await
            .map_err(|e| StepError::Failed(format!("scanning the fluentd buffer failed: {e}")))?
            .map_err(StepError::Failed)
    }

    fn scan_now(&self) -> Result<Vec<PathBuf>, String> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d).map_err(|e| {
                format!(
                    "cannot read the fluentd buffer directory {} ({e}); is buffer_path the <buffer> path of fluentd's config?",
                    d.display()
                )
            })?;
            for e in entries {
                let e = e.map_err(|e| format!("cannot list {}: {e}", d.display()))?;
                let p = e.path();
                match e.file_type() {
                    Ok(t) if t.is_dir() && self.recursive => stack.push(p),
                    Ok(t) if t.is_dir() => {}
                    Ok(_) => {
                        if self.is_chunk(&e.file_name().to_string_lossy()) {
                            out.push(p);
                        }
                    }
                    Err(e) => return Err(format!("cannot stat {}: {e}", p.display())),
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_found_in_worker_directories_and_meta_files_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("worker1")).expect("mkdir");
        for f in [
            "buffer.b5f1.log",
            "buffer.b5f1.log.meta",
            "worker1/buffer.q77.log",
            "other.log",
        ] {
            std::fs::write(dir.path().join(f), "x").expect("write");
        }
        let buffer = BufferChunks::resolve(dir.path().to_str().expect("utf8"), ".log");
        let mut found: Vec<_> = buffer
            .scan_now()
            .expect("readable")
            .into_iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .expect("under")
                    .display()
                    .to_string()
            })
            .collect();
        found.sort();
        assert_eq!(found, ["buffer.b5f1.log", "worker1/buffer.q77.log"]);
    }

    #[tokio::test]
    async fn a_fluentd_gone_before_a_resume_is_success_if_its_buffer_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = tokio::process::Command::new("/bin/true")
            .spawn()
            .expect("true");
        let pid = child.id().expect("pid");
        child.wait().await.expect("wait");
        let pid_file = dir.path().join("fluentd.pid");
        std::fs::write(&pid_file, pid.to_string()).expect("write");
        let buf = dir.path().join("buf");
        std::fs::create_dir(&buf).expect("mkdir");
        let s = FluentdStep {
            pid_file: Template::parse(pid_file.to_str().expect("utf8")).ok(),
            buffer_path: Template::parse(buf.to_str().expect("utf8")).ok(),
            path_suffix: DEFAULT_PATH_SUFFIX.into(),
            monitor_agent: Vec::new(),
            output_ids: Vec::new(),
        };
        let ctx = Context::default();
        let fresh = StepEnv::test(&ctx);
        let err = s
            .run(&fresh)
            .await
            .expect_err("a first run needs a live fluentd");
        assert!(err.to_string().contains("stale pid file"), "{err}");
        let resumed = StepEnv {
            resumed: true,
            ..StepEnv::test(&ctx)
        };
        let done = s.run(&resumed).await.expect("gone after the signal");
        assert!(done.contains("not running any more"), "{done}");
        std::fs::write(buf.join("buffer.q1.log"), "x").expect("chunk");
        let err = s.run(&resumed).await.expect_err("chunks left");
        assert!(err.to_string().contains("still holds 1 chunk"), "{err}");
    }

    #[test]
    fn buffer_path_is_read_as_fluentd_writes_it() {
        // Before: only `buffer.*.log` in a directory counted, and an unreadable path was
        // "empty", so these all read as flushed while chunks waited.
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for f in [
            "s3.b5f1e2.log",
            "s3.b5f1e2.log.meta",
            "s3.q77aa.log",
            "app.b1234",
            "other.b1.log",
            "buffer.b9.chunk",
        ] {
            std::fs::write(d.join(f), "x").expect("write");
        }
        let names = |b: BufferChunks| -> Vec<String> {
            let mut v: Vec<String> = b
                .scan_now()
                .expect("readable")
                .iter()
                .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let at = |p: &str| d.join(p).to_str().expect("utf8").to_string();
        // `prefix.*.suffix`, as in fluentd's `path /var/log/fluent/buf/s3.*.log`.
        assert_eq!(
            names(BufferChunks::resolve(&at("s3.*.log"), ".log")),
            ["s3.b5f1e2.log", "s3.q77aa.log"]
        );
        // `prefix.*` takes path_suffix; a plain file name becomes `name.*suffix`.
        assert_eq!(
            names(BufferChunks::resolve(&at("app.*"), "")),
            ["app.b1234"]
        );
        // A path that does not exist and has no `.*` is a directory to buf_file.
        assert!(BufferChunks::resolve(&at("s3"), ".log").recursive);
        // An existing file that is not a directory becomes `name.*suffix`.
        std::fs::write(d.join("s3"), "").expect("write");
        assert_eq!(
            names(BufferChunks::resolve(&at("s3"), ".log")),
            ["s3.b5f1e2.log", "s3.q77aa.log"]
        );
        // A directory with a non-default path_suffix.
        assert_eq!(
            names(BufferChunks::resolve(&at(""), ".chunk")),
            ["buffer.b9.chunk"]
        );
        // A directory that does not exist is an error that names it, not an empty buffer.
        let err = BufferChunks::resolve(&at("missing"), ".log")
            .scan_now()
            .expect_err("unreadable");
        assert!(err.contains("missing"), "{err}");
    }
}
