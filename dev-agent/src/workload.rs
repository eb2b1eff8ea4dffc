//! The dev agent's SPIFFE Workload API (`ferrule dev --workload-api-socket`): what a SPIRE
//! agent serves its workloads, with SVIDs from the dev agent's own CA.
//!
//! SPIRE tells workloads apart by attesting the process on the other end of its socket;
//! the dev agent gives each workload a socket of its own instead: `[SERVICE=]PATH` serves
//! the SVID of `SERVICE` (default: the socket's file name without extension) on `PATH`.
//! The SVID is the leaf the agent API serves for that service (same cache, same renewal
//! at 60–90 % of its TTL, re-issued when the root rotates), so the stream pushes a new
//! message whenever the leaf or the roots change. `--federate-with TD=FILE` adds the
//! bundle of trust domain `TD` (PEM certificates) to every message as a federated
//! bundle; the file is re-read when it changes, as SPIRE refreshes a federated bundle
//! from its bundle endpoint.
//!
//! Every request must carry the `workload.spiffe.io: true` metadata; one without it is
//! refused with `INVALID_ARGUMENT`, as the specification requires. The JWT profile is
//! answered `UNIMPLEMENTED`.
//!
//! A workload's identity can be withdrawn and issued again, as deleting and re-creating
//! its SPIRE registration entry does: `DELETE /v1/internal/ferrule/workload-api/:service`
//! ends its open streams and answers new ones with `PERMISSION_DENIED` ("no identity
//! issued", SPIRE's words), `PUT` on the same path serves its SVID again.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};

use super::DevError;
use super::connect_ca::WorkloadSvid;
use super::http::{ApiError, Call, Reply};
use super::state::Shared;

/// The code generated from `proto/workload.proto`: messages, server and client.
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    reason = "generated code"
)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

use pb::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use pb::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};

/// The metadata key every Workload API request must carry, with the value `true`.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
/// How often `--federate-with` files are re-read.
const FEDERATION_POLL: Duration = Duration::from_secs(1);

/// One `--workload-api-socket [SERVICE=]PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSocket {
    pub service: String,
    pub path: PathBuf,
}

impl FromStr for WorkloadSocket {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (service, path) = match text.split_once('=') {
            Some((service, path)) if is_service_name(service) => {
                (service.to_owned(), PathBuf::from(path))
            }
            _ => {
                let path = PathBuf::from(text);
                let stem = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .filter(|s| is_service_name(s))
                    .ok_or_else(|| {
                        format!(
                            "{text:?}: the socket's file name is not a service name; say which \
                             service it serves as SERVICE=PATH"
                        )
                    })?;
                (stem.to_owned(), path)
            }
        };
        if path.as_os_str().is_empty() {
            return Err(format!("{text:?}: no socket path"));
        }
        Ok(WorkloadSocket { service, path })
    }
}

fn is_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// One `--federate-with TD=FILE`: another trust domain and its bundle file (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Federation {
    pub trust_domain: String,
    pub bundle_file: PathBuf,
}

impl FromStr for Federation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (td, file) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: want TRUST_DOMAIN=BUNDLE.pem"))?;
        let td = spiffe::TrustDomain::new(td).map_err(|e| format!("{td:?}: {e}"))?;
        if file.is_empty() {
            return Err(format!("{text:?}: no bundle file"));
        }
        Ok(Federation {
            trust_domain: td.as_str().to_owned(),
            bundle_file: PathBuf::from(file),
        })
    }
}

/// Federated bundles as the stream sends them: DER certificates concatenated, keyed by
/// the trust domain's SPIFFE ID.
type Bundles = BTreeMap<String, Vec<u8>>;

/// The bound sockets, ready to serve.
pub(super) struct WorkloadApi {
    sockets: Vec<(WorkloadSocket, UnixListener)>,
    federation: Vec<Federation>,
    bundles: watch::Sender<Arc<Bundles>>,
}

