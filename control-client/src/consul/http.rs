//! The HTTP client for the local Consul agent: where the agent is (`--consul-addr`), how
//! to reach it (plain TCP, TLS verified against `--ca-file` or the system roots, a unix
//! socket), the ACL token, and the typed errors of one request.
//!
//! It knows nothing of blocking queries or of what the answers mean (`watch`, `source`).
//! One pooled HTTP/1.1 client serves every watcher: the agent is a single destination, so
//! the connector ignores the request URI and always dials the configured agent.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Consul's default agent address (`api.DefaultConfig`).
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:8500";

/// The header Consul reads the ACL token from.
const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-consul-token");
/// Blocking index of an answer (docs/consul-semantics.md#blocking-queries).
pub(crate) const INDEX_HEADER: &str = "x-consul-index";
/// Hash of `/v1/agent/service/:id` answers, for hash-based blocking (docs/consul-semantics.md#blocking-queries).
pub(crate) const CONTENT_HASH_HEADER: &str = "x-consul-contenthash";
/// The agent's `acl.default_policy`, sent with every answer (docs/consul-semantics.md#agent-api).
pub(crate) const DEFAULT_ACL_POLICY_HEADER: &str = "x-consul-default-acl-policy";

/// Bodies beyond this are refused rather than buffered: a health answer for thousands of
/// instances is a few MiB.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// How much of a Consul error text is kept in an error.
const MAX_ERROR_TEXT: usize = 512;
/// Idle pooled connections are closed after this; the agent closes its own at some point
/// and a stale pooled connection would cost a failed request.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Where the agent listens, as `--consul-addr` / `CONSUL_HTTP_ADDR` spell it (docs/consul-semantics.md#agent-api):
/// `host:port`, `http://host:port[/prefix]`, `https://host:port[/prefix]` or
/// `unix:///path/to/socket`. A path after the host is a prefix for a reverse proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddr {
    Http { authority: String, prefix: String },
    Https { authority: String, prefix: String },
    Unix { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Consul agent address {addr:?}: {reason}")]
pub struct BadAddress {
    pub addr: String,
    pub reason: &'static str,
}

impl FromStr for AgentAddr {
    type Err = BadAddress;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| BadAddress {
            addr: s.to_owned(),
            reason,
        };
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(bad("unix:// needs a socket path"));
            }
            return Ok(AgentAddr::Unix { path: path.into() });
        }
        let (https, rest) = if let Some(rest) = s.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("http://") {
            (false, rest)
        } else if s.contains("://") {
            return Err(bad("the scheme must be http, https or unix"));
        } else {
            (false, s)
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        // `:8500`, as Go's tools read it: this host.
        let authority = match authority.strip_prefix(':') {
            Some(port) => format!("127.0.0.1:{port}"),
            None => authority.to_owned(),
        };
        let authority = authority.as_str();
        // Go's client lets the scheme's port apply when none is given.
        let authority = if has_port(authority) {
            authority.to_owned()
        } else if https {
            format!("{authority}:443")
        } else {
            format!("{authority}:80")
        };
        if authority.parse::<http::uri::Authority>().is_err() {
            return Err(bad("not host:port"));
        }
        let prefix = prefix.to_owned();
        Ok(if https {
            AgentAddr::Https { authority, prefix }
        } else {
            AgentAddr::Http { authority, prefix }
        })
    }
}

fn has_port(authority: &str) -> bool {
    match authority.rsplit_once(':') {
        // `[::1]` has colons but no port; `[::1]:8500` and `host:8500` have one.
        Some((host, port)) => {
            port.chars().all(|c| c.is_ascii_digit())
                && !port.is_empty()
                && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    }
}

impl fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentAddr::Http { authority, prefix } => write!(f, "http://{authority}{prefix}"),
            AgentAddr::Https { authority, prefix } => write!(f, "https://{authority}{prefix}"),
            AgentAddr::Unix { path } => write!(f, "unix://{}", path.display()),
        }
    }
}

/// How to reach and authenticate to the agent: the `--consul-addr`, `--token`,
/// `--token-file` and `--ca-file` flags.
#[derive(Clone)]
pub struct AgentClientConfig {
    pub addr: AgentAddr,
    pub token: Option<String>,
    /// Wins over `token`, as in Consul's CLI; its content is trimmed.
    pub token_file: Option<PathBuf>,
    /// PEM roots for an `https` agent; without it, the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl AgentClientConfig {
    pub fn new(addr: AgentAddr) -> Self {
        AgentClientConfig {
            addr,
            token: None,
            token_file: None,
            ca_file: None,
        }
    }
}

/// The token never reaches a log line.
impl fmt::Debug for AgentClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentClientConfig")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Why a client could not be built: each names the flag's value at fault.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error("cannot read token file {path}: {source}")]
    TokenFile { path: PathBuf, source: io::Error },
    #[error("the ACL token contains characters that cannot go in an HTTP header")]
    BadToken,
    #[error("CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("TLS for the agent: {0}")]
    Tls(String),
}

