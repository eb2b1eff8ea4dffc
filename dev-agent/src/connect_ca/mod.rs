//! The dev agent's Connect CA: the trust roots it publishes, the service leaves it signs
//! with `crate::ca::DevCa`, their renewal, and root rotation, as Consul's built-in CA
//! does them (`docs/consul-semantics.md#identity`, `#dev-agent`).
//!
//! Leaves are cached per service name. The agent renews a leaf at a random point between
//! 60 % and 90 % of its lifetime (a background task calls [`State::ca_maintenance`]), so a
//! reader blocked on the leaf's index receives the new one; a non-blocking read
//! revalidates (a new leaf if the cached one expired or was signed by a rotated-out root).
//!
//! A rotation (`PUT /v1/connect/ca/configuration` with new key material, or another
//! `PrivateKeyType`/`PrivateKeyBits`) makes a new root for the same cluster,
//! cross-signed by the old root's key. The cross-signed certificate is listed in the new
//! root's `IntermediateCerts` and appended to every leaf's `CertPEM`, so peers that only
//! trust the old root keep verifying new leaves. The old root stays published, inactive,
//! for twice the leaf TTL (Consul's overlap), then is pruned. Every leaf is re-issued at
//! once, waking blocked readers.
//!
//! In a secondary datacenter (`federated`) the CA has no root of its own: it publishes
//! the primary's roots and signs with an intermediate the primary's active root signed
//! (`wan::ca` keeps it so).

mod federated;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::time::Instant;

use crate::ca::{CaError, DevCa, KeyType, KeyTypeError, LeafSpec, RootSpec};
use ferrule_control::api::ca::{CARoot, IndexedCARoots, IssuedCert};
use ferrule_control::duration;

use super::blocking::{self, DEFAULT_WAIT, LEAF_DEFAULT_WAIT};
use super::http::{ApiError, Call, Reply, decode_strict};
use super::state::{Shared, State};

/// `"<Provider> CA Primary Cert"` for the built-in provider.
const ROOT_NAME: &str = "Consul CA Primary Cert";
/// Consul's leaves are backdated a minute for clock skew; short test TTLs get a tenth of
/// their lifetime instead, or they would be born expired.
const BACKDATE: Duration = Duration::from_secs(60);
/// Consul's upper limit for `leaf_cert_ttl` (a year).
pub(super) const MAX_LEAF_TTL: Duration = Duration::from_secs(8760 * 3600);

struct RootEntry {
    ca: Arc<DevCa>,
    active: bool,
    /// Cross-signed certificates (PEM) that chain this root to the one before it.
    intermediates: Vec<String>,
    create_index: u64,
    modify_index: u64,
    /// Set when rotated out: when it leaves the bundle.
    prune_at: Option<Instant>,
}

struct LeafEntry {
    cert: IssuedCert,
    /// The same key as PKCS#8, which the Workload API sends (Consul's API sends SEC1).
    key_pkcs8_pem: String,
    /// `Roots[].ID` of the root that signed it.
    root_id: String,
    expires_at: OffsetDateTime,
    renew_at: Instant,
}

pub(super) struct CaState {
    /// Empty in a secondary until the primary's roots are known.
    cluster_id: String,
    datacenter: String,
    /// Oldest first; exactly one is active.
    roots: Vec<RootEntry>,
    /// Index of the last change to the roots.
    roots_index: u64,
    leaves: HashMap<String, LeafEntry>,
    leaf_ttl: Duration,
    /// The provider config as last written, echoed by `GET /v1/connect/ca/configuration`.
    provider_config: Map<String, Value>,
    force_without_cross_signing: bool,
    config_create_index: u64,
    config_modify_index: u64,
    /// A secondary datacenter's: the primary's roots and this datacenter's signing CA,
    /// once the primary signed it. `roots` stays empty there.
    secondary: bool,
    federated: Option<federated::Federated>,
}

impl CaState {
    pub(super) fn new(ca: DevCa, datacenter: &str, leaf_ttl: Duration, index: u64) -> CaState {
        let provider_config = provider_config(leaf_ttl, ca.key_type());
        CaState {
            cluster_id: ca.cluster_id().to_owned(),
            datacenter: datacenter.to_owned(),
            roots: vec![RootEntry {
                ca: Arc::new(ca),
                active: true,
                intermediates: Vec::new(),
                create_index: index,
                modify_index: index,
                prune_at: None,
            }],
            roots_index: index,
            leaves: HashMap::new(),
            leaf_ttl,
            provider_config,
            force_without_cross_signing: false,
            config_create_index: index,
            config_modify_index: index,
            secondary: false,
            federated: None,
        }
    }

