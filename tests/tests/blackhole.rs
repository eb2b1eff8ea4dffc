//! An upstream endpoint that black-holes SYNs (a listener whose accept queue is full, so
//! the kernel drops new SYNs, as a dead host's firewall would): every request still
//! succeeds, via the next endpoint, once the connect timeout has passed. Figures: the
//! requests lost (must be 0) and the worst delay the dead endpoint caused.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferrule_tests::backends::{GET_BODY, HttpEcho, HttpRecorder};
use ferrule_tests::clients::curl;
use ferrule_tests::mesh::{API, Mesh, WEB, intentions_json, svid};
use ferrule_tests::sidecar::{Sidecar, SidecarConfig};
use tokio::net::{TcpSocket, TcpStream};

const CONNECT_TIMEOUT_MS: &str = "500";

/// A listener that never accepts, with its backlog already full.
struct BlackHole {
    addr: SocketAddr,
    _listener: tokio::net::TcpListener,
    _fillers: Vec<TcpStream>,
}

impl BlackHole {
    async fn start() -> BlackHole {
        let socket = TcpSocket::new_v4().expect("a socket");
        socket
            .bind("127.0.0.1:0".parse().expect("an address"))
            .expect("bind");
        let listener = socket.listen(0).expect("listen with the smallest backlog");
        let addr = listener.local_addr().expect("its address");
        // Fill the accept queue; what comes after gets its SYNs dropped.
        let mut fillers = Vec::new();
        for _ in 0..8 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => fillers.push(stream),
                _ => break,
            }
        }
        let probe =
            tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await;
        assert!(probe.is_err(), "the black hole still completes handshakes");
        BlackHole {
            addr,
            _listener: listener,
            _fillers: fillers,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_endpoint_costs_a_connect_timeout_and_no_request() {
    let hole = BlackHole::start().await;
    let backend = HttpEcho::start().await;
    let mesh = Mesh::builder(backend.addr()).allow(WEB).start().await;
    let web = Sidecar::start(
        SidecarConfig::new(&mesh.ca, &mesh.svid(WEB))
            .upstream(API, &[hole.addr, mesh.api.inbound_addr()])
            .upstream_key("connect_timeout_ms", CONNECT_TIMEOUT_MS),
    )
    .await;
    let url = format!("http://{}/", web.upstream_addr(API));
    let mut worst = Duration::ZERO;
    let mut slow = 0;
    let began = Instant::now();
    for i in 0..8 {
        let started = Instant::now();
        let got = curl(&url, &[]).await.expect("run curl");
        assert!(
            got.is_ok() && got.body == GET_BODY.as_bytes(),
            "request {i} lost: {got:?}"
        );
        let took = started.elapsed();
        worst = worst.max(took);
        if took >= Duration::from_millis(500) {
            slow += 1;
        }
    }
    let elapsed = began.elapsed();
    let holes = web
        .metric(
            ferrule_tests::names::OUTBOUND,
            &[("upstream", API), ("result", "connect_error")],
        )
        .await
        .expect("scrape");
    println!(
        "L4 black hole: 8 of 8 requests ok, {slow} waited for the connect timeout ({holes} dials into the hole in {elapsed:?}), worst {worst:?} (timeout {CONNECT_TIMEOUT_MS} ms)"
    );
    assert!(slow >= 1, "the black hole was never tried: {worst:?}");
    assert!(holes >= 1.0, "the failed dial is counted");
    assert!(worst < Duration::from_secs(3), "{worst:?}");
    // Round robin alone sends every other connection to the hole first; once it has
    // failed it is tried last until its ejection (1 s, doubling per failure) runs out,
    // so within `elapsed` it can be dialled once plus once per ejection that ended.
    // Counted from the metric, not from timings, so a busy host cannot fail this.
    let allowed = 1 + ejections_ended_within(elapsed);
    assert!(
        holes <= f64::from(allowed),
        "{holes} dials into the black hole in {elapsed:?}; the ejections allow {allowed}"
    );
}

/// How many back-to-back ejections (1 s, 2 s, 4 s, ...) end within `elapsed`.
fn ejections_ended_within(elapsed: Duration) -> u32 {
    let mut ended = 0;
    let mut total = Duration::ZERO;
    let mut next = Duration::from_secs(1);
    loop {
        total += next;
        if total > elapsed {
            return ended;
        }
        ended += 1;
        next *= 2;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_upstream_skips_a_black_holed_endpoint_without_losing_requests() {
    let hole = BlackHole::start().await;
    let backend = HttpRecorder::start().await;
    let ca = ferrule_tests::DevCa::generate(None).expect("a CA");
    let api = Sidecar::start(
        SidecarConfig::new(&ca, &svid(&ca, API))
            .inbound(backend.addr(), intentions_json(API, &[(WEB, "allow")]))
            .inbound_protocol("http"),
    )
    .await;
    let web = Sidecar::start(
        SidecarConfig::new(&ca, &svid(&ca, WEB))
            .upstream_of(API, "http", &[hole.addr, api.inbound_addr()])
            .upstream_key("connect_timeout_ms", CONNECT_TIMEOUT_MS),
    )
    .await;
    let url = format!("http://{}/page", web.upstream_addr(API));
    let started = Instant::now();
    for i in 0..20 {
        let got = curl(&url, &[]).await.expect("run curl");
        assert_eq!(got.http_code, 200, "request {i} lost: {got:?}");
    }
    println!(
        "L7 black hole: 20 of 20 requests ok in {:?}",
        started.elapsed()
    );
    assert_eq!(backend.count(), 20);
}
