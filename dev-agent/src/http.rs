//! The dev agent's HTTP/1.1 front: routing, query and body parsing, and the answer's
//! shape: Consul's headers, plain-text errors with Consul's status codes, the Community
//! Edition refusals (all in `docs/consul-semantics.md#agent-api`) and JSON indented as a
//! `consul agent -dev` indents it.
//!
//! Handlers live with the state they serve (`services`, `checks`, `ca`, `intentions`);
//! this module only knows paths and bytes.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::blocking::Blocking;
use super::checks::{CRITICAL, WARNING};
use super::state::Shared;
use super::{catalog, chain, checks, connect_ca, intentions, query, services, wan, workload};
use ferrule_control::api::agent_self::{AgentSelf, AgentSelfConfig};
use ferrule_control::api::health::PASSING;

/// Request bodies beyond this are refused: config entries and registrations are small.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// The Consul version the dev agent answers as.
pub(super) const VERSION: &str = "1.21.0";

/// The query string, decoded as Go's `url.ParseQuery` does (`+` is a space).
#[derive(Debug, Default)]
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    pub(super) fn parse(raw: Option<&str>) -> Query {
        Query(
            raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }

    /// The first value of `key` (`Values.Get`).
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every key and value, in the order they came.
    pub(super) fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub(super) fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// A boolean parameter as Consul reads one: absent is false, present without a
    /// value is true, otherwise Go's `strconv.ParseBool`.
    pub(super) fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(false),
            Some("" | "1" | "t" | "T" | "TRUE" | "true" | "True") => Ok(true),
            Some("0" | "f" | "F" | "FALSE" | "false" | "False") => Ok(false),
            Some(_) => Err(ApiError::bad_request(format!("Invalid value for ?{key}"))),
        }
    }
}

/// One request, read whole.
pub(super) struct Call {
    pub(super) method: Method,
    pub(super) query: Query,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

impl Call {
    pub(super) fn blocking(&self) -> Result<Blocking, ApiError> {
        Blocking::parse(&self.query)
    }

    /// Community Edition refuses namespace and partition selectors, even `default`
    /// (`agent/http_ce.go`).
    pub(super) fn reject_enterprise(&self) -> Result<(), ApiError> {
        let header = |name: &str| {
            self.headers
                .get(name)
                .is_some_and(|v| !v.as_bytes().is_empty())
        };
        let param = |name: &str| self.query.get(name).is_some_and(|v| !v.is_empty());
        if header("X-Consul-Namespace") {
            return Err(ApiError::bad_request(
                "Invalid header: \"X-Consul-Namespace\" - Namespaces are a Consul Enterprise feature",
            ));
        }
        if param("ns") {
            return Err(ApiError::bad_request(
                "Invalid query parameter: \"ns\" - Namespaces are a Consul Enterprise feature",
            ));
        }
        if header("X-Consul-Partition") {
            return Err(ApiError::bad_request(
                "Invalid header: \"X-Consul-Partition\" - Partitions are a Consul Enterprise feature",
            ));
        }
        if param("partition") {
            return Err(ApiError::bad_request(
                "Invalid query parameter: \"partition\" - Partitions are a Consul Enterprise feature",
            ));
        }
        Ok(())
    }

    /// `?stale`, `?consistent` → the `X-Consul-Effective-Consistency` they ask for.
    pub(super) fn consistency(&self) -> Result<&'static str, ApiError> {
        match (self.query.has("stale"), self.query.has("consistent")) {
            (true, true) => Err(ApiError::bad_request(
                "Cannot specify ?stale with ?consistent, conflicting semantics.",
            )),
            (true, false) => Ok("stale"),
            (false, true) => Ok("consistent"),
            (false, false) => Ok("leader"),
        }
    }

    /// Whether `?dc=` names a datacenter other than ours. `wan::forward` sends the
    /// requests for a known one there, so here it is one no agent knows.
    pub(super) fn foreign_datacenter(&self, ours: &str) -> bool {
        self.query
            .get("dc")
            .is_some_and(|dc| !dc.is_empty() && dc != ours)
    }
}

