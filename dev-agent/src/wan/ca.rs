//! A secondary datacenter's CA, kept signed by the primary's active root
//! (`docs/consul-semantics.md#datacenters`). The secondary watches the primary's
//! `/v1/connect/ca/roots` with blocking queries; when there is no intermediate yet, or
//! the primary's active root changed (a rotation), it draws a new key, sends a
//! certificate signing request to the primary's internal
//! `/v1/internal/ferrule/ca/intermediate` (where Consul's servers use an RPC), and
//! installs the signed intermediate: every leaf is re-issued, blocked readers wake.
//! Other changes of the primary's roots (a pruned root) are published as they come.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde::{Deserialize, Serialize};

use ferrule_control::api::ca::IndexedCARoots;

use super::{RETRY, Reachability, WATCH_TIMEOUT, WATCH_WAIT, next_index, pause};
use crate::ca::{CaError, IntermediateRequest};
use crate::http::{ApiError, Call, Reply, decode_strict};
use crate::state::Shared;

/// The primary's internal endpoint that signs a secondary's intermediate.
pub(crate) const PATH: &str = "/v1/internal/ferrule/ca/intermediate";
const SIGN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SignRequest {
    /// The secondary asking, for the primary's log.
    datacenter: String,
    /// PEM `CERTIFICATE REQUEST`.
    #[serde(rename = "CSR")]
    csr: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Signed {
    #[serde(rename = "CertPEM")]
    cert_pem: String,
    /// The primary's root that signed it.
    #[serde(rename = "ActiveRootID")]
    active_root_id: String,
}

/// `POST /v1/internal/ferrule/ca/intermediate`, in the primary.
pub(crate) async fn sign(shared: &Shared, call: &Call) -> Result<Reply, ApiError> {
    let (request, _) = decode_strict::<SignRequest>(&call.body, "Request decode failed")?;
    let signed = shared.with(|state| state.ca.sign_intermediate(&request.csr));
    let (cert_pem, active_root_id) = signed.map_err(|e| match e {
        CaError::Pem { .. } => ApiError::bad_request(e.to_string()),
        other => ApiError::internal(other.to_string()),
    })?;
    tracing::info!(datacenter = %request.datacenter, root = %active_root_id, "dev agent: signed a secondary datacenter's intermediate CA");
    Reply::json(&Signed {
        cert_pem,
        active_root_id,
    })
}

/// A secondary's loop: watch the primary's roots, keep an intermediate signed by the
/// active one.
pub(crate) async fn keep_federated(shared: Arc<Shared>) {
    let mut index = 0;
    let mut reach = Reachability::default();
    loop {
        match watch_roots(&shared, index).await {
            Ok((roots, answered)) => match federate(&shared, roots).await {
                Ok(()) => {
                    reach.succeeded("keeping the CA signed by the primary");
                    index = next_index(index, answered);
                    continue;
                }
                Err(e) => reach.failed("keeping the CA signed by the primary", &e),
            },
            Err(e) => reach.failed("watching the primary's CA roots", &e),
        }
        if pause(&shared, RETRY).await {
            return;
        }
    }
}

/// The primary's roots, once their index passes `index` (at once for 0).
async fn watch_roots(shared: &Shared, index: u64) -> Result<(IndexedCARoots, u64), String> {
    let addr = primary(shared)?;
    let path = format!("/v1/connect/ca/roots?index={index}&wait={WATCH_WAIT}");
    let fetched = tokio::select! {
        fetched = shared.wan.client.get(addr, &path, WATCH_TIMEOUT) => fetched,
        () = shared.shutdown.cancelled() => Err("the agent is shutting down".to_owned()),
    }
    .map_err(|e| format!("{addr}: {e}"))?;
    let roots: IndexedCARoots = fetched.json().map_err(|e| format!("{addr}: {e}"))?;
    Ok((roots, fetched.index()))
}

/// Installs the primary's `roots`, with a new intermediate when they call for one.
async fn federate(shared: &Shared, roots: IndexedCARoots) -> Result<(), String> {
    if roots.active_root_id.is_empty() {
        return Err("the primary has no active root".to_owned());
    }
    let signer = if shared.with(|state| state.ca.needs_intermediate(&roots)) {
        Some(new_intermediate(shared, &roots).await?)
    } else {
        None
    };
    let changed = shared
        .with(|state| state.federate(roots, signer))
        .map_err(|e| e.to_string())?;
    if changed {
        let trust_domain = shared.with(|state| state.ca.trust_domain());
        tracing::info!(%trust_domain, "dev agent: the CA follows the primary datacenter's roots");
    }
    Ok(())
}

/// A new key and its certificate from the primary, under the active root of `roots`.
/// The key is drawn outside the state's lock.
async fn new_intermediate(
    shared: &Shared,
    roots: &IndexedCARoots,
) -> Result<crate::ca::DevCa, String> {
    let addr = primary(shared)?;
    let trust_domain = roots
        .trust_domain()
        .ok_or_else(|| "the primary's roots name no trust domain".to_owned())?;
    let request = IntermediateRequest::new(&trust_domain).map_err(|e| e.to_string())?;
    let body = SignRequest {
        datacenter: shared.wan.datacenter().to_owned(),
        csr: request.csr_pem().to_owned(),
    };
    let signed: Signed = shared
        .wan
        .client
        .call_json(addr, Method::POST, PATH, &body, SIGN_TIMEOUT)
        .await
        .map_err(|e| format!("{addr}: signing our intermediate: {e}"))?;
    if signed.active_root_id != roots.active_root_id {
        return Err("the primary's active root changed while it signed; again".to_owned());
    }
    let signer = request
        .finish(&signed.cert_pem)
        .map_err(|e| format!("the primary's intermediate: {e}"))?;
    tracing::info!(root = %signed.active_root_id, "dev agent: the primary datacenter signed our intermediate CA");
    Ok(signer)
}

fn primary(shared: &Shared) -> Result<SocketAddr, String> {
    shared
        .wan
        .primary_address()
        .ok_or_else(|| "no address for the primary datacenter".to_owned())
}
