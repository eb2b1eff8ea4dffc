//! The intentions that protect the destination service, from
//! `/v1/connect/intentions/match`, built into the model with the default action in
//! force; see `docs/consul-semantics.md#intentions`.

use std::sync::Arc;

use super::agent::{Agent, Event};
use crate::api::intentions::{Intention as WireIntention, IntentionMatchResponse};
use crate::consul::watch::{Blocking, WatchSpec, Watcher};
use crate::identity::DEFAULT;
use crate::intentions::{Destination, Intentions};
use crate::model::DefaultAction;

/// The watch of the destination's intentions, the agent's last good list and the
/// intentions built from it.
#[derive(Default)]
pub(super) struct IntentionsWatch {
    watch: Option<Watcher>,
    list: Option<Vec<WireIntention>>,
    pub(super) current: Option<Arc<Intentions>>,
}

impl IntentionsWatch {
    /// Follows the intentions of `destination`, forgetting those of another.
    pub(super) fn follow(&mut self, agent: &Agent, destination: &str) {
        self.list = None;
        self.current = None;
        let dest = destination.to_owned();
        self.watch = Some(agent.watch(
            WatchSpec {
                path: "/v1/connect/intentions/match".into(),
                query: vec![
                    ("by".into(), "destination".into()),
                    ("name".into(), dest.clone()),
                ],
                blocking: Blocking::Index,
                body: None,
            },
            move |u| Event::Intentions(dest.clone(), u),
        ));
    }

    /// Whether the agent's list has arrived.
    pub(super) fn has_list(&self) -> bool {
        self.list.is_some()
    }

    /// A new answer for `dest`; says whether it is good (else the last good intentions
    /// stay).
    pub(super) fn on_answer(
        &mut self,
        dest: &str,
        mut answer: IntentionMatchResponse,
        default: Option<&DefaultAction>,
    ) -> bool {
        // The answer is keyed by the name exactly as sent; `null` is empty.
        match answer.remove(dest) {
            Some(list) => {
                self.list = Some(list.unwrap_or_default());
                self.rebuild(Some(dest), default)
            }
            None => {
                tracing::warn!(destination = %dest, "intentions answer has no entry for this service; keeping the last good intentions");
                false
            }
        }
    }

    /// Builds the intentions again (the list or the default action changed); says
    /// whether that worked. Without the destination, the list or the default there is
    /// nothing to build yet, which is no failure.
    pub(super) fn rebuild(&mut self, dest: Option<&str>, default: Option<&DefaultAction>) -> bool {
        let (Some(dest), Some(list), Some(default)) = (dest, &self.list, default) else {
            return true;
        };
        match Intentions::from_match(
            list.clone(),
            Destination::new(DEFAULT, DEFAULT, dest),
            default.action,
        ) {
            Ok(ixns) => {
                tracing::info!(rules = ixns.rules().len(), default = %default.action, "intentions loaded");
                self.current = Some(Arc::new(ixns));
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the agent's intentions do not load; keeping the last good ones");
                false
            }
        }
    }
}
