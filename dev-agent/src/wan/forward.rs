//! Requests another datacenter answers, as Consul's agents forward them
//! (`docs/consul-semantics.md#datacenters`):
//!
//! - `?dc=<other>` on the catalog, health, discovery-chain, config-entry, intention, CA
//!   and prepared-query endpoints: the request goes as it came (method, path, query,
//!   body, `X-Consul-Token` and the other request headers, so `index`/`wait` block over
//!   there) to that datacenter's agent, whose status, body and `X-Consul-*` headers are
//!   relayed back. An unknown datacenter is Consul's `500 No path to datacenter`.
//! - in a secondary, writes of config entries and intentions go to the primary (Consul's
//!   servers send them there), which replicates them back (`replicate`).
//!
//! The agent endpoints (`/v1/agent/...`) are always this agent's own.

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use http::header::{self, HeaderMap, HeaderName};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::blocking::{DEFAULT_WAIT, MAX_WAIT};
use crate::http::{ApiError, Call, Reply};
use crate::state::Shared;

/// What a decoded path must have escaped again to travel: what a URL path cannot hold.
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');
/// How long a request that does not block may take over there.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Beyond a blocking request's wait (and the other side's jitter).
const BLOCKING_MARGIN: Duration = Duration::from_secs(10);

/// Answers `call` from another datacenter when it is for one, or is a secondary's
/// write the primary takes; `None` when this agent answers it itself.
pub(crate) async fn route(
    shared: &Shared,
    path: &str,
    call: &Call,
) -> Result<Option<Reply>, ApiError> {
    let wan = &shared.wan;
    if let Some(dc) = call
        .query
        .get("dc")
        .filter(|dc| !dc.is_empty() && *dc != wan.datacenter())
        && forwardable(path)
    {
        let addr = wan
            .address(dc)
            .ok_or_else(|| ApiError::internal("No path to datacenter"))?;
        return relay(shared, dc, addr, path, call, false).await.map(Some);
    }
    if wan.is_secondary() && primary_write(path, &call.method) {
        let addr = wan
            .primary_address()
            .ok_or_else(|| ApiError::internal("No path to datacenter"))?;
        return relay(shared, wan.primary(), addr, path, call, true)
            .await
            .map(Some);
    }
    Ok(None)
}

/// The endpoints `?dc=` may send to another datacenter.
fn forwardable(path: &str) -> bool {
    const PREFIXES: [&str; 6] = [
        "/v1/catalog/",
        "/v1/health/",
        "/v1/discovery-chain/",
        "/v1/config",
        "/v1/connect/",
        "/v1/query",
    ];
    path != "/v1/catalog/datacenters" && PREFIXES.iter().any(|p| path.starts_with(p))
}

/// Writes that only the primary takes: config entries (intentions among them) and the
/// legacy intention edits.
fn primary_write(path: &str, method: &Method) -> bool {
    match *method {
        Method::PUT => path == "/v1/config" || path == "/v1/connect/intentions/exact",
        Method::DELETE => path.starts_with("/v1/config/") || path == "/v1/connect/intentions/exact",
        _ => false,
    }
}

/// Sends `call` to the agent of `dc` at `addr` and relays its answer. `drop_dc`: leave
/// `?dc=` out (a write sent to the primary is for the primary, whatever it named).
async fn relay(
    shared: &Shared,
    dc: &str,
    addr: SocketAddr,
    path: &str,
    call: &Call,
    drop_dc: bool,
) -> Result<Reply, ApiError> {
    let target = path_and_query(path, call, drop_dc);
    let timeout = relay_timeout(call)?;
    let sent = shared.wan.client.send(
        addr,
        call.method.clone(),
        &target,
        forwarded_headers(&call.headers),
        call.body.clone(),
        timeout,
    );
    let fetched = tokio::select! {
        fetched = sent => fetched,
        () = shared.shutdown.cancelled() => Err("the agent is shutting down".to_owned()),
    }
    .map_err(|e| {
        ApiError::internal(format!(
            "rpc error making call: datacenter {dc:?} (agent {addr}): {e}"
        ))
    })?;
    Ok(Reply::relayed(
        fetched.status,
        relayed_headers(&fetched.headers),
        fetched.body,
    ))
}

