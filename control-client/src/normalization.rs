//! How the inbound L7 side puts a request into the form intentions are matched on:
//! Consul's `mesh` config entry's `HTTP.Incoming.RequestNormalization`, or the static
//! config's `[request_normalization]` table. Consul hands these four settings to Envoy's
//! HTTP connection manager (`normalize_path` as the opposite of
//! `InsecureDisablePathNormalization`, `merge_slashes`, `path_with_escaped_slashes_action`,
//! `headers_with_underscores_action`); the proxy's `http::normalize` applies them the
//! same way (`docs/consul-semantics.md#request-normalization`). This module is the one
//! home of the settings' names: the dev agent validates a written entry with
//! [`RequestNormalization::from_config`], the sources build the model with it.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::api::defaults::RequestNormalizationConfig;

/// What happens to a path that holds an escaped slash (`%2F`, `%5C`, any case).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EscapedSlashesAction {
    /// Envoy's default, which is keeping the path unchanged.
    #[default]
    ImplementationSpecificDefault,
    KeepUnchanged,
    /// 400.
    RejectRequest,
    /// Unescape, then answer 307 with the normalized path in `Location` (gRPC: refused).
    UnescapeAndRedirect,
    /// Unescape, normalize again, forward.
    UnescapeAndForward,
}

/// What happens to a request with a header whose name holds `_`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnderscoresAction {
    #[default]
    Allow,
    /// 400, and an HTTP/1.1 connection is closed after it.
    RejectRequest,
    /// The header is removed before intentions and the app see the request.
    DropHeader,
}

/// The four settings. The default is Consul's (and ferrule's before they existed):
/// RFC 3986 normalization on, slashes not merged, escaped slashes kept, underscores
/// allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RequestNormalization {
    pub insecure_disable_path_normalization: bool,
    pub merge_slashes: bool,
    pub path_with_escaped_slashes_action: EscapedSlashesAction,
    pub headers_with_underscores_action: UnderscoresAction,
}

/// A setting's value that is none of Consul's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no matching {setting} value found for {value}, please specify one of [{}]", .allowed.join(", "))]
pub struct UnknownAction {
    pub setting: &'static str,
    pub value: String,
    pub allowed: Vec<&'static str>,
}

/// The action named `s` in `table` (Consul's names); empty is the default, as Consul
/// reads it.
fn action_named<T: Copy + Default>(
    s: &str,
    table: &[(&'static str, T)],
    setting: &'static str,
) -> Result<T, UnknownAction> {
    if s.is_empty() {
        return Ok(T::default());
    }
    table
        .iter()
        .find(|(name, _)| *name == s)
        .map(|(_, action)| *action)
        .ok_or_else(|| UnknownAction {
            setting,
            value: s.to_owned(),
            allowed: table.iter().map(|(name, _)| *name).collect(),
        })
}

const ESCAPED_SLASHES: [(&str, EscapedSlashesAction); 5] = [
    (
        "IMPLEMENTATION_SPECIFIC_DEFAULT",
        EscapedSlashesAction::ImplementationSpecificDefault,
    ),
    ("KEEP_UNCHANGED", EscapedSlashesAction::KeepUnchanged),
    ("REJECT_REQUEST", EscapedSlashesAction::RejectRequest),
    (
        "UNESCAPE_AND_REDIRECT",
        EscapedSlashesAction::UnescapeAndRedirect,
    ),
    (
        "UNESCAPE_AND_FORWARD",
        EscapedSlashesAction::UnescapeAndForward,
    ),
];

const UNDERSCORES: [(&str, UnderscoresAction); 3] = [
    ("ALLOW", UnderscoresAction::Allow),
    ("REJECT_REQUEST", UnderscoresAction::RejectRequest),
    ("DROP_HEADER", UnderscoresAction::DropHeader),
];

impl EscapedSlashesAction {
    pub const SETTING: &'static str = "PathWithEscapedSlashesAction";

    /// What the path really gets: Envoy's implementation-specific default keeps it.
    pub fn effective(self) -> EscapedSlashesAction {
        match self {
            EscapedSlashesAction::ImplementationSpecificDefault => {
                EscapedSlashesAction::KeepUnchanged
            }
            other => other,
        }
    }
}

impl UnderscoresAction {
    pub const SETTING: &'static str = "HeadersWithUnderscoresAction";
}

impl FromStr for EscapedSlashesAction {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        action_named(s, &ESCAPED_SLASHES, Self::SETTING)
    }
}

impl FromStr for UnderscoresAction {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        action_named(s, &UNDERSCORES, Self::SETTING)
    }
}

impl fmt::Display for EscapedSlashesAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = ESCAPED_SLASHES
            .iter()
            .find(|(_, a)| a == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

impl fmt::Display for UnderscoresAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = UNDERSCORES
            .iter()
            .find(|(_, a)| a == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

impl RequestNormalization {
    /// The settings of a `mesh` entry's `RequestNormalization`, checked as Consul's
    /// server checks them when the entry is written.
    pub fn from_config(config: &RequestNormalizationConfig) -> Result<Self, UnknownAction> {
        Ok(RequestNormalization {
            insecure_disable_path_normalization: config.insecure_disable_path_normalization,
            merge_slashes: config.merge_slashes,
            path_with_escaped_slashes_action: config.path_with_escaped_slashes_action.parse()?,
            headers_with_underscores_action: config.headers_with_underscores_action.parse()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consuls_names_and_empty_as_the_default() {
        assert_eq!(
            "".parse::<EscapedSlashesAction>(),
            Ok(EscapedSlashesAction::ImplementationSpecificDefault)
        );
        assert_eq!(
            "UNESCAPE_AND_REDIRECT".parse::<EscapedSlashesAction>(),
            Ok(EscapedSlashesAction::UnescapeAndRedirect)
        );
        assert_eq!(
            "DROP_HEADER".parse::<UnderscoresAction>(),
            Ok(UnderscoresAction::DropHeader)
        );
        for (name, action) in ESCAPED_SLASHES {
            assert_eq!(action.to_string(), name);
        }
        for (name, action) in UNDERSCORES {
            assert_eq!(action.to_string(), name);
        }
        let e = "unescape_and_forward"
            .parse::<EscapedSlashesAction>()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "no matching PathWithEscapedSlashesAction value found for unescape_and_forward, please specify one of [IMPLEMENTATION_SPECIFIC_DEFAULT, KEEP_UNCHANGED, REJECT_REQUEST, UNESCAPE_AND_REDIRECT, UNESCAPE_AND_FORWARD]"
        );
        assert!("DROP".parse::<UnderscoresAction>().is_err());
        assert_eq!(
            EscapedSlashesAction::ImplementationSpecificDefault.effective(),
            EscapedSlashesAction::KeepUnchanged
        );
    }
}
