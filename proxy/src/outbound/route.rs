//! Which route an app's request takes and what the route does to it: the first route
//! whose every condition holds (path, headers, query parameters, method), a split
//! drawn by weight, the path prefix rewritten, and the route's and split's header
//! changes. Pure functions over the request; Envoy's route matching is the reference
//! (<https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto>),
//! as Consul's service-router and service-splitter entries are rendered into it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use ferrule_control::routing::{
    HeaderChanges, HeaderMatch, PathMatch, QueryMatch, Route, RouteMatch, Routing, Split,
    TOTAL_WEIGHT, ValueMatch,
};
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Uri};
use parking_lot::Mutex;
use regex::Regex;

/// The first route of `routing` that takes `req`; `None` only if no route matches
/// (a routing always ends with a catch-all).
pub(super) fn choose<'r, B>(routing: &'r Routing, req: &Request<B>) -> Option<&'r Route> {
    routing.routes.iter().find(|r| matches(&r.matcher, req))
}

/// Whether every condition of `m` holds for `req`.
pub(super) fn matches<B>(m: &RouteMatch, req: &Request<B>) -> bool {
    path_matches(&m.path, m.case_insensitive, req.uri().path())
        && (m.methods.is_empty() || m.methods.iter().any(|x| x == req.method().as_str()))
        && m.headers.iter().all(|h| header_matches(h, req))
        && m.query.iter().all(|q| query_matches(q, req.uri().query()))
}

/// The path conditions; `case_insensitive` applies to exact and prefix, never to a
/// regex (as Envoy's `case_sensitive`).
fn path_matches(m: &PathMatch, case_insensitive: bool, path: &str) -> bool {
    match m {
        PathMatch::Any => true,
        PathMatch::Exact(want) if case_insensitive => path.eq_ignore_ascii_case(want),
        PathMatch::Exact(want) => path == want,
        PathMatch::Prefix(want) => {
            path.len() >= want.len() && {
                let head = &path.as_bytes()[..want.len()];
                if case_insensitive {
                    head.eq_ignore_ascii_case(want.as_bytes())
                } else {
                    head == want.as_bytes()
                }
            }
        }
        PathMatch::Regex(re) => full_match(re, path),
    }
}

/// A header condition. The header's values are matched as one, joined by `,`. A
/// missing header matches nothing, inverted or not, except an inverted "present"
/// (Envoy's `HeaderMatcher` without `treat_missing_header_as_empty`).
fn header_matches<B>(m: &HeaderMatch, req: &Request<B>) -> bool {
    match header_value(req, &m.name) {
        None => m.invert && m.value == ValueMatch::Present,
        Some(value) => value_matches(&m.value, &value) != m.invert,
    }
}

/// A request header's value for matching and hashing: its values joined by `,`; the
/// pseudo-headers `:authority` (or `host`), `:method` and `:path` from the request line.
pub(super) fn header_value<'a, B>(req: &'a Request<B>, name: &str) -> Option<Cow<'a, str>> {
    match name {
        ":authority" | "host" => req.uri().authority().map(|a| Cow::Borrowed(a.as_str())),
        ":method" => Some(Cow::Borrowed(req.method().as_str())),
        ":path" => req
            .uri()
            .path_and_query()
            .map(|p| Cow::Borrowed(p.as_str())),
        _ => joined(req.headers(), name),
    }
}

fn joined<'a>(headers: &'a HeaderMap, name: &str) -> Option<Cow<'a, str>> {
    let mut values = headers.get_all(name).iter();
    let first = String::from_utf8_lossy(values.next()?.as_bytes());
    let mut rest = values.peekable();
    if rest.peek().is_none() {
        return Some(first);
    }
    let mut all = first.into_owned();
    for value in rest {
        all.push(',');
        all.push_str(&String::from_utf8_lossy(value.as_bytes()));
    }
    Some(Cow::Owned(all))
}

/// A query condition on the parameter's first occurrence, name and value
/// percent-decoded. A missing parameter matches nothing.
fn query_matches(m: &QueryMatch, query: Option<&str>) -> bool {
    query
        .and_then(|q| query_param(q, &m.name))
        .is_some_and(|value| value_matches(&m.value, &value))
}

/// The percent-decoded value of the first parameter named `name` (decoded) in `query`.
pub(super) fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key) == name).then(|| decode(value))
    })
}

fn decode(s: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy()
}

fn value_matches(m: &ValueMatch, value: &str) -> bool {
    match m {
        ValueMatch::Present => true,
        ValueMatch::Exact(want) => value == want,
        ValueMatch::Prefix(want) => value.starts_with(want.as_str()),
        ValueMatch::Suffix(want) => value.ends_with(want.as_str()),
        ValueMatch::Regex(re) => full_match(re, value),
    }
}