/// An answer.
pub(super) struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    /// JSON indented with four spaces and a trailing newline: what a `-dev` agent sends.
    pub(super) fn json<T: Serialize + ?Sized>(value: &T) -> Result<Reply, ApiError> {
        let mut out = Vec::with_capacity(256);
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
        value
            .serialize(&mut ser)
            .map_err(|e| ApiError::internal(format!("encoding the answer: {e}")))?;
        out.push(b'\n');
        Ok(Reply::text("application/json", out))
    }

    pub(super) fn text(content_type: &'static str, body: impl Into<Bytes>) -> Reply {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        Reply {
            status: StatusCode::OK,
            headers,
            body: body.into(),
        }
    }

    /// 200 without a body, as Consul answers most writes.
    pub(super) fn empty() -> Reply {
        Reply {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// Another agent's answer, relayed as it came (`wan::forward`).
    pub(super) fn relayed(status: StatusCode, headers: HeaderMap, body: Bytes) -> Reply {
        Reply {
            status,
            headers,
            body,
        }
    }

    pub(super) fn header(mut self, name: &'static str, value: &str) -> Reply {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            self.headers.insert(name, value);
        }
        self
    }

    /// `X-Consul-Index`; never 0, as Consul rewrites 0 to 1.
    pub(super) fn index(self, index: u64) -> Reply {
        self.header("x-consul-index", &index.max(1).to_string())
    }

    /// The headers of an answer from the (only, always known) leader.
    pub(super) fn leader_meta(self, consistency: &str) -> Reply {
        self.header("x-consul-knownleader", "true")
            .header("x-consul-lastcontact", "0")
            .header("x-consul-effective-consistency", consistency)
    }

    /// `X-Cache` of agent-cached endpoints: a hit unless the answer waited for a change.
    pub(super) fn cache(self, hit: bool) -> Reply {
        if hit {
            self.header("x-cache", "HIT").header("age", "0")
        } else {
            self.header("x-cache", "MISS")
        }
    }
}

/// A failed request: plain text, Consul's status.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    pub(super) message: String,
    allow: Option<&'static str>,
    index: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            allow: None,
            index: None,
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(super) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// Consul answers 500 for every error it did not classify.
    pub(super) fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub(super) fn method_not_allowed(method: &Method, allow: &'static str) -> ApiError {
        ApiError {
            allow: Some(allow),
            ..ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} not allowed"),
            )
        }
    }

    /// Consul sets the index before it finds that a config entry is missing.
    pub(super) fn with_index(mut self, index: u64) -> ApiError {
        self.index = Some(index);
        self
    }

    fn into_reply(self) -> Reply {
        let mut reply = Reply::text("text/plain; charset=utf-8", self.message);
        reply.status = self.status;
        if let Some(allow) = self.allow {
            reply = reply.header("allow", allow);
        }
        if let Some(index) = self.index {
            reply = reply.index(index);
        }
        reply
    }
}

/// Decodes a JSON body into a shared wire type and refuses fields it does not have, as
/// Consul's strict decoder does. The wire types themselves stay lenient for the client.
/// Returns the raw value too, for checks on keys the wire type does know but CE lacks.
pub(super) fn decode_strict<T: DeserializeOwned>(
    body: &[u8],
    prefix: &str,
) -> Result<(T, Value), ApiError> {
    let raw: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("{prefix}: {e}")))?;
    let mut unknown = Vec::new();
    let value: T = serde_ignored::deserialize(raw.clone(), |path| {
        unknown.push(path.to_string());
    })
    .map_err(|e| ApiError::bad_request(format!("{prefix}: {e}")))?;
    if let Some(path) = unknown.first() {
        let field = path.rsplit('.').next().unwrap_or(path);
        return Err(ApiError::bad_request(format!(
            "{prefix}: json: unknown field {field:?}"
        )));
    }
    Ok((value, raw))
}

