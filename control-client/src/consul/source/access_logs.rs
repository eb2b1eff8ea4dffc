//! Access logging in Consul mode: the `proxy-defaults` entry's `AccessLogs`, watched
//! with a blocking query. Consul's agent does not merge `AccessLogs` into a sidecar's
//! registration; a proxy reads the entry itself. The list endpoint
//! (`/v1/config/proxy-defaults`) is watched rather than the entry's own path, as it
//! answers an empty list, not a 404, while no entry exists (the only entry a
//! proxy-defaults list can hold is `global`). A configuration that does not compile
//! keeps the last good one, with a warning. See `docs/consul-semantics.md#access-logs`.

use std::sync::Arc;

use super::agent::{Agent, Event};
use crate::access_log::AccessLogs;
use crate::api::defaults::{AccessLogsConfig, GLOBAL, ProxyDefaultsEntry};
use crate::consul::watch::{Blocking, WatchSpec, Watcher};

/// The watch of `proxy-defaults`, the last configuration that compiled, and what it
/// compiled to.
#[derive(Default)]
pub(super) struct AccessLogsWatch {
    watch: Option<Watcher>,
    applied: Option<AccessLogsConfig>,
    pub(super) current: Option<Arc<AccessLogs>>,
}

impl AccessLogsWatch {
    pub(super) fn start(&mut self, agent: &Agent) {
        self.watch = Some(agent.watch(
            WatchSpec::get(
                "/v1/config/proxy-defaults".into(),
                Vec::new(),
                Blocking::Index,
            ),
            Event::ProxyDefaults,
        ));
    }

    /// The agent's entries; says whether what they hold was usable (else the last good
    /// configuration stays).
    pub(super) fn on_entries(&mut self, entries: &[ProxyDefaultsEntry]) -> bool {
        let config = entries
            .iter()
            .find(|e| e.name == GLOBAL)
            .and_then(|e| e.access_logs.clone())
            .unwrap_or_default();
        if self.applied.as_ref() == Some(&config) {
            return true;
        }
        match AccessLogs::from_config(&config) {
            Ok(logs) => {
                match &logs {
                    Some(logs) => {
                        tracing::info!(sink = ?logs.sink, format = logs.format_kind, listener_logs = !logs.disable_listener_logs, "access logs on");
                    }
                    None if self.current.is_some() => tracing::info!("access logs off"),
                    None => {}
                }
                self.current = logs.map(Arc::new);
                self.applied = Some(config);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "proxy-defaults AccessLogs refused; keeping the last good access-log configuration");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(access_logs: serde_json::Value) -> Vec<ProxyDefaultsEntry> {
        let entry = serde_json::json!({
            "Kind": "proxy-defaults", "Name": "global", "AccessLogs": access_logs
        });
        vec![serde_json::from_value(entry).unwrap()]
    }

    #[test]
    fn a_bad_change_keeps_the_last_good_configuration() {
        let mut watch = AccessLogsWatch::default();
        assert!(watch.on_entries(&[]));
        assert!(watch.current.is_none());
        assert!(watch.on_entries(&entries(serde_json::json!({"Enabled": true}))));
        let first = watch.current.clone().unwrap();
        // The same configuration again keeps the same `Arc`: nothing to publish.
        assert!(watch.on_entries(&entries(serde_json::json!({"Enabled": true}))));
        assert!(Arc::ptr_eq(&first, watch.current.as_ref().unwrap()));
        let bad = entries(serde_json::json!({"Enabled": true, "TextFormat": "%BOGUS%"}));
        assert!(!watch.on_entries(&bad));
        assert!(Arc::ptr_eq(&first, watch.current.as_ref().unwrap()));
        assert!(watch.on_entries(&entries(serde_json::json!({"Enabled": false}))));
        assert!(watch.current.is_none());
    }
}
