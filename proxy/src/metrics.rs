//! Metric names and labels (a contract: dashboards and alerts read them, so they never
//! change), the typed outcomes whose `label()` is the only place a result label is
//! written, the per-connection guard that owns a connection's metrics and its one
//! access-log line, and a byte-counting stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use metrics::{Counter, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub mod catalog;
pub use catalog::Exporter;

pub const INBOUND_CONNECTIONS: &str = "ferrule_inbound_connections_total";
pub const OUTBOUND_CONNECTIONS: &str = "ferrule_outbound_connections_total";
pub const ACTIVE_CONNECTIONS: &str = "ferrule_active_connections";
pub const BYTES: &str = "ferrule_bytes_total";
pub const AUTHZ_DECISIONS: &str = "ferrule_authz_decisions_total";
pub const AUTHZ_TERMINATIONS: &str = "ferrule_authz_terminations_total";
pub const TLS_HANDSHAKE_DURATION: &str = "ferrule_tls_handshake_duration_seconds";
pub const TLS_HANDSHAKES: &str = "ferrule_tls_handshakes_total";
pub const LEAF_EXPIRY: &str = "ferrule_leaf_cert_expiry_timestamp_seconds";
pub const CONNECTIONS_LIMITED: &str = "ferrule_connections_limited_total";
pub const HTTP_REQUESTS: &str = "ferrule_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "ferrule_http_request_duration_seconds";
pub const HTTP_CLIENT_ERRORS: &str = "ferrule_http_client_errors_total";
pub const UPSTREAM_REQUESTS: &str = "ferrule_upstream_requests_total";
pub const UPSTREAM_RETRIES: &str = "ferrule_upstream_retries_total";
pub const UPSTREAM_ACTIVE_TARGET: &str = "ferrule_upstream_active_target";
pub const GATEWAY_CONNECTIONS: &str = "ferrule_gateway_connections_total";
pub const GATEWAY_ROUTED: &str = "ferrule_gateway_routed_total";
pub const GATEWAY_ACTIVE: &str = "ferrule_gateway_active_connections";
pub const GATEWAY_BYTES: &str = "ferrule_gateway_bytes_total";
/// Spans not exported, by `reason` = queue_full, export_failed (`crate::trace`).
pub const TRACE_SPANS_DROPPED: &str = "ferrule_trace_spans_dropped_total";
/// Spans the collector accepted.
pub const TRACE_SPANS_EXPORTED: &str = "ferrule_trace_spans_exported_total";

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the global recorder and returns the handle `/metrics` renders from: every
/// metric described (`# HELP`), and those of this `exporter` whose label values are
/// known in advance registered at zero.
///
/// The exporter keeps every histogram sample until upkeep folds it into its buckets;
/// without upkeep, a sidecar nobody scrapes would grow by a few bytes per request and
/// per handshake for ever. A thread of its own runs it, whatever the runtime is doing.
pub fn install(exporter: Exporter) -> anyhow::Result<PrometheusHandle> {
    let buckets = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), &buckets)?
        .install_recorder()?;
    catalog::describe();
    match exporter {
        Exporter::Sidecar => catalog::register_sidecar(),
        Exporter::Gateway => catalog::register_gateway(),
        Exporter::Both => {
            catalog::register_sidecar();
            catalog::register_gateway();
        }
    }
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        })?;
    Ok(handle)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// What an inbound connection came to: its `result` on `ferrule_inbound_connections_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundOutcome {
    /// Let in: spliced to the app, or served request by request (L7).
    Accepted,
    /// Closed without sending a byte: a TCP health check.
    Probe,
    /// No handshake, a failed or timed-out one, or no usable SVID after it.
    TlsError,
    /// The intentions deny this caller.
    Denied,
    /// Allowed, but the local app could not be reached.
    AppUnreachable,
}

