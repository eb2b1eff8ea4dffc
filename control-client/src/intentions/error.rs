//! Why intentions could not be built: each error names the entry and source (or the
//! match-list position) it is about, with the problem in Consul's own words.

/// An action string that is neither `allow` nor `deny`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid action {0:?} (want \"allow\" or \"deny\")")]
pub struct UnknownAction(pub String);

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
