//! Which selectors `?filter=` may name on the health endpoints
//! (`/v1/health/service/:name`, `/v1/health/connect/:name`): the fields of a health
//! entry as Consul's filter documentation lists them (`Node.*`, `Service.*`,
//! `Checks.*`), so that a typo or a field of another endpoint (`ServiceTags`, the
//! catalog's) is a 400 naming the selector instead of a filter that silently matches
//! nothing. This matters for resolver subsets, whose filters proxies pass to these
//! endpoints. Maps (`Meta`, `TaggedAddresses`) take any key; nested structures
//! (`Service.Proxy`, `Service.Connect`, `Checks.Definition`) are not checked below
//! their first level.

use super::filter::Expr;
use super::http::ApiError;

/// The shape below a selector part.
#[derive(Clone, Copy)]
enum Shape {
    /// A value (a string, a number, a list of strings): nothing can follow.
    Leaf,
    /// A map of values: one key may follow.
    Map,
    /// Not checked further.
    Open,
    Fields(&'static [(&'static str, Shape)]),
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
];

/// A health entry: `Node`, `Service`, and the list `Checks`.
const HEALTH_ENTRY: Shape = Shape::Fields(&[
    ("Node", Shape::Fields(NODE)),
    ("Service", Shape::Fields(SERVICE)),
    ("Checks", Shape::Fields(CHECK)),
]);

/// Refuses a filter naming a selector a health entry does not have.
pub(super) fn check_health(expr: &Expr) -> Result<(), ApiError> {
    for selector in expr.selectors() {
        if !valid(HEALTH_ENTRY, selector) {
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
    match shape {
        Shape::Leaf => false,
        Shape::Map => rest.is_empty(),
        Shape::Open => true,
        Shape::Fields(fields) => fields
            .iter()
            .find(|(name, _)| name == first)
            .is_some_and(|(_, below)| valid(*below, rest)),
    }
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
            assert!(check_health(&expr).is_ok(), "{good}");
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
            let err = check_health(&expr).expect_err(bad);
            assert_eq!(
                err.message,
                format!(
                    "Failed to create boolean expression evaluator: Selector {selector:?} is not valid"
                )
            );
        }
    }
}
