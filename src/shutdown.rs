//! Ending the runs still going when a server has waited long enough to
//! stop.
//!
//! `ds serve` stops taking requests on Ctrl-C or SIGTERM and lets running
//! queries finish, but not forever: past its shutdown bound it [`trigger`]s
//! the [`Shutdown`] every run watches, and each run still going ends with an
//! `error` event of type `shutdown`, destroys its sandbox and closes its
//! stream. Doors without a shutdown of their own (the CLI, the serverless
//! functions) hand runs [`Shutdown::never`].
//!
//! [`trigger`]: ShutdownTrigger::trigger

use tokio::sync::watch;

/// What a run watches to learn that the server is going away.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// The server's end of a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl Shutdown {
    /// A linked trigger and shutdown.
    pub fn channel() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// A shutdown that never comes.
    pub fn never() -> Self {
        Shutdown::channel().1
    }

    /// Resolves once the server triggers; never when the trigger is gone
    /// without having fired.
    pub(crate) async fn triggered(&mut self) {
        if self.0.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl ShutdownTrigger {
    /// Tells every run to end now.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn runs_learn_of_the_trigger_and_never_of_a_dropped_one() {
        let (trigger, mut shutdown) = Shutdown::channel();
        let mut other = shutdown.clone();
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(1), shutdown.triggered())
            .await
            .expect("triggered");
        tokio::time::timeout(Duration::from_secs(1), other.triggered())
            .await
            .expect("every clone learns of it");

        let mut never = Shutdown::never();
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), never.triggered())
                .await
                .is_err()
        );
    }
}
