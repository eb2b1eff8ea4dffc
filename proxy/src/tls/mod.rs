//! mTLS for both directions: the rustls configs built from a snapshot, and the
//! sessions they resume.
//!
//! Who a peer is and whether its certificate proves it is `verify`; the client side's
//! ticket store is `tickets`. Configs are rebuilt only when the leaf, the bundle or the
//! set of upstream identities changes, and published as one `Arc<TlsState>`; a
//! handshake clones the `Arc` it starts with, so a rotation never touches established
//! connections. A resumed session skips the verifier, so tickets end with our leaf and
//! a resumed peer's leaf is checked against the clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferrule_control::identity::ServiceId;
use ferrule_control::model::{Endpoint, Leaf, Protocol, Snapshot, TrustBundle};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

#[cfg(test)]
mod chain_tests;
mod tickets;
mod verify;

use verify::{Anchors, ClientSvidVerifier, ServerSvidVerifier};
pub use verify::{
    PeerIdentityMismatch, SvidError, SvidVerifier, is_identity_mismatch, peer_identity,
};

/// Always presents our current leaf, in both roles.
#[derive(Debug)]
struct OurLeaf(Arc<CertifiedKey>);

impl ResolvesServerCert for OurLeaf {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for OurLeaf {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

pub const H2: &[u8] = b"h2";
pub const HTTP_11: &[u8] = b"http/1.1";

/// The ALPN protocols a listener of this protocol advertises, most preferred first: none
/// for TCP (the bytes are the app's business), both HTTP versions for every HTTP family.
/// Consul's Envoy callers offer exactly one (`http/1.1` for `http`, `h2` for `http2` and
/// `grpc`), and rustls, unlike BoringSSL, aborts a handshake whose lists do not overlap:
/// the list must hold both. HTTP/2 first keeps two ferrule sidecars on one multiplexed
/// connection. See `docs/consul-semantics.md#on-the-wire`.
fn server_alpn(protocol: Protocol) -> Vec<Vec<u8>> {
    match protocol {
        Protocol::Tcp => Vec::new(),
        Protocol::Http | Protocol::Http2 | Protocol::Grpc => vec![H2.to_vec(), HTTP_11.to_vec()],
    }
}

/// What a dial offers in ALPN, by the upstream's protocol: nothing for TCP, both HTTP
/// versions for `http` (a ferrule callee picks HTTP/2, an Envoy one HTTP/1.1), and only
/// HTTP/2 for `http2` and `grpc`, whose requests cannot travel over HTTP/1.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Offer {
    Nothing,
    EitherHttp,
    Http2,
}

impl Offer {
    fn of(protocol: Protocol) -> Offer {
        match protocol {
            Protocol::Tcp => Offer::Nothing,
            Protocol::Http => Offer::EitherHttp,
            Protocol::Http2 | Protocol::Grpc => Offer::Http2,
        }
    }

    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Offer::Nothing => Vec::new(),
            Offer::EitherHttp => vec![H2.to_vec(), HTTP_11.to_vec()],
            Offer::Http2 => vec![H2.to_vec()],
        }
    }
}

/// A client config is per endpoint (its session tickets are that endpoint's alone: every
/// endpoint of a target is dialed with the same server name), per expected identity and
/// per ALPN offer. The server name itself is the dialled target's, given per handshake
/// (`outbound::dial`): one endpoint reached as two targets (a subset and its service,
/// or through a mesh gateway) keeps each name's tickets apart, as the store is keyed by
/// server name.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    addr: String,
    expected: ServiceId,
    offer: Offer,
}

/// The rustls configs for one (leaf, bundle) pair. Absent pieces mean no handshakes:
/// we fail closed until identity and roots are loaded.
#[derive(Default)]
pub struct TlsState {
    inputs: Option<(Arc<Leaf>, Arc<TrustBundle>)>,
    server_alpn: Vec<Vec<u8>>,
    pub server: Option<Arc<ServerConfig>>,
    clients: HashMap<ClientKey, Arc<ClientConfig>>,
    /// What builds a client config that is not among `clients`: an endpoint that a
    /// connection saw in a snapshot newer than these configs (they are rebuilt by
    /// another task, a moment later) is dialled at once rather than refused.
    makes: Option<ClientMaker>,
}

/// The parts every client config of one (leaf, bundle) pair is built from.
struct ClientMaker {
    anchors: Arc<Anchors>,
    resolver: Arc<OurLeaf>,
    provider: Arc<CryptoProvider>,
}

