//! Two datacenters on one machine, as the cross-datacenter tests set them up: dc1 (the
//! primary) with its `ferrule dev` agent, its services and its mesh gateway on
//! 127.0.0.1, dc2 (a secondary joined to dc1) on 127.0.0.2. Services are registered
//! with Consul's API as an operator would (sidecars, upstreams naming a datacenter, a
//! mesh gateway mode or a prepared query, `wan` tagged addresses), and the gateways are
//! `ferrule gateway` processes or anything else listening where their registration
//! says (an Envoy configured as Consul configures one). Also what tells which hops a
//! connection took: each gateway's routed counters and the callee's handshakes.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::admin::Admin;
use crate::agent::{AgentOptions, DevAgent, ServiceRegistration};
use crate::consul::ConsulSidecar;
use crate::gateway::{FerruleGateway, MeshGatewayRegistration};
use crate::metrics::Metrics;
use crate::names::{GATEWAY_CONNECTIONS, GATEWAY_ROUTED, TLS_HANDSHAKES};
use crate::wait::{eventually, free_port, free_port_on};

/// The primary datacenter.
pub const DC1: &str = "dc1";
/// The secondary.
pub const DC2: &str = "dc2";
/// Where dc1 lives.
pub const DC1_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Where dc2 lives.
pub const DC2_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Processes starting, health checks passing, the first call through.
pub const SETUP: Duration = Duration::from_secs(30);
/// The contract for intentions and failover across datacenters.
pub const APPLIES_WITHIN: Duration = Duration::from_secs(2);

/// One datacenter: its agent, its address, and its mesh gateway once there is one.
pub struct Datacenter {
    pub name: &'static str,
    pub ip: Ipv4Addr,
    /// The mesh gateway's registration, once registered.
    pub gateway: Option<MeshGatewayRegistration>,
    /// The `ferrule gateway` serving it, when ferrule is the gateway.
    pub ferrule_gateway: Option<FerruleGateway>,
    // Last: the gateway stops before its agent.
    pub agent: DevAgent,
}

impl Datacenter {
    /// The mesh gateway's registration; panics if none was registered.
    pub fn gateway(&self) -> &MeshGatewayRegistration {
        self.gateway
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no mesh gateway", self.name))
    }

    /// The running `ferrule gateway`; panics if the gateway is not ferrule.
    pub fn ferrule_gateway(&self) -> &FerruleGateway {
        self.ferrule_gateway
            .as_ref()
            .unwrap_or_else(|| panic!("{}'s mesh gateway is not a ferrule one", self.name))
    }

    /// A mesh gateway registration on this datacenter's address, free ports for its
    /// LAN and WAN listeners.
    pub fn new_gateway_registration(&self) -> MeshGatewayRegistration {
        MeshGatewayRegistration {
            id: format!("mesh-gateway-{}", self.name),
            lan: free_port_on(self.ip),
            wan: free_port_on(self.ip),
        }
    }

    /// Registers `gateway` (`Kind: "mesh-gateway"`) and waits until the agent sees it
    /// passing (its TCP check reaches the LAN listener): from then on sidecars and other
    /// datacenters' gateways use it.
    pub async fn register_gateway(&mut self, gateway: MeshGatewayRegistration) {
        if let Err(e) = self
            .agent
            .put("/v1/agent/service/register", &gateway.to_json())
            .await
        {
            panic!("register {}'s mesh gateway: {e:#}", self.name);
        }
        let path = "/v1/health/service/mesh-gateway?passing=1";
        let port = gateway.lan.port();
        let passing = eventually(
            &format!("{}'s mesh gateway passing", self.name),
            SETUP,
            || async {
                let entries = self.agent.get_json(path).await?;
                let ports: Vec<u64> = entries
                    .as_array()
                    .context("not a list")?
                    .iter()
                    .filter_map(|e| e["Service"]["Port"].as_u64())
                    .collect();
                anyhow::ensure!(ports.contains(&u64::from(port)), "passing: {ports:?}");
                Ok(())
            },
        )
        .await;
        if let Err(e) = passing {
            panic!("{e:#}");
        }
        self.gateway = Some(gateway);
    }

    /// Registers a gateway on this datacenter's address and starts `ferrule gateway`
    /// for it.
    pub async fn start_ferrule_gateway(&mut self) {
        let registration = self.new_gateway_registration();
        if let Err(e) = self
            .agent
            .put("/v1/agent/service/register", &registration.to_json())
            .await
        {
            panic!("register {}'s mesh gateway: {e:#}", self.name);
        }
        let process = FerruleGateway::start(&self.agent.url(), &registration.id).await;
        self.ferrule_gateway = Some(process);
        self.register_gateway(registration).await;
    }

