//! The outbound direction end to end within the process: an upstream listener over
//! real sockets and mTLS, in front of scripted instances that record what reached them
//! (the server name, the path, headers and body).

use std::collections::HashMap;
use std::time::Duration;

use ::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use bytes::Bytes;
use ferrule_control::model::{
    self, Endpoint, InboundConfig, Leaf, Snapshot, TrustBundle, UpstreamConfig,
};
use ferrule_control::routing::{
    HashOn, HashPolicy, HeaderChanges, LbPolicy, LoadBalancer, PathMatch, RetryPolicy, Route,
    RouteMatch, Split, TOTAL_WEIGHT, Target,
};
use ferrule_dev::ca::{DevCa, LeafSpec};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use super::*;
use crate::tls::{TlsState, provider};

/// Every test's deadline for an answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

struct Mesh {
    ca: DevCa,
    bundle: Arc<TrustBundle>,
    web: Arc<Leaf>,
    api: Arc<Leaf>,
}

impl Mesh {
    fn new() -> Mesh {
        let ca = DevCa::generate(None).unwrap();
        let bundle = model::parse_bundle(ca.cert_pem().as_bytes(), &ca.trust_domain()).unwrap();
        let leaf = |name: &str| {
            let issued = ca.issue(&LeafSpec::service(name)).unwrap();
            let pem = (issued.cert_pem.as_bytes(), issued.key_pem.as_bytes());
            Arc::new(model::parse_leaf(pem.0, pem.1, &provider()).unwrap())
        };
        let (web, api) = (leaf("web"), leaf("api"));
        Mesh {
            ca,
            bundle: Arc::new(bundle),
            web,
            api,
        }
    }

    /// A target of `api` (or its `subset`) with `instances`.
    fn target(&self, subset: Option<&str>, instances: &[SocketAddr]) -> Target {
        let endpoints = instances
            .iter()
            .map(|addr| Endpoint {
                addr: addr.to_string(),
                identity: self.api.id.clone(),
            })
            .collect();
        Target::new(self.api.id.clone(), subset, endpoints)
    }
}

