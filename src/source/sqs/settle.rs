//! What becomes of this instance's own message once its action was handled: deleted when the
//! action is over, kept for another look when it was not seen waiting (with back-off), watched
//! while another pipeline runs it, released when it is not lastcall's to complete.

use std::time::Duration;

use aws_sdk_sqs::types::Message;
use tracing::{debug, info, warn};

use super::{sent_at, PollReport, SqsSource};
use crate::event::{LifecycleEvent, Transition};
use crate::handler::{Handler, Outcome};

/// Slack past a hook's GlobalTimeout before this instance's own unverified message is taken
/// for one whose action cannot be alive (clocks, and the time the notification took).
const OUTLIVED_SLACK: Duration = Duration::from_secs(300);

impl SqsSource {
    /// Deletes, keeps, watches or releases this instance's message `m` by how its action was
    /// `handled`.
    pub(super) async fn settle(
        &mut self,
        handler: &Handler,
        m: Message,
        ev: &LifecycleEvent,
        handled: &Outcome,
        report: &mut PollReport,
    ) {
        let id = m.message_id().unwrap_or("-").to_string();
        match handled {
            Outcome::Completed { .. } | Outcome::AlreadyCompleted => {
                if self.delete(&m).await {
                    report.deleted += 1;
                    // A termination's action, however it was completed (or timed out),
                    // ends with the instance terminated; a warm-pool return does not.
                    if ev.transition == Transition::Terminating && !ev.to_warm_pool() {
                        self.departed = true;
                    }
                } else {
                    report.left += 1;
                }
            }
            // Not (yet) seen waiting: ask again soon, with back-off, rather than after the
            // whole visibility timeout, which can outlast the hook (design §2.1). Busy: another
            // pipeline (the metadata source, a `once`) runs the action; once it is completed
            // the message must come back to be deleted while this instance is still there,
            // not after the visibility timeout, when the instance may be gone and its
            // message would circulate among the others until `stale_after`.
            // Busy (the daemon only; `once` exits and cannot watch): another pipeline runs
            // it; watched, and deleted the moment that pipeline completes it.
            Outcome::Busy if self.deferred.is_none() => {
                self.watched.retain(|_, t| !t.is_finished());
                if !self.watched.contains_key(&id) {
                    debug!(message_id = %id, "another pipeline runs this instance's action; its notification is kept out of sight and deleted once the action is completed");
                    let t = self.watch_busy(handler, m, ev, self.done_elsewhere.clone());
                    self.watched.insert(id.clone(), t);
                }
            }
            Outcome::NotWaiting { .. } if self.outlived(handler, &m, ev).await => {
                if self.delete(&m).await {
                    report.deleted += 1;
                } else {
                    report.left += 1;
                }
            }
            Outcome::NotWaiting { .. } | Outcome::Busy => {
                let again = self.again(&id, 0);
                info!(message_id = %id, retry_in_s = again.as_secs(), "this instance's notification is kept; it is looked at again soon");
                if self.release(&[(m, again.as_secs() as i32)]).await == 0 {
                    report.left += 1;
                }
            }
            // No live action has the message's token: nothing ran, nothing is recorded, and
            // keeping it would only bring it back.
            Outcome::Refused => {
                if self.delete(&m).await {
                    report.deleted += 1;
                } else {
                    report.left += 1;
                }
            }
            // Not lastcall's to complete or delete: its hook's owner (or timeout) ends it.
            // Released at once the first time (its owner may be another consumer of this
            // queue), then held 5, 10, 20… up to 60 s: this instance gets it back at once
            // every time (the journal answers), and without a hold it would receive it at
            // round-trip speed, driving it to the dead-letter queue before its owner sees
            // it (every receive counts towards maxReceiveCount).
            Outcome::Unowned { .. } => {
                let hold = self.again(&id, 1);
                report.not_ours += 1;
                if self.release(&[(m, hold.as_secs() as i32)]).await == 0 {
                    report.left += 1;
                }
            }
            Outcome::Interrupted | Outcome::Failed { .. } => report.left += 1,
        }
        if !matches!(
            handled,
            Outcome::NotWaiting { .. } | Outcome::Busy | Outcome::Unowned { .. }
        ) {
            self.kept.remove(&id);
        }
    }

    /// True when this instance's message is older than its hook's GlobalTimeout (with
    /// [`OUTLIVED_SLACK`]): no action of it can be alive (GlobalTimeout is 100 × HeartbeatTimeout
    /// or 48 h, whichever is smaller; Auto Scaling API reference, `LifecycleHook`), so a message
    /// that was never seen waiting is of an action that is over (a duplicate of one completed
    /// elsewhere, or one that timed out). Without this it was kept until `stale_after` (48 h).
    async fn outlived(&self, handler: &Handler, m: &Message, ev: &LifecycleEvent) -> bool {
        let Some(sent) = sent_at(m) else {
            return false;
        };
        let age = crate::clock::aws_now()
            .duration_since(sent)
            .unwrap_or_default();
        let hook = handler
            .owned_hook(&ev.group, &ev.transition, Some(&ev.hook_name))
            .await;
        let global = match hook {
            Ok(Ok(h)) if h.name == ev.hook_name => h.timeouts.map(|t| t.global),
            _ => None,
        };
        match global {
            Some(g) if age > g + OUTLIVED_SLACK => {
                warn!(message_id = %m.message_id().unwrap_or("-"), age_s = age.as_secs(), global_timeout_s = g.as_secs(),
                    "this instance's notification is older than its hook's GlobalTimeout and its action was not seen waiting: the action is over; deleting it");
                true
            }
            _ => false,
        }
    }
}
