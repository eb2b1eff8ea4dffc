//! The intentions model: one destination's intentions as plain data, validated once and
//! sorted once into evaluation order, and the one decision every caller asks of them.
//!
//! What intentions mean lives here and nowhere else: the proxy (per connection, per HTTP
//! request, and when it re-checks live connections) and the dev agent's
//! `/v1/agent/connect/authorize` both call [`decide`]. See
//! `docs/consul-semantics.md#intentions` and Consul's documentation
//! (https://developer.hashicorp.com/consul/docs/connect/intentions).
//!
//! - `build`: from Consul's JSON (`service-intentions` config entries, or the
//!   `/v1/connect/intentions/match` answer), checked as Consul's servers check it;
//! - `order`: precedence and evaluation order (also what the dev agent normalizes and
//!   sorts its answers with);
//! - `decide`: the pure decision, with its tables of tests;
//! - `error`: why a document is refused;
//! - `cases`: the L4 rows of the decision's tables as data, shared by the tests of the
//!   proxy's side and the dev agent's.
//!
//! Construction does everything that can fail or cost: it computes precedence itself (the
//! input's value is never trusted), compiles regexes with a size limit and anchors them for
//! full matches, and sorts the rules into a total order. Deciding is then a walk that cannot
//! fail and never depends on the order the input came in.
//!
//! Two features cannot be enforced by this proxy, so they fail closed: JWT requirements
//! (only Envoy verifies tokens) and sameness-group sources (the proxy does not know group
//! membership). A rule that carries either never allows: its `allow` becomes `deny`. The
//! display string says so, for the logs.

mod build;
#[doc(hidden)]
pub mod cases;
mod decide;
mod error;
mod order;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize};

use crate::identity::{DEFAULT, ServiceId};

pub use build::validate_config_entries;
pub use decide::{Decision, Reason, Request, decide};
pub use error::{IntentionsError, Invalid, PermissionInvalid, UnknownAction};
pub use order::{OrderKey, precedence_of};

const WILDCARD: &str = "*";

/// What an intention (or one of its permissions) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn is_allow(self) -> bool {
        self == Action::Allow
    }

    fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("allow") {
            Ok(Action::Allow)
        } else if s.eq_ignore_ascii_case("deny") {
            Ok(Action::Deny)
        } else {
            Err(UnknownAction(s.to_owned()))
        }
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The caller, as its verified certificate names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Cluster-peer name; `""` for callers of the local cluster.
    pub peer: String,
    pub partition: String,
    pub namespace: String,
    pub service: String,
}

impl From<&ServiceId> for Peer {
    fn from(id: &ServiceId) -> Self {
        Peer {
            peer: String::new(),
            partition: id.partition.clone(),
            namespace: id.namespace.clone(),
            service: id.service.clone(),
        }
    }
}

impl Peer {
    /// The caller as intentions see it. A caller from another trust domain (federated
    /// through the Workload API) is a cluster peer whose peer name is its trust domain,
    /// so only sources with `Peer` set to that trust domain match it, never local ones.
    pub fn of_caller(id: &ServiceId, local_trust_domain: &str) -> Peer {
        let mut peer = Peer::from(id);
        if id.trust_domain != local_trust_domain {
            peer.peer = id.trust_domain.clone();
            // Peered sources carry no partition: the peering implies it.
            peer.partition = String::new();
        }
        peer
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.peer.is_empty() {
            write!(f, "peer({})/", self.peer)?;
        } else if !self.partition.is_empty() && self.partition != DEFAULT {
            write!(f, "{}/", self.partition)?;
        }
        write!(f, "{}/{}", or_default(&self.namespace), self.service)
    }
}

/// The service these intentions protect: always exact.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Destination {
    pub partition: String,
    pub namespace: String,
    pub name: String,
}

impl Destination {
    /// Empty partition or namespace means `default`, as on Community Edition.
    pub fn new(partition: &str, namespace: &str, name: &str) -> Self {
        Destination {
            partition: or_default(partition).to_owned(),
            namespace: or_default(namespace).to_owned(),
            name: name.to_owned(),
        }
    }

    fn normalized(self) -> Result<Self, IntentionsError> {
        let dest = Destination::new(&self.partition, &self.namespace, &self.name);
        if dest.name.is_empty()
            || [&dest.partition, &dest.namespace, &dest.name]
                .iter()
                .any(|s| s.contains('*'))
        {
            return Err(IntentionsError::Destination(dest.to_string()));
        }
        Ok(dest)
    }
}

impl From<&ServiceId> for Destination {
    fn from(id: &ServiceId) -> Self {
        Destination::new(&id.partition, &id.namespace, &id.service)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.partition != DEFAULT {
            write!(f, "{}/", self.partition)?;
        }
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A namespace or service name in an intention: exact, or `*` for any.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NamePattern {
    Any,
    Exact(String),
}

impl NamePattern {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            NamePattern::Any => true,
            NamePattern::Exact(exact) => exact == value,
        }
    }

    /// The wire spelling; also the sort key, so `*` sorts as Consul sorts it.
    pub fn as_str(&self) -> &str {
        match self {
            NamePattern::Any => WILDCARD,
            NamePattern::Exact(exact) => exact,
        }
    }

