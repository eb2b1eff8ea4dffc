//! One mesh hop between neighbours: a caller sidecar `web` whose upstream `api` dials a
//! callee sidecar `api` in front of the test's application, each of them ferrule or
//! Envoy, with the protocols and intentions a test asks for. The hop also says what
//! its TLS handshakes negotiated: Envoy's `ssl.versions.*` and codec counters, and
//! ferrule's `ferrule_tls_handshakes_total` samples with their labels.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use ferrule_dev::ca::{DevCa, IssuedLeaf, LeafSpec};
use serde_json::{Value, json};

use super::{Envoy, EnvoyConfig, Identity, Protocol, PublicListener, Upstream};
use crate::mesh::{API, WEB};
use crate::names::{OUTBOUND, TLS_HANDSHAKES};
use crate::sidecar::{Sidecar, SidecarConfig};
use crate::wait::eventually;

/// Which proxy plays a sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ferrule,
    Envoy,
}

/// A running sidecar of either kind.
pub enum Proxy {
    Ferrule(Sidecar),
    Envoy(Envoy),
}

/// What a sidecar presents and trusts: its leaf (followed by its intermediates) and
/// every root's certificate.
#[derive(Clone, Debug)]
pub struct Svid {
    pub leaf: IssuedLeaf,
    pub roots_pem: String,
    pub trust_domain: String,
}

impl Svid {
    /// A leaf of `service` in `dc1`, signed by `ca`'s root.
    pub fn issue(ca: &DevCa, service: &str) -> Svid {
        Svid::under(ca, ca, &LeafSpec::service(service))
    }

    /// A leaf from `signer` (the root or an intermediate of `root`).
    pub fn under(root: &DevCa, signer: &DevCa, spec: &LeafSpec) -> Svid {
        let leaf = signer
            .issue(spec)
            .unwrap_or_else(|e| panic!("issue a leaf for {}: {e}", spec.service));
        Svid {
            leaf,
            roots_pem: root.cert_pem().to_owned(),
            trust_domain: root.trust_domain(),
        }
    }

    pub fn identity(&self) -> Identity {
        Identity {
            cert_pem: self.leaf.cert_pem.clone(),
            key_pem: self.leaf.key_pem.clone(),
            roots_pem: self.roots_pem.clone(),
            trust_domain: self.trust_domain.clone(),
        }
    }

    fn ferrule_config(&self) -> SidecarConfig {
        SidecarConfig::with_bundle(&self.leaf, &self.roots_pem)
    }
}

/// The callee: `api`'s public listener in front of `local_app`.
#[derive(Clone, Debug)]
pub struct Callee {
    pub kind: Kind,
    pub protocol: Protocol,
    pub local_app: SocketAddr,
    /// A `service-intentions` entry for `api`.
    pub intentions: Value,
    pub svid: Svid,
}

impl Callee {
    pub async fn start(&self) -> Proxy {
        match self.kind {
            Kind::Ferrule => {
                let config = self
                    .svid
                    .ferrule_config()
                    .inbound(self.local_app, self.intentions.to_string())
                    .inbound_protocol(self.protocol.name());
                Proxy::Ferrule(Sidecar::start(config).await)
            }
            Kind::Envoy => {
                let mut config = EnvoyConfig::new(API, self.svid.identity());
                config.public = Some(PublicListener {
                    protocol: self.protocol,
                    local_app: self.local_app,
                    intentions: self.intentions.clone(),
                });
                Proxy::Envoy(Envoy::start(&config).await)
            }
        }
    }
}

/// The caller: a sidecar of `service` with one upstream, `destination`, of `protocol`.
#[derive(Clone, Debug)]
pub struct Caller {
    pub kind: Kind,
    pub service: String,
    pub protocol: Protocol,
    pub destination: String,
    /// The datacenter the destination's certificate must name.
    pub datacenter: String,
    pub endpoint: SocketAddr,
    pub svid: Svid,
}

impl Caller {
    pub async fn start(&self) -> Proxy {
        match self.kind {
            Kind::Ferrule => {
                let config = self
                    .svid
                    .ferrule_config()
                    .upstream_of(&self.destination, self.protocol.name(), &[self.endpoint])
                    .upstream_key("datacenter", &format!("{:?}", self.datacenter));
                Proxy::Ferrule(Sidecar::start(config).await)
            }
            Kind::Envoy => {
                let mut config = EnvoyConfig::new(&self.service, self.svid.identity());
                config.upstreams.push(Upstream {
                    service: self.destination.clone(),
                    protocol: self.protocol,
                    datacenter: self.datacenter.clone(),
                    endpoints: vec![self.endpoint],
                });
                Proxy::Envoy(Envoy::start(&config).await)
            }
        }
    }
}