/// Whether `re` matches the whole of `text`, as RE2's full match (what Envoy's
/// `safe_regex` does). A regex compiled as `^(?:...)$` is used as it is; any other is
/// anchored once and remembered.
fn full_match(re: &Regex, text: &str) -> bool {
    let source = re.as_str();
    if source.starts_with("^(?:") && source.ends_with(")$") {
        return re.is_match(text);
    }
    static ANCHORED: Mutex<Option<HashMap<String, Option<Regex>>>> = Mutex::new(None);
    let anchored = {
        let mut cache = ANCHORED.lock();
        let cache = cache.get_or_insert_with(HashMap::new);
        // Regexes come from the configuration; should they churn, start over.
        if cache.len() >= 1024 {
            cache.clear();
        }
        cache
            .entry(source.to_owned())
            .or_insert_with(|| Regex::new(&format!("^(?:{source})$")).ok())
            .clone()
    };
    match anchored {
        Some(anchored) => anchored.is_match(text),
        None => re.find(text).is_some_and(|m| m.range() == (0..text.len())),
    }
}

/// The split `roll` (uniform in `0..TOTAL_WEIGHT`) lands on: splits take consecutive
/// ranges as wide as their weights, so a weight-0 split is never taken. Should the
/// weights not add up to the total, the roll is scaled to their sum.
pub(super) fn split(route: &Route, roll: u32) -> Option<&Split> {
    let total: u64 = route.splits.iter().map(|s| u64::from(s.weight)).sum();
    if total == 0 {
        return route.splits.first();
    }
    let roll = u64::from(roll) * total / u64::from(TOTAL_WEIGHT);
    let mut upto = 0;
    route.splits.iter().find(|s| {
        upto += u64::from(s.weight);
        roll < upto
    })
}

/// The rolls for `split` of one upstream listener: the golden-ratio (Weyl) sequence
/// from a random start, not independent draws. Each roll is as uniform as a random
/// one, but any run of consecutive requests fills the weights evenly: 1,000 requests
/// to a 90/10 split land within a request or two of 900 and 100, where random draws
/// stray by ±30 (three standard deviations) once in a few hundred runs. A canary
/// gets its share, not a share that depends on luck. (Envoy draws at random.)
pub(super) struct Rolls(AtomicU32);

/// 2^32 divided by the golden ratio, odd: each step moves the sequence by the most
/// irrational fraction of the circle.
const GOLDEN_STEP: u32 = 0x9E37_79B9;

impl Rolls {
    pub(super) fn new() -> Rolls {
        Rolls(AtomicU32::new(fastrand::u32(..)))
    }

    /// The next roll, in `0..TOTAL_WEIGHT`.
    pub(super) fn next(&self) -> u32 {
        let x = self.0.fetch_add(GOLDEN_STEP, Ordering::Relaxed);
        // Scaled to the total: (x / 2^32) * TOTAL_WEIGHT, below TOTAL_WEIGHT.
        u32::try_from((u64::from(x) * u64::from(TOTAL_WEIGHT)) >> 32).unwrap_or(0)
    }
}

/// `req`'s path with the matched part replaced by `rewrite`: the prefix of a prefix
/// match (a route without a path condition matches the prefix `/`), the whole path of
/// an exact or regex match. The query string stays.
pub(super) fn rewrite_path<B>(m: &RouteMatch, rewrite: &str, req: &mut Request<B>) {
    let uri = req.uri();
    let path = uri.path();
    let kept = match &m.path {
        PathMatch::Prefix(prefix) => path.get(prefix.len()..).unwrap_or(""),
        PathMatch::Any => path.get(1..).unwrap_or(""),
        PathMatch::Exact(_) | PathMatch::Regex(_) => "",
    };
    let mut new = format!("{rewrite}{kept}");
    if new.is_empty() {
        new.push('/');
    }
    if let Some(query) = uri.query() {
        new.push('?');
        new.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    match new.parse() {
        Ok(path_and_query) => parts.path_and_query = Some(path_and_query),
        Err(e) => {
            tracing::debug!(path = %new, error = %e, "prefix rewrite gave no valid path; unchanged");
            return;
        }
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// Applies one level's header changes as Envoy does: the removals, then the additions
/// (appended to any value there), then the values set (replacing any there). `Host`
/// is never changed: the authority travels in the URI (Envoy refuses such a change).
pub(super) fn change_headers(changes: &HeaderChanges, headers: &mut HeaderMap) {
    let allowed = |name: &HeaderName| *name != header::HOST;
    for name in changes.remove.iter().filter(|n| allowed(n)) {
        headers.remove(name);
    }
    for (name, value) in changes.add.iter().filter(|(n, _)| allowed(n)) {
        headers.append(name.clone(), value.clone());
    }
    for (name, value) in changes.set.iter().filter(|(n, _)| allowed(n)) {
        headers.insert(name.clone(), value.clone());
    }
}

/// The request's (or response's) headers after a route and split's changes. The
/// split's go first and the route's after them, so that a value both set is the
/// route's: Envoy's order (weighted cluster, then route).
pub(super) fn change_both(split: &HeaderChanges, route: &HeaderChanges, headers: &mut HeaderMap) {
    change_headers(split, headers);
    change_headers(route, headers);
}

#[cfg(test)]
#[path = "route/tests.rs"]
mod tests;
