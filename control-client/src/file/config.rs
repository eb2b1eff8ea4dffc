//! The static config file: read once at start-up (and again on SIGHUP), validated in one
//! pass, every mistake named by file, line, column and key.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use std::sync::Arc;

use crate::access_log::{AccessLogError, AccessLogs};
use crate::api::defaults::AccessLogsConfig;
use crate::identity::ServiceId;
use crate::intentions::Action;
use crate::model::{DefaultAction, InboundConfig, Protocol};
use crate::normalization::{RequestNormalization, UnknownAction};
use crate::publish::{self, InboundLimits, UpstreamLimits, UpstreamListener};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default, deserialize_with = "crate::addr::deserialize_opt")]
    admin_addr: Option<SocketAddr>,
    #[serde(default, deserialize_with = "crate::addr::deserialize_opt")]
    prometheus_bind_addr: Option<SocketAddr>,
    #[serde(default)]
    default_action: Option<Action>,
    #[serde(default)]
    identity: Option<toml::Spanned<RawIdentity>>,
    inbound: Option<RawInbound>,
    #[serde(default)]
    upstreams: Vec<RawUpstream>,
    access_logs: Option<toml::Spanned<RawAccessLogs>>,
    request_normalization: Option<RawRequestNormalization>,
    tracing: Option<RawTracing>,
}

/// `[tracing]`: the same settings as `--otlp-endpoint`, `--otlp-protocol` and their
/// `OTEL_*` variables, in snake case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTracing {
    endpoint: Option<toml::Spanned<String>>,
    protocol: Option<toml::Spanned<String>>,
    service_name: Option<toml::Spanned<String>>,
    sampler: Option<toml::Spanned<String>>,
    sampler_arg: Option<toml::Spanned<f64>>,
}

/// `[tracing]`, as written. Read at start-up only, as `admin_addr` is (a change needs a
/// restart): tracing is the process's, not a snapshot's. What the values mean, and so
/// whether they are usable, is the proxy's tracing module's to say; each carries where
/// it was written, for that module's errors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TracingTable {
    pub endpoint: Option<Located<String>>,
    pub protocol: Option<Located<String>>,
    pub service_name: Option<Located<String>>,
    pub sampler: Option<Located<String>>,
    pub sampler_arg: Option<Located<f64>>,
}

/// A value of the config file and where it is: `file:line:column: key`.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub at: String,
}

/// `[request_normalization]`: the `mesh` entry's `HTTP.Incoming.RequestNormalization`
/// in snake case, the actions by Consul's names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequestNormalization {
    #[serde(default)]
    insecure_disable_path_normalization: bool,
    #[serde(default)]
    merge_slashes: bool,
    path_with_escaped_slashes_action: Option<toml::Spanned<String>>,
    headers_with_underscores_action: Option<toml::Spanned<String>>,
}

/// `[access_logs]`: Consul's `AccessLogs` fields in snake case; the table's presence
/// enables logging unless `enabled = false`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLogs {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    disable_listener_logs: bool,
    #[serde(default, rename = "type")]
    kind: String,
    path: Option<PathBuf>,
    #[serde(default)]
    json_format: String,
    #[serde(default)]
    text_format: String,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    bundle: Option<PathBuf>,
    trust_domain: Option<String>,
    partition: Option<String>,
    namespace: Option<String>,
    datacenter: Option<String>,
    service: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    #[serde(deserialize_with = "crate::addr::deserialize")]
    bind: SocketAddr,
    local_app: toml::Spanned<String>,
    #[serde(default = "tcp")]
    protocol: Protocol,
    intentions: Option<PathBuf>,
    handshake_timeout_ms: Option<u64>,
    local_connect_timeout_ms: Option<u64>,
    local_request_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_connections: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: toml::Spanned<String>,
    #[serde(deserialize_with = "crate::addr::deserialize")]
    bind: SocketAddr,
    endpoints: Vec<toml::Spanned<String>>,
    #[serde(default = "tcp")]
    protocol: Protocol,
    datacenter: Option<String>,
    namespace: Option<String>,
    connect_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_connections: Option<u64>,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

/// A config file error, spelled `file:line:column: key: message`.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {key}: {message}")]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

/// The identity this proxy claims, as far as the config file pins it down.
#[derive(Debug, Clone, Default)]
pub(super) struct IdentityPins {
    pub(super) trust_domain: Option<String>,
    pub(super) partition: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) datacenter: Option<String>,
    pub(super) service: Option<String>,
}

