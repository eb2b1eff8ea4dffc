//! Consul's SPIFFE ID for a service, and nothing else.
//!
//! A Consul service identity is `spiffe://<td>/ns/<ns>/dc/<dc>/svc/<service>`, with
//! `/ap/<partition>` in front of `/ns` when the partition is not `default`. The
//! `spiffe` crate checks that a string is a SPIFFE ID at all; this module checks that
//! its path is a Consul service path and splits it into its parts.

use std::fmt;

use spiffe::SpiffeId;

/// The partition (and namespace) every Community Edition identity lives in.
pub const DEFAULT: &str = "default";

/// A Consul service identity, as carried in the URI SAN of a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ServiceId {
    pub trust_domain: String,
    pub partition: String,
    pub namespace: String,
    pub datacenter: String,
    pub service: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("not a SPIFFE ID: {0}")]
    NotSpiffe(String),
    #[error("SPIFFE ID {0} is not a Consul service identity (want /ns/<ns>/dc/<dc>/svc/<name>)")]
    NotService(String),
}

impl ServiceId {
    /// A service identity in the default partition.
    pub fn new(trust_domain: &str, namespace: &str, datacenter: &str, service: &str) -> Self {
        ServiceId {
            trust_domain: trust_domain.to_owned(),
            partition: DEFAULT.to_owned(),
            namespace: namespace.to_owned(),
            datacenter: datacenter.to_owned(),
            service: service.to_owned(),
        }
    }

    /// Parses a URI such as `spiffe://<td>/ns/default/dc/dc1/svc/web`.
    pub fn parse(uri: &str) -> Result<Self, IdError> {
        let id = SpiffeId::new(uri).map_err(|e| IdError::NotSpiffe(format!("{uri}: {e}")))?;
        Self::from_spiffe(&id)
    }

    /// Splits an already validated SPIFFE ID into Consul's service parts.
    pub fn from_spiffe(id: &SpiffeId) -> Result<Self, IdError> {
        let not_service = || IdError::NotService(id.to_string());
        let segments: Vec<&str> = id.path().split('/').skip(1).collect();
        let (partition, rest) = match segments.as_slice() {
            ["ap", partition, rest @ ..] => (*partition, rest),
            rest => (DEFAULT, rest),
        };
        match rest {
            ["ns", namespace, "dc", datacenter, "svc", service] => Ok(ServiceId {
                trust_domain: id.trust_domain_name().to_owned(),
                partition: partition.to_owned(),
                namespace: (*namespace).to_owned(),
                datacenter: (*datacenter).to_owned(),
                service: (*service).to_owned(),
            }),
            _ => Err(not_service()),
        }
    }

    /// The URI form, as Consul writes it into a leaf certificate.
    pub fn to_uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.trust_domain)?;
        if self.partition != DEFAULT {
            write!(f, "/ap/{}", self.partition)?;
        }
        write!(
            f,
            "/ns/{}/dc/{}/svc/{}",
            self.namespace, self.datacenter, self.service
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

    #[test]
    fn parses_default_partition_service() {
        let id = ServiceId::parse(&format!("spiffe://{TD}/ns/default/dc/dc1/svc/web")).unwrap();
        assert_eq!(id, ServiceId::new(TD, "default", "dc1", "web"));
        assert_eq!(
            id.to_uri(),
            format!("spiffe://{TD}/ns/default/dc/dc1/svc/web")
        );
    }

    #[test]
    fn parses_partition_and_round_trips() {
        let uri = format!("spiffe://{TD}/ap/team/ns/billing/dc/dc2/svc/db");
        let id = ServiceId::parse(&uri).unwrap();
        assert_eq!(id.partition, "team");
        assert_eq!(id.namespace, "billing");
        assert_eq!(id.datacenter, "dc2");
        assert_eq!(id.service, "db");
        assert_eq!(id.to_uri(), uri);
    }

    #[test]
    fn rejects_what_is_not_a_service() {
        for uri in [
            format!("spiffe://{TD}"),
            format!("spiffe://{TD}/agent/client/dc/dc1/id/node1"),
            format!("spiffe://{TD}/gateway/mesh/dc/dc1"),
            format!("spiffe://{TD}/ns/default/dc/dc1/svc/web/extra"),
            format!("spiffe://{TD}/ns/default/dc/dc1"),
        ] {
            assert!(
                matches!(ServiceId::parse(&uri), Err(IdError::NotService(_))),
                "{uri}"
            );
        }
        for uri in [
            "https://example.com/ns/a/dc/b/svc/c",
            "spiffe://",
            "spiffe://td/ns//dc/b/svc/c",
        ] {
            assert!(
                matches!(ServiceId::parse(uri), Err(IdError::NotSpiffe(_))),
                "{uri}"
            );
        }
    }
}
