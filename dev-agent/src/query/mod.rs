//! Prepared queries (https://developer.hashicorp.com/consul/api-docs/query,
//! `docs/consul-semantics.md#prepared-queries`): `POST /v1/query` creates one (and
//! answers its `ID`), `GET /v1/query` lists them, `GET|PUT|DELETE /v1/query/<id>` read,
//! replace and delete one, and `GET /v1/query/<id or name>/execute` runs one
//! (`execute`). They are stored per datacenter, like the rest of the state (and in the
//! data dir), and are not replicated: a query fails over by running its definition in
//! the other datacenters, as Consul's servers do.
//!
//! What the dev agent does not have is refused with a message: sessions (a query must
//! have a name), templates, cluster peers as failover targets.

mod execute;

use std::collections::BTreeMap;

use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;

use ferrule_control::duration;

use super::blocking::{self, DEFAULT_WAIT};
use super::http::{ApiError, Call, Reply};
use super::state::{Shared, State};

/// Consul shows a stored token it hides as this; sending it back is a mistake.
const REDACTED: &str = "<hidden>";

/// A prepared query (`structs.PreparedQuery`), as written and as read.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct PreparedQuery {
    #[serde(rename = "ID")]
    pub(super) id: String,
    pub(super) name: String,
    pub(super) session: String,
    pub(super) token: String,
    pub(super) template: QueryTemplate,
    pub(super) service: ServiceQuery,
    #[serde(rename = "DNS")]
    pub(super) dns: QueryDns,
    pub(super) create_index: u64,
    pub(super) modify_index: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct QueryTemplate {
    #[serde(rename = "Type")]
    pub(super) kind: String,
    pub(super) regexp: String,
    pub(super) remove_empty_tags: bool,
}

/// What a query selects (`structs.ServiceQuery`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct ServiceQuery {
    pub(super) service: String,
    pub(super) failover: QueryFailover,
    pub(super) only_passing: bool,
    #[serde(rename = "IgnoreCheckIDs")]
    pub(super) ignore_check_ids: Vec<String>,
    pub(super) near: String,
    pub(super) tags: Vec<String>,
    pub(super) node_meta: BTreeMap<String, String>,
    pub(super) service_meta: BTreeMap<String, String>,
    pub(super) peer: String,
    /// Only connect-capable instances (sidecars and native services), as `?connect`.
    pub(super) connect: bool,
}

/// Where a query goes when the local datacenter has no healthy instance.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct QueryFailover {
    /// The nearest N other datacenters (by name here: dev agents have no network
    /// coordinates).
    #[serde(rename = "NearestN")]
    pub(super) nearest_n: i64,
    /// Then these, in order, skipping unknown ones and those already tried.
    pub(super) datacenters: Vec<String>,
    /// Or these (never with the two above); a peer is skipped here.
    pub(super) targets: Vec<FailoverTarget>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct FailoverTarget {
    pub(super) peer: String,
    pub(super) datacenter: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct QueryDns {
    #[serde(rename = "TTL")]
    pub(super) ttl: String,
}

/// `/v1/query`.
pub(super) async fn general(shared: &Shared, call: &Call) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    match call.method {
        Method::POST => create(shared, call),
        Method::GET => list(shared, call).await,
        _ => Err(ApiError::method_not_allowed(&call.method, "GET, POST")),
    }
}

/// `/v1/query/<id>`, `/v1/query/<id or name>/execute`.
pub(super) async fn specific(shared: &Shared, call: &Call, rest: &str) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    if let Some(id) = rest.strip_suffix("/execute") {
        if call.method != Method::GET {
            return Err(ApiError::method_not_allowed(&call.method, "GET"));
        }
        return execute::execute(shared, call, id).await;
    }
    match call.method {
        Method::GET => get(shared, call, rest).await,
        Method::PUT => update(shared, call, rest),
        Method::DELETE => delete(shared, rest),
        _ => Err(ApiError::method_not_allowed(
            &call.method,
            "GET, PUT, DELETE",
        )),
    }
}

/// A query body, decoded as Consul decodes it (unknown keys ignored).
fn decode(body: &[u8]) -> Result<PreparedQuery, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))
}

/// Consul's checks of a query to store (`parseQuery`), and what the dev agent lacks.
fn validate(query: &PreparedQuery) -> Result<(), String> {
    if !query.template.kind.is_empty() {
        return Err("the dev agent does not run prepared query templates".to_owned());
    }
    if !query.session.is_empty() {
        return Err(format!("invalid session {:?}", query.session));
    }
    if query.name.is_empty() {
        return Err("Must be bound to a session".to_owned());
    }
    if query.token == REDACTED {
        return Err(format!(
            "Bad Token '{REDACTED}', it looks like a query definition with a redacted token was submitted"
        ));
    }
    let service = &query.service;
    if service.service.is_empty() {
        return Err("Must provide a Service name to query".to_owned());
    }
    let failover = &service.failover;
    if failover.nearest_n < 0 {
        return Err(format!(
            "Bad NearestN '{}', must be >= 0",
            failover.nearest_n
        ));
    }
    if !failover.targets.is_empty() && (failover.nearest_n != 0 || !failover.datacenters.is_empty())
    {
        return Err("Targets cannot be populated with NearestN or Datacenters".to_owned());
    }
    if !query.dns.ttl.is_empty() {
        duration::parse(&query.dns.ttl)
            .map_err(|e| format!("Bad DNS TTL '{}': {e}", query.dns.ttl))?;
    }
    Ok(())
}

