//! The gateway's two listeners, kept equal to what its registration asks for: the LAN
//! one always, the WAN one when it is another address. A listener that moves is
//! rebound; connections it accepted carry on. A WAN address that is not this host's (a
//! public address that NAT maps here) is not an error: peers reach us through it, and
//! the LAN listener takes them.

use std::net::SocketAddr;

use ferrule_control::gateway::{GatewayConfig, GatewayLimits};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Shared, conn};
use crate::limits::ConnectionLimit;
use crate::listeners::{Accepting, BindError, accept, accept_failed, bind};

/// A bound listener; dropping it stops its accept loop.
struct Bound {
    addr: SocketAddr,
    cancel: CancellationToken,
}

impl Drop for Bound {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The LAN and WAN listeners.
#[derive(Default)]
pub(super) struct Listeners {
    lan: Option<Bound>,
    wan: Option<Bound>,
    /// The WAN address last found not to be this host's (said once).
    wan_elsewhere: Option<SocketAddr>,
}

impl Listeners {
    /// Binds what `config` asks for and closes what it no longer does; returns what
    /// could not be bound.
    pub(super) async fn reconcile(
        &mut self,
        config: Option<&GatewayConfig>,
        shared: &Shared,
    ) -> Vec<BindError> {
        let Some(config) = config else {
            self.lan = None;
            self.wan = None;
            return Vec::new();
        };
        let mut errors = Vec::new();
        let limits = config.limits;
        if let Err(e) = reconcile_one(&mut self.lan, Some(config.lan), "lan", limits, shared).await
        {
            errors.push(e);
        }
        match reconcile_one(&mut self.wan, config.wan, "wan", limits, shared).await {
            Err(e) if e.is_not_local() => {
                if self.wan_elsewhere != config.wan {
                    tracing::info!(error = %e, "the WAN address is not this host's (NAT?): peers reach the gateway through it, the LAN listener takes them");
                    self.wan_elsewhere = config.wan;
                }
            }
            Err(e) => errors.push(e),
            Ok(()) => {}
        }
        errors
    }
}

/// Keeps `slot` bound to `addr` (`None`: closed).
async fn reconcile_one(
    slot: &mut Option<Bound>,
    addr: Option<SocketAddr>,
    name: &'static str,
    limits: GatewayLimits,
    shared: &Shared,
) -> Result<(), BindError> {
    let Some(addr) = addr else {
        *slot = None;
        return Ok(());
    };
    if slot.as_ref().is_some_and(|b| b.addr == addr) {
        return Ok(());
    }
    *slot = None;
    let listener = bind(addr, || format!("gateway {name}")).await?;
    tracing::info!(listener = name, addr = %addr, "mesh gateway listener bound");
    let cancel = CancellationToken::new();
    spawn(listener, name, limits, shared, cancel.clone());
    *slot = Some(Bound { addr, cancel });
    Ok(())
}

/// Accepts on `listener` until `cancel`, at most the limit's connections at a time,
/// each tracked for the drain.
fn spawn(
    listener: TcpListener,
    name: &'static str,
    limits: GatewayLimits,
    shared: &Shared,
    cancel: CancellationToken,
) {
    let accepting = Accepting {
        limit: Some(ConnectionLimit::new(
            format!("gateway {name}"),
            limits.max_connections,
        )),
        cancel,
        tasks: Some(shared.connections.clone()),
    };
    let listener_name = format!("gateway {name}");
    let failed = move |e: &std::io::Error| accept_failed(&listener_name, e);
    let shared = shared.clone();
    let connection = move |tcp, peer| conn::handle(tcp, peer, name, limits, shared.clone());
    tokio::spawn(accept(listener, accepting, failed, connection));
}
