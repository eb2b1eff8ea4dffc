//! What every snapshot source shares: the config file (`file`) and the Consul agent
//! (`consul::source`) differ in where they learn things, not in what they make of them.
//!
//! `listener` holds the defaults both apply to the listeners they describe (timeouts and
//! limits a source leaves unset) and the one builder of an upstream's configuration.
//! `publisher` owns the sending end of the `watch` channel of `Arc<Snapshot>`: it puts the
//! SPIFFE Workload API's leaf and bundle over what a source built, when the proxy takes
//! its identity from there, and publishes only a snapshot that differs from the last.

mod listener;
mod publisher;

pub(crate) use listener::{InboundLimits, UpstreamLimits, UpstreamListener, inbound};
#[cfg(test)]
pub(crate) use publisher::same_arc;
pub(crate) use publisher::{Admit, Publisher, Wake, same_default};
