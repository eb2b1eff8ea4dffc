//! Consul's HTTP API wire types: serde structs with Consul's exact JSON keys.
//!
//! Responses are parsed case-sensitively and tolerate unknown fields, since new
//! fields appear across Consul versions.

pub mod intentions;