impl IdentityPins {
    pub(super) fn mismatch(&self, id: &ServiceId) -> Option<String> {
        let checks = [
            ("trust_domain", &self.trust_domain, &id.trust_domain),
            ("partition", &self.partition, &id.partition),
            ("namespace", &self.namespace, &id.namespace),
            ("datacenter", &self.datacenter, &id.datacenter),
            ("service", &self.service, &id.service),
        ];
        checks.iter().find_map(|(key, want, got)| match want {
            Some(want) if want != *got => Some(format!(
                "leaf is {id}, but identity.{key} is {want:?} in the config"
            )),
            _ => None,
        })
    }
}

/// One `[[upstreams]]` entry: the listener, and the fixed instances it dials.
#[derive(Debug, Clone)]
pub(super) struct UpstreamSpec {
    pub(super) listener: UpstreamListener,
    pub(super) endpoints: Vec<String>,
    pub(super) datacenter: Option<String>,
    pub(super) namespace: Option<String>,
}

/// The certificate, key and bundle files of `[identity]`.
#[derive(Debug, Clone)]
pub(super) struct IdentityFiles {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) bundle: PathBuf,
}

/// A parsed, validated static config with every path made absolute.
#[derive(Debug, Clone)]
pub struct StaticConfig {
    pub path: PathBuf,
    pub admin_addr: Option<SocketAddr>,
    /// The public Prometheus listener (`/metrics` and `/stats/prometheus` only), as
    /// Consul's `envoy_prometheus_bind_addr` asks for one; follows SIGHUP.
    pub(super) prometheus_bind_addr: Option<SocketAddr>,
    /// `None` only when the Workload API gives the identity.
    pub(super) files: Option<IdentityFiles>,
    pub(super) intentions: Option<PathBuf>,
    pub(super) pins: IdentityPins,
    pub(super) default_action: DefaultAction,
    pub(super) inbound: Option<InboundConfig>,
    pub(super) upstreams: Vec<UpstreamSpec>,
    /// `[access_logs]`, compiled; `None`: not logging.
    pub(super) access_logs: Option<Arc<AccessLogs>>,
    /// `[tracing]`; `None` when the file has no such table.
    pub tracing: Option<TracingTable>,
    /// `[request_normalization]`; the default without the table.
    pub(super) request_normalization: RequestNormalization,
}

/// Places errors in the text being parsed.
struct Locate<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Locate<'_> {
    fn error(&self, span: Option<Range<usize>>, key: &str, message: String) -> ConfigError {
        let (line, column) = span.map_or((0, 0), |s| line_col(self.text, s.start));
        ConfigError {
            file: self.path.to_owned(),
            line,
            column,
            key: key.to_owned(),
            message,
        }
    }
}

impl StaticConfig {
    /// Reads and validates the config file. Every error names file, line and key.
    pub fn load(path: &Path) -> Result<StaticConfig, ConfigError> {
        Self::read(path, false)
    }

    /// As [`StaticConfig::load`], for `--workload-api`: the identity files may be left out.
    pub fn load_for_workload_api(path: &Path) -> Result<StaticConfig, ConfigError> {
        Self::read(path, true)
    }

    fn read(path: &Path, workload_api: bool) -> Result<StaticConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            key: "-".into(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse_with(path, &text, workload_api)
    }

    #[cfg(test)]
    pub(super) fn parse(path: &Path, text: &str) -> Result<StaticConfig, ConfigError> {
        Self::parse_with(path, text, false)
    }

