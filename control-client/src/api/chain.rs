//! The discovery chain on the wire: the three config entries that shape it
//! (`service-resolver`, `service-splitter`, `service-router`, in [`entries`]), the
//! compiled chain `/v1/discovery-chain/:service` answers with (in [`compiled`]), and
//! that endpoint's `POST` body ([`DiscoveryChainRequest`]).
//!
//! The dev agent serializes these and the Consul client deserializes them, so both
//! directions follow Consul's encoding: PascalCase keys, `omitempty` fields skipped,
//! struct-valued fields Go always emits (`MeshGateway`, `Subset`) always present, and
//! durations as Go's `Duration.String()` where Consul's marshaller writes a string
//! (`ConnectTimeout`, `RequestTimeout` of an entry) but as integer nanoseconds where Go's
//! default encoding applies (a compiled resolver's `RequestTimeout`, a cookie `TTL`).
//! Readers take either form, `null` for anything, unknown keys, and the snake_case
//! aliases Consul accepts on writes (`default_subset`, `connect_timeout`, ...).
//! What the dev agent compiles from these is described in
//! `docs/consul-semantics.md#discovery-chain`.

pub mod compiled;
pub mod entries;

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::agent::MeshGatewayConfig;
use super::nullable;
use crate::duration;

pub use compiled::*;
pub use entries::*;

pub const SERVICE_RESOLVER: &str = "service-resolver";
pub const SERVICE_SPLITTER: &str = "service-splitter";
pub const SERVICE_ROUTER: &str = "service-router";

/// Go's `time.Duration`: signed nanoseconds. Serializes as Go's `Duration.String()`
/// (`"5s"`, `"1m30s"`); reads a Go duration string, an integer or float number of
/// nanoseconds, or `null` (zero). Zero means "not set" everywhere Consul uses it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(pub i64);

impl GoDuration {
    pub const ZERO: GoDuration = GoDuration(0);

    pub fn from_std(duration: Duration) -> Self {
        GoDuration(i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX))
    }

    pub fn from_secs(secs: u64) -> Self {
        Self::from_std(Duration::from_secs(secs))
    }

    pub fn nanos(self) -> i64 {
        self.0
    }

    pub fn is_zero(&self) -> bool {
        self.0 == 0
    }

    /// The duration when it is positive; `None` for zero (unset) or negative.
    pub fn positive(self) -> Option<Duration> {
        duration::positive(self.0)
    }

    /// Serializes as an integer of nanoseconds: Go's default encoding of a
    /// `time.Duration`, for the fields Consul has no string marshaller for.
    pub fn serialize_nanos<S: Serializer>(value: &Self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(value.0)
    }
}

impl fmt::Display for GoDuration {
    /// Go's `Duration.String()`, negative values included (`-1.5s`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let magnitude = Duration::from_nanos(self.0.unsigned_abs());
        let sign = if self.0 < 0 { "-" } else { "" };
        write!(f, "{sign}{}", duration::format(magnitude))
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(GoDurationVisitor)
    }
}

struct GoDurationVisitor;

impl<'de> Visitor<'de> for GoDurationVisitor {
    type Value = GoDuration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"5s\" or a number of nanoseconds")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<GoDuration, E> {
        if text.is_empty() {
            return Ok(GoDuration::ZERO);
        }
        duration::parse(text).map(GoDuration).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, nanos: i64) -> Result<GoDuration, E> {
        Ok(GoDuration(nanos))
    }

    fn visit_u64<E: de::Error>(self, nanos: u64) -> Result<GoDuration, E> {
        i64::try_from(nanos)
            .map(GoDuration)
            .map_err(|_| E::custom(format!("duration of {nanos}ns is out of range")))
    }

    /// Go's weakly typed decoding truncates a float to whole nanoseconds.
    fn visit_f64<E: de::Error>(self, nanos: f64) -> Result<GoDuration, E> {
        if nanos.is_finite() && nanos.abs() < 9.2e18 {
            Ok(GoDuration(nanos.trunc() as i64))
        } else {
            Err(E::custom(format!("duration of {nanos}ns is out of range")))
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<GoDuration, E> {
        Ok(GoDuration::ZERO)
    }

    fn visit_none<E: de::Error>(self) -> Result<GoDuration, E> {
        Ok(GoDuration::ZERO)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<GoDuration, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// A split weight as Go encodes a `float32`: `90` rather than `90.0`, `33.33` as is.
pub(crate) fn serialize_weight<S: Serializer>(
    weight: &f32,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let whole = weight.trunc();
    if *weight == whole && whole.abs() < 1e15 {
        serializer.serialize_i64(whole as i64)
    } else {
        serializer.serialize_f32(*weight)
    }
}

/// `null` reads as a weight of zero.
pub(crate) fn deserialize_weight<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<f32, D::Error> {
    Option::<f32>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// The body of `POST /v1/discovery-chain/:service`: what the caller overrides for the
/// whole chain. Consul accepts the snake_case keys too.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DiscoveryChainRequest {
    #[serde(
        alias = "override_mesh_gateway",
        deserialize_with = "nullable",
        skip_serializing_if = "MeshGatewayConfig::is_empty"
    )]
    pub override_mesh_gateway: MeshGatewayConfig,
    #[serde(
        alias = "override_protocol",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub override_protocol: String,
    #[serde(
        alias = "override_connect_timeout",
        skip_serializing_if = "GoDuration::is_zero"
    )]
    pub override_connect_timeout: GoDuration,
}

impl DiscoveryChainRequest {
    /// Nothing overridden: a plain `GET` asks for the same chain.
    pub fn is_empty(&self) -> bool {
        *self == DiscoveryChainRequest::default()
    }
}

/// What `/v1/discovery-chain/:service` answers: `{"Chain": {...}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DiscoveryChainResponse {
    #[serde(deserialize_with = "nullable")]
    pub chain: CompiledDiscoveryChain,
}

#[cfg(test)]
mod tests;