impl InboundOutcome {
    pub const ALL: [InboundOutcome; 5] = [
        InboundOutcome::Accepted,
        InboundOutcome::Probe,
        InboundOutcome::TlsError,
        InboundOutcome::Denied,
        InboundOutcome::AppUnreachable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            InboundOutcome::Accepted => "accepted",
            InboundOutcome::Probe => "probe",
            InboundOutcome::TlsError => "tls_error",
            InboundOutcome::Denied => "denied",
            InboundOutcome::AppUnreachable => "app_unreachable",
        }
    }
}

/// Why dialing one upstream endpoint failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    /// No TCP connection within the connect timeout (or no handshake in it either).
    #[error("connect error")]
    ConnectError,
    /// The handshake failed, no config to make one with, or a resumed session of an
    /// expired certificate.
    #[error("TLS error")]
    TlsError,
    /// A valid mesh member, but not the identity the endpoint is registered as.
    #[error("identity mismatch")]
    IdentityMismatch,
}

impl DialError {
    pub fn label(self) -> &'static str {
        match self {
            DialError::ConnectError => "connect_error",
            DialError::TlsError => "tls_error",
            DialError::IdentityMismatch => "identity_mismatch",
        }
    }
}

/// One outbound attempt: its `result` on `ferrule_outbound_connections_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Connected and proven to be the expected identity.
    Ok,
    /// The upstream has no endpoint to try.
    NoEndpoints,
    Failed(DialError),
}

impl Attempt {
    pub fn label(self) -> &'static str {
        match self {
            Attempt::Ok => "ok",
            Attempt::NoEndpoints => "no_endpoints",
            Attempt::Failed(e) => e.label(),
        }
    }
}

/// Which question an authorization decision answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// May this connection be forwarded at all.
    L4,
    /// May this HTTP request be forwarded.
    L7,
}

/// Records an authorization decision at the moment it is made.
pub fn authz_decision(layer: Layer, allowed: bool, source: &str) {
    let layer = match layer {
        Layer::L4 => "l4",
        Layer::L7 => "l7",
    };
    let decision = if allowed { "allow" } else { "deny" };
    counter!(AUTHZ_DECISIONS, "layer" => layer, "decision" => decision, "source" => source.to_owned())
        .increment(1);
}

/// A status's class label: `2xx`, `5xx`..., `0xx` when no response was sent.
fn status_class(status: u16) -> &'static str {
    const CLASSES: [&str; 6] = ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"];
    CLASSES
        .get(usize::from(status / 100))
        .copied()
        .unwrap_or("0xx")
}

/// Records one finished HTTP request: its status class (`0xx` when no response was
/// sent) and how long it took. `upstream` is the upstream's name outbound and the local
/// service's name inbound (see [`local_service`]): one value per configured listener.
pub fn http_request(direction: Direction, upstream: &str, status: u16, started: Instant) {
    let class = status_class(status);
    let direction = direction.as_str();
    counter!(
        HTTP_REQUESTS,
        "direction" => direction,
        "upstream" => upstream.to_owned(),
        "status" => class
    )
    .increment(1);
    histogram!(HTTP_REQUEST_DURATION, "direction" => direction, "upstream" => upstream.to_owned())
        .record(started.elapsed().as_secs_f64());
}

/// The `upstream` label of inbound HTTP metrics: the local service, as the leaf in
/// force names it (empty before there is one), so a dashboard can put what a service
/// answered and what its callers asked for it side by side.
pub fn local_service(snapshot: &ferrule_control::model::Snapshot) -> String {
    snapshot
        .leaf
        .as_ref()
        .map(|leaf| leaf.id.service.clone())
        .unwrap_or_default()
}

/// What was wrong with a request the proxy answered with a 4xx of its own: the
/// caller's mistake, never the app's or the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// A path that cannot be normalized (bad escape, above the root).
    BadPath,
    /// An escaped slash, refused by `PathWithEscapedSlashesAction`.
    EscapedSlash,
    /// A header name with `_`, refused by `HeadersWithUnderscoresAction`.
    UnderscoreHeader,
    /// A request body that broke off or was malformed (bad chunk size, truncated).
    BadBody,
}

