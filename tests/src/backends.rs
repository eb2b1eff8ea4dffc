//! The local applications behind a sidecar: an HTTP echo server, an HTTP recorder
//! (HTTP/1.1 and h2c), a TCP echo server, and the named backends the routing tests
//! use (an HTTP server that names itself in a header and fails or dawdles on request,
//! a TCP server that answers with its name), all on 127.0.0.1:0, all counting what
//! reached them. They run on the test's tokio runtime and stop when dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// What the HTTP echo server answers to a GET.
pub const GET_BODY: &str = "hello from the api backend\n";

/// Answers POST with the request body and anything else with `GET_BODY`.
pub struct HttpEcho {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl HttpEcho {
    pub async fn start() -> HttpEcho {
        let listener = bind_loopback().await;
        let addr = listener.local_addr().expect("echo listener address");
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(accept_loop(listener, move |tcp| {
            let counter = counter.clone();
            async move {
                let service = service_fn(move |req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    echo(req)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            }
        }));
        HttpEcho {
            addr,
            requests,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// HTTP requests served so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for HttpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = if req.method() == Method::POST {
        match req.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::new(),
        }
    } else {
        Bytes::from_static(GET_BODY.as_bytes())
    };
    Ok(Response::new(Full::new(body)))
}

/// One request as the application received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, exactly as they arrived.
    pub path: String,
    pub version: hyper::Version,
    pub headers: hyper::HeaderMap,
}

/// Records every request and answers it 200 with its path and query as the body
/// (`/sleep/<ms>` after that many milliseconds).
/// Speaks HTTP/1.1 and HTTP/2 with prior knowledge, as an app behind an `http`,
/// `http2` or `grpc` sidecar may.
pub struct HttpRecorder {
    addr: SocketAddr,
    seen: Arc<parking_lot::Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl HttpRecorder {
    pub async fn start() -> HttpRecorder {
        let listener = bind_loopback().await;
        let addr = listener.local_addr().expect("recorder listener address");
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(accept_loop(listener, move |tcp| {
            let log = log.clone();
            async move {
                let service = service_fn(move |req: Request<Incoming>| {
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
                    // `/sleep/<ms>` answers that late: an app that is slow to respond.
                    let delay = path
                        .strip_prefix("/sleep/")
                        .and_then(|ms| ms.parse().ok())
                        .map(std::time::Duration::from_millis);
                    async move {
                        if let Some(delay) = delay {
                            tokio::time::sleep(delay).await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(path))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(tcp), service)
                .await;
            }
        }));
        HttpRecorder { addr, seen, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    /// How many requests were received so far.
    pub fn count(&self) -> usize {
        self.seen.lock().len()
    }
}

impl Drop for HttpRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Echoes every byte back and counts connections and bytes, so a test can prove that
/// nothing reached the application.
pub struct TcpEcho {
    addr: SocketAddr,
    stats: Arc<TcpStats>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct TcpStats {
    accepted: AtomicUsize,
    bytes_received: AtomicU64,
}

impl TcpEcho {
    pub async fn start() -> TcpEcho {
        TcpEcho::serve(bind_loopback().await)
    }

    /// On a given address (an app restarting on its port); fails if it is taken.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<TcpEcho> {
        Ok(TcpEcho::serve(TcpListener::bind(addr).await?))
    }

    fn serve(listener: TcpListener) -> TcpEcho {
        let addr = listener.local_addr().expect("echo listener address");
        let stats = Arc::new(TcpStats::default());
        let shared = stats.clone();
        let task = tokio::spawn(accept_loop(listener, move |mut tcp| {
            let stats = shared.clone();
            async move {
                stats.accepted.fetch_add(1, Ordering::SeqCst);
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    stats.bytes_received.fetch_add(n as u64, Ordering::SeqCst);
                    if tcp.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = tcp.shutdown().await;
            }
        }));
        TcpEcho { addr, stats, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    /// Bytes received over all connections so far.
    pub fn bytes_received(&self) -> u64 {
        self.stats.bytes_received.load(Ordering::SeqCst)
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The response header in which a [`NamedHttp`] names itself.
pub const NAME_HEADER: &str = "x-backend-name";
/// `<key>:<n>` asks a [`NamedHttp`] to answer 503 to the first `n` requests that carry
/// this key, and 200 after that: an app that fails a few times, then recovers.
pub const FAIL_HEADER: &str = "x-fail";
/// Milliseconds a [`NamedHttp`] waits before it answers: a slow app.
pub const DELAY_HEADER: &str = "x-delay-ms";

/// An HTTP app (HTTP/1.1 and h2c) that names itself in [`NAME_HEADER`] and in its body
/// (`<name> <path>`), records every request, and fails or dawdles when a request asks
/// it to ([`FAIL_HEADER`], [`DELAY_HEADER`]). Routing tests tell from the header which
/// instance a request reached.
pub struct NamedHttp {
    name: String,
    addr: SocketAddr,
    state: Arc<NamedState>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct NamedState {
    seen: parking_lot::Mutex<Vec<Seen>>,
    /// How many 503s were answered so far, per key of `FAIL_HEADER`.
    failed: parking_lot::Mutex<std::collections::HashMap<String, u32>>,
}

impl NamedHttp {
    pub async fn start(name: &str) -> NamedHttp {
        let listener = bind_loopback().await;
        let addr = listener.local_addr().expect("named backend's address");
        let state = Arc::new(NamedState::default());
        let label = hyper::header::HeaderValue::from_str(name)
            .unwrap_or_else(|e| panic!("backend name {name:?} is not a header value: {e}"));
        let shared = state.clone();
        let task = tokio::spawn(accept_loop(listener, move |tcp| {
            let (state, label) = (shared.clone(), label.clone());
            async move {
                let service =
                    service_fn(move |req| named_answer(label.clone(), state.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(tcp), service)
                .await;
            }
        }));
        NamedHttp {
            name: name.to_owned(),
            addr,
            state,
            task,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().clone()
    }

    /// How many requests were received so far.
    pub fn count(&self) -> usize {
        self.state.seen.lock().len()
    }

    /// Stops serving: the port refuses connections from now on and open connections
    /// are closed, as when the app exits.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// How many requests whose path (with its query) starts with `prefix`.
    pub fn count_path(&self, prefix: &str) -> usize {
        let seen = self.state.seen.lock();
        seen.iter().filter(|s| s.path.starts_with(prefix)).count()
    }
}

impl Drop for NamedHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn named_answer(
    name: hyper::header::HeaderValue,
    state: Arc<NamedState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(String::new, |p| p.to_string());
    state.seen.lock().push(Seen {
        method: req.method().to_string(),
        path: path.clone(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    let fail = take_failure(&state, req.headers());
    let delay = req
        .headers()
        .get(DELAY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_millis);
    let _ = req.into_body().collect().await;
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let body = format!("{} {path}", String::from_utf8_lossy(name.as_bytes()));
    let mut response = Response::new(Full::new(Bytes::from(body)));
    if fail {
        *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
    }
    response.headers_mut().insert(NAME_HEADER, name);
    Ok(response)
}

/// Whether this request is one of the first `n` of its `FAIL_HEADER` key (and counts it).
fn take_failure(state: &NamedState, headers: &hyper::HeaderMap) -> bool {
    let Some((key, n)) = headers
        .get(FAIL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit_once(':'))
        .and_then(|(key, n)| Some((key, n.parse::<u32>().ok()?)))
    else {
        return false;
    };
    let mut failed = state.failed.lock();
    let count = failed.entry(key.to_owned()).or_insert(0);
    if *count < n {
        *count += 1;
        true
    } else {
        false
    }
}

/// A TCP app that answers every line it receives with its own name and a newline, so a
/// test can tell which instance an L4 connection reached. Counts connections.
pub struct NamedTcp {
    name: String,
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl NamedTcp {
    pub async fn start(name: &str) -> NamedTcp {
        let listener = bind_loopback().await;
        let addr = listener.local_addr().expect("named TCP backend's address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (counter, reply) = (accepted.clone(), format!("{name}\n"));
        let task = tokio::spawn(accept_loop(listener, move |tcp| {
            let (counter, reply) = (counter.clone(), reply.clone());
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let (read, mut write) = tcp.into_split();
                let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(read));
                while let Ok(Some(_)) = lines.next_line().await {
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
                let _ = write.shutdown().await;
            }
        }));
        NamedTcp {
            name: name.to_owned(),
            addr,
            accepted,
            task,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for NamedTcp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn bind_loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a backend on 127.0.0.1:0")
}

/// Accepts forever, one task per connection. The connection tasks live in a `JoinSet`
/// owned by this future, so aborting it stops them all.
/// Accepts on `listener` for as long as the task runs, each connection served by
/// `serve` in a task of its own (aborted with this one). A failed accept (a connection
/// reset before it was taken, descriptors running out for a moment) is skipped, never
/// the end of the loop: a listener that closed mid-test would refuse every later
/// connection and fail a test for the wrong reason.
pub async fn accept_loop<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                match accepted {
                    Ok((tcp, _)) => {
                        connections.spawn(serve(tcp));
                    }
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
