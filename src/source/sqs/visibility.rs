//! Deleting, releasing and holding messages, and keeping this instance's own message out of
//! sight while its pipeline runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, Message};
use tracing::{debug, info, warn};

use super::{SqsSource, FREE_RELEASES, HOLD_MAX, HOLD_MIN_AGE};
use crate::event::{LifecycleEvent, Transition};
use crate::handler::Handler;

/// Deletes a message by its receipt handle; false (and a log line) when that failed.
async fn delete(client: &aws_sdk_sqs::Client, queue: &str, m: &Message) -> bool {
    let r = client
        .delete_message()
        .queue_url(queue)
        .receipt_handle(m.receipt_handle().unwrap_or_default())
        .send()
        .await;
    match r {
        Ok(_) => true,
        Err(e) => {
            warn!(message_id = %m.message_id().unwrap_or("-"), error = %DisplayErrorContext(&e), "DeleteMessage failed; the message will be received again and recognised");
            false
        }
    }
}

/// How often the journal is read while another pipeline runs this instance's action.
const BUSY_WATCH: Duration = Duration::from_secs(1);

impl SqsSource {
    /// Deletes a message by its receipt handle; false (and a log line) when that failed.
    pub(super) async fn delete(&self, m: &Message) -> bool {
        delete(&self.client, &self.cfg.queue_url, m).await
    }

    /// How long to keep a message that is not ours out of our way when releasing it: not at all
    /// while it is younger than [`HOLD_MIN_AGE`], nor the first [`FREE_RELEASES`] times this
    /// instance sees it (its owner, if alive, gets it
    /// quickly), then 1, 2, 4… s up to [`HOLD_MAX`], so that a queue full of messages nobody
    /// takes (dead instances', another group's) cannot keep this instance receiving the same
    /// few while its own message waits behind them.
    pub(super) fn hold(&mut self, id: &str, sent: Option<SystemTime>, now: SystemTime) -> i32 {
        let e = self
            .seen
            .entry(id.to_string())
            .or_insert((Instant::now(), 0));
        e.0 = Instant::now();
        e.1 += 1;
        // A fresh message passes through about as many instances as the fleet has before its
        // owner gets it: holding it then only delays the owner. Only a message that has been
        // circulating for a while (its owner is gone) is held.
        let age = sent
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        if age < HOLD_MIN_AGE {
            return 0;
        }
        let secs = match e.1.checked_sub(FREE_RELEASES + 1) {
            None => 0,
            Some(n) => 1u64 << n.min(6),
        };
        secs.min(HOLD_MAX.as_secs())
            .min(self.cfg.visibility_timeout.as_secs()) as i32
    }

    /// Makes messages visible again (at once, or after their hold), in batches of ten; returns
    /// how many succeeded.
    pub(super) async fn release(&self, msgs: &[(Message, i32)]) -> usize {
        let mut ok = 0;
        for chunk in msgs.chunks(10) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, (m, hold))| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle().unwrap_or_default())
                        .visibility_timeout(*hold)
                        .build()
                        .ok()
                })
                .collect();
            let r = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.cfg.queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
            match r {
                Ok(out) => {
                    ok += out.successful().len();
                    for f in out.failed() {
                        let id = f
                            .id()
                            .parse::<usize>()
                            .ok()
                            .and_then(|i| chunk.get(i))
                            .map(|(m, _)| m)
                            .and_then(|m| m.message_id())
                            .unwrap_or("-");
                        warn!(message_id = %id, code = %f.code(), error = f.message().unwrap_or_default(), "could not release message; it reappears after its visibility timeout");
                    }
                }
                Err(e) => {
                    warn!(count = chunk.len(), error = %DisplayErrorContext(&e), "ChangeMessageVisibilityBatch failed; the messages reappear after their visibility timeout")
                }
            }
        }
        ok
    }

    /// This instance's message whose action another pipeline runs (the metadata source, a
    /// `once`): kept out of sight while that runs, and deleted as soon as the journal shows the
    /// action completed, while the instance is still there (after completion it may be powered
    /// off within seconds, and its message would circulate among the survivors). If that
    /// pipeline ends without completing it, the message is released at once. Costs no AWS call
    /// but the visibility extensions and the final delete; `done` is set when the deleted
    /// message ended this instance's termination.
    pub(super) fn watch_busy(
        &self,
        handler: &Handler,
        m: Message,
        ev: &LifecycleEvent,
        done: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<()> {
        let client = self.client.clone();
        let queue = self.cfg.queue_url.clone();
        let handler = handler.clone();
        let (instance, hook, transition) = (
            ev.instance_id.clone(),
            ev.hook_name.clone(),
            ev.transition.clone(),
        );
        let departure = ev.transition == Transition::Terminating && !ev.to_warm_pool();
        let vt = self.cfg.visibility_timeout;
        let extend_every = (vt / 3).max(Duration::from_secs(1));
        tokio::spawn(async move {
            let handle = m.receipt_handle().unwrap_or_default().to_string();
            let id = m.message_id().unwrap_or("-").to_string();
            let mut extended = Instant::now();
            // Never longer than an action can live.
            let until = Instant::now() + Duration::from_secs(48 * 3600);
            while Instant::now() < until {
                tokio::time::sleep(BUSY_WATCH).await;
                if handler.completed(&instance, &hook, &transition) {
                    if delete(&client, &queue, &m).await {
                        info!(message_id = %id, "the action was completed by another pipeline; its notification is deleted");
                        if departure {
                            done.store(true, Ordering::Relaxed);
                        }
                    }
                    return;
                }
                let visibility = match handler.is_busy(&instance, &hook, &transition) {
                    // Ended without completing it: back to the queue (and to this instance).
                    false => Some(0),
                    true if extended.elapsed() >= extend_every => Some(vt.as_secs() as i32),
                    true => None,
                };
                if let Some(v) = visibility {
                    let r = client
                        .change_message_visibility()
                        .queue_url(&queue)
                        .receipt_handle(&handle)
                        .visibility_timeout(v)
                        .send()
                        .await;
                    if let Err(e) = r {
                        warn!(message_id = %id, error = %DisplayErrorContext(&e), "could not change the message's visibility");
                    }
                    extended = Instant::now();
                    if v == 0 {
                        debug!(message_id = %id, "the other pipeline ended without completing the action; the message is back in the queue");
                        return;
                    }
                }
            }
        })
    }

    /// Keeps a message invisible while its pipeline runs, so that no other instance takes it.
    pub(super) fn keep_invisible(&self, m: &Message) -> tokio::task::JoinHandle<()> {
        let client = self.client.clone();
        let queue = self.cfg.queue_url.clone();
        let handle = m.receipt_handle().unwrap_or_default().to_string();
        let id = m.message_id().unwrap_or("-").to_string();
        let vt = self.cfg.visibility_timeout;
        let every = (vt / 3).max(Duration::from_millis(500));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let r = client
                    .change_message_visibility()
                    .queue_url(&queue)
                    .receipt_handle(&handle)
                    .visibility_timeout(vt.as_secs() as i32)
                    .send()
                    .await;
                if let Err(e) = r {
                    warn!(message_id = %id, error = %DisplayErrorContext(&e), "could not extend the message's visibility");
                }
            }
        })
    }
}
