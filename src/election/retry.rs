//! What the election does after a failed request to etcd: it logs each cause once until etcd
//! answers again, reports every failure to `main` (for the status endpoint), waits a retry period
//! and tries again, or, before it ever joined, gives up on a failure retrying cannot cure
//! (`failure::Startup`). What a failure is, is `failure`'s to say; the keep-alive loop reports its
//! own (`session`), as it retries at its own pace.

use std::time::Duration;

use log::{info, warn};

use super::{Event, Report};
use crate::config::Config;
use crate::etcd::Error;
use crate::failure::{classify, Cause, Startup};

pub struct Retry {
    period: Duration,
    report: Report,
    /// Causes already logged since etcd last answered: a flapping cause (TLS alerts race the
    /// connection close) is logged once, not on every retry.
    failing: Vec<Cause>,
    startup: Startup,
}

impl Retry {
    pub fn new(cfg: &Config, report: Report) -> Retry {
        Retry {
            period: cfg.retry_period,
            report,
            failing: Vec::new(),
            startup: Startup::new(cfg.retry_period),
        }
    }

    /// etcd granted our lease and queued our key: the configuration works.
    pub fn joined(&mut self) {
        self.startup.joined();
    }

    pub fn has_joined(&self) -> bool {
        self.startup.has_joined()
    }

    /// etcd answered: a failure logged before is over.
    pub fn reachable(&mut self) {
        if !self.failing.is_empty() {
            self.failing.clear();
            info!("etcd reachable again");
            (self.report)(Event::Reachable);
        }
    }

    /// Logs (once per cause) and reports a failure; the caller retries.
    pub fn failed(&mut self, e: &Error) {
        let failure = classify(e);
        if !self.failing.contains(&failure.cause) {
            warn!("etcd: {failure}; retrying every {:?}", self.period);
            self.failing.push(failure.cause);
        }
        (self.report)(Event::Failed {
            renewal: false,
            failure,
        });
    }

    /// After a failure: waits a retry period, or returns why to give up at start-up. A watch
    /// given up for a new connection is no failure: at once.
    pub async fn backoff(&mut self, e: Error) -> Result<(), String> {
        if matches!(e, Error::Replaced) {
            return Ok(());
        }
        if let Some(why) = self.startup.give_up(&classify(&e)) {
            return Err(why);
        }
        self.failed(&e);
        self.pause().await;
        Ok(())
    }

    /// One retry period.
    pub async fn pause(&self) {
        tokio::time::sleep(self.period).await;
    }
}