    /// Registers `service` (and its sidecar) with this datacenter's agent.
    pub async fn register(&self, service: &MeshService) {
        if let Err(e) = self
            .agent
            .put("/v1/agent/service/register", &service.to_json())
            .await
        {
            panic!("register {} in {}: {e:#}", service.reg.id, self.name);
        }
    }

    /// Registers `service` and starts its ferrule sidecar, until ready. A port another
    /// process took between picking and binding gets new ports and another start.
    pub async fn start_service(&self, service: &mut MeshService) -> ConsulSidecar {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            self.register(service).await;
            let mut proxy = ConsulSidecar::spawn(&self.agent, &service.reg.id);
            let error = match proxy.wait_ready().await {
                Ok(()) => return proxy,
                Err(e) => e,
            };
            if attempt == ATTEMPTS || !proxy.stderr().contains("Address already in use") {
                panic!(
                    "the sidecar of {} in {} did not become ready: {error:#}",
                    service.reg.id, self.name
                );
            }
            eprintln!(
                "the sidecar of {} lost a port race, retrying",
                service.reg.id
            );
            service.new_ports();
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// Waits until `/v1/health/connect/<service>?passing` lists exactly the sidecars of
    /// `instances`.
    pub async fn wait_passing(&self, instances: &[&MeshService]) {
        let Some(first) = instances.first() else {
            return;
        };
        let ports: Vec<u16> = instances.iter().map(|s| s.reg.sidecar_port).collect();
        self.agent
            .wait_passing(&first.reg.name, &ports, SETUP)
            .await;
    }
}

/// dc1 and dc2, federated, and their common trust domain.
pub struct TwoDcs {
    pub dc1: Datacenter,
    pub dc2: Datacenter,
    pub trust_domain: String,
}

impl TwoDcs {
    /// Both agents, dc2 joined to dc1 and following its CA; no gateway yet.
    pub async fn start() -> TwoDcs {
        let primary = DevAgent::start(AgentOptions::default()).await;
        let secondary = DevAgent::start_secondary(&primary, DC2, AgentOptions::default()).await;
        let roots = primary
            .get_json("/v1/agent/connect/ca/roots")
            .await
            .unwrap_or_else(|e| panic!("dc1's roots: {e:#}"));
        let trust_domain = roots["TrustDomain"]
            .as_str()
            .unwrap_or_else(|| panic!("no TrustDomain in dc1's roots: {roots}"))
            .to_owned();
        let dc = |name, ip, agent| Datacenter {
            name,
            ip,
            gateway: None,
            ferrule_gateway: None,
            agent,
        };
        TwoDcs {
            dc1: dc(DC1, DC1_IP, primary),
            dc2: dc(DC2, DC2_IP, secondary),
            trust_domain,
        }
    }

    /// As [`TwoDcs::start`], with a `ferrule gateway` serving a registered mesh gateway
    /// in each datacenter.
    pub async fn with_ferrule_gateways() -> TwoDcs {
        let mut dcs = TwoDcs::start().await;
        dcs.dc2.start_ferrule_gateway().await;
        dcs.dc1.start_ferrule_gateway().await;
        dcs
    }

    /// Writes a config entry in the primary and waits until dc2 has replicated it.
    pub async fn write(&self, entry: &Value) {
        if let Err(e) = self.dc1.agent.put("/v1/config", entry).await {
            panic!("dc1 refused the config entry {entry}: {e:#}");
        }
        let kind = entry["Kind"].as_str().unwrap_or_default();
        let name = entry["Name"].as_str().unwrap_or_default();
        let path = format!("/v1/config/{kind}/{name}");
        let replicated = eventually("dc2 replicates the entry", SETUP, || async {
            let answer = self.dc2.agent.get(&path).await?;
            anyhow::ensure!(answer.status == 200, "{} {}", answer.status, answer.body);
            Ok(())
        })
        .await;
        if let Err(e) = replicated {
            panic!("{e:#}");
        }
    }

    /// Consul's server name of `service` in `datacenter`.
    pub fn sni(&self, service: &str, datacenter: &str) -> String {
        format!(
            "{service}.default.{datacenter}.internal.{}",
            self.trust_domain
        )
    }

