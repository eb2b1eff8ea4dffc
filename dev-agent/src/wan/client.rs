//! The HTTP client one agent uses to talk to another datacenter's agent: the same
//! HTTP API a Consul client would call, plus the internal join and signing endpoints.
//! One pooled hyper client per agent, every exchange bounded in time.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Answers from another agent beyond this are refused (a catalog is far smaller).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// An answer from another agent, whatever its status.
pub(crate) struct Fetched {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Fetched {
    /// `X-Consul-Index`, 0 when absent.
    pub(crate) fn index(&self) -> u64 {
        self.headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The body as `T` when the status is 200; else an error with the status and text.
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        if self.status != StatusCode::OK {
            return Err(format!(
                "answered {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body).trim()
            ));
        }
        serde_json::from_slice(&self.body).map_err(|e| format!("the answer does not parse: {e}"))
    }
}

pub(crate) struct WanClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl WanClient {
    pub(crate) fn new() -> WanClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        WanClient {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }

    /// One exchange with the agent at `addr`; `path_and_query` is already encoded.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Fetched, String> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path_and_query}"))
            .body(Full::new(body))
            .map_err(|e| format!("building the request: {e}"))?;
        *request.headers_mut() = headers;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("{e}"))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok(Fetched {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }

    /// `GET`, any status.
    pub(crate) async fn get(
        &self,
        addr: SocketAddr,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<Fetched, String> {
        self.send(
            addr,
            Method::GET,
            path_and_query,
            HeaderMap::new(),
            Bytes::new(),
            timeout,
        )
        .await
    }

    /// `method` with a JSON body; the answer must be 200 and decode as `T`.
    pub(crate) async fn call_json<B: Serialize, T: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, String> {
        let body = serde_json::to_vec(body).map_err(|e| format!("encoding the request: {e}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.send(addr, method, path, headers, Bytes::from(body), timeout)
            .await?
            .json()
    }
}
