//! The decision: whether a caller may reach the local service, decided from its
//! intentions. A pure function over plain data (no I/O, no clock) so the connection
//! handshake, each HTTP request, the re-check of live connections after an intentions
//! change and the dev agent's `/v1/agent/connect/authorize` all ask the same question the
//! same way.
//!
//! Semantics follow Consul (`docs/consul-semantics.md#intentions`,
//! https://developer.hashicorp.com/consul/docs/connect/intentions): the first rule, in the
//! model's evaluation order, whose destination and source match governs. An L4 rule
//! decides by its action. An L7 rule denies a connection-level check (as
//! `/v1/agent/connect/authorize` and Envoy's TCP filter do) and, per request, lets its
//! first matching permission decide; when none matches the default action applies, never
//! a lower-precedence intention.

use std::borrow::Cow;

use http::HeaderMap;

use super::{
    HeaderMatch, HeaderTest, HttpMatch, Intentions, PathMatch, Peer, Rule, Source, or_default,
};

/// What an L7 decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Already normalized, without the query string.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Index into `Intentions::rules()` of the governing intention.
    pub matched: Option<usize>,
    pub reason: Reason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The governing intention has an action (L4); it decides connections and requests.
    MatchedL4 { allow: bool },
    /// The governing intention has permissions (L7) but the check is per connection: deny.
    L7IntentionOnL4,
    /// `Permissions[index]` of the governing intention matched the request and decided.
    MatchedPermission { index: usize },
    /// The governing intention is L7 and none of its permissions matched: default action.
    NoPermissionMatched,
    /// No intention governs this caller: default action.
    Default,
}

impl Reason {
    /// A fixed, low-cardinality name for metric labels and log fields.
    pub fn label(self) -> &'static str {
        match self {
            Reason::MatchedL4 { .. } => "matched_l4",
            Reason::L7IntentionOnL4 => "l7_intention_on_l4",
            Reason::MatchedPermission { .. } => "matched_permission",
            Reason::NoPermissionMatched => "no_permission_matched",
            Reason::Default => "default",
        }
    }
}

/// Decides for `peer`: per connection with `request: None`, per HTTP request with `Some`.
pub fn decide(ixns: &Intentions, peer: &Peer, request: Option<&Request<'_>>) -> Decision {
    let default = ixns.default_action().is_allow();
    // Only rules naming this caller's service, or `*`, can match: the model indexes
    // them, so this is not a scan of every intention.
    let rules = ixns.rules();
    let governing = ixns
        .candidates(&peer.service)
        .filter_map(|i| rules.get(i).map(|ixn| (i, ixn)))
        .find(|(_, ixn)| {
            ixn.target().covers(ixns.destination()) && source_matches(ixn.source(), peer)
        });
    let Some((index, ixn)) = governing else {
        return Decision {
            allowed: default,
            matched: None,
            reason: Reason::Default,
        };
    };
    let (allowed, reason) = match (ixn.rule(), request) {
        (Rule::Action(action), _) => (
            action.is_allow(),
            Reason::MatchedL4 {
                allow: action.is_allow(),
            },
        ),
        (Rule::Permissions(_), None) => (false, Reason::L7IntentionOnL4),
        (Rule::Permissions(perms), Some(request)) => {
            match perms.iter().position(|p| http_matches(&p.http, request)) {
                Some(i) => (
                    perms[i].action.is_allow(),
                    Reason::MatchedPermission { index: i },
                ),
                None => (default, Reason::NoPermissionMatched),
            }
        }
    };
    Decision {
        allowed,
        matched: Some(index),
        reason,
    }
}

fn source_matches(source: &Source, peer: &Peer) -> bool {
    let origin = if !source.sameness_group.is_empty() {
        // Group membership is unknown here. The model made such rules never allow, so
        // matching every origin can only deny callers, never admit one.
        true
    } else if !source.peer.is_empty() {
        // A peering connects one remote partition; the peer name already pins it.
        source.peer == peer.peer
    } else {
        peer.peer.is_empty() && source.partition == or_default(&peer.partition)
    };
    origin
        && source.namespace.matches(or_default(&peer.namespace))
        && source.name.matches(&peer.service)
}

fn http_matches(m: &HttpMatch, request: &Request<'_>) -> bool {
    let path = match &m.path {
        None => true,
        Some(PathMatch::Exact(exact)) => request.path == exact,
        Some(PathMatch::Prefix(prefix)) => request.path.starts_with(prefix.as_str()),
        Some(PathMatch::Regex(re)) => re.is_match(request.path),
    };
    path && (m.methods.is_empty() || m.methods.iter().any(|m| m == request.method))
        && m.headers.iter().all(|h| header_matches(h, request))
}

/// Envoy's `HeaderUtility::matchHeaders`: a missing header satisfies only an inverted
/// `Present` test; an inverted value test still needs the header to be there.
fn header_matches(h: &HeaderMatch, request: &Request<'_>) -> bool {
    let Some(value) = header_value(request, &h.name) else {
        return h.invert && matches!(h.test, HeaderTest::Present);
    };
    let value = if h.ignore_case {
        Cow::Owned(value.to_ascii_lowercase())
    } else {
        value
    };
    let hit = match &h.test {
        HeaderTest::Present => true,
        HeaderTest::Exact(s) => *value == **s,
        HeaderTest::Prefix(s) => value.starts_with(s.as_str()),
        HeaderTest::Suffix(s) => value.ends_with(s.as_str()),
        HeaderTest::Contains(s) => value.contains(s.as_str()),
        HeaderTest::Regex(re) => re.is_match(&value),
    };
    hit != h.invert
}

/// All values of a header joined with `,`, as Envoy matches them. Envoy also exposes the
/// request's pseudo-headers; the ones a `Request` carries are mapped (`:path` without its
/// query string, unlike Envoy), `:authority` reads `Host`.
fn header_value<'a>(request: &Request<'a>, name: &str) -> Option<Cow<'a, str>> {
    match name {
        ":method" => return Some(Cow::Borrowed(request.method)),
        ":path" => return Some(Cow::Borrowed(request.path)),
        _ => {}
    }
    let name = if name == ":authority" { "host" } else { name };
    let mut values = request.headers.get_all(name).iter();
    let first = String::from_utf8_lossy(values.next()?.as_bytes());
    let mut rest = values.peekable();
    if rest.peek().is_none() {
        return Some(first);
    }
    let mut joined = first.into_owned();
    for value in rest {
        joined.push(',');
        joined.push_str(&String::from_utf8_lossy(value.as_bytes()));
    }
    Some(Cow::Owned(joined))
}

#[cfg(test)]
mod tests;
