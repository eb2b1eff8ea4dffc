//! Whether spans are exported, where, how and which: the flags (`--otlp-endpoint`,
//! `--otlp-protocol`) over OpenTelemetry's standard environment variables
//! (`OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, `..._PROTOCOL`, `OTEL_SERVICE_NAME`,
//! `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`, `OTEL_SDK_DISABLED`,
//! `OTEL_TRACES_EXPORTER`) over the static config's `[tracing]`, read once at start-up. No endpoint: tracing is off. A value
//! that cannot be used is an error naming the flag or variable (exit 2), rather than
//! the specification's "warn and use the default": a sidecar that silently exports
//! nothing, or everything, is worse than one that does not start.

use std::time::Duration;

use ferrule_control::file::TracingTable;

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn parse(text: &str) -> Option<Protocol> {
        match text.trim() {
            "grpc" => Some(Protocol::Grpc),
            "http/protobuf" => Some(Protocol::HttpProtobuf),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Which traces are recorded: `OTEL_TRACES_SAMPLER`'s values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerChoice {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    /// A sampled parent is always continued, an unsampled one never; a request that
    /// comes without a parent is decided by the root sampler.
    ParentBased(Root),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

/// The batch processor's bounds (`OTEL_BSP_*`, with the specification's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Spans waiting for export; beyond it new ones are dropped and counted.
    pub max_queue: usize,
    pub max_batch: usize,
    /// How long a span may wait for a batch to fill.
    pub delay: Duration,
    /// One export's limit, its retries included.
    pub export_timeout: Duration,
}

impl Default for Batch {
    fn default() -> Batch {
        Batch {
            max_queue: 2048,
            max_batch: 512,
            delay: Duration::from_millis(5000),
            export_timeout: Duration::from_millis(30000),
        }
    }
}

/// Tracing as configured: on, with all it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The full URL spans are sent to: the gRPC server, or the HTTP traces path.
    pub endpoint: String,
    pub protocol: Protocol,
    pub service_name: String,
    pub sampler: SamplerChoice,
    pub batch: Batch,
}

/// A value that cannot be used, named by where it came from.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{source_name}: {reason}")]
pub struct SettingsError {
    pub source_name: String,
    pub reason: String,
}

fn bad(source_name: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError {
        source_name: source_name.to_owned(),
        reason: reason.into(),
    }
}

/// What the command line and the config file say, and the name a span's resource gets
/// when nothing else does.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    /// The static config's `[tracing]`: below the flags and the environment.
    pub file: Option<TracingTable>,
    pub default_service_name: String,
}

