//! The callers: `curl` and `openssl s_client` as subprocesses, and a rustls client that
//! presents a chosen certificate. Every call is bounded in time; a subprocess that
//! overruns is killed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use ferrule_dev::ca::IssuedLeaf;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long one subprocess client may run before it is killed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a rustls handshake or an echo round trip may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Panics with a clear message if an external tool the tests drive is missing.
pub fn require_tool(tool: &str) {
    static CHECKED: OnceLock<Vec<(String, bool)>> = OnceLock::new();
    let tools = CHECKED.get_or_init(|| {
        ["curl", "openssl"]
            .into_iter()
            .map(|t| {
                let ok = std::process::Command::new(t)
                    .arg(if t == "openssl" {
                        "version"
                    } else {
                        "--version"
                    })
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                (t.to_owned(), ok)
            })
            .collect()
    });
    let present = tools.iter().any(|(t, ok)| t == tool && *ok);
    assert!(
        present,
        "`{tool}` is not installed or does not run; the end-to-end tests drive real \
         clients (on Debian/Ubuntu: apt-get install -y curl openssl)"
    );
}

/// What a finished subprocess left behind.
#[derive(Debug)]
pub struct ProcessOutput {
    /// `None` when killed by a signal.
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

async fn run(mut command: Command, stdin: &[u8]) -> anyhow::Result<ProcessOutput> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let shown = format!("{:?}", command.as_std());
    let mut child = command.spawn().with_context(|| format!("spawn {shown}"))?;
    let mut input = child.stdin.take().context("child stdin")?;
    let stdin = stdin.to_vec();
    // Written from a task: the child may refuse to read before it has printed.
    tokio::spawn(async move {
        let _ = input.write_all(&stdin).await;
        // Dropping `input` closes the pipe: the child sees end of input.
    });
    let output = tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("{shown} still running after {CLIENT_TIMEOUT:?}"))??;
    Ok(ProcessOutput {
        exit_code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// What `curl` got: its exit code, the HTTP status (0 when there was no response) and
/// the response body.
#[derive(Debug)]
pub struct CurlResponse {
    pub exit_code: Option<i32>,
    pub http_code: u16,
    /// The HTTP version of the response as curl names it (`1.1`, `2`), or `0`.
    pub http_version: String,
    pub body: Vec<u8>,
    pub stderr: String,
}

impl CurlResponse {
    /// curl exited 0 and the server answered 200.
    pub fn is_ok(&self) -> bool {
        self.exit_code == Some(0) && self.http_code == 200
    }
}

/// `curl -sS URL` with extra arguments; the body is written to a file, not parsed from
/// stdout, so large bodies arrive byte for byte.
pub async fn curl(url: &str, extra_args: &[&str]) -> anyhow::Result<CurlResponse> {
    require_tool("curl");
    let out_dir = tempfile::tempdir()?;
    let body_path = out_dir.path().join("body");
    let mut command = Command::new("curl");
    command
        .args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "%{http_code} %{http_version}",
            "-o",
        ])
        .arg(&body_path)
        .args(extra_args)
        .arg(url);
    let output = run(command, b"").await?;
    let mut written = output.stdout.split_whitespace();
    Ok(CurlResponse {
        exit_code: output.exit_code,
        http_code: written.next().and_then(|c| c.parse().ok()).unwrap_or(0),
        http_version: written.next().unwrap_or_default().to_owned(),
        body: std::fs::read(&body_path).unwrap_or_default(),
        stderr: output.stderr,
    })
}

/// A leaf certificate and its key written to files, for `openssl s_client`.
pub struct LeafFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

impl LeafFiles {
    pub fn write(leaf: &IssuedLeaf) -> LeafFiles {
        let dir = tempfile::tempdir().expect("temporary directory for a leaf");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, &leaf.cert_pem).expect("write leaf certificate");
        std::fs::write(&key, &leaf.key_pem).expect("write leaf key");
        LeafFiles {
            cert,
            key,
            _dir: dir,
        }
    }
}

/// What `openssl s_client` printed.
#[derive(Debug)]
pub struct SClientOutput(pub ProcessOutput);

