//! Distributed tracing: a span per L7 request on each sidecar (inbound: a SERVER span,
//! outbound: a CLIENT span), the caller's trace context continued from the request's
//! headers (W3C `traceparent`/`tracestate`, or B3) and our span written onto the
//! request sent on, so the outbound sidecar's CLIENT span is the parent the inbound
//! sidecar sees, whose SERVER span is the parent the app sees. Spans carry
//! OpenTelemetry's HTTP attributes plus the mesh's own (the peer's SPIFFE ID, the
//! intention decision, the upstream and the discovery-chain target), and are exported
//! with OTLP (gRPC or HTTP/protobuf) off the data path (`export`). `config` reads the
//! settings, `propagate` the headers. A request's span lives in its request guard
//! (`crate::http::RequestGuard`), as its access-log record does, and ends with it.
//! Off (no endpoint configured), a request pays one atomic load.
//! See `docs/consul-semantics.md#tracing`.

mod config;
mod export;
mod propagate;

use std::sync::OnceLock;
use std::time::Duration;

use http::header::{self, HeaderMap};
use http::{Request, StatusCode};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SdkTracer, SdkTracerProvider, ShouldSample as _,
};

pub use self::config::{
    Batch, Flags, Protocol, Root, SamplerChoice, Settings, SettingsError, resolve,
};
use self::propagate::B3Form;
use crate::metrics::Direction;

/// OpenTelemetry's HTTP semantic conventions, and the mesh's own attributes.
pub mod attr {
    pub const METHOD: &str = "http.request.method";
    pub const METHOD_ORIGINAL: &str = "http.request.method_original";
    pub const STATUS_CODE: &str = "http.response.status_code";
    pub const URL_PATH: &str = "url.path";
    pub const URL_SCHEME: &str = "url.scheme";
    pub const URL_FULL: &str = "url.full";
    pub const SERVER_ADDRESS: &str = "server.address";
    pub const SERVER_PORT: &str = "server.port";
    pub const CLIENT_ADDRESS: &str = "client.address";
    pub const CLIENT_PORT: &str = "client.port";
    pub const PEER_ADDRESS: &str = "network.peer.address";
    pub const PEER_PORT: &str = "network.peer.port";
    pub const PROTOCOL_NAME: &str = "network.protocol.name";
    pub const PROTOCOL_VERSION: &str = "network.protocol.version";
    pub const USER_AGENT: &str = "user_agent.original";
    pub const ERROR_TYPE: &str = "error.type";
    /// The other end's SPIFFE ID: the caller's (inbound), the server's (outbound).
    pub const PEER_SPIFFE_ID: &str = "ferrule.peer.spiffe_id";
    /// `allow` or `deny`: what the intentions decided for this request (inbound).
    pub const INTENTION: &str = "ferrule.intention.decision";
    /// The upstream the app called (outbound).
    pub const UPSTREAM: &str = "ferrule.upstream.name";
    /// The discovery chain's target the request was routed to (outbound).
    pub const TARGET: &str = "ferrule.upstream.target";
    /// The target's server name: its cluster in Consul's Envoy configuration.
    pub const CLUSTER: &str = "ferrule.upstream.cluster";
    /// Envoy's response flag for one of the proxy's own answers (`UH`, `UF`, `UT`...).
    pub const RESPONSE_FLAGS: &str = "ferrule.response_flags";
}

/// The process's tracing, once installed; absent: off.
static TRACING: OnceLock<Tracing> = OnceLock::new();

struct Tracing {
    tracer: SdkTracer,
    /// Decides a B3 parent that came without a sampling decision.
    root: Sampler,
    flusher: export::Flusher,
    /// Kept for the life of the process: the tracer's spans go through it.
    _provider: SdkTracerProvider,
}

/// Why tracing could not be started.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot set up OTLP export to {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("tracing is already installed in this process")]
    Twice,
}