impl TlsState {
    /// The client config that dials `endpoint` for an upstream of `protocol`, if we
    /// have an identity: the prepared one, else one built now (without the prepared
    /// one's session cache).
    pub fn client_for(&self, endpoint: &Endpoint, protocol: Protocol) -> Option<Arc<ClientConfig>> {
        let key = ClientKey {
            addr: endpoint.addr.clone(),
            expected: endpoint.identity.clone(),
            offer: Offer::of(protocol),
        };
        if let Some(config) = self.clients.get(&key) {
            return Some(config.clone());
        }
        let m = self.makes.as_ref()?;
        client_config(&m.anchors, &key, m.resolver.clone(), &m.provider)
    }

    /// Whether these configs have a leaf and a bundle to handshake with.
    pub fn has_identity(&self) -> bool {
        self.inputs.is_some()
    }

    /// Builds the configs for a snapshot, reusing `prev` when nothing TLS-relevant
    /// changed, so session caches survive unrelated updates.
    pub fn for_snapshot(
        snapshot: &Snapshot,
        prev: &Arc<TlsState>,
        provider: &Arc<CryptoProvider>,
    ) -> Arc<TlsState> {
        let (Some(leaf), Some(bundle)) = (&snapshot.leaf, &snapshot.bundle) else {
            return Arc::new(TlsState::default());
        };
        let same_inputs = prev
            .inputs
            .as_ref()
            .is_some_and(|(l, b)| Arc::ptr_eq(l, leaf) && Arc::ptr_eq(b, bundle));
        let server_alpn = snapshot
            .inbound
            .as_ref()
            .map_or_else(Vec::new, |ib| server_alpn(ib.protocol));
        let wanted = wanted_clients(snapshot);
        if same_inputs
            && server_alpn == prev.server_alpn
            && wanted.len() == prev.clients.len()
            && wanted.iter().all(|key| prev.clients.contains_key(key))
        {
            return prev.clone();
        }

        let anchors = Arc::new(Anchors::new(bundle, provider));
        let resolver = Arc::new(OurLeaf(leaf.key.clone()));
        // Only the upstreams changed: keep the inbound config, and with it the ticket
        // key, so callers' sessions still resume.
        let server = if same_inputs && server_alpn == prev.server_alpn {
            prev.server.clone()
        } else {
            server_config(&anchors, resolver.clone(), provider, &server_alpn, leaf)
        };
        let reusable = same_inputs.then_some(&prev.clients);
        let clients = client_configs(wanted, reusable, &anchors, &resolver, provider);
        Arc::new(TlsState {
            inputs: Some((leaf.clone(), bundle.clone())),
            server_alpn,
            server,
            clients,
            makes: Some(ClientMaker {
                anchors,
                resolver,
                provider: provider.clone(),
            }),
        })
    }
}

/// One client config per endpoint, expected identity and offer of the snapshot's
/// upstreams.
fn wanted_clients(snapshot: &Snapshot) -> Vec<ClientKey> {
    snapshot
        .upstreams
        .iter()
        .flat_map(|u| {
            u.routing
                .targets()
                .flat_map(|t| &t.endpoints)
                .map(|e| ClientKey {
                    addr: e.addr.clone(),
                    expected: e.identity.clone(),
                    offer: Offer::of(u.protocol),
                })
        })
        .collect()
}

/// The client configs for `wanted`, taking those in `reusable` (built for the same
/// leaf and bundle) as they are, so their session stores survive.
fn client_configs(
    wanted: Vec<ClientKey>,
    reusable: Option<&HashMap<ClientKey, Arc<ClientConfig>>>,
    anchors: &Arc<Anchors>,
    resolver: &Arc<OurLeaf>,
    provider: &Arc<CryptoProvider>,
) -> HashMap<ClientKey, Arc<ClientConfig>> {
    let mut clients = HashMap::new();
    for key in wanted {
        if clients.contains_key(&key) {
            continue;
        }
        let config = match reusable.and_then(|prev| prev.get(&key)) {
            Some(c) => Some(c.clone()),
            None => client_config(anchors, &key, resolver.clone(), provider),
        };
        if let Some(config) = config {
            clients.insert(key, config);
        }
    }
    clients
}

/// Whether configs built from now on resume TLS sessions. A process-wide switch set
/// once at start-up (`ferrule proxy --tls-resumption`), so that measuring with and
/// without it needs no change to how configs are threaded through.
static SESSION_RESUMPTION: AtomicBool = AtomicBool::new(true);

/// Turns TLS session resumption between sidecars on (rustls' default: an in-memory
/// session cache on both sides, TLS 1.3 tickets from the server) or off.
pub fn set_session_resumption(enabled: bool) {
    SESSION_RESUMPTION.store(enabled, Ordering::Relaxed);
}

