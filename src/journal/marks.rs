//! What the journal's directory says beyond one action's record: archived actions by time,
//! the "was in service" mark, and the steps done for this instance's departure.

use std::fs::{self, File};

use super::{key, Journal, StepState, SPOT_TRANSITION, TERMINATING};

impl Journal {
    /// True when an action of `instance_id` with this transition (e.g.
    /// `autoscaling:EC2_INSTANCE_LAUNCHING`) was completed and archived at or after `since`
    /// (Unix seconds), by whichever source. Only archived (repeatable) actions are found.
    pub fn archived_since(&self, instance_id: &str, transition: &str, since: u64) -> bool {
        // Archived names are `{instance}.{hook}.{transition}.{unix}.done`, each part escaped
        // by `key`, so none holds a dot.
        let probe = key(instance_id, "x", transition);
        let mut parts = probe.split('.');
        let (Some(inst), Some(_), Some(t)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return false;
        };
        entries.flatten().any(|e| {
            let name = e.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".done")) else {
                return false;
            };
            let p: Vec<&str> = stem.split('.').collect();
            matches!(p.as_slice(), [i, _, tr, at] if *i == inst && *tr == t
                && at.parse::<u64>().is_ok_and(|at| at >= since))
        })
    }

    /// True when an archived record of the action `key` (an instance, hook and transition) was
    /// completed with `token`: a duplicate of a launch or warm-pool notification handled before
    /// (SQS delivers at least once; a repeatable action's record is archived when it completes,
    /// so [`Journal::load`] no longer finds it). Lifecycle action tokens are UUIDs, one per action.
    pub fn archived_with_token(&self, key: &str, token: &str) -> bool {
        if !self.disk() {
            return false;
        }
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return false;
        };
        let prefix = format!("{key}.");
        entries.flatten().any(|e| {
            let name = e.file_name();
            let Some(n) = name.to_str() else {
                return false;
            };
            n.starts_with(&prefix)
                && n.ends_with(".done")
                && fs::read_to_string(e.path())
                    .ok()
                    .and_then(|t| serde_json::from_str::<super::Record>(&t).ok())
                    .is_some_and(|r| r.completion.is_some() && r.token.as_deref() == Some(token))
        })
    }

    /// Records (in the state directory, so that it survives restarts) that this instance was
    /// in service: a `Warmed:*` target state after that is a return to the warm pool, before it
    /// a launch into the pool.
    pub fn note_in_service(&self, instance_id: &str) {
        if self.disk() {
            let path = self.path(&key(instance_id, "", "in-service"), "mark");
            if !path.exists() {
                if let Err(e) = File::create(&path) {
                    tracing::warn!(file = %path.display(), error = %e, "cannot note that this instance is in service");
                }
            }
        }
    }

    /// True when [`Journal::note_in_service`] was called for this instance.
    pub fn was_in_service(&self, instance_id: &str) -> bool {
        self.disk()
            && self
                .path(&key(instance_id, "", "in-service"), "mark")
                .exists()
    }

    /// The names of the steps that succeeded for this instance's departure under any trigger (a
    /// termination's hook, not a warm-pool return; a spot interruption notice that terminates),
    /// so that another trigger of the same departure does not run them again.
    pub fn done_for_departure(&self, instance_id: &str) -> std::collections::BTreeSet<String> {
        let mut done = std::collections::BTreeSet::new();
        if !self.disk() {
            return done;
        }
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return done;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let Ok(Some(r)) = self.load(key) else {
                continue;
            };
            let departure = (r.transition == TERMINATING && !r.warm_pool)
                || (r.transition == SPOT_TRANSITION && r.metadata.as_deref() == Some("terminate"));
            if r.instance_id == instance_id && departure {
                done.extend(
                    r.steps
                        .iter()
                        .filter(|s| s.state == StepState::Ok)
                        .map(|s| s.name.clone()),
                );
            }
        }
        done
    }
}
