//! The gateway in process, on views made by hand: bytes reach the instance or the other
//! datacenter's gateway untouched (ClientHello first), a dead instance is skipped,
//! what cannot be routed is closed while the rest keeps flowing, and start-up failures
//! end the run.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ferrule_control::gateway::{GatewayConfig, GatewayLimits, LocalService, RemoteDatacenter};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

const TD: &str = "11111111-2222.consul";

/// A TCP server that echoes everything back, and the address it listens on.
async fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// An address nothing listens on.
async fn dead() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn limits() -> GatewayLimits {
    GatewayLimits {
        hello_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        idle_timeout: None,
        max_connections: 100,
    }
}

fn view(lan: SocketAddr, api: Vec<SocketAddr>, dc2: SocketAddr) -> GatewayView {
    let addrs = |list: Vec<SocketAddr>| Some(list.iter().map(ToString::to_string).collect());
    GatewayView {
        gateway: Some(GatewayConfig {
            id: "gw".into(),
            service: "mesh-gateway".into(),
            lan,
            wan: None,
            limits: limits(),
            prometheus: None,
        }),
        datacenter: Some("dc1".into()),
        trust_domain: Some(TD.into()),
        services: Some(BTreeMap::from([(
            "api".into(),
            LocalService {
                name: "api".into(),
                instances: addrs(api),
                subsets: BTreeMap::new(),
            },
        )])),
        remote: Some(BTreeMap::from([(
            "dc2".into(),
            RemoteDatacenter {
                gateways: addrs(vec![dc2]),
            },
        )])),
        ..GatewayView::default()
    }
}

/// The gateway serving `view` until the returned sender is dropped; its LAN address.
async fn start(
    view: impl FnOnce(SocketAddr) -> GatewayView,
) -> (SocketAddr, watch::Sender<Arc<GatewayView>>) {
    let lan = dead().await;
    let (tx, rx) = watch::channel(Arc::new(view(lan)));
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = PrometheusBuilder::new().build_recorder().handle();
    tokio::spawn(serve(
        admin,
        rx,
        metrics,
        std::future::pending(),
        Duration::ZERO,
    ));
    for _ in 0..200 {
        if TcpStream::connect(lan).await.is_ok() {
            return (lan, tx);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the gateway did not listen on {lan}");
}

fn hello(name: &str) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// Sends a ClientHello for `name` and more bytes; what comes back (the echo) within 5 s.
async fn exchange(gateway: SocketAddr, name: &str) -> Vec<u8> {
    let mut sent = hello(name);
    sent.extend_from_slice(b"and the rest of the session");
    let mut tcp = TcpStream::connect(gateway).await.unwrap();
    tcp.write_all(&sent).await.unwrap();
    let mut got = vec![0; sent.len()];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut got)).await;
    match read {
        Ok(Ok(_)) => got,
        other => panic!("no echo for {name}: {other:?}"),
    }
}