/// Starts tracing as `settings` say: the exporter, its task (on the current runtime)
/// and the tracer every request's span comes from.
pub fn install(settings: &Settings) -> Result<(), InstallError> {
    if TRACING.get().is_some() {
        return Err(InstallError::Twice);
    }
    let failed = |source| InstallError::Exporter {
        endpoint: settings.endpoint.clone(),
        source,
    };
    let timeout = settings.batch.export_timeout;
    let mut exporter = match settings.protocol {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(timeout)
            .build()
            .map_err(failed)?,
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(settings.endpoint.clone())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(timeout)
            .with_http_client(
                opentelemetry_http::hyper::HyperClient::with_default_connector(timeout, None),
            )
            .build()
            .map_err(failed)?,
    };
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    opentelemetry_sdk::trace::SpanExporter::set_resource(&mut exporter, &resource);
    let (queue, flusher) = export::spawn(exporter, settings.batch);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(queue)
        .with_sampler(sampler(settings.sampler))
        .with_resource(resource)
        .build();
    let scope = InstrumentationScope::builder("ferrule")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let tracing = Tracing {
        tracer: provider.tracer_with_scope(scope),
        root: root_sampler(settings.sampler),
        flusher,
        _provider: provider,
    };
    TRACING.set(tracing).map_err(|_| InstallError::Twice)?;
    tracing::info!(
        endpoint = %settings.endpoint,
        protocol = settings.protocol.as_str(),
        service = %settings.service_name,
        sampler = ?settings.sampler,
        "tracing: a span per L7 request, exported with OTLP"
    );
    Ok(())
}

/// Sends the spans that ended so far, waiting at most `within`: on shutdown, once the
/// requests in flight are done.
pub async fn flush(within: Duration) {
    if let Some(tracing) = TRACING.get() {
        tracing.flusher.flush(within).await;
    }
}

fn sampler(choice: SamplerChoice) -> Sampler {
    match choice {
        SamplerChoice::AlwaysOn => Sampler::AlwaysOn,
        SamplerChoice::AlwaysOff => Sampler::AlwaysOff,
        SamplerChoice::Ratio(r) => Sampler::TraceIdRatioBased(r),
        SamplerChoice::ParentBased(root) => Sampler::ParentBased(Box::new(of_root(root))),
    }
}

fn of_root(root: Root) -> Sampler {
    match root {
        Root::AlwaysOn => Sampler::AlwaysOn,
        Root::AlwaysOff => Sampler::AlwaysOff,
        Root::Ratio(r) => Sampler::TraceIdRatioBased(r),
    }
}

/// What decides a trace that has no decision yet.
fn root_sampler(choice: SamplerChoice) -> Sampler {
    match choice {
        SamplerChoice::ParentBased(root) => of_root(root),
        other => sampler(other),
    }
}

/// One request's span, held by its request guard and ended when the guard goes. Free
/// when tracing is off.
pub struct RequestSpan {
    active: Option<Box<Active>>,
}

struct Active {
    span: opentelemetry_sdk::trace::Span,
    /// Ours, as written onto the request sent on (recording or not).
    context: SpanContext,
    parent: Option<SpanId>,
    b3: Option<B3Form>,
    kind: SpanKind,
}

impl RequestSpan {
    /// No span.
    pub fn off() -> RequestSpan {
        RequestSpan { active: None }
    }

    /// The span of a request that just came in: a SERVER span inbound, a CLIENT span
    /// outbound, the child of the trace context the request carries (a root
    /// otherwise), recorded as the sampler decides.
    pub fn start<B>(direction: Direction, req: &Request<B>) -> RequestSpan {
        let Some(tracing) = TRACING.get() else {
            return RequestSpan::off();
        };
        let incoming = propagate::extract(req.headers());
        if incoming.deny {
            // `b3: 0` asks for no trace: nothing recorded, the header passed on as it came.
            return RequestSpan::off();
        }
        let kind = match direction {
            Direction::Inbound => SpanKind::Server,
            Direction::Outbound => SpanKind::Client,
        };
        let name = method_name(req.method());
        let mut parent = incoming.parent;
        if incoming.deferred
            && let Some(sc) = parent.as_mut()
        {
            let decision = tracing
                .root
                .should_sample(None, sc.trace_id(), name, &kind, &[], &[])
                .decision;
            let flags = match decision {
                SamplingDecision::RecordAndSample => TraceFlags::SAMPLED,
                _ => TraceFlags::NOT_SAMPLED,
            };
            *sc = SpanContext::new(
                sc.trace_id(),
                sc.span_id(),
                flags,
                true,
                sc.trace_state().clone(),
            );
        }
        let parent_id = parent.as_ref().map(|sc| sc.span_id());
        let cx = match parent {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        let mut span = tracing
            .tracer
            .span_builder(name)
            .with_kind(kind.clone())
            .start_with_context(&tracing.tracer, &cx);
        if span.is_recording() {
            span.set_attributes(request_attributes(direction, req, name));
        }
        let context = span.span_context().clone();
        RequestSpan {
            active: Some(Box::new(Active {
                span,
                context,
                parent: parent_id,
                b3: incoming.b3,
                kind,
            })),
        }
    }

    /// Whether attributes set now are kept (a sampled span).
    pub fn is_recording(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.span.is_recording())
    }

