//! Request normalization in Consul mode: the `mesh` config entry's
//! `HTTP.Incoming.RequestNormalization`, watched with a blocking query on the list
//! endpoint (`/v1/config/mesh`), which answers an empty list rather than a 404 while no
//! entry exists. Consul's agent merges nothing of it into a registration; Consul's
//! xDS server puts it into every sidecar's public listener, so the proxy reads the
//! entry itself. No entry, or an entry without the settings, is the default; settings
//! that do not parse keep the last good ones (Consul's server refuses them at write
//! time, so only another agent's bug gets here). See
//! `docs/consul-semantics.md#request-normalization`.

use super::agent::{Agent, Event};
use crate::api::defaults::MeshEntry;
use crate::consul::watch::{Blocking, WatchSpec, Watcher};
use crate::normalization::RequestNormalization;

/// The watch of the `mesh` entry and the settings in force.
#[derive(Default)]
pub(super) struct MeshWatch {
    watch: Option<Watcher>,
    pub(super) current: RequestNormalization,
}

impl MeshWatch {
    pub(super) fn start(&mut self, agent: &Agent) {
        self.watch = Some(agent.watch(
            WatchSpec::get("/v1/config/mesh".into(), Vec::new(), Blocking::Index),
            Event::Mesh,
        ));
    }

    /// The agent's entries; says whether what they hold was usable.
    pub(super) fn on_entries(&mut self, entries: &[MeshEntry]) -> bool {
        let config = entries
            .first()
            .and_then(MeshEntry::request_normalization)
            .cloned()
            .unwrap_or_default();
        match RequestNormalization::from_config(&config) {
            Ok(next) => {
                if next != self.current {
                    tracing::info!(settings = ?next, "request normalization from the mesh entry");
                    self.current = next;
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "mesh entry's RequestNormalization refused; keeping the last good settings");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalization::{EscapedSlashesAction, UnderscoresAction};

    fn entries(value: serde_json::Value) -> Vec<MeshEntry> {
        vec![serde_json::from_value(value).unwrap()]
    }

    #[test]
    fn the_entry_sets_the_settings_and_its_absence_restores_the_default() {
        let mut watch = MeshWatch::default();
        assert!(watch.on_entries(&[]));
        assert_eq!(watch.current, RequestNormalization::default());
        let set = entries(serde_json::json!({
            "Kind": "mesh",
            "TransparentProxy": {"MeshDestinationsOnly": false},
            "HTTP": {"Incoming": {"RequestNormalization": {
                "MergeSlashes": true,
                "PathWithEscapedSlashesAction": "UNESCAPE_AND_FORWARD",
                "HeadersWithUnderscoresAction": "DROP_HEADER"
            }}}
        }));
        assert!(watch.on_entries(&set));
        assert!(watch.current.merge_slashes);
        assert_eq!(
            watch.current.path_with_escaped_slashes_action,
            EscapedSlashesAction::UnescapeAndForward
        );
        assert_eq!(
            watch.current.headers_with_underscores_action,
            UnderscoresAction::DropHeader
        );
        let bad = entries(serde_json::json!({
            "Kind": "mesh",
            "HTTP": {"Incoming": {"RequestNormalization": {"HeadersWithUnderscoresAction": "NOPE"}}}
        }));
        assert!(!watch.on_entries(&bad));
        assert!(watch.current.merge_slashes);
        assert!(watch.on_entries(&entries(serde_json::json!({"Kind": "mesh"}))));
        assert_eq!(watch.current, RequestNormalization::default());
    }
}