/// Whether the gateway closes the connection (no byte back) within 5 s.
async fn closed(gateway: SocketAddr, bytes: &[u8]) -> bool {
    let mut tcp = TcpStream::connect(gateway).await.unwrap();
    let _ = tcp.write_all(bytes).await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn local_and_remote_names_reach_their_backends_untouched_past_a_dead_instance() {
    let (api, dc2) = (echo().await, echo().await);
    let gone = dead().await;
    let (lan, _tx) = start(|lan| view(lan, vec![gone, api], dc2)).await;
    let name = format!("api.default.dc1.internal.{TD}");
    for _ in 0..3 {
        let mut expected = hello(&name);
        expected.extend_from_slice(b"and the rest of the session");
        let got = exchange(lan, &name).await;
        // The hello differs per connection (random): compare its length and the tail.
        assert_eq!(got.len(), expected.len());
        assert!(got.ends_with(b"and the rest of the session"));
        assert_eq!(got[0], 22, "the ClientHello came first");
    }
    exchange(lan, &format!("v1.web.default.dc2.internal.{TD}")).await;
}

#[tokio::test]
async fn what_cannot_be_routed_is_closed_and_good_connections_keep_flowing() {
    let (api, dc2) = (echo().await, echo().await);
    let (lan, _tx) = start(|lan| view(lan, vec![api], dc2)).await;
    let good = format!("api.default.dc1.internal.{TD}");
    // One good connection stays open through all of it.
    let mut open = TcpStream::connect(lan).await.unwrap();
    open.write_all(&hello(&good)).await.unwrap();
    assert!(closed(lan, &hello(&format!("web.default.dc1.internal.{TD}"))).await);
    assert!(closed(lan, &hello("127.0.0.1")).await, "no server name");
    assert!(closed(lan, b"GET / HTTP/1.1\r\nHost: api\r\n\r\n").await);
    assert!(closed(lan, &hello(&format!("api.default.dc9.internal.{TD}"))).await);
    assert!(
        closed(lan, &[22, 3, 1, 0, 5, 2, 0, 0, 1, 0]).await,
        "a ServerHello"
    );
    open.write_all(b"still here").await.unwrap();
    let mut back = vec![0; hello(&good).len() + 10];
    tokio::time::timeout(Duration::from_secs(5), open.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert!(back.ends_with(b"still here"));
    exchange(lan, &good).await;
}

#[tokio::test]
async fn a_name_the_agent_has_not_answered_yet_waits_for_it() {
    let api = echo().await;
    let (lan, tx) = start(|lan| {
        let mut early = view(lan, vec![api], api);
        early.services = None;
        early
    })
    .await;
    let name = format!("api.default.dc1.internal.{TD}");
    let call = tokio::spawn(async move { exchange(lan, &name).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!call.is_finished(), "nothing to route to yet");
    let lan_now = tx.borrow().gateway.as_ref().unwrap().lan;
    tx.send_replace(Arc::new(view(lan_now, vec![api], api)));
    call.await.unwrap();
}

#[tokio::test]
async fn a_refused_registration_and_a_taken_port_end_the_start() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let metrics = || PrometheusBuilder::new().build_recorder().handle();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_tx, rx) = watch::channel(Arc::new(view(addr, Vec::new(), addr)));
    let ended = serve(admin, rx, metrics(), std::future::pending(), Duration::ZERO).await;
    assert!(matches!(ended, Err(GatewayError::Bind(_))), "{ended:?}");

    let refused = GatewayView {
        refused: Some("service \"web\" is not a mesh gateway".into()),
        ..GatewayView::default()
    };
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_tx, rx) = watch::channel(Arc::new(refused));
    let ended = serve(admin, rx, metrics(), std::future::pending(), Duration::ZERO).await;
    match ended {
        Err(GatewayError::Refused(why)) => assert!(why.contains("not a mesh gateway")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ready_needs_the_registration_the_datacenter_and_the_trust_domain() {
    let lan: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut status = Status {
        view: Arc::new(view(lan, Vec::new(), lan)),
        ..Status::default()
    };
    assert_eq!(readiness_of(&status), Readiness::Ready);
    let mut early = view(lan, Vec::new(), lan);
    early.trust_domain = None;
    status.view = Arc::new(early.clone());
    assert_eq!(
        readiness_of(&status),
        Readiness::NotReady(vec!["waiting for the trust domain".into()])
    );
    early.blocked = vec!["roots: cannot reach the agent".into()];
    status.view = Arc::new(early);
    status.unbound = vec!["cannot listen on 127.0.0.1:1 (gateway lan): in use".into()];
    let Readiness::NotReady(causes) = readiness_of(&status) else {
        panic!("ready without roots");
    };
    assert_eq!(causes.len(), 2, "{causes:?}");
    status.draining = true;
    assert_eq!(readiness_of(&status), Readiness::Draining);
}
