//! An oversized-header flood on L7 listeners while good requests flow: 300 requests
//! with a 100 KiB header and 200 with 300 headers hit web's `http` upstream port, and
//! 100 more reach api's mTLS listener from an authenticated caller. Each is answered
//! 431 (or its connection closed), never passed on, and no good request fails. The
//! figures (good requests, p50/p99 before and during) are printed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrule_tests::backends::HttpRecorder;
use ferrule_tests::clients::{KeepAlive, TlsCaller};
use ferrule_tests::mesh::{API, L7Pair, WEB};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

const BIG_HEADER: usize = 300;
const MANY_HEADERS: usize = 200;
const AT_API: usize = 100;

fn big_header_request() -> Vec<u8> {
    let value = "a".repeat(100 * 1024);
    format!("GET /flood HTTP/1.1\r\nhost: api\r\nx-big: {value}\r\n\r\n").into_bytes()
}

fn many_headers_request() -> Vec<u8> {
    let mut request = String::from("GET /flood HTTP/1.1\r\nhost: api\r\n");
    for i in 0..300 {
        request.push_str(&format!("x-h{i}: {i}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// Sends one hostile request; Ok(status) if answered, Ok(0) if just closed.
async fn hostile<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> anyhow::Result<u16> {
    // The proxy may answer and close before reading it all: a failed write is fine.
    let _ = stream.write_all(request).await;
    let mut head = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut head)).await;
    let text = String::from_utf8_lossy(&head);
    Ok(text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Good requests on keep-alive connections until `until`, each checked end to end.
async fn good(upstream: SocketAddr, until: Instant) -> (Vec<Duration>, Vec<String>) {
    let mut conn = KeepAlive::open(upstream)
        .await
        .expect("open a good connection");
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    while Instant::now() < until {
        let started = Instant::now();
        match conn.get("/good").await {
            Ok((200, body)) if body == b"/good" => latencies.push(started.elapsed()),
            Ok((status, body)) => {
                failures.push(format!("{status}: {}", String::from_utf8_lossy(&body)))
            }
            Err(e) => {
                failures.push(format!("{e:#}"));
                conn = KeepAlive::open(upstream)
                    .await
                    .expect("reopen a good connection");
            }
        }
    }
    latencies.sort();
    (latencies, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_header_flood_costs_no_good_request() {
    let backend = HttpRecorder::start().await;
    let allow = json!({ "Kind": "service-intentions", "Name": API,
        "Sources": [ { "Name": WEB, "Action": "allow" } ] });
    let mesh = L7Pair::start("http", backend.addr(), &allow).await;
    let upstream = mesh.web.upstream_addr(API);

    let (before, failed_before) = good(upstream, Instant::now() + Duration::from_secs(2)).await;
    assert!(failed_before.is_empty(), "{failed_before:?}");

    let goods: Vec<_> = (0..2)
        .map(|_| tokio::spawn(good(upstream, Instant::now() + Duration::from_secs(6))))
        .collect();
    let big = Arc::new(big_header_request());
    let many = Arc::new(many_headers_request());
    let mut attacks = JoinSet::new();
    for i in 0..BIG_HEADER + MANY_HEADERS {
        let request = if i < BIG_HEADER {
            big.clone()
        } else {
            many.clone()
        };
        attacks.spawn(async move {
            let tcp = TcpStream::connect(upstream).await?;
            hostile(tcp, &request).await
        });
    }
    let caller = Arc::new(TlsCaller::new(Some(&mesh.web_leaf)));
    let inbound = mesh.api.inbound_addr();
    for _ in 0..AT_API {
        let (caller, request) = (caller.clone(), big.clone());
        attacks.spawn(async move {
            let conn = caller.connect(inbound).await?;
            hostile(conn.into_stream(), &request).await
        });
    }
    let mut statuses = std::collections::BTreeMap::new();
    while let Some(done) = attacks.join_next().await {
        let status = done.expect("join").expect("a hostile request ran");
        *statuses.entry(status).or_insert(0usize) += 1;
    }
    let mut during = Vec::new();
    let mut failed = Vec::new();
    for g in goods {
        let (latencies, failures) = g.await.expect("join");
        during.extend(latencies);
        failed.extend(failures);
    }
    during.sort();
    println!(
        "header flood: hostile answers {statuses:?}; good requests before {} (p50 {:?}, p99 {:?}), during {} (p50 {:?}, p99 {:?}), failed {}",
        before.len(),
        percentile(&before, 0.5),
        percentile(&before, 0.99),
        during.len(),
        percentile(&during, 0.5),
        percentile(&during, 0.99),
        failed.len()
    );
    assert!(failed.is_empty(), "good requests failed: {failed:?}");
    assert!(!during.is_empty());
    let total = BIG_HEADER + MANY_HEADERS + AT_API;
    let refused = statuses.get(&431).copied().unwrap_or(0) + statuses.get(&0).copied().unwrap_or(0);
    assert_eq!(
        refused, total,
        "every hostile request is refused: {statuses:?}"
    );
    assert!(
        backend.seen().iter().all(|s| s.path != "/flood"),
        "a hostile request reached the app"
    );
}
