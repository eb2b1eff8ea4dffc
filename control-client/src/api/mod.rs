//! Consul's HTTP API wire types: serde structs with Consul's exact JSON keys.
//!
//! Responses are parsed case-sensitively and tolerate unknown fields, since new
//! fields appear across Consul versions. Go encodes nil slices and maps as `null`, so
//! fields that real agents may send as `null` read as empty. On output, the fields Consul
//! marks `omitempty` are skipped when empty, so the development agent can serve these
//! types exactly as a real agent would. The client and the dev agent share this module.

pub mod agent;
pub mod agent_self;
pub mod ca;
pub mod chain;
pub mod defaults;
pub mod health;
pub mod intentions;
pub mod query;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Go encodes nil slices and maps as `null`; treat that like an absent field.
pub(crate) fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// Go's `omitempty` for numbers and other zero values.
pub(crate) fn is_zero<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

pub(crate) fn is_false(value: &bool) -> bool {
    !*value
}

/// Go's encoding of a nil slice: `null` where Consul leaves the slice unset.
pub(crate) fn empty_as_null<S, T>(value: &[T], serializer: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    T: Serialize,
{
    if value.is_empty() {
        serializer.serialize_none()
    } else {
        value.serialize(serializer)
    }
}
