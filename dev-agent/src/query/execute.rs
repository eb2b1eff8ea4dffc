//! `GET /v1/query/<id or name>/execute`, as Consul's servers run a prepared query:
//! the service's instances here (connect-capable ones with `Service.Connect` or
//! `?connect=true`, as `/v1/health/connect` lists them), without those with a critical
//! check (or, with `OnlyPassing`, any check not passing; `IgnoreCheckIDs` aside), then
//! the tag and meta filters, shuffled, cut to `?limit`. When nothing is left, the
//! failover datacenters are asked in order, each running the same definition on its
//! own instances, until one has some: first the `NearestN` nearest other datacenters
//! (by name: dev agents have no network coordinates), then `Datacenters` (unknown and
//! already tried ones skipped), or `Targets`. The answer names the datacenter that
//! answered and how many were asked (`Failovers`).

use std::collections::HashSet;

use serde::Serialize;

use ferrule_control::api::health::{PASSING, ServiceEntry};

use super::{PreparedQuery, QueryDns, ServiceQuery};
use crate::checks::CRITICAL;
use crate::http::{ApiError, Call, Reply};
use crate::state::Shared;

/// How long one failover datacenter may take to answer.
const REMOTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `structs.PreparedQueryExecuteResponse`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ExecuteResponse {
    service: String,
    nodes: Vec<ServiceEntry>,
    #[serde(rename = "DNS")]
    dns: QueryDns,
    datacenter: String,
    failovers: usize,
}

/// `GET /v1/query/<id or name>/execute`.
pub(super) async fn execute(shared: &Shared, call: &Call, id: &str) -> Result<Reply, ApiError> {
    let consistency = call.consistency()?;
    let connect = call
        .query
        .flag("connect")
        .map_err(|_| ApiError::bad_request("Invalid value for ?connect"))?;
    let limit = limit(call)?;
    let Some(query) = shared.with(|state| state.resolve_query(id)) else {
        return Err(ApiError::not_found("Query not found"));
    };
    let connect = connect || query.service.connect;
    let here = shared.wan.datacenter().to_owned();
    let local = shared.with(|state| state.health_entries(&query.service.service, connect).0);
    let mut answer = ExecuteResponse {
        service: query.service.service.clone(),
        nodes: select(local, &query.service, limit),
        dns: query.dns.clone(),
        datacenter: here,
        failovers: 0,
    };
    if answer.nodes.is_empty() {
        fail_over(shared, &query, connect, limit, &mut answer).await;
    }
    Ok(Reply::json(&answer)?.index(0).leader_meta(consistency))
}

/// `?limit=`: Go's `Atoi`; 0 or less means no limit.
fn limit(call: &Call) -> Result<usize, ApiError> {
    match call.query.get("limit").filter(|l| !l.is_empty()) {
        None => Ok(0),
        Some(text) => text
            .parse::<i64>()
            .map(|n| usize::try_from(n).unwrap_or(0))
            .map_err(|_| {
                ApiError::internal(format!(
                    "Bad limit: strconv.Atoi: parsing {text:?}: invalid syntax"
                ))
            }),
    }
}

/// Asks the failover datacenters in order until one has instances.
async fn fail_over(
    shared: &Shared,
    query: &PreparedQuery,
    connect: bool,
    limit: usize,
    answer: &mut ExecuteResponse,
) {
    for dc in failover_order(&query.service, &shared.wan.others()) {
        answer.failovers += 1;
        match remote_entries(shared, &dc, &query.service.service, connect).await {
            Ok(entries) => {
                answer.datacenter = dc;
                answer.nodes = select(entries, &query.service, limit);
                if !answer.nodes.is_empty() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(service = %query.service.service, datacenter = %dc, error = %e, "dev agent: a prepared query's failover datacenter did not answer");
            }
        }
    }
}

/// The datacenters a failover asks, in order: the first `NearestN` of `others` (the
/// other known datacenters, nearest first), then `Datacenters` (or `Targets`) that are
/// known and not asked yet.
fn failover_order(service: &ServiceQuery, others: &[String]) -> Vec<String> {
    let failover = &service.failover;
    let nearest = usize::try_from(failover.nearest_n).unwrap_or(0);
    let mut order: Vec<String> = others.iter().take(nearest).cloned().collect();
    let listed = failover.datacenters.iter().chain(
        failover
            .targets
            .iter()
            .filter(|t| t.peer.is_empty())
            .map(|t| &t.datacenter),
    );
    for dc in listed {
        if others.contains(dc) && !order.contains(dc) {
            order.push(dc.clone());
        }
    }
    order
}

/// The instances of `service` in datacenter `dc`, from its agent, before any filter.
async fn remote_entries(
    shared: &Shared,
    dc: &str,
    service: &str,
    connect: bool,
) -> Result<Vec<ServiceEntry>, String> {
    let addr = shared
        .wan
        .address(dc)
        .ok_or_else(|| "No path to datacenter".to_owned())?;
    let view = if connect { "connect" } else { "service" };
    let path = format!(
        "/v1/health/{view}/{}",
        percent_encoding::utf8_percent_encode(service, percent_encoding::NON_ALPHANUMERIC)
    );
    shared
        .wan
        .client
        .get(addr, &path, REMOTE_TIMEOUT)
        .await
        .and_then(|fetched| fetched.json())
        .map_err(|e| format!("{addr}: {e}"))
}

