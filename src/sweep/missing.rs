//! What the sweep remembers between runs, in the state directory, written atomically:
//! - when it first saw a host's instance missing from EC2, for hosts whose API gives no creation
//!   time (Zabbix): `sweep-missing.json`;
//! - which instances (and agent IPs) EC2 in this region and account showed alive:
//!   `sweep-alive.json`. "Not known to EC2" proves an instance gone only for one of those
//!   (design §6): EC2 answers for its own region and account only, so another region's or
//!   account's live instance looks exactly like a forgotten dead one.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The record's file name in the state directory.
pub const FILE: &str = "sweep-missing.json";
/// The file of instances (and IPs) seen alive.
pub const ALIVE_FILE: &str = "sweep-alive.json";

/// Host key (`service:id`) → first seen missing, in seconds since the epoch.
pub struct Missing {
    path: PathBuf,
    since: BTreeMap<String, u64>,
}

impl Missing {
    /// Reads the record; a missing or unreadable one starts empty (hosts then wait longer).
    pub fn load(state_dir: &Path) -> Self {
        Self::load_file(state_dir, FILE)
    }

    /// Reads the record of instances seen alive (same form: key → first seen, Unix seconds).
    pub fn load_alive(state_dir: &Path) -> Self {
        Self::load_file(state_dir, ALIVE_FILE)
    }

    fn load_file(state_dir: &Path, file: &str) -> Self {
        let path = state_dir.join(file);
        let since = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "the sweep's record is not readable; starting it again");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        Self { path, since }
    }

    /// Notes `key` missing at `now`, unless it was noted before.
    pub fn first_seen_missing(&mut self, key: &str, now: SystemTime) {
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.since.entry(key.to_string()).or_insert(secs);
    }

    /// When `key` was first seen missing.
    pub fn get(&self, key: &str) -> Option<SystemTime> {
        self.since
            .get(key)
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(*s))
    }

    /// Forgets `key` (its instance is back, or its host was removed).
    pub fn forget(&mut self, key: &str) {
        self.since.remove(key);
    }

    /// Forgets every host not in `keys` (gone from the monitoring service).
    pub fn keep_only(&mut self, keys: &[String]) {
        self.since.retain(|k, _| keys.contains(k));
    }

    /// Writes the record (write, fsync, rename).
    pub fn save(&self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            // As the journal makes it: only root reads the state directory.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let mut f = crate::journal::create_new(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&self.since).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}
