//! The control client's metrics: one place that knows their names and labels, so every
//! source (files, the Consul agent, the Workload API) reports updates the same way.

use crate::model;

/// Control-plane answers, by `resource` and `result`.
pub const CONTROL_UPDATES: &str = "ferrule_control_updates_total";
/// When the last good answer for a `resource` arrived, in seconds since the Unix epoch.
pub const CONTROL_LAST_UPDATE: &str = "ferrule_control_last_update_timestamp_seconds";

/// What a control update is about: the `resource` label of
/// `ferrule_control_updates_total` and `ferrule_control_last_update_timestamp_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    /// The CA roots (trust bundle).
    Roots,
    /// This proxy's leaf certificate.
    Leaf,
    /// The intentions that protect this proxy's service.
    Intentions,
    /// The proxy's configuration: the config file, or the registration and the agent's
    /// own settings.
    Config,
    /// The instances of the upstreams: those of every target of their discovery chains
    /// (`/v1/health/connect/<service>`); for a mesh gateway, those of the services of its
    /// datacenter and the other datacenters' mesh gateways.
    Endpoints,
    /// The upstreams' compiled discovery chains (`/v1/discovery-chain/<service>`); for a
    /// mesh gateway, the `service-resolver` entries.
    Chain,
    /// A mesh gateway's catalog reads: the services of its datacenter, the datacenters,
    /// and the mesh gateways of each other one.
    Catalog,
}

impl Resource {
    /// The label value; the only place these strings are written.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Resource::Roots => "roots",
            Resource::Leaf => "leaf",
            Resource::Intentions => "intentions",
            Resource::Config => "config",
            Resource::Endpoints => "endpoints",
            Resource::Chain => "chain",
            Resource::Catalog => "catalog",
        }
    }
}

/// Counts one answer for `resource`. A successful one, changed or not, also moves
/// `ferrule_control_last_update_timestamp_seconds`, which is how staleness shows while the
/// agent is away.
pub(crate) fn record_update(resource: Resource, ok: bool) {
    let resource = resource.label();
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(CONTROL_UPDATES, "resource" => resource, "result" => result).increment(1);
    if ok {
        metrics::gauge!(CONTROL_LAST_UPDATE, "resource" => resource).set(model::unix_now());
    }
}

#[cfg(test)]
mod tests {
    use super::Resource;

    #[test]
    fn labels_are_the_documented_ones() {
        let all = [
            Resource::Roots,
            Resource::Leaf,
            Resource::Intentions,
            Resource::Config,
            Resource::Endpoints,
            Resource::Chain,
            Resource::Catalog,
        ];
        let labels: Vec<_> = all.iter().map(|r| r.label()).collect();
        assert_eq!(
            labels,
            [
                "roots",
                "leaf",
                "intentions",
                "config",
                "endpoints",
                "chain",
                "catalog"
            ]
        );
    }
}