/// `POST /v1/query` → `{"ID": ...}`.
fn create(shared: &Shared, call: &Call) -> Result<Reply, ApiError> {
    let mut query = decode(&call.body)?;
    if !query.id.is_empty() {
        return Err(ApiError::internal(
            "ID must be empty when creating a new prepared query",
        ));
    }
    validate(&query).map_err(|e| ApiError::internal(format!("Invalid prepared query: {e}")))?;
    let id = shared.with(|state| {
        let mut id = super::random_uuid();
        while state.queries.contains_key(&id) {
            id = super::random_uuid();
        }
        query.id = id.clone();
        state.store_query(query, None).map(|()| id)
    })?;
    Reply::json(&json!({ "ID": id }))
}

/// `PUT /v1/query/<id>`: the whole query replaced; the ID is the URL's.
fn update(shared: &Shared, call: &Call, id: &str) -> Result<Reply, ApiError> {
    let mut query = if call.body.is_empty() {
        PreparedQuery::default()
    } else {
        decode(&call.body)?
    };
    query.id = id.to_owned();
    shared.with(|state| {
        let Some(existing) = state.queries.get(id) else {
            return Err(not_modifiable(id));
        };
        let create_index = existing.create_index;
        validate(&query).map_err(|e| ApiError::internal(format!("Invalid prepared query: {e}")))?;
        state.store_query(query, Some(create_index))
    })?;
    Ok(Reply::empty())
}

/// `DELETE /v1/query/<id>`.
fn delete(shared: &Shared, id: &str) -> Result<Reply, ApiError> {
    shared.with(|state| {
        if state.queries.remove(id).is_none() {
            return Err(not_modifiable(id));
        }
        let index = state.bump();
        state.queries_index = index;
        Ok(())
    })?;
    Ok(Reply::empty())
}

fn not_modifiable(id: &str) -> ApiError {
    ApiError::internal(format!("Cannot modify non-existent prepared query: '{id}'"))
}

/// `GET /v1/query`.
async fn list(shared: &Shared, call: &Call) -> Result<Reply, ApiError> {
    let consistency = call.consistency()?;
    let opts = call.blocking()?;
    let answer = blocking::by_index(shared, &opts, DEFAULT_WAIT, |state, _| {
        let all: Vec<PreparedQuery> = state.queries.values().cloned().collect();
        Ok((all, state.queries_index))
    })
    .await?;
    Ok(Reply::json(&answer.value)?
        .index(answer.index)
        .leader_meta(consistency))
}

/// `GET /v1/query/<id>`: a list of the one query.
async fn get(shared: &Shared, call: &Call, id: &str) -> Result<Reply, ApiError> {
    let consistency = call.consistency()?;
    let opts = call.blocking()?;
    let answer = blocking::by_index(shared, &opts, DEFAULT_WAIT, |state, _| {
        Ok((state.queries.get(id).cloned(), state.queries_index))
    })
    .await?;
    let Some(query) = answer.value else {
        return Err(ApiError::not_found("Query not found"));
    };
    Ok(Reply::json(&[query])?
        .index(answer.index)
        .leader_meta(consistency))
}

impl State {
    /// Stores `query` at a new index (keeping `create_index` when it replaces one).
    /// Names are unique, and no name may be another query's ID.
    pub(super) fn store_query(
        &mut self,
        mut query: PreparedQuery,
        create_index: Option<u64>,
    ) -> Result<(), ApiError> {
        for other in self.queries.values().filter(|q| q.id != query.id) {
            if other.name == query.name {
                return Err(ApiError::internal(format!(
                    "Name '{}' aliases an existing query name",
                    query.name
                )));
            }
            if other.id == query.name {
                return Err(ApiError::internal(format!(
                    "Name '{}' aliases an existing query ID",
                    query.name
                )));
            }
        }
        let index = self.bump();
        query.create_index = create_index.unwrap_or(index);
        query.modify_index = index;
        self.queries.insert(query.id.clone(), query);
        self.queries_index = index;
        Ok(())
    }

    /// The query an execute names: by ID, else by name.
    fn resolve_query(&self, id_or_name: &str) -> Option<PreparedQuery> {
        self.queries
            .get(id_or_name)
            .or_else(|| {
                self.queries
                    .values()
                    .find(|q| !q.name.is_empty() && q.name == id_or_name)
            })
            .cloned()
    }
}
