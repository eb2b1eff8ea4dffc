//! Which selectors `?filter=` may name, per list endpoint: the fields of the items that
//! endpoint answers with, as Consul's filter documentation lists them
//! (https://developer.hashicorp.com/consul/api-docs/features/filtering). A typo or a
//! field of another endpoint (`ServiceTags` on the health endpoints, which is the
//! catalog's) is then a 400 naming the selector, as Consul answers, instead of a filter
//! that silently matches nothing. This matters most for resolver subsets, whose filters
//! proxies pass to the health endpoints. Maps (`Meta`, `NodeMeta`, ...) take any key;
//! nested structures (`Service.Proxy`, `Checks.Definition`, a config entry's `Routes`)
//! are not checked below their first level. Where unsure whether Consul takes a field,
//! it is taken: refusing a filter Consul runs would break a tool, accepting one it
//! refuses does not.

use super::filter::Expr;
use super::http::ApiError;

/// The shape below a selector part.
#[derive(Clone, Copy)]
pub(super) enum Shape {
    /// A value (a string, a number, a list of strings): nothing can follow.
    Leaf,
    /// A map of values: one key may follow.
    Map,
    /// Not checked further.
    Open,
    Fields(&'static [(&'static str, Shape)]),
    /// A config entry: the fields every entry has, and its kind's own.
    Entry(&'static [(&'static str, Shape)]),
}

const NODE: &[(&str, Shape)] = &[
    ("ID", Shape::Leaf),
    ("Node", Shape::Leaf),
    ("Address", Shape::Leaf),
    ("Datacenter", Shape::Leaf),
    ("TaggedAddresses", Shape::Map),
    ("Meta", Shape::Map),
    ("PeerName", Shape::Leaf),
    ("Locality", Shape::Open),
];

const SERVICE: &[(&str, Shape)] = &[
    ("Kind", Shape::Leaf),
    ("ID", Shape::Leaf),
    ("Service", Shape::Leaf),
    ("Tags", Shape::Leaf),
    ("Address", Shape::Leaf),
    ("TaggedAddresses", Shape::Open),
    ("Meta", Shape::Map),
    ("Port", Shape::Leaf),
    ("SocketPath", Shape::Leaf),
    ("Weights", Shape::Open),
    ("EnableTagOverride", Shape::Leaf),
    ("Proxy", Shape::Open),
    ("Connect", Shape::Open),
    ("PeerName", Shape::Leaf),
    ("Locality", Shape::Open),
    ("Namespace", Shape::Leaf),
    ("Partition", Shape::Leaf),
    ("CreateIndex", Shape::Leaf),
    ("ModifyIndex", Shape::Leaf),
];

const CHECK: &[(&str, Shape)] = &[
    ("Node", Shape::Leaf),
    ("CheckID", Shape::Leaf),
    ("Name", Shape::Leaf),
    ("Status", Shape::Leaf),
    ("Notes", Shape::Leaf),
    ("Output", Shape::Leaf),
    ("ServiceID", Shape::Leaf),
    ("ServiceName", Shape::Leaf),
    ("ServiceTags", Shape::Leaf),
    ("Type", Shape::Leaf),
    ("Interval", Shape::Leaf),
    ("Timeout", Shape::Leaf),
    ("ExposedPort", Shape::Leaf),
    ("Definition", Shape::Open),
    ("PeerName", Shape::Leaf),
    ("Namespace", Shape::Leaf),
    ("Partition", Shape::Leaf),
    ("CreateIndex", Shape::Leaf),
    ("ModifyIndex", Shape::Leaf),
];

/// A health entry: `Node`, `Service`, and the list `Checks`
/// (`/v1/health/service/:name`, `/v1/health/connect/:name`).
pub(super) const HEALTH_ENTRY: Shape = Shape::Fields(&[
    ("Node", Shape::Fields(NODE)),
    ("Service", Shape::Fields(SERVICE)),
    ("Checks", Shape::Fields(CHECK)),
]);