impl ClientError {
    pub fn label(self) -> &'static str {
        match self {
            ClientError::BadPath => "bad_path",
            ClientError::EscapedSlash => "escaped_slash",
            ClientError::UnderscoreHeader => "underscore_header",
            ClientError::BadBody => "bad_body",
        }
    }
}

/// Counts a request refused for the caller's mistake.
pub fn http_client_error(direction: Direction, reason: ClientError) {
    counter!(HTTP_CLIENT_ERRORS, "direction" => direction.as_str(), "reason" => reason.label())
        .increment(1);
}

/// Records a live connection closed because intentions now deny it.
pub fn authz_termination(source: &str) {
    counter!(AUTHZ_TERMINATIONS, "source" => source.to_owned()).increment(1);
}

/// Counts a listener reaching its connection limit (the next connection waits).
pub fn connections_limited(listener: &str) {
    counter!(CONNECTIONS_LIMITED, "listener" => listener.to_owned()).increment(1);
}

/// Counts one outbound dial attempt (or a request that found no endpoint to dial), by
/// the target dialled (empty when there was none).
pub fn outbound_attempt(upstream: &str, target: &str, result: Attempt) {
    counter!(
        OUTBOUND_CONNECTIONS,
        "upstream" => upstream.to_owned(),
        "target" => target.to_owned(),
        "result" => result.label()
    )
    .increment(1);
}

/// Counts one app request answered on an upstream listener, by the target of its last
/// try (empty when none was tried) and the answer's status class.
pub fn upstream_request(upstream: &str, target: &str, status: u16) {
    counter!(
        UPSTREAM_REQUESTS,
        "upstream" => upstream.to_owned(),
        "target" => target.to_owned(),
        "status" => status_class(status)
    )
    .increment(1);
}

/// Counts one request tried again, by the target of the try that failed and the
/// `retry_on` condition it met (Envoy's name for it).
pub fn upstream_retry(upstream: &str, target: &str, reason: &'static str) {
    counter!(
        UPSTREAM_RETRIES,
        "upstream" => upstream.to_owned(),
        "target" => target.to_owned(),
        "reason" => reason
    )
    .increment(1);
}

/// Keeps `ferrule_upstream_active_target` in step with the snapshots: 1 for the
/// target each cluster sends its traffic to (the first with an instance), 0 for its
/// other targets, and 0 for the series of clusters and targets that are gone.
#[derive(Default)]
pub struct ActiveTargets {
    shown: std::collections::HashSet<(String, String, String)>,
}

impl ActiveTargets {
    pub fn update(&mut self, snapshot: &ferrule_control::model::Snapshot) {
        let mut now = std::collections::HashSet::new();
        for upstream in &snapshot.upstreams {
            for cluster in &upstream.routing.clusters {
                let active = cluster.active_target().map(|t| t.id.as_str());
                for target in &cluster.targets {
                    let key = (
                        upstream.name.clone(),
                        cluster.name.clone(),
                        target.id.clone(),
                    );
                    let value = if active == Some(target.id.as_str()) {
                        1.0
                    } else {
                        0.0
                    };
                    active_target_gauge(&key).set(value);
                    now.insert(key);
                }
            }
        }
        for gone in self.shown.difference(&now) {
            active_target_gauge(gone).set(0.0);
        }
        self.shown = now;
    }
}

fn active_target_gauge((upstream, cluster, target): &(String, String, String)) -> metrics::Gauge {
    gauge!(
        UPSTREAM_ACTIVE_TARGET,
        "upstream" => upstream.clone(),
        "cluster" => cluster.clone(),
        "target" => target.clone()
    )
}

/// Records one completed mTLS handshake: how long it took, whether it resumed an
/// earlier session (no certificates sent, signed or verified) or was a full one, and
/// what it negotiated: the TLS version and the ALPN protocol (`none` when nothing was).
pub fn handshake(direction: Direction, session: &rustls::CommonState, started: Instant) {
    histogram!(TLS_HANDSHAKE_DURATION, "direction" => direction.as_str())
        .record(started.elapsed().as_secs_f64());
    let kind = match session.handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => "resumed",
        _ => "full",
    };
    let (version, alpn) = negotiated(session);
    counter!(
        TLS_HANDSHAKES,
        "direction" => direction.as_str(),
        "kind" => kind,
        "version" => version,
        "alpn" => alpn
    )
    .increment(1);
}

