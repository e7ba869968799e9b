//! The journal: one small JSON file per lifecycle action under `state_dir/actions/`, recording
//! which steps finished and how, and whether the action was completed; and one lock file per
//! action, so that a daemon and a timer-run `lastcall once` never run the same pipeline twice.
//!
//! Writes are atomic (write a temporary file, fsync, rename, fsync the directory), so a crash at
//! any moment leaves either the old record or the new one.
//!
//! A journal that cannot be written (a full or read-only disk, a common reason an instance is
//! being replaced) never stops an action (design §5): the failure is logged as an error and the
//! pipeline carries on with its record in memory; only a resume after a restart is lost. Locks
//! are then held within this process. A write that does not return (a hung disk: an impaired EBS
//! volume leaves processes in D state, and such an instance is the kind Auto Scaling replaces) is
//! given up after [`WRITE_TIMEOUT`], and the journal is in memory from then on: otherwise the
//! pipeline would wait for ever while heartbeats keep the action alive for up to 48 h.
//!
//! Temporary files are created anew (`O_CREAT|O_EXCL`, which never follows a symbolic link), so
//! a state directory someone else could write to cannot make lastcall overwrite another file.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::autoscaling::ActionResult;

mod marks;

/// The transition under which spot interruption notices are journaled.
pub const SPOT_TRANSITION: &str = "ec2:SPOT_INSTANCE_INTERRUPTION";
/// The transition under which rebalance recommendations are journaled.
pub const REBALANCE_TRANSITION: &str = "ec2:REBALANCE_RECOMMENDATION";
/// A termination's transition, as records spell it.
const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";
/// Format version of a record.
const VERSION: u32 = 1;
/// The longest one journal write (two fsyncs and a rename) may take before the journal gives
/// up on the disk and carries on in memory.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A journal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The state directory could not be created.
    #[error("cannot create state directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A record or lock could not be read or written.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A record is not valid JSON of the expected form.
    #[error("journal record {} is corrupt: {message}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// How far a step got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Started, not known to have finished (the process died or is still running it).
    Started,
    /// Succeeded.
    Ok,
    /// Failed.
    Failed,
    /// Ran out of time.
    TimedOut,
    /// Not run (an earlier step aborted the pipeline, or the step does not apply).
    Skipped,
}

impl StepState {
    /// True when the step has a final outcome.
    pub fn is_final(self) -> bool {
        self != Self::Started
    }
}

/// One step's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based index in the config.
    pub index: usize,
    /// The step's name.
    pub name: String,
    /// How far it got.
    pub state: StepState,
    /// How many times it was started.
    pub attempts: u32,
    /// Run time of the last attempt, when it finished.
    pub elapsed_ms: Option<u64>,
    /// What happened, in a few words.
    pub detail: Option<String>,
}

/// How the action was completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// The result sent.
    pub result: ActionResult,
    /// Unix time of completion.
    pub at: u64,
    /// False when Auto Scaling said the action was already gone.
    pub accepted: bool,
}

/// One lifecycle action's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Format version.
    pub version: u32,
    /// Instance.
    pub instance_id: String,
    /// Group.
    pub group: String,
    /// Hook.
    pub hook: String,
    /// `autoscaling:EC2_INSTANCE_TERMINATING`, …
    pub transition: String,
    /// Token, when known.
    pub token: Option<String>,
    /// The hook's NotificationMetadata, for placeholders on resume.
    pub metadata: Option<String>,
    /// Where the event came from (`sqs`, …).
    pub trigger: String,
    /// The destination is the warm pool.
    #[serde(default)]
    pub warm_pool: bool,
    /// A termination of an instance in the warm pool.
    #[serde(default)]
    pub from_pool: bool,
    /// Unix time the record was created.
    pub created_at: u64,
    /// Steps that were started, in order.
    pub steps: Vec<StepRecord>,
    /// Set once the action is completed.
    pub completion: Option<Completion>,
    /// Auto Scaling accepted a heartbeat with the record's token: the token is the action's.
    #[serde(default)]
    pub confirmed: bool,
}