fn server_config(
    anchors: &Arc<Anchors>,
    resolver: Arc<OurLeaf>,
    provider: &Arc<CryptoProvider>,
    alpn: &[Vec<u8>],
    leaf: &Leaf,
) -> Option<Arc<ServerConfig>> {
    let verifier = Arc::new(ClientSvidVerifier(anchors.clone()));
    match ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::ALL_VERSIONS)
    {
        Ok(builder) => {
            let mut config = builder
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(resolver);
            config.alpn_protocols = alpn.to_vec();
            if SESSION_RESUMPTION.load(Ordering::Relaxed) {
                // Stateless tickets: the session travels encrypted in the ticket, so a
                // busy listener keeps no per-session memory and no session falls out of
                // a cache before its caller comes back. A new config (new leaf or
                // bundle) brings a new key, which ends every earlier session.
                match rustls::crypto::aws_lc_rs::Ticketer::new() {
                    Ok(inner) => {
                        config.ticketer = Arc::new(LeafBoundTickets {
                            inner,
                            not_after: u64::try_from(leaf.not_after).unwrap_or(0),
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "no TLS session tickets"),
                }
            } else {
                config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
                config.send_tls13_tickets = 0;
            }
            Some(Arc::new(config))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot build the inbound TLS config");
            None
        }
    }
}

fn client_config(
    anchors: &Arc<Anchors>,
    key: &ClientKey,
    resolver: Arc<OurLeaf>,
    provider: &Arc<CryptoProvider>,
) -> Option<Arc<ClientConfig>> {
    let verifier = Arc::new(ServerSvidVerifier {
        anchors: anchors.clone(),
        expected: key.expected.clone(),
    });
    match ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::ALL_VERSIONS)
    {
        Ok(builder) => {
            let mut config = builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_client_cert_resolver(resolver);
            // The dial names Consul's server name for the destination (mesh gateways and
            // SNI-matching listeners route on it); the server is still verified by its
            // SPIFFE ID alone.
            config.enable_sni = true;
            config.alpn_protocols = key.offer.alpn();
            config.resumption = if SESSION_RESUMPTION.load(Ordering::Relaxed) {
                rustls::client::Resumption::store(Arc::new(tickets::Tickets::new()))
            } else {
                rustls::client::Resumption::disabled()
            };
            Some(Arc::new(config))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot build the outbound TLS config");
            None
        }
    }
}

/// Session tickets that end with our leaf: a session resumed is one whose full
/// handshake proved the certificate we hold now, so none outlives its validity.
#[derive(Debug)]
struct LeafBoundTickets {
    inner: Arc<dyn rustls::server::ProducesTickets>,
    /// Seconds since the Unix epoch.
    not_after: u64,
}

impl LeafBoundTickets {
    fn remaining(&self) -> u64 {
        self.not_after.saturating_sub(UnixTime::now().as_secs())
    }
}

impl rustls::server::ProducesTickets for LeafBoundTickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        let remaining = u32::try_from(self.remaining()).unwrap_or(u32::MAX);
        self.inner.lifetime().min(remaining)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        if self.remaining() == 0 {
            return None;
        }
        self.inner.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if self.remaining() == 0 {
            return None;
        }
        self.inner.decrypt(cipher)
    }
}

/// Whether a peer's leaf restored from a resumed session is still within its validity:
/// resumption skips the verifier, and the peer's certificate may have expired since the
/// full handshake that the session came from.
pub fn still_valid(end_entity: &CertificateDer<'_>, now: UnixTime) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(end_entity.as_ref()) else {
        return false;
    };
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let validity = cert.validity();
    validity.not_before.timestamp() <= now && now <= validity.not_after.timestamp()
}

/// Whether a handshake resumed a session whose peer leaf has expired since (or that
/// carries none): such a connection is refused like a failed handshake.
pub fn resumed_with_expired_peer(session: &rustls::CommonState) -> bool {
    session.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
        && !session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .is_some_and(|leaf| still_valid(leaf, UnixTime::now()))
}