    /// Sets an attribute, when recording.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(active) = &mut self.active
            && active.span.is_recording()
        {
            active.span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Writes our span's context onto the request sent on (its parent, for the next
    /// hop); nothing when tracing is off, so the request's own headers pass untouched.
    pub fn propagate(&self, headers: &mut HeaderMap) {
        if let Some(active) = &self.active {
            propagate::inject(headers, &active.context, active.parent, active.b3);
        }
    }

    /// The response's status; an error as the conventions say: a server's 5xx, a
    /// client's 4xx and 5xx.
    pub fn respond(&mut self, status: StatusCode, flags: Option<&'static str>) {
        let Some(active) = &mut self.active else {
            return;
        };
        if !active.span.is_recording() {
            return;
        }
        let code = status.as_u16();
        active
            .span
            .set_attribute(KeyValue::new(attr::STATUS_CODE, i64::from(code)));
        if let Some(flags) = flags {
            active
                .span
                .set_attribute(KeyValue::new(attr::RESPONSE_FLAGS, flags));
        }
        let error = match active.kind {
            SpanKind::Server => status.is_server_error(),
            _ => status.is_client_error() || status.is_server_error(),
        };
        if error {
            active
                .span
                .set_attribute(KeyValue::new(attr::ERROR_TYPE, code.to_string()));
            active.span.set_status(Status::error(""));
        }
    }
}

/// The span's name, `{method}` as the conventions say when there is no route template;
/// methods outside HTTP's registry are `_OTHER` (the original kept in an attribute).
fn method_name(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// What the request itself says, in the conventions' terms. The mesh hop is always TLS:
/// `url.scheme` is `https` both ways. The query is left out of `url.full`: it may carry
/// secrets, and no redaction can know which.
fn request_attributes<B>(
    direction: Direction,
    req: &Request<B>,
    method: &'static str,
) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(10);
    attrs.push(KeyValue::new(attr::METHOD, method));
    if method == "_OTHER" {
        attrs.push(KeyValue::new(
            attr::METHOD_ORIGINAL,
            req.method().to_string(),
        ));
    }
    let path = req.uri().path().to_owned();
    attrs.push(KeyValue::new(attr::URL_SCHEME, "https"));
    attrs.push(KeyValue::new(attr::PROTOCOL_NAME, "http"));
    attrs.push(KeyValue::new(
        attr::PROTOCOL_VERSION,
        match req.version() {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            http::Version::HTTP_3 => "3",
            _ => "1.1",
        },
    ));
    let authority =
        crate::http::requested_authority(req).and_then(|a| a.parse::<http::uri::Authority>().ok());
    if let Some(authority) = &authority {
        attrs.push(KeyValue::new(
            attr::SERVER_ADDRESS,
            authority.host().to_owned(),
        ));
        if let Some(port) = authority.port_u16() {
            attrs.push(KeyValue::new(attr::SERVER_PORT, i64::from(port)));
        }
    }
    if direction == Direction::Outbound
        && let Some(authority) = &authority
    {
        attrs.push(KeyValue::new(
            attr::URL_FULL,
            format!("https://{}{}", authority.as_str(), path),
        ));
    }
    attrs.push(KeyValue::new(attr::URL_PATH, path));
    if let Some(agent) = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        attrs.push(KeyValue::new(attr::USER_AGENT, agent.to_owned()));
    }
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_nothing_is_started_and_headers_pass_untouched() {
        // No test of this crate installs tracing: it is off here, as without an endpoint.
        let req = Request::builder()
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .header("b3", "0")
            .body(())
            .unwrap();
        let mut span = RequestSpan::start(Direction::Inbound, &req);
        assert!(span.active.is_none() && !span.is_recording());
        span.set(attr::INTENTION, "allow");
        span.respond(StatusCode::OK, None);
        let mut headers = req.headers().clone();
        span.propagate(&mut headers);
        assert_eq!(&headers, req.headers());
    }

    #[test]
    fn samplers_map_to_the_sdks() {
        assert!(matches!(
            sampler(SamplerChoice::ParentBased(Root::Ratio(0.5))),
            Sampler::ParentBased(_)
        ));
        assert!(matches!(
            root_sampler(SamplerChoice::ParentBased(Root::AlwaysOff)),
            Sampler::AlwaysOff
        ));
        assert!(matches!(
            root_sampler(SamplerChoice::Ratio(0.1)),
            Sampler::TraceIdRatioBased(r) if r == 0.1
        ));
        assert_eq!(
            method_name(&http::Method::from_bytes(b"PURGE").unwrap()),
            "_OTHER"
        );
    }
}