    /// `<cluster-id>.consul`; empty in a secondary that has not reached its primary yet.
    pub(super) fn trust_domain(&self) -> String {
        if self.cluster_id.is_empty() {
            return String::new();
        }
        format!("{}.consul", self.cluster_id)
    }

    fn active(&self) -> Option<&RootEntry> {
        self.roots.iter().find(|r| r.active)
    }

    fn active_id(&self) -> String {
        if self.secondary {
            return self.federated_active_id();
        }
        self.active().map(|r| r.ca.id()).unwrap_or_default()
    }

    fn roots_body(&self) -> IndexedCARoots {
        if self.secondary {
            return self.federated_roots();
        }
        let roots = self
            .roots
            .iter()
            .map(|r| CARoot {
                id: r.ca.id(),
                name: ROOT_NAME.to_owned(),
                serial_number: r.ca.serial_number(),
                signing_key_id: r.ca.signing_key_id(),
                external_trust_domain: self.cluster_id.clone(),
                not_before: rfc3339(r.ca.not_before()),
                not_after: rfc3339(r.ca.not_after()),
                root_cert: r.ca.cert_pem().to_owned(),
                intermediate_certs: r.intermediates.clone(),
                active: r.active,
                private_key_type: r.ca.key_type().kind().to_owned(),
                private_key_bits: r.ca.key_type().bits(),
                create_index: r.create_index,
                modify_index: r.modify_index,
                ..CARoot::default()
            })
            .collect();
        IndexedCARoots {
            active_root_id: self.active_id(),
            trust_domain: self.trust_domain(),
            roots,
        }
    }

    /// What signs leaves now, the certificates that follow a leaf in its `CertPEM`
    /// (the active root's `IntermediateCerts`), and the active root's ID.
    fn signer(&self) -> Result<(Arc<DevCa>, Vec<String>, String), CaError> {
        if self.secondary {
            return self.federated_signer();
        }
        let active = self
            .active()
            .ok_or_else(|| CaError::CaCert("no active root".to_owned()))?;
        Ok((
            Arc::clone(&active.ca),
            active.intermediates.clone(),
            active.ca.id(),
        ))
    }

    /// Every published root certificate (DER), the rotated-out ones included.
    fn root_ders(&self) -> Vec<Vec<u8>> {
        if self.secondary {
            return self.federated_root_ders();
        }
        self.roots
            .iter()
            .map(|r| r.ca.cert_der().to_vec())
            .collect()
    }

    /// Signs a new leaf for `service` with the active root (in a secondary, this
    /// datacenter's intermediate), at raft index `index`.
    fn issue(&self, service: &str, index: u64) -> Result<LeafEntry, CaError> {
        let (signer, intermediates, root_id) = self.signer()?;
        let ttl = time::Duration::try_from(self.leaf_ttl)
            .map_err(|_| CaError::CaCert(format!("leaf TTL {:?} too long", self.leaf_ttl)))?;
        let backdate = time::Duration::try_from(BACKDATE.min(self.leaf_ttl / 10))
            .unwrap_or(time::Duration::ZERO);
        let mut spec = LeafSpec::service(service);
        spec.datacenter = self.datacenter.clone();
        spec.ttl = ttl;
        spec.not_before = Some(OffsetDateTime::now_utc() - backdate);
        let leaf = signer.issue(&spec)?;

        // The leaf alone, then the intermediates in the roots' order (this datacenter's
        // own last, as Consul lists it).
        let mut cert_pem = leaf
            .cert_pem
            .strip_suffix(signer.chain_pem())
            .unwrap_or(&leaf.cert_pem)
            .to_owned();
        for intermediate in &intermediates {
            cert_pem.push_str(intermediate);
        }
        let renew_at = renewal_point(leaf.valid_after, leaf.valid_before);
        Ok(LeafEntry {
            cert: IssuedCert {
                serial_number: leaf.serial_hex.clone(),
                cert_pem,
                private_key_pem: leaf.key_pem.clone(),
                service: service.to_owned(),
                service_uri: leaf.service_uri.clone(),
                valid_after: rfc3339(leaf.valid_after),
                valid_before: rfc3339(leaf.valid_before),
                create_index: index,
                modify_index: index,
                ..IssuedCert::default()
            },
            key_pkcs8_pem: leaf.key_pkcs8_pem().to_owned(),
            root_id,
            expires_at: leaf.valid_before,
            renew_at,
        })
    }
}

