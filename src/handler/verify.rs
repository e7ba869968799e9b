//! Whether a notification is of a live action: verification by heartbeat or by what the group
//! shows, and the first heartbeat, which also judges a token Auto Scaling refuses.

use std::time::Instant;

use tracing::{debug, info, warn};

use super::{Action, Handler, REFUSAL_WINDOW, VERIFY_FIRST_PAUSE, VERIFY_MAX_PAUSE, VERIFY_WINDOW};
use crate::autoscaling::CallOutcome;
use crate::journal::Record;

/// What verification found.
#[derive(Debug)]
pub(super) enum Verified {
    /// Auto Scaling accepted a heartbeat with the message's token: the action is alive, and its
    /// first heartbeat is sent.
    Beaten,
    /// The group shows the instance waiting for the action; `refused`: Auto Scaling refused a
    /// heartbeat with the message's token just before (judged by [`Handler::refusal`] without
    /// asking again).
    Waiting {
        /// The token's heartbeat was refused.
        refused: bool,
    },
    /// It shows something else.
    Elsewhere(String),
    /// Auto Scaling did not answer.
    Unknown(String),
}

/// What the first heartbeat of an action with a token found.
pub(super) enum Beat {
    /// Accepted: the action is alive and its timer restarted.
    Sent,
    /// Not sent (an error, for the heartbeat task to retry), or refused after the action was
    /// confirmed once or while the group no longer shows the instance waiting: the action ended
    /// meanwhile, and the steps still run (the instance is going away all the same).
    NotSent,
    /// Refused while the group shows the instance waiting, and never accepted before: looked at
    /// again later (what the group showed).
    Later(String),
    /// Refused so for [`REFUSAL_WINDOW`]: no live action has this token.
    Refused,
}

impl Handler {
    /// Sends the first heartbeat of an action that has a token. A refusal while the group shows
    /// the instance waiting is not taken as proof of a forged message at once: a second hook can
    /// hold the instance after lastcall's own action expired, and Auto Scaling is eventually
    /// consistent. The message comes back with back-off until the token has been refused for
    /// [`REFUSAL_WINDOW`]; a token accepted once (`rec.confirmed`) is of an action that ended.
    pub(super) async fn first_heartbeat(&self, action: &Action, rec: &Record) -> Beat {
        let a = &action.aref;
        match self.asg.heartbeat(a).await {
            Ok(CallOutcome::Done) => {
                if let (Ok(mut r), Some(t)) = (self.refused.lock(), &a.token) {
                    r.remove(t);
                }
                Beat::Sent
            }
            Ok(CallOutcome::NoActiveAction) if self.shows_waiting(action).await => {
                self.refusal(action, rec)
            }
            Ok(CallOutcome::NoActiveAction) => Beat::NotSent,
            Err(e) => {
                warn!(error = %e, "the first heartbeat failed; the heartbeat task tries again");
                Beat::NotSent
            }
        }
    }

    /// Judges a token Auto Scaling refused while the group shows the instance waiting (no AWS
    /// call): a token accepted once is of an action that ended; else the message comes back
    /// later, until the token has been refused for [`REFUSAL_WINDOW`].
    pub(super) fn refusal(&self, action: &Action, rec: &Record) -> Beat {
        let a = &action.aref;
        let token = a.token.clone().unwrap_or_default();
        if rec.confirmed {
            info!(instance_id = %a.instance_id, hook = %a.hook, "the action's token was accepted before and is refused now: the action expired or was completed; the remaining steps still run");
            return Beat::NotSent;
        }
        let first = self
            .refused
            .lock()
            .map(|mut r| {
                r.retain(|_, t| t.elapsed() < REFUSAL_WINDOW * 10);
                *r.entry(token).or_insert_with(Instant::now)
            })
            .unwrap_or_else(|_| Instant::now());
        if first.elapsed() < REFUSAL_WINDOW {
            info!(instance_id = %a.instance_id, hook = %a.hook, refused_for_s = first.elapsed().as_secs(),
                "Auto Scaling refuses the message's token while the group shows the instance waiting (not active yet, or another hook holds the instance); running nothing for now");
            Beat::Later(format!(
                "{} with the message's token refused",
                action.wait_state()
            ))
        } else {
            warn!(instance_id = %a.instance_id, hook = %a.hook, refused_for_s = first.elapsed().as_secs(),
                "Auto Scaling has refused the message's token for minutes while the instance waits, and never accepted it: no live action has it (it expired before lastcall saw it, or the message is not Auto Scaling's); running nothing, deleting the message");
            Beat::Refused
        }
    }

    /// True when the group shows the instance waiting for this action now (one describe; an
    /// error counts as not waiting).
    pub(super) async fn shows_waiting(&self, action: &Action) -> bool {
        let a = &action.aref;
        matches!(self.asg.instance(&a.instance_id).await,
            Ok(Some(s)) if s.state == action.wait_state() && s.group == a.group)
    }

    /// Whether this action is alive: a heartbeat with the message's token accepted, or else the
    /// group showing the instance waiting for it. Auto Scaling is eventually consistent (the
    /// notification can arrive before DescribeAutoScalingInstances shows the wait state), so it
    /// asks again with back-off for up to [`VERIFY_WINDOW`]; the caller (the queue source) tries
    /// again soon after that, for as long as the action can live.
    pub(super) async fn verify(&self, action: &Action) -> Verified {
        let a = &action.aref;
        // With a token, a heartbeat is the first question: Auto Scaling accepts it only for an
        // active action of this instance, group and hook with this very token, which proves the
        // message is the action's; and it keeps the action alive from the first moment, while
        // DescribeAutoScalingInstances may lag (eventual consistency) or be throttled (the limits
        // are per account and Region, shared by a whole fleet leaving at once). Refused or
        // unanswered, the group is asked.
        let mut refused = false;
        if a.token.is_some() && action.owned {
            match self.asg.heartbeat(a).await {
                Ok(CallOutcome::Done) => return Verified::Beaten,
                Ok(CallOutcome::NoActiveAction) => refused = true,
                Err(_) => {}
            }
        }
        let want = action.wait_state();
        let until = tokio::time::Instant::now() + VERIFY_WINDOW;
        let mut pause = VERIFY_FIRST_PAUSE;
        loop {
            let v = match self.asg.instance(&a.instance_id).await {
                Ok(Some(s)) if s.state == want && s.group == a.group => {
                    return Verified::Waiting { refused }
                }
                Ok(Some(s)) => Verified::Elsewhere(format!("{} in group {}", s.state, s.group)),
                Ok(None) => Verified::Elsewhere("not in any Auto Scaling group".into()),
                Err(e) => Verified::Unknown(e.to_string()),
            };
            debug!(instance_id = %a.instance_id, seen = ?v, want, "not (yet) seen waiting");
            if tokio::time::Instant::now() + pause > until {
                return v;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(VERIFY_MAX_PAUSE);
        }
    }
}