/// The `version` and `alpn` labels of a handshake: a handful of fixed values, whatever
/// the peer sent.
pub fn negotiated(session: &rustls::CommonState) -> (&'static str, &'static str) {
    let version = match session.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1_3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1_2",
        _ => "other",
    };
    let alpn = match session.alpn_protocol() {
        None => "none",
        Some(b"h2") => "h2",
        Some(b"http/1.1") => "http/1.1",
        Some(_) => "other",
    };
    (version, alpn)
}

/// Owns one connection's metrics: the active gauge while it lives, and, when it ends,
/// its result counter (set once) and its single access-log line.
pub struct ConnGuard {
    direction: Direction,
    upstream: Option<String>,
    target: Option<String>,
    peer: std::net::SocketAddr,
    started: Instant,
    result: Option<&'static str>,
    identity: Option<String>,
    bytes: Bytes,
}

impl ConnGuard {
    pub fn new(direction: Direction, upstream: Option<String>, peer: std::net::SocketAddr) -> Self {
        gauge!(ACTIVE_CONNECTIONS, "direction" => direction.as_str()).increment(1.0);
        ConnGuard {
            direction,
            upstream,
            target: None,
            peer,
            started: Instant::now(),
            result: None,
            identity: None,
            bytes: Bytes::new(direction),
        }
    }

    /// Counts an inbound connection under `outcome`. Only the first call counts.
    pub fn set_result(&mut self, outcome: InboundOutcome) {
        if self.result.is_some() {
            return;
        }
        self.result = Some(outcome.label());
        counter!(INBOUND_CONNECTIONS, "result" => outcome.label()).increment(1);
    }

    /// Counts one outbound dial attempt; an app connection may take several, one per
    /// endpoint tried, and the last one is what its log line reports.
    pub fn attempt(&mut self, result: Attempt) {
        self.result = Some(result.label());
        let upstream = self.upstream.as_deref().unwrap_or_default();
        outbound_attempt(upstream, self.target.as_deref().unwrap_or_default(), result);
    }

    /// The target the next attempts dial (the `target` label, and the log line's).
    pub fn set_target(&mut self, target: &str) {
        if self.target.as_deref() != Some(target) {
            self.target = Some(target.to_owned());
        }
    }

    pub fn set_identity(&mut self, identity: String) {
        self.identity = Some(identity);
    }

    /// Counters for bytes from (rx) and to (tx) the peer side of this connection.
    pub fn bytes(&self) -> Bytes {
        self.bytes.clone()
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        gauge!(ACTIVE_CONNECTIONS, "direction" => self.direction.as_str()).decrement(1.0);
        // One record per connection: at debug, so a steady state logs nothing at info
        // (probes and refusals are counted in the metrics).
        tracing::debug!(
            target: "ferrule::access",
            direction = self.direction.as_str(),
            peer = %self.peer,
            upstream = self.upstream.as_deref().unwrap_or(""),
            target = self.target.as_deref().unwrap_or(""),
            identity = self.identity.as_deref().unwrap_or(""),
            result = self.result.unwrap_or("closed"),
            duration_ms = self.started.elapsed().as_millis() as u64,
            "connection closed"
        );
    }
}

/// What a connection to a mesh gateway came to: its `result` on
/// `ferrule_gateway_connections_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayOutcome {
    /// Its bytes went to an instance or to another datacenter's gateway.
    Routed,
    /// Closed without sending a byte: a TCP health check.
    Probe,
    /// The first bytes are no TLS handshake record (plaintext, say).
    NotTls,
    /// A TLS record that is no well-formed ClientHello, or one cut short.
    BadHello,
    /// A ClientHello beyond the size the gateway reads.
    HelloTooLarge,
    /// No whole ClientHello within the timeout.
    HelloTimeout,
    /// A ClientHello without a server name.
    NoSni,
    /// A server name the gateway has no route for.
    UnknownSni,
    /// A known service or datacenter with nothing healthy to send to.
    NoEndpoints,
    /// Every instance or gateway tried refused or timed out.
    ConnectError,
}