impl WorkloadApi {
    /// Binds every socket and reads every federated bundle now, so a mistake is a
    /// start-up error. A stale socket file left by an earlier run is replaced.
    pub(super) fn bind(
        sockets: &[WorkloadSocket],
        federation: &[Federation],
    ) -> Result<WorkloadApi, DevError> {
        let mut bundles = Bundles::new();
        for fed in federation {
            let der = read_bundle(&fed.bundle_file).map_err(|reason| {
                DevError::Config(format!(
                    "--federate-with {}={}: {reason}",
                    fed.trust_domain,
                    fed.bundle_file.display()
                ))
            })?;
            bundles.insert(format!("spiffe://{}", fed.trust_domain), der);
        }
        let mut bound = Vec::with_capacity(sockets.len());
        for socket in sockets {
            let listener = bind_socket(&socket.path).map_err(|source| DevError::WorkloadApi {
                path: socket.path.clone(),
                source,
            })?;
            bound.push((socket.clone(), listener));
        }
        Ok(WorkloadApi {
            sockets: bound,
            federation: federation.to_vec(),
            bundles: watch::channel(Arc::new(bundles)).0,
        })
    }

    /// Serves every socket until the agent shuts down, then removes the socket files.
    pub(super) async fn serve(self, shared: Arc<Shared>) {
        let WorkloadApi {
            sockets,
            federation,
            bundles,
        } = self;
        let bundles = Arc::new(bundles);
        let mut servers = tokio::task::JoinSet::new();
        for (socket, listener) in sockets {
            tracing::info!(service = %socket.service, socket = %socket.path.display(), "dev agent: serving the SPIFFE Workload API");
            let service = WorkloadService {
                shared: Arc::clone(&shared),
                service: socket.service.clone(),
                bundles: bundles.subscribe(),
            };
            let shutdown = shared.shutdown.clone();
            servers.spawn(async move {
                let server = SpiffeWorkloadApiServer::with_interceptor(service, require_header);
                let result = tonic::transport::Server::builder()
                    .serve_with_incoming_shutdown(
                        server,
                        UnixListenerStream::new(listener)
                            .map(|accepted| accepted.map(super::authority::shield)),
                        shutdown.cancelled_owned(),
                    )
                    .await;
                if let Err(e) = result {
                    tracing::warn!(socket = %socket.path.display(), error = %e, "dev agent: Workload API server stopped");
                }
                let _ = std::fs::remove_file(&socket.path);
            });
        }
        if !federation.is_empty() {
            let shutdown = shared.shutdown.clone();
            let bundles = Arc::clone(&bundles);
            servers.spawn(async move {
                tokio::select! {
                    () = keep_reading(&federation, &bundles) => {}
                    () = shutdown.cancelled() => {}
                }
            });
        }
        while servers.join_next().await.is_some() {}
    }
}

fn bind_socket(path: &Path) -> io::Result<UnixListener> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a socket",
                ));
            }
            Err(_) => {}
        }
    }
    UnixListener::bind(path)
}

/// A PEM bundle file as concatenated DER.
fn read_bundle(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let certs = ferrule_control::model::parse_certificates(&text).map_err(|e| e.to_string())?;
    Ok(certs.iter().flat_map(|c| c.as_ref().to_vec()).collect())
}

/// Re-reads the federated bundle files; a change is pushed to every open stream, a file
/// that does not read keeps the last good bundle.
async fn keep_reading(federation: &[Federation], bundles: &watch::Sender<Arc<Bundles>>) {
    let mut failing = std::collections::HashSet::new();
    loop {
        tokio::time::sleep(FEDERATION_POLL).await;
        let mut next = (**bundles.borrow()).clone();
        for fed in federation {
            match read_bundle(&fed.bundle_file) {
                Ok(der) => {
                    failing.remove(&fed.trust_domain);
                    next.insert(format!("spiffe://{}", fed.trust_domain), der);
                }
                Err(reason) => {
                    if failing.insert(fed.trust_domain.clone()) {
                        tracing::warn!(trust_domain = %fed.trust_domain, file = %fed.bundle_file.display(), %reason, "dev agent: federated bundle not re-read; keeping the last good one");
                    }
                }
            }
        }
        bundles.send_if_modified(|current| {
            if **current == next {
                false
            } else {
                tracing::info!("dev agent: federated bundles changed");
                *current = Arc::new(next);
                true
            }
        });
    }
}

