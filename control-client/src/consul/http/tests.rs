//! Tests of `http`.

use std::convert::Infallible;
use std::sync::Arc;

use http::Response;
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::net::TcpListener;

use super::*;
use crate::consul::testing::serve;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[test]
fn parses_every_address_form() {
    let http = |authority: &str, prefix: &str| AgentAddr::Http {
        authority: authority.into(),
        prefix: prefix.into(),
    };
    assert_eq!("127.0.0.1:8500".parse(), Ok(http("127.0.0.1:8500", "")));
    assert_eq!(DEFAULT_ADDR.parse(), Ok(http("127.0.0.1:8500", "")));
    assert_eq!(
        "http://consul.local".parse(),
        Ok(http("consul.local:80", ""))
    );
    assert_eq!("[::1]:8500".parse(), Ok(http("[::1]:8500", "")));
    assert_eq!("localhost:8500".parse(), Ok(http("localhost:8500", "")));
    assert_eq!(":8500".parse(), Ok(http("127.0.0.1:8500", "")));
    assert_eq!("http://:8501/x".parse(), Ok(http("127.0.0.1:8501", "/x")));
    assert_eq!("http://[::1]".parse(), Ok(http("[::1]:80", "")));
    assert_eq!(
        "http://10.0.0.1:8500/consul/".parse(),
        Ok(http("10.0.0.1:8500", "/consul"))
    );
    assert_eq!(
        "https://consul.local:8501/api".parse(),
        Ok(AgentAddr::Https {
            authority: "consul.local:8501".into(),
            prefix: "/api".into()
        })
    );
    assert_eq!(
        "https://consul.local"
            .parse::<AgentAddr>()
            .unwrap()
            .to_string(),
        "https://consul.local:443"
    );
    assert_eq!(
        "unix:///var/run/consul.sock".parse(),
        Ok(AgentAddr::Unix {
            path: "/var/run/consul.sock".into()
        })
    );
    for bad in [
        "ftp://x:1",
        "http://",
        "unix://",
        "http://a b:1",
        "",
        ":",
        ":x",
    ] {
        assert!(bad.parse::<AgentAddr>().is_err(), "{bad:?}");
    }
}

#[test]
fn components_are_percent_encoded() {
    assert_eq!(path_segment("web"), "web");
    assert_eq!(path_segment("a b/c?d"), "a%20b%2Fc%3Fd");
}

#[derive(Debug, Clone, Default)]
struct Seen {
    uri: String,
    token: Option<String>,
}

/// Answers `status` with `body` and an index header, recording what it was asked.
async fn agent(status: u16, body: &'static str) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let task = serve(listener, move |req: Request<Incoming>| {
        s.lock().push(Seen {
            uri: req.uri().to_string(),
            token: header_str(req.headers(), "x-consul-token").map(str::to_owned),
        });
        async move {
            Response::builder()
                .status(status)
                .header("X-Consul-Index", "42")
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap()
        }
    });
    drop(task); // detached: lives as long as the test runtime
    (addr, seen)
}

use std::net::SocketAddr;

