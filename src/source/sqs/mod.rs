//! The shared-queue source: every instance of the group long-polls one SQS queue and takes only
//! what is its own.
//!
//! Routing of each message (design §2.1), each with a log line that names the message id:
//! - `autoscaling:TEST_NOTIFICATION`: deleted.
//! - an AWS notification no lifecycle action follows (`autoscaling:EC2_INSTANCE_TERMINATE`,
//!   EventBridge "EC2 Instance Terminate Successful", a spot interruption warning): deleted,
//!   never acted on.
//! - older than `stale_after`: its action cannot be alive any more; deleted.
//! - another instance's, another hook's, or a launch with no launch steps: never deleted, never
//!   acted on; made visible again at once (batched `ChangeMessageVisibility` to 0) so that its
//!   owner gets it quickly.
//! - not parseable: left alone for the queue's redrive policy; it stays invisible for the
//!   visibility timeout, so it is not received again in a hot loop.
//! - this instance's termination: handled (verify, steps, complete), its visibility extended
//!   while that runs, and deleted only after the action is completed.
//!
//! Stepping aside: in a scale-in of M instances out of N, every one of the N long polls is a
//! place a leaving instance's message can land, so each message passes through about N/2 wrong
//! instances before its owner gets it (and each pass counts against a dead-letter
//! `maxReceiveCount`). An instance that receives others' messages therefore asks instance
//! metadata whether it is itself leaving. When `target-lifecycle-state` says it is staying
//! (`InService`, `Standby`, `Detached`), it stops receiving for `[sqs] step_aside` (30 s),
//! reading the target state every [`STEP_ASIDE_WATCH`] meanwhile and returning to the queue as
//! soon as that changes. Leaving instances never step aside; when the state cannot be read
//! (no IMDS, 404 before the first transition) nobody does; with launch steps, not before this
//! instance's launch has been handled since it booted, since a launching instance also reads
//! `InService` (a warm-pool instance boots again for its next launch).
//!
//! Leaving the queue: once this instance's own termination is over (its action completed, not
//! to a warm pool, and its message deleted) the daemon stops receiving. The instance is going
//! away: each further receive only holds others' messages back from their owners, and a long
//! poll cut short by the shutdown is still served by SQS, which then hides what it took for the
//! visibility timeout (aws/aws-sdk-js#2350, aws/aws-sdk-java#2083). In a mass departure the
//! queue's consumers thin out as their terminations end, as the instances themselves do.

use std::collections::HashMap;
use std::time::{Duration, Instant, UNIX_EPOCH};

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use tracing::{debug, error, info, warn};

use crate::autoscaling::HookNames;
use crate::config::SqsConfig;
use crate::handler::{Action, Handler, HandlerError, Outcome};
use crate::shutdown::Shutdown;

mod aside;
mod own;
mod route;
mod settle;
mod visibility;

use own::Ownership;
pub use route::{route, Me, Route};

/// Messages asked for per receive (the API's maximum).
const BATCH: i32 = 10;
/// First pause after a failed receive; doubled up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Longest pause after failed receives.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a released message id is remembered (for log levels and holds).
const SEEN_TTL: Duration = Duration::from_secs(600);
/// How many times this instance releases a message that is not its own at once.
const FREE_RELEASES: u32 = 2;
/// A message younger than this is always released at once (see `hold`).
const HOLD_MIN_AGE: Duration = Duration::from_secs(60);
/// The longest a message that is not ours is kept out of this instance's way.
const HOLD_MAX: Duration = Duration::from_secs(60);
/// The first pause after a receive that brought only others' messages (and no stepping aside);
/// doubled each time in a row up to [`SPIN_MAX`].
const SPIN_FIRST: Duration = Duration::from_millis(50);
/// The longest such pause: short, since this instance's own message may be next.
const SPIN_MAX: Duration = Duration::from_secs(1);
/// The most receives one `lastcall once` makes.
const ONCE_ROUNDS: usize = 10;
/// When this instance's action was not seen waiting, its message comes back after this, doubled
/// each time up to [`NOT_WAITING_MAX`].
const NOT_WAITING_FIRST: Duration = Duration::from_secs(5);
/// The longest this instance's own unverified message is kept out of sight.
const NOT_WAITING_MAX: Duration = Duration::from_secs(60);
/// How often the target lifecycle state is read while stepping aside.
pub const STEP_ASIDE_WATCH: Duration = Duration::from_millis(250);
/// Target lifecycle states of an instance that is staying in its group.
const STAYING: [&str; 3] = ["InService", "Standby", "Detached"];

