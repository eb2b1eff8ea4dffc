//! What a request's hash is made of, for ring hash and Maglev: the cluster's hash
//! policies evaluated in order (a header, a cookie, a query parameter, the app's
//! address), each value's xxHash64 folded into the hash as Envoy folds them (the hash so
//! far rotated left by one, then XORed), stopping at a terminal policy that gave a
//! value. A cookie policy with a TTL makes up the cookie when the request has none and
//! sets it on the response, so the app's next requests stick to the same instance.
//! See Envoy's `RouteAction.HashPolicy`,
//! <https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#config-route-v3-routeaction-hashpolicy>.

use std::net::SocketAddr;
use std::time::Duration;

use ferrule_control::routing::{HashOn, HashPolicy, LbPolicy, LoadBalancer};
use http::Request;
use http::header::{self, HeaderMap, HeaderValue};

use super::route;
use crate::balance::hash::xxhash64;

/// A request's hash, and the cookie to set on its response if one was made up.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Affinity {
    pub(super) hash: Option<u64>,
    pub(super) set_cookie: Option<HeaderValue>,
}

/// Where the app's connection came from and where it arrived (a made-up cookie's value
/// is derived from both, so one connection gets one cookie).
#[derive(Clone, Copy, Debug)]
pub(super) struct Peer {
    pub(super) remote: SocketAddr,
    pub(super) local: SocketAddr,
}

/// The affinity of `req` under `lb`: nothing unless it hashes.
pub(super) fn of<B>(lb: &LoadBalancer, req: &Request<B>, peer: Peer) -> Affinity {
    if !matches!(lb.policy, LbPolicy::RingHash { .. } | LbPolicy::Maglev) {
        return Affinity::default();
    }
    let mut affinity = Affinity::default();
    for policy in &lb.hash_policies {
        if let Some(value) = evaluate(policy, req, peer, &mut affinity.set_cookie) {
            let before = affinity.hash.map_or(0, |h| h.rotate_left(1));
            affinity.hash = Some(before ^ value);
        }
        if policy.terminal && affinity.hash.is_some() {
            break;
        }
    }
    affinity
}

/// One policy's hash of `req`, if it has what the policy hashes.
fn evaluate<B>(
    policy: &HashPolicy,
    req: &Request<B>,
    peer: Peer,
    set_cookie: &mut Option<HeaderValue>,
) -> Option<u64> {
    match &policy.on {
        HashOn::Header(name) => header_hash(req, name),
        HashOn::Cookie { name, ttl, path } => match cookie(req.headers(), name) {
            Some(value) => Some(xxhash64(value.as_bytes(), 0)),
            None => {
                let ttl = (*ttl)?;
                let value = made_up_cookie(peer);
                *set_cookie = Some(set_cookie_value(name, &value, path.as_deref(), ttl)?);
                Some(xxhash64(value.as_bytes(), 0))
            }
        },
        HashOn::QueryParameter(name) => {
            let query = req.uri().query()?;
            let value = query.split('&').find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key == name).then_some(value)
            })?;
            Some(xxhash64(value.as_bytes(), 0))
        }
        HashOn::SourceIp => Some(xxhash64(peer.remote.ip().to_string().as_bytes(), 0)),
    }
}

/// A header's values, sorted and hashed as one; a pseudo-header's value.
fn header_hash<B>(req: &Request<B>, name: &str) -> Option<u64> {
    if name.starts_with(':') || name == "host" {
        let value = route::header_value(req, name)?;
        return Some(xxhash64(value.as_bytes(), 0));
    }
    let mut values: Vec<&[u8]> = req
        .headers()
        .get_all(name)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    Some(xxhash64(&values.concat(), 0))
}

/// The value of cookie `name` in the request's `Cookie` headers, quotes removed.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim_start().split_once('=')?;
            (key == name).then(|| {
                value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value)
            })
        })
}

/// A cookie value for a request that has none: 16 hex digits from the app connection's
/// two addresses.
fn made_up_cookie(peer: Peer) -> String {
    let addrs = format!("{}{}", peer.remote, peer.local);
    format!("{:016x}", xxhash64(addrs.as_bytes(), 0))
}