    pub(super) fn parse_with(
        path: &Path,
        text: &str,
        workload_api: bool,
    ) -> Result<StaticConfig, ConfigError> {
        let at = Locate { path, text };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| at.error(e.span(), "-", e.message().to_owned()))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            at.error(inner.span(), &key, inner.message().to_owned())
        })?;

        let dir = path.parent().unwrap_or(Path::new("."));
        let (identity_span, identity) = match raw.identity {
            Some(spanned) => (Some(spanned.span()), spanned.into_inner()),
            None => (None, RawIdentity::default()),
        };
        let files = identity_files(&identity, dir, workload_api)
            .map_err(|(key, why)| at.error(identity_span, &key, why.to_owned()))?;
        let (inbound, intentions) = match raw.inbound {
            Some(ib) => {
                let (inbound, intentions) = inbound_of(ib, dir, &at)?;
                (Some(inbound), intentions)
            }
            None => (None, None),
        };
        let upstreams = raw
            .upstreams
            .into_iter()
            .enumerate()
            .map(|(i, up)| upstream_of(i, up, &at))
            .collect::<Result<_, _>>()?;
        let access_logs = match raw.access_logs {
            Some(table) => access_logs_of(table, dir, &at)?,
            None => None,
        };
        let tracing = raw.tracing.map(|t| {
            fn locate<T>(
                at: &Locate<'_>,
                key: &str,
                v: Option<toml::Spanned<T>>,
            ) -> Option<Located<T>> {
                v.map(|v| {
                    let (line, column) = line_col(at.text, v.span().start);
                    Located {
                        at: format!("{}:{line}:{column}: tracing.{key}", at.path.display()),
                        value: v.into_inner(),
                    }
                })
            }
            TracingTable {
                endpoint: locate(&at, "endpoint", t.endpoint),
                protocol: locate(&at, "protocol", t.protocol),
                service_name: locate(&at, "service_name", t.service_name),
                sampler: locate(&at, "sampler", t.sampler),
                sampler_arg: locate(&at, "sampler_arg", t.sampler_arg),
            }
        });
        let request_normalization = match raw.request_normalization {
            Some(table) => request_normalization_of(table, &at)?,
            None => RequestNormalization::default(),
        };
        Ok(StaticConfig {
            tracing,
            path: path.to_owned(),
            admin_addr: raw.admin_addr,
            prometheus_bind_addr: raw.prometheus_bind_addr,
            files,
            intentions,
            pins: IdentityPins {
                trust_domain: identity.trust_domain,
                partition: identity.partition,
                namespace: identity.namespace,
                datacenter: identity.datacenter,
                service: identity.service,
            },
            default_action: default_action(raw.default_action),
            inbound,
            upstreams,
            access_logs,
            request_normalization,
        })
    }
}

/// `[request_normalization]`, checked as Consul checks the mesh entry; an error names
/// the key.
fn request_normalization_of(
    raw: RawRequestNormalization,
    at: &Locate<'_>,
) -> Result<RequestNormalization, ConfigError> {
    fn action<T: std::str::FromStr<Err = UnknownAction> + Default>(
        value: Option<toml::Spanned<String>>,
        key: &str,
        at: &Locate<'_>,
    ) -> Result<T, ConfigError> {
        let Some(value) = value else {
            return Ok(T::default());
        };
        let span = value.span();
        value
            .into_inner()
            .parse()
            .map_err(|e: UnknownAction| at.error(Some(span), key, e.to_string()))
    }
    Ok(RequestNormalization {
        insecure_disable_path_normalization: raw.insecure_disable_path_normalization,
        merge_slashes: raw.merge_slashes,
        path_with_escaped_slashes_action: action(
            raw.path_with_escaped_slashes_action,
            "request_normalization.path_with_escaped_slashes_action",
            at,
        )?,
        headers_with_underscores_action: action(
            raw.headers_with_underscores_action,
            "request_normalization.headers_with_underscores_action",
            at,
        )?,
    })
}

/// `[access_logs]`, compiled as Consul's `AccessLogs` is; an error names the key.
fn access_logs_of(
    table: toml::Spanned<RawAccessLogs>,
    dir: &Path,
    at: &Locate<'_>,
) -> Result<Option<Arc<AccessLogs>>, ConfigError> {
    let span = table.span();
    let raw = table.into_inner();
    let config = AccessLogsConfig {
        enabled: raw.enabled,
        disable_listener_logs: raw.disable_listener_logs,
        kind: raw.kind,
        path: raw
            .path
            .map(|p| dir.join(p).to_string_lossy().into_owned())
            .unwrap_or_default(),
        json_format: raw.json_format,
        text_format: raw.text_format,
    };
    AccessLogs::from_config(&config)
        .map(|logs| logs.map(Arc::new))
        .map_err(|e| {
            let key = match &e {
                AccessLogError::BothFormats | AccessLogError::Text(_) => "access_logs.text_format",
                AccessLogError::Json(_) => "access_logs.json_format",
                AccessLogError::UnknownType(_) => "access_logs.type",
                AccessLogError::NoPath => "access_logs.path",
            };
            at.error(Some(span), key, e.to_string())
        })
}

