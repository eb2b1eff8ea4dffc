//! A mesh gateway: its registration as Consul takes it (`Kind: "mesh-gateway"`, LAN and
//! WAN tagged addresses), a `ferrule gateway --proxy-id` process serving it, and a mesh
//! caller that dials through a gateway as a sidecar does: the destination's server
//! name in SNI, an SVID presented, and the server's SPIFFE ID checked exactly after its
//! chain is verified against the agent's roots.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::admin::Admin;
use crate::binary::ferrule_bin;
use crate::clients::CallerConn;
use crate::wait::free_port;

/// How long a gateway gets to answer `/ready` with 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A mesh gateway registration: its LAN address (`Address`, `Port`, `lan`) and WAN
/// address (`wan`), both on 127.0.0.1 and free ports.
#[derive(Debug, Clone)]
pub struct MeshGatewayRegistration {
    pub id: String,
    pub lan: SocketAddr,
    pub wan: SocketAddr,
}

impl MeshGatewayRegistration {
    pub fn new(id: &str) -> MeshGatewayRegistration {
        MeshGatewayRegistration {
            id: id.to_owned(),
            lan: free_port(),
            wan: free_port(),
        }
    }

    /// The body of `PUT /v1/agent/service/register`.
    pub fn to_json(&self) -> Value {
        let addr = |a: SocketAddr| json!({"Address": a.ip().to_string(), "Port": a.port()});
        json!({
            "Kind": "mesh-gateway",
            "ID": self.id,
            "Name": "mesh-gateway",
            "Address": self.lan.ip().to_string(),
            "Port": self.lan.port(),
            "TaggedAddresses": {"lan": addr(self.lan), "wan": addr(self.wan)},
        })
    }
}

/// A running `ferrule gateway --proxy-id ID`.
pub struct FerruleGateway {
    proxy_id: String,
    child: Child,
    admin: Admin,
    dir: tempfile::TempDir,
}

impl FerruleGateway {
    /// Starts the gateway against the agent at `agent_url` and waits until `/ready`
    /// says 200.
    pub async fn start(agent_url: &str, proxy_id: &str) -> FerruleGateway {
        let mut gateway = FerruleGateway::spawn(agent_url, proxy_id);
        if let Err(e) = gateway.wait_ready().await {
            panic!("the gateway {proxy_id} did not become ready: {e:#}");
        }
        gateway
    }

    pub fn spawn(agent_url: &str, proxy_id: &str) -> FerruleGateway {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ferrule-gateway-{proxy_id}-"))
            .tempdir()
            .expect("create a temporary directory for a gateway");
        let log =
            std::fs::File::create(dir.path().join("stderr.log")).expect("create the gateway's log");
        let admin = free_port();
        let child = Command::new(ferrule_bin())
            .arg("gateway")
            .args(["--proxy-id", proxy_id])
            .args(["--consul-addr", agent_url])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--drain-timeout", "5s"])
            .args(["--log-level", "info,ferrule=debug,ferrule_control=debug"])
            .env_remove("CONSUL_HTTP_TOKEN")
            .env_remove("CONSUL_HTTP_TOKEN_FILE")
            .env_remove("CONSUL_HTTP_ADDR")
            .env_remove("CONNECT_PROXY_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ferrule gateway");
        FerruleGateway {
            proxy_id: proxy_id.to_owned(),
            child,
            admin: Admin {
                addr: admin,
                name: format!("gateway {proxy_id}"),
            },
            dir,
        }
    }

    pub fn admin(&self) -> &Admin {
        &self.admin
    }

    /// What the process wrote to stderr so far (its log).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    /// Polls `/ready` until 200; fails early, with the log, if the process exits.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let log_path = self.log_path();
        let log = move || std::fs::read_to_string(&log_path).unwrap_or_default();
        self.admin
            .wait_ready(&mut self.child, READY_TIMEOUT, log)
            .await
    }

    /// Waits for the process to exit, for at most `within`: its exit code (`None` if
    /// killed by a signal), or an error if it is still running.
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<Option<i32>> {
        crate::wait::exit_within(&mut self.child, within).await
    }

    /// Sends SIGTERM, as an orchestrator stopping the gateway would.
    pub fn terminate(&self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .unwrap_or_else(|e| panic!("SIGTERM to the gateway {}: {e}", self.proxy_id));
    }
}

impl Drop for FerruleGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!(
            "----- stderr of ferrule gateway {} (admin {}) -----\n{}----- end of stderr -----",
            self.proxy_id,
            self.admin.addr,
            self.stderr()
        );
    }
}

/// A caller through a mesh gateway: presents an SVID, names the destination in SNI,
/// and accepts only a server whose chain leads to one of `roots` and whose SPIFFE ID
/// is exactly the expected one.
pub struct SniCaller {
    connector: TlsConnector,
}

impl SniCaller {
    /// `cert_pem` (the leaf and its chain) and `key_pem` are what the caller presents;
    /// `roots_pem` the trusted roots; `expected` the server's SPIFFE ID.
    pub fn new(cert_pem: &str, key_pem: &str, roots_pem: &[String], expected: &str) -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let anchors = roots_pem
            .iter()
            .flat_map(|pem| CertificateDer::pem_slice_iter(pem.as_bytes()))
            .map(|der| der.expect("a root PEM parses"))
            .collect();
        let verifier = SpiffeServer {
            anchors,
            expected: expected.to_owned(),
            provider: provider.clone(),
        };
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("the leaf PEM parses");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("the key PEM parses");
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .expect("rustls protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(chain, key)
            .expect("rustls accepts the leaf and its key");
        SniCaller {
            connector: TlsConnector::from(Arc::new(config)),
        }
    }

    /// TCP connect to `addr` and a handshake naming `sni`, within 5 s.
    pub async fn connect(&self, addr: SocketAddr, sni: &str) -> anyhow::Result<CallerConn> {
        let name = ServerName::try_from(sni.to_owned()).context("a server name")?;
        let handshake = async {
            let tcp = TcpStream::connect(addr).await?;
            self.connector.connect(name, tcp).await
        };
        let stream = tokio::time::timeout(Duration::from_secs(5), handshake)
            .await
            .with_context(|| format!("TLS handshake through {addr} took over 5 s"))?
            .with_context(|| format!("TLS handshake through {addr} for {sni}"))?;
        Ok(CallerConn::from(stream))
    }
}

/// Verifies the server's chain against the roots, then its one URI SAN.
#[derive(Debug)]
struct SpiffeServer {
    anchors: Vec<CertificateDer<'static>>,
    expected: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fail = |why: String| rustls::Error::General(why);
        let anchors: Vec<_> = self
            .anchors
            .iter()
            .filter_map(|der| webpki::anchor_from_trusted_cert(der).ok())
            .collect();
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| fail(format!("server leaf: {e}")))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| fail(format!("server chain: {e}")))?;
        let uris = uri_sans(end_entity).map_err(fail)?;
        if uris != [self.expected.as_str()] {
            return Err(fail(format!(
                "server is {uris:?}, expected {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The URI SANs of a certificate.
fn uri_sans(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("not X.509: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad SAN: {e}"))?
        .ok_or("no SAN")?;
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect())
}
