//! Where a server name goes, as Consul's mesh gateways route it
//! (`docs/consul-semantics.md#mesh-gateways`): a pure function over the gateway's view,
//! and the round robin over what it finds.
//!
//! `[<subset>.]<service>.<namespace>.<dc>.internal.<trust domain>` names a service (or
//! one of its resolver's subsets) of this gateway's datacenter; any name ending in
//! `.<other dc>.internal.<trust domain>` goes to that datacenter's mesh gateways,
//! untouched, whatever comes before. Everything else is unknown: peering names
//! (`.external.`), partitions (`.internal-v1.`), prepared queries (`.query.`), another
//! trust domain, a namespace other than `default` (Community Edition has none).

use std::collections::HashMap;

use ferrule_control::gateway::GatewayView;
use parking_lot::Mutex;

/// The one namespace of Community Edition.
const DEFAULT_NAMESPACE: &str = "default";

/// Where a connection is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'v> {
    /// A service of this datacenter: its instances (or its subset's).
    Local {
        /// The service's name as registered (the `service` label).
        service: &'v str,
        subset: Option<&'v str>,
        instances: &'v [String],
    },
    /// Another datacenter's mesh gateways.
    Remote {
        datacenter: &'v str,
        gateways: &'v [String],
    },
}

impl Route<'_> {
    /// The addresses to try, in no particular order.
    pub fn addresses(&self) -> &[String] {
        match self {
            Route::Local { instances, .. } => instances,
            Route::Remote { gateways, .. } => gateways,
        }
    }

    /// The key its round robin turns on.
    fn key(&self) -> String {
        match self {
            Route::Local {
                service, subset, ..
            } => format!("{}/{service}", subset.unwrap_or_default()),
            Route::Remote { datacenter, .. } => format!("dc:{datacenter}"),
        }
    }
}

/// Why a name has no route now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No route for it, and none is coming.
    Unknown,
    /// A known service or datacenter, with nothing healthy to send to.
    NoEndpoints,
    /// The agent has not answered what would decide it yet: worth waiting for.
    NotYet,
}

/// The route for `sni` (lower case, as the ClientHello reader gives it).
pub fn route<'v>(view: &'v GatewayView, sni: &str) -> Result<Route<'v>, Miss> {
    let (Some(td), Some(own)) = (&view.trust_domain, &view.datacenter) else {
        return Err(Miss::NotYet);
    };
    let Some(name) = sni
        .strip_suffix(td.as_str())
        .and_then(|n| n.strip_suffix(".internal."))
    else {
        return Err(Miss::Unknown);
    };
    let (rest, datacenter) = name.rsplit_once('.').ok_or(Miss::Unknown)?;
    if rest.is_empty() {
        return Err(Miss::Unknown);
    }
    if datacenter.eq_ignore_ascii_case(own) {
        return local(view, rest);
    }
    let remote = view.remote.as_ref().ok_or(Miss::NotYet)?;
    let (name, dc) = remote.get_key_value(datacenter).ok_or(Miss::Unknown)?;
    match dc.gateways.as_deref() {
        None => Err(Miss::NotYet),
        Some([]) => Err(Miss::NoEndpoints),
        Some(gateways) => Ok(Route::Remote {
            datacenter: name,
            gateways,
        }),
    }
}

/// `[<subset>.]<service>.<namespace>` in this datacenter.
fn local<'v>(view: &'v GatewayView, name: &str) -> Result<Route<'v>, Miss> {
    let labels: Vec<&str> = name.split('.').collect();
    let (subset, service, namespace) = match labels.as_slice() {
        [service, namespace] => (None, *service, *namespace),
        [subset, service, namespace] => (Some(*subset), *service, *namespace),
        _ => return Err(Miss::Unknown),
    };
    if namespace != DEFAULT_NAMESPACE || service.is_empty() || subset == Some("") {
        return Err(Miss::Unknown);
    }
    let services = view.services.as_ref().ok_or(Miss::NotYet)?;
    let found = services.get(service).ok_or(Miss::Unknown)?;
    let (subset, instances) = match subset {
        None => (None, &found.instances),
        Some(subset) => {
            let (name, instances) = found.subsets.get_key_value(subset).ok_or(Miss::Unknown)?;
            (Some(name.as_str()), instances)
        }
    };
    match instances.as_deref() {
        None => Err(Miss::NotYet),
        Some([]) => Err(Miss::NoEndpoints),
        Some(instances) => Ok(Route::Local {
            service: &found.name,
            subset,
            instances,
        }),
    }
}

/// Round robin per route: each connection starts one further along the route's
/// addresses, and tries the others in order after it.
#[derive(Default)]
pub struct Rotation {
    next: Mutex<HashMap<String, usize>>,
}

impl Rotation {
    /// The order in which to try `route`'s addresses.
    pub fn order(&self, route: &Route<'_>) -> Vec<usize> {
        let n = route.addresses().len();
        if n == 0 {
            return Vec::new();
        }
        let start = {
            let mut next = self.next.lock();
            let slot = next.entry(route.key()).or_default();
            let start = *slot % n;
            *slot = start + 1;
            start
        };
        (0..n).map(|i| (start + i) % n).collect()
    }
}

#[cfg(test)]
mod tests;