/// All three identity files, or (with the Workload API) none; else the key of the first
/// missing one and why it is needed.
fn identity_files(
    identity: &RawIdentity,
    dir: &Path,
    workload_api: bool,
) -> Result<Option<IdentityFiles>, (String, &'static str)> {
    match (&identity.cert, &identity.key, &identity.bundle) {
        (Some(cert), Some(key), Some(bundle)) => Ok(Some(IdentityFiles {
            cert: dir.join(cert),
            key: dir.join(key),
            bundle: dir.join(bundle),
        })),
        (None, None, None) if workload_api => Ok(None),
        (cert, key, _) => {
            let missing = if cert.is_none() {
                "cert"
            } else if key.is_none() {
                "key"
            } else {
                "bundle"
            };
            let why = if workload_api {
                "give all of cert, key and bundle, or none of them (--workload-api gives the identity)"
            } else {
                "required: the leaf certificate, its key and the trust bundle (or take them from SPIFFE with --workload-api)"
            };
            Err((format!("identity.{missing}"), why))
        }
    }
}

/// `[inbound]`, and the intentions file it names (made absolute).
fn inbound_of(
    ib: RawInbound,
    dir: &Path,
    at: &Locate<'_>,
) -> Result<(InboundConfig, Option<PathBuf>), ConfigError> {
    check_host_port(ib.local_app.get_ref())
        .map_err(|m| at.error(Some(ib.local_app.span()), "inbound.local_app", m))?;
    let limits = InboundLimits {
        handshake_timeout_ms: ib.handshake_timeout_ms,
        local_connect_timeout_ms: ib.local_connect_timeout_ms,
        local_request_timeout_ms: ib.local_request_timeout_ms,
        idle_timeout_ms: ib.idle_timeout_ms,
        max_connections: ib.max_connections,
    };
    let inbound = publish::inbound(ib.bind, ib.local_app.into_inner(), ib.protocol, &limits);
    Ok((inbound, ib.intentions.map(|p| dir.join(p))))
}

/// `upstreams[i]`, checked.
fn upstream_of(i: usize, up: RawUpstream, at: &Locate<'_>) -> Result<UpstreamSpec, ConfigError> {
    let key = |k: &str| format!("upstreams[{i}].{k}");
    if up.name.get_ref().is_empty() {
        return Err(at.error(
            Some(up.name.span()),
            &key("name"),
            "must not be empty".into(),
        ));
    }
    if up.endpoints.is_empty() {
        return Err(at.error(
            Some(up.name.span()),
            &key("endpoints"),
            "at least one endpoint is required".into(),
        ));
    }
    for (j, ep) in up.endpoints.iter().enumerate() {
        check_host_port(ep.get_ref())
            .map_err(|m| at.error(Some(ep.span()), &key(&format!("endpoints[{j}]")), m))?;
    }
    let limits = UpstreamLimits {
        connect_timeout_ms: up.connect_timeout_ms,
        request_timeout_ms: up.request_timeout_ms,
        idle_timeout_ms: up.idle_timeout_ms,
        max_connections: up.max_connections,
    };
    Ok(UpstreamSpec {
        listener: UpstreamListener::new(up.name.into_inner(), up.bind, up.protocol, &limits),
        endpoints: up.endpoints.into_iter().map(|e| e.into_inner()).collect(),
        datacenter: up.datacenter,
        namespace: up.namespace,
    })
}

fn default_action(configured: Option<Action>) -> DefaultAction {
    match configured {
        Some(action) => DefaultAction {
            action,
            source: "config file default_action",
        },
        None => DefaultAction {
            action: Action::Deny,
            source: "built-in default (deny)",
        },
    }
}

fn check_host_port(s: &str) -> Result<(), String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("{s:?} is not host:port")),
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    (line, column)
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::*;

    fn parse(text: &str) -> Result<StaticConfig, ConfigError> {
        StaticConfig::parse(Path::new("/etc/ferrule/ferrule.toml"), text)
    }

    pub(crate) const GOOD: &str = r#"
