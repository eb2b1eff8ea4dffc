//! What a peer can hold on to: idle connections are closed after their idle timeout
//! (L4 both ways, and HTTP keep-alive), busy ones are not; past its connection limit a
//! listener makes new connections wait in the backlog, and counts it.

use std::time::{Duration, Instant};

use ferrule_tests::DevCa;
use ferrule_tests::backends::{HttpRecorder, TcpEcho};
use ferrule_tests::clients::{KeepAlive, TlsCaller};
use ferrule_tests::mesh::{API, WEB, intentions_json, svid};
use ferrule_tests::sidecar::{Sidecar, SidecarConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IDLE_MS: &str = "600";
/// An idle timeout of 600 ms closes within 750 ms of the last byte; the rest is slack
/// for a busy machine.
const CLOSED_WITHIN: Duration = Duration::from_secs(3);

async fn echo_once(tcp: &mut TcpStream) {
    tcp.write_all(b"ping\n").await.expect("write");
    let mut got = [0u8; 5];
    tcp.read_exact(&mut got).await.expect("read the echo");
    assert_eq!(&got, b"ping\n");
}

async fn closed_within(tcp: &mut TcpStream, within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 16];
    match tokio::time::timeout(within, tcp.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Ok(started.elapsed()),
        Ok(Ok(n)) => anyhow::bail!("read {n} unexpected bytes"),
        Err(_) => anyhow::bail!("still open after {within:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_l4_connections_are_closed_on_both_sides_and_busy_ones_are_not() {
    let backend = TcpEcho::start().await;
    let ca = DevCa::generate(None).expect("a CA");
    let api = Sidecar::start(
        SidecarConfig::new(&ca, &svid(&ca, API))
            .inbound(backend.addr(), intentions_json(API, &[(WEB, "allow")]))
            .inbound_key("idle_timeout_ms", IDLE_MS),
    )
    .await;
    // web's own upstream has no idle limit: what closes is api's inbound side.
    let web = Sidecar::start(
        SidecarConfig::new(&ca, &svid(&ca, WEB)).upstream(API, &[api.inbound_addr()]),
    )
    .await;
    let mut idle = TcpStream::connect(web.upstream_addr(API))
        .await
        .expect("connect");
    echo_once(&mut idle).await;
    let mut busy = TcpStream::connect(web.upstream_addr(API))
        .await
        .expect("connect");
    echo_once(&mut busy).await;
    // A byte every 200 ms keeps the busy one open for several timeouts meanwhile.
    let busy = tokio::spawn(async move {
        for _ in 0..15 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            echo_once(&mut busy).await;
        }
    });
    let closed = closed_within(&mut idle, CLOSED_WITHIN)
        .await
        .expect("api closes the idle connection");
    println!("idle L4 connection closed {closed:?} after its last byte (timeout {IDLE_MS} ms)");
    busy.await.expect("the busy connection stayed open");

    // The same limit on web's upstream listener closes the app's side.
    let web_limited = Sidecar::start(
        SidecarConfig::new(&ca, &svid(&ca, WEB))
            .upstream(API, &[api.inbound_addr()])
            .upstream_key("idle_timeout_ms", "400"),
    )
    .await;
    let mut app = TcpStream::connect(web_limited.upstream_addr(API))
        .await
        .expect("connect");
    echo_once(&mut app).await;
    closed_within(&mut app, CLOSED_WITHIN)
        .await
        .expect("web closes the idle app connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http_keep_alive_connection_is_closed() {
    let backend = HttpRecorder::start().await;
    let ca = DevCa::generate(None).expect("a CA");
    let api = Sidecar::start(
        SidecarConfig::new(&ca, &svid(&ca, API))
            .inbound(backend.addr(), intentions_json(API, &[(WEB, "allow")]))
            .inbound_protocol("http"),
    )
    .await;
    let web = Sidecar::start(
        SidecarConfig::new(&ca, &svid(&ca, WEB))
            .upstream_of(API, "http", &[api.inbound_addr()])
            .upstream_key("idle_timeout_ms", IDLE_MS),
    )
    .await;
    let mut keep_alive = KeepAlive::open(web.upstream_addr(API))
        .await
        .expect("connect");
    assert_eq!(keep_alive.get("/one").await.expect("GET").0, 200);
    assert_eq!(keep_alive.get("/two").await.expect("GET").0, 200);
    keep_alive
        .closed_within(CLOSED_WITHIN)
        .await
        .expect("web closes the idle keep-alive connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_connection_limit_a_listener_makes_new_connections_wait() {
    let backend = TcpEcho::start().await;
    let ca = DevCa::generate(None).expect("a CA");
    let api = Sidecar::start(
        SidecarConfig::new(&ca, &svid(&ca, API))
            .inbound(backend.addr(), intentions_json(API, &[(WEB, "allow")]))
            .inbound_key("max_connections", "3"),
    )
    .await;
    let web_leaf = svid(&ca, WEB);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = TlsCaller::new(Some(&web_leaf))
            .connect(api.inbound_addr())
            .await
            .expect("a connection within the limit");
        conn.round_trip(b"in\n")
            .await
            .expect("echo within the limit");
        held.push(conn);
    }
    let addr = api.inbound_addr();
    let caller = TlsCaller::new(Some(&web_leaf));
    let fourth = tokio::spawn(async move {
        let mut conn = caller.connect(addr).await?;
        conn.round_trip(b"late\n").await?;
        anyhow::Ok(conn)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !fourth.is_finished(),
        "a fourth connection was served past the limit of 3"
    );
    assert!(
        api.metric(
            "ferrule_connections_limited_total",
            &[("listener", "inbound")]
        )
        .await
        .expect("scrape")
            >= 1.0
    );
    // One leaves; the one waiting in the backlog is served.
    drop(held.pop());
    fourth
        .await
        .expect("join")
        .expect("the waiting connection is served once there is room");
    // The three-at-a-time rule held throughout: still one more than the limit waits.
    assert_eq!(held.len(), 2);
}