impl SClientOutput {
    /// The alert s_client reports having received, e.g. `unknown ca` from
    /// `...:ssl3_read_bytes:tlsv1 alert unknown ca:...:SSL alert number 48`. (Its stdout
    /// is no guide: it prints a session with a cipher even when the server refused
    /// the handshake.)
    pub fn alert_received(&self) -> Option<&str> {
        self.0
            .stderr
            .lines()
            .filter(|line| line.contains("SSL alert number"))
            .find_map(|line| {
                let after = &line[line.find("alert ")? + "alert ".len()..];
                Some(after.split(':').next().unwrap_or(after).trim())
            })
    }

    /// Connected, no alert, and s_client ended normally at the end of its input.
    pub fn succeeded(&self) -> bool {
        self.0.exit_code == Some(0) && self.alert_received().is_none()
    }

    /// Both streams, for assertion messages.
    pub fn transcript(&self) -> String {
        format!(
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.0.exit_code, self.0.stdout, self.0.stderr
        )
    }
}

/// `openssl s_client -tls1_2` to `addr`, presenting `identity` if given, sending `input`
/// once connected and quitting at the end of it. TLS 1.2 makes a refused client
/// certificate visible in the handshake itself (under 1.3 the client finishes first).
pub async fn s_client_tls12(
    addr: SocketAddr,
    identity: Option<&LeafFiles>,
    input: &[u8],
) -> anyhow::Result<SClientOutput> {
    s_client(addr, identity, &["-tls1_2"], input).await
}

/// `openssl s_client` to `addr` sending `server_name` as SNI, presenting `identity` if
/// given, sending `input` once connected.
pub async fn s_client_sni(
    addr: SocketAddr,
    identity: Option<&LeafFiles>,
    server_name: &str,
    input: &[u8],
) -> anyhow::Result<SClientOutput> {
    s_client(addr, identity, &["-servername", server_name], input).await
}

async fn s_client(
    addr: SocketAddr,
    identity: Option<&LeafFiles>,
    args: &[&str],
    input: &[u8],
) -> anyhow::Result<SClientOutput> {
    require_tool("openssl");
    let mut command = Command::new("openssl");
    command
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(args);
    if let Some(files) = identity {
        command.arg("-cert").arg(&files.cert);
        command.arg("-key").arg(&files.key);
    }
    Ok(SClientOutput(run(command, input).await?))
}

/// A mesh caller: a rustls client presenting the given SVID (or none). It accepts any
/// server certificate: in these tests the caller is under test as a caller, not as a
/// verifier.
pub struct TlsCaller {
    connector: TlsConnector,
}

impl TlsCaller {
    pub fn new(identity: Option<&IssuedLeaf>) -> TlsCaller {
        TlsCaller::build(
            identity.map(|leaf| (leaf.cert_pem.as_str(), leaf.key_pem.as_str())),
            &[],
        )
    }

    /// Offers `alpn` in the handshake (`h2` for a caller that speaks HTTP/2 itself).
    pub fn with_alpn(identity: Option<&IssuedLeaf>, alpn: &[&[u8]]) -> TlsCaller {
        TlsCaller::build(
            identity.map(|leaf| (leaf.cert_pem.as_str(), leaf.key_pem.as_str())),
            alpn,
        )
    }

