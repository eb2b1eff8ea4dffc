//! The application on either side of a sidecar in the Envoy tests: an HTTP server that
//! speaks HTTP/1.1 and h2c, records every request and echoes POST bodies; a client
//! holding one HTTP/1.1 keep-alive or h2c connection to an upstream listener; and a TCP
//! exchange that half-closes after sending.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::backends::Seen;

/// How long one request may take end to end.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Echoes a POST body, answers anything else with its path; records every request.
pub struct EchoApp {
    addr: SocketAddr,
    seen: Arc<parking_lot::Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl EchoApp {
    pub async fn start() -> EchoApp {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the echo app on 127.0.0.1:0");
        let addr = listener.local_addr().expect("echo app address");
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((tcp, _)) = accepted {
                            connections.spawn(serve(tcp, log.clone()));
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        EchoApp { addr, seen, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().len()
    }
}

impl Drop for EchoApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(tcp: TcpStream, log: Arc<parking_lot::Mutex<Vec<Seen>>>) {
    let service = service_fn(move |req: Request<Incoming>| {
        let log = log.clone();
        async move {
            let path = req
                .uri()
                .path_and_query()
                .map_or_else(String::new, |p| p.to_string());
            log.lock().push(Seen {
                method: req.method().to_string(),
                path: path.clone(),
                version: req.version(),
                headers: req.headers().clone(),
            });
            let body = if req.method() == Method::POST {
                req.into_body()
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default()
            } else {
                Bytes::from(path)
            };
            Ok::<_, Infallible>(Response::new(Full::new(body)))
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tcp), service)
        .await;
}

/// An answer: status, headers and the whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One connection an app holds to its upstream listener: HTTP/1.1 keep-alive, or
/// HTTP/2 with prior knowledge (h2c).
pub struct AppClient {
    sender: Sender,
    connection: JoinHandle<()>,
}

impl AppClient {
    pub async fn connect(addr: SocketAddr, http2: bool) -> anyhow::Result<AppClient> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        let io = TokioIo::new(tcp);
        let (sender, connection) = if http2 {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            let task = tokio::spawn(async move {
                let _ = conn.await;
            });
            (Sender::Http2(sender), task)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            let task = tokio::spawn(async move {
                let _ = conn.await;
            });
            (Sender::Http1(sender), task)
        };
        Ok(AppClient { sender, connection })
    }

    pub async fn get(&mut self, path: &str) -> anyhow::Result<Answer> {
        self.call(Method::GET, path, Bytes::new()).await
    }

    pub async fn post(&mut self, path: &str, body: Bytes) -> anyhow::Result<Answer> {
        self.call(Method::POST, path, body).await
    }

    async fn call(&mut self, method: Method, path: &str, body: Bytes) -> anyhow::Result<Answer> {
        // HTTP/1.1 sends the origin form; HTTP/2 needs a scheme and an authority.
        let uri = match self.sender {
            Sender::Http1(_) => path.to_owned(),
            Sender::Http2(_) => format!("http://upstream{path}"),
        };
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::HOST, "upstream")
            .body(Full::new(body))?;
        let exchange = async {
            let response = match &mut self.sender {
                Sender::Http1(s) => {
                    s.ready().await?;
                    s.send_request(request).await?
                }
                Sender::Http2(s) => {
                    s.ready().await?;
                    s.send_request(request).await?
                }
            };
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok(Answer {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .with_context(|| format!("no answer within {CALL_TIMEOUT:?}"))?
    }
}

impl Drop for AppClient {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// `len` bytes that are not all alike, so a shifted or truncated copy shows.
pub fn payload(len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(len as u64);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// Connects to `addr`, sends `data`, closes the write side (a half-close), and reads
/// until the far end closes: what came back. Reading runs while writing, so an echo of
/// any size flows. A reset after nothing came back counts as an empty answer.
pub async fn tcp_exchange(addr: SocketAddr, data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        let (mut reader, mut writer) = tcp.into_split();
        let send = async {
            // A peer that closes early makes writing fail; what was read still counts.
            if writer.write_all(data).await.is_ok() {
                let _ = writer.shutdown().await;
            }
        };
        let receive = async {
            let mut back = Vec::new();
            match reader.read_to_end(&mut back).await {
                Ok(_) => Ok(back),
                Err(_) if back.is_empty() => Ok(back),
                Err(e) => Err(anyhow::Error::from(e).context("reading the answer")),
            }
        };
        let ((), back) = tokio::join!(send, receive);
        back
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .with_context(|| format!("the exchange with {addr} took over {CALL_TIMEOUT:?}"))?
}
