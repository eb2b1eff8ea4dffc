//! The control side of ferrule: what the data plane is told, and where it comes from.
//!
//! The model (`model`, `intentions`, `identity`) is plain data the proxy reads from a
//! `tokio::sync::watch` channel of `Arc<Snapshot>`. Sources fill that channel: files
//! (`file`) and the Consul agent (`consul`), through the kit they share (`publish`);
//! either can take its identity (leaf and bundles) from the SPIFFE Workload API instead
//! (`workload`). `api` holds Consul's wire types, shared by the client and the
//! development agent (the `ferrule-dev` crate) so the two sides cannot drift apart.

pub mod access_log;
pub mod addr;
pub mod api;
pub mod consul;
pub mod duration;
pub mod file;
pub mod gateway;
pub mod identity;
pub mod intentions;
pub mod model;
pub mod normalization;
pub mod publish;
pub mod routing;
pub mod telemetry;
pub mod workload;