    /// Presents a certificate chain and key given as PEM (e.g. a leaf from the agent's
    /// `/v1/agent/connect/ca/leaf/:service`).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> TlsCaller {
        TlsCaller::build(Some((cert_pem, key_pem)), &[])
    }

    fn build(identity: Option<(&str, &str)>, alpn: &[&[u8]]) -> TlsCaller {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .expect("rustls protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)));
        let mut config = match identity {
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("the test certificate PEM parses");
                let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                    .expect("the test key PEM parses");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("rustls accepts the leaf and its key")
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsCaller {
            connector: TlsConnector::from(Arc::new(config)),
        }
    }

    /// The TLS handshake on a connection made elsewhere (with chosen socket options),
    /// within 5 s.
    pub async fn handshake(&self, tcp: TcpStream, addr: SocketAddr) -> anyhow::Result<CallerConn> {
        let name = ServerName::IpAddress(addr.ip().into());
        let stream = tokio::time::timeout(IO_TIMEOUT, self.connector.connect(name, tcp))
            .await
            .with_context(|| format!("TLS handshake with {addr} took over {IO_TIMEOUT:?}"))?
            .with_context(|| format!("TLS handshake with {addr}"))?;
        Ok(CallerConn { stream })
    }

    /// TCP connect and TLS handshake, within 5 s.
    pub async fn connect(&self, addr: SocketAddr) -> anyhow::Result<CallerConn> {
        let handshake = async {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::IpAddress(addr.ip().into());
            self.connector.connect(name, tcp).await
        };
        let stream = tokio::time::timeout(IO_TIMEOUT, handshake)
            .await
            .with_context(|| format!("TLS handshake with {addr} took over {IO_TIMEOUT:?}"))?
            .with_context(|| format!("TLS handshake with {addr}"))?;
        Ok(CallerConn { stream })
    }
}

/// An established connection from a `TlsCaller`.
pub struct CallerConn {
    stream: TlsStream<TcpStream>,
}

impl From<TlsStream<TcpStream>> for CallerConn {
    fn from(stream: TlsStream<TcpStream>) -> Self {
        CallerConn { stream }
    }
}

impl CallerConn {
    /// The TLS stream itself, to speak any protocol over it.
    pub fn into_stream(self) -> TlsStream<TcpStream> {
        self.stream
    }

    /// The TLS stream, to read an answer of any shape.
    pub fn stream_mut(&mut self) -> &mut TlsStream<TcpStream> {
        &mut self.stream
    }

    /// The serial of the certificate the server presented, colon-hex like
    /// `IssuedLeaf::serial_hex`.
    pub fn peer_serial(&self) -> anyhow::Result<String> {
        let cert = self
            .stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .context("the server presented no certificate")?;
        let (_, parsed) = x509_parser::parse_x509_certificate(cert)
            .map_err(|e| anyhow::anyhow!("server certificate is not X.509: {e}"))?;
        Ok(ferrule_control::model::colon_hex(parsed.raw_serial()))
    }

    /// Writes `data` without waiting for an answer.
    pub async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(data).await?;
        self.stream.flush().await
    }

    /// Sends `data` and expects exactly `data` back (the backend echoes), within 5 s.
    pub async fn round_trip(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let exchange = async {
            self.stream.write_all(data).await?;
            self.stream.flush().await?;
            let mut echoed = vec![0u8; data.len()];
            self.stream.read_exact(&mut echoed).await?;
            anyhow::ensure!(echoed == data, "the echo differs from what was sent");
            Ok(())
        };
        tokio::time::timeout(IO_TIMEOUT, exchange)
            .await
            .with_context(|| format!("no echo within {IO_TIMEOUT:?}"))?
            .context("echo round trip")
    }

    /// Fails unless the server closes (or resets) the connection within `within`.
    pub async fn closed_within(&mut self, within: Duration) -> anyhow::Result<()> {
        crate::wait::closed_within(&mut self.stream, within).await
    }
}

/// Accepts any server certificate, but still checks the handshake signatures so the
/// TLS session itself is sound.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A path as an argument, for `curl`'s `@file` syntax.
pub fn at_file(path: &Path) -> String {
    format!("@{}", path.display())
}

/// One HTTP/1.1 keep-alive connection, held open across a change, as an app's
/// connection pool would hold it.
pub struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    connection: tokio::task::JoinHandle<()>,
}

impl KeepAlive {
    pub async fn open(addr: SocketAddr) -> anyhow::Result<KeepAlive> {
        let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr} took over {IO_TIMEOUT:?}"))??;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(KeepAlive { sender, connection })
    }

    /// `GET path` on this connection: the status and body, within 5 s.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        use http_body_util::BodyExt as _;
        let exchange = async {
            self.sender.ready().await?;
            let request = hyper::Request::get(path)
                .header(hyper::header::HOST, "upstream")
                .body(http_body_util::Empty::new())?;
            let response = self.sender.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body.to_vec()))
        };
        tokio::time::timeout(IO_TIMEOUT, exchange)
            .await
            .with_context(|| format!("no answer within {IO_TIMEOUT:?}"))?
    }

    /// Fails unless the far end closes the connection within `within`.
    pub async fn closed_within(&mut self, within: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(within, &mut self.connection)
            .await
            .map(|_| ())
            .map_err(|_| anyhow::anyhow!("the connection was still open after {within:?}"))
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.connection.abort();
    }
}
