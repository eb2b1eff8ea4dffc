//! Access logs as configured: Consul's `AccessLogs` (from the `proxy-defaults` config
//! entry) or the static config's `[access_logs]` table, checked and compiled into
//! [`AccessLogs`], which the snapshot carries while logging is enabled. The proxy
//! renders and writes the records; this module decides only what they look like and
//! where they go. See `docs/consul-semantics.md#access-logs`.

pub mod format;

use std::path::PathBuf;

use serde::Serialize;

use self::format::{Format, FormatError};
use crate::api::defaults::AccessLogsConfig;

/// Where records are written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sink {
    Stdout,
    Stderr,
    /// Appended to; reopened on SIGUSR1 (after logrotate moved it).
    File(PathBuf),
}

/// Enabled access logging, compiled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessLogs {
    /// No records for connections refused before any request (TLS failures, L4
    /// denials).
    pub disable_listener_logs: bool,
    pub sink: Sink,
    #[serde(skip)]
    pub format: Format,
    /// `default`, `text` or `json`, for `/config`.
    pub format_kind: &'static str,
}

/// Why an `AccessLogs` configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessLogError {
    #[error("JSONFormat and TextFormat are both set; set one")]
    BothFormats,
    #[error("Type {0:?} is not one of stdout, stderr, file")]
    UnknownType(String),
    #[error("Type file needs a Path")]
    NoPath,
    #[error("JSONFormat: {0}")]
    Json(FormatError),
    #[error("TextFormat: {0}")]
    Text(FormatError),
}

impl AccessLogs {
    /// Compiles Consul's `AccessLogs`; `None` when logging is not enabled.
    pub fn from_config(config: &AccessLogsConfig) -> Result<Option<AccessLogs>, AccessLogError> {
        if !config.enabled {
            return Ok(None);
        }
        let sink = match config.kind.to_ascii_lowercase().as_str() {
            "" | "stdout" => Sink::Stdout,
            "stderr" => Sink::Stderr,
            "file" if config.path.is_empty() => return Err(AccessLogError::NoPath),
            "file" => Sink::File(PathBuf::from(&config.path)),
            _ => return Err(AccessLogError::UnknownType(config.kind.clone())),
        };
        let (format, format_kind) = match (config.json_format.as_str(), config.text_format.as_str())
        {
            ("", "") => (Format::default_json(), "default"),
            (json, "") => (Format::json(json).map_err(AccessLogError::Json)?, "json"),
            ("", text) => (Format::text(text).map_err(AccessLogError::Text)?, "text"),
            _ => return Err(AccessLogError::BothFormats),
        };
        Ok(Some(AccessLogs {
            disable_listener_logs: config.disable_listener_logs,
            sink,
            format,
            format_kind,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: serde_json::Value) -> AccessLogsConfig {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn consuls_fields_compile() {
        let off = config(serde_json::json!({"Enabled": false, "TextFormat": "%NOPE%"}));
        assert_eq!(AccessLogs::from_config(&off), Ok(None));
        let on = config(serde_json::json!({"Enabled": true}));
        let logs = AccessLogs::from_config(&on).unwrap().unwrap();
        assert_eq!(logs.sink, Sink::Stdout);
        assert_eq!(logs.format, Format::default_json());
        let file = config(serde_json::json!({
            "Enabled": true, "Type": "file", "Path": "/var/log/x.log",
            "DisableListenerLogs": true, "TextFormat": "%DURATION%"
        }));
        let logs = AccessLogs::from_config(&file).unwrap().unwrap();
        assert_eq!(logs.sink, Sink::File("/var/log/x.log".into()));
        assert!(logs.disable_listener_logs);
        assert_eq!(logs.format_kind, "text");
    }

    #[test]
    fn mistakes_are_refused_with_a_reason() {
        let both =
            config(serde_json::json!({"Enabled": true, "TextFormat": "a", "JSONFormat": "{}"}));
        assert_eq!(
            AccessLogs::from_config(&both),
            Err(AccessLogError::BothFormats)
        );
        let no_path = config(serde_json::json!({"Enabled": true, "Type": "file"}));
        assert_eq!(
            AccessLogs::from_config(&no_path),
            Err(AccessLogError::NoPath)
        );
        let kind = config(serde_json::json!({"Enabled": true, "Type": "syslog"}));
        assert!(matches!(
            AccessLogs::from_config(&kind),
            Err(AccessLogError::UnknownType(_))
        ));
        let op = config(serde_json::json!({"Enabled": true, "JSONFormat": "{\"a\": \"%WHAT%\"}"}));
        let err = AccessLogs::from_config(&op).unwrap_err();
        assert!(err.to_string().contains("%WHAT%"), "{err}");
    }
}
