//! The intentions model: one destination's intentions as plain data, validated once and
//! sorted once into evaluation order, ready for the proxy's pure decision function.
//!
//! It is built from Consul's wire types (`crate::api::intentions`), either from
//! `service-intentions` config entries (files, `/v1/config`) or from the
//! `/v1/connect/intentions/match` answer. Construction does everything that can fail or
//! cost: it checks what Consul's servers check, computes precedence itself (spec §5.1; the
//! input's value is never trusted), compiles regexes with a size limit and anchors them for
//! full matches, and sorts the rules into a total order. Deciding is then a walk that cannot
//! fail and never depends on the order the input came in.
//!
//! Two features cannot be enforced by this proxy, so they fail closed: JWT requirements
//! (only Envoy verifies tokens) and sameness-group sources (the proxy does not know group
//! membership). A rule that carries either never allows: its `allow` becomes `deny`. The
//! display string says so, for the logs.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Deserializer, Serialize};

use crate::api::intentions as wire;
use crate::identity::{DEFAULT, ServiceId};

const WILDCARD: &str = "*";

/// Bounds the memory one compiled pattern may take; a config entry is not trusted to be
/// small.
const REGEX_SIZE_LIMIT: usize = 64 * 1024;

/// The methods Consul's server accepts in `HTTP.Methods` (`isValidHTTPMethod`).
const HTTP_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
];

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

/// An action string that is neither `allow` nor `deny`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid action {0:?} (want \"allow\" or \"deny\")")]
pub struct UnknownAction(pub String);

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

    /// Computed here from the wildcard shape (spec §5.1), 1..=9.
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

/// Consul's `Intention.String()` form (spec §3.3), e.g.
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
    /// Builds the model from `service-intentions` config entries. The whole document is
    /// validated as Consul's server validates it (so one bad entry refuses the document,
    /// whichever service it is for); only the entries that cover `destination` (`Name` its
    /// name or `*`, namespace its namespace or `*`, same partition) become rules.
    pub fn from_config_entries(
        entries: &[wire::ServiceIntentionsEntry],
        destination: Destination,
        default_action: Action,
    ) -> Result<Intentions, IntentionsError> {
        let destination = destination.normalized()?;
        let mut rules = config_entry_rules(entries)?;
        rules.retain(|rule| rule.target.covers(&destination));
        Ok(Intentions::sorted(destination, default_action, rules))
    }

    /// Builds the model from the list `/v1/connect/intentions/match?by=destination` returned
    /// for the destination. The list's order and precedences are not relied on.
    pub fn from_match(
        list: Vec<wire::Intention>,
        destination: Destination,
        default_action: Action,
    ) -> Result<Intentions, IntentionsError> {
        let destination = destination.normalized()?;
        let mut seen = HashSet::new();
        let mut rules = Vec::with_capacity(list.len());
        for (index, ixn) in list.iter().enumerate() {
            let match_err = |problem| IntentionsError::Match {
                index,
                intention: format!(
                    "{}/{} => {}/{}",
                    ixn.source_ns, ixn.source_name, ixn.destination_ns, ixn.destination_name
                ),
                problem,
            };
            let rule = from_wire_intention(ixn).map_err(match_err)?;
            if !seen.insert((rule.source.clone(), rule.target.clone())) {
                return Err(match_err(Invalid::DuplicateSource));
            }
            rules.push(rule);
        }
        Ok(Intentions::sorted(destination, default_action, rules))
    }

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

    fn sorted(destination: Destination, default_action: Action, mut rules: Vec<Intention>) -> Self {
        rules.sort_by(evaluation_order);
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any_name = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            match &rule.source.name {
                NamePattern::Exact(name) => by_name.entry(name.clone()).or_default().push(i),
                NamePattern::Any => any_name.push(i),
            }
        }
        Intentions {
            destination,
            default_action,
            rules,
            by_name,
            any_name,
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

/// Checks a `service-intentions` document without building it for a destination: what a
/// file source does before accepting a new file.
pub fn validate_config_entries(
    entries: &[wire::ServiceIntentionsEntry],
) -> Result<(), IntentionsError> {
    config_entry_rules(entries).map(|_| ())
}

/// Every rule of every entry, in input order.
fn config_entry_rules(
    entries: &[wire::ServiceIntentionsEntry],
) -> Result<Vec<Intention>, IntentionsError> {
    let mut targets = HashSet::new();
    let mut rules = Vec::new();
    for entry in entries {
        let label = entry_label(entry);
        let entry_err = |problem| IntentionsError::Entry {
            entry: label.clone(),
            problem,
        };
        if entry.name.is_empty() {
            return Err(entry_err(Invalid::Missing("Name")));
        }
        if !entry.kind.is_empty() && entry.kind != wire::KIND {
            return Err(entry_err(Invalid::Kind(entry.kind.clone())));
        }
        let target = target(
            or_default(&entry.partition),
            or_default(&entry.namespace),
            &entry.name,
        )
        .map_err(entry_err)?;
        if !targets.insert(target.clone()) {
            return Err(entry_err(Invalid::DuplicateEntry));
        }
        if entry.sources.is_empty() {
            return Err(entry_err(Invalid::NoSources));
        }
        let entry_jwt = jwt_required(entry.jwt.as_ref());
        let mut sources = HashSet::new();
        for (index, src) in entry.sources.iter().enumerate() {
            let source_err = |problem| IntentionsError::Source {
                entry: label.clone(),
                index,
                name: if src.name.is_empty() {
                    "unnamed".to_owned()
                } else {
                    src.name.clone()
                },
                problem,
            };
            let ixn = from_source(src, &target, entry_jwt).map_err(source_err)?;
            if !sources.insert(ixn.source.clone()) {
                return Err(source_err(Invalid::DuplicateSource));
            }
            rules.push(ixn);
        }
    }
    Ok(rules)
}

/// Why intentions could not be built. Each names the entry and source (or the match-list
/// position) it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntentionsError {
    #[error("destination {0}: must be an exact service name, namespace and partition")]
    Destination(String),
    #[error("service-intentions {entry}: {problem}")]
    Entry { entry: String, problem: Invalid },
    #[error("service-intentions {entry}: Sources[{index}] ({name}): {problem}")]
    Source {
        entry: String,
        index: usize,
        name: String,
        problem: Invalid,
    },
    #[error("intentions match[{index}] ({intention}): {problem}")]
    Match {
        index: usize,
        intention: String,
        problem: Invalid,
    },
}