/// The crypto provider every config is built with.
///
/// aws-lc-rs with AES-128-GCM/SHA-256 first among TLS 1.3 suites, as BoringSSL (Envoy)
/// orders them: SHA-256 runs on the CPU's SHA extensions where SHA-384 does not, and the
/// key schedule of every handshake is a few dozen HMACs.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_control::model::{self, parse_bundle, parse_certificates};
    use ferrule_dev::ca::{DevCa, LeafSpec};
    use rustls_pki_types::ServerName;

    /// A leaf issued by `ca` as `spec` says, as a chain (leaf first).
    fn chain(ca: &DevCa, spec: &LeafSpec) -> Vec<CertificateDer<'static>> {
        parse_certificates(ca.issue(spec).unwrap().cert_pem.as_bytes()).unwrap()
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_is_refused() {
        let ca = DevCa::generate(None).unwrap();
        let a = ca.issue(&LeafSpec::service("web")).unwrap();
        let b = ca.issue(&LeafSpec::service("web")).unwrap();
        let err = model::parse_leaf(a.cert_pem.as_bytes(), b.key_pem.as_bytes(), &provider());
        assert!(matches!(err, Err(model::PemError::KeyMismatch(_))));
        let leaf =
            model::parse_leaf(a.cert_pem.as_bytes(), a.key_pem.as_bytes(), &provider()).unwrap();
        assert_eq!(leaf.serial, a.serial_hex);
    }

    #[test]
    fn an_endpoint_newer_than_the_configs_is_dialled_with_one_built_now() {
        let ca = DevCa::generate(None).unwrap();
        let web = ca.issue(&LeafSpec::service("web")).unwrap();
        let leaf = model::parse_leaf(web.cert_pem.as_bytes(), web.key_pem.as_bytes(), &provider())
            .unwrap();
        let bundle = parse_bundle(ca.cert_pem().as_bytes(), &ca.trust_domain()).unwrap();
        let snapshot = Snapshot {
            leaf: Some(Arc::new(leaf)),
            bundle: Some(Arc::new(bundle)),
            ..Snapshot::default()
        };
        let tls = TlsState::for_snapshot(&snapshot, &Arc::default(), &provider());
        let endpoint = Endpoint {
            addr: "127.0.0.1:21000".into(),
            identity: ServiceId::new("td.consul", "default", "dc1", "api"),
        };
        assert!(tls.clients.is_empty(), "no upstream in the snapshot");
        assert!(tls.client_for(&endpoint, Protocol::Http).is_some());
        let none = TlsState::for_snapshot(&Snapshot::default(), &Arc::default(), &provider());
        assert!(
            none.client_for(&endpoint, Protocol::Tcp).is_none(),
            "without an identity, fail closed"
        );
    }

    struct Pair {
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        anchors: Arc<Anchors>,
        api: Leaf,
    }

    impl Pair {
        /// Another inbound config for the same leaf and bundle.
        fn new_server(&self) -> Arc<ServerConfig> {
            let resolver = Arc::new(OurLeaf(self.api.key.clone()));
            server_config(&self.anchors, resolver, &provider(), &[], &self.api).unwrap()
        }
    }

    /// `api`'s inbound config and `web`'s config for dialing `api`, as a snapshot
    /// would build them.
    fn pair() -> Pair {
        let ca = DevCa::generate(None).unwrap();
        let bundle = parse_bundle(ca.cert_pem().as_bytes(), &ca.trust_domain()).unwrap();
        let leaf = |name: &str| {
            let issued = ca.issue(&LeafSpec::service(name)).unwrap();
            model::parse_leaf(
                issued.cert_pem.as_bytes(),
                issued.key_pem.as_bytes(),
                &provider(),
            )
            .unwrap()
        };
        let (api, web) = (leaf("api"), leaf("web"));
        let anchors = Arc::new(Anchors::new(&bundle, &provider()));
        let server = server_config(
            &anchors,
            Arc::new(OurLeaf(api.key.clone())),
            &provider(),
            &[],
            &api,
        )
        .unwrap();
        let key = ClientKey {
            addr: "127.0.0.1:1".to_owned(),
            expected: api.id.clone(),
            offer: Offer::Nothing,
        };
        let client = client_config(
            &anchors,
            &key,
            Arc::new(OurLeaf(web.key.clone())),
            &provider(),
        )
        .unwrap();
        Pair {
            server,
            client,
            anchors,
            api,
        }
    }

    /// Moves records between the two ends until neither has anything to say: the
    /// handshake is done and the server's tickets have reached the client.
    pub(super) fn complete(
        client: &mut rustls::ClientConnection,
        server: &mut rustls::ServerConnection,
    ) {
        for _ in 0..20 {
            let mut moved = false;
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                moved = true;
                server.read_tls(&mut buf.as_slice()).unwrap();
                server.process_new_packets().unwrap();
            }
            buf.clear();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                moved = true;
                client.read_tls(&mut buf.as_slice()).unwrap();
                client.process_new_packets().unwrap();
            }
            if !moved {
                break;
            }
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
    }

    /// Opens `n` connections at once (each takes its ticket, if any, when it starts),
    /// completes them all, and counts how many resumed.
    fn burst(p: &Pair, n: usize) -> usize {
        burst_to(
            p,
            n,
            ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        )
    }

    fn burst_to(p: &Pair, n: usize, name: ServerName<'static>) -> usize {
        let mut conns: Vec<_> = (0..n)
            .map(|_| {
                let client = rustls::ClientConnection::new(p.client.clone(), name.clone()).unwrap();
                let server = rustls::ServerConnection::new(p.server.clone()).unwrap();
                (client, server)
            })
            .collect();
        let mut resumed = 0;
        for (client, server) in &mut conns {
            complete(client, server);
            let kind = server.handshake_kind();
            assert_eq!(client.handshake_kind(), kind);
            if kind == Some(rustls::HandshakeKind::Resumed) {
                resumed += 1;
                // The caller's certificate comes back with the session.
                let chain = server.peer_certificates().unwrap();
                assert_eq!(peer_identity(&chain[0]).unwrap().service, "web");
            }
        }
        resumed
    }

    #[test]
    fn a_burst_of_new_connections_resumes_every_one() {
        let p = pair();
        assert_eq!(burst(&p, 40), 0, "nothing to resume yet");
        // rustls' own store would hold 8 of the 80 tickets and resume 8 of these.
        assert_eq!(burst(&p, 40), 40);
        // Each ticket is used once, and each resumed handshake brings new ones.
        assert_eq!(burst(&p, 60), 60);
    }

    #[test]
    fn the_ticket_store_is_bounded_per_server_and_in_all() {
        let p = pair();
        let store = Arc::new(tickets::Tickets::new());
        let mut client = (*p.client).clone();
        client.resumption = rustls::client::Resumption::store(store.clone());
        let p = Pair {
            client: Arc::new(client),
            ..p
        };
        let one = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        burst_to(&p, 50, one);
        assert_eq!(store.held(), (tickets::PER_SERVER, tickets::PER_SERVER));
        for i in 2..12u8 {
            let name = ServerName::IpAddress(std::net::Ipv4Addr::new(127, 0, 0, i).into());
            burst_to(&p, 40, name);
        }
        let (total, most) = store.held();
        assert_eq!(total, tickets::TOTAL);
        assert!(most <= tickets::PER_SERVER);
        // A full store still takes a new server's tickets, which resume.
        let new = ServerName::IpAddress(std::net::Ipv4Addr::new(127, 0, 0, 99).into());
        assert_eq!(burst_to(&p, 10, new.clone()), 0);
        assert_eq!(burst_to(&p, 10, new), 10);
        assert_eq!(store.held().0, tickets::TOTAL);
    }

    #[test]
    fn sessions_end_with_a_new_inbound_config() {
        let p = pair();
        assert_eq!(burst(&p, 4), 0);
        assert_eq!(burst(&p, 4), 4);
        let fresh = Pair {
            server: p.new_server(),
            ..p
        };
        // Tickets of the old key are refused: full handshakes again.
        assert_eq!(burst(&fresh, 4), 0);
    }

    #[test]
    fn tickets_stop_when_our_leaf_expires() {
        use rustls::server::ProducesTickets;
        let inner = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
        let live = LeafBoundTickets {
            inner: inner.clone(),
            not_after: UnixTime::now().as_secs() + 60,
        };
        let ticket = live.encrypt(b"session").unwrap();
        assert_eq!(live.decrypt(&ticket).unwrap(), b"session");
        assert!(live.lifetime() <= 60);
        let expired = LeafBoundTickets {
            inner,
            not_after: UnixTime::now().as_secs() - 1,
        };
        assert!(expired.encrypt(b"session").is_none());
        assert!(expired.decrypt(&ticket).is_none());
    }

    #[test]
    fn a_resumed_peer_certificate_is_checked_against_the_clock() {
        let ca = DevCa::generate(None).unwrap();
        let leaf = chain(&ca, &LeafSpec::service("web"));
        let now = UnixTime::now();
        assert!(still_valid(&leaf[0], now));
        let later =
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.as_secs() + 73 * 3600));
        assert!(!still_valid(&leaf[0], later));
        let earlier =
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.as_secs() - 3600));
        assert!(!still_valid(&leaf[0], earlier));
        assert!(!still_valid(&CertificateDer::from(vec![0x30, 0x03]), now));
    }

    #[test]
    fn the_mesh_prefers_aes_128_with_sha_256() {
        let suites = provider().cipher_suites.clone();
        assert_eq!(
            suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        let p = pair();
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let mut client = rustls::ClientConnection::new(p.client.clone(), name).unwrap();
        let mut server = rustls::ServerConnection::new(p.server.clone()).unwrap();
        complete(&mut client, &mut server);
        assert_eq!(
            server.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }
}