/// A service on the local agent (`/v1/agent/services`): a node's service, and the
/// datacenter it is in.
pub(super) const AGENT_SERVICE: Shape = Shape::Fields(&[
    ("Kind", Shape::Leaf),
    ("ID", Shape::Leaf),
    ("Service", Shape::Leaf),
    ("Tags", Shape::Leaf),
    ("Meta", Shape::Map),
    ("Port", Shape::Leaf),
    ("Address", Shape::Leaf),
    ("SocketPath", Shape::Leaf),
    ("TaggedAddresses", Shape::Open),
    ("Weights", Shape::Open),
    ("EnableTagOverride", Shape::Leaf),
    ("Proxy", Shape::Open),
    ("Connect", Shape::Open),
    ("PeerName", Shape::Leaf),
    ("Namespace", Shape::Leaf),
    ("Partition", Shape::Leaf),
    ("Datacenter", Shape::Leaf),
    ("Locality", Shape::Open),
    ("CreateIndex", Shape::Leaf),
    ("ModifyIndex", Shape::Leaf),
]);

/// A check (`/v1/agent/checks`).
pub(super) const HEALTH_CHECK: Shape = Shape::Fields(CHECK);

/// A node (`/v1/catalog/nodes`).
pub(super) const CATALOG_NODE: Shape = Shape::Fields(NODE);

/// A node's service (`/v1/catalog/node/:node`).
pub(super) const NODE_SERVICE: Shape = Shape::Fields(SERVICE);

/// An instance in the catalog, node and service flattened (`/v1/catalog/service/:name`,
/// `/connect/:name`, and `/v1/catalog/services`, which filters instances).
pub(super) const SERVICE_NODE: Shape = Shape::Fields(&[
    ("ID", Shape::Leaf),
    ("Node", Shape::Leaf),
    ("Address", Shape::Leaf),
    ("Datacenter", Shape::Leaf),
    ("TaggedAddresses", Shape::Map),
    ("NodeMeta", Shape::Map),
    ("ServiceKind", Shape::Leaf),
    ("ServiceID", Shape::Leaf),
    ("ServiceName", Shape::Leaf),
    ("ServiceTags", Shape::Leaf),
    ("ServiceAddress", Shape::Leaf),
    ("ServiceTaggedAddresses", Shape::Open),
    ("ServiceWeights", Shape::Open),
    ("ServiceMeta", Shape::Map),
    ("ServicePort", Shape::Leaf),
    ("ServiceSocketPath", Shape::Leaf),
    ("ServiceEnableTagOverride", Shape::Leaf),
    ("ServiceProxy", Shape::Open),
    ("ServiceConnect", Shape::Open),
    ("ServiceLocality", Shape::Open),
    ("PeerName", Shape::Leaf),
    ("Namespace", Shape::Leaf),
    ("Partition", Shape::Leaf),
    ("CreateIndex", Shape::Leaf),
    ("ModifyIndex", Shape::Leaf),
]);

/// An intention (`/v1/connect/intentions`).
pub(super) const INTENTION: Shape = Shape::Fields(&[
    ("ID", Shape::Leaf),
    ("Description", Shape::Leaf),
    ("SourcePeer", Shape::Leaf),
    ("SourceSamenessGroup", Shape::Leaf),
    ("SourceNS", Shape::Leaf),
    ("SourceName", Shape::Leaf),
    ("SourcePartition", Shape::Leaf),
    ("DestinationNS", Shape::Leaf),
    ("DestinationName", Shape::Leaf),
    ("DestinationPartition", Shape::Leaf),
    ("SourceType", Shape::Leaf),
    ("Action", Shape::Leaf),
    ("Permissions", Shape::Open),
    ("Precedence", Shape::Leaf),
    ("Meta", Shape::Map),
    ("CreatedAt", Shape::Leaf),
    ("UpdatedAt", Shape::Leaf),
    ("LegacyID", Shape::Leaf),
    ("LegacyMeta", Shape::Map),
    ("CreateIndex", Shape::Leaf),
    ("ModifyIndex", Shape::Leaf),
]);