/// What is wrong with an entry, a source or an intention. Messages follow Consul's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("Kind is {0:?}, want \"service-intentions\"")]
    Kind(String),
    #[error("At least one source is required")]
    NoSources,
    #[error("more than one config entry for this destination")]
    DuplicateEntry,
    #[error("defined more than once")]
    DuplicateSource,
    #[error("{field}: wildcard character '*' cannot be used with partial values: {value:?}")]
    PartialWildcard { field: &'static str, value: String },
    #[error("{0}: cannot use wildcard '*'")]
    WildcardNotAllowed(&'static str),
    #[error("Name: exact value {0:?} cannot follow wildcard namespace")]
    ExactAfterWildcardNamespace(String),
    #[error("cannot set {0} and {1} at the same time")]
    Exclusive(&'static str, &'static str),
    #[error("Type must be set to 'consul', not {0:?}")]
    Type(String),
    #[error("Action must be set to 'allow' or 'deny'")]
    MissingAction,
    #[error("Action: {0}")]
    Action(UnknownAction),
    #[error("Action must be omitted if Permissions are specified")]
    ActionWithPermissions,
    #[error("Permissions cannot be specified on intentions with wildcarded destinations")]
    PermissionsOnWildcardDestination,
    #[error("Permissions[{index}]: {problem}")]
    Permission {
        index: usize,
        problem: PermissionInvalid,
    },
}

/// What is wrong with one L7 permission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermissionInvalid {
    #[error("Action must be set to 'allow' or 'deny'")]
    MissingAction,
    #[error("Action: {0}")]
    Action(UnknownAction),
    #[error("HTTP is required")]
    MissingHttp,
    #[error("HTTP should only contain at most one of PathExact, PathPrefix, or PathRegex")]
    MultiplePaths,
    #[error("HTTP.{field} doesn't start with '/': {value:?}")]
    RelativePath { field: &'static str, value: String },
    #[error("HTTP.{field}: invalid regex: {error}")]
    Regex { field: String, error: String },
    #[error("HTTP.Header[{0}] missing required Name field")]
    HeaderName(usize),
    #[error(
        "HTTP.Header[{index}] ({name}) should only contain one of Present, Exact, Prefix, Suffix, Contains, or Regex"
    )]
    HeaderTests { index: usize, name: String },
    #[error(
        "HTTP.Header[{index}] ({name}) should set one of Exact, Prefix, Suffix, or Contains when using IgnoreCase"
    )]
    HeaderIgnoreCase { index: usize, name: String },
    #[error("HTTP.Methods contains an invalid method {0:?}")]
    Method(String),
    #[error("HTTP.Methods contains {0:?} more than once")]
    DuplicateMethod(String),
    #[error("HTTP should not be empty: set a path, Methods or Header")]
    EmptyHttp,
}

fn or_default(s: &str) -> &str {
    if s.is_empty() { DEFAULT } else { s }
}

fn entry_label(entry: &wire::ServiceIntentionsEntry) -> String {
    let partition = or_default(&entry.partition);
    let prefix = if partition == DEFAULT {
        String::new()
    } else {
        format!("{partition}/")
    };
    format!("{prefix}{}/{}", or_default(&entry.namespace), entry.name)
}

fn name_pattern(field: &'static str, value: &str) -> Result<NamePattern, Invalid> {
    if value == WILDCARD {
        Ok(NamePattern::Any)
    } else if value.contains(WILDCARD) {
        Err(Invalid::PartialWildcard {
            field,
            value: value.to_owned(),
        })
    } else {
        Ok(NamePattern::Exact(value.to_owned()))
    }
}

fn no_wildcard(field: &'static str, value: &str) -> Result<(), Invalid> {
    if value.contains(WILDCARD) {
        return Err(Invalid::WildcardNotAllowed(field));
    }
    Ok(())
}

/// `*/web` would be a pattern no precedence row describes; Consul rejects it.
fn ns_and_name(namespace: &str, name: &str) -> Result<(NamePattern, NamePattern), Invalid> {
    let namespace = name_pattern("Namespace", namespace)?;
    let name = name_pattern("Name", name)?;
    if let (NamePattern::Any, NamePattern::Exact(exact)) = (&namespace, &name) {
        return Err(Invalid::ExactAfterWildcardNamespace(exact.clone()));
    }
    Ok((namespace, name))
}

fn target(partition: &str, namespace: &str, name: &str) -> Result<Target, Invalid> {
    no_wildcard("Partition", partition)?;
    let (namespace, name) = ns_and_name(namespace, name)?;
    Ok(Target {
        partition: partition.to_owned(),
        namespace,
        name,
    })
}

fn source(
    peer: &str,
    sameness_group: &str,
    partition: &str,
    namespace: &str,
    name: &str,
) -> Result<Source, Invalid> {
    if name.is_empty() {
        return Err(Invalid::Missing("Name"));
    }
    let (namespace, name) = ns_and_name(namespace, name)?;
    no_wildcard("Partition", partition)?;
    no_wildcard("Peer", peer)?;
    no_wildcard("SamenessGroup", sameness_group)?;
    Ok(Source {
        peer: peer.to_owned(),
        sameness_group: sameness_group.to_owned(),
        partition: partition.to_owned(),
        namespace,
        name,
    })
}

fn from_source(
    src: &wire::SourceIntention,
    target: &Target,
    entry_jwt: bool,
) -> Result<Intention, Invalid> {
    if !src.peer.is_empty() && !src.partition.is_empty() {
        return Err(Invalid::Exclusive("Peer", "Partition"));
    }
    if !src.sameness_group.is_empty() && !src.partition.is_empty() {
        return Err(Invalid::Exclusive("SamenessGroup", "Partition"));
    }
    if !src.sameness_group.is_empty() && !src.peer.is_empty() {
        return Err(Invalid::Exclusive("SamenessGroup", "Peer"));
    }
    // Consul's normalize: local sources inherit the destination's namespace (unless it is
    // `*`) and partition; peered and sameness-group sources get only a default namespace.
    let (partition, namespace) = if !src.peer.is_empty() || !src.sameness_group.is_empty() {
        ("", or_default(&src.namespace))
    } else {
        let namespace = match (&src.namespace[..], &target.namespace) {
            ("", NamePattern::Exact(ns)) => ns.as_str(),
            ("", NamePattern::Any) => DEFAULT,
            (ns, _) => ns,
        };
        (or_default_to(&src.partition, &target.partition), namespace)
    };
    let source = source(
        &src.peer,
        &src.sameness_group,
        partition,
        namespace,
        &src.name,
    )?;
    check_type(&src.source_type)?;
    build(
        source,
        target.clone(),
        &src.action,
        &src.permissions,
        entry_jwt,
        "",
    )
}

