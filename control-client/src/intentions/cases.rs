//! The L4 rows of the intentions tables as data (`control-client/tests/data/intentions-l4.json`),
//! for the tests on both sides of one meaning: `decide`'s own table test and the dev
//! agent's check that its `/v1/agent/connect/authorize` answers as the proxy decides.
//! One file of rows, read by both, so neither side can drift with a private copy.
//!
//! Test support only: nothing in the proxy or the dev agent calls it.

use serde::Deserialize;

use super::{Action, Destination, Intentions, IntentionsError, Peer};
use crate::api::intentions as wire;
use crate::identity::{DEFAULT, ServiceId};

/// The rows, in file order.
pub fn l4() -> Result<Vec<Case>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Table {
        cases: Vec<Case>,
    }
    let table: Table = serde_json::from_str(include_str!("../../tests/data/intentions-l4.json"))?;
    Ok(table.cases)
}

/// One row: these intentions, this caller, this connection-level decision.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub name: String,
    /// The protected service, in the default namespace and partition.
    pub destination: String,
    pub default: Action,
    /// `service-intentions` config entries, as written to Consul.
    pub entries: Vec<wire::ServiceIntentionsEntry>,
    pub caller: Caller,
    pub want: Want,
}

impl Case {
    /// The intentions protecting `destination`, built as the proxy's file source builds them.
    pub fn intentions(&self) -> Result<Intentions, IntentionsError> {
        Intentions::from_config_entries(
            &self.entries,
            Destination::new("", "", &self.destination),
            self.default,
        )
    }
}

/// The caller's identity, as its certificate names it.
#[derive(Debug, Clone, Deserialize)]
pub struct Caller {
    /// The caller's trust domain when it is not the local one; `""` for a local caller.
    pub peer: String,
    pub partition: String,
    pub namespace: String,
    pub service: String,
}

impl Caller {
    /// The SPIFFE identity of the caller's certificate, with `local_trust_domain` for a
    /// local caller.
    pub fn service_id(&self, local_trust_domain: &str) -> ServiceId {
        let trust_domain = if self.peer.is_empty() {
            local_trust_domain
        } else {
            &self.peer
        };
        let mut id = ServiceId::new(trust_domain, &self.namespace, "dc1", &self.service);
        if !self.partition.is_empty() {
            id.partition.clone_from(&self.partition);
        }
        id
    }

    /// The caller as the proxy sees it after the handshake.
    pub fn peer(&self, local_trust_domain: &str) -> Peer {
        Peer::of_caller(&self.service_id(local_trust_domain), local_trust_domain)
    }

    /// Whether Consul CE's agent refuses to authorize this caller at all (its partition
    /// is not the agent's).
    pub fn outside_the_default_partition(&self) -> bool {
        !self.partition.is_empty() && self.partition != DEFAULT
    }
}

/// What `decide` answers for a connection (`request: None`).
#[derive(Debug, Clone, Deserialize)]
pub struct Want {
    pub allowed: bool,
    /// `Reason::label()`.
    pub reason: String,
    /// The governing rule's precedence, when the row pins it.
    #[serde(default)]
    pub precedence: Option<u32>,
    /// The governing rule's index in evaluation order, when the row pins it.
    #[serde(default)]
    pub matched: Option<usize>,
}
