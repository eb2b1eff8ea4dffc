//! One connection through the mesh gateway: read the ClientHello's server name without
//! terminating TLS, route it (waiting, within the connect timeout, for what the agent
//! has not answered yet), dial the route's addresses in round-robin order until one
//! takes the connection, and splice: the ClientHello first, then both ways until done
//! or idle. The TLS session stays end to end between the caller and the instance.

use std::net::SocketAddr;
use std::sync::Arc;

use ferrule_control::gateway::{GatewayLimits, GatewayView};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Shared;
use super::route::{Miss, Route, route};
use super::sni::{HelloError, read_hello};
use crate::limits::{self, Watched};
use crate::metrics::{GatewayGuard, GatewayOutcome, Metered};
use crate::splice::{Spliced, splice};

/// Serves one connection accepted on the `listener` (`lan` or `wan`) listener;
/// `bound_with` are the limits the listener was bound with, used should the view no
/// longer have any.
pub(super) async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    listener: &'static str,
    bound_with: GatewayLimits,
    shared: Shared,
) {
    let _ = tcp.set_nodelay(true);
    let mut guard = GatewayGuard::new(listener, peer);
    let limits = shared
        .views
        .borrow()
        .gateway
        .as_ref()
        .map_or(bound_with, |g| g.limits);
    let mut caller = Watched::new(tcp);
    let (hello, parsed) = read_hello(&mut caller, limits.hello_timeout).await;
    let sni = match parsed.map(|h| h.sni) {
        Ok(Some(sni)) => sni,
        Ok(None) => return refuse(&mut guard, GatewayOutcome::NoSni, "no server name"),
        Err(e) => return refuse(&mut guard, hello_outcome(e), &e.to_string()),
    };
    guard.set_sni(&sni);
    let view = match settle(&shared, &sni, Instant::now() + limits.connect_timeout).await {
        Ok(view) => view,
        Err(Miss::Unknown) => {
            return refuse(
                &mut guard,
                GatewayOutcome::UnknownSni,
                "no route for the name",
            );
        }
        Err(Miss::NoEndpoints | Miss::NotYet) => {
            return refuse(&mut guard, GatewayOutcome::NoEndpoints, "nothing healthy");
        }
    };
    let Ok(route) = route(&view, &sni) else {
        return refuse(
            &mut guard,
            GatewayOutcome::NoEndpoints,
            "the route went away",
        );
    };
    let Some(mut backend) = dial(&shared, &route, &hello, &limits).await else {
        tracing::debug!(sni = %sni, "no instance or gateway could be reached; closing");
        return guard.finish(GatewayOutcome::ConnectError);
    };
    match &route {
        Route::Local { service, .. } => {
            let own = view.datacenter.as_deref().unwrap_or_default();
            guard.routed(own, service);
        }
        Route::Remote { datacenter, .. } => guard.routed(datacenter, ""),
    }
    guard.bytes().received(hello.len());
    if forward(caller, &mut backend, &guard, &limits).await == Spliced::Idle {
        tracing::debug!(sni = %sni, "closing idle connection");
    }
}

/// Splices the caller and the backend (which has the hello already) until both are
/// done or the connection is idle for the idle timeout.
async fn forward(
    caller: Watched<TcpStream>,
    backend: &mut TcpStream,
    guard: &GatewayGuard,
    limits: &GatewayLimits,
) -> Spliced {
    let idle = limits::idle(caller.activity(), limits.idle_timeout);
    let mut caller = Metered::new(caller, guard.bytes());
    let stop = async {
        idle.await;
        Spliced::Idle
    };
    splice(&mut caller, backend, stop).await
}

/// Counts a connection that is closed without a route, and says why at debug.
fn refuse(guard: &mut GatewayGuard, outcome: GatewayOutcome, why: &str) {
    tracing::debug!(
        result = outcome.label(),
        "closing a gateway connection: {why}"
    );
    guard.finish(outcome);
}

fn hello_outcome(e: HelloError) -> GatewayOutcome {
    match e {
        HelloError::NotTls => GatewayOutcome::NotTls,
        HelloError::Malformed(_) | HelloError::Truncated => GatewayOutcome::BadHello,
        HelloError::TooLarge => GatewayOutcome::HelloTooLarge,
        HelloError::Timeout => GatewayOutcome::HelloTimeout,
        HelloError::Closed => GatewayOutcome::Probe,
    }
}

/// The newest view in which `sni` has a route, or why there is none. While the agent
/// has not answered what decides it, waits for newer views until `deadline`.
async fn settle(shared: &Shared, sni: &str, deadline: Instant) -> Result<Arc<GatewayView>, Miss> {
    let mut views = shared.views.clone();
    loop {
        let view = views.borrow_and_update().clone();
        match route(&view, sni) {
            Ok(_) => return Ok(view),
            Err(Miss::NotYet) => {}
            Err(miss) => return Err(miss),
        }
        match tokio::time::timeout_at(deadline, views.changed()).await {
            Ok(Ok(())) => {}
            _ => return Err(Miss::NotYet),
        }
    }
}

/// Dials the route's addresses in round-robin order, each within the connect timeout,
/// and hands the first that takes the ClientHello; `None` when none does.
async fn dial(
    shared: &Shared,
    route: &Route<'_>,
    hello: &[u8],
    limits: &GatewayLimits,
) -> Option<TcpStream> {
    let addresses = route.addresses();
    for i in shared.rotation.order(route) {
        let Some(addr) = addresses.get(i) else {
            continue;
        };
        let attempt = async {
            let mut stream = TcpStream::connect(addr.as_str()).await?;
            stream.set_nodelay(true)?;
            stream.write_all(hello).await?;
            Ok::<_, std::io::Error>(stream)
        };
        match tokio::time::timeout(limits.connect_timeout, attempt).await {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(e)) => tracing::debug!(addr = %addr, error = %e, "dial failed; trying the next"),
            Err(_) => tracing::debug!(addr = %addr, "dial timed out; trying the next"),
        }
    }
    None
}
