//! A plain HTTP/1.1 exchange with a loopback endpoint (an admin listener, the dev
//! agent), bounded in time. One connection per request: these are control calls, not
//! traffic under test.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long one exchange may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A response: its status and body (lossily decoded), plus `X-Consul-Index` if present.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub consul_index: Option<u64>,
}

impl Answer {
    /// The body as JSON, when the status is 200.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        anyhow::ensure!(
            self.status == 200,
            "answered {}: {}",
            self.status,
            self.body
        );
        serde_json::from_str(&self.body).context("the body is not JSON")
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Answer> {
    request(addr, Method::GET, path, Bytes::new()).await
}

pub async fn put_json(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<Answer> {
    request(addr, Method::PUT, path, Bytes::from(body.to_string())).await
}

pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
) -> anyhow::Result<Answer> {
    request_within(addr, method, path, body, TIMEOUT).await
}

/// `GET path`, bounded by `timeout` instead of the usual 5 s: a blocking query.
pub async fn get_within(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<Answer> {
    request_within(addr, Method::GET, path, Bytes::new(), timeout).await
}

async fn request_within(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> anyhow::Result<Answer> {
    let what = format!("{method} {path} on {addr}");
    tokio::time::timeout(timeout, exchange(addr, method, path, body))
        .await
        .map_err(|_| anyhow::anyhow!("{what}: no answer within {timeout:?}"))?
        .with_context(|| what)
}

async fn exchange(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
) -> anyhow::Result<Answer> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let consul_index = response
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        consul_index,
    })
}