/// The built-in provider's configuration as `GET /v1/connect/ca/configuration` shows it.
fn provider_config(leaf_ttl: Duration, key: KeyType) -> Map<String, Value> {
    match json!({
        "LeafCertTTL": duration::format(leaf_ttl),
        "IntermediateCertTTL": "8760h",
        "RootCertTTL": "87600h",
        "RotationPeriod": "2160h",
        "PrivateKeyType": key.kind(),
        "PrivateKeyBits": key.bits(),
    }) {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Consul's soft expiry (`agent/leafcert/util.go`): a random point between 60 % and 90 %
/// of the lifetime, so that many agents do not renew at once.
fn renewal_point(valid_after: OffsetDateTime, valid_before: OffsetDateTime) -> Instant {
    let lifetime = (valid_before - valid_after).as_seconds_f64().max(0.0);
    let at = valid_after + time::Duration::seconds_f64(lifetime * (0.6 + 0.3 * fastrand::f64()));
    let from_now = (at - OffsetDateTime::now_utc()).as_seconds_f64().max(0.0);
    blocking::instant_after(Duration::try_from_secs_f64(from_now).unwrap_or(Duration::MAX))
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// What the Workload API hands a workload of one service: the same leaf the agent API
/// serves, in DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct WorkloadSvid {
    pub(super) spiffe_id: String,
    /// The leaf, then the intermediates (cross-signed roots during a rotation).
    pub(super) chain: Vec<Vec<u8>>,
    pub(super) key_pkcs8: Vec<u8>,
    /// Every published root, the rotated-out ones during their overlap included.
    pub(super) roots: Vec<Vec<u8>>,
    pub(super) trust_domain: String,
}

fn pem_ders(text: &str) -> Result<Vec<Vec<u8>>, CaError> {
    pem::parse_many(text)
        .map(|blocks| blocks.into_iter().map(pem::Pem::into_contents).collect())
        .map_err(|e| CaError::Pem {
            what: "cached leaf",
            reason: e.to_string(),
        })
}

impl State {
    /// The SVID of `service` for the Workload API: the cached leaf, (re)issued as the
    /// leaf endpoint would.
    pub(super) fn workload_svid(&mut self, service: &str) -> Result<WorkloadSvid, CaError> {
        let (cert, _) = self.leaf(service, true)?;
        let key_pem = self
            .ca
            .leaves
            .get(service)
            .map(|l| l.key_pkcs8_pem.clone())
            .ok_or_else(|| CaError::CaCert("leaf vanished".to_owned()))?;
        let key = pem_ders(&key_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| CaError::CaCert("cached leaf has no key".to_owned()))?;
        Ok(WorkloadSvid {
            spiffe_id: cert.service_uri.clone(),
            chain: pem_ders(&cert.cert_pem)?,
            key_pkcs8: key,
            roots: self.ca.root_ders(),
            trust_domain: self.ca.trust_domain(),
        })
    }

    /// The leaf for `service`, issued when missing, past its renewal point, or (when
    /// `revalidate`) expired or signed by a root that is no longer active.
    fn leaf(&mut self, service: &str, revalidate: bool) -> Result<(IssuedCert, u64), CaError> {
        let current = self.ca.leaves.get(service).is_some_and(|leaf| {
            let stale = revalidate
                && (leaf.expires_at <= OffsetDateTime::now_utc()
                    || leaf.root_id != self.ca.active_id());
            !stale && Instant::now() < leaf.renew_at
        });
        if !current {
            let index = self.bump();
            let leaf = self.ca.issue(service, index)?;
            self.ca.leaves.insert(service.to_owned(), leaf);
        }
        let leaf = self
            .ca
            .leaves
            .get(service)
            .ok_or_else(|| CaError::CaCert("leaf vanished".to_owned()))?;
        Ok((leaf.cert.clone(), leaf.cert.modify_index))
    }

    /// Makes `new` the active root; the old one stays, inactive, for twice the leaf TTL.
    /// Every cached leaf is re-issued by the new root.
    fn rotate(&mut self, new: DevCa, cross_sign: bool) -> Result<Arc<DevCa>, CaError> {
        let cross_signed = match (cross_sign, self.ca.active()) {
            (true, Some(old)) => Some(old.ca.cross_sign(&new)?),
            _ => None,
        };
        let index = self.bump();
        let prune_at = blocking::instant_after(self.ca.leaf_ttl.saturating_mul(2));
        for root in self.ca.roots.iter_mut().filter(|r| r.active) {
            root.active = false;
            root.modify_index = index;
            root.prune_at = Some(prune_at);
        }
        let new = Arc::new(new);
        self.ca.roots.push(RootEntry {
            ca: Arc::clone(&new),
            active: true,
            intermediates: cross_signed.into_iter().collect(),
            create_index: index,
            modify_index: index,
            prune_at: None,
        });
        self.ca.roots_index = index;
        self.ca.config_modify_index = index;
        self.reissue_leaves(index)?;
        Ok(new)
    }

    /// Re-issues every cached leaf at `index` with what signs now.
    fn reissue_leaves(&mut self, index: u64) -> Result<(), CaError> {
        let services: Vec<String> = self.ca.leaves.keys().cloned().collect();
        for service in services {
            let leaf = self.ca.issue(&service, index)?;
            self.ca.leaves.insert(service, leaf);
        }
        Ok(())
    }

    /// Prunes rotated-out roots whose overlap ended and renews leaves past their renewal
    /// point. Returns when it next has something to do.
    pub(super) fn ca_maintenance(&mut self) -> Option<Instant> {
        let now = Instant::now();
        if self
            .ca
            .roots
            .iter()
            .any(|r| r.prune_at.is_some_and(|at| at <= now))
        {
            let index = self.bump();
            self.ca
                .roots
                .retain(|r| r.prune_at.is_none_or(|at| at > now));
            self.ca.roots_index = index;
        }
        let due: Vec<String> = self
            .ca
            .leaves
            .iter()
            .filter(|(_, leaf)| leaf.renew_at <= now)
            .map(|(service, _)| service.clone())
            .collect();
        if !due.is_empty() {
            let index = self.bump();
            for service in due {
                match self.ca.issue(&service, index) {
                    Ok(leaf) => {
                        self.ca.leaves.insert(service, leaf);
                    }
                    Err(e) => {
                        tracing::warn!(%service, error = %e, "dev agent: renewing a leaf failed");
                        if let Some(leaf) = self.ca.leaves.get_mut(&service) {
                            leaf.renew_at = now + Duration::from_secs(1);
                        }
                    }
                }
            }
        }
        let prunes = self.ca.roots.iter().filter_map(|r| r.prune_at);
        let renewals = self.ca.leaves.values().map(|l| l.renew_at);
        prunes.chain(renewals).min()
    }
}

/// `GET /v1/agent/connect/ca/roots` and `GET /v1/connect/ca/roots` (`?pem=true` for the
/// latter).
pub(super) async fn roots(shared: &Shared, call: &Call, agent: bool) -> Result<Reply, ApiError> {
    let opts = call.blocking()?;
    let consistency = call.consistency()?;
    let pem = !agent
        && call.query.flag("pem").map_err(|_| {
            ApiError::bad_request("The 'pem' query parameter must be a boolean value")
        })?;
    let answer = blocking::by_index(shared, &opts, DEFAULT_WAIT, |state, _| {
        Ok((state.ca.roots_body(), state.ca.roots_index))
    })
    .await?;
    if pem {
        // Each root, then the intermediates that go with it, as Consul writes them.
        let pem: String = answer
            .value
            .roots
            .iter()
            .flat_map(|r| std::iter::once(&r.root_cert).chain(&r.intermediate_certs))
            .map(String::as_str)
            .collect();
        return Ok(Reply::text("application/pem-certificate-chain", pem)
            .index(answer.index)
            .leader_meta(consistency));
    }
    let reply = Reply::json(&answer.value)?
        .index(answer.index)
        .leader_meta(consistency);
    Ok(if agent {
        reply.cache(!answer.waited)
    } else {
        reply
    })
}

/// `GET /v1/agent/connect/ca/leaf/:service`.
pub(super) async fn leaf(shared: &Shared, call: &Call, service: &str) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    if service.is_empty() {
        return Err(ApiError::bad_request("Missing service name"));
    }
    let opts = call.blocking()?;
    let answer = blocking::by_index(shared, &opts, LEAF_DEFAULT_WAIT, |state, blocking| {
        state
            .leaf(service, !blocking)
            .map_err(|e| ApiError::internal(e.to_string()))
    })
    .await?;
    Ok(Reply::json(&answer.value)?
        .index(answer.index)
        .cache(!answer.waited))
}

/// `PUT /v1/connect/ca/configuration` body and `GET` answer (`structs.CAConfiguration`).
/// Only the dev agent reads or writes it, so it lives here rather than in `ferrule_control::api`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CaConfiguration {
    #[serde(rename = "ClusterID")]
    cluster_id: String,
    provider: String,
    config: Map<String, Value>,
    state: Option<Map<String, Value>>,
    force_without_cross_signing: bool,
    create_index: u64,
    modify_index: u64,
}