/// Consul's filters over one datacenter's instances, then a shuffle and the limit.
fn select(mut entries: Vec<ServiceEntry>, query: &ServiceQuery, limit: usize) -> Vec<ServiceEntry> {
    let ignored: HashSet<&str> = query.ignore_check_ids.iter().map(String::as_str).collect();
    entries.retain(|e| {
        healthy(e, query.only_passing, &ignored)
            && query
                .node_meta
                .iter()
                .all(|(k, v)| e.node.meta.get(k) == Some(v))
            && query
                .service_meta
                .iter()
                .all(|(k, v)| e.service.meta.get(k) == Some(v))
            && tags_match(&e.service.tags, &query.tags)
    });
    fastrand::shuffle(&mut entries);
    if limit > 0 {
        entries.truncate(limit);
    }
    entries
}

/// No check (but the ignored ones) critical; with `only_passing`, all passing.
fn healthy(entry: &ServiceEntry, only_passing: bool, ignored: &HashSet<&str>) -> bool {
    entry
        .checks
        .iter()
        .filter(|c| !ignored.contains(c.check_id.as_str()))
        .all(|c| c.status != CRITICAL && (!only_passing || c.status == PASSING))
}

/// Every tag asked for present and none of the `!`-prefixed ones, ignoring case.
fn tags_match(tags: &[String], wanted: &[String]) -> bool {
    let have: HashSet<String> = tags.iter().map(|t| t.to_lowercase()).collect();
    wanted.iter().all(|tag| {
        let tag = tag.to_lowercase();
        match tag.strip_prefix('!') {
            Some(forbidden) => !have.contains(forbidden),
            None => have.contains(&tag),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{FailoverTarget, QueryFailover};
    use ferrule_control::api::health::HealthCheck;

    fn entry(statuses: &[&str], tags: &[&str]) -> ServiceEntry {
        let mut e = ServiceEntry::default();
        e.service.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        e.checks = statuses
            .iter()
            .enumerate()
            .map(|(i, s)| HealthCheck {
                check_id: format!("c{i}"),
                status: (*s).to_owned(),
                ..HealthCheck::default()
            })
            .collect();
        e
    }

    #[test]
    fn critical_is_out_warning_only_with_only_passing() {
        let all = vec![
            entry(&["passing"], &[]),
            entry(&["passing", "warning"], &[]),
            entry(&["passing", "critical"], &[]),
        ];
        let mut q = ServiceQuery::default();
        assert_eq!(select(all.clone(), &q, 0).len(), 2);
        q.only_passing = true;
        assert_eq!(select(all.clone(), &q, 0).len(), 1);
        q.only_passing = false;
        q.ignore_check_ids = vec!["c1".to_owned()];
        assert_eq!(
            select(all.clone(), &q, 0).len(),
            3,
            "the critical one ignored"
        );
        assert_eq!(select(all, &q, 2).len(), 2, "the limit");
    }

    #[test]
    fn tags_are_required_or_forbidden_ignoring_case() {
        assert!(tags_match(
            &["Primary".into(), "v2".into()],
            &["primary".into()]
        ));
        assert!(!tags_match(
            &["primary".into()],
            &["primary".into(), "!PRIMARY".into()]
        ));
        assert!(tags_match(&[], &["!canary".into()]));
        assert!(!tags_match(&[], &["v2".into()]));
    }

    #[test]
    fn failover_takes_the_nearest_then_the_listed_known_ones() {
        let others = ["dc2".to_owned(), "dc3".to_owned(), "dc4".to_owned()];
        let query = |nearest_n, datacenters: &[&str]| ServiceQuery {
            failover: QueryFailover {
                nearest_n,
                datacenters: datacenters.iter().map(|d| (*d).to_owned()).collect(),
                targets: Vec::new(),
            },
            ..ServiceQuery::default()
        };
        assert_eq!(
            failover_order(&query(0, &[]), &others),
            Vec::<String>::new()
        );
        assert_eq!(failover_order(&query(2, &[]), &others), ["dc2", "dc3"]);
        assert_eq!(
            failover_order(&query(1, &["dc4", "dc9", "dc2", "dc3"]), &others),
            ["dc2", "dc4", "dc3"],
            "unknown dc9 skipped, dc2 not twice"
        );
        let mut targets = query(0, &[]);
        targets.failover.targets = vec![
            FailoverTarget {
                peer: "east".into(),
                datacenter: String::new(),
            },
            FailoverTarget {
                peer: String::new(),
                datacenter: "dc3".into(),
            },
        ];
        assert_eq!(failover_order(&targets, &others), ["dc3"]);
    }
}