/// What every config entry has.
const ENTRY: &[(&str, Shape)] = &[
    ("Kind", Shape::Leaf),
    ("Name", Shape::Leaf),
    ("Meta", Shape::Map),
    ("Namespace", Shape::Leaf),
    ("Partition", Shape::Leaf),
    ("CreateIndex", Shape::Leaf),
    ("ModifyIndex", Shape::Leaf),
];

/// The fields of a config entry of `kind` (`/v1/config/:kind`) beside [`ENTRY`]'s;
/// `None` for a kind the dev agent does not store.
pub(super) fn config_entry(kind: &str) -> Option<Shape> {
    let own: &'static [(&'static str, Shape)] = match kind {
        "service-defaults" => &[
            ("Protocol", Shape::Leaf),
            ("Mode", Shape::Leaf),
            ("TransparentProxy", Shape::Open),
            ("MutualTLSMode", Shape::Leaf),
            ("MeshGateway", Shape::Open),
            ("Expose", Shape::Open),
            ("ExternalSNI", Shape::Leaf),
            ("UpstreamConfig", Shape::Open),
            ("Destination", Shape::Open),
            ("MaxInboundConnections", Shape::Leaf),
            ("LocalConnectTimeoutMs", Shape::Leaf),
            ("LocalRequestTimeoutMs", Shape::Leaf),
            ("BalanceInboundConnections", Shape::Leaf),
            ("RateLimits", Shape::Open),
            ("EnvoyExtensions", Shape::Open),
        ],
        "proxy-defaults" => &[
            ("Config", Shape::Open),
            ("Mode", Shape::Leaf),
            ("TransparentProxy", Shape::Open),
            ("MutualTLSMode", Shape::Leaf),
            ("MeshGateway", Shape::Open),
            ("Expose", Shape::Open),
            ("AccessLogs", Shape::Open),
            ("EnvoyExtensions", Shape::Open),
            ("FailoverPolicy", Shape::Open),
            ("PrioritizeByLocality", Shape::Open),
        ],
        "service-resolver" => &[
            ("DefaultSubset", Shape::Leaf),
            ("Subsets", Shape::Open),
            ("Redirect", Shape::Open),
            ("Failover", Shape::Open),
            ("ConnectTimeout", Shape::Leaf),
            ("RequestTimeout", Shape::Leaf),
            ("PrioritizeByLocality", Shape::Open),
            ("LoadBalancer", Shape::Open),
        ],
        "service-splitter" => &[("Splits", Shape::Open)],
        "service-router" => &[("Routes", Shape::Open)],
        "service-intentions" => &[("Sources", Shape::Open), ("JWT", Shape::Open)],
        _ => return None,
    };
    Some(Shape::Entry(own))
}

/// Refuses a filter naming a selector `shape` does not have, naming the selector.
pub(super) fn check(shape: Shape, expr: &Expr) -> Result<(), ApiError> {
    for selector in expr.selectors() {
        if !valid(shape, selector) {
            return Err(ApiError::bad_request(format!(
                "Failed to create boolean expression evaluator: Selector {:?} is not valid",
                selector.join(".")
            )));
        }
    }
    Ok(())
}

fn valid(shape: Shape, parts: &[String]) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return true;
    };
    let below = match shape {
        Shape::Leaf => return false,
        Shape::Map => return rest.is_empty(),
        Shape::Open => return true,
        Shape::Fields(fields) => field(fields, first),
        Shape::Entry(own) => field(ENTRY, first).or_else(|| field(own, first)),
    };
    below.is_some_and(|below| valid(below, rest))
}