/// `GET /v1/connect/ca/configuration`.
pub(super) async fn configuration(shared: &Shared, call: &Call) -> Result<Reply, ApiError> {
    let opts = call.blocking()?;
    let consistency = call.consistency()?;
    let answer = blocking::by_index(shared, &opts, DEFAULT_WAIT, |state, _| {
        let ca = &state.ca;
        let body = CaConfiguration {
            cluster_id: ca.cluster_id.clone(),
            provider: "consul".to_owned(),
            config: ca.provider_config.clone(),
            state: None,
            force_without_cross_signing: ca.force_without_cross_signing,
            create_index: ca.config_create_index,
            modify_index: ca.config_modify_index,
        };
        Ok((body, ca.config_modify_index))
    })
    .await?;
    Ok(Reply::json(&answer.value)?
        .index(answer.index)
        .leader_meta(consistency))
}

/// `PUT /v1/connect/ca/configuration`, as Consul's built-in provider takes it: the root
/// changes only with the key material. `Config.PrivateKey` + `Config.RootCert` rotate
/// to that root; a `PrivateKeyType`/`PrivateKeyBits` other than the active root's
/// rotates to a new root with such a key (leaves stay EC P-256, signed by it). Anything
/// else (`LeafCertTTL`, ...) is stored, keeps the root, and `LeafCertTTL` applies to
/// later leaves. The body replaces the configuration in force, as Consul's does: a key
/// left out takes its default (and is shown with it) (`PrivateKeyType` ec, `PrivateKeyBits` 256, `LeafCertTTL`
/// the agent's `--leaf-ttl`), so leaving out the key type of an EC P-384 root rotates
/// to a P-256 one.
pub(super) async fn set_configuration(shared: &Shared, call: &Call) -> Result<Reply, ApiError> {
    let (body, _) = decode_strict::<CaConfiguration>(&call.body, "Request decode failed")?;
    if shared.wan.is_secondary() {
        return Err(ApiError::bad_request(format!(
            "this is a secondary datacenter: its CA is an intermediate of the primary's root; configure (and rotate) the CA in the primary datacenter {:?}",
            shared.wan.primary()
        )));
    }
    if !body.provider.is_empty() && body.provider != "consul" {
        return Err(ApiError::bad_request(format!(
            "the dev agent only has the built-in \"consul\" CA provider, not {:?}",
            body.provider
        )));
    }
    let str_key = |key: &str| body.config.get(key).and_then(Value::as_str);
    let leaf_ttl = match str_key("LeafCertTTL").filter(|s| !s.is_empty()) {
        None => shared.config.leaf_ttl,
        Some(text) => leaf_ttl(text)?,
    };
    let current = key_type(&body.config);
    let cluster_id = shared.with(|state| state.ca.cluster_id.clone());
    let new = match (str_key("PrivateKey"), str_key("RootCert")) {
        (None, None) => new_key_root(shared, &cluster_id, current?)?,
        (key, cert) => {
            current?;
            Some(next_root(&cluster_id, key, cert)?)
        }
    };
    let rotated = shared.with(|state| apply_configuration(state, &body, leaf_ttl, new));
    let rotated = rotated.map_err(|e| ApiError::internal(e.to_string()))?;
    if let (Some(dir), Some(active)) = (&shared.config.data_dir, rotated) {
        super::persist_ca(dir, &active).map_err(|e| ApiError::internal(e.to_string()))?;
    }
    Ok(Reply::empty())
}