admin_addr = "127.0.0.1:19100"
[identity]
cert = "api.pem"
key = "api-key.pem"
bundle = "ca.pem"
[inbound]
bind = "127.0.0.1:21000"
local_app = "127.0.0.1:8080"
protocol = "tcp"
intentions = "intentions.json"
[[upstreams]]
name = "db"
bind = "127.0.0.1:9191"
endpoints = ["127.0.0.1:21001"]
"#;

    #[test]
    fn prometheus_bind_addr_is_an_address_or_names_the_key() {
        assert_eq!(parse(GOOD).unwrap().prometheus_bind_addr, None);
        let on = parse(&format!("prometheus_bind_addr = \":9102\"\n{GOOD}")).unwrap();
        assert_eq!(on.prometheus_bind_addr, "127.0.0.1:9102".parse().ok());
        let e = parse(&format!("prometheus_bind_addr = \"nowhere\"\n{GOOD}")).unwrap_err();
        assert!(e.to_string().contains("prometheus_bind_addr"), "{e}");
    }

    #[test]
    fn tracing_table_is_kept_with_where_each_value_is() {
        assert!(parse(GOOD).unwrap().tracing.is_none());
        let text = format!(
            "{GOOD}\n[tracing]\nendpoint = \"http://127.0.0.1:4318\"\nsampler = \"parentbased_traceidratio\"\nsampler_arg = 0\n"
        );
        let tracing = parse(&text).unwrap().tracing.unwrap();
        let endpoint = tracing.endpoint.unwrap();
        assert_eq!(endpoint.value, "http://127.0.0.1:4318");
        let line = text
            .lines()
            .position(|l| l.starts_with("endpoint ="))
            .unwrap()
            + 1;
        assert_eq!(
            endpoint.at,
            format!("/etc/ferrule/ferrule.toml:{line}:12: tracing.endpoint")
        );
        assert_eq!(tracing.sampler_arg.unwrap().value, 0.0);
        assert!(tracing.protocol.is_none());
        let unknown = parse(&format!("{GOOD}\n[tracing]\nurl = \"x\"\n")).unwrap_err();
        assert!(unknown.key.starts_with("tracing"), "{unknown}");
    }

    #[test]
    fn request_normalization_table_takes_consuls_names_or_names_the_key() {
        use crate::normalization::{EscapedSlashesAction, UnderscoresAction};
        assert_eq!(
            parse(GOOD).unwrap().request_normalization,
            RequestNormalization::default()
        );
        let set = parse(&format!(
            "{GOOD}\n[request_normalization]\nmerge_slashes = true\npath_with_escaped_slashes_action = \"REJECT_REQUEST\"\nheaders_with_underscores_action = \"DROP_HEADER\"\n"
        ))
        .unwrap()
        .request_normalization;
        assert!(set.merge_slashes && !set.insecure_disable_path_normalization);
        assert_eq!(
            set.path_with_escaped_slashes_action,
            EscapedSlashesAction::RejectRequest
        );
        assert_eq!(
            set.headers_with_underscores_action,
            UnderscoresAction::DropHeader
        );
        let bad = parse(&format!(
            "{GOOD}\n[request_normalization]\npath_with_escaped_slashes_action = \"DECODE\"\n"
        ))
        .unwrap_err();
        assert_eq!(
            bad.key,
            "request_normalization.path_with_escaped_slashes_action"
        );
        assert!(
            bad.line > 0 && bad.message.contains("UNESCAPE_AND_FORWARD"),
            "{bad}"
        );
    }

    #[test]
    fn access_logs_table_compiles_or_names_the_key() {
        assert!(parse(GOOD).unwrap().access_logs.is_none());
        let on = parse(&format!(
            "{GOOD}\n[access_logs]\ntype = \"file\"\npath = \"a.log\"\n"
        ))
        .unwrap();
        let logs = on.access_logs.unwrap();
        assert_eq!(
            logs.sink,
            crate::access_log::Sink::File("/etc/ferrule/a.log".into())
        );
        assert_eq!(logs.format_kind, "default");
        let off = parse(&format!("{GOOD}\n[access_logs]\nenabled = false\n")).unwrap();
        assert!(off.access_logs.is_none());
        let bad = parse(&format!(
            "{GOOD}\n[access_logs]\ntext_format = \"%BYTES% %NOPE%\"\n"
        ))
        .unwrap_err();
        assert_eq!(bad.key, "access_logs.text_format");
        assert!(bad.message.contains("%BYTES%"), "{bad}");
        assert!(bad.line > 0, "{bad}");
        let unknown = parse(&format!("{GOOD}\n[access_logs]\nformat = \"x\"\n")).unwrap_err();
        assert!(unknown.key.starts_with("access_logs"), "{unknown}");
    }

    #[test]
    fn the_documented_example_parses_with_defaults() {
        let cfg = parse(GOOD).unwrap();
        let files = cfg.files.as_ref().unwrap();
        assert_eq!(files.cert, Path::new("/etc/ferrule/api.pem"));
        assert_eq!(
            cfg.intentions.as_deref(),
            Some(Path::new("/etc/ferrule/intentions.json"))
        );
        let ib = cfg.inbound.unwrap();
        assert_eq!(ib.handshake_timeout, Duration::from_secs(10));
        assert_eq!(
            cfg.upstreams[0].listener.connect_timeout,
            Duration::from_secs(5)
        );
        assert_eq!(cfg.default_action.action, Action::Deny);
        assert_eq!(ib.local_request_timeout, Some(Duration::from_secs(15)));
    }

    #[test]
    fn http_listeners_take_request_timeouts_where_zero_is_none() {
        let text = GOOD
            .replace(
                "protocol = \"tcp\"",
                "protocol = \"grpc\"\nlocal_request_timeout_ms = 0",
            )
            .replace(
                "endpoints = [",
                "protocol = \"http\"\nrequest_timeout_ms = 2500\nendpoints = [",
            );
        let cfg = parse(&text).unwrap();
        let ib = cfg.inbound.unwrap();
        assert_eq!(ib.protocol, Protocol::Grpc);
        assert_eq!(ib.local_request_timeout, None);
        assert_eq!(cfg.upstreams[0].listener.protocol, Protocol::Http);
        assert_eq!(
            cfg.upstreams[0].listener.request_timeout,
            Some(Duration::from_millis(2500))
        );
    }

    #[test]
    fn errors_name_line_and_key() {
        let bad = GOOD.replace("bind = \"127.0.0.1:9191\"", "bind = 9191");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.key, "upstreams[0].bind");
        assert_eq!(e.line, 14, "{e}");
        assert!(
            e.to_string().starts_with("/etc/ferrule/ferrule.toml:14:"),
            "{e}"
        );

        let e = parse(&GOOD.replace("protocol = \"tcp\"", "protocl = \"tcp\"")).unwrap_err();
        assert!(e.key.starts_with("inbound"), "{e}");
        assert!(e.message.contains("protocl"), "{e}");
        assert_eq!(e.line, 10, "{e}");

        let e = parse(&GOOD.replace("protocol = \"tcp\"", "protocol = \"thrift\"")).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("inbound.protocol", 10), "{e}");

        let e = parse(&GOOD.replace("[\"127.0.0.1:21001\"]", "[\"nope\"]")).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.line),
            ("upstreams[0].endpoints[0]", 15),
            "{e}"
        );

        let e = parse("admin_addr = [").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
    }

    #[test]
    fn identity_pins_refuse_a_foreign_leaf() {
        let pins = IdentityPins {
            service: Some("api".into()),
            ..Default::default()
        };
        let web = ServiceId::new("td.consul", "default", "dc1", "web");
        assert!(pins.mismatch(&web).unwrap().contains("identity.service"));
        let api = ServiceId::new("td.consul", "default", "dc1", "api");
        assert_eq!(pins.mismatch(&api), None);
    }

    pub(crate) const NO_FILES: &str = r#"