fn field(fields: &[(&str, Shape)], name: &str) -> Option<Shape> {
    fields
        .iter()
        .find(|(field, _)| *field == name)
        .map(|(_, shape)| *shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::parse;

    #[test]
    fn health_selectors_are_the_entry_s_fields() {
        for good in [
            r#"Service.Meta.version == "v1""#,
            r#""canary" in Service.Tags"#,
            r#"Service.ID == "web-1" and Node.Node == "n1""#,
            r#"Node.Meta["rack"] == "r1" or not Service.Port == 80"#,
            r#"Checks.Status == passing"#,
            r#"Service.Proxy.DestinationServiceName == web"#,
            r#"Service.TaggedAddresses.lan.Address == "10.0.0.1""#,
            "Service.Tags is empty",
        ] {
            let expr = parse(good).unwrap();
            assert!(check(HEALTH_ENTRY, &expr).is_ok(), "{good}");
        }
        for (bad, selector) in [
            (r#"ServiceTags contains "x""#, "ServiceTags"),
            (r#"Service.Metadata.v == "1""#, "Service.Metadata.v"),
            (r#"Service.Meta.a.b == "1""#, "Service.Meta.a.b"),
            (r#"Service.ID.x == "1""#, "Service.ID.x"),
            (
                r#"Node.Node == n and (Checks.State == passing)"#,
                "Checks.State",
            ),
        ] {
            let expr = parse(bad).unwrap();
            let err = check(HEALTH_ENTRY, &expr).expect_err(bad);
            assert_eq!(
                err.message,
                format!(
                    "Failed to create boolean expression evaluator: Selector {selector:?} is not valid"
                )
            );
        }
    }

    #[test]
    fn every_list_names_its_own_items_fields() {
        let valid = |shape: Shape, filter: &str| check(shape, &parse(filter).unwrap()).is_ok();
        assert!(valid(
            AGENT_SERVICE,
            r#"Service == web and Meta.version == v1"#
        ));
        assert!(valid(
            AGENT_SERVICE,
            "Datacenter == dc1 and Proxy.Upstreams is empty"
        ));
        assert!(
            !valid(AGENT_SERVICE, "ServiceName == web"),
            "the catalog's name"
        );
        assert!(valid(
            HEALTH_CHECK,
            "Status == critical and ServiceName == web"
        ));
        assert!(!valid(HEALTH_CHECK, "Checks.Status == critical"));
        assert!(valid(
            SERVICE_NODE,
            r#"ServiceMeta.version == v1 and "x" in ServiceTags"#
        ));
        assert!(
            !valid(SERVICE_NODE, "Service.Meta.version == v1"),
            "the health entry's"
        );
        assert!(valid(CATALOG_NODE, "Node == n1 and Meta.rack == r1"));
        assert!(!valid(CATALOG_NODE, "Service == web"));
        assert!(valid(NODE_SERVICE, "Service == web"));
        assert!(valid(INTENTION, "SourceName == web and Action == allow"));
        assert!(!valid(INTENTION, "Source == web"));
        let defaults = config_entry("service-defaults").unwrap();
        assert!(valid(
            defaults,
            "Protocol == http and Name == api and Meta.team == a"
        ));
        assert!(valid(
            defaults,
            "UpstreamConfig.Defaults.ConnectTimeoutMs == 5"
        ));
        assert!(!valid(defaults, "Routes is empty"), "a router's field");
        let router = config_entry("service-router").unwrap();
        assert!(valid(
            router,
            "Routes is not empty and Kind == service-router"
        ));
        assert!(valid(
            config_entry("service-intentions").unwrap(),
            "Sources.Name == web"
        ));
        assert!(config_entry("no-such-kind").is_none());

        let err = check(
            INTENTION,
            &parse("SourceName == web or Sauce.x == y").unwrap(),
        );
        assert_eq!(
            err.unwrap_err().message,
            r#"Failed to create boolean expression evaluator: Selector "Sauce.x" is not valid"#
        );
    }
}
