//! Where the inbound side asks the intentions: per connection (L4), per request (L7)
//! and again for live connections when the intentions change. It fails closed while no
//! intentions are loaded, counts every decision, and says why a caller was denied: the
//! decision's reason and, when an intention governed, that intention in Consul's string
//! form (its source and precedence) and, for L7, the index of the permission that
//! decided. What the rules mean is `ferrule_control::intentions`'s business; see
//! `docs/consul-semantics.md#intentions`.

use std::fmt;

use ferrule_control::intentions::{self as rules, Decision, Intention, Intentions, Peer, Reason};

use crate::metrics::{self, Layer};

/// The answer for one caller (and one request, at L7), with what decided it.
pub(crate) struct Verdict<'a> {
    /// `None`: no intentions are loaded yet, so nobody is let in.
    decision: Option<Decision>,
    intentions: Option<&'a Intentions>,
}

impl<'a> Verdict<'a> {
    pub(crate) fn allowed(&self) -> bool {
        self.decision.is_some_and(|d| d.allowed)
    }

    /// The decision's reason, as its fixed label (`no_intentions` before any are loaded).
    pub(crate) fn reason(&self) -> &'static str {
        self.decision.map_or("no_intentions", |d| d.reason.label())
    }

    /// The intention that governed, if one did.
    pub(crate) fn intention(&self) -> Option<&'a Intention> {
        let index = self.decision?.matched?;
        self.intentions?.rules().get(index)
    }

    /// For an L7 intention, the index of the permission that decided.
    pub(crate) fn permission(&self) -> Option<usize> {
        match self.decision?.reason {
            Reason::MatchedPermission { index } => Some(index),
            _ => None,
        }
    }

    /// The governing intention for a log field; `-` when none governed.
    pub(crate) fn governed_by(&self) -> Governing<'a> {
        Governing(self.intention())
    }
}

/// Consul's string form of an intention (`default/web => default/api (Precedence: 9,
/// Action: DENY)`), or `-`.
pub(crate) struct Governing<'a>(Option<&'a Intention>);

impl fmt::Display for Governing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(rule) => write!(f, "{rule}"),
            None => f.write_str("-"),
        }
    }
}

/// Decides for `caller` without counting: the re-check of a live connection.
pub(crate) fn decide<'a>(
    intentions: Option<&'a Intentions>,
    caller: &Peer,
    request: Option<&rules::Request<'_>>,
) -> Verdict<'a> {
    Verdict {
        decision: intentions.map(|ixns| rules::decide(ixns, caller, request)),
        intentions,
    }
}

/// Decides for `caller` and counts the decision under `layer`.
pub(crate) fn authorize<'a>(
    layer: Layer,
    intentions: Option<&'a Intentions>,
    caller: &Peer,
    request: Option<&rules::Request<'_>>,
) -> Verdict<'a> {
    let verdict = decide(intentions, caller, request);
    metrics::authz_decision(layer, verdict.allowed(), &caller.service);
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_control::api::intentions::ServiceIntentionsEntry;
    use ferrule_control::identity::ServiceId;
    use ferrule_control::intentions::{Action, Destination};
    use http::HeaderMap;

    fn intentions(sources: &str) -> Intentions {
        let json = format!(
            r#"[{{ "Kind": "service-intentions", "Name": "api", "Sources": [{sources}] }}]"#
        );
        let entries: Vec<ServiceIntentionsEntry> = serde_json::from_str(&json).unwrap();
        let api = Destination::new("default", "default", "api");
        Intentions::from_config_entries(&entries, api, Action::Deny).unwrap()
    }

    fn caller(service: &str) -> Peer {
        Peer::from(&ServiceId::new("example.consul", "default", "dc1", service))
    }

    #[test]
    fn a_denial_names_its_reason_and_the_intention_that_governed() {
        let ixns = intentions(r#"{ "Name": "web", "Action": "deny" }"#);
        let denied = decide(Some(&ixns), &caller("web"), None);
        assert!(!denied.allowed());
        assert_eq!(denied.reason(), "matched_l4");
        assert_eq!(
            denied.governed_by().to_string(),
            ixns.rules()[0].to_string()
        );
        assert_eq!(denied.permission(), None);

        let stranger = decide(Some(&ixns), &caller("db"), None);
        assert!(!stranger.allowed());
        assert_eq!(stranger.reason(), "default");
        assert_eq!(stranger.governed_by().to_string(), "-");

        let unloaded = decide(None, &caller("web"), None);
        assert!(!unloaded.allowed());
        assert_eq!(unloaded.reason(), "no_intentions");
    }

    #[test]
    fn a_caller_from_another_datacenter_is_decided_as_a_local_one() {
        // Intentions name services, never datacenters (`docs/consul-semantics.md#intentions`):
        // web in dc2, as its certificate names it, is the same source as web in dc1.
        let td = "example.consul";
        let from = |dc: &str, service: &str| {
            Peer::of_caller(&ServiceId::new(td, "default", dc, service), td)
        };
        assert_eq!(from("dc2", "web"), from("dc1", "web"));
        let allow_web = intentions(r#"{ "Name": "web", "Action": "allow" }"#);
        let deny_web = intentions(r#"{ "Name": "web", "Action": "deny" }"#);
        let l7 = intentions(
            r#"{ "Name": "web", "Permissions": [
                { "Action": "allow", "HTTP": { "PathPrefix": "/public/" } }
            ] }"#,
        );
        let headers = HeaderMap::new();
        let public = rules::Request {
            method: "GET",
            path: "/public/x",
            headers: &headers,
        };
        let private = rules::Request {
            path: "/private",
            ..public
        };
        for dc in ["dc1", "dc2", "dc3"] {
            let web = from(dc, "web");
            let allowed = decide(Some(&allow_web), &web, None);
            assert!(allowed.allowed(), "{dc}");
            assert_eq!(allowed.reason(), "matched_l4");
            assert!(!decide(Some(&deny_web), &web, None).allowed(), "{dc}");
            assert!(decide(Some(&l7), &web, Some(&public)).allowed(), "{dc}");
            assert!(!decide(Some(&l7), &web, Some(&private)).allowed(), "{dc}");
            let db = from(dc, "db");
            assert_eq!(decide(Some(&allow_web), &db, None).reason(), "default");
        }
    }

    #[test]
    fn an_l7_decision_names_the_permission_that_decided() {
        let ixns = intentions(
            r#"{ "Name": "web", "Permissions": [
                { "Action": "allow", "HTTP": { "PathPrefix": "/public/" } },
                { "Action": "deny", "HTTP": { "PathPrefix": "/admin/" } }
            ] }"#,
        );
        let headers = HeaderMap::new();
        let request = rules::Request {
            method: "GET",
            path: "/admin/users",
            headers: &headers,
        };
        let denied = decide(Some(&ixns), &caller("web"), Some(&request));
        assert!(!denied.allowed());
        assert_eq!(denied.reason(), "matched_permission");
        assert_eq!(denied.permission(), Some(1));
        assert_eq!(
            denied.governed_by().to_string(),
            ixns.rules()[0].to_string()
        );
    }
}
