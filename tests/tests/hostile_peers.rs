//! Hostile peers while good traffic flows: 1,000 connections that stall mid-handshake,
//! 500 that send garbage, 200 TLS clients with bad certificates (every kind of the
//! design's bad-input table) all hit api's mTLS port at once, while web keeps calling
//! api through its sidecar. No good call may fail; every hostile connection is closed
//! within the handshake timeout. The figures (p50/p99 before and during) are printed.

use std::net::SocketAddr;
use std::time::Duration;

use ferrule_tests::backends::TcpEcho;
use ferrule_tests::clients::TlsCaller;
use ferrule_tests::mesh::{API, Mesh, WEB};
use ferrule_tests::metrics::Selector;
use ferrule_tests::names::INBOUND;
use ferrule_tests::wait::closed_within;
use ferrule_tests::{DevCa, IssuedLeaf, LeafSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

const STALLED: usize = 1_000;
const GARBAGE: usize = 500;
const BAD_CERTS: usize = 200;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// What "closed within the handshake timeout" allows for scheduling on a busy machine.
const CLOSE_SLACK: Duration = Duration::from_secs(3);

/// One good call: a new connection to web's upstream port (so a new mTLS handshake to
/// api's sidecar), a line echoed back by api's app. Returns how long it took.
async fn good_call(upstream: SocketAddr) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let exchange = async {
        let mut tcp = TcpStream::connect(upstream).await?;
        tcp.write_all(b"good\n").await?;
        let mut echoed = [0u8; 5];
        tcp.read_exact(&mut echoed).await?;
        anyhow::ensure!(&echoed == b"good\n", "the echo differs");
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no echo within 10 s"))??;
    Ok(started.elapsed())
}

/// Good calls back to back until `stop` resolves (at least `min` of them).
async fn good_traffic(
    upstream: SocketAddr,
    min: usize,
    stop: impl std::future::Future<Output = ()>,
) -> (Vec<Duration>, Vec<String>) {
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    tokio::pin!(stop);
    let mut stopped = false;
    while !stopped || latencies.len() + failures.len() < min {
        tokio::select! {
            biased;
            () = &mut stop, if !stopped => stopped = true,
            result = good_call(upstream) => match result {
                Ok(took) => latencies.push(took),
                Err(e) => failures.push(format!("{e:#}")),
            },
        }
    }
    (latencies, failures)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(mut latencies: Vec<Duration>) -> String {
    latencies.sort_unstable();
    format!(
        "{} calls, p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    )
}

/// The bad client certificates of the design's table, cycled over `BAD_CERTS` clients.
fn bad_identities(ca: &DevCa) -> Vec<Option<IssuedLeaf>> {
    let other_ca = DevCa::generate(Some(ca.cluster_id())).expect("a second CA");
    let foreign = DevCa::generate(None).expect("a CA of another trust domain");
    let issue = |ca: &DevCa, spec: LeafSpec| ca.issue(&spec).expect("issue a test leaf");
    vec![
        None,
        Some(issue(&other_ca, LeafSpec::service(WEB))),
        Some(issue(
            ca,
            LeafSpec {
                not_before: Some(time::OffsetDateTime::now_utc() - time::Duration::days(2)),
                ttl: time::Duration::days(1),
                ..LeafSpec::service(WEB)
            },
        )),
        Some(issue(
            ca,
            LeafSpec {
                not_before: Some(time::OffsetDateTime::now_utc() + time::Duration::days(1)),
                ..LeafSpec::service(WEB)
            },
        )),
        Some(issue(
            ca,
            LeafSpec {
                is_ca: true,
                ..LeafSpec::service(WEB)
            },
        )),
        Some(issue(
            ca,
            LeafSpec {
                extra_uri_sans: vec![format!(
                    "spiffe://{}/ns/default/dc/dc1/svc/admin",
                    ca.trust_domain()
                )],
                ..LeafSpec::service(WEB)
            },
        )),
        Some(issue(
            ca,
            LeafSpec {
                uri_override: Some("https://example.com/not-spiffe".to_owned()),
                ..LeafSpec::service(WEB)
            },
        )),
        Some(issue(&foreign, LeafSpec::service(WEB))),
    ]
}

/// Opens `STALLED` connections that send the start of a TLS record and stop, and
/// `GARBAGE` that send random bytes; returns how many were not closed by the proxy in
/// time.
async fn stall_and_garbage(inbound: SocketAddr) -> usize {
    let mut tasks = JoinSet::new();
    for i in 0..STALLED + GARBAGE {
        tasks.spawn(async move {
            let Ok(mut tcp) = TcpStream::connect(inbound).await else {
                // Refused or reset at connect: not left open either.
                return true;
            };
            let bytes: Vec<u8> = if i < STALLED {
                // A handshake record header announcing 512 bytes, then two of them.
                vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]
            } else {
                (0..64).map(|_| fastrand::u8(..)).collect()
            };
            let _ = tcp.write_all(&bytes).await;
            closed_within(&mut tcp, HANDSHAKE_TIMEOUT + CLOSE_SLACK)
                .await
                .is_ok()
        });
    }
    let mut left_open = 0;
    while let Some(closed) = tasks.join_next().await {
        if !matches!(closed, Ok(true)) {
            left_open += 1;
        }
    }
    left_open
}

/// `BAD_CERTS` handshakes with bad certificates; returns how many got data through.
async fn bad_certificates(inbound: SocketAddr, identities: Vec<Option<IssuedLeaf>>) -> usize {
    let callers: Vec<TlsCaller> = identities
        .iter()
        .map(|identity| TlsCaller::new(identity.as_ref()))
        .collect();
    let callers = std::sync::Arc::new(callers);
    let mut tasks = JoinSet::new();
    for i in 0..BAD_CERTS {
        let callers = callers.clone();
        tasks.spawn(async move {
            let caller = &callers[i % callers.len()];
            match caller.connect(inbound).await {
                // TLS 1.3: the client may finish before the server refuses its
                // certificate; the refusal shows on the first exchange.
                Ok(mut conn) => conn.round_trip(b"let me in\n").await.is_ok(),
                Err(_) => false,
            }
        });
    }
    let mut got_through = 0;
    while let Some(result) = tasks.join_next().await {
        if matches!(result, Ok(true)) {
            got_through += 1;
        }
    }
    got_through
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_cost_good_traffic_nothing() {
    let backend = TcpEcho::start().await;
    let mesh = Mesh::builder(backend.addr())
        .allow(WEB)
        .handshake_timeout_ms(HANDSHAKE_TIMEOUT.as_millis() as u64)
        .start()
        .await;
    let web = mesh.caller_sidecar(WEB, &[mesh.api.inbound_addr()]).await;
    let upstream = web.upstream_addr(API);
    let inbound = mesh.api.inbound_addr();

    let (before, failed_before) = good_traffic(upstream, 200, std::future::ready(())).await;
    assert!(failed_before.is_empty(), "{failed_before:?}");
    let reached_app_before = backend.accepted();

    let identities = bad_identities(&mesh.ca);
    let attack = async {
        tokio::join!(
            stall_and_garbage(inbound),
            bad_certificates(inbound, identities)
        )
    };
    let (attack_result, (during, failed_during)) = {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let attack = async move {
            let result = attack.await;
            let _ = tx.send(());
            result
        };
        let traffic = good_traffic(upstream, 100, async move {
            let _ = rx.await;
        });
        tokio::join!(attack, traffic)
    };
    let (left_open, bad_got_through) = attack_result;

    eprintln!("good traffic before the attack: {}", summary(before));
    eprintln!("good traffic during the attack: {}", summary(during));
    assert!(
        failed_during.is_empty(),
        "{} good calls failed during the attack: {:?}",
        failed_during.len(),
        failed_during
    );
    assert_eq!(
        left_open, 0,
        "hostile connections still open after the handshake timeout"
    );
    assert_eq!(bad_got_through, 0, "a bad certificate got data through");
    // Only good calls reached the app (each one is a connection to the echo app).
    let good_calls = backend.accepted() - reached_app_before;
    assert!(good_calls > 0);
    mesh.api
        .wait_for_metric(
            Selector {
                name: INBOUND,
                labels: &[("result", "tls_error")],
            },
            |v| v >= BAD_CERTS as f64,
            Duration::from_secs(10),
        )
        .await
        .expect("every bad certificate is counted as a TLS error");
    // The proxy is still fine afterwards.
    let took = good_call(upstream).await.expect("a call after the attack");
    eprintln!("a call after the attack took {took:?}");
}
