//! What every snapshot source shares: the config file (`file`) and the Consul agent
//! (`consul::source`) differ in where they learn things, not in what they make of them.
//!
//! `listener` holds the defaults both apply to the listeners they describe (timeouts and
//! limits a source leaves unset) and the one builder of an upstream's configuration.
//! `publisher` owns the sending end of the `watch` channel of `Arc<Snapshot>`: it puts the
//! SPIFFE Workload API's leaf and bundle over what a source built, when the proxy takes
//! its identity from there, and publishes only a snapshot that differs from the last.
//! [`Source`] is either source, so the binary starts every mode the same way.

mod listener;
mod publisher;

use std::sync::Arc;

use tokio::sync::watch;

use crate::consul::ConsulSource;
use crate::file::FileSource;
use crate::model::Snapshot;
use crate::workload::IdentityFeed;

pub(crate) use listener::{
    GatewayLimitsMs, InboundLimits, UpstreamLimits, UpstreamListener, gateway_limits, inbound,
};
#[cfg(test)]
pub(crate) use publisher::same_arc;
pub(crate) use publisher::{Admit, Publisher, Wake, same_default};

/// Where the snapshots come from: the config file or the Consul agent. The file source
/// is boxed: the enum is built once, and need not be as large as its largest variant.
pub enum Source {
    File(Box<FileSource>),
    Consul(ConsulSource),
}

impl Source {
    /// Starts following the source; with `identity` the leaf and bundles come from the
    /// SPIFFE Workload API instead. Returns at once (see each source's `spawn`).
    pub fn spawn(self, identity: Option<IdentityFeed>) -> watch::Receiver<Arc<Snapshot>> {
        match (self, identity) {
            (Source::File(source), Some(feed)) => source.with_identity(feed).spawn(),
            (Source::File(source), None) => source.spawn(),
            (Source::Consul(source), Some(feed)) => source.with_identity(feed).spawn(),
            (Source::Consul(source), None) => source.spawn(),
        }
    }
}

impl From<FileSource> for Source {
    fn from(source: FileSource) -> Source {
        Source::File(Box::new(source))
    }
}

impl From<ConsulSource> for Source {
    fn from(source: ConsulSource) -> Source {
        Source::Consul(source)
    }
}