/// `name="value"; Max-Age=<ttl>; Path=<path>; HttpOnly`, without `Max-Age` for a TTL
/// of 0 (a session cookie), as Envoy writes it.
fn set_cookie_value(
    name: &str,
    value: &str,
    path: Option<&str>,
    ttl: Duration,
) -> Option<HeaderValue> {
    let mut cookie = format!("{name}=\"{value}\"");
    if ttl.as_secs() > 0 {
        cookie.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if let Some(path) = path.filter(|p| !p.is_empty()) {
        cookie.push_str(&format!("; Path={path}"));
    }
    cookie.push_str("; HttpOnly");
    HeaderValue::from_str(&cookie).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(policies: Vec<HashPolicy>) -> LoadBalancer {
        LoadBalancer {
            policy: LbPolicy::Maglev,
            hash_policies: policies,
        }
    }

    fn on(on: HashOn, terminal: bool) -> HashPolicy {
        HashPolicy { on, terminal }
    }

    fn peer(remote: &str) -> Peer {
        Peer {
            remote: remote.parse().unwrap(),
            local: "127.0.0.1:9191".parse().unwrap(),
        }
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    fn xx(s: &str) -> u64 {
        xxhash64(s.as_bytes(), 0)
    }

    #[test]
    fn each_source_of_a_hash() {
        let p = peer("10.1.2.3:5555");
        let header = lb(vec![on(HashOn::Header("x-user".into()), false)]);
        let r = req("/", &[("x-user", "b"), ("x-user", "a")]);
        assert_eq!(of(&header, &r, p).hash, Some(xx("ab")), "sorted, as one");
        assert_eq!(of(&header, &req("/", &[]), p).hash, None);
        let query = lb(vec![on(HashOn::QueryParameter("u".into()), false)]);
        assert_eq!(
            of(&query, &req("/?a=1&u=x%20y", &[]), p).hash,
            Some(xx("x%20y"))
        );
        let source = lb(vec![on(HashOn::SourceIp, false)]);
        assert_eq!(of(&source, &req("/", &[]), p).hash, Some(xx("10.1.2.3")));
        let round_robin = LoadBalancer {
            policy: LbPolicy::RoundRobin,
            hash_policies: vec![on(HashOn::SourceIp, false)],
        };
        assert_eq!(of(&round_robin, &req("/", &[]), p), Affinity::default());
    }

    #[test]
    fn the_same_key_gives_the_same_hash_and_policies_fold_until_a_terminal_one() {
        let p = peer("10.1.2.3:5555");
        let both = lb(vec![
            on(HashOn::Header("x-a".into()), false),
            on(HashOn::Header("x-b".into()), false),
        ]);
        let r = req("/", &[("x-a", "1"), ("x-b", "2")]);
        let want = xx("1").rotate_left(1) ^ xx("2");
        assert_eq!(of(&both, &r, p).hash, Some(want));
        assert_eq!(of(&both, &r, peer("10.9.9.9:1")).hash, Some(want));
        let terminal = lb(vec![
            on(HashOn::Header("x-a".into()), true),
            on(HashOn::Header("x-b".into()), false),
        ]);
        assert_eq!(of(&terminal, &r, p).hash, Some(xx("1")));
        // A terminal policy without a value does not stop the evaluation.
        let only_b = req("/", &[("x-b", "2")]);
        assert_eq!(of(&terminal, &only_b, p).hash, Some(xx("2")));
    }

    #[test]
    fn a_cookie_is_hashed_or_made_up_and_set_when_it_has_a_ttl() {
        let p = peer("10.1.2.3:5555");
        let cookie = |ttl: Option<u64>| {
            lb(vec![on(
                HashOn::Cookie {
                    name: "sticky".into(),
                    ttl: ttl.map(Duration::from_secs),
                    path: Some("/app".into()),
                },
                false,
            )])
        };
        let has = req("/", &[("cookie", "a=1; sticky=\"abc\"; b=2")]);
        let got = of(&cookie(Some(60)), &has, p);
        assert_eq!(got.hash, Some(xx("abc")));
        assert!(got.set_cookie.is_none());
        assert_eq!(of(&cookie(None), &req("/", &[]), p), Affinity::default());
        let made = of(&cookie(Some(60)), &req("/", &[]), p);
        let set = made.set_cookie.unwrap();
        let set = set.to_str().unwrap();
        assert!(
            set.starts_with("sticky=\"") && set.ends_with("\"; Max-Age=60; Path=/app; HttpOnly"),
            "{set}"
        );
        let value = &set["sticky=\"".len().."sticky=\"".len() + 16];
        assert_eq!(made.hash, Some(xx(value)));
        // The next request carries it and lands where the first did.
        let next = req("/", &[("cookie", &format!("sticky=\"{value}\""))]);
        assert_eq!(of(&cookie(Some(60)), &next, p).hash, made.hash);
        let session = of(&cookie(Some(0)), &req("/", &[]), p).set_cookie.unwrap();
        assert!(
            !session.to_str().unwrap().contains("Max-Age"),
            "{session:?}"
        );
    }
}