/// The path encoded again, and the query as it came (`dc` left out if asked).
fn path_and_query(path: &str, call: &Call, drop_dc: bool) -> String {
    let mut out = utf8_percent_encode(path, PATH).to_string();
    let mut query = form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (key, value) in call.query.pairs() {
        if drop_dc && key == "dc" {
            continue;
        }
        query.append_pair(key, value);
        any = true;
    }
    if any {
        out.push('?');
        out.push_str(&query.finish());
    }
    out
}

/// A blocking request may be held for its wait (at most Consul's maximum) plus the
/// other side's jitter; any other gets a fixed bound.
fn relay_timeout(call: &Call) -> Result<Duration, ApiError> {
    let opts = call.blocking()?;
    if opts.index == 0 {
        return Ok(ANSWER_TIMEOUT);
    }
    let wait = opts.wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
    Ok(wait + wait / 16 + BLOCKING_MARGIN)
}

/// The request headers that travel: all but the connection's own.
fn forwarded_headers(headers: &HeaderMap) -> HeaderMap {
    let hop = [
        header::HOST,
        header::CONNECTION,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::TE,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ];
    let mut out = headers.clone();
    for name in &hop {
        out.remove(name);
    }
    out
}

/// The answer's headers that come back: `Content-Type`, the `X-Consul-*` ones, and the
/// agent cache's `X-Cache`/`Age`.
fn relayed_headers(headers: &HeaderMap) -> HeaderMap {
    headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            name.starts_with("x-consul-")
                || name == "content-type"
                || name == "x-cache"
                || name == "age"
                || name == "allow"
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Query;

    fn call(query: &str) -> Call {
        Call {
            method: Method::GET,
            query: Query::parse(Some(query)),
            headers: HeaderMap::new(),
            body: bytes::Bytes::new(),
        }
    }

    #[test]
    fn the_request_travels_as_it_came() {
        let c = call("dc=dc2&index=7&wait=5s&filter=Service.Meta.v+%3D%3D+%22a+b%22");
        assert_eq!(
            path_and_query("/v1/health/connect/a b", &c, false),
            "/v1/health/connect/a%20b?dc=dc2&index=7&wait=5s&filter=Service.Meta.v+%3D%3D+%22a+b%22"
        );
        assert_eq!(
            path_and_query("/v1/config", &call("dc=dc2&cas=3"), true),
            "/v1/config?cas=3"
        );
        assert_eq!(path_and_query("/v1/config", &call(""), true), "/v1/config");
    }

    #[test]
    fn blocking_requests_get_their_wait() {
        assert_eq!(relay_timeout(&call("dc=dc2")).unwrap(), ANSWER_TIMEOUT);
        assert_eq!(
            relay_timeout(&call("index=3&wait=16s")).unwrap(),
            Duration::from_secs(27)
        );
        let longest = relay_timeout(&call("index=3&wait=1h")).unwrap();
        assert_eq!(longest, MAX_WAIT + MAX_WAIT / 16 + BLOCKING_MARGIN);
    }

    #[test]
    fn only_the_datacenters_reads_and_the_primarys_writes_travel() {
        assert!(forwardable("/v1/health/connect/api"));
        assert!(forwardable("/v1/query/q/execute"));
        assert!(!forwardable("/v1/catalog/datacenters"));
        assert!(!forwardable("/v1/agent/services"));
        assert!(primary_write("/v1/config", &Method::PUT));
        assert!(primary_write(
            "/v1/config/service-intentions/api",
            &Method::DELETE
        ));
        assert!(!primary_write(
            "/v1/config/service-intentions/api",
            &Method::GET
        ));
        assert!(!primary_write("/v1/agent/service/register", &Method::PUT));
    }
}