/// Tracing from the flags and the environment (`env` reads a variable); `None`: off.
pub fn resolve(
    flags: &Flags,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Settings>, SettingsError> {
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    match var("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => {
            return Err(bad(
                "OTEL_TRACES_EXPORTER",
                format!("{other:?}: only \"otlp\" and \"none\" are supported"),
            ));
        }
    }
    let file = flags.file.clone().unwrap_or_default();
    let protocol = flags
        .protocol
        .clone()
        .map(|v| ("--otlp-protocol".to_owned(), v))
        .or_else(|| named(&var, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
        .or_else(|| named(&var, "OTEL_EXPORTER_OTLP_PROTOCOL"))
        .or_else(|| file.protocol.clone().map(|l| (l.at, l.value)));
    let protocol = match protocol {
        None => Protocol::HttpProtobuf,
        Some((from, text)) => Protocol::parse(&text).ok_or_else(|| {
            bad(
                &from,
                format!("{text:?}: expected \"grpc\" or \"http/protobuf\""),
            )
        })?,
    };
    // A bare collector address (flag or file) gets the signal's path, as the generic
    // variable does.
    let with_path = |url: String| {
        if protocol == Protocol::HttpProtobuf && path_of(&url).is_empty() {
            format!("{}/v1/traces", url.trim_end_matches('/'))
        } else {
            url
        }
    };
    let endpoint = if let Some(flag) = &flags.endpoint {
        with_path(checked_url("--otlp-endpoint", flag)?)
    } else if let Some(v) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        checked_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &v)?
    } else if let Some(v) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        let url = checked_url("OTEL_EXPORTER_OTLP_ENDPOINT", &v)?;
        match protocol {
            Protocol::Grpc => url,
            Protocol::HttpProtobuf => format!("{}/v1/traces", url.trim_end_matches('/')),
        }
    } else if let Some(located) = &file.endpoint {
        with_path(checked_url(&located.at, &located.value)?)
    } else {
        return Ok(None);
    };
    let service_name = match var("OTEL_SERVICE_NAME") {
        Some(name) => name.trim().to_owned(),
        None => var("OTEL_RESOURCE_ATTRIBUTES")
            .and_then(|attrs| service_name_in(&attrs))
            .or_else(|| file.service_name.clone().map(|l| l.value))
            .unwrap_or_else(|| flags.default_service_name.clone()),
    };
    let name = named(&var, "OTEL_TRACES_SAMPLER")
        .or_else(|| file.sampler.clone().map(|l| (l.at, l.value)));
    let arg = match named(&var, "OTEL_TRACES_SAMPLER_ARG") {
        Some((from, text)) => Some((from, text.trim().parse::<f64>().map_err(|_| text))),
        None => file.sampler_arg.clone().map(|l| (l.at, Ok(l.value))),
    };
    let sampler = sampler(name, arg)?;
    let defaults = Batch::default();
    let batch = Batch {
        max_queue: positive(&var, "OTEL_BSP_MAX_QUEUE_SIZE", defaults.max_queue as u64)? as usize,
        max_batch: positive(
            &var,
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            defaults.max_batch as u64,
        )? as usize,
        delay: Duration::from_millis(positive(
            &var,
            "OTEL_BSP_SCHEDULE_DELAY",
            defaults.delay.as_millis() as u64,
        )?),
        export_timeout: Duration::from_millis(positive(
            &var,
            "OTEL_BSP_EXPORT_TIMEOUT",
            defaults.export_timeout.as_millis() as u64,
        )?),
    };
    Ok(Some(Settings {
        endpoint,
        protocol,
        service_name,
        sampler,
        batch,
    }))
}

/// An `http://` URL (a bare `host:port` is taken as one). TLS to the collector is not
/// built in: `https://` is refused rather than sent in the clear.
fn checked_url(from: &str, text: &str) -> Result<String, SettingsError> {
    let text = text.trim();
    let url = if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    };
    if url.starts_with("https://") {
        return Err(bad(
            from,
            format!(
                "{text:?}: TLS to the collector is not supported yet; use http:// (a collector on the same host or network)"
            ),
        ));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(bad(from, format!("{text:?}: expected an http:// URL")));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.parse::<http::uri::Authority>().is_err() {
        return Err(bad(from, format!("{text:?}: no host:port in it")));
    }
    if url.parse::<http::Uri>().is_err() {
        return Err(bad(from, format!("{text:?}: not a URL")));
    }
    Ok(url)
}

/// The URL's path, empty when it is `/` or absent.
fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.find('/') {
        Some(i) => rest[i..].trim_end_matches('/'),
        None => "",
    }
}