    /// The SPIFFE ID of `service` in `datacenter`.
    pub fn spiffe_id(&self, service: &str, datacenter: &str) -> String {
        format!(
            "spiffe://{}/ns/default/dc/{datacenter}/svc/{service}",
            self.trust_domain
        )
    }
}

/// `service-defaults` for `service`: its protocol, and a mesh gateway mode if given.
pub fn service_defaults(service: &str, protocol: &str, mode: Option<&str>) -> Value {
    let mut entry = json!({"Kind": "service-defaults", "Name": service, "Protocol": protocol});
    if let Some(mode) = mode {
        entry["MeshGateway"] = json!({"Mode": mode});
    }
    entry
}

/// A service instance and its sidecar in one datacenter, as `PUT
/// /v1/agent/service/register` takes it: the service and its sidecar on the
/// datacenter's address, the app on 127.0.0.1 (the sidecar's `LocalServiceAddress`),
/// upstreams as Consul spells them.
#[derive(Debug, Clone)]
pub struct MeshService {
    pub reg: ServiceRegistration,
    pub ip: Ipv4Addr,
    /// The sidecar's `Proxy.Upstreams`.
    pub upstreams: Vec<Value>,
    /// Whether the sidecar has a `wan` tagged address (its own address and port).
    pub wan: bool,
}

impl MeshService {
    /// `name` (ID `name`) with its app on 127.0.0.1:`app_port` and its sidecar on a
    /// free port of `ip`.
    pub fn new(name: &str, ip: Ipv4Addr, app_port: u16) -> MeshService {
        let mut reg = ServiceRegistration::new(name, app_port);
        reg.sidecar_port = free_port_on(ip).port();
        MeshService {
            reg,
            ip,
            upstreams: Vec::new(),
            wan: false,
        }
    }

    pub fn with_id(mut self, id: &str) -> MeshService {
        self.reg = self.reg.with_id(id);
        self
    }

    /// A TTL check `<id>-ttl`, passing from the start (see
    /// [`ServiceRegistration::with_ttl_check`]).
    pub fn with_ttl_check(mut self) -> MeshService {
        self.reg = self.reg.with_ttl_check();
        self
    }

    /// The sidecar's `wan` tagged address: where callers in other datacenters dial it
    /// when no gateway stands between.
    pub fn with_wan(mut self) -> MeshService {
        self.wan = true;
        self
    }

    /// An upstream on a free port of 127.0.0.1; `fields` are merged into it (e.g.
    /// `{"DestinationName": "api", "Datacenter": "dc2"}`).
    pub fn with_upstream(mut self, fields: Value) -> MeshService {
        let mut upstream = json!({
            "LocalBindAddress": "127.0.0.1",
            "LocalBindPort": free_port().port(),
        });
        if let (Some(into), Value::Object(fields)) = (upstream.as_object_mut(), fields) {
            into.extend(fields);
        }
        self.upstreams.push(upstream);
        self
    }

    /// Sets `key` of the upstream named `destination` (e.g. `MeshGateway`).
    pub fn set_upstream(&mut self, destination: &str, key: &str, value: Value) {
        let upstream = self
            .upstreams
            .iter_mut()
            .find(|u| u["DestinationName"] == destination)
            .unwrap_or_else(|| panic!("{} has no upstream {destination}", self.reg.id));
        upstream[key] = value;
    }

    /// The local listener of the upstream named `destination`.
    pub fn upstream_addr(&self, destination: &str) -> SocketAddr {
        let port = self
            .upstreams
            .iter()
            .find(|u| u["DestinationName"] == destination)
            .and_then(|u| u["LocalBindPort"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("{} has no upstream {destination}", self.reg.id));
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    /// The sidecar's public (mTLS) address, its LAN and WAN address alike.
    pub fn sidecar_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.reg.sidecar_port))
    }

    /// New free ports for the sidecar and its upstreams (after a lost port race).
    fn new_ports(&mut self) {
        self.reg.sidecar_port = free_port_on(self.ip).port();
        for upstream in &mut self.upstreams {
            upstream["LocalBindPort"] = json!(free_port().port());
        }
    }

    pub fn to_json(&self) -> Value {
        let mut service = self.reg.to_json();
        let ip = self.ip.to_string();
        service["Address"] = json!(ip);
        let sidecar = &mut service["Connect"]["SidecarService"];
        sidecar["Address"] = json!(ip);
        sidecar["Proxy"]["Config"]["bind_address"] = json!(ip);
        sidecar["Proxy"]["LocalServiceAddress"] = json!("127.0.0.1");
        sidecar["Proxy"]["Upstreams"] = Value::Array(self.upstreams.clone());
        if self.wan {
            sidecar["TaggedAddresses"] =
                json!({"wan": {"Address": ip, "Port": self.reg.sidecar_port}});
        }
        service
    }
}