fn from_wire_intention(ixn: &wire::Intention) -> Result<Intention, Invalid> {
    if ixn.destination_name.is_empty() {
        return Err(Invalid::Missing("DestinationName"));
    }
    let remote = !ixn.source_peer.is_empty() || !ixn.source_sameness_group.is_empty();
    let partition = if remote {
        ""
    } else {
        or_default(&ixn.source_partition)
    };
    let source = source(
        &ixn.source_peer,
        &ixn.source_sameness_group,
        partition,
        or_default(&ixn.source_ns),
        &ixn.source_name,
    )?;
    let target = target(
        or_default(&ixn.destination_partition),
        or_default(&ixn.destination_ns),
        &ixn.destination_name,
    )?;
    check_type(&ixn.source_type)?;
    let jwt = jwt_required(ixn.jwt.as_ref());
    build(source, target, &ixn.action, &ixn.permissions, jwt, &ixn.id)
}

fn or_default_to<'a>(s: &'a str, fallback: &'a str) -> &'a str {
    if s.is_empty() { fallback } else { s }
}

fn check_type(source_type: &str) -> Result<(), Invalid> {
    if !source_type.is_empty() && source_type != "consul" {
        return Err(Invalid::Type(source_type.to_owned()));
    }
    Ok(())
}

/// A requirement is there when it names at least one provider; anything else that is not
/// an object is unreadable and treated as a requirement, so it fails closed.
fn jwt_required(jwt: Option<&serde_json::Value>) -> bool {
    use serde_json::Value;
    match jwt {
        None | Some(Value::Null) => false,
        Some(Value::Object(requirement)) => match requirement.get("Providers") {
            None | Some(Value::Null) => false,
            Some(Value::Array(providers)) => !providers.is_empty(),
            Some(_) => true,
        },
        Some(_) => true,
    }
}

fn build(
    source: Source,
    target: Target,
    action: &str,
    permissions: &[wire::IntentionPermission],
    jwt: bool,
    id: &str,
) -> Result<Intention, Invalid> {
    let mut any_permission_jwt = false;
    let rule = if permissions.is_empty() {
        if action.is_empty() {
            return Err(Invalid::MissingAction);
        }
        Rule::Action(action.parse().map_err(Invalid::Action)?)
    } else {
        if !action.is_empty() {
            return Err(Invalid::ActionWithPermissions);
        }
        if !target.namespace.is_exact() || !target.name.is_exact() {
            return Err(Invalid::PermissionsOnWildcardDestination);
        }
        let mut out = Vec::with_capacity(permissions.len());
        for (index, perm) in permissions.iter().enumerate() {
            let (perm, perm_jwt) =
                permission(perm).map_err(|problem| Invalid::Permission { index, problem })?;
            any_permission_jwt |= perm_jwt;
            out.push(perm);
        }
        Rule::Permissions(out)
    };
    let precedence = precedence(&source, &target);
    let unenforced = if !source.sameness_group.is_empty() {
        Some(Unenforced::SamenessGroup)
    } else if jwt || any_permission_jwt {
        Some(Unenforced::Jwt)
    } else {
        None
    };
    let display = describe(&source, &target, id, precedence, &rule, unenforced);
    let rule = match (rule, unenforced, jwt) {
        // A permission's own JWT was handled in `permission`; these cover the whole rule.
        (rule, None, _) | (rule, Some(Unenforced::Jwt), false) => rule,
        (rule, Some(_), _) => never_allow(rule),
    };
    Ok(Intention {
        source,
        target,
        precedence,
        rule,
        unenforced,
        display,
    })
}

fn never_allow(rule: Rule) -> Rule {
    match rule {
        Rule::Action(_) => Rule::Action(Action::Deny),
        Rule::Permissions(perms) => Rule::Permissions(
            perms
                .into_iter()
                .map(|p| Permission {
                    action: Action::Deny,
                    http: p.http,
                })
                .collect(),
        ),
    }
}

/// Spec §5.1: the destination's exact parts set the band (9, 6, 3), the source's missing
/// exact parts lower it. Partitions, peers and sameness groups do not count.
fn precedence(source: &Source, target: &Target) -> u32 {
    fn exact_parts(namespace: &NamePattern, name: &NamePattern) -> u32 {
        match (namespace, name) {
            (NamePattern::Any, _) => 0,
            (_, NamePattern::Any) => 1,
            _ => 2,
        }
    }
    let max = match exact_parts(&target.namespace, &target.name) {
        2 => 9,
        1 => 6,
        _ => 3,
    };
    max - (2 - exact_parts(&source.namespace, &source.name))
}

fn describe(
    source: &Source,
    target: &Target,
    id: &str,
    precedence: u32,
    rule: &Rule,
    unenforced: Option<Unenforced>,
) -> String {
    let id = if id.is_empty() {
        String::new()
    } else {
        format!("ID: {id}, ")
    };
    let detail = match rule {
        Rule::Action(action) => format!("Action: {}", action.as_str().to_ascii_uppercase()),
        Rule::Permissions(perms) => format!("Permissions: {}", perms.len()),
    };
    let note = match unenforced {
        None => "",
        Some(Unenforced::Jwt) => ", JWT not enforced: allow => deny",
        Some(Unenforced::SamenessGroup) => ", sameness group not enforced: allow => deny",
    };
    format!("{source} => {target} ({id}Precedence: {precedence}, {detail}{note})")
}

/// Returns the permission and whether it carried a JWT requirement (its allow is then
/// already a deny).
fn permission(perm: &wire::IntentionPermission) -> Result<(Permission, bool), PermissionInvalid> {
    if perm.action.is_empty() {
        return Err(PermissionInvalid::MissingAction);
    }
    let action: Action = perm.action.parse().map_err(PermissionInvalid::Action)?;
    let http = perm.http.as_ref().ok_or(PermissionInvalid::MissingHttp)?;

    let paths = [&http.path_exact, &http.path_prefix, &http.path_regex];
    if paths.iter().filter(|p| !p.is_empty()).count() > 1 {
        return Err(PermissionInvalid::MultiplePaths);
    }
    for (field, value) in [
        ("PathExact", &http.path_exact),
        ("PathPrefix", &http.path_prefix),
    ] {
        if !value.is_empty() && !value.starts_with('/') {
            return Err(PermissionInvalid::RelativePath {
                field,
                value: value.clone(),
            });
        }
    }
    let path = if !http.path_exact.is_empty() {
        Some(PathMatch::Exact(http.path_exact.clone()))
    } else if !http.path_prefix.is_empty() {
        Some(PathMatch::Prefix(http.path_prefix.clone()))
    } else if !http.path_regex.is_empty() {
        Some(PathMatch::Regex(full_match_regex(
            "PathRegex",
            &http.path_regex,
        )?))
    } else {
        None
    };

    let headers = http
        .header
        .iter()
        .enumerate()
        .map(|(index, hdr)| header(index, hdr))
        .collect::<Result<Vec<_>, _>>()?;

    let mut methods: Vec<String> = Vec::with_capacity(http.methods.len());
    for method in &http.methods {
        let method = method.to_ascii_uppercase();
        if !HTTP_METHODS.contains(&method.as_str()) {
            return Err(PermissionInvalid::Method(method));
        }
        if methods.contains(&method) {
            return Err(PermissionInvalid::DuplicateMethod(method));
        }
        methods.push(method);
    }

    if path.is_none() && headers.is_empty() && methods.is_empty() {
        return Err(PermissionInvalid::EmptyHttp);
    }
    let jwt = jwt_required(perm.jwt.as_ref());
    let action = if jwt { Action::Deny } else { action };
    Ok((
        Permission {
            action,
            http: HttpMatch {
                path,
                methods,
                headers,
            },
        },
        jwt,
    ))
}