/// Serves one request: reads it whole, routes it, and always answers.
pub(super) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = match read(request).await {
        Ok((path, call)) => match route(&shared, &path, &call).await {
            Ok(reply) => reply,
            Err(e) => {
                tracing::debug!(method = %call.method, %path, status = %e.status, error = %e.message, "dev agent: request refused");
                e.into_reply()
            }
        },
        Err(e) => e.into_reply(),
    };
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = reply.status;
    *response.headers_mut() = reply.headers;
    // Consul sends it on every answer, ACLs enabled or not.
    response.headers_mut().insert(
        HeaderName::from_static("x-consul-default-acl-policy"),
        HeaderValue::from_static("allow"),
    );
    Ok(response)
}

async fn read(request: Request<Incoming>) -> Result<(String, Call), ApiError> {
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
        .to_bytes();
    let path = percent_encoding::percent_decode_str(parts.uri.path())
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("the path is not UTF-8"))?
        .into_owned();
    Ok((
        path,
        Call {
            method: parts.method,
            query: Query::parse(parts.uri.query()),
            headers: parts.headers,
            body,
        },
    ))
}

/// Method check: `allow` lists what the path accepts.
fn only(call: &Call, methods: &[Method], allow: &'static str) -> Result<(), ApiError> {
    if methods.contains(&call.method) {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed(&call.method, allow))
    }
}

async fn route(shared: &Arc<Shared>, path: &str, call: &Call) -> Result<Reply, ApiError> {
    if let Some(reply) = wan::forward::route(shared, path, call).await? {
        return Ok(reply);
    }
    let routed = if path.starts_with("/v1/agent/") {
        agent_route(shared, path, call).await?
    } else if path.starts_with("/v1/connect/") {
        connect_route(shared, path, call).await?
    } else if path.starts_with("/v1/internal/ferrule/") {
        internal_route(shared, path, call).await?
    } else {
        catalog_route(shared, path, call).await?
    };
    routed.ok_or_else(|| ApiError::not_found("404 page not found"))
}

const GET: &[Method] = &[Method::GET];
const PUT: &[Method] = &[Method::PUT];
const POST: &[Method] = &[Method::POST];

/// What follows `prefix` in `path`, when something does.
fn tail<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix).filter(|r| !r.is_empty())
}

/// `/v1/agent/...`: the local agent's own state. `None` when no route matches.
async fn agent_route(
    shared: &Arc<Shared>,
    path: &str,
    call: &Call,
) -> Result<Option<Reply>, ApiError> {
    let reply = if path == "/v1/agent/self" {
        only(call, GET, "GET")?;
        agent_self(shared)
    } else if path == "/v1/agent/services" {
        only(call, GET, "GET")?;
        services::list(shared, call).await
    } else if path == "/v1/agent/checks" {
        only(call, GET, "GET")?;
        services::checks(shared, call).await
    } else if path == "/v1/agent/service/register" {
        only(call, PUT, "PUT")?;
        services::register(shared, call).await
    } else if let Some(id) = tail(path, "/v1/agent/service/deregister/") {
        only(call, PUT, "PUT")?;
        services::deregister(shared, call, id).await
    } else if let Some(id) = tail(path, "/v1/agent/service/") {
        only(call, GET, "GET")?;
        services::get(shared, call, id).await
    } else if let Some((id, status)) = ttl_update(path) {
        only(call, PUT, "PUT")?;
        checks::update_ttl(shared, call, status, id).await
    } else if path == "/v1/agent/connect/ca/roots" {
        only(call, GET, "GET")?;
        connect_ca::roots(shared, call, true).await
    } else if let Some(service) = path.strip_prefix("/v1/agent/connect/ca/leaf/") {
        only(call, GET, "GET")?;
        connect_ca::leaf(shared, call, service).await
    } else if path == "/v1/agent/connect/authorize" {
        only(call, POST, "POST")?;
        intentions::authorize(shared, call).await
    } else {
        return Ok(None);
    };
    reply.map(Some)
}

