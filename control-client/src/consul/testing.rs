//! Test agents for the watcher and the source: small hyper servers on loopback.
//!
//! `ScriptedAgent` answers a programmed sequence of replies, one per request, whatever
//! the path, and then holds every further request open, as a blocking query with nothing
//! new would. `FakeAgent` serves canned JSON per path with real blocking semantics (an
//! index per path that the test bumps by changing the body), so a source under test sees
//! what it would see from a real agent. A path set as `path?dc=<dc>` answers the reads
//! of that datacenter.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// One programmed answer.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    status: u16,
    body: String,
    index: Option<u64>,
    hash: Option<String>,
    delay: Duration,
}

impl Reply {
    pub(crate) fn json(index: u64, body: &str) -> Reply {
        Reply {
            status: 200,
            body: body.to_owned(),
            index: Some(index),
            hash: None,
            delay: Duration::ZERO,
        }
    }

    pub(crate) fn status(status: u16, text: &str) -> Reply {
        Reply {
            status,
            body: text.to_owned(),
            index: None,
            hash: None,
            delay: Duration::ZERO,
        }
    }

    pub(crate) fn without_index(mut self) -> Reply {
        self.index = None;
        self
    }

    pub(crate) fn hash(mut self, hash: &str) -> Reply {
        self.hash = Some(hash.to_owned());
        self
    }

    pub(crate) fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let mut builder = Response::builder()
            .status(self.status)
            .header("X-Consul-Default-ACL-Policy", "allow");
        if let Some(index) = self.index {
            builder = builder.header("X-Consul-Index", index.to_string());
        }
        if let Some(hash) = &self.hash {
            builder = builder.header("X-Consul-ContentHash", hash.as_str());
        }
        builder
            .body(Full::new(Bytes::from(self.body.clone())))
            .unwrap()
    }
}