/// Unix time since which a handled launch lets this instance step aside: the machine's boot
/// (G13: a daemon restarted after its launch, say by a config change, steps aside again; an
/// instance started from a warm pool boots again, and its next launch is still to come), or
/// this process's start when the boot time cannot be read.
static LAUNCHES_SINCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// The visibility a receive asks for (or `visibility_timeout`, if shorter). This instance's own
/// messages, and those it leaves for the redrive policy, are then set to `visibility_timeout`
/// at once; others' are released at once anyway. A receive cut short by a shutdown or a reload
/// is still served by SQS (aws/aws-sdk-js#2350): what it took stays hidden this long, not for the
/// whole visibility timeout, during which another instance's action could expire (G17, F24).
const RECEIVE_VISIBILITY: Duration = Duration::from_secs(30);

/// How long a target lifecycle state read to decide on holds is trusted.
const LEAVING_FRESH: Duration = Duration::from_secs(1);

/// What one receive did.
#[derive(Debug, Default)]
pub struct PollReport {
    /// Messages received.
    pub received: usize,
    /// Messages deleted (tests, stale, and completed actions).
    pub deleted: usize,
    /// Messages made visible again for their owners.
    pub released: usize,
    /// Messages left for redrive or for a later attempt.
    pub left: usize,
    /// Messages that belong to another instance, another hook or an unhandled launch.
    pub not_ours: usize,
    /// Of those, the ones this instance had not released before.
    pub not_ours_new: usize,
    /// This instance's actions and how they ended.
    pub handled: Vec<Outcome>,
}

/// An SQS call failed.
#[derive(Debug, thiserror::Error)]
pub enum SqsError {
    /// `ReceiveMessage` failed.
    #[error("ReceiveMessage on {queue} failed: {message}")]
    Receive {
        /// The queue URL.
        queue: String,
        /// The error with its causes.
        message: String,
    },
    /// Handling this instance's action failed.
    #[error(transparent)]
    Handler(#[from] HandlerError),
}

/// The shared-queue source.
#[derive(Debug)]
pub struct SqsSource {
    client: aws_sdk_sqs::Client,
    cfg: SqsConfig,
    me: String,
    hooks: HookNames,
    launch: bool,
    /// Messages this instance released: when last, and how many times.
    seen: HashMap<String, (Instant, u32)>,
    /// No launch of this instance is pending (no launch steps, or the launch was handled).
    launch_settled: bool,
    /// This instance's messages kept for another look (their action was not seen waiting yet,
    /// or another pipeline was handling it): how many times in a row.
    kept: HashMap<String, u32>,
    /// Others' messages kept out of sight until `poll_all` ends (`once` only).
    deferred: Option<Vec<(Message, i32)>>,
    /// This instance's termination is over and its message deleted: nothing more to receive.
    departed: bool,
    /// Whether instance metadata said this instance is leaving its group, and when it was read.
    leaving: Option<(Instant, bool)>,
    /// Set when another pipeline completed this instance's termination and its message was
    /// deleted (see `watch_busy`).
    done_elsewhere: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Messages of this instance whose action another pipeline runs, watched (by message id).
    watched: HashMap<String, tokio::task::JoinHandle<()>>,
}

impl SqsSource {
    /// A source for `cfg.queue_url`, acting for instance `me`; only the named `hooks` are
    /// completed, when named; launches are handled when `launch` (launch steps are configured).
    pub fn new(
        client: aws_sdk_sqs::Client,
        cfg: SqsConfig,
        me: String,
        hooks: HookNames,
        launch: bool,
    ) -> Self {
        Self {
            client,
            cfg,
            me,
            hooks,
            launch,
            seen: HashMap::new(),
            launch_settled: !launch,
            kept: HashMap::new(),
            deferred: None,
            departed: false,
            leaving: None,
            done_elsewhere: std::sync::Arc::default(),
            watched: HashMap::new(),
        }
    }

    /// A source for an instance whose termination this process has already seen through (a
    /// reload after it): it receives nothing.
    pub fn departed(mut self, departed: bool) -> Self {
        self.departed = departed;
        self
    }

