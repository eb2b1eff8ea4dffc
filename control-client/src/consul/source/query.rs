//! Prepared-query upstreams (`DestinationType: "prepared_query"`): the query executed
//! by the agent (`/v1/query/<name>/execute?connect=true`, in the upstream's datacenter
//! when it names one) and its answer turned into the upstream's routing; see
//! `docs/consul-semantics.md#prepared-queries`.
//!
//! An execution cannot block, so it is repeated every `Tuning::poll` (1 s): a query
//! that fails over to another datacenter, or back, shows within about a second. Its
//! answer may come from another datacenter than asked (the query's failover); each
//! instance is dialled on its WAN address when it is not in ours, and must prove its
//! own identity: the service it fronts, in its own datacenter. The server name is the
//! query's (`<name>.default.<dc>.query.<trust domain>`), whichever datacenter answers.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use super::agent::{Agent, Event};
use super::endpoints::{endpoint, healthy};
use super::registration::UpstreamSpec;
use crate::api::query::PreparedQueryExecuteResponse;
use crate::consul::http::path_segment;
use crate::consul::watch::{Blocking, WatchSpec, Watcher};
use crate::identity::{DEFAULT, ServiceId};
use crate::model::query_sni;
use crate::routing::{Routing, Target};

/// One prepared query as an upstream names it: its name (or ID) and the datacenter it
/// is executed in (`""`: the agent's).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct QueryKey {
    pub(super) name: String,
    pub(super) datacenter: String,
}

impl QueryKey {
    pub(super) fn of(up: &UpstreamSpec) -> QueryKey {
        QueryKey {
            name: up.key.name.clone(),
            datacenter: up.key.datacenter.clone(),
        }
    }

    /// How it is named in logs and in `/ready`.
    pub(super) fn what(&self) -> String {
        match self.datacenter.as_str() {
            "" => format!("the prepared query {}", self.name),
            dc => format!("the prepared query {} in {dc}", self.name),
        }
    }

    fn spec(&self) -> WatchSpec {
        let mut query = vec![("connect".to_owned(), "true".to_owned())];
        if !self.datacenter.is_empty() {
            query.push(("dc".to_owned(), self.datacenter.clone()));
        }
        WatchSpec::get(
            format!("/v1/query/{}/execute", path_segment(&self.name)),
            query,
            Blocking::Poll,
        )
    }
}

/// Every prepared query the upstreams name, executed again and again, and the last
/// good answer of each.
#[derive(Default)]
pub(super) struct Queries {
    watches: HashMap<QueryKey, Watcher>,
    answers: HashMap<QueryKey, PreparedQueryExecuteResponse>,
}

/// What a query upstream's routing is built with at publish time.
pub(super) struct QueryFill<'a> {
    pub(super) connect_timeout: Duration,
    /// Without it no identity can be pinned: no endpoints.
    pub(super) trust_domain: Option<&'a str>,
    /// The agent's datacenter (`""`: unknown).
    pub(super) local_dc: &'a str,
}

impl Queries {
    /// Executes exactly the queries in `wanted`; returns the ones no longer executed.
    pub(super) fn follow(&mut self, agent: &Agent, wanted: &BTreeSet<QueryKey>) -> Vec<QueryKey> {
        let gone: Vec<QueryKey> = self
            .watches
            .keys()
            .filter(|key| !wanted.contains(*key))
            .cloned()
            .collect();
        for key in &gone {
            self.watches.remove(key);
            self.answers.remove(key);
        }
        for key in wanted {
            if !self.watches.contains_key(key) {
                let k = key.clone();
                let watch = agent.watch(key.spec(), move |u| Event::Query(k.clone(), u));
                self.watches.insert(key.clone(), watch);
            }
        }
        gone
    }

    /// Whether `key` is still executed (a late answer for a dropped one is ignored).
    pub(super) fn follows(&self, key: &QueryKey) -> bool {
        self.watches.contains_key(key)
    }

    pub(super) fn on_answer(&mut self, key: &QueryKey, answer: PreparedQueryExecuteResponse) {
        if let Some(old) = self.answers.get(key)
            && old.datacenter != answer.datacenter
        {
            tracing::info!(query = %key.name, from = %old.datacenter, to = %answer.datacenter, failovers = answer.failovers, "the prepared query is answered by another datacenter");
        }
        self.answers.insert(key.clone(), answer);
    }

    /// The routing of the upstream that names `key`: one target, the query, whose
    /// instances are those of its last answer.
    pub(super) fn routing(&self, key: &QueryKey, fill: &QueryFill<'_>) -> Routing {
        let dc = if key.datacenter.is_empty() {
            fill.local_dc
        } else {
            &key.datacenter
        };
        let td = fill.trust_domain.unwrap_or_default();
        let answer = self.answers.get(key);
        let answered_dc = answer
            .map(|a| a.datacenter.as_str())
            .filter(|a| !a.is_empty())
            .unwrap_or(dc);
        let service = answer
            .map(|a| a.service.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or(&key.name);
        let endpoints = match (fill.trust_domain, answer) {
            (Some(td), Some(answer)) => answer
                .nodes
                .iter()
                .filter(|e| healthy(e, false))
                .filter_map(|e| endpoint(e, &answer.datacenter, fill.local_dc, td))
                .collect(),
            _ => Vec::new(),
        };
        let target = Target {
            // The `target` label: bounded by the configuration, whoever answers.
            id: if dc.is_empty() {
                key.name.clone()
            } else {
                format!("{}.{dc}", key.name)
            },
            sni: query_sni(&key.name, dc, td),
            // Shown at `/config`; each instance carries the identity it must prove.
            identity: ServiceId::new(td, DEFAULT, answered_dc, service),
            endpoints,
        };
        Routing::direct(target, fill.connect_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_executed_for_mesh_instances_in_the_upstreams_datacenter() {
        let key = QueryKey {
            name: "geo db".into(),
            datacenter: "dc2".into(),
        };
        let spec = key.spec();
        assert_eq!(spec.path, "/v1/query/geo%20db/execute");
        assert_eq!(
            spec.query,
            [
                ("connect".to_owned(), "true".to_owned()),
                ("dc".to_owned(), "dc2".to_owned())
            ]
        );
        assert_eq!(spec.blocking, Blocking::Poll);
        assert_eq!(key.what(), "the prepared query geo db in dc2");
        let local = QueryKey {
            name: "geo-db".into(),
            datacenter: String::new(),
        };
        assert_eq!(local.spec().query.len(), 1, "no dc: the agent's");
    }
}
