//! The mesh connections of one HTTP-family upstream listener: per instance and server
//! name, one multiplexed HTTP/2 connection, or idle HTTP/1.1 keep-alive ones, as the
//! handshake's ALPN chose; and one request's exchange over such a connection, in the
//! connection's HTTP version.
//!
//! Connections are keyed by the instance's address, the identity it must prove and the
//! server name dialled: two targets may reach one address with different names (a mesh
//! gateway routes on the name), and must not share a connection.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ferrule_control::identity::ServiceId;
use ferrule_control::model::Endpoint;
use ferrule_control::routing::Routing;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::body::MeshBody;
use super::dial::{self, DialTo};
use crate::balance::Balancer;
use crate::http::MAX_HEADER_BYTES;
use crate::limits::{WRITE_STALL, WriteStall};
use crate::metrics::{Attempt, ConnGuard, DialError, Direction, Metered};
use crate::tls::{H2, TlsState};

/// How many idle HTTP/1.1 connections one endpoint keeps; beyond them a connection
/// closes once its response is done.
const MAX_IDLE_H1: usize = 64;

/// A request's way to one endpoint: the endpoint's one multiplexed HTTP/2 connection,
/// or one of its pooled HTTP/1.1 connections, taken for this request alone.
pub(super) enum Sender {
    H2(http2::SendRequest<MeshBody>),
    H1(http1::SendRequest<MeshBody>),
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct SlotKey {
    addr: String,
    identity: ServiceId,
    sni: String,
}

/// The connections to one endpoint: an HTTP/2 one if the endpoint speaks HTTP/2, idle
/// HTTP/1.1 ones otherwise.
#[derive(Default)]
struct Open {
    h2: Option<http2::SendRequest<MeshBody>>,
    idle_h1: Vec<http1::SendRequest<MeshBody>>,
}

/// The connections to one endpoint. The async lock makes concurrent requests wait for
/// one dial instead of each dialing its own.
type Slot = Arc<tokio::sync::Mutex<Open>>;

/// The mesh connections of one upstream listener, per endpoint and server name.
pub(super) struct MeshPool {
    upstream: String,
    slots: Mutex<HashMap<SlotKey, Slot>>,
}

/// What one request's answer is: a response, or the request back if it never went out.
pub(super) type Answered = Result<Response<Incoming>, TrySendError<Request<MeshBody>>>;

impl MeshPool {
    pub(super) fn new(upstream: String) -> MeshPool {
        MeshPool {
            upstream,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, endpoint: &Endpoint, sni: &str) -> Slot {
        let key = SlotKey {
            addr: endpoint.addr.clone(),
            identity: endpoint.identity.clone(),
            sni: sni.to_owned(),
        };
        self.slots.lock().entry(key).or_default().clone()
    }

    /// A connection to `endpoint` of `to.target` ready for one request: the open HTTP/2
    /// one, an idle HTTP/1.1 one, or one dialed now.
    pub(super) async fn sender(
        &self,
        to: &DialTo<'_>,
        endpoint: &Endpoint,
        balancer: &Balancer,
        routing: &Routing,
        tls: &TlsState,
    ) -> Option<Sender> {
        let slot = self.slot(endpoint, &to.target.sni);
        let mut open = slot.lock().await;
        if let Some(sender) = open.h2.as_ref().filter(|s| !s.is_closed()) {
            return Some(Sender::H2(sender.clone()));
        }
        open.h2 = None;
        open.idle_h1.retain(|s| !s.is_closed());
        if let Some(i) = open.idle_h1.iter().position(http1::SendRequest::is_ready) {
            return Some(Sender::H1(open.idle_h1.swap_remove(i)));
        }
        self.forget_departed(routing);
        let sender = self.connect(to, endpoint, balancer, tls).await?;
        if let Sender::H2(h2) = &sender {
            open.h2 = Some(h2.clone());
        }
        Some(sender)
    }

    /// Dials `endpoint` and speaks the HTTP version the handshake chose: HTTP/2 when
    /// ALPN said `h2`, HTTP/1.1 when it said `http/1.1`; when it said nothing (the
    /// callee's listener is TCP, or not ALPN-aware), HTTP/1.1 for `http`, so the app
    /// behind it gets what its clients send, and HTTP/2 with prior knowledge for
    /// `http2` and `grpc`. See `docs/consul-semantics.md#on-the-wire`.
    async fn connect(
        &self,
        to: &DialTo<'_>,
        endpoint: &Endpoint,
        balancer: &Balancer,
        tls: &TlsState,
    ) -> Option<Sender> {
        let peer = endpoint
            .addr
            .parse()
            .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let mut guard = ConnGuard::new(Direction::Outbound, Some(self.upstream.clone()), peer);
        let stream = dial::dial(to, endpoint, tls, balancer, &mut guard).await?;
        let http2 = match stream.get_ref().1.alpn_protocol() {
            Some(alpn) => alpn == H2,
            None => to.protocol.is_http2_only(),
        };
        // A callee that stops reading fails the connection (see `crate::limits`).
        let io = TokioIo::new(WriteStall::new(
            Metered::new(stream, guard.bytes()),
            WRITE_STALL,
        ));
        let handshake = if http2 {
            http2_handshake(io).await
        } else {
            http1_handshake(io).await
        };
        let (sender, connection) = match handshake {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(upstream = %self.upstream, endpoint = %endpoint.addr, error = %e, "HTTP handshake failed");
                guard.attempt(Attempt::Failed(DialError::ConnectError));
                return None;
            }
        };
        dial::connected(&mut guard, endpoint);
        tokio::spawn(async move {
            // The guard lives as long as the connection: its gauge, bytes and log line.
            let _guard = guard;
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "mesh HTTP connection ended with an error");
            }
        });
        Some(sender)
    }

    /// Puts an HTTP/1.1 connection whose response has arrived back in the pool; it takes
    /// a new request once that response's body is done.
    async fn give_back(
        &self,
        endpoint: &Endpoint,
        sni: &str,
        sender: http1::SendRequest<MeshBody>,
    ) {
        let slot = self.slot(endpoint, sni);
        let mut open = slot.lock().await;
        if open.idle_h1.len() < MAX_IDLE_H1 && !sender.is_closed() {
            open.idle_h1.push(sender);
        }
    }

    /// Endpoints that left every target (or a target that left the routing) lose their
    /// connections (they close once their last request is done).
    fn forget_departed(&self, routing: &Routing) {
        self.slots.lock().retain(|key, _| {
            routing.targets().any(|t| {
                t.sni == key.sni
                    && t.endpoints
                        .iter()
                        .any(|e| e.addr == key.addr && e.identity == key.identity)
            })
        });
    }

    /// Drops an HTTP/2 connection that turned out to be closed.
    pub(super) async fn forget(&self, endpoint: &Endpoint, sni: &str) {
        let slot = self.slot(endpoint, sni);
        let mut open = slot.lock().await;
        if open.h2.as_ref().is_some_and(|s| s.is_closed()) {
            open.h2 = None;
        }
    }

    /// Sends `req` on `sender` in the connection's HTTP version; an HTTP/1.1 connection
    /// goes back to the pool once its response has arrived.
    pub(super) async fn exchange(
        &self,
        endpoint: &Endpoint,
        sni: &str,
        sender: Sender,
        mut req: Request<MeshBody>,
    ) -> Result<Answered, http::Error> {
        match sender {
            Sender::H2(mut h2) => {
                back_to_http2(&mut req)?;
                Ok(h2.try_send_request(req).await)
            }
            Sender::H1(mut h1) => {
                for_http1(&mut req)?;
                let ready = h1.ready().await.is_ok();
                let answer = h1.try_send_request(req).await;
                if ready && answer.is_ok() {
                    self.give_back(endpoint, sni, h1).await;
                }
                Ok(answer)
            }
        }
    }
}

