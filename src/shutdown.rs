//! Shutdown, passed around as a value: SIGTERM/SIGINT set it, loops and the pipeline look at it.

use tokio::sync::watch;

/// A shared "please stop" flag that can also be awaited.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The side that requests shutdown.
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<bool>,
}

/// A new flag and its trigger.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx }, Shutdown { rx })
}

impl Trigger {
    /// Asks everyone holding the [`Shutdown`] to stop.
    pub fn fire(&self) {
        let _ = self.tx.send(true);
    }
}

impl Shutdown {
    /// A flag that is never set (for one-shot commands and tests).
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // Keep the sender alive forever so that `requested()` simply never resolves.
        std::mem::forget(tx);
        Self { rx }
    }

    /// True once shutdown was asked for.
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when shutdown is asked for.
    pub async fn requested(&mut self) {
        let _ = self.rx.wait_for(|v| *v).await;
    }
}

/// Fires `trigger` on the first SIGTERM or SIGINT; a second one ends the process at once. The
/// returned receiver changes on every SIGHUP (a request to reload the config).
pub fn on_signals(trigger: Trigger) -> std::io::Result<watch::Receiver<u64>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (hup_tx, hup_rx) = watch::channel(0u64);
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => {
                    tracing::info!(signal = "SIGHUP", "reloading the config once no pipeline runs");
                    hup_tx.send_modify(|n| *n += 1);
                    continue;
                }
            };
            if first {
                tracing::info!(
                    signal = name,
                    "shutting down: a running step is allowed to finish"
                );
                trigger.fire();
                first = false;
            } else {
                tracing::warn!(signal = name, "second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
    Ok(hup_rx)
}