impl GatewayOutcome {
    pub const ALL: [GatewayOutcome; 10] = [
        GatewayOutcome::Routed,
        GatewayOutcome::Probe,
        GatewayOutcome::NotTls,
        GatewayOutcome::BadHello,
        GatewayOutcome::HelloTooLarge,
        GatewayOutcome::HelloTimeout,
        GatewayOutcome::NoSni,
        GatewayOutcome::UnknownSni,
        GatewayOutcome::NoEndpoints,
        GatewayOutcome::ConnectError,
    ];

    pub fn label(self) -> &'static str {
        match self {
            GatewayOutcome::Routed => "routed",
            GatewayOutcome::Probe => "probe",
            GatewayOutcome::NotTls => "not_tls",
            GatewayOutcome::BadHello => "bad_hello",
            GatewayOutcome::HelloTooLarge => "hello_too_large",
            GatewayOutcome::HelloTimeout => "hello_timeout",
            GatewayOutcome::NoSni => "no_sni",
            GatewayOutcome::UnknownSni => "unknown_sni",
            GatewayOutcome::NoEndpoints => "no_endpoints",
            GatewayOutcome::ConnectError => "connect_error",
        }
    }
}

/// Owns one mesh gateway connection's metrics: the active gauge while it lives, its
/// result (counted once) and where it was routed, and its single access-log line.
pub struct GatewayGuard {
    listener: &'static str,
    peer: std::net::SocketAddr,
    started: Instant,
    sni: Option<String>,
    /// `(datacenter, service)` of the route taken; the service is empty for another
    /// datacenter (its names are the peer's to choose, so never a label).
    route: Option<(String, String)>,
    result: Option<GatewayOutcome>,
    bytes: Bytes,
}

impl GatewayGuard {
    /// A connection accepted on the `lan` or `wan` listener.
    pub fn new(listener: &'static str, peer: std::net::SocketAddr) -> Self {
        gauge!(GATEWAY_ACTIVE, "listener" => listener).increment(1.0);
        GatewayGuard {
            listener,
            peer,
            started: Instant::now(),
            sni: None,
            route: None,
            result: None,
            bytes: Bytes::gateway(),
        }
    }

    pub fn set_sni(&mut self, sni: &str) {
        self.sni = Some(sni.to_owned());
    }

    /// Counts the connection under `outcome`. Only the first call counts.
    pub fn finish(&mut self, outcome: GatewayOutcome) {
        if self.result.is_some() {
            return;
        }
        self.result = Some(outcome);
        counter!(GATEWAY_CONNECTIONS, "listener" => self.listener, "result" => outcome.label())
            .increment(1);
    }

    /// The connection reached `service` in `datacenter` (`""` for another datacenter's
    /// gateways): counted as routed.
    pub fn routed(&mut self, datacenter: &str, service: &str) {
        if self.result.is_some() {
            return;
        }
        counter!(
            GATEWAY_ROUTED,
            "datacenter" => datacenter.to_owned(),
            "service" => service.to_owned()
        )
        .increment(1);
        self.route = Some((datacenter.to_owned(), service.to_owned()));
        self.finish(GatewayOutcome::Routed);
    }

    /// Counters for the bytes from (rx) and back to (tx) the caller.
    pub fn bytes(&self) -> Bytes {
        self.bytes.clone()
    }
}

impl Drop for GatewayGuard {
    fn drop(&mut self) {
        gauge!(GATEWAY_ACTIVE, "listener" => self.listener).decrement(1.0);
        let (datacenter, service) = self.route.clone().unwrap_or_default();
        tracing::debug!(
            target: "ferrule::access",
            direction = "gateway",
            listener = self.listener,
            peer = %self.peer,
            sni = self.sni.as_deref().unwrap_or(""),
            datacenter = %datacenter,
            service = %service,
            result = self.result.map_or("closed", GatewayOutcome::label),
            duration_ms = self.started.elapsed().as_millis() as u64,
            "connection closed"
        );
    }
}

