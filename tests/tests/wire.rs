//! What ferrule puts on the wire next to Consul's Envoy sidecars, seen from outside:
//! the ALPN its listeners advertise per protocol (`openssl s_client -alpn`), the server
//! name and ALPN offer of every dial (a rustls server that records the ClientHello), the
//! HTTP version of the mesh hop that ALPN chose, and the handshake metric's labels.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrule_tests::backends::{HttpRecorder, TcpEcho, accept_loop};
use ferrule_tests::clients::{LeafFiles, curl, require_tool};
use ferrule_tests::mesh::{L7Pair, intentions_json, svid};
use ferrule_tests::metrics::Selector;
use ferrule_tests::names::TLS_HANDSHAKES;
use ferrule_tests::sidecar::{Sidecar, SidecarConfig};
use ferrule_tests::wait::eventually;
use ferrule_tests::{DevCa, IssuedLeaf};
use parking_lot::Mutex;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

const API: &str = "api";
const WEB: &str = "web";

fn allow_web() -> String {
    intentions_json(API, &[(WEB, "allow")])
}

/// What `openssl s_client -alpn <offer>` negotiated with `addr`: `Some(protocol)`,
/// `None` when the server chose nothing; `Err` with the transcript if the handshake
/// failed.
async fn alpn_chosen(
    addr: SocketAddr,
    caller: &LeafFiles,
    offer: &str,
    tls12: bool,
) -> Result<Option<String>, String> {
    require_tool("openssl");
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-connect", &addr.to_string(), "-alpn", offer])
        .arg("-cert")
        .arg(&caller.cert)
        .arg("-key")
        .arg(&caller.key)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if tls12 {
        command.arg("-tls1_2");
    }
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .map_err(|_| "s_client ran 30 s".to_owned())?
        .map_err(|e| format!("spawn openssl: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let transcript = format!("{stdout}\n--- stderr ---\n{stderr}");
    if stderr.contains("SSL alert number") || !stdout.contains("Verify return code") {
        return Err(transcript);
    }
    if stdout.contains("No ALPN negotiated") {
        return Ok(None);
    }
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("ALPN protocol: "))
        .map(|p| Some(p.trim().to_owned()))
        .ok_or(transcript)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_advertise_alpn_as_consuls_envoy_and_take_tls12_callers() {
    let ca = DevCa::generate(None).expect("CA");
    let web = LeafFiles::write(&svid(&ca, WEB));
    let app = HttpRecorder::start().await;
    let echo = TcpEcho::start().await;
    // (offer, TLS 1.2 only, what an `http`/`http2`/`grpc` listener picks)
    let l7 = [
        ("h2,http/1.1", false, Some("h2")),
        ("http/1.1", false, Some("http/1.1")),
        ("h2", false, Some("h2")),
        // An Envoy caller: TLS 1.2, one protocol.
        ("http/1.1", true, Some("http/1.1")),
        ("h2", true, Some("h2")),
    ];
    for protocol in ["tcp", "http", "http2", "grpc"] {
        let local_app = if protocol == "tcp" {
            echo.addr()
        } else {
            app.addr()
        };
        let api = Sidecar::start(
            SidecarConfig::new(&ca, &svid(&ca, API))
                .inbound(local_app, allow_web())
                .inbound_protocol(protocol),
        )
        .await;
        for (offer, tls12, l7_choice) in l7 {
            let want = if protocol == "tcp" {
                None
            } else {
                l7_choice.map(str::to_owned)
            };
            let got = alpn_chosen(api.inbound_addr(), &web, offer, tls12).await;
            assert_eq!(
                got,
                Ok(want),
                "{protocol} listener, offer {offer}, tls12 {tls12}"
            );
        }
    }
}

/// A ClientHello's server name and ALPN offer.
type Hello = (Option<String>, Vec<String>);
type Hellos = Arc<Mutex<Vec<Hello>>>;

/// A server that records the server name and ALPN list of every ClientHello, then
/// answers with `presents` (or fails the handshake without one).
struct HelloRecorder {
    addr: SocketAddr,
    hellos: Hellos,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Recording {
    hellos: Hellos,
    presents: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Recording {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let alpn = hello
            .alpn()
            .map(|protos| {
                protos
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        self.hellos
            .lock()
            .push((hello.server_name().map(str::to_owned), alpn));
        self.presents.clone()
    }
}

impl HelloRecorder {
    async fn start(presents: Option<&IssuedLeaf>) -> HelloRecorder {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let presents = presents.map(|leaf| {
            let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("leaf PEM");
            let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM");
            Arc::new(CertifiedKey::from_der(chain, key, &provider).expect("certified key"))
        });
        let hellos = Arc::new(Mutex::new(Vec::new()));
        let resolver = Arc::new(Recording {
            hellos: hellos.clone(),
            presents,
        });
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let task = tokio::spawn(accept_loop(listener, move |tcp| {
            let acceptor = acceptor.clone();
            async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await;
            }
        }));
        HelloRecorder { addr, hellos, task }
    }

    fn hellos(&self) -> Vec<Hello> {
        self.hellos.lock().clone()
    }
}

impl Drop for HelloRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Makes the caller's app use its upstream listener once.
async fn use_upstream(caller: &Sidecar, protocol: &str) {
    let addr = caller.upstream_addr(protocol);
    if protocol == "tcp" {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            let _ = s.write_all(b"hello").await;
            let mut buf = [0u8; 16];
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        }
    } else {
        let version = if protocol == "http" {
            "--http1.1"
        } else {
            "--http2-prior-knowledge"
        };
        let _ = curl(&format!("http://{addr}/"), &[version]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dial_sends_consuls_server_name_and_offers_what_the_protocol_allows() {
    let ca = DevCa::generate(None).expect("CA");
    // The endpoint proves `billing`, not `api`: every dial fails on identity, after the
    // ClientHello was recorded.
    let billing = svid(&ca, "billing");
    let server = HelloRecorder::start(Some(&billing)).await;
    let mut config = SidecarConfig::new(&ca, &svid(&ca, WEB));
    for protocol in ["tcp", "http", "http2", "grpc"] {
        // Each upstream is named after its protocol and expects that service.
        config = config.upstream_of(protocol, protocol, &[server.addr]);
    }
    let web = Sidecar::start(config).await;
    let td = ca.trust_domain();
    for (protocol, offer) in [
        ("tcp", &[][..]),
        ("http", &["h2", "http/1.1"][..]),
        ("http2", &["h2"][..]),
        ("grpc", &["h2"][..]),
    ] {
        let before = server.hellos().len();
        use_upstream(&web, protocol).await;
        let hellos = server.hellos();
        assert!(
            hellos.len() > before,
            "{protocol}: no dial reached the server"
        );
        let sni = format!("{protocol}.default.dc1.internal.{td}");
        for (name, alpn) in &hellos[before..] {
            assert_eq!(name.as_deref(), Some(sni.as_str()), "{protocol}: SNI");
            assert_eq!(alpn, offer, "{protocol}: ALPN offered");
        }
    }
    // Why the dials failed, at warn: both identities named, one line per upstream for
    // many failures.
    for _ in 0..5 {
        use_upstream(&web, "tcp").await;
    }
    let expected = format!("spiffe://{td}/ns/default/dc/dc1/svc/tcp");
    let presented = billing.service_uri.clone();
    let lines = eventually("a warning saying why", Duration::from_secs(5), || {
        let stderr = web.stderr();
        let expected = expected.clone();
        async move {
            let lines: Vec<String> = stderr
                .lines()
                .filter(|l| l.contains("WARN") && l.contains("identity mismatch"))
                .filter(|l| l.contains("upstream=tcp") || l.contains("upstream=\"tcp\""))
                .filter(|l| l.contains(&expected))
                .map(str::to_owned)
                .collect();
            anyhow::ensure!(!lines.is_empty(), "no such line in:\n{stderr}");
            Ok(lines)
        }
    })
    .await
    .expect("a warning saying why the dial failed");
    assert!(lines[0].contains(&presented), "{}", lines[0]);
    assert_eq!(lines.len(), 1, "rate-limited: {lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_upstream_speaks_pooled_http11_to_a_callee_without_alpn() {
    // The callee's listener is tcp: no ALPN, so the app behind it must get HTTP/1.1,
    // and a keep-alive connection carries every request.
    let app = HttpRecorder::start().await;
    let ca = DevCa::generate(None).expect("CA");
    let api =
        Sidecar::start(SidecarConfig::new(&ca, &svid(&ca, API)).inbound(app.addr(), allow_web()))
            .await;
    let web = Sidecar::start(SidecarConfig::new(&ca, &svid(&ca, WEB)).upstream_of(
        API,
        "http",
        &[api.inbound_addr()],
    ))
    .await;
    for i in 0..5 {
        let url = format!("http://{}/n/{i}", web.upstream_addr(API));
        let got = curl(&url, &["--http1.1"]).await.expect("curl");
        assert!(got.is_ok(), "{got:?}");
        assert_eq!(got.body, format!("/n/{i}").as_bytes());
    }
    let seen = app.seen();
    assert_eq!(seen.len(), 5);
    for s in &seen {
        assert_eq!(s.version, hyper::Version::HTTP_11, "{s:?}");
    }
    let outbound = [("direction", "outbound"), ("alpn", "none")];
    let handshakes = web
        .metric(TLS_HANDSHAKES, &outbound)
        .await
        .expect("metrics");
    assert_eq!(handshakes, 1.0, "one pooled mesh connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ferrules_negotiate_tls13_and_h2_and_say_so_in_the_handshake_metric() {
    for (protocol, alpn) in [("http", "h2"), ("http2", "h2"), ("tcp", "none")] {
        let app = HttpRecorder::start().await;
        let intentions: serde_json::Value =
            serde_json::from_str(&allow_web()).expect("intentions JSON");
        let mesh = L7Pair::start(protocol, app.addr(), &intentions).await;
        let version = if protocol == "http2" {
            "--http2-prior-knowledge"
        } else {
            "--http1.1"
        };
        for _ in 0..3 {
            let got = curl(&mesh.url("/x"), &[version]).await.expect("curl");
            assert!(got.is_ok(), "{protocol}: {got:?}");
        }
        for (sidecar, direction) in [(&mesh.web, "outbound"), (&mesh.api, "inbound")] {
            let labels = [
                ("direction", direction),
                ("version", "TLSv1_3"),
                ("alpn", alpn),
            ];
            let selector = Selector {
                name: TLS_HANDSHAKES,
                labels: &labels,
            };
            let n = sidecar
                .wait_for_metric(selector, |v| v >= 1.0, Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("{protocol} {direction}: {e}"));
            if protocol != "tcp" {
                assert_eq!(n, 1.0, "{protocol} {direction}: one multiplexed connection");
            }
        }
    }
}
