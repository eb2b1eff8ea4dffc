//! The staleness bookkeeping of the run loop: every answer is counted in the control
//! metrics (an `ok` moves the last-update timestamp, which is how staleness shows while
//! the agent is away), and a failure is logged at warn when it starts, at debug while it
//! lasts, and at info when the agent answers again. The last good state stays in force
//! meanwhile; that is the callers' part. What fails, and its latest error, is kept for
//! `/ready` (`Failures::blocked`) while the snapshot is not complete.

use std::collections::BTreeMap;

use crate::consul::watch::{Meta, Update};
use crate::telemetry::{Resource, record_update};

/// What is failing now, by the name used in the logs, with its latest error.
#[derive(Default)]
pub(in crate::consul) struct Failures {
    failing: BTreeMap<String, String>,
}

impl Failures {
    /// Counts and logs a watch update. `None` if it failed; else its headers' facts, and
    /// the new value if there is one (the caller counts that once it has used it).
    pub(in crate::consul) fn answered<T>(
        &mut self,
        resource: Resource,
        what: &str,
        update: Update<T>,
    ) -> Option<(Option<T>, Meta)> {
        match update {
            Update::Changed { value, meta } => {
                self.recovered(what);
                Some((Some(value), meta))
            }
            Update::Unchanged { meta } => {
                self.recovered(what);
                record_update(resource, true);
                Some((None, meta))
            }
            Update::Failed(e) => {
                record_update(resource, false);
                if self.started(what, &e.to_string()) {
                    tracing::warn!(error = %e, "cannot get {what} from the agent; keeping the last good state and retrying");
                } else {
                    tracing::debug!(error = %e, "still cannot get {what}");
                }
                None
            }
        }
    }

    /// `what` failed with `error`; says whether that is news (it was not failing before).
    pub(in crate::consul) fn started(&mut self, what: &str, error: &str) -> bool {
        self.failing
            .insert(what.to_owned(), error.to_owned())
            .is_none()
    }

    /// Every failure now, one line each: `what: error`.
    pub(in crate::consul) fn blocked(&self) -> impl Iterator<Item = String> + '_ {
        self.failing
            .iter()
            .map(|(what, error)| format!("{what}: {error}"))
    }

    /// `what` is no longer asked for: its failure, if any, is forgotten.
    pub(in crate::consul) fn forget(&mut self, what: &str) {
        self.failing.remove(what);
    }

    /// `what` answered; logs the recovery if it was failing.
    pub(in crate::consul) fn recovered(&mut self, what: &str) {
        if self.failing.remove(what).is_some() {
            tracing::info!("{what}: the agent answers again");
        }
    }
}