/// `ferrule_bytes_total` handles for one direction, resolved once per connection, and
/// the connection's own totals (for its access-log record).
#[derive(Clone)]
pub struct Bytes {
    rx: Counter,
    tx: Counter,
    totals: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>,
}

impl Bytes {
    fn new(direction: Direction) -> Self {
        Bytes {
            rx: counter!(BYTES, "direction" => direction.as_str(), "flow" => "rx"),
            tx: counter!(BYTES, "direction" => direction.as_str(), "flow" => "tx"),
            totals: Default::default(),
        }
    }

    /// Bytes from (rx) and to (tx) the peer so far.
    pub fn totals(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.totals[0].load(Relaxed), self.totals[1].load(Relaxed))
    }

    fn add(&self, rx: u64, tx: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        if rx > 0 {
            self.rx.increment(rx);
            self.totals[0].fetch_add(rx, Relaxed);
        }
        if tx > 0 {
            self.tx.increment(tx);
            self.totals[1].fetch_add(tx, Relaxed);
        }
    }

    /// `ferrule_gateway_bytes_total`: rx from the callers, tx back to them.
    fn gateway() -> Self {
        Bytes {
            rx: counter!(GATEWAY_BYTES, "flow" => "rx"),
            tx: counter!(GATEWAY_BYTES, "flow" => "tx"),
            totals: Default::default(),
        }
    }

    /// Counts bytes received before the stream was metered (a peeked ClientHello).
    pub fn received(&self, n: usize) {
        self.add(n as u64, 0);
    }
}

/// A stream that counts what is read from it as rx and what is written to it as tx,
/// as it happens, so long-lived connections show up in the counters while they live.
pub struct Metered<S> {
    inner: S,
    bytes: Bytes,
}