impl Proxy {
    pub fn kind(&self) -> Kind {
        match self {
            Proxy::Ferrule(_) => Kind::Ferrule,
            Proxy::Envoy(_) => Kind::Envoy,
        }
    }

    /// The mTLS listener of a callee.
    pub fn public_addr(&self) -> SocketAddr {
        match self {
            Proxy::Ferrule(sidecar) => sidecar.inbound_addr(),
            Proxy::Envoy(envoy) => envoy.public_addr(),
        }
    }

    /// The app-facing listener of a caller's upstream.
    pub fn upstream_addr(&self, destination: &str) -> SocketAddr {
        match self {
            Proxy::Ferrule(sidecar) => sidecar.upstream_addr(destination),
            Proxy::Envoy(envoy) => envoy.upstream_addr(destination),
        }
    }

    pub fn ferrule(&self) -> Option<&Sidecar> {
        match self {
            Proxy::Ferrule(sidecar) => Some(sidecar),
            Proxy::Envoy(_) => None,
        }
    }

    pub fn envoy(&self) -> Option<&Envoy> {
        match self {
            Proxy::Envoy(envoy) => Some(envoy),
            Proxy::Ferrule(_) => None,
        }
    }

    /// What this sidecar's handshakes negotiated so far, one `name value` per line:
    /// Envoy's TLS versions, its HTTP codecs on the mesh side (which follow ALPN) and
    /// SSL errors; ferrule's handshake counter with all its labels.
    pub async fn handshakes(&self) -> String {
        match self {
            Proxy::Envoy(envoy) => {
                let filter = "ssl\\.(versions|connection_error|fail_|handshake)\
                              |public_listener\\.downstream_cx_http[12]_total\
                              |^cluster\\..*internal.*upstream_cx_http[12]_total";
                let mut out = String::new();
                for (name, value) in envoy.counters(filter).await {
                    let _ = writeln!(out, "  {name} {value}");
                }
                out
            }
            Proxy::Ferrule(sidecar) => match sidecar.metrics().await {
                Ok(metrics) => format!("{}\n", metrics.show(TLS_HANDSHAKES)),
                Err(e) => format!("  (metrics unavailable: {e:#})\n"),
            },
        }
    }

    /// Handshakes completed on a callee's mTLS listener so far.
    pub async fn inbound_handshakes(&self) -> u64 {
        match self {
            Proxy::Envoy(envoy) => envoy
                .counters("^listener\\..*\\.ssl\\.handshake$")
                .await
                .values()
                .sum(),
            Proxy::Ferrule(sidecar) => sidecar
                .metric(TLS_HANDSHAKES, &[("direction", "inbound")])
                .await
                .map_or(0, |n| n as u64),
        }
    }

    /// The number of Envoy handshakes of TLS `version` (e.g. `TLSv1.2`); `None` for
    /// ferrule.
    pub async fn envoy_tls(&self, version: &str) -> Option<u64> {
        let envoy = self.envoy()?;
        let filter = format!("ssl\\.versions\\.{}$", version.replace('.', "\\."));
        Some(envoy.counters(&filter).await.values().sum())
    }
}

/// A caller and a callee, started together by [`Hop::start`], and their CA.
pub struct Hop {
    pub ca: DevCa,
    pub caller: Proxy,
    pub callee: Proxy,
}

/// How to start a hop: `web` (caller) → `api` (callee), one CA, dc1.
pub struct HopSpec {
    pub caller: Kind,
    pub callee: Kind,
    /// The protocol of the caller's upstream.
    pub upstream: Protocol,
    /// The protocol of the callee's listener.
    pub listener: Protocol,
    pub intentions: Value,
    /// The service whose SVID the callee presents (`api` unless a test says not).
    pub callee_service: String,
    /// The caller's service.
    pub caller_service: String,
}

impl HopSpec {
    /// Same protocol on both sides; `web` allowed at L4.
    pub fn new(caller: Kind, callee: Kind, protocol: Protocol) -> HopSpec {
        HopSpec {
            caller,
            callee,
            upstream: protocol,
            listener: protocol,
            intentions: intentions(&[(WEB, "allow")]),
            callee_service: API.to_owned(),
            caller_service: WEB.to_owned(),
        }
    }
}

