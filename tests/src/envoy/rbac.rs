//! Envoy RBAC rules from a `service-intentions` config entry, as Consul's agent compiles
//! them for a sidecar whose default is deny (`docs/consul-semantics.md#intentions`):
//! action ALLOW (the default) with one `consul-intentions-layer4` policy holding every
//! L4-allowed source, and one `consul-intentions-layer7-<i>` policy per source with
//! HTTP permissions. Sources are ordered by precedence (exact names before `*`); a
//! wildcard source excludes every more precise source with `not_id`, and an allowed
//! permission excludes every deny before it with `not_rule`. On a `tcp` listener an L7
//! intention counts as deny. Principals match the caller's URI SAN with Consul's regex:
//! the trust domain, namespace and service, any datacenter.

use serde_json::{Value, json};

/// One source of the entry, in precedence order.
struct Source<'a> {
    name: &'a str,
    namespace: &'a str,
    entry: &'a Value,
}

/// The `rules` of Envoy's RBAC filter (network when `http` is false, HTTP otherwise).
pub fn rules(entry: &Value, trust_domain: &str, http: bool) -> Value {
    let mut sources: Vec<Source<'_>> = entry["Sources"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|s| Source {
            name: s["Name"].as_str().unwrap_or("*"),
            namespace: s["Namespace"].as_str().unwrap_or("default"),
            entry: s,
        })
        .collect();
    // Exact names first; `sort_by_key` is stable, so the entry's order stays otherwise.
    sources.sort_by_key(|s| s.name == "*");

    let mut layer4 = Vec::new();
    let mut policies = serde_json::Map::new();
    let mut layer7 = 0;
    for (i, source) in sources.iter().enumerate() {
        let principal = with_precedence(source, &sources[..i], trust_domain);
        if let Some(permissions) = source.entry["Permissions"].as_array() {
            if !http {
                continue;
            }
            let allowed = allowed_permissions(permissions);
            if !allowed.is_empty() {
                policies.insert(
                    format!("consul-intentions-layer7-{layer7}"),
                    json!({ "permissions": allowed, "principals": [principal] }),
                );
            }
            layer7 += 1;
        } else if source.entry["Action"] == "allow" {
            layer4.push(principal);
        }
    }
    if !layer4.is_empty() {
        policies.insert(
            "consul-intentions-layer4".into(),
            json!({ "permissions": [{ "any": true }], "principals": layer4 }),
        );
    }
    if policies.is_empty() {
        json!({})
    } else {
        json!({ "policies": policies })
    }
}

/// The source's principal, minus the more precise sources ahead of it.
fn with_precedence(source: &Source<'_>, ahead: &[Source<'_>], trust_domain: &str) -> Value {
    let own = principal(source, trust_domain);
    let excluded: Vec<Value> = ahead
        .iter()
        .filter(|a| source.name == "*" && a.name != "*" && a.namespace == source.namespace)
        .map(|a| json!({ "not_id": principal(a, trust_domain) }))
        .collect();
    if excluded.is_empty() {
        own
    } else {
        let mut ids = vec![own];
        ids.extend(excluded);
        json!({ "and_ids": { "ids": ids } })
    }
}

/// `authenticated.principal_name` with Consul's anchored regex; the names go in
/// unescaped, as Consul writes them.
fn principal(source: &Source<'_>, trust_domain: &str) -> Value {
    let part = |name: &str| {
        if name == "*" {
            "[^/]+".to_owned()
        } else {
            name.to_owned()
        }
    };
    let regex = format!(
        "^spiffe://{trust_domain}/ns/{}/dc/[^/]+/svc/{}$",
        part(source.namespace),
        part(source.name)
    );
    json!({ "authenticated": { "principal_name": { "safe_regex": { "regex": regex } } } })
}

/// Each allowed permission, minus the denied ones listed before it.
fn allowed_permissions(permissions: &[Value]) -> Vec<Value> {
    let mut denied: Vec<Value> = Vec::new();
    let mut allowed = Vec::new();
    for permission in permissions {
        let matcher = http_match(&permission["HTTP"]);
        if permission["Action"] == "allow" {
            if denied.is_empty() {
                allowed.push(matcher);
            } else {
                let mut rules = vec![matcher];
                rules.extend(denied.iter().map(|d| json!({ "not_rule": d })));
                allowed.push(json!({ "and_rules": { "rules": rules } }));
            }
        } else {
            denied.push(matcher);
        }
    }
    allowed
}

/// The path and method parts of an intention's `HTTP` block.
fn http_match(http: &Value) -> Value {
    let mut parts = Vec::new();
    if let Some(exact) = http["PathExact"].as_str() {
        parts.push(json!({ "url_path": { "path": { "exact": exact } } }));
    }
    if let Some(prefix) = http["PathPrefix"].as_str() {
        parts.push(json!({ "url_path": { "path": { "prefix": prefix } } }));
    }
    if let Some(regex) = http["PathRegex"].as_str() {
        parts.push(json!({ "url_path": { "path": { "safe_regex": { "regex": regex } } } }));
    }
    if let Some(methods) = http["Methods"].as_array() {
        let names: Vec<&str> = methods.iter().filter_map(Value::as_str).collect();
        parts.push(json!({ "header": {
            "name": ":method",
            "string_match": { "safe_regex": { "regex": names.join("|") } },
        } }));
    }
    match parts.len() {
        0 => json!({ "any": true }),
        1 => parts.remove(0),
        _ => json!({ "and_rules": { "rules": parts } }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_intentions_deny_everything_and_an_allow_is_one_layer4_principal() {
        let none = json!({ "Kind": "service-intentions", "Name": "api", "Sources": [] });
        assert_eq!(rules(&none, "td.consul", false), json!({}));
        let entry = json!({ "Name": "api", "Sources": [
            { "Name": "*", "Action": "allow" },
            { "Name": "web", "Action": "deny" },
        ] });
        let web = "^spiffe://td.consul/ns/default/dc/[^/]+/svc/web$";
        let any = "^spiffe://td.consul/ns/default/dc/[^/]+/svc/[^/]+$";
        let got = rules(&entry, "td.consul", false);
        let ids = &got["policies"]["consul-intentions-layer4"]["principals"][0]["and_ids"]["ids"];
        assert_eq!(
            ids[0]["authenticated"]["principal_name"]["safe_regex"]["regex"],
            any
        );
        assert_eq!(
            ids[1]["not_id"]["authenticated"]["principal_name"]["safe_regex"]["regex"],
            web
        );
    }

    #[test]
    fn an_allowed_permission_excludes_the_denies_before_it_and_tcp_ignores_l7() {
        let entry = json!({ "Name": "api", "Sources": [ { "Name": "web", "Permissions": [
            { "Action": "deny", "HTTP": { "PathPrefix": "/admin" } },
            { "Action": "allow", "HTTP": { "PathPrefix": "/" } },
        ] } ] });
        let got = rules(&entry, "td.consul", true);
        let rules_ =
            &got["policies"]["consul-intentions-layer7-0"]["permissions"][0]["and_rules"]["rules"];
        assert_eq!(rules_[0]["url_path"]["path"]["prefix"], "/");
        assert_eq!(
            rules_[1]["not_rule"]["url_path"]["path"]["prefix"],
            "/admin"
        );
        assert_eq!(rules(&entry, "td.consul", false), json!({}));
    }
}