    /// Long-polls until shutdown (or until this instance's termination is over), surviving
    /// every error; true when this instance's termination is over.
    pub async fn run(mut self, handler: &Handler, mut shutdown: Shutdown) -> bool {
        let started = *LAUNCHES_SINCE
            .get_or_init(|| aside::boot_time().unwrap_or_else(crate::journal::unix_now));
        if self.departed {
            info!(queue = %self.cfg.queue_url, "this instance's termination is over; not receiving from the lifecycle queue again");
            shutdown.requested().await;
            return true;
        }
        info!(queue = %self.cfg.queue_url, instance_id = %self.me,
            step_aside_s = self.cfg.step_aside.as_secs(), "polling the lifecycle queue");
        let mut backoff = BACKOFF_FIRST;
        // Receives in a row that brought nothing but others' messages.
        let mut spin: u32 = 0;
        while !shutdown.is_requested() {
            self.departed |= self
                .done_elsewhere
                .load(std::sync::atomic::Ordering::Relaxed);
            if self.departed {
                info!(queue = %self.cfg.queue_url, "this instance's termination is over; no more receiving from the lifecycle queue (its receives would only hold others' messages back)");
                shutdown.requested().await;
                return true;
            }
            let wait = self.cfg.wait_time;
            // Only the receive is cut short by shutdown: handling what was received is not,
            // so that a running step finishes and the journal stays consistent.
            let received = tokio::select! {
                r = self.receive(wait) => r,
                _ = shutdown.requested() => break,
            };
            let r = match received {
                Ok(messages) => self.process(handler, messages).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(report) => {
                    backoff = BACKOFF_FIRST;
                    if report.handled.contains(&Outcome::Interrupted) {
                        break;
                    }
                    // Others' messages and nothing of this instance's (unparseable ones stay
                    // out of sight, so they cannot make it spin). A notification of this
                    // instance that no hook of lastcall's owns (several hooks, none named) is
                    // as good as another's once its steps ran: released, not handled.
                    let only_others = report.not_ours > 0
                        && report
                            .handled
                            .iter()
                            .all(|h| matches!(h, Outcome::Unowned { .. }));
                    let aside = match only_others && !self.cfg.step_aside.is_zero() {
                        true => {
                            self.step_aside(
                                handler,
                                started,
                                report.not_ours_new > 0,
                                &mut shutdown,
                            )
                            .await
                        }
                        false => aside::Aside::Stayed,
                    };
                    match aside {
                        aside::Aside::Shutdown => break,
                        // Nothing but others' messages, and this instance could not step aside
                        // (it is leaving, or cannot tell): without a pause it would receive and
                        // release them at round-trip speed, driving every message's receive
                        // count towards a dead-letter maxReceiveCount.
                        aside::Aside::Stayed if only_others => {
                            spin += 1;
                            let pause = SPIN_FIRST
                                .saturating_mul(1 << (spin - 1).min(8))
                                .min(SPIN_MAX);
                            debug!(
                                pause_ms = pause.as_millis() as u64,
                                "only others' messages; pausing before the next receive"
                            );
                            tokio::select! {
                                _ = tokio::time::sleep(pause) => {}
                                _ = shutdown.requested() => break,
                            }
                        }
                        _ => spin = 0,
                    }
                }
                Err(e) => {
                    warn!(error = %e, retry_in_s = backoff.as_secs(), "polling the queue failed; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.requested() => break,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        info!("stopped polling the lifecycle queue");
        self.departed
    }

    /// One receive of up to ten messages, waiting up to `wait`, and everything that follows.
    pub async fn poll(
        &mut self,
        handler: &Handler,
        wait: Duration,
    ) -> Result<PollReport, SqsError> {
        let messages = self.receive(wait).await?;
        self.process(handler, messages).await
    }

    /// For `once`: receives until the queue has nothing more for this instance, at most
    /// [`ONCE_ROUNDS`] times. Real SQS returns a sample of a standard queue per receive, not
    /// everything (SQS Developer Guide, "Short and long polling"): one receive can miss this
    /// instance's message behind others'. Others' messages are kept out of sight until the end
    /// (or until a pipeline of this instance's starts), so that each receive brings new ones.
    pub async fn poll_all(
        &mut self,
        handler: &Handler,
        wait: Duration,
    ) -> Result<PollReport, SqsError> {
        self.deferred = Some(Vec::new());
        let mut total = PollReport::default();
        let mut wait = wait;
        let mut result = Ok(());
        for _ in 0..ONCE_ROUNDS {
            match self.poll(handler, wait).await {
                Ok(r) => {
                    let empty = r.received == 0;
                    total.received += r.received;
                    total.deleted += r.deleted;
                    total.released += r.released;
                    total.left += r.left;
                    total.not_ours += r.not_ours;
                    total.not_ours_new += r.not_ours_new;
                    let interrupted = r.handled.contains(&Outcome::Interrupted);
                    total.handled.extend(r.handled);
                    if empty || interrupted {
                        break;
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            wait = wait.min(Duration::from_secs(1));
        }
        let deferred = self.deferred.take().unwrap_or_default();
        let released = self.release(&deferred).await;
        total.released += released;
        total.left += deferred.len() - released;
        result.map(|()| total)
    }

    async fn receive(&self, wait: Duration) -> Result<Vec<Message>, SqsError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.cfg.queue_url)
            .max_number_of_messages(BATCH)
            .wait_time_seconds(wait.as_secs() as i32)
            .visibility_timeout(
                RECEIVE_VISIBILITY
                    .min(self.cfg.visibility_timeout)
                    .as_secs() as i32,
            )
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| SqsError::Receive {
                queue: self.cfg.queue_url.clone(),
                message: DisplayErrorContext(&e).to_string(),
            })?;
        Ok(out.messages.unwrap_or_default())
    }

    /// Routes and handles received messages.
    async fn process(
        &mut self,
        handler: &Handler,
        messages: Vec<Message>,
    ) -> Result<PollReport, SqsError> {
        let mut report = PollReport {
            received: messages.len(),
            ..Default::default()
        };
        // By AWS's clock, which stamped the messages: a machine whose clock runs ahead must
        // not take others' fresh notifications for stale and delete them (G14).
        let now = crate::clock::aws_now();
        self.seen.retain(|_, (t, _)| t.elapsed() < SEEN_TTL);
        let mut release = Vec::new();
        let mut mine = Vec::new();
        let vt = self.cfg.visibility_timeout.as_secs() as i32;
        // Received with a short visibility: kept out of sight for `visibility_timeout`.
        let mut keep = Vec::new();
        for m in messages {
            let id = m.message_id().unwrap_or("-").to_string();
            let receives =
                attr(&m, MessageSystemAttributeName::ApproximateReceiveCount).unwrap_or_default();
            let sent = sent_at(&m);
            let body = m.body().unwrap_or_default();
            let me = Me {
                instance_id: &self.me,
                hooks: &self.hooks,
                launch: self.launch,
            };
            let route = route(body, sent, now, me, self.cfg.stale_after);
            // A message this instance keeps getting back is held out of its way (see `hold`),
            // which also keeps a queue of nothing but others' messages from spinning.
            let repeat = self.seen.contains_key(&id);
            match route {
                Route::Test => {
                    info!(message_id = %id, "autoscaling:TEST_NOTIFICATION received; deleting it");
                    if self.delete(&m).await {
                        report.deleted += 1;
                    }
                }
                Route::Other { kind } => {
                    info!(message_id = %id, kind = %kind, "an AWS notification that no lifecycle action follows; deleting it, acting on nothing");
                    if self.delete(&m).await {
                        report.deleted += 1;
                    }
                }
                Route::Stale { age } => {
                    warn!(message_id = %id, age_s = age.as_secs(), stale_after_s = self.cfg.stale_after.as_secs(),
                        "message is older than any lifecycle action can live; deleting it");
                    if self.delete(&m).await {
                        report.deleted += 1;
                    }
                }
                Route::Foreign { instance_id } => {
                    if repeat {
                        debug!(message_id = %id, owner = %instance_id, receives = %receives, "another instance's message again; releasing it");
                    } else {
                        info!(message_id = %id, owner = %instance_id, receives = %receives, "message for another instance; releasing it to its owner");
                    }
                    let hold = self.hold(&id, sent, now);
                    release.push((m, hold));
                    report.not_ours += 1;
                    report.not_ours_new += usize::from(!repeat);
                }
                Route::OtherHook { hook } => {
                    info!(message_id = %id, hook = %hook, "message for a hook lastcall does not complete ([lifecycle] hook_name); releasing it");
                    let hold = self.hold(&id, sent, now);
                    release.push((m, hold));
                    report.not_ours += 1;
                    report.not_ours_new += usize::from(!repeat);
                }
                Route::Launch => {
                    info!(message_id = %id, "launch notification for this instance, and no launch steps are configured; releasing it");
                    let hold = self.hold(&id, sent, now);
                    release.push((m, hold));
                    report.not_ours += 1;
                    report.not_ours_new += usize::from(!repeat);
                }
                Route::Unparseable(e) => {
                    warn!(message_id = %id, receives = %receives, error = %e,
                        "message is not a lifecycle notification lastcall understands; leaving it for the queue's redrive policy");
                    keep.push((m, vt));
                    report.left += 1;
                }
                Route::Mine(ev) => {
                    keep.push((m.clone(), vt));
                    mine.push((m, ev));
                }
            }
        }
        if !keep.is_empty() {
            self.release(&keep).await;
        }
        // Holds keep a queue of messages nobody takes (dead instances', another group's) from
        // spinning this instance; they hide a message from its owner too. A leaving instance
        // holds nothing: in a mass departure (an instance refresh, a big scale-in) the others'
        // messages are live owners', and it is gone within its hook's life anyway.
        if release.iter().any(|(_, hold)| *hold > 0) && self.leaving(handler).await {
            debug!(
                count = release.len(),
                "this instance is leaving: releasing others' messages at once, holding none"
            );
            for (_, hold) in &mut release {
                *hold = 0;
            }
        }
        for (m, hold) in release.iter().filter(|(_, hold)| *hold > 0) {
            debug!(message_id = %m.message_id().unwrap_or("-"), hold_s = hold,
                "another's message keeps coming back: held out of every consumer's sight for a while");
        }
        match &mut self.deferred {
            // `once` keeps others' messages out of sight while it looks through the queue, so
            // that each receive brings messages it has not seen; never while it runs a
            // pipeline of its own, which can take minutes.
            Some(d) if mine.is_empty() => d.extend(release),
            deferred => {
                let mut all = deferred.as_mut().map(std::mem::take).unwrap_or_default();
                all.extend(release);
                report.released = self.release(&all).await;
                report.left += all.len() - report.released;
            }
        }
        for (m, ev) in mine {
            let id = m.message_id().unwrap_or("-").to_string();
            info!(message_id = %id, instance_id = %ev.instance_id, group = %ev.group, hook = %ev.hook_name,
                shape = ev.shape.as_str(), warm_pool = ev.to_warm_pool(), "lifecycle notification for this instance");
            let action = match self.ownership(handler, &ev).await {
                Ownership::Mine => Action::from_event(&ev),
                Ownership::Unowned => Action::unowned(
                    &ev.instance_id,
                    &ev.group,
                    ev.transition.clone(),
                    ev.to_warm_pool(),
                ),
                Ownership::Unknown => {
                    let again = self.again(&id, 0);
                    if self.release(&[(m, again.as_secs() as i32)]).await == 0 {
                        report.left += 1;
                    }
                    report.handled.push(Outcome::NotWaiting {
                        seen: "unknown (the group's hooks cannot be described)".into(),
                        api_error: true,
                    });
                    continue;
                }
                Ownership::Other(owner) => {
                    info!(message_id = %id, hook = %ev.hook_name, owner = %owner, "this instance's notification for a hook that is not lastcall's (the group's only one of that transition is); releasing it");
                    report.released += self.release(&[(m, 0)]).await;
                    report.not_ours += 1;
                    continue;
                }
            };
            let keepalive = self.keep_invisible(&m);
            let handled = handler.handle(&action, "sqs").await;
            keepalive.abort();
            let handled = match handled {
                Ok(h) => h,
                Err(e) => {
                    error!(message_id = %id, error = %e, "handling this instance's action failed; the message is kept for another attempt");
                    Outcome::Failed {
                        error: e.to_string(),
                    }
                }
            };
            self.settle(handler, m, &ev, &handled, &mut report).await;
            report.handled.push(handled);
        }
        Ok(report)
    }
}

fn attr(m: &Message, name: MessageSystemAttributeName) -> Option<String> {
    m.attributes().and_then(|a| a.get(&name)).cloned()
}

/// When SQS received the message (`SentTimestamp`, milliseconds since the epoch).
fn sent_at(m: &Message) -> Option<std::time::SystemTime> {
    attr(m, MessageSystemAttributeName::SentTimestamp)
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
}