impl Hop {
    /// Starts the callee in front of `local_app`, then the caller dialing it.
    pub async fn start(spec: HopSpec, local_app: SocketAddr) -> Hop {
        let ca = DevCa::generate(None).expect("generate a development CA");
        let callee = Callee {
            kind: spec.callee,
            protocol: spec.listener,
            local_app,
            intentions: spec.intentions,
            svid: Svid::issue(&ca, &spec.callee_service),
        }
        .start()
        .await;
        let caller = another_caller(
            &ca,
            &callee,
            spec.caller,
            &spec.caller_service,
            spec.upstream,
        )
        .await;
        Hop { ca, caller, callee }
    }

    /// One more caller of the same callee: `service`'s sidecar with upstream `api`.
    pub async fn another_caller(&self, kind: Kind, service: &str, protocol: Protocol) -> Proxy {
        another_caller(&self.ca, &self.callee, kind, service, protocol).await
    }

    /// The caller's upstream listener, where the test's client connects.
    pub fn upstream(&self) -> SocketAddr {
        self.caller.upstream_addr(API)
    }

    /// What both sides negotiated, printed under `case` (run the tests with
    /// `--nocapture` to collect it) and returned.
    pub async fn report(&self, case: &str) -> String {
        let text = format!(
            "NEGOTIATED {case}\n caller ({:?}):\n{} callee ({:?}):\n{}",
            self.caller.kind(),
            self.caller.handshakes().await,
            self.callee.kind(),
            self.callee.handshakes().await,
        );
        println!("{text}");
        text
    }

    /// Envoy's side of the hop saw a handshake of the TLS version Consul's Envoy
    /// would use here: 1.2 when Envoy dials (its client default caps there), 1.3 when
    /// ferrule dials Envoy. Nothing to check between two ferrules.
    pub async fn assert_tls_version(&self, case: &str) {
        let (envoy, version) = match (&self.caller, &self.callee) {
            (Proxy::Envoy(_), _) => (&self.caller, "TLSv1.2"),
            (_, Proxy::Envoy(_)) => (&self.callee, "TLSv1.3"),
            _ => return,
        };
        let seen = eventually(
            &format!("an Envoy handshake of {version}"),
            Duration::from_secs(5),
            || async {
                let n = envoy.envoy_tls(version).await.unwrap_or(0);
                anyhow::ensure!(n > 0, "none yet");
                Ok(n)
            },
        )
        .await;
        if let Err(e) = seen {
            panic!("{case}: {e:#}\n{}", self.report(case).await);
        }
    }
}

impl Hop {
    /// The caller refused the callee's certificate for its identity: Envoy counts a
    /// SAN mismatch, ferrule an `identity_mismatch` dial.
    pub async fn assert_caller_refused_identity(&self, case: &str) {
        let refused = eventually(
            "the caller to refuse the callee",
            Duration::from_secs(5),
            || async {
                let n = match &self.caller {
                    Proxy::Envoy(envoy) => envoy
                        .counters("ssl\\.fail_verify_san$")
                        .await
                        .values()
                        .sum(),
                    Proxy::Ferrule(sidecar) => {
                        sidecar
                            .metric(OUTBOUND, &[("result", "identity_mismatch")])
                            .await? as u64
                    }
                };
                anyhow::ensure!(n > 0, "no refusal counted yet");
                Ok(())
            },
        )
        .await;
        if let Err(e) = refused {
            panic!("{case}: {e:#}\n{}", self.report(case).await);
        }
    }
}

async fn another_caller(
    ca: &DevCa,
    callee: &Proxy,
    kind: Kind,
    service: &str,
    protocol: Protocol,
) -> Proxy {
    Caller {
        kind,
        service: service.to_owned(),
        protocol,
        destination: API.to_owned(),
        datacenter: "dc1".to_owned(),
        endpoint: callee.public_addr(),
        svid: Svid::issue(ca, service),
    }
    .start()
    .await
}

/// A `service-intentions` entry for `api` with one L4 source per `(name, action)`.
pub fn intentions(sources: &[(&str, &str)]) -> Value {
    let sources: Vec<Value> = sources
        .iter()
        .map(|(name, action)| json!({ "Name": name, "Action": action }))
        .collect();
    json!({ "Kind": "service-intentions", "Name": API, "Sources": sources })
}