/// `/v1/agent/check/{pass,warn,fail}/:id`: the check and the status it reports.
fn ttl_update(path: &str) -> Option<(&str, &'static str)> {
    [
        ("/v1/agent/check/pass/", PASSING),
        ("/v1/agent/check/warn/", WARNING),
        ("/v1/agent/check/fail/", CRITICAL),
    ]
    .into_iter()
    .find_map(|(prefix, status)| tail(path, prefix).map(|id| (id, status)))
}

/// `/v1/connect/...`: the CA and the intentions, as the servers answer them.
async fn connect_route(
    shared: &Arc<Shared>,
    path: &str,
    call: &Call,
) -> Result<Option<Reply>, ApiError> {
    let reply = match path {
        "/v1/connect/ca/roots" => {
            only(call, GET, "GET")?;
            connect_ca::roots(shared, call, false).await
        }
        "/v1/connect/ca/configuration" => match call.method {
            Method::GET => connect_ca::configuration(shared, call).await,
            Method::PUT => connect_ca::set_configuration(shared, call).await,
            _ => Err(ApiError::method_not_allowed(&call.method, "GET, PUT")),
        },
        "/v1/connect/intentions/match" => {
            only(call, GET, "GET")?;
            intentions::matches(shared, call).await
        }
        "/v1/connect/intentions/check" => {
            only(call, GET, "GET")?;
            intentions::check(shared, call).await
        }
        "/v1/connect/intentions/exact" => match call.method {
            Method::GET => intentions::exact_get(shared, call).await,
            Method::PUT => intentions::exact_put(shared, call).await,
            Method::DELETE => intentions::exact_delete(shared, call).await,
            _ => Err(ApiError::method_not_allowed(
                &call.method,
                "GET, PUT, DELETE",
            )),
        },
        "/v1/connect/intentions" => {
            only(call, GET, "GET")?;
            intentions::list(shared, call).await
        }
        _ => return Ok(None),
    };
    reply.map(Some)
}

/// The rest: health views, config entries, prepared queries, the catalog and the status
/// endpoints.
async fn catalog_route(
    shared: &Arc<Shared>,
    path: &str,
    call: &Call,
) -> Result<Option<Reply>, ApiError> {
    let reply = if let Some(name) = tail(path, "/v1/health/connect/") {
        only(call, GET, "GET")?;
        services::health(shared, call, name, true).await
    } else if let Some(name) = tail(path, "/v1/health/service/") {
        only(call, GET, "GET")?;
        services::health(shared, call, name, false).await
    } else if let Some(name) = path.strip_prefix("/v1/discovery-chain/") {
        match call.method {
            Method::GET | Method::POST => chain::endpoint::read(shared, call, name).await,
            _ => Err(ApiError::method_not_allowed(&call.method, "GET, POST")),
        }
    } else if path == "/v1/query" {
        query::general(shared, call).await
    } else if let Some(rest) = tail(path, "/v1/query/") {
        query::specific(shared, call, rest).await
    } else if path == "/v1/config" {
        only(call, PUT, "PUT")?;
        intentions::put_config(shared, call).await
    } else if let Some(kind_and_name) = tail(path, "/v1/config/") {
        config_entry(shared, call, kind_and_name).await
    } else if path == "/v1/catalog/services" {
        only(call, GET, "GET")?;
        catalog::services(shared, call).await
    } else if let Some(name) = tail(path, "/v1/catalog/service/") {
        only(call, GET, "GET")?;
        catalog::service(shared, call, name, false).await
    } else if let Some(name) = tail(path, "/v1/catalog/connect/") {
        only(call, GET, "GET")?;
        catalog::service(shared, call, name, true).await
    } else if path == "/v1/catalog/nodes" {
        only(call, GET, "GET")?;
        catalog::nodes(shared, call).await
    } else if let Some(name) = tail(path, "/v1/catalog/node/") {
        only(call, GET, "GET")?;
        catalog::node(shared, call, name).await
    } else if path == "/v1/catalog/datacenters" {
        only(call, GET, "GET")?;
        Reply::json(&shared.wan.datacenters())
    } else if path == "/v1/status/leader" {
        only(call, GET, "GET")?;
        Reply::json(SERVER_ADDR)
    } else if path == "/v1/status/peers" {
        only(call, GET, "GET")?;
        Reply::json(&[SERVER_ADDR])
    } else {
        return Ok(None);
    };
    reply.map(Some)
}

