//! The two moments every destination loop waits for: "the proxy is ready" (first push) and
//! "shut down by this deadline" (final push, then stop).

use std::future::Future;

use tokio::sync::watch;
use tokio::time::Instant;

use super::schedule::Schedule;

/// Becomes true once, when the first push may happen.
#[derive(Clone)]
pub(crate) struct Ready(pub(crate) watch::Receiver<bool>);

impl Ready {
    pub(crate) async fn wait(&mut self) {
        let said_ready = self.0.wait_for(|ready| *ready).await.is_ok();
        if !said_ready {
            // `Pushers` is gone without saying ready; its drop aborts this task.
            std::future::pending::<()>().await;
        }
    }
}

/// Carries the shutdown deadline once shutdown is requested.
#[derive(Clone)]
pub(crate) struct Shutdown(pub(crate) watch::Receiver<Option<Instant>>);

impl Shutdown {
    /// Resolves when shutdown is requested, with its deadline.
    pub(crate) async fn requested(&mut self) -> Instant {
        let deadline = match self.0.wait_for(Option::is_some).await {
            Ok(deadline) => *deadline,
            Err(_) => None,
        };
        match deadline {
            Some(deadline) => deadline,
            // `Pushers` is gone without a shutdown; its drop aborts this task.
            None => std::future::pending().await,
        }
    }

    /// Waits for the proxy to be ready; a shutdown before that ends the wait too (the
    /// final push then still happens).
    pub(crate) async fn wait_ready(&mut self, ready: &mut Ready) {
        tokio::select! {
            _ = ready.wait() => {}
            _ = self.requested() => {}
        }
    }

    /// Waits for the schedule's next tick: true, or false once shutdown is requested
    /// (which wins over a tick due at the same moment).
    pub(crate) async fn next_tick(&mut self, schedule: &mut Schedule) -> bool {
        tokio::select! {
            biased;
            _ = self.requested() => false,
            _ = schedule.tick() => true,
        }
    }

    /// Runs `fut` to completion, unless a shutdown deadline passes first (`None`).
    pub(crate) async fn before_deadline<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        let deadline = tokio::select! {
            out = &mut fut => return Some(out),
            deadline = self.requested() => deadline,
        };
        tokio::time::timeout_at(deadline, fut).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn work_finishes_before_the_deadline_or_is_abandoned_at_it() {
        let (tx, rx) = watch::channel(None);
        let mut s = Shutdown(rx);
        assert_eq!(s.before_deadline(async { 7 }).await, Some(7));
        tx.send_replace(Some(Instant::now()));
        let never = std::future::pending::<()>();
        assert_eq!(s.before_deadline(never).await, None);
        // Work already done when the deadline passed still counts.
        let quick = tokio::time::sleep(Duration::ZERO);
        tx.send_replace(Some(Instant::now() + Duration::from_secs(60)));
        assert_eq!(s.before_deadline(quick).await, Some(()));
    }
}