fn header(
    index: usize,
    hdr: &wire::IntentionHttpHeaderPermission,
) -> Result<HeaderMatch, PermissionInvalid> {
    if hdr.name.is_empty() {
        return Err(PermissionInvalid::HeaderName(index));
    }
    let strings = [
        &hdr.exact,
        &hdr.prefix,
        &hdr.suffix,
        &hdr.contains,
        &hdr.regex,
    ];
    let tests = usize::from(hdr.present) + strings.iter().filter(|s| !s.is_empty()).count();
    if tests != 1 {
        return Err(PermissionInvalid::HeaderTests {
            index,
            name: hdr.name.clone(),
        });
    }
    if hdr.ignore_case && (hdr.present || !hdr.regex.is_empty()) {
        return Err(PermissionInvalid::HeaderIgnoreCase {
            index,
            name: hdr.name.clone(),
        });
    }
    let fold = |s: &str| {
        if hdr.ignore_case {
            s.to_ascii_lowercase()
        } else {
            s.to_owned()
        }
    };
    let test = if hdr.present {
        HeaderTest::Present
    } else if !hdr.exact.is_empty() {
        HeaderTest::Exact(fold(&hdr.exact))
    } else if !hdr.prefix.is_empty() {
        HeaderTest::Prefix(fold(&hdr.prefix))
    } else if !hdr.suffix.is_empty() {
        HeaderTest::Suffix(fold(&hdr.suffix))
    } else if !hdr.contains.is_empty() {
        HeaderTest::Contains(fold(&hdr.contains))
    } else {
        HeaderTest::Regex(full_match_regex(
            &format!("Header[{index}].Regex"),
            &hdr.regex,
        )?)
    };
    Ok(HeaderMatch {
        name: hdr.name.to_ascii_lowercase(),
        test,
        invert: hdr.invert,
        ignore_case: hdr.ignore_case,
    })
}

/// Envoy matches these as RE2 full matches. The pattern is compiled on its own first:
/// wrapping an unbalanced pattern such as `x)|(.*` would otherwise yield a valid but far
/// wider regex.
fn full_match_regex(field: &str, pattern: &str) -> Result<Regex, PermissionInvalid> {
    let compile = |p: &str| {
        RegexBuilder::new(p)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| PermissionInvalid::Regex {
                field: field.to_owned(),
                error: e.to_string(),
            })
    };
    compile(pattern)?;
    compile(&format!(r"\A(?:{pattern})\z"))
}

