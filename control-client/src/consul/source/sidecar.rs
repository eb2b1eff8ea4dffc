//! `--sidecar-for`: finds the one connect-proxy registered for a service instance (see
//! `docs/consul-semantics.md#sidecar-registration`), retrying until it exists, since the
//! registration may come after the proxy starts.

use super::agent::{Agent, Event};
use super::agent_self::ONE_SHOT_TIMEOUT;
use crate::api::agent::{AgentService, AgentServices};
use crate::consul::watch::backoff;
use crate::telemetry::{Resource, record_update};

/// Lists the agent's services until exactly one connect-proxy serves `service_id`, then
/// tells the run loop its ID. The first problem is warned about, the rest are debug;
/// each is told to the run loop, for `/ready`.
pub(super) async fn resolve_sidecar(agent: Agent, service_id: String) {
    let mut failures = 0;
    let mut warned = false;
    loop {
        let problem = match agent
            .client
            .get_json::<AgentServices>("/v1/agent/services", &[], ONE_SHOT_TIMEOUT)
            .await
        {
            Ok(services) => {
                record_update(Resource::Config, true);
                match find_sidecar(&services, &service_id) {
                    Ok(proxy_id) => {
                        tracing::info!(service_id = %service_id, proxy_id = %proxy_id, "found the sidecar registration");
                        let _ = agent.events.send(Event::ProxyId(proxy_id)).await;
                        return;
                    }
                    Err(problem) => problem,
                }
            }
            Err(e) => {
                record_update(Resource::Config, false);
                format!("cannot list the agent's services: {e}")
            }
        };
        if !warned {
            tracing::warn!("{problem}; retrying");
            warned = true;
        } else {
            tracing::debug!("{problem}");
        }
        let _ = agent.events.send(Event::SidecarMissing(problem)).await;
        failures += 1;
        let delay = backoff(
            failures,
            agent.tuning.backoff_base,
            agent.tuning.backoff_cap,
        );
        tokio::time::sleep(delay).await;
    }
}

/// The ID of the one connect-proxy whose `Proxy.DestinationServiceID` is `service_id`.
fn find_sidecar(services: &AgentServices, service_id: &str) -> Result<String, String> {
    let mut found: Vec<&AgentService> = services
        .values()
        .filter(|s| {
            s.is_connect_proxy()
                && s.proxy
                    .as_ref()
                    .is_some_and(|p| p.destination_service_id.eq_ignore_ascii_case(service_id))
        })
        .collect();
    found.sort_by(|a, b| a.id.cmp(&b.id));
    match found.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(format!(
            "no connect-proxy registered on the agent for service instance {service_id:?} (register it with a sidecar_service)"
        )),
        several => Err(format!(
            "several connect-proxies registered for service instance {service_id:?}: {}; use --proxy-id",
            several
                .iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}