#[tokio::test]
async fn sends_the_token_and_the_prefix() {
    let (addr, seen) = agent(200, r#"{"ok": true}"#).await;
    let mut config = AgentClientConfig::new(format!("http://{addr}/consul").parse().unwrap());
    config.token = Some("  s3cr3t-token ".into());
    let client = AgentClient::new(&config, provider()).unwrap();
    let answer = client
        .get(
            "/v1/agent/self",
            &[("name", "a b"), ("passing", "")],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(answer.index(), 42);
    let seen = seen.lock().clone();
    assert_eq!(seen[0].uri, "/consul/v1/agent/self?name=a%20b&passing");
    assert_eq!(seen[0].token.as_deref(), Some("s3cr3t-token"));
    assert!(!format!("{config:?}{client:?}").contains("s3cr3t"));
}

#[tokio::test]
async fn the_token_file_wins_and_no_token_sends_no_header() {
    let (addr, seen) = agent(200, "{}").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "from-file\n").unwrap();
    let mut config = AgentClientConfig::new(addr.to_string().parse().unwrap());
    config.token = Some("from-flag".into());
    config.token_file = Some(file.clone());
    let client = AgentClient::new(&config, provider()).unwrap();
    client
        .get("/v1/x", &[], Duration::from_secs(5))
        .await
        .unwrap();
    let plain = AgentClient::new(&AgentClientConfig::new(config.addr.clone()), provider()).unwrap();
    plain
        .get("/v1/x", &[], Duration::from_secs(5))
        .await
        .unwrap();
    let seen = seen.lock().clone();
    assert_eq!(seen[0].token.as_deref(), Some("from-file"));
    assert_eq!(seen[1].token, None);

    config.token_file = Some(dir.path().join("missing"));
    let err = AgentClient::new(&config, provider()).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    config.token_file = None;
    config.token = Some("bad\ntoken".into());
    assert!(matches!(
        AgentClient::new(&config, provider()),
        Err(ClientConfigError::BadToken)
    ));
}

#[tokio::test]
async fn errors_are_typed() {
    let (addr, _) = agent(
        403,
        "Permission denied: anonymous token lacks permission 'agent:read'\n",
    )
    .await;
    let client = AgentClient::new(
        &AgentClientConfig::new(addr.to_string().parse().unwrap()),
        provider(),
    )
    .unwrap();
    let err = client
        .get("/v1/agent/self", &[], Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.is_refused());
    match err {
        AgentError::Status { status, text, .. } => {
            assert_eq!(status, 403);
            assert_eq!(
                text,
                "Permission denied: anonymous token lacks permission 'agent:read'"
            );
        }
        other => panic!("{other:?}"),
    }

    let (addr, _) = agent(200, r#"{"Roots": [{"SerialNumber": "7"}]}"#).await;
    let client = AgentClient::new(
        &AgentClientConfig::new(addr.to_string().parse().unwrap()),
        provider(),
    )
    .unwrap();
    let err = client
        .get_json::<crate::api::ca::IndexedCARoots>(
            "/v1/agent/connect/ca/roots",
            &[],
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    match err {
        AgentError::Decode { path, at, .. } => {
            assert_eq!(path, "/v1/agent/connect/ca/roots");
            assert_eq!(at, "Roots[0].SerialNumber");
        }
        other => panic!("{other:?}"),
    }
}

#[cfg(unix)]
#[tokio::test]
async fn talks_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("consul.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body = format!(r#"{{"Path": "{}"}}"#, req.uri().path());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let addr: AgentAddr = format!("unix://{}", path.display()).parse().unwrap();
    let client = AgentClient::new(&AgentClientConfig::new(addr), provider()).unwrap();
    let value: serde_json::Value = client
        .get_json("/v1/agent/services", &[], Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(value["Path"], "/v1/agent/services");
}

/// An https agent with a certificate for 127.0.0.1 from a private CA.
async fn https_agent(dir: &Path) -> (SocketAddr, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let ca_file = dir.join("agent-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();

    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"[]"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, ca_file)
}

#[tokio::test]
async fn verifies_an_https_agent_with_the_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, ca_file) = https_agent(dir.path()).await;
    let mut config = AgentClientConfig::new(format!("https://{addr}").parse().unwrap());
    config.ca_file = Some(ca_file);
    let client = AgentClient::new(&config, provider()).unwrap();
    let list: Vec<serde_json::Value> = client
        .get_json("/v1/health/connect/db", &[], Duration::from_secs(5))
        .await
        .unwrap();
    assert!(list.is_empty());

    // The system roots do not know this CA: refused, and the error says why.
    config.ca_file = None;
    let client = AgentClient::new(&config, provider()).unwrap();
    let err = client
        .get("/v1/health/connect/db", &[], Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::Transport { message, .. } if message.contains("certificate")),
        "{err}"
    );

    let bad = dir.path().join("empty.pem");
    std::fs::write(&bad, "nothing here").unwrap();
    config.ca_file = Some(bad);
    assert!(matches!(
        AgentClient::new(&config, provider()),
        Err(ClientConfigError::CaFile { .. })
    ));
}