impl Record {
    /// A fresh record.
    pub fn new(
        instance_id: &str,
        group: &str,
        hook: &str,
        transition: &str,
        token: Option<&str>,
        metadata: Option<&str>,
        trigger: &str,
    ) -> Self {
        Self {
            version: VERSION,
            instance_id: instance_id.into(),
            group: group.into(),
            hook: hook.into(),
            transition: transition.into(),
            token: token.map(str::to_string),
            metadata: metadata.map(str::to_string),
            trigger: trigger.into(),
            warm_pool: false,
            from_pool: false,
            created_at: unix_now(),
            steps: Vec::new(),
            completion: None,
            confirmed: false,
        }
    }

    /// The entry for the step named `name`, if it was started. Steps are matched by name
    /// (unique in a config), so that a config changed between a crash and the resume cannot make
    /// one step's outcome stand for another's.
    pub fn step_named(&self, name: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// The entry for the step named `name` (now at `index`), created if needed.
    pub fn step_mut(&mut self, index: usize, name: &str) -> &mut StepRecord {
        match self.steps.iter_mut().find(|s| s.name == name) {
            Some(s) => s.index = index,
            None => self.steps.push(StepRecord {
                index,
                name: name.to_string(),
                state: StepState::Started,
                attempts: 0,
                elapsed_ms: None,
                detail: None,
            }),
        }
        self.steps.sort_by_key(|s| s.index);
        let pos = self
            .steps
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_default();
        &mut self.steps[pos]
    }

    /// The journal key of this record.
    pub fn key(&self) -> String {
        key(&self.instance_id, &self.hook, &self.transition)
    }
}

/// The file-name key of an action: instance, hook and transition (one action of each per
/// instance at a time). Hook names may hold `/`, which is escaped.
pub fn key(instance_id: &str, hook: &str, transition: &str) -> String {
    let t = transition.rsplit(':').next().unwrap_or(transition);
    let esc = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c.to_string()
                } else {
                    format!("%{:02X}", c as u32 & 0xff)
                }
            })
            .collect()
    };
    format!("{}.{}.{}", esc(instance_id), esc(hook), esc(t))
}

/// Creates `path` anew for writing, mode 0600, removing a left-over file first: `O_EXCL` never
/// follows a symbolic link (a link planted there by someone else is removed, not written
/// through).
pub fn create_new(path: &Path) -> std::io::Result<File> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
}

/// The seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An exclusive claim on one action; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct ActionLock {
    _file: Option<File>,
    key: String,
    held: Arc<Mutex<HashSet<String>>>,
}

impl Drop for ActionLock {
    fn drop(&mut self) {
        if let Ok(mut h) = self.held.lock() {
            h.remove(&self.key);
        }
    }
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
    /// False when the state directory could not be created, or a write hung: records live in
    /// memory only.
    disk: Arc<AtomicBool>,
    /// How long a write may take (see [`WRITE_TIMEOUT`]).
    write_timeout: Duration,
    /// Actions claimed by this process (the lock files cover other processes).
    held: Arc<Mutex<HashSet<String>>>,
}