/// No security header, no answer: the Workload API standard requires the
/// `workload.spiffe.io: true` metadata on every call and SPIRE refuses a call without it
/// in these words (`docs/consul-semantics.md#workload-api`).
fn require_header(request: Request<()>) -> Result<Request<()>, Status> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(value) if value == "true" => Ok(request),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

#[derive(Clone)]
struct WorkloadService {
    shared: Arc<Shared>,
    service: String,
    bundles: watch::Receiver<Arc<Bundles>>,
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

impl WorkloadService {
    /// Sends `make()`'s answer now and again whenever it changes (a write to the agent's
    /// state or a federated bundle), until the client goes away or the agent stops.
    fn stream<T, F>(&self, make: F) -> Stream<T>
    where
        T: Clone + PartialEq + Send + 'static,
        F: Fn(&Shared, &Bundles) -> Result<T, Status> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(4);
        let shared = Arc::clone(&self.shared);
        let mut bundles = self.bundles.clone();
        tokio::spawn(async move {
            let mut changes = shared.subscribe();
            let mut last: Option<T> = None;
            loop {
                // Marked seen before reading, so no change between the two is missed.
                changes.borrow_and_update();
                let federated = bundles.borrow_and_update().clone();
                match make(&shared, &federated) {
                    Ok(message) if last.as_ref() != Some(&message) => {
                        if tx.send(Ok(message.clone())).await.is_err() {
                            return;
                        }
                        last = Some(message);
                    }
                    Ok(_) => {}
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    changed = bundles.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                    () = shared.shutdown.cancelled() => return,
                }
            }
        });
        ReceiverStream::new(rx)
    }
}

fn svid_of(shared: &Shared, service: &str) -> Result<WorkloadSvid, Status> {
    shared.with(|state| {
        if state.withdrawn_workloads.contains(service) {
            return Err(Status::permission_denied("no identity issued"));
        }
        state
            .workload_svid(service)
            .map_err(|e| Status::internal(format!("issuing the SVID of {service}: {e}")))
    })
}

/// Where a workload's identity is withdrawn (`DELETE`) or issued again (`PUT`).
pub(super) const ENTRY_PATH: &str = "/v1/internal/ferrule/workload-api/";

/// `PUT`/`DELETE /v1/internal/ferrule/workload-api/:service`: `true` when that changed
/// anything. Every open stream of the service re-reads its answer.
pub(super) fn entry(shared: &Shared, call: &Call, service: &str) -> Result<Reply, ApiError> {
    if !is_service_name(service) {
        return Err(ApiError::bad_request(format!(
            "{service:?} is not a service name"
        )));
    }
    let withdraw = call.method == http::Method::DELETE;
    let changed = shared.with(|state| {
        let changed = if withdraw {
            state.withdrawn_workloads.insert(service.to_owned())
        } else {
            state.withdrawn_workloads.remove(service)
        };
        if changed {
            // Wakes the streams, which read the change.
            state.bump();
        }
        changed
    });
    if changed {
        tracing::info!(
            service,
            withdrawn = withdraw,
            "dev agent: Workload API identity {}",
            if withdraw {
                "withdrawn"
            } else {
                "issued again"
            }
        );
    }
    Reply::json(&changed)
}

fn x509_svid_response(svid: WorkloadSvid, federated: &Bundles) -> X509svidResponse {
    let own = format!("spiffe://{}", svid.trust_domain);
    X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: svid.spiffe_id,
            x509_svid: svid.chain.concat(),
            x509_svid_key: svid.key_pkcs8,
            bundle: svid.roots.concat(),
            hint: String::new(),
        }],
        crl: Vec::new(),
        // Never our own trust domain: its bundle travels with the SVID.
        federated_bundles: federated
            .iter()
            .filter(|(td, _)| **td != own)
            .map(|(td, der)| (td.clone(), der.clone()))
            .collect(),
    }
}

