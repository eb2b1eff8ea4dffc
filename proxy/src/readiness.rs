//! Whether the proxy is ready, and if not, every true reason why: the one list `/ready`
//! answers with and the periodic not-ready warning repeats.
//!
//! The reasons come from three places: the source says what blocks it
//! (`Snapshot::blocked`: the agent does not answer, no such registration, no SVID yet),
//! the listeners say which address they could not bind, and the leaf in force says
//! whether it is inside its validity period now. Pieces still missing are named only
//! when the source gave no reason for them, and intentions only once the leaf is there
//! (before it, they cannot be built, whatever the intentions file says).

use std::sync::Arc;
use std::time::Duration;

use ferrule_control::model::{Snapshot, unix_seconds};
use tokio::sync::watch;

use crate::listeners::{Listening, ListeningState};
use crate::tls::TlsState;

/// How often the not-ready warning repeats.
const REMINDER: Duration = Duration::from_secs(30);

/// Hidden: the reminder's period in milliseconds, for tests only.
const REMINDER_ENV: &str = "FERRULE_TEST_NOT_READY_REMINDER_MS";

/// The proxy's readiness at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    Draining,
    /// Not ready, for these reasons (never empty).
    NotReady(Vec<String>),
}

impl Readiness {
    /// Judges the state the listeners were last reconciled to, the TLS configs built,
    /// at `now` (seconds since the Unix epoch).
    pub fn of(state: &ListeningState, tls_has_identity: bool, now: i64) -> Readiness {
        if state.draining {
            return Readiness::Draining;
        }
        let snapshot = &state.snapshot;
        let mut causes = state.unbound.clone();
        if let Some(problem) = snapshot.leaf.as_ref().and_then(|l| l.validity_problem(now)) {
            causes.push(problem);
        }
        let missing = missing(snapshot);
        if missing.is_empty() {
            if !tls_has_identity {
                causes.push("waiting for the TLS configs to be built".into());
            }
        } else if snapshot.blocked.is_empty() {
            causes.push(format!("waiting for {}", missing.join(", ")));
        } else {
            causes.extend(snapshot.blocked.iter().cloned());
        }
        if causes.is_empty() {
            Readiness::Ready
        } else {
            Readiness::NotReady(causes)
        }
    }

    /// Now, from what the admin listener reads.
    pub fn now(listening: &Listening, tls: &watch::Receiver<Arc<TlsState>>) -> Readiness {
        let has_identity = tls.borrow().has_identity();
        Readiness::of(&listening.get(), has_identity, unix_seconds())
    }
}

/// The pieces of a complete snapshot this one lacks. Intentions count only with a leaf
/// and an inbound side: they are built for the leaf's service.
fn missing(snapshot: &Snapshot) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if snapshot.leaf.is_none() {
        missing.push("the leaf certificate");
    }
    if snapshot.bundle.is_none() {
        missing.push("the trust bundle");
    }
    if snapshot.leaf.is_some() && snapshot.inbound.is_some() && snapshot.intentions.is_none() {
        missing.push("intentions");
    }
    missing
}

/// The reminder's period: 30 s, or the hidden test variable's.
fn reminder_period() -> Duration {
    std::env::var(REMINDER_ENV)
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(REMINDER, Duration::from_millis)
}

/// Warns once a period, while `now` says not ready (and not draining), saying why. Runs
/// until dropped.
pub async fn remind(now: impl Fn() -> Readiness) {
    let period = reminder_period();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Readiness::NotReady(causes) = now() {
            tracing::warn!("not ready: {}", causes.join("; "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_control::model::{self, InboundConfig, Leaf, Protocol};
    use ferrule_dev::ca::{DevCa, LeafSpec};

    fn leaf() -> Arc<Leaf> {
        let ca = DevCa::generate(None).expect("CA");
        let issued = ca.issue(&LeafSpec::service("api")).expect("issue");
        let leaf = model::parse_leaf(
            issued.cert_pem.as_bytes(),
            issued.key_pem.as_bytes(),
            &crate::tls::provider(),
        );
        Arc::new(leaf.expect("leaf"))
    }

    fn inbound() -> InboundConfig {
        InboundConfig {
            bind: "127.0.0.1:1".parse().expect("addr"),
            local_app: "127.0.0.1:2".into(),
            protocol: Protocol::Tcp,
            handshake_timeout: Duration::from_secs(1),
            local_connect_timeout: Duration::from_secs(1),
            local_request_timeout: None,
            idle_timeout: None,
            max_connections: 1,
        }
    }

    fn causes(snapshot: Snapshot, unbound: &[&str], now: i64) -> Vec<String> {
        let state = ListeningState {
            snapshot: Arc::new(snapshot),
            unbound: unbound.iter().map(|s| (*s).to_owned()).collect(),
            draining: false,
        };
        match Readiness::of(&state, true, now) {
            Readiness::NotReady(causes) => causes,
            other => panic!("expected not ready, got {other:?}"),
        }
    }

    #[test]
    fn intentions_are_not_named_before_the_leaf() {
        let snapshot = Snapshot {
            inbound: Some(inbound()),
            ..Snapshot::default()
        };
        let got = causes(snapshot, &[], 0);
        assert_eq!(got, ["waiting for the leaf certificate, the trust bundle"]);
    }

    #[test]
    fn what_blocks_the_source_replaces_the_missing_pieces() {
        let snapshot = Snapshot {
            blocked: vec!["registration: cannot reach the agent".into()],
            ..Snapshot::default()
        };
        let got = causes(
            snapshot,
            &["cannot listen on 127.0.0.1:1 (inbound): in use"],
            0,
        );
        assert_eq!(
            got,
            [
                "cannot listen on 127.0.0.1:1 (inbound): in use",
                "registration: cannot reach the agent"
            ]
        );
    }

    #[test]
    fn a_complete_snapshot_is_ready_until_its_leaf_expires() {
        let leaf = leaf();
        let ca_bundle = DevCa::generate(None).expect("CA");
        let bundle = model::parse_bundle(ca_bundle.cert_pem().as_bytes(), "example.org");
        let snapshot = Snapshot {
            leaf: Some(leaf.clone()),
            bundle: Some(Arc::new(bundle.expect("bundle"))),
            // Not ready for the source's reasons only while incomplete.
            blocked: vec!["agent self: cannot reach the agent".into()],
            ..Snapshot::default()
        };
        let state = ListeningState {
            snapshot: Arc::new(snapshot.clone()),
            unbound: Vec::new(),
            draining: false,
        };
        assert_eq!(
            Readiness::of(&state, true, leaf.not_after),
            Readiness::Ready
        );
        let expired = causes(snapshot, &[], leaf.not_after + 1);
        assert_eq!(expired.len(), 1, "{expired:?}");
        assert!(expired[0].starts_with("leaf expired at 20"), "{expired:?}");
    }
}