impl Journal {
    /// Opens the journal, or, when the state directory cannot be used, a journal that keeps
    /// nothing (with an error in the log): the steps still run and actions are still completed.
    pub fn open_or_memory(state_dir: &Path) -> Self {
        match Self::open(state_dir) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "the journal cannot be used; carrying on in memory: steps run and actions are completed, but an action interrupted by a restart cannot be resumed");
                Self {
                    dir: state_dir.join("actions"),
                    disk: Arc::new(AtomicBool::new(false)),
                    write_timeout: WRITE_TIMEOUT,
                    held: Arc::default(),
                }
            }
        }
    }

    /// Opens (and creates, mode 0700) `state_dir/actions`.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let dir = state_dir.join("actions");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| JournalError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        Ok(Self {
            dir,
            disk: Arc::new(AtomicBool::new(true)),
            write_timeout: WRITE_TIMEOUT,
            held: Arc::default(),
        })
    }

    /// The same journal with another write timeout.
    #[cfg(test)]
    fn with_write_timeout(mut self, t: Duration) -> Self {
        self.write_timeout = t;
        self
    }

    /// True while records are kept on disk.
    fn disk(&self) -> bool {
        self.disk.load(Ordering::Relaxed)
    }

    fn path(&self, key: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{key}.{ext}"))
    }

    /// Takes the action's lock without waiting; `None` when another task or process holds it.
    /// When the lock file cannot be used, the claim holds within this process only (logged).
    pub fn try_lock(&self, key: &str) -> Option<ActionLock> {
        {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            if !held.insert(key.to_string()) {
                return None;
            }
        }
        let mut lock = ActionLock {
            _file: None,
            key: key.to_string(),
            held: self.held.clone(),
        };
        if !self.disk() {
            return Some(lock);
        }
        let path = self.path(key, "lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path);
        match file.map(|f| (f.try_lock(), f)) {
            Ok((Ok(()), f)) => {
                lock._file = Some(f);
                Some(lock)
            }
            Ok((Err(TryLockError::WouldBlock), _)) => None,
            Ok((Err(TryLockError::Error(e)), _)) | Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot take the action's lock file; holding the action within this process only");
                Some(lock)
            }
        }
    }

    /// Reads an action's record.
    pub fn load(&self, key: &str) -> Result<Option<Record>, JournalError> {
        if !self.disk() {
            return Ok(None);
        }
        let path = self.path(key, "json");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(JournalError::Io {
                    op: "read",
                    path,
                    source,
                })
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| JournalError::Corrupt {
                path,
                message: e.to_string(),
            })
    }

    /// Writes an action's record atomically, off the async thread: two fsyncs can take long on
    /// a busy or failing disk, and that thread also runs heartbeats and visibility extensions.
    /// A failure is logged as an error and otherwise ignored: the caller carries on with the
    /// record in memory (a full or read-only disk must not stop an action).
    pub async fn save(&self, rec: &Record) {
        if !self.disk() {
            return;
        }
        let (j, r) = (self.clone(), rec.clone());
        if let Err(e) = self.blocking(move || j.save_now(&r)).await {
            tracing::error!(error = %e, "cannot write the journal; carrying on in memory");
        }
    }

    /// Moves a finished record out of the way (see [`Journal::archive_now`]), off the async
    /// thread; a failure is logged.
    pub async fn archive(&self, rec: &Record) {
        if !self.disk() {
            return;
        }
        let (j, r) = (self.clone(), rec.clone());
        if let Err(e) = self.blocking(move || j.archive_now(&r)).await {
            tracing::error!(error = %e, "cannot archive the finished journal record");
        }
    }

    /// Runs a write on a blocking thread, for at most the write timeout: a write that has not
    /// returned by then (a hung disk) is left behind, and the journal keeps records in memory
    /// from then on (logged once, as an error).
    async fn blocking(
        &self,
        f: impl FnOnce() -> Result<(), JournalError> + Send + 'static,
    ) -> Result<(), JournalError> {
        let write = tokio::task::spawn_blocking(f);
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(r) => r.map_err(|e| JournalError::Io {
                op: "write to",
                path: self.dir.clone(),
                source: std::io::Error::other(e),
            })?,
            Err(_) => {
                if self.disk.swap(false, Ordering::Relaxed) {
                    tracing::error!(dir = %self.dir.display(), timeout_s = self.write_timeout.as_secs(),
                        "a journal write has not returned (a hung disk?); the journal is kept in memory from now on: steps run and the action is completed, but a restart cannot resume it");
                }
                Err(JournalError::Io {
                    op: "write to",
                    path: self.dir.clone(),
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                })
            }
        }
    }

    /// Writes an action's record atomically, on this thread.
    pub fn save_now(&self, rec: &Record) -> Result<(), JournalError> {
        let path = self.path(&rec.key(), "json");
        let tmp = self.path(&rec.key(), "json.tmp");
        let io = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| JournalError::Io {
                op,
                path: p,
                source,
            }
        };
        let body = serde_json::to_vec_pretty(rec).map_err(|e| JournalError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut f = create_new(&tmp).map_err(io("create", &tmp))?;
        f.write_all(&body).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", &self.dir))?;
        Ok(())
    }

    /// Moves a finished record out of the way, for actions that can happen again to the same
    /// instance (launches and warm-pool returns): the next one starts afresh.
    pub fn archive_now(&self, rec: &Record) -> Result<(), JournalError> {
        let from = self.path(&rec.key(), "json");
        let to = self.path(&format!("{}.{}", rec.key(), unix_now()), "done");
        fs::rename(&from, &to).map_err(|source| JournalError::Io {
            op: "archive",
            path: from,
            source,
        })?;
        // Else a power loss could bring the live record back (and with it a finished action).
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| JournalError::Io {
                op: "fsync",
                path: self.dir.clone(),
                source,
            })
    }

    /// Every record of this instance that is not completed.
    pub fn incomplete(&self, instance_id: &str) -> Result<Vec<Record>, JournalError> {
        if !self.disk() {
            return Ok(Vec::new());
        }
        let entries = fs::read_dir(&self.dir).map_err(|source| JournalError::Io {
            op: "list",
            path: self.dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(key) = name.strip_suffix(".json") else {
                continue;
            };
            match self.load(key) {
                Ok(Some(r)) if r.instance_id == instance_id && r.completion.is_none() => {
                    out.push(r)
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "skipping unreadable journal record"),
            }
        }
        out.sort_by_key(|r| r.created_at);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Record {
        Record::new(
            "i-0123456789abcdef0",
            "web",
            "team/drain",
            "autoscaling:EC2_INSTANCE_TERMINATING",
            Some("602063c7-4a06-4a67-b8cf-87ccc33bdc86"),
            None,
            "sqs",
        )
    }

    #[test]
    fn keys_are_safe_file_names() {
        assert_eq!(
            rec().key(),
            "i-0123456789abcdef0.team%2Fdrain.EC2_INSTANCE_TERMINATING"
        );
    }

    #[test]
    fn records_round_trip_and_incomplete_ones_are_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path()).expect("open");
        let mut r = rec();
        r.step_mut(2, "b").state = StepState::Started;
        r.step_mut(1, "a").state = StepState::Ok;
        j.save_now(&r).expect("save");
        assert_eq!(j.load(&r.key()).expect("load"), Some(r.clone()));
        assert_eq!(r.steps.iter().map(|s| s.index).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(j.incomplete("i-0123456789abcdef0").expect("list").len(), 1);
        assert!(j.incomplete("i-00000000").expect("list").is_empty());
        r.completion = Some(Completion {
            result: ActionResult::Continue,
            at: unix_now(),
            accepted: true,
        });
        j.save_now(&r).expect("save");
        assert!(j
            .incomplete("i-0123456789abcdef0")
            .expect("list")
            .is_empty());
        assert!(!dir
            .path()
            .join("actions")
            .join(format!("{}.json.tmp", r.key()))
            .exists());
    }

    #[test]
    fn archived_actions_are_found_by_instance_transition_and_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path()).expect("open");
        let launch = "autoscaling:EC2_INSTANCE_LAUNCHING";
        let mut r = Record::new("i-0abc", "web", "team/up", launch, None, None, "imds");
        let before = unix_now();
        assert!(!j.archived_since("i-0abc", launch, before));
        j.save_now(&r).expect("save");
        assert!(
            !j.archived_since("i-0abc", launch, before),
            "not archived yet"
        );
        r.completion = Some(Completion {
            result: ActionResult::Continue,
            at: unix_now(),
            accepted: true,
        });
        j.archive_now(&r).expect("archive");
        assert!(j.archived_since("i-0abc", launch, before));
        assert!(
            !j.archived_since("i-0abc", launch, before + 3600),
            "too old"
        );
        assert!(
            !j.archived_since("i-0abd", launch, before),
            "another instance"
        );
        assert!(!j.archived_since("i-0abc", "autoscaling:EC2_INSTANCE_TERMINATING", before));
    }

    #[test]
    fn an_archived_action_is_found_by_its_token_once_completed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path()).expect("open");
        let launch = "autoscaling:EC2_INSTANCE_LAUNCHING";
        let token = "602063c7-4a06-4a67-b8cf-87ccc33bdc86";
        let mut r = Record::new("i-0abc", "web", "up", launch, Some(token), None, "sqs");
        let k = r.key();
        assert!(!j.archived_with_token(&k, token));
        // An unfinished record archived (an earlier action pushed aside) is not "done".
        j.save_now(&r).expect("save");
        j.archive_now(&r).expect("archive");
        assert!(!j.archived_with_token(&k, token), "archived unfinished");
        r.completion = Some(Completion {
            result: ActionResult::Continue,
            at: unix_now(),
            accepted: true,
        });
        j.save_now(&r).expect("save");
        j.archive_now(&r).expect("archive");
        assert!(j.archived_with_token(&k, token));
        assert!(!j.archived_with_token(&k, "7a1b0f4e-0000-4000-8000-000000000000"));
        let other = key("i-0abc", "up", "autoscaling:EC2_INSTANCE_TERMINATING");
        assert!(!j.archived_with_token(&other, token), "another transition");
    }

    #[test]
    fn a_lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path()).expect("open");
        let first = j.try_lock("k").expect("free");
        assert!(j.try_lock("k").is_none(), "second claim refused");
        // Another process (its own journal): the lock file refuses it.
        let other = Journal::open(dir.path()).expect("open");
        assert!(other.try_lock("k").is_none(), "refused across processes");
        drop(first);
        assert!(j.try_lock("k").is_some());
    }

    #[tokio::test]
    async fn a_journal_that_cannot_be_written_keeps_nothing_and_stops_nothing() {
        // A state directory under a regular file cannot be created (like a full or read-only
        // disk): before, no step ran and no action was completed.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("file"), "").expect("write");
        let j = Journal::open_or_memory(&dir.path().join("file/state"));
        let lock = j.try_lock("k").expect("claimed in memory");
        assert!(j.try_lock("k").is_none(), "still one claim per action");
        let r = Record::new("i-0abc", "g", "h", "t", None, None, "sqs");
        j.save(&r).await;
        assert_eq!(j.load(&r.key()).expect("load"), None);
        assert!(j.incomplete("i-0abc").expect("list").is_empty());
        drop(lock);
    }

    #[tokio::test]
    async fn a_write_that_hangs_is_given_up_and_the_journal_goes_on_in_memory() {
        // A hung disk: the write never returns. Before, save() waited for ever (and with it the
        // pipeline, while heartbeats kept the action alive).
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path())
            .expect("open")
            .with_write_timeout(Duration::from_millis(200));
        let hung = j.blocking(|| {
            std::thread::sleep(Duration::from_secs(5));
            Ok(())
        });
        let r = tokio::time::timeout(Duration::from_secs(2), hung).await;
        assert!(matches!(r, Ok(Err(JournalError::Io { .. }))), "{r:?}");
        // From then on in memory: saves return at once and keep nothing.
        let rec = rec();
        let t = std::time::Instant::now();
        j.save(&rec).await;
        assert!(t.elapsed() < Duration::from_millis(100));
        assert_eq!(j.load(&rec.key()).expect("load"), None);
        assert!(j.try_lock("other").is_some(), "claims still work");
    }

    #[test]
    fn a_planted_symbolic_link_is_never_written_through() {
        // `lastcall simulate` and a state directory others can write to: a link at the
        // temporary file's name must not make root overwrite its target.
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path()).expect("open");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").expect("write");
        let r = rec();
        let tmp = dir.path().join(format!("actions/{}.json.tmp", r.key()));
        std::os::unix::fs::symlink(&victim, &tmp).expect("symlink");
        j.save_now(&r).expect("save");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "precious");
        assert_eq!(j.load(&r.key()).expect("load"), Some(r));
    }

    #[test]
    fn corrupt_records_are_reported_not_panicked_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path()).expect("open");
        std::fs::write(dir.path().join("actions/x.json"), "{").expect("write");
        assert!(matches!(j.load("x"), Err(JournalError::Corrupt { .. })));
    }
}