/// What reached an instance.
#[derive(Clone, Debug)]
struct Seen {
    instance: &'static str,
    sni: Option<String>,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// How an instance answers: a status, after a delay.
type Script = Arc<dyn Fn(&Seen) -> (StatusCode, Duration) + Send + Sync>;

fn answers(status: u16) -> Script {
    let status = StatusCode::from_u16(status).unwrap();
    Arc::new(move |_| (status, Duration::ZERO))
}

/// An instance of `api`: its sidecar's TLS, an HTTP server behind it.
struct Instance {
    addr: SocketAddr,
    _task: AbortOnDropHandle<()>,
}

async fn instance(
    mesh: &Mesh,
    name: &'static str,
    script: Script,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Instance {
    instance_as(mesh, mesh.api.clone(), name, script, seen).await
}

/// An instance whose sidecar serves `leaf`.
async fn instance_as(
    mesh: &Mesh,
    leaf: Arc<Leaf>,
    name: &'static str,
    script: Script,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Instance {
    let snapshot = Snapshot {
        bundle: Some(mesh.bundle.clone()),
        leaf: Some(leaf),
        inbound: Some(InboundConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            local_app: "127.0.0.1:1".into(),
            protocol: Protocol::Http,
            handshake_timeout: Duration::from_secs(5),
            local_connect_timeout: Duration::from_secs(5),
            local_request_timeout: None,
            idle_timeout: None,
            max_connections: 100,
        }),
        ..Snapshot::default()
    };
    let tls = TlsState::for_snapshot(&snapshot, &Arc::default(), &provider());
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone().unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, script, seen) = (acceptor.clone(), script.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().map(str::to_owned);
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (script, seen, sni) = (script.clone(), seen.clone(), sni.clone());
                    async move {
                        let (head, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
                        let got = Seen {
                            instance: name,
                            sni,
                            path: path.to_owned(),
                            headers: head.headers,
                            body,
                        };
                        let (status, delay) = script(&got);
                        seen.lock().push(got);
                        tokio::time::sleep(delay).await;
                        let mut response = Response::new(Full::new(Bytes::from(name)));
                        *response.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = crate::http::server(false)
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Instance {
        addr,
        _task: AbortOnDropHandle::new(task),
    }
}

/// An upstream listener named `api` on 127.0.0.1, following `snapshots`.
struct Listener {
    addr: SocketAddr,
    snapshots: watch::Sender<Arc<Snapshot>>,
    tls: watch::Receiver<Arc<TlsState>>,
    _tasks: Vec<AbortOnDropHandle<()>>,
}

fn upstream(protocol: Protocol, routing: Routing) -> UpstreamConfig {
    UpstreamConfig {
        name: "api".into(),
        bind: "127.0.0.1:0".parse().unwrap(),
        protocol,
        connect_timeout: Duration::from_secs(2),
        request_timeout: None,
        idle_timeout: None,
        max_connections: 100,
        routing: Arc::new(routing),
    }
}

impl Listener {
    async fn start(mesh: &Mesh, upstream: UpstreamConfig) -> Listener {
        let snapshot = Arc::new(Snapshot {
            bundle: Some(mesh.bundle.clone()),
            leaf: Some(mesh.web.clone()),
            upstreams: vec![upstream],
            ..Snapshot::default()
        });
        let (snapshots, rx) = watch::channel(snapshot);
        let (tls, tls_task) = crate::spawn_tls(rx.clone(), provider());
        let state = State {
            snapshots: rx,
            tls: tls.clone(),
            connections: TaskTracker::new(),
            draining: CancellationToken::new(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let upstream = Upstream::new("api".into());
            while let Ok((tcp, peer)) = listener.accept().await {
                tokio::spawn(upstream.connection(tcp, peer, &state));
            }
        });
        Listener {
            addr,
            snapshots,
            tls,
            _tasks: vec![tls_task, AbortOnDropHandle::new(accept)],
        }
    }

    /// Publishes `routing` and waits for the TLS configs of its instances (built from
    /// each snapshot by their own task).
    async fn set_routing(&mut self, routing: Routing) {
        let protocol = self.snapshots.borrow().upstreams[0].protocol;
        let endpoints: Vec<Endpoint> = routing
            .targets()
            .flat_map(|t| t.endpoints.clone())
            .collect();
        self.snapshots.send_modify(|s| {
            let mut next = (**s).clone();
            next.upstreams[0].routing = Arc::new(routing);
            *s = Arc::new(next);
        });
        let ready = async {
            while !endpoints
                .iter()
                .all(|e| self.tls.borrow().client_for(e, protocol).is_some())
            {
                let _ = self.tls.changed().await;
            }
        };
        tokio::time::timeout(ANSWER_WITHIN, ready).await.unwrap();
    }

    /// One request on a new connection: the answer's status, headers and body.
    async fn call(&self, req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, String) {
        let exchange = async {
            let tcp = TcpStream::connect(self.addr).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            let response = sender.send_request(req).await.unwrap();
            let (head, body) = response.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            (
                head.status,
                head.headers,
                String::from_utf8_lossy(&body).into_owned(),
            )
        };
        tokio::time::timeout(ANSWER_WITHIN, exchange).await.unwrap()
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
        let mut req = Request::get(path).header("host", "api");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.call(req.body(Full::default()).unwrap()).await
    }
}

fn split(cluster: usize, weight: u32) -> Split {
    Split {
        weight,
        cluster,
        request_headers: HeaderChanges::default(),
        response_headers: HeaderChanges::default(),
    }
}

fn cluster(name: &str, targets: Vec<Target>, lb: LoadBalancer) -> Cluster {
    Cluster {
        name: name.into(),
        connect_timeout: Duration::from_secs(2),
        request_timeout: None,
        load_balancer: lb,
        targets,
    }
}

fn set(name: &'static str, value: &'static str) -> HeaderChanges {
    HeaderChanges {
        set: vec![(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )],
        ..HeaderChanges::default()
    }
}

fn recorder() -> Arc<Mutex<Vec<Seen>>> {
    Arc::new(Mutex::new(Vec::new()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_by_route_to_their_targets_with_the_targets_server_names() {
    let mesh = Mesh::new();
    let seen = recorder();
    let v1 = instance(&mesh, "v1", answers(200), seen.clone()).await;
    let v2 = instance(&mesh, "v2", answers(200), seen.clone()).await;
    let v2_route = Route {
        matcher: RouteMatch {
            path: PathMatch::Prefix("/v2/".into()),
            ..RouteMatch::default()
        },
        splits: vec![Split {
            request_headers: set("x-split", "v2"),
            ..split(1, TOTAL_WEIGHT)
        }],
        prefix_rewrite: Some("/".into()),
        request_headers: set("x-split", "route wins"),
        response_headers: set("x-route", "v2"),
        ..Route::to_cluster(1)
    };
    let routing = Routing {
        routes: vec![v2_route, Route::to_cluster(0)],
        clusters: vec![
            cluster(
                "v1",
                vec![mesh.target(Some("v1"), &[v1.addr])],
                LoadBalancer::default(),
            ),
            cluster(
                "v2",
                vec![mesh.target(Some("v2"), &[v2.addr])],
                LoadBalancer::default(),
            ),
        ],
    };
    let listener = Listener::start(&mesh, upstream(Protocol::Http, routing)).await;
    let (status, headers, body) = listener.get("/v2/hello?x=1", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "v2"));
    assert_eq!(headers["x-route"], "v2");
    let (status, headers, body) = listener.get("/other", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "v1"));
    assert!(headers.get("x-route").is_none());
    let seen = seen.lock().clone();
    let td = mesh.api.id.trust_domain.clone();
    assert_eq!(seen[0].path, "/hello?x=1");
    assert_eq!(seen[0].headers["x-split"], "route wins");
    let v2_sni = format!("v2.api.default.dc1.internal.{td}");
    assert_eq!(seen[0].sni.as_deref(), Some(v2_sni.as_str()));
    assert_eq!(seen[1].path, "/other");
    let v1_sni = format!("v1.api.default.dc1.internal.{td}");
    assert_eq!(seen[1].sni.as_deref(), Some(v1_sni.as_str()));
}

/// A cluster whose primary target is `primary` and whose failover target has `backup`.
fn failover(mesh: &Mesh, primary: &[SocketAddr], backup: &[SocketAddr]) -> Routing {
    let targets = vec![
        mesh.target(None, primary),
        mesh.target(Some("backup"), backup),
    ];
    Routing {
        routes: vec![Route::to_cluster(0)],
        clusters: vec![cluster("api", targets, LoadBalancer::default())],
    }
}

/// An address nothing listens on.
async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_over_to_the_next_target_and_come_back() {
    let mesh = Mesh::new();
    let seen = recorder();
    let primary = instance(&mesh, "primary", answers(200), seen.clone()).await;
    let backup = instance(&mesh, "backup", answers(200), seen.clone()).await;
    let mut listener = Listener::start(
        &mesh,
        upstream(Protocol::Http, failover(&mesh, &[], &[backup.addr])),
    )
    .await;
    assert_eq!(
        listener.get("/", &[]).await.2,
        "backup",
        "no primary instance"
    );
    listener
        .set_routing(failover(&mesh, &[dead_addr().await], &[backup.addr]))
        .await;
    assert_eq!(
        listener.get("/", &[]).await.2,
        "backup",
        "none can be dialled"
    );
    listener
        .set_routing(failover(&mesh, &[primary.addr], &[backup.addr]))
        .await;
    assert_eq!(
        listener.get("/", &[]).await.2,
        "primary",
        "back to the primary"
    );
    listener.set_routing(failover(&mesh, &[], &[])).await;
    let (status, _, body) = listener.get("/", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream")
    );
}

/// One raw HTTP/1.1 exchange over an L4 upstream: what came back.
async fn raw_call(addr: SocketAddr) -> String {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let request = b"GET /l4 HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n";
        tcp.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    };
    tokio::time::timeout(ANSWER_WITHIN, exchange).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_connections_fail_over_and_keep_their_instance_across_a_routing_change() {
    let mesh = Mesh::new();
    let seen = recorder();
    let primary = instance(&mesh, "primary", answers(200), seen.clone()).await;
    let backup = instance(&mesh, "backup", answers(200), seen.clone()).await;
    let routing = failover(&mesh, &[dead_addr().await], &[backup.addr]);
    let mut listener = Listener::start(&mesh, upstream(Protocol::Tcp, routing)).await;
    assert!(raw_call(listener.addr).await.ends_with("backup"));
    let td = &mesh.api.id.trust_domain;
    let backup_sni = format!("backup.api.default.dc1.internal.{td}");
    assert_eq!(seen.lock()[0].sni.as_deref(), Some(backup_sni.as_str()));
    // A connection open across a routing change keeps going to its instance.
    let mut open = TcpStream::connect(listener.addr).await.unwrap();
    open.write_all(b"GET /1 HTTP/1.1\r\nhost: api\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    open.read_exact(&mut first).await.unwrap();
    listener
        .set_routing(failover(&mesh, &[primary.addr], &[backup.addr]))
        .await;
    assert!(raw_call(listener.addr).await.ends_with("primary"));
    open.write_all(b"GET /2 HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(ANSWER_WITHIN, open.read_to_end(&mut rest)).await;
    assert!(String::from_utf8_lossy(&rest).ends_with("backup"));
}

fn retrying(mesh: &Mesh, instances: &[SocketAddr], on: &[&str], num_retries: u32) -> Routing {
    let route = Route {
        retry: RetryPolicy {
            num_retries,
            on: on.iter().map(|s| (*s).to_owned()).collect(),
            on_status_codes: Vec::new(),
        },
        ..Route::to_cluster(0)
    };
    Routing {
        routes: vec![route],
        clusters: vec![cluster(
            "api",
            vec![mesh.target(None, instances)],
            LoadBalancer::default(),
        )],
    }
}

fn post(body: Bytes) -> Request<Full<Bytes>> {
    Request::post("/upload")
        .header("host", "api")
        .body(Full::new(body))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_sends_the_same_body_to_another_instance() {
    let mesh = Mesh::new();
    let seen = recorder();
    let failing = instance(&mesh, "failing", answers(503), seen.clone()).await;
    let healthy = instance(&mesh, "healthy", answers(200), seen.clone()).await;
    let routing = retrying(&mesh, &[failing.addr, healthy.addr], &["5xx"], 2);
    let listener = Listener::start(&mesh, upstream(Protocol::Http, routing)).await;
    // Round robin: one of two requests starts on the failing instance.
    for _ in 0..2 {
        let (status, _, body) = listener.call(post(Bytes::from_static(b"payload"))).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "healthy"));
    }
    let seen = seen.lock().clone();
    assert!(seen.iter().all(|s| s.body == "payload"), "{seen:?}");
    let failed: Vec<usize> = (0..seen.len())
        .filter(|i| seen[*i].instance == "failing")
        .collect();
    assert!(!failed.is_empty(), "{seen:?}");
    assert_eq!(seen.len(), 2 + failed.len(), "one retry per failure");
    for i in failed {
        assert_eq!(seen[i + 1].instance, "healthy", "retried elsewhere");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_too_large_to_keep_is_not_retried_and_retries_are_bounded() {
    let mesh = Mesh::new();
    let seen = recorder();
    let failing = instance(&mesh, "failing", answers(503), seen.clone()).await;
    let routing = retrying(&mesh, &[failing.addr], &["gateway-error"], 2);
    let listener = Listener::start(&mesh, upstream(Protocol::Http, routing)).await;
    let (status, _, _) = listener.call(post(Bytes::from_static(b"small"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.lock().len(), 3, "the first try and two retries");
    seen.lock().clear();
    let big = Bytes::from(vec![b'x'; body::REPLAY_LIMIT + 1]);
    let (status, _, _) = listener.call(post(big)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 1, "not replayable: one try");
    assert_eq!(seen[0].body.len(), body::REPLAY_LIMIT + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_meet_the_request_and_idle_timeouts() {
    let mesh = Mesh::new();
    let slow: Script = Arc::new(|_| (StatusCode::OK, Duration::from_secs(5)));
    let api = instance(&mesh, "slow", slow, recorder()).await;
    let timed = |request: Option<u64>, idle: Option<u64>| {
        let route = Route {
            request_timeout: request.map(Duration::from_millis),
            idle_timeout: idle.map(Duration::from_millis),
            ..Route::to_cluster(0)
        };
        Routing {
            routes: vec![route],
            clusters: vec![cluster(
                "api",
                vec![mesh.target(None, &[api.addr])],
                LoadBalancer::default(),
            )],
        }
    };
    let mut listener =
        Listener::start(&mesh, upstream(Protocol::Http, timed(Some(300), None))).await;
    let started = std::time::Instant::now();
    let (status, _, body) = listener.get("/", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    listener.set_routing(timed(None, Some(300))).await;
    let (status, _, body) = listener.get("/", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::REQUEST_TIMEOUT, "stream timeout")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hashed_key_sticks_to_one_instance_and_a_cookie_is_made_up() {
    let mesh = Mesh::new();
    let seen = recorder();
    let mut instances = Vec::new();
    for name in ["a", "b", "c"] {
        instances.push(instance(&mesh, name, answers(200), seen.clone()).await);
    }
    let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.addr).collect();
    let lb = LoadBalancer {
        policy: LbPolicy::Maglev,
        hash_policies: vec![
            HashPolicy {
                on: HashOn::Header("x-user".into()),
                terminal: true,
            },
            HashPolicy {
                on: HashOn::Cookie {
                    name: "sticky".into(),
                    ttl: Some(Duration::from_secs(60)),
                    path: None,
                },
                terminal: false,
            },
        ],
    };
    let routing = Routing {
        routes: vec![Route::to_cluster(0)],
        clusters: vec![cluster("api", vec![mesh.target(None, &addrs)], lb)],
    };
    let listener = Listener::start(&mesh, upstream(Protocol::Http, routing)).await;
    let mut by_user: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    for i in 0..24 {
        let user = format!("user-{}", i % 6);
        let (_, headers, body) = listener.get("/", &[("x-user", &user)]).await;
        assert!(
            headers.get("set-cookie").is_none(),
            "the header hash was terminal"
        );
        by_user.entry(user).or_default().insert(body);
    }
    assert!(
        by_user.values().all(|instances| instances.len() == 1),
        "{by_user:?}"
    );
    let (_, headers, first) = listener.get("/", &[]).await;
    let cookie = headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with("sticky=\"") && cookie.contains("Max-Age=60"),
        "{cookie}"
    );
    let value = cookie.split(';').next().unwrap();
    for _ in 0..5 {
        let (_, headers, body) = listener.get("/", &[("cookie", value)]).await;
        assert_eq!(body, first);
        assert!(headers.get("set-cookie").is_none());
    }
}

mod xdc;
