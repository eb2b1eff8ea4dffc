//! `GET` and `POST /v1/discovery-chain/:service`
//! (https://developer.hashicorp.com/consul/api-docs/discovery-chain): the service's
//! chain compiled in `?compile-dc` (default: the agent's datacenter), with the `POST`
//! body's overrides. Blocking follows Consul: `X-Consul-Index` is the config entries'
//! index, and a blocked read answers when an entry the chain was compiled from changes
//! (or its wait ends).

use http::Method;
use serde_json::Value;

use ferrule_control::api::chain::{DiscoveryChainRequest, DiscoveryChainResponse};

use super::compile::{self, Request};
use crate::blocking::{self, DEFAULT_WAIT};
use crate::http::{ApiError, Call, Reply};
use crate::state::{Shared, State};

/// What a chain was compiled from: each entry read, by kind and name, with its
/// ModifyIndex (`None`: absent).
type Parts = Vec<(&'static str, String, Option<u64>)>;

/// `/v1/discovery-chain/:service`.
pub(crate) async fn read(shared: &Shared, call: &Call, name: &str) -> Result<Reply, ApiError> {
    if name.is_empty() {
        return Err(ApiError::bad_request("Missing chain name"));
    }
    call.reject_enterprise()?;
    let consistency = call.consistency()?;
    let opts = call.blocking()?;
    let overrides = if call.method == Method::POST {
        overrides(&call.body)?
    } else {
        DiscoveryChainRequest::default()
    };
    let cached = call.query.flag("cached")?;
    let agent_dc = shared.config.datacenter.clone();
    let datacenter = call
        .query
        .get("compile-dc")
        .filter(|dc| !dc.is_empty())
        .unwrap_or(&agent_dc)
        .to_owned();
    let foreign = call.foreign_datacenter(&agent_dc);
    let answer = blocking::by_index_of_parts(shared, &opts, DEFAULT_WAIT, |state| {
        if foreign {
            return Err(ApiError::internal("No path to datacenter"));
        }
        let request = Request {
            service: name,
            datacenter: &datacenter,
            trust_domain: &state.ca.trust_domain(),
            overrides: &overrides,
        };
        let compiled =
            compile::compile(&state.chain_config(), &request).map_err(ApiError::internal)?;
        let parts = parts(state, &compiled.read);
        Ok((compiled.chain, state.intentions_index, parts))
    })
    .await?;
    let body = DiscoveryChainResponse {
        chain: answer.value,
    };
    let reply = Reply::json(&body)?
        .index(answer.index)
        .leader_meta(consistency);
    Ok(if cached {
        reply.cache(!answer.waited)
    } else {
        reply
    })
}

/// The `POST` body, as Consul decodes it: JSON required (an empty body is `EOF`), keys
/// it does not know ignored, the mesh gateway mode checked.
fn overrides(body: &[u8]) -> Result<DiscoveryChainRequest, ApiError> {
    let decoding =
        |e: &dyn std::fmt::Display| ApiError::bad_request(format!("Request decoding failed: {e}"));
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(decoding(&"EOF"));
    }
    let raw: Value = serde_json::from_slice(body).map_err(|e| decoding(&e))?;
    let request: DiscoveryChainRequest = serde_json::from_value(raw).map_err(|e| decoding(&e))?;
    if !matches!(
        request.override_mesh_gateway.mode.as_str(),
        "" | "none" | "local" | "remote"
    ) {
        return Err(ApiError::bad_request(
            "Invalid OverrideMeshGateway.Mode parameter",
        ));
    }
    Ok(request)
}

/// The entries of every service the compiler read, and proxy-defaults.
fn parts(state: &State, services: &std::collections::BTreeSet<String>) -> Parts {
    let mut parts: Parts = vec![(
        "proxy-defaults",
        String::new(),
        state.proxy_defaults.as_ref().map(|e| e.modify_index),
    )];
    for service in services {
        let chain = &state.chain;
        for (kind, index) in [
            (
                "service-resolver",
                chain.resolvers.get(service).map(|e| e.modify_index),
            ),
            (
                "service-splitter",
                chain.splitters.get(service).map(|e| e.modify_index),
            ),
            (
                "service-router",
                chain.routers.get(service).map(|e| e.modify_index),
            ),
            (
                "service-defaults",
                state.service_defaults.get(service).map(|e| e.modify_index),
            ),
        ] {
            parts.push((kind, service.clone(), index));
        }
    }
    parts
}
