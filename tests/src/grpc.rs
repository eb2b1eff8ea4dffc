//! A gRPC service built with tonic, as an application behind a `grpc` sidecar, and its
//! generated client. Calls that reach the service are counted, so a test can prove a
//! denied one never did.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// The code generated from `proto/echo.proto`.
pub mod proto {
    tonic::include_proto!("ferrule.test");
}

use proto::echo_server::{Echo, EchoServer};
use proto::{CountRequest, Message};

type MessageStream = Pin<Box<dyn Stream<Item = Result<Message, Status>> + Send>>;

#[derive(Clone, Default)]
struct Service {
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Echo for Service {
    async fn say(&self, request: Request<Message>) -> Result<Response<Message>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(request.into_inner()))
    }

    type CountStream = MessageStream;

    async fn count(
        &self,
        request: Request<CountRequest>,
    ) -> Result<Response<MessageStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let count = request.into_inner().count;
        let numbers = tokio_stream::iter((0..count).map(|i| {
            Ok(Message {
                text: i.to_string(),
            })
        }));
        Ok(Response::new(Box::pin(numbers)))
    }

    type ChatStream = MessageStream;

    async fn chat(
        &self,
        request: Request<Streaming<Message>>,
    ) -> Result<Response<MessageStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let replies = request.into_inner().map(|message| {
            message.map(|m| Message {
                text: format!("echo: {}", m.text),
            })
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn secret(&self, _request: Request<Message>) -> Result<Response<Message>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(Message {
            text: "the secret".into(),
        }))
    }
}

/// The Echo service on 127.0.0.1:0, until dropped.
pub struct GrpcEcho {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl GrpcEcho {
    pub async fn start() -> GrpcEcho {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the gRPC backend on 127.0.0.1:0");
        let addr = listener.local_addr().expect("gRPC backend address");
        let service = Service::default();
        let calls = service.calls.clone();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(EchoServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        GrpcEcho { addr, calls, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Calls that reached the service so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for GrpcEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}
