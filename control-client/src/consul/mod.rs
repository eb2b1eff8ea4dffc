//! Consul mode: the snapshot source that follows a local Consul agent (or `ferrule dev`).
//!
//! `http` is the agent client (address forms, TLS, unix sockets, the token, typed
//! errors); `watch` is the one blocking-query loop every resource goes through; `source`
//! turns the agent's answers into a sidecar's snapshots, `gateway` into a mesh gateway's
//! view. Only `source` and `gateway` know what the answers mean, and only `http` knows
//! how bytes reach the agent.

pub mod gateway;
pub mod http;
pub mod source;
mod watch;

/// The one retry backoff of the control client, for the Workload API stream too.
pub(crate) use watch::backoff;

#[cfg(test)]
mod testing;

pub use gateway::{GatewaySource, GatewaySourceConfig};
pub use http::{
    AgentAddr, AgentClient, AgentClientConfig, AgentError, BadAddress, ClientConfigError,
    DEFAULT_ADDR,
};
pub use source::{ConsulConfig, ConsulSource, DEFAULT_WAIT, ProxySelector};