fn x509_bundles_response(svid: WorkloadSvid, federated: &Bundles) -> X509BundlesResponse {
    let mut bundles: std::collections::HashMap<String, Vec<u8>> = federated
        .iter()
        .map(|(td, der)| (td.clone(), der.clone()))
        .collect();
    bundles.insert(
        format!("spiffe://{}", svid.trust_domain),
        svid.roots.concat(),
    );
    X509BundlesResponse {
        crl: Vec::new(),
        bundles,
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadService {
    type FetchX509SVIDStream = Stream<X509svidResponse>;
    type FetchX509BundlesStream = Stream<X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        _request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        tracing::debug!(service = %self.service, "dev agent: Workload API X.509-SVID stream opened");
        let service = self.service.clone();
        Ok(Response::new(self.stream(move |shared, federated| {
            svid_of(shared, &service).map(|svid| x509_svid_response(svid, federated))
        })))
    }

    async fn fetch_x509_bundles(
        &self,
        _request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let service = self.service.clone();
        Ok(Response::new(self.stream(move |shared, federated| {
            svid_of(shared, &service).map(|svid| x509_bundles_response(svid, federated))
        })))
    }

    async fn fetch_jwtsvid(
        &self,
        _request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        Err(jwt_unimplemented())
    }

    async fn fetch_jwt_bundles(
        &self,
        _request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(jwt_unimplemented())
    }

    async fn validate_jwtsvid(
        &self,
        _request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        Err(jwt_unimplemented())
    }
}

fn jwt_unimplemented() -> Status {
    Status::unimplemented("the dev agent serves the X.509-SVID profile only")
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::pb::spiffe_workload_api_client::SpiffeWorkloadApiClient;
    use super::*;
    use crate::ca::DevCa;
    use crate::{DevAgent, DevAgentConfig};
    use ferrule_control::workload::{WorkloadError, WorkloadSource};
    use spiffe::transport::{Endpoint, GrpcStatusCode};
    use tonic::Code;
    use tonic::transport::Channel;

    const WAIT: Duration = Duration::from_secs(10);

    struct Fixture {
        agent: DevAgent,
        socket: PathBuf,
        dir: tempfile::TempDir,
    }

    async fn agent(leaf_ttl: Duration, federate: &[(&str, &DevCa)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("web.sock");
        let federate_with = federate
            .iter()
            .map(|(name, ca)| {
                let file = dir.path().join(format!("{name}.pem"));
                std::fs::write(&file, ca.cert_pem()).unwrap();
                Federation {
                    trust_domain: ca.trust_domain(),
                    bundle_file: file,
                }
            })
            .collect();
        let config = DevAgentConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            leaf_ttl,
            workload_api: vec![WorkloadSocket::from_str(socket.to_str().unwrap()).unwrap()],
            federate_with,
            ..DevAgentConfig::default()
        };
        let agent = DevAgent::start(config).await.unwrap();
        Fixture { agent, socket, dir }
    }

    /// A plain generated client: it sends no security header unless asked.
    async fn raw_client(socket: &Path) -> SpiffeWorkloadApiClient<Channel> {
        let channel = spiffe::transport::connect(&Endpoint::Unix(socket.to_owned()))
            .await
            .unwrap();
        SpiffeWorkloadApiClient::new(channel)
    }

    fn with_header<T>(message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(SECURITY_HEADER, "true".parse().unwrap());
        request
    }

    async fn next(stream: &mut tonic::Streaming<X509svidResponse>) -> X509svidResponse {
        tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("a message within the wait")
            .unwrap()
            .expect("the stream stays open")
    }

    #[test]
    fn socket_and_federation_arguments() {
        let s: WorkloadSocket = "/run/ferrule/web.sock".parse().unwrap();
        assert_eq!(
            (s.service.as_str(), s.path.as_path()),
            ("web", Path::new("/run/ferrule/web.sock"))
        );
        let s: WorkloadSocket = "api=/tmp/x/agent.sock".parse().unwrap();
        assert_eq!(
            (s.service.as_str(), s.path.as_path()),
            ("api", Path::new("/tmp/x/agent.sock"))
        );
        // A path with '=' in a directory name is still a path.
        let s: WorkloadSocket = "/tmp/a=b/db.sock".parse().unwrap();
        assert_eq!(s.service, "db");
        assert!("/tmp/.sock".parse::<WorkloadSocket>().is_err());
        assert!("api=".parse::<WorkloadSocket>().is_err());

        let f: Federation = "spiffe://Example.org=/etc/b.pem".parse().unwrap();
        assert_eq!(f.trust_domain, "example.org");
        let f: Federation = "other.consul=b.pem".parse().unwrap();
        assert_eq!(f.trust_domain, "other.consul");
        assert!("example.org".parse::<Federation>().is_err());
        assert!("not a domain=b.pem".parse::<Federation>().is_err());
    }

    #[tokio::test]
    async fn a_request_without_the_security_header_is_refused() {
        let f = agent(Duration::from_secs(3600), &[]).await;
        let mut client = raw_client(&f.socket).await;
        let status = client
            .fetch_x509svid(Request::new(X509svidRequest {}))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status}");
        assert_eq!(status.message(), "security header missing from request");
        let status = client
            .fetch_x509_bundles(Request::new(X509BundlesRequest {}))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let mut wrong = Request::new(X509svidRequest {});
        wrong
            .metadata_mut()
            .insert(SECURITY_HEADER, "yes".parse().unwrap());
        let status = client.fetch_x509svid(wrong).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);

        // With it, the JWT profile is answered, as unimplemented.
        let status = client
            .fetch_jwtsvid(with_header(JwtsvidRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented);
        f.agent.shutdown().await.unwrap();
        assert!(!f.socket.exists(), "the socket is removed at shutdown");
    }

    #[tokio::test]
    async fn the_stream_carries_the_svid_and_pushes_each_renewal() {
        let other = DevCa::generate(None).unwrap();
        let f = agent(Duration::from_secs(3), &[("other", &other)]).await;
        let mut client = raw_client(&f.socket).await;
        let mut stream = client
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        let first = next(&mut stream).await;
        assert_eq!(first.svids.len(), 1);
        let svid = &first.svids[0];
        let td = f.agent.trust_domain().to_owned();
        assert_eq!(
            svid.spiffe_id,
            format!("spiffe://{td}/ns/default/dc/dc1/svc/web")
        );
        // An independent parser accepts it as an X.509-SVID with a PKCS#8 key.
        let parsed = spiffe::X509Svid::parse_from_der(&svid.x509_svid, &svid.x509_svid_key)
            .expect("a valid X.509-SVID");
        assert_eq!(parsed.spiffe_id().to_string(), svid.spiffe_id);
        spiffe::X509Bundle::parse_from_der(spiffe::TrustDomain::new(&td).unwrap(), &svid.bundle)
            .expect("the bundle is DER certificates");
        assert_eq!(
            first
                .federated_bundles
                .get(&format!("spiffe://{}", other.trust_domain())),
            Some(&other.cert_der().to_vec())
        );

        // The agent renews at 60–90 % of the 3 s TTL and pushes the new leaf.
        let second = next(&mut stream).await;
        assert_ne!(second.svids[0].x509_svid, svid.x509_svid);
        assert_eq!(second.svids[0].spiffe_id, svid.spiffe_id);
        assert_eq!(second.svids[0].bundle, svid.bundle);

        // A second stream of the same workload gets the same, current SVID.
        let mut again = client
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        let current = next(&mut again).await;
        assert!(
            current.svids[0].x509_svid == second.svids[0].x509_svid
                || next(&mut stream).await.svids[0].x509_svid == current.svids[0].x509_svid
        );
        drop(f.dir);
    }

    #[tokio::test]
    async fn a_changed_federated_bundle_file_is_pushed() {
        let other = DevCa::generate(None).unwrap();
        let f = agent(Duration::from_secs(3600), &[("other", &other)]).await;
        let mut client = raw_client(&f.socket).await;
        let mut stream = client
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        let key = format!("spiffe://{}", other.trust_domain());
        let first = next(&mut stream).await;
        assert_eq!(first.federated_bundles[&key], other.cert_der().to_vec());

        // The other domain rotates: its new root is added to the bundle file.
        let rotated = DevCa::generate(Some(other.cluster_id())).unwrap();
        let both = format!("{}{}", other.cert_pem(), rotated.cert_pem());
        std::fs::write(f.dir.path().join("other.pem"), both).unwrap();
        let second = next(&mut stream).await;
        assert_eq!(
            second.federated_bundles[&key],
            [other.cert_der().to_vec(), rotated.cert_der().to_vec()].concat()
        );
        assert_eq!(second.svids, first.svids, "the SVID itself did not change");

        // Garbage in the file keeps the last good bundle.
        std::fs::write(f.dir.path().join("other.pem"), "garbage").unwrap();
        let mut bundles = client
            .fetch_x509_bundles(with_header(X509BundlesRequest {}))
            .await
            .unwrap()
            .into_inner();
        tokio::time::sleep(FEDERATION_POLL * 2).await;
        let answer = bundles.message().await.unwrap().unwrap();
        assert_eq!(answer.bundles[&key], second.federated_bundles[&key]);
        assert!(
            answer
                .bundles
                .contains_key(&format!("spiffe://{}", f.agent.trust_domain()))
        );
    }

    #[tokio::test]
    async fn the_proxy_source_takes_its_identity_from_the_dev_agent_and_reconnects() {
        let other = DevCa::generate(None).unwrap();
        let f = agent(Duration::from_secs(3600), &[("other", &other)]).await;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let addr = format!("unix://{}", f.socket.display());
        let (mut feed, _fatal) = WorkloadSource::new(&addr, provider).unwrap().spawn();
        let identity = tokio::time::timeout(WAIT, feed.wait_for(Option::is_some))
            .await
            .unwrap()
            .unwrap()
            .clone()
            .unwrap();
        assert_eq!(identity.leaf.id.service, "web");
        assert_eq!(identity.bundle.trust_domain, f.agent.trust_domain());
        assert!(
            identity
                .bundle
                .federated
                .contains_key(&other.trust_domain())
        );

        // The agent goes away: the last SVID stays.
        let first_td = f.agent.trust_domain().to_owned();
        f.agent.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            feed.borrow().is_some(),
            "the last good SVID stays while valid"
        );

        // An agent comes back on the same socket: the source reconnects by itself.
        let config = DevAgentConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            workload_api: vec![WorkloadSocket {
                service: "web".into(),
                path: f.socket.clone(),
            }],
            ..DevAgentConfig::default()
        };
        let back = DevAgent::start(config).await.unwrap();
        assert_ne!(back.trust_domain(), first_td);
        let identity = tokio::time::timeout(
            WAIT,
            feed.wait_for(|id| {
                id.as_ref()
                    .is_some_and(|id| id.bundle.trust_domain == back.trust_domain())
            }),
        )
        .await
        .expect("the source reconnects within the wait")
        .unwrap()
        .clone()
        .unwrap();
        assert!(identity.bundle.federated.is_empty());
    }

    #[tokio::test]
    async fn invalid_argument_is_fatal_for_the_proxy_source() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("refusing.sock");
        let listener = bind_socket(&socket).unwrap();
        let f = agent(Duration::from_secs(3600), &[]).await;
        let service = WorkloadService {
            shared: Arc::clone(&f.agent.shared),
            service: "web".into(),
            bundles: watch::channel(Arc::new(Bundles::new())).1,
        };
        // A server that refuses every request as a server refuses one without the header.
        let refuse = |_: Request<()>| -> Result<Request<()>, Status> {
            Err(Status::invalid_argument(
                "security header missing from request",
            ))
        };
        let server = tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(
            SpiffeWorkloadApiServer::with_interceptor(service, refuse),
            UnixListenerStream::new(listener),
        ));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let addr = format!("unix:{}", socket.display());
        let (feed, fatal) = WorkloadSource::new(&addr, provider).unwrap().spawn();
        let error = tokio::time::timeout(WAIT, fatal.wait())
            .await
            .expect("a fatal error, not endless retries");
        assert!(
            matches!(
                error,
                WorkloadError::Fatal {
                    code: GrpcStatusCode::InvalidArgument,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("security header"), "{error}");
        assert!(feed.borrow().is_none());
        server.abort();
    }
}