/// Serves `handle` on `listener` until the returned task is aborted; aborting it closes
/// every open connection too.
pub(crate) fn serve<H, F>(listener: TcpListener, handle: H) -> tokio::task::JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            conns.spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let f = handle(req);
                    async move { Ok::<_, Infallible>(f.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Replies in order, one per request, then holds requests open.
pub(crate) struct ScriptedAgent {
    addr: SocketAddr,
    queries: Arc<Mutex<Vec<String>>>,
    /// The method and body of every request, in order.
    bodies: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The method and the body (as text) of a request.
async fn method_and_body(req: Request<Incoming>) -> (String, String) {
    use http_body_util::BodyExt;
    let method = req.method().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    (method, body)
}

impl ScriptedAgent {
    pub(crate) async fn start(replies: Vec<Reply>) -> ScriptedAgent {
        Self::start_on("127.0.0.1:0".parse().unwrap(), replies).await
    }

    pub(crate) async fn start_on(addr: SocketAddr, replies: Vec<Reply>) -> ScriptedAgent {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(replies.into_iter()));
        let (seen, seen_bodies) = (queries.clone(), bodies.clone());
        let task = serve(listener, move |req: Request<Incoming>| {
            seen.lock()
                .push(req.uri().query().unwrap_or_default().to_owned());
            let reply = script.lock().next();
            let seen_bodies = seen_bodies.clone();
            async move {
                let sent = method_and_body(req).await;
                seen_bodies.lock().push(sent);
                match reply {
                    Some(reply) => {
                        tokio::time::sleep(reply.delay).await;
                        reply.response()
                    }
                    None => std::future::pending().await,
                }
            }
        });
        ScriptedAgent {
            addr,
            queries,
            bodies,
            task,
        }
    }

    /// Every answer changes, at once: a resource that never stops flapping.
    pub(crate) async fn flapping() -> ScriptedAgent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let seen = queries.clone();
        let task = serve(listener, move |req: Request<Incoming>| {
            let n = {
                let mut seen = seen.lock();
                seen.push(req.uri().query().unwrap_or_default().to_owned());
                seen.len() as u64
            };
            async move { Reply::json(n, &format!(r#"{{"V":{n}}}"#)).response() }
        });
        ScriptedAgent {
            addr,
            queries,
            bodies: Arc::default(),
            task,
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The query string of every request so far, in order.
    pub(crate) fn queries(&self) -> Vec<String> {
        self.queries.lock().clone()
    }

    /// The method and body of every request whose body has been read, in order.
    pub(crate) fn bodies(&self) -> Vec<(String, String)> {
        self.bodies.lock().clone()
    }

    /// Waits (at most 5 s) until `n` requests have arrived, and returns their queries:
    /// the watcher sends an update before it makes its next request.
    pub(crate) async fn wait_queries(&self, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let queries = self.queries();
            if queries.len() >= n || tokio::time::Instant::now() > deadline {
                return queries;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Closes the listener and every connection, as a killed agent would.
    pub(crate) async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for ScriptedAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, Clone)]
struct Resource {
    index: u64,
    status: u16,
    body: String,
}

#[derive(Default)]
struct FakeState {
    resources: HashMap<String, Resource>,
    next_index: u64,
    requests: Vec<String>,
    /// `(path, body)` of every `POST`.
    posts: Vec<(String, String)>,
    acl_default: Option<String>,
}

/// Canned JSON per path, with blocking queries: a request whose `index` (or `hash`) is
/// the resource's current one is held until the resource changes or `wait` passes.
#[derive(Clone)]
pub(crate) struct FakeAgent {
    addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
    changes: watch::Sender<u64>,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl FakeAgent {
    pub(crate) async fn start() -> FakeAgent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState {
            next_index: 10,
            acl_default: Some("allow".into()),
            ..Default::default()
        }));
        let (changes, _) = watch::channel(0u64);
        let (st, ch) = (state.clone(), changes.clone());
        let task = serve(listener, move |req: Request<Incoming>| {
            let (state, changes) = (st.clone(), ch.clone());
            async move { answer(&state, &changes, req).await }
        });
        FakeAgent {
            addr,
            state,
            changes,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets what `path` answers (200 with this JSON); a new body gets a new index.
    pub(crate) fn set(&self, path: &str, body: impl serde::Serialize) {
        self.set_status(path, 200, serde_json::to_string(&body).unwrap());
    }

    pub(crate) fn set_status(&self, path: &str, status: u16, body: String) {
        {
            let mut s = self.state.lock();
            s.next_index += 1;
            let index = s.next_index;
            s.resources.insert(
                path.to_owned(),
                Resource {
                    index,
                    status,
                    body,
                },
            );
        }
        self.changes.send_modify(|v| *v += 1);
    }

    pub(crate) fn remove(&self, path: &str) {
        self.state.lock().resources.remove(path);
        self.changes.send_modify(|v| *v += 1);
    }

    pub(crate) fn set_acl_default(&self, policy: Option<&str>) {
        self.state.lock().acl_default = policy.map(str::to_owned);
    }

    /// `path?query` of every request so far.
    pub(crate) fn requests(&self) -> Vec<String> {
        self.state.lock().requests.clone()
    }

    /// `(path, body)` of every `POST` so far.
    pub(crate) fn posts(&self) -> Vec<(String, String)> {
        self.state.lock().posts.clone()
    }
}

async fn answer(
    state: &Mutex<FakeState>,
    changes: &watch::Sender<u64>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    state.lock().requests.push(if query.is_empty() {
        path.clone()
    } else {
        format!("{path}?{query}")
    });
    let (method, body) = method_and_body(req).await;
    if method == "POST" {
        state.lock().posts.push((path.clone(), body));
    }
    let params: HashMap<&str, &str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let seen: Option<u64> = params
        .get("index")
        .or_else(|| params.get("hash"))
        .and_then(|v| v.parse().ok());
    let wait = params.get("wait").map_or(Duration::from_secs(300), |w| {
        if let Some(ms) = w.strip_suffix("ms") {
            Duration::from_millis(ms.parse().unwrap_or(0))
        } else {
            Duration::from_secs(w.trim_end_matches('s').parse().unwrap_or(0))
        }
    });
    // A read of another datacenter has its own canned answer, when one is set.
    let path = match params.get("dc") {
        Some(dc)
            if state
                .lock()
                .resources
                .contains_key(&format!("{path}?dc={dc}")) =>
        {
            format!("{path}?dc={dc}")
        }
        _ => path,
    };
    let mut rx = changes.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let current = state.lock().resources.get(&path).cloned();
        let blocked = matches!((&current, seen), (Some(r), Some(i)) if r.index == i);
        if !blocked {
            break;
        }
        tokio::select! {
            _ = rx.changed() => {}
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    let s = state.lock();
    let mut builder = Response::builder();
    if let Some(policy) = &s.acl_default {
        builder = builder.header("X-Consul-Default-ACL-Policy", policy.as_str());
    }
    match s.resources.get(&path) {
        Some(r) => builder
            .status(r.status)
            .header("X-Consul-Index", r.index.to_string())
            .header("X-Consul-ContentHash", r.index.to_string())
            .body(Full::new(Bytes::from(r.body.clone())))
            .unwrap(),
        None => builder
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from(format!(
                "no canned answer for {path}"
            ))))
            .unwrap(),
    }
}
