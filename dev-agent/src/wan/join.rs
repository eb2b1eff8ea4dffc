//! Which datacenters there are, and where their agents listen. Consul learns this by
//! gossip in the WAN pool; the dev agents use one internal endpoint of their own
//! instead: a secondary `PUT`s `{Datacenter, Address}` to the primary's
//! `/v1/internal/ferrule/wan/join` every second, and the primary answers with every
//! datacenter it knows (itself included). So the primary learns the secondaries (again
//! after a restart, within a second), and each secondary learns the others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde::{Deserialize, Serialize};

use super::{Reachability, pause};
use crate::http::{ApiError, Call, Reply, decode_strict};
use crate::state::Shared;

/// The internal endpoint a datacenter announces itself on.
pub(crate) const PATH: &str = "/v1/internal/ferrule/wan/join";
/// How often a secondary announces itself.
const EVERY: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(5);

/// What a datacenter says of itself.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Member {
    datacenter: String,
    /// The agent's HTTP address, `IP:PORT`.
    address: String,
}

/// The answer: who answered, its primary, and every datacenter it knows.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Members {
    datacenter: String,
    primary_datacenter: String,
    members: Vec<Member>,
}

/// `PUT /v1/internal/ferrule/wan/join`.
pub(crate) async fn handle(shared: &Shared, call: &Call) -> Result<Reply, ApiError> {
    let (member, _) = decode_strict::<Member>(&call.body, "Request decode failed")?;
    let wan = &shared.wan;
    if member.datacenter.is_empty() || member.datacenter.contains('/') {
        return Err(ApiError::bad_request(
            "Datacenter must be a datacenter name",
        ));
    }
    if member.datacenter == wan.datacenter() {
        return Err(ApiError::bad_request(format!(
            "datacenter {:?} is this agent's own: every datacenter needs a name of its own",
            member.datacenter
        )));
    }
    let addr: SocketAddr = member.address.parse().map_err(|_| {
        ApiError::bad_request(format!("Address {:?} is not IP:PORT", member.address))
    })?;
    if wan.learn(&member.datacenter, addr) {
        tracing::info!(datacenter = %member.datacenter, %addr, "dev agent: a datacenter joined the WAN");
    }
    Reply::json(&members_of(shared))
}

fn members_of(shared: &Shared) -> Members {
    let wan = &shared.wan;
    let mut members = vec![Member {
        datacenter: wan.datacenter().to_owned(),
        address: wan.advertise.to_string(),
    }];
    members.extend(wan.others().into_iter().filter_map(|dc| {
        wan.address(&dc).map(|addr| Member {
            datacenter: dc,
            address: addr.to_string(),
        })
    }));
    Members {
        datacenter: wan.datacenter().to_owned(),
        primary_datacenter: wan.primary().to_owned(),
        members,
    }
}

/// A secondary's loop: announce, learn the others from the answer, again every second.
pub(crate) async fn keep_announcing(shared: Arc<Shared>) {
    let mut reach = Reachability::default();
    let mut joined = false;
    loop {
        match announce(&shared).await {
            Ok(()) => {
                reach.succeeded("joining the WAN");
                if !joined {
                    tracing::info!(primary = %shared.wan.primary(), "dev agent: joined the WAN");
                    joined = true;
                }
            }
            Err(e) => reach.failed("joining the WAN", &e),
        }
        if pause(&shared, EVERY).await {
            return;
        }
    }
}

/// One announcement to the primary (or, before it is known, to `--join-wan`).
async fn announce(shared: &Shared) -> Result<(), String> {
    let wan = &shared.wan;
    let target = wan
        .primary_address()
        .ok_or_else(|| "no address for the primary datacenter".to_owned())?;
    let me = Member {
        datacenter: wan.datacenter().to_owned(),
        address: wan.advertise.to_string(),
    };
    let answer: Members = wan
        .client
        .call_json(target, Method::PUT, PATH, &me, TIMEOUT)
        .await
        .map_err(|e| format!("{target}: {e}"))?;
    for member in &answer.members {
        if let Ok(addr) = member.address.parse::<SocketAddr>()
            && wan.learn(&member.datacenter, addr)
        {
            tracing::info!(datacenter = %member.datacenter, %addr, "dev agent: learned a datacenter");
        }
    }
    if answer.datacenter != wan.primary() && wan.address(wan.primary()).is_none() {
        return Err(format!(
            "{target} is datacenter {:?}, which does not know the primary {:?}",
            answer.datacenter,
            wan.primary()
        ));
    }
    Ok(())
}