[identity]
service = "api"
[inbound]
bind = "127.0.0.1:21000"
local_app = "127.0.0.1:8080"
[[upstreams]]
name = "db"
bind = "127.0.0.1:9191"
endpoints = ["127.0.0.1:21001"]
"#;

    fn parse_for(text: &str, workload_api: bool) -> Result<StaticConfig, ConfigError> {
        StaticConfig::parse_with(Path::new("/etc/ferrule/ferrule.toml"), text, workload_api)
    }

    #[test]
    fn identity_files_are_optional_only_with_the_workload_api() {
        let cfg = parse_for(NO_FILES, true).unwrap();
        assert!(cfg.files.is_none());
        assert!(parse_for("", true).unwrap().files.is_none());

        let e = parse_for(NO_FILES, false).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("identity.cert", 2), "{e}");
        assert!(e.message.contains("--workload-api"), "{e}");
        let e = parse_for("", false).unwrap_err();
        assert_eq!(e.key, "identity.cert", "{e}");

        // Half the files is a mistake either way.
        let half = NO_FILES.replace("service = \"api\"", "cert = \"a.pem\"\nbundle = \"ca.pem\"");
        for workload_api in [true, false] {
            let e = parse_for(&half, workload_api).unwrap_err();
            assert_eq!((e.key.as_str(), e.line), ("identity.key", 2), "{e}");
        }
    }
}