/// `/v1/internal/ferrule/...`: what the dev agents of several datacenters say to each
/// other (`wan`), where Consul's servers use RPC and gossip; and a workload's Workload
/// API identity withdrawn or issued again (`workload`), as a SPIRE entry is deleted or
/// created.
async fn internal_route(
    shared: &Arc<Shared>,
    path: &str,
    call: &Call,
) -> Result<Option<Reply>, ApiError> {
    let reply = if path == wan::join::PATH {
        only(call, PUT, "PUT")?;
        wan::join::handle(shared, call).await
    } else if path == wan::ca::PATH {
        only(call, POST, "POST")?;
        wan::ca::sign(shared, call).await
    } else if let Some(service) = tail(path, workload::ENTRY_PATH) {
        only(call, &[Method::PUT, Method::DELETE], "PUT, DELETE")?;
        workload::entry(shared, call, service)
    } else {
        return Ok(None);
    };
    reply.map(Some)
}

/// `/v1/config/:kind` (list) and `/v1/config/:kind/:name` (read, delete).
async fn config_entry(
    shared: &Arc<Shared>,
    call: &Call,
    kind_and_name: &str,
) -> Result<Reply, ApiError> {
    match (kind_and_name.split_once('/'), &call.method) {
        (Some((kind, name)), &Method::GET) => {
            intentions::get_config(shared, call, kind, name).await
        }
        (Some((kind, name)), &Method::DELETE) => {
            intentions::delete_config(shared, call, kind, name).await
        }
        (None, &Method::GET) => intentions::list_config(shared, call, kind_and_name).await,
        (None, &Method::DELETE) => Err(ApiError::not_found(
            "Must provide both a kind and name to delete",
        )),
        _ => Err(ApiError::method_not_allowed(&call.method, "GET, DELETE")),
    }
}

/// The server RPC address the dev agent reports as the leader's.
const SERVER_ADDR: &str = "127.0.0.1:8300";

/// `GET /v1/agent/self`.
fn agent_self(shared: &Shared) -> Result<Reply, ApiError> {
    let config = &shared.config;
    let (node_id, node_name) =
        shared.with(|state| (state.node.node.id.clone(), state.node.node.node.clone()));
    let policy = config
        .default_intention_policy
        .map(|a| a.to_string())
        .unwrap_or_default();
    let body = AgentSelf {
        config: AgentSelfConfig {
            datacenter: config.datacenter.clone(),
            primary_datacenter: config.primary().to_owned(),
            node_name: node_name.clone(),
            node_id,
            partition: String::new(),
            revision: "ferrule-dev".to_owned(),
            server: true,
            version: VERSION.to_owned(),
            build_date: "2025-05-15T00:00:00Z".to_owned(),
        },
        debug_config: AgentSelf::debug_config_for(&policy, false, "allow"),
        coord: None,
        member: Some(serde_json::json!({
            "Name": node_name,
            "Addr": "127.0.0.1",
            "Port": 8301,
            "Tags": { "dc": config.datacenter, "role": "consul", "build": VERSION },
            "Status": 1,
        })),
        stats: Some(serde_json::json!({})),
        meta: Some(serde_json::json!({})),
        xds: None,
    };
    Reply::json(&body)
}
