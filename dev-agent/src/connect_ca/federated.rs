//! A secondary datacenter's CA (`docs/consul-semantics.md#datacenters`): no root of its
//! own. It publishes the primary's roots, the active one with this datacenter's
//! intermediate appended to its `IntermediateCerts` (and `SigningKeyID` the
//! intermediate's), under the primary's trust domain; it signs leaves with the
//! intermediate, so a leaf's `CertPEM` is the leaf, the primary's intermediates, then
//! this datacenter's. Until the primary signed an intermediate the roots are empty and
//! leaves are refused. `wan::ca` watches the primary's roots and calls
//! [`State::federate`]; in the primary, [`CaState::sign_intermediate`] signs the
//! secondaries' requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferrule_control::api::ca::IndexedCARoots;

use super::{CaState, pem_ders, provider_config};
use crate::ca::{CaError, DevCa, KeyType};
use crate::state::State;

/// What a secondary holds once its intermediate is signed.
pub(super) struct Federated {
    /// The primary's roots, as its `/v1/connect/ca/roots` last answered.
    primary: IndexedCARoots,
    /// This datacenter's signing CA.
    signer: Arc<DevCa>,
    /// `ID` of the primary's root that signed `signer`.
    signed_under: String,
    /// The primary's root certificates, DER.
    roots_der: Vec<Vec<u8>>,
}

impl CaState {
    /// A secondary datacenter's CA, empty until [`State::federate`].
    pub(crate) fn secondary(datacenter: &str, leaf_ttl: Duration, index: u64) -> CaState {
        CaState {
            cluster_id: String::new(),
            datacenter: datacenter.to_owned(),
            roots: Vec::new(),
            roots_index: index,
            leaves: HashMap::new(),
            leaf_ttl,
            provider_config: provider_config(leaf_ttl, KeyType::default()),
            force_without_cross_signing: false,
            config_create_index: index,
            config_modify_index: index,
            secondary: true,
            federated: None,
        }
    }

    /// Whether the primary's `roots` call for a new intermediate: none yet, or the
    /// primary's active root (or trust domain) is no longer the one that signed ours.
    pub(crate) fn needs_intermediate(&self, primary: &IndexedCARoots) -> bool {
        self.federated.as_ref().is_none_or(|f| {
            f.signed_under != primary.active_root_id
                || f.primary.trust_domain() != primary.trust_domain()
        })
    }

    /// In the primary: signs a secondary's intermediate request with the active root.
    /// Returns the certificate (PEM) and the ID of the root that signed it.
    pub(crate) fn sign_intermediate(&self, csr_pem: &str) -> Result<(String, String), CaError> {
        if self.secondary {
            return Err(CaError::CaCert(
                "only the primary datacenter signs intermediates".to_owned(),
            ));
        }
        let active = self
            .active()
            .ok_or_else(|| CaError::CaCert("no active root".to_owned()))?;
        Ok((active.ca.sign_intermediate(csr_pem)?, active.ca.id()))
    }

    pub(super) fn federated_active_id(&self) -> String {
        self.federated
            .as_ref()
            .map(|f| f.primary.active_root_id.clone())
            .unwrap_or_default()
    }

    /// The intermediate, what follows a leaf (the primary's active intermediates, then
    /// ours), and the primary's active root ID.
    pub(super) fn federated_signer(&self) -> Result<(Arc<DevCa>, Vec<String>, String), CaError> {
        let f = self.federated.as_ref().ok_or_else(|| {
            CaError::CaCert(
                "this secondary datacenter's CA is not initialized yet: it waits for its primary datacenter to sign an intermediate"
                    .to_owned(),
            )
        })?;
        let mut intermediates = f
            .primary
            .roots
            .iter()
            .find(|r| r.active)
            .map(|r| r.intermediate_certs.clone())
            .unwrap_or_default();
        intermediates.push(f.signer.cert_pem().to_owned());
        Ok((
            Arc::clone(&f.signer),
            intermediates,
            f.primary.active_root_id.clone(),
        ))
    }

    pub(super) fn federated_root_ders(&self) -> Vec<Vec<u8>> {
        self.federated
            .as_ref()
            .map(|f| f.roots_der.clone())
            .unwrap_or_default()
    }

    /// The roots this secondary publishes: the primary's, with our intermediate last in
    /// the active root's `IntermediateCerts`, at this agent's own indexes.
    pub(super) fn federated_roots(&self) -> IndexedCARoots {
        let Some(f) = &self.federated else {
            return IndexedCARoots::default();
        };
        let mut body = f.primary.clone();
        for root in &mut body.roots {
            root.create_index = self.roots_index;
            root.modify_index = self.roots_index;
            if root.active {
                root.intermediate_certs.push(f.signer.cert_pem().to_owned());
                root.signing_key_id = f.signer.signing_key_id();
            }
        }
        body
    }
}

impl State {
    /// Takes the primary's roots, with `signer` this datacenter's new intermediate
    /// (signed by the active one of them). A change moves the roots' index; a new
    /// intermediate re-issues every cached leaf, waking the readers blocked on them.
    /// Returns whether anything changed.
    pub(crate) fn federate(
        &mut self,
        primary: IndexedCARoots,
        signer: Option<DevCa>,
    ) -> Result<bool, CaError> {
        let current = self.ca.federated.as_ref();
        let (signer, signed_under, resign) = match (signer, current) {
            (Some(new), _) => (Arc::new(new), primary.active_root_id.clone(), true),
            (None, Some(f)) if f.primary == primary => return Ok(false),
            (None, Some(f)) => (Arc::clone(&f.signer), f.signed_under.clone(), false),
            (None, None) => {
                return Err(CaError::CaCert(
                    "the primary's roots came before an intermediate".to_owned(),
                ));
            }
        };
        let mut roots_der = Vec::with_capacity(primary.roots.len());
        for root in &primary.roots {
            roots_der.extend(pem_ders(&root.root_cert)?.into_iter().take(1));
        }
        let cluster_id = primary
            .trust_domain()
            .and_then(|td| td.strip_suffix(".consul").map(str::to_owned))
            .unwrap_or_default();
        let index = self.bump();
        self.ca.cluster_id = cluster_id;
        self.ca.federated = Some(Federated {
            primary,
            signer,
            signed_under,
            roots_der,
        });
        self.ca.roots_index = index;
        self.ca.config_modify_index = index;
        if resign {
            self.reissue_leaves(index)?;
        }
        Ok(true)
    }
}
