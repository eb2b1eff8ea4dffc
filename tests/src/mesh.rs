//! The usual set-up: one CA, and the service under test, `api`, whose sidecar guards a
//! local application. Callers are minted on demand: a rustls client with some
//! service's SVID, or a whole caller sidecar (`web`) with an upstream `api`.

use std::net::SocketAddr;

use ferrule_dev::ca::{DevCa, IssuedLeaf, LeafSpec};

use crate::clients::{CallerConn, TlsCaller};
use crate::sidecar::{Sidecar, SidecarConfig};

/// The destination service's name.
pub const API: &str = "api";
/// The usual caller's name.
pub const WEB: &str = "web";

/// A `service-intentions` config entry for `destination`, as Consul's `/v1/config`
/// takes it, with one source per `(name, "allow" | "deny")`.
pub fn intentions_json(destination: &str, sources: &[(&str, &str)]) -> String {
    let sources: Vec<serde_json::Value> = sources
        .iter()
        .map(|(name, action)| serde_json::json!({ "Name": name, "Action": action }))
        .collect();
    serde_json::json!({
        "Kind": "service-intentions",
        "Name": destination,
        "Sources": sources,
    })
    .to_string()
}

/// A valid SVID of `service` from `ca`, as Consul's agent would issue it.
pub fn svid(ca: &DevCa, service: &str) -> IssuedLeaf {
    ca.issue(&LeafSpec::service(service))
        .unwrap_or_else(|e| panic!("issue an SVID for {service}: {e}"))
}

/// A CA and the `api` sidecar in front of a local app, ready.
pub struct Mesh {
    pub ca: DevCa,
    /// The certificate `api`'s sidecar was started with.
    pub api_leaf: IssuedLeaf,
    pub api: Sidecar,
}

/// How to start a `Mesh`.
pub struct MeshBuilder {
    local_app: SocketAddr,
    sources: Vec<(String, &'static str)>,
    handshake_timeout_ms: Option<u64>,
    drain_timeout: Option<&'static str>,
}

impl MeshBuilder {
    /// An intention allowing `source` to call `api`.
    pub fn allow(mut self, source: &str) -> MeshBuilder {
        self.sources.push((source.to_owned(), "allow"));
        self
    }

    /// An intention denying `source` (the default action is deny anyway; this makes
    /// the decision come from a matched intention).
    pub fn deny(mut self, source: &str) -> MeshBuilder {
        self.sources.push((source.to_owned(), "deny"));
        self
    }

    pub fn handshake_timeout_ms(mut self, ms: u64) -> MeshBuilder {
        self.handshake_timeout_ms = Some(ms);
        self
    }

    /// `--drain-timeout` of the `api` sidecar.
    pub fn drain_timeout(mut self, timeout: &'static str) -> MeshBuilder {
        self.drain_timeout = Some(timeout);
        self
    }

    pub async fn start(self) -> Mesh {
        let ca = DevCa::generate(None).expect("generate a development CA");
        let sources: Vec<(&str, &str)> = self
            .sources
            .iter()
            .map(|(name, action)| (name.as_str(), *action))
            .collect();
        let api_leaf = svid(&ca, API);
        let mut config = SidecarConfig::new(&ca, &api_leaf)
            .inbound(self.local_app, intentions_json(API, &sources));
        if let Some(ms) = self.handshake_timeout_ms {
            config = config.handshake_timeout_ms(ms);
        }
        if let Some(timeout) = self.drain_timeout {
            config = config.drain_timeout(timeout);
        }
        let api = Sidecar::start(config).await;
        Mesh { ca, api_leaf, api }
    }
}

impl Mesh {
    /// The `api` sidecar will forward to `local_app`. No intentions unless added: the
    /// default action (deny) decides.
    pub fn builder(local_app: SocketAddr) -> MeshBuilder {
        MeshBuilder {
            local_app,
            sources: Vec::new(),
            handshake_timeout_ms: None,
            drain_timeout: None,
        }
    }

    /// A fresh valid SVID of `service` from this mesh's CA.
    pub fn svid(&self, service: &str) -> IssuedLeaf {
        svid(&self.ca, service)
    }

    /// Connects to `api`'s inbound listener as `service` (fresh SVID, rustls).
    pub async fn call_as(&self, service: &str) -> anyhow::Result<CallerConn> {
        TlsCaller::new(Some(&self.svid(service)))
            .connect(self.api.inbound_addr())
            .await
    }

    /// A caller sidecar for `service` whose upstream `api` dials `endpoints`.
    pub async fn caller_sidecar(&self, service: &str, endpoints: &[SocketAddr]) -> Sidecar {
        let config = SidecarConfig::new(&self.ca, &self.svid(service)).upstream(API, endpoints);
        Sidecar::start(config).await
    }
}

/// `web` calling `api` at L7: `api`'s sidecar serves `protocol` in front of
/// `local_app` under the given `service-intentions` entry, and `web`'s sidecar has an
/// upstream `api` of the same protocol.
pub struct L7Pair {
    pub ca: DevCa,
    pub web_leaf: IssuedLeaf,
    pub api_leaf: IssuedLeaf,
    pub api: Sidecar,
    pub web: Sidecar,
}

impl L7Pair {
    pub async fn start(
        protocol: &'static str,
        local_app: SocketAddr,
        intentions: &serde_json::Value,
    ) -> L7Pair {
        let ca = DevCa::generate(None).expect("generate a development CA");
        let api_leaf = svid(&ca, API);
        let web_leaf = svid(&ca, WEB);
        let api = Sidecar::start(
            SidecarConfig::new(&ca, &api_leaf)
                .inbound(local_app, intentions.to_string())
                .inbound_protocol(protocol),
        )
        .await;
        let web = Sidecar::start(SidecarConfig::new(&ca, &web_leaf).upstream_of(
            API,
            protocol,
            &[api.inbound_addr()],
        ))
        .await;
        L7Pair {
            ca,
            web_leaf,
            api_leaf,
            api,
            web,
        }
    }

    /// `http://<web's upstream api><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.web.upstream_addr(API))
    }
}
