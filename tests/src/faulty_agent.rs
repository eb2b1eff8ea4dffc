//! A fault injector in front of an agent: it forwards every request to the real (dev)
//! agent and, depending on its current mode, hands the proxy the real answer, a 500, or
//! the answer's JSON cut in half. The mode applies when the agent's answer comes back,
//! so a blocking query already in flight is hit too.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// What the injector does to the agent's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// Answers pass through untouched.
    None = 0,
    /// `500 Internal Server Error`, as an agent without a cluster leader answers.
    ServerError = 1,
    /// The real status and headers, the body cut in half (malformed JSON).
    TruncatedJson = 2,
}

struct Shared {
    agent: SocketAddr,
    fault: AtomicU8,
    /// Answers altered so far.
    injected: AtomicUsize,
}

pub struct FaultyAgent {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FaultyAgent {
    /// Listens on a free 127.0.0.1 port and forwards to `agent`.
    pub async fn start(agent: SocketAddr) -> FaultyAgent {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault injector");
        let addr = listener.local_addr().expect("the injector's address");
        let shared = Arc::new(Shared {
            agent,
            fault: AtomicU8::new(Fault::None as u8),
            injected: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        FaultyAgent { addr, shared, task }
    }

    /// The injector as `--consul-addr` takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, fault: Fault) {
        self.shared.fault.store(fault as u8, Ordering::SeqCst);
    }

    /// Answers altered so far.
    pub fn injected(&self) -> usize {
        self.shared.injected.load(Ordering::SeqCst)
    }
}

impl Drop for FaultyAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((tcp, _)) = accepted {
                    let shared = shared.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(forward(&shared, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    });
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    response
}

async fn forward(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match relay(shared.agent, req).await {
        Err(e) => plain(StatusCode::BAD_GATEWAY, &format!("injector: {e:#}")),
        Ok((parts, body)) => {
            let fault = shared.fault.load(Ordering::SeqCst);
            if fault == Fault::ServerError as u8 {
                shared.injected.fetch_add(1, Ordering::SeqCst);
                return plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "No cluster leader (injected)",
                );
            }
            let body = if fault == Fault::TruncatedJson as u8 && body.len() > 1 {
                shared.injected.fetch_add(1, Ordering::SeqCst);
                body.slice(..body.len() / 2)
            } else {
                body
            };
            let mut response = Response::from_parts(parts, Full::new(body));
            // The length changed with the body; hyper sets it from `Full`.
            response.headers_mut().remove(hyper::header::CONTENT_LENGTH);
            response
        }
    }
}

async fn relay(
    agent: SocketAddr,
    req: Request<Incoming>,
) -> anyhow::Result<(hyper::http::response::Parts, Bytes)> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let tcp = TcpStream::connect(agent).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let mut upstream = Request::from_parts(parts, Full::new(body));
    upstream.headers_mut().insert(
        hyper::header::HOST,
        hyper::header::HeaderValue::from_str(&agent.to_string())?,
    );
    let response = sender.send_request(upstream).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((parts, body))
}
