//! Whose a notification of this instance is, and when a kept one comes back.

use std::time::Duration;

use tracing::warn;

use super::{SqsSource, NOT_WAITING_FIRST, NOT_WAITING_MAX};
use crate::autoscaling::HookChoiceError;
use crate::event::LifecycleEvent;
use crate::handler::Handler;

/// Whose hook a notification of this instance is.
pub(super) enum Ownership {
    /// lastcall's.
    Mine,
    /// The group has several hooks for the transition and none is named: nobody's for sure.
    Unowned,
    /// Another hook is lastcall's (named here).
    Other(String),
    /// The group's hooks cannot be described (and none is named): whose it is cannot be told.
    Unknown,
}

impl SqsSource {
    /// Whose this instance's notification is when its transition's hook is not named: the
    /// group's only hook of that transition is lastcall's; with several, none is.
    pub(super) async fn ownership(&self, handler: &Handler, ev: &LifecycleEvent) -> Ownership {
        if self.hooks.get(&ev.transition).is_some() {
            return Ownership::Mine; // routing already kept only the named hook's
        }
        // A list that does not name the message's hook is described again first (a hook
        // created or replaced since: see `Handler::owned_hook`).
        match handler
            .owned_hook(&ev.group, &ev.transition, Some(&ev.hook_name))
            .await
        {
            Ok(Ok(h)) if h.name == ev.hook_name => Ownership::Mine,
            Ok(Ok(h)) => Ownership::Other(h.name),
            Ok(Err(HookChoiceError::Several { .. })) => Ownership::Unowned,
            // No hook of the transition listed even when described again (a describe lagging
            // behind a new hook): the message's own hook; verification and the first
            // heartbeat check it.
            Ok(Err(_)) => Ownership::Mine,
            // With several hooks and none named, taking it as lastcall's would complete another
            // tool's hook: it is looked at again later instead.
            Err(e) => {
                warn!(error = %e, "cannot describe the group's hooks, and [lifecycle] hook_name is not set: whose notification this is cannot be told; it is looked at again soon");
                Ownership::Unknown
            }
        }
    }

    /// When this instance's own message `id`, kept for another look, comes back: at once the
    /// first `free` times, then 5, 10, 20, 40, then 60 s (never past the visibility timeout),
    /// counting the times in a row.
    pub(super) fn again(&mut self, id: &str, free: u32) -> Duration {
        let tries = self.kept.entry(id.to_string()).or_insert(0);
        *tries += 1;
        match tries.checked_sub(free + 1) {
            None => Duration::ZERO,
            Some(n) => crate::backoff::doubling(NOT_WAITING_FIRST, n, NOT_WAITING_MAX)
                .min(self.cfg.visibility_timeout),
        }
    }
}
