//! The control client's metrics: one place that knows their names and labels, so every
//! source (files, the Consul agent) reports updates the same way.

use crate::model;

/// Resource label values of the control metrics (DESIGN.md).
pub(crate) const ROOTS: &str = "roots";
pub(crate) const LEAF: &str = "leaf";
pub(crate) const INTENTIONS: &str = "intentions";
pub(crate) const CONFIG: &str = "config";
pub(crate) const ENDPOINTS: &str = "endpoints";

/// Counts one answer for `resource`. A successful one, changed or not, also moves
/// `ferrule_control_last_update_timestamp_seconds`, which is how staleness shows while the
/// agent is away.
pub(crate) fn record_update(resource: &'static str, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!("ferrule_control_updates_total", "resource" => resource, "result" => result)
        .increment(1);
    if ok {
        metrics::gauge!("ferrule_control_last_update_timestamp_seconds", "resource" => resource)
            .set(model::unix_now());
    }
}