/// `service.name=...` in `OTEL_RESOURCE_ATTRIBUTES` (`k=v,k=v`, values percent-encoded).
fn service_name_in(attrs: &str) -> Option<String> {
    attrs.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == "service.name").then(|| {
            percent_encoding::percent_decode_str(v.trim())
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// A variable's value with its name, as a source to name in errors.
fn named(var: &impl Fn(&str) -> Option<String>, name: &str) -> Option<(String, String)> {
    var(name).map(|v| (name.to_owned(), v))
}

/// A sampler argument and where it came from: the ratio, or the text that is not one.
type Arg = (String, Result<f64, String>);

fn sampler(
    name: Option<(String, String)>,
    arg: Option<Arg>,
) -> Result<SamplerChoice, SettingsError> {
    let ratio = || -> Result<f64, SettingsError> {
        let Some((from, arg)) = &arg else {
            return Ok(1.0);
        };
        match arg {
            Ok(r) if (0.0..=1.0).contains(r) => Ok(*r),
            Ok(r) => Err(bad(
                from,
                format!("{r}: expected a probability from 0 to 1"),
            )),
            Err(text) => Err(bad(
                from,
                format!("{text:?}: expected a probability from 0 to 1"),
            )),
        }
    };
    let (from, name) = name.unwrap_or_else(|| ("-".to_owned(), "parentbased_always_on".to_owned()));
    Ok(match name.trim() {
        "always_on" => SamplerChoice::AlwaysOn,
        "always_off" => SamplerChoice::AlwaysOff,
        "traceidratio" => SamplerChoice::Ratio(ratio()?),
        "parentbased_always_on" => SamplerChoice::ParentBased(Root::AlwaysOn),
        "parentbased_always_off" => SamplerChoice::ParentBased(Root::AlwaysOff),
        "parentbased_traceidratio" => SamplerChoice::ParentBased(Root::Ratio(ratio()?)),
        other => {
            return Err(bad(
                &from,
                format!(
                    "{other:?}: expected always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                ),
            ));
        }
    })
}

fn positive(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: u64,
) -> Result<u64, SettingsError> {
    match var(name) {
        None => Ok(default),
        Some(text) => match text.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad(name, format!("{text:?}: expected a positive integer"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_with(
        flags: &Flags,
        vars: &[(&str, &str)],
    ) -> Result<Option<Settings>, SettingsError> {
        resolve(flags, |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    fn flags() -> Flags {
        Flags {
            default_service_name: "web".into(),
            ..Flags::default()
        }
    }

    #[test]
    fn no_endpoint_means_off() {
        assert_eq!(resolve_with(&flags(), &[]), Ok(None));
        assert_eq!(
            resolve_with(&flags(), &[("OTEL_TRACES_SAMPLER", "always_on")]),
            Ok(None)
        );
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")];
        assert!(resolve_with(&flags(), &on).unwrap().is_some());
        let disabled = [on[0], ("OTEL_SDK_DISABLED", "true")];
        assert_eq!(resolve_with(&flags(), &disabled), Ok(None));
        let none = [on[0], ("OTEL_TRACES_EXPORTER", "none")];
        assert_eq!(resolve_with(&flags(), &none), Ok(None));
    }

    #[test]
    fn endpoints_as_the_specification_builds_them() {
        let got = |f: &Flags, vars: &[(&str, &str)]| {
            let s = resolve_with(f, vars).unwrap().unwrap();
            (s.endpoint, s.protocol)
        };
        // The generic variable gets the signal's path for HTTP, nothing for gRPC.
        assert_eq!(
            got(
                &flags(),
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]
            ),
            ("http://c:4318/v1/traces".into(), Protocol::HttpProtobuf)
        );
        assert_eq!(
            got(
                &flags(),
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
                ]
            ),
            ("http://c:4317".into(), Protocol::Grpc)
        );
        // The signal's own variable is used as it is, and wins.
        assert_eq!(
            got(
                &flags(),
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://d:9/custom")
                ]
            ),
            ("http://d:9/custom".into(), Protocol::HttpProtobuf)
        );
        // The flag wins over both; a bare address gets the path, a path is kept.
        let mut f = flags();
        f.endpoint = Some("127.0.0.1:4318".into());
        assert_eq!(
            got(
                &f,
                &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://d:9/x")]
            ),
            (
                "http://127.0.0.1:4318/v1/traces".into(),
                Protocol::HttpProtobuf
            )
        );
        f.endpoint = Some("http://c:4318/v1/traces".into());
        assert_eq!(got(&f, &[]).0, "http://c:4318/v1/traces");
        f.protocol = Some("grpc".into());
        f.endpoint = Some("http://c:4317".into());
        assert_eq!(
            got(&f, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]),
            ("http://c:4317".into(), Protocol::Grpc)
        );
    }

    #[test]
    fn unusable_values_are_named() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let err = |vars: &[(&str, &str)]| resolve_with(&flags(), vars).unwrap_err().source_name;
        assert_eq!(
            err(&[on, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]),
            "OTEL_EXPORTER_OTLP_PROTOCOL"
        );
        assert_eq!(
            err(&[on, ("OTEL_TRACES_SAMPLER", "jaeger_remote")]),
            "OTEL_TRACES_SAMPLER"
        );
        assert_eq!(
            err(&[
                on,
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2")
            ]),
            "OTEL_TRACES_SAMPLER_ARG"
        );
        assert_eq!(
            err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")]),
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        );
        assert_eq!(
            err(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http:///x")]),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        );
        assert_eq!(
            err(&[on, ("OTEL_BSP_MAX_QUEUE_SIZE", "0")]),
            "OTEL_BSP_MAX_QUEUE_SIZE"
        );
        assert_eq!(
            err(&[on, ("OTEL_TRACES_EXPORTER", "zipkin")]),
            "OTEL_TRACES_EXPORTER"
        );
        let mut f = flags();
        f.protocol = Some("udp".into());
        assert_eq!(
            resolve_with(&f, &[on]).unwrap_err().source_name,
            "--otlp-protocol"
        );
    }

    #[test]
    fn the_config_file_comes_below_flags_and_variables() {
        use ferrule_control::file::Located;
        let at = |key: &str| format!("f.toml:9:1: tracing.{key}");
        let located = |key: &str, value: &str| {
            Some(Located {
                value: value.to_owned(),
                at: at(key),
            })
        };
        let mut f = flags();
        f.file = Some(TracingTable {
            endpoint: located("endpoint", "127.0.0.1:4318"),
            protocol: None,
            service_name: located("service_name", "from-file"),
            sampler: located("sampler", "traceidratio"),
            sampler_arg: Some(Located {
                value: 0.25,
                at: at("sampler_arg"),
            }),
        });
        let s = resolve_with(&f, &[]).unwrap().unwrap();
        assert_eq!(s.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(s.service_name, "from-file");
        assert_eq!(s.sampler, SamplerChoice::Ratio(0.25));
        let s = resolve_with(
            &f,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
                ("OTEL_SERVICE_NAME", "from-env"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.endpoint, "http://env:4318/v1/traces");
        assert_eq!(s.service_name, "from-env");
        assert_eq!(s.sampler, SamplerChoice::Ratio(0.5));
        if let Some(table) = &mut f.file {
            table.sampler = located("sampler", "sometimes");
        }
        assert_eq!(
            resolve_with(&f, &[]).unwrap_err().source_name,
            at("sampler")
        );
        if let Some(table) = &mut f.file {
            table.sampler = located("sampler", "traceidratio");
            table.sampler_arg = Some(Located {
                value: 1.5,
                at: at("sampler_arg"),
            });
        }
        assert_eq!(
            resolve_with(&f, &[]).unwrap_err().source_name,
            at("sampler_arg")
        );
    }

    #[test]
    fn samplers_and_service_names() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let s = |vars: &[(&str, &str)]| resolve_with(&flags(), vars).unwrap().unwrap();
        assert_eq!(s(&[on]).sampler, SamplerChoice::ParentBased(Root::AlwaysOn));
        assert_eq!(s(&[on]).service_name, "web");
        assert_eq!(
            s(&[
                on,
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0")
            ])
            .sampler,
            SamplerChoice::ParentBased(Root::Ratio(0.0))
        );
        assert_eq!(
            s(&[on, ("OTEL_TRACES_SAMPLER", "always_off")]).sampler,
            SamplerChoice::AlwaysOff
        );
        assert_eq!(
            s(&[
                on,
                ("OTEL_RESOURCE_ATTRIBUTES", "a=b,service.name=my%20api")
            ])
            .service_name,
            "my api"
        );
        assert_eq!(
            s(&[
                on,
                ("OTEL_RESOURCE_ATTRIBUTES", "service.name=x"),
                ("OTEL_SERVICE_NAME", "y")
            ])
            .service_name,
            "y"
        );
        assert_eq!(
            s(&[on, ("OTEL_BSP_SCHEDULE_DELAY", "200")]).batch.delay,
            Duration::from_millis(200)
        );
    }
}