    fn is_exact(&self) -> bool {
        matches!(self, NamePattern::Exact(_))
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who an intention is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    /// Cluster-peer name; `""` for local sources.
    pub peer: String,
    /// Enterprise sameness group; `""` when not used.
    pub sameness_group: String,
    /// The source partition for local sources. `""` for peered and sameness-group sources,
    /// whose partition is implied by the peering or the group (Consul leaves it empty too).
    pub partition: String,
    pub namespace: NamePattern,
    pub name: NamePattern,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.peer.is_empty() {
            write!(f, "peer({})/", self.peer)?;
        } else if !self.sameness_group.is_empty() {
            write!(f, "sameness-group({})/", self.sameness_group)?;
        } else if !self.partition.is_empty() && self.partition != DEFAULT {
            write!(f, "{}/", self.partition)?;
        }
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which destinations an intention applies to: its config entry's `Name` and namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub partition: String,
    pub namespace: NamePattern,
    pub name: NamePattern,
}

impl Target {
    /// Whether an intention for this target protects `destination`.
    pub fn covers(&self, destination: &Destination) -> bool {
        self.partition == destination.partition
            && self.namespace.matches(&destination.namespace)
            && self.name.matches(&destination.name)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.partition != DEFAULT {
            write!(f, "{}/", self.partition)?;
        }
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a governing intention does.
#[derive(Debug, Clone)]
pub enum Rule {
    /// L4: the whole connection, and every request on it.
    Action(Action),
    /// L7: per request, first matching permission decides; none matching → the default
    /// action. On a connection-level check this counts as deny.
    Permissions(Vec<Permission>),
}

#[derive(Debug, Clone)]
pub struct Permission {
    pub action: Action,
    pub http: HttpMatch,
}

/// All set criteria must hold.
#[derive(Debug, Clone)]
pub struct HttpMatch {
    pub path: Option<PathMatch>,
    /// Upper-cased; empty means any method.
    pub methods: Vec<String>,
    pub headers: Vec<HeaderMatch>,
}

/// Tested against the normalized request path without its query string.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Anchored: must match the whole path.
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    /// Lower-cased.
    pub name: String,
    pub test: HeaderTest,
    /// Negates `test`.
    pub invert: bool,
    /// Compare ASCII case-insensitively; the test's string is stored lower-cased already.
    pub ignore_case: bool,
}

#[derive(Debug, Clone)]
pub enum HeaderTest {
    Present,
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// Anchored: must match the whole value.
    Regex(Regex),
}

/// Consul features this proxy cannot enforce; a rule carrying one never allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unenforced {
    /// A JWT requirement on the intention or on one of its permissions.
    Jwt,
    /// A sameness-group source: membership is unknown here.
    SamenessGroup,
}

/// One intention, ready to be matched.
#[derive(Debug, Clone)]
pub struct Intention {
    source: Source,
    target: Target,
    precedence: u32,
    rule: Rule,
    unenforced: Option<Unenforced>,
    display: String,
}

impl Intention {
    pub fn source(&self) -> &Source {
        &self.source
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Computed here from the wildcard shape (`precedence_of`), 1..=9.
    pub fn precedence(&self) -> u32 {
        self.precedence
    }

    /// The enforced rule: with anything `unenforced`, its allows are already denies.
    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    pub fn unenforced(&self) -> Option<Unenforced> {
        self.unenforced
    }

    pub fn is_l7(&self) -> bool {
        matches!(self.rule, Rule::Permissions(_))
    }
}

/// Consul's `Intention.String()` form (what `/v1/agent/connect/authorize` puts in its
/// reason, `docs/consul-semantics.md#intentions`), e.g.
/// `default/web => default/api (Precedence: 9, Action: ALLOW)`, with a note when part of
/// the rule is not enforced.
impl fmt::Display for Intention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

/// The intentions that protect one destination, in evaluation order.
#[derive(Debug, Clone)]
pub struct Intentions {
    destination: Destination,
    default_action: Action,
    rules: Vec<Intention>,
    /// Indices into `rules`, ascending, of the rules whose source names exactly this
    /// service: a caller can only be governed by those and by `any_name`, so a decision
    /// looks at a handful of rules however many intentions the destination has.
    by_name: HashMap<String, Vec<usize>>,
    /// Indices into `rules`, ascending, of the rules whose source name is `*`.
    any_name: Vec<usize>,
}

impl Intentions {
    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// What applies when no intention governs, or when a governing L7 intention has no
    /// matching permission.
    pub fn default_action(&self) -> Action {
        self.default_action
    }

    /// In evaluation order: the first rule that matches a caller governs.
    pub fn rules(&self) -> &[Intention] {
        &self.rules
    }

    /// In evaluation order, the indices into `rules()` of the only rules that can match
    /// a caller named `service`: those for exactly that name and those for `*`. Every
    /// other rule names another service.
    pub fn candidates(&self, service: &str) -> Candidates<'_> {
        Candidates {
            exact: self.by_name.get(service).map_or(&[], Vec::as_slice),
            any: &self.any_name,
        }
    }
}

/// Two ascending index lists, merged: see [`Intentions::candidates`].
#[derive(Debug, Clone)]
pub struct Candidates<'a> {
    exact: &'a [usize],
    any: &'a [usize],
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let take_exact = match (self.exact.first(), self.any.first()) {
            (Some(e), Some(a)) => e < a,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let list = if take_exact {
            &mut self.exact
        } else {
            &mut self.any
        };
        let (&first, rest) = list.split_first()?;
        *list = rest;
        Some(first)
    }
}

fn or_default(s: &str) -> &str {
    if s.is_empty() { DEFAULT } else { s }
}