type MeshIo = TokioIo<WriteStall<Metered<TlsStream<TcpStream>>>>;
type Driven = std::pin::Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

async fn http2_handshake(io: MeshIo) -> hyper::Result<(Sender, Driven)> {
    // The limits (and the keep-alive that notices a black-holed or stalled endpoint)
    // are `crate::http::h2`'s.
    let mut builder = http2::Builder::new(TokioExecutor::new());
    crate::http::h2::client(&mut builder);
    let (sender, connection) = builder.handshake(io).await?;
    Ok((Sender::H2(sender), Box::pin(connection)))
}

async fn http1_handshake(io: MeshIo) -> hyper::Result<(Sender, Driven)> {
    let (sender, connection) = http1::Builder::new()
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
        .handshake(io)
        .await?;
    Ok((Sender::H1(sender), Box::pin(connection)))
}

/// An HTTP/2-shaped request (absolute URI, no `Host`) as HTTP/1.1 wants it: the path and
/// query as the target, the authority as `Host`.
fn for_http1<B>(req: &mut Request<B>) -> Result<(), http::Error> {
    let uri = req.uri().clone();
    if let Some(authority) = uri.authority() {
        let host = HeaderValue::from_str(authority.as_str())?;
        req.headers_mut().insert(header::HOST, host);
    }
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    *req.uri_mut() = Uri::builder().path_and_query(target).build()?;
    *req.version_mut() = Version::HTTP_11;
    Ok(())
}

/// Undoes `for_http1` for a request that came back unsent from an HTTP/1.1 connection
/// and goes on to an HTTP/2 one: the authority back in the URI, no `Host`.
fn back_to_http2<B>(req: &mut Request<B>) -> Result<(), http::Error> {
    if req.uri().authority().is_none() {
        let host = req.headers_mut().remove(header::HOST);
        let authority = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("");
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        *req.uri_mut() = Uri::builder()
            .scheme("https")
            .authority(authority)
            .path_and_query(target)
            .build()?;
    }
    *req.version_mut() = Version::HTTP_2;
    Ok(())
}
