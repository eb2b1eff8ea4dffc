//! The harness of ferrule's end-to-end tests: they run the real `ferrule` binary and
//! talk to it with real clients.
//!
//! - `admin`: a sidecar's `/ready`, `/metrics` and `/config`.
//! - `agent`: a `ferrule dev` agent process (one per datacenter) and the API calls tests
//!   make to it.
//! - `binary`: builds and finds the `ferrule` binary (once per test process).
//! - `sidecar`: a running `ferrule proxy --config` with its own directory, its
//!   watched files, and its admin endpoints (`/ready`, `/metrics`).
//! - `backends`: the local applications (HTTP echo, HTTP recorder, counting TCP echo,
//!   and backends that name themselves in their answers).
//! - `chain`: a mesh for the discovery chain: config entries, instances with their
//!   sidecars, a caller, and clients that tell which instance answered.
//! - `consul`: a `ferrule proxy --sidecar-for` process fed by a dev agent.
//! - `envoy`: real Envoy as a Consul-configured sidecar next to ferrule (interop tests).
//! - `faulty_agent`: a fault injector between a sidecar and its agent.
//! - `gateway`: a mesh gateway's registration, a `ferrule gateway` process, and a
//!   caller dialling through it (SNI named, the server's SPIFFE ID checked).
//! - `grpc`: a tonic gRPC service (unary and streaming calls) and its client.
//! - `clients`: `curl`, `openssl s_client`, and a rustls caller presenting an SVID.
//! - `mesh`: the common set-up, a CA plus the `api` sidecar, and intentions JSON.
//! - `metrics`: reading Prometheus text.
//! - `otlp`: a real OTLP trace receiver (gRPC or HTTP/protobuf, the official protos in
//!   Python) that writes every span it gets as a JSON line.
//! - `multi_dc`: two datacenters on one machine (dc1 on 127.0.0.1, dc2 on 127.0.0.2),
//!   their mesh gateways, services registered across them, and which hops a call took.
//! - `traffic`: curl in a loop, counting what got through.
//! - `wait`: deadlines instead of sleeps, free ports.
//! - `workload`: a `ferrule dev` serving the SPIFFE Workload API, one socket per
//!   service, its CA, and a raw gRPC client of its sockets.
//!
//! Everything binds loopback only (127.0.0.1; a second datacenter's agent 127.0.0.2), on
//! ports picked free at start, in its own temporary directory, so tests run in parallel;
//! everything a test starts stops when dropped.

pub mod admin;
pub mod agent;
pub mod backends;
pub mod binary;
pub mod chain;
pub mod clients;
pub mod consul;
pub mod envoy;
pub mod faulty_agent;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod mesh;
pub mod metrics;
pub mod multi_dc;
pub mod otlp;
pub mod sidecar;
pub mod traffic;
pub mod wait;
pub mod workload;

pub use ferrule_dev::ca::{DevCa, IssuedLeaf, LeafSpec};

/// Metric names: a contract with users' dashboards and alerts (README, Metrics).
pub mod names {
    pub const INBOUND: &str = "ferrule_inbound_connections_total";
    pub const OUTBOUND: &str = "ferrule_outbound_connections_total";
    pub const BYTES: &str = "ferrule_bytes_total";
    pub const AUTHZ_DECISIONS: &str = "ferrule_authz_decisions_total";
    pub const AUTHZ_TERMINATIONS: &str = "ferrule_authz_terminations_total";
    pub const CONTROL_UPDATES: &str = "ferrule_control_updates_total";
    pub const TLS_HANDSHAKES: &str = "ferrule_tls_handshakes_total";
    /// The app's requests on an L7 upstream, by `upstream`, `target` (the chain target
    /// of the last try) and `status` class.
    pub const UPSTREAM_REQUESTS: &str = "ferrule_upstream_requests_total";
    /// Requests tried again, by `upstream`, `target` (of the failed try) and `reason`.
    pub const UPSTREAM_RETRIES: &str = "ferrule_upstream_retries_total";
    /// 1 for the target each of an upstream's clusters sends to, 0 for its others.
    pub const UPSTREAM_ACTIVE_TARGET: &str = "ferrule_upstream_active_target";
    /// A mesh gateway's connections, by `listener` (lan, wan) and `result`.
    pub const GATEWAY_CONNECTIONS: &str = "ferrule_gateway_connections_total";
    /// A mesh gateway's routed connections, by `datacenter` and `service`.
    pub const GATEWAY_ROUTED: &str = "ferrule_gateway_routed_total";
}