/// What went wrong with one request to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot reach the Consul agent at {addr} ({path}): {message}")]
    Transport {
        addr: String,
        path: String,
        message: String,
    },
    #[error("the Consul agent at {addr} did not answer {path} within {after:?}")]
    Timeout {
        addr: String,
        path: String,
        after: Duration,
    },
    /// Consul's error bodies are plain text, kept here (shortened).
    #[error("the Consul agent answered {path} with {status}: {text}")]
    Status {
        path: String,
        status: StatusCode,
        text: String,
    },
    #[error("cannot decode the agent's answer to {path} at {at}: {message}")]
    Decode {
        path: String,
        at: String,
        message: String,
    },
}

impl AgentError {
    /// The agent refused the request (4xx): retrying as is will not help.
    pub fn is_refused(&self) -> bool {
        matches!(self, AgentError::Status { status, .. } if status.is_client_error())
    }
}

/// A successful (2xx) answer.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    /// `X-Consul-Index`; missing or unparseable reads as 0 (docs/consul-semantics.md#blocking-queries).
    pub(crate) fn index(&self) -> u64 {
        header_str(&self.headers, INDEX_HEADER)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    pub(crate) fn content_hash(&self) -> Option<String> {
        header_str(&self.headers, CONTENT_HASH_HEADER)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }
}

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Decodes a JSON body, naming the JSON path of the first problem.
pub(crate) fn decode<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, AgentError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| AgentError::Decode {
        path: path.to_owned(),
        at: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

/// A client for one agent. Cheap to clone; every clone shares the connection pool.
#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client<Connector, Full<Bytes>>,
    /// `http://<authority><prefix>`: what request URIs start with. The connector decides
    /// how the bytes travel, so the scheme here is always `http`.
    base: String,
    token: Option<HeaderValue>,
    addr: String,
    /// Bumped whenever a request through this client fails to reach the agent (refused,
    /// cut off, timed out). The agent may be restarting: its indexes may be lower than
    /// the ones other watchers hold (see `watch`).
    outages: tokio::sync::watch::Sender<u64>,
}

