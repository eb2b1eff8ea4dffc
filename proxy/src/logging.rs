//! The application log: which filter applies and how it is written.
//!
//! The filter comes from `--log-level` (or `FERRULE_LOG`), else from `RUST_LOG`, else
//! `info`. It is `tracing`'s filter syntax (`info`, `warn,ferrule=debug`), with two
//! differences that keep a typo from silencing the process: `warning` is read as `warn`
//! (as in `ferrule=warning`), and a bare word that is not a level (`verbose`) is refused
//! with the list of levels, where `tracing` would read it as the name of a target and
//! turn every other log line off. A target alone is still written `target=level`.
//!
//! The filter can be changed while the process runs (the admin listener's
//! `POST /logging?level=...`, Envoy's verb): it sits behind `tracing_subscriber`'s
//! reload layer, and a filter that is refused leaves the one in force as it was.
//! Envoy's level names are read too: `warning` and `critical` (as `error`).
//!
//! At the default `info` a sidecar in a steady state is quiet: what it logs is what an
//! operator acts on (listeners bound, configuration and certificates changing,
//! connections closed because intentions now deny them, misconfiguration); each
//! connection's record is at `debug` under the `ferrule::access` target.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The levels a bare word may name.
pub const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// The filter used when neither the flag nor an environment variable says.
pub const DEFAULT_FILTER: &str = "info";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Why a filter was refused; the text names the directive and the levels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("{0:?} is not a log level; one of: {levels}", levels = LEVELS.join(", "))]
    UnknownLevel(String),
    #[error("{0}")]
    Syntax(String),
}

/// The filter text that applies: the flag's (or `FERRULE_LOG`'s), else `RUST_LOG`'s,
/// else `default`.
pub fn choose<'a>(flag: Option<&'a str>, rust_log: Option<&'a str>, default: &'a str) -> &'a str {
    flag.or(rust_log.filter(|s| !s.trim().is_empty()))
        .unwrap_or(default)
}

/// Reads `text` as a filter: `warning` as `warn`, a bare word only as a level.
pub fn filter(text: &str) -> Result<EnvFilter, FilterError> {
    let directives = normalize(text)?;
    EnvFilter::builder()
        .parse(&directives)
        .map_err(|e| FilterError::Syntax(format!("{text:?}: {e}")))
}

/// The directives of `text`, with each level spelled as `tracing` spells it.
fn normalize(text: &str) -> Result<String, FilterError> {
    let mut out = Vec::new();
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let normalized = match directive.rsplit_once('=') {
            Some((target, level)) => format!("{target}={}", level_word(level)),
            None if is_bare_word(directive) => {
                let level = level_word(directive);
                if !LEVELS.contains(&level.as_str()) {
                    return Err(FilterError::UnknownLevel(directive.to_owned()));
                }
                level
            }
            None => directive.to_owned(),
        };
        out.push(normalized);
    }
    Ok(out.join(","))
}

/// A level word in lower case, Envoy's `warning` read as `warn` and `critical` as
/// `error` (`tracing` has nothing above error).
fn level_word(word: &str) -> String {
    let word = word.trim().to_ascii_lowercase();
    match word.as_str() {
        "warning" => "warn".to_owned(),
        "critical" => "error".to_owned(),
        _ => word,
    }
}

/// A directive with no target path, span or field: `info`, `verbose`; not
/// `ferrule::access` or `[span]`.
fn is_bare_word(directive: &str) -> bool {
    directive
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Changes the filter of the installed subscriber at run time.
type Reload = reload::Handle<EnvFilter, Registry>;

/// The installed subscriber's filter handle; unset until `init` (and in unit tests).
static RELOAD: OnceLock<Reload> = OnceLock::new();

/// Why the filter could not be changed at run time.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("the log filter cannot be changed: {0}")]
    Reload(String),
}

/// Installs the global subscriber, writing to stderr, with its filter reloadable.
pub fn init(filter: EnvFilter, format: Format) {
    let (filter, handle) = reload::Layer::new(filter);
    let _ = RELOAD.set(handle);
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        Format::Text => registry.with(layer).init(),
        Format::Json => registry.with(layer.json()).init(),
    }
}

/// The filter in force, as `tracing` writes it (`debug`, `info,ferrule=debug`).
pub fn current() -> Option<String> {
    RELOAD.get()?.with_current(ToString::to_string).ok()
}

/// Puts `text` (a level, or a whole filter) in force from now on and returns it as
/// `tracing` writes it; a filter that is refused leaves the one in force unchanged.
pub fn set(text: &str) -> Result<String, SetError> {
    let filter = filter(text)?;
    let now = filter.to_string();
    let handle = RELOAD
        .get()
        .ok_or_else(|| SetError::Reload("no log installed".into()))?;
    handle
        .reload(filter)
        .map_err(|e| SetError::Reload(e.to_string()))?;
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_their_other_spellings() {
        let cases = [
            ("info", "info"),
            ("WARNING", "warn"),
            ("warning", "warn"),
            ("ferrule=warning", "ferrule=warn"),
            ("info,ferrule=debug", "info,ferrule=debug"),
            ("warn, ferrule::access=DEBUG", "warn,ferrule::access=debug"),
            ("ferrule::access", "ferrule::access"),
            ("critical", "error"),
            ("ferrule=CRITICAL", "ferrule=error"),
        ];
        for (text, want) in cases {
            assert_eq!(normalize(text).as_deref(), Ok(want), "{text}");
        }
    }

    #[test]
    fn a_bare_word_that_is_not_a_level_is_refused() {
        for text in ["verbose", "info,verbose", "warnings", "inf"] {
            let e = filter(text).unwrap_err();
            assert!(
                e.to_string()
                    .contains("one of: trace, debug, info, warn, error, off"),
                "{e}"
            );
        }
    }

    #[test]
    fn every_level_is_a_filter() {
        for level in LEVELS {
            assert!(filter(level).is_ok(), "{level}");
        }
        assert!(filter("ferrule=nonsense").is_err());
    }

    #[test]
    fn the_flag_wins_then_rust_log_then_info() {
        assert_eq!(choose(Some("debug"), Some("trace"), "info"), "debug");
        assert_eq!(choose(None, Some("trace"), "info"), "trace");
        assert_eq!(choose(None, Some(" "), "info"), "info");
        assert_eq!(choose(None, None, "warn"), "warn");
    }
}