/// What the hops of a path counted so far: connections each gateway took in on one
/// listener and sent on to a route, and the mTLS handshakes the callee's sidecar
/// completed. Only the counters of the path under test can move in a test.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Hops {
    /// dc1's gateway: connections routed that came in on its LAN listener.
    pub dc1_lan: f64,
    /// dc1's gateway: connections sent on to dc2's gateways.
    pub dc1_to_dc2: f64,
    /// dc2's gateway: connections routed that came in on its WAN listener.
    pub dc2_wan: f64,
    /// dc2's gateway: connections sent to an instance of the callee.
    pub dc2_to_callee: f64,
    /// The callee's inbound handshakes.
    pub callee: f64,
}

impl Hops {
    /// Reads the counters now: both `ferrule gateway`s', and those of `callee`, the
    /// ferrule sidecar of `service` in dc2, when it is one.
    pub async fn read(dcs: &TwoDcs, service: &str, callee: Option<&ConsulSidecar>) -> Hops {
        let gw1 = scrape(dcs.dc1.ferrule_gateway().admin()).await;
        let gw2 = scrape(dcs.dc2.ferrule_gateway().admin()).await;
        let api = match callee {
            Some(sidecar) => scrape(sidecar.admin()).await,
            None => Metrics::default(),
        };
        Hops {
            dc1_lan: routed_on(&gw1, "lan"),
            dc1_to_dc2: gw1.get(GATEWAY_ROUTED, &[("datacenter", DC2)]),
            dc2_wan: routed_on(&gw2, "wan"),
            dc2_to_callee: gw2.get(GATEWAY_ROUTED, &[("datacenter", DC2), ("service", service)]),
            callee: api.get(TLS_HANDSHAKES, &[("direction", "inbound")]),
        }
    }

    /// What moved since `earlier`.
    pub fn since(self, earlier: Hops) -> Hops {
        Hops {
            dc1_lan: self.dc1_lan - earlier.dc1_lan,
            dc1_to_dc2: self.dc1_to_dc2 - earlier.dc1_to_dc2,
            dc2_wan: self.dc2_wan - earlier.dc2_wan,
            dc2_to_callee: self.dc2_to_callee - earlier.dc2_to_callee,
            callee: self.callee - earlier.callee,
        }
    }

    /// Whether dc1's gateway carried anything.
    pub fn through_dc1_gateway(&self) -> bool {
        self.dc1_lan > 0.0 && self.dc1_to_dc2 > 0.0
    }

    /// Whether dc2's gateway carried anything, from its WAN side to the callee.
    pub fn through_dc2_gateway(&self) -> bool {
        self.dc2_wan > 0.0 && self.dc2_to_callee > 0.0
    }

    /// Whether neither gateway saw a routed connection.
    pub fn bypassed_gateways(&self) -> bool {
        self.dc1_lan == 0.0
            && self.dc1_to_dc2 == 0.0
            && self.dc2_wan == 0.0
            && self.dc2_to_callee == 0.0
    }
}

async fn scrape(admin: &Admin) -> Metrics {
    admin
        .metrics()
        .await
        .unwrap_or_else(|e| panic!("scrape {}: {e:#}", admin.name))
}

/// Connections a gateway routed that came in on `listener`.
fn routed_on(metrics: &Metrics, listener: &str) -> f64 {
    metrics.get(
        GATEWAY_CONNECTIONS,
        &[("listener", listener), ("result", "routed")],
    )
}

/// Waits until `proxy`'s configuration in force (`/config`) names `expected` among the
/// addresses it dials and none of `others`: a registration change has reached it.
pub async fn wait_dials(
    proxy: &ConsulSidecar,
    expected: SocketAddr,
    others: &[SocketAddr],
    within: Duration,
) {
    let quoted = |addr: &SocketAddr| format!("\"{addr}\"");
    let applied = eventually(&format!("the sidecar dials {expected}"), within, || async {
        let config = proxy.admin().config().await?.to_string();
        anyhow::ensure!(config.contains(&quoted(&expected)), "not {expected} yet");
        let stale: Vec<&SocketAddr> = others
            .iter()
            .filter(|a| config.contains(&quoted(a)))
            .collect();
        anyhow::ensure!(stale.is_empty(), "still {stale:?}");
        Ok(())
    })
    .await;
    if let Err(e) = applied {
        let config = proxy.admin().config().await.map(|c| c.to_string());
        panic!("{e:#}\n/config: {config:?}");
    }
}