impl<S> Metered<S> {
    pub fn new(inner: S, bytes: Bytes) -> Self {
        Metered { inner, bytes }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &poll {
            self.bytes.add((buf.filled().len() - before) as u64, 0);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &poll {
            self.bytes.add(0, *n as u64);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The result labels are a contract: dashboards and the end-to-end tests read them.
    #[test]
    fn outcome_labels_are_the_published_ones() {
        let inbound = [
            (InboundOutcome::Accepted, "accepted"),
            (InboundOutcome::Probe, "probe"),
            (InboundOutcome::TlsError, "tls_error"),
            (InboundOutcome::Denied, "denied"),
            (InboundOutcome::AppUnreachable, "app_unreachable"),
        ];
        for (outcome, label) in inbound {
            assert_eq!(outcome.label(), label);
        }
        let attempts = [
            (Attempt::Ok, "ok"),
            (Attempt::NoEndpoints, "no_endpoints"),
            (Attempt::Failed(DialError::ConnectError), "connect_error"),
            (Attempt::Failed(DialError::TlsError), "tls_error"),
            (
                Attempt::Failed(DialError::IdentityMismatch),
                "identity_mismatch",
            ),
        ];
        for (attempt, label) in attempts {
            assert_eq!(attempt.label(), label);
        }
    }

    /// The gateway's result labels are a contract too.
    #[test]
    fn gateway_outcome_labels_are_the_published_ones() {
        let outcomes = [
            (GatewayOutcome::Routed, "routed"),
            (GatewayOutcome::Probe, "probe"),
            (GatewayOutcome::NotTls, "not_tls"),
            (GatewayOutcome::BadHello, "bad_hello"),
            (GatewayOutcome::HelloTooLarge, "hello_too_large"),
            (GatewayOutcome::HelloTimeout, "hello_timeout"),
            (GatewayOutcome::NoSni, "no_sni"),
            (GatewayOutcome::UnknownSni, "unknown_sni"),
            (GatewayOutcome::NoEndpoints, "no_endpoints"),
            (GatewayOutcome::ConnectError, "connect_error"),
        ];
        for (outcome, label) in outcomes {
            assert_eq!(outcome.label(), label);
        }
    }

    /// The value of `ferrule_upstream_active_target` for `target`.
    fn active(handle: &PrometheusHandle, target: &str) -> Option<String> {
        let label = format!("target=\"{target}\"");
        handle
            .render()
            .lines()
            .find(|l| l.starts_with(UPSTREAM_ACTIVE_TARGET) && l.contains(&label))
            .and_then(|l| l.rsplit(' ').next().map(str::to_owned))
    }

    #[test]
    fn the_active_target_follows_failover_and_forgets_what_left() {
        use ferrule_control::identity::ServiceId;
        use ferrule_control::model::{Endpoint, Snapshot, UpstreamConfig};
        use ferrule_control::routing::{Routing, Target};
        use std::sync::Arc;
        use std::time::Duration;
        let id = ServiceId::new("td.consul", "default", "dc1", "api");
        let endpoint = Endpoint {
            addr: "127.0.0.1:1".into(),
            identity: id.clone(),
        };
        let snapshot = |primary: bool| {
            let instances = |up: bool| {
                if up {
                    vec![endpoint.clone()]
                } else {
                    Vec::new()
                }
            };
            let primary = Target::new(id.clone(), Some("primary"), instances(primary));
            let backup = Target::new(id.clone(), Some("backup"), instances(true));
            let mut routing = Routing::direct(primary, Duration::from_secs(1));
            routing.clusters[0].targets.push(backup);
            Snapshot {
                upstreams: vec![UpstreamConfig {
                    name: "api".into(),
                    bind: "127.0.0.1:2".parse().unwrap(),
                    protocol: ferrule_control::model::Protocol::Tcp,
                    connect_timeout: Duration::from_secs(1),
                    request_timeout: None,
                    idle_timeout: None,
                    max_connections: 1,
                    routing: Arc::new(routing),
                }],
                ..Snapshot::default()
            }
        };
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let (primary, backup) = (
            "primary.api.default.default.dc1",
            "backup.api.default.default.dc1",
        );
        metrics::with_local_recorder(&recorder, || {
            let mut targets = ActiveTargets::default();
            targets.update(&snapshot(false));
            assert_eq!(active(&handle, primary).as_deref(), Some("0"));
            assert_eq!(active(&handle, backup).as_deref(), Some("1"));
            targets.update(&snapshot(true));
            assert_eq!(active(&handle, primary).as_deref(), Some("1"));
            assert_eq!(active(&handle, backup).as_deref(), Some("0"));
            targets.update(&Snapshot::default());
            assert_eq!(active(&handle, primary).as_deref(), Some("0"), "gone: 0");
        });
    }

    fn active_inbound(handle: &PrometheusHandle) -> f64 {
        handle
            .render()
            .lines()
            .find(|l| l.starts_with("ferrule_active_connections{direction=\"inbound\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// A bug that panics in one connection's task stays in that task (tokio catches
    /// it; the release profile keeps `panic = "unwind"`), and the guard's drop during
    /// the unwind gives the connection count back.
    #[test]
    fn a_panicking_connection_task_leaks_no_connection_count() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        metrics::with_local_recorder(&recorder, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
                let healthy = tokio::spawn(async move {
                    let _guard = ConnGuard::new(Direction::Inbound, None, peer);
                    let _ = ready_tx.send(());
                    std::future::pending::<()>().await;
                });
                ready_rx.await.unwrap();
                let buggy = tokio::spawn(async move {
                    let _guard = ConnGuard::new(Direction::Inbound, None, peer);
                    panic!("a bug in one connection");
                });
                assert!(buggy.await.unwrap_err().is_panic());
                assert_eq!(active_inbound(&handle), 1.0, "{}", handle.render());
                assert!(!healthy.is_finished(), "the other connection lives on");
                healthy.abort();
                let _ = healthy.await;
            });
        });
        assert_eq!(active_inbound(&handle), 0.0, "{}", handle.render());
    }
}