/// Precedence descending, then Consul's lexicographic tie-break, then deny before allow:
/// a total order over valid (unique) intentions, so input order never shows through.
fn evaluation_order(a: &Intention, b: &Intention) -> Ordering {
    fn key(i: &Intention) -> [&str; 8] {
        [
            &i.source.sameness_group,
            &i.source.peer,
            &i.source.partition,
            i.source.namespace.as_str(),
            i.source.name.as_str(),
            &i.target.partition,
            i.target.namespace.as_str(),
            i.target.name.as_str(),
        ]
    }
    fn rank(i: &Intention) -> u8 {
        match i.rule {
            Rule::Action(Action::Deny) => 0,
            Rule::Permissions(_) => 1,
            Rule::Action(Action::Allow) => 2,
        }
    }
    b.precedence
        .cmp(&a.precedence)
        .then_with(|| key(a).cmp(&key(b)))
        .then_with(|| rank(a).cmp(&rank(b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn api() -> Destination {
        Destination::new("", "", "api")
    }

    fn entries(v: Value) -> Vec<wire::ServiceIntentionsEntry> {
        serde_json::from_value(v).unwrap()
    }

    fn build_entries(v: Value) -> Result<Intentions, IntentionsError> {
        Intentions::from_config_entries(&entries(v), api(), Action::Deny)
    }

    /// The problem reported for the first source of a one-entry document for `api`.
    fn source_problem(src: Value) -> Invalid {
        match build_entries(
            json!([{ "Kind": "service-intentions", "Name": "api", "Sources": [src] }]),
        ) {
            Err(IntentionsError::Source { problem, .. }) => problem,
            other => panic!("expected a source error, got {other:?}"),
        }
    }

    fn permission_problem(perm: Value) -> PermissionInvalid {
        match source_problem(json!({ "Name": "web", "Permissions": [perm] })) {
            Invalid::Permission { index: 0, problem } => problem,
            other => panic!("expected a permission error, got {other:?}"),
        }
    }

    fn displays(ixns: &Intentions) -> Vec<String> {
        ixns.rules().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn candidates_are_every_rule_that_can_name_the_caller_in_evaluation_order() {
        let ixns = build_entries(
            json!([{ "Kind": "service-intentions", "Name": "api", "Sources": [
                { "Name": "web", "Action": "allow" },
                { "Name": "*", "Namespace": "ops", "Action": "deny" },
                { "Name": "web", "Namespace": "ops", "Action": "deny" },
                { "Name": "db", "Action": "allow" },
                { "Name": "*", "Action": "deny" }
            ]}]),
        )
        .unwrap();
        for service in ["web", "db", "stranger"] {
            let scanned: Vec<usize> = ixns
                .rules()
                .iter()
                .enumerate()
                .filter(|(_, r)| r.source().name.matches(service))
                .map(|(i, _)| i)
                .collect();
            let indexed: Vec<usize> = ixns.candidates(service).collect();
            assert_eq!(indexed, scanned, "{service}");
        }
    }

    #[test]
    fn action_parses_case_insensitively_and_names_bad_values() {
        assert_eq!("allow".parse(), Ok(Action::Allow));
        assert_eq!("DENY".parse(), Ok(Action::Deny));
        assert_eq!("Allow".parse(), Ok(Action::Allow));
        let err = "permit".parse::<Action>().unwrap_err();
        assert_eq!(err, UnknownAction("permit".into()));
        assert!(err.to_string().contains("\"permit\""));
        assert_eq!(
            serde_json::from_value::<Action>(json!("ALLOW")).unwrap(),
            Action::Allow
        );
        assert!(serde_json::from_value::<Action>(json!("maybe")).is_err());
        assert_eq!(serde_json::to_value(Action::Deny).unwrap(), json!("deny"));
    }

    #[test]
    fn peer_and_destination_from_service_id() {
        let mut id = ServiceId::new("td.consul", "shop", "dc1", "web");
        id.partition = "retail".into();
        let peer = Peer::from(&id);
        assert_eq!(
            peer,
            Peer {
                peer: String::new(),
                partition: "retail".into(),
                namespace: "shop".into(),
                service: "web".into()
            }
        );
        assert_eq!(peer.to_string(), "retail/shop/web");

        // Local callers are local; a federated trust domain is a peer named after it.
        assert_eq!(Peer::of_caller(&id, &id.trust_domain), peer);
        let federated = Peer::of_caller(&id, "other.consul");
        assert_eq!(federated.peer, id.trust_domain);
        assert_eq!(
            federated.to_string(),
            format!("peer({})/shop/web", id.trust_domain)
        );
        assert_eq!(
            Destination::from(&id),
            Destination::new("retail", "shop", "web")
        );
    }

    fn shape(ns: &str, name: &str) -> (NamePattern, NamePattern) {
        ns_and_name(ns, name).unwrap()
    }

    #[test]
    fn precedence_of_every_wildcard_shape() {
        // (source ns, source name, destination ns, destination name, precedence): spec §5.1.
        let table = [
            ("default", "web", "default", "api", 9),
            ("default", "*", "default", "api", 8),
            ("*", "*", "default", "api", 7),
            ("default", "web", "default", "*", 6),
            ("default", "*", "default", "*", 5),
            ("*", "*", "default", "*", 4),
            ("default", "web", "*", "*", 3),
            ("default", "*", "*", "*", 2),
            ("*", "*", "*", "*", 1),
        ];
        for (src_ns, src_name, dst_ns, dst_name, want) in table {
            let (namespace, name) = shape(src_ns, src_name);
            let source = Source {
                peer: String::new(),
                sameness_group: String::new(),
                partition: DEFAULT.into(),
                namespace,
                name,
            };
            let (namespace, name) = shape(dst_ns, dst_name);
            let target = Target {
                partition: DEFAULT.into(),
                namespace,
                name,
            };
            assert_eq!(
                precedence(&source, &target),
                want,
                "{src_ns}/{src_name} => {dst_ns}/{dst_name}"
            );
        }
    }

    #[test]
    fn precedence_is_computed_not_trusted() {
        let ixns = Intentions::from_match(
            serde_json::from_value(json!([
                { "SourceNS": "default", "SourceName": "web", "DestinationNS": "default",
                  "DestinationName": "api", "SourceType": "consul", "Action": "allow", "Precedence": 1 },
                { "SourceNS": "default", "SourceName": "*", "DestinationNS": "default",
                  "DestinationName": "*", "SourceType": "consul", "Action": "deny", "Precedence": 99 }
            ]))
            .unwrap(),
            api(),
            Action::Deny,
        )
        .unwrap();
        let precedences: Vec<u32> = ixns.rules().iter().map(Intention::precedence).collect();
        assert_eq!(precedences, [9, 5]);
    }

    #[test]
    fn display_follows_consuls_intention_string() {
        let ixns = build_entries(json!([
            { "Kind": "service-intentions", "Name": "api", "Sources": [
                { "Name": "web", "Action": "allow" },
                { "Name": "batch", "Permissions": [
                    { "Action": "allow", "HTTP": { "PathPrefix": "/" } },
                    { "Action": "deny", "HTTP": { "Methods": ["DELETE"] } } ] },
                { "Name": "web", "Peer": "east", "Action": "deny" },
                { "Name": "web", "Partition": "retail", "Action": "deny" } ] },
            { "Kind": "service-intentions", "Name": "*", "JWT": { "Providers": [{ "Name": "okta" }] },
              "Sources": [ { "Name": "*", "Action": "allow" } ] }
        ]))
        .unwrap();
        assert_eq!(
            displays(&ixns),
            [
                "default/batch => default/api (Precedence: 9, Permissions: 2)",
                "default/web => default/api (Precedence: 9, Action: ALLOW)",
                "retail/default/web => default/api (Precedence: 9, Action: DENY)",
                "peer(east)/default/web => default/api (Precedence: 9, Action: DENY)",
                "default/* => default/* (Precedence: 5, Action: ALLOW, JWT not enforced: allow => deny)",
            ]
        );
        let legacy = Intentions::from_match(
            serde_json::from_value(
                json!([{ "ID": "abc", "SourceNS": "default", "SourceName": "web",
                "DestinationNS": "default", "DestinationName": "api", "SourceType": "consul",
                "Action": "allow" }]),
            )
            .unwrap(),
            api(),
            Action::Deny,
        )
        .unwrap();
        assert_eq!(
            displays(&legacy),
            ["default/web => default/api (ID: abc, Precedence: 9, Action: ALLOW)"]
        );
    }

    #[test]
    fn jwt_requirements_never_allow() {
        let ixns = build_entries(json!([{ "Kind": "service-intentions", "Name": "api", "Sources": [
            { "Name": "web", "Permissions": [
                { "Action": "allow", "HTTP": { "PathPrefix": "/a" }, "JWT": { "Providers": [{ "Name": "okta" }] } },
                { "Action": "allow", "HTTP": { "PathPrefix": "/b" } } ] },
            { "Name": "db", "Permissions": [
                { "Action": "allow", "HTTP": { "PathPrefix": "/" }, "JWT": { "Providers": [] } } ] } ] }]))
        .unwrap();
        let actions = |ixn: &Intention| match ixn.rule() {
            Rule::Permissions(perms) => perms.iter().map(|p| p.action).collect::<Vec<_>>(),
            Rule::Action(_) => panic!("expected L7"),
        };
        // An empty provider list requires nothing.
        assert_eq!(ixns.rules()[0].unenforced(), None);
        assert_eq!(actions(&ixns.rules()[0]), [Action::Allow]);
        assert_eq!(ixns.rules()[1].unenforced(), Some(Unenforced::Jwt));
        assert_eq!(actions(&ixns.rules()[1]), [Action::Deny, Action::Allow]);

        let entry_wide = build_entries(json!([{ "Kind": "service-intentions", "Name": "api",
            "JWT": { "Providers": [{ "Name": "okta" }] },
            "Sources": [ { "Name": "web", "Action": "allow" } ] }]))
        .unwrap();
        assert!(matches!(
            entry_wide.rules()[0].rule(),
            Rule::Action(Action::Deny)
        ));
    }

    #[test]
    fn sameness_group_sources_never_allow() {
        let ixns = build_entries(
            json!([{ "Kind": "service-intentions", "Name": "api", "Sources": [
            { "Name": "web", "SamenessGroup": "mirror", "Action": "allow" } ] }]),
        )
        .unwrap();
        let rule = &ixns.rules()[0];
        assert_eq!(rule.unenforced(), Some(Unenforced::SamenessGroup));
        assert!(matches!(rule.rule(), Rule::Action(Action::Deny)));
        assert_eq!(rule.source().partition, "");
        assert_eq!(
            rule.to_string(),
            "sameness-group(mirror)/default/web => default/api (Precedence: 9, Action: ALLOW, sameness group not enforced: allow => deny)"
        );
    }

    #[test]
    fn sources_inherit_the_destination_namespace_and_partition() {
        let dest = Destination::new("retail", "shop", "api");
        let ixns = Intentions::from_config_entries(
            &entries(json!([
                { "Kind": "service-intentions", "Name": "api", "Namespace": "shop", "Partition": "retail",
                  "Sources": [ { "Name": "web", "Action": "allow" },
                               { "Name": "web", "Peer": "east", "Action": "allow" } ] },
                { "Kind": "service-intentions", "Name": "*", "Namespace": "*", "Partition": "retail",
                  "Sources": [ { "Name": "ops", "Action": "allow" } ] },
                // Other destinations: validated, then ignored.
                { "Kind": "service-intentions", "Name": "api", "Namespace": "other",
                  "Sources": [ { "Name": "x", "Action": "allow" } ] },
                { "Kind": "service-intentions", "Name": "api", "Sources": [ { "Name": "x", "Action": "deny" } ] },
                { "Kind": "service-intentions", "Name": "db", "Namespace": "shop", "Partition": "retail",
                  "Sources": [ { "Name": "x", "Action": "allow" } ] }
            ])),
            dest,
            Action::Deny,
        )
        .unwrap();
        let sources: Vec<(String, String, String)> = ixns
            .rules()
            .iter()
            .map(|r| {
                let s = r.source();
                (
                    s.partition.clone(),
                    s.namespace.to_string(),
                    r.target().to_string(),
                )
            })
            .collect();
        assert_eq!(
            sources,
            [
                ("retail".into(), "shop".into(), "retail/shop/api".into()),
                (String::new(), "default".into(), "retail/shop/api".into()),
                ("retail".into(), "default".into(), "retail/*/*".into()),
            ]
        );
    }

    #[test]
    fn rules_sorted_in_a_total_order_whatever_the_input_order() {
        let sources = [
            json!({ "Name": "web", "Action": "allow" }),
            json!({ "Name": "web", "Peer": "east", "Action": "deny" }),
            json!({ "Name": "*", "Action": "deny" }),
            json!({ "Name": "admin", "Permissions": [{ "Action": "allow", "HTTP": { "PathPrefix": "/" } }] }),
            json!({ "Name": "web", "Partition": "aaa", "Action": "deny" }),
        ];
        let want = [
            "aaa/default/web => default/api (Precedence: 9, Action: DENY)",
            "default/admin => default/api (Precedence: 9, Permissions: 1)",
            "default/web => default/api (Precedence: 9, Action: ALLOW)",
            "peer(east)/default/web => default/api (Precedence: 9, Action: DENY)",
            "default/* => default/api (Precedence: 8, Action: DENY)",
        ];
        // Every permutation, by Heap's algorithm.
        let mut order: Vec<usize> = (0..sources.len()).collect();
        let mut c = vec![0; order.len()];
        let check = |order: &[usize]| {
            let srcs: Vec<&Value> = order.iter().map(|&i| &sources[i]).collect();
            let ixns = build_entries(
                json!([{ "Kind": "service-intentions", "Name": "api", "Sources": srcs }]),
            )
            .unwrap();
            assert_eq!(displays(&ixns), want, "input order {order:?}");
        };
        check(&order);
        let mut i = 0;
        while i < order.len() {
            if c[i] < i {
                order.swap(if i % 2 == 0 { 0 } else { c[i] }, i);
                check(&order);
                c[i] += 1;
                i = 0;
            } else {
                c[i] = 0;
                i += 1;
            }
        }
    }

    #[test]
    fn converts_l7_permissions() {
        let ixns = build_entries(
            json!([{ "Kind": "service-intentions", "Name": "api", "Sources": [
            { "Name": "web", "Permissions": [ { "Action": "deny", "HTTP": {
                "PathRegex": "/v[0-9]+/.*",
                "Methods": ["get", "Post"],
                "Header": [
                    { "Name": "X-Tenant", "Exact": "ACME", "IgnoreCase": true },
                    { "Name": "X-Trace", "Regex": "[a-f0-9]{8}", "Invert": true } ] } } ] } ] }]),
        )
        .unwrap();
        let Rule::Permissions(perms) = ixns.rules()[0].rule() else {
            panic!("expected L7");
        };
        let http = &perms[0].http;
        assert_eq!(perms[0].action, Action::Deny);
        assert_eq!(http.methods, ["GET", "POST"]);
        let Some(PathMatch::Regex(re)) = &http.path else {
            panic!("expected a regex");
        };
        assert!(re.is_match("/v1/x") && !re.is_match("/x/v1/x"));
        assert_eq!(http.headers[0].name, "x-tenant");
        assert!(matches!(&http.headers[0].test, HeaderTest::Exact(s) if s == "acme"));
        assert!(http.headers[0].ignore_case);
        assert!(
            matches!(&http.headers[1].test, HeaderTest::Regex(re) if !re.is_match("abcdef012"))
        );
        assert!(http.headers[1].invert);
    }

    #[test]
    fn converts_the_match_api_answer() {
        let resp: wire::IntentionMatchResponse = serde_json::from_value(json!({
            "api": [
                { "SourceNS": "default", "SourceName": "web", "DestinationNS": "default",
                  "DestinationName": "api", "SourceType": "consul", "Action": "allow",
                  "Precedence": 9, "CreateIndex": 5, "ModifyIndex": 5 },
                { "SourceNS": "default", "SourceName": "reports", "DestinationNS": "default",
                  "DestinationName": "api", "SourceType": "consul", "Precedence": 9,
                  "Permissions": [ { "Action": "allow", "HTTP": { "PathExact": "/summary" } } ],
                  "CreateIndex": 5, "ModifyIndex": 6 },
                { "SourceNS": "default", "SourceName": "web", "SourcePeer": "east", "DestinationNS": "default",
                  "DestinationName": "*", "SourceType": "consul", "Action": "deny", "Precedence": 6 }
            ],
            "empty": [],
            "null": null
        }))
        .unwrap();
        let list = |name: &str| resp.get(name).cloned().flatten().unwrap_or_default();
        let ixns = Intentions::from_match(list("api"), api(), Action::Deny).unwrap();
        assert_eq!(
            displays(&ixns),
            [
                "default/reports => default/api (Precedence: 9, Permissions: 1)",
                "default/web => default/api (Precedence: 9, Action: ALLOW)",
                "peer(east)/default/web => default/* (Precedence: 6, Action: DENY)",
            ]
        );
        assert!(ixns.rules()[0].is_l7());
        for name in ["empty", "null", "absent"] {
            let ixns = Intentions::from_match(list(name), api(), Action::Allow).unwrap();
            assert!(ixns.rules().is_empty());
            assert_eq!(ixns.default_action(), Action::Allow);
        }
    }

    // One test per validation rule.

    #[test]
    fn an_invalid_entry_for_another_service_refuses_the_document() {
        let doc = entries(json!([
            { "Kind": "service-intentions", "Name": "api", "Sources": [{ "Name": "web", "Action": "allow" }] },
            { "Kind": "service-intentions", "Name": "db", "Sources": [{ "Name": "web" }] }
        ]));
        let err = Intentions::from_config_entries(&doc, api(), Action::Deny).unwrap_err();
        assert_eq!(
            err.to_string(),
            "service-intentions default/db: Sources[0] (web): Action must be set to 'allow' or 'deny'"
        );
        assert_eq!(validate_config_entries(&doc), Err(err));
        assert_eq!(validate_config_entries(&doc[..1]), Ok(()));
    }

    #[test]
    fn rejects_a_bad_destination() {
        for dest in [
            Destination::new("", "", ""),
            Destination::new("", "", "*"),
            Destination::new("", "*", "api"),
        ] {
            assert!(matches!(
                Intentions::from_config_entries(&[], dest, Action::Deny),
                Err(IntentionsError::Destination(_))
            ));
        }
    }

    #[test]
    fn rejects_an_entry_without_name() {
        let err =
            build_entries(json!([{ "Kind": "service-intentions", "Sources": [] }])).unwrap_err();
        assert!(matches!(
            err,
            IntentionsError::Entry {
                problem: Invalid::Missing("Name"),
                ..
            }
        ));
    }

    #[test]
    fn rejects_another_kind() {
        let err =
            build_entries(json!([{ "Kind": "service-defaults", "Name": "api", "Sources": [] }]))
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "service-intentions default/api: Kind is \"service-defaults\", want \"service-intentions\""
        );
    }

    #[test]
    fn rejects_an_entry_without_sources() {
        let err = build_entries(
            json!([{ "Kind": "service-intentions", "Name": "api", "Sources": null }]),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            IntentionsError::Entry {
                problem: Invalid::NoSources,
                ..
            }
        ));
    }

    #[test]
    fn rejects_two_entries_for_one_destination() {
        let entry = json!({ "Kind": "service-intentions", "Name": "api", "Sources": [{ "Name": "a", "Action": "allow" }] });
        let mut explicit = entry.clone();
        explicit["Namespace"] = json!("default");
        let err = build_entries(json!([entry, explicit])).unwrap_err();
        assert!(matches!(
            err,
            IntentionsError::Entry {
                problem: Invalid::DuplicateEntry,
                ..
            }
        ));
    }

    #[test]
    fn rejects_a_source_without_name() {
        assert_eq!(
            source_problem(json!({ "Action": "allow" })),
            Invalid::Missing("Name")
        );
    }

    #[test]
    fn errors_name_the_source() {
        let err = build_entries(json!([{ "Kind": "service-intentions", "Name": "api", "Sources": [
            { "Name": "a", "Action": "allow" }, { "Name": "b", "Action": "deny" }, { "Name": "web", "Action": "permit" } ] }]))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "service-intentions default/api: Sources[2] (web): Action: invalid action \"permit\" (want \"allow\" or \"deny\")"
        );
    }

    #[test]
    fn requires_action_without_permissions() {
        assert_eq!(
            source_problem(json!({ "Name": "web" })),
            Invalid::MissingAction
        );
        assert_eq!(
            source_problem(json!({ "Name": "web", "Action": "maybe" })),
            Invalid::Action(UnknownAction("maybe".into()))
        );
    }

    #[test]
    fn rejects_action_with_permissions() {
        let src = json!({ "Name": "web", "Action": "allow",
            "Permissions": [{ "Action": "allow", "HTTP": { "PathPrefix": "/" } }] });
        assert_eq!(source_problem(src), Invalid::ActionWithPermissions);
    }

    #[test]
    fn rejects_permissions_on_a_wildcard_destination() {
        for (ns, name) in [("default", "*"), ("*", "*")] {
            let err = build_entries(json!([{ "Kind": "service-intentions", "Name": name, "Namespace": ns,
                "Sources": [{ "Name": "web", "Permissions": [{ "Action": "allow", "HTTP": { "PathPrefix": "/" } }] }] }]))
            .unwrap_err();
            assert!(
                matches!(
                    err,
                    IntentionsError::Source {
                        problem: Invalid::PermissionsOnWildcardDestination,
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn rejects_a_permission_without_action() {
        assert_eq!(
            permission_problem(json!({ "HTTP": { "PathPrefix": "/" } })),
            PermissionInvalid::MissingAction
        );
        assert_eq!(
            permission_problem(json!({ "Action": "nope", "HTTP": { "PathPrefix": "/" } })),
            PermissionInvalid::Action(UnknownAction("nope".into()))
        );
    }

    #[test]
    fn rejects_a_permission_without_http() {
        assert_eq!(
            permission_problem(json!({ "Action": "allow" })),
            PermissionInvalid::MissingHttp
        );
    }

    #[test]
    fn rejects_an_empty_http_block() {
        assert_eq!(
            permission_problem(json!({ "Action": "allow", "HTTP": {} })),
            PermissionInvalid::EmptyHttp
        );
        assert_eq!(
            permission_problem(
                json!({ "Action": "allow", "HTTP": { "PathExact": "", "Methods": [], "Header": null } })
            ),
            PermissionInvalid::EmptyHttp
        );
    }

    #[test]
    fn rejects_more_than_one_path_matcher() {
        let perm = json!({ "Action": "allow", "HTTP": { "PathExact": "/a", "PathRegex": "/b" } });
        assert_eq!(permission_problem(perm), PermissionInvalid::MultiplePaths);
    }

    #[test]
    fn rejects_paths_not_starting_with_a_slash() {
        assert_eq!(
            permission_problem(json!({ "Action": "allow", "HTTP": { "PathExact": "a" } })),
            PermissionInvalid::RelativePath {
                field: "PathExact",
                value: "a".into()
            }
        );
        assert_eq!(
            permission_problem(json!({ "Action": "allow", "HTTP": { "PathPrefix": "api/" } })),
            PermissionInvalid::RelativePath {
                field: "PathPrefix",
                value: "api/".into()
            }
        );
    }

    #[test]
    fn rejects_bad_and_oversized_regexes() {
        for pattern in ["(", "/a)|(.*", "x{100000}"] {
            let problem =
                permission_problem(json!({ "Action": "allow", "HTTP": { "PathRegex": pattern } }));
            assert!(
                matches!(&problem, PermissionInvalid::Regex { field, .. } if field == "PathRegex"),
                "{pattern}: {problem}"
            );
        }
        let problem = permission_problem(json!({ "Action": "allow",
            "HTTP": { "Header": [{ "Name": "x", "Regex": "[" }] } }));
        assert!(
            matches!(&problem, PermissionInvalid::Regex { field, .. } if field == "Header[0].Regex")
        );
    }

    #[test]
    fn rejects_a_header_without_name() {
        let perm = json!({ "Action": "allow", "HTTP": { "Header": [{ "Exact": "v" }] } });
        assert_eq!(permission_problem(perm), PermissionInvalid::HeaderName(0));
    }

    #[test]
    fn requires_exactly_one_header_test() {
        for hdr in [
            json!({ "Name": "x" }),
            json!({ "Name": "x", "Present": true, "Exact": "v" }),
            json!({ "Name": "x", "Prefix": "a", "Suffix": "b" }),
            json!({ "Name": "x", "Invert": true }),
        ] {
            let perm = json!({ "Action": "allow", "HTTP": { "Header": [hdr] } });
            assert_eq!(
                permission_problem(perm),
                PermissionInvalid::HeaderTests {
                    index: 0,
                    name: "x".into()
                }
            );
        }
    }

    #[test]
    fn rejects_ignore_case_with_present_or_regex() {
        for hdr in [
            json!({ "Name": "x", "Present": true, "IgnoreCase": true }),
            json!({ "Name": "x", "Regex": "a", "IgnoreCase": true }),
        ] {
            let perm = json!({ "Action": "allow", "HTTP": { "Header": [hdr] } });
            assert_eq!(
                permission_problem(perm),
                PermissionInvalid::HeaderIgnoreCase {
                    index: 0,
                    name: "x".into()
                }
            );
        }
    }

    #[test]
    fn rejects_bad_and_repeated_methods() {
        assert_eq!(
            permission_problem(json!({ "Action": "allow", "HTTP": { "Methods": ["FETCH"] } })),
            PermissionInvalid::Method("FETCH".into())
        );
        assert_eq!(
            permission_problem(json!({ "Action": "allow", "HTTP": { "Methods": ["get", "GET"] } })),
            PermissionInvalid::DuplicateMethod("GET".into())
        );
    }

    #[test]
    fn rejects_partial_wildcards() {
        assert_eq!(
            source_problem(json!({ "Name": "web*", "Action": "allow" })),
            Invalid::PartialWildcard {
                field: "Name",
                value: "web*".into()
            }
        );
        assert_eq!(
            source_problem(json!({ "Name": "*", "Namespace": "team-*", "Action": "allow" })),
            Invalid::PartialWildcard {
                field: "Namespace",
                value: "team-*".into()
            }
        );
        let err = build_entries(
            json!([{ "Kind": "service-intentions", "Name": "*", "Namespace": "*",
            "Sources": [{ "Name": "*", "Partition": "p*", "Action": "allow" }] }]),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            IntentionsError::Source {
                problem: Invalid::WildcardNotAllowed("Partition"),
                ..
            }
        ));
    }

    #[test]
    fn rejects_an_exact_name_after_a_wildcard_namespace() {
        assert_eq!(
            source_problem(json!({ "Name": "web", "Namespace": "*", "Action": "allow" })),
            Invalid::ExactAfterWildcardNamespace("web".into())
        );
        let err = build_entries(
            json!([{ "Kind": "service-intentions", "Name": "api", "Namespace": "*",
            "Sources": [{ "Name": "web", "Action": "allow" }] }]),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            IntentionsError::Entry {
                problem: Invalid::ExactAfterWildcardNamespace(_),
                ..
            }
        ));
    }

    #[test]
    fn rejects_wildcard_partitions_peers_and_sameness_groups() {
        assert_eq!(
            source_problem(json!({ "Name": "web", "Partition": "*", "Action": "allow" })),
            Invalid::WildcardNotAllowed("Partition")
        );
        assert_eq!(
            source_problem(json!({ "Name": "web", "Peer": "*", "Action": "allow" })),
            Invalid::WildcardNotAllowed("Peer")
        );
        assert_eq!(
            source_problem(json!({ "Name": "web", "SamenessGroup": "g*", "Action": "allow" })),
            Invalid::WildcardNotAllowed("SamenessGroup")
        );
    }

    #[test]
    fn rejects_peer_partition_and_sameness_group_together() {
        assert_eq!(
            source_problem(
                json!({ "Name": "web", "Peer": "east", "Partition": "p", "Action": "allow" })
            ),
            Invalid::Exclusive("Peer", "Partition")
        );
        assert_eq!(
            source_problem(
                json!({ "Name": "web", "SamenessGroup": "g", "Partition": "p", "Action": "allow" })
            ),
            Invalid::Exclusive("SamenessGroup", "Partition")
        );
        assert_eq!(
            source_problem(
                json!({ "Name": "web", "SamenessGroup": "g", "Peer": "east", "Action": "allow" })
            ),
            Invalid::Exclusive("SamenessGroup", "Peer")
        );
    }

    #[test]
    fn rejects_another_source_type() {
        assert_eq!(
            source_problem(json!({ "Name": "web", "Type": "external", "Action": "allow" })),
            Invalid::Type("external".into())
        );
    }

    #[test]
    fn rejects_duplicate_sources() {
        // Duplicates after normalization: "" and "default" are the same namespace.
        let err = build_entries(
            json!([{ "Kind": "service-intentions", "Name": "api", "Sources": [
            { "Name": "web", "Action": "allow" },
            { "Name": "web", "Peer": "east", "Action": "allow" },
            { "Name": "web", "Namespace": "default", "Action": "deny" } ] }]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "service-intentions default/api: Sources[2] (web): defined more than once"
        );

        let dup = json!({ "SourceNS": "default", "SourceName": "web", "DestinationNS": "default",
            "DestinationName": "api", "SourceType": "consul", "Action": "allow" });
        let err = Intentions::from_match(
            serde_json::from_value(json!([dup, dup])).unwrap(),
            api(),
            Action::Deny,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            IntentionsError::Match {
                index: 1,
                problem: Invalid::DuplicateSource,
                ..
            }
        ));
    }

    #[test]
    fn validates_match_intentions_too() {
        let err = Intentions::from_match(
            serde_json::from_value(json!([{ "SourceNS": "default", "SourceName": "web",
                "DestinationNS": "default", "DestinationName": "api", "SourceType": "consul" }]))
            .unwrap(),
            api(),
            Action::Deny,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "intentions match[0] (default/web => default/api): Action must be set to 'allow' or 'deny'"
        );
    }
}