/// Stores the configuration and rotates to `new` when there is one.
fn apply_configuration(
    state: &mut State,
    body: &CaConfiguration,
    leaf_ttl: Duration,
    new: Option<DevCa>,
) -> Result<Option<Arc<DevCa>>, CaError> {
    state.ca.leaf_ttl = leaf_ttl;
    // The defaults, then what the body says (a key type it leaves out is the default,
    // or else a new root would have been made above).
    let mut config = provider_config(leaf_ttl, KeyType::default());
    config.extend(body.config.clone());
    config.remove("PrivateKey");
    config.remove("RootCert");
    state.ca.provider_config = config;
    state.ca.force_without_cross_signing = body.force_without_cross_signing;
    match new {
        Some(new) => {
            // A root given as PEM may have another key type than the body says.
            let key = new.key_type();
            state
                .ca
                .provider_config
                .insert("PrivateKeyType".into(), key.kind().into());
            state
                .ca
                .provider_config
                .insert("PrivateKeyBits".into(), key.bits().into());
            state
                .rotate(new, !body.force_without_cross_signing)
                .map(Some)
        }
        None => {
            let index = state.bump();
            state.ca.config_modify_index = index;
            Ok(None)
        }
    }
}

/// A new root when the configuration asks for another key type than the active root's.
/// The key is made outside the state's lock (an RSA key takes a while).
fn new_key_root(
    shared: &Shared,
    cluster_id: &str,
    wanted: KeyType,
) -> Result<Option<DevCa>, ApiError> {
    let active = shared.with(|state| state.ca.active().map(|r| r.ca.key_type()));
    if active == Some(wanted) {
        return Ok(None);
    }
    let spec = RootSpec {
        cluster_id: Some(cluster_id.to_owned()),
        key: wanted,
        ..RootSpec::default()
    };
    DevCa::generate_with(&spec)
        .map(Some)
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// `PrivateKeyType`/`PrivateKeyBits` of the configuration, checked as Consul's provider
/// checks them: what it refuses is a 500 with its message, as Consul answers a
/// configuration its provider rejects; the types Consul takes and the dev CA cannot
/// make (EC P-224, P-521) are a 400.
fn key_type(config: &Map<String, Value>) -> Result<KeyType, ApiError> {
    let kind = match config.get("PrivateKeyType") {
        None | Some(Value::Null) => "ec",
        Some(Value::String(kind)) => kind.as_str(),
        Some(other) => return Err(undecodable("PrivateKeyType", other)),
    };
    let bits = match config.get("PrivateKeyBits") {
        None | Some(Value::Null) => 256,
        Some(value) => bits(value).ok_or_else(|| undecodable("PrivateKeyBits", value))?,
    };
    KeyType::from_config(kind, bits).map_err(|e| match e {
        KeyTypeError::Invalid(_) => ApiError::internal(format!("error configuring provider: {e}")),
        KeyTypeError::Unsupported(_) => ApiError::bad_request(e.to_string()),
    })
}

/// A number as Go's weakly typed decoding takes one: a JSON number or a numeric string.
fn bits(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn undecodable(key: &str, value: &Value) -> ApiError {
    ApiError::internal(format!(
        "error configuring provider: error decoding config: {key}: cannot decode {value}"
    ))
}

/// `Config.LeafCertTTL`: a Go duration within what Consul accepts for a leaf.
fn leaf_ttl(text: &str) -> Result<Duration, ApiError> {
    duration::parse(text)
        .ok()
        .and_then(duration::positive)
        .filter(|ttl| (Duration::from_secs(1)..=MAX_LEAF_TTL).contains(ttl))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid LeafCertTTL {text:?}: want a duration from 1s to 8760h"
            ))
        })
}

/// The root to rotate to: the one given (`Config.PrivateKey` with `Config.RootCert`), which
/// must be for this cluster's trust domain, or a new one for the same cluster.
fn next_root(cluster_id: &str, key: Option<&str>, cert: Option<&str>) -> Result<DevCa, ApiError> {
    match (key, cert) {
        (Some(key), Some(cert)) => {
            let ca = DevCa::from_pem(cert, key)
                .map_err(|e| ApiError::bad_request(format!("Config.RootCert/PrivateKey: {e}")))?;
            if ca.cluster_id() != cluster_id {
                return Err(ApiError::bad_request(format!(
                    "Config.RootCert is for trust domain {}, not this cluster's {cluster_id}.consul",
                    ca.trust_domain()
                )));
            }
            Ok(ca)
        }
        _ => Err(ApiError::bad_request(
            "Config.PrivateKey and Config.RootCert must be given together",
        )),
    }
}