impl fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentClient")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl AgentClient {
    /// Reads the token file and CA file now, so a mistake in either is a start-up error.
    pub fn new(
        config: &AgentClientConfig,
        provider: Arc<CryptoProvider>,
    ) -> Result<AgentClient, ClientConfigError> {
        let token = match (&config.token_file, &config.token) {
            (Some(path), _) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| ClientConfigError::TokenFile {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_owned(),
            ),
            (None, Some(token)) => Some(token.trim().to_owned()),
            (None, None) => None,
        };
        let token = match token.filter(|t| !t.is_empty()) {
            Some(t) => {
                let mut value =
                    HeaderValue::from_str(&t).map_err(|_| ClientConfigError::BadToken)?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let (target, base) = match &config.addr {
            AgentAddr::Http { authority, prefix } => (
                Target::Tcp(authority.clone()),
                format!("http://{authority}{prefix}"),
            ),
            AgentAddr::Https { authority, prefix } => {
                let tls = tls_config(config.ca_file.as_deref(), provider)?;
                let host = authority
                    .rsplit_once(':')
                    .map_or(authority.as_str(), |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let server_name = ServerName::try_from(host.to_owned())
                    .map_err(|e| ClientConfigError::Tls(format!("server name {host:?}: {e}")))?;
                (
                    Target::Tls {
                        authority: authority.clone(),
                        server_name,
                        connector: tokio_rustls::TlsConnector::from(Arc::new(tls)),
                    },
                    format!("http://{authority}{prefix}"),
                )
            }
            AgentAddr::Unix { path } => (Target::Unix(path.clone()), "http://localhost".into()),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(Connector {
                target: Arc::new(target),
            });
        Ok(AgentClient {
            inner: Arc::new(Inner {
                client,
                base,
                token,
                addr: config.addr.to_string(),
                outages: tokio::sync::watch::Sender::new(0),
            }),
        })
    }

    /// The agent's address, for logs.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Changes whenever a request through this client (or a clone) could not reach the
    /// agent.
    pub(crate) fn outages(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.outages.subscribe()
    }

    /// `GET path?query`. `path` must already be percent-encoded (see [`path_segment`]);
    /// query values are encoded here. A non-2xx answer is an [`AgentError::Status`].
    pub(crate) async fn get(
        &self,
        path: &str,
        query: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Answer, AgentError> {
        self.read(path, query, None, timeout).await
    }

    /// A read: `GET path?query`, or a `POST` of `body` (JSON) when there is one, as
    /// `/v1/discovery-chain/:service` takes its overrides. A non-2xx answer is an
    /// [`AgentError::Status`].
    pub(crate) async fn read(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Answer, AgentError> {
        let method = if body.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        let (status, answer) = self
            .send(method, path, query, body.unwrap_or_default(), timeout)
            .await?;
        ok_or_status(path, status, answer)
    }

    /// `GET` and decode a JSON answer.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<T, AgentError> {
        let answer = self.get(path, query, timeout).await?;
        decode(path, &answer.body)
    }

    /// `PUT` a JSON body (registrations, config entries); the answer's body is returned
    /// as is (`true` for most of Consul's write endpoints).
    pub async fn put_json<B: serde::Serialize>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: &B,
        timeout: Duration,
    ) -> Result<Bytes, AgentError> {
        let body = serde_json::to_vec(body).map_err(|e| AgentError::Decode {
            path: path.to_owned(),
            at: ".".into(),
            message: format!("cannot encode the request: {e}"),
        })?;
        let (status, answer) = self
            .send(Method::PUT, path, query, Bytes::from(body), timeout)
            .await?;
        ok_or_status(path, status, answer).map(|a| a.body)
    }

    /// Any status: the caller reads what it needs (e.g. the headers of a 403).
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, Answer), AgentError> {
        let inner = &self.inner;
        let mut uri = format!("{}{}", inner.base, path);
        for (i, (k, v)) in query.iter().enumerate() {
            uri.push(if i == 0 { '?' } else { '&' });
            uri.push_str(&encode_component(k));
            if !v.is_empty() {
                uri.push('=');
                uri.push_str(&encode_component(v));
            }
        }
        let transport = |message: String| AgentError::Transport {
            addr: inner.addr.clone(),
            path: path.to_owned(),
            message,
        };
        let uri: Uri = uri
            .parse()
            .map_err(|e: http::uri::InvalidUri| transport(format!("bad request URI: {e}")))?;
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = &inner.token {
            request = request.header(TOKEN_HEADER, token.clone());
        }
        if !body.is_empty() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| transport(e.to_string()))?;
        let exchange = async {
            let response = inner
                .client
                .request(request)
                .await
                .map_err(|e| transport(error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| transport(format!("reading the body: {e}")))?
                .to_bytes();
            Ok((
                parts.status,
                Answer {
                    headers: parts.headers,
                    body,
                },
            ))
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(AgentError::Timeout {
                addr: inner.addr.clone(),
                path: path.to_owned(),
                after: timeout,
            }),
        };
        if matches!(
            result,
            Err(AgentError::Transport { .. } | AgentError::Timeout { .. })
        ) {
            inner.outages.send_modify(|n| *n = n.wrapping_add(1));
        }
        result
    }
}

fn ok_or_status(path: &str, status: StatusCode, answer: Answer) -> Result<Answer, AgentError> {
    if status.is_success() {
        return Ok(answer);
    }
    let text = String::from_utf8_lossy(&answer.body);
    let mut text = text.trim().to_owned();
    if text.len() > MAX_ERROR_TEXT {
        let mut cut = MAX_ERROR_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    Err(AgentError::Status {
        path: path.to_owned(),
        status,
        text,
    })
}

/// hyper-util's errors say "client error (Connect)" and keep the cause in the chain.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Percent-encodes one path segment or query component (everything but RFC 3986's
/// unreserved characters), so a service name can never change the request's shape.
pub(crate) fn path_segment(s: &str) -> String {
    encode_component(s)
}

fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// rustls settings for the agent's HTTPS listener: the CA file's roots if given, else the
/// system's (as Consul's Go client does), HTTP/1.1 only.
fn tls_config(
    ca_file: Option<&Path>,
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ClientConfig, ClientConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let ca_err = |reason: String| ClientConfigError::CaFile {
                path: path.to_owned(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_err("no certificate in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "skipping part of the system trust store");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no system trust roots found: the https agent cannot be verified; pass --ca-file"
                );
            }
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientConfigError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

enum Target {
    Tcp(String),
    Tls {
        authority: String,
        server_name: ServerName<'static>,
        connector: tokio_rustls::TlsConnector,
    },
    Unix(PathBuf),
}

/// Dials the one agent whatever the request URI says.
#[derive(Clone)]
struct Connector {
    target: Arc<Target>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<AgentStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let target = self.target.clone();
        Box::pin(async move {
            let stream = match &*target {
                Target::Tcp(authority) => {
                    let tcp = TcpStream::connect(authority.as_str()).await?;
                    tcp.set_nodelay(true)?;
                    AgentStream::Tcp(tcp)
                }
                Target::Tls {
                    authority,
                    server_name,
                    connector,
                } => {
                    let tcp = TcpStream::connect(authority.as_str()).await?;
                    tcp.set_nodelay(true)?;
                    let tls = connector.connect(server_name.clone(), tcp).await?;
                    AgentStream::Tls(Box::new(tls))
                }
                #[cfg(unix)]
                Target::Unix(path) => {
                    AgentStream::Unix(tokio::net::UnixStream::connect(path).await?)
                }
                #[cfg(not(unix))]
                Target::Unix(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "unix sockets are not supported on this platform",
                    ));
                }
            };
            Ok(TokioIo::new(stream))
        })
    }
}

enum AgentStream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Connection for AgentStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

macro_rules! each_stream {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            AgentStream::Tcp($s) => $e,
            AgentStream::Tls($s) => $e,
            #[cfg(unix)]
            AgentStream::Unix($s) => $e,
        }
    };
}

impl AsyncRead for AgentStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each_stream!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for AgentStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each_stream!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_stream!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_stream!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests;
